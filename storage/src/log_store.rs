//! The raft log on RocksDB: openraft's `RaftLogStorage` over the `log` and
//! `meta` column families.
//!
//! Durability: `save_vote`, `truncate` and `purge` write with a synced WAL
//! before they return. `append` writes its entries (visible at once) and
//! hands the `LogFlushed` callback to the flusher: a dedicated blocking task
//! that takes every callback waiting, syncs the WAL once, and only then
//! fires them. So nothing is acknowledged before it is on disk. (openraft's
//! core waits for each append's callback before its next one, so the group
//! commit is the proposer's: a batch of events in one entry.) An append of
//! more than [`crate::db::INLINE_EVENTS`] events, a group commit, is
//! written and synced on the raft task's own thread instead, its other
//! tasks moved away meanwhile ([`crate::db::may_wait`]): no hand-off to the
//! blocking pool, the flusher and back.
//!
//! RocksDB work that may wait never blocks the async reactor: it runs on
//! the blocking pool, or (group commits and large applies) on a worker
//! whose other tasks have been moved away first ([`crate::db::may_wait`]).
//! So a RocksDB write stall or a disk read delays the log, not the
//! heartbeats and connections sharing the reactor. Raft awaits each
//! append and apply, and a hand-off to the blocking pool and back costs
//! more than a small one, so these run inline: an append or apply of at
//! most [`crate::db::INLINE_EVENTS`] events, tried with reads from memory only and
//! writes that refuse to stall, and moved to the blocking pool only when
//! RocksDB answers that it would wait ([`crate::db::without_waiting`]);
//! the unsynced record of the committed index (a few bytes into the
//! memtable); and reads of a few entries at the tail of the log (appended
//! moments ago, still in the memtable).
//!
//! Reads of entries this process appended moments ago (raft reads each
//! committed entry back to apply it, and the leader reads entries to send
//! to followers) are answered from memory, [`RecentEntries`], without
//! decoding them again.
//!
//! The store also keeps the [`EventClock`]: the latest event time in the
//! log, which the leader stamps no earlier than.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::EntryPayload;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader, StorageIOError};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use crate::codec;
use crate::db::{
    CF_LOG, CF_META, INLINE_EVENTS, Wait, blocking, cf, get_decoded, may_wait, meta_key,
    without_waiting, write_synced,
};
use crate::error::{Error, Result};
use crate::metrics::StorageMetrics;
use crate::raft_types::TypeConfig;
use crate::raft_types::typ::{Entry, LogId, StorageError, Vote};
use crate::recent_entries::{RECENT_BYTES, RecentEntries};

/// Log keys are big-endian indexes, so key order is log order.
pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Events in `entries` (blank and membership entries hold none).
pub(crate) fn events_in(entries: &[Entry]) -> usize {
    entries
        .iter()
        .map(|entry| match &entry.payload {
            EntryPayload::Normal(batch) => batch.events.len(),
            _ => 0,
        })
        .sum()
}

/// Log entries read back at open to find the latest event time.
const CLOCK_SCAN_ENTRIES: usize = 4096;

/// Event time (unix ms): the time a leader stamps on events, and the "now"
/// timers and expiries are judged by.
///
/// It never goes back: not below the latest event time in this node's log
/// (its newest few thousand entries at open and every entry appended
/// since, whoever stamped it), so not when leadership moves to a node whose
/// wall clock is behind. Between two stamps of this node it follows the
/// wall clock only within what the monotonic clock allows: at least the
/// real time elapsed (a wall clock that jumps back does not stall timers
/// and TTLs) and at most [`MAX_CATCH_UP_RATE`] times it (a wall clock that
/// jumps forward is caught up with gradually, so TTLs do not all fire at
/// once).
#[derive(Clone, Debug, Default)]
pub struct EventClock(Arc<ClockState>);

/// How much faster than real time event time may run to catch up with a
/// wall clock that jumped forward (an hour's jump is caught up in an hour).
const MAX_CATCH_UP_RATE: u64 = 2;

