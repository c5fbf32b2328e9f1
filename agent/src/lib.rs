//! gantry-agent: the GPU host daemon.
//!
//! It discovers the host's GPUs (NVML, or simulated ones), samples them and
//! the host every interval, registers the node with the leader coordinator
//! and sends it heartbeats with the samples. It follows the leader when it
//! changes.
//!
//! # Layout
//!
//! - [`start`]: `run`, which wires the parts below — read it first.
//! - [`config`]: the TOML config and its validation.
//! - [`gpu`]: GPU backends behind one trait (`nvml`, `sim`).
//! - [`host`]: host facts and load from sysinfo.
//! - [`sampler`]: one heartbeat's worth of samples; the last one kept for `/metrics`.
//! - [`session`]: finding the leader, registering, heartbeating, failing over.
//! - [`workloads`]: running the node's allocations: the pure reconciler and
//!   the manager task that drives it, health probes, host ports, MPS daemons.
//! - [`runtime`]: how a workload runs: a process group or a Docker container.
//! - [`metrics`]: the local `/metrics`, `/healthz` and allocation-log endpoint.

pub mod config;
pub mod coordinator_requests;
pub mod gpu;
pub mod host;
pub mod metrics;
pub mod runtime;
pub mod sampler;
pub mod session;
pub mod start;
pub mod workloads;
