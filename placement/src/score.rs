//! Policy costs: lower is better. Each function scores one choice on one node.

use crate::fgd::{FragCache, GpuChange};
use crate::fit::{Choice, Compiled, Kind};
use crate::policy::Policy;
use crate::state::Node;

// `fgd-pack` cost, in thousandths of a GPU. The main term is plain FGD's
// fragmentation growth at full weight: it is what keeps room for the target
// workload's multi-GPU and model-constrained shapes. FGD is blind to host CPU
// (it only asks whether one task fits), so two small corrections follow:
// capacity-aware fragmentation (idle GPU left after filling the node with
// each shape as its GPUs *and* CPU allow) and growth of GPU stranded behind
// exhausted CPU (at the CPU-per-GPU ratio of the shapes that can use the
// node's models). They are weighted low enough (0.1, 0.15) to steer CPU-heavy
// tasks off GPU-rich nodes without overriding FGD. Then model pressure at
// full weight: GPU taken from a model that model-constrained shapes of the
// target workload over-demand costs its expected excess demand, unless the
// request itself can only go there (FGD only sees fragmentation, not whose
// capacity a task uses up). Last, two tie-breakers: best-fit packing (a
// fraction of a node, scaled) and a fixed cost for breaking into an empty
// node. Chosen on the openb traces; see docs/BENCHMARKS.md.
const CAPACITY_WEIGHT: f64 = 0.1;
const STRANDED_WEIGHT: f64 = 0.15;
const PACK_WEIGHT: f64 = 12.5;
const EMPTY_NODE_PENALTY: f64 = 50.0;

/// Cost of placing `c` on node `i` with `choice`.
pub(crate) fn cost(
    policy: Policy,
    frag: &FragCache,
    i: usize,
    node: &Node,
    choice: &Choice,
    c: &Compiled<'_>,
) -> f64 {
    match policy {
        Policy::Binpack => pack(frag, i, node, choice, c),
        Policy::Spread => -pack(frag, i, node, choice, c),
        Policy::LeastLoaded => load(node, choice, c),
        Policy::Fgd => {
            let (changes, n) = changes(node, choice, c);
            frag.delta(i, cpu_free(node), c.req.cpu_milli, &changes[..n])
        }
        Policy::FgdPack => {
            let (changes, n) = changes(node, choice, c);
            let changes = &changes[..n];
            let taken: u32 = changes.iter().map(|g| g.before - g.after).sum();
            let (cpu_free, cpu) = (cpu_free(node), c.req.cpu_milli);
            let breaks_empty_node =
                frag.total(i) as usize == 1000 * node.gpus.len() && choice.gpus().len() < node.gpus.len();
            frag.delta(i, cpu_free, cpu, changes)
                + CAPACITY_WEIGHT * frag.delta_capacity(i, cpu_free, cpu, changes)
                + STRANDED_WEIGHT * frag.delta_stranded(i, cpu_free, cpu, taken)
                + PACK_WEIGHT * pack(frag, i, node, choice, c)
                + if breaks_empty_node { EMPTY_NODE_PENALTY } else { 0.0 }
                + frag.pressure(&c.models, changes)
        }
    }
}

fn cpu_free(node: &Node) -> u64 {
    node.cpu_cap.saturating_sub(node.cpu_used)
}

/// The free capacity of each chosen GPU before and after the placement.
fn changes(node: &Node, choice: &Choice, c: &Compiled<'_>) -> ([GpuChange; 8], usize) {
    let mut changes = [GpuChange { model: 0, before: 0, after: 0 }; 8];
    for (k, &gi) in choice.gpus().iter().enumerate() {
        let g = &node.gpus[usize::from(gi)];
        let before = g.free_milli();
        changes[k] = GpuChange { model: g.model, before, after: before - c.kind.taken_milli(g) };
    }
    (changes, usize::from(choice.n))
}

/// Free capacity left after the placement: node share first, then the chosen
/// GPUs', then CPU (all as fractions).
fn pack(frag: &FragCache, i: usize, node: &Node, choice: &Choice, c: &Compiled<'_>) -> f64 {
    let cpu_left =
        node.cpu_cap.saturating_sub(node.cpu_used + c.req.cpu_milli) as f64 / node.cpu_cap.max(1) as f64;
    if node.gpus.is_empty() || c.kind == Kind::None {
        let gpu_free = frag.total(i);
        return cpu_left + gpu_free as f64 / (1000.0 * node.gpus.len().max(1) as f64);
    }
    let node_free = frag.total(i);
    let mut taken = 0u32;
    let mut gpu_left = 0u32;
    for &gi in choice.gpus() {
        let g = &node.gpus[usize::from(gi)];
        let t = c.kind.taken_milli(g);
        taken += t;
        gpu_left += g.free_milli() - t;
    }
    let node_left = f64::from(node_free - taken) / (1000.0 * node.gpus.len() as f64);
    node_left + 0.01 * f64::from(gpu_left) / (1000.0 * f64::from(choice.n.max(1))) + 0.001 * cpu_left
}

/// Live load of the chosen GPUs and of the node, from telemetry; GPUs
/// without telemetry count their reservations.
fn load(node: &Node, choice: &Choice, c: &Compiled<'_>) -> f64 {
    let gpu_load = |g: &crate::state::Gpu| -> f64 {
        let reserved = 1.0 - f64::from(g.free_milli()) / 1000.0;
        match g.telemetry {
            Some(t) => {
                0.5 * f64::from(t.utilization_pct.min(100)) / 100.0
                    + 0.3 * (t.memory_used_mib as f64 / g.mem.max(1) as f64).min(1.0)
                    + 0.2 * reserved
            }
            None => reserved,
        }
    };
    let node_load = if node.gpus.is_empty() {
        0.0
    } else {
        node.gpus.iter().map(gpu_load).sum::<f64>() / node.gpus.len() as f64
    };
    let cpu = (node.cpu_used + c.req.cpu_milli) as f64 / node.cpu_cap.max(1) as f64;
    if choice.n == 0 {
        return node_load + 0.5 * cpu;
    }
    let chosen = choice.gpus().iter().map(|&gi| gpu_load(&node.gpus[usize::from(gi)])).sum::<f64>()
        / f64::from(choice.n);
    chosen + 0.3 * node_load + 0.1 * cpu
}
