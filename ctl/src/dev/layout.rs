//! What `gantryctl dev` writes before it starts anything: certificates, one
//! config file per process, free loopback ports.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use gantry_common::identity::Role;
use gantry_common::tls::{self, TlsFiles};
use serde::Serialize;

use super::agents::AgentSetup;

/// One process of the dev cluster, as planned.
#[derive(Clone, Debug)]
pub struct ProcessPlan {
    pub role: Role,
    pub name: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub listen: String,
    pub admin_socket: Option<PathBuf>,
    /// TCP address of the process's `/metrics` (a Prometheus scrape target).
    pub metrics_listen: String,
}

/// Writes the PKI and every config under `dir`; returns the plan of
/// processes. `agents` holds each agent's setup; `docker_socket` is the
/// engine for docker workloads (empty: processes only).
pub fn prepare(
    dir: &Path,
    args: &super::DevArgs,
    agents: &[AgentSetup],
    docker_socket: &str,
) -> anyhow::Result<Vec<ProcessPlan>> {
    // Traversable, not listable: each process directory inside sets its own mode.
    private(dir, 0o711)?;
    let coordinators = args.coordinators;
    let pki = dir.join("pki");
    if pki.join("ca.pem").exists() {
        bail!("{} already holds a dev cluster; pass a fresh --dir or remove it", dir.display());
    }
    tls::init_ca(&pki, "gantry-dev").context("creating the cluster CA")?;
    let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    tls::issue(&pki, Role::Operator, "dev-operator", &[], 30).context("issuing the operator certificate")?;

    let ports: Vec<SocketAddr> = (0..coordinators).map(|_| free_udp()).collect::<anyhow::Result<_>>()?;
    let members: BTreeMap<u64, String> =
        ports.iter().enumerate().map(|(i, p)| (i as u64 + 1, p.to_string())).collect();
    let mut plan = Vec::new();
    for (i, listen) in ports.iter().enumerate() {
        let id = i as u64 + 1;
        let name = format!("coordinator-{id}");
        let home = dir.join(&name);
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        let files = tls::issue(&pki, Role::Coordinator, &name, &sans, 30)
            .context("issuing a coordinator certificate")?;
        let admin_socket = home.join("admin.sock");
        check_socket_path(&admin_socket)?;
        private(&home, 0o700)?;
        let metrics = free_tcp()?;
        let config = CoordinatorFile {
            id,
            listen: listen.to_string(),
            data_dir: home.join("data"),
            admin_socket: admin_socket.clone(),
            metrics_listen: metrics.to_string(),
            initial_members: members.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            node_down_after_secs: args.node_down_after_secs,
            tls: files,
        };
        let path = home.join("coordinator.toml");
        write_toml(&path, &config)?;
        plan.push(ProcessPlan {
            role: Role::Coordinator,
            name,
            config: path,
            log: home.join("log"),
            listen: listen.to_string(),
            admin_socket: Some(admin_socket),
            metrics_listen: metrics.to_string(),
        });
    }
    for (i, setup) in (1..).zip(agents) {
        let name = format!("node-{i}");
        let home = dir.join(&name);
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        let files = tls::issue(&pki, Role::Agent, &name, &[], 30).context("issuing an agent certificate")?;
        let metrics = free_tcp()?;
        let config = AgentFile {
            node_name: name.clone(),
            coordinators: members.values().cloned().collect(),
            data_dir: home.join("data"),
            telemetry_interval_ms: 1000,
            gpu_backend: if setup.gpus.is_some() { "sim" } else { "nvml" },
            sim_gpus: setup.gpus.clone(),
            metrics_listen: metrics.to_string(),
            labels: BTreeMap::from([("dev".to_string(), "true".to_string())]),
            gpu_sharing: super::agents::sharing_table(setup.sharing.as_deref()),
            port_range: format!("{}-{}", setup.ports.0, setup.ports.1),
            advertise_address: "127.0.0.1".to_string(),
            docker_socket: docker_socket.to_string(),
            workload_user: workload_user(),
            workload_uids: workload_uids(i),
            tls: files,
        };
        private(&home, 0o711)?;
        let path = home.join("agent.toml");
        write_toml(&path, &config)?;
        plan.push(ProcessPlan {
            role: Role::Agent,
            name,
            config: path,
            log: home.join("log"),
            listen: metrics.to_string(),
            admin_socket: None,
            metrics_listen: metrics.to_string(),
        });
    }
    Ok(plan)
}

#[derive(Serialize)]
struct CoordinatorFile {
    id: u64,
    listen: String,
    data_dir: PathBuf,
    admin_socket: PathBuf,
    metrics_listen: String,
    node_down_after_secs: u64,
    initial_members: BTreeMap<String, String>,
    tls: TlsFiles,
}

#[derive(Serialize)]
struct AgentFile {
    node_name: String,
    coordinators: Vec<String>,
    data_dir: PathBuf,
    telemetry_interval_ms: u64,
    gpu_backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sim_gpus: Option<String>,
    metrics_listen: String,
    labels: BTreeMap<String, String>,
    gpu_sharing: BTreeMap<String, String>,
    port_range: String,
    advertise_address: String,
    docker_socket: String,
    workload_user: String,
    workload_uids: String,
    tls: TlsFiles,
}

/// Who the dev agents run workloads as: `nobody` when gantryctl runs as
/// root (as an agent does in production), else the user running it (an
/// unprivileged agent cannot switch users).
/// Per-allocation uids need root (to switch to them); without it every
/// workload runs as the user running the dev cluster. Agents on one host
/// need ranges of their own, or replicas on two nodes would share a uid:
/// agent `i` (from 1) gets 10,000 uids from `1900000000 + (i - 1) * 10000`.
fn workload_uids(i: u32) -> String {
    if nix::unistd::geteuid().is_root() {
        let first = 1_900_000_000 + (i - 1) * 10_000;
        format!("{first}-{}", first + 9_999)
    } else {
        String::new()
    }
}

fn workload_user() -> String {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return "nobody".into();
    }
    nix::unistd::User::from_uid(uid).ok().flatten().map_or_else(|| "nobody".into(), |u| u.name)
}

/// Sets a process directory's mode: coordinators' are 0700 (the Raft log
/// holds every spec); agents' 0711, so workload users can reach their own
/// working directories inside without listing anything.
fn private(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("making {} private", dir.display()))
}

fn write_toml<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let text = toml::to_string_pretty(value).context("encoding a config")?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// A free loopback UDP port: bound, read, released. Another process could
/// take it in between; on loopback in a dev cluster that risk is accepted.
fn free_udp() -> anyhow::Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
    s.local_addr().context("reading a free UDP port")
}

fn free_tcp() -> anyhow::Result<SocketAddr> {
    let s = TcpListener::bind("127.0.0.1:0").context("finding a free TCP port")?;
    s.local_addr().context("reading a free TCP port")
}

/// Unix socket paths are limited to 107 bytes.
fn check_socket_path(path: &Path) -> anyhow::Result<()> {
    if path.as_os_str().len() > 100 {
        bail!("--dir {}: too long for a Unix socket path inside it; use a shorter directory", path.display());
    }
    Ok(())
}
