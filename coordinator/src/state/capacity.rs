//! What a node holds, in the placement engine's terms: the one translation
//! from replicated state (node facts + allocations that hold resources) to a
//! [`NodeSnapshot`]. The scheduler builds its cluster snapshot with it and
//! the plan re-check in `apply` builds its single-node engine with it, so
//! both count capacity the same way.

use std::collections::BTreeMap;

use gantry_common::model::{GpuHealth, GpuSharing, GpuTelemetry, NodeStatus};
use gantry_common::workload::Allocation;
use gantry_placement::{
    ClusterSnapshot, Engine, EngineConfig, GpuAssignment, GpuMode, GpuShare, GpuSnapshot, MigInstanceSpec,
    NodeSnapshot, Placement,
};

use super::{NewAlloc, NodeRecord, State};

/// Live GPU samples of one node, by GPU index (leader only; empty elsewhere).
pub type NodeTelemetry<'a> = BTreeMap<u32, &'a GpuTelemetry>;

/// The node as the engine sees it.
pub fn node_snapshot<'a>(
    record: &NodeRecord,
    allocs: impl Iterator<Item = &'a Allocation>,
    telemetry: &NodeTelemetry<'_>,
) -> NodeSnapshot {
    let info = &record.info;
    let mut snap = NodeSnapshot::new(
        &info.name,
        u64::from(info.host.cpu_count) * 1000,
        info.host.memory_total_mib,
        info.gpus.iter().map(|g| empty_gpu(g.sharing, &g.model, g.memory_total_mib)).collect(),
    );
    snap.labels = record.labels();
    snap.schedulable = record.status == NodeStatus::Ready && !record.drained;
    for ((snap_gpu, g), (healthy, load)) in
        snap.gpus.iter_mut().zip(&info.gpus).zip(engine_gpus(record, telemetry))
    {
        snap_gpu.nvlink_domain = g.nvlink_domain;
        snap_gpu.healthy = healthy;
        snap_gpu.telemetry = load;
    }
    for a in allocs.filter(|a| a.holds_resources()) {
        snap.cpu_used_milli += a.cpu_milli;
        snap.memory_used_mib += a.memory_mib;
        snap.workloads.insert(a.workload.clone());
        for g in &a.gpus {
            let Some(pos) = info.gpus.iter().position(|i| i.index == g.index) else { continue };
            if let Some(gpu) = snap.gpus.get_mut(pos) {
                if !add_share(&mut gpu.mode, &g.share) {
                    // A share that does not fit the GPU's current mode (its
                    // sharing changed under a running allocation): nothing new
                    // goes there until that allocation is gone.
                    gpu.healthy = false;
                }
            }
        }
    }
    snap
}

/// Per GPU of a node, in its order, what the engine takes from live
/// telemetry: whether it is healthy, and its load.
pub type EngineGpus = Vec<(bool, Option<gantry_placement::GpuTelemetry>)>;

/// The engine's view of a node's GPU samples (a GPU without one is healthy and unloaded).
pub fn engine_gpus(record: &NodeRecord, telemetry: &NodeTelemetry<'_>) -> EngineGpus {
    record
        .info
        .gpus
        .iter()
        .map(|g| match telemetry.get(&g.index) {
            Some(t) => (
                !matches!(t.health, GpuHealth::Unhealthy(_)),
                Some(gantry_placement::GpuTelemetry {
                    utilization_pct: t.utilization_pct.min(100) as u8,
                    memory_used_mib: t.memory_used_mib,
                }),
            ),
            None => (true, None),
        })
        .collect()
}

fn empty_gpu(sharing: GpuSharing, model: &str, memory_mib: u64) -> GpuSnapshot {
    let mode = match sharing {
        GpuSharing::Exclusive => GpuMode::Exclusive { allocated: false },
        GpuSharing::Mig => GpuMode::Mig { instances: Vec::new() },
        GpuSharing::Mps => GpuMode::Mps { clients: 0, compute_pct: 0, memory_mib: 0 },
        GpuSharing::Shared => GpuMode::Shared { tenants: 0, milli: 0, memory_mib: 0 },
    };
    GpuSnapshot::with_mode(model, memory_mib, mode)
}

/// Adds a held share to a GPU's mode; false when the share cannot be held in that mode.
fn add_share(mode: &mut GpuMode, share: &GpuShare) -> bool {
    match (mode, share) {
        (GpuMode::Exclusive { allocated }, GpuShare::Whole | GpuShare::Milli { milli: 1000 }) => {
            *allocated = true;
            true
        }
        (GpuMode::Mig { instances }, GpuShare::Mig { profile, start }) => {
            instances.push(MigInstanceSpec { profile: profile.clone(), start: *start });
            true
        }
        (
            GpuMode::Mps { clients, compute_pct, memory_mib },
            GpuShare::Mps { compute_pct: c, memory_mib: m },
        ) => {
            *clients += 1;
            *compute_pct += u32::from(*c);
            *memory_mib += m;
            true
        }
        (GpuMode::Shared { tenants, memory_mib, .. }, GpuShare::Shared { memory_mib: m }) => {
            *tenants += 1;
            *memory_mib += m;
            true
        }
        (GpuMode::Shared { tenants, milli, .. }, GpuShare::Milli { milli: m }) => {
            *tenants += 1;
            *milli += m;
            true
        }
        (GpuMode::Exclusive { allocated }, _) => {
            *allocated = true;
            false
        }
        _ => false,
    }
}

/// The engine's placement for a planned allocation on a one-node snapshot.
pub fn placement_on(record: &NodeRecord, new: &NewAlloc) -> Option<Placement> {
    let mut gpus = Vec::with_capacity(new.gpus.len());
    for g in &new.gpus {
        let pos = record.info.gpus.iter().position(|i| i.index == g.index && i.uuid == g.uuid)?;
        gpus.push(GpuAssignment { gpu: pos, share: g.share.clone() });
    }
    Some(Placement { node: 0, node_name: record.info.name.clone(), gpus })
}

/// A one-node engine over `node` as the state has it now (no telemetry:
/// the re-check is about capacity, which telemetry does not change).
pub fn node_engine(state: &State, node: &str) -> Result<Engine, String> {
    let record = state.nodes.get(node).ok_or_else(|| format!("node {node:?} is not registered"))?;
    let snap = node_snapshot(record, state.allocs_on(node), &BTreeMap::new());
    Engine::new(&ClusterSnapshot { nodes: vec![snap] }, EngineConfig::default())
        .map_err(|e| format!("node {node:?}: {e}"))
}
