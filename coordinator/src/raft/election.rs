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
//! - it is checked every [`POLL`], not on a 300 ms tick;
//! - before it campaigns, a voter asks the others for a pre-vote (as
//!   openraft 0.10 and etcd do): would they vote for it now? A voter that
//!   still hears its leader within the lease, or holds a longer log, says
//!   no. Only with a majority of yeses (its own included) does it start the
//!   election, so one follower that missed heartbeats (a loaded host, a
//!   one-sided partition) no longer raises the term and deposes a leader
//!   the others still follow. Peers that speak a protocol older than
//!   [`PRE_VOTE_PROTOCOL`] are counted as yeses: with them the cluster
//!   behaves as before.
//!
//! A restarted voter first waits for the leader ([`super::rejoin`]).
//! [`decide`], [`grant`] and [`won`] are the pure part; [`run`] asks Raft
//! and the peers, and acts.

use std::time::Duration;

use openraft::{LogId, ServerState};
use tokio::sync::watch;
use tracing::{debug, info};

use super::log_store::LogStore;
use super::{rejoin, NodeId, Raft};
use crate::peer::client::PeerClient;
use crate::peer::messages::{PeerRequest, PeerResponse, PreVoteRequest};

/// The first protocol version whose coordinators answer pre-votes.
pub const PRE_VOTE_PROTOCOL: u32 = 4;

/// How long a pre-vote waits for each answer, at most.
const PRE_VOTE_WAIT: Duration = Duration::from_millis(300);

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

/// Whether a voter whose view is `seen` (`mine`: its last log entry)
/// would vote for a candidate whose last entry is `theirs` if it
/// campaigned now: not while it leads or still hears a leader within the
/// `lease`, and not for a shorter log (Raft's up-to-date rule).
pub fn grant(
    seen: &Seen,
    lease: Duration,
    mine: Option<LogId<NodeId>>,
    theirs: Option<LogId<NodeId>>,
) -> bool {
    let hears_leader = seen.committed && seen.vote_age.is_some_and(|age| age < lease);
    seen.state != ServerState::Leader && !hears_leader && theirs >= mine
}

