//! Disk faults, injected with libfiu: `fiu-run -x` preloads failure points
//! into the daemon's POSIX calls and `fiu-ctrl` turns them on while it
//! runs. A WAL sync that fails stops the node (fail-stop: it never retries
//! the sync and carries on), and a restart on a healthy disk serves every
//! write that was acknowledged.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mpreg_client::Client;
use mpreg_tests::{Daemon, TestDir, eventually, replay};
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

/// Bytes free to unprivileged users on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> Result<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .with_context(|| format!("df: {text}"))
}

async fn put(client: &Client, i: u64) -> Result<Value, mpreg_client::ClientError> {
    client
        .cache(json!({"operation": "put", "key": key(i), "value": i}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_while_the_disk_is_short_of_space_and_resume_when_space_is_freed() -> Result<()>
{
    const MARGIN: u64 = 256 << 20;
    let dir = TestDir::new();
    // The minimum sits 256 MiB below what is free now, so a 512 MiB file
    // takes the filesystem below it and removing the file brings it back.
    let min_free = free_bytes(dir.path())?
        .checked_sub(MARGIN)
        .context("the test needs more than 256 MiB free")?;
    let min_free_flag = min_free.to_string();
    let daemon = Daemon::start(&dir, &["--min-free-disk-bytes", &min_free_flag])?;
    let client = Client::connect(&daemon.ready.client_url).await?;
    put(&client, 0).await?;

    let filler = dir.path().join("filler");
    let allocated = Command::new("fallocate")
        .args(["-l", &(2 * MARGIN).to_string()])
        .arg(&filler)
        .status()?;
    ensure!(allocated.success(), "fallocate: {allocated}");
    // Each try writes a key of its own: tries before the guard saw the
    // file may be accepted; the one refused must leave no trace.
    let tries = AtomicU64::new(100);
    let (refused_key, refusal) = eventually(
        "a write refused for lack of space",
        Duration::from_secs(10),
        || async {
            let i = tries.fetch_add(1, Ordering::Relaxed);
            match put(&client, i).await {
                Ok(answer) => Err(format!("accepted: {answer}")),
                Err(e) => Ok((i, e.to_string())),
            }
        },
    )
    .await?;
    ensure!(
        refusal.contains("disk full")
            && refusal.contains(&format!("min_free_disk_bytes ({min_free})")),
        "{refusal}"
    );
    let (code, health) = daemon.get("/health").await?;
    ensure!(code == 200, "reads and health go on: {health}");
    let got = client
        .cache(json!({"operation": "get", "key": key(0)}))
        .await?;
    ensure!(got["entry"]["value"] == json!(0), "reads go on: {got}");

    std::fs::remove_file(&filler)?;
    eventually("writes accepted again", Duration::from_secs(10), || async {
        put(&client, 2).await.map_err(|e| e.to_string())
    })
    .await?;
    let got = client
        .cache(json!({"operation": "get", "key": key(refused_key)}))
        .await?;
    ensure!(
        got["status"] != "hit",
        "the refused write did not happen: {got}"
    );
    Ok(())
}
