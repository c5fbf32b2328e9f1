//! Raft plumbing: openraft's type config and the adapters that plug our
//! storage and network into it.
//!
//! # Layout
//!
//! - [`log_store`]: the Raft log and vote in redb.
//! - [`state_machine`]: applies committed `Command`s to `State` and keeps it (and snapshots) in redb.
//! - [`store`]: opens the one redb file that holds both.
//! - `redb_io`: what the three share: tables, faults, encoding, blocking calls.
//! - `migrate`: rewrites a store of the previous format when it is opened.
//! - [`network`]: Raft RPCs over QUIC (`gantry-raft/1`).
//! - [`election`]: starts elections (openraft's rule, a fresh random timeout each time).
//! - [`handoff`]: what a leader does before it stops, so the next one has every entry.
//! - [`rejoin`]: a restarted voter waits for the leader before it may campaign.

use std::io::Cursor;

use crate::state::{Command, CommandResponse};

pub mod election;
pub mod handoff;
pub mod log_store;
pub mod machine_tables;
mod migrate;
pub mod network;
mod redb_io;
pub mod rejoin;
pub mod state_machine;
pub mod store;

openraft::declare_raft_types!(
    /// openraft types of a Gantry coordinator cluster.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
