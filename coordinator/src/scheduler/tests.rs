//! The planner and the plan re-check together, as pure functions: submit,
//! plan, apply, report — no Raft, no clock.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use gantry_common::model::{GpuInfo, GpuSharing, HostInfo, MigMode, NodeInfo, NodeStatus};
use gantry_common::workload::{
    parse_workload_toml, ActualState, AllocReport, DesiredState, HealthState, WorkloadSpec,
};
use gantry_placement::{EngineConfig, GpuShare};

use super::plan::{plan, ClusterTelemetry};
use crate::state::{apply, Command, CommandResponse, Plan, State};

fn node(name: &str, sharing: &[GpuSharing]) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        labels: BTreeMap::new(),
        host: HostInfo {
            hostname: name.into(),
            cpu_count: 64,
            memory_total_mib: 512 * 1024,
            os: "linux".into(),
            kernel: "6".into(),
        },
        gpus: sharing
            .iter()
            .enumerate()
            .map(|(i, s)| GpuInfo {
                index: i as u32,
                uuid: format!("GPU-{name}-{i}"),
                model: "H100-80GB".into(),
                memory_total_mib: 81_559,
                mig_mode: if *s == GpuSharing::Mig { MigMode::Enabled } else { MigMode::Disabled },
                nvlink_domain: Some(0),
                sharing: *s,
            })
            .collect(),
        agent_version: "t".into(),
        gpu_backend: "sim".into(),
        address: "127.0.0.1".into(),
        http_addr: String::new(),
    }
}

fn spec(name: &str, replicas: u32, gpu: &str) -> WorkloadSpec {
    parse_workload_toml(&format!(
        "name = \"{name}\"\ncommand = \"/bin/x\"\nreplicas = {replicas}\n[gpu]\n{gpu}\n"
    ))
    .unwrap()
}

const EXCLUSIVE: &str = "mode = \"exclusive\"";
const E: GpuSharing = GpuSharing::Exclusive;

fn cluster(nodes: &[(&str, &[GpuSharing])]) -> State {
    let mut s = State::default();
    for (name, gpus) in nodes {
        assert_eq!(
            apply(&mut s, &Command::RegisterNode { info: node(name, gpus) }),
            CommandResponse::Applied
        );
    }
    s
}

fn submit(s: &mut State, spec: WorkloadSpec) {
    assert!(matches!(apply(s, &Command::SubmitWorkload { spec }), CommandResponse::Workload { .. }));
}

fn plan_of(s: &State) -> Plan {
    plan(s, &ClusterTelemetry::new(), &EngineConfig::default(), 7).plan
}

/// Plans and applies until the planner has nothing more to say; returns the rounds.
fn converge(s: &mut State) -> usize {
    for round in 0..10 {
        let p = plan_of(s);
        if p.is_empty() {
            return round;
        }
        apply(s, &Command::ApplyPlan(p));
    }
    panic!("no convergence in 10 rounds");
}

fn running_of<'a>(s: &'a State, w: &'a str) -> Vec<&'a gantry_common::workload::Allocation> {
    s.allocs_of(w).filter(|a| a.desired == DesiredState::Run).collect()
}

/// The agent of `node` reports every allocation it holds as `actual`.
fn report_all(s: &mut State, node: &str, actual: ActualState) {
    let reports: Vec<AllocReport> = s
        .allocs_on(node)
        .filter(|a| !a.actual.is_terminal())
        .map(|a| AllocReport {
            id: a.id.clone(),
            actual: if a.desired == DesiredState::Stop { ActualState::Stopped } else { actual },
            health: HealthState::Healthy,
            restarts: 0,
            message: String::new(),
            ports: BTreeMap::new(),
            devices: vec![],
            exit_code: None,
            failures: 0,
            start_failed: false,
        })
        .collect();
    apply(s, &Command::ReportAllocs { node: node.into(), reports });
}

