//! Raft never stalls on size: an event over `max_entry_bytes` is refused
//! before it is proposed, events proposed together are split into entries
//! under the cap, and a follower that fell behind on entries near the cap
//! catches up (AppendEntries batches are split to fit a peer frame).

use std::time::Duration;

use anyhow::{Context, Result};
use mpreg_client::{Client, ClientError};
use mpreg_tests::cluster::Cluster;
use mpreg_tests::{Daemon, TestDir, sql_rows};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_the_entry_cap_are_refused_and_batches_respect_it() -> Result<()> {
    let dir = TestDir::new();
    let config = dir.config("max_entry_bytes = 65536\n");
    let args: Vec<&str> = config.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&dir, &args)?;
    let client = Client::connect(&daemon.ready.client_url).await?;
    client.queue("create", json!({"queue_name": "big"})).await?;

    let too_big = "x".repeat(100 * 1024);
    let refused = client
        .queue("send", json!({"queue_name": "big", "payload": too_big}))
        .await;
    match &refused {
        Err(ClientError::Refused(text)) => assert!(
            text.contains("more than max_entry_bytes (65536)") && text.contains("1006"),
            "{text}"
        ),
        other => panic!("an event over the cap was not refused: {other:?}"),
    }

    // 24 concurrent sends of 30 KiB: at most two fit one 64 KiB entry.
    let payload = "y".repeat(30 * 1024);
    let sends = (0..24).map(|n| {
        let client = &client;
        let payload = payload.clone();
        async move {
            client
                .queue(
                    "send",
                    json!({"queue_name": "big", "payload": payload, "message_id": format!("m{n}")}),
                )
                .await
        }
    });
    for sent in futures_util::future::join_all(sends).await {
        sent.context("a send under the cap")?;
    }
    let rows = sql_rows(
        &daemon.ready.admin_url,
        "SELECT \"index\", count(*) AS n FROM events WHERE kind = 'messages_sent' GROUP BY \"index\"",
    )
    .await?;
    let per_entry: Vec<u64> = rows.iter().filter_map(|r| r["n"].as_u64()).collect();
    assert_eq!(per_entry.iter().sum::<u64>(), 24, "{rows:?}");
    assert!(
        per_entry.iter().all(|&n| n <= 2),
        "an entry held more than the cap allows: {rows:?}"
    );
    daemon.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_on_entries_near_the_cap() -> Result<()> {
    let cluster = Cluster::start(3, "").await?;
    let leader = cluster
        .wait_leader(&[0, 1, 2], Duration::from_secs(30))
        .await?;
    let behind = (leader + 1) % 3;
    let client = Client::connect(&cluster.members[leader].client_url).await?;
    client
        .queue("create", json!({"queue_name": "near"}))
        .await?;
    cluster.pause(behind)?;
    // Twelve entries of ~6 MiB: one AppendEntries of all of them would be
    // a 72 MiB frame, over what a peer reads (64 MiB).
    let payload = "z".repeat(6 << 20);
    for n in 0..12 {
        client
            .queue(
                "send",
                json!({"queue_name": "near", "payload": payload, "message_id": format!("n{n}")}),
            )
            .await
            .with_context(|| format!("send {n}"))?;
    }
    cluster.resume(behind)?;
    cluster
        .wait_converged(&[0, 1, 2], Duration::from_secs(120))
        .await
        .context("the paused follower did not catch up")?;
    let rows = cluster
        .sql(
            behind,
            "SELECT count(*) AS n FROM queue_messages WHERE queue = 'near'",
        )
        .await?;
    assert_eq!(rows[0]["n"], 12, "{rows:?}");
    Ok(())
}
