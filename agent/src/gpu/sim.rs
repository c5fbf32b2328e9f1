//! Simulated GPUs, described by a spec such as `8xH100-80GB`.
//!
//! A simulated GPU behaves like idle hardware until a caller sets its load:
//! utilisation 0, a driver reserve of memory in use, 30-40 °C, and a power
//! draw near the board's idle fraction. Temperature and power rise with
//! utilisation and carry a small jitter drawn from a generator seeded by the
//! node name, so two runs that make the same calls see the same numbers (no
//! clock, no global randomness).
//!
//! UUIDs are derived from the node name and the GPU index with FNV-1a (128
//! bit), which is fixed by its definition rather than by the standard
//! library's hasher, so a node keeps its GPU UUIDs across restarts and Rust
//! releases.
//! MIG instance ids (`MIG-…`) are derived the same way from the node, the
//! GPU index, the profile and the start slice.
//!
//! # What runs shapes the load
//!
//! The workload manager tells the backend which shares run
//! ([`GpuBackend::set_running`]); on top of the load set with
//! [`SimBackend::set_load`], each running share adds:
//!
//! | share            | memory used                         | utilisation              |
//! |------------------|-------------------------------------|--------------------------|
//! | whole GPU        | 50 % of the GPU's memory            | 60 %                     |
//! | MIG instance     | its memory slices / the model's     | 60 % × its compute slices / the model's |
//! | MPS              | its `memory_mib`                    | 0.6 × `compute_pct`      |
//! | shared           | its `memory_mib`                    | 20 %                     |
//! | milli            | none                                | 0.06 × milli (60 % of its fraction) |
//!
//! Memory is capped at what the GPU has, utilisation at 100 %.
//!
//! # MIG and MPS
//!
//! MIG instances follow NVIDIA's placement tables
//! ([`gantry_placement::mig`]), each with the model's own slice counts (8
//! memory and 7 compute slices on an H100, 4 and 4 on an A30): an unknown
//! profile, a start the profile does not allow, or an overlap with an
//! existing instance is refused with the geometry's error. Each GPU also models an MPS control daemon (start,
//! stop, client count), reported as `mps_clients`.

use gantry_common::gpu_spec::{fnv1a_128, sim_gpu_uuid, GpuGroup, GpuModel};
use gantry_common::model::{GpuHealth, GpuInfo, GpuSharing, GpuTelemetry, MigMode};
use gantry_placement::mig::{self, MigLayout};
use gantry_placement::GpuShare;

use super::{GpuBackend, GpuError, MpsModel, Running};

/// Simulated GPUs of one node.
#[derive(Debug, Clone)]
pub struct SimBackend {
    node: String,
    gpus: Vec<SimGpu>,
    rng: SplitMix64,
}

#[derive(Debug, Clone)]
struct SimGpu {
    uuid: String,
    model: GpuModel,
    mig_mode: MigMode,
    nvlink_domain: Option<u32>,
    utilization_pct: u32,
    /// Memory the workloads use, as set by [`SimBackend::set_load`].
    load_memory_mib: u64,
    health: GpuHealth,
    /// MIG instances (profile name, start) and their layout (`None` until
    /// the first instance, and for models without a MIG table).
    mig_layout: Option<MigLayout>,
    mig_instances: Vec<(&'static str, u8)>,
    /// The modelled MPS control daemon: `Some(clients)` while it runs.
    mps_daemon: Option<u32>,
    /// Shares the workload manager says run here.
    running: Vec<GpuShare>,
}

impl SimBackend {
    /// GPUs for node `node_name`, numbered 0.. in the order of `groups`.
    pub fn new(node_name: &str, groups: &[GpuGroup]) -> SimBackend {
        let gpus = groups
            .iter()
            .flat_map(|g| (0..g.count).map(move |_| &g.model))
            .enumerate()
            .map(|(i, model)| SimGpu {
                uuid: sim_gpu_uuid(node_name, i as u32),
                model: model.clone(),
                mig_mode: if model.mig_capable { MigMode::Disabled } else { MigMode::Unsupported },
                // MIG-capable models are the SXM-class boards, which sit on one
                // NVSwitch fabric per node.
                nvlink_domain: model.mig_capable.then_some(0),
                utilization_pct: 0,
                load_memory_mib: 0,
                health: GpuHealth::Healthy,
                mig_layout: None,
                mig_instances: Vec::new(),
                mps_daemon: None,
                running: Vec::new(),
            })
            .collect();
        let seed = fnv1a_128(node_name.as_bytes()) as u64;
        SimBackend { node: node_name.to_string(), gpus, rng: SplitMix64(seed) }
    }

