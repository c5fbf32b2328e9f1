//! Connections from this coordinator to the others.
//!
//! Each peer address gets one connector task that owns the connection: it
//! connects, publishes the connection on a watch channel, waits for it to
//! close, and connects again with backoff. Callers only wait (bounded by
//! their own timeout) for a live connection. This matters because openraft
//! cancels an RPC at its TTL (100 ms for heartbeats): a handshake tied to
//! the RPC's future would be cancelled with it and might never finish.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_common::identity::ALPN_RAFT;
use gantry_common::rpc::{self, RpcError};
use gantry_common::tls::{self, Identity, COORDINATOR_SERVER_NAME};
use tokio::sync::watch;
use tracing::debug;

use super::messages::{PeerRequest, PeerResponse};
use super::PEER_MAX_FRAME;

const SOFTWARE: &str = concat!("gantry-coordinator ", env!("CARGO_PKG_VERSION"));
/// One connection attempt, handshake and hello included. Short, and retried
/// soon: an attempt started while the peer was down only succeeds on a
/// retransmitted Initial packet, so a restarted peer is reached sooner by a
/// fresh attempt than by waiting one out (it must hear from the leader
/// within `rejoin::REJOIN_GRACE`).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

type Slot = watch::Receiver<Option<quinn::Connection>>;

#[derive(Clone)]
pub struct PeerClient {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    /// One slot per peer address. A std `Mutex`: nothing awaits under it.
    peers: Arc<Mutex<HashMap<String, Slot>>>,
    /// Calls given up on since the last answered one, by peer address
    /// (std `Mutex`, as above).
    given_up: Arc<Mutex<HashMap<String, (u32, std::time::Instant)>>>,
    /// The protocol version agreed with each peer on its live connection
    /// (absent: not connected). std `Mutex`, as above.
    versions: Arc<Mutex<HashMap<String, u32>>>,
    /// Highest protocol version offered (config `max_protocol_version`).
    max_protocol: u32,
}

/// Calls given up on in a row after which a peer's connection is replaced,
/// once the first of them is [`UNANSWERED_BEFORE_RECONNECT`] old.
const GIVEN_UP_BEFORE_RECONNECT: u32 = 3;
/// A busy peer answers late, and a new connection (a handshake on a host
/// already short of CPU) makes it later: three calls cancelled at
/// openraft's 100 ms deadline replaced connections under load, the leader
/// backed off from a peer it had just cut off, and followers campaigned.
/// A restarted peer resets its old connections at once by itself (the
/// stateless-reset key survives restarts); this is the fallback.
const UNANSWERED_BEFORE_RECONNECT: std::time::Duration = std::time::Duration::from_secs(2);

/// Counts a call as given up on unless it was answered, also when its
/// future is dropped (openraft cancels RPCs at their deadline).
struct GivenUp<'a> {
    counts: &'a Mutex<HashMap<String, (u32, std::time::Instant)>>,
    addr: &'a str,
    answered: bool,
}

impl Drop for GivenUp<'_> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if self.answered {
            counts.remove(self.addr);
        } else {
            counts.entry(self.addr.to_string()).or_insert((0, std::time::Instant::now())).0 += 1;
        }
    }
}

impl PeerClient {
    pub fn new(endpoint: quinn::Endpoint, identity: &Identity) -> Result<PeerClient, tls::TlsError> {
        Ok(PeerClient {
            endpoint,
            config: tls::client_config(identity, ALPN_RAFT)?,
            peers: Arc::new(Mutex::new(HashMap::new())),
            given_up: Arc::new(Mutex::new(HashMap::new())),
            versions: Arc::default(),
            max_protocol: gantry_common::wire::PROTOCOL_VERSION,
        })
    }

    /// Offers protocol versions up to `max` only, to peers and (through
    /// [`PeerClient::max_protocol`]) to whoever connects here.
    pub fn with_max_protocol(mut self, max: u32) -> PeerClient {
        self.max_protocol = max;
        self
    }

    pub fn max_protocol(&self) -> u32 {
        self.max_protocol
    }

    /// The version agreed with the peer at `addr`, while connected.
    pub fn version_of(&self, addr: &str) -> Option<u32> {
        self.versions.lock().unwrap_or_else(|p| p.into_inner()).get(addr).copied()
    }

    /// Connects to `addr` if not yet connected and waits up to `timeout`
    /// for the version agreed (for a write that depends on it).
    pub async fn version_with(&self, addr: &str, timeout: Duration) -> Option<u32> {
        if let Some(v) = self.version_of(addr) {
            return Some(v);
        }
        self.connection(addr, timeout).await.ok()?;
        self.version_of(addr)
    }

