//! Durable queues against a real daemon: ordering, delays, visibility
//! timeouts, retries into the dead-letter queue, dedup, TTL, pushed
//! subscriptions, disconnects, broadcast and refused input.

use std::time::{Duration, Instant};

use mpreg_client::{Client, ClientError, QueueSubscription};
use mpreg_tests::{Daemon, TestDir, eventually, sql_rows};
use serde_json::{Value, json};

async fn start() -> (TestDir, Daemon, Client) {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    (dir, daemon, client)
}

async fn declare(client: &Client, body: Value) {
    client.queue("create", body).await.expect("declare");
}

async fn send(client: &Client, queue: &str, extra: Value) -> String {
    let mut body = json!({"queue_name": queue});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    let reply = client.queue("send", body).await.expect("send");
    reply["message_id"]
        .as_str()
        .expect("message_id")
        .to_string()
}

/// One pull receive; the reply's `message` (or `Null` when empty).
async fn receive(client: &Client, queue: &str, subscriber: &str, timeout_s: f64) -> Value {
    let reply = client
        .queue(
            "receive",
            json!({"queue_name": queue, "subscriber_id": subscriber, "timeout_seconds": timeout_s}),
        )
        .await
        .expect("receive");
    reply["message"].clone()
}

async fn ack(client: &Client, queue: &str, subscriber: &str, message_id: &str) {
    client
        .queue(
            "ack",
            json!({"queue_name": queue, "message_id": message_id, "subscriber_id": subscriber}),
        )
        .await
        .expect("ack");
}

