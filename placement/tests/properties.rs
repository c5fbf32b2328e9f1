//! Property tests: random clusters and request streams. No GPU is ever
//! over-committed, every placement satisfies its request, and a refused
//! request fits nowhere (checked by an independent brute-force search).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use gantry_placement::mig::{self, MigLayout};
use gantry_placement::{
    ClusterSnapshot, Constraints, Engine, EngineConfig, GpuMode, GpuRequest, GpuShare, GpuSnapshot,
    GpuTelemetry, LabelSelector, MigInstanceSpec, NodeSnapshot, PlaceError, Placement, PlacementRequest,
    Policy,
};
use proptest::prelude::*;

const MODELS: [(&str, u64); 4] =
    [("A100-SXM4-40GB", 40_960), ("H100-80GB", 81_920), ("T4", 15_360), ("A30-24GB", 24_576)];

fn gpu() -> impl Strategy<Value = GpuSnapshot> {
    (
        0..MODELS.len(),
        0..4u8,
        prop::option::of(0..2u32),
        prop::bool::weighted(0.9),
        0..100u32,
        0..4u32,
        any::<u64>(),
    )
        .prop_map(|(m, mode, nvlink, healthy, load, tenants, bits)| {
            let (model, mem) = MODELS[m];
            let mode = match (mode, mig::table_for_model(model)) {
                (0, _) => GpuMode::Exclusive { allocated: load < 40 },
                (1, Some(table)) => {
                    let mut layout = MigLayout::new(table);
                    let mut instances = Vec::new();
                    for k in 0..3 {
                        let p = &table.profiles[((bits >> (8 * k)) % table.profiles.len() as u64) as usize];
                        let start = p.starts[((bits >> (8 * k + 4)) as usize) % p.starts.len()];
                        if (bits >> (40 + k)) & 1 == 1 && layout.place(p, start).is_ok() {
                            instances.push(MigInstanceSpec { profile: p.name.to_string(), start });
                        }
                    }
                    GpuMode::Mig { instances }
                }
                (2, _) => {
                    let clients = if load > 90 { 48 } else { tenants };
                    GpuMode::Mps {
                        clients,
                        compute_pct: load.min(100),
                        memory_mib: mem * u64::from(load) / 100,
                    }
                }
                _ => {
                    let milli = if tenants == 0 { 0 } else { load * 10 };
                    GpuMode::Shared { tenants, milli, memory_mib: mem * u64::from(milli) / 1000 }
                }
            };
            GpuSnapshot {
                model: model.to_string(),
                memory_mib: mem,
                nvlink_domain: nvlink,
                healthy,
                mode,
                telemetry: Some(GpuTelemetry {
                    utilization_pct: (load % 101) as u8,
                    memory_used_mib: mem / 2,
                }),
            }
        })
}

fn node(i: usize) -> impl Strategy<Value = NodeSnapshot> {
    (prop::collection::vec(gpu(), 0..5), prop::bool::weighted(0.85), 0..3u8, 0..8u64, 0..8u64).prop_map(
        move |(gpus, up, zone, cpu_used, mem_used)| {
            let mut n = NodeSnapshot::new(&format!("n{i}"), 8000, 8000, gpus);
            n.schedulable = up;
            n.cpu_used_milli = cpu_used * 1000;
            n.memory_used_mib = mem_used * 1000;
            n.labels.insert("zone".into(), format!("z{zone}"));
            if zone == 0 {
                n.workloads.insert("w0".into());
            }
            n
        },
    )
}

fn cluster() -> impl Strategy<Value = ClusterSnapshot> {
    (1..5usize)
        .prop_flat_map(|n| (0..n).map(node).collect::<Vec<_>>().prop_map(|nodes| ClusterSnapshot { nodes }))
}

