//! The `docker` runtime: a container of a local image on the host's Docker
//! engine, through bollard.
//!
//! - Image: must be on the host. When it is not, the runtime tries one pull
//!   and reports the engine's error (hosts without a registry fail here, and
//!   the message says the image is missing).
//! - Container `gantry-<alloc id>`, labelled `gantry.alloc`, `gantry.workload`
//!   and `gantry.node`; CPU and memory limits from the spec; each named port
//!   published as host port → container port; the environment of
//!   [`super::env`].
//! - GPUs ([`DockerGpu`]): a device request for the `nvidia` driver with the
//!   device UUIDs, CDI names `nvidia.com/gpu=<UUID>`, or only the
//!   environment variables. MPS clients also get the pipe directory mounted
//!   at the same path and the host's IPC namespace, which MPS needs.
//! - Confinement: never privileged, every capability dropped,
//!   `no-new-privileges`, a process limit; the user is the image's.
//! - Stop: `docker stop` with the grace period, then remove.
//! - Agent restarts: containers are found again by their labels.
//! - Logs: the engine's (stdout and stderr interleaved); gone once the
//!   container is removed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use gantry_common::workload::RuntimeSpec;

use super::{Handle, Launch, LogRequest, LogStream, Runtime, RuntimeError, Status};
use crate::config::DockerGpu;

pub const LABEL_ALLOC: &str = "gantry.alloc";
pub const LABEL_WORKLOAD: &str = "gantry.workload";
pub const LABEL_NODE: &str = "gantry.node";

/// Requests other than stop (whose limit follows the grace period).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct DockerRuntime {
    docker: Docker,
    gpu: DockerGpu,
}

impl DockerRuntime {
    /// Connects to the engine at `socket` and agrees on an API version (an
    /// older engine, e.g. 20.10, refuses a newer client's version).
    pub async fn connect(socket: &str, gpu: DockerGpu) -> Result<DockerRuntime, RuntimeError> {
        let docker =
            Docker::connect_with_unix(socket, REQUEST_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
                .map_err(|e| RuntimeError::Docker(format!("{socket}: {e}")))?;
        let docker =
            docker.negotiate_version().await.map_err(|e| RuntimeError::Docker(format!("{socket}: {e}")))?;
        Ok(DockerRuntime { docker, gpu })
    }

    /// The bollard client, for tests and tools.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// The container name of an allocation.
    pub fn container_name(alloc_id: &str) -> String {
        format!("gantry-{alloc_id}")
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(RuntimeError::Docker(format!("inspecting image {image:?}: {e}"))),
        }
        tracing::info!(image, "image not on this host: pulling");
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(item) = pull.next().await {
            item.map_err(|e| RuntimeError::Image { image: image.to_string(), reason: e.to_string() })?;
        }
        Ok(())
    }

    async fn start_now(&self, launch: &Launch) -> Result<Handle, RuntimeError> {
        let RuntimeSpec::Docker { image } = &launch.spec.runtime else {
            return Err(RuntimeError::WrongHandle("a process workload"));
        };
        self.ensure_image(image).await?;
        let name = Self::container_name(&launch.alloc_id);
        // A container of this name is left from an agent that died between
        // creating it and recording it: it never became this allocation's.
        self.remove(&name).await?;
        let body = container_body(launch, image, self.gpu);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| RuntimeError::Docker(format!("creating container {name}: {e}")))?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(RuntimeError::Docker(format!("starting container {name}: {e}")));
        }
        Ok(Handle::Docker { container: created.id })
    }

    async fn status_now(&self, id: &str) -> Result<Status, RuntimeError> {
        let info = match self.docker.inspect_container(id, None).await {
            Ok(i) => i,
            Err(e) if not_found(&e) => {
                return Ok(Status::Exited { code: None, message: "container is gone".into() })
            }
            Err(e) => return Err(RuntimeError::Docker(format!("inspecting container {id}: {e}"))),
        };
        let state = info.state.unwrap_or_default();
        if state.running == Some(true) {
            return Ok(Status::Running);
        }
        let code = state.exit_code.unwrap_or(-1);
        let mut message = format!("exit code {code}");
        if state.oom_killed == Some(true) {
            message = format!("killed: out of memory ({message})");
        }
        if let Some(err) = state.error.filter(|e| !e.is_empty()) {
            message = format!("{message}: {err}");
        }
        let code = i32::try_from(code).ok();
        Ok(Status::Exited { code, message })
    }

    async fn stop_now(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let secs = i32::try_from(grace.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX);
        let docker = self.docker.clone().with_timeout(grace + REQUEST_TIMEOUT);
        match docker.stop_container(id, Some(StopContainerOptionsBuilder::new().t(secs).build())).await {
            Ok(()) => {}
            Err(e) if not_found(&e) => return Ok(()),
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError { status_code: 304, .. }) => {}
            Err(e) => return Err(RuntimeError::Docker(format!("stopping container {id}: {e}"))),
        }
        self.remove(id).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(RuntimeError::Docker(format!("removing container {id}: {e}"))),
        }
    }

    async fn discover_now(&self, node: &str) -> Result<Vec<(String, Handle)>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_NODE}={node}")])]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| RuntimeError::Docker(format!("listing containers: {e}")))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let alloc = c.labels.as_ref()?.get(LABEL_ALLOC)?.clone();
                Some((alloc, Handle::Docker { container: c.id? }))
            })
            .collect())
    }

    async fn logs_now(&self, id: &str, request: LogRequest) -> Result<LogStream, RuntimeError> {
        // The engine cuts by lines, the request by bytes: ask for enough
        // lines, then cut to the bytes. Without a tail the whole log is what
        // was asked.
        let lines = request.tail.map_or("all".to_string(), |bytes| tail_lines(bytes).to_string());
        let options =
            LogsOptionsBuilder::new().follow(request.follow).stdout(true).stderr(true).tail(&lines).build();
        let owned = id.to_string();
        let stream = self.docker.logs(id, Some(options)).map(move |item| match item {
            Ok(out) => Ok(out.into_bytes()),
            Err(e) if not_found(&e) => {
                Err(std::io::Error::other(format!("container {owned} is gone, and its logs with it")))
            }
            Err(e) => Err(std::io::Error::other(format!("reading logs of {owned}: {e}"))),
        });
        if request.follow {
            return Ok(Box::pin(stream));
        }
        let mut head = Vec::new();
        let mut stream = Box::pin(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(bytes) => head.extend_from_slice(&bytes),
                Err(e) => return Err(RuntimeError::Docker(e.to_string())),
            }
        }
        let from =
            request.tail.map_or(0, |t| head.len().saturating_sub(usize::try_from(t).unwrap_or(usize::MAX)));
        let bytes = Bytes::copy_from_slice(&head[from..]);
        Ok(Box::pin(futures::stream::once(async move { Ok(bytes) })))
    }
}

