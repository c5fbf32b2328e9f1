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
//! The engine lives across rounds ([`LiveEngine`]: brought to the state by
//! the nodes that changed) and every placement is committed into it, so one
//! round never hands out the same capacity twice; the plan is re-checked
//! again when it applies (`state::apply_workloads`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gantry_common::model::GpuTelemetry;
use gantry_common::workload::{AllocGpu, Allocation, DesiredState};
use gantry_placement::{Engine, EngineConfig, NodeExclusion, PlaceError, Placement};

use super::live_engine::LiveEngine;
use crate::state::capacity::NodeTelemetry;
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

/// Plans one round on an engine built for it (tests, and the first round
/// of a leadership). See [`plan_on`].
pub fn plan(state: &State, telemetry: &ClusterTelemetry<'_>, config: &EngineConfig, seed: u64) -> Round {
    if all_settled(state) {
        return Round::default();
    }
    let mut live = LiveEngine::build(Arc::new(state.clone()), telemetry, config);
    plan_on(&mut live, seed, &Todo::All)
}

/// The workloads a round evaluates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Todo {
    /// Every workload (an engine's first round).
    All,
    /// These, by name; the others are known to be settled.
    These(BTreeSet<String>),
}

impl Todo {
    pub fn is_empty(&self) -> bool {
        matches!(self, Todo::These(names) if names.is_empty())
    }
}

/// Plans one round on `live`, which the caller has brought to the state
/// (its [`LiveEngine::base`]). `seed` breaks ties between equally good
/// nodes. A node the engine cannot take (a MIG GPU of a model without
/// geometry, more than it holds) is left out with its reason; every other
/// node keeps scheduling. Only the workloads in `todo` are evaluated. The
/// nodes placed on and every workload in `todo` are noted in `live`, so the
/// next round takes them up again whether or not this plan commits, until
/// they are settled.
pub fn plan_on(live: &mut LiveEngine, seed: u64, todo: &Todo) -> Round {
    let state = Arc::clone(live.base());
    let names: Vec<&String> = match todo {
        Todo::All => state.workloads.keys().collect(),
        Todo::These(names) => names.iter().collect(),
    };
    let mut plan = Plan::default();
    for name in &names {
        let Some(w) = state.workloads.get(name.as_str()) else { continue };
        if w.stopping {
            continue;
        }
        let reason = plan_workload(&state, live.engine_mut(), name, w, seed, &mut plan);
        if reason != w.pending_reason {
            plan.pending.push(((*name).clone(), reason));
        }
        if plan.place.len() >= MAX_PLACEMENTS_PER_PLAN {
            break;
        }
    }
    // Every workload evaluated (or left for later) is taken up again next
    // round: its plan may not commit, or it waits (for capacity, for old
    // replicas to let go). Once settled, the next delta drops it.
    for new in &plan.place {
        live.committed_to(&new.node);
    }
    for name in &names {
        live.take_up_again(name);
    }
    Round { plan, excluded: Some(live.exclusions()) }
}

/// Whether `w` needs no decision: exactly its replicas, running its
/// current version on nodes that are not drained, none meant to run that
/// its agent stopped, and no pending reason to clear or set.
pub fn settled(state: &State, name: &str, w: &WorkloadRecord) -> bool {
    if w.stopping {
        return true;
    }
    if w.pending_reason.is_some() {
        return false;
    }
    // One its agent stopped for good although it was meant to run is to be stopped.
    if state.allocs_of(name).any(|a| a.desired == DesiredState::Run && !a.fills_slot()) {
        return false;
    }
    let allocs: Vec<&Allocation> = state.allocs_of(name).filter(|a| a.fills_slot()).collect();
    let mut replicas: Vec<u32> = allocs.iter().map(|a| a.replica).collect();
    replicas.sort_unstable();
    replicas.dedup();
    allocs.len() == w.spec.replicas as usize
        && replicas.len() == allocs.len()
        && allocs.iter().all(|a| {
            a.replica < w.spec.replicas
                && a.version == w.version
                && (a.actual.is_finished() || state.nodes.get(&a.node).is_some_and(|n| !n.drained))
        })
}

/// Whether no workload needs a decision (see [`settled`]).
pub fn all_settled(state: &State) -> bool {
    state.workloads.iter().all(|(name, w)| settled(state, name, w))
}

fn plan_workload(
    state: &State,
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
    // The first allocation of each slot, by replica (a lookup per slot, not a scan).
    let mut by_replica: BTreeMap<u32, &Allocation> = BTreeMap::new();
    for a in &running {
        if a.replica >= w.spec.replicas {
            plan.stop.push((a.id.clone(), "scaled down".into()));
        }
        by_replica.entry(a.replica).or_insert(*a);
    }
    for replica in 0..w.spec.replicas {
        if plan.place.len() >= MAX_PLACEMENTS_PER_PLAN {
            break;
        }
        let current = by_replica.get(&replica);
        match current {
            Some(a) if a.version < w.version => {
                plan.stop.push((a.id.clone(), format!("replaced by version {}", w.version)));
                waiting = true;
            }
            // A finished replica holds nothing and runs nowhere: nothing to move.
            Some(a) if a.actual.is_finished() => {}
            Some(a) if state.nodes.get(&a.node).is_some_and(|n| n.drained) => {
                match place(engine, state, &req, w, replica, seed) {
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
            None => match place(engine, state, &req, w, replica, seed) {
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
    let node = &placement.node_name;
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
        node: node.clone(),
        gpus,
        cpu_milli: w.spec.cpu_milli,
        memory_mib: w.spec.memory_mib,
    })
}
