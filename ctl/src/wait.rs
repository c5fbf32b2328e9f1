//! Following a rollout until its replicas are healthy, or a stop until its
//! replicas released what they held.
//!
//! The judges are pure: each poll's views (and `now`) go in, a [`Step`] comes
//! out. The loops around them ([`follow_rollout`], [`follow_stop`]) only poll
//! the admin socket and draw the progress line.
//!
//! ```text
//!   poll /v1/workloads/{name} + /v1/allocs?workload= ──▶ Rollout::observe(now, ..) ──▶ Waiting(Progress)
//!                                                                                 ├─▶ Done(Rollout times)
//!                                                                                 └─▶ Failed(WaitFailure)
//! ```

use std::fmt;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use gantry_common::api::{AllocView, WorkloadDetail, WorkloadView};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::admin_client::{encode, AdminClient};

/// How often the loops poll the admin socket.
pub const POLL: Duration = Duration::from_millis(250);

/// How often `run --wait` polls, by how long it has waited: often at first,
/// when a small rollout finishes in well under a second (so the times it
/// reports are not rounded up to the poll), then at [`POLL`].
pub fn rollout_poll(waited: Duration) -> Duration {
    if waited < Duration::from_secs(2) {
        Duration::from_millis(20)
    } else if waited < Duration::from_secs(10) {
        Duration::from_millis(100)
    } else {
        POLL
    }
}

/// How long a workload may report a pending reason before waiting stops. A
/// rolling replacement can leave a replica pending for a moment while the
/// replica it replaces gives its GPU back; a reason that persists means the
/// cluster has no room.
pub const PENDING_GRACE: Duration = Duration::from_secs(2);

/// How long a replica without a health check must keep running (no
/// restart in between) before `run --wait` counts it as up.
pub const DEFAULT_STABLE: Duration = Duration::from_secs(5);

/// Counts of one workload version's replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub replicas: u32,
    /// Replicas with an allocation (on some node).
    pub placed: u32,
    pub running: u32,
    /// Running and ready: healthy (with a health check), or running for the
    /// stable period without a restart (without one); or finished with exit
    /// code 0 under a restart policy that keeps it so.
    pub healthy: u32,
}

impl Progress {
    /// Counts the allocations of `version` that are meant to run; `ready`
    /// says whether a running one is up.
    pub fn of(
        version: u64,
        replicas: u32,
        allocs: &[AllocView],
        ready: impl Fn(&AllocView) -> bool,
    ) -> Progress {
        let mut p = Progress { replicas, ..Progress::default() };
        for a in allocs.iter().filter(|a| a.version == version && a.desired == "run") {
            if matches!(a.actual.as_str(), "lost" | "stopped" | "failed") {
                continue;
            }
            p.placed += 1;
            if a.actual == "completed" {
                p.healthy += 1;
            } else if a.actual == "running" {
                p.running += 1;
                if ready(a) {
                    p.healthy += 1;
                }
            }
        }
        // A replacement can exist next to the allocation it replaces for a
        // moment; never show more than the replicas asked for.
        p.placed = p.placed.min(replicas);
        p.running = p.running.min(replicas);
        p.healthy = p.healthy.min(replicas);
        p
    }

    /// `llm v3: 2/4 placed, 1/4 running, 1/4 healthy`
    pub fn line(&self, workload: &str, version: u64) -> String {
        let n = self.replicas;
        format!(
            "{workload} v{version}: {}/{n} placed, {}/{n} running, {}/{n} healthy",
            self.placed, self.running, self.healthy
        )
    }
}

/// Why following a rollout stopped before it was done.
#[derive(Clone, Debug, PartialEq)]
pub enum WaitFailure {
    /// The scheduler cannot place every replica.
    Pending {
        reason: String,
        progress: Progress,
    },
    /// A replica of this version failed and will not be restarted.
    AllocFailed {
        id: String,
        node: String,
        message: String,
    },
    /// A replica of this version could not start (image, command, port, GPU).
    StartFailed {
        id: String,
        node: String,
        message: String,
    },
    /// A replica of this version keeps failing without a stable run.
    CrashLoop {
        id: String,
        node: String,
        failures: u32,
        message: String,
    },
    /// Someone submitted a newer version while we waited.
    Superseded {
        version: u64,
    },
    TimedOut {
        after: Duration,
        progress: Progress,
    },
}

