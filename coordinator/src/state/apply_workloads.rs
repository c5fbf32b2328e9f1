//! Workload and allocation commands: submit, stop, drain, plans, reports.
//!
//! A plan is re-checked here, placement by placement, against the state as
//! it is when the entry applies — not as it was when the scheduler looked.
//! That makes "no GPU, MIG slot or MPS share handed out twice" a property of
//! the replicated log itself: it holds whichever leader proposed the plan,
//! and across leader changes.

use std::collections::{BTreeMap, BTreeSet};

use gantry_common::model::NodeStatus;
use gantry_common::workload::{
    ActualState, AllocReport, Allocation, DesiredState, HealthState, WorkloadSpec,
};
use gantry_placement::Engine;

use super::capacity::{node_engine, placement_on};
use super::{CommandResponse, Plan, State, WorkloadRecord};

/// Terminal allocations kept per workload for `gantryctl allocs --all`.
pub const KEEP_TERMINAL: usize = 32;

pub(super) fn submit(state: &mut State, spec: &WorkloadSpec) -> CommandResponse {
    if let Err(e) = spec.validate() {
        return CommandResponse::invalid(e.to_string());
    }
    let version = match state.workloads.get(&spec.name) {
        Some(w) if w.spec == *spec && !w.stopping => {
            return CommandResponse::Workload { version: w.version, changed: false }
        }
        Some(w) => w.version + 1,
        None => 1,
    };
    let compatible = state.workloads.get(&spec.name).is_some_and(|w| !w.spec.needs_replacement(spec));
    state.workloads.insert(
        spec.name.clone(),
        WorkloadRecord { spec: spec.clone(), version, stopping: false, pending_reason: None },
    );
    // Same spec but for the replica count: running replicas simply carry on
    // under the new version.
    if compatible {
        let ids: Vec<String> = state
            .allocs_of(&spec.name)
            .filter(|a| a.desired == DesiredState::Run)
            .map(|a| a.id.clone())
            .collect();
        for id in ids {
            if let Some(a) = state.allocs.get_mut(&id) {
                a.version = version;
                let node = a.node.clone();
                touch(state, &node);
            }
        }
    }
    CommandResponse::Workload { version, changed: true }
}

/// Submits every spec, or none when one is refused (each is checked
/// before anything changes). The answer is `Unchanged` when no spec
/// changed anything.
pub(super) fn submit_batch(state: &mut State, specs: &[WorkloadSpec]) -> CommandResponse {
    if specs.is_empty() {
        return CommandResponse::invalid("specs: a batch holds at least one workload");
    }
    if specs.len() > gantry_common::api::MAX_BATCH {
        return CommandResponse::invalid(format!(
            "specs: a batch holds at most {} workloads, this one {}",
            gantry_common::api::MAX_BATCH,
            specs.len()
        ));
    }
    let bytes = gantry_common::schema::encode(specs).map_or(usize::MAX, |b| b.len());
    if bytes > super::MAX_BATCH_BYTES {
        return CommandResponse::invalid(format!(
            "specs: a batch is at most {} MiB encoded, this one {bytes} bytes; send it in parts",
            super::MAX_BATCH_BYTES >> 20
        ));
    }
    let mut names = BTreeSet::new();
    for (i, spec) in specs.iter().enumerate() {
        if let Err(e) = spec.validate() {
            return CommandResponse::invalid(format!("specs[{i}] ({:?}): {e}", spec.name));
        }
        if !names.insert(spec.name.as_str()) {
            return CommandResponse::invalid(format!(
                "specs[{i}]: workload {:?} appears twice in the batch",
                spec.name
            ));
        }
    }
    let answers: Vec<CommandResponse> = specs.iter().map(|spec| submit(state, spec)).collect();
    if answers.iter().all(|a| matches!(a, CommandResponse::Workload { changed: false, .. })) {
        // Nothing changed; `apply` then takes back the revision it bumped.
        return CommandResponse::Unchanged;
    }
    CommandResponse::Batch(answers)
}

