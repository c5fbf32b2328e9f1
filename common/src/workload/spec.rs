//! The canonical workload spec: what Raft replicates and what agents run.
//!
//! Built from a TOML file by [`super::spec_file`], or received as JSON on the
//! admin socket; either way [`WorkloadSpec::validate`] runs before anything
//! is committed, so an invalid spec changes nothing. Every error names the
//! field and the reason.

use std::collections::BTreeMap;

use gantry_placement::{Constraints, GpuRequest, LabelSelector, PlacementRequest, Policy};
use serde::{Deserialize, Serialize};

use crate::model::validate_name;

/// Most replicas one workload may ask for.
pub const MAX_REPLICAS: u32 = 10_000;
/// Most ports one workload may expose.
pub const MAX_PORTS: usize = 16;
/// Most environment variables.
pub const MAX_ENV: usize = 256;
/// Most arguments.
pub const MAX_ARGS: usize = 256;
/// Longest argument, environment value, image or command.
pub const MAX_STRING: usize = 4096;

/// A workload spec error: the field and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

pub(crate) fn err(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), reason: reason.into() }
}

/// What an operator asks the cluster to keep running.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Unique name; also the key of `gantryctl stop`.
    pub name: String,
    pub runtime: RuntimeSpec,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Ports the workload listens on. The agent picks a free host port for
    /// each and passes it as `GANTRY_PORT_<NAME>` (and `PORT` for the first).
    pub ports: Vec<PortSpec>,
    pub replicas: u32,
    pub restart: RestartPolicy,
    /// Host CPU in thousandths of a core, and host memory, reserved per replica.
    pub cpu_milli: u64,
    pub memory_mib: u64,
    /// The GPU part, in any mode of the placement engine.
    pub gpu: GpuRequest,
    pub constraints: Constraints,
    /// Overrides the cluster's default placement policy.
    pub policy: Option<Policy>,
    pub health: Option<HealthCheck>,
    /// How long a replica gets between SIGTERM and SIGKILL.
    pub stop_grace_ms: u64,
    /// `process` runtime: the user to run as; `None` is the agent's default
    /// workload user. An agent refuses a user it does not allow.
    #[serde(default)]
    pub user: Option<String>,
}

/// How replicas run on the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeSpec {
    /// A container of a local image on the host's Docker engine.
    Docker { image: String },
    /// A plain child process.
    Process { command: String },
}

impl RuntimeSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeSpec::Docker { .. } => "docker",
            RuntimeSpec::Process { .. } => "process",
        }
    }

    /// The image or command.
    pub fn target(&self) -> &str {
        match self {
            RuntimeSpec::Docker { image } => image,
            RuntimeSpec::Process { command } => command,
        }
    }
}

/// A named port the workload listens on (inside its container for `docker`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub name: String,
    /// Port inside the container (`docker`); a `process` listens on the
    /// host port it is given instead.
    pub port: u16,
}

