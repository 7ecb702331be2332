//! The SQL tables: their columns, their pushdown keys, and how each reads
//! its rows from the views, the log or the raft state.
//!
//! Every table is an [`InspectTable`]; a scan reads one RocksDB snapshot
//! (see [`mpreg_storage::inspect`]), so each table in a query is consistent
//! with itself. Tables in one query may be read at different snapshots, and
//! so may the two point reads behind `queues.dlq_depth` and
//! `queues.oldest_age_ms`.
//! `cache_entries.hits` and `cache_entries.tier` are not on disk: they are
//! asked of the memory tier as each row is read.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::streaming::StreamingTableExec;
use mpreg_storage::views::{
    CacheRow, FunctionRow, MessageRow, MessageState, NodeRow, QueueRow, RouteRow, SubscriptionRow,
    View, queue_prefix,
};
use mpreg_storage::{EventKind, Flow, Inspector};
use openraft::{EntryPayload, RaftLogId};
use serde::de::DeserializeOwned;

use crate::cache::CacheTierSource;
use crate::columns::{Column, Kind, RowWriter, Value, schema};
use crate::pushdown::{Bounds, text_equality};
use crate::raft::RaftSource;
use crate::scan::{BlockingScan, RowSink};

/// Every table of the SQL surface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableId {
    Nodes,
    Functions,
    Subscriptions,
    Routes,
    Queues,
    QueueMessages,
    CacheEntries,
    Events,
    Raft,
    Peers,
}

const NODES: &[Column] = &[
    Column::new("node_id", Kind::Text),
    Column::new("cluster_id", Kind::Text),
    Column::new("addresses", Kind::TextList),
    Column::new("resources", Kind::TextList),
    Column::new("joined_at", Kind::Time),
    Column::new("status", Kind::Text),
];

const FUNCTIONS: &[Column] = &[
    Column::new("name", Kind::Text),
    Column::new("function_id", Kind::Text),
    Column::new("version", Kind::Text),
    Column::new("resources", Kind::TextList),
    Column::new("provider", Kind::Text),
    Column::new("node_id", Kind::Text),
    Column::new("cluster_id", Kind::Text),
    Column::new("registered_at", Kind::Time),
];

const SUBSCRIPTIONS: &[Column] = &[
    Column::new("subscription_id", Kind::Text),
    Column::new("pattern", Kind::Text),
    Column::new("subscriber", Kind::Text),
    Column::new("node_id", Kind::Text),
    Column::new("durable", Kind::Bool),
    Column::new("created_at", Kind::Time),
];

const ROUTES: &[Column] = &[
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

/// `depth`, `dlq_depth` and `oldest_age_ms` are computed when read: depth =
/// ready + delayed; the oldest message is the first of the queue's
/// `queue_messages` rows (seq grows with time).
const QUEUES: &[Column] = &[
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

const QUEUE_MESSAGES: &[Column] = &[
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

/// One row per stored entry, expired ones included until their timer
/// removes them. `hits` and `tier` come from the node's memory tier when
/// the row is read ([`CacheTierSource`]).
const CACHE_ENTRIES: &[Column] = &[
    Column::new("namespace", Kind::Text),
    Column::new("identifier", Kind::Text),
    Column::nullable("version", Kind::Text),
    Column::new("tags", Kind::TextList),
    Column::new("size_bytes", Kind::U64),
    Column::new("revision", Kind::U64),
    Column::new("created_at", Kind::Time),
    Column::new("updated_at", Kind::Time),
    Column::nullable("expires_at", Kind::Time),
    Column::new("hits", Kind::U64),
    Column::new("tier", Kind::Text),
];

const EVENTS: &[Column] = &[
    Column::new("index", Kind::U64),
    Column::new("term", Kind::U64),
    Column::nullable("time", Kind::Time),
    Column::new("kind", Kind::Text),
    Column::new("summary", Kind::Text),
];

const PEERS: &[Column] = &[
    Column::new("peer", Kind::Text),
    Column::new("raft_id", Kind::U64),
    Column::new("address", Kind::Text),
    Column::new("state", Kind::Text),
    Column::nullable("last_contact", Kind::Time),
    Column::nullable("match_index", Kind::U64),
    Column::nullable("lag", Kind::U64),
];

const RAFT: &[Column] = &[
    Column::new("node_id", Kind::Text),
    Column::new("role", Kind::Text),
    Column::new("term", Kind::U64),
    Column::nullable("leader", Kind::Text),
    Column::new("last_log_index", Kind::U64),
    Column::new("committed", Kind::U64),
    Column::new("last_applied", Kind::U64),
    Column::nullable("snapshot_index", Kind::U64),
];

impl TableId {
    pub const ALL: [TableId; 10] = [
        TableId::Nodes,
        TableId::Functions,
        TableId::Subscriptions,
        TableId::Routes,
        TableId::Queues,
        TableId::QueueMessages,
        TableId::CacheEntries,
        TableId::Events,
        TableId::Raft,
        TableId::Peers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TableId::Nodes => "nodes",
            TableId::Functions => "functions",
            TableId::Subscriptions => "subscriptions",
            TableId::Routes => "routes",
            TableId::Queues => "queues",
            TableId::QueueMessages => "queue_messages",
            TableId::CacheEntries => "cache_entries",
            TableId::Events => "events",
            TableId::Raft => "raft",
            TableId::Peers => "peers",
        }
    }

    fn columns(self) -> &'static [Column] {
        match self {
            TableId::Nodes => NODES,
            TableId::Functions => FUNCTIONS,
            TableId::Subscriptions => SUBSCRIPTIONS,
            TableId::Routes => ROUTES,
            TableId::Queues => QUEUES,
            TableId::QueueMessages => QUEUE_MESSAGES,
            TableId::CacheEntries => CACHE_ENTRIES,
            TableId::Events => EVENTS,
            TableId::Raft => RAFT,
            TableId::Peers => PEERS,
        }
    }

    /// The column whose filters narrow a scan, if any.
    fn key(self) -> Option<&'static str> {
        match self {
            TableId::Functions => Some("name"),
            TableId::Routes => Some("dest"),
            TableId::Queues => Some("name"),
            TableId::QueueMessages => Some("queue"),
            TableId::CacheEntries => Some("namespace"),
            TableId::Events => Some("index"),
            TableId::Nodes | TableId::Subscriptions | TableId::Raft | TableId::Peers => None,
        }
    }
}

