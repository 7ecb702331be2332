//! The events that change shared state, and what apply answers for each.
//!
//! An [`Event`] is what a node proposes to the log: an [`EventKind`] plus the
//! time the leader stamped on it; a log entry holds an [`EventBatch`]. Apply reads time only from here, never from
//! a clock. New kinds (queues, cache) are appended at the end of
//! [`EventKind`]: bincode encodes the variant index, so existing logs stay
//! readable; a change that breaks that bumps [`crate::codec::FORMAT_VERSION`].

use serde::{Deserialize, Serialize};

/// One proposed state change, as stored in a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix time in milliseconds, stamped by the leader when proposing.
    pub time_ms: u64,
    /// What changes.
    pub kind: EventKind,
}

/// Every kind of shared-state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A node started serving (or restarted) in a cluster.
    NodeJoined {
        node_id: String,
        cluster_id: String,
        /// Where clients and peers reach the node (`ws://..`, `http://..`).
        addresses: Vec<String>,
        /// Resource tags the node offers (`locs` in RPC requests).
        resources: Vec<String>,
    },
    /// A node left the cluster (clean stop or removal).
    NodeLeft { node_id: String },
    /// A provider started serving a function.
    FunctionRegistered {
        name: String,
        function_id: String,
        /// Semver version of the function.
        version: String,
        resources: Vec<String>,
        /// Who serves it: `builtin` or a worker connection id.
        provider: String,
        node_id: String,
        cluster_id: String,
    },
    /// A provider stopped serving a function version.
    FunctionWithdrawn {
        name: String,
        version: String,
        provider: String,
    },
    /// A topic subscription appeared.
    SubscriptionAdded {
        subscription_id: String,
        patterns: Vec<String>,
        subscriber: String,
        node_id: String,
        /// Durable subscriptions outlive the subscriber's connection.
        durable: bool,
    },
    /// A topic subscription went away.
    SubscriptionRemoved { subscription_id: String },
    /// A cluster learned (or refreshed) a path to `dest`.
    RouteAnnounced {
        dest: String,
        next_hop: String,
        /// Clusters the announcement travelled, nearest first.
        path: Vec<String>,
        cost: u32,
        /// The neighbour that announced it.
        advertiser: String,
        /// When the route expires unless refreshed (unix ms).
        expires_at_ms: Option<u64>,
    },
    /// The advertiser no longer offers a path to `dest`.
    RouteWithdrawn { dest: String, advertiser: String },
}

impl EventKind {
    /// Short snake_case name of the kind, as shown in logs and SQL.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::NodeJoined { .. } => "node_joined",
            EventKind::NodeLeft { .. } => "node_left",
            EventKind::FunctionRegistered { .. } => "function_registered",
            EventKind::FunctionWithdrawn { .. } => "function_withdrawn",
            EventKind::SubscriptionAdded { .. } => "subscription_added",
            EventKind::SubscriptionRemoved { .. } => "subscription_removed",
            EventKind::RouteAnnounced { .. } => "route_announced",
            EventKind::RouteWithdrawn { .. } => "route_withdrawn",
        }
    }
}

/// The payload of one log entry: the events proposed together (group
/// commit), applied in order. openraft 0.9 syncs each entry on its own, so
/// the node batches concurrent proposals into one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    pub events: Vec<Event>,
}

/// What apply decided for one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The event changed the views (or was a no-op that is still valid).
    Applied,
    /// The event was refused deterministically; the views are unchanged.
    Rejected { reason: String },
}
