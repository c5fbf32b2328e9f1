//! The coordinator's request handling: what happens to an operator request,
//! an agent report or a peer RPC once it has been authenticated and decoded.
//!
//! Only the leader writes and only the leader knows live telemetry, so most
//! requests end up there: a follower forwards operator requests over
//! `gantry-raft/1`, and tells agents where the leader is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use gantry_common::api::{
    ApiRequest, ApiResponse, ClusterStatus, GpuView, MemberRole, MemberView, NodeView, SubmitResult,
};
use gantry_common::identity::{PeerIdentity, Role};
use gantry_common::model::GpuHealth;
use gantry_common::wire::{AgentRequest, AgentResponse, LeaderHint};
use gantry_common::workload::{AllocReport, DesiredAlloc, DesiredState};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};

use crate::peer::client::PeerClient;
use crate::peer::messages::{PeerRequest, PeerResponse};
use crate::raft::state_machine::StateReader;
use crate::raft::{NodeId, Raft};
use crate::scheduler::SchedulerStats;
use crate::state::{Command, CommandResponse};
use crate::telemetry::TelemetryStore;

/// How long a write waits for a leader to be elected before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// Timeout of a request forwarded to the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an agent's allocation watch is held open.
const MAX_WATCH: Duration = Duration::from_secs(30);
/// Most reports one agent request may carry.
const MAX_REPORTS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("this coordinator is not the leader")]
    NotLeader { leader: Option<LeaderHint> },
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// Why an operator request failed where it was executed.
#[derive(Debug)]
enum ApiFailure {
    /// Leadership moved during the request: retry it on the new leader.
    NotLeader,
    Failed(String),
}

impl ApiFailure {
    fn into_message(self) -> String {
        match self {
            ApiFailure::NotLeader => "this coordinator is not the leader".into(),
            ApiFailure::Failed(message) => message,
        }
    }
}

impl From<String> for ApiFailure {
    fn from(message: String) -> Self {
        ApiFailure::Failed(message)
    }
}

impl From<WriteError> for ApiFailure {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotLeader { .. } => ApiFailure::NotLeader,
            e => ApiFailure::Failed(e.to_string()),
        }
    }
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
}

impl Service {
    /// Serves an operator request, forwarding it to the leader when needed.
    ///
    /// A write that meets a leadership change (this coordinator stepped down
    /// mid-write, or the one it was forwarded to no longer leads) is retried
    /// on the new leader until [`LEADER_WAIT`] ends. That is safe because
    /// every operator write is idempotent (the same spec, stop, drain or
    /// label set again changes nothing): an entry the old leader had already
    /// replicated may still commit under the new one.
    pub async fn handle_api(&self, req: ApiRequest) -> Result<ApiResponse, String> {
        if req == ApiRequest::LocalStatus {
            return self.execute_api(req).await.map_err(ApiFailure::into_message);
        }
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let attempt = if self.is_leader() {
                self.execute_api(req.clone()).await
            } else {
                match self.leader_hint() {
                    Some(hint) if req.is_write() => self.forward(&hint, req.clone()).await,
                    // A read falls back to local state when the leader is unreachable
                    // (it may have just died): any coordinator answers.
                    Some(hint) => match self.forward(&hint, req.clone()).await {
                        Ok(resp) => Ok(resp),
                        Err(_) => self.execute_api(req.clone()).await,
                    },
                    // Reads are still answered without a leader, from local state.
                    None if !req.is_write() => self.execute_api(req.clone()).await,
                    None => Err(ApiFailure::NotLeader),
                }
            };
            match attempt {
                Err(ApiFailure::NotLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(ApiFailure::NotLeader) => {
                    return Err(format!(
                        "no leader elected within {LEADER_WAIT:?}; is a majority of coordinators up?"
                    ))
                }
                other => return other.map_err(ApiFailure::into_message),
            }
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
            PeerRequest::Api(r) if self.is_leader() => match self.execute_api(r).await {
                Err(ApiFailure::NotLeader) => PeerResponse::NotLeader,
                other => PeerResponse::Api(other.map_err(ApiFailure::into_message)),
            },
            // The forwarding coordinator retries on whichever coordinator leads next.
            PeerRequest::Api(_) => PeerResponse::NotLeader,
            // Streamed by the endpoint (`serve_peer_stream`), never answered here.
            PeerRequest::Logs(_) => PeerResponse::Refused("logs are streamed, not answered".into()),
        }
    }

