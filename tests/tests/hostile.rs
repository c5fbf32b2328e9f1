//! What a careless or hostile client, operator, workload or agent can do to
//! a cluster, and what it gets instead. Read it as a list of attacks: each
//! names what is tried and what must come back. Every case was a defect of
//! an earlier version (the hardening issue); each runs against real
//! coordinators and agents.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gantry_common::api::{AllocView, ClusterStatus, NodeView, WorkloadView};
use gantry_tests::http::{admin, admin_get, admin_raw};
use gantry_tests::workloads::{allocs, run, sleep_workload, workloads};
use gantry_tests::{bin, serial, wait_for, DevCluster, DevOptions, ProcessEntry};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(120);

fn socket(p: &ProcessEntry) -> PathBuf {
    p.admin_socket.clone().unwrap()
}

/// A canonical workload spec as the JSON API takes it.
fn spec_json(name: &str) -> Value {
    json!({
        "name": name,
        "runtime": {"process": {"command": "/bin/sleep"}},
        "args": ["600"], "env": {}, "ports": [], "replicas": 1,
        "restart": {"mode": "always", "backoff_ms": 1000, "max_backoff_ms": 60000},
        "cpu_milli": 0, "memory_mib": 0, "gpu": "none",
        "constraints": {"gpu_models": [], "min_gpu_memory_mib": 0, "labels": [], "spread_replicas": false},
        "policy": null, "health": null, "stop_grace_ms": 1000
    })
}

