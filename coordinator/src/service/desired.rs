//! A node's desired set, streamed to its agent.
//!
//! ```text
//!   WatchDesired { index } ──► wait until the node's alloc_revision != index (or the wait ends;
//!                              woken only by this node's changes and by leadership changes)
//!                          ──► Desired { index, specs, allocs } + DesiredChunk… (each ≈ 1 MiB)
//!                           or DesiredUnchanged { index }
//! ```
//!
//! The set is read from the state once, so the chunks are consistent; each
//! workload's spec travels once however many of its replicas the node runs.
//! A stream that fails is recorded for `gantryctl nodes` and logged; the
//! next successful one clears it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gantry_common::wire::{
    desired_chunks, write_frame, AgentResponse, DesiredChunk, DEFAULT_MAX_FRAME, DESIRED_CHUNK_BYTES,
};
use gantry_common::workload::{Allocation, DesiredState, WorkloadSpec};
use tracing::warn;

use super::Service;
use crate::state::State;

/// Longest an agent's watch is held open.
const MAX_WATCH: Duration = Duration::from_secs(30);

/// What a watch found.
#[derive(Debug)]
pub enum DesiredAnswer {
    Changed { index: u64, specs: Vec<WorkloadSpec>, allocs: Vec<Allocation> },
    Unchanged { index: u64 },
    Other(AgentResponse),
}

impl Service {
    /// Waits (up to `wait`) until `node`'s desired set differs from `index`.
    pub async fn watch_desired(&self, node: &str, index: u64, wait: Duration) -> DesiredAnswer {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WATCH);
        // Woken when this node's set changes, or when leadership does; not by
        // every other write.
        let mut changes = self.state.watch_node(node);
        let mut leadership = self.raft.server_metrics();
        loop {
            changes.borrow_and_update();
            leadership.borrow_and_update();
            let Some(revision) = self.state.read(|s| s.nodes.get(node).map(|n| n.alloc_revision)) else {
                return DesiredAnswer::Other(AgentResponse::UnknownNode);
            };
            if revision != index {
                let (specs, allocs) = self.state.read(|s| desired_set(s, node));
                return DesiredAnswer::Changed { index: revision, specs, allocs };
            }
            if !self.is_leader() {
                return DesiredAnswer::Other(AgentResponse::NotLeader { leader: self.leader_hint() });
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() {
                    return DesiredAnswer::Other(AgentResponse::Refused { reason: "coordinator stopping".into() });
                },
                r = leadership.changed() => if r.is_err() {
                    return DesiredAnswer::Other(AgentResponse::Refused { reason: "coordinator stopping".into() });
                },
                _ = tokio::time::sleep_until(deadline) => return DesiredAnswer::Unchanged { index: revision },
            }
        }
    }

    /// Answers a watch on `send`: the head, then the chunks. Records how it went.
    pub async fn send_desired(
        &self,
        node: &str,
        answer: DesiredAnswer,
        send: &mut quinn::SendStream,
    ) -> Result<(), String> {
        let kind = match &answer {
            DesiredAnswer::Changed { .. } => "changed",
            DesiredAnswer::Unchanged { .. } => "unchanged",
            DesiredAnswer::Other(_) => "other",
        };
        let started = Instant::now();
        let result = write_desired(answer, send).await;
        let label = crate::metrics::instruments::AnswerLabel { answer: kind };
        crate::metrics::instruments::observe(
            &self.instruments.alloc_stream_answers.get_or_create(&label),
            started.elapsed(),
        );
        let mut telemetry = self.telemetry.lock();
        match &result {
            Ok(()) => {
                telemetry.stream_problems.remove(node);
            }
            Err(e) => {
                if !telemetry.stream_problems.contains_key(node) {
                    warn!(%node, "sending the desired allocations failed: {e}");
                }
                telemetry.stream_problems.insert(node.to_string(), (Instant::now(), e.clone()));
            }
        }
        result
    }
}

async fn write_desired(answer: DesiredAnswer, send: &mut quinn::SendStream) -> Result<(), String> {
    let frame = |e: gantry_common::wire::FrameError| e.to_string();
    match answer {
        DesiredAnswer::Changed { index, specs, allocs } => {
            let head = AgentResponse::Desired {
                index,
                specs: u32::try_from(specs.len()).unwrap_or(u32::MAX),
                allocs: u32::try_from(allocs.len()).unwrap_or(u32::MAX),
            };
            write_frame(send, &head, DEFAULT_MAX_FRAME).await.map_err(frame)?;
            for chunk in desired_chunks(specs, allocs, DESIRED_CHUNK_BYTES) {
                write_frame::<DesiredChunk, _>(send, &chunk, DEFAULT_MAX_FRAME).await.map_err(frame)?;
            }
        }
        DesiredAnswer::Unchanged { index } => {
            write_frame(send, &AgentResponse::DesiredUnchanged { index }, DEFAULT_MAX_FRAME)
                .await
                .map_err(frame)?;
        }
        DesiredAnswer::Other(resp) => write_frame(send, &resp, DEFAULT_MAX_FRAME).await.map_err(frame)?,
    }
    send.finish().map_err(|e| e.to_string())
}

/// What `node`'s agent should know: allocations to run, and those to stop
/// that it has not confirmed stopped; with the spec of each of their
/// workloads, once.
pub fn desired_set(state: &State, node: &str) -> (Vec<WorkloadSpec>, Vec<Allocation>) {
    let mut specs: BTreeMap<&str, &WorkloadSpec> = BTreeMap::new();
    let mut allocs = Vec::new();
    for a in state.allocs_on(node).filter(|a| a.desired == DesiredState::Run || !a.actual.is_terminal()) {
        let Some(w) = state.workloads.get(&a.workload) else { continue };
        specs.entry(a.workload.as_str()).or_insert(&w.spec);
        allocs.push(a.clone());
    }
    (specs.into_values().cloned().collect(), allocs)
}