pub(super) fn stop_workload(state: &mut State, name: &str) -> CommandResponse {
    // Looked at before `get_mut`, which notes (and copies) the record.
    match state.workloads.get(name) {
        None => return CommandResponse::not_found(format!("workload {name:?} does not exist")),
        Some(w) if w.stopping => return CommandResponse::Unchanged,
        Some(_) => {}
    }
    let Some(w) = state.workloads.get_mut(name) else { return CommandResponse::Applied };
    w.stopping = true;
    w.pending_reason = None;
    let ids: Vec<String> =
        state.allocs_of(name).filter(|a| a.desired == DesiredState::Run).map(|a| a.id.clone()).collect();
    for id in ids {
        stop(state, &id, "workload stopped");
    }
    forget_if_done(state, name);
    CommandResponse::Applied
}

pub(super) fn drain(state: &mut State, node: &str, drain: bool) -> CommandResponse {
    // Looked at before `get_mut`, which notes (and copies) the record.
    match state.nodes.get(node) {
        None => return CommandResponse::not_found(format!("node {node:?} is not registered")),
        Some(n) if n.drained == drain => return CommandResponse::Unchanged,
        Some(_) => {}
    }
    if let Some(n) = state.nodes.get_mut(node) {
        n.drained = drain;
    }
    CommandResponse::Applied
}

/// A node went down: what ran there is lost (and will be replaced).
pub(super) fn node_down(state: &mut State, node: &str) {
    // What still holds resources there, or is meant to run there; a replica
    // that finished is done wherever its node is.
    let ids: Vec<String> = state
        .allocs_on(node)
        .filter(|a| !a.actual.is_terminal() || (a.desired == DesiredState::Run && !a.actual.is_finished()))
        .map(|a| a.id.clone())
        .collect();
    for id in ids {
        if let Some(a) = state.allocs.get_mut(&id) {
            a.desired = DesiredState::Stop;
            if a.desired_reason.is_empty() {
                a.desired_reason = "node down".into();
            }
            a.actual = ActualState::Lost;
            a.health = HealthState::Unknown;
            a.message = format!("node {node} went down");
        }
    }
    touch(state, node);
    let workloads: BTreeSet<String> = state.allocs_on(node).map(|a| a.workload.clone()).collect();
    for w in workloads {
        forget_if_done(state, &w);
    }
}

