//! Queues across clusters between real daemons: a queue lives in the
//! cluster that declared it, and sends, receives and acks from other
//! clusters are carried there, also while the leader of the cluster in the
//! middle is killed; a name two clusters hold is refused as ambiguous
//! unless `target_cluster` names one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail, ensure};
use mpreg_client::protocol::{ErrorCode, RpcCommand};
use mpreg_client::{Client, ClientError, Request};
use mpreg_tests::{eventually, sql_rows};
use serde_json::{Value, json};

use super::{CONVERGE, Cluster};

/// Sends from each of two clusters; the middle one's leader is killed
/// when the first sender is this far.
const SENDS: u64 = 500;
const KILL_AT: u64 = 200;

/// Sends `SENDS` messages to `orders` through `client`, one at a time,
/// counting progress; returns the ids of the acknowledged ones.
async fn sender(client: Client, from: &str, progress: Arc<AtomicU64>) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for n in 0..SENDS {
        let body = json!({"queue_name": "orders", "payload": {"from": from, "n": n}});
        if let Ok(reply) = client.queue("send", body).await
            && let Some(id) = reply["message_id"].as_str()
        {
            acknowledged.push(id.to_string());
        }
        progress.fetch_add(1, Ordering::SeqCst);
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_from_two_clusters_reach_the_owner_through_a_dying_leader() -> Result<()> {
    let c3 = Cluster::start("c3", &[], &[])?;
    let mut c2 = mpreg_tests::cluster::Cluster::start(
        3,
        &format!(
            "cluster_id = \"c2\"\nfederate = [\"{}\"]\n",
            c3.client_url()?
        ),
    )
    .await?;
    let through_c2 = c2.members[0].client_url.clone();
    let c1 = Cluster::start("c1", &[], &["--federate", &through_c2])?;

    let owner = Client::connect(&c3.client_url()?).await?;
    owner
        .queue(
            "create",
            json!({"queue_name": "orders", "max_size": 10_000}),
        )
        .await?;
    let all = [0, 1, 2];
    let leader = c2.wait_leader(&all, CONVERGE).await?;
    let survivor = all
        .into_iter()
        .find(|&i| i != leader)
        .context("a follower")?;
    let from_c1 = Client::connect(&c1.client_url()?).await?;
    let from_c2 = Client::connect(&c2.members[survivor].client_url).await?;
    for client in [&from_c1, &from_c2] {
        eventually(
            "the queue to be known across clusters",
            CONVERGE,
            || async {
                match client.queue("stats", json!({"queue_name": "orders"})).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await?;
    }

    let rows = sql_rows(
        &c1.admin()?,
        "SELECT name, cluster_id, next_hop, depth FROM queues WHERE name = 'orders'",
    )
    .await?;
    assert_eq!(
        rows,
        [json!({"name": "orders", "cluster_id": "c3", "next_hop": "c2", "depth": null})]
    );

    // c1 takes a table only under a signature it trusts: the member that
    // leads c2 after the kill must have its key known to c1 first (each
    // member's key reaches neighbours in the leader's tables, see
    // docs/federation.md, "Signing and key rotation").
    eventually(
        "c1 to hold the keys of c2's three members",
        CONVERGE,
        || async {
            let rows = sql_rows(
                &c1.admin().map_err(|e| e.to_string())?,
                "SELECT key_id FROM route_keys WHERE cluster = 'c2'",
            )
            .await
            .map_err(|e| e.to_string())?;
            if rows.len() == 3 {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        },
    )
    .await?;

    let progress = Arc::new(AtomicU64::new(0));
    let c1_sends = tokio::spawn(sender(from_c1, "c1", progress.clone()));
    let c2_sends = tokio::spawn(sender(from_c2, "c2", Arc::new(AtomicU64::new(0))));
    eventually("the first sends", CONVERGE, || async {
        let done = progress.load(Ordering::SeqCst);
        if done >= KILL_AT {
            Ok(())
        } else {
            Err(format!("{done} sent"))
        }
    })
    .await?;
    c2.kill9(leader)?;
    let mut acknowledged: BTreeSet<String> = c1_sends.await?.into_iter().collect();
    acknowledged.extend(c2_sends.await?);
    ensure!(
        acknowledged.len() as u64 > SENDS,
        "only {} of {} sends acknowledged",
        acknowledged.len(),
        2 * SENDS
    );

    // Drain from c1: receives and acks are carried to c3 too.
    let drain = Client::connect(&c1.client_url()?).await?;
    let mut received = BTreeSet::new();
    loop {
        let reply = drain
            .queue(
                "receive",
                json!({"queue_name": "orders", "subscriber_id": "d", "max_messages": 100, "timeout_seconds": 1}),
            )
            .await
            .with_context(|| format!("receive from c1 after {} received", received.len()))?;
        let messages = reply["messages"].as_array().context("messages")?.clone();
        if messages.is_empty() {
            break;
        }
        for m in messages {
            let id = m["message_id"].as_str().context("message_id")?.to_string();
            drain
                .queue(
                    "ack",
                    json!({"queue_name": "orders", "message_id": id, "subscriber_id": "d"}),
                )
                .await
                .with_context(|| format!("ack of {id} from c1"))?;
            ensure!(
                received.insert(id.clone()),
                "{id} delivered again after its ack"
            );
        }
    }
    eprintln!(
        "queues across clusters: {} of {} sends acknowledged, {} delivered",
        acknowledged.len(),
        2 * SENDS,
        received.len()
    );
    let lost: Vec<&String> = acknowledged.difference(&received).collect();
    ensure!(
        lost.is_empty(),
        "acknowledged sends never delivered: {lost:?}"
    );
    ensure!(
        received.len() as u64 <= 2 * SENDS,
        "{} delivered for {} sends",
        received.len(),
        2 * SENDS
    );

    // A name held by two clusters: ambiguous unless one is named.
    Client::connect(&c1.client_url()?)
        .await?
        .queue("create", json!({"queue_name": "orders"}))
        .await?;
    let from_c2 = Client::connect(&c2.members[survivor].client_url).await?;
    let send = |target: Option<&str>| RpcCommand {
        name: "s".into(),
        fun: "mpreg.queue.send".into(),
        args: vec![json!({"queue_name": "orders", "payload": "x"})],
        target_cluster: target.map(str::to_string),
        ..RpcCommand::default()
    };
    let ambiguous = eventually("orders to be ambiguous from c2", CONVERGE, || async {
        match from_c2.request(Request::new().command(send(None))).await {
            Err(ClientError::Rpc(e)) if e.code == ErrorCode::BadRequest.code() => Ok(e),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let details = ambiguous.details.unwrap_or_default();
    ensure!(details.contains("held by clusters c1, c3"), "{details}");
    let sent = from_c2
        .request(Request::new().command(send(Some("c1"))))
        .await?;
    if sent["s"]["success"] != Value::Bool(true) {
        bail!("send pinned to c1: {sent:?}");
    }
    let rows = sql_rows(
        &c1.admin()?,
        "SELECT depth FROM queues WHERE name = 'orders'",
    )
    .await?;
    assert_eq!(rows, [json!({"depth": 1}), json!({"depth": null})]);
    Ok(())
}
