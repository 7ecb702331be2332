//! The entries this process appended last, kept in memory so raft reads
//! them back (to apply them, to replicate them) as clones instead of
//! decoding them from RocksDB again. An entry's events are shared
//! ([`crate::EventBatch`]), so a clone copies no event.
//!
//! It mirrors the tail of the log: an append adds to it, a truncate and a
//! purge remove from it what they remove from the log, and it holds the
//! newest entries whose encoded size fits its budget. A read it cannot
//! answer whole goes to RocksDB.

use std::collections::VecDeque;

use openraft::RaftLogId;

use crate::raft_types::typ::Entry;

/// Encoded bytes of entries kept: the last few hundred group commits.
pub(crate) const RECENT_BYTES: usize = 8 << 20;

/// Consecutive log entries, the newest ones appended, within a byte budget.
pub(crate) struct RecentEntries {
    /// Entries with consecutive indexes, oldest first, with their encoded size.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
    budget: usize,
    /// Index of the newest entry appended (0 before one), kept when the
    /// entry itself no longer fits the budget.
    last_appended: u64,
}

fn index(entry: &Entry) -> u64 {
    entry.get_log_id().index
}

impl RecentEntries {
    pub(crate) fn new(budget: usize) -> Self {
        RecentEntries {
            entries: VecDeque::new(),
            bytes: 0,
            budget,
            last_appended: 0,
        }
    }

    fn newest(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| index(entry))
    }

    fn oldest(&self) -> Option<u64> {
        self.entries.front().map(|(entry, _)| index(entry))
    }

    /// `entry`, of `size` encoded bytes, was written to the log. An entry
    /// at or below the newest replaces it and what follows (the log was
    /// overwritten there); one that leaves a gap starts afresh.
    pub(crate) fn appended(&mut self, entry: Entry, size: usize) {
        let at = index(&entry);
        self.last_appended = at;
        self.truncated(at);
        if self.newest().is_some_and(|newest| newest + 1 != at) {
            self.entries.clear();
            self.bytes = 0;
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.bytes > self.budget {
            match self.entries.pop_front() {
                Some((_, size)) => self.bytes -= size,
                None => break,
            }
        }
    }

    /// The log lost its entries from index `from` on.
    pub(crate) fn truncated(&mut self, from: u64) {
        while self.newest().is_some_and(|newest| newest >= from) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// The log lost its entries up to index `upto`, included.
    pub(crate) fn purged(&mut self, upto: u64) {
        while self.oldest().is_some_and(|oldest| oldest <= upto) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// Index of the newest entry appended by this process, 0 before one.
    pub(crate) fn last_appended(&self) -> u64 {
        self.last_appended
    }

    /// The entries with index in `[start, end)`, if every one is here.
    pub(crate) fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let (oldest, newest) = (self.oldest()?, self.newest()?);
        if start >= end || start < oldest || end > newest + 1 {
            return None;
        }
        let from = usize::try_from(start - oldest).ok()?;
        let to = usize::try_from(end - oldest).ok()?;
        Some(
            self.entries
                .range(from..to)
                .map(|(entry, _)| entry.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod test {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    fn entry(term: u64, at: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), at),
            payload: EntryPayload::Blank,
        }
    }

    fn ids(entries: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        entries.map(|entries| {
            entries
                .iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect()
        })
    }

    #[test]
    fn answers_only_ranges_it_holds_whole() {
        let mut recent = RecentEntries::new(100);
        assert_eq!(ids(recent.get(1, 2)), None, "empty");
        assert_eq!(recent.last_appended(), 0, "nothing appended yet");
        for at in 5..=9 {
            recent.appended(entry(1, at), 10);
        }
        assert_eq!(ids(recent.get(6, 8)), Some(vec![(1, 6), (1, 7)]));
        assert_eq!(ids(recent.get(5, 10)).map(|v| v.len()), Some(5));
        assert_eq!(ids(recent.get(4, 6)), None, "starts before the oldest");
        assert_eq!(ids(recent.get(9, 11)), None, "ends past the newest");
        assert_eq!(ids(recent.get(7, 7)), None, "empty range");
        assert_eq!(ids(recent.get(7, u64::MAX)), None, "unbounded");
    }

    #[test]
    fn keeps_the_newest_within_its_budget() {
        let mut recent = RecentEntries::new(25);
        for at in 1..=5 {
            recent.appended(entry(1, at), 10);
        }
        assert_eq!(ids(recent.get(4, 6)), Some(vec![(1, 4), (1, 5)]));
        assert_eq!(ids(recent.get(3, 4)), None, "evicted");
        assert_eq!(recent.last_appended(), 5);
        recent.appended(entry(1, 6), 100);
        assert_eq!(ids(recent.get(6, 7)), None, "larger than the budget");
        assert_eq!(recent.last_appended(), 6, "known though not kept");
        recent.appended(entry(1, 7), 10);
        assert_eq!(ids(recent.get(7, 8)), Some(vec![(1, 7)]), "after a gap");
    }

    #[test]
    fn follows_truncates_overwrites_and_purges() {
        let mut recent = RecentEntries::new(1000);
        for at in 1..=6 {
            recent.appended(entry(1, at), 10);
        }
        recent.truncated(5);
        assert_eq!(ids(recent.get(4, 6)), None, "5 is gone");
        recent.appended(entry(2, 4), 10);
        assert_eq!(
            ids(recent.get(1, 5)),
            Some(vec![(1, 1), (1, 2), (1, 3), (2, 4)]),
            "a new leader's entry replaces the old one at 4"
        );
        recent.purged(2);
        assert_eq!(ids(recent.get(2, 4)), None, "2 was purged");
        assert_eq!(ids(recent.get(3, 5)), Some(vec![(1, 3), (2, 4)]));
        recent.appended(entry(2, 9), 10);
        assert_eq!(ids(recent.get(9, 10)), Some(vec![(2, 9)]));
        assert_eq!(ids(recent.get(3, 4)), None, "cleared by the gap");
    }
}
