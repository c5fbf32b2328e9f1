//! Which nodes are alive, decided from heartbeats. Pure: time is an argument.
//!
//! ```text
//!   heartbeat(node, now) ─┐
//!   became_leader(now) ───┼─► Liveness ──► evaluate(now, replicated statuses)
//!                         │                   └─► [(node, Down|Ready)] to commit through Raft
//! ```
//!
//! Heartbeats are not replicated, so a new leader knows nothing of them: it
//! gives every node it has not heard from yet a failover grace (at least the
//! deadline) from the moment it took over before declaring it down. Once a
//! node has been heard from, the deadline alone applies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gantry_common::model::NodeStatus;

#[derive(Debug)]
pub struct Liveness {
    deadline: Duration,
    /// How long a new leader waits for a node's first heartbeat.
    failover_grace: Duration,
    leader_since: Option<Instant>,
    last_seen: HashMap<String, Instant>,
}

impl Liveness {
    /// `failover_grace` shorter than `deadline` counts as `deadline`.
    pub fn new(deadline: Duration, failover_grace: Duration) -> Liveness {
        Liveness {
            deadline,
            failover_grace: failover_grace.max(deadline),
            leader_since: None,
            last_seen: HashMap::new(),
        }
    }

    /// This coordinator became leader at `now`: start every node's clock.
    pub fn became_leader(&mut self, now: Instant) {
        self.leader_since = Some(now);
        self.last_seen.clear();
    }

    /// This coordinator is no longer leader.
    pub fn lost_leadership(&mut self) {
        self.leader_since = None;
        self.last_seen.clear();
    }

    pub fn is_leading(&self) -> bool {
        self.leader_since.is_some()
    }

    /// A heartbeat (or registration) from `node` arrived at `now`.
    pub fn heartbeat(&mut self, node: &str, now: Instant) {
        match self.last_seen.get_mut(node) {
            Some(seen) => *seen = (*seen).max(now),
            None => {
                self.last_seen.insert(node.to_string(), now);
            }
        }
    }

    /// When the leader last heard from `node` during this leadership.
    pub fn last_seen(&self, node: &str) -> Option<Instant> {
        self.last_seen.get(node).copied()
    }

    /// Forgets a node that left the state.
    pub fn forget(&mut self, node: &str) {
        self.last_seen.remove(node);
    }

    /// Status changes to commit, given the replicated status of every node.
    /// Empty when this coordinator is not leading.
    ///
    /// When more than [`MASS_SILENCE_SHARE`] of the ready nodes (and more
    /// than [`MASS_SILENCE_MIN`]) fall silent together, the likelier cause is
    /// this leader (overloaded, stalled, cut off) rather than all of them:
    /// marking them down would move their work and have them register again,
    /// the load that made their heartbeats late. Those nodes get a second
    /// deadline; the ones still silent after it go down (a real outage is
    /// seen, one deadline later). Kubernetes stops evicting altogether in a
    /// zone where over 55 % of nodes are unready.
    pub fn evaluate<'a>(
        &self,
        now: Instant,
        nodes: impl IntoIterator<Item = (&'a str, NodeStatus)>,
    ) -> Evaluation {
        let Some(since) = self.leader_since else {
            return Evaluation::default();
        };
        let mut out = Evaluation::default();
        let mut silent_ready: Vec<(String, bool)> = Vec::new();
        let mut ready = 0usize;
        for (name, status) in nodes {
            let heard = self.last_seen.get(name).copied();
            let (reference, allowed) = match heard {
                Some(at) => (at.max(since), self.deadline),
                None => (since, self.failover_grace),
            };
            let quiet = now.saturating_duration_since(reference);
            match status {
                NodeStatus::Ready => {
                    ready += 1;
                    if quiet > allowed {
                        silent_ready.push((name.to_string(), quiet > allowed.saturating_add(self.deadline)));
                    }
                }
                // Only a heartbeat heard during this leadership brings a node back.
                NodeStatus::Down if heard.is_some() && quiet <= allowed => {
                    out.changes.push((name.to_string(), NodeStatus::Ready))
                }
                NodeStatus::Down => {}
            }
        }
        let mass = silent_ready.len() > MASS_SILENCE_MIN
            && silent_ready.len() as f64 > ready as f64 * MASS_SILENCE_SHARE;
        for (name, long_silent) in silent_ready {
            if mass && !long_silent {
                out.held_back += 1;
            } else {
                out.changes.push((name, NodeStatus::Down));
            }
        }
        out
    }
}