impl fmt::Display for WaitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitFailure::Pending { reason, progress } => write!(
                f,
                "{}/{} replicas cannot be placed: {reason}. The workload stays pending and is retried \
                 when capacity appears (free GPUs, undrain a node, add a node, or lower replicas); \
                 `gantryctl workloads` shows it",
                progress.replicas.saturating_sub(progress.placed),
                progress.replicas
            ),
            WaitFailure::AllocFailed { id, node, message } => {
                let message = if message.is_empty() { "no message" } else { message.as_str() };
                write!(f, "replica {id} on {node} failed: {message}. See `gantryctl logs {id}`")
            }
            WaitFailure::StartFailed { id, node, message } => {
                let message = if message.is_empty() { "no message" } else { message.as_str() };
                write!(
                    f,
                    "replica {id} on {node} cannot start: {message}. The agent retries with backoff; \
                     fix the spec and run it again, or `gantryctl stop` it"
                )
            }
            WaitFailure::CrashLoop { id, node, failures, message } => {
                let message = if message.is_empty() { "no message" } else { message.as_str() };
                write!(
                    f,
                    "replica {id} on {node} is crash-looping ({failures} failures in a row, last: \
                     {message}). See `gantryctl logs {id}`"
                )
            }
            WaitFailure::Superseded { version } => write!(
                f,
                "the workload was updated to version {version} while waiting (another submit); \
                 `gantryctl workloads` shows its state"
            ),
            WaitFailure::TimedOut { after, progress } => write!(
                f,
                "not healthy after {}s ({}/{} placed, {}/{} running, {}/{} healthy); the rollout goes on. \
                 `gantryctl allocs` shows each replica, `gantryctl logs ID` its output",
                after.as_secs(),
                progress.placed,
                progress.replicas,
                progress.running,
                progress.replicas,
                progress.healthy,
                progress.replicas
            ),
        }
    }
}

/// What one observation of a rollout concludes.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Waiting(Progress),
    Done { placed_after: Duration, healthy_after: Duration },
    Failed(WaitFailure),
}

/// One rollout being followed: a workload version and when following began.
#[derive(Clone, Debug)]
pub struct Rollout {
    pub workload: String,
    pub version: u64,
    /// The spec has a health check (else a replica counts once it has run
    /// for `stable` without a restart).
    pub needs_health: bool,
    timeout: Duration,
    stable: Duration,
    started: Instant,
    placed_after: Option<Duration>,
    pending_since: Option<Instant>,
    /// Running replicas: since when, and their restart count then.
    running_since: std::collections::BTreeMap<String, (Instant, u32)>,
}

impl Rollout {
    pub fn new(
        workload: &str,
        version: u64,
        needs_health: bool,
        timeout: Duration,
        stable: Duration,
        started: Instant,
    ) -> Self {
        Rollout {
            workload: workload.to_string(),
            version,
            needs_health,
            timeout,
            stable,
            started,
            placed_after: None,
            pending_since: None,
            running_since: Default::default(),
        }
    }

