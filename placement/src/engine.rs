//! The engine: a working copy of the cluster plus indexes; `place` proposes,
//! `commit` applies.
//!
//! ```text
//!   ClusterSnapshot ──new / build──▶ Engine ──place(request, seed)──▶ Placement | Refusal
//!                                      ▲                                  │
//!                                      └──────────── commit ◀─────────────┘
//! ```
//!
//! [`Engine::new`] is strict: one node the engine cannot take as it is (a
//! MIG-mode GPU of a model without a MIG table, an impossible MIG layout, a
//! GPU holding more than it has, more GPU models than the engine tracks)
//! fails the whole build. [`Engine::build`] leaves such a node out instead:
//! it stays in the engine under its index, is never chosen, is counted as
//! excluded in refusals, and its reason is returned, so every other node
//! keeps scheduling.

use thiserror::Error;

use crate::cache::{Best, Key, ScoreCache};
use crate::fgd::{FragCache, TargetWorkload};
use crate::fit::{self, Choice, Compiled, Kind};
use crate::index::{Index, Order};
use crate::mig::MigError;
use crate::policy::Policy;
use crate::refusal::{Refusal, RefusalReason};
use crate::request::{GpuAssignment, Placement, PlacementRequest, RequestError};
use crate::rng::{mix, SplitMix64};
use crate::score;
use crate::snapshot::{ClusterSnapshot, GpuTelemetry, NodeSnapshot};
use crate::state::{self, ModelSet, Models, Node};

/// A node [`Engine::build`] left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeExclusion {
    /// Index of the node in the snapshot (the engine keeps it at that index).
    pub node: usize,
    /// The node's name.
    pub name: String,
    /// What is wrong, naming the GPU and its model, e.g. "GPU 3 (L40S) is in
    /// MIG mode but L40S has no MIG geometry: ...".
    pub reason: String,
}

impl std::fmt::Display for NodeExclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {:?} is excluded: {}", self.name, self.reason)
    }
}

/// Errors building or updating an engine.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("more than {0} distinct GPU models")]
    TooManyModels(usize),
    #[error("node {node:?} GPU {gpu}: {source}")]
    Gpu { node: String, gpu: usize, source: Box<EngineError> },
    #[error("MIG: {0}")]
    Mig(#[from] MigError),
    #[error("a GPU's reported usage exceeds its capacity")]
    OverCommitted,
    #[error("the placement's share does not match the GPU's mode")]
    ShareMismatch,
    #[error("placement refers to node {node} / GPU {gpu}, which does not exist")]
    NoSuchGpu { node: usize, gpu: usize },
    #[error("node {0} does not exist (the engine holds fewer nodes)")]
    NoSuchNode(usize),
    #[error("placement no longer fits: {0}")]
    Stale(String),
}

/// Why `place` returned no placement.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlaceError {
    #[error("invalid request: {0}")]
    Invalid(#[from] RequestError),
    #[error("{0}")]
    Refused(Refusal),
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
    #[error("placement could not be applied: {0}")]
    Conflict(String),
}

/// Operator settings of the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Used when a request names no policy.
    pub default_policy: Policy,
    /// Stop after scoring this many feasible nodes (`None`: score all). Nomad
    /// uses about log2(nodes); the default, 16, keeps quality close to a full scan.
    pub candidate_limit: Option<usize>,
    /// The task mix fragmentation is measured against (`fgd`, `fgd-pack`).
    pub target: TargetWorkload,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_policy: Policy::default(),
            candidate_limit: Some(16),
            target: TargetWorkload::generic(),
        }
    }
}

/// The placement engine over one cluster.
#[derive(Debug, Clone)]
pub struct Engine {
    nodes: Vec<Node>,
    models: Models,
    index: Index,
    frag: FragCache,
    config: EngineConfig,
    /// Per node, bumped by every change to it (keys the score cache).
    versions: Vec<u32>,
    cache: ScoreCache,
    /// Nodes left out by [`Engine::build`], with their snapshots as given
    /// (so [`Engine::snapshot`] hands them back unchanged).
    exclusions: Vec<NodeExclusion>,
    excluded_snapshots: Vec<NodeSnapshot>,
}

