//! SQL benchmark over admin HTTP on an in-process daemon: p50/p99 latency
//! of `SELECT * FROM routes WHERE dest='c2'` (pushed down) with 1k, 100k and
//! 1M routes, the same table scanned without pushdown, and `SELECT count(*)
//! FROM events` with 1M events in the log.
//!
//! Run: `cargo bench -p mpreg-daemon --bench sql` (`MPREG_BENCH_QUERIES`
//! sets queries per case, default 100).

use std::sync::Arc;
use std::time::Instant;

mod common;

use common::percentile;
use mpreg_daemon::Node;
use mpreg_storage::EventKind;

/// Proposes routes `from..to` (to clusters `r{i}`) from 256 concurrent tasks.
async fn add_routes(node: &Arc<Node>, from: usize, to: usize) {
    let tasks: Vec<_> = (0..256)
        .map(|t| {
            let node = node.clone();
            tokio::spawn(async move {
                for i in (from + t..to).step_by(256) {
                    node.propose_ok(EventKind::RouteAnnounced {
                        dest: format!("r{i}"),
                        next_hop: "c3".into(),
                        path: vec!["c3".into(), format!("r{i}")],
                        cost: 10,
                        advertiser: "c3".into(),
                        expires_at_ms: None,
                    })
                    .await
                    .expect("propose");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("proposer");
    }
}

async fn case(http: &reqwest::Client, admin: &str, label: &str, sql: &str, queries: usize) {
    let mut latencies = Vec::with_capacity(queries);
    let mut rows = 0;
    for _ in 0..queries {
        let t = Instant::now();
        let response = http
            .get(format!("{admin}/sql"))
            .query(&[("q", sql)])
            .send()
            .await
            .expect("GET /sql");
        assert!(
            response.status().is_success(),
            "{sql}: {}",
            response.status()
        );
        let body: serde_json::Value = response.json().await.expect("JSON rows");
        latencies.push(t.elapsed());
        rows = body.as_array().map_or(0, Vec::len);
    }
    latencies.sort();
    println!(
        "{label:<44} {rows:>3} rows  p50 {:>9.3} ms  p99 {:>9.3} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
}

fn main() {
    let queries: usize = std::env::var("MPREG_BENCH_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let tmp = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let daemon = common::start(tmp.path(), |config| {
            config.snapshot_interval = u64::MAX / 2;
        })
        .await;
        let http = reqwest::Client::new();
        daemon
            .node
            .propose_ok(EventKind::RouteAnnounced {
                dest: "c2".into(),
                next_hop: "c3".into(),
                path: vec!["c3".into(), "c2".into()],
                cost: 10,
                advertiser: "c3".into(),
                expires_at_ms: None,
            })
            .await
            .expect("propose");
        let mut have = 0;
        for total in [1_000, 100_000, 1_000_000] {
            let t = Instant::now();
            add_routes(&daemon.node, have, total).await;
            let secs = t.elapsed().as_secs_f64();
            println!(
                "added {} routes in {secs:.1} s ({:.0} events/s)",
                total - have,
                (total - have) as f64 / secs
            );
            have = total;
            let queries = if total >= 1_000_000 {
                queries.min(20)
            } else {
                queries
            };
            case(
                &http,
                &daemon.admin_url,
                &format!("routes WHERE dest='c2', {total} routes"),
                "SELECT * FROM routes WHERE dest='c2'",
                queries,
            )
            .await;
            case(
                &http,
                &daemon.admin_url,
                &format!("routes WHERE next_hop='c2' (scan), {total}"),
                "SELECT * FROM routes WHERE next_hop='c2'",
                queries.min(20),
            )
            .await;
        }
        case(
            &http,
            &daemon.admin_url,
            "count(*) FROM events, 1M+ events",
            "SELECT count(*) FROM events",
            queries.min(20),
        )
        .await;
        case(
            &http,
            &daemon.admin_url,
            "events WHERE index > last-10 (pushdown)",
            &format!(
                "SELECT index, kind FROM events WHERE index > {}",
                daemon.node.applied().last_applied_index() - 10
            ),
            queries,
        )
        .await;
        daemon.stop().await;
    });
}
