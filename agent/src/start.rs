//! `run`: builds the agent's parts and runs them together: the GPU backend
//! (shared by the sampler and the workload manager), the workload manager and
//! its runtimes, the local HTTP listener, and the session, linked to the
//! manager by [`crate::workloads::link`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gantry_common::gpu_spec::parse_gpu_spec;
use gantry_common::identity::Role;
use gantry_common::model::{GpuSharing, MigMode};
use gantry_common::tls::{self, Identity};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{AgentConfig, GpuBackendKind};
use crate::gpu::nvml::NvmlBackend;
use crate::gpu::sharing::{self, SharingError};
use crate::gpu::sim::SimBackend;
use crate::gpu::{GpuBackend, GpuError, Gpus};
use crate::host::HostSampler;
use crate::runtime::cgroup::Layout;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::{ProcessRuntime, ProcessSettings};
use crate::sampler::{AgentStatus, Sampler};
use crate::session::Session;
use crate::workloads::link::link;
use crate::workloads::manager::{Manager, ManagerConfig, ManagerError, Runtimes, TICK};
use crate::workloads::mps::{Mps, MpsControl};

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
    #[error(transparent)]
    Sharing(#[from] SharingError),
    #[error("gpu_sharing: {0}")]
    SimMig(GpuError),
    #[error("data_dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Workloads(#[from] ManagerError),
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    #[error("metrics_listen {addr}: {reason}")]
    Metrics { addr: String, reason: String },
}

/// This host's name, for `advertise_address`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

/// Runs the agent until `shutdown` completes. `telemetry_interval` starts at
/// `config.telemetry_interval_ms` and may change while running (SIGHUP).
///
/// Under systemd, READY=1 goes out after the first registration attempt,
/// whether it registered or will retry (`session`): an agent whose
/// coordinators are down is still doing its job, which includes leaving
/// running workloads alone. On shutdown the in-flight report finishes, the
/// workload manager saves its state, and no workload is stopped.
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
    let sharing_config = config.gpu_sharing_by_index()?;
    let backend: Box<dyn GpuBackend> = match config.gpu_backend {
        GpuBackendKind::Nvml => Box::new(NvmlBackend::open()?),
        GpuBackendKind::Sim => {
            let groups = parse_gpu_spec(&config.sim_gpus)
                .map_err(|reason| crate::config::ConfigError::Invalid { field: "sim_gpus", reason })?;
            let mut sim = SimBackend::new(&node, &groups);
            // On the sim, `mig` plays the operator who enabled MIG mode.
            for (&index, _) in sharing_config.iter().filter(|(_, s)| **s == GpuSharing::Mig) {
                if index < sim.gpu_count() {
                    sim.set_mig_mode(index, MigMode::Enabled).map_err(StartError::SimMig)?;
                }
            }
            Box::new(sim)
        }
    };
    let sharing = sharing::resolve(&backend.inventory()?, &sharing_config)?;
    let gpus = Gpus::new(backend, sharing);
    let status = AgentStatus::default();
    let mut sampler = Sampler::new(gpus.clone(), HostSampler::new(), node.clone(), status.clone());
    let advertise = config.advertise_address.clone().unwrap_or_else(host_name);
    sampler.set_endpoints(advertise.clone(), config.metrics_listen.clone());
    let gpu_count = sampler.node_info(config.labels.clone()).await?.gpus.len();
    info!(%node, backend = ?config.gpu_backend, gpus = gpu_count, %advertise, coordinators = ?config.coordinators, "agent starting");

    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?;
    // Root's, and not listable: the state file in it is 0600. Workload users
    // may only pass through, to their own working directory and the MPS pipes.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?;
    }
    let docker = if config.docker_socket.is_empty() {
        None
    } else {
        match DockerRuntime::connect(&config.docker_socket, config.docker_gpu()).await {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                warn!("docker runtime off: {e}; docker workloads will fail until the agent restarts");
                None
            }
        }
    };
    let cgroups = Layout::host();
    if let Layout::None { why } = &cgroups {
        warn!("process workloads run without CPU, memory and process limits: {why}");
    }
    if let Some(range) = config.workload_uids()? {
        let files = ["/etc/subuid", "/etc/subgid", "/etc/passwd"]
            .map(|f| (f, std::fs::read_to_string(f).unwrap_or_default()));
        let texts: Vec<(&str, &str)> = files.iter().map(|(f, t)| (*f, t.as_str())).collect();
        let others = crate::runtime::uids::others_in_range(&range, &texts);
        if !others.is_empty() {
            warn!(
                "workload_uids {} is also used by {}: workloads could reach what those ids own; choose another range",
                config.workload_uids,
                others.join(", ")
            );
        }
    }
    let process = ProcessRuntime::new(ProcessSettings {
        user: config.workload_user.clone(),
        users_allowed: config.workload_users_allowed.clone(),
        uids: config.workload_uids()?,
        cgroups,
        log_max_bytes: config.log_max_mib << 20,
    });
    let runtimes = Runtimes { process: Arc::new(process), docker };
    let mps_control = match config.gpu_backend {
        GpuBackendKind::Sim => MpsControl::Modelled(gpus.clone()),
        GpuBackendKind::Nvml => MpsControl::Program(config.mps_control.clone()),
    };
    let mps = Arc::new(Mps::new(mps_control, config.data_dir.join("mps")));
    let (session_side, manager_side) = link();
    let manager = Manager::new(
        ManagerConfig {
            node: node.clone(),
            data_dir: config.data_dir.clone(),
            port_range: config.port_range()?,
            tick: TICK,
        },
        gpus,
        runtimes,
        mps,
        manager_side,
    )?;
    let logs = manager.logs();

    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics_task = if config.metrics_listen.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&config.metrics_listen).await.map_err(|e| {
            StartError::Metrics { addr: config.metrics_listen.clone(), reason: e.to_string() }
        })?;
        if let Some(warning) = listener.local_addr().ok().and_then(|a| crate::metrics::exposure_warning(&a)) {
            warn!("{warning}");
        }
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
        session_side,
        logs,
    )?;
    // The agent has no inner state that can fail on its own: a responsive runtime is healthy.
    let mut watchdog_stop = stop_rx.clone();
    let watchdog = tokio::spawn(gantry_common::systemd::watchdog(|| true, async move {
        let _ = watchdog_stop.wait_for(|stop| *stop).await;
    }));
    let workloads = tokio::spawn(manager.run(stop_rx.clone()));
    let reporter = tokio::spawn(async move { session.run(&mut sampler, stop_rx).await });

    shutdown.await;
    info!(%node, "stopping; running workloads are left alone");
    gantry_common::systemd::stopping("stopping: finishing the in-flight report");
    let _ = stop_tx.send(true);
    let _ = watchdog.await;
    let _ = reporter.await;
    let _ = workloads.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    info!(%node, "stopped");
    Ok(())
}
