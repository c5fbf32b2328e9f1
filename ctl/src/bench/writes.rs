//! `gantryctl bench writes`: Raft writes per second and their latency, the
//! same load against three etcd members and three coordinators in one run.
//!
//! Each client keeps one HTTP/1.1 connection to one member (clients are
//! spread over the members) and writes one after the other for a fixed
//! time: on etcd a `POST /v3/kv/put` of its own key, on Gantry a `PUT
//! /v1/nodes/NODE/labels` of its own label (the admin socket's smallest
//! Raft write; each is one committed entry). Rounds alternate etcd and
//! Gantry so that both see the same machine. Optionally the cluster holds
//! simulated nodes and allocations first, and etcd as many keys.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use super::cluster::Cluster;
use super::etcd::{self, Etcd};
use super::run::{placed, spec, wait_for};
use super::swarm::{node_name, Swarm};
use crate::workload_cmds;

/// Where one client connects.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// One kept-alive HTTP/1.1 connection.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(to: &Endpoint) -> anyhow::Result<Conn> {
        let sender = match to {
            Endpoint::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connecting to {}", path.display()))?;
                handshake(s).await?
            }
            Endpoint::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connecting to {addr}"))?;
                s.set_nodelay(true).context("TCP_NODELAY")?;
                handshake(s).await?
            }
        };
        Ok(Conn { sender })
    }

    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("building a request")?;
        let resp = self.sender.send_request(req).await.context("sending a request")?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.context("reading an answer")?.to_bytes();
        Ok((status, bytes))
    }
}

async fn handshake<S>(stream: S) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Which system a load goes to, and so how a write is spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Etcd,
    Gantry,
}

/// Client `client`'s write number `seq`: method, path, body.
pub fn write_request(system: System, client: usize, seq: u64, nodes: usize) -> (Method, String, Vec<u8>) {
    match system {
        System::Etcd => (
            Method::POST,
            "/v3/kv/put".into(),
            etcd::put_body(&format!("bench-{client}"), seq.to_string().as_bytes()),
        ),
        System::Gantry => {
            let node = node_name(client % nodes.max(1), nodes.max(1));
            let body = format!(r#"{{"set":{{"bench-{client}":"{seq}"}}}}"#).into_bytes();
            (Method::PUT, format!("/v1/nodes/{node}/labels"), body)
        }
    }
}

/// What one load measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WriteStats {
    pub writes: u64,
    pub errors: u64,
    pub writes_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU time (user + system) the members used per write, summed over
    /// members, in milliseconds: a 2-core host runs out of CPU first.
    #[serde(default)]
    pub cpu_ms_per_write: f64,
}

/// Nearest-rank quantile of sorted samples, in ms (0 for none).
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

pub fn summarize(mut latencies: Vec<Duration>, errors: u64, elapsed: Duration) -> WriteStats {
    latencies.sort_unstable();
    let writes = latencies.len() as u64;
    WriteStats {
        writes,
        errors,
        writes_per_s: writes as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: quantile_ms(&latencies, 0.50),
        p99_ms: quantile_ms(&latencies, 0.99),
        cpu_ms_per_write: 0.0,
    }
}

/// Median of some values (the lower middle for an even count; 0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

