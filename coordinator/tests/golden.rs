//! Golden bytes of what the coordinator stores and says to its peers: Raft
//! log entries (every `Command`), the state machine and snapshot record,
//! command responses, and peer messages (see `gantry_common::schema`).
//!
//! A failure means a stored or wire format changed. Bytes committed here
//! must decode on every later version; a compatible change (a new
//! defaulted field) adds a sample and a golden beside the old ones. Write a
//! missing golden with `GANTRY_BLESS=1 cargo test -p gantry-coordinator --test golden`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use gantry_common::api::ApiRequest;
use gantry_common::model::NodeStatus;
use gantry_common::schema::{check_golden, samples};
use gantry_common::workload::NewAlloc;
use gantry_coordinator::peer::messages::{PeerRequest, PeerResponse};
use gantry_coordinator::raft::machine_tables::MachineMeta;
use gantry_coordinator::raft::state_machine::Applied;
use gantry_coordinator::raft::TypeConfig;
use gantry_coordinator::state::{
    Command, CommandResponse, KeyedWrite, NodeRecord, Plan, State, WorkloadRecord,
};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StoredMembership, Vote,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v2")
}

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(4, 2), index)
}

fn commands() -> Vec<(&'static str, Command)> {
    let new = NewAlloc {
        workload: "llm".into(),
        version: 3,
        replica: 2,
        node: "gpu-01".into(),
        gpus: samples::alloc().gpus,
        cpu_milli: 500,
        memory_mib: 512,
    };
    vec![
        ("command_register_node", Command::RegisterNode { info: samples::node() }),
        (
            "command_set_node_status",
            Command::SetNodeStatus { node: "gpu-01".into(), status: NodeStatus::Down },
        ),
        (
            "command_set_node_labels",
            Command::SetNodeLabels {
                node: "gpu-01".into(),
                set: BTreeMap::from([("rack".into(), "r7".into())]),
                remove: vec!["old".into()],
            },
        ),
        ("command_submit_workload", Command::SubmitWorkload { spec: samples::spec() }),
        ("command_stop_workload", Command::StopWorkload { name: "llm".into() }),
        ("command_drain_node", Command::DrainNode { node: "gpu-01".into(), drain: true }),
        (
            "command_apply_plan",
            Command::ApplyPlan(Plan {
                place: vec![new],
                stop: vec![("llm.0.3".into(), "replaced by version 3".into())],
                bump: vec![("llm.1.4".into(), 3)],
                pending: vec![("big".into(), Some("no node has 8 free GPUs".into())), ("ok".into(), None)],
            }),
        ),
        (
            "command_report_allocs",
            Command::ReportAllocs { node: "gpu-01".into(), reports: vec![samples::report()] },
        ),
        (
            "command_keyed",
            Command::Keyed {
                key: "0123456789abcdef0123456789abcdef".into(),
                command: Box::new(Command::StopWorkload { name: "llm".into() }),
            },
        ),
        // Protocol 3 (last: the log index is the position).
        (
            "command_submit_workloads",
            Command::SubmitWorkloads { specs: vec![samples::spec(), samples::process_spec()] },
        ),
        // Protocol 5.
        (
            "command_group",
            Command::Group {
                commands: vec![
                    Command::StopWorkload { name: "llm".into() },
                    Command::Keyed {
                        key: "0123456789abcdef0123456789abcdef".into(),
                        command: Box::new(Command::DrainNode { node: "gpu-01".into(), drain: true }),
                    },
                ],
            },
        ),
    ]
}

fn state() -> State {
    let mut s = State {
        nodes: [(
            "gpu-01".to_string(),
            NodeRecord {
                info: samples::node(),
                status: NodeStatus::Ready,
                operator_labels: BTreeMap::from([("tier".into(), "gold".into())]),
                registrations: 3,
                drained: false,
                alloc_revision: 41,
            },
        )]
        .into_iter()
        .collect(),
        workloads: [(
            "llm".to_string(),
            WorkloadRecord {
                spec: samples::spec(),
                version: 3,
                stopping: false,
                pending_reason: Some("x".into()),
            },
        )]
        .into_iter()
        .collect(),
        allocs: [("llm.2.17".to_string(), samples::alloc())].into_iter().collect(),
        next_alloc: 17,
        revision: 42,
        ..State::default()
    };
    s.write_keys.insert(
        "k1".into(),
        KeyedWrite { seq: 0, response: CommandResponse::Applied, fingerprint: 0x0123_4567_89ab_cdef },
    );
    s.write_key_order.insert(0, "k1".into());
    s.next_write_key = 1;
    s
}

#[test]
fn log_entries_keep_their_bytes() {
    let d = dir();
    for (i, (name, command)) in commands().into_iter().enumerate() {
        let entry: Entry<TypeConfig> =
            Entry { log_id: log_id(10 + i as u64), payload: EntryPayload::Normal(command) };
        check_golden_entry(&d, name, &entry);
    }
    let blank: Entry<TypeConfig> = Entry { log_id: log_id(1), payload: EntryPayload::Blank };
    check_golden_entry(&d, "entry_blank", &blank);
    let nodes = BTreeMap::from([(1, BasicNode::new("10.0.0.1:7400")), (2, BasicNode::new("10.0.0.2:7400"))]);
    let membership: Entry<TypeConfig> = Entry {
        log_id: log_id(2),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2])], nodes)),
    };
    check_golden_entry(&d, "entry_membership", &membership);
}

