//! Cached QUIC connections from this coordinator to the others.
//!
//! A connection is made on first use and kept; a failed call drops it so the
//! next call reconnects. The cache is a std `Mutex`: nothing awaits under it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_common::identity::ALPN_RAFT;
use gantry_common::rpc::{self, RpcError};
use gantry_common::tls::{self, Identity, COORDINATOR_SERVER_NAME};

use super::messages::{PeerRequest, PeerResponse};
use super::PEER_MAX_FRAME;

const SOFTWARE: &str = concat!("gantry-coordinator ", env!("CARGO_PKG_VERSION"));

#[derive(Clone)]
pub struct PeerClient {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    connections: Arc<Mutex<HashMap<String, quinn::Connection>>>,
}

impl PeerClient {
    pub fn new(endpoint: quinn::Endpoint, identity: &Identity) -> Result<PeerClient, tls::TlsError> {
        Ok(PeerClient {
            endpoint,
            config: tls::client_config(identity, ALPN_RAFT)?,
            connections: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Sends one request to the coordinator at `addr`.
    pub async fn call(
        &self,
        addr: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, RpcError> {
        let conn = self.connection(addr, timeout).await?;
        let result = rpc::call(&conn, addr, req, PEER_MAX_FRAME, timeout).await;
        if result.is_err() {
            self.forget(addr, &conn);
        }
        result
    }

    async fn connection(&self, addr: &str, timeout: Duration) -> Result<quinn::Connection, RpcError> {
        let cached = self.lock().get(addr).cloned();
        if let Some(conn) = cached {
            if conn.close_reason().is_none() {
                return Ok(conn);
            }
        }
        let (conn, _) = rpc::connect(
            &self.endpoint,
            self.config.clone(),
            addr,
            COORDINATOR_SERVER_NAME,
            SOFTWARE,
            timeout,
        )
        .await?;
        self.lock().insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    fn forget(&self, addr: &str, conn: &quinn::Connection) {
        let mut map = self.lock();
        if map.get(addr).is_some_and(|c| c.stable_id() == conn.stable_id()) {
            map.remove(addr);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, quinn::Connection>> {
        // A poisoned map only means another task panicked mid-insert; the map itself is still usable.
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}
