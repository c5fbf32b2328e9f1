//! Prometheus metrics: gauges and totals computed when scraped (from Raft's
//! metrics, the state and telemetry), and the latency histograms that the
//! daemon's parts observe as they work ([`instruments`]). Names follow
//! Prometheus conventions: base units (`_seconds`, `_bytes`), `_total`
//! counters, `_info` facts. `/metrics` answers OpenMetrics or the text format
//! by `Accept` ([`gantry_common::exposition`]).

pub mod instruments;
pub mod listener;

use std::sync::atomic::AtomicU64;

use gantry_common::model::NodeStatus;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::metrics::info::Info;

use crate::service::Service;
use instruments::Instruments;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// Metric handles; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    term: Gauge,
    is_leader: Gauge,
    last_applied: Gauge,
    nodes: Family<StatusLabel, Gauge>,
    gpus: Gauge,
    heartbeats: Counter<u64, AtomicU64>,
    status_changes: Family<StatusLabel, Counter<u64, AtomicU64>>,
    workloads: Gauge,
    allocs: Family<StatusLabel, Gauge>,
    placements: Counter<u64, AtomicU64>,
    placements_refused: Counter<u64, AtomicU64>,
    snapshot_bytes: Gauge,
    snapshot_build_seconds: Gauge<f64, AtomicU64>,
    snapshots_built: Counter<u64, AtomicU64>,
    connections_refused: Counter<u64, AtomicU64>,
    write_groups: Counter<u64, AtomicU64>,
    grouped_writes: Counter<u64, AtomicU64>,
    leader_changes: Counter<u64, AtomicU64>,
    log_entries: Gauge,
    store_bytes: Gauge,
    store_path: Option<PathBuf>,
    snapshot_age: Gauge<f64, AtomicU64>,
    entries_since_snapshot: Gauge,
    pending_workloads: Gauge,
}

