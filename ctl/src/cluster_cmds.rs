//! `gantryctl status`, `nodes`, `gpus`, `label`, `cluster add|remove`.

use std::collections::BTreeMap;

use anyhow::Context;
use gantry_common::api::{ClusterStatus, GpuView, MemberRole, NodeView};
use hyper::Method;
use serde_json::Value;

use crate::admin_client::AdminClient;
use crate::table::{opt, render};

pub async fn status(client: &AdminClient, local: bool, json: bool) -> anyhow::Result<()> {
    let s: ClusterStatus = client.get(if local { "/v1/status?local=true" } else { "/v1/status" }).await?;
    if json {
        return print_json(&s);
    }
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            let role = match m.role {
                MemberRole::Leader => "leader",
                MemberRole::Follower => "follower",
                MemberRole::Learner => "learner",
            };
            vec![
                m.id.to_string(),
                m.address.clone(),
                role.to_string(),
                m.term.to_string(),
                opt(m.commit_index),
            ]
        })
        .collect();
    print!("{}", render(&["ID", "ADDRESS", "ROLE", "TERM", "COMMIT"], &rows));
    if s.leader.is_none() {
        println!("\nno leader elected (answered by coordinator {})", s.answered_by);
    }
    Ok(())
}

pub async fn nodes(client: &AdminClient, json: bool) -> anyhow::Result<()> {
    let nodes: Vec<NodeView> = client.get("/v1/nodes").await?;
    if json {
        return print_json(&nodes);
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                n.name.clone(),
                n.status.as_str().to_string(),
                n.heartbeat_age_s.map(|a| format!("{a:.1}s")).unwrap_or_else(|| "-".into()),
                n.cpu_count.to_string(),
                format!("{} GiB", n.memory_total_mib / 1024),
                n.gpu_count.to_string(),
                n.gpu_backend.clone(),
                if labels.is_empty() { "-".into() } else { labels.join(",") },
            ]
        })
        .collect();
    print!(
        "{}",
        render(&["NAME", "STATUS", "HEARTBEAT", "CPUS", "MEMORY", "GPUS", "BACKEND", "LABELS"], &rows)
    );
    Ok(())
}

pub async fn gpus(client: &AdminClient, json: bool) -> anyhow::Result<()> {
    let gpus: Vec<GpuView> = client.get("/v1/gpus").await?;
    if json {
        return print_json(&gpus);
    }
    let rows: Vec<Vec<String>> = gpus
        .iter()
        .map(|g| {
            vec![
                g.node.clone(),
                g.index.to_string(),
                g.model.clone(),
                format!("{}/{} MiB", opt(g.memory_used_mib), g.memory_total_mib),
                g.utilization_pct.map(|u| format!("{u}%")).unwrap_or_else(|| "-".into()),
                g.temperature_c.map(|t| format!("{t}C")).unwrap_or_else(|| "-".into()),
                g.power_w.map(|p| format!("{p:.0}W")).unwrap_or_else(|| "-".into()),
                g.mig_mode.as_str().to_string(),
                g.health.clone(),
                g.uuid.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &["NODE", "INDEX", "MODEL", "MEMORY", "UTIL", "TEMP", "POWER", "MIG", "HEALTH", "UUID"],
            &rows
        )
    );
    Ok(())
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
    let resp: Value = client.send(Method::PUT, &format!("/v1/nodes/{node}/labels"), &body).await?;
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
    println!("{message} (log index {})", resp.get("log_index").cloned().unwrap_or(Value::Null));
    Ok(())
}

pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v).context("encoding JSON")?);
    Ok(())
}
