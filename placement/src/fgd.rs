//! Fragmentation gradient descent (Weng et al., ATC'23), incremental.
//!
//! The target workload is a weighted list of task shapes. A node's
//! fragmentation for one shape is the idle GPU (in thousandths) that the shape
//! could not use there: all of it when the shape does not fit the node (or
//! needs no GPU), else only the free remainders of GPUs smaller than the
//! shape's per-GPU share. FGD picks the placement whose fragmentation grows
//! least.
//!
//! Per node and shape the engine caches two numbers (`count of GPUs with at
//! least the shape's share free`, `sum of smaller free remainders`), so the
//! fragmentation change of a candidate placement is O(shapes), independent of
//! the node's GPU count; the cache of a node is rebuilt only when it changes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::state::{ModelSet, Models, Node};

/// One task shape of the target workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    pub cpu_milli: u64,
    /// GPUs per task (0 = none).
    pub gpu_count: u8,
    /// Share of each GPU in thousandths.
    pub milli: u32,
    /// Allowed models; empty = any.
    pub models: Vec<String>,
    /// Relative frequency.
    pub weight: f64,
}

/// The expected mix of tasks that fragmentation is measured against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetWorkload {
    pub shapes: Vec<Shape>,
}

impl TargetWorkload {
    /// The most frequent shapes of `tasks` that together cover `coverage`
    /// (e.g. 0.95) of them, weighted by frequency.
    pub fn from_tasks<'a>(tasks: impl IntoIterator<Item = &'a Shape>, coverage: f64) -> Self {
        let mut counts: HashMap<(u64, u8, u32, Vec<String>), f64> = HashMap::new();
        let mut total = 0.0;
        for t in tasks {
            *counts.entry((t.cpu_milli, t.gpu_count, t.milli, t.models.clone())).or_default() += t.weight;
            total += t.weight;
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut shapes = Vec::new();
        let mut covered = 0.0;
        for ((cpu_milli, gpu_count, milli, models), w) in v {
            if total > 0.0 && covered / total >= coverage {
                break;
            }
            covered += w;
            shapes.push(Shape { cpu_milli, gpu_count, milli, models, weight: w });
        }
        let sum: f64 = shapes.iter().map(|s| s.weight).sum();
        for s in &mut shapes {
            s.weight /= sum.max(f64::MIN_POSITIVE);
        }
        Self { shapes }
    }

    /// A generic mix for clusters without a trace: whole 1/2/4/8-GPU tasks and
    /// quarter/half GPU shares.
    pub fn generic() -> Self {
        let s = |gpu_count, milli, weight| Shape { cpu_milli: 0, gpu_count, milli, models: vec![], weight };
        Self {
            shapes: vec![
                s(1, 1000, 0.4),
                s(2, 1000, 0.1),
                s(4, 1000, 0.05),
                s(8, 1000, 0.05),
                s(1, 500, 0.2),
                s(1, 250, 0.2),
            ],
        }
    }
}

/// Shapes resolved against the engine's models.
#[derive(Debug, Clone)]
pub(crate) struct CompiledShape {
    pub cpu: u64,
    pub count: u32,
    pub milli: u32,
    pub mask: ModelSet,
    pub weight: f64,
}

/// Per-node, per-shape aggregates (see the module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct FragCache {
    shapes: Vec<CompiledShape>,
    /// node -> total free milli.
    total: Vec<u32>,
    /// node * shapes + shape -> GPUs with >= milli free (of allowed model).
    cnt: Vec<u32>,
    /// node * shapes + shape -> free milli the shape cannot use on those GPUs.
    lt: Vec<u32>,
    /// node * shapes + shape -> GPU slots for the shape: sum of floor(free / milli)
    /// over allowed GPUs (whole-GPU shapes: GPUs fully free).
    slots: Vec<u32>,
    /// node -> expected host CPU (millicores) per thousandth of a GPU of the
    /// target shapes that can run on the node's models.
    cpu_per_milli: Vec<f64>,
    /// model -> GPU capacity (thousandths) at build time.
    model_cap: Vec<f64>,
    /// model -> extra demand per unit of capacity that model-constrained
    /// shapes put on the model beyond an even spread (see [`FragCache::pressure`]).
    pressure: Vec<f64>,
    /// Models with capacity and with pressure.
    present: ModelSet,
    pressed: ModelSet,
}

