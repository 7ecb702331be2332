//! mpreg-storage: the durable core of mpreg.
//!
//! Every change of shared state is an [`Event`] appended to a raft log on
//! RocksDB; committed events are applied deterministically to materialized
//! views; replay rebuilds the same views from the log.
//!
//! # Layout
//! - [`codec`]: the versioned encoding of every stored value;
//! - [`event`]: events and apply outcomes;
//! - [`raft_types`]: the openraft type configuration;
//! - [`db`]: the data dir (lock, RocksDB, schema version, identity);
//! - [`log_store`]: the raft log (`RaftLogStorage`);
//! - [`state_machine`]: the raft state machine (`RaftStateMachine`): apply,
//!   snapshot build and install, and the read side [`Views`];
//! - [`views`]: rows, the apply function, the digest, the in-memory catalog;
//! - [`snapshot`]: snapshot files;
//! - [`replay`]: offline rebuild of the views;
//! - [`topic`]: AMQP-style topic patterns (queue delivery filters);
//! - [`inspect`]: read-only scans of the views and the log (for SQL);
//! - [`metrics`]: Prometheus metrics of the log, apply and snapshots.

pub mod codec;
pub mod db;
pub mod error;
pub mod event;
pub mod inspect;
pub mod log_store;
pub mod metrics;
pub mod raft_types;
pub mod replay;
pub mod snapshot;
pub mod state_machine;
pub mod topic;
pub mod views;

pub use db::{DataDir, Identity, OpenMode, SCHEMA_VERSION};
pub use error::{Error, Result};
pub use event::{Event, EventBatch, EventKind, Outcome};
pub use inspect::{Flow, Inspector, StoredRaft};
pub use log_store::LogStore;
pub use metrics::StorageMetrics;
pub use raft_types::{TypeConfig, raft_id, typ};
pub use replay::{ReplayReport, replay};
pub use state_machine::{AppliedState, CacheChanges, QueueChanges, StateMachine, Views};

/// Opens the raft log and state machine of an open data dir.
pub fn open_raft_storage(
    dir: &DataDir,
    metrics: std::sync::Arc<StorageMetrics>,
) -> Result<(LogStore, StateMachine)> {
    let log = LogStore::new(dir.db().clone(), metrics.clone());
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
mod queue_model_test;
#[cfg(test)]
mod raft_suite_test;
#[cfg(test)]
mod test_views;
