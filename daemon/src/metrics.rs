//! The node's Prometheus metrics: one registry per node (so nodes sharing a
//! process keep their own counts), the metrics of each system, and the
//! `/metrics` text.
//!
//! Names are `mpreg_<system>_<what>_<unit>`; labels are low-cardinality
//! only (outcomes, error kinds, registered function names), never a request
//! id, a topic or a client; queue gauges carry the queue name (queues are
//! declared by operators, like function names). Raft positions, subscription counts and process
//! figures are read when scraped; everything else is counted where it
//! happens. The list with meanings is docs/metrics.md.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mpreg_storage::StorageMetrics;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Latency buckets, 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// `kind` values of `mpreg_transport_frame_errors_total`.
pub const FRAME_ERROR_KINDS: [&str; 4] = ["too_large", "malformed", "unknown_role", "busy"];

/// `outcome` values of `mpreg_rpc_requests_total`.
pub const RPC_REQUEST_OUTCOMES: [&str; 4] = ["ok", "error", "timeout", "refused"];

/// `outcome` values of `mpreg_sql_queries_total`.
pub const SQL_OUTCOMES: [&str; 8] = [
    "ok",
    "invalid",
    "refused",
    "timeout",
    "memory_limit",
    "row_limit",
    "busy",
    "internal",
];

/// Dependency levels per RPC request.
const LEVEL_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0];

fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    metric: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    register(registry, IntCounter::new(name, help)?)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    register(registry, IntGauge::new(name, help)?)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> prometheus::Result<Histogram> {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?,
    )
}

/// Client + peer connections and frames.
#[derive(Clone)]
pub struct TransportMetrics {
    pub connections_open: IntGauge,
    pub connections_accepted: IntCounter,
    pub connections_closed: IntCounter,
    pub frames_received: IntCounter,
    pub frames_sent: IntCounter,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    /// By `kind`: `too_large`, `malformed`, `unknown_role`, `busy`.
    pub frame_errors: IntCounterVec,
    /// Frames waiting in outbound queues, summed over connections.
    pub outbound_queue_frames: IntGauge,
    /// Peers refused at the handshake, by [`PEER_AUTH_REFUSALS`].
    pub peer_auth_refusals: IntCounterVec,
    /// Clients and admin requests refused, by [`CLIENT_AUTH_REFUSALS`].
    pub client_auth_refusals: IntCounterVec,
}

/// Reasons of `mpreg_client_auth_refusals_total` (the auth module's refusals).
pub const CLIENT_AUTH_REFUSALS: [&str; 4] = ["missing_token", "unknown_token", "revoked", "denied"];

/// Reasons of `mpreg_peer_auth_refusals_total`.
pub const PEER_AUTH_REFUSALS: [&str; 6] = [
    "no_proof",
    "bad_proof",
    "certificate",
    "malformed",
    "timeout",
    "closed",
];

impl TransportMetrics {
    fn new(r: &Registry) -> prometheus::Result<Self> {
        Ok(TransportMetrics {
            connections_open: gauge(
                r,
                "mpreg_transport_connections_open",
                "Client and peer connections open.",
            )?,
            connections_accepted: counter(
                r,
                "mpreg_transport_connections_accepted_total",
                "Connections accepted.",
            )?,
            connections_closed: counter(
                r,
                "mpreg_transport_connections_closed_total",
                "Connections closed, for any reason.",
            )?,
            frames_received: counter(
                r,
                "mpreg_transport_frames_received_total",
                "Text and binary frames received.",
            )?,
            frames_sent: counter(
                r,
                "mpreg_transport_frames_sent_total",
                "Frames sent (pings excluded).",
            )?,
            bytes_received: counter(
                r,
                "mpreg_transport_received_bytes_total",
                "Payload bytes of the frames received.",
            )?,
            bytes_sent: counter(
                r,
                "mpreg_transport_sent_bytes_total",
                "Payload bytes of the frames sent.",
            )?,
            frame_errors: counter_vec(
                r,
                "mpreg_transport_frame_errors_total",
                "Frames refused, by kind: too_large, malformed, unknown_role, busy.",
                &["kind"],
            )?,
            outbound_queue_frames: gauge(
                r,
                "mpreg_transport_outbound_queue_frames",
                "Frames waiting in connections' outbound queues, summed (sampled as each writer sends).",
            )?,
            peer_auth_refusals: counter_vec(
                r,
                "mpreg_peer_auth_refusals_total",
                "Peer connections refused at the handshake, by reason: no_proof, bad_proof, certificate, malformed, timeout, closed.",
                &["reason"],
            )?,
            client_auth_refusals: counter_vec(
                r,
                "mpreg_client_auth_refusals_total",
                "Client upgrades, requests and admin requests refused for their credential, by reason: missing_token, unknown_token, revoked, denied.",
                &["reason"],
            )?,
        })
    }
}