fn request() -> impl Strategy<Value = PlacementRequest> {
    let gpu = prop_oneof![
        Just(GpuRequest::None),
        (1..5u8, any::<bool>()).prop_map(|(count, linked)| GpuRequest::Exclusive { count, linked }),
        (0..7usize, 0..4usize).prop_map(|(p, t)| {
            let table = [&mig::A100_40GB, &mig::H100_80GB, &mig::A100_80GB, &mig::A30_24GB][t];
            GpuRequest::Mig { profile: table.profiles[p % table.profiles.len()].name.to_string() }
        }),
        (1..=60u8, 1..20_000u64)
            .prop_map(|(compute_pct, memory_mib)| GpuRequest::Mps { compute_pct, memory_mib }),
        (1..30_000u64).prop_map(|memory_mib| GpuRequest::Shared { memory_mib }),
        (1..=1000u32).prop_map(|milli| GpuRequest::Milli { milli, count: 1 }),
        (1..4u8).prop_map(|count| GpuRequest::Milli { milli: 1000, count }),
    ];
    let models = prop::sample::subsequence(MODELS.iter().map(|m| m.0.to_string()).collect::<Vec<_>>(), 0..=2);
    let labels = prop_oneof![
        Just(vec![]),
        (0..3u8).prop_map(|z| vec![LabelSelector::Equals { key: "zone".into(), value: format!("z{z}") }]),
        Just(vec![LabelSelector::NotIn { key: "zone".into(), values: vec!["z1".into()] }]),
        Just(vec![LabelSelector::In { key: "zone".into(), values: vec!["z0".into(), "z2".into()] }]),
    ];
    (
        gpu,
        0..4u64,
        0..4u64,
        models,
        prop_oneof![Just(0u64), Just(20_000), Just(50_000)],
        labels,
        any::<bool>(),
        0..2u8,
    )
        .prop_map(|(gpu, cpu, mem, gpu_models, min_mem, labels, spread, w)| PlacementRequest {
            workload: format!("w{w}"),
            gpu,
            cpu_milli: cpu * 1000,
            memory_mib: mem * 1000,
            constraints: Constraints {
                gpu_models,
                min_gpu_memory_mib: min_mem,
                labels,
                spread_replicas: spread,
            },
            policy: None,
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    prop::sample::select(Policy::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn placements_are_valid_and_refusals_are_true(
        snap in cluster(),
        reqs in prop::collection::vec(request(), 1..20),
        policy in policy(),
        limit in prop::option::of(1..4usize),
        seed in any::<u64>(),
    ) {
        let config = EngineConfig { default_policy: policy, candidate_limit: limit, ..EngineConfig::default() };
        let mut engine = Engine::new(&snap, config).unwrap();
        for (k, req) in reqs.iter().enumerate() {
            let before = engine.snapshot();
            let fits = brute_force_fits(&before, req);
            match engine.place_and_commit(req, seed.wrapping_add(k as u64)) {
                Ok(p) => {
                    prop_assert!(fits, "placed {p:?} but brute force finds no fit for {req:?}");
                    check_placement(&before, req, &p)?;
                    check_capacity(&engine.snapshot())?;
                }
                Err(PlaceError::Refused(r)) => {
                    prop_assert!(!fits, "refused {req:?} ({r}) but it fits");
                    prop_assert_eq!(engine.snapshot(), before);
                    let counted: usize = r.reasons.iter().map(|(_, n)| n).sum();
                    prop_assert_eq!(counted, snap.nodes.len(), "every node has a reason: {}", r);
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }

    /// A full-scan engine answers `place_and_commit` from its score cache;
    /// the answer must equal a fresh, uncached `place` on the same state.
    #[test]
    fn score_cache_matches_a_fresh_scan(
        snap in cluster(),
        reqs in prop::collection::vec(request(), 1..30),
        policy in policy(),
        seed in any::<u64>(),
    ) {
        let config = EngineConfig { default_policy: policy, candidate_limit: None, ..EngineConfig::default() };
        let mut engine = Engine::new(&snap, config.clone()).unwrap();
        // Repeat each request so cached entries are reused across commits.
        for (k, req) in reqs.iter().chain(reqs.iter()).enumerate() {
            let s = seed.wrapping_add(k as u64);
            let fresh = Engine::new(&engine.snapshot(), config.clone()).unwrap().place(req, s);
            let cached = engine.place_and_commit(req, s);
            prop_assert_eq!(cached, fresh);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Releasing every committed placement, last first, gives back exactly
    /// the cluster the engine was built from.
    #[test]
    fn release_undoes_commit(
        snap in cluster(),
        reqs in prop::collection::vec(request(), 1..20),
        policy in policy(),
        seed in any::<u64>(),
    ) {
        let config = EngineConfig { default_policy: policy, ..EngineConfig::default() };
        let mut engine = Engine::new(&snap, config).unwrap();
        let mut placed = Vec::new();
        for (k, req) in reqs.iter().enumerate() {
            if let Ok(p) = engine.place_and_commit(req, seed.wrapping_add(k as u64)) {
                placed.push((req, p));
            }
        }
        for (req, p) in placed.iter().rev() {
            engine.release(req, p).unwrap();
            check_capacity(&engine.snapshot())?;
        }
        prop_assert_eq!(engine.snapshot(), snap);
    }

    /// An engine that follows a changed cluster node by node (`set_node`,
    /// `push_node`) holds what an engine built afresh from it holds, leaves
    /// out the same nodes, and places the same way.
    #[test]
    fn set_node_follows_the_cluster_like_a_fresh_build(
        before in cluster(),
        after in cluster(),
        req in request(),
        policy in policy(),
        seed in any::<u64>(),
    ) {
        let mut after = after;
        // A follower of `before` keeps its indices: nodes beyond `after`'s stay as they were.
        after.nodes.extend(before.nodes.iter().skip(after.nodes.len()).cloned());
        let config = EngineConfig { default_policy: policy, candidate_limit: None, ..EngineConfig::default() };
        let (mut engine, _) = Engine::build(&before, config.clone());
        for (i, n) in after.nodes.iter().enumerate() {
            if i < engine.node_count() {
                engine.set_node(i, n).unwrap();
            } else {
                prop_assert_eq!(engine.push_node(n).0, i);
            }
        }
        let (fresh, excluded) = Engine::build(&after, config);
        prop_assert_eq!(engine.snapshot(), fresh.snapshot());
        prop_assert_eq!(engine.exclusions(), excluded.as_slice());
        prop_assert_eq!(engine.place(&req, seed), fresh.place(&req, seed));
    }
}

/// Whether `req` fits some node, checked GPU by GPU without the engine's code.
fn brute_force_fits(snap: &ClusterSnapshot, req: &PlacementRequest) -> bool {
    snap.nodes.iter().any(|n| node_ok(n, req) && gpus_ok(n, req))
}

fn node_ok(n: &NodeSnapshot, req: &PlacementRequest) -> bool {
    let c = &req.constraints;
    n.schedulable
        && c.labels.iter().all(|l| label_ok(l, &n.labels))
        && !(c.spread_replicas && n.workloads.contains(&req.workload))
        && n.cpu_used_milli + req.cpu_milli <= n.cpu_milli
        && n.memory_used_mib + req.memory_mib <= n.memory_mib
}

fn label_ok(l: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    match l {
        LabelSelector::Equals { key, value } => labels.get(key) == Some(value),
        LabelSelector::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
        LabelSelector::NotIn { key, values } => !labels.get(key).is_some_and(|v| values.contains(v)),
    }
}

fn gpu_allowed(g: &GpuSnapshot, req: &PlacementRequest) -> bool {
    let c = &req.constraints;
    g.healthy
        && (c.gpu_models.is_empty() || c.gpu_models.contains(&g.model))
        && g.memory_mib >= c.min_gpu_memory_mib
}

fn gpus_ok(n: &NodeSnapshot, req: &PlacementRequest) -> bool {
    let allowed: Vec<&GpuSnapshot> = n.gpus.iter().filter(|g| gpu_allowed(g, req)).collect();
    match &req.gpu {
        GpuRequest::None => true,
        GpuRequest::Exclusive { count, linked } => {
            let free: Vec<_> =
                allowed.iter().filter(|g| g.mode == GpuMode::Exclusive { allocated: false }).collect();
            free.iter().any(|a| {
                free.iter()
                    .filter(|b| b.model == a.model && (!linked || b.nvlink_domain == a.nvlink_domain))
                    .count()
                    >= usize::from(*count)
            })
        }
        GpuRequest::Milli { milli: 1000, count } => {
            let free: Vec<_> = allowed
                .iter()
                .filter(|g| match g.mode {
                    GpuMode::Exclusive { allocated } => !allocated,
                    GpuMode::Shared { tenants, .. } => tenants == 0,
                    _ => false,
                })
                .collect();
            free.iter().any(|a| free.iter().filter(|b| b.model == a.model).count() >= usize::from(*count))
        }
        GpuRequest::Milli { milli, .. } => allowed.iter().any(|g| match g.mode {
            GpuMode::Shared { milli: used, memory_mib, .. } => {
                used + milli <= 1000 && memory_mib + g.memory_mib * u64::from(*milli) / 1000 <= g.memory_mib
            }
            _ => false,
        }),
        GpuRequest::Shared { memory_mib: m } => allowed.iter().any(|g| match g.mode {
            GpuMode::Shared { memory_mib, .. } => memory_mib + m <= g.memory_mib,
            _ => false,
        }),
        GpuRequest::Mps { compute_pct, memory_mib: m } => allowed.iter().any(|g| match g.mode {
            GpuMode::Mps { clients, compute_pct: used, memory_mib } => {
                clients < 48 && used + u32::from(*compute_pct) <= 100 && memory_mib + m <= g.memory_mib
            }
            _ => false,
        }),
        GpuRequest::Mig { profile } => allowed.iter().any(|g| {
            let (GpuMode::Mig { instances }, Some(table)) = (&g.mode, mig::table_for_model(&g.model)) else {
                return false;
            };
            let Ok(p) = table.profile(profile) else { return false };
            let (mut used, mut me) = (0u8, false);
            for inst in instances {
                let q = table.profile(&inst.profile).unwrap();
                used |= (((1u16 << q.memory_slices) - 1) << inst.start) as u8;
                me |= q.media_extensions;
            }
            !(p.media_extensions && me)
                && p.starts.iter().any(|&s| used & ((((1u16 << p.memory_slices) - 1) << s) as u8) == 0)
        }),
    }
}

fn check_placement(
    before: &ClusterSnapshot,
    req: &PlacementRequest,
    p: &Placement,
) -> Result<(), TestCaseError> {
    let n = &before.nodes[p.node];
    prop_assert_eq!(&n.name, &p.node_name);
    prop_assert!(node_ok(n, req), "node constraints violated");
    prop_assert_eq!(p.gpus.len(), req.gpu.gpu_count());
    let mut seen: Vec<usize> = p.gpus.iter().map(|a| a.gpu).collect();
    seen.sort_unstable();
    seen.dedup();
    prop_assert_eq!(seen.len(), p.gpus.len(), "a GPU used twice");
    for a in &p.gpus {
        let g = &n.gpus[a.gpu];
        prop_assert!(gpu_allowed(g, req), "GPU constraint violated: {:?}", g);
        prop_assert_eq!(&g.model, &n.gpus[p.gpus[0].gpu].model, "mixed models");
        if let GpuRequest::Exclusive { linked: true, .. } = req.gpu {
            prop_assert_eq!(g.nvlink_domain, n.gpus[p.gpus[0].gpu].nvlink_domain, "not linked");
        }
        let ok = matches!(
            (&req.gpu, &a.share, &g.mode),
            (GpuRequest::Exclusive { .. }, GpuShare::Whole, GpuMode::Exclusive { allocated: false })
                | (
                    GpuRequest::Milli { milli: 1000, .. },
                    GpuShare::Whole,
                    GpuMode::Exclusive { allocated: false }
                )
                | (GpuRequest::Milli { .. }, GpuShare::Milli { .. }, GpuMode::Shared { .. })
                | (GpuRequest::Mps { .. }, GpuShare::Mps { .. }, GpuMode::Mps { .. })
                | (GpuRequest::Shared { .. }, GpuShare::Shared { .. }, GpuMode::Shared { .. })
                | (GpuRequest::Mig { .. }, GpuShare::Mig { .. }, GpuMode::Mig { .. })
        );
        prop_assert!(ok, "share {:?} for {:?} on {:?}", a.share, req.gpu, g.mode);
    }
    Ok(())
}

fn check_capacity(snap: &ClusterSnapshot) -> Result<(), TestCaseError> {
    for n in &snap.nodes {
        prop_assert!(n.cpu_used_milli <= n.cpu_milli && n.memory_used_mib <= n.memory_mib);
        for g in &n.gpus {
            match &g.mode {
                GpuMode::Exclusive { .. } => {}
                GpuMode::Mps { clients, compute_pct, memory_mib } => {
                    prop_assert!(*clients <= 48 && *compute_pct <= 100 && *memory_mib <= g.memory_mib)
                }
                GpuMode::Shared { milli, memory_mib, .. } => {
                    prop_assert!(*milli <= 1000 && *memory_mib <= g.memory_mib)
                }
                GpuMode::Mig { instances } => {
                    let table = mig::table_for_model(&g.model).unwrap();
                    let (mut used, mut compute, mut me) = (0u8, 0u8, 0);
                    for inst in instances {
                        let q = table.profile(&inst.profile).unwrap();
                        prop_assert!(q.starts.contains(&inst.start), "invalid start {:?}", inst);
                        let mask = (((1u16 << q.memory_slices) - 1) << inst.start) as u8;
                        prop_assert_eq!(used & mask, 0, "overlapping MIG instances {:?}", instances);
                        used |= mask;
                        compute += q.compute_slices;
                        me += u8::from(q.media_extensions);
                    }
                    prop_assert!(compute <= table.compute_slices && me <= 1);
                }
            }
        }
    }
    Ok(())
}
