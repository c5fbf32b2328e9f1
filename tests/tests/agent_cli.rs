//! The agent binary's behaviour at start-up, as an operator sees it.

use std::process::Command;

use gantry_tests::bin;

fn pki() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for args in [
        vec!["certs", "init", "--dir"],
        vec!["certs", "issue", "--role", "agent", "--name", "gpu-01", "--dir"],
    ] {
        let out = Command::new(bin("gantryctl")).args(&args).arg(dir.path()).output()?;
        anyhow::ensure!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(dir)
}

fn agent(pki: &std::path::Path, extra: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(bin("gantry-agent"))
        .args(["--coordinator", "127.0.0.1:9", "--metrics-listen", ""])
        .arg("--tls-ca")
        .arg(pki.join("ca.pem"))
        .arg("--tls-cert")
        .arg(pki.join("agent-gpu-01.pem"))
        .arg("--tls-key")
        .arg(pki.join("agent-gpu-01.key"))
        .args(extra)
        .env("GANTRY_LOG", "warn")
        // Errors stay one readable line even where backtraces are asked for.
        .env("RUST_BACKTRACE", "1")
        .output()?)
}

#[test]
fn nvml_backend_without_a_driver_fails_clearly() -> anyhow::Result<()> {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!("an NVIDIA driver is present on this host; nothing to check");
        return Ok(());
    }
    let dir = pki()?;
    let out = agent(dir.path(), &["--gpu-backend", "nvml"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "agent started without a driver: {stderr}");
    assert!(stderr.contains("NVIDIA driver"), "{stderr}");
    assert!(stderr.contains("--gpu-backend sim"), "{stderr}");
    Ok(())
}

#[test]
fn bad_config_names_the_field() -> anyhow::Result<()> {
    let dir = pki()?;
    let out = agent(dir.path(), &["--gpu-backend", "sim", "--sim-gpus", "3xNoSuchGPU"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("sim_gpus") && stderr.contains("NoSuchGPU"), "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1, "{stderr}");

    let out = agent(dir.path(), &["--gpu-backend", "sim", "--node-name", "someone-else"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("node_name") && stderr.contains("gpu-01"), "{stderr}");
    Ok(())
}
