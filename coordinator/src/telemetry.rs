//! The leader's memory of live telemetry. Never replicated: a new leader
//! rebuilds it from the heartbeats that follow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gantry_common::model::{GpuTelemetry, HostTelemetry};
use gantry_common::wire::Heartbeat;

use crate::liveness::Liveness;

/// A stored sample older than this is replaced by any new one.
const STALE_SAMPLE: Duration = Duration::from_secs(3);

/// The latest sample from one node.
#[derive(Clone, Debug)]
pub struct NodeSample {
    pub seq: u64,
    pub at: Instant,
    pub host: HostTelemetry,
    pub gpus: Vec<GpuTelemetry>,
}

/// Liveness and samples behind one std `Mutex` (nothing awaits while it is held).
#[derive(Clone)]
pub struct TelemetryStore {
    inner: Arc<Mutex<Inner>>,
}

pub struct Inner {
    pub liveness: Liveness,
    pub samples: HashMap<String, NodeSample>,
    pub heartbeats_received: u64,
    /// Liveness changes this coordinator decided while leading: (down, ready).
    pub status_changes: (u64, u64),
    /// Nodes whose last desired-set stream failed: when, and why.
    pub stream_problems: HashMap<String, (Instant, String)>,
}

impl TelemetryStore {
    pub fn new(node_down_after: Duration, failover_grace: Duration) -> TelemetryStore {
        TelemetryStore {
            inner: Arc::new(Mutex::new(Inner {
                liveness: Liveness::new(node_down_after, failover_grace),
                samples: HashMap::new(),
                heartbeats_received: 0,
                status_changes: (0, 0),
                stream_problems: HashMap::new(),
            })),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat. A sample with a lower sequence number than the
    /// stored one (reordered) only refreshes liveness, unless the stored one is
    /// stale, which is what an agent restart (sequence back to 1) looks like.
    pub fn record(&self, hb: Heartbeat, now: Instant) {
        Self::record_in(&mut self.lock(), hb, now);
    }

    fn record_in(inner: &mut Inner, hb: Heartbeat, now: Instant) {
        inner.heartbeats_received += 1;
        inner.liveness.heartbeat(&hb.node, now);
        let newer = inner
            .samples
            .get(&hb.node)
            .is_none_or(|s| hb.seq > s.seq || now.saturating_duration_since(s.at) > STALE_SAMPLE);
        if newer {
            inner.samples.insert(hb.node, NodeSample { seq: hb.seq, at: now, host: hb.host, gpus: hb.gpus });
        }
    }

    /// Records a heartbeat from a node already heard from during this
    /// leadership (it registered with this leader, so it is in the state);
    /// gives the heartbeat back otherwise, for the caller to check.
    pub fn record_if_heard(&self, hb: Heartbeat, now: Instant) -> Result<(), Heartbeat> {
        let mut inner = self.lock();
        if inner.liveness.last_seen(&hb.node).is_none() {
            return Err(hb);
        }
        Self::record_in(&mut inner, hb, now);
        Ok(())
    }

    pub fn sample(&self, node: &str) -> Option<NodeSample> {
        self.lock().samples.get(node).cloned()
    }

    /// Forgets every sample: this coordinator stopped leading.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.liveness.lost_leadership();
        inner.samples.clear();
        inner.stream_problems.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn beat(node: &str, seq: u64) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            seq,
            host: HostTelemetry { cpu_usage_pct: 1.0, memory_used_mib: 1 },
            gpus: Vec::new(),
        }
    }

    #[test]
    fn only_nodes_heard_this_leadership_skip_the_state_check() {
        let store = TelemetryStore::new(Duration::from_secs(10), Duration::from_secs(30));
        let now = Instant::now();
        store.lock().liveness.became_leader(now);
        // Never heard: handed back for the caller to check, nothing recorded.
        let back = store.record_if_heard(beat("n1", 1), now).unwrap_err();
        assert_eq!(back.node, "n1");
        assert_eq!(store.lock().heartbeats_received, 0);
        assert!(store.sample("n1").is_none());
        // Heard (registered): recorded at once.
        store.lock().liveness.heartbeat("n1", now);
        assert!(store.record_if_heard(beat("n1", 2), now).is_ok());
        assert_eq!(store.lock().heartbeats_received, 1);
        assert_eq!(store.sample("n1").map(|s| s.seq), Some(2));
        // A new leadership forgets who was heard.
        store.clear();
        store.lock().liveness.became_leader(now);
        assert!(store.record_if_heard(beat("n1", 3), now).is_err());
    }
}