/// Every GPU share that is held, counted per (node, gpu): no whole GPU twice,
/// MIG slices never overlapping, MPS within 100 %.
fn assert_no_double_booking(s: &State) {
    for (name, n) in &s.nodes {
        let held: Vec<_> = s.allocs_on(name).filter(|a| a.holds_resources()).collect();
        let snap = crate::state::capacity::node_snapshot(n, held.into_iter(), &BTreeMap::new());
        let engine = gantry_placement::Engine::new(
            &gantry_placement::ClusterSnapshot { nodes: vec![snap] },
            EngineConfig::default(),
        );
        assert!(engine.is_ok(), "node {name} is over-committed: {:?}", engine.err());
        for (i, _) in n.info.gpus.iter().enumerate() {
            let whole = s
                .allocs_on(name)
                .filter(|a| a.holds_resources())
                .filter(|a| a.gpus.iter().any(|g| g.index == i as u32 && g.share == GpuShare::Whole))
                .count();
            assert!(whole <= 1, "GPU {i} of {name} handed out {whole} times");
        }
    }
}

#[test]
fn replicas_are_placed_once_and_then_nothing_more_happens() {
    let mut s = cluster(&[("n1", &[E, E]), ("n2", &[E, E])]);
    submit(&mut s, spec("w", 3, EXCLUSIVE));
    let p = plan_of(&s);
    assert_eq!(p.place.len(), 3);
    let r = apply(&mut s, &Command::ApplyPlan(p));
    assert!(
        matches!(&r, CommandResponse::Plan { placed, refused } if placed.len() == 3 && refused.is_empty()),
        "{r:?}"
    );
    assert!(plan_of(&s).is_empty(), "a converged cluster plans nothing");
    assert_no_double_booking(&s);
    let replicas: Vec<u32> = running_of(&s, "w").iter().map(|a| a.replica).collect();
    assert_eq!(replicas.len(), 3);
    assert!(replicas.contains(&0) && replicas.contains(&1) && replicas.contains(&2));
}

#[test]
fn two_plans_from_the_same_state_cannot_double_book() {
    // Two leaders (or two racing evaluations) planned on the same state.
    let mut s = cluster(&[("n1", &[E])]);
    submit(&mut s, spec("a", 1, EXCLUSIVE));
    submit(&mut s, spec("b", 1, EXCLUSIVE));
    let mut only_a = State { ..s.clone() };
    only_a.workloads.remove("b");
    let mut only_b = s.clone();
    only_b.workloads.remove("a");
    let pa = plan_of(&only_a);
    let pb = plan_of(&only_b);
    assert_eq!((pa.place.len(), pb.place.len()), (1, 1));
    assert_eq!(pa.place[0].gpus, pb.place[0].gpus, "both planned the one GPU");
    apply(&mut s, &Command::ApplyPlan(pa));
    let r = apply(&mut s, &Command::ApplyPlan(pb));
    assert!(
        matches!(&r, CommandResponse::Plan { placed, refused } if placed.is_empty() && refused.len() == 1),
        "{r:?}"
    );
    assert_eq!(s.allocs.len(), 1);
    assert_no_double_booking(&s);
    // The refused workload is pending with a reason a person can act on.
    converge(&mut s);
    let reason = s.workloads["b"].pending_reason.clone().unwrap();
    assert!(reason.contains("GPU"), "{reason}");
}

#[test]
fn the_same_plan_applied_twice_places_once() {
    let mut s = cluster(&[("n1", &[E, E])]);
    submit(&mut s, spec("w", 1, EXCLUSIVE));
    let p = plan_of(&s);
    apply(&mut s, &Command::ApplyPlan(p.clone()));
    let r = apply(&mut s, &Command::ApplyPlan(p));
    assert!(matches!(&r, CommandResponse::Plan { placed, .. } if placed.is_empty()), "{r:?}");
    assert_eq!(s.allocs.len(), 1);
}

