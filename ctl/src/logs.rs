//! `gantryctl logs ALLOC [--follow] [--tail BYTES]`: the coordinator says
//! where the allocation runs; its agent serves the output over HTTP.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use gantry_common::api::AllocView;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::io::Write as _;
use tokio::net::TcpStream;

use crate::admin_client::{encode, AdminClient};
use crate::cluster_cmds::print_json;
use crate::wait;

/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole answer may take when not following.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn logs(
    client: &AdminClient,
    query: &str,
    follow: bool,
    tail: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    if json && follow {
        bail!("--json prints the logs as one JSON object and cannot follow; drop --follow or --json");
    }
    let allocs: Vec<AllocView> = client.get("/v1/allocs").await?;
    let alloc = find_alloc(&allocs, query).map_err(|e| anyhow!(e))?;
    let path = logs_path(&alloc.id, follow, tail);
    let mut body = open(alloc, &path).await?;
    if json {
        let text = tokio::time::timeout(READ_TIMEOUT, body.collect())
            .await
            .map_err(|_| {
                anyhow!("the agent at {} sent no complete answer within {READ_TIMEOUT:?}", alloc.agent_http)
            })?
            .context("reading the logs")?
            .to_bytes();
        return print_json(&serde_json::json!({
            "alloc": alloc.id,
            "node": alloc.node,
            "logs": String::from_utf8_lossy(&text),
        }));
    }
    // A blocking write is fine here: this task has nothing else to do.
    let mut out = std::io::stdout();
    let copy = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the logs from the agent")?;
            if let Some(data) = frame.data_ref() {
                match out.write_all(data).and_then(|()| out.flush()) {
                    Ok(()) => {}
                    // `gantryctl logs … | head`: the reader left; so do we.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(anyhow!(e).context("writing to stdout")),
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    if follow {
        copy.await
    } else {
        tokio::time::timeout(READ_TIMEOUT, copy).await.map_err(|_| {
            anyhow!("the agent at {} sent no complete answer within {READ_TIMEOUT:?}", alloc.agent_http)
        })?
    }
}

/// The agent's route for one allocation's output.
pub fn logs_path(id: &str, follow: bool, tail: Option<u64>) -> String {
    let mut path = format!("/v1/allocs/{}/logs?follow={follow}", encode(id));
    if let Some(t) = tail {
        path.push_str(&format!("&tail={t}"));
    }
    path
}

/// Finds an allocation by its id, or by a prefix of it that picks one (e.g.
/// the workload name when one replica runs). Live allocations win over
/// stopped ones when a prefix matches several.
pub fn find_alloc<'a>(allocs: &'a [AllocView], query: &str) -> Result<&'a AllocView, String> {
    if let Some(a) = allocs.iter().find(|a| a.id == query) {
        return Ok(a);
    }
    let matches: Vec<&AllocView> = allocs.iter().filter(|a| a.id.starts_with(query)).collect();
    let live: Vec<&AllocView> = matches.iter().copied().filter(|a| !wait::is_terminal(&a.actual)).collect();
    match (matches.as_slice(), live.as_slice()) {
        ([], _) => Err(format!("no allocation {query:?}; `gantryctl allocs --all` lists them")),
        ([one], _) | (_, [one]) => Ok(one),
        _ => {
            // Name the live ones when there are several: those are what one wants.
            let (named, which) = if live.len() > 1 {
                (&live, format!("{} live: ", live.len()))
            } else {
                (&matches, String::new())
            };
            let mut ids: Vec<&str> = named.iter().take(6).map(|a| a.id.as_str()).collect();
            if named.len() > ids.len() {
                ids.push("…");
            }
            Err(format!(
                "{query:?} matches {} allocations ({which}{}); give the whole id",
                matches.len(),
                ids.join(", ")
            ))
        }
    }
}

