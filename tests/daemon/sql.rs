//! SQL over HTTP and offline: every table after known events, the queue
//! tables after sends, leases and a dead-lettering, the cache table with
//! entries in memory and on disk, federation routes, `route_explain` and
//! links after federation events, pushdown in `EXPLAIN`,
//! the three formats, refusals, limits, offline equals live, and queries
//! while writes commit.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mpreg_storage::EventKind;
use mpreg_storage::credential::Permissions;
use mpreg_storage::event::{
    CacheKey, DeliveredMessage, Delivery, NewMessage, Outcome, QueueSettings, QueueType,
};
use mpreg_storage::federation::{Damping, LearnedRoute, RouteMetrics};
use mpreg_tests::{
    Daemon, InProcess, TestDir, eventually, run_daemon, sql_get, sql_post, sql_rows,
};
use serde_json::{Value, json};

fn route(dest: &str, advertiser: &str, path: &[&str], cost: u32) -> EventKind {
    EventKind::RouteAnnounced {
        dest: dest.to_string(),
        next_hop: advertiser.to_string(),
        path: path.iter().map(|s| s.to_string()).collect(),
        cost,
        advertiser: advertiser.to_string(),
        expires_at_ms: None,
    }
}

/// Known events on top of what the node records itself at start.
async fn seed(node: &mpreg_daemon::Node) -> Result<()> {
    let events = [
        EventKind::NodeJoined {
            node_id: "n2".into(),
            cluster_id: "local".into(),
            addresses: vec!["ws://127.0.0.1:1".into()],
            resources: vec!["gpu".into()],
        },
        EventKind::NodeLeft {
            node_id: "n2".into(),
        },
        EventKind::FunctionRegistered {
            name: "resize".into(),
            function_id: "resize-v2".into(),
            version: "2.1.0".into(),
            resources: vec!["gpu".into()],
            provider: "conn-7".into(),
            node_id: "n2".into(),
            cluster_id: "local".into(),
        },
        EventKind::SubscriptionAdded {
            subscription_id: "audit".into(),
            patterns: vec!["orders.#".into(), "users.*.created".into()],
            subscriber: "conn-9".into(),
            node_id: "n2".into(),
            durable: true,
        },
        route("c2", "c9", &["c9", "c2"], 20),
        route("c2", "c3", &["c3", "c2"], 10),
        EventKind::RouteAnnounced {
            dest: "c4".into(),
            next_hop: "c3".into(),
            path: vec!["c3".into(), "c4".into()],
            cost: 5,
            advertiser: "c3".into(),
            expires_at_ms: Some(1_000),
        },
    ];
    for event in events {
        node.propose_ok(event).await?;
    }
    Ok(())
}

const HOUR_MS: u64 = 3_600_000;

/// Keeps the links of [`seed_federation`] (to nowhere) from being
/// declared dead, which would withdraw their routes while a test reads them.
fn keep_links(config: &mut mpreg_daemon::Config) {
    config.federation.link_dead = Duration::from_secs(3600);
}

/// A route to `c3` the leader accepted from `via`, with `metrics`.
fn learned_c3(via: &str, path: &[&str], metrics: RouteMetrics) -> LearnedRoute {
    LearnedRoute {
        dest: "c3".into(),
        next_hop: via.into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        metrics,
        advertised_at_ms: unix_ms(),
        epoch: 1,
        tags: vec!["eu".into()],
    }
}

/// Links to neighbours `c2` and `c4` (at URLs nobody answers) and a route
/// to `c3` through each, their metrics chosen so the scores are exact:
/// through c2 `12 + 10·2 + 5 + 50·0 − 0.05·100 = 32`, through c4
/// `30.5 + 10·3 + 10 + 50·0.5 − 0 = 95.5`.
async fn seed_federation(node: &mpreg_daemon::Node) -> Result<()> {
    for cluster in ["c2", "c4"] {
        node.propose_ok(EventKind::FederationLinked {
            cluster_id: cluster.into(),
            urls: vec![format!("ws://127.0.0.1:9/{cluster}")],
        })
        .await?;
    }
    let via_c2 = learned_c3(
        "c2",
        &["local", "c2", "c3"],
        RouteMetrics {
            hops: 2,
            latency_us: 12_000,
            bandwidth_mbps: 100,
            reliability_ppm: 1_000_000,
            cost: 5,
        },
    );
    let via_c4 = learned_c3(
        "c4",
        &["local", "c4", "c5", "c3"],
        RouteMetrics {
            hops: 3,
            latency_us: 30_500,
            bandwidth_mbps: 0,
            reliability_ppm: 500_000,
            cost: 10,
        },
    );
    for (via, route) in [("c2", via_c2), ("c4", via_c4)] {
        node.propose_ok(EventKind::RoutesLearned {
            via: via.into(),
            routes: vec![route],
            ttl_ms: HOUR_MS,
            max_routes: 4,
        })
        .await?;
    }
    Ok(())
}

fn message(id: &str, priority: u8, delay_ms: u64, delivery: Delivery) -> NewMessage {
    NewMessage {
        message_id: id.to_string(),
        client_id: true,
        topic: format!("orders.{id}"),
        payload: json!({ "id": id }).to_string(),
        priority,
        delay_ms,
        ttl_ms: None,
        delivery,
    }
}

fn only_delivered(outcome: Outcome) -> Result<DeliveredMessage> {
    match outcome {
        Outcome::Delivered { mut messages } if messages.len() == 1 => Ok(messages.remove(0)),
        other => anyhow::bail!("expected one delivered message, got {other:?}"),
    }
}

/// Queues `idle` (empty), `jobs` (one ready, one delayed) and `orders`
/// A credential `app`, set and then revoked: the `credentials` table shows
/// it, and the node stays open to clients without a token.
async fn seed_credentials(node: &mpreg_daemon::Node) -> Result<()> {
    let permissions = Permissions {
        call: vec!["echo".into()],
        publish: vec!["orders.#".into()],
        queues: vec!["jobs".into()],
        ..Permissions::default()
    };
    node.propose_ok(EventKind::CredentialSet {
        name: "app".into(),
        token_sha256: "00".repeat(32),
        permissions,
    })
    .await?;
    node.propose_ok(EventKind::CredentialRevoked { name: "app".into() })
        .await?;
    Ok(())
}

/// (priority, dead-letter queue `orders-dead`): `o2` is leased, nacked and
/// dead-lettered (no retries), then `worker-1` leases `o4`, whose delivery
/// this returns.
async fn seed_queues(node: &mpreg_daemon::Node) -> Result<DeliveredMessage> {
    let orders = QueueSettings {
        queue_type: QueueType::Priority,
        max_size: 100,
        visibility_timeout_ms: 30_000,
        ack_timeout_ms: 10_000,
        message_ttl_ms: Some(HOUR_MS),
        max_retries: 0,
        dead_letter_queue: Some("orders-dead".into()),
        dedup_window_ms: None,
    };
    let jobs = QueueSettings {
        queue_type: QueueType::Delay,
        max_size: 10,
        visibility_timeout_ms: 5_000,
        ack_timeout_ms: 5_000,
        message_ttl_ms: None,
        max_retries: 2,
        dead_letter_queue: None,
        dedup_window_ms: Some(60_000),
    };
    let idle = QueueSettings {
        queue_type: QueueType::Fifo,
        ..jobs.clone()
    };
    for (name, settings) in [("orders", orders), ("jobs", jobs), ("idle", idle)] {
        node.propose_ok(EventKind::QueueDeclared {
            name: name.into(),
            settings,
        })
        .await?;
    }
    let sends = [
        (
            "orders",
            vec![
                message("o1", 1, 0, Delivery::AtLeastOnce),
                message("o2", 9, 0, Delivery::AtLeastOnce),
                message("o3", 5, HOUR_MS, Delivery::AtLeastOnce),
                message("o4", 7, 0, Delivery::AtLeastOnce),
            ],
        ),
        (
            "jobs",
            vec![
                message("j1", 0, 0, Delivery::AtMostOnce),
                message("j2", 0, HOUR_MS, Delivery::AtLeastOnce),
            ],
        ),
    ];
    for (queue, messages) in sends {
        node.propose_ok(EventKind::MessagesSent {
            queue: queue.into(),
            messages,
        })
        .await?;
    }
    let lease = || EventKind::MessagesLeased {
        queue: "orders".into(),
        consumer: "worker-1".into(),
        max: 1,
        lease_ms: 600_000,
        topic_pattern: None,
    };
    let first = only_delivered(node.propose_ok(lease()).await?)?;
    ensure!(first.message_id == "o2", "leased {first:?}");
    let nacked = node
        .propose_ok(EventKind::MessageNacked {
            queue: "orders".into(),
            message_id: "o2".into(),
            consumer: "worker-1".into(),
            delay_ms: 0,
        })
        .await?;
    ensure!(
        nacked
            == Outcome::Released {
                requeued: 0,
                dead_lettered: 1
            },
        "{nacked:?}"
    );
    only_delivered(node.propose_ok(lease()).await?)
}

