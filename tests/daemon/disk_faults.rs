//! Disk faults, injected with libfiu: `fiu-run -x` preloads failure points
//! into the daemon's POSIX calls and `fiu-ctrl` turns them on while it
//! runs. A WAL sync that fails stops the node (fail-stop: it never retries
//! the sync and carries on), and a restart on a healthy disk serves every
//! write that was acknowledged. A slow disk is strace holding every sync
//! before the kernel sees it: writes wait longer and none acknowledged is
//! lost to a `kill -9`. A power cut drops what was never synced (strace
//! records the writes and syncs, `mpreg_tests::power_cut` cuts the files
//! back) and loses nothing acknowledged. A full disk refuses writes until
//! space returns.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mpreg_client::Client;
use mpreg_tests::{Daemon, TestDir, eventually, replay};
use serde_json::{Value, json};

const STRACE: &str = "strace (Debian package strace; scripts/setup --test-tools installs it)";
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

    restart_and_check(&dir, &[], &(0..ACKNOWLEDGED).collect::<Vec<_>>()).await
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

/// Every `fsync` and `fdatasync` of the daemon is held 50 ms before the
/// kernel sees it (strace's syscall delay injection; `-D` keeps the daemon
/// the spawned process, so `kill -9` hits it). Eight writers run until
/// the daemon is killed mid-stream: every put it acknowledged is there
/// after a restart on a healthy disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_delays_writes_and_a_kill_loses_none_acknowledged() -> Result<()> {
    const DELAY_US: u64 = 50_000;
    let dir = TestDir::new();
    let inject = format!("inject=fsync,fdatasync:delay_enter={DELAY_US}");
    let strace = [
        "strace",
        "-D",
        "-f",
        "--seccomp-bpf",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=fsync,fdatasync",
        "-e",
        &inject,
    ];
    let daemon = Daemon::start_under(&strace, &dir, &[]).context(STRACE)?;
    let writers = Writers::start(&daemon, 8).await?;
    writers.wait_for(80).await?;
    // The delay is in force: the mean WAL sync takes at least the delay.
    let metrics =
        mpreg_tests::prom::parse(&mpreg_tests::metrics_of(&daemon.ready.admin_url).await?)?;
    let sum = metrics
        .value("mpreg_storage_wal_fsync_seconds_sum", &[])
        .context("WAL sync time exported")?;
    let count = metrics
        .value("mpreg_storage_wal_fsync_seconds_count", &[])
        .context("WAL sync count exported")?;
    ensure!(
        count > 0.0 && sum / count >= DELAY_US as f64 / 1e6,
        "mean WAL sync {sum}/{count} s, injected {DELAY_US} us"
    );
    daemon.kill9()?;
    let acked = writers.finish().await?;
    restart_and_check(&dir, &[], &acked).await
}

/// Clients putting keys `k0, k1, ...` (each writer every `n`th) until the
/// daemon stops answering, and which of them were acknowledged.
struct Writers {
    acked: Arc<Mutex<Vec<u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    async fn start(daemon: &Daemon, n: u64) -> Result<Writers> {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for w in 0..n {
            let client = Client::connect(&daemon.ready.client_url).await?;
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..).step_by(n as usize) {
                    if put(&client, i).await.is_err() {
                        break;
                    }
                    acked.lock().unwrap().push(i);
                }
            }));
        }
        Ok(Writers { acked, tasks })
    }

    async fn wait_for(&self, acknowledged: usize) -> Result<()> {
        eventually(
            &format!("{acknowledged} acknowledged puts"),
            Duration::from_secs(60),
            || async {
                let n = self.acked.lock().unwrap().len();
                if n >= acknowledged {
                    Ok(())
                } else {
                    Err(format!("{n} so far"))
                }
            },
        )
        .await
    }

    /// The acknowledged keys, once the daemon is gone.
    async fn finish(self) -> Result<Vec<u64>> {
        for task in self.tasks {
            task.await?;
        }
        Ok(std::mem::take(&mut *self.acked.lock().unwrap()))
    }
}

/// Restarts a daemon on `dir` (a healthy disk) and checks that every key of
/// `acked` holds its value, and that replay gives the node's digest.
async fn restart_and_check(dir: &TestDir, extra: &[&str], acked: &[u64]) -> Result<()> {
    let again = Daemon::start(dir, extra)?;
    let client = Client::connect(&again.ready.client_url).await?;
    for &i in acked {
        let got = client
            .cache(json!({"operation": "get", "key": key(i)}))
            .await?;
        ensure!(
            got["entry"]["value"] == json!(i),
            "k{i} after the crash: {got}"
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

/// A power cut: the daemon runs under a trace of its file writes and syncs
/// while 8 clients put, snapshots are taken and the log is purged (so
/// flushes, SST files and snapshot files are on the way too); after
/// `kill -9` every file is cut back to what its last sync covered. Every
/// acknowledged put survives, and replay gives the node's digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_that_drops_unsynced_data_loses_nothing_acknowledged() -> Result<()> {
    let dir = TestDir::new();
    let config = dir.config("snapshot_interval = 100\nlog_retention = 10\n");
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    let trace = dir.path().join("strace.log");
    let wrapper = mpreg_tests::power_cut::strace_wrapper(&trace);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = Daemon::start_under(&wrapper, &dir, &config).context(STRACE)?;
    let writers = Writers::start(&daemon, 8).await?;
    writers.wait_for(400).await?;
    daemon.kill9()?;
    let acked = writers.finish().await?;
    let cut = mpreg_tests::power_cut::drop_unsynced(&trace, &dir.data())?;
    println!("power cut after {} acknowledged puts: {cut:?}", acked.len());
    restart_and_check(&dir, &config, &acked).await
}
