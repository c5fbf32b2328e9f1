//! Golden bytes of every wire message (see `gantry_common::schema`).
//!
//! Each sample's encoding must equal `tests/golden/v2/<name>.hex`, and the
//! committed bytes must decode back to the sample. A failure means the wire
//! format changed: a compatible change (a new defaulted field) gets a new
//! sample and golden next to the old ones, which must keep decoding; an
//! incompatible one needs a new protocol version. Write a missing golden
//! with `GANTRY_BLESS=1 cargo test -p gantry-common --test golden`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use gantry_common::api::*;
use gantry_common::model::{GpuHealth, GpuTelemetry, HostTelemetry};
use gantry_common::schema::{check_golden, samples};
use gantry_common::wire::*;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v2")
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        node: "gpu-01".into(),
        seq: 42,
        host: HostTelemetry { cpu_usage_pct: 12.5, memory_used_mib: 100_000 },
        gpus: vec![
            GpuTelemetry {
                index: 0,
                memory_used_mib: 20_000,
                utilization_pct: 87,
                temperature_c: 61,
                power_w: 412.5,
                health: GpuHealth::Healthy,
                mps_clients: None,
                mig_instances: 3,
            },
            GpuTelemetry {
                index: 1,
                memory_used_mib: 0,
                utilization_pct: 0,
                temperature_c: 40,
                power_w: 70.0,
                health: GpuHealth::Unhealthy("Xid 79: fell off the bus".into()),
                mps_clients: Some(4),
                mig_instances: 0,
            },
        ],
    }
}

fn views() -> (NodeView, GpuView, WorkloadView, AllocView, ClusterStatus) {
    let node = NodeView {
        name: "gpu-01".into(),
        status: gantry_common::model::NodeStatus::Ready,
        heartbeat_age_s: Some(0.5),
        labels: [("zone".to_string(), "a".to_string())].into(),
        cpu_count: 64,
        memory_total_mib: 515_000,
        cpu_usage_pct: Some(3.5),
        memory_used_mib: None,
        gpu_count: 8,
        gpu_backend: "nvml".into(),
        agent_version: "0.1.0".into(),
        drained: false,
        allocs: 3,
        problem: Some("not scheduled: GPU 3 (L40S) is in MIG mode".into()),
    };
    let gpu = GpuView {
        node: "gpu-01".into(),
        index: 1,
        uuid: "GPU-1".into(),
        model: "H100-80GB".into(),
        memory_total_mib: 81_559,
        memory_used_mib: Some(1_000),
        utilization_pct: Some(5),
        temperature_c: None,
        power_w: Some(70.5),
        mig_mode: gantry_common::model::MigMode::Disabled,
        sharing: gantry_common::model::GpuSharing::Mps,
        allocs: 2,
        mps_clients: Some(2),
        mig_instances: None,
        health: "healthy".into(),
        health_reason: None,
    };
    let workload = WorkloadView {
        name: "llm".into(),
        version: 3,
        runtime: "docker".into(),
        target: "gantry-infer:dev".into(),
        gpu: "an MPS GPU with 25% compute and 10000 MiB free".into(),
        replicas: 4,
        running: 3,
        healthy: 2,
        pending: 1,
        status: "crash-looping".into(),
        pending_reason: None,
        reason: Some("replica llm.1.9 failed 3 times in a row: exit code 1".into()),
        completed: 0,
        failed: 0,
    };
    let alloc = AllocView {
        id: "llm.2.17".into(),
        workload: "llm".into(),
        replica: 2,
        version: 3,
        node: "gpu-01".into(),
        gpus: vec!["MPS 25% 10000MiB on GPU 1".into()],
        devices: vec!["GPU-1".into()],
        desired: "run".into(),
        actual: "running".into(),
        health: "healthy".into(),
        restarts: 1,
        message: String::new(),
        ports: [("http".to_string(), 20_001)].into(),
        endpoint: Some("10.0.1.21:20001".into()),
        agent_http: "127.0.0.1:9410".into(),
        exit_code: Some(1),
        failures: 1,
        start_failed: false,
        crash_looping: false,
    };
    let status = ClusterStatus {
        answered_by: 2,
        leader: None,
        term: 7,
        commit_index: Some(5_092),
        last_applied: Some(5_092),
        members: vec![MemberView {
            id: 1,
            address: "10.0.0.1:7400".into(),
            role: MemberRole::Follower,
            term: 7,
            commit_index: None,
            reachable: false,
            protocol: None,
        }],
        stale: Some(Staleness {
            answered_by: 2,
            applied_index: Some(5_092),
            leader_seen_s_ago: Some(12.25),
            reason: "no leader".into(),
        }),
    };
    (node, gpu, workload, alloc, status)
}

