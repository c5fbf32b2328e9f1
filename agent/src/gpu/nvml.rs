//! GPUs as the NVIDIA driver reports them, through NVML.
//!
//! `libnvidia-ml.so.1` is loaded when [`NvmlBackend::open`] runs, not when the
//! binary starts, so one agent binary runs on every host and only this backend
//! needs a driver.
//!
//! The file is a thin shell around pure conversions (model names, units, MIG
//! mode, NVLink grouping, health): the shell makes NVML calls and the
//! conversions, tested without a GPU, decide what the numbers mean.
//!
//! Health comes from three signals, worst first:
//!
//! 1. a device that no longer answers (`GpuLost`) is `Unhealthy("GPU lost")`;
//! 2. a fatal Xid (critical Xid events, polled without blocking at every
//!    sample) is `Unhealthy("Xid N")` and stays so for the life of the
//!    backend: those Xids need a GPU reset, after which the agent restarts;
//! 3. uncorrected volatile ECC errors are `Unhealthy`, pages waiting to be
//!    retired are `Degraded`; GPUs without ECC are judged on 1 and 2 only.
//!
//! A metric NVML cannot read for another reason is reported as 0 and the GPU
//! as `Degraded`, so one flaky query neither hides the GPU nor takes it out.
//!
//! Workload devices: the agent never creates or destroys MIG instances on
//! real hardware (the operator does, with `nvidia-smi mig`). The NVML binding
//! this agent uses (nvml-wrapper 0.11) has no MIG device API, so a MIG
//! allocation fails with a message that says so and how to create the
//! instance; `mig_instances` is reported as 0. MPS client counts come from
//! the control daemons the agent runs (see `workloads::mps`).

use std::ffi::OsStr;
use std::sync::OnceLock;

use gantry_common::model::{GpuHealth, GpuInfo, GpuSharing, GpuTelemetry, MigMode};
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};

use super::{GpuBackend, GpuError, Running};

/// The driver's NVML library (the unversioned `.so` only comes with dev packages).
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// GPUs through NVML.
pub struct NvmlBackend {
    nvml: &'static Nvml,
    count: u32,
    /// One event set per GPU that supports critical Xid events, so a GPU whose
    /// registration fails costs only its own Xid reporting.
    xid_watches: Vec<XidWatch>,
    /// Last fatal Xid seen per GPU index (sticky, see the module docs).
    fatal_xid: Vec<Option<u64>>,
    /// Clients of the MPS control daemons the agent runs, by GPU index.
    mps_clients: std::collections::BTreeMap<u32, u32>,
}

struct XidWatch {
    index: u32,
    events: EventSet<'static>,
}

/// NVML is initialised once per process and never shut down: event sets
/// borrow the handle, and the backend (boxed behind [`GpuBackend`]) must not.
static NVML: OnceLock<Nvml> = OnceLock::new();

impl NvmlBackend {
    /// Loads NVML and finds the GPUs. Without a driver this fails with
    /// [`GpuError::DriverMissing`], whose message tells the operator what to do.
    pub fn open() -> Result<NvmlBackend, GpuError> {
        let nvml = shared_nvml(NVML_LIBRARY)?;
        let count = nvml.device_count().map_err(nvml_error("device count"))?;
        let xid_watches = (0..count).filter_map(|index| watch_xid(nvml, index)).collect();
        Ok(NvmlBackend {
            nvml,
            count,
            xid_watches,
            fatal_xid: vec![None; count as usize],
            mps_clients: Default::default(),
        })
    }

