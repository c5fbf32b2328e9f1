//! `gantryctl sim replay` as a script would use it.

use std::process::Command;

use gantry_tests::bin;
use serde_json::Value;

fn small_trace(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut nodes = String::from("sn,cpu_milli,memory_mib,gpu,model\n");
    for i in 0..6 {
        nodes.push_str(&format!(
            "n{i},64000,262144,{},{}\n",
            if i % 2 == 0 { 8 } else { 4 },
            if i < 3 { "G2" } else { "T4" }
        ));
    }
    let mut pods = String::from("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n");
    for i in 0..40 {
        let (num, milli) = match i % 4 {
            0 => (1, 1000),
            1 => (1, 500),
            2 => (2, 1000),
            _ => (1, 250),
        };
        let spec = if i % 5 == 0 { "T4" } else { "" };
        pods.push_str(&format!("p{i},4000,8192,{num},{milli},{spec}\n"));
    }
    std::fs::write(dir.join("nodes.csv"), nodes)?;
    std::fs::write(dir.join("pods.csv"), pods)?;
    Ok(())
}

fn replay(dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(bin("gantryctl"))
        .args(["--json", "sim", "replay", "--seeds", "1..3", "--nodes"])
        .arg(dir.join("nodes.csv"))
        .arg("--pods")
        .arg(dir.join("pods.csv"))
        .args(extra)
        .output()?)
}

#[test]
fn replay_json_has_every_arrival_level() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    small_trace(dir.path())?;
    let out = replay(dir.path(), &["--policy", "binpack"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout)?;
    for level in ["90", "100", "110", "120", "130"] {
        let pct = v["unallocated_gpu_pct"][level].as_f64();
        assert!(pct.is_some_and(|p| (0.0..=100.0).contains(&p)), "level {level}: {v}");
    }

    let out = replay(dir.path(), &["--policy", "all"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout)?;
    for policy in ["binpack", "spread", "fgd", "least-loaded"] {
        assert!(v[policy]["unallocated_gpu_pct"]["100"].is_number(), "policy {policy} missing: {v}");
    }
    Ok(())
}

#[test]
fn replay_errors_name_the_problem() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    small_trace(dir.path())?;
    let out = replay(dir.path(), &["--policy", "no-such-policy"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-policy"));
    std::fs::write(dir.path().join("pods.csv"), "name,cpu_milli\np0,abc\n")?;
    let out = replay(dir.path(), &[])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pods.csv"), "{err}");
    Ok(())
}
