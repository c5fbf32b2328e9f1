//! Which runtime the dev agents (and the demo's workloads) use: Docker when
//! an engine answers, else plain processes. The decision is a pure function
//! of what was found; the probes around it only look.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;

use crate::admin_client::AdminClient;

/// The image the demo runs under Docker (built by `inference/build-image.sh`).
pub const DEMO_IMAGE: &str = "gantry-infer:dev";
/// The binary the demo runs as a process.
pub const INFER_BINARY: &str = "gantry-infer";
const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeChoice {
    /// Docker when an engine answers on its socket, else process.
    Auto,
    /// Containers on the host's Docker engine.
    Docker,
    /// Plain child processes.
    Process,
}

/// What the probes found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The Docker socket asked.
    pub docker_socket: PathBuf,
    /// A Docker engine answered there.
    pub engine: bool,
    /// The engine has [`DEMO_IMAGE`].
    pub image: bool,
    /// `gantry-infer` next to gantryctl or on PATH.
    pub infer: Option<PathBuf>,
}

/// The demo's workloads: a Docker image or a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DemoTarget {
    Image(String),
    Command(PathBuf),
}

/// The runtime chosen, and why, in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `docker` or `process`.
    pub runtime: &'static str,
    /// The agents' `--docker-socket`: the engine, or empty for processes only.
    pub docker_socket: String,
    pub why: String,
    /// For `--demo` only.
    pub demo: Option<DemoTarget>,
}

/// Decides for `gantryctl dev` (`demo`: also what the demo workloads run).
pub fn decide(choice: RuntimeChoice, found: &Found, demo: bool) -> anyhow::Result<Decision> {
    let sock = found.docker_socket.display();
    let build_image = "build it with inference/build-image.sh";
    let build_binary =
        "build it with `cargo build -p gantry-infer` (it is looked for next to gantryctl, then on PATH)";
    let docker = |why: String| Decision {
        runtime: "docker",
        docker_socket: found.docker_socket.display().to_string(),
        why,
        demo: demo.then(|| DemoTarget::Image(DEMO_IMAGE.to_string())),
    };
    let process = |why: String, path: Option<&PathBuf>| Decision {
        runtime: "process",
        docker_socket: String::new(),
        why,
        demo: path.map(|p| DemoTarget::Command(p.clone())),
    };
    match choice {
        RuntimeChoice::Docker => {
            if !found.engine {
                bail!("--runtime docker: no Docker engine answers on {sock}; start Docker or use --runtime process");
            }
            if demo && !found.image {
                bail!("--runtime docker: the image {DEMO_IMAGE} does not exist; {build_image}");
            }
            Ok(docker(format!("asked for (engine on {sock})")))
        }
        RuntimeChoice::Process if !demo => Ok(process("asked for".into(), None)),
        RuntimeChoice::Process => match &found.infer {
            Some(p) => Ok(process(format!("asked for; runs {}", p.display()), Some(p))),
            None => bail!("--runtime process: no {INFER_BINARY} binary found; {build_binary}"),
        },
        RuntimeChoice::Auto if !demo => Ok(if found.engine {
            docker(format!("a Docker engine answers on {sock}"))
        } else {
            process(format!("no Docker engine answers on {sock}"), None)
        }),
        RuntimeChoice::Auto => {
            if found.engine && found.image {
                return Ok(docker(format!("a Docker engine answers on {sock} and has {DEMO_IMAGE}")));
            }
            let missing = if found.engine {
                format!("the Docker engine has no image {DEMO_IMAGE} ({build_image})")
            } else {
                format!("no Docker engine answers on {sock}")
            };
            match &found.infer {
                Some(p) => Ok(process(format!("{missing}; runs {}", p.display()), Some(p))),
                None => bail!(
                    "nothing to run the demo with: {missing}, and no {INFER_BINARY} binary was found; \
                     {build_binary}, or {build_image}"
                ),
            }
        }
    }
}

/// Looks for a Docker engine, the demo image, and the `gantry-infer` binary.
pub async fn probe(bin_dir: &Path) -> Found {
    let docker_socket = docker_socket();
    let client = AdminClient::new(&docker_socket);
    let ask = |path: String| {
        let client = client.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(2), client.get_raw(&path))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|(status, _)| status.is_success())
                .unwrap_or(false)
        }
    };
    let engine = ask("/_ping".into()).await;
    let image = engine && ask(format!("/images/{DEMO_IMAGE}/json")).await;
    Found { docker_socket, engine, image, infer: find_infer(bin_dir) }
}

/// `DOCKER_HOST` when it names a Unix socket, else Docker's default.
fn docker_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_SOCKET))
}

fn find_infer(bin_dir: &Path) -> Option<PathBuf> {
    let next_to = bin_dir.join(INFER_BINARY);
    if next_to.is_file() {
        return Some(next_to);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(INFER_BINARY)).find(|p| p.is_file())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn found(engine: bool, image: bool, infer: bool) -> Found {
        Found {
            docker_socket: "/var/run/docker.sock".into(),
            engine,
            image,
            infer: infer.then(|| PathBuf::from("/bin/gantry-infer")),
        }
    }

    #[test]
    fn auto_takes_docker_when_an_engine_answers() {
        let d = decide(RuntimeChoice::Auto, &found(true, false, false), false).unwrap();
        assert_eq!((d.runtime, d.docker_socket.as_str()), ("docker", "/var/run/docker.sock"));
        let d = decide(RuntimeChoice::Auto, &found(false, false, false), false).unwrap();
        assert_eq!(
            (d.runtime, d.why.as_str()),
            ("process", "no Docker engine answers on /var/run/docker.sock")
        );
        assert_eq!(d.demo, None);
    }

    #[test]
    fn the_demo_needs_the_image_for_docker_else_the_binary() {
        let d = decide(RuntimeChoice::Auto, &found(true, true, true), true).unwrap();
        assert_eq!(d.demo, Some(DemoTarget::Image(DEMO_IMAGE.into())));
        let d = decide(RuntimeChoice::Auto, &found(true, false, true), true).unwrap();
        assert_eq!(d.runtime, "process");
        assert!(d.why.starts_with("the Docker engine has no image gantry-infer:dev"), "{}", d.why);
        assert_eq!(d.demo, Some(DemoTarget::Command("/bin/gantry-infer".into())));
        let e = decide(RuntimeChoice::Auto, &found(false, false, false), true).unwrap_err().to_string();
        assert!(e.contains("cargo build -p gantry-infer") && e.contains("build-image.sh"), "{e}");
    }

    #[test]
    fn an_explicit_choice_is_checked() {
        let e = decide(RuntimeChoice::Docker, &found(false, false, true), false).unwrap_err().to_string();
        assert!(e.contains("no Docker engine answers"), "{e}");
        let e = decide(RuntimeChoice::Docker, &found(true, false, true), true).unwrap_err().to_string();
        assert!(e.contains("image gantry-infer:dev does not exist"), "{e}");
        let e = decide(RuntimeChoice::Process, &found(true, true, false), true).unwrap_err().to_string();
        assert!(e.contains("no gantry-infer binary"), "{e}");
        assert_eq!(
            decide(RuntimeChoice::Process, &found(true, true, false), false).unwrap().runtime,
            "process"
        );
    }
}
