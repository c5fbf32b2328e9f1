//! A cluster upgraded one coordinator at a time: while one member speaks
//! only protocol 2 (here: a coordinator restarted with
//! `max_protocol_version = 2`, as the previous version speaks; the leader
//! shows it in `gantryctl status`), a batch of workloads goes as one Raft
//! entry per workload, through the leader and through that member alike;
//! once every member speaks 3 it is one entry. `gantryctl run DIR` is the
//! batch. A member capped at 3 (no pre-votes) does not keep the others
//! from electing a leader.
//!
//! The member is capped before the first batch: a rolling upgrade starts
//! from old members. (Taking a member back below a version once entries of
//! it are in the log is a downgrade, which Raft logs do not allow.)

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_common::api::{ClusterStatus, MemberRole, SubmitResult, WorkloadView};
use gantry_tests::{serial, wait_for, DevCluster, DevOptions, ProcessEntry};

fn socket(p: &ProcessEntry) -> PathBuf {
    p.admin_socket.clone().unwrap_or_default()
}

/// A directory of one workload file per name (no GPU, sleeps).
fn batch_dir(root: &Path, names: &[&str]) -> PathBuf {
    let dir = root.join(names.join("-"));
    std::fs::create_dir_all(&dir).unwrap();
    for name in names {
        let toml = format!(
            "name = \"{name}\"\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\n[resources]\ncpu = 0.1\nmemory_mib = 32\n\
             [gpu]\nmode = \"none\"\n"
        );
        std::fs::write(dir.join(format!("{name}.toml")), toml).unwrap();
    }
    dir
}

fn run_dir(c: &DevCluster, via: &ProcessEntry, dir: &Path) -> Vec<SubmitResult> {
    c.ctl(&socket(via), &["run", dir.to_str().unwrap()]).unwrap()
}

fn entries(results: &[SubmitResult]) -> usize {
    let mut indexes: Vec<u64> = results.iter().map(|r| r.log_index).collect();
    indexes.dedup();
    indexes.len()
}

/// Waits until the leader speaks `version` with `member` (`gantryctl status`).
fn wait_protocol(c: &DevCluster, member: &ProcessEntry, version: u32) {
    let id: u64 = member.name.trim_start_matches("coordinator-").parse().unwrap();
    wait_for(Duration::from_secs(30), || {
        let s: ClusterStatus = c.ctl(&socket(&leader(c)), &["status"]).ok()?;
        s.members.iter().find(|m| m.id == id && m.protocol == Some(version)).map(|_| ())
    })
    .unwrap_or_else(|_| panic!("the leader never spoke protocol {version} with {}", member.name));
}

fn leader(c: &DevCluster) -> ProcessEntry {
    wait_for(Duration::from_secs(20), || {
        c.coordinators().into_iter().find(|p| {
            let s: Option<ClusterStatus> = c.ctl(&socket(p), &["status", "--local"]).ok();
            s.is_some_and(|s| s.members.iter().any(|m| m.id == s.answered_by && m.role == MemberRole::Leader))
        })
    })
    .unwrap()
}

/// Restarts a follower with `max_protocol_version = version` (as an older
/// build speaks) and waits until the leader speaks that with it; returns
/// the member and its config as it was, to upgrade it back.
fn cap_a_follower(c: &mut DevCluster, version: u32) -> anyhow::Result<(ProcessEntry, String)> {
    let old = c.coordinators().into_iter().find(|p| p.name != leader(c).name).unwrap();
    c.kill9(&old)?;
    let config = std::fs::read_to_string(&old.config)?;
    std::fs::write(&old.config, format!("max_protocol_version = {version}\n{config}"))?;
    c.restart(&old)?;
    wait_protocol(c, &old, version);
    Ok((old, config))
}

