//! The events that change shared state, and what apply answers for each.
//!
//! An [`Event`] is what a node proposes to the log: an [`EventKind`] plus the
//! time the leader stamped on it; a log entry holds an [`EventBatch`]. Apply
//! reads time only from here, never from a clock. New kinds (queues, cache)
//! are appended at the end of [`EventKind`]: bincode encodes the variant
//! index, so existing logs stay readable; a change that breaks that bumps
//! [`crate::codec::FORMAT_VERSION`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::credential::Permissions;
use crate::federation::{CatalogAd, Damping, KeyAd, LearnedRoute, RouteKey};

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
    /// A queue was declared (again, with the same settings, is a no-op).
    /// Declaring a dead-letter queue that does not exist declares it too.
    QueueDeclared {
        name: String,
        settings: QueueSettings,
    },
    /// A queue and all its messages went away, in one apply. Written by
    /// daemons before bulk steps; the daemon now writes
    /// [`EventKind::QueueTrimmed`] and [`EventKind::QueueDeleteStep`].
    QueueDeleted { name: String },
    /// Every message of a queue went away, in one apply; the queue stays.
    /// Written by daemons before bulk steps; the daemon now writes
    /// [`EventKind::QueueTrimmed`].
    QueuePurged { name: String },
    /// Messages were sent to a queue, in order.
    MessagesSent {
        queue: String,
        messages: Vec<NewMessage>,
    },
    /// `consumer` leased up to `max` ready messages, in delivery order.
    MessagesLeased {
        queue: String,
        consumer: String,
        max: u32,
        /// How long an at-least-once lease lasts before the message is
        /// delivered again.
        lease_ms: u64,
        /// Only messages whose topic matches (AMQP wildcards); `None` = all.
        topic_pattern: Option<String>,
    },
    /// The lease holder processed a message; it goes away.
    MessageAcked {
        queue: String,
        message_id: String,
        consumer: String,
    },
    /// The lease holder gave a message back, to be delivered again after
    /// `delay_ms` (or dead-lettered when out of retries).
    MessageNacked {
        queue: String,
        message_id: String,
        consumer: String,
        delay_ms: u64,
    },
    /// A consumer went away: its leases among `message_ids` end now.
    LeasesReleased {
        queue: String,
        consumer: String,
        message_ids: Vec<String>,
    },
    /// Proposed by the leader when timers are due: up to `max` timers due
    /// at the event's time fire (queue delays end, leases expire, message
    /// TTLs and dedup windows run out, cache entries expire).
    TimersFired { max: u32 },
    /// A cache entry was written (created or replaced).
    CachePut {
        key: CacheKey,
        /// JSON text.
        value: String,
        tags: Vec<String>,
        /// Upstream's `metadata` object (computation cost, dependencies,
        /// ...), as JSON text, kept with the entry.
        metadata: String,
        /// The entry expires this long after the event.
        ttl_ms: Option<u64>,
    },
    /// A cache entry went away (a no-op when it did not exist).
    CacheDeleted { key: CacheKey },
    /// Every entry of `namespace` whose identifier matches `pattern` (AMQP
    /// wildcards over dot-separated levels; `None` = all) went away.
    CacheInvalidated {
        namespace: String,
        pattern: Option<String>,
    },
    /// An atomic read-modify-write of one entry, decided inside apply.
    CacheAtomic { key: CacheKey, operation: AtomicOp },
    /// One bounded step of a purge: up to `limit` messages of `name` whose
    /// seq is in `from_seq..below_seq` go away. `below_seq: None` stands
    /// for the queue's next seq when the step applies, so a purge takes
    /// exactly the messages sent before its first step.
    QueueTrimmed {
        name: String,
        from_seq: u64,
        below_seq: Option<u64>,
        limit: u32,
    },
    /// One bounded step of deleting a queue: up to `limit` of its messages
    /// (seq `from_seq` on), then of its dedup windows (message id `from_id`
    /// on) go away; the queue goes with the last of them.
    QueueDeleteStep {
        name: String,
        from_seq: u64,
        from_id: String,
        limit: u32,
    },
    /// One bounded step of an invalidation: of the first `limit` entries of
    /// `namespace` at or after `from` (the key after the namespace), those
    /// whose identifier matches `pattern` go away.
    CacheInvalidateStep {
        namespace: String,
        pattern: Option<String>,
        from: Vec<u8>,
        limit: u32,
    },
    /// A neighbour cluster was linked, or the URLs of its members changed.
    FederationLinked {
        cluster_id: String,
        urls: Vec<String>,
    },
    /// The link to a neighbour cluster went away, with every route learned
    /// through it and their damping state.
    FederationUnlinked { cluster_id: String },
    /// The leader accepted routes from neighbour `via`: each replaces the
    /// one held from `via` to its destination unless that one is newer, and
    /// expires `ttl_ms` after the event. Per destination the best
    /// `max_routes` candidates stay.
    RoutesLearned {
        via: String,
        routes: Vec<LearnedRoute>,
        ttl_ms: u64,
        max_routes: u32,
    },
    /// `via` announced its routes again, unchanged: each route held from it
    /// now expires `ttl_ms` after the event.
    RoutesRefreshed { via: String, ttl_ms: u64 },
    /// The routes to `dests` through `via` were withdrawn (by `via`, or
    /// because the link to it was lost). Each withdrawal starts hold-down
    /// and counts a flap per `damping`; a route still damped stays, marked
    /// withdrawn, until [`EventKind::RoutesExpired`] removes it.
    RoutesWithdrawn {
        via: String,
        dests: Vec<String>,
        damping: Damping,
    },
    /// Proposed by the leader's timer: of these `(dest, next_hop)` routes,
    /// those expired at the event's time, and withdrawn ones no longer
    /// damped, go.
    RoutesExpired { routes: Vec<(String, String)> },
    /// A member of cluster `cluster_id` (this one) signs with `key`; with
    /// `primary`, it is the leader's and signs the tables now. The key's
    /// `added_at_ms` is the event's time.
    RouteKeyAdded {
        cluster_id: String,
        key: RouteKey,
        primary: bool,
    },
    /// Key `key_id` of `cluster_id` was rotated out: it verifies until
    /// `expires_at_ms`.
    RouteKeyRetired {
        cluster_id: String,
        key_id: String,
        expires_at_ms: u64,
    },
    /// A neighbour announced its keys (under a signature the leader
    /// checked): they replace the ones held for it.
    RouteKeysLearned { keys: KeyAd },
    /// Proposed by the leader's timer: of these `(cluster, key_id)` keys,
    /// those expired at the event's time go.
    RouteKeysExpired { keys: Vec<(String, String)> },
    /// The leader accepted catalog summaries from neighbour `via`: each
    /// replaces the one held for its cluster unless that one has an equal
    /// or higher epoch, and goes `ttl_ms` after the event.
    CatalogsLearned {
        via: String,
        catalogs: Vec<CatalogAd>,
        ttl_ms: u64,
    },
    /// Proposed by the leader's timer: of the summaries of these clusters,
    /// those expired at the event's time go.
    CatalogsExpired { clusters: Vec<String> },
    /// A client presenting the token whose SHA-256 is `token_sha256`
    /// (lowercase hex) is credential `name` and may do what `permissions`
    /// allow; replaces a live credential of that name. A revoked name comes
    /// back only with another token, and one token names one credential.
    CredentialSet {
        name: String,
        token_sha256: String,
        permissions: Permissions,
    },
    /// Credential `name` stops working on every node; its row stays,
    /// marked revoked, so the same token is never set again by mistake.
    CredentialRevoked { name: String },
}

