//! Operator settings of an agent: a TOML file, overridden by flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use gantry_common::model::GpuSharing;
use gantry_common::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::workloads::ports::PortRange;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GpuBackendKind {
    /// Real GPUs through NVIDIA's NVML (libnvidia-ml, loaded at run time).
    Nvml,
    /// Simulated GPUs described by `sim_gpus`.
    Sim,
}

/// How a Docker container gets its GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DockerGpu {
    /// `env` with the sim backend, `device-request` with nvml.
    Auto,
    /// A device request for the `nvidia` driver naming the device UUIDs (`docker run --gpus`).
    DeviceRequest,
    /// CDI device names `nvidia.com/gpu=<UUID>` (needs the NVIDIA CDI spec on the host).
    Cdi,
    /// Only `NVIDIA_VISIBLE_DEVICES` / `CUDA_VISIBLE_DEVICES` (the nvidia runtime as Docker's default).
    Env,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// This node's name; must equal the name in the agent certificate. Default: the host name.
    pub node_name: Option<String>,
    /// Coordinator addresses (IP:PORT). The agent finds the leader among them.
    pub coordinators: Vec<String>,
    /// Agent state: `allocs.json`, process workloads' logs (`allocs/<id>/`), MPS directories (`mps/`).
    pub data_dir: PathBuf,
    /// How often GPUs are sampled and a heartbeat is sent.
    pub telemetry_interval_ms: u64,
    pub gpu_backend: GpuBackendKind,
    /// GPUs of the `sim` backend, e.g. `8xH100-80GB` or `4xA100-40GB,2xL4-24GB`.
    pub sim_gpus: String,
    /// Labels reported with the node (operators can add more with `gantryctl label`).
    pub labels: BTreeMap<String, String>,
    /// HTTP address for `/metrics` and `/healthz` (nothing else is served
    /// there); empty to disable. Keep it on loopback unless a scraper
    /// elsewhere needs it: the agent warns at start-up otherwise.
    pub metrics_listen: String,
    /// Address (IP or host name) where this node's workloads are reached on
    /// their host ports, reported to the coordinators. Default: the host name.
    pub advertise_address: Option<String>,
    /// How each GPU is shared: GPU index or range to `exclusive`, `mig`,
    /// `mps` or `shared`, e.g. `{ "0" = "mig", "1-3" = "mps" }`. Unnamed GPUs
    /// are exclusive; a GPU whose MIG mode is on is always `mig`.
    pub gpu_sharing: BTreeMap<String, GpuSharing>,
    /// Host ports handed to workloads' named ports, `FIRST-LAST`.
    pub port_range: String,
    /// Docker engine socket; empty disables the docker runtime.
    pub docker_socket: String,
    /// How containers get GPUs: auto, device-request, cdi or env.
    pub docker_gpu: DockerGpu,
    /// The MPS control program the agent runs for GPUs in `mps` sharing (nvml backend).
    pub mps_control: PathBuf,
    /// The user `process` workloads run as (without capabilities, with
    /// `no_new_privs`). Never root unless listed in `workload_users_allowed`.
    pub workload_user: String,
    /// Users a workload's spec may ask for with `user = "..."`; empty: none
    /// but `workload_user`.
    pub workload_users_allowed: Vec<String>,
    /// User ids, `FIRST-LAST`, handed one per allocation to `process`
    /// workloads whose spec names no user, so workloads cannot reach each
    /// other's processes and files. Empty: all run as `workload_user`.
    /// MPS shares always run as `workload_user`.
    pub workload_uids: String,
    /// A `process` workload's stdout or stderr log is cut when it passes
    /// this many MiB (the older part is kept as `*.log.1`).
    pub log_max_mib: u64,
    pub tls: TlsFiles,
    pub log_level: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node_name: None,
            coordinators: Vec::new(),
            data_dir: PathBuf::from("/var/lib/gantry/agent"),
            telemetry_interval_ms: 1000,
            gpu_backend: GpuBackendKind::Nvml,
            sim_gpus: "8xH100-80GB".to_string(),
            labels: BTreeMap::new(),
            metrics_listen: "127.0.0.1:9410".to_string(),
            advertise_address: None,
            gpu_sharing: BTreeMap::new(),
            port_range: "20000-32000".to_string(),
            docker_socket: "/var/run/docker.sock".to_string(),
            docker_gpu: DockerGpu::Auto,
            mps_control: PathBuf::from("nvidia-cuda-mps-control"),
            workload_user: "nobody".to_string(),
            workload_users_allowed: Vec::new(),
            workload_uids: "1900000000-1900065535".to_string(),
            log_max_mib: 64,
            tls: TlsFiles {
                ca: PathBuf::from("/etc/gantry/pki/ca.pem"),
                cert: PathBuf::from("/etc/gantry/pki/agent.pem"),
                key: PathBuf::from("/etc/gantry/pki/agent.key"),
            },
            log_level: "info".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] gantry_common::config::ConfigError),
    #[error("config: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

