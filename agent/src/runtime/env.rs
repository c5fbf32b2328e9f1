//! The environment of a workload (pure).
//!
//! On top of the spec's own `env`:
//!
//! - `GANTRY_ALLOC_ID`, `GANTRY_WORKLOAD`;
//! - `GANTRY_PORT_<NAME>` for each named port and `PORT` for the first: the
//!   host port for a process, the container port for a container (whose
//!   host port maps to it); a container also gets `GANTRY_HOST_PORT_<NAME>`;
//! - GPUs: `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` list the
//!   device UUIDs (`GPU-…` or `MIG-…`); with no GPU they hide every GPU
//!   (empty, and `void` for the NVIDIA container runtime).
//!   `GANTRY_GPU_SHARE` describes the share: `whole`, `mig:1g.10gb@2`,
//!   `mps:25%:10000MiB`, `shared:10000MiB`, `milli:250` (comma-separated per GPU);
//! - MPS: `CUDA_MPS_PIPE_DIRECTORY`, `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` (the
//!   compute share) and `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=<MiB>M` (device
//!   0 is the one GPU the client sees).

use std::collections::BTreeMap;
use std::path::Path;

use gantry_common::workload::WorkloadSpec;
use gantry_placement::GpuShare;

/// One GPU (or part of one) handed to a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuDevice {
    pub index: u32,
    /// `GPU-…` for a whole or shared GPU, `MIG-…` for a MIG instance.
    pub device_id: String,
    pub share: GpuShare,
}

/// Where the workload runs, which decides the port variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Process,
    Container,
}

/// The full environment of a workload.
pub fn workload_env(
    spec: &WorkloadSpec,
    alloc_id: &str,
    host_ports: &BTreeMap<String, u16>,
    placement: Placement,
    gpus: &[GpuDevice],
    mps_pipe_dir: Option<&Path>,
) -> BTreeMap<String, String> {
    let mut env = spec.env.clone();
    env.insert("GANTRY_ALLOC_ID".into(), alloc_id.into());
    env.insert("GANTRY_WORKLOAD".into(), spec.name.clone());
    for (i, p) in spec.ports.iter().enumerate() {
        let Some(host) = host_ports.get(&p.name) else { continue };
        let inside = match placement {
            Placement::Process => *host,
            Placement::Container => {
                env.insert(p.env_name().replacen("GANTRY_PORT_", "GANTRY_HOST_PORT_", 1), host.to_string());
                p.port
            }
        };
        env.insert(p.env_name(), inside.to_string());
        if i == 0 {
            env.insert("PORT".into(), inside.to_string());
        }
    }
    env.extend(gpu_env(gpus, mps_pipe_dir));
    env
}