    fn device(&self, index: u32) -> Result<Device<'static>, NvmlError> {
        self.nvml.device_by_index(index)
    }

    /// Drains pending Xid events without blocking and remembers fatal ones.
    fn poll_xid(&mut self) {
        for watch in &self.xid_watches {
            // Bounded so a storm of events cannot stall a sample.
            for _ in 0..MAX_EVENTS_PER_SAMPLE {
                match watch.events.wait(0) {
                    Ok(event) => {
                        if let Some(XidError::Value(code)) = event.event_data {
                            if is_fatal_xid(code) {
                                tracing::error!(gpu = watch.index, xid = code, "fatal Xid error");
                                if let Some(slot) = self.fatal_xid.get_mut(watch.index as usize) {
                                    *slot = Some(code);
                                }
                            } else {
                                tracing::warn!(gpu = watch.index, xid = code, "Xid error");
                            }
                        }
                    }
                    Err(NvmlError::Timeout) => break,
                    Err(e) => {
                        tracing::debug!(gpu = watch.index, error = %e, "Xid event wait failed");
                        break;
                    }
                }
            }
        }
    }

    fn sample_one(&self, index: u32) -> GpuTelemetry {
        let mut signals = HealthSignals {
            fatal_xid: self.fatal_xid.get(index as usize).copied().flatten(),
            ..HealthSignals::default()
        };
        let device = match self.device(index) {
            Ok(d) => d,
            Err(e) => {
                signals.note_error("device handle", &e);
                return GpuTelemetry {
                    index,
                    memory_used_mib: 0,
                    utilization_pct: 0,
                    temperature_c: 0,
                    power_w: 0.0,
                    health: judge_health(&signals),
                    mps_clients: None,
                    mig_instances: 0,
                };
            }
        };
        let memory_used_mib =
            signals.read("memory info", device.memory_info()).map_or(0, |m| bytes_to_mib(m.used));
        // Not supported while MIG is on: per-instance figures live elsewhere.
        let utilization_pct =
            signals.read("utilization", device.utilization_rates()).map_or(0, |u| u.gpu.min(100));
        let temperature_c =
            signals.read("temperature", device.temperature(TemperatureSensor::Gpu)).unwrap_or(0);
        let power_w = signals.read("power usage", device.power_usage()).map_or(0.0, milliwatts_to_watts);
        signals.uncorrected_ecc = signals
            .read("ECC error count", device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile));
        signals.pages_pending_retirement = signals.read("retired pages", device.are_pages_pending_retired());
        GpuTelemetry {
            index,
            memory_used_mib,
            utilization_pct,
            temperature_c,
            power_w,
            health: judge_health(&signals),
            mps_clients: self.mps_clients.get(&index).copied(),
            mig_instances: 0,
        }
    }
}

impl GpuBackend for NvmlBackend {
    fn name(&self) -> &'static str {
        "nvml"
    }

    /// NVLink domains come from the remote PCI addresses of each GPU's active
    /// links; see [`nvlink_domains`].
    fn inventory(&self) -> Result<Vec<GpuInfo>, GpuError> {
        let mut gpus = Vec::with_capacity(self.count as usize);
        let mut bus_ids = Vec::with_capacity(self.count as usize);
        let mut remotes = Vec::with_capacity(self.count as usize);
        for index in 0..self.count {
            let device = self.device(index).map_err(nvml_error("device handle"))?;
            let name = device.name().map_err(nvml_error("device name"))?;
            let memory_total_mib =
                bytes_to_mib(device.memory_info().map_err(nvml_error("memory info"))?.total);
            let mig_mode =
                mig_mode_from(device.mig_mode().map(|m| m.current)).map_err(nvml_error("MIG mode"))?;
            gpus.push(GpuInfo {
                index,
                uuid: device.uuid().map_err(nvml_error("device UUID"))?,
                model: short_model_name(&name, memory_total_mib),
                memory_total_mib,
                mig_mode,
                nvlink_domain: None,
                sharing: if mig_mode == MigMode::Enabled { GpuSharing::Mig } else { GpuSharing::Exclusive },
            });
            bus_ids.push(device.pci_info().map(|p| p.bus_id).unwrap_or_default());
            remotes.push(nvlink_remotes(&device));
        }
        for (gpu, domain) in gpus.iter_mut().zip(nvlink_domains(&bus_ids, &remotes)) {
            gpu.nvlink_domain = domain;
        }
        Ok(gpus)
    }

    fn sample(&mut self) -> Result<Vec<GpuTelemetry>, GpuError> {
        self.poll_xid();
        Ok((0..self.count).map(|index| self.sample_one(index)).collect())
    }

    fn open_mig(&mut self, index: u32, profile: &str, start: u8) -> Result<String, GpuError> {
        if index >= self.count {
            return Err(GpuError::NoSuchGpu { index, count: self.count });
        }
        let device = self.device(index).map_err(nvml_error("device handle"))?;
        let mode = mig_mode_from(device.mig_mode().map(|m| m.current)).map_err(nvml_error("MIG mode"))?;
        if mode != MigMode::Enabled {
            let model = device.name().unwrap_or_default();
            return Err(GpuError::MigOff { index, model });
        }
        let name = device.name().unwrap_or_default();
        let memory_mib = device.memory_info().map(|m| bytes_to_mib(m.total)).unwrap_or(0);
        let model = short_model_name(&name, memory_mib);
        let missing = |detail: String| GpuError::MigInstanceMissing {
            index,
            profile: profile.to_string(),
            start,
            detail,
        };
        let table = gantry_placement::mig::table_for_model(&model)
            .ok_or_else(|| missing(format!("; {model} has no known MIG geometry")))?;
        let wanted = table.profile(profile).map_err(|source| GpuError::MigGeometry { index, source })?;
        let devices = super::nvml_mig::list(NVML_LIBRARY, &device).map_err(|e| missing(format!("; {e}")))?;
        match super::nvml_mig::find(&devices, start, wanted.memory_slices) {
            Some(d) => Ok(d.uuid.clone()),
            None => {
                let have: Vec<String> = devices.iter().map(|d| format!("{}:{}", d.start, d.size)).collect();
                Err(missing(format!(
                    "; GPU instances there (start:size in memory slices): [{}]",
                    have.join(", ")
                )))
            }
        }
    }

    fn close_mig(&mut self, _index: u32, _profile: &str, _start: u8) -> Result<(), GpuError> {
        // The operator owns MIG instances on real hardware.
        Ok(())
    }

    fn set_running(&mut self, running: &Running) {
        self.mps_clients = running.mps_clients.clone();
    }
}

