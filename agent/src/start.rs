//! `run`: builds the agent's parts and runs them together.

use std::future::Future;
use std::time::Duration;

use gantry_common::gpu_spec::parse_gpu_spec;
use gantry_common::identity::Role;
use gantry_common::tls::{self, Identity};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{AgentConfig, GpuBackendKind};
use crate::gpu::nvml::NvmlBackend;
use crate::gpu::sim::SimBackend;
use crate::gpu::{GpuBackend, GpuError};
use crate::host::HostSampler;
use crate::sampler::{AgentStatus, Sampler};
use crate::session::Session;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("tls.cert: certificate is for {0}; an agent needs an agent certificate")]
    WrongRole(gantry_common::identity::PeerIdentity),
    #[error("node_name: {configured:?} differs from the name in the agent certificate ({cert:?})")]
    NameMismatch { configured: String, cert: String },
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("QUIC endpoint: {0}")]
    Endpoint(String),
    #[error("metrics_listen {addr}: {reason}")]
    Metrics { addr: String, reason: String },
}

/// Runs the agent until `shutdown` completes. `telemetry_interval` starts at
/// `config.telemetry_interval_ms` and may change while running (SIGHUP).
///
/// Under systemd, READY=1 goes out after the first registration attempt,
/// whether it registered or will retry (`session`): an agent whose
/// coordinators are down is still doing its job, which includes leaving
/// running workloads alone. On shutdown the in-flight report finishes and
/// nothing touches workloads.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
    telemetry_interval: watch::Receiver<Duration>,
) -> Result<(), StartError> {
    config.validate()?;
    let identity = Identity::load(&config.tls)?;
    if identity.peer().role != Role::Agent {
        return Err(StartError::WrongRole(identity.peer().clone()));
    }
    let node = identity.peer().name.clone();
    if let Some(configured) = &config.node_name {
        if *configured != node {
            return Err(StartError::NameMismatch { configured: configured.clone(), cert: node });
        }
    }
    let backend: Box<dyn GpuBackend> = match config.gpu_backend {
        GpuBackendKind::Nvml => Box::new(NvmlBackend::open()?),
        GpuBackendKind::Sim => {
            let groups = parse_gpu_spec(&config.sim_gpus)
                .map_err(|reason| crate::config::ConfigError::Invalid { field: "sim_gpus", reason })?;
            Box::new(SimBackend::new(&node, &groups))
        }
    };
    let status = AgentStatus::default();
    let mut sampler = Sampler::new(backend, HostSampler::new(), node.clone(), status.clone());
    let gpus = sampler.node_info(config.labels.clone())?.gpus.len();
    info!(%node, backend = ?config.gpu_backend, gpus, coordinators = ?config.coordinators, "agent starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics_task = if config.metrics_listen.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&config.metrics_listen).await.map_err(|e| {
            StartError::Metrics { addr: config.metrics_listen.clone(), reason: e.to_string() }
        })?;
        let (status, stop_rx) = (status.clone(), stop_rx.clone());
        Some(tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, status, stop_rx).await {
                warn!("metrics endpoint stopped: {e}");
            }
        }))
    };
    let session = Session::new(
        &identity,
        config.coordinators.clone(),
        config.labels.clone(),
        telemetry_interval,
        status,
    )?;
    // The agent has no inner state that can fail on its own: a responsive runtime is healthy.
    let mut watchdog_stop = stop_rx.clone();
    let watchdog = tokio::spawn(gantry_common::systemd::watchdog(|| true, async move {
        let _ = watchdog_stop.wait_for(|stop| *stop).await;
    }));
    let reporter = tokio::spawn(async move { session.run(&mut sampler, stop_rx).await });

    shutdown.await;
    info!(%node, "stopping; running workloads are left alone");
    gantry_common::systemd::stopping("stopping: finishing the in-flight report");
    let _ = stop_tx.send(true);
    let _ = watchdog.await;
    let _ = reporter.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    info!(%node, "stopped");
    Ok(())
}
