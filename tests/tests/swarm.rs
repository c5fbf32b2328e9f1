//! A small swarm (`gantryctl bench swarm`) against real coordinators: 300
//! simulated nodes, each with its own certificate and QUIC connection,
//! through every phase. The full runs (1,000 to 10,000 nodes) are
//! benchmarks (docs/BENCHMARKS.md); here only what must hold is checked,
//! never how fast.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use gantry_tests::{bin, serial};
use serde_json::Value;

#[test]
fn a_small_swarm_goes_through_every_phase() -> anyhow::Result<()> {
    let _serial = serial();
    let out = Command::new(bin("gantryctl"))
        .args([
            "bench",
            "swarm",
            "--nodes",
            "300",
            "--steady-secs",
            "3",
            "--phase-timeout-secs",
            "240",
            "--json",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the swarm failed:\n{stderr}");
    let stdout = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object per size:\n{stdout}");
    let r: Value = serde_json::from_str(lines[0])?;
    let num = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing or not a number in {r}"));
    assert_eq!(num("nodes"), 300.0);
    // Every node beat: the leader counted about one heartbeat per node per second.
    assert!(num("heartbeats_per_s") > 100.0, "{r}");
    for k in [
        "leader_cpu_pct",
        "leader_rss_mib",
        "follower_rss_mib",
        "placements_per_s_single_workload",
        "placements_per_s_batch",
        "placements_per_s_clients",
        "detect_dead_s",
        "wiped_follower_catch_up_s",
        "failover_election_s",
    ] {
        assert!(num(k) > 0.0, "{k} in {r}");
    }
    // 300 nodes of 8 GPUs: 40 % of the GPUs as one workload, as many one-replica workloads by batch.
    assert_eq!(num("single_workload_replicas"), 960.0);
    assert_eq!(num("batch_workloads"), 960.0);
    // 1 % went silent; their allocations ran elsewhere before the run went on.
    assert_eq!(num("dead_nodes"), 3.0);
    assert!(num("dead_allocs_replaced") > 0.0, "the silenced nodes held nothing: {r}");
    // Not down before the deadline could pass: a node's last heartbeat is
    // at most one interval (plus a little transit) before it went silent.
    let earliest = num("node_down_after_s") - num("heartbeat_interval_s") - 0.5;
    assert!(num("dead_marked_down_s") >= earliest, "{r}");
    assert!(num("failover_reporting_s") >= num("failover_election_s"), "{r}");
    Ok(())
}
