//! `gantry-agent`: reads its config, then runs until SIGTERM/SIGINT.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use gantry_agent::config::{parse_label, AgentConfig, GpuBackendKind};

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
    /// Local address of /metrics and /healthz ("" disables).
    #[arg(long)]
    metrics_listen: Option<String>,
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
}

const DEFAULT_CONFIG: &str = "/etc/gantry/agent.toml";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = build_config(&cli)?;
    if cli.print_config {
        print!("{}", toml::to_string_pretty(&config).context("encoding the config")?);
        return Ok(());
    }
    init_logging(&config.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async {
        gantry_agent::start::run(config, shutdown_signal()).await.map_err(anyhow::Error::from)
    })
}

fn build_config(cli: &Cli) -> anyhow::Result<AgentConfig> {
    let path = cli.config.clone().or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG);
        default.exists().then_some(default)
    });
    let mut c: AgentConfig = match &path {
        Some(p) => gantry_common::config::load_toml(p)?,
        None => AgentConfig::default(),
    };
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

/// Logs to stderr; under systemd (JOURNAL_STREAM set) without timestamps or
/// colours, since journald adds its own.
fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