#[test]
fn agent_messages_keep_their_bytes() {
    let d = dir();
    check_golden(&d, "agent_register", &AgentRequest::Register(samples::node()));
    check_golden(&d, "agent_heartbeat", &AgentRequest::Heartbeat(heartbeat()));
    check_golden(
        &d,
        "agent_watch_desired",
        &AgentRequest::WatchDesired { node: "gpu-01".into(), index: u64::MAX, wait_ms: 15_000 },
    );
    check_golden(
        &d,
        "agent_report_allocs",
        &AgentRequest::ReportAllocs { node: "gpu-01".into(), reports: vec![samples::report()] },
    );
    let responses = [
        ("response_registered", AgentResponse::Registered),
        ("response_heartbeat_ack", AgentResponse::HeartbeatAck),
        ("response_desired", AgentResponse::Desired { index: 9, specs: 2, allocs: 3 }),
        ("response_desired_unchanged", AgentResponse::DesiredUnchanged { index: 9 }),
        ("response_reports_ack", AgentResponse::ReportsAck),
        ("response_unknown_node", AgentResponse::UnknownNode),
        (
            "response_not_leader",
            AgentResponse::NotLeader { leader: Some(LeaderHint { id: 3, addr: "10.0.0.3:7400".into() }) },
        ),
        ("response_refused", AgentResponse::Refused { reason: "agent certificate is for node \"a\"".into() }),
    ];
    for (name, value) in responses {
        check_golden(&d, name, &value);
    }
    check_golden(
        &d,
        "desired_chunk",
        &DesiredChunk {
            specs: vec![samples::spec(), samples::process_spec()],
            allocs: vec![samples::alloc()],
        },
    );
    check_golden(
        &d,
        "coordinator_logs",
        &CoordinatorRequest::Logs(LogsRequest { alloc: "llm.2.17".into(), follow: true, tail: Some(4096) }),
    );
    let ok: LogsHeader = Ok(());
    check_golden(&d, "logs_header_ok", &ok);
    let missing: LogsHeader = Err(LogsError::NotFound("no allocation \"x\"".into()));
    check_golden(&d, "logs_header_not_found", &missing);
}

