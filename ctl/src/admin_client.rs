//! HTTP/1.1 + JSON over the coordinator's admin Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use gantry_common::api::ApiError;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

/// How long one admin request may take (a write may wait for an election).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    pub fn new(socket: &Path) -> AdminClient {
        AdminClient { socket: socket.to_path_buf() }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.request(Method::GET, path, None::<&()>).await
    }

    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.request(method, path, Some(body)).await
    }

    /// A GET whose status and body the caller judges itself (used for the
    /// Docker engine's socket too, which speaks the same HTTP).
    pub async fn get_raw(&self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        self.exchange(Method::GET, path, None).await
    }

    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let body = body.map(serde_json::to_vec).transpose().context("encoding the request")?;
        let (status, bytes) = self.exchange(method, path, body).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(anyhow!("{message}"));
        }
        serde_json::from_slice(&bytes).with_context(|| format!("decoding the answer to {path}"))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let work = async {
            let stream = UnixStream::connect(&self.socket).await.with_context(|| {
                format!(
                    "cannot connect to the admin socket {} (is a coordinator running there? set --socket or GANTRY_SOCKET)",
                    self.socket.display()
                )
            })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP handshake")?;
            tokio::spawn(conn);
            let mut req = Request::builder().method(method).uri(path).header("host", "gantry");
            if body.is_some() {
                req = req.header("content-type", "application/json");
            }
            let req =
                req.body(Full::new(Bytes::from(body.unwrap_or_default()))).context("building the request")?;
            let resp = sender.send_request(req).await.context("sending the request")?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
            Ok::<_, anyhow::Error>((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .map_err(|_| anyhow!("the coordinator did not answer within {REQUEST_TIMEOUT:?}"))?
    }
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
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_names_and_escapes_the_rest() {
        assert_eq!(encode("llm.0.12"), "llm.0.12");
        assert_eq!(encode("a/b c?d"), "a%2Fb%20c%3Fd");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
