//! Federation benchmark: four single-node clusters in a line (c0–c1–c2–c3),
//! in this process, over real WebSocket connections on loopback. Prints:
//! - `echo` calls/s and p50/p99 from a client of c0 run in c0, c1, c2 and
//!   c3 (`target_cluster`: 0 to 3 cluster hops each way), with 1 call in
//!   flight and with 8 connections × 64 in flight, and the latency each
//!   hop adds (p50, µs) in both;
//! - publish→deliver latency from a publisher on c0 to a subscriber on c2
//!   (2 hops), one message at a time.
//!
//! Run: `cargo bench -p mpreg-daemon --bench federation`
//! (`MPREG_BENCH_SECONDS` sets the length of each case, default 3).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use common::percentile;
use mpreg_client::protocol::RpcCommand;
use mpreg_client::{Client, Request};
use serde_json::json;

/// (connections, calls in flight per connection) of each load.
const LOADS: [(usize, usize); 2] = [(1, 1), (8, 64)];
const CLUSTERS: usize = 4;

fn ping_in(target: &str) -> Request {
    Request::new().command(RpcCommand {
        name: "e".into(),
        fun: "echo".into(),
        args: vec![json!("x")],
        target_cluster: Some(target.to_string()),
        ..RpcCommand::default()
    })
}

/// Calls `echo` in `target` from `connections` × `in_flight` callers;
/// returns calls/s and the sorted latencies.
async fn case(
    url: &str,
    target: &str,
    (connections, in_flight): (usize, usize),
    seconds: f64,
) -> (f64, Vec<Duration>) {
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(Arc::new(Client::connect(url).await.expect("connect")));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in &clients {
        for _ in 0..in_flight {
            let client = client.clone();
            let target = target.to_string();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    client.request(ping_in(&target)).await.expect("call");
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("caller"));
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn main() {
    let seconds = common::seconds();
    let tmp = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut clusters = Vec::new();
        for i in 0..CLUSTERS {
            let previous: Option<String> = clusters
                .last()
                .map(|c: &common::InProcess| c.url.clone());
            let dir = tmp.path().join(format!("c{i}"));
            clusters.push(
                common::start(&dir, |config| {
                    config.cluster_id = Some(format!("c{i}"));
                    config.federation.federate = previous.into_iter().collect();
                })
                .await,
            );
        }
        let url = clusters[0].url.clone();
        let client = Client::connect(&url).await.expect("connect");
        let far = format!("c{}", CLUSTERS - 1);
        let converging = Instant::now();
        while client.request(ping_in(&far)).await.is_err() {
            assert!(
                converging.elapsed() < Duration::from_secs(60),
                "no route to {far} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "routes to {far} after {:.1} s; {seconds} s per case",
            converging.elapsed().as_secs_f64()
        );
        for (connections, in_flight) in LOADS {
            let mut p50s = Vec::new();
            for hops in 0..CLUSTERS {
                let load = (connections, in_flight);
                let (rate, latencies) = case(&url, &format!("c{hops}"), load, seconds).await;
                let p50 = percentile(&latencies, 0.5);
                println!(
                    "echo {hops} hops, {connections} conn x {in_flight:>2} in flight: {rate:>8.0} calls/s  p50 {:.3} ms  p99 {:.3} ms",
                    p50.as_secs_f64() * 1e3,
                    percentile(&latencies, 0.99).as_secs_f64() * 1e3,
                );
                p50s.push(p50);
            }
            let per_hop = (p50s[CLUSTERS - 1].as_secs_f64() - p50s[0].as_secs_f64())
                / (CLUSTERS - 1) as f64;
            println!(
                "  each cluster hop adds {:.0} µs of p50 latency at {connections} x {in_flight}",
                per_hop * 1e6
            );
        }

        // Publish -> deliver across two hops, one message at a time.
        let subscriber = Client::connect(&clusters[2].url).await.expect("connect");
        let mut sub = subscriber
            .subscribe(&["bench.#"], 0)
            .await
            .expect("subscribe");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            client
                .publish("bench.probe", json!({"probe": true}))
                .await
                .expect("publish");
            if tokio::time::timeout(Duration::from_millis(200), sub.next())
                .await
                .is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "c0 never learned c2's pattern");
        }
        while tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_ok()
        {}
        let mut latencies = Vec::new();
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < end {
            client
                .publish("bench.item", json!({"sent_ns": unix_nanos().to_string()}))
                .await
                .expect("publish");
            let note = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("delivered within 5 s")
                .expect("subscription open");
            let sent: u128 = note.message.payload["sent_ns"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("sent_ns");
            latencies.push(Duration::from_nanos(
                u64::try_from(unix_nanos().saturating_sub(sent)).unwrap_or(u64::MAX),
            ));
        }
        latencies.sort();
        println!(
            "publish -> deliver, 2 hops: {} messages, p50 {:.3} ms  p99 {:.3} ms",
            latencies.len(),
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        );
        drop(sub);
        for cluster in clusters.into_iter().rev() {
            cluster.stop().await;
        }
    });
}
