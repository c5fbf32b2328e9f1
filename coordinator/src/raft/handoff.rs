//! What a leader does before it stops (SIGTERM), so that the next leader
//! takes over with everything this one committed.
//!
//! openraft 0.9 has no leadership transfer (0.10 adds
//! `trigger().transfer_leader()`), and a follower refuses to vote while its
//! leader lease (`election_timeout_max`, counted from the last heartbeat it
//! received) runs, so no successor can be elected early. What a leaving
//! leader can do, and does here:
//!
//! 1. wait (bounded) until every voter has replicated its whole log, so
//!    whichever follower wins the next election holds every entry this
//!    leader accepted, acknowledged or not;
//! 2. send one more heartbeat, which carries the commit index, so followers
//!    apply the last entries before the leader goes;
//! 3. then the caller closes the endpoint and shuts Raft down. Followers see
//!    the heartbeats stop; once their lease runs out (about
//!    `election_timeout_max`), the first one whose election timer fires is
//!    elected. `election` breaks split votes as after a crash.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tracing::{info, warn};

use super::{NodeId, Raft};

/// How the leaving leader left things.
#[derive(Debug, PartialEq, Eq)]
pub enum Handoff {
    /// This coordinator was not the leader: nothing to hand over.
    NotLeader,
    /// Every voter holds the whole log up to `index`.
    CaughtUp { index: Option<u64> },
    /// These voters were still behind when `patience` ran out (down or slow).
    Lagging { index: Option<u64>, behind: BTreeSet<NodeId> },
}

/// Runs steps 1 and 2 above; returns within about `patience`.
pub async fn step_down(raft: &Raft, id: NodeId, patience: Duration) -> Handoff {
    let deadline = Instant::now() + patience;
    let mut metrics = raft.metrics();
    let outcome = loop {
        let behind = {
            let m = metrics.borrow_and_update();
            if m.state != ServerState::Leader || m.current_leader != Some(id) {
                return Handoff::NotLeader;
            }
            let replication = m.replication.clone().unwrap_or_default();
            let behind: BTreeSet<NodeId> = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != id)
                .filter(|v| {
                    let matched = replication.get(v).cloned().flatten().map(|l| l.index);
                    matched < m.last_log_index
                })
                .collect();
            if behind.is_empty() {
                break Handoff::CaughtUp { index: m.last_log_index };
            }
            (behind, m.last_log_index)
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, metrics.changed()).await.is_err() {
            break Handoff::Lagging { index: behind.1, behind: behind.0 };
        }
    };
    // Carries the leader's commit index to the followers.
    if let Err(e) = raft.trigger().heartbeat().await {
        warn!("step down: final heartbeat: {e}");
    }
    // The heartbeat is sent by openraft's replication tasks; give them one
    // heartbeat interval to put it on the wire before the endpoint closes.
    let interval = Duration::from_millis(raft.config().heartbeat_interval).min(Duration::from_millis(200));
    tokio::time::sleep(interval).await;
    match &outcome {
        Handoff::CaughtUp { index } => {
            info!(id, ?index, "leader stepping down: every voter holds the whole log")
        }
        Handoff::Lagging { index, behind } => {
            warn!(id, ?index, ?behind, "leader stepping down: some voters were still behind")
        }
        Handoff::NotLeader => {}
    }
    outcome
}
