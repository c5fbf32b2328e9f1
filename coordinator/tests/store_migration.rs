//! Stores written by earlier daemons open on this code, migrated once:
//! c6cdaa7's (format `gantry-raft-store/1`, postcard) and 7a019f8's
//! (format 2, the whole state as one record); format 3 keeps a table per
//! entity.
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
/// Written by `tests/fixtures/make-store-fixture.sh` with 7a019f8's binaries.
const FIXTURE_V2: &str = "tests/fixtures/store-v2-7a019f8.redb.gz";

fn unpack(dir: &Path) -> std::path::PathBuf {
    unpack_fixture(dir, FIXTURE)
}

fn unpack_fixture(dir: &Path, fixture: &str) -> std::path::PathBuf {
    let gz = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture)).expect("fixture");
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

#[tokio::test]
async fn a_format_2_store_opens_migrated_to_tables_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = unpack_fixture(dir.path(), FIXTURE_V2);
    let (state, applied) = {
        let (mut log, mut sm) = open_store(&path).expect("the v2 store opens");
        let state = sm.reader().read(|s| s.clone());
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(membership.voter_ids().count(), 3, "three voters");
        let applied = applied.expect("it had applied entries").index;
        assert!(applied > 5_000, "the fixture holds over 5,000 entries, applied {applied}");
        let log_state = log.get_log_state().await.unwrap();
        assert!(log_state.last_purged_log_id.is_some(), "the snapshot purged the log's start");
        let snapshot = sm.get_current_snapshot().await.unwrap().expect("a snapshot was built");
        assert!(snapshot.meta.last_log_id.unwrap().index >= 4_000);
        (state, applied)
    };

    let names: Vec<&str> = state.workloads.keys().map(String::as_str).collect();
    assert_eq!(names, ["fx-excl", "fx-mig", "fx-mps"], "fx-gone was stopped and forgotten");
    assert_eq!(state.workloads["fx-mps"].version, 2);
    assert_eq!(state.workloads["fx-mps"].spec.replicas, 3);
    assert_eq!(state.workloads["fx-excl"].spec.env["MODE"], "exclusive");
    let node1 = &state.nodes["node-1"];
    assert_eq!(node1.status, NodeStatus::Ready);
    assert!(node1.registrations >= 2, "node-1 went down and registered again");
    assert!(!node1.drained, "undrained");
    assert_eq!(node1.operator_labels["rack"], "r1");
    assert_eq!(state.nodes["node-2"].operator_labels["seq"], "5000");
    assert!(state.write_keys.len() >= 5_000, "every label write had an idempotency key");
    assert_eq!(state.write_key_order.len(), state.write_keys.len(), "the key order is rebuilt");
    let running: Vec<_> = state
        .allocs
        .values()
        .filter(|a| a.desired == DesiredState::Run && a.actual == ActualState::Running)
        .collect();
    assert_eq!(running.len(), 6, "2 exclusive + 1 MIG + 3 MPS replicas run");
    for a in &running {
        assert!(state.allocs_on(&a.node).any(|b| b.id == a.id), "the node index holds {}", a.id);
    }

    // Opened again: format 3, read from the tables, the same state.
    let (_log, sm) = open_store(&path).expect("the migrated store reopens");
    assert_eq!(sm.reader().read(|s| s.clone()), state);
    assert_eq!(sm.reader().last_applied(), Some(applied));
}