#[test]
fn a_batch_is_one_entry_unless_a_member_speaks_only_protocol_2() -> anyhow::Result<()> {
    let _guard = serial();
    let mut c = DevCluster::start(DevOptions { agents: 1, ..Default::default() })?;
    let files = tempfile::tempdir()?;

    // One member speaks only 2 from the start (the old version).
    let (old, config) = cap_a_follower(&mut c, 2)?;
    let via_leader = run_dir(&c, &leader(&c), &batch_dir(files.path(), &["mid-a", "mid-b", "mid-c"]));
    assert_eq!(
        via_leader.iter().map(|r| r.workload.as_str()).collect::<Vec<_>>(),
        ["mid-a", "mid-b", "mid-c"]
    );
    assert!(via_leader.iter().all(|r| r.changed && r.version == 1));
    assert_eq!(entries(&via_leader), 3, "one entry per workload: {via_leader:?}");
    let via_old = run_dir(&c, &old, &batch_dir(files.path(), &["old-a", "old-b"]));
    assert_eq!(entries(&via_old), 2, "the old member sends them one by one: {via_old:?}");
    // The same batch again changes nothing and answers the same versions.
    let again = run_dir(&c, &old, &batch_dir(files.path(), &["old-a", "old-b"]));
    assert!(again.iter().all(|r| !r.changed && r.version == 1), "{again:?}");

    // Upgraded: every member speaks this build's version (3 brought
    // batches, 4 pre-votes), and a batch is one entry.
    c.kill9(&old)?;
    std::fs::write(&old.config, config)?;
    c.restart(&old)?;
    wait_protocol(&c, &old, gantry_common::wire::PROTOCOL_VERSION);
    let last = run_dir(&c, &leader(&c), &batch_dir(files.path(), &["new-a", "new-b", "new-c"]));
    assert_eq!(entries(&last), 1, "one Raft entry: {last:?}");
    let via_upgraded = run_dir(&c, &old, &batch_dir(files.path(), &["up-a", "up-b"]));
    assert_eq!(entries(&via_upgraded), 1, "forwarded whole: {via_upgraded:?}");

    // Every workload of every batch is there, once.
    let views: Vec<WorkloadView> = c.ctl(&socket(&leader(&c)), &["workloads"])?;
    for name in ["mid-a", "mid-c", "old-b", "new-b", "up-a"] {
        assert_eq!(views.iter().filter(|w| w.name == name).count(), 1, "{name}");
    }
    Ok(())
}

/// One bad file stops the whole batch before anything is sent, and the
/// error names every bad file and field.
#[test]
fn a_batch_with_a_bad_file_submits_nothing() -> anyhow::Result<()> {
    let _guard = serial();
    let c = DevCluster::start(DevOptions { coordinators: 1, agents: 1, ..Default::default() })?;
    let files = tempfile::tempdir()?;
    let dir = batch_dir(files.path(), &["ok-a", "ok-b"]);
    std::fs::write(dir.join("bad.toml"), "name = \"bad\"\ncommand = \"/bin/x\"\nreplicas = 0\n")?;
    std::fs::write(dir.join("dup.toml"), "name = \"ok-a\"\ncommand = \"/bin/x\"\n")?;
    let err =
        c.ctl::<Vec<SubmitResult>>(&socket(&c.coordinator(1)?), &["run", dir.to_str().unwrap()]).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("bad.toml: replicas"), "{message}");
    assert!(message.contains("also defined in") && message.contains("dup.toml"), "{message}");
    assert!(message.contains("nothing was submitted"), "{message}");
    let views: Vec<WorkloadView> = c.ctl(&socket(&c.coordinator(1)?), &["workloads"])?;
    assert!(views.is_empty(), "{views:?}");
    Ok(())
}

