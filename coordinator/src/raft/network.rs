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
            Err(e) if e.is_unreachable() => Err(RPCError::Unreachable(Unreachable::new(&e))),
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
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.send(PeerRequest::AppendEntries(rpc), &option).await? {
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