/// The RPC engine.
#[derive(Clone)]
pub struct RpcMetrics {
    /// By `function` (a registered name) and `outcome` (`ok`, `error`).
    pub calls: IntCounterVec,
    /// By `outcome`: `ok`, `error`, `timeout`, `refused`.
    pub requests: IntCounterVec,
    pub request_seconds: Histogram,
    pub requests_in_flight: IntGauge,
    /// Calls sent to this node's workers, not yet answered.
    pub worker_calls_in_flight: IntGauge,
    pub request_levels: Histogram,
    /// Bounds the `function` label of `calls`.
    pub functions: Arc<LabelCap>,
    /// Calls across clusters, by `role`: `sent` (from here), `relayed`
    /// (carried on toward another cluster), `served` (run here).
    pub federated_calls: IntCounterVec,
}

impl RpcMetrics {
    fn new(r: &Registry, max_label_values: usize) -> prometheus::Result<Self> {
        Ok(RpcMetrics {
            functions: Arc::new(LabelCap::new(max_label_values)),
            calls: counter_vec(
                r,
                "mpreg_rpc_calls_total",
                "Function calls run, by function and outcome (ok, error).",
                &["function", "outcome"],
            )?,
            federated_calls: counter_vec(
                r,
                "mpreg_rpc_federated_calls_total",
                "Calls across clusters, by role (sent, relayed, served).",
                &["role"],
            )?,
            requests: counter_vec(
                r,
                "mpreg_rpc_requests_total",
                "RPC requests answered, by outcome (ok, error, timeout, refused).",
                &["outcome"],
            )?,
            request_seconds: histogram(
                r,
                "mpreg_rpc_request_seconds",
                "Time to answer one RPC request, all its commands.",
                LATENCY_BUCKETS,
            )?,
            requests_in_flight: gauge(
                r,
                "mpreg_rpc_requests_in_flight",
                "RPC requests being answered.",
            )?,
            worker_calls_in_flight: gauge(
                r,
                "mpreg_rpc_worker_calls_in_flight",
                "Calls sent to workers connected to this node, waiting for their answer (forwarded calls are dropped at their caller's deadline).",
            )?,
            request_levels: histogram(
                r,
                "mpreg_rpc_request_levels",
                "Dependency levels per RPC request.",
                LEVEL_BUCKETS,
            )?,
        })
    }
}

/// Pub/sub.
#[derive(Clone)]
pub struct PubSubMetrics {
    pub published: IntCounter,
    pub delivered: IntCounter,
    /// Messages discarded because a subscriber was too slow.
    pub dropped: IntCounter,
    pub subscriptions: IntGauge,
    pub backlog_bytes: IntGauge,
    /// Publishes exchanged with other members, by [`FORWARD_OUTCOMES`].
    pub forwarded: IntCounterVec,
    /// Messages exchanged with other clusters, by [`FEDERATED_OUTCOMES`].
    pub federated: IntCounterVec,
}

/// Outcomes of `mpreg_pubsub_messages_federated_total`: sent to a cluster
/// with a matching subscription (and accepted), failed to reach it,
/// dropped because its outbox was full, relayed toward another cluster,
/// received from another cluster.
pub const FEDERATED_OUTCOMES: [&str; 5] = ["sent", "failed", "dropped", "relayed", "received"];

/// Outcomes of `mpreg_pubsub_messages_forwarded_total`: sent to a member
/// (and accepted), failed to reach it, received from one.
pub const FORWARD_OUTCOMES: [&str; 3] = ["sent", "failed", "received"];