fn post_workload(s: &Path, body: &Value) -> (u16, Value) {
    let (status, text) = admin(s, "POST", "/v1/workloads", Some(&body.to_string())).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Runs `gantryctl ARGS` (no --json unless given); returns (status code, stdout, stderr).
fn gantryctl(s: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("gantryctl")).arg("--socket").arg(s).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The admin API refuses, with a JSON error naming the field, everything
/// the typed CLI would never send — and nothing it refuses changes state.
#[test]
fn the_admin_api_refuses_malformed_and_hostile_requests() -> anyhow::Result<()> {
    let _serial = serial();
    let c = DevCluster::start(DevOptions { coordinators: 1, agents: 1, ..Default::default() })?;
    let s = socket(&c.coordinators()[0]);

    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = spec_json("w");
        f(&mut v);
        v
    };
    let big = "x".repeat(4000);
    // (attack, body, status, field, words in the error)
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        ("an unknown field", with(&|v| v["foo"] = json!(1)), 400, "foo", "unknown field"),
        (
            "an unknown nested field",
            with(&|v| v["restart"]["bogus"] = json!(1)),
            400,
            "restart.bogus",
            "unknown field",
        ),
        (
            "the trace-only milli GPU mode",
            with(&|v| v["gpu"] = json!({"milli": {"milli": 500, "count": 1}})),
            400,
            "gpu.mode",
            "milli",
        ),
        (
            "a GPU count out of its type",
            with(&|v| v["gpu"] = json!({"exclusive": {"count": 1000, "linked": false}})),
            400,
            "gpu.exclusive.count",
            "from 0 to 255",
        ),
        (
            "a GPU count out of range",
            with(&|v| v["gpu"] = json!({"exclusive": {"count": 9, "linked": false}})),
            400,
            "gpu.count",
            "1 to 8",
        ),
        ("a name that is a path", with(&|v| v["name"] = json!("..")), 400, "name", "start and end"),
        ("a hidden name", with(&|v| v["name"] = json!(".x")), 400, "name", "start and end"),
        (
            "a name that forges a table row",
            with(&|v| v["name"] = json!("a\r\nnode-9")),
            400,
            "name",
            "may only hold",
        ),
        (
            "a command with an escape sequence",
            with(&|v| v["runtime"] = json!({"process": {"command": "/bin/x\u{1b}[2J"}})),
            400,
            "command",
            "control character",
        ),
        (
            "a label value with a line break",
            with(&|v| v["constraints"]["labels"] = json!([{"equals": {"key": "zone", "value": "a\r\nb"}}])),
            400,
            "constraints.labels.zone",
            "control character",
        ),
        (
            "200 env values of 4,000 bytes (a 1.2 MB spec)",
            with(&|v| {
                v["env"] =
                    (0..200).map(|i| (format!("V{i}"), json!(big))).collect::<serde_json::Map<_, _>>().into()
            }),
            400,
            "env",
            "at most 131072",
        ),
        (
            "args and env over 128 KiB together",
            with(&|v| v["args"] = json!((0..40).map(|_| big.clone()).collect::<Vec<_>>())),
            400,
            "args",
            "131072",
        ),
        (
            "agent-owned variables",
            with(&|v| v["env"] = json!({"CUDA_VISIBLE_DEVICES": "0"})),
            400,
            "env.CUDA_VISIBLE_DEVICES",
            "set by the agent",
        ),
        (
            "a user for a container",
            with(&|v| {
                v["runtime"] = json!({"docker": {"image": "i"}});
                v["user"] = json!("root");
            }),
            400,
            "user",
            "process",
        ),
    ];
    for (attack, body, status, field, words) in &cases {
        let (got, answer) = post_workload(&s, body);
        assert_eq!(got, *status, "{attack}: {answer}");
        assert_eq!(answer["field"].as_str(), Some(*field), "{attack}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(words), "{attack}: {error:?} does not say {words:?}");
    }

    // Malformed bodies, wrong media types, oversized bodies, bad routes:
    // every answer is JSON with an `error`.
    let raw: Vec<(&str, String, Vec<u8>, u16)> = vec![
        (
            "malformed JSON",
            "POST /v1/workloads HTTP/1.1\nHost: x\nContent-Type: application/json\n".into(),
            b"{\"name\":".to_vec(),
            400,
        ),
        (
            "trailing garbage",
            "POST /v1/workloads HTTP/1.1\nHost: x\nContent-Type: application/json\n".into(),
            format!("{} x", spec_json("w")).into_bytes(),
            400,
        ),
        (
            "not JSON at all",
            "POST /v1/workloads HTTP/1.1\nHost: x\nContent-Type: text/plain\n".into(),
            b"hello".to_vec(),
            415,
        ),
        (
            "a body over 1 MiB",
            "POST /v1/workloads HTTP/1.1\nHost: x\nContent-Type: application/json\n".into(),
            vec![b' '; 2 << 20],
            413,
        ),
        ("an unknown route", "GET /v1/nope HTTP/1.1\nHost: x\n".into(), vec![], 404),
        ("a method a route does not take", "PATCH /v1/workloads HTTP/1.1\nHost: x\n".into(), vec![], 405),
        ("an unknown query parameter", "GET /v1/allocs?wokload=x HTTP/1.1\nHost: x\n".into(), vec![], 400),
        (
            "a query value of the wrong type",
            "GET /v1/status?local=maybe HTTP/1.1\nHost: x\n".into(),
            vec![],
            400,
        ),
        (
            "a bad idempotency key",
            "DELETE /v1/workloads/none HTTP/1.1\nHost: x\nIdempotency-Key: ../../etc\n".into(),
            vec![],
            400,
        ),
        (
            "a drain of a node nobody has",
            "PUT /v1/nodes/ghost/drain HTTP/1.1\nHost: x\nContent-Type: application/json\n".into(),
            br#"{"drain":true}"#.to_vec(),
            404,
        ),
        (
            "a label value with NUL",
            "PUT /v1/nodes/node-1/labels HTTP/1.1\nHost: x\nContent-Type: application/json\n".into(),
            br#"{"set":{"k":"a\u0000b"}}"#.to_vec(),
            400,
        ),
        (
            "a label value that forges a row",
            "PUT /v1/nodes/node-1/labels HTTP/1.1\nHost: x\nContent-Type: application/json\n".into(),
            br#"{"set":{"k":"x\r\nnode-9  ready"}}"#.to_vec(),
            400,
        ),
    ];
    for (attack, head, body, status) in &raw {
        let (got, _, answer) = admin_raw(&s, head, body)?;
        assert_eq!(got, *status, "{attack}: {answer}");
        let v: Value =
            serde_json::from_str(&answer).unwrap_or_else(|_| panic!("{attack}: not JSON: {answer:?}"));
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{attack}: {answer}");
    }

    // Nothing of it changed anything.
    assert!(workloads(&s)?.is_empty());
    let nodes: Vec<NodeView> = admin_get(&s, "/v1/nodes")?;
    assert_eq!(nodes[0].labels.get("k"), None);

    // The same idempotency key twice (a client retrying after a lost
    // answer) writes once and answers the same both times; the same key
    // with another request is refused (409), not answered as done.
    let put = |key: &str, body: &Value| {
        admin_raw(
            &s,
            &format!("POST /v1/workloads HTTP/1.1\nHost: x\nContent-Type: application/json\nIdempotency-Key: {key}\n"),
            body.to_string().as_bytes(),
        )
        .unwrap()
    };
    let (a, _, first) = put("retry-1", &spec_json("keyed"));
    let (b, _, second) = put("retry-1", &spec_json("keyed"));
    assert_eq!((a, b), (200, 200), "{first} / {second}");
    let (first, second): (Value, Value) = (serde_json::from_str(&first)?, serde_json::from_str(&second)?);
    assert_eq!(first["changed"], json!(true));
    for f in ["workload", "version", "changed"] {
        assert_eq!(first[f], second[f], "a retry gets the first answer, not 'unchanged': {first} / {second}");
    }
    let mut other = spec_json("keyed");
    other["replicas"] = json!(3);
    let (c, _, third) = put("retry-1", &other);
    assert_eq!(c, 409, "{third}");
    assert!(third.contains("different request"), "{third}");
    let w: Vec<WorkloadView> = workloads(&s)?;
    assert_eq!((w.len(), w[0].replicas), (1, 1), "the repeat changed nothing");
    Ok(())
}

