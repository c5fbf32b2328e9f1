//! Writes that reach the leader together go to Raft as one entry.
//!
//! openraft 0.9's core writes each proposed entry to the log by itself and
//! waits for that write's fsync before it takes the next proposal
//! (`RaftCore::append_to_log` awaits the flush), so however many clients
//! wait, the leader commits at most one entry per log fsync: about 0.3 ms
//! here, some 3,000 entries a second, with the core idle on the disk most
//! of that time. etcd's raft batches proposals in each `Ready`; this is the
//! same idea one layer up.
//!
//! ```text
//! write ──► queue ──► at most IN_FLIGHT (2) entries in flight
//!                     one waiting write   ──► its own entry, as before
//!                     several waiting     ──► one Command::Group entry,
//!                                             one answer per write
//! ```
//!
//! Nothing waits for a group to fill: a write that finds a free slot goes at
//! once, so a quiet cluster sees no added latency, and a busy one puts
//! everything that queued behind the entries in flight into the next.
//! A group is proposed only when every coordinator speaks
//! [`GROUP_PROTOCOL`] (a coordinator of the previous version cannot read
//! one); otherwise the waiting writes go as entries of their own.
//! Large commands (plans, batches of workloads) go alone.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{WriteError, COMMIT_TIMEOUT};
use crate::metrics::instruments::observe;
use crate::peer::client::PeerClient;
use crate::raft::{NodeId, Raft};
use crate::state::{Command, CommandResponse};
use prometheus_client::metrics::histogram::Histogram;

/// First protocol version whose coordinators read [`Command::Group`].
pub const GROUP_PROTOCOL: u32 = 5;
/// Entries proposed and not yet answered, at most. Measured with `gantryctl
/// bench writes` at 1, 2, 4 and 8 (docs/BENCHMARKS.md): fewer group more;
/// 2 rather than 1 so that one slow entry (a plan of thousands of
/// placements) does not hold every other write back.
pub const IN_FLIGHT: usize = 2;
/// Most writes in one group.
pub const MAX_GROUP: usize = 1024;
/// Most encoded bytes of the writes in one group (well inside one
/// AppendEntries' budget, [`crate::raft::network::APPEND_BUDGET`]).
pub const GROUP_BUDGET: usize = 256 * 1024;
/// A write larger than this goes alone.
pub const ALONE_ABOVE: usize = 16 * 1024;
/// Writes waiting to be proposed before callers wait to queue.
const QUEUE: usize = 16 * 1024;

type Answer = Result<(u64, CommandResponse), WriteError>;

struct Proposal {
    command: Command,
    bytes: usize,
    reply: oneshot::Sender<Answer>,
}

/// How many of the waiting writes (their encoded sizes, oldest first) go
/// in the next entry: at least one; never more than [`MAX_GROUP`] or
/// [`GROUP_BUDGET`] bytes; a write above [`ALONE_ABOVE`] goes by itself.
pub fn group_len(sizes: &[usize]) -> usize {
    let mut used = 0usize;
    for (i, &bytes) in sizes.iter().enumerate() {
        let alone = bytes > ALONE_ABOVE;
        if i > 0 && (alone || i == MAX_GROUP || used.saturating_add(bytes) > GROUP_BUDGET) {
            return i;
        }
        if alone {
            return 1;
        }
        used += bytes;
    }
    sizes.len()
}

/// A write's encoded size, to group by. Plans and batches of workloads go
/// alone whatever their size, without being encoded here (they can be
/// megabytes, and openraft encodes every entry again anyway).
pub fn size_for_grouping(command: &Command) -> usize {
    let inner = match command {
        Command::Keyed { command, .. } => command,
        c => c,
    };
    match inner {
        Command::ApplyPlan(_) | Command::SubmitWorkloads { .. } => usize::MAX,
        _ => gantry_common::schema::encode(command).map_or(usize::MAX, |b| b.len()),
    }
}

/// The answer to one write, from the entry's index and the command's response.
pub fn outcome(index: u64, response: CommandResponse) -> Answer {
    match response {
        CommandResponse::Rejected { reason, kind } => Err(WriteError::Rejected { kind, reason }),
        data => Ok((index, data)),
    }
}

/// Hands writes to the grouping task; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Proposal>,
    stats: Arc<GroupStats>,
}

/// Groups proposed and the writes they carried, since start (for metrics).
#[derive(Debug, Default)]
pub struct GroupStats {
    groups: AtomicU64,
    writes: AtomicU64,
}

impl GroupStats {
    /// (group entries proposed, writes in them).
    pub fn totals(&self) -> (u64, u64) {
        (self.groups.load(Ordering::Relaxed), self.writes.load(Ordering::Relaxed))
    }
}

