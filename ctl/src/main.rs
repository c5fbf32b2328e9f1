//! `gantryctl`: the Gantry operator CLI.
//!
//! # Layout
//!
//! - `admin_client`: HTTP+JSON over the coordinator's admin Unix socket.
//! - `cluster_cmds`: `status`, `nodes`, `gpus`, `label`, `cluster add|remove`.
//! - `workload_cmds`: `run`, `workloads`, `allocs`, `stop`.
//! - `wait`: following a rollout or a stop (pure judges, polling loops).
//! - `drain`: `drain`, `undrain`.
//! - `logs`: an allocation's output, streamed from its agent through the coordinator.
//! - `certs`: the cluster CA and certificates.
//! - `dev`: a local development cluster of real processes.
//! - `sim`: trace replay of the placement engine.
//! - `table`: aligned human output.

mod admin_client;
mod bench;
mod certs;
mod cluster_cmds;
mod dev;
mod drain;
mod logs;
mod out;
mod sim;
mod table;
mod wait;
mod workload_cmds;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use admin_client::AdminClient;

/// Operate a Gantry GPU cluster: run and stop workloads, inspect coordinators,
/// nodes, GPUs and allocations, drain nodes, manage membership and
/// certificates, run a local development cluster.
///
/// Commands that talk to a cluster use a coordinator's admin socket: --socket,
/// or GANTRY_SOCKET (`gantryctl dev` writes it to DIR/env). Any coordinator
/// answers; writes reach the leader whichever one you ask.
#[derive(Parser, Debug)]
#[command(name = "gantryctl", version, about, long_about)]
struct Cli {
    /// Admin socket of a coordinator.
    #[arg(long, global = true, env = "GANTRY_SOCKET", default_value = "/run/gantry/coordinator.sock")]
    socket: PathBuf,
    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Coordinators: id, address, role, term, commit index (as the leader sees them).
    Status {
        /// Ask only the coordinator behind --socket about itself (its own term,
        /// commit index and applied index), without going to the leader.
        #[arg(long)]
        local: bool,
    },
    /// Nodes: status, last heartbeat, labels, CPU, memory, GPUs.
    Nodes,
    /// GPUs on every node with live telemetry.
    Gpus,
    /// Set (KEY=VALUE) or remove (KEY-) operator labels on a node.
    Label {
        /// Node name.
        node: String,
        /// Changes: KEY=VALUE sets, KEY- removes.
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Submit or update workloads from TOML files (several, or a directory: one request).
    ///
    /// The file is checked here first (errors name the field). The same spec
    /// again changes nothing; any change but the replica count makes a new
    /// version whose replicas replace the old ones. With --wait, follows the
    /// new version until every replica is up and prints their endpoints: up
    /// means its health check passes, or, without one, that it has kept
    /// running for --stable seconds (a replica that exited 0 under a `never`
    /// or `on-failure` policy counts as done). It exits non-zero with the
    /// replica's message when a replica cannot start (image, command, port,
    /// GPU), crash-loops, fails for good, when the cluster has no room for
    /// it, or at --timeout.
    Run {
        /// Workload files (TOML; see examples/ in the source tree), or
        /// directories of them (every *.toml inside). Several workloads go
        /// in one request: all are checked first, and one invalid file
        /// submits nothing.
        #[arg(required = true, value_name = "FILE|DIR")]
        files: Vec<PathBuf>,
        /// Wait until every replica of this version is up.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (the rollout goes on).
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        timeout: u64,
        /// With --wait, for replicas without a health check: how long each
        /// must keep running, without a restart, to count as up.
        #[arg(long, default_value_t = 5.0, value_name = "SECS")]
        stable: f64,
    },
    /// Workloads: version, runtime, GPU request, running/desired replicas, status.
    Workloads,
    /// Allocations (placed replicas): node, GPUs, desired and actual state, health, endpoint.
    Allocs {
        /// Only this workload's.
        workload: Option<String>,
        /// Also show allocations already stopped (hidden by default).
        #[arg(long)]
        all: bool,
    },
    /// Stop every replica of a workload; the workload is forgotten once they stopped.
    Stop {
        /// Workload name.
        workload: String,
        /// Wait until no replica holds resources any more.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        timeout: u64,
    },
    /// Print an allocation's output (stdout and stderr), read from its agent.
    ///
    /// ALLOC is an id from `gantryctl allocs`, or a prefix that names one.
    /// The coordinator asks the agent down the connection the agent keeps to
    /// the leader, so any coordinator's socket works and agents need no
    /// reachable port.
    Logs {
        /// Allocation id (or an unambiguous prefix).
        alloc: String,
        /// Keep printing new output until Ctrl-C or the replica's end.
        #[arg(long, short)]
        follow: bool,
        /// Start with at most the last BYTES of each stream (default: all of it).
        #[arg(long, value_name = "BYTES")]
        tail: Option<u64>,
    },
    /// Drain a node: nothing new is placed there and its replicas move elsewhere.
    Drain {
        /// Node name.
        node: String,
        /// Wait until no allocation on the node holds resources.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (the node stays drained).
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        timeout: u64,
    },
    /// Undrain a node: new replicas may be placed there again.
    Undrain {
        /// Node name.
        node: String,
    },
    /// Change the set of coordinators.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Create the cluster CA and sign certificates.
    Certs(certs::CertsArgs),
    /// Start a local development cluster (coordinators + agents with simulated GPUs).
    Dev(dev::DevArgs),
    /// Offline runs of the placement engine (trace replay).
    Sim(sim::SimArgs),
    /// Load tests against real coordinators (a swarm of simulated nodes).
    Bench(bench::BenchArgs),
    /// Print a man page or a shell completion script (used to build packages).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        kind: gantry_common::cli_docs::DocKind,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Add a coordinator (it starts with no initial members, then joins as learner and becomes voter).
    Add {
        /// Its Raft id (positive, never used before).
        #[arg(long)]
        id: u64,
        /// Its QUIC address, IP:PORT.
        #[arg(long)]
        addr: String,
    },
    /// Remove a coordinator from the cluster.
    Remove {
        /// Its Raft id.
        #[arg(long)]
        id: u64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let result = run(cli);
    if json {
        if let Err(e) = &result {
            // Scripts read errors as JSON too: `{"error": "...", "field": "..."}` on stderr.
            let field = e
                .chain()
                .find_map(|c| c.downcast_ref::<admin_client::CallError>())
                .and_then(|c| c.field.clone());
            let body = serde_json::json!({ "error": format!("{e:#}"), "field": field });
            eprintln!("{body}");
            return std::process::ExitCode::FAILURE;
        }
    }
    gantry_common::exit::report(result)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Generate { kind } = cli.command {
        return gantry_common::cli_docs::print(kind, Cli::command(), "1").context("writing to stdout");
    }
    if let Cmd::Certs(args) = cli.command {
        return certs::run(args, cli.json);
    }
    if let Cmd::Sim(args) = cli.command {
        return sim::run(args, cli.json);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")?;
    let client = AdminClient::new(&cli.socket);
    let json = cli.json;
    runtime.block_on(async move {
        match cli.command {
            Cmd::Status { local } => cluster_cmds::status(&client, local, json).await,
            Cmd::Nodes => cluster_cmds::nodes(&client, json).await,
            Cmd::Gpus => cluster_cmds::gpus(&client, json).await,
            Cmd::Label { node, changes } => cluster_cmds::label(&client, &node, &changes, json).await,
            Cmd::Cluster(ClusterCmd::Add { id, addr }) => {
                cluster_cmds::add_member(&client, id, &addr, json).await
            }
            Cmd::Cluster(ClusterCmd::Remove { id }) => cluster_cmds::remove_member(&client, id, json).await,
            Cmd::Run { files, wait, timeout, stable } => {
                let stable = Duration::try_from_secs_f64(stable)
                    .map_err(|_| anyhow::anyhow!("--stable: {stable} is not a number of seconds"))?;
                workload_cmds::run_many(&client, &files, wait, Duration::from_secs(timeout), stable, json)
                    .await
            }
            Cmd::Workloads => workload_cmds::workloads(&client, json).await,
            Cmd::Allocs { workload, all } => {
                workload_cmds::allocs(&client, workload.as_deref(), all, json).await
            }
            Cmd::Stop { workload, wait, timeout } => {
                workload_cmds::stop(&client, &workload, wait, Duration::from_secs(timeout), json).await
            }
            Cmd::Logs { alloc, follow, tail } => logs::logs(&client, &alloc, follow, tail, json).await,
            Cmd::Drain { node, wait, timeout } => {
                drain::drain(&client, &node, true, wait, Duration::from_secs(timeout), json).await
            }
            Cmd::Undrain { node } => drain::drain(&client, &node, false, false, Duration::ZERO, json).await,
            Cmd::Dev(args) => dev::run(args).await,
            Cmd::Bench(args) => bench::run(args, json).await,
            Cmd::Certs(_) | Cmd::Generate { .. } | Cmd::Sim(_) => Ok(()),
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn demo_refuses_agent_flags_it_would_ignore() {
        assert!(Cli::try_parse_from(["gantryctl", "dev", "--demo"]).is_ok());
        let e = Cli::try_parse_from(["gantryctl", "dev", "--demo", "--agent-gpus", "1xL4-24GB"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
