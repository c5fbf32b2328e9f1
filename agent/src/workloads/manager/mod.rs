//! The workload manager: the I/O shell around [`reconcile`].
//!
//! One task owns the allocation records. Every tick (250 ms), and whenever
//! the desired set changes or a runtime operation finishes, it:
//!
//! 1. asks the runtime whether each running allocation still runs;
//! 2. starts due health probes (each on its own task);
//! 3. runs the reconciler and carries out its actions: starts and stops run
//!    on their own tasks and report back over a channel, so a slow image
//!    check or a long grace period never holds up the others;
//! 4. tells the GPU backend what runs (the sim's load follows it), and
//!    starts or stops MPS control daemons;
//! 5. saves the state file when a record changed, and publishes the reports
//!    when one changed.
//!
//! When the agent stops, the manager waits a little for operations under way,
//! saves, and leaves every workload running.
//!
//! This file holds the loop and the reconciler's actions; beside it:
//! `recovery.rs` (after a restart), `start_task.rs` (one start), `gpu_effects.rs`
//! (MIG instances, the backend's view of what runs, MPS daemons),
//! `persistence.rs` (state file, reports), `logs.rs` (log lookup and
//! rotation), `runtimes.rs` (the runtimes by kind).

mod gpu_effects;
mod logs;
mod persistence;
mod recovery;
mod runtimes;
mod start_task;

use logs::LogEntry;
pub use logs::{Logs, LogsError};
pub use runtimes::Runtimes;
use start_task::StartTask;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gantry_common::model::GpuSharing;
use gantry_common::workload::{AllocReport, DesiredAlloc, RuntimeSpec};
use gantry_placement::GpuShare;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::link::ManagerSide;
use super::mps::Mps;
use super::ports::{self, PortRange};
use super::reconcile::{self, Action, AllocRecord, Phase};
use super::state::{PersistedDesired, StateError, StateFile};
use crate::gpu::{Gpus, Running};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::env::{self, GpuDevice, Placement};
use crate::runtime::process::ProcessRuntime;
use crate::runtime::{Handle, Launch, LogRequest, LogStream, Runtime, RuntimeError};

/// How often the manager looks at its workloads.
pub const TICK: Duration = Duration::from_millis(250);
/// How long a stopping agent waits for starts and stops under way.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for one runtime status answer in a tick.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often running process workloads' log sizes are checked.
const LOG_CHECK: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub node: String,
    pub data_dir: PathBuf,
    pub port_range: PortRange,
    pub tick: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{}: {source}", path.display())]
    AllocsDir { path: PathBuf, source: std::io::Error },
}

/// The desired set in force, whether it is a coordinator's (authoritative),
/// and its allocations' positions by id.
type CurrentSet = (Arc<Vec<DesiredAlloc>>, bool, HashMap<String, usize>);

/// What a runtime task reports back.
enum Done {
    Started { id: String, result: Result<(Handle, Vec<String>), String> },
    Stopped { id: String, restart: bool, reason: String, result: Result<(), String> },
    Probed { id: String, result: Result<(), String> },
}

pub struct Manager {
    cfg: ManagerConfig,
    gpus: Gpus,
    runtimes: Runtimes,
    mps: Arc<Mps>,
    link: ManagerSide,
    state: StateFile,
    /// The state file as last written, to write only on change.
    saved: Option<StateFile>,
    /// The desired set in force, whether it is the coordinator's, and its
    /// allocations by id.
    current: Option<CurrentSet>,
    /// Index of the session's set `current` was built from.
    current_index: Option<u64>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// Start and stop tasks under way.
    in_flight: usize,
    probing: BTreeSet<String>,
    logs: Logs,
    next_log_check_ms: u64,
    /// The log check under way on a blocking thread, if any.
    log_check: Option<tokio::task::JoinHandle<()>>,
    /// A coordinator's desired set has arrived since the agent started.
    following: bool,
}

