//! A coordinator that restarts into a running cluster waits for the leader
//! before it may start an election.
//!
//! openraft 0.9 has no pre-vote. A restarted follower's election timer runs
//! from start-up (leader lease + election timeout, about 1 s by default),
//! and the leader may take longer to reach it: its connector backs off while
//! the peer is down, and a QUIC handshake to an address that was dead waits
//! for a retransmission. The restarted node then campaigns with a higher
//! term, which deposes a healthy leader (seen as a rare test failure: the
//! restarted node sometimes came back as leader).
//!
//! So the election task ([`super::election`]) first waits in
//! [`wait_for_leader`] until the leader has reached this node, or for
//! [`REJOIN_GRACE`] without it (the whole cluster restarted, or the leader
//! really is gone). A new cluster, or one with a single voter, gets no
//! grace.

use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use super::{NodeId, Raft};

/// Longest a restarted voter waits to hear from a leader before it may
/// campaign: several of the leader's reconnect attempts.
pub const REJOIN_GRACE: Duration = Duration::from_secs(3);

/// The grace this coordinator gets: [`REJOIN_GRACE`] when it restarts from
/// a store that already belongs to a cluster of several voters, else none.
/// Asked of Raft's own state: the metrics may not be published yet just
/// after start-up.
pub async fn grace_for(raft: &Raft, was_initialized: bool) -> Duration {
    let voters =
        raft.with_raft_state(|s| s.membership_state.effective().voter_ids().count()).await.unwrap_or(0);
    if was_initialized && voters > 1 {
        REJOIN_GRACE
    } else {
        Duration::ZERO
    }
}

/// How often the grace checks whether the leader has reached this node.
const POLL: Duration = Duration::from_millis(50);

/// Returns once the leader has reached this node since it started, or
/// after `grace`: `false` if the coordinator stops first. "Reached" is a
/// committed vote touched after start-up (every AppendEntries or heartbeat
/// from the leader touches it): the leader in the metrics is no proof,
/// since it comes from the vote stored before the restart.
pub async fn wait_for_leader(
    raft: &Raft,
    id: NodeId,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    if !grace.is_zero() {
        let at_start = raft.with_raft_state(|s| s.vote_last_modified()).await.ok().flatten();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                _ = shutdown.wait_for(|stop| *stop) => return false,
            }
            let Ok((touched, committed)) =
                raft.with_raft_state(|s| (s.vote_last_modified(), s.vote_ref().is_committed())).await
            else {
                return false;
            };
            if committed && touched > at_start {
                info!(id, "the leader reached this node; elections allowed");
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                info!(id, ?grace, "no leader reached this node since it restarted; elections allowed");
                break;
            }
        }
    }
    true
}
