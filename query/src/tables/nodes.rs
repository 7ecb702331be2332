//! The `nodes` table: one row per node ever seen in the cluster, from the
//! `nodes` view.
//!
//! Columns: `node_id`, `cluster_id`, `addresses` (list), `resources`
//! (list), `joined_at`, `status` (`up` or `left`).

use datafusion::error::Result;
use mpreg_storage::Inspector;
use mpreg_storage::views::{NodeRow, View};

use super::scan_view;
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

pub(super) fn produce(inspector: &Inspector, sink: &mut RowSink) -> Result<()> {
    scan_view(inspector, View::Nodes, b"", sink, |sink, r: NodeRow| {
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