/// What the pushed filters leave of a table's key space.
#[derive(Clone, Debug, Default)]
struct Narrowing {
    /// The key column must equal this.
    equals: Option<String>,
    /// The index column must lie within these.
    bounds: Bounds,
}

impl Narrowing {
    fn from_filters(table: TableId, filters: &[Expr]) -> Self {
        let mut narrowing = Narrowing::default();
        let Some(key) = table.key() else {
            return narrowing;
        };
        for filter in filters {
            if table == TableId::Events {
                narrowing.bounds.narrow(filter, key);
            } else if narrowing.equals.is_none() {
                narrowing.equals = text_equality(filter, key);
            }
        }
        narrowing
    }

    fn narrows(table: TableId, filter: &Expr) -> bool {
        match table.key() {
            Some(key) if table == TableId::Events => Bounds::default().narrow(filter, key),
            Some(key) => text_equality(filter, key).is_some(),
            None => false,
        }
    }
}

/// Where the tables read from.
pub struct Sources {
    pub inspector: Inspector,
    pub raft: Arc<dyn RaftSource>,
    /// Which cache entries are in the memory tier, and their hits there.
    pub cache: Arc<dyn CacheTierSource>,
}

/// One SQL table over the node's state.
#[derive(Clone)]
pub struct InspectTable {
    id: TableId,
    schema: SchemaRef,
    sources: Arc<Sources>,
}

impl fmt::Debug for InspectTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InspectTable({})", self.id.name())
    }
}

impl InspectTable {
    pub fn new(id: TableId, sources: Arc<Sources>) -> Self {
        InspectTable {
            id,
            schema: schema(id.columns()),
            sources,
        }
    }
}

