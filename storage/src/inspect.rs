//! Read-only inspection of a data dir, for SQL: scans of the views and the
//! log on a consistent RocksDB snapshot, and the raft positions on disk.
//!
//! Scans never block the write path: they read a RocksDB snapshot taken
//! when the scan starts, so each scan sees the views exactly as one apply
//! batch left them. They work the same on a live node's database and on a
//! stopped node's dir opened read-only.

use std::path::PathBuf;
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, DB, Direction, IterateBounds, IteratorMode, PrefixRange, ReadOptions,
    SnapshotWithThreadMode,
};
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

/// What one log entry holds, as [`LogScan::shapes`] reads it.
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
        row: impl FnMut(&[u8], &[u8]) -> Result<Flow>,
    ) -> Result<()> {
        match self.view_scan(view) {
            Some(scan) => scan.range(&KeyRange::prefix(prefix), row),
            // A dir written before this view existed, opened read-only, lacks it.
            None => Ok(()),
        }
    }

    /// `view` as it is now, for scans of key ranges that all see the same
    /// rows, from any number of threads; `None` if the database lacks the
    /// view (a dir written before it existed, opened read-only).
    pub fn view_scan(&self, view: View) -> Option<SnapshotScan<'_>> {
        let family = self.db.cf_handle(view.cf_name())?;
        Some(SnapshotScan {
            db: &self.db,
            family,
            snapshot: self.db.snapshot(),
            name: view.cf_name(),
            fill_cache: true,
        })
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

    /// The raft log as it is now, for scans of index ranges that all see
    /// the same entries, from any number of threads.
    pub fn log_scan(&self) -> Result<LogScan<'_>> {
        Ok(LogScan(SnapshotScan {
            db: &self.db,
            family: cf(&self.db, CF_LOG)?,
            snapshot: self.db.snapshot(),
            name: CF_LOG,
            fill_cache: true,
        }))
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

/// Keys from `lower` (included) up to `upper` (excluded; `None`: to the
/// last key).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    pub lower: Vec<u8>,
    pub upper: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        let (lower, upper) = PrefixRange(prefix).into_bounds();
        KeyRange {
            lower: lower.unwrap_or_default(),
            upper,
        }
    }

    /// This range cut in two at `key`: the keys below it, and the others.
    fn split_at(&self, key: Vec<u8>) -> (KeyRange, KeyRange) {
        let below = KeyRange {
            lower: self.lower.clone(),
            upper: Some(key.clone()),
        };
        let rest = KeyRange {
            lower: key,
            upper: self.upper.clone(),
        };
        (below, rest)
    }

    fn read_options(&self, fill_cache: bool) -> ReadOptions {
        let mut options = ReadOptions::default();
        options.fill_cache(fill_cache);
        options.set_iterate_lower_bound(self.lower.clone());
        if let Some(upper) = &self.upper {
            options.set_iterate_upper_bound(upper.clone());
        }
        options
    }
}

/// One column family (a view, or the log) at one RocksDB snapshot
/// ([`Inspector::view_scan`], [`Inspector::log_scan`]): every scan of it
/// sees the same rows, whichever thread runs it.
pub struct SnapshotScan<'a> {
    db: &'a DB,
    family: &'a ColumnFamily,
    snapshot: SnapshotWithThreadMode<'a, DB>,
    /// The family's name, for errors.
    name: &'static str,
    /// Whether blocks read go into RocksDB's block cache ([`Self::bulk`]).
    fill_cache: bool,
}

