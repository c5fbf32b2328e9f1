//! A real cluster of processes on loopback: leader failover, catch-up after
//! restart, and node liveness.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gantry_common::api::{ClusterStatus, MemberRole, NodeView};
use gantry_common::model::NodeStatus;
use gantry_tests::{serial, wait_for, DevCluster, DevOptions, ProcessEntry};
use serde_json::Value;

/// Waits until some coordinator other than `except` reports itself leader;
/// returns that coordinator's id.
fn wait_new_leader(c: &DevCluster, except: Option<u64>, timeout: Duration) -> anyhow::Result<u64> {
    wait_for(timeout, || {
        c.coordinators().iter().filter(|p| Some(id_of(p)) != except).find_map(|p| {
            let socket = p.admin_socket.as_ref()?;
            let s: ClusterStatus = c.ctl(socket, &["status", "--local"]).ok()?;
            let me = s.members.iter().find(|m| m.id == s.answered_by)?;
            (me.role == MemberRole::Leader).then_some(s.answered_by)
        })
    })
}

fn id_of(p: &ProcessEntry) -> u64 {
    p.name.trim_start_matches("coordinator-").parse().unwrap_or(0)
}

fn socket(p: &ProcessEntry) -> std::path::PathBuf {
    p.admin_socket.clone().unwrap_or_default()
}

fn nodes(c: &DevCluster, via: &ProcessEntry) -> anyhow::Result<Vec<NodeView>> {
    c.ctl(&socket(via), &["nodes"])
}

#[test]
fn leader_kill_elects_new_leader_and_keeps_writes_and_nodes() -> anyhow::Result<()> {
    let _serial = serial();
    let mut c = DevCluster::start(DevOptions::default())?;
    wait_new_leader(&c, None, Duration::from_secs(30))?;

    // Acknowledged writes, sent through whichever coordinator (followers forward).
    let mut acked = BTreeMap::new();
    for (i, via) in c.coordinators().iter().cycle().take(6).enumerate() {
        let kv = format!("k{i}=v{i}");
        let r: Value = c.ctl(&socket(via), &["label", "node-1", &kv])?;
        assert!(r["log_index"].as_u64().is_some(), "write {i} not acknowledged: {r}");
        acked.insert(format!("k{i}"), format!("v{i}"));
    }

    for round in 0..3 {
        let leader_now = wait_new_leader(&c, None, Duration::from_secs(30))?;
        let victim = c.coordinator(leader_now)?;
        let killed_at = Instant::now();
        c.kill9(&victim)?;
        let new_leader = wait_new_leader(&c, Some(leader_now), Duration::from_secs(30))
            .map_err(|e| anyhow::anyhow!("round {round}: no new leader after killing {leader_now}: {e}"))?;
        eprintln!(
            "round {round}: leader {leader_now} killed, {new_leader} leads after {:?}",
            killed_at.elapsed()
        );
        assert_ne!(new_leader, leader_now);
        // Both nodes stay ready and report to the new leader within a few seconds.
        let survivor = c.coordinator(new_leader)?;
        wait_for(Duration::from_secs(15), || {
            let ns = nodes(&c, &survivor).ok()?;
            let fresh = ns.len() == 2
                && ns
                    .iter()
                    .all(|n| n.status == NodeStatus::Ready && n.heartbeat_age_s.is_some_and(|a| a < 3.0));
            fresh.then_some(())
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "round {round}: nodes not reporting to new leader: {e}\n{}",
                c.log_tail(&c.agents()[0])
            )
        })?;
        // No acknowledged write lost.
        let ns = nodes(&c, &survivor)?;
        let n1 = ns.iter().find(|n| n.name == "node-1").ok_or_else(|| anyhow::anyhow!("node-1 gone"))?;
        for (k, v) in &acked {
            assert_eq!(n1.labels.get(k), Some(v), "round {round}: acknowledged label {k} lost");
        }
        // Bring the old leader back so the next round again has three members.
        c.restart(&victim)?;
    }
    Ok(())
}

