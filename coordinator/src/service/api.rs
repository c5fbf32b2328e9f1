//! Operator requests, from the admin socket, the remote API or a follower.
//!
//! - Writes go to the leader. Each carries an idempotency key (the client's,
//!   or one made here), committed with it as [`Command::Keyed`]: a retry of
//!   the same key is answered with the first result and changes nothing. So
//!   a write that meets a leadership change, or a forward that fails, is
//!   retried here until [`WRITE_DEADLINE`]; if it still has no answer, its
//!   outcome is unknown and the error says so (retrying is safe).
//! - Reads go to the leader, and fall back to this coordinator's own state
//!   when no leader answers; such an answer is marked [`Staleness`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gantry_common::api::{
    ApiFailure, ApiRequest, ApiResponse, ClusterStatus, FailureKind, MemberRole, MemberView, Staleness,
    SubmitResult,
};
use gantry_common::wire::LeaderHint;
use openraft::{BasicNode, ChangeMembers, ServerState};

use super::{Service, WriteError};
use crate::peer::messages::{PeerRequest, PeerResponse};
use crate::state::{Command, CommandResponse, RejectKind};

/// How long a write is retried (leader elections, failed forwards) before
/// its outcome is reported unknown.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a read waits for a leader before answering from local state.
const READ_WAIT: Duration = Duration::from_secs(2);
/// Timeout of a request forwarded to the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// A leader that has not heard from a majority for this long answers reads
/// as stale (a few election timeouts).
const QUORUM_SILENCE: Duration = Duration::from_secs(2);

/// An answer and whether it is stale.
#[derive(Debug)]
pub struct Answer {
    pub response: ApiResponse,
    pub stale: Option<Staleness>,
}

/// How one attempt went.
enum Attempt {
    Done(Result<ApiResponse, ApiFailure>),
    /// Leadership moved (or none yet): nothing was written; try again.
    NotLeader,
    /// The forward broke: it may or may not have been applied.
    Lost(String),
}

impl Service {
    /// Serves an operator request wherever it arrived. `key` is the
    /// client's idempotency key for a write (one is made when it has none).
    pub async fn handle_api(&self, req: ApiRequest, key: Option<String>) -> Result<Answer, ApiFailure> {
        if let Some(k) = &key {
            gantry_common::api::validate_idempotency_key(k)?;
        }
        if req == ApiRequest::LocalStatus {
            let response = ApiResponse::Status(self.status().await);
            return Ok(Answer { response, stale: None });
        }
        if let ApiRequest::SubmitWorkloads { specs } = &req {
            super::batch::check(specs)?;
        }
        if req.is_write() {
            let key = key.unwrap_or_else(new_key);
            return self.write_api(req, key).await.map(|response| Answer { response, stale: None });
        }
        self.read_api(req).await
    }

