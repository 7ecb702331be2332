//! The `queues` table: one row per queue, its settings and what it holds
//! now, from the `queues` view; `name = '...'` reads that queue's row only.
//!
//! Columns: `name`, `queue_type`, `max_size`, `visibility_timeout_ms`,
//! `ack_timeout_ms`, `message_ttl_ms` (nullable), `max_retries`,
//! `dead_letter_queue` (nullable), `dedup_window_ms` (nullable),
//! `created_at`, `depth`, `ready`, `delayed`, `in_flight`, `dlq_depth`
//! (nullable), `oldest_age_ms` (nullable).

use datafusion::error::Result;
use mpreg_storage::views::{MessageRow, QueueRow, View, queue_prefix};
use mpreg_storage::{Flow, Inspector};

use super::{first_row, now_ms, scan_view};
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

/// `depth`, `dlq_depth` and `oldest_age_ms` are computed when read: depth =
/// ready + delayed; the oldest message is the first of the queue's
/// `queue_messages` rows (seq grows with time).
pub(super) const COLUMNS: &[Column] = &[
    Column::new("name", Kind::Text),
    Column::new("queue_type", Kind::Text),
    Column::new("max_size", Kind::U64),
    Column::new("visibility_timeout_ms", Kind::U64),
    Column::new("ack_timeout_ms", Kind::U64),
    Column::nullable("message_ttl_ms", Kind::U64),
    Column::new("max_retries", Kind::U32),
    Column::nullable("dead_letter_queue", Kind::Text),
    Column::nullable("dedup_window_ms", Kind::U64),
    Column::new("created_at", Kind::Time),
    Column::new("depth", Kind::U64),
    Column::new("ready", Kind::U64),
    Column::new("delayed", Kind::U64),
    Column::new("in_flight", Kind::U64),
    Column::nullable("dlq_depth", Kind::U64),
    Column::nullable("oldest_age_ms", Kind::U64),
];

/// The column whose equality narrows a scan.
pub(super) const KEY: &str = "name";

/// The queue named `name`: the first key under its name is its own, if it
/// exists (`orders` sorts before `orders-dlq`).
fn queue_row(inspector: &Inspector, name: &str) -> Result<Option<QueueRow>> {
    Ok(
        first_row::<QueueRow>(inspector, View::Queues, &QueueRow::key(name))?
            .filter(|queue| queue.name == name),
    )
}

/// Messages waiting for delivery, now or after a delay.
fn depth(queue: &QueueRow) -> u64 {
    queue.ready + queue.delayed
}

/// One `queues` row. The dead-letter queue and the oldest message are each
/// one point read, on a snapshot of their own.
fn push_queue(inspector: &Inspector, now: u64, sink: &mut RowSink, q: &QueueRow) -> Result<Flow> {
    let dlq_depth = match &q.settings.dead_letter_queue {
        Some(dlq) => queue_row(inspector, dlq)?.map(|dlq| depth(&dlq)),
        None => None,
    };
    let oldest_age_ms = if q.size() == 0 {
        None
    } else {
        first_row::<MessageRow>(inspector, View::QueueMessages, &queue_prefix(&q.name))?
            .map(|oldest| now.saturating_sub(oldest.enqueued_at_ms))
    };
    let s = &q.settings;
    sink.push(&[
        Value::Text(&q.name),
        Value::Text(s.queue_type.as_str()),
        Value::U64(s.max_size),
        Value::U64(s.visibility_timeout_ms),
        Value::U64(s.ack_timeout_ms),
        s.message_ttl_ms.map_or(Value::Null, Value::U64),
        Value::U32(s.max_retries),
        s.dead_letter_queue
            .as_deref()
            .map_or(Value::Null, Value::Text),
        s.dedup_window_ms.map_or(Value::Null, Value::U64),
        Value::Time(q.created_at_ms),
        Value::U64(depth(q)),
        Value::U64(q.ready),
        Value::U64(q.delayed),
        Value::U64(q.in_flight),
        dlq_depth.map_or(Value::Null, Value::U64),
        oldest_age_ms.map_or(Value::Null, Value::U64),
    ])
}

pub(super) fn produce(inspector: &Inspector, name: Option<&str>, sink: &mut RowSink) -> Result<()> {
    let now = now_ms();
    if let Some(name) = name {
        if let Some(queue) = queue_row(inspector, name)? {
            push_queue(inspector, now, sink, &queue)?;
        }
        return Ok(());
    }
    scan_view(inspector, View::Queues, b"", sink, |sink, q: QueueRow| {
        push_queue(inspector, now, sink, &q)
    })
}