    /// Serves an agent's request. `who` is the identity its certificate proves.
    pub async fn handle_agent(&self, who: &PeerIdentity, req: AgentRequest) -> AgentResponse {
        if who.role != Role::Agent {
            return AgentResponse::Refused {
                reason: format!("certificate of {who} may not act as an agent"),
            };
        }
        let node = req.node();
        if node != who.name {
            return AgentResponse::Refused {
                reason: format!("agent certificate is for node {:?}, not for node {node:?}", who.name),
            };
        }
        if !self.is_leader() {
            return AgentResponse::NotLeader { leader: self.leader_hint() };
        }
        match req {
            AgentRequest::Register(info) => {
                let name = info.name.clone();
                match self.write(Command::RegisterNode { info }).await {
                    Ok(_) => {
                        self.telemetry.lock().liveness.heartbeat(&name, Instant::now());
                        AgentResponse::Registered
                    }
                    Err(WriteError::NotLeader { leader }) => AgentResponse::NotLeader { leader },
                    Err(e) => AgentResponse::Refused { reason: e.to_string() },
                }
            }
            AgentRequest::Heartbeat(hb) => {
                if !self.state.read(|s| s.nodes.contains_key(&hb.node)) {
                    return AgentResponse::UnknownNode;
                }
                self.telemetry.record(hb, Instant::now());
                AgentResponse::HeartbeatAck
            }
            AgentRequest::WatchAllocs { node, index, wait_ms } => {
                self.watch_allocs(&node, index, Duration::from_millis(wait_ms).min(MAX_WATCH)).await
            }
            AgentRequest::ReportAllocs { node, reports } => self.report_allocs(node, reports).await,
        }
    }

    /// The node's desired allocations once their revision differs from
    /// `index`, or after `wait` with the same index.
    async fn watch_allocs(&self, node: &str, index: u64, wait: Duration) -> AgentResponse {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.state.subscribe();
        loop {
            changes.borrow_and_update();
            let Some(revision) = self.state.read(|s| s.nodes.get(node).map(|n| n.alloc_revision)) else {
                return AgentResponse::UnknownNode;
            };
            if revision != index {
                return AgentResponse::Allocs { index: revision, allocs: self.desired_allocs(node) };
            }
            if !self.is_leader() {
                return AgentResponse::NotLeader { leader: self.leader_hint() };
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() {
                    return AgentResponse::Refused { reason: "coordinator stopping".into() };
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return AgentResponse::Allocs { index: revision, allocs: self.desired_allocs(node) };
                }
            }
        }
    }

