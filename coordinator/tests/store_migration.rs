//! A store written by the daemons of c6cdaa7 (format `gantry-raft-store/1`,
//! postcard) opens on this code: migrated once, then read as format 2.
//!
//! The fixture is a follower's `raft.redb` from a dev cluster of 3
//! coordinators and 2 agents (sim GPUs, process runtime) that ran three
//! workloads (exclusive, MIG, MPS; one updated to version 2), one stopped
//! workload, label changes, a drain, a node down and back, and enough writes
//! (5,000 label updates) to build a snapshot and purge the log before it.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::Path;

use gantry_common::model::NodeStatus;
use gantry_common::workload::{ActualState, DesiredState};
use gantry_coordinator::raft::store::open_store;
use gantry_coordinator::raft::TypeConfig;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::EntryPayload;

const FIXTURE: &str = "tests/fixtures/store-v1-c6cdaa7.redb.gz";

fn unpack(dir: &Path) -> std::path::PathBuf {
    let gz = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)).expect("fixture");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut bytes).expect("gunzip fixture");
    let path = dir.join("raft.redb");
    std::fs::write(&path, bytes).expect("write fixture");
    path
}

#[tokio::test]
async fn a_format_1_store_opens_migrated_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = unpack(dir.path());
    let (state, applied, entries) = {
        let (mut log, mut sm) = open_store(&path).expect("the v1 store opens");
        let reader = sm.reader();
        let state = reader.read(|s| s.clone());
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(membership.voter_ids().count(), 3, "three voters");
        let applied = applied.expect("it had applied entries").index;
        assert!(applied > 5_000, "the fixture holds over 5,000 entries, applied {applied}");

        // Every log entry left after the last purge decodes.
        let log_state = log.get_log_state().await.unwrap();
        let first = log_state.last_purged_log_id.map_or(0, |l| l.index + 1);
        let last = log_state.last_log_id.unwrap().index;
        let entries = log.try_get_log_entries(first..=last).await.unwrap();
        assert_eq!(entries.len() as u64, last - first + 1, "no gap in the log");
        assert!(log_state.last_purged_log_id.is_some(), "the snapshot purged the log's start");
        assert!(log.read_vote().await.unwrap().is_some(), "the vote survived");
        let normal =
            entries.iter().filter(|e| matches!(e.payload, EntryPayload::<TypeConfig>::Normal(_))).count();
        assert!(normal > 900, "{normal} commands");

        // The snapshot decodes and holds a state.
        let snapshot = sm.get_current_snapshot().await.unwrap().expect("a snapshot was built");
        let at = snapshot.meta.last_log_id.unwrap().index;
        assert!(at >= 4_000, "snapshot at {at}");
        (state, applied, entries.len())
    };

    // What the cluster held when it was stopped.
    let names: Vec<&str> = state.workloads.keys().map(String::as_str).collect();
    assert_eq!(names, ["fx-excl", "fx-mig", "fx-mps"], "fx-gone was stopped and forgotten");
    assert_eq!(state.workloads["fx-mps"].version, 2);
    assert_eq!(state.workloads["fx-mps"].spec.replicas, 3);
    assert_eq!(state.workloads["fx-excl"].spec.env["MODE"], "exclusive");
    assert_eq!(state.workloads["fx-mig"].spec.user, None, "a field v1 did not have takes its default");
    let node1 = &state.nodes["node-1"];
    assert_eq!(node1.status, NodeStatus::Ready);
    assert_eq!(node1.operator_labels["rack"], "r1");
    assert_eq!(state.nodes["node-2"].operator_labels["seq"], "5049");
    assert_eq!(node1.info.gpus.len(), 8);
    let running: Vec<_> = state
        .allocs
        .values()
        .filter(|a| a.desired == DesiredState::Run && a.actual == ActualState::Running)
        .collect();
    assert_eq!(running.len(), 6, "2 exclusive + 1 MIG + 3 MPS replicas run");
    assert!(running.iter().all(|a| a.node == "node-2" && a.exit_code.is_none()));

    // Opened again: already format 2, the same state.
    let (mut log, sm) = open_store(&path).expect("the migrated store reopens");
    assert_eq!(sm.reader().read(|s| s.clone()), state);
    assert_eq!(sm.reader().last_applied(), Some(applied));
    let log_state = log.get_log_state().await.unwrap();
    assert_eq!(log_state.last_log_id.unwrap().index, applied);
    let again = log.try_get_log_entries(0..=applied).await.unwrap();
    assert_eq!(again.len(), entries);
}
