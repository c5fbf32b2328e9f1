//! Scheduling, on the leader only.
//!
//! ```text
//!   state changed / 1 s tick ─► plan (pure: snapshot → engine → Plan) ─► Raft: ApplyPlan ─► apply re-checks
//! ```
//!
//! - [`plan`]: one evaluation round as a pure function.
//! - [`applier`]: the single task that evaluates and commits plans, one at a
//!   time, so plans never race each other on the leader.

pub mod applier;
pub mod live_engine;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of the plan applier, for `/metrics`, and the nodes its last
/// round left out, for `gantryctl nodes`.
#[derive(Clone, Default)]
pub struct SchedulerStats {
    placed: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    /// Node name → why the engine could not take it. A std `Mutex`: nothing awaits under it.
    excluded: Arc<Mutex<BTreeMap<String, String>>>,
}

impl SchedulerStats {
    /// The nodes the last round that built an engine left out.
    pub fn excluded(&self) -> BTreeMap<String, String> {
        self.excluded.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_excluded(&self, excluded: BTreeMap<String, String>) {
        *self.excluded.lock().unwrap_or_else(|p| p.into_inner()) = excluded;
    }

    pub fn record(&self, placed: u64, refused: u64) {
        self.placed.fetch_add(placed, Ordering::Relaxed);
        self.refused.fetch_add(refused, Ordering::Relaxed);
    }

    /// (placements committed, placements refused by the re-check) since start.
    pub fn totals(&self) -> (u64, u64) {
        (self.placed.load(Ordering::Relaxed), self.refused.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests;