async fn next_pushed(sub: &mut QueueSubscription) -> Value {
    tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("a pushed message within 20s")
        .expect("subscription open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_order_and_acks_remove_messages() {
    let (_dir, daemon, client) = start().await;
    declare(&client, json!({"queue_name": "jobs"})).await;
    for i in 0..20 {
        send(&client, "jobs", json!({"payload": {"n": i}})).await;
    }
    for i in 0..20 {
        let m = receive(&client, "jobs", "w", 1.0).await;
        assert_eq!(m["payload"]["n"], json!(i), "FIFO order");
        assert_eq!(m["attempts"], json!(1));
        ack(&client, "jobs", "w", m["message_id"].as_str().unwrap()).await;
    }
    assert_eq!(receive(&client, "jobs", "w", 0.05).await, Value::Null);
    let stats = client
        .queue("stats", json!({"queue_name": "jobs"}))
        .await
        .unwrap();
    assert_eq!(stats["queues"][0]["depth"], json!(0));
    assert_eq!(stats["queues"][0]["in_flight"], json!(0));
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_order_then_send_order() {
    let (_dir, daemon, client) = start().await;
    declare(
        &client,
        json!({"queue_name": "p", "queue_type": "priority"}),
    )
    .await;
    for (n, priority) in [(0, 1), (1, 9), (2, 5), (3, 9), (4, 1)] {
        send(&client, "p", json!({"payload": n, "priority": priority})).await;
    }
    let mut order = Vec::new();
    for _ in 0..5 {
        let m = receive(&client, "p", "w", 1.0).await;
        order.push(m["payload"].as_i64().unwrap());
    }
    assert_eq!(order, [1, 3, 2, 0, 4]);
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_message_waits_for_its_delay() {
    let (_dir, daemon, client) = start().await;
    declare(&client, json!({"queue_name": "d", "queue_type": "delay"})).await;
    let sent = Instant::now();
    send(
        &client,
        "d",
        json!({"payload": "later", "delay_seconds": 1.0}),
    )
    .await;
    send(&client, "d", json!({"payload": "now"})).await;
    assert_eq!(
        receive(&client, "d", "w", 1.0).await["payload"],
        json!("now")
    );
    let later = receive(&client, "d", "w", 5.0).await;
    assert_eq!(later["payload"], json!("later"));
    // Event times are whole milliseconds: the delay runs from the send's
    // time rounded down, up to 1 ms before the send arrived.
    assert!(
        sent.elapsed() >= Duration::from_millis(999),
        "delivered after {:?}, before its 1 s delay",
        sent.elapsed()
    );
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visibility_timeout_redelivers_then_retries_end_in_the_dlq() {
    let (_dir, daemon, client) = start().await;
    declare(
        &client,
        json!({"queue_name": "v", "default_visibility_timeout_seconds": 0.3, "max_retries": 2}),
    )
    .await;
    let id = send(&client, "v", json!({"payload": "poison"})).await;
    for attempt in 1..=3 {
        let m = receive(&client, "v", "w", 5.0).await;
        assert_eq!(m["message_id"], json!(id));
        assert_eq!(m["attempts"], json!(attempt), "attempts count deliveries");
        // Not acked: the lease runs out and the message comes back.
    }
    let dead = receive(&client, "v.dlq", "w", 5.0).await;
    assert_eq!(dead["message_id"], json!(id), "out of retries: in the DLQ");
    assert_eq!(dead["payload"], json!("poison"));
    assert_eq!(receive(&client, "v", "w", 0.5).await, Value::Null);
    // An ack after the lease ran out names the problem.
    let late = client
        .queue(
            "ack",
            json!({"queue_name": "v", "message_id": id, "subscriber_id": "w"}),
        )
        .await;
    match late {
        Err(ClientError::Refused(reason)) => assert!(reason.contains("not in queue v"), "{reason}"),
        other => panic!("late ack accepted: {other:?}"),
    }
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_gives_the_message_back_and_others_cannot_ack_it() {
    let (_dir, daemon, client) = start().await;
    declare(&client, json!({"queue_name": "n"})).await;
    let id = send(&client, "n", json!({"payload": 1})).await;
    let m = receive(&client, "n", "a", 1.0).await;
    assert_eq!(m["message_id"], json!(id));
    let stolen = client
        .queue(
            "ack",
            json!({"queue_name": "n", "message_id": id, "subscriber_id": "b"}),
        )
        .await;
    assert!(
        matches!(&stolen, Err(ClientError::Refused(r)) if r.contains("leased to a")),
        "{stolen:?}"
    );
    client
        .queue(
            "nack",
            json!({"queue_name": "n", "message_id": id, "subscriber_id": "a"}),
        )
        .await
        .unwrap();
    let again = receive(&client, "n", "b", 1.0).await;
    assert_eq!(again["message_id"], json!(id));
    assert_eq!(again["attempts"], json!(2));
    ack(&client, "n", "b", &id).await;
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_window_refuses_repeats_of_a_client_message_id() {
    let (_dir, daemon, client) = start().await;
    declare(
        &client,
        json!({"queue_name": "dd", "enable_deduplication": true, "deduplication_window_seconds": 1.0}),
    )
    .await;
    // The window opens at the send's event time, after this instant and
    // before the reply.
    let first_sent = Instant::now();
    let first = client
        .queue(
            "send",
            json!({"queue_name": "dd", "message_id": "order-1", "payload": 1}),
        )
        .await
        .unwrap();
    assert_eq!(first["duplicate"], json!(false));
    let m = receive(&client, "dd", "w", 1.0).await;
    ack(&client, "dd", "w", m["message_id"].as_str().unwrap()).await;
    let repeat = client
        .queue(
            "send",
            json!({"queue_name": "dd", "message_id": "order-1", "payload": 2}),
        )
        .await
        .unwrap();
    assert_eq!(
        repeat["duplicate"],
        json!(true),
        "acked but inside the window"
    );
    assert_eq!(receive(&client, "dd", "w", 0.1).await, Value::Null);
    // Repeat the send until the window closes: each repeat inside it is a
    // duplicate, so nothing is enqueued until the first one that is not.
    let client = &client;
    eventually(
        "the dedup window closes",
        Duration::from_secs(10),
        || async move {
            let after = client
                .queue(
                    "send",
                    json!({"queue_name": "dd", "message_id": "order-1", "payload": 3}),
                )
                .await
                .map_err(|e| e.to_string())?;
            match after["duplicate"].as_bool() {
                Some(false) => Ok(()),
                _ => Err(format!("{after}")),
            }
        },
    )
    .await
    .unwrap();
    // Event times are whole milliseconds: the window runs from the send's
    // time rounded down, up to 1 ms before the send arrived.
    assert!(
        first_sent.elapsed() >= Duration::from_millis(999),
        "the window closed early, after {:?}",
        first_sent.elapsed()
    );
    assert_eq!(receive(client, "dd", "w", 1.0).await["payload"], json!(3));
    assert_eq!(receive(client, "dd", "w", 0.1).await, Value::Null);
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_removes_unconsumed_messages() {
    let (_dir, daemon, client) = start().await;
    declare(
        &client,
        json!({"queue_name": "t", "message_ttl_seconds": 0.3}),
    )
    .await;
    send(&client, "t", json!({"payload": "short"})).await;
    send(&client, "t", json!({"payload": "long", "ttl_seconds": 30})).await;
    let admin = daemon.ready.admin_url.as_str();
    eventually(
        "the short-lived message expires",
        Duration::from_secs(10),
        || async move {
            let rows = sql_rows(admin, "SELECT seq FROM queue_messages WHERE queue = 't'")
                .await
                .map_err(|e| e.to_string())?;
            if rows.len() == 1 && rows[0]["seq"] == 2 {
                Ok(())
            } else {
                Err(format!("queue t holds {rows:?}"))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        receive(&client, "t", "w", 1.0).await["payload"],
        json!("long")
    );
    assert_eq!(receive(&client, "t", "w", 0.1).await, Value::Null);
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_subscribers_share_work_and_a_disconnect_releases_leases() {
    let (_dir, daemon, client) = start().await;
    declare(&client, json!({"queue_name": "push"})).await;
    let first = Client::connect(&daemon.ready.client_url).await.unwrap();
    let mut held = first.subscribe_queue("push", 2, None).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(send(&client, "push", json!({"payload": i})).await);
    }
    // Prefetch 2: the first subscriber holds two unacked messages.
    let a = next_pushed(&mut held).await;
    let b = next_pushed(&mut held).await;
    assert_eq!(
        [&a["message_id"], &b["message_id"]],
        [&json!(ids[0]), &json!(ids[1])]
    );
    let second = Client::connect(&daemon.ready.client_url).await.unwrap();
    let mut other = second.subscribe_queue("push", 10, None).await.unwrap();
    let c = next_pushed(&mut other).await;
    let d = next_pushed(&mut other).await;
    assert_eq!(
        [&c["message_id"], &d["message_id"]],
        [&json!(ids[2]), &json!(ids[3])]
    );
    // The first consumer goes away without acking: its two come to the other.
    drop(held);
    drop(first);
    let mut released = vec![next_pushed(&mut other).await, next_pushed(&mut other).await];
    released.sort_by_key(|m| m["message_id"].as_str().unwrap().to_string());
    let mut expected = vec![ids[0].clone(), ids[1].clone()];
    expected.sort();
    let got: Vec<&str> = released
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, expected);
    assert!(released.iter().all(|m| m["attempts"] == json!(2)));
    for m in [&c, &d].into_iter().chain(&released) {
        ack(
            &second,
            "push",
            &other.id,
            m["message_id"].as_str().unwrap(),
        )
        .await;
    }
    let stats = client
        .queue("stats", json!({"queue_name": "push"}))
        .await
        .unwrap();
    assert_eq!(stats["queues"][0]["in_flight"], json!(0));
    assert_eq!(stats["queues"][0]["depth"], json!(0));
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_subscriber() {
    let (_dir, daemon, client) = start().await;
    declare(&client, json!({"queue_name": "b"})).await;
    let mut subs = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..3 {
        let conn = Client::connect(&daemon.ready.client_url).await.unwrap();
        subs.push(conn.subscribe_queue("b", 5, None).await.unwrap());
        conns.push(conn);
    }
    send(
        &client,
        "b",
        json!({"payload": "all", "delivery_guarantee": "broadcast"}),
    )
    .await;
    for sub in &mut subs {
        let m = next_pushed(sub).await;
        assert_eq!(m["payload"], json!("all"));
        assert_eq!(m["delivery_guarantee"], json!("broadcast"));
    }
    let stats = client
        .queue("stats", json!({"queue_name": "b"}))
        .await
        .unwrap();
    assert_eq!(
        stats["queues"][0]["depth"],
        json!(0),
        "broadcast is not kept"
    );
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_problem() {
    let (_dir, daemon, client) = start().await;
    declare(&client, json!({"queue_name": "q", "max_size": 2})).await;
    let refused = |r: Result<Value, ClientError>| match r {
        Err(ClientError::Refused(reason)) => reason,
        other => panic!("accepted: {other:?}"),
    };
    let conflict = refused(
        client
            .queue("create", json!({"queue_name": "q", "max_size": 3}))
            .await,
    );
    assert!(conflict.contains("max_size: 2 -> 3"), "{conflict}");
    assert!(conflict.contains("error_code 1010"), "{conflict}");
    let exactly = refused(
        client
            .queue(
                "send",
                json!({"queue_name": "q", "delivery_guarantee": "exactly_once"}),
            )
            .await,
    );
    assert!(
        exactly.contains("unsupported_delivery_guarantee:exactly_once") && exactly.contains("1011"),
        "{exactly}"
    );
    let unknown = refused(client.queue("send", json!({"queue_name": "nope"})).await);
    assert!(
        unknown.contains("unknown queue nope") && unknown.contains("1009"),
        "{unknown}"
    );
    let missing = refused(client.queue("ack", json!({"queue_name": "q"})).await);
    assert!(
        missing.contains("message_id is required") && missing.contains("1006"),
        "{missing}"
    );
    send(&client, "q", json!({})).await;
    send(&client, "q", json!({})).await;
    let full = refused(client.queue("send", json!({"queue_name": "q"})).await);
    assert!(full.contains("queue q is full"), "{full}");
    // Same settings again is fine (idempotent declare).
    declare(&client, json!({"queue_name": "q", "max_size": 2})).await;
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_spreads_over_the_subscribers() {
    let (_dir, daemon, client) = start().await;
    declare(&client, json!({"queue_name": "burst"})).await;
    let mut conns = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..2 {
        let conn = Client::connect(&daemon.ready.client_url).await.unwrap();
        subs.push(conn.subscribe_queue("burst", 20, None).await.unwrap());
        conns.push(conn);
    }
    let messages: Vec<Value> = (0..20).map(|i| json!({"payload": i})).collect();
    let sent = client
        .queue("send", json!({"queue_name": "burst", "messages": messages}))
        .await
        .unwrap();
    assert_eq!(sent["messages"].as_array().unwrap().len(), 20);
    // Nobody acks: each subscription keeps what it got. Count until all 20
    // are out.
    let mut got = [0usize; 2];
    let [first, second] = subs.as_mut_slice() else {
        unreachable!("two subscriptions")
    };
    while got.iter().sum::<usize>() < 20 {
        let (i, m) = tokio::select! {
            m = next_pushed(first) => (0, m),
            m = next_pushed(second) => (1, m),
        };
        assert_eq!(m["attempts"], json!(1));
        got[i] += 1;
    }
    // Without a share cap the first one woken would take all 20 (its
    // prefetch allows it).
    assert!(got.iter().all(|n| *n >= 5), "split {got:?}");
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill9_pushed_leases_of_the_dead_run_are_released_at_once() {
    let (dir, daemon, client) = start().await;
    // The acknowledgment timeout is the default 300 s: only the release at
    // restart can bring the messages back within this test.
    declare(&client, json!({"queue_name": "crash"})).await;
    let holder = Client::connect(&daemon.ready.client_url).await.unwrap();
    let mut held = holder.subscribe_queue("crash", 10, None).await.unwrap();
    let ids = [
        send(&client, "crash", json!({"payload": 1})).await,
        send(&client, "crash", json!({"payload": 2})).await,
    ];
    next_pushed(&mut held).await;
    next_pushed(&mut held).await;
    daemon.kill9().unwrap();

    let daemon = Daemon::start(&dir, &[]).unwrap();
    let fresh = Client::connect(&daemon.ready.client_url).await.unwrap();
    let mut sub = fresh.subscribe_queue("crash", 10, None).await.unwrap();
    let mut again = vec![next_pushed(&mut sub).await, next_pushed(&mut sub).await];
    again.sort_by_key(|m| m["payload"].as_i64());
    let got: Vec<&Value> = again.iter().map(|m| &m["message_id"]).collect();
    assert_eq!(got, [&json!(ids[0]), &json!(ids[1])]);
    assert!(again.iter().all(|m| m["attempts"] == json!(2)));
    for m in &again {
        ack(&fresh, "crash", &sub.id, m["message_id"].as_str().unwrap()).await;
    }
    daemon.stop().unwrap();
}

/// The `summary` of every event of `kind` in the log, parsed.
async fn events_of(daemon: &Daemon, kind: &str) -> Vec<Value> {
    let sql = format!("SELECT summary FROM events WHERE kind = '{kind}' ORDER BY index");
    sql_rows(&daemon.ready.admin_url, &sql)
        .await
        .unwrap()
        .iter()
        .map(|row| serde_json::from_str(row["summary"].as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_delete_of_many_messages_go_in_bounded_steps() {
    let (_dir, daemon, client) = start().await;
    declare(&client, json!({"queue_name": "big", "max_size": 20_000})).await;
    let fill = |round: usize| {
        let client = &client;
        async move {
            for batch in 0..10 {
                let messages: Vec<Value> = (0..1000)
                    .map(|i| json!({"payload": [round, batch, i]}))
                    .collect();
                client
                    .queue("send", json!({"queue_name": "big", "messages": messages}))
                    .await
                    .expect("batch send");
            }
        }
    };
    fill(0).await;
    let leased = receive(&client, "big", "s1", 1.0).await;
    assert!(leased.is_object(), "a leased message is purged too");

    client
        .queue("purge", json!({"queue_name": "big"}))
        .await
        .expect("purge");
    let stats = client
        .queue("stats", json!({"queue_name": "big"}))
        .await
        .unwrap();
    assert_eq!(stats["queues"][0]["depth"], json!(0), "{stats}");
    assert_eq!(stats["queues"][0]["in_flight"], json!(0), "{stats}");
    assert!(events_of(&daemon, "queue_purged").await.is_empty());
    let steps = events_of(&daemon, "queue_trimmed").await;
    assert!(
        steps.len() >= 3,
        "10,000 messages in steps of at most 4096: {steps:?}"
    );
    assert!(steps.iter().all(|s| s["limit"] == json!(4096)), "{steps:?}");
    // The first step takes the queue's next seq as the bound; the others
    // carry it, so messages sent meanwhile stay.
    assert_eq!(steps[0]["below_seq"], Value::Null);
    assert!(
        steps[1..].iter().all(|s| s["below_seq"] == json!(10_001)),
        "{steps:?}"
    );
    send(&client, "big", json!({"payload": "after"})).await;
    assert_eq!(
        receive(&client, "big", "s1", 5.0).await["payload"],
        json!("after")
    );

    fill(1).await;
    client
        .queue("delete", json!({"queue_name": "big"}))
        .await
        .expect("delete");
    assert!(events_of(&daemon, "queue_deleted").await.is_empty());
    assert!(events_of(&daemon, "queue_delete_step").await.len() >= 3);
    let left = sql_rows(
        &daemon.ready.admin_url,
        "SELECT count(*) AS n FROM queue_messages WHERE queue = 'big'",
    )
    .await
    .unwrap();
    assert_eq!(left[0]["n"], json!(0));
    let refused = client
        .queue("stats", json!({"queue_name": "big"}))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("unknown queue big"),
        "{refused}"
    );
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_send_agrees_with_the_json_request() {
    let (_dir, daemon, client) = start().await;
    declare(&client, json!({"queue_name": "typed", "max_size": 2})).await;
    let sent = client
        .queue_send("typed", &json!({"n": [1, "two"]}))
        .await
        .unwrap();
    assert!(!sent.duplicate);
    let message = receive(&client, "typed", "reader", 5.0).await;
    assert_eq!(message["message_id"], json!(sent.message_id));
    assert_eq!(
        message["payload"],
        json!({"n": [1, "two"]}),
        "the JSON receive reads what the typed send wrote"
    );
    client.queue_send("typed", "second").await.unwrap();
    match client.queue_send("typed", "third").await {
        Err(ClientError::Refused(reason)) => assert!(
            reason.contains("queue typed is full") && reason.contains("error_code"),
            "{reason}"
        ),
        other => panic!("a send to a full queue was accepted: {other:?}"),
    }
    match client.queue_send("nope", "x").await {
        Err(ClientError::Refused(reason)) => assert!(
            reason.contains("unknown queue nope") && reason.contains("1009"),
            "{reason}"
        ),
        other => panic!("a send to an unknown queue was accepted: {other:?}"),
    }
    daemon.stop().unwrap();
}
