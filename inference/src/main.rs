//! `gantry-infer` command line; see the library docs for the API.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use gantry_infer::config::resolve_listen;
use gantry_infer::generate::{generate, DEFAULT_SEED, TINY_MLP};
use gantry_infer::gpu_env::GpuEnv;
use gantry_infer::http::{serve, AppState};
use gantry_infer::model::{format_checksum, Model};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Small inference server (tiny MLP) for Gantry's end-to-end tests.
#[derive(Debug, Parser)]
#[command(name = "gantry-infer", version)]
struct Cli {
    /// Address to listen on, as an IP literal and port. Without it: 0.0.0.0 and
    /// $GANTRY_PORT_HTTP, else $PORT, else 8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Model file to serve instead of the one built into the binary.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,

    /// Load and validate the model, print a summary and exit.
    #[arg(long, conflicts_with = "generate_model")]
    check_model: bool,

    /// Write the tiny-MLP model generated from --seed to PATH and exit.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["listen", "model"])]
    generate_model: Option<PathBuf>,

    /// Seed for --generate-model; the committed file uses the default.
    #[arg(long, default_value_t = DEFAULT_SEED, requires = "generate_model")]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    if let Some(path) = &cli.generate_model {
        let model = generate(TINY_MLP, cli.seed)?;
        std::fs::write(path, model.to_json()).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} ({})", path.display(), format_checksum(model.checksum()));
        return Ok(());
    }

    let (model, source) = match &cli.model {
        Some(path) => (Model::load(path)?, path.display().to_string()),
        None => (Model::embedded().context("the built-in model")?, "built-in".to_owned()),
    };
    if cli.check_model {
        println!(
            "{}: {} {}x{}x{} {}",
            source,
            model.name(),
            model.input_dim(),
            model.hidden_dim(),
            model.output_dim(),
            format_checksum(model.checksum())
        );
        return Ok(());
    }

    let addr = resolve_listen(
        cli.listen,
        std::env::var("GANTRY_PORT_HTTP").ok().as_deref(),
        std::env::var("PORT").ok().as_deref(),
    )?;
    let gpu = GpuEnv::from_process();
    tracing::info!(
        model = model.name(),
        source,
        checksum = format_checksum(model.checksum()),
        gpu = %serde_json::to_string(&gpu)?,
        "model loaded"
    );
    let shutdown = shutdown_signal();
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    // Tests and scripts read this line to learn the port when binding port 0.
    tracing::info!("listening on {}", listener.local_addr()?);
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    serve(listener, Arc::new(AppState { model, gpu, started_unix_ms }), shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Installs the SIGTERM (what `docker stop` sends) and SIGINT handlers now,
/// before the server answers anything, and returns a future that completes
/// when either arrives. (Installing them lazily, on first poll, left a window
/// in which a signal killed the process instead of stopping it.) If a handler
/// cannot be installed, that signal is simply never awaited: as PID 1 in a
/// container an unhandled SIGTERM is ignored, and `docker stop` falls back to
/// SIGKILL after its grace period.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(error = %err, "cannot handle {name}");
            None
        }
    };
    let term = install(SignalKind::terminate(), "SIGTERM");
    let int = install(SignalKind::interrupt(), "SIGINT");
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>, name: &'static str| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                    tracing::info!("{name} received, shutting down");
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term, "SIGTERM") => {}
            () = wait(int, "SIGINT") => {}
        }
    }
}
