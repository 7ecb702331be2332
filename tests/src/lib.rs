//! Test harness: real `mpreg-daemon` processes on port 0 with temporary
//! data dirs, and in-process nodes, for the integration tests in `daemon/`.
//!
//! The binary is found next to the test executable (`target/<profile>/`);
//! `scripts/test` builds it first (`cargo build --workspace --all-targets`).
//! `MPREG_DAEMON_BIN` overrides the path.
//!
//! Every process-level step has a deadline, so a stuck daemon fails the
//! test instead of hanging it: start (ready file), stop (exit), admin HTTP
//! requests and subcommands. Each start writes its own log file, and the
//! tail of it is printed when the [`Daemon`] is dropped: the test harness
//! shows that output only for a test that failed.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub mod cluster;
pub mod dice;
pub mod faketime;
pub mod linearizable;
pub mod netns;
pub mod power_cut;
pub mod prom;
pub mod proxy;
pub mod tls;

/// How long a daemon may take to write its ready file.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a daemon may take to exit after SIGTERM (then it is killed).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one admin HTTP request may take (a paused daemon never answers).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a subcommand (`replay`, `sql`, a refused start) may run.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of a daemon's log printed when it is dropped.
const LOG_TAIL_LINES: usize = 60;

/// Numbers the log files of this test process, so a restart on the same
/// dir never overwrites the log of the run before.
static STARTS: AtomicU64 = AtomicU64::new(0);

/// An HTTP client whose every request ends within [`HTTP_TIMEOUT`].
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .expect("reqwest client")
}

/// Polls `check` every 20 ms until it returns `Ok`; after `timeout` fails
/// naming `what` and the last thing `check` saw (its `Err`).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(seen) if Instant::now() > deadline => {
                bail!("{what}: not within {timeout:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Path of the `mpreg-daemon` binary under test.
pub fn daemon_bin() -> PathBuf {
    match std::env::var_os("MPREG_DAEMON_BIN") {
        Some(path) => PathBuf::from(path),
        None => built_bin("mpreg-daemon"),
    }
}

/// Path of the `mpreg` client binary under test.
pub fn cli_bin() -> PathBuf {
    built_bin("mpreg")
}

fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --all-targets` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// A temporary data dir, removed on drop.
pub struct TestDir {
    tmp: TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        TestDir {
            tmp: tempfile::Builder::new()
                .prefix("mpreg-test-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    /// The data dir itself (created by the daemon on first start).
    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

/// What the daemon wrote to its ready file.
#[derive(Clone, Debug)]
pub struct Ready {
    pub node_id: String,
    pub cluster_id: String,
    pub client_url: String,
    pub admin_url: String,
    /// `postgres://host:port`, with `--pg-listen`.
    pub pg_url: Option<String>,
}

/// A running `mpreg-daemon` process; killed (SIGKILL) on drop.
pub struct Daemon {
    child: Option<Child>,
    pub ready: Ready,
    log_path: PathBuf,
}

/// Free space below which test daemons refuse writes, unless a test sets
/// its own: the default (256 MiB) is more than some test machines have
/// left, and only tests/daemon/disk_faults.rs is about the guard.
const TEST_MIN_FREE_DISK_BYTES: &str = "16777216";

/// The daemon's command line; with a `wrapper` (a program and its
/// arguments, such as `fiu-run -x`), that program runs the daemon.
fn daemon_command(wrapper: &[&str], data_dir: &Path, ready_file: &Path, extra: &[&str]) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(daemon_bin());
            cmd
        }
        None => Command::new(daemon_bin()),
    };
    cmd.arg("--data-dir").arg(data_dir);
    if !extra.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    if !extra.contains(&"--min-free-disk-bytes") {
        cmd.args(["--min-free-disk-bytes", TEST_MIN_FREE_DISK_BYTES]);
    }
    cmd.args(["--admin-listen", "127.0.0.1:0"])
        .arg("--ready-file")
        .arg(ready_file)
        .args(extra);
    cmd
}

