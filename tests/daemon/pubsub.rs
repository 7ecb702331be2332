//! Pub/sub against a real daemon: wildcard semantics, subscriptions on the
//! catalog, backlog, slow consumers, ordering under load, bad input.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mpreg_client::{Client, ClientError, Subscription};
use mpreg_tests::{Daemon, RawClient, TestDir};
use serde_json::{Value, json};

fn start(config: &str) -> (TestDir, Daemon) {
    let dir = TestDir::new();
    let daemon = Daemon::start_configured(&dir, config).unwrap();
    (dir, daemon)
}

/// Topics received until the `end` sentinel (every test subscription also
/// listens on `end`; per-publisher order puts it last).
async fn until_end(sub: &mut Subscription) -> Vec<String> {
    let mut topics = Vec::new();
    loop {
        let note = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("sentinel within 30s")
            .expect("subscription open");
        if note.message.topic == "end" {
            return topics;
        }
        topics.push(note.message.topic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_hash_and_several_patterns() {
    let (_dir, daemon) = start("");
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    // What each subscription must receive, in publish order, written out
    // by hand from the documented semantics (`*` one level, `#` zero or
    // more), not computed with the daemon's matcher.
    let expected: [(&[&str], &[&str]); 5] = [
        (&["a.*", "end"], &["a.b", "a.z"]),
        (&["a.#", "end"], &["a", "a.b", "a.b.c", "a.z", "a.b.z"]),
        // `#` matches zero levels: "#.z" gets "z".
        (&["#.z", "end"], &["z", "a.z", "a.b.z", "x.y.z"]),
        (&["a.#.z", "end"], &["a.z", "a.b.z"]),
        // Several patterns: one notification per message, even when two match.
        (
            &["a.*", "a.#", "x.y", "end"],
            &["a", "a.b", "a.b.c", "a.z", "a.b.z", "x.y"],
        ),
    ];
    let mut subs = Vec::new();
    for (patterns, _) in &expected {
        subs.push(client.subscribe(patterns, 0).await.unwrap());
    }
    let topics = [
        "a", "a.b", "a.b.c", "z", "a.z", "a.b.z", "x.y", "x.y.z", "b",
    ];
    let publisher = Client::connect(&daemon.ready.client_url).await.unwrap();
    for t in topics {
        publisher.publish(t, json!({"t": t})).await.unwrap();
    }
    publisher.publish("end", json!(null)).await.unwrap();
    for ((patterns, want), sub) in expected.iter().zip(subs.iter_mut()) {
        assert_eq!(until_end(sub).await, *want, "patterns {patterns:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_shapes_match_upstream_and_unsubscribe_stops_delivery() {
    let (_dir, daemon) = start("");
    let mut raw = RawClient::connect(&daemon.ready.client_url).await.unwrap();
    raw.send_binary(
        json!({"role":"pubsub-subscribe","u":"s1","subscription":{"subscription_id":"sub-1",
            "patterns":[{"pattern":"t.*.x","exact_match":false}],"subscriber":"py","created_at":1795619004.85,
            "get_backlog":false,"backlog_seconds":300}})
        .to_string()
        .into_bytes(),
    )
    .await
    .unwrap();
    let (binary, ack) = raw.recv().await.unwrap();
    assert!(binary);
    assert_eq!(
        ack,
        json!({"role":"pubsub-ack","operation_id":"s1","success":true,"error":null,"u":"ack_s1"})
    );
    let message = json!({"topic":"t.1.x","payload":{"n":1},"timestamp":1795619005.0,"message_id":"m1",
        "publisher":"p","headers":{},"routing_path":null,"current_hop":null});
    let publisher = Client::connect(&daemon.ready.client_url).await.unwrap();
    let mut raw_pub = RawClient::connect(&daemon.ready.client_url).await.unwrap();
    raw_pub
        .send_text(json!({"role":"pubsub-publish","u":"p1","message":message}).to_string())
        .await
        .unwrap();
    assert_eq!(raw_pub.recv().await.unwrap().1["success"], true);
    let (_, note) = raw.recv().await.unwrap();
    assert_eq!(
        note,
        json!({"role":"pubsub-notification","message":message,"subscription_id":"sub-1","u":"notification_m1_sub-1"})
    );
    raw.send_text(r#"{"role":"pubsub-unsubscribe","u":"s2","subscription_id":"sub-1"}"#)
        .await
        .unwrap();
    assert_eq!(raw.recv().await.unwrap().1["success"], true);
    raw.send_text(r#"{"role":"pubsub-unsubscribe","u":"s3","subscription_id":"sub-1"}"#)
        .await
        .unwrap();
    let (_, ack) = raw.recv().await.unwrap();
    assert_eq!(
        (ack["success"].as_bool(), ack["operation_id"].as_str()),
        (Some(false), Some("s3"))
    );
    assert!(
        ack["error"]
            .as_str()
            .unwrap()
            .contains("unknown subscription sub-1")
    );
    // After unsubscribing only the sentinel subscription delivers.
    raw.send_text(
        r#"{"role":"pubsub-subscribe","u":"s4","subscription":{"subscription_id":"sub-2","patterns":[{"pattern":"end"}],"subscriber":"py"}}"#,
    )
    .await
    .unwrap();
    assert_eq!(raw.recv().await.unwrap().1["success"], true);
    publisher.publish("t.2.x", json!(2)).await.unwrap();
    publisher.publish("end", json!(null)).await.unwrap();
    let (_, note) = raw.recv().await.unwrap();
    assert_eq!(note["subscription_id"], "sub-2", "{note}");
}

async fn subscription_ids(client: &Client) -> Vec<String> {
    let r = client
        .call(
            "catalog_query",
            vec![json!({"entry_type": "subscriptions"})],
        )
        .await
        .unwrap();
    r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["subscription_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_catalog_entries_removed_on_disconnect() {
    let (_dir, daemon) = start("");
    let observer = Client::connect(&daemon.ready.client_url).await.unwrap();
    let subscriber = Client::connect(&daemon.ready.client_url).await.unwrap();
    let sub = subscriber.subscribe(&["orders.#"], 0).await.unwrap();
    assert!(subscription_ids(&observer).await.contains(&sub.id));
    drop(subscriber);
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscription_ids(&observer).await.contains(&sub.id) {
        assert!(
            Instant::now() < deadline,
            "subscription {} outlived its connection",
            sub.id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_gets_the_backlog_first() {
    let (_dir, daemon) = start("");
    let publisher = Client::connect(&daemon.ready.client_url).await.unwrap();
    for i in 0..3 {
        publisher
            .publish(&format!("news.item{i}"), json!(i))
            .await
            .unwrap();
    }
    publisher.publish("other.topic", json!("no")).await.unwrap();
    let late = Client::connect(&daemon.ready.client_url).await.unwrap();
    let mut with_backlog = late.subscribe(&["news.*", "end"], 60).await.unwrap();
    let mut without = late.subscribe(&["news.*", "end"], 0).await.unwrap();
    publisher.publish("news.live", json!("live")).await.unwrap();
    publisher.publish("end", json!(null)).await.unwrap();
    assert_eq!(
        until_end(&mut with_backlog).await,
        vec!["news.item0", "news.item1", "news.item2", "news.live"]
    );
    assert_eq!(until_end(&mut without).await, vec!["news.live"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_slow_a_fast_one() {
    let (_dir, daemon) = start("subscriber_buffer = 500\n");
    let url = daemon.ready.client_url.clone();
    let mut stalled = RawClient::connect(&url).await.unwrap();
    stalled
        .send_text(
            r#"{"role":"pubsub-subscribe","u":"s","subscription":{"subscription_id":"slow","patterns":[{"pattern":"flood.#"}],"subscriber":"slow","get_backlog":false}}"#,
        )
        .await
        .unwrap();
    assert_eq!(stalled.recv().await.unwrap().1["success"], true);
    let fast_client = Client::connect(&url).await.unwrap();
    let mut fast = fast_client.subscribe(&["flood.#"], 0).await.unwrap();
    let total = 20_000u64;
    let receiver = tokio::spawn(async move {
        let start = Instant::now();
        for i in 0..total {
            let note = tokio::time::timeout(Duration::from_secs(60), fast.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                note.message.payload,
                json!(i),
                "fast subscriber: in order, nothing dropped"
            );
            assert_eq!(note.dropped, 0);
        }
        start.elapsed()
    });
    let publisher = Client::connect(&url).await.unwrap();
    let start = Instant::now();
    for i in 0..total {
        publisher.publish("flood.x", json!(i)).await.unwrap();
    }
    let published_in = start.elapsed();
    let delivered_in = receiver.await.unwrap();
    println!(
        "stalled-subscriber test: published {total} in {published_in:?} ({:.0}/s), fast subscriber got all in {delivered_in:?}",
        total as f64 / published_in.as_secs_f64()
    );
    // The stalled subscriber now reads: what it got plus what it was told
    // was dropped is everything, and it was told about drops.
    publisher.publish("flood.end", json!("end")).await.unwrap();
    let (mut received, mut dropped) = (0u64, 0u64);
    loop {
        let (_, note) = stalled.recv().await.unwrap();
        dropped += note["dropped"].as_u64().unwrap_or(0);
        if note["message"]["payload"] == "end" {
            break;
        }
        received += 1;
    }
    assert!(dropped > 0, "the stalled subscriber overflowed");
    assert_eq!(
        received + dropped,
        total,
        "every message delivered or counted as dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_publishers_ten_subscribers_per_publisher_order() {
    let (_dir, daemon) = start("");
    let url = daemon.ready.client_url.clone();
    let per_publisher = 1000u64;
    // Publisher p sends message i on `load.p<p>.k<i % 4>`. Each pattern,
    // which of those it matches (written out, not computed with the
    // daemon's matcher), and how many messages that is of the 10 × 1000.
    type Matches = fn(u64, u64) -> bool;
    let table: [(&str, Matches, u64); 10] = [
        ("load.*.k0", |_, i| i % 4 == 0, 2500),
        ("load.#", |_, _| true, 10_000),
        ("load.p2.*", |p, _| p == 2, 1000),
        ("load.*.k3", |_, i| i % 4 == 3, 2500),
        ("load.#", |_, _| true, 10_000),
        ("load.p5.*", |p, _| p == 5, 1000),
        ("load.*.k2", |_, i| i % 4 == 2, 2500),
        ("load.#", |_, _| true, 10_000),
        ("load.p8.*", |p, _| p == 8, 1000),
        ("load.*.k1", |_, i| i % 4 == 1, 2500),
    ];
    let topic = |p: u64, i: u64| format!("load.p{p}.k{}", i % 4);
    let mut receivers = Vec::new();
    for (pattern, matches, expected) in table {
        let client = Client::connect(&url).await.unwrap();
        let mut sub = client.subscribe(&[pattern, "end"], 0).await.unwrap();
        receivers.push(tokio::spawn(async move {
            let _client = client;
            let mut last: HashMap<u64, i64> = HashMap::new();
            let mut received = 0u64;
            loop {
                let note = tokio::time::timeout(Duration::from_secs(60), sub.next())
                    .await
                    .unwrap()
                    .unwrap();
                if note.message.topic == "end" {
                    break;
                }
                let p = note.message.payload["p"].as_u64().unwrap();
                let i = note.message.payload["i"].as_i64().unwrap();
                assert_eq!(note.message.topic, topic(p, i as u64));
                assert!(matches(p, i as u64), "{pattern} got {}", note.message.topic);
                let prev = last.insert(p, i).unwrap_or(-1);
                assert!(i > prev, "publisher {p}: {i} after {prev} on {pattern}");
                received += 1;
            }
            assert_eq!(received, expected, "{pattern}");
        }));
    }
    let mut publishers = Vec::new();
    for p in 0..10u64 {
        let client = Client::connect(&url).await.unwrap();
        publishers.push(tokio::spawn(async move {
            for i in 0..per_publisher {
                client
                    .publish(&topic(p, i), json!({"p": p, "i": i}))
                    .await
                    .unwrap();
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    // Every publish was acknowledged, so it is queued for its subscribers
    // (docs/protocol.md): the sentinel comes after all of them.
    let closer = Client::connect(&url).await.unwrap();
    closer.publish("end", json!(null)).await.unwrap();
    for r in receivers {
        r.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_patterns_and_payloads_are_refused_clearly() {
    let (_dir, daemon) = start("max_payload_bytes = 4096\n");
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    for (pattern, needle) in [
        ("a..b", "empty level"),
        ("a.**", "whole level"),
        ("a*", "whole level"),
        ("", "empty"),
    ] {
        match client.subscribe(&[pattern], 0).await {
            Err(ClientError::Refused(e)) => assert!(e.contains(needle), "{pattern:?}: {e}"),
            Err(e) => panic!("{pattern:?}: {e}"),
            Ok(_) => panic!("{pattern:?} accepted"),
        }
    }
    match client
        .publish("big", Value::String("x".repeat(10_000)))
        .await
    {
        Err(ClientError::Refused(e)) => assert!(e.contains("larger than the limit"), "{e}"),
        other => panic!("{other:?}"),
    }
    match client.publish("a.*", json!(1)).await {
        Err(ClientError::Refused(e)) => assert!(e.contains("wildcards"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Nothing else was disturbed.
    let mut sub = client.subscribe(&["ok", "end"], 0).await.unwrap();
    client.publish("ok", json!(1)).await.unwrap();
    client.publish("end", json!(null)).await.unwrap();
    assert_eq!(until_end(&mut sub).await, vec!["ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscription_buffers_while_its_subscriber_is_away() {
    let (_dir, daemon) = start("");
    let url = daemon.ready.client_url.clone();
    let subscribe = r#"{"role":"pubsub-subscribe","u":"s","subscription":{"subscription_id":"keep","patterns":[{"pattern":"jobs.#"}],"subscriber":"w","get_backlog":false,"durable":true}}"#;
    let mut first = RawClient::connect(&url).await.unwrap();
    first.send_text(subscribe).await.unwrap();
    assert_eq!(first.recv().await.unwrap().1["success"], true);
    drop(first);
    let publisher = Client::connect(&url).await.unwrap();
    // The subscription stays in the catalog while its subscriber is away.
    assert!(
        subscription_ids(&publisher)
            .await
            .contains(&"keep".to_string())
    );
    for i in 0..3 {
        publisher.publish("jobs.new", json!(i)).await.unwrap();
    }
    let mut second = RawClient::connect(&url).await.unwrap();
    second.send_text(subscribe).await.unwrap();
    assert_eq!(second.recv().await.unwrap().1["success"], true);
    for i in 0..3 {
        assert_eq!(second.recv().await.unwrap().1["message"]["payload"], i);
    }
}

/// The daemon runs with transparent huge pages off: the first touch of a
/// huge page of its allocator's heap cleared 2 MiB at once and stalled
/// delivery for milliseconds on a fresh node (docs/benchmarks.md).
#[test]
fn the_daemon_runs_without_transparent_huge_pages() {
    let (_dir, daemon) = start("");
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "{status}");
}