#[test]
fn mig_and_mps_shares_pack_within_the_hardware() {
    let mut s = cluster(&[("n1", &[GpuSharing::Mig, GpuSharing::Mps])]);
    submit(&mut s, spec("mig", 8, "mode = \"mig\"\nprofile = \"1g.10gb\""));
    submit(&mut s, spec("mps", 5, "mode = \"mps\"\ncompute_pct = 25\nmemory_mib = 10000"));
    converge(&mut s);
    assert_no_double_booking(&s);
    // H100: 7 compute slices, so 7 of 8 1g.10gb instances; MPS: 4 x 25 %.
    assert_eq!(running_of(&s, "mig").len(), 7);
    assert_eq!(running_of(&s, "mps").len(), 4);
    let mut starts: Vec<u8> = running_of(&s, "mig")
        .iter()
        .map(|a| match &a.gpus[0].share {
            GpuShare::Mig { start, .. } => *start,
            other => panic!("not MIG: {other:?}"),
        })
        .collect();
    starts.sort();
    assert_eq!(starts, vec![0, 1, 2, 3, 4, 5, 6]);
    assert!(s.workloads["mig"].pending_reason.is_some());
    assert!(s.workloads["mps"].pending_reason.as_deref().unwrap().contains("MPS"));
}

#[test]
fn a_down_node_loses_its_replicas_and_they_move() {
    let mut s = cluster(&[("n1", &[E, E]), ("n2", &[E, E])]);
    submit(&mut s, spec("w", 2, &format!("{EXCLUSIVE}\n[constraints]\nspread = true")));
    converge(&mut s);
    let on_n1: Vec<String> =
        running_of(&s, "w").iter().filter(|a| a.node == "n1").map(|a| a.id.clone()).collect();
    assert_eq!(on_n1.len(), 1, "spread puts one replica per node");
    apply(&mut s, &Command::SetNodeStatus { node: "n1".into(), status: NodeStatus::Down });
    assert_eq!(s.allocs[&on_n1[0]].actual, ActualState::Lost);
    // With spread the lost replica has nowhere to go: pending, with the reason.
    converge(&mut s);
    assert_eq!(running_of(&s, "w").len(), 1);
    assert!(s.workloads["w"].pending_reason.is_some());
    // Capacity appears (a node joins): it is placed there.
    apply(&mut s, &Command::RegisterNode { info: node("n3", &[E]) });
    converge(&mut s);
    let nodes: Vec<&str> = running_of(&s, "w").iter().map(|a| a.node.as_str()).collect();
    assert!(nodes.contains(&"n3") && nodes.contains(&"n2"), "{nodes:?}");
    assert_eq!(s.workloads["w"].pending_reason, None);
}

#[test]
fn drain_moves_replicas_then_stops_the_old_ones() {
    let mut s = cluster(&[("n1", &[E]), ("n2", &[E])]);
    submit(&mut s, spec("w", 1, EXCLUSIVE));
    converge(&mut s);
    let old = running_of(&s, "w")[0].clone();
    let (from, to) = if old.node == "n1" { ("n1", "n2") } else { ("n2", "n1") };
    report_all(&mut s, from, ActualState::Running);
    apply(&mut s, &Command::DrainNode { node: from.into(), drain: true });
    converge(&mut s);
    let now = running_of(&s, "w");
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].node, to);
    assert_eq!(s.allocs[&old.id].desired, DesiredState::Stop);
    assert!(s.allocs[&old.id].desired_reason.contains("drained"));
    assert_no_double_booking(&s);
}

#[test]
fn drain_without_room_elsewhere_keeps_the_replica_running() {
    let mut s = cluster(&[("n1", &[E])]);
    submit(&mut s, spec("w", 1, EXCLUSIVE));
    converge(&mut s);
    apply(&mut s, &Command::DrainNode { node: "n1".into(), drain: true });
    converge(&mut s);
    assert_eq!(running_of(&s, "w").len(), 1, "nothing is stopped without a place to go");
    assert!(s.workloads["w"].pending_reason.as_deref().unwrap().contains("drained"));
}

#[test]
fn an_incompatible_update_replaces_replicas_after_the_old_ones_stop() {
    let mut s = cluster(&[("n1", &[E])]);
    submit(&mut s, spec("w", 1, EXCLUSIVE));
    converge(&mut s);
    let old = running_of(&s, "w")[0].id.clone();
    report_all(&mut s, "n1", ActualState::Running);
    let mut next = spec("w", 1, EXCLUSIVE);
    next.args = vec!["--new".into()];
    submit(&mut s, next);
    converge(&mut s);
    // The only GPU is still held by the old replica, which is told to stop;
    // the new one waits without a "cannot place" reason.
    assert_eq!(s.allocs[&old].desired, DesiredState::Stop);
    assert!(running_of(&s, "w").is_empty());
    assert_eq!(s.workloads["w"].pending_reason, None);
    report_all(&mut s, "n1", ActualState::Running);
    converge(&mut s);
    let now = running_of(&s, "w");
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].version, 2);
    assert_no_double_booking(&s);
}

