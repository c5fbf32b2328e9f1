//! `gantryctl logs` through any coordinator: the output comes down the
//! agent's own connection (through the leader when asked on a follower), so
//! it needs no HTTP listener on the agent; `--follow` is live; the errors
//! say what is wrong.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use gantry_tests::workloads::*;
use gantry_tests::{bin, serial, wait_for, DevCluster, DevOptions};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// A process that prints `tick N` five times a second.
const TICKER: &str = "name = \"ticker\"\ncommand = \"/bin/sh\"\n\
    args = [\"-c\", \"i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done\"]\nstop_grace_s = 1\n";

fn last_tick(text: &str) -> Option<u64> {
    text.lines().rev().find_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
}

#[test]
fn logs_come_through_every_coordinator_and_follow_live() -> anyhow::Result<()> {
    let _serial = serial();
    let mut c = DevCluster::start(DevOptions { agents: 1, gpus: "1xL4-24GB", ..Default::default() })?;
    let sockets: Vec<PathBuf> = c.coordinators().iter().map(|p| p.admin_socket.clone().unwrap()).collect();
    run(&sockets[0], TICKER, false)?;
    let id = wait_for(LONG, || running(&sockets[0], "ticker").ok()?.first().map(|a| a.id.clone()))?;

    // Every coordinator answers, the leader and the followers alike.
    let mut seen = 0;
    for socket in &sockets {
        let text = wait_for(LONG, || {
            let v: Value = c.ctl(socket, &["logs", &id]).ok()?;
            let text = v["logs"].as_str()?.to_string();
            last_tick(&text).filter(|n| *n >= seen).map(|_| text)
        })?;
        assert!(text.starts_with("tick 0\n"), "via {}: {text:?}", socket.display());
        seen = last_tick(&text).unwrap();
    }
    let tail: Value = c.ctl(&sockets[1], &["logs", &id, "--tail", "8"])?;
    assert!(tail["logs"].as_str().unwrap().len() <= 8, "{tail}");

    // --follow through a follower keeps delivering what the workload writes now.
    let mut follow = Command::new(bin("gantryctl"))
        .arg("--socket")
        .arg(&sockets[2])
        .args(["logs", &id, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let target = seen + 10;
    let mut reached = None;
    for line in lines.by_ref() {
        if let Some(n) = last_tick(&line?) {
            if n >= target {
                reached = Some(n);
                break;
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(reached.is_some(), "--follow ended before tick {target}");

    // Errors name the problem.
    let e = c.ctl::<Value>(&sockets[1], &["logs", "nope.0.1"]).unwrap_err().to_string();
    assert!(e.contains("no allocation \"nope.0.1\""), "{e}");
    let agent = c.agents()[0].clone();
    c.kill9(&agent)?;
    // Once the leader notices the link is gone (QUIC idle timeout, 5 s).
    wait_for(LONG, || {
        let e = c.ctl::<Value>(&sockets[1], &["logs", &id]).err()?.to_string();
        e.contains("node-1's agent is not connected to the leader").then_some(())
    })?;
    // Back without any HTTP listener of its own: logs still come, down its link.
    let config = std::fs::read_to_string(&agent.config)?;
    let config: String = config
        .lines()
        .map(|l| if l.starts_with("metrics_listen") { "metrics_listen = \"\"" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&agent.config, config)?;
    c.restart(&agent)?;
    let text = wait_for(LONG, || {
        let v: Value = c.ctl(&sockets[1], &["logs", &id]).ok()?;
        v["logs"].as_str().map(str::to_string)
    })?;
    assert!(last_tick(&text).unwrap() > seen, "{text:?}");
    stop(&sockets[0], "ticker", LONG)?;
    Ok(())
}
