//! Three (or one, or five) etcd members on loopback, the peer `bench
//! writes` measures against: Debian's `etcd-server` (3.4), each with its
//! own data directory under the run's, on ports the OS picked.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

pub struct Etcd {
    /// Client addresses, one per member (`/v3/kv/put` answers on them).
    pub clients: Vec<SocketAddr>,
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

/// A loopback port nobody listens on now (closed again at once; the member
/// binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(l.local_addr().context("finding a free port")?.port())
}

/// `--initial-cluster`: `e1=http://127.0.0.1:P1,...`.
pub fn initial_cluster(peers: &[SocketAddr]) -> String {
    peers.iter().enumerate().map(|(i, p)| format!("e{}=http://{p}", i + 1)).collect::<Vec<_>>().join(",")
}

impl Etcd {
    /// Starts `members` members of a new cluster in `dir`, and waits until
    /// each answers `/health` (up to 60 s).
    pub async fn start(etcd: &Path, dir: &Path, members: usize) -> anyhow::Result<Etcd> {
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..members {
            peers.push(SocketAddr::from(([127, 0, 0, 1], free_port()?)));
            clients.push(SocketAddr::from(([127, 0, 0, 1], free_port()?)));
        }
        let cluster = initial_cluster(&peers);
        let mut e = Etcd { clients: clients.clone(), children: Vec::new(), logs: Vec::new() };
        for (i, (peer, client)) in peers.iter().zip(&clients).enumerate() {
            let name = format!("e{}", i + 1);
            let data = dir.join(&name);
            std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
            let log = dir.join(format!("{name}.log"));
            let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let err = out.try_clone().context("opening the etcd log")?;
            let child = Command::new(etcd)
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(data.join("data"))
                .arg("--listen-peer-urls")
                .arg(format!("http://{peer}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://{peer}"))
                .arg("--listen-client-urls")
                .arg(format!("http://{client}"))
                .arg("--advertise-client-urls")
                .arg(format!("http://{client}"))
                .arg("--initial-cluster")
                .arg(&cluster)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg("gantry-bench")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .with_context(|| format!("starting {} (Debian's etcd-server)", etcd.display()))?;
            e.children.push(child);
            e.logs.push(log);
        }
        e.wait_healthy(Duration::from_secs(60)).await?;
        Ok(e)
    }

    async fn wait_healthy(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        for (i, addr) in self.clients.clone().iter().enumerate() {
            loop {
                if let Some(Ok(Some(status))) = self.children.get_mut(i).map(Child::try_wait) {
                    bail!("etcd member e{} exited ({status}); its log is {}", i + 1, self.log(i));
                }
                if healthy(*addr).await {
                    break;
                }
                if start.elapsed() > limit {
                    bail!("etcd member e{} not healthy after {limit:?}; its log is {}", i + 1, self.log(i));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The member's log, named and with its last lines (the run's
    /// directory may be a temporary one, gone when the bench exits).
    fn log(&self, i: usize) -> String {
        match self.logs.get(i) {
            Some(p) => format!("{}, ending with:\n{}", p.display(), crate::dev::processes::tail(p, 10)),
            None => String::new(),
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Kills the members (also done when dropped: a start that fails half
    /// way leaves no member running).
    pub fn stop(self) {}
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut conn) = super::writes::Conn::open(&super::writes::Endpoint::Tcp(addr)).await else {
        return false;
    };
    matches!(conn.call(hyper::Method::GET, "/health", None).await, Ok((status, body))
        if status.is_success() && body.windows(6).any(|w| w == b"\"true\""))
}

/// The body of etcd's JSON gateway `POST /v3/kv/put`: key and value in base64.
pub fn put_body(key: &str, value: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(r#"{{"key":"{}","value":"{}"}}"#, b64.encode(key), b64.encode(value)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_body_is_etcds_json_with_base64() {
        assert_eq!(put_body("bench-1", b"7"), br#"{"key":"YmVuY2gtMQ==","value":"Nw=="}"#.to_vec());
    }

    #[test]
    fn the_initial_cluster_names_every_member() {
        let peers = [SocketAddr::from(([127, 0, 0, 1], 1)), SocketAddr::from(([127, 0, 0, 1], 2))];
        assert_eq!(initial_cluster(&peers), "e1=http://127.0.0.1:1,e2=http://127.0.0.1:2");
    }
}
