//! The `process` runtime: the workload is a child process, leader of its own
//! process group, so that stopping it reaches everything it started.
//!
//! - Confined ([`super::confine`]): as the workload user, without
//!   capabilities, with `no_new_privs` and a clean environment
//!   ([`Launch::env`] plus `PATH`, `HOME` and the agent's `CUDA_*`/`NVIDIA_*`),
//!   inside its own cgroups with the spec's CPU and memory and a process
//!   limit ([`super::cgroup`]). An exit caused by the memory limit is
//!   reported as `killed: out of memory`.
//! - Output: appended to `stdout.log` and `stderr.log` in the allocation's
//!   directory (root's, mode 0600: the agent rotates them, the workload only
//!   writes them through the descriptors it was given); its working
//!   directory is `work/` beside them, owned by the workload user.
//! - Stop: SIGTERM to the group, SIGKILL to the group after the grace period.
//! - Agent restarts: the process does not notice (it is not in the agent's
//!   process group, and systemd's `KillMode=process` leaves it alone). The
//!   new agent finds it by pid and start time ([`Handle::Process`]); while it
//!   is not the process's parent it cannot learn its exit code, so such an
//!   exit is reported with an unknown status.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use gantry_common::workload::RuntimeSpec;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{chown, Gid, Pid, Uid};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::cgroup::{self, Group, Layout};
use super::confine;
use super::uids::{UidPool, UidRange};
use super::{Handle, Launch, LogRequest, LogStream, Runtime, RuntimeError, Status};

/// The working directory's name in the allocation's directory.
pub const WORK_DIR: &str = "work";

/// Log file names in an allocation's directory.
pub const STDOUT_LOG: &str = "stdout.log";
pub const STDERR_LOG: &str = "stderr.log";

/// How long after SIGKILL a group may take to disappear before stop gives up.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

/// How the process runtime confines workloads (agent settings).
#[derive(Clone, Debug)]
pub struct ProcessSettings {
    /// The user workloads run as unless their spec asks for an allowed one.
    pub user: String,
    /// Users a spec may ask for.
    pub users_allowed: Vec<String>,
    /// When set, a workload whose spec names no user runs as a uid of its
    /// own from this range (an MPS share runs as `user`: one GPU's MPS
    /// server serves clients of one user only).
    pub uids: Option<UidRange>,
    pub cgroups: Layout,
    /// Log files are cut when they pass this size (the older half goes to `*.log.1`).
    pub log_max_bytes: u64,
}

impl Default for ProcessSettings {
    fn default() -> Self {
        ProcessSettings {
            user: "nobody".into(),
            users_allowed: Vec::new(),
            uids: None,
            cgroups: Layout::None { why: "not set up".into() },
            log_max_bytes: 64 * 1024 * 1024,
        }
    }
}

pub struct ProcessRuntime {
    settings: ProcessSettings,
    /// Children this agent started, kept to reap them and read their exit
    /// status. A std `Mutex`: nothing awaits while it is held.
    children: Arc<Mutex<BTreeMap<i32, Child>>>,
    /// Cgroups by leader pid, with the OOM kills counted when it started.
    groups: Arc<Mutex<BTreeMap<i32, (Group, u64)>>>,
    /// Uids held by allocations; read from disk at the first start.
    uids: Arc<Mutex<Option<UidPool>>>,
}

impl Default for ProcessRuntime {
    fn default() -> Self {
        ProcessRuntime::new(ProcessSettings::default())
    }
}

impl ProcessRuntime {
    pub fn new(settings: ProcessSettings) -> ProcessRuntime {
        ProcessRuntime {
            settings,
            children: Default::default(),
            groups: Default::default(),
            uids: Default::default(),
        }
    }

    pub fn settings(&self) -> &ProcessSettings {
        &self.settings
    }

    fn children(&self) -> MutexGuard<'_, BTreeMap<i32, Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn groups(&self) -> MutexGuard<'_, BTreeMap<i32, (Group, u64)>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds the cgroups of a process an earlier agent started.
    pub fn adopt(&self, alloc_id: &str, handle: &Handle) {
        if let (Handle::Process { pid, .. }, Some(group)) = (handle, self.settings.cgroups.find(alloc_id)) {
            let kills = group.oom_kills();
            self.groups().insert(*pid, (group, kills));
        }
    }

