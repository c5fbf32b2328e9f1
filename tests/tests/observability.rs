//! What a Prometheus operator sees: a live coordinator's and agent's
//! `/metrics`, checked with the ecosystem's own linter (`promtool check
//! metrics`, Debian's `prometheus` package), in both exposition formats,
//! and the shipped Grafana dashboard checked against them: every metric it
//! queries must exist.
//!
//! Without promtool the lint is skipped with a message, unless
//! `GANTRY_REQUIRE_PROMTOOL=1` (CI sets it), where that is a failure.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use gantry_tests::workloads::{allocs, run, sleep_workload};
use gantry_tests::{serial, wait_for, DevCluster, DevOptions};

const OPENMETRICS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

/// GET `path` from `addr` with `accept` (if any): (content type, body).
fn scrape(addr: &str, accept: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let kind = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    (kind, body.to_owned())
}

/// `promtool check metrics` on `text`: Ok(None) when clean, Ok(Some(findings)) when not,
/// Err when promtool is not installed.
fn promtool(text: &str) -> Result<Option<String>, String> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Err(format!("promtool: {e}")),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let findings =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((!out.status.success() || !findings.trim().is_empty()).then_some(findings))
}

/// Lints `text` with promtool, or explains why not.
fn lint(what: &str, text: &str) {
    match promtool(text) {
        Ok(None) => {}
        Ok(Some(findings)) => {
            panic!("promtool check metrics on the {what}:\n{findings}\n--- exposition:\n{text}")
        }
        Err(e) if std::env::var("GANTRY_REQUIRE_PROMTOOL").as_deref() == Ok("1") => {
            panic!("GANTRY_REQUIRE_PROMTOOL=1 but {e} (apt-get install prometheus)")
        }
        Err(e) => eprintln!("skipping the promtool lint of the {what}: {e}"),
    }
}

/// Families declared by `# TYPE` lines: (name, type).
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut w = rest.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

/// Names of the sample lines.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_owned())
        .collect()
}

/// What promtool does not catch about units: a name must end in a base unit,
/// never a scaled or abbreviated one, and counters must end in `_total`.
fn conventions(text: &str) -> Vec<String> {
    const NOT_BASE_UNITS: [&str; 12] = [
        "_pct",
        "_percent",
        "_mib",
        "_mb",
        "_kb",
        "_gib",
        "_ms",
        "_us",
        "_c",
        "_w",
        "_milliseconds",
        "_minutes",
    ];
    let mut problems = Vec::new();
    for (name, kind) in families(text) {
        if kind == "counter" && !name.ends_with("_total") {
            problems.push(format!("counter {name} does not end in _total"));
        }
        if let Some(suffix) = NOT_BASE_UNITS.iter().find(|s| name.ends_with(*s)) {
            problems.push(format!("{name} ends in {suffix}, not a base unit"));
        }
    }
    problems
}

