//! Errors of the daemon: one variant per failed operation, with the address,
//! file or node a person needs to act on it.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Result of daemon operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] mpreg_storage::Error),

    #[error("failed to read config file {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("config file {path} is invalid: {reason}")]
    BadConfig { path: PathBuf, reason: String },

    #[error("invalid setting: {0}")]
    InvalidSetting(String),

    #[error("failed to bind {what} listener on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// The ready or listening file could not be written.
    #[error("failed to write {path}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to start raft: {0}")]
    RaftStart(String),

    #[error(
        "raft stopped: {0}; the node stopped so it acknowledges nothing it cannot keep (restart it once the disk is healthy: it recovers from its log)"
    )]
    RaftFailed(String),

    #[error("no leader elected within {0:?}")]
    NoLeader(std::time::Duration),

    #[error("failed to commit event {kind}: {refused}")]
    Propose {
        kind: &'static str,
        refused: crate::envelope::Refused,
    },

    #[error("event {kind} was refused: {reason}")]
    Rejected { kind: &'static str, reason: String },

    #[error("admin HTTP server failed")]
    Admin(#[source] std::io::Error),

    #[error("failed to set up metrics")]
    Metrics(#[source] prometheus::Error),

    #[error("failed to start the SQL runtime")]
    SqlRuntime(#[source] std::io::Error),

    #[error("failed to install the signal handler")]
    Signal(#[source] std::io::Error),
}

/// `err` followed by each of its causes, `: `-separated, as one line (the
/// cause is where RocksDB names a damaged file).
pub fn with_causes(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
