//! `gantryctl dev --demo`: three inference workloads on the fresh cluster,
//! one per way of sharing GPUs, followed until healthy.
//!
//! The workload files are `examples/*.toml` of the source tree, built in; for
//! the process runtime their `image` line becomes a `command` line. The files
//! actually submitted are written to `DIR/workloads/`, so they can be edited
//! and submitted again with `gantryctl run`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::runtime::{DemoTarget, DEMO_IMAGE};
use crate::admin_client::AdminClient;
use crate::wait::RolloutDone;
use crate::workload_cmds::{read_spec, rollout_report, submit, submitted_line, wait_healthy};

/// (file name, text) of each demo workload.
pub const WORKLOADS: [(&str, &str); 3] = [
    ("infer-exclusive.toml", include_str!("../../../examples/infer-exclusive.toml")),
    ("infer-mps.toml", include_str!("../../../examples/infer-mps.toml")),
    ("infer-mig.toml", include_str!("../../../examples/infer-mig.toml")),
];

/// Writes, submits and follows every demo workload until healthy.
pub async fn run(
    client: &AdminClient,
    dir: &Path,
    target: &DemoTarget,
    timeout: Duration,
) -> anyhow::Result<Vec<(PathBuf, RolloutDone, bool)>> {
    let files = dir.join("workloads");
    std::fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
    let mut submitted = Vec::new();
    for (name, text) in WORKLOADS {
        let path = files.join(name);
        std::fs::write(&path, for_target(text, target))
            .with_context(|| format!("writing {}", path.display()))?;
        let spec = read_spec(&path)?;
        let started = Instant::now();
        let result = submit(client, &spec).await?;
        eprintln!("{}", submitted_line(&result));
        submitted.push((path, spec, result, started));
    }
    let mut done = Vec::new();
    for (path, spec, result, started) in submitted {
        let rollout = wait_healthy(client, &spec, &result, timeout, crate::wait::DEFAULT_STABLE, started)
            .await
            .with_context(|| format!("demo workload from {}", path.display()))?;
        done.push((path, rollout, spec.health.is_some()));
    }
    Ok(done)
}

/// The workload file for `target`: as written for Docker, or with the image
/// replaced by the `gantry-infer` command.
pub fn for_target(text: &str, target: &DemoTarget) -> String {
    let image_line = format!("image = \"{DEMO_IMAGE}\"");
    match target {
        DemoTarget::Image(image) => text.replacen(&image_line, &format!("image = {}", quote(image)), 1),
        DemoTarget::Command(path) => {
            let command = quote(&path.display().to_string());
            text.replacen(&image_line, &format!("command = {command}"), 1)
        }
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// What to print once the demo runs: each workload's replicas, then how to
/// call one and where to look.
pub fn summary(done: &[(PathBuf, RolloutDone, bool)], socket: &str) -> String {
    let mut out = String::from("demo workloads are healthy:\n");
    for (path, rollout, has_health) in done {
        out.push_str(&format!("\n{} ({})\n", rollout.workload, path.display()));
        out.push_str(&rollout_report(rollout, *has_health));
    }
    let endpoint = done.iter().flat_map(|(_, r, _)| &r.allocs).find_map(|a| a.endpoint.clone());
    out.push_str("\ntry:\n");
    if let Some(endpoint) = endpoint {
        out.push_str(&format!("  {}\n", curl_line(&endpoint)));
    }
    out.push_str(&format!("  export GANTRY_SOCKET={socket}\n"));
    out.push_str("  gantryctl workloads; gantryctl allocs; gantryctl gpus\n");
    if let Some(a) = done.iter().flat_map(|(_, r, _)| &r.allocs).next() {
        out.push_str(&format!("  gantryctl logs {}\n", a.id));
    }
    if let Some((path, _, _)) = done.first() {
        out.push_str(&format!("  edit {} and: gantryctl run {} --wait\n", path.display(), path.display()));
    }
    out
}

/// A request the demo model (16 inputs, see inference/src/lib.rs) answers.
pub fn curl_line(endpoint: &str) -> String {
    let inputs: Vec<String> = (0..16).map(|i| format!("{:.1}", f64::from(i) / 10.0)).collect();
    format!("curl -s -XPOST http://{endpoint}/v1/infer -d '{{\"inputs\":[[{}]]}}'", inputs.join(","))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gantry_common::workload::{parse_workload_toml, RuntimeSpec};
    use gantry_placement::GpuRequest;

    use super::*;
    use crate::wait::tests::alloc;

    #[test]
    fn the_examples_parse_for_both_runtimes() {
        let docker = DemoTarget::Image(DEMO_IMAGE.into());
        let process = DemoTarget::Command("/opt/my \"bin\"/gantry-infer".into());
        let mut gpus = Vec::new();
        for (name, text) in WORKLOADS {
            let d =
                parse_workload_toml(&for_target(text, &docker)).map_err(|e| format!("{name}: {e}")).unwrap();
            assert_eq!(d.runtime, RuntimeSpec::Docker { image: DEMO_IMAGE.into() });
            let p =
                parse_workload_toml(&for_target(text, &process)).map_err(|e| format!("{name}: {e}")).unwrap();
            assert_eq!(p.runtime, RuntimeSpec::Process { command: "/opt/my \"bin\"/gantry-infer".into() });
            assert!(p.health.is_some(), "{name}");
            gpus.push((p.name, p.replicas, p.gpu));
        }
        assert_eq!(
            gpus,
            [
                ("infer-exclusive".into(), 2, GpuRequest::Exclusive { count: 1, linked: false }),
                ("infer-mps".into(), 4, GpuRequest::Mps { compute_pct: 25, memory_mib: 10_000 }),
                ("infer-mig".into(), 1, GpuRequest::Mig { profile: "1g.10gb".into() }),
            ]
        );
    }

    #[test]
    fn curl_line_sends_one_row_of_sixteen_inputs() {
        let line = curl_line("127.0.0.1:20001");
        let body = line.split_once("-d '").unwrap().1.trim_end_matches('\'');
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["inputs"][0].as_array().unwrap().len(), 16);
        assert!(line.starts_with("curl -s -XPOST http://127.0.0.1:20001/v1/infer -d '"), "{line}");
    }

    #[test]
    fn summary_shows_a_call_and_the_commands() {
        let done = RolloutDone {
            workload: "infer-mig".into(),
            version: 1,
            placed_s: 0.2,
            healthy_s: 1.5,
            allocs: vec![alloc("infer-mig.0.1", 1, "run", "running", "healthy")],
        };
        let text = summary(&[("/d/workloads/infer-mig.toml".into(), done, true)], "/d/c1/admin.sock");
        assert!(text.contains("curl -s -XPOST http://127.0.0.1:31000/v1/infer"), "{text}");
        assert!(text.contains("export GANTRY_SOCKET=/d/c1/admin.sock"), "{text}");
        assert!(text.contains("gantryctl logs infer-mig.0.1"), "{text}");
    }
}
