//! The raft state machine: applies committed entries to the views on
//! RocksDB, builds and installs snapshots, and publishes what it applied to
//! readers through [`Views`].
//!
//! Each apply batch writes its row changes, `last_applied`, the last
//! membership and the digest in one RocksDB `WriteBatch`, so a crash never
//! leaves rows and `last_applied` out of step. The batch is not synced on
//! its own: the entries it applies are already synced in the log (same WAL),
//! and a lost apply batch is re-applied from the log at restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftSnapshotBuilder,
    StoredMembership,
};
use rocksdb::{DB, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::db::{
    CF_META, CF_SNAPSHOT, SNAPSHOT_CURRENT, cf, get_decoded, meta_key, scan_from, write_synced,
};
use crate::error::{Error, Result};
use crate::event::Outcome;
use crate::log_store::to_raft;
use crate::metrics::StorageMetrics;
use crate::raft_types::TypeConfig;
use crate::raft_types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError};
use crate::snapshot::{self, SnapshotHeader, SnapshotWriter};
use crate::views::{Catalog, Digest, RowStore, View, ViewTxn, apply};

/// What the state machine has applied, stored with every apply batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: crate::raft_types::typ::StoredMembership,
    /// `views_digest` at `last_applied`, kept incrementally by apply.
    pub digest: u128,
}

impl AppliedState {
    /// Index of the last applied entry (0 before the first).
    pub fn last_applied_index(&self) -> u64 {
        self.last_applied.map_or(0, |id| id.index)
    }

    pub fn digest_hex(&self) -> String {
        Digest::from_u128(self.digest).to_hex()
    }
}

/// The read side of the views: what routing, `/status` and SQL see.
#[derive(Default)]
pub struct Views {
    applied: RwLock<AppliedState>,
    catalog: RwLock<Catalog>,
    /// Bumped after every apply batch (or snapshot install) that changed a
    /// cache entry, so a memory tier can tell a row it read is still current.
    cache_generation: AtomicU64,
    /// Cache rows changed since the memory tier last took them: on every
    /// node, whoever proposed the write, so no tier serves a stale copy.
    cache_changes: Mutex<CacheChanges>,
    /// Queues whose row (counters, settings, existence) apply changed since
    /// the consumers' waker last took them: on every node, whoever
    /// proposed the change.
    queue_changes: Mutex<QueueChanges>,
    /// Signals new [`Views::queue_changes`].
    queue_changed: tokio::sync::Notify,
}

/// What [`Views::next_queue_changes`] hands over.
#[derive(Debug, Default)]
pub struct QueueChanges {
    /// Names of the queues whose row was written or deleted.
    pub queues: BTreeSet<String>,
    /// A snapshot was installed: any queue may have changed.
    pub everything: bool,
}

/// Most changed cache keys kept for the memory tier; beyond it the tier
/// is told to drop everything.
const MAX_CACHE_CHANGES: usize = 65_536;

/// What [`Views::take_cache_changes`] hands over.
#[derive(Debug, Default)]
pub struct CacheChanges {
    /// Row keys of `view_cache_entries` written or deleted.
    pub keys: Vec<Vec<u8>>,
    /// Too many changes (or a snapshot install): forget every row.
    pub everything: bool,
}

