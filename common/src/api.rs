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
    /// Creates or updates several workloads at once (protocol 3): all are
    /// validated first and one invalid spec changes nothing. One Raft entry
    /// when every coordinator speaks version 3, else one per workload.
    SubmitWorkloads {
        specs: Vec<WorkloadSpec>,
    },
}

/// Most workloads one batch may hold.
pub const MAX_BATCH: usize = 10_000;

impl ApiRequest {
    /// Whether the request changes replicated state (and so must reach the leader).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            ApiRequest::SetNodeLabels { .. }
                | ApiRequest::AddMember { .. }
                | ApiRequest::RemoveMember { .. }
                | ApiRequest::SubmitWorkload { .. }
                | ApiRequest::SubmitWorkloads { .. }
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
    /// A batch's results, in the order of its specs (protocol 3).
    SubmittedBatch(Vec<SubmitResult>),
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
    /// Whether the answering coordinator has a live connection to it (always
    /// true for itself).
    #[serde(default = "yes")]
    pub reachable: bool,
    /// The wire protocol version the answering coordinator speaks with it
    /// (its own highest for itself; `None`: not connected). During a
    /// rolling upgrade, batches are one Raft entry once every member says 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
}

fn yes() -> bool {
    true
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
    /// Set when no leader answered: the answering coordinator's own view.
    #[serde(default)]
    pub stale: Option<Staleness>,
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
    /// Why the node is not fully working although it may be `ready`: its
    /// desired-allocation stream fails, or the scheduler leaves it out.
    #[serde(default)]
    pub problem: Option<String>,
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
    /// The field (dotted path) the error is about, when it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Why an operator request failed, by kind: the admin socket maps each kind
/// to one HTTP status (`coordinator/src/admin`, tested there), the remote
/// API and forwarding carry it as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The request is wrong (a field, a value); nothing changed.
    Invalid,
    /// What it names does not exist.
    NotFound,
    /// It clashes with the state (e.g. the last voter cannot be removed).
    Conflict,
    /// No leader could take it now; nothing changed. Retry later.
    Unavailable,
    /// A write was sent but its outcome is not known (the leader changed or
    /// went away while it was in flight): it may have been applied.
    /// Retrying with the same idempotency key is safe.
    OutcomeUnknown,
    /// Something broke inside the coordinator.
    Internal,
}

/// A failed operator request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub kind: FailureKind,
    pub message: String,
    /// The field (dotted path) it is about, when it is about one.
    #[serde(default)]
    pub field: Option<String>,
}

impl ApiFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> ApiFailure {
        ApiFailure { kind, message: message.into(), field: None }
    }

    pub fn invalid(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(FailureKind::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(FailureKind::NotFound, message)
    }
}

/// Set on an answer that did not come from the leader's current state: no
/// leader was reachable, so the answering coordinator used its own copy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Staleness {
    /// Coordinator that answered.
    pub answered_by: u64,
    /// The last log index it applied: the state is as of this index.
    pub applied_index: Option<u64>,
    /// Seconds since it last knew a leader; `None` if it never did since it started.
    pub leader_seen_s_ago: Option<f64>,
    /// Why: `no leader` or the forwarding error.
    pub reason: String,
}

impl Staleness {
    /// `no leader: state of coordinator 2 as of index 5092, leader last seen 12.0s ago`
    pub fn line(&self) -> String {
        let index = self.applied_index.map_or("no applied entry".to_string(), |i| format!("as of index {i}"));
        let seen = self.leader_seen_s_ago.map_or("no leader seen since it started".to_string(), |s| {
            format!("leader last seen {s:.1}s ago")
        });
        format!(
            "{}: state of coordinator {} {index}, {seen}; it may be out of date",
            self.reason, self.answered_by
        )
    }
}

/// Header of an admin answer that is [`Staleness`] (its JSON).
pub const STALE_HEADER: &str = "gantry-stale";
/// Header that carries a write's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Checks an idempotency key: 1-64 ASCII letters, digits, `-` and `_`.
pub fn validate_idempotency_key(key: &str) -> Result<(), ApiFailure> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiFailure {
            kind: FailureKind::Invalid,
            message: format!("{IDEMPOTENCY_HEADER}: must be 1-64 ASCII letters, digits, '-' or '_'"),
            field: Some(IDEMPOTENCY_HEADER.into()),
        })
    }
}
