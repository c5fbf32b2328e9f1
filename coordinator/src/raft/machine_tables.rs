//! The state machine's records in redb: one table per entity, written by
//! delta, read whole at start.
//!
//! | table           | key            | value                                          |
//! |-----------------|----------------|------------------------------------------------|
//! | `state_machine` | `applied`      | [`MachineMeta`]: last applied, membership, counters |
//! | `sm_nodes`      | node name      | `NodeRecord`                                   |
//! | `sm_workloads`  | workload name  | `WorkloadRecord`                               |
//! | `sm_allocs`     | allocation id  | `Allocation`                                   |
//! | `sm_write_keys` | idempotency key| `KeyedWrite`                                   |
//!
//! An applied batch writes the records it changed ([`Delta`], from
//! [`crate::state::State::take_changes`]) and the meta row in one
//! transaction, so the tables and their applied index always agree. The
//! indexes (allocations by node, keys by age) are derived when the records
//! are loaded, so they can never disagree with them.
//!
//! A snapshot is an export of these records (the [`Applied`] encoding,
//! unchanged since format 2, so any version reads any other's snapshots)
//! and installs by import: the tables are emptied and rewritten.

use std::collections::BTreeSet;

use openraft::{BasicNode, LogId, StoredMembership};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::redb_io::{decode, encode, Fault, MACHINE};
use super::state_machine::Applied;
use super::NodeId;
use crate::state::State;

pub(crate) const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_nodes");
pub(crate) const WORKLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_workloads");
pub(crate) const ALLOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_allocs");
pub(crate) const WRITE_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_write_keys");

/// Key of the meta row in `state_machine`.
pub(crate) const APPLIED_KEY: &str = "applied";

/// Everything of the state machine that is not a record (a stored format:
/// see `tests/golden.rs`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineMeta {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, BasicNode>,
    pub next_alloc: u64,
    pub revision: u64,
    pub next_write_key: u64,
}

impl MachineMeta {
    fn of(applied: &Applied) -> MachineMeta {
        MachineMeta {
            last_applied: applied.last_applied,
            last_membership: applied.last_membership.clone(),
            next_alloc: applied.state.next_alloc,
            revision: applied.state.revision,
            next_write_key: applied.state.next_write_key,
        }
    }
}

/// One table's changed rows: the new encoding, or `None` to delete.
type Rows = Vec<(String, Option<Vec<u8>>)>;

/// What a batch (or several) changed, encoded and ready to write.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    meta: Vec<u8>,
    nodes: Rows,
    workloads: Rows,
    allocs: Rows,
    write_keys: Rows,
}

impl Delta {
    /// Takes what `applied` changed since the last delta and encodes it
    /// (O(changed records)). Call under the state's write lock, and write
    /// the deltas in the order they were taken.
    pub(crate) fn take(applied: &mut Applied) -> Result<Delta, Fault> {
        let changes = applied.state.take_changes();
        let state = &applied.state;
        Ok(Delta {
            meta: encode("state machine", &MachineMeta::of(applied))?,
            nodes: rows("node record", changes.nodes, &state.nodes)?,
            workloads: rows("workload record", changes.workloads, &state.workloads)?,
            allocs: rows("allocation", changes.allocs, &state.allocs)?,
            write_keys: rows("write key", changes.write_keys, &state.write_keys)?,
        })
    }

    /// How many records it writes or deletes.
    pub(crate) fn records(&self) -> usize {
        self.nodes.len() + self.workloads.len() + self.allocs.len() + self.write_keys.len()
    }

    pub(crate) fn write(&self, txn: &WriteTransaction) -> Result<(), Fault> {
        txn.open_table(MACHINE)?.insert(APPLIED_KEY, self.meta.as_slice())?;
        for (table, rows) in [
            (NODES, &self.nodes),
            (WORKLOADS, &self.workloads),
            (ALLOCS, &self.allocs),
            (WRITE_KEYS, &self.write_keys),
        ] {
            let mut table = txn.open_table(table)?;
            for (key, value) in rows {
                match value {
                    Some(bytes) => table.insert(key.as_str(), bytes.as_slice())?,
                    None => table.remove(key.as_str())?,
                };
            }
        }
        Ok(())
    }
}

