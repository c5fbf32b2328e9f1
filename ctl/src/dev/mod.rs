//! `gantryctl dev`: a local development cluster of real processes.
//!
//! It creates a CA and certificates, writes one config per process, starts N
//! coordinators and M agents (simulated GPUs) as separate OS processes, waits
//! until a leader is elected and every agent is registered, then writes
//! `DIR/cluster.json` and `DIR/env` and runs until Ctrl-C or SIGTERM, when it
//! stops agents first, then coordinators.

mod layout;
mod processes;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gantry_common::api::{ClusterStatus, NodeView};
use gantry_common::identity::Role;
use gantry_common::model::NodeStatus;
use serde::Serialize;

use crate::admin_client::AdminClient;
use processes::Running;

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Directory for all state (certificates, configs, data, logs). Default: a
    /// fresh temporary directory, removed when the cluster stops.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of coordinators: 1, 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = parse_coordinators)]
    pub coordinators: u32,
    /// Number of agents (each a node with simulated GPUs).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub agents: u32,
    /// GPUs of each agent, e.g. 8xH100-80GB or 4xA100-40GB,2xL4-24GB.
    #[arg(long, default_value = "8xH100-80GB")]
    pub gpus: String,
    /// Mark a node down after this many seconds without heartbeats.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub node_down_after_secs: u64,
    /// Give up if the cluster is not ready within this many seconds.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout_secs: u64,
}

fn parse_coordinators(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => Err(format!("{s:?}: a cluster has 1, 3 or 5 coordinators")),
    }
}

/// One line of `cluster.json`.
#[derive(Serialize)]
struct ProcessEntry {
    role: Role,
    name: String,
    pid: u32,
    admin_socket: Option<PathBuf>,
    listen: String,
    config: PathBuf,
    log: PathBuf,
}

