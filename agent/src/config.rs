//! Operator settings of an agent: a TOML file, overridden by flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use gantry_common::tls::TlsFiles;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GpuBackendKind {
    /// Real GPUs through NVIDIA's NVML (libnvidia-ml, loaded at run time).
    Nvml,
    /// Simulated GPUs described by `sim_gpus`.
    Sim,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// This node's name; must equal the name in the agent certificate. Default: the host name.
    pub node_name: Option<String>,
    /// Coordinator addresses (IP:PORT). The agent finds the leader among them.
    pub coordinators: Vec<String>,
    /// Agent state (reserved for workload bookkeeping).
    pub data_dir: PathBuf,
    /// How often GPUs are sampled and a heartbeat is sent.
    pub telemetry_interval_ms: u64,
    pub gpu_backend: GpuBackendKind,
    /// GPUs of the `sim` backend, e.g. `8xH100-80GB` or `4xA100-40GB,2xL4-24GB`.
    pub sim_gpus: String,
    /// Labels reported with the node (operators can add more with `gantryctl label`).
    pub labels: BTreeMap<String, String>,
    /// Local HTTP address for `/metrics` and `/healthz`; empty to disable.
    pub metrics_listen: String,
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
        for key in self.labels.keys() {
            gantry_common::model::validate_name("labels", key).map_err(|r| invalid("labels", r))?;
        }
        if self.gpu_backend == GpuBackendKind::Sim {
            gantry_common::gpu_spec::parse_gpu_spec(&self.sim_gpus).map_err(|r| invalid("sim_gpus", r))?;
        }
        if !self.metrics_listen.is_empty() && self.metrics_listen.parse::<SocketAddr>().is_err() {
            return Err(invalid("metrics_listen", format!("{:?} is not IP:PORT", self.metrics_listen)));
        }
        Ok(())
    }
}

/// Parses `KEY=VALUE` as given to `--label`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    gantry_common::model::validate_name("label key", k)?;
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
    fn label_flag() {
        assert_eq!(parse_label("zone=a").unwrap(), ("zone".into(), "a".into()));
        assert!(parse_label("zone").is_err());
        assert!(parse_label("bad key=a").is_err());
    }
}
