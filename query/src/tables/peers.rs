//! The `peers` table: the members of the raft membership as this node
//! applied it, read through the [`RaftSource`]; offline, from the last
//! applied membership ([`stored`]).
//!
//! Columns: `peer`, `raft_id`, `address`, `state` (`leader`, `voter` or
//! `learner`), `last_contact` (nullable), `match_index` (nullable), `lag`
//! (nullable).

use std::collections::HashMap;

use datafusion::error::Result;
use mpreg_storage::views::{NodeRow, View};
use mpreg_storage::{Flow, Inspector, raft_id};

use super::raft::RaftSource;
use super::storage;
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("peer", Kind::Text),
    Column::new("raft_id", Kind::U64),
    Column::new("address", Kind::Text),
    Column::new("state", Kind::Text),
    Column::nullable("last_contact", Kind::Time),
    Column::nullable("match_index", Kind::U64),
    Column::nullable("lag", Kind::U64),
];

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

/// The peers of a stopped node: the members of the last applied
/// membership; who leads and how far each got is not known offline.
pub(super) fn stored(inspector: &Inspector) -> mpreg_storage::Result<Vec<PeerRow>> {
    let stored = inspector.stored_raft()?;
    let names = node_names(inspector)?;
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

/// Node ids by raft id, from the `nodes` view.
fn node_names(inspector: &Inspector) -> mpreg_storage::Result<HashMap<u64, String>> {
    let mut names = HashMap::new();
    inspector.scan_view(View::Nodes, b"", |row: NodeRow| {
        names.insert(raft_id(&row.node_id), row.node_id);
        Flow::Continue
    })?;
    Ok(names)
}

pub(super) fn produce(raft: &dyn RaftSource, sink: &mut RowSink) -> Result<()> {
    for row in raft.peers().map_err(storage)? {
        sink.push(&[
            Value::Text(&row.peer),
            Value::U64(row.raft_id),
            Value::Text(&row.address),
            Value::Text(&row.state),
            row.last_contact_ms.map_or(Value::Null, Value::Time),
            row.match_index.map_or(Value::Null, Value::U64),
            row.lag.map_or(Value::Null, Value::U64),
        ])?;
    }
    Ok(())
}
