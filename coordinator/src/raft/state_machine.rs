//! The Raft state machine: a thin openraft adapter around the pure
//! [`crate::state::apply`], kept in the coordinator's redb file (table
//! `state_machine`, see [`super::store`]).
//!
//! ```text
//!   committed entries ──► apply batch in memory ──► persist (last applied,
//!                          (write lock, pure)        membership, State) once
//!                                                    ──► notify subscribers
//! ```
//!
//! The state is persisted once per `apply` batch, so a restarted coordinator
//! comes back where it was and openraft re-applies only the entries after the
//! last applied one. Readers ([`StateReader`]) may see a batch a moment before
//! it is on disk; that is safe because those entries are committed, so they
//! are durable in the log and would be applied again after a crash.
//!
//! A snapshot is the same encoding as the persisted state machine: the
//! [`gantry_common::schema`] encoding of (last applied, last membership, [`State`]).

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::redb_io::{blocking, decode, encode, Fault, StorageResult, MACHINE};
use super::{NodeId, TypeConfig};
use crate::state::{self, CommandResponse, State};

/// Read handle of the applied state, cheap to clone. std `RwLock`: nothing
/// awaits while holding it.
#[derive(Clone)]
pub struct StateReader {
    applied: Arc<RwLock<Applied>>,
    /// Last applied log index (0 before anything is applied).
    changed: Arc<watch::Sender<u64>>,
    /// Per watched node, its `alloc_revision` (`u64::MAX`: not registered),
    /// sent only when an applied batch changed it, so an allocation stream
    /// wakes for its own node and not for every write. A std `Mutex`:
    /// nothing awaits under it.
    node_watches: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl StateReader {
    /// Runs `f` on the current state. Keep `f` short and do not call back
    /// into the reader from it: the state machine waits for it before it
    /// applies the next batch.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock_read().state)
    }

    /// Index of the last applied log entry, `None` before the first.
    pub fn last_applied(&self) -> Option<u64> {
        self.lock_read().last_applied.map(|l| l.index)
    }

    /// A receiver of the last applied log index, updated after each applied
    /// batch and each installed snapshot (0 before anything is applied).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock_read(&self) -> RwLockReadGuard<'_, Applied> {
        // A panic under the write lock can only come from `apply`, which then
        // takes the Raft node down anyway; reading what is there is fine.
        self.applied.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver of `node`'s `alloc_revision`, updated when it changes.
    pub fn watch_node(&self, node: &str) -> watch::Receiver<u64> {
        // Read first, lock the watches after: `notify` takes them in the
        // other order, under a read lock a queued writer could block.
        let revision = self.read(|s| s.nodes.get(node).map_or(u64::MAX, |n| n.alloc_revision));
        let mut watches = self.node_watches.lock().unwrap_or_else(PoisonError::into_inner);
        watches.entry(node.to_string()).or_insert_with(|| watch::channel(revision).0).subscribe()
    }

    fn notify(&self, last_applied: Option<LogId<NodeId>>) {
        self.changed.send_replace(last_applied.map_or(0, |l| l.index));
        let applied = self.lock_read();
        let mut watches = self.node_watches.lock().unwrap_or_else(PoisonError::into_inner);
        // O(watched nodes) per batch; watches nobody holds any more go.
        watches.retain(|node, tx| {
            if tx.receiver_count() == 0 {
                return false;
            }
            let revision = applied.state.nodes.get(node).map_or(u64::MAX, |n| n.alloc_revision);
            tx.send_if_modified(|current| std::mem::replace(current, revision) != revision);
            true
        });
    }
}

/// openraft's state machine on redb; also its own snapshot builder (clones
/// share everything).
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    reader: StateReader,
    /// Tells apart snapshots built at the same log id.
    snapshot_seq: Arc<AtomicU64>,
    /// Entries applied since the state was last written, and when that was.
    /// A std `Mutex`: nothing awaits under it.
    checkpoint: Arc<Mutex<Checkpoint>>,
    /// Write the state once this many entries are unsaved (or [`CHECKPOINT_INTERVAL`] passed).
    checkpoint_entries: u64,
}

/// Applied entries not yet in the persisted state.
#[derive(Debug)]
struct Checkpoint {
    unsaved: u64,
    last: Instant,
    /// Last applied index of the state as written.
    saved: Option<u64>,
}

/// Default number of applied entries between two writes of the state.
pub const CHECKPOINT_ENTRIES: u64 = 64;
/// Longest the persisted state lags the applied one while entries apply.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

impl StateMachineStore {
    /// A handle to read the applied state and follow its changes.
    pub fn reader(&self) -> StateReader {
        self.reader.clone()
    }

