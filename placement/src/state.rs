//! The engine's working copy of the cluster: compact per-GPU usage that the
//! hot path reads, built from a [`ClusterSnapshot`] and updated by commits.

use std::collections::{BTreeMap, BTreeSet};

use crate::mig::{self, MigGpuTable, MigLayout};
use crate::request::{GpuShare, MPS_MAX_CLIENTS};
use crate::snapshot::{ClusterSnapshot, GpuMode, GpuSnapshot, GpuTelemetry, MigInstanceSpec, NodeSnapshot};
use crate::EngineError;

/// Most distinct GPU models one engine tracks: model ids are `u8`, model
/// sets a 256-bit [`ModelSet`]. A node whose GPUs would bring the count
/// beyond it is excluded ([`crate::Engine::build`]) rather than failing the
/// engine.
pub const MAX_MODELS: usize = 256;
const MODEL_WORDS: usize = MAX_MODELS / 64;

/// A set of interned GPU models, one bit per model id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct ModelSet([u64; MODEL_WORDS]);

impl ModelSet {
    pub const EMPTY: Self = Self([0; MODEL_WORDS]);

    /// Models `0..n`: every model of an engine that has `n`.
    pub fn first(n: usize) -> Self {
        let mut s = Self::EMPTY;
        for (w, word) in s.0.iter_mut().enumerate() {
            let lo = w * 64;
            *word = if n >= lo + 64 {
                u64::MAX
            } else if n > lo {
                (1u64 << (n - lo)) - 1
            } else {
                0
            };
        }
        s
    }

    /// The set of one model.
    #[cfg(test)]
    pub fn single(id: u8) -> Self {
        let mut s = Self::EMPTY;
        s.insert(id);
        s
    }

    pub fn insert(&mut self, id: u8) {
        self.0[usize::from(id) >> 6] |= 1 << (id & 63);
    }

    #[inline]
    pub fn contains(&self, id: u8) -> bool {
        (self.0[usize::from(id) >> 6] >> (id & 63)) & 1 != 0
    }

    /// Whether the two sets share a model.
    #[inline]
    pub fn intersects(&self, other: &Self) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }

    /// The models in both sets.
    pub fn and(&self, other: &Self) -> Self {
        let mut s = *self;
        for (a, b) in s.0.iter_mut().zip(&other.0) {
            *a &= b;
        }
        s
    }

    /// Model ids in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                Some((w * 64 + b as usize) as u8)
            })
        })
    }
}

impl FromIterator<u8> for ModelSet {
    fn from_iter<I: IntoIterator<Item = u8>>(ids: I) -> Self {
        let mut s = Self::EMPTY;
        for id in ids {
            s.insert(id);
        }
        s
    }
}

/// What a GPU currently holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Usage {
    Exclusive { busy: bool },
    Mig { layout: MigLayout, instances: Vec<MigInstanceSpec> },
    Mps { clients: u32, pct: u32, mem: u64 },
    Shared { tenants: u32, milli: u32, mem: u64 },
}

#[derive(Debug, Clone)]
pub(crate) struct Gpu {
    pub model: u8,
    pub mem: u64,
    pub nvlink: Option<u32>,
    pub healthy: bool,
    pub usage: Usage,
    pub telemetry: Option<GpuTelemetry>,
    pub mig_table: Option<&'static MigGpuTable>,
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub schedulable: bool,
    pub cpu_cap: u64,
    pub cpu_used: u64,
    pub mem_cap: u64,
    pub mem_used: u64,
    pub workloads: BTreeSet<String>,
    /// Replicas committed here through the engine, by workload. A workload
    /// the snapshot listed is not counted: it stays listed until the node
    /// is set again, since the snapshot does not say how many it holds.
    pub commits: BTreeMap<String, u32>,
    pub gpus: Vec<Gpu>,
    /// The models present.
    pub models: ModelSet,
    /// Why the engine left this node out, if it did: it has no GPUs here,
    /// is never chosen, and refusals count it as excluded.
    pub excluded: Option<String>,
}

/// Interned GPU model names.
#[derive(Debug, Clone, Default)]
pub(crate) struct Models {
    pub names: Vec<String>,
}

impl Models {
    pub fn intern(&mut self, name: &str) -> Result<u8, EngineError> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(i as u8);
        }
        if self.names.len() >= MAX_MODELS {
            return Err(EngineError::TooManyModels(MAX_MODELS));
        }
        self.names.push(name.to_string());
        Ok((self.names.len() - 1) as u8)
    }

    pub fn id(&self, name: &str) -> Option<u8> {
        self.names.iter().position(|n| n == name).map(|i| i as u8)
    }
}

