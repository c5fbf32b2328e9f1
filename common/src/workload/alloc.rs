//! Allocations: one replica of a workload placed on a node.
//!
//! The coordinator decides the *desired* side (which replica, which node,
//! which GPU shares, run or stop); the agent reports the *actual* side (what
//! runs, its health, its restarts, the host ports and device ids it used).

use std::collections::BTreeMap;

use gantry_placement::GpuShare;
use serde::{Deserialize, Serialize};

use super::spec::WorkloadSpec;

/// What the coordinator wants of an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Run,
    Stop,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Run => "run",
            DesiredState::Stop => "stop",
        }
    }
}

/// What the agent last reported (or the coordinator concluded) about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActualState {
    /// Placed; the agent has not reported it yet.
    Pending,
    /// Being started (image check, container create, MPS server start).
    Starting,
    Running,
    /// Exited and waiting for its restart backoff.
    Restarting,
    /// Exited and will not be restarted (restart policy, or could not start).
    Failed,
    /// Stopped on purpose.
    Stopped,
    /// Its node went down: the replica is replaced elsewhere.
    Lost,
    /// Exited with status 0 and, by its restart policy, done: its slot is
    /// filled and it is not placed again.
    Completed,
}

impl ActualState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActualState::Pending => "pending",
            ActualState::Starting => "starting",
            ActualState::Running => "running",
            ActualState::Restarting => "restarting",
            ActualState::Failed => "failed",
            ActualState::Stopped => "stopped",
            ActualState::Lost => "lost",
            ActualState::Completed => "completed",
        }
    }

    /// Nothing of it runs any more and nothing will (for this allocation).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ActualState::Failed | ActualState::Stopped | ActualState::Lost | ActualState::Completed
        )
    }

    /// It ended on its own and its restart policy keeps it ended: the
    /// replica is done (`completed`, or `failed` for good). Such a replica
    /// keeps its slot; it is neither replaced nor moved.
    pub fn is_finished(self) -> bool {
        matches!(self, ActualState::Failed | ActualState::Completed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// No check configured and not running, or not checked yet.
    Unknown,
    Healthy,
    Unhealthy,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

/// One GPU (or part of one) an allocation holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocGpu {
    /// GPU index on the node.
    pub index: u32,
    /// The GPU's `GPU-…` UUID.
    pub uuid: String,
    pub share: GpuShare,
}

impl AllocGpu {
    /// `GPU 0`, `MIG 1g.10gb@2 on GPU 3`, `MPS 25% 10000MiB on GPU 1`.
    pub fn describe(&self) -> String {
        match &self.share {
            GpuShare::Whole => format!("GPU {}", self.index),
            GpuShare::Mig { profile, start } => format!("MIG {profile}@{start} on GPU {}", self.index),
            GpuShare::Mps { compute_pct, memory_mib } => {
                format!("MPS {compute_pct}% {memory_mib}MiB on GPU {}", self.index)
            }
            GpuShare::Shared { memory_mib } => format!("shared {memory_mib}MiB on GPU {}", self.index),
            GpuShare::Milli { milli } => format!("{milli}/1000 of GPU {}", self.index),
        }
    }
}

/// One replica placed on a node (replicated through Raft).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// `<workload>.<replica>.<sequence>`: unique for the cluster's lifetime.
    pub id: String,
    pub workload: String,
    /// The workload version this allocation runs.
    pub version: u64,
    pub replica: u32,
    pub node: String,
    pub gpus: Vec<AllocGpu>,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub desired: DesiredState,
    /// Why it is to stop (workload stopped, node drained, replaced).
    pub desired_reason: String,
    pub actual: ActualState,
    pub health: HealthState,
    pub restarts: u32,
    /// Last thing worth telling an operator (an exit code, a start error).
    pub message: String,
    /// Host ports the agent bound, by port name.
    pub ports: BTreeMap<String, u16>,
    /// Device ids handed to the workload (`GPU-…` or `MIG-…` UUIDs).
    pub devices: Vec<String>,
    /// Exit code of its last run, when it exited with one.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Failed runs or starts in a row since its last stable run; the agent
    /// calls [`CRASH_LOOP_FAILURES`] or more a crash loop.
    #[serde(default)]
    pub failures: u32,
    /// Its last start failed before the workload ran (image, command, port, GPU).
    #[serde(default)]
    pub start_failed: bool,
}

