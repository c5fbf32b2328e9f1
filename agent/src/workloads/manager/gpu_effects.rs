//! The manager's side effects on the GPUs: MIG instances given back, the
//! backend told what runs, MPS daemons kept where clients are.

use super::*;

impl Manager {
    /// Gives back the sim's MIG instances of an allocation that ended.
    pub(super) fn release_gpus(&mut self, id: &str) {
        let Some(r) = self.state.records.get(id) else { return };
        for g in &r.gpus {
            if let GpuShare::Mig { profile, start } = &g.share {
                if let Err(e) = self.gpus.with(|b| b.close_mig(g.index, profile, *start)) {
                    debug!(alloc = %id, "closing MIG instance: {e}");
                }
            }
        }
    }

    /// Tells the backend what runs, and keeps MPS daemons where clients are.
    pub(super) fn share_gpus(&mut self) {
        let mut running = Running::default();
        let mut mps_holders: BTreeMap<u32, (u32, String)> = BTreeMap::new();
        for r in self.state.records.values() {
            let runs = matches!(r.phase, Phase::Running { .. } | Phase::Stopping { .. });
            let holds = runs || matches!(r.phase, Phase::Starting | Phase::Exited { .. });
            for g in &r.gpus {
                if runs {
                    running.shares.push((g.index, g.share.clone()));
                }
                if holds && matches!(g.share, GpuShare::Mps { .. }) {
                    let entry = mps_holders.entry(g.index).or_insert((0, g.uuid.clone()));
                    if runs {
                        entry.0 += 1;
                    }
                }
            }
        }
        for index in 0..self.gpus.count() {
            let daemon = self.mps.running(index);
            match mps_holders.get(&index) {
                Some((clients, uuid)) => {
                    if daemon {
                        self.mps.set_clients(index, *clients);
                        running.mps_clients.insert(index, *clients);
                    } else if *clients > 0 {
                        // It died under its clients: bring it back.
                        warn!(gpu = index, "MPS control daemon is not running; starting it again");
                        let (mps, uuid) = (self.mps.clone(), uuid.clone());
                        tokio::spawn(async move {
                            if let Err(e) = mps.ensure(index, &uuid).await {
                                warn!("{e}");
                            }
                        });
                    }
                }
                None if daemon && self.gpus.sharing(index) == GpuSharing::Mps => {
                    let mps = self.mps.clone();
                    tokio::spawn(async move {
                        if let Err(e) = mps.stop(index).await {
                            warn!("{e}");
                        }
                    });
                }
                None => {}
            }
        }
        self.gpus.with(|b| b.set_running(&running));
    }
}
