//! Property tests: apply is deterministic, the incremental digest equals
//! the digest recomputed from scratch, and snapshot + remaining log gives
//! the same views as the whole log, through the real RocksDB state machine.

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::credential::Permissions;
use crate::db::{DataDir, OpenMode};
use crate::event::{
    AtomicOp, CacheKey, Delivery, Event, EventKind, NewMessage, QueueSettings, QueueType,
};
use crate::federation::{
    CatalogAd, CatalogSummary, Damping, KeyAd, LearnedRoute, RemoteFunction, RouteKey, RouteMetrics,
};
use crate::replay::MemViews;
use crate::views::{Digest, ViewTxn, apply};
use crate::{StateMachine, TypeConfig, open_raft_storage};

fn id(prefix: &'static str) -> impl Strategy<Value = String> {
    (0u8..4).prop_map(move |n| format!("{prefix}{n}"))
}

/// Node, function, subscription and route events.
fn registry_event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        (id("n"), id("c"), proptest::collection::vec(id("r"), 0..3)).prop_map(
            |(node_id, cluster_id, resources)| {
                EventKind::NodeJoined {
                    node_id,
                    cluster_id,
                    addresses: vec!["ws://127.0.0.1:1".into()],
                    resources,
                }
            }
        ),
        id("n").prop_map(|node_id| EventKind::NodeLeft { node_id }),
        (id("f"), id("id"), id("1.0."), id("p")).prop_map(
            |(name, function_id, version, provider)| {
                EventKind::FunctionRegistered {
                    name,
                    function_id,
                    version,
                    resources: vec![],
                    provider,
                    node_id: "n0".into(),
                    cluster_id: "c0".into(),
                }
            }
        ),
        (id("f"), id("1.0."), id("p")).prop_map(|(name, version, provider)| {
            EventKind::FunctionWithdrawn {
                name,
                version,
                provider,
            }
        }),
        (
            id("s"),
            proptest::collection::vec(id("t."), 1..3),
            any::<bool>()
        )
            .prop_map(|(subscription_id, patterns, durable)| {
                EventKind::SubscriptionAdded {
                    subscription_id,
                    patterns,
                    subscriber: "client".into(),
                    node_id: "n0".into(),
                    durable,
                }
            }),
        id("s").prop_map(|subscription_id| EventKind::SubscriptionRemoved { subscription_id }),
        (id("c"), id("c"), 0u32..10, proptest::option::of(0u64..1000)).prop_map(
            |(dest, advertiser, cost, expires_at_ms)| EventKind::RouteAnnounced {
                dest: dest.clone(),
                next_hop: advertiser.clone(),
                path: vec![advertiser.clone(), dest],
                cost,
                advertiser,
                expires_at_ms,
            }
        ),
        (id("c"), id("c"))
            .prop_map(|(dest, advertiser)| EventKind::RouteWithdrawn { dest, advertiser }),
    ]
}

/// Two queues that events name, and `q2`, only ever a dead-letter queue
/// (declared with its source).
fn queue_name() -> impl Strategy<Value = String> {
    (0u8..2).prop_map(|n| format!("q{n}"))
}

/// Consumers of queue leases.
fn consumer() -> impl Strategy<Value = String> {
    (0u8..2).prop_map(|n| format!("c{n}"))
}

fn queue_settings() -> impl Strategy<Value = QueueSettings> {
    (
        prop_oneof![
            Just(QueueType::Fifo),
            Just(QueueType::Priority),
            Just(QueueType::Delay)
        ],
        prop_oneof![1 => Just(0u64), 9 => 1u64..6],
        proptest::option::of(0u64..5_000),
        0u32..3,
        proptest::option::of(prop_oneof![
            3 => Just("q2"),
            1 => Just("q0"),
            1 => Just("q1")
        ]),
        proptest::option::of(0u64..5_000),
    )
        .prop_map(
            |(queue_type, max_size, message_ttl_ms, max_retries, dead_letter_queue, dedup)| {
                QueueSettings {
                    queue_type,
                    max_size,
                    visibility_timeout_ms: 1_000,
                    ack_timeout_ms: 1_000,
                    message_ttl_ms,
                    max_retries,
                    dead_letter_queue: dead_letter_queue.map(String::from),
                    dedup_window_ms: dedup,
                }
            },
        )
}

