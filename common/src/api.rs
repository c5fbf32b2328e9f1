//! Operator API: typed requests and the views they return.
//!
//! The admin socket (HTTP+JSON), the remote `gantry-api/1` QUIC door and the
//! follower-to-leader forwarding all carry these same types, so a request
//! means one thing whichever way it arrives.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{GpuSharing, MigMode, NodeStatus};
use crate::workload::WorkloadSpec;

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
    /// Creates or updates a workload (validated first; invalid changes nothing).
    SubmitWorkload {
        spec: Box<WorkloadSpec>,
    },
    Workloads,
    /// One workload with its spec.
    Workload {
        name: String,
    },
    /// Allocations, of one workload or of all; stopped ones included.
    Allocs {
        workload: Option<String>,
    },
    /// Stops every replica of a workload and forgets it once they stopped.
    StopWorkload {
        name: String,
    },
    /// `drain: true` moves the node's allocations elsewhere and makes it
    /// ineligible; `false` makes it eligible again.
    DrainNode {
        node: String,
        drain: bool,
    },
}

impl ApiRequest {
    /// Whether the request changes replicated state (and so must reach the leader).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            ApiRequest::SetNodeLabels { .. }
                | ApiRequest::AddMember { .. }
                | ApiRequest::RemoveMember { .. }
                | ApiRequest::SubmitWorkload { .. }
                | ApiRequest::StopWorkload { .. }
                | ApiRequest::DrainNode { .. }
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
    Submitted(SubmitResult),
    Workloads(Vec<WorkloadView>),
    Workload(Box<WorkloadDetail>),
    Allocs(Vec<AllocView>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitResult {
    pub workload: String,
    /// The version now current (unchanged when the spec was identical).
    pub version: u64,
    /// False when the same spec was already current.
    pub changed: bool,
    pub log_index: u64,
}

/// A workload's state as `gantryctl workloads` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadView {
    pub name: String,
    pub version: u64,
    /// `docker` or `process`.
    pub runtime: String,
    /// Image or command.
    pub target: String,
    /// What each replica asks of GPUs, e.g. `1 free exclusive GPU(s)`.
    pub gpu: String,
    pub replicas: u32,
    /// Replicas of the current version that run.
    pub running: u32,
    pub healthy: u32,
    /// Replicas with no placement yet.
    pub pending: u32,
    /// `running` (all replicas healthy or running), `deploying`, `pending`,
    /// `crash-looping`, `start-failed`, `failed`, `completed`, `degraded`, `stopping`.
    pub status: String,
    /// Why replicas are pending, when some are.
    pub pending_reason: Option<String>,
    /// Why the status is not `running`, for a person: the pending reason, or
    /// a failing replica and what its agent said.
    #[serde(default)]
    pub reason: Option<String>,
    /// Replicas of the current version that finished: exited 0, or failed
    /// for good by their restart policy.
    #[serde(default)]
    pub completed: u32,
    #[serde(default)]
    pub failed: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadDetail {
    pub view: WorkloadView,
    pub spec: WorkloadSpec,
}

/// One allocation as `gantryctl allocs` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocView {
    pub id: String,
    pub workload: String,
    pub replica: u32,
    pub version: u64,
    pub node: String,
    /// Human description of each GPU share: `GPU 0`, `MIG 1g.10gb@0 on GPU 2`, `MPS 25% 10000MiB on GPU 1`.
    pub gpus: Vec<String>,
    /// Device ids handed to the workload (`GPU-…` / `MIG-…`), once the agent reported them.
    pub devices: Vec<String>,
    pub desired: String,
    pub actual: String,
    pub health: String,
    pub restarts: u32,
    pub message: String,
    pub ports: BTreeMap<String, u16>,
    /// `ADDRESS:PORT` of the first port, when the replica runs.
    pub endpoint: Option<String>,
    /// The agent's HTTP listener (metrics), empty when off.
    pub agent_http: String,
    /// Exit code of the last run, when it exited with one.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Failed runs or starts in a row since the last stable run.
    #[serde(default)]
    pub failures: u32,
    /// The last start failed before the workload ran (image, command, port, GPU).
    #[serde(default)]
    pub start_failed: bool,
    /// Failing again and again without a stable run.
    #[serde(default)]
    pub crash_looping: bool,
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
    /// Drained by an operator: nothing new is placed there.
    pub drained: bool,
    /// Allocations on the node that hold resources.
    pub allocs: u32,
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
    pub sharing: GpuSharing,
    /// Allocations holding (part of) this GPU.
    pub allocs: u32,
    /// MPS control daemon clients; `None` when no daemon runs (or unknown).
    pub mps_clients: Option<u32>,
    pub mig_instances: Option<u32>,
    /// `healthy`, `degraded`, `unhealthy`, or `unknown` without telemetry.
    pub health: String,
    pub health_reason: Option<String>,
}

/// Error body of the admin socket (`{"error": "..."}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
