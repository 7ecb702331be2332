//! The `subscriptions` table: one row per (subscription, pattern), from the
//! `subscriptions` view.
//!
//! Columns: `subscription_id`, `pattern`, `subscriber`, `node_id`,
//! `durable`, `created_at`.

use datafusion::error::Result;
use mpreg_storage::views::{SubscriptionRow, View};
use mpreg_storage::{Flow, Inspector};

use super::scan_view;
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("subscription_id", Kind::Text),
    Column::new("pattern", Kind::Text),
    Column::new("subscriber", Kind::Text),
    Column::new("node_id", Kind::Text),
    Column::new("durable", Kind::Bool),
    Column::new("created_at", Kind::Time),
];

pub(super) fn produce(inspector: &Inspector, sink: &mut RowSink) -> Result<()> {
    scan_view(
        inspector,
        View::Subscriptions,
        b"",
        sink,
        |sink, r: SubscriptionRow| {
            for pattern in &r.patterns {
                let flow = sink.push(&[
                    Value::Text(&r.subscription_id),
                    Value::Text(pattern),
                    Value::Text(&r.subscriber),
                    Value::Text(&r.node_id),
                    Value::Bool(r.durable),
                    Value::Time(r.created_at_ms),
                ])?;
                if flow == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
            Ok(Flow::Continue)
        },
    )
}