fn new_message() -> impl Strategy<Value = NewMessage> {
    (
        id("m"),
        any::<bool>(),
        id("t."),
        any::<u8>(),
        prop_oneof![3 => Just(0u64), 1 => 1u64..5_000],
        proptest::option::of(0u64..5_000),
        prop_oneof![
            Just(Delivery::AtLeastOnce),
            Just(Delivery::AtMostOnce),
            Just(Delivery::Broadcast)
        ],
    )
        .prop_map(
            |(message_id, client_id, topic, priority, delay_ms, ttl_ms, delivery)| NewMessage {
                payload: format!("\"{message_id}\""),
                message_id,
                client_id,
                topic,
                priority,
                delay_ms,
                ttl_ms,
                delivery,
            },
        )
}

/// Queue events over a few queues, ids and consumers, so they meet.
fn queue_event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        4 => (queue_name(), queue_settings())
            .prop_map(|(name, settings)| EventKind::QueueDeclared { name, settings }),
        1 => queue_name().prop_map(|name| EventKind::QueueDeleted { name }),
        1 => queue_name().prop_map(|name| EventKind::QueuePurged { name }),
        1 => (queue_name(), 0u64..6, proptest::option::of(0u64..8), 0u32..4).prop_map(
            |(name, from_seq, below_seq, limit)| EventKind::QueueTrimmed {
                name,
                from_seq,
                below_seq,
                limit,
            }
        ),
        1 => (queue_name(), 0u64..6, prop_oneof![Just(""), Just("m1")], 0u32..4).prop_map(
            |(name, from_seq, from_id, limit)| EventKind::QueueDeleteStep {
                name,
                from_seq,
                from_id: from_id.to_string(),
                limit,
            }
        ),
        6 => (queue_name(), proptest::collection::vec(new_message(), 0..4))
            .prop_map(|(queue, messages)| EventKind::MessagesSent { queue, messages }),
        4 => (
            queue_name(),
            consumer(),
            0u32..4,
            0u64..5_000,
            proptest::option::of(prop_oneof![Just("t.*"), Just("#"), Just("t.1")]),
        )
            .prop_map(|(queue, consumer, max, lease_ms, pattern)| {
                EventKind::MessagesLeased {
                    queue,
                    consumer,
                    max,
                    lease_ms,
                    topic_pattern: pattern.map(String::from),
                }
            }),
        3 => (queue_name(), id("m"), consumer()).prop_map(|(queue, message_id, consumer)| {
            EventKind::MessageAcked {
                queue,
                message_id,
                consumer,
            }
        }),
        2 => (queue_name(), id("m"), consumer(), 0u64..5_000).prop_map(
            |(queue, message_id, consumer, delay_ms)| EventKind::MessageNacked {
                queue,
                message_id,
                consumer,
                delay_ms,
            }
        ),
        1 => (queue_name(), consumer(), proptest::collection::vec(id("m"), 0..3)).prop_map(
            |(queue, consumer, message_ids)| EventKind::LeasesReleased {
                queue,
                consumer,
                message_ids,
            }
        ),
        3 => (0u32..5).prop_map(|max| EventKind::TimersFired { max }),
    ]
}

/// A cache key over two namespaces, a few dotted identifiers and an
/// optional version, so puts, atomics and invalidations meet.
fn cache_key() -> impl Strategy<Value = CacheKey> {
    (
        (0u8..2).prop_map(|n| format!("ns{n}")),
        prop_oneof![Just("a"), Just("a.b"), Just("b.c")],
        prop_oneof![Just(""), Just("v1")],
    )
        .prop_map(|(namespace, identifier, version)| CacheKey {
            namespace,
            identifier: identifier.to_string(),
            version: version.to_string(),
        })
}

