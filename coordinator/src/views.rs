//! Operator views of nodes, GPUs, workloads and allocations, computed from
//! the state (and the leader's telemetry). Pure: the service calls these
//! under the state's read lock.

use std::collections::BTreeMap;
use std::time::Instant;

use gantry_common::api::{AllocView, GpuView, NodeView, WorkloadDetail, WorkloadView};
use gantry_common::model::GpuHealth;
use gantry_common::workload::{ActualState, Allocation, DesiredState, HealthState};

use crate::state::{State, WorkloadRecord};
use crate::telemetry::Inner as Telemetry;

/// Every node, with its last heartbeat and sample (on the leader), and what
/// is wrong with it: a failing desired-allocation stream, or the scheduler
/// leaving it out (`excluded`, by node name).
pub fn node_views(
    state: &State,
    telemetry: &Telemetry,
    excluded: &BTreeMap<String, String>,
    now: Instant,
) -> Vec<NodeView> {
    let mut held: BTreeMap<&str, u32> = BTreeMap::new();
    for a in state.allocs.values().filter(|a| a.holds_resources()) {
        *held.entry(a.node.as_str()).or_default() += 1;
    }
    state
        .nodes
        .values()
        .map(|n| {
            let name = n.info.name.as_str();
            let sample = telemetry.samples.get(name);
            let seen = telemetry.liveness.last_seen(name);
            let problem = match (telemetry.stream_problems.get(name), excluded.get(name)) {
                (Some((at, e)), _) => Some(format!(
                    "its desired allocations cannot be sent ({:.0}s ago): {e}",
                    now.saturating_duration_since(*at).as_secs_f64()
                )),
                (None, Some(reason)) => Some(format!("not scheduled: {reason}")),
                (None, None) => None,
            };
            NodeView {
                name: n.info.name.clone(),
                status: n.status,
                heartbeat_age_s: seen.map(|t| now.saturating_duration_since(t).as_secs_f64()),
                labels: n.labels(),
                cpu_count: n.info.host.cpu_count,
                memory_total_mib: n.info.host.memory_total_mib,
                cpu_usage_pct: sample.map(|s| s.host.cpu_usage_pct),
                memory_used_mib: sample.map(|s| s.host.memory_used_mib),
                gpu_count: n.info.gpus.len() as u32,
                gpu_backend: n.info.gpu_backend.clone(),
                agent_version: n.info.agent_version.clone(),
                drained: n.drained,
                allocs: held.get(name).copied().unwrap_or(0),
                problem,
            }
        })
        .collect()
}