    /// Sends one request to the coordinator at `addr`.
    pub async fn call(
        &self,
        addr: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, RpcError> {
        let conn = self.connection(addr, timeout).await?;
        // Calls given up on (timed out, or cancelled by openraft at its own
        // deadline) since the last that was answered. A peer killed
        // outright leaves its connection looking open until the idle
        // timeout (5 s), and a restarted one at the same address is reached
        // only by a fresh connection: a few given-up calls in a row
        // (heartbeats go every 100 ms) replace it.
        {
            let mut given_up = self.given_up.lock().unwrap_or_else(|p| p.into_inner());
            if given_up.get(addr).is_some_and(|(n, since)| {
                *n >= GIVEN_UP_BEFORE_RECONNECT && since.elapsed() >= UNANSWERED_BEFORE_RECONNECT
            }) {
                given_up.remove(addr);
                conn.close(0u32.into(), b"calls go unanswered");
            }
        }
        let mut pending = GivenUp { counts: &self.given_up, addr, answered: false };
        let result = rpc::call(&conn, addr, req, PEER_MAX_FRAME, timeout).await;
        match &result {
            Ok(_) => pending.answered = true,
            Err(RpcError::Timeout { .. }) => {}
            Err(_) => {
                pending.answered = true;
                // A broken connection: close it so the connector makes a fresh one.
                conn.close(0u32.into(), b"call failed");
            }
        }
        drop(pending);
        result
    }

    /// Sends one request whose answer goes on as raw bytes after its head
    /// (logs); returns the head and the stream.
    pub async fn open_stream(
        &self,
        addr: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<(PeerResponse, quinn::RecvStream), RpcError> {
        let conn = self.connection(addr, timeout).await?;
        rpc::open_stream(&conn, addr, req, PEER_MAX_FRAME, timeout).await
    }

    /// Whether there is a live connection to `addr` now (starts connecting if
    /// nothing has asked for it before).
    pub fn is_connected(&self, addr: &str) -> bool {
        self.slot(addr).borrow().as_ref().is_some_and(|c| c.close_reason().is_none())
    }

    async fn connection(&self, addr: &str, timeout: Duration) -> Result<quinn::Connection, RpcError> {
        let mut slot = self.slot(addr);
        let live = async {
            slot.wait_for(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none())).await.map(|c| c.clone())
        };
        match tokio::time::timeout(timeout, live).await {
            Ok(Ok(Some(conn))) => Ok(conn),
            Ok(Ok(None)) => Err(unreachable(addr, "no connection")),
            Ok(Err(_)) => Err(unreachable(addr, "connector stopped")),
            Err(_) => Err(unreachable(addr, "no connection yet")),
        }
    }

    fn slot(&self, addr: &str) -> Slot {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = peers.get(addr) {
            return slot.clone();
        }
        let (tx, rx) = watch::channel(None);
        let link = Link {
            endpoint: self.endpoint.clone(),
            config: self.config.clone(),
            addr: addr.to_string(),
            versions: Arc::clone(&self.versions),
            max_protocol: self.max_protocol,
        };
        tokio::spawn(connector(link, tx));
        peers.insert(addr.to_string(), rx.clone());
        rx
    }
}

fn unreachable(addr: &str, reason: &str) -> RpcError {
    RpcError::Unreachable { addr: addr.to_string(), reason: reason.to_string() }
}

/// What a connector needs to reach one peer.
struct Link {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: String,
    versions: Arc<Mutex<HashMap<String, u32>>>,
    max_protocol: u32,
}

impl Link {
    fn set_version(&self, version: Option<u32>) {
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        match version {
            Some(v) => versions.insert(self.addr.clone(), v),
            None => versions.remove(&self.addr),
        };
    }
}

/// Keeps one connection to the peer alive until every receiver is gone or
/// the endpoint closes, and notes the protocol version agreed on it.
async fn connector(link: Link, tx: watch::Sender<Option<quinn::Connection>>) {
    let addr = link.addr.as_str();
    let mut backoff = Duration::from_millis(50);
    loop {
        match rpc::connect_capped(
            &link.endpoint,
            link.config.clone(),
            addr,
            COORDINATOR_SERVER_NAME,
            SOFTWARE,
            link.max_protocol,
            CONNECT_TIMEOUT,
        )
        .await
        {
            Ok((conn, reply)) => {
                debug!(%addr, version = ?reply.version(), "connected to peer");
                backoff = Duration::from_millis(50);
                link.set_version(reply.version());
                tx.send_replace(Some(conn.clone()));
                tokio::select! {
                    _ = conn.closed() => {}
                    _ = tx.closed() => {
                        link.set_version(None);
                        return;
                    }
                }
                link.set_version(None);
                tx.send_replace(None);
            }
            Err(e) => {
                debug!(%addr, "cannot connect to peer: {e}");
                if link.endpoint.open_connections() == 0 && is_endpoint_closed(&e) {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn is_endpoint_closed(e: &RpcError) -> bool {
    matches!(e, RpcError::Unreachable { reason, .. } if reason.contains("endpoint stopping"))
}