/// The GPU variables alone.
pub fn gpu_env(gpus: &[GpuDevice], mps_pipe_dir: Option<&Path>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if gpus.is_empty() {
        env.insert("CUDA_VISIBLE_DEVICES".into(), String::new());
        env.insert("NVIDIA_VISIBLE_DEVICES".into(), "void".into());
        return env;
    }
    let ids = gpus.iter().map(|g| g.device_id.as_str()).collect::<Vec<_>>().join(",");
    env.insert("CUDA_VISIBLE_DEVICES".into(), ids.clone());
    env.insert("NVIDIA_VISIBLE_DEVICES".into(), ids);
    env.insert(
        "GANTRY_GPU_SHARE".into(),
        gpus.iter().map(|g| describe(&g.share)).collect::<Vec<_>>().join(","),
    );
    let mps = gpus.iter().find_map(|g| match g.share {
        GpuShare::Mps { compute_pct, memory_mib } => Some((compute_pct, memory_mib)),
        _ => None,
    });
    if let Some((compute_pct, memory_mib)) = mps {
        if let Some(dir) = mps_pipe_dir {
            env.insert("CUDA_MPS_PIPE_DIRECTORY".into(), dir.display().to_string());
        }
        env.insert("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(), compute_pct.to_string());
        env.insert("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(), format!("0={memory_mib}M"));
    }
    env
}

/// `whole`, `mig:1g.10gb@2`, `mps:25%:10000MiB`, `shared:10000MiB`, `milli:250`.
pub fn describe(share: &GpuShare) -> String {
    match share {
        GpuShare::Whole => "whole".into(),
        GpuShare::Mig { profile, start } => format!("mig:{profile}@{start}"),
        GpuShare::Mps { compute_pct, memory_mib } => format!("mps:{compute_pct}%:{memory_mib}MiB"),
        GpuShare::Shared { memory_mib } => format!("shared:{memory_mib}MiB"),
        GpuShare::Milli { milli } => format!("milli:{milli}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gantry_common::workload::{parse_workload_toml, PortSpec};

    use super::*;

    fn spec() -> WorkloadSpec {
        let mut s =
            parse_workload_toml("name = \"llm\"\nimage = \"gantry-infer:dev\"\n[env]\nRUST_LOG = \"info\"\n")
                .unwrap();
        s.ports =
            vec![PortSpec { name: "http".into(), port: 8080 }, PortSpec { name: "admin".into(), port: 9000 }];
        s
    }

    #[test]
    fn process_gets_host_ports_and_ids() {
        let ports = BTreeMap::from([("http".to_string(), 20_001), ("admin".to_string(), 20_002)]);
        let env = workload_env(&spec(), "llm.0.1", &ports, Placement::Process, &[], None);
        assert_eq!(env["RUST_LOG"], "info");
        assert_eq!(env["GANTRY_ALLOC_ID"], "llm.0.1");
        assert_eq!(env["GANTRY_WORKLOAD"], "llm");
        assert_eq!(env["GANTRY_PORT_HTTP"], "20001");
        assert_eq!(env["GANTRY_PORT_ADMIN"], "20002");
        assert_eq!(env["PORT"], "20001");
        assert!(!env.contains_key("GANTRY_HOST_PORT_HTTP"));
        // No GPU: every GPU hidden, no share described.
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "");
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "void");
        assert!(!env.contains_key("GANTRY_GPU_SHARE"));
    }

    #[test]
    fn container_gets_container_ports() {
        let ports = BTreeMap::from([("http".to_string(), 20_001), ("admin".to_string(), 20_002)]);
        let env = workload_env(&spec(), "llm.0.1", &ports, Placement::Container, &[], None);
        assert_eq!(env["GANTRY_PORT_HTTP"], "8080");
        assert_eq!(env["PORT"], "8080");
        assert_eq!(env["GANTRY_HOST_PORT_HTTP"], "20001");
        assert_eq!(env["GANTRY_PORT_ADMIN"], "9000");
    }

    #[test]
    fn gpu_variables_per_share() {
        let whole = [
            GpuDevice { index: 0, device_id: "GPU-a".into(), share: GpuShare::Whole },
            GpuDevice { index: 1, device_id: "GPU-b".into(), share: GpuShare::Whole },
        ];
        let env = gpu_env(&whole, None);
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "GPU-a,GPU-b");
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "GPU-a,GPU-b");
        assert_eq!(env["GANTRY_GPU_SHARE"], "whole,whole");
        assert!(!env.contains_key("CUDA_MPS_PIPE_DIRECTORY"));

        let mig = [GpuDevice {
            index: 3,
            device_id: "MIG-x".into(),
            share: GpuShare::Mig { profile: "1g.10gb".into(), start: 2 },
        }];
        let env = gpu_env(&mig, None);
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "MIG-x");
        assert_eq!(env["GANTRY_GPU_SHARE"], "mig:1g.10gb@2");

        let mps = [GpuDevice {
            index: 1,
            device_id: "GPU-b".into(),
            share: GpuShare::Mps { compute_pct: 25, memory_mib: 10_000 },
        }];
        let env = gpu_env(&mps, Some(Path::new("/var/lib/gantry/agent/mps/1/pipe")));
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "GPU-b");
        assert_eq!(env["GANTRY_GPU_SHARE"], "mps:25%:10000MiB");
        assert_eq!(env["CUDA_MPS_PIPE_DIRECTORY"], "/var/lib/gantry/agent/mps/1/pipe");
        assert_eq!(env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");
        assert_eq!(env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=10000M");

        assert_eq!(describe(&GpuShare::Shared { memory_mib: 512 }), "shared:512MiB");
        assert_eq!(describe(&GpuShare::Milli { milli: 250 }), "milli:250");
    }
}
