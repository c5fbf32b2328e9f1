//! Starting and stopping the dev cluster's processes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use gantry_common::identity::Role;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::layout::ProcessPlan;

pub struct Running {
    pub plan: ProcessPlan,
    pub child: Child,
    /// Set once we have reported that it exited.
    pub exited: bool,
}

/// Starts one process with its config; output goes to its log file. Each
/// child gets its own process group, so a terminal's Ctrl-C reaches only
/// `gantryctl dev`, which then stops the children in order.
pub fn spawn(bin_dir: &Path, plan: &ProcessPlan) -> anyhow::Result<Running> {
    use std::os::unix::process::CommandExt;
    let bin = bin_dir.join(match plan.role {
        Role::Coordinator => "gantry-coordinator",
        _ => "gantry-agent",
    });
    // Private: an agent's log names every allocation and pid on its node.
    let log = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&plan.log)
    }
    .with_context(|| format!("creating {}", plan.log.display()))?;
    let err = log.try_clone().context("duplicating the log file handle")?;
    let child = Command::new(&bin)
        .arg("--config")
        .arg(&plan.config)
        .env("GANTRY_LOG", std::env::var("GANTRY_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Running { plan: plan.clone(), child, exited: false })
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL.
pub fn stop(running: &mut Running, grace: Duration) {
    if running.child.try_wait().ok().flatten().is_some() {
        return;
    }
    if let Ok(pid) = i32::try_from(running.child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if running.child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = running.child.kill();
    let _ = running.child.wait();
}

/// The last `lines` lines of a log file, for error reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