/// A change of one GPU's free capacity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GpuChange {
    pub model: u8,
    pub before: u32,
    pub after: u32,
}

impl FragCache {
    pub fn new(target: &TargetWorkload, models: &Models, nodes: &[Node]) -> Self {
        let shapes = target
            .shapes
            .iter()
            .map(|s| CompiledShape {
                cpu: s.cpu_milli,
                count: u32::from(s.gpu_count),
                milli: s.milli,
                mask: if s.models.is_empty() {
                    ModelSet::first(models.names.len())
                } else {
                    s.models.iter().filter_map(|m| models.id(m)).collect()
                },
                weight: s.weight,
            })
            .collect::<Vec<_>>();
        let n = shapes.len();
        let cpu_per_milli = nodes.iter().map(|node| cpu_per_milli(&shapes, node)).collect();
        let mut cache = Self {
            cpu_per_milli,
            model_cap: Vec::new(),
            pressure: Vec::new(),
            present: ModelSet::EMPTY,
            pressed: ModelSet::EMPTY,
            shapes,
            total: vec![0; nodes.len()],
            cnt: vec![0; nodes.len() * n],
            lt: vec![0; nodes.len() * n],
            slots: vec![0; nodes.len() * n],
        };
        for (i, node) in nodes.iter().enumerate() {
            cache.refresh(i, node);
        }
        cache.weigh_models(nodes, models.names.len());
        cache
    }

    /// Model pressure: if each shape's GPU demand spread evenly over the
    /// capacity of the models it allows, a model-constrained shape would load
    /// its models beyond the cluster-wide average. `pressure[m]` sums that
    /// excess, per unit of `m`'s capacity, over the shapes that allow `m`:
    /// `sum_k d_k * (1 / cap(models_k) - 1 / cap(all))`, with `d_k` the
    /// shape's share of GPU demand scaled to the cluster's capacity.
    fn weigh_models(&mut self, nodes: &[Node], model_count: usize) {
        let mut cap = vec![0.0; model_count];
        for node in nodes {
            for g in &node.gpus {
                cap[usize::from(g.model)] += f64::from(g.free_milli());
            }
        }
        let all: f64 = cap.iter().sum();
        let demand: f64 = self.shapes.iter().map(|s| s.weight * f64::from(s.count * s.milli)).sum();
        let mut pressure = vec![0.0; cap.len()];
        if all > 0.0 && demand > 0.0 {
            for s in &self.shapes {
                let allowed: f64 = s.mask.iter().filter_map(|m| cap.get(usize::from(m))).sum();
                if allowed <= 0.0 {
                    continue;
                }
                let d = s.weight * f64::from(s.count * s.milli) / demand * all;
                let excess = d * (1.0 / allowed - 1.0 / all);
                for m in s.mask.iter() {
                    if let Some(p) = pressure.get_mut(usize::from(m)) {
                        *p += excess;
                    }
                }
            }
        }
        let mask = |v: &[f64]| -> ModelSet {
            v.iter().enumerate().filter(|(_, &x)| x > 0.0).map(|(m, _)| m as u8).collect()
        };
        self.present = mask(&cap);
        self.pressed = mask(&pressure);
        self.model_cap = cap;
        self.pressure = pressure;
    }

    /// Cost of a request allowed on `models` taking GPU of the models in
    /// `changes`: the taken capacity times the model's pressure, discounted by
    /// the share of the request's own allowed capacity that model holds (a
    /// request that can only use this model pays nothing).
    pub fn pressure(&self, models: &ModelSet, changes: &[GpuChange]) -> f64 {
        if changes.iter().all(|c| !self.pressed.contains(c.model)) {
            return 0.0;
        }
        let allowed: f64 = models.and(&self.present).iter().map(|m| self.model_cap[usize::from(m)]).sum();
        if allowed <= 0.0 {
            return 0.0;
        }
        changes
            .iter()
            .map(|c| {
                let m = usize::from(c.model);
                let own = self.model_cap[m] / allowed;
                self.pressure[m] * f64::from(c.before - c.after) * (1.0 - own).max(0.0)
            })
            .sum()
    }