impl Views {
    /// `last_applied`, membership and digest, as of the last apply batch.
    pub fn applied(&self) -> AppliedState {
        self.applied
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes when cache entries change; see [`Views`].
    pub fn cache_generation(&self) -> u64 {
        self.cache_generation.load(Ordering::SeqCst)
    }

    /// The cache rows changed since the last call (see [`CacheChanges`]).
    pub fn take_cache_changes(&self) -> CacheChanges {
        std::mem::take(&mut *self.cache_changes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until apply changed a queue row, then takes every queue
    /// changed since the last call.
    pub async fn next_queue_changes(&self) -> QueueChanges {
        loop {
            let changes =
                std::mem::take(&mut *self.queue_changes.lock().unwrap_or_else(|e| e.into_inner()));
            if changes.everything || !changes.queues.is_empty() {
                return changes;
            }
            // A change noted after the take left a permit: no wake is lost.
            self.queue_changed.notified().await;
        }
    }

    fn note_queue_changes(&self, queues: impl Iterator<Item = String>, everything: bool) {
        let mut changes = self.queue_changes.lock().unwrap_or_else(|e| e.into_inner());
        changes.queues.extend(queues);
        changes.everything |= everything;
        drop(changes);
        self.queue_changed.notify_one();
    }

    fn note_cache_changes<'k>(&self, keys: impl Iterator<Item = &'k Vec<u8>>, everything: bool) {
        let mut changes = self.cache_changes.lock().unwrap_or_else(|e| e.into_inner());
        if everything {
            changes.everything = true;
        }
        if !changes.everything {
            changes.keys.extend(keys.cloned());
        }
        if changes.keys.len() > MAX_CACHE_CHANGES {
            changes.everything = true;
        }
        if changes.everything {
            changes.keys = Vec::new();
        }
    }

    /// The in-memory index of the views at `last_applied`.
    pub fn catalog(&self) -> RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(
        &self,
        applied: AppliedState,
        changes: &BTreeMap<(View, Vec<u8>), Option<Vec<u8>>>,
    ) -> Result<()> {
        let mut catalog = self.catalog.write().unwrap_or_else(|e| e.into_inner());
        for ((view, key), value) in changes.iter().filter(|((v, _), _)| v.in_catalog()) {
            catalog.apply_change(*view, key, value.as_deref())?;
        }
        *self.applied.write().unwrap_or_else(|e| e.into_inner()) = applied;
        let mut cache_keys = changes
            .keys()
            .filter(|(view, _)| *view == View::CacheEntries)
            .map(|(_, key)| key)
            .peekable();
        if cache_keys.peek().is_some() {
            self.note_cache_changes(cache_keys, false);
            self.cache_generation.fetch_add(1, Ordering::SeqCst);
        }
        let mut queues = changes
            .keys()
            .filter(|(view, _)| *view == View::Queues)
            .map(|(_, name)| String::from_utf8_lossy(name).into_owned())
            .peekable();
        if queues.peek().is_some() {
            self.note_queue_changes(queues, false);
        }
        Ok(())
    }

    fn replace(&self, applied: AppliedState, catalog: Catalog) {
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = catalog;
        *self.applied.write().unwrap_or_else(|e| e.into_inner()) = applied;
        self.note_cache_changes(std::iter::empty(), true);
        self.cache_generation.fetch_add(1, Ordering::SeqCst);
        self.note_queue_changes(std::iter::empty(), true);
    }
}

/// Row changes of one apply batch, on top of the database.
struct BatchStore<'a> {
    db: &'a DB,
    overlay: BTreeMap<(View, Vec<u8>), Option<Vec<u8>>>,
}

impl RowStore for BatchStore<'_> {
    fn get(&self, view: View, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(value) = self.overlay.get(&(view, key.to_vec())) {
            return Ok(value.clone());
        }
        self.db
            .get_cf(cf(self.db, view.cf_name())?, key)
            .map_err(|e| Error::rocks("read", view.cf_name(), e))
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
        let mut rows: BTreeMap<Vec<u8>, Vec<u8>> = scan_from(self.db, view, prefix, from, wanted)?
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

/// Where the current snapshot lives.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta,
    /// File name inside the snapshot folder.
    file: String,
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

fn apply_entries(
    db: &DB,
    mut applied: AppliedState,
    entries: Vec<Entry>,
) -> Result<(AppliedState, Vec<Vec<Outcome>>, BatchStore<'_>)> {
    let mut store = BatchStore {
        db,
        overlay: BTreeMap::new(),
    };
    let mut digest = Digest::from_u128(applied.digest);
    let mut outcomes = Vec::with_capacity(entries.len());
    for entry in entries {
        let log_id = *entry.get_log_id();
        applied.last_applied = Some(log_id);
        let outcome = match entry.payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Normal(batch) => batch
                .events
                .iter()
                .map(|event| apply(&mut ViewTxn::new(&mut store, &mut digest), event))
                .collect::<Result<Vec<Outcome>>>()?,
            EntryPayload::Membership(membership) => {
                applied.membership = StoredMembership::new(Some(log_id), membership);
                Vec::new()
            }
        };
        outcomes.push(outcome);
    }
    applied.digest = digest.value();
    Ok((applied, outcomes, store))
}

fn write_applied(db: &DB, batch: &mut WriteBatch, applied: &AppliedState) -> Result<()> {
    batch.put_cf(
        cf(db, CF_META)?,
        meta_key::APPLIED,
        codec::encode("applied state", applied)?,
    );
    Ok(())
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| Error::SnapshotIo {
            verb: "sync the folder of",
            path: dir.to_path_buf(),
            source,
        })
}

