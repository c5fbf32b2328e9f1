//! N simulated nodes in this process, each with its own certificate and
//! QUIC connection, spread over a few client endpoints (UDP sockets).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gantry_common::gpu_spec::{sim_gpu_uuid, GpuGroup};
use gantry_common::identity::{Role, ALPN_AGENT};
use gantry_common::model::{GpuInfo, GpuSharing, MigMode};
use gantry_common::tls::{self, CaSigner};
use gantry_common::workload::{DesiredAlloc, DesiredState};
use tokio::sync::watch;

/// Nodes sharing one client endpoint (one UDP socket and its driver task).
const NODES_PER_ENDPOINT: usize = 250;

/// What every node shares: where to go, how often to beat, what was counted.
pub struct Shared {
    pub coordinators: Vec<String>,
    pub heartbeat_every: Duration,
    /// Heartbeats the leader acknowledged.
    pub heartbeats: AtomicU64,
    /// Successful registrations (a node registers again after each move).
    pub registrations: AtomicU64,
    /// Allocation ids nodes were first asked to run.
    pub started: AtomicU64,
}

/// One simulated node.
pub struct NodeSlot {
    pub index: usize,
    pub name: String,
    pub gpus: Vec<GpuInfo>,
    pub client_config: quinn::ClientConfig,
    /// Off: the node goes silent (closes its connection, stops beating).
    pub alive: watch::Sender<bool>,
    pub heartbeat_seq: AtomicU64,
    /// The coordinator it registered with last, and when.
    leader: Mutex<Option<(String, Instant)>>,
    /// Allocation ids it is asked to run now.
    running: Mutex<BTreeSet<String>>,
}

impl NodeSlot {
    pub fn set_leader(&self, leader: Option<String>) {
        *self.leader.lock().unwrap_or_else(PoisonError::into_inner) = leader.map(|l| (l, Instant::now()));
    }

    pub fn leader(&self) -> Option<(String, Instant)> {
        self.leader.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Takes a new desired set; returns how many allocations in it are new to run.
    pub fn note_desired(&self, now: &std::collections::BTreeMap<String, DesiredAlloc>) -> u64 {
        let run: BTreeSet<String> = now
            .values()
            .filter(|d| d.alloc.desired == DesiredState::Run)
            .map(|d| d.alloc.id.clone())
            .collect();
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let new = run.difference(&running).count() as u64;
        *running = run;
        new
    }

    /// Allocations it is asked to run now.
    pub fn running(&self) -> usize {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

pub struct Swarm {
    pub shared: Arc<Shared>,
    pub slots: Vec<Arc<NodeSlot>>,
    endpoints: Vec<quinn::Endpoint>,
    tasks: tokio::task::JoinSet<()>,
}

/// The GPUs of a simulated node, as the agent's `sim` backend lists them.
pub fn inventory(node: &str, groups: &[GpuGroup]) -> Vec<GpuInfo> {
    groups
        .iter()
        .flat_map(|g| (0..g.count).map(move |_| &g.model))
        .enumerate()
        .map(|(i, model)| GpuInfo {
            index: i as u32,
            uuid: sim_gpu_uuid(node, i as u32),
            model: model.name.clone(),
            memory_total_mib: model.memory_total_mib,
            mig_mode: if model.mig_capable { MigMode::Disabled } else { MigMode::Unsupported },
            nvlink_domain: model.mig_capable.then_some(0),
            sharing: GpuSharing::Exclusive,
        })
        .collect()
}

/// `sim-00001` … : sortable names, as wide as `n` needs.
pub fn node_name(i: usize, n: usize) -> String {
    let width = n.to_string().len().max(5);
    format!("sim-{:0width$}", i + 1)
}

impl Swarm {
    /// Signs a certificate for each of `n` nodes with the CA in `pki` (in
    /// memory), then starts them all against `coordinators`.
    pub async fn start(
        pki: &std::path::Path,
        n: usize,
        groups: &[GpuGroup],
        coordinators: Vec<String>,
        heartbeat_every: Duration,
        progress: &dyn Fn(usize),
    ) -> anyhow::Result<Swarm> {
        let signer = CaSigner::load(pki).context("loading the swarm's CA")?;
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let name = node_name(i, n);
            let identity =
                signer.identity(Role::Agent, &name, 2).with_context(|| format!("signing {name}"))?;
            let client_config = tls::client_config(&identity, ALPN_AGENT)?;
            let (alive, _) = watch::channel(true);
            slots.push(Arc::new(NodeSlot {
                index: i,
                gpus: inventory(&name, groups),
                name,
                client_config,
                alive,
                heartbeat_seq: AtomicU64::new(0),
                leader: Mutex::new(None),
                running: Mutex::new(BTreeSet::new()),
            }));
            if i % 500 == 499 {
                progress(i + 1);
                tokio::task::yield_now().await;
            }
        }
        let shared = Arc::new(Shared {
            coordinators,
            heartbeat_every,
            heartbeats: AtomicU64::new(0),
            registrations: AtomicU64::new(0),
            started: AtomicU64::new(0),
        });
        let mut endpoints = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in slots.chunks(NODES_PER_ENDPOINT) {
            let endpoint = quinn::Endpoint::client(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
                .context("opening a QUIC client endpoint")?;
            for slot in chunk {
                tasks.spawn(super::sim_node::run(Arc::clone(slot), Arc::clone(&shared), endpoint.clone()));
            }
            endpoints.push(endpoint);
        }
        Ok(Swarm { shared, slots, endpoints, tasks })
    }

    /// Nodes whose last registration is still current.
    pub fn registered(&self) -> usize {
        self.slots.iter().filter(|s| s.leader().is_some()).count()
    }

    pub fn set_alive(&self, which: &[usize], alive: bool) {
        for &i in which {
            if let Some(s) = self.slots.get(i) {
                s.alive.send_replace(alive);
            }
        }
    }

    pub async fn stop(mut self) {
        for s in &self.slots {
            s.alive.send_replace(false);
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        for e in &self.endpoints {
            e.close(0u32.into(), b"swarm stopping");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_and_inventory_follows_the_spec() {
        assert_eq!(node_name(0, 10), "sim-00001");
        assert_eq!(node_name(99_999, 100_000), "sim-100000");
        assert_eq!(node_name(41, 100_000), "sim-000042");
        let groups = gantry_common::gpu_spec::parse_gpu_spec("2xH100-80GB,1xL4-24GB").unwrap_or_default();
        let gpus = inventory("sim-00001", &groups);
        assert_eq!(
            gpus.iter().map(|g| g.model.as_str()).collect::<Vec<_>>(),
            ["H100-80GB", "H100-80GB", "L4-24GB"]
        );
        assert_eq!(gpus[2].mig_mode, MigMode::Unsupported);
        assert_ne!(gpus[0].uuid, gpus[1].uuid);
        assert_eq!(gpus[0].uuid, sim_gpu_uuid("sim-00001", 0));
    }
}
