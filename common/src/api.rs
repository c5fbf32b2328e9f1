//! Operator API: typed requests and the views they return.
//!
//! The admin socket (HTTP+JSON), the remote `gantry-api/1` QUIC door and the
//! follower-to-leader forwarding all carry these same types, so a request
//! means one thing whichever way it arrives.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{MigMode, NodeStatus};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ApiRequest {
    /// The cluster as the leader sees it (forwarded when a leader is known).
    Status,
    /// This coordinator's own view, never forwarded.
    LocalStatus,
    Nodes,
    Gpus,
    /// Sets and removes operator labels on a node.
    SetNodeLabels {
        node: String,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    /// Adds a coordinator: first as a learner that catches up, then as a voter.
    AddMember {
        id: u64,
        addr: String,
    },
    /// Removes a coordinator from the voters and the cluster.
    RemoveMember {
        id: u64,
    },
}

impl ApiRequest {
    /// Whether the request changes replicated state (and so must reach the leader).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            ApiRequest::SetNodeLabels { .. } | ApiRequest::AddMember { .. } | ApiRequest::RemoveMember { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ApiResponse {
    Status(ClusterStatus),
    Nodes(Vec<NodeView>),
    Gpus(Vec<GpuView>),
    /// A write was committed at this Raft log index.
    Committed {
        log_index: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Leader,
    Follower,
    Learner,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: u64,
    pub address: String,
    pub role: MemberRole,
    /// Term of the cluster as the answering coordinator knows it.
    pub term: u64,
    /// For the leader its commit index; for the others the last index the
    /// leader knows they hold (`None` when the answer does not come from the leader).
    pub commit_index: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Coordinator that answered.
    pub answered_by: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub status: NodeStatus,
    /// Seconds since the leader last heard from the node; `None` if it never did since it became leader.
    pub heartbeat_age_s: Option<f64>,
    pub labels: BTreeMap<String, String>,
    pub cpu_count: u32,
    pub memory_total_mib: u64,
    pub cpu_usage_pct: Option<f32>,
    pub memory_used_mib: Option<u64>,
    pub gpu_count: u32,
    pub gpu_backend: String,
    pub agent_version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuView {
    pub node: String,
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_total_mib: u64,
    pub memory_used_mib: Option<u64>,
    pub utilization_pct: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    pub mig_mode: MigMode,
    /// `healthy`, `degraded`, `unhealthy`, or `unknown` without telemetry.
    pub health: String,
    pub health_reason: Option<String>,
}

/// Error body of the admin socket (`{"error": "..."}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