fn cache_put(
    namespace: &str,
    identifier: &str,
    version: &str,
    value: Value,
    tags: &[&str],
    ttl_ms: Option<u64>,
) -> EventKind {
    EventKind::CachePut {
        key: CacheKey {
            namespace: namespace.to_string(),
            identifier: identifier.to_string(),
            version: version.to_string(),
        },
        value: value.to_string(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        metadata: "null".to_string(),
        ttl_ms,
    }
}

/// Cache entries in two namespaces: `users/u1` (tags, written twice: the
/// second value is `{"name":"ada","admin":true}`), `users/u2` at version
/// `v2`, and `sessions/s1` with a TTL of an hour.
async fn seed_cache(node: &mpreg_daemon::Node) -> Result<()> {
    let puts = [
        cache_put("users", "u1", "", json!({"name": "ada"}), &["admin"], None),
        cache_put(
            "users",
            "u1",
            "",
            json!({"name": "ada", "admin": true}),
            &["admin", "eu"],
            None,
        ),
        cache_put("users", "u2", "v2", json!("bob"), &[], None),
        cache_put(
            "sessions",
            "s1",
            "",
            json!({"token": "t"}),
            &[],
            Some(HOUR_MS),
        ),
    ];
    for put in puts {
        node.propose_ok(put).await?;
    }
    Ok(())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn column<'a>(rows: &'a [Value], name: &str) -> Vec<&'a Value> {
    rows.iter().map(|r| &r[name]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_table_returns_what_the_views_hold() -> Result<()> {
    let dir = TestDir::new();
    let daemon = InProcess::start(&dir, |_| {}).await?;
    let before_seed = daemon.node.applied().last_applied_index();
    seed(&daemon.node).await?;
    let admin = daemon.admin_url.as_str();
    let me = daemon.node.identity().node_id.clone();

    let nodes = sql_rows(admin, "SELECT * FROM nodes ORDER BY node_id").await?;
    let n2 = nodes
        .iter()
        .find(|r| r["node_id"] == "n2")
        .context("n2 row")?;
    assert_eq!(n2["status"], "left");
    assert_eq!(n2["resources"], json!(["gpu"]));
    assert_eq!(n2["addresses"], json!(["ws://127.0.0.1:1"]));
    let this = nodes
        .iter()
        .find(|r| r["node_id"] == me)
        .context("own row")?;
    assert_eq!(this["status"], "up");
    assert_eq!(this["cluster_id"], "local");
    assert_eq!(nodes.len(), 2);

    let functions = sql_rows(admin, "SELECT * FROM functions WHERE name = 'resize'").await?;
    assert_eq!(functions.len(), 1);
    let f = &functions[0];
    assert_eq!(
        (
            &f["function_id"],
            &f["version"],
            &f["provider"],
            &f["node_id"]
        ),
        (
            &json!("resize-v2"),
            &json!("2.1.0"),
            &json!("conn-7"),
            &json!("n2")
        )
    );
    assert!(
        f["registered_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("20"))
    );

    let subscriptions = sql_rows(admin, "SELECT * FROM subscriptions ORDER BY pattern").await?;
    assert_eq!(
        column(&subscriptions, "pattern"),
        [&json!("orders.#"), &json!("users.*.created")]
    );
    assert!(
        subscriptions
            .iter()
            .all(|r| r["subscription_id"] == "audit" && r["durable"] == true)
    );

    let routes = sql_rows(admin, "SELECT * FROM routes ORDER BY dest, cost").await?;
    let dests: Vec<&Value> = column(&routes, "dest");
    assert_eq!(
        dests,
        [&json!("c2"), &json!("c2"), &json!("c4"), &json!("local")]
    );
    let own = &routes[3];
    assert_eq!(
        (&own["hops"], &own["cost"], &own["state"]),
        (&json!(0), &json!(0), &json!("active"))
    );
    assert_eq!(routes[0]["path"], json!(["c3", "c2"]));
    assert_eq!(routes[0]["hops"], 2);
    assert_eq!(routes[0]["expires_at"], Value::Null);
    assert_eq!(routes[2]["state"], "expired");
    assert_eq!(routes[2]["expires_at"], "1970-01-01T00:00:01Z");

    let status = mpreg_tests::status_of(admin).await?;
    let last_applied = status["last_applied"].as_u64().context("last_applied")?;
    let all_events = sql_rows(admin, "SELECT * FROM events").await?;
    // The log starts with the membership raft initialized the cluster with.
    assert_eq!(all_events[0]["kind"], "membership");
    assert_eq!(all_events[0]["time"], Value::Null);
    let membership: Value =
        serde_json::from_str(all_events[0]["summary"].as_str().context("summary")?)?;
    assert_eq!(membership["configs"].as_array().map(Vec::len), Some(1));
    assert_eq!(all_events[1]["kind"], "node_joined");
    assert_eq!(all_events[2]["kind"], "route_announced");
    let events = sql_rows(
        admin,
        &format!("SELECT * FROM events WHERE index > {before_seed}"),
    )
    .await?;
    let kinds: Vec<&str> = events.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "node_joined",
            "node_left",
            "function_registered",
            "subscription_added",
            "route_announced",
            "route_announced",
            "route_announced"
        ]
    );
    let indexes: Vec<u64> = events.iter().filter_map(|r| r["index"].as_u64()).collect();
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    assert!(*indexes.last().context("events")? <= last_applied);
    let summary: Value = serde_json::from_str(events[2]["summary"].as_str().context("summary")?)?;
    assert_eq!(summary["name"], "resize");
    assert_eq!(summary["version"], "2.1.0");
    let tail = sql_rows(
        admin,
        &format!("SELECT kind FROM events WHERE index > {}", indexes[3]),
    )
    .await?;
    assert_eq!(tail.len(), 3);

    let raft = sql_rows(admin, "SELECT * FROM raft").await?;
    assert_eq!(raft.len(), 1);
    let raft = &raft[0];
    assert_eq!(raft["node_id"], json!(me));
    assert_eq!(raft["role"], "leader");
    assert_eq!(raft["leader"], json!(me));
    assert_eq!(raft["last_applied"], json!(last_applied));
    assert!(raft["committed"].as_u64() >= Some(last_applied));
    assert!(raft["last_log_index"].as_u64() >= Some(last_applied));
    assert_eq!(raft["term"], status["term"]);

    let tables = sql_rows(admin, "SHOW TABLES").await?;
    let public: Vec<&str> = tables
        .iter()
        .filter(|r| r["table_schema"] == "public")
        .filter_map(|r| r["table_name"].as_str())
        .collect();
    for table in mpreg_query::SqlEngine::table_names() {
        assert!(
            public.contains(&table),
            "SHOW TABLES lacks {table}: {public:?}"
        );
    }
    let columns = sql_rows(admin, "DESCRIBE routes").await?;
    assert_eq!(columns.len(), 15);
    daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_tables_show_counters_states_and_leases() -> Result<()> {
    let dir = TestDir::new();
    let daemon = InProcess::start(&dir, |_| {}).await?;
    let held = seed_queues(&daemon.node).await?;
    let admin = daemon.admin_url.as_str();
    assert_eq!(held.message_id, "o4");
    let deadline = held.lease_deadline_ms.context("o4 is leased")?;

    let queues = sql_rows(
        admin,
        "SELECT name, queue_type, max_size, visibility_timeout_ms, ack_timeout_ms, \
         message_ttl_ms, max_retries, dead_letter_queue, dedup_window_ms, \
         depth, ready, delayed, in_flight, dlq_depth FROM queues ORDER BY name",
    )
    .await?;
    assert_eq!(
        queues,
        [
            json!({"name": "idle", "queue_type": "fifo", "max_size": 10,
                "visibility_timeout_ms": 5000, "ack_timeout_ms": 5000,
                "message_ttl_ms": null, "max_retries": 2, "dead_letter_queue": null,
                "dedup_window_ms": 60000, "depth": 0, "ready": 0, "delayed": 0,
                "in_flight": 0, "dlq_depth": null}),
            json!({"name": "jobs", "queue_type": "delay", "max_size": 10,
                "visibility_timeout_ms": 5000, "ack_timeout_ms": 5000,
                "message_ttl_ms": null, "max_retries": 2, "dead_letter_queue": null,
                "dedup_window_ms": 60000, "depth": 2, "ready": 1, "delayed": 1,
                "in_flight": 0, "dlq_depth": null}),
            json!({"name": "orders", "queue_type": "priority", "max_size": 100,
                "visibility_timeout_ms": 30000, "ack_timeout_ms": 10000,
                "message_ttl_ms": HOUR_MS, "max_retries": 0,
                "dead_letter_queue": "orders-dead", "dedup_window_ms": null,
                "depth": 2, "ready": 1, "delayed": 1, "in_flight": 1, "dlq_depth": 1}),
            json!({"name": "orders-dead", "queue_type": "fifo", "max_size": 100,
                "visibility_timeout_ms": 30000, "ack_timeout_ms": 10000,
                "message_ttl_ms": null, "max_retries": 0, "dead_letter_queue": null,
                "dedup_window_ms": null, "depth": 1, "ready": 1, "delayed": 0,
                "in_flight": 0, "dlq_depth": null}),
        ]
    );

    let before = unix_ms();
    let ages = sql_rows(
        admin,
        "SELECT name, oldest_age_ms, created_at FROM queues ORDER BY name",
    )
    .await?;
    let after = unix_ms();
    assert_eq!(ages[0]["oldest_age_ms"], Value::Null, "idle is empty");
    for age in &ages[1..] {
        let ms = age["oldest_age_ms"].as_u64().context("oldest_age_ms")?;
        assert!(ms <= after - held.enqueued_at_ms, "{age}");
        assert!(
            age["created_at"]
                .as_str()
                .is_some_and(|t| t.starts_with("20"))
        );
    }
    // o1, sent with o4, is the oldest message of `orders`; o2 keeps its
    // enqueue time in the dead-letter queue.
    for age in [&ages[2], &ages[3]] {
        let ms = age["oldest_age_ms"].as_u64().context("oldest_age_ms")?;
        assert!(ms + held.enqueued_at_ms >= before, "{age}");
    }

    let one = sql_rows(
        admin,
        "SELECT name, depth FROM queues WHERE name = 'orders'",
    )
    .await?;
    assert_eq!(one, [json!({"name": "orders", "depth": 2})]);
    let none = sql_rows(admin, "SELECT name FROM queues WHERE name = 'order'").await?;
    assert!(none.is_empty(), "{none:?}");

    let messages = sql_rows(
        admin,
        "SELECT queue, seq, message_id, state, consumer, priority, attempts, delivery, \
         topic, CAST(lease_deadline AS BIGINT) AS lease_deadline_ms, size \
         FROM queue_messages ORDER BY queue, seq",
    )
    .await?;
    let row = |queue: &str, seq: u64, id: &str, state: &str, priority: u8, delivery: &str| {
        json!({"queue": queue, "seq": seq, "message_id": id, "state": state,
            "consumer": null, "priority": priority, "attempts": 0, "delivery": delivery,
            "topic": format!("orders.{id}"), "lease_deadline_ms": null, "size": 11})
    };
    let mut leased = row("orders", 4, "o4", "leased", 7, "at_least_once");
    leased["consumer"] = json!("worker-1");
    leased["attempts"] = json!(1);
    leased["lease_deadline_ms"] = json!(deadline);
    assert_eq!(
        messages,
        [
            row("jobs", 1, "j1", "ready", 0, "at_most_once"),
            row("jobs", 2, "j2", "delayed", 0, "at_least_once"),
            row("orders", 1, "o1", "ready", 1, "at_least_once"),
            row("orders", 3, "o3", "delayed", 5, "at_least_once"),
            leased,
            row("orders-dead", 1, "o2", "ready", 0, "at_least_once"),
        ]
    );

    let times = sql_rows(
        admin,
        "SELECT message_id, CAST(enqueued_at AS BIGINT) AS enqueued_ms, \
         CAST(ready_at AS BIGINT) - CAST(enqueued_at AS BIGINT) AS delay_ms, \
         CAST(expires_at AS BIGINT) - CAST(enqueued_at AS BIGINT) AS ttl_ms \
         FROM queue_messages WHERE queue = 'orders' ORDER BY seq",
    )
    .await?;
    let sent = held.enqueued_at_ms;
    assert_eq!(
        times,
        [
            json!({"message_id": "o1", "enqueued_ms": sent, "delay_ms": 0, "ttl_ms": HOUR_MS}),
            json!({"message_id": "o3", "enqueued_ms": sent, "delay_ms": HOUR_MS, "ttl_ms": HOUR_MS}),
            json!({"message_id": "o4", "enqueued_ms": sent, "delay_ms": 0, "ttl_ms": HOUR_MS}),
        ]
    );
    let dead = sql_rows(
        admin,
        "SELECT expires_at, CAST(enqueued_at AS BIGINT) AS enqueued_ms \
         FROM queue_messages WHERE queue = 'orders-dead'",
    )
    .await?;
    assert_eq!(dead, [json!({"expires_at": null, "enqueued_ms": sent})]);
    daemon.stop().await
}

/// Reads `namespace/identifier` through a `cache-request` get; returns the
/// cache level that answered.
async fn cache_get(
    client: &mpreg_client::Client,
    namespace: &str,
    identifier: &str,
) -> Result<Value> {
    let reply = client
        .cache(json!({"operation": "get",
            "key": {"namespace": namespace, "identifier": identifier}}))
        .await?;
    ensure!(reply["status"] == "hit", "{reply}");
    Ok(reply["cache_level"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_entries_show_stored_rows_with_memory_tier_and_hits() -> Result<()> {
    let dir = TestDir::new();
    let daemon = InProcess::start(&dir, |_| {}).await?;
    let before = unix_ms();
    seed_cache(&daemon.node).await?;
    let after = unix_ms();
    let admin = daemon.admin_url.as_str();

    // s1 is loaded into memory by one read (which does not count as a hit
    // there); u1 is read again from memory; u2 is never read.
    let client = mpreg_client::Client::connect(&daemon.client_url).await?;
    assert_eq!(cache_get(&client, "sessions", "s1").await?, "L2");
    assert_eq!(cache_get(&client, "users", "u1").await?, "L2");
    assert_eq!(cache_get(&client, "users", "u1").await?, "L1");

    let rows = sql_rows(
        admin,
        "SELECT namespace, identifier, version, tags, size_bytes, revision, \
         CAST(expires_at AS BIGINT) - CAST(created_at AS BIGINT) AS ttl_ms, hits, tier \
         FROM cache_entries ORDER BY namespace, identifier",
    )
    .await?;
    let u1_size = json!({"name": "ada", "admin": true}).to_string().len();
    assert_eq!(
        rows,
        [
            json!({"namespace": "sessions", "identifier": "s1", "version": null,
                "tags": [], "size_bytes": 13, "revision": 1, "ttl_ms": HOUR_MS,
                "hits": 0, "tier": "memory"}),
            json!({"namespace": "users", "identifier": "u1", "version": null,
                "tags": ["admin", "eu"], "size_bytes": u1_size, "revision": 2,
                "ttl_ms": null, "hits": 1, "tier": "memory"}),
            json!({"namespace": "users", "identifier": "u2", "version": "v2",
                "tags": [], "size_bytes": 5, "revision": 1, "ttl_ms": null,
                "hits": 0, "tier": "disk"}),
        ]
    );

    let times = sql_rows(
        admin,
        "SELECT CAST(created_at AS BIGINT) AS created, CAST(updated_at AS BIGINT) AS updated, \
         expires_at FROM cache_entries ORDER BY namespace, identifier",
    )
    .await?;
    for row in &times {
        let created = row["created"].as_u64().context("created_at")?;
        let updated = row["updated"].as_u64().context("updated_at")?;
        assert!(
            before <= created && created <= updated && updated <= after,
            "{row}"
        );
    }
    assert!(
        times[0]["expires_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("20"))
    );
    let expired = sql_rows(
        admin,
        "SELECT identifier FROM cache_entries WHERE expires_at <= now()",
    )
    .await?;
    assert!(expired.is_empty(), "{expired:?}");

    let users = sql_rows(
        admin,
        "SELECT identifier, tier FROM cache_entries WHERE namespace = 'users' ORDER BY identifier",
    )
    .await?;
    assert_eq!(
        users,
        [
            json!({"identifier": "u1", "tier": "memory"}),
            json!({"identifier": "u2", "tier": "disk"}),
        ]
    );
    for other in ["user", "users2", "u"] {
        let none = sql_rows(
            admin,
            &format!("SELECT identifier FROM cache_entries WHERE namespace = '{other}'"),
        )
        .await?;
        assert!(none.is_empty(), "{other}: {none:?}");
    }

    let plan = sql_rows(
        admin,
        "EXPLAIN SELECT * FROM cache_entries WHERE namespace = 'users'",
    )
    .await?;
    let logical = plan
        .iter()
        .find(|r| r["plan_type"] == "logical_plan")
        .and_then(|r| r["plan"].as_str())
        .context("logical plan row")?;
    assert!(
        logical.contains("partial_filters=[cache_entries.namespace = Utf8(\"users\")]"),
        "{logical}"
    );

    drop(client);
    daemon.stop().await?;
    let offline = offline_json(
        &dir.data(),
        "SELECT namespace, identifier, hits, tier FROM cache_entries ORDER BY namespace, identifier",
    )?;
    assert_eq!(
        offline,
        json!([
            {"namespace": "sessions", "identifier": "s1", "hits": 0, "tier": "disk"},
            {"namespace": "users", "identifier": "u1", "hits": 0, "tier": "disk"},
            {"namespace": "users", "identifier": "u2", "hits": 0, "tier": "disk"},
        ])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_to_c2_and_explain_shows_the_pushed_filter() -> Result<()> {
    let dir = TestDir::new();
    let daemon = InProcess::start(&dir, |_| {}).await?;
    seed(&daemon.node).await?;
    let admin = daemon.admin_url.as_str();

    let rows = sql_rows(admin, "SELECT * FROM routes WHERE dest='c2'").await?;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["dest"] == "c2"));
    let mut advertisers: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["advertiser"].as_str())
        .collect();
    advertisers.sort();
    assert_eq!(advertisers, ["c3", "c9"]);

    for (sql, pushed) in [
        (
            "EXPLAIN SELECT * FROM routes WHERE dest='c2'",
            "routes.dest = Utf8(\"c2\")",
        ),
        (
            "EXPLAIN SELECT * FROM functions WHERE name='resize'",
            "functions.name = Utf8(\"resize\")",
        ),
        (
            "EXPLAIN SELECT * FROM events WHERE index > 3",
            "events.index > UInt64(3)",
        ),
        (
            "EXPLAIN SELECT * FROM queues WHERE name='orders'",
            "queues.name = Utf8(\"orders\")",
        ),
        (
            "EXPLAIN SELECT * FROM queue_messages WHERE queue='orders'",
            "queue_messages.queue = Utf8(\"orders\")",
        ),
    ] {
        let plan = sql_rows(admin, sql).await?;
        let logical = plan
            .iter()
            .find(|r| r["plan_type"] == "logical_plan")
            .and_then(|r| r["plan"].as_str())
            .context("logical plan row")?;
        assert!(
            logical.contains("partial_filters=[") && logical.contains(pushed),
            "{sql}: {logical}"
        );
    }
    daemon.stop().await
}

/// The logical plan `EXPLAIN` prints for `sql`.
async fn logical_plan(admin: &str, sql: &str) -> Result<String> {
    let plan = sql_rows(admin, &format!("EXPLAIN {sql}")).await?;
    plan.iter()
        .find(|r| r["plan_type"] == "logical_plan")
        .and_then(|r| r["plan"].as_str())
        .map(str::to_string)
        .context("logical plan row")
}

/// Every pushed filter, per table, against the same query with its columns
/// wrapped in `concat(.., '')` (which no table pushes down): the same rows,
/// `EXPLAIN` naming the pushed columns, and none in the control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_filters_return_what_a_full_scan_returns() -> Result<()> {
    let dir = TestDir::new();
    let daemon = InProcess::start(&dir, keep_links).await?;
    seed(&daemon.node).await?;
    seed_federation(&daemon.node).await?;
    let admin = daemon.admin_url.as_str();
    // The node's own signing key goes on the log within a second of linking.
    eventually(
        "the node's route key on the log",
        Duration::from_secs(30),
        || async {
            match sql_rows(admin, "SELECT key_id FROM route_keys").await {
                Ok(keys) if !keys.is_empty() => Ok(()),
                Ok(_) => Err("no key yet".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await?;
    seed_queues(&daemon.node).await?;
    seed_cache(&daemon.node).await?;
    seed_credentials(&daemon.node).await?;
    let own_cluster =
        sql_rows(admin, "SELECT cluster FROM route_keys LIMIT 1").await?[0]["cluster"]
            .as_str()
            .context("cluster")?
            .to_string();
    let route_keys = format!("cluster = '{own_cluster}'");

    // (table, columns, filter, pushed columns, rows expected)
    let cases: &[(&str, &str, &str, &[&str], bool)] = &[
        (
            "nodes",
            "node_id, status",
            "node_id = 'n2'",
            &["node_id"],
            true,
        ),
        (
            "nodes",
            "node_id",
            "node_id IN ('n2', 'n9')",
            &["node_id"],
            true,
        ),
        (
            "functions",
            "name, function_id, node_id",
            "name = 'resize'",
            &["name"],
            true,
        ),
        (
            "subscriptions",
            "subscription_id, pattern",
            "subscription_id = 'audit'",
            &["subscription_id"],
            true,
        ),
        (
            "routes",
            "dest, next_hop, advertiser, state",
            "dest IN ('c2', 'c3')",
            &["dest"],
            true,
        ),
        (
            "routes",
            "dest, next_hop",
            "dest = 'c2' OR dest = 'c4'",
            &["dest"],
            true,
        ),
        (
            "federation_links",
            "cluster_id, linked_at",
            "cluster_id = 'c4'",
            &["cluster_id"],
            true,
        ),
        (
            "route_keys",
            "cluster, key_id",
            &route_keys,
            &["cluster"],
            true,
        ),
        (
            "queues",
            "name, queue_type, max_size",
            "name IN ('jobs', 'orders', 'none')",
            &["name"],
            true,
        ),
        (
            "queue_messages",
            "queue, seq, message_id, state",
            "queue = 'orders'",
            &["queue"],
            true,
        ),
        (
            "queue_messages",
            "queue, seq, message_id, state",
            "queue = 'orders' AND message_id = 'o4'",
            &["queue", "message_id"],
            true,
        ),
        (
            "queue_messages",
            "queue, seq, message_id, state, consumer",
            "queue = 'orders' AND state = 'leased'",
            &["queue", "state"],
            true,
        ),
        (
            "queue_messages",
            "queue, seq, message_id",
            "queue IN ('orders', 'jobs') AND message_id IN ('o1', 'j2', 'x')",
            &["queue", "message_id"],
            true,
        ),
        (
            "queue_messages",
            "queue, message_id, state",
            "state = 'delayed'",
            &["state"],
            true,
        ),
        (
            "queue_messages",
            "queue, message_id",
            "queue = 'jobs' AND message_id = 'o1'",
            &["queue", "message_id"],
            false,
        ),
        (
            "cache_entries",
            "namespace, identifier, version, revision",
            "namespace = 'users'",
            &["namespace"],
            true,
        ),
        (
            "cache_entries",
            "namespace, identifier, version",
            "namespace = 'users' AND identifier = 'u2'",
            &["namespace", "identifier"],
            true,
        ),
        (
            "cache_entries",
            "namespace, identifier, version",
            "namespace = 'users' AND identifier = 'u2' AND version = 'v2'",
            &["namespace", "identifier", "version"],
            true,
        ),
        (
            "cache_entries",
            "namespace, identifier",
            "namespace = 'users' AND identifier = 'u1' AND version = 'v2'",
            &["namespace", "identifier", "version"],
            false,
        ),
        (
            "cache_entries",
            "namespace, identifier",
            "namespace IN ('users', 'sessions') AND identifier IN ('s1', 'u1')",
            &["namespace", "identifier"],
            true,
        ),
        (
            "cache_entries",
            "namespace, identifier",
            "identifier = 'u1'",
            &["identifier"],
            true,
        ),
        (
            "events",
            "index, kind",
            "kind = 'cache_put'",
            &["kind"],
            true,
        ),
        (
            "events",
            "index, kind",
            "index > 3 AND kind IN ('queue_declared', 'membership')",
            &["index", "kind"],
            true,
        ),
        (
            "credentials",
            "name, active",
            "name = 'app'",
            &["name"],
            true,
        ),
    ];
    for &(table, columns, filter, pushed, rows_expected) in cases {
        let mut control = filter.to_string();
        for column in pushed {
            let wrapped = match *column {
                "index" => "(index + 0) ".to_string(),
                text => format!("concat({text}, '') "),
            };
            control = control.replace(&format!("{column} "), &wrapped);
        }
        ensure!(control != filter, "{table}: no column wrapped in {filter}");
        let query = |filter: &str| format!("SELECT {columns} FROM {table} WHERE {filter}");
        let sorted = |mut rows: Vec<Value>| {
            rows.sort_by_key(Value::to_string);
            rows
        };
        let narrowed = sorted(sql_rows(admin, &query(filter)).await?);
        let scanned = sorted(sql_rows(admin, &query(&control)).await?);
        ensure!(
            narrowed == scanned,
            "{table} WHERE {filter}: {narrowed:?}, a full scan: {scanned:?}"
        );
        ensure!(
            narrowed.is_empty() != rows_expected,
            "{table} WHERE {filter}: {narrowed:?}"
        );

        let plan = logical_plan(admin, &query(filter)).await?;
        let partial = plan
            .split("partial_filters=[")
            .nth(1)
            .with_context(|| format!("{table} WHERE {filter}: nothing pushed: {plan}"))?;
        for column in pushed {
            ensure!(
                partial.contains(&format!("{table}.{column}")),
                "{table} WHERE {filter}: {column} not pushed: {plan}"
            );
        }
        let plan = logical_plan(admin, &query(&control)).await?;
        ensure!(
            !plan.contains("partial_filters"),
            "{table} WHERE {control}: the control pushed a filter: {plan}"
        );
    }
    // count(*) reads no column: those scans count keys without decoding
    // rows, and must count what a scan of the rows returns.
    for (table, filter) in [
        ("cache_entries", "true"),
        ("cache_entries", "namespace = 'users'"),
        ("queue_messages", "true"),
        ("queue_messages", "queue = 'orders'"),
    ] {
        let rows = sql_rows(admin, &format!("SELECT * FROM {table} WHERE {filter}")).await?;
        let counted = sql_rows(
            admin,
            &format!("SELECT count(*) AS n FROM {table} WHERE {filter}"),
        )
        .await?;
        ensure!(
            !rows.is_empty() && counted == vec![json!({"n": rows.len()})],
            "{table} WHERE {filter}: count(*) {counted:?}, {} rows",
            rows.len()
        );
    }
    // A query of cache_entries' key columns only builds its rows from the
    // keys: they must be the rows a scan that decodes every row returns
    // (the filter on `revision` needs the decoded rows).
    for filter in [
        "true",
        "namespace = 'users'",
        "namespace = 'users' AND identifier = 'u2'",
    ] {
        let query = |filter: &str| {
            format!(
                "SELECT namespace, identifier, version FROM cache_entries WHERE {filter} \
                 ORDER BY namespace, identifier, version"
            )
        };
        let from_keys = sql_rows(admin, &query(filter)).await?;
        let decoded = sql_rows(admin, &query(&format!("{filter} AND revision > 0"))).await?;
        ensure!(
            !from_keys.is_empty() && from_keys == decoded,
            "WHERE {filter}: from keys {from_keys:?}, decoded {decoded:?}"
        );
        ensure!(
            from_keys.iter().any(|row| row["version"] == "v2"),
            "WHERE {filter}: a versioned key comes back with its version: {from_keys:?}"
        );
    }
    daemon.stop().await
}

/// `route_explain`'s two rows for `c3` after [`seed_federation`], with
/// the verdict on the route through c4.
fn explained_c3(c4_reason: &str) -> Value {
    json!([
        {"dest": "c3", "next_hop": "c2", "advertiser": "c2", "path": ["local", "c2", "c3"],
         "hops": 2, "latency_ms": 12.0, "reliability": 1.0, "bandwidth_mbps": 100, "cost": 5,
         "score": 32.0, "rank": 1, "selected": true, "filtered_reason": null},
        {"dest": "c3", "next_hop": "c4", "advertiser": "c4", "path": ["local", "c4", "c5", "c3"],
         "hops": 3, "latency_ms": 30.5, "reliability": 0.5, "bandwidth_mbps": 0, "cost": 10,
         "score": 95.5, "rank": 2, "selected": false, "filtered_reason": c4_reason}
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_routes_explain_and_links_after_federation_events() -> Result<()> {
    let dir = TestDir::new();
    let daemon = InProcess::start(&dir, keep_links).await?;
    seed(&daemon.node).await?;
    seed_federation(&daemon.node).await?;
    let admin = daemon.admin_url.as_str();

    let c3 = "SELECT dest,next_hop,path,hops,state FROM routes WHERE dest='c3' ORDER BY next_hop";
    assert_eq!(
        Value::Array(sql_rows(admin, c3).await?),
        json!([
            {"dest": "c3", "next_hop": "c2", "path": ["local", "c2", "c3"], "hops": 2, "state": "active"},
            {"dest": "c3", "next_hop": "c4", "path": ["local", "c4", "c5", "c3"], "hops": 3, "state": "backup"}
        ])
    );
    let full = sql_rows(
        admin,
        "SELECT * FROM routes WHERE dest='c3' ORDER BY next_hop",
    )
    .await?;
    let c2 = &full[0];
    assert_eq!(
        (
            &c2["latency_ms"],
            &c2["bandwidth_mbps"],
            &c2["reliability"],
            &c2["cost"],
            &c2["score"],
            &c2["advertiser"],
            &c2["epoch"],
            &c2["tags"]
        ),
        (
            &json!(12.0),
            &json!(100),
            &json!(1.0),
            &json!(5),
            &json!(32.0),
            &json!("c2"),
            &json!(1),
            &json!(["eu"])
        )
    );
    assert!(
        timestamp(&c2["learned_at"]) && timestamp(&c2["expires_at"]),
        "{c2}"
    );
    // Rows of the `routes` view keep their shape next to the candidates.
    let own = sql_rows(
        admin,
        "SELECT path, hops, latency_ms, reliability, score, epoch, tags, state FROM routes WHERE dest = 'local'",
    )
    .await?;
    assert_eq!(
        own,
        [
            json!({"path": [], "hops": 0, "latency_ms": 0.0, "reliability": 1.0, "score": 0.0,
                "epoch": 0, "tags": [], "state": "active"})
        ]
    );
    let c2_legacy = sql_rows(
        admin,
        "SELECT next_hop, hops, score, state FROM routes WHERE dest = 'c2' ORDER BY next_hop",
    )
    .await?;
    assert_eq!(
        c2_legacy,
        [
            json!({"next_hop": "c3", "hops": 2, "score": 30.0, "state": "active"}),
            json!({"next_hop": "c9", "hops": 2, "score": 40.0, "state": "active"})
        ]
    );
    let plan = sql_rows(admin, "EXPLAIN SELECT * FROM routes WHERE dest='c3'").await?;
    assert!(
        plan.iter().any(|r| r["plan"]
            .as_str()
            .is_some_and(|p| p.contains("routes.dest = Utf8(\"c3\")"))),
        "{plan:?}"
    );

    let explained = sql_rows(admin, "SELECT * FROM route_explain('c3')").await?;
    assert_eq!(Value::Array(explained), explained_c3("lower_rank"));
    let itself = sql_rows(admin, "SELECT * FROM route_explain('local')").await?;
    assert_eq!(
        itself,
        [
            json!({"dest": "local", "next_hop": "local", "advertiser": "local", "path": [],
                "hops": 0, "latency_ms": 0.0, "reliability": 1.0, "bandwidth_mbps": 0, "cost": 0,
                "score": 0.0, "rank": 1, "selected": true, "filtered_reason": null})
        ]
    );
    assert!(
        sql_rows(admin, "SELECT * FROM route_explain('nowhere')")
            .await?
            .is_empty()
    );
    for bad in [
        "SELECT * FROM route_explain(3)",
        "SELECT * FROM route_explain()",
        "SELECT * FROM route_explain('c3', 'c4')",
        "SELECT * FROM route_explain(NULL)",
    ] {
        let answer = sql_get(admin, bad, "json").await?;
        let body = answer.json()?;
        assert_eq!(answer.status, 400, "{bad}: {body}");
        assert_eq!(body["kind"], "invalid", "{bad}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("route_explain")),
            "{bad}: {body}"
        );
    }

    // The leader dials each link (to nowhere): `connecting`, with no round
    // trip yet (`down` would take link_dead, an hour here).
    let links = eventually(
        "both links to be dialled",
        Duration::from_secs(10),
        || async {
            let links = sql_rows(admin, "SELECT * FROM federation_links ORDER BY cluster_id")
                .await
                .map_err(|e| e.to_string())?;
            if links.len() == 2 && links.iter().all(|l| l["state"] == "connecting") {
                Ok(links)
            } else {
                Err(format!("{links:?}"))
            }
        },
    )
    .await?;
    for (row, cluster) in links.iter().zip(["c2", "c4"]) {
        assert!(timestamp(&row["linked_at"]), "{row}");
        let mut row = row.clone();
        row["linked_at"] = json!("*");
        assert_eq!(
            row,
            json!({"cluster_id": cluster, "urls": [format!("ws://127.0.0.1:9/{cluster}")],
                   "linked_at": "*", "state": "connecting", "rtt_ms": null, "last_seen": null,
                   "announcements_in": 0, "announcements_out": 0, "rejections": "{}"})
        );
    }

    // Withdrawn with a hold-down, the route through c4 stays, held down.
    daemon
        .node
        .propose_ok(EventKind::RoutesWithdrawn {
            via: "c4".into(),
            dests: vec!["c3".into()],
            damping: Damping {
                hold_down_ms: HOUR_MS,
                flap_threshold: 0,
                flap_window_ms: 0,
            },
        })
        .await?;
    let states = sql_rows(
        admin,
        "SELECT next_hop, state FROM routes WHERE dest='c3' ORDER BY next_hop",
    )
    .await?;
    assert_eq!(
        states,
        [
            json!({"next_hop": "c2", "state": "active"}),
            json!({"next_hop": "c4", "state": "held_down"})
        ]
    );
    let explained = sql_rows(admin, "SELECT * FROM route_explain('c3')").await?;
    assert_eq!(Value::Array(explained), explained_c3("withdrawn"));
    daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_csv_and_arrow_answers_parse() -> Result<()> {
    let dir = TestDir::new();
    let daemon = InProcess::start(&dir, |_| {}).await?;
    seed(&daemon.node).await?;
    let admin = daemon.admin_url.as_str();
    let sql = "SELECT dest, path, cost, expires_at FROM routes WHERE dest = 'c2' ORDER BY cost";

    let json = sql_get(admin, sql, "json").await?;
    assert_eq!(json.content_type, "application/json");
    let rows = json.rows()?;
    assert_eq!(
        rows[0],
        json!({"dest": "c2", "path": ["c3", "c2"], "cost": 10, "expires_at": null})
    );

    let csv = sql_get(admin, sql, "csv").await?;
    assert_eq!(csv.status, 200);
    assert!(
        csv.content_type.starts_with("text/csv"),
        "{}",
        csv.content_type
    );
    let text = String::from_utf8(csv.body)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "dest,path,cost,expires_at",
            "c2,\"[c3, c2]\",10,",
            "c2,\"[c9, c2]\",20,"
        ]
    );

    let arrow = sql_get(admin, sql, "arrow").await?;
    assert_eq!(arrow.content_type, "application/vnd.apache.arrow.stream");
    let output = mpreg_query::format::read_arrow_ipc(&arrow.body)?;
    assert_eq!(output.num_rows(), 2);
    let names: Vec<&str> = output
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["dest", "path", "cost", "expires_at"]);

    let empty = sql_get(admin, "SELECT * FROM routes WHERE dest = 'nowhere'", "json").await?;
    assert_eq!(empty.rows()?.len(), 0);
    let empty_csv = sql_get(
        admin,
        "SELECT dest FROM routes WHERE dest = 'nowhere'",
        "csv",
    )
    .await?;
    assert_eq!(String::from_utf8(empty_csv.body)?, "dest\n");

    let posted = sql_post(admin, "SELECT count(*) AS n FROM routes")
        .await?
        .rows()?;
    assert_eq!(posted, [json!({"n": 4})]);

    let bad_format = sql_get(admin, "SELECT 1", "xml").await?;
    assert_eq!(bad_format.status, 400);
    assert!(
        bad_format.json()?["error"]
            .as_str()
            .is_some_and(|e| e.contains("xml"))
    );
    daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_file_access_are_refused_and_bad_sql_is_named() -> Result<()> {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[])?;
    let admin = daemon.ready.admin_url.clone();
    let refused = [
        "CREATE TABLE t (a INT)",
        "CREATE TABLE t AS SELECT * FROM routes",
        "CREATE VIEW v AS SELECT * FROM routes",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "DROP TABLE routes",
        "INSERT INTO routes (dest) VALUES ('x')",
        "DELETE FROM routes",
        "UPDATE routes SET cost = 1",
        "COPY routes TO '/tmp/mpreg-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
        "PREPARE q(INT) AS SELECT dest FROM routes WHERE cost = $1",
        "EXECUTE q(1)",
        "BEGIN",
        "START TRANSACTION",
        "COMMIT",
        "ROLLBACK",
        "CREATE FUNCTION f(a INT) RETURNS INT RETURN a",
    ];
    // No refused statement changes what the node serves.
    let before = daemon.status().await?;
    for sql in refused {
        let answer = sql_get(&admin, sql, "json").await?;
        let body = answer.json()?;
        assert_eq!(answer.status, 400, "{sql}: {body}");
        let now = daemon.status().await?;
        assert_eq!(
            (&now["views_digest"], &now["last_applied"]),
            (&before["views_digest"], &before["last_applied"]),
            "{sql} changed the views"
        );
        assert!(
            body["kind"] == "refused" || body["kind"] == "invalid",
            "{sql}: {body}"
        );
        if !sql.starts_with("CREATE FUNCTION") && !sql.starts_with("EXECUTE") {
            assert_eq!(body["kind"], "refused", "{sql}: {body}");
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("read-only")),
                "{body}"
            );
        }
    }
    assert!(!std::path::Path::new("/tmp/mpreg-copy.csv").exists());

    let file = sql_get(&admin, "SELECT * FROM '/etc/passwd'", "json").await?;
    assert_eq!(file.status, 400);
    assert!(
        file.json()?["error"]
            .as_str()
            .is_some_and(|e| e.contains("/etc/passwd"))
    );

    let unknown = sql_get(&admin, "SELECT * FROM no_such_table", "json").await?;
    assert_eq!(unknown.status, 400);
    let unknown = unknown.json()?;
    assert_eq!(unknown["kind"], "invalid");
    assert!(
        unknown["error"]
            .as_str()
            .is_some_and(|e| e.contains("no_such_table")),
        "{unknown}"
    );

    let bad = sql_get(&admin, "SELEC * FROM routes", "json").await?;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()?["error"]
            .as_str()
            .is_some_and(|e| e.contains("SELEC"))
    );

    let column = sql_get(&admin, "SELECT no_such_column FROM routes", "json").await?;
    assert_eq!(column.status, 400);
    assert!(
        column.json()?["error"]
            .as_str()
            .is_some_and(|e| e.contains("no_such_column"))
    );

    let empty = sql_get(&admin, "  ", "json").await?;
    assert_eq!(empty.status, 400);

    let (code, _) = daemon.get("/health").await?;
    assert_eq!(code, 200);
    assert!(!sql_rows(&admin, "SELECT * FROM routes").await?.is_empty());
    Ok(())
}

/// Runs `sql` and checks it answers 400 with `kind`, naming `limit`.
async fn expect_cancelled(admin: &str, sql: &str, kind: &str, limit: &str) -> Result<()> {
    let answer = sql_get(admin, sql, "json").await?;
    let body = answer.json()?;
    assert_eq!(
        (answer.status, &body["kind"]),
        (400, &json!(kind)),
        "{sql}: {body}"
    );
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains(limit)),
        "{sql}: {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_memory_and_row_limits_cancel_cleanly() -> Result<()> {
    let dir = TestDir::new();
    let daemon = Daemon::start_configured(
        &dir,
        "sql_timeout_ms = 500\nsql_memory_limit_bytes = 4194304\nsql_max_rows = 1000\n",
    )?;
    let admin = daemon.ready.admin_url.clone();

    let started = std::time::Instant::now();
    expect_cancelled(
        &admin,
        "SELECT count(*) FROM generate_series(1, 100000000000)",
        "timeout",
        "500 ms",
    )
    .await?;
    assert!(started.elapsed() < Duration::from_secs(30));
    expect_cancelled(
        &admin,
        "SELECT value % 3000000 AS k, count(*) FROM generate_series(1, 3000000) GROUP BY k",
        "memory_limit",
        "4194304",
    )
    .await?;
    expect_cancelled(
        &admin,
        "SELECT * FROM generate_series(1, 5000)",
        "row_limit",
        "1000",
    )
    .await?;

    let fits = sql_rows(&admin, "SELECT * FROM generate_series(1, 1000)").await?;
    assert_eq!(fits.len(), 1000);
    let (code, _) = daemon.get("/health").await?;
    assert_eq!(code, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_the_concurrency_limit_get_503_and_the_rest_run() -> Result<()> {
    let dir = TestDir::new();
    let daemon = Daemon::start_configured(&dir, "sql_timeout_ms = 3000\nsql_max_concurrent = 2\n")?;
    let admin = daemon.ready.admin_url.clone();
    let slow = "SELECT count(*) FROM generate_series(1, 100000000000)";
    let running: Vec<_> = (0..2)
        .map(|_| {
            let admin = admin.clone();
            tokio::spawn(async move { sql_get(&admin, slow, "json").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let refused = sql_get(&admin, "SELECT 1", "json").await?;
    let body = refused.json()?;
    assert_eq!(
        (refused.status, &body["kind"]),
        (503, &json!("busy")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("sql_max_concurrent")),
        "{body}"
    );
    let (code, _) = daemon.get("/health").await?;
    assert_eq!(code, 200, "the admin surface serves while SQL is saturated");
    for query in running {
        assert_eq!(query.await??.status, 400, "the slow ones time out");
    }
    assert_eq!(
        sql_rows(&admin, "SELECT 1 AS one").await?,
        [json!({"one": 1})]
    );
    Ok(())
}

const COMPARED: [&str; 5] = [
    "SELECT * FROM nodes ORDER BY node_id",
    "SELECT * FROM functions ORDER BY name, version, provider",
    "SELECT * FROM subscriptions ORDER BY subscription_id, pattern",
    "SELECT * FROM routes ORDER BY dest, advertiser",
    "SELECT * FROM events",
];

fn offline_json(data: &std::path::Path, sql: &str) -> Result<Value> {
    let out = run_daemon(&[
        "sql".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        sql.as_ref(),
        "--format".as_ref(),
        "json".as_ref(),
    ])?;
    ensure!(
        out.status.success(),
        "offline sql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_sql_on_a_stopped_dir_equals_live_sql_before_the_stop() -> Result<()> {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[])?;
    let admin = daemon.ready.admin_url.clone();
    let client = mpreg_client::Client::connect(&daemon.ready.client_url).await?;
    let _sub = client.subscribe_with(&["orders.#"], 0, true).await?;
    let mut live = BTreeMap::new();
    for sql in COMPARED {
        live.insert(sql, Value::Array(sql_rows(&admin, sql).await?));
    }
    let raft = sql_rows(
        &admin,
        "SELECT term, last_log_index, last_applied FROM raft",
    )
    .await?;
    drop(client);
    let status = daemon.stop()?;
    assert!(status.success());

    let before = dir_listing(&dir.data())?;
    for sql in COMPARED {
        assert_eq!(offline_json(&dir.data(), sql)?, live[sql], "{sql}");
    }
    let offline_raft = offline_json(
        &dir.data(),
        "SELECT term, last_log_index, last_applied FROM raft",
    )?;
    assert_eq!(offline_raft, Value::Array(raft));
    let role = offline_json(&dir.data(), "SELECT role, leader FROM raft")?;
    assert_eq!(role, json!([{"role": "stopped", "leader": null}]));
    assert_eq!(
        dir_listing(&dir.data())?,
        before,
        "offline SQL changed the dir"
    );

    let table = run_daemon(&[
        "sql".as_ref(),
        "--data-dir".as_ref(),
        dir.data().as_os_str(),
        "SELECT dest, hops FROM routes".as_ref(),
    ])?;
    let text = String::from_utf8(table.stdout)?;
    assert!(
        text.contains("| dest") && text.contains("| local"),
        "{text}"
    );

    let refused = run_daemon(&[
        "sql".as_ref(),
        "--data-dir".as_ref(),
        dir.data().as_os_str(),
        "DROP TABLE routes".as_ref(),
    ])?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("read-only"));
    Ok(())
}

/// Names, sizes and modification times of every file under `dir`.
fn dir_listing(dir: &std::path::Path) -> Result<Vec<(String, u64, std::time::SystemTime)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((
                    entry.path().display().to_string(),
                    meta.len(),
                    meta.modified()?,
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_stay_consistent_while_a_thousand_writes_commit() -> Result<()> {
    const WRITERS: usize = 10;
    const PER_WRITER: usize = 100;
    const READERS: usize = 20;
    let dir = TestDir::new();
    // Every reader runs at once: the concurrency limit must not refuse one.
    let daemon = InProcess::start(&dir, |c| c.sql.max_concurrent = READERS).await?;
    let node = daemon.node.clone();
    let admin = daemon.admin_url.clone();

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let node = node.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                node.propose_ok(EventKind::FunctionRegistered {
                    name: format!("w{w}"),
                    function_id: format!("w{w}"),
                    version: format!("1.0.{i}"),
                    resources: Vec::new(),
                    provider: "load".into(),
                    node_id: "n".into(),
                    cluster_id: "local".into(),
                })
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let admin = admin.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = 0usize;
            let mut partial = false;
            while seen < WRITERS * PER_WRITER {
                let rows = sql_rows(
                    &admin,
                    "SELECT name, version FROM functions WHERE provider = 'load'",
                )
                .await?;
                let mut per_writer: BTreeMap<String, Vec<u64>> = BTreeMap::new();
                for row in &rows {
                    let patch = row["version"]
                        .as_str()
                        .and_then(|v| v.rsplit('.').next())
                        .and_then(|p| p.parse().ok())
                        .context("version")?;
                    per_writer
                        .entry(row["name"].as_str().unwrap_or_default().to_string())
                        .or_default()
                        .push(patch);
                }
                for (writer, mut patches) in per_writer {
                    patches.sort_unstable();
                    let expected: Vec<u64> = (0..patches.len() as u64).collect();
                    ensure!(patches == expected, "{writer} is not a prefix: {patches:?}");
                }
                ensure!(
                    rows.len() >= seen,
                    "went back from {seen} to {} rows",
                    rows.len()
                );
                seen = rows.len();
                partial |= 0 < seen && seen < WRITERS * PER_WRITER;
            }
            anyhow::Ok((seen, partial))
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let mut saw_partial = 0;
    for reader in readers {
        let (last_seen, partial) =
            tokio::time::timeout(Duration::from_secs(60), reader).await???;
        // The last answer holds every write, and not one row more.
        assert_eq!(last_seen, WRITERS * PER_WRITER);
        saw_partial += usize::from(partial);
    }
    // The queries ran while the writes committed: some saw a part of them.
    assert!(
        saw_partial > 0,
        "no reader saw a state between the first and the last write"
    );
    let count = sql_rows(
        &admin,
        "SELECT count(*) AS n FROM functions WHERE provider = 'load'",
    )
    .await?;
    assert_eq!(count, [json!({"n": WRITERS * PER_WRITER})]);
    daemon.stop().await
}

/// Every `sql` block of docs/sql.md runs against a real daemon holding the
/// seeded events and returns exactly the rows those events make. Columns
/// that differ between runs (times, ages) are checked for their shape and
/// then compared as `"*"` (NULL stays NULL); rows of queries whose order is not total are
/// compared as sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_in_the_sql_docs_runs() -> Result<()> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/sql.md"))?;
    let examples: Vec<&str> = doc
        .split("```sql\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(str::trim)
        .collect();
    let dir = TestDir::new();
    let daemon = InProcess::start(&dir, keep_links).await?;
    seed(&daemon.node).await?;
    seed_federation(&daemon.node).await?;
    // Linked, the node puts its signing key on the log within a second:
    // wait for it, so it lands before the later seeds,
    // where the examples expect it.
    eventually(
        "the node's route key on the log",
        Duration::from_secs(30),
        || async {
            let keys = sql_rows(&daemon.admin_url, "SELECT key_id FROM route_keys")
                .await
                .map_err(|e| e.to_string())?;
            if keys.len() == 1 {
                Ok(())
            } else {
                Err(format!("{keys:?}"))
            }
        },
    )
    .await?;
    seed_credentials(&daemon.node).await?;
    seed_queues(&daemon.node).await?;
    seed_cache(&daemon.node).await?;
    let me = daemon.node.identity().node_id.clone();
    let last = daemon.node.applied().last_applied_index();
    let expectations = docs_expectations(&me, &daemon.client_url, last);
    let documented: Vec<&str> = expectations.iter().map(|e| e.sql).collect();
    assert_eq!(
        examples, documented,
        "docs/sql.md examples changed: give each one its expected rows here"
    );
    for expected in expectations {
        let mut rows = sql_rows(&daemon.admin_url, expected.sql)
            .await
            .with_context(|| format!("docs example: {}", expected.sql))?;
        for row in &mut rows {
            for &(column, shape) in expected.varying {
                let value = &mut row[column];
                if value.is_null() {
                    continue;
                }
                assert!(
                    shape(value),
                    "{column} = {value} has not the expected shape: {}",
                    expected.sql
                );
                *value = json!("*");
            }
        }
        let mut want = expected.rows.as_array().context("rows")?.clone();
        if !expected.ordered {
            rows.sort_by_key(Value::to_string);
            want.sort_by_key(Value::to_string);
        }
        assert_eq!(rows, want, "docs example: {}", expected.sql);
    }
    daemon.stop().await
}

/// A check of a column value that changes from run to run.
type Shape = fn(&Value) -> bool;

/// The rows one docs example returns on the seeded node.
struct DocsExpectation {
    sql: &'static str,
    rows: Value,
    /// Columns that change from run to run, each with a check of its shape.
    varying: &'static [(&'static str, Shape)],
    /// Whether the query's ORDER BY fixes the order of every row.
    ordered: bool,
}

/// A link state before the first answer.
fn dialling(v: &Value) -> bool {
    v == "connecting" || v == "unknown"
}

fn timestamp(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|t| t.starts_with("20") && t.ends_with('Z'))
}

fn age_ms(v: &Value) -> bool {
    v.as_u64().is_some_and(|ms| ms < 60_000)
}

/// What each example of docs/sql.md returns after `seed`,
/// `seed_federation`, `seed_queues` and `seed_cache` on node `me` (client URL `url`, last applied `last`),
/// in the order the doc shows them.
fn docs_expectations(me: &str, url: &str, last: u64) -> Vec<DocsExpectation> {
    vec![
        DocsExpectation {
            sql: "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
            rows: json!([
                {"table_name": "cache_entries"}, {"table_name": "credentials"},
                {"table_name": "events"},
                {"table_name": "federation_links"},
                {"table_name": "functions"}, {"table_name": "nodes"},
                {"table_name": "peers"}, {"table_name": "queue_messages"},
                {"table_name": "queues"}, {"table_name": "raft"},
                {"table_name": "route_keys"},
                {"table_name": "routes"}, {"table_name": "subscriptions"}
            ]),
            varying: &[],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT node_id, cluster_id, status, joined_at FROM nodes WHERE status = 'up'",
            rows: json!([{"node_id": me, "cluster_id": "local", "status": "up", "joined_at": "*"}]),
            varying: &[("joined_at", timestamp)],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT name, version, provider FROM functions WHERE name = 'echo'",
            rows: json!([{"name": "echo", "version": "1.0.0", "provider": "builtin"}]),
            varying: &[],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT subscription_id, pattern, durable FROM subscriptions ORDER BY subscription_id",
            rows: json!([
                {"subscription_id": "audit", "pattern": "orders.#", "durable": true},
                {"subscription_id": "audit", "pattern": "users.*.created", "durable": true}
            ]),
            varying: &[],
            // Both rows have the same subscription_id.
            ordered: false,
        },
        DocsExpectation {
            sql: "SELECT dest, next_hop, hops, cost, state FROM routes WHERE dest = 'c2' ORDER BY cost",
            rows: json!([
                {"dest": "c2", "next_hop": "c3", "hops": 2, "cost": 10, "state": "active"},
                {"dest": "c2", "next_hop": "c9", "hops": 2, "cost": 20, "state": "active"}
            ]),
            varying: &[],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT dest, next_hop, path, hops, latency_ms, score, state FROM routes WHERE dest = 'c3' ORDER BY score",
            rows: json!([
                {"dest": "c3", "next_hop": "c2", "path": ["local", "c2", "c3"], "hops": 2, "latency_ms": 12.0, "score": 32.0, "state": "active"},
                {"dest": "c3", "next_hop": "c4", "path": ["local", "c4", "c5", "c3"], "hops": 3, "latency_ms": 30.5, "score": 95.5, "state": "backup"}
            ]),
            varying: &[],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT next_hop, path, score, rank, selected, filtered_reason FROM route_explain('c3') ORDER BY rank",
            rows: json!([
                {"next_hop": "c2", "path": ["local", "c2", "c3"], "score": 32.0, "rank": 1, "selected": true, "filtered_reason": null},
                {"next_hop": "c4", "path": ["local", "c4", "c5", "c3"], "score": 95.5, "rank": 2, "selected": false, "filtered_reason": "lower_rank"}
            ]),
            varying: &[],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT cluster_id, urls, state, rtt_ms, announcements_in, rejections FROM federation_links ORDER BY cluster_id",
            // The links lead nowhere: the leader is still dialling them
            // (`unknown` until its first try).
            rows: json!([
                {"cluster_id": "c2", "urls": ["ws://127.0.0.1:9/c2"], "state": "*", "rtt_ms": null, "announcements_in": 0, "rejections": "{}"},
                {"cluster_id": "c4", "urls": ["ws://127.0.0.1:9/c4"], "state": "*", "rtt_ms": null, "announcements_in": 0, "rejections": "{}"}
            ]),
            varying: &[("state", dialling)],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT cluster, \"primary\", active, expires_at FROM route_keys ORDER BY cluster",
            // Linked, this node put its own key on the log.
            rows: json!([{"cluster": "local", "primary": true, "active": true, "expires_at": null}]),
            varying: &[],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT name, call, publish, queues, admin, active FROM credentials",
            // Set, then revoked.
            rows: json!([{"name": "app", "call": "echo", "publish": "orders.#", "queues": "jobs", "admin": false, "active": false}]),
            varying: &[],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT name, queue_type, depth, in_flight, dlq_depth, oldest_age_ms FROM queues WHERE depth > 0 ORDER BY depth DESC",
            // orders: o1 ready, o3 delayed (o4 leased, o2 dead-lettered);
            // jobs: j1 ready, j2 delayed; orders-dead: o2.
            rows: json!([
                {"name": "jobs", "queue_type": "delay", "depth": 2, "in_flight": 0, "dlq_depth": null, "oldest_age_ms": "*"},
                {"name": "orders", "queue_type": "priority", "depth": 2, "in_flight": 1, "dlq_depth": 1, "oldest_age_ms": "*"},
                {"name": "orders-dead", "queue_type": "fifo", "depth": 1, "in_flight": 0, "dlq_depth": null, "oldest_age_ms": "*"}
            ]),
            varying: &[("oldest_age_ms", age_ms)],
            // jobs and orders tie on depth.
            ordered: false,
        },
        DocsExpectation {
            sql: "SELECT seq, message_id, state, consumer, attempts, lease_deadline FROM queue_messages WHERE queue = 'orders' ORDER BY seq",
            rows: json!([
                {"seq": 1, "message_id": "o1", "state": "ready", "consumer": null, "attempts": 0, "lease_deadline": null},
                {"seq": 3, "message_id": "o3", "state": "delayed", "consumer": null, "attempts": 0, "lease_deadline": null},
                {"seq": 4, "message_id": "o4", "state": "leased", "consumer": "worker-1", "attempts": 1, "lease_deadline": "*"}
            ]),
            varying: &[("lease_deadline", timestamp)],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT queue, consumer, count(*) AS leased, min(lease_deadline) AS next_deadline FROM queue_messages WHERE state = 'leased' GROUP BY queue, consumer",
            rows: json!([{"queue": "orders", "consumer": "worker-1", "leased": 1, "next_deadline": "*"}]),
            varying: &[("next_deadline", timestamp)],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT identifier, version, tags, size_bytes, revision, expires_at, hits, tier FROM cache_entries WHERE namespace = 'users' ORDER BY identifier",
            rows: json!([
                {"identifier": "u1", "version": null, "tags": ["admin", "eu"], "size_bytes": 27, "revision": 2, "expires_at": null, "hits": 0, "tier": "disk"},
                {"identifier": "u2", "version": "v2", "tags": [], "size_bytes": 5, "revision": 1, "expires_at": null, "hits": 0, "tier": "disk"}
            ]),
            varying: &[],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT namespace, count(*) AS entries, sum(size_bytes) AS bytes, sum(CASE WHEN tier = 'memory' THEN 1 ELSE 0 END) AS in_memory FROM cache_entries GROUP BY namespace ORDER BY bytes DESC",
            rows: json!([
                {"namespace": "users", "entries": 2, "bytes": 32, "in_memory": 0},
                {"namespace": "sessions", "entries": 1, "bytes": 13, "in_memory": 0}
            ]),
            varying: &[],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT index, kind, summary FROM events WHERE index > 1 ORDER BY index DESC LIMIT 10",
            // The last ten events, newest first: the cache puts, the lease,
            // nack and lease of `orders`, the two sends, the third declare.
            rows: json!([
                {"index": last, "kind": "cache_put", "summary": r#"{"key":{"identifier":"s1","namespace":"sessions","version":""},"metadata":"null","tags":[],"ttl_ms":3600000,"value":"{\"token\":\"t\"}"}"#},
                {"index": last - 1, "kind": "cache_put", "summary": r#"{"key":{"identifier":"u2","namespace":"users","version":"v2"},"metadata":"null","tags":[],"ttl_ms":null,"value":"\"bob\""}"#},
                {"index": last - 2, "kind": "cache_put", "summary": r#"{"key":{"identifier":"u1","namespace":"users","version":""},"metadata":"null","tags":["admin","eu"],"ttl_ms":null,"value":"{\"admin\":true,\"name\":\"ada\"}"}"#},
                {"index": last - 3, "kind": "cache_put", "summary": r#"{"key":{"identifier":"u1","namespace":"users","version":""},"metadata":"null","tags":["admin"],"ttl_ms":null,"value":"{\"name\":\"ada\"}"}"#},
                {"index": last - 4, "kind": "messages_leased", "summary": r#"{"consumer":"worker-1","lease_ms":600000,"max":1,"queue":"orders","topic_pattern":null}"#},
                {"index": last - 5, "kind": "message_nacked", "summary": r#"{"consumer":"worker-1","delay_ms":0,"message_id":"o2","queue":"orders"}"#},
                {"index": last - 6, "kind": "messages_leased", "summary": r#"{"consumer":"worker-1","lease_ms":600000,"max":1,"queue":"orders","topic_pattern":null}"#},
                {"index": last - 7, "kind": "messages_sent", "summary": r#"{"messages":[{"client_id":true,"delay_ms":0,"delivery":"AtMostOnce","message_id":"j1","payload":"{\"id\":\"j1\"}","priority":0,"topic":"orders.j1","ttl_ms":null},{"client_id":true,"delay_ms":3600000,"delivery":"AtLeastOnce","message_id":"j2","payload":"{\"id\":\"j2\"}","priority":0,"topic":"orders.j2","ttl_ms":null}],"queue":"jobs"}"#},
                {"index": last - 8, "kind": "messages_sent", "summary": r#"{"messages":[{"client_id":true,"delay_ms":0,"delivery":"AtLeastOnce","message_id":"o1","payload":"{\"id\":\"o1\"}","priority":1,"topic":"orders.o1","ttl_ms":null},{"client_id":true,"delay_ms":0,"delivery":"AtLeastOnce","message_id":"o2","payload":"{\"id\":\"o2\"}","priority":9,"topic":"orders.o2","ttl_ms":null},{"client_id":true,"delay_ms":3600000,"delivery":"AtLeastOnce","message_id":"o3","payload":"{\"id\":\"o3\"}","priority":5,"topic":"orders.o3","ttl_ms":null},{"client_id":true,"delay_ms":0,"delivery":"AtLeastOnce","message_id":"o4","payload":"{\"id\":\"o4\"}","priority":7,"topic":"orders.o4","ttl_ms":null}],"queue":"orders"}"#},
                {"index": last - 9, "kind": "queue_declared", "summary": r#"{"name":"idle","settings":{"ack_timeout_ms":5000,"dead_letter_queue":null,"dedup_window_ms":60000,"max_retries":2,"max_size":10,"message_ttl_ms":null,"queue_type":"Fifo","visibility_timeout_ms":5000}}"#}
            ]),
            varying: &[],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT role, term, leader, last_log_index - last_applied AS apply_lag FROM raft",
            rows: json!([{"role": "leader", "term": 1, "leader": me, "apply_lag": 0}]),
            varying: &[],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT peer, address, state, match_index, lag FROM peers ORDER BY peer",
            rows: json!([{"peer": me, "address": url, "state": "leader", "match_index": last, "lag": 0}]),
            varying: &[],
            ordered: true,
        },
        DocsExpectation {
            sql: "SELECT n.node_id, n.status, count(f.name) AS functions FROM nodes n LEFT JOIN functions f ON f.node_id = n.node_id GROUP BY n.node_id, n.status",
            rows: json!([
                {"node_id": me, "status": "up", "functions": 14},
                {"node_id": "n2", "status": "left", "functions": 1}
            ]),
            varying: &[],
            ordered: false,
        },
        DocsExpectation {
            sql: "SELECT kind, count(*) AS events FROM events GROUP BY kind ORDER BY events DESC",
            rows: json!([
                {"kind": "function_registered", "events": 15},
                {"kind": "route_announced", "events": 4},
                {"kind": "cache_put", "events": 4},
                {"kind": "queue_declared", "events": 3},
                {"kind": "node_joined", "events": 2},
                {"kind": "federation_linked", "events": 2},
                {"kind": "routes_learned", "events": 2},
                {"kind": "messages_sent", "events": 2},
                {"kind": "messages_leased", "events": 2},
                {"kind": "membership", "events": 1},
                {"kind": "node_left", "events": 1},
                {"kind": "message_nacked", "events": 1},
                {"kind": "subscription_added", "events": 1},
                {"kind": "route_key_added", "events": 1},
                {"kind": "credential_set", "events": 1},
                {"kind": "credential_revoked", "events": 1}
            ]),
            varying: &[],
            // Kinds with the same count tie.
            ordered: false,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_run_on_threads_of_the_lowest_cpu_priority() -> Result<()> {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[])?;
    // A scan starts a blocking thread of the SQL runtime too.
    sql_rows(&daemon.ready.admin_url, "SELECT count(*) FROM events").await?;
    let mut policy_by_thread: Vec<(String, i64)> = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        let (name, rest) = stat
            .split_once(" (")
            .and_then(|(_, after)| after.rsplit_once(") "))
            .context("a /proc stat line")?;
        // Fields after the name start at field 3 (state); the scheduling
        // policy is field 41.
        let policy = rest
            .split_whitespace()
            .nth(38)
            .context("the policy field")?
            .parse()?;
        policy_by_thread.push((name.to_string(), policy));
    }
    let sql: Vec<_> = policy_by_thread
        .iter()
        .filter(|(name, _)| name.starts_with("mpreg-sql"))
        .collect();
    ensure!(
        sql.len() >= 3,
        "two workers and a scan thread: {policy_by_thread:?}"
    );
    ensure!(
        sql.iter()
            .all(|(_, policy)| *policy == i64::from(libc::SCHED_IDLE)),
        "{policy_by_thread:?}"
    );
    ensure!(
        policy_by_thread
            .iter()
            .any(|(name, policy)| !name.starts_with("mpreg-sql")
                && *policy == i64::from(libc::SCHED_OTHER)),
        "the rest of the node keeps its priority: {policy_by_thread:?}"
    );
    Ok(())
}