/// Lines to ask the engine for so that `bytes` of output are (nearly
/// always) among them: lines of 16 bytes or more; at most 100,000.
pub fn tail_lines(bytes: u64) -> u64 {
    bytes.div_ceil(16).clamp(1, 100_000)
}

impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn start<'a>(&'a self, launch: &'a Launch) -> BoxFuture<'a, Result<Handle, RuntimeError>> {
        self.start_now(launch).boxed()
    }

    fn status<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<Status, RuntimeError>> {
        async move {
            match handle {
                Handle::Docker { container } => self.status_now(container).await,
                Handle::Process { .. } => Err(RuntimeError::WrongHandle("a process")),
            }
        }
        .boxed()
    }

    fn stop<'a>(&'a self, handle: &'a Handle, grace: Duration) -> BoxFuture<'a, Result<(), RuntimeError>> {
        async move {
            match handle {
                Handle::Docker { container } => self.stop_now(container, grace).await,
                Handle::Process { .. } => Err(RuntimeError::WrongHandle("a process")),
            }
        }
        .boxed()
    }

    fn discover<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<(String, Handle)>, RuntimeError>> {
        self.discover_now(node).boxed()
    }

    fn logs<'a>(
        &'a self,
        handle: &'a Handle,
        _alloc_dir: PathBuf,
        request: LogRequest,
    ) -> BoxFuture<'a, Result<LogStream, RuntimeError>> {
        async move {
            match handle {
                Handle::Docker { container } => self.logs_now(container, request).await,
                Handle::Process { .. } => Err(RuntimeError::WrongHandle("a process")),
            }
        }
        .boxed()
    }
}

