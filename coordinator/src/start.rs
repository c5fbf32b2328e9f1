//! `run`: builds every part of a coordinator and runs them together. Read
//! this function to see the whole daemon.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gantry_common::identity::{Role, ALPN_AGENT, ALPN_API, ALPN_RAFT};
use gantry_common::tls::{self, Identity};
use openraft::{BasicNode, SnapshotPolicy};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::CoordinatorConfig;
use crate::metrics::instruments::Instruments;
use crate::metrics::Metrics;
use crate::peer::client::PeerClient;
use crate::raft::network::PeerNetworkFactory;
use crate::raft::store::open_store_with_cache;
use crate::raft::{election, handoff, rejoin, Raft};
use crate::service::Service;
use crate::telemetry::TelemetryStore;
use crate::{admin, endpoint, leader_loop};

/// How long a leader that is asked to stop waits for its followers to catch up.
const HANDOFF_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("tls.cert: certificate is for {0}; a coordinator needs a coordinator certificate")]
    WrongRole(gantry_common::identity::PeerIdentity),
    #[error("data_dir {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] crate::raft::store::StoreError),
    #[error("listen {addr}: cannot bind the QUIC endpoint: {reason}")]
    Bind { addr: String, reason: String },
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("metrics_listen {addr}: {reason}")]
    Metrics { addr: String, reason: String },
    #[error("raft: {0}")]
    Raft(String),
}

/// Runs a coordinator until `shutdown` completes, then stops every part.
/// `ready` is called once the admin socket is bound and Raft is running
/// (`main` sends systemd READY=1 there). On shutdown a leader first lets its
/// followers catch up ([`handoff::step_down`]), then the endpoint closes.
pub async fn run(
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> Result<(), StartError> {
    config.validate()?;
    let identity = Identity::load(&config.tls)?;
    if identity.peer().role != Role::Coordinator {
        return Err(StartError::WrongRole(identity.peer().clone()));
    }
    let data_dir_error = |e: std::io::Error| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(&config.data_dir).map_err(data_dir_error)?;
    // The Raft log holds every spec, environment values included: the
    // coordinator's user only.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(data_dir_error)?;
    }
    let cache = usize::try_from(config.raft.store_cache_mib << 20).unwrap_or(usize::MAX);
    let store_path = config.data_dir.join("raft.redb");
    let instruments = Instruments::default();
    let (log_store, state_machine) = open_store_with_cache(&store_path, cache)?;
    let (log_store, state_machine) =
        (log_store.instrumented(instruments.clone()), state_machine.instrumented(instruments.clone()));
    let state = state_machine.reader();
    // A handle to write the applied state once Raft stopped (clones share it).
    let machine = state_machine.clone();
    let log = log_store.clone();

    let server_config = tls::server_config(&identity, &[ALPN_RAFT, ALPN_AGENT, ALPN_API])?;
    let bind_error =
        |e: std::io::Error| StartError::Bind { addr: config.listen.to_string(), reason: e.to_string() };
    let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_error)?;
    let endpoint = quinn::Endpoint::new(
        tls::endpoint_config(&identity),
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_error)?;
    let peers = PeerClient::new(endpoint.clone(), &identity)?.with_max_protocol(config.max_protocol_version);

    let raft_config = raft_config(&config)?;
    let raft = Raft::new(
        config.id,
        raft_config,
        PeerNetworkFactory { client: peers.clone() },
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;
    let was_initialized = raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?;
    initialize_if_new(&raft, &config).await?;
    let rejoin_grace = rejoin::grace_for(&raft, was_initialized).await;
    if !rejoin_grace.is_zero() {
        info!(id = config.id, grace = ?rejoin_grace, "restarted into a cluster: waiting for its leader before campaigning");
    }

    let service = Service {
        id: config.id,
        raft: raft.clone(),
        state,
        telemetry: TelemetryStore::new(
            Duration::from_secs(config.node_down_after_secs),
            Duration::from_secs(config.node_failover_grace_secs),
        ),
        peers: peers.clone(),
        scheduler_stats: Default::default(),
        agent_links: Default::default(),
        admission: Default::default(),
        leader_seen: Default::default(),
        log: log.clone(),
        proposer: crate::service::proposer::Proposer::start(
            raft.clone(),
            peers.clone(),
            config.id,
            instruments.commit.clone(),
        ),
        instruments: instruments.clone(),
    };
    let admin_listener = admin::bind(&config.admin_socket)?;
    let metrics_listener = if config.metrics_listen.is_empty() {
        None
    } else {
        let addr = config.metrics_listen.clone();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| StartError::Metrics { addr: addr.clone(), reason: e.to_string() })?;
        Some(listener)
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(endpoint::serve(endpoint.clone(), service.clone(), stop_rx.clone()));
    tasks.spawn(leader_loop::run(service.clone(), stop_rx.clone()));
    tasks.spawn(service.leader_seen.clone().follow(raft.clone(), stop_rx.clone()));
    tasks.spawn(crate::scheduler::applier::run(service.clone(), stop_rx.clone()));
    tasks.spawn(election::run(
        raft.clone(),
        service.peers.clone(),
        log,
        config.id,
        (
            Duration::from_millis(config.raft.election_timeout_min_ms),
            Duration::from_millis(config.raft.election_timeout_max_ms),
        ),
        rejoin_grace,
        stop_rx.clone(),
    ));
    {
        let (service, stop_rx) = (service.clone(), stop_rx.clone());
        let metrics = Metrics::new(&instruments, Some(store_path));
        if let Some(listener) = metrics_listener {
            let (service, metrics, stop_rx) = (service.clone(), metrics.clone(), stop_rx.clone());
            tasks.spawn(async move {
                if let Err(e) = crate::metrics::listener::serve(listener, service, metrics, stop_rx).await {
                    warn!("metrics listener stopped: {e}");
                }
            });
        }
        tasks.spawn(async move {
            if let Err(e) = admin::serve(admin_listener, service, metrics, stop_rx).await {
                warn!("admin socket stopped: {e}");
            }
        });
    }
    info!(
        id = config.id,
        listen = %config.listen,
        advertise = %config.advertise_addr(),
        admin_socket = %config.admin_socket.display(),
        "coordinator running"
    );
    ready();
    tasks.spawn(crate::systemd::follow_raft_status(raft.clone(), config.id, stop_rx.clone()));
    tasks.spawn(crate::systemd::watchdog(raft.clone(), stop_rx.clone()));

    // Raft's core stops by itself only on a fatal error (a storage fault, a
    // broken invariant). A coordinator without it answers nothing useful:
    // exit with the reason, so that systemd restarts it (Restart=on-failure).
    let fatal = tokio::select! {
        () = shutdown => None,
        reason = raft_stopped(&raft) => Some(reason),
    };
    if let Some(reason) = &fatal {
        tracing::error!(id = config.id, "Raft stopped by itself: {reason}; exiting");
    }
    info!(id = config.id, "shutting down");
    gantry_common::systemd::stopping("stopping: handing over leadership if leading");
    // Before the endpoint closes: a leader lets its followers catch up first.
    handoff::step_down(&raft, config.id, HANDOFF_PATIENCE).await;
    let _ = stop_tx.send(true);
    if let Err(e) = raft.shutdown().await {
        warn!("raft shutdown: {e}");
    }
    // So that the next start has nothing to replay.
    if let Err(e) = machine.flush().await {
        warn!("writing the applied state: {e}");
    }
    while tasks.join_next().await.is_some() {}
    // Let peers see our close frames, without waiting out their idle timeouts.
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    let _ = std::fs::remove_file(&config.admin_socket);
    info!(id = config.id, "stopped");
    match fatal {
        Some(reason) => Err(StartError::Raft(format!("Raft stopped by itself: {reason}"))),
        None => Ok(()),
    }
}

