//! The agent's link to the control plane: find the leader among the
//! configured coordinators, register, then, on one connection and side by side:
//!
//! - heartbeat every interval;
//! - follow the node's desired allocations (a long poll with an index, so a
//!   reconnect anywhere converges) and hand them to the workload manager;
//! - send the manager's reports when they change;
//! - answer the requests the coordinator sends down this connection
//!   ([`crate::coordinator_requests`]: logs).
//!
//! When the leader dies or steps down, move to the one it names (or the next address).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_common::identity::ALPN_AGENT;
use gantry_common::rpc::{self, RpcError};
use gantry_common::slow_calls::{busy_pause, SlowCalls};
use gantry_common::systemd;
use gantry_common::tls::{self, Identity, COORDINATOR_SERVER_NAME};
use gantry_common::wire::{
    assemble_desired, read_frame, AgentRequest, AgentResponse, DesiredChunk, DEFAULT_MAX_FRAME,
};
use gantry_common::workload::AllocReport;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::sampler::{AgentStatus, Sampler};
use crate::workloads::link::{DesiredSet, SessionSide};
use crate::workloads::manager::Logs;

const SOFTWARE: &str = concat!("gantry-agent ", env!("CARGO_PKG_VERSION"));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A registration waits for a Raft write, which a leader that thousands of
/// agents reach at once (a fleet restart, a failover) queues behind the
/// others: timing it out after [`CALL_TIMEOUT`] makes an agent reconnect and
/// register again, adding to the queue it gave up on.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);
const REFUSED_BACKOFF: Duration = Duration::from_secs(5);
/// How long the leader may hold an allocation watch open.
const WATCH_WAIT: Duration = Duration::from_secs(15);
/// Reports are sent at most this often (changes in between are batched).
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// And at least this often, so a lost answer is repaired.
const REPORT_REFRESH: Duration = Duration::from_secs(10);
/// Most reports in one request (the leader takes at most 10,000).
const REPORTS_PER_CALL: usize = 1_000;
/// A report waits for a Raft write, which a busy leader may queue: more
/// time than a heartbeat gets before the link counts as lost.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the chunks of one desired set may take to arrive.
const DESIRED_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A link that lived this long was healthy: the next failure starts the backoff afresh.
const STABLE_LINK: Duration = Duration::from_secs(10);

pub struct Session {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    coordinators: Vec<String>,
    labels: BTreeMap<String, String>,
    /// Heartbeat interval; SIGHUP may change it while running.
    interval: watch::Receiver<Duration>,
    status: AgentStatus,
    /// Next address to try when no leader is hinted.
    next: usize,
    /// Leader named by the last coordinator we spoke to.
    hint: Option<String>,
    failures: u32,
    /// Connections refused as busy in a row (their own, shorter backoff).
    busy: u32,
    /// When the current link registered (a link that stays up a while resets the backoff).
    registered_at: Option<std::time::Instant>,
    /// The address whose link failed last: not tried again first (it may be
    /// the leader that just died, whose calls only time out).
    last_failed: Option<String>,
    /// Where desired allocations go (shared with the watch task).
    desired: Arc<watch::Sender<Option<DesiredSet>>>,
    reports: watch::Receiver<BTreeMap<String, AllocReport>>,
    /// Allocation output, for the coordinator's log requests.
    logs: Logs,
}

/// Why a connection to a coordinator ended.
enum End {
    /// Another coordinator leads: go there.
    Redirect(Option<String>),
    /// Something failed: try the next coordinator after a pause.
    Failed(String),
    /// The coordinator refused us on purpose; retry slowly.
    Refused(String),
    /// The coordinator refused the connection as busy (too many handshakes
    /// at once): the same one again after a short jittered pause.
    Busy(String),
    Shutdown,
}

/// Why a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

