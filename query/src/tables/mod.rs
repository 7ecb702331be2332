//! The SQL tables: which tables exist ([`TableId`]), the one provider that
//! serves them all ([`InspectTable`]), what a query's filters leave of a
//! table's key space ([`Narrowing`]), and where the rows come from
//! ([`Sources`]). Each table's columns and rows live in a file of its own.
//!
//! Every table is an [`InspectTable`]; a scan reads one RocksDB snapshot
//! (see [`mpreg_storage::inspect`]), so each table in a query is consistent
//! with itself. Tables in one query may be read at different snapshots, and
//! so may the two point reads behind `queues.dlq_depth` and
//! `queues.oldest_age_ms`, and the keys of an `IN` list (one get or prefix
//! scan per key).
//!
//! # Pushdown
//! Equality, `IN` and `OR`s of equalities on a table's key columns
//! ([`TableId::keys`]) turn its scan into RocksDB gets or bounded prefix
//! scans; `events` also narrows on `index` ranges. Pushdown is `Inexact`
//! (DataFusion still checks every row), so `EXPLAIN` shows the filters as
//! `partial_filters`.
//! `cache_entries.hits` and `cache_entries.tier` are not on disk: they are
//! asked of the memory tier as each row is read.
//!
//! # Tables
//! - [`nodes`], [`functions`], [`subscriptions`], [`queues`],
//!   [`queue_messages`], [`cache_entries`]: one view each;
//! - [`routes`]: the `routes` and `route_candidates` views, ranked;
//! - [`federation_links`]: one view, with the live link state from a
//!   [`LinkStateSource`];
//! - [`route_keys`]: the route signing keys, one row per key;
//! - [`credentials`]: client credentials and their permissions (no tokens);
//! - [`events`]: the raft log;
//! - [`raft`], [`peers`]: the raft state, through a [`RaftSource`].
//!
//! # Table functions
//! - [`route_explain`]: `route_explain('dest')`, the candidates to one
//!   destination, explained.

mod cache_entries;
mod credentials;
mod events;
mod federation_links;
mod functions;
mod nodes;
mod peers;
mod queue_messages;
mod queues;
mod raft;
mod route_explain;
mod route_keys;
mod routes;
mod subscriptions;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::streaming::StreamingTableExec;
use mpreg_storage::inspect::KeyRange;
use mpreg_storage::views::View;
use mpreg_storage::{Flow, Inspector, codec};
use serde::de::DeserializeOwned;

pub use cache_entries::{CacheTierSource, StoppedCacheTier};
pub use federation_links::{LinkState, LinkStateSource};
pub use peers::PeerRow;
pub use raft::{RaftRow, RaftSource, StoredRaftSource};
pub use route_explain::{NAME as ROUTE_EXPLAIN, RouteExplain};

use crate::columns::{Column, RowWriter, schema};
use crate::pushdown::{Bounds, text_values};
use crate::scan::{BlockingScan, RowSink};

/// Every table of the SQL surface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableId {
    Nodes,
    Functions,
    Subscriptions,
    Routes,
    FederationLinks,
    RouteKeys,
    Queues,
    QueueMessages,
    CacheEntries,
    Events,
    Raft,
    Peers,
    Credentials,
}

