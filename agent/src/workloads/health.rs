//! HTTP health probes: `GET <path>` on `127.0.0.1:<host port>`; a 2xx answer
//! within the timeout passes. A minimal HTTP/1.1 client: one request per
//! connection, only the status line is read.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Probes once. `Err` says why it failed.
pub async fn probe(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, get_status(port, path)).await {
        Ok(Ok(code)) if (200..300).contains(&code) => Ok(()),
        Ok(Ok(code)) => Err(format!("GET {path} answered {code}")),
        Ok(Err(e)) => Err(format!("GET {path} on port {port}: {e}")),
        Err(_) => Err(format!("GET {path} on port {port}: no answer within {} ms", timeout.as_millis())),
    }
}

async fn get_status(port: u16, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nUser-Agent: gantry-agent\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // The status line fits in the first bytes; read until it is complete.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status_line(&buf)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))
}

/// The status code of `HTTP/1.x NNN ...`.
pub fn parse_status_line(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nx"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
    }

    /// Serves one connection with `answer`, or holds it open without answering.
    async fn server(answer: Option<&'static str>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            match answer {
                Some(a) => {
                    let _ = s.write_all(a.as_bytes()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
        });
        port
    }

    #[tokio::test]
    async fn pass_fail_refused_and_timeout() {
        let ok = server(Some("HTTP/1.1 204 No Content\r\n\r\n")).await;
        assert_eq!(probe(ok, "/health", Duration::from_secs(5)).await, Ok(()));
        let bad = server(Some("HTTP/1.1 500 Internal Server Error\r\n\r\n")).await;
        assert!(probe(bad, "/health", Duration::from_secs(5)).await.unwrap_err().contains("500"));
        let silent = server(None).await;
        let err = probe(silent, "/health", Duration::from_millis(200)).await.unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        // A port nobody listens on: bind one, then close it.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        assert!(probe(closed, "/health", Duration::from_secs(5)).await.is_err());
    }
}
