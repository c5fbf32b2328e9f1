//! What a workload replica asks for, and what the engine answers.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::policy::Policy;

/// MPS allows at most this many clients per GPU (Volta and later).
pub const MPS_MAX_CLIENTS: u32 = 48;

/// Errors in a request itself (independent of the cluster).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("gpu.count: exclusive requests take 1 to 8 GPUs, got {0}")]
    ExclusiveCount(u8),
    #[error("gpu.compute_pct: MPS compute share must be 1-100 %, got {0}")]
    MpsCompute(u8),
    #[error("gpu.milli: a GPU fraction must be 1-1000 thousandths, got {0}")]
    Milli(u32),
    #[error("gpu.count: several GPUs need whole GPUs (milli = 1000), got {count} x {milli}")]
    MultiFraction { count: u8, milli: u32 },
    #[error("gpu.count: milli requests take 1 to 8 GPUs, got {0}")]
    MilliCount(u8),
    #[error("gpu.memory_mib: must be above 0 for {0} requests")]
    ZeroMemory(&'static str),
    #[error("gpu.profile: {0}")]
    MigProfile(String),
}

/// One replica's needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    /// Workload id: replicas of one workload share it (anti-affinity).
    pub workload: String,
    pub gpu: GpuRequest,
    /// Host CPU (millicores) and memory (MiB).
    #[serde(default)]
    pub cpu_milli: u64,
    #[serde(default)]
    pub memory_mib: u64,
    #[serde(default)]
    pub constraints: Constraints,
    /// Overrides the cluster's default policy.
    #[serde(default)]
    pub policy: Option<Policy>,
}

/// The GPU part of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GpuRequest {
    /// No GPU.
    None,
    /// `count` whole GPUs in exclusive mode on one node; `linked`: all in one NVLink domain.
    Exclusive { count: u8, linked: bool },
    /// One MIG instance of a profile (`3g.40gb`).
    Mig { profile: String },
    /// A share of one MPS-mode GPU.
    Mps { compute_pct: u8, memory_mib: u64 },
    /// Memory on one time-sliced GPU, no compute limit.
    Shared { memory_mib: u64 },
    /// `milli` thousandths of each of `count` GPUs; below 1000 only with
    /// count 1 (a shared-mode GPU); 1000 = whole GPUs (exclusive-mode, or an
    /// idle shared-mode GPU).
    Milli { milli: u32, count: u8 },
}

/// Where a request may go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Allowed GPU models; empty = any.
    #[serde(default)]
    pub gpu_models: Vec<String>,
    /// Minimum total memory of each GPU used (MiB).
    #[serde(default)]
    pub min_gpu_memory_mib: u64,
    #[serde(default)]
    pub labels: Vec<LabelSelector>,
    /// At most one replica of this workload per node.
    #[serde(default)]
    pub spread_replicas: bool,
}

/// A node-label condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LabelSelector {
    Equals { key: String, value: String },
    In { key: String, values: Vec<String> },
    NotIn { key: String, values: Vec<String> },
}

/// A chosen node and the GPU shares on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Index of the node in the snapshot.
    pub node: usize,
    pub node_name: String,
    pub gpus: Vec<GpuAssignment>,
}

/// One GPU of a placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuAssignment {
    /// Index of the GPU on its node.
    pub gpu: usize,
    pub share: GpuShare,
}

/// What a placement takes of one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuShare {
    Whole,
    Mig { profile: String, start: u8 },
    Mps { compute_pct: u8, memory_mib: u64 },
    Shared { memory_mib: u64 },
    Milli { milli: u32 },
}

impl GpuRequest {
    /// Checks the request's own fields.
    pub fn validate(&self) -> Result<(), RequestError> {
        match *self {
            GpuRequest::None | GpuRequest::Mig { .. } => Ok(()),
            GpuRequest::Exclusive { count, .. } if !(1..=8).contains(&count) => {
                Err(RequestError::ExclusiveCount(count))
            }
            GpuRequest::Exclusive { .. } => Ok(()),
            GpuRequest::Mps { compute_pct, .. } if !(1..=100).contains(&compute_pct) => {
                Err(RequestError::MpsCompute(compute_pct))
            }
            GpuRequest::Mps { memory_mib: 0, .. } => Err(RequestError::ZeroMemory("mps")),
            GpuRequest::Mps { .. } => Ok(()),
            GpuRequest::Shared { memory_mib: 0 } => Err(RequestError::ZeroMemory("shared")),
            GpuRequest::Shared { .. } => Ok(()),
            GpuRequest::Milli { milli, .. } if !(1..=1000).contains(&milli) => {
                Err(RequestError::Milli(milli))
            }
            GpuRequest::Milli { count, .. } if !(1..=8).contains(&count) => {
                Err(RequestError::MilliCount(count))
            }
            GpuRequest::Milli { milli, count } if count > 1 && milli < 1000 => {
                Err(RequestError::MultiFraction { count, milli })
            }
            GpuRequest::Milli { .. } => Ok(()),
        }
    }

    /// GPUs this request occupies (whole or partly).
    pub fn gpu_count(&self) -> usize {
        match *self {
            GpuRequest::None => 0,
            GpuRequest::Exclusive { count, .. } | GpuRequest::Milli { count, .. } => usize::from(count),
            _ => 1,
        }
    }

    /// Short human description, used in refusal messages.
    pub fn describe(&self) -> String {
        match self {
            GpuRequest::None => "no GPU".to_string(),
            GpuRequest::Exclusive { count, linked: true } => {
                format!("{count} free GPU(s) in one NVLink domain")
            }
            GpuRequest::Exclusive { count, .. } => format!("{count} free exclusive GPU(s)"),
            GpuRequest::Mig { profile } => format!("room for a MIG {profile} instance"),
            GpuRequest::Mps { compute_pct, memory_mib } => {
                format!("an MPS GPU with {compute_pct}% compute and {memory_mib} MiB free")
            }
            GpuRequest::Shared { memory_mib } => format!("a shared GPU with {memory_mib} MiB free"),
            GpuRequest::Milli { milli: 1000, count } => format!("{count} whole free GPU(s)"),
            GpuRequest::Milli { milli, .. } => format!("a shared GPU with {milli}/1000 free"),
        }
    }
}

impl LabelSelector {
    /// Whether a node's labels satisfy this selector.
    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        match self {
            LabelSelector::Equals { key, value } => labels.get(key) == Some(value),
            LabelSelector::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            LabelSelector::NotIn { key, values } => labels.get(key).is_none_or(|v| !values.contains(v)),
        }
    }
}