/// Whether `yes` pre-votes (the candidate's own included) of `voters` are a majority.
pub fn won(yes: usize, voters: usize) -> bool {
    yes * 2 > voters
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

/// What one look at Raft's state gives: the view and when the vote was last touched.
type Look = (Seen, Option<tokio::time::Instant>);

async fn look(raft: &Raft, id: NodeId) -> Option<Look> {
    raft.with_raft_state(move |s| {
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
    .ok()
}

/// Answers a pre-vote from another coordinator.
pub async fn answer_pre_vote(raft: &Raft, log: &LogStore, id: NodeId, req: &PreVoteRequest) -> bool {
    let lease = Duration::from_millis(raft.config().election_timeout_max);
    match look(raft, id).await {
        Some((seen, _)) => grant(&seen, lease, log.last_log_id().await, req.last_log_id),
        None => false,
    }
}

/// Asks every other voter for a pre-vote; whether a majority said yes.
async fn pre_vote(raft: &Raft, peers: &PeerClient, id: NodeId, last_log_id: Option<LogId<NodeId>>) -> bool {
    if peers.max_protocol() < PRE_VOTE_PROTOCOL {
        return true;
    }
    let membership = raft.metrics().borrow().membership_config.clone();
    let voters: Vec<(NodeId, String)> = membership
        .membership()
        .voter_ids()
        .filter(|v| *v != id)
        .filter_map(|v| membership.membership().get_node(&v).map(|n| (v, n.addr.clone())))
        .collect();
    let total = voters.len() + 1;
    let mut asks = tokio::task::JoinSet::new();
    for (peer, addr) in voters {
        let peers = peers.clone();
        let req = PeerRequest::PreVote(PreVoteRequest { candidate: id, last_log_id });
        asks.spawn(async move {
            let yes = match peers.version_with(&addr, PRE_VOTE_WAIT).await {
                // An older peer has no pre-vote: as before, it does not hold us back.
                Some(v) if v < PRE_VOTE_PROTOCOL => true,
                None => false,
                Some(_) => matches!(
                    peers.call(&addr, &req, PRE_VOTE_WAIT).await,
                    Ok(PeerResponse::PreVote { granted: true })
                ),
            };
            (peer, yes)
        });
    }
    let mut yes = 1;
    let mut no = Vec::new();
    while let Some(answer) = asks.join_next().await {
        match answer {
            Ok((_, true)) => yes += 1,
            Ok((peer, false)) => no.push(peer),
            Err(_) => {}
        }
        if won(yes, total) {
            return true;
        }
    }
    debug!(id, yes, of = total, ?no, "pre-vote not granted");
    false
}

/// Runs elections for this coordinator until `shutdown`.
pub async fn run(
    raft: Raft,
    peers: PeerClient,
    log: LogStore,
    id: NodeId,
    (min, max): (Duration, Duration),
    rejoin_grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if !rejoin::wait_for_leader(&raft, id, rejoin_grace, shutdown.clone()).await {
        return;
    }
    let mut timing = Timing { lease: max, timeout: draw(min, max, fastrand::f64()) };
    let mut last_touched = None;
    // After a pre-vote that was not granted: not before this again.
    let mut next_try = tokio::time::Instant::now();
    let mut refused_in_a_row = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        // The leader needs nothing more: skip asking Raft's core.
        if raft.metrics().borrow().state == ServerState::Leader {
            refused_in_a_row = 0;
            continue;
        }
        let Some((seen, touched)) = look(&raft, id).await else {
            // Raft's core has stopped; the coordinator exits on that.
            return;
        };
        if touched != last_touched {
            last_touched = touched;
            timing.timeout = draw(min, max, fastrand::f64());
            refused_in_a_row = 0;
        }
        if !decide(&seen, timing) || tokio::time::Instant::now() < next_try {
            continue;
        }
        if seen.voters > 1 && !pre_vote(&raft, &peers, id, log.last_log_id().await).await {
            refused_in_a_row += 1;
            if refused_in_a_row == 1 {
                info!(id, quiet = ?seen.vote_age, "no leader heard, but the other voters do not agree: not campaigning");
            }
            timing.timeout = draw(min, max, fastrand::f64());
            next_try = tokio::time::Instant::now() + timing.timeout;
            continue;
        }
        info!(id, state = ?seen.state, quiet = ?seen.vote_age, timeout = ?timing.timeout, "starting an election");
        let _ = raft.trigger().elect().await;
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

    fn log(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(openraft::CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn a_voter_that_still_hears_its_leader_refuses_a_pre_vote() {
        assert!(!grant(&follower(true, Some(100)), LEASE, log(2, 9), log(2, 9)));
        // Its lease has run out: yes.
        assert!(grant(&follower(true, Some(600)), LEASE, log(2, 9), log(2, 9)));
        // A leader never says yes.
        let leader = Seen { state: ServerState::Leader, ..follower(true, Some(60_000)) };
        assert!(!grant(&leader, LEASE, log(2, 9), log(2, 9)));
        // No committed leader (a campaign going on, or never heard since start-up): yes.
        assert!(grant(&follower(false, Some(0)), LEASE, log(2, 9), log(2, 9)));
        assert!(grant(&follower(true, None), LEASE, None, None));
    }

    #[test]
    fn a_pre_vote_for_a_shorter_log_is_refused() {
        let quiet = follower(true, Some(5_000));
        assert!(!grant(&quiet, LEASE, log(2, 9), log(2, 8)));
        assert!(!grant(&quiet, LEASE, log(3, 1), log(2, 50)), "a later term beats a longer log");
        assert!(!grant(&quiet, LEASE, log(2, 9), None));
        assert!(grant(&quiet, LEASE, log(2, 9), log(2, 10)));
        assert!(grant(&quiet, LEASE, None, None));
    }

    #[test]
    fn a_pre_vote_needs_a_strict_majority_of_the_voters() {
        assert!(won(1, 1));
        assert!(!won(1, 3));
        assert!(won(2, 3));
        assert!(!won(2, 4));
        assert!(won(3, 5));
        assert!(!won(2, 5));
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
