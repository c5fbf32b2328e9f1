//! The coordinator's latency histograms and event counters, observed where
//! the work happens (log store, state machine, proposer, planner, agent and
//! admin handlers) and registered once by [`super::Metrics::new`]. Clones
//! share every series; a default one records into series no registry shows
//! (tests, stores opened without a daemon).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::time::Duration;

/// Seconds, 100 µs to about 3.3 s (doubling): Raft appends, applies,
/// commits, requests.
fn fast_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Seconds, 1 ms to about 65 s (doubling): planning rounds.
fn slow_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Counts, 1 to 16,384 (doubling): placements per plan.
fn counts() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// Which agent request was handled.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub request: &'static str,
}

/// What an allocation-stream answer carried.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabel {
    pub answer: &'static str,
}

/// One admin API request: its method, the route it matched (the pattern,
/// never the path a client sent, so the series stay few) and its status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminRequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Handles to every series; cheap to clone.
#[derive(Clone)]
pub struct Instruments {
    /// A log append: encoding, the redb write and its fsync.
    pub log_append: Histogram,
    /// The durable commit (fsync) of a log append alone.
    pub log_fsync: Histogram,
    /// One proposed entry, from `client_write` until openraft answered (committed and applied).
    pub commit: Histogram,
    /// Applying one batch of committed entries to the state (under its lock).
    pub apply: Histogram,
    /// Entries applied.
    pub applied_entries: Counter,
    /// Writing the applied state's changes to redb (the checkpoint, fsynced).
    pub state_write: Histogram,
    /// A planning round off the async workers: engine follow and plan.
    pub plan_round: Histogram,
    /// Placements committed per plan.
    pub plan_placements: Histogram,
    /// Placements the members' re-check refused per plan.
    pub plan_refused: Histogram,
    /// Agent requests by kind (heartbeat, register, report), handled on the leader.
    pub agent_requests: Histograms<RequestLabel>,
    /// Sending an allocation-stream answer to an agent, by what it carried.
    pub alloc_stream_answers: Histograms<AnswerLabel>,
    /// Admin API requests by method, route and status.
    pub admin_requests: Histograms<AdminRequestLabels>,
}

impl Default for Instruments {
    fn default() -> Self {
        Instruments {
            log_append: fast_seconds(),
            log_fsync: fast_seconds(),
            commit: fast_seconds(),
            apply: fast_seconds(),
            applied_entries: Counter::default(),
            state_write: fast_seconds(),
            plan_round: slow_seconds(),
            plan_placements: counts(),
            plan_refused: counts(),
            agent_requests: Family::new_with_constructor(fast_seconds),
            alloc_stream_answers: Family::new_with_constructor(fast_seconds),
            admin_requests: Family::new_with_constructor(fast_seconds),
        }
    }
}

/// Observes `took` in seconds.
pub fn observe(histogram: &Histogram, took: Duration) {
    histogram.observe(took.as_secs_f64());
}
