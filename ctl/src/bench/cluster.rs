//! The swarm's coordinators: real `gantry-coordinator` processes laid out
//! as `gantryctl dev` lays them out, with what the bench does to them
//! (kill -9, wipe and restart) and reads from them (`/proc` CPU and RSS,
//! status, metrics).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use gantry_common::api::{ClusterStatus, MemberRole};

use crate::admin_client::AdminClient;
use crate::dev::layout::{self, ProcessPlan};
use crate::dev::processes::{self, Running};
use crate::dev::DevArgs;

pub struct Cluster {
    pub dir: PathBuf,
    bin_dir: PathBuf,
    /// Indexed by coordinator id - 1.
    running: Vec<Running>,
}

impl Cluster {
    /// Lays out and starts `coordinators` coordinators in `dir` (fresh).
    pub fn start(dir: &Path, coordinators: u32, node_down_after_secs: u64) -> anyhow::Result<Cluster> {
        let bin_dir = crate::dev::binaries_dir()?;
        let args = DevArgs {
            dir: Some(dir.to_path_buf()),
            coordinators,
            agents: Some(0),
            gpu_backend: crate::dev::GpuBackendChoice::Sim,
            gpus: None,
            agent_gpus: Vec::new(),
            gpu_sharing: Vec::new(),
            runtime: crate::dev::RuntimeChoice::Process,
            demo: false,
            demo_timeout_secs: 0,
            node_down_after_secs,
            ready_timeout_secs: 60,
        };
        let plan = layout::prepare(dir, &args, &[], "")?;
        let mut cluster = Cluster { dir: dir.to_path_buf(), bin_dir, running: Vec::new() };
        for p in &plan {
            let r = processes::spawn(&cluster.bin_dir, p)?;
            cluster.running.push(r);
        }
        Ok(cluster)
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        (1..=self.running.len() as u64).filter(|&id| self.alive(id))
    }

    fn get(&self, id: u64) -> anyhow::Result<&Running> {
        self.running.get((id as usize).wrapping_sub(1)).with_context(|| format!("no coordinator {id}"))
    }

    fn plan(&self, id: u64) -> anyhow::Result<ProcessPlan> {
        Ok(self.get(id)?.plan.clone())
    }

    pub fn alive(&self, id: u64) -> bool {
        self.running.get((id as usize).wrapping_sub(1)).is_some_and(|r| !r.exited)
    }

    pub fn pid(&self, id: u64) -> anyhow::Result<u32> {
        Ok(self.get(id)?.child.id())
    }

    /// Addresses the nodes dial.
    pub fn listen_addrs(&self) -> Vec<String> {
        self.running.iter().map(|r| r.plan.listen.clone()).collect()
    }

    pub fn listen(&self, id: u64) -> anyhow::Result<String> {
        Ok(self.get(id)?.plan.listen.clone())
    }

    pub fn socket(&self, id: u64) -> anyhow::Result<PathBuf> {
        self.get(id)?.plan.admin_socket.clone().context("a coordinator without an admin socket")
    }

    pub fn client(&self, id: u64) -> anyhow::Result<AdminClient> {
        let socket =
            self.get(id)?.plan.admin_socket.clone().context("a coordinator without an admin socket")?;
        Ok(AdminClient::new(&socket))
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// The live coordinator that says it leads (each asked about itself,
    /// so that a question never waits on a dead leader), waiting up to `timeout`.
    pub async fn wait_leader(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let start = Instant::now();
        loop {
            self.check_exits()?;
            for id in self.ids().collect::<Vec<_>>() {
                let Ok(client) = self.client(id) else { continue };
                let Ok(status) = client.get::<ClusterStatus>("/v1/status?local=true").await else { continue };
                let me = status.members.iter().find(|m| m.id == status.answered_by);
                if me.is_some_and(|m| m.role == MemberRole::Leader) {
                    return Ok(status.answered_by);
                }
            }
            if start.elapsed() > timeout {
                bail!("no leader after {timeout:?}; the logs are in {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails if a coordinator the bench did not kill has exited.
    fn check_exits(&mut self) -> anyhow::Result<()> {
        for r in &mut self.running {
            if r.exited {
                continue;
            }
            if let Ok(Some(status)) = r.child.try_wait() {
                bail!(
                    "{} exited ({status}); its log ends with:\n{}",
                    r.plan.name,
                    processes::tail(&r.plan.log, 20)
                );
            }
        }
        Ok(())
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let r = self
            .running
            .get_mut((id as usize).wrapping_sub(1))
            .with_context(|| format!("no coordinator {id}"))?;
        r.child.kill().context("kill -9 of a coordinator")?;
        let _ = r.child.wait();
        r.exited = true;
        Ok(())
    }

    /// Removes a killed coordinator's data directory (its Raft log, state
    /// and snapshots) and starts it again from its config.
    pub fn wipe_and_restart(&mut self, id: u64) -> anyhow::Result<()> {
        let plan = self.plan(id)?;
        let data =
            plan.config.parent().map(|home| home.join("data")).context("a config without a directory")?;
        std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        self.restart(id)
    }

    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let plan = self.plan(id)?;
        let fresh = processes::spawn(&self.bin_dir, &plan)?;
        if let Some(slot) = self.running.get_mut((id as usize).wrapping_sub(1)) {
            *slot = fresh;
        }
        Ok(())
    }

    pub fn stop(mut self) {
        for r in &mut self.running {
            processes::stop(r, Duration::from_secs(10));
        }
    }
}

/// A bench that ends early (an error, Ctrl-C) leaves no coordinator running.
impl Drop for Cluster {
    fn drop(&mut self) {
        for r in &mut self.running {
            processes::stop(r, Duration::from_secs(5));
        }
    }
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = super::report::stat_cpu_ticks(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))?;
    // /proc counts in USER_HZ, which Linux fixes at 100 on every architecture it ships.
    Ok(ticks as f64 / 100.0)
}

/// Resident memory of a process in MiB, from `/proc/PID/status`.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    super::report::status_rss_kib(&status)
        .map(|kib| kib as f64 / 1024.0)
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}