/// A cache key: upstream's namespace + identifier (+ version).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CacheKey {
    pub namespace: String,
    pub identifier: String,
    /// Empty when the key has no version.
    pub version: String,
}

/// The atomic operations on a cache entry. Values are JSON text; apply
/// compares them as JSON values, so formatting does not matter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AtomicOp {
    /// Writes `new_value` only if the current value equals `expected`
    /// (`None`: only if the entry does not exist). Upstream's
    /// `test_and_set` and `compare_and_swap`.
    CompareAndSwap {
        expected: Option<String>,
        new_value: String,
        ttl_ms: Option<u64>,
    },
    /// Adds `by` to a numeric value (`initial` when the entry does not
    /// exist); integers stay integers. Both are JSON numbers (text).
    /// Upstream's `increment`/`decrement`.
    Increment {
        by: String,
        initial: String,
        ttl_ms: Option<u64>,
    },
    /// Appends (or prepends) to a string or list value; creates it when
    /// missing.
    Append {
        value: String,
        prepend: bool,
        ttl_ms: Option<u64>,
    },
    /// Moves the expiry of an existing entry to `ttl_ms` after the event.
    ExtendTtl { ttl_ms: u64 },
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
            EventKind::QueueDeclared { .. } => "queue_declared",
            EventKind::QueueDeleted { .. } => "queue_deleted",
            EventKind::QueuePurged { .. } => "queue_purged",
            EventKind::MessagesSent { .. } => "messages_sent",
            EventKind::MessagesLeased { .. } => "messages_leased",
            EventKind::MessageAcked { .. } => "message_acked",
            EventKind::MessageNacked { .. } => "message_nacked",
            EventKind::LeasesReleased { .. } => "leases_released",
            EventKind::TimersFired { .. } => "timers_fired",
            EventKind::CachePut { .. } => "cache_put",
            EventKind::CacheDeleted { .. } => "cache_deleted",
            EventKind::CacheInvalidated { .. } => "cache_invalidated",
            EventKind::QueueTrimmed { .. } => "queue_trimmed",
            EventKind::QueueDeleteStep { .. } => "queue_delete_step",
            EventKind::CacheInvalidateStep { .. } => "cache_invalidate_step",
            EventKind::CacheAtomic { .. } => "cache_atomic",
            EventKind::FederationLinked { .. } => "federation_linked",
            EventKind::FederationUnlinked { .. } => "federation_unlinked",
            EventKind::RoutesLearned { .. } => "routes_learned",
            EventKind::RoutesRefreshed { .. } => "routes_refreshed",
            EventKind::RoutesWithdrawn { .. } => "routes_withdrawn",
            EventKind::RoutesExpired { .. } => "routes_expired",
            EventKind::RouteKeyAdded { .. } => "route_key_added",
            EventKind::RouteKeyRetired { .. } => "route_key_retired",
            EventKind::RouteKeysLearned { .. } => "route_keys_learned",
            EventKind::RouteKeysExpired { .. } => "route_keys_expired",
            EventKind::CatalogsLearned { .. } => "catalogs_learned",
            EventKind::CatalogsExpired { .. } => "catalogs_expired",
            EventKind::CredentialSet { .. } => "credential_set",
            EventKind::CredentialRevoked { .. } => "credential_revoked",
        }
    }
}

