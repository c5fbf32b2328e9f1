//! The optional TCP listener for Prometheus (`metrics_listen`): `/metrics`
//! and `/healthz`, nothing else. The admin socket serves the same
//! `/metrics`; this exists because a scraper on another host cannot reach a
//! Unix socket. Nothing it serves is secret, and it takes no requests that
//! change anything.

use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gantry_common::http_server;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Metrics;
use crate::service::Service;

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(scrape))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, "not found: this listener serves /metrics and /healthz only\n")
        })
        .with_state((service, metrics));
    // A few scrapers at most; the cap and the header timeout keep idle or
    // half-sent connections from holding the coordinator's descriptors.
    let limits = http_server::Limits {
        name: "metrics listener",
        connections: 64,
        header_timeout: Duration::from_secs(10),
        max_buf: 16 * 1024,
    };
    http_server::serve(listener, app, limits, shutdown).await
}

async fn scrape(
    axum::extract::State((service, metrics)): axum::extract::State<(Service, Metrics)>,
    headers: HeaderMap,
) -> Response {
    match metrics.render(&service).await {
        Ok(text) => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let (kind, body) = gantry_common::exposition::negotiate(accept, text);
            ([(header::CONTENT_TYPE, kind)], body).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}\n")).into_response(),
    }
}
