//! mpreg-query: read-only SQL over a node's state (DataFusion).
//!
//! Tables (`nodes`, `functions`, `subscriptions`, `routes`, `queues`,
//! `queue_messages`, `cache_entries`, `events`, `raft`, plus
//! `information_schema`) read the views and the log of one data dir through
//! [`mpreg_storage::Inspector`], live on a running node (`/sql`) or offline
//! on a stopped node's dir (`mpreg-daemon sql`).
//!
//! # Layout
//! - [`engine`]: the session, the read-only guard, limits, errors;
//! - [`tables`]: the tables and what each reads;
//! - [`columns`]: column declarations and batch building;
//! - [`scan`]: streaming a blocking RocksDB scan into a query;
//! - [`pushdown`]: which filters narrow a scan;
//! - [`raft`]: the `raft` table's row;
//! - [`cache`]: the memory tier facts of `cache_entries`;
//! - [`format`]: JSON, CSV, Arrow IPC and text table encodings.

pub mod cache;
pub mod columns;
pub mod engine;
pub mod format;
pub mod pushdown;
pub mod raft;
pub mod scan;
pub mod tables;

use std::path::Path;
use std::sync::Arc;

pub use cache::{CacheTierSource, StoppedCacheTier};
pub use engine::{QueryOutput, SqlEngine, SqlError, SqlLimits};
pub use format::Format;
pub use raft::{PeerRow, RaftRow, RaftSource, StoredRaftSource, node_names};

use mpreg_storage::{DataDir, Inspector, OpenMode};

/// Why an offline engine could not open its data dir.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Storage(#[from] mpreg_storage::Error),
    #[error("cannot start the SQL runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// An engine over a stopped node's data dir, opened read-only.
pub fn open_offline(path: &Path, limits: SqlLimits) -> Result<SqlEngine, OpenError> {
    let dir = DataDir::open(path, OpenMode::ReadOnly)?;
    let node_id = dir.identity()?.map(|i| i.node_id).unwrap_or_default();
    let inspector = Inspector::new(&dir);
    let raft = Arc::new(StoredRaftSource {
        node_id,
        inspector: inspector.clone(),
    });
    Ok(SqlEngine::new(
        inspector,
        raft,
        Arc::new(StoppedCacheTier),
        limits,
    )?)
}

/// Now, in unix milliseconds (route expiry in `routes.state`).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
