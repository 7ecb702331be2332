//! The raft network over the node transport: raft RPCs travel as peer
//! envelopes on the links of [`Peers`], to the address each member
//! registered in the raft membership.
//!
//! Snapshot chunks get a timeout that grows with their size, so a large
//! snapshot on a slow link is never retried forever.

use std::sync::Arc;
use std::time::Duration;

use mpreg_storage::typ::{Node, NodeId};
use mpreg_storage::{TypeConfig, codec};
use openraft::RPCTypes;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::peer::{PeerError, Peers};
use crate::config::PEER_BATCH_BYTES;
use crate::envelope::{PeerReply, PeerRequest};

/// Most bytes of entries one AppendEntries carries (one entry may be
/// larger, up to [`PEER_BATCH_BYTES`] / 2). openraft gives each
/// AppendEntries one heartbeat interval (a third of the election timeout)
/// and retries it whole from the same index, so a batch must be encoded
/// and sent well within that: a 30 MiB batch was not, on a loaded
/// machine, try after try, and a follower never caught up.
const APPEND_BATCH_BYTES: usize = PEER_BATCH_BYTES / 4;

/// Slowest transfer rate a snapshot chunk is given time for (1 MiB/s).
const SNAPSHOT_BYTES_PER_SEC: u64 = 1 << 20;

/// Creates a [`PeerClient`] per raft target.
#[derive(Clone)]
pub struct FabricNetwork {
    peers: Arc<Peers>,
    me: NodeId,
}

impl FabricNetwork {
    pub fn new(peers: Arc<Peers>, me: NodeId) -> Self {
        FabricNetwork { peers, me }
    }
}

/// Raft RPCs to one member.
pub struct PeerClient {
    peers: Arc<Peers>,
    me: NodeId,
    target: NodeId,
    addr: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WireError(String);

impl RaftNetworkFactory<TypeConfig> for FabricNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            peers: self.peers.clone(),
            me: self.me,
            target,
            addr: node.addr.clone(),
        }
    }
}

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply, RPCError<NodeId, Node, E>> {
        let action = match &request {
            PeerRequest::Vote(_) => RPCTypes::Vote,
            PeerRequest::InstallSnapshot(_) => RPCTypes::InstallSnapshot,
            _ => RPCTypes::AppendEntries,
        };
        match self.peers.request(&self.addr, request, timeout).await {
            Ok(PeerReply::Refused(reason)) => {
                Err(RPCError::Network(NetworkError::new(&WireError(format!(
                    "peer {} refused the request: {reason}",
                    self.target
                )))))
            }
            Ok(reply) => Ok(reply),
            Err(e @ (PeerError::Unreachable { .. } | PeerError::Unauthenticated { .. })) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(PeerError::Timeout { after, .. }) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout: after,
            })),
            Err(e @ PeerError::Closed { .. }) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self, reply: &PeerReply) -> RPCError<NodeId, Node, E> {
        RPCError::Network(NetworkError::new(&WireError(format!(
            "peer {} answered with the wrong reply: {reply:?}",
            self.target
        ))))
    }

    fn remote<E: std::error::Error>(
        &self,
        error: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new(self.target, error))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        // A batch over the budget is split by openraft (it retries with
        // the hinted number of entries); one entry always fits the frame,
        // as max_entry_bytes is at most half of PEER_BATCH_BYTES.
        let entries = rpc.entries.len() as u64;
        if entries > 1 && codec::encoded_len(&rpc) > APPEND_BATCH_BYTES {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            ));
        }
        match self
            .call(PeerRequest::AppendEntries(rpc), option.hard_ttl())
            .await?
        {
            PeerReply::AppendEntries(Ok(response)) => Ok(response),
            PeerReply::AppendEntries(Err(e)) => Err(self.remote(e)),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let chunk = rpc.data.len() as u64;
        let timeout = option
            .hard_ttl()
            .max(Duration::from_millis(chunk * 1000 / SNAPSHOT_BYTES_PER_SEC));
        match self
            .call(PeerRequest::InstallSnapshot(rpc), timeout)
            .await?
        {
            PeerReply::InstallSnapshot(Ok(response)) => Ok(response),
            PeerReply::InstallSnapshot(Err(e)) => Err(self.remote(e)),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self.call(PeerRequest::Vote(rpc), option.hard_ttl()).await? {
            PeerReply::Vote(Ok(response)) => Ok(response),
            PeerReply::Vote(Err(e)) => Err(self.remote(e)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Waits between attempts to an unreachable member: short, so a
    /// restarted member hears from the leader before its election timeout.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(
            (0..).map(|n: u32| Duration::from_millis(20u64.saturating_mul(1 << n.min(3)))),
        )
    }
}
