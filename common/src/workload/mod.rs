//! Workloads and their allocations: what an operator asks to run, and which
//! replica runs where.
//!
//! - [`spec`]: [`WorkloadSpec`], the validated, canonical form that Raft
//!   replicates and agents run.
//! - [`spec_file`]: the TOML file operators write, parsed and validated into a
//!   [`WorkloadSpec`] with errors that name the field.
//! - [`alloc`]: [`Allocation`] (one replica placed on a node, with its GPU
//!   shares, desired and actual state) and [`AllocReport`] (what an agent
//!   observed).

pub mod alloc;
pub mod spec;
pub mod spec_file;

pub use alloc::{
    ActualState, AllocGpu, AllocReport, Allocation, DesiredAlloc, DesiredState, HealthState, NewAlloc,
    CRASH_LOOP_FAILURES,
};
pub use spec::{HealthCheck, PortSpec, RestartMode, RestartPolicy, RuntimeSpec, SpecError, WorkloadSpec};
pub use spec_file::parse_workload_toml;