/// openraft's `Entry` has no `PartialEq`; compare its Debug form.
fn check_golden_entry(d: &std::path::Path, name: &str, entry: &Entry<TypeConfig>) {
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Wrapped(Entry<TypeConfig>);
    impl PartialEq for Wrapped {
        fn eq(&self, other: &Self) -> bool {
            format!("{:?}", self.0) == format!("{:?}", other.0)
        }
    }
    check_golden(d, name, &Wrapped(entry.clone()));
}

#[test]
fn the_state_machine_record_keeps_its_bytes() {
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Wrapped(Applied);
    impl PartialEq for Wrapped {
        fn eq(&self, other: &Self) -> bool {
            format!("{:?}", self.0) == format!("{:?}", other.0)
        }
    }
    let nodes = BTreeMap::from([(1, BasicNode::new("10.0.0.1:7400"))]);
    let applied = Applied {
        last_applied: Some(log_id(42)),
        last_membership: StoredMembership::new(
            Some(log_id(2)),
            Membership::new(vec![BTreeSet::from([1])], nodes),
        ),
        state: state(),
    };
    check_golden(&dir(), "state_machine", &Wrapped(applied));
    check_golden(&dir(), "state", &state());
    // Format 3 keeps each record in its own table row, and the rest in one meta row.
    let s = state();
    check_golden(&dir(), "sm_node", &s.nodes["gpu-01"]);
    check_golden(&dir(), "sm_workload", &s.workloads["llm"]);
    check_golden(&dir(), "sm_alloc", &s.allocs["llm.2.17"]);
    check_golden(&dir(), "sm_write_key", &s.write_keys["k1"]);
    let meta = MachineMeta {
        last_applied: Some(log_id(42)),
        last_membership: StoredMembership::new(
            Some(log_id(2)),
            Membership::new(
                vec![BTreeSet::from([1])],
                BTreeMap::from([(1, BasicNode::new("10.0.0.1:7400"))]),
            ),
        ),
        next_alloc: 17,
        revision: 42,
        next_write_key: 1,
    };
    check_golden(&dir(), "sm_meta", &meta);
    let vote: Vote<u64> = Vote::new_committed(4, 2);
    check_golden(&dir(), "vote", &vote);
}

#[test]
fn command_responses_keep_their_bytes() {
    let d = dir();
    let responses = [
        ("response_applied", CommandResponse::Applied),
        ("response_unchanged", CommandResponse::Unchanged),
        // As written before refusals had kinds: `Invalid` is left out of the bytes.
        ("response_rejected", CommandResponse::invalid("node \"x\" is not registered")),
        ("response_rejected_not_found", CommandResponse::not_found("node \"x\" is not registered")),
        ("response_rejected_conflict", CommandResponse::conflict("idempotency key \"k\" was already used")),
        ("response_workload", CommandResponse::Workload { version: 3, changed: true }),
        (
            "response_plan",
            CommandResponse::Plan { placed: vec!["llm.2.17".into()], refused: vec!["r".into()] },
        ),
        (
            "response_batch",
            CommandResponse::Batch(vec![CommandResponse::Workload { version: 3, changed: true }]),
        ),
        (
            "response_group",
            CommandResponse::Group(vec![
                CommandResponse::Applied,
                CommandResponse::not_found("no workload \"llm\""),
            ]),
        ),
        (
            "response_repeat",
            CommandResponse::Repeat(Box::new(CommandResponse::Workload { version: 3, changed: true })),
        ),
    ];
    for (name, r) in responses {
        check_golden(&d, name, &r);
    }
}

#[test]
fn peer_messages_keep_their_bytes() {
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Req(PeerRequest);
    impl PartialEq for Req {
        fn eq(&self, other: &Self) -> bool {
            format!("{:?}", self.0) == format!("{:?}", other.0)
        }
    }
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Resp(PeerResponse);
    impl PartialEq for Resp {
        fn eq(&self, other: &Self) -> bool {
            format!("{:?}", self.0) == format!("{:?}", other.0)
        }
    }
    let d = dir();
    let forward = PeerRequest::Forward { req: ApiRequest::Workloads, key: Some("k".into()) };
    check_golden(&d, "peer_forward", &Req(forward));
    let vote = PeerRequest::Vote(openraft::raft::VoteRequest {
        vote: Vote::new(5, 3),
        last_log_id: Some(log_id(9)),
    });
    check_golden(&d, "peer_vote", &Req(vote));
    let pre_vote = PeerRequest::PreVote(gantry_coordinator::peer::messages::PreVoteRequest {
        candidate: 3,
        last_log_id: Some(log_id(9)),
    });
    check_golden(&d, "peer_pre_vote", &Req(pre_vote));
    check_golden(&d, "peer_pre_vote_reply", &Resp(PeerResponse::PreVote { granted: true }));
    check_golden(&d, "peer_not_leader", &Resp(PeerResponse::NotLeader));
    check_golden(
        &d,
        "peer_api_failure",
        &Resp(PeerResponse::Api(Err(gantry_common::api::ApiFailure::invalid("gpu.count: must be 1-8")))),
    );
}

/// Every committed golden is checked by a test above.
#[test]
fn every_golden_file_has_a_sample() {
    let source = include_str!("golden.rs");
    for e in std::fs::read_dir(dir()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().trim_end_matches(".hex").to_string();
        assert!(source.contains(&format!("\"{name}\"")), "golden {name}.hex is not checked by any test");
    }
}