#[test]
fn scaling_keeps_running_replicas() {
    let mut s = cluster(&[("n1", &[E, E, E])]);
    submit(&mut s, spec("w", 1, EXCLUSIVE));
    converge(&mut s);
    let first = running_of(&s, "w")[0].id.clone();
    submit(&mut s, spec("w", 3, EXCLUSIVE));
    converge(&mut s);
    assert_eq!(running_of(&s, "w").len(), 3);
    assert_eq!(s.allocs[&first].desired, DesiredState::Run, "scale-up keeps the first replica");
    assert_eq!(s.allocs[&first].version, 2);
    submit(&mut s, spec("w", 1, EXCLUSIVE));
    converge(&mut s);
    assert_eq!(running_of(&s, "w").len(), 1);
    assert_eq!(running_of(&s, "w")[0].id, first, "scale-down stops the highest replicas");
}

#[test]
fn stopping_a_workload_forgets_it_once_its_agents_confirm() {
    let mut s = cluster(&[("n1", &[E])]);
    submit(&mut s, spec("w", 1, EXCLUSIVE));
    converge(&mut s);
    report_all(&mut s, "n1", ActualState::Running);
    apply(&mut s, &Command::StopWorkload { name: "w".into() });
    assert!(s.workloads["w"].stopping);
    assert!(plan_of(&s).is_empty(), "a stopping workload is not placed");
    report_all(&mut s, "n1", ActualState::Running);
    assert!(!s.workloads.contains_key("w"));
    assert!(s.allocs.is_empty());
}

#[test]
fn reports_only_count_from_the_allocations_node() {
    let mut s = cluster(&[("n1", &[E]), ("n2", &[E])]);
    submit(&mut s, spec("w", 1, EXCLUSIVE));
    converge(&mut s);
    let a = running_of(&s, "w")[0].clone();
    let other = if a.node == "n1" { "n2" } else { "n1" };
    let report = AllocReport {
        id: a.id.clone(),
        actual: ActualState::Failed,
        health: HealthState::Unhealthy,
        restarts: 9,
        message: "forged".into(),
        ports: BTreeMap::new(),
        devices: vec![],
        exit_code: None,
        failures: 0,
        start_failed: false,
    };
    apply(&mut s, &Command::ReportAllocs { node: other.into(), reports: vec![report] });
    assert_eq!(s.allocs[&a.id].actual, ActualState::Pending);
}

#[test]
fn desired_changes_bump_the_nodes_stream_revision_but_reports_do_not() {
    let mut s = cluster(&[("n1", &[E])]);
    let r0 = s.nodes["n1"].alloc_revision;
    submit(&mut s, spec("w", 1, EXCLUSIVE));
    converge(&mut s);
    let r1 = s.nodes["n1"].alloc_revision;
    assert!(r1 > r0);
    report_all(&mut s, "n1", ActualState::Running);
    assert_eq!(s.nodes["n1"].alloc_revision, r1);
    apply(&mut s, &Command::StopWorkload { name: "w".into() });
    let r2 = s.nodes["n1"].alloc_revision;
    assert!(r2 > r1);
    // The agent confirms the stop: the allocation leaves the node's set
    // (and, the workload done, the state), which the agent must hear.
    report_all(&mut s, "n1", ActualState::Stopped);
    assert!(s.workloads.is_empty() && s.allocs.is_empty());
    assert!(s.nodes["n1"].alloc_revision > r2, "forgetting them moves the node's revision");
}

#[test]
fn an_invalid_spec_changes_nothing() {
    let mut s = cluster(&[("n1", &[E])]);
    let mut bad = spec("w", 1, EXCLUSIVE);
    bad.replicas = 0;
    let before = s.clone();
    let r = apply(&mut s, &Command::SubmitWorkload { spec: bad });
    assert!(matches!(r, CommandResponse::Rejected { reason, .. } if reason.contains("replicas")));
    assert_eq!(s.workloads, before.workloads);
}

