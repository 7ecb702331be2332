//! Traffic between members under load: a burst of pub/sub forwarding
//! through a three-node cluster must not starve raft (no election,
//! heartbeats keep flowing; the burst is 100,000 publishes in the default
//! run too), and a call forwarded to another member's worker ends there at
//! its caller's deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mpreg_client::{Client, Worker};
use mpreg_tests::cluster::Cluster;
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(30);
const PUBLISHES: u64 = 100_000;
/// Publishes in flight at once: far more than a link's queue holds.
const PUBLISHERS: u64 = 1024;
/// Client connections they share.
const CONNECTIONS: u64 = 16;

/// The worst heartbeat age (ms) the leader reports for a follower.
async fn worst_contact_age(admin: &str) -> f64 {
    let Ok(text) = mpreg_tests::metrics_of(admin).await else {
        return 0.0;
    };
    mpreg_tests::prom::parse(&text).map_or(0.0, |exposition| {
        exposition
            .samples
            .iter()
            .filter(|s| s.name == "mpreg_fabric_peer_last_contact_age_ms")
            .map(|s| s.value)
            .fold(0.0, f64::max)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_publishes_through_three_nodes_causes_no_election() {
    let cluster = Cluster::start(3, "").await.unwrap();
    let all = [0, 1, 2];
    let leader = cluster.wait_leader(&all, SETTLE).await.unwrap();
    let url = |i: usize| cluster.members[i].client_url.clone();
    let mut terms = Vec::new();
    for i in all {
        terms.push(cluster.status(i).await.unwrap()["raft"]["term"].clone());
    }

    // Subscribers on both followers, so the leader forwards every publish
    // over both of its links to them.
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for follower in [(leader + 1) % 3, (leader + 2) % 3] {
        let client = Client::connect(&url(follower)).await.unwrap();
        let mut sub = client.subscribe(&["burst.#"], 0).await.unwrap();
        let delivered = delivered.clone();
        readers.push(tokio::spawn(async move {
            let _client = client;
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    cluster.wait_converged(&all, SETTLE).await.unwrap();

    let burst_over = Arc::new(AtomicBool::new(false));
    let admin = cluster.members[leader].admin_url.clone();
    let sampler = {
        let burst_over = burst_over.clone();
        tokio::spawn(async move {
            let mut worst: f64 = 0.0;
            while !burst_over.load(Ordering::Relaxed) {
                worst = worst.max(worst_contact_age(&admin).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            worst
        })
    };
    let started = Instant::now();
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(Arc::new(Client::connect(&url(leader)).await.unwrap()));
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let client = connections[(p % CONNECTIONS) as usize].clone();
        publishers.push(tokio::spawn(async move {
            let mut i = p;
            while i < PUBLISHES {
                client
                    .publish(&format!("burst.{}", i % 16), json!({"i": i}))
                    .await
                    .expect("publish");
                i += PUBLISHERS;
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let elapsed = started.elapsed();
    burst_over.store(true, Ordering::Relaxed);
    let worst_age = sampler.await.unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
    println!(
        "{PUBLISHES} publishes in {:.1}s ({:.0}/s); {} deliveries on the followers; worst heartbeat age seen on the leader {worst_age} ms",
        elapsed.as_secs_f64(),
        PUBLISHES as f64 / elapsed.as_secs_f64(),
        delivered.load(Ordering::Relaxed),
    );
    for i in all {
        let status = cluster.status(i).await.unwrap();
        assert_eq!(
            status["raft"]["term"], terms[i],
            "member {i} saw an election during the burst: {status}"
        );
    }
    assert_eq!(cluster.wait_leader(&all, SETTLE).await.unwrap(), leader);
    assert!(
        delivered.load(Ordering::Relaxed) > 0,
        "the burst was forwarded"
    );
}

/// `mpreg_rpc_worker_calls_in_flight` of the member at `admin`.
async fn worker_calls_in_flight(admin: &str) -> f64 {
    let text = mpreg_tests::metrics_of(admin).await.unwrap();
    mpreg_tests::prom::parse(&text)
        .unwrap()
        .value("mpreg_rpc_worker_calls_in_flight", &[])
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_call_is_dropped_at_its_callers_deadline() {
    let cluster = Cluster::start(3, "request_timeout_ms = 1000\n")
        .await
        .unwrap();
    let all = [0, 1, 2];
    let leader = cluster.wait_leader(&all, SETTLE).await.unwrap();
    let (serving, calling) = ((leader + 1) % 3, (leader + 2) % 3);
    let worker = Worker::connect(&cluster.members[serving].client_url)
        .await
        .unwrap();
    worker
        .register("slow", "1.0.0", &[], |_, _| {
            std::thread::sleep(Duration::from_secs(8));
            Ok(json!("late"))
        })
        .await
        .unwrap();
    cluster.wait_converged(&all, SETTLE).await.unwrap();

    let caller = Client::connect(&cluster.members[calling].client_url)
        .await
        .unwrap();
    let started = Instant::now();
    let refused = caller.call("slow", vec![]).await.unwrap_err().to_string();
    assert!(refused.contains("(1012)"), "a timeout: {refused}");
    // The worker answers after 8 s; the serving member must not wait for
    // it past the caller's deadline (1 s).
    let admin = cluster.members[serving].admin_url.clone();
    while worker_calls_in_flight(&admin).await > 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the serving member still waits for the worker after the caller gave up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(worker);
}
