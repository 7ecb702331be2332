//! The `queue_messages` table: one row per message in a queue (ready,
//! delayed or leased), in send order per queue, from the `queue_messages`
//! view. See [`KEYS`] for the filters that narrow the scan.
//!
//! Columns: `queue`, `seq`, `message_id`, `state`, `consumer` (nullable),
//! `priority`, `attempts`, `delivery`, `topic`, `enqueued_at`, `ready_at`,
//! `lease_deadline` (nullable), `expires_at` (nullable), `size`.

use datafusion::error::Result;
use mpreg_storage::views::{MessageRow, MessageState, View, queue_prefix};
use mpreg_storage::{Flow, Inspector, codec};

use super::{Narrowing, per_value, scan_in_place, storage};
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

/// The view this table reads.
const VIEW: View = View::QueueMessages;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("queue", Kind::Text),
    Column::new("seq", Kind::U64),
    Column::new("message_id", Kind::Text),
    Column::new("state", Kind::Text),
    Column::nullable("consumer", Kind::Text),
    Column::new("priority", Kind::U32),
    Column::new("attempts", Kind::U32),
    Column::new("delivery", Kind::Text),
    Column::new("topic", Kind::Text),
    Column::new("enqueued_at", Kind::Time),
    Column::new("ready_at", Kind::Time),
    Column::nullable("lease_deadline", Kind::Time),
    Column::nullable("expires_at", Kind::Time),
    Column::new("size", Kind::U64),
];

/// The column whose equality narrows a scan.
/// The key columns. `queue = '...'` narrows the scan to that queue's
/// messages; with it, `message_id = '...'` is a point read through the
/// message-id index; `state` is checked before a row is built.
pub(super) const KEYS: &[&str] = &["queue", "message_id", "state"];

pub(super) fn produce(
    inspector: &Inspector,
    narrowing: &Narrowing,
    sink: &mut RowSink,
) -> Result<()> {
    let push = |sink: &mut RowSink, m: &MessageRow<&str>| {
        if narrowing.allows("state", m.state.as_str()) {
            push_message(sink, m)
        } else {
            Ok(Flow::Continue)
        }
    };
    // Rows are decoded in place: their text borrows the stored bytes.
    let scan = |prefix: &[u8], sink: &mut RowSink| {
        scan_in_place(inspector, VIEW, prefix, sink, |sink, key, value| {
            let message = codec::decode_row(VIEW.cf_name(), key, value).map_err(storage)?;
            push(sink, &message)
        })
    };
    per_value(narrowing, "queue", sink, |queue, sink| {
        let Some(queue) = queue else {
            return scan(b"", sink);
        };
        let Some(ids) = narrowing.values("message_id") else {
            return scan(&queue_prefix(queue), sink);
        };
        for id in ids {
            if !sink.wants_more() {
                break;
            }
            let id_key = MessageRow::id_key(queue, id);
            let Some(seq) = inspector
                .get::<u64>(View::QueueMessageIds, &id_key)
                .map_err(storage)?
            else {
                continue;
            };
            let message = inspector
                .get::<MessageRow>(VIEW, &MessageRow::key(queue, seq))
                .map_err(storage)?;
            if let Some(message) = message {
                push(sink, &message.borrowed())?;
            }
        }
        Ok(())
    })
}

fn push_message(sink: &mut RowSink, m: &MessageRow<&str>) -> Result<Flow> {
    let (consumer, lease_deadline) = match &m.state {
        MessageState::Leased {
            consumer,
            deadline_ms,
        } => (Value::Text(consumer), Value::Time(*deadline_ms)),
        MessageState::Ready | MessageState::Delayed => (Value::Null, Value::Null),
    };
    sink.push(&[
        Value::Text(m.queue),
        Value::U64(m.seq),
        Value::Text(m.message_id),
        Value::Text(m.state.as_str()),
        consumer,
        Value::U32(u32::from(m.priority)),
        Value::U32(m.attempts),
        Value::Text(m.delivery.as_str()),
        Value::Text(m.topic),
        Value::Time(m.enqueued_at_ms),
        Value::Time(m.ready_at_ms),
        lease_deadline,
        m.expires_at_ms.map_or(Value::Null, Value::Time),
        Value::U64(u64::try_from(m.size()).unwrap_or(u64::MAX)),
    ])
}
