//! CPU, memory and process-count limits of `process` workloads, through
//! cgroups: v2 where the host runs the unified hierarchy, v1 where it has
//! the separate `memory`, `cpu` and `pids` hierarchies (as under Docker on
//! many hosts). Each allocation gets its own group, named `gantry-<id>`,
//! beside the agent's own group:
//!
//! | layout | memory                  | CPU                                  | processes  |
//! |--------|-------------------------|--------------------------------------|------------|
//! | v2     | `memory.max`, `memory.swap.max = 0` | `cpu.max = QUOTA 100000`  | `pids.max` |
//! | v1     | `memory.limit_in_bytes` (+ `memsw` when present) | `cpu.cfs_quota_us` | `pids.max` |
//!
//! The child joins its group before it `exec`s (see [`super::confine`]), so
//! everything it starts is inside. A group whose memory limit killed a
//! process counts it (`oom_kill` in `memory.events` / `memory.oom_control`),
//! which is how an exit is reported as "out of memory".
//!
//! Under systemd on v2 the agent's unit must delegate its cgroup
//! (`Delegate=yes`, as `gantry-agent.service` does): the agent then moves
//! itself into a leaf `agent` group and enables the controllers for its
//! workloads' groups. Without write access to a hierarchy the workloads run
//! without limits, and the agent says so once at start-up.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Most processes (and threads) one workload may have at once.
pub const PIDS_MAX: u64 = 4096;
/// CPU period for the quota, microseconds.
const PERIOD_US: u64 = 100_000;

/// Where the agent can make groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The unified hierarchy: workload groups under `parent`.
    V2 { parent: PathBuf },
    /// Separate hierarchies: workload groups under each controller's parent.
    V1 { memory: Option<PathBuf>, cpu: Option<PathBuf>, pids: Option<PathBuf> },
    /// No hierarchy the agent may write to.
    None { why: String },
}

/// What one workload may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory; 0 is no limit.
    pub memory_bytes: u64,
    /// Thousandths of a core; 0 is no limit.
    pub cpu_milli: u64,
    pub pids: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {source}")]
pub struct CgroupError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// One workload's groups (one per hierarchy; one in all for v2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub dirs: Vec<PathBuf>,
    /// The one whose memory events tell of OOM kills.
    pub memory: Option<PathBuf>,
    pub v2: bool,
}

/// The group's name for an allocation id.
pub fn group_name(alloc_id: &str) -> String {
    format!("gantry-{alloc_id}")
}

