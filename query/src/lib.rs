//! mpreg-query: read-only SQL over a node's state (DataFusion).
//!
//! Tables (`nodes`, `functions`, `subscriptions`, `routes`,
//! `federation_links`, `queues`, `queue_messages`, `cache_entries`,
//! `events`, `raft`, `peers`, plus `information_schema`) and the table
//! function `route_explain('dest')` read the views and the log of one data
//! dir through [`mpreg_storage::Inspector`], live on a running node
//! (`/sql`) or offline on a stopped node's dir (`mpreg-daemon sql`).
//!
//! # Layout
//! - `engine`: the session, the read-only guard, limits, errors
//!   ([`SqlEngine`], [`SqlLimits`], [`SqlError`]);
//! - `tables`: the tables, dispatched by `TableId` to one file per table
//!   (its columns, pushdown key and rows), and the sources the daemon
//!   implements ([`RaftSource`], [`CacheTierSource`], [`LinkStateSource`]);
//! - `columns`: column declarations and batch building;
//! - `scan`: streaming a blocking RocksDB scan into a query;
//! - `pushdown`: which filters narrow a scan;
//! - [`format`]: JSON, CSV, Arrow IPC and text table encodings;
//! - [`pg`]: the PostgreSQL wire protocol over the same tables.

mod columns;
mod engine;
pub mod format;
pub mod pg;
mod pushdown;
mod scan;
mod tables;

use std::path::Path;
use std::sync::Arc;

pub use engine::{QueryOutput, SqlEngine, SqlError, SqlLimits};
pub use format::Format;
pub use tables::{CacheTierSource, LinkState, LinkStateSource, PeerRow, RaftRow, RaftSource};

use mpreg_storage::{DataDir, Inspector, OpenMode};
use tables::{StoppedCacheTier, StoredRaftSource};

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