impl Proposer {
    /// Starts the grouping task for this coordinator's Raft.
    /// `commit_seconds` records how long each entry took to commit.
    pub fn start(raft: Raft, peers: PeerClient, id: NodeId, commit_seconds: Histogram) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let speaks = Speaks { raft: raft.clone(), peers, id, last_agreed: Arc::default() };
        let stats = Arc::new(GroupStats::default());
        tokio::spawn(run(raft, speaks, Arc::clone(&stats), commit_seconds, rx));
        Proposer { tx, stats }
    }

    /// What has been grouped so far.
    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// Commits `command` (leader only), alone or in a group; gives up after
    /// [`COMMIT_TIMEOUT`] with its outcome unknown.
    pub async fn write(&self, command: Command) -> Answer {
        let bytes = size_for_grouping(&command);
        let (reply, answer) = oneshot::channel();
        let wait = async {
            self.tx
                .send(Proposal { command, bytes, reply })
                .await
                .map_err(|_| WriteError::Raft("the coordinator is shutting down".into()))?;
            answer.await.map_err(|_| WriteError::Raft("the coordinator is shutting down".into()))?
        };
        match tokio::time::timeout(COMMIT_TIMEOUT, wait).await {
            Ok(answer) => answer,
            Err(_) => Err(not_committed()),
        }
    }
}

fn not_committed() -> WriteError {
    WriteError::Raft(format!(
        "not committed within {}s: this leader cannot reach a majority",
        COMMIT_TIMEOUT.as_secs()
    ))
}

async fn run(
    raft: Raft,
    speaks: Speaks,
    stats: Arc<GroupStats>,
    took: Histogram,
    mut rx: mpsc::Receiver<Proposal>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut waiting: VecDeque<Proposal> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(p) => waiting.push_back(p),
                None => return,
            }
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        while waiting.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => waiting.push_back(p),
                Err(_) => break,
            }
        }
        // A caller that gave up (timed out, or its client went away) is not proposed for.
        waiting.retain(|p| !p.reply.is_closed());
        if waiting.is_empty() {
            continue;
        }
        let sizes: Vec<usize> = waiting.iter().map(|p| p.bytes).collect();
        let group: Vec<Proposal> = waiting.drain(..group_len(&sizes)).collect();
        let (raft, speaks, stats, took) = (raft.clone(), speaks.clone(), Arc::clone(&stats), took.clone());
        tokio::spawn(async move {
            propose(&Committer { raft: &raft, took: &took }, &speaks, &stats, group).await;
            drop(slot);
        });
    }
}