pub(super) fn apply_plan(state: &mut State, plan: &Plan) -> CommandResponse {
    for (id, reason) in &plan.stop {
        if state.allocs.get(id).is_some_and(|a| a.desired == DesiredState::Run) {
            stop(state, id, reason);
        }
    }
    for (id, version) in &plan.bump {
        let current = state.allocs.get(id).and_then(|a| state.workloads.get(&a.workload)).map(|w| w.version);
        if current == Some(*version) {
            if let Some(a) = state.allocs.get_mut(id) {
                a.version = *version;
                let node = a.node.clone();
                touch(state, &node);
            }
        }
    }
    let mut placed = Vec::new();
    let mut refused = Vec::new();
    // One engine per node touched by this plan, holding what the plan already placed there.
    let mut engines: BTreeMap<String, Result<Engine, String>> = BTreeMap::new();
    let mut filled: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for new in &plan.place {
        let label = format!("{}[{}] on {}", new.workload, new.replica, new.node);
        let current = match state.workloads.get(&new.workload) {
            Some(w) if w.version == new.version && !w.stopping => w,
            Some(_) => {
                refused.push(format!("{label}: the workload changed since it was planned"));
                continue;
            }
            None => {
                refused.push(format!("{label}: the workload no longer exists"));
                continue;
            }
        };
        // The slots each workload's allocations fill, looked up once per
        // workload per plan (not a scan of its replicas per placement).
        let filled = filled.entry(new.workload.clone()).or_insert_with(|| {
            state.allocs_of(&new.workload).filter(|a| a.fills_slot()).map(|a| a.replica).collect()
        });
        if filled.contains(&new.replica) {
            refused.push(format!("{label}: the replica already has an allocation"));
            continue;
        }
        let req = current.spec.placement_request();
        let Some(record) = state.nodes.get(&new.node) else {
            refused.push(format!("{label}: node is not registered"));
            continue;
        };
        if record.status != NodeStatus::Ready || record.drained {
            refused.push(format!("{label}: node is down or drained"));
            continue;
        }
        let Some(placement) = placement_on(record, new) else {
            refused.push(format!("{label}: the node has no such GPU"));
            continue;
        };
        let engine = engines.entry(new.node.clone()).or_insert_with(|| node_engine(state, &new.node));
        let checked = match engine {
            Ok(engine) => engine.commit(&req, &placement).map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        if let Err(e) = checked {
            refused.push(format!("{label}: {e}"));
            continue;
        }
        state.next_alloc += 1;
        let id = format!("{}.{}.{}", new.workload, new.replica, state.next_alloc);
        state.allocs.insert(id.clone(), Allocation::pending(id.clone(), new.clone()));
        filled.insert(new.replica);
        touch(state, &new.node);
        placed.push(id);
    }
    for (workload, reason) in &plan.pending {
        if let Some(w) = state.workloads.get_mut(workload) {
            if !w.stopping {
                w.pending_reason = reason.clone();
            }
        }
    }
    let workloads: BTreeSet<&String> = plan.place.iter().map(|p| &p.workload).collect();
    for w in workloads {
        prune_history(state, w);
    }
    CommandResponse::Plan { placed, refused }
}

pub(super) fn report(state: &mut State, node: &str, reports: &[AllocReport]) -> CommandResponse {
    if !state.nodes.contains_key(node) {
        return CommandResponse::not_found(format!("node {node:?} is not registered"));
    }
    let mut changed = BTreeSet::new();
    for r in reports {
        let Some(a) = state.allocs.get_mut(&r.id) else { continue };
        // Only the node an allocation is on reports for it; and a lost one stays lost.
        if a.node != node || !r.differs_from(a) || a.actual == ActualState::Lost {
            continue;
        }
        let was_terminal = a.actual.is_terminal();
        r.apply_to(a);
        // Confirmed stopped: it leaves the node's desired set, and the agent
        // must hear so to forget it (its record, logs, cgroups).
        let left_set = a.desired == DesiredState::Stop && a.actual.is_terminal() && !was_terminal;
        changed.insert(a.workload.clone());
        if left_set {
            touch(state, node);
        }
    }
    if changed.is_empty() {
        return CommandResponse::Unchanged;
    }
    for w in &changed {
        forget_if_done(state, w);
    }
    CommandResponse::Applied
}

fn stop(state: &mut State, id: &str, reason: &str) {
    let Some(a) = state.allocs.get_mut(id) else { return };
    a.desired = DesiredState::Stop;
    a.desired_reason = reason.to_string();
    // Never started: nothing to wait for.
    if a.actual == ActualState::Pending {
        a.actual = ActualState::Stopped;
    }
    let node = a.node.clone();
    touch(state, &node);
}

/// Records that `node`'s desired allocations changed at this revision.
fn touch(state: &mut State, node: &str) {
    let revision = state.revision;
    if let Some(n) = state.nodes.get_mut(node) {
        n.alloc_revision = revision;
    }
}

/// A stopping workload whose allocations no longer hold anything is removed, with them.
fn forget_if_done(state: &mut State, name: &str) {
    let done = state.workloads.get(name).is_some_and(|w| w.stopping)
        && !state.allocs_of(name).any(Allocation::holds_resources);
    if done {
        state.workloads.remove(name);
        let (ids, nodes): (Vec<String>, BTreeSet<String>) =
            state.allocs_of(name).map(|a| (a.id.clone(), a.node.clone())).unzip();
        for id in ids {
            state.allocs.remove(&id);
        }
        for node in nodes {
            touch(state, &node);
        }
    }
}

/// Keeps the newest [`KEEP_TERMINAL`] terminal allocations of a workload that stay stopped.
fn prune_history(state: &mut State, name: &str) {
    let mut old: Vec<(u64, String)> = state
        .allocs_of(name)
        .filter(|a| a.desired == DesiredState::Stop && a.actual.is_terminal())
        .map(|a| (sequence(&a.id), a.id.clone()))
        .collect();
    if old.len() <= KEEP_TERMINAL {
        return;
    }
    old.sort();
    let excess = old.len() - KEEP_TERMINAL;
    for (_, id) in old.into_iter().take(excess) {
        state.allocs.remove(&id);
    }
}

fn sequence(id: &str) -> u64 {
    id.rsplit('.').next().and_then(|s| s.parse().ok()).unwrap_or(0)
}
