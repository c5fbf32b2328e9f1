//! The docker runtime against the host's Docker engine, with the
//! `gantry-infer:dev` image. Skipped (with the reason printed) when no engine
//! answers at /var/run/docker.sock or the image is missing; build the image
//! with `bash inference/build-image.sh`.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{desired, wait_for, Running};
use futures::StreamExt;
use gantry_agent::config::DockerGpu;
use gantry_agent::gpu::sim::SimBackend;
use gantry_agent::gpu::Gpus;
use gantry_agent::runtime::docker::{DockerRuntime, LABEL_ALLOC, LABEL_NODE};
use gantry_agent::runtime::LogRequest;
use gantry_agent::workloads::link::DesiredSet;
use gantry_common::gpu_spec::parse_gpu_spec;
use gantry_common::model::GpuSharing;
use gantry_common::workload::{parse_workload_toml, ActualState, AllocGpu, DesiredState, HealthState};
use gantry_placement::GpuShare;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IMAGE: &str = "gantry-infer:dev";

async fn docker_or_skip() -> Option<Arc<DockerRuntime>> {
    let docker = match DockerRuntime::connect("/var/run/docker.sock", DockerGpu::Env).await {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED: no Docker engine: {e}");
            return None;
        }
    };
    if docker.client().inspect_image(IMAGE).await.is_err() {
        println!("SKIPPED: image {IMAGE} not on this host (build it with: bash inference/build-image.sh)");
        return None;
    }
    Some(Arc::new(docker))
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_runs_is_found_by_label_and_stops() {
    let Some(docker) = docker_or_skip().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let gpus = Gpus::new(
        Box::new(SimBackend::new("node-a", &parse_gpu_spec("2xL4-24GB").unwrap())),
        vec![GpuSharing::Exclusive, GpuSharing::Mps],
    );
    let uuid = gpus.inventory().unwrap()[1].uuid.clone();
    let spec = parse_workload_toml(&format!(
        "name = \"infer\"\nimage = \"{IMAGE}\"\nstop_grace_s = 2\n[resources]\ncpu = 0.5\nmemory_mib = 128\n\
         [[ports]]\nname = \"http\"\nport = 8080\n\
         [health]\npath = \"/health\"\nport = \"http\"\ninterval_s = 0.5\ntimeout_s = 0.5\n"
    ))
    .unwrap();
    // A unique id per run, so a leftover from an aborted run never collides.
    let id = format!("infer.0.{}", std::process::id());
    let share = GpuShare::Mps { compute_pct: 50, memory_mib: 4_000 };
    let alloc = desired(&id, spec, vec![AllocGpu { index: 1, uuid: uuid.clone(), share }], DesiredState::Run);

    let agent = Running::start(data, gpus.clone(), Some(docker.clone()), "43000-43999").await;
    agent.session.desired.send_replace(Some(DesiredSet { index: 1, allocs: vec![alloc.clone()] }));
    let r = agent.wait_report(&id, "healthy", |r| r.health == HealthState::Healthy).await;
    assert_eq!(r.actual, ActualState::Running);
    let port = r.ports["http"];
    let body = http_get(port, "/health").await.unwrap();
    assert!(body.contains(&format!("\"CUDA_VISIBLE_DEVICES\":\"{uuid}\"")), "{body}");
    assert!(body.contains("\"GANTRY_GPU_SHARE\":\"mps:50%:4000MiB\""), "{body}");

    // What the engine was told.
    let name = DockerRuntime::container_name(&id);
    let info = docker.client().inspect_container(&name, None).await.unwrap();
    let config = info.config.unwrap();
    let env = config.env.unwrap();
    let pipe = data.join("mps/1/pipe").display().to_string();
    for want in [
        format!("NVIDIA_VISIBLE_DEVICES={uuid}"),
        format!("CUDA_MPS_PIPE_DIRECTORY={pipe}"),
        "GANTRY_PORT_HTTP=8080".to_string(),
        format!("GANTRY_HOST_PORT_HTTP={port}"),
        format!("GANTRY_ALLOC_ID={id}"),
    ] {
        assert!(env.contains(&want), "missing {want} in {env:?}");
    }
    let labels = config.labels.unwrap();
    assert_eq!((labels[LABEL_ALLOC].as_str(), labels[LABEL_NODE].as_str()), (id.as_str(), "node-a"));
    let host = info.host_config.unwrap();
    assert_eq!(host.memory, Some(128 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.binds.unwrap(), [format!("{pipe}:{pipe}")]);
    assert_eq!(gpus.sample().unwrap()[1].mps_clients, Some(1));

    let mut logs = agent.logs.open(&id, LogRequest { follow: false, tail: None }).await.unwrap();
    let mut text = Vec::new();
    while let Some(chunk) = logs.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }

    // Lose the state file, restart the agent: the container is found by its
    // label and left running.
    let container = info.id.unwrap();
    agent.shutdown().await;
    std::fs::remove_file(data.join("allocs.json")).unwrap();
    let agent = Running::start(data, gpus.clone(), Some(docker.clone()), "43000-43999").await;
    agent.session.desired.send_replace(Some(DesiredSet { index: 1, allocs: vec![alloc.clone()] }));
    let r = agent.wait_report(&id, "running again", |r| r.actual == ActualState::Running).await;
    assert_eq!(r.restarts, 0);
    let again = docker.client().inspect_container(&name, None).await.unwrap();
    assert_eq!(again.id.unwrap(), container, "the same container, not a new one");
    assert_eq!(again.state.unwrap().running, Some(true));

    // Stop: the container is removed.
    let mut stop = alloc;
    stop.alloc.desired = DesiredState::Stop;
    agent.session.desired.send_replace(Some(DesiredSet { index: 2, allocs: vec![stop] }));
    agent.wait_report(&id, "stopped", |r| r.actual == ActualState::Stopped).await;
    let gone = docker.client().inspect_container(&name, None).await;
    assert!(gone.is_err(), "container still there: {gone:?}");
    wait_for("the MPS daemon to stop", Duration::from_secs(20), || {
        gpus.sample().unwrap()[1].mps_clients.is_none().then_some(())
    })
    .await;
    agent.shutdown().await;
    let _ = text;
}

#[tokio::test]
async fn a_missing_image_is_reported_clearly() {
    let docker = match DockerRuntime::connect("/var/run/docker.sock", DockerGpu::Env).await {
        Ok(d) => Arc::new(d),
        Err(e) => {
            println!("SKIPPED: no Docker engine: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let gpus = Gpus::new(Box::new(SimBackend::new("node-a", &[])), Vec::new());
    let spec = parse_workload_toml(
        "name = \"ghost\"\nimage = \"gantry-no-such-image:never\"\n[restart]\npolicy = \"never\"\n",
    )
    .unwrap();
    let id = format!("ghost.0.{}", std::process::id());
    let agent = Running::start(dir.path(), gpus, Some(docker), "44000-44999").await;
    agent.session.desired.send_replace(Some(DesiredSet {
        index: 1,
        allocs: vec![desired(&id, spec, Vec::new(), DesiredState::Run)],
    }));
    let r = agent.wait_report(&id, "failed", |r| r.actual == ActualState::Failed).await;
    assert!(
        r.message.contains("gantry-no-such-image:never") && r.message.contains("pulling it failed"),
        "{r:?}"
    );
    agent.shutdown().await;
}
