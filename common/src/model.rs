//! The cluster's nouns as every process sees them: nodes, their GPUs, and the
//! live samples agents report. Static facts (`*Info`) travel at registration
//! and are replicated; live samples (`*Telemetry`) travel with heartbeats and
//! stay in the leader's memory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether a GPU runs in MIG mode, as NVML reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigMode {
    /// The GPU cannot be partitioned (no MIG support).
    Unsupported,
    /// MIG capable, currently off.
    Disabled,
    /// MIG on: the GPU is used through MIG instances only.
    Enabled,
}

impl MigMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MigMode::Unsupported => "unsupported",
            MigMode::Disabled => "disabled",
            MigMode::Enabled => "enabled",
        }
    }
}

/// Health of one GPU as the agent judges it (Xid errors, ECC, lost device).
///
/// Externally tagged (serde's default) on purpose: postcard is not
/// self-describing and cannot decode internally or adjacently tagged enums.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuHealth {
    Healthy,
    /// Usable but with a warning (for example corrected ECC errors climbing).
    Degraded(String),
    /// Must not receive work (uncorrected ECC, fatal Xid, device lost).
    Unhealthy(String),
}

impl GpuHealth {
    pub fn as_str(&self) -> &'static str {
        match self {
            GpuHealth::Healthy => "healthy",
            GpuHealth::Degraded(_) => "degraded",
            GpuHealth::Unhealthy(_) => "unhealthy",
        }
    }
}

/// Static description of one GPU, sent when the agent registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Index on the host, as NVML/`nvidia-smi` number it.
    pub index: u32,
    /// `GPU-…` UUID; for `sim` GPUs a stable UUID derived from node and index.
    pub uuid: String,
    /// Short model name used in constraints, e.g. `H100-80GB`.
    pub model: String,
    pub memory_total_mib: u64,
    pub mig_mode: MigMode,
    /// NVLink domain (GPUs in one domain are linked); `None` when not reported.
    pub nvlink_domain: Option<u32>,
    /// How the GPU is shared between workloads (agent config `gpu_sharing`).
    pub sharing: GpuSharing,
}

/// How one GPU is handed out: whole, as MIG instances, as MPS shares, or time-sliced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuSharing {
    Exclusive,
    Mig,
    Mps,
    Shared,
}

impl GpuSharing {
    pub fn as_str(self) -> &'static str {
        match self {
            GpuSharing::Exclusive => "exclusive",
            GpuSharing::Mig => "mig",
            GpuSharing::Mps => "mps",
            GpuSharing::Shared => "shared",
        }
    }
}

impl std::str::FromStr for GpuSharing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exclusive" => Ok(GpuSharing::Exclusive),
            "mig" => Ok(GpuSharing::Mig),
            "mps" => Ok(GpuSharing::Mps),
            "shared" => Ok(GpuSharing::Shared),
            other => Err(format!("{other:?} is not one of exclusive, mig, mps, shared")),
        }
    }
}

/// One live sample of one GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuTelemetry {
    pub index: u32,
    pub memory_used_mib: u64,
    /// Percent of time a kernel ran during the last sample period (0-100).
    pub utilization_pct: u32,
    pub temperature_c: u32,
    pub power_w: f64,
    pub health: GpuHealth,
    /// Clients of the GPU's MPS control daemon; `None` when no daemon runs.
    pub mps_clients: Option<u32>,
    /// MIG instances that exist on the GPU (0 when MIG is off).
    pub mig_instances: u32,
}

/// Host facts that do not change while the agent runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub cpu_count: u32,
    pub memory_total_mib: u64,
    pub os: String,
    pub kernel: String,
}

/// Host load, sampled with the GPUs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostTelemetry {
    pub cpu_usage_pct: f32,
    pub memory_used_mib: u64,
}

/// What an agent tells the cluster about its node when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name; must equal the name in the agent's certificate.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub host: HostInfo,
    pub gpus: Vec<GpuInfo>,
    /// `gantry-agent` version string.
    pub agent_version: String,
    /// Which GPU backend produced `gpus`: `nvml` or `sim`.
    pub gpu_backend: String,
    /// Address (IP or host name) where workloads' host ports are reachable.
    pub address: String,
    /// The agent's HTTP listener (`/metrics`, allocation logs); empty when off.
    pub http_addr: String,
}

/// Liveness of a node as the leader decided it (replicated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Ready,
    Down,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
    }
}

