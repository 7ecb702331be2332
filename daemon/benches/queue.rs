//! Durable queue benchmark over real WebSocket connections to an
//! in-process daemon. Every send, lease and ack is an event committed to the
//! raft log and fsynced before its reply; concurrent proposals share one log
//! entry (group commit), so each case also prints how many entries it took.
//! Prints:
//! - acknowledged `mpreg.queue.send` calls/s and p50/p99 latency with 1, 16
//!   and 256 concurrent producers, spread over up to 16 connections;
//! - send→ack throughput and p50/p99 latency with 16 producers and 4 pushed
//!   subscribers that ack every message (the send time rides in the payload);
//! - batch sends of 100 messages per call, messages/s.
//!
//! Run: `cargo bench --workspace --bench queue` (`MPREG_BENCH_SECONDS` sets
//! how long producers send in each case, default 3).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::percentile;
use mpreg_client::Client;
use mpreg_daemon::Node;
use serde_json::{Value, json};

/// Producers share at most this many connections.
const MAX_CONNECTIONS: usize = 16;
/// Pushed subscribers in the send→ack case.
const CONSUMERS: usize = 4;
/// Unacked messages each subscriber may hold.
const PREFETCH: u64 = 100;
/// Messages per call in the batch case.
const BATCH: usize = 100;
/// How long the send→ack case waits for the last ack.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// `connections` clients, at most [`MAX_CONNECTIONS`].
async fn connect(url: &str, connections: usize) -> Vec<Arc<Client>> {
    let mut clients = Vec::new();
    for _ in 0..connections.clamp(1, MAX_CONNECTIONS) {
        clients.push(Arc::new(Client::connect(url).await.expect("connect")));
    }
    clients
}

async fn declare(client: &Client, queue: &str) {
    client
        .queue(
            "create",
            json!({"queue_name": queue, "max_size": 10_000_000}),
        )
        .await
        .expect("create queue");
}

/// `producers` tasks call `send` with `body()` until `deadline`, spread
/// round-robin over `clients`; returns each call's latency, sorted.
async fn produce(
    clients: &[Arc<Client>],
    producers: usize,
    deadline: Instant,
    body: impl Fn() -> Value + Clone + Send + 'static,
) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for p in 0..producers {
        let client = clients[p % clients.len()].clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                client.queue("send", body()).await.expect("send");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("producer"));
    }
    all.sort();
    all
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Acknowledged single-message sends with `producers` concurrent producers.
async fn sends(url: &str, node: &Node, producers: usize, seconds: f64) {
    let queue = format!("send-{producers}");
    let clients = connect(url, producers).await;
    declare(&clients[0], &queue).await;
    let first_entry = node.commit_index();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let body = move || json!({"queue_name": queue, "payload": {"pad": "x".repeat(64)}});
    let all = produce(&clients, producers, deadline, body).await;
    let elapsed = start.elapsed().as_secs_f64();
    let entries = node.commit_index() - first_entry;
    println!(
        "send   {producers:>3} producers / {:>2} conn: {:>7.0} sends/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} sends in {entries} log entries, {:.1} per entry)",
        clients.len(),
        all.len() as f64 / elapsed,
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        all.len(),
        all.len() as f64 / entries.max(1) as f64,
    );
}

/// Batch sends of [`BATCH`] messages per call with `producers` producers.
async fn batches(url: &str, node: &Node, producers: usize, seconds: f64) {
    let queue = format!("batch-{producers}");
    let clients = connect(url, producers).await;
    declare(&clients[0], &queue).await;
    let first_entry = node.commit_index();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let messages: Vec<Value> = (0..BATCH)
        .map(|_| json!({"payload": {"pad": "x".repeat(64)}}))
        .collect();
    let body = move || json!({"queue_name": queue, "messages": messages});
    let all = produce(&clients, producers, deadline, body).await;
    let elapsed = start.elapsed().as_secs_f64();
    let entries = node.commit_index() - first_entry;
    println!(
        "batch  {producers:>3} producers x {BATCH} msgs: {:>7.0} msgs/s  ({:.0} calls/s, call p50 {:.3} ms p99 {:.3} ms, {entries} log entries)",
        (all.len() * BATCH) as f64 / elapsed,
        all.len() as f64 / elapsed,
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
    );
}

