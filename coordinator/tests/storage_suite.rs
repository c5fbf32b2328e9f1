//! openraft's storage conformance suite against the coordinator's redb store,
//! one fresh file in its own temporary directory per build.

use gantry_coordinator::raft::log_store::LogStore;
use gantry_coordinator::raft::state_machine::StateMachineStore;
use gantry_coordinator::raft::store::open_store;
use gantry_coordinator::raft::{NodeId, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use tempfile::TempDir;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log, sm) = open_store(&dir.path().join("raft.redb"))
            .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> anyhow::Result<()> {
    Suite::test_all(RedbBuilder)?;
    Ok(())
}
