//! What a `process` workload may do: it runs as an unprivileged user, with
//! no capabilities, `no_new_privs`, a clean environment and its own cgroups.
//!
//! - User: a uid of the allocation's own from `workload_uids`
//!   ([`super::uids`]), or the agent's `workload_user` (default `nobody`)
//!   for MPS shares and when no range is set, or the spec's `user` when the
//!   agent lists it in `workload_users_allowed`; anything else is refused
//!   before the start, with the reason.
//! - Environment: only what the spec sets, the agent's `GANTRY_*`, `CUDA_*`
//!   and `NVIDIA_*` variables for it, `PATH`, and `HOME`/`USER`/`LOGNAME`
//!   for the user — nothing of the agent's own environment.
//! - In the child, between `fork` and `exec` ([`Confinement::apply`]): join
//!   the cgroups, enter the working directory (owned by the user), drop every
//!   capability from the bounding set (so not even a root workload keeps or
//!   regains one across `exec`), clear ambient capabilities, switch group
//!   and user, set `no_new_privs` (setuid binaries cannot raise it), and
//!   mark every descriptor above stderr close-on-exec.
//!
//! This is the one place in the agent where a `fork`ed child runs code of
//! ours: it makes raw system calls only (no allocation, no locks), on data
//! prepared before the fork.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::libc;

/// Variables of the agent's own environment a workload inherits.
pub const INHERITED_PREFIXES: &[&str] = &["CUDA_", "NVIDIA_"];
/// `PATH` when the agent has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who a workload runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfineError {
    #[error(
        "user {user:?}: this agent does not allow workloads to choose it (agent setting \
         workload_users_allowed: {allowed})"
    )]
    NotAllowed { user: String, allowed: String },
    #[error("user {0:?} does not exist on this host")]
    NoSuchUser(String),
    #[error("looking up user {user:?}: {reason}")]
    Lookup { user: String, reason: String },
}

/// The user a workload runs as: the spec's when allowed, else the agent's
/// default. A spec may name `requestable` (the default, when workloads share
/// it) or one of `allowed`.
pub fn choose_user(
    requested: Option<&str>,
    requestable: Option<&str>,
    default: &str,
    allowed: &[String],
) -> Result<String, ConfineError> {
    match requested {
        None => Ok(default.to_string()),
        Some(u) if Some(u) == requestable || allowed.iter().any(|a| a == u) => Ok(u.to_string()),
        Some(u) => Err(ConfineError::NotAllowed {
            user: u.to_string(),
            allowed: if allowed.is_empty() { "none".into() } else { allowed.join(", ") },
        }),
    }
}

/// Looks a user up in the host's user database.
pub fn resolve_user(name: &str) -> Result<RunAs, ConfineError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(RunAs { name: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw() }),
        Ok(None) => Err(ConfineError::NoSuchUser(name.to_string())),
        Err(e) => Err(ConfineError::Lookup { user: name.to_string(), reason: e.to_string() }),
    }
}

