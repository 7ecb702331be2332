//! The `raft` table: one row, this node's raft state, and where it and the
//! [`peers`](super::peers) rows come from: the running raft on a live node
//! ([`RaftSource`] implemented by the daemon), the positions stored on disk
//! for a stopped node ([`StoredRaftSource`]).
//!
//! Columns: `node_id`, `role`, `term`, `leader` (nullable), `last_log_index`,
//! `committed`, `last_applied`, `snapshot_index` (nullable).

use datafusion::error::Result;
use mpreg_storage::Inspector;

use super::peers::{self, PeerRow};
use super::storage;
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("node_id", Kind::Text),
    Column::new("role", Kind::Text),
    Column::new("term", Kind::U64),
    Column::nullable("leader", Kind::Text),
    Column::new("last_log_index", Kind::U64),
    Column::new("committed", Kind::U64),
    Column::new("last_applied", Kind::U64),
    Column::nullable("snapshot_index", Kind::U64),
];

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

/// Supplies the `raft` row and `peers` rows when a query reads them.
pub trait RaftSource: Send + Sync {
    fn raft_row(&self) -> mpreg_storage::Result<RaftRow>;
    fn peers(&self) -> mpreg_storage::Result<Vec<PeerRow>>;
}

/// The raft row of a stopped node, from its data dir.
pub struct StoredRaftSource {
    pub node_id: String,
    pub inspector: Inspector,
}

impl RaftSource for StoredRaftSource {
    fn raft_row(&self) -> mpreg_storage::Result<RaftRow> {
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

    fn peers(&self) -> mpreg_storage::Result<Vec<PeerRow>> {
        peers::stored(&self.inspector)
    }
}

pub(super) fn produce(raft: &dyn RaftSource, sink: &mut RowSink) -> Result<()> {
    let row = raft.raft_row().map_err(storage)?;
    sink.push(&[
        Value::Text(&row.node_id),
        Value::Text(&row.role),
        Value::U64(row.term),
        row.leader.as_deref().map_or(Value::Null, Value::Text),
        Value::U64(row.last_log_index),
        Value::U64(row.committed),
        Value::U64(row.last_applied),
        row.snapshot_index.map_or(Value::Null, Value::U64),
    ])?;
    Ok(())
}
