//! Version 1, frozen: the postcard (positional) shapes of everything a
//! `gantry-raft-store/1` file holds, as commit c6cdaa7 wrote them, and their
//! conversion to today's types.
//!
//! Never edit a definition here: postcard reads fields and variants by
//! position, so these must match the old bytes exactly. The coordinator's
//! migration (`coordinator/src/raft/migrate.rs`) decodes old stores with
//! them; a committed store written by c6cdaa7 checks that it still can.
//! The coordinator's own v1 types (commands, state) are frozen there.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model as now;
use crate::workload as wl;

#[derive(Clone, Copy, Debug, Deserialize)]
pub enum MigMode {
    Unsupported,
    Disabled,
    Enabled,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub enum GpuSharing {
    Exclusive,
    Mig,
    Mps,
    Shared,
}

#[derive(Clone, Debug, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_total_mib: u64,
    pub mig_mode: MigMode,
    pub nvlink_domain: Option<u32>,
    pub sharing: GpuSharing,
}

#[derive(Clone, Debug, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub cpu_count: u32,
    pub memory_total_mib: u64,
    pub os: String,
    pub kernel: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub host: HostInfo,
    pub gpus: Vec<GpuInfo>,
    pub agent_version: String,
    pub gpu_backend: String,
    pub address: String,
    pub http_addr: String,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub enum NodeStatus {
    Ready,
    Down,
}

#[derive(Clone, Debug, Deserialize)]
pub enum GpuRequest {
    None,
    Exclusive { count: u8, linked: bool },
    Mig { profile: String },
    Mps { compute_pct: u8, memory_mib: u64 },
    Shared { memory_mib: u64 },
    Milli { milli: u32, count: u8 },
}

#[derive(Clone, Debug, Deserialize)]
pub enum LabelSelector {
    Equals { key: String, value: String },
    In { key: String, values: Vec<String> },
    NotIn { key: String, values: Vec<String> },
}

