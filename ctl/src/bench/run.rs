//! One swarm run at one size: start coordinators and nodes, then measure
//! each phase in turn. Every wait has a limit and says what it waited for.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use gantry_common::api::{ClusterStatus, NodeView};
use gantry_common::gpu_spec::GpuGroup;
use gantry_common::workload::spec_file::parse_workload_toml;
use gantry_common::workload::WorkloadSpec;

use super::cluster::{cpu_seconds, rss_mib, Cluster};
use super::report::{metric, one_percent, phase_size, SwarmReport};
use super::swarm::{RttHistogram, Swarm};
use crate::admin_client::AdminClient;
use crate::workload_cmds;

/// What one run is asked to do.
pub struct RunPlan {
    pub nodes: usize,
    pub coordinators: u32,
    pub groups: Vec<GpuGroup>,
    pub heartbeat_every: Duration,
    pub node_down_after_secs: u64,
    pub steady: Duration,
    pub clients: usize,
    /// The longest any one phase may take.
    pub phase_limit: Duration,
    /// Nice value of the simulated nodes' threads.
    pub swarm_nice: i32,
}

pub async fn run(plan: &RunPlan, dir: &std::path::Path, say: &dyn Fn(&str)) -> anyhow::Result<SwarmReport> {
    let mut cluster = Cluster::start(dir, plan.coordinators, plan.node_down_after_secs)?;
    let result = phases(plan, &mut cluster, say).await;
    say("stopping the coordinators…");
    cluster.stop();
    result
}