/// Every metric name the dashboard's queries use.
fn dashboard_metrics(dashboard: &serde_json::Value) -> BTreeSet<String> {
    fn exprs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    exprs(dashboard, &mut found);
    let mut names = BTreeSet::new();
    for e in found {
        let mut rest = e;
        while let Some(at) = rest.find("gantry_") {
            let tail = &rest[at..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

/// The sample names a scrape can show: those present, and for each
/// histogram family its `_bucket`, `_sum` and `_count` even before a first
/// observation with labels.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = sample_names(text);
    for (name, kind) in families(text) {
        if kind == "histogram" {
            names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
        } else {
            names.insert(name);
        }
    }
    names
}

#[test]
fn metrics_pass_promtool_in_both_formats_and_the_dashboard_queries_only_what_exists() {
    let _serial = serial();
    let c = DevCluster::start(DevOptions { coordinators: 1, agents: 1, ..DevOptions::default() }).unwrap();
    let coordinator = c.coordinators()[0].clone();
    let agent = c.agents()[0].clone();
    let socket = coordinator.admin_socket.clone().unwrap();
    // A placement, so the planner's and the streams' series have samples.
    run(&socket, &sleep_workload("observed", 1, "mode = \"exclusive\""), false).unwrap();
    wait_for(Duration::from_secs(120), || {
        allocs(&socket, Some("observed")).ok()?.iter().any(|a| a.actual == "running").then_some(())
    })
    .unwrap();

    let mut all = BTreeSet::new();
    for (what, addr) in [("coordinator", &coordinator.metrics_listen), ("agent", &agent.metrics_listen)] {
        assert!(!addr.is_empty(), "cluster.json lists no metrics_listen for the {what}");
        let (kind, text) = scrape(addr, None);
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{what}: {kind}");
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{what}: OpenMetrics-only lines in text"
        );
        lint(what, &text);
        let problems = conventions(&text);
        assert!(problems.is_empty(), "{what}: {problems:#?}");

        let (kind, openmetrics) = scrape(addr, Some(OPENMETRICS_ACCEPT));
        assert!(kind.starts_with("application/openmetrics-text"), "{what}: {kind}");
        assert!(openmetrics.ends_with("# EOF\n"), "{what}: OpenMetrics without # EOF");
        // The same samples under the same names in both formats (values may
        // move between the two scrapes, names may not).
        assert_eq!(sample_names(&openmetrics), sample_names(&text), "{what}: formats disagree");
        all.extend(exposed(&text));
    }
    // The hot paths are measured: these histograms have observations by now.
    let (_, text) = scrape(&coordinator.metrics_listen, None);
    for counted in [
        "gantry_raft_commit_seconds_count",
        "gantry_raft_apply_seconds_count",
        "gantry_raft_log_fsync_seconds_count",
        "gantry_plan_round_seconds_count",
    ] {
        let line =
            text.lines().find(|l| l.starts_with(counted)).unwrap_or_else(|| panic!("{counted}:\n{text}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1.0, "{line}");
    }
    for labelled in [
        "gantry_agent_request_duration_seconds_count{request=\"heartbeat\"}",
        "gantry_alloc_stream_answer_duration_seconds_count{answer=\"changed\"}",
        "gantry_admin_request_duration_seconds_count{method=\"POST\",route=\"/v1/workloads\",status=\"200\"}",
    ] {
        assert!(text.lines().any(|l| l.starts_with(labelled)), "no {labelled} in\n{text}");
    }
    // The same /metrics on the admin socket.
    let (status, on_socket) = gantry_tests::http::admin(&socket, "GET", "/metrics", None).unwrap();
    assert_eq!(status, 200);
    assert!(on_socket.contains("# TYPE gantry_raft_commit_seconds histogram"), "{on_socket}");

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana/gantry-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let queried = dashboard_metrics(&dashboard);
    assert!(queried.len() >= 20, "the dashboard queries only {queried:?}");
    let missing: Vec<&String> = queried.iter().filter(|m| !all.contains(*m)).collect();
    assert!(missing.is_empty(), "{} queries metrics no process exposes: {missing:?}", path.display());
}

#[test]
fn the_conventions_check_catches_what_it_is_for() {
    let bad = "# TYPE gantry_agent_gpu_utilization_pct gauge\n# TYPE gantry_agent_heartbeats_sent counter\n";
    let problems = conventions(bad);
    assert_eq!(problems.len(), 2, "{problems:?}");
    let dashboard = serde_json::json!({"panels": [{"targets": [
        {"expr": "histogram_quantile(0.99, sum by (le) (rate(gantry_raft_commit_seconds_bucket[5m])))"},
        {"expr": "gantry_nodes / gantry_gpus"}
    ]}]});
    let names: Vec<String> = dashboard_metrics(&dashboard).into_iter().collect();
    assert_eq!(names, ["gantry_gpus", "gantry_nodes", "gantry_raft_commit_seconds_bucket"]);
}