/// Xid codes after which a GPU must not receive work until it is reset:
/// uncorrectable memory errors (48, 63, 64, 92, 94, 95), NVLink failure (74),
/// fallen off the bus (79), GSP firmware failures (119, 120).
pub const FATAL_XIDS: &[u64] = &[48, 63, 64, 74, 79, 92, 94, 95, 119, 120];

const MAX_EVENTS_PER_SAMPLE: usize = 64;
/// NVML's `NVML_NVLINK_MAX_LINKS`.
const MAX_NVLINKS: u32 = 18;
/// NVML's `NVML_DEVICE_MIG_ENABLE`.
const NVML_MIG_ENABLED: u32 = 1;

/// Whether Xid `code` makes a GPU unusable.
pub fn is_fatal_xid(code: u64) -> bool {
    FATAL_XIDS.contains(&code)
}

/// NVML reports bytes; the model counts MiB (rounded down, as `nvidia-smi`).
pub fn bytes_to_mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}

/// NVML reports milliwatts.
pub fn milliwatts_to_watts(mw: u32) -> f64 {
    f64::from(mw) / 1000.0
}

/// The current MIG mode, from `nvmlDeviceGetMigMode`; a GPU without MIG
/// answers `NotSupported`.
pub fn mig_mode_from(current: Result<u32, NvmlError>) -> Result<MigMode, NvmlError> {
    match current {
        Ok(NVML_MIG_ENABLED) => Ok(MigMode::Enabled),
        Ok(_) => Ok(MigMode::Disabled),
        Err(NvmlError::NotSupported) => Ok(MigMode::Unsupported),
        Err(e) => Err(e),
    }
}

/// Short model name as constraints use it (`H100-80GB`): the product name
/// without vendor, brand, form factor and memory type, then the memory size
/// the product is sold with. The size comes from the memory NVML reports, not
/// from the name, because some names carry none (`NVIDIA L4`) and some carry
/// another (`GH200 480GB` counts the CPU's memory).
pub fn short_model_name(nvml_name: &str, memory_total_mib: u64) -> String {
    let mut family: String = nvml_name
        .split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .filter(|t| !t.is_empty() && !is_noise_token(t))
        .map(|t| t.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '.').collect::<String>())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if family.is_empty() {
        family = "GPU".to_string();
    }
    family.truncate(MAX_FAMILY_LEN);
    let family = family.trim_end_matches('-');
    format!("{family}-{}GB", nominal_gib(memory_total_mib))
}

const MAX_FAMILY_LEN: usize = 48;

/// Memory sizes GPUs are sold with, in GB.
const NOMINAL_GIB: &[u64] = &[
    1, 2, 3, 4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 128, 141, 144, 180, 192, 256, 288,
];

