//! The one openraft type configuration of mpreg, and short aliases for the
//! openraft types used with it.

use crate::event::{EventBatch, Outcome};

openraft::declare_raft_types!(
    /// Raft types: event batches in, one outcome per event out, snapshots as files on disk
    /// (streamed in chunks by openraft, never one giant value).
    pub TypeConfig:
        D = EventBatch,
        R = Vec<Outcome>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

/// Aliases of openraft types bound to [`TypeConfig`].
pub mod typ {
    use super::TypeConfig;

    pub type NodeId = u64;
    pub type Node = openraft::BasicNode;
    pub type LogId = openraft::LogId<NodeId>;
    pub type Vote = openraft::Vote<NodeId>;
    pub type Entry = openraft::Entry<TypeConfig>;
    pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
    pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    pub type StorageError = openraft::StorageError<NodeId>;
    pub type Raft = openraft::Raft<TypeConfig>;
    pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;
}

/// The numeric raft id of a node id: stable, non-zero. Every node derives
/// a member's raft id from its node id the same way.
pub fn raft_id(node_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(node_id.as_bytes()).max(1)
}
