//! Shared by the benchmarks: percentiles and an in-process daemon on
//! port 0.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use mpreg_daemon::{Config, Listeners, run};
use tokio_util::sync::CancellationToken;

/// The `p` quantile (0..=1) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A daemon running in this process.
pub struct InProcess {
    pub url: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<mpreg_daemon::Result<()>>,
}

/// Starts a daemon on `dir` with ports picked by the OS; `tune` adjusts
/// the config first. Returns once it serves.
pub async fn start(dir: &Path, tune: impl FnOnce(&mut Config)) -> InProcess {
    let mut config = Config::new(dir.join("data"));
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.admin_listen = "127.0.0.1:0".parse().expect("addr");
    let ready = dir.join("ready.json");
    config.ready_file = Some(ready.clone());
    tune(&mut config);
    let listeners = Listeners::bind(&config).await.expect("bind");
    let url = format!("ws://{}", listeners.client.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(run(config, listeners, shutdown.clone()));
    while !ready.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    InProcess {
        url,
        shutdown,
        server,
    }
}

impl InProcess {
    /// Shuts the daemon down and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.expect("server task").expect("server");
    }
}
