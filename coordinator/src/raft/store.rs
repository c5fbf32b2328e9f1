//! The coordinator's one redb file: Raft log, vote and state machine side by side.
//!
//! # Layout
//!
//! | table           | key             | value                                              |
//! |-----------------|-----------------|----------------------------------------------------|
//! | `raft_meta`     | `format`        | [`FORMAT`], checked on open                        |
//! |                 | `vote`          | `Vote`                                             |
//! |                 | `committed`     | `LogId` (absent: none)                             |
//! |                 | `last_purged`   | `LogId` (absent: none)                             |
//! | `raft_log`      | log index (u64) | `Entry<TypeConfig>`                                |
//! | `state_machine` | `applied`       | last applied, last membership, counters            |
//! |                 | `snapshot_meta` | `SnapshotMeta` of the current snapshot             |
//! |                 | `snapshot_data` | the snapshot's bytes: (last applied, membership, `State`) |
//! | `sm_nodes`, `sm_workloads`, `sm_allocs`, `sm_write_keys` | name or id | one record each ([`super::machine_tables`]) |
//!
//! Values are in the [`gantry_common::schema`] encoding (named fields and
//! variants). A file of an earlier format (`gantry-raft-store/2`: the whole
//! state as one record; `/1`: postcard) is migrated when it is opened
//! ([`super::migrate`]), in one transaction, so a crash leaves the old file.
//!
//! A redb write transaction is durable when `commit` returns (the default
//! `Durability::Immediate` fsyncs), so every trait method that must persist
//! before returning commits one transaction. redb calls block, so they run on
//! tokio's blocking pool (`redb_io::blocking`), never on a runtime worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gantry_common::schema::SchemaError;
use redb::{Database, ReadableTable};

use super::log_store::LogStore;
use super::redb_io::{Fault, LOG, MACHINE, META};
use super::state_machine::StateMachineStore;

/// What `raft_meta/format` must hold; bump it (with a migration) when an
/// encoding changes incompatibly.
pub const FORMAT: &str = "gantry-raft-store/3";
/// The whole-state format of 7a019f8 and before, migrated on open.
pub const FORMAT_V2: &str = "gantry-raft-store/2";
/// The postcard format of c6cdaa7 and before, migrated on open.
pub const FORMAT_V1: &str = "gantry-raft-store/1";

/// Why the store file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open raft store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    #[error("raft store {}: {source}", path.display())]
    Database {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("raft store {}: {what} cannot be decoded (corrupt file?): {source}", path.display())]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("raft store {}: {what} cannot be encoded: {source}", path.display())]
    Encode {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: SchemaError,
    },
    #[error("raft store {}: file format is {found:?}, this build reads {FORMAT:?}", path.display())]
    Format { path: PathBuf, found: String },
    #[error("raft store {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// Opens (or creates) the store file at `path` and builds the log store and
/// the state machine on the one database.
///
/// The state machine comes back with the state it had persisted, so openraft
/// only re-applies the entries after its last applied log id.
pub fn open_store(path: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    open_store_with_cache(path, DEFAULT_CACHE_BYTES)
}

/// The page cache a store gets unless configured (`raft.store_cache_mib`).
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// [`open_store`] with a page cache of at most `cache_bytes`.
pub fn open_store_with_cache(
    path: &Path,
    cache_bytes: usize,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|source| StoreError::Open { path: path.to_path_buf(), source: Box::new(source) })?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            StoreError::Invalid {
                path: path.to_path_buf(),
                reason: format!("cannot make it private (mode 0600): {e}"),
            }
        })?;
    }
    let db = Arc::new(db);
    init_tables(&db).map_err(|fault| store_error(fault, path))?;
    let log = LogStore::new(Arc::clone(&db));
    let sm = StateMachineStore::open(db).map_err(|fault| store_error(fault, path))?;
    Ok((log, sm))
}

/// A fault met while opening, as the error `open_store` returns.
fn store_error(fault: Fault, path: &Path) -> StoreError {
    let path = path.to_path_buf();
    match fault {
        Fault::Db(source) => StoreError::Database { path, source },
        Fault::Decode { what, source } => StoreError::Corrupt { path, what, source: Box::new(source) },
        Fault::DecodeV1 { what, source } => StoreError::Corrupt { path, what, source: Box::new(source) },
        Fault::Encode { what, source } => StoreError::Encode { path, what, source },
        Fault::Invalid(reason) => StoreError::Invalid { path, reason },
        Fault::Format(found) => StoreError::Format { path, found },
    }
}

/// Creates every table (so read transactions never meet a missing one) and
/// checks or stamps the format.
fn init_tables(db: &Database) -> Result<(), Fault> {
    let txn = db.begin_write()?;
    {
        let meta = txn.open_table(META)?;
        let found = meta.get("format")?.map(|v| String::from_utf8_lossy(v.value()).into_owned());
        drop(meta);
        txn.open_table(LOG)?;
        txn.open_table(MACHINE)?;
        super::machine_tables::create(&txn)?;
        match found.as_deref() {
            Some(FORMAT) => {}
            Some(FORMAT_V2) => {
                let state = super::migrate::from_v2(&txn)?;
                tracing::info!(state, "raft store migrated from {FORMAT_V2} to {FORMAT}");
                txn.open_table(META)?.insert("format", FORMAT.as_bytes())?;
            }
            Some(FORMAT_V1) => {
                let counts = super::migrate::from_v1(&txn)?;
                let state = super::migrate::from_v2(&txn)?;
                tracing::info!(
                    entries = counts.entries,
                    snapshot = counts.snapshot,
                    state,
                    "raft store migrated from {FORMAT_V1} to {FORMAT}"
                );
                txn.open_table(META)?.insert("format", FORMAT.as_bytes())?;
            }
            Some(other) => return Err(Fault::Format(other.to_string())),
            None => {
                txn.open_table(META)?.insert("format", FORMAT.as_bytes())?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn other_format_is_refused_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("format", b"other/9".as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let err = open_store(&path).err().unwrap();
        assert!(matches!(err, StoreError::Format { .. }), "{err}");
        assert!(err.to_string().contains("raft.redb") && err.to_string().contains("other/9"), "{err}");
    }

    #[test]
    fn reopen_keeps_the_format_and_a_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let first = open_store(&path).unwrap();
        let err = open_store(&path).err().unwrap();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        assert!(err.to_string().contains("raft.redb"), "{err}");
        drop(first);
        open_store(&path).unwrap();
    }

    #[test]
    fn missing_directory_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("raft.redb");
        let err = open_store(&path).err().unwrap();
        assert!(err.to_string().contains("absent/raft.redb"), "{err}");
    }
}
