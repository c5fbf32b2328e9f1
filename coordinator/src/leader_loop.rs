//! Leader duties that run on a timer: follow leadership changes and commit
//! node status changes decided by the liveness tracker.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::service::Service;
use crate::state::Command;

/// How often the leader checks node liveness.
const TICK: Duration = Duration::from_millis(500);

pub async fn run(service: Service, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = false;
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
            let telemetry = service.telemetry.lock();
            service.state.read(|s| {
                telemetry.liveness.evaluate(now, s.nodes.iter().map(|(name, n)| (name.as_str(), n.status)))
            })
        };
        for (node, status) in changes {
            info!(%node, status = status.as_str(), "node liveness changed");
            if let Err(e) = service.write(Command::SetNodeStatus { node: node.clone(), status }).await {
                warn!(%node, "could not commit node status: {e}");
            }
        }
    }
}
