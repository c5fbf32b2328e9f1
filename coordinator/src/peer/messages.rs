//! What coordinators say to each other.

use gantry_common::api::{ApiFailure, ApiRequest, ApiResponse};
use gantry_common::wire::{LogsHeader, LogsRequest};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::raft::{NodeId, TypeConfig};

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// An operator request that must be served by the leader, with the
    /// write's idempotency key.
    Forward {
        req: ApiRequest,
        key: Option<String>,
    },
    /// An allocation's output from the coordinator holding its node's agent
    /// link: answered with [`PeerResponse::Logs`], then the raw bytes.
    Logs(LogsRequest),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Api(Result<ApiResponse, ApiFailure>),
    /// A forwarded operator request reached a coordinator that no longer
    /// leads; nothing was written.
    NotLeader,
    /// The request did not match what this connection may carry.
    Refused(String),
    /// The head of a logs answer; with `Ok` the output follows.
    Logs(LogsHeader),
}