async fn phases(plan: &RunPlan, cluster: &mut Cluster, say: &dyn Fn(&str)) -> anyhow::Result<SwarmReport> {
    let n = plan.nodes;
    let gpus_per_node: u32 = plan.groups.iter().map(|g| g.count).sum();
    let total_gpus = n as u64 * u64::from(gpus_per_node);
    let mut r = SwarmReport {
        nodes: n,
        coordinators: plan.coordinators,
        gpus_per_node,
        heartbeat_interval_s: plan.heartbeat_every.as_secs_f64(),
        node_down_after_s: plan.node_down_after_secs,
        clients: plan.clients,
        ..SwarmReport::default()
    };
    let leader = cluster.wait_leader(Duration::from_secs(60)).await?;
    say(&format!("coordinators up, leader {leader}; signing {n} node certificates…"));
    let started = Instant::now();
    let swarm = Swarm::start(
        &cluster.pki(),
        n,
        &plan.groups,
        cluster.listen_addrs(),
        plan.heartbeat_every,
        plan.swarm_nice,
        &|done| say(&format!("  {done}/{n} certificates")),
    )
    .await?;
    let swarm = Arc::new(swarm);
    let outcome = measure(plan, cluster, &swarm, &mut r, started, total_gpus, say).await;
    if let Ok(s) = Arc::try_unwrap(swarm) {
        s.stop().await;
    }
    if outcome.is_err() {
        // What the phases before the failure measured (later ones read 0).
        say("measured before the phase that failed (zeros: not reached):");
        for line in r.lines() {
            say(&format!("  {line}"));
        }
    }
    outcome.map(|()| r)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    plan: &RunPlan,
    cluster: &mut Cluster,
    swarm: &Arc<Swarm>,
    r: &mut SwarmReport,
    started: Instant,
    total_gpus: u64,
    say: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let n = plan.nodes;
    let limit = plan.phase_limit;
    wait_for(limit, "every node to register", || async {
        (
            swarm.registered() >= n,
            format!("{}/{n}; {}", swarm.registered(), swarm.shared.link_failures.summary()),
        )
    })
    .await?;
    r.register_all_s = started.elapsed().as_secs_f64();
    say(&format!("{n} nodes registered in {:.1} s", r.register_all_s));
    let leader = cluster.wait_leader(limit).await?;
    let admin = cluster.client(leader)?;
    wait_for(limit, "the leader to count every node ready", || async {
        let ready = leader_metric(&admin, "gantry_nodes", "{status=\"ready\"}").await.unwrap_or(0.0) as usize;
        (ready >= n, format!("{ready}/{n} ready"))
    })
    .await?;

    let term0 = status(&admin).await?.term;
    let rtt0 = swarm.shared.heartbeat_rtt.counts();
    let (fail0, late0) = (
        swarm.shared.heartbeat_failures.load(Ordering::Relaxed),
        swarm.shared.late_sends.load(Ordering::Relaxed),
    );

    // Steady state.
    say(&format!("steady state for {:.0} s…", plan.steady.as_secs_f64()));
    let pid = cluster.pid(leader)?;
    let cpu0 = cpu_seconds(pid)?;
    let beats0 = leader_metric(&admin, "gantry_heartbeats_received_total", "").await?;
    let t0 = Instant::now();
    tokio::time::sleep(plan.steady).await;
    let window = t0.elapsed().as_secs_f64();
    let beats1 = leader_metric(&admin, "gantry_heartbeats_received_total", "").await?;
    r.leader_cpu_pct = (cpu_seconds(pid)? - cpu0) / window * 100.0;
    r.heartbeats_per_s = (beats1 - beats0) / window;
    r.steady_window_s = window;
    r.leader_rss_mib = rss_mib(pid)?;
    r.follower_rss_mib = cluster
        .ids()
        .filter(|&id| id != leader)
        .filter_map(|id| cluster.pid(id).ok().and_then(|p| rss_mib(p).ok()))
        .fold(0.0, f64::max);

    // Placements: one big workload, a batch of small ones, clients one at a time.
    r.single_workload_replicas = phase_size(total_gpus, 0.4, 10_000);
    let single = spec("swarm-single", r.single_workload_replicas)?;
    say(&format!("placing one workload of {} replicas…", r.single_workload_replicas));
    let secs = placed(swarm, r.single_workload_replicas, limit, "the single workload's replicas", async {
        workload_cmds::submit(&admin, &single).await.map(|_| ())
    })
    .await?;
    r.placements_per_s_single_workload = r.single_workload_replicas as f64 / secs;

    r.batch_workloads = phase_size(total_gpus, 0.4, 10_000);
    let specs: Vec<WorkloadSpec> = (0..r.batch_workloads)
        .map(|i| spec(&format!("swarm-batch-{i}"), 1))
        .collect::<anyhow::Result<_>>()?;
    say(&format!("placing {} one-replica workloads through the batch API…", r.batch_workloads));
    let secs = placed(swarm, r.batch_workloads, limit, "the batch's workloads", async {
        workload_cmds::submit_batch(&admin, &specs).await.map(|_| ())
    })
    .await?;
    r.placements_per_s_batch = r.batch_workloads as f64 / secs;

    r.client_workloads = phase_size(total_gpus, 0.05, 2_000);
    say(&format!("placing {} workloads from {} clients, one at a time…", r.client_workloads, plan.clients));
    let socket_client = cluster.client(leader)?;
    let per_client = r.client_workloads.div_ceil(plan.clients as u64);
    let total = r.client_workloads;
    let secs = placed(swarm, total, limit, "the clients' workloads", async {
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..plan.clients as u64 {
            let client = socket_client.clone();
            tasks.spawn(async move {
                for i in (c * per_client)..((c + 1) * per_client).min(total) {
                    workload_cmds::submit(&client, &spec(&format!("swarm-client-{i}"), 1)?).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.context("a client task failed")??;
        }
        Ok(())
    })
    .await?;
    r.placements_per_s_clients = total as f64 / secs;

    // Dead nodes.
    r.dead_nodes = one_percent(n);
    let mut dead: Vec<usize> = (0..n).collect();
    fastrand::shuffle(&mut dead);
    dead.truncate(r.dead_nodes);
    let held: u64 = dead.iter().filter_map(|&i| swarm.slots.get(i)).map(|s| s.running() as u64).sum();
    r.dead_allocs_replaced = held;
    say(&format!("silencing {} nodes holding {held} allocations…", r.dead_nodes));
    // Judged by name: other nodes going down or coming back at the same
    // time (a busy registration) must not move the count either way.
    let dead_names: std::collections::BTreeSet<String> =
        dead.iter().filter_map(|&i| swarm.slots.get(i)).map(|s| s.name.clone()).collect();
    let base_started = swarm.shared.started.load(Ordering::Relaxed);
    let t0 = Instant::now();
    swarm.set_alive(&dead, false);
    let mut down_at = None;
    let mut replaced_at = None;
    let deadline = t0 + limit;
    while down_at.is_none() || replaced_at.is_none() {
        if down_at.is_none() {
            let views: Vec<NodeView> = admin.get("/v1/nodes").await.unwrap_or_default();
            if super::report::all_down(&views, &dead_names) {
                down_at = Some(t0.elapsed());
            }
        }
        if replaced_at.is_none() && swarm.shared.started.load(Ordering::Relaxed) - base_started >= held {
            replaced_at = Some(t0.elapsed());
        }
        if Instant::now() > deadline {
            bail!("dead nodes: not all down and replaced after {limit:?} (down: {down_at:?}, replaced: {replaced_at:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (down, replaced) = (down_at.unwrap_or_default(), replaced_at.unwrap_or_default());
    r.dead_marked_down_s = down.as_secs_f64();
    r.detect_dead_s = down.max(replaced).as_secs_f64();
    say(&format!(
        "dead nodes down in {:.1} s, replaced by {:.1} s; bringing them back…",
        r.dead_marked_down_s, r.detect_dead_s
    ));
    swarm.set_alive(&dead, true);
    wait_for(limit, "the silenced nodes to register again", || async {
        (
            swarm.registered() >= n,
            format!("{}/{n}; {}", swarm.registered(), swarm.shared.link_failures.summary()),
        )
    })
    .await?;

    // Snapshot, then a wiped follower. The leader may have changed (an
    // election under load): ask again.
    let leader = cluster.wait_leader(limit).await?;
    let admin = cluster.client(leader)?;
    let metrics = admin.get_raw("/metrics").await?.1;
    let text = String::from_utf8_lossy(&metrics);
    r.snapshot_bytes = metric(&text, "gantry_raft_snapshot_size_bytes", "").unwrap_or(0.0) as u64;
    r.snapshot_build_s = metric(&text, "gantry_raft_snapshot_build_seconds", "").unwrap_or(0.0);
    r.snapshots_built = metric(&text, "gantry_raft_snapshots_built_total", "").unwrap_or(0.0) as u64;
    let follower = cluster.ids().find(|&id| id != leader);
    if let Some(follower) = follower {
        say(&format!("wiping coordinator {follower} and restarting it…"));
        cluster.kill(follower)?;
        let target = status(&admin).await?.commit_index.unwrap_or(0);
        let t0 = Instant::now();
        cluster.wipe_and_restart(follower)?;
        let client = cluster.client(follower)?;
        wait_for(limit, "the wiped follower to catch up", || async {
            let applied = client
                .get::<ClusterStatus>("/v1/status?local=true")
                .await
                .ok()
                .and_then(|s| s.last_applied)
                .unwrap_or(0);
            (applied >= target, format!("applied {applied} of {target}"))
        })
        .await?;
        r.wiped_follower_catch_up_s = t0.elapsed().as_secs_f64();
    }

    let rtt1 = swarm.shared.heartbeat_rtt.counts();
    r.heartbeat_rtt_p50_ms = RttHistogram::quantile_ms(&rtt0, &rtt1, 0.5);
    r.heartbeat_rtt_p99_ms = RttHistogram::quantile_ms(&rtt0, &rtt1, 0.99);
    r.heartbeat_failures = swarm.shared.heartbeat_failures.load(Ordering::Relaxed) - fail0;
    r.heartbeats_sent_late = swarm.shared.late_sends.load(Ordering::Relaxed) - late0;
    let downs =
        leader_metric(&admin, "gantry_node_status_changes_total", "{status=\"down\"}").await.unwrap_or(0.0);
    r.spurious_down_marks = (downs as u64).saturating_sub(r.dead_nodes as u64);

    // Failover, of the leader as of now.
    let leader = cluster.wait_leader(limit).await?;
    r.elections_before_failover = status(&cluster.client(leader)?).await?.term.saturating_sub(term0);
    let old = cluster.listen(leader)?;
    say(&format!("kill -9 of the leader (coordinator {leader})…"));
    let t0 = Instant::now();
    cluster.kill(leader)?;
    let new_leader = cluster.wait_leader(limit).await?;
    r.failover_election_s = t0.elapsed().as_secs_f64();
    let moved =
        || swarm.slots.iter().filter(|s| super::sim_node::registered_after(s, t0, Some(&old))).count();
    wait_for(limit, "every node to report to the new leader", || async {
        (moved() >= n, format!("{}/{n}", moved()))
    })
    .await?;
    r.failover_reporting_s = t0.elapsed().as_secs_f64();
    say(&format!("coordinator {new_leader} leads; every node on it after {:.1} s", r.failover_reporting_s));
    Ok(())
}

/// A workload of `replicas` one-GPU replicas that the load-test runtime "runs".
pub(super) fn spec(name: &str, replicas: u64) -> anyhow::Result<WorkloadSpec> {
    let text = format!(
        "name = \"{name}\"\ncommand = \"/bin/true\"\nreplicas = {replicas}\n\
         [resources]\ncpu = 0.1\nmemory_mib = 64\n[gpu]\nmode = \"exclusive\"\ncount = 1\n"
    );
    parse_workload_toml(&text).map_err(|e| anyhow::anyhow!("the bench's workload spec: {e}"))
}

/// Runs `submit`, then waits until the swarm was asked to run `count`
/// more allocations; returns the seconds from the start of `submit`.
pub(super) async fn placed(
    swarm: &Swarm,
    count: u64,
    limit: Duration,
    what: &str,
    submit: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<f64> {
    let base = swarm.shared.started.load(Ordering::Relaxed);
    let t0 = Instant::now();
    submit.await.with_context(|| format!("submitting {what}"))?;
    wait_for(limit.saturating_sub(t0.elapsed()), what, || async {
        let seen = swarm.shared.started.load(Ordering::Relaxed) - base;
        (seen >= count, format!("{seen}/{count} running"))
    })
    .await?;
    Ok(t0.elapsed().as_secs_f64().max(1e-6))
}

/// How often a long wait prints where it is (on stderr, like `say`).
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Polls `check` every 50 ms until it says done, or fails after `limit`
/// with its last progress line; prints that line every [`PROGRESS_EVERY`].
pub(super) async fn wait_for<F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, String)>,
{
    let start = Instant::now();
    let mut next_progress = PROGRESS_EVERY;
    loop {
        let (done, progress) = check().await;
        if done {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("waited {limit:?} for {what}: {progress}");
        }
        if start.elapsed() >= next_progress {
            eprintln!("  waiting {}s for {what}: {progress}", next_progress.as_secs());
            next_progress += PROGRESS_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(admin: &AdminClient) -> anyhow::Result<ClusterStatus> {
    admin.get("/v1/status").await
}

async fn leader_metric(admin: &AdminClient, name: &str, labels: &str) -> anyhow::Result<f64> {
    let (_, body) = admin.get_raw("/metrics").await?;
    metric(&String::from_utf8_lossy(&body), name, labels)
        .with_context(|| format!("no {name}{labels} in /metrics"))
}
