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

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use gantry_common::http_server;
use gantry_common::model::GpuTelemetry;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
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

async fn metrics(
    axum::extract::State(status): axum::extract::State<AgentStatus>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (kind, body) = gantry_common::exposition::negotiate(accept, render(&status.snapshot()));
    ([(header::CONTENT_TYPE, kind)], body)
}

/// Labels of a per-GPU series: its index and UUID.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabels {
    gpu: u32,
    uuid: String,
}

/// A GPU's health as an enum gauge: one series per state, 1 for the current one.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    gpu: u32,
    uuid: String,
    state: &'static str,
}

type Gauges<L> = Family<L, Gauge<f64, AtomicU64>>;

/// A per-GPU gauge: name, unit, help text, and how to read it from a sample.
type Series = (&'static str, Option<Unit>, &'static str, fn(&GpuTelemetry) -> Option<f64>);

/// OpenMetrics text of one status snapshot. Names follow Prometheus
/// conventions (base units: bytes, seconds, watts, celsius; ratios 0-1),
/// in the spirit of NVIDIA's dcgm-exporter: utilisation, memory,
/// temperature, power and health per GPU, labelled with index and UUID.
pub fn render(s: &StatusInner) -> String {
    let mut registry = Registry::with_prefix("gantry_agent");
    registry.register(
        "build",
        "Version of this gantry-agent binary",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    let connected = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    connected.set(i64::from(s.leader.is_some()));
    registry.register("connected", "1 while registered with the leader", connected);
    let heartbeats = Counter::<u64, AtomicU64>::default();
    heartbeats.inc_by(s.heartbeats_sent);
    registry.register("heartbeats_sent", "Heartbeats acknowledged by the leader since start", heartbeats);
    if let Some(host) = &s.host {
        let cpu = Gauge::<f64, AtomicU64>::default();
        cpu.set(f64::from(host.cpu_usage_pct) / 100.0);
        registry.register("host_cpu_utilization_ratio", "Host CPU busy share (0-1)", cpu);
        let memory = Gauge::<f64, AtomicU64>::default();
        memory.set(mib(host.memory_used_mib));
        registry.register_with_unit("host_memory_used", "Host memory in use", Unit::Bytes, memory);
    }
    let uuid_of =
        |index: u32| s.gpus.iter().find(|g| g.index == index).map(|g| g.uuid.clone()).unwrap_or_default();
    let info = Family::<Vec<(&'static str, String)>, Gauge>::default();
    let memory_total = Gauges::<GpuLabels>::default();
    for g in &s.gpus {
        let labels = vec![
            ("gpu", g.index.to_string()),
            ("uuid", g.uuid.clone()),
            ("model", g.model.clone()),
            ("mig_mode", format!("{:?}", g.mig_mode).to_lowercase()),
            ("sharing", g.sharing.as_str().to_owned()),
        ];
        info.get_or_create(&labels).set(1);
        memory_total
            .get_or_create(&GpuLabels { gpu: g.index, uuid: g.uuid.clone() })
            .set(mib(g.memory_total_mib));
    }
    registry.register("gpu_info", "1 per GPU, with its model, MIG mode and sharing mode as labels", info);
    registry.register_with_unit("gpu_memory_total", "GPU memory in all", Unit::Bytes, memory_total);
    let series: [Series; 6] = [
        (
            "gpu_utilization_ratio",
            None,
            "Share of the last sample period a kernel ran on the GPU (0-1)",
            |t| Some(f64::from(t.utilization_pct) / 100.0),
        ),
        ("gpu_memory_used", Some(Unit::Bytes), "GPU memory in use", |t| Some(mib(t.memory_used_mib))),
        ("gpu_temperature", Some(Unit::Celsius), "GPU temperature", |t| Some(f64::from(t.temperature_c))),
        ("gpu_power", Some(Unit::Other("watts".into())), "GPU power draw", |t| Some(t.power_w)),
        ("gpu_mig_instances", None, "MIG instances that exist on the GPU (0 with MIG off)", |t| {
            Some(f64::from(t.mig_instances))
        }),
        ("gpu_mps_clients", None, "Clients of the GPU's MPS control daemon (absent when none runs)", |t| {
            t.mps_clients.map(f64::from)
        }),
    ];
    for (name, unit, help, value) in series {
        let family = Gauges::<GpuLabels>::default();
        for t in &s.telemetry {
            if let Some(v) = value(t) {
                family.get_or_create(&GpuLabels { gpu: t.index, uuid: uuid_of(t.index) }).set(v);
            }
        }
        match unit {
            Some(unit) => registry.register_with_unit(name, help, unit, family),
            None => registry.register(name, help, family),
        }
    }
    let health = Family::<HealthLabels, Gauge>::default();
    for t in &s.telemetry {
        for state in ["healthy", "degraded", "unhealthy"] {
            let labels = HealthLabels { gpu: t.index, uuid: uuid_of(t.index), state };
            health.get_or_create(&labels).set(i64::from(t.health.as_str() == state));
        }
    }
    registry.register("gpu_health", "1 for the GPU's current health state, 0 for the others", health);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// MiB as bytes.
fn mib(v: u64) -> f64 {
    (v as f64) * 1024.0 * 1024.0
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
        let text = gantry_common::exposition::to_text_format(&render(&s));
        for line in [
            "gantry_agent_connected 1",
            "gantry_agent_gpu_utilization_ratio{gpu=\"0\",uuid=\"GPU-a\"} 0.42",
            "gantry_agent_gpu_memory_used_bytes{gpu=\"0\",uuid=\"GPU-a\"} 536870912.0",
            "gantry_agent_gpu_memory_total_bytes{gpu=\"0\",uuid=\"GPU-a\"} 24152899584.0",
            "gantry_agent_gpu_temperature_celsius{gpu=\"0\",uuid=\"GPU-a\"} 50.0",
            "gantry_agent_gpu_power_watts{gpu=\"0\",uuid=\"GPU-a\"} 31.5",
            "gantry_agent_gpu_health{gpu=\"0\",uuid=\"GPU-a\",state=\"unhealthy\"} 1",
            "gantry_agent_gpu_health{gpu=\"0\",uuid=\"GPU-a\",state=\"healthy\"} 0",
            "gantry_agent_heartbeats_sent_total 3",
            "# TYPE gantry_agent_heartbeats_sent_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // No MPS daemon: no series, rather than a made-up 0.
        assert!(!text.contains("gantry_agent_gpu_mps_clients{"), "{text}");
    }
}