/// The create request of a launch (pure).
pub fn container_body(launch: &Launch, image: &str, gpu: DockerGpu) -> ContainerCreateBody {
    let spec = &launch.spec;
    let labels = HashMap::from([
        (LABEL_ALLOC.to_string(), launch.alloc_id.clone()),
        (LABEL_WORKLOAD.to_string(), spec.name.clone()),
        (LABEL_NODE.to_string(), launch.node.clone()),
    ]);
    let mut exposed = Vec::new();
    let mut bindings = HashMap::new();
    for p in &spec.ports {
        let Some(host) = launch.host_ports.get(&p.name) else { continue };
        let key = format!("{}/tcp", p.port);
        exposed.push(key.clone());
        bindings.insert(
            key,
            Some(vec![PortBinding { host_ip: Some("0.0.0.0".into()), host_port: Some(host.to_string()) }]),
        );
    }
    let device_requests = match gpu {
        _ if launch.devices.is_empty() => None,
        DockerGpu::DeviceRequest | DockerGpu::Auto => Some(vec![DeviceRequest {
            driver: Some("nvidia".into()),
            device_ids: Some(launch.devices.clone()),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }]),
        DockerGpu::Cdi => Some(vec![DeviceRequest {
            driver: Some("cdi".into()),
            device_ids: Some(launch.devices.iter().map(|d| format!("nvidia.com/gpu={d}")).collect()),
            ..Default::default()
        }]),
        DockerGpu::Env => None,
    };
    let (binds, ipc_mode) = match &launch.mps_pipe_dir {
        Some(dir) => (Some(vec![format!("{0}:{0}", dir.display())]), Some("host".to_string())),
        None => (None, None),
    };
    let host_config = HostConfig {
        port_bindings: Some(bindings),
        nano_cpus: (spec.cpu_milli > 0)
            .then(|| i64::try_from(spec.cpu_milli * 1_000_000).unwrap_or(i64::MAX)),
        memory: (spec.memory_mib > 0)
            .then(|| i64::try_from(spec.memory_mib * 1024 * 1024).unwrap_or(i64::MAX)),
        // Memory plus swap equal to memory: no swap beyond the limit (Docker's
        // default would allow as much swap again).
        memory_swap: (spec.memory_mib > 0)
            .then(|| i64::try_from(spec.memory_mib * 1024 * 1024).unwrap_or(i64::MAX)),
        device_requests,
        binds,
        ipc_mode,
        // Confined like a process workload: never privileged, no
        // capabilities, no privilege gain through setuid binaries, and a
        // bounded number of processes.
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".to_string()]),
        security_opt: Some(vec!["no-new-privileges:true".to_string()]),
        pids_limit: Some(i64::try_from(super::cgroup::PIDS_MAX).unwrap_or(4096)),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: Some(launch.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        exposed_ports: Some(exposed),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn not_found(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code: 404, .. })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use gantry_common::workload::{parse_workload_toml, PortSpec};

    use super::*;

    fn launch(devices: &[&str], mps: bool) -> Launch {
        let mut spec = parse_workload_toml(
            "name = \"llm\"\nimage = \"gantry-infer:dev\"\n[resources]\ncpu = 0.5\nmemory_mib = 256\n",
        )
        .unwrap();
        spec.ports = vec![PortSpec { name: "http".into(), port: 8080 }];
        Launch {
            alloc_id: "llm.0.1".into(),
            node: "gpu-01".into(),
            spec,
            env: BTreeMap::from([("A".to_string(), "1".to_string())]),
            host_ports: BTreeMap::from([("http".to_string(), 20_001)]),
            devices: devices.iter().map(|d| d.to_string()).collect(),
            mps_pipe_dir: mps.then(|| PathBuf::from("/d/mps/0/pipe")),
            alloc_dir: PathBuf::from("/d/allocs/llm.0.1"),
        }
    }

    #[test]
    fn body_carries_labels_limits_ports_and_env() {
        let b = container_body(&launch(&[], false), "gantry-infer:dev", DockerGpu::DeviceRequest);
        let labels = b.labels.unwrap();
        assert_eq!(labels[LABEL_ALLOC], "llm.0.1");
        assert_eq!(labels[LABEL_WORKLOAD], "llm");
        assert_eq!(labels[LABEL_NODE], "gpu-01");
        assert_eq!(b.env.unwrap(), ["A=1"]);
        assert_eq!(b.cmd, None);
        assert_eq!(b.exposed_ports.unwrap(), ["8080/tcp"]);
        let h = b.host_config.unwrap();
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.memory, Some(256 * 1024 * 1024));
        assert_eq!(h.memory_swap, h.memory, "no swap beyond the memory limit");
        let binding = &h.port_bindings.unwrap()["8080/tcp"];
        assert_eq!(binding.as_ref().unwrap()[0].host_port.as_deref(), Some("20001"));
        assert_eq!(h.device_requests, None, "no GPU, no device request");
        assert_eq!(h.ipc_mode, None);
        assert_eq!(h.privileged, Some(false));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges:true".to_string()]));
        assert_eq!(h.pids_limit, Some(4096));
    }

    #[test]
    fn a_byte_tail_asks_the_engine_for_enough_lines() {
        assert_eq!(tail_lines(0), 1);
        assert_eq!(tail_lines(4096), 256);
        assert_eq!(tail_lines(u64::MAX), 100_000);
    }

    #[test]
    fn gpu_modes() {
        let l = launch(&["GPU-a", "MIG-b"], false);
        let dr =
            container_body(&l, "i", DockerGpu::DeviceRequest).host_config.unwrap().device_requests.unwrap();
        assert_eq!(dr[0].driver.as_deref(), Some("nvidia"));
        assert_eq!(dr[0].device_ids.as_deref().unwrap(), ["GPU-a", "MIG-b"]);
        let cdi = container_body(&l, "i", DockerGpu::Cdi).host_config.unwrap().device_requests.unwrap();
        assert_eq!(cdi[0].driver.as_deref(), Some("cdi"));
        assert_eq!(cdi[0].device_ids.as_deref().unwrap(), ["nvidia.com/gpu=GPU-a", "nvidia.com/gpu=MIG-b"]);
        assert_eq!(container_body(&l, "i", DockerGpu::Env).host_config.unwrap().device_requests, None);
        let mps = container_body(&launch(&["GPU-a"], true), "i", DockerGpu::Env).host_config.unwrap();
        assert_eq!(mps.binds.unwrap(), ["/d/mps/0/pipe:/d/mps/0/pipe"]);
        assert_eq!(mps.ipc_mode.as_deref(), Some("host"));
    }
}
