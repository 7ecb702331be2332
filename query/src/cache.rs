//! The live half of the `cache_entries` table: whether an entry is in the
//! node's memory tier and its hits there. The running cache answers
//! ([`CacheTierSource`] implemented by the daemon); a stopped node has no
//! memory tier ([`StoppedCacheTier`]).

use mpreg_storage::event::CacheKey;

/// Tells, per entry, what the memory tier holds when a query reads it.
pub trait CacheTierSource: Send + Sync {
    /// Hits of `key` while in the memory tier; `None` when it is not there.
    fn memory_hits(&self, key: &CacheKey) -> Option<u64>;
}

/// The memory tier of a stopped node: empty, so every entry is `disk`.
pub struct StoppedCacheTier;

impl CacheTierSource for StoppedCacheTier {
    fn memory_hits(&self, _key: &CacheKey) -> Option<u64> {
        None
    }
}
