//! `gantryctl logs ALLOC [--follow] [--tail BYTES]`: the coordinator asks
//! the allocation's agent down the agent's own connection (through the
//! leader when asked on a follower) and streams the output back, so this
//! works from any coordinator host whatever the agents' HTTP settings.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use gantry_common::api::AllocView;
use http_body_util::BodyExt;

use crate::admin_client::{encode, AdminClient};
use crate::cluster_cmds::print_json;
use crate::wait;

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
    let mut body = client.get_stream(&path).await.with_context(|| format!("logs of {}", alloc.id))?;
    if json {
        let text = tokio::time::timeout(READ_TIMEOUT, body.collect())
            .await
            .map_err(|_| anyhow!("node {} sent no complete answer within {READ_TIMEOUT:?}", alloc.node))?
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
            let frame = frame.context("reading the logs")?;
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
        tokio::time::timeout(READ_TIMEOUT, copy)
            .await
            .map_err(|_| anyhow!("node {} sent no complete answer within {READ_TIMEOUT:?}", alloc.node))?
    }
}

/// The coordinator's (and the agent's) route for one allocation's output.
pub fn logs_path(id: &str, follow: bool, tail: Option<u64>) -> String {
    let mut path = format!("/v1/allocs/{}/logs?follow={follow}", encode(id));
    if let Some(t) = tail {
        path.push_str(&format!("&tail={t}"));
    }
    path
}

/// Finds an allocation by its id, or by the workload it belongs to: the
/// workload name (`llm`) or the workload and replica (`llm.0`). Names are
/// compared whole, against the allocation's own fields, so `llm` never picks
/// an allocation of `llm2` or of `llm.v2`. Live allocations win over ended
/// ones when several match.
pub fn find_alloc<'a>(allocs: &'a [AllocView], query: &str) -> Result<&'a AllocView, String> {
    if let Some(a) = allocs.iter().find(|a| a.id == query) {
        return Ok(a);
    }
    let replica = query.rsplit_once('.').and_then(|(w, r)| Some((w, r.parse::<u32>().ok()?)));
    let matches: Vec<&AllocView> = allocs
        .iter()
        .filter(|a| a.workload == query || replica.is_some_and(|(w, r)| a.workload == w && a.replica == r))
        .collect();
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
        // A workload whose name extends another's is never picked by the shorter name.
        let two = vec![
            alloc("infer.0.1", 1, "run", "running", "healthy"),
            alloc("infer2.0.2", 1, "run", "running", "healthy"),
        ];
        assert_eq!(find_alloc(&two, "infer").unwrap().id, "infer.0.1");
        assert_eq!(find_alloc(&two, "infer2").unwrap().id, "infer2.0.2");
        assert!(find_alloc(&two, "inf").is_err(), "a part of a name is not a name");
        // Names may hold dots: `llm` is not `llm.v2`, and `llm.v2.0` is its replica 0.
        let dotted = vec![
            alloc("llm.v2.0.7", 1, "run", "running", "healthy"),
            alloc("llm.0.3", 1, "run", "running", "healthy"),
        ];
        assert_eq!(find_alloc(&dotted, "llm").unwrap().id, "llm.0.3");
        assert_eq!(find_alloc(&dotted, "llm.v2").unwrap().id, "llm.v2.0.7");
        assert_eq!(find_alloc(&dotted, "llm.v2.0").unwrap().id, "llm.v2.0.7");
        // A completed run is ended: the live one wins.
        let ended = vec![
            alloc("job.0.1", 1, "run", "completed", "unknown"),
            alloc("job.0.2", 2, "run", "running", "unknown"),
        ];
        assert_eq!(find_alloc(&ended, "job").unwrap().id, "job.0.2");
    }

    #[test]
    fn logs_path_encodes_the_id_and_passes_tail_only_when_given() {
        assert_eq!(logs_path("llm.0.4", true, None), "/v1/allocs/llm.0.4/logs?follow=true");
        assert_eq!(logs_path("a b", false, Some(4096)), "/v1/allocs/a%20b/logs?follow=false&tail=4096");
    }
}
