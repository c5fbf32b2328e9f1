//! `gantryctl`: the Gantry operator CLI.
//!
//! # Layout
//!
//! - `admin_client`: HTTP+JSON over the coordinator's admin Unix socket.
//! - `cluster_cmds`: `status`, `nodes`, `gpus`, `label`, `cluster add|remove`.
//! - `certs`: the cluster CA and certificates.
//! - `dev`: a local development cluster of real processes.
//! - `sim`: trace replay of the placement engine.
//! - `table`: aligned human output.

mod admin_client;
mod certs;
mod cluster_cmds;
mod dev;
mod sim;
mod table;

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use admin_client::AdminClient;

/// Operate a Gantry GPU cluster: inspect coordinators, nodes and GPUs, manage
/// membership and certificates, run a local development cluster.
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
    /// Change the set of coordinators.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Create the cluster CA and sign certificates.
    Certs(certs::CertsArgs),
    /// Start a local development cluster (coordinators + agents with simulated GPUs).
    Dev(dev::DevArgs),
    /// Offline runs of the placement engine (trace replay).
    Sim(sim::SimArgs),
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

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
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
            Cmd::Dev(args) => dev::run(args).await,
            Cmd::Certs(_) | Cmd::Generate { .. } | Cmd::Sim(_) => Ok(()),
        }
    })
}
