//! Coordinator-to-coordinator traffic on `gantry-raft/1`: Raft RPCs and
//! operator requests forwarded to the leader.
//!
//! - [`messages`]: the request/response enums.
//! - [`client`]: cached QUIC connections to the other coordinators.

pub mod client;
pub mod messages;

/// Frames between coordinators carry log batches and snapshot chunks.
pub const PEER_MAX_FRAME: usize = 64 * 1024 * 1024;
