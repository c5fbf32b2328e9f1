//! Leader duties that run on a timer: follow leadership changes and commit
//! node status changes decided by the liveness tracker.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use gantry_common::model::NodeStatus;

use crate::service::Service;
use crate::state::Command;

/// How often the leader checks node liveness.
const TICK: Duration = Duration::from_millis(500);

pub async fn run(service: Service, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = false;
    let mut held_back = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let now_leading = service.is_leader();
        if now_leading != leading {
            if now_leading {
                info!(id = service.id, "became leader; giving every node a full heartbeat deadline");
                service.telemetry.lock().liveness.became_leader(Instant::now());
            } else {
                info!(id = service.id, "no longer leader; dropping live telemetry");
                service.telemetry.clear();
            }
            leading = now_leading;
        }
        if !leading {
            continue;
        }
        let now = Instant::now();
        let changes = {
            // The statuses first, the telemetry lock after: never one lock
            // held while waiting for the other (heartbeats take the telemetry lock).
            let statuses: Vec<(String, NodeStatus)> =
                service.state.read(|s| s.nodes.iter().map(|(name, n)| (name.clone(), n.status)).collect());
            let mut telemetry = service.telemetry.lock();
            let evaluation = telemetry
                .liveness
                .evaluate(now, statuses.iter().map(|(name, status)| (name.as_str(), *status)));
            if evaluation.held_back > 0 && held_back == 0 {
                warn!(
                    silent = evaluation.held_back,
                    "many nodes fell silent at once: more likely this leader is overloaded or cut off; \
                     they go down if still silent after another node_down_after_secs"
                );
            }
            held_back = evaluation.held_back;
            let changes = evaluation.changes;
            let down = changes.iter().filter(|(_, s)| *s == NodeStatus::Down).count() as u64;
            telemetry.status_changes.0 += down;
            telemetry.status_changes.1 += changes.len() as u64 - down;
            changes
        };
        // Side by side, so that Raft carries them in a few entries: one at a
        // time, each waiting for its commit, they were recorded at about 15 a
        // second under load, so a thousand (a rack lost) took over a minute.
        let mut writes = tokio::task::JoinSet::new();
        for (node, status) in changes {
            info!(%node, status = status.as_str(), "node liveness changed");
            let service = service.clone();
            writes.spawn(async move {
                if let Err(e) = service.write(Command::SetNodeStatus { node: node.clone(), status }).await {
                    warn!(%node, "could not commit node status: {e}");
                }
            });
        }
        while writes.join_next().await.is_some() {}
    }
}