/// One valid but huge workload used to cut its node off: its desired set
/// outgrew a frame and the agent reconnected four times a second. Now the
/// set streams in chunks, the node stays reachable, and another workload's
/// stop on that node is carried out.
#[test]
fn a_huge_valid_workload_does_not_cut_off_its_node() -> anyhow::Result<()> {
    let _serial = serial();
    let c = DevCluster::start(DevOptions { coordinators: 1, agents: 1, ..Default::default() })?;
    let s = socket(&c.coordinators()[0]);
    let agent = c.agents()[0].clone();
    run(&s, &sleep_workload("small", 1, "mode = \"none\""), false)?;
    wait_for(LONG, || allocs(&s, Some("small")).ok()?.iter().any(|a| a.actual == "running").then_some(()))?;
    // 2,500 replicas with a 2,000-byte value each: about 5 MB as one answer.
    let value = "v".repeat(2000);
    let huge = format!(
        "name = \"huge\"\ncommand = \"/no/such/binary\"\nreplicas = 2500\n[env]\nBIG = \"{value}\"\n\
         [restart]\nbackoff_s = 30\nmax_backoff_s = 60\n"
    );
    run(&s, &huge, false)?;
    wait_for(LONG, || (allocs(&s, Some("huge")).ok()?.len() == 2500).then_some(()))?;
    let registered = c.log_count(&agent, "registered with the leader");
    // The other workload's stop still reaches the agent.
    gantryctl(&s, &["stop", "small"]);
    wait_for(LONG, || workloads(&s).ok()?.iter().all(|w| w.name != "small").then_some(()))?;
    let nodes: Vec<NodeView> = admin_get(&s, "/v1/nodes")?;
    assert_eq!(nodes[0].problem, None, "{:?}", nodes[0]);
    assert_eq!(
        c.log_count(&agent, "registered with the leader"),
        registered,
        "the agent reconnected:\n{}",
        c.log_tail(&agent)
    );
    assert_eq!(c.log_count(&agent, "coordinator link lost"), 0, "{}", c.log_tail(&agent));
    gantryctl(&s, &["stop", "huge"]);
    Ok(())
}

