//! One evaluation round, as a pure function: the replicated state (plus the
//! leader's live telemetry) in, a [`Plan`] out.
//!
//! For every workload it compares the replica slots `0..replicas` with the
//! allocations meant to run:
//!
//! - an empty slot (new workload, scale-up, a replica lost with its node) is placed;
//! - a slot held by an older, incompatible version is stopped; it is placed
//!   again once the old replica has let go of its GPU (destructive update);
//! - a slot on a drained node is placed elsewhere first and only then stopped
//!   (a replica with nowhere to go keeps running);
//! - a slot beyond `replicas` is stopped;
//! - a slot whose replica finished (`completed`, or `failed` for good by its
//!   restart policy) stays filled: it is neither placed again nor moved;
//! - a slot whose replica the agent reports stopped although it was meant to
//!   run (it cannot run there any more) is stopped and placed again.
//!
//! The engine is built once per round and every placement is committed into
//! it, so one round never hands out the same capacity twice; the plan is
//! re-checked again when it applies (`state::apply_workloads`).

use std::collections::BTreeMap;

use gantry_common::model::GpuTelemetry;
use gantry_common::workload::{AllocGpu, Allocation, DesiredState};
use gantry_placement::{ClusterSnapshot, Engine, EngineConfig, NodeExclusion, PlaceError, Placement};

use crate::state::capacity::{node_snapshot, NodeTelemetry};
use crate::state::{NewAlloc, Plan, State, WorkloadRecord};

/// Most placements one plan carries (one Raft entry); the rest follow in the next round.
pub const MAX_PLACEMENTS_PER_PLAN: usize = 2_000;

/// Live GPU samples by node name.
pub type ClusterTelemetry<'a> = BTreeMap<&'a str, NodeTelemetry<'a>>;

/// Builds the samples map from per-node GPU sample lists.
pub fn cluster_telemetry<'a>(
    samples: impl Iterator<Item = (&'a str, &'a [GpuTelemetry])>,
) -> ClusterTelemetry<'a> {
    samples.map(|(node, gpus)| (node, gpus.iter().map(|g| (g.index, g)).collect())).collect()
}

/// One round's outcome: the plan, and the nodes the engine could not take
/// (`None` when no engine was built: every workload was settled).
#[derive(Debug, Default)]
pub struct Round {
    pub plan: Plan,
    pub excluded: Option<Vec<NodeExclusion>>,
}

/// Plans one round. `seed` breaks ties between equally good nodes. A node
/// the engine cannot take (a MIG GPU of a model without geometry, more
/// than it holds) is left out of the round with its reason; every other
/// node keeps scheduling.
pub fn plan(state: &State, telemetry: &ClusterTelemetry<'_>, config: &EngineConfig, seed: u64) -> Round {
    // Most state changes are agents' reports about settled workloads: no
    // need to build an engine over every node for them.
    if all_settled(state) {
        return Round::default();
    }
    let empty = NodeTelemetry::new();
    let names: Vec<&String> = state.nodes.keys().collect();
    // One pass over the allocations, not one per node.
    let mut by_node: BTreeMap<&str, Vec<&Allocation>> = BTreeMap::new();
    for a in state.allocs.values().filter(|a| a.holds_resources()) {
        by_node.entry(a.node.as_str()).or_default().push(a);
    }
    let snapshot = ClusterSnapshot {
        nodes: state
            .nodes
            .values()
            .map(|n| {
                let name = n.info.name.as_str();
                let held = by_node.get(name).map(Vec::as_slice).unwrap_or(&[]);
                node_snapshot(n, held.iter().copied(), telemetry.get(name).unwrap_or(&empty))
            })
            .collect(),
    };
    let (mut engine, excluded) = Engine::build(&snapshot, config.clone());
    let mut plan = Plan::default();
    for (name, w) in &state.workloads {
        if w.stopping {
            continue;
        }
        let reason = plan_workload(state, &names, &mut engine, name, w, seed, &mut plan);
        if reason != w.pending_reason {
            plan.pending.push((name.clone(), reason));
        }
        if plan.place.len() >= MAX_PLACEMENTS_PER_PLAN {
            break;
        }
    }
    Round { plan, excluded: Some(excluded) }
}

