//! `gantryctl bench`: load tests against real coordinators.
//!
//! `bench swarm` starts coordinators (real processes, laid out as `gantryctl
//! dev` does) and N simulated nodes in this process, each with its own
//! agent certificate and QUIC connection, registering, heartbeating with
//! GPU telemetry, following its desired allocations and reporting them
//! running and healthy (a load-test runtime that starts nothing). It then
//! measures, in order: registration, a steady window (leader CPU and RSS,
//! heartbeats per second), placements (one workload of many replicas, a
//! batch of one-replica workloads, several clients submitting one at a
//! time), dead-node detection (1 % of the nodes go silent at once), the
//! leader's last snapshot and a wiped follower's catch-up, and a leader
//! kill -9 (until every node reports to the new leader).
//!
//! `bench writes` compares Raft writes with etcd's: the same clients, in
//! one run, against three etcd members and three coordinators.
//!
//! # Layout
//!
//! - `sim_node`: one simulated node's wire protocol.
//! - `swarm`: N of them, their certificates and shared counters.
//! - `cluster`: the coordinator processes and `/proc` readings.
//! - `run`: the phases of one run.
//! - `report`: what a run measured, and the pure parsing it needs.
//! - `etcd`: the etcd members `bench writes` compares with.
//! - `writes`: the write load, its statistics and its report.

mod cluster;
mod etcd;
mod report;
mod run;
mod sim_node;
mod swarm;
mod writes;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gantry_common::gpu_spec::parse_gpu_spec;

use crate::out::outln;

/// Arguments of `gantryctl bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Real coordinators and N simulated nodes in this process: registration,
    /// leader CPU and memory, heartbeats/s, placements/s, dead-node
    /// detection, snapshot, wiped-follower catch-up and leader failover.
    /// Needs gantry-coordinator and gantry-agent next to gantryctl.
    Swarm(SwarmArgs),
    /// Raft writes per second and their latency, side by side with etcd:
    /// the same clients, one kept-alive connection each, alternating rounds
    /// against etcd members (Debian's etcd-server) and as many coordinators.
    /// Optionally with simulated nodes and allocations held (and as many
    /// keys in etcd). Needs etcd, and gantry-coordinator next to gantryctl.
    Writes(WritesArgs),
}

#[derive(Args, Debug)]
struct WritesArgs {
    /// Concurrent clients; several counts (e.g. 16,64) run one after another.
    #[arg(long, value_delimiter = ',', default_value = "16,64", value_parser = clap::value_parser!(u64).range(1..=1024))]
    clients: Vec<u64>,
    /// Members of each cluster: 1, 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = parse_coordinators)]
    members: u32,
    /// Length of each round, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    secs: u64,
    /// Rounds per client count (etcd, then Gantry, each round).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,
    /// Simulated nodes (16 GPUs each) the coordinators hold; the label writes go to them.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    nodes: u64,
    /// One-GPU allocations placed on those nodes before measuring (etcd
    /// gets a key per node and per allocation). 0: an empty cluster.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=320_000))]
    allocations: u64,
    /// Each simulated node's heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    heartbeat_ms: u64,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd: std::path::PathBuf,
    /// Give up when registering or placing takes longer than this many seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    phase_timeout_secs: u64,
    /// Keep the run's directory (configs, logs, data) here instead of a
    /// temporary one removed afterwards.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
struct SwarmArgs {
    /// Simulated nodes; several sizes (e.g. 1000,5000,10000) run one after
    /// another, each on a fresh cluster.
    #[arg(long, value_delimiter = ',', required = true, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    nodes: Vec<u64>,
    /// Coordinators: 1, 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = parse_coordinators)]
    coordinators: u32,
    /// GPUs of each simulated node, e.g. 8xH100-80GB.
    #[arg(long, default_value = "8xH100-80GB")]
    gpus: String,
    /// Each node's heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    heartbeat_ms: u64,
    /// The coordinators mark a node down after this many seconds without heartbeats.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    node_down_after_secs: u64,
    /// Length of the steady-state window, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    steady_secs: u64,
    /// Clients submitting one workload at a time, side by side.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    clients: u64,
    /// Nice value of the threads that run the simulated nodes (0-19). Real
    /// agents run on other hosts; on one machine they would otherwise take
    /// CPU from the coordinators they are measuring. 0: compete equally.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    swarm_nice: i32,
    /// Give up when one phase takes longer than this many seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    phase_timeout_secs: u64,
    /// Keep each run's directory (configs, logs, data) here instead of a
    /// temporary one removed afterwards: DIR/nodes-N.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn parse_coordinators(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => Err(format!("{s:?}: a cluster has 1, 3 or 5 coordinators")),
    }
}