impl PubSubMetrics {
    fn new(r: &Registry) -> prometheus::Result<Self> {
        let forwarded = counter_vec(
            r,
            "mpreg_pubsub_messages_forwarded_total",
            "Publishes sent to other members with matching subscribers (sent, failed) or received from them.",
            &["outcome"],
        )?;
        for outcome in FORWARD_OUTCOMES {
            forwarded.with_label_values(&[outcome]);
        }
        let federated = counter_vec(
            r,
            "mpreg_pubsub_messages_federated_total",
            "Messages carried to other clusters with matching subscriptions (sent, failed, dropped), relayed, or received from them.",
            &["outcome"],
        )?;
        for outcome in FEDERATED_OUTCOMES {
            federated.with_label_values(&[outcome]);
        }
        Ok(PubSubMetrics {
            forwarded,
            federated,
            published: counter(
                r,
                "mpreg_pubsub_messages_published_total",
                "Messages published by clients of this node.",
            )?,
            delivered: counter(
                r,
                "mpreg_pubsub_messages_delivered_total",
                "Notifications sent to subscribers.",
            )?,
            dropped: counter(
                r,
                "mpreg_pubsub_messages_dropped_total",
                "Messages discarded for slow subscribers (drop_oldest, or the buffer of a disconnected one).",
            )?,
            subscriptions: gauge(
                r,
                "mpreg_pubsub_subscriptions",
                "Subscriptions on this node.",
            )?,
            backlog_bytes: gauge(
                r,
                "mpreg_pubsub_backlog_bytes",
                "Bytes held in the replay backlog.",
            )?,
        })
    }
}

/// Durable queues.
#[derive(Clone)]
pub struct QueueMetrics {
    pub enqueued: IntCounter,
    /// Sends refused as duplicates of a message id.
    pub duplicates: IntCounter,
    pub delivered: IntCounter,
    /// Deliveries of a message delivered before.
    pub redelivered: IntCounter,
    pub acked: IntCounter,
    pub nacked: IntCounter,
    pub dead_lettered: IntCounter,
    pub lease_expiries: IntCounter,
    /// Messages removed because their TTL ran out.
    pub expired: IntCounter,
    /// From send to ack.
    pub end_to_end_seconds: Histogram,
    /// By `queue`, refreshed when metrics are read.
    pub depth: IntGaugeVec,
    pub in_flight: IntGaugeVec,
}

impl QueueMetrics {
    fn new(r: &Registry) -> prometheus::Result<Self> {
        let by_queue = |name: &str, help: &str| {
            register(r, IntGaugeVec::new(Opts::new(name, help), &["queue"])?)
        };
        Ok(QueueMetrics {
            enqueued: counter(
                r,
                "mpreg_queue_messages_enqueued_total",
                "Messages added to queues.",
            )?,
            duplicates: counter(
                r,
                "mpreg_queue_messages_duplicate_total",
                "Sends refused as duplicates of a message id in the queue or its dedup window.",
            )?,
            delivered: counter(
                r,
                "mpreg_queue_messages_delivered_total",
                "Messages leased (or handed over, at-most-once) to consumers.",
            )?,
            redelivered: counter(
                r,
                "mpreg_queue_messages_redelivered_total",
                "Deliveries of messages that were delivered before.",
            )?,
            acked: counter(
                r,
                "mpreg_queue_messages_acked_total",
                "Messages acknowledged.",
            )?,
            nacked: counter(
                r,
                "mpreg_queue_messages_nacked_total",
                "Messages given back by consumers (nack, disconnect releases count separately).",
            )?,
            dead_lettered: counter(
                r,
                "mpreg_queue_messages_dead_lettered_total",
                "Messages out of retries, moved to a dead-letter queue or dropped.",
            )?,
            lease_expiries: counter(
                r,
                "mpreg_queue_lease_expiries_total",
                "Leases that ran out before an ack.",
            )?,
            expired: counter(
                r,
                "mpreg_queue_messages_expired_total",
                "Messages removed when their TTL ran out.",
            )?,
            end_to_end_seconds: histogram(
                r,
                "mpreg_queue_end_to_end_seconds",
                "Time from send to ack of a message.",
                &[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
                ],
            )?,
            depth: by_queue(
                "mpreg_queue_depth",
                "Messages waiting in a queue (ready and delayed).",
            )?,
            in_flight: by_queue(
                "mpreg_queue_in_flight",
                "Messages of a queue leased to consumers.",
            )?,
        })
    }
}

/// The `level` label values of cache hits.
pub const CACHE_LEVELS: [&str; 2] = ["L1", "L2"];
/// The `operation` label values of cache writes.
pub const CACHE_WRITES: [&str; 4] = ["put", "delete", "invalidate", "atomic"];

/// The replicated cache.
#[derive(Clone)]
pub struct CacheMetrics {
    /// By `level`: `L1` (memory tier) or `L2` (RocksDB view).
    pub hits: IntCounterVec,
    pub misses: IntCounter,
    /// Committed writes by `operation`.
    pub writes: IntCounterVec,
    /// Entries dropped from the memory tier (still in RocksDB).
    pub evictions: IntCounter,
    pub memory_bytes: IntGauge,
    pub memory_entries: IntGauge,
}

