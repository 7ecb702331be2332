//! The queue crash test: producers send, a consumer acks half of what it
//! receives, and the daemon is `kill -9`ed at random moments and restarted.
//! Afterwards every acknowledged send was delivered, no message came back
//! after its ack was acknowledged, nothing unknown appeared, and replay
//! gives the live digest. `MPREG_SOAK=1` sends 5x more and kills 3x more.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use mpreg_client::Client;
use mpreg_tests::dice::Dice;
use mpreg_tests::{Daemon, TestDir, replay};
use serde_json::{Value, json};

const PRODUCERS: usize = 8;

/// What the producers and the consumer saw.
#[derive(Default)]
struct Ledger {
    /// Messages whose send was acknowledged.
    sent: HashSet<u64>,
    /// Messages whose ack was acknowledged.
    acked: HashSet<u64>,
    /// Deliveries per message.
    delivered: HashMap<u64, u32>,
    /// Messages delivered again after their ack was acknowledged.
    returned_after_ack: Vec<u64>,
    /// Deliveries that were not messages anyone sent.
    unknown: Vec<Value>,
}

/// Connects to whatever daemon is current, waiting while it restarts.
async fn connect(url: &RwLock<String>) -> Client {
    loop {
        let current = url.read().unwrap().clone();
        if let Ok(client) = Client::connect(&current).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends message `n` until a send is acknowledged (a resend after a lost
/// reply is refused as a duplicate by the dedup window, which is fine).
async fn produce(url: Arc<RwLock<String>>, ledger: Arc<Mutex<Ledger>>, ids: Vec<u64>) {
    let mut client = connect(&url).await;
    for n in ids {
        loop {
            let body = json!({"queue_name": "crash", "message_id": format!("m-{n}"), "payload": n});
            match client.queue("send", body).await {
                Ok(_) => break,
                Err(_) => client = connect(&url).await,
            }
        }
        ledger.lock().unwrap().sent.insert(n);
    }
}

fn message_number(message: &Value) -> Option<u64> {
    let n = message["message_id"]
        .as_str()?
        .strip_prefix("m-")?
        .parse()
        .ok()?;
    (message["payload"] == json!(n)).then_some(n)
}

/// Receives until every acknowledged send was delivered once the producers
/// are done; acks the even messages.
async fn consume(url: Arc<RwLock<String>>, ledger: Arc<Mutex<Ledger>>, produced: Arc<AtomicBool>) {
    let mut client = connect(&url).await;
    loop {
        if produced.load(Ordering::SeqCst) {
            let l = ledger.lock().unwrap();
            if l.sent.iter().all(|n| l.delivered.contains_key(n)) {
                return;
            }
        }
        let body = json!({"queue_name": "crash", "subscriber_id": "consumer",
                          "max_messages": 100, "timeout_seconds": 0.2});
        let messages = match client.queue("receive", body).await {
            Ok(reply) => reply["messages"].as_array().cloned().unwrap_or_default(),
            Err(_) => {
                client = connect(&url).await;
                continue;
            }
        };
        for message in messages {
            let Some(n) = message_number(&message) else {
                ledger.lock().unwrap().unknown.push(message);
                continue;
            };
            {
                let mut l = ledger.lock().unwrap();
                *l.delivered.entry(n).or_default() += 1;
                if l.acked.contains(&n) {
                    l.returned_after_ack.push(n);
                }
            }
            if n % 2 == 0 {
                let body = json!({"queue_name": "crash", "message_id": message["message_id"],
                                  "subscriber_id": "consumer"});
                if client.queue("ack", body).await.is_ok() {
                    ledger.lock().unwrap().acked.insert(n);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_send_and_never_returns_an_acked_message() {
    let soak = std::env::var("MPREG_SOAK").is_ok_and(|v| v == "1");
    let (total, kills) = if soak {
        (50_000u64, 15)
    } else {
        (10_000u64, 5)
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 | 1);
    eprintln!("queue crash test: {total} messages, {kills} kills, seed {seed}");
    let mut rng = Dice::new(seed);

    let dir = TestDir::new();
    let mut daemon = Daemon::start(&dir, &[]).unwrap();
    let setup = Client::connect(&daemon.ready.client_url).await.unwrap();
    setup
        .queue(
            "create",
            json!({"queue_name": "crash", "max_size": 1_000_000, "max_retries": 1_000_000,
                   "default_visibility_timeout_seconds": 1.0,
                   "enable_deduplication": true, "deduplication_window_seconds": 3600}),
        )
        .await
        .unwrap();
    drop(setup);

    let url = Arc::new(RwLock::new(daemon.ready.client_url.clone()));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let produced = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS as u64)
        .map(|p| {
            let ids = (0..total).filter(|n| n % PRODUCERS as u64 == p).collect();
            tokio::spawn(produce(url.clone(), ledger.clone(), ids))
        })
        .collect();
    let consumer = tokio::spawn(consume(url.clone(), ledger.clone(), produced.clone()));

    for kill in 0..kills {
        tokio::time::sleep(Duration::from_millis(300 + rng.roll(1200))).await;
        let before = ledger.lock().unwrap().sent.len();
        daemon.kill9().unwrap();
        daemon = Daemon::start(&dir, &[]).unwrap();
        *url.write().unwrap() = daemon.ready.client_url.clone();
        eprintln!("kill {} after {before} acknowledged sends", kill + 1);
    }
    let started = Instant::now();
    for producer in producers {
        producer.await.unwrap();
    }
    produced.store(true, Ordering::SeqCst);
    if tokio::time::timeout(Duration::from_secs(120), consumer)
        .await
        .is_err()
    {
        let missing: Vec<u64> = {
            let l = ledger.lock().unwrap();
            let mut m: Vec<u64> = l
                .sent
                .iter()
                .filter(|n| !l.delivered.contains_key(n))
                .copied()
                .collect();
            m.sort();
            m
        };
        let ids: Vec<String> = missing.iter().take(5).map(|n| format!("'m-{n}'")).collect();
        let rows = mpreg_tests::sql_rows(
            &daemon.ready.admin_url,
            &format!(
                "SELECT * FROM queue_messages WHERE message_id IN ({})",
                ids.join(",")
            ),
        )
        .await;
        let queues = mpreg_tests::sql_rows(&daemon.ready.admin_url, "SELECT * FROM queues").await;

        panic!(
            "{} acknowledged sends not delivered within 120 s of the last kill, e.g. {:?}; their rows: {rows:?}; queues: {queues:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    eprintln!("drained {:?} after the last kill", started.elapsed());

    {
        let l = ledger.lock().unwrap();
        assert_eq!(
            l.sent.len() as u64,
            total,
            "every send was retried until acknowledged"
        );
        assert!(l.unknown.is_empty(), "unknown deliveries: {:?}", l.unknown);
        assert!(
            l.returned_after_ack.is_empty(),
            "delivered again after their ack was acknowledged: {:?}",
            l.returned_after_ack
        );
        let never: Vec<&u64> = l
            .sent
            .iter()
            .filter(|n| !l.delivered.contains_key(n))
            .collect();
        assert!(
            never.is_empty(),
            "acknowledged sends never delivered: {never:?}"
        );
        assert!(!l.acked.is_empty() && l.acked.iter().all(|n| n % 2 == 0));
    }

    // No message left, no lease timer pending: the views stop changing, so
    // the live digest can be compared with replay after a last kill -9.
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    client
        .queue("purge", json!({"queue_name": "crash"}))
        .await
        .unwrap();
    let stats = client
        .queue("stats", json!({"queue_name": "crash"}))
        .await
        .unwrap();
    assert_eq!(stats["queues"][0]["depth"], json!(0));
    assert_eq!(stats["queues"][0]["in_flight"], json!(0));
    drop(client);
    // A timer firing proposed just before the purge may still commit (a
    // no-op): take the live position once it has stopped moving.
    let mut status = daemon.status().await.unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = daemon.status().await.unwrap();
        if again["last_applied"] == status["last_applied"] {
            break;
        }
        status = again;
    }
    daemon.kill9().unwrap();
    let replayed = replay(&dir.data()).unwrap();
    if replayed["last_applied"] != status["last_applied"] {
        let sql = format!(
            "SELECT index, kind FROM events WHERE index > {}",
            status["last_applied"]
        );
        let later = mpreg_tests::run_daemon(&[
            "sql".as_ref(),
            "--data-dir".as_ref(),
            dir.data().as_os_str(),
            sql.as_ref(),
        ])
        .unwrap();
        panic!(
            "replay {replayed} vs live {status}; events after the live position: {}",
            String::from_utf8_lossy(&later.stdout)
        );
    }
    assert_eq!(replayed["views_digest"], status["views_digest"]);
}
