//! One simulated node of the swarm: what `gantry-agent` does on the wire,
//! with a load-test runtime that starts nothing.
//!
//! It finds the leader (following `NotLeader` hints), registers with its
//! own certificate, then on one QUIC connection and side by side:
//! heartbeats with GPU telemetry at its interval, follows its desired
//! allocations with the long poll, and reports every allocation it is
//! asked to run as running and healthy (and every one it is asked to stop
//! as stopped). Telemetry follows what runs: a GPU holding an allocation
//! reports memory in use and load.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_common::model::{GpuHealth, GpuInfo, GpuTelemetry, HostTelemetry, NodeInfo};
use gantry_common::rpc::{self, RpcError};
use gantry_common::slow_calls::{busy_pause, SlowCalls};
use gantry_common::tls::COORDINATOR_SERVER_NAME;
use gantry_common::wire::{
    assemble_desired, read_frame, AgentRequest, AgentResponse, DesiredChunk, Heartbeat, DEFAULT_MAX_FRAME,
};
use gantry_common::workload::{ActualState, AllocReport, DesiredAlloc, DesiredState, HealthState};
use tokio::sync::watch;

use super::swarm::{NodeSlot, Shared, Step};

const SOFTWARE: &str = concat!("gantry-swarm ", env!("CARGO_PKG_VERSION"));
// The agent's timeouts (agent/src/session.rs), so that failover is measured as agents see it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);
/// Reports wait for a Raft write.
const REPORT_TIMEOUT: Duration = Duration::from_secs(15);
const WATCH_WAIT: Duration = Duration::from_secs(15);
const REPORTS_PER_CALL: usize = 1_000;

/// Why one connection ended.
enum End {
    Redirect(Option<String>),
    Failed,
    /// The coordinator refused the connection as busy: the agent retries
    /// the same one after its backoff.
    Busy,
    /// The bench stopped this node (it "died").
    Stopped,
}

