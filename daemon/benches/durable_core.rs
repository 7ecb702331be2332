//! Benchmark of the durable core: fsynced commits with 1, 16 and 256
//! concurrent proposers (events/s, p50/p99 commit latency), replay speed
//! over a log of `MPREG_BENCH_REPLAY_EVENTS` events (default 1,000,000),
//! and the raw fsync latency of the disk under the temp dir for reference.
//!
//! Run: `cargo bench -p mpreg-daemon --bench durable_core`.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::percentile;
use mpreg_daemon::{Config, Node};
use mpreg_storage::EventKind;

fn fmt_ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn route(i: u64) -> EventKind {
    EventKind::RouteAnnounced {
        dest: format!("c{}", i % 50_000),
        next_hop: "n1".into(),
        path: vec!["n1".into()],
        cost: (i % 10) as u32,
        advertiser: format!("a{}", i % 4),
        expires_at_ms: None,
    }
}

fn fsync_latency(dir: &std::path::Path) -> std::io::Result<()> {
    let mut file = std::fs::File::create(dir.join("fsync-probe"))?;
    let block = vec![7u8; 4096];
    let mut samples = Vec::new();
    for _ in 0..500 {
        let start = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(start.elapsed());
    }
    samples.sort();
    println!(
        "disk fsync (4 KiB write + fdatasync, 500x): p50 {} p99 {} => at most {:.0} syncs/s",
        fmt_ms(percentile(&samples, 0.5)),
        fmt_ms(percentile(&samples, 0.99)),
        1.0 / percentile(&samples, 0.5).as_secs_f64()
    );
    Ok(())
}

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::new(dir.to_path_buf());
    config.node_id = Some("bench".into());
    config.election_timeout = Duration::from_millis(100);
    // Keep the whole log so replay reads every event.
    config.snapshot_interval = u64::MAX / 2;
    config
}

async fn proposers(
    node: Arc<Node>,
    concurrency: u64,
    total: u64,
    offset: u64,
) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = worker;
            while i < total {
                let t = Instant::now();
                node.propose_ok(route(offset + i)).await.expect("commit");
                latencies.push(t.elapsed());
                i += concurrency;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("proposer"));
    }
    all.sort();
    (start.elapsed(), all)
}

fn main() {
    let replay_events: u64 = std::env::var("MPREG_BENCH_REPLAY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    fsync_latency(tmp.path()).expect("fsync probe");
    let data = tmp.path().join("data");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let node = Arc::new(Node::start(&config(&data), vec![], Default::default()).await.expect("node"));
        let mut written = 0;
        for (concurrency, total) in [(1u64, 2_000u64), (16, 20_000), (256, 100_000)] {
            let (elapsed, lat) = proposers(node.clone(), concurrency, total, written).await;
            written += total;
            println!(
                "commit, {concurrency:>3} proposers: {total} events in {:.2}s = {:.0} events/s, p50 {} p99 {}",
                elapsed.as_secs_f64(),
                total as f64 / elapsed.as_secs_f64(),
                fmt_ms(percentile(&lat, 0.5)),
                fmt_ms(percentile(&lat, 0.99)),
            );
        }
        if replay_events > written {
            let (elapsed, _) = proposers(node.clone(), 256, replay_events - written, written).await;
            println!(
                "filled the log to {replay_events} events ({:.0} events/s)",
                (replay_events - written) as f64 / elapsed.as_secs_f64()
            );
        }
        node.shutdown().await;
    });
    let start = Instant::now();
    let report = mpreg_storage::replay(&data).expect("replay");
    let elapsed = start.elapsed();
    println!(
        "replay: {} events in {:.2}s = {:.0} events/s (last_applied {}, digest {})",
        report.events,
        elapsed.as_secs_f64(),
        report.events as f64 / elapsed.as_secs_f64(),
        report.last_applied,
        report.views_digest
    );
}
