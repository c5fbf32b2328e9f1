//! Which nodes are alive, decided from heartbeats. Pure: time is an argument.
//!
//! ```text
//!   heartbeat(node, now) ─┐
//!   became_leader(now) ───┼─► Liveness ──► evaluate(now, replicated statuses)
//!                         │                   └─► [(node, Down|Ready)] to commit through Raft
//! ```
//!
//! Heartbeats are not replicated, so a new leader knows nothing of them: it
//! gives every node a full deadline from the moment it took over before
//! declaring it down.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gantry_common::model::NodeStatus;

#[derive(Debug)]
pub struct Liveness {
    deadline: Duration,
    leader_since: Option<Instant>,
    last_seen: HashMap<String, Instant>,
}

impl Liveness {
    pub fn new(deadline: Duration) -> Liveness {
        Liveness { deadline, leader_since: None, last_seen: HashMap::new() }
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
    pub fn evaluate<'a>(
        &self,
        now: Instant,
        nodes: impl IntoIterator<Item = (&'a str, NodeStatus)>,
    ) -> Vec<(String, NodeStatus)> {
        let Some(since) = self.leader_since else {
            return Vec::new();
        };
        let mut changes = Vec::new();
        for (name, status) in nodes {
            let heard = self.last_seen.get(name).copied();
            let reference = heard.unwrap_or(since).max(since);
            let silent = now.saturating_duration_since(reference) > self.deadline;
            match status {
                NodeStatus::Ready if silent => changes.push((name.to_string(), NodeStatus::Down)),
                // Only a heartbeat heard during this leadership brings a node back.
                NodeStatus::Down if heard.is_some() && !silent => {
                    changes.push((name.to_string(), NodeStatus::Ready))
                }
                _ => {}
            }
        }
        changes
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(10);

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn follower_decides_nothing() {
        let l = Liveness::new(D);
        let now = t0();
        assert!(l.evaluate(now + D * 5, [("a", NodeStatus::Ready)]).is_empty());
    }

    #[test]
    fn silent_node_goes_down_only_after_the_deadline() {
        let mut l = Liveness::new(D);
        let start = t0();
        l.became_leader(start);
        l.heartbeat("a", start + Duration::from_secs(1));
        assert!(l.evaluate(start + Duration::from_secs(11), [("a", NodeStatus::Ready)]).is_empty());
        assert_eq!(
            l.evaluate(start + Duration::from_secs(12), [("a", NodeStatus::Ready)]),
            vec![("a".to_string(), NodeStatus::Down)]
        );
    }

    #[test]
    fn new_leader_gives_a_full_deadline() {
        let mut l = Liveness::new(D);
        let start = t0();
        l.became_leader(start);
        // Never heard from "b" in this leadership: still ready until the deadline passes.
        assert!(l.evaluate(start + Duration::from_secs(9), [("b", NodeStatus::Ready)]).is_empty());
        assert_eq!(l.evaluate(start + Duration::from_secs(11), [("b", NodeStatus::Ready)]).len(), 1);
    }

    #[test]
    fn down_node_comes_back_on_heartbeat() {
        let mut l = Liveness::new(D);
        let start = t0();
        l.became_leader(start);
        // A node recorded down by an earlier leader stays down without a heartbeat.
        assert!(l.evaluate(start + Duration::from_secs(1), [("a", NodeStatus::Down)]).is_empty());
        l.heartbeat("a", start + Duration::from_secs(2));
        assert_eq!(
            l.evaluate(start + Duration::from_secs(3), [("a", NodeStatus::Down)]),
            vec![("a".to_string(), NodeStatus::Ready)]
        );
    }

    #[test]
    fn reordered_heartbeats_do_not_move_time_back() {
        let mut l = Liveness::new(D);
        let start = t0();
        l.became_leader(start);
        l.heartbeat("a", start + Duration::from_secs(5));
        l.heartbeat("a", start + Duration::from_secs(1));
        assert_eq!(l.last_seen("a"), Some(start + Duration::from_secs(5)));
    }

    #[test]
    fn losing_leadership_forgets_heartbeats() {
        let mut l = Liveness::new(D);
        let start = t0();
        l.became_leader(start);
        l.heartbeat("a", start);
        l.lost_leadership();
        assert!(!l.is_leading());
        assert_eq!(l.last_seen("a"), None);
    }
}
