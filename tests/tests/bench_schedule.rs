//! Scheduling throughput benchmark (ignored by default; run on release binaries):
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo test --release -p gantry-tests --test bench_schedule -- --ignored --nocapture
//! ```
//!
//! A 3-coordinator cluster with 2 agents of 8 simulated H100s in `shared`
//! mode (81 x 1000 MiB tenants each). One workload of 1,000 replicas is
//! submitted at once; measured are the time until every replica has a
//! committed placement (placements/s through Raft), and until all run (the
//! agents starting 1,000 processes). The leader's log gives the split of
//! each plan into planning and Raft commit. Nothing about time is asserted.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use gantry_common::api::WorkloadDetail;
use gantry_tests::http::{admin, admin_get};
use gantry_tests::{ctl, serial, wait_for, DevCluster, DevOptions};

const REPLICAS: u32 = 1000;
const RUNS: usize = 5;

/// 3 coordinators and 2 agents of 8 H100s in `shared` mode (1,296 slots of
/// 1000 MiB); returns the cluster and its leader.
fn shared_gpu_cluster() -> anyhow::Result<(DevCluster, gantry_tests::ProcessEntry)> {
    let c = DevCluster::start(DevOptions {
        gpus: "8xH100-80GB",
        gpu_sharing: vec!["0-7=shared"],
        node_down_after_secs: 30,
        ..Default::default()
    })?;
    let leader = wait_for(Duration::from_secs(30), || {
        let s: gantry_common::api::ClusterStatus =
            ctl(c.coordinators()[0].admin_socket.as_ref()?, &["status"]).ok()?;
        s.leader
    })?;
    let entry = c.coordinator(leader)?;
    Ok((c, entry))
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored on release binaries"]
fn placements_per_second_through_raft() -> anyhow::Result<()> {
    let _serial = serial();
    let (_cluster, entry) = shared_gpu_cluster()?;
    let socket = entry.admin_socket.clone().unwrap();
    let spec = serde_json::to_string(&gantry_common::workload::parse_workload_toml(&format!(
        "name = \"bench\"\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\nreplicas = {REPLICAS}\nstop_grace_s = 1\n\
         [gpu]\nmode = \"shared\"\nmemory_mib = 1000\n"
    ))?)?;
    let mut placed_s = Vec::new();
    let mut running_s = Vec::new();
    for run in 0..RUNS {
        let log_before = std::fs::read_to_string(&entry.log).unwrap_or_default().len();
        let t0 = Instant::now();
        let (status, body) = admin(&socket, "POST", "/v1/workloads", Some(&spec))?;
        assert_eq!(status, 200, "{body}");
        let t_ack = t0.elapsed();
        // Polled every 2 ms (not with `wait_for`'s 50 ms) so the figure is not the poll's.
        loop {
            if let Ok(w) = admin_get::<WorkloadDetail>(&socket, "/v1/workloads/bench") {
                if w.view.pending == 0 && w.view.pending_reason.is_none() {
                    break;
                }
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "not placed within 60 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        let t_placed = t0.elapsed();
        wait_for(Duration::from_secs(300), || {
            let w: WorkloadDetail = admin_get(&socket, "/v1/workloads/bench").ok()?;
            (w.view.running == REPLICAS).then_some(())
        })?;
        let t_running = t0.elapsed();
        let log = std::fs::read_to_string(&entry.log).unwrap_or_default();
        let plans: Vec<&str> =
            log.get(log_before..).unwrap_or("").lines().filter(|l| l.contains("plan committed")).collect();
        println!(
            "run {run}: acknowledged {t_ack:?}, {REPLICAS} placed {t_placed:?} ({:.0}/s), all running {t_running:?}",
            f64::from(REPLICAS) / t_placed.as_secs_f64()
        );
        for p in plans.iter().take(4) {
            println!("  {}", p.split("plan committed").next().unwrap_or(p).trim_end());
            println!("    {}", p.rsplit("plan committed").next().unwrap_or("").trim());
        }
        placed_s.push(t_placed.as_secs_f64());
        running_s.push(t_running.as_secs_f64());
        let (status, body) = admin(&socket, "DELETE", "/v1/workloads/bench", None)?;
        assert_eq!(status, 200, "{body}");
        wait_for(Duration::from_secs(300), || {
            let (status, _) = admin(&socket, "GET", "/v1/workloads/bench", None).ok()?;
            (status == 404).then_some(())
        })?;
    }
    placed_s.sort_by(f64::total_cmp);
    running_s.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v[v.len() / 2];
    println!(
        "median over {RUNS}: placed {:.3} s = {:.0} placements/s; all running {:.2} s",
        median(&placed_s),
        f64::from(REPLICAS) / median(&placed_s),
        median(&running_s)
    );
    Ok(())
}

/// Time from `gantryctl run --wait` to every replica healthy, split into
/// placement (submitted, planned and committed through Raft, as the client
/// sees it) and runtime start (process or container started, first health
/// check passed), for each runtime; 5 runs of 2 exclusive replicas each.
#[test]
#[ignore = "benchmark: run explicitly with --ignored on release binaries"]
fn run_to_healthy() -> anyhow::Result<()> {
    let _serial = serial();
    let mut runtimes = vec!["process"];
    match gantry_tests::workloads::docker_ready() {
        Ok(()) => runtimes.push("docker"),
        Err(why) => println!("docker skipped: {why}"),
    }
    for runtime in runtimes {
        let c = DevCluster::start(DevOptions {
            gpus: "4xH100-80GB",
            runtime,
            node_down_after_secs: 30,
            ..Default::default()
        })?;
        let socket = c.coordinators()[0].admin_socket.clone().unwrap();
        let mut placed = Vec::new();
        let mut healthy = Vec::new();
        for run in 0..RUNS {
            let name = format!("rt{run}");
            let spec = gantry_tests::workloads::infer_workload(&name, runtime, 2, "mode = \"exclusive\"");
            let out = gantry_tests::workloads::run(&socket, &spec, true)?;
            let (p, h) = (out["placed_s"].as_f64().unwrap(), out["healthy_s"].as_f64().unwrap());
            println!("{runtime} run {run}: placed after {p:.3} s, healthy after {h:.3} s");
            placed.push(p);
            healthy.push(h);
            gantry_tests::workloads::stop(&socket, &name, Duration::from_secs(60))?;
        }
        placed.sort_by(f64::total_cmp);
        healthy.sort_by(f64::total_cmp);
        let (p, h) = (placed[RUNS / 2], healthy[RUNS / 2]);
        println!(
            "{runtime} median of {RUNS}: placed {p:.3} s, healthy {h:.3} s (runtime start {:.3} s)",
            h - p
        );
    }
    Ok(())
}

/// 1,000 single-replica workloads submitted by 8 clients at once: each
/// submission is its own Raft entry, and the applier batches whatever is
/// pending into each round's plan.
#[test]
#[ignore = "benchmark: run explicitly with --ignored on release binaries"]
fn many_small_workloads_at_once() -> anyhow::Result<()> {
    for agents_paused in [false, true] {
        many_small_workloads(agents_paused)?;
    }
    Ok(())
}

/// With `agents_paused`, the agents are stopped (SIGSTOP) during the burst,
/// so on this 2-core machine the coordinators do not share the CPU with
/// 1,000 process starts: that measures the control plane alone.
fn many_small_workloads(agents_paused: bool) -> anyhow::Result<()> {
    const CLIENTS: usize = 8;
    const WORKLOADS: usize = 1000;
    let _serial = serial();
    let (c, entry) = shared_gpu_cluster()?;
    let socket = entry.admin_socket.clone().unwrap();
    let log_before = std::fs::read_to_string(&entry.log).unwrap_or_default().len();
    let signal_agents = |signal: nix::sys::signal::Signal| -> anyhow::Result<()> {
        for a in c.agents() {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.pid(&a) as i32), signal)?;
        }
        Ok(())
    };
    if agents_paused {
        signal_agents(nix::sys::signal::Signal::SIGSTOP)?;
    }
    let t0 = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let socket = socket.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                for i in (client..WORKLOADS).step_by(CLIENTS) {
                    let spec =
                        serde_json::to_string(&gantry_common::workload::parse_workload_toml(&format!(
                            "name = \"s{i}\"\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\nstop_grace_s = 1\n\
                         [gpu]\nmode = \"shared\"\nmemory_mib = 1000\n"
                        ))?)?;
                    let (status, body) = admin(&socket, "POST", "/v1/workloads", Some(&spec))?;
                    anyhow::ensure!(status == 200, "{body}");
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    let t_submitted = t0.elapsed();
    loop {
        let views: Vec<gantry_common::api::WorkloadView> = admin_get(&socket, "/v1/workloads")?;
        if views.len() == WORKLOADS && views.iter().all(|w| w.pending == 0) {
            break;
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(120), "not placed within 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let t_placed = t0.elapsed();
    if agents_paused {
        signal_agents(nix::sys::signal::Signal::SIGCONT)?;
    }
    let log = std::fs::read_to_string(&entry.log).unwrap_or_default();
    let plans = log.get(log_before..).unwrap_or("").lines().filter(|l| l.contains("plan committed")).count();
    println!(
        "agents {}: {WORKLOADS} workloads from {CLIENTS} clients: all acknowledged",
        if agents_paused { "paused" } else { "running" }
    );
    println!(
        "  all acknowledged after {t_submitted:?} ({:.0} submissions/s), \
         all placed after {t_placed:?} ({:.0} placements/s) in {plans} plans",
        WORKLOADS as f64 / t_submitted.as_secs_f64(),
        WORKLOADS as f64 / t_placed.as_secs_f64(),
    );
    Ok(())
}
