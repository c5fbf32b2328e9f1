//! The Raft log, the vote, the committed and the last purged log id, in the
//! coordinator's redb file (tables `raft_log` and `raft_meta`, see
//! [`super::store`]).
//!
//! Every write is one redb transaction, durable when it commits (except the
//! committed log id's, see [`LogStore::save_committed`]'s body); openraft
//! calls the writers one at a time through `&mut self`, which keeps the
//! writes in the order it issued them. [`LogStore`] is also its own log
//! reader: clones share the database and read through redb's MVCC snapshots.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, StorageIOError, Vote};
use redb::{Database, Durability, ReadableTable};

use super::redb_io::{blocking, decode, encode, Fault, StorageResult, LOG, META};
use super::{NodeId, TypeConfig};
use crate::metrics::instruments::{observe, Instruments};

/// openraft's log storage on redb. Cheap to clone.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Append and fsync latencies (`/metrics`).
    instruments: Instruments,
}

impl LogStore {
    /// A log store on an already initialised database; see
    /// [`super::store::open_store`].
    pub(crate) fn new(db: Arc<Database>) -> Self {
        Self { db, instruments: Instruments::default() }
    }

    /// Records append and fsync latencies into `instruments`' series.
    pub fn instrumented(mut self, instruments: Instruments) -> Self {
        self.instruments = instruments;
        self
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let db = Arc::clone(&self.db);
        blocking(StorageIOError::read_logs, move || read_entries(&db, bounds)).await
    }
}

