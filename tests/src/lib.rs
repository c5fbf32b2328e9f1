//! Harness for cross-process tests: runs `gantryctl dev` (real coordinator
//! and agent processes on loopback), reads its `cluster.json`, and drives the
//! cluster through `gantryctl --json` and signals.
//!
//! Tests wait on conditions ([`wait_for`]) and never on fixed sleeps. The
//! binaries must be built first (`cargo build --workspace --bins`), which the
//! README's test command does.

pub mod http;
pub mod workloads;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// One process of the dev cluster, as `cluster.json` lists it.
#[derive(Clone, Debug, Deserialize)]
pub struct ProcessEntry {
    pub role: String,
    pub name: String,
    pub pid: u32,
    pub admin_socket: Option<PathBuf>,
    pub listen: String,
    /// Where the process's `/metrics` answers over TCP.
    #[serde(default)]
    pub metrics_listen: String,
    pub config: PathBuf,
    pub log: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ClusterFile {
    pub dir: PathBuf,
    pub processes: Vec<ProcessEntry>,
}

/// Cluster tests run one at a time: a 2-core runner cannot host several
/// clusters without their timing suffering.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Path of a workspace binary next to the test executable's target dir.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    dir.join(name)
}

pub struct DevCluster {
    pub info: ClusterFile,
    dev: Child,
    /// Processes the test started itself (restarts); killed on drop.
    extra: Vec<Child>,
    /// Current pid of every process by name (changes on restart).
    pids: std::collections::BTreeMap<String, u32>,
    _dir: tempfile::TempDir,
}

pub struct DevOptions {
    pub coordinators: u32,
    pub agents: u32,
    pub gpus: &'static str,
    pub node_down_after_secs: u64,
    /// Per agent GPUs (`--agent-gpus`), overriding `gpus`.
    pub agent_gpus: Vec<&'static str>,
    /// Per agent GPU sharing (`--gpu-sharing`), e.g. `0=mig,1=mps`.
    pub gpu_sharing: Vec<&'static str>,
    /// `--runtime`: `auto`, `docker` or `process`.
    pub runtime: &'static str,
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            coordinators: 3,
            agents: 2,
            gpus: "2xH100-80GB",
            node_down_after_secs: 10,
            agent_gpus: Vec::new(),
            gpu_sharing: Vec::new(),
            runtime: "process",
        }
    }
}

impl DevCluster {
    pub fn start(opts: DevOptions) -> anyhow::Result<DevCluster> {
        for b in ["gantryctl", "gantry-coordinator", "gantry-agent"] {
            if !bin(b).exists() {
                bail!("{} is missing: run `cargo build --workspace --bins` first", bin(b).display());
            }
        }
        let dir = tempfile::Builder::new().prefix("gt-").tempdir_in("/tmp").context("tempdir")?;
        let cluster_dir = dir.path().join("c");
        let out = std::fs::File::create(dir.path().join("dev.out"))?;
        let err = std::fs::File::create(dir.path().join("dev.err"))?;
        let mut dev = Command::new(bin("gantryctl"))
            .args(["dev", "--dir"])
            .arg(&cluster_dir)
            .args(["--coordinators", &opts.coordinators.to_string()])
            .args(["--agents", &opts.agents.to_string()])
            .args(["--gpus", opts.gpus])
            .args(["--node-down-after-secs", &opts.node_down_after_secs.to_string()])
            .args(["--ready-timeout-secs", "90"])
            .args(["--runtime", opts.runtime])
            .args(opts.agent_gpus.iter().flat_map(|g| ["--agent-gpus", g]))
            .args(opts.gpu_sharing.iter().flat_map(|g| ["--gpu-sharing", g]))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting gantryctl dev")?;
        let file = cluster_dir.join("cluster.json");
        let waited = wait_for(Duration::from_secs(120), || {
            if let Ok(Some(status)) = dev.try_wait() {
                let err = std::fs::read_to_string(dir.path().join("dev.err")).unwrap_or_default();
                return Some(Err(anyhow!("gantryctl dev exited with {status}: {err}")));
            }
            let text = std::fs::read_to_string(&file).ok()?;
            Some(serde_json::from_str::<ClusterFile>(&text).context("parsing cluster.json"))
        });
        let info = match waited {
            Ok(Ok(info)) => info,
            Ok(Err(e)) | Err(e) => {
                let _ = dev.kill();
                let _ = dev.wait();
                return Err(e);
            }
        };
        let pids = info.processes.iter().map(|p| (p.name.clone(), p.pid)).collect();
        Ok(DevCluster { info, dev, extra: Vec::new(), pids, _dir: dir })
    }

    pub fn coordinators(&self) -> Vec<ProcessEntry> {
        self.info.processes.iter().filter(|p| p.role == "coordinator").cloned().collect()
    }

