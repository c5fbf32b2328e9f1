//! The cluster as the engine sees it: nodes, their GPUs, each GPU's sharing
//! mode with what it already holds, and live telemetry.
//!
//! These are the engine's own types; the coordinator converts its replicated
//! state into them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A point-in-time view of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSnapshot {
    pub nodes: Vec<NodeSnapshot>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSnapshot {
    /// Unique node name.
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// False when the node is down, draining or cordoned: nothing is placed there.
    #[serde(default = "yes")]
    pub schedulable: bool,
    /// Host CPU capacity (millicores) and what allocations already reserve.
    pub cpu_milli: u64,
    #[serde(default)]
    pub cpu_used_milli: u64,
    /// Host memory capacity (MiB) and what allocations already reserve.
    pub memory_mib: u64,
    #[serde(default)]
    pub memory_used_mib: u64,
    pub gpus: Vec<GpuSnapshot>,
    /// Workloads with a replica on this node (for anti-affinity).
    #[serde(default)]
    pub workloads: BTreeSet<String>,
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSnapshot {
    /// Model name, e.g. `H100-80GB`, `A100-SXM4-40GB`, `T4`.
    pub model: String,
    pub memory_mib: u64,
    /// NVLink domain (clique) id, when the node reports one.
    #[serde(default)]
    pub nvlink_domain: Option<u32>,
    /// False after an Xid/ECC fault: nothing new is placed on it.
    #[serde(default = "yes")]
    pub healthy: bool,
    pub mode: GpuMode,
    /// Live telemetry from the agent, if any.
    #[serde(default)]
    pub telemetry: Option<GpuTelemetry>,
}

/// Live load as the agent last reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuTelemetry {
    /// SM utilisation, 0-100.
    pub utilization_pct: u8,
    /// Memory in use on the device (all processes), MiB.
    pub memory_used_mib: u64,
}

/// The sharing mode of a GPU together with what it already holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GpuMode {
    /// Whole-GPU allocations only.
    Exclusive { allocated: bool },
    /// MIG enabled; the instances that exist.
    Mig { instances: Vec<MigInstanceSpec> },
    /// MPS server running; the sum of its clients' limits.
    Mps { clients: u32, compute_pct: u32, memory_mib: u64 },
    /// Time-sliced: memory reservations plus fractional (milli) shares.
    Shared { tenants: u32, milli: u32, memory_mib: u64 },
}

/// An existing MIG instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigInstanceSpec {
    pub profile: String,
    pub start: u8,
}

fn yes() -> bool {
    true
}

impl GpuSnapshot {
    /// A free GPU in the given mode-less state: exclusive, nothing allocated.
    pub fn exclusive(model: &str, memory_mib: u64) -> Self {
        Self::with_mode(model, memory_mib, GpuMode::Exclusive { allocated: false })
    }

    /// A free GPU in shared (time-sliced) mode.
    pub fn shared(model: &str, memory_mib: u64) -> Self {
        Self::with_mode(model, memory_mib, GpuMode::Shared { tenants: 0, milli: 0, memory_mib: 0 })
    }

    /// A GPU in the given mode, healthy, no NVLink, no telemetry.
    pub fn with_mode(model: &str, memory_mib: u64, mode: GpuMode) -> Self {
        Self {
            model: model.to_string(),
            memory_mib,
            nvlink_domain: None,
            healthy: true,
            mode,
            telemetry: None,
        }
    }
}

impl NodeSnapshot {
    /// A schedulable node with no labels, nothing reserved.
    pub fn new(name: &str, cpu_milli: u64, memory_mib: u64, gpus: Vec<GpuSnapshot>) -> Self {
        Self {
            name: name.to_string(),
            labels: BTreeMap::new(),
            schedulable: true,
            cpu_milli,
            cpu_used_milli: 0,
            memory_mib,
            memory_used_mib: 0,
            gpus,
            workloads: BTreeSet::new(),
        }
    }
}
