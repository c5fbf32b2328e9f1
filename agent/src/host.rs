//! Host facts and load, from sysinfo.
//!
//! The agent samples at 1 Hz and must stay under 1 % of a core when idle, so
//! a sample refreshes only CPU usage (`/proc/stat`) and RAM (`/proc/meminfo`):
//! never the process table, disks or networks, which cost far more.

use gantry_common::model::{HostInfo, HostTelemetry};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, System};

/// Reads host facts once and host load on demand.
pub struct HostSampler {
    sys: System,
}

impl HostSampler {
    /// Loads the CPU list and memory. The first CPU usage figure needs a
    /// previous reading, which this takes.
    pub fn new() -> HostSampler {
        let mut sys = System::new();
        sys.refresh_cpu_list(CpuRefreshKind::nothing().with_cpu_usage());
        sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        HostSampler { sys }
    }

    /// Facts that do not change while the agent runs.
    pub fn info(&self) -> HostInfo {
        let os = match (System::name(), System::os_version()) {
            (Some(name), Some(version)) => format!("{name} {version}"),
            (Some(name), None) => name,
            (None, _) => std::env::consts::OS.to_string(),
        };
        HostInfo {
            hostname: System::host_name().filter(|h| !h.is_empty()).unwrap_or_else(|| "unknown".to_string()),
            cpu_count: u32::try_from(self.sys.cpus().len()).unwrap_or(u32::MAX).max(1),
            memory_total_mib: bytes_to_mib(self.sys.total_memory()),
            os,
            kernel: System::kernel_version().unwrap_or_else(|| "unknown".to_string()),
        }
    }

    /// CPU usage since the previous call (all cores, 0-100) and RAM in use.
    pub fn sample(&mut self) -> HostTelemetry {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let cpu = self.sys.global_cpu_usage();
        HostTelemetry {
            cpu_usage_pct: if cpu.is_finite() { cpu.clamp(0.0, 100.0) } else { 0.0 },
            memory_used_mib: bytes_to_mib(self.sys.used_memory()),
        }
    }
}

impl Default for HostSampler {
    fn default() -> Self {
        HostSampler::new()
    }
}

fn bytes_to_mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    use super::*;

    #[test]
    fn info_describes_this_host() {
        let info = HostSampler::new().info();
        assert!(!info.hostname.is_empty());
        assert!(info.cpu_count >= 1);
        assert!(info.memory_total_mib > 0);
        assert!(!info.os.is_empty());
        assert!(!info.kernel.is_empty());
        if cfg!(target_os = "linux") {
            let online = std::fs::read_to_string("/proc/stat")
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
                .count();
            assert_eq!(info.cpu_count as usize, online);
        }
    }

    #[test]
    fn samples_are_in_range() {
        let mut s = HostSampler::new();
        let total = s.info().memory_total_mib;
        for _ in 0..3 {
            let t = s.sample();
            assert!((0.0..=100.0).contains(&t.cpu_usage_pct), "{t:?}");
            assert!(t.memory_used_mib > 0 && t.memory_used_mib <= total, "{t:?}");
        }
    }
}
