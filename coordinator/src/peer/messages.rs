//! What coordinators say to each other.

use gantry_common::api::{ApiFailure, ApiRequest, ApiResponse};
use gantry_common::wire::{LogsHeader, LogsRequest};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::LogId;
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
    /// Would you vote for me if I campaigned now? Asked before an election
    /// and answered with [`PeerResponse::PreVote`]; changes nothing on
    /// either side (protocol 4, [`crate::raft::election::PRE_VOTE_PROTOCOL`]).
    PreVote(PreVoteRequest),
}

/// A pre-vote: who would campaign, and the last log entry it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    pub last_log_id: Option<LogId<NodeId>>,
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
    /// The answer to a pre-vote: `granted` when this coordinator has no
    /// leader it heard within the lease and the candidate's log is at
    /// least as long as its own.
    PreVote {
        granted: bool,
    },
}