/// Every GPU of every node, with its live sample (on the leader).
pub fn gpu_views(state: &State, telemetry: &Telemetry) -> Vec<GpuView> {
    let mut holders: BTreeMap<(&str, u32), u32> = BTreeMap::new();
    for a in state.allocs.values().filter(|a| a.holds_resources()) {
        for g in &a.gpus {
            *holders.entry((a.node.as_str(), g.index)).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for n in state.nodes.values() {
        let by_index: BTreeMap<u32, _> = telemetry
            .samples
            .get(&n.info.name)
            .map(|s| s.gpus.iter().map(|g| (g.index, g)).collect())
            .unwrap_or_default();
        for g in &n.info.gpus {
            let t = by_index.get(&g.index);
            let (health, health_reason) = match t.map(|t| &t.health) {
                None => ("unknown".to_string(), None),
                Some(GpuHealth::Healthy) => ("healthy".to_string(), None),
                Some(h @ (GpuHealth::Degraded(r) | GpuHealth::Unhealthy(r))) => {
                    (h.as_str().to_string(), Some(r.clone()))
                }
            };
            out.push(GpuView {
                node: n.info.name.clone(),
                index: g.index,
                uuid: g.uuid.clone(),
                model: g.model.clone(),
                memory_total_mib: g.memory_total_mib,
                memory_used_mib: t.map(|t| t.memory_used_mib),
                utilization_pct: t.map(|t| t.utilization_pct),
                temperature_c: t.map(|t| t.temperature_c),
                power_w: t.map(|t| t.power_w),
                mig_mode: g.mig_mode,
                sharing: g.sharing,
                allocs: holders.get(&(n.info.name.as_str(), g.index)).copied().unwrap_or(0),
                mps_clients: t.and_then(|t| t.mps_clients),
                mig_instances: t.map(|t| t.mig_instances),
                health,
                health_reason,
            });
        }
    }
    out
}

pub fn workload_views(state: &State) -> Vec<WorkloadView> {
    state.workloads.iter().map(|(name, w)| workload_view(state, name, w)).collect()
}

pub fn workload_detail(state: &State, name: &str) -> Option<WorkloadDetail> {
    let w = state.workloads.get(name)?;
    Some(WorkloadDetail { view: workload_view(state, name, w), spec: w.spec.clone() })
}

fn workload_view(state: &State, name: &str, w: &WorkloadRecord) -> WorkloadView {
    let current: Vec<&Allocation> =
        state.allocs_of(name).filter(|a| a.fills_slot() && a.version == w.version).collect();
    let count = |f: &dyn Fn(&Allocation) -> bool| current.iter().filter(|a| f(a)).count() as u32;
    let running = count(&|a| a.actual == ActualState::Running);
    let healthy = count(&|a| a.actual == ActualState::Running && a.health == HealthState::Healthy);
    let completed = count(&|a| a.actual == ActualState::Completed);
    let failed = count(&|a| a.actual == ActualState::Failed);
    let placed =
        state.allocs_of(name).filter(|a| a.fills_slot() && a.replica < w.spec.replicas).count() as u32;
    let pending = w.spec.replicas.saturating_sub(placed);
    let ready = if w.spec.health.is_some() { healthy } else { running };
    let first = |f: &dyn Fn(&Allocation) -> bool| current.iter().find(|a| f(a)).copied();
    let (status, reason) = if w.stopping {
        ("stopping", None)
    } else if let Some(a) = first(&|a| a.actual == ActualState::Failed) {
        (
            "failed",
            Some(format!("replica {} failed and is not restarted (restart policy): {}", a.id, says(a))),
        )
    } else if let Some(a) = first(&|a| a.start_failed && a.actual != ActualState::Running) {
        ("start-failed", Some(format!("replica {} cannot start: {}", a.id, says(a))))
    } else if let Some(a) = first(&|a| a.is_crash_looping() && a.actual != ActualState::Running) {
        ("crash-looping", Some(format!("replica {} failed {} times in a row: {}", a.id, a.failures, says(a))))
    } else if completed >= w.spec.replicas {
        ("completed", None)
    } else if ready + completed >= w.spec.replicas {
        ("running", None)
    } else if let Some(reason) = &w.pending_reason {
        ("pending", Some(reason.clone()))
    } else if running < current.len() as u32 || pending > 0 || current.len() < w.spec.replicas as usize {
        ("deploying", None)
    } else {
        (
            "degraded",
            first(&|a| a.health == HealthState::Unhealthy).map(|a| format!("replica {} is unhealthy", a.id)),
        )
    };
    WorkloadView {
        name: name.to_string(),
        version: w.version,
        runtime: w.spec.runtime.kind().to_string(),
        target: w.spec.runtime.target().to_string(),
        gpu: w.spec.gpu.describe(),
        replicas: w.spec.replicas,
        running,
        healthy,
        pending,
        status: status.to_string(),
        pending_reason: w.pending_reason.clone(),
        reason,
        completed,
        failed,
    }
}

/// What an allocation's agent last said of it, never empty.
fn says(a: &Allocation) -> String {
    if a.message.is_empty() {
        "no message".into()
    } else {
        a.message.clone()
    }
}

pub fn alloc_views(state: &State, workload: Option<&str>) -> Vec<AllocView> {
    state
        .allocs
        .values()
        .filter(|a| workload.is_none_or(|w| a.workload == w))
        .map(|a| {
            let node = state.nodes.get(&a.node);
            let first_port = state
                .workloads
                .get(&a.workload)
                .and_then(|w| w.spec.ports.first())
                .and_then(|p| a.ports.get(&p.name));
            let endpoint = match (node, first_port) {
                (Some(n), Some(port)) if a.actual == ActualState::Running && !n.info.address.is_empty() => {
                    Some(format!("{}:{port}", n.info.address))
                }
                _ => None,
            };
            AllocView {
                id: a.id.clone(),
                workload: a.workload.clone(),
                replica: a.replica,
                version: a.version,
                node: a.node.clone(),
                gpus: a.gpus.iter().map(|g| g.describe()).collect(),
                devices: a.devices.clone(),
                desired: a.desired.as_str().to_string(),
                actual: a.actual.as_str().to_string(),
                health: a.health.as_str().to_string(),
                restarts: a.restarts,
                message: if a.desired == DesiredState::Stop && a.message.is_empty() {
                    a.desired_reason.clone()
                } else {
                    a.message.clone()
                },
                ports: a.ports.clone(),
                endpoint,
                agent_http: node.map(|n| n.info.http_addr.clone()).unwrap_or_default(),
                exit_code: a.exit_code,
                failures: a.failures,
                start_failed: a.start_failed,
                crash_looping: a.is_crash_looping(),
            }
        })
        .collect()
}
