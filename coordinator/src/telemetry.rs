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
        let mut inner = self.lock();
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
        if self.lock().liveness.last_seen(&hb.node).is_none() {
            return Err(hb);
        }
        self.record(hb, now);
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