/// Rows one bulk step (`QueueTrimmed`, `QueueDeleteStep`,
/// `CacheInvalidateStep`) removes when the daemon proposes it.
pub const BULK_STEP_ROWS: u32 = 4096;
/// Most rows a bulk step may ask for; a larger limit is refused.
pub const MAX_STEP_ROWS: u32 = 65_536;

/// The payload of one log entry: the events proposed together (group
/// commit), applied in order. openraft 0.9 syncs each entry on its own, so
/// the node batches concurrent proposals into one entry.
///
/// The events are shared, so an entry is cloned without copying them: the
/// log store keeps the entries it appended last and hands raft clones of
/// them to apply and to replicate, instead of decoding them again. On disk
/// it is a plain sequence of events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    #[serde(with = "shared_events")]
    pub events: Arc<Vec<Event>>,
}

/// Shared events (de)serialized as the plain sequence they are on disk.
mod shared_events {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Event;

    pub fn serialize<S: Serializer>(events: &Arc<Vec<Event>>, to: S) -> Result<S::Ok, S::Error> {
        events.as_slice().serialize(to)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(from: D) -> Result<Arc<Vec<Event>>, D::Error> {
        Vec::deserialize(from).map(Arc::new)
    }
}

/// What apply decided for one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The event changed the views (or was a no-op that is still valid).
    Applied,
    /// The event was refused deterministically; the views are unchanged.
    Rejected { reason: String },
    /// `MessagesSent`: one entry per message, in order.
    Sent { messages: Vec<SentMessage> },
    /// `MessagesLeased`: the messages delivered to the consumer.
    Delivered { messages: Vec<DeliveredMessage> },
    /// `MessageAcked`: when the acked message was first enqueued.
    Acked { enqueued_at_ms: u64 },
    /// `MessageNacked`, `LeasesReleased`: where the released messages went.
    Released { requeued: u64, dead_lettered: u64 },
    /// `TimersFired`: what the due timers did.
    TimersFired(FiredTimers),
    /// A cache write: whether it changed the entry (an atomic operation
    /// whose condition failed did not), the entry's value afterwards
    /// (`None`: no entry) and its revision.
    Cache {
        changed: bool,
        value: Option<String>,
        revision: u64,
    },
    /// `CacheInvalidated`: how many entries went away.
    CacheRemoved { entries: u64 },
    /// A bulk step (`QueueTrimmed`, `QueueDeleteStep`,
    /// `CacheInvalidateStep`): how many rows went away (messages and dedup
    /// windows; live entries, for the cache) and the step to propose next
    /// (`None`: done).
    Stepped {
        removed: u64,
        next: Option<Box<EventKind>>,
    },
}

