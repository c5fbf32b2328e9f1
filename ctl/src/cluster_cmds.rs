//! `gantryctl status`, `nodes`, `gpus`, `label`, `cluster add|remove`.

use std::collections::BTreeMap;

use anyhow::Context;
use gantry_common::api::{ClusterStatus, GpuView, MemberRole, NodeView};
use gantry_common::model::MigMode;
use hyper::Method;
use serde_json::Value;

use crate::admin_client::AdminClient;
use crate::out::{out, outln};
use crate::table::{opt, render};

pub async fn status(client: &AdminClient, local: bool, json: bool) -> anyhow::Result<()> {
    let (s, _): (ClusterStatus, _) =
        client.get_marked(if local { "/v1/status?local=true" } else { "/v1/status" }).await?;
    let quorum = quorum_problem(&s);
    if json {
        print_json(&s)?;
    } else {
        out!("{}", render(&["ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "PROTOCOL"], &member_rows(&s)));
        if let Some(stale) = &s.stale {
            eprintln!("warning: {}", stale.line());
        }
    }
    match quorum {
        // --local asks one coordinator about itself: no quorum judgement.
        Some(problem) if !local => anyhow::bail!("{problem}"),
        _ => Ok(()),
    }
}

/// One row per coordinator; one this coordinator cannot reach says so.
pub fn member_rows(s: &ClusterStatus) -> Vec<Vec<String>> {
    s.members
        .iter()
        .map(|m| {
            let role = match m.role {
                MemberRole::Leader => "leader",
                MemberRole::Follower => "follower",
                MemberRole::Learner => "learner",
            };
            let role = if m.reachable { role.to_string() } else { format!("{role} (unreachable)") };
            let protocol = m.protocol.map_or_else(|| "-".to_string(), |v| v.to_string());
            vec![m.id.to_string(), m.address.clone(), role, m.term.to_string(), opt(m.commit_index), protocol]
        })
        .collect()
}

/// Why the cluster cannot take writes, when it cannot: no leader, or fewer
/// voters reachable than a majority.
/// `node-2: not scheduled: …`, one line per node with a problem, escaped.
pub fn problem_lines(nodes: &[NodeView]) -> String {
    nodes
        .iter()
        .filter_map(|n| Some(crate::table::clean(&format!("{}: {}", n.name, n.problem.as_deref()?))))
        .map(|line| line + "\n")
        .collect()
}

pub fn quorum_problem(s: &ClusterStatus) -> Option<String> {
    let voters: Vec<_> = s.members.iter().filter(|m| m.role != MemberRole::Learner).collect();
    let reachable = voters.iter().filter(|m| m.reachable).count();
    let majority = voters.len() / 2 + 1;
    if s.leader.is_none() || s.stale.is_some() {
        let why = s.stale.as_ref().map_or("no leader", |st| st.reason.as_str());
        return Some(format!(
            "no quorum: {why} (coordinator {} answered; {reachable} of {} voters reachable from it, a \
             majority is {majority}). Writes are refused and views may be out of date",
            s.answered_by,
            voters.len()
        ));
    }
    (reachable < majority).then(|| {
        format!("no quorum: {reachable} of {} voters reachable, a majority is {majority}", voters.len())
    })
}

/// Prints why an answer may be out of date: a line on stderr, or (with
/// `--json`) a JSON object there, so stdout keeps the data's own shape.
pub fn warn_stale(stale: Option<&gantry_common::api::Staleness>, json: bool) {
    let Some(stale) = stale else { return };
    if json {
        eprintln!("{}", serde_json::json!({ "warning": stale.line(), "stale": stale }));
    } else {
        eprintln!("warning: {}", stale.line());
    }
}

pub async fn nodes(client: &AdminClient, json: bool) -> anyhow::Result<()> {
    let (nodes, stale): (Vec<NodeView>, _) = client.get_marked("/v1/nodes").await?;
    warn_stale(stale.as_ref(), json);
    if json {
        return print_json(&nodes);
    }
    out!(
        "{}",
        render(
            &["NAME", "STATUS", "HEARTBEAT", "CPUS", "MEMORY", "GPUS", "ALLOCS", "BACKEND", "LABELS"],
            &node_rows(&nodes)
        )
    );
    out!("{}", problem_lines(&nodes));
    Ok(())
}

/// One row per node; a drained node's status reads `ready,drained`.
pub fn node_rows(nodes: &[NodeView]) -> Vec<Vec<String>> {
    nodes
        .iter()
        .map(|n| {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut status = n.status.as_str().to_string();
            if n.drained {
                status.push_str(",drained");
            }
            if n.problem.is_some() {
                status.push_str(",problem");
            }
            vec![
                n.name.clone(),
                status,
                n.heartbeat_age_s.map(|a| format!("{a:.1}s")).unwrap_or_else(|| "-".into()),
                n.cpu_count.to_string(),
                format!("{} GiB", n.memory_total_mib / 1024),
                n.gpu_count.to_string(),
                n.allocs.to_string(),
                n.gpu_backend.clone(),
                if labels.is_empty() { "-".into() } else { labels.join(",") },
            ]
        })
        .collect()
}

pub async fn gpus(client: &AdminClient, json: bool) -> anyhow::Result<()> {
    let (gpus, stale): (Vec<GpuView>, _) = client.get_marked("/v1/gpus").await?;
    warn_stale(stale.as_ref(), json);
    if json {
        return print_json(&gpus);
    }
    out!(
        "{}",
        render(
            &[
                "NODE", "INDEX", "MODEL", "SHARING", "ALLOCS", "MEMORY", "UTIL", "TEMP", "POWER", "MIG",
                "MPS", "HEALTH", "UUID"
            ],
            &gpu_rows(&gpus)
        )
    );
    Ok(())
}

/// One row per GPU. MIG shows the mode and, when on, the instances that
/// exist; MPS the clients of the GPU's MPS daemon.
pub fn gpu_rows(gpus: &[GpuView]) -> Vec<Vec<String>> {
    gpus.iter()
        .map(|g| {
            let mig = match g.mig_instances {
                Some(n) if g.mig_mode == MigMode::Enabled => format!("enabled ({n} inst)"),
                _ => g.mig_mode.as_str().to_string(),
            };
            let mps = match g.mps_clients {
                Some(n) => format!("{n} clients"),
                None => "-".into(),
            };
            vec![
                g.node.clone(),
                g.index.to_string(),
                g.model.clone(),
                g.sharing.as_str().to_string(),
                g.allocs.to_string(),
                format!("{}/{} MiB", opt(g.memory_used_mib), g.memory_total_mib),
                g.utilization_pct.map(|u| format!("{u}%")).unwrap_or_else(|| "-".into()),
                g.temperature_c.map(|t| format!("{t}C")).unwrap_or_else(|| "-".into()),
                g.power_w.map(|p| format!("{p:.0}W")).unwrap_or_else(|| "-".into()),
                mig,
                mps,
                g.health.clone(),
                g.uuid.clone(),
            ]
        })
        .collect()
}

pub async fn label(client: &AdminClient, node: &str, changes: &[String], json: bool) -> anyhow::Result<()> {
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    for change in changes {
        if let Some(key) = change.strip_suffix('-') {
            remove.push(key.to_string());
        } else if let Some((k, v)) = change.split_once('=') {
            set.insert(k.to_string(), v.to_string());
        } else {
            anyhow::bail!("label {change:?}: expected KEY=VALUE to set or KEY- to remove");
        }
    }
    let body = serde_json::json!({ "set": set, "remove": remove });
    let resp: Value = client
        .send(Method::PUT, &format!("/v1/nodes/{}/labels", crate::admin_client::encode(node)), &body)
        .await?;
    done(resp, json, &format!("labels of {node} updated"))
}

pub async fn add_member(client: &AdminClient, id: u64, addr: &str, json: bool) -> anyhow::Result<()> {
    let body = serde_json::json!({ "id": id, "addr": addr });
    let resp: Value = client.send(Method::POST, "/v1/cluster/members", &body).await?;
    done(resp, json, &format!("coordinator {id} ({addr}) added as a voter"))
}

pub async fn remove_member(client: &AdminClient, id: u64, json: bool) -> anyhow::Result<()> {
    let resp: Value = client.send(Method::DELETE, &format!("/v1/cluster/members/{id}"), &()).await?;
    done(resp, json, &format!("coordinator {id} removed"))
}

fn done(resp: Value, json: bool, message: &str) -> anyhow::Result<()> {
    if json {
        return print_json(&resp);
    }
    outln!("{message} (log index {})", resp.get("log_index").cloned().unwrap_or(Value::Null));
    Ok(())
}

pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(v).context("encoding JSON")?);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gantry_common::model::{GpuSharing, NodeStatus};

    use super::*;

    fn node(drained: bool) -> NodeView {
        NodeView {
            name: "node-1".into(),
            status: NodeStatus::Ready,
            heartbeat_age_s: Some(0.42),
            labels: BTreeMap::from([("dev".to_string(), "true".to_string())]),
            cpu_count: 16,
            memory_total_mib: 65536,
            cpu_usage_pct: None,
            memory_used_mib: None,
            gpu_count: 4,
            gpu_backend: "sim".into(),
            agent_version: "0.1.0".into(),
            drained,
            allocs: 3,
            problem: None,
        }
    }

    #[test]
    fn node_rows_mark_drained_nodes_and_count_allocs() {
        let rows = node_rows(&[node(false), node(true)]);
        assert_eq!(rows[0], ["node-1", "ready", "0.4s", "16", "64 GiB", "4", "3", "sim", "dev=true"]);
        assert_eq!(rows[1][1], "ready,drained");
        let mut bad = node(false);
        bad.problem = Some("not scheduled: GPU 0 (L40S) is in MIG mode".into());
        assert_eq!(node_rows(std::slice::from_ref(&bad))[0][1], "ready,problem");
        assert_eq!(problem_lines(&[bad]), "node-1: not scheduled: GPU 0 (L40S) is in MIG mode\n");
    }

    fn status(leader: Option<u64>, reachable: [bool; 3]) -> ClusterStatus {
        ClusterStatus {
            answered_by: 1,
            leader,
            term: 4,
            commit_index: Some(9),
            last_applied: Some(9),
            members: (0..3)
                .map(|i| gantry_common::api::MemberView {
                    id: i + 1,
                    address: format!("127.0.0.1:{}", 7400 + i),
                    role: if leader == Some(i + 1) { MemberRole::Leader } else { MemberRole::Follower },
                    term: 4,
                    commit_index: None,
                    reachable: reachable[i as usize],
                    protocol: None,
                })
                .collect(),
            stale: None,
        }
    }

    #[test]
    fn quorum_is_judged_from_the_leader_and_reachable_voters() {
        assert_eq!(quorum_problem(&status(Some(1), [true, true, false])), None);
        let e = quorum_problem(&status(None, [true, false, false])).unwrap();
        assert!(
            e.starts_with("no quorum: no leader (coordinator 1 answered; 1 of 3 voters reachable"),
            "{e}"
        );
        let e = quorum_problem(&status(Some(1), [true, false, false])).unwrap();
        assert_eq!(e, "no quorum: 1 of 3 voters reachable, a majority is 2");
        let rows = member_rows(&status(Some(1), [true, false, true]));
        assert_eq!(rows[1][2], "follower (unreachable)");
    }

    #[test]
    fn gpu_rows_show_sharing_allocs_mig_and_mps() {
        let g = GpuView {
            node: "node-1".into(),
            index: 0,
            uuid: "GPU-1".into(),
            model: "H100-80GB".into(),
            memory_total_mib: 81559,
            memory_used_mib: Some(20000),
            utilization_pct: Some(30),
            temperature_c: Some(40),
            power_w: Some(120.4),
            mig_mode: MigMode::Enabled,
            sharing: GpuSharing::Mig,
            allocs: 2,
            mps_clients: None,
            mig_instances: Some(2),
            health: "healthy".into(),
            health_reason: None,
        };
        let mps = GpuView {
            index: 1,
            mig_mode: MigMode::Disabled,
            sharing: GpuSharing::Mps,
            mps_clients: Some(4),
            mig_instances: Some(0),
            ..g.clone()
        };
        let rows = gpu_rows(&[g, mps]);
        assert_eq!(
            rows[0],
            [
                "node-1",
                "0",
                "H100-80GB",
                "mig",
                "2",
                "20000/81559 MiB",
                "30%",
                "40C",
                "120W",
                "enabled (2 inst)",
                "-",
                "healthy",
                "GPU-1"
            ]
        );
        assert_eq!(rows[1][3], "mps");
        assert_eq!(rows[1][9], "disabled");
        assert_eq!(rows[1][10], "4 clients");
    }
}
