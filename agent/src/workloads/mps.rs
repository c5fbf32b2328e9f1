//! MPS control daemons: one per GPU in `mps` sharing while it has at least
//! one MPS client.
//!
//! - [`MpsControl::Program`] (nvml): the agent runs
//!   `nvidia-cuda-mps-control -d` with `CUDA_VISIBLE_DEVICES=<GPU UUID>` and
//!   its own `CUDA_MPS_PIPE_DIRECTORY` and `CUDA_MPS_LOG_DIRECTORY`
//!   (`<data_dir>/mps/<index>/{pipe,log}`), and stops it with
//!   `echo quit | nvidia-cuda-mps-control`. The daemon forks away and
//!   survives agent restarts; it counts as running while its `control`
//!   socket in the pipe directory accepts connections, so a new agent finds
//!   it, and the manager starts it again if it died while clients remain.
//! - [`MpsControl::Modelled`] (sim): the same lifecycle goes to the sim
//!   backend's modelled daemon, visible in telemetry as `mps_clients`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
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
    #[error("GPU {index}: another MPS operation is under way")]
    Busy { index: u32 },
}

/// How long a started daemon may take to open its control socket, and a
/// stopped one to close it.
const SETTLE: Duration = Duration::from_secs(10);

pub struct Mps {
    control: MpsControl,
    dir: PathBuf,
    /// GPUs with a start or stop under way. A std `Mutex`: held only to
    /// insert or remove, never across an await.
    busy: Mutex<BTreeSet<u32>>,
}

impl Mps {
    /// Daemons whose directories live under `dir` (`<data_dir>/mps`).
    pub fn new(control: MpsControl, dir: PathBuf) -> Mps {
        Mps { control, dir, busy: Mutex::new(BTreeSet::new()) }
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
            MpsControl::Program(_) => control_socket_answers(&self.pipe_dir(index)),
        }
    }

    /// Starts GPU `index`'s daemon unless it runs.
    pub async fn ensure(&self, index: u32, gpu_uuid: &str) -> Result<(), MpsError> {
        if self.running(index) {
            return Ok(());
        }
        let _busy = self.claim(index)?;
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
        if !self.running(index) {
            return Ok(());
        }
        let _busy = self.claim(index)?;
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
        let deadline = Instant::now() + SETTLE;
        while !control_socket_answers(&pipe) {
            if Instant::now() >= deadline {
                return Err(fail(format!("its control socket did not appear in {}", pipe.display())));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
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
        while control_socket_answers(&pipe) {
            if Instant::now() >= deadline {
                return Err(fail("the daemon still answers after quit".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn claim(&self, index: u32) -> Result<Claim<'_>, MpsError> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(index) {
            return Err(MpsError::Busy { index });
        }
        Ok(Claim { mps: self, index })
    }
}

struct Claim<'a> {
    mps: &'a Mps,
    index: u32,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.mps.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.index);
    }
}

fn control_socket_answers(pipe: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(pipe.join("control")).is_ok()
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
}
