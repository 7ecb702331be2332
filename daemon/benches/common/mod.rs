//! Shared by the benchmarks: percentiles, an in-process daemon on port 0,
//! and certificates for TLS runs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mpreg_daemon::{Config, Listeners, Node};
use mpreg_storage::event::{QueueSettings, QueueType};
use tokio_util::sync::CancellationToken;

/// The `p` quantile (0..=1) of sorted samples.
/// Seconds each case runs: `MPREG_BENCH_SECONDS`, default 3.
pub fn seconds() -> f64 {
    std::env::var("MPREG_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Settings of a FIFO queue holding up to `max_size` messages, with the
/// default timeouts and retries.
pub fn fifo_settings(max_size: u64) -> QueueSettings {
    QueueSettings {
        queue_type: QueueType::Fifo,
        max_size,
        visibility_timeout_ms: 30_000,
        ack_timeout_ms: 30_000,
        message_ttl_ms: None,
        max_retries: 3,
        dead_letter_queue: None,
        dedup_window_ms: None,
    }
}

/// A daemon running in this process.
pub struct InProcess {
    pub url: String,
    pub admin_url: String,
    pub node: Arc<Node>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<mpreg_daemon::Result<()>>,
}

/// Starts a daemon on `dir` with ports picked by the OS; `tune` adjusts
/// the config first. Returns once it serves.
pub async fn start(dir: &Path, tune: impl FnOnce(&mut Config)) -> InProcess {
    let mut config = Config::new(dir.join("data"));
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.admin_listen = "127.0.0.1:0".parse().expect("addr");
    tune(&mut config);
    let listeners = Listeners::bind(&config).await.expect("bind");
    let shutdown = CancellationToken::new();
    let running = mpreg_daemon::server::start(config, listeners, shutdown.clone())
        .await
        .expect("start")
        .expect("not cancelled");
    InProcess {
        url: running.client_url().to_string(),
        admin_url: running.admin_url().to_string(),
        node: running.node().clone(),
        shutdown,
        server: tokio::spawn(running.wait()),
    }
}

impl InProcess {
    /// Shuts the daemon down and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        drop(self.node);
        self.server.await.expect("server task").expect("server");
    }
}

/// A CA and a certificate for 127.0.0.1 it signed, as PEM files in `dir`:
/// (certificate, key, CA).
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
    let pair = KeyPair::generate().expect("key");
    let node = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&pair, &ca)
        .expect("certificate");
    let paths = (
        dir.join("node.pem"),
        dir.join("node.key"),
        dir.join("ca.pem"),
    );
    std::fs::write(&paths.0, node.pem()).expect("write");
    std::fs::write(&paths.1, pair.serialize_pem()).expect("write");
    std::fs::write(&paths.2, ca.pem()).expect("write");
    paths
}
