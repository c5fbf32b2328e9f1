//! One planning round at 10,000 nodes (8 GPUs each, 40,000 replicas
//! running), for a new workload of 100 one-GPU replicas: an engine built
//! afresh from every node (how rounds ran before the engine was kept), and
//! the engine kept across rounds, brought to the new state by what changed.
//!
//! `cargo bench -p gantry-coordinator --bench planner_round -- --warm-up-time 1 --measurement-time 5`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use gantry_common::model::{GpuInfo, GpuSharing, HostInfo, MigMode, NodeInfo};
use gantry_common::workload::parse_workload_toml;
use gantry_coordinator::scheduler::live_engine::LiveEngine;
use gantry_coordinator::scheduler::plan::{plan, plan_on, ClusterTelemetry, Todo};
use gantry_coordinator::state::{apply, Command, State};
use gantry_placement::EngineConfig;

const NODES: usize = 10_000;

fn node(i: usize) -> NodeInfo {
    let name = format!("node-{i:05}");
    NodeInfo {
        name: name.clone(),
        labels: BTreeMap::new(),
        host: HostInfo {
            hostname: name.clone(),
            cpu_count: 128,
            memory_total_mib: 1_048_576,
            os: "linux".into(),
            kernel: "6".into(),
        },
        gpus: (0..8)
            .map(|g| GpuInfo {
                index: g,
                uuid: format!("GPU-{name}-{g}"),
                model: "H100-80GB".into(),
                memory_total_mib: 81_559,
                mig_mode: MigMode::Disabled,
                nvlink_domain: Some(g / 4),
                sharing: GpuSharing::Exclusive,
            })
            .collect(),
        agent_version: "bench".into(),
        gpu_backend: "sim".into(),
        address: "127.0.0.1".into(),
        http_addr: String::new(),
    }
}

fn submit(state: &mut State, name: &str, replicas: u32) {
    let spec = parse_workload_toml(&format!(
        "name = \"{name}\"\ncommand = \"/bin/x\"\nreplicas = {replicas}\n[resources]\ncpu = 0.1\nmemory_mib = 64\n\
         [gpu]\nmode = \"exclusive\"\ncount = 1\n"
    ))
    .expect("a valid spec");
    apply(state, &Command::SubmitWorkload { spec });
}

/// Plans and applies until every replica is placed.
fn converge(state: &mut State, config: &EngineConfig) {
    loop {
        let round = plan(state, &ClusterTelemetry::new(), config, 1);
        if round.plan.place.is_empty() {
            return;
        }
        apply(state, &Command::ApplyPlan(round.plan));
    }
}

fn bench(c: &mut Criterion) {
    let config = EngineConfig::default();
    let mut state = State::default();
    for i in 0..NODES {
        apply(&mut state, &Command::RegisterNode { info: node(i) });
    }
    for w in 0..4 {
        submit(&mut state, &format!("base-{w}"), 10_000);
    }
    converge(&mut state, &config);
    let before = Arc::new(state.frozen());
    submit(&mut state, "new", 100);
    let after = Arc::new(state.frozen());
    let none = ClusterTelemetry::new();
    let kept = LiveEngine::build(Arc::clone(&before), &none, &config);

    let mut g = c.benchmark_group("planner_round_10k_nodes");
    g.sample_size(10);
    g.bench_function("engine_built_afresh", |b| {
        b.iter(|| {
            let mut live = LiveEngine::build(Arc::clone(&after), &none, &config);
            black_box(plan_on(&mut live, 7, &Todo::All).plan.place.len())
        })
    });
    g.bench_function("engine_kept_and_followed", |b| {
        b.iter_batched(
            || kept.clone(),
            |mut live| {
                let delta = live.delta(&after);
                let todo = delta.todo.clone();
                live.follow(Arc::clone(&after), &none, delta);
                black_box(plan_on(&mut live, 7, &todo).plan.place.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
