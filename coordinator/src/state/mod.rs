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

use std::collections::BTreeMap;

use gantry_common::model::{NodeInfo, NodeStatus};
use serde::{Deserialize, Serialize};

pub use apply::apply;

/// Everything the coordinators agree on through Raft.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub nodes: BTreeMap<String, NodeRecord>,
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
}

/// What applying a [`Command`] produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Applied; nothing else to say.
    #[default]
    Applied,
    /// Applied and nothing changed (an idempotent repeat).
    Unchanged,
    /// Refused; the state is as before.
    Rejected { reason: String },
}
