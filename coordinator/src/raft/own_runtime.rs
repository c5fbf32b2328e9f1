//! Raft's own threads: openraft's core, its replication and state-machine
//! tasks, its storage calls and this coordinator's connections to the other
//! coordinators run on a tokio runtime of their own, with a UDP socket of
//! their own for the calls out.
//!
//! Why: on the main runtime, a leader that thousands of agents reach at
//! once (a fleet start, a failover) queues its AppendEntries behind their
//! handshakes, heartbeats and registrations. At 5,000 simulated nodes on two
//! cores those calls overran openraft's deadline within two seconds of the
//! first registrations, followers campaigned, and every election sent every
//! node to register again. Here the kernel schedules Raft's threads beside
//! the main runtime's instead of tokio queueing its tasks behind thousands
//! of others.
//!
//! Calls *to* this coordinator still arrive on the one listening endpoint
//! (its address is the member address in the Raft membership, which agents
//! are also sent to); their requests are handed to the core here at once.

use std::net::SocketAddr;
use std::sync::Arc;

/// Worker threads: the core and the state machine each keep one busy when
/// a large batch applies, and storage calls may block one.
const WORKERS: usize = 2;

/// A runtime for Raft, shut down (without waiting) when dropped.
pub struct RaftRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl RaftRuntime {
    pub fn start() -> std::io::Result<RaftRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("gantry-raft")
            .enable_all()
            .build()?;
        Ok(RaftRuntime { runtime: Some(runtime) })
    }

    /// Where to spawn what belongs to Raft.
    pub fn handle(&self) -> tokio::runtime::Handle {
        match &self.runtime {
            Some(rt) => rt.handle().clone(),
            // Only `drop` takes it.
            None => tokio::runtime::Handle::current(),
        }
    }

    /// A client-only QUIC endpoint whose socket and connections are driven
    /// on this runtime, bound to `listen`'s address (so that peers on a
    /// private network see calls come from the same host) on a port the
    /// kernel picks.
    pub fn peer_endpoint(
        &self,
        listen: SocketAddr,
        config: quinn::EndpointConfig,
    ) -> std::io::Result<quinn::Endpoint> {
        let _inside = self.handle().enter();
        let socket = std::net::UdpSocket::bind(SocketAddr::new(listen.ip(), 0))?;
        quinn::Endpoint::new(config, None, socket, Arc::new(quinn::TokioRuntime))
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // A runtime may not be dropped (waiting) from inside another.
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tasks_spawned_on_it_run_on_its_threads() {
        let rt = RaftRuntime::start().unwrap();
        let name = rt
            .handle()
            .block_on(async { tokio::spawn(async { std::thread::current().name().map(String::from) }).await })
            .unwrap();
        assert_eq!(name.as_deref(), Some("gantry-raft"));
    }
}
