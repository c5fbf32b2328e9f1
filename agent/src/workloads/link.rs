//! The seam between the control-plane session and the workload manager.
//!
//! ```text
//!   session ──desired (index + allocations)──▶ manager
//!   session ◀──reports (every allocation it knows)── manager
//! ```
//!
//! Both sides are `watch` channels: only the latest value matters
//! (declarative), so a slow side never queues stale work.

use std::collections::BTreeMap;

use gantry_common::workload::{AllocReport, DesiredAlloc};
use tokio::sync::watch;

/// The node's desired allocations as of a coordinator index.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredSet {
    pub index: u64,
    pub allocs: Vec<DesiredAlloc>,
}

/// The session's ends.
pub struct SessionSide {
    /// The session publishes every answer of the leader's allocation stream here.
    pub desired: watch::Sender<Option<DesiredSet>>,
    /// The manager's latest report of every allocation it knows, by id.
    pub reports: watch::Receiver<BTreeMap<String, AllocReport>>,
}

/// The manager's ends.
pub struct ManagerSide {
    /// `None` until the first answer since the agent started.
    pub desired: watch::Receiver<Option<DesiredSet>>,
    pub reports: watch::Sender<BTreeMap<String, AllocReport>>,
}

/// A connected pair.
pub fn link() -> (SessionSide, ManagerSide) {
    let (desired_tx, desired_rx) = watch::channel(None);
    let (reports_tx, reports_rx) = watch::channel(BTreeMap::new());
    (
        SessionSide { desired: desired_tx, reports: reports_rx },
        ManagerSide { desired: desired_rx, reports: reports_tx },
    )
}
