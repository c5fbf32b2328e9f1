//! Workloads end to end on a real cluster of processes: gantry-infer replicas
//! in exclusive, MPS and MIG modes under the `process` and `docker`
//! runtimes; an agent killed (its replicas move), drained (it empties),
//! restarted (nothing restarts); workloads stopped (nothing is left).
//!
//! The docker test needs a Docker engine and the `gantry-infer:dev` image
//! (`inference/build-image.sh`). Without them it is skipped, unless
//! `GANTRY_REQUIRE_DOCKER=1` (set by `.ci/run`) makes that a failure.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use gantry_common::api::AllocView;
use gantry_tests::workloads::*;
use gantry_tests::{serial, wait_for, DevCluster, DevOptions, ProcessEntry};

const LONG: Duration = Duration::from_secs(120);

const EXCLUSIVE: &str = "mode = \"exclusive\"";
const MPS: &str = "mode = \"mps\"\ncompute_pct = 25\nmemory_mib = 10000";
const MIG: &str = "mode = \"mig\"\nprofile = \"1g.10gb\"";

fn cluster(runtime: &'static str, agents: u32) -> anyhow::Result<DevCluster> {
    DevCluster::start(DevOptions {
        agents,
        agent_gpus: vec!["4xH100-80GB", "4xA100-40GB"].into_iter().take(agents as usize).collect(),
        gpu_sharing: vec!["0=mig,1=mps"; agents as usize],
        runtime,
        node_down_after_secs: 3,
        ..Default::default()
    })
}

fn socket(c: &DevCluster) -> PathBuf {
    c.coordinators()[0].admin_socket.clone().unwrap()
}

fn agent(c: &DevCluster, node: &str) -> ProcessEntry {
    c.agents().into_iter().find(|a| a.name.ends_with(node) || a.name == node).unwrap()
}