#[derive(Serialize)]
struct ClusterFile {
    dir: PathBuf,
    processes: Vec<ProcessEntry>,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    gantry_common::gpu_spec::parse_gpu_spec(&args.gpus).map_err(|e| anyhow::anyhow!("--{e}"))?;
    // Handlers first: a Ctrl-C during start-up must still stop the children,
    // which run in their own process groups and would otherwise be orphaned.
    let stop = gantry_common::shutdown::on_terminate();
    tokio::pin!(stop);
    let bin_dir = binaries_dir()?;
    let (dir, _temp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (std::fs::canonicalize(d).with_context(|| format!("resolving {}", d.display()))?, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("gantry-dev-")
                .tempdir()
                .context("creating a temporary dir")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    eprintln!("gantry dev cluster in {}", dir.display());
    let plan = layout::prepare(&dir, &args)?;
    let mut running: Vec<Running> = Vec::new();
    for p in &plan {
        match processes::spawn(&bin_dir, p) {
            Ok(r) => running.push(r),
            Err(e) => {
                stop_all(&mut running);
                return Err(e);
            }
        }
    }
    let sockets: Vec<PathBuf> = plan.iter().filter_map(|p| p.admin_socket.clone()).collect();
    let ready = tokio::select! {
        r = wait_ready(&sockets, args.agents, &mut running, Duration::from_secs(args.ready_timeout_secs)) => r,
        () = &mut stop => Err(anyhow::anyhow!("interrupted before the cluster was ready")),
    };
    if let Err(e) = ready {
        eprintln!();
        stop_all(&mut running);
        return Err(e);
    }
    write_files(&dir, &running, &sockets)?;
    let socket = sockets.first().map(|s| s.display().to_string()).unwrap_or_default();
    println!(
        "cluster ready: {} coordinators, {} agents ({} each)",
        args.coordinators, args.agents, args.gpus
    );
    println!("  state and logs: {}", dir.display());
    println!("  processes:      {}", dir.join("cluster.json").display());
    println!("try:");
    println!("  export GANTRY_SOCKET={socket}");
    println!("  gantryctl status; gantryctl nodes; gantryctl gpus");
    println!("Ctrl-C stops every process.");

    supervise(&mut running, stop).await;
    eprintln!("stopping the dev cluster…");
    stop_all(&mut running);
    eprintln!("stopped");
    Ok(())
}

/// The directory holding `gantry-coordinator` and `gantry-agent`: next to this binary.
fn binaries_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating gantryctl")?;
    let dir = exe.parent().map(Path::to_path_buf).context("gantryctl has no parent directory")?;
    for bin in ["gantry-coordinator", "gantry-agent"] {
        if !dir.join(bin).exists() {
            bail!(
                "{bin} is not next to gantryctl in {}; build all binaries (cargo build --release)",
                dir.display()
            );
        }
    }
    Ok(dir)
}

async fn wait_ready(
    sockets: &[PathBuf],
    agents: u32,
    running: &mut [Running],
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(r) = running.iter_mut().find_map(|r| r.child.try_wait().ok().flatten().map(|_| &*r)) {
            bail!(
                "{} exited during start-up; its log ends with:\n{}",
                r.plan.name,
                processes::tail(&r.plan.log, 20)
            );
        }
        let progress = probe(sockets, agents).await;
        if progress.as_deref() == Ok("ready") {
            eprintln!();
            return Ok(());
        }
        let line = match progress {
            Ok(p) | Err(p) => p,
        };
        if line != last {
            eprint!("\r\x1b[2K  {line}");
            last = line;
        }
        if start.elapsed() > timeout {
            eprintln!();
            bail!("cluster not ready after {timeout:?}: {last}; see the logs in each process directory");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `Ok("ready")` when a leader exists and every agent's node is ready; else a progress line.
async fn probe(sockets: &[PathBuf], agents: u32) -> Result<String, String> {
    for socket in sockets {
        let client = AdminClient::new(socket);
        let Ok(status) = client.get::<ClusterStatus>("/v1/status").await else { continue };
        let Some(leader) = status.leader else {
            return Err("waiting for a leader to be elected…".into());
        };
        let nodes: Vec<NodeView> = client.get("/v1/nodes").await.map_err(|e| e.to_string())?;
        let ready = nodes.iter().filter(|n| n.status == NodeStatus::Ready).count() as u32;
        if ready >= agents {
            return Ok("ready".into());
        }
        return Err(format!("leader is coordinator {leader}; {ready}/{agents} agents registered…"));
    }
    Err("waiting for coordinators to open their admin sockets…".into())
}

fn write_files(dir: &Path, running: &[Running], sockets: &[PathBuf]) -> anyhow::Result<()> {
    let file = ClusterFile {
        dir: dir.to_path_buf(),
        processes: running
            .iter()
            .map(|r| ProcessEntry {
                role: r.plan.role,
                name: r.plan.name.clone(),
                pid: r.child.id(),
                admin_socket: r.plan.admin_socket.clone(),
                listen: r.plan.listen.clone(),
                config: r.plan.config.clone(),
                log: r.plan.log.clone(),
            })
            .collect(),
    };
    let json = serde_json::to_string_pretty(&file).context("encoding cluster.json")?;
    // Written via a temporary name so a reader never sees half a file.
    let tmp = dir.join(".cluster.json.tmp");
    std::fs::write(&tmp, json).context("writing cluster.json")?;
    std::fs::rename(&tmp, dir.join("cluster.json")).context("writing cluster.json")?;
    let socket = sockets.first().map(|s| s.display().to_string()).unwrap_or_default();
    std::fs::write(dir.join("env"), format!("GANTRY_SOCKET={socket}\n")).context("writing env")
}

/// Runs until `stop` (SIGINT/SIGTERM), reporting processes that exit on their own.
async fn supervise(
    running: &mut [Running],
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        for r in running.iter_mut().filter(|r| !r.exited) {
            if let Ok(Some(status)) = r.child.try_wait() {
                r.exited = true;
                eprintln!("{} (pid {}) exited: {status}", r.plan.name, r.child.id());
            }
        }
    }
}

/// Agents first (so they don't chase a vanishing leader), then coordinators.
fn stop_all(running: &mut [Running]) {
    let grace = Duration::from_secs(10);
    for r in running.iter_mut().filter(|r| r.plan.role == Role::Agent) {
        processes::stop(r, grace);
    }
    for r in running.iter_mut().filter(|r| r.plan.role != Role::Agent) {
        processes::stop(r, grace);
    }
}
