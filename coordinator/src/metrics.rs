//! Prometheus metrics, computed when scraped from Raft metrics, state and telemetry.

use std::sync::atomic::AtomicU64;

use gantry_common::model::NodeStatus;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;

use crate::service::Service;

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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gantry");
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
        }
    }

    /// Refreshes every value and encodes the registry.
    pub async fn render(&self, service: &Service) -> Result<String, std::fmt::Error> {
        {
            let m = service.raft.metrics();
            let m = m.borrow();
            self.term.set(m.current_term as i64);
            self.is_leader.set(i64::from(m.current_leader == Some(service.id)));
            self.last_applied.set(m.last_applied.map(|l| l.index as i64).unwrap_or(0));
        }
        let (ready, down, gpus) = service.state.read(|s| {
            let ready = s.nodes.values().filter(|n| n.status == NodeStatus::Ready).count();
            let gpus: usize = s.nodes.values().map(|n| n.info.gpus.len()).sum();
            (ready, s.nodes.len() - ready, gpus)
        });
        self.nodes.get_or_create(&StatusLabel { status: "ready".into() }).set(ready as i64);
        self.nodes.get_or_create(&StatusLabel { status: "down".into() }).set(down as i64);
        self.gpus.set(gpus as i64);
        let (workloads, by_state) = service.state.read(|s| {
            let mut by_state = std::collections::BTreeMap::<&'static str, i64>::new();
            for a in s.allocs.values() {
                *by_state.entry(a.actual.as_str()).or_default() += 1;
            }
            (s.workloads.len(), by_state)
        });
        self.workloads.set(workloads as i64);
        for (state, count) in by_state {
            self.allocs.get_or_create(&StatusLabel { status: state.into() }).set(count);
        }
        let (placed, refused) = service.scheduler_stats.totals();
        catch_up(&self.placements, placed);
        catch_up(&self.placements_refused, refused);
        let (bytes, seconds, built) = service.state.snapshot_stats().last();
        self.snapshot_bytes.set(bytes as i64);
        self.snapshot_build_seconds.set(seconds);
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
