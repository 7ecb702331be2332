//! Benchmark of bulk changes: a queue of `MPREG_BENCH_PURGE_MESSAGES`
//! messages (default 1,000,000) purged in bulk steps, as the daemon does it
//! (number of steps, total time, p50 and worst commit latency of one step,
//! which bounds the time of one apply), then filled again and purged by one
//! `QueuePurged` event, as daemons did before bulk steps.
//!
//! Run: `cargo bench -p mpreg-daemon --bench bulk`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::percentile;
use mpreg_daemon::{Config, Node};
use mpreg_storage::event::{BULK_STEP_ROWS, Delivery, NewMessage};
use mpreg_storage::views::{QueueRow, View};
use mpreg_storage::{EventKind, Outcome};

const QUEUE: &str = "bulk";
/// Messages per `MessagesSent` event while filling.
const SEND_BATCH: u64 = 1000;

fn fmt_ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn fill(node: &Arc<Node>, messages: u64, round: u64) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = worker;
            while batch * SEND_BATCH < messages {
                let messages = (batch * SEND_BATCH..((batch + 1) * SEND_BATCH).min(messages))
                    .map(|i| NewMessage {
                        message_id: format!("r{round}-m{i}"),
                        client_id: false,
                        topic: "bulk.t".into(),
                        payload: "1".into(),
                        priority: 0,
                        delay_ms: 0,
                        ttl_ms: None,
                        delivery: Delivery::AtLeastOnce,
                    })
                    .collect();
                let kind = EventKind::MessagesSent {
                    queue: QUEUE.into(),
                    messages,
                };
                node.propose_ok(kind).await.expect("send");
                batch += 16;
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender");
    }
    start.elapsed()
}

/// Messages the queue holds, as last applied.
fn queue_size(node: &Node) -> u64 {
    let row: Option<QueueRow> = node
        .inspector()
        .get(View::Queues, &QueueRow::key(QUEUE))
        .expect("read the queue");
    row.map_or(0, |q| q.size())
}

fn main() {
    let messages: u64 = std::env::var("MPREG_BENCH_PURGE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new(tmp.path().join("data"));
    config.node_id = Some("bench".into());
    config.election_timeout = Duration::from_millis(100);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let node = Arc::new(Node::start(&config, vec![], Default::default()).await.expect("node"));
        let settings = common::fifo_settings(messages);
        let declare = EventKind::QueueDeclared {
            name: QUEUE.into(),
            settings,
        };
        node.propose_ok(declare).await.expect("declare");

        let filled = fill(&node, messages, 0).await;
        println!(
            "fill: {messages} messages in {:.1}s = {:.0} messages/s",
            filled.as_secs_f64(),
            messages as f64 / filled.as_secs_f64()
        );
        let start = Instant::now();
        let mut steps = Vec::new();
        let mut removed = 0;
        let mut step = Some(EventKind::QueueTrimmed {
            name: QUEUE.into(),
            from_seq: 0,
            below_seq: None,
            limit: BULK_STEP_ROWS,
        });
        while let Some(kind) = step.take() {
            let t = Instant::now();
            let Outcome::Stepped { removed: r, next } = node.propose_ok(kind).await.expect("step")
            else {
                panic!("a step answered something else");
            };
            steps.push(t.elapsed());
            removed += r;
            step = next.map(|next| *next);
        }
        let total = start.elapsed();
        steps.sort();
        println!(
            "purge in steps of {BULK_STEP_ROWS}: {removed} messages in {} steps, {:.1}s; one step p50 {} worst {}",
            steps.len(),
            total.as_secs_f64(),
            fmt_ms(percentile(&steps, 0.5)),
            fmt_ms(percentile(&steps, 1.0)),
        );

        fill(&node, messages, 1).await;
        let start = Instant::now();
        // The proposer stops waiting after its patience (5 s); the entry
        // still commits and applies, so wait for the queue to be empty.
        let answered = node
            .propose_ok(EventKind::QueuePurged { name: QUEUE.into() })
            .await;
        let answered_after = start.elapsed();
        while queue_size(&node) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "purge in one apply (before bulk steps): {messages} messages, applied after {} (the proposer {} after {})",
            fmt_ms(start.elapsed()),
            if answered.is_ok() { "was answered" } else { "gave up" },
            fmt_ms(answered_after),
        );
        node.shutdown().await;
    });
}
