//! The in-memory tier of the cache: committed rows under a byte budget,
//! evicted by S4LRU.
//!
//! Four segments of a quarter of the budget each. A new entry enters
//! segment 0; a hit moves it to the head of the next segment up (3 at
//! most). A segment over its share pushes its least recently used entry to
//! the head of the segment below; segment 0 evicts. Eviction only drops the
//! memory copy: the row stays in RocksDB and is loaded again on demand.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mpreg_storage::views::CacheRow;

const SEGMENTS: usize = 4;

struct Slot {
    row: Arc<CacheRow>,
    segment: usize,
    stamp: u64,
    size: usize,
    hits: u64,
}

/// What a lookup found.
pub struct Hit {
    pub row: Arc<CacheRow>,
    /// Hits of this entry while in memory, this one included.
    pub hits: u64,
}

/// The memory tier; callers hold it behind a mutex.
pub struct Tier {
    segment_budget: usize,
    entries: HashMap<Vec<u8>, Slot>,
    /// Per segment: stamp → key, oldest first.
    order: [BTreeMap<u64, Vec<u8>>; SEGMENTS],
    bytes: [usize; SEGMENTS],
    clock: u64,
    evictions: u64,
}

/// Memory one entry is charged for: its key and value.
fn charge(key: &[u8], row: &CacheRow) -> usize {
    key.len() + row.size_bytes() + 64
}

impl Tier {
    pub fn new(budget_bytes: usize) -> Tier {
        Tier {
            segment_budget: budget_bytes / SEGMENTS,
            entries: HashMap::new(),
            order: Default::default(),
            bytes: [0; SEGMENTS],
            clock: 0,
            evictions: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The entry under `key`, promoted one segment.
    pub fn get(&mut self, key: &[u8]) -> Option<Hit> {
        let stamp = self.tick();
        let slot = self.entries.get_mut(key)?;
        slot.hits += 1;
        let (from, old_stamp, size) = (slot.segment, slot.stamp, slot.size);
        let to = (from + 1).min(SEGMENTS - 1);
        slot.segment = to;
        slot.stamp = stamp;
        let hit = Hit {
            row: slot.row.clone(),
            hits: slot.hits,
        };
        self.order[from].remove(&old_stamp);
        self.bytes[from] -= size;
        self.order[to].insert(stamp, key.to_vec());
        self.bytes[to] += size;
        self.rebalance(to);
        Some(hit)
    }

    /// Hits of an entry in memory (0 when it is not).
    pub fn hits(&self, key: &[u8]) -> Option<u64> {
        self.entries.get(key).map(|s| s.hits)
    }

    /// Caches a committed row in segment 0; too large rows are not kept.
    pub fn insert(&mut self, key: Vec<u8>, row: Arc<CacheRow>) {
        self.remove(&key);
        let size = charge(&key, &row);
        if size > self.segment_budget {
            return;
        }
        let stamp = self.tick();
        self.order[0].insert(stamp, key.clone());
        self.bytes[0] += size;
        self.entries.insert(
            key,
            Slot {
                row,
                segment: 0,
                stamp,
                size,
                hits: 0,
            },
        );
        self.rebalance(0);
    }

    pub fn remove(&mut self, key: &[u8]) {
        if let Some(slot) = self.entries.remove(key) {
            self.order[slot.segment].remove(&slot.stamp);
            self.bytes[slot.segment] -= slot.size;
        }
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        for (order, bytes) in self.order.iter_mut().zip(self.bytes.iter_mut()) {
            order.clear();
            *bytes = 0;
        }
    }

    /// Drops every entry whose key starts with `prefix`.
    pub fn remove_prefix(&mut self, prefix: &[u8]) {
        let keys: Vec<Vec<u8>> = self
            .entries
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for key in keys {
            self.remove(&key);
        }
    }

    /// Pushes the oldest entries of over-full segments down, evicting from
    /// segment 0.
    fn rebalance(&mut self, top: usize) {
        for segment in (0..=top).rev() {
            while self.bytes[segment] > self.segment_budget {
                let Some((_, key)) = self.order[segment].pop_first() else {
                    break;
                };
                let Some(size) = self.entries.get(&key).map(|s| s.size) else {
                    continue;
                };
                self.bytes[segment] -= size;
                if segment == 0 {
                    self.entries.remove(&key);
                    self.evictions += 1;
                } else {
                    let stamp = self.tick();
                    if let Some(slot) = self.entries.get_mut(&key) {
                        slot.segment = segment - 1;
                        slot.stamp = stamp;
                    }
                    self.order[segment - 1].insert(stamp, key);
                    self.bytes[segment - 1] += size;
                }
            }
        }
    }

    /// Bytes charged for the entries in memory.
    pub fn bytes(&self) -> usize {
        self.bytes.iter().sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod test {
    use mpreg_storage::event::CacheKey;

    use super::*;

    fn row(id: &str, bytes: usize) -> Arc<CacheRow> {
        Arc::new(CacheRow {
            key: CacheKey {
                namespace: "n".into(),
                identifier: id.into(),
                version: String::new(),
            },
            value: "x".repeat(bytes),
            tags: Vec::new(),
            metadata: "null".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            expires_at_ms: None,
            revision: 1,
        })
    }

    #[test]
    fn stays_within_budget_and_keeps_hot_entries() {
        // Each entry is charged 1 + 100 + 64 bytes; a segment holds 4.
        let mut tier = Tier::new(4 * 4 * 165);
        tier.insert(b"hot".to_vec(), row("hot", 100));
        for _ in 0..3 {
            assert!(tier.get(b"hot").is_some());
        }
        for i in 0..100u32 {
            let key = format!("k{i}").into_bytes();
            tier.insert(key, row("k", 100));
        }
        assert!(tier.bytes() <= 4 * 4 * 165, "{} bytes", tier.bytes());
        assert!(tier.get(b"hot").is_some(), "a hot entry survives a scan");
        assert!(tier.get(b"k0").is_none(), "cold entries are evicted");
        assert!(tier.evictions() > 80);
    }

    #[test]
    fn oversized_rows_are_not_kept_and_removal_frees_bytes() {
        let mut tier = Tier::new(1000);
        tier.insert(b"big".to_vec(), row("big", 1000));
        assert!(tier.get(b"big").is_none());
        tier.insert(b"a".to_vec(), row("a", 10));
        assert_eq!(tier.len(), 1);
        tier.remove_prefix(b"a");
        assert_eq!((tier.len(), tier.bytes()), (0, 0));
    }
}