impl TableId {
    pub const ALL: [TableId; 13] = [
        TableId::Nodes,
        TableId::Functions,
        TableId::Subscriptions,
        TableId::Routes,
        TableId::FederationLinks,
        TableId::RouteKeys,
        TableId::Queues,
        TableId::QueueMessages,
        TableId::CacheEntries,
        TableId::Events,
        TableId::Raft,
        TableId::Peers,
        TableId::Credentials,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TableId::Nodes => "nodes",
            TableId::Functions => "functions",
            TableId::Subscriptions => "subscriptions",
            TableId::Routes => "routes",
            TableId::FederationLinks => "federation_links",
            TableId::RouteKeys => "route_keys",
            TableId::Queues => "queues",
            TableId::QueueMessages => "queue_messages",
            TableId::CacheEntries => "cache_entries",
            TableId::Events => "events",
            TableId::Raft => "raft",
            TableId::Peers => "peers",
            TableId::Credentials => "credentials",
        }
    }

    fn columns(self) -> &'static [Column] {
        match self {
            TableId::Nodes => nodes::COLUMNS,
            TableId::Functions => functions::COLUMNS,
            TableId::Subscriptions => subscriptions::COLUMNS,
            TableId::Routes => routes::COLUMNS,
            TableId::FederationLinks => federation_links::COLUMNS,
            TableId::RouteKeys => route_keys::COLUMNS,
            TableId::Queues => queues::COLUMNS,
            TableId::QueueMessages => queue_messages::COLUMNS,
            TableId::CacheEntries => cache_entries::COLUMNS,
            TableId::Events => events::COLUMNS,
            TableId::Raft => raft::COLUMNS,
            TableId::Peers => peers::COLUMNS,
            TableId::Credentials => credentials::COLUMNS,
        }
    }

    /// The text columns whose equality (or `IN`) narrows a scan; for a key
    /// of several parts, the outermost part first.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            TableId::Nodes => &[nodes::KEY],
            TableId::Functions => &[functions::KEY],
            TableId::Subscriptions => &[subscriptions::KEY],
            TableId::Routes => &[routes::KEY],
            TableId::FederationLinks => &[federation_links::KEY],
            TableId::RouteKeys => &[route_keys::KEY],
            TableId::Queues => &[queues::KEY],
            TableId::QueueMessages => queue_messages::KEYS,
            TableId::CacheEntries => cache_entries::KEYS,
            TableId::Events => &[events::KIND],
            TableId::Credentials => &[credentials::KEY],
            TableId::Raft | TableId::Peers => &[],
        }
    }
}

/// What the pushed filters leave of a table's key space.
#[derive(Clone, Debug, Default)]
pub(crate) struct Narrowing {
    /// Per key column the filters constrain, the values it may take
    /// (sorted; several filters on one column intersect).
    values: BTreeMap<&'static str, Vec<String>>,
    /// `events.index` lies within these.
    bounds: Bounds,
}

impl Narrowing {
    fn from_filters(table: TableId, filters: &[Expr]) -> Self {
        let mut narrowing = Narrowing::default();
        for filter in filters {
            if table == TableId::Events {
                narrowing.bounds.narrow(filter, events::INDEX);
            }
            for &key in table.keys() {
                let Some(values) = text_values(filter, key) else {
                    continue;
                };
                narrowing
                    .values
                    .entry(key)
                    .and_modify(|known| known.retain(|v| values.contains(v)))
                    .or_insert(values);
            }
        }
        narrowing
    }

    fn narrows(table: TableId, filter: &Expr) -> bool {
        (table == TableId::Events && Bounds::default().narrow(filter, events::INDEX))
            || table
                .keys()
                .iter()
                .any(|key| text_values(filter, key).is_some())
    }

    /// The values `column` may take, if the filters say.
    pub(crate) fn values(&self, column: &str) -> Option<&[String]> {
        self.values.get(column).map(Vec::as_slice)
    }

    /// Whether `value` of `column` passes the filters.
    pub(crate) fn allows(&self, column: &str, value: &str) -> bool {
        self.values(column)
            .is_none_or(|values| values.binary_search_by(|v| v.as_str().cmp(value)).is_ok())
    }
}

/// Calls `produce` once per value `column` may take (once with `None` when
/// the filters leave it open), until the query wants no more rows.
fn per_value(
    narrowing: &Narrowing,
    column: &str,
    sink: &mut RowSink,
    mut produce: impl FnMut(Option<&str>, &mut RowSink) -> Result<()>,
) -> Result<()> {
    let Some(values) = narrowing.values(column) else {
        return produce(None, sink);
    };
    for value in values {
        if !sink.wants_more() {
            break;
        }
        produce(Some(value), sink)?;
    }
    Ok(())
}

/// Where the tables read from.
pub struct Sources {
    pub inspector: Inspector,
    pub raft: Arc<dyn RaftSource>,
    /// Which cache entries are in the memory tier, and their hits there.
    pub cache: Arc<dyn CacheTierSource>,
    /// The live state of federation links, once the daemon sets it
    /// ([`crate::SqlEngine::set_link_states`]); unset, links are `unknown`.
    pub links: OnceLock<Arc<dyn LinkStateSource>>,
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

