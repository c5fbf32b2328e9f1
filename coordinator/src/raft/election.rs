//! When this coordinator starts an election: openraft's rule, with a fresh
//! random timeout for every campaign.
//!
//! openraft 0.9 decides elections on a tick of 1.5 heartbeat intervals
//! (300 ms with our defaults) against one election timeout drawn once per
//! process. Two survivors whose draws fall on the same tick split their votes
//! and keep splitting them in lockstep, because neither draw ever changes
//! (fixed upstream only in the 0.10 alphas). So openraft's own elections stay
//! off (`Config::enable_elect = false`) and this task runs them:
//!
//! - the rule is openraft's (`handle_tick_election`): a voter that is not
//!   the leader campaigns once its vote has not been touched for the leader
//!   lease (`election_timeout_max`) plus its election timeout when it knew a
//!   committed leader, or for the election timeout alone when it did not (a
//!   campaign that was not won); a single voter campaigns at once;
//! - the election timeout is drawn afresh from `[min, max)` every time the
//!   vote is touched (a heartbeat from the leader, a vote given, a campaign),
//!   so a split vote is followed by two different waits;
//! - it is checked every [`POLL`], not on a 300 ms tick.
//!
//! A restarted voter first waits for the leader ([`super::rejoin`]).
//! [`decide`] is the pure part; [`run`] asks Raft and acts.

use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;
use tracing::info;

use super::{rejoin, NodeId, Raft};

/// How often the rule is checked.
pub const POLL: Duration = Duration::from_millis(20);

/// Raft's view that the rule needs, as of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub state: ServerState,
    pub voter: bool,
    pub voters: usize,
    /// The vote names a leader that a quorum granted.
    pub committed: bool,
    /// Since the vote was last touched; `None` if never since start-up.
    pub vote_age: Option<Duration>,
}

/// The timing the rule uses: `lease` is `election_timeout_max`, `timeout`
/// this round's draw from `[election_timeout_min, election_timeout_max)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub lease: Duration,
    pub timeout: Duration,
}

/// Whether to campaign now.
pub fn decide(seen: &Seen, timing: Timing) -> bool {
    if seen.state == ServerState::Leader || !seen.voter {
        return false;
    }
    if seen.voters == 1 {
        return seen.state != ServerState::Candidate;
    }
    let wait = if seen.committed { timing.lease + timing.timeout } else { timing.timeout };
    // Never touched since start-up: as openraft, count it as long ago.
    seen.vote_age.is_none_or(|age| age >= wait)
}

/// A fresh election timeout in `[min, max)`; `unit` is uniform in `[0, 1)`.
pub fn draw(min: Duration, max: Duration, unit: f64) -> Duration {
    let spread = max.saturating_sub(min);
    if spread.is_zero() {
        return min;
    }
    // Rounding can reach the end of the range: keep it open.
    let last = spread - Duration::from_nanos(1);
    min + spread.mul_f64(unit.clamp(0.0, 1.0)).min(last)
}

/// Runs elections for this coordinator until `shutdown`.
pub async fn run(
    raft: Raft,
    id: NodeId,
    min: Duration,
    max: Duration,
    rejoin_grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if !rejoin::wait_for_leader(&raft, id, rejoin_grace, shutdown.clone()).await {
        return;
    }
    let mut timing = Timing { lease: max, timeout: draw(min, max, fastrand::f64()) };
    let mut last_touched = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        // The leader needs nothing more: skip asking Raft's core.
        if raft.metrics().borrow().state == ServerState::Leader {
            continue;
        }
        let Ok((seen, touched)) = raft
            .with_raft_state(move |s| {
                let membership = s.membership_state.effective();
                let (mut voter, mut voters) = (false, 0);
                for v in membership.voter_ids() {
                    voter |= v == id;
                    voters += 1;
                }
                let seen = Seen {
                    state: s.server_state,
                    voter,
                    voters,
                    committed: s.vote_ref().is_committed(),
                    vote_age: s.vote_last_modified().map(|t| t.elapsed()),
                };
                (seen, s.vote_last_modified())
            })
            .await
        else {
            // Raft's core has stopped; the coordinator exits on that.
            return;
        };
        if touched != last_touched {
            last_touched = touched;
            timing.timeout = draw(min, max, fastrand::f64());
        }
        if decide(&seen, timing) {
            info!(id, state = ?seen.state, quiet = ?seen.vote_age, timeout = ?timing.timeout, "starting an election");
            let _ = raft.trigger().elect().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(600);
    const TIMEOUT: Duration = Duration::from_millis(400);
    const TIMING: Timing = Timing { lease: LEASE, timeout: TIMEOUT };

    fn follower(committed: bool, age_ms: Option<u64>) -> Seen {
        Seen {
            state: ServerState::Follower,
            voter: true,
            voters: 3,
            committed,
            vote_age: age_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn a_follower_of_a_leader_waits_out_the_lease_and_its_timeout() {
        assert!(!decide(&follower(true, Some(999)), TIMING));
        assert!(decide(&follower(true, Some(1000)), TIMING));
    }

    #[test]
    fn without_a_committed_leader_only_the_timeout_is_waited() {
        // A campaign that was not won, or a vote given to a candidate.
        assert!(!decide(&follower(false, Some(399)), TIMING));
        assert!(decide(&follower(false, Some(400)), TIMING));
        let candidate = Seen { state: ServerState::Candidate, ..follower(false, Some(400)) };
        assert!(decide(&candidate, TIMING));
    }

    #[test]
    fn a_vote_untouched_since_start_up_counts_as_long_ago() {
        assert!(decide(&follower(true, None), TIMING));
    }

    #[test]
    fn leaders_and_learners_never_campaign() {
        let leader = Seen { state: ServerState::Leader, ..follower(true, Some(60_000)) };
        assert!(!decide(&leader, TIMING));
        let learner = Seen { state: ServerState::Learner, voter: false, ..follower(true, Some(60_000)) };
        assert!(!decide(&learner, TIMING));
    }

    #[test]
    fn a_single_voter_campaigns_at_once_but_not_twice() {
        let alone = Seen { voters: 1, ..follower(true, Some(0)) };
        assert!(decide(&alone, TIMING));
        let campaigning = Seen { state: ServerState::Candidate, ..alone };
        assert!(!decide(&campaigning, TIMING));
    }

    #[test]
    fn draws_stay_in_the_range_and_differ() {
        let (min, max) = (Duration::from_millis(250), Duration::from_millis(500));
        assert_eq!(draw(min, max, 0.0), min);
        assert!(draw(min, max, 1.0) < max);
        assert!(draw(min, max, 0.999_999) < max);
        assert_eq!(draw(min, max, 0.5), Duration::from_millis(375));
        // Out-of-range input is clamped, not trusted.
        assert_eq!(draw(min, max, -3.0), min);
        // Two survivors that draw differently wait differently: no lockstep.
        let a = draw(min, max, 0.1);
        let b = draw(min, max, 0.7);
        assert!(b > a + Duration::from_millis(100));
    }
}
