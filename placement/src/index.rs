//! Capacity buckets, so a placement visits only nodes that can plausibly take
//! a request instead of scanning the cluster.
//!
//! Per GPU model a node sits in at most five buckets: by its number of whole
//! free GPUs (1..=8, 8 meaning "8 or more"), by the largest free share of one
//! shared-mode GPU (tenths), and in "has room" lists for MIG, MPS and shared
//! memory. A bucket only ever over-approximates: the exact check follows.
//! Membership moves in O(1) (swap-remove with stored positions) when a commit
//! changes a node.

use crate::fit::Kind;
use crate::request::MPS_MAX_CLIENTS;
use crate::state::{ModelSet, Node, Usage};

const WHOLE: usize = 0; // 1..=8 -> WHOLE + k - 1
const FRAC: usize = 8; // tenths 0..=10 -> FRAC + t
const MIG: usize = 19;
const MPS: usize = 20;
const SHARED: usize = 21;
const PER_MODEL: usize = 22;
/// Bucket of every schedulable node (GPU-less requests).
const ALL: usize = 0;

/// The bucket index.
#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    buckets: Vec<Vec<u32>>,
    /// Models the engine knows (ids `0..model_count`).
    model_count: usize,
    /// node -> [(bucket, position in bucket)]
    member: Vec<Vec<(u32, u32)>>,
}

/// The order in which buckets are visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Tightest capacity first (best fit).
    Tight,
    /// Largest capacity first.
    Loose,
}

impl Index {
    pub fn new(nodes: &[Node], model_count: usize) -> Self {
        let mut index = Self {
            buckets: vec![Vec::new(); 1 + model_count * PER_MODEL],
            model_count,
            member: vec![Vec::new(); nodes.len()],
        };
        for (i, n) in nodes.iter().enumerate() {
            index.insert(i, n);
        }
        index
    }

    /// Files a node appended at index `i` (the next one).
    pub fn push(&mut self, i: usize, node: &Node) {
        if self.member.len() <= i {
            self.member.resize(i + 1, Vec::new());
        }
        self.update(i, node);
    }

    /// Re-files node `i` after it changed.
    pub fn update(&mut self, i: usize, node: &Node) {
        self.remove(i);
        self.insert(i, node);
    }

    /// The buckets a request may find a node in, in `order`.
    pub fn buckets_for(&self, kind: &Kind<'_>, models: &ModelSet, order: Order) -> Vec<u32> {
        let mut out = Vec::new();
        if matches!(kind, Kind::None) {
            return vec![ALL as u32];
        }
        for m in models.and(&ModelSet::first(self.model_count)).iter().map(usize::from) {
            let base = 1 + m * PER_MODEL;
            match *kind {
                Kind::None => {} // answered above
                Kind::Whole { count, .. } => {
                    for k in usize::from(count.clamp(1, 8))..=8 {
                        out.push((base + WHOLE + k - 1, k));
                    }
                }
                Kind::Frac { milli } => {
                    for t in (milli as usize / 100).min(10)..=10 {
                        out.push((base + FRAC + t, t));
                    }
                }
                Kind::Mig { .. } => out.push((base + MIG, 0)),
                Kind::Mps { .. } => out.push((base + MPS, 0)),
                Kind::Shared { .. } => out.push((base + SHARED, 0)),
            }
        }
        out.retain(|(b, _)| !self.buckets[*b].is_empty());
        match order {
            Order::Tight => out.sort_by_key(|&(b, k)| (k, b)),
            Order::Loose => out.sort_by_key(|&(b, k)| (std::cmp::Reverse(k), b)),
        }
        out.into_iter().map(|(b, _)| b as u32).collect()
    }

    /// The nodes of bucket `b`.
    pub fn bucket(&self, b: u32) -> &[u32] {
        &self.buckets[b as usize]
    }

    fn insert(&mut self, i: usize, node: &Node) {
        if !node.schedulable {
            return;
        }
        let mut keys = vec![ALL];
        for m in node.models.iter().map(usize::from) {
            let base = 1 + m * PER_MODEL;
            let (mut whole, mut frac, mut mig, mut mps, mut shared) = (0usize, None, false, false, false);
            for g in node.gpus.iter().filter(|g| g.healthy && usize::from(g.model) == m) {
                if g.whole_free(false) {
                    whole += 1;
                }
                match &g.usage {
                    Usage::Shared { milli, mem, .. } => {
                        let free = 1000 - (*milli).min(1000);
                        if free > 0 {
                            frac = frac.max(Some(free as usize / 100));
                        }
                        shared |= *mem < g.mem;
                    }
                    Usage::Mig { layout, .. } => mig |= layout.free_compute() > 0,
                    Usage::Mps { clients, pct, mem } => {
                        mps |= *clients < MPS_MAX_CLIENTS && *pct < 100 && *mem < g.mem
                    }
                    Usage::Exclusive { .. } => {}
                }
            }
            if whole > 0 {
                keys.push(base + WHOLE + whole.min(8) - 1);
            }
            if let Some(t) = frac {
                keys.push(base + FRAC + t);
            }
            if mig {
                keys.push(base + MIG);
            }
            if mps {
                keys.push(base + MPS);
            }
            if shared {
                keys.push(base + SHARED);
            }
        }
        for b in keys {
            let bucket = &mut self.buckets[b];
            self.member[i].push((b as u32, bucket.len() as u32));
            bucket.push(i as u32);
        }
    }

    fn remove(&mut self, i: usize) {
        let member = std::mem::take(&mut self.member[i]);
        for (b, pos) in member {
            let bucket = &mut self.buckets[b as usize];
            bucket.swap_remove(pos as usize);
            if let Some(&moved) = bucket.get(pos as usize) {
                if let Some(entry) = self.member[moved as usize].iter_mut().find(|(mb, _)| *mb == b) {
                    entry.1 = pos;
                }
            }
        }
    }
}