#[test]
fn api_messages_keep_their_bytes() {
    let d = dir();
    let requests = [
        ("api_status", ApiRequest::Status),
        ("api_local_status", ApiRequest::LocalStatus),
        ("api_nodes", ApiRequest::Nodes),
        ("api_gpus", ApiRequest::Gpus),
        (
            "api_set_node_labels",
            ApiRequest::SetNodeLabels {
                node: "gpu-01".into(),
                set: [("rack".to_string(), "r7".to_string())].into(),
                remove: vec!["old".into()],
            },
        ),
        ("api_add_member", ApiRequest::AddMember { id: 4, addr: "10.0.0.4:7400".into() }),
        ("api_remove_member", ApiRequest::RemoveMember { id: 2 }),
        ("api_submit_workload", ApiRequest::SubmitWorkload { spec: Box::new(samples::spec()) }),
        // Protocol 3.
        ("api_submit_workloads", ApiRequest::SubmitWorkloads { specs: vec![samples::spec()] }),
        ("api_workloads", ApiRequest::Workloads),
        ("api_workload", ApiRequest::Workload { name: "llm".into() }),
        ("api_allocs", ApiRequest::Allocs { workload: Some("llm".into()) }),
        ("api_stop_workload", ApiRequest::StopWorkload { name: "llm".into() }),
        ("api_drain_node", ApiRequest::DrainNode { node: "gpu-01".into(), drain: true }),
    ];
    for (name, req) in requests {
        check_golden(&d, name, &ApiCall(req));
    }
    let (node, gpu, workload, alloc, status) = views();
    let replies = [
        ("reply_status", ApiResponse::Status(status)),
        ("reply_nodes", ApiResponse::Nodes(vec![node])),
        ("reply_gpus", ApiResponse::Gpus(vec![gpu])),
        ("reply_committed", ApiResponse::Committed { log_index: 77 }),
        (
            "reply_submitted",
            ApiResponse::Submitted(SubmitResult {
                workload: "llm".into(),
                version: 3,
                changed: true,
                log_index: 77,
            }),
        ),
        (
            "reply_submitted_batch",
            ApiResponse::SubmittedBatch(vec![SubmitResult {
                workload: "llm".into(),
                version: 3,
                changed: false,
                log_index: 78,
            }]),
        ),
        ("reply_workloads", ApiResponse::Workloads(vec![workload.clone()])),
        (
            "reply_workload",
            ApiResponse::Workload(Box::new(WorkloadDetail { view: workload, spec: samples::spec() })),
        ),
        ("reply_allocs", ApiResponse::Allocs(vec![alloc])),
    ];
    for (name, reply) in replies {
        check_golden(&d, name, &ApiReply(Ok(reply)));
    }
    let kinds = [
        FailureKind::Invalid,
        FailureKind::NotFound,
        FailureKind::Conflict,
        FailureKind::Unavailable,
        FailureKind::OutcomeUnknown,
        FailureKind::Internal,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let failure = ApiFailure {
            kind,
            message: format!("failure {i}"),
            field: (i % 2 == 0).then(|| "gpu.count".into()),
        };
        check_golden(&d, &format!("reply_failure_{i}"), &ApiReply(Err(failure)));
    }
}

#[test]
fn placement_types_inside_stored_values_keep_their_bytes() {
    let d = dir();
    check_golden(&d, "gpu_shares", &samples::shares());
    check_golden(&d, "gpu_requests", &samples::requests());
    check_golden(&d, "workload_spec_docker", &samples::spec());
    check_golden(&d, "workload_spec_process", &samples::process_spec());
    check_golden(&d, "allocation", &samples::alloc());
}

/// The hello frames are postcard in every protocol version, so they are
/// pinned as postcard.
#[test]
fn hello_frames_are_postcard_forever() {
    // Version 2's hello: {protocol_version, software}.
    #[derive(serde::Serialize)]
    struct HelloV2 {
        protocol_version: u32,
        software: String,
    }
    let v2 = HelloV2 { protocol_version: 1, software: "gantry-agent 0.1.0".into() };
    assert_eq!(
        gantry_common::schema::to_hex(&postcard::to_allocvec(&v2).unwrap()),
        "011267616e7472792d6167656e7420302e312e30"
    );
    // Version 3 appends the highest version spoken; the two fields before
    // it are version 2's, so a version-2 coordinator reads "2".
    let v3 = Hello::current("gantry-agent 0.1.0", 3);
    assert_eq!(
        gantry_common::schema::to_hex(&postcard::to_allocvec(&v3).unwrap()),
        "021267616e7472792d6167656e7420302e312e3003"
    );
    let reply =
        HelloReply::VersionMismatch { ours: 2, theirs: 1, software: "gantry-coordinator 0.1.0".into() };
    let bytes = postcard::to_allocvec(&reply).unwrap();
    assert_eq!(bytes[..3], [1, 2, 1], "variant 1, ours 2, theirs 1");
    assert_eq!(postcard::from_bytes::<HelloReply>(&bytes).unwrap(), reply);
    let agreed = HelloReply::Agreed { coordinator_id: 7, software: "c".into(), version: 3 };
    assert_eq!(postcard::to_allocvec(&agreed).unwrap(), [2, 7, 1, b'c', 3], "variant 2, appended");
}

/// Every committed golden is checked by a test above (none is forgotten).
#[test]
fn every_golden_file_has_a_sample() {
    let names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".hex").to_string())
        .collect();
    let source = include_str!("golden.rs");
    for name in names {
        let checked = source.contains(&format!("\"{name}\""))
            || name.strip_prefix("reply_failure_").is_some_and(|i| i.parse::<usize>().is_ok_and(|i| i < 6));
        assert!(checked, "golden {name}.hex is not checked by any test");
    }
}