/// The sold memory size for the memory NVML reports: ECC and the firmware
/// take up to about 7 % (an L4 reports 23,034 MiB of its 24 GB), so the
/// smallest sold size at most 8 % above the reported one; else whole GiB.
pub fn nominal_gib(memory_total_mib: u64) -> u64 {
    let gib = memory_total_mib as f64 / 1024.0;
    NOMINAL_GIB
        .iter()
        .copied()
        .find(|&n| n as f64 >= gib - 0.05 && (n as f64 - gib) / n as f64 <= 0.08)
        .unwrap_or_else(|| gib.round() as u64)
}

fn is_noise_token(token: &str) -> bool {
    let t = token.to_ascii_uppercase();
    let is_size =
        t.strip_suffix("GB").is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    is_size
        || matches!(t.as_str(), "NVIDIA" | "TESLA" | "GEFORCE" | "PCIE" | "NVL" | "GPU")
        || t.starts_with("SXM")
        || t.starts_with("HBM")
}

/// What the health judgement is made from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HealthSignals {
    /// The device stopped answering.
    pub lost: bool,
    /// Last fatal Xid seen on this GPU.
    pub fatal_xid: Option<u64>,
    /// Uncorrected volatile ECC errors; `None` without ECC.
    pub uncorrected_ecc: Option<u64>,
    /// Pages waiting to be retired at the next reset; `None` when unsupported.
    pub pages_pending_retirement: Option<bool>,
    /// Queries that failed for another reason: `op: error`.
    pub unreadable: Vec<String>,
}

impl HealthSignals {
    /// Keeps the value of an NVML query; an unsupported query gives `None`
    /// silently, a lost device or another failure is noted.
    fn read<T>(&mut self, op: &str, result: Result<T, NvmlError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(NvmlError::NotSupported) => None,
            Err(e) => {
                self.note_error(op, &e);
                None
            }
        }
    }

    fn note_error(&mut self, op: &str, e: &NvmlError) {
        if matches!(e, NvmlError::GpuLost) {
            self.lost = true;
        } else {
            self.unreadable.push(format!("{op}: {e}"));
        }
    }
}

/// The health a GPU reports, worst signal first.
pub fn judge_health(s: &HealthSignals) -> GpuHealth {
    if s.lost {
        return GpuHealth::Unhealthy("GPU lost".to_string());
    }
    if let Some(code) = s.fatal_xid {
        return GpuHealth::Unhealthy(format!("Xid {code}"));
    }
    if let Some(n) = s.uncorrected_ecc.filter(|&n| n > 0) {
        return GpuHealth::Unhealthy(format!("uncorrected ECC errors: {n}"));
    }
    if s.pages_pending_retirement == Some(true) {
        return GpuHealth::Degraded("retired pages pending; reset the GPU to retire them".to_string());
    }
    if !s.unreadable.is_empty() {
        return GpuHealth::Degraded(format!("NVML cannot read {}", s.unreadable.join("; ")));
    }
    GpuHealth::Healthy
}

/// Groups GPUs into NVLink domains. `bus_ids[i]` is GPU i's PCI address and
/// `remotes[i]` the remote PCI addresses of its active links. GPUs linked to
/// each other share a domain; GPUs linked to anything that is not one of them
/// (an NVSwitch) share the node's switch fabric. GPUs without active links
/// get `None`. Domains are numbered from 0 in order of their lowest GPU index.
pub fn nvlink_domains(bus_ids: &[String], remotes: &[Vec<String>]) -> Vec<Option<u32>> {
    let n = bus_ids.len();
    let switch = n;
    let mut parent: Vec<usize> = (0..=n).collect();
    let normalized: Vec<String> = bus_ids.iter().map(|b| normalize_bus_id(b)).collect();
    for (i, links) in remotes.iter().enumerate().take(n) {
        for remote in links {
            let remote = normalize_bus_id(remote);
            let peer = normalized.iter().position(|b| !b.is_empty() && *b == remote).unwrap_or(switch);
            union(&mut parent, i, peer);
        }
    }
    let mut roots: Vec<usize> = Vec::new();
    (0..n)
        .map(|i| {
            if remotes.get(i).is_none_or(|l| l.is_empty()) {
                return None;
            }
            let root = find(&mut parent, i);
            let domain = roots.iter().position(|&r| r == root).unwrap_or_else(|| {
                roots.push(root);
                roots.len() - 1
            });
            Some(domain as u32)
        })
        .collect()
}