impl Layout {
    /// Finds the hierarchies under `root` (`/sys/fs/cgroup`) and the agent's
    /// own place in them (`self_cgroup`: the text of `/proc/self/cgroup`).
    pub fn detect(root: &Path, self_cgroup: &str) -> Layout {
        if root.join("cgroup.controllers").exists() {
            let own = self_cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/");
            let parent = root.join(own.trim_start_matches('/'));
            return Layout::V2 { parent };
        }
        let v1 = |controller: &str| {
            let mount = root.join(controller);
            if !mount.join("cgroup.procs").exists() {
                return None;
            }
            let own = self_cgroup.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                list.split(',').any(|c| c == controller).then_some(path)
            });
            Some(mount.join(own.unwrap_or("/").trim_start_matches('/')))
        };
        let (memory, cpu, pids) = (v1("memory"), v1("cpu"), v1("pids"));
        if memory.is_none() && cpu.is_none() && pids.is_none() {
            return Layout::None { why: format!("no cgroup hierarchy under {}", root.display()) };
        }
        Layout::V1 { memory, cpu, pids }
    }

    /// The host's layout, checked for write access.
    pub fn host() -> Layout {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let layout = Layout::detect(Path::new("/sys/fs/cgroup"), &own);
        match layout.prepare() {
            Ok(()) => layout,
            Err(e) => Layout::None { why: e.to_string() },
        }
    }

    /// Makes the hierarchy ready for workload groups: on v2, moves the agent
    /// into a leaf `agent` group and enables the controllers beside it.
    pub fn prepare(&self) -> Result<(), CgroupError> {
        match self {
            Layout::V2 { parent } => {
                let leaf = parent.join("agent");
                mkdir(&leaf)?;
                // The "no internal processes" rule: controllers can be handed
                // down only once no process sits in the parent itself.
                let procs = std::fs::read_to_string(parent.join("cgroup.procs"))
                    .map_err(|source| CgroupError { path: parent.join("cgroup.procs"), source })?;
                for pid in procs.split_whitespace() {
                    let _ = write(&leaf.join("cgroup.procs"), pid);
                }
                write(&parent.join("cgroup.subtree_control"), "+memory +cpu +pids")
            }
            Layout::V1 { memory, cpu, pids } => {
                // A test group proves write access.
                for dir in [memory, cpu, pids].into_iter().flatten() {
                    let probe = dir.join("gantry-probe");
                    mkdir(&probe)?;
                    let _ = std::fs::remove_dir(&probe);
                }
                Ok(())
            }
            Layout::None { .. } => Ok(()),
        }
    }

    /// Creates (or reuses) the group of `alloc_id` with `limits`. `None`
    /// without a usable hierarchy.
    pub fn create(&self, alloc_id: &str, limits: Limits) -> Result<Option<Group>, CgroupError> {
        let name = group_name(alloc_id);
        match self {
            Layout::V2 { parent } => {
                let dir = parent.join(&name);
                mkdir(&dir)?;
                let memory =
                    if limits.memory_bytes > 0 { limits.memory_bytes.to_string() } else { "max".into() };
                write(&dir.join("memory.max"), &memory)?;
                // Swap would let a workload run past its limit.
                let _ = write(&dir.join("memory.swap.max"), "0");
                let cpu = if limits.cpu_milli > 0 {
                    format!("{} {PERIOD_US}", quota_us(limits.cpu_milli))
                } else {
                    format!("max {PERIOD_US}")
                };
                write(&dir.join("cpu.max"), &cpu)?;
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
                Ok(Some(Group { dirs: vec![dir.clone()], memory: Some(dir), v2: true }))
            }
            Layout::V1 { memory, cpu, pids } => {
                let mut group = Group { dirs: Vec::new(), memory: None, v2: false };
                if let Some(m) = memory {
                    let dir = m.join(&name);
                    mkdir(&dir)?;
                    let bytes =
                        if limits.memory_bytes > 0 { limits.memory_bytes.to_string() } else { "-1".into() };
                    write(&dir.join("memory.limit_in_bytes"), &bytes)?;
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        let _ = write(&dir.join("memory.memsw.limit_in_bytes"), &bytes);
                    }
                    group.memory = Some(dir.clone());
                    group.dirs.push(dir);
                }
                if let Some(c) = cpu {
                    let dir = c.join(&name);
                    mkdir(&dir)?;
                    write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                    let quota = if limits.cpu_milli > 0 {
                        quota_us(limits.cpu_milli).to_string()
                    } else {
                        "-1".into()
                    };
                    write(&dir.join("cpu.cfs_quota_us"), &quota)?;
                    group.dirs.push(dir);
                }
                if let Some(p) = pids {
                    let dir = p.join(&name);
                    mkdir(&dir)?;
                    write(&dir.join("pids.max"), &limits.pids.to_string())?;
                    group.dirs.push(dir);
                }
                Ok(Some(group))
            }
            Layout::None { .. } => Ok(None),
        }
    }

    /// The existing group of `alloc_id` (after an agent restart).
    pub fn find(&self, alloc_id: &str) -> Option<Group> {
        let name = group_name(alloc_id);
        let group = match self {
            Layout::V2 { parent } => {
                let dir = parent.join(&name);
                Group { dirs: vec![dir.clone()], memory: Some(dir), v2: true }
            }
            Layout::V1 { memory, cpu, pids } => Group {
                dirs: [memory, cpu, pids].into_iter().flatten().map(|d| d.join(&name)).collect(),
                memory: memory.as_ref().map(|m| m.join(&name)),
                v2: false,
            },
            Layout::None { .. } => return None,
        };
        group.dirs.iter().any(|d| d.exists()).then_some(group)
    }
}

