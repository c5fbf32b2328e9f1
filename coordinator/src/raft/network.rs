//! openraft's network, carried by [`PeerClient`] over QUIC.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use super::{NodeId, TypeConfig};
use crate::peer::client::PeerClient;
use crate::peer::messages::{PeerRequest, PeerResponse};

/// Most encoded bytes of entries in one AppendEntries. openraft 0.9 gives an
/// AppendEntries one heartbeat interval (100 ms) to be answered, and sends
/// the same entries again when it is not: a call that cannot be encoded,
/// sent, decoded and written in that time stalls replication for good (10
/// batches of 7 MB did on this machine). 1 MiB keeps every call small; a
/// larger single entry (at most [`crate::state::MAX_BATCH_BYTES`] plus a
/// little) goes alone.
pub const APPEND_BUDGET: usize = 1024 * 1024;

/// How many of `entries`, from the first, fit in `budget` encoded bytes
/// (always at least one: a single entry is bounded by what `apply` accepts).
pub fn fitting_prefix(entries: &[openraft::Entry<TypeConfig>], budget: usize) -> usize {
    let mut used = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        used += gantry_common::schema::encode(entry).map_or(budget, |b| b.len());
        if used > budget {
            return i.max(1);
        }
    }
    entries.len()
}

/// Builds one [`PeerNetwork`] per target member.
pub struct PeerNetworkFactory {
    pub client: PeerClient,
}

pub struct PeerNetwork {
    client: PeerClient,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        PeerNetwork { client: self.client.clone(), target, addr: node.addr.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected answer from coordinator {0}: {1}")]
struct UnexpectedReply(NodeId, String);

impl PeerNetwork {
    async fn send<E: std::error::Error>(
        &self,
        req: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<NodeId, BasicNode, E>> {
        // openraft's hard TTL bounds the whole call; keep a floor for snapshot chunks.
        let timeout = option.hard_ttl().max(Duration::from_millis(200));
        match self.client.call(&self.addr, &req, timeout).await {
            Ok(resp) => Ok(resp),
            // Unreachable makes openraft hold off that peer for 500 ms; a call
            // that merely took too long (a busy peer) is a network error,
            // retried with the next heartbeat.
            Err(e @ gantry_common::rpc::RpcError::Unreachable { .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self, resp: PeerResponse) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&UnexpectedReply(self.target, format!("{resp:?}"))))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        // A batch of entries larger than a frame would fail for ever (openraft
        // sends the same batch again): send the prefix that fits and say so.
        let fits = fitting_prefix(&rpc.entries, APPEND_BUDGET);
        let partial = (fits < rpc.entries.len()).then(|| {
            rpc.entries.truncate(fits);
            rpc.entries.last().map(|e| e.log_id)
        });
        match self.send(PeerRequest::AppendEntries(rpc), &option).await? {
            PeerResponse::AppendEntries(Ok(AppendEntriesResponse::Success)) if partial.is_some() => {
                Ok(AppendEntriesResponse::PartialSuccess(partial.flatten()))
            }
            PeerResponse::AppendEntries(Ok(r)) => Ok(r),
            PeerResponse::AppendEntries(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.send(PeerRequest::InstallSnapshot(rpc), &option).await? {
            PeerResponse::InstallSnapshot(Ok(r)) => Ok(r),
            PeerResponse::InstallSnapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.send(PeerRequest::Vote(rpc), &option).await? {
            PeerResponse::Vote(Ok(r)) => Ok(r),
            PeerResponse::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(other)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;
    use crate::state::Command;

    fn entry(index: u64, name_bytes: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::StopWorkload { name: "x".repeat(name_bytes) }),
        }
    }

    #[test]
    fn append_entries_are_cut_to_the_budget() {
        let entries: Vec<_> = (1..=10).map(|i| entry(i, 1000)).collect();
        assert_eq!(fitting_prefix(&entries, usize::MAX), 10);
        assert_eq!(fitting_prefix(&entries, 3_500), 3, "about 1 KB each");
        assert_eq!(fitting_prefix(&entries, 10), 1, "one entry goes however large");
        assert_eq!(fitting_prefix(&[], 10), 0);
    }
}
