//! One start, on its own task.

use super::*;

/// One start, on its own task: stale leftovers removed, devices opened, MPS
/// daemon up, then the runtime.
pub(super) struct StartTask {
    pub(super) d: DesiredAlloc,
    pub(super) node: String,
    pub(super) alloc_dir: PathBuf,
    pub(super) host_ports: BTreeMap<String, u16>,
    pub(super) previous: Option<Handle>,
    pub(super) gpus: Gpus,
    pub(super) runtimes: Runtimes,
    pub(super) mps: Arc<Mps>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    #[error(transparent)]
    Mps(#[from] crate::workloads::mps::MpsError),
    #[error("GPU {index} is not in {wanted} sharing (agent setting gpu_sharing); it is {actual}")]
    Sharing { index: u32, wanted: &'static str, actual: &'static str },
}

impl StartTask {
    pub(super) async fn run(self) -> Result<(Handle, Vec<String>), StartError> {
        let runtime = self.runtimes.by_kind(self.d.spec.runtime.kind())?;
        if let Some(old) = &self.previous {
            // An exited container is still there; a process is gone already.
            if let Ok(rt) = self.runtimes.for_handle(old) {
                rt.stop(old, Duration::ZERO).await?;
            }
        }
        let mut devices = Vec::new();
        let mut pipe = None;
        for g in &self.d.alloc.gpus {
            let sharing = self.gpus.sharing(g.index);
            let device_id = match &g.share {
                GpuShare::Mig { profile, start } => {
                    self.gpus.with(|b| b.open_mig(g.index, profile, *start))?
                }
                GpuShare::Mps { .. } => {
                    if sharing != GpuSharing::Mps {
                        return Err(StartError::Sharing {
                            index: g.index,
                            wanted: "mps",
                            actual: sharing.as_str(),
                        });
                    }
                    self.mps.ensure(g.index, &g.uuid).await?;
                    let dir = self.mps.pipe_dir(g.index);
                    // The modelled daemon makes no directory; a container mounts it either way.
                    std::fs::create_dir_all(&dir)
                        .map_err(|source| RuntimeError::Io { path: dir.clone(), source })?;
                    pipe = Some(dir);
                    g.uuid.clone()
                }
                _ => g.uuid.clone(),
            };
            devices.push(GpuDevice { index: g.index, device_id, share: g.share.clone() });
        }
        let placement = match self.d.spec.runtime {
            RuntimeSpec::Docker { .. } => Placement::Container,
            RuntimeSpec::Process { .. } => Placement::Process,
        };
        let env = env::workload_env(
            &self.d.spec,
            &self.d.alloc.id,
            &self.host_ports,
            placement,
            &devices,
            pipe.as_deref(),
        );
        let launch = Launch {
            alloc_id: self.d.alloc.id.clone(),
            node: self.node,
            spec: (*self.d.spec).clone(),
            env,
            host_ports: self.host_ports,
            devices: devices.iter().map(|g| g.device_id.clone()).collect(),
            mps_pipe_dir: pipe,
            alloc_dir: self.alloc_dir,
        };
        let handle = runtime.start(&launch).await?;
        Ok((handle, launch.devices))
    }
}