/// The one name rule, for everything that becomes an identity, a key or a
/// path component: node, workload and port names, label keys, certificate
/// names. 1 to 63 ASCII letters, digits, `-`, `_` and `.`, starting and
/// ending with a letter or digit (so never `.`, `..`, `.x` or `x.`).
///
/// Coordinator, agent and gantryctl all check names with this function, so
/// a name one of them accepts, the others accept too.
pub fn validate_name(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field}: must not be empty"));
    }
    if value.len() > MAX_NAME {
        return Err(format!("{field}: {} is longer than {MAX_NAME} characters", quoted(value)));
    }
    let ok = value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !ok {
        return Err(format!(
            "{field}: {} may only hold ASCII letters, digits, '-', '_' and '.'",
            quoted(value)
        ));
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge(value.chars().next()) || !edge(value.chars().last()) {
        return Err(format!("{field}: {} must start and end with a letter or digit", quoted(value)));
    }
    Ok(())
}

/// Longest name [`validate_name`] accepts.
pub const MAX_NAME: usize = 63;
/// Longest label value.
pub const MAX_LABEL_VALUE: usize = 253;

/// A label value: at most [`MAX_LABEL_VALUE`] bytes, no control characters
/// (no NUL, no line breaks, no escape sequences), so every table shows it
/// as it is.
pub fn validate_label_value(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_LABEL_VALUE {
        return Err(format!("{field}: longer than {MAX_LABEL_VALUE} bytes"));
    }
    validate_text(field, value)
}

/// Text an operator or an agent supplies that is shown in tables and logs:
/// no control characters.
pub fn validate_text(field: &str, value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "{field}: {} holds the control character U+{:04X}; control characters are not allowed",
            quoted(value),
            c as u32
        )),
        None => Ok(()),
    }
}

/// A value for an error message: quoted, escaped, and cut to a readable length.
pub fn quoted(value: &str) -> String {
    let cut: String = value.chars().take(80).collect();
    if cut.len() < value.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

impl NodeInfo {
    /// What a registration must satisfy: the name rule, label rules, and
    /// bounded, printable facts. The coordinator refuses a node that fails.
    pub fn validate(&self) -> Result<(), String> {
        validate_name("node.name", &self.name)?;
        if self.labels.len() > MAX_NODE_LABELS {
            return Err(format!("node.labels: at most {MAX_NODE_LABELS} labels"));
        }
        for (k, v) in &self.labels {
            validate_name("node.labels key", k)?;
            validate_label_value(&format!("node.labels.{k}"), v)?;
        }
        if self.gpus.len() > MAX_NODE_GPUS {
            return Err(format!("node.gpus: at most {MAX_NODE_GPUS} GPUs"));
        }
        let short = |field: &str, v: &str| -> Result<(), String> {
            if v.len() > 255 {
                return Err(format!("{field}: longer than 255 bytes"));
            }
            validate_text(field, v)
        };
        short("node.host.hostname", &self.host.hostname)?;
        short("node.host.os", &self.host.os)?;
        short("node.host.kernel", &self.host.kernel)?;
        short("node.agent_version", &self.agent_version)?;
        short("node.gpu_backend", &self.gpu_backend)?;
        short("node.address", &self.address)?;
        short("node.http_addr", &self.http_addr)?;
        for (i, g) in self.gpus.iter().enumerate() {
            short(&format!("node.gpus[{i}].uuid"), &g.uuid)?;
            short(&format!("node.gpus[{i}].model"), &g.model)?;
        }
        Ok(())
    }
}

/// Most labels an agent may report for its node.
pub const MAX_NODE_LABELS: usize = 64;
/// Most GPUs a node may report.
pub const MAX_NODE_GPUS: usize = 64;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("name", "gpu-node-01").is_ok());
        assert!(validate_name("name", "a.b_c-9").is_ok());
        assert!(validate_name("name", "7").is_ok());
        assert!(validate_name("name", "").unwrap_err().contains("empty"));
        assert!(validate_name("name", "a b").unwrap_err().contains("may only"));
        assert!(validate_name("name", &"x".repeat(64)).is_err());
        for bad in ["..", ".", ".x", "x.", "-a", "a_", "a/b", "a\r\nnode-9", "\u{1b}[2J"] {
            assert!(validate_name("name", bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn label_values_and_text_refuse_control_characters() {
        assert!(validate_label_value("v", "plain value, with spaces/and:punct").is_ok());
        for bad in ["a\0b", "x\r\nnode-9  ready", "\u{1b}[31mred", "tab\t"] {
            let e = validate_label_value("labels.k", bad).unwrap_err();
            assert!(e.contains("control character"), "{e}");
        }
        assert!(validate_label_value("v", &"x".repeat(254)).is_err());
        let e = validate_text("command", "/bin/x\u{1b}[2J").unwrap_err();
        assert!(e.starts_with("command: \"/bin/x\\u{1b}[2J\" holds the control character U+001B"), "{e}");
    }
}