/// `never` and `on-failure` end a replica that exited for good: completed
/// or failed with its exit code, never restarted, its GPU free. `--wait`
/// stops waiting on a start failure or a crash loop, and without a health
/// check needs the replica to stay up.
#[test]
fn restart_policies_and_run_wait_tell_the_truth() -> anyhow::Result<()> {
    let _serial = serial();
    let c = DevCluster::start(DevOptions {
        coordinators: 1,
        agents: 1,
        gpus: "1xH100-80GB",
        ..Default::default()
    })?;
    let s = socket(&c.coordinators()[0]);
    let job = |name: &str, script: &str, policy: &str, gpu: &str| {
        format!(
            "name = \"{name}\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"{script}\"]\n[restart]\npolicy = \"{policy}\"\n\
             backoff_s = 0.5\nmax_backoff_s = 2\n[gpu]\n{gpu}\n"
        )
    };
    let dir = tempfile::tempdir()?;
    let file = |name: &str, text: &str| {
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    // /bin/true under `never`, holding the only GPU: completed, exit 0, GPU free.
    let done = file("done", &job("done", "true", "never", "mode = \"exclusive\""));
    let (rc, out, err) = gantryctl(&s, &["run", &done, "--wait", "--timeout", "60"]);
    assert_eq!(rc, 0, "{out}{err}");
    let a = wait_for(LONG, || allocs(&s, Some("done")).ok()?.into_iter().find(|a| a.actual == "completed"))?;
    assert_eq!((a.exit_code, a.restarts), (Some(0), 0), "{a:?}");
    let w: Vec<WorkloadView> = workloads(&s)?;
    assert_eq!(w.iter().find(|w| w.name == "done").unwrap().status, "completed");
    // Its GPU takes another workload at once.
    run(&s, &sleep_workload("next", 1, "mode = \"exclusive\""), false)?;
    wait_for(LONG, || allocs(&s, Some("next")).ok()?.iter().any(|a| a.actual == "running").then_some(()))?;
    // exit 0 under `on-failure`: completed too. exit 3 under `never`: failed with 3.
    run(&s, &job("ok", "exit 0", "on-failure", "mode = \"none\""), false)?;
    run(&s, &job("bad", "exit 3", "never", "mode = \"none\""), false)?;
    let bad = wait_for(LONG, || allocs(&s, Some("bad")).ok()?.into_iter().find(|a| a.actual == "failed"))?;
    assert_eq!(bad.exit_code, Some(3));
    wait_for(LONG, || allocs(&s, Some("ok")).ok()?.iter().any(|a| a.actual == "completed").then_some(()))?;
    // Watched for a while: nothing started again (no new allocation, no restart).
    std::thread::sleep(Duration::from_secs(2));
    for w in ["done", "ok", "bad"] {
        let a = allocs(&s, Some(w))?;
        assert_eq!(a.len(), 1, "{w} was placed again: {a:?}");
        assert_eq!(a[0].restarts, 0, "{w} restarted: {a:?}");
    }

    // --wait gives up, with the reason, on a replica that cannot start...
    let missing = file("missing", "name = \"missing\"\ncommand = \"/no/such/binary\"\n");
    let started = Instant::now();
    let (rc, _, err) = gantryctl(&s, &["run", &missing, "--wait", "--timeout", "120"]);
    assert_ne!(rc, 0);
    assert!(err.contains("cannot start") && err.contains("/no/such/binary"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "it waited {:?}", started.elapsed());
    let w: Vec<WorkloadView> = workloads(&s)?;
    let m = w.iter().find(|w| w.name == "missing").unwrap();
    assert_eq!(m.status, "start-failed", "{m:?}");
    // ...and on one that crash-loops (it is not 'running' after 1.2 s).
    let flapping = file("flapping", &job("flapping", "exit 1", "always", "mode = \"none\""));
    let (rc, _, err) = gantryctl(&s, &["run", &flapping, "--wait", "--timeout", "120"]);
    assert_ne!(rc, 0);
    assert!(err.contains("crash-looping") && err.contains("exit code 1"), "{err}");
    let w: Vec<WorkloadView> = workloads(&s)?;
    assert_eq!(w.iter().find(|w| w.name == "flapping").unwrap().status, "crash-looping");
    // ...and at its deadline.
    let slow = file("slow", &job("slow", "sleep 600", "always", "mode = \"none\""));
    let (rc, _, err) = gantryctl(&s, &["run", &slow, "--wait", "--timeout", "1", "--stable", "30"]);
    assert_ne!(rc, 0);
    assert!(err.contains("not healthy after 1s"), "{err}");
    Ok(())
}

/// 2,000 half-sent requests used to take 18,000 descriptors and hundreds of
/// MB that were never given back. The socket serves a bounded number of
/// connections, answers the rest 503 at once, and closes the silent ones.
#[test]
fn the_admin_socket_survives_a_flood_of_half_sent_requests() -> anyhow::Result<()> {
    let _serial = serial();
    let c = DevCluster::start(DevOptions { coordinators: 1, agents: 0, ..Default::default() })?;
    let coord = c.coordinators()[0].clone();
    let s = socket(&coord);
    let pid = c.pid(&coord);
    let (fds_before, rss_before) = (fds_of(pid), rss_kib(pid));
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..2000 {
        let mut conn = UnixStream::connect(&s)?;
        // A connection over the limit may already be answered and closed.
        let _ = conn.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ");
        held.push(conn);
    }
    // The coordinator holds at most its limit, and stays usable (or says it is full).
    // Connections over the limit are answered and closed as they come, so
    // the count settles at the limit (256) plus the process's own.
    wait_for(Duration::from_secs(10), || (fds_of(pid) < fds_before + 256 + 32).then_some(()))
        .map_err(|_| anyhow::anyhow!("{} descriptors open (was {fds_before})", fds_of(pid)))?;
    let (status, _, body) = admin_raw(&s, "GET /v1/status HTTP/1.1\nHost: x\n", b"")?;
    assert!(status == 200 || status == 503, "{status} {body}");
    for conn in &mut held {
        conn.set_read_timeout(Some(Duration::from_millis(1)))?;
        let mut buf = [0u8; 256];
        if let Ok(n) = conn.read(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("503") {
                refused += 1;
            }
        }
    }
    assert!(refused >= 1500, "only {refused} of 2000 connections were told the socket is full");
    // Past the header timeout every silent connection is closed by the server.
    wait_for(Duration::from_secs(30), || (fds_of(pid) <= fds_before + 8).then_some(()))?;
    drop(held);
    let rss = rss_kib(pid);
    assert!(rss < rss_before + 32 * 1024, "RSS {rss} KiB after the flood, {rss_before} KiB before");
    let (status, _, _) = admin_raw(&s, "GET /v1/status HTTP/1.1\nHost: x\n", b"")?;
    assert_eq!(status, 200);
    Ok(())
}

/// With 2 of 3 coordinators dead every answer used to look current. Now a
/// read says it is stale, members show unreachable, and `status` fails.
#[test]
fn views_without_a_leader_say_so() -> anyhow::Result<()> {
    let _serial = serial();
    let mut c = DevCluster::start(DevOptions { coordinators: 3, agents: 1, ..Default::default() })?;
    // The leader survives: the hard case, a leader cut off from its majority
    // that still thinks it leads (openraft 0.9 has no check-quorum).
    let coords = c.coordinators();
    let leader =
        wait_for(LONG, || gantry_tests::ctl::<ClusterStatus>(&socket(&coords[0]), &["status"]).ok()?.leader)?;
    let survivor = coords.iter().find(|p| p.name == format!("coordinator-{leader}")).unwrap().clone();
    let others: Vec<ProcessEntry> = coords.iter().filter(|p| p.name != survivor.name).cloned().collect();
    // The survivor holds the node's registration before the others go.
    let local = |p: &ProcessEntry| gantry_tests::ctl::<ClusterStatus>(&socket(p), &["status", "--local"]);
    wait_for(LONG, || {
        let commit = coords.iter().filter_map(|p| local(p).ok()?.commit_index).max()?;
        (local(&survivor).ok()?.last_applied? >= commit).then_some(())
    })?;
    for p in &others {
        c.kill9(p)?;
    }
    let s = socket(&survivor);
    // Once it has no leader (the leader may have been the survivor itself)
    // and has seen its peers' connections time out (QUIC idle, 5 s).
    // It first sees its peers unreachable, then (2 s without a quorum ack)
    // that it leads nobody.
    let stale = "no quorum: this coordinator leads but has not heard from a majority";
    let (_, out, err) = wait_for(LONG, || {
        let r = gantryctl(&s, &["status"]);
        (r.0 != 0 && r.1.matches("(unreachable)").count() == 2 && r.2.contains(stale)).then_some(r)
    })?;
    assert!(err.contains(stale), "{out}{err}");
    let (rc, out, err) = gantryctl(&s, &["--json", "nodes"]);
    assert_eq!(rc, 0, "{err}");
    let nodes: Vec<NodeView> = serde_json::from_str(&out)?;
    assert_eq!(nodes.len(), 1, "the survivor answers from its own state");
    let warning: Value = serde_json::from_str(err.trim().lines().last().unwrap_or_default())?;
    assert!(warning["stale"]["applied_index"].is_u64(), "{err}");
    let (_, headers, _) = admin_raw(&s, "GET /v1/workloads HTTP/1.1\nHost: x\n", b"")?;
    assert!(headers.contains("gantry-stale:"), "{headers}");
    let (rc, _, err) = gantryctl(&s, &["nodes"]);
    assert_eq!(rc, 0);
    assert!(err.starts_with("warning: this coordinator leads but has not heard from a majority"), "{err}");
    // A write cannot commit: it says so (no hang), and that its outcome is unknown.
    let started = Instant::now();
    let (rc, _, err) = gantryctl(&s, &["label", "node-1", "x=y"]);
    assert_ne!(rc, 0);
    assert!(err.contains("outcome of this write is unknown"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(90), "{:?}", started.elapsed());
    let status: ClusterStatus = serde_json::from_str(&gantryctl(&s, &["--json", "status", "--local"]).1)?;
    assert!(status.members.iter().filter(|m| m.id != status.answered_by).all(|m| !m.reachable), "{status:?}");
    Ok(())
}

/// A workload runs unprivileged and cannot read what the agent keeps; the
/// agent's HTTP listener serves no workload output; state files are private.
#[test]
fn workloads_are_confined_and_files_are_private() -> anyhow::Result<()> {
    let _serial = serial();
    let c = DevCluster::start(DevOptions { coordinators: 1, agents: 1, ..Default::default() })?;
    let s = socket(&c.coordinators()[0]);
    let agent = c.agents()[0].clone();
    let key = c.pki().join("agent-node-1.key");
    let spy = format!(
        "name = \"spy\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"id -u; echo PID=$$; grep -E 'NoNewPrivs|CapEff' /proc/self/status; \
         env; cat {} 2>&1; echo DB_PASSWORD=hunter2; echo hunter2 > mine.txt; sleep 600\"]\n[env]\nDB_PASSWORD = \"hunter2\"\n",
        key.display()
    );
    run(&s, &spy, false)?;
    let a: AllocView =
        wait_for(LONG, || allocs(&s, Some("spy")).ok()?.into_iter().find(|a| a.actual == "running"))?;
    let logs = wait_for(LONG, || {
        let (rc, out, _) = gantryctl(&s, &["logs", &a.id]);
        (rc == 0 && out.contains("hunter2")).then_some(out)
    })?;
    let uid: u32 = logs.lines().next().unwrap_or_default().parse()?;
    assert!((1_900_000_000..=1_900_009_999).contains(&uid), "runs as a uid of its own: {logs}");
    let pid = logs.lines().find_map(|l| l.strip_prefix("PID=")).unwrap_or_default().to_string();
    // Another workload on the same node runs as another uid and reaches
    // neither the first one's environment nor its files.
    let theirs = c.info.dir.join(format!("node-1/data/allocs/{}/work/mine.txt", a.id));
    wait_for(LONG, || theirs.exists().then_some(()))?;
    let peer = format!(
        "name = \"peer\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"id -u; cat /proc/{pid}/environ {} 2>&1; kill -0 {pid} 2>&1; echo done; sleep 600\"]\n",
        theirs.display()
    );
    run(&s, &peer, false)?;
    let p: AllocView =
        wait_for(LONG, || allocs(&s, Some("peer")).ok()?.into_iter().find(|a| a.actual == "running"))?;
    let peer_logs = wait_for(LONG, || {
        let (rc, out, _) = gantryctl(&s, &["logs", &p.id]);
        (rc == 0 && out.contains("done")).then_some(out)
    })?;
    let peer_uid: u32 = peer_logs.lines().next().unwrap_or_default().parse()?;
    assert_ne!(peer_uid, uid, "{peer_logs}");
    assert!(!peer_logs.contains("hunter2"), "{peer_logs}");
    assert_eq!(peer_logs.matches("Permission denied").count(), 2, "{peer_logs}");
    assert!(peer_logs.contains("Operation not permitted"), "cannot signal it: {peer_logs}");
    gantryctl(&s, &["stop", "peer"]);
    // Asking for the shared user by name would leave the uid of its own: refused.
    run(&s, "name = \"asks\"\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\nuser = \"nobody\"\n", false)?;
    let refused: AllocView = wait_for(LONG, || {
        allocs(&s, Some("asks")).ok()?.into_iter().find(|a| a.message.contains("workload_users_allowed"))
    })?;
    assert!(refused.message.contains("\"nobody\""), "{}", refused.message);
    gantryctl(&s, &["stop", "asks"]);
    assert!(logs.contains("NoNewPrivs:\t1") && logs.contains("CapEff:\t0000000000000000"), "{logs}");
    assert!(
        !logs.contains("BEGIN") && logs.contains("Permission denied"),
        "the agent's key stays root's: {logs}"
    );
    assert!(!logs.contains("HOME=/root"), "{logs}");
    // The agent's HTTP listener: metrics yes, logs no.
    let (status, body) =
        gantry_tests::http::tcp(&agent.listen, "GET", &format!("/v1/allocs/{}/logs", a.id), None)?;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("hunter2"));
    let (status, _) = gantry_tests::http::tcp(&agent.listen, "GET", "/metrics", None)?;
    assert_eq!(status, 200);
    // Private files.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let coord_home = c.info.dir.join("coordinator-1");
    assert_eq!(mode(&coord_home), 0o700);
    assert_eq!(mode(&coord_home.join("data")), 0o700);
    assert_eq!(mode(&coord_home.join("data/raft.redb")), 0o600);
    let agent_data = c.info.dir.join("node-1/data");
    wait_for(LONG, || agent_data.join("allocs.json").exists().then_some(()))?;
    assert_eq!(mode(&agent_data), 0o711);
    assert_eq!(mode(&agent_data.join("allocs")), 0o711, "workloads cannot list each other");
    assert_eq!(mode(&c.info.dir.join("node-1/log")), 0o600, "the agent's log names every allocation");
    assert_eq!(mode(&c.info.dir.join("node-1/agent.toml")), 0o600);
    assert_eq!(mode(&agent_data.join("allocs.json")), 0o600);
    assert_eq!(mode(&agent_data.join(format!("allocs/{}/stdout.log", a.id))), 0o600);
    gantryctl(&s, &["stop", "spy"]);
    Ok(())
}

/// The CLI's output cannot be forged and never panics: a pipe closed
/// early ends it quietly, progress codes stay off files, errors are JSON
/// with --json, and `logs NAME` never picks a replica of `NAME2`.
#[test]
fn the_cli_output_is_safe_to_read_and_to_pipe() -> anyhow::Result<()> {
    let _serial = serial();
    let c = DevCluster::start(DevOptions { coordinators: 1, agents: 2, ..Default::default() })?;
    let s = socket(&c.coordinators()[0]);
    // `gantryctl nodes | head -1`
    let mut child = Command::new(bin("gantryctl"))
        .arg("--socket")
        .arg(&s)
        .arg("nodes")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let status = child.wait()?;
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err)?;
    assert!(status.success() && !err.contains("panicked"), "{status} {err}");
    // The dev cluster wrote its progress to a file: no terminal codes in it.
    let dev_err = std::fs::read_to_string(c.info.dir.parent().unwrap().join("dev.err"))?;
    assert!(!dev_err.contains('\u{1b}') && !dev_err.contains('\r'), "{dev_err:?}");
    // --json errors are JSON on stderr.
    let (rc, _, err) = gantryctl(&s, &["--json", "stop", "nope"]);
    assert_ne!(rc, 0);
    let e: Value = serde_json::from_str(err.trim())?;
    assert!(e["error"].as_str().unwrap().contains("does not exist"), "{e}");
    // A label an operator cannot set is refused, with the field.
    let (rc, _, err) = gantryctl(&s, &["label", "node-1", "zone=a\u{1b}[2J"]);
    assert_ne!(rc, 0);
    assert!(err.contains("control character"), "{err}");
    // logs NAME: whole id parts only.
    run(&s, &sleep_workload("infer", 1, "mode = \"none\""), false)?;
    run(&s, &sleep_workload("infer2", 1, "mode = \"none\""), false)?;
    wait_for(LONG, || {
        (allocs(&s, None).ok()?.iter().filter(|a| a.actual == "running").count() == 2).then_some(())
    })?;
    let (rc, _, err) = gantryctl(&s, &["logs", "inf"]);
    assert_ne!(rc, 0, "a part of a name picks nothing");
    assert!(err.contains("no allocation"), "{err}");
    let (rc, _, err) = gantryctl(&s, &["logs", "infer"]);
    assert_eq!(rc, 0, "{err}");
    Ok(())
}

/// A node the placement engine cannot take (here: a forged registration
/// of a MIG-mode GPU whose model has no MIG geometry) used to stop all
/// scheduling. It is left out, says why, and the rest keeps scheduling.
#[test]
fn a_node_the_engine_cannot_take_does_not_stop_scheduling() -> anyhow::Result<()> {
    use gantry_common::identity::{Role, ALPN_AGENT};
    use gantry_common::model::{GpuInfo, GpuSharing, MigMode};
    use gantry_common::tls::{self, Identity, COORDINATOR_SERVER_NAME};
    use gantry_common::wire::{AgentRequest, AgentResponse, DEFAULT_MAX_FRAME};
    let _serial = serial();
    let c = DevCluster::start(DevOptions { coordinators: 1, agents: 1, ..Default::default() })?;
    let coord = c.coordinators()[0].clone();
    let s = socket(&coord);
    let files = tls::issue(&c.pki(), Role::Agent, "odd", &[], 1)?;
    let identity = Identity::load(&files)?;
    let mut info = gantry_common::schema::samples::node();
    info.name = "odd".into();
    info.gpus = vec![GpuInfo {
        index: 0,
        uuid: "GPU-odd".into(),
        model: "L40S-48GB".into(),
        memory_total_mib: 46_068,
        mig_mode: MigMode::Enabled,
        nvlink_domain: None,
        sharing: GpuSharing::Mig,
    }];
    let rt = tokio::runtime::Runtime::new()?;
    let (answer, _conn) = rt.block_on(async {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let (conn, _) = gantry_common::rpc::connect(
            &ep,
            tls::client_config(&identity, ALPN_AGENT).unwrap(),
            &coord.listen,
            COORDINATOR_SERVER_NAME,
            "test",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let r: AgentResponse = gantry_common::rpc::call(
            &conn,
            &coord.listen,
            &AgentRequest::Register(info),
            DEFAULT_MAX_FRAME,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        (r, (conn, ep))
    });
    assert_eq!(answer, AgentResponse::Registered);
    run(&s, &sleep_workload("goes", 1, "mode = \"exclusive\""), false)?;
    let a = wait_for(LONG, || allocs(&s, Some("goes")).ok()?.into_iter().find(|a| a.actual == "running"))?;
    assert_eq!(a.node, "node-1");
    let nodes: Vec<NodeView> = admin_get(&s, "/v1/nodes")?;
    let odd = nodes.iter().find(|n| n.name == "odd").unwrap();
    let problem = odd.problem.clone().unwrap_or_default();
    assert!(problem.contains("not scheduled") && problem.contains("L40S"), "{odd:?}");
    Ok(())
}
