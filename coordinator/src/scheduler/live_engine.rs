//! The placement engine, kept across rounds on the leader: it follows the
//! replicated state by the nodes that changed instead of being built again
//! from every node each round.
//!
//! ```text
//!   snapshot k ──diff──► snapshot k+1        (persistent maps: the diff skips what they share)
//!        │                    │
//!        └─ nodes whose record, allocations or telemetry changed,
//!           and those the last round committed to ──► Engine::set_node
//! ```
//!
//! A node gone from the state becomes an unschedulable placeholder, and its
//! index is taken by the next new node. The engine is built afresh when the
//! placeholders outnumber the live nodes, and whenever the applier has none
//! (first round, or after a lost leadership).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gantry_placement::{Engine, EngineConfig, NodeExclusion, NodeSnapshot};
use imbl::ordmap::DiffItem;

use super::plan::{settled, ClusterTelemetry, Todo};
use crate::state::capacity::{engine_gpus, node_snapshot, EngineGpus, NodeTelemetry};
use crate::state::State;

/// The engine and what it was last brought to.
#[derive(Clone)]
pub struct LiveEngine {
    engine: Engine,
    /// Node name → its index in the engine.
    index: BTreeMap<String, usize>,
    /// Indices of nodes gone from the state, free for new ones.
    free: Vec<usize>,
    /// The state the engine holds.
    base: Arc<State>,
    /// Per node, the health and load of its GPUs as the engine holds them.
    gpus: BTreeMap<String, EngineGpus>,
    /// Nodes a round committed placements to: set from the state at the
    /// next follow whatever the state says (the plan may not have committed).
    committed: BTreeSet<String>,
    /// Workloads a round placed, or left for later (a full plan): evaluated
    /// again next round whatever changed.
    carry: BTreeSet<String>,
}

/// What changed between the state an engine holds and a newer one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// Nodes whose record or allocations changed.
    nodes: BTreeSet<String>,
    /// The workloads a round must evaluate: those whose record or
    /// allocations changed, those with allocations on a changed node,
    /// those pending, and those carried over, less the ones settled.
    pub todo: Todo,
}

/// What [`LiveEngine::follow`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Followed {
    /// Nodes set again from the state.
    pub set: usize,
    /// Built afresh instead.
    pub rebuilt: bool,
}

impl LiveEngine {
    /// An engine over every node of `state`.
    pub fn build(state: Arc<State>, telemetry: &ClusterTelemetry<'_>, config: &EngineConfig) -> Self {
        let empty = NodeTelemetry::new();
        let mut index = BTreeMap::new();
        let mut gpus = BTreeMap::new();
        let mut nodes = Vec::with_capacity(state.nodes.len());
        for (i, (name, record)) in state.nodes.iter().enumerate() {
            let t = telemetry.get(name.as_str()).unwrap_or(&empty);
            nodes.push(node_snapshot(record, state.allocs_on(name), t));
            index.insert(name.clone(), i);
            gpus.insert(name.clone(), engine_gpus(record, t));
        }
        let (engine, _) = Engine::build(&gantry_placement::ClusterSnapshot { nodes }, config.clone());
        LiveEngine {
            engine,
            index,
            free: Vec::new(),
            base: state,
            gpus,
            committed: BTreeSet::new(),
            carry: BTreeSet::new(),
        }
    }

    /// What changed from the state the engine holds to `state` (reads
    /// only; the cost follows the changes and the pending workloads).
    pub fn delta(&self, state: &State) -> Delta {
        let nodes = changed_nodes(&self.base, state);
        let mut workloads = self.carry.clone();
        for node in &nodes {
            for a in self.base.allocs_on(node).chain(state.allocs_on(node)) {
                workloads.insert(a.workload.clone());
            }
        }
        let (a, b) = (self.base.allocs.map(), state.allocs.map());
        for d in a.diff(b) {
            let (DiffItem::Add(_, x) | DiffItem::Remove(_, x) | DiffItem::Update { new: (_, x), .. }) = d;
            workloads.insert(x.workload.clone());
        }
        let (a, b) = (self.base.workloads.map(), state.workloads.map());
        for d in a.diff(b) {
            let (DiffItem::Add(k, _) | DiffItem::Remove(k, _) | DiffItem::Update { new: (k, _), .. }) = d;
            workloads.insert(k.clone());
        }
        workloads.extend(
            state.workloads.iter().filter(|(_, w)| w.pending_reason.is_some()).map(|(n, _)| n.clone()),
        );
        workloads.retain(|name| state.workloads.get(name).is_some_and(|w| !settled(state, name, w)));
        Delta { nodes, todo: Todo::These(workloads) }
    }

