//! Feasibility: whether a request fits a node, which GPU choices it has
//! there, and, when it does not fit, why.

use crate::policy::Policy;
use crate::request::{GpuRequest, GpuShare, PlacementRequest, MPS_MAX_CLIENTS};
use crate::state::{milli_memory, Gpu, ModelSet, Node, Usage};

/// A request resolved against the engine's model table.
#[derive(Debug, Clone)]
pub(crate) struct Compiled<'a> {
    pub req: &'a PlacementRequest,
    /// Allowed GPU models.
    pub models: ModelSet,
    pub kind: Kind<'a>,
    pub policy: Policy,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind<'a> {
    None,
    /// `count` whole GPUs; `exclusive_only`: only exclusive-mode GPUs.
    Whole {
        count: u8,
        linked: bool,
        exclusive_only: bool,
    },
    Mig {
        profile: &'a str,
    },
    Mps {
        pct: u8,
        mem: u64,
    },
    Shared {
        mem: u64,
    },
    Frac {
        milli: u32,
    },
}

/// Why one node cannot take a request (first failing check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Reject {
    /// Left out when the engine was built (see `Node::excluded`).
    Excluded,
    Down,
    Labels,
    AntiAffinity,
    Cpu,
    Memory,
    NoModel,
    GpuMemory,
    Capacity,
    NotLinked,
}

/// One way to place a request on a node: the GPUs it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Choice {
    pub gpus: [u16; 8],
    pub n: u8,
    /// Start slice for a MIG instance.
    pub mig_start: u8,
}

impl Choice {
    pub fn gpus(&self) -> &[u16] {
        &self.gpus[..usize::from(self.n)]
    }

    fn one(gpu: usize, mig_start: u8) -> Self {
        let mut gpus = [0; 8];
        gpus[0] = gpu as u16;
        Self { gpus, n: 1, mig_start }
    }
}

impl Kind<'_> {
    pub fn from_request(req: &GpuRequest) -> Kind<'_> {
        match req {
            GpuRequest::None => Kind::None,
            GpuRequest::Exclusive { count, linked } => {
                Kind::Whole { count: *count, linked: *linked, exclusive_only: true }
            }
            GpuRequest::Mig { profile } => Kind::Mig { profile },
            GpuRequest::Mps { compute_pct, memory_mib } => Kind::Mps { pct: *compute_pct, mem: *memory_mib },
            GpuRequest::Shared { memory_mib } => Kind::Shared { mem: *memory_mib },
            GpuRequest::Milli { milli: 1000, count } => {
                Kind::Whole { count: *count, linked: false, exclusive_only: false }
            }
            GpuRequest::Milli { milli, .. } => Kind::Frac { milli: *milli },
        }
    }

    /// The share a chosen GPU gets.
    pub fn share(&self, choice: &Choice, gpu: &Gpu) -> GpuShare {
        match *self {
            Kind::Whole { .. } if matches!(gpu.usage, Usage::Shared { .. }) => {
                GpuShare::Milli { milli: 1000 }
            }
            Kind::None | Kind::Whole { .. } => GpuShare::Whole,
            Kind::Mig { profile } => GpuShare::Mig { profile: profile.to_string(), start: choice.mig_start },
            Kind::Mps { pct, mem } => GpuShare::Mps { compute_pct: pct, memory_mib: mem },
            Kind::Shared { mem } => GpuShare::Shared { memory_mib: mem },
            Kind::Frac { milli } => GpuShare::Milli { milli },
        }
    }

    /// Thousandths of a GPU this request takes from `gpu`.
    pub fn taken_milli(&self, gpu: &Gpu) -> u32 {
        match *self {
            Kind::None => 0,
            Kind::Whole { .. } => gpu.free_milli(),
            Kind::Mig { profile } => gpu
                .mig_table
                .and_then(|t| Some((t, t.profile(profile).ok()?)))
                .map_or(0, |(t, p)| u32::from(p.compute_slices) * 1000 / u32::from(t.compute_slices.max(1))),
            Kind::Mps { pct, mem } => (u32::from(pct) * 10).max(mem_milli(mem, gpu.mem)),
            Kind::Shared { mem } => mem_milli(mem, gpu.mem),
            Kind::Frac { milli } => milli,
        }
        .min(gpu.free_milli())
    }
}

fn mem_milli(mem: u64, total: u64) -> u32 {
    mem.saturating_mul(1000).checked_div(total).map_or(1000, |m| m.min(1000) as u32)
}

/// Node-level checks that do not look at GPUs.
pub(crate) fn check_node(node: &Node, c: &Compiled<'_>) -> Result<(), Reject> {
    let req = c.req;
    if node.excluded.is_some() {
        return Err(Reject::Excluded);
    }
    if !node.schedulable {
        return Err(Reject::Down);
    }
    if !req.constraints.labels.iter().all(|s| s.matches(&node.labels)) {
        return Err(Reject::Labels);
    }
    if req.constraints.spread_replicas && node.workloads.contains(&req.workload) {
        return Err(Reject::AntiAffinity);
    }
    if node.cpu_cap.saturating_sub(node.cpu_used) < req.cpu_milli {
        return Err(Reject::Cpu);
    }
    if node.mem_cap.saturating_sub(node.mem_used) < req.memory_mib {
        return Err(Reject::Memory);
    }
    if c.kind != Kind::None && !node.models.intersects(&c.models) {
        return Err(Reject::NoModel);
    }
    Ok(())
}