    /// Number of simulated GPUs.
    pub fn gpu_count(&self) -> u32 {
        self.gpus.len() as u32
    }

    /// Sets what runs on GPU `index`: kernel-busy percentage and the memory the
    /// device reports in use (the driver reserve is the floor). Memory above
    /// the GPU's total is refused, as the hardware would fail the allocation.
    pub fn set_load(
        &mut self,
        index: u32,
        utilization_pct: u32,
        memory_used_mib: u64,
    ) -> Result<(), GpuError> {
        if utilization_pct > 100 {
            return Err(GpuError::UtilizationOutOfRange { index, pct: utilization_pct });
        }
        let gpu = self.gpu_mut(index)?;
        if memory_used_mib > gpu.model.memory_total_mib {
            return Err(GpuError::OutOfMemory {
                index,
                model: gpu.model.name.clone(),
                requested_mib: memory_used_mib,
                total_mib: gpu.model.memory_total_mib,
            });
        }
        gpu.utilization_pct = utilization_pct;
        gpu.load_memory_mib = memory_used_mib;
        Ok(())
    }

    /// Fault injection: the health GPU `index` reports from now on.
    pub fn set_health(&mut self, index: u32, health: GpuHealth) -> Result<(), GpuError> {
        self.gpu_mut(index)?.health = health;
        Ok(())
    }

    /// Switches MIG mode. A MIG-capable GPU takes `Enabled` or `Disabled`; any
    /// other GPU only `Unsupported`.
    pub fn set_mig_mode(&mut self, index: u32, mode: MigMode) -> Result<(), GpuError> {
        let gpu = self.gpu_mut(index)?;
        match (gpu.model.mig_capable, mode) {
            (true, MigMode::Enabled | MigMode::Disabled) | (false, MigMode::Unsupported) => {
                gpu.mig_mode = mode;
                if mode != MigMode::Enabled {
                    gpu.mig_layout = None;
                    gpu.mig_instances.clear();
                }
                Ok(())
            }
            (true, MigMode::Unsupported) => {
                Err(GpuError::MigModeInvalid { index, model: gpu.model.name.clone() })
            }
            (false, _) => Err(GpuError::MigNotSupported { index, model: gpu.model.name.clone() }),
        }
    }

    /// MIG instances on GPU `index`: (profile, start), in creation order.
    pub fn mig_instances(&self, index: u32) -> Vec<(String, u8)> {
        self.gpus
            .get(index as usize)
            .map(|g| g.mig_instances.iter().map(|(p, s)| (p.to_string(), *s)).collect())
            .unwrap_or_default()
    }

