//! The read side of the state machine: [`Views`], what routing, `/status`
//! and SQL see of the applied state, and the change feeds (cache keys,
//! queues) that apply publishes to the cache memory tier and the queue
//! consumers on every node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use super::applied::AppliedState;
use crate::error::Result;
use crate::views::{Catalog, View};

#[cfg(debug_assertions)]
thread_local! {
    /// Whether this thread holds a [`CatalogRead`].
    static CATALOG_READS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A read of the catalog ([`Views::catalog`]).
pub struct CatalogRead<'a>(RwLockReadGuard<'a, Catalog>);

impl std::ops::Deref for CatalogRead<'_> {
    type Target = Catalog;

    fn deref(&self) -> &Catalog {
        &self.0
    }
}

impl Drop for CatalogRead<'_> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        CATALOG_READS.with(|held| held.set(false));
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

    /// The in-memory index of the views at `last_applied`. A thread must
    /// not read it again while it holds this: std's `RwLock` queues new
    /// readers behind a waiting writer, so with apply waiting to write, the
    /// second read waits forever and so does apply. Debug builds (the
    /// tests) panic at the second read instead.
    pub fn catalog(&self) -> CatalogRead<'_> {
        #[cfg(debug_assertions)]
        CATALOG_READS.with(|held| {
            assert!(
                !held.get(),
                "a thread read the catalog while holding a read of it (deadlocks once apply waits to write)"
            );
            held.set(true);
        });
        CatalogRead(self.catalog.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Publishes an applied batch: its catalog rows, `applied`, and the
    /// cache keys and queues it changed.
    pub(super) fn publish(
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

    /// Replaces everything (open, snapshot install): every cache row and
    /// queue counts as changed.
    pub(super) fn replace(&self, applied: AppliedState, catalog: Catalog) {
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = catalog;
        *self.applied.write().unwrap_or_else(|e| e.into_inner()) = applied;
        self.note_cache_changes(std::iter::empty(), true);
        self.cache_generation.fetch_add(1, Ordering::SeqCst);
        self.note_queue_changes(std::iter::empty(), true);
    }
}
