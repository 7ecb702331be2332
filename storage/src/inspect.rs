//! Read-only inspection of a data dir, for SQL: scans of the views and the
//! log on a consistent RocksDB snapshot, and the raft positions on disk.
//!
//! Scans never block the write path: they read a RocksDB snapshot taken
//! when the scan starts, so each scan sees the views exactly as one apply
//! batch left them. They work the same on a live node's database and on a
//! stopped node's dir opened read-only.

use std::path::PathBuf;
use std::sync::Arc;

use rocksdb::{DB, Direction, IteratorMode, PrefixRange, ReadOptions};
use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::codec;
use crate::db::{CF_LOG, CF_META, DataDir, cf, get_decoded, meta_key};
use crate::error::{Error, Result};
use crate::log_store::{last_log_id, log_key};
use crate::raft_types::typ::{Entry, LogId, Vote};
use crate::state_machine::{AppliedState, current_snapshot};
use crate::views::View;

/// Whether a scan goes on after a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// What one log entry holds, as [`Inspector::scan_log_shapes`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryShape {
    /// The entry a new leader commits first: no events.
    Blank,
    /// An [`crate::EventBatch`] of this many events.
    Events(usize),
    /// A membership change.
    Membership,
}

/// The front of a stored [`Entry`], in its field order: the log id, the
/// payload's variant and, for events, their number. What follows is not
/// decoded (bincode writes a sequence's length before its items).
#[derive(Deserialize)]
struct EntryHead {
    log_id: LogId,
    payload: PayloadHead,
}

/// [`openraft::EntryPayload`]'s variants, in its order.
#[derive(Deserialize)]
enum PayloadHead {
    Blank,
    Normal(BatchHead),
    Membership(Unread),
}

/// [`crate::EventBatch`]'s one field.
#[derive(Deserialize)]
struct BatchHead {
    events: Count,
}

/// The length of a sequence, its items left unread.
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Length;
        impl<'de> Visitor<'de> for Length {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of known length")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Count, A::Error> {
                seq.size_hint()
                    .map(Count)
                    .ok_or_else(|| serde::de::Error::custom("a sequence without a length"))
            }
        }
        deserializer.deserialize_seq(Length)
    }
}

/// A value left unread (the last thing in a value read by its head).
struct Unread;

impl<'de> Deserialize<'de> for Unread {
    fn deserialize<D: Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
        Ok(Unread)
    }
}

/// Raft positions as stored on disk (what a stopped node would resume from).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredRaft {
    /// Term of the last saved vote.
    pub term: u64,
    /// Index of the last entry in the log (0 when empty).
    pub last_log_index: u64,
    /// Highest index known committed (0 before the first).
    pub committed: u64,
    /// State of the views: last applied entry, digest.
    pub applied: AppliedState,
    /// Index of the last entry covered by the current snapshot, if any.
    pub snapshot_index: Option<u64>,
}

/// Read-only access to the views and the log of one database.
#[derive(Clone)]
pub struct Inspector {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
}

impl Inspector {
    /// Inspects an open data dir (live or read-only).
    pub fn new(dir: &DataDir) -> Self {
        Inspector {
            db: dir.db().clone(),
            snapshot_dir: dir.snapshot_dir(),
        }
    }

    /// Calls `row` for each row of `view` whose key starts with `prefix`, in
    /// key order, all from one snapshot, until it answers [`Flow::Stop`].
    pub fn scan_view<T: DeserializeOwned>(
        &self,
        view: View,
        prefix: &[u8],
        mut row: impl FnMut(T) -> Flow,
    ) -> Result<()> {
        self.scan_raw(view, prefix, |key, value| {
            Ok(row(codec::decode_row(view.cf_name(), key, value)?))
        })
    }

    /// Calls `key` for each key of `view` that starts with `prefix`, in key
    /// order, all from one snapshot, until it answers [`Flow::Stop`].
    pub fn scan_keys(
        &self,
        view: View,
        prefix: &[u8],
        mut key: impl FnMut(&[u8]) -> Flow,
    ) -> Result<()> {
        self.scan_raw(view, prefix, |k, _| Ok(key(k)))
    }