    /// Removes an allocation's cgroups once it is forgotten, and frees its uid
    /// (the caller removes its directory).
    pub fn release(&self, alloc_id: &str) {
        if let Some(group) = self.settings.cgroups.find(alloc_id) {
            group.remove();
        }
        if let Some(pool) = self.uids.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            pool.release(alloc_id);
        }
    }

    /// Who `launch` runs as: the spec's user when allowed; else its own uid
    /// from the range when one is set and it is not an MPS share; else the
    /// agent's workload user.
    fn run_as(&self, launch: &Launch) -> Result<confine::RunAs, RuntimeError> {
        let mps = launch.mps_pipe_dir.is_some() || launch.env.contains_key("CUDA_MPS_PIPE_DIRECTORY");
        if let (None, Some(range), false) = (&launch.spec.user, &self.settings.uids, mps) {
            let mut pool = self.uids.lock().unwrap_or_else(|p| p.into_inner());
            let pool = pool.get_or_insert_with(|| {
                launch.alloc_dir.parent().map(|d| UidPool::scan(d, range)).unwrap_or_default()
            });
            let uid = pool.take(&launch.alloc_id, range).map_err(|e| RuntimeError::Confine(e.to_string()))?;
            return Ok(confine::RunAs { name: format!("gantry-{uid}"), uid, gid: uid });
        }
        // With uids of their own, asking for the shared user by name would
        // join the MPS shares' user: only when the agent lists it.
        let default =
            if self.settings.uids.is_some() && !mps { None } else { Some(self.settings.user.as_str()) };
        confine::choose_user(
            launch.spec.user.as_deref(),
            default,
            &self.settings.user,
            &self.settings.users_allowed,
        )
        .and_then(|name| confine::resolve_user(&name))
        .map_err(|e| RuntimeError::Confine(e.to_string()))
    }

    /// How a process of `pid` ended, when its memory limit ended it.
    fn oom_message(&self, pid: i32) -> Option<String> {
        let (group, before) = self.groups().remove(&pid)?;
        let killed = group.oom_kills() > before;
        let limit = group.memory_limit();
        group.remove();
        killed.then(|| match limit {
            Some(bytes) => format!("killed: out of memory (limit {} MiB)", bytes >> 20),
            None => "killed: out of memory".to_string(),
        })
    }

    fn start_now(&self, launch: &Launch) -> Result<Handle, RuntimeError> {
        let RuntimeSpec::Process { command } = &launch.spec.runtime else {
            return Err(RuntimeError::WrongHandle("a docker workload"));
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RuntimeError::Io { path, source }
        };
        let user = self.run_as(launch)?;
        let dir = &launch.alloc_dir;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // Others may pass through (to the working directory), not list.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(io(dir))?;
        let work = dir.join(WORK_DIR);
        std::fs::create_dir_all(&work).map_err(io(&work))?;
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700)).map_err(io(&work))?;
        chown(&work, Some(Uid::from_raw(user.uid)), Some(Gid::from_raw(user.gid)))
            .map_err(|e| RuntimeError::Io { path: work.clone(), source: e.into() })?;
        let open = |name: &str| {
            let path = dir.join(name);
            rotate_if_large(&path, self.settings.log_max_bytes);
            OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io(&path))
        };
        let (stdout, stderr) = (open(STDOUT_LOG)?, open(STDERR_LOG)?);
        let limits = cgroup::Limits {
            memory_bytes: launch.spec.memory_mib.saturating_mul(1 << 20),
            cpu_milli: launch.spec.cpu_milli,
            pids: cgroup::PIDS_MAX,
        };
        let group = self
            .settings
            .cgroups
            .create(&launch.alloc_id, limits)
            .map_err(|e| RuntimeError::Confine(format!("setting up its cgroup: {e}")))?;
        let mut procs = Vec::new();
        for path in group.iter().flat_map(Group::procs_files) {
            let f = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
            procs.push(std::os::fd::OwnedFd::from(f));
        }
        let confinement = confine::Confinement::new(&user, &work, procs).map_err(io(&work))?;
        let env = confine::clean_env(&launch.env, std::env::vars(), &user, &work);
        let mut cmd = std::process::Command::new(command);
        cmd.args(&launch.spec.args)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        confinement.apply(&mut cmd);
        let kills_before = group.as_ref().map_or(0, Group::oom_kills);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(source) => {
                if let Some(g) = &group {
                    g.remove();
                }
                return Err(RuntimeError::Spawn { command: command.clone(), source });
            }
        };
        let pid = child.id() as i32;
        let start_ticks = read_stat(pid).map(|s| s.start_ticks).map_err(|source| RuntimeError::Io {
            path: PathBuf::from(format!("/proc/{pid}/stat")),
            source,
        })?;
        self.children().insert(pid, child);
        if let Some(g) = group {
            self.groups().insert(pid, (g, kills_before));
        }
        Ok(Handle::Process { pid, start_ticks })
    }

    fn status_now(&self, pid: i32, start_ticks: u64) -> Status {
        {
            let mut children = self.children();
            if let Some(child) = children.get_mut(&pid) {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        children.remove(&pid);
                        drop(children);
                        self.end_leftovers(pid);
                        return match self.oom_message(pid) {
                            Some(message) => Status::Exited { code: None, message },
                            None => Status::Exited { code: status.code(), message: describe_exit(status) },
                        };
                    }
                    Ok(None) => return Status::Running,
                    Err(_) => {
                        children.remove(&pid);
                    }
                }
            }
        }
        // Not our child (an earlier agent started it), or waiting failed.
        match read_stat(pid) {
            Ok(s) if s.start_ticks == start_ticks && s.state != 'Z' && s.state != 'X' => Status::Running,
            _ => {
                reap(pid);
                self.end_leftovers(pid);
                let message = self.oom_message(pid).unwrap_or_else(|| {
                    "exited while an earlier agent was its parent: exit status unknown".into()
                });
                Status::Exited { code: None, message }
            }
        }
    }

    /// Reaps `pid` if it is a child of this process (ours or one a dropped
    /// runtime instance started in the same process).
    fn reap_now(&self, pid: i32) {
        let mut children = self.children();
        if let Some(child) = children.get_mut(&pid) {
            if let Ok(Some(_)) = child.try_wait() {
                children.remove(&pid);
            }
            return;
        }
        drop(children);
        reap(pid);
    }

    /// The cgroup of the process group led by `pid`, when it has one.
    fn group_of(&self, pid: i32) -> Option<Group> {
        self.groups().get(&pid).map(|(g, _)| g.clone())
    }

    /// Stops everything of the workload led by `pid`: its process group
    /// and, through its cgroup, whatever left the group (`setsid`, a double
    /// fork). SIGTERM, the grace period, then SIGKILL; done once nothing of
    /// it is left, so its GPU is only given back when nothing uses it.
    async fn stop_now(&self, pid: i32, start_ticks: u64, grace: Duration) -> Result<(), RuntimeError> {
        let group = self.group_of(pid);
        // A live leader with another start time is a reused pid: not ours.
        let leader_ours = match read_stat(pid) {
            Ok(s) => s.start_ticks == start_ticks || s.state == 'Z',
            Err(_) => false,
        };
        let pgid = Pid::from_raw(pid);
        let alive = |this: &Self| {
            this.reap_now(pid);
            (leader_ours && group_alive(pgid)) || group.as_ref().is_some_and(|g| !g.pids().is_empty())
        };
        if !leader_ours && group.is_none() {
            return Ok(());
        }
        self.signal_all(pid, leader_ours, group.as_ref(), Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        while alive(self) {
            if Instant::now() >= deadline {
                tracing::info!(pid, "workload still running after the grace period: SIGKILL");
                self.signal_all(pid, leader_ours, group.as_ref(), Signal::SIGKILL)?;
                let deadline = Instant::now() + KILL_WAIT;
                while alive(self) {
                    if Instant::now() >= deadline {
                        return Err(RuntimeError::Signal { pgid: pid, source: Errno::EBUSY });
                    }
                    self.signal_all(pid, leader_ours, group.as_ref(), Signal::SIGKILL)?;
                    tokio::time::sleep(POLL).await;
                }
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        if let Some(g) = group {
            g.remove();
            self.groups().remove(&pid);
        }
        Ok(())
    }

    /// Sends `sig` to the process group (when the leader is ours) and to
    /// every process in the workload's cgroup.
    fn signal_all(
        &self,
        pid: i32,
        leader_ours: bool,
        group: Option<&Group>,
        sig: Signal,
    ) -> Result<(), RuntimeError> {
        if leader_ours {
            match killpg(Pid::from_raw(pid), sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(source) => return Err(RuntimeError::Signal { pgid: pid, source }),
            }
        }
        if let Some(g) = group {
            for member in g.pids() {
                let _ = nix::sys::signal::kill(Pid::from_raw(member), sig);
            }
        }
        Ok(())
    }

    /// The leader of `pid`'s workload exited: whatever it left behind in its
    /// cgroup is killed (the replica is over), then the group goes.
    fn end_leftovers(&self, pid: i32) {
        let Some(group) = self.group_of(pid) else { return };
        for _ in 0..100 {
            let left = group.pids();
            if left.is_empty() {
                break;
            }
            for member in left {
                let _ = nix::sys::signal::kill(Pid::from_raw(member), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn start<'a>(&'a self, launch: &'a Launch) -> BoxFuture<'a, Result<Handle, RuntimeError>> {
        async move { self.start_now(launch) }.boxed()
    }

    fn status<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<Status, RuntimeError>> {
        async move {
            match handle {
                Handle::Process { pid, start_ticks } => Ok(self.status_now(*pid, *start_ticks)),
                Handle::Docker { .. } => Err(RuntimeError::WrongHandle("a container")),
            }
        }
        .boxed()
    }

    fn stop<'a>(&'a self, handle: &'a Handle, grace: Duration) -> BoxFuture<'a, Result<(), RuntimeError>> {
        async move {
            match handle {
                Handle::Process { pid, start_ticks } => self.stop_now(*pid, *start_ticks, grace).await,
                Handle::Docker { .. } => Err(RuntimeError::WrongHandle("a container")),
            }
        }
        .boxed()
    }

    fn discover<'a>(&'a self, _node: &'a str) -> BoxFuture<'a, Result<Vec<(String, Handle)>, RuntimeError>> {
        async { Ok(Vec::new()) }.boxed()
    }

    fn logs<'a>(
        &'a self,
        handle: &'a Handle,
        alloc_dir: PathBuf,
        request: LogRequest,
    ) -> BoxFuture<'a, Result<LogStream, RuntimeError>> {
        let alive: Box<dyn Fn() -> bool + Send> = match *handle {
            Handle::Process { pid, start_ticks } => {
                Box::new(move || read_stat(pid).is_ok_and(|s| s.start_ticks == start_ticks && s.state != 'Z'))
            }
            Handle::Docker { .. } => Box::new(|| false),
        };
        async move { file_logs(&[alloc_dir.join(STDOUT_LOG), alloc_dir.join(STDERR_LOG)], request, alive).await }
            .boxed()
    }
}

/// Moves a log over `max` bytes to `PATH.1` (replacing the older one), so
/// a workload's output never takes more than about twice `max` per stream.
/// Only checked when the workload (re)starts and by [`rotate_running`].
pub fn rotate_if_large(path: &Path, max: u64) {
    if max == 0 {
        return;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() > max) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        if let Err(e) = std::fs::rename(path, &old) {
            tracing::warn!(path = %path.display(), "rotating a log: {e}");
        }
    }
}

/// Cuts a log that is being written: copies its newest `max` bytes to
/// `PATH.1` (replacing the older one) and truncates it in place, so the
/// writer's descriptor (opened with `O_APPEND`) keeps working and neither
/// file holds more than `max`. Whatever the workload writes between the copy
/// and the truncation is lost (a few milliseconds of output at most). The
/// size is judged by the larger of the length and the allocated blocks, and
/// only the tail is read, so a log that grew by gigabytes between two checks
/// costs one `max`-sized copy. Returns whether it cut.
pub fn rotate_running(path: &Path, max: u64) -> std::io::Result<bool> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    use std::os::unix::fs::MetadataExt as _;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = meta.len();
    let used = len.max(meta.blocks().saturating_mul(512));
    if max == 0 || used <= max {
        return Ok(false);
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    let mut src = std::fs::File::open(path)?;
    src.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut dst =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&old)?;
    std::io::copy(&mut src.by_ref().take(max), &mut dst)?;
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// `exit code 1`, `killed by signal 9 (SIGKILL)`.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {sig} ({})", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        (None, None) => "exited".into(),
    }
}

/// What the runtime reads of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    /// Start time after boot in clock ticks (field 22).
    pub start_ticks: u64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    let state = fields.first()?.chars().next()?;
    let start_ticks = fields.get(19)?.parse().ok()?;
    Some(ProcStat { state, start_ticks })
}

