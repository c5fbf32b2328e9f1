//! The `process` runtime: the workload is a child process, leader of its own
//! process group, so that stopping it reaches everything it started.
//!
//! - Environment: the agent's own, less the systemd hand-over variables
//!   (`NOTIFY_SOCKET`, `WATCHDOG_*`, `LISTEN_*`), plus [`Launch::env`].
//! - Output: appended to `stdout.log` and `stderr.log` in the allocation's
//!   directory, which is also its working directory.
//! - Stop: SIGTERM to the group, SIGKILL to the group after the grace period.
//! - Agent restarts: the process does not notice (it is not in the agent's
//!   process group, and systemd's `KillMode=process` leaves it alone). The
//!   new agent finds it by pid and start time ([`Handle::Process`]); while it
//!   is not the process's parent it cannot learn its exit code, so such an
//!   exit is reported with an unknown status.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
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
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{Handle, Launch, LogRequest, LogStream, Runtime, RuntimeError, Status};

/// Variables a service manager hands the agent that must not leak to workloads.
pub const REMOVED_ENV: &[&str] =
    &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

/// Log file names in an allocation's directory.
pub const STDOUT_LOG: &str = "stdout.log";
pub const STDERR_LOG: &str = "stderr.log";

/// How long after SIGKILL a group may take to disappear before stop gives up.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct ProcessRuntime {
    /// Children this agent started, kept to reap them and read their exit
    /// status. A std `Mutex`: nothing awaits while it is held.
    children: Arc<Mutex<BTreeMap<i32, Child>>>,
}

impl ProcessRuntime {
    pub fn new() -> ProcessRuntime {
        ProcessRuntime::default()
    }

    fn children(&self) -> MutexGuard<'_, BTreeMap<i32, Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_now(&self, launch: &Launch) -> Result<Handle, RuntimeError> {
        let RuntimeSpec::Process { command } = &launch.spec.runtime else {
            return Err(RuntimeError::WrongHandle("a docker workload"));
        };
        let dir = &launch.alloc_dir;
        std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Io { path: dir.clone(), source })?;
        let open = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| RuntimeError::Io { path, source })
        };
        let (stdout, stderr) = (open(STDOUT_LOG)?, open(STDERR_LOG)?);
        let mut cmd = std::process::Command::new(command);
        cmd.args(&launch.spec.args)
            .envs(&launch.env)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        for var in REMOVED_ENV {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().map_err(|source| RuntimeError::Spawn { command: command.clone(), source })?;
        let pid = child.id() as i32;
        let start_ticks = read_stat(pid).map(|s| s.start_ticks).map_err(|source| RuntimeError::Io {
            path: PathBuf::from(format!("/proc/{pid}/stat")),
            source,
        })?;
        self.children().insert(pid, child);
        Ok(Handle::Process { pid, start_ticks })
    }

    fn status_now(&self, pid: i32, start_ticks: u64) -> Status {
        {
            let mut children = self.children();
            if let Some(child) = children.get_mut(&pid) {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        children.remove(&pid);
                        return Status::Exited { code: status.code(), message: describe_exit(status) };
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
                Status::Exited {
                    code: None,
                    message: "exited while an earlier agent was its parent: exit status unknown".into(),
                }
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

    async fn stop_now(&self, pid: i32, start_ticks: u64, grace: Duration) -> Result<(), RuntimeError> {
        // A live leader with another start time is a reused pid: not ours.
        if let Ok(s) = read_stat(pid) {
            if s.start_ticks != start_ticks && s.state != 'Z' {
                return Ok(());
            }
        }
        let pgid = Pid::from_raw(pid);
        match killpg(pgid, Signal::SIGTERM) {
            Ok(()) => {}
            Err(Errno::ESRCH) => {
                self.reap_now(pid);
                return Ok(());
            }
            Err(source) => return Err(RuntimeError::Signal { pgid: pid, source }),
        }
        let deadline = Instant::now() + grace;
        loop {
            self.reap_now(pid);
            if !group_alive(pgid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        tracing::info!(pid, "process group still running after the grace period: SIGKILL");
        match killpg(pgid, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(source) => return Err(RuntimeError::Signal { pgid: pid, source }),
        }
        let deadline = Instant::now() + KILL_WAIT;
        while Instant::now() < deadline {
            self.reap_now(pid);
            if !group_alive(pgid) {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        Err(RuntimeError::Signal { pgid: pid, source: Errno::EBUSY })
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

/// Logs from files: the last `tail` bytes of each (in order), then, when
/// following, what is appended to any of them until `alive` turns false and
/// nothing more arrives.
pub async fn file_logs(
    paths: &[PathBuf],
    request: LogRequest,
    alive: Box<dyn Fn() -> bool + Send>,
) -> Result<LogStream, RuntimeError> {
    let mut head = Vec::new();
    let mut offsets = Vec::new();
    for path in paths {
        let (bytes, end) = read_tail(path, request.tail).await?;
        head.extend_from_slice(&bytes);
        offsets.push(end);
    }
    let first = futures::stream::once(async move { Ok(Bytes::from(head)) });
    if !request.follow {
        return Ok(Box::pin(first));
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
                    Ok(bytes) => {
                        *offset += bytes.len() as u64;
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
    Ok(Box::pin(futures::StreamExt::chain(first, rest)))
}

/// The last `tail` bytes of `path` (all without `tail`) and its length. A
/// missing file reads as empty.
async fn read_tail(path: &Path, tail: Option<u64>) -> Result<(Vec<u8>, u64), RuntimeError> {
    let io = |source| RuntimeError::Io { path: path.to_path_buf(), source };
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().await.map_err(io)?.len();
    let from = tail.map_or(0, |t| len.saturating_sub(t));
    file.seek(std::io::SeekFrom::Start(from)).await.map_err(io)?;
    let mut buf = Vec::with_capacity((len - from) as usize);
    file.take(len - from).read_to_end(&mut buf).await.map_err(io)?;
    Ok((buf, len))
}

/// Everything past `offset` (bounded per read so one poll stays small).
async fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::new();
    file.take(1 << 20).read_to_end(&mut buf).await?;
    Ok(buf)
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

    #[test]
    fn exits_are_described() {
        assert_eq!(describe_exit(ExitStatus::from_raw(1 << 8)), "exit code 1");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by signal 9 (SIGKILL)");
    }
}