/// How a queue orders its ready messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueType {
    /// In send order; priorities are ignored.
    Fifo,
    /// Highest priority first, then send order.
    Priority,
    /// Like FIFO; meant for messages sent with a delay (every type honours
    /// delays).
    Delay,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Fifo => "fifo",
            QueueType::Priority => "priority",
            QueueType::Delay => "delay",
        }
    }
}

/// The settings a queue is declared with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    pub queue_type: QueueType,
    /// Most messages (ready, delayed and leased) the queue holds.
    pub max_size: u64,
    /// Lease length of a pull `receive`.
    pub visibility_timeout_ms: u64,
    /// Lease length of a pushed (subscribed) delivery.
    pub ack_timeout_ms: u64,
    /// Messages not acked this long after sending go away.
    pub message_ttl_ms: Option<u64>,
    /// Deliveries after the first before a message is dead-lettered.
    pub max_retries: u32,
    /// Where messages out of retries go; `None` drops them.
    pub dead_letter_queue: Option<String>,
    /// How long a client message id keeps refusing duplicates; `None` =
    /// only ids still in the queue are refused.
    pub dedup_window_ms: Option<u64>,
}

/// How a message is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// Leased; delivered again until acked.
    AtLeastOnce,
    /// Removed when delivered (fire and forget).
    AtMostOnce,
    /// Removed when delivered; pushed to every current subscriber.
    Broadcast,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at_least_once",
            Delivery::AtMostOnce => "at_most_once",
            Delivery::Broadcast => "broadcast",
        }
    }
}

/// One message of a `MessagesSent` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub message_id: String,
    /// Whether the client chose the id (only those enter the dedup window).
    pub client_id: bool,
    pub topic: String,
    /// The payload as JSON text.
    pub payload: String,
    /// 0..=255, higher first (priority queues only).
    pub priority: u8,
    pub delay_ms: u64,
    /// Overrides the queue's message TTL.
    pub ttl_ms: Option<u64>,
    pub delivery: Delivery,
}

/// What happened to one sent message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMessage {
    pub message_id: String,
    /// The id was already in the queue or its dedup window: nothing was added.
    pub duplicate: bool,
}

/// A message handed to a consumer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredMessage {
    pub message_id: String,
    pub topic: String,
    pub payload: String,
    pub priority: u8,
    /// Deliveries so far, this one included.
    pub attempts: u32,
    pub delivery: Delivery,
    pub enqueued_at_ms: u64,
    /// When the lease ends (at-least-once only).
    pub lease_deadline_ms: Option<u64>,
}

/// Counts of what one `TimersFired` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiredTimers {
    /// Delayed messages that became ready.
    pub delays_ended: u64,
    /// Leases that ran out (their messages are ready again or dead-lettered).
    pub leases_expired: u64,
    /// Messages whose TTL ran out.
    pub messages_expired: u64,
    /// Messages moved to a dead-letter queue (or dropped without one).
    pub dead_lettered: u64,
    /// Dedup windows that closed.
    pub dedup_ended: u64,
    /// Cache entries whose TTL ran out.
    pub cache_expired: u64,
    /// More timers were already due than `max`.
    pub more_due: bool,
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::codec;

    #[test]
    fn a_batch_is_stored_as_the_plain_sequence_of_its_events() {
        let events = vec![
            Event {
                time_ms: 7,
                kind: EventKind::NodeLeft {
                    node_id: "n1".into(),
                },
            },
            Event {
                time_ms: 7,
                kind: EventKind::TimersFired { max: 3 },
            },
        ];
        let batch = EventBatch {
            events: Arc::new(events.clone()),
        };
        let stored = codec::encode("batch", &batch).unwrap();
        assert_eq!(stored, codec::encode("events", &events).unwrap());
        let read: EventBatch = codec::decode("batch", &stored).unwrap();
        assert_eq!(read, batch);
    }
}