impl Engine {
    /// Builds an engine from a snapshot; strict: fails when any node is
    /// inconsistent (a MIG-mode GPU whose model has no MIG table, an
    /// impossible MIG layout, an over-committed GPU, more than
    /// [`Engine::MAX_MODELS`] GPU models). [`Engine::build`] leaves such
    /// nodes out instead.
    pub fn new(snapshot: &ClusterSnapshot, config: EngineConfig) -> Result<Self, EngineError> {
        let (nodes, models) = state::build(snapshot)?;
        Ok(Self::assemble(nodes, models, config, Vec::new(), Vec::new()))
    }

    /// Builds an engine from a snapshot, leaving out every node that
    /// [`Engine::new`] would fail on: such a node keeps its index but is
    /// treated as unschedulable (never chosen, counted as excluded in
    /// refusals). Returns the engine and the exclusions, in node order (also
    /// kept: [`Engine::exclusions`]).
    pub fn build(snapshot: &ClusterSnapshot, config: EngineConfig) -> (Self, Vec<NodeExclusion>) {
        let (nodes, models, faults) = state::build_lenient(snapshot);
        let mut exclusions = Vec::with_capacity(faults.len());
        let mut originals = Vec::with_capacity(faults.len());
        for (i, fault) in faults {
            exclusions.push(NodeExclusion {
                node: i,
                name: snapshot.nodes[i].name.clone(),
                reason: fault.reason,
            });
            originals.push(snapshot.nodes[i].clone());
        }
        let engine = Self::assemble(nodes, models, config, exclusions.clone(), originals);
        (engine, exclusions)
    }

    /// Most distinct GPU models one engine tracks; nodes that would add more
    /// are excluded by [`Engine::build`].
    pub const MAX_MODELS: usize = state::MAX_MODELS;

    fn assemble(
        nodes: Vec<Node>,
        models: Models,
        config: EngineConfig,
        exclusions: Vec<NodeExclusion>,
        excluded_snapshots: Vec<NodeSnapshot>,
    ) -> Self {
        let index = Index::new(&nodes, models.names.len());
        let frag = FragCache::new(&config.target, &models, &nodes);
        let versions = vec![1; nodes.len()];
        Self {
            nodes,
            models,
            index,
            frag,
            config,
            versions,
            cache: ScoreCache::default(),
            exclusions,
            excluded_snapshots,
        }
    }

    /// The nodes left out when the engine was built (empty for [`Engine::new`]).
    pub fn exclusions(&self) -> &[NodeExclusion] {
        &self.exclusions
    }

    /// Proposes a placement for `req` without changing anything. Ties between
    /// equally good nodes break by `seed`.
    pub fn place(&self, req: &PlacementRequest, seed: u64) -> Result<Placement, PlaceError> {
        validate(req)?;
        let c = self.compile(req);
        if let Some((i, choice)) = self.search(&c, seed) {
            return Ok(self.placement(i, &choice, &c));
        }
        let refusal = self.refusal(&c);
        let rejected: usize = refusal.reasons.iter().map(|(_, n)| n).sum();
        if rejected < self.nodes.len() {
            // The index is an over-approximation, so this cannot happen; if it
            // ever did, a full scan is still a correct answer.
            if let Some((i, choice)) = self.best_of(0..self.nodes.len(), &c, seed, usize::MAX) {
                return Ok(self.placement(i, &choice, &c));
            }
        }
        Err(PlaceError::Refused(refusal))
    }

