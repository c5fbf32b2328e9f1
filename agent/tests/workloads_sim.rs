//! The workload manager end to end on simulated GPUs with process workloads:
//! placement of GPU shares into the environment, MIG and MPS in the sim,
//! restarts by policy, logs over HTTP, and an agent restart that finds its
//! workloads again without restarting them.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{desired, pid_in_state, wait_for, workspace_bin, Running};
use gantry_agent::gpu::sim::SimBackend;
use gantry_agent::gpu::{GpuBackend, Gpus};
use gantry_agent::workloads::link::DesiredSet;
use gantry_common::gpu_spec::parse_gpu_spec;
use gantry_common::model::{GpuSharing, MigMode};
use gantry_common::workload::{
    parse_workload_toml, ActualState, AllocGpu, DesiredState, HealthState, RestartMode, WorkloadSpec,
};
use gantry_placement::GpuShare;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORTS: &str = "41000-41999";
const HEALTH_PORTS: &str = "42000-42999";

/// Two H100s: GPU 0 in MIG mode, GPU 1 shared with MPS (as after start-up).
fn sim_gpus() -> Gpus {
    let mut sim = SimBackend::new("node-a", &parse_gpu_spec("2xH100-80GB").unwrap());
    sim.set_mig_mode(0, MigMode::Enabled).unwrap();
    Gpus::new(Box::new(sim), vec![GpuSharing::Mig, GpuSharing::Mps])
}

fn sh(name: &str, script: &str, extra: &str) -> WorkloadSpec {
    let toml = format!(
        "name = \"{name}\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\nstop_grace_s = 5\n{extra}"
    );
    parse_workload_toml(&toml).unwrap()
}

fn gpu(gpus: &Gpus, index: u32, share: GpuShare) -> AllocGpu {
    AllocGpu { index, uuid: gpus.inventory().unwrap()[index as usize].uuid.clone(), share }
}