impl Metrics {
    /// Registers every series; `instruments` are the histograms the parts
    /// observe into, `store_path` the Raft store whose size is reported.
    pub fn new(instruments: &Instruments, store_path: Option<PathBuf>) -> Metrics {
        let mut registry = Registry::with_prefix("gantry");
        registry.register(
            "build",
            "Version of this gantry-coordinator binary",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        register_instruments(&mut registry, instruments);
        let term = Gauge::default();
        let is_leader = Gauge::default();
        let last_applied = Gauge::default();
        let nodes = Family::<StatusLabel, Gauge>::default();
        let gpus = Gauge::default();
        let heartbeats = Counter::<u64, AtomicU64>::default();
        registry.register("raft_term", "Current Raft term", term.clone());
        registry.register("raft_is_leader", "1 when this coordinator is the leader", is_leader.clone());
        registry.register("raft_last_applied", "Index of the last applied log entry", last_applied.clone());
        registry.register("nodes", "Registered nodes by status", nodes.clone());
        registry.register("gpus", "GPUs on registered nodes", gpus.clone());
        registry.register(
            "heartbeats_received",
            "Agent heartbeats received while leader",
            heartbeats.clone(),
        );
        let status_changes = Family::<StatusLabel, Counter<u64, AtomicU64>>::default();
        registry.register(
            "node_status_changes",
            "Nodes this coordinator marked down or ready again from heartbeats while leader",
            status_changes.clone(),
        );
        let workloads = Gauge::default();
        let allocs = Family::<StatusLabel, Gauge>::default();
        let placements = Counter::<u64, AtomicU64>::default();
        let placements_refused = Counter::<u64, AtomicU64>::default();
        registry.register("workloads", "Workloads in the cluster", workloads.clone());
        registry.register("allocations", "Allocations by actual state", allocs.clone());
        registry.register(
            "placements_committed",
            "Placements this coordinator committed while leader",
            placements.clone(),
        );
        registry.register(
            "placements_refused",
            "Placements the plan re-check refused while this coordinator led",
            placements_refused.clone(),
        );
        let snapshot_bytes = Gauge::default();
        let snapshot_build_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let snapshots_built = Counter::<u64, AtomicU64>::default();
        registry.register_with_unit(
            "raft_snapshot_size",
            "Size of the last snapshot this coordinator built",
            Unit::Bytes,
            snapshot_bytes.clone(),
        );
        registry.register_with_unit(
            "raft_snapshot_build",
            "How long building the last snapshot took",
            Unit::Seconds,
            snapshot_build_seconds.clone(),
        );
        registry.register(
            "raft_snapshots_built",
            "Snapshots this coordinator built",
            snapshots_built.clone(),
        );
        let connections_refused = Counter::<u64, AtomicU64>::default();
        registry.register(
            "connections_refused_busy",
            "Connections refused at once because the most handshakes this coordinator works on at a time were in flight",
            connections_refused.clone(),
        );
        let write_groups = Counter::<u64, AtomicU64>::default();
        registry.register(
            "raft_write_groups",
            "Raft entries this coordinator proposed as leader that carried several writes which arrived together",
            write_groups.clone(),
        );
        let grouped_writes = Counter::<u64, AtomicU64>::default();
        registry.register(
            "raft_grouped_writes",
            "Writes this coordinator proposed as leader inside such groups",
            grouped_writes.clone(),
        );
        let leader_changes = Counter::<u64, AtomicU64>::default();
        registry.register(
            "raft_leader_changes",
            "Times this coordinator learnt of a new leader (the first it learnt of counts)",
            leader_changes.clone(),
        );
        let log_entries = Gauge::default();
        registry.register(
            "raft_log_entries",
            "Entries in this coordinator's Raft log (last index less the last purged one)",
            log_entries.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register_with_unit(
            "raft_store_size",
            "Size of this coordinator's Raft store file (log, state tables, snapshot)",
            Unit::Bytes,
            store_bytes.clone(),
        );
        let snapshot_age = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "raft_snapshot_age",
            "Time since this coordinator last built a snapshot (0 before the first)",
            Unit::Seconds,
            snapshot_age.clone(),
        );
        let entries_since_snapshot = Gauge::default();
        registry.register(
            "raft_entries_since_snapshot",
            "Applied entries after the last snapshot this coordinator holds (built or installed)",
            entries_since_snapshot.clone(),
        );
        let pending_workloads = Gauge::default();
        registry.register(
            "workloads_pending",
            "Workloads with replicas the planner could not place (they have a pending reason)",
            pending_workloads.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            term,
            is_leader,
            last_applied,
            nodes,
            gpus,
            heartbeats,
            status_changes,
            workloads,
            allocs,
            placements,
            placements_refused,
            snapshot_bytes,
            snapshot_build_seconds,
            snapshots_built,
            connections_refused,
            write_groups,
            grouped_writes,
            leader_changes,
            log_entries,
            store_bytes,
            store_path,
            snapshot_age,
            entries_since_snapshot,
            pending_workloads,
        }
    }

    /// Refreshes every value and encodes the registry.
    pub async fn render(&self, service: &Service) -> Result<String, std::fmt::Error> {
        {
            let m = service.raft.metrics();
            let m = m.borrow();
            self.term.set(m.current_term as i64);
            self.is_leader.set(i64::from(m.current_leader == Some(service.id)));
            let applied = m.last_applied.map_or(0, |l| l.index);
            self.last_applied.set(applied as i64);
            let purged = m.purged.map_or(0, |l| l.index);
            let last_log = m.last_log_index.unwrap_or(0);
            self.log_entries.set(last_log.saturating_sub(purged) as i64);
            let snapshot = m.snapshot.map_or(0, |l| l.index);
            self.entries_since_snapshot.set(applied.saturating_sub(snapshot) as i64);
        }
        if let Some(path) = &self.store_path {
            if let Ok(meta) = tokio::fs::metadata(path).await {
                self.store_bytes.set(i64::try_from(meta.len()).unwrap_or(i64::MAX));
            }
        }
        catch_up(&self.leader_changes, service.leader_seen.changes());
        let (ready, down, gpus) = service.state.read(|s| {
            let ready = s.nodes.values().filter(|n| n.status == NodeStatus::Ready).count();
            let gpus: usize = s.nodes.values().map(|n| n.info.gpus.len()).sum();
            (ready, s.nodes.len() - ready, gpus)
        });
        self.nodes.get_or_create(&StatusLabel { status: "ready".into() }).set(ready as i64);
        self.nodes.get_or_create(&StatusLabel { status: "down".into() }).set(down as i64);
        self.gpus.set(gpus as i64);
        let (workloads, by_state, pending) = service.state.read(|s| {
            let mut by_state = std::collections::BTreeMap::<&'static str, i64>::new();
            for a in s.allocs.values() {
                *by_state.entry(a.actual.as_str()).or_default() += 1;
            }
            let pending = s.workloads.values().filter(|w| w.pending_reason.is_some()).count();
            (s.workloads.len(), by_state, pending)
        });
        self.workloads.set(workloads as i64);
        self.pending_workloads.set(pending as i64);
        for (state, count) in by_state {
            self.allocs.get_or_create(&StatusLabel { status: state.into() }).set(count);
        }
        let (placed, refused) = service.scheduler_stats.totals();
        catch_up(&self.placements, placed);
        catch_up(&self.placements_refused, refused);
        let (bytes, seconds, built) = service.state.snapshot_stats().last();
        self.snapshot_bytes.set(bytes as i64);
        self.snapshot_build_seconds.set(seconds);
        self.snapshot_age.set(service.state.snapshot_stats().age().map_or(0.0, |a| a.as_secs_f64()));
        catch_up(&self.snapshots_built, built);
        catch_up(&self.connections_refused, service.admission.refused());
        let (groups, grouped) = service.proposer.stats().totals();
        catch_up(&self.write_groups, groups);
        catch_up(&self.grouped_writes, grouped);
        let (received, (down, ready)) = {
            let t = service.telemetry.lock();
            (t.heartbeats_received, t.status_changes)
        };
        catch_up(&self.heartbeats, received);
        catch_up(&self.status_changes.get_or_create(&StatusLabel { status: "down".into() }), down);
        catch_up(&self.status_changes.get_or_create(&StatusLabel { status: "ready".into() }), ready);
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Brings a counter up to a running total kept elsewhere.
fn catch_up(counter: &Counter<u64, AtomicU64>, total: u64) {
    let counted = counter.get();
    if total > counted {
        counter.inc_by(total - counted);
    }
}

/// Registers the histograms and counters the daemon's parts observe into.
fn register_instruments(registry: &mut Registry, i: &Instruments) {
    let seconds = [
        ("raft_log_append", "Raft log appends: encoding, writing and the fsync", &i.log_append),
        ("raft_log_fsync", "The durable commit (fsync) of a Raft log append", &i.log_fsync),
        (
            "raft_commit",
            "Entries this coordinator proposed as leader, from proposal until committed and applied",
            &i.commit,
        ),
        ("raft_apply", "Applying one batch of committed entries to the state", &i.apply),
        ("state_write", "Writing the applied state's changed records to the store (fsynced)", &i.state_write),
        ("plan_round", "Planning rounds that evaluated workloads (engine update and plan)", &i.plan_round),
    ];
    for (name, help, histogram) in seconds {
        registry.register_with_unit(name, help, Unit::Seconds, histogram.clone());
    }
    registry.register(
        "raft_applied_entries",
        "Committed entries applied to the state",
        i.applied_entries.clone(),
    );
    registry.register("plan_placements", "Placements committed per plan", i.plan_placements.clone());
    registry.register(
        "plan_recheck_refused_placements",
        "Placements per plan that the members' re-check refused (the state moved since planning)",
        i.plan_refused.clone(),
    );
    registry.register_with_unit(
        "agent_request_duration",
        "Agent requests handled on this coordinator, by request",
        Unit::Seconds,
        i.agent_requests.clone(),
    );
    registry.register_with_unit(
        "alloc_stream_answer_duration",
        "Sending an allocation-stream answer to an agent, by what it carried",
        Unit::Seconds,
        i.alloc_stream_answers.clone(),
    );
    registry.register_with_unit(
        "admin_request_duration",
        "Admin API requests, by method, matched route and status",
        Unit::Seconds,
        i.admin_requests.clone(),
    );
}
