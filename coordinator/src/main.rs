//! `gantry-coordinator`: reads its config, then runs until SIGTERM/SIGINT.
//! SIGHUP re-reads the config file and applies what can change while running
//! ([`RELOADABLE`]); the rest is logged as needing a restart.

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use gantry_common::cli_docs::{self, DocKind};
use gantry_common::systemd;
use gantry_common::{logging, reload};
use gantry_coordinator::config::{parse_member, CoordinatorConfig};
use gantry_coordinator::start;
use tracing::{info, warn};

/// Gantry control-plane daemon: replicates cluster state with Raft, serves
/// agents and peers over QUIC with mutual TLS, and operators on a local admin
/// socket. Settings come from the TOML file given with --config (default
/// /etc/gantry/coordinator.toml when it exists); flags override the file.
#[derive(Parser, Debug)]
#[command(name = "gantry-coordinator", version, about, long_about)]
struct Cli {
    /// TOML config file.
    #[arg(long, env = "GANTRY_COORDINATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Raft member id of this coordinator (positive, unique, never reused).
    #[arg(long)]
    id: Option<u64>,
    /// UDP address of the QUIC endpoint, e.g. 0.0.0.0:7400.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Address peers and agents use to reach this coordinator (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Directory for the Raft log and state (raft.redb).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Path of the admin Unix socket.
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// TCP address of /metrics and /healthz for Prometheus ("" serves them on the admin socket only).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// A member of a new cluster as ID=IP:PORT; repeat for each (include this one).
    #[arg(long = "initial-member", value_parser = parse_member)]
    initial_members: Vec<(u64, String)>,
    /// Cluster CA certificate (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This coordinator's certificate (PEM), issued with --role coordinator.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// This coordinator's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Mark a node down after this many seconds without heartbeats.
    #[arg(long)]
    node_down_after_secs: Option<u64>,
    /// After becoming leader, wait this many seconds (or --node-down-after-secs,
    /// if longer) for a node's first heartbeat before marking it down.
    #[arg(long)]
    node_failover_grace_secs: Option<u64>,
    /// Log filter, e.g. info or gantry_coordinator=debug,info.
    #[arg(long, env = "GANTRY_LOG")]
    log_level: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Print a man page or a shell completion script and exit (used to build packages).
    #[arg(long, value_enum, hide = true)]
    generate: Option<DocKind>,
}

const DEFAULT_CONFIG: &str = "/etc/gantry/coordinator.toml";

/// Settings a SIGHUP applies without a restart.
const RELOADABLE: &[&str] = &["log_level"];

fn main() -> std::process::ExitCode {
    gantry_common::exit::report(run())
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(kind) = cli.generate {
        return cli_docs::print(kind, Cli::command(), "8").context("writing to stdout");
    }
    let config = build_config(&cli)?;
    if cli.print_config {
        print!("{}", toml::to_string_pretty(&config).context("encoding the config")?);
        return Ok(());
    }
    let log = logging::init(&config.log_level);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let load = move || {
            build_config(&cli).and_then(|c| Ok(c.validate().map(|_| c)?)).map_err(|e| format!("{e:#}"))
        };
        let apply = move |new: &CoordinatorConfig, running: &mut CoordinatorConfig| {
            if new.log_level != running.log_level {
                match log.set(&new.log_level) {
                    Ok(()) => running.log_level = new.log_level.clone(),
                    Err(e) => warn!("reload: {e}"),
                }
            }
        };
        let reloader = tokio::spawn(reload::on_sighup(RELOADABLE, config.clone(), load, apply));
        let ready = || {
            info!("ready");
            systemd::ready("running: raft started, admin socket bound");
        };
        let result = start::run(config, gantry_common::shutdown::on_terminate(), ready).await;
        reloader.abort();
        result.map_err(anyhow::Error::from)
    })
}

fn build_config(cli: &Cli) -> anyhow::Result<CoordinatorConfig> {
    let mut c: CoordinatorConfig =
        gantry_common::config::load_or_default(cli.config.as_deref(), std::path::Path::new(DEFAULT_CONFIG))?;
    if let Some(v) = cli.id {
        c.id = v;
    }
    if let Some(v) = cli.listen {
        c.listen = v;
    }
    if let Some(v) = &cli.advertise {
        c.advertise = Some(v.clone());
    }
    if let Some(v) = &cli.data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = &cli.admin_socket {
        c.admin_socket = v.clone();
    }
    if let Some(v) = &cli.metrics_listen {
        c.metrics_listen = v.clone();
    }
    if !cli.initial_members.is_empty() {
        c.initial_members = cli.initial_members.iter().cloned().collect();
    }
    if let Some(v) = &cli.tls_ca {
        c.tls.ca = v.clone();
    }
    if let Some(v) = &cli.tls_cert {
        c.tls.cert = v.clone();
    }
    if let Some(v) = &cli.tls_key {
        c.tls.key = v.clone();
    }
    if let Some(v) = cli.node_down_after_secs {
        c.node_down_after_secs = v;
    }
    if let Some(v) = cli.node_failover_grace_secs {
        c.node_failover_grace_secs = v;
    }
    if let Some(v) = &cli.log_level {
        c.log_level = v.clone();
    }
    Ok(c)
}