    fn produce(&self, narrowing: &Narrowing, sink: &mut RowSink) -> Result<()> {
        let inspector = &self.sources.inspector;
        let links = self.sources.links.get().map(|l| &**l);
        match self.id {
            TableId::Nodes => per_value(narrowing, nodes::KEY, sink, |id, sink| {
                nodes::produce(inspector, id, sink)
            }),
            TableId::Functions => per_value(narrowing, functions::KEY, sink, |name, sink| {
                functions::produce(inspector, name, sink)
            }),
            TableId::Subscriptions => per_value(narrowing, subscriptions::KEY, sink, |id, sink| {
                subscriptions::produce(inspector, id, sink)
            }),
            TableId::Routes => per_value(narrowing, routes::KEY, sink, |dest, sink| {
                routes::produce(inspector, dest, sink)
            }),
            TableId::FederationLinks => {
                per_value(narrowing, federation_links::KEY, sink, |cluster, sink| {
                    federation_links::produce(inspector, links, cluster, sink)
                })
            }
            TableId::RouteKeys => per_value(narrowing, route_keys::KEY, sink, |cluster, sink| {
                route_keys::produce(inspector, cluster, sink)
            }),
            TableId::Queues => per_value(narrowing, queues::KEY, sink, |name, sink| {
                queues::produce(inspector, name, sink)
            }),
            TableId::QueueMessages => queue_messages::produce(inspector, narrowing, sink),
            TableId::CacheEntries => {
                cache_entries::produce(inspector, self.sources.cache.as_ref(), narrowing, sink)
            }
            TableId::Events => events::produce(inspector, narrowing, sink),
            TableId::Raft => raft::produce(self.sources.raft.as_ref(), sink),
            TableId::Peers => peers::produce(self.sources.raft.as_ref(), sink),
            TableId::Credentials => per_value(narrowing, credentials::KEY, sink, |name, sink| {
                credentials::produce(inspector, name, sink)
            }),
        }
    }
}

fn storage(e: mpreg_storage::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The flow of a scan whose step gave `step`: an error is kept in
/// `failed` (to be returned once the scan ends) and stops the scan.
fn stop_on_error(failed: &mut Option<DataFusionError>, step: Result<Flow>) -> Flow {
    step.unwrap_or_else(|e| {
        *failed = Some(e);
        Flow::Stop
    })
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
            stop_on_error(&mut failed, row(sink, decoded))
        })
        .map_err(storage)?;
    failed.map_or(Ok(()), Err)
}

/// [`scan_view`] for a view whose every stored row is one table row: when
/// the query reads no column (`count(*)`), one empty row per key, without
/// decoding a value. Large views are scanned by two threads
/// ([`scan_in_place`]).
fn scan_rows<T: DeserializeOwned>(
    inspector: &Inspector,
    view: View,
    prefix: &[u8],
    sink: &mut RowSink,
    row: impl Fn(&mut RowSink, T) -> Result<Flow> + Sync,
) -> Result<()> {
    scan_in_place(inspector, view, prefix, sink, |sink, key, value| {
        row(
            sink,
            codec::decode_row(view.cf_name(), key, value).map_err(storage)?,
        )
    })
}

/// One row per key of `view` under `prefix`, built by `row` from the key
/// alone: no value is read or decoded (for a query that reads only
/// columns the key holds).
fn scan_keys_as_rows(
    inspector: &Inspector,
    view: View,
    prefix: &[u8],
    sink: &mut RowSink,
    row: impl Fn(&mut RowSink, &[u8]) -> Result<Flow> + Sync,
) -> Result<()> {
    scan_in_place(inspector, view, prefix, sink, |sink, key, _| row(sink, key))
}

/// A scan whose keys take at least this much on disk is split in two
/// halves that two threads scan at once ([`in_two_threads`]).
const PARALLEL_SCAN_BYTES: u64 = 4 << 20;

