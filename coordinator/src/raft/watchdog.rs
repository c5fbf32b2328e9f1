//! Election watchdog.
//!
//! openraft 0.9 draws one election timeout per process, so two surviving
//! voters can keep splitting their votes in lockstep. When no leader has been
//! seen for a few election timeouts, this waits a fresh random delay and then
//! starts an election itself, which breaks the symmetry.

use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::watch;
use tracing::info;

use super::{NodeId, Raft};

/// How many maximum election timeouts without a leader before stepping in.
const PATIENCE: u32 = 3;

/// `rejoin_grace`: a restarted voter's wait for the leader
/// ([`super::rejoin`]), added to the patience once at start.
pub async fn run(
    raft: Raft,
    id: NodeId,
    election_timeout_max: Duration,
    rejoin_grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_leader = Instant::now() + rejoin_grace;
    let poll = election_timeout_max / 4;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if has_leader(&raft) || !is_voter(&raft, id) {
            last_leader = Instant::now();
            continue;
        }
        if Instant::now() < last_leader + election_timeout_max * PATIENCE {
            continue;
        }
        let max_ms = election_timeout_max.as_millis().max(1) as u64;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..max_ms))).await;
        if !has_leader(&raft) {
            info!(id, "no leader for {:?}; starting an election", last_leader.elapsed());
            let _ = raft.trigger().elect().await;
        }
        last_leader = Instant::now();
    }
}

fn has_leader(raft: &Raft) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    m.current_leader.is_some()
        && matches!(m.state, ServerState::Leader | ServerState::Follower | ServerState::Learner)
}

fn is_voter(raft: &Raft, id: NodeId) -> bool {
    raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == id)
}