    /// Calls `row` with each key and value of `view` that starts with
    /// `prefix` as they lie in RocksDB (lent, not copied), in key order,
    /// all from one snapshot, until it answers [`Flow::Stop`]: for a
    /// caller that decodes rows in place ([`crate::codec::decode_row`] into
    /// a row type whose text borrows the value).
    pub fn scan_raw(
        &self,
        view: View,
        prefix: &[u8],
        mut row: impl FnMut(&[u8], &[u8]) -> Result<Flow>,
    ) -> Result<()> {
        // A dir written before this view existed, opened read-only, lacks it.
        let Some(family) = self.db.cf_handle(view.cf_name()) else {
            return Ok(());
        };
        let snapshot = self.db.snapshot();
        // RocksDB stops at the end of the prefix itself: no comparison per
        // key here (and none at all for a whole view, whose empty prefix
        // made `starts_with` a masked load from a dangling pointer, about a
        // third of a `count(*)`'s time on this machine).
        let mut options = ReadOptions::default();
        options.set_iterate_range(PrefixRange(prefix));
        // The raw iterator lends each key and value instead of copying them
        // into two new allocations per row.
        let mut iter = snapshot.raw_iterator_cf_opt(family, options);
        iter.seek(prefix);
        while let Some((key, value)) = iter.item() {
            if row(key, value)? == Flow::Stop {
                return Ok(());
            }
            iter.next();
        }
        iter.status()
            .map_err(|e| Error::rocks("scan", view.cf_name(), e))
    }

