//! The agent's local HTTP endpoint, `metrics_listen` (127.0.0.1:9410 by
//! default). It serves exactly two things, neither of them secret:
//!
//! - `GET /metrics`: Prometheus text of the last GPU and host sample;
//! - `GET /healthz`: `ok` while the process serves.
//!
//! Allocation output is not served here: it may hold secrets (a workload's
//! environment, its data), and this listener has no authentication.
//! `gantryctl logs` reaches it through the coordinators, down the agent's
//! mutually authenticated QUIC connection ([`crate::coordinator_requests`]).
//! Any other path is a 404.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use gantry_common::http_server;
use gantry_common::model::GpuTelemetry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::sampler::{AgentStatus, StatusInner};

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    status: AgentStatus,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, "not found: this listener serves /metrics and /healthz only\n")
        })
        .with_state(status);
    // A scraper needs one connection; a few for several. The cap and the
    // header timeout keep a flood of idle or half-sent connections from
    // holding file descriptors and memory of the agent.
    let limits = http_server::Limits {
        name: "metrics listener",
        connections: 64,
        header_timeout: Duration::from_secs(10),
        max_buf: 16 * 1024,
    };
    http_server::serve(listener, app, limits, shutdown).await
}

/// Why `metrics_listen` deserves a warning at start-up, if it does: an
/// address other hosts can reach exposes GPU telemetry to the network.
pub fn exposure_warning(addr: &SocketAddr) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| {
        format!(
            "metrics_listen {addr} is not a loopback address: anyone who can reach it reads this node's GPU \
             and host telemetry (/metrics). It serves nothing else; bind 127.0.0.1 unless a scraper elsewhere \
             needs it, and firewall it"
        )
    })
}

async fn metrics(axum::extract::State(status): axum::extract::State<AgentStatus>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&status.snapshot()))
}

/// A per-GPU gauge: name, help text, and how to read it from a sample.
type Series = (&'static str, &'static str, fn(&GpuTelemetry) -> f64);

/// Prometheus text exposition of one status snapshot.
pub fn render(s: &StatusInner) -> String {
    let mut out = String::new();
    let gauge = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP gantry_agent_{name} {help}\n# TYPE gantry_agent_{name} gauge");
    };
    gauge(&mut out, "connected", "1 while registered with the leader");
    let _ = writeln!(out, "gantry_agent_connected {}", u8::from(s.leader.is_some()));
    gauge(&mut out, "heartbeats_sent", "Heartbeats acknowledged by the leader since start");
    let _ = writeln!(out, "gantry_agent_heartbeats_sent {}", s.heartbeats_sent);
    let series: [Series; 5] = [
        ("gpu_utilization_pct", "GPU utilisation percent", |t| f64::from(t.utilization_pct)),
        ("gpu_memory_used_mib", "GPU memory used (MiB)", |t| t.memory_used_mib as f64),
        ("gpu_temperature_c", "GPU temperature (Celsius)", |t| f64::from(t.temperature_c)),
        ("gpu_power_w", "GPU power draw (W)", |t| t.power_w),
        ("gpu_healthy", "1 when the GPU is healthy", |t| f64::from(u8::from(t.health.as_str() == "healthy"))),
    ];
    for (name, help, value) in series {
        gauge(&mut out, name, help);
        for t in &s.telemetry {
            let uuid = s.gpus.iter().find(|g| g.index == t.index).map(|g| g.uuid.as_str()).unwrap_or("");
            let _ = writeln!(out, "gantry_agent_{name}{{gpu=\"{}\",uuid=\"{uuid}\"}} {}", t.index, value(t));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gantry_common::model::{GpuHealth, GpuInfo, MigMode};

    use super::*;

    #[test]
    fn only_a_non_loopback_address_is_warned_about() {
        assert_eq!(exposure_warning(&"127.0.0.1:9410".parse().unwrap()), None);
        assert_eq!(exposure_warning(&"[::1]:9410".parse().unwrap()), None);
        let w = exposure_warning(&"0.0.0.0:9410".parse().unwrap()).unwrap();
        assert!(w.contains("not a loopback address") && w.contains("/metrics"), "{w}");
    }

    #[tokio::test]
    async fn the_listener_serves_metrics_and_health_and_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(serve(listener, AgentStatus::default(), stop_rx));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/metrics").await.contains("gantry_agent_connected"));
        for path in ["/v1/allocs/w.0.1/logs", "/v1/allocs/w.0.1/logs?follow=true", "/"] {
            let answer = get(path).await;
            assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
        }
    }

    #[test]
    fn renders_one_series_per_gpu_with_uuid() {
        let s = StatusInner {
            gpus: vec![GpuInfo {
                index: 0,
                uuid: "GPU-a".into(),
                model: "L4-24GB".into(),
                memory_total_mib: 23_034,
                mig_mode: MigMode::Unsupported,
                nvlink_domain: None,
                sharing: gantry_common::model::GpuSharing::Exclusive,
            }],
            host: None,
            telemetry: vec![GpuTelemetry {
                index: 0,
                memory_used_mib: 512,
                utilization_pct: 42,
                temperature_c: 50,
                power_w: 31.5,
                health: GpuHealth::Unhealthy("Xid 79".into()),
                mps_clients: None,
                mig_instances: 0,
            }],
            leader: Some("127.0.0.1:7400".into()),
            heartbeats_sent: 3,
        };
        let text = render(&s);
        assert!(text.contains("gantry_agent_connected 1\n"), "{text}");
        assert!(text.contains("gantry_agent_gpu_utilization_pct{gpu=\"0\",uuid=\"GPU-a\"} 42\n"), "{text}");
        assert!(text.contains("gantry_agent_gpu_memory_used_mib{gpu=\"0\",uuid=\"GPU-a\"} 512\n"), "{text}");
        assert!(text.contains("gantry_agent_gpu_healthy{gpu=\"0\",uuid=\"GPU-a\"} 0\n"), "{text}");
        assert!(text.contains("gantry_agent_heartbeats_sent 3\n"), "{text}");
    }
}