    pub fn agents(&self) -> Vec<ProcessEntry> {
        self.info.processes.iter().filter(|p| p.role == "agent").cloned().collect()
    }

    pub fn coordinator(&self, id: u64) -> anyhow::Result<ProcessEntry> {
        let name = format!("coordinator-{id}");
        self.coordinators().into_iter().find(|p| p.name == name).ok_or_else(|| anyhow!("no {name}"))
    }

    pub fn pki(&self) -> PathBuf {
        self.info.dir.join("pki")
    }

    /// Runs `gantryctl --json --socket SOCKET ARGS` and decodes its output.
    pub fn ctl<T: DeserializeOwned>(&self, socket: &Path, args: &[&str]) -> anyhow::Result<T> {
        ctl(socket, args)
    }

    /// Current pid of a process of the cluster.
    pub fn pid(&self, entry: &ProcessEntry) -> u32 {
        self.pids.get(&entry.name).copied().unwrap_or(entry.pid)
    }

    /// Sends SIGKILL to a process of the cluster (no chance to clean up).
    pub fn kill9(&mut self, entry: &ProcessEntry) -> anyhow::Result<()> {
        let pid = self.pid(entry);
        let raw = i32::try_from(pid).context("pid")?;
        kill(Pid::from_raw(raw), Signal::SIGKILL).context("kill -9")?;
        // Reap it if it is ours, so it does not linger as a zombie.
        for c in self.extra.iter_mut().filter(|c| c.id() == pid) {
            let _ = c.wait();
        }
        Ok(())
    }

    /// Starts a process of the cluster again from its config; returns its pid.
    pub fn restart(&mut self, entry: &ProcessEntry) -> anyhow::Result<u32> {
        let bin_name = if entry.role == "coordinator" { "gantry-coordinator" } else { "gantry-agent" };
        let pid = self.spawn(bin_name, &entry.config, &entry.log)?;
        self.pids.insert(entry.name.clone(), pid);
        Ok(pid)
    }

    /// Starts a daemon with a config file; it is stopped with the cluster.
    pub fn spawn(&mut self, bin_name: &str, config: &Path, log: &Path) -> anyhow::Result<u32> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(bin(bin_name))
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {bin_name}"))?;
        let pid = child.id();
        self.extra.push(child);
        Ok(pid)
    }

    /// Sends SIGTERM to `gantryctl dev` and waits for it to exit.
    pub fn terminate_dev(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = i32::try_from(self.dev.id()).context("pid")?;
        kill(Pid::from_raw(pid), Signal::SIGTERM).context("SIGTERM to gantryctl dev")?;
        wait_for(timeout, || self.dev.try_wait().ok().flatten())
    }

    /// The log of a process, for assertion messages.
    /// How many lines of a process's log contain `text`.
    pub fn log_count(&self, entry: &ProcessEntry, text: &str) -> usize {
        std::fs::read_to_string(&entry.log).unwrap_or_default().lines().filter(|l| l.contains(text)).count()
    }

    pub fn log_tail(&self, entry: &ProcessEntry) -> String {
        let text = std::fs::read_to_string(&entry.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        for c in &mut self.extra {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        // Only signal dev if it still runs: a reaped pid may belong to someone else now.
        if self.dev.try_wait().ok().flatten().is_none() {
            if let Ok(pid) = i32::try_from(self.dev.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let _ = wait_for(Duration::from_secs(20), || self.dev.try_wait().ok().flatten());
        let _ = self.dev.kill();
        let _ = self.dev.wait();
        for c in &mut self.extra {
            let _ = wait_for(Duration::from_secs(5), || c.try_wait().ok().flatten());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("condition not met within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `gantryctl --json --socket SOCKET ARGS` and decodes its output.
pub fn ctl<T: DeserializeOwned>(socket: &Path, args: &[&str]) -> anyhow::Result<T> {
    let out = Command::new(bin("gantryctl"))
        .arg("--json")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .context("running gantryctl")?;
    if !out.status.success() {
        // With --json an error is `{"error": ..., "field": ...}` on stderr's last line.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.trim().lines().last().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(last)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| stderr.trim().to_string());
        bail!("gantryctl {args:?}: {message}");
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("gantryctl {args:?} printed no JSON"))
}

/// `path` copied where any user can run it. Workloads run unprivileged (as
/// `nobody` or a uid of their own), and a checkout under a private
/// directory (`mktemp -d`, a 0700 home) is out of their reach. The copy is
/// `/tmp/gantry-test-bins-UID/<size>-<mtime>/<name>`, made once and reused.
/// Panics on failure: a test helper, the failure is the test's.
#[allow(clippy::unwrap_used)]
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
