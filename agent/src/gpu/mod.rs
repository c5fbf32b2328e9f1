//! GPU backends: where the agent learns what GPUs its host has and how busy
//! they are.
//!
//! Two backends sit behind [`GpuBackend`]:
//!
//! - [`nvml::NvmlBackend`] talks to the NVIDIA driver through NVML. The
//!   library is loaded at run time, so the same binary starts on hosts
//!   without a driver and only fails when this backend is asked for.
//! - [`sim::SimBackend`] invents GPUs from a spec such as `8xH100-80GB`. Tests,
//!   CI, demos and load tests use it; its load and fault hooks let a caller
//!   drive utilisation, memory, MIG mode and health.
//!
//! Both answer the same two questions: [`GpuBackend::inventory`] (static facts,
//! sent at registration) and [`GpuBackend::sample`] (one live sample of every
//! GPU, sent with heartbeats).

use gantry_common::model::{GpuInfo, GpuTelemetry};

pub mod nvml;
pub mod sim;

/// A source of GPU facts and telemetry.
pub trait GpuBackend: Send {
    /// The backend's name as reported to the cluster: `nvml` or `sim`.
    fn name(&self) -> &'static str;

    /// Static facts about every GPU, sorted by index.
    fn inventory(&self) -> Result<Vec<GpuInfo>, GpuError>;

    /// One sample of every GPU, sorted by index.
    fn sample(&mut self) -> Result<Vec<GpuTelemetry>, GpuError>;
}

/// Why a backend could not answer, or refused a request.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The NVML library could not be loaded: no NVIDIA driver on this host.
    #[error(
        "NVIDIA driver library {library} not found: this host has no NVIDIA driver; \
         install it, or run with --gpu-backend sim ({detail})"
    )]
    DriverMissing { library: String, detail: String },

    /// The library loaded but the kernel driver is not running.
    #[error(
        "NVIDIA driver library {library} was found but the kernel driver is not loaded; \
         load it (modprobe nvidia) or run with --gpu-backend sim ({detail})"
    )]
    DriverNotLoaded { library: String, detail: String },

    /// An NVML call failed.
    #[error("NVML {op} failed: {detail}")]
    Nvml { op: &'static str, detail: String },

    /// A GPU index that this node does not have.
    #[error("GPU index {index} does not exist: this node has {count} GPUs")]
    NoSuchGpu { index: u32, count: u32 },

    /// More memory than the GPU has (the hardware would fail the allocation).
    #[error("GPU {index} ({model}): {requested_mib} MiB requested but it has only {total_mib} MiB")]
    OutOfMemory { index: u32, model: String, requested_mib: u64, total_mib: u64 },

    /// Utilisation is a percentage.
    #[error("GPU {index}: utilization {pct}% is not between 0 and 100")]
    UtilizationOutOfRange { index: u32, pct: u32 },

    /// MIG asked of a GPU that cannot be partitioned.
    #[error("GPU {index} ({model}) does not support MIG; its MIG mode can only be unsupported")]
    MigNotSupported { index: u32, model: String },

    /// A MIG-capable GPU is either enabled or disabled, never unsupported.
    #[error("GPU {index} ({model}) supports MIG; its MIG mode can be enabled or disabled, not unsupported")]
    MigModeInvalid { index: u32, model: String },
}