/// A batch is all or nothing: one bad spec (or a name twice) submits none;
/// a good one submits all, placed like single submissions.
#[test]
fn a_batch_submits_every_workload_or_none() {
    let mut s = cluster(&[("n1", &[E, E]), ("n2", &[E])]);
    let mut bad = spec("c", 1, EXCLUSIVE);
    bad.replicas = 0;
    let before = s.clone();
    let r = apply(&mut s, &Command::SubmitWorkloads { specs: vec![spec("a", 1, EXCLUSIVE), bad] });
    assert!(
        matches!(&r, CommandResponse::Rejected { reason, .. } if reason.starts_with("specs[1] (\"c\")")),
        "{r:?}"
    );
    let twice = vec![spec("a", 1, EXCLUSIVE), spec("a", 2, EXCLUSIVE)];
    let r = apply(&mut s, &Command::SubmitWorkloads { specs: twice });
    assert!(matches!(&r, CommandResponse::Rejected { reason, .. } if reason.contains("twice")), "{r:?}");
    assert!(matches!(
        apply(&mut s, &Command::SubmitWorkloads { specs: vec![] }),
        CommandResponse::Rejected { .. }
    ));
    assert_eq!(s, before, "refused batches change nothing");

    let batch = vec![spec("a", 1, EXCLUSIVE), spec("b", 2, EXCLUSIVE)];
    let r = apply(&mut s, &Command::SubmitWorkloads { specs: batch.clone() });
    assert_eq!(
        r,
        CommandResponse::Batch(vec![
            CommandResponse::Workload { version: 1, changed: true },
            CommandResponse::Workload { version: 1, changed: true },
        ])
    );
    assert_eq!(s.revision, before.revision + 1, "one entry, one revision");
    assert_eq!(converge(&mut s), 1);
    assert_eq!(s.allocs.values().filter(|a| a.fills_slot()).count(), 3);
    // The same batch again changes nothing; with one spec changed, that one moves.
    let rev = s.revision;
    assert_eq!(apply(&mut s, &Command::SubmitWorkloads { specs: batch }), CommandResponse::Unchanged);
    assert_eq!(s.revision, rev);
    let r = apply(
        &mut s,
        &Command::SubmitWorkloads { specs: vec![spec("a", 1, EXCLUSIVE), spec("b", 1, EXCLUSIVE)] },
    );
    assert_eq!(
        r,
        CommandResponse::Batch(vec![
            CommandResponse::Workload { version: 1, changed: false },
            CommandResponse::Workload { version: 2, changed: true },
        ])
    );
}

#[test]
fn a_settled_cluster_is_recognised_and_an_unsettled_one_is_not() {
    let mut s = cluster(&[("n1", &[E, E]), ("n2", &[E])]);
    submit(&mut s, spec("w", 2, EXCLUSIVE));
    assert!(!plan_of(&s).is_empty());
    converge(&mut s);
    report_all(&mut s, "n1", ActualState::Running);
    assert!(plan_of(&s).is_empty());
    // Each of these needs a decision again.
    let mut drained = s.clone();
    let node = running_of(&drained, "w")[0].node.clone();
    apply(&mut drained, &Command::DrainNode { node, drain: true });
    assert!(!plan_of(&drained).is_empty(), "a replica on a drained node must move");
    let mut scaled = s.clone();
    submit(&mut scaled, spec("w", 3, EXCLUSIVE));
    assert!(!plan_of(&scaled).is_empty(), "a scale-up must be placed");
    let mut updated = s.clone();
    let mut next = spec("w", 2, EXCLUSIVE);
    next.args = vec!["--v2".into()];
    submit(&mut updated, next);
    assert!(!plan_of(&updated).is_empty(), "old versions must be replaced");
}

