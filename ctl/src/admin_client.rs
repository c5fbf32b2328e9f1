//! HTTP/1.1 + JSON over the coordinator's admin Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use gantry_common::api::{ApiError, Staleness, IDEMPOTENCY_HEADER, STALE_HEADER};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

/// How long one admin request may take (a write may wait for an election).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write whose outcome is unknown is retried with its key.
const WRITE_RETRY: Duration = Duration::from_secs(30);

/// No answer came within the request timeout: the outcome of a write is
/// unknown (it may commit later, e.g. after an election).
#[derive(Debug, thiserror::Error)]
#[error("the coordinator did not answer within {0:?}")]
pub struct NoAnswer(Duration);

/// An error answer of the admin socket.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{error}")]
pub struct CallError {
    pub status: StatusCode,
    pub error: String,
    pub field: Option<String>,
    /// A write that may or may not have been applied.
    pub outcome_unknown: bool,
}

#[derive(Clone, Debug)]
pub struct AdminClient {
    socket: PathBuf,
    /// How long one request may take ([`REQUEST_TIMEOUT`]; shorter in tests).
    timeout: Duration,
}

impl AdminClient {
    pub fn new(socket: &Path) -> AdminClient {
        AdminClient { socket: socket.to_path_buf(), timeout: REQUEST_TIMEOUT }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self.get_marked(path).await?.0)
    }

    /// A read and, when no leader answered it, why it may be out of date.
    pub async fn get_marked<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<(T, Option<Staleness>)> {
        let (status, headers, bytes) = self.exchange(Method::GET, path, None, None).await?;
        let value = decode(status, &bytes, path)?;
        let stale = headers.get(STALE_HEADER).and_then(|v| serde_json::from_slice(v.as_bytes()).ok());
        Ok((value, stale))
    }

    /// A write with an idempotency key. A write whose outcome is unknown (the
    /// leader changed under it) is sent again with the same key, which is
    /// safe: the cluster applies one key once.
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_vec(body).context("encoding the request")?;
        let key = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let started = std::time::Instant::now();
        let mut asked_again_after_silence = false;
        loop {
            let result = self.exchange(method.clone(), path, Some(body.clone()), Some(&key)).await;
            let retry = match &result {
                Ok((status, headers, bytes)) if !status.is_success() => {
                    let e = call_error(*status, headers, bytes);
                    e.outcome_unknown && started.elapsed() < WRITE_RETRY
                }
                Ok(_) => false,
                // Asked once more with the same key: if the first try
                // committed meanwhile, the answer is its result, not a
                // second write.
                Err(e) if e.downcast_ref::<NoAnswer>().is_some() && !asked_again_after_silence => {
                    asked_again_after_silence = true;
                    eprintln!("{e}; asking again (the same write, so it is not done twice)");
                    true
                }
                Err(_) => false,
            };
            if retry {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let (status, _, bytes) = result?;
            return decode(status, &bytes, path);
        }
    }

    /// A GET whose status and body the caller judges itself (used for the
    /// Docker engine's socket too, which speaks the same HTTP).
    pub async fn get_raw(&self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let (status, _, bytes) = self.exchange(Method::GET, path, None, None).await?;
        Ok((status, bytes))
    }

    /// A GET whose answer streams (an allocation's logs): its body once the
    /// status is a success, else the coordinator's error message. Only the
    /// wait for the status line is bounded; the body may go on for ever.
    pub async fn get_stream(&self, path: &str) -> anyhow::Result<hyper::body::Incoming> {
        let resp = tokio::time::timeout(self.timeout, self.send_request(Method::GET, path, None, None))
            .await
            .map_err(|_| NoAnswer(self.timeout))??;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.into_body());
        }
        let headers = resp.headers().clone();
        let bytes = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(call_error(status, &headers, &bytes).into())
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        key: Option<&str>,
    ) -> anyhow::Result<(StatusCode, hyper::HeaderMap, Bytes)> {
        let work = async {
            let resp = self.send_request(method, path, body, key).await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
            Ok::<_, anyhow::Error>((status, headers, bytes))
        };
        tokio::time::timeout(self.timeout, work).await.map_err(|_| NoAnswer(self.timeout))?
    }

    /// Connects, sends one request and returns the response once its head arrived.
    async fn send_request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        key: Option<&str>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let stream = UnixStream::connect(&self.socket).await.with_context(|| {
            format!(
                "cannot connect to the admin socket {} (is a coordinator running there? set --socket or GANTRY_SOCKET)",
                self.socket.display()
            )
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake")?;
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path).header("host", "gantry");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(key) = key {
            req = req.header(IDEMPOTENCY_HEADER, key);
        }
        let req =
            req.body(Full::new(Bytes::from(body.unwrap_or_default()))).context("building the request")?;
        sender.send_request(req).await.context("sending the request")
    }
}

fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8], path: &str) -> anyhow::Result<T> {
    if !status.is_success() {
        return Err(call_error(status, &hyper::HeaderMap::new(), bytes).into());
    }
    serde_json::from_slice(bytes).with_context(|| format!("decoding the answer to {path}"))
}

/// An error answer: the JSON `error` (and `field`), else the body as text.
fn call_error(status: StatusCode, headers: &hyper::HeaderMap, bytes: &[u8]) -> CallError {
    let outcome_unknown = headers.get("gantry-outcome").is_some_and(|v| v.as_bytes() == b"unknown");
    let (error, field) = match serde_json::from_slice::<ApiError>(bytes) {
        Ok(e) => (e.error, e.field),
        Err(_) if bytes.is_empty() => (format!("the coordinator answered {status}"), None),
        Err(_) => (String::from_utf8_lossy(bytes).trim().to_string(), None),
    };
    CallError { status, error, field, outcome_unknown }
}

/// Percent-encodes one path segment or query value: names are plain, but a
/// typo with `/`, `?` or a space must not change which route is asked.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_is_handed_over_and_an_error_answer_becomes_its_message() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n6\r\nworld\n\r\n0\r\n\r\n",
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 43\r\n\r\n{\"error\":\"node-2's agent is not connected\"}",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(answer.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            }
        });
        let client = AdminClient::new(&socket);
        let body = client.get_stream("/v1/allocs/llm.0.4/logs").await.unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello world\n");
        let e = client.get_stream("/v1/allocs/x.0.1/logs").await.unwrap_err().to_string();
        assert_eq!(e, "node-2's agent is not connected");
    }

    /// A write not answered in time (an election ate the answer) is asked
    /// once more with the same idempotency key, so it is not done twice;
    /// a second silence is the caller's error.
    #[tokio::test]
    async fn an_unanswered_write_is_asked_again_once_with_its_key() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let mut keys = Vec::new();
            let mut held = Vec::new();
            for answer in [
                None,
                Some("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"),
                None,
                None,
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{}: ", IDEMPOTENCY_HEADER.to_lowercase())))
                    .map(str::to_string);
                keys.push(key);
                if let Some(a) = answer {
                    s.write_all(a.as_bytes()).await.unwrap();
                }
                // Kept open: a close with the body unread would reset the answer.
                held.push(s);
            }
            // Silent, not closed, until the client has given up.
            let _ = done_rx.await;
            keys
        });
        let mut client = AdminClient::new(&socket);
        client.timeout = Duration::from_millis(200);
        let answered: serde_json::Value =
            client.send(Method::POST, "/v1/workloads", &serde_json::json!({"name": "a"})).await.unwrap();
        assert_eq!(answered, serde_json::json!({}));
        let e = client
            .send::<_, serde_json::Value>(Method::POST, "/v1/workloads", &serde_json::json!({"name": "b"}))
            .await
            .unwrap_err();
        assert!(e.downcast_ref::<NoAnswer>().is_some(), "{e:#}");
        let _ = done_tx.send(());
        let keys = server.await.unwrap();
        assert!(keys.iter().all(Option::is_some), "every write carries a key: {keys:?}");
        assert_eq!(keys[0], keys[1], "the same write asked again");
        assert_eq!(keys[2], keys[3]);
        assert_ne!(keys[0], keys[2], "another write, another key");
    }

    #[test]
    fn encoding_keeps_names_and_escapes_the_rest() {
        assert_eq!(encode("llm.0.12"), "llm.0.12");
        assert_eq!(encode("a/b c?d"), "a%2Fb%20c%3Fd");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
