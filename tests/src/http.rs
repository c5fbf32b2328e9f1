//! Minimal blocking HTTP/1.0 for tests: the admin socket (Unix) and
//! workloads' ports (TCP). One request per connection, read to the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request and returns (status, body).
fn exchange(
    mut stream: impl Read + Write,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: gantry\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).context("sending")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).context("reading")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP header in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// A request to a coordinator's admin socket.
pub fn admin(socket: &Path, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
    let stream =
        UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    exchange(stream, method, path, body)
}

/// GET on the admin socket, decoded; a non-2xx answer is an error.
pub fn admin_get<T: DeserializeOwned>(socket: &Path, path: &str) -> anyhow::Result<T> {
    let (status, body) = admin(socket, "GET", path, None)?;
    if !(200..300).contains(&status) {
        return Err(anyhow!("GET {path}: {status} {body}"));
    }
    serde_json::from_str(&body).with_context(|| format!("decoding GET {path}"))
}

/// A request to `ADDR:PORT` over TCP.
pub fn tcp(addr: &str, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
    let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    exchange(stream, method, path, body)
}

/// A request to the admin socket with its own headers and body, for
/// requests a well-behaved client never sends. Returns (status, headers, body).
pub fn admin_raw(socket: &Path, head: &str, body: &[u8]) -> anyhow::Result<(u16, String, String)> {
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut req = head.replace('\n', "\r\n").into_bytes();
    req.extend_from_slice(format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes());
    req.extend_from_slice(body);
    // A server may answer (413) and close before it read everything: that is fine.
    let _ = stream.write_all(&req);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let (headers, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP header in {text:?}"))?;
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {headers:?}"))?;
    Ok((status, headers.to_ascii_lowercase(), body.to_string()))
}
