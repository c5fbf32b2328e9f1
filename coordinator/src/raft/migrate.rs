//! Opening a store of an earlier format.
//!
//! - `gantry-raft-store/2` (7a019f8 and before) kept the whole state machine
//!   as one record, `state_machine/machine`; format 3 keeps a table per
//!   entity ([`super::machine_tables`]). [`from_v2`] imports that record
//!   into the tables and removes it. Log entries and snapshots are encoded
//!   as in format 2, so nothing else is rewritten.
//! - `gantry-raft-store/1` (postcard, positional; written by c6cdaa7 and
//!   before) became format 2 (the named [`gantry_common::schema`]
//!   encoding) by [`from_v1`], and then goes on through [`from_v2`].
//!
//! Every record is decoded with the frozen v1 definitions below (and those
//! of [`gantry_common::schema::v1`]), converted to today's types and written
//! back, inside the write transaction that opens the file: a crash during the
//! migration leaves the old file as it was. openraft's own types (vote, log
//! ids, membership, snapshot meta) did not change; only their encoding does.
//!
//! The definitions here are frozen: never edit them (postcard reads by
//! position). `coordinator/tests/fixtures/store-v1-c6cdaa7.redb.gz`, a store
//! written by that commit's daemons, checks that they still read it.

use std::collections::BTreeMap;

use gantry_common::schema::v1;
use openraft::{BasicNode, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote};
use redb::{ReadableTable, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::machine_tables;
use super::redb_io::{decode, encode, Fault, LOG, MACHINE, META};
use super::state_machine::Applied;
use super::{NodeId, TypeConfig};
use crate::state::{Command, NodeRecord, Plan, State, WorkloadRecord};

/// What a migration rewrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    pub entries: u64,
    pub snapshot: bool,
}

/// Rewrites every record of a format-1 store in `txn` (the caller stamps the
/// new format in the same transaction).
pub(crate) fn from_v1(txn: &WriteTransaction) -> Result<Migrated, Fault> {
    let mut done = Migrated::default();
    {
        let mut meta = txn.open_table(META)?;
        for key in ["vote", "committed", "last_purged"] {
            let old = meta.get(key)?.map(|v| v.value().to_vec());
            let Some(old) = old else { continue };
            let bytes = match key {
                "vote" => encode("vote", &old_decode::<Vote<NodeId>>("vote", &old)?)?,
                _ => encode("log id", &old_decode::<LogId<NodeId>>("log id", &old)?)?,
            };
            meta.insert(key, bytes.as_slice())?;
        }
    }
    {
        let mut log = txn.open_table(LOG)?;
        let old: Vec<(u64, Vec<u8>)> = log
            .iter()?
            .map(|item| item.map(|(k, v)| (k.value(), v.value().to_vec())))
            .collect::<Result<_, _>>()?;
        for (index, bytes) in old {
            let entry: EntryV1 = old_decode("log entry", &bytes)?;
            let entry = entry.into_current();
            log.insert(index, encode("log entry", &entry)?.as_slice())?;
            done.entries += 1;
        }
    }
    {
        let mut machine = txn.open_table(MACHINE)?;
        let old = |key: &str| -> Result<Option<Vec<u8>>, Fault> {
            Ok(machine.get(key)?.map(|v| v.value().to_vec()))
        };
        let (m, meta, data) = (old("machine")?, old("snapshot_meta")?, old("snapshot_data")?);
        if let Some(bytes) = m {
            let applied = old_decode::<AppliedV1>("state machine", &bytes)?.into_current();
            machine.insert("machine", encode("state machine", &applied)?.as_slice())?;
        }
        if let Some(bytes) = meta {
            let meta: SnapshotMeta<NodeId, BasicNode> = old_decode("snapshot meta", &bytes)?;
            machine.insert("snapshot_meta", encode("snapshot meta", &meta)?.as_slice())?;
        }
        if let Some(bytes) = data {
            let applied = old_decode::<AppliedV1>("snapshot data", &bytes)?.into_current();
            machine.insert("snapshot_data", encode("snapshot data", &applied)?.as_slice())?;
            done.snapshot = true;
        }
    }
    Ok(done)
}

/// Moves a format-2 state machine record into the format-3 tables, in
/// `txn` (the caller stamps the new format in the same transaction).
/// Returns whether there was one.
pub(crate) fn from_v2(txn: &WriteTransaction) -> Result<bool, Fault> {
    let old = txn.open_table(MACHINE)?.get(V2_MACHINE_KEY)?.map(|v| v.value().to_vec());
    let Some(bytes) = old else { return Ok(false) };
    let applied: Applied = decode("state machine (format 2)", &bytes)?;
    machine_tables::import(txn, &applied)?;
    txn.open_table(MACHINE)?.remove(V2_MACHINE_KEY)?;
    Ok(true)
}

/// Where format 2 kept the whole state machine.
const V2_MACHINE_KEY: &str = "machine";

