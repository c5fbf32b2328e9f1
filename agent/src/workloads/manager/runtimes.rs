//! The runtimes an agent has, by kind and by handle.

use super::*;

/// The runtimes, by kind.
#[derive(Clone)]
pub struct Runtimes {
    pub process: Arc<ProcessRuntime>,
    /// `None` when the docker runtime is off.
    pub docker: Option<Arc<DockerRuntime>>,
}

impl Runtimes {
    pub(super) fn by_kind(&self, kind: &str) -> Result<Arc<dyn Runtime>, RuntimeError> {
        match kind {
            "docker" => match &self.docker {
                Some(d) => Ok(d.clone()),
                None => Err(RuntimeError::NoDocker),
            },
            _ => Ok(self.process.clone()),
        }
    }

    pub(super) fn for_handle(&self, handle: &Handle) -> Result<Arc<dyn Runtime>, RuntimeError> {
        match handle {
            Handle::Process { .. } => self.by_kind("process"),
            Handle::Docker { .. } => self.by_kind("docker"),
        }
    }
}
