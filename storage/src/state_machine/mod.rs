//! The raft state machine ([`StateMachine`], openraft's
//! `RaftStateMachine`): applies committed entries to the views on RocksDB
//! and publishes what it applied to readers through [`Views`].
//!
//! Each apply batch writes its row changes, `last_applied`, the last
//! membership and the digest in one RocksDB `WriteBatch`, so a crash never
//! leaves rows and `last_applied` out of step. The batch is not synced on
//! its own: the entries it applies are already synced in the log (same WAL),
//! and a lost apply batch is re-applied from the log at restart.
//!
//! - `applied`: [`AppliedState`], stored with every apply batch;
//! - `read`: [`Views`], the read side and its change feeds;
//! - `snapshots`: building, installing and recording snapshot files.

mod applied;
mod read;
mod snapshots;

pub use applied::AppliedState;
pub use read::{CacheChanges, CatalogRead, QueueChanges, Views};
pub use snapshots::SnapshotBuilder;
pub(crate) use snapshots::current_snapshot;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, StoredMembership};
use rocksdb::{DB, IteratorMode, ReadOptions, WriteBatch};

use crate::db::{CF_META, Wait, blocking, cf, get_decoded, meta_key, scan_from, without_waiting};
use crate::error::{Error, Result};
use crate::event::Outcome;
use crate::log_store::{events_in, to_raft};
use crate::metrics::StorageMetrics;
use crate::raft_types::TypeConfig;
use crate::raft_types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError};
use crate::views::{Catalog, Digest, RowStore, View, ViewTxn, apply};
use applied::write_applied;
use snapshots::{
    copy_to_file, install_snapshot_file, open_current_snapshot, replace_damaged_snapshot,
    unix_nanos,
};

/// Where a row is: its view and its key.
type RowAt = (View, Vec<u8>);

/// Row changes of one apply batch, on top of the database.
struct BatchStore<'a> {
    db: &'a DB,
    overlay: BTreeMap<RowAt, Option<Vec<u8>>>,
    /// Rows this batch read from the database and has not changed: an
    /// apply often reads a row twice (its event's checks, then the digest
    /// of the write that replaces it), and a RocksDB read is most of an
    /// apply's cost.
    fetched: RefCell<HashMap<RowAt, Option<Vec<u8>>>>,
    wait: Wait,
    reads: ReadOptions,
}

impl RowStore for BatchStore<'_> {
    fn get(&self, view: View, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let at = (view, key.to_vec());
        if let Some(value) = self.overlay.get(&at) {
            return Ok(value.clone());
        }
        if let Some(value) = self.fetched.borrow().get(&at) {
            return Ok(value.clone());
        }
        let value = self
            .db
            .get_cf_opt(cf(self.db, view.cf_name())?, key, &self.reads)
            .map_err(|e| Error::rocks("read", view.cf_name(), e))?;
        self.fetched.borrow_mut().insert(at, value.clone());
        Ok(value)
    }

    fn scan(
        &self,
        view: View,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let pending: Vec<_> = self
            .overlay
            .range((view, from.to_vec())..)
            .take_while(|((v, k), _)| *v == view && k.starts_with(prefix))
            .collect();
        // Each pending change can hide at most one stored row, so this many
        // stored rows always hold the first `limit` of the merged result.
        let wanted = limit.saturating_add(pending.len());
        let mut rows: BTreeMap<Vec<u8>, Vec<u8>> =
            scan_from(self.db, view, prefix, from, wanted, self.wait)?
                .into_iter()
                .collect();
        for ((_, key), value) in pending {
            match value {
                Some(value) => rows.insert(key.clone(), value.clone()),
                None => rows.remove(key),
            };
        }
        Ok(rows.into_iter().take(limit).collect())
    }

    fn put(&mut self, view: View, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert((view, key), Some(value));
    }

    fn delete(&mut self, view: View, key: Vec<u8>) {
        self.overlay.insert((view, key), None);
    }
}

/// Loads the in-memory catalog from the view column families.
fn load_catalog(db: &DB) -> Result<Catalog> {
    let mut catalog = Catalog::default();
    for view in View::ALL.into_iter().filter(|v| v.in_catalog()) {
        for item in db.iterator_cf(cf(db, view.cf_name())?, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| Error::rocks("scan", view.cf_name(), e))?;
            catalog.apply_change(view, &key, Some(&value))?;
        }
    }
    Ok(catalog)
}

