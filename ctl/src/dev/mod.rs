//! `gantryctl dev`: a local development cluster of real processes.
//!
//! It creates a CA and certificates, writes one config per process, starts N
//! coordinators and M agents (simulated GPUs) as separate OS processes, waits
//! until a leader is elected and every agent is registered, then writes
//! `DIR/cluster.json` and `DIR/env` and runs until Ctrl-C or SIGTERM, when it
//! stops agents first, then coordinators. With `--demo` it first submits
//! three inference workloads and follows them until healthy.
//!
//! # Layout
//!
//! - `agents`: each agent's GPUs, GPU sharing, port range, and the agent
//!   flags that carry them.
//! - `runtime`: Docker or processes, decided from what answers.
//! - `layout`: certificates, configs and ports written before anything starts.
//! - `processes`: starting and stopping the children.
//! - `demo`: the `--demo` workloads.

mod agents;
mod demo;
pub(crate) mod layout;
pub(crate) mod processes;
mod runtime;

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gantry_common::api::{AllocView, ClusterStatus, NodeView, WorkloadView};
use gantry_common::identity::Role;
use gantry_common::model::NodeStatus;
use serde::Serialize;

use crate::admin_client::AdminClient;
use crate::out::{out, outln};
use agents::AgentSetup;
use processes::Running;
pub(crate) use runtime::RuntimeChoice;

/// Each simulated agent's GPUs unless --gpus says otherwise.
const DEFAULT_SIM_GPUS: &str = "8xH100-80GB";

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Directory for all state (certificates, configs, data, logs). Default: a
    /// fresh temporary directory, removed when the cluster stops.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of coordinators: 1, 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = parse_coordinators)]
    pub coordinators: u32,
    /// Number of agents, each a node with simulated GPUs. Default: 2 (with
    /// --gpu-backend nvml: 1, the node of this host's GPUs).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub agents: Option<u32>,
    /// Where the agents' GPUs come from. sim: simulated GPUs (--gpus);
    /// nvml: this host's NVIDIA GPUs through the driver, for one agent (try
    /// Gantry on a GPU server: --coordinators 1 --agents 1 --gpu-backend nvml).
    #[arg(long, value_enum, default_value_t = GpuBackendChoice::Sim)]
    pub gpu_backend: GpuBackendChoice,
    /// Simulated GPUs of each agent, e.g. 8xH100-80GB or
    /// 4xA100-40GB,2xL4-24GB. Default: 8xH100-80GB.
    #[arg(long)]
    pub gpus: Option<String>,
    /// GPUs of one agent, overriding --gpus: the first use is agent 1's
    /// (node-1), the second agent 2's, and so on.
    #[arg(long, value_name = "SPEC")]
    pub agent_gpus: Vec<String>,
    /// How GPUs are shared, e.g. 0=mig,1=mps (others stay exclusive; modes:
    /// exclusive, mig, mps, shared). Given once: every agent; given once per
    /// agent: the Nth for agent N.
    #[arg(long, value_name = "INDEX=MODE,...")]
    pub gpu_sharing: Vec<String>,
    /// How agents run workloads. auto: docker when a Docker engine answers on
    /// /var/run/docker.sock (or DOCKER_HOST), else process. docker: agents
    /// run both docker and process workloads; process: only process ones.
    #[arg(long, value_enum, default_value_t = RuntimeChoice::Auto)]
    pub runtime: RuntimeChoice,
    /// Also run a demo: 2 agents (4xH100-80GB and 4xA100-40GB, GPU 0 in MIG
    /// mode, GPU 1 shared through MPS), and three gantry-infer workloads
    /// (exclusive, MPS, MIG) followed until healthy. Runs the gantry-infer:dev
    /// image when Docker has it, else the gantry-infer binary (next to
    /// gantryctl or on PATH).
    #[arg(long, conflicts_with_all = ["agents", "gpus", "agent_gpus", "gpu_sharing", "gpu_backend"])]
    pub demo: bool,
    /// With --demo: give up if the workloads are not healthy within this many seconds.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    pub demo_timeout_secs: u64,
    /// Mark a node down after this many seconds without heartbeats.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub node_down_after_secs: u64,
    /// Give up if the cluster is not ready within this many seconds.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout_secs: u64,
}

/// Where the dev agents' GPUs come from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuBackendChoice {
    /// Simulated GPUs, as many agents as asked.
    Sim,
    /// This host's NVIDIA GPUs (libnvidia-ml), one agent.
    Nvml,
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
    /// Where Prometheus scrapes the process's `/metrics`.
    metrics_listen: String,
    config: PathBuf,
    log: PathBuf,
}