impl Gpu {
    /// Free capacity in thousandths of a GPU: the common measure for
    /// fragmentation and packing across modes.
    pub fn free_milli(&self) -> u32 {
        if !self.healthy {
            return 0;
        }
        match &self.usage {
            Usage::Exclusive { busy } => {
                if *busy {
                    0
                } else {
                    1000
                }
            }
            Usage::Mig { layout, .. } => {
                u32::from(layout.free_compute()) * 1000 / u32::from(layout.compute_slices().max(1))
            }
            Usage::Mps { clients, pct, mem } => {
                if *clients >= MPS_MAX_CLIENTS {
                    0
                } else {
                    let compute = (100 - (*pct).min(100)) * 10;
                    compute.min(ratio_milli(self.mem.saturating_sub(*mem), self.mem))
                }
            }
            Usage::Shared { milli, .. } => 1000 - (*milli).min(1000),
        }
    }

    /// Whether a whole-GPU request could take this GPU (`exclusive_only`:
    /// only exclusive-mode GPUs qualify; otherwise an idle shared GPU does too).
    pub fn whole_free(&self, exclusive_only: bool) -> bool {
        self.healthy
            && match &self.usage {
                Usage::Exclusive { busy } => !busy,
                Usage::Shared { tenants, .. } => !exclusive_only && *tenants == 0,
                _ => false,
            }
    }

    /// Applies one share. The caller has checked that it fits.
    pub fn apply(&mut self, share: &GpuShare) -> Result<(), EngineError> {
        let mem_total = self.mem;
        match (&mut self.usage, share) {
            (Usage::Exclusive { busy }, GpuShare::Whole) if !*busy => *busy = true,
            (Usage::Shared { tenants, milli, mem }, GpuShare::Milli { milli: 1000 }) if *tenants == 0 => {
                *tenants = 1;
                *milli = 1000;
                *mem = mem_total;
            }
            (Usage::Shared { tenants, milli, mem }, GpuShare::Milli { milli: m }) => {
                *tenants += 1;
                *milli += m;
                *mem += milli_memory(*m, mem_total);
            }
            (Usage::Shared { tenants, mem, .. }, GpuShare::Shared { memory_mib }) => {
                *tenants += 1;
                *mem += memory_mib;
            }
            (Usage::Mps { clients, pct, mem }, GpuShare::Mps { compute_pct, memory_mib }) => {
                *clients += 1;
                *pct += u32::from(*compute_pct);
                *mem += memory_mib;
            }
            (Usage::Mig { layout, instances }, GpuShare::Mig { profile, start }) => {
                let table = self.mig_table.ok_or(EngineError::ShareMismatch)?;
                layout.place(table.profile(profile)?, *start)?;
                instances.push(MigInstanceSpec { profile: profile.clone(), start: *start });
            }
            _ => return Err(EngineError::ShareMismatch),
        }
        Ok(())
    }

    /// Gives back one share [`Gpu::apply`] took; refused (and nothing
    /// changed) when the GPU does not hold such a share.
    pub fn release(&mut self, share: &GpuShare) -> Result<(), EngineError> {
        let mem_total = self.mem;
        let not_held = || EngineError::Stale(format!("the GPU does not hold {share:?}"));
        match (&mut self.usage, share) {
            (Usage::Exclusive { busy }, GpuShare::Whole) if *busy => *busy = false,
            (Usage::Shared { tenants, milli, mem }, GpuShare::Milli { milli: m })
                if *tenants > 0 && *milli >= *m =>
            {
                *tenants -= 1;
                *milli -= m;
                // A whole GPU taken as 1000 milli reserved all of its memory.
                let reserved = if *m == 1000 { mem_total } else { milli_memory(*m, mem_total) };
                *mem = if *tenants == 0 { 0 } else { mem.saturating_sub(reserved) };
            }
            (Usage::Shared { tenants, mem, .. }, GpuShare::Shared { memory_mib }) if *tenants > 0 => {
                *tenants -= 1;
                *mem = mem.saturating_sub(*memory_mib);
            }
            (Usage::Mps { clients, pct, mem }, GpuShare::Mps { compute_pct, memory_mib })
                if *clients > 0 && *pct >= u32::from(*compute_pct) =>
            {
                *clients -= 1;
                *pct -= u32::from(*compute_pct);
                *mem = mem.saturating_sub(*memory_mib);
            }
            (Usage::Mig { layout, instances }, GpuShare::Mig { profile, start }) => {
                let table = self.mig_table.ok_or(EngineError::ShareMismatch)?;
                let at = instances
                    .iter()
                    .position(|i| i.profile == *profile && i.start == *start)
                    .ok_or_else(not_held)?;
                layout.remove(table.profile(profile)?, *start)?;
                instances.remove(at);
            }
            _ => return Err(not_held()),
        }
        Ok(())
    }

