//! Disk faults, injected with libfiu: `fiu-run -x` preloads failure points
//! into the daemon's POSIX calls and `fiu-ctrl` turns them on while it
//! runs. A WAL sync that fails stops the node (fail-stop: it never retries
//! the sync and carries on), and a restart on a healthy disk serves every
//! write that was acknowledged.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use mpreg_client::Client;
use mpreg_tests::{Daemon, TestDir, replay};
use serde_json::{Value, json};

const FIU: &str =
    "fiu-run and fiu-ctrl (Debian package fiu-utils; scripts/setup --test-tools installs it)";

fn key(i: u64) -> Value {
    json!({"namespace": "disk", "identifier": format!("k{i}")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wal_sync_stops_the_node_and_a_restart_keeps_every_acknowledged_write()
-> Result<()> {
    const ACKNOWLEDGED: u64 = 20;
    let dir = TestDir::new();
    let ctrl = dir.path().join("fiu-ctrl");
    let ctrl = ctrl.to_str().context("a UTF-8 temp path")?;
    let daemon = Daemon::start_under(&["fiu-run", "-x", "-f", ctrl], &dir, &[]).context(FIU)?;
    let client = Client::connect(&daemon.ready.client_url).await?;
    for i in 0..ACKNOWLEDGED {
        client
            .cache(json!({"operation": "put", "key": key(i), "value": i}))
            .await?;
    }

    // Every fsync and fdatasync of the daemon fails with EIO (errno 5) from
    // now on.
    let enabled = Command::new("fiu-ctrl")
        .args(["-f", ctrl])
        .args(["-c", "enable name=posix/io/sync/fdatasync,failinfo=5"])
        .args(["-c", "enable name=posix/io/sync/fsync,failinfo=5"])
        .arg(daemon.pid().to_string())
        .status()
        .context(FIU)?;
    ensure!(enabled.success(), "fiu-ctrl: {enabled}");
    let refused = client
        .cache(json!({"operation": "put", "key": key(ACKNOWLEDGED), "value": ACKNOWLEDGED}))
        .await;
    let error = refused
        .err()
        .context("a put whose WAL sync failed was acknowledged")?
        .to_string();
    ensure!(error.contains("failed to sync the WAL"), "{error}");
    drop(client);

    let log_path = daemon.log_path().to_path_buf();
    let exit = daemon.wait_exit()?;
    let log = std::fs::read_to_string(&log_path)?;
    ensure!(
        !exit.success(),
        "a node whose WAL cannot be synced exits non-zero: {exit}\n{log}"
    );
    ensure!(
        log.contains("error: raft stopped") && log.contains("Input/output error"),
        "the last words name the failed sync:\n{log}"
    );

    let again = Daemon::start(&dir, &[])?;
    let client = Client::connect(&again.ready.client_url).await?;
    for i in 0..ACKNOWLEDGED {
        let got = client
            .cache(json!({"operation": "get", "key": key(i)}))
            .await?;
        ensure!(
            got["entry"]["value"] == json!(i),
            "k{i} after the restart: {got}"
        );
    }
    let status = again.status().await?;
    drop(client);
    ensure!(again.stop()?.success(), "clean stop");
    let replayed = replay(&dir.data())?;
    ensure!(
        replayed["views_digest"] == status["views_digest"],
        "{replayed} vs {status}"
    );
    Ok(())
}