    /// Takes node `i` as it is now, its models too; a node at the next
    /// index is appended. The model weights stay those of the build, as
    /// after a commit.
    pub fn set_node(&mut self, i: usize, node: &Node) {
        let n = self.shapes.len();
        if self.total.len() <= i {
            self.total.resize(i + 1, 0);
            self.cpu_per_milli.resize(i + 1, 0.0);
            for v in [&mut self.cnt, &mut self.lt, &mut self.slots] {
                v.resize((i + 1) * n, 0);
            }
        }
        self.cpu_per_milli[i] = cpu_per_milli(&self.shapes, node);
        self.refresh(i, node);
    }

    /// Recomputes the aggregates of node `i`.
    pub fn refresh(&mut self, i: usize, node: &Node) {
        let n = self.shapes.len();
        let mut total = 0;
        for (k, s) in self.shapes.iter().enumerate() {
            let (mut cnt, mut lt, mut slots) = (0, 0, 0);
            for g in &node.gpus {
                let f = g.free_milli();
                if s.mask.contains(g.model) && f >= s.milli && f > 0 {
                    cnt += 1;
                    slots += f / s.milli.max(1);
                } else {
                    lt += f;
                }
            }
            self.cnt[i * n + k] = cnt;
            self.lt[i * n + k] = lt;
            self.slots[i * n + k] = slots;
        }
        for g in &node.gpus {
            total += g.free_milli();
        }
        self.total[i] = total;
    }

    /// Free GPU capacity of node `i` in thousandths.
    pub fn total(&self, i: usize) -> u32 {
        self.total[i]
    }

    /// Current weighted fragmentation of node `i` (thousandths of a GPU).
    pub fn node_frag(&self, i: usize, cpu_free: u64) -> f64 {
        let n = self.shapes.len();
        let total = self.total[i];
        self.shapes
            .iter()
            .enumerate()
            .map(|(k, s)| {
                s.weight * f64::from(frag(s, total, self.cnt[i * n + k], self.lt[i * n + k], cpu_free))
            })
            .sum()
    }

    /// Growth of node `i`'s weighted fragmentation if `changes` are applied and
    /// `cpu_taken` millicores are reserved.
    pub fn delta(&self, i: usize, cpu_free: u64, cpu_taken: u64, changes: &[GpuChange]) -> f64 {
        let n = self.shapes.len();
        let total = self.total[i];
        let taken: u32 = changes.iter().map(|c| c.before - c.after).sum();
        let total_after = total - taken;
        let cpu_after = cpu_free.saturating_sub(cpu_taken);
        let mut d = 0.0;
        for (k, s) in self.shapes.iter().enumerate() {
            let (cnt, lt) = (self.cnt[i * n + k], self.lt[i * n + k]);
            let (mut cnt2, mut lt2) = (cnt, lt);
            for c in changes {
                let allowed = s.mask.contains(c.model);
                if allowed && c.before >= s.milli && c.before > 0 {
                    cnt2 -= 1;
                } else {
                    lt2 -= c.before;
                }
                if allowed && c.after >= s.milli && c.after > 0 {
                    cnt2 += 1;
                } else {
                    lt2 += c.after;
                }
            }
            let before = frag(s, total, cnt, lt, cpu_free);
            let after = frag(s, total_after, cnt2, lt2, cpu_after);
            d += s.weight * (f64::from(after) - f64::from(before));
        }
        d
    }
}

impl FragCache {
    /// Like [`FragCache::delta`], but with capacity-aware fragmentation: for
    /// each shape, the idle GPU left over after filling the node with as many
    /// tasks of that shape as its GPUs *and its CPU* allow. Plain FGD only
    /// asks whether one task fits, so it does not see a node whose CPU runs
    /// out long before its GPUs do.
    pub fn delta_capacity(&self, i: usize, cpu_free: u64, cpu_taken: u64, changes: &[GpuChange]) -> f64 {
        let n = self.shapes.len();
        let total = self.total[i];
        let taken: u32 = changes.iter().map(|c| c.before - c.after).sum();
        let total_after = total - taken;
        let cpu_after = cpu_free.saturating_sub(cpu_taken);
        let mut d = 0.0;
        for (k, s) in self.shapes.iter().enumerate() {
            if s.count == 0 {
                d -= s.weight * f64::from(taken);
                continue;
            }
            let slots = self.slots[i * n + k];
            let mut slots2 = slots;
            let m = s.milli.max(1);
            for c in changes {
                if s.mask.contains(c.model) {
                    // Integer division: `after <= before`, so this never underflows.
                    slots2 = slots2 + c.after / m - c.before / m;
                }
            }
            let before = capacity_frag(s, total, slots, cpu_free);
            let after = capacity_frag(s, total_after, slots2, cpu_after);
            d += s.weight * (after - before);
        }
        d
    }
}

