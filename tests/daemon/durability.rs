//! Durability: what a node acknowledged survives kill -9, and replay
//! rebuilds exactly the views the node served.

use std::sync::Arc;
use std::time::Duration;

use mpreg_daemon::{Config, Node};
use mpreg_storage::EventKind;
use mpreg_tests::{Daemon, TestDir, replay};

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
    assert!(
        applied_before >= 2,
        "initial membership + node_joined: {before}"
    );
    first.kill9().unwrap();

    let second = Daemon::start(&dir, &[]).unwrap();
    let after = second.status().await.unwrap();
    assert_eq!(after["node_id"], before["node_id"]);
    assert_eq!(after["cluster_id"], before["cluster_id"]);
    assert!(
        after["last_applied"].as_u64().unwrap() > applied_before,
        "restart appends node_joined: {after}"
    );
    let status = second.status().await.unwrap();
    let exit = second.stop().unwrap();
    assert!(exit.success(), "clean stop exits 0: {exit}");

    let replayed = replay(&dir.data()).unwrap();
    assert_eq!(
        replayed["last_applied"], status["last_applied"],
        "{replayed} vs {status}"
    );
    assert_eq!(
        replayed["views_digest"], status["views_digest"],
        "{replayed} vs {status}"
    );
    // Two node_joined events (one per start) and the built-in functions.
    assert!(replayed["events"].as_u64().unwrap() >= 2, "{replayed}");
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
    let client =
        tokio::net::TcpStream::connect(daemon.ready.client_url.trim_start_matches("ws://")).await;
    assert!(client.is_ok(), "client listener accepts connections");
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
    assert_eq!(acknowledged.len(), proposers);

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