#[test]
fn restarted_coordinator_catches_up_from_its_store() -> anyhow::Result<()> {
    let _serial = serial();
    let mut c = DevCluster::start(DevOptions::default())?;
    let leader = wait_new_leader(&c, None, Duration::from_secs(30))?;
    let follower = c
        .coordinators()
        .into_iter()
        .find(|p| id_of(p) != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;
    let leader_entry = c.coordinator(leader)?;
    c.kill9(&follower)?;

    // Writes while it is down.
    let mut last_index = 0;
    for i in 0..5 {
        let r: Value = c.ctl(&socket(&leader_entry), &["label", "node-2", &format!("while-down-{i}=yes")])?;
        last_index = r["log_index"].as_u64().unwrap_or(0);
    }
    assert!(last_index > 0);

    c.restart(&follower)?;
    // It comes back from its redb store and catches up past the writes.
    let caught_up = wait_for(Duration::from_secs(30), || {
        let s: ClusterStatus = c.ctl(&socket(&follower), &["status", "--local"]).ok()?;
        (s.answered_by == id_of(&follower) && s.last_applied.unwrap_or(0) >= last_index).then_some(s)
    })
    .map_err(|e| anyhow::anyhow!("restarted follower did not catch up: {e}\n{}", c.log_tail(&follower)))?;
    assert!(caught_up.leader.is_some());
    let me = caught_up.members.iter().find(|m| m.id == id_of(&follower)).map(|m| m.role.clone());
    // It rejoined without deposing the leader (no election from the restarted node).
    assert_eq!(me, Some(MemberRole::Follower), "{caught_up:?}\n{}", c.log_tail(&follower));
    let ns = nodes(&c, &follower)?;
    let n2 = ns.iter().find(|n| n.name == "node-2").ok_or_else(|| anyhow::anyhow!("node-2 gone"))?;
    assert_eq!(n2.labels.get("while-down-4").map(String::as_str), Some("yes"));
    Ok(())
}

/// A follower whose data directory is gone (a wiped or replaced disk)
/// starts empty. Found by `gantryctl bench swarm`: the leader's Raft core
/// panicked ("follower log reversion is not allowed") and the leader
/// process lingered without Raft. Now the leader catches it up from
/// nothing, keeps leading and keeps committing.
#[test]
fn wiped_follower_is_caught_up_and_the_leader_keeps_leading() -> anyhow::Result<()> {
    let _serial = serial();
    let mut c = DevCluster::start(DevOptions::default())?;
    // A term past the first, as in any cluster that has seen a failover
    // (the bench's was 3): the wiped node's own first campaign (term 1)
    // then cannot disturb the leader, which must catch it up.
    let first = wait_new_leader(&c, None, Duration::from_secs(30))?;
    let first_entry = c.coordinator(first)?;
    c.kill9(&first_entry)?;
    let leader = wait_new_leader(&c, Some(first), Duration::from_secs(30))?;
    c.restart(&first_entry)?;
    let leader_entry = c.coordinator(leader)?;
    let follower = c.coordinators().into_iter().find(|p| id_of(p) != leader).unwrap();
    for i in 0..5 {
        let _: Value = c.ctl(&socket(&leader_entry), &["label", "node-1", &format!("before-{i}=yes")])?;
    }
    c.kill9(&follower)?;
    let data = follower.config.parent().unwrap().join("data");
    std::fs::remove_dir_all(&data)?;
    c.restart(&follower)?;
    let mut last_index = 0;
    for i in 0..3 {
        let r: Value = c.ctl(&socket(&leader_entry), &["label", "node-1", &format!("after-{i}=yes")])?;
        last_index = r["log_index"].as_u64().unwrap_or(0);
    }
    wait_for(Duration::from_secs(30), || {
        let s: ClusterStatus = c.ctl(&socket(&follower), &["status", "--local"]).ok()?;
        (s.answered_by == id_of(&follower) && s.last_applied.unwrap_or(0) >= last_index).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("the wiped follower did not catch up: {e}\n{}", c.log_tail(&follower)))?;
    // Its state came back whole, writes from before the wipe included.
    let ns = nodes(&c, &follower)?;
    let n1 = ns.iter().find(|n| n.name == "node-1").ok_or_else(|| anyhow::anyhow!("node-1 gone"))?;
    assert_eq!(n1.labels.get("before-0").map(String::as_str), Some("yes"));
    assert_eq!(n1.labels.get("after-2").map(String::as_str), Some("yes"));
    // The leader still runs Raft and commits.
    let r: Value = c.ctl(&socket(&leader_entry), &["label", "node-1", "later=yes"])?;
    assert!(r["log_index"].as_u64().unwrap_or(0) > last_index, "{r}");
    assert_eq!(c.log_count(&leader_entry, "log reversion"), 0, "{}", c.log_tail(&leader_entry));
    assert_eq!(wait_new_leader(&c, None, Duration::from_secs(10))?, leader, "leadership moved");
    Ok(())
}

/// A follower killed and restarted on an idle cluster rejoins under the same
/// leader, in the same term. openraft 0.9 has no pre-vote, and the leader's
/// reconnect to a peer that was down can take longer than the restarted
/// node's election timer: without the rejoin grace the restarted node
/// campaigned and, its log being as long as anyone's, often won.
/// Waits until every member, asked about itself, names one leader in one
/// term (an election still going on at start-up is not what the tests
/// that use this are about); returns that leader and term.
fn settled(c: &DevCluster) -> anyhow::Result<(u64, u64)> {
    wait_for(Duration::from_secs(30), || {
        let views: Vec<ClusterStatus> = c
            .coordinators()
            .iter()
            .filter_map(|p| c.ctl::<ClusterStatus>(&socket(p), &["status", "--local"]).ok())
            .collect();
        let first = views.first()?;
        let agreed =
            views.iter().all(|v| v.leader.is_some() && v.leader == first.leader && v.term == first.term);
        (views.len() == 3 && agreed).then_some((first.leader?, first.term))
    })
}

#[test]
fn restarted_follower_does_not_depose_the_leader() -> anyhow::Result<()> {
    let _serial = serial();
    let mut c = DevCluster::start(DevOptions { agents: 0, ..Default::default() })?;
    wait_new_leader(&c, None, Duration::from_secs(30))?;
    let status =
        |c: &DevCluster, p: &ProcessEntry| c.ctl::<ClusterStatus>(&socket(p), &["status", "--local"]);
    let (leader, term) = settled(&c)?;
    let follower = c.coordinators().into_iter().find(|p| id_of(p) != leader).unwrap();
    c.kill9(&follower)?;
    // The fault itself: a follower down long enough that the leader's
    // connector is between attempts to it when it comes back.
    std::thread::sleep(Duration::from_secs(2));
    let allowed_before = c.log_count(&follower, "elections allowed");
    c.restart(&follower)?;
    wait_for(Duration::from_secs(30), || {
        status(&c, &follower).ok().filter(|s| s.answered_by == id_of(&follower))
    })?;
    // The restarted node may campaign once its grace ended: wait for that...
    wait_for(Duration::from_secs(30), || {
        (c.log_count(&follower, "elections allowed") > allowed_before).then_some(())
    })?;
    // ...then watch for an election for longer than its election timer and
    // the watchdog's patience (3 x 600 ms): an observation window, not a wait.
    std::thread::sleep(Duration::from_secs(3));
    for p in c.coordinators() {
        let s = status(&c, &p)?;
        assert_eq!(
            s.leader,
            Some(leader),
            "{} sees another leader: {s:?}\n{}",
            p.name,
            c.log_tail(&follower)
        );
        assert_eq!(s.term, term, "{}: an election happened: {s:?}\n{}", p.name, c.log_tail(&follower));
    }
    Ok(())
}

/// A follower that hears nothing for longer than its election timeout
/// (here: stopped with SIGSTOP for 2 s) must not raise the term when it
/// resumes while the other follower still hears the leader: it asks for a
/// pre-vote first, and the other says no. Without pre-votes it campaigned
/// with a higher term the moment it resumed, and the leader stepped down.
#[test]
fn a_paused_follower_does_not_depose_the_leader() -> anyhow::Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let _serial = serial();
    let c = DevCluster::start(DevOptions { agents: 0, ..Default::default() })?;
    wait_new_leader(&c, None, Duration::from_secs(30))?;
    let status =
        |c: &DevCluster, p: &ProcessEntry| c.ctl::<ClusterStatus>(&socket(p), &["status", "--local"]);
    let (leader, term) = settled(&c)?;
    let follower = c.coordinators().into_iter().find(|p| id_of(p) != leader).unwrap();
    let pid = Pid::from_raw(c.pid(&follower) as i32);
    for round in 0..3 {
        kill(pid, Signal::SIGSTOP)?;
        std::thread::sleep(Duration::from_secs(2));
        kill(pid, Signal::SIGCONT)?;
        // Longer than its election timer: an observation window, not a wait.
        std::thread::sleep(Duration::from_secs(2));
        for p in c.coordinators() {
            let s = status(&c, &p)?;
            assert_eq!(s.leader, Some(leader), "round {round}: {} sees another leader: {s:?}", p.name);
            assert_eq!(
                s.term,
                term,
                "round {round}: {}: an election happened: {s:?}\n{}",
                p.name,
                c.log_tail(&follower)
            );
        }
    }
    assert!(
        c.log_count(&follower, "the other voters do not agree") > 0,
        "the paused follower never asked for a pre-vote:\n{}",
        c.log_tail(&follower)
    );
    Ok(())
}

#[test]
fn silent_node_is_marked_down_and_recovers() -> anyhow::Result<()> {
    let _serial = serial();
    let mut c = DevCluster::start(DevOptions {
        coordinators: 1,
        agents: 2,
        node_down_after_secs: 2,
        ..Default::default()
    })?;
    let coord = c.coordinators()[0].clone();
    let agent =
        c.agents().into_iter().find(|a| a.name == "node-2").ok_or_else(|| anyhow::anyhow!("no node-2"))?;
    c.kill9(&agent)?;
    wait_for(Duration::from_secs(15), || {
        let ns = nodes(&c, &coord).ok()?;
        let down = ns.iter().any(|n| n.name == "node-2" && n.status == NodeStatus::Down);
        let other_ready = ns.iter().any(|n| n.name == "node-1" && n.status == NodeStatus::Ready);
        (down && other_ready).then_some(())
    })?;
    c.restart(&agent)?;
    wait_for(Duration::from_secs(15), || {
        let ns = nodes(&c, &coord).ok()?;
        ns.iter().all(|n| n.status == NodeStatus::Ready).then_some(())
    })?;
    Ok(())
}

#[test]
fn coordinator_is_added_and_removed() -> anyhow::Result<()> {
    let _serial = serial();
    let mut c = DevCluster::start(DevOptions { coordinators: 1, agents: 0, ..Default::default() })?;
    let first = c.coordinators()[0].clone();

    // Bad input is refused with the field named, and nothing changes.
    let err =
        c.ctl::<Value>(&socket(&first), &["cluster", "add", "--id", "2", "--addr", "nowhere"]).unwrap_err();
    assert!(err.to_string().contains("addr"), "{err}");
    let err = c.ctl::<Value>(&socket(&first), &["cluster", "remove", "--id", "1"]).unwrap_err();
    assert!(err.to_string().contains("last voter"), "{err}");

    // A new coordinator, started with no initial members, as an operator would.
    let home = c.info.dir.join("coordinator-2");
    std::fs::create_dir_all(&home)?;
    let pki = c.pki();
    let out = std::process::Command::new(gantry_tests::bin("gantryctl"))
        .args([
            "certs",
            "issue",
            "--role",
            "coordinator",
            "--name",
            "coordinator-2",
            "--san",
            "127.0.0.1",
            "--dir",
        ])
        .arg(&pki)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let config = format!(
        "id = 2\nlisten = \"{addr}\"\ndata_dir = \"{d}/data\"\nadmin_socket = \"{d}/admin.sock\"\n[tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/coordinator-coordinator-2.pem\"\nkey = \"{p}/coordinator-coordinator-2.key\"\n",
        d = home.display(),
        p = pki.display()
    );
    std::fs::write(home.join("coordinator.toml"), config)?;
    c.spawn("gantry-coordinator", &home.join("coordinator.toml"), &home.join("log"))?;
    let second_socket = home.join("admin.sock");
    wait_for(Duration::from_secs(20), || second_socket.exists().then_some(()))?;

    let r: Value = c.ctl(&socket(&first), &["cluster", "add", "--id", "2", "--addr", &addr])?;
    assert!(r["log_index"].as_u64().is_some(), "{r}");
    // The new member sees the same cluster from its own store.
    let s = wait_for(Duration::from_secs(20), || {
        let s: ClusterStatus = c.ctl(&second_socket, &["status", "--local"]).ok()?;
        (s.answered_by == 2 && s.members.len() == 2 && s.leader == Some(1)).then_some(s)
    })?;
    let roles: BTreeMap<u64, MemberRole> = s.members.iter().map(|m| (m.id, m.role.clone())).collect();
    assert_eq!(roles.get(&2), Some(&MemberRole::Follower));

    // A write through the new member reaches the leader and is applied on both.
    let r: Value = c.ctl(&second_socket, &["cluster", "remove", "--id", "2"])?;
    assert!(r["log_index"].as_u64().is_some(), "{r}");
    let s: ClusterStatus = c.ctl(&socket(&first), &["status"])?;
    assert_eq!(s.members.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1]);
    Ok(())
}

#[test]
fn dev_stops_every_process_on_sigterm() -> anyhow::Result<()> {
    let _serial = serial();
    let mut c = DevCluster::start(DevOptions { coordinators: 3, agents: 2, ..Default::default() })?;
    let pids: Vec<u32> = c.info.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids.len(), 5);
    for pid in &pids {
        assert!(alive(*pid), "process {pid} not running before the test");
    }
    let status = c.terminate_dev(Duration::from_secs(30))?;
    assert!(status.success(), "gantryctl dev exited with {status}");
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} still running after gantryctl dev stopped");
    }
    Ok(())
}

/// Whether a process exists (signal 0 probes without sending anything).
fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None).is_ok()
}