/// JSON texts of every kind an atomic operation meets (and one malformed).
fn cache_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1"),
        Just("-2.5"),
        Just("9223372036854775807"),
        Just("18446744073709551615"),
        Just("\"s\""),
        Just("[1, \"x\"]"),
        Just("{\"k\": null}"),
        Just("{"),
    ]
    .prop_map(String::from)
}

/// Cache events: put, delete, invalidate and every atomic operation, with
/// TTLs that run out between events (their timers fire through
/// `TimersFired`).
fn cache_event_kind() -> impl Strategy<Value = EventKind> {
    let ttl = || proptest::option::of(0u64..5_000);
    let operation = prop_oneof![
        (proptest::option::of(cache_value()), cache_value(), ttl()).prop_map(
            |(expected, new_value, ttl_ms)| AtomicOp::CompareAndSwap {
                expected,
                new_value,
                ttl_ms,
            }
        ),
        (cache_value(), prop_oneof![Just("0"), Just("1.5")], ttl()).prop_map(
            |(by, initial, ttl_ms)| AtomicOp::Increment {
                by,
                initial: initial.to_string(),
                ttl_ms,
            }
        ),
        (cache_value(), any::<bool>(), ttl()).prop_map(|(value, prepend, ttl_ms)| {
            AtomicOp::Append {
                value,
                prepend,
                ttl_ms,
            }
        }),
        (0u64..5_000).prop_map(|ttl_ms| AtomicOp::ExtendTtl { ttl_ms }),
    ];
    prop_oneof![
        4 => (cache_key(), cache_value(), proptest::collection::vec(id("tag"), 0..2), ttl())
            .prop_map(|(key, value, tags, ttl_ms)| EventKind::CachePut {
                key,
                metadata: format!("{{\"tags\":{}}}", tags.len()),
                value,
                tags,
                ttl_ms,
            }),
        1 => cache_key().prop_map(|key| EventKind::CacheDeleted { key }),
        1 => (
            (0u8..2).prop_map(|n| format!("ns{n}")),
            proptest::option::of(prop_oneof![Just("a.*"), Just("#"), Just("*.c"), Just("a")]),
        )
            .prop_map(|(namespace, pattern)| EventKind::CacheInvalidated {
                namespace,
                pattern: pattern.map(String::from),
            }),
        1 => (
            (0u8..2).prop_map(|n| format!("ns{n}")),
            proptest::option::of(prop_oneof![Just("a.*"), Just("#")]),
            prop_oneof![Just(Vec::new()), Just(b"a".to_vec())],
            0u32..3,
        )
            .prop_map(|(namespace, pattern, from, limit)| EventKind::CacheInvalidateStep {
                namespace,
                pattern: pattern.map(String::from),
                from,
                limit,
            }),
        4 => (cache_key(), operation)
            .prop_map(|(key, operation)| EventKind::CacheAtomic { key, operation }),
    ]
}

/// Three cluster names, so federation events meet.
fn cluster() -> impl Strategy<Value = String> {
    (0u8..3).prop_map(|n| format!("k{n}"))
}

