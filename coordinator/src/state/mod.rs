//! The replicated cluster state and the one door into it.
//!
//! ```text
//!   Command ──► apply(&mut State, &Command) ──► CommandResponse
//! ```
//!
//! `apply` is a plain function: no I/O, no clock, no randomness, so every
//! replica that applies the same log reaches the same state. A command that
//! is refused returns [`CommandResponse::Rejected`] and changes nothing.

mod apply;
mod apply_workloads;
pub mod capacity;
#[cfg(test)]
mod delta_tests;
#[cfg(test)]
pub(crate) mod random_stream;
mod records;

use std::collections::{BTreeMap, BTreeSet};

use gantry_common::model::{NodeInfo, NodeStatus};
pub use gantry_common::workload::NewAlloc;
use gantry_common::workload::{AllocReport, Allocation, WorkloadSpec};
use serde::{Deserialize, Serialize};

pub use apply::apply;

/// Most encoded bytes of the specs of one batch (one Raft entry): one
/// AppendEntries' worth ([`crate::raft::network::APPEND_BUDGET`]), so a
/// batch replicates within openraft's 100 ms per call. `gantryctl` cuts
/// larger batches into several.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
pub use records::{AllocTable, Records};

/// Everything the coordinators agree on through Raft.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub nodes: Records<String, NodeRecord>,
    pub workloads: Records<String, WorkloadRecord>,
    /// Every allocation by id, including stopped ones kept for history.
    pub allocs: AllocTable,
    /// Sequence of the next allocation id.
    pub next_alloc: u64,
    /// Bumped by every applied command that changes something; nodes record
    /// it when their desired allocations change (the agents' stream index).
    pub revision: u64,
    /// Operator writes applied with an idempotency key, and what they
    /// answered: a retry of the same key gets the same answer and changes
    /// nothing. The newest [`MAX_WRITE_KEYS`] are kept.
    #[serde(default)]
    pub write_keys: Records<String, KeyedWrite>,
    /// The same keys by the order they were applied in (for forgetting the
    /// oldest); derived from `write_keys`' `seq`, so never stored on its own.
    #[serde(default)]
    pub write_key_order: imbl::OrdMap<u64, String>,
    /// Sequence of the next keyed write.
    #[serde(default)]
    pub next_write_key: u64,
}

/// Most idempotency keys remembered. A client retries within seconds; at
/// thousands of writes a second this still covers well over a second of
/// writes, and bounds the state.
pub const MAX_WRITE_KEYS: usize = 10_000;

/// A keyed write once applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyedWrite {
    pub seq: u64,
    /// What it answered the first time.
    pub response: CommandResponse,
    /// FNV-1a of the write's encoding: the same key with another request
    /// is refused, not answered as if it had been done.
    #[serde(default)]
    pub fingerprint: u64,
}

/// The records an applied command (or batch) changed, per table: each key
/// is to be written with its current value, or deleted where it has none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub nodes: BTreeSet<String>,
    pub workloads: BTreeSet<String>,
    pub allocs: BTreeSet<String>,
    pub write_keys: BTreeSet<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.workloads.is_empty()
            && self.allocs.is_empty()
            && self.write_keys.is_empty()
    }

    /// How many records changed.
    pub fn len(&self) -> usize {
        self.nodes.len() + self.workloads.len() + self.allocs.len() + self.write_keys.len()
    }
}

/// Where each table's change log stood (see [`State::forget_changes_since`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChangeMark([usize; 4]);

impl State {
    /// Allocations placed on `node` (an index, not a scan).
    pub fn allocs_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Allocation> + 'a {
        self.allocs.on_node(node)
    }

    /// The state as it is now, sharing every record with it (O(1)), and
    /// without the changes noted for the state machine: a reader's snapshot.
    pub fn frozen(&self) -> State {
        State {
            nodes: self.nodes.frozen(),
            workloads: self.workloads.frozen(),
            allocs: self.allocs.frozen(),
            next_alloc: self.next_alloc,
            revision: self.revision,
            write_keys: self.write_keys.frozen(),
            write_key_order: self.write_key_order.clone(),
            next_write_key: self.next_write_key,
        }
    }

    /// The records changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        Changes {
            nodes: self.nodes.take_changed(),
            workloads: self.workloads.take_changed(),
            allocs: self.allocs.take_changed(),
            write_keys: self.write_keys.take_changed(),
        }
    }

    pub(crate) fn change_mark(&self) -> ChangeMark {
        ChangeMark([
            self.nodes.change_mark(),
            self.workloads.change_mark(),
            self.allocs.change_mark(),
            self.write_keys.change_mark(),
        ])
    }

    /// Drops what was noted as changed after `mark`: the command since
    /// changed nothing (`apply` leaves a refused or repeated command's state
    /// exactly as it was), so nothing is to be written for it.
    pub(crate) fn forget_changes_since(&mut self, mark: ChangeMark) {
        let [n, w, a, k] = mark.0;
        self.nodes.forget_changes_since(n);
        self.workloads.forget_changes_since(w);
        self.allocs.forget_changes_since(a);
        self.write_keys.forget_changes_since(k);
    }

    /// Rebuilds `write_key_order` from the keys' sequence numbers (after
    /// loading the records from the tables).
    pub(crate) fn rebuild_write_key_order(&mut self) {
        self.write_key_order = self.write_keys.iter().map(|(key, w)| (w.seq, key.clone())).collect();
    }

    /// Allocations of `workload`. Ids start with `<workload>.`, so this is a
    /// range of the map, not a scan (the filter drops a workload whose name
    /// merely extends this one's, like `a.b` for `a`).
    pub fn allocs_of<'a>(&'a self, workload: &'a str) -> impl Iterator<Item = &'a Allocation> + 'a {
        let prefix = format!("{workload}.");
        self.allocs
            .range(prefix.clone()..)
            .take_while(move |(id, _)| id.starts_with(&prefix))
            .map(|(_, a)| a)
            .filter(move |a| a.workload == workload)
    }
}

