//! Helpers shared by the agent's integration tests.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_agent::gpu::Gpus;
use gantry_agent::runtime::docker::DockerRuntime;
use gantry_agent::runtime::process::ProcessRuntime;
use gantry_agent::workloads::link::{link, SessionSide};
use gantry_agent::workloads::manager::{Logs, Manager, ManagerConfig, Runtimes};
use gantry_agent::workloads::mps::{Mps, MpsControl};
use gantry_common::workload::{
    AllocGpu, AllocReport, Allocation, DesiredAlloc, DesiredState, NewAlloc, WorkloadSpec,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Waits for `cond`, failing after `limit` (a bound on waiting, not a timing assertion).
pub async fn wait_for<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn desired(id: &str, spec: WorkloadSpec, gpus: Vec<AllocGpu>, state: DesiredState) -> DesiredAlloc {
    DesiredAlloc {
        alloc: Allocation {
            desired: state,
            ..Allocation::pending(
                id.into(),
                NewAlloc {
                    workload: spec.name.clone(),
                    version: 1,
                    replica: 0,
                    node: "node-a".into(),
                    gpus,
                    cpu_milli: spec.cpu_milli,
                    memory_mib: spec.memory_mib,
                },
            )
        },
        spec: spec.into(),
    }
}

/// A manager running on its own task, with the session's side of the link.
pub struct Running {
    pub session: SessionSide,
    pub logs: Logs,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    pub async fn start(
        data_dir: &Path,
        gpus: Gpus,
        docker: Option<Arc<DockerRuntime>>,
        port_range: &str,
    ) -> Running {
        let (session, side) = link();
        let mps = Arc::new(Mps::new(MpsControl::Modelled(gpus.clone()), data_dir.join("mps")));
        let runtimes = Runtimes { process: Arc::new(ProcessRuntime::default()), docker };
        let cfg = ManagerConfig {
            node: "node-a".into(),
            data_dir: data_dir.to_path_buf(),
            port_range: port_range.parse().unwrap(),
            tick: Duration::from_millis(50),
        };
        let manager = Manager::new(cfg, gpus, runtimes, mps, side).unwrap();
        let logs = manager.logs();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(manager.run(stop_rx));
        Running { session, logs, stop, task }
    }

    pub fn report(&self, id: &str) -> Option<AllocReport> {
        self.session.reports.borrow().get(id).cloned()
    }

    /// Waits until `id`'s report satisfies `pred`.
    pub async fn wait_report(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&AllocReport) -> bool,
    ) -> AllocReport {
        let start = Instant::now();
        loop {
            let last = self.report(id);
            if let Some(r) = last.as_ref().filter(|r| pred(r)) {
                return r.clone();
            }
            // The report as it stands when the wait gives up, not as it began.
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {id}: {what} (last {last:?})"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the manager as the agent's shutdown does.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        self.task.await.unwrap();
    }
}

/// A workspace binary next to the test executable (target/<profile>/<name>).
pub fn workspace_bin(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join(name);
    path.exists().then_some(path)
}

/// The pid of a process handle in the state file.
pub fn pid_in_state(data_dir: &Path, id: &str) -> Option<i64> {
    let text = std::fs::read_to_string(data_dir.join("allocs.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["records"][id]["handle"]["process"]["pid"].as_i64()
}

/// `path` copied where any user can run it. Workloads run unprivileged (as
/// `nobody` or a uid of their own), and a checkout under a private
/// directory (`mktemp -d`, a 0700 home) is out of their reach. The copy is
/// `/tmp/gantry-test-bins-UID/<size>-<mtime>/<name>`, made once and reused.
pub fn reachable_copy(path: &Path) -> PathBuf {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let root = std::env::temp_dir().join(format!("gantry-test-bins-{}", nix::unistd::geteuid()));
    let dir = root.join(format!("{}-{}", meta.len(), meta.mtime()));
    let name = path.file_name().unwrap_or_default();
    let copy = dir.join(name);
    if !copy.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        // Several tests may copy at once: each writes its own file, the rename wins.
        let part = dir.join(format!(".{}.{}", name.to_string_lossy(), std::process::id()));
        std::fs::copy(path, &part).unwrap();
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&part, &copy).unwrap();
    }
    for d in [&root, &dir] {
        // Ours, and only ours to write: nobody else may swap the binary.
        let m = std::fs::metadata(d).unwrap();
        assert_eq!(m.uid(), nix::unistd::geteuid().as_raw(), "{} is not ours", d.display());
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    copy
}