impl CacheMetrics {
    fn new(r: &Registry) -> prometheus::Result<Self> {
        let metrics = CacheMetrics {
            hits: counter_vec(
                r,
                "mpreg_cache_hits_total",
                "Cache reads that found a live entry, by level (L1 memory, L2 RocksDB).",
                &["level"],
            )?,
            misses: counter(
                r,
                "mpreg_cache_misses_total",
                "Cache reads that found no live entry.",
            )?,
            writes: counter_vec(
                r,
                "mpreg_cache_writes_total",
                "Committed cache writes by operation.",
                &["operation"],
            )?,
            evictions: counter(
                r,
                "mpreg_cache_evictions_total",
                "Entries dropped from the memory tier (they stay in RocksDB).",
            )?,
            memory_bytes: gauge(
                r,
                "mpreg_cache_memory_bytes",
                "Bytes held by the cache memory tier.",
            )?,
            memory_entries: gauge(
                r,
                "mpreg_cache_memory_entries",
                "Entries held by the cache memory tier.",
            )?,
        };
        for level in CACHE_LEVELS {
            metrics.hits.with_label_values(&[level]);
        }
        for operation in CACHE_WRITES {
            metrics.writes.with_label_values(&[operation]);
        }
        Ok(metrics)
    }
}

/// SQL queries.
#[derive(Clone)]
pub struct SqlMetrics {
    /// By `outcome`: `ok` or the error kind (`invalid`, `refused`, ...).
    pub queries: IntCounterVec,
    pub query_seconds: Histogram,
    pub rows_returned: IntCounter,
}

impl SqlMetrics {
    fn new(r: &Registry) -> prometheus::Result<Self> {
        Ok(SqlMetrics {
            queries: counter_vec(
                r,
                "mpreg_sql_queries_total",
                "SQL queries, by outcome (ok, invalid, refused, timeout, memory_limit, row_limit, internal).",
                &["outcome"],
            )?,
            query_seconds: histogram(
                r,
                "mpreg_sql_query_seconds",
                "Time to run one SQL query.",
                LATENCY_BUCKETS,
            )?,
            rows_returned: counter(
                r,
                "mpreg_sql_rows_returned_total",
                "Rows returned by SQL queries.",
            )?,
        })
    }
}

/// `outcome` values of `mpreg_federation_announcements_total`.
pub const ANNOUNCEMENT_OUTCOMES: [&str; 3] = ["accepted", "unchanged", "rejected"];

/// Federation: links to neighbour clusters and route control.
#[derive(Clone)]
pub struct FederationMetrics {
    /// Links this node's cluster has up (0 on followers: the leader speaks).
    pub links_up: IntGauge,
    /// Links that answer nothing (0 on followers).
    pub links_down: IntGauge,
    /// Destinations learned once that have no usable route now.
    pub unreachable_destinations: IntGauge,
    /// Route announcements received, by `outcome`.
    pub announcements: IntCounterVec,
    /// Refused announcements, by `reason`.
    pub rejections: IntCounterVec,
    /// Routes withdrawn (by a neighbour, or with a lost link).
    pub withdrawals: IntCounter,
    /// Routes by `state`.
    pub routes: IntGaugeVec,
    /// Seconds since the route table last changed.
    pub seconds_since_route_change: IntGauge,
}

impl FederationMetrics {
    fn new(r: &Registry) -> prometheus::Result<Self> {
        let metrics = FederationMetrics {
            links_up: gauge(
                r,
                "mpreg_federation_links_up",
                "Links to neighbour clusters that answer (counted on the leader).",
            )?,
            links_down: gauge(
                r,
                "mpreg_federation_links_down",
                "Links to neighbour clusters that answer nothing (counted on the leader).",
            )?,
            unreachable_destinations: gauge(
                r,
                "mpreg_federation_unreachable_destinations",
                "Destination clusters with routes held but none usable (all expired or withdrawn).",
            )?,
            announcements: counter_vec(
                r,
                "mpreg_federation_announcements_total",
                "Route announcements received from neighbours, by outcome (accepted, unchanged, rejected).",
                &["outcome"],
            )?,
            rejections: counter_vec(
                r,
                "mpreg_federation_rejections_total",
                "Route announcements refused, by reason.",
                &["reason"],
            )?,
            withdrawals: counter(
                r,
                "mpreg_federation_withdrawals_total",
                "Routes withdrawn, by a neighbour or with a lost link.",
            )?,
            routes: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "mpreg_federation_routes",
                        "Routes to other clusters, by state (active, backup, expired, held_down, suppressed).",
                    ),
                    &["state"],
                )?,
            )?,
            seconds_since_route_change: gauge(
                r,
                "mpreg_federation_seconds_since_route_change",
                "Seconds since this node's route table last changed (convergence).",
            )?,
        };
        for outcome in ANNOUNCEMENT_OUTCOMES {
            metrics.announcements.with_label_values(&[outcome]);
        }
        for reason in mpreg_storage::federation::Reject::ALL {
            metrics.rejections.with_label_values(&[reason.as_str()]);
        }
        for state in mpreg_storage::federation::ROUTE_STATES {
            metrics.routes.with_label_values(&[state]);
        }
        Ok(metrics)
    }
}

