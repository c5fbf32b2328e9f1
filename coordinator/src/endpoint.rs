//! The coordinator's one QUIC endpoint: accepts connections, checks that the
//! certificate's role may use the connection's ALPN, answers the hello, then
//! serves one request per bidirectional stream.
//!
//! A bad frame resets its own stream; a refused peer gets its connection
//! closed with a reason; nothing a peer sends can stop the accept loop.

use std::sync::Arc;
use std::time::Duration;

use gantry_common::identity::{PeerIdentity, Role, ALPN_AGENT, ALPN_API, ALPN_RAFT};
use gantry_common::rpc::{answer_hello, CLOSE_REFUSED};
use gantry_common::tls;
use gantry_common::wire::{
    read_frame, write_frame, AgentRequest, AgentResponse, ApiCall, ApiReply, DEFAULT_MAX_FRAME,
};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::peer::messages::{PeerRequest, PeerResponse};
use crate::peer::PEER_MAX_FRAME;
use crate::service::desired::DesiredAnswer;
use crate::service::Service;

pub const SOFTWARE: &str = concat!("gantry-coordinator ", env!("CARGO_PKG_VERSION"));

/// Most connections served at once (agents + peers + clients).
const MAX_CONNECTIONS: usize = 16_384;
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Accepts connections until `shutdown` turns true.
pub async fn serve(endpoint: quinn::Endpoint, service: Service, mut shutdown: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Some(incoming) = incoming else { break };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        if service.admission.crowded() && incoming.may_retry() {
            // Under load, an address proves itself before it may take a place.
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        let service = service.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let Some(handshake) = service.admission.admit_soon().await else {
                // Retried later by the peer; logged only at debug: in a
                // fleet start there are thousands a second.
                debug!(%remote, "too many handshakes in flight; refusing");
                incoming.refuse();
                return;
            };
            if let Err(reason) = serve_connection(incoming, handshake, service).await {
                debug!(%remote, %reason, "connection ended");
            }
            drop(permit);
        });
    }
    endpoint.close(0u32.into(), b"coordinator shutting down");
}

/// `handshake` is this connection's place among the handshakes in flight,
/// given back once TLS is done (the client's certificate checked).
async fn serve_connection(
    incoming: quinn::Incoming,
    handshake: tokio::sync::OwnedSemaphorePermit,
    service: Service,
) -> Result<(), String> {
    // A client that stalls its handshake holds its place only this long
    // (an agent gives up on its own after 2 s).
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming)
        .await
        .map_err(|_| format!("handshake not finished within {HANDSHAKE_TIMEOUT:?}"))?
        .map_err(|e| format!("handshake failed: {e}"))?;
    drop(handshake);
    let alpn = tls::negotiated_alpn(&conn).unwrap_or_default();
    let Some(allowed) = Role::for_alpn(&alpn) else {
        return Err(refuse(&conn, "no Gantry ALPN was negotiated".into()));
    };
    let who = match tls::peer_identity(&conn) {
        Ok(who) => who,
        Err(e) => return Err(refuse(&conn, format!("certificate carries no Gantry identity: {e}"))),
    };
    if who.role != allowed {
        let reason = format!(
            "certificate role {} may not use {}; it needs a {} certificate",
            who.role,
            String::from_utf8_lossy(&alpn),
            allowed
        );
        warn!(peer = %who, remote = %conn.remote_address(), "refused: {reason}");
        return Err(refuse(&conn, reason));
    }
    match answer_hello(&conn, service.id, SOFTWARE, service.peers.max_protocol(), HELLO_TIMEOUT).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            // Give the peer a moment to read the mismatch before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            return Err(refuse(&conn, "protocol version mismatch".into()));
        }
        Err(e) => return Err(format!("hello failed: {e}")),
    }
    debug!(peer = %who, remote = %conn.remote_address(), "connection accepted");
    // Held while the connection lives: requests to this agent go down it.
    let _link =
        (alpn.as_slice() == ALPN_AGENT).then(|| service.agent_links.register(&who.name, conn.clone()));
    let who = Arc::new(who);
    loop {
        let (send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let service = service.clone();
        let who = who.clone();
        let alpn = alpn.clone();
        tokio::spawn(async move {
            let result = match alpn.as_slice() {
                ALPN_RAFT => serve_peer_stream(send, recv, &service).await,
                ALPN_AGENT => serve_agent_stream(send, recv, &service, &who).await,
                ALPN_API => serve_api_stream(send, recv, &service).await,
                _ => Ok(()),
            };
            if let Err(e) = result {
                debug!(peer = %who, "stream failed: {e}");
            }
        });
    }
}

fn refuse(conn: &quinn::Connection, reason: String) -> String {
    conn.close(CLOSE_REFUSED.into(), reason.as_bytes());
    reason
}

type StreamResult = Result<(), String>;

async fn serve_peer_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    service: &Service,
) -> StreamResult {
    let Some(req) = read_request::<PeerRequest>(&mut send, &mut recv, PEER_MAX_FRAME).await? else {
        return Ok(());
    };
    if let PeerRequest::Logs(req) = req {
        return match service.open_logs(req, false).await {
            Ok(output) => {
                write_frame(&mut send, &PeerResponse::Logs(Ok(())), PEER_MAX_FRAME)
                    .await
                    .map_err(|e| e.to_string())?;
                crate::alloc_logs::pipe(output, send).await
            }
            Err(e) => respond(&mut send, &PeerResponse::Logs(Err(e)), PEER_MAX_FRAME).await,
        };
    }
    let resp: PeerResponse = service.handle_peer(req).await;
    respond(&mut send, &resp, PEER_MAX_FRAME).await
}

async fn serve_agent_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    service: &Service,
    who: &PeerIdentity,
) -> StreamResult {
    let Some(req) = read_request::<AgentRequest>(&mut send, &mut recv, DEFAULT_MAX_FRAME).await? else {
        return Ok(());
    };
    if let AgentRequest::WatchDesired { node, index, wait_ms } = &req {
        let answer = match service.check_agent(who, &req) {
            Err(refusal) => DesiredAnswer::Other(refusal),
            Ok(()) => service.watch_desired(node, *index, Duration::from_millis(*wait_ms)).await,
        };
        return service.send_desired(node, answer, &mut send).await;
    }
    let resp: AgentResponse = service.handle_agent(who, req).await;
    if let AgentResponse::Refused { reason } = &resp {
        info!(peer = %who, "agent request refused: {reason}");
    }
    respond(&mut send, &resp, DEFAULT_MAX_FRAME).await
}

async fn serve_api_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    service: &Service,
) -> StreamResult {
    let Some(ApiCall(req)) = read_request::<ApiCall>(&mut send, &mut recv, DEFAULT_MAX_FRAME).await? else {
        return Ok(());
    };
    let resp = ApiReply(service.handle_api(req, None).await.map(|a| a.response));
    respond(&mut send, &resp, DEFAULT_MAX_FRAME).await
}

/// Reads one request; a malformed one resets the stream (and only the stream).
async fn read_request<T: serde::de::DeserializeOwned>(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<T>, String> {
    match read_frame::<T, _>(recv, max).await {
        Ok(req) => Ok(req),
        Err(e) => {
            let _ = send.reset(1u32.into());
            let _ = recv.stop(1u32.into());
            Err(format!("bad request frame: {e}"))
        }
    }
}

async fn respond<T: serde::Serialize>(send: &mut quinn::SendStream, resp: &T, max: usize) -> StreamResult {
    write_frame(send, resp, max).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}
