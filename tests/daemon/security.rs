//! Peer authentication between real daemons: members of a cluster with a
//! `cluster_secret_file` prove the secret at link setup; a node with
//! another secret cannot join, a raw peer connection without the proof or
//! without the handshake is refused before any envelope is read, and
//! neither moves the cluster's term or membership. Between clusters, link
//! secrets do the same for federation links.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mpreg_client::Client;
use mpreg_tests::cluster::Cluster;
use mpreg_tests::{Daemon, RawClient, TestDir, eventually, metrics_of, prom, sql_rows};
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(30);

/// Writes `secret` into a file of `dir`; its path.
fn secret_file(dir: &TestDir, name: &str, secret: &str) -> Result<PathBuf> {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{secret}\n"))?;
    Ok(path)
}

/// Peer-handshake refusals `admin` counted for `reason`.
async fn refusals(admin: &str, reason: &str) -> Result<f64> {
    let text = metrics_of(admin).await?;
    let exposition = prom::parse(&text).context("parse /metrics")?;
    Ok(exposition
        .value("mpreg_peer_auth_refusals_total", &[("reason", reason)])
        .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_holding_the_cluster_secret_take_part() -> Result<()> {
    let secrets = TestDir::new();
    let good = secret_file(&secrets, "cluster.secret", "correct horse battery staple")?;
    let wrong = secret_file(&secrets, "wrong.secret", "incorrect horse battery staple")?;
    let mut cluster = Cluster::start(
        3,
        &format!("cluster_secret_file = {:?}\n", good.display().to_string()),
    )
    .await?;
    let leader = cluster.wait_leader(&[0, 1, 2], CONVERGE).await?;
    let follower = (leader + 1) % 3;
    // Forwarded writes cross the authenticated links.
    let client = Client::connect(&cluster.members[follower].client_url).await?;
    client
        .queue("create", json!({"queue_name": "kept"}))
        .await?;
    client
        .queue("send", json!({"queue_name": "kept", "payload": 1}))
        .await?;
    let before = cluster.status(leader).await?;
    let cluster_id = before["cluster_id"].as_str().context("cluster_id")?;
    let leader_url = cluster.members[leader].client_url.clone();
    let leader_admin = cluster.members[leader].admin_url.clone();

    // A peer that claims the cluster and proves nothing.
    let (mut raw, verdict) = RawClient::peer(&leader_url, cluster_id, "intruder").await?;
    let reason = verdict["refused"]["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.contains("requires a secret") && reason.contains("intruder"),
        "verdict {verdict}"
    );
    ensure!(
        raw.closed().await,
        "a refused peer's connection stayed open"
    );
    assert_eq!(refusals(&leader_admin, "no_proof").await?, 1.0);

    // A peer that skips the handshake: its first frame is not an answer.
    let mut raw = RawClient::connect(&format!("{leader_url}/peer?from=intruder")).await?;
    raw.recv().await.context("the challenge")?;
    raw.send_binary(vec![0xB5, 0, 0, 0]).await?;
    ensure!(raw.closed().await, "a peer without a handshake stayed open");
    assert_eq!(refusals(&leader_admin, "malformed").await?, 1.0);

    // A node with another secret cannot join; it exits naming why.
    let joiner = TestDir::new();
    let out = mpreg_tests::start_expecting_exit_with(
        &joiner,
        &[
            "--join",
            &leader_url,
            "--cluster-secret-file",
            &wrong.display().to_string(),
        ],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "the joiner exited 0: {stderr}");
    ensure!(
        stderr.contains("does not match the secret"),
        "the joiner's error does not name the secret: {stderr}"
    );
    ensure!(
        refusals(&leader_admin, "bad_proof").await? >= 1.0,
        "the leader counted no bad proof"
    );

    // Nothing of it reached raft: same term, same three members.
    let after = cluster.status(leader).await?;
    assert_eq!(after["term"], before["term"], "{before} -> {after}");
    let peers = sql_rows(&leader_admin, "SELECT peer FROM peers ORDER BY peer").await?;
    assert_eq!(peers.len(), 3, "{peers:?}");
    let received = client
        .queue(
            "receive",
            json!({"queue_name": "kept", "subscriber_id": "w", "max_messages": 10, "timeout_seconds": 1}),
        )
        .await?;
    assert_eq!(received["messages"].as_array().map(Vec::len), Some(1));

    // A member restarted with the secret rejoins its links.
    cluster.stop(follower)?;
    cluster.restart(follower).await?;
    cluster.wait_leader(&[0, 1, 2], CONVERGE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_links_need_the_link_secret_their_neighbour_holds() -> Result<()> {
    let secrets = TestDir::new();
    let shared = secret_file(&secrets, "c1-c2.secret", "a link secret of c1 and c2")?;
    let other = secret_file(&secrets, "other.secret", "not the secret c1 holds for c3")?;
    // Each cluster: its id, what it federates to, its link secret files.
    let start = |id: &str, federate: Option<&str>, links: &[(&str, &PathBuf)]| {
        let dir = TestDir::new();
        let mut toml = String::from("[link_secret_files]\n");
        for (cluster, path) in links {
            toml.push_str(&format!("{cluster} = {:?}\n", path.display().to_string()));
        }
        let mut args = dir.config(&toml);
        args.extend(["--cluster-id".to_string(), id.to_string()]);
        if let Some(url) = federate {
            args.extend(["--federate".to_string(), url.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = Daemon::start(&dir, &args)?;
        anyhow::Ok((daemon, dir))
    };
    let (c1, _c1_dir) = start("c1", None, &[("c2", &shared), ("c3", &shared)])?;
    let c1_url = c1.ready.client_url.clone();
    let c1_admin = c1.ready.admin_url.clone();
    let (_c2, _c2_dir) = start("c2", Some(&c1_url), &[("c1", &shared)])?;
    let (_c3, _c3_dir) = start("c3", Some(&c1_url), &[("c1", &other)])?;

    eventually("c1's route to c2", CONVERGE, || async {
        let rows = sql_rows(&c1_admin, "SELECT dest FROM routes WHERE dest = 'c2'")
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            Err("none yet".to_string())
        } else {
            Ok(())
        }
    })
    .await?;
    eventually("c1 to refuse c3's proof", CONVERGE, || async {
        match refusals(&c1_admin, "bad_proof").await {
            Ok(n) if n >= 1.0 => Ok(()),
            Ok(n) => Err(format!("{n} refusals")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    let links = sql_rows(
        &c1_admin,
        "SELECT cluster_id FROM federation_links ORDER BY cluster_id",
    )
    .await?;
    assert_eq!(
        links,
        [json!({"cluster_id": "c2"})],
        "c3 linked without the secret"
    );
    let routes = sql_rows(&c1_admin, "SELECT dest FROM routes WHERE dest = 'c3'").await?;
    assert!(routes.is_empty(), "c1 learned a route to c3: {routes:?}");
    Ok(())
}
