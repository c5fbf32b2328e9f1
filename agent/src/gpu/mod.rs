//! GPU backends: where the agent learns what GPUs its host has and how busy
//! they are, and where workloads get their devices.
//!
//! Two backends sit behind [`GpuBackend`]:
//!
//! - [`nvml::NvmlBackend`] talks to the NVIDIA driver through NVML. The
//!   library is loaded at run time, so the same binary starts on hosts
//!   without a driver and only fails when this backend is asked for.
//! - [`sim::SimBackend`] invents GPUs from a spec such as `8xH100-80GB`. Tests,
//!   CI, demos and load tests use it; it behaves like the hardware as far as
//!   the agent can tell: MIG instances with NVIDIA's geometry, a modelled MPS
//!   control daemon per GPU, and load that follows what runs.
//!
//! Both answer [`GpuBackend::inventory`] (static facts, sent at registration)
//! and [`GpuBackend::sample`] (one live sample of every GPU, sent with
//! heartbeats). The workload manager uses the rest of the trait.
//!
//! [`Gpus`] is the one handle the sampler and the workload manager share; it
//! also carries each GPU's sharing mode ([`sharing`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use gantry_common::model::{GpuInfo, GpuSharing, GpuTelemetry};
use gantry_placement::GpuShare;

pub mod nvml;
mod nvml_mig;
pub mod sharing;
pub mod sim;

/// A source of GPU facts and telemetry, and of workload devices.
pub trait GpuBackend: Send {
    /// The backend's name as reported to the cluster: `nvml` or `sim`.
    fn name(&self) -> &'static str;

    /// Static facts about every GPU, sorted by index.
    fn inventory(&self) -> Result<Vec<GpuInfo>, GpuError>;

    /// One sample of every GPU, sorted by index.
    fn sample(&mut self) -> Result<Vec<GpuTelemetry>, GpuError>;

    /// The `MIG-…` device id of the MIG instance `profile` at memory slice
    /// `start` on GPU `index`. The sim creates the instance (and returns the
    /// existing one when it is there already); NVML only looks for one the
    /// operator created.
    fn open_mig(&mut self, index: u32, profile: &str, start: u8) -> Result<String, GpuError>;

    /// The allocation that used a MIG instance has ended. The sim destroys
    /// the instance; on real hardware it stays for the operator to manage.
    fn close_mig(&mut self, index: u32, profile: &str, start: u8) -> Result<(), GpuError>;

    /// What runs now: the sim's utilisation and memory follow it; NVML keeps
    /// the MPS client counts for its telemetry.
    fn set_running(&mut self, running: &Running);

    /// The modelled MPS control daemons of a backend that models them (the
    /// sim). `None`: the agent runs `nvidia-cuda-mps-control` itself.
    fn mps_model(&mut self) -> Option<&mut dyn MpsModel> {
        None
    }
}

/// The shares running on this node, as the workload manager last saw them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Running {
    /// Every running share: GPU index and what it takes of the GPU.
    pub shares: Vec<(u32, GpuShare)>,
    /// MPS control daemons the agent runs, by GPU index: their client count.
    pub mps_clients: BTreeMap<u32, u32>,
}

/// A modelled MPS control daemon per GPU (`nvidia-cuda-mps-control -d`).
pub trait MpsModel {
    /// Starts GPU `index`'s daemon; starting one that runs is refused, as the
    /// real daemon refuses a second instance on the same pipe directory.
    fn start_daemon(&mut self, index: u32) -> Result<(), GpuError>;
    /// Stops it (`echo quit | nvidia-cuda-mps-control`); stopping none is refused.
    fn stop_daemon(&mut self, index: u32) -> Result<(), GpuError>;
    fn daemon_running(&self, index: u32) -> bool;
    /// Clients connected to GPU `index`'s daemon; refused without a daemon
    /// (a CUDA client then fails to start).
    fn set_clients(&mut self, index: u32, clients: u32) -> Result<(), GpuError>;
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

    /// The blocking thread that read the GPUs panicked or was cancelled.
    #[error("sampling thread: {0}")]
    SamplingThread(String),

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

    /// A MIG instance asked of a GPU whose MIG mode is off.
    #[error("GPU {index} ({model}): MIG mode is off, so it has no MIG instances (the agent never changes MIG mode)")]
    MigOff { index: u32, model: String },

    /// NVIDIA's geometry refuses the instance (unknown profile, bad start, overlap).
    #[error("GPU {index}: {source}")]
    MigGeometry { index: u32, source: gantry_placement::mig::MigError },

    /// On real hardware the operator creates MIG instances; this one is not there.
    #[error(
        "GPU {index}: no usable MIG instance {profile} at memory slice {start}: the operator must create it \
         (nvidia-smi mig -i {index} -cgi {profile} -C){detail}"
    )]
    MigInstanceMissing { index: u32, profile: String, start: u8, detail: String },

    /// The modelled MPS daemon refused a request.
    #[error("GPU {index}: MPS control daemon: {reason}")]
    Mps { index: u32, reason: String },
}

/// The GPU backend shared by the sampler and the workload manager, with the
/// sharing mode of each GPU. Cloning shares the backend.
///
/// A std `Mutex`: every backend call is synchronous and nothing awaits
/// while it is held.
#[derive(Clone)]
pub struct Gpus {
    backend: Arc<Mutex<Box<dyn GpuBackend>>>,
    sharing: Arc<Vec<GpuSharing>>,
    name: &'static str,
    count: u32,
}

impl Gpus {
    /// Wraps `backend`, giving GPU `i` the sharing mode `sharing[i]`
    /// (resolved by [`sharing::resolve`]).
    pub fn new(backend: Box<dyn GpuBackend>, sharing: Vec<GpuSharing>) -> Gpus {
        let name = backend.name();
        let count = backend.inventory().map_or(sharing.len(), |i| i.len()) as u32;
        Gpus { backend: Arc::new(Mutex::new(backend)), sharing: Arc::new(sharing), name, count }
    }

    /// Number of GPUs, as found at start.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The backend's inventory with each GPU's sharing mode.
    pub fn inventory(&self) -> Result<Vec<GpuInfo>, GpuError> {
        let mut gpus = self.lock().inventory()?;
        for g in &mut gpus {
            if let Some(s) = self.sharing.get(g.index as usize) {
                g.sharing = *s;
            }
        }
        Ok(gpus)
    }

    pub fn sample(&self) -> Result<Vec<GpuTelemetry>, GpuError> {
        self.lock().sample()
    }

    /// The sharing mode of GPU `index` (exclusive for an unknown index).
    pub fn sharing(&self, index: u32) -> GpuSharing {
        self.sharing.get(index as usize).copied().unwrap_or(GpuSharing::Exclusive)
    }

    /// Runs `f` on the backend.
    pub fn with<R>(&self, f: impl FnOnce(&mut dyn GpuBackend) -> R) -> R {
        f(self.lock().as_mut())
    }

    fn lock(&self) -> MutexGuard<'_, Box<dyn GpuBackend>> {
        self.backend.lock().unwrap_or_else(|p| p.into_inner())
    }
}
