//! The accept loop of every HTTP listener Gantry runs (the coordinator's
//! admin socket, the agent's metrics port): a bounded number of connections,
//! each with a header timeout (which also closes idle keep-alive
//! connections) and a bounded read buffer, so a flood of half-sent requests
//! costs a bounded amount of memory and goes away by itself.
//!
//! A connection over the limit is answered `503` with a JSON error naming
//! the listener; its request is read and dropped (at most 64 KiB, for at
//! most a second) so the client sees the answer rather than a reset.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

/// A listener the loop can accept from.
pub trait Listener: Send + 'static {
    /// One accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept_io(&self) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// What the listener is, for logs and the over-limit answer
    /// ("admin socket", "metrics listener").
    pub name: &'static str,
    /// Connections served at once.
    pub connections: usize,
    /// Time a client has to send a request's headers, and the longest an idle
    /// keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Largest read buffer per connection (headers must fit in it).
    pub max_buf: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            name: "listener",
            connections: 256,
            header_timeout: Duration::from_secs(10),
            max_buf: 64 * 1024,
        }
    }
}

/// The whole answer to a connection over the limit.
fn over_limit(name: &str) -> Vec<u8> {
    let body = format!(r#"{{"error":"too many connections to the {name}; try again shortly"}}"#);
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `app` on `listener` until `shutdown` turns true. Connections in
/// progress then get a moment to finish (streams such as `logs --follow`
/// end with the process).
pub async fn serve<L: Listener>(
    listener: L,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.connections));
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept_io() => a,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let mut stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                warn!("{} accept: {e}", limits.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                warn!(limit = limits.connections, refused, "{}: too many connections, refusing", limits.name);
            }
            tokio::spawn(async move {
                let refuse = async {
                    stream.write_all(&over_limit(limits.name)).await?;
                    stream.shutdown().await?;
                    // Closing with the request unread would reset the
                    // connection, and the client would lose the answer.
                    let mut sink = [0u8; 4096];
                    let mut read = 0;
                    while read < 64 * 1024 {
                        match stream.read(&mut sink).await? {
                            0 => break,
                            n => read += n,
                        }
                    }
                    Ok::<_, std::io::Error>(())
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), refuse).await;
            });
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_buf)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let stopping = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stopping => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(Duration::from_secs(2), conn.as_mut()).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                debug!("{} connection: {e}", limits.name);
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::routing::get;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    use super::*;

    /// Serves `ok` at `/` on `listener` with `limits`; the sender stops it when dropped.
    fn serve_ok<L: Listener>(listener: L, limits: Limits) -> watch::Sender<bool> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(serve(listener, Router::new().route("/", get(|| async { "ok" })), limits, stop_rx));
        stop_tx
    }

    /// A loopback TCP listener serving `ok` with `limits`.
    async fn tcp_ok(limits: Limits) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, serve_ok(listener, limits))
    }

    async fn answer(stream: &mut TcpStream) -> String {
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut out)).await;
        out
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_refused_and_idle_ones_are_closed() {
        let limits = Limits {
            name: "test listener",
            connections: 2,
            header_timeout: Duration::from_millis(300),
            max_buf: 8192,
        };
        let (addr, _stop) = tcp_ok(limits).await;

        // Two connections that never send a request hold both permits.
        let mut idle = vec![TcpStream::connect(addr).await.unwrap(), TcpStream::connect(addr).await.unwrap()];
        idle[1].write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap(); // half-sent
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        let refused = answer(&mut third).await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("too many connections to the test listener"), "{refused}");
        // The header timeout closes both idle connections, which frees the permits.
        for s in &mut idle {
            let mut buf = Vec::new();
            let n = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
            assert!(n.is_ok(), "an idle connection was closed by the header timeout");
        }
        let mut next = TcpStream::connect(addr).await.unwrap();
        next.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let served = answer(&mut next).await;
        assert!(served.starts_with("HTTP/1.1 200") && served.ends_with("ok"), "{served}");
    }

    /// A client that sends its request after the refusal went out (as
    /// gantryctl on the admin socket does) still reads the refusal: on a
    /// Unix socket closed by the other side its write would fail first.
    #[tokio::test]
    async fn a_refused_client_reads_the_refusal_even_when_it_writes_late() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let _stop = serve_ok(listener, Limits { name: "admin socket", connections: 0, ..Limits::default() });
        let mut late = tokio::net::UnixStream::connect(&path).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let request = format!("GET / HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n", "a".repeat(6000));
        late.write_all(request.as_bytes()).await.expect("the request can still be written");
        let mut out = String::new();
        late.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        assert!(out.contains("too many connections to the admin socket"), "{out}");
    }

    #[tokio::test]
    async fn headers_larger_than_the_buffer_are_refused() {
        let limits = Limits {
            name: "test listener",
            connections: 2,
            header_timeout: Duration::from_secs(5),
            max_buf: 8192,
        };
        let (addr, _stop) = tcp_ok(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let big = "a".repeat(64 * 1024);
        let _ = s.write_all(format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes()).await;
        let out = answer(&mut s).await;
        assert!(!out.contains("200 OK"), "{out}");
    }
}
