//! Durability: what a node acknowledged survives kill -9, and replay
//! rebuilds exactly the views the node served.

use std::sync::Arc;
use std::time::Duration;

use mpreg_client::Client;
use mpreg_daemon::{Config, Node};
use mpreg_storage::EventKind;
use mpreg_tests::{Daemon, TestDir, replay, sql_rows};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_restart_keeps_identity_and_replay_matches_status() {
    let dir = TestDir::new();
    let first = Daemon::start(&dir, &[]).unwrap();
    let (code, health) = first.get("/health").await.unwrap();
    assert_eq!(code, 200, "{health}");
    let before = first.status().await.unwrap();
    assert_eq!(before["node_id"], first.ready.node_id.as_str());
    assert_eq!(before["role"], "leader");
    let applied_before = before["last_applied"].as_u64().unwrap();
    // A first start records its membership (index 0), a blank leader entry
    // (index 1), node_joined, the route to its own cluster and one
    // registration per built-in function, each in an entry of its own.
    let builtins = sql_rows(
        &first.ready.admin_url,
        "SELECT count(*) AS n FROM functions WHERE provider = 'builtin'",
    )
    .await
    .unwrap()[0]["n"]
        .as_u64()
        .unwrap();
    assert_eq!(builtins, 14, "the built-in functions of docs/protocol.md");
    let first_kinds = event_kinds(&first.ready.admin_url).await;
    let mut expected = vec!["membership", "node_joined", "route_announced"];
    expected.extend(std::iter::repeat_n(
        "function_registered",
        builtins as usize,
    ));
    assert_eq!(first_kinds, expected);
    assert_eq!(applied_before, 3 + builtins, "{before}");
    first.kill9().unwrap();

    let second = Daemon::start(&dir, &[]).unwrap();
    let after = second.status().await.unwrap();
    assert_eq!(after["node_id"], before["node_id"]);
    assert_eq!(after["cluster_id"], before["cluster_id"]);
    // A restart (same term: no new leader entry) appends node_joined and
    // the own route; the built-ins are registered already.
    assert_eq!(
        after["last_applied"].as_u64().unwrap(),
        applied_before + 2,
        "{after}"
    );
    expected.extend(["node_joined", "route_announced"]);
    assert_eq!(event_kinds(&second.ready.admin_url).await, expected);
    let status = second.status().await.unwrap();
    let exit = second.stop().unwrap();
    assert!(exit.success(), "clean stop exits 0: {exit}");
    // A clean stop writes the memtables to SST files: the next open has no
    // write-ahead log to replay.
    assert_eq!(wal_bytes(&dir.data()), 0, "the WAL after a clean stop");

    let replayed = replay(&dir.data()).unwrap();
    assert_eq!(
        replayed["last_applied"], status["last_applied"],
        "{replayed} vs {status}"
    );
    assert_eq!(
        replayed["views_digest"], status["views_digest"],
        "{replayed} vs {status}"
    );
    // Every event but the membership entry (raft's, not an event): two
    // node_joined and two own routes (one per start) and the built-ins.
    assert_eq!(
        replayed["events"].as_u64(),
        Some(expected.len() as u64 - 1),
        "{replayed}"
    );
}