    fn gpu_mut(&mut self, index: u32) -> Result<&mut SimGpu, GpuError> {
        let count = self.gpu_count();
        self.gpus.get_mut(index as usize).ok_or(GpuError::NoSuchGpu { index, count })
    }
}

impl GpuBackend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn inventory(&self) -> Result<Vec<GpuInfo>, GpuError> {
        Ok(self
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| GpuInfo {
                index: i as u32,
                uuid: g.uuid.clone(),
                model: g.model.name.clone(),
                memory_total_mib: g.model.memory_total_mib,
                mig_mode: g.mig_mode,
                nvlink_domain: g.nvlink_domain,
                sharing: if g.mig_mode == MigMode::Enabled { GpuSharing::Mig } else { GpuSharing::Exclusive },
            })
            .collect())
    }

    fn sample(&mut self) -> Result<Vec<GpuTelemetry>, GpuError> {
        let rng = &mut self.rng;
        Ok(self
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let util = f64::from(g.utilization_pct) / 100.0;
                let max_power = f64::from(g.model.max_power_w);
                let temperature = IDLE_TEMP_C + util * TEMP_RISE_C + rng.jitter(TEMP_JITTER_C);
                let power = max_power * (IDLE_POWER_FRACTION + util * LOAD_POWER_FRACTION)
                    + max_power * rng.jitter(POWER_JITTER_FRACTION);
                GpuTelemetry {
                    index: i as u32,
                    memory_used_mib: memory_used_mib(g),
                    utilization_pct: utilization_pct(g),
                    temperature_c: temperature.round().max(0.0) as u32,
                    power_w: power.clamp(0.0, max_power),
                    health: g.health.clone(),
                    mps_clients: g.mps_daemon,
                    mig_instances: g.mig_instances.len() as u32,
                }
            })
            .collect())
    }

    fn open_mig(&mut self, index: u32, profile: &str, start: u8) -> Result<String, GpuError> {
        let node = self.node.clone();
        let gpu = self.gpu_mut(index)?;
        if gpu.mig_mode != MigMode::Enabled {
            return Err(GpuError::MigOff { index, model: gpu.model.name.clone() });
        }
        let table = mig::table_for_model(&gpu.model.name).ok_or_else(|| GpuError::MigGeometry {
            index,
            source: mig::MigError::UnsupportedModel(gpu.model.name.clone()),
        })?;
        let p = table.profile(profile).map_err(|source| GpuError::MigGeometry { index, source })?;
        if !gpu.mig_instances.contains(&(p.name, start)) {
            let layout = gpu.mig_layout.get_or_insert_with(|| MigLayout::new(table));
            layout.place(p, start).map_err(|source| GpuError::MigGeometry { index, source })?;
            gpu.mig_instances.push((p.name, start));
        }
        Ok(mig_uuid(&node, index, p.name, start))
    }

    fn close_mig(&mut self, index: u32, profile: &str, start: u8) -> Result<(), GpuError> {
        let gpu = self.gpu_mut(index)?;
        let Some(table) = mig::table_for_model(&gpu.model.name) else {
            return Err(GpuError::MigGeometry {
                index,
                source: mig::MigError::UnsupportedModel(gpu.model.name.clone()),
            });
        };
        let p = table.profile(profile).map_err(|source| GpuError::MigGeometry { index, source })?;
        let layout = gpu.mig_layout.as_mut().ok_or(GpuError::MigGeometry {
            index,
            source: mig::MigError::NotPlaced { profile: p.name, start },
        })?;
        layout.remove(p, start).map_err(|source| GpuError::MigGeometry { index, source })?;
        gpu.mig_instances.retain(|i| *i != (p.name, start));
        Ok(())
    }

    fn set_running(&mut self, running: &Running) {
        for g in &mut self.gpus {
            g.running.clear();
        }
        for (index, share) in &running.shares {
            if let Some(g) = self.gpus.get_mut(*index as usize) {
                g.running.push(share.clone());
            }
        }
    }

    fn mps_model(&mut self) -> Option<&mut dyn MpsModel> {
        Some(self)
    }
}

impl MpsModel for SimBackend {
    fn start_daemon(&mut self, index: u32) -> Result<(), GpuError> {
        let gpu = self.gpu_mut(index)?;
        if gpu.mps_daemon.is_some() {
            return Err(GpuError::Mps { index, reason: "already running".into() });
        }
        if gpu.mig_mode == MigMode::Enabled {
            return Err(GpuError::Mps { index, reason: "MPS does not run on a GPU in MIG mode here".into() });
        }
        gpu.mps_daemon = Some(0);
        Ok(())
    }

    fn stop_daemon(&mut self, index: u32) -> Result<(), GpuError> {
        let gpu = self.gpu_mut(index)?;
        match gpu.mps_daemon.take() {
            Some(_) => Ok(()),
            None => Err(GpuError::Mps { index, reason: "not running".into() }),
        }
    }

    fn daemon_running(&self, index: u32) -> bool {
        self.gpus.get(index as usize).is_some_and(|g| g.mps_daemon.is_some())
    }