/// Makes `file` (inside `dir`) the current snapshot and deletes the old one.
fn record_snapshot(db: &DB, dir: &Path, record: &SnapshotRecord) -> Result<()> {
    sync_dir(dir)?;
    let old: Option<SnapshotRecord> = get_decoded(db, CF_SNAPSHOT, SNAPSHOT_CURRENT)?;
    let mut batch = WriteBatch::default();
    batch.put_cf(
        cf(db, CF_SNAPSHOT)?,
        SNAPSHOT_CURRENT,
        codec::encode("snapshot record", record)?,
    );
    write_synced(db, batch, "snapshot record")?;
    if let Some(old) = old.filter(|o| o.file != record.file) {
        let _ = std::fs::remove_file(dir.join(old.file));
    }
    Ok(())
}

/// Path of the current snapshot file and its header, if a snapshot exists.
pub(crate) fn current_snapshot(db: &DB, dir: &Path) -> Result<Option<(SnapshotMeta, PathBuf)>> {
    let record: Option<SnapshotRecord> = get_decoded(db, CF_SNAPSHOT, SNAPSHOT_CURRENT)?;
    Ok(record.map(|r| (r.meta, dir.join(r.file))))
}

fn build_snapshot_file(db: &DB, dir: &Path) -> Result<SnapshotRecord> {
    let snap = db.snapshot();
    let applied: AppliedState = match snap
        .get_cf(cf(db, CF_META)?, meta_key::APPLIED)
        .map_err(|e| Error::rocks("read", "applied state", e))?
    {
        Some(bytes) => codec::decode("applied state", &bytes)?,
        None => AppliedState::default(),
    };
    let snapshot_id = match applied.last_applied {
        Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, unix_nanos()),
        None => format!("0-0-{}", unix_nanos()),
    };
    let file = format!("{snapshot_id}.snap");
    let tmp = dir.join(format!("{file}.tmp"));
    let header = SnapshotHeader {
        last_applied: applied.last_applied,
        membership: applied.membership.clone(),
        digest: applied.digest,
    };
    let mut writer = SnapshotWriter::create(&tmp, &header)?;
    for view in View::ALL {
        for item in snap.iterator_cf(cf(db, view.cf_name())?, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| Error::rocks("scan", view.cf_name(), e))?;
            writer.row(view, &key, &value)?;
        }
    }
    writer.finish()?;
    std::fs::rename(&tmp, dir.join(&file)).map_err(|source| Error::SnapshotIo {
        verb: "rename",
        path: tmp.clone(),
        source,
    })?;
    let record = SnapshotRecord {
        meta: SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        },
        file,
    };
    record_snapshot(db, dir, &record)?;
    Ok(record)
}

