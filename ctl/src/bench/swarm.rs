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
    /// Heartbeat round trips, as the nodes saw them.
    pub heartbeat_rtt: RttHistogram,
    /// Gaps longer than twice the interval between one node's heartbeats
    /// (its own clock, not the leader's): the node itself was late.
    pub late_sends: AtomicU64,
    /// Heartbeats that failed or timed out (each ends the node's connection).
    pub heartbeat_failures: AtomicU64,
    /// Links that ended on a failure, by the step that failed.
    pub link_failures: LinkFailures,
}

/// The step of a node's link that failed (and ended it).
#[derive(Clone, Copy)]
pub enum Step {
    /// Refused at once as busy (counted apart: it is the coordinator's
    /// admission working, not a failure of the link).
    Busy,
    /// A heartbeat timed out but the link was kept (the coordinator still sent).
    SlowHeartbeat,
    Connect,
    Register,
    Heartbeat,
    Watch,
    Report,
}

/// Link failures counted by [`Step`], for progress lines: a swarm that does
/// not converge says where its nodes give up.
#[derive(Default)]
pub struct LinkFailures([AtomicU64; 7]);

impl LinkFailures {
    pub fn count(&self, step: Step) {
        self.0[step as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn summary(&self) -> String {
        let n = |s: Step| self.0[s as usize].load(std::sync::atomic::Ordering::Relaxed);
        format!(
            "refused as busy {}, slow heartbeats kept {}; links failed at connect {}, register {}, heartbeat {}, watch {}, report {}",
            n(Step::Busy),
            n(Step::SlowHeartbeat),
            n(Step::Connect),
            n(Step::Register),
            n(Step::Heartbeat),
            n(Step::Watch),
            n(Step::Report)
        )
    }
}

/// Round trips in power-of-two millisecond buckets: bucket `i` holds
/// those under `2^i` ms (the last, everything longer).
#[derive(Default)]
pub struct RttHistogram {
    buckets: [AtomicU64; 16],
}

impl RttHistogram {
    pub fn record(&self, rtt: Duration) {
        let ms = rtt.as_millis() as u64;
        let i = (u64::BITS - ms.leading_zeros()) as usize;
        if let Some(b) = self.buckets.get(i.min(15)) {
            b.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn counts(&self) -> [u64; 16] {
        std::array::from_fn(|i| self.buckets[i].load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Upper bound, in ms, of the bucket holding quantile `q` of the round
    /// trips recorded between `before` and `after` (0 with none).
    pub fn quantile_ms(before: &[u64; 16], after: &[u64; 16], q: f64) -> f64 {
        let d: Vec<u64> = after.iter().zip(before).map(|(a, b)| a.saturating_sub(*b)).collect();
        let total: u64 = d.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let want = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in d.iter().enumerate() {
            seen += c;
            if seen >= want {
                return (1u64 << i) as f64;
            }
        }
        (1u64 << 15) as f64
    }
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
    /// Runs the nodes (and their endpoints); shut down without waiting,
    /// since a runtime may not be dropped from inside another.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority (Linux nice values are per thread).
#[allow(unsafe_code)]
fn lower_priority(nice: i32) {
    use nix::libc;
    if nice <= 0 {
        return;
    }
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let failed = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS as _, tid, nice) != 0
    };
    if failed {
        tracing::debug!("could not lower the swarm thread's priority: {}", std::io::Error::last_os_error());
    }
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
        nice: i32,
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
            heartbeat_rtt: RttHistogram::default(),
            late_sends: AtomicU64::new(0),
            heartbeat_failures: AtomicU64::new(0),
            link_failures: LinkFailures::default(),
        });
        // A runtime of their own, at a lower priority: see `--swarm-nice`.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gantry-swarm")
            .enable_all()
            .on_thread_start(move || lower_priority(nice))
            .build()
            .context("starting the swarm's runtime")?;
        let _entered = runtime.enter();
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
        drop(_entered);
        Ok(Swarm { shared, slots, endpoints, tasks, runtime: Some(runtime) })
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

    #[test]
    fn round_trip_quantiles_come_from_the_buckets_between_two_counts() {
        let h = RttHistogram::default();
        h.record(Duration::from_millis(300));
        let before = h.counts();
        assert_eq!(RttHistogram::quantile_ms(&before, &before, 0.5), 0.0, "nothing in between");
        for _ in 0..98 {
            h.record(Duration::from_micros(400)); // under 1 ms
        }
        h.record(Duration::from_millis(3)); // under 4 ms
        h.record(Duration::from_secs(5)); // under 8192 ms
        let after = h.counts();
        assert_eq!(RttHistogram::quantile_ms(&before, &after, 0.5), 1.0);
        assert_eq!(RttHistogram::quantile_ms(&before, &after, 0.99), 4.0);
        assert_eq!(RttHistogram::quantile_ms(&before, &after, 1.0), 8192.0);
        // Past the last bucket: counted in it.
        h.record(Duration::from_secs(100));
        assert_eq!(RttHistogram::quantile_ms(&after, &h.counts(), 1.0), 32768.0);
    }
}