    /// Judges one poll: the workload's view and its allocations, at `now`.
    pub fn observe(&mut self, now: Instant, view: &WorkloadView, allocs: &[AllocView]) -> Step {
        let elapsed = now.saturating_duration_since(self.started);
        if view.version > self.version {
            return Step::Failed(WaitFailure::Superseded { version: view.version });
        }
        let mine = |a: &&AllocView| a.version == self.version && a.desired == "run";
        if let Some(a) = allocs.iter().filter(mine).find(|a| a.actual == "failed") {
            return Step::Failed(WaitFailure::AllocFailed {
                id: a.id.clone(),
                node: a.node.clone(),
                message: a.message.clone(),
            });
        }
        if let Some(a) = allocs.iter().filter(mine).find(|a| a.start_failed && a.actual != "running") {
            return Step::Failed(WaitFailure::StartFailed {
                id: a.id.clone(),
                node: a.node.clone(),
                message: a.message.clone(),
            });
        }
        if let Some(a) = allocs.iter().filter(mine).find(|a| a.crash_looping) {
            return Step::Failed(WaitFailure::CrashLoop {
                id: a.id.clone(),
                node: a.node.clone(),
                failures: a.failures,
                message: a.message.clone(),
            });
        }
        let mut seen = std::collections::BTreeMap::new();
        for a in allocs.iter().filter(mine).filter(|a| a.actual == "running") {
            let since = match self.running_since.get(&a.id) {
                Some(&(t, restarts)) if restarts == a.restarts => t,
                _ => now,
            };
            seen.insert(a.id.clone(), (since, a.restarts));
        }
        self.running_since = seen;
        let ready = |a: &AllocView| {
            if self.needs_health {
                a.health == "healthy"
            } else {
                self.running_since
                    .get(&a.id)
                    .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= self.stable)
            }
        };
        let progress = Progress::of(self.version, view.replicas, allocs, ready);
        if progress.placed >= progress.replicas && self.placed_after.is_none() {
            self.placed_after = Some(elapsed);
        }
        if progress.healthy >= progress.replicas {
            return Step::Done { placed_after: self.placed_after.unwrap_or(elapsed), healthy_after: elapsed };
        }
        match &view.pending_reason {
            Some(reason) => {
                let since = *self.pending_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= PENDING_GRACE {
                    return Step::Failed(WaitFailure::Pending { reason: reason.clone(), progress });
                }
            }
            None => self.pending_since = None,
        }
        if elapsed > self.timeout {
            return Step::Failed(WaitFailure::TimedOut { after: self.timeout, progress });
        }
        Step::Waiting(progress)
    }
}

/// The result of a rollout followed to the end.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutDone {
    pub workload: String,
    pub version: u64,
    pub placed_s: f64,
    pub healthy_s: f64,
    pub allocs: Vec<AllocView>,
}

