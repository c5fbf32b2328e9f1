//! Per-allocation user ids for `process` workloads: each replica runs as a
//! uid of its own from the agent's `workload_uids` range, so one workload
//! cannot signal, trace or read the files of another on the same host (as
//! the kernel keeps different users apart). A uid stays with its
//! allocation across restarts and is handed out again only once the
//! allocation is forgotten and its directory removed.
//!
//! The pool is rebuilt after an agent restart from the owners of the
//! allocations' `work/` directories, which the runtime creates and chowns
//! before the workload starts.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::str::FromStr;

/// `FIRST-LAST` user ids, e.g. `200000-265535`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UidRange(RangeInclusive<u32>);

impl UidRange {
    pub fn contains(&self, uid: u32) -> bool {
        self.0.contains(&uid)
    }
}

impl FromStr for UidRange {
    type Err = String;
    fn from_str(s: &str) -> Result<UidRange, String> {
        let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?} is not FIRST-LAST"))?;
        let parse = |t: &str| t.trim().parse::<u32>().map_err(|_| format!("{t:?} is not a user id"));
        let (first, last) = (parse(a)?, parse(b)?);
        if first < 1000 {
            return Err(format!("{s:?} starts below 1000, among system users"));
        }
        if first > last {
            return Err(format!("{s:?} is empty (FIRST above LAST)"));
        }
        // u32::MAX is (uid_t)-1, "no change" to setuid.
        if last == u32::MAX {
            return Err(format!("{s:?} includes 4294967295, which is not a user id"));
        }
        Ok(UidRange(first..=last))
    }
}

/// Which allocation holds which uid.
#[derive(Debug, Default)]
pub struct UidPool {
    held: BTreeMap<String, u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("every user id of workload_uids {first}-{last} is held by an allocation on this node")]
pub struct Exhausted {
    first: u32,
    last: u32,
}

impl UidPool {
    /// The pool as the allocation directories under `allocs_dir` show it:
    /// each `ID/work` owned by a uid of `range` holds it.
    pub fn scan(allocs_dir: &Path, range: &UidRange) -> UidPool {
        let mut pool = UidPool::default();
        let Ok(entries) = std::fs::read_dir(allocs_dir) else { return pool };
        for entry in entries.flatten() {
            let Ok(id) = entry.file_name().into_string() else { continue };
            if let Ok(meta) = std::fs::symlink_metadata(entry.path().join(super::process::WORK_DIR)) {
                if meta.is_dir() && range.contains(meta.uid()) {
                    pool.held.insert(id, meta.uid());
                }
            }
        }
        pool
    }

    /// The uid of `alloc`: the one it holds, else the lowest free one.
    pub fn take(&mut self, alloc: &str, range: &UidRange) -> Result<u32, Exhausted> {
        if let Some(&uid) = self.held.get(alloc) {
            if range.contains(uid) {
                return Ok(uid);
            }
        }
        let mut used: Vec<u32> = self.held.values().copied().filter(|u| range.contains(*u)).collect();
        used.sort_unstable();
        let mut next = *range.0.start();
        for u in used {
            if u > next {
                break;
            }
            if u == next {
                next = next.saturating_add(1);
            }
        }
        if !range.contains(next) {
            return Err(Exhausted { first: *range.0.start(), last: *range.0.end() });
        }
        self.held.insert(alloc.to_string(), next);
        Ok(next)
    }

    /// `alloc` is forgotten (its directory removed): its uid is free.
    pub fn release(&mut self, alloc: &str) {
        self.held.remove(alloc);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_what_would_be_unsafe() {
        assert_eq!("200000-265535".parse::<UidRange>().unwrap(), UidRange(200000..=265535));
        assert!("0-100".parse::<UidRange>().unwrap_err().contains("system users"));
        assert!("300-200000".parse::<UidRange>().unwrap_err().contains("system users"));
        assert!("5000-4000".parse::<UidRange>().unwrap_err().contains("empty"));
        assert!("5000-4294967295".parse::<UidRange>().unwrap_err().contains("not a user id"));
        assert!("5000".parse::<UidRange>().unwrap_err().contains("FIRST-LAST"));
        assert!("a-b".parse::<UidRange>().unwrap_err().contains("not a user id"));
    }

    #[test]
    fn each_allocation_gets_its_own_uid_and_keeps_it() {
        let range: UidRange = "5000-5002".parse().unwrap();
        let mut pool = UidPool::default();
        assert_eq!(pool.take("a.0.1", &range), Ok(5000));
        assert_eq!(pool.take("b.0.2", &range), Ok(5001));
        assert_eq!(pool.take("a.0.1", &range), Ok(5000), "a restart keeps its uid");
        assert_eq!(pool.take("c.0.3", &range), Ok(5002));
        assert_eq!(pool.take("d.0.4", &range), Err(Exhausted { first: 5000, last: 5002 }));
        pool.release("b.0.2");
        assert_eq!(pool.take("d.0.4", &range), Ok(5001), "a forgotten allocation's uid is reused");
    }

    #[test]
    fn the_pool_is_rebuilt_from_the_owners_of_work_directories() {
        let range: UidRange = "5000-5010".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (id, uid) in [("a.0.1", 5003u32), ("b.0.2", 5000), ("c.0.3", 0)] {
            let work = dir.path().join(id).join(super::super::process::WORK_DIR);
            std::fs::create_dir_all(&work).unwrap();
            if nix::unistd::geteuid().is_root() {
                nix::unistd::chown(&work, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
            }
        }
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let mut pool = UidPool::scan(dir.path(), &range);
        assert_eq!(pool.take("a.0.1", &range), Ok(5003));
        assert_eq!(pool.take("new.0.9", &range), Ok(5001), "5000 is b's, 5003 a's");
        assert_eq!(pool.take("c.0.3", &range), Ok(5002), "root's directory holds no pool uid");
    }
}
