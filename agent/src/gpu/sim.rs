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

use gantry_common::gpu_spec::{GpuGroup, GpuModel};
use gantry_common::model::{GpuHealth, GpuInfo, GpuTelemetry, MigMode};

use super::{GpuBackend, GpuError};

/// Simulated GPUs of one node.
#[derive(Debug, Clone)]
pub struct SimBackend {
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
}

impl SimBackend {
    /// GPUs for node `node_name`, numbered 0.. in the order of `groups`.
    pub fn new(node_name: &str, groups: &[GpuGroup]) -> SimBackend {
        let gpus = groups
            .iter()
            .flat_map(|g| (0..g.count).map(move |_| &g.model))
            .enumerate()
            .map(|(i, model)| SimGpu {
                uuid: sim_uuid(node_name, i as u32),
                model: model.clone(),
                mig_mode: if model.mig_capable { MigMode::Disabled } else { MigMode::Unsupported },
                // MIG-capable models are the SXM-class boards, which sit on one
                // NVSwitch fabric per node.
                nvlink_domain: model.mig_capable.then_some(0),
                utilization_pct: 0,
                load_memory_mib: 0,
                health: GpuHealth::Healthy,
            })
            .collect();
        let seed = fnv1a_128(node_name.as_bytes()) as u64;
        SimBackend { gpus, rng: SplitMix64(seed) }
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
                Ok(())
            }
            (true, MigMode::Unsupported) => {
                Err(GpuError::MigModeInvalid { index, model: gpu.model.name.clone() })
            }
            (false, _) => Err(GpuError::MigNotSupported { index, model: gpu.model.name.clone() }),
        }
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
                    memory_used_mib: g.load_memory_mib.max(driver_reserve_mib(g.model.memory_total_mib)),
                    utilization_pct: g.utilization_pct,
                    temperature_c: temperature.round().max(0.0) as u32,
                    power_w: power.clamp(0.0, max_power),
                    health: g.health.clone(),
                }
            })
            .collect())
    }
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

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, stable for (node, index).
fn sim_uuid(node_name: &str, index: u32) -> String {
    let mut input = Vec::with_capacity(node_name.len() + 5);
    input.extend_from_slice(node_name.as_bytes());
    // The separator keeps ("gpu1", 1) and ("gpu", 11) apart.
    input.push(0);
    input.extend_from_slice(&index.to_le_bytes());
    let h = format!("{:032x}", fnv1a_128(&input));
    format!("GPU-{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    bytes.iter().fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
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
        assert_eq!(sim_uuid("node-a", 0), "GPU-e8d3b00f-c7c3-bf6b-903a-24e782001e61");
        assert_ne!(sim_uuid("gpu1", 1), sim_uuid("gpu", 11));
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

    #[test]
    fn empty_node_has_no_gpus() {
        let mut b = SimBackend::new("node-a", &[]);
        assert!(b.inventory().unwrap().is_empty());
        assert!(b.sample().unwrap().is_empty());
    }
}
