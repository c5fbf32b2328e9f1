//! The process runtime against real processes: environment, process group,
//! stop with grace then kill, logs, and finding a process again by handle.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_agent::runtime::process::ProcessRuntime;
use gantry_agent::runtime::{Handle, Launch, LogRequest, Runtime, Status};
use gantry_common::workload::{RuntimeSpec, WorkloadSpec};

fn spec(script: &str) -> WorkloadSpec {
    let mut s =
        gantry_common::workload::parse_workload_toml("name = \"sh\"\ncommand = \"/bin/sh\"\n").unwrap();
    s.runtime = RuntimeSpec::Process { command: "/bin/sh".into() };
    s.args = vec!["-c".into(), script.into()];
    s
}

fn launch(dir: &Path, script: &str) -> Launch {
    Launch {
        alloc_id: "sh.0.1".into(),
        node: "n".into(),
        spec: spec(script),
        env: BTreeMap::from([("GANTRY_ALLOC_ID".to_string(), "sh.0.1".to_string())]),
        host_ports: BTreeMap::new(),
        devices: Vec::new(),
        mps_pipe_dir: None,
        alloc_dir: dir.to_path_buf(),
    }
}

/// Waits for `cond`, failing the test after `limit` (a bound on waiting, not a timing assertion).
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn group_alive(pgid: i32) -> bool {
    // Any /proc entry whose process group is pgid.
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { return false };
        let Some(close) = stat.rfind(')') else { return false };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && fields.first() != Some(&"Z")
    })
}

async fn read_all(rt: &ProcessRuntime, handle: &Handle, dir: PathBuf, tail: Option<u64>) -> String {
    let mut s = rt.logs(handle, dir, LogRequest { follow: false, tail }).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn env_group_stop_and_logs() {
    // As under systemd: the agent's own notify socket must not reach workloads.
    std::env::set_var("NOTIFY_SOCKET", "/run/systemd/notify");
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new();
    // A grandchild in the background, so stop must reach the whole group.
    let script = "env > env.txt; echo to-stdout; echo to-stderr >&2; sleep 1000 & sleep 1000; wait";
    let handle = rt.start(&launch(dir.path(), script)).await.unwrap();
    let Handle::Process { pid, .. } = handle.clone() else { panic!("{handle:?}") };
    wait_for("the env file", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path().join("env.txt"))
            .is_ok_and(|e| e.contains("GANTRY_ALLOC_ID=sh.0.1"))
    })
    .await;
    let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
    assert!(!env.contains("NOTIFY_SOCKET="), "{env}");
    assert_eq!(rt.status(&handle).await.unwrap(), Status::Running);
    wait_for("both log lines", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path().join("stderr.log")).is_ok_and(|e| e.contains("to-stderr"))
    })
    .await;
    let logs = read_all(&rt, &handle, dir.path().to_path_buf(), None).await;
    assert!(logs.contains("to-stdout\n") && logs.contains("to-stderr\n"), "{logs}");
    let tail = read_all(&rt, &handle, dir.path().to_path_buf(), Some(3)).await;
    assert_eq!(tail, "ut\nrr\n", "the last 3 bytes of each stream");

    assert!(group_alive(pid));
    rt.stop(&handle, Duration::from_secs(10)).await.unwrap();
    assert!(!group_alive(pid), "the background sleep must be gone too");
    assert!(matches!(rt.status(&handle).await.unwrap(), Status::Exited { .. }));
    // Stopping again is fine.
    rt.stop(&handle, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn sigterm_ignored_means_sigkill_after_grace() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new();
    let handle =
        rt.start(&launch(dir.path(), "trap '' TERM; echo ready; while :; do sleep 1; done")).await.unwrap();
    let Handle::Process { pid, .. } = handle.clone() else { panic!() };
    wait_for("ready", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path().join("stdout.log")).is_ok_and(|e| e.contains("ready"))
    })
    .await;
    rt.stop(&handle, Duration::from_millis(300)).await.unwrap();
    assert!(!group_alive(pid));
}

#[tokio::test]
async fn exit_codes_and_a_fresh_runtime_finds_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new();
    let failing = rt.start(&launch(dir.path(), "exit 3")).await.unwrap();
    let mut status = Status::Running;
    wait_for("the exit", Duration::from_secs(10), || {
        status = futures::executor::block_on(rt.status(&failing)).unwrap();
        status != Status::Running
    })
    .await;
    assert_eq!(status, Status::Exited { code: Some(3), message: "exit code 3".into() });

    // A second runtime (a restarted agent) only has the handle: it sees the
    // process running and, once it ends, an unknown exit status.
    let long = rt.start(&launch(dir.path(), "sleep 1000")).await.unwrap();
    let fresh = ProcessRuntime::new();
    assert_eq!(fresh.status(&long).await.unwrap(), Status::Running);
    // A handle whose start time does not match (a reused pid) is not running, and is not signalled.
    let Handle::Process { pid, start_ticks } = long.clone() else { panic!() };
    let imposter = Handle::Process { pid, start_ticks: start_ticks + 1 };
    assert!(matches!(fresh.status(&imposter).await.unwrap(), Status::Exited { code: None, .. }));
    fresh.stop(&imposter, Duration::from_millis(100)).await.unwrap();
    assert_eq!(fresh.status(&long).await.unwrap(), Status::Running);
    fresh.stop(&long, Duration::from_secs(5)).await.unwrap();
    assert!(!group_alive(pid));

    let mut bad = launch(dir.path(), "");
    bad.spec.runtime = RuntimeSpec::Process { command: "/nonexistent/bin".into() };
    let missing = rt.start(&bad).await;
    assert!(missing.unwrap_err().to_string().contains("/nonexistent/bin"));
}