/// Raft positions, read when scraped.
/// Raft figures, read from the node when metrics are scraped.
pub struct RaftGauges {
    pub term: IntGauge,
    pub is_leader: IntGauge,
    pub last_log_index: IntGauge,
    pub commit_index: IntGauge,
    pub last_applied_index: IntGauge,
    pub apply_lag: IntGauge,
    pub log_bytes: IntGauge,
    pub has_leader: IntGauge,
    pub voters: IntGauge,
    pub peer_lag: IntGaugeVec,
    pub peer_contact_age: IntGaugeVec,
}

impl RaftGauges {
    fn new(r: &Registry) -> prometheus::Result<Self> {
        Ok(RaftGauges {
            term: gauge(r, "mpreg_raft_term", "Current raft term.")?,
            is_leader: gauge(
                r,
                "mpreg_raft_is_leader",
                "1 when this node is the raft leader.",
            )?,
            last_log_index: gauge(
                r,
                "mpreg_raft_last_log_index",
                "Index of the last entry in the log.",
            )?,
            commit_index: gauge(
                r,
                "mpreg_raft_commit_index",
                "Highest index known committed.",
            )?,
            last_applied_index: gauge(
                r,
                "mpreg_raft_last_applied_index",
                "Highest index applied to the views.",
            )?,
            apply_lag: gauge(
                r,
                "mpreg_raft_apply_lag_entries",
                "Committed entries not yet applied.",
            )?,
            log_bytes: gauge(
                r,
                "mpreg_storage_log_bytes",
                "Bytes of the raft log in RocksDB (SST files and memtables).",
            )?,
            has_leader: gauge(
                r,
                "mpreg_raft_has_leader",
                "1 when this node knows a leader that can commit (as /health).",
            )?,
            voters: gauge(r, "mpreg_raft_voters", "Voting members of the cluster.")?,
            peer_lag: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "mpreg_raft_peer_lag_entries",
                        "Entries each member is behind the leader's log (on the leader).",
                    ),
                    &["peer"],
                )?,
            )?,
            peer_contact_age: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "mpreg_fabric_peer_last_contact_age_ms",
                        "Milliseconds since each member last answered this node.",
                    ),
                    &["peer"],
                )?,
            )?,
        })
    }
}

/// The label value that stands for every value past a [`LabelCap`].
pub const OTHER_LABEL: &str = "_other";

/// Bounds the distinct values of a label taken from user input: the first
/// `max` values seen keep their own series, later ones share
/// [`OTHER_LABEL`], so no client can grow the registry without end.
pub struct LabelCap {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        LabelCap {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// `value` while it has (or gets) its own series, else [`OTHER_LABEL`].
    pub fn admit<'a>(&self, value: &'a str) -> &'a str {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) || (seen.len() < self.max && seen.insert(value.to_string())) {
            value
        } else {
            OTHER_LABEL
        }
    }
}

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    /// Queues with their own depth and in-flight series
    /// (`metrics_max_label_values`); the rest are summed under `_other`.
    pub max_queue_labels: usize,
    pub storage: Arc<StorageMetrics>,
    pub transport: TransportMetrics,
    pub rpc: RpcMetrics,
    pub pubsub: PubSubMetrics,
    pub queue: QueueMetrics,
    pub cache: CacheMetrics,
    pub sql: SqlMetrics,
    pub federation: FederationMetrics,
    pub raft: RaftGauges,
    uptime: Gauge,
    started: Instant,
}

