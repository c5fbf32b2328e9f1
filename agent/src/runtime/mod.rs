//! Runtimes: how an allocation's workload is started, watched, stopped and
//! found again after the agent restarts.
//!
//! # Layout
//!
//! - [`env`]: the environment a workload gets (pure): its own variables, the
//!   `GANTRY_*` ones, the host ports, and the GPU variables.
//! - [`process`]: a confined child process in its own process group, logs in files.
//! - [`confine`]: the user, capabilities, environment of a process workload.
//! - [`cgroup`]: its CPU, memory and process limits (cgroup v2 or v1).
//! - [`docker`]: a container on the local Docker engine (bollard).
//!
//! Both implement [`Runtime`]. A started workload is named by a [`Handle`],
//! which the workload manager keeps in its state file: a process by pid and
//! start time, a container by id. Workloads outlive the agent; a new agent
//! checks each handle and carries on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use gantry_common::workload::WorkloadSpec;
use serde::{Deserialize, Serialize};

pub mod cgroup;
pub mod confine;
pub mod docker;
pub mod env;
pub mod process;
pub mod uids;

/// Everything a runtime needs to start one allocation.
#[derive(Clone, Debug)]
pub struct Launch {
    pub alloc_id: String,
    pub node: String,
    pub spec: WorkloadSpec,
    /// The full environment (spec, `GANTRY_*`, ports, GPU): see [`env`].
    pub env: BTreeMap<String, String>,
    /// Host port by port name; a container port is in the spec.
    pub host_ports: BTreeMap<String, u16>,
    /// Device ids handed to the workload (`GPU-…` or `MIG-…`).
    pub devices: Vec<String>,
    /// The MPS pipe directory to mount into a container.
    pub mps_pipe_dir: Option<PathBuf>,
    /// `<data_dir>/allocs/<id>/`: the process runtime's working directory and logs.
    pub alloc_dir: PathBuf,
}

/// A started workload, as the state file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handle {
    /// A process group led by `pid`; `start_ticks` is the leader's start time
    /// (field 22 of `/proc/<pid>/stat`), so a reused pid is not mistaken for it.
    Process {
        pid: i32,
        start_ticks: u64,
    },
    Docker {
        container: String,
    },
}

/// What a runtime sees of a started workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    /// It ended. `code` is its exit code when it exited with one (`None`:
    /// killed by a signal, or unknown); only code 0 is a success.
    Exited {
        code: Option<i32>,
        message: String,
    },
}

/// A stream of log bytes.
pub type LogStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// What to read of a workload's logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRequest {
    pub follow: bool,
    /// Only the last `tail` bytes of what is there now (per stream).
    pub tail: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start {command:?}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("signal to process group {pgid}: {source}")]
    Signal { pgid: i32, source: nix::Error },
    #[error("image {image:?} is not on this host and pulling it failed: {reason}")]
    Image { image: String, reason: String },
    #[error("docker: {0}")]
    Docker(String),
    #[error("the docker runtime is off (docker_socket is empty or the engine was unreachable at start)")]
    NoDocker,
    #[error("{0} is handled by another runtime")]
    WrongHandle(&'static str),
    #[error("{0}")]
    Confine(String),
}

/// One way of running workloads.
pub trait Runtime: Send + Sync {
    /// `process` or `docker`, as in `RuntimeSpec::kind`.
    fn kind(&self) -> &'static str;

    /// Starts the workload and returns its handle once it runs.
    fn start<'a>(&'a self, launch: &'a Launch) -> BoxFuture<'a, Result<Handle, RuntimeError>>;

    /// Whether it still runs.
    fn status<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<Status, RuntimeError>>;

    /// Stops it: a polite signal, then a kill after `grace`; removes what is
    /// left (a container). Stopping something already gone succeeds.
    fn stop<'a>(&'a self, handle: &'a Handle, grace: Duration) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Workloads of `node` this runtime can find without the state file, by
    /// allocation id (containers by label; processes cannot be found so).
    fn discover<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<(String, Handle)>, RuntimeError>>;

    /// The workload's output: stdout and stderr.
    fn logs<'a>(
        &'a self,
        handle: &'a Handle,
        alloc_dir: PathBuf,
        request: LogRequest,
    ) -> BoxFuture<'a, Result<LogStream, RuntimeError>>;
}
