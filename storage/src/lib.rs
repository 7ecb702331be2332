//! mpreg-storage: the durable core of mpreg.
//!
//! Every change of shared state is an [`Event`] appended to a raft log on
//! RocksDB; committed events are applied deterministically to materialized
//! views; replay rebuilds the same views from the log.
//!
//! # Layout
//! Public (used by the query engine, the daemon and the tests):
//! - [`event`]: events and apply outcomes;
//! - [`federation`]: route announcements, the accept and reject rules and
//!   route ranking, as pure functions;
//! - [`views`]: the rows of every view and the in-memory
//!   [`views::Catalog`] (the apply function that turns events into rows
//!   stays inside the crate);
//! - [`inspect`]: read-only scans of the views and the log (for SQL);
//! - [`codec`]: the versioned encoding of every stored value;
//! - [`topic`]: AMQP-style topic patterns (queue delivery filters, pub/sub);
//! - [`credential`]: what a client credential allows.
//!
//! Inside the crate (their entry types are re-exported here):
//! - `db`: the data dir ([`DataDir`]: lock, RocksDB, schema version,
//!   identity);
//! - `error`: [`Error`] and [`Result`];
//! - `raft_types`: the openraft type configuration ([`TypeConfig`], [`typ`]);
//! - `log_store`: the raft log ([`LogStore`], `RaftLogStorage`);
//! - `state_machine`: the raft state machine ([`StateMachine`],
//!   `RaftStateMachine`): apply, snapshot build and install, and the read
//!   side [`Views`];
//! - `snapshot`: the snapshot file format;
//! - `replay`: offline rebuild of the views ([`replay()`]);
//! - `metrics`: Prometheus metrics of the log, apply and snapshots
//!   ([`StorageMetrics`]).

pub mod codec;
pub mod credential;
pub mod event;
pub mod federation;
pub mod inspect;
pub mod topic;
pub mod views;

mod db;
mod error;
mod log_store;
mod metrics;
mod raft_types;
mod recent_entries;
mod replay;
mod snapshot;
mod state_machine;

pub use db::{DataDir, Identity, OpenMode, SCHEMA_VERSION};
pub use error::{Error, Result};
pub use event::{Event, EventBatch, EventKind, Outcome};
pub use inspect::{Flow, Inspector, StoredRaft};
pub use log_store::{EventClock, LogStore};
pub use metrics::StorageMetrics;
pub use raft_types::{TypeConfig, raft_id, typ};
pub use replay::{ReplayReport, replay};
pub use snapshot::ArrivingSnapshot;
pub use state_machine::{
    AppliedState, CacheChanges, CatalogRead, QueueChanges, StateMachine, Views,
};

/// Opens the raft log and state machine of an open data dir.
pub fn open_raft_storage(
    dir: &DataDir,
    metrics: std::sync::Arc<StorageMetrics>,
) -> Result<(LogStore, StateMachine)> {
    let log = LogStore::new(dir.db().clone(), metrics.clone())?;
    let sm = StateMachine::open(dir.db().clone(), dir.snapshot_dir(), metrics)?;
    Ok((log, sm))
}

#[cfg(test)]
mod cache_model_test;
#[cfg(test)]
mod change_feed_test;
#[cfg(test)]
mod determinism_test;
#[cfg(test)]
mod fuzz_test;
#[cfg(test)]
mod queue_model_test;
#[cfg(test)]
mod raft_suite_test;
#[cfg(test)]
mod recovery_test;
#[cfg(test)]
mod test_views;
