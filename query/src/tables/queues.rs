//! The `queues` table: one row per queue, its settings and what it holds
//! now, from the `queues` view; `name = '...'` reads that queue's row only.
//! Then one row per queue another cluster holds, from the catalog
//! summaries held of other clusters (those not expired): its name,
//! cluster and next hop, the other columns null.
//!
//! Columns: `name`, `queue_type`, `max_size`, `visibility_timeout_ms`,
//! `ack_timeout_ms`, `message_ttl_ms`, `max_retries`, `dead_letter_queue`,
//! `dedup_window_ms`, `created_at` (another cluster's: when its summary
//! was learned), `depth`, `ready`, `delayed`, `in_flight`, `dlq_depth`,
//! `oldest_age_ms`, `cluster_id` (here: this node's cluster), `next_hop`
//! (null here).

use datafusion::error::Result;
use mpreg_storage::federation::live;
use mpreg_storage::views::{MessageRow, NodeRow, QueueRow, RemoteCatalogRow, View, queue_prefix};
use mpreg_storage::{Flow, Inspector};

use super::routes::next_hop;
use super::{first_row, now_ms, scan_view};
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

/// `depth`, `dlq_depth` and `oldest_age_ms` are computed when read: depth =
/// ready + delayed; the oldest message is the first of the queue's
/// `queue_messages` rows (seq grows with time).
pub(super) const COLUMNS: &[Column] = &[
    Column::new("name", Kind::Text),
    Column::nullable("queue_type", Kind::Text),
    Column::nullable("max_size", Kind::U64),
    Column::nullable("visibility_timeout_ms", Kind::U64),
    Column::nullable("ack_timeout_ms", Kind::U64),
    Column::nullable("message_ttl_ms", Kind::U64),
    Column::nullable("max_retries", Kind::U32),
    Column::nullable("dead_letter_queue", Kind::Text),
    Column::nullable("dedup_window_ms", Kind::U64),
    Column::new("created_at", Kind::Time),
    Column::nullable("depth", Kind::U64),
    Column::nullable("ready", Kind::U64),
    Column::nullable("delayed", Kind::U64),
    Column::nullable("in_flight", Kind::U64),
    Column::nullable("dlq_depth", Kind::U64),
    Column::nullable("oldest_age_ms", Kind::U64),
    Column::nullable("cluster_id", Kind::Text),
    Column::nullable("next_hop", Kind::Text),
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
fn push_queue(
    inspector: &Inspector,
    (now, cluster): (u64, Option<&str>),
    sink: &mut RowSink,
    q: &QueueRow,
) -> Result<Flow> {
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
        cluster.map_or(Value::Null, Value::Text),
        Value::Null,
    ])
}

/// The cluster of this node's data dir: that of any node it knows (every
/// node in its `nodes` view is a member of its cluster).
fn own_cluster(inspector: &Inspector) -> Result<Option<String>> {
    Ok(first_row::<NodeRow>(inspector, View::Nodes, b"")?.map(|n| n.cluster_id))
}

/// The rows of queues other clusters hold (`name`: that one only).
fn push_remote(
    inspector: &Inspector,
    now: u64,
    name: Option<&str>,
    sink: &mut RowSink,
) -> Result<()> {
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
            for queue in &r.ad.summary.queues {
                if name.is_some_and(|n| n != queue) {
                    continue;
                }
                let row = [
                    Value::Text(queue),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Time(r.learned_at_ms),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Text(&r.ad.cluster_id),
                    next_hop.as_deref().map_or(Value::Null, Value::Text),
                ];
                if sink.push(&row)? == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
            Ok(Flow::Continue)
        },
    )
}

pub(super) fn produce(inspector: &Inspector, name: Option<&str>, sink: &mut RowSink) -> Result<()> {
    let now = now_ms();
    let cluster = own_cluster(inspector)?;
    let here = (now, cluster.as_deref());
    let mut stopped = false;
    if let Some(name) = name {
        if let Some(queue) = queue_row(inspector, name)? {
            stopped = push_queue(inspector, here, sink, &queue)? == Flow::Stop;
        }
    } else {
        scan_view(inspector, View::Queues, b"", sink, |sink, q: QueueRow| {
            let flow = push_queue(inspector, here, sink, &q)?;
            stopped = flow == Flow::Stop;
            Ok(flow)
        })?;
    }
    if stopped {
        return Ok(());
    }
    push_remote(inspector, now, name, sink)
}