/// Rows of `view` under `prefix`, each decoded in place by `row` from its
/// stored key and value (lent by RocksDB, see [`Inspector::scan_raw`]),
/// all read at one snapshot; a query that reads no column (`count(*)`)
/// gets one empty row per key instead, without `row` decoding anything. A
/// large scan runs [`in_two_threads`] and leaves RocksDB's block cache as
/// it was ([`mpreg_storage::inspect::SnapshotScan::bulk`]).
fn scan_in_place(
    inspector: &Inspector,
    view: View,
    prefix: &[u8],
    sink: &mut RowSink,
    row: impl Fn(&mut RowSink, &[u8], &[u8]) -> Result<Flow> + Sync,
) -> Result<()> {
    let Some(scan) = inspector.view_scan(view) else {
        // A dir written before this view existed, opened read-only, lacks it.
        return Ok(());
    };
    let range = KeyRange::prefix(prefix);
    let halves = if sink.wants_every_row() {
        scan.halves(&range, PARALLEL_SCAN_BYTES).map_err(storage)?
    } else {
        None
    };
    let scan = if halves.is_some() { scan.bulk() } else { scan };
    let counts_only = !sink.reads_columns();
    let run = |range: &KeyRange, sink: &mut RowSink| {
        let mut failed = None;
        scan.range(range, |key, value| {
            let step = if counts_only {
                sink.push(&[])
            } else {
                row(sink, key, value)
            };
            Ok(stop_on_error(&mut failed, step))
        })
        .map_err(storage)?;
        failed.map_or(Ok(()), Err)
    };
    match halves {
        Some((lower, upper)) => in_two_threads(view.cf_name(), sink, &lower, &upper, run),
        None => run(&range, sink),
    }
}

/// Runs `scan` of the `lower` half on this thread into `sink`, and of the
/// `upper` half on a second thread (at the SQL threads' low priority) into
/// a sink of its own in the same stream: the rows come as two interleaved
/// runs, not in order. Only for a query that wants every row (no `LIMIT`:
/// [`RowSink::fork`]); otherwise, or when no thread can be started, this
/// thread scans both halves.
fn in_two_threads<P: Sync>(
    what: &str,
    sink: &mut RowSink,
    lower: &P,
    upper: &P,
    scan: impl Fn(&P, &mut RowSink) -> Result<()> + Sync,
) -> Result<()> {
    let Some(mut upper_sink) = sink.fork() else {
        scan(lower, sink)?;
        return scan(upper, sink);
    };
    std::thread::scope(|threads| {
        let helper = std::thread::Builder::new()
            .name("mpreg-sql-scan".into())
            .spawn_scoped(threads, || {
                crate::engine::lowest_cpu_priority();
                scan(upper, &mut upper_sink)?;
                upper_sink.finish()
            });
        let lower_rows = scan(lower, sink);
        let upper_rows = match helper {
            Ok(helper) => helper.join().unwrap_or_else(|_| {
                Err(DataFusionError::Internal(format!(
                    "a thread scanning {what} panicked"
                )))
            }),
            Err(_) => scan(upper, sink),
        };
        lower_rows.and(upper_rows)
    })
}

/// The row of `view` at `key` (none if absent), or every row of `view`
/// when `key` is `None`, into `sink` through `row`.
fn point_or_scan<T: DeserializeOwned>(
    inspector: &Inspector,
    view: View,
    key: Option<Vec<u8>>,
    sink: &mut RowSink,
    mut row: impl FnMut(&mut RowSink, T) -> Result<Flow>,
) -> Result<()> {
    let Some(key) = key else {
        return scan_view(inspector, view, b"", sink, row);
    };
    match inspector.get::<T>(view, &key).map_err(storage)? {
        Some(found) => row(sink, found).map(|_| ()),
        None => Ok(()),
    }
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

/// Now, in unix milliseconds (route expiry in `routes.state`, message age
/// in `queues.oldest_age_ms`).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
        let table = self.clone();
        streaming_scan(
            self.id.name(),
            self.id.columns(),
            projection,
            limit,
            move |sink| table.produce(&narrowing, sink),
        )
    }
}

