//! Saving the state file (only when a record changed) and publishing the
//! reports the session sends to the coordinator.

use super::*;

impl Manager {
    pub(super) fn save(&mut self) {
        // A comparison, not an encoding, every tick: the file is written
        // only when something in it changed.
        if self.saved.as_ref() == Some(&self.state) {
            return;
        }
        match self.state.save(&self.cfg.data_dir) {
            Ok(()) => self.saved = Some(self.state.clone()),
            Err(e) => warn!("saving the state file: {e}"),
        }
        let entries: BTreeMap<String, LogEntry> = self
            .state
            .records
            .iter()
            .map(|(id, r)| (id.clone(), LogEntry { runtime: r.runtime.clone(), handle: r.handle.clone() }))
            .collect();
        *self.logs.index.lock().unwrap_or_else(|p| p.into_inner()) = entries;
    }

    pub(super) fn publish(&mut self, desired: &[DesiredAlloc]) {
        let mut reports: BTreeMap<String, AllocReport> = BTreeMap::new();
        for d in desired {
            let id = &d.alloc.id;
            reports
                .insert(id.clone(), reconcile::report(id, self.state.records.get(id), Some(d.alloc.desired)));
        }
        for (id, r) in &self.state.records {
            reports.entry(id.clone()).or_insert_with(|| reconcile::report(id, Some(r), None));
        }
        self.link.reports.send_if_modified(|current| {
            if *current == reports {
                false
            } else {
                *current = reports;
                true
            }
        });
    }
}