    pub(super) async fn write_api(&self, req: ApiRequest, key: String) -> Result<ApiResponse, ApiFailure> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut lost: Option<String> = None;
        loop {
            let attempt = if self.is_leader() {
                self.execute(req.clone(), Some(&key)).await
            } else {
                match self.leader_hint() {
                    Some(hint) => self.forward(&hint, req.clone(), Some(&key)).await,
                    None => Attempt::NotLeader,
                }
            };
            match attempt {
                Attempt::Done(result) => return result,
                Attempt::Lost(reason) => lost = Some(reason),
                Attempt::NotLeader => {}
            }
            if Instant::now() >= deadline {
                return Err(match lost {
                    Some(reason) => ApiFailure::new(
                        FailureKind::OutcomeUnknown,
                        format!(
                            "the outcome of this write is unknown: it reached a leader that then could not \
                             answer ({reason}); it may have been applied. Retrying it with the same \
                             idempotency key is safe (gantryctl does so)"
                        ),
                    ),
                    None => ApiFailure::new(
                        FailureKind::Unavailable,
                        format!(
                            "no leader elected within {}s; nothing was written. Is a majority of \
                             coordinators up? (`gantryctl status --local` on each)",
                            WRITE_DEADLINE.as_secs()
                        ),
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(if lost.is_some() { 200 } else { 50 })).await;
        }
    }

    async fn read_api(&self, req: ApiRequest) -> Result<Answer, ApiFailure> {
        let deadline = Instant::now() + READ_WAIT;
        let reason = loop {
            if self.is_leader() {
                // A leader cut off from its majority still thinks it leads
                // (openraft 0.9 has no check-quorum): its answer is stale.
                if let Some(ms) = self.quorum_silence_ms() {
                    break format!(
                        "this coordinator leads but has not heard from a majority for {:.1}s",
                        ms as f64 / 1e3
                    );
                }
                if let Attempt::Done(result) = self.execute(req.clone(), None).await {
                    return result.map(|response| Answer { response, stale: None });
                }
            }
            match self.leader_hint() {
                Some(hint) if hint.id != self.id => match self.forward(&hint, req.clone(), None).await {
                    Attempt::Done(result) => return result.map(|response| Answer { response, stale: None }),
                    Attempt::Lost(reason) => break format!("the leader did not answer ({reason})"),
                    Attempt::NotLeader => {}
                },
                _ => {}
            }
            if Instant::now() >= deadline {
                break "no leader".to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let stale = Staleness {
            answered_by: self.id,
            applied_index: self.state.last_applied(),
            leader_seen_s_ago: self.leader_seen.seconds_ago(Instant::now()),
            reason,
        };
        let response = match self.execute_read(req).await? {
            ApiResponse::Status(mut s) => {
                s.stale = Some(stale.clone());
                ApiResponse::Status(s)
            }
            other => other,
        };
        Ok(Answer { response, stale: Some(stale) })
    }

    /// Serves a request forwarded by another coordinator (leader only).
    pub async fn handle_forwarded(&self, req: ApiRequest, key: Option<String>) -> PeerResponse {
        if !self.is_leader() {
            return PeerResponse::NotLeader;
        }
        match self.execute(req, key.as_deref()).await {
            Attempt::Done(result) => PeerResponse::Api(result),
            Attempt::NotLeader | Attempt::Lost(_) => PeerResponse::NotLeader,
        }
    }

    async fn forward(&self, hint: &LeaderHint, req: ApiRequest, key: Option<&str>) -> Attempt {
        let req = match req {
            // A leader of the previous protocol cannot read a batch.
            ApiRequest::SubmitWorkloads { specs }
                if !self.leader_speaks(&hint.addr, super::batch::BATCH_PROTOCOL).await =>
            {
                let Some(key) = key else {
                    return Attempt::Done(Err(ApiFailure::new(
                        FailureKind::Internal,
                        "a batch without an idempotency key",
                    )));
                };
                return Attempt::Done(self.submit_one_by_one(specs, key).await);
            }
            req => req,
        };
        let forwarded = PeerRequest::Forward { req, key: key.map(str::to_string) };
        match self.peers.call(&hint.addr, &forwarded, FORWARD_TIMEOUT).await {
            Ok(PeerResponse::Api(result)) => Attempt::Done(result),
            Ok(PeerResponse::NotLeader) => Attempt::NotLeader,
            Ok(other) => Attempt::Lost(format!("leader {} answered unexpectedly: {other:?}", hint.id)),
            // Not even connected: the request never left, so nothing was written.
            Err(e) if e.is_unreachable() && !matches!(e, gantry_common::rpc::RpcError::Timeout { .. }) => {
                Attempt::NotLeader
            }
            Err(e) => Attempt::Lost(format!("forwarding to leader {} at {}: {e}", hint.id, hint.addr)),
        }
    }

    /// Executes a request here, on the leader.
    async fn execute(&self, req: ApiRequest, key: Option<&str>) -> Attempt {
        if !req.is_write() {
            return Attempt::Done(self.execute_read(req).await);
        }
        let keyed = |command: Command| match key {
            Some(key) => Command::Keyed { key: key.to_string(), command: Box::new(command) },
            None => command,
        };
        let committed = match req {
            ApiRequest::SetNodeLabels { node, set, remove } => {
                self.commit(keyed(Command::SetNodeLabels { node, set, remove })).await
            }
            ApiRequest::StopWorkload { name } => self.commit(keyed(Command::StopWorkload { name })).await,
            ApiRequest::DrainNode { node, drain } => {
                self.commit(keyed(Command::DrainNode { node, drain })).await
            }
            ApiRequest::SubmitWorkload { spec } => {
                if let Err(e) = spec.validate() {
                    return Attempt::Done(Err(ApiFailure {
                        kind: FailureKind::Invalid,
                        message: e.to_string(),
                        field: Some(e.field),
                    }));
                }
                let workload = spec.name.clone();
                match self.write(keyed(Command::SubmitWorkload { spec: *spec })).await {
                    Ok((log_index, response)) => {
                        return Attempt::Done(match unrepeat(response) {
                            CommandResponse::Workload { version, changed } => {
                                Ok(ApiResponse::Submitted(SubmitResult {
                                    workload,
                                    version,
                                    changed,
                                    log_index,
                                }))
                            }
                            other => Err(ApiFailure::new(
                                FailureKind::Internal,
                                format!("unexpected answer to a submission: {other:?}"),
                            )),
                        })
                    }
                    Err(e) => Err(e),
                }
            }
            ApiRequest::SubmitWorkloads { specs } => {
                return match self.submit_batch_here(specs, key).await {
                    Ok(result) => Attempt::Done(result),
                    Err(WriteError::NotLeader { .. }) => Attempt::NotLeader,
                    Err(WriteError::Rejected { kind, reason }) => Attempt::Done(Err(rejection(kind, reason))),
                    Err(WriteError::Raft(e)) => Attempt::Lost(e),
                }
            }
            // Membership changes are openraft's own entries: not keyed, but
            // each refuses a repeat by itself (already a member, not a member).
            ApiRequest::AddMember { id, addr } => return Attempt::Done(self.add_member(id, addr).await),
            ApiRequest::RemoveMember { id } => return Attempt::Done(self.remove_member(id).await),
            other => {
                return Attempt::Done(Err(ApiFailure::new(
                    FailureKind::Internal,
                    format!("not a write: {other:?}"),
                )))
            }
        };
        match committed {
            Ok(r) => Attempt::Done(Ok(r)),
            Err(WriteError::NotLeader { .. }) => Attempt::NotLeader,
            Err(WriteError::Rejected { kind, reason }) => Attempt::Done(Err(rejection(kind, reason))),
            // openraft gave up on the entry (e.g. it stepped down before it
            // committed): it may still commit under the next leader.
            Err(WriteError::Raft(e)) => Attempt::Lost(e),
        }
    }

    /// How long this leader has not heard from a majority, when that is
    /// longer than [`QUORUM_SILENCE`].
    pub fn quorum_silence_ms(&self) -> Option<u64> {
        let ms = self.raft.metrics().borrow().millis_since_quorum_ack?;
        (ms > QUORUM_SILENCE.as_millis() as u64).then_some(ms)
    }

    async fn commit(&self, command: Command) -> Result<ApiResponse, WriteError> {
        let (log_index, _) = self.write(command).await?;
        Ok(ApiResponse::Committed { log_index })
    }

    /// Reads, from this coordinator's state (and, on the leader, telemetry).
    async fn execute_read(&self, req: ApiRequest) -> Result<ApiResponse, ApiFailure> {
        let now = Instant::now();
        Ok(match req {
            ApiRequest::Status | ApiRequest::LocalStatus => ApiResponse::Status(self.status().await),
            ApiRequest::Nodes => {
                let telemetry = self.telemetry.lock();
                let excluded = self.scheduler_stats.excluded();
                ApiResponse::Nodes(
                    self.state.read(|s| crate::views::node_views(s, &telemetry, &excluded, now)),
                )
            }
            ApiRequest::Gpus => {
                let telemetry = self.telemetry.lock();
                ApiResponse::Gpus(self.state.read(|s| crate::views::gpu_views(s, &telemetry)))
            }
            ApiRequest::Workloads => ApiResponse::Workloads(self.state.read(crate::views::workload_views)),
            ApiRequest::Workload { name } => {
                match self.state.read(|s| crate::views::workload_detail(s, &name)) {
                    Some(d) => ApiResponse::Workload(Box::new(d)),
                    None => return Err(ApiFailure::not_found(format!("workload {name:?} does not exist"))),
                }
            }
            ApiRequest::Allocs { workload } => {
                ApiResponse::Allocs(self.state.read(|s| crate::views::alloc_views(s, workload.as_deref())))
            }
            other => return Err(ApiFailure::new(FailureKind::Internal, format!("not a read: {other:?}"))),
        })
    }

    async fn add_member(&self, id: u64, addr: String) -> Result<ApiResponse, ApiFailure> {
        let field = |f: &str, message: String| ApiFailure {
            kind: FailureKind::Invalid,
            message,
            field: Some(f.into()),
        };
        if id == 0 {
            return Err(field("id", "id: must be a positive number".into()));
        }
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(field("addr", format!("addr: {addr:?} is not IP:PORT")));
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        if membership.membership().get_node(&id).is_some() {
            return Err(ApiFailure::new(
                FailureKind::Conflict,
                format!("id: coordinator {id} is already a member"),
            ));
        }
        // A learner first, so the new member catches up before it counts in the quorum.
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(|e| ApiFailure::new(FailureKind::Unavailable, format!("adding {id} as learner: {e}")))?;
        let resp = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| {
                ApiFailure::new(FailureKind::Unavailable, format!("promoting {id} to voter: {e}"))
            })?;
        Ok(ApiResponse::Committed { log_index: resp.log_id.index })
    }

    async fn remove_member(&self, id: u64) -> Result<ApiResponse, ApiFailure> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<u64> = membership.membership().voter_ids().collect();
        if membership.membership().get_node(&id).is_none() {
            return Err(ApiFailure::not_found(format!("id: coordinator {id} is not a member")));
        }
        if voters.contains(&id) && voters.len() == 1 {
            return Err(ApiFailure::new(
                FailureKind::Conflict,
                format!("id: coordinator {id} is the last voter; a cluster cannot remove its last member"),
            ));
        }
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let resp = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| ApiFailure::new(FailureKind::Unavailable, format!("removing {id}: {e}")))?;
        Ok(ApiResponse::Committed { log_index: resp.log_id.index })
    }

    /// The cluster as this coordinator sees it. Members it has no live
    /// connection to are marked unreachable.
    async fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let leading = m.current_leader == Some(self.id) && m.state == ServerState::Leader;
        let committed = self.raft.with_raft_state(|st| st.committed.map(|l| l.index)).await.ok().flatten();
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
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
                let reachable = *id == self.id || self.peers.is_connected(&node.addr);
                let protocol = if *id == self.id {
                    Some(self.peers.max_protocol())
                } else {
                    self.peers.version_of(&node.addr)
                };
                MemberView {
                    protocol,
                    id: *id,
                    address: node.addr.clone(),
                    role,
                    term: m.current_term,
                    commit_index,
                    reachable,
                }
            })
            .collect();
        ClusterStatus {
            answered_by: self.id,
            leader: m.current_leader,
            term: m.current_term,
            commit_index: committed,
            last_applied: m.last_applied.map(|l| l.index),
            members,
            stale: None,
        }
    }
}

/// A keyed write answered a second time carries its first answer.
fn unrepeat(response: CommandResponse) -> CommandResponse {
    match response {
        CommandResponse::Repeat(first) => *first,
        other => other,
    }
}

/// A refusal from `apply`, by the kind `apply` gave it.
fn rejection(kind: RejectKind, reason: String) -> ApiFailure {
    ApiFailure::new(failure_kind(kind), reason)
}

/// The API failure each kind of refusal is (the admin socket then maps
/// it to an HTTP status, `admin::status_of`).
pub fn failure_kind(kind: RejectKind) -> FailureKind {
    match kind {
        RejectKind::Invalid => FailureKind::Invalid,
        RejectKind::NotFound => FailureKind::NotFound,
        RejectKind::Conflict => FailureKind::Conflict,
    }
}

/// A fresh idempotency key (128 random bits, hex).
pub fn new_key() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
