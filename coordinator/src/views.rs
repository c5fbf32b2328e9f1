//! Operator views of workloads and allocations, computed from the state.
//! Pure: the service calls these under the state's read lock.

use gantry_common::api::{AllocView, WorkloadDetail, WorkloadView};
use gantry_common::workload::{ActualState, Allocation, DesiredState, HealthState};

use crate::state::{State, WorkloadRecord};

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
