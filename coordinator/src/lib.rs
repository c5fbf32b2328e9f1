//! gantry-coordinator: the control-plane daemon.
//!
//! Coordinators replicate the cluster's state with Raft (openraft on redb),
//! serve agents, peers and remote clients on one QUIC endpoint, and serve
//! operators on a local admin socket. Only the leader writes; followers
//! forward.
//!
//! # Layout
//!
//! - [`start`]: `run`, which builds and wires every part below — read it first.
//! - [`config`]: the TOML config and its validation.
//! - [`state`]: the replicated `State`, the `Command` enum and the pure `apply`.
//! - [`raft`]: openraft adapters — redb storage, QUIC network, elections.
//! - [`peer`]: coordinator-to-coordinator messages and connection cache.
//! - [`endpoint`]: the QUIC accept loop; role checks by ALPN and certificate;
//!   [`admission`]: how many handshakes it works on at once.
//! - [`service`]: what each request does once authenticated (forwarding, writes, views).
//! - [`liveness`]: the pure heartbeat-deadline tracker.
//! - [`telemetry`]: the leader's in-memory samples (never replicated).
//! - [`leader_loop`]: leader-only periodic work (marking nodes down/ready).
//! - [`scheduler`]: the pure planner and the leader's single plan applier.
//! - [`views`]: node, GPU, workload and allocation views for operators.
//! - [`agent_links`]: the agents' connections by node; [`alloc_logs`]:
//!   allocation output fetched down them (or through the leader).
//! - [`admin`]: HTTP+JSON admin socket; [`metrics`]: its `/metrics`.
//! - [`systemd`]: STATUS= lines that follow Raft, and the watchdog ping.
//!
//! ```text
//!  agent ──QUIC gantry-agent/1──┐                         ┌── admin socket (HTTP/JSON) ◄── gantryctl
//!  peer  ──QUIC gantry-raft/1───┼─► endpoint ─► service ◄─┤
//!  client──QUIC gantry-api/1────┘                │        └── leader_loop (liveness → Raft)
//!                                                ▼
//!                                   raft (openraft) ─► state_machine ─► apply(State, Command)
//! ```

pub mod admin;
pub mod admission;
pub mod agent_links;
pub mod alloc_logs;
pub mod config;
pub mod endpoint;
pub mod leader_loop;
pub mod liveness;
pub mod metrics;
pub mod peer;
pub mod raft;
pub mod scheduler;
pub mod service;
pub mod start;
pub mod state;
pub mod systemd;
pub mod telemetry;
pub mod views;