impl SnapshotScan<'_> {
    /// This scan as one of a whole table: the blocks it reads do not go
    /// into RocksDB's block cache, so it does not evict the rows that
    /// writes and point reads use (RocksDB's advice for bulk scans).
    pub fn bulk(mut self) -> Self {
        self.fill_cache = false;
        self
    }

    /// Calls `row` with each key and value in `range` as they lie in
    /// RocksDB (lent, not copied), in key order, until it answers
    /// [`Flow::Stop`].
    pub fn range(
        &self,
        range: &KeyRange,
        mut row: impl FnMut(&[u8], &[u8]) -> Result<Flow>,
    ) -> Result<()> {
        // RocksDB stops at the end of the range itself: no comparison per
        // key here (for a whole view, `key.starts_with(b"")` was a masked
        // load from a dangling pointer, a third of a `count(*)`'s time).
        let mut iter = self
            .snapshot
            .raw_iterator_cf_opt(self.family, range.read_options(self.fill_cache));
        iter.seek(&range.lower);
        while let Some((key, value)) = iter.item() {
            if row(key, value)? == Flow::Stop {
                return Ok(());
            }
            iter.next();
        }
        iter.status()
            .map_err(|e| Error::rocks("scan", self.name, e))
    }

    /// `range` cut in two parts of about the same size on disk (RocksDB's
    /// estimate from its SST files; rows still in memtables are not
    /// counted), each holding at least one key, for two threads to scan;
    /// `None` when the range holds less than `min_bytes` on disk or fewer
    /// than two keys.
    pub fn halves(&self, range: &KeyRange, min_bytes: u64) -> Result<Option<(KeyRange, KeyRange)>> {
        let (Some(first), Some(last)) = (self.end_key(range, true)?, self.end_key(range, false)?)
        else {
            return Ok(None);
        };
        if first >= last {
            return Ok(None);
        }
        let size = |to: &[u8]| {
            let range = rocksdb::Range::new(&first, to);
            self.db.get_approximate_sizes_cf(self.family, &[range])[0]
        };
        let mut past_last = last.clone();
        past_last.push(0);
        let total = size(&past_last);
        if total < min_bytes {
            return Ok(None);
        }
        // Bisect between the first and the last key: `high` stays above
        // `first` and at most `last`, so both parts keep a key.
        let (mut low, mut high) = (first.clone(), last);
        for _ in 0..MAX_BISECTIONS {
            let middle = midpoint(&low, &high);
            if middle <= low || middle >= high {
                break;
            }
            if size(&middle) < total / 2 {
                low = middle;
            } else {
                high = middle;
            }
        }
        Ok(Some(range.split_at(high)))
    }

    /// The first (or last) key in `range`, if it holds any.
    fn end_key(&self, range: &KeyRange, first: bool) -> Result<Option<Vec<u8>>> {
        let mut iter = self
            .snapshot
            .raw_iterator_cf_opt(self.family, range.read_options(self.fill_cache));
        if first {
            iter.seek_to_first();
        } else {
            iter.seek_to_last();
        }
        iter.status()
            .map_err(|e| Error::rocks("scan", self.name, e))?;
        Ok(iter.key().map(<[u8]>::to_vec))
    }
}

/// Steps of [`SnapshotScan::halves`]' bisection: each halves the distance
/// between two keys, so this many reach any split a key of 8 bytes can make.
const MAX_BISECTIONS: usize = 64;

/// The byte string halfway between `a` and `b`, both read as big-endian
/// numbers of one byte more than the longer has (so the middle of two
/// neighbours still lies between them).
fn midpoint(a: &[u8], b: &[u8]) -> Vec<u8> {
    let width = a.len().max(b.len()) + 1;
    let byte = |s: &[u8], i: usize| u16::from(s.get(i).copied().unwrap_or(0));
    let mut sum = vec![0u16; width];
    let mut carry = 0;
    for i in (0..width).rev() {
        let total = byte(a, i) + byte(b, i) + carry;
        sum[i] = total & 0xff;
        carry = total >> 8;
    }
    let mut remainder = carry;
    sum.iter()
        .map(|&digit| {
            let value = (remainder << 8) | digit;
            remainder = value & 1;
            u8::try_from(value >> 1).unwrap_or(u8::MAX)
        })
        .collect()
}

