//! The SQL tables: which tables exist ([`TableId`]), the one provider that
//! serves them all ([`InspectTable`]), what a query's filters leave of a
//! table's key space ([`Narrowing`]), and where the rows come from
//! ([`Sources`]). Each table's columns and rows live in a file of its own.
//!
//! Every table is an [`InspectTable`]; a scan reads one RocksDB snapshot
//! (see [`mpreg_storage::inspect`]), so each table in a query is consistent
//! with itself. Tables in one query may be read at different snapshots, and
//! so may the two point reads behind `queues.dlq_depth` and
//! `queues.oldest_age_ms`.
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
use mpreg_storage::views::View;
use mpreg_storage::{Flow, Inspector};
use serde::de::DeserializeOwned;

pub use cache_entries::{CacheTierSource, StoppedCacheTier};
pub use federation_links::{LinkState, LinkStateSource};
pub use peers::PeerRow;
pub use raft::{RaftRow, RaftSource, StoredRaftSource};
pub use route_explain::{NAME as ROUTE_EXPLAIN, RouteExplain};

use crate::columns::{Column, RowWriter, schema};
use crate::pushdown::{Bounds, text_equality};
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

    /// The column whose filters narrow a scan, if any.
    fn key(self) -> Option<&'static str> {
        match self {
            TableId::Functions => Some(functions::KEY),
            TableId::Routes => Some(routes::KEY),
            TableId::Queues => Some(queues::KEY),
            TableId::QueueMessages => Some(queue_messages::KEY),
            TableId::CacheEntries => Some(cache_entries::KEY),
            TableId::Events => Some(events::KEY),
            TableId::Nodes
            | TableId::Subscriptions
            | TableId::FederationLinks
            | TableId::RouteKeys
            | TableId::Raft
            | TableId::Peers
            | TableId::Credentials => None,
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
        let equals = narrowing.equals.as_deref();
        match self.id {
            TableId::Nodes => nodes::produce(inspector, sink),
            TableId::Functions => functions::produce(inspector, equals, sink),
            TableId::Subscriptions => subscriptions::produce(inspector, sink),
            TableId::Routes => routes::produce(inspector, equals, sink),
            TableId::FederationLinks => {
                federation_links::produce(inspector, self.sources.links.get().map(|l| &**l), sink)
            }
            TableId::RouteKeys => route_keys::produce(inspector, sink),
            TableId::Queues => queues::produce(inspector, equals, sink),
            TableId::QueueMessages => queue_messages::produce(inspector, equals, sink),
            TableId::CacheEntries => {
                cache_entries::produce(inspector, self.sources.cache.as_ref(), equals, sink)
            }
            TableId::Events => events::produce(inspector, narrowing.bounds, sink),
            TableId::Raft => raft::produce(self.sources.raft.as_ref(), sink),
            TableId::Peers => peers::produce(self.sources.raft.as_ref(), sink),
            TableId::Credentials => credentials::produce(inspector, sink),
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