/// Connects to the allocation's agent and asks for `path`; the body streams.
async fn open(alloc: &AllocView, path: &str) -> anyhow::Result<hyper::body::Incoming> {
    let addr = alloc.agent_http.as_str();
    if addr.is_empty() {
        bail!(
            "the agent of node {} serves no HTTP (its `metrics_listen` is empty); set metrics_listen in its \
             agent.toml to read logs",
            alloc.node
        );
    }
    let unreachable = |e: String| {
        anyhow!(
            "cannot reach the agent of node {} at {addr}: {e}. Logs are served by the agent's HTTP listener \
             (`metrics_listen` in its agent.toml): is the agent running, and is that address reachable from here?",
            alloc.node
        )
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the agent")?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", addr)
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let resp = tokio::time::timeout(READ_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| anyhow!("the agent at {addr} did not answer within {READ_TIMEOUT:?}"))?
        .context("asking the agent for logs")?;
    let status = resp.status();
    if !status.is_success() {
        let bytes = tokio::time::timeout(READ_TIMEOUT, resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = serde_json::from_slice::<gantry_common::api::ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
        bail!("the agent of node {} answered {status}: {text}", alloc.node);
    }
    Ok(resp.into_body())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wait::tests::alloc;

    #[test]
    fn find_by_id_or_unambiguous_prefix() {
        let allocs = vec![
            alloc("llm.0.1", 1, "stop", "stopped", "unknown"),
            alloc("llm.0.4", 2, "run", "running", "healthy"),
            alloc("llm.1.5", 2, "run", "running", "healthy"),
            alloc("mig.0.2", 1, "run", "running", "healthy"),
        ];
        assert_eq!(find_alloc(&allocs, "llm.0.1").unwrap().id, "llm.0.1");
        assert_eq!(find_alloc(&allocs, "mig").unwrap().id, "mig.0.2");
        // Two matches, one live: the live one.
        assert_eq!(find_alloc(&allocs, "llm.0").unwrap().id, "llm.0.4");
        let e = find_alloc(&allocs, "llm").unwrap_err();
        assert_eq!(e, "\"llm\" matches 3 allocations (2 live: llm.0.4, llm.1.5); give the whole id");
        let many: Vec<AllocView> =
            (0..9).map(|i| alloc(&format!("w.{i}.{i}"), 1, "stop", "stopped", "unknown")).collect();
        let e = find_alloc(&many, "w").unwrap_err();
        assert_eq!(
            e,
            "\"w\" matches 9 allocations (w.0.0, w.1.1, w.2.2, w.3.3, w.4.4, w.5.5, …); give the whole id"
        );
        assert!(find_alloc(&allocs, "nope").unwrap_err().contains("gantryctl allocs --all"));
    }

    #[test]
    fn logs_path_encodes_the_id_and_passes_tail_only_when_given() {
        assert_eq!(logs_path("llm.0.4", true, None), "/v1/allocs/llm.0.4/logs?follow=true");
        assert_eq!(logs_path("a b", false, Some(4096)), "/v1/allocs/a%20b/logs?follow=false&tail=4096");
    }

    #[tokio::test]
    async fn an_unreachable_agent_names_metrics_listen() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut a = alloc("llm.0.4", 1, "run", "running", "healthy");
        a.agent_http = format!("127.0.0.1:{port}");
        let e = open(&a, "/v1/allocs/llm.0.4/logs").await.unwrap_err().to_string();
        assert!(e.contains("cannot reach the agent of node node-1"), "{e}");
        assert!(e.contains("metrics_listen"), "{e}");
    }

    #[tokio::test]
    async fn streams_the_body_and_reports_agent_errors() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n6\r\nworld\n\r\n0\r\n\r\n",
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 31\r\n\r\n{\"error\":\"no allocation x.0.1\"}",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(answer.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            }
        });
        let mut a = alloc("llm.0.4", 1, "run", "running", "healthy");
        a.agent_http = addr.to_string();
        let body = open(&a, "/v1/allocs/llm.0.4/logs?follow=false").await.unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello world\n");
        let e = open(&a, "/v1/allocs/x.0.1/logs").await.unwrap_err().to_string();
        assert_eq!(e, "the agent of node node-1 answered 404 Not Found: no allocation x.0.1");
    }
}
