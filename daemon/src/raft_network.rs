//! The raft network of a single-member cluster: no peers to reach.
//!
//! A one-node cluster never sends raft RPCs, so every call answers
//! `Unreachable`. Replication over the node transport replaces this module
//! without touching storage or the node.

use mpreg_storage::TypeConfig;
use mpreg_storage::typ::{Node, NodeId};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

/// Creates [`NoPeers`] clients.
#[derive(Clone, Default)]
pub struct SingleNodeNetwork;

/// A raft client for a peer that does not exist.
pub struct NoPeers {
    target: NodeId,
}

#[derive(Debug, thiserror::Error)]
#[error("raft peer {0} is unreachable: this build runs single-member clusters only")]
struct NoPeer(NodeId);

fn unreachable<E: std::error::Error>(target: NodeId) -> RPCError<NodeId, Node, E> {
    RPCError::Unreachable(Unreachable::new(&NoPeer(target)))
}

impl RaftNetworkFactory<TypeConfig> for SingleNodeNetwork {
    type Network = NoPeers;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> NoPeers {
        NoPeers { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        Err(unreachable(self.target))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable(self.target))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        Err(unreachable(self.target))
    }
}
