//! Request/response over QUIC: one bidirectional stream per call.
//!
//! Both sides open a connection with a [`Hello`] exchange on its first
//! stream, so a version mismatch is a clear error and not a decode failure.
//! Failures are classified on purpose ([`RpcError::is_unreachable`]): a peer
//! we could not reach is retried elsewhere, a broken call is reported.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::frame::{read_frame_bytes, read_hello_frame, write_hello_frame};
use crate::wire::{negotiate, read_frame, write_frame, FrameError, Hello, HelloReply, PROTOCOL_VERSION};

/// Largest hello frame either side accepts.
const MAX_HELLO: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("protocol version mismatch with {addr}: we speak {ours}, it speaks {theirs} ({software})")]
    VersionMismatch { addr: String, ours: u32, theirs: u32, software: String },
    #[error("connection to {addr} refused the call: {reason}")]
    Refused { addr: String, reason: String },
    /// The peer refused the connection before any handshake because it is
    /// setting up too many at once: retry after a (jittered) pause.
    #[error("{addr} is busy (too many connections being set up at once); retry shortly")]
    Busy { addr: String },
    #[error("call to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("call to {addr} failed: {source}")]
    Frame { addr: String, source: FrameError },
    #[error("call to {addr} failed: {reason}")]
    Stream { addr: String, reason: String },
}

impl RpcError {
    /// The peer could not be reached at all (try another one); anything else
    /// happened after the peer answered.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RpcError::Unreachable { .. } | RpcError::Timeout { .. } | RpcError::Busy { .. })
    }
}

/// Connects, checks the peer's protocol version, and returns the connection.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: &str,
    server_name: &str,
    software: &str,
    timeout: Duration,
) -> Result<(quinn::Connection, HelloReply), RpcError> {
    connect_capped(endpoint, config, addr, server_name, software, PROTOCOL_VERSION, timeout).await
}

/// [`connect`], offering protocol versions up to `max` only. The reply's
/// [`HelloReply::version`] is the version the connection speaks.
pub async fn connect_capped(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: &str,
    server_name: &str,
    software: &str,
    max: u32,
    timeout: Duration,
) -> Result<(quinn::Connection, HelloReply), RpcError> {
    let unreachable = |reason: String| RpcError::Unreachable { addr: addr.to_string(), reason };
    let sock: SocketAddr = addr.parse().map_err(|_| unreachable("not an IP:PORT address".into()))?;
    let connecting =
        endpoint.connect_with(config, sock, server_name).map_err(|e| unreachable(e.to_string()))?;
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => return Err(unreachable(format!("no handshake within {timeout:?}"))),
        Ok(Err(e)) => return Err(classify_connection_error(addr, e)),
        Ok(Ok(conn)) => conn,
    };
    let reply = send_hello(&conn, addr, &Hello::current(software, max), timeout).await?;
    if let HelloReply::VersionMismatch { ours, theirs, software } = &reply {
        conn.close(0u32.into(), b"protocol version mismatch");
        // From our side: we speak `theirs` (what we sent), the peer speaks `ours`.
        return Err(RpcError::VersionMismatch {
            addr: addr.to_string(),
            ours: *theirs,
            theirs: *ours,
            software: software.clone(),
        });
    }
    Ok((conn, reply))
}

/// One call: opens a stream, sends `req`, reads one response frame.
pub async fn call<Req, Resp>(
    conn: &quinn::Connection,
    addr: &str,
    req: &Req,
    max_frame: usize,
    timeout: Duration,
) -> Result<Resp, RpcError>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    open_stream(conn, addr, req, max_frame, timeout).await.map(|(resp, _)| resp)
}

/// Like [`call`], and hands back the stream after the response frame, for
/// answers that go on as raw bytes (logs). `timeout` covers the response
/// frame only.
pub async fn open_stream<Req, Head>(
    conn: &quinn::Connection,
    addr: &str,
    req: &Req,
    max_frame: usize,
    timeout: Duration,
) -> Result<(Head, quinn::RecvStream), RpcError>
where
    Req: Serialize,
    Head: DeserializeOwned,
{
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| classify_connection_error(addr, e))?;
        write_frame(&mut send, req, max_frame)
            .await
            .map_err(|source| RpcError::Frame { addr: addr.to_string(), source })?;
        send.finish().map_err(|e| RpcError::Stream { addr: addr.to_string(), reason: e.to_string() })?;
        match read_frame::<Head, _>(&mut recv, max_frame).await {
            Ok(Some(head)) => Ok((head, recv)),
            Ok(None) => Err(RpcError::Stream {
                addr: addr.to_string(),
                reason: refusal_reason(conn)
                    .unwrap_or_else(|| "peer closed the stream without answering".into()),
            }),
            Err(FrameError::Io(e)) => Err(match refusal_reason(conn) {
                Some(reason) => RpcError::Refused { addr: addr.to_string(), reason },
                None => RpcError::Stream { addr: addr.to_string(), reason: e.to_string() },
            }),
            Err(source) => Err(RpcError::Frame { addr: addr.to_string(), source }),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(RpcError::Timeout { addr: addr.to_string(), after: timeout }))
}

