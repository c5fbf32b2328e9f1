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
        state.allocs_of(name).filter(|a| a.desired == DesiredState::Run && a.version == w.version).collect();
    let running = current.iter().filter(|a| a.actual == ActualState::Running).count() as u32;
    let healthy = current
        .iter()
        .filter(|a| a.actual == ActualState::Running && a.health == HealthState::Healthy)
        .count() as u32;
    let failed = current.iter().any(|a| a.actual == ActualState::Failed);
    let placed = state
        .allocs_of(name)
        .filter(|a| a.desired == DesiredState::Run && a.replica < w.spec.replicas)
        .count() as u32;
    let pending = w.spec.replicas.saturating_sub(placed);
    let ready = if w.spec.health.is_some() { healthy } else { running };
    let status = if w.stopping {
        "stopping"
    } else if failed {
        "degraded"
    } else if ready >= w.spec.replicas {
        "running"
    } else if w.pending_reason.is_some() {
        "pending"
    } else if running < current.len() as u32 || pending > 0 || current.len() < w.spec.replicas as usize {
        "deploying"
    } else {
        "degraded"
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
            }
        })
        .collect()
}