/// Pre-votes came with protocol 4. A cluster halfway through the upgrade
/// (one member capped at 3, as the previous version speaks) still elects
/// a new leader when its leader is killed: the new members count the old
/// one's missing pre-vote as a yes, and the old one campaigns as before.
#[test]
fn a_leader_is_elected_while_a_member_speaks_only_protocol_3() -> anyhow::Result<()> {
    let _guard = serial();
    let mut c = DevCluster::start(DevOptions { agents: 0, ..Default::default() })?;
    cap_a_follower(&mut c, 3)?;
    for _ in 0..2 {
        let dead = leader(&c);
        c.kill9(&dead)?;
        let next = wait_for(Duration::from_secs(20), || {
            c.coordinators().into_iter().filter(|p| p.name != dead.name).find(|p| {
                let s: Option<ClusterStatus> = c.ctl(&socket(p), &["status", "--local"]).ok();
                s.is_some_and(|s| {
                    s.members.iter().any(|m| m.id == s.answered_by && m.role == MemberRole::Leader)
                })
            })
        })
        .unwrap_or_else(|_| panic!("no new leader after {} was killed", dead.name));
        assert_ne!(next.name, dead.name);
        c.restart(&dead)?;
        wait_for(Duration::from_secs(30), || {
            let s: ClusterStatus = c.ctl(&socket(&next), &["status"]).ok()?;
            (s.members.iter().filter(|m| m.reachable).count() == 3).then_some(())
        })?;
    }
    Ok(())
}

/// Label writes sent at once (a node carries at most 64 labels).
const WRITERS: usize = 32;

/// [`WRITERS`] label writes to the leader's socket at once, each its own key
/// (`burst-I` = `round`); every one must succeed.
fn burst(c: &DevCluster, node: &str, round: usize) {
    let socket = socket(&leader(c));
    let start = std::sync::Arc::new(std::sync::Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (socket, start, node) = (socket.clone(), start.clone(), node.to_string());
            std::thread::spawn(move || {
                start.wait();
                let body = format!(r#"{{"set":{{"burst-{i}":"{round}"}}}}"#);
                gantry_tests::http::admin(&socket, "PUT", &format!("/v1/nodes/{node}/labels"), Some(&body))
            })
        })
        .collect();
    for w in writers {
        let (status, body) = w.join().unwrap().unwrap();
        assert!((200..300).contains(&status), "label write: {status} {body}");
    }
    let nodes: Vec<serde_json::Value> = gantry_tests::http::admin_get(&socket, "/v1/nodes").unwrap();
    let labels = &nodes.iter().find(|n| n["name"] == node).unwrap()["labels"];
    for i in 0..WRITERS {
        assert_eq!(labels[format!("burst-{i}")], round.to_string(), "burst-{i} in {labels}");
    }
}

/// The leader's count of writes it proposed inside groups.
fn grouped_writes(c: &DevCluster) -> u64 {
    let (_, text) = gantry_tests::http::admin(&socket(&leader(c)), "GET", "/metrics", None).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("gantry_raft_grouped_writes_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn writes_are_grouped_only_when_every_member_speaks_protocol_5() -> anyhow::Result<()> {
    let _guard = serial();
    let mut c = DevCluster::start(DevOptions { agents: 1, ..Default::default() })?;
    let node = wait_for(Duration::from_secs(30), || {
        let nodes: Vec<serde_json::Value> =
            gantry_tests::http::admin_get(&socket(&leader(&c)), "/v1/nodes").ok()?;
        nodes.first().and_then(|n| n["name"].as_str()).map(str::to_string)
    })?;

    let (old, config) = cap_a_follower(&mut c, 4)?;
    // Counted from here: while it was down it counted as the 5 it had spoken.
    let before = grouped_writes(&c);
    for round in 0..3 {
        burst(&c, &node, round);
    }
    assert_eq!(grouped_writes(&c), before, "a member speaks 4: every write its own entry");

    c.kill9(&old)?;
    std::fs::write(&old.config, config)?;
    c.restart(&old)?;
    wait_protocol(&c, &old, gantry_common::wire::PROTOCOL_VERSION);
    // Concurrent writes overlap at the leader; bursts for a while make sure.
    let mut round = 3;
    let grouped = wait_for(Duration::from_secs(30), || {
        round += 1;
        burst(&c, &node, round);
        let n = grouped_writes(&c);
        (n > 0).then_some(n)
    });
    assert!(
        grouped.is_ok(),
        "{} bursts of {WRITERS} writes at once, and the leader never grouped any",
        round - 3
    );
    Ok(())
}
