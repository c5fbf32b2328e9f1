//! The coordinator under systemd: a STATUS= line that follows Raft, and the
//! watchdog ping, which stops when the Raft core has failed.
//!
//! READY=1 is sent by `main` through `start::run`'s `ready` callback: once
//! Raft runs and the admin socket is bound. It does not wait for a leader:
//! the first of three coordinators started by systemd would otherwise sit in
//! "activating" until a majority is up (and time out), and a coordinator
//! started empty, to be added with `gantryctl cluster add`, would never be
//! ready. Whether the cluster has a leader shows in the STATUS= line.

use gantry_common::systemd;
use openraft::ServerState;
use tokio::sync::watch;

use crate::raft::{NodeId, Raft};

/// Keeps `systemctl status`'s Status: line in step with Raft until `stop`.
pub async fn follow_raft_status(raft: Raft, id: NodeId, mut stop: watch::Receiver<bool>) {
    let mut metrics = raft.metrics();
    let mut last = String::new();
    loop {
        let line = {
            let m = metrics.borrow_and_update();
            let members = m.membership_config.membership().voter_ids().count();
            match (m.state, m.current_leader) {
                _ if members == 0 => {
                    "not a member of a cluster yet: waiting for `gantryctl cluster add`".into()
                }
                (ServerState::Leader, _) => format!("leader={id} term={} voters={members}", m.current_term),
                (_, Some(leader)) => {
                    format!("follower leader={leader} term={} voters={members}", m.current_term)
                }
                (state, None) => format!("{state:?}: no leader (term={}) voters={members}", m.current_term),
            }
        };
        if line != last {
            systemd::status(&line);
            last = line;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Pings the systemd watchdog while the Raft core is running.
pub async fn watchdog(raft: Raft, mut stop: watch::Receiver<bool>) {
    let healthy = move || raft.metrics().borrow().running_state.is_ok();
    systemd::watchdog(healthy, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await;
}
