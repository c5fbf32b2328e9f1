//! `gantry-agent`: reads its config, then runs until SIGTERM/SIGINT.
//! SIGHUP re-reads the config file and applies what can change while running
//! ([`RELOADABLE`]); the rest is logged as needing a restart.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use gantry_agent::config::{parse_label, AgentConfig, DockerGpu, GpuBackendKind};
use gantry_common::cli_docs::{self, DocKind};
use gantry_common::{logging, reload};
use tokio::sync::watch;
use tracing::warn;

/// Gantry GPU host daemon: discovers GPUs (NVML, or simulated with
/// --gpu-backend sim), samples their telemetry and reports it to the
/// coordinators over QUIC with mutual TLS. Settings come from the TOML file
/// given with --config (default /etc/gantry/agent.toml when it exists); flags
/// override the file.
#[derive(Parser, Debug)]
#[command(name = "gantry-agent", version, about, long_about)]
struct Cli {
    /// TOML config file.
    #[arg(long, env = "GANTRY_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// This node's name (must match the agent certificate; default: the certificate's name).
    #[arg(long)]
    node_name: Option<String>,
    /// A coordinator address IP:PORT; repeat for each.
    #[arg(long = "coordinator")]
    coordinators: Vec<String>,
    /// Directory for agent state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Telemetry sampling and heartbeat interval in milliseconds.
    #[arg(long)]
    telemetry_interval_ms: Option<u64>,
    /// Where GPUs come from: nvml (real GPUs) or sim (simulated).
    #[arg(long, value_enum)]
    gpu_backend: Option<GpuBackendKind>,
    /// Simulated GPUs, e.g. 8xH100-80GB or 4xA100-40GB,2xL4-24GB (with --gpu-backend sim).
    #[arg(long)]
    sim_gpus: Option<String>,
    /// A node label KEY=VALUE; repeat for each.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Local address of /metrics, /healthz and allocation logs ("" disables).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Address (IP or host name) where this node's workloads are reached (default: the host name).
    #[arg(long)]
    advertise_address: Option<String>,
    /// How GPUs are shared, e.g. 0=mig,1-3=mps,4=shared (others exclusive); replaces the file's table.
    #[arg(long, value_parser = gantry_agent::gpu::sharing::parse_flag)]
    gpu_sharing: Option<std::collections::BTreeMap<String, gantry_common::model::GpuSharing>>,
    /// Host ports for workloads, FIRST-LAST (default 20000-32000).
    #[arg(long)]
    port_range: Option<String>,
    /// Docker engine socket for docker workloads ("" disables the docker runtime).
    #[arg(long)]
    docker_socket: Option<String>,
    /// How containers get GPUs.
    #[arg(long, value_enum)]
    docker_gpu: Option<DockerGpu>,
    /// The MPS control program (nvml backend; default nvidia-cuda-mps-control).
    #[arg(long)]
    mps_control: Option<PathBuf>,
    /// Cluster CA certificate (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This agent's certificate (PEM), issued with --role agent --name NODE.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// This agent's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Log filter, e.g. info or gantry_agent=debug,info.
    #[arg(long, env = "GANTRY_LOG")]
    log_level: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Print a man page or a shell completion script and exit (used to build packages).
    #[arg(long, value_enum, hide = true)]
    generate: Option<DocKind>,
}

const DEFAULT_CONFIG: &str = "/etc/gantry/agent.toml";

/// Settings a SIGHUP applies without a restart.
const RELOADABLE: &[&str] = &["log_level", "telemetry_interval_ms"];

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async {
        let (interval_tx, interval_rx) = watch::channel(Duration::from_millis(config.telemetry_interval_ms));
        let load = move || {
            build_config(&cli).and_then(|c| Ok(c.validate().map(|_| c)?)).map_err(|e| format!("{e:#}"))
        };
        let apply = move |new: &AgentConfig, running: &mut AgentConfig| {
            if new.log_level != running.log_level {
                match log.set(&new.log_level) {
                    Ok(()) => running.log_level = new.log_level.clone(),
                    Err(e) => warn!("reload: {e}"),
                }
            }
            if new.telemetry_interval_ms != running.telemetry_interval_ms {
                interval_tx.send_replace(Duration::from_millis(new.telemetry_interval_ms));
                running.telemetry_interval_ms = new.telemetry_interval_ms;
            }
        };
        let reloader = tokio::spawn(reload::on_sighup(RELOADABLE, config.clone(), load, apply));
        let result =
            gantry_agent::start::run(config, gantry_common::shutdown::on_terminate(), interval_rx).await;
        reloader.abort();
        result.map_err(anyhow::Error::from)
    })
}

fn build_config(cli: &Cli) -> anyhow::Result<AgentConfig> {
    let mut c: AgentConfig =
        gantry_common::config::load_or_default(cli.config.as_deref(), std::path::Path::new(DEFAULT_CONFIG))?;
    if let Some(v) = &cli.node_name {
        c.node_name = Some(v.clone());
    }
    if !cli.coordinators.is_empty() {
        c.coordinators = cli.coordinators.clone();
    }
    if let Some(v) = &cli.data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = cli.telemetry_interval_ms {
        c.telemetry_interval_ms = v;
    }
    if let Some(v) = cli.gpu_backend {
        c.gpu_backend = v;
    }
    if let Some(v) = &cli.sim_gpus {
        c.sim_gpus = v.clone();
    }
    c.labels.extend(cli.labels.iter().cloned());
    if let Some(v) = &cli.metrics_listen {
        c.metrics_listen = v.clone();
    }
    if let Some(v) = &cli.advertise_address {
        c.advertise_address = Some(v.clone());
    }
    if let Some(v) = &cli.gpu_sharing {
        c.gpu_sharing = v.clone();
    }
    if let Some(v) = &cli.port_range {
        c.port_range = v.clone();
    }
    if let Some(v) = &cli.docker_socket {
        c.docker_socket = v.clone();
    }
    if let Some(v) = cli.docker_gpu {
        c.docker_gpu = v;
    }
    if let Some(v) = &cli.mps_control {
        c.mps_control = v.clone();
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
    if let Some(v) = &cli.log_level {
        c.log_level = v.clone();
    }
    Ok(c)
}
