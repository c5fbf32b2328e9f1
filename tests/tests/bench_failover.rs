//! Failover benchmark (ignored by default; run on release binaries):
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo test --release -p gantry-tests --test bench_failover -- --ignored --nocapture
//! ```
//!
//! Two scenarios, each printing every run and the medians:
//! - `steady`: a fresh 3-coordinator cluster per run; its leader is killed
//!   with SIGKILL once.
//! - `churn`: one cluster; the leader is killed, the victim restarted, and
//!   the next leader killed a few seconds later, repeatedly.
//!
//! Measured: the time until a surviving coordinator reports itself leader,
//! and until both nodes report to it again. Nothing about time is asserted
//! (these machines are noisy), only that a new leader is always elected.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use gantry_common::api::{ClusterStatus, MemberRole, NodeView};
use gantry_tests::{serial, wait_for, DevCluster, DevOptions};

const RUNS: usize = 7;

#[test]
#[ignore = "benchmark: run explicitly with --ignored on release binaries"]
fn failover_time_steady() -> anyhow::Result<()> {
    let _serial = serial();
    let mut elect = Vec::new();
    let mut nodes_back = Vec::new();
    for run in 0..RUNS {
        let mut c = DevCluster::start(DevOptions { gpus: "8xH100-80GB", ..Default::default() })?;
        let (t_elect, t_nodes, killed, new_leader) = kill_leader_once(&mut c)?;
        println!("steady run {run}: killed {killed}; {new_leader} leads after {t_elect:?}; both nodes reporting after {t_nodes:?}");
        elect.push(t_elect);
        nodes_back.push(t_nodes);
    }
    report("steady", elect, nodes_back);
    Ok(())
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored on release binaries"]
fn failover_time_churn() -> anyhow::Result<()> {
    let _serial = serial();
    let mut c = DevCluster::start(DevOptions { gpus: "8xH100-80GB", ..Default::default() })?;
    let mut elect = Vec::new();
    let mut nodes_back = Vec::new();
    for run in 0..RUNS {
        let (t_elect, t_nodes, killed, new_leader) = kill_leader_once(&mut c)?;
        println!("churn run {run}: killed {killed}; {new_leader} leads after {t_elect:?}; both nodes reporting after {t_nodes:?}");
        elect.push(t_elect);
        nodes_back.push(t_nodes);
        let victim = c.coordinator(killed)?;
        c.restart(&victim)?;
    }
    report("churn", elect, nodes_back);
    Ok(())
}

/// Kills the current leader once a steady state is reached; returns the time
/// to a new leader, the time until both nodes report to it, and the ids.
fn kill_leader_once(c: &mut DevCluster) -> anyhow::Result<(Duration, Duration, u64, u64)> {
    let leader = leader_of(c, None, Duration::from_secs(30))?;
    let victim = c.coordinator(leader)?;
    wait_for(Duration::from_secs(30), || nodes_fresh(c, leader).then_some(()))?;
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    c.kill9(&victim)?;
    let new_leader = leader_of(c, Some(leader), Duration::from_secs(30))?;
    let t_elect = t0.elapsed();
    wait_for(Duration::from_secs(30), || nodes_fresh(c, new_leader).then_some(()))?;
    Ok((t_elect, t0.elapsed(), leader, new_leader))
}

fn report(name: &str, mut elect: Vec<Duration>, mut nodes_back: Vec<Duration>) {
    elect.sort();
    nodes_back.sort();
    let n = elect.len();
    println!(
        "{name}: median over {n} runs: new leader {:?} (min {:?}, max {:?}); nodes reporting again {:?}",
        elect[n / 2],
        elect[0],
        elect[n - 1],
        nodes_back[n / 2]
    );
}

/// Polls every survivor's own view (every 50 ms) until one says it leads.
fn leader_of(c: &DevCluster, except: Option<u64>, timeout: Duration) -> anyhow::Result<u64> {
    wait_for(timeout, || {
        c.coordinators().iter().find_map(|p| {
            let s: ClusterStatus = c.ctl(p.admin_socket.as_ref()?, &["status", "--local"]).ok()?;
            let me = s.members.iter().find(|m| m.id == s.answered_by)?;
            (me.role == MemberRole::Leader && Some(s.answered_by) != except).then_some(s.answered_by)
        })
    })
}

fn nodes_fresh(c: &DevCluster, leader: u64) -> bool {
    let Ok(p) = c.coordinator(leader) else { return false };
    let Some(socket) = p.admin_socket.as_ref() else { return false };
    let Ok(nodes) = c.ctl::<Vec<NodeView>>(socket, &["nodes"]) else { return false };
    nodes.len() == 2 && nodes.iter().all(|n| n.heartbeat_age_s.is_some_and(|a| a < 1.5))
}