/// More than this share of the ready nodes silent at once is held back for a second deadline.
pub const MASS_SILENCE_SHARE: f64 = 0.10;
/// ... and more than this many: a few nodes of a small cluster are never "mass".
pub const MASS_SILENCE_MIN: usize = 10;

/// What one evaluation decided.
#[derive(Debug, Default, PartialEq)]
pub struct Evaluation {
    /// Status changes to commit.
    pub changes: Vec<(String, NodeStatus)>,
    /// Silent nodes not marked down yet: too many fell silent at once.
    pub held_back: usize,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(10);

    impl Liveness {
        fn evaluate_changes<'a>(
            &self,
            now: Instant,
            nodes: impl IntoIterator<Item = (&'a str, NodeStatus)>,
        ) -> Vec<(String, NodeStatus)> {
            self.evaluate(now, nodes).changes
        }
    }

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn follower_decides_nothing() {
        let l = Liveness::new(D, D);
        let now = t0();
        assert!(l.evaluate_changes(now + D * 5, [("a", NodeStatus::Ready)]).is_empty());
    }

    #[test]
    fn silent_node_goes_down_only_after_the_deadline() {
        let (mut l, start) = leading(D);
        l.heartbeat("a", start + Duration::from_secs(1));
        assert!(l.evaluate_changes(start + Duration::from_secs(11), [("a", NodeStatus::Ready)]).is_empty());
        assert_eq!(
            l.evaluate_changes(start + Duration::from_secs(12), [("a", NodeStatus::Ready)]),
            vec![("a".to_string(), NodeStatus::Down)]
        );
    }

    #[test]
    fn new_leader_gives_a_full_deadline() {
        let (l, start) = leading(D);
        // Never heard from "b" in this leadership: still ready until the deadline passes.
        assert!(l.evaluate_changes(start + Duration::from_secs(9), [("b", NodeStatus::Ready)]).is_empty());
        assert_eq!(l.evaluate_changes(start + Duration::from_secs(11), [("b", NodeStatus::Ready)]).len(), 1);
    }

    #[test]
    fn new_leader_waits_the_failover_grace_for_a_first_heartbeat() {
        let grace = Duration::from_secs(30);
        let mut l = Liveness::new(D, grace);
        let start = t0();
        l.became_leader(start);
        l.heartbeat("heard", start + Duration::from_secs(1));
        let at = |s| start + Duration::from_secs(s);
        let nodes = [("heard", NodeStatus::Ready), ("unheard", NodeStatus::Ready)];
        // A node heard from has only the deadline: down 10 s after its heartbeat.
        assert_eq!(l.evaluate_changes(at(12), nodes), vec![("heard".to_string(), NodeStatus::Down)]);
        // One never heard from in this leadership keeps the grace.
        assert!(l.evaluate_changes(at(29), [("unheard", NodeStatus::Ready)]).is_empty());
        assert_eq!(l.evaluate_changes(at(31), [("unheard", NodeStatus::Ready)]).len(), 1);
        // A grace shorter than the deadline is the deadline.
        let mut short = Liveness::new(D, Duration::from_secs(1));
        short.became_leader(start);
        assert!(short.evaluate_changes(at(9), [("unheard", NodeStatus::Ready)]).is_empty());
        assert_eq!(short.evaluate_changes(at(11), [("unheard", NodeStatus::Ready)]).len(), 1);
    }