    /// Whether usage is within capacity (the invariant the engine keeps).
    pub fn within_capacity(&self) -> bool {
        match &self.usage {
            Usage::Exclusive { .. } | Usage::Mig { .. } => true,
            Usage::Mps { clients, pct, mem } => {
                *clients <= MPS_MAX_CLIENTS && *pct <= 100 && *mem <= self.mem
            }
            Usage::Shared { milli, mem, .. } => *milli <= 1000 && *mem <= self.mem,
        }
    }
}

/// Device memory a `milli` share reserves: its proportion of the GPU.
pub fn milli_memory(milli: u32, mem_total: u64) -> u64 {
    mem_total * u64::from(milli) / 1000
}

fn ratio_milli(part: u64, whole: u64) -> u32 {
    part.saturating_mul(1000).checked_div(whole).map_or(0, |m| m.min(1000) as u32)
}

/// Why one node of a snapshot cannot be taken as it is.
#[derive(Debug)]
pub(crate) struct NodeFault {
    /// Index of the offending GPU on the node.
    pub gpu: usize,
    pub error: EngineError,
    /// For people: names the GPU, its model and what is wrong.
    pub reason: String,
}

/// Builds the working state from a snapshot, checking MIG layouts and usage;
/// fails on the first node that does not check out.
pub(crate) fn build(snapshot: &ClusterSnapshot) -> Result<(Vec<Node>, Models), EngineError> {
    let (nodes, models, faults) = build_lenient(snapshot);
    match faults.into_iter().next() {
        Some((i, fault)) => Err(EngineError::Gpu {
            node: snapshot.nodes[i].name.clone(),
            gpu: fault.gpu,
            source: Box::new(fault.error),
        }),
        None => Ok((nodes, models)),
    }
}

/// Like [`build`], but a node that does not check out is kept as an
/// excluded, GPU-less, unschedulable placeholder (so node indices stay those
/// of the snapshot) and its fault is returned with its index.
pub(crate) fn build_lenient(snapshot: &ClusterSnapshot) -> (Vec<Node>, Models, Vec<(usize, NodeFault)>) {
    let mut models = Models::default();
    let mut nodes = Vec::with_capacity(snapshot.nodes.len());
    let mut faults = Vec::new();
    for (i, n) in snapshot.nodes.iter().enumerate() {
        let (node, fault) = build_one(n, &mut models);
        nodes.push(node);
        if let Some(fault) = fault {
            faults.push((i, fault));
        }
    }
    (nodes, models, faults)
}

/// One node as [`build_lenient`] takes it: the node, or an excluded,
/// GPU-less, unschedulable placeholder with its fault.
pub(crate) fn build_one(n: &NodeSnapshot, models: &mut Models) -> (Node, Option<NodeFault>) {
    match build_node(n, models) {
        Ok(node) => (node, None),
        Err(fault) => {
            let node = Node {
                name: n.name.clone(),
                labels: n.labels.clone(),
                schedulable: false,
                cpu_cap: n.cpu_milli,
                cpu_used: n.cpu_used_milli,
                mem_cap: n.memory_mib,
                mem_used: n.memory_used_mib,
                workloads: n.workloads.clone(),
                commits: BTreeMap::new(),
                gpus: Vec::new(),
                models: ModelSet::EMPTY,
                excluded: Some(fault.reason.clone()),
            };
            (node, Some(fault))
        }
    }
}

/// One node: every GPU must check out, and its models must fit the model
/// table (interned only when the whole node is accepted).
fn build_node(n: &NodeSnapshot, models: &mut Models) -> Result<Node, NodeFault> {
    let mut gpus = Vec::with_capacity(n.gpus.len());
    for (i, g) in n.gpus.iter().enumerate() {
        let gpu = build_gpu(g).map_err(|(error, what)| NodeFault {
            gpu: i,
            error,
            reason: format!("GPU {i} ({}) {what}", g.model),
        })?;
        gpus.push(gpu);
    }
    let too_many = |i: usize, model: &str| {
        NodeFault {
        gpu: i,
        error: EngineError::TooManyModels(MAX_MODELS),
        reason: format!(
            "GPU {i} ({model}) would add a GPU model beyond the {MAX_MODELS} distinct models one engine tracks"
        ),
    }
    };
    let mut new: Vec<&str> = Vec::new();
    for (i, g) in n.gpus.iter().enumerate() {
        if models.id(&g.model).is_some() || new.contains(&g.model.as_str()) {
            continue;
        }
        if models.names.len() + new.len() >= MAX_MODELS {
            return Err(too_many(i, &g.model));
        }
        new.push(&g.model);
    }
    let mut mask = ModelSet::EMPTY;
    for (i, (gpu, g)) in gpus.iter_mut().zip(&n.gpus).enumerate() {
        gpu.model = models.intern(&g.model).map_err(|_| too_many(i, &g.model))?;
        mask.insert(gpu.model);
    }
    Ok(Node {
        name: n.name.clone(),
        labels: n.labels.clone(),
        schedulable: n.schedulable,
        cpu_cap: n.cpu_milli,
        cpu_used: n.cpu_used_milli,
        mem_cap: n.memory_mib,
        mem_used: n.memory_used_mib,
        workloads: n.workloads.clone(),
        commits: BTreeMap::new(),
        gpus,
        models: mask,
        excluded: None,
    })
}

