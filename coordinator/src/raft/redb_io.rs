//! What the log store, the state machine and the migration share of the
//! one redb file: its tables, the fault type of a storage call, the
//! schema encoding of values, and running redb work off the async workers.
//! (Opening the file and checking its format is [`super::store`].)

use gantry_common::schema::{self, SchemaError};
use openraft::{AnyError, StorageError, StorageIOError};
use redb::TableDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::NodeId;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const MACHINE: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");

pub(crate) type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// A failure inside one storage operation, before it is told which Raft
/// operation it broke (see [`Fault::io`]). redb's errors are boxed: they are
/// large and every storage call returns this.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fault {
    #[error("redb: {0}")]
    Db(Box<redb::Error>),
    #[error("{what} cannot be decoded: {source}")]
    Decode { what: &'static str, source: SchemaError },
    #[error("{what} (format 1) cannot be decoded: {source}")]
    DecodeV1 { what: &'static str, source: postcard::Error },
    #[error("{what} cannot be encoded: {source}")]
    Encode { what: &'static str, source: SchemaError },
    #[error("{0}")]
    Invalid(String),
    #[error("found format {0:?}")]
    Format(String),
}

impl Fault {
    /// Wraps the fault in openraft's error for the operation at hand, e.g.
    /// `fault.io(StorageIOError::read_logs)`.
    pub(crate) fn io(self, make: impl FnOnce(AnyError) -> StorageIOError<NodeId>) -> StorageError<NodeId> {
        make(AnyError::new(&self)).into()
    }
}

macro_rules! fault_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Fault {
            fn from(e: $t) -> Self {
                Fault::Db(Box::new(e.into()))
            }
        }
    )*};
}
fault_from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub(crate) fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, Fault> {
    schema::encode(value).map_err(|source| Fault::Encode { what, source })
}

pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Fault> {
    schema::decode(bytes).map_err(|source| Fault::Decode { what, source })
}

/// Runs blocking redb work on tokio's blocking pool. `on_error` names the
/// Raft operation for openraft's error, both for a fault and for a task that
/// panicked or was cancelled.
pub(crate) async fn blocking<T, F>(
    on_error: fn(AnyError) -> StorageIOError<NodeId>,
    work: F,
) -> StorageResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Fault> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(fault)) => Err(fault.io(on_error)),
        Err(join) => Err(on_error(AnyError::new(&join)).into()),
    }
}
