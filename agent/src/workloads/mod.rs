//! Running the allocations the coordinators assign to this node.
//!
//! # Layout
//!
//! - [`link`]: the watch channels between the session and the manager.
//! - [`reconcile`]: the pure core: desired set + records + time → actions,
//!   the record's transitions, and the reports.
//! - [`manager`]: the task that drives it: runtimes, health probes, GPU
//!   devices, MPS daemons, the state file, reports, and logs for HTTP.
//! - [`state`]: `<data_dir>/allocs.json`, written atomically.
//! - [`ports`]: host ports from the configured range.
//! - [`health`]: HTTP probes.
//! - [`mps`]: MPS control daemons (real or the sim's model).

pub mod health;
pub mod link;
pub mod manager;
pub mod mps;
pub mod ports;
pub mod reconcile;
pub mod state;