/// The raft log at one snapshot ([`Inspector::log_scan`]).
pub struct LogScan<'a>(SnapshotScan<'a>);

impl LogScan<'_> {
    /// This scan as one of the whole log ([`SnapshotScan::bulk`]).
    pub fn bulk(self) -> Self {
        LogScan(self.0.bulk())
    }

    /// Calls `entry` for each log entry with index in `[from, to]`, in
    /// order, until it answers [`Flow::Stop`].
    pub fn entries(&self, from: u64, to: u64, mut entry: impl FnMut(Entry) -> Flow) -> Result<()> {
        self.raw(from, to, |value| {
            let decoded: Entry = codec::decode("log entry", value)?;
            Ok(entry(decoded))
        })
    }

    /// Like [`LogScan::entries`], but reads only what each entry holds
    /// ([`EntryShape`]): its events are counted, not decoded.
    pub fn shapes(
        &self,
        from: u64,
        to: u64,
        mut entry: impl FnMut(LogId, EntryShape) -> Flow,
    ) -> Result<()> {
        self.raw(from, to, |value| {
            let head: EntryHead = codec::decode_head("log entry", value)?;
            let shape = match head.payload {
                PayloadHead::Blank => EntryShape::Blank,
                PayloadHead::Normal(batch) => EntryShape::Events(batch.events.0),
                PayloadHead::Membership(_) => EntryShape::Membership,
            };
            Ok(entry(head.log_id, shape))
        })
    }

    /// The index that cuts the entries in `[from, to]` in two parts of
    /// about the same size on disk (the upper part starts at it), each
    /// holding an entry; `None` when they take less than `min_bytes` on
    /// disk or are fewer than two (see [`SnapshotScan::halves`]).
    pub fn halves(&self, from: u64, to: u64, min_bytes: u64) -> Result<Option<u64>> {
        let Some((_, upper)) = self.0.halves(&Self::range(from, to), min_bytes)? else {
            return Ok(None);
        };
        // The first entry at or above the cut, whose index is the cut's
        // first 8 bytes (or one more when the cut lies between two keys).
        let mut first = None;
        self.0.range(&upper, |key, _| {
            first = key.try_into().ok().map(u64::from_be_bytes);
            Ok(Flow::Stop)
        })?;
        Ok(first)
    }

    fn range(from: u64, to: u64) -> KeyRange {
        KeyRange {
            lower: log_key(from).to_vec(),
            upper: to.checked_add(1).map(|past| log_key(past).to_vec()),
        }
    }

    /// Calls `entry` with each stored log entry (lent, not copied) with
    /// index in `[from, to]`, in order, until it answers [`Flow::Stop`].
    fn raw(&self, from: u64, to: u64, mut entry: impl FnMut(&[u8]) -> Result<Flow>) -> Result<()> {
        self.0
            .range(&Self::range(from, to), |_, value| entry(value))
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
            .collect::<Vec<_>>();
        EntryPayload::Normal(EventBatch {
            events: events.into(),
        })
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
        let log = inspector.log_scan().unwrap();
        let mut shapes = Vec::new();
        log.shapes(2, 5, |log_id, shape| {
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
        log.entries(1, 6, |entry| {
            decoded.push(entry);
            Flow::Continue
        })
        .unwrap();
        assert_eq!(decoded, entries);
    }

    #[test]
    fn halves_of_a_large_log_cut_it_between_two_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path(), OpenMode::ReadWrite).unwrap();
        let entries: Vec<Entry> = (1..=2_000).map(|i| entry(i, batch(20))).collect();
        write_log(&dir, &entries);
        let db = dir.db();
        db.flush_cf(cf(db, CF_LOG).unwrap()).unwrap();
        let inspector = Inspector::new(&dir);
        let log = inspector.log_scan().unwrap();
        let cut = log.halves(1, u64::MAX, 64 << 10).unwrap().unwrap();
        assert!((600..=1_400).contains(&cut), "cut at {cut}");
        let cut = log.halves(1_500, 1_501, 0).unwrap();
        assert_eq!(cut, Some(1_501), "two entries are cut between them");
        assert_eq!(log.halves(1_500, 1_500, 0).unwrap(), None, "one entry");
        assert_eq!(
            log.halves(1, u64::MAX, 64 << 20).unwrap(),
            None,
            "too small"
        );
    }

    /// A fresh data dir whose `view` holds `keys` (each value 64 bytes),
    /// flushed to SST files so RocksDB can estimate their size.
    fn dir_with_keys(view: View, keys: &BTreeSet<Vec<u8>>) -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path(), OpenMode::ReadWrite).unwrap();
        let db = dir.db();
        let family = db.cf_handle(view.cf_name()).unwrap();
        for key in keys {
            db.put_cf(family, key, [7u8; 64]).unwrap();
        }
        db.flush_cf(family).unwrap();
        (tmp, dir)
    }

    fn keys_in(scan: &SnapshotScan<'_>, range: &KeyRange) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        scan.range(range, |key, _| {
            keys.push(key.to_vec());
            Ok(Flow::Continue)
        })
        .unwrap();
        keys
    }

    #[test]
    fn the_middle_of_two_keys_lies_between_them() {
        assert_eq!(midpoint(b"a", b"c"), b"b\0");
        assert_eq!(midpoint(b"a", b"b"), b"a\x80");
        assert_eq!(midpoint(&[0xff], &[0xff, 0xff]), [0xff, 0x7f, 0x80]);
        assert_eq!(midpoint(b"", &[2]), [1, 0]);
    }

    #[test]
    fn halves_of_a_large_view_are_about_equal() {
        let keys: BTreeSet<Vec<u8>> = (0..20_000u32)
            .map(|i| format!("ns\0k{i}\0").into_bytes())
            .collect();
        let (_tmp, dir) = dir_with_keys(View::CacheEntries, &keys);
        let inspector = Inspector::new(&dir);
        let scan = inspector.view_scan(View::CacheEntries).unwrap();
        let whole = KeyRange::prefix(b"");
        let (first, second) = scan.halves(&whole, 64 << 10).unwrap().unwrap();
        let (a, b) = (keys_in(&scan, &first), keys_in(&scan, &second));
        assert!(
            (6_000..=14_000).contains(&a.len()),
            "{} and {} keys",
            a.len(),
            b.len()
        );
        assert_eq!([a, b].concat(), keys.iter().cloned().collect::<Vec<_>>());
        assert_eq!(
            scan.halves(&whole, 64 << 20).unwrap(),
            None,
            "too small to split"
        );
        let one_key = KeyRange::prefix(b"ns\0k7\0");
        assert_eq!(scan.halves(&one_key, 0).unwrap(), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever the keys, the two halves of a range hold each of its
        /// keys once, in order, and at least one each.
        #[test]
        fn halves_hold_every_key_of_the_range_once(
            keys in proptest::collection::btree_set(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..6), 2..200),
            prefix in proptest::collection::vec(0u8..3, 0..2),
        ) {
            let (_tmp, dir) = dir_with_keys(View::Routes, &keys);
            let inspector = Inspector::new(&dir);
            let scan = inspector.view_scan(View::Routes).unwrap();
            let range = KeyRange::prefix(&prefix);
            let all = keys_in(&scan, &range);
            let expected: Vec<Vec<u8>> =
                keys.iter().filter(|k| k.starts_with(&prefix)).cloned().collect();
            proptest::prop_assert_eq!(&all, &expected);
            match scan.halves(&range, 0).unwrap() {
                Some((first, second)) => {
                    let (a, b) = (keys_in(&scan, &first), keys_in(&scan, &second));
                    proptest::prop_assert!(!a.is_empty() && !b.is_empty());
                    proptest::prop_assert_eq!([a, b].concat(), all);
                }
                None => proptest::prop_assert!(all.len() < 2),
            }
        }
    }
}