    /// Restores the state machine persisted in `db` (an empty one if none).
    pub(crate) fn open(db: Arc<Database>) -> Result<Self, Fault> {
        let applied = {
            let txn = db.begin_read()?;
            let table = txn.open_table(MACHINE)?;
            match table.get(MACHINE_KEY)? {
                Some(value) => decode::<Applied>("state machine", value.value())?,
                None => Applied::default(),
            }
        };
        let saved_index = applied.last_applied.map(|l| l.index);
        let (changed, _) = watch::channel(applied.last_applied.map_or(0, |l| l.index));
        let reader = StateReader {
            applied: Arc::new(RwLock::new(applied)),
            changed: Arc::new(changed),
            node_watches: Arc::default(),
        };
        Ok(Self {
            db,
            reader,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            checkpoint: Arc::new(Mutex::new(Checkpoint {
                unsaved: 0,
                last: Instant::now(),
                saved: saved_index,
            })),
            checkpoint_entries: CHECKPOINT_ENTRIES,
        })
    }

    /// Writes the state after every `entries` applied entries (1: after
    /// every batch, as tests want).
    pub fn with_checkpoint_every(mut self, entries: u64) -> Self {
        self.checkpoint_entries = entries.max(1);
        self
    }

    /// Writes the applied state now if any applied entry is not in it
    /// (before a clean stop, so the next start replays nothing).
    pub async fn flush(&self) -> StorageResult<()> {
        if self.lock_checkpoint().unsaved == 0 {
            return Ok(());
        }
        self.persist_current().await
    }

