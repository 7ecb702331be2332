//! Materialized views: the rows that committed events produce.
//!
//! Each [`View`] is one RocksDB column family of versioned rows. `apply`
//! turns one event into row changes through a `ViewTxn`, which keeps the
//! order-independent `Digest` of all rows current. [`Catalog`] is the
//! in-memory index of the rows that routing reads on every call. Only the
//! rows, [`View`] and [`Catalog`] are public; apply is the crate's own.
//!
//! The modules import one way only (each also uses [`View`] and
//! `row_key` from this file):
//!
//! ```text
//! apply       -> timers, cache, queue_apply, federation_apply, txn, rows
//! federation_apply -> txn, federation_rows
//! timers      -> cache, queue_apply, txn, queue_rows
//! cache       -> txn, queue_rows
//! queue_apply -> txn, queue_rows
//! catalog     -> rows
//! txn         -> digest
//! ```
//!
//! - `txn`: `RowStore`, `ViewTxn` and the refusal helpers;
//! - `apply`: the `apply` entry point; node, function, subscription,
//!   route and credential events;
//! - `queue_apply`, `cache`: queue and cache events;
//! - `timers`: `TimersFired`, dispatching each due timer to the queues or
//!   the cache;
//! - `rows`, `queue_rows`: the row types and their keys;
//! - `federation_apply`, `federation_rows`: links to neighbour clusters,
//!   the routes learned through them and their damping, and the catalog
//!   summaries of other clusters;
//! - `catalog`: the in-memory index; `digest`: the digest of all rows.

mod apply;
mod cache;
mod catalog;
mod digest;
mod federation_apply;
mod federation_rows;
mod queue_apply;
mod queue_rows;
mod rows;
mod timers;
mod txn;

pub use cache::CacheRow;
pub use catalog::Catalog;
pub use federation_rows::{CandidateRow, DampingRow, LinkRow, RemoteCatalogRow, keys_key};
pub use queue_rows::{
    DedupRow, MessageRow, MessageState, QueueRow, Timer, TimerKind, queue_prefix,
};
pub use rows::{
    BUILTIN_PROVIDER, CredentialRow, FunctionRow, NodeRow, NodeStatus, RouteRow, SubscriptionRow,
};

pub(crate) use apply::apply;
pub(crate) use digest::Digest;
pub(crate) use txn::{RowStore, ViewTxn};

/// One materialized view; each is stored in its own column family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum View {
    Nodes,
    Functions,
    Subscriptions,
    Routes,
    Queues,
    QueueMessages,
    QueueReady,
    QueueMessageIds,
    QueueDedup,
    QueueTimers,
    CacheEntries,
    FederationLinks,
    RouteCandidates,
    RouteDamping,
    RouteKeys,
    RemoteCatalogs,
    Credentials,
}

impl View {
    /// Every view, in a fixed order (snapshot files and digests rely on it).
    pub(crate) const ALL: [View; 17] = [
        View::Nodes,
        View::Functions,
        View::Subscriptions,
        View::Routes,
        View::Queues,
        View::QueueMessages,
        View::QueueReady,
        View::QueueMessageIds,
        View::QueueDedup,
        View::QueueTimers,
        View::CacheEntries,
        View::FederationLinks,
        View::RouteCandidates,
        View::RouteDamping,
        View::RouteKeys,
        View::RemoteCatalogs,
        View::Credentials,
    ];

    /// Whether the in-memory [`Catalog`] holds this view's rows (queue and
    /// cache views stay on disk only: they may hold millions of rows; the
    /// cache keeps its own bounded memory tier).
    pub(crate) fn in_catalog(self) -> bool {
        matches!(
            self,
            View::Nodes
                | View::Functions
                | View::Subscriptions
                | View::Routes
                | View::FederationLinks
                | View::RouteCandidates
                | View::RouteDamping
                | View::RouteKeys
                | View::RemoteCatalogs
                | View::Credentials
        )
    }

    /// The RocksDB column family holding this view.
    pub fn cf_name(self) -> &'static str {
        match self {
            View::Nodes => "view_nodes",
            View::Functions => "view_functions",
            View::Subscriptions => "view_subscriptions",
            View::Routes => "view_routes",
            View::Queues => "view_queues",
            View::QueueMessages => "view_queue_messages",
            View::QueueReady => "view_queue_ready",
            View::QueueMessageIds => "view_queue_message_ids",
            View::QueueDedup => "view_queue_dedup",
            View::QueueTimers => "view_queue_timers",
            View::CacheEntries => "view_cache_entries",
            View::FederationLinks => "view_federation_links",
            View::RouteCandidates => "view_route_candidates",
            View::RouteDamping => "view_route_damping",
            View::RouteKeys => "view_route_keys",
            View::RemoteCatalogs => "view_remote_catalogs",
            View::Credentials => "view_credentials",
        }
    }

    /// Stable one-byte tag of the view in snapshot files and digests.
    pub(crate) fn tag(self) -> u8 {
        match self {
            View::Nodes => 1,
            View::Functions => 2,
            View::Subscriptions => 3,
            View::Routes => 4,
            View::Queues => 5,
            View::QueueMessages => 6,
            View::QueueReady => 7,
            View::QueueMessageIds => 8,
            View::QueueDedup => 9,
            View::QueueTimers => 10,
            View::CacheEntries => 11,
            View::FederationLinks => 12,
            View::RouteCandidates => 13,
            View::RouteDamping => 14,
            View::RouteKeys => 15,
            View::RemoteCatalogs => 16,
            View::Credentials => 17,
        }
    }

    /// The view with the given tag, if any.
    pub(crate) fn from_tag(tag: u8) -> Option<View> {
        View::ALL.into_iter().find(|v| v.tag() == tag)
    }
}

/// Joins key parts with a NUL separator, so a prefix scan on the first part
/// finds exactly its rows. Apply refuses identifiers that contain NUL.
pub(crate) fn row_key(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}
