//! Gantry's placement engine: a pure function from a cluster snapshot and a
//! request to a placement, or to a reason a person can act on.
//!
//! No I/O, no clock, no async: time does not exist here and chance comes only
//! from the `seed` a caller passes. The coordinator's leader converts its
//! replicated state into a [`ClusterSnapshot`], asks [`Engine::place`] for a
//! plan, and its plan applier re-checks the plan before committing it.
//!
//! ```text
//!   ClusterSnapshot ─▶ Engine::new ─▶ Engine ─ place(&PlacementRequest, seed) ─▶ Placement
//!                   (or Engine::build)   ▲                                   └─▶ PlaceError::Refused(Refusal)
//!                                        └── commit(&PlacementRequest, &Placement)
//! ```
//!
//! [`Engine::new`] fails on any inconsistent node; [`Engine::build`] leaves
//! such nodes out ([`NodeExclusion`]) so the rest of the cluster schedules.
//!
//! # Layout
//!
//! - [`snapshot`]: the cluster as input — nodes, GPUs, each GPU's sharing mode
//!   (exclusive, MIG layout, MPS, shared) with what it holds, live telemetry.
//! - [`request`]: what a replica asks for (`exclusive`, `mig`, `mps`, `shared`,
//!   `milli`, host CPU/memory, constraints) and the [`Placement`] answer.
//! - [`mig`]: MIG profile tables and placement geometry (public; the agent's
//!   GPU simulator reuses it).
//! - [`policy`]: `least-loaded`, `binpack`, `spread`, `fgd`, `fgd-pack`.
//! - [`fgd`]: the target workload, incremental fragmentation, model pressure.
//! - `engine`: [`Engine`] — working state, search, commit, refusals.
//! - `cache`: per-request-shape node scores for full scans (replay speed).
//! - `fit`: feasibility of one node and its GPU choices.
//! - `index`: capacity buckets that keep a placement sub-linear in nodes.
//! - `score`: policy costs.
//! - `state`: compact working copy of nodes and GPUs.
//! - [`refusal`]: why nothing fits, counted per reason.
//! - [`replay`]: the openb trace loader and replay protocol (the only module
//!   that reads files; used by `gantryctl sim replay`).
//! - [`rng`]: SplitMix64, the seeded randomness.

pub mod fgd;
pub mod mig;
pub mod policy;
pub mod refusal;
pub mod replay;
pub mod request;
pub mod rng;
pub mod snapshot;

mod cache;
mod engine;
mod fit;
mod index;
mod score;
mod state;

pub use engine::{place, Engine, EngineConfig, EngineError, NodeExclusion, PlaceError};
pub use fgd::{Shape, TargetWorkload};
pub use policy::Policy;
pub use refusal::{Refusal, RefusalReason};
pub use request::{
    Constraints, GpuAssignment, GpuRequest, GpuShare, LabelSelector, Placement, PlacementRequest,
    RequestError,
};
pub use snapshot::{ClusterSnapshot, GpuMode, GpuSnapshot, GpuTelemetry, MigInstanceSpec, NodeSnapshot};
