//! Pub/sub across clusters between real daemons, in a ring: a publish on
//! one cluster reaches the subscribers of every other cluster with a
//! matching pattern once each, in publish order, and crosses links only
//! toward those clusters; the backlog of a receiving cluster holds what
//! came from elsewhere.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mpreg_client::{Client, Subscription};
use mpreg_tests::{eventually, metrics_of, sql_rows};
use serde_json::json;

use super::{CONVERGE, Cluster};

/// The sequence numbers of the next `n` messages of `sub`.
async fn next_seqs(sub: &mut Subscription, n: usize) -> Result<Vec<u64>> {
    let mut seqs = Vec::with_capacity(n);
    while seqs.len() < n {
        let note = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .with_context(|| {
                format!(
                    "{} messages received, then none for 30 s: {seqs:?}",
                    seqs.len()
                )
            })?
            .context("subscription closed")?;
        seqs.push(note.message.payload["seq"].as_u64().context("seq")?);
    }
    Ok(seqs)
}

/// The clusters `cluster`'s SQL shows subscribing to `pattern`.
async fn subscribed(cluster: &Cluster, pattern: &str) -> Result<Vec<String>> {
    let rows = sql_rows(
        &cluster.admin()?,
        &format!(
            "SELECT DISTINCT cluster_id FROM subscriptions WHERE pattern = '{pattern}' ORDER BY cluster_id"
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r["cluster_id"].as_str().map(str::to_string))
        .collect())
}

/// `mpreg_pubsub_messages_federated_total{outcome}` of `cluster`.
async fn federated(cluster: &Cluster, outcome: &str) -> Result<u64> {
    let text = metrics_of(&cluster.admin()?).await?;
    let line = format!("mpreg_pubsub_messages_federated_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .with_context(|| format!("{line} missing from {}'s metrics", cluster.id))?
        .trim()
        .parse()
        .context("counter value")
}

/// Waits until `cluster`'s count for `outcome` is `want`.
async fn settled(cluster: &Cluster, outcome: &str, want: u64) -> Result<()> {
    eventually(
        &format!("{} {outcome} = {want}", cluster.id),
        CONVERGE,
        || async {
            match federated(cluster, outcome).await {
                Ok(n) if n == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_reaches_every_matching_cluster_of_a_ring_once_in_order() -> Result<()> {
    let c1 = Cluster::start("c1", &[], &[])?;
    let c2 = Cluster::start("c2", &[&c1], &[])?;
    let c3 = Cluster::start("c3", &[&c2], &[])?;
    let c4 = Cluster::start("c4", &[&c3, &c1], &[])?;
    let clients = [
        Client::connect(&c1.client_url()?).await?,
        Client::connect(&c2.client_url()?).await?,
        Client::connect(&c3.client_url()?).await?,
        Client::connect(&c4.client_url()?).await?,
    ];
    let mut news = Vec::new();
    for client in &clients[1..] {
        news.push(client.subscribe(&["news.#"], 0).await?);
    }
    let mut from_c3 = clients[0].subscribe(&["from3.*"], 0).await?;
    eventually("c1 to know who reads news.#", CONVERGE, || async {
        match subscribed(&c1, "news.#").await {
            Ok(seen) if seen == ["c2", "c3", "c4"] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    eventually("c3 to know who reads from3.*", CONVERGE, || async {
        match subscribed(&c3, "from3.*").await {
            Ok(seen) if seen == ["c1"] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    const N: u64 = 100;
    for seq in 0..N {
        clients[0].publish("news.item", json!({"seq": seq})).await?;
    }
    // A last message, after which nothing more may come.
    clients[0].publish("news.end", json!({"seq": N})).await?;
    let want: Vec<u64> = (0..=N).collect();
    for (sub, cluster) in news.iter_mut().zip(["c2", "c3", "c4"]) {
        let seqs = next_seqs(sub, want.len()).await?;
        ensure!(seqs == want, "{cluster} received {seqs:?}");
    }

    clients[2].publish("from3.hello", json!({"seq": 7})).await?;
    assert_eq!(next_seqs(&mut from_c3, 1).await?, [7]);

    // Each message crossed toward the three reading clusters only, once
    // (a counter moves when the batch is answered, after delivery).
    let expected = [
        (&c1, "sent", 3 * (N + 1)),
        (&c1, "received", 1),
        (&c2, "received", N + 1),
        (&c3, "received", N + 1),
        (&c4, "received", N + 1),
        (&c3, "sent", 1),
    ];
    for (cluster, outcome, want) in expected {
        settled(cluster, outcome, want).await?;
    }
    let relayed = federated(&c2, "relayed").await? + federated(&c4, "relayed").await?;
    assert_eq!(
        relayed,
        N + 1 + 1,
        "c1's messages to c3 and c3's to c1, each through c2 or c4"
    );

    // c3's backlog holds what came from c1.
    let late = clients[2].subscribe(&["news.#"], 60).await?;
    let mut late = late;
    assert_eq!(next_seqs(&mut late, want.len()).await?, want);
    Ok(())
}