/// Polls until `rollout` is done or fails, drawing progress on stderr.
/// Errors of the admin socket end the wait too (after a few retries, so a
/// leader election in between does not).
pub async fn follow_rollout(client: &AdminClient, mut rollout: Rollout) -> anyhow::Result<RolloutDone> {
    let mut status = StatusLine::new();
    let name = encode(&rollout.workload);
    let mut errors = 0;
    let started = Instant::now();
    loop {
        let polled = async {
            let detail: WorkloadDetail = client.get(&format!("/v1/workloads/{name}")).await?;
            let allocs: Vec<AllocView> = client.get(&format!("/v1/allocs?workload={name}")).await?;
            Ok::<_, anyhow::Error>((detail.view, allocs))
        }
        .await;
        let (view, allocs) = match polled {
            Ok(v) => {
                errors = 0;
                v
            }
            Err(e) => {
                errors += 1;
                if errors >= 5 {
                    status.finish();
                    return Err(e.context(format!("following workload {}", rollout.workload)));
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        match rollout.observe(Instant::now(), &view, &allocs) {
            Step::Waiting(p) => status.set(p.line(&rollout.workload, rollout.version)),
            Step::Done { placed_after, healthy_after } => {
                status.finish();
                let mut allocs: Vec<AllocView> = allocs
                    .into_iter()
                    .filter(|a| {
                        a.version == rollout.version
                            && a.desired == "run"
                            && matches!(a.actual.as_str(), "running" | "completed")
                    })
                    .collect();
                allocs.sort_by_key(|a| a.replica);
                return Ok(RolloutDone {
                    workload: rollout.workload,
                    version: rollout.version,
                    placed_s: round_ms(placed_after),
                    healthy_s: round_ms(healthy_after),
                    allocs,
                });
            }
            Step::Failed(f) => {
                status.finish();
                anyhow::bail!("workload {} v{}: {f}", rollout.workload, rollout.version);
            }
        }
        tokio::time::sleep(rollout_poll(started.elapsed())).await;
    }
}

/// Allocations of `workload` that still hold resources on their node.
pub fn holding<'a>(allocs: &'a [AllocView], workload: &str) -> Vec<&'a AllocView> {
    allocs.iter().filter(|a| a.workload == workload && !is_terminal(&a.actual)).collect()
}

/// Whether an allocation's actual state means it holds nothing any more.
pub fn is_terminal(actual: &str) -> bool {
    matches!(actual, "stopped" | "lost" | "failed" | "completed")
}

/// Polls until no allocation of `workload` holds resources, or the workload
/// is gone; returns how long that took.
pub async fn follow_stop(
    client: &AdminClient,
    workload: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let mut status = StatusLine::new();
    let started = Instant::now();
    let name = encode(workload);
    loop {
        let workloads: Vec<WorkloadView> = client.get("/v1/workloads").await?;
        let allocs: Vec<AllocView> = client.get(&format!("/v1/allocs?workload={name}")).await?;
        let left = holding(&allocs, workload);
        if left.is_empty() || !workloads.iter().any(|w| w.name == workload) {
            status.finish();
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            status.finish();
            let ids: Vec<&str> = left.iter().map(|a| a.id.as_str()).collect();
            anyhow::bail!(
                "{workload}: {} replicas still stopping after {}s ({}); `gantryctl allocs {workload}` shows them",
                left.len(),
                timeout.as_secs(),
                ids.join(", ")
            );
        }
        status.set(format!("{workload}: {} replicas stopping", left.len()));
        tokio::time::sleep(POLL).await;
    }
}

/// Seconds with millisecond precision, for people and JSON.
pub fn round_ms(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

/// The live progress line on stderr: a spinner on a terminal; elsewhere
/// (logs, CI) each new line once.
pub struct StatusLine {
    bar: Option<ProgressBar>,
    last: String,
}

impl StatusLine {
    pub fn new() -> StatusLine {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        StatusLine { bar, last: String::new() }
    }

    pub fn set(&mut self, line: String) {
        if self.last == line {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(line.clone()),
            None => eprintln!("  {line}"),
        }
        self.last = line;
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub fn alloc(id: &str, version: u64, desired: &str, actual: &str, health: &str) -> AllocView {
        // `WORKLOAD.REPLICA.SERIAL`, where the workload's name may hold dots.
        let mut parts = id.rsplitn(3, '.');
        let _serial = parts.next();
        let replica = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
        let workload = parts.next().unwrap_or(id);
        AllocView {
            id: id.into(),
            workload: workload.into(),
            replica,
            version,
            node: "node-1".into(),
            gpus: vec!["GPU 0".into()],
            devices: vec![],
            desired: desired.into(),
            actual: actual.into(),
            health: health.into(),
            restarts: 0,
            message: String::new(),
            ports: Default::default(),
            endpoint: (actual == "running").then(|| "127.0.0.1:31000".to_string()),
            agent_http: "127.0.0.1:9410".into(),
            exit_code: None,
            failures: 0,
            start_failed: false,
            crash_looping: false,
        }
    }

    pub fn view(version: u64, replicas: u32, pending_reason: Option<&str>) -> WorkloadView {
        WorkloadView {
            name: "llm".into(),
            version,
            runtime: "process".into(),
            target: "/bin/gantry-infer".into(),
            gpu: "1 free exclusive GPU(s)".into(),
            replicas,
            running: 0,
            healthy: 0,
            pending: 0,
            status: "deploying".into(),
            pending_reason: pending_reason.map(str::to_string),
            reason: pending_reason.map(str::to_string),
            completed: 0,
            failed: 0,
        }
    }

    #[test]
    fn progress_counts_only_the_current_version_meant_to_run() {
        let allocs = vec![
            alloc("llm.0.5", 3, "run", "running", "healthy"),
            alloc("llm.1.6", 3, "run", "running", "unhealthy"),
            alloc("llm.2.7", 3, "run", "starting", "unknown"),
            alloc("llm.3.8", 3, "run", "lost", "unknown"),
            alloc("llm.0.1", 2, "stop", "running", "healthy"),
            alloc("llm.1.2", 2, "run", "running", "healthy"),
        ];
        let p = Progress::of(3, 4, &allocs, |a| a.health == "healthy");
        assert_eq!(p, Progress { replicas: 4, placed: 3, running: 2, healthy: 1 });
        assert_eq!(p.line("llm", 3), "llm v3: 3/4 placed, 2/4 running, 1/4 healthy");
    }

    #[test]
    fn without_a_health_check_running_with_unknown_health_counts() {
        let allocs = vec![alloc("w.0.1", 1, "run", "running", "unknown")];
        assert_eq!(Progress::of(1, 1, &allocs, |_| true).healthy, 1);
        assert_eq!(Progress::of(1, 1, &allocs, |a| a.health == "healthy").healthy, 0);
    }

    #[test]
    fn rollout_records_placed_then_healthy_times() {
        let t0 = Instant::now();
        let mut r = Rollout::new("llm", 3, true, Duration::from_secs(60), DEFAULT_STABLE, t0);
        let v = view(3, 2, None);
        let step = r.observe(
            t0 + Duration::from_millis(300),
            &v,
            &[alloc("llm.0.1", 3, "run", "pending", "unknown")],
        );
        assert_eq!(step, Step::Waiting(Progress { replicas: 2, placed: 1, running: 0, healthy: 0 }));
        let placed = [
            alloc("llm.0.1", 3, "run", "starting", "unknown"),
            alloc("llm.1.2", 3, "run", "pending", "unknown"),
        ];
        assert!(matches!(r.observe(t0 + Duration::from_secs(1), &v, &placed), Step::Waiting(_)));
        let healthy = [
            alloc("llm.0.1", 3, "run", "running", "healthy"),
            alloc("llm.1.2", 3, "run", "running", "healthy"),
        ];
        assert_eq!(
            r.observe(t0 + Duration::from_secs(4), &v, &healthy),
            Step::Done { placed_after: Duration::from_secs(1), healthy_after: Duration::from_secs(4) }
        );
    }

    #[test]
    fn a_failed_replica_of_this_version_ends_the_wait() {
        let t0 = Instant::now();
        let mut r = Rollout::new("llm", 3, true, Duration::from_secs(60), DEFAULT_STABLE, t0);
        let mut failed = alloc("llm.1.2", 3, "run", "failed", "unknown");
        failed.message = "exec: no such file".into();
        // A failed replica of an older version, or one being stopped, does not count.
        let old = alloc("llm.1.1", 2, "run", "failed", "unknown");
        let stopping = alloc("llm.0.3", 3, "stop", "failed", "unknown");
        assert!(matches!(
            r.observe(t0, &view(3, 2, None), &[old.clone(), stopping.clone()]),
            Step::Waiting(_)
        ));
        let step = r.observe(t0, &view(3, 2, None), &[old, stopping, failed]);
        let Step::Failed(f) = step else { panic!("{step:?}") };
        assert_eq!(
            f,
            WaitFailure::AllocFailed {
                id: "llm.1.2".into(),
                node: "node-1".into(),
                message: "exec: no such file".into()
            }
        );
        assert!(f.to_string().contains("gantryctl logs llm.1.2"), "{f}");
    }

    #[test]
    fn a_pending_reason_fails_only_once_it_persists() {
        let t0 = Instant::now();
        let mut r = Rollout::new("llm", 1, true, Duration::from_secs(60), DEFAULT_STABLE, t0);
        let pending = view(1, 2, Some("no node has 1 free exclusive GPU(s) of model H100-80GB"));
        assert!(matches!(r.observe(t0, &pending, &[]), Step::Waiting(_)));
        // Cleared in between: the grace starts again.
        assert!(matches!(r.observe(t0 + Duration::from_secs(1), &view(1, 2, None), &[]), Step::Waiting(_)));
        assert!(matches!(r.observe(t0 + Duration::from_secs(2), &pending, &[]), Step::Waiting(_)));
        let step = r.observe(t0 + Duration::from_secs(2) + PENDING_GRACE, &pending, &[]);
        let Step::Failed(f @ WaitFailure::Pending { .. }) = step else { panic!("{step:?}") };
        let text = f.to_string();
        assert!(text.starts_with("2/2 replicas cannot be placed: no node has"), "{text}");
        assert!(text.contains("stays pending and is retried when capacity appears"), "{text}");
    }

    #[test]
    fn timeout_and_superseded() {
        let t0 = Instant::now();
        let mut r = Rollout::new("llm", 3, true, Duration::from_secs(5), DEFAULT_STABLE, t0);
        let step = r.observe(t0 + Duration::from_secs(6), &view(3, 1, None), &[]);
        assert!(matches!(step, Step::Failed(WaitFailure::TimedOut { .. })), "{step:?}");
        let step = r.observe(t0, &view(4, 1, None), &[]);
        assert_eq!(step, Step::Failed(WaitFailure::Superseded { version: 4 }));
    }

    #[test]
    fn done_wins_over_a_stale_pending_reason_and_the_timeout() {
        let t0 = Instant::now();
        let mut r = Rollout::new("w", 1, true, Duration::from_secs(1), DEFAULT_STABLE, t0);
        let step = r.observe(
            t0 + Duration::from_secs(9),
            &view(1, 1, Some("stale")),
            &[alloc("w.0.1", 1, "run", "running", "healthy")],
        );
        assert!(matches!(step, Step::Done { .. }), "{step:?}");
    }

    #[test]
    fn without_a_health_check_a_replica_must_stay_up_for_the_stable_period() {
        let t0 = Instant::now();
        let stable = Duration::from_secs(5);
        let mut r = Rollout::new("w", 1, false, Duration::from_secs(60), stable, t0);
        let v = view(1, 1, None);
        let up = alloc("w.0.1", 1, "run", "running", "unknown");
        assert!(matches!(r.observe(t0, &v, std::slice::from_ref(&up)), Step::Waiting(_)));
        assert!(matches!(
            r.observe(t0 + Duration::from_secs(4), &v, std::slice::from_ref(&up)),
            Step::Waiting(_)
        ));
        // It restarted in between: the period starts again.
        let mut again = up.clone();
        again.restarts = 1;
        let t = t0 + Duration::from_secs(6);
        assert!(matches!(r.observe(t, &v, std::slice::from_ref(&again)), Step::Waiting(_)));
        assert!(matches!(
            r.observe(t + Duration::from_secs(4), &v, std::slice::from_ref(&again)),
            Step::Waiting(_)
        ));
        let step = r.observe(t + stable, &v, std::slice::from_ref(&again));
        assert!(matches!(step, Step::Done { .. }), "{step:?}");
    }

    #[test]
    fn a_start_failure_or_a_crash_loop_ends_the_wait_with_the_message() {
        let t0 = Instant::now();
        let mut r = Rollout::new("w", 1, false, Duration::from_secs(60), DEFAULT_STABLE, t0);
        let v = view(1, 1, None);
        let mut cannot = alloc("w.0.1", 1, "run", "restarting", "unknown");
        cannot.start_failed = true;
        cannot.message = "cannot start \"/no/such/binary\": No such file or directory".into();
        let Step::Failed(f) = r.observe(t0, &v, &[cannot]) else { panic!() };
        assert!(matches!(f, WaitFailure::StartFailed { .. }), "{f:?}");
        assert!(f.to_string().contains("/no/such/binary"), "{f}");

        let mut looping = alloc("w.0.1", 1, "run", "restarting", "unknown");
        looping.failures = 3;
        looping.crash_looping = true;
        looping.message = "exit code 1".into();
        let Step::Failed(f) = r.observe(t0, &v, &[looping]) else { panic!() };
        assert!(f.to_string().contains("crash-looping (3 failures in a row, last: exit code 1)"), "{f}");
    }

    #[test]
    fn replicas_that_completed_count_as_done() {
        let t0 = Instant::now();
        let mut r = Rollout::new("w", 2, false, Duration::from_secs(60), DEFAULT_STABLE, t0);
        let allocs = [
            alloc("w.0.1", 2, "run", "completed", "unknown"),
            alloc("w.1.2", 2, "run", "completed", "unknown"),
        ];
        assert!(matches!(r.observe(t0, &view(2, 2, None), &allocs), Step::Done { .. }));
    }

    #[test]
    fn holding_ignores_terminal_allocations_and_other_workloads() {
        let allocs = vec![
            alloc("llm.0.1", 1, "stop", "running", "healthy"),
            alloc("llm.1.2", 1, "stop", "stopped", "unknown"),
            alloc("llm.2.3", 1, "stop", "lost", "unknown"),
            alloc("other.0.1", 1, "run", "running", "healthy"),
        ];
        let ids: Vec<&str> = holding(&allocs, "llm").iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["llm.0.1"]);
        assert!(holding(&allocs[1..3], "llm").is_empty());
    }
}