/// Proposes one entry for `group` and answers each write in it.
async fn propose(raft: &Committer<'_>, speaks: &Speaks, stats: &GroupStats, group: Vec<Proposal>) {
    if group.len() == 1 || !speaks.group_protocol() {
        // One write, or a member of the previous version: each write its own entry, at once.
        futures::future::join_all(group.into_iter().map(|p| async move {
            let _ = p.reply.send(commit(raft, p.command).await);
        }))
        .await;
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<Answer>>) =
        group.into_iter().map(|p| (p.command, p.reply)).unzip();
    let n = commands.len();
    stats.groups.fetch_add(1, Ordering::Relaxed);
    stats.writes.fetch_add(n as u64, Ordering::Relaxed);
    match commit(raft, Command::Group { commands }).await {
        Ok((index, CommandResponse::Group(answers))) if answers.len() == n => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(outcome(index, answer));
            }
        }
        Ok((_, other)) => {
            for reply in replies {
                let _ = reply.send(Err(WriteError::Raft(format!("unexpected answer to a group: {other:?}"))));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// This coordinator's Raft and where commit latencies go.
struct Committer<'a> {
    raft: &'a Raft,
    took: &'a Histogram,
}

/// One Raft entry, within [`COMMIT_TIMEOUT`].
async fn commit(committer: &Committer<'_>, command: Command) -> Answer {
    let started = std::time::Instant::now();
    let written = match tokio::time::timeout(COMMIT_TIMEOUT, committer.raft.client_write(command)).await {
        Ok(w) => w,
        Err(_) => return Err(not_committed()),
    };
    match written {
        Ok(resp) => {
            observe(committer.took, started.elapsed());
            outcome(resp.log_id.index, resp.data)
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(WriteError::NotLeader {
            leader: f
                .leader_id
                .zip(f.leader_node)
                .map(|(id, n)| gantry_common::wire::LeaderHint { id, addr: n.addr }),
        }),
        Err(e) => Err(WriteError::Raft(e.to_string())),
    }
}

/// Whether every member reads groups. Never waits: it looks at the
/// version agreed on each member's live connection, and a member not
/// connected now counts with the version it last agreed with this
/// coordinator (one never heard from counts as not speaking it). A member
/// that is down therefore neither stops grouping nor holds writes back,
/// and one being upgraded (it agreed 4 before it went) keeps groups off
/// until it is back speaking 5. Only a downgrade (5, then 4 at the same
/// address) could meet groups it cannot read, and downgrades are not
/// supported.
#[derive(Clone)]
struct Speaks {
    raft: Raft,
    peers: PeerClient,
    id: NodeId,
    last_agreed: Arc<Mutex<HashMap<String, u32>>>,
}

impl Speaks {
    fn group_protocol(&self) -> bool {
        if self.peers.max_protocol() < GROUP_PROTOCOL {
            return false;
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let others =
            membership.membership().nodes().filter(|(id, _)| **id != self.id).map(|(_, n)| n.addr.as_str());
        let mut last = self.last_agreed.lock().unwrap_or_else(|p| p.into_inner());
        every_member_speaks(others, |addr| self.peers.version_of(addr), &mut last, GROUP_PROTOCOL)
    }
}

/// Whether every member (by address) speaks `version`: the version `live`
/// gives for its connection now, else the one it last agreed (kept in
/// `last`); never heard from, it does not.
pub fn every_member_speaks<'a>(
    members: impl Iterator<Item = &'a str>,
    live: impl Fn(&str) -> Option<u32>,
    last: &mut HashMap<String, u32>,
    version: u32,
) -> bool {
    let mut every = true;
    for addr in members {
        if let Some(v) = live(addr) {
            last.insert(addr.to_string(), v);
        }
        every &= last.get(addr).is_some_and(|v| *v >= version);
    }
    every
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_writes_are_grouped_within_the_bounds() {
        assert_eq!(group_len(&[100]), 1);
        assert_eq!(group_len(&[100; 10]), 10, "everything waiting");
        assert_eq!(group_len(&vec![10; MAX_GROUP + 5]), MAX_GROUP);
        let n = GROUP_BUDGET / ALONE_ABOVE;
        assert_eq!(group_len(&vec![ALONE_ABOVE; n + 3]), n, "bytes bound the group");
        assert_eq!(group_len(&[ALONE_ABOVE + 1, 100, 100]), 1, "a large write goes alone");
        assert_eq!(group_len(&[100, 100, ALONE_ABOVE + 1, 100]), 2, "and is not joined");
        assert_eq!(group_len(&[usize::MAX]), 1, "one that does not encode goes alone, to be refused");
        assert_eq!(group_len(&[]), 0);
    }

    #[test]
    fn members_are_judged_by_their_live_or_last_agreed_version() {
        let mut last = HashMap::new();
        let members = || ["a", "b"].into_iter();
        assert!(every_member_speaks(members(), |_| Some(5), &mut last, 5));
        // b is down: it last agreed 5, so groups go on.
        assert!(every_member_speaks(members(), |m| (m == "a").then_some(5), &mut last, 5));
        // b is back, capped at 4 (an upgrade not finished): no groups.
        assert!(!every_member_speaks(members(), |m| Some(if m == "a" { 5 } else { 4 }), &mut last, 5));
        // ... and while it is down again, it still counts as 4.
        assert!(!every_member_speaks(members(), |m| (m == "a").then_some(5), &mut last, 5));
        // A member never heard from does not speak it.
        assert!(!every_member_speaks(["a", "c"].into_iter(), |m| (m == "a").then_some(5), &mut last, 5));
        assert!(every_member_speaks(std::iter::empty(), |_| None, &mut HashMap::new(), 5), "a single member");
    }

    #[test]
    fn plans_and_batches_go_alone_unencoded() {
        let plan = Command::ApplyPlan(crate::state::Plan::default());
        assert_eq!(group_len(&[100, size_for_grouping(&plan), 100]), 1);
        let batch =
            Command::Keyed { key: "k".into(), command: Box::new(Command::SubmitWorkloads { specs: vec![] }) };
        assert_eq!(size_for_grouping(&batch), usize::MAX);
        let stop = Command::StopWorkload { name: "llm".into() };
        let small = size_for_grouping(&stop);
        assert!(small > 0 && small < ALONE_ABOVE, "{small}");
    }

    #[test]
    fn a_refused_write_in_a_group_is_an_error_of_its_kind() {
        assert!(matches!(outcome(7, CommandResponse::Applied), Ok((7, CommandResponse::Applied))));
        let refused = CommandResponse::not_found("no node \"x\"");
        assert!(matches!(
            outcome(7, refused),
            Err(WriteError::Rejected { kind: crate::state::RejectKind::NotFound, .. })
        ));
    }
}