    /// Brings the engine to `state` and `telemetry`: sets again the nodes
    /// whose record or allocations changed since the state it holds, those
    /// the last round committed to, and those whose GPUs' health or load
    /// moved. The cost follows what changed, plus one comparison of
    /// telemetry per node.
    pub fn follow(&mut self, state: Arc<State>, telemetry: &ClusterTelemetry<'_>, delta: Delta) -> Followed {
        let mut changed = std::mem::take(&mut self.committed);
        self.carry.clear();
        changed.extend(delta.nodes);
        let empty = NodeTelemetry::new();
        for (name, record) in state.nodes.iter() {
            let now = engine_gpus(record, telemetry.get(name.as_str()).unwrap_or(&empty));
            if self.gpus.get(name) != Some(&now) {
                changed.insert(name.clone());
            }
        }
        let placeholders = self.free.len() + changed.iter().filter(|n| !state.nodes.contains_key(*n)).count();
        if placeholders > state.nodes.len() {
            *self = LiveEngine::build(state, telemetry, self.engine.config());
            return Followed { set: 0, rebuilt: true };
        }
        for name in &changed {
            self.set(&state, name, telemetry.get(name.as_str()).unwrap_or(&empty));
        }
        self.base = state;
        Followed { set: changed.len(), rebuilt: false }
    }

    fn set(&mut self, state: &State, name: &str, telemetry: &NodeTelemetry<'_>) {
        match state.nodes.get(name) {
            Some(record) => {
                let snapshot = node_snapshot(record, state.allocs_on(name), telemetry);
                self.gpus.insert(name.to_string(), engine_gpus(record, telemetry));
                match self.index.get(name) {
                    Some(&i) => self.put(i, &snapshot),
                    None => {
                        let i = match self.free.pop() {
                            Some(i) => {
                                self.put(i, &snapshot);
                                i
                            }
                            None => self.engine.push_node(&snapshot).0,
                        };
                        self.index.insert(name.to_string(), i);
                    }
                }
            }
            None => {
                self.gpus.remove(name);
                if let Some(i) = self.index.remove(name) {
                    let mut gone = NodeSnapshot::new("", 0, 0, Vec::new());
                    gone.schedulable = false;
                    self.put(i, &gone);
                    self.free.push(i);
                }
            }
        }
    }

    fn put(&mut self, i: usize, snapshot: &NodeSnapshot) {
        // `i` comes from this engine's own index, so it exists.
        if let Err(e) = self.engine.set_node(i, snapshot) {
            tracing::warn!("the planner's engine lost node {i}: {e}");
        }
    }

    /// The engine, to place and commit into.
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Notes that a round committed a placement to `node`.
    pub fn committed_to(&mut self, node: &str) {
        self.committed.insert(node.to_string());
    }

    /// Notes that the next round evaluates `workload` again.
    pub fn take_up_again(&mut self, workload: &str) {
        self.carry.insert(workload.to_string());
    }

    /// The nodes the engine leaves out, and why.
    pub fn exclusions(&self) -> Vec<NodeExclusion> {
        self.engine.exclusions().to_vec()
    }

    /// The state the engine holds.
    pub fn base(&self) -> &Arc<State> {
        &self.base
    }

    /// The engine's view of each live node, by name (for tests).
    #[cfg(test)]
    pub fn nodes(&self) -> BTreeMap<String, NodeSnapshot> {
        let snapshot = self.engine.snapshot();
        self.index.iter().map(|(name, &i)| (name.clone(), snapshot.nodes[i].clone())).collect()
    }
}

