//! The coordinator's request handling: what happens to an operator request,
//! an agent report or a peer RPC once it has been authenticated and decoded.
//!
//! Only the leader writes and only the leader knows live telemetry, so most
//! requests end up there: a follower forwards operator requests over
//! `gantry-raft/1`, and tells agents where the leader is.
//!
//! # Layout
//!
//! - this file: [`Service`], agents' requests, Raft writes, leadership.
//! - [`api`]: operator requests: forwarding, idempotency keys, retries,
//!   stale answers, membership changes.
//! - [`batch`]: several workloads in one request, one Raft entry when every
//!   member speaks protocol 3.
//! - [`desired`]: a node's desired set, streamed to its agent in chunks.
//! - [`proposer`]: writes that arrive together committed as one Raft entry.

pub mod api;
pub mod batch;
pub mod desired;
pub mod proposer;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_common::identity::{PeerIdentity, Role};
use gantry_common::wire::{AgentRequest, AgentResponse, LeaderHint};
use gantry_common::workload::AllocReport;
use openraft::ServerState;
use tracing::{info, warn};

use crate::peer::client::PeerClient;
use crate::peer::messages::{PeerRequest, PeerResponse};
use crate::raft::state_machine::StateReader;
use crate::raft::{NodeId, Raft};
use crate::scheduler::SchedulerStats;
use crate::state::{Command, CommandResponse};
use crate::telemetry::TelemetryStore;

/// Longest a Raft write may wait to commit.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(8);
/// Most reports one agent request may carry.
const MAX_REPORTS: usize = 10_000;

#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    #[error("this coordinator is not the leader")]
    NotLeader { leader: Option<LeaderHint> },
    #[error("rejected: {reason}")]
    Rejected { kind: crate::state::RejectKind, reason: String },
    #[error("raft: {0}")]
    Raft(String),
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct Service {
    pub id: NodeId,
    pub raft: Raft,
    pub state: StateReader,
    pub telemetry: TelemetryStore,
    pub peers: PeerClient,
    pub scheduler_stats: SchedulerStats,
    /// Connections agents made to this coordinator, for requests to them.
    pub agent_links: crate::agent_links::AgentLinks,
    /// Handshakes worked on at once, and those refused beyond them.
    pub admission: crate::admission::Admission,
    /// When this coordinator last knew a leader (for stale answers).
    pub leader_seen: LeaderSeen,
    /// The Raft log, read for its last entry when answering a pre-vote.
    pub log: crate::raft::log_store::LogStore,
    /// Every Raft write goes through it (see [`proposer`]).
    pub proposer: proposer::Proposer,
    /// Latency histograms and counters for `/metrics`.
    pub instruments: crate::metrics::instruments::Instruments,
}

/// When a leader was last known, and how often the known leader changed;
/// updated by [`LeaderSeen::follow`].
#[derive(Clone, Default)]
pub struct LeaderSeen {
    at: Arc<Mutex<Option<Instant>>>,
    changes: Arc<std::sync::atomic::AtomicU64>,
}

impl LeaderSeen {
    /// Seconds since a leader was last known, `None` if never.
    pub fn seconds_ago(&self, now: Instant) -> Option<f64> {
        let at = *self.at.lock().unwrap_or_else(|p| p.into_inner());
        at.map(|t| now.saturating_duration_since(t).as_secs_f64())
    }