    /// Applies a placement (one `place` returned) to the working state.
    pub fn commit(&mut self, req: &PlacementRequest, placement: &Placement) -> Result<(), EngineError> {
        let i = placement.node;
        let node = self.nodes.get(i).ok_or(EngineError::NoSuchGpu { node: i, gpu: 0 })?;
        let c = self.compile(req);
        fit::check_node(node, &c).map_err(|r| match &node.excluded {
            Some(why) => EngineError::Stale(format!("node {:?} is excluded: {why}", node.name)),
            None => EngineError::Stale(format!("{r:?}")),
        })?;
        // Apply to copies of the touched GPUs first, so a failed commit changes nothing.
        let mut touched = Vec::with_capacity(placement.gpus.len());
        for a in &placement.gpus {
            let g = touched
                .iter()
                .find(|(k, _)| *k == a.gpu)
                .map(|(_, g): &(usize, crate::state::Gpu)| g.clone())
                .or_else(|| node.gpus.get(a.gpu).cloned());
            let mut g = g.ok_or(EngineError::NoSuchGpu { node: i, gpu: a.gpu })?;
            g.apply(&a.share)?;
            if !g.within_capacity() {
                return Err(EngineError::Stale(format!("GPU {} would be over-committed", a.gpu)));
            }
            touched.retain(|(k, _)| *k != a.gpu);
            touched.push((a.gpu, g));
        }
        let node = &mut self.nodes[i];
        for (k, g) in touched {
            node.gpus[k] = g;
        }
        node.cpu_used += req.cpu_milli;
        node.mem_used += req.memory_mib;
        if !node.workloads.contains(&req.workload) {
            node.workloads.insert(req.workload.clone());
            node.commits.insert(req.workload.clone(), 1);
        } else if let Some(n) = node.commits.get_mut(&req.workload) {
            *n += 1;
        }
        self.refresh(i);
        Ok(())
    }

    /// Gives back what a committed placement holds: its GPU shares, CPU and
    /// memory (the inverse of [`Engine::commit`], for a replica that
    /// stopped). A placement the node does not hold is refused and changes
    /// nothing. The workload leaves the node's list with its last replica
    /// committed here; one the snapshot listed stays listed (a snapshot does
    /// not say how many replicas it holds) until [`Engine::set_node`].
    pub fn release(&mut self, req: &PlacementRequest, placement: &Placement) -> Result<(), EngineError> {
        let i = placement.node;
        let node = self.nodes.get(i).ok_or(EngineError::NoSuchNode(i))?;
        if node.cpu_used < req.cpu_milli || node.mem_used < req.memory_mib {
            return Err(EngineError::Stale(format!(
                "node {:?} holds less CPU or memory than the placement",
                node.name
            )));
        }
        // Release from copies of the touched GPUs first, so a failure changes nothing.
        let mut touched: Vec<(usize, crate::state::Gpu)> = Vec::with_capacity(placement.gpus.len());
        for a in &placement.gpus {
            let g = touched.iter().find(|(k, _)| *k == a.gpu).map(|(_, g)| g.clone());
            let mut g = g
                .or_else(|| node.gpus.get(a.gpu).cloned())
                .ok_or(EngineError::NoSuchGpu { node: i, gpu: a.gpu })?;
            g.release(&a.share)?;
            touched.retain(|(k, _)| *k != a.gpu);
            touched.push((a.gpu, g));
        }
        let node = &mut self.nodes[i];
        for (k, g) in touched {
            node.gpus[k] = g;
        }
        node.cpu_used -= req.cpu_milli;
        node.mem_used -= req.memory_mib;
        if let Some(n) = node.commits.get_mut(&req.workload) {
            *n -= 1;
            if *n == 0 {
                node.commits.remove(&req.workload);
                node.workloads.remove(&req.workload);
            }
        }
        self.refresh(i);
        Ok(())
    }

    /// Takes node `i` as `snapshot` has it now (what it holds, its labels,
    /// whether it is schedulable, its telemetry), in O(the node), so an
    /// engine kept across rounds follows the cluster by the nodes that
    /// changed instead of being built again. A node the engine cannot take
    /// is left out as [`Engine::build`] would; its exclusion is returned.
    pub fn set_node(
        &mut self,
        i: usize,
        snapshot: &NodeSnapshot,
    ) -> Result<Option<NodeExclusion>, EngineError> {
        if i >= self.nodes.len() {
            return Err(EngineError::NoSuchNode(i));
        }
        Ok(self.take_node(i, snapshot))
    }

    /// Adds a node after the last one; returns its index and, when the
    /// engine cannot take it, its exclusion (it keeps the index).
    pub fn push_node(&mut self, snapshot: &NodeSnapshot) -> (usize, Option<NodeExclusion>) {
        let i = self.nodes.len();
        (i, self.take_node(i, snapshot))
    }

