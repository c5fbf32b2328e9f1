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
//! # Layout
//!
//! - `sim_node`: one simulated node's wire protocol.
//! - `swarm`: N of them, their certificates and shared counters.
//! - `cluster`: the coordinator processes and `/proc` readings.
//! - `run`: the phases of one run.
//! - `report`: what a run measured, and the pure parsing it needs.

mod cluster;
mod report;
mod run;
mod sim_node;
mod swarm;

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
    match args.cmd {
        BenchCommand::Swarm(a) => swarm(a, json).await,
    }
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
        let (dir, _temp) = match &a.dir {
            Some(d) => {
                let dir = d.join(format!("nodes-{nodes}"));
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                (dir, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("gantry-swarm-")
                    .tempdir()
                    .context("creating a temporary dir")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
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