/// A route learned through `via`: a path of any shape (apply stores what
/// the leader judged, and must be deterministic whatever it is), metrics
/// that tie often, a few epochs and times so newer and older meet.
fn learned_route(via: String) -> impl Strategy<Value = LearnedRoute> {
    (
        cluster(),
        proptest::collection::vec(cluster(), 0..3),
        (
            0u32..3,
            0u64..3,
            0u32..2,
            prop_oneof![Just(1_000_000u32), Just(500_000)],
            0u32..3,
        ),
        0u64..3,
        prop_oneof![Just(1_000_000u64), Just(1_001_000), Just(999_000)],
        proptest::collection::vec(prop_oneof![Just("gold"), Just("eu")], 0..2),
    )
        .prop_map(
            move |(
                dest,
                middle,
                (hops, latency_ms, bandwidth, reliability, cost),
                epoch,
                at,
                tags,
            )| {
                let mut path = vec!["local".to_string(), via.clone()];
                path.extend(middle);
                path.push(dest.clone());
                LearnedRoute {
                    dest,
                    next_hop: via.clone(),
                    path,
                    metrics: RouteMetrics {
                        hops,
                        latency_us: latency_ms * 1000,
                        bandwidth_mbps: bandwidth * 100,
                        reliability_ppm: reliability,
                        cost,
                    },
                    advertised_at_ms: at,
                    epoch,
                    tags: tags.into_iter().map(String::from).collect(),
                }
            },
        )
}

/// Federation events over three clusters: links, routes learned (now and
/// then naming a wrong next hop, which apply refuses), refreshed,
/// withdrawn with and without damping, and expired; catalog summaries
/// learned and expired.
fn federation_event_kind() -> impl Strategy<Value = EventKind> {
    let ttl = || prop_oneof![Just(0u64), 1u64..5_000];
    let damping = prop_oneof![
        Just(Damping::default()),
        (0u64..4_000, 0u32..3, 0u64..6_000).prop_map(
            |(hold_down_ms, flap_threshold, flap_window_ms)| Damping {
                hold_down_ms,
                flap_threshold,
                flap_window_ms,
            }
        ),
    ];
    let learned = (cluster(), any::<bool>()).prop_flat_map(|(via, wrong)| {
        let route_via = if wrong { "k9".to_string() } else { via.clone() };
        (
            Just(via),
            proptest::collection::vec(learned_route(route_via), 1..4),
            prop_oneof![Just(0u64), 1u64..5_000],
            1u32..4,
        )
    });
    prop_oneof![
        2 => (cluster(), proptest::collection::vec(Just("ws://127.0.0.1:1".to_string()), 0..2))
            .prop_map(|(cluster_id, urls)| EventKind::FederationLinked { cluster_id, urls }),
        1 => cluster().prop_map(|cluster_id| EventKind::FederationUnlinked { cluster_id }),
        6 => learned.prop_map(|(via, routes, ttl_ms, max_routes)| EventKind::RoutesLearned {
            via,
            routes,
            ttl_ms,
            max_routes,
        }),
        2 => (cluster(), ttl())
            .prop_map(|(via, ttl_ms)| EventKind::RoutesRefreshed { via, ttl_ms }),
        3 => (cluster(), proptest::collection::vec(cluster(), 0..4), damping).prop_map(
            |(via, dests, damping)| EventKind::RoutesWithdrawn {
                via,
                dests,
                damping,
            }
        ),
        2 => proptest::collection::vec((cluster(), cluster()), 0..4)
            .prop_map(|routes| EventKind::RoutesExpired { routes }),
        2 => (cluster(), route_key(), any::<bool>()).prop_map(|(cluster_id, key, primary)| {
            EventKind::RouteKeyAdded {
                cluster_id,
                key,
                primary,
            }
        }),
        1 => (cluster(), key_id(), 0u64..6_000).prop_map(|(cluster_id, key_id, expires_at_ms)| {
            EventKind::RouteKeyRetired {
                cluster_id,
                key_id,
                expires_at_ms,
            }
        }),
        1 => (cluster(), proptest::collection::vec(route_key(), 0..3), key_id()).prop_map(
            |(cluster_id, keys, primary_key_id)| EventKind::RouteKeysLearned {
                keys: KeyAd {
                    cluster_id,
                    keys,
                    primary_key_id,
                },
            }
        ),
        1 => proptest::collection::vec((cluster(), key_id()), 0..3)
            .prop_map(|keys| EventKind::RouteKeysExpired { keys }),
        2 => (cluster(), proptest::collection::vec(catalog_ad(), 0..3), ttl()).prop_map(
            |(via, catalogs, ttl_ms)| EventKind::CatalogsLearned {
                via,
                catalogs,
                ttl_ms,
            }
        ),
        1 => proptest::collection::vec(cluster(), 0..3)
            .prop_map(|clusters| EventKind::CatalogsExpired { clusters }),
    ]
}

