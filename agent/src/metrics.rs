//! The agent's local HTTP endpoint: `/metrics` (Prometheus text of the last
//! sample), `/healthz`, and allocation logs:
//!
//! `GET /v1/allocs/{id}/logs?follow=true|false&tail=<bytes>` answers
//! `text/plain`: stdout then stderr for a process (each cut to its last
//! `tail` bytes), the engine's interleaved log for a container. With
//! `follow=true` the body is chunked and goes on while the workload runs.
//! An unknown allocation is a 404 that says so.

use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gantry_common::model::GpuTelemetry;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::runtime::LogRequest;
use crate::sampler::{AgentStatus, StatusInner};
use crate::workloads::manager::{Logs, LogsError};

#[derive(Clone)]
struct AppState {
    status: AgentStatus,
    logs: Option<Logs>,
}

/// Serves until `shutdown` turns true. Without `logs` the log route answers 404.
pub async fn serve(
    listener: TcpListener,
    status: AgentStatus,
    logs: Option<Logs>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/allocs/{id}/logs", get(alloc_logs))
        .with_state(AppState { status, logs });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&state.status.snapshot()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<u64>,
}

async fn alloc_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let text = |code: StatusCode, message: String| {
        (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{message}\n")).into_response()
    };
    let Some(logs) = state.logs else {
        return text(StatusCode::NOT_FOUND, format!("no allocation {id:?} on this node (workloads are off)"));
    };
    match logs.open(&id, LogRequest { follow: q.follow, tail: q.tail }).await {
        Ok(stream) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], Body::from_stream(stream)).into_response()
        }
        Err(e @ LogsError::UnknownAlloc(_)) => text(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ LogsError::NotStarted(_)) => text(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => text(StatusCode::BAD_GATEWAY, e.to_string()),
    }
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
mod tests {
    use gantry_common::model::{GpuHealth, GpuInfo, MigMode};

    use super::*;

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
