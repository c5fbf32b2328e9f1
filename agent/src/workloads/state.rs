//! The state file `<data_dir>/allocs.json`: the last desired set received
//! and every allocation record (runtime handle, ports, restarts). Written
//! atomically (a temporary file, fsync, rename, fsync of the directory), so
//! a crash leaves the old or the new file, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use gantry_common::workload::{Allocation, DesiredAlloc, WorkloadSpec};
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

/// The last desired set. In the file each workload's spec is written once
/// (`specs`) and the allocations without it (`allocations`); files of
/// earlier agents, with the spec inside every allocation (`allocs`), still load.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "DesiredOnDisk", into = "DesiredOnDisk")]
pub struct PersistedDesired {
    pub index: u64,
    pub allocs: Vec<DesiredAlloc>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DesiredOnDisk {
    index: u64,
    #[serde(default)]
    specs: Vec<WorkloadSpec>,
    #[serde(default)]
    allocations: Vec<Allocation>,
    /// Written by agents before the specs were split out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allocs: Vec<DesiredAlloc>,
}

impl From<DesiredOnDisk> for PersistedDesired {
    fn from(d: DesiredOnDisk) -> Self {
        let (mut allocs, _orphans) = gantry_common::wire::assemble_desired(&d.specs, d.allocations);
        allocs.extend(d.allocs);
        PersistedDesired { index: d.index, allocs }
    }
}

impl From<PersistedDesired> for DesiredOnDisk {
    fn from(p: PersistedDesired) -> Self {
        let mut specs: Vec<WorkloadSpec> = Vec::new();
        for d in &p.allocs {
            if !specs.iter().any(|s| s.name == d.spec.name) {
                specs.push((*d.spec).clone());
            }
        }
        let allocations = p.allocs.into_iter().map(|d| d.alloc).collect();
        DesiredOnDisk { index: p.index, specs, allocations, allocs: Vec::new() }
    }
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

    fn sample_set(n: u32) -> Vec<DesiredAlloc> {
        let spec = std::sync::Arc::new(gantry_common::schema::samples::spec());
        (0..n)
            .map(|i| {
                let mut alloc = gantry_common::schema::samples::alloc();
                alloc.id = format!("llm.{i}.{i}");
                alloc.replica = i;
                DesiredAlloc { alloc, spec: spec.clone() }
            })
            .collect()
    }

    #[test]
    fn each_spec_is_written_once_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile {
            desired: Some(PersistedDesired { index: 3, allocs: sample_set(100) }),
            ..Default::default()
        };
        state.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert_eq!(text.matches("/models/tiny.json").count(), 1, "the spec once, not once per allocation");
        assert_eq!(StateFile::load(dir.path()).unwrap(), state);
        let mode = std::fs::metadata(dir.path().join(STATE_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_state_file_of_an_earlier_agent_loads() {
        // c6cdaa7 wrote every allocation with its spec, and allocations had
        // no exit_code, failures or start_failed.
        let set = sample_set(2);
        let mut old = serde_json::json!({ "desired": { "index": 9, "allocs": set }, "records": {} });
        for a in old["desired"]["allocs"].as_array_mut().unwrap() {
            for field in ["exit_code", "failures", "start_failed"] {
                a["alloc"].as_object_mut().unwrap().remove(field);
            }
            a["spec"].as_object_mut().unwrap().remove("user");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), serde_json::to_vec(&old).unwrap()).unwrap();
        let loaded = StateFile::load(dir.path()).unwrap();
        let desired = loaded.desired.unwrap();
        assert_eq!(desired.index, 9);
        assert_eq!(desired.allocs.len(), 2);
        assert_eq!(desired.allocs[1].alloc.id, "llm.1.1");
        assert_eq!(desired.allocs[0].alloc.exit_code, None);
    }
}
