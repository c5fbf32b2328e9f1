//! The canonical workload spec: what Raft replicates and what agents run.
//!
//! Built from a TOML file by [`super::spec_file`], or received as JSON on the
//! admin socket; either way [`WorkloadSpec::validate`] runs before anything
//! is committed, so an invalid spec changes nothing. Every error names the
//! field and the reason.

use std::collections::BTreeMap;

use gantry_placement::{Constraints, GpuRequest, LabelSelector, PlacementRequest, Policy};
use serde::{Deserialize, Serialize};

use crate::model::{validate_label_value, validate_name, validate_text};

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
/// Most bytes all arguments and environment variables (names and values)
/// together may hold. Linux caps one process's at 2 MiB; this keeps a spec
/// small enough that a node's desired set streams in bounded frames.
pub const MAX_ARGS_ENV_BYTES: usize = 128 * 1024;
/// Largest encoded spec.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;
/// Most GPU models and most label selectors (and values in one selector).
pub const MAX_LIST: usize = 64;

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
                if self.user.is_some() {
                    return Err(err(
                        "user",
                        "applies to command (process) workloads only; a container runs as its image says",
                    ));
                }
            }
            RuntimeSpec::Process { command } => check_string("command", command)?,
        }
        if let Some(user) = &self.user {
            let ok = !user.is_empty()
                && user.len() <= 32
                && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && user.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !ok {
                return Err(err(
                    "user",
                    format!("{user:?} is not a user name (1-32 of a-z, 0-9, '_', '-', starting with a letter or '_')"),
                ));
            }
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
        let args_bytes: usize = self.args.iter().map(String::len).sum();
        let env_bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let bytes = args_bytes + env_bytes;
        if bytes > MAX_ARGS_ENV_BYTES {
            return Err(err(
                // Blame the larger of the two.
                if args_bytes > env_bytes { "args" } else { "env" },
                format!(
                    "args and env hold {bytes} bytes together; at most {MAX_ARGS_ENV_BYTES} (pass large \
                     settings as a file the workload reads)"
                ),
            ));
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
            if let Some(q) = self.ports[..i].iter().find(|q| q.env_name() == p.env_name()) {
                return Err(err(
                    format!("ports[{i}].name"),
                    format!(
                        "{:?} and {:?} would both be {}; names must differ beyond case, '-' and '.'",
                        q.name,
                        p.name,
                        p.env_name()
                    ),
                ));
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
        if let GpuRequest::Milli { .. } = self.gpu {
            return Err(err("gpu.mode", "\"milli\" is not one of none, exclusive, mig, mps, shared"));
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
        if self.constraints.gpu_models.len() > MAX_LIST {
            return Err(err("gpu.models", format!("at most {MAX_LIST} models")));
        }
        for (i, m) in self.constraints.gpu_models.iter().enumerate() {
            check_string(&format!("gpu.models[{i}]"), m)?;
            if m.len() > 255 {
                return Err(err(format!("gpu.models[{i}]"), "longer than 255 bytes"));
            }
        }
        if self.constraints.labels.len() > MAX_LIST {
            return Err(err("constraints", format!("at most {MAX_LIST} label conditions")));
        }
        for l in &self.constraints.labels {
            let (table, key, values): (&str, &String, Vec<&String>) = match l {
                LabelSelector::Equals { key, value } => ("labels", key, vec![value]),
                LabelSelector::In { key, values } => ("labels_in", key, values.iter().collect()),
                LabelSelector::NotIn { key, values } => ("labels_not_in", key, values.iter().collect()),
            };
            let field = format!("constraints.{table}.{key}");
            validate_name("key", key).map_err(|r| err(&field, strip_field(&r)))?;
            if values.len() > MAX_LIST {
                return Err(err(field, format!("at most {MAX_LIST} values")));
            }
            for v in values {
                validate_label_value("value", v).map_err(|r| err(&field, strip_field(&r)))?;
            }
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
        let size = crate::schema::encode(self).map(|b| b.len()).unwrap_or(usize::MAX);
        if size > MAX_SPEC_BYTES {
            return Err(err("file", format!("the spec encodes to {size} bytes; at most {MAX_SPEC_BYTES}")));
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

/// An image, a command or a model name: not blank, bounded, no control characters.
fn check_string(field: &str, value: &str) -> Result<(), SpecError> {
    if value.trim().is_empty() {
        return Err(err(field, "must not be empty"));
    }
    if value.len() > MAX_STRING {
        return Err(err(field, format!("longer than {MAX_STRING} bytes")));
    }
    validate_text(field, value).map_err(|r| err(field, strip_field(&r)))
}

/// `validate_name` prefixes its own field name; keep only the reason.
fn strip_field(reason: &str) -> String {
    reason.split_once(": ").map(|(_, r)| r.to_string()).unwrap_or_else(|| reason.to_string())
}