/// Bytes in the RocksDB write-ahead log files of the data dir `data`.
fn wal_bytes(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data.join("db"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .map(|path| std::fs::metadata(&path).unwrap().len())
        .sum()
}

/// The `kind` of every row of the `events` table, in log order.
async fn event_kinds(admin_url: &str) -> Vec<String> {
    sql_rows(admin_url, "SELECT kind FROM events ORDER BY index")
        .await
        .unwrap()
        .iter()
        .map(|row| row["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_status_shapes() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &["--node-id", "alpha", "--cluster-id", "c1"]).unwrap();
    assert_eq!(daemon.ready.node_id, "alpha");
    assert_eq!(daemon.ready.cluster_id, "c1");
    assert!(daemon.ready.client_url.starts_with("ws://127.0.0.1:"));
    assert!(daemon.ready.admin_url.starts_with("http://127.0.0.1:"));
    let status = daemon.status().await.unwrap();
    for field in [
        "node_id",
        "cluster_id",
        "role",
        "term",
        "leader",
        "last_applied",
        "views_digest",
        "raft",
    ] {
        assert!(
            status.get(field).is_some(),
            "/status lacks {field}: {status}"
        );
    }
    assert_eq!(status["views_digest"].as_str().unwrap().len(), 32);
    assert_eq!(status["node_id"], "alpha");
    assert_eq!(status["cluster_id"], "c1");
    assert_eq!(status["role"], "leader");
    assert_eq!(status["raft"]["role"], "leader");
    assert_eq!(status["term"], 1);
    assert_eq!(status["leader"], status["raft"]["leader"]);
    // The client URL serves the protocol, not just TCP: a call answers.
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    let pong = client.call("ping", vec![]).await.unwrap();
    assert_eq!(pong, json!({"pong": true, "node_id": "alpha"}));
}

/// Stops a node cleanly, replays its dir, and checks replay rebuilt what
/// the node served.
async fn stop_and_replay(node: Node, dir: &TestDir) -> mpreg_storage::ReplayReport {
    let applied = node.applied();
    node.shutdown().await;
    drop(node);
    let replayed = mpreg_storage::replay(&dir.data()).unwrap();
    assert_eq!(replayed.last_applied, applied.last_applied_index());
    assert_eq!(replayed.views_digest, applied.digest_hex());
    replayed
}

fn node_config(dir: &TestDir) -> Config {
    let mut config = Config::new(dir.data());
    config.node_id = Some("inproc".into());
    config.election_timeout = Duration::from_millis(100);
    config
}

/// 256 concurrent proposals; the runtime is dropped without shutdown (the
/// in-process analogue of a crash); every acknowledged event is there after
/// reopening, and replay agrees with the reopened node.
#[test]
fn acknowledged_concurrent_proposals_survive_an_unclean_drop() {
    let dir = TestDir::new();
    let proposers = 256;
    let acknowledged: Vec<String> = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let acked = rt.block_on(async {
            let node = Arc::new(
                Node::start(&node_config(&dir), vec![], Default::default())
                    .await
                    .unwrap(),
            );
            let mut tasks = Vec::new();
            for i in 0..proposers {
                let node = node.clone();
                tasks.push(tokio::spawn(async move {
                    let dest = format!("c{i}");
                    node.propose_ok(EventKind::RouteAnnounced {
                        dest: dest.clone(),
                        next_hop: "c0".into(),
                        path: vec!["c0".into(), dest.clone()],
                        cost: 1,
                        advertiser: "c0".into(),
                        expires_at_ms: None,
                    })
                    .await
                    .map(|_| dest)
                }));
            }
            let mut acked = Vec::new();
            for task in tasks {
                acked.push(task.await.unwrap().unwrap());
            }
            acked
        });
        // No Node::shutdown: dropping the runtime cancels every task mid-flight.
        drop(rt);
        acked
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = Node::start(&node_config(&dir), vec![], Default::default())
            .await
            .unwrap();
        {
            let catalog = node.views().catalog();
            for dest in &acknowledged {
                assert_eq!(
                    catalog.routes_to(dest).count(),
                    1,
                    "acknowledged route to {dest} lost"
                );
            }
            // Nothing but the acknowledged routes and the node's route to
            // its own cluster.
            let mut dests: Vec<String> = catalog.routes().map(|r| r.dest.clone()).collect();
            dests.sort();
            let mut expected = acknowledged.clone();
            expected.push("local".to_string());
            expected.sort();
            assert_eq!(dests, expected);
        }
        stop_and_replay(node, &dir).await;
    });
}

/// A small snapshot interval makes the node snapshot and purge its log;
/// replay then starts from the snapshot and still matches.
#[test]
fn snapshot_and_purge_keep_replay_equal() {
    let dir = TestDir::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut config = node_config(&dir);
        config.snapshot_interval = 20;
        config.log_retention = 5;
        let node = Node::start(&config, vec![], Default::default())
            .await
            .unwrap();
        for i in 0..100 {
            node.propose_ok(EventKind::RouteAnnounced {
                dest: format!("c{}", i % 7),
                next_hop: "c0".into(),
                path: vec![],
                cost: i,
                advertiser: format!("a{}", i % 3),
                expires_at_ms: None,
            })
            .await
            .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while node.raft_status().purged_index == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no purge: {:?}",
                node.raft_status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let replayed = stop_and_replay(node, &dir).await;
        assert!(
            replayed.events < 100,
            "replay started from the snapshot: {replayed:?}"
        );
    });
}

/// Fsync before the reply (docs/metrics.md: "every acknowledged write
/// waits for one" WAL sync). With a single writer and nothing else
/// writing, each acknowledged cache put appended exactly one log entry and
/// synced the WAL exactly once before its reply: scraped right after each
/// reply, both counters moved by exactly one. (kill -9 keeps the page
/// cache, so the kill tests alone would pass with the sync turned off.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_waited_for_its_own_wal_sync() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let admin = daemon.ready.admin_url.clone();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    let counts = || async {
        let text = mpreg_tests::metrics_of(&admin).await.unwrap();
        let exposition = mpreg_tests::prom::parse(&text).unwrap();
        let value = |name: &str| {
            exposition
                .value(name, &[])
                .unwrap_or_else(|| panic!("/metrics lacks {name}"))
        };
        (
            value("mpreg_storage_wal_fsync_seconds_count"),
            value("mpreg_storage_log_entries_appended_total"),
        )
    };
    let (synced, appended) = counts().await;
    for n in 1..=20u32 {
        let reply = client
            .cache(json!({"operation": "put",
                          "key": {"namespace": "sync", "identifier": format!("k{n}")},
                          "value": n}))
            .await
            .unwrap();
        assert_eq!(reply["status"], "ok", "{reply}");
        assert_eq!(
            counts().await,
            (synced + f64::from(n), appended + f64::from(n)),
            "after acknowledged write {n}: (WAL syncs, entries appended)"
        );
    }
}