impl Daemon {
    /// Starts a daemon on `dir` (port 0) and waits for its ready file.
    pub fn start(dir: &TestDir, extra: &[&str]) -> Result<Daemon> {
        Daemon::start_with(dir, extra, |_| Ok(()))
    }

    /// Like [`Daemon::start`], with `toml` as its config file.
    pub fn start_configured(dir: &TestDir, toml: &str) -> Result<Daemon> {
        let flags = dir.config(toml);
        Daemon::start(dir, &flags.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Like [`Daemon::start`], and calls `on_listening` with the bound
    /// client address as soon as the daemon reports it (its listening
    /// file), before it is ready: a proxy in front of a joining node must
    /// reach it before the node can finish joining.
    pub fn start_with(
        dir: &TestDir,
        extra: &[&str],
        on_listening: impl FnMut(std::net::SocketAddr) -> Result<()>,
    ) -> Result<Daemon> {
        Daemon::spawn(&[], dir, extra, on_listening)
    }

    /// Like [`Daemon::start`], with `wrapper` (a program that execs the
    /// command after its arguments, such as `fiu-run -x`) running the
    /// daemon.
    pub fn start_under(wrapper: &[&str], dir: &TestDir, extra: &[&str]) -> Result<Daemon> {
        Daemon::spawn(wrapper, dir, extra, |_| Ok(()))
    }

    fn spawn(
        wrapper: &[&str],
        dir: &TestDir,
        extra: &[&str],
        mut on_listening: impl FnMut(std::net::SocketAddr) -> Result<()>,
    ) -> Result<Daemon> {
        let ready_file = dir.path().join("ready.json");
        let listening_file = dir.path().join("listening.json");
        let _ = std::fs::remove_file(&ready_file);
        let _ = std::fs::remove_file(&listening_file);
        let log_path = dir.path().join(format!(
            "daemon-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let log = std::fs::File::create(&log_path)?;
        let child = daemon_command(wrapper, &dir.data(), &ready_file, extra)
            .arg("--listening-file")
            .arg(&listening_file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn mpreg-daemon under {wrapper:?}"))?;
        let mut daemon = Daemon {
            child: Some(child),
            ready: Ready {
                node_id: String::new(),
                cluster_id: String::new(),
                client_url: String::new(),
                admin_url: String::new(),
                pg_url: None,
            },
            log_path,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut listening = false;
        loop {
            if !listening && let Ok(text) = std::fs::read_to_string(&listening_file) {
                let v: Value = serde_json::from_str(&text).context("listening file is JSON")?;
                let addr = v["client_url"]
                    .as_str()
                    .and_then(|url| url.split_once("://"))
                    .map(|(_, addr)| addr)
                    .and_then(|addr| addr.parse().ok())
                    .with_context(|| format!("listening file client_url: {v}"))?;
                on_listening(addr)?;
                listening = true;
            }
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                let v: Value = serde_json::from_str(&text).context("ready file is JSON")?;
                let field = |k: &str| {
                    v[k].as_str()
                        .map(str::to_string)
                        .with_context(|| format!("ready file field {k}"))
                };
                daemon.ready = Ready {
                    node_id: field("node_id")?,
                    cluster_id: field("cluster_id")?,
                    client_url: field("client_url")?,
                    admin_url: field("admin_url")?,
                    pg_url: v["pg_url"].as_str().map(str::to_string),
                };
                return Ok(daemon);
            }
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("daemon exited with {status} before ready: {}", daemon.log());
            }
            if Instant::now() > deadline {
                bail!("daemon not ready after {START_TIMEOUT:?}: {}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Where this start's stderr goes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// What a failed test needs from the log: every error line and every
    /// panic with the lines after it (a panic's message and backtrace may
    /// be far from the end), then the last [`LOG_TAIL_LINES`] lines.
    pub fn log_excerpt(&self) -> String {
        excerpt(&self.log())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(self) -> Result<ExitStatus> {
        let pid = self.pid().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status()?;
        if !sent.success() {
            bail!("kill -TERM failed");
        }
        self.wait_exit()
    }

    /// Waits for the process to exit (within [`STOP_TIMEOUT`]; then it is
    /// killed).
    pub fn wait_exit(mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("daemon already stopped")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                child.kill()?;
                let _ = child.wait();
                bail!(
                    "daemon still running {STOP_TIMEOUT:?} after it was asked to stop: {}",
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// GET an admin endpoint; returns status code and parsed JSON body.
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.ready.admin_url);
        let resp = http()
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let code = resp.status().as_u16();
        let body = resp
            .json()
            .await
            .with_context(|| format!("JSON body of {url}"))?;
        Ok((code, body))
    }

    /// `/status` as JSON.
    pub async fn status(&self) -> Result<Value> {
        status_of(&self.ready.admin_url).await
    }
}

impl Drop for Daemon {
    /// Kills the process, then prints the tail of its log: captured by the
    /// test harness, it shows only when the test fails.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        eprintln!(
            "--- errors, panics and last {LOG_TAIL_LINES} lines of {} (node {}) ---\n{}\n--- end of {} ---",
            self.log_path.display(),
            self.ready.node_id,
            self.log_excerpt(),
            self.log_path.display(),
        );
    }
}

/// Lines after a panic line kept in an [`excerpt`].
const PANIC_CONTEXT_LINES: usize = 40;

/// The error lines and panics (with [`PANIC_CONTEXT_LINES`] after each)
/// of `log` before its last [`LOG_TAIL_LINES`] lines, then those lines.
fn excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let tail_start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let mut out = Vec::new();
    let mut context_until = 0;
    for (i, line) in lines[..tail_start].iter().enumerate() {
        if line.contains("panicked") {
            context_until = i + 1 + PANIC_CONTEXT_LINES;
        }
        if i < context_until || line.contains("ERROR") {
            out.push(format!("{:>6}: {line}", i + 1));
        }
    }
    if !out.is_empty() {
        out.push(format!("   ...: (last {LOG_TAIL_LINES} lines)"));
    }
    out.extend(lines[tail_start..].iter().map(|line| line.to_string()));
    out.join("\n")
}

/// `/status` of the daemon whose admin HTTP is at `admin_url`.
pub async fn status_of(admin_url: &str) -> Result<Value> {
    let url = format!("{admin_url}/status");
    let resp = http()
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let code = resp.status().as_u16();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("JSON body of {url}"))?;
    if code != 200 {
        bail!("/status answered {code}: {body}");
    }
    Ok(body)
}

/// The `/metrics` text of the daemon whose admin HTTP is at `admin_url`.
pub async fn metrics_of(admin_url: &str) -> Result<String> {
    let url = format!("{admin_url}/metrics");
    let resp = http()
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("/metrics answered {}", resp.status());
    }
    resp.text().await.context("/metrics body")
}

/// Runs `cmd` to completion within `timeout`, collecting its output; kills
/// it (and fails) when it runs longer.
pub fn output_within(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => Ok(output?),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let partial = rx.recv_timeout(Duration::from_secs(5));
            bail!("{cmd:?} still running after {timeout:?}; killed: {partial:?}")
        }
    }
}

/// Flips one bit of the byte a third of the way into `path`: inside the
/// data of a RocksDB file, a WAL or a snapshot file, clear of headers
/// and footers.
pub fn flip_byte_a_third_in(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// Runs the daemon binary to completion (for refusals and subcommands).
pub fn run_daemon(args: &[&std::ffi::OsStr]) -> Result<Output> {
    let mut cmd = Command::new(daemon_bin());
    cmd.args(args);
    output_within(cmd, RUN_TIMEOUT)
}

/// Starts a daemon on `dir` expecting it to exit; returns its output.
pub fn start_expecting_exit(dir: &TestDir) -> Result<Output> {
    start_expecting_exit_with(dir, &[])
}

/// Starts a daemon on `dir` with `extra` flags expecting it to exit (a
/// refused start); returns its output.
pub fn start_expecting_exit_with(dir: &TestDir, extra: &[&str]) -> Result<Output> {
    let ready_file = dir.path().join("refused-ready.json");
    let out = output_within(
        daemon_command(&[], &dir.data(), &ready_file, extra),
        RUN_TIMEOUT,
    )
    .context("a daemon kept running on a dir it should refuse")?;
    if ready_file.exists() {
        bail!(
            "the daemon wrote its ready file before exiting: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `mpreg-daemon replay --data-dir D`, parsed.
pub fn replay(data_dir: &Path) -> Result<Value> {
    let out = run_daemon(&[
        "replay".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ])?;
    if !out.status.success() {
        bail!("replay failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

impl TestDir {
    /// Writes a TOML config file into the test dir and returns the flags
    /// that pass it to the daemon.
    pub fn config(&self, toml: &str) -> Vec<String> {
        let path = self.path().join("mpreg.toml");
        std::fs::write(&path, toml).expect("write config");
        vec!["--config".to_string(), path.display().to_string()]
    }
}

/// A WebSocket connection as the tests open them.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Answers the peer handshake's challenge on `ws` (a connection to
/// `/peer`) as node `node` of cluster `cluster`, proving no secret, as
/// docs/cluster.md describes it; the server's verdict
/// (`{"accepted":{..}}` or `{"refused":{"reason":..}}`).
pub async fn peer_handshake(ws: &mut Ws, cluster: &str, node: &str) -> Result<Value> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    async fn next_text(ws: &mut Ws, what: &str) -> Result<Value> {
        let frame = tokio::time::timeout(HTTP_TIMEOUT, ws.next())
            .await
            .with_context(|| format!("no {what} within {HTTP_TIMEOUT:?}"))?
            .with_context(|| format!("closed before the {what}"))??;
        match frame {
            Message::Text(text) => Ok(serde_json::from_str(text.as_str())?),
            other => bail!("expected the {what} as text, got {other:?}"),
        }
    }
    let challenge = next_text(ws, "challenge").await?;
    ensure!(
        challenge["version"] == 1 && challenge["nonce"].is_string(),
        "challenge {challenge}"
    );
    let proof = serde_json::json!({
        "cluster_id": cluster,
        "node_id": node,
        "nonce": "00",
        "mac": null,
    });
    ws.send(Message::text(proof.to_string())).await?;
    next_text(ws, "verdict").await
}

/// A raw WebSocket connection for sending hand-made (and malformed) frames.
pub struct RawClient {
    ws: Ws,
}

impl RawClient {
    /// A connection to `/peer` of the node at `url` whose handshake is
    /// answered as node `node` of `cluster` with no proof; the verdict.
    pub async fn peer(url: &str, cluster: &str, node: &str) -> Result<(RawClient, Value)> {
        let mut client = RawClient::connect(&format!("{url}/peer?from={node}")).await?;
        let verdict = peer_handshake(&mut client.ws, cluster, node).await?;
        Ok((client, verdict))
    }

    pub async fn connect(url: &str) -> Result<RawClient> {
        let (ws, _) = tokio::time::timeout(HTTP_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .with_context(|| format!("no WebSocket handshake from {url} within {HTTP_TIMEOUT:?}"))?
            .context("connect")?;
        Ok(RawClient { ws })
    }

    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(text.into()))
            .await
            .context("send text frame")
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::binary(bytes))
            .await
            .context("send binary frame")
    }

    /// The next text or binary frame: (is_binary, parsed JSON).
    pub async fn recv(&mut self) -> Result<(bool, Value)> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .context("no frame within 30s")?
                .context("connection closed")??;
            match frame {
                Message::Text(t) => return Ok((false, serde_json::from_str(t.as_str())?)),
                Message::Binary(b) => return Ok((true, serde_json::from_slice(&b)?)),
                Message::Close(c) => bail!("closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Whether the server closed the connection (next read is a close or EOF).
    pub async fn closed(&mut self) -> bool {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.ws.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// A daemon running inside the test process, for tests that propose events
/// through the node directly (what federation will do from the network).
pub struct InProcess {
    pub node: Arc<mpreg_daemon::Node>,
    pub client_url: String,
    pub admin_url: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<mpreg_daemon::Result<()>>,
}

impl InProcess {
    /// Starts a node on `dir` (ports picked by the OS); `tune` adjusts the
    /// config first.
    pub async fn start(
        dir: &TestDir,
        tune: impl FnOnce(&mut mpreg_daemon::Config),
    ) -> Result<InProcess> {
        let mut config = mpreg_daemon::Config::new(dir.data());
        config.listen = "127.0.0.1:0".parse()?;
        config.admin_listen = "127.0.0.1:0".parse()?;
        tune(&mut config);
        let listeners = mpreg_daemon::Listeners::bind(&config).await?;
        let shutdown = CancellationToken::new();
        let running = mpreg_daemon::server::start(config, listeners, shutdown.clone())
            .await?
            .context("node stopped while starting")?;
        Ok(InProcess {
            node: running.node().clone(),
            client_url: running.client_url().to_string(),
            admin_url: running.admin_url().to_string(),
            shutdown,
            server: tokio::spawn(running.wait()),
        })
    }

    /// Clean shutdown; the data dir is released when this returns.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        drop(self.node);
        self.server.await??;
        Ok(())
    }
}

/// The answer of `/sql`: status, content type and body.
pub struct SqlAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl SqlAnswer {
    /// The body as JSON (rows, or `{"error","kind"}`).
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("JSON body: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The rows of a successful JSON answer.
    pub fn rows(&self) -> Result<Vec<Value>> {
        if self.status != 200 {
            bail!(
                "/sql answered {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            );
        }
        match self.json()? {
            Value::Array(rows) => Ok(rows),
            other => bail!("expected an array of rows, got {other}"),
        }
    }
}

/// `GET {admin_url}/sql?q=...&format=...`.
pub async fn sql_get(admin_url: &str, sql: &str, format: &str) -> Result<SqlAnswer> {
    let response = http()
        .get(format!("{admin_url}/sql"))
        .query(&[("q", sql), ("format", format)])
        .send()
        .await
        .context("GET /sql")?;
    sql_answer(response).await
}

/// `POST {admin_url}/sql` with the SQL as the body.
pub async fn sql_post(admin_url: &str, sql: &str) -> Result<SqlAnswer> {
    let response = http()
        .post(format!("{admin_url}/sql"))
        .body(sql.to_string())
        .send()
        .await
        .context("POST /sql")?;
    sql_answer(response).await
}

async fn sql_answer(response: reqwest::Response) -> Result<SqlAnswer> {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.bytes().await.context("/sql body")?.to_vec();
    Ok(SqlAnswer {
        status,
        content_type,
        body,
    })
}

/// The JSON rows of `sql` on the daemon at `admin_url`.
pub async fn sql_rows(admin_url: &str, sql: &str) -> Result<Vec<Value>> {
    sql_get(admin_url, sql, "json").await?.rows()
}

#[cfg(test)]
mod excerpt_test {
    use super::{LOG_TAIL_LINES, excerpt};

    #[test]
    fn a_panic_far_from_the_end_is_kept_with_the_tail() {
        let mut log: Vec<String> = (0..500).map(|i| format!("INFO line {i}")).collect();
        log[100] = "thread 'tokio' panicked at raft_core.rs:1532".to_string();
        log[101] = "follower log reversion is not allowed".to_string();
        log[300] = "ERROR raft stopped".to_string();
        let out = excerpt(&log.join("\n"));
        assert!(out.contains("   101: thread 'tokio' panicked"), "{out}");
        assert!(out.contains("   102: follower log reversion"), "{out}");
        assert!(!out.contains("INFO line 200\n"), "{out}");
        assert!(out.contains("   301: ERROR raft stopped"), "{out}");
        assert!(out.ends_with("INFO line 499"), "{out}");
        assert_eq!(
            out.lines().filter(|l| l.starts_with("INFO line 4")).count(),
            LOG_TAIL_LINES
        );
    }
}