    fn set_clients(&mut self, index: u32, clients: u32) -> Result<(), GpuError> {
        let gpu = self.gpu_mut(index)?;
        match &mut gpu.mps_daemon {
            Some(c) => {
                *c = clients;
                Ok(())
            }
            None if clients == 0 => Ok(()),
            None => Err(GpuError::Mps { index, reason: "not running: its clients cannot connect".into() }),
        }
    }
}

/// A whole-GPU workload's share of the memory (see the module docs).
const WHOLE_MEMORY_FRACTION: f64 = 0.5;
/// Utilisation of a workload that has a whole GPU (or all of a share) to itself.
const BUSY_PCT: f64 = 60.0;
/// Utilisation a time-sliced (shared) workload adds.
const SHARED_PCT: f64 = 20.0;

/// Memory in use: the driver reserve or the set load, plus the running shares, capped.
fn memory_used_mib(g: &SimGpu) -> u64 {
    let total = g.model.memory_total_mib;
    let shares: u64 = g.running.iter().map(|s| share_memory_mib(&g.model, s)).sum();
    g.load_memory_mib.max(driver_reserve_mib(total)).saturating_add(shares).min(total)
}

/// Utilisation: the set load plus the running shares, capped at 100 %.
fn utilization_pct(g: &SimGpu) -> u32 {
    let shares: f64 = g.running.iter().map(|s| share_utilization_pct(&g.model, s)).sum();
    (f64::from(g.utilization_pct) + shares).round().min(100.0) as u32
}

fn share_memory_mib(model: &GpuModel, share: &GpuShare) -> u64 {
    match share {
        GpuShare::Whole => (model.memory_total_mib as f64 * WHOLE_MEMORY_FRACTION) as u64,
        GpuShare::Mig { profile, .. } => mig::table_for_model(&model.name)
            .and_then(|t| Some((t, t.profile(profile).ok()?)))
            .map_or(0, |(t, p)| {
                model.memory_total_mib * u64::from(p.memory_slices) / u64::from(t.memory_slices.max(1))
            }),
        GpuShare::Mps { memory_mib, .. } | GpuShare::Shared { memory_mib } => *memory_mib,
        GpuShare::Milli { .. } => 0,
    }
}

fn share_utilization_pct(model: &GpuModel, share: &GpuShare) -> f64 {
    match share {
        GpuShare::Whole => BUSY_PCT,
        GpuShare::Mig { profile, .. } => mig::table_for_model(&model.name)
            .and_then(|t| Some((t, t.profile(profile).ok()?)))
            .map_or(0.0, |(t, p)| {
                BUSY_PCT * f64::from(p.compute_slices) / f64::from(t.compute_slices.max(1))
            }),
        GpuShare::Mps { compute_pct, .. } => BUSY_PCT / 100.0 * f64::from(*compute_pct),
        GpuShare::Shared { .. } => SHARED_PCT,
        GpuShare::Milli { milli } => BUSY_PCT / 1000.0 * f64::from(*milli),
    }
}