impl Session {
    pub fn new(
        identity: &Identity,
        coordinators: Vec<String>,
        labels: BTreeMap<String, String>,
        interval: watch::Receiver<Duration>,
        status: AgentStatus,
        link: SessionSide,
        logs: Logs,
    ) -> Result<Session, SessionError> {
        let endpoint = quinn::Endpoint::client(std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
            .map_err(SessionError::Endpoint)?;
        let config = tls::client_config(identity, ALPN_AGENT)?;
        let next = fastrand::usize(..coordinators.len().max(1));
        Ok(Session {
            endpoint,
            config,
            coordinators,
            labels,
            interval,
            status,
            next,
            hint: None,
            failures: 0,
            busy: 0,
            registered_at: None,
            last_failed: None,
            desired: Arc::new(link.desired),
            reports: link.reports,
            logs,
        })
    }

    /// Reports until `shutdown` turns true.
    pub async fn run(mut self, sampler: &mut Sampler, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let addr = self.pick();
            let end = self.serve_one(&addr, sampler, &mut shutdown).await;
            if !matches!(end, End::Busy(_)) {
                self.busy = 0;
            }
            self.status.set_leader(None);
            let pause = match end {
                End::Shutdown => break,
                End::Redirect(Some(leader)) if leader != addr => {
                    debug!(%addr, %leader, "redirected to the leader");
                    self.hint = Some(leader);
                    self.failures = 0;
                    Duration::ZERO
                }
                End::Redirect(_) => {
                    debug!(%addr, "no leader known yet");
                    systemd::ready(&format!("retrying: {addr} knows no leader yet"));
                    Duration::from_millis(300)
                }
                End::Failed(reason) => {
                    let stable = self.registered_at.take().is_some_and(|t| t.elapsed() >= STABLE_LINK);
                    self.failures = if stable { 1 } else { self.failures.saturating_add(1) };
                    self.last_failed = Some(addr.clone());
                    let pause = retry_pause(self.failures, fastrand::f64());
                    warn!(%addr, retry_in = ?pause, "coordinator link lost: {reason}");
                    systemd::ready(&format!("retrying: {addr}: {reason}"));
                    pause
                }
                End::Busy(reason) => {
                    self.hint = Some(addr.clone());
                    self.busy = self.busy.saturating_add(1);
                    let pause = busy_pause(self.busy, fastrand::f64());
                    info!(%addr, retry_in = ?pause, "{reason}");
                    systemd::ready(&format!("retrying: {reason}"));
                    pause
                }
                End::Refused(reason) => {
                    error!(%addr, "coordinator refused this agent: {reason}");
                    systemd::ready(&format!("refused by {addr}, retrying: {reason}"));
                    REFUSED_BACKOFF
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        self.endpoint.close(0u32.into(), b"agent stopping");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    fn pick(&mut self) -> String {
        if let Some(hint) = self.hint.take() {
            return hint;
        }
        let (addr, next) = next_candidate(&self.coordinators, self.next, self.last_failed.as_deref());
        self.next = next;
        addr
    }

    async fn serve_one(
        &mut self,
        addr: &str,
        sampler: &mut Sampler,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let conn = match rpc::connect(
            &self.endpoint,
            self.config.clone(),
            addr,
            COORDINATOR_SERVER_NAME,
            SOFTWARE,
            CONNECT_TIMEOUT,
        )
        .await
        {
            Ok((conn, _)) => conn,
            // Not this agent's fault: the same coordinator, after the usual
            // jittered backoff (a fixed pause would bring a refused fleet
            // back all at once).
            Err(e @ RpcError::Busy { .. }) => return End::Busy(e.to_string()),
            Err(e @ (RpcError::Refused { .. } | RpcError::VersionMismatch { .. })) => {
                return End::Refused(e.to_string())
            }
            Err(e) => return End::Failed(e.to_string()),
        };
        let end = self.report(&conn, addr, sampler, shutdown).await;
        conn.close(0u32.into(), b"agent moving on");
        end
    }

    async fn report(
        &mut self,
        conn: &quinn::Connection,
        addr: &str,
        sampler: &mut Sampler,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let info = match sampler.node_info(self.labels.clone()).await {
            Ok(info) => info,
            Err(e) => return End::Failed(format!("reading GPU inventory: {e}")),
        };
        match call(conn, addr, AgentRequest::Register(info), REGISTER_TIMEOUT).await {
            Ok(AgentResponse::Registered) => {
                info!(%addr, "registered with the leader");
                systemd::ready(&format!("registered with leader {addr}"));
                self.registered_at = Some(std::time::Instant::now());
                self.status.set_leader(Some(addr.to_string()));
            }
            Ok(other) => return unexpected(other),
            Err(e) => return e,
        }
        let node = info_name(sampler);
        let desired = Arc::clone(&self.desired);
        let watching = watch_allocs(conn, addr, &node, &desired);
        let reporting = send_reports(conn, addr, &node, self.reports.clone());
        let answering = crate::coordinator_requests::serve(conn.clone(), self.logs.clone());
        tokio::select! {
            end = self.heartbeats(conn, addr, sampler, shutdown) => end,
            end = watching => end,
            end = reporting => end,
            why = answering => End::Failed(format!("connection closed: {why}")),
        }
    }

    async fn heartbeats(
        &mut self,
        conn: &quinn::Connection,
        addr: &str,
        sampler: &mut Sampler,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let mut tick = heartbeat_timer(*self.interval.borrow_and_update());
        let mut slow = SlowCalls::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return End::Shutdown,
                Ok(()) = self.interval.changed() => {
                    let every = *self.interval.borrow_and_update();
                    info!(?every, "telemetry interval changed");
                    tick = heartbeat_timer(every);
                    continue;
                }
            }
            let hb = sampler.heartbeat().await;
            let received = conn.stats().udp_rx.datagrams;
            let req = AgentRequest::Heartbeat(hb);
            match rpc::call(conn, addr, &req, DEFAULT_MAX_FRAME, CALL_TIMEOUT).await {
                Ok(AgentResponse::HeartbeatAck) => {
                    slow.answered();
                    self.status.count_heartbeat();
                }
                Ok(AgentResponse::UnknownNode) => {
                    // The leader lost our registration (e.g. a fresh cluster): register again here.
                    return End::Redirect(Some(addr.to_string()));
                }
                Ok(other) => return unexpected(other),
                // Late, but the coordinator still talks to us: it is busy,
                // and a new link would only add to what keeps it busy.
                Err(e @ RpcError::Timeout { .. })
                    if slow.keep_after_timeout(received, conn.stats().udp_rx.datagrams) =>
                {
                    warn!(%addr, unanswered = slow.unanswered(), "heartbeat not answered in time; keeping the link: {e}");
                }
                Err(RpcError::Refused { reason, .. }) => return End::Refused(reason),
                Err(e) => return End::Failed(e.to_string()),
            }
        }
    }
}

fn info_name(sampler: &Sampler) -> String {
    sampler.node().to_string()
}

async fn call(
    conn: &quinn::Connection,
    addr: &str,
    req: AgentRequest,
    timeout: Duration,
) -> Result<AgentResponse, End> {
    rpc::call(conn, addr, &req, DEFAULT_MAX_FRAME, timeout).await.map_err(|e| match e {
        RpcError::Refused { reason, .. } => End::Refused(reason),
        e => End::Failed(e.to_string()),
    })
}

fn unexpected(resp: AgentResponse) -> End {
    match resp {
        AgentResponse::NotLeader { leader } => End::Redirect(leader.map(|l| l.addr)),
        AgentResponse::Refused { reason } => End::Refused(reason),
        other => End::Failed(format!("unexpected answer {other:?}")),
    }
}

/// Follows the node's desired allocations. The first call asks for an
/// index no revision has, so the leader answers at once. A changed set
/// arrives as a head and chunks on one stream.
async fn watch_allocs(
    conn: &quinn::Connection,
    addr: &str,
    node: &str,
    desired: &watch::Sender<Option<DesiredSet>>,
) -> End {
    let mut index = u64::MAX;
    loop {
        let req = AgentRequest::WatchDesired {
            node: node.to_string(),
            index,
            wait_ms: WATCH_WAIT.as_millis() as u64,
        };
        let read = read_desired(conn, addr, &req).await;
        match read {
            Ok(Desired::Set { index: next, allocs }) => {
                if next != index {
                    debug!(index = next, allocs = allocs.len(), "desired allocations changed");
                }
                index = next;
                let set = DesiredSet { index, allocs };
                desired.send_if_modified(|current| {
                    if current.as_ref() == Some(&set) {
                        false
                    } else {
                        *current = Some(set);
                        true
                    }
                });
            }
            Ok(Desired::Unchanged) => {}
            Ok(Desired::Other(AgentResponse::UnknownNode)) => return End::Redirect(Some(addr.to_string())),
            Ok(Desired::Other(other)) => return unexpected(other),
            Err(e) => return e,
        }
    }
}

/// What one watch brought.
enum Desired {
    Set { index: u64, allocs: Vec<gantry_common::workload::DesiredAlloc> },
    Unchanged,
    Other(AgentResponse),
}

/// One watch: the head (after the long poll), then every chunk it announced.
async fn read_desired(conn: &quinn::Connection, addr: &str, req: &AgentRequest) -> Result<Desired, End> {
    let (head, mut recv): (AgentResponse, _) =
        rpc::open_stream(conn, addr, req, DEFAULT_MAX_FRAME, WATCH_WAIT + CALL_TIMEOUT * 2).await.map_err(
            |e| match e {
                RpcError::Refused { reason, .. } => End::Refused(reason),
                e => End::Failed(e.to_string()),
            },
        )?;
    let (index, want_specs, want_allocs) = match head {
        AgentResponse::Desired { index, specs, allocs } => (index, specs as usize, allocs as usize),
        AgentResponse::DesiredUnchanged { .. } => return Ok(Desired::Unchanged),
        other => return Ok(Desired::Other(other)),
    };
    let mut specs = Vec::new();
    let mut allocs = Vec::new();
    let read_all = async {
        while specs.len() < want_specs || allocs.len() < want_allocs {
            match read_frame::<DesiredChunk, _>(&mut recv, DEFAULT_MAX_FRAME).await {
                Ok(Some(chunk)) => {
                    specs.extend(chunk.specs);
                    allocs.extend(chunk.allocs);
                }
                Ok(None) => {
                    return Err(format!(
                        "the stream ended after {} of {want_allocs} allocations",
                        allocs.len()
                    ))
                }
                Err(e) => return Err(e.to_string()),
            }
            if specs.len() > want_specs || allocs.len() > want_allocs {
                return Err("more chunks than announced".to_string());
            }
        }
        Ok(())
    };
    match tokio::time::timeout(DESIRED_READ_TIMEOUT, read_all).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(End::Failed(format!("reading the desired allocations: {e}"))),
        Err(_) => return Err(End::Failed("reading the desired allocations timed out".into())),
    }
    let (set, orphans) = assemble_desired(&specs, allocs);
    if !orphans.is_empty() {
        warn!(?orphans, "the leader sent allocations without their workload's spec; ignoring them");
    }
    Ok(Desired::Set { index, allocs: set })
}

/// Sends what changed in the manager's reports since the last accepted
/// send, batched, and everything again now and then.
async fn send_reports(
    conn: &quinn::Connection,
    addr: &str,
    node: &str,
    mut reports: watch::Receiver<BTreeMap<String, AllocReport>>,
) -> End {
    let mut sent: BTreeMap<String, AllocReport> = BTreeMap::new();
    let mut refresh = tokio::time::Instant::now() + REPORT_REFRESH;
    loop {
        let current = reports.borrow_and_update().clone();
        let changed: Vec<AllocReport> =
            current.values().filter(|r| sent.get(&r.id) != Some(*r)).cloned().collect();
        if !changed.is_empty() {
            for batch in changed.chunks(REPORTS_PER_CALL) {
                let req = AgentRequest::ReportAllocs { node: node.to_string(), reports: batch.to_vec() };
                match call(conn, addr, req, REPORT_TIMEOUT).await {
                    Ok(AgentResponse::ReportsAck) => {
                        for r in batch {
                            sent.insert(r.id.clone(), r.clone());
                        }
                    }
                    Ok(AgentResponse::UnknownNode) => return End::Redirect(Some(addr.to_string())),
                    Ok(other) => return unexpected(other),
                    Err(e) => return e,
                }
            }
            sent.retain(|id, _| current.contains_key(id));
        }
        tokio::time::sleep(REPORT_EVERY).await;
        tokio::select! {
            r = reports.changed() => if r.is_err() {
                // The manager is gone (the agent is stopping): nothing more to report.
                std::future::pending::<()>().await;
            },
            _ = tokio::time::sleep_until(refresh) => {
                sent.clear();
                refresh = tokio::time::Instant::now() + REPORT_REFRESH;
            }
        }
    }
}

fn heartbeat_timer(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// How long to wait before the `failures`-th reconnect in a row: 200 ms
/// doubling up to 5 s, jittered by ±25 % (`jitter` in 0..1) so a fleet that
/// lost its leader together does not come back together.
fn retry_pause(failures: u32, jitter: f64) -> Duration {
    let base = 200.0 * 2f64.powi(failures.saturating_sub(1).min(10) as i32);
    let ms = base.min(5_000.0) * (0.75 + 0.5 * jitter.clamp(0.0, 1.0));
    Duration::from_millis(ms as u64)
}

/// The next coordinator to try, round robin from `next`, passing over
/// `avoid` when there is any other choice. Returns it and the new cursor.
fn next_candidate(coordinators: &[String], next: usize, avoid: Option<&str>) -> (String, usize) {
    let n = coordinators.len().max(1);
    for step in 0..n {
        let i = next.wrapping_add(step) % n;
        let Some(addr) = coordinators.get(i) else { break };
        if Some(addr.as_str()) != avoid || n == 1 {
            return (addr.clone(), i.wrapping_add(1));
        }
    }
    (coordinators.first().cloned().unwrap_or_default(), next.wrapping_add(1))
}

#[cfg(test)]
mod tests {
    use super::next_candidate;

    fn list() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn reconnects_back_off_with_jitter_to_a_cap() {
        use super::retry_pause;
        let ms = |f, j| retry_pause(f, j).as_millis();
        assert_eq!([1, 2, 3, 4].map(|f| ms(f, 0.5)), [200, 400, 800, 1600]);
        assert_eq!(ms(30, 0.5), 5_000);
        assert_eq!((ms(1, 0.0), ms(1, 1.0)), (150, 250));
        assert_eq!(ms(30, 1.0), 6_250);
    }

    #[test]
    fn round_robin_without_failures() {
        let l = list();
        let (a, n) = next_candidate(&l, 0, None);
        let (b, n) = next_candidate(&l, n, None);
        let (c, n) = next_candidate(&l, n, None);
        let (d, _) = next_candidate(&l, n, None);
        assert_eq!([a, b, c, d], ["a", "b", "c", "a"].map(String::from));
    }

    #[test]
    fn the_failed_address_is_passed_over() {
        let l = list();
        assert_eq!(next_candidate(&l, 1, Some("b")), ("c".to_string(), 3));
        assert_eq!(next_candidate(&l, 2, Some("c")), ("a".to_string(), 1));
    }

    #[test]
    fn a_single_coordinator_is_retried_even_after_failing() {
        let l = vec!["a".to_string()];
        assert_eq!(next_candidate(&l, 5, Some("a")).0, "a");
    }
}
