//! The `raft` table's one row, and where it comes from: the running raft
//! on a live node ([`RaftSource`] implemented by the daemon), the positions
//! stored on disk for a stopped node ([`StoredRaftSource`]).

use mpreg_storage::{Inspector, Result};

/// The `raft` table's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftRow {
    pub node_id: String,
    /// `leader`, `follower`, `candidate`, `learner`, `shutdown`, or
    /// `stopped` when read offline.
    pub role: String,
    pub term: u64,
    /// Node id of the current leader, if known.
    pub leader: Option<String>,
    pub last_log_index: u64,
    pub committed: u64,
    pub last_applied: u64,
    pub snapshot_index: Option<u64>,
}

/// Supplies the `raft` row when a query reads it.
pub trait RaftSource: Send + Sync {
    fn raft_row(&self) -> Result<RaftRow>;
}

/// The raft row of a stopped node, from its data dir.
pub struct StoredRaftSource {
    pub node_id: String,
    pub inspector: Inspector,
}

impl RaftSource for StoredRaftSource {
    fn raft_row(&self) -> Result<RaftRow> {
        let stored = self.inspector.stored_raft()?;
        let last_applied = stored.applied.last_applied_index();
        Ok(RaftRow {
            node_id: self.node_id.clone(),
            role: "stopped".to_string(),
            term: stored.term,
            leader: None,
            last_log_index: stored.last_log_index,
            committed: stored.committed.max(last_applied),
            last_applied,
            snapshot_index: stored.snapshot_index,
        })
    }
}