#[derive(Debug, Default)]
struct ClockState {
    /// The latest event time in the log or stamped here.
    latest: AtomicU64,
    /// This node's last stamp (µs), and when (monotonic) it was made.
    last_stamp: Mutex<Option<(u64, Instant)>>,
}

impl EventClock {
    /// Event time (ms) at wall-clock time `wall_us` (unix µs), monotonic
    /// time `at`, without stamping anything.
    pub fn read(&self, wall_us: u64, at: Instant) -> u64 {
        let last = *self.last_stamp();
        self.bounded(wall_us, at, last) / 1000
    }

    /// The time (ms) to stamp on events proposed at wall-clock time
    /// `wall_us` (unix µs), monotonic time `at`; later stamps never go
    /// below it.
    pub fn stamp(&self, wall_us: u64, at: Instant) -> u64 {
        let mut last = self.last_stamp();
        let time_us = self.bounded(wall_us, at, *last);
        *last = Some((time_us, at));
        let time = time_us / 1000;
        self.0.latest.fetch_max(time, Ordering::AcqRel);
        time
    }

    fn last_stamp(&self) -> std::sync::MutexGuard<'_, Option<(u64, Instant)>> {
        self.0
            .last_stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Event time in µs (microseconds, so stamps made less than a
    /// millisecond apart still add up to the time between them).
    fn bounded(&self, wall_us: u64, at: Instant, last: Option<(u64, Instant)>) -> u64 {
        let time = match last {
            None => wall_us,
            Some((stamped, when)) => {
                let elapsed = u64::try_from(at.saturating_duration_since(when).as_micros())
                    .unwrap_or(u64::MAX);
                let earliest = stamped.saturating_add(elapsed);
                let latest = stamped.saturating_add(elapsed.saturating_mul(MAX_CATCH_UP_RATE));
                wall_us.clamp(earliest, latest)
            }
        };
        time.max(self.0.latest.load(Ordering::Acquire).saturating_mul(1000))
    }

    fn saw(&self, entry: &Entry) {
        if let EntryPayload::Normal(batch) = &entry.payload
            && let Some(latest) = batch.events.iter().map(|e| e.time_ms).max()
        {
            self.0.latest.fetch_max(latest, Ordering::AcqRel);
        }
    }
}

/// Reads of at most this many entries, ending at most this far behind the
/// newest appended, are done inline (see the module doc).
const TAIL_ENTRIES: u64 = 64;

/// Whether entries `[start, end)` are a short read at the tail of a log
/// whose newest appended entry is `newest`: entries written moments ago,
/// still in RocksDB's memtable.
fn is_tail(start: u64, end: u64, newest: u64) -> bool {
    end.saturating_sub(start) <= TAIL_ENTRIES && end.saturating_add(TAIL_ENTRIES) > newest
}

/// The raft log store; cheap to clone (all clones share the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// Callbacks of appended entries waiting for the next WAL sync.
    flusher: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
    metrics: Arc<StorageMetrics>,
    clock: EventClock,
    /// The newest entries appended, for reads that need not decode them,
    /// and the index of the newest (which decides where other reads run).
    recent: Arc<Mutex<RecentEntries>>,
}

/// The latest event time among the newest `CLOCK_SCAN_ENTRIES` entries.
fn latest_event_time(db: &DB) -> Result<EventClock> {
    let clock = EventClock::default();
    for item in db
        .iterator_cf(cf(db, CF_LOG)?, IteratorMode::End)
        .take(CLOCK_SCAN_ENTRIES)
    {
        let (key, value) = item.map_err(|e| Error::rocks("read", "log", e))?;
        let entry: Entry = codec::decode(&format!("log entry {key:?}"), &value)?;
        clock.saw(&entry);
    }
    Ok(clock)
}

/// Syncs the WAL for every group of waiting appends, then acknowledges them.
fn flush_loop(
    db: Arc<DB>,
    waiting: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>,
    metrics: Arc<StorageMetrics>,
) {
    while let Ok(first) = waiting.recv() {
        let mut group = vec![first];
        group.extend(waiting.try_iter());
        let synced = sync_wal(&db, &metrics);
        for callback in group {
            callback.log_io_completed(as_io(&synced));
        }
    }
}