pub fn read_stat(pid: i32) -> std::io::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "unreadable stat"))
}

fn reap(pid: i32) {
    // ECHILD when it is not our child: someone else reaps it.
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// The output in `paths` (stdout, then stderr): the last `tail` bytes of
/// each (everything without `tail`), read and sent 1 MiB at a time so a
/// large log never sits whole in the agent's memory; then, with `follow`,
/// what is appended while `alive` says the workload runs. A log cut by
/// rotation (shorter than what was read) is followed again from its start.
pub async fn file_logs(
    paths: &[PathBuf],
    request: LogRequest,
    alive: Box<dyn Fn() -> bool + Send>,
) -> Result<LogStream, RuntimeError> {
    let mut spans = Vec::new();
    for path in paths {
        let len = match tokio::fs::metadata(path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => return Err(RuntimeError::Io { path: path.clone(), source }),
        };
        let from = request.tail.map_or(0, |t| len.saturating_sub(t));
        spans.push((path.clone(), from, len));
    }
    let offsets: Vec<u64> = spans.iter().map(|(_, _, end)| *end).collect();
    let head = futures::stream::unfold(spans.into_iter(), |mut spans| async move {
        loop {
            let (path, from, end) = spans.next()?;
            match read_span(&path, from, end).await {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => {
                    let read = bytes.len() as u64;
                    // The rest of this span comes next.
                    let rest: Vec<_> = std::iter::once((path, from + read, end)).chain(spans).collect();
                    return Some((Ok(Bytes::from(bytes)), rest.into_iter()));
                }
                Err(e) => return Some((Err(e), Vec::new().into_iter())),
            }
        }
    });
    if !request.follow {
        return Ok(Box::pin(head));
    }
    struct Follow {
        paths: Vec<PathBuf>,
        offsets: Vec<u64>,
        alive: Box<dyn Fn() -> bool + Send>,
        done: bool,
    }
    let state = Follow { paths: paths.to_vec(), offsets, alive, done: false };
    let rest = futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            // Checked before reading, so output written just before the exit is still sent.
            let running = (st.alive)();
            let mut out = Vec::new();
            for (path, offset) in st.paths.iter().zip(st.offsets.iter_mut()) {
                match read_from(path, *offset).await {
                    Ok((start, bytes)) => {
                        *offset = start + bytes.len() as u64;
                        out.extend_from_slice(&bytes);
                    }
                    Err(e) => return Some((Err(e), st)),
                }
            }
            st.done = !running;
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), st));
            }
            if st.done {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ok(Box::pin(futures::StreamExt::chain(head, rest)))
}