impl FragCache {
    /// Growth of the node's stranded GPU: idle GPU (thousandths) beyond what
    /// its free CPU can feed at the CPU-per-GPU ratio of the target shapes
    /// that can run on the node's GPU models (a P100-only node is judged by
    /// the tasks that may use a P100, not by the whole cluster's mix).
    pub fn delta_stranded(&self, i: usize, cpu_free: u64, cpu_taken: u64, gpu_taken: u32) -> f64 {
        let ratio = self.cpu_per_milli[i];
        if ratio <= 0.0 {
            return 0.0;
        }
        let stranded = |idle: f64, cpu: u64| (idle - cpu as f64 / ratio).max(0.0);
        let total = f64::from(self.total[i]);
        stranded(total - f64::from(gpu_taken), cpu_free.saturating_sub(cpu_taken)) - stranded(total, cpu_free)
    }
}

fn capacity_frag(s: &CompiledShape, total: u32, slots: u32, cpu_free: u64) -> f64 {
    let by_gpu = u64::from(slots / s.count.max(1));
    let tasks = cpu_free.checked_div(s.cpu).map_or(by_gpu, |by_cpu| by_gpu.min(by_cpu));
    let usable = tasks * u64::from(s.count) * u64::from(s.milli);
    f64::from(total) - usable.min(u64::from(total)) as f64
}

fn frag(s: &CompiledShape, total: u32, cnt: u32, lt: u32, cpu_free: u64) -> u32 {
    if s.count == 0 || cnt < s.count || cpu_free < s.cpu {
        total
    } else {
        lt
    }
}

/// Expected host CPU (millicores) per thousandth of a GPU of the target
/// shapes that can run on `node`'s models.
fn cpu_per_milli(shapes: &[CompiledShape], node: &Node) -> f64 {
    let runs = |s: &&CompiledShape| s.count == 0 || s.mask.intersects(&node.models);
    let cpu: f64 = shapes.iter().filter(runs).map(|s| s.weight * s.cpu as f64).sum();
    let gpu: f64 = shapes.iter().filter(runs).map(|s| s.weight * f64::from(s.count * s.milli)).sum();
    if gpu > 0.0 {
        cpu / gpu
    } else {
        0.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::snapshot::{ClusterSnapshot, GpuSnapshot, NodeSnapshot};

    fn shape(models: &[&str], weight: f64) -> Shape {
        Shape {
            cpu_milli: 0,
            gpu_count: 1,
            milli: 1000,
            models: models.iter().map(|m| m.to_string()).collect(),
            weight,
        }
    }

    #[test]
    fn model_pressure_charges_only_requests_that_could_go_elsewhere() {
        let gpus = |m: &str| (0..2).map(|_| GpuSnapshot::shared(m, 16_000)).collect();
        let snap = ClusterSnapshot {
            nodes: vec![
                NodeSnapshot::new("a", 8000, 8000, gpus("T4")),
                NodeSnapshot::new("b", 8000, 8000, gpus("V100")),
            ],
        };
        let (nodes, models) = crate::state::build(&snap).unwrap();
        let target = TargetWorkload { shapes: vec![shape(&["T4"], 0.5), shape(&[], 0.5)] };
        let cache = FragCache::new(&target, &models, &nodes);
        let (t4, v100) = (models.id("T4").unwrap(), models.id("V100").unwrap());
        let take = |model| [GpuChange { model, before: 1000, after: 0 }];
        // Half the demand needs T4, which holds half the capacity: T4 is over-demanded.
        let all = ModelSet::first(models.names.len());
        let any = cache.pressure(&all, &take(t4));
        assert!(any > 0.0, "{any}");
        assert_eq!(cache.pressure(&ModelSet::single(t4), &take(t4)), 0.0);
        assert_eq!(cache.pressure(&all, &take(v100)), 0.0);
        // No constrained shapes: no pressure anywhere.
        let plain = FragCache::new(&TargetWorkload { shapes: vec![shape(&[], 1.0)] }, &models, &nodes);
        assert_eq!(plain.pressure(&all, &take(t4)), 0.0);
    }
}
