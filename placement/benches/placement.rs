//! Placements per second on a 10,000-node cluster (8 GPUs each, mixed
//! modes), one request at a time, committed as they go.
//!
//! `cargo bench -p gantry-placement --bench placement -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gantry_placement::{
    ClusterSnapshot, Constraints, Engine, EngineConfig, GpuMode, GpuRequest, GpuSnapshot, GpuTelemetry,
    NodeSnapshot, PlacementRequest, Policy,
};

const NODES: usize = 10_000;

fn cluster() -> ClusterSnapshot {
    let nodes = (0..NODES)
        .map(|i| {
            let (model, mem) = if i % 4 == 3 { ("A100-SXM4-40GB", 40_960) } else { ("H100-80GB", 81_920) };
            let gpus = (0..8)
                .map(|g| {
                    let mode = match (i + g) % 8 {
                        0..=3 => GpuMode::Exclusive { allocated: false },
                        4 => GpuMode::Mig { instances: vec![] },
                        5 => GpuMode::Mps { clients: 0, compute_pct: 0, memory_mib: 0 },
                        _ => GpuMode::Shared { tenants: 0, milli: 0, memory_mib: 0 },
                    };
                    let mut s = GpuSnapshot::with_mode(model, mem, mode);
                    s.nvlink_domain = Some((g / 4) as u32);
                    s.telemetry = Some(GpuTelemetry {
                        utilization_pct: ((i * 7 + g * 13) % 100) as u8,
                        memory_used_mib: (i as u64 * 31 + g as u64 * 17) % mem,
                    });
                    s
                })
                .collect();
            let mut n = NodeSnapshot::new(&format!("node-{i:05}"), 128_000, 1_048_576, gpus);
            n.labels.insert("rack".into(), format!("r{}", i % 50));
            n
        })
        .collect();
    ClusterSnapshot { nodes }
}

fn requests() -> Vec<PlacementRequest> {
    let r = |gpu, models: &[&str]| PlacementRequest {
        workload: "bench".into(),
        gpu,
        cpu_milli: 2000,
        memory_mib: 8192,
        constraints: Constraints {
            gpu_models: models.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        },
        policy: None,
    };
    vec![
        r(GpuRequest::Exclusive { count: 1, linked: false }, &[]),
        r(GpuRequest::Exclusive { count: 2, linked: true }, &["H100-80GB"]),
        r(GpuRequest::Mig { profile: "1g.10gb".into() }, &["H100-80GB"]),
        r(GpuRequest::Mps { compute_pct: 20, memory_mib: 10_000 }, &[]),
        r(GpuRequest::Shared { memory_mib: 8_000 }, &[]),
        r(GpuRequest::Milli { milli: 250, count: 1 }, &[]),
        r(GpuRequest::Exclusive { count: 4, linked: true }, &[]),
        r(GpuRequest::Mig { profile: "3g.20gb".into() }, &["A100-SXM4-40GB"]),
        r(GpuRequest::Milli { milli: 500, count: 1 }, &[]),
        r(GpuRequest::None, &[]),
    ]
}

fn bench(c: &mut Criterion) {
    let snap = cluster();
    let reqs = requests();
    let mut group = c.benchmark_group("place_and_commit_10k_nodes");
    group.throughput(Throughput::Elements(1));
    for policy in [Policy::LeastLoaded, Policy::Binpack, Policy::Spread, Policy::Fgd, Policy::FgdPack] {
        let config = EngineConfig { default_policy: policy, ..EngineConfig::default() };
        let fresh = Engine::new(&snap, config).expect("bench cluster is valid");
        group.bench_function(policy.name(), |b| {
            let mut engine = fresh.clone();
            let mut placed = 0usize;
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for k in 0..iters {
                    // Refill after NODES placements (about a sixth of the GPUs; outside the timing),
                    // so every placement is measured on a similar cluster.
                    if placed >= NODES {
                        engine = fresh.clone();
                        placed = 0;
                    }
                    let req = &reqs[(k as usize) % reqs.len()];
                    let t = Instant::now();
                    let r = engine.place_and_commit(black_box(req), k);
                    spent += t.elapsed();
                    placed += usize::from(r.is_ok());
                }
                spent
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