    /// How many nodes the engine holds, excluded ones included.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn take_node(&mut self, i: usize, snapshot: &NodeSnapshot) -> Option<NodeExclusion> {
        let known_models = self.models.names.len();
        let (node, fault) = state::build_one(snapshot, &mut self.models);
        if i == self.nodes.len() {
            self.nodes.push(node);
            self.versions.push(0);
            // Its entries are sized by the node count.
            self.cache = ScoreCache::default();
        } else {
            self.nodes[i] = node;
        }
        if let Some(at) = self.exclusions.iter().position(|x| x.node == i) {
            self.exclusions.remove(at);
            self.excluded_snapshots.remove(at);
        }
        let exclusion =
            fault.map(|f| NodeExclusion { node: i, name: snapshot.name.clone(), reason: f.reason });
        if let Some(x) = &exclusion {
            let at = self.exclusions.partition_point(|e| e.node < i);
            self.exclusions.insert(at, x.clone());
            self.excluded_snapshots.insert(at, snapshot.clone());
        }
        if self.models.names.len() == known_models {
            self.index.push(i, &self.nodes[i]);
            self.frag.set_node(i, &self.nodes[i]);
            self.versions[i] = self.versions[i].wrapping_add(1).max(1);
        } else {
            // A GPU model the engine had not seen: the index and the
            // fragmentation shapes are laid out per model, so they are built again.
            self.index = Index::new(&self.nodes, self.models.names.len());
            self.frag = FragCache::new(&self.config.target, &self.models, &self.nodes);
            self.cache = ScoreCache::default();
            for v in &mut self.versions {
                *v = v.wrapping_add(1).max(1);
            }
        }
        exclusion
    }

    /// Re-files node `i` after it changed.
    fn refresh(&mut self, i: usize) {
        self.index.update(i, &self.nodes[i]);
        self.frag.refresh(i, &self.nodes[i]);
        self.versions[i] = self.versions[i].wrapping_add(1).max(1);
    }

    /// `place` then `commit`. An engine that scores every node
    /// (`candidate_limit: None`) answers from its score cache (same result,
    /// see `cache.rs`).
    pub fn place_and_commit(&mut self, req: &PlacementRequest, seed: u64) -> Result<Placement, PlaceError> {
        let p = match self.place_cached(req, seed) {
            Some(Ok(Some(p))) => p,
            Some(Ok(None)) => return Err(PlaceError::Refused(self.refusal(&self.compile(req)))),
            Some(Err(e)) => return Err(e),
            None => self.place(req, seed)?,
        };
        self.apply(req, p)
    }

    /// Like [`Engine::place_and_commit`], but a request that fits nowhere is
    /// `Ok(None)`, without the per-node pass that explains a refusal (trace
    /// replay only needs to know whether a task was placed).
    pub fn try_place_and_commit(
        &mut self,
        req: &PlacementRequest,
        seed: u64,
    ) -> Result<Option<Placement>, PlaceError> {
        let p = match self.place_cached(req, seed) {
            Some(r) => match r? {
                Some(p) => p,
                None => return Ok(None),
            },
            None => match self.place(req, seed) {
                Ok(p) => p,
                Err(PlaceError::Refused(_)) => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        self.apply(req, p).map(Some)
    }

    fn apply(&mut self, req: &PlacementRequest, p: Placement) -> Result<Placement, PlaceError> {
        // A placement `place` just produced always applies; a failure here is a bug
        // in the engine, reported as a conflict rather than a panic.
        self.commit(req, &p).map_err(|e| PlaceError::Conflict(e.to_string()))?;
        Ok(p)
    }

    /// Replaces the live telemetry of one GPU (used by `least-loaded`).
    pub fn update_telemetry(
        &mut self,
        node: usize,
        gpu: usize,
        telemetry: GpuTelemetry,
    ) -> Result<(), EngineError> {
        let g = self
            .nodes
            .get_mut(node)
            .and_then(|n| n.gpus.get_mut(gpu))
            .ok_or(EngineError::NoSuchGpu { node, gpu })?;
        g.telemetry = Some(telemetry);
        self.versions[node] = self.versions[node].wrapping_add(1).max(1);
        Ok(())
    }

    /// The working state as a snapshot (reflects every commit); excluded
    /// nodes come back as they were given.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let mut snap = state::export(&self.nodes, &self.models);
        for (x, original) in self.exclusions.iter().zip(&self.excluded_snapshots) {
            if let Some(n) = snap.nodes.get_mut(x.node) {
                *n = original.clone();
            }
        }
        snap
    }

    /// Expected fragmentation (thousandths of a GPU, weighted by the target
    /// workload) summed over all nodes.
    pub fn fragmentation(&self) -> f64 {
        (0..self.nodes.len())
            .map(|i| self.frag.node_frag(i, self.nodes[i].cpu_cap.saturating_sub(self.nodes[i].cpu_used)))
            .sum()
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn compile<'a>(&self, req: &'a PlacementRequest) -> Compiled<'a> {
        let models = if req.constraints.gpu_models.is_empty() {
            ModelSet::first(self.models.names.len())
        } else {
            req.constraints.gpu_models.iter().filter_map(|m| self.models.id(m)).collect()
        };
        Compiled {
            req,
            models,
            kind: Kind::from_request(&req.gpu),
            policy: req.policy.unwrap_or(self.config.default_policy),
        }
    }

    /// The best (node, choice) among the candidates the index yields.
    fn search(&self, c: &Compiled<'_>, seed: u64) -> Option<(usize, Choice)> {
        let mut rng = SplitMix64::new(seed);
        let order = match c.policy {
            Policy::Binpack => Order::Tight,
            Policy::Spread => Order::Loose,
            _ => Order::Tight,
        };
        let mut buckets = self.index.buckets_for(&c.kind, &c.models, order);
        if !matches!(c.policy, Policy::Binpack | Policy::Spread) && !buckets.is_empty() {
            let r = rng.below(buckets.len());
            buckets.rotate_left(r);
        }
        let limit = self.config.candidate_limit.unwrap_or(usize::MAX).max(1);
        let offsets: Vec<usize> =
            buckets.iter().map(|&b| rng.below(self.index.bucket(b).len().max(1))).collect();
        let walk = buckets.iter().zip(offsets).flat_map(|(&b, off)| {
            let nodes = self.index.bucket(b);
            (0..nodes.len()).map(move |k| nodes[(off + k) % nodes.len()] as usize)
        });
        self.best_of(walk, c, seed, limit)
    }

    /// A full scan answered from the score cache (`Ok(None)`: fits nowhere);
    /// `None` when the engine samples candidates or the request is not cacheable.
    fn place_cached(
        &mut self,
        req: &PlacementRequest,
        seed: u64,
    ) -> Option<Result<Option<Placement>, PlaceError>> {
        if self.config.candidate_limit.is_some() {
            return None;
        }
        if let Err(e) = validate(req) {
            return Some(Err(e));
        }
        let policy = req.policy.unwrap_or(self.config.default_policy);
        let key = Key::of(req, policy)?;
        // Host memory decides feasibility only; it is checked per node below.
        let mut no_mem = req.clone();
        no_mem.memory_mib = 0;
        let c = self.compile(&no_mem);
        let entry = self.cache.entry(key, self.nodes.len());
        let mut choices = Vec::with_capacity(8);
        let mut best: Option<(f64, u64, usize, Choice)> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if entry.seen[i] != self.versions[i] {
                entry.best[i] = node_best(&self.frag, i, node, &c, &mut choices);
                entry.seen[i] = self.versions[i];
            }
            let Some((cost, ch)) = entry.best[i] else { continue };
            if matches!(best, Some((bc, ..)) if cost > bc)
                || node.mem_cap.saturating_sub(node.mem_used) < req.memory_mib
            {
                continue;
            }
            let tie = tie_break(seed, i);
            if best.is_none_or(|(bc, bt, ..)| cost < bc || (cost == bc && tie < bt)) {
                best = Some((cost, tie, i, ch));
            }
        }
        Some(Ok(best.map(|(_, _, i, ch)| self.placement(i, &ch, &c))))
    }

    /// Scores the feasible nodes of `candidates` (up to `limit` of them).
    fn best_of(
        &self,
        candidates: impl Iterator<Item = usize>,
        c: &Compiled<'_>,
        seed: u64,
        limit: usize,
    ) -> Option<(usize, Choice)> {
        let mut found = 0usize;
        let mut best: Option<(f64, u64, usize, Choice)> = None;
        let mut choices = Vec::with_capacity(8);
        for i in candidates {
            let Some((cost, ch)) = node_best(&self.frag, i, &self.nodes[i], c, &mut choices) else {
                continue;
            };
            let tie = tie_break(seed, i);
            let better = match &best {
                None => true,
                Some((bc, bt, _, _)) => cost < *bc || (cost == *bc && tie < *bt),
            };
            if better {
                best = Some((cost, tie, i, ch));
            }
            found += 1;
            if found >= limit {
                break;
            }
        }
        best.map(|(_, _, i, ch)| (i, ch))
    }

    fn placement(&self, i: usize, choice: &Choice, c: &Compiled<'_>) -> Placement {
        Placement {
            node: i,
            node_name: self.nodes[i].name.clone(),
            gpus: choice
                .gpus()
                .iter()
                .map(|&g| GpuAssignment {
                    gpu: usize::from(g),
                    share: c.kind.share(choice, &self.nodes[i].gpus[usize::from(g)]),
                })
                .collect(),
        }
    }

    /// Full pass over the cluster: each node's first failing check.
    fn refusal(&self, c: &Compiled<'_>) -> Refusal {
        let mut counts: Vec<(RefusalReason, usize)> = Vec::new();
        let mut scratch = Vec::new();
        for node in &self.nodes {
            scratch.clear();
            if let Err(r) = fit::choices(node, c, &mut scratch) {
                let reason = RefusalReason::from_reject(r);
                match counts.iter_mut().find(|(x, _)| *x == reason) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((reason, 1)),
                }
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut wanted = c.req.gpu.describe();
        if !c.req.constraints.gpu_models.is_empty() {
            wanted.push_str(&format!(" of model {}", c.req.constraints.gpu_models.join("|")));
        }
        if c.req.cpu_milli > 0 || c.req.memory_mib > 0 {
            wanted.push_str(&format!(" and {} mCPU / {} MiB free", c.req.cpu_milli, c.req.memory_mib));
        }
        let excluded = self.exclusions.iter().map(|x| format!("{}: {}", x.name, x.reason)).collect();
        Refusal { wanted, nodes_total: self.nodes.len(), reasons: counts, excluded }
    }
}