/// A catalog summary of one of the clusters: apply keeps the highest
/// epoch per cluster, so few epochs and names cover its cases.
fn catalog_ad() -> impl Strategy<Value = CatalogAd> {
    (
        cluster(),
        0u64..4,
        proptest::collection::vec((0u8..3, 0u8..2), 0..3),
        proptest::collection::vec(0u8..3, 0..2),
    )
        .prop_map(|(cluster_id, epoch, functions, queues)| CatalogAd {
            cluster_id,
            epoch,
            summary: CatalogSummary {
                functions: functions
                    .into_iter()
                    .map(|(name, version)| RemoteFunction {
                        name: format!("f{name}"),
                        function_id: format!("f{name}"),
                        version: format!("1.{version}.0"),
                        resources: Vec::new(),
                    })
                    .collect(),
                topics: vec![format!("t.{epoch}.#")],
                queues: queues.into_iter().map(|q| format!("q{q}")).collect(),
                caches: vec![format!("n{epoch}")],
            },
        })
}

fn key_id() -> impl Strategy<Value = String> {
    (0u8..3).prop_map(|n| format!("route_key_{n}"))
}

/// A route key as an event carries it: apply takes the id and times as
/// they are, so a few ids with varied times cover its cases.
fn route_key() -> impl Strategy<Value = RouteKey> {
    (key_id(), 0u64..6_000, proptest::option::of(0u64..6_000)).prop_map(
        |(key_id, added_at_ms, expires_at_ms)| RouteKey {
            public_key: format!("{key_id}-public"),
            key_id,
            added_at_ms,
            expires_at_ms,
        },
    )
}

/// Credential events over three names and three tokens, so sets meet
/// revoked names, reused tokens and tokens of other names.
fn credential_event_kind() -> impl Strategy<Value = EventKind> {
    let name = || prop_oneof![Just("ops"), Just("app"), Just("bi")].prop_map(String::from);
    let token = prop_oneof![Just("aa11"), Just("bb22"), Just("cc33")].prop_map(String::from);
    let permissions = (any::<bool>(), any::<bool>()).prop_map(|(sql, admin)| Permissions {
        call: vec!["echo".into()],
        sql,
        admin,
        ..Permissions::default()
    });
    prop_oneof![
        3 => (name(), token, permissions).prop_map(|(name, token_sha256, permissions)| {
            EventKind::CredentialSet {
                name,
                token_sha256,
                permissions,
            }
        }),
        1 => name().prop_map(|name| EventKind::CredentialRevoked { name }),
    ]
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        registry_event_kind(),
        queue_event_kind(),
        cache_event_kind(),
        federation_event_kind(),
        credential_event_kind(),
    ]
}

/// Up to two queue declarations (so queue events meet a queue), then random
/// events. Event times move forward by small steps (so delays, leases and
/// TTLs interleave with other events) and sometimes back, as a new leader's
/// clock may be behind the old one's.
fn events() -> impl Strategy<Value = Vec<Event>> {
    let declares = proptest::collection::vec(
        (queue_name(), queue_settings())
            .prop_map(|(name, settings)| EventKind::QueueDeclared { name, settings }),
        0..3,
    );
    let step = prop_oneof![4 => 0i64..3_000, 1 => -5_000i64..0];
    let rest = proptest::collection::vec((step, event_kind()), 1..60);
    (declares, rest).prop_map(|(declares, rest)| {
        let mut time_ms = 1_000_000u64;
        declares
            .into_iter()
            .map(|kind| (0, kind))
            .chain(rest)
            .map(|(step, kind)| {
                time_ms = time_ms.saturating_add_signed(step);
                Event { time_ms, kind }
            })
            .collect()
    })
}