    /// What `node`'s agent should know: allocations to run, and those to stop
    /// that it has not confirmed stopped.
    fn desired_allocs(&self, node: &str) -> Vec<DesiredAlloc> {
        self.state.read(|s| {
            s.allocs_on(node)
                .filter(|a| a.desired == DesiredState::Run || !a.actual.is_terminal())
                .filter_map(|a| {
                    let spec = s.workloads.get(&a.workload)?.spec.clone();
                    Some(DesiredAlloc { alloc: a.clone(), spec })
                })
                .collect()
        })
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

    /// Commits a command through Raft (leader only).
    pub async fn write(&self, command: Command) -> Result<(u64, CommandResponse), WriteError> {
        match self.raft.client_write(command).await {
            Ok(resp) => match resp.data {
                CommandResponse::Rejected { reason } => Err(WriteError::Rejected(reason)),
                data => Ok((resp.log_id.index, data)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(WriteError::NotLeader {
                leader: f.leader_id.zip(f.leader_node).map(|(id, n)| LeaderHint { id, addr: n.addr }),
            }),
            Err(e) => Err(WriteError::Raft(e.to_string())),
        }
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

    async fn forward(&self, hint: &LeaderHint, req: ApiRequest) -> Result<ApiResponse, ApiFailure> {
        match self.peers.call(&hint.addr, &PeerRequest::Api(req), FORWARD_TIMEOUT).await {
            Ok(PeerResponse::Api(r)) => r.map_err(ApiFailure::Failed),
            Ok(PeerResponse::NotLeader) => Err(ApiFailure::NotLeader),
            Ok(other) => {
                Err(ApiFailure::Failed(format!("leader {} answered unexpectedly: {other:?}", hint.id)))
            }
            Err(e) => Err(ApiFailure::Failed(format!(
                "forwarding to leader {} at {} failed: {e}",
                hint.id, hint.addr
            ))),
        }
    }

    /// Executes a request here: on the leader, or a read without a leader.
    async fn execute_api(&self, req: ApiRequest) -> Result<ApiResponse, ApiFailure> {
        match req {
            ApiRequest::Status | ApiRequest::LocalStatus => Ok(ApiResponse::Status(self.status().await)),
            ApiRequest::Nodes => Ok(ApiResponse::Nodes(self.node_views())),
            ApiRequest::Gpus => Ok(ApiResponse::Gpus(self.gpu_views())),
            ApiRequest::SetNodeLabels { node, set, remove } => {
                let (index, _) = self.write(Command::SetNodeLabels { node, set, remove }).await?;
                Ok(ApiResponse::Committed { log_index: index })
            }
            ApiRequest::AddMember { id, addr } => Ok(self.add_member(id, addr).await?),
            ApiRequest::RemoveMember { id } => Ok(self.remove_member(id).await?),
            ApiRequest::SubmitWorkload { spec } => {
                spec.validate().map_err(|e| ApiFailure::Failed(e.to_string()))?;
                let workload = spec.name.clone();
                match self.write(Command::SubmitWorkload { spec: *spec }).await? {
                    (log_index, CommandResponse::Workload { version, changed }) => {
                        Ok(ApiResponse::Submitted(SubmitResult { workload, version, changed, log_index }))
                    }
                    (_, other) => Err(format!("unexpected answer to a submission: {other:?}").into()),
                }
            }
            ApiRequest::Workloads => {
                Ok(ApiResponse::Workloads(self.state.read(crate::views::workload_views)))
            }
            ApiRequest::Workload { name } => self
                .state
                .read(|s| crate::views::workload_detail(s, &name))
                .map(|d| ApiResponse::Workload(Box::new(d)))
                .ok_or_else(|| format!("workload {name:?} does not exist").into()),
            ApiRequest::Allocs { workload } => Ok(ApiResponse::Allocs(
                self.state.read(|s| crate::views::alloc_views(s, workload.as_deref())),
            )),
            ApiRequest::StopWorkload { name } => self.commit(Command::StopWorkload { name }).await,
            ApiRequest::DrainNode { node, drain } => self.commit(Command::DrainNode { node, drain }).await,
        }
    }

    async fn commit(&self, command: Command) -> Result<ApiResponse, ApiFailure> {
        let (log_index, _) = self.write(command).await?;
        Ok(ApiResponse::Committed { log_index })
    }

    async fn add_member(&self, id: NodeId, addr: String) -> Result<ApiResponse, String> {
        if id == 0 {
            return Err("id: must be a positive number".into());
        }
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("addr: {addr:?} is not IP:PORT"));
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        if membership.membership().get_node(&id).is_some() {
            return Err(format!("id: coordinator {id} is already a member"));
        }
        // A learner first, so the new member catches up before it counts in the quorum.
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(|e| format!("adding {id} as learner: {e}"))?;
        let resp = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| format!("promoting {id} to voter: {e}"))?;
        Ok(ApiResponse::Committed { log_index: resp.log_id.index })
    }

    async fn remove_member(&self, id: NodeId) -> Result<ApiResponse, String> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        if membership.membership().get_node(&id).is_none() {
            return Err(format!("id: coordinator {id} is not a member"));
        }
        if voters.contains(&id) && voters.len() == 1 {
            return Err(format!(
                "id: coordinator {id} is the last voter; a cluster cannot remove its last member"
            ));
        }
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let resp =
            self.raft.change_membership(change, false).await.map_err(|e| format!("removing {id}: {e}"))?;
        Ok(ApiResponse::Committed { log_index: resp.log_id.index })
    }

    async fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let leading = m.current_leader == Some(self.id) && m.state == ServerState::Leader;
        let committed = self.raft.with_raft_state(|st| st.committed.map(|l| l.index)).await.ok().flatten();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let replication = m.replication.clone().unwrap_or_default();
        let members = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| {
                let role = if Some(*id) == m.current_leader {
                    MemberRole::Leader
                } else if voters.contains(id) {
                    MemberRole::Follower
                } else {
                    MemberRole::Learner
                };
                let commit_index = if *id == self.id {
                    committed
                } else if leading {
                    replication.get(id).and_then(|l| l.map(|l| l.index))
                } else {
                    None
                };
                MemberView { id: *id, address: node.addr.clone(), role, term: m.current_term, commit_index }
            })
            .collect();
        ClusterStatus {
            answered_by: self.id,
            leader: m.current_leader,
            term: m.current_term,
            commit_index: committed,
            last_applied: m.last_applied.map(|l| l.index),
            members,
        }
    }

    fn node_views(&self) -> Vec<NodeView> {
        let now = Instant::now();
        let telemetry = self.telemetry.lock();
        self.state.read(|s| {
            let mut held: BTreeMap<&str, u32> = BTreeMap::new();
            for a in s.allocs.values().filter(|a| a.holds_resources()) {
                *held.entry(a.node.as_str()).or_default() += 1;
            }
            s.nodes
                .values()
                .map(|n| {
                    let sample = telemetry.samples.get(&n.info.name);
                    let seen = telemetry.liveness.last_seen(&n.info.name);
                    NodeView {
                        name: n.info.name.clone(),
                        status: n.status,
                        heartbeat_age_s: seen.map(|t| now.saturating_duration_since(t).as_secs_f64()),
                        labels: n.labels(),
                        cpu_count: n.info.host.cpu_count,
                        memory_total_mib: n.info.host.memory_total_mib,
                        cpu_usage_pct: sample.map(|s| s.host.cpu_usage_pct),
                        memory_used_mib: sample.map(|s| s.host.memory_used_mib),
                        gpu_count: n.info.gpus.len() as u32,
                        gpu_backend: n.info.gpu_backend.clone(),
                        agent_version: n.info.agent_version.clone(),
                        drained: n.drained,
                        allocs: held.get(n.info.name.as_str()).copied().unwrap_or(0),
                    }
                })
                .collect()
        })
    }

    fn gpu_views(&self) -> Vec<GpuView> {
        let telemetry = self.telemetry.lock();
        self.state.read(|s| {
            let mut holders: BTreeMap<(&str, u32), u32> = BTreeMap::new();
            for a in s.allocs.values().filter(|a| a.holds_resources()) {
                for g in &a.gpus {
                    *holders.entry((a.node.as_str(), g.index)).or_default() += 1;
                }
            }
            let mut out = Vec::new();
            for n in s.nodes.values() {
                let by_index: BTreeMap<u32, _> = telemetry
                    .samples
                    .get(&n.info.name)
                    .map(|s| s.gpus.iter().map(|g| (g.index, g)).collect())
                    .unwrap_or_default();
                for g in &n.info.gpus {
                    let t = by_index.get(&g.index);
                    let (health, health_reason) = match t.map(|t| &t.health) {
                        None => ("unknown".to_string(), None),
                        Some(GpuHealth::Healthy) => ("healthy".to_string(), None),
                        Some(h @ (GpuHealth::Degraded(r) | GpuHealth::Unhealthy(r))) => {
                            (h.as_str().to_string(), Some(r.clone()))
                        }
                    };
                    out.push(GpuView {
                        node: n.info.name.clone(),
                        index: g.index,
                        uuid: g.uuid.clone(),
                        model: g.model.clone(),
                        memory_total_mib: g.memory_total_mib,
                        memory_used_mib: t.map(|t| t.memory_used_mib),
                        utilization_pct: t.map(|t| t.utilization_pct),
                        temperature_c: t.map(|t| t.temperature_c),
                        power_w: t.map(|t| t.power_w),
                        mig_mode: g.mig_mode,
                        sharing: g.sharing,
                        allocs: holders.get(&(n.info.name.as_str(), g.index)).copied().unwrap_or(0),
                        mps_clients: t.and_then(|t| t.mps_clients),
                        mig_instances: t.map(|t| t.mig_instances),
                        health,
                        health_reason,
                    });
                }
            }
            out
        })
    }
}
