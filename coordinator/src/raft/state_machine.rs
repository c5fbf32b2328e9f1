//! The Raft state machine: a thin openraft adapter around the pure
//! [`crate::state::apply`], kept in the coordinator's redb file as one table
//! per entity ([`super::machine_tables`]).
//!
//! ```text
//!   committed entries ──► apply batch in memory ──► every 64 entries / 1 s:
//!                          (write lock, pure;        write the records they
//!                           notes changed keys)      changed + applied index
//!                                                    ──► notify subscribers
//! ```
//!
//! The records a batch changed are written with the applied index in one
//! transaction (O(changes), not O(state)), so a restarted coordinator comes
//! back where it was and openraft re-applies only the entries after it.
//! Readers ([`StateReader`]) may see a batch a moment before it is on disk;
//! that is safe because those entries are committed, so they are durable in
//! the log and would be applied again after a crash.
//!
//! A snapshot is the [`gantry_common::schema`] encoding of (last applied,
//! last membership, [`State`]): an export of the tables. It installs by
//! import. Should the tables lag the newest snapshot (a crash between the
//! two), opening imports the snapshot, since the log before it may be gone.

use std::collections::{BTreeSet, HashMap};
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

use super::machine_tables::{self, Delta};
use super::redb_io::{blocking, decode, encode, Fault, StorageResult, MACHINE};
use super::{NodeId, TypeConfig};
use crate::metrics::instruments::{observe, Instruments};
use crate::state::{self, CommandResponse, State};

/// Read handle of the applied state, cheap to clone. std `RwLock`: nothing
/// awaits while holding it.
///
/// Readers never take the state machine's lock: after every applied batch
/// (and installed snapshot) the state machine publishes a snapshot of the
/// state, an O(1) clone that shares every record (`State::frozen`), and
/// [`StateReader::read`] works on the latest one. An apply never waits for
/// a reader, and a reader never waits for an apply.
#[derive(Clone)]
pub struct StateReader {
    applied: Arc<RwLock<Applied>>,
    /// The state as of the last applied batch. A std `Mutex` held only to
    /// clone or replace the `Arc`.
    published: Arc<Mutex<Arc<State>>>,
    /// Last applied log index (0 before anything is applied).
    changed: Arc<watch::Sender<u64>>,
    /// Per watched node, its `alloc_revision` (`u64::MAX`: not registered),
    /// sent only when an applied batch changed it, so an allocation stream
    /// wakes for its own node and not for every write. A std `Mutex`:
    /// nothing awaits under it.
    node_watches: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    /// Batches notified (unheld watches of untouched nodes are swept every
    /// [`SWEEP_WATCHES_EVERY`]).
    notified_batches: Arc<AtomicU64>,
    /// The last snapshot this coordinator built (for `/metrics`).
    snapshots: Arc<SnapshotStats>,
}

/// Size and build time of the last snapshot built here, and how many were built.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    bytes: AtomicU64,
    build_micros: AtomicU64,
    built: AtomicU64,
    /// When the last one was built; a std `Mutex`: nothing awaits under it.
    built_at: Mutex<Option<Instant>>,
}

impl SnapshotStats {
    fn record(&self, bytes: usize, took: std::time::Duration) {
        self.bytes.store(bytes as u64, Ordering::Relaxed);
        self.build_micros.store(took.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
        self.built.fetch_add(1, Ordering::Relaxed);
        *self.built_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Time since the last snapshot was built here; `None` before the first.
    pub fn age(&self) -> Option<std::time::Duration> {
        self.built_at.lock().unwrap_or_else(PoisonError::into_inner).map(|t| t.elapsed())
    }

    /// (bytes, build seconds, snapshots built) of the last one; zeros before the first.
    pub fn last(&self) -> (u64, f64, u64) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.build_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.built.load(Ordering::Relaxed),
        )
    }
}

impl StateReader {
    /// The last snapshot built by this coordinator.
    pub fn snapshot_stats(&self) -> &SnapshotStats {
        &self.snapshots
    }

