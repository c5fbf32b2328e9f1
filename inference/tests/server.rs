//! Runs the real `gantry-infer` binary as a process and talks HTTP/1.1 to it
//! over a real socket. The server binds port 0 and the test learns the port
//! from its "listening on" log line: no fixed ports, no sleeps.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use gantry_infer::http::MAX_BODY_BYTES;
use gantry_infer::model::Model;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::timeout;

const BIN: &str = env!("CARGO_BIN_EXE_gantry-infer");
const WAIT: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    addr: SocketAddr,
}

/// Starts the binary with only `envs` in its environment and waits for its
/// "listening on ADDR" line.
async fn start(args: &[&str], envs: &[(&str, &str)]) -> Result<Server> {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("spawning gantry-infer")?;
    let stderr = child.stderr.take().context("stderr is piped")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let listening = timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return Ok::<_, anyhow::Error>(Some(rest.trim().parse::<SocketAddr>()?));
            }
            seen.push(line);
        }
        Ok(None)
    })
    .await
    .context("timed out waiting for the listening line")??;
    let Some(mut addr) = listening else {
        bail!("gantry-infer exited before listening; stderr:\n{}", seen.join("\n"));
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    if addr.ip().is_unspecified() {
        addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    Ok(Server { child, addr })
}

/// One HTTP/1.1 exchange on a fresh connection; returns status and JSON body.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, Value)> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut raw)).await??;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head.split(' ').nth(1).context("no status code")?.parse()?;
    let json = serde_json::from_str(body).with_context(|| format!("body is not JSON: {body:?}"))?;
    Ok((status, json))
}

fn row(value: f32) -> Vec<f32> {
    (0..16).map(|i| value * (i as f32 - 7.5) / 8.0).collect()
}

#[tokio::test]
async fn serves_health_and_inference_and_reports_the_gpu() -> Result<()> {
    let server = start(
        &["--listen", "127.0.0.1:0"],
        &[("CUDA_VISIBLE_DEVICES", "GPU-test"), ("GANTRY_ALLOC_ID", "alloc-1")],
    )
    .await?;
    let gpu = json!({"CUDA_VISIBLE_DEVICES": "GPU-test", "GANTRY_ALLOC_ID": "alloc-1"});

    let (status, mut health) = request(server.addr, "GET", "/health", "").await?;
    assert_eq!(status, 200);
    let started = health.as_object_mut().and_then(|h| h.remove("started_unix_ms"));
    assert!(
        started.as_ref().and_then(|s| s.as_u64()).is_some_and(|ms| ms > 1_600_000_000_000),
        "{started:?}"
    );
    assert_eq!(health, json!({"status": "ok", "model": "tiny-mlp", "gpu": gpu}));

    let rows = vec![row(1.0), row(-1.0), row(0.0)];
    let body = json!({ "inputs": rows }).to_string();
    let (status, reply) = request(server.addr, "POST", "/v1/infer", &body).await?;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["model"], "tiny-mlp");
    assert_eq!(reply["gpu"], gpu);
    // The server must agree with the library's forward pass on every row.
    let model = Model::embedded()?;
    let outputs = reply["outputs"].as_array().context("outputs")?;
    let argmax = reply["argmax"].as_array().context("argmax")?;
    assert_eq!((outputs.len(), argmax.len()), (3, 3));
    for (i, x) in rows.iter().enumerate() {
        let want = model.infer(x).context("finite")?;
        let got: Vec<f64> = outputs[i].as_array().context("row")?.iter().filter_map(Value::as_f64).collect();
        assert_eq!(got.len(), 4);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - f64::from(*w)).abs() < 1e-6, "row {i}: got {got:?}, want {want:?}");
        }
        assert_eq!(argmax[i].as_u64(), Some(gantry_infer::model::argmax(&want) as u64));
    }
    Ok(())
}

#[tokio::test]
async fn refuses_bad_requests_with_json_errors() -> Result<()> {
    let server = start(&["--listen", "127.0.0.1:0"], &[]).await?;

    let body = json!({ "inputs": [row(1.0), row(2.0), [1.0, 2.0, 3.0]] }).to_string();
    let (status, reply) = request(server.addr, "POST", "/v1/infer", &body).await?;
    assert_eq!((status, reply), (400, json!({"error": "inputs[2]: expected 16 numbers, got 3"})));

    let (status, reply) = request(server.addr, "POST", "/v1/infer", "{\"inputs\": 5}").await?;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap_or("").starts_with("invalid request body: invalid type"),
        "{reply}"
    );

    // Exactly one byte over the limit, so the server has read the whole body
    // when it refuses it and closes cleanly (unread bytes would make it reset).
    let prefix = "{\"inputs\": [[0]]";
    let huge = format!("{prefix}{}}}", " ".repeat(MAX_BODY_BYTES - prefix.len()));
    assert_eq!(huge.len(), MAX_BODY_BYTES + 1);
    let (status, reply) = request(server.addr, "POST", "/v1/infer", &huge).await?;
    assert_eq!(status, 413);
    assert!(reply["error"].is_string(), "{reply}");

    let (status, reply) = request(server.addr, "GET", "/v2/nothing", "").await?;
    assert_eq!(status, 404);
    assert!(reply["error"].is_string(), "{reply}");
    Ok(())
}

#[tokio::test]
async fn listens_on_the_port_the_agent_assigned() -> Result<()> {
    // GANTRY_PORT_HTTP wins over PORT; "0" lets the kernel pick a free port.
    let server = start(&[], &[("GANTRY_PORT_HTTP", "0"), ("PORT", "1")]).await?;
    assert_ne!(server.addr.port(), 1);
    let (status, health) = request(server.addr, "GET", "/health", "").await?;
    assert_eq!(status, 200);
    assert_eq!(health["gpu"], json!({"GANTRY_PORT_HTTP": "0"}));
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let mut server = start(&["--listen", "127.0.0.1:0"], &[]).await?;
    request(server.addr, "GET", "/health", "").await?;
    let pid = server.child.id().context("running")?;
    kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGTERM)?;
    let status = timeout(WAIT, server.child.wait()).await??;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test]
async fn refuses_a_corrupt_model_file_naming_the_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.json");
    let good = std::str::from_utf8(gantry_infer::model::EMBEDDED_MODEL)?;
    std::fs::write(&path, good.replacen("\"hidden_dim\": 32", "\"hidden_dim\": 31", 1))?;
    let out = Command::new(BIN)
        .arg("--model")
        .arg(&path)
        .arg("--check-model")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("w1: expected 31 numbers, got 32"), "{stderr}");

    let out = Command::new(BIN).arg("--check-model").env_clear().output().await?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("built-in: tiny-mlp 16x32x4 fnv1a64:"));
    Ok(())
}
