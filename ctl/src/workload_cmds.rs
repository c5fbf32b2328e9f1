//! `gantryctl run`, `workloads`, `allocs`, `stop`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use gantry_common::api::{AllocView, SubmitResult, WorkloadView};
use gantry_common::workload::{parse_workload_toml, WorkloadSpec};
use hyper::Method;
use serde_json::Value;

use crate::admin_client::{encode, AdminClient, CallError};
use crate::cluster_cmds::print_json;
use crate::out::{out, outln};
use crate::table::render;
use crate::wait::{self, round_ms, RolloutDone};

/// Reads and validates a workload file locally, so mistakes show before any
/// request: `FILE: field: reason`.
pub fn read_spec(path: &Path) -> anyhow::Result<WorkloadSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_workload_toml(&text).map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.field, e.reason))
}

/// The workload files `gantryctl run` was given: files as they are, and
/// every `*.toml` directly inside a directory (sorted by name).
pub fn expand_paths(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
                .collect();
            if inside.is_empty() {
                anyhow::bail!("{}: no *.toml workload files in this directory", path.display());
            }
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Reads every file; all the mistakes are reported, one line each.
pub fn read_specs(files: &[PathBuf]) -> anyhow::Result<Vec<WorkloadSpec>> {
    let mut specs = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    let mut seen: std::collections::BTreeMap<String, &Path> = std::collections::BTreeMap::new();
    for file in files {
        match read_spec(file) {
            Ok(spec) => {
                if let Some(first) = seen.insert(spec.name.clone(), file) {
                    errors.push(format!(
                        "{}: name: workload {:?} is also defined in {}",
                        file.display(),
                        spec.name,
                        first.display()
                    ));
                }
                specs.push(spec);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        let n = errors.len();
        anyhow::bail!(
            "{}\n{n} of {} files have errors; nothing was submitted",
            errors.join("\n"),
            files.len()
        );
    }
    Ok(specs)
}

/// Most JSON bytes of specs per request: a batch is one Raft entry of at
/// most 1 MiB encoded (which is a little smaller than JSON), so larger ones
/// go as several requests.
const BATCH_JSON_BYTES: usize = 900 * 1024;

/// Cuts specs into runs of at most `budget` JSON bytes (a spec larger than
/// that goes alone).
pub fn batches(specs: &[WorkloadSpec], budget: usize) -> Vec<&[WorkloadSpec]> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, spec) in specs.iter().enumerate() {
        let size = serde_json::to_vec(spec).map_or(budget, |b| b.len() + 1);
        if i > start && used + size > budget {
            out.push(&specs[start..i]);
            (start, used) = (i, 0);
        }
        used += size;
    }
    if start < specs.len() {
        out.push(&specs[start..]);
    }
    out
}

/// Submits several specs in as few requests as fit (one Raft entry each on
/// a cluster that speaks protocol 3). A coordinator too old for batches
/// (404) gets them one by one.
pub async fn submit_batch(client: &AdminClient, specs: &[WorkloadSpec]) -> anyhow::Result<Vec<SubmitResult>> {
    let mut results: Vec<SubmitResult> = Vec::with_capacity(specs.len());
    for part in batches(specs, BATCH_JSON_BYTES) {
        let body = serde_json::json!({ "specs": part });
        match client.send::<_, Vec<SubmitResult>>(Method::POST, "/v1/workload-batches", &body).await {
            Ok(r) => results.extend(r),
            Err(e)
                if e.downcast_ref::<CallError>()
                    .is_some_and(|c| c.status == hyper::StatusCode::NOT_FOUND) =>
            {
                eprintln!(
                    "this coordinator takes no batches (an older version): submitting one workload at a time"
                );
                for spec in &specs[results.len()..] {
                    results.push(submit(client, spec).await?);
                }
                return Ok(results);
            }
            Err(e) => {
                let done = results.len();
                return Err(e).with_context(|| {
                    format!(
                        "submitting workloads {}-{} of {} ({done} before them were submitted)",
                        done + 1,
                        done + part.len(),
                        specs.len()
                    )
                });
            }
        }
    }
    Ok(results)
}

/// `gantryctl run FILE... | DIR`: one file is one submission; several (or
/// a directory) are one batch, then each is followed with `--wait`.
pub async fn run_many(
    client: &AdminClient,
    paths: &[PathBuf],
    wait: bool,
    timeout: Duration,
    stable: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let files = expand_paths(paths)?;
    if let [file] = files.as_slice() {
        return run(client, file, wait, timeout, stable, json).await;
    }
    let specs = read_specs(&files)?;
    let started = Instant::now();
    let results = submit_batch(client, &specs).await?;
    if !wait {
        if json {
            return print_json(&results);
        }
        for r in &results {
            outln!("{}", submitted_line(r));
        }
        return Ok(());
    }
    for r in &results {
        if !json {
            eprintln!("{}", submitted_line(r));
        }
    }
    let mut done = Vec::with_capacity(results.len());
    for (spec, r) in specs.iter().zip(&results) {
        let d = wait_healthy(client, spec, r, timeout, stable, started).await?;
        if !json {
            out!("{}", rollout_report(&d, spec.health.is_some()));
        }
        done.push(d);
    }
    if json {
        return print_json(&done);
    }
    Ok(())
}

/// Submits a spec; returns what the coordinator answered.
pub async fn submit(client: &AdminClient, spec: &WorkloadSpec) -> anyhow::Result<SubmitResult> {
    client
        .send(Method::POST, "/v1/workloads", spec)
        .await
        .with_context(|| format!("submitting {}", spec.name))
}

/// Follows the version just submitted until it is healthy (or fails).
pub async fn wait_healthy(
    client: &AdminClient,
    spec: &WorkloadSpec,
    submitted: &SubmitResult,
    timeout: Duration,
    stable: Duration,
    started: Instant,
) -> anyhow::Result<RolloutDone> {
    let rollout = wait::Rollout::new(
        &submitted.workload,
        submitted.version,
        spec.health.is_some(),
        timeout,
        stable,
        started,
    );
    wait::follow_rollout(client, rollout).await
}

pub async fn run(
    client: &AdminClient,
    file: &Path,
    wait: bool,
    timeout: Duration,
    stable: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let spec = read_spec(file)?;
    let started = Instant::now();
    let result = submit(client, &spec).await?;
    if !wait {
        if json {
            return print_json(&result);
        }
        outln!("{}", submitted_line(&result));
        return Ok(());
    }
    if !json {
        eprintln!("{}", submitted_line(&result));
    }
    let done = wait_healthy(client, &spec, &result, timeout, stable, started).await?;
    if json {
        return print_json(&done);
    }
    out!("{}", rollout_report(&done, spec.health.is_some()));
    Ok(())
}

/// `workload llm: version 3 submitted (unchanged)`
pub fn submitted_line(r: &SubmitResult) -> String {
    let what = if r.changed { format!("log index {}", r.log_index) } else { "unchanged".to_string() };
    format!("workload {}: version {} submitted ({what})", r.workload, r.version)
}

/// The replicas with their endpoints, then the times.
pub fn rollout_report(done: &RolloutDone, has_health_check: bool) -> String {
    let rows: Vec<Vec<String>> = done
        .allocs
        .iter()
        .map(|a| {
            vec![a.id.clone(), a.node.clone(), gpus_cell(a), a.endpoint.clone().unwrap_or_else(|| "-".into())]
        })
        .collect();
    let mut out = render(&["ID", "NODE", "GPU", "ENDPOINT"], &rows);
    let ready = if !done.allocs.is_empty() && done.allocs.iter().all(|a| a.actual == "completed") {
        "completed"
    } else if has_health_check {
        "healthy"
    } else {
        "running (no health check)"
    };
    out.push_str(&format!(
        "{} v{}: {} replicas placed after {:.1}s, {ready} after {:.1}s\n",
        done.workload,
        done.version,
        done.allocs.len(),
        done.placed_s,
        done.healthy_s
    ));
    out
}

pub async fn workloads(client: &AdminClient, json: bool) -> anyhow::Result<()> {
    let (views, stale): (Vec<WorkloadView>, _) = client.get_marked("/v1/workloads").await?;
    crate::cluster_cmds::warn_stale(stale.as_ref(), json);
    if json {
        return print_json(&views);
    }
    if views.is_empty() {
        outln!("no workloads; submit one with `gantryctl run FILE`");
        return Ok(());
    }
    out!(
        "{}",
        render(
            &["NAME", "VERSION", "RUNTIME", "TARGET", "GPU", "REPLICAS", "HEALTHY", "STATUS", "REASON"],
            &workload_rows(&views)
        )
    );
    Ok(())
}

pub fn workload_rows(views: &[WorkloadView]) -> Vec<Vec<String>> {
    views
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.version.to_string(),
                w.runtime.clone(),
                w.target.clone(),
                w.gpu.clone(),
                format!("{}/{}", w.running, w.replicas),
                w.healthy.to_string(),
                w.status.clone(),
                w.reason.clone().or_else(|| w.pending_reason.clone()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

pub async fn allocs(
    client: &AdminClient,
    workload: Option<&str>,
    all: bool,
    json: bool,
) -> anyhow::Result<()> {
    let path = match workload {
        Some(w) => format!("/v1/allocs?workload={}", encode(w)),
        None => "/v1/allocs".to_string(),
    };
    let (allocs, stale): (Vec<AllocView>, _) = client.get_marked(&path).await?;
    crate::cluster_cmds::warn_stale(stale.as_ref(), json);
    let shown = visible(&allocs, all);
    if json {
        return print_json(&shown);
    }
    if shown.is_empty() {
        let hidden = allocs.len();
        if hidden > 0 {
            outln!("no live allocations ({hidden} stopped ones hidden; --all shows them)");
        } else {
            outln!("no allocations");
        }
        return Ok(());
    }
    out!(
        "{}",
        render(
            &["ID", "WORKLOAD", "NODE", "GPU", "DESIRED", "ACTUAL", "HEALTH", "RESTARTS", "ENDPOINT/MESSAGE"],
            &alloc_rows(&shown)
        )
    );
    Ok(())
}

/// By default, allocations that were stopped on purpose and hold nothing
/// any more are history: hidden unless `all`.
pub fn visible(allocs: &[AllocView], all: bool) -> Vec<&AllocView> {
    allocs.iter().filter(|a| all || !(a.desired == "stop" && wait::is_terminal(&a.actual))).collect()
}

pub fn alloc_rows(allocs: &[&AllocView]) -> Vec<Vec<String>> {
    allocs
        .iter()
        .map(|a| {
            let last = match (&a.endpoint, a.message.is_empty()) {
                (Some(e), true) => e.clone(),
                (Some(e), false) => format!("{e} ({})", a.message),
                (None, false) => a.message.clone(),
                (None, true) => "-".into(),
            };
            vec![
                a.id.clone(),
                a.workload.clone(),
                a.node.clone(),
                gpus_cell(a),
                a.desired.clone(),
                a.actual.clone(),
                a.health.clone(),
                a.restarts.to_string(),
                last,
            ]
        })
        .collect()
}

fn gpus_cell(a: &AllocView) -> String {
    if a.gpus.is_empty() {
        "-".into()
    } else {
        a.gpus.join(", ")
    }
}

pub async fn stop(
    client: &AdminClient,
    workload: &str,
    wait: bool,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let resp: Value = client
        .send(Method::DELETE, &format!("/v1/workloads/{}", encode(workload)), &())
        .await
        .with_context(|| format!("stopping {workload} (`gantryctl workloads` lists the names)"))?;
    let log_index = resp.get("log_index").cloned().unwrap_or(Value::Null);
    if !wait {
        if json {
            return print_json(&resp);
        }
        outln!("workload {workload}: stop requested (log index {log_index})");
        return Ok(());
    }
    let took = wait::follow_stop(client, workload, timeout).await?;
    if json {
        return print_json(&serde_json::json!({
            "workload": workload,
            "log_index": log_index,
            "stopped_s": round_ms(took),
        }));
    }
    outln!("workload {workload}: every replica stopped after {:.1}s", took.as_secs_f64());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wait::tests::{alloc, view};

    #[test]
    fn allocs_hide_stopped_history_unless_all() {
        let allocs = vec![
            alloc("llm.0.1", 1, "stop", "stopped", "unknown"),
            alloc("llm.1.2", 1, "stop", "running", "healthy"),
            alloc("llm.2.3", 1, "run", "failed", "unknown"),
            alloc("llm.3.4", 1, "stop", "lost", "unknown"),
        ];
        let ids = |v: Vec<&AllocView>| v.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(visible(&allocs, false)), ["llm.1.2", "llm.2.3"]);
        assert_eq!(visible(&allocs, true).len(), 4);
    }

    #[test]
    fn alloc_rows_show_endpoint_or_message() {
        let mut running = alloc("llm.0.1", 1, "run", "running", "healthy");
        running.gpus = vec!["MPS 25% 10000MiB on GPU 1".into(), "GPU 2".into()];
        let mut failed = alloc("llm.1.2", 1, "run", "failed", "unknown");
        failed.message = "image gantry-infer:dev not found".into();
        failed.gpus.clear();
        let rows = alloc_rows(&[&running, &failed]);
        assert_eq!(
            rows[0],
            [
                "llm.0.1",
                "llm",
                "node-1",
                "MPS 25% 10000MiB on GPU 1, GPU 2",
                "run",
                "running",
                "healthy",
                "0",
                "127.0.0.1:31000"
            ]
        );
        assert_eq!(rows[1][3], "-");
        assert_eq!(rows[1][8], "image gantry-infer:dev not found");
    }

    #[test]
    fn workload_rows_show_running_over_desired_and_the_reason() {
        let mut v = view(3, 4, Some("no node has room"));
        v.running = 1;
        v.healthy = 1;
        let rows = workload_rows(&[v]);
        assert_eq!(
            rows[0],
            [
                "llm",
                "3",
                "process",
                "/bin/gantry-infer",
                "1 free exclusive GPU(s)",
                "1/4",
                "1",
                "deploying",
                "no node has room"
            ]
        );
    }

    #[test]
    fn submitted_line_says_whether_anything_changed() {
        let r = SubmitResult { workload: "llm".into(), version: 3, changed: false, log_index: 9 };
        assert_eq!(submitted_line(&r), "workload llm: version 3 submitted (unchanged)");
        let r = SubmitResult { changed: true, ..r };
        assert_eq!(submitted_line(&r), "workload llm: version 3 submitted (log index 9)");
    }

    #[test]
    fn a_bad_file_names_itself_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, "name = \"w\"\nimage = \"i\"\nreplicas = 0\n").unwrap();
        let e = read_spec(&path).unwrap_err().to_string();
        assert_eq!(e, format!("{}: replicas: must be 1-10000 (use `gantryctl stop` for 0)", path.display()));
        let e = read_spec(&dir.path().join("missing.toml")).unwrap_err().to_string();
        assert!(e.starts_with("reading "), "{e}");
    }

    #[test]
    fn rollout_report_lists_endpoints_and_times() {
        let done = RolloutDone {
            workload: "llm".into(),
            version: 2,
            placed_s: 0.4,
            healthy_s: 2.26,
            allocs: vec![alloc("llm.0.1", 2, "run", "running", "healthy")],
        };
        let text = rollout_report(&done, true);
        assert!(text.contains("llm.0.1  node-1  GPU 0  127.0.0.1:31000"), "{text}");
        assert!(text.ends_with("llm v2: 1 replicas placed after 0.4s, healthy after 2.3s\n"), "{text}");
        // A job whose replicas all finished says so, not "running".
        let job = RolloutDone { allocs: vec![alloc("llm.0.1", 2, "run", "completed", "unknown")], ..done };
        let text = rollout_report(&job, false);
        assert!(text.ends_with("completed after 2.3s\n"), "{text}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod batch_tests {
    use super::*;

    fn spec(name: &str) -> WorkloadSpec {
        parse_workload_toml(&format!("name = \"{name}\"\ncommand = \"/bin/x\"\n")).unwrap()
    }

    #[test]
    fn batches_are_cut_by_size_and_keep_the_order() {
        let specs: Vec<_> = (0..100).map(|i| spec(&format!("w{i:03}"))).collect();
        let one = serde_json::to_vec(&specs[0]).unwrap().len() + 1;
        assert_eq!(batches(&specs, usize::MAX).len(), 1);
        let parts = batches(&specs, one * 10);
        assert_eq!(parts.len(), 10);
        assert!(parts.iter().all(|p| p.len() == 10));
        let names: Vec<&str> = parts.iter().flat_map(|p| p.iter().map(|s| s.name.as_str())).collect();
        assert_eq!(names, specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>());
        assert_eq!(batches(&specs, 1).len(), 100, "a spec larger than the budget goes alone");
        assert!(batches(&[], 10).is_empty());
    }
}