impl Metrics {
    /// A registry with every metric of a node, process metrics and build info.
    /// `max_label_values` bounds labels taken from user input (see
    /// [`LabelCap`]).
    pub fn new(max_label_values: usize) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let storage = Arc::new(StorageMetrics::default());
        storage.register(&registry)?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "mpreg_build_info",
                    "Version and git commit of this binary; always 1.",
                ),
                &["version", "git_sha"],
            )?,
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("MPREG_GIT_SHA")])
            .set(1);
        let transport = TransportMetrics::new(&registry)?;
        let rpc = RpcMetrics::new(&registry, max_label_values)?;
        let sql = SqlMetrics::new(&registry)?;
        // Every known label value is exported from the start, so dashboards
        // and alerts see zeros rather than missing series.
        for kind in FRAME_ERROR_KINDS {
            transport.frame_errors.with_label_values(&[kind]);
        }
        for reason in PEER_AUTH_REFUSALS {
            transport.peer_auth_refusals.with_label_values(&[reason]);
        }
        for reason in CLIENT_AUTH_REFUSALS {
            transport.client_auth_refusals.with_label_values(&[reason]);
        }
        for outcome in RPC_REQUEST_OUTCOMES {
            rpc.requests.with_label_values(&[outcome]);
        }
        for outcome in SQL_OUTCOMES {
            sql.queries.with_label_values(&[outcome]);
        }
        Ok(Metrics {
            max_queue_labels: max_label_values,
            transport,
            rpc,
            pubsub: PubSubMetrics::new(&registry)?,
            queue: QueueMetrics::new(&registry)?,
            cache: CacheMetrics::new(&registry)?,
            sql,
            federation: FederationMetrics::new(&registry)?,
            raft: RaftGauges::new(&registry)?,
            uptime: register(
                &registry,
                Gauge::new(
                    "mpreg_process_uptime_seconds",
                    "Seconds since the daemon started.",
                )?,
            )?,
            storage,
            registry,
            started: Instant::now(),
        })
    }

    /// The Prometheus text of every metric (the gauges read at scrape time
    /// are set by the caller first: `admin::metrics::refresh`).
    pub fn render(&self) -> prometheus::Result<String> {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut text = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut text)?;
        String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use mpreg_query::SqlError;

    use super::*;

    #[test]
    fn label_values_past_the_cap_share_other() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.admit("a"), "a");
        assert_eq!(cap.admit("b"), "b");
        assert_eq!(cap.admit("c"), OTHER_LABEL);
        assert_eq!(cap.admit("a"), "a", "an admitted value keeps its series");
        let calls = RpcMetrics::new(&Registry::new(), 3).unwrap();
        for i in 0..1000 {
            let name = format!("f{i}");
            let function = calls.functions.admit(&name);
            calls.calls.with_label_values(&[function, "ok"]).inc();
        }
        assert_eq!(calls.calls.collect()[0].get_metric().len(), 4);
    }

    #[test]
    fn every_known_label_value_is_exported_from_the_start() {
        let metrics = Metrics::new(100).expect("metrics");
        let text = metrics.render().expect("text");
        for kind in FRAME_ERROR_KINDS {
            let series = format!("mpreg_transport_frame_errors_total{{kind=\"{kind}\"}} 0");
            assert!(text.contains(&series), "{series}");
        }
        for outcome in RPC_REQUEST_OUTCOMES {
            let series = format!("mpreg_rpc_requests_total{{outcome=\"{outcome}\"}} 0");
            assert!(text.contains(&series), "{series}");
        }
        let errors = [
            SqlError::Refused(String::new()),
            SqlError::Invalid(String::new()),
            SqlError::Timeout(0),
            SqlError::MemoryLimit {
                limit: 0,
                detail: String::new(),
            },
            SqlError::RowLimit(0),
            SqlError::Busy(0),
            SqlError::Internal(String::new()),
        ];
        for kind in errors.iter().map(SqlError::kind).chain(["ok"]) {
            assert!(SQL_OUTCOMES.contains(&kind), "{kind}");
            let series = format!("mpreg_sql_queries_total{{outcome=\"{kind}\"}} 0");
            assert!(text.contains(&series), "{series}");
        }
    }

    #[test]
    fn nodes_in_one_process_keep_their_own_counts() {
        let a = Metrics::new(100).expect("metrics");
        let b = Metrics::new(100).expect("metrics");
        a.pubsub.published.inc();
        assert_eq!(a.pubsub.published.get(), 1);
        assert_eq!(b.pubsub.published.get(), 0);
    }
}
