//! Pub/sub benchmark over real WebSocket connections to an in-process
//! daemon: messages/s and publish→deliver p50/p99 latency for 1 publisher
//! → 1 subscriber, 1 → 100 subscribers, and 100,000 subscriptions of
//! which 1% match.
//!
//! Run: `cargo bench -p mpreg-daemon --bench pubsub`
//! (`MPREG_BENCH_MESSAGES`, default 20000 per case).

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::percentile;
use mpreg_client::Client;
use serde_json::json;

/// Publishes `messages` on `topic`; `readers` subscriptions receive them.
async fn case(name: &str, url: &str, topic: &str, pattern: &str, readers: usize, messages: u64) {
    let epoch = Instant::now();
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for r in 0..readers {
        if r % 100 == 0 {
            clients.push(Arc::new(Client::connect(url).await.expect("connect")));
        }
        let client = clients.last().expect("client").clone();
        let mut sub = client.subscribe(&[pattern], 0).await.expect("subscribe");
        tasks.push(tokio::spawn(async move {
            let _client = client;
            let mut latencies = Vec::with_capacity(messages as usize);
            for _ in 0..messages {
                let note = sub.next().await.expect("message");
                let sent = Duration::from_nanos(note.message.payload.as_u64().unwrap_or(0));
                latencies.push(epoch.elapsed().saturating_sub(sent));
            }
            latencies
        }));
    }
    let publisher = Client::connect(url).await.expect("connect");
    let start = Instant::now();
    for _ in 0..messages {
        let sent = epoch.elapsed().as_nanos() as u64;
        publisher
            .publish(topic, json!(sent))
            .await
            .expect("publish");
    }
    let published = start.elapsed();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("reader"));
    }
    let delivered = start.elapsed();
    all.sort();
    println!(
        "{name}: {messages} msgs published at {:.0}/s, {} deliveries at {:.0}/s, latency p50 {:.3} ms p99 {:.3} ms",
        messages as f64 / published.as_secs_f64(),
        all.len(),
        all.len() as f64 / delivered.as_secs_f64(),
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
    );
}

fn main() {
    let messages: u64 = std::env::var("MPREG_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let daemon = common::start(tmp.path(), |config| config.pubsub.backlog_bytes = 0).await;
        let url = daemon.url.clone();
        case("1 -> 1", &url, "one.x", "one.*", 1, messages).await;
        case(
            "1 -> 100",
            &url,
            "hundred.x",
            "hundred.#",
            100,
            messages / 10,
        )
        .await;

        // 99,000 subscriptions that never match, on 10 connections.
        let start = Instant::now();
        let mut fillers = Vec::new();
        for c in 0..10 {
            let client = Arc::new(Client::connect(&url).await.expect("connect"));
            for batch in 0..99 {
                let client = client.clone();
                fillers.push(tokio::spawn(async move {
                    let mut subs = Vec::new();
                    for i in 0..100 {
                        let pattern = format!("cold.{c}.{batch}.{i}.*");
                        subs.push(
                            client
                                .subscribe(&[pattern.as_str()], 0)
                                .await
                                .expect("subscribe"),
                        );
                    }
                    (client, subs)
                }));
            }
        }
        let mut keep = Vec::new();
        for f in fillers {
            keep.push(f.await.expect("filler"));
        }
        println!(
            "registered 99,000 subscriptions in {:.1}s ({:.0}/s, each a committed event)",
            start.elapsed().as_secs_f64(),
            99_000.0 / start.elapsed().as_secs_f64()
        );
        case(
            "100k subs, 1% match",
            &url,
            "hot.x",
            "hot.*",
            1000,
            messages / 100,
        )
        .await;
        drop(keep);
        daemon.stop().await;
    });
}