/// What the consumers of the send→ack case share.
struct Acked {
    count: AtomicU64,
    /// Send→ack latency of every acked message.
    latencies: Mutex<Vec<Duration>>,
}

/// `producers` send for `seconds` while [`CONSUMERS`] pushed subscribers
/// ack every message; waits for the last ack.
async fn send_to_ack(url: &str, node: &Node, producers: usize, seconds: f64) {
    let queue = "e2e".to_string();
    let clients = connect(url, producers).await;
    declare(&clients[0], &queue).await;
    let epoch = Instant::now();
    let acked = Arc::new(Acked {
        count: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
    });
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let client = Arc::new(Client::connect(url).await.expect("connect"));
        let mut sub = client
            .subscribe_queue(&queue, PREFETCH, None)
            .await
            .expect("subscribe");
        let acked = acked.clone();
        let queue = queue.clone();
        consumers.push(tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                // Acks run concurrently, at most PREFETCH at a time: the
                // daemon pushes no more until some are acked.
                let client = client.clone();
                let acked = acked.clone();
                let body = json!({
                    "queue_name": queue,
                    "message_id": message["message_id"],
                    "subscriber_id": sub.id,
                });
                let sent = Duration::from_nanos(message["payload"]["t"].as_u64().unwrap_or(0));
                tokio::spawn(async move {
                    client.queue("ack", body).await.expect("ack");
                    let latency = epoch.elapsed().saturating_sub(sent);
                    acked
                        .latencies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(latency);
                    acked.count.fetch_add(1, Ordering::Release);
                });
            }
        }));
    }
    let first_entry = node.commit_index();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let body = move || {
        let t = epoch.elapsed().as_nanos() as u64;
        json!({"queue_name": queue, "payload": {"t": t, "pad": "x".repeat(56)}})
    };
    let sent = produce(&clients, producers, deadline, body).await.len() as u64;
    let sending = start.elapsed().as_secs_f64();
    let drain_deadline = Instant::now() + DRAIN_LIMIT;
    while acked.count.load(Ordering::Acquire) < sent {
        assert!(
            Instant::now() < drain_deadline,
            "only {} of {sent} messages acked after {DRAIN_LIMIT:?}",
            acked.count.load(Ordering::Acquire)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let entries = node.commit_index() - first_entry;
    for consumer in consumers {
        consumer.abort();
    }
    let stats = clients[0]
        .queue("stats", json!({"queue_name": "e2e"}))
        .await
        .expect("stats");
    let mut all = std::mem::take(&mut *acked.latencies.lock().unwrap_or_else(|e| e.into_inner()));
    all.sort();
    println!(
        "e2e    {producers:>3} producers -> {CONSUMERS} consumers (prefetch {PREFETCH}): {:>7.0} msgs/s send->ack  p50 {:.3} ms  p99 {:.3} ms  ({sent} msgs sent at {:.0}/s, last ack at {:.2}s, {entries} log entries; then depth {} in flight {})",
        sent as f64 / elapsed,
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        sent as f64 / sending,
        elapsed,
        stats["queues"][0]["depth"],
        stats["queues"][0]["in_flight"],
    );
}

fn main() {
    let seconds = common::seconds();
    let tmp = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let daemon = common::start(tmp.path(), |_| {}).await;
        let url = daemon.url.clone();
        println!("data dir {}", tmp.path().display());
        let node = daemon.node.clone();
        for producers in [1, 16, 256] {
            sends(&url, &node, producers, seconds).await;
        }
        send_to_ack(&url, &node, 16, seconds).await;
        batches(&url, &node, 16, seconds).await;
        drop(node);
        daemon.stop().await;
    });
}
