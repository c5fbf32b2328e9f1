//! The admin socket's accept loop: a bounded number of connections, each
//! with a header timeout (which also closes idle keep-alive connections) and
//! a bounded read buffer, so a flood of half-sent requests costs a bounded
//! amount of memory and goes away by itself.
//!
//! A connection over the limit is answered `503` with a JSON error and
//! closed at once, without reading its request.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

/// Limits of the admin socket.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
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
        Limits { connections: 256, header_timeout: Duration::from_secs(10), max_buf: 64 * 1024 }
    }
}

/// The whole answer to a connection over the limit.
fn over_limit() -> Vec<u8> {
    let body = r#"{"error":"too many connections to the admin socket; try again shortly"}"#;
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
pub async fn serve(
    listener: UnixListener,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.connections));
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let (mut stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                warn!("admin socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                warn!(limit = limits.connections, refused, "admin socket: too many connections, refusing");
            }
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&over_limit())).await;
                let _ = stream.shutdown().await;
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
                debug!("admin connection: {e}");
            }
            drop(permit);
        });
    }
}
