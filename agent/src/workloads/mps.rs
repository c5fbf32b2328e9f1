//! MPS control daemons: one per GPU in `mps` sharing while it has at least
//! one MPS client.
//!
//! - [`MpsControl::Program`] (nvml): the agent runs
//!   `nvidia-cuda-mps-control -d` with `CUDA_VISIBLE_DEVICES=<GPU UUID>` and
//!   its own `CUDA_MPS_PIPE_DIRECTORY` and `CUDA_MPS_LOG_DIRECTORY`
//!   (`<data_dir>/mps/<index>/{pipe,log}`), and stops it with
//!   `echo quit | nvidia-cuda-mps-control`. The daemon forks away and
//!   survives agent restarts, so a new agent finds it, and the manager
//!   starts it again if it died while clients remain. It counts as running
//!   while the process named in `nvidia-cuda-mps-control.pid` in its pipe
//!   directory lives and is the control program; checking is silent, where
//!   a connect to its `control` socket would log two lines in its
//!   `control.log` on every reconcile tick. Without a pid file (other
//!   drivers) a connect decides. A second `-d` on the same pipe directory
//!   exits 1 ("An instance of this daemon is already running"), so this is
//!   always checked first.
//! - [`MpsControl::Modelled`] (sim): the same lifecycle goes to the sim
//!   backend's modelled daemon, visible in telemetry as `mps_clients`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::gpu::Gpus;

pub enum MpsControl {
    /// The sim backend's modelled daemons.
    Modelled(Gpus),
    /// The real control program (`nvidia-cuda-mps-control`).
    Program(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    #[error("GPU {index}: starting the MPS control daemon ({program}): {reason}")]
    Start { index: u32, program: String, reason: String },
    #[error("GPU {index}: stopping the MPS control daemon: {reason}")]
    Stop { index: u32, reason: String },
    #[error("GPU {index}: MPS control daemon: {0}", index = .1)]
    Model(crate::gpu::GpuError, u32),
}

/// How long a started daemon may take to open its control socket, and a
/// stopped one to close it.
const SETTLE: Duration = Duration::from_secs(10);
/// How long a freshly started daemon may take to write its pid file before
/// the agent takes it for a program that writes none.
const PID_FILE_WAIT: Duration = Duration::from_secs(2);

pub struct Mps {
    control: MpsControl,
    dir: PathBuf,
    /// One lock per GPU, held across a start or stop, so that replicas
    /// starting together wait for the one daemon start instead of racing a
    /// second `-d` (which the real program refuses). The outer std `Mutex`
    /// is held only to find the GPU's lock, never across an await.
    locks: Mutex<BTreeMap<u32, Arc<tokio::sync::Mutex<()>>>>,
}

impl Mps {
    /// Daemons whose directories live under `dir` (`<data_dir>/mps`).
    pub fn new(control: MpsControl, dir: PathBuf) -> Mps {
        Mps { control, dir, locks: Mutex::new(BTreeMap::new()) }
    }

    pub fn pipe_dir(&self, index: u32) -> PathBuf {
        self.dir.join(index.to_string()).join("pipe")
    }

    pub fn log_dir(&self, index: u32) -> PathBuf {
        self.dir.join(index.to_string()).join("log")
    }

    /// Whether GPU `index`'s daemon runs.
    pub fn running(&self, index: u32) -> bool {
        match &self.control {
            MpsControl::Modelled(gpus) => {
                gpus.with(|b| b.mps_model().is_some_and(|m| m.daemon_running(index)))
            }
            MpsControl::Program(program) => daemon_alive(&self.pipe_dir(index), program),
        }
    }

    /// Starts GPU `index`'s daemon unless it runs.
    pub async fn ensure(&self, index: u32, gpu_uuid: &str) -> Result<(), MpsError> {
        if self.running(index) {
            return Ok(());
        }
        let lock = self.lock(index);
        let _held = lock.lock().await;
        if self.running(index) {
            return Ok(());
        }
        match &self.control {
            MpsControl::Modelled(gpus) => gpus
                .with(|b| b.mps_model().map(|m| m.start_daemon(index)))
                .unwrap_or(Ok(()))
                .map_err(|e| MpsError::Model(e, index)),
            MpsControl::Program(program) => self.start_program(program, index, gpu_uuid).await,
        }
    }

    /// Stops GPU `index`'s daemon if it runs.
    pub async fn stop(&self, index: u32) -> Result<(), MpsError> {
        let lock = self.lock(index);
        let _held = lock.lock().await;
        if !self.running(index) {
            return Ok(());
        }
        match &self.control {
            MpsControl::Modelled(gpus) => gpus
                .with(|b| b.mps_model().map(|m| m.stop_daemon(index)))
                .unwrap_or(Ok(()))
                .map_err(|e| MpsError::Model(e, index)),
            MpsControl::Program(program) => self.stop_program(program, index).await,
        }
    }

    /// Tells the modelled daemon its client count (the real one counts its own).
    pub fn set_clients(&self, index: u32, clients: u32) {
        if let MpsControl::Modelled(gpus) = &self.control {
            gpus.with(|b| {
                if let Some(m) = b.mps_model() {
                    let _ = m.set_clients(index, clients);
                }
            });
        }
    }