    /// A tracker that became leader just now, and when.
    fn leading(grace: Duration) -> (Liveness, Instant) {
        let mut l = Liveness::new(D, grace);
        let start = t0();
        l.became_leader(start);
        (l, start)
    }

    fn fleet(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i:03}")).collect()
    }

    #[test]
    fn a_few_silent_nodes_go_down_at_the_deadline() {
        let (mut l, start) = leading(D);
        let names = fleet(100);
        // 10 of 100 silent (at the share): all down at the deadline.
        for n in &names[10..] {
            l.heartbeat(n, start + Duration::from_secs(5));
        }
        let e = l
            .evaluate(start + Duration::from_secs(11), names.iter().map(|n| (n.as_str(), NodeStatus::Ready)));
        assert_eq!(e.changes.len(), 10, "{e:?}");
        assert_eq!(e.held_back, 0);
        assert!(e.changes.iter().all(|(_, s)| *s == NodeStatus::Down));
    }

    #[test]
    fn mass_silence_waits_a_second_deadline() {
        let (mut l, start) = leading(D);
        let names = fleet(100);
        for n in &names {
            l.heartbeat(n, start + Duration::from_secs(1));
        }
        // 40 keep beating, 60 go quiet (a stalled leader sees this).
        for n in &names[..40] {
            l.heartbeat(n, start + Duration::from_secs(12));
        }
        let all = || names.iter().map(|n| (n.as_str(), NodeStatus::Ready));
        let e = l.evaluate(start + Duration::from_secs(12), all());
        assert!(e.changes.is_empty(), "{e:?}");
        assert_eq!(e.held_back, 60);
        // Their heartbeats resume: nothing to do.
        for n in &names[40..70] {
            l.heartbeat(n, start + Duration::from_secs(13));
        }
        // Still silent after a second deadline: down, held back no more.
        for n in &names[..70] {
            l.heartbeat(n, start + Duration::from_secs(21));
        }
        let e = l.evaluate(start + Duration::from_secs(22), all());
        assert_eq!(e.changes.len(), 30, "{e:?}");
        assert_eq!(e.held_back, 0);
        assert!(e.changes.iter().all(|(n, s)| *s == NodeStatus::Down && names[70..].contains(n)));
    }

    #[test]
    fn a_small_cluster_losing_most_nodes_is_not_held_back() {
        let (mut l, start) = leading(D);
        let names = fleet(5);
        l.heartbeat(&names[0], start + Duration::from_secs(5));
        let e = l
            .evaluate(start + Duration::from_secs(11), names.iter().map(|n| (n.as_str(), NodeStatus::Ready)));
        assert_eq!(e.changes.len(), 4, "{e:?}");
        assert_eq!(e.held_back, 0);
    }

    #[test]
    fn down_node_comes_back_on_heartbeat() {
        let (mut l, start) = leading(D);
        // A node recorded down by an earlier leader stays down without a heartbeat.
        assert!(l.evaluate_changes(start + Duration::from_secs(1), [("a", NodeStatus::Down)]).is_empty());
        l.heartbeat("a", start + Duration::from_secs(2));
        assert_eq!(
            l.evaluate_changes(start + Duration::from_secs(3), [("a", NodeStatus::Down)]),
            vec![("a".to_string(), NodeStatus::Ready)]
        );
    }

    #[test]
    fn reordered_heartbeats_do_not_move_time_back() {
        let (mut l, start) = leading(D);
        l.heartbeat("a", start + Duration::from_secs(5));
        l.heartbeat("a", start + Duration::from_secs(1));
        assert_eq!(l.last_seen("a"), Some(start + Duration::from_secs(5)));
    }

    #[test]
    fn losing_leadership_forgets_heartbeats() {
        let (mut l, start) = leading(D);
        l.heartbeat("a", start);
        l.lost_leadership();
        assert!(!l.is_leading());
        assert_eq!(l.last_seen("a"), None);
    }
}