/// A storage result as the `io::Result` a [`LogFlushed`] callback takes.
fn as_io(result: &Result<()>) -> std::io::Result<()> {
    result
        .as_ref()
        .map(|_| ())
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Syncs the WAL: every write before it is on disk.
fn sync_wal(db: &DB, metrics: &StorageMetrics) -> Result<()> {
    let timer = metrics.wal_fsync_seconds.start_timer();
    let synced = db
        .flush_wal(true)
        .map_err(|e| Error::rocks("sync the WAL", "after a log append", e));
    timer.observe_duration();
    synced
}

pub(crate) fn to_raft(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
) -> impl FnOnce(Error) -> StorageError {
    move |e| StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

/// Reads the entries with index in `[start, end)` from the log.
pub(crate) fn read_entries(db: &DB, start: u64, end: u64) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    read_entry_chunks(db, start, end, usize::MAX, |chunk| {
        entries = chunk;
        true
    })?;
    Ok(entries)
}

/// Reads the entries with index in `[start, end)` in order and hands them
/// to `each` in chunks of about `chunk_bytes` encoded bytes; stops early
/// when `each` answers false.
pub(crate) fn read_entry_chunks(
    db: &DB,
    start: u64,
    end: u64,
    chunk_bytes: usize,
    mut each: impl FnMut(Vec<Entry>) -> bool,
) -> Result<()> {
    let family = cf(db, CF_LOG)?;
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for item in db.iterator_cf(
        family,
        IteratorMode::From(&log_key(start), Direction::Forward),
    ) {
        let (key, value) = item.map_err(|e| Error::rocks("read", "log", e))?;
        let index = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| Error::Decode {
            what: "log key".to_string(),
            reason: format!("{} bytes, expected 8", key.len()),
        })?);
        if index >= end {
            break;
        }
        chunk.push(codec::decode(&format!("log entry {index}"), &value)?);
        bytes += value.len();
        if bytes >= chunk_bytes {
            bytes = 0;
            if !each(std::mem::take(&mut chunk)) {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        each(chunk);
    }
    Ok(())
}

/// The id of the last entry in the log, if any.
pub(crate) fn last_log_id(db: &DB) -> Result<Option<LogId>> {
    let family = cf(db, CF_LOG)?;
    match db.iterator_cf(family, IteratorMode::End).next() {
        None => Ok(None),
        Some(item) => {
            let (_, value) = item.map_err(|e| Error::rocks("read", "last log entry", e))?;
            let entry: Entry = codec::decode("last log entry", &value)?;
            Ok(Some(*entry.get_log_id()))
        }
    }
}

fn bounds(range: impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl LogStore {
    /// Opens the log store and starts its flusher (on the tokio blocking
    /// pool when in a runtime, so the runtime's shutdown waits for it).
    pub fn new(db: Arc<DB>, metrics: Arc<StorageMetrics>) -> Result<Self> {
        let clock = latest_event_time(&db)?;
        let (flusher, waiting) = std::sync::mpsc::channel();
        let flush_db = db.clone();
        let flush_metrics = metrics.clone();
        let flush = move || flush_loop(flush_db, waiting, flush_metrics);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(flush)),
            Err(_) => drop(std::thread::spawn(flush)),
        }
        Ok(LogStore {
            db,
            flusher,
            metrics,
            clock,
            recent: Arc::new(Mutex::new(RecentEntries::new(RECENT_BYTES))),
        })
    }

    /// Writes `entries` to the log, unsynced; they are readable at once.
    fn write_entries(&self, entries: &[Entry], wait: Wait) -> Result<()> {
        let started = Instant::now();
        let family = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        let mut sizes = Vec::with_capacity(entries.len());
        for entry in entries {
            let index = entry.get_log_id().index;
            let encoded = codec::encode("log entry", entry)?;
            sizes.push(encoded.len());
            batch.put_cf(family, log_key(index), encoded);
        }
        self.db
            .write_opt(batch, &wait.write_options())
            .map_err(|e| Error::rocks("write", "log append", e))?;
        let mut recent = self.recent();
        for (entry, size) in entries.iter().zip(sizes) {
            self.clock.saw(entry);
            recent.appended(entry.clone(), size);
        }
        drop(recent);
        self.metrics
            .log_entries_appended
            .inc_by(entries.len() as u64);
        self.metrics
            .log_append_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The clock of the latest event time in this log.
    pub fn event_clock(&self) -> EventClock {
        self.clock.clone()
    }

    fn put_meta_synced<T: serde::Serialize>(
        &self,
        key: &'static [u8],
        value: &T,
        sync: bool,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_META)?, key, codec::encode("meta", value)?);
        if sync {
            write_synced(&self.db, batch, "meta")
        } else {
            self.db
                .write(batch)
                .map_err(|e| Error::rocks("write", "meta", e))
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(range);
        let newest = {
            let recent = self.recent();
            if let Some(entries) = recent.get(start, end) {
                return Ok(entries);
            }
            recent.last_appended()
        };
        let db = self.db.clone();
        let read = if is_tail(start, end, newest) {
            read_entries(&db, start, end)
        } else {
            blocking(move || read_entries(&db, start, end)).await
        };
        read.map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged_log_id: Option<LogId> = get_decoded(&db, CF_META, meta_key::PURGED)?;
            let last_log_id = last_log_id(&db)?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
        .map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let store = self.clone();
        let vote = *vote;
        blocking(move || store.put_meta_synced(meta_key::VOTE, &vote, true))
            .await
            .map_err(to_raft(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let db = self.db.clone();
        blocking(move || get_decoded(&db, CF_META, meta_key::VOTE))
            .await
            .map_err(to_raft(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: after a crash openraft re-derives commitment from the
        // durable log; this record only lets a restart re-apply sooner.
        // Written inline (see the module doc): raft awaits it before every
        // apply.
        self.put_meta_synced(meta_key::COMMITTED, &committed, false)
            .map_err(to_raft(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        let committed: Option<Option<LogId>> =
            blocking(move || get_decoded(&db, CF_META, meta_key::COMMITTED))
                .await
                .map_err(to_raft(ErrorSubject::Store, ErrorVerb::Read))?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let events = events_in(&entries);
        let store = self.clone();
        // A group commit is written and synced here, then acknowledged.
        if events > INLINE_EVENTS {
            let written = may_wait(move || {
                store.write_entries(&entries, Wait::Allowed)?;
                sync_wal(&store.db, &store.metrics)
            })
            .await;
            callback.log_io_completed(as_io(&written));
            return written.map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Write));
        }
        // A small append is written (unsynced, but readable at once) here,
        // or on the blocking pool where RocksDB would wait; the flusher
        // syncs the WAL and fires the callback.
        let written =
            without_waiting(events, move |wait| store.write_entries(&entries, wait)).await;
        match &written {
            Ok(()) => {
                if let Err(unsent) = self.flusher.send(callback) {
                    unsent
                        .0
                        .log_io_completed(Err(std::io::Error::other("the log flusher stopped")));
                }
            }
            Err(_) => callback.log_io_completed(as_io(&written)),
        }
        written.map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Write))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent().truncated(log_id.index);
        let db = self.db.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf(&db, CF_LOG)?, log_key(log_id.index), log_key(u64::MAX));
            write_synced(&db, batch, "log truncate")
        })
        .await
        .map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent().purged(log_id.index);
        let db = self.db.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(
                cf(&db, CF_META)?,
                meta_key::PURGED,
                codec::encode("purged log id", &log_id)?,
            );
            batch.delete_range_cf(
                cf(&db, CF_LOG)?,
                log_key(0),
                log_key(log_id.index.saturating_add(1)),
            );
            write_synced(&db, batch, "log purge")
        })
        .await
        .map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::db::{DataDir, OpenMode};
    use crate::determinism_test::{entries, write_log};
    use crate::event::{Event, EventKind};

    fn event(time_ms: u64) -> Event {
        Event {
            time_ms,
            kind: EventKind::TimersFired { max: 1 },
        }
    }

    #[test]
    fn only_short_reads_at_the_tail_run_inline() {
        assert!(is_tail(100, 101, 100), "the entry just appended");
        assert!(is_tail(37, 101, 100), "64 entries up to the newest");
        assert!(!is_tail(36, 101, 100), "65 entries");
        assert!(!is_tail(10, 20, 100), "far behind the newest");
        assert!(!is_tail(0, u64::MAX, 100), "everything");
        assert!(is_tail(1, 2, 0), "nothing appended yet by this process");
    }

    #[tokio::test]
    async fn stamps_never_go_below_the_latest_event_in_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path(), OpenMode::ReadWrite).unwrap();
        // An earlier leader, whose clock ran an hour ahead, wrote these.
        let ahead = 1_700_000_000_000 + 3_600_000;
        write_log(
            &dir,
            &entries(&[event(ahead - 5), event(ahead), event(7)], 1),
        );
        let clock = LogStore::new(dir.db().clone(), Default::default())
            .unwrap()
            .event_clock();
        let now = 1_700_000_000_000;
        let at = Instant::now();
        assert_eq!(
            clock.stamp(now, at),
            ahead,
            "not below the log's latest event"
        );
        let later = at + std::time::Duration::from_millis(10);
        assert_eq!(
            clock.stamp(ahead + 10, later),
            ahead + 10,
            "a later clock wins"
        );
        assert_eq!(
            clock.stamp(now, later),
            ahead + 10,
            "nor below an earlier stamp"
        );
    }

    /// Stamps `wall` (ms) at `after_ms` of monotonic time past `start`.
    fn stamp_at(clock: &EventClock, start: Instant, after_ms: u64, wall: u64) -> u64 {
        clock.stamp(
            wall * 1000,
            start + std::time::Duration::from_millis(after_ms),
        )
    }

    #[test]
    fn stamps_closer_than_a_millisecond_still_keep_pace() {
        let clock = EventClock::default();
        let start = Instant::now();
        let t = 1_700_000_000_000;
        let mut stamped = 0;
        // A stamp every 0.4 ms for 20 ms.
        for step in 0..=50u64 {
            let at = start + std::time::Duration::from_micros(step * 400);
            stamped = clock.stamp(t * 1000 + step * 400, at);
        }
        assert_eq!(stamped, t + 20);
    }

    #[test]
    fn a_wall_clock_jumping_back_does_not_stop_event_time() {
        let clock = EventClock::default();
        let start = Instant::now();
        let t = 1_700_000_000_000;
        assert_eq!(stamp_at(&clock, start, 0, t), t);
        // The wall clock goes back an hour; event time keeps real pace.
        assert_eq!(
            stamp_at(&clock, start, 1_000, t + 1_000 - 3_600_000),
            t + 1_000
        );
        assert_eq!(
            stamp_at(&clock, start, 5_000, t + 5_000 - 3_600_000),
            t + 5_000
        );
        let later = start + std::time::Duration::from_millis(6_000);
        assert_eq!(
            clock.read(t + 6_000 - 3_600_000, later),
            t + 6_000,
            "reads keep real pace too"
        );
    }

    #[test]
    fn a_wall_clock_jumping_forward_is_caught_up_with_gradually() {
        let clock = EventClock::default();
        let start = Instant::now();
        let t = 1_700_000_000_000;
        let hour = 3_600_000;
        assert_eq!(stamp_at(&clock, start, 0, t), t);
        // The wall clock goes forward an hour: event time runs at most
        // twice real time until it has caught up.
        assert_eq!(stamp_at(&clock, start, 1_000, t + 1_000 + hour), t + 2_000);
        assert_eq!(stamp_at(&clock, start, 2_000, t + 2_000 + hour), t + 4_000);
        let caught_up = hour + 2_000;
        assert_eq!(
            stamp_at(&clock, start, caught_up, t + caught_up + hour),
            t + caught_up + hour
        );
        assert_eq!(
            stamp_at(&clock, start, caught_up + 5, t + caught_up + hour + 5),
            t + caught_up + hour + 5,
            "then it follows the wall clock"
        );
    }
}
