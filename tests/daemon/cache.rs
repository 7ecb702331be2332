//! The replicated cache against a real daemon: reads and writes, TTL,
//! atomic operations under contention, invalidation, eviction under a
//! small memory budget, change notifications, bad input and kill -9.

use std::time::Duration;

use mpreg_client::{Client, ClientError};
use mpreg_tests::{Daemon, TestDir, replay};
use serde_json::{Value, json};

fn key(namespace: &str, identifier: &str) -> Value {
    json!({"namespace": namespace, "identifier": identifier})
}

async fn put(client: &Client, namespace: &str, identifier: &str, value: Value) -> Value {
    client
        .cache(json!({"operation": "put", "key": key(namespace, identifier), "value": value}))
        .await
        .expect("put")
}

async fn get(client: &Client, namespace: &str, identifier: &str) -> Value {
    client
        .cache(json!({"operation": "get", "key": key(namespace, identifier)}))
        .await
        .expect("get")
}

async fn atomic(client: &Client, identifier: &str, op: Value) -> Result<Value, ClientError> {
    client
        .cache(json!({"operation": "atomic", "key": key("atomic", identifier), "atomic_operation": op}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_and_memory_then_disk_levels() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    let written = client
        .cache(
            json!({"operation": "put", "key": key("users", "u1"), "value": {"name": "ada"},
                      "metadata": {"computation_cost_ms": 5000.0, "dependencies": ["input:1"]}}),
        )
        .await
        .unwrap();
    assert_eq!(
        (&written["status"], &written["revision"]),
        (&json!("ok"), &json!(1))
    );
    let hit = get(&client, "users", "u1").await;
    assert_eq!(hit["status"], json!("hit"));
    assert_eq!(
        hit["cache_level"],
        json!("L2"),
        "first read loads from RocksDB"
    );
    assert_eq!(hit["entry"]["value"], json!({"name": "ada"}));
    assert_eq!(hit["entry"]["metadata"]["dependencies"], json!(["input:1"]));
    let again = get(&client, "users", "u1").await;
    assert_eq!(
        again["cache_level"],
        json!("L1"),
        "then it is served from memory"
    );
    let replaced = put(&client, "users", "u1", json!("v2")).await;
    assert_eq!(replaced["revision"], json!(2));
    assert_eq!(
        get(&client, "users", "u1").await["entry"]["value"],
        json!("v2")
    );
    let strong = client
        .cache(json!({"operation": "get", "key": key("users", "u1"),
                      "options": {"consistency_level": "strong"}}))
        .await
        .unwrap();
    assert_eq!(strong["entry"]["revision"], json!(2));
    let deleted = client
        .cache(json!({"operation": "delete", "key": key("users", "u1")}))
        .await
        .unwrap();
    assert_eq!(deleted["changed"], json!(true));
    assert_eq!(get(&client, "users", "u1").await["status"], json!("miss"));
    let versioned = json!({"namespace": "users", "identifier": "u2", "version": "v1"});
    client
        .cache(json!({"operation": "put", "key": versioned, "value": 1}))
        .await
        .unwrap();
    assert_eq!(
        get(&client, "users", "u2").await["status"],
        json!("miss"),
        "versions are part of the key"
    );
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_put_and_get_agree_with_the_json_requests() {
    let dir = TestDir::new();
    let daemon = Daemon::start_configured(&dir, "cache_max_value_bytes = 100").unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    assert_eq!(client.cache_get("typed", "a").await.unwrap(), None, "miss");
    let first = client
        .cache_put("typed", "a", &json!({"n": [1, "two"]}))
        .await
        .unwrap();
    assert_eq!((first.changed, first.revision), (true, 1));
    assert_eq!(
        client
            .cache_put("typed", "a", "plain")
            .await
            .unwrap()
            .revision,
        2,
        "a second put is the next revision"
    );
    assert_eq!(
        client.cache_get("typed", "a").await.unwrap(),
        Some(json!("plain"))
    );
    assert_eq!(
        get(&client, "typed", "a").await["entry"]["value"],
        json!("plain"),
        "the JSON get reads what the typed put wrote"
    );
    put(&client, "typed", "b", json!({"from": "json"})).await;
    assert_eq!(
        client.cache_get("typed", "b").await.unwrap(),
        Some(json!({"from": "json"})),
        "the typed get reads what the JSON put wrote"
    );
    match client.cache_put("typed", "c", &"y".repeat(200)).await {
        Err(ClientError::Refused(reason)) => assert!(
            reason.contains("cache_max_value_bytes") && reason.contains("1006"),
            "{reason}"
        ),
        other => panic!("an oversize value was accepted: {other:?}"),
    }
    match client.cache_get("", "a").await {
        Err(ClientError::Refused(reason)) => {
            assert!(reason.contains("must not be empty"), "{reason}")
        }
        other => panic!("an empty namespace was accepted: {other:?}"),
    }
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_never_served() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    client
        .cache(
            json!({"operation": "put", "key": key("t", "short"), "value": 1,
                      "metadata": {"ttl_seconds": 0.4}}),
        )
        .await
        .unwrap();
    let fresh = get(&client, "t", "short").await;
    assert_eq!(fresh["status"], json!("hit"));
    assert!(fresh["entry"]["ttl_seconds"].as_f64().unwrap() <= 0.4);
    let deadline = std::time::Instant::now() + Duration::from_millis(400);
    // Poll across the expiry: a hit is only ever seen before it.
    loop {
        let now = std::time::Instant::now();
        let read = get(&client, "t", "short").await;
        if read["status"] == json!("hit") {
            assert!(
                now < deadline + Duration::from_millis(50),
                "served after its TTL"
            );
        } else {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin = daemon.ready.admin_url.as_str();
    mpreg_tests::eventually(
        "the leader proposes the expiry",
        Duration::from_secs(10),
        || async move {
            let fired =
                mpreg_tests::sql_rows(admin, "SELECT kind FROM events WHERE kind = 'timers_fired'")
                    .await
                    .map_err(|e| e.to_string())?;
            let left = mpreg_tests::sql_rows(
                admin,
                "SELECT identifier FROM cache_entries WHERE namespace = 't'",
            )
            .await
            .map_err(|e| e.to_string())?;
            if !fired.is_empty() && left.iter().all(|r| r["identifier"] != "short") {
                Ok(())
            } else {
                Err(format!(
                    "timers_fired events {fired:?}, entries of t {left:?}"
                ))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(get(&client, "t", "short").await["status"], json!("miss"));
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_has_exactly_one_winner_per_round() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(Client::connect(&daemon.ready.client_url).await.unwrap());
    }
    for round in 0..5 {
        let expected = if round == 0 {
            Value::Null
        } else {
            json!(format!("winner-{}", round - 1))
        };
        let mut attempts = Vec::new();
        for contender in 0..50 {
            let client = &clients[contender % clients.len()];
            let op = json!({"operation_type": "compare_and_swap", "expected_value": expected,
                            "new_value": format!("c{contender}")});
            attempts.push(atomic(client, "lock", op));
        }
        let results = futures_util::future::join_all(attempts).await;
        let winners: Vec<&Value> = results
            .iter()
            .map(|r| r.as_ref().expect("atomic call"))
            .filter(|r| r["changed"] == json!(true))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let won = winners[0]["value"].clone();
        // Set up the next round's expected value.
        let reset = json!({"operation_type": "compare_and_swap", "expected_value": won,
                           "new_value": format!("winner-{round}")});
        assert_eq!(
            atomic(&clients[0], "lock", reset).await.unwrap()["changed"],
            json!(true)
        );
    }
    let taken = json!({"operation_type": "test_and_set", "new_value": "x",
                       "conditions": {"if_not_exists": true}});
    assert_eq!(
        atomic(&clients[0], "lock", taken).await.unwrap()["changed"],
        json!(false)
    );
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_from_20_clients_sum_exactly() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let mut tasks = Vec::new();
    for c in 0..20 {
        let url = daemon.ready.client_url.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&url).await.unwrap();
            for _ in 0..25 {
                let by = if c % 2 == 0 { 3 } else { 1 };
                atomic(
                    &client,
                    "counter",
                    json!({"operation_type": "increment", "increment_by": by}),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    assert_eq!(
        get(&client, "atomic", "counter").await["entry"]["value"],
        json!(10 * 25 * 3 + 10 * 25)
    );
    let down = atomic(
        &client,
        "counter",
        json!({"operation_type": "decrement", "increment_by": 1000}),
    )
    .await
    .unwrap();
    assert_eq!(down["value"], json!(0));
    let appended = atomic(
        &client,
        "list",
        json!({"operation_type": "append", "new_value": 1}),
    )
    .await
    .unwrap();
    assert_eq!(appended["value"], json!([1]));
    let wrong = atomic(&client, "list", json!({"operation_type": "increment"})).await;
    assert!(
        matches!(&wrong, Err(ClientError::Refused(r)) if r.contains("cannot increment") && r.contains("1010")),
        "{wrong:?}"
    );
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_by_pattern_and_namespace_clear() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    for id in ["user.1.profile", "user.1.avatar", "user.2.profile", "org.1"] {
        put(&client, "app", id, json!(id)).await;
        get(&client, "app", id).await;
    }
    put(&client, "other", "user.1.profile", json!(0)).await;
    let dropped = client
        .cache(json!({"operation": "invalidate", "namespace": "app", "pattern": "user.*.profile"}))
        .await
        .unwrap();
    assert_eq!(dropped["invalidated"], json!(2));
    assert_eq!(
        get(&client, "app", "user.1.profile").await["status"],
        json!("miss")
    );
    assert_eq!(
        get(&client, "app", "user.1.avatar").await["status"],
        json!("hit")
    );
    assert_eq!(
        get(&client, "other", "user.1.profile").await["status"],
        json!("hit"),
        "namespace-scoped"
    );
    let cleared = client
        .cache(json!({"operation": "namespace",
                      "namespace_operation": {"operation_type": "clear", "namespace": "app"}}))
        .await
        .unwrap();
    assert_eq!(cleared["invalidated"], json!(2));
    assert_eq!(get(&client, "app", "org.1").await["status"], json!("miss"));
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_memory_budget_evicts_but_keeps_every_value_readable() {
    let dir = TestDir::new();
    let daemon = Daemon::start_configured(&dir, "cache_memory_bytes = 65536").unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    let blob = "x".repeat(2000);
    for i in 0..200 {
        put(
            &client,
            "big",
            &format!("k{i}"),
            json!(format!("{i}:{blob}")),
        )
        .await;
    }
    for i in 0..200 {
        let read = get(&client, "big", &format!("k{i}")).await;
        assert_eq!(read["entry"]["value"], json!(format!("{i}:{blob}")), "k{i}");
    }
    let metrics = mpreg_tests::metrics_of(&daemon.ready.admin_url)
        .await
        .unwrap();
    let evictions = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mpreg_cache_evictions_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("eviction counter");
    assert!(evictions > 100.0, "{evictions} evictions");
    let bytes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mpreg_cache_memory_bytes "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("memory gauge");
    assert!(bytes <= 65536.0, "{bytes} bytes in memory");
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_notifications_and_refused_input() {
    let dir = TestDir::new();
    let daemon = Daemon::start_configured(&dir, "cache_max_value_bytes = 100").unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    let mut changes = client.subscribe(&["cache.inventory.#"], 0).await.unwrap();
    client
        .cache(json!({"operation": "put", "key": key("inventory", "sku-1"), "value": {"stock": 3},
                      "options": {"notify_on_change": true, "notification_topic": "cache.inventory.updates"}}))
        .await
        .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(note.message.payload["new_value"], json!({"stock": 3}));
    assert_eq!(
        note.message.payload["cache_key"]["identifier"],
        json!("sku-1")
    );

    let refused = |r: Result<Value, ClientError>| match r {
        Err(ClientError::Refused(reason)) => reason,
        other => panic!("accepted: {other:?}"),
    };
    let big = refused(
        client
            .cache(json!({"operation": "put", "key": key("n", "k"), "value": "y".repeat(200)}))
            .await,
    );
    assert!(
        big.contains("limit (cache_max_value_bytes) is 100") && big.contains("1006"),
        "{big}"
    );
    let unknown = refused(
        client
            .cache(json!({"operation": "frobnicate", "key": key("n", "k")}))
            .await,
    );
    assert!(
        unknown.contains("unknown cache operation frobnicate"),
        "{unknown}"
    );
    let keyless = refused(client.cache(json!({"operation": "get"})).await);
    let bad_topic = refused(
        client
            .cache(json!({"operation": "put", "key": key("n", "k"), "value": 1,
                          "options": {"notify_on_change": true, "notification_topic": "a..b"}}))
            .await,
    );
    assert!(bad_topic.contains("empty level"), "{bad_topic}");
    assert_eq!(
        get(&client, "n", "k").await["status"],
        json!("miss"),
        "refused before writing"
    );
    assert!(keyless.contains("get needs a key"), "{keyless}");
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_acknowledged_writes_and_deletes() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    for i in 0..300 {
        put(&client, "durable", &format!("k{i}"), json!(i)).await;
    }
    for i in (0..300).step_by(3) {
        client
            .cache(json!({"operation": "delete", "key": key("durable", &format!("k{i}"))}))
            .await
            .unwrap();
    }
    atomic(
        &client,
        "n",
        json!({"operation_type": "increment", "increment_by": 7}),
    )
    .await
    .unwrap();
    drop(client);
    daemon.kill9().unwrap();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    for i in 0..300 {
        let read = get(&client, "durable", &format!("k{i}")).await;
        if i % 3 == 0 {
            assert_eq!(read["status"], json!("miss"), "k{i} was deleted");
        } else {
            assert_eq!(read["entry"]["value"], json!(i), "k{i}");
        }
    }
    assert_eq!(
        get(&client, "atomic", "n").await["entry"]["value"],
        json!(7)
    );
    drop(client);
    let status = daemon.status().await.unwrap();
    daemon.kill9().unwrap();
    let replayed = replay(&dir.data()).unwrap();
    assert_eq!(replayed["views_digest"], status["views_digest"]);
    assert_eq!(replayed["last_applied"], status["last_applied"]);
}