/// A workload as replicated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    pub spec: WorkloadSpec,
    /// Bumped by every accepted change of the spec.
    pub version: u64,
    /// `gantryctl stop` was asked: every replica stops, then the record goes.
    pub stopping: bool,
    /// Why replicas could not be placed at the last evaluation; `None` when all are placed.
    pub pending_reason: Option<String>,
}

/// A registered node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// What the agent reported at its last registration.
    pub info: NodeInfo,
    pub status: NodeStatus,
    /// Labels set by operators; they win over the agent's labels of the same key.
    pub operator_labels: BTreeMap<String, String>,
    /// How many times the node has (re-)registered.
    pub registrations: u64,
    /// Drained by an operator: ineligible, its allocations move elsewhere.
    pub drained: bool,
    /// [`State::revision`] when the node's desired allocations last changed.
    pub alloc_revision: u64,
}

impl NodeRecord {
    /// The node's effective labels: the agent's, overlaid with the operator's.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.info.labels.clone();
        labels.extend(self.operator_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        labels
    }
}

/// A change to [`State`]: the payload of every Raft log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// An agent registered (or re-registered) its node; the node becomes ready.
    RegisterNode { info: NodeInfo },
    /// The leader's liveness tracker decided a node is down or ready again.
    SetNodeStatus { node: String, status: NodeStatus },
    /// An operator changed labels.
    SetNodeLabels { node: String, set: BTreeMap<String, String>, remove: Vec<String> },
    /// Creates or updates a workload.
    SubmitWorkload { spec: WorkloadSpec },
    /// Creates or updates several workloads, all or none (protocol 3: the
    /// leader proposes it only when every coordinator can read it).
    SubmitWorkloads { specs: Vec<WorkloadSpec> },
    /// Stops every replica of a workload; the record goes once they stopped.
    StopWorkload { name: String },
    /// Drains a node (or undrains it).
    DrainNode { node: String, drain: bool },
    /// The scheduler's decisions, re-checked one by one as they apply.
    ApplyPlan(Plan),
    /// What a node's agent observed of its allocations.
    ReportAllocs { node: String, reports: Vec<AllocReport> },
    /// An operator write with the client's idempotency key: applied once;
    /// the same key again answers [`CommandResponse::Repeat`] with the
    /// first answer and changes nothing.
    Keyed { key: String, command: Box<Command> },
    /// Writes that reached the leader together, applied one after another
    /// as if each were its own entry: each has its own answer, and one that
    /// is refused leaves the others applied (protocol 5: the leader groups
    /// only when every coordinator can read it; see `service::proposer`).
    /// A group holds no group.
    Group { commands: Vec<Command> },
}

/// One evaluation round's decisions for any number of workloads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub place: Vec<NewAlloc>,
    /// Allocations to stop, with the reason.
    pub stop: Vec<(String, String)>,
    /// Allocations to bring to a newer, compatible version (only the replica count changed).
    pub bump: Vec<(String, u64)>,
    /// Per workload, the reason replicas stay pending (`None`: nothing pending).
    pub pending: Vec<(String, Option<String>)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.place.is_empty() && self.stop.is_empty() && self.bump.is_empty() && self.pending.is_empty()
    }
}

/// Why `apply` refused a command; the admin API maps each to one HTTP status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectKind {
    /// The command is malformed or breaks a rule (also every refusal
    /// stored before kinds existed).
    #[default]
    Invalid,
    /// It names a node or workload that does not exist.
    NotFound,
    /// It conflicts with an earlier write (an idempotency key reused for
    /// another request).
    Conflict,
}

impl RejectKind {
    pub fn is_invalid(&self) -> bool {
        *self == RejectKind::Invalid
    }
}

impl CommandResponse {
    /// A refusal: the command breaks a rule.
    pub fn invalid(reason: impl Into<String>) -> CommandResponse {
        CommandResponse::Rejected { reason: reason.into(), kind: RejectKind::Invalid }
    }

    /// A refusal: what the command names does not exist.
    pub fn not_found(reason: impl Into<String>) -> CommandResponse {
        CommandResponse::Rejected { reason: reason.into(), kind: RejectKind::NotFound }
    }

    /// A refusal: the command conflicts with an earlier write.
    pub fn conflict(reason: impl Into<String>) -> CommandResponse {
        CommandResponse::Rejected { reason: reason.into(), kind: RejectKind::Conflict }
    }
}

/// What applying a [`Command`] produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Applied; nothing else to say.
    #[default]
    Applied,
    /// Applied and nothing changed (an idempotent repeat).
    Unchanged,
    /// Refused; the state is as before. `kind` is left out of the bytes
    /// when it is `Invalid`, so a refusal encodes as it did before kinds.
    Rejected {
        reason: String,
        #[serde(default, skip_serializing_if = "RejectKind::is_invalid")]
        kind: RejectKind,
    },
    /// A workload was submitted: its current version, and whether it changed.
    Workload { version: u64, changed: bool },
    /// A plan applied: the ids placed, and the placements refused by the re-check.
    Plan { placed: Vec<String>, refused: Vec<String> },
    /// A keyed write that was already applied: its first answer.
    Repeat(Box<CommandResponse>),
    /// A batch applied: one `Workload` answer per spec, in order.
    Batch(Vec<CommandResponse>),
    /// A [`Command::Group`] applied: one answer per command, in order.
    Group(Vec<CommandResponse>),
}
