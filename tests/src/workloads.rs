//! Workload helpers for cluster tests: submitting through `gantryctl run`,
//! reading allocations, calling replicas, and finding what runs on the host.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use gantry_common::api::{AllocView, WorkloadView};
use serde_json::Value;

use crate::http::{admin, admin_get, tcp};
use crate::{ctl, wait_for};

/// A gantry-infer workload file for the process runtime (the binary built
/// next to the tests) or the docker runtime (`gantry-infer:dev`).
pub fn infer_workload(name: &str, runtime: &str, replicas: u32, gpu: &str) -> String {
    let target = if runtime == "docker" {
        "image = \"gantry-infer:dev\"".to_string()
    } else {
        format!("command = {:?}", crate::reachable_copy(&crate::bin("gantry-infer")).display().to_string())
    };
    format!(
        "name = \"{name}\"\n{target}\nreplicas = {replicas}\nstop_grace_s = 2\n\
         [[ports]]\nname = \"http\"\nport = 8080\n\
         [health]\npath = \"/health\"\nport = \"http\"\ninterval_s = 0.5\ntimeout_s = 0.5\n\
         [restart]\nbackoff_s = 0.5\nmax_backoff_s = 5\n\
         [gpu]\n{gpu}\n"
    )
}

/// A workload that only sleeps (process runtime), for placement tests.
pub fn sleep_workload(name: &str, replicas: u32, gpu: &str) -> String {
    format!(
        "name = \"{name}\"\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\nreplicas = {replicas}\nstop_grace_s = 1\n[gpu]\n{gpu}\n"
    )
}

/// `gantryctl run FILE` (optionally `--wait`), returning its JSON.
pub fn run(socket: &Path, spec: &str, wait: bool) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("workload.toml");
    std::fs::write(&file, spec)?;
    let file = file.display().to_string();
    let mut args = vec!["run", file.as_str()];
    if wait {
        args.extend(["--wait", "--timeout", "180"]);
    }
    ctl(socket, &args)
}

pub fn allocs(socket: &Path, workload: Option<&str>) -> anyhow::Result<Vec<AllocView>> {
    match workload {
        Some(w) => admin_get(socket, &format!("/v1/allocs?workload={w}")),
        None => admin_get(socket, "/v1/allocs"),
    }
}

pub fn workloads(socket: &Path) -> anyhow::Result<Vec<WorkloadView>> {
    admin_get(socket, "/v1/workloads")
}

/// Allocations meant to run.
pub fn running(socket: &Path, workload: &str) -> anyhow::Result<Vec<AllocView>> {
    Ok(allocs(socket, Some(workload))?.into_iter().filter(|a| a.desired == "run").collect())
}

/// Waits until `n` allocations of `workload` run healthy (on `node` when given).
pub fn wait_healthy(
    socket: &Path,
    workload: &str,
    n: usize,
    node: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Vec<AllocView>> {
    wait_for(timeout, || {
        let a = running(socket, workload).ok()?;
        let ok = a.len() == n
            && a.iter()
                .all(|a| a.actual == "running" && a.health == "healthy" && node.is_none_or(|n| a.node == n));
        ok.then_some(a)
    })
    .map_err(|e| {
        let now = running(socket, workload).map(|a| format!("{a:#?}")).unwrap_or_default();
        anyhow!("{workload}: not {n} healthy replicas: {e}; now: {now}")
    })
}

/// `GET /health` of a replica (gantry-infer reports its GPU environment there).
pub fn health(endpoint: &str) -> anyhow::Result<Value> {
    let (status, body) = tcp(endpoint, "GET", "/health", None)?;
    if status != 200 {
        bail!("GET {endpoint}/health: {status} {body}");
    }
    serde_json::from_str(&body).context("health JSON")
}

/// One inference request; returns the answer's JSON.
pub fn infer(endpoint: &str) -> anyhow::Result<Value> {
    let row: Vec<String> = (0..16).map(|i| format!("{}", f64::from(i) / 16.0)).collect();
    let body = format!("{{\"inputs\":[[{}]]}}", row.join(","));
    let (status, text) = tcp(endpoint, "POST", "/v1/infer", Some(&body))?;
    if status != 200 {
        bail!("POST {endpoint}/v1/infer: {status} {text}");
    }
    serde_json::from_str(&text).context("infer JSON")
}

/// Stops a workload through `gantryctl stop` and waits until it is gone.
pub fn stop(socket: &Path, workload: &str, timeout: Duration) -> anyhow::Result<()> {
    let _: Value = ctl(socket, &["stop", workload])?;
    wait_for(timeout, || {
        let w = workloads(socket).ok()?;
        (!w.iter().any(|w| w.name == workload)).then_some(())
    })
    .map_err(|e| anyhow!("{workload} not gone: {e}"))
}

/// Puts a node in or out of drain through the admin API.
pub fn set_drain(socket: &Path, node: &str, drain: bool) -> anyhow::Result<()> {
    let (status, body) =
        admin(socket, "PUT", &format!("/v1/nodes/{node}/drain"), Some(&format!("{{\"drain\":{drain}}}")))?;
    if status != 200 {
        bail!("drain {node}: {status} {body}");
    }
    Ok(())
}

/// Pids of host processes that carry `GANTRY_ALLOC_ID=<id>` in their environment.
pub fn processes_of(alloc_id: &str) -> Vec<u32> {
    let needle = format!("GANTRY_ALLOC_ID={alloc_id}");
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Ids of Docker containers labelled with this allocation.
pub fn containers_of(alloc_id: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=gantry.alloc={alloc_id}")])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect(),
        Err(_) => Vec::new(),
    }
}

/// The environment of a container, from `docker inspect`.
pub fn container_env(container: &str) -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Env}}", container])
        .output()
        .context("docker inspect")?;
    if !out.status.success() {
        bail!("docker inspect {container}: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("docker inspect JSON")
}

/// Whether the local Docker engine answers and has the gantry-infer image.
pub fn docker_ready() -> Result<(), String> {
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", "gantry-infer:dev"])
        .output()
        .map_err(|e| format!("docker CLI: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "gantry-infer:dev missing or engine unreachable ({}); build it with inference/build-image.sh",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