fn apply_entries<'a>(
    db: &'a DB,
    mut applied: AppliedState,
    entries: &[Entry],
    wait: Wait,
) -> Result<(AppliedState, Vec<Vec<Outcome>>, BatchStore<'a>)> {
    let mut store = BatchStore {
        db,
        overlay: BTreeMap::new(),
        fetched: RefCell::default(),
        wait,
        reads: wait.read_options(),
    };
    let mut digest = Digest::from_u128(applied.digest);
    let mut outcomes = Vec::with_capacity(entries.len());
    for entry in entries {
        let log_id = *entry.get_log_id();
        applied.last_applied = Some(log_id);
        let outcome = match &entry.payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Normal(batch) => batch
                .events
                .iter()
                .map(|event| apply(&mut ViewTxn::new(&mut store, &mut digest), event))
                .collect::<Result<Vec<Outcome>>>()?,
            EntryPayload::Membership(membership) => {
                applied.membership = StoredMembership::new(Some(log_id), membership.clone());
                Vec::new()
            }
        };
        outcomes.push(outcome);
    }
    applied.digest = digest.value();
    Ok((applied, outcomes, store))
}

/// The state machine over the view column families.
pub struct StateMachine {
    db: Arc<DB>,
    views: Arc<Views>,
    snapshot_dir: PathBuf,
    pub(crate) metrics: Arc<StorageMetrics>,
}

impl StateMachine {
    /// Opens the state machine of a data dir and loads its in-memory views.
    pub fn open(db: Arc<DB>, snapshot_dir: PathBuf, metrics: Arc<StorageMetrics>) -> Result<Self> {
        let applied: AppliedState =
            get_decoded(&db, CF_META, meta_key::APPLIED)?.unwrap_or_default();
        let catalog = load_catalog(&db)?;
        let views = Arc::new(Views::default());
        views.replace(applied, catalog);
        Ok(StateMachine {
            db,
            views,
            snapshot_dir,
            metrics,
        })
    }

    /// The read side shared with routing, `/status` and SQL.
    pub fn views(&self) -> Arc<Views> {
        self.views.clone()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, crate::raft_types::typ::StoredMembership), StorageError> {
        let applied = self.views.applied();
        Ok((applied.last_applied, applied.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        for entry in &entries {
            if let EntryPayload::Normal(batch) = &entry.payload {
                self.metrics.entry_events.observe(batch.events.len() as f64);
            }
        }
        let events = events_in(&entries);
        self.metrics.events_applied.inc_by(events as u64);
        let db = self.db.clone();
        let views = self.views.clone();
        let metrics = self.metrics.clone();
        let apply = move |wait: Wait| {
            let started = std::time::Instant::now();
            let (applied, outcomes, store) = apply_entries(&db, views.applied(), &entries, wait)?;
            let mut batch = WriteBatch::default();
            for ((view, key), value) in &store.overlay {
                let family = cf(&db, view.cf_name())?;
                match value {
                    Some(value) => batch.put_cf(family, key, value),
                    None => batch.delete_cf(family, key),
                }
            }
            write_applied(&db, &mut batch, &applied)?;
            db.write_opt(batch, &wait.write_options())
                .map_err(|e| Error::rocks("write", "apply batch", e))?;
            views.publish(applied, &store.overlay)?;
            metrics
                .apply_seconds
                .observe(started.elapsed().as_secs_f64());
            Ok(outcomes)
        };
        without_waiting(events, apply)
            .await
            .map_err(to_raft(ErrorSubject::StateMachine, ErrorVerb::Write))
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            metrics: self.metrics.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        // An unlinked scratch file: it vanishes with the handle, so an
        // interrupted transfer leaves nothing behind.
        let path = self
            .snapshot_dir
            .join(format!("receiving-{}.tmp", unix_nanos()));
        let err = |source| Error::SnapshotIo {
            verb: "create",
            path: path.clone(),
            source,
        };
        let file = tokio::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(err)
            .map_err(to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        tokio::fs::remove_file(&path)
            .await
            .map_err(err)
            .map_err(to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let err = || {
            to_raft(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
            )
        };
        let received = self
            .snapshot_dir
            .join(format!("installing-{}.tmp", unix_nanos()));
        copy_to_file(&mut snapshot, &received)
            .await
            .map_err(err())?;
        drop(snapshot);
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        let views = self.views.clone();
        let meta = meta.clone();
        let installed = blocking(move || {
            let applied = install_snapshot_file(&db, &dir, &meta, &received);
            if applied.is_err() {
                let _ = std::fs::remove_file(&received);
            }
            views.replace(applied?, load_catalog(&db)?);
            Ok(())
        })
        .await;
        installed.map_err(err())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let err = || to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read);
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        let metrics = self.metrics.clone();
        blocking(move || replace_damaged_snapshot(&db, &dir, &metrics))
            .await
            .map_err(err())?;
        let current = open_current_snapshot(&self.db, &self.snapshot_dir)
            .await
            .map_err(err())?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