/// One GPU, its model not yet interned (id 0); on failure the error and the
/// rest of a sentence that starts with "GPU i (model)".
fn build_gpu(g: &GpuSnapshot) -> Result<Gpu, (EngineError, String)> {
    let mig_table = mig::table_for_model(&g.model);
    let usage = match &g.mode {
        GpuMode::Exclusive { allocated } => Usage::Exclusive { busy: *allocated },
        GpuMode::Mig { instances } => {
            let Some(table) = mig_table else {
                return Err((
                    mig::MigError::UnsupportedModel(g.model.clone()).into(),
                    format!(
                        "is in MIG mode but {} has no MIG geometry: MIG is not supported on this model, \
                         or its profile table is not known",
                        g.model
                    ),
                ));
            };
            let mut layout = MigLayout::new(table);
            for inst in instances {
                if let Err(e) = table.profile(&inst.profile).and_then(|p| layout.place(p, inst.start)) {
                    let what = format!(
                        "has a MIG layout the hardware cannot hold: {} at memory slice {}: {e}",
                        inst.profile, inst.start
                    );
                    return Err((e.into(), what));
                }
            }
            Usage::Mig { layout, instances: instances.clone() }
        }
        GpuMode::Mps { clients, compute_pct, memory_mib } => {
            Usage::Mps { clients: *clients, pct: *compute_pct, mem: *memory_mib }
        }
        GpuMode::Shared { tenants, milli, memory_mib } => {
            Usage::Shared { tenants: *tenants, milli: *milli, mem: *memory_mib }
        }
    };
    let gpu = Gpu {
        model: 0,
        mem: g.memory_mib,
        nvlink: g.nvlink_domain,
        healthy: g.healthy,
        usage,
        telemetry: g.telemetry,
        mig_table,
    };
    if !gpu.within_capacity() {
        let held = match &gpu.usage {
            Usage::Mps { clients, pct, mem } => format!(
                "its {clients} MPS client(s) hold {pct} % of compute and {mem} of {} MiB \
                 (at most {MPS_MAX_CLIENTS} clients, 100 %)",
                gpu.mem
            ),
            Usage::Shared { milli, mem, .. } => {
                format!("its tenants hold {milli}/1000 of it and {mem} of {} MiB", gpu.mem)
            }
            _ => String::new(),
        };
        return Err((EngineError::OverCommitted, format!("holds more than it has: {held}")));
    }
    Ok(gpu)
}

/// Exports the working state back to the public snapshot form.
pub(crate) fn export(nodes: &[Node], models: &Models) -> ClusterSnapshot {
    let nodes = nodes
        .iter()
        .map(|n| NodeSnapshot {
            name: n.name.clone(),
            labels: n.labels.clone(),
            schedulable: n.schedulable,
            cpu_milli: n.cpu_cap,
            cpu_used_milli: n.cpu_used,
            memory_mib: n.mem_cap,
            memory_used_mib: n.mem_used,
            workloads: n.workloads.clone(),
            gpus: n
                .gpus
                .iter()
                .map(|g| GpuSnapshot {
                    model: models.names.get(usize::from(g.model)).cloned().unwrap_or_default(),
                    memory_mib: g.mem,
                    nvlink_domain: g.nvlink,
                    healthy: g.healthy,
                    telemetry: g.telemetry,
                    mode: match &g.usage {
                        Usage::Exclusive { busy } => GpuMode::Exclusive { allocated: *busy },
                        Usage::Mig { instances, .. } => GpuMode::Mig { instances: instances.clone() },
                        Usage::Mps { clients, pct, mem } => {
                            GpuMode::Mps { clients: *clients, compute_pct: *pct, memory_mib: *mem }
                        }
                        Usage::Shared { tenants, milli, mem } => {
                            GpuMode::Shared { tenants: *tenants, milli: *milli, memory_mib: *mem }
                        }
                    },
                })
                .collect(),
        })
        .collect();
    ClusterSnapshot { nodes }
}