#[test]
fn allocations_of_a_workload_exclude_one_whose_name_extends_it() {
    let mut s = cluster(&[("n1", &[E, E, E, E])]);
    submit(&mut s, spec("a", 1, EXCLUSIVE));
    submit(&mut s, spec("a.b", 2, EXCLUSIVE));
    submit(&mut s, spec("a-c", 1, EXCLUSIVE));
    converge(&mut s);
    assert_eq!(s.allocs_of("a").count(), 1);
    assert_eq!(s.allocs_of("a.b").count(), 2);
    assert_eq!(s.allocs_of("a-c").count(), 1);
    assert!(s.allocs_of("a").all(|a| a.workload == "a"));
}

/// The agent of the replica's node reports it ended for good.
fn finish(s: &mut State, id: &str, actual: ActualState, exit_code: Option<i32>) {
    let node = s.allocs[id].node.clone();
    let report = AllocReport {
        id: id.into(),
        actual,
        health: HealthState::Unknown,
        restarts: 0,
        message: format!("exit code {exit_code:?}"),
        ports: BTreeMap::new(),
        devices: vec![],
        exit_code,
        failures: 1,
        start_failed: false,
    };
    assert_eq!(apply(s, &Command::ReportAllocs { node, reports: vec![report] }), CommandResponse::Applied);
}

#[test]
fn a_finished_replica_keeps_its_slot_frees_its_gpu_and_is_never_placed_again() {
    for (end, code) in [(ActualState::Completed, Some(0)), (ActualState::Failed, Some(3))] {
        let mut s = cluster(&[("n1", &[E]), ("n2", &[E])]);
        submit(&mut s, spec("job", 1, EXCLUSIVE));
        converge(&mut s);
        let a = running_of(&s, "job")[0].clone();
        finish(&mut s, &a.id, end, code);
        assert!(!s.allocs[&a.id].holds_resources(), "{end:?}: its GPU is free");
        assert_eq!(s.allocs[&a.id].exit_code, code);
        let p = plan(&s, &ClusterTelemetry::new(), &EngineConfig::default(), 1).plan;
        assert!(p.place.is_empty() && p.stop.is_empty(), "{end:?}: nothing to do: {p:?}");
        // Its GPU takes another workload.
        submit(&mut s, spec("other", 2, EXCLUSIVE));
        converge(&mut s);
        assert_eq!(running_of(&s, "other").len(), 2, "{end:?}: both GPUs are free for others");
        // Neither a node going down nor a drain revives or moves it.
        let node = a.node.clone();
        apply(&mut s, &Command::SetNodeStatus { node: node.clone(), status: NodeStatus::Down });
        assert_eq!(s.allocs[&a.id].actual, end, "{end:?}: not lost with its node");
        apply(&mut s, &Command::SetNodeStatus { node: node.clone(), status: NodeStatus::Ready });
        apply(&mut s, &Command::DrainNode { node, drain: true });
        let p = plan(&s, &ClusterTelemetry::new(), &EngineConfig::default(), 2).plan;
        assert!(!p.place.iter().any(|n| n.workload == "job"), "{end:?}: not moved off the drained node");
        assert_eq!(s.allocs_of("job").count(), 1);
    }
}

#[test]
fn a_replica_its_agent_stopped_while_meant_to_run_is_placed_again() {
    let mut s = cluster(&[("n1", &[E]), ("n2", &[E])]);
    submit(&mut s, spec("w", 1, EXCLUSIVE));
    converge(&mut s);
    let a = running_of(&s, "w")[0].clone();
    finish(&mut s, &a.id, ActualState::Stopped, None);
    converge(&mut s);
    let now = running_of(&s, "w");
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].id, a.id, "a new allocation fills the slot");
    assert_eq!(s.allocs[&a.id].desired, DesiredState::Stop);
}

#[test]
fn a_new_version_reruns_a_finished_workload() {
    let mut s = cluster(&[("n1", &[E])]);
    submit(&mut s, spec("job", 1, EXCLUSIVE));
    converge(&mut s);
    let a = running_of(&s, "job")[0].clone();
    finish(&mut s, &a.id, ActualState::Completed, Some(0));
    let mut next = spec("job", 1, EXCLUSIVE);
    next.args.push("--again".into());
    submit(&mut s, next);
    converge(&mut s);
    let now = running_of(&s, "job");
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].version, 2);
}
