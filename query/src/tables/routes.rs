//! The `routes` table: the path-vector route table, one row per
//! (destination cluster, advertiser), from the `routes` view;
//! `dest = '...'` narrows the scan to that destination's prefix.
//!
//! Columns: `dest`, `next_hop`, `path` (list), `hops`, `cost`,
//! `advertiser`, `learned_at`, `expires_at` (nullable), `state` (`active`,
//! or `expired` once `expires_at` has passed, computed when read).

use datafusion::error::Result;
use mpreg_storage::Inspector;
use mpreg_storage::views::{RouteRow, View};

use super::{now_ms, scan_view};
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("dest", Kind::Text),
    Column::new("next_hop", Kind::Text),
    Column::new("path", Kind::TextList),
    Column::new("hops", Kind::U32),
    Column::new("cost", Kind::U32),
    Column::new("advertiser", Kind::Text),
    Column::new("learned_at", Kind::Time),
    Column::nullable("expires_at", Kind::Time),
    Column::new("state", Kind::Text),
];

/// The column whose equality narrows a scan.
pub(super) const KEY: &str = "dest";

pub(super) fn produce(inspector: &Inspector, dest: Option<&str>, sink: &mut RowSink) -> Result<()> {
    let prefix = dest.map(RouteRow::dest_prefix).unwrap_or_default();
    let now = now_ms();
    scan_view(
        inspector,
        View::Routes,
        &prefix,
        sink,
        |sink, r: RouteRow| {
            let state = match r.expires_at_ms {
                Some(at) if at <= now => "expired",
                _ => "active",
            };
            sink.push(&[
                Value::Text(&r.dest),
                Value::Text(&r.next_hop),
                Value::TextList(&r.path),
                Value::U32(u32::try_from(r.hops()).unwrap_or(u32::MAX)),
                Value::U32(r.cost),
                Value::Text(&r.advertiser),
                Value::Time(r.learned_at_ms),
                r.expires_at_ms.map_or(Value::Null, Value::Time),
                Value::Text(state),
            ])
        },
    )
}