/// The whole environment of a confined workload: `workload` (the spec's
/// variables and the agent's `GANTRY_*`/GPU ones for it), plus `PATH`, the
/// agent's own `CUDA_*`/`NVIDIA_*` unless the workload's override them, and
/// the user's `HOME`, `USER`, `LOGNAME`.
pub fn clean_env(
    workload: &BTreeMap<String, String>,
    agent: impl IntoIterator<Item = (String, String)>,
    user: &RunAs,
    home: &Path,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut path = DEFAULT_PATH.to_string();
    for (k, v) in agent {
        if k == "PATH" {
            path = v;
        } else if INHERITED_PREFIXES.iter().any(|p| k.starts_with(p)) {
            env.insert(k, v);
        }
    }
    env.insert("PATH".into(), path);
    env.insert("HOME".into(), home.display().to_string());
    env.insert("USER".into(), user.name.clone());
    env.insert("LOGNAME".into(), user.name.clone());
    env.extend(workload.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Everything the child needs, prepared before the fork.
pub struct Confinement {
    uid: libc::uid_t,
    gid: libc::gid_t,
    workdir: CString,
    /// Open `cgroup.procs` files of the workload's groups.
    cgroup_procs: Vec<OwnedFd>,
    /// Highest capability number (`/proc/sys/kernel/cap_last_cap`).
    last_cap: libc::c_ulong,
}

impl Confinement {
    pub fn new(user: &RunAs, workdir: &Path, cgroup_procs: Vec<OwnedFd>) -> std::io::Result<Confinement> {
        let workdir = CString::new(workdir.as_os_str().as_bytes()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "working directory holds NUL")
        })?;
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        Ok(Confinement { uid: user.uid, gid: user.gid, workdir, cgroup_procs, last_cap })
    }

    /// Installs the steps on `cmd`, to run in the child before `exec`.
    pub fn apply(self, cmd: &mut std::process::Command) {
        // SAFETY: the closure runs in the forked child, where only
        // async-signal-safe calls are allowed. It makes raw system calls on
        // data prepared above, formats the pid into a stack buffer, and
        // neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(move || self.in_child());
        }
    }

    fn in_child(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| if rc == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
        // SAFETY (each call below): plain system calls with valid arguments:
        // open file descriptors, a NUL-terminated path, integers.
        unsafe {
            let mut buf = [0u8; 20];
            let pid = format_pid(libc::getpid(), &mut buf);
            for fd in &self.cgroup_procs {
                let n = libc::write(fd.as_raw_fd(), pid.as_ptr().cast(), pid.len());
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            check(libc::chdir(self.workdir.as_ptr()))?;
            for cap in 0..=self.last_cap {
                // EINVAL for numbers this kernel does not know: nothing to drop.
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
            check(libc::setgroups(1, &self.gid))?;
            check(libc::setgid(self.gid))?;
            check(libc::setuid(self.uid))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            close_inherited_on_exec();
        }
        Ok(())
    }
}

/// Marks every descriptor above stderr close-on-exec, so nothing the agent
/// (or a library in it) opened without `O_CLOEXEC` reaches the workload.
/// `close_range` (Linux 5.11) in one call; on older kernels, `fcntl` up to
/// the descriptor limit.
///
/// # Safety
/// Only async-signal-safe system calls; meant for the child between fork and exec.
unsafe fn close_inherited_on_exec() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: system calls on integers.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC)
            == 0
        {
            return;
        }
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 20) as libc::c_int
        } else {
            1024
        };
        for fd in 3..top {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Writes `pid` in decimal into `buf`; returns the digits.
fn format_pid(pid: libc::pid_t, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = pid.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_may_only_choose_an_allowed_user() {
        assert_eq!(choose_user(None, Some("nobody"), "nobody", &[]).unwrap(), "nobody");
        assert_eq!(choose_user(Some("nobody"), Some("nobody"), "nobody", &[]).unwrap(), "nobody");
        // With uids of their own, the shared user is not for the asking.
        assert!(choose_user(Some("nobody"), None, "nobody", &[]).is_err());
        let allowed = vec!["ml".to_string()];
        assert_eq!(choose_user(Some("ml"), None, "nobody", &allowed).unwrap(), "ml");
        let e = choose_user(Some("root"), None, "nobody", &allowed).unwrap_err();
        assert_eq!(e.to_string(), "user \"root\": this agent does not allow workloads to choose it (agent setting workload_users_allowed: ml)");
        assert!(choose_user(Some("root"), Some("nobody"), "nobody", &[])
            .unwrap_err()
            .to_string()
            .ends_with("none)"));
    }

    #[test]
    fn users_are_looked_up() {
        assert_eq!(resolve_user("root").unwrap().uid, 0);
        assert_eq!(
            resolve_user("no-such-user-here").unwrap_err(),
            ConfineError::NoSuchUser("no-such-user-here".into())
        );
    }

    #[test]
    fn the_environment_holds_only_what_the_workload_should_see() {
        let workload = BTreeMap::from([
            ("MODEL".to_string(), "tiny".to_string()),
            ("GANTRY_ALLOC_ID".to_string(), "w.0.1".to_string()),
            ("CUDA_VISIBLE_DEVICES".to_string(), "GPU-1".to_string()),
        ]);
        let agent = [
            ("HOME".to_string(), "/root".to_string()),
            ("PATH".to_string(), "/opt/bin:/usr/bin".to_string()),
            ("CUDA_VISIBLE_DEVICES".to_string(), "0,1,2".to_string()),
            ("NVIDIA_DRIVER_CAPABILITIES".to_string(), "all".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "hunter2".to_string()),
            ("NOTIFY_SOCKET".to_string(), "/run/systemd/notify".to_string()),
        ];
        let user = RunAs { name: "nobody".into(), uid: 65534, gid: 65534 };
        let env = clean_env(&workload, agent, &user, Path::new("/var/lib/gantry/agent/allocs/w.0.1/work"));
        assert_eq!(env["PATH"], "/opt/bin:/usr/bin");
        assert_eq!(env["HOME"], "/var/lib/gantry/agent/allocs/w.0.1/work");
        assert_eq!(env["USER"], "nobody");
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "GPU-1", "the workload's own GPU wins over the agent's");
        assert_eq!(env["NVIDIA_DRIVER_CAPABILITIES"], "all");
        assert_eq!(env["MODEL"], "tiny");
        assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY") && !env.contains_key("NOTIFY_SOCKET"));
    }

    #[test]
    fn descriptors_the_agent_leaked_do_not_reach_the_workload() {
        // SAFETY: plain system calls.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: switching users needs root");
            return;
        }
        // A descriptor opened without O_CLOEXEC, as a careless library would.
        // SAFETY: a valid NUL-terminated path.
        // Numbered high, clear of what `ls` itself opens.
        let leaked = unsafe {
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            let high = libc::fcntl(fd, libc::F_DUPFD, 200);
            libc::close(fd);
            high
        };
        assert!(leaked >= 200);
        let dir = tempfile::tempdir().unwrap();
        let me = RunAs { name: "root".into(), uid: 0, gid: 0 };
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", "ls /proc/self/fd"]);
        Confinement::new(&me, dir.path(), Vec::new()).unwrap().apply(&mut cmd);
        let out = cmd.output().unwrap();
        // SAFETY: our own descriptor.
        unsafe { libc::close(leaked) };
        assert!(out.status.success(), "{out:?}");
        let fds: Vec<i32> =
            String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|f| f.parse().ok()).collect();
        assert!(!fds.contains(&leaked), "fd {leaked} reached the workload: {fds:?}");
        assert!(fds.contains(&0) && fds.contains(&1) && fds.contains(&2), "{fds:?}");
    }

    #[test]
    fn pids_format_without_allocating() {
        let mut buf = [0u8; 20];
        assert_eq!(format_pid(4_194_303, &mut buf), b"4194303");
        assert_eq!(format_pid(7, &mut buf), b"7");
    }
}