impl LogStore {
    /// The last entry in the log (or the last purged one), read from the
    /// store: for pre-votes, which must not wait on Raft's core.
    pub async fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.clone().get_log_state().await.ok().and_then(|s| s.last_log_id)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let db = Arc::clone(&self.db);
        blocking(StorageIOError::read_logs, move || {
            let txn = db.begin_read()?;
            let last_purged_log_id: Option<LogId<NodeId>> = read_meta(&txn, LAST_PURGED)?;
            let last = match txn.open_table(LOG)?.last()? {
                Some((_, value)) => {
                    Some(*decode::<Entry<TypeConfig>>("log entry", value.value())?.get_log_id())
                }
                None => None,
            };
            Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let bytes = encode("vote", vote).map_err(|f| f.io(StorageIOError::write_vote))?;
        let db = Arc::clone(&self.db);
        blocking(StorageIOError::write_vote, move || {
            write_meta(&db, VOTE, Some(&bytes), Durability::Immediate)
        })
        .await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        let db = Arc::clone(&self.db);
        blocking(StorageIOError::read_vote, move || read_meta(&db.begin_read()?, VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let bytes = committed
            .map(|c| encode("committed log id", &c))
            .transpose()
            .map_err(|f| f.io(StorageIOError::write))?;
        let db = Arc::clone(&self.db);
        // Not fsynced: the committed id only saves work at a restart (what
        // is applied then, before a leader says what is committed), and
        // Raft needs no durable commit index. openraft's core waits for
        // this call each time the commit index moves, so an fsync here
        // would cost one more disk round per commit. The next log append
        // (durable) persists it along.
        blocking(StorageIOError::write, move || {
            write_meta(&db, COMMITTED, bytes.as_deref(), Durability::None)
        })
        .await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let db = Arc::clone(&self.db);
        blocking(StorageIOError::read, move || read_meta(&db.begin_read()?, COMMITTED)).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let encoded = entries
            .into_iter()
            .map(|entry| Ok((entry.get_log_id().index, encode("log entry", &entry)?)))
            .collect::<Result<Vec<_>, Fault>>()
            .map_err(|f| f.io(StorageIOError::write_logs))?;
        let db = Arc::clone(&self.db);
        let fsync = self.instruments.log_fsync.clone();
        blocking(StorageIOError::write_logs, move || {
            let txn = db.begin_write()?;
            {
                let mut log = txn.open_table(LOG)?;
                for (index, bytes) in &encoded {
                    log.insert(index, bytes.as_slice())?;
                }
            }
            let committing = std::time::Instant::now();
            txn.commit()?;
            observe(&fsync, committing.elapsed());
            Ok(())
        })
        .await?;
        observe(&self.instruments.log_append, started.elapsed());
        // Committed, hence on disk: tell openraft the entries are flushed.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let db = Arc::clone(&self.db);
        blocking(StorageIOError::write_logs, move || {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?.retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let db = Arc::clone(&self.db);
        blocking(StorageIOError::write_logs, move || {
            let txn = db.begin_write()?;
            {
                let mut meta = txn.open_table(META)?;
                let current: Option<LogId<NodeId>> = match meta.get(LAST_PURGED)? {
                    Some(value) => Some(decode("last purged log id", value.value())?),
                    None => None,
                };
                // The purge pointer never moves back, even if asked to.
                if current.is_none_or(|c| c < log_id) {
                    meta.insert(LAST_PURGED, encode("last purged log id", &log_id)?.as_slice())?;
                }
                txn.open_table(LOG)?.retain_in(..=log_id.index, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

fn read_entries(db: &Database, bounds: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry<TypeConfig>>, Fault> {
    let txn = db.begin_read()?;
    let log = txn.open_table(LOG)?;
    let mut entries = Vec::new();
    for item in log.range::<u64>(bounds)? {
        let (index, value) = item?;
        let entry: Entry<TypeConfig> = decode("log entry", value.value())?;
        if entry.get_log_id().index != index.value() {
            return Err(Fault::Invalid(format!(
                "log entry stored at index {} claims index {}",
                index.value(),
                entry.get_log_id().index
            )));
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn read_meta<T: serde::de::DeserializeOwned>(
    txn: &redb::ReadTransaction,
    key: &'static str,
) -> Result<Option<T>, Fault> {
    match txn.open_table(META)?.get(key)? {
        Some(value) => Ok(Some(decode(key, value.value())?)),
        None => Ok(None),
    }
}

/// Sets `key` to `bytes`, or removes it for `None`, in one transaction.
fn write_meta(db: &Database, key: &str, bytes: Option<&[u8]>, durability: Durability) -> Result<(), Fault> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability);
    {
        let mut meta = txn.open_table(META)?;
        match bytes {
            Some(bytes) => meta.insert(key, bytes)?,
            None => meta.remove(key)?,
        };
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::raft::store::open_store;

    fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload: EntryPayload::Blank }
    }

    #[tokio::test]
    async fn garbled_log_entry_is_a_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = open_store(&dir.path().join("raft.redb")).unwrap();
        let encoded: Vec<_> = [blank(1, 1), blank(1, 2)].iter().map(|e| encode("e", e).unwrap()).collect();
        {
            let txn = log.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(LOG).unwrap();
                t.insert(1, encoded[0].as_slice()).unwrap();
                t.insert(2, encoded[1].as_slice()).unwrap();
                t.insert(3, [0xff_u8, 0xff, 0xff].as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        assert_eq!(log.try_get_log_entries(1..3).await.unwrap().len(), 2);
        let err = log.try_get_log_entries(1..4).await.unwrap_err();
        assert!(err.to_string().contains("log entry cannot be decoded"), "{err}");
        assert!(log.get_log_state().await.is_err(), "the last entry is the garbled one");
    }

    #[tokio::test]
    async fn entry_under_the_wrong_index_is_a_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = open_store(&dir.path().join("raft.redb")).unwrap();
        {
            let txn = log.db.begin_write().unwrap();
            txn.open_table(LOG).unwrap().insert(7, encode("e", &blank(1, 8)).unwrap().as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let err = log.try_get_log_entries(..).await.unwrap_err();
        assert!(err.to_string().contains("claims index 8"), "{err}");
    }

    #[tokio::test]
    async fn vote_committed_and_log_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let (mut log, _sm) = open_store(&path).unwrap();
            log.save_vote(&Vote::new(3, 2)).await.unwrap();
            log.save_committed(Some(LogId::new(CommittedLeaderId::new(3, 2), 9))).await.unwrap();
            let txn = log.db.begin_write().unwrap();
            txn.open_table(LOG).unwrap().insert(9, encode("e", &blank(3, 9)).unwrap().as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let (mut log, _sm) = open_store(&path).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        assert_eq!(log.read_committed().await.unwrap().map(|c| c.index), Some(9));
        assert_eq!(log.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(9));
        log.save_committed(None).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), None);
    }
}