fn mem_apply(events: &[Event]) -> (MemViews, Digest) {
    let mut views = MemViews::default();
    let mut digest = Digest::default();
    for event in events {
        apply(&mut ViewTxn::new(&mut views, &mut digest), event).unwrap();
    }
    (views, digest)
}

pub(crate) fn entries(events: &[Event], first_index: u64) -> Vec<Entry<TypeConfig>> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), first_index + i as u64),
            payload: EntryPayload::Normal(crate::EventBatch {
                events: vec![e.clone()].into(),
            }),
        })
        .collect()
}

/// Writes entries straight into the log family, as an append would.
pub(crate) fn write_log(dir: &DataDir, entries: &[Entry<TypeConfig>]) {
    let db = dir.db();
    let family = crate::db::cf(db, crate::db::CF_LOG).unwrap();
    for entry in entries {
        let value = crate::codec::encode("log entry", entry).unwrap();
        db.put_cf(family, crate::log_store::log_key(entry.log_id.index), value)
            .unwrap();
    }
}

pub(crate) fn open_sm(path: &std::path::Path) -> (DataDir, StateMachine) {
    let dir = DataDir::open(path, OpenMode::ReadWrite).unwrap();
    let (_, sm) = open_raft_storage(&dir, Default::default()).unwrap();
    (dir, sm)
}

/// A state machine on `path` whose log holds `events` from index 1, the
/// first `applied` of them applied.
pub(crate) async fn logged_sm(
    path: &std::path::Path,
    events: &[Event],
    applied: usize,
) -> (DataDir, StateMachine) {
    let (dir, mut sm) = open_sm(path);
    write_log(&dir, &entries(events, 1));
    sm.apply(entries(&events[..applied], 1)).await.unwrap();
    (dir, sm)
}

async fn live_then_snapshot(events: Vec<Event>, split: usize) -> (u128, u128, u128) {
    let split = split.min(events.len());
    let a = tempfile::tempdir().unwrap();
    let (_dir_a, mut full) = logged_sm(a.path(), &events, split).await;
    let mut snapshot = full
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    full.apply(entries(&events[split..], split as u64 + 1))
        .await
        .unwrap();
    let full_digest = full.views().applied().digest;

    let b = tempfile::tempdir().unwrap();
    let (_dir_b, mut restored) = open_sm(b.path());
    let mut bytes = Vec::new();
    snapshot.snapshot.read_to_end(&mut bytes).await.unwrap();
    let mut receiving = restored.begin_receiving_snapshot().await.unwrap();
    receiving.write_all(&bytes).await.unwrap();
    restored
        .install_snapshot(&snapshot.meta, receiving)
        .await
        .unwrap();
    restored
        .apply(entries(&events[split..], split as u64 + 1))
        .await
        .unwrap();
    let restored_digest = restored.views().applied().digest;

    let replayed = crate::replay(a.path()).unwrap();
    let replayed = u128::from_str_radix(&replayed.views_digest, 16).unwrap();
    (full_digest, restored_digest, replayed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn same_events_same_digest(events in events()) {
        let (views_a, digest_a) = mem_apply(&events);
        let (_, digest_b) = mem_apply(&events);
        prop_assert_eq!(digest_a, digest_b);
        prop_assert_eq!(digest_a, views_a.digest());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn snapshot_plus_tail_equals_full_log(events in events(), split in 0usize..60) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (full, restored, replayed) = rt.block_on(live_then_snapshot(events.clone(), split));
        let (_, expected) = mem_apply(&events);
        prop_assert_eq!(full, expected.value());
        prop_assert_eq!(restored, expected.value());
        prop_assert_eq!(replayed, expected.value());
    }
}