    /// Runs `f` on the state as of the last applied batch. It holds no
    /// lock: batches applied meanwhile are not seen, and not held up.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.snapshot())
    }

    /// The state as of the last applied batch, to keep (an O(1) handle;
    /// what it shares with the live state is copied only when that changes).
    pub fn snapshot(&self) -> Arc<State> {
        Arc::clone(&self.published.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `state` the one readers see.
    fn publish(&self, state: &State) {
        let frozen = Arc::new(state.frozen());
        *self.published.lock().unwrap_or_else(PoisonError::into_inner) = frozen;
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
        // Read first, lock the watches after, as `notify` does.
        let revision = self.read(|s| s.nodes.get(node).map_or(u64::MAX, |n| n.alloc_revision));
        let mut watches = self.node_watches.lock().unwrap_or_else(PoisonError::into_inner);
        watches.entry(node.to_string()).or_insert_with(|| watch::channel(revision).0).subscribe()
    }

    /// Tells the watchers that `last_applied` is applied. `touched`: the
    /// nodes the batch changed (only their watches are looked at: at 5,000
    /// watched nodes a pass over all of them per batch was the largest
    /// cost on Raft's thread); `None` (a snapshot installed): every node.
    fn notify(&self, last_applied: Option<LogId<NodeId>>, touched: Option<&BTreeSet<String>>) {
        self.changed.send_replace(last_applied.map_or(0, |l| l.index));
        let state = self.snapshot();
        let mut watches = self.node_watches.lock().unwrap_or_else(PoisonError::into_inner);
        let revision_of = |node: &str| state.nodes.get(node).map_or(u64::MAX, |n| n.alloc_revision);
        let send = |tx: &watch::Sender<u64>, revision: u64| {
            tx.send_if_modified(|current| std::mem::replace(current, revision) != revision);
        };
        let batches = self.notified_batches.fetch_add(1, Ordering::Relaxed) + 1;
        match touched {
            Some(nodes) => {
                for node in nodes {
                    match watches.get(node.as_str()) {
                        // Watches nobody holds any more go.
                        Some(tx) if tx.receiver_count() == 0 => {
                            watches.remove(node.as_str());
                        }
                        Some(tx) => send(tx, revision_of(node)),
                        None => {}
                    }
                }
                // Now and then, also those of nodes no batch touches.
                if batches.is_multiple_of(SWEEP_WATCHES_EVERY) {
                    watches.retain(|_, tx| tx.receiver_count() > 0);
                }
            }
            None => watches.retain(|node, tx| {
                send(tx, revision_of(node));
                tx.receiver_count() > 0
            }),
        }
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
    /// Write the state once this many writes are unsaved (a group counts as its writes; or [`CHECKPOINT_INTERVAL`] passed).
    checkpoint_entries: u64,
    /// Held from taking a delta until its transaction commits, so deltas
    /// (and snapshot installs) reach the file in the order they were taken.
    write_order: Arc<Mutex<()>>,
    /// Apply and write latencies (`/metrics`).
    instruments: Instruments,
}

/// Applied entries not yet in the persisted state.
#[derive(Debug)]
struct Checkpoint {
    unsaved: u64,
    last: Instant,
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

    /// Restores the state machine persisted in `db` (an empty one if none),
    /// or the current snapshot where that is newer.
    pub(crate) fn open(db: Arc<Database>) -> Result<Self, Fault> {
        let (stored, snapshot_at) = {
            let txn = db.begin_read()?;
            let stored = machine_tables::load(&txn)?.unwrap_or_default();
            let table = txn.open_table(MACHINE)?;
            let snapshot_at = match table.get(SNAPSHOT_META_KEY)? {
                Some(v) => decode::<SnapshotMeta<NodeId, BasicNode>>("snapshot meta", v.value())?.last_log_id,
                None => None,
            };
            (stored, snapshot_at)
        };
        let applied = if snapshot_at > stored.last_applied {
            let txn = db.begin_write()?;
            let data = txn.open_table(MACHINE)?.get(SNAPSHOT_DATA_KEY)?.map(|v| v.value().to_vec());
            let Some(data) = data else {
                return Err(Fault::Invalid("the current snapshot has meta but no data".into()));
            };
            let applied: Applied = decode("snapshot data", &data)?;
            machine_tables::import(&txn, &applied)?;
            txn.commit()?;
            tracing::info!(
                snapshot = ?snapshot_at,
                tables = ?stored.last_applied,
                "the state machine's tables were older than its snapshot; imported the snapshot"
            );
            applied
        } else {
            stored
        };
        let (changed, _) = watch::channel(applied.last_applied.map_or(0, |l| l.index));
        let published = Arc::new(Mutex::new(Arc::new(applied.state.frozen())));
        let reader = StateReader {
            applied: Arc::new(RwLock::new(applied)),
            published,
            changed: Arc::new(changed),
            node_watches: Arc::default(),
            notified_batches: Arc::default(),
            snapshots: Arc::default(),
        };
        Ok(Self {
            db,
            reader,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            checkpoint: Arc::new(Mutex::new(Checkpoint { unsaved: 0, last: Instant::now() })),
            checkpoint_entries: CHECKPOINT_ENTRIES,
            write_order: Arc::default(),
            instruments: Instruments::default(),
        })
    }

    /// Records apply and write latencies into `instruments`' series.
    pub fn instrumented(mut self, instruments: Instruments) -> Self {
        self.instruments = instruments;
        self
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

    /// Writes the records changed since the last write, with the applied
    /// index, in one transaction on the blocking pool. The delta is taken
    /// and encoded under the write lock (O(changed records)), so it is
    /// exactly the state at that index.
    async fn persist_current(&self) -> StorageResult<()> {
        let db = Arc::clone(&self.db);
        let reader = self.reader.clone();
        let checkpoint = Arc::clone(&self.checkpoint);
        let order = Arc::clone(&self.write_order);
        let took = self.instruments.state_write.clone();
        blocking(StorageIOError::write_state_machine, move || {
            let started = Instant::now();
            let _order = order.lock().unwrap_or_else(PoisonError::into_inner);
            let delta = {
                let mut applied = reader.lock_write();
                let mut c = checkpoint.lock().unwrap_or_else(PoisonError::into_inner);
                c.unsaved = 0;
                c.last = Instant::now();
                Delta::take(&mut applied)?
            };
            let txn = db.begin_write()?;
            delta.write(&txn)?;
            txn.commit()?;
            observe(&took, started.elapsed());
            tracing::trace!(records = delta.records(), "state machine written");
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
        let started = Instant::now();
        let (responses, last_applied, touched) = {
            let mut applied = self.reader.lock_write();
            let mark = applied.state.nodes.change_mark();
            let responses: Vec<_> = entries.into_iter().map(|entry| applied.apply(entry)).collect();
            let touched: BTreeSet<String> = applied.state.nodes.changed_since(mark).iter().cloned().collect();
            self.reader.publish(&applied.state);
            (responses, applied.last_applied, touched)
        };
        if responses.is_empty() {
            return Ok(responses);
        }
        observe(&self.instruments.apply, started.elapsed());
        self.instruments.applied_entries.inc_by(responses.len() as u64);
        // The log holds every committed entry, so the state need not be
        // written per batch: a restart replays what came after the last
        // write (openraft re-applies from the state's last applied id up to
        // the last committed id saved durably; a leader's commit index
        // brings the rest). Snapshots write it too, so the log is never
        // purged past it. A group counts as the writes it holds.
        let writes: usize = responses
            .iter()
            .map(|r| match r {
                CommandResponse::Group(answers) => answers.len().max(1),
                _ => 1,
            })
            .sum();
        let due = {
            let mut c = self.lock_checkpoint();
            c.unsaved += writes as u64;
            c.unsaved >= self.checkpoint_entries || c.last.elapsed() >= CHECKPOINT_INTERVAL
        };
        if due {
            self.persist_current().await?;
        }
        self.reader.notify(last_applied, Some(&touched));
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
        let last_applied = incoming.last_applied;
        let db = Arc::clone(&self.db);
        let reader = self.reader.clone();
        let checkpoint = Arc::clone(&self.checkpoint);
        let order = Arc::clone(&self.write_order);
        blocking(
            |e| StorageIOError::write_snapshot(None, e),
            move || {
                // In order with the deltas: none taken from the old state may land after this.
                let _order = order.lock().unwrap_or_else(PoisonError::into_inner);
                let txn = db.begin_write()?;
                machine_tables::import(&txn, &incoming)?;
                {
                    let mut table = txn.open_table(MACHINE)?;
                    table.insert(SNAPSHOT_META_KEY, meta_bytes.as_slice())?;
                    table.insert(SNAPSHOT_DATA_KEY, bytes.as_slice())?;
                }
                txn.commit()?;
                {
                    let mut applied = reader.lock_write();
                    *applied = incoming;
                    reader.publish(&applied.state);
                }
                let mut c = checkpoint.lock().unwrap_or_else(PoisonError::into_inner);
                c.unsaved = 0;
                c.last = Instant::now();
                Ok(())
            },
        )
        .await?;
        self.reader.notify(last_applied, None);
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
        let started = std::time::Instant::now();
        // The tables first, then the snapshot is an export of them, read in
        // a redb read transaction on the blocking pool: no lock on the state
        // is held while thousands of records are encoded, so applies,
        // heartbeats and views go on meanwhile (encoding 10 MB of state under
        // the read lock held them up for a quarter of a second). A batch
        // applied meanwhile only makes the export a little newer; it is
        // consistent either way, since each write of the tables is one
        // transaction with its applied index.
        self.persist_current().await?;
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let db = Arc::clone(&self.db);
        let (meta, bytes) = blocking(
            |e| StorageIOError::write_snapshot(None, e),
            move || {
                let exported = {
                    let txn = db.begin_read()?;
                    machine_tables::load(&txn)?.unwrap_or_default()
                };
                let bytes = encode("snapshot data", &exported)?;
                let last_applied = exported.last_applied;
                let snapshot_id = match last_applied {
                    Some(l) => format!("{}-{}-{}-{seq}", l.leader_id.term, l.leader_id.node_id, l.index),
                    None => format!("none-{seq}"),
                };
                let meta = SnapshotMeta {
                    last_log_id: last_applied,
                    last_membership: exported.last_membership.clone(),
                    snapshot_id,
                };
                let meta_bytes = encode("snapshot meta", &meta)?;
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
                }
                txn.commit()?;
                Ok((meta, bytes))
            },
        )
        .await?;
        let took = started.elapsed();
        self.reader.snapshots.record(bytes.len(), took);
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), bytes = bytes.len(), ?took, "built a snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

/// Applied batches between two sweeps of the watches nobody holds.
const SWEEP_WATCHES_EVERY: u64 = 256;
const SNAPSHOT_META_KEY: &str = "snapshot_meta";
const SNAPSHOT_DATA_KEY: &str = "snapshot_data";

/// The state machine in memory, and a snapshot's data (a stored format: see `tests/golden.rs`).
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
        let on_disk = machine_tables::load(&txn).unwrap().unwrap();
        assert_eq!(on_disk.state, reader.read(State::clone));
        assert_eq!(on_disk.last_applied, Some(log_id(4)));
    }

    /// Readers work from the snapshot of the last applied batch: one kept
    /// does not change under later batches, a new one sees them, and a read
    /// does not wait for the state machine's lock (held here, as an apply
    /// holds it, while the read runs on another thread).
    #[tokio::test]
    async fn readers_see_the_last_batch_without_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(&dir.path().join("raft.redb"));
        sm.apply([register(1, "n1")]).await.unwrap();
        let reader = sm.reader();
        let kept = reader.snapshot();
        sm.apply([membership(2), register(3, "n2")]).await.unwrap();
        assert_eq!(kept.nodes.keys().collect::<Vec<_>>(), ["n1"], "a kept snapshot does not change");
        assert_eq!(reader.read(|s| s.nodes.len()), 2, "a new one sees the batch");
        assert!(!reader.snapshot().nodes.has_changes(), "a snapshot carries no pending writes");

        let held = reader.lock_write();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = reader.clone();
        std::thread::spawn(move || tx.send(other.read(|s| s.nodes.len())));
        // A generous bound: this checks that the read returns at all, not how fast.
        let read = rx.recv_timeout(Duration::from_secs(60));
        drop(held);
        assert_eq!(read, Ok(2), "a read waited for the state machine's write lock");
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
        // A watch nobody holds goes when a batch touches its node.
        drop(ghost);
        sm.apply([register(6, "n4")]).await.unwrap();
        assert!(reader.node_watches.lock().unwrap().contains_key("n9"), "n9 was not touched");
        sm.apply([register(7, "n9")]).await.unwrap();
        assert!(!reader.node_watches.lock().unwrap().contains_key("n9"));
        // And every SWEEP_WATCHES_EVERY batches, untouched or not.
        drop(reader.watch_node("n2"));
        drop(n2);
        let mut index = 8;
        while reader.node_watches.lock().unwrap().contains_key("n2") {
            assert!(index < 8 + SWEEP_WATCHES_EVERY + 1, "never swept");
            sm.apply([register(index, "n1")]).await.unwrap();
            index += 1;
        }
    }

    /// Random command streams through the store, in batches of random
    /// sizes and with checkpoints every few entries: what reopens from the
    /// tables is the state in memory, every time.
    #[tokio::test]
    async fn random_streams_reopen_as_the_state_in_memory() {
        use crate::state::random_stream::Stream;
        let dir = tempfile::tempdir().unwrap();
        for seed in 0..6 {
            let path = dir.path().join(format!("raft-{seed}.redb"));
            let mut stream = Stream::new(1_000 + seed);
            let mut index = 0;
            let mut written = 0;
            for round in 0..4 {
                let every = 1 + stream.rng().below(10);
                let mut sm = open_store(&path).unwrap().1.with_checkpoint_every(every);
                let reader = sm.reader();
                for _ in 0..40 {
                    let batch = 1 + stream.rng().below(6);
                    let mut entries = Vec::new();
                    let mut state = reader.read(State::clone);
                    for _ in 0..batch {
                        let command = stream.next(&state);
                        // Later commands of the batch are drawn from the state they will meet.
                        state::apply(&mut state, &command);
                        index += 1;
                        entries.push(Entry { log_id: log_id(index), payload: EntryPayload::Normal(command) });
                    }
                    sm.apply(entries).await.unwrap();
                    assert_eq!(
                        reader.read(State::clone),
                        state,
                        "seed {seed} round {round}: apply is the pure apply"
                    );
                }
                sm.flush().await.unwrap();
                let in_memory = reader.read(State::clone);
                written += in_memory.allocs.len();
                drop((sm, reader));
                let reopened = open_store(&path).unwrap().1;
                assert_eq!(reopened.reader().read(State::clone), in_memory, "seed {seed} round {round}");
                assert_eq!(reopened.reader().last_applied(), Some(index));
            }
            assert!(written > 0, "seed {seed} placed nothing");
        }
    }

    /// Tables older than the stored snapshot (a crash between the two; the
    /// log before the snapshot may be purged): opening imports the snapshot.
    #[tokio::test]
    async fn tables_older_than_the_snapshot_open_as_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut ahead = open(&dir.path().join("ahead.redb"));
        apply_some(&mut ahead).await;
        let snapshot = ahead.build_snapshot().await.unwrap();

        let behind_path = dir.path().join("behind.redb");
        {
            let mut behind = open(&behind_path);
            behind.apply([register(1, "n1")]).await.unwrap();
            let txn = behind.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(MACHINE).unwrap();
                table.insert(SNAPSHOT_META_KEY, encode("m", &snapshot.meta).unwrap().as_slice()).unwrap();
                table.insert(SNAPSHOT_DATA_KEY, snapshot.snapshot.get_ref().as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let behind = open(&behind_path);
        assert_eq!(behind.reader().last_applied(), Some(4));
        assert_eq!(behind.reader().read(State::clone), ahead.reader().read(State::clone));
        // And the tables now hold it: it opens the same without the snapshot's help.
        drop(behind);
        let txn = open(&behind_path).db.begin_read().unwrap();
        let tables = machine_tables::load(&txn).unwrap().unwrap();
        assert_eq!(tables.state, ahead.reader().read(State::clone));
    }

    /// An applied batch writes only the records it changed.
    #[tokio::test]
    async fn a_batch_writes_the_records_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(&dir.path().join("raft.redb"));
        apply_some(&mut sm).await;
        let row = |sm: &StateMachineStore, node: &str| {
            let txn = sm.db.begin_read().unwrap();
            let table = txn.open_table(machine_tables::NODES).unwrap();
            let value = table.get(node).unwrap().map(|v| v.value().to_vec());
            value
        };
        let n2_before = row(&sm, "n2").unwrap();
        // Corrupt n2's row behind the state machine's back: a batch that
        // does not touch n2 must leave it as it is.
        {
            let txn = sm.db.begin_write().unwrap();
            txn.open_table(machine_tables::NODES).unwrap().insert("n2", [0xc0_u8].as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let up = Entry {
            log_id: log_id(5),
            payload: EntryPayload::Normal(Command::SetNodeStatus {
                node: "n1".into(),
                status: NodeStatus::Ready,
            }),
        };
        sm.apply([up]).await.unwrap();
        assert_eq!(row(&sm, "n2").unwrap(), vec![0xc0], "n2 was not rewritten");
        assert_ne!(row(&sm, "n1").unwrap(), n2_before);
        let n1: crate::state::NodeRecord = decode("n1", &row(&sm, "n1").unwrap()).unwrap();
        assert_eq!(n1.status, NodeStatus::Ready, "n1 was");
        // A refused command writes nothing but the applied index.
        let ghost = Entry {
            log_id: log_id(6),
            payload: EntryPayload::Normal(Command::SetNodeStatus {
                node: "ghost".into(),
                status: NodeStatus::Down,
            }),
        };
        let txn = sm.db.begin_write().unwrap();
        txn.open_table(machine_tables::NODES).unwrap().insert("n1", [0xc0_u8].as_slice()).unwrap();
        txn.commit().unwrap();
        sm.apply([ghost]).await.unwrap();
        assert_eq!(row(&sm, "n1").unwrap(), vec![0xc0], "nothing rewritten for a refusal");
        let txn = sm.db.begin_read().unwrap();
        let meta = txn
            .open_table(MACHINE)
            .unwrap()
            .get(machine_tables::APPLIED_KEY)
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        let meta: machine_tables::MachineMeta = decode("meta", &meta).unwrap();
        assert_eq!(meta.last_applied, Some(log_id(6)));
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
            txn.open_table(MACHINE)
                .unwrap()
                .insert(machine_tables::APPLIED_KEY, [0x01_u8, 0x09].as_slice())
                .unwrap();
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
