//! Sample values of the stored and wire types, every field and variant set
//! to something recognisable, for the golden-bytes tests of this crate and
//! of the coordinator. Changing a sample changes its golden bytes: add a new
//! sample instead.

use std::collections::BTreeMap;

use gantry_placement::{Constraints, GpuRequest, GpuShare, LabelSelector, Policy};

use crate::model::{GpuInfo, GpuSharing, HostInfo, MigMode, NodeInfo};
use crate::workload::{
    ActualState, AllocGpu, AllocReport, Allocation, DesiredState, HealthCheck, HealthState, PortSpec,
    RestartMode, RestartPolicy, RuntimeSpec, WorkloadSpec,
};

pub fn node() -> NodeInfo {
    NodeInfo {
        name: "gpu-01".into(),
        labels: BTreeMap::from([("rack".into(), "r7".into()), ("zone".into(), "a".into())]),
        host: HostInfo {
            hostname: "gpu-01.example".into(),
            cpu_count: 64,
            memory_total_mib: 515_000,
            os: "Debian GNU/Linux 12".into(),
            kernel: "6.1.0-18-amd64".into(),
        },
        gpus: vec![
            GpuInfo {
                index: 0,
                uuid: "GPU-5b3f1e2a-0000-4000-8000-000000000000".into(),
                model: "H100-80GB".into(),
                memory_total_mib: 81_559,
                mig_mode: MigMode::Enabled,
                nvlink_domain: Some(0),
                sharing: GpuSharing::Mig,
            },
            GpuInfo {
                index: 1,
                uuid: "GPU-5b3f1e2a-0000-4000-8000-000000000001".into(),
                model: "H100-80GB".into(),
                memory_total_mib: 81_559,
                mig_mode: MigMode::Disabled,
                nvlink_domain: None,
                sharing: GpuSharing::Mps,
            },
        ],
        agent_version: "0.1.0".into(),
        gpu_backend: "nvml".into(),
        address: "10.0.1.21".into(),
        http_addr: "127.0.0.1:9410".into(),
    }
}

pub fn spec() -> WorkloadSpec {
    WorkloadSpec {
        name: "llm".into(),
        runtime: RuntimeSpec::Docker { image: "gantry-infer:dev".into() },
        args: vec!["--model".into(), "/models/tiny.json".into()],
        env: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
        ports: vec![PortSpec { name: "http".into(), port: 8080 }],
        replicas: 4,
        restart: RestartPolicy { mode: RestartMode::OnFailure, backoff_ms: 1_000, max_backoff_ms: 30_000 },
        cpu_milli: 500,
        memory_mib: 512,
        gpu: GpuRequest::Mps { compute_pct: 25, memory_mib: 10_000 },
        constraints: Constraints {
            gpu_models: vec!["H100-80GB".into()],
            min_gpu_memory_mib: 40_000,
            labels: vec![
                LabelSelector::Equals { key: "zone".into(), value: "a".into() },
                LabelSelector::In { key: "rack".into(), values: vec!["r1".into(), "r7".into()] },
                LabelSelector::NotIn { key: "pool".into(), values: vec!["batch".into()] },
            ],
            spread_replicas: true,
        },
        policy: Some(Policy::Binpack),
        health: Some(HealthCheck {
            path: "/health".into(),
            port: "http".into(),
            interval_ms: 2_000,
            timeout_ms: 1_000,
            initial_delay_ms: 500,
            failure_threshold: 3,
        }),
        stop_grace_ms: 10_000,
        user: None,
    }
}

/// A process workload in another GPU mode, with a user.
pub fn process_spec() -> WorkloadSpec {
    WorkloadSpec {
        name: "job".into(),
        runtime: RuntimeSpec::Process { command: "/usr/bin/gantry-infer".into() },
        gpu: GpuRequest::Exclusive { count: 2, linked: true },
        policy: None,
        health: None,
        restart: RestartPolicy { mode: RestartMode::Never, backoff_ms: 500, max_backoff_ms: 500 },
        user: Some("ml".into()),
        ..spec()
    }
}

pub fn alloc() -> Allocation {
    Allocation {
        id: "llm.2.17".into(),
        workload: "llm".into(),
        version: 3,
        replica: 2,
        node: "gpu-01".into(),
        gpus: vec![
            AllocGpu {
                index: 0,
                uuid: "GPU-0".into(),
                share: GpuShare::Mig { profile: "1g.10gb".into(), start: 6 },
            },
            AllocGpu {
                index: 1,
                uuid: "GPU-1".into(),
                share: GpuShare::Mps { compute_pct: 25, memory_mib: 10_000 },
            },
        ],
        cpu_milli: 500,
        memory_mib: 512,
        desired: DesiredState::Run,
        desired_reason: String::new(),
        actual: ActualState::Running,
        health: HealthState::Healthy,
        restarts: 1,
        message: "restarted after: exit code 1".into(),
        ports: BTreeMap::from([("http".into(), 20_001)]),
        devices: vec!["MIG-1".into(), "GPU-1".into()],
        exit_code: Some(1),
        failures: 1,
        start_failed: false,
    }
}

pub fn report() -> AllocReport {
    AllocReport {
        id: "llm.2.17".into(),
        actual: ActualState::Completed,
        health: HealthState::Unknown,
        restarts: 0,
        message: "exit code 0".into(),
        ports: BTreeMap::new(),
        devices: vec!["GPU-1".into()],
        exit_code: Some(0),
        failures: 0,
        start_failed: false,
    }
}

/// Every GPU share, for the placement types inside stored allocations.
pub fn shares() -> Vec<GpuShare> {
    vec![
        GpuShare::Whole,
        GpuShare::Mig { profile: "3g.40gb".into(), start: 4 },
        GpuShare::Mps { compute_pct: 50, memory_mib: 20_000 },
        GpuShare::Shared { memory_mib: 8_000 },
        GpuShare::Milli { milli: 250 },
    ]
}

/// Every GPU request.
pub fn requests() -> Vec<GpuRequest> {
    vec![
        GpuRequest::None,
        GpuRequest::Exclusive { count: 1, linked: false },
        GpuRequest::Mig { profile: "1g.10gb".into() },
        GpuRequest::Mps { compute_pct: 25, memory_mib: 10_000 },
        GpuRequest::Shared { memory_mib: 8_000 },
        GpuRequest::Milli { milli: 500, count: 1 },
    ]
}