/// The plan of a scan of `columns` (those in `projection`) whose rows
/// `produce` writes on a blocking thread.
fn streaming_scan(
    name: &'static str,
    columns: &'static [Column],
    projection: Option<&Vec<usize>>,
    limit: Option<usize>,
    produce: impl Fn(&mut RowSink) -> Result<()> + Send + Sync + 'static,
) -> Result<Arc<dyn ExecutionPlan>> {
    let projection = projection.cloned();
    let make_writer = Arc::new(move || RowWriter::new(columns, projection.as_deref()));
    let scan = BlockingScan::new(name, make_writer, Arc::new(produce), limit)?;
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

#[cfg(test)]
mod halves_test;

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn values<'a>(narrowing: &'a Narrowing, column: &str) -> Option<Vec<&'a str>> {
        narrowing
            .values(column)
            .map(|v| v.iter().map(String::as_str).collect())
    }

    #[test]
    fn queue_messages_narrow_on_queue_message_id_and_state() {
        let filters = [
            col("state").in_list(vec![lit("leased"), lit("ready")], false),
            col("queue").eq(lit("q1")),
            col("consumer").eq(lit("w1")),
        ];
        let narrowing = Narrowing::from_filters(TableId::QueueMessages, &filters);
        assert_eq!(values(&narrowing, "queue"), Some(vec!["q1"]));
        assert_eq!(values(&narrowing, "state"), Some(vec!["leased", "ready"]));
        assert!(narrowing.allows("state", "ready") && !narrowing.allows("state", "delayed"));
        assert!(narrowing.allows("message_id", "anything"));
        assert!(Narrowing::narrows(TableId::QueueMessages, &filters[0]));
        assert!(!Narrowing::narrows(TableId::QueueMessages, &filters[2]));
        let by_name = [lit("q1").eq(col("name"))];
        let narrowing = Narrowing::from_filters(TableId::Queues, &by_name);
        assert_eq!(values(&narrowing, "name"), Some(vec!["q1"]));
        assert!(!Narrowing::narrows(
            TableId::Queues,
            &col("depth").eq(lit(0u64))
        ));
    }

    #[test]
    fn filters_on_one_column_intersect() {
        let filters = [
            col("namespace").in_list(vec![lit("a"), lit("b"), lit("c")], false),
            col("namespace")
                .eq(lit("b"))
                .or(col("namespace").eq(lit("d"))),
            col("identifier").eq(lit("k1")),
        ];
        let narrowing = Narrowing::from_filters(TableId::CacheEntries, &filters);
        assert_eq!(values(&narrowing, "namespace"), Some(vec!["b"]));
        assert_eq!(values(&narrowing, "identifier"), Some(vec!["k1"]));
        assert_eq!(values(&narrowing, "version"), None);
        let disjoint = [col("dest").eq(lit("c2")), col("dest").eq(lit("c3"))];
        let narrowing = Narrowing::from_filters(TableId::Routes, &disjoint);
        assert_eq!(values(&narrowing, "dest"), Some(vec![]));
    }

    #[test]
    fn cache_entries_narrow_on_key_columns_only() {
        let filters = [
            col("tier").eq(lit("memory")),
            col("namespace").eq(lit("users")),
        ];
        assert!(Narrowing::narrows(TableId::CacheEntries, &filters[1]));
        assert!(!Narrowing::narrows(TableId::CacheEntries, &filters[0]));
        assert!(!Narrowing::narrows(
            TableId::CacheEntries,
            &col("namespace").not_eq(lit("users"))
        ));
        assert!(Narrowing::narrows(
            TableId::CacheEntries,
            &col("identifier").eq(lit("u1"))
        ));
    }

    #[test]
    fn events_narrow_on_index_and_kind() {
        let filters = [col("index").gt(lit(3u64)), col("kind").eq(lit("cache_put"))];
        let narrowing = Narrowing::from_filters(TableId::Events, &filters);
        assert_eq!(narrowing.bounds.low, 4);
        assert_eq!(values(&narrowing, "kind"), Some(vec!["cache_put"]));
        assert!(
            filters
                .iter()
                .all(|f| Narrowing::narrows(TableId::Events, f))
        );
        assert!(!Narrowing::narrows(
            TableId::Events,
            &col("term").eq(lit(1u64))
        ));
    }
}
