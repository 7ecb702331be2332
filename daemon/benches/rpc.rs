//! RPC benchmark over real WebSocket connections to an in-process daemon:
//! `echo` calls/s and p50/p99 latency with 1 and 64 calls in flight, from 1
//! and from 8 connections; then the same through a worker connection; then
//! `echo` again over `tcp://` (length-prefixed frames on the same port),
//! then over `wss://` and `tcps://` (a second daemon serving TLS with a
//! certificate made for the run).
//!
//! Run: `cargo bench -p mpreg-daemon --bench rpc` (`MPREG_BENCH_SECONDS`
//! sets the length of each case, default 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::percentile;
use mpreg_client::tls::TlsClient;
use mpreg_client::{Client, ConnectOptions, Worker};
use serde_json::json;

async fn case(
    (url, options): (&str, &ConnectOptions),
    fun: &str,
    connections: usize,
    in_flight: usize,
    seconds: f64,
) {
    let mut clients = Vec::new();
    for _ in 0..connections {
        let client = Client::connect_with(url, options).await.expect("connect");
        clients.push(Arc::new(client));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in &clients {
        for _ in 0..in_flight {
            let client = client.clone();
            let fun = fun.to_string();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    client.call(&fun, vec![json!("x")]).await.expect("call");
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
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    println!(
        "{:>4} {fun:>6} {connections} conn x {in_flight:>2} in flight: {:>8.0} calls/s  p50 {:.3} ms  p99 {:.3} ms",
        &url[..url.find(':').unwrap_or(0)],
        all.len() as f64 / elapsed,
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
    );
}

fn main() {
    let seconds = common::seconds();
    let tmp = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let daemon = common::start(tmp.path(), |_| {}).await;
        let url = daemon.url.clone();
        let worker = Worker::connect(&url).await.expect("worker");
        worker
            .register("wecho", "1.0.0", &[], |args, _| Ok(args[0].clone()))
            .await
            .expect("register");
        let plain = ConnectOptions::default();
        for fun in ["echo", "wecho"] {
            for (connections, in_flight) in [(1, 1), (1, 64), (8, 1), (8, 64)] {
                case((&url, &plain), fun, connections, in_flight, seconds).await;
            }
        }
        let tcp = url.replacen("ws://", "tcp://", 1);
        for (connections, in_flight) in [(1, 1), (1, 64), (8, 1), (8, 64)] {
            case((&tcp, &plain), "echo", connections, in_flight, seconds).await;
        }
        drop(worker);
        daemon.stop().await;

        let (cert, key, ca) = common::certificates(tmp.path());
        let tls_dir = tmp.path().join("tls-node");
        let daemon = common::start(&tls_dir, |config| {
            config.tls_cert_file = Some(cert);
            config.tls_key_file = Some(key);
            config.tls_ca_file = Some(ca.clone());
        })
        .await;
        let tls = ConnectOptions {
            tls: Some(TlsClient::new(&ca, None).expect("trust the CA")),
            ..ConnectOptions::default()
        };
        let tcps = daemon.url.replacen("wss://", "tcps://", 1);
        for url in [&daemon.url, &tcps] {
            for (connections, in_flight) in [(1, 1), (1, 64), (8, 1), (8, 64)] {
                case((url, &tls), "echo", connections, in_flight, seconds).await;
            }
        }
        daemon.stop().await;
    });
}
