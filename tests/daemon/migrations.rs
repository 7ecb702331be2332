//! On-disk format fixtures: a data dir written by each released schema
//! version (in `migrations/fixtures/`) still opens, replays to its recorded
//! digest, and serves; where `expected.json` has `tables`, each query
//! there gives the recorded rows on the started daemon.
//!
//! `v1-all-rows` holds a row of every kind (queue with messages and a
//! dedup window, cache entry, route, durable subscription, node and
//! membership), so a change to the stored form of any of them fails here
//! (a decode error, another replay digest or other rows). It is written by
//! the ignored test `write_all_rows_fixture`:
//!
//! ```sh
//! cargo build --workspace --all-targets
//! MPREG_WRITE_FIXTURE=migrations/fixtures/v1-all-rows \
//!   cargo test -p mpreg-tests --test daemon -- --ignored write_all_rows_fixture
//! ```
//!
//! Regenerate it only together with a schema version bump (a new
//! `vN-all-rows` beside the old one, see migrations/README.md).

use std::path::{Path, PathBuf};

use mpreg_client::Client;
use mpreg_tests::{Daemon, RawClient, TestDir, replay, sql_rows};
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/fixtures")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_version_opens_replays_and_serves() {
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let fixture = entry.unwrap().path();
        if !fixture.is_dir() {
            continue;
        }
        seen += 1;
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap())
                .unwrap();
        let dir = TestDir::new();
        copy_dir(&fixture.join("data"), &dir.data());
        let replayed = replay(&dir.data()).unwrap();
        assert_eq!(
            replayed,
            expected["replay"],
            "fixture {}",
            fixture.display()
        );

        let daemon = Daemon::start(&dir, &[]).unwrap();
        assert_eq!(daemon.ready.node_id, expected["node_id"].as_str().unwrap());
        let status = daemon.status().await.unwrap();
        assert!(
            status["last_applied"].as_u64().unwrap()
                > expected["replay"]["last_applied"].as_u64().unwrap()
        );
        if let Some(tables) = expected["tables"].as_object() {
            for (sql, rows) in tables {
                let got = sql_rows(&daemon.ready.admin_url, sql).await.unwrap();
                assert_eq!(
                    Value::Array(got),
                    *rows,
                    "fixture {}: {sql}",
                    fixture.display()
                );
            }
        }
    }
    assert!(seen >= 1, "no fixtures in {}", fixtures().display());
}

/// Queries of the tables a restart does not change (the node and route
/// rows get this start's time; the replay digest covers them).
const ALL_ROWS_QUERIES: [&str; 5] = [
    "SELECT name, queue_type, max_size, visibility_timeout_ms, dedup_window_ms, depth FROM queues ORDER BY name",
    "SELECT queue, seq, message_id, state, priority, attempts, delivery, topic, size FROM queue_messages ORDER BY queue, seq",
    "SELECT namespace, identifier, version, tags, size_bytes, revision FROM cache_entries ORDER BY namespace, identifier",
    "SELECT subscription_id, pattern, subscriber, durable FROM subscriptions ORDER BY subscription_id, pattern",
    "SELECT dest, next_hop, hops, cost, state FROM routes ORDER BY dest",
];

/// Writes the `v1-all-rows` fixture (see the module comment); ignored,
/// run by hand with `MPREG_WRITE_FIXTURE` set to the fixture dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a fixture; run by hand"]
async fn write_all_rows_fixture() {
    let out = PathBuf::from(std::env::var("MPREG_WRITE_FIXTURE").expect("MPREG_WRITE_FIXTURE"));
    let out = if out.is_absolute() {
        out
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(out)
    };
    let node_id = "fixture-v1-all-rows";
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &["--node-id", node_id]).unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    client
        .queue(
            "create",
            json!({"queue_name": "orders", "queue_type": "priority",
                   "enable_deduplication": true, "deduplication_window_seconds": 31536000}),
        )
        .await
        .unwrap();
    for (id, priority) in [("o-1", 1), ("o-2", 7)] {
        client
            .queue(
                "send",
                json!({"queue_name": "orders", "message_id": id, "priority": priority,
                       "payload": {"order": id}}),
            )
            .await
            .unwrap();
    }
    client
        .cache(
            json!({"operation": "put", "key": {"namespace": "app", "identifier": "k"},
                      "value": {"v": 1}}),
        )
        .await
        .unwrap();
    let mut raw = RawClient::connect(&daemon.ready.client_url).await.unwrap();
    raw.send_text(
        r#"{"role":"pubsub-subscribe","u":"s","subscription":{"subscription_id":"keep","patterns":[{"pattern":"jobs.#"},{"pattern":"a.*"}],"subscriber":"w","get_backlog":false,"durable":true}}"#,
    )
    .await
    .unwrap();
    assert_eq!(raw.recv().await.unwrap().1["success"], true);
    drop((raw, client));
    assert!(daemon.stop().unwrap().success());

    let data = out.join("data");
    let _ = std::fs::remove_dir_all(&out);
    copy_dir(&dir.data(), &data);
    for entry in std::fs::read_dir(data.join("db")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == "LOCK" || name.starts_with("LOG") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let _ = std::fs::remove_file(data.join("mpreg.lock"));
    let snapshots = data.join("snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    std::fs::write(snapshots.join(".keep"), "").unwrap();
    let replayed = replay(&data).unwrap();

    // The rows as a start on a copy serves them.
    let copy = TestDir::new();
    copy_dir(&data, &copy.data());
    let again = Daemon::start(&copy, &[]).unwrap();
    let mut tables = serde_json::Map::new();
    for sql in ALL_ROWS_QUERIES {
        let rows = sql_rows(&again.ready.admin_url, sql).await.unwrap();
        assert!(!rows.is_empty(), "{sql} has no rows");
        tables.insert(sql.to_string(), Value::Array(rows));
    }
    let members = sql_rows(&again.ready.admin_url, "SELECT peer FROM peers")
        .await
        .unwrap();
    assert_eq!(members, vec![json!({"peer": node_id})]);
    let expected = json!({"node_id": node_id, "replay": replayed, "tables": tables});
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}
