//! The `functions` table: one row per registered function version and
//! provider, from the `functions` view; `name = '...'` narrows the scan to
//! that name's prefix.
//!
//! Columns: `name`, `function_id`, `version`, `resources` (list),
//! `provider`, `node_id`, `cluster_id`, `registered_at`.

use datafusion::error::Result;
use mpreg_storage::Inspector;
use mpreg_storage::views::{FunctionRow, View};

use super::scan_view;
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("name", Kind::Text),
    Column::new("function_id", Kind::Text),
    Column::new("version", Kind::Text),
    Column::new("resources", Kind::TextList),
    Column::new("provider", Kind::Text),
    Column::new("node_id", Kind::Text),
    Column::new("cluster_id", Kind::Text),
    Column::new("registered_at", Kind::Time),
];

/// The column whose equality narrows a scan.
pub(super) const KEY: &str = "name";

pub(super) fn produce(inspector: &Inspector, name: Option<&str>, sink: &mut RowSink) -> Result<()> {
    let prefix = name.map(FunctionRow::name_prefix).unwrap_or_default();
    scan_view(
        inspector,
        View::Functions,
        &prefix,
        sink,
        |sink, r: FunctionRow| {
            sink.push(&[
                Value::Text(&r.name),
                Value::Text(&r.function_id),
                Value::Text(&r.version),
                Value::TextList(&r.resources),
                Value::Text(&r.provider),
                Value::Text(&r.node_id),
                Value::Text(&r.cluster_id),
                Value::Time(r.registered_at_ms),
            ])
        },
    )
}
