//! Offline replay: rebuild every view from the snapshot and the retained
//! log in memory, and compute the digest from scratch.
//!
//! The live node keeps its digest incrementally; replay recomputes it over
//! the rebuilt rows. Equal digests at the same `last_applied` prove that
//! replay (and so crash recovery) rebuilds exactly what the node serves.

use std::collections::BTreeMap;
use std::path::Path;

use openraft::{EntryPayload, RaftLogId};
use rocksdb::DB;
use serde::Serialize;

use crate::db::{CF_META, DataDir, OpenMode, get_decoded, meta_key};
use crate::error::{Error, Result};
use crate::log_store::read_entry_chunks;
use crate::raft_types::typ::{Entry as LogEntry, LogId};
use crate::snapshot;
use crate::state_machine::{AppliedState, current_snapshot};
use crate::views::{Digest, RowStore, View, ViewTxn, apply};

/// What `mpreg-daemon replay` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Index of the last log entry applied (snapshot or log).
    pub last_applied: u64,
    /// Events applied from the retained log (after the snapshot).
    pub events: u64,
    /// Digest of the rebuilt views, computed from scratch.
    pub views_digest: String,
}

/// Views held in memory.
#[derive(Default)]
pub struct MemViews {
    rows: BTreeMap<View, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemViews {
    /// Digest over every row, computed from scratch.
    pub fn digest(&self) -> Digest {
        let mut digest = Digest::default();
        for (view, rows) in &self.rows {
            for (key, value) in rows {
                digest.add(*view, key, value);
            }
        }
        digest
    }
}

impl RowStore for MemViews {
    fn get(&self, view: View, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.rows.get(&view).and_then(|rows| rows.get(key)).cloned())
    }

    fn scan(
        &self,
        view: View,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let Some(rows) = self.rows.get(&view) else {
            return Ok(Vec::new());
        };
        Ok(rows
            .range(from.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn put(&mut self, view: View, key: Vec<u8>, value: Vec<u8>) {
        self.rows.entry(view).or_default().insert(key, value);
    }

    fn delete(&mut self, view: View, key: Vec<u8>) {
        if let Some(rows) = self.rows.get_mut(&view) {
            rows.remove(&key);
        }
    }
}

/// Rebuilds the views of the data dir at `path` without modifying it.
pub fn replay(path: &Path) -> Result<ReplayReport> {
    let dir = DataDir::open(path, OpenMode::ReadOnly)?;
    let db = dir.db();
    let mut views = MemViews::default();
    let mut last_applied: Option<LogId> = None;
    if let Some((meta, file)) = current_snapshot(db, &dir.snapshot_dir())? {
        snapshot::read(&file, |view, key, value| {
            views.put(view, key, value);
            Ok(())
        })?;
        last_applied = meta.last_log_id;
    }
    // Everything committed is replayed: the node's applied state may lag the
    // recorded commit index after a crash, and the node re-applies it too.
    let committed: Option<Option<LogId>> = get_decoded(db, CF_META, meta_key::COMMITTED)?;
    let applied: Option<AppliedState> = get_decoded(db, CF_META, meta_key::APPLIED)?;
    let target = [
        committed.flatten().map(|id| id.index),
        applied.and_then(|a| a.last_applied).map(|id| id.index),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);
    let start = last_applied.map_or(1, |id| id.index + 1);
    let mut events = 0u64;
    if target >= start {
        let mut expected = start;
        for_each_entry(db, start, target + 1, |entry| {
            let index = entry.get_log_id().index;
            if index != expected {
                let purged: Option<LogId> = get_decoded(db, CF_META, meta_key::PURGED)?;
                return Err(Error::MissingLogEntry {
                    index: expected,
                    purged: purged.map(|id| id.index),
                });
            }
            expected += 1;
            if let EntryPayload::Normal(batch) = &entry.payload {
                for event in batch.events.iter() {
                    apply(&mut ViewTxn::untracked(&mut views), event)?;
                    events += 1;
                }
            }
            last_applied = Some(*entry.get_log_id());
            Ok(())
        })?;
        if expected != target + 1 {
            return Err(Error::MissingLogEntry {
                index: expected,
                purged: None,
            });
        }
    }
    let views_digest = views.digest().to_hex();
    // Freeing millions of rows takes a noticeable part of a replay; nobody
    // waits for it.
    std::thread::spawn(move || drop(views));
    Ok(ReplayReport {
        last_applied: last_applied.map_or(0, |id| id.index),
        events,
        views_digest,
    })
}

/// Encoded bytes of log entries the reader hands over at a time.
const CHUNK_BYTES: usize = 256 * 1024;

/// Calls `apply` on each log entry with index in `[start, end)`, in order.
/// A second thread reads and decodes the next entries meanwhile, so decoding
/// overlaps applying.
fn for_each_entry(
    db: &DB,
    start: u64,
    end: u64,
    mut apply: impl FnMut(&LogEntry) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let (chunks, received) = std::sync::mpsc::sync_channel::<Result<Vec<LogEntry>>>(4);
        // Applied entries go back to the reader to be freed there, off the
        // applying thread.
        let (spent, to_free) = std::sync::mpsc::channel::<Vec<LogEntry>>();
        scope.spawn(move || {
            let read = read_entry_chunks(db, start, end, CHUNK_BYTES, |chunk| {
                to_free.try_iter().for_each(drop);
                chunks.send(Ok(chunk)).is_ok()
            });
            if let Err(e) = read {
                let _ = chunks.send(Err(e));
            }
        });
        for chunk in received {
            let chunk = chunk?;
            for entry in &chunk {
                apply(entry)?;
            }
            let _ = spent.send(chunk);
        }
        Ok(())
    })
}