/// Rejects malformed requests.
fn validate(req: &PlacementRequest) -> Result<(), PlaceError> {
    req.gpu.validate()?;
    if let crate::request::GpuRequest::Mig { profile } = &req.gpu {
        if !crate::mig::TABLES.iter().any(|t| t.profile(profile).is_ok()) {
            return Err(RequestError::MigProfile(format!("unknown MIG profile {profile:?}")).into());
        }
    }
    Ok(())
}

/// The seeded tie-break between equally good nodes.
fn tie_break(seed: u64, i: usize) -> u64 {
    mix(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Node `i`'s cheapest choice for `c` (the first of equal ones), or `None`
/// when `c` does not fit there.
fn node_best(frag: &FragCache, i: usize, node: &Node, c: &Compiled<'_>, scratch: &mut Vec<Choice>) -> Best {
    scratch.clear();
    fit::choices(node, c, scratch).ok()?;
    let mut best: Best = None;
    for ch in scratch.iter() {
        let cost = score::cost(c.policy, frag, i, node, ch, c);
        if best.is_none_or(|(bc, _)| cost < bc) {
            best = Some((cost, *ch));
        }
    }
    best
}

/// One-shot convenience: builds an engine over `snapshot` (leaving out the
/// nodes [`Engine::build`] excludes) and places `req` with `policy`, scoring
/// every feasible node.
pub fn place(
    snapshot: &ClusterSnapshot,
    req: &PlacementRequest,
    policy: Policy,
    seed: u64,
) -> Result<Placement, PlaceError> {
    let config = EngineConfig { default_policy: policy, candidate_limit: None, ..EngineConfig::default() };
    let (engine, _) = Engine::build(snapshot, config);
    engine.place(req, seed)
}