/// Replaces every view with the rows of a verified snapshot file.
fn install_snapshot_file(
    db: &DB,
    dir: &Path,
    meta: &SnapshotMeta,
    received: &Path,
) -> Result<AppliedState> {
    let mut batch = WriteBatch::default();
    for view in View::ALL {
        let family = cf(db, view.cf_name())?;
        for item in db.iterator_cf(family, IteratorMode::Start) {
            let (key, _) = item.map_err(|e| Error::rocks("scan", view.cf_name(), e))?;
            batch.delete_cf(family, key);
        }
    }
    let header = snapshot::read(received, |view, key, value| {
        batch.put_cf(cf(db, view.cf_name())?, key, value);
        Ok(())
    })?;
    if header.last_applied != meta.last_log_id {
        return Err(Error::BadSnapshot {
            path: received.to_path_buf(),
            reason: format!(
                "it covers up to {:?}, the leader announced {:?}",
                header.last_applied, meta.last_log_id
            ),
        });
    }
    let applied = AppliedState {
        last_applied: header.last_applied,
        membership: header.membership,
        digest: header.digest,
    };
    write_applied(db, &mut batch, &applied)?;
    write_synced(db, batch, "snapshot install")?;
    let file = format!("{}.snap", meta.snapshot_id);
    std::fs::rename(received, dir.join(&file)).map_err(|source| Error::SnapshotIo {
        verb: "rename",
        path: received.to_path_buf(),
        source,
    })?;
    record_snapshot(
        db,
        dir,
        &SnapshotRecord {
            meta: meta.clone(),
            file,
        },
    )?;
    Ok(applied)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// The state machine over the view column families.
pub struct StateMachine {
    db: Arc<DB>,
    views: Arc<Views>,
    snapshot_dir: PathBuf,
    metrics: Arc<StorageMetrics>,
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

/// Builds snapshots from a consistent RocksDB snapshot of the views.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
    metrics: Arc<StorageMetrics>,
}

/// Copies received snapshot data, from its start, into a synced file.
async fn copy_to_file(data: &mut tokio::fs::File, path: &Path) -> Result<()> {
    use tokio::io::AsyncSeekExt;
    let err = |verb| {
        move |source| Error::SnapshotIo {
            verb,
            path: path.to_path_buf(),
            source,
        }
    };
    data.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(err("rewind"))?;
    let mut out = tokio::fs::File::create(path).await.map_err(err("create"))?;
    tokio::io::copy(data, &mut out)
        .await
        .map_err(err("write"))?;
    out.sync_all().await.map_err(err("sync"))
}

async fn open_snapshot(path: PathBuf) -> Result<tokio::fs::File> {
    tokio::fs::File::open(&path)
        .await
        .map_err(|source| Error::SnapshotIo {
            verb: "open",
            path,
            source,
        })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        let err = to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write);
        let timer = self.metrics.snapshot_build_seconds.start_timer();
        let record = blocking(move || build_snapshot_file(&db, &dir))
            .await
            .map_err(err)?;
        timer.observe_duration();
        let file = open_snapshot(self.snapshot_dir.join(&record.file))
            .await
            .map_err(to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        self.metrics.snapshots.inc();
        if let Ok(meta) = file.metadata().await {
            self.metrics
                .snapshot_size_bytes
                .set(i64::try_from(meta.len()).unwrap_or(i64::MAX));
        }
        tracing::info!(snapshot_id = %record.meta.snapshot_id, "built snapshot");
        Ok(Snapshot {
            meta: record.meta,
            snapshot: Box::new(file),
        })
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
        let db = self.db.clone();
        let views = self.views.clone();
        let metrics = self.metrics.clone();
        blocking(move || {
            let timer = metrics.apply_seconds.start_timer();
            for entry in &entries {
                if let EntryPayload::Normal(batch) = &entry.payload {
                    metrics.entry_events.observe(batch.events.len() as f64);
                    metrics.events_applied.inc_by(batch.events.len() as u64);
                }
            }
            let (applied, outcomes, store) = apply_entries(&db, views.applied(), entries)?;
            let mut batch = WriteBatch::default();
            for ((view, key), value) in &store.overlay {
                let family = cf(&db, view.cf_name())?;
                match value {
                    Some(value) => batch.put_cf(family, key, value),
                    None => batch.delete_cf(family, key),
                }
            }
            write_applied(&db, &mut batch, &applied)?;
            db.write(batch)
                .map_err(|e| Error::rocks("write", "apply batch", e))?;
            views.publish(applied, &store.overlay)?;
            timer.observe_duration();
            Ok(outcomes)
        })
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
        let Some((meta, path)) = current_snapshot(&self.db, &self.snapshot_dir).map_err(err())?
        else {
            return Ok(None);
        };
        let file = open_snapshot(path).await.map_err(err())?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