    async fn start_program(&self, program: &Path, index: u32, gpu_uuid: &str) -> Result<(), MpsError> {
        let fail = |reason: String| MpsError::Start { index, program: program.display().to_string(), reason };
        let (pipe, log) = (self.pipe_dir(index), self.log_dir(index));
        for d in [&pipe, &log] {
            std::fs::create_dir_all(d).map_err(|e| fail(format!("{}: {e}", d.display())))?;
        }
        tracing::info!(gpu = index, pipe = %pipe.display(), "starting the MPS control daemon");
        let status = tokio::process::Command::new(program)
            .arg("-d")
            .env("CUDA_VISIBLE_DEVICES", gpu_uuid)
            .env("CUDA_MPS_PIPE_DIRECTORY", &pipe)
            .env("CUDA_MPS_LOG_DIRECTORY", &log)
            .stdin(Stdio::null())
            .status()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !status.success() {
            return Err(fail(format!("{status}; see {}", log.join("control.log").display())));
        }
        let started = Instant::now();
        // Up once clients can connect and its pid file names it. The daemon
        // listens before it writes the pid file, so a connect alone would
        // report it up while `running` still reads a missing (or a killed
        // daemon's stale) pid file: wait for both, so that once `ensure`
        // returns, every later check agrees. A control program that writes
        // no pid file at all is taken at its socket after PID_FILE_WAIT.
        loop {
            let answers = control_socket_answers(&pipe);
            let pid_file = pid_file_names_daemon(&pipe, program);
            if answers && (pid_file || (started.elapsed() >= PID_FILE_WAIT && !pipe.join(PID_FILE).exists()))
            {
                return Ok(());
            }
            if started.elapsed() >= SETTLE {
                return Err(fail(format!("its control socket did not appear in {}", pipe.display())));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop_program(&self, program: &Path, index: u32) -> Result<(), MpsError> {
        let fail = |reason: String| MpsError::Stop { index, reason };
        let pipe = self.pipe_dir(index);
        tracing::info!(gpu = index, "stopping the MPS control daemon: no MPS client left");
        let mut child = tokio::process::Command::new(program)
            .env("CUDA_MPS_PIPE_DIRECTORY", &pipe)
            .env("CUDA_MPS_LOG_DIRECTORY", self.log_dir(index))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b"quit\n").await.map_err(|e| fail(e.to_string()))?;
        }
        let status = child.wait().await.map_err(|e| fail(e.to_string()))?;
        if !status.success() {
            return Err(fail(status.to_string()));
        }
        let deadline = Instant::now() + SETTLE;
        while daemon_alive(&pipe, program) {
            if Instant::now() >= deadline {
                return Err(fail("the daemon still answers after quit".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn lock(&self, index: u32) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(index).or_default().clone()
    }
}

/// The file in the pipe directory where the daemon writes its pid (driver 580).
const PID_FILE: &str = "nvidia-cuda-mps-control.pid";

/// Whether the pipe directory's daemon runs: the pid in [`PID_FILE`] is a
/// live process whose name (`/proc/PID/comm`, at most 15 bytes) is the
/// control program's, so a reused pid does not count. Without a pid file,
/// whether its control socket accepts a connection.
fn daemon_alive(pipe: &Path, program: &Path) -> bool {
    if !pipe.join(PID_FILE).exists() {
        return control_socket_answers(pipe);
    }
    pid_file_names_daemon(pipe, program)
}

/// Whether [`PID_FILE`] exists and names a live process of the program.
fn pid_file_names_daemon(pipe: &Path, program: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(pipe.join(PID_FILE)) else { return false };
    let Ok(pid) = text.trim().parse::<u32>() else { return false };
    let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else { return false };
    let name = program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    comm.trim_end_matches('\n') == comm_of(&name)
}

/// What the kernel keeps of a program name as a process's `comm`.
fn comm_of(name: &str) -> &str {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Whether a daemon accepts connections on the pipe directory's `control`
/// socket. The real daemon's is a `SOCK_SEQPACKET` socket (seen on driver
/// 580: a stream connect fails with EPROTOTYPE), and it leaves the socket
/// file behind when it quits, so only a connect tells. A stream socket is
/// accepted too, for other control programs.
fn control_socket_answers(pipe: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(addr) = UnixAddr::new(&pipe.join("control")) else { return false };
    [SockType::SeqPacket, SockType::Stream].into_iter().any(|kind| {
        socket(AddressFamily::Unix, kind, SockFlag::SOCK_CLOEXEC, None)
            .is_ok_and(|fd| connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).is_ok())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gantry_common::gpu_spec::parse_gpu_spec;

    use super::*;
    use crate::gpu::sim::SimBackend;

    #[tokio::test]
    async fn modelled_daemon_lifecycle() {
        let sim = SimBackend::new("n", &parse_gpu_spec("2xL4-24GB").unwrap());
        let gpus = Gpus::new(Box::new(sim), Vec::new());
        let mps = Mps::new(MpsControl::Modelled(gpus.clone()), PathBuf::from("/nonexistent/mps"));
        assert!(!mps.running(1));
        mps.ensure(1, "GPU-x").await.unwrap();
        mps.ensure(1, "GPU-x").await.unwrap();
        assert!(mps.running(1) && !mps.running(0));
        mps.set_clients(1, 2);
        assert_eq!(gpus.sample().unwrap()[1].mps_clients, Some(2));
        mps.stop(1).await.unwrap();
        mps.stop(1).await.unwrap();
        assert_eq!(gpus.sample().unwrap()[1].mps_clients, None);
        assert_eq!(mps.pipe_dir(3), PathBuf::from("/nonexistent/mps/3/pipe"));
    }

    #[test]
    fn the_kernel_keeps_15_bytes_of_a_program_name() {
        assert_eq!(comm_of("nvidia-cuda-mps-control"), "nvidia-cuda-mps");
        assert_eq!(comm_of("mps"), "mps");
        assert_eq!(comm_of("ééééééééé"), "ééééééé");
    }
}
