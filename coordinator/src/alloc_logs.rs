//! An allocation's output for `gantryctl logs`, from any coordinator: the
//! one holding the node's agent link (normally the leader) asks the agent
//! down that link ([`crate::agent_links`]); a follower without it asks the
//! leader, which streams the agent's answer through. Bytes are copied as
//! they come, so `--follow` is live, and a reader that goes away stops the
//! streams behind it.

use std::time::Duration;

use axum::body::Bytes;
use gantry_common::rpc;
use gantry_common::wire::{CoordinatorRequest, LogsError, LogsHeader, LogsRequest, DEFAULT_MAX_FRAME};

use crate::peer::messages::{PeerRequest, PeerResponse};
use crate::service::Service;

/// How long the agent (or the leader) may take to start answering.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest piece read at once.
const CHUNK: usize = 64 * 1024;

impl Service {
    /// Opens `req`'s output; the stream yields it as raw bytes. A follower
    /// asks the leader when `may_forward` (a forwarded request never is, so
    /// two coordinators cannot bounce it between them).
    pub async fn open_logs(
        &self,
        req: LogsRequest,
        may_forward: bool,
    ) -> Result<quinn::RecvStream, LogsError> {
        let node = self
            .state
            .read(|s| s.allocs.get(&req.alloc).map(|a| a.node.clone()))
            .ok_or_else(|| LogsError::NotFound(format!("allocation {:?} does not exist", req.alloc)))?;
        if let Some(conn) = self.agent_links.get(&node) {
            let what = format!("node {node}'s agent");
            let (head, recv): (LogsHeader, _) = rpc::open_stream(
                &conn,
                &what,
                &CoordinatorRequest::Logs(req),
                DEFAULT_MAX_FRAME,
                OPEN_TIMEOUT,
            )
            .await
            .map_err(|e| LogsError::Unavailable(e.to_string()))?;
            return head.map(|()| recv);
        }
        let leader = self.leader_hint().filter(|l| l.id != self.id);
        match leader {
            Some(leader) if may_forward => {
                let (head, recv) = self
                    .peers
                    .open_stream(&leader.addr, &PeerRequest::Logs(req), OPEN_TIMEOUT)
                    .await
                    .map_err(|e| LogsError::Unavailable(format!("asking the leader: {e}")))?;
                match head {
                    PeerResponse::Logs(head) => head.map(|()| recv),
                    other => Err(LogsError::Failed(format!("the leader answered unexpectedly: {other:?}"))),
                }
            }
            _ => Err(LogsError::Unavailable(format!(
                "node {node}'s agent is not connected to the leader (is it running? `gantryctl nodes` shows its \
                 last heartbeat)"
            ))),
        }
    }
}

/// Copies `from` to `to` until `from` ends, then finishes `to`. When the
/// reader of `to` goes away, `from` is stopped so the source stops too.
pub async fn pipe(mut from: quinn::RecvStream, mut to: quinn::SendStream) -> Result<(), String> {
    loop {
        let chunk = tokio::select! {
            chunk = from.read_chunk(CHUNK, true) => chunk.map_err(|e| e.to_string())?,
            _ = to.stopped() => {
                let _ = from.stop(0u32.into());
                return Ok(());
            }
        };
        let Some(chunk) = chunk else { break };
        to.write_all(&chunk.bytes).await.map_err(|e| e.to_string())?;
    }
    to.finish().map_err(|e| e.to_string())
}

/// The stream's bytes as a body stream (an HTTP response's); dropping it
/// stops the QUIC stream.
pub fn body_stream(
    recv: quinn::RecvStream,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::unfold(Some(recv), |state| async move {
        let mut recv = state?;
        match recv.read_chunk(CHUNK, true).await {
            Ok(Some(chunk)) => Some((Ok(chunk.bytes), Some(recv))),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    })
}
