//! The process runtime against real processes: environment, process group,
//! stop with grace then kill, logs, and finding a process again by handle.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_agent::runtime::cgroup::Layout;
use gantry_agent::runtime::process::{ProcessRuntime, ProcessSettings};
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
    let rt = ProcessRuntime::default();
    // A grandchild in the background, so stop must reach the whole group.
    let script = "env > env.txt; echo to-stdout; echo to-stderr >&2; sleep 1000 & sleep 1000; wait";
    let handle = rt.start(&launch(dir.path(), script)).await.unwrap();
    let Handle::Process { pid, .. } = handle.clone() else { panic!("{handle:?}") };
    wait_for("the env file", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path().join("work/env.txt"))
            .is_ok_and(|e| e.contains("GANTRY_ALLOC_ID=sh.0.1"))
    })
    .await;
    let env = std::fs::read_to_string(dir.path().join("work/env.txt")).unwrap();
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
    let rt = ProcessRuntime::default();
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
    let rt = ProcessRuntime::default();
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
    let fresh = ProcessRuntime::default();
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

/// Runs `script` to its end under `rt`; returns its stdout and how it ended.
async fn run_to_end(rt: &ProcessRuntime, dir: &Path, l: Launch) -> (String, Status) {
    let handle = rt.start(&l).await.unwrap();
    let mut status = Status::Running;
    wait_for("the exit", Duration::from_secs(30), || {
        status = futures::executor::block_on(rt.status(&handle)).unwrap();
        status != Status::Running
    })
    .await;
    (std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default(), status)
}

fn status_field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).map(str::trim).unwrap_or("")
}

/// What a hostile workload sees of its host: not root, no capability, no
/// way to gain privileges, none of the agent's environment, none of root's files.
#[tokio::test]
async fn a_workload_runs_unprivileged_with_a_clean_environment() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: confinement needs the test to run as root (as the agent does)");
        return;
    }
    std::env::set_var("AGENT_SECRET", "hunter2");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("agent.key");
    std::fs::write(&secret, "PRIVATE KEY").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let script = format!(
        "grep -E '^(Uid|Gid|NoNewPrivs|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/self/status; \
         env | sed 's/^/env:/'; cat {} 2>&1 | sed 's/^/secret:/'; pwd | sed 's/^/cwd:/'; touch scratch && echo wrote:ok",
        secret.display()
    );
    let rt = ProcessRuntime::default();
    let (out, status) = run_to_end(&rt, dir.path(), launch(dir.path(), &script)).await;
    assert_eq!(status, Status::Exited { code: Some(0), message: "exit code 0".into() }, "{out}");
    assert!(status_field(&out, "Uid").starts_with("65534"), "{out}");
    assert!(status_field(&out, "Gid").starts_with("65534"), "{out}");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1", "{out}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&out, cap), "0000000000000000", "{cap}: {out}");
    }
    assert!(!out.contains("hunter2") && !out.contains("env:HOME=/root"), "{out}");
    assert!(out.contains("env:GANTRY_ALLOC_ID=sh.0.1") && out.contains("env:USER=nobody"), "{out}");
    assert!(out.contains("secret:") && !out.contains("PRIVATE KEY"), "the agent's files stay root's: {out}");
    assert!(out.contains("wrote:ok"), "its working directory is its own: {out}");
    assert!(out.contains(&format!("cwd:{}", dir.path().join("work").display())), "{out}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(dir.path().join("stdout.log")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(dir.path().join("work/scratch")).unwrap().uid(), 65534);
}

#[tokio::test]
async fn a_spec_may_ask_only_for_an_allowed_user() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::default();
    let mut l = launch(dir.path(), "id -u");
    l.spec.user = Some("root".into());
    let e = rt.start(&l).await.unwrap_err().to_string();
    assert!(e.contains("user \"root\": this agent does not allow"), "{e}");
    let allowing = ProcessRuntime::new(ProcessSettings {
        users_allowed: vec!["root".into()],
        ..ProcessSettings::default()
    });
    if nix::unistd::geteuid().is_root() {
        let (out, _) = run_to_end(&allowing, dir.path(), l).await;
        assert_eq!(out.trim(), "0", "an allowed user is used");
    }
    let mut ghost = launch(dir.path(), "true");
    ghost.spec.user = Some("no-such-user".into());
    let ghostly = ProcessRuntime::new(ProcessSettings {
        users_allowed: vec!["no-such-user".into()],
        ..ProcessSettings::default()
    });
    assert!(ghostly.start(&ghost).await.unwrap_err().to_string().contains("does not exist"));
}

/// The memory limit bites: a replica that allocates past it is killed by
/// the kernel and reported as out of memory; the CPU quota is written.
#[tokio::test]
async fn memory_and_cpu_limits_bite_through_cgroups() {
    let layout = Layout::host();
    if let Layout::None { why } = &layout {
        assert!(
            std::env::var_os("GANTRY_REQUIRE_CGROUPS").is_none(),
            "GANTRY_REQUIRE_CGROUPS is set but no cgroup hierarchy is usable: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(ProcessSettings { cgroups: layout.clone(), ..ProcessSettings::default() });
    // `tail` keeps a 'line' of 300 MB of zeros in memory: far past 64 MiB.
    let mut l = launch(dir.path(), "head -c 300000000 /dev/zero | tail > /dev/null; echo survived");
    l.alloc_id = "hog.0.1".into();
    l.spec.memory_mib = 64;
    l.spec.cpu_milli = 500;
    let handle = rt.start(&l).await.unwrap();
    let group = layout.find("hog.0.1").expect("its cgroup exists while it runs");
    let cpu_quota = group.dirs.iter().find_map(|d| {
        std::fs::read_to_string(d.join("cpu.cfs_quota_us"))
            .or_else(|_| std::fs::read_to_string(d.join("cpu.max")))
            .ok()
    });
    assert!(cpu_quota.is_some_and(|q| q.starts_with("50000")), "half a core");
    let mut status = Status::Running;
    wait_for("the exit", Duration::from_secs(60), || {
        status = futures::executor::block_on(rt.status(&handle)).unwrap();
        status != Status::Running
    })
    .await;
    let Status::Exited { code, message } = status else { unreachable!() };
    assert_eq!(code, None, "{message}");
    assert_eq!(message, "killed: out of memory (limit 64 MiB)");
    assert!(layout.find("hog.0.1").is_none(), "the group is removed once it ended");
}

/// A workload that leaves its process group (`setsid`) is still stopped:
/// stop reaches everything in its cgroup, and only then reports done.
#[tokio::test]
async fn a_process_that_left_its_group_is_stopped_with_it() {
    let layout = Layout::host();
    if let Layout::None { why } = &layout {
        assert!(std::env::var_os("GANTRY_REQUIRE_CGROUPS").is_none(), "no cgroups: {why}");
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(ProcessSettings { cgroups: layout.clone(), ..ProcessSettings::default() });
    let mut l = launch(dir.path(), "setsid sh -c 'echo $$ > escaped.pid; exec sleep 1000' & exec sleep 1000");
    l.alloc_id = "escape.0.1".into();
    let handle = rt.start(&l).await.unwrap();
    let pid_file = dir.path().join("work/escaped.pid");
    wait_for("the escaped pid", Duration::from_secs(10), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| !p.trim().is_empty())
    })
    .await;
    let escaped: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let alive =
        |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    assert!(alive(escaped));
    rt.stop(&handle, Duration::from_millis(500)).await.unwrap();
    assert!(!alive(escaped), "the process that left the group survived the stop");
    assert!(layout.find("escape.0.1").is_none(), "its cgroup is gone");
}