fn rows<V: Serialize>(
    what: &'static str,
    keys: BTreeSet<String>,
    records: &crate::state::Records<String, V>,
) -> Result<Rows, Fault> {
    keys.into_iter()
        .map(|key| {
            let value = records.get(&key).map(|v| encode(what, v)).transpose()?;
            Ok((key, value))
        })
        .collect()
}

/// Creates the tables, so read transactions never meet a missing one.
pub(crate) fn create(txn: &WriteTransaction) -> Result<(), Fault> {
    for table in [NODES, WORKLOADS, ALLOCS, WRITE_KEYS] {
        txn.open_table(table)?;
    }
    Ok(())
}

/// Replaces every record with `applied`'s (installing a snapshot, migrating).
pub(crate) fn import(txn: &WriteTransaction, applied: &Applied) -> Result<(), Fault> {
    for table in [NODES, WORKLOADS, ALLOCS, WRITE_KEYS] {
        txn.delete_table(table)?;
    }
    create(txn)?;
    let state = &applied.state;
    txn.open_table(MACHINE)?
        .insert(APPLIED_KEY, encode("state machine", &MachineMeta::of(applied))?.as_slice())?;
    write_all(txn, NODES, "node record", &state.nodes)?;
    write_all(txn, WORKLOADS, "workload record", &state.workloads)?;
    write_all(txn, ALLOCS, "allocation", &state.allocs)?;
    write_all(txn, WRITE_KEYS, "write key", &state.write_keys)?;
    Ok(())
}

fn write_all<V: Serialize>(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    what: &'static str,
    records: &crate::state::Records<String, V>,
) -> Result<(), Fault> {
    let mut table = txn.open_table(table)?;
    for (key, value) in records {
        table.insert(key.as_str(), encode(what, value)?.as_slice())?;
    }
    Ok(())
}

/// Reads the whole state machine (`None`: nothing was ever written).
pub(crate) fn load<T: ReadTables>(txn: &T) -> Result<Option<Applied>, Fault> {
    let machine = txn.machine()?;
    let row = machine.get(APPLIED_KEY)?;
    let Some(row) = row else { return Ok(None) };
    let meta: MachineMeta = decode("state machine", row.value())?;
    let mut state = State {
        nodes: read_all(txn, NODES, "node record")?.into_iter().collect(),
        workloads: read_all(txn, WORKLOADS, "workload record")?.into_iter().collect(),
        allocs: read_all(txn, ALLOCS, "allocation")?.into_iter().collect(),
        write_keys: read_all(txn, WRITE_KEYS, "write key")?.into_iter().collect(),
        next_alloc: meta.next_alloc,
        revision: meta.revision,
        next_write_key: meta.next_write_key,
        ..State::default()
    };
    state.rebuild_write_key_order();
    Ok(Some(Applied { last_applied: meta.last_applied, last_membership: meta.last_membership, state }))
}

fn read_all<T: ReadTables, V: DeserializeOwned>(
    txn: &T,
    table: TableDefinition<&str, &[u8]>,
    what: &'static str,
) -> Result<Vec<(String, V)>, Fault> {
    let table = txn.table(table)?;
    let mut out = Vec::with_capacity(usize::try_from(table.len()?).unwrap_or(0));
    for row in table.iter()? {
        let (key, value) = row?;
        out.push((key.value().to_string(), decode(what, value.value())?));
    }
    Ok(out)
}

/// Reading the tables from a read or a write transaction alike.
pub(crate) trait ReadTables {
    type Table<'a>: ReadableTable<&'static str, &'static [u8]> + ReadableTableMetadata
    where
        Self: 'a;
    fn table(&self, def: TableDefinition<&str, &[u8]>) -> Result<Self::Table<'_>, Fault>;
    fn machine(&self) -> Result<Self::Table<'_>, Fault> {
        self.table(MACHINE)
    }
}

impl ReadTables for redb::ReadTransaction {
    type Table<'a> = redb::ReadOnlyTable<&'static str, &'static [u8]>;
    fn table(&self, def: TableDefinition<&str, &[u8]>) -> Result<Self::Table<'_>, Fault> {
        Ok(self.open_table(def)?)
    }
}

impl ReadTables for WriteTransaction {
    type Table<'a> = redb::Table<'a, &'static str, &'static [u8]>;
    fn table(&self, def: TableDefinition<&str, &[u8]>) -> Result<Self::Table<'_>, Fault> {
        Ok(self.open_table(def)?)
    }
}
