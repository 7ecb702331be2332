//! SQL at scale over admin HTTP on an in-process daemon. It fills
//! `cache_entries`, `queue_messages` and `routes` with `MPREG_BENCH_ROWS`
//! rows each (default 1,000,000; the `events` table then holds the events
//! that wrote them), and prints:
//! - p50/p99 of point queries on each table's key columns
//!   (`MPREG_BENCH_QUERIES` of them, default 1,000);
//! - the time of a full `count(*)` and of a `GROUP BY` per table, in rows/s;
//! - p50/p99 of durable writes (1 and 64 in flight) when idle and while
//!   full scans run back to back.
//!
//! Run: `cargo bench -p mpreg-daemon --bench sql`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::percentile;
use mpreg_daemon::Node;
use mpreg_storage::EventKind;
use mpreg_storage::event::{CacheKey, Delivery, NewMessage};

const PROPOSERS: usize = 256;
const QUEUE: &str = "bench";
const NAMESPACE: &str = "bench";
/// Messages per `MessagesSent` event while filling the queue.
const SEND_BATCH: usize = 100;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Proposes `make(i)` for every `i` in `0..total` from [`PROPOSERS`] tasks.
async fn fill(
    node: &Arc<Node>,
    label: &str,
    total: usize,
    make: impl Fn(usize) -> EventKind + Send + Sync + 'static,
) {
    let start = Instant::now();
    let make = Arc::new(make);
    let tasks: Vec<_> = (0..PROPOSERS)
        .map(|t| {
            let node = node.clone();
            let make = make.clone();
            tokio::spawn(async move {
                for i in (t..total).step_by(PROPOSERS) {
                    node.propose_ok(make(i)).await.expect("propose");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("proposer");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "filled {label}: {total} events in {secs:.1} s ({:.0} events/s)",
        total as f64 / secs
    );
}

fn cache_put(i: usize) -> EventKind {
    EventKind::CachePut {
        key: CacheKey {
            namespace: NAMESPACE.into(),
            identifier: format!("k{i}"),
            version: String::new(),
        },
        value: format!("\"value {i}\""),
        tags: Vec::new(),
        metadata: "null".into(),
        ttl_ms: None,
    }
}

fn send_batch(batch: usize) -> EventKind {
    EventKind::MessagesSent {
        queue: QUEUE.into(),
        messages: (batch * SEND_BATCH..(batch + 1) * SEND_BATCH)
            .map(|i| NewMessage {
                message_id: format!("m{i}"),
                client_id: true,
                topic: "t".into(),
                payload: format!("{{\"n\":{i}}}"),
                priority: 0,
                delay_ms: 0,
                ttl_ms: None,
                delivery: Delivery::AtLeastOnce,
            })
            .collect(),
    }
}

fn route(i: usize) -> EventKind {
    EventKind::RouteAnnounced {
        dest: format!("r{i}"),
        next_hop: format!("c{}", i % 7),
        path: vec!["c3".into(), format!("r{i}")],
        cost: 10,
        advertiser: "c3".into(),
        expires_at_ms: None,
    }
}

/// Runs `sql` once; returns the rows and how long the answer took.
async fn query(
    http: &reqwest::Client,
    admin: &str,
    sql: &str,
) -> (Vec<serde_json::Value>, Duration) {
    let start = Instant::now();
    let response = http
        .get(format!("{admin}/sql"))
        .query(&[("q", sql)])
        .send()
        .await
        .expect("GET /sql");
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("JSON body");
    assert!(status.is_success(), "{sql}: {status} {body}");
    let rows = body.as_array().cloned().expect("rows");
    (rows, start.elapsed())
}

/// p50/p99 of `queries` point queries `sql(i)`, each of which must find rows.
async fn point(
    http: &reqwest::Client,
    admin: &str,
    label: &str,
    queries: usize,
    rows: usize,
    sql: impl Fn(usize) -> String,
) {
    let mut latencies = Vec::with_capacity(queries);
    for q in 0..queries {
        let i = q.wrapping_mul(7919) % rows;
        let (found, took) = query(http, admin, &sql(i)).await;
        assert!(!found.is_empty(), "{} found nothing", sql(i));
        latencies.push(took);
    }
    latencies.sort();
    println!(
        "point  {label:<44} p50 {:>7.3} ms  p99 {:>7.3} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
}

/// The median time of three runs of a full scan over `rows` rows.
async fn scan(http: &reqwest::Client, admin: &str, rows: usize, sql: &str) {
    let mut times = Vec::new();
    for _ in 0..3 {
        times.push(query(http, admin, sql).await.1);
    }
    times.sort();
    let median = times[1].as_secs_f64();
    println!(
        "scan   {sql:<64} {median:>6.3} s  {:>5.2}M rows/s",
        rows as f64 / median / 1e6
    );
}

/// p50/p99 of `total` durable cache writes, `inflight` at a time.
async fn writes(node: &Arc<Node>, inflight: usize, total: usize) -> (Duration, Duration) {
    let tasks: Vec<_> = (0..inflight)
        .map(|t| {
            let node = node.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for i in (t..total).step_by(inflight) {
                    let start = Instant::now();
                    node.propose_ok(cache_put(i % 1000)).await.expect("write");
                    latencies.push(start.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("writer"));
    }
    all.sort();
    (percentile(&all, 0.5), percentile(&all, 0.99))
}

fn main() {
    let rows = env("MPREG_BENCH_ROWS", 1_000_000);
    let queries = env("MPREG_BENCH_QUERIES", 1_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let daemon = common::start(tmp.path(), |config| {
            config.snapshot_interval = u64::MAX / 2;
        })
        .await;
        let node = &daemon.node;
        let admin = daemon.admin_url.as_str();
        let http = reqwest::Client::new();

        fill(node, "cache_entries", rows, cache_put).await;
        node.propose_ok(EventKind::QueueDeclared {
            name: QUEUE.into(),
            settings: common::fifo_settings(u64::MAX),
        })
        .await
        .expect("declare");
        fill(
            node,
            &format!("queue_messages ({SEND_BATCH} per event)"),
            rows.div_ceil(SEND_BATCH),
            send_batch,
        )
        .await;
        fill(node, "routes", rows, route).await;
        let last_index = node.applied().last_applied_index() as usize;
        let (counted, _) = query(&http, admin, "SELECT count(*) AS n FROM events").await;
        let events = counted[0]["n"].as_u64().expect("count") as usize;

        point(&http, admin, "cache_entries (namespace, identifier)", queries, rows, |i| {
            format!("SELECT * FROM cache_entries WHERE namespace='{NAMESPACE}' AND identifier='k{i}'")
        })
        .await;
        point(&http, admin, "queue_messages (queue, message_id)", queries, rows, |i| {
            format!("SELECT * FROM queue_messages WHERE queue='{QUEUE}' AND message_id='m{i}'")
        })
        .await;
        point(&http, admin, "routes (dest)", queries, rows, |i| {
            format!("SELECT * FROM routes WHERE dest='r{i}'")
        })
        .await;
        // The newest entries: each holds events (the first few hold none).
        point(&http, admin, "events (index)", queries, last_index / 2, |i| {
            format!("SELECT index, kind FROM events WHERE index = {}", last_index - i)
        })
        .await;

        for (table, group, count) in [
            ("cache_entries", "namespace", rows),
            ("queue_messages", "state", rows),
            ("routes", "next_hop", rows),
            ("events", "kind", events),
        ] {
            scan(&http, admin, count, &format!("SELECT count(*) FROM {table}")).await;
            scan(
                &http,
                admin,
                count,
                &format!("SELECT {group}, count(*) FROM {table} GROUP BY {group}"),
            )
            .await;
        }

        let scanning = Arc::new(AtomicBool::new(false));
        let scanner = {
            let scanning = scanning.clone();
            let http = http.clone();
            let admin = admin.to_string();
            tokio::spawn(async move {
                loop {
                    if scanning.load(Ordering::Relaxed) {
                        query(&http, &admin, "SELECT namespace, count(*) FROM cache_entries GROUP BY namespace").await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        };
        for (inflight, total) in [(1, 3_000), (64, 50_000)] {
            let idle = writes(node, inflight, total).await;
            scanning.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let busy = writes(node, inflight, total).await;
            scanning.store(false, Ordering::Relaxed);
            println!(
                "writes {inflight:>2} in flight: idle p50 {:.3} ms p99 {:.3} ms; during full scans p50 {:.3} ms p99 {:.3} ms ({:.2}x idle p99)",
                idle.0.as_secs_f64() * 1e3,
                idle.1.as_secs_f64() * 1e3,
                busy.0.as_secs_f64() * 1e3,
                busy.1.as_secs_f64() * 1e3,
                busy.1.as_secs_f64() / idle.1.as_secs_f64(),
            );
        }
        scanner.abort();
        daemon.stop().await;
    });
}