/// Runs `gantryctl bench`; `json` is gantryctl's global `--json`.
pub async fn run(args: BenchArgs, json: bool) -> anyhow::Result<()> {
    // Ctrl-C or SIGTERM drops the run, and with it every process it
    // started (coordinators, etcd members: their `Drop` stops them), which
    // run in their own process groups and would outlive a killed gantryctl.
    let interrupted = gantry_common::shutdown::on_terminate();
    let work = async {
        match args.cmd {
            BenchCommand::Swarm(a) => swarm(a, json).await,
            BenchCommand::Writes(a) => writes(a, json).await,
        }
    };
    tokio::select! {
        r = work => r,
        () = interrupted => anyhow::bail!("interrupted; the processes the bench started are stopped"),
    }
}

/// A fresh directory: `dir` itself, or a temporary one (kept alive by the guard).
fn run_dir(
    dir: Option<&std::path::Path>,
    sub: &str,
) -> anyhow::Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            let dir = d.join(sub);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok((dir, None))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("gantry-bench-")
                .tempdir()
                .context("creating a temporary dir")?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

async fn writes(a: WritesArgs, json: bool) -> anyhow::Result<()> {
    let plan = writes::WritesPlan {
        clients: a.clients.iter().map(|&c| c as usize).collect(),
        members: a.members,
        duration: Duration::from_secs(a.secs),
        rounds: a.rounds as usize,
        nodes: a.nodes as usize,
        allocations: a.allocations,
        heartbeat_every: Duration::from_millis(a.heartbeat_ms),
        etcd: a.etcd,
        phase_limit: Duration::from_secs(a.phase_timeout_secs),
    };
    let (dir, _temp) = run_dir(a.dir.as_deref(), "writes")?;
    let say = |line: &str| eprintln!("{line}");
    say(&format!("bench writes in {}", dir.display()));
    let reports = writes::run(&plan, &dir, &say).await?;
    for r in &reports {
        if json {
            outln!("{}", serde_json::to_string(r).context("encoding the report")?);
        } else {
            for line in r.lines() {
                outln!("{line}");
            }
        }
    }
    Ok(())
}

async fn swarm(a: SwarmArgs, json: bool) -> anyhow::Result<()> {
    let groups = parse_gpu_spec(&a.gpus).map_err(|e| anyhow::anyhow!("--{e}"))?;
    let say = |line: &str| eprintln!("{line}");
    let mut reports = Vec::new();
    for &nodes in &a.nodes {
        let plan = run::RunPlan {
            nodes: nodes as usize,
            coordinators: a.coordinators,
            groups: groups.clone(),
            heartbeat_every: Duration::from_millis(a.heartbeat_ms),
            node_down_after_secs: a.node_down_after_secs,
            steady: Duration::from_secs(a.steady_secs),
            clients: a.clients as usize,
            phase_limit: Duration::from_secs(a.phase_timeout_secs),
            swarm_nice: a.swarm_nice,
        };
        let (dir, _temp) = run_dir(a.dir.as_deref(), &format!("nodes-{nodes}"))?;
        say(&format!("swarm of {nodes} nodes in {}", dir.display()));
        let report =
            run::run(&plan, &dir, &say).await.with_context(|| format!("the swarm of {nodes} nodes"))?;
        if json {
            outln!("{}", serde_json::to_string(&report).context("encoding the report")?);
        } else {
            for line in report.lines() {
                outln!("{line}");
            }
        }
        reports.push(report);
    }
    Ok(())
}