#[derive(Clone, Debug, Deserialize)]
pub struct Constraints {
    pub gpu_models: Vec<String>,
    pub min_gpu_memory_mib: u64,
    pub labels: Vec<LabelSelector>,
    pub spread_replicas: bool,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub enum Policy {
    LeastLoaded,
    Binpack,
    Spread,
    Fgd,
    FgdPack,
}

#[derive(Clone, Debug, Deserialize)]
pub enum GpuShare {
    Whole,
    Mig { profile: String, start: u8 },
    Mps { compute_pct: u8, memory_mib: u64 },
    Shared { memory_mib: u64 },
    Milli { milli: u32 },
}

#[derive(Clone, Debug, Deserialize)]
pub enum RuntimeSpec {
    Docker { image: String },
    Process { command: String },
}

#[derive(Clone, Debug, Deserialize)]
pub struct PortSpec {
    pub name: String,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub enum RestartMode {
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct HealthCheck {
    pub path: String,
    pub port: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub initial_delay_ms: u64,
    pub failure_threshold: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct WorkloadSpec {
    pub name: String,
    pub runtime: RuntimeSpec,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
    pub replicas: u32,
    pub restart: RestartPolicy,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpu: GpuRequest,
    pub constraints: Constraints,
    pub policy: Option<Policy>,
    pub health: Option<HealthCheck>,
    pub stop_grace_ms: u64,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub enum DesiredState {
    Run,
    Stop,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub enum ActualState {
    Pending,
    Starting,
    Running,
    Restarting,
    Failed,
    Stopped,
    Lost,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub enum HealthState {
    Unknown,
    Healthy,
    Unhealthy,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AllocGpu {
    pub index: u32,
    pub uuid: String,
    pub share: GpuShare,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Allocation {
    pub id: String,
    pub workload: String,
    pub version: u64,
    pub replica: u32,
    pub node: String,
    pub gpus: Vec<AllocGpu>,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub desired: DesiredState,
    pub desired_reason: String,
    pub actual: ActualState,
    pub health: HealthState,
    pub restarts: u32,
    pub message: String,
    pub ports: BTreeMap<String, u16>,
    pub devices: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NewAlloc {
    pub workload: String,
    pub version: u64,
    pub replica: u32,
    pub node: String,
    pub gpus: Vec<AllocGpu>,
    pub cpu_milli: u64,
    pub memory_mib: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AllocReport {
    pub id: String,
    pub actual: ActualState,
    pub health: HealthState,
    pub restarts: u32,
    pub message: String,
    pub ports: BTreeMap<String, u16>,
    pub devices: Vec<String>,
}

// ---- conversions to today's types ----

impl From<MigMode> for now::MigMode {
    fn from(v: MigMode) -> Self {
        match v {
            MigMode::Unsupported => now::MigMode::Unsupported,
            MigMode::Disabled => now::MigMode::Disabled,
            MigMode::Enabled => now::MigMode::Enabled,
        }
    }
}

impl From<GpuSharing> for now::GpuSharing {
    fn from(v: GpuSharing) -> Self {
        match v {
            GpuSharing::Exclusive => now::GpuSharing::Exclusive,
            GpuSharing::Mig => now::GpuSharing::Mig,
            GpuSharing::Mps => now::GpuSharing::Mps,
            GpuSharing::Shared => now::GpuSharing::Shared,
        }
    }
}

impl From<NodeInfo> for now::NodeInfo {
    fn from(v: NodeInfo) -> Self {
        now::NodeInfo {
            name: v.name,
            labels: v.labels,
            host: now::HostInfo {
                hostname: v.host.hostname,
                cpu_count: v.host.cpu_count,
                memory_total_mib: v.host.memory_total_mib,
                os: v.host.os,
                kernel: v.host.kernel,
            },
            gpus: v
                .gpus
                .into_iter()
                .map(|g| now::GpuInfo {
                    index: g.index,
                    uuid: g.uuid,
                    model: g.model,
                    memory_total_mib: g.memory_total_mib,
                    mig_mode: g.mig_mode.into(),
                    nvlink_domain: g.nvlink_domain,
                    sharing: g.sharing.into(),
                })
                .collect(),
            agent_version: v.agent_version,
            gpu_backend: v.gpu_backend,
            address: v.address,
            http_addr: v.http_addr,
        }
    }
}

impl From<NodeStatus> for now::NodeStatus {
    fn from(v: NodeStatus) -> Self {
        match v {
            NodeStatus::Ready => now::NodeStatus::Ready,
            NodeStatus::Down => now::NodeStatus::Down,
        }
    }
}

impl From<GpuRequest> for gantry_placement::GpuRequest {
    fn from(v: GpuRequest) -> Self {
        use gantry_placement::GpuRequest as G;
        match v {
            GpuRequest::None => G::None,
            GpuRequest::Exclusive { count, linked } => G::Exclusive { count, linked },
            GpuRequest::Mig { profile } => G::Mig { profile },
            GpuRequest::Mps { compute_pct, memory_mib } => G::Mps { compute_pct, memory_mib },
            GpuRequest::Shared { memory_mib } => G::Shared { memory_mib },
            GpuRequest::Milli { milli, count } => G::Milli { milli, count },
        }
    }
}

impl From<Constraints> for gantry_placement::Constraints {
    fn from(v: Constraints) -> Self {
        use gantry_placement::LabelSelector as L;
        gantry_placement::Constraints {
            gpu_models: v.gpu_models,
            min_gpu_memory_mib: v.min_gpu_memory_mib,
            labels: v
                .labels
                .into_iter()
                .map(|l| match l {
                    LabelSelector::Equals { key, value } => L::Equals { key, value },
                    LabelSelector::In { key, values } => L::In { key, values },
                    LabelSelector::NotIn { key, values } => L::NotIn { key, values },
                })
                .collect(),
            spread_replicas: v.spread_replicas,
        }
    }
}

impl From<Policy> for gantry_placement::Policy {
    fn from(v: Policy) -> Self {
        use gantry_placement::Policy as P;
        match v {
            Policy::LeastLoaded => P::LeastLoaded,
            Policy::Binpack => P::Binpack,
            Policy::Spread => P::Spread,
            Policy::Fgd => P::Fgd,
            Policy::FgdPack => P::FgdPack,
        }
    }
}

impl From<GpuShare> for gantry_placement::GpuShare {
    fn from(v: GpuShare) -> Self {
        use gantry_placement::GpuShare as S;
        match v {
            GpuShare::Whole => S::Whole,
            GpuShare::Mig { profile, start } => S::Mig { profile, start },
            GpuShare::Mps { compute_pct, memory_mib } => S::Mps { compute_pct, memory_mib },
            GpuShare::Shared { memory_mib } => S::Shared { memory_mib },
            GpuShare::Milli { milli } => S::Milli { milli },
        }
    }
}

impl From<RestartMode> for wl::RestartMode {
    fn from(v: RestartMode) -> Self {
        match v {
            RestartMode::Always => wl::RestartMode::Always,
            RestartMode::OnFailure => wl::RestartMode::OnFailure,
            RestartMode::Never => wl::RestartMode::Never,
        }
    }
}

impl From<WorkloadSpec> for wl::WorkloadSpec {
    fn from(v: WorkloadSpec) -> Self {
        wl::WorkloadSpec {
            name: v.name,
            runtime: match v.runtime {
                RuntimeSpec::Docker { image } => wl::RuntimeSpec::Docker { image },
                RuntimeSpec::Process { command } => wl::RuntimeSpec::Process { command },
            },
            args: v.args,
            env: v.env,
            ports: v.ports.into_iter().map(|p| wl::PortSpec { name: p.name, port: p.port }).collect(),
            replicas: v.replicas,
            restart: wl::RestartPolicy {
                mode: v.restart.mode.into(),
                backoff_ms: v.restart.backoff_ms,
                max_backoff_ms: v.restart.max_backoff_ms,
            },
            cpu_milli: v.cpu_milli,
            memory_mib: v.memory_mib,
            gpu: v.gpu.into(),
            constraints: v.constraints.into(),
            policy: v.policy.map(Into::into),
            health: v.health.map(|h| wl::HealthCheck {
                path: h.path,
                port: h.port,
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms,
                initial_delay_ms: h.initial_delay_ms,
                failure_threshold: h.failure_threshold,
            }),
            stop_grace_ms: v.stop_grace_ms,
            user: None,
        }
    }
}

impl From<DesiredState> for wl::DesiredState {
    fn from(v: DesiredState) -> Self {
        match v {
            DesiredState::Run => wl::DesiredState::Run,
            DesiredState::Stop => wl::DesiredState::Stop,
        }
    }
}

impl From<ActualState> for wl::ActualState {
    fn from(v: ActualState) -> Self {
        match v {
            ActualState::Pending => wl::ActualState::Pending,
            ActualState::Starting => wl::ActualState::Starting,
            ActualState::Running => wl::ActualState::Running,
            ActualState::Restarting => wl::ActualState::Restarting,
            ActualState::Failed => wl::ActualState::Failed,
            ActualState::Stopped => wl::ActualState::Stopped,
            ActualState::Lost => wl::ActualState::Lost,
        }
    }
}

impl From<HealthState> for wl::HealthState {
    fn from(v: HealthState) -> Self {
        match v {
            HealthState::Unknown => wl::HealthState::Unknown,
            HealthState::Healthy => wl::HealthState::Healthy,
            HealthState::Unhealthy => wl::HealthState::Unhealthy,
        }
    }
}

impl From<AllocGpu> for wl::AllocGpu {
    fn from(v: AllocGpu) -> Self {
        wl::AllocGpu { index: v.index, uuid: v.uuid, share: v.share.into() }
    }
}

impl From<Allocation> for wl::Allocation {
    fn from(v: Allocation) -> Self {
        wl::Allocation {
            id: v.id,
            workload: v.workload,
            version: v.version,
            replica: v.replica,
            node: v.node,
            gpus: v.gpus.into_iter().map(Into::into).collect(),
            cpu_milli: v.cpu_milli,
            memory_mib: v.memory_mib,
            desired: v.desired.into(),
            desired_reason: v.desired_reason,
            actual: v.actual.into(),
            health: v.health.into(),
            restarts: v.restarts,
            message: v.message,
            ports: v.ports,
            devices: v.devices,
            exit_code: None,
            failures: 0,
            start_failed: false,
        }
    }
}

impl From<NewAlloc> for wl::NewAlloc {
    fn from(v: NewAlloc) -> Self {
        wl::NewAlloc {
            workload: v.workload,
            version: v.version,
            replica: v.replica,
            node: v.node,
            gpus: v.gpus.into_iter().map(Into::into).collect(),
            cpu_milli: v.cpu_milli,
            memory_mib: v.memory_mib,
        }
    }
}

impl From<AllocReport> for wl::AllocReport {
    fn from(v: AllocReport) -> Self {
        wl::AllocReport {
            id: v.id,
            actual: v.actual.into(),
            health: v.health.into(),
            restarts: v.restarts,
            message: v.message,
            ports: v.ports,
            devices: v.devices,
            exit_code: None,
            failures: 0,
            start_failed: false,
        }
    }
}