/// Bytes `from..end` of `path`, at most 1 MiB of them; empty when the
/// file is missing or (cut meanwhile) shorter.
async fn read_span(path: &Path, from: u64, end: u64) -> std::io::Result<Vec<u8>> {
    if from >= end {
        return Ok(Vec::new());
    }
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    file.seek(std::io::SeekFrom::Start(from)).await?;
    let mut buf = Vec::new();
    file.take((end - from).min(1 << 20)).read_to_end(&mut buf).await?;
    Ok(buf)
}

/// What was appended past `offset` (at most 1 MiB per read, so one poll
/// stays small), with the offset it starts at: 0 when the file is now
/// shorter than `offset`, that is, rotation cut it.
async fn read_from(path: &Path, offset: u64) -> std::io::Result<(u64, Vec<u8>)> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((offset, Vec::new())),
        Err(e) => return Err(e),
    };
    let len = file.metadata().await?.len();
    let start = if len < offset { 0 } else { offset };
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut buf = Vec::new();
    file.take(1 << 20).read_to_end(&mut buf).await?;
    Ok((start, buf))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        let text =
            "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_stat(text), Some(ProcStat { state: 'S', start_ticks: 987_654 }));
        assert_eq!(parse_stat("12 (x) Z"), None);
        let me = read_stat(std::process::id() as i32).unwrap();
        assert!(me.state.is_ascii_uppercase(), "{me:?}");
        assert!(me.start_ticks > 0);
    }

    #[tokio::test]
    async fn logs_stream_in_chunks_and_follow_across_a_rotation() {
        use futures::StreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("stdout.log"), dir.path().join("stderr.log"));
        std::fs::write(&out, vec![b'x'; 3 << 20]).unwrap();
        std::fs::write(&err, b"oops\n").unwrap();
        // All of it, without following: in chunks of at most 1 MiB.
        let request = LogRequest { follow: false, tail: None };
        let mut stream = file_logs(&[out.clone(), err.clone()], request, Box::new(|| false)).await.unwrap();
        let mut chunks = Vec::new();
        while let Some(c) = stream.next().await {
            chunks.push(c.unwrap());
        }
        assert!(
            chunks.iter().all(|c| c.len() <= 1 << 20),
            "{:?}",
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
        );
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), (3 << 20) + 5);
        assert_eq!(&chunks.last().unwrap()[..], b"oops\n");
        // Following: a log cut by rotation is read again from its start.
        let request = LogRequest { follow: true, tail: Some(4) };
        let mut stream = file_logs(&[out.clone(), err.clone()], request, Box::new(|| true)).await.unwrap();
        assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"xxxx");
        assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"ops\n");
        std::fs::OpenOptions::new().write(true).open(&out).unwrap().set_len(0).unwrap();
        std::fs::write(&out, b"after the cut\n").unwrap();
        let next =
            tokio::time::timeout(Duration::from_secs(30), stream.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(&next[..], b"after the cut\n");
    }

    #[test]
    fn logs_are_cut_past_their_limit_and_the_writer_keeps_writing() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stdout.log");
        // A writer that keeps its descriptor, as a running workload does.
        let mut writer = OpenOptions::new().create(true).append(true).open(&log).unwrap();
        writer.write_all(&[b'a'; 3000]).unwrap();
        assert!(!rotate_running(&log, 4096).unwrap(), "under the limit: nothing to do");
        writer.write_all(&[b'b'; 3000]).unwrap();
        assert!(rotate_running(&log, 4096).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        let kept = std::fs::read(dir.path().join("stdout.log.1")).unwrap();
        assert_eq!(kept.len(), 4096, "only the newest `max` bytes are kept");
        assert_eq!(&kept[kept.len() - 3000..], &[b'b'; 3000][..]);
        assert_eq!(kept[0], b'a');
        writer.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "after\n", "O_APPEND writes land at the new end");
        // At a (re)start a large log is moved aside whole.
        std::fs::write(&log, [b'c'; 5000]).unwrap();
        rotate_if_large(&log, 4096);
        assert!(!log.exists());
        assert_eq!(std::fs::metadata(dir.path().join("stdout.log.1")).unwrap().len(), 5000);
    }

    #[test]
    fn exits_are_described() {
        assert_eq!(describe_exit(ExitStatus::from_raw(1 << 8)), "exit code 1");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by signal 9 (SIGKILL)");
    }
}
