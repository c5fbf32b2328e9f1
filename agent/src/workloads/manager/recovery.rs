//! What a (re)started agent does before its first tick: settle records
//! caught mid-operation and adopt what an earlier agent started.

use super::*;

impl Manager {
    /// After a (re)start: records caught mid-operation are settled, containers
    /// missing from the state file are found by label, and the sim's MIG
    /// instances are recreated for allocations that hold them.
    pub(super) async fn recover(&mut self) {
        let now = now_ms();
        for r in self.state.records.values_mut() {
            // Probe schedules are not persisted: probe running ones soon.
            r.next_probe_ms = now;
            match (r.phase, &r.handle) {
                (Phase::Starting, None) => r.start_failed(now, "the agent stopped while starting it".into()),
                (Phase::Starting | Phase::Stopping { .. }, Some(_)) => {
                    r.phase = Phase::Running { since_ms: now }
                }
                _ => {}
            }
        }
        for (id, r) in &self.state.records {
            if let Some(handle @ Handle::Process { .. }) = &r.handle {
                self.runtimes.process.adopt(id, handle);
            }
        }
        if let Some(docker) = self.runtimes.docker.clone() {
            match docker.discover(&self.cfg.node).await {
                Ok(found) => {
                    for (id, handle) in found {
                        self.adopt_container(id, handle, now);
                    }
                }
                Err(e) => warn!("finding containers of earlier agents: {e}"),
            }
        }
        let held: Vec<(u32, String, u8)> = self
            .state
            .records
            .values()
            .filter(|r| matches!(r.phase, Phase::Running { .. } | Phase::Exited { .. }))
            .flat_map(|r| r.gpus.iter())
            .filter_map(|g| match &g.share {
                GpuShare::Mig { profile, start } => Some((g.index, profile.clone(), *start)),
                _ => None,
            })
            .collect();
        if self.gpus.name() == "sim" {
            for (index, profile, start) in held {
                if let Err(e) = self.gpus.with(|b| b.open_mig(index, &profile, start)) {
                    warn!("re-creating simulated MIG instance {profile}@{start} on GPU {index}: {e}");
                }
            }
        }
        self.save();
    }

    pub(super) fn adopt_container(&mut self, id: String, handle: Handle, now: u64) {
        if let Some(r) = self.state.records.get_mut(&id) {
            if r.handle.as_ref() != Some(&handle) {
                info!(alloc = %id, "found its container by label");
                r.handle = Some(handle);
                if !matches!(r.phase, Phase::Running { .. }) {
                    r.phase = Phase::Running { since_ms: now };
                }
            }
            return;
        }
        info!(alloc = %id, "found a container the state file does not know; adopting it");
        let desired = self.desired_alloc(&id);
        let mut r = match &desired {
            Some(d) => AllocRecord::new(d, BTreeMap::new()),
            None => AllocRecord {
                workload: id.split('.').next().unwrap_or_default().to_string(),
                runtime: "docker".into(),
                phase: Phase::Starting,
                restarts: 0,
                crash_streak: 0,
                message: String::new(),
                health: gantry_common::workload::HealthState::Unknown,
                exit_code: None,
                start_failed: false,
                probe_failures: 0,
                next_probe_ms: 0,
                ports: BTreeMap::new(),
                devices: Vec::new(),
                gpus: Vec::new(),
                handle: None,
                stop_grace_ms: 10_000,
            },
        };
        r.handle = Some(handle);
        r.phase = Phase::Running { since_ms: now };
        self.state.records.insert(id, r);
    }
}
