//! The `nodes` table: one row per node ever seen in the cluster, from the
//! `nodes` view.
//!
//! Columns: `node_id`, `cluster_id`, `addresses` (list), `resources`
//! (list), `joined_at`, `status` (`up` or `left`). `node_id = '...'` is a
//! point read.

use datafusion::error::Result;
use mpreg_storage::Inspector;
use mpreg_storage::views::{NodeRow, View};

use super::point_or_scan;
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("node_id", Kind::Text),
    Column::new("cluster_id", Kind::Text),
    Column::new("addresses", Kind::TextList),
    Column::new("resources", Kind::TextList),
    Column::new("joined_at", Kind::Time),
    Column::new("status", Kind::Text),
];

/// The column whose equality is a point read.
pub(super) const KEY: &str = "node_id";

pub(super) fn produce(
    inspector: &Inspector,
    node_id: Option<&str>,
    sink: &mut RowSink,
) -> Result<()> {
    let key = node_id.map(NodeRow::key);
    point_or_scan(inspector, View::Nodes, key, sink, |sink, r: NodeRow| {
        sink.push(&[
            Value::Text(&r.node_id),
            Value::Text(&r.cluster_id),
            Value::TextList(&r.addresses),
            Value::TextList(&r.resources),
            Value::Time(r.joined_at_ms),
            Value::Text(r.status.as_str()),
        ])
    })
}