/// `00000000:07:00.0` and `0000:07:00.0` name the same device.
fn normalize_bus_id(bus_id: &str) -> String {
    let b = bus_id.trim().to_ascii_lowercase();
    match b.split_once(':') {
        Some((domain, rest)) if rest.contains(':') => {
            let domain = domain.trim_start_matches('0');
            format!("{domain}:{rest}")
        }
        _ => b,
    }
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        parent[ra.max(rb)] = ra.min(rb);
    }
}

/// Maps a failed NVML initialisation to what the operator should do.
pub fn init_error(library: &str, e: NvmlError) -> GpuError {
    let library = library.to_string();
    match e {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => {
            GpuError::DriverMissing { library, detail: e.to_string() }
        }
        NvmlError::DriverNotLoaded => GpuError::DriverNotLoaded { library, detail: e.to_string() },
        e => GpuError::Nvml { op: "init", detail: e.to_string() },
    }
}

fn shared_nvml(library: &str) -> Result<&'static Nvml, GpuError> {
    if let Some(nvml) = NVML.get() {
        return Ok(nvml);
    }
    let nvml = init_nvml(library)?;
    // Two racing opens both initialise; NVML counts its initialisations and the
    // loser's handle shuts its own reference down when dropped.
    Ok(NVML.get_or_init(|| nvml))
}

fn init_nvml(library: &str) -> Result<Nvml, GpuError> {
    Nvml::builder().lib_path(OsStr::new(library)).init().map_err(|e| init_error(library, e))
}

fn nvml_error(op: &'static str) -> impl Fn(NvmlError) -> GpuError {
    move |e| GpuError::Nvml { op, detail: e.to_string() }
}

/// Registers for critical Xid events on GPU `index`; `None` when the GPU
/// cannot report them (its health then rests on ECC and reachability).
fn watch_xid(nvml: &'static Nvml, index: u32) -> Option<XidWatch> {
    let attempt = || -> Result<Option<XidWatch>, String> {
        let device = nvml.device_by_index(index).map_err(|e| e.to_string())?;
        let supported = device.supported_event_types().map_err(|e| e.to_string())?;
        if !supported.contains(EventTypes::CRITICAL_XID_ERROR) {
            return Ok(None);
        }
        let set = nvml.create_event_set().map_err(|e| e.to_string())?;
        let events =
            device.register_events(EventTypes::CRITICAL_XID_ERROR, set).map_err(|e| e.to_string())?;
        Ok(Some(XidWatch { index, events }))
    };
    match attempt() {
        Ok(watch) => {
            if watch.is_none() {
                tracing::info!(gpu = index, "GPU does not report Xid events; health from ECC only");
            }
            watch
        }
        Err(e) => {
            tracing::warn!(gpu = index, error = %e, "cannot watch Xid events; health from ECC only");
            None
        }
    }
}