impl Manager {
    /// Loads the state file from `cfg.data_dir`.
    pub fn new(
        cfg: ManagerConfig,
        gpus: Gpus,
        runtimes: Runtimes,
        mps: Arc<Mps>,
        link: ManagerSide,
    ) -> Result<Manager, ManagerError> {
        let state = StateFile::load(&cfg.data_dir)?;
        // Workloads pass through to their own directories; none may list the others.
        let allocs = cfg.data_dir.join("allocs");
        let private = std::fs::create_dir_all(&allocs).and_then(|()| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&allocs, std::fs::Permissions::from_mode(0o711))
        });
        if let Err(source) = private {
            return Err(ManagerError::AllocsDir { path: allocs, source });
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let logs = Logs {
            index: Arc::new(Mutex::new(BTreeMap::new())),
            runtimes: runtimes.clone(),
            allocs_dir: cfg.data_dir.join("allocs"),
        };
        Ok(Manager {
            cfg,
            gpus,
            runtimes,
            mps,
            link,
            saved: Some(state.clone()),
            state,
            done_tx,
            done_rx,
            in_flight: 0,
            probing: BTreeSet::new(),
            logs,
            next_log_check_ms: 0,
            log_check: None,
            following: false,
            current: None,
            current_index: None,
        })
    }

    /// The handle the HTTP listener reads logs through.
    pub fn logs(&self) -> Logs {
        self.logs.clone()
    }

    /// Runs until `shutdown` turns true; workloads keep running afterwards.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.recover().await;
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut session_open = true;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                changed = self.link.desired.changed(), if session_open => {
                    if changed.is_err() {
                        // The session is gone: keep to the last desired set.
                        debug!("desired-set sender dropped");
                        session_open = false;
                    }
                }
                Some(done) = self.done_rx.recv() => self.finish(done),
                _ = shutdown.wait_for(|s| *s) => break,
            }
            self.tick().await;
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        while self.in_flight > 0 {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some(done)) => self.finish(done),
                _ => break,
            }
        }
        self.save();
        info!(allocations = self.state.records.len(), "workload manager stopped; workloads left running");
    }

    /// The desired set in force: the session's when a coordinator has
    /// answered since the agent started (authoritative), else the persisted
    /// one. Rebuilt only when the session published a new set: a node may
    /// hold thousands of allocations.
    fn desired(&mut self) -> (Arc<Vec<DesiredAlloc>>, bool) {
        // The session's set changes exactly when its index (the
        // coordinator's revision of this node) does.
        let published = self.link.desired.borrow().as_ref().map(|s| s.index);
        let fresh = self.current.is_none() || published != self.current_index;
        if fresh {
            let set = self.link.desired.borrow_and_update().clone();
            if let Some(set) = set {
                if !self.following {
                    self.following = true;
                    info!(
                        index = set.index,
                        allocations = set.allocs.len(),
                        "following the coordinator's desired set"
                    );
                }
                let changed = self
                    .state
                    .desired
                    .as_ref()
                    .is_none_or(|p| p.index != set.index || p.allocs != set.allocs);
                if changed {
                    self.state.desired =
                        Some(PersistedDesired { index: set.index, allocs: set.allocs.clone() });
                }
                self.current_index = Some(set.index);
                self.set_current(Arc::new(set.allocs), true);
            } else if self.current.is_none() {
                let persisted = self.state.desired.as_ref().map(|p| p.allocs.clone()).unwrap_or_default();
                self.set_current(Arc::new(persisted), false);
            }
        }
        match &self.current {
            Some((set, authoritative, _)) => (set.clone(), *authoritative),
            None => (Arc::new(Vec::new()), false),
        }
    }

    fn set_current(&mut self, set: Arc<Vec<DesiredAlloc>>, authoritative: bool) {
        let by_id = set.iter().enumerate().map(|(i, d)| (d.alloc.id.clone(), i)).collect();
        self.current = Some((set, authoritative, by_id));
    }

    fn desired_alloc(&self, id: &str) -> Option<DesiredAlloc> {
        let (set, _, by_id) = self.current.as_ref()?;
        by_id.get(id).and_then(|&i| set.get(i)).cloned()
    }

    async fn tick(&mut self) {
        while let Ok(done) = self.done_rx.try_recv() {
            self.finish(done);
        }
        let (desired, authoritative) = self.desired();
        self.observe().await;
        self.schedule_probes(&desired);
        let now = now_ms();
        for action in reconcile::reconcile(&desired, authoritative, &self.state.records, now) {
            self.execute(action);
        }
        self.share_gpus();
        self.rotate_logs(now);
        self.save();
        self.publish(&desired);
    }

    /// Asks the runtime about every running allocation.
    async fn observe(&mut self) {
        let running: Vec<(String, Handle)> = self
            .state
            .records
            .iter()
            .filter(|(_, r)| matches!(r.phase, Phase::Running { .. }))
            .filter_map(|(id, r)| Some((id.clone(), r.handle.clone()?)))
            .collect();
        for (id, handle) in running {
            let runtime = match self.runtimes.for_handle(&handle) {
                Ok(r) => r,
                Err(e) => {
                    debug!(alloc = %id, "{e}");
                    continue;
                }
            };
            let status = tokio::time::timeout(STATUS_TIMEOUT, runtime.status(&handle)).await;
            match status {
                Ok(Ok(crate::runtime::Status::Running)) => {}
                Ok(Ok(crate::runtime::Status::Exited { code, message })) => {
                    info!(alloc = %id, "exited: {message}");
                    if let Some(r) = self.state.records.get_mut(&id) {
                        r.exited(now_ms(), code, message);
                    }
                }
                Ok(Err(e)) => warn!(alloc = %id, "status: {e}"),
                Err(_) => warn!(alloc = %id, "status: no answer from the runtime"),
            }
        }
    }

    fn schedule_probes(&mut self, desired: &[DesiredAlloc]) {
        let now = now_ms();
        for d in desired {
            let Some(check) = &d.spec.health else { continue };
            let id = &d.alloc.id;
            let Some(r) = self.state.records.get(id) else { continue };
            if !r.probe_due(now) || self.probing.contains(id) {
                continue;
            }
            let Some(&port) = r.ports.get(&check.port) else { continue };
            self.probing.insert(id.clone());
            let (tx, id, path, timeout) = (
                self.done_tx.clone(),
                id.clone(),
                check.path.clone(),
                Duration::from_millis(check.timeout_ms.max(1)),
            );
            tokio::spawn(async move {
                let result = super::health::probe(port, &path, timeout).await;
                let _ = tx.send(Done::Probed { id, result });
            });
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Start { id } => {
                let Some(d) = self.desired_alloc(&id) else { return };
                self.start(d);
            }
            Action::Stop { id, restart, reason } => self.stop(&id, restart, reason),
            Action::Retire { id, failed } => {
                if let Some(r) = self.state.records.get_mut(&id) {
                    r.phase = if failed { Phase::Failed } else { Phase::Completed };
                    info!(alloc = %id, "not restarted (restart policy): {}", r.message);
                }
                self.release_gpus(&id);
            }
            Action::Forget { id } => {
                if let Some(r) = self.state.records.remove(&id) {
                    debug!(alloc = %id, "forgotten");
                    if r.runtime == "process" {
                        self.runtimes.process.release(&id);
                    }
                    if let Some(handle @ Handle::Docker { .. }) = r.handle {
                        // The container stayed for its logs; it goes with the record.
                        if let Ok(rt) = self.runtimes.for_handle(&handle) {
                            tokio::spawn(async move {
                                let _ = rt.stop(&handle, Duration::ZERO).await;
                            });
                        }
                    }
                    // Its logs go with it (the id was checked to be a plain name when it started).
                    let dir = self.cfg.data_dir.join("allocs").join(&id);
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            warn!(alloc = %id, "cannot remove {}: {e}", dir.display());
                        }
                    }
                }
            }
        }
    }

    fn start(&mut self, d: DesiredAlloc) {
        let id = d.alloc.id.clone();
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            warn!(alloc = %id, "refusing an allocation id that is not a plain name");
            return;
        }
        let taken: BTreeSet<u16> = self
            .state
            .records
            .iter()
            .filter(|(other, _)| **other != id)
            .flat_map(|(_, r)| r.ports.values().copied())
            .collect();
        let record =
            self.state.records.entry(id.clone()).or_insert_with(|| AllocRecord::new(&d, BTreeMap::new()));
        record.begin_start();
        record.gpus = d.alloc.gpus.clone();
        record.stop_grace_ms = d.spec.stop_grace_ms;
        if d.spec.ports.iter().any(|p| !record.ports.contains_key(&p.name)) {
            match ports::pick(&id, &d.spec.ports, self.cfg.port_range, &taken, ports::is_free_on_host) {
                Ok(p) => record.ports = p,
                Err(e) => {
                    record.start_failed(now_ms(), e.to_string());
                    return;
                }
            }
        }
        let previous = record.handle.clone();
        let host_ports = record.ports.clone();
        info!(alloc = %id, runtime = d.spec.runtime.kind(), target = d.spec.runtime.target(), "starting");
        let task = StartTask {
            d,
            node: self.cfg.node.clone(),
            alloc_dir: self.cfg.data_dir.join("allocs").join(&id),
            host_ports,
            previous,
            gpus: self.gpus.clone(),
            runtimes: self.runtimes.clone(),
            mps: self.mps.clone(),
        };
        self.in_flight += 1;
        let tx = self.done_tx.clone();
        tokio::spawn(async move {
            let result = task.run().await.map_err(|e| e.to_string());
            let _ = tx.send(Done::Started { id, result });
        });
    }

    fn stop(&mut self, id: &str, restart: bool, reason: String) {
        let Some(r) = self.state.records.get_mut(id) else { return };
        let handle = r.handle.clone();
        let grace = Duration::from_millis(r.stop_grace_ms);
        r.phase = Phase::Stopping { restart };
        info!(alloc = %id, "{reason}");
        self.in_flight += 1;
        let (tx, id, runtimes) = (self.done_tx.clone(), id.to_string(), self.runtimes.clone());
        tokio::spawn(async move {
            let result = match &handle {
                None => Ok(()),
                Some(h) => match runtimes.for_handle(h) {
                    Ok(rt) => rt.stop(h, grace).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
            };
            let _ = tx.send(Done::Stopped { id, restart, reason, result });
        });
    }

    fn finish(&mut self, done: Done) {
        let now = now_ms();
        match done {
            Done::Started { id, result } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                let check = self.desired_alloc(&id).and_then(|d| d.spec.health.clone());
                let Some(r) = self.state.records.get_mut(&id) else { return };
                match result {
                    Ok((handle, devices)) => {
                        info!(alloc = %id, ?handle, "running");
                        r.started(now, handle, devices, check.as_ref());
                    }
                    Err(message) => {
                        warn!(alloc = %id, "start failed: {message}");
                        r.handle = None;
                        r.start_failed(now, message);
                    }
                }
            }
            Done::Stopped { id, restart, reason, result } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                let Some(r) = self.state.records.get_mut(&id) else { return };
                match result {
                    Ok(()) => {
                        r.stopped(now, restart, reason);
                        if !restart {
                            r.handle = None;
                            self.release_gpus(&id);
                        }
                    }
                    Err(message) => {
                        warn!(alloc = %id, "stop failed (retrying): {message}");
                        r.phase = Phase::Running { since_ms: now };
                        r.message = format!("stop failed: {message}");
                    }
                }
            }
            Done::Probed { id, result } => {
                self.probing.remove(&id);
                let Some(check) = self.desired_alloc(&id).and_then(|d| d.spec.health.clone()) else { return };
                let Some(r) = self.state.records.get_mut(&id) else { return };
                if let Err(e) = &result {
                    debug!(alloc = %id, "health check failed: {e}");
                }
                r.probed(now, result.is_ok(), &check);
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
