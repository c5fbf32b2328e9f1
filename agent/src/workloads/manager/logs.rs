//! Allocation logs: where `gantryctl logs` (through the coordinator) finds
//! them, and cutting process logs that grew past their limit.

use super::*;

/// Where the HTTP listener finds an allocation's logs. A std `Mutex`: the
/// manager replaces the map, readers clone one entry; nothing awaits under it.
#[derive(Clone)]
pub struct Logs {
    pub(super) index: Arc<Mutex<BTreeMap<String, LogEntry>>>,
    pub(super) runtimes: Runtimes,
    pub(super) allocs_dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct LogEntry {
    pub(super) runtime: String,
    pub(super) handle: Option<Handle>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("no allocation {0:?} on this node")]
    UnknownAlloc(String),
    #[error("allocation {0:?} has not started: no logs yet")]
    NotStarted(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl Logs {
    /// The output of allocation `id`.
    pub async fn open(&self, id: &str, request: LogRequest) -> Result<LogStream, LogsError> {
        let entry = self
            .index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| LogsError::UnknownAlloc(id.to_string()))?;
        let dir = self.allocs_dir.join(id);
        match (entry.handle, entry.runtime.as_str()) {
            (Some(h), _) => Ok(self.runtimes.for_handle(&h)?.logs(&h, dir, request).await?),
            // A process that never started may still have written why (exec errors go to stderr).
            (None, "process") => {
                let never = Handle::Process { pid: 0, start_ticks: 0 };
                Ok(self.runtimes.process.logs(&never, dir, request).await?)
            }
            (None, _) => Err(LogsError::NotStarted(id.to_string())),
        }
    }
}

impl Manager {
    /// Cuts the logs of running process workloads that grew past the limit
    /// (checked every [`LOG_CHECK`], on a blocking thread so a slow disk
    /// never holds up the loop; one check at a time).
    pub(super) fn rotate_logs(&mut self, now: u64) {
        if now < self.next_log_check_ms || self.log_check.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        self.next_log_check_ms = now + LOG_CHECK.as_millis() as u64;
        let max = self.runtimes.process.settings().log_max_bytes;
        if max == 0 {
            return;
        }
        let allocs = self.cfg.data_dir.join("allocs");
        let running: Vec<String> = self
            .state
            .records
            .iter()
            .filter(|(_, r)| r.runtime == "process" && matches!(r.phase, Phase::Running { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        if running.is_empty() {
            return;
        }
        self.log_check = Some(tokio::task::spawn_blocking(move || {
            for id in running {
                let dir = allocs.join(&id);
                for name in [crate::runtime::process::STDOUT_LOG, crate::runtime::process::STDERR_LOG] {
                    match crate::runtime::process::rotate_running(&dir.join(name), max) {
                        Ok(true) => debug!(alloc = %id, log = name, "log rotated"),
                        Ok(false) => {}
                        Err(e) => warn!(alloc = %id, log = name, "rotating the log: {e}"),
                    }
                }
            }
        }));
    }
}
