//! The `raft` table's one row and the `peers` rows, and where they come from: the running raft
//! on a live node ([`RaftSource`] implemented by the daemon), the positions
//! stored on disk for a stopped node ([`StoredRaftSource`]).

use mpreg_storage::views::{NodeRow, View};
use mpreg_storage::{Flow, Inspector, Result, raft_id};

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

/// One row of the `peers` table: a member of the raft membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRow {
    /// Node id (the raft id, when the catalog does not know the member).
    pub peer: String,
    pub raft_id: u64,
    /// The URL the member registered.
    pub address: String,
    /// `leader`, `voter` or `learner` (`self` is not special).
    pub state: String,
    /// When this node last heard from it (unix ms); live nodes only.
    pub last_contact_ms: Option<u64>,
    /// Last log index known replicated to it (on the leader only).
    pub match_index: Option<u64>,
    /// Entries it is behind the leader's log (on the leader only).
    pub lag: Option<u64>,
}

/// Supplies the `raft` row and `peers` rows when a query reads them.
pub trait RaftSource: Send + Sync {
    fn raft_row(&self) -> Result<RaftRow>;
    fn peers(&self) -> Result<Vec<PeerRow>>;
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

    /// The members of the last applied membership; who leads and how far
    /// each got is not known offline.
    fn peers(&self) -> Result<Vec<PeerRow>> {
        let stored = self.inspector.stored_raft()?;
        let names = node_names(&self.inspector)?;
        let membership = stored.applied.membership.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        Ok(membership
            .nodes()
            .map(|(id, node)| PeerRow {
                peer: names.get(id).cloned().unwrap_or_else(|| id.to_string()),
                raft_id: *id,
                address: node.addr.clone(),
                state: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .to_string(),
                last_contact_ms: None,
                match_index: None,
                lag: None,
            })
            .collect())
    }
}

/// Node ids by raft id, from the `nodes` view.
pub fn node_names(inspector: &Inspector) -> Result<std::collections::HashMap<u64, String>> {
    let mut names = std::collections::HashMap::new();
    inspector.scan_view(View::Nodes, b"", |row: NodeRow| {
        names.insert(raft_id(&row.node_id), row.node_id);
        Flow::Continue
    })?;
    Ok(names)
}