    /// [`Inspector::get`] on the blocking pool, for callers on the async
    /// reactor: a read that misses RocksDB's cache waits on the disk there,
    /// not on a reactor thread.
    pub async fn get_blocking<T: DeserializeOwned + Send + 'static>(
        &self,
        view: View,
        key: Vec<u8>,
    ) -> Result<Option<T>> {
        let inspector = self.clone();
        crate::db::blocking(move || inspector.get(view, &key)).await
    }

    /// One row of `view`, as last applied (`None` if absent).
    pub fn get<T: DeserializeOwned>(&self, view: View, key: &[u8]) -> Result<Option<T>> {
        let Some(family) = self.db.cf_handle(view.cf_name()) else {
            return Ok(None);
        };
        match self
            .db
            .get_cf(family, key)
            .map_err(|e| Error::rocks("read", view.cf_name(), e))?
        {
            Some(bytes) => Ok(Some(codec::decode_row(view.cf_name(), key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// The namespaces the cache holds entries of, in order, at most
    /// `limit`: one seek per namespace, whatever its number of entries.
    pub fn cache_namespaces(&self, limit: usize) -> Result<Vec<String>> {
        let view = View::CacheEntries;
        let Some(family) = self.db.cf_handle(view.cf_name()) else {
            return Ok(Vec::new());
        };
        let snapshot = self.db.snapshot();
        let mut namespaces = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        while namespaces.len() < limit {
            let mut iter =
                snapshot.iterator_cf(family, IteratorMode::From(&from, Direction::Forward));
            let Some(item) = iter.next() else { break };
            let (key, _) = item.map_err(|e| Error::rocks("scan", view.cf_name(), e))?;
            let end = key.iter().position(|b| *b == 0).unwrap_or(key.len());
            namespaces.push(String::from_utf8_lossy(&key[..end]).into_owned());
            // Past every key of this namespace: `namespace\0...` < `namespace\x01`.
            from = key[..end].to_vec();
            from.push(1);
        }
        Ok(namespaces)
    }

    /// The first key of `view` in key order, if it has rows.
    pub fn first_key(&self, view: View) -> Result<Option<Vec<u8>>> {
        let Some(family) = self.db.cf_handle(view.cf_name()) else {
            return Ok(None);
        };
        match self.db.iterator_cf(family, IteratorMode::Start).next() {
            Some(item) => {
                let (key, _) = item.map_err(|e| Error::rocks("scan", view.cf_name(), e))?;
                Ok(Some(key.to_vec()))
            }
            None => Ok(None),
        }
    }

    /// Calls `entry` for each log entry with index in `[from, to]`, in order,
    /// all from one snapshot, until it answers [`Flow::Stop`].
    pub fn scan_log(&self, from: u64, to: u64, mut entry: impl FnMut(Entry) -> Flow) -> Result<()> {
        self.scan_log_raw(from, to, |value| {
            let decoded: Entry = codec::decode("log entry", value)?;
            Ok(entry(decoded))
        })
    }

    /// Like [`Inspector::scan_log`], but reads only what each entry holds
    /// ([`EntryShape`]): its events are counted, not decoded.
    pub fn scan_log_shapes(
        &self,
        from: u64,
        to: u64,
        mut entry: impl FnMut(LogId, EntryShape) -> Flow,
    ) -> Result<()> {
        self.scan_log_raw(from, to, |value| {
            let head: EntryHead = codec::decode_head("log entry", value)?;
            let shape = match head.payload {
                PayloadHead::Blank => EntryShape::Blank,
                PayloadHead::Normal(batch) => EntryShape::Events(batch.events.0),
                PayloadHead::Membership(_) => EntryShape::Membership,
            };
            Ok(entry(head.log_id, shape))
        })
    }

    /// Calls `entry` with each stored log entry (lent, not copied) with
    /// index in `[from, to]`, in order, all from one snapshot, until it
    /// answers [`Flow::Stop`].
    fn scan_log_raw(
        &self,
        from: u64,
        to: u64,
        mut entry: impl FnMut(&[u8]) -> Result<Flow>,
    ) -> Result<()> {
        let snapshot = self.db.snapshot();
        let family = cf(&self.db, CF_LOG)?;
        let last = log_key(to);
        let mut iter = snapshot.raw_iterator_cf(family);
        iter.seek(log_key(from));
        while let Some((key, value)) = iter.item() {
            if key > last.as_slice() || entry(value)? == Flow::Stop {
                return Ok(());
            }
            iter.next();
        }
        iter.status().map_err(|e| Error::rocks("scan", "log", e))
    }

    /// Bytes of the raft log in SST files and memtables (RocksDB's figures;
    /// the WAL, shared by every family, is not counted).
    pub fn log_bytes(&self) -> Result<u64> {
        let family = cf(&self.db, CF_LOG)?;
        let mut total = 0u64;
        for property in [
            "rocksdb.total-sst-files-size",
            "rocksdb.size-all-mem-tables",
        ] {
            let value = self
                .db
                .property_int_value_cf(family, property)
                .map_err(|e| Error::rocks("read property", property, e))?;
            total = total.saturating_add(value.unwrap_or(0));
        }
        Ok(total)
    }

    /// The raft positions stored on disk.
    pub fn stored_raft(&self) -> Result<StoredRaft> {
        let db = &self.db;
        let vote: Option<Vote> = get_decoded(db, CF_META, meta_key::VOTE)?;
        let committed: Option<Option<LogId>> = get_decoded(db, CF_META, meta_key::COMMITTED)?;
        let applied: Option<AppliedState> = get_decoded(db, CF_META, meta_key::APPLIED)?;
        let purged: Option<LogId> = get_decoded(db, CF_META, meta_key::PURGED)?;
        let snapshot = current_snapshot(db, &self.snapshot_dir)?;
        let last = last_log_id(db)?.or(purged);
        Ok(StoredRaft {
            term: vote.map_or(0, |v| v.leader_id.term),
            last_log_index: last.map_or(0, |id| id.index),
            committed: committed.flatten().map_or(0, |id| id.index),
            applied: applied.unwrap_or_default(),
            snapshot_index: snapshot.and_then(|(meta, _)| meta.last_log_id.map(|id| id.index)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, EntryPayload, Membership};

    use super::*;
    use crate::determinism_test::write_log;
    use crate::event::{Event, EventKind};
    use crate::raft_types::typ::Node;
    use crate::{EventBatch, OpenMode};

    fn entry(index: u64, payload: EntryPayload<crate::TypeConfig>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
            payload,
        }
    }

    fn batch(events: usize) -> EntryPayload<crate::TypeConfig> {
        let events = (0..events)
            .map(|i| Event {
                time_ms: i as u64,
                kind: EventKind::NodeLeft {
                    node_id: format!("n{i}"),
                },
            })
            .collect();
        EntryPayload::Normal(EventBatch { events })
    }

    #[test]
    fn log_shapes_count_the_events_of_each_entry_without_decoding_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path(), OpenMode::ReadWrite).unwrap();
        let members = BTreeMap::from([(1, Node::new("ws://127.0.0.1:1"))]);
        let membership = Membership::new(vec![BTreeSet::from([1])], members);
        let entries = vec![
            entry(1, EntryPayload::Blank),
            entry(2, EntryPayload::Membership(membership)),
            entry(3, batch(0)),
            entry(4, batch(1)),
            entry(5, batch(300)),
            entry(6, batch(7)),
        ];
        write_log(&dir, &entries);
        let inspector = Inspector::new(&dir);
        let mut shapes = Vec::new();
        inspector
            .scan_log_shapes(2, 5, |log_id, shape| {
                assert_eq!(log_id.leader_id.term, 3);
                shapes.push((log_id.index, shape));
                Flow::Continue
            })
            .unwrap();
        assert_eq!(
            shapes,
            [
                (2, EntryShape::Membership),
                (3, EntryShape::Events(0)),
                (4, EntryShape::Events(1)),
                (5, EntryShape::Events(300)),
            ]
        );
        let mut decoded = Vec::new();
        inspector
            .scan_log(1, 6, |entry| {
                decoded.push(entry);
                Flow::Continue
            })
            .unwrap();
        assert_eq!(decoded, entries);
    }
}
