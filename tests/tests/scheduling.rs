//! Scheduling under fire: several clients submit at once through different
//! coordinators while the leader is killed. Afterwards every acknowledged
//! submission exists, and the committed state never hands a GPU out twice.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_common::api::ClusterStatus;
use gantry_tests::workloads::*;
use gantry_tests::{serial, wait_for, DevCluster, DevOptions};

const CLIENTS: usize = 4;
const PER_CLIENT: usize = 4;

#[test]
fn concurrent_submissions_with_a_leader_kill_never_double_book() -> anyhow::Result<()> {
    let _serial = serial();
    // 2 nodes x 3 exclusive GPUs = 6 GPUs for 16 single-GPU workloads.
    let mut c = DevCluster::start(DevOptions { gpus: "3xH100-80GB", ..Default::default() })?;
    let sockets: Vec<PathBuf> = c.coordinators().iter().map(|p| p.admin_socket.clone().unwrap()).collect();
    let status: ClusterStatus = wait_for(Duration::from_secs(30), || {
        c.ctl::<ClusterStatus>(&sockets[0], &["status"]).ok().filter(|s| s.leader.is_some())
    })?;
    let leader = status.leader.unwrap();

    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (acked, sockets) = (acked.clone(), sockets.clone());
        clients.push(std::thread::spawn(move || {
            for i in 0..PER_CLIENT {
                let name = format!("w{client}-{i}");
                let spec = sleep_workload(&name, 1, "mode = \"exclusive\"");
                // Like any client: retry through the next coordinator until acknowledged.
                let mut attempt = 0;
                loop {
                    let socket = &sockets[(client + i + attempt) % sockets.len()];
                    match run(socket, &spec, false) {
                        Ok(_) => {
                            acked.lock().unwrap().push(name.clone());
                            break;
                        }
                        Err(_) if attempt < 40 => {
                            attempt += 1;
                            std::thread::sleep(Duration::from_millis(250));
                        }
                        Err(e) => panic!("{name} never acknowledged: {e}"),
                    }
                }
            }
        }));
    }
    // Kill the leader while the submissions are in flight.
    wait_for(Duration::from_secs(30), || (acked.lock().unwrap().len() >= 3).then_some(()))?;
    let victim = c.coordinator(leader)?;
    c.kill9(&victim)?;
    for t in clients {
        t.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    }
    let alive: Vec<PathBuf> = c
        .coordinators()
        .iter()
        .filter(|p| !p.name.ends_with(&leader.to_string()))
        .map(|p| p.admin_socket.clone().unwrap())
        .collect();
    let s = &alive[0];

    // Converged: every GPU taken, every other workload pending with a reason.
    let total = CLIENTS * PER_CLIENT;
    let views = wait_for(Duration::from_secs(60), || {
        let w = workloads(s).ok()?;
        let placed = allocs(s, None).ok()?.iter().filter(|a| a.desired == "run").count();
        let pending = w.iter().filter(|w| w.pending_reason.is_some()).count();
        (w.len() == total && placed == 6 && pending == total - 6).then_some(w)
    })
    .map_err(|e| anyhow::anyhow!("no convergence: {e}; workloads {:?}", workloads(s)))?;
    let acked = acked.lock().unwrap().clone();
    for name in &acked {
        assert!(views.iter().any(|w| &w.name == name), "acknowledged {name} was lost");
    }

    // The committed state, as every surviving coordinator holds it.
    for socket in &alive {
        let mut holders: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for a in allocs(socket, None)?
            .into_iter()
            .filter(|a| !matches!(a.actual.as_str(), "stopped" | "lost" | "failed"))
        {
            for g in &a.gpus {
                holders.entry((a.node.clone(), g.clone())).or_default().push(a.id.clone());
            }
        }
        for (gpu, ids) in &holders {
            assert_eq!(ids.len(), 1, "{gpu:?} is held by {ids:?} (via {})", socket.display());
        }
        assert_eq!(holders.len(), 6, "{holders:?}");
    }
    for name in &acked {
        stop(s, name, Duration::from_secs(60))?;
    }
    Ok(())
}

/// A leader that stalls (SIGSTOP, like a long GC pause or a frozen VM) and
/// comes back after the others elected a successor still believes it leads
/// for a moment. Writes sent to every coordinator meanwhile, the stalled one
/// included, are each acknowledged on their first try: a coordinator that
/// finds it no longer leads retries on the new leader itself.
#[test]
fn writes_across_a_stalled_leader_are_acknowledged_without_client_retries() -> anyhow::Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let _serial = serial();
    let c = DevCluster::start(DevOptions { agents: 1, gpus: "2xH100-80GB", ..Default::default() })?;
    let sockets: Vec<PathBuf> = c.coordinators().iter().map(|p| p.admin_socket.clone().unwrap()).collect();
    let local = |socket: &PathBuf| c.ctl::<ClusterStatus>(socket, &["status", "--local"]).ok();
    let old = wait_for(Duration::from_secs(30), || local(&sockets[0]).and_then(|s| s.leader))?;
    let stalled = c.coordinator(old)?;
    let pid = Pid::from_raw(c.pid(&stalled) as i32);

    kill(pid, Signal::SIGSTOP)?;
    let resumed = (|| -> anyhow::Result<()> {
        // The others elect a successor.
        let others: Vec<&PathBuf> =
            sockets.iter().filter(|s| **s != stalled.admin_socket.clone().unwrap()).collect();
        wait_for(Duration::from_secs(30), || {
            local(others[0]).and_then(|s| s.leader).filter(|l| *l != old).map(|_| ())
        })?;
        // One submission through each coordinator; the stalled one's waits in its socket's backlog.
        let clients: Vec<_> = sockets
            .iter()
            .enumerate()
            .map(|(i, socket)| {
                let socket = socket.clone();
                std::thread::spawn(move || {
                    run(&socket, &sleep_workload(&format!("stall-{i}"), 1, "mode = \"exclusive\""), false)
                })
            })
            .collect();
        // The others' submissions are acknowledged while the stalled one's
        // waits: resume it only then, so all three were in flight across the stall.
        wait_for(Duration::from_secs(30), || {
            let stalled_socket = stalled.admin_socket.clone().unwrap();
            let done = clients
                .iter()
                .zip(&sockets)
                .filter(|(t, s)| **s != stalled_socket && t.is_finished())
                .count();
            (done == sockets.len() - 1).then_some(())
        })?;
        kill(pid, Signal::SIGCONT)?;
        for (i, t) in clients.into_iter().enumerate() {
            let answer = t.join().map_err(|_| anyhow::anyhow!("client {i} panicked"))?;
            answer.map_err(|e| anyhow::anyhow!("submission through coordinator #{i} failed: {e}"))?;
        }
        Ok(())
    })();
    // Never leave the coordinator stopped, whatever failed.
    let _ = kill(pid, Signal::SIGCONT);
    resumed?;

    let s = &sockets[0];
    let names: Vec<String> = workloads(s)?.into_iter().map(|w| w.name).collect();
    assert_eq!(names, ["stall-0", "stall-1", "stall-2"], "every acknowledged submission is committed");
    for name in &names {
        stop(s, name, Duration::from_secs(60))?;
    }
    Ok(())
}
