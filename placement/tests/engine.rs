//! Engine behaviour on small, hand-built clusters: exact outputs.

#![allow(clippy::unwrap_used)]

use gantry_placement::{
    place, ClusterSnapshot, Constraints, Engine, EngineConfig, GpuMode, GpuRequest, GpuShare, GpuSnapshot,
    GpuTelemetry, LabelSelector, MigInstanceSpec, NodeSnapshot, PlaceError, PlacementRequest, Policy,
    RefusalReason,
};

fn h100(domain: Option<u32>) -> GpuSnapshot {
    let mut g = GpuSnapshot::exclusive("H100-80GB", 81_920);
    g.nvlink_domain = domain;
    g
}

fn req(gpu: GpuRequest) -> PlacementRequest {
    PlacementRequest {
        workload: "w".into(),
        gpu,
        cpu_milli: 1000,
        memory_mib: 1024,
        constraints: Constraints::default(),
        policy: None,
    }
}

fn node(name: &str, gpus: Vec<GpuSnapshot>) -> NodeSnapshot {
    NodeSnapshot::new(name, 64_000, 512_000, gpus)
}

fn refused(r: Result<gantry_placement::Placement, PlaceError>) -> gantry_placement::Refusal {
    match r {
        Err(PlaceError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn linked_request_needs_one_nvlink_domain_and_says_why() {
    // n0: 2 free GPUs but in different domains; n1: all busy; n2 down.
    let mut busy = h100(Some(0));
    busy.mode = GpuMode::Exclusive { allocated: true };
    let mut down = node("n2", vec![h100(Some(0)), h100(Some(0))]);
    down.schedulable = false;
    let snap = ClusterSnapshot {
        nodes: vec![
            node("n0", vec![h100(Some(0)), h100(Some(1))]),
            node("n1", vec![busy.clone(), busy]),
            down,
        ],
    };
    let mut r = req(GpuRequest::Exclusive { count: 2, linked: true });
    r.constraints.gpu_models = vec!["H100-80GB".into()];
    let refusal = refused(place(&snap, &r, Policy::Binpack, 1));
    assert_eq!(refusal.count(RefusalReason::NvLink), 1);
    assert_eq!(refusal.count(RefusalReason::GpuCapacity), 1);
    assert_eq!(refusal.count(RefusalReason::NodeDown), 1);
    let msg = refusal.to_string();
    assert!(msg.starts_with("no node with 2 free GPU(s) in one NVLink domain of model H100-80GB"), "{msg}");
    assert!(msg.contains("1 node is down"), "{msg}");
    // Unlinked, n0 takes it.
    let p =
        place(&snap, &req(GpuRequest::Exclusive { count: 2, linked: false }), Policy::Binpack, 1).unwrap();
    assert_eq!(p.node_name, "n0");
    assert_eq!(p.gpus.len(), 2);
}

#[test]
fn modes_side_by_side_on_one_node() {
    let gpus = vec![
        GpuSnapshot::exclusive("H100-80GB", 81_920),
        GpuSnapshot::with_mode("H100-80GB", 81_920, GpuMode::Mig { instances: vec![] }),
        GpuSnapshot::with_mode(
            "H100-80GB",
            81_920,
            GpuMode::Mps { clients: 0, compute_pct: 0, memory_mib: 0 },
        ),
        GpuSnapshot::shared("H100-80GB", 81_920),
    ];
    let snap = ClusterSnapshot { nodes: vec![node("n0", gpus)] };
    let mut e = Engine::new(&snap, EngineConfig::default()).unwrap();
    let p = e.place_and_commit(&req(GpuRequest::Mig { profile: "3g.40gb".into() }), 0).unwrap();
    assert_eq!(p.gpus[0].gpu, 1);
    assert!(matches!(p.gpus[0].share, GpuShare::Mig { start: 0 | 4, .. }));
    let p = e.place_and_commit(&req(GpuRequest::Mps { compute_pct: 30, memory_mib: 10_000 }), 0).unwrap();
    assert_eq!(p.gpus[0].gpu, 2);
    let p = e.place_and_commit(&req(GpuRequest::Shared { memory_mib: 20_000 }), 0).unwrap();
    assert_eq!(p.gpus[0].gpu, 3);
    let p = e.place_and_commit(&req(GpuRequest::Exclusive { count: 1, linked: false }), 0).unwrap();
    assert_eq!((p.gpus[0].gpu, &p.gpus[0].share), (0, &GpuShare::Whole));
    // Only MIG/MPS/shared room is left; a second exclusive GPU fits nowhere.
    let r = refused(e.place(&req(GpuRequest::Exclusive { count: 1, linked: false }), 0));
    assert_eq!(r.count(RefusalReason::GpuCapacity), 1);
    // The second 3g.40gb takes the other half; a third does not fit.
    e.place_and_commit(&req(GpuRequest::Mig { profile: "3g.40gb".into() }), 0).unwrap();
    refused(e.place(&req(GpuRequest::Mig { profile: "3g.40gb".into() }), 0));
    let snap = e.snapshot();
    let GpuMode::Mig { instances } = &snap.nodes[0].gpus[1].mode else { panic!("mode changed") };
    let mut starts: Vec<u8> = instances.iter().map(|i| i.start).collect();
    starts.sort_unstable();
    assert_eq!(starts, vec![0, 4]);
}

#[test]
fn mps_limits_compute_memory_and_clients() {
    let g = GpuSnapshot::with_mode(
        "A100-SXM4-40GB",
        40_960,
        GpuMode::Mps { clients: 47, compute_pct: 60, memory_mib: 0 },
    );
    let snap = ClusterSnapshot { nodes: vec![node("n0", vec![g])] };
    let mut e = Engine::new(&snap, EngineConfig::default()).unwrap();
    refused(e.place(&req(GpuRequest::Mps { compute_pct: 41, memory_mib: 1 }), 0));
    refused(e.place(&req(GpuRequest::Mps { compute_pct: 10, memory_mib: 40_961 }), 0));
    e.place_and_commit(&req(GpuRequest::Mps { compute_pct: 40, memory_mib: 100 }), 0).unwrap();
    // 48 clients now: even a tiny share is refused.
    refused(e.place(&req(GpuRequest::Mps { compute_pct: 1, memory_mib: 1 }), 0));
}

#[test]
fn existing_mig_layout_is_respected() {
    let layout = vec![
        MigInstanceSpec { profile: "1g.5gb".into(), start: 0 },
        MigInstanceSpec { profile: "3g.20gb".into(), start: 4 },
    ];
    let g = GpuSnapshot::with_mode("A100-SXM4-40GB", 40_960, GpuMode::Mig { instances: layout });
    let snap = ClusterSnapshot { nodes: vec![node("n0", vec![g])] };
    let e = Engine::new(&snap, EngineConfig::default()).unwrap();
    // 4g needs slices 0-3; 2g can go at 2; 7g nowhere.
    refused(e.place(&req(GpuRequest::Mig { profile: "4g.20gb".into() }), 0));
    let p = e.place(&req(GpuRequest::Mig { profile: "2g.10gb".into() }), 0).unwrap();
    assert_eq!(p.gpus[0].share, GpuShare::Mig { profile: "2g.10gb".into(), start: 2 });
    // A profile of another GPU family is refused with the capacity reason.
    refused(e.place(&req(GpuRequest::Mig { profile: "3g.40gb".into() }), 0));
    // An impossible snapshot is rejected up front.
    let bad = vec![
        MigInstanceSpec { profile: "4g.20gb".into(), start: 0 },
        MigInstanceSpec { profile: "2g.10gb".into(), start: 2 },
    ];
    let g = GpuSnapshot::with_mode("A100-SXM4-40GB", 40_960, GpuMode::Mig { instances: bad });
    assert!(
        Engine::new(&ClusterSnapshot { nodes: vec![node("n0", vec![g])] }, EngineConfig::default()).is_err()
    );
}

#[test]
fn least_loaded_follows_live_telemetry_not_reservations() {
    let mut busy = GpuSnapshot::exclusive("T4", 15_360);
    busy.telemetry = Some(GpuTelemetry { utilization_pct: 95, memory_used_mib: 14_000 });
    let mut idle = GpuSnapshot::exclusive("T4", 15_360);
    idle.telemetry = Some(GpuTelemetry { utilization_pct: 3, memory_used_mib: 200 });
    let snap =
        ClusterSnapshot { nodes: vec![node("hot", vec![busy.clone()]), node("cold", vec![idle.clone()])] };
    for seed in 0..8 {
        let p =
            place(&snap, &req(GpuRequest::Exclusive { count: 1, linked: false }), Policy::LeastLoaded, seed)
                .unwrap();
        assert_eq!(p.node_name, "cold");
    }
    // Binpack and spread only see reservations; they tie and break by seed.
    let mut names = std::collections::BTreeSet::new();
    for seed in 0..16 {
        let p = place(&snap, &req(GpuRequest::Exclusive { count: 1, linked: false }), Policy::Binpack, seed)
            .unwrap();
        names.insert(p.node_name);
    }
    assert_eq!(names.len(), 2, "ties break by seed");
}

#[test]
fn binpack_fills_and_spread_spreads() {
    let mut half = GpuSnapshot::shared("G2", 0);
    half.mode = GpuMode::Shared { tenants: 1, milli: 500, memory_mib: 0 };
    let snap = ClusterSnapshot {
        nodes: vec![
            node("empty", vec![GpuSnapshot::shared("G2", 0), GpuSnapshot::shared("G2", 0)]),
            node("half", vec![half, GpuSnapshot::shared("G2", 0)]),
        ],
    };
    let r = req(GpuRequest::Milli { milli: 400, count: 1 });
    let p = place(&snap, &r, Policy::Binpack, 7).unwrap();
    assert_eq!((p.node_name.as_str(), p.gpus[0].gpu), ("half", 0));
    let p = place(&snap, &r, Policy::Spread, 7).unwrap();
    assert_eq!(p.node_name, "empty");
    // FGD also prefers filling the half GPU (a 400 share left whole GPUs intact).
    let p = place(&snap, &r, Policy::Fgd, 7).unwrap();
    assert_eq!((p.node_name.as_str(), p.gpus[0].gpu), ("half", 0));
    // Same seed, same answer.
    assert_eq!(place(&snap, &r, Policy::FgdPack, 3).unwrap(), place(&snap, &r, Policy::FgdPack, 3).unwrap());
}

#[test]
fn constraints_labels_models_memory_and_anti_affinity() {
    let mut a = node("a", vec![GpuSnapshot::exclusive("T4", 15_360)]);
    a.labels.insert("zone".into(), "east".into());
    let mut b = node("b", vec![GpuSnapshot::exclusive("H100-80GB", 81_920)]);
    b.labels.insert("zone".into(), "west".into());
    b.workloads.insert("w".into());
    let snap = ClusterSnapshot { nodes: vec![a, b] };
    let mut r = req(GpuRequest::Exclusive { count: 1, linked: false });
    r.constraints.min_gpu_memory_mib = 40_000;
    assert_eq!(place(&snap, &r, Policy::Spread, 0).unwrap().node_name, "b");
    r.constraints.spread_replicas = true;
    let refusal = refused(place(&snap, &r, Policy::Spread, 0));
    assert_eq!(refusal.count(RefusalReason::AntiAffinity), 1);
    assert_eq!(refusal.count(RefusalReason::GpuMemory), 1);
    let mut r = req(GpuRequest::Exclusive { count: 1, linked: false });
    r.constraints.labels = vec![LabelSelector::NotIn { key: "zone".into(), values: vec!["west".into()] }];
    assert_eq!(place(&snap, &r, Policy::Binpack, 0).unwrap().node_name, "a");
    r.constraints.gpu_models = vec!["H100-80GB".into(), "A100-SXM4-80GB".into()];
    let refusal = refused(place(&snap, &r, Policy::Binpack, 0));
    assert_eq!(refusal.count(RefusalReason::Labels) + refusal.count(RefusalReason::GpuModel), 2);
    let mut r = req(GpuRequest::None);
    r.cpu_milli = 100_000;
    let refusal = refused(place(&snap, &r, Policy::Binpack, 0));
    assert!(refusal.to_string().contains("2 nodes lack free CPU"), "{refusal}");
}

#[test]
fn invalid_requests_are_rejected_before_search() {
    let snap = ClusterSnapshot { nodes: vec![node("n", vec![GpuSnapshot::exclusive("T4", 15_360)])] };
    for gpu in [
        GpuRequest::Exclusive { count: 0, linked: false },
        GpuRequest::Exclusive { count: 9, linked: false },
        GpuRequest::Mps { compute_pct: 0, memory_mib: 1 },
        GpuRequest::Mps { compute_pct: 101, memory_mib: 1 },
        GpuRequest::Milli { milli: 500, count: 2 },
        GpuRequest::Milli { milli: 1001, count: 1 },
        GpuRequest::Mig { profile: "9g.99gb".into() },
    ] {
        assert!(
            matches!(place(&snap, &req(gpu.clone()), Policy::Binpack, 0), Err(PlaceError::Invalid(_))),
            "{gpu:?}"
        );
    }
}

#[test]
fn commit_rejects_a_stale_plan() {
    let snap = ClusterSnapshot { nodes: vec![node("n", vec![GpuSnapshot::exclusive("T4", 15_360)])] };
    let mut e = Engine::new(&snap, EngineConfig::default()).unwrap();
    let r = req(GpuRequest::Exclusive { count: 1, linked: false });
    let p = e.place(&r, 0).unwrap();
    e.commit(&r, &p).unwrap();
    // The same plan again would hand the GPU out twice.
    assert!(e.commit(&r, &p).is_err());
}

#[test]
fn release_gives_back_once_and_a_spread_workload_returns() {
    let snap = ClusterSnapshot { nodes: vec![node("n", vec![GpuSnapshot::exclusive("T4", 15_360)])] };
    let mut e = Engine::new(&snap, EngineConfig::default()).unwrap();
    let mut r = req(GpuRequest::Exclusive { count: 1, linked: false });
    r.constraints.spread_replicas = true;
    let p = e.place_and_commit(&r, 0).unwrap();
    refused(e.place(&r, 1));
    e.release(&r, &p).unwrap();
    assert_eq!(e.snapshot(), snap, "the GPU, CPU, memory and the workload's place are back");
    // The second release would give back a GPU nobody holds.
    let before = e.snapshot();
    assert!(e.release(&r, &p).is_err());
    assert_eq!(e.snapshot(), before, "a refused release changes nothing");
    // And the spread replica can come back to this node.
    assert_eq!(e.place(&r, 2).unwrap().node, 0);
}

#[test]
fn set_node_takes_a_changed_node_and_push_node_a_new_one() {
    let t4 = || GpuSnapshot::exclusive("T4", 15_360);
    let snap = ClusterSnapshot { nodes: vec![node("a", vec![t4()])] };
    let mut e = Engine::new(&snap, EngineConfig::default()).unwrap();
    let r = req(GpuRequest::Exclusive { count: 1, linked: false });
    e.place_and_commit(&r, 0).unwrap();
    refused(e.place(&r, 0));
    // The node reports its GPU free again (the replica stopped).
    e.set_node(0, &node("a", vec![t4()])).unwrap();
    assert_eq!(e.place(&r, 0).unwrap().node_name, "a");
    // A new node with a model the engine has not seen.
    let mut down = node("a", vec![t4()]);
    down.schedulable = false;
    e.set_node(0, &down).unwrap();
    assert_eq!(e.push_node(&node("b", vec![h100(None)])).0, 1);
    assert_eq!(e.place(&r, 0).unwrap().node_name, "b");
    assert!(matches!(e.set_node(5, &down), Err(gantry_placement::EngineError::NoSuchNode(5))));
}

#[test]
fn fgd_pack_keeps_constrained_models_for_the_tasks_that_need_them() {
    use gantry_placement::{Shape, TargetWorkload};
    let gpus = |m: &str| (0..2).map(|_| GpuSnapshot::shared(m, 16_000)).collect();
    let snap = ClusterSnapshot {
        nodes: vec![
            NodeSnapshot::new("t4", 64_000, 512_000, gpus("T4")),
            NodeSnapshot::new("v100", 64_000, 512_000, gpus("V100")),
        ],
    };
    let shape =
        |models: Vec<String>| Shape { cpu_milli: 1000, gpu_count: 1, milli: 1000, models, weight: 0.5 };
    let target = TargetWorkload { shapes: vec![shape(vec!["T4".into()]), shape(vec![])] };
    let whole = GpuRequest::Milli { milli: 1000, count: 1 };
    for seed in 0..8 {
        let config =
            EngineConfig { candidate_limit: None, target: target.clone(), ..EngineConfig::default() };
        let mut e = Engine::new(&snap, config).unwrap();
        // Two unconstrained tasks first: they must leave both T4s free.
        for _ in 0..2 {
            assert_eq!(e.place_and_commit(&req(whole.clone()), seed).unwrap().node_name, "v100");
        }
        let mut t4 = req(whole.clone());
        t4.constraints.gpu_models = vec!["T4".into()];
        for _ in 0..2 {
            assert_eq!(e.place_and_commit(&t4, seed).unwrap().node_name, "t4");
        }
    }
}

/// The issue "One node can stop all scheduling": a MIG-mode GPU of a model
/// without a MIG table on one node and an over-committed GPU on another
/// leave those two nodes out; the rest keeps scheduling.
#[test]
fn one_bad_node_does_not_stop_scheduling() {
    let l40s = |mode| GpuSnapshot::with_mode("L40S", 46_068, mode);
    let free = GpuMode::Exclusive { allocated: false };
    let bad_mig = node(
        "bad-mig",
        vec![l40s(free.clone()), l40s(free.clone()), l40s(free), l40s(GpuMode::Mig { instances: vec![] })],
    );
    let over = node(
        "over",
        vec![GpuSnapshot::with_mode(
            "H100-80GB",
            81_920,
            GpuMode::Mps { clients: 3, compute_pct: 120, memory_mib: 1_000 },
        )],
    );
    let a30 = GpuSnapshot::with_mode("A30-24GB", 24_576, GpuMode::Mig { instances: vec![] });
    let snap = ClusterSnapshot {
        nodes: vec![node("good", vec![h100(None)]), bad_mig, over, node("a30", vec![a30])],
    };

    // The strict constructor still refuses the whole snapshot.
    let err = Engine::new(&snap, EngineConfig::default()).unwrap_err().to_string();
    assert!(err.contains("bad-mig") && err.contains("GPU 3"), "{err}");

    let (mut e, excluded) = Engine::build(&snap, EngineConfig::default());
    assert_eq!(excluded.len(), 2, "{excluded:?}");
    assert_eq!(e.exclusions(), &excluded[..]);
    assert_eq!((excluded[0].node, excluded[0].name.as_str()), (1, "bad-mig"));
    assert!(
        excluded[0].reason.starts_with(
            "GPU 3 (L40S) is in MIG mode but L40S has no MIG geometry: MIG is not supported on this model"
        ),
        "{}",
        excluded[0].reason
    );
    assert_eq!((excluded[1].node, excluded[1].name.as_str()), (2, "over"));
    assert!(
        excluded[1].reason.starts_with("GPU 0 (H100-80GB) holds more than it has"),
        "{}",
        excluded[1].reason
    );
    assert!(excluded[1].reason.contains("120 %"), "{}", excluded[1].reason);
    assert!(excluded[0].to_string().starts_with("node \"bad-mig\" is excluded: GPU 3 (L40S)"));

    // The good nodes take work: a whole GPU, then A30 MIG instances in its own 4-slice geometry.
    let whole = req(GpuRequest::Exclusive { count: 1, linked: false });
    assert_eq!(e.place_and_commit(&whole, 0).unwrap().node_name, "good");
    let two = req(GpuRequest::Mig { profile: "2g.12gb".into() });
    let mut starts = Vec::new();
    for _ in 0..2 {
        let p = e.place_and_commit(&two, 0).unwrap();
        assert_eq!(p.node_name, "a30");
        let GpuShare::Mig { start, .. } = p.gpus[0].share else { panic!("{p:?}") };
        starts.push(start);
    }
    starts.sort_unstable();
    assert_eq!(starts, [0, 2]);

    // Nothing fits now: the refusal counts the excluded nodes and says why.
    let r = refused(e.place(&whole, 0));
    assert_eq!(r.nodes_total, 4);
    assert_eq!(r.count(RefusalReason::Excluded), 2);
    assert_eq!(r.count(RefusalReason::GpuCapacity), 2);
    let msg = r.to_string();
    assert!(
        msg.contains("2 nodes lack free GPU capacity; 2 nodes are excluded: bad-mig: GPU 3 (L40S)"),
        "{msg}"
    );
    assert!(msg.contains("; over: GPU 0 (H100-80GB) holds more than it has"), "{msg}");
    // An L40S request: the only L40S node is excluded (its models are not known to the engine).
    let mut l = req(GpuRequest::Exclusive { count: 1, linked: false });
    l.constraints.gpu_models = vec!["L40S".into()];
    let r = refused(e.place(&l, 0));
    assert_eq!((r.count(RefusalReason::Excluded), r.count(RefusalReason::GpuModel)), (2, 2));

    // A plan aimed at an excluded node does not commit.
    let p = gantry_placement::Placement {
        node: 1,
        node_name: "bad-mig".into(),
        gpus: vec![gantry_placement::GpuAssignment { gpu: 0, share: GpuShare::Whole }],
    };
    let err = e.commit(&whole, &p).unwrap_err().to_string();
    assert!(err.contains("excluded"), "{err}");

    // The snapshot hands excluded nodes back as they came, others with the commits.
    let out = e.snapshot();
    assert_eq!(out.nodes[1], snap.nodes[1]);
    assert_eq!(out.nodes[2], snap.nodes[2]);
    assert_eq!(out.nodes[0].gpus[0].mode, GpuMode::Exclusive { allocated: true });

    // The one-shot `place` builds leniently too.
    assert_eq!(place(&snap, &whole, Policy::Binpack, 0).unwrap().node_name, "good");
}

#[test]
fn a_refusal_counts_one_excluded_node() {
    let mig = GpuSnapshot::with_mode("T4", 15_360, GpuMode::Mig { instances: vec![] });
    let mut down = node("down", vec![h100(None)]);
    down.schedulable = false;
    let snap = ClusterSnapshot { nodes: vec![node("t4", vec![mig]), down] };
    let (e, excluded) = Engine::build(&snap, EngineConfig::default());
    assert_eq!(excluded.len(), 1);
    let r = refused(e.place(&req(GpuRequest::Exclusive { count: 1, linked: false }), 0));
    assert_eq!((r.count(RefusalReason::Excluded), r.count(RefusalReason::NodeDown)), (1, 1));
    assert_eq!(r.excluded, vec![format!("t4: {}", excluded[0].reason)]);
    let msg = r.to_string();
    assert!(
        msg.ends_with(
            "; 1 node is down or cordoned; 1 node is excluded: t4: GPU 0 (T4) is in MIG mode but T4 has no MIG \
             geometry: MIG is not supported on this model, or its profile table is not known"
        ),
        "{msg}"
    );
}

/// Model sets used to be a u64: a 65th model failed the engine. Now 256 are
/// tracked, and a node that would add more is excluded, not fatal.
#[test]
fn many_gpu_models_and_the_model_limit() {
    let limit = Engine::MAX_MODELS;
    assert_eq!(limit, 256);
    let cluster = |n: usize| ClusterSnapshot {
        nodes: (0..n)
            .map(|i| node(&format!("n{i}"), vec![GpuSnapshot::exclusive(&format!("M{i}"), 16_000)]))
            .collect(),
    };
    let snap = cluster(100);
    let e = Engine::new(&snap, EngineConfig::default()).unwrap();
    let mut r = req(GpuRequest::Exclusive { count: 1, linked: false });
    r.constraints.gpu_models = vec!["M99".into()];
    assert_eq!(e.place(&r, 0).unwrap().node_name, "n99");

    let snap = cluster(limit + 10);
    assert!(Engine::new(&snap, EngineConfig::default()).is_err());
    let (e, excluded) = Engine::build(&snap, EngineConfig::default());
    assert_eq!(excluded.iter().map(|x| x.node).collect::<Vec<_>>(), (limit..limit + 10).collect::<Vec<_>>());
    assert!(excluded[0].reason.contains("256 distinct models"), "{}", excluded[0].reason);
    r.constraints.gpu_models = vec![format!("M{}", limit - 1)];
    assert_eq!(e.place(&r, 0).unwrap().node_name, format!("n{}", limit - 1));
    r.constraints.gpu_models = vec![format!("M{}", limit + 3)];
    let refusal = refused(e.place(&r, 0));
    assert_eq!(refusal.count(RefusalReason::Excluded), 10);
    assert!(refusal.to_string().contains("10 nodes are excluded: "), "{refusal}");
    assert!(refusal.to_string().contains("; and 7 more"), "{refusal}");
    // Unconstrained work still goes anywhere but the excluded nodes.
    let any = req(GpuRequest::Exclusive { count: 1, linked: false });
    let p = e.place(&any, 5).unwrap();
    assert!(p.node < limit, "{p:?}");
}
