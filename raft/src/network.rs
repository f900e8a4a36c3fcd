//! The peer network seen by openraft.
//!
//! [`NoPeers`] is the transport of a one-voter cluster, which never sends an RPC: every call
//! reports the target unreachable. The mutual-TLS transport replaces it when nodes can join.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::types::{NodeAddr, NodeId, TypeConfig};

/// Network of a cluster with a single member.
#[derive(Clone, Debug, Default)]
pub struct NoPeers;

/// A client to a peer that cannot exist.
#[derive(Debug)]
pub struct NoPeer(NodeId);

type RpcErr<E = RaftError<NodeId>> = RPCError<NodeId, NodeAddr, E>;

impl NoPeer {
    fn unreachable<E: std::error::Error>(&self) -> RpcErr<E> {
        let err =
            std::io::Error::other(format!("no peer transport configured for node {}", self.0));
        RPCError::Unreachable(Unreachable::new(&err))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeer;

    async fn new_client(&mut self, target: NodeId, _node: &NodeAddr) -> NoPeer {
        NoPeer(target)
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<RaftError<NodeId, InstallSnapshotError>>>
    {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        Err(self.unreachable())
    }
}