/// Client side of the first stream (done by [`connect`]): the hello frames are postcard, which
/// every protocol version reads (see [`crate::schema`]).
pub async fn send_hello(
    conn: &quinn::Connection,
    addr: &str,
    hello: &Hello,
    timeout: Duration,
) -> Result<HelloReply, RpcError> {
    let frame = |source| RpcError::Frame { addr: addr.to_string(), source };
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| classify_connection_error(addr, e))?;
        write_hello_frame(&mut send, hello, MAX_HELLO).await.map_err(frame)?;
        send.finish().map_err(|e| RpcError::Stream { addr: addr.to_string(), reason: e.to_string() })?;
        match read_hello_frame::<HelloReply, _>(&mut recv, MAX_HELLO).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(RpcError::Stream {
                addr: addr.to_string(),
                reason: refusal_reason(conn)
                    .unwrap_or_else(|| "peer closed the stream without answering".into()),
            }),
            Err(FrameError::Io(e)) => Err(match refusal_reason(conn) {
                Some(reason) => RpcError::Refused { addr: addr.to_string(), reason },
                None => RpcError::Stream { addr: addr.to_string(), reason: e.to_string() },
            }),
            Err(source) => Err(frame(source)),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(RpcError::Timeout { addr: addr.to_string(), after: timeout }))
}

/// Server side of the first stream: reads the peer's [`Hello`] and answers
/// it. Returns the version agreed, `None` when the versions do not meet.
/// `max` caps the versions offered (see [`Hello::current`]).
pub async fn answer_hello(
    conn: &quinn::Connection,
    coordinator_id: u64,
    software: &str,
    max: u32,
    timeout: Duration,
) -> Result<Option<u32>, RpcError> {
    let addr = conn.remote_address().to_string();
    let work = async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| classify_connection_error(&addr, e))?;
        let frame = |source| RpcError::Frame { addr: addr.clone(), source };
        let bytes = read_frame_bytes(&mut recv, MAX_HELLO)
            .await
            .map_err(frame)?
            .ok_or_else(|| RpcError::Stream { addr: addr.clone(), reason: "no hello".into() })?;
        let hello = Hello::decode(&bytes).map_err(|e| frame(FrameError::Hello(e)))?;
        let ours = Hello::current(software, max);
        let agreed = negotiate(
            (ours.protocol_version, ours.max_protocol_version),
            (hello.protocol_version, hello.max_protocol_version),
        );
        let reply = match agreed {
            Some(version) if hello.sends_range() => {
                HelloReply::Agreed { coordinator_id, software: software.to_string(), version }
            }
            Some(_) => HelloReply::Ok { coordinator_id, software: software.to_string() },
            None => HelloReply::VersionMismatch {
                ours: ours.max_protocol_version,
                theirs: hello.max_protocol_version,
                software: software.to_string(),
            },
        };
        write_hello_frame(&mut send, &reply, MAX_HELLO).await.map_err(frame)?;
        let _ = send.finish();
        Ok(agreed)
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(RpcError::Timeout { addr: addr.clone(), after: timeout }))
}

/// Error code a coordinator closes a connection with when it refuses the peer.
pub const CLOSE_REFUSED: u32 = 0x4741; // "GA"

/// The reason the peer gave when it closed the connection on purpose.
pub fn refusal_reason(conn: &quinn::Connection) -> Option<String> {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            Some(String::from_utf8_lossy(&close.reason).into_owned())
        }
        Some(quinn::ConnectionError::ConnectionClosed(close)) => {
            Some(format!("TLS/transport: {}", String::from_utf8_lossy(&close.reason)))
        }
        _ => None,
    }
}

fn classify_connection_error(addr: &str, e: quinn::ConnectionError) -> RpcError {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => RpcError::Refused {
            addr: addr.to_string(),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        // What a coordinator sends, before any handshake, when it has too
        // many in flight (`Incoming::refuse`).
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn_proto::TransportErrorCode::CONNECTION_REFUSED =>
        {
            RpcError::Busy { addr: addr.to_string() }
        }
        quinn::ConnectionError::ConnectionClosed(close) => RpcError::Refused {
            addr: addr.to_string(),
            reason: format!("{} {}", close.error_code, String::from_utf8_lossy(&close.reason)),
        },
        quinn::ConnectionError::TransportError(t) => {
            RpcError::Refused { addr: addr.to_string(), reason: t.to_string() }
        }
        other => RpcError::Unreachable { addr: addr.to_string(), reason: other.to_string() },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn closed(code: quinn_proto::TransportErrorCode) -> quinn::ConnectionError {
        quinn::ConnectionError::ConnectionClosed(quinn_proto::ConnectionClose {
            error_code: code,
            frame_type: None,
            reason: Default::default(),
        })
    }

    #[test]
    fn a_connection_refused_before_its_handshake_is_busy_and_retried() {
        let e = classify_connection_error(
            "10.0.0.1:7000",
            closed(quinn_proto::TransportErrorCode::CONNECTION_REFUSED),
        );
        assert!(matches!(&e, RpcError::Busy { addr } if addr == "10.0.0.1:7000"), "{e:?}");
        assert!(e.is_unreachable(), "busy means: try again later");
        assert!(e.to_string().contains("busy"), "{e}");
    }

    #[test]
    fn other_transport_closes_stay_refusals() {
        let e = classify_connection_error(
            "10.0.0.1:7000",
            closed(quinn_proto::TransportErrorCode::PROTOCOL_VIOLATION),
        );
        assert!(matches!(e, RpcError::Refused { .. }), "{e:?}");
    }
}