/// `clients` clients spread over `endpoints`, writing for `duration`.
/// Errors (a non-2xx answer, a broken connection, reconnected) are counted,
/// not timed.
async fn drive(
    system: System,
    endpoints: &[Endpoint],
    clients: usize,
    duration: Duration,
    nodes: usize,
) -> WriteStats {
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let Some(to) = endpoints.get(c % endpoints.len().max(1)).cloned() else { break };
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut conn = None;
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let c_conn = match conn.as_mut() {
                    Some(c) => c,
                    None => match Conn::open(&to).await {
                        Ok(c) => conn.insert(c),
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                seq += 1;
                let (method, path, body) = write_request(system, c, seq, nodes);
                let t = Instant::now();
                match c_conn.call(method, &path, Some(body)).await {
                    Ok((status, _)) if status.is_success() => latencies.push(t.elapsed()),
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        if let Ok((l, e)) = done {
            all.extend(l);
            errors += e;
        }
    }
    summarize(all, errors, start.elapsed())
}

/// What `bench writes` is asked to do.
pub struct WritesPlan {
    pub clients: Vec<usize>,
    pub members: u32,
    pub duration: Duration,
    pub rounds: usize,
    pub nodes: usize,
    pub allocations: u64,
    pub heartbeat_every: Duration,
    pub etcd: PathBuf,
    pub phase_limit: Duration,
}

/// One client count's result, both systems.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WritesReport {
    pub clients: usize,
    pub members: u32,
    pub nodes: usize,
    pub allocations: u64,
    pub round_s: f64,
    pub etcd_writes_per_s: f64,
    pub gantry_writes_per_s: f64,
    /// Gantry's writes/s over etcd's (medians of the rounds).
    pub ratio: f64,
    pub etcd_p50_ms: f64,
    pub gantry_p50_ms: f64,
    pub etcd_p99_ms: f64,
    pub gantry_p99_ms: f64,
    pub etcd_cpu_ms_per_write: f64,
    pub gantry_cpu_ms_per_write: f64,
    pub etcd_errors: u64,
    pub gantry_errors: u64,
    pub etcd_rounds: Vec<WriteStats>,
    pub gantry_rounds: Vec<WriteStats>,
}

impl WritesReport {
    pub fn from_rounds(
        plan: &WritesPlan,
        clients: usize,
        etcd: Vec<WriteStats>,
        gantry: Vec<WriteStats>,
    ) -> Self {
        let med = |v: &[WriteStats], f: fn(&WriteStats) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        let etcd_writes_per_s = med(&etcd, |s| s.writes_per_s);
        let gantry_writes_per_s = med(&gantry, |s| s.writes_per_s);
        WritesReport {
            clients,
            members: plan.members,
            nodes: plan.nodes,
            allocations: plan.allocations,
            round_s: plan.duration.as_secs_f64(),
            etcd_writes_per_s,
            gantry_writes_per_s,
            ratio: if etcd_writes_per_s > 0.0 { gantry_writes_per_s / etcd_writes_per_s } else { 0.0 },
            etcd_p50_ms: med(&etcd, |s| s.p50_ms),
            gantry_p50_ms: med(&gantry, |s| s.p50_ms),
            etcd_p99_ms: med(&etcd, |s| s.p99_ms),
            gantry_p99_ms: med(&gantry, |s| s.p99_ms),
            etcd_cpu_ms_per_write: med(&etcd, |s| s.cpu_ms_per_write),
            gantry_cpu_ms_per_write: med(&gantry, |s| s.cpu_ms_per_write),
            etcd_errors: etcd.iter().map(|s| s.errors).sum(),
            gantry_errors: gantry.iter().map(|s| s.errors).sum(),
            etcd_rounds: etcd,
            gantry_rounds: gantry,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        let rates = |v: &[WriteStats]| {
            v.iter().map(|s| format!("{:.0}", s.writes_per_s)).collect::<Vec<_>>().join(", ")
        };
        vec![
            format!(
                "{} clients, {} members each, {} nodes and {} allocations held, {} rounds of {:.0} s:",
                self.clients,
                self.members,
                self.nodes,
                self.allocations,
                self.etcd_rounds.len(),
                self.round_s
            ),
            format!(
                "  etcd:   {:.0} writes/s (rounds {}), p50 {:.2} ms, p99 {:.2} ms, {:.3} ms CPU per write, {} errors",
                self.etcd_writes_per_s,
                rates(&self.etcd_rounds),
                self.etcd_p50_ms,
                self.etcd_p99_ms,
                self.etcd_cpu_ms_per_write,
                self.etcd_errors
            ),
            format!(
                "  gantry: {:.0} writes/s (rounds {}), p50 {:.2} ms, p99 {:.2} ms, {:.3} ms CPU per write, {} errors",
                self.gantry_writes_per_s,
                rates(&self.gantry_rounds),
                self.gantry_p50_ms,
                self.gantry_p99_ms,
                self.gantry_cpu_ms_per_write,
                self.gantry_errors
            ),
            format!(
                "  gantry / etcd: {:.2}x writes/s, p99 {:.2}x",
                self.ratio,
                ratio(self.gantry_p99_ms, self.etcd_p99_ms)
            ),
        ]
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Runs the whole comparison in `dir`.
pub async fn run(plan: &WritesPlan, dir: &Path, say: &dyn Fn(&str)) -> anyhow::Result<Vec<WritesReport>> {
    let nodes = plan.nodes.max(1);
    say(&format!("starting {} etcd members…", plan.members));
    let etcd = Etcd::start(&plan.etcd, &dir.join("etcd"), plan.members as usize).await?;
    say(&format!("starting {} coordinators…", plan.members));
    let gantry_dir = dir.join("gantry");
    std::fs::create_dir_all(&gantry_dir).with_context(|| format!("creating {}", gantry_dir.display()))?;
    let mut cluster = match Cluster::start(&gantry_dir, plan.members, 30) {
        Ok(c) => c,
        Err(e) => {
            etcd.stop();
            return Err(e);
        }
    };
    let result = with_both(plan, nodes, &etcd, &mut cluster, say).await;
    say("stopping…");
    cluster.stop();
    etcd.stop();
    result
}

async fn with_both(
    plan: &WritesPlan,
    nodes: usize,
    etcd: &Etcd,
    cluster: &mut Cluster,
    say: &dyn Fn(&str),
) -> anyhow::Result<Vec<WritesReport>> {
    let leader = cluster.wait_leader(Duration::from_secs(60)).await?;
    say(&format!("leader {leader}; starting {nodes} simulated nodes…"));
    let gpus = gantry_common::gpu_spec::parse_gpu_spec("16xH100-80GB").map_err(|e| anyhow::anyhow!("{e}"))?;
    let swarm =
        Swarm::start(&cluster.pki(), nodes, &gpus, cluster.listen_addrs(), plan.heartbeat_every, 0, &|_| {})
            .await?;
    let outcome = measure(plan, nodes, etcd, cluster, &swarm, say).await;
    swarm.stop().await;
    outcome
}

async fn measure(
    plan: &WritesPlan,
    nodes: usize,
    etcd: &Etcd,
    cluster: &mut Cluster,
    swarm: &Swarm,
    say: &dyn Fn(&str),
) -> anyhow::Result<Vec<WritesReport>> {
    wait_for(plan.phase_limit, "every node to register", || async {
        (swarm.registered() >= nodes, format!("{}/{nodes}", swarm.registered()))
    })
    .await?;
    let leader = cluster.wait_leader(plan.phase_limit).await?;
    if plan.allocations > 0 {
        fill(plan, nodes, etcd, cluster, swarm, leader, say).await?;
    }
    let gantry: Vec<Endpoint> =
        cluster.ids().map(|id| cluster.socket(id).map(Endpoint::Unix)).collect::<anyhow::Result<_>>()?;
    let etcd_at: Vec<Endpoint> = etcd.clients.iter().map(|a| Endpoint::Tcp(*a)).collect();
    let mut reports = Vec::new();
    for &clients in &plan.clients {
        let (mut e, mut g) = (Vec::new(), Vec::new());
        let etcd_pids = etcd.pids();
        let gantry_pids: Vec<u32> = cluster.ids().filter_map(|id| cluster.pid(id).ok()).collect();
        for round in 0..plan.rounds {
            let s = with_cpu(&etcd_pids, drive(System::Etcd, &etcd_at, clients, plan.duration, nodes)).await;
            say(&format!(
                "{clients} clients, round {}: etcd {:.0} writes/s, p99 {:.2} ms",
                round + 1,
                s.writes_per_s,
                s.p99_ms
            ));
            e.push(s);
            let s =
                with_cpu(&gantry_pids, drive(System::Gantry, &gantry, clients, plan.duration, nodes)).await;
            say(&format!(
                "{clients} clients, round {}: gantry {:.0} writes/s, p99 {:.2} ms",
                round + 1,
                s.writes_per_s,
                s.p99_ms
            ));
            g.push(s);
        }
        reports.push(WritesReport::from_rounds(plan, clients, e, g));
    }
    Ok(reports)
}

/// CPU seconds the processes used so far (those that exited count 0).
fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| super::cluster::cpu_seconds(p).ok()).sum()
}

/// Runs a load and adds the members' CPU time per write to its stats.
async fn with_cpu(pids: &[u32], load: impl std::future::Future<Output = WriteStats>) -> WriteStats {
    let before = cpu_of(pids);
    let mut stats = load.await;
    stats.cpu_ms_per_write = per_write_ms(cpu_of(pids) - before, stats.writes);
    stats
}

/// CPU seconds spread over `writes`, in ms (0 without writes).
pub fn per_write_ms(cpu_s: f64, writes: u64) -> f64 {
    if writes == 0 {
        0.0
    } else {
        cpu_s.max(0.0) * 1e3 / writes as f64
    }
}

/// Sizes of the records etcd is filled with, to hold about what the
/// coordinators hold: a node with 16 GPUs and an allocation, as JSON.
const NODE_RECORD_BYTES: usize = 2_048;
const ALLOC_RECORD_BYTES: usize = 512;

/// Most replicas one workload may have.
const MAX_REPLICAS: u64 = gantry_common::workload::spec::MAX_REPLICAS as u64;

/// Replica counts of the workloads that hold `allocations` in all.
pub fn fill_sizes(allocations: u64) -> Vec<u64> {
    let mut left = allocations;
    let mut sizes = Vec::new();
    while left > 0 {
        let n = left.min(MAX_REPLICAS);
        sizes.push(n);
        left -= n;
    }
    sizes
}

/// Places `allocations` one-GPU replicas on the swarm and writes as many
/// keys (plus one per node) into etcd.
async fn fill(
    plan: &WritesPlan,
    nodes: usize,
    etcd: &Etcd,
    cluster: &Cluster,
    swarm: &Swarm,
    leader: u64,
    say: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let gpus = nodes as u64 * 16;
    if plan.allocations > gpus {
        bail!("--allocations {}: the {nodes} nodes hold {gpus} GPUs (16 each)", plan.allocations);
    }
    say(&format!("placing {} allocations…", plan.allocations));
    let admin = cluster.client(leader)?;
    // A workload has at most MAX_REPLICAS replicas: several, in one batch.
    let fill: Vec<_> = fill_sizes(plan.allocations)
        .into_iter()
        .enumerate()
        .map(|(i, replicas)| spec(&format!("bench-fill-{i}"), replicas))
        .collect::<anyhow::Result<_>>()?;
    let secs = placed(swarm, plan.allocations, plan.phase_limit, "the fill workloads' replicas", async {
        workload_cmds::submit_batch(&admin, &fill).await.map(|_| ())
    })
    .await?;
    say(&format!("{} allocations running after {secs:.1} s; filling etcd…", plan.allocations));
    let keys: Vec<(String, usize)> = (0..nodes)
        .map(|i| (format!("/nodes/{}", node_name(i, nodes)), NODE_RECORD_BYTES))
        .chain((0..plan.allocations).map(|i| (format!("/allocs/{i:08}"), ALLOC_RECORD_BYTES)))
        .collect();
    let keys = Arc::new(keys);
    let mut tasks = tokio::task::JoinSet::new();
    const FILLERS: usize = 16;
    for f in 0..FILLERS {
        let (keys, to) = (Arc::clone(&keys), Endpoint::Tcp(etcd.clients[f % etcd.clients.len()]));
        tasks.spawn(async move {
            let mut conn = Conn::open(&to).await?;
            for (key, size) in keys.iter().skip(f).step_by(FILLERS) {
                let (status, body) = conn
                    .call(Method::POST, "/v3/kv/put", Some(etcd::put_body(key, &vec![b'x'; *size])))
                    .await?;
                if !status.is_success() {
                    bail!("etcd put {key}: {status} {}", String::from_utf8_lossy(&body));
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("an etcd filler failed")??;
    }
    say(&format!("etcd holds {} keys", keys.len()));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn stats_count_writes_per_second_and_nearest_rank_quantiles() {
        let lat = ms(&(1..=100).rev().collect::<Vec<_>>());
        let s = summarize(lat, 3, Duration::from_secs(4));
        assert_eq!(s.writes, 100);
        assert_eq!(s.errors, 3);
        assert_eq!(s.writes_per_s, 25.0);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        let one = summarize(ms(&[7]), 0, Duration::from_secs(1));
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        let none = summarize(Vec::new(), 5, Duration::from_secs(1));
        assert_eq!((none.writes, none.p99_ms, none.writes_per_s), (0, 0.0, 0.0));
    }

    #[test]
    fn allocations_are_cut_into_workloads_of_at_most_ten_thousand() {
        assert_eq!(fill_sizes(0), Vec::<u64>::new());
        assert_eq!(fill_sizes(10_000), vec![10_000]);
        assert_eq!(fill_sizes(25_001), vec![10_000, 10_000, 5_001]);
    }

    #[test]
    fn cpu_is_spread_over_the_writes() {
        assert_eq!(per_write_ms(2.0, 4000), 0.5);
        assert_eq!(per_write_ms(2.0, 0), 0.0);
        assert_eq!(per_write_ms(-1.0, 10), 0.0);
    }

    #[test]
    fn the_median_of_rounds_is_the_middle_one() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn each_client_writes_its_own_key_on_each_system() {
        let (m, path, body) = write_request(System::Gantry, 5, 9, 4);
        assert_eq!(m, Method::PUT);
        assert_eq!(path, format!("/v1/nodes/{}/labels", node_name(1, 4)));
        assert_eq!(String::from_utf8(body).unwrap(), r#"{"set":{"bench-5":"9"}}"#);
        let (m, path, body) = write_request(System::Etcd, 5, 9, 4);
        assert_eq!((m, path.as_str()), (Method::POST, "/v3/kv/put"));
        assert_eq!(body, etcd::put_body("bench-5", b"9"));
    }

    #[test]
    fn the_report_compares_medians() {
        let plan = WritesPlan {
            clients: vec![16],
            members: 3,
            duration: Duration::from_secs(10),
            rounds: 3,
            nodes: 16,
            allocations: 0,
            heartbeat_every: Duration::from_secs(1),
            etcd: PathBuf::from("etcd"),
            phase_limit: Duration::from_secs(60),
        };
        let s =
            |w: f64, p99: f64| WriteStats { writes_per_s: w, p99_ms: p99, errors: 1, ..Default::default() };
        let r = WritesReport::from_rounds(
            &plan,
            16,
            vec![s(1000.0, 5.0), s(1200.0, 4.0), s(800.0, 9.0)],
            vec![s(900.0, 6.0), s(500.0, 7.0), s(950.0, 5.0)],
        );
        assert_eq!(r.etcd_writes_per_s, 1000.0);
        assert_eq!(r.gantry_writes_per_s, 900.0);
        assert!((r.ratio - 0.9).abs() < 1e-9);
        assert_eq!((r.etcd_p99_ms, r.gantry_p99_ms), (5.0, 6.0));
        assert_eq!((r.etcd_errors, r.gantry_errors), (3, 3));
        assert!(r.lines()[3].contains("0.90x writes/s"), "{:?}", r.lines());
    }
}