/// Runs one node until the swarm ends; stops and restarts with its slot's `alive` switch.
pub async fn run(slot: Arc<NodeSlot>, shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    let mut alive = slot.alive.subscribe();
    let coordinators = shared.coordinators.clone();
    let mut next = slot.index % coordinators.len().max(1);
    let mut hint: Option<String> = None;
    let mut failures: u32 = 0;
    // Connections refused as busy in a row (their own, shorter backoff).
    let mut busy: u32 = 0;
    // As the agent does: the address whose link failed last is not tried
    // first again (it may be the leader that just died).
    let mut last_failed: Option<String> = None;
    loop {
        if alive.wait_for(|a| *a).await.is_err() {
            return;
        }
        let addr = match hint.take() {
            Some(h) => h,
            None => {
                let n = coordinators.len().max(1);
                next = (next + 1) % n;
                if n > 1 && coordinators.get(next) == last_failed.as_ref() {
                    next = (next + 1) % n;
                }
                coordinators.get(next).cloned().unwrap_or_default()
            }
        };
        let end = serve(&slot, &shared, &endpoint, &addr, &mut alive).await;
        if !matches!(end, End::Busy) {
            busy = 0;
        }
        if slot.leader().is_some() {
            // It had registered: a fresh failure starts the backoff afresh.
            failures = 0;
        }
        slot.set_leader(None);
        let pause = match end {
            End::Stopped => Duration::ZERO,
            End::Redirect(Some(leader)) if leader != addr => {
                hint = Some(leader);
                failures = 0;
                Duration::ZERO
            }
            End::Redirect(_) => Duration::from_millis(300),
            End::Failed => {
                last_failed = Some(addr.clone());
                failures = failures.saturating_add(1);
                retry_pause(failures, fastrand::f64())
            }
            End::Busy => {
                hint = Some(addr.clone());
                busy = busy.saturating_add(1);
                busy_pause(busy, fastrand::f64())
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// The agent's reconnect backoff: 200 ms doubling to 5 s, ±25 % jitter.
fn retry_pause(failures: u32, jitter: f64) -> Duration {
    let base = 200.0 * 2f64.powi(failures.saturating_sub(1).min(10) as i32);
    Duration::from_millis((base.min(5_000.0) * (0.75 + 0.5 * jitter.clamp(0.0, 1.0))) as u64)
}

async fn serve(
    slot: &NodeSlot,
    shared: &Shared,
    endpoint: &quinn::Endpoint,
    addr: &str,
    alive: &mut watch::Receiver<bool>,
) -> End {
    let connect = rpc::connect(
        endpoint,
        slot.client_config.clone(),
        addr,
        COORDINATOR_SERVER_NAME,
        SOFTWARE,
        CONNECT_TIMEOUT,
    );
    let conn = tokio::select! {
        c = connect => match c {
            Ok((conn, _)) => conn,
            Err(RpcError::Busy { .. }) => {
                shared.link_failures.count(Step::Busy);
                return End::Busy;
            }
            Err(_) => {
                shared.link_failures.count(Step::Connect);
                return End::Failed;
            }
        },
        _ = alive.wait_for(|a| !*a) => return End::Stopped,
    };
    let end = tokio::select! {
        end = session(slot, shared, &conn, addr) => end,
        _ = alive.wait_for(|a| !*a) => End::Stopped,
    };
    conn.close(0u32.into(), b"node moving on");
    end
}

async fn session(slot: &NodeSlot, shared: &Shared, conn: &quinn::Connection, addr: &str) -> End {
    let info = node_info(&slot.name, &slot.gpus);
    match call(conn, addr, AgentRequest::Register(info), REGISTER_TIMEOUT).await {
        Ok(AgentResponse::Registered) => {
            slot.set_leader(Some(addr.to_string()));
            shared.registrations.fetch_add(1, Ordering::Relaxed);
        }
        Ok(other) => return unexpected(other),
        Err(e) => {
            shared.link_failures.count(Step::Register);
            return e;
        }
    }
    let (running_tx, running_rx) = watch::channel(BTreeMap::<String, DesiredAlloc>::new());
    tokio::select! {
        end = heartbeats(slot, shared, conn, addr, running_rx.clone()) => end,
        end = watch_desired(slot, shared, conn, addr, &running_tx) => end,
        end = send_reports(slot, shared, conn, addr, running_rx) => end,
    }
}

async fn heartbeats(
    slot: &NodeSlot,
    shared: &Shared,
    conn: &quinn::Connection,
    addr: &str,
    running: watch::Receiver<BTreeMap<String, DesiredAlloc>>,
) -> End {
    let every = shared.heartbeat_every;
    // A random phase, so that a fleet started together does not beat together.
    tokio::time::sleep(every.mul_f64(fastrand::f64())).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent: Option<Instant> = None;
    let mut slow = SlowCalls::default();
    loop {
        tick.tick().await;
        let sent = Instant::now();
        if last_sent.is_some_and(|l| sent.duration_since(l) > every * 2) {
            shared.late_sends.fetch_add(1, Ordering::Relaxed);
        }
        last_sent = Some(sent);
        let seq = slot.heartbeat_seq.fetch_add(1, Ordering::Relaxed);
        let gpus = telemetry(&slot.gpus, &running.borrow());
        let hb = Heartbeat {
            node: slot.name.clone(),
            seq,
            host: HostTelemetry { cpu_usage_pct: 3.0, memory_used_mib: 8_192 },
            gpus,
        };
        let received = conn.stats().udp_rx.datagrams;
        let req = AgentRequest::Heartbeat(hb);
        match rpc::call(conn, addr, &req, DEFAULT_MAX_FRAME, CALL_TIMEOUT).await {
            Ok(AgentResponse::HeartbeatAck) => {
                slow.answered();
                shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                shared.heartbeat_rtt.record(sent.elapsed());
            }
            Ok(AgentResponse::UnknownNode) => return End::Redirect(Some(addr.to_string())),
            Ok(other) => return unexpected(other),
            // As the agent does: late, but the coordinator still sends.
            Err(RpcError::Timeout { .. })
                if slow.keep_after_timeout(received, conn.stats().udp_rx.datagrams) =>
            {
                shared.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                shared.link_failures.count(Step::SlowHeartbeat);
            }
            Err(_) => {
                shared.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                shared.link_failures.count(Step::Heartbeat);
                return End::Failed;
            }
        }
    }
}

/// Follows the desired set; counts each allocation id it is first asked to run.
async fn watch_desired(
    slot: &NodeSlot,
    shared: &Shared,
    conn: &quinn::Connection,
    addr: &str,
    running: &watch::Sender<BTreeMap<String, DesiredAlloc>>,
) -> End {
    let mut index = u64::MAX;
    loop {
        let req = AgentRequest::WatchDesired {
            node: slot.name.clone(),
            index,
            wait_ms: WATCH_WAIT.as_millis() as u64,
        };
        match read_desired(conn, addr, &req).await {
            Ok(Some((next, set))) => {
                index = next;
                let now: BTreeMap<String, DesiredAlloc> =
                    set.into_iter().map(|d| (d.alloc.id.clone(), d)).collect();
                let started = slot.note_desired(&now);
                if started > 0 {
                    shared.started.fetch_add(started, Ordering::Relaxed);
                }
                running.send_replace(now);
            }
            Ok(None) => {}
            Err(e) => {
                shared.link_failures.count(Step::Watch);
                return e;
            }
        }
    }
}

/// One watch: `None` when unchanged, else the new index and set.
async fn read_desired(
    conn: &quinn::Connection,
    addr: &str,
    req: &AgentRequest,
) -> Result<Option<(u64, Vec<DesiredAlloc>)>, End> {
    let (head, mut recv): (AgentResponse, _) =
        rpc::open_stream(conn, addr, req, DEFAULT_MAX_FRAME, WATCH_WAIT + CALL_TIMEOUT * 2)
            .await
            .map_err(|_| End::Failed)?;
    let (index, want_specs, want_allocs) = match head {
        AgentResponse::Desired { index, specs, allocs } => (index, specs as usize, allocs as usize),
        AgentResponse::DesiredUnchanged { .. } => return Ok(None),
        other => return Err(unexpected(other)),
    };
    let mut specs = Vec::new();
    let mut allocs = Vec::new();
    while specs.len() < want_specs || allocs.len() < want_allocs {
        match tokio::time::timeout(
            CALL_TIMEOUT * 6,
            read_frame::<DesiredChunk, _>(&mut recv, DEFAULT_MAX_FRAME),
        )
        .await
        {
            Ok(Ok(Some(chunk))) => {
                specs.extend(chunk.specs);
                allocs.extend(chunk.allocs);
            }
            _ => return Err(End::Failed),
        }
    }
    let (set, _orphans) = assemble_desired(&specs, allocs);
    Ok(Some((index, set)))
}

/// Reports what the load-test runtime "does": runs what it is told to run
/// (running and healthy at once), stops what it is told to stop.
async fn send_reports(
    slot: &NodeSlot,
    shared: &Shared,
    conn: &quinn::Connection,
    addr: &str,
    mut running: watch::Receiver<BTreeMap<String, DesiredAlloc>>,
) -> End {
    let mut sent: BTreeMap<String, ActualState> = BTreeMap::new();
    loop {
        let current = running.borrow_and_update().clone();
        let reports: Vec<AllocReport> =
            current.values().map(report_of).filter(|r| sent.get(&r.id) != Some(&r.actual)).collect();
        for batch in reports.chunks(REPORTS_PER_CALL) {
            let req = AgentRequest::ReportAllocs { node: slot.name.clone(), reports: batch.to_vec() };
            match call(conn, addr, req, REPORT_TIMEOUT).await {
                Ok(AgentResponse::ReportsAck) => {
                    for r in batch {
                        sent.insert(r.id.clone(), r.actual);
                    }
                }
                Ok(AgentResponse::UnknownNode) => return End::Redirect(Some(addr.to_string())),
                Ok(other) => return unexpected(other),
                Err(e) => {
                    shared.link_failures.count(Step::Report);
                    return e;
                }
            }
        }
        sent.retain(|id, _| current.contains_key(id));
        tokio::time::sleep(Duration::from_millis(100)).await;
        if running.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn report_of(d: &DesiredAlloc) -> AllocReport {
    let (actual, health) = match d.alloc.desired {
        DesiredState::Run => (ActualState::Running, HealthState::Healthy),
        DesiredState::Stop => (ActualState::Stopped, HealthState::Unknown),
    };
    AllocReport {
        id: d.alloc.id.clone(),
        actual,
        health,
        restarts: 0,
        message: String::new(),
        ports: BTreeMap::new(),
        devices: d.alloc.gpus.iter().map(|g| g.uuid.clone()).collect(),
        exit_code: None,
        failures: 0,
        start_failed: false,
    }
}

/// Telemetry of the node's GPUs: one holding an allocation that runs shows
/// 60 % of its memory used and 70 % load, an idle one the driver's reserve.
fn telemetry(gpus: &[GpuInfo], running: &BTreeMap<String, DesiredAlloc>) -> Vec<GpuTelemetry> {
    gpus.iter()
        .map(|g| {
            let busy = running.values().any(|d| {
                d.alloc.desired == DesiredState::Run && d.alloc.gpus.iter().any(|a| a.index == g.index)
            });
            GpuTelemetry {
                index: g.index,
                memory_used_mib: if busy { g.memory_total_mib * 6 / 10 } else { 512 },
                utilization_pct: if busy { 70 } else { 0 },
                temperature_c: if busy { 64 } else { 34 },
                power_w: if busy { 450.0 } else { 70.0 },
                health: GpuHealth::Healthy,
                mps_clients: None,
                mig_instances: 0,
            }
        })
        .collect()
}

fn node_info(name: &str, gpus: &[GpuInfo]) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        labels: BTreeMap::from([("swarm".to_string(), "true".to_string())]),
        host: gantry_common::model::HostInfo {
            hostname: name.to_string(),
            cpu_count: 64,
            memory_total_mib: 512 * 1024,
            os: "swarm".into(),
            kernel: "swarm".into(),
        },
        gpus: gpus.to_vec(),
        agent_version: SOFTWARE.into(),
        gpu_backend: "sim".into(),
        address: "127.0.0.1".into(),
        http_addr: String::new(),
    }
}

async fn call(
    conn: &quinn::Connection,
    addr: &str,
    req: AgentRequest,
    timeout: Duration,
) -> Result<AgentResponse, End> {
    // Refusals count as failures: the node retries with backoff, as an agent does.
    rpc::call(conn, addr, &req, DEFAULT_MAX_FRAME, timeout).await.map_err(|_: RpcError| End::Failed)
}

fn unexpected(resp: AgentResponse) -> End {
    match resp {
        AgentResponse::NotLeader { leader } => End::Redirect(leader.map(|l| l.addr)),
        _ => End::Failed,
    }
}

/// When a node registered with the leader it holds now.
pub fn registered_after(slot: &NodeSlot, since: Instant, not: Option<&str>) -> bool {
    slot.leader().is_some_and(|(addr, at)| at >= since && Some(addr.as_str()) != not)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_matches_the_agents() {
        assert_eq!([1, 2, 3].map(|f| retry_pause(f, 0.5).as_millis()), [200, 400, 800]);
        assert_eq!(retry_pause(30, 0.5).as_millis(), 5_000);
    }
}
