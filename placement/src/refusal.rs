//! Why a request fits nowhere, in words an operator can act on.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fit::Reject;

/// One reason nodes were ruled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// Down, draining or cordoned.
    NodeDown,
    /// Node labels do not match the selectors.
    Labels,
    /// A replica of the workload already runs there.
    AntiAffinity,
    /// Not enough free host CPU.
    Cpu,
    /// Not enough free host memory.
    Memory,
    /// No GPU of an allowed model.
    GpuModel,
    /// GPUs of the model are smaller than the requested minimum memory.
    GpuMemory,
    /// Not enough free GPU capacity of the requested kind.
    GpuCapacity,
    /// Enough free GPUs, but not in one NVLink domain.
    NvLink,
    /// Left out when the engine was built (a MIG GPU of a model without a
    /// MIG table, an over-committed GPU, ...): see [`Refusal::excluded`].
    Excluded,
}

/// A refused request: what was wanted and how many nodes failed for what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What no node had, e.g. "2 free GPU(s) in one NVLink domain of model H100".
    pub wanted: String,
    pub nodes_total: usize,
    /// Count of nodes per reason (each node counted once, by its first failing check), largest first.
    pub reasons: Vec<(RefusalReason, usize)>,
    /// The excluded nodes as "name: reason", in node order.
    #[serde(default)]
    pub excluded: Vec<String>,
}

/// Excluded nodes spelled out in a refusal message; the rest are counted.
const EXCLUDED_SHOWN: usize = 3;

impl RefusalReason {
    fn phrase(self, n: usize) -> String {
        let one = n == 1;
        let (s, is, lacks, does, has, runs) = if one {
            ("node", "is", "lacks", "does", "has", "runs")
        } else {
            ("nodes", "are", "lack", "do", "have", "run")
        };
        match self {
            RefusalReason::Excluded => format!("{n} {s} {is} excluded"),
            RefusalReason::NodeDown => format!("{n} {s} {is} down or cordoned"),
            RefusalReason::Labels => format!("{n} {s} {does} not match the label selectors"),
            RefusalReason::AntiAffinity => format!("{n} {s} already {runs} a replica of this workload"),
            RefusalReason::Cpu => format!("{n} {s} {lacks} free CPU"),
            RefusalReason::Memory => format!("{n} {s} {lacks} free host memory"),
            RefusalReason::GpuModel => format!("{n} {s} {has} no GPU of an allowed model"),
            RefusalReason::GpuMemory => format!("{n} {s} {has} only GPUs with too little memory"),
            RefusalReason::GpuCapacity => format!("{n} {s} {lacks} free GPU capacity"),
            RefusalReason::NvLink => format!("{n} {s} {has} the free GPUs but not in one NVLink domain"),
        }
    }

    pub(crate) fn from_reject(r: Reject) -> Self {
        match r {
            Reject::Excluded => RefusalReason::Excluded,
            Reject::Down => RefusalReason::NodeDown,
            Reject::Labels => RefusalReason::Labels,
            Reject::AntiAffinity => RefusalReason::AntiAffinity,
            Reject::Cpu => RefusalReason::Cpu,
            Reject::Memory => RefusalReason::Memory,
            Reject::NoModel => RefusalReason::GpuModel,
            Reject::GpuMemory => RefusalReason::GpuMemory,
            Reject::Capacity => RefusalReason::GpuCapacity,
            Reject::NotLinked => RefusalReason::NvLink,
        }
    }
}

impl Refusal {
    /// Nodes that failed for `reason`.
    pub fn count(&self, reason: RefusalReason) -> usize {
        self.reasons.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no node with {}", self.wanted)?;
        if self.nodes_total == 0 {
            return write!(f, "; the cluster has no nodes");
        }
        // Excluded nodes last: their reasons are sentences of their own.
        let parts: Vec<String> = self
            .reasons
            .iter()
            .filter(|(r, _)| *r != RefusalReason::Excluded)
            .map(|(r, n)| r.phrase(*n))
            .collect();
        if !parts.is_empty() {
            write!(f, "; {}", parts.join(", "))?;
        }
        let excluded = self.count(RefusalReason::Excluded);
        if excluded > 0 {
            write!(f, "; {}", RefusalReason::Excluded.phrase(excluded))?;
            if !self.excluded.is_empty() {
                let shown: Vec<&str> =
                    self.excluded.iter().take(EXCLUDED_SHOWN).map(String::as_str).collect();
                write!(f, ": {}", shown.join("; "))?;
                if self.excluded.len() > EXCLUDED_SHOWN {
                    write!(f, "; and {} more", self.excluded.len() - EXCLUDED_SHOWN)?;
                }
            }
        }
        Ok(())
    }
}