/// Everything a replica reports about itself matches its allocation.
fn check_replica(a: &AllocView, runtime: &str) {
    let endpoint = a.endpoint.as_deref().unwrap_or_else(|| panic!("{} has no endpoint", a.id));
    let h = health(endpoint).unwrap();
    let gpu = &h["gpu"];
    assert_eq!(gpu["GANTRY_ALLOC_ID"], a.id.as_str(), "{endpoint} is not {}", a.id);
    assert!(!a.devices.is_empty(), "{} reported no devices", a.id);
    assert_eq!(gpu["CUDA_VISIBLE_DEVICES"], a.devices.join(",").as_str(), "{}", a.id);
    assert_eq!(gpu["NVIDIA_VISIBLE_DEVICES"], a.devices.join(",").as_str(), "{}", a.id);
    let share = &a.gpus[0];
    if share.starts_with("MPS") {
        assert_eq!(gpu["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25", "{}", a.id);
        assert!(gpu["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"].as_str().unwrap().contains("10000M"), "{h}");
        assert!(gpu["CUDA_MPS_PIPE_DIRECTORY"].as_str().is_some(), "{h}");
    } else if share.starts_with("MIG") {
        assert!(a.devices[0].starts_with("MIG-"), "{:?}", a.devices);
    } else {
        assert!(a.devices[0].starts_with("GPU-"), "{:?}", a.devices);
    }
    let out = infer(endpoint).unwrap();
    assert!(out["argmax"].as_array().is_some_and(|v| v.len() == 1), "{out}");
    if runtime == "docker" {
        let ids = containers_of(&a.id);
        assert_eq!(ids.len(), 1, "{}: containers {ids:?}", a.id);
        let env = container_env(&ids[0]).unwrap();
        let want = format!("CUDA_VISIBLE_DEVICES={}", a.devices.join(","));
        assert!(env.contains(&want), "{}: docker inspect env {env:?} lacks {want}", a.id);
    }
}

/// No process or container of `id` is left on the host.
fn gone(id: &str) -> bool {
    processes_of(id).is_empty() && containers_of(id).is_empty()
}

fn full_flow(runtime: &'static str) -> anyhow::Result<()> {
    let mut c = cluster(runtime, 2)?;
    let s = socket(&c);
    let specs = [
        ("excl", 2usize, infer_workload("excl", runtime, 2, EXCLUSIVE)),
        ("mps", 4, infer_workload("mps", runtime, 4, MPS)),
        ("mig", 1, infer_workload("mig", runtime, 1, MIG)),
    ];
    for (name, n, spec) in &specs {
        let out = run(&s, spec, true)?;
        assert_eq!(out["allocs"].as_array().map(Vec::len), Some(*n), "{name}: {out}");
        assert!(out["placed_s"].as_f64().is_some() && out["healthy_s"].as_f64().is_some(), "{out}");
    }
    let mut first_ids = BTreeSet::new();
    for (name, n, _) in &specs {
        for a in wait_healthy(&s, name, *n, None, LONG)? {
            check_replica(&a, runtime);
            first_ids.insert(a.id.clone());
        }
    }
    // Each replica's output, asked of another coordinator than the one that took the submissions.
    let follower = c.coordinators().into_iter().filter_map(|p| p.admin_socket).find(|p| *p != s).unwrap();
    for id in &first_ids {
        let out: serde_json::Value = c.ctl(&follower, &["logs", id])?;
        assert!(out["logs"].as_str().is_some_and(|l| l.contains("listening on")), "{id} ({runtime}): {out}");
    }
    // No GPU handed out twice (whole GPUs), per the committed state.
    let all = allocs(&s, None)?;
    let mut whole = BTreeSet::new();
    for a in all.iter().filter(|a| a.gpus.iter().all(|g| g.starts_with("GPU"))) {
        assert!(whole.insert((a.node.clone(), a.gpus.clone())), "double-booked: {a:?}");
    }

    // Kill -9 the agent of the busier node: it goes down, its replicas move to the other.
    let on = |node: &str| all.iter().filter(|a| a.node == node).count();
    let (busy, other) =
        if on("node-1") >= on("node-2") { ("node-1", "node-2") } else { ("node-2", "node-1") };
    let victim = agent(&c, busy);
    let lost: Vec<String> = all.iter().filter(|a| a.node == busy).map(|a| a.id.clone()).collect();
    assert!(!lost.is_empty(), "nothing ran on {busy}: {all:#?}");
    c.kill9(&victim)?;
    for (name, n, _) in &specs {
        for a in wait_healthy(&s, name, *n, Some(other), LONG)? {
            check_replica(&a, runtime);
        }
    }
    let after = allocs(&s, None)?;
    for id in &lost {
        let a = after.iter().find(|a| &a.id == id).unwrap();
        assert_eq!((a.desired.as_str(), a.actual.as_str()), ("stop", "lost"), "{a:?}");
    }
    // The agent comes back: what it left running is not desired any more and stops.
    c.restart(&victim)?;
    wait_for(LONG, || lost.iter().all(|id| gone(id)).then_some(()))
        .map_err(|e| anyhow::anyhow!("replicas of the killed agent still run: {e}"))?;

    // Drain the other node: everything moves back and it empties.
    set_drain(&s, other, true)?;
    for (name, n, _) in &specs {
        for a in wait_healthy(&s, name, *n, Some(busy), LONG)? {
            check_replica(&a, runtime);
        }
    }
    wait_for(LONG, || {
        let a = allocs(&s, None).ok()?;
        a.iter()
            .all(|a| a.node != other || matches!(a.actual.as_str(), "stopped" | "lost" | "failed"))
            .then_some(())
    })?;
    set_drain(&s, other, false)?;

    // Stopping the workloads removes every replica from the host.
    let ids: Vec<String> = allocs(&s, None)?.into_iter().map(|a| a.id).collect();
    for (name, _, _) in &specs {
        stop(&s, name, LONG)?;
    }
    wait_for(LONG, || ids.iter().all(|id| gone(id)).then_some(()))
        .map_err(|e| anyhow::anyhow!("replicas left after stop: {e}"))?;
    assert!(allocs(&s, None)?.is_empty());
    Ok(())
}

#[test]
fn process_runtime_end_to_end() -> anyhow::Result<()> {
    let _serial = serial();
    full_flow("process")
}

#[test]
fn docker_runtime_end_to_end() -> anyhow::Result<()> {
    let _serial = serial();
    if let Err(why) = docker_ready() {
        if std::env::var("GANTRY_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
            anyhow::bail!("GANTRY_REQUIRE_DOCKER=1 but Docker is not usable: {why}");
        }
        eprintln!("skipped: {why}");
        return Ok(());
    }
    full_flow("docker")
}

/// An agent restart (SIGTERM as systemd does, then kill -9) leaves its
/// workloads running: same allocation, same process, no restart counted.
#[test]
fn agent_restart_does_not_restart_workloads() -> anyhow::Result<()> {
    let _serial = serial();
    let mut c = DevCluster::start(DevOptions {
        agents: 1,
        agent_gpus: vec!["2xH100-80GB"],
        node_down_after_secs: 30,
        ..Default::default()
    })?;
    let s = socket(&c);
    run(&s, &infer_workload("keep", "process", 1, EXCLUSIVE), true)?;
    let before = wait_healthy(&s, "keep", 1, None, LONG)?.remove(0);
    let started = health(before.endpoint.as_deref().unwrap())?["started_unix_ms"].as_u64().unwrap();
    let pids = processes_of(&before.id);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let a = agent(&c, "node-1");
    for how in ["term", "kill"] {
        if how == "term" {
            let pid = nix::unistd::Pid::from_raw(c.pid(&a) as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
            wait_for(Duration::from_secs(20), || nix::sys::signal::kill(pid, None).is_err().then_some(()))?;
        } else {
            c.kill9(&a)?;
        }
        // While the agent is away the workload keeps serving.
        health(before.endpoint.as_deref().unwrap())?;
        let following = c.log_count(&a, "following the coordinator's desired set");
        c.restart(&a)?;
        // The restarted agent has the coordinator's set again, so its
        // reconciler has judged the replica on it...
        wait_for(LONG, || {
            (c.log_count(&a, "following the coordinator's desired set") > following).then_some(())
        })?;
        // ...and over a few of its ticks (250 ms) it must not touch it: an
        // observation window, not a wait for something.
        std::thread::sleep(Duration::from_secs(1));
        let now = wait_healthy(&s, "keep", 1, None, LONG)?.remove(0);
        assert_eq!(now.id, before.id, "after {how}: the allocation was replaced");
        assert_eq!(now.restarts, 0, "after {how}: {now:?}");
        assert_eq!(processes_of(&now.id), pids, "after {how}: the process changed");
        let h = health(now.endpoint.as_deref().unwrap())?;
        assert_eq!(h["started_unix_ms"].as_u64(), Some(started), "after {how}: the server restarted");
    }
    stop(&s, "keep", LONG)?;
    wait_for(LONG, || gone(&before.id).then_some(()))?;
    Ok(())
}