impl PortSpec {
    /// The environment variable that carries the host port: `GANTRY_PORT_HTTP`.
    pub fn env_name(&self) -> String {
        format!("GANTRY_PORT_{}", self.name.to_ascii_uppercase().replace(['-', '.'], "_"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Restart whenever it exits.
    Always,
    /// Restart only after a non-zero exit (or a failed health check).
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartMode::Always => "always",
            RestartMode::OnFailure => "on-failure",
            RestartMode::Never => "never",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    /// First restart delay; doubles per consecutive failure up to `max_backoff_ms`.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy { mode: RestartMode::Always, backoff_ms: 1_000, max_backoff_ms: 60_000 }
    }
}

/// An HTTP readiness/liveness probe: `GET path` on a named port must answer 2xx.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub path: String,
    /// Name of one of the workload's ports.
    pub port: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub initial_delay_ms: u64,
    /// Consecutive failures before the replica counts as unhealthy.
    pub failure_threshold: u32,
}

impl WorkloadSpec {
    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name("name", &self.name).map_err(|r| err("name", strip_field(&r)))?;
        match &self.runtime {
            RuntimeSpec::Docker { image } => {
                check_string("image", image)?;
                if image.chars().any(char::is_whitespace) {
                    return Err(err("image", format!("{image:?} contains whitespace")));
                }
            }
            RuntimeSpec::Process { command } => check_string("command", command)?,
        }
        if self.args.len() > MAX_ARGS {
            return Err(err("args", format!("at most {MAX_ARGS} arguments")));
        }
        for (i, a) in self.args.iter().enumerate() {
            if a.len() > MAX_STRING || a.contains('\0') {
                return Err(err(format!("args[{i}]"), "longer than 4096 bytes or contains NUL"));
            }
        }
        if self.env.len() > MAX_ENV {
            return Err(err("env", format!("at most {MAX_ENV} variables")));
        }
        for (k, v) in &self.env {
            let ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(err(format!("env.{k}"), "a variable name is letters, digits and '_'"));
            }
            if k.starts_with("GANTRY_") || k.starts_with("CUDA_") || k == "NVIDIA_VISIBLE_DEVICES" {
                return Err(err(
                    format!("env.{k}"),
                    "GANTRY_*, CUDA_* and NVIDIA_VISIBLE_DEVICES are set by the agent",
                ));
            }
            if v.len() > MAX_STRING || v.contains('\0') {
                return Err(err(format!("env.{k}"), "longer than 4096 bytes or contains NUL"));
            }
        }
        if self.ports.len() > MAX_PORTS {
            return Err(err("ports", format!("at most {MAX_PORTS} ports")));
        }
        for (i, p) in self.ports.iter().enumerate() {
            validate_name("name", &p.name).map_err(|r| err(format!("ports[{i}].name"), strip_field(&r)))?;
            if p.port == 0 {
                return Err(err(format!("ports[{i}].port"), "must be 1-65535"));
            }
            if self.ports[..i].iter().any(|q| q.name == p.name) {
                return Err(err(format!("ports[{i}].name"), format!("{:?} is used twice", p.name)));
            }
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(err("replicas", format!("must be 1-{MAX_REPLICAS} (use `gantryctl stop` for 0)")));
        }
        let r = &self.restart;
        if r.backoff_ms == 0 || r.backoff_ms > r.max_backoff_ms {
            return Err(err("restart.backoff_s", "must be above 0 and at most restart.max_backoff_s"));
        }
        if r.max_backoff_ms > 3_600_000 {
            return Err(err("restart.max_backoff_s", "must be at most 3600"));
        }
        if self.memory_mib > 16 * 1024 * 1024 {
            return Err(err("resources.memory_mib", "more than 16 TiB"));
        }
        if self.cpu_milli > 4_096_000 {
            return Err(err("resources.cpu", "more than 4096 cores"));
        }
        self.gpu.validate().map_err(|e| {
            let text = e.to_string();
            match text.split_once(": ") {
                Some((field, reason)) => err(field, reason),
                None => err("gpu", text),
            }
        })?;
        if let GpuRequest::Mig { profile } = &self.gpu {
            if !gantry_placement::mig::TABLES.iter().any(|t| t.profile(profile).is_ok()) {
                return Err(err("gpu.profile", format!("{profile:?} is not a MIG profile NVIDIA defines")));
            }
        }
        for (i, m) in self.constraints.gpu_models.iter().enumerate() {
            check_string(&format!("gpu.models[{i}]"), m)?;
        }
        for (i, l) in self.constraints.labels.iter().enumerate() {
            let key = match l {
                LabelSelector::Equals { key, .. }
                | LabelSelector::In { key, .. }
                | LabelSelector::NotIn { key, .. } => key,
            };
            validate_name("key", key)
                .map_err(|r| err(format!("constraints.labels[{i}]"), strip_field(&r)))?;
        }
        if let Some(h) = &self.health {
            if !h.path.starts_with('/')
                || h.path.len() > 1024
                || h.path.chars().any(|c| c.is_control() || c == ' ')
            {
                return Err(err(
                    "health.path",
                    format!("{:?} must start with '/' and hold no spaces", h.path),
                ));
            }
            if !self.ports.iter().any(|p| p.name == h.port) {
                return Err(err("health.port", format!("{:?} is not one of the workload's ports", h.port)));
            }
            if !(100..=3_600_000).contains(&h.interval_ms) {
                return Err(err("health.interval_s", "must be 0.1-3600"));
            }
            if h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
                return Err(err("health.timeout_s", "must be above 0 and at most health.interval_s"));
            }
            if h.initial_delay_ms > 3_600_000 {
                return Err(err("health.initial_delay_s", "must be at most 3600"));
            }
            if !(1..=100).contains(&h.failure_threshold) {
                return Err(err("health.failures", "must be 1-100"));
            }
        }
        if self.stop_grace_ms > 3_600_000 {
            return Err(err("stop_grace_s", "must be at most 3600"));
        }
        Ok(())
    }

    /// What one replica asks of the placement engine.
    pub fn placement_request(&self) -> PlacementRequest {
        PlacementRequest {
            workload: self.name.clone(),
            gpu: self.gpu.clone(),
            cpu_milli: self.cpu_milli,
            memory_mib: self.memory_mib,
            constraints: self.constraints.clone(),
            policy: self.policy,
        }
    }

    /// Whether a change from `self` to `next` needs new replicas (anything
    /// but the replica count).
    pub fn needs_replacement(&self, next: &WorkloadSpec) -> bool {
        let mut a = self.clone();
        a.replicas = next.replicas;
        a != *next
    }
}

fn check_string(field: &str, value: &str) -> Result<(), SpecError> {
    if value.trim().is_empty() {
        return Err(err(field, "must not be empty"));
    }
    if value.len() > MAX_STRING || value.contains('\0') {
        return Err(err(field, "longer than 4096 bytes or contains NUL"));
    }
    Ok(())
}

/// `validate_name` prefixes its own field name; keep only the reason.
fn strip_field(reason: &str) -> String {
    reason.split_once(": ").map(|(_, r)| r.to_string()).unwrap_or_else(|| reason.to_string())
}