/// The nodes whose record changed between two states, or that gained,
/// lost or changed an allocation.
fn changed_nodes(before: &State, after: &State) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let (a, b) = (before.nodes.map(), after.nodes.map());
    for d in a.diff(b) {
        let name = match d {
            DiffItem::Add(k, _) | DiffItem::Remove(k, _) | DiffItem::Update { new: (k, _), .. } => k,
        };
        out.insert(name.clone());
    }
    let (a, b) = (before.allocs.map(), after.allocs.map());
    for d in a.diff(b) {
        match d {
            DiffItem::Add(_, x) | DiffItem::Remove(_, x) => {
                out.insert(x.node.clone());
            }
            DiffItem::Update { old: (_, x), new: (_, y) } => {
                out.insert(x.node.clone());
                out.insert(y.node.clone());
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gantry_common::model::{GpuHealth, GpuTelemetry};

    use super::*;
    use crate::scheduler::plan::{cluster_telemetry, plan, plan_on};
    use crate::state::apply;
    use crate::state::random_stream::{Rng, Stream};

    /// Random telemetry for some of the state's nodes: load and health.
    fn samples(state: &State, rng: &mut Rng) -> Vec<(String, Vec<GpuTelemetry>)> {
        let sampled: Vec<(&String, &crate::state::NodeRecord)> =
            state.nodes.iter().filter(|_| rng.below(3) > 0).collect();
        sampled
            .into_iter()
            .map(|(name, n)| {
                let gpus = n
                    .info
                    .gpus
                    .iter()
                    .map(|g| GpuTelemetry {
                        index: g.index,
                        memory_used_mib: rng.below(4) * 1024,
                        utilization_pct: (rng.below(3) * 40) as u32,
                        temperature_c: 40,
                        power_w: 100.0,
                        health: if rng.below(10) == 0 {
                            GpuHealth::Unhealthy("xid 79".into())
                        } else {
                            GpuHealth::Healthy
                        },
                        mps_clients: None,
                        mig_instances: 0,
                    })
                    .collect();
                (name.clone(), gpus)
            })
            .collect()
    }

    /// On random command streams (nodes come and go, workloads are placed,
    /// fail and stop; telemetry moves), an engine that follows the state
    /// round after round holds every node as an engine built afresh does,
    /// including after rounds whose plans were never committed; and every
    /// workload that a full evaluation would act on is among those the
    /// delta says to evaluate.
    #[test]
    fn a_followed_engine_holds_what_a_fresh_one_does() {
        let config = EngineConfig::default();
        let mut followed_nodes = 0;
        for seed in 0..30 {
            let mut state = State::default();
            let mut stream = Stream::new(seed);
            let mut live: Option<LiveEngine> = None;
            for step in 0..300 {
                let command = stream.next(&state);
                apply(&mut state, &command);
                if stream.rng().below(4) != 0 {
                    continue;
                }
                let copied = samples(&state, stream.rng());
                let telemetry = cluster_telemetry(copied.iter().map(|(n, g)| (n.as_str(), g.as_slice())));
                let snapshot = Arc::new(state.frozen());
                let (engine, todo) = match live.take() {
                    Some(mut e) => {
                        let delta = e.delta(&snapshot);
                        let todo = delta.todo.clone();
                        followed_nodes += e.follow(Arc::clone(&snapshot), &telemetry, delta).set;
                        (e, todo)
                    }
                    None => (LiveEngine::build(Arc::clone(&snapshot), &telemetry, &config), Todo::All),
                };
                let fresh = LiveEngine::build(Arc::clone(&snapshot), &telemetry, &config);
                assert_eq!(engine.nodes(), fresh.nodes(), "seed {seed} step {step}");
                if let Todo::These(todo) = &todo {
                    let full = plan(&snapshot, &telemetry, &config, step).plan;
                    let acted = full
                        .place
                        .iter()
                        .map(|p| p.workload.clone())
                        .chain(full.pending.iter().map(|(w, _)| w.clone()))
                        .chain(
                            full.stop
                                .iter()
                                .filter_map(|(id, _)| snapshot.allocs.get(id).map(|a| a.workload.clone())),
                        );
                    for w in acted {
                        assert!(
                            todo.contains(&w),
                            "seed {seed} step {step}: {w} needs a decision but is not to plan: {full:?} allocs {:?}",
                            snapshot.allocs_of(&w).collect::<Vec<_>>()
                        );
                    }
                }
                let mut engine = engine;
                // A round places into the engine; its plan is dropped (never
                // committed) now and then, so the next round must take it up again.
                let round = plan_on(&mut engine, step, &todo);
                if stream.rng().below(2) == 0 && !round.plan.is_empty() {
                    apply(&mut state, &crate::state::Command::ApplyPlan(round.plan));
                }
                live = Some(engine);
            }
        }
        assert!(followed_nodes > 100, "the streams exercised following ({followed_nodes} nodes set)");
    }

    #[test]
    fn only_changed_nodes_are_set() {
        let config = EngineConfig::default();
        let mut state = State::default();
        let mut stream = Stream::new(3);
        while state.nodes.len() < 6 {
            let command = stream.next(&state);
            apply(&mut state, &command);
        }
        let none = ClusterTelemetry::new();
        let mut live = LiveEngine::build(Arc::new(state.frozen()), &none, &config);
        let same = live.delta(&state);
        assert_eq!(live.follow(Arc::new(state.frozen()), &none, same), Followed { set: 0, rebuilt: false });
        let name = state.nodes.keys().next().unwrap().clone();
        state.nodes.get_mut(&name).unwrap().drained = true;
        let delta = live.delta(&state);
        assert_eq!(live.follow(Arc::new(state.frozen()), &none, delta), Followed { set: 1, rebuilt: false });
        assert!(!live.nodes()[&name].schedulable);
    }
}