/// `MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, stable for (node, GPU, profile, start).
fn mig_uuid(node_name: &str, index: u32, profile: &str, start: u8) -> String {
    let gpu = sim_gpu_uuid(node_name, index);
    let mut input = Vec::with_capacity(gpu.len() + profile.len() + 2);
    input.extend_from_slice(gpu.as_bytes());
    input.push(0);
    input.extend_from_slice(profile.as_bytes());
    input.push(start);
    let h = format!("{:032x}", fnv1a_128(&input));
    format!("MIG-{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Idle die temperature; an idle datacentre GPU sits at 30-40 °C.
const IDLE_TEMP_C: f64 = 34.0;
/// Rise from idle to full utilisation (to about 79 °C).
const TEMP_RISE_C: f64 = 45.0;
const TEMP_JITTER_C: f64 = 1.5;
/// Share of the board power limit drawn at idle (an H100 idles near 70 W of 700).
const IDLE_POWER_FRACTION: f64 = 0.10;
/// Further share drawn at 100 % utilisation (to 95 % of the limit).
const LOAD_POWER_FRACTION: f64 = 0.85;
const POWER_JITTER_FRACTION: f64 = 0.01;

/// Memory the driver holds on an idle GPU: 0.5 % of it, 64-512 MiB, never
/// more than the GPU has.
fn driver_reserve_mib(total_mib: u64) -> u64 {
    (total_mib / 200).clamp(64, 512).min(total_mib)
}

/// Small deterministic generator for jitter (SplitMix64).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[-amplitude, amplitude]`.
    fn jitter(&mut self, amplitude: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (unit * 2.0 - 1.0) * amplitude
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use gantry_common::gpu_spec::parse_gpu_spec;

    use super::*;

    fn sim(node: &str, spec: &str) -> SimBackend {
        SimBackend::new(node, &parse_gpu_spec(spec).unwrap())
    }

    fn is_uuid(s: &str) -> bool {
        let Some(rest) = s.strip_prefix("GPU-") else { return false };
        let parts: Vec<&str> = rest.split('-').collect();
        parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
            && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
    }

    #[test]
    fn inventory_follows_the_spec() {
        let b = sim("node-a", "2xH100-80GB,1xL4-24GB");
        assert_eq!(b.name(), "sim");
        let inv = b.inventory().unwrap();
        assert_eq!(inv.len(), 3);
        assert_eq!(inv.iter().map(|g| g.index).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(inv[0].model, "H100-80GB");
        assert_eq!(inv[0].memory_total_mib, 81_559);
        assert_eq!(inv[0].mig_mode, MigMode::Disabled);
        assert_eq!(inv[0].nvlink_domain, Some(0));
        assert_eq!(inv[1].nvlink_domain, Some(0));
        assert_eq!(inv[2].model, "L4-24GB");
        assert_eq!(inv[2].mig_mode, MigMode::Unsupported);
        assert_eq!(inv[2].nvlink_domain, None);
    }

    #[test]
    fn uuids_are_stable_distinct_and_well_formed() {
        let a = sim("node-a", "8xA100-40GB").inventory().unwrap();
        let again = sim("node-a", "8xA100-40GB").inventory().unwrap();
        let other = sim("node-b", "8xA100-40GB").inventory().unwrap();
        for g in &a {
            assert!(is_uuid(&g.uuid), "{}", g.uuid);
        }
        assert_eq!(a, again);
        let mut all: Vec<&str> = a.iter().chain(&other).map(|g| g.uuid.as_str()).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 16);
        // Pinned: a change here would rename every simulated GPU in the field.
        assert_eq!(sim_gpu_uuid("node-a", 0), "GPU-e8d3b00f-c7c3-bf6b-903a-24e782001e61");
        assert_ne!(sim_gpu_uuid("gpu1", 1), sim_gpu_uuid("gpu", 11));
        assert_eq!(format!("{:032x}", fnv1a_128(b"")), "6c62272e07bb014262b821756295c58d");
        assert_eq!(format!("{:032x}", fnv1a_128(b"a")), "d228cb696f1a8caf78912b704e4a8964");
    }

    #[test]
    fn idle_telemetry_looks_like_idle_hardware() {
        let mut b = sim("node-a", "2xH100-80GB,1xT4-16GB");
        for _ in 0..50 {
            let t = b.sample().unwrap();
            assert_eq!(t.len(), 3);
            for (i, (g, (model_power, total))) in
                t.iter().zip([(700.0, 81_559), (700.0, 81_559), (70.0, 15_360)]).enumerate()
            {
                assert_eq!(g.index, i as u32);
                assert_eq!(g.utilization_pct, 0);
                assert!(g.memory_used_mib > 0 && g.memory_used_mib * 100 <= total, "{g:?}");
                assert!((30..=40).contains(&g.temperature_c), "{g:?}");
                assert!(g.power_w > 0.05 * model_power && g.power_w < 0.15 * model_power, "{g:?}");
                assert_eq!(g.health, GpuHealth::Healthy);
            }
        }
    }

    #[test]
    fn samples_are_deterministic_and_jitter() {
        let mut a = sim("node-a", "4xA100-80GB");
        let mut b = sim("node-a", "4xA100-80GB");
        let sa: Vec<_> = (0..10).map(|_| a.sample().unwrap()).collect();
        let sb: Vec<_> = (0..10).map(|_| b.sample().unwrap()).collect();
        assert_eq!(sa, sb);
        let powers: Vec<u64> = sa.iter().flatten().map(|t| t.power_w.to_bits()).collect();
        assert!(powers.iter().any(|&p| p != powers[0]), "power never varies");
    }

    #[test]
    fn telemetry_follows_load() {
        let mut b = sim("node-a", "2xH100-80GB");
        b.set_load(1, 100, 60_000).unwrap();
        let t = b.sample().unwrap();
        let (idle, busy) = (&t[0], &t[1]);
        assert_eq!(busy.utilization_pct, 100);
        assert_eq!(busy.memory_used_mib, 60_000);
        assert!(busy.temperature_c >= idle.temperature_c + 30, "{idle:?} {busy:?}");
        assert!(busy.power_w >= 600.0 && busy.power_w <= 700.0, "{busy:?}");
        assert!(busy.power_w > idle.power_w + 400.0);

        b.set_load(1, 50, 10).unwrap();
        let half = &b.sample().unwrap()[1];
        assert_eq!(half.utilization_pct, 50);
        assert_eq!(half.memory_used_mib, driver_reserve_mib(81_559), "reserve is the floor");
        assert!(half.power_w > idle.power_w && half.power_w < busy.power_w);

        b.set_load(1, 0, 0).unwrap();
        let back = &b.sample().unwrap()[1];
        assert!((30..=40).contains(&back.temperature_c));
    }

    #[test]
    fn load_beyond_the_hardware_is_refused() {
        let mut b = sim("node-a", "1xA100-40GB");
        b.set_load(0, 100, 40_960).unwrap();
        let err = b.set_load(0, 10, 40_961).unwrap_err();
        assert!(matches!(
            err,
            GpuError::OutOfMemory { index: 0, requested_mib: 40_961, total_mib: 40_960, .. }
        ));
        assert!(err.to_string().contains("has only 40960 MiB"), "{err}");
        // A refused request changes nothing.
        assert_eq!(b.sample().unwrap()[0].utilization_pct, 100);
        assert!(matches!(b.set_load(0, 101, 0), Err(GpuError::UtilizationOutOfRange { pct: 101, .. })));
        let err = b.set_load(1, 0, 0).unwrap_err();
        assert!(matches!(err, GpuError::NoSuchGpu { index: 1, count: 1 }));
        assert!(err.to_string().contains("has 1 GPUs"));
    }

    #[test]
    fn mig_mode_is_only_for_mig_capable_gpus() {
        let mut b = sim("node-a", "1xA100-40GB,1xL4-24GB");
        b.set_mig_mode(0, MigMode::Enabled).unwrap();
        assert_eq!(b.inventory().unwrap()[0].mig_mode, MigMode::Enabled);
        b.set_mig_mode(0, MigMode::Disabled).unwrap();
        assert_eq!(b.inventory().unwrap()[0].mig_mode, MigMode::Disabled);
        assert!(matches!(b.set_mig_mode(0, MigMode::Unsupported), Err(GpuError::MigModeInvalid { .. })));

        let err = b.set_mig_mode(1, MigMode::Enabled).unwrap_err();
        assert!(matches!(err, GpuError::MigNotSupported { index: 1, .. }));
        assert!(err.to_string().contains("L4-24GB"), "{err}");
        assert!(b.set_mig_mode(1, MigMode::Disabled).is_err());
        b.set_mig_mode(1, MigMode::Unsupported).unwrap();
        assert_eq!(b.inventory().unwrap()[1].mig_mode, MigMode::Unsupported);
        assert!(matches!(b.set_mig_mode(2, MigMode::Enabled), Err(GpuError::NoSuchGpu { .. })));
    }

    #[test]
    fn injected_health_is_reported() {
        let mut b = sim("node-a", "2xH100-80GB");
        b.set_health(1, GpuHealth::Unhealthy("Xid 79".into())).unwrap();
        let t = b.sample().unwrap();
        assert_eq!(t[0].health, GpuHealth::Healthy);
        assert_eq!(t[1].health, GpuHealth::Unhealthy("Xid 79".into()));
        b.set_health(1, GpuHealth::Healthy).unwrap();
        assert_eq!(b.sample().unwrap()[1].health, GpuHealth::Healthy);
        assert!(b.set_health(5, GpuHealth::Healthy).is_err());
    }

    #[test]
    fn reserve_never_exceeds_the_gpu() {
        assert_eq!(driver_reserve_mib(81_559), 407);
        assert_eq!(driver_reserve_mib(1_024), 64);
        assert_eq!(driver_reserve_mib(143_771), 512);
        assert_eq!(driver_reserve_mib(10), 10);
    }

    fn enable_mig(b: &mut SimBackend, index: u32) {
        b.set_mig_mode(index, MigMode::Enabled).unwrap();
    }

    #[test]
    fn mig_instances_follow_nvidia_geometry() {
        let mut b = sim("node-a", "2xH100-80GB,1xL4-24GB");
        assert!(matches!(b.open_mig(0, "1g.10gb", 0), Err(GpuError::MigOff { index: 0, .. })));
        enable_mig(&mut b, 0);
        let a = b.open_mig(0, "3g.40gb", 4).unwrap();
        assert!(a.starts_with("MIG-") && a.len() == 40, "{a}");
        // The same instance again is the same device (idempotent re-open).
        assert_eq!(b.open_mig(0, "3g.40gb", 4).unwrap(), a);
        // Overlap with slices 4-7, a start the profile does not allow, an unknown profile.
        let overlap = b.open_mig(0, "1g.10gb", 5).unwrap_err();
        assert!(overlap.to_string().contains("overlaps"), "{overlap}");
        let bad_start = b.open_mig(0, "2g.20gb", 1).unwrap_err();
        assert!(bad_start.to_string().contains("cannot start at memory slice 1"), "{bad_start}");
        assert!(b.open_mig(0, "9g.1gb", 0).unwrap_err().to_string().contains("does not exist"));
        let small = b.open_mig(0, "1g.10gb", 0).unwrap();
        assert_ne!(small, a);
        assert_eq!(b.sample().unwrap()[0].mig_instances, 2);
        assert_eq!(b.mig_instances(0), [("3g.40gb".to_string(), 4), ("1g.10gb".to_string(), 0)]);
        // Destroying frees the slices; the id is stable for (node, GPU, profile, start).
        b.close_mig(0, "3g.40gb", 4).unwrap();
        assert!(b.close_mig(0, "3g.40gb", 4).is_err());
        assert_eq!(b.sample().unwrap()[0].mig_instances, 1);
        assert_eq!(b.open_mig(0, "3g.40gb", 4).unwrap(), a);
        let mut other = sim("node-a", "2xH100-80GB");
        enable_mig(&mut other, 0);
        assert_eq!(other.open_mig(0, "3g.40gb", 4).unwrap(), a);
        assert!(other.open_mig(0, "4g.40gb", 0).is_ok());
        assert!(other.open_mig(0, "1g.10gb", 1).unwrap_err().to_string().contains("overlaps"));
        // A GPU that cannot do MIG refuses to turn it on.
        assert!(matches!(b.set_mig_mode(2, MigMode::Enabled), Err(GpuError::MigNotSupported { .. })));
    }

    #[test]
    fn mps_daemon_lifecycle_shows_in_telemetry() {
        let mut b = sim("node-a", "2xH100-80GB");
        assert_eq!(b.sample().unwrap()[1].mps_clients, None);
        let m = b.mps_model().unwrap();
        assert!(m.set_clients(1, 1).is_err(), "clients need a daemon");
        m.start_daemon(1).unwrap();
        assert!(m.start_daemon(1).is_err(), "one daemon per GPU");
        assert!(m.daemon_running(1) && !m.daemon_running(0));
        m.set_clients(1, 3).unwrap();
        assert_eq!(b.sample().unwrap()[1].mps_clients, Some(3));
        let m = b.mps_model().unwrap();
        m.stop_daemon(1).unwrap();
        assert!(m.stop_daemon(1).is_err());
        assert_eq!(b.sample().unwrap()[1].mps_clients, None);
    }

    #[test]
    fn load_follows_running_shares() {
        let mut b = sim("node-a", "4xH100-80GB");
        enable_mig(&mut b, 1);
        let running = Running {
            shares: vec![
                (0, GpuShare::Whole),
                (1, GpuShare::Mig { profile: "3g.40gb".into(), start: 0 }),
                (2, GpuShare::Mps { compute_pct: 25, memory_mib: 10_000 }),
                (2, GpuShare::Mps { compute_pct: 50, memory_mib: 20_000 }),
                (3, GpuShare::Shared { memory_mib: 70_000 }),
                (3, GpuShare::Shared { memory_mib: 70_000 }),
            ],
            mps_clients: BTreeMap::new(),
        };
        b.set_running(&running);
        let t = b.sample().unwrap();
        let reserve = driver_reserve_mib(81_559);
        assert_eq!((t[0].utilization_pct, t[0].memory_used_mib), (60, reserve + 81_559 / 2));
        assert_eq!((t[1].utilization_pct, t[1].memory_used_mib), (26, reserve + 81_559 * 4 / 8));
        assert_eq!((t[2].utilization_pct, t[2].memory_used_mib), (45, reserve + 30_000));
        // Two shared workloads ask for more than the GPU has: capped.
        assert_eq!((t[3].utilization_pct, t[3].memory_used_mib), (40, 81_559));
        // set_load still adds up with what runs; stopping everything goes back to idle.
        b.set_load(0, 50, 1_000).unwrap();
        assert_eq!(b.sample().unwrap()[0].utilization_pct, 100);
        b.set_running(&Running::default());
        b.set_load(0, 0, 0).unwrap();
        let t = b.sample().unwrap();
        assert!(t.iter().all(|g| g.utilization_pct == 0 && g.memory_used_mib == reserve), "{t:?}");
    }

    #[test]
    fn a30_mig_uses_its_four_slice_geometry() {
        let mut b = sim("node-a", "1xA30-24GB");
        enable_mig(&mut b, 0);
        b.open_mig(0, "2g.12gb", 0).unwrap();
        // An A100 would take a 2g at slice 4; an A30 has 4 memory slices.
        let err = b.open_mig(0, "2g.12gb", 4).unwrap_err();
        assert!(err.to_string().contains("cannot start at memory slice 4"), "{err}");
        b.open_mig(0, "1g.6gb", 2).unwrap();
        b.open_mig(0, "1g.6gb+me", 3).unwrap();
        assert!(b.open_mig(0, "1g.6gb", 1).unwrap_err().to_string().contains("overlaps"));
        let unknown = b.open_mig(0, "1g.5gb", 0).unwrap_err().to_string();
        assert!(unknown.contains("does not exist on A30-24GB"), "{unknown}");
        b.close_mig(0, "1g.6gb", 2).unwrap();
        assert!(b.close_mig(0, "1g.6gb", 2).is_err());
        let running = Running {
            shares: vec![(0, GpuShare::Mig { profile: "2g.12gb".into(), start: 0 })],
            mps_clients: BTreeMap::new(),
        };
        b.set_running(&running);
        let t = &b.sample().unwrap()[0];
        // 2 of 4 memory slices, 2 of 4 compute slices (60 % x 2/4).
        assert_eq!(t.memory_used_mib, driver_reserve_mib(24_576) + 24_576 / 2);
        assert_eq!(t.utilization_pct, 30);
        // Turning MIG off drops the layout; a fresh one starts empty.
        b.set_mig_mode(0, MigMode::Disabled).unwrap();
        enable_mig(&mut b, 0);
        b.open_mig(0, "4g.24gb", 0).unwrap();
    }

    #[test]
    fn empty_node_has_no_gpus() {
        let mut b = SimBackend::new("node-a", &[]);
        assert!(b.inventory().unwrap().is_empty());
        assert!(b.sample().unwrap().is_empty());
    }
}