    fn lock_checkpoint(&self) -> std::sync::MutexGuard<'_, Checkpoint> {
        self.checkpoint.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Encodes the current state (under a read lock) and writes it as the
    /// state machine, on the blocking pool.
    async fn persist_current(&self) -> StorageResult<()> {
        let db = Arc::clone(&self.db);
        let reader = self.reader.clone();
        let checkpoint = Arc::clone(&self.checkpoint);
        blocking(StorageIOError::write_state_machine, move || {
            let bytes = {
                let applied = reader.lock_read();
                let bytes = encode("state machine", &*applied)?;
                // Counted under the read lock: no entry applies meanwhile.
                let mut c = checkpoint.lock().unwrap_or_else(PoisonError::into_inner);
                c.unsaved = 0;
                c.last = Instant::now();
                c.saved = applied.last_applied.map(|l| l.index);
                bytes
            };
            let txn = db.begin_write()?;
            txn.open_table(MACHINE)?.insert(MACHINE_KEY, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// Writes `bytes` (an encoded [`Applied`]) as the state machine and, with
    /// `snapshot_meta`, as the current snapshot too, in one durable
    /// transaction.
    async fn persist(&self, bytes: Vec<u8>, snapshot_meta: Option<Vec<u8>>) -> StorageResult<()> {
        let db = Arc::clone(&self.db);
        blocking(StorageIOError::write_state_machine, move || {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(MACHINE)?;
                table.insert(MACHINE_KEY, bytes.as_slice())?;
                if let Some(meta) = snapshot_meta {
                    table.insert(SNAPSHOT_META_KEY, meta.as_slice())?;
                    table.insert(SNAPSHOT_DATA_KEY, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let applied = self.reader.lock_read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Only the apply itself holds the write lock: readers (heartbeats,
        // views, the planner) wait for it, never for the encoding and the
        // fsync, which run on the blocking pool under a read lock.
        // openraft applies one batch at a time, so nothing writes between.
        let (responses, last_applied) = {
            let mut applied = self.reader.lock_write();
            let responses: Vec<_> = entries.into_iter().map(|entry| applied.apply(entry)).collect();
            (responses, applied.last_applied)
        };
        if responses.is_empty() {
            return Ok(responses);
        }
        // The log holds every committed entry, so the state need not be
        // written per batch: a restart replays what came after the last
        // write (openraft re-applies from the state's last applied id up to
        // the saved committed id). Snapshots write it too, so the log is
        // never purged past it.
        let due = {
            let mut c = self.lock_checkpoint();
            c.unsaved += responses.len() as u64;
            c.unsaved >= self.checkpoint_entries || c.last.elapsed() >= CHECKPOINT_INTERVAL
        };
        if due {
            self.persist_current().await?;
        }
        self.reader.notify(last_applied);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let on_error = |f: Fault| f.io(|e| StorageIOError::read_snapshot(Some(meta.signature()), e));
        let bytes = snapshot.into_inner();
        let incoming: Applied = decode("snapshot data", &bytes).map_err(on_error)?;
        if incoming.last_applied != meta.last_log_id || incoming.last_membership != meta.last_membership {
            return Err(on_error(Fault::Invalid(format!(
                "snapshot {} carries last applied {:?} and membership {}, its meta says {:?} and {}",
                meta.snapshot_id,
                incoming.last_applied,
                incoming.last_membership,
                meta.last_log_id,
                meta.last_membership
            ))));
        }
        let meta_bytes = encode("snapshot meta", meta).map_err(on_error)?;
        self.persist(bytes, Some(meta_bytes)).await?;
        let last_applied = incoming.last_applied;
        *self.reader.lock_write() = incoming;
        {
            let mut c = self.lock_checkpoint();
            c.unsaved = 0;
            c.last = Instant::now();
            c.saved = last_applied.map(|l| l.index);
        }
        self.reader.notify(last_applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let db = Arc::clone(&self.db);
        blocking(
            |e| StorageIOError::read_snapshot(None, e),
            move || {
                let txn = db.begin_read()?;
                let table = txn.open_table(MACHINE)?;
                let Some(meta) = table.get(SNAPSHOT_META_KEY)? else {
                    return Ok(None);
                };
                let meta: SnapshotMeta<NodeId, BasicNode> = decode("snapshot meta", meta.value())?;
                let Some(data) = table.get(SNAPSHOT_DATA_KEY)? else {
                    return Err(Fault::Invalid(format!(
                        "snapshot {} has meta but no data",
                        meta.snapshot_id
                    )));
                };
                Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data.value().to_vec())) }))
            },
        )
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (bytes, last_applied, last_membership) = {
            let applied = self.reader.lock_read();
            let bytes = encode("snapshot data", &*applied)
                .map_err(|f| f.io(|e| StorageIOError::write_snapshot(None, e)))?;
            (bytes, applied.last_applied, applied.last_membership.clone())
        };
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}-{seq}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership, snapshot_id };
        let meta_bytes =
            encode("snapshot meta", &meta).map_err(|f| f.io(|e| StorageIOError::write_snapshot(None, e)))?;

        let db = Arc::clone(&self.db);
        let checkpoint = Arc::clone(&self.checkpoint);
        let bytes = blocking(
            |e| StorageIOError::write_snapshot(None, e),
            move || {
                let txn = db.begin_write()?;
                {
                    let mut table = txn.open_table(MACHINE)?;
                    // A snapshot installed meanwhile may be newer than this one;
                    // keep it. An undecodable one is replaced.
                    let current = match table.get(SNAPSHOT_META_KEY)? {
                        Some(v) => decode::<SnapshotMeta<NodeId, BasicNode>>("snapshot meta", v.value()).ok(),
                        None => None,
                    };
                    if current.is_none_or(|c| c.last_log_id <= last_applied) {
                        table.insert(SNAPSHOT_META_KEY, meta_bytes.as_slice())?;
                        table.insert(SNAPSHOT_DATA_KEY, bytes.as_slice())?;
                    }
                    // The written state is never older than the snapshot,
                    // whose building lets openraft purge the log before it.
                    let index = last_applied.map(|l| l.index);
                    let mut c = checkpoint.lock().unwrap_or_else(PoisonError::into_inner);
                    if c.saved < index {
                        table.insert(MACHINE_KEY, bytes.as_slice())?;
                        c.saved = index;
                    }
                }
                txn.commit()?;
                Ok(bytes)
            },
        )
        .await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

const MACHINE_KEY: &str = "machine";
const SNAPSHOT_META_KEY: &str = "snapshot_meta";
const SNAPSHOT_DATA_KEY: &str = "snapshot_data";

/// What the state machine keeps: the persisted record and a snapshot's data (a stored format: see `tests/golden.rs`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, BasicNode>,
    pub state: State,
}

impl Applied {
    fn apply(&mut self, entry: Entry<TypeConfig>) -> CommandResponse {
        let response = match entry.payload {
            EntryPayload::Blank => CommandResponse::Applied,
            EntryPayload::Normal(command) => state::apply(&mut self.state, &command),
            EntryPayload::Membership(membership) => {
                self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                CommandResponse::Applied
            }
        };
        self.last_applied = Some(entry.log_id);
        response
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use gantry_common::model::{HostInfo, NodeInfo, NodeStatus};
    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::raft::store::{open_store, StoreError};
    use crate::state::Command;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn register(index: u64, name: &str) -> Entry<TypeConfig> {
        let info = NodeInfo {
            name: name.into(),
            labels: BTreeMap::new(),
            host: HostInfo {
                hostname: name.into(),
                cpu_count: 8,
                memory_total_mib: 1024,
                os: "linux".into(),
                kernel: "6.1".into(),
            },
            gpus: vec![],
            agent_version: "0.1.0".into(),
            gpu_backend: "sim".into(),
            address: "127.0.0.1".into(),
            http_addr: String::new(),
        };
        Entry { log_id: log_id(index), payload: EntryPayload::Normal(Command::RegisterNode { info }) }
    }

    fn membership(index: u64) -> Entry<TypeConfig> {
        let nodes = BTreeMap::from([(1, BasicNode::new("c1:7000")), (2, BasicNode::new("c2:7000"))]);
        let voters = BTreeSet::from([1, 2]);
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
        }
    }

    /// A state machine that writes its state after every batch.
    fn open(path: &Path) -> StateMachineStore {
        open_store(path).unwrap().1.with_checkpoint_every(1)
    }

    /// Two nodes registered, a membership change and one node marked down.
    async fn apply_some(sm: &mut StateMachineStore) -> Vec<CommandResponse> {
        let down = Entry {
            log_id: log_id(4),
            payload: EntryPayload::Normal(Command::SetNodeStatus {
                node: "n1".into(),
                status: NodeStatus::Down,
            }),
        };
        sm.apply([register(1, "n1"), membership(2), register(3, "n2"), down]).await.unwrap()
    }

    #[tokio::test]
    async fn applied_batch_is_persisted_and_announced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut sm = open(&path);
        let reader = sm.reader();
        let mut changes = reader.subscribe();
        assert_eq!(*changes.borrow_and_update(), 0);
        assert_eq!(reader.last_applied(), None);

        let responses = apply_some(&mut sm).await;
        assert_eq!(responses, vec![CommandResponse::Applied; 4]);
        assert!(changes.has_changed().unwrap());
        assert_eq!(*changes.borrow_and_update(), 4);
        assert_eq!(reader.last_applied(), Some(4));
        assert_eq!(reader.read(|s| s.nodes["n1"].status), NodeStatus::Down);

        // What is on disk is what is in memory.
        let txn = sm.db.begin_read().unwrap();
        let bytes = txn.open_table(MACHINE).unwrap().get(MACHINE_KEY).unwrap().unwrap().value().to_vec();
        let on_disk: Applied = decode("machine", &bytes).unwrap();
        assert_eq!(on_disk.state, reader.read(State::clone));
        assert_eq!(on_disk.last_applied, Some(log_id(4)));
    }

    /// An applied batch wakes the allocation streams of the nodes it
    /// changed, and only those.
    #[tokio::test]
    async fn only_the_nodes_a_batch_changed_are_woken() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(&dir.path().join("raft.redb"));
        sm.apply([register(1, "n1"), membership(2), register(3, "n2")]).await.unwrap();
        let reader = sm.reader();
        let (mut n1, mut n2, mut ghost) =
            (reader.watch_node("n1"), reader.watch_node("n2"), reader.watch_node("n9"));
        for w in [&mut n1, &mut n2, &mut ghost] {
            w.borrow_and_update();
        }
        let down = Entry {
            log_id: log_id(4),
            payload: EntryPayload::Normal(Command::SetNodeStatus {
                node: "n1".into(),
                status: NodeStatus::Down,
            }),
        };
        sm.apply([down]).await.unwrap();
        assert!(n1.has_changed().unwrap(), "n1's desired set changed");
        assert_eq!(*n1.borrow_and_update(), reader.read(|s| s.nodes["n1"].alloc_revision));
        assert!(!n2.has_changed().unwrap(), "n2 is not woken by n1's change");
        assert_eq!(*ghost.borrow_and_update(), u64::MAX, "an unregistered node reads as such");
        assert!(!ghost.has_changed().unwrap());
        // Another batch that changes nothing for n1 does not wake it again.
        sm.apply([register(5, "n3")]).await.unwrap();
        assert!(!n1.has_changed().unwrap());
        // Watches nobody holds are dropped at the next batch.
        drop(ghost);
        sm.apply([register(6, "n4")]).await.unwrap();
        assert!(!reader.node_watches.lock().unwrap().contains_key("n9"));
    }

    #[tokio::test]
    async fn reopen_restores_state_applied_and_membership() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let (before, applied_before) = {
            let mut sm = open(&path);
            apply_some(&mut sm).await;
            (sm.reader().read(State::clone), sm.applied_state().await.unwrap())
        };

        let mut sm = open(&path);
        assert_eq!(sm.reader().read(State::clone), before);
        assert_eq!(sm.reader().last_applied(), Some(4));
        assert_eq!(*sm.reader().subscribe().borrow(), 4);
        let (last_applied, last_membership) = sm.applied_state().await.unwrap();
        assert_eq!((last_applied, &last_membership), (applied_before.0, &applied_before.1));
        assert_eq!(last_membership.log_id(), &Some(log_id(2)));
        assert_eq!(last_membership.voter_ids().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(before.nodes.len(), 2);
    }

    #[tokio::test]
    async fn the_state_is_written_every_checkpoint_and_on_flush_and_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            // The default: 4 entries are fewer than a checkpoint, so the
            // written state lags (a restart replays them from the log).
            let mut sm = open_store(&path).unwrap().1;
            apply_some(&mut sm).await;
            assert_eq!(sm.reader().last_applied(), Some(4));
        }
        assert_eq!(open_store(&path).unwrap().1.reader().last_applied(), None);
        {
            let mut sm = open_store(&path).unwrap().1;
            apply_some(&mut sm).await;
            sm.flush().await.unwrap();
        }
        assert_eq!(open_store(&path).unwrap().1.reader().last_applied(), Some(4), "flushed");
        let dir2 = tempfile::tempdir().unwrap();
        let path2 = dir2.path().join("raft.redb");
        {
            let mut sm = open_store(&path2).unwrap().1;
            apply_some(&mut sm).await;
            sm.build_snapshot().await.unwrap();
        }
        let sm = open_store(&path2).unwrap().1;
        assert_eq!(sm.reader().last_applied(), Some(4), "a snapshot writes the state too");
        assert_eq!(sm.reader().read(|s| s.nodes.len()), 2);
    }