fn old_decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Fault> {
    postcard::from_bytes(bytes).map_err(|source| Fault::DecodeV1 { what, source })
}

// ---- frozen v1 shapes (c6cdaa7) ----

#[derive(Deserialize)]
struct EntryV1 {
    log_id: LogId<NodeId>,
    payload: PayloadV1,
}

#[derive(Deserialize)]
enum PayloadV1 {
    Blank,
    Normal(Box<CommandV1>),
    Membership(Membership<NodeId, BasicNode>),
}

#[derive(Deserialize)]
struct AppliedV1 {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    state: StateV1,
}

#[derive(Deserialize)]
struct StateV1 {
    nodes: BTreeMap<String, NodeRecordV1>,
    workloads: BTreeMap<String, WorkloadRecordV1>,
    allocs: BTreeMap<String, v1::Allocation>,
    next_alloc: u64,
    revision: u64,
}

#[derive(Deserialize)]
struct NodeRecordV1 {
    info: v1::NodeInfo,
    status: v1::NodeStatus,
    operator_labels: BTreeMap<String, String>,
    registrations: u64,
    drained: bool,
    alloc_revision: u64,
}

#[derive(Deserialize)]
struct WorkloadRecordV1 {
    spec: v1::WorkloadSpec,
    version: u64,
    stopping: bool,
    pending_reason: Option<String>,
}

#[derive(Deserialize)]
enum CommandV1 {
    RegisterNode { info: v1::NodeInfo },
    SetNodeStatus { node: String, status: v1::NodeStatus },
    SetNodeLabels { node: String, set: BTreeMap<String, String>, remove: Vec<String> },
    SubmitWorkload { spec: v1::WorkloadSpec },
    StopWorkload { name: String },
    DrainNode { node: String, drain: bool },
    ApplyPlan(PlanV1),
    ReportAllocs { node: String, reports: Vec<v1::AllocReport> },
}

#[derive(Deserialize)]
struct PlanV1 {
    place: Vec<v1::NewAlloc>,
    stop: Vec<(String, String)>,
    bump: Vec<(String, u64)>,
    pending: Vec<(String, Option<String>)>,
}

// ---- conversions ----

impl EntryV1 {
    fn into_current(self) -> Entry<TypeConfig> {
        let payload = match self.payload {
            PayloadV1::Blank => EntryPayload::Blank,
            PayloadV1::Normal(c) => EntryPayload::Normal((*c).into_current()),
            PayloadV1::Membership(m) => EntryPayload::Membership(m),
        };
        Entry { log_id: self.log_id, payload }
    }
}

impl AppliedV1 {
    fn into_current(self) -> Applied {
        Applied {
            last_applied: self.last_applied,
            last_membership: self.last_membership,
            state: self.state.into_current(),
        }
    }
}

impl StateV1 {
    fn into_current(self) -> State {
        State {
            nodes: self.nodes.into_iter().map(|(k, n)| (k, n.into_current())).collect(),
            workloads: self.workloads.into_iter().map(|(k, w)| (k, w.into_current())).collect(),
            allocs: self.allocs.into_iter().map(|(k, a)| (k, a.into())).collect(),
            next_alloc: self.next_alloc,
            revision: self.revision,
            ..State::default()
        }
    }
}

impl NodeRecordV1 {
    fn into_current(self) -> NodeRecord {
        NodeRecord {
            info: self.info.into(),
            status: self.status.into(),
            operator_labels: self.operator_labels,
            registrations: self.registrations,
            drained: self.drained,
            alloc_revision: self.alloc_revision,
        }
    }
}

impl WorkloadRecordV1 {
    fn into_current(self) -> WorkloadRecord {
        WorkloadRecord {
            spec: self.spec.into(),
            version: self.version,
            stopping: self.stopping,
            pending_reason: self.pending_reason,
        }
    }
}

impl CommandV1 {
    fn into_current(self) -> Command {
        match self {
            CommandV1::RegisterNode { info } => Command::RegisterNode { info: info.into() },
            CommandV1::SetNodeStatus { node, status } => {
                Command::SetNodeStatus { node, status: status.into() }
            }
            CommandV1::SetNodeLabels { node, set, remove } => Command::SetNodeLabels { node, set, remove },
            CommandV1::SubmitWorkload { spec } => Command::SubmitWorkload { spec: spec.into() },
            CommandV1::StopWorkload { name } => Command::StopWorkload { name },
            CommandV1::DrainNode { node, drain } => Command::DrainNode { node, drain },
            CommandV1::ApplyPlan(p) => Command::ApplyPlan(Plan {
                place: p.place.into_iter().map(Into::into).collect(),
                stop: p.stop,
                bump: p.bump,
                pending: p.pending,
            }),
            CommandV1::ReportAllocs { node, reports } => {
                Command::ReportAllocs { node, reports: reports.into_iter().map(Into::into).collect() }
            }
        }
    }
}