impl Group {
    /// The `cgroup.procs` files the child writes its pid to.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Every process in the group (in any of its hierarchies).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| t.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// How many processes its memory limit killed.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else { return 0 };
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        parse_oom_kills(&text)
    }

    /// Its memory limit in bytes, when it has one.
    pub fn memory_limit(&self) -> Option<u64> {
        let dir = self.memory.as_ref()?;
        let file = if self.v2 { "memory.max" } else { "memory.limit_in_bytes" };
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        text.trim().parse::<u64>().ok().filter(|&b| b < (1 << 62))
    }

    /// Removes the groups once nothing runs in them (best effort: a group
    /// with processes left cannot be removed, and stays for the next try).
    pub fn remove(&self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `oom_kill N` from `memory.events` (v2) or `memory.oom_control` (v1).
pub fn parse_oom_kills(text: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())).unwrap_or(0)
}

fn quota_us(cpu_milli: u64) -> u64 {
    (cpu_milli * PERIOD_US / 1000).max(1000)
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError { path: dir.to_path_buf(), source }),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let io = |source| CgroupError { path: path.to_path_buf(), source };
    let mut f = std::fs::OpenOptions::new().write(true).open(path).map_err(io)?;
    f.write_all(value.as_bytes()).map_err(io)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn detects_v1_with_the_agents_own_groups() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu", "pids"] {
            std::fs::create_dir_all(root.path().join(c)).unwrap();
            std::fs::write(root.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let own = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/\n";
        let layout = Layout::detect(root.path(), own);
        assert_eq!(
            layout,
            Layout::V1 {
                memory: Some(root.path().join("memory/process_api/abc")),
                cpu: Some(root.path().join("cpu")),
                pids: Some(root.path().join("pids")),
            }
        );
    }

    #[test]
    fn detects_v2_under_the_agents_group() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let layout = Layout::detect(root.path(), "0::/system.slice/gantry-agent.service\n");
        assert_eq!(layout, Layout::V2 { parent: root.path().join("system.slice/gantry-agent.service") });
        assert!(matches!(Layout::detect(&root.path().join("nothing"), ""), Layout::None { .. }));
    }

    #[test]
    fn v2_groups_get_their_limits_written() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::V2 { parent: root.path().to_path_buf() };
        // A plain directory stands in for cgroupfs: the files appear as written.
        let dir = root.path().join("gantry-w.0.1");
        std::fs::create_dir(&dir).unwrap();
        for f in ["memory.max", "memory.swap.max", "cpu.max", "pids.max"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let g = layout
            .create("w.0.1", Limits { memory_bytes: 64 << 20, cpu_milli: 500, pids: 100 })
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("memory.max")).unwrap(), "67108864");
        assert_eq!(std::fs::read_to_string(dir.join("cpu.max")).unwrap(), "50000 100000");
        assert_eq!(std::fs::read_to_string(dir.join("pids.max")).unwrap(), "100");
        assert_eq!(g.procs_files(), vec![dir.join("cgroup.procs")]);
        std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(g.oom_kills(), 1);
        assert_eq!(layout.find("w.0.1"), Some(g));
        assert_eq!(layout.find("w.0.2"), None);
    }

    #[test]
    fn oom_kills_are_read_from_either_file() {
        assert_eq!(parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"), 2);
        assert_eq!(parse_oom_kills("oom_kill_disable 0\n"), 0);
        assert_eq!(quota_us(250), 25_000);
        assert_eq!(quota_us(1), 1_000, "never below 1 ms a period");
    }
}