impl AgentConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.coordinators.is_empty() {
            return Err(invalid("coordinators", "at least one coordinator address (IP:PORT) is needed"));
        }
        for addr in &self.coordinators {
            if addr.parse::<SocketAddr>().is_err() {
                return Err(invalid("coordinators", format!("{addr:?} is not IP:PORT")));
            }
        }
        if !(100..=60_000).contains(&self.telemetry_interval_ms) {
            return Err(invalid("telemetry_interval_ms", "must be between 100 and 60000"));
        }
        if let Some(name) = &self.node_name {
            gantry_common::model::validate_name("node_name", name).map_err(|r| invalid("node_name", r))?;
        }
        for (key, value) in &self.labels {
            gantry_common::model::validate_name("labels", key).map_err(|r| invalid("labels", r))?;
            gantry_common::model::validate_label_value(&format!("labels.{key}"), value)
                .map_err(|r| invalid("labels", r))?;
        }
        if self.gpu_backend == GpuBackendKind::Sim {
            gantry_common::gpu_spec::parse_gpu_spec(&self.sim_gpus).map_err(|r| invalid("sim_gpus", r))?;
        }
        if !self.metrics_listen.is_empty() && self.metrics_listen.parse::<SocketAddr>().is_err() {
            return Err(invalid("metrics_listen", format!("{:?} is not IP:PORT", self.metrics_listen)));
        }
        self.gpu_sharing_by_index()?;
        self.port_range()?;
        if let Some(a) = &self.advertise_address {
            let ok = !a.is_empty()
                && a.len() <= 253
                && a.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !ok {
                return Err(invalid("advertise_address", format!("{a:?} is not an IP address or host name")));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        for user in std::iter::once(&self.workload_user).chain(&self.workload_users_allowed) {
            let ok = !user.is_empty()
                && user.len() <= 32
                && user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(invalid("workload_user", format!("{user:?} is not a user name")));
            }
        }
        self.workload_uids()?;
        if self.log_max_mib == 0 || self.log_max_mib > 1 << 20 {
            return Err(invalid("log_max_mib", "must be 1-1048576"));
        }
        Ok(())
    }

    /// `gpu_sharing` by GPU index.
    pub fn gpu_sharing_by_index(&self) -> Result<BTreeMap<u32, GpuSharing>, ConfigError> {
        crate::gpu::sharing::parse_table(&self.gpu_sharing).map_err(|r| invalid("gpu_sharing", r))
    }

    /// `workload_uids`, `None` when empty.
    pub fn workload_uids(&self) -> Result<Option<crate::runtime::uids::UidRange>, ConfigError> {
        if self.workload_uids.is_empty() {
            return Ok(None);
        }
        self.workload_uids.parse().map(Some).map_err(|r| invalid("workload_uids", r))
    }

    pub fn port_range(&self) -> Result<PortRange, ConfigError> {
        self.port_range.parse().map_err(|r| invalid("port_range", r))
    }

    /// `docker_gpu` with `auto` decided by the backend.
    pub fn docker_gpu(&self) -> DockerGpu {
        match (self.docker_gpu, self.gpu_backend) {
            (DockerGpu::Auto, GpuBackendKind::Sim) => DockerGpu::Env,
            (DockerGpu::Auto, GpuBackendKind::Nvml) => DockerGpu::DeviceRequest,
            (other, _) => other,
        }
    }
}

/// Parses `KEY=VALUE` as given to `--label`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    gantry_common::model::validate_name("label key", k)?;
    gantry_common::model::validate_label_value("label value", v)?;
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_and_refuses_unknown_keys() {
        let c: AgentConfig = gantry_common::config::parse_toml(
            "node_name = \"gpu-01\"\ncoordinators = [\"127.0.0.1:7400\"]\ngpu_backend = \"sim\"\nsim_gpus = \"2xL4-24GB\"\n[labels]\nzone = \"a\"\n",
        )
        .unwrap();
        assert_eq!(c.gpu_backend, GpuBackendKind::Sim);
        assert_eq!(c.labels["zone"], "a");
        c.validate().unwrap();
        let err = gantry_common::config::parse_toml::<AgentConfig>("gpus = 3\n").unwrap_err();
        assert!(err.contains("gpus"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = AgentConfig::default();
        assert!(c.validate().unwrap_err().to_string().contains("coordinators"));
        c.coordinators = vec!["127.0.0.1:7400".into()];
        c.telemetry_interval_ms = 5;
        assert!(c.validate().unwrap_err().to_string().contains("telemetry_interval_ms"));
        c.telemetry_interval_ms = 1000;
        c.gpu_backend = GpuBackendKind::Sim;
        c.sim_gpus = "3xNope".into();
        assert!(c.validate().unwrap_err().to_string().contains("sim_gpus"));
    }

    #[test]
    fn workload_keys_parse_and_name_their_field() {
        let c: AgentConfig = gantry_common::config::parse_toml(
            "coordinators = [\"127.0.0.1:7400\"]\nport_range = \"30000-30010\"\ndocker_gpu = \"cdi\"\n\
             advertise_address = \"gpu-01.example\"\n[gpu_sharing]\n\"0\" = \"mig\"\n\"1-3\" = \"mps\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.gpu_sharing_by_index().unwrap().len(), 4);
        assert_eq!(c.port_range().unwrap(), PortRange { first: 30_000, last: 30_010 });
        assert_eq!(c.docker_gpu(), DockerGpu::Cdi);
        assert_eq!(AgentConfig::default().docker_gpu(), DockerGpu::DeviceRequest);

        let field = |c: &AgentConfig| match c.validate().unwrap_err() {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        };
        let mut bad = c.clone();
        bad.gpu_sharing.insert("2".into(), GpuSharing::Shared);
        assert_eq!(field(&bad), "gpu_sharing");
        let mut bad = c.clone();
        bad.port_range = "32000-20000".into();
        assert_eq!(field(&bad), "port_range");
        let mut bad = c.clone();
        bad.advertise_address = Some("not an address".into());
        assert_eq!(field(&bad), "advertise_address");
        let err = gantry_common::config::parse_toml::<AgentConfig>("[gpu_sharing]\n\"0\" = \"sliced\"\n")
            .unwrap_err();
        assert!(err.contains("sliced"), "{err}");
    }

    #[test]
    fn label_flag() {
        assert_eq!(parse_label("zone=a").unwrap(), ("zone".into(), "a".into()));
        assert!(parse_label("zone").is_err());
        assert!(parse_label("bad key=a").is_err());
    }
}