/// Resolves when Raft's core has stopped (its metrics say so), with why.
async fn raft_stopped(raft: &Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(e) = &metrics.borrow_and_update().running_state {
            return e.to_string();
        }
        if metrics.changed().await.is_err() {
            return "its metrics channel closed".into();
        }
    }
}

fn raft_config(config: &CoordinatorConfig) -> Result<Arc<openraft::Config>, StartError> {
    let r = &config.raft;
    let c = openraft::Config {
        cluster_name: "gantry".to_string(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_after_entries),
        max_in_snapshot_log_to_keep: 1000,
        install_snapshot_timeout: 2000,
        // Elections are run by `election::run`: a fresh timeout per campaign.
        enable_elect: false,
        ..Default::default()
    };
    Ok(Arc::new(c.validate().map_err(|e| StartError::Raft(e.to_string()))?))
}

/// Forms a new cluster from `initial_members` when this store has never been
/// part of one. Every initial member may do this: they write the same first
/// membership entry, and openraft refuses it once a log exists.
async fn initialize_if_new(raft: &Raft, config: &CoordinatorConfig) -> Result<(), StartError> {
    if config.initial_members.is_empty() {
        info!(id = config.id, "no initial members configured; waiting to be added to a cluster");
        return Ok(());
    }
    if raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))? {
        return Ok(());
    }
    let members: BTreeMap<u64, BasicNode> =
        config.initial_members.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect();
    info!(id = config.id, members = ?config.initial_members, "forming a new cluster");
    if let Err(e) = raft.initialize(members).await {
        // Another member's entry reached us first: that's the cluster we wanted.
        info!("initialize: {e}");
    }
    Ok(())
}
