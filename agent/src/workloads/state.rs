//! The state file `<data_dir>/allocs.json`: the last desired set received
//! and every allocation record (runtime handle, ports, restarts). Written
//! atomically (a temporary file, fsync, rename, fsync of the directory), so
//! a crash leaves the old or the new file, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use gantry_common::workload::DesiredAlloc;
use serde::{Deserialize, Serialize};

use super::reconcile::AllocRecord;

pub const STATE_FILE: &str = "allocs.json";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// The last desired set a coordinator sent: it stands in while none has
    /// answered since the agent started.
    pub desired: Option<PersistedDesired>,
    pub records: BTreeMap<String, AllocRecord>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedDesired {
    pub index: u64,
    pub allocs: Vec<DesiredAlloc>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}: not a valid state file ({source}); move it away to start with no allocations \
         (running workloads are then not found again)"
    )]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

impl StateFile {
    /// Reads the state file in `dir`; a missing file is an empty state.
    pub fn load(dir: &Path) -> Result<StateFile, StateError> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Writes it to `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| StateError::Io { path: tmp.clone(), source: e.into() })?;
        // Root's only: it names every workload, its ports and its handles.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(StateFile::load(dir.path()).unwrap(), StateFile::default());
        let state = StateFile {
            desired: Some(PersistedDesired { index: 7, allocs: Vec::new() }),
            ..Default::default()
        };
        state.save(dir.path()).unwrap();
        assert_eq!(StateFile::load(dir.path()).unwrap(), state);
        assert!(!dir.path().join("allocs.json.tmp").exists());
        std::fs::write(dir.path().join(STATE_FILE), b"{ not json").unwrap();
        let err = StateFile::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("allocs.json") && err.to_string().contains("move it away"), "{err}");
    }
}