/// Whether no workload needs a decision: each has exactly its replicas,
/// running its current version on nodes that are not drained, and no
/// pending reason to clear or set.
pub fn all_settled(state: &State) -> bool {
    let mut running: BTreeMap<&str, Vec<&Allocation>> = BTreeMap::new();
    for a in state.allocs.values().filter(|a| a.fills_slot()) {
        running.entry(a.workload.as_str()).or_default().push(a);
    }
    state.workloads.iter().all(|(name, w)| {
        if w.stopping {
            return true;
        }
        let allocs = running.get(name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let mut replicas: Vec<u32> = allocs.iter().map(|a| a.replica).collect();
        replicas.sort_unstable();
        replicas.dedup();
        w.pending_reason.is_none()
            && allocs.len() == w.spec.replicas as usize
            && replicas.len() == allocs.len()
            && allocs.iter().all(|a| {
                a.replica < w.spec.replicas
                    && a.version == w.version
                    && (a.actual.is_finished() || state.nodes.get(&a.node).is_some_and(|n| !n.drained))
            })
    })
}

fn plan_workload(
    state: &State,
    names: &[&String],
    engine: &mut Engine,
    name: &str,
    w: &WorkloadRecord,
    seed: u64,
    plan: &mut Plan,
) -> Option<String> {
    let running: Vec<&Allocation> = state.allocs_of(name).filter(|a| a.fills_slot()).collect();
    // Meant to run, but its agent stopped it for good: the slot is free again.
    for a in state.allocs_of(name).filter(|a| a.desired == DesiredState::Run && !a.fills_slot()) {
        plan.stop.push((a.id.clone(), format!("{} on {} although meant to run", a.actual.as_str(), a.node)));
    }
    // Replicas of this workload still letting go of resources (stopped, not yet confirmed).
    let stopping = state.allocs_of(name).any(|a| a.desired == DesiredState::Stop && a.holds_resources());
    let req = w.spec.placement_request();
    let mut refusal: Option<String> = None;
    let mut waiting = stopping;
    for a in &running {
        if a.replica >= w.spec.replicas {
            plan.stop.push((a.id.clone(), "scaled down".into()));
        }
    }
    for replica in 0..w.spec.replicas {
        if plan.place.len() >= MAX_PLACEMENTS_PER_PLAN {
            break;
        }
        let current = running.iter().find(|a| a.replica == replica);
        match current {
            Some(a) if a.version < w.version => {
                plan.stop.push((a.id.clone(), format!("replaced by version {}", w.version)));
                waiting = true;
            }
            // A finished replica holds nothing and runs nowhere: nothing to move.
            Some(a) if a.actual.is_finished() => {}
            Some(a) if state.nodes.get(&a.node).is_some_and(|n| n.drained) => {
                match place(engine, names, state, &req, w, replica, seed) {
                    Ok(new) => {
                        plan.place.push(new);
                        plan.stop.push((a.id.clone(), format!("node {} drained", a.node)));
                    }
                    Err(e) => {
                        refusal.get_or_insert(format!(
                            "cannot move replica {replica} off drained node {}: {e}",
                            a.node
                        ));
                    }
                }
            }
            Some(_) => {}
            None => match place(engine, names, state, &req, w, replica, seed) {
                Ok(new) => plan.place.push(new),
                Err(e) => {
                    refusal.get_or_insert(e);
                }
            },
        }
    }
    // While old replicas are still stopping, a refusal is expected: their
    // GPUs come back once the agents confirm, and the next round places.
    if waiting && refusal.as_deref().is_some_and(|r| !r.starts_with("cannot move")) {
        return None;
    }
    refusal
}

fn place(
    engine: &mut Engine,
    names: &[&String],
    state: &State,
    req: &gantry_placement::PlacementRequest,
    w: &WorkloadRecord,
    replica: u32,
    seed: u64,
) -> Result<NewAlloc, String> {
    let seed = seed ^ (u64::from(replica) << 32) ^ w.version;
    let placement: Placement = engine.place(req, seed).map_err(|e| match e {
        PlaceError::Refused(r) => r.to_string(),
        other => other.to_string(),
    })?;
    engine.commit(req, &placement).map_err(|e| e.to_string())?;
    let node = names.get(placement.node).ok_or("placement names an unknown node")?;
    let record = state.nodes.get(node.as_str()).ok_or("placement names an unknown node")?;
    let mut gpus = Vec::with_capacity(placement.gpus.len());
    for g in placement.gpus {
        let info = record.info.gpus.get(g.gpu).ok_or("placement names an unknown GPU")?;
        gpus.push(AllocGpu { index: info.index, uuid: info.uuid.clone(), share: g.share });
    }
    Ok(NewAlloc {
        workload: w.spec.name.clone(),
        version: w.version,
        replica,
        node: (*node).clone(),
        gpus,
        cpu_milli: w.spec.cpu_milli,
        memory_mib: w.spec.memory_mib,
    })
}
