//! Hostile peers and greedy clients: frames on `/peer` that claim huge
//! lengths, are garbage or are damaged real envelopes close that connection
//! with a logged reason, and the daemon keeps serving and loses nothing it
//! acknowledged; clients that fill the connection limit do not keep the
//! other members of the cluster out.

use anyhow::{Context, Result};
use mpreg_client::Client;
use std::time::Duration;

use mpreg_daemon::envelope::ENVELOPE_VERSION;
use mpreg_tests::cluster::Cluster;
use mpreg_tests::{Daemon, RawClient, TestDir, replay};
use serde_json::json;

/// Frames an attacker who reaches the client port can send as a "peer".
fn hostile_frames() -> Vec<Vec<u8>> {
    // A routing path whose first string claims 2^40 bytes: 11 bytes that
    // once aborted the process with a failed 1 TB allocation.
    let mut terabyte = vec![ENVELOPE_VERSION, 1, 253];
    terabyte.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let mut huge_count = vec![ENVELOPE_VERSION, 253];
    huge_count.extend_from_slice(&u64::MAX.to_le_bytes());
    vec![
        terabyte,
        huge_count,
        vec![ENVELOPE_VERSION],
        vec![0xB1, 0, 0, 0],
        b"{\"role\":\"rpc\"}".to_vec(),
        (0..=255u8).cycle().take(4096).collect(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_frames_close_the_link_and_the_node_keeps_serving() -> Result<()> {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[])?;
    let url = daemon.ready.client_url.clone();
    let client = Client::connect(&url).await?;
    client
        .queue("create", json!({"queue_name": "kept"}))
        .await
        .context("declare")?;
    let mut sent = Vec::new();
    for n in 0..20 {
        let reply = client
            .queue("send", json!({"queue_name": "kept", "payload": {"n": n}}))
            .await
            .context("send")?;
        sent.push(
            reply["message_id"]
                .as_str()
                .context("message_id")?
                .to_string(),
        );
    }

    for frame in hostile_frames() {
        // Past the handshake (this node holds no secret), into the
        // envelope decoder.
        let (mut peer, verdict) = RawClient::peer(&url, "local", "attacker").await?;
        assert!(verdict.get("accepted").is_some(), "{verdict}");
        peer.send_binary(frame.clone()).await?;
        assert!(
            peer.closed().await,
            "the daemon kept a peer link open after {:?}",
            &frame[..frame.len().min(16)]
        );
    }

    // Still serving: health, a call, and every acknowledged message.
    let (code, health) = daemon.get("/health").await?;
    assert_eq!(code, 200, "{health}");
    let echoed = client.call("echo", vec![json!("still here")]).await?;
    assert_eq!(echoed, json!("still here"));
    let received = client
        .queue(
            "receive",
            json!({"queue_name": "kept", "subscriber_id": "w", "max_messages": 100, "timeout_seconds": 1}),
        )
        .await?;
    let mut got: Vec<String> = received["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .filter_map(|m| m["message_id"].as_str().map(str::to_string))
        .collect();
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "acknowledged sends after hostile peer frames");

    let log = daemon.log();
    assert!(
        log.contains("claims more memory"),
        "no logged reason for the terabyte frame: {log}"
    );
    let status = daemon.status().await?;
    daemon.stop()?;
    let replayed = replay(&dir.data())?;
    assert_eq!(replayed["views_digest"], status["views_digest"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_at_the_connection_limit_do_not_keep_peers_out() -> Result<()> {
    let mut cluster = Cluster::start(3, "max_connections = 2\n").await?;
    // Every member's client slots taken (peer links do not count).
    let mut held = Vec::new();
    for member in &cluster.members {
        for _ in 0..2 {
            held.push(RawClient::connect(&member.client_url).await?);
        }
        assert!(
            Client::connect(&member.client_url).await.is_err(),
            "a third client got past max_connections = 2"
        );
    }
    // A restarted member rejoins through peers whose client slots are full.
    let leader = cluster
        .wait_leader(&[0, 1, 2], Duration::from_secs(30))
        .await?;
    let other = (leader + 1) % 3;
    cluster.stop(other)?;
    cluster.restart(other).await?;
    cluster
        .wait_leader(&[0, 1, 2], Duration::from_secs(30))
        .await?;
    // Free the leader's client slots for one writer.
    drop(held.drain(2 * leader..2 * leader + 2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = Client::connect(&cluster.members[leader].client_url).await?;
    client
        .cache(
            json!({"operation": "put", "key": {"namespace": "n", "identifier": "k"}, "value": 1}),
        )
        .await?;
    cluster
        .wait_converged(&[0, 1, 2], Duration::from_secs(30))
        .await
        .context("members did not converge with client slots full")?;
    Ok(())
}

/// One frame of each kind that runs in the background, numbered `i`.
fn background_frames(i: usize) -> [String; 4] {
    [
        json!({"role": "worker-register", "u": format!("r{i}"),
               "functions": [{"name": format!("f{i}"), "version": "1.0.0", "resources": []}]})
        .to_string(),
        json!({"role": "pubsub-subscribe", "u": format!("s{i}"),
               "subscription": {"subscription_id": format!("sub-{i}"),
                                "patterns": [{"pattern": "x.#"}], "subscriber": "h"}})
        .to_string(),
        json!({"role": "pubsub-unsubscribe", "u": format!("x{i}"), "subscription_id": format!("sub-{i}")})
            .to_string(),
        json!({"role": "queue-unsubscribe", "u": format!("q{i}"), "subscriber_id": format!("q-{i}")})
            .to_string(),
    ]
}

/// Every frame kind that runs in the background counts against
/// `max_in_flight_per_connection`: a burst of registers, subscribes and
/// unsubscribes gets refusals naming the limit, every frame is answered,
/// and the connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_kind_counts_against_the_in_flight_limit() -> Result<()> {
    const BURST: usize = 60;
    let dir = TestDir::new();
    let daemon = Daemon::start_configured(&dir, "max_in_flight_per_connection = 2\n")?;
    let mut raw = RawClient::connect(&daemon.ready.client_url).await?;
    for i in 0..BURST {
        for frame in background_frames(i) {
            raw.send_text(frame).await?;
        }
    }
    let mut busy_by_kind = std::collections::BTreeMap::<char, usize>::new();
    for _ in 0..BURST * 4 {
        let (_, reply) = raw.recv().await?;
        let id = reply["operation_id"]
            .as_str()
            .or(reply["u"].as_str())
            .context("a reply names its frame")?
            .to_string();
        if reply.to_string().contains("requests in flight") {
            *busy_by_kind
                .entry(id.chars().next().unwrap_or('?'))
                .or_default() += 1;
        }
    }
    let kinds: Vec<char> = busy_by_kind.keys().copied().collect();
    assert_eq!(
        kinds,
        ['q', 'r', 's', 'x'],
        "refused per kind: {busy_by_kind:?}"
    );
    let client = Client::connect(&daemon.ready.client_url).await?;
    assert_eq!(client.call("echo", vec![json!(1)]).await?, json!(1));
    daemon.stop()?;
    Ok(())
}

/// Resident memory of a process, from /proc (bytes).
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/<pid>/status")?;
    Ok(kib * 1024)
}

/// Many connections that each send far more than their in-flight limits
/// allow (calls, subscribes, registers) and never read a reply: the
/// daemon's memory stays under a stated bound, and it keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_pushing_their_limits_keep_memory_bounded() -> Result<()> {
    const CONNECTIONS: usize = 100;
    const FRAMES: usize = 2000;
    /// The bound this test states for the whole daemon.
    const RSS_BOUND: u64 = 512 << 20;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[])?;
    let before = rss_bytes(daemon.pid())?;
    let filler = "x".repeat(1024);
    let mut raws = Vec::new();
    for c in 0..CONNECTIONS {
        let mut raw = RawClient::connect(&daemon.ready.client_url).await?;
        for i in 0..FRAMES {
            let frame = match i % 8 {
                0 => json!({"role": "pubsub-subscribe", "u": format!("s{i}"),
                            "subscription": {"subscription_id": format!("c{c}-{i}"),
                                             "patterns": [{"pattern": format!("p.{i}.#")}],
                                             "subscriber": "h"}}),
                1 => json!({"role": "worker-register", "u": format!("r{i}"),
                            "functions": [{"name": format!("c{c}f{i}"), "version": "1.0.0", "resources": []}]}),
                _ => json!({"role": "rpc", "u": format!("e{i}"),
                            "cmds": [{"name": "e", "fun": "echo", "args": [filler], "locs": []}]}),
            };
            raw.send_text(frame.to_string()).await?;
        }
        raws.push(raw);
    }
    let pushed = rss_bytes(daemon.pid())?;
    println!(
        "daemon RSS: {} MiB before, {} MiB with {CONNECTIONS} connections that sent {FRAMES} frames each unread (bound {} MiB)",
        before >> 20,
        pushed >> 20,
        RSS_BOUND >> 20
    );
    assert!(pushed < RSS_BOUND, "RSS {} MiB", pushed >> 20);
    drop(raws);
    let (code, health) = daemon.get("/health").await?;
    assert_eq!(code, 200, "{health}");
    let client = Client::connect(&daemon.ready.client_url).await?;
    assert_eq!(
        client.call("echo", vec![json!("after")]).await?,
        json!("after")
    );
    daemon.stop()?;
    Ok(())
}
