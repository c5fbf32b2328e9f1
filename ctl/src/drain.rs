//! `gantryctl drain NODE [--wait]` and `gantryctl undrain NODE`.

use std::time::{Duration, Instant};

use anyhow::Context;
use gantry_common::api::{AllocView, WorkloadView};
use hyper::Method;
use serde_json::Value;

use crate::admin_client::{encode, AdminClient};
use crate::cluster_cmds::print_json;
use crate::out::outln;
use crate::wait::{self, round_ms, StatusLine, PENDING_GRACE, POLL};

pub async fn drain(
    client: &AdminClient,
    node: &str,
    drain: bool,
    wait: bool,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let resp: Value = client
        .send(
            Method::PUT,
            &format!("/v1/nodes/{}/drain", encode(node)),
            &serde_json::json!({ "drain": drain }),
        )
        .await
        .with_context(|| format!("{} {node} (`gantryctl nodes` lists the names)", verb(drain)))?;
    let log_index = resp.get("log_index").cloned().unwrap_or(Value::Null);
    if !(drain && wait) {
        if json {
            return print_json(&serde_json::json!({ "node": node, "drain": drain, "log_index": log_index }));
        }
        if drain {
            outln!("node {node}: drained (log index {log_index}); its replicas move elsewhere");
        } else {
            outln!("node {node}: undrained (log index {log_index}); new replicas may be placed there again");
        }
        return Ok(());
    }
    if !json {
        eprintln!("node {node}: drained (log index {log_index}); waiting for its replicas to leave");
    }
    let took = follow_drain(client, node, timeout).await?;
    if json {
        return print_json(&serde_json::json!({
            "node": node,
            "drain": true,
            "log_index": log_index,
            "drained_s": round_ms(took),
        }));
    }
    outln!("node {node}: drained after {:.1}s; nothing runs there", took.as_secs_f64());
    Ok(())
}

fn verb(drain: bool) -> &'static str {
    if drain {
        "draining"
    } else {
        "undraining"
    }
}

/// What still runs on a draining node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainProgress {
    /// Allocations on the node that still hold resources.
    pub left: Vec<String>,
    /// Of those, how many are already told to stop.
    pub stopping: usize,
}

impl DrainProgress {
    pub fn of(node: &str, allocs: &[AllocView]) -> DrainProgress {
        let on_node: Vec<&AllocView> =
            allocs.iter().filter(|a| a.node == node && !wait::is_terminal(&a.actual)).collect();
        DrainProgress {
            left: on_node.iter().map(|a| a.id.clone()).collect(),
            stopping: on_node.iter().filter(|a| a.desired == "stop").count(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.left.is_empty()
    }

    /// `node-1: 3 allocations left (2 stopping)`
    pub fn line(&self, node: &str) -> String {
        format!("{node}: {} allocations left ({} stopping)", self.left.len(), self.stopping)
    }
}

/// Why replicas cannot leave `node`: the pending reasons of workloads that
/// name it (the scheduler keeps such a replica running where it is).
pub fn stuck_reasons(node: &str, workloads: &[WorkloadView]) -> Vec<String> {
    let needle = format!("drained node {node}");
    workloads
        .iter()
        .filter_map(|w| {
            let reason = w.pending_reason.as_deref()?;
            let names_it = reason.match_indices(&needle).any(|(i, _)| {
                !matches!(reason[i + needle.len()..].chars().next(), Some(c) if c.is_alphanumeric() || "-_.".contains(c))
            });
            names_it.then(|| format!("{}: {reason}", w.name))
        })
        .collect()
}

/// Polls until nothing on `node` holds resources; returns how long it took.
async fn follow_drain(client: &AdminClient, node: &str, timeout: Duration) -> anyhow::Result<Duration> {
    let mut status = StatusLine::new();
    let started = Instant::now();
    let mut stuck_since: Option<Instant> = None;
    loop {
        let allocs: Vec<AllocView> = client.get("/v1/allocs").await?;
        let progress = DrainProgress::of(node, &allocs);
        if progress.is_done() {
            status.finish();
            return Ok(started.elapsed());
        }
        let workloads: Vec<WorkloadView> = client.get("/v1/workloads").await?;
        let stuck = stuck_reasons(node, &workloads);
        if stuck.is_empty() {
            stuck_since = None;
        } else if stuck_since.get_or_insert_with(Instant::now).elapsed() >= PENDING_GRACE {
            status.finish();
            anyhow::bail!(
                "node {node} is drained, but {} replicas have nowhere else to go and keep running there:\n  {}\n\
                 They move once capacity appears elsewhere (free GPUs, add or undrain a node).",
                stuck.len(),
                stuck.join("\n  ")
            );
        }
        if started.elapsed() > timeout {
            status.finish();
            anyhow::bail!(
                "node {node} still holds {} allocations after {}s ({}); it stays drained. \
                 `gantryctl allocs` shows why they have not moved (e.g. no room elsewhere)",
                progress.left.len(),
                timeout.as_secs(),
                progress.left.join(", ")
            );
        }
        status.set(progress.line(node));
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wait::tests::{alloc, view};

    #[test]
    fn drain_is_done_when_nothing_on_the_node_holds_resources() {
        let mut elsewhere = alloc("llm.0.9", 1, "run", "running", "healthy");
        elsewhere.node = "node-2".into();
        let mut allocs = vec![
            alloc("llm.0.1", 1, "stop", "running", "healthy"),
            alloc("llm.1.2", 1, "stop", "stopped", "unknown"),
            alloc("llm.2.3", 1, "run", "starting", "unknown"),
            elsewhere,
        ];
        let p = DrainProgress::of("node-1", &allocs);
        assert_eq!(p.left, ["llm.0.1", "llm.2.3"]);
        assert_eq!(p.stopping, 1);
        assert!(!p.is_done());
        assert_eq!(p.line("node-1"), "node-1: 2 allocations left (1 stopping)");
        allocs[0].actual = "stopped".into();
        allocs[2].actual = "lost".into();
        assert!(DrainProgress::of("node-1", &allocs).is_done());
        // The replacement on another node does not keep node-1 busy.
        assert!(DrainProgress::of("node-2", &allocs).left == ["llm.0.9"]);
    }

    #[test]
    fn stuck_reasons_name_only_this_node() {
        let mut a = view(1, 2, Some("cannot move replica 0 off drained node node-1: no node has room"));
        a.name = "a".into();
        let mut b = view(1, 2, Some("cannot move replica 1 off drained node node-10: no room"));
        b.name = "b".into();
        let c = view(1, 2, None);
        assert_eq!(
            stuck_reasons("node-1", &[a, b, c]),
            ["a: cannot move replica 0 off drained node node-1: no node has room"]
        );
    }
}
