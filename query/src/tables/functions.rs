//! The `functions` table: one row per registered function version and
//! provider, from the `functions` view, then one per function another
//! cluster serves, from the catalog summaries held of other clusters
//! (`remote_catalogs` view, those not expired); `name = '...'` narrows the
//! scan of the first to that name's prefix.
//!
//! Columns: `name`, `function_id`, `version`, `resources` (list),
//! `provider` and `node_id` (null for another cluster's), `cluster_id`,
//! `registered_at` (for another cluster's: when its summary was learned),
//! `next_hop` (null here; else the neighbour the best usable route to that
//! cluster goes through, null when there is none).

use datafusion::error::Result;
use mpreg_storage::federation::live;
use mpreg_storage::views::{FunctionRow, RemoteCatalogRow, View};
use mpreg_storage::{Flow, Inspector};

use super::routes::next_hop;
use super::{now_ms, scan_view};
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("name", Kind::Text),
    Column::new("function_id", Kind::Text),
    Column::new("version", Kind::Text),
    Column::new("resources", Kind::TextList),
    Column::nullable("provider", Kind::Text),
    Column::nullable("node_id", Kind::Text),
    Column::new("cluster_id", Kind::Text),
    Column::new("registered_at", Kind::Time),
    Column::nullable("next_hop", Kind::Text),
];

/// The column whose equality narrows a scan.
pub(super) const KEY: &str = "name";

pub(super) fn produce(inspector: &Inspector, name: Option<&str>, sink: &mut RowSink) -> Result<()> {
    let prefix = name.map(FunctionRow::name_prefix).unwrap_or_default();
    let mut stopped = false;
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
                Value::Null,
            ])
            .inspect(|flow| stopped = *flow == Flow::Stop)
        },
    )?;
    if stopped {
        return Ok(());
    }
    let now = now_ms();
    scan_view(
        inspector,
        View::RemoteCatalogs,
        b"",
        sink,
        |sink, r: RemoteCatalogRow| {
            if !live(&r, now) {
                return Ok(Flow::Continue);
            }
            let next_hop = next_hop(inspector, &r.ad.cluster_id, now)?;
            for f in &r.ad.summary.functions {
                if name.is_some_and(|n| n != f.name) {
                    continue;
                }
                let flow = sink.push(&[
                    Value::Text(&f.name),
                    Value::Text(&f.function_id),
                    Value::Text(&f.version),
                    Value::TextList(&f.resources),
                    Value::Null,
                    Value::Null,
                    Value::Text(&r.ad.cluster_id),
                    Value::Time(r.learned_at_ms),
                    next_hop.as_deref().map_or(Value::Null, Value::Text),
                ])?;
                if flow == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
            Ok(Flow::Continue)
        },
    )
}
