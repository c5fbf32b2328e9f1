//! Per-allocation user ids for `process` workloads: each replica runs as a
//! uid of its own from the agent's `workload_uids` range, so one workload
//! cannot signal, trace or read the files of another on the same host (as
//! the kernel keeps different users apart). A uid stays with its
//! allocation across restarts and is handed out again only once the
//! allocation is forgotten and its directory removed, and then only after
//! every other uid of the range had its turn (uids are handed out in turn,
//! not lowest first), so files a workload left outside its directory (in
//! `/tmp`, say) are not readable by the next workload for a long while.
//!
//! The pool is rebuilt after an agent restart from the owners of the
//! allocations' `work/` directories, which the runtime creates and chowns
//! before the workload starts.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::str::FromStr;

/// `FIRST-LAST` user ids, e.g. `1900000000-1900065535`.
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

/// Who else on this host uses ids of `range`: entries of `/etc/subuid`- or
/// `/etc/subgid`-style text (`name:first:count`) and of `/etc/passwd`-style
/// text (`name:x:uid:...`) whose ids meet it. Returns `name (file)` for each.
pub fn others_in_range(range: &UidRange, files: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for (file, text) in files {
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let fields: Vec<&str> = line.split(':').collect();
            let ids = if file.ends_with("passwd") {
                fields.get(2).and_then(|u| u.parse::<u64>().ok()).map(|u| (u, 1))
            } else {
                match (
                    fields.get(1).and_then(|f| f.parse::<u64>().ok()),
                    fields.get(2).and_then(|c| c.parse::<u64>().ok()),
                ) {
                    (Some(first), Some(count)) => Some((first, count)),
                    _ => None,
                }
            };
            let Some((first, count)) = ids else { continue };
            let (lo, hi) = (u64::from(*range.0.start()), u64::from(*range.0.end()));
            if count > 0 && first <= hi && first.saturating_add(count - 1) >= lo {
                found.push(format!("{} ({file})", fields[0]));
            }
        }
    }
    found
}

/// The file in the allocations' directory that keeps where the next uid search starts.
pub const NEXT_FILE: &str = ".next-uid";

/// Which allocation holds which uid.
#[derive(Debug, Default)]
pub struct UidPool {
    held: BTreeMap<String, u32>,
    /// Where the search for a free uid starts: after the last one handed out.
    next: Option<u32>,
    /// Where `next` is kept across agent restarts (`allocs/.next-uid`).
    next_file: Option<std::path::PathBuf>,
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
        let next_file = allocs_dir.join(NEXT_FILE);
        let kept = std::fs::read_to_string(&next_file).ok().and_then(|t| t.trim().parse::<u32>().ok());
        let mut pool = UidPool { next_file: Some(next_file), ..UidPool::default() };
        let Ok(entries) = std::fs::read_dir(allocs_dir) else {
            pool.next = kept;
            return pool;
        };
        for entry in entries.flatten() {
            let Ok(id) = entry.file_name().into_string() else { continue };
            if let Ok(meta) = std::fs::symlink_metadata(entry.path().join(super::process::WORK_DIR)) {
                if meta.is_dir() && range.contains(meta.uid()) {
                    pool.held.insert(id, meta.uid());
                }
            }
        }
        pool.next = kept.or_else(|| pool.held.values().max().map(|u| u.saturating_add(1)));
        pool
    }

    /// The uid of `alloc`: the one it holds, else the lowest free one.
    pub fn take(&mut self, alloc: &str, range: &UidRange) -> Result<u32, Exhausted> {
        if let Some(&uid) = self.held.get(alloc) {
            if range.contains(uid) {
                return Ok(uid);
            }
        }
        let used: std::collections::BTreeSet<u32> = self.held.values().copied().collect();
        let (first, last) = (*range.0.start(), *range.0.end());
        let start = self.next.filter(|u| range.contains(*u)).unwrap_or(first);
        // From `start` to the end of the range, then from its beginning.
        let free = (start..=last).chain(first..start).find(|u| !used.contains(u));
        let Some(uid) = free else { return Err(Exhausted { first, last }) };
        self.held.insert(alloc.to_string(), uid);
        self.next = Some(uid.saturating_add(1));
        if let Some(path) = &self.next_file {
            // Best effort: without it a restarted agent starts after the highest uid held.
            if let Err(e) = std::fs::write(path, format!("{}\n", uid.saturating_add(1))) {
                tracing::warn!("keeping the next workload uid in {}: {e}", path.display());
            }
        }
        Ok(uid)
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
    fn users_and_subordinate_ranges_inside_the_range_are_found() {
        let range: UidRange = "200000-265535".parse().unwrap();
        let subuid = "alice:100000:65536\nbob:165536:65536\n# comment\ncarol:300000:65536\n";
        let passwd = "root:x:0:0::/root:/bin/sh\nsvc:x:200500:200500::/:/bin/false\nbad line\n";
        let found = others_in_range(&range, &[("/etc/subuid", subuid), ("/etc/passwd", passwd)]);
        assert_eq!(found, ["bob (/etc/subuid)", "svc (/etc/passwd)"]);
        let high: UidRange = "1900000000-1900065535".parse().unwrap();
        assert!(others_in_range(&high, &[("/etc/subuid", subuid), ("/etc/passwd", passwd)]).is_empty());
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
        assert_eq!(
            pool.take("d.0.4", &range),
            Ok(5001),
            "a forgotten allocation's uid is reused when the range is full"
        );
        // Handed out in turn: a freed uid waits while others are free.
        let range: UidRange = "6000-6009".parse().unwrap();
        let mut pool = UidPool::default();
        assert_eq!(pool.take("a", &range), Ok(6000));
        pool.release("a");
        assert_eq!(pool.take("b", &range), Ok(6001), "not the uid just freed");
        let taken: Vec<u32> = (0..8).map(|i| pool.take(&format!("c{i}"), &range).unwrap()).collect();
        assert_eq!(taken, (6002..=6009).collect::<Vec<_>>());
        assert_eq!(pool.take("d", &range), Ok(6000), "wraps to the start once the end is reached");
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
        assert_eq!(pool.take("new.0.9", &range), Ok(5004), "after the highest held: 5000 is b's, 5003 a's");
        assert_eq!(pool.take("c.0.3", &range), Ok(5005), "root's directory holds no pool uid");
        // The turn survives a restart, even when nothing is held any more.
        std::fs::remove_dir_all(dir.path().join("a.0.1")).unwrap();
        std::fs::remove_dir_all(dir.path().join("b.0.2")).unwrap();
        let mut pool = UidPool::scan(dir.path(), &range);
        assert_eq!(pool.take("later.0.1", &range), Ok(5006));
    }
}
