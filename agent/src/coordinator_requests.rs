//! Requests a coordinator sends down the connection this agent made (the
//! agent listens on no port for them): an allocation's output, so that
//! `gantryctl logs` works through any coordinator wherever the agent runs.
//!
//! Each request is a stream the coordinator opens: one [`CoordinatorRequest`]
//! frame in, one [`LogsHeader`] frame out, then the output as raw bytes
//! until it ends or, when following, until the coordinator stops reading.

use futures::StreamExt;
use gantry_common::wire::{
    read_frame, write_frame, CoordinatorRequest, LogsError, LogsHeader, DEFAULT_MAX_FRAME,
};
use tracing::debug;

use crate::runtime::LogRequest;
use crate::workloads::manager::{Logs, LogsError as AgentLogsError};

/// Answers the coordinator's streams on `conn` until it closes; returns why.
pub async fn serve(conn: quinn::Connection, logs: Logs) -> String {
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => return e.to_string(),
        };
        let logs = logs.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(send, recv, &logs).await {
                debug!("coordinator request: {e}");
            }
        });
    }
}

async fn answer(mut send: quinn::SendStream, mut recv: quinn::RecvStream, logs: &Logs) -> Result<(), String> {
    let request = read_frame::<CoordinatorRequest, _>(&mut recv, DEFAULT_MAX_FRAME)
        .await
        .map_err(|e| format!("bad request frame: {e}"))?
        .ok_or("the coordinator sent no request")?;
    let CoordinatorRequest::Logs(r) = request;
    let opened = logs.open(&r.alloc, LogRequest { follow: r.follow, tail: r.tail }).await;
    let (header, stream): (LogsHeader, _) = match opened {
        Ok(stream) => (Ok(()), Some(stream)),
        Err(e @ (AgentLogsError::UnknownAlloc(_) | AgentLogsError::NotStarted(_))) => {
            (Err(LogsError::NotFound(e.to_string())), None)
        }
        Err(e) => (Err(LogsError::Failed(e.to_string())), None),
    };
    write_frame(&mut send, &header, DEFAULT_MAX_FRAME).await.map_err(|e| e.to_string())?;
    if let Some(mut stream) = stream {
        loop {
            let chunk = tokio::select! {
                chunk = stream.next() => chunk,
                // The reader went away (Ctrl-C on `gantryctl logs --follow`).
                _ = send.stopped() => return Ok(()),
            };
            let Some(chunk) = chunk else { break };
            let chunk = chunk.map_err(|e| format!("reading the output of {}: {e}", r.alloc))?;
            send.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
    }
    send.finish().map_err(|e| e.to_string())
}
