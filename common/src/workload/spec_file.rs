//! The workload file operators write (TOML), and its translation into a
//! validated [`WorkloadSpec`].
//!
//! ```toml
//! name = "llm"
//! image = "gantry-infer:dev"        # or: command = "/usr/bin/gantry-infer"
//! args = ["--model", "/models/tiny.json"]
//! replicas = 2
//! policy = "binpack"                # optional; the cluster default otherwise
//! stop_grace_s = 10
//!
//! [env]
//! RUST_LOG = "info"
//!
//! [[ports]]
//! name = "http"
//! port = 8080                       # inside the container
//!
//! [resources]
//! cpu = 0.5                         # cores
//! memory_mib = 512
//!
//! [gpu]
//! mode = "exclusive"                # none | exclusive | mig | mps | shared
//! count = 1                         # exclusive
//! linked = false                    # exclusive: all in one NVLink domain
//! # profile = "1g.10gb"             # mig
//! # compute_pct = 25                # mps
//! # memory_mib = 10000              # mps, shared
//! models = ["H100-80GB"]            # optional
//! min_memory_mib = 40000            # optional
//!
//! [constraints]
//! labels = { zone = "a" }           # equals
//! labels_in = { rack = ["r1", "r2"] }
//! labels_not_in = { pool = ["batch"] }
//! spread = true                     # at most one replica per node
//!
//! [health]
//! path = "/health"
//! port = "http"
//! interval_s = 2
//! timeout_s = 1                     # default: 1, or interval_s if shorter
//! initial_delay_s = 0
//! failures = 3
//!
//! [restart]
//! policy = "always"                 # always | on-failure | never
//! backoff_s = 1
//! max_backoff_s = 60
//! ```

use std::collections::BTreeMap;

use gantry_placement::{Constraints, GpuRequest, LabelSelector, Policy};
use serde::Deserialize;