/// Remote PCI addresses of the device's active NVLinks.
fn nvlink_remotes(device: &Device<'_>) -> Vec<String> {
    (0..MAX_NVLINKS)
        .map(|link| device.link_wrapper_for(link))
        .filter(|l| l.is_active().unwrap_or(false))
        .filter_map(|l| l.remote_pci_info().ok().map(|p| p.bus_id))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_shortened() {
        let table = [
            ("NVIDIA H100 80GB HBM3", 81_559, "H100-80GB"),
            ("NVIDIA H100 PCIe", 81_559, "H100-80GB"),
            ("NVIDIA H100 NVL", 95_830, "H100-94GB"),
            ("NVIDIA H200", 143_771, "H200-141GB"),
            ("NVIDIA A100-SXM4-40GB", 40_960, "A100-40GB"),
            ("NVIDIA A100-SXM4-80GB", 81_920, "A100-80GB"),
            ("NVIDIA A100 80GB PCIe", 81_920, "A100-80GB"),
            ("NVIDIA A30", 24_576, "A30-24GB"),
            ("NVIDIA L40S", 46_068, "L40S-48GB"),
            ("NVIDIA L4", 23_034, "L4-24GB"),
            ("NVIDIA A10", 23_028, "A10-24GB"),
            ("Tesla T4", 15_360, "T4-16GB"),
            ("Tesla V100-SXM2-16GB", 16_160, "V100-16GB"),
            ("NVIDIA B200", 183_359, "B200-180GB"),
            ("NVIDIA GH200 480GB", 97_871, "GH200-96GB"),
            ("NVIDIA GeForce RTX 4090", 24_564, "RTX-4090-24GB"),
            ("NVIDIA GeForce GTX 1080 Ti", 11_264, "GTX-1080-Ti-11GB"),
            ("NVIDIA RTX 6000 Ada Generation", 49_140, "RTX-6000-Ada-Generation-48GB"),
            ("Weird/Board (rev 2)", 5_000, "WeirdBoard-rev-2-5GB"),
            ("", 8_192, "GPU-8GB"),
        ];
        for (name, mib, want) in table {
            assert_eq!(short_model_name(name, mib), want, "{name} with {mib} MiB");
        }
        let long = short_model_name(&"X".repeat(200), 8_192);
        assert!(long.len() <= MAX_FAMILY_LEN + 6, "{long}");
        assert!(gantry_common::model::validate_name("model", &long).is_ok());
    }

    #[test]
    fn short_names_match_the_sim_catalogue() {
        // What the real card reports must be the name `sim` uses for it, so a
        // constraint written against a simulated fleet holds on the real one.
        for (name, spec) in [
            ("NVIDIA H100 80GB HBM3", "H100-80GB"),
            ("NVIDIA H200", "H200-141GB"),
            ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
            ("NVIDIA L4", "L4-24GB"),
            ("NVIDIA L40S", "L40S-48GB"),
            ("Tesla T4", "T4-16GB"),
        ] {
            let model = gantry_common::gpu_spec::lookup_model(spec).unwrap();
            assert_eq!(short_model_name(name, model.memory_total_mib), spec);
        }
    }

    #[test]
    fn units_are_converted() {
        assert_eq!(bytes_to_mib(85_520_809_984), 81_559);
        assert_eq!(bytes_to_mib(1024 * 1024 - 1), 0);
        assert_eq!(bytes_to_mib(0), 0);
        assert_eq!(milliwatts_to_watts(69_874), 69.874);
        assert_eq!(milliwatts_to_watts(0), 0.0);
        assert_eq!(nominal_gib(40_960), 40);
        assert_eq!(nominal_gib(0), 0);
    }

    #[test]
    fn mig_mode_is_mapped() {
        assert_eq!(mig_mode_from(Ok(1)).unwrap(), MigMode::Enabled);
        assert_eq!(mig_mode_from(Ok(0)).unwrap(), MigMode::Disabled);
        assert_eq!(mig_mode_from(Err(NvmlError::NotSupported)).unwrap(), MigMode::Unsupported);
        assert!(matches!(mig_mode_from(Err(NvmlError::GpuLost)), Err(NvmlError::GpuLost)));
    }

    #[test]
    fn health_takes_the_worst_signal() {
        let healthy = HealthSignals::default();
        assert_eq!(judge_health(&healthy), GpuHealth::Healthy);

        let no_ecc =
            HealthSignals { uncorrected_ecc: None, pages_pending_retirement: None, ..healthy.clone() };
        assert_eq!(judge_health(&no_ecc), GpuHealth::Healthy);

        let clean = HealthSignals {
            uncorrected_ecc: Some(0),
            pages_pending_retirement: Some(false),
            ..healthy.clone()
        };
        assert_eq!(judge_health(&clean), GpuHealth::Healthy);

        let pending = HealthSignals { pages_pending_retirement: Some(true), ..clean.clone() };
        assert!(matches!(judge_health(&pending), GpuHealth::Degraded(r) if r.contains("retired pages")));

        let ecc = HealthSignals { uncorrected_ecc: Some(3), ..pending.clone() };
        assert_eq!(judge_health(&ecc), GpuHealth::Unhealthy("uncorrected ECC errors: 3".into()));

        let xid = HealthSignals { fatal_xid: Some(79), ..ecc.clone() };
        assert_eq!(judge_health(&xid), GpuHealth::Unhealthy("Xid 79".into()));

        let lost = HealthSignals { lost: true, ..xid };
        assert_eq!(judge_health(&lost), GpuHealth::Unhealthy("GPU lost".into()));
    }

    #[test]
    fn nvml_failures_become_signals() {
        let mut s = HealthSignals::default();
        assert_eq!(s.read("ECC error count", Err::<u64, _>(NvmlError::NotSupported)), None);
        assert_eq!(judge_health(&s), GpuHealth::Healthy, "no ECC is not a fault");

        assert_eq!(s.read("power usage", Err::<u32, _>(NvmlError::NoPermission)), None);
        assert!(matches!(judge_health(&s), GpuHealth::Degraded(r) if r.contains("power usage")));

        assert_eq!(s.read("memory info", Err::<u64, _>(NvmlError::GpuLost)), None);
        assert_eq!(judge_health(&s), GpuHealth::Unhealthy("GPU lost".into()));
        assert_eq!(s.read("temperature", Ok(41u32)), Some(41));
    }

    #[test]
    fn fatal_xids_are_recognised() {
        for code in [48, 63, 64, 74, 79, 92, 94, 95] {
            assert!(is_fatal_xid(code), "Xid {code}");
        }
        // Application faults (13: graphics engine exception, 31: MMU fault,
        // 43: channel stopped) are the workload's problem, not the GPU's.
        for code in [13, 31, 43, 0] {
            assert!(!is_fatal_xid(code), "Xid {code}");
        }
    }

    #[test]
    fn nvlink_domains_follow_the_links() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Eight SXM GPUs on NVSwitches (remote ends are switches).
        let bus = ids(&["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0"]);
        let switched = vec![ids(&["0000:c0:00.0", "0000:c1:00.0"]); 4];
        assert_eq!(nvlink_domains(&bus, &switched), [Some(0); 4]);

        // Two bridged pairs and a GPU with no links; remote ids in the long form.
        let pairs = vec![
            ids(&["00000000:2A:00.0"]),
            ids(&["00000000:18:00.0"]),
            ids(&["00000000:5D:00.0", "00000000:5d:00.0"]),
            ids(&["00000000:3a:00.0"]),
        ];
        assert_eq!(nvlink_domains(&bus, &pairs), [Some(0), Some(0), Some(1), Some(1)]);

        let none = vec![vec![]; 4];
        assert_eq!(nvlink_domains(&bus, &none), [None; 4]);
        let mixed = vec![vec![], ids(&["0000:3a:00.0"]), ids(&["0000:2a:00.0"]), vec![]];
        assert_eq!(nvlink_domains(&bus, &mixed), [None, Some(0), Some(0), None]);
        assert!(nvlink_domains(&[], &[]).is_empty());
    }

    #[test]
    fn missing_library_says_what_to_do() {
        let err = init_error(NVML_LIBRARY, NvmlError::LibraryNotFound);
        let msg = err.to_string();
        assert!(matches!(err, GpuError::DriverMissing { .. }));
        assert!(msg.starts_with("NVIDIA driver library libnvidia-ml.so.1 not found"), "{msg}");
        assert!(msg.contains("--gpu-backend sim"), "{msg}");

        let err = init_nvml("libgantry-no-such-library.so.1").unwrap_err();
        assert!(matches!(err, GpuError::DriverMissing { .. }), "{err}");
        assert!(err.to_string().contains("libgantry-no-such-library.so.1 not found"), "{err}");

        assert!(matches!(
            init_error(NVML_LIBRARY, NvmlError::DriverNotLoaded),
            GpuError::DriverNotLoaded { .. }
        ));
        assert!(matches!(
            init_error(NVML_LIBRARY, NvmlError::NoPermission),
            GpuError::Nvml { op: "init", .. }
        ));
    }

    /// Without a driver (CI, this workspace's machines) `open` fails with the
    /// operator's message; on a GPU host it must find coherent GPUs.
    #[test]
    fn open_finds_gpus_or_explains_why_not() {
        match NvmlBackend::open() {
            Err(err @ GpuError::DriverMissing { .. }) => {
                let msg = err.to_string();
                assert!(msg.contains("libnvidia-ml.so.1 not found"), "{msg}");
                assert!(msg.contains("install it, or run with --gpu-backend sim"), "{msg}");
            }
            Err(GpuError::DriverNotLoaded { .. }) => {}
            Err(other) => panic!("unexpected NVML failure: {other}"),
            Ok(mut backend) => {
                assert_eq!(backend.name(), "nvml");
                let inv = backend.inventory().unwrap();
                for (i, g) in inv.iter().enumerate() {
                    assert_eq!(g.index, i as u32);
                    assert!(g.uuid.starts_with("GPU-"), "{g:?}");
                    assert!(g.memory_total_mib > 0, "{g:?}");
                }
                let t = backend.sample().unwrap();
                assert_eq!(t.len(), inv.len());
                for (s, g) in t.iter().zip(&inv) {
                    assert!(s.memory_used_mib <= g.memory_total_mib, "{s:?}");
                    assert!(s.utilization_pct <= 100, "{s:?}");
                }
            }
        }
    }
}