/// Every way the request fits `node`, appended to `out`; or why it fits not.
/// Single-GPU requests yield one choice per fitting GPU; multi-GPU requests
/// one per model (and NVLink domain when linked), the best-fitting first.
pub(crate) fn choices(node: &Node, c: &Compiled<'_>, out: &mut Vec<Choice>) -> Result<(), Reject> {
    check_node(node, c)?;
    let min_mem = c.req.constraints.min_gpu_memory_mib;
    let eligible = |g: &Gpu| g.healthy && c.models.contains(g.model);
    match c.kind {
        Kind::None => {
            out.push(Choice { gpus: [0; 8], n: 0, mig_start: 0 });
            return Ok(());
        }
        Kind::Whole { count, linked, exclusive_only } if count > 1 => {
            return whole_choices(node, c, count, linked, exclusive_only, out);
        }
        _ => {}
    }
    let mut any_mem = false;
    let start = out.len();
    for (i, g) in node.gpus.iter().enumerate() {
        if !eligible(g) || g.mem < min_mem {
            continue;
        }
        any_mem = true;
        if let Some(mig_start) = gpu_fits(g, &c.kind) {
            // GPUs in the same state score the same: keep the first of each.
            let same = out[start..].iter().any(|ch| {
                let o = &node.gpus[usize::from(ch.gpus[0])];
                o.model == g.model && o.usage == g.usage && o.mem == g.mem && o.telemetry == g.telemetry
            });
            if !same {
                out.push(Choice::one(i, mig_start));
            }
        }
    }
    if out.len() > start {
        Ok(())
    } else if any_mem {
        Err(Reject::Capacity)
    } else {
        Err(Reject::GpuMemory)
    }
}

/// Whether a single-GPU request fits `gpu`; `Some(mig start)` (0 unless MIG).
pub(crate) fn gpu_fits(g: &Gpu, kind: &Kind<'_>) -> Option<u8> {
    match (*kind, &g.usage) {
        (Kind::Whole { exclusive_only, .. }, _) => g.whole_free(exclusive_only).then_some(0),
        (Kind::Mig { profile }, Usage::Mig { layout, .. }) => {
            let table = g.mig_table?;
            let p = table.profile(profile).ok()?;
            layout.best_start(table, p)
        }
        (Kind::Mps { pct, mem }, Usage::Mps { clients, pct: used, mem: mem_used }) => {
            (*clients < MPS_MAX_CLIENTS && used + u32::from(pct) <= 100 && mem_used + mem <= g.mem)
                .then_some(0)
        }
        (Kind::Shared { mem }, Usage::Shared { mem: used, .. }) => (used + mem <= g.mem).then_some(0),
        (Kind::Frac { milli }, Usage::Shared { milli: used, mem, .. }) => {
            (used + milli <= 1000 && mem + milli_memory(milli, g.mem) <= g.mem).then_some(0)
        }
        _ => None,
    }
}

fn whole_choices(
    node: &Node,
    c: &Compiled<'_>,
    count: u8,
    linked: bool,
    exclusive_only: bool,
    out: &mut Vec<Choice>,
) -> Result<(), Reject> {
    let min_mem = c.req.constraints.min_gpu_memory_mib;
    // Groups: (model, domain) -> free GPUs. A node has few GPUs, so a small vec.
    let mut groups: Vec<(u8, Option<u32>, Vec<u16>)> = Vec::new();
    let mut any_mem = false;
    let mut total_free = 0usize;
    for (i, g) in node.gpus.iter().enumerate() {
        if !g.healthy || !c.models.contains(g.model) || g.mem < min_mem {
            continue;
        }
        any_mem = true;
        if !g.whole_free(exclusive_only) {
            continue;
        }
        total_free += 1;
        let domain = if linked { g.nvlink } else { None };
        match groups.iter_mut().find(|(m, d, _)| *m == g.model && *d == domain) {
            Some((_, _, v)) => v.push(i as u16),
            None => groups.push((g.model, domain, vec![i as u16])),
        }
    }
    if !any_mem {
        return Err(Reject::GpuMemory);
    }
    let need = usize::from(count);
    // Best fit: the smallest group that is large enough keeps big groups whole.
    groups.retain(|(_, _, v)| v.len() >= need);
    groups.sort_by_key(|(m, d, v)| (v.len(), *m, *d));
    if groups.is_empty() {
        return Err(if linked && total_free >= need { Reject::NotLinked } else { Reject::Capacity });
    }
    for (_, _, v) in &groups {
        let mut gpus = [0u16; 8];
        gpus[..need].copy_from_slice(&v[..need]);
        out.push(Choice { gpus, n: count, mig_start: 0 });
    }
    Ok(())
}