use super::spec::{
    err, HealthCheck, PortSpec, RestartMode, RestartPolicy, RuntimeSpec, SpecError, WorkloadSpec,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    image: Option<String>,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    ports: Vec<FilePort>,
    replicas: Option<i64>,
    policy: Option<String>,
    stop_grace_s: Option<f64>,
    #[serde(default)]
    resources: FileResources,
    gpu: Option<FileGpu>,
    #[serde(default)]
    constraints: FileConstraints,
    health: Option<FileHealth>,
    restart: Option<FileRestart>,
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePort {
    name: String,
    port: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileResources {
    cpu: Option<f64>,
    memory_mib: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGpu {
    mode: String,
    count: Option<i64>,
    linked: Option<bool>,
    profile: Option<String>,
    compute_pct: Option<i64>,
    memory_mib: Option<i64>,
    #[serde(default)]
    models: Vec<String>,
    min_memory_mib: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConstraints {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    labels_in: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    labels_not_in: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    spread: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealth {
    path: String,
    port: String,
    interval_s: Option<f64>,
    timeout_s: Option<f64>,
    initial_delay_s: Option<f64>,
    failures: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRestart {
    policy: Option<String>,
    backoff_s: Option<f64>,
    max_backoff_s: Option<f64>,
}

/// Parses and validates a workload file. Every error names the field (a
/// dotted path such as `gpu.count`) and what is allowed.
pub fn parse_workload_toml(text: &str) -> Result<WorkloadSpec, SpecError> {
    let file: File = crate::strict::toml(text).map_err(|e| err(e.field, e.reason))?;
    let spec = translate(file)?;
    spec.validate()?;
    Ok(spec)
}

fn translate(f: File) -> Result<WorkloadSpec, SpecError> {
    let runtime = match (f.image, f.command) {
        (Some(image), None) => RuntimeSpec::Docker { image },
        (None, Some(command)) => RuntimeSpec::Process { command },
        (Some(_), Some(_)) => {
            return Err(err("image", "give either image (docker) or command (process), not both"))
        }
        (None, None) => return Err(err("image", "give image (docker) or command (process)")),
    };
    let policy = match f.policy {
        None => None,
        Some(p) => Some(p.parse::<Policy>().map_err(|e| err("policy", e.to_string()))?),
    };
    let gpu = match &f.gpu {
        None => GpuRequest::None,
        Some(g) => gpu_request(g)?,
    };
    let mut constraints = Constraints {
        gpu_models: f.gpu.as_ref().map(|g| g.models.clone()).unwrap_or_default(),
        min_gpu_memory_mib: int(
            "gpu.min_memory_mib",
            f.gpu.as_ref().and_then(|g| g.min_memory_mib),
            0,
            0,
            MAX_MIB,
        )?,
        labels: Vec::new(),
        spread_replicas: f.constraints.spread,
    };
    for (key, value) in f.constraints.labels {
        constraints.labels.push(LabelSelector::Equals { key, value });
    }
    for (key, values) in f.constraints.labels_in {
        constraints.labels.push(LabelSelector::In { key, values });
    }
    for (key, values) in f.constraints.labels_not_in {
        constraints.labels.push(LabelSelector::NotIn { key, values });
    }
    let health = match f.health {
        None => None,
        Some(h) => Some(HealthCheck {
            path: h.path,
            port: h.port,
            interval_ms: millis("health.interval_s", h.interval_s.unwrap_or(2.0))?,
            // A probe may not outlast its interval, so a short interval
            // shortens the default timeout with it.
            timeout_ms: millis(
                "health.timeout_s",
                h.timeout_s.unwrap_or(h.interval_s.unwrap_or(2.0).min(1.0)),
            )?,
            initial_delay_ms: millis("health.initial_delay_s", h.initial_delay_s.unwrap_or(0.0))?,
            failure_threshold: int("health.failures", h.failures, 3, 1, 100)?,
        }),
    };
    let mut restart = RestartPolicy::default();
    if let Some(r) = f.restart {
        if let Some(p) = r.policy {
            restart.mode = match p.as_str() {
                "always" => RestartMode::Always,
                "on-failure" => RestartMode::OnFailure,
                "never" => RestartMode::Never,
                other => {
                    return Err(err(
                        "restart.policy",
                        format!("{other:?} is not one of always, on-failure, never"),
                    ))
                }
            };
        }
        if let Some(b) = r.backoff_s {
            restart.backoff_ms = millis("restart.backoff_s", b)?;
        }
        if let Some(b) = r.max_backoff_s {
            restart.max_backoff_ms = millis("restart.max_backoff_s", b)?;
        }
    }
    let cpu_milli = match f.resources.cpu {
        None => 0,
        Some(c) if c.is_finite() && (0.0..=4096.0).contains(&c) => (c * 1000.0).round() as u64,
        Some(c) => return Err(err("resources.cpu", format!("{c} is not 0-4096 cores"))),
    };
    Ok(WorkloadSpec {
        name: f.name,
        runtime,
        args: f.args,
        env: f.env,
        ports: f
            .ports
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(PortSpec {
                    name: p.name,
                    port: int(&format!("ports[{i}].port"), Some(p.port), 0, 1, 65_535)?,
                })
            })
            .collect::<Result<_, SpecError>>()?,
        // 0 and above pass here; `validate` says what to do about 0.
        replicas: int("replicas", f.replicas.map(|r| r.max(0)), 1, 0, i64::from(super::spec::MAX_REPLICAS))
            .map_err(|_| {
            err("replicas", format!("must be 1-{} (use `gantryctl stop` for 0)", super::spec::MAX_REPLICAS))
        })?,
        restart,
        cpu_milli,
        memory_mib: int("resources.memory_mib", f.resources.memory_mib, 0, 0, MAX_MIB)?,
        gpu,
        constraints,
        policy,
        health,
        stop_grace_ms: millis("stop_grace_s", f.stop_grace_s.unwrap_or(10.0))?,
        user: f.user,
    })
}

fn gpu_request(g: &FileGpu) -> Result<GpuRequest, SpecError> {
    let unused = |field: &str, present: bool| -> Result<(), SpecError> {
        if present {
            Err(err(format!("gpu.{field}"), format!("does not apply to mode {:?}", g.mode)))
        } else {
            Ok(())
        }
    };
    let need = |field: &str| err(format!("gpu.{field}"), format!("is required for mode {:?}", g.mode));
    match g.mode.as_str() {
        "none" => {
            unused("count", g.count.is_some())?;
            unused("profile", g.profile.is_some())?;
            unused("compute_pct", g.compute_pct.is_some())?;
            unused("memory_mib", g.memory_mib.is_some())?;
            Ok(GpuRequest::None)
        }
        "exclusive" => {
            unused("profile", g.profile.is_some())?;
            unused("compute_pct", g.compute_pct.is_some())?;
            unused("memory_mib", g.memory_mib.is_some())?;
            Ok(GpuRequest::Exclusive {
                count: int("gpu.count", g.count, 1, 1, 8)?,
                linked: g.linked.unwrap_or(false),
            })
        }
        "mig" => {
            unused("count", g.count.is_some())?;
            unused("linked", g.linked.is_some())?;
            unused("compute_pct", g.compute_pct.is_some())?;
            unused("memory_mib", g.memory_mib.is_some())?;
            Ok(GpuRequest::Mig { profile: g.profile.clone().ok_or_else(|| need("profile"))? })
        }
        "mps" => {
            unused("count", g.count.is_some())?;
            unused("linked", g.linked.is_some())?;
            unused("profile", g.profile.is_some())?;
            Ok(GpuRequest::Mps {
                compute_pct: int(
                    "gpu.compute_pct",
                    Some(g.compute_pct.ok_or_else(|| need("compute_pct"))?),
                    0,
                    1,
                    100,
                )?,
                memory_mib: int(
                    "gpu.memory_mib",
                    Some(g.memory_mib.ok_or_else(|| need("memory_mib"))?),
                    0,
                    1,
                    MAX_MIB,
                )?,
            })
        }
        "shared" => {
            unused("count", g.count.is_some())?;
            unused("linked", g.linked.is_some())?;
            unused("profile", g.profile.is_some())?;
            unused("compute_pct", g.compute_pct.is_some())?;
            Ok(GpuRequest::Shared {
                memory_mib: int(
                    "gpu.memory_mib",
                    Some(g.memory_mib.ok_or_else(|| need("memory_mib"))?),
                    0,
                    1,
                    MAX_MIB,
                )?,
            })
        }
        other => Err(err("gpu.mode", format!("{other:?} is not one of none, exclusive, mig, mps, shared"))),
    }
}

/// Memory a spec may name, in MiB (16 TiB).
const MAX_MIB: i64 = 16 * 1024 * 1024;

/// An integer field within `lo..=hi` (`default` when absent), in the type the spec holds.
fn int<T: TryFrom<i64>>(
    field: &str,
    value: Option<i64>,
    default: i64,
    lo: i64,
    hi: i64,
) -> Result<T, SpecError> {
    let v = value.unwrap_or(default);
    if !(lo..=hi).contains(&v) {
        return Err(err(field, format!("must be {lo}-{hi}, got {v}")));
    }
    T::try_from(v).map_err(|_| err(field, format!("must be {lo}-{hi}, got {v}")))
}

fn millis(field: &str, seconds: f64) -> Result<u64, SpecError> {
    if !seconds.is_finite() || !(0.0..=86_400.0).contains(&seconds) {
        return Err(err(field, format!("{seconds} is not 0-86400 seconds")));
    }
    Ok((seconds * 1000.0).round() as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name = "llm"
image = "gantry-infer:dev"
args = ["--x"]
replicas = 2
policy = "binpack"
[env]
RUST_LOG = "info"
[[ports]]
name = "http"
port = 8080
[resources]
cpu = 0.5
memory_mib = 512
[gpu]
mode = "mps"
compute_pct = 25
memory_mib = 10000
models = ["H100-80GB"]
[constraints]
labels = { zone = "a" }
spread = true
[health]
path = "/health"
port = "http"
interval_s = 2
timeout_s = 0.5
[restart]
policy = "on-failure"
max_backoff_s = 30
"#;

    #[test]
    fn port_names_that_would_share_a_variable_are_refused() {
        let spec = "name = \"w\"\ncommand = \"/bin/true\"\n[[ports]]\nname = \"a-b\"\nport = 80\n[[ports]]\nname = \"a_b\"\nport = 81\n";
        let e = parse_workload_toml(spec).unwrap_err().to_string();
        assert!(e.starts_with("ports[1].name: \"a-b\" and \"a_b\" would both be GANTRY_PORT_A_B"), "{e}");
    }

    #[test]
    fn too_many_bytes_of_args_and_env_blame_the_larger() {
        // 34 values of 4,000 bytes: each within its own limit, too many together.
        let v = "x".repeat(4000);
        let list: Vec<String> = (0..34).map(|_| format!("\"{v}\"")).collect();
        let args = format!("name = \"w\"\ncommand = \"/bin/true\"\nargs = [{}]\n", list.join(", "));
        let e = parse_workload_toml(&args).unwrap_err().to_string();
        assert!(e.starts_with("args: args and env hold"), "{e}");
        let vars: String = (0..34).map(|i| format!("V{i} = \"{v}\"\n")).collect();
        let env = format!("name = \"w\"\ncommand = \"/bin/true\"\nargs = [\"a\"]\n[env]\n{vars}");
        let e = parse_workload_toml(&env).unwrap_err().to_string();
        assert!(e.starts_with("env: args and env hold"), "{e}");
    }

    #[test]
    fn a_full_file_parses() {
        let s = parse_workload_toml(FULL).unwrap();
        assert_eq!(s.name, "llm");
        assert_eq!(s.runtime, RuntimeSpec::Docker { image: "gantry-infer:dev".into() });
        assert_eq!(s.gpu, GpuRequest::Mps { compute_pct: 25, memory_mib: 10_000 });
        assert_eq!(s.cpu_milli, 500);
        assert_eq!(s.policy, Some(Policy::Binpack));
        assert_eq!(s.constraints.gpu_models, vec!["H100-80GB".to_string()]);
        assert!(s.constraints.spread_replicas);
        assert_eq!(s.health.as_ref().unwrap().timeout_ms, 500);
        assert_eq!(s.restart.mode, RestartMode::OnFailure);
        assert_eq!(s.restart.max_backoff_ms, 30_000);
        assert_eq!(s.ports[0].env_name(), "GANTRY_PORT_HTTP");
    }

    #[test]
    fn a_minimal_process_file_gets_defaults() {
        let s = parse_workload_toml("name = \"p\"\ncommand = \"/bin/sleep\"\nargs = [\"100\"]\n").unwrap();
        assert_eq!(s.replicas, 1);
        assert_eq!(s.gpu, GpuRequest::None);
        assert_eq!(s.restart, RestartPolicy::default());
        assert_eq!(s.stop_grace_ms, 10_000);
    }

    #[test]
    fn a_short_health_interval_shortens_the_default_timeout() {
        let health = |extra: &str| {
            let text = format!(
                "name = \"p\"\ncommand = \"/bin/true\"\n[[ports]]\nname = \"http\"\nport = 8080\n[health]\npath = \"/\"\nport = \"http\"\n{extra}"
            );
            parse_workload_toml(&text).map(|s| s.health.map(|h| (h.interval_ms, h.timeout_ms)))
        };
        assert_eq!(health("").unwrap(), Some((2_000, 1_000)));
        assert_eq!(health("interval_s = 0.5\n").unwrap(), Some((500, 500)));
        assert_eq!(health("interval_s = 0.5\ntimeout_s = 0.2\n").unwrap(), Some((500, 200)));
        assert_eq!(health("interval_s = 0.5\ntimeout_s = 1\n").unwrap_err().field, "health.timeout_s");
    }

    fn field_of(text: &str) -> String {
        parse_workload_toml(text).unwrap_err().field
    }

    #[test]
    fn errors_name_the_field() {
        let base = "name = \"w\"\nimage = \"i\"\n";
        assert_eq!(field_of("name = \"bad name\"\nimage = \"i\"\n"), "name");
        assert_eq!(field_of("name = \"w\"\n"), "image");
        assert_eq!(field_of("name = \"w\"\nimage = \"i\"\ncommand = \"c\"\n"), "image");
        assert_eq!(field_of(&format!("{base}replicas = 0\n")), "replicas");
        assert_eq!(field_of(&format!("{base}policy = \"best\"\n")), "policy");
        assert_eq!(field_of(&format!("{base}[gpu]\nmode = \"fancy\"\n")), "gpu.mode");
        assert_eq!(field_of(&format!("{base}[gpu]\nmode = \"mig\"\n")), "gpu.profile");
        assert_eq!(field_of(&format!("{base}[gpu]\nmode = \"mig\"\nprofile = \"9g.1gb\"\n")), "gpu.profile");
        assert_eq!(
            field_of(&format!("{base}[gpu]\nmode = \"mps\"\ncompute_pct = 0\nmemory_mib = 1\n")),
            "gpu.compute_pct"
        );
        assert_eq!(field_of(&format!("{base}[gpu]\nmode = \"exclusive\"\ncount = 9\n")), "gpu.count");
        assert_eq!(
            field_of(&format!("{base}[gpu]\nmode = \"exclusive\"\nprofile = \"1g.10gb\"\n")),
            "gpu.profile"
        );
        assert_eq!(
            field_of(&format!("{base}[env]\nCUDA_VISIBLE_DEVICES = \"0\"\n")),
            "env.CUDA_VISIBLE_DEVICES"
        );
        assert_eq!(field_of(&format!("{base}[health]\npath = \"/h\"\nport = \"http\"\n")), "health.port");
        assert_eq!(
            field_of(&format!(
                "{base}[[ports]]\nname = \"http\"\nport = 80\n[health]\npath = \"h\"\nport = \"http\"\n"
            )),
            "health.path"
        );
        assert_eq!(field_of(&format!("{base}[restart]\npolicy = \"sometimes\"\n")), "restart.policy");
        assert_eq!(field_of(&format!("{base}[resources]\ncpu = -1\n")), "resources.cpu");
        // Unknown keys and type errors name the field, the allowed values and the line.
        let e = parse_workload_toml(&format!("{base}replica = 2\n")).unwrap_err();
        assert!(e.field == "replica" && e.reason.starts_with("unknown field"), "{e}");
        assert!(e.reason.contains("line 3"), "{e}");
        let e = parse_workload_toml("name = \"w\"\nimage = \"i\"\nreplicas = \"two\"\n").unwrap_err();
        assert!(e.field == "replicas" && e.reason.contains("expected an integer"), "{e}");
        let e =
            parse_workload_toml(&format!("{base}[gpu]\nmode = \"exclusive\"\ncount = 1000\n")).unwrap_err();
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("gpu.count", "must be 1-8, got 1000"));
        let e =
            parse_workload_toml(&format!("{base}[gpu]\nmode = \"mps\"\ncompute_pct = 300\nmemory_mib = 1\n"))
                .unwrap_err();
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("gpu.compute_pct", "must be 1-100, got 300"));
        let e =
            parse_workload_toml(&format!("{base}[[ports]]\nname = \"http\"\nport = 70000\n")).unwrap_err();
        assert_eq!(e.field, "ports[0].port");
        let e = parse_workload_toml(&format!("{base}[gpu]\nmode = \"exclusive\"\ncolour = 1\n")).unwrap_err();
        assert_eq!(e.field, "gpu.colour");
    }

    #[test]
    fn replacement_is_needed_for_anything_but_the_count() {
        let a = parse_workload_toml(FULL).unwrap();
        let mut b = a.clone();
        b.replicas = 5;
        assert!(!a.needs_replacement(&b));
        b.args.push("--y".into());
        assert!(a.needs_replacement(&b));
    }
}
