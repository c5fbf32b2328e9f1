//! Describing simulated GPUs: `8xH100-80GB`, `4xA100-40GB,2xL4-24GB`.
//!
//! Known models get their real NVML memory size and MIG capability; any other
//! `NAME-<N>GB` is accepted as a plain GPU of N GiB without MIG.

/// One simulated GPU model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuModel {
    /// Short name used in constraints and `gantryctl gpus`.
    pub name: String,
    /// Memory as NVML reports it on the real card (a little under the marketing size).
    pub memory_total_mib: u64,
    pub mig_capable: bool,
    /// Board power limit, for simulated power draw.
    pub max_power_w: u32,
}

/// `count` GPUs of one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuGroup {
    pub count: u32,
    pub model: GpuModel,
}

/// (name, NVML memory MiB, MIG capable, power limit W) of models we know.
const KNOWN: &[(&str, u64, bool, u32)] = &[
    ("H100-80GB", 81_559, true, 700),
    ("H100-94GB", 95_830, true, 700),
    ("H200-141GB", 143_771, true, 700),
    ("A100-40GB", 40_960, true, 400),
    ("A100-80GB", 81_920, true, 400),
    ("A30-24GB", 24_576, true, 165),
    ("L40S-48GB", 46_068, false, 350),
    ("L4-24GB", 23_034, false, 72),
    ("A10-24GB", 23_028, false, 150),
    ("T4-16GB", 15_360, false, 70),
];

/// Most GPUs one simulated node may have.
pub const MAX_GPUS_PER_NODE: u32 = 16;

/// Parses a GPU spec such as `8xH100-80GB` or `4xA100-40GB,2xL4-24GB`.
pub fn parse_gpu_spec(spec: &str) -> Result<Vec<GpuGroup>, String> {
    let mut groups = Vec::new();
    let mut total = 0u32;
    for part in spec.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!("gpus: empty entry in {spec:?}; expected e.g. 8xH100-80GB"));
        }
        let (count, name) = part
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("gpus: {part:?} is not COUNTxMODEL, e.g. 8xH100-80GB"))?;
        let count: u32 =
            count.parse().map_err(|_| format!("gpus: count {count:?} in {part:?} is not a whole number"))?;
        if count == 0 {
            return Err(format!("gpus: count in {part:?} must be at least 1"));
        }
        total = total.saturating_add(count);
        if total > MAX_GPUS_PER_NODE {
            return Err(format!("gpus: {spec:?} has more than {MAX_GPUS_PER_NODE} GPUs on one node"));
        }
        groups.push(GpuGroup { count, model: lookup_model(name)? });
    }
    Ok(groups)
}

/// Finds a model by name (case-insensitive), or builds a plain one from `NAME-<N>GB`.
pub fn lookup_model(name: &str) -> Result<GpuModel, String> {
    if let Some(&(n, mem, mig, power)) = KNOWN.iter().find(|(n, ..)| n.eq_ignore_ascii_case(name)) {
        return Ok(GpuModel {
            name: n.to_string(),
            memory_total_mib: mem,
            mig_capable: mig,
            max_power_w: power,
        });
    }
    let gib = name
        .rsplit_once('-')
        .and_then(|(_, size)| size.strip_suffix("GB").or_else(|| size.strip_suffix("gb")))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| (1..=1024).contains(n))
        .ok_or_else(|| {
            format!("gpus: unknown model {name:?}; use a known one (H100-80GB, A100-40GB, L4-24GB, …) or NAME-<GiB>GB")
        })?;
    Ok(GpuModel {
        name: name.to_string(),
        memory_total_mib: gib * 1024,
        mig_capable: false,
        max_power_w: 300,
    })
}

/// A simulated GPU's UUID, `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, stable for (node, index).
pub fn sim_gpu_uuid(node_name: &str, index: u32) -> String {
    let mut input = Vec::with_capacity(node_name.len() + 5);
    input.extend_from_slice(node_name.as_bytes());
    // The separator keeps ("gpu1", 1) and ("gpu", 11) apart.
    input.push(0);
    input.extend_from_slice(&index.to_le_bytes());
    let h = format!("{:032x}", fnv1a_128(&input));
    format!("GPU-{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// FNV-1a, 128 bits: stable ids from names (not a cryptographic hash).
pub fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    bytes.iter().fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_mixed_spec() {
        let g = parse_gpu_spec("4xA100-40GB, 2xL4-24GB").unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].count, 4);
        assert_eq!(g[0].model.memory_total_mib, 40_960);
        assert!(g[0].model.mig_capable);
        assert_eq!(g[1].model.name, "L4-24GB");
        assert!(!g[1].model.mig_capable);
    }

    #[test]
    fn unknown_model_with_size_is_plain() {
        let g = parse_gpu_spec("2xRTX4090-24GB").unwrap();
        assert_eq!(g[0].model.memory_total_mib, 24 * 1024);
        assert!(!g[0].model.mig_capable);
    }

    #[test]
    fn bad_specs_name_the_problem() {
        assert!(parse_gpu_spec("").unwrap_err().contains("empty"));
        assert!(parse_gpu_spec("eightxH100-80GB").unwrap_err().contains("whole number"));
        assert!(parse_gpu_spec("0xH100-80GB").unwrap_err().contains("at least 1"));
        assert!(parse_gpu_spec("8xFoo").unwrap_err().contains("unknown model"));
        assert!(parse_gpu_spec("H100").unwrap_err().contains("COUNTxMODEL"));
        assert!(parse_gpu_spec("17xH100-80GB").unwrap_err().contains("more than"));
    }
}
