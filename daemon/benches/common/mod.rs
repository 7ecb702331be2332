//! Shared by the benchmarks: percentiles and an in-process daemon on
//! port 0.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mpreg_daemon::{Config, Listeners, Node};
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
