//! Per-request-shape score cache for full scans (`candidate_limit: None`).
//!
//! Every policy's cost is local to one node: it reads only that node and its
//! fragmentation aggregates. A commit changes one node, so after a commit the
//! best choice and cost of every *other* node for a given request shape are
//! still valid. The cache keeps, per request shape, each node's best
//! (cost, choice) together with the node's version when it was computed; a
//! lookup recomputes only the nodes whose version moved and then takes the
//! minimum with the same seeded tie-break as the uncached scan, so results
//! are identical.
//!
//! Host memory is left out of the key (it only decides feasibility, never a
//! cost), so tasks that differ only in memory share an entry; it is checked
//! per node at lookup. Requests with label selectors or anti-affinity are not
//! cached (they depend on more of the node than its version tracks).

use std::collections::HashMap;

use crate::fit::Choice;
use crate::policy::Policy;
use crate::request::{GpuRequest, PlacementRequest};

/// Most cached (shape, node) entries in all; bounds the memory to tens of MiB.
const MAX_ENTRIES: usize = 1 << 21;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    policy: Policy,
    cpu_milli: u64,
    gpu: GpuRequest,
    models: Vec<String>,
    min_gpu_memory_mib: u64,
}

impl Key {
    /// The cache key of `req` under `policy`, or `None` when it is not cacheable.
    pub fn of(req: &PlacementRequest, policy: Policy) -> Option<Self> {
        let c = &req.constraints;
        if !c.labels.is_empty() || c.spread_replicas {
            return None;
        }
        Some(Self {
            policy,
            cpu_milli: req.cpu_milli,
            gpu: req.gpu.clone(),
            models: c.gpu_models.clone(),
            min_gpu_memory_mib: c.min_gpu_memory_mib,
        })
    }
}

/// One node's cached answer: its best choice and cost, or infeasible (`None`).
pub(crate) type Best = Option<(f64, Choice)>;

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Node version each answer was computed at (0: never).
    pub seen: Vec<u32>,
    pub best: Vec<Best>,
    last_used: u64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ScoreCache {
    slots: HashMap<Key, Entry>,
    clock: u64,
}

impl ScoreCache {
    /// The entry for `key` over `nodes` nodes, created (evicting the least
    /// recently used entry when full) if missing.
    pub fn entry(&mut self, key: Key, nodes: usize) -> &mut Entry {
        self.clock += 1;
        let max_slots = (MAX_ENTRIES / nodes.max(1)).max(1);
        if !self.slots.contains_key(&key) && self.slots.len() >= max_slots {
            if let Some(old) = self.slots.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone()) {
                self.slots.remove(&old);
            }
        }
        let clock = self.clock;
        let e = self.slots.entry(key).or_insert_with(|| Entry {
            seen: vec![0; nodes],
            best: vec![None; nodes],
            last_used: 0,
        });
        e.last_used = clock;
        e
    }
}
