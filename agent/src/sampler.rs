//! Takes one telemetry sample of the host and its GPUs, and keeps the latest
//! one for the local `/metrics` endpoint. NVML and `/proc` reads block, so
//! they run on tokio's blocking pool, never on an async worker.

use std::sync::{Arc, Mutex};

use gantry_common::model::{GpuInfo, GpuTelemetry, HostTelemetry, NodeInfo};
use gantry_common::wire::Heartbeat;
use tracing::warn;

use crate::gpu::Gpus;
use crate::host::HostSampler;

/// What the agent last saw and where it reports; shared with `/metrics`.
/// A std `Mutex`: nothing awaits while it is held.
#[derive(Clone, Default)]
pub struct AgentStatus {
    inner: Arc<Mutex<StatusInner>>,
}

#[derive(Clone, Debug, Default)]
pub struct StatusInner {
    pub gpus: Vec<GpuInfo>,
    pub host: Option<HostTelemetry>,
    pub telemetry: Vec<GpuTelemetry>,
    /// Address of the coordinator the agent is registered with, if any.
    pub leader: Option<String>,
    pub heartbeats_sent: u64,
}

impl AgentStatus {
    pub fn snapshot(&self) -> StatusInner {
        self.lock().clone()
    }

    pub fn set_leader(&self, leader: Option<String>) {
        self.lock().leader = leader;
    }

    pub fn count_heartbeat(&self) {
        self.lock().heartbeats_sent += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Sampler {
    gpus: Gpus,
    host: Arc<Mutex<HostSampler>>,
    node: String,
    seq: u64,
    status: AgentStatus,
    address: String,
    http_addr: String,
}

impl Sampler {
    pub fn new(gpus: Gpus, host: HostSampler, node: String, status: AgentStatus) -> Sampler {
        Sampler {
            gpus,
            host: Arc::new(Mutex::new(host)),
            node,
            seq: 0,
            status,
            address: String::new(),
            http_addr: String::new(),
        }
    }

    /// The node this agent speaks for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Where workloads and the agent's HTTP listener are reached, reported at registration.
    pub fn set_endpoints(&mut self, address: String, http_addr: String) {
        self.address = address;
        self.http_addr = http_addr;
    }

    /// The node's static facts, for registration.
    pub async fn node_info(
        &self,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<NodeInfo, crate::gpu::GpuError> {
        let (gpus, host) = (self.gpus.clone(), Arc::clone(&self.host));
        let (gpus, host) =
            blocking(move || Ok::<_, crate::gpu::GpuError>((gpus.inventory()?, lock(&host).info())))
                .await??;
        self.status.lock().gpus = gpus.clone();
        Ok(NodeInfo {
            name: self.node.clone(),
            labels,
            host,
            gpus,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            gpu_backend: self.gpus.name().to_string(),
            address: self.address.clone(),
            http_addr: self.http_addr.clone(),
        })
    }

    /// Samples everything and builds the next heartbeat. A GPU sampling
    /// failure is logged and reported as no GPU telemetry, so liveness still flows.
    pub async fn heartbeat(&mut self) -> Heartbeat {
        self.seq += 1;
        let (gpus, host) = (self.gpus.clone(), Arc::clone(&self.host));
        let sampled = blocking(move || (gpus.sample(), lock(&host).sample())).await;
        let (gpus, host) = match sampled {
            Ok((gpus, host)) => (gpus, host),
            Err(e) => {
                // The sampling thread panicked: report liveness with the last host reading.
                let last = self.status.lock().host.clone();
                (Err(e), last.unwrap_or(HostTelemetry { cpu_usage_pct: 0.0, memory_used_mib: 0 }))
            }
        };
        let gpus = match gpus {
            Ok(g) => g,
            Err(e) => {
                warn!("GPU sampling failed: {e}");
                Vec::new()
            }
        };
        {
            let mut s = self.status.lock();
            s.host = Some(host.clone());
            s.telemetry = gpus.clone();
        }
        Heartbeat { node: self.node.clone(), seq: self.seq, host, gpus }
    }
}

fn lock(host: &Mutex<HostSampler>) -> std::sync::MutexGuard<'_, HostSampler> {
    host.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs blocking sampling work on tokio's blocking pool; a panic there
/// comes back as a GPU error rather than taking the session down.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, crate::gpu::GpuError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| crate::gpu::GpuError::SamplingThread(e.to_string()))
}
