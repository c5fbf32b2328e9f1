//! The real MPS path (`MpsControl::Program`) against a stand-in for
//! `nvidia-cuda-mps-control`: a Python script that behaves as the real one
//! did on an H100 with driver 580. With `-d` it forks a daemon that writes
//! its pid to `$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid` and
//! listens on a `SOCK_SEQPACKET` socket `control` there, or exits 1 when one
//! already answers; otherwise it sends its standard input (`quit`) to that
//! daemon, which removes its pid file, exits and leaves the socket file.
//! Skipped when python3 is missing.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use gantry_agent::workloads::mps::{Mps, MpsControl};

const FAKE: &str = r#"#!/usr/bin/env python3
import os, socket, sys
path = os.path.join(os.environ["CUDA_MPS_PIPE_DIRECTORY"], "control")
pidfile = os.path.join(os.environ["CUDA_MPS_PIPE_DIRECTORY"], "nvidia-cuda-mps-control.pid")
def answers():
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).connect(path)
        return True
    except OSError:
        return False
if sys.argv[1:] == ["-d"]:
    if answers():
        print("An instance of this daemon is already running")
        sys.exit(1)
    with open(os.path.join(os.environ["CUDA_MPS_LOG_DIRECTORY"], "started-for"), "w") as f:
        f.write(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    if os.fork() > 0:
        sys.exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if os.path.exists(path):
        os.unlink(path)
    s.bind(path)
    s.listen(8)
    # The real daemon answers on its socket a moment before its pid file is
    # there; widen that moment so a check that races it fails every time.
    import time
    time.sleep(0.3)
    # Named like its program, as the real daemon is (PR_SET_NAME).
    import ctypes
    ctypes.CDLL(None).prctl(15, os.path.basename(sys.argv[0]).encode()[:15], 0, 0, 0)
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    while True:
        c, _ = s.accept()
        if c.recv(64).strip() == b"quit":
            os.unlink(pidfile)
            os._exit(0)
        c.close()
else:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c.connect(path)
    c.sendall(sys.stdin.read().encode())
    c.close()
"#;

#[tokio::test]
async fn program_daemon_starts_once_and_quits() {
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        println!("SKIPPED: python3 is not available for the stand-in MPS control program");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("fake-mps-control");
    std::fs::write(&program, FAKE).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mps = Mps::new(MpsControl::Program(program), dir.path().join("mps"));

    assert!(!mps.running(2));
    mps.ensure(2, "GPU-abc").await.unwrap();
    assert!(mps.running(2));
    assert!(mps.pipe_dir(2).join("control").exists());
    let started_for = std::fs::read_to_string(mps.log_dir(2).join("started-for")).unwrap();
    assert_eq!(started_for, "GPU-abc", "the daemon sees only its GPU");
    // Already running: not started twice (the marker is not rewritten).
    std::fs::remove_file(mps.log_dir(2).join("started-for")).unwrap();
    mps.ensure(2, "GPU-abc").await.unwrap();
    assert!(!mps.log_dir(2).join("started-for").exists());

    mps.stop(2).await.unwrap();
    assert!(!mps.running(2));
    assert!(mps.pipe_dir(2).join("control").exists(), "the quit daemon leaves its socket file");

    // Two replicas starting at once: one daemon start, and both succeed
    // (a second `-d` would exit 1, as the real program does).
    let (a, b) = tokio::join!(mps.ensure(2, "GPU-abc"), mps.ensure(2, "GPU-abc"));
    a.unwrap();
    b.unwrap();
    assert!(mps.running(2));

    // Once `ensure` returned, the daemon's pid file is there: the agent waits
    // for it, so `running` never disagrees with an earlier `ensure`.
    // A daemon killed outright leaves its pid file: it does not count as running,
    // and the next start replaces it.
    let pid: i32 = std::fs::read_to_string(mps.pipe_dir(2).join("nvidia-cuda-mps-control.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let gone = std::time::Instant::now();
    while mps.running(2) {
        assert!(
            gone.elapsed() < std::time::Duration::from_secs(10),
            "a killed daemon still counts as running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    mps.ensure(2, "GPU-abc").await.unwrap();
    assert!(mps.running(2));
    mps.stop(2).await.unwrap();
    // It starts again over the stale socket file.
    mps.ensure(2, "GPU-abc").await.unwrap();
    assert!(mps.running(2));
    mps.stop(2).await.unwrap();
}

#[tokio::test]
async fn a_missing_program_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mps = Mps::new(MpsControl::Program("/nonexistent/nvidia-cuda-mps-control".into()), dir.path().into());
    let err = mps.ensure(0, "GPU-x").await.unwrap_err().to_string();
    assert!(err.contains("GPU 0") && err.contains("/nonexistent/nvidia-cuda-mps-control"), "{err}");
}
