//! The engine's working copy of the cluster: compact per-GPU usage that the
//! hot path reads, built from a [`ClusterSnapshot`] and updated by commits.

use std::collections::{BTreeMap, BTreeSet};

use crate::mig::{self, MigGpuTable, MigLayout};
use crate::request::{GpuShare, MPS_MAX_CLIENTS};
use crate::snapshot::{ClusterSnapshot, GpuMode, GpuSnapshot, GpuTelemetry, MigInstanceSpec, NodeSnapshot};
use crate::EngineError;

/// Most distinct GPU models one engine tracks (model sets are u64 bit masks).
pub const MAX_MODELS: usize = 64;

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
    pub gpus: Vec<Gpu>,
    /// Bit mask of the models present.
    pub models: u64,
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
                u32::from(layout.free_compute()) * 1000 / u32::from(mig::COMPUTE_SLICES)
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

/// Builds the working state from a snapshot, checking MIG layouts and usage.
pub(crate) fn build(snapshot: &ClusterSnapshot) -> Result<(Vec<Node>, Models), EngineError> {
    let mut models = Models::default();
    let mut nodes = Vec::with_capacity(snapshot.nodes.len());
    for n in &snapshot.nodes {
        let mut gpus = Vec::with_capacity(n.gpus.len());
        let mut mask = 0u64;
        for (i, g) in n.gpus.iter().enumerate() {
            let gpu = build_gpu(g, &mut models).map_err(|e| EngineError::Gpu {
                node: n.name.clone(),
                gpu: i,
                source: Box::new(e),
            })?;
            mask |= 1 << gpu.model;
            gpus.push(gpu);
        }
        nodes.push(Node {
            name: n.name.clone(),
            labels: n.labels.clone(),
            schedulable: n.schedulable,
            cpu_cap: n.cpu_milli,
            cpu_used: n.cpu_used_milli,
            mem_cap: n.memory_mib,
            mem_used: n.memory_used_mib,
            workloads: n.workloads.clone(),
            gpus,
            models: mask,
        });
    }
    Ok((nodes, models))
}

fn build_gpu(g: &GpuSnapshot, models: &mut Models) -> Result<Gpu, EngineError> {
    let mig_table = mig::table_for_model(&g.model);
    let usage = match &g.mode {
        GpuMode::Exclusive { allocated } => Usage::Exclusive { busy: *allocated },
        GpuMode::Mig { instances } => {
            let table = mig_table.ok_or_else(|| mig::MigError::UnsupportedModel(g.model.clone()))?;
            let mut layout = MigLayout::new();
            for inst in instances {
                layout.place(table.profile(&inst.profile)?, inst.start)?;
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
        model: models.intern(&g.model)?,
        mem: g.memory_mib,
        nvlink: g.nvlink_domain,
        healthy: g.healthy,
        usage,
        telemetry: g.telemetry,
        mig_table,
    };
    if !gpu.within_capacity() {
        return Err(EngineError::OverCommitted);
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