    #[tokio::test]
    async fn snapshot_installs_the_same_state_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = open(&dir.path().join("leader.redb"));
        apply_some(&mut leader).await;
        let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(4)));
        let current = leader.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);

        let follower_path = dir.path().join("follower.redb");
        let mut follower = open(&follower_path);
        let mut changes = follower.reader().subscribe();
        let mut received = follower.begin_receiving_snapshot().await.unwrap();
        *received = *current.snapshot;
        follower.install_snapshot(&current.meta, received).await.unwrap();

        let leader_state = leader.reader().read(State::clone);
        assert_eq!(follower.reader().read(State::clone), leader_state);
        assert_eq!(follower.applied_state().await.unwrap(), leader.applied_state().await.unwrap());
        assert_eq!(*changes.borrow_and_update(), 4);
        let installed = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(installed.meta, snapshot.meta);
        assert_eq!(installed.snapshot.into_inner(), snapshot.snapshot.into_inner());

        // And it survives a restart of the follower.
        drop(follower);
        let follower = open(&follower_path);
        assert_eq!(follower.reader().read(State::clone), leader_state);
        assert_eq!(follower.reader().last_applied(), Some(4));
    }

    #[tokio::test]
    async fn snapshot_whose_data_disagrees_with_its_meta_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = open(&dir.path().join("leader.redb"));
        apply_some(&mut leader).await;
        let snapshot = leader.build_snapshot().await.unwrap();
        let mut meta = snapshot.meta.clone();
        meta.last_log_id = Some(log_id(9));

        let mut follower = open(&dir.path().join("follower.redb"));
        let err = follower.install_snapshot(&meta, snapshot.snapshot).await.unwrap_err();
        assert!(err.to_string().contains("its meta says"), "{err}");
        assert_eq!(follower.reader().last_applied(), None, "nothing installed");

        let garbage = Box::new(Cursor::new(vec![0xff; 3]));
        assert!(follower.install_snapshot(&snapshot.meta, garbage).await.is_err());
    }

    #[tokio::test]
    async fn garbled_records_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let mut sm = open(&path);
            apply_some(&mut sm).await;
            let txn = sm.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(MACHINE).unwrap();
                table.insert(SNAPSHOT_META_KEY, [0xff_u8, 0xff, 0xff, 0xff].as_slice()).unwrap();
            }
            txn.commit().unwrap();
            let err = sm.get_current_snapshot().await.unwrap_err();
            assert!(err.to_string().contains("snapshot meta cannot be decoded"), "{err}");

            let txn = sm.db.begin_write().unwrap();
            txn.open_table(MACHINE).unwrap().insert(MACHINE_KEY, [0x01_u8, 0x09].as_slice()).unwrap();
            txn.commit().unwrap();
        }
        match open_store(&path) {
            Err(err @ StoreError::Corrupt { what: "state machine", .. }) => {
                let message = err.to_string();
                assert!(message.contains("raft.redb") && message.contains("cannot be decoded"), "{message}");
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("a garbled state machine must not open"),
        }
    }
}