fn storage(e: mpreg_storage::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Scans rows of `view` under `prefix` into `sink` through `row`.
fn scan_view<T: DeserializeOwned>(
    inspector: &Inspector,
    view: View,
    prefix: &[u8],
    sink: &mut RowSink,
    mut row: impl FnMut(&mut RowSink, T) -> Result<Flow>,
) -> Result<()> {
    let mut failed = None;
    inspector
        .scan_view(view, prefix, |decoded| {
            row(sink, decoded).unwrap_or_else(|e| {
                failed = Some(e);
                Flow::Stop
            })
        })
        .map_err(storage)?;
    failed.map_or(Ok(()), Err)
}

/// The first row of `view` under `prefix`, if any.
fn first_row<T: DeserializeOwned>(
    inspector: &Inspector,
    view: View,
    prefix: &[u8],
) -> Result<Option<T>> {
    let mut first = None;
    inspector
        .scan_view(view, prefix, |row: T| {
            first = Some(row);
            Flow::Stop
        })
        .map_err(storage)?;
    Ok(first)
}

fn produce_nodes(inspector: &Inspector, sink: &mut RowSink) -> Result<()> {
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

fn produce_functions(inspector: &Inspector, name: Option<&str>, sink: &mut RowSink) -> Result<()> {
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

fn produce_subscriptions(inspector: &Inspector, sink: &mut RowSink) -> Result<()> {
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

fn produce_routes(inspector: &Inspector, dest: Option<&str>, sink: &mut RowSink) -> Result<()> {
    let prefix = dest.map(RouteRow::dest_prefix).unwrap_or_default();
    let now = crate::now_ms();
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

fn produce_queues(inspector: &Inspector, name: Option<&str>, sink: &mut RowSink) -> Result<()> {
    let now = crate::now_ms();
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

fn produce_queue_messages(
    inspector: &Inspector,
    queue: Option<&str>,
    sink: &mut RowSink,
) -> Result<()> {
    let prefix = queue.map(queue_prefix).unwrap_or_default();
    scan_view(
        inspector,
        View::QueueMessages,
        &prefix,
        sink,
        |sink, m: MessageRow| {
            let (consumer, lease_deadline) = match &m.state {
                MessageState::Leased {
                    consumer,
                    deadline_ms,
                } => (Value::Text(consumer), Value::Time(*deadline_ms)),
                MessageState::Ready | MessageState::Delayed => (Value::Null, Value::Null),
            };
            sink.push(&[
                Value::Text(&m.queue),
                Value::U64(m.seq),
                Value::Text(&m.message_id),
                Value::Text(m.state.as_str()),
                consumer,
                Value::U32(u32::from(m.priority)),
                Value::U32(m.attempts),
                Value::Text(m.delivery.as_str()),
                Value::Text(&m.topic),
                Value::Time(m.enqueued_at_ms),
                Value::Time(m.ready_at_ms),
                lease_deadline,
                m.expires_at_ms.map_or(Value::Null, Value::Time),
                Value::U64(u64::try_from(m.size()).unwrap_or(u64::MAX)),
            ])
        },
    )
}

fn produce_cache_entries(
    inspector: &Inspector,
    tier: &dyn CacheTierSource,
    namespace: Option<&str>,
    sink: &mut RowSink,
) -> Result<()> {
    let prefix = namespace
        .map(CacheRow::namespace_prefix)
        .unwrap_or_default();
    scan_view(
        inspector,
        View::CacheEntries,
        &prefix,
        sink,
        |sink, r: CacheRow| {
            let memory_hits = tier.memory_hits(&r.key);
            let version = &r.key.version;
            sink.push(&[
                Value::Text(&r.key.namespace),
                Value::Text(&r.key.identifier),
                if version.is_empty() {
                    Value::Null
                } else {
                    Value::Text(version)
                },
                Value::TextList(&r.tags),
                Value::U64(u64::try_from(r.size_bytes()).unwrap_or(u64::MAX)),
                Value::U64(r.revision),
                Value::Time(r.created_at_ms),
                Value::Time(r.updated_at_ms),
                r.expires_at_ms.map_or(Value::Null, Value::Time),
                Value::U64(memory_hits.unwrap_or(0)),
                Value::Text(if memory_hits.is_some() {
                    "memory"
                } else {
                    "disk"
                }),
            ])
        },
    )
}

/// The fields of an event as one JSON object (the kind is its own column).
fn summary(kind: &EventKind) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::Object(tagged)) => tagged
            .into_iter()
            .next()
            .map_or_else(String::new, |(_, fields)| fields.to_string()),
        Ok(other) => other.to_string(),
        Err(e) => format!("{{\"error\":\"{e}\"}}"),
    }
}

fn produce_events(inspector: &Inspector, bounds: Bounds, sink: &mut RowSink) -> Result<()> {
    if bounds.is_empty() {
        return Ok(());
    }
    let mut failed = None;
    inspector
        .scan_log(bounds.low, bounds.high, |entry| {
            let log_id = entry.get_log_id();
            let batch = match &entry.payload {
                EntryPayload::Normal(batch) => batch,
                EntryPayload::Membership(membership) => {
                    let summary_of = || serde_json::to_string(membership).unwrap_or_default();
                    return match sink.push(&[
                        Value::U64(log_id.index),
                        Value::U64(log_id.leader_id.term),
                        Value::Null,
                        Value::Text("membership"),
                        Value::LazyText(&summary_of),
                    ]) {
                        Ok(flow) => flow,
                        Err(e) => {
                            failed = Some(e);
                            Flow::Stop
                        }
                    };
                }
                EntryPayload::Blank => return Flow::Continue,
            };
            for event in &batch.events {
                let summary_of = || summary(&event.kind);
                match sink.push(&[
                    Value::U64(log_id.index),
                    Value::U64(log_id.leader_id.term),
                    Value::Time(event.time_ms),
                    Value::Text(event.kind.name()),
                    Value::LazyText(&summary_of),
                ]) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop) => return Flow::Stop,
                    Err(e) => {
                        failed = Some(e);
                        return Flow::Stop;
                    }
                }
            }
            Flow::Continue
        })
        .map_err(storage)?;
    failed.map_or(Ok(()), Err)
}

fn produce_peers(raft: &dyn RaftSource, sink: &mut RowSink) -> Result<()> {
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

fn produce_raft(raft: &dyn RaftSource, sink: &mut RowSink) -> Result<()> {
    let row = raft.raft_row().map_err(storage)?;
    sink.push(&[
        Value::Text(&row.node_id),
        Value::Text(&row.role),
        Value::U64(row.term),
        row.leader.as_deref().map_or(Value::Null, Value::Text),
        Value::U64(row.last_log_index),
        Value::U64(row.committed),
        Value::U64(row.last_applied),
        row.snapshot_index.map_or(Value::Null, Value::U64),
    ])?;
    Ok(())
}

impl InspectTable {
    fn produce(&self, narrowing: &Narrowing, sink: &mut RowSink) -> Result<()> {
        let inspector = &self.sources.inspector;
        let equals = narrowing.equals.as_deref();
        match self.id {
            TableId::Nodes => produce_nodes(inspector, sink),
            TableId::Functions => produce_functions(inspector, equals, sink),
            TableId::Subscriptions => produce_subscriptions(inspector, sink),
            TableId::Routes => produce_routes(inspector, equals, sink),
            TableId::Queues => produce_queues(inspector, equals, sink),
            TableId::QueueMessages => produce_queue_messages(inspector, equals, sink),
            TableId::CacheEntries => {
                produce_cache_entries(inspector, self.sources.cache.as_ref(), equals, sink)
            }
            TableId::Events => produce_events(inspector, narrowing.bounds, sink),
            TableId::Raft => produce_raft(self.sources.raft.as_ref(), sink),
            TableId::Peers => produce_peers(self.sources.raft.as_ref(), sink),
        }
    }
}

#[async_trait]
impl TableProvider for InspectTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| {
                if Narrowing::narrows(self.id, filter) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let narrowing = Narrowing::from_filters(self.id, filters);
        let columns = self.id.columns();
        let projection = projection.cloned();
        let make_writer = Arc::new(move || RowWriter::new(columns, projection.as_deref()));
        let table = self.clone();
        let producer = Arc::new(move |sink: &mut RowSink| table.produce(&narrowing, sink));
        let scan = BlockingScan::new(self.id.name(), make_writer, producer, limit)?;
        let schema = datafusion::physical_plan::streaming::PartitionStream::schema(&scan).clone();
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            vec![Arc::new(scan)],
            None,
            [],
            false,
            limit,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    #[test]
    fn queue_tables_narrow_on_their_key_column_only() {
        let by_queue = [col("state").eq(lit("leased")), col("queue").eq(lit("q1"))];
        let narrowing = Narrowing::from_filters(TableId::QueueMessages, &by_queue);
        assert_eq!(narrowing.equals.as_deref(), Some("q1"));
        assert!(!Narrowing::narrows(TableId::QueueMessages, &by_queue[0]));
        let by_name = [lit("q1").eq(col("name"))];
        let narrowing = Narrowing::from_filters(TableId::Queues, &by_name);
        assert_eq!(narrowing.equals.as_deref(), Some("q1"));
        assert!(!Narrowing::narrows(
            TableId::Queues,
            &col("depth").eq(lit(0u64))
        ));
    }

    #[test]
    fn cache_entries_narrow_on_namespace_equality_only() {
        let filters = [
            col("tier").eq(lit("memory")),
            col("namespace").eq(lit("users")),
        ];
        let narrowing = Narrowing::from_filters(TableId::CacheEntries, &filters);
        assert_eq!(narrowing.equals.as_deref(), Some("users"));
        assert!(Narrowing::narrows(TableId::CacheEntries, &filters[1]));
        assert!(!Narrowing::narrows(TableId::CacheEntries, &filters[0]));
        assert!(!Narrowing::narrows(
            TableId::CacheEntries,
            &col("namespace").not_eq(lit("users"))
        ));
        assert!(!Narrowing::narrows(
            TableId::CacheEntries,
            &col("identifier").eq(lit("u1"))
        ));
    }
}