/// Failures in a row (without a stable run between) that make a crash loop.
pub const CRASH_LOOP_FAILURES: u32 = 3;

/// A replica placement, as the scheduler proposes it and an allocation starts from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewAlloc {
    pub workload: String,
    /// The workload version it was planned for; refused if no longer current.
    pub version: u64,
    pub replica: u32,
    pub node: String,
    pub gpus: Vec<AllocGpu>,
    pub cpu_milli: u64,
    pub memory_mib: u64,
}

impl Allocation {
    /// A placement that just became an allocation: meant to run, nothing
    /// reported yet.
    pub fn pending(id: String, new: NewAlloc) -> Allocation {
        Allocation {
            id,
            workload: new.workload,
            version: new.version,
            replica: new.replica,
            node: new.node,
            gpus: new.gpus,
            cpu_milli: new.cpu_milli,
            memory_mib: new.memory_mib,
            desired: DesiredState::Run,
            desired_reason: String::new(),
            actual: ActualState::Pending,
            health: HealthState::Unknown,
            restarts: 0,
            message: String::new(),
            ports: BTreeMap::new(),
            devices: Vec::new(),
            exit_code: None,
            failures: 0,
            start_failed: false,
        }
    }

    /// Whether it fills its replica slot: meant to run, and either running
    /// (or on its way) or finished by its restart policy. One its agent
    /// stopped, or lost with its node, leaves the slot free.
    pub fn fills_slot(&self) -> bool {
        self.desired == DesiredState::Run && !matches!(self.actual, ActualState::Stopped | ActualState::Lost)
    }

    /// Whether it is crash-looping: failing again and again without a stable run.
    pub fn is_crash_looping(&self) -> bool {
        self.failures >= CRASH_LOOP_FAILURES && !self.actual.is_terminal()
    }

    /// Whether the allocation still holds its resources: it is meant to run,
    /// or it was told to stop but the agent has not confirmed yet.
    pub fn holds_resources(&self) -> bool {
        !self.actual.is_terminal()
    }
}

/// An allocation as the agent holds it: with the spec to run. The spec is
/// shared by every replica of its workload on the node (a node may run
/// thousands of replicas of one workload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesiredAlloc {
    pub alloc: Allocation,
    pub spec: std::sync::Arc<WorkloadSpec>,
}

/// What the agent observed of one allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocReport {
    pub id: String,
    pub actual: ActualState,
    pub health: HealthState,
    pub restarts: u32,
    pub message: String,
    pub ports: BTreeMap<String, u16>,
    pub devices: Vec<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub start_failed: bool,
}

impl AllocReport {
    /// Copies what the agent observed into the allocation.
    pub fn apply_to(&self, a: &mut Allocation) {
        a.actual = self.actual;
        a.health = self.health;
        a.restarts = self.restarts;
        a.message.clone_from(&self.message);
        a.ports.clone_from(&self.ports);
        a.devices.clone_from(&self.devices);
        a.exit_code = self.exit_code;
        a.failures = self.failures;
        a.start_failed = self.start_failed;
    }

    /// Whether this report says something the allocation does not already hold.
    pub fn differs_from(&self, a: &Allocation) -> bool {
        self.actual != a.actual
            || self.health != a.health
            || self.restarts != a.restarts
            || self.message != a.message
            || self.ports != a.ports
            || self.devices != a.devices
            || self.exit_code != a.exit_code
            || self.failures != a.failures
            || self.start_failed != a.start_failed
    }
}
