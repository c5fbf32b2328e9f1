//! How each GPU is shared between workloads: the `gpu_sharing` setting, and
//! the rule that turns it and the hardware's MIG mode into one mode per GPU.
//!
//! The setting maps GPU indexes or ranges to a mode:
//! `{ "0" = "mig", "1-3" = "mps", "4" = "shared" }` in the file, or
//! `--gpu-sharing 0=mig,1-3=mps,4=shared`. GPUs not named are exclusive.
//!
//! Resolution ([`resolve`]):
//!
//! - a GPU whose MIG mode is on is `mig`, whatever the setting says;
//! - `mig` for a GPU whose MIG mode is off is an error: the agent never
//!   changes MIG mode (that needs an idle GPU and often a reset). The sim
//!   backend is the exception: `start` turns the simulated MIG mode on
//!   first, as an operator would on real hardware;
//! - an index the node does not have is an error.

use std::collections::BTreeMap;

use gantry_common::model::{GpuInfo, GpuSharing, MigMode};

/// Parses the keys of the `gpu_sharing` table into one mode per index.
/// Errors name the key; overlapping keys are refused.
pub fn parse_table(table: &BTreeMap<String, GpuSharing>) -> Result<BTreeMap<u32, GpuSharing>, String> {
    let mut out = BTreeMap::new();
    for (key, mode) in table {
        let (first, last) = parse_range(key)?;
        for index in first..=last {
            if out.insert(index, *mode).is_some() {
                return Err(format!("GPU {index} is named twice (key {key:?} overlaps another)"));
            }
        }
    }
    Ok(out)
}

/// Parses `--gpu-sharing 0=mig,1-3=mps` into the table form of the file.
pub fn parse_flag(s: &str) -> Result<BTreeMap<String, GpuSharing>, String> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, mode) =
            item.split_once('=').ok_or_else(|| format!("{item:?} is not INDEX=MODE or FIRST-LAST=MODE"))?;
        let mode: GpuSharing = mode.trim().parse()?;
        parse_range(key.trim())?;
        if out.insert(key.trim().to_string(), mode).is_some() {
            return Err(format!("{:?} is given twice", key.trim()));
        }
    }
    parse_table(&out)?;
    Ok(out)
}

/// Why the setting does not fit this node's GPUs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharingError {
    #[error("gpu_sharing: GPU {index} does not exist: this node has {count} GPUs")]
    NoSuchGpu { index: u32, count: u32 },
    #[error(
        "gpu_sharing: GPU {index} ({model}) is set to mig but its MIG mode is {mode}; \
         enable MIG first (nvidia-smi -i {index} -mig 1): the agent never changes MIG mode"
    )]
    MigOff { index: u32, model: String, mode: &'static str },
}

/// One mode per GPU of `gpus` (in index order), from the parsed setting.
pub fn resolve(
    gpus: &[GpuInfo],
    configured: &BTreeMap<u32, GpuSharing>,
) -> Result<Vec<GpuSharing>, SharingError> {
    let count = gpus.len() as u32;
    if let Some((&index, _)) = configured.range(count..).next() {
        return Err(SharingError::NoSuchGpu { index, count });
    }
    gpus.iter()
        .map(|g| {
            let asked = configured.get(&g.index).copied().unwrap_or(GpuSharing::Exclusive);
            match (g.mig_mode, asked) {
                (MigMode::Enabled, _) => Ok(GpuSharing::Mig),
                (mode, GpuSharing::Mig) => Err(SharingError::MigOff {
                    index: g.index,
                    model: g.model.clone(),
                    mode: if mode == MigMode::Disabled { "disabled" } else { "unsupported" },
                }),
                (_, other) => Ok(other),
            }
        })
        .collect()
}

fn parse_range(key: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{key:?} is not a GPU index or a range like 1-3");
    let (first, last) = match key.split_once('-') {
        Some((a, b)) => {
            (a.trim().parse::<u32>().map_err(|_| bad())?, b.trim().parse::<u32>().map_err(|_| bad())?)
        }
        None => {
            let i = key.trim().parse::<u32>().map_err(|_| bad())?;
            (i, i)
        }
    };
    if first > last || last > 255 {
        return Err(format!("{key:?}: a range goes from low to high, indexes 0-255"));
    }
    Ok((first, last))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gpu(index: u32, mig_mode: MigMode) -> GpuInfo {
        GpuInfo {
            index,
            uuid: format!("GPU-{index}"),
            model: "H100-80GB".into(),
            memory_total_mib: 81_559,
            mig_mode,
            nvlink_domain: None,
            sharing: GpuSharing::Exclusive,
        }
    }

    #[test]
    fn table_and_flag_expand_ranges() {
        let flag = parse_flag("0=mig, 1-3=mps,4=shared").unwrap();
        assert_eq!(flag.len(), 3);
        let by_index = parse_table(&flag).unwrap();
        assert_eq!(by_index.len(), 5);
        assert_eq!(by_index[&0], GpuSharing::Mig);
        assert_eq!(by_index[&2], GpuSharing::Mps);
        assert_eq!(by_index[&4], GpuSharing::Shared);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(parse_flag("0=fancy").unwrap_err().contains("fancy"));
        assert!(parse_flag("x=mps").unwrap_err().contains("\"x\""));
        assert!(parse_flag("3-1=mps").unwrap_err().contains("low to high"));
        assert!(parse_flag("0-2=mps,2=mig").unwrap_err().contains("GPU 2 is named twice"));
        assert!(parse_flag("0").unwrap_err().contains("INDEX=MODE"));
    }

    #[test]
    fn mig_mode_wins_and_mig_needs_it_on() {
        let gpus = [gpu(0, MigMode::Enabled), gpu(1, MigMode::Disabled), gpu(2, MigMode::Disabled)];
        let configured = BTreeMap::from([(0, GpuSharing::Mps), (2, GpuSharing::Shared)]);
        assert_eq!(
            resolve(&gpus, &configured).unwrap(),
            [GpuSharing::Mig, GpuSharing::Exclusive, GpuSharing::Shared]
        );
        let err = resolve(&gpus, &BTreeMap::from([(1, GpuSharing::Mig)])).unwrap_err();
        assert!(matches!(err, SharingError::MigOff { index: 1, .. }));
        assert!(err.to_string().starts_with("gpu_sharing: GPU 1"), "{err}");
        let err = resolve(&gpus, &BTreeMap::from([(7, GpuSharing::Mps)])).unwrap_err();
        assert_eq!(err, SharingError::NoSuchGpu { index: 7, count: 3 });
    }
}