#[derive(Serialize)]
struct ClusterFile {
    dir: PathBuf,
    processes: Vec<ProcessEntry>,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let setups = if args.demo {
        agents::demo_setups()
    } else if args.gpu_backend == GpuBackendChoice::Nvml {
        let agents = args.agents.unwrap_or(1);
        vec![agents::host_setup(agents, args.gpus.is_some(), &args.agent_gpus, &args.gpu_sharing)?]
    } else {
        let gpus = args.gpus.as_deref().unwrap_or(DEFAULT_SIM_GPUS);
        agents::setups(args.agents.unwrap_or(2), gpus, &args.agent_gpus, &args.gpu_sharing)?
    };
    // Handlers first: a Ctrl-C during start-up must still stop the children,
    // which run in their own process groups and would otherwise be orphaned.
    let stop = gantry_common::shutdown::on_terminate();
    tokio::pin!(stop);
    let bin_dir = binaries_dir()?;
    let found = runtime::probe(&bin_dir).await;
    let decision = runtime::decide(args.runtime, &found, args.demo)?;
    let agents: Vec<AgentSetup> = setups;
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
    let plan = layout::prepare(&dir, &args, &agents, &decision.docker_socket)?;
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
        r = wait_ready(&sockets, agents.len() as u32, &mut running, Duration::from_secs(args.ready_timeout_secs)) => r,
        () = &mut stop => Err(anyhow::anyhow!("interrupted before the cluster was ready")),
    };
    if let Err(e) = ready {
        eprintln!();
        stop_all(&mut running);
        return Err(e);
    }
    write_files(&dir, &running, &sockets)?;
    let socket = sockets.first().map(|s| s.display().to_string()).unwrap_or_default();
    outln!("cluster ready: {} coordinators, {} agents", args.coordinators, agents.len());
    for (i, setup) in (1..).zip(&agents) {
        let sharing = setup.sharing.as_deref().map(|s| format!(", sharing {s}")).unwrap_or_default();
        let gpus = setup.gpus.as_deref().unwrap_or("this host's GPUs (nvml)");
        outln!("  node-{i}: {gpus}{sharing}, workload ports {}-{}", setup.ports.0, setup.ports.1);
    }
    outln!("  runtime:        {} ({})", decision.runtime, decision.why);
    outln!("  state and logs: {}", dir.display());
    outln!("  processes:      {}", dir.join("cluster.json").display());
    if !args.demo {
        outln!("try:");
        outln!("  export GANTRY_SOCKET={socket}");
        outln!("  gantryctl status; gantryctl nodes; gantryctl gpus");
        outln!("  gantryctl run FILE --wait   (workload files: examples/ in the source tree)");
    }
    let mut demo_failed = None;
    if let Some(target) = decision.demo.as_ref().filter(|_| args.demo) {
        let client = AdminClient::new(sockets.first().map(PathBuf::as_path).unwrap_or(Path::new("")));
        let timeout = Duration::from_secs(args.demo_timeout_secs);
        eprintln!("starting the demo workloads…");
        let outcome = tokio::select! {
            r = demo::run(&client, &dir, target, timeout) => Some(r),
            () = &mut stop => None,
        };
        match outcome {
            None => {
                eprintln!("stopping the dev cluster…");
                stop_workloads(&sockets).await;
                stop_all(&mut running);
                return Ok(());
            }
            Some(Ok(done)) => out!("\n{}", demo::summary(&done, &socket)),
            Some(Err(e)) => {
                // Left running so its allocations and logs can be looked at.
                eprintln!("error: {e:#}");
                eprintln!("the cluster keeps running so you can look (gantryctl allocs, gantryctl logs ID)");
                demo_failed = Some(e);
            }
        }
    }
    outln!("Ctrl-C stops every process.");

    supervise(&mut running, stop).await;
    eprintln!("stopping the dev cluster…");
    stop_workloads(&sockets).await;
    stop_all(&mut running);
    eprintln!("stopped");
    match demo_failed {
        Some(e) => Err(e.context("the demo did not come up")),
        None => Ok(()),
    }
}

/// The directory holding `gantry-coordinator` and `gantry-agent`: next to this binary.
pub(crate) fn binaries_dir() -> anyhow::Result<PathBuf> {
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
            if std::io::stderr().is_terminal() {
                eprintln!();
            }
            return Ok(());
        }
        let line = match progress {
            Ok(p) | Err(p) => p,
        };
        if line != last {
            // Redraw in place on a terminal; elsewhere (a file, CI) a line each.
            if std::io::stderr().is_terminal() {
                eprint!("\r\x1b[2K  {line}");
            } else {
                eprintln!("  {line}");
            }
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
                metrics_listen: r.plan.metrics_listen.clone(),
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

/// Stops every workload and waits (at most [`WORKLOAD_STOP_LIMIT`]) until
/// no replica holds anything. An agent that stops leaves its workloads
/// running, so that restarting it does not kill them; here that would
/// orphan containers and processes when the dev cluster goes away.
async fn stop_workloads(sockets: &[PathBuf]) {
    let mut answered = None;
    for socket in sockets {
        let client = AdminClient::new(socket);
        if let Ok(w) = client.get::<Vec<WorkloadView>>("/v1/workloads").await {
            answered = Some((client, w));
            break;
        }
    }
    let Some((client, workloads)) = answered else { return };
    if workloads.is_empty() {
        return;
    }
    eprintln!("stopping {} workloads…", workloads.len());
    for w in &workloads {
        let path = format!("/v1/workloads/{}", crate::admin_client::encode(&w.name));
        if let Err(e) = client.send::<_, serde_json::Value>(hyper::Method::DELETE, &path, &()).await {
            eprintln!("warning: stopping workload {}: {e:#}", w.name);
        }
    }
    let deadline = Instant::now() + WORKLOAD_STOP_LIMIT;
    loop {
        let Ok(allocs) = client.get::<Vec<AllocView>>("/v1/allocs").await else { return };
        let left: Vec<&str> =
            allocs.iter().filter(|a| !crate::wait::is_terminal(&a.actual)).map(|a| a.id.as_str()).collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!(
                "warning: {} replicas still running after {WORKLOAD_STOP_LIMIT:?} ({}); \
                 they may outlive the cluster (docker ps; ps)",
                left.len(),
                left.join(", ")
            );
            return;
        }
        tokio::time::sleep(crate::wait::POLL).await;
    }
}

/// How long stopping the workloads may take when the dev cluster stops.
const WORKLOAD_STOP_LIMIT: Duration = Duration::from_secs(30);

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