    /// Times this coordinator saw a new leader (the first one it learnt of counts).
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Follows Raft's metrics until `shutdown`: while a leader is known, the
    /// time moves on with it.
    pub async fn follow(self, raft: Raft, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut metrics = raft.metrics();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last_leader = None;
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            if leader.is_some() {
                *self.at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                if leader != last_leader {
                    self.changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    last_leader = leader;
                }
            }
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

impl Service {
    /// Serves an agent's request. `who` is the identity its certificate
    /// proves. [`AgentRequest::WatchDesired`] is answered by the endpoint
    /// through [`Service::watch_desired`], as several frames.
    pub async fn handle_agent(&self, who: &PeerIdentity, req: AgentRequest) -> AgentResponse {
        let request = match &req {
            AgentRequest::Register(_) => "register",
            AgentRequest::Heartbeat(_) => "heartbeat",
            AgentRequest::WatchDesired { .. } => "watch_desired",
            AgentRequest::ReportAllocs { .. } => "report_allocs",
        };
        let started = Instant::now();
        let answer = self.answer_agent(who, req).await;
        let label = crate::metrics::instruments::RequestLabel { request };
        crate::metrics::instruments::observe(
            &self.instruments.agent_requests.get_or_create(&label),
            started.elapsed(),
        );
        answer
    }

    async fn answer_agent(&self, who: &PeerIdentity, req: AgentRequest) -> AgentResponse {
        if let Err(refusal) = self.check_agent(who, &req) {
            return refusal;
        }
        match req {
            AgentRequest::Register(info) => {
                if let Err(reason) = info.validate() {
                    warn!(node = %info.name, "registration refused: {reason}");
                    return AgentResponse::Refused { reason };
                }
                let name = info.name.clone();
                // An agent reconnecting with the same facts writes nothing.
                let unchanged = self.state.read(|s| {
                    s.nodes.get(&name).is_some_and(|n| {
                        n.info == info && n.status == gantry_common::model::NodeStatus::Ready
                    })
                });
                if !unchanged {
                    match self.write(Command::RegisterNode { info }).await {
                        Ok(_) => info!(node = %name, "node registered"),
                        Err(WriteError::NotLeader { leader }) => return AgentResponse::NotLeader { leader },
                        Err(e) => return AgentResponse::Refused { reason: e.to_string() },
                    }
                }
                self.telemetry.lock().liveness.heartbeat(&name, Instant::now());
                AgentResponse::Registered
            }
            AgentRequest::Heartbeat(hb) => {
                // Thousands a second: most need not wait for the state's lock
                // (which an apply can be queued for behind a planning round).
                let hb = match self.telemetry.record_if_heard(hb, Instant::now()) {
                    Ok(()) => return AgentResponse::HeartbeatAck,
                    Err(hb) => hb,
                };
                if !self.state.read(|s| s.nodes.contains_key(&hb.node)) {
                    return AgentResponse::UnknownNode;
                }
                self.telemetry.record(hb, Instant::now());
                AgentResponse::HeartbeatAck
            }
            AgentRequest::WatchDesired { .. } => {
                AgentResponse::Refused { reason: "the desired set is streamed, not answered".into() }
            }
            AgentRequest::ReportAllocs { node, reports } => self.report_allocs(node, reports).await,
        }
    }

    /// Serves a request from another coordinator.
    pub async fn handle_peer(&self, req: PeerRequest) -> PeerResponse {
        match req {
            PeerRequest::AppendEntries(r) => PeerResponse::AppendEntries(self.raft.append_entries(r).await),
            PeerRequest::Vote(r) => PeerResponse::Vote(self.raft.vote(r).await),
            PeerRequest::InstallSnapshot(r) => {
                PeerResponse::InstallSnapshot(self.raft.install_snapshot(r).await)
            }
            PeerRequest::Forward { req, key } => self.handle_forwarded(req, key).await,
            // Streamed by the endpoint (`serve_peer_stream`), never answered here.
            PeerRequest::Logs(_) => PeerResponse::Refused("logs are streamed, not answered".into()),
            PeerRequest::PreVote(r) => PeerResponse::PreVote {
                granted: crate::raft::election::answer_pre_vote(&self.raft, &self.log, self.id, &r).await,
            },
        }
    }

    /// Who may ask: an agent, for its own node, of the leader.
    pub fn check_agent(&self, who: &PeerIdentity, req: &AgentRequest) -> Result<(), AgentResponse> {
        if who.role != Role::Agent {
            return Err(AgentResponse::Refused {
                reason: format!("certificate of {who} may not act as an agent"),
            });
        }
        let node = req.node();
        if node != who.name {
            return Err(AgentResponse::Refused {
                reason: format!("agent certificate is for node {:?}, not for node {node:?}", who.name),
            });
        }
        if !self.is_leader() {
            return Err(AgentResponse::NotLeader { leader: self.leader_hint() });
        }
        Ok(())
    }

    async fn report_allocs(&self, node: String, reports: Vec<AllocReport>) -> AgentResponse {
        if reports.len() > MAX_REPORTS {
            return AgentResponse::Refused { reason: format!("at most {MAX_REPORTS} reports per request") };
        }
        // Only what differs from the state goes through Raft.
        let changed: Vec<AllocReport> = self.state.read(|s| {
            reports
                .into_iter()
                .filter(|r| s.allocs.get(&r.id).is_some_and(|a| a.node == node && r.differs_from(a)))
                .collect()
        });
        if changed.is_empty() {
            return AgentResponse::ReportsAck;
        }
        match self.write(Command::ReportAllocs { node, reports: changed }).await {
            Ok(_) => AgentResponse::ReportsAck,
            Err(WriteError::NotLeader { leader }) => AgentResponse::NotLeader { leader },
            Err(e) => AgentResponse::Refused { reason: e.to_string() },
        }
    }

    /// Commits a command through Raft (leader only), in one entry with the
    /// writes that wait beside it ([`proposer`]).
    /// A leader cut off from its majority cannot commit: the write gives up
    /// after [`COMMIT_TIMEOUT`] with its outcome unknown (the entry may still
    /// commit if the majority comes back).
    pub async fn write(&self, command: Command) -> Result<(u64, CommandResponse), WriteError> {
        self.proposer.write(command).await
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// The leader as this coordinator knows it, with its address.
    pub fn leader_hint(&self) -> Option<LeaderHint> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some(LeaderHint { id, addr: node.addr.clone() })
    }
}