fn env_of(dir: &std::path::Path, id: &str) -> Option<String> {
    std::fs::read_to_string(dir.join("allocs").join(id).join("work").join("env.txt"))
        .ok()
        .filter(|e| e.contains("PATH="))
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_restarts_survives_an_agent_restart_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let gpus = sim_gpus();
    let gpu1 = gpus.inventory().unwrap()[1].uuid.clone();
    let keep = "env > env.txt; echo started; exec sleep 1000";
    let mut mps_spec = sh("mps", keep, "[[ports]]\nname = \"http\"\nport = 8080\n");
    mps_spec.restart.backoff_ms = 50;
    let mps = desired(
        "mps.0.1",
        mps_spec,
        vec![gpu(&gpus, 1, GpuShare::Mps { compute_pct: 25, memory_mib: 10_000 })],
        DesiredState::Run,
    );
    let mig = desired(
        "mig.0.1",
        sh("mig", keep, ""),
        vec![gpu(&gpus, 0, GpuShare::Mig { profile: "1g.10gb".into(), start: 0 })],
        DesiredState::Run,
    );
    let mut flappy_spec = sh("flappy", "exit 1", "");
    flappy_spec.restart.backoff_ms = 20;
    flappy_spec.restart.max_backoff_ms = 40;
    let flappy = desired("flappy.0.1", flappy_spec, Vec::new(), DesiredState::Run);
    let mut once_spec = sh("once", "echo bye >&2; exit 7", "");
    once_spec.restart.mode = RestartMode::Never;
    let once = desired("once.0.1", once_spec, Vec::new(), DesiredState::Run);

    let agent = Running::start(data, gpus.clone(), None, PORTS).await;
    agent.session.desired.send_replace(Some(DesiredSet {
        index: 1,
        allocs: vec![mps.clone(), mig.clone(), flappy.clone(), once.clone()],
    }));

    // MPS client: its GPU, its share, its port, the modelled daemon.
    let r = agent.wait_report("mps.0.1", "running", |r| r.actual == ActualState::Running).await;
    assert_eq!(r.devices, std::slice::from_ref(&gpu1));
    assert_eq!(r.health, HealthState::Unknown, "no health check: unknown");
    let port = r.ports["http"];
    assert!((41_000..=41_999).contains(&port), "{port}");
    let env = wait_for("the MPS client's env", Duration::from_secs(20), || env_of(data, "mps.0.1")).await;
    for line in [
        format!("CUDA_VISIBLE_DEVICES={gpu1}"),
        format!("NVIDIA_VISIBLE_DEVICES={gpu1}"),
        "GANTRY_GPU_SHARE=mps:25%:10000MiB".into(),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25".into(),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=10000M".into(),
        format!("CUDA_MPS_PIPE_DIRECTORY={}", data.join("mps/1/pipe").display()),
        format!("GANTRY_PORT_HTTP={port}"),
        format!("PORT={port}"),
        "GANTRY_ALLOC_ID=mps.0.1".into(),
        "GANTRY_WORKLOAD=mps".into(),
    ] {
        assert!(env.lines().any(|l| l == line), "missing {line} in\n{env}");
    }
    // MIG: a MIG device, created in the sim.
    let r = agent.wait_report("mig.0.1", "running", |r| r.actual == ActualState::Running).await;
    assert!(r.devices[0].starts_with("MIG-"), "{:?}", r.devices);
    let t = wait_for("telemetry to follow", Duration::from_secs(20), || {
        let t = gpus.sample().unwrap();
        (t[1].mps_clients == Some(1) && t[0].mig_instances == 1).then_some(t)
    })
    .await;
    assert_eq!(t[1].utilization_pct, 15, "0.6 x 25 %");
    assert_eq!(t[0].utilization_pct, 9, "60 % x 1/7");
    // Restart policies: always restarts with backoff; never fails with the exit code.
    agent.wait_report("flappy.0.1", "two restarts", |r| r.restarts >= 2).await;
    let r = agent.wait_report("once.0.1", "failed", |r| r.actual == ActualState::Failed).await;
    assert_eq!((r.message.as_str(), r.restarts), ("exit code 7", 0));

    // Logs, as the coordinator's requests read them (down the agent's QUIC link).
    let read = |id: &'static str, tail: Option<u64>| {
        let logs = agent.logs.clone();
        async move {
            use futures::StreamExt;
            let mut s = logs.open(id, gantry_agent::runtime::LogRequest { follow: false, tail }).await?;
            let mut out = Vec::new();
            while let Some(chunk) = s.next().await {
                out.extend_from_slice(&chunk.unwrap());
            }
            Ok::<_, gantry_agent::workloads::manager::LogsError>(String::from_utf8_lossy(&out).into_owned())
        }
    };
    assert!(read("once.0.1", None).await.unwrap().contains("bye"));
    assert!(read("mps.0.1", Some(8)).await.unwrap().contains("started"));
    let e = read("nope.0.1", None).await.unwrap_err().to_string();
    assert!(e.contains("no allocation \"nope.0.1\""), "{e}");
    // The agent's HTTP listener serves no logs at all: it has no authentication.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap().port();
    let (stop_http, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(gantry_agent::metrics::serve(
        listener,
        gantry_agent::sampler::AgentStatus::default(),
        stop_rx,
    ));
    let (code, _) = http_get(http, "/v1/allocs/once.0.1/logs?follow=false").await;
    assert_eq!(code, 404, "no log route on the unauthenticated listener");
    stop_http.send_replace(true);
    server.await.unwrap().unwrap();

    // The agent stops: workloads stay. A new agent (fresh sim, no coordinator
    // yet) finds them by the state file and restarts nothing.
    let pid = pid_in_state(data, "mps.0.1").unwrap();
    agent.shutdown().await;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let gpus = sim_gpus();
    let agent = Running::start(data, gpus.clone(), None, PORTS).await;
    let r = agent.wait_report("mps.0.1", "running again", |r| r.actual == ActualState::Running).await;
    assert_eq!((r.restarts, r.ports["http"]), (0, port));
    assert_eq!(pid_in_state(data, "mps.0.1"), Some(pid), "not restarted");
    // The fresh sim gets its MIG instance and MPS daemon back.
    wait_for("the new sim to follow", Duration::from_secs(20), || {
        let t = gpus.sample().unwrap();
        (t[1].mps_clients == Some(1) && t[0].mig_instances == 1).then_some(())
    })
    .await;

    // The coordinator answers: stop mps, and nothing else is assigned any more.
    let mut stop = mps.clone();
    stop.alloc.desired = DesiredState::Stop;
    stop.alloc.desired_reason = "workload stopped".into();
    agent.session.desired.send_replace(Some(DesiredSet { index: 2, allocs: vec![stop] }));
    let r = agent.wait_report("mps.0.1", "stopped", |r| r.actual == ActualState::Stopped).await;
    assert_eq!(r.message, "stopped: workload stopped");
    wait_for("the others to be forgotten", Duration::from_secs(20), || {
        (agent.session.reports.borrow().len() == 1).then_some(())
    })
    .await;
    assert!(!alive(pid), "the MPS client was stopped");
    wait_for("MPS daemon and MIG instance gone", Duration::from_secs(20), || {
        let t = gpus.sample().unwrap();
        (t[1].mps_clients.is_none() && t[0].mig_instances == 0 && t[1].utilization_pct == 0).then_some(())
    })
    .await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_drive_health_and_restarts() {
    let Some(infer) = workspace_bin("gantry-infer") else {
        println!("SKIPPED: gantry-infer is not built next to the tests (cargo build -p gantry-infer)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gpus = sim_gpus();
    let toml = format!(
        "name = \"infer\"\ncommand = {:?}\n[[ports]]\nname = \"http\"\nport = 8080\n\
         [health]\npath = \"/health\"\nport = \"http\"\ninterval_s = 0.2\ntimeout_s = 0.2\nfailures = 2\n",
        common::reachable_copy(&infer).display().to_string()
    );
    let good = desired("infer.0.1", parse_workload_toml(&toml).unwrap(), Vec::new(), DesiredState::Run);
    // The same server probed on a path it answers 404: unhealthy, then restarted.
    let mut bad = desired("infer.1.1", parse_workload_toml(&toml).unwrap(), Vec::new(), DesiredState::Run);
    if let Some(h) = std::sync::Arc::make_mut(&mut bad.spec).health.as_mut() {
        h.path = "/nope".into();
    }
    std::sync::Arc::make_mut(&mut bad.spec).restart.backoff_ms = 50;
    let agent = Running::start(dir.path(), gpus, None, HEALTH_PORTS).await;
    agent.session.desired.send_replace(Some(DesiredSet { index: 1, allocs: vec![good, bad] }));
    let r = agent.wait_report("infer.0.1", "healthy", |r| r.health == HealthState::Healthy).await;
    let (code, body) = http_get(r.ports["http"], "/health").await;
    assert_eq!(code, 200);
    assert!(body.contains("\"GANTRY_ALLOC_ID\":\"infer.0.1\""), "{body}");
    let r = agent.wait_report("infer.1.1", "restarted for health", |r| r.restarts >= 1).await;
    assert!(r.message.contains("unhealthy"), "{r:?}");
    agent.shutdown().await;
    let pids =
        [pid_in_state(dir.path(), "infer.0.1").unwrap(), pid_in_state(dir.path(), "infer.1.1").unwrap()];
    // A new agent told that nothing is assigned stops both servers.
    let agent = Running::start(dir.path(), sim_gpus(), None, HEALTH_PORTS).await;
    agent.session.desired.send_replace(Some(DesiredSet { index: 2, allocs: Vec::new() }));
    wait_for("both servers stopped", Duration::from_secs(30), || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    agent.shutdown().await;
}

#[test]
fn sim_backend_trait_object_is_usable() {
    // The sampler and the manager share one backend through Gpus.
    let gpus = sim_gpus();
    let id = gpus.with(|b: &mut dyn GpuBackend| b.open_mig(0, "7g.80gb", 0)).unwrap();
    assert!(id.starts_with("MIG-"));
    assert_eq!(gpus.inventory().unwrap()[0].sharing, GpuSharing::Mig);
    assert_eq!(gpus.inventory().unwrap()[1].sharing, GpuSharing::Mps);
}
