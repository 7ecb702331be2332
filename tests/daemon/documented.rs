//! Documented behaviour that no other test reached, each checked through
//! the public interfaces against the exact code or message the docs give:
//! a request past `request_timeout_ms` (1012), a built-in name refused on
//! register (1006), a start whose `--node-id` / `--cluster-id` differ from
//! the data dir's, and the membership endpoints' 200 / 409 answers.

use std::time::{Duration, Instant};

use mpreg_client::Worker;
use mpreg_tests::{Daemon, RawClient, TestDir, http, sql_rows, start_expecting_exit_with};
use serde_json::{Value, json};

fn start_with(config: &str) -> (TestDir, Daemon) {
    let dir = TestDir::new();
    let flags = dir.config(config);
    let daemon =
        Daemon::start(&dir, &flags.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    (dir, daemon)
}

/// docs/protocol.md: 1012 `RPC execution timed out`, "the request ran past
/// `request_timeout_ms`".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_request_timeout_ms_gets_1012() {
    let (_dir, daemon) = start_with("request_timeout_ms = 500\n");
    let worker = Worker::connect(&daemon.ready.client_url).await.unwrap();
    worker
        .register("stall", "1.0.0", &[], |_, _| {
            std::thread::sleep(Duration::from_secs(3));
            Ok(json!("late"))
        })
        .await
        .unwrap();
    let mut raw = RawClient::connect(&daemon.ready.client_url).await.unwrap();
    let started = Instant::now();
    raw.send_text(r#"{"role":"rpc","u":"slow-1","cmds":[{"name":"x","fun":"stall","args":[]}]}"#)
        .await
        .unwrap();
    let (_, reply) = raw.recv().await.unwrap();
    let took = started.elapsed();
    assert_eq!(reply["u"], "slow-1", "{reply}");
    assert_eq!(reply["r"], Value::Null, "{reply}");
    assert_eq!(reply["error"]["code"], 1012, "{reply}");
    assert_eq!(
        reply["error"]["message"], "RPC execution timed out",
        "{reply}"
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2500),
        "answered after {took:?}, not at the 500 ms timeout"
    );
}

/// docs/protocol.md, Workers: "a built-in name is refused with 1006".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_built_in_name_is_refused_with_1006() {
    let (_dir, daemon) = start_with("");
    let mut raw = RawClient::connect(&daemon.ready.client_url).await.unwrap();
    // The bare names, the prefixed names callers may use (which a worker
    // could otherwise shadow) and the queue functions.
    for (u, name) in [
        ("w1", "echo"),
        ("w2", "mpreg.system.ping"),
        ("w3", "app.echo"),
        ("w4", "mpreg.queue.send"),
        ("w5", "app.mpreg.queue.ack"),
    ] {
        raw.send_text(
            json!({"role": "worker-register", "u": u, "functions": [{"name": name}]}).to_string(),
        )
        .await
        .unwrap();
        let (_, reply) = raw.recv().await.unwrap();
        assert_eq!(reply["u"], u, "{reply}");
        assert_eq!(reply["error"]["code"], 1006, "{name}: {reply}");
        assert_eq!(reply["error"]["message"], "Bad request", "{name}: {reply}");
        assert!(
            reply["error"]["details"]
                .as_str()
                .is_some_and(|d| d.contains(name)),
            "the refusal names {name}: {reply}"
        );
    }
    // The catalog holds no worker registration.
    let rows = sql_rows(
        &daemon.ready.admin_url,
        "SELECT name FROM functions WHERE provider <> 'builtin'",
    )
    .await
    .unwrap();
    assert_eq!(rows, Vec::<Value>::new());
}

/// docs/operations.md, Errors at start: `--node-id` / `--cluster-id`
/// differ from the dir's → `error: the data dir belongs to node X, not Y`
/// (and the cluster's alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_another_node_or_cluster_id_is_refused() {
    let dir = TestDir::new();
    let first = Daemon::start(&dir, &["--node-id", "alpha", "--cluster-id", "c1"]).unwrap();
    let applied = first.status().await.unwrap()["last_applied"].clone();
    assert!(first.stop().unwrap().success());
    for (flags, message) in [
        (
            ["--node-id", "beta"],
            "error: the data dir belongs to node alpha, not beta",
        ),
        (
            ["--cluster-id", "c2"],
            "error: the data dir belongs to cluster c1, not c2",
        ),
    ] {
        let out = start_expecting_exit_with(&dir, &flags).unwrap();
        assert!(!out.status.success(), "{flags:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.lines().any(|line| line.starts_with(message)),
            "{flags:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The refusals changed nothing: the same ids start, at the same index
    // plus this start's own events.
    let again = Daemon::start(&dir, &["--node-id", "alpha", "--cluster-id", "c1"]).unwrap();
    let status = again.status().await.unwrap();
    assert_eq!(status["node_id"], "alpha");
    assert_eq!(status["cluster_id"], "c1");
    assert_eq!(
        status["last_applied"].as_u64(),
        applied.as_u64().map(|a| a + 2),
        "a restart appends node_joined and the own route"
    );
}

/// docs/cluster.md, membership over admin HTTP: `POST /cluster/members`
/// answers 200 with the members; a remove of a non-member or of the only
/// voter answers 409 with the documented reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_answers_200_and_409_as_documented() {
    let (_dir, daemon) = start_with("");
    let admin = &daemon.ready.admin_url;
    let me = daemon.ready.node_id.clone();
    let client = http();

    // Adding the node that already is the voter changes nothing: 200 and
    // the members.
    let added = client
        .post(format!("{admin}/cluster/members"))
        .json(&json!({"node_id": me, "url": daemon.ready.client_url}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status().as_u16(), 200);
    assert_eq!(
        added.json::<Value>().await.unwrap(),
        json!({"members": [me]})
    );

    let bad = client
        .post(format!("{admin}/cluster/members"))
        .json(&json!({"node": "n9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    for (who, reason) in [
        ("n9", "n9 is not a member of this cluster".to_string()),
        (
            me.as_str(),
            format!("{me} is the only voter; a cluster cannot remove its last voter"),
        ),
    ] {
        let answer = client
            .delete(format!("{admin}/cluster/members/{who}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 409, "{who}");
        let body: Value = answer.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| e.ends_with(&reason)),
            "{who}: {body}"
        );
    }
    let (code, members) = daemon.get("/cluster/members").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(1),
        "{members}"
    );
}
