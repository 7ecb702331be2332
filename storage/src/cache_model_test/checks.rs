//! Reading the views back: the stored `cache_entries` rows and
//! `CacheExpires` timers must equal what the model holds.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::model::Model;
use crate::event::CacheKey;
use crate::replay::MemViews;
use crate::test_views::{all_keys, all_rows};
use crate::views::{CacheRow, Timer, TimerKind, View};

/// The `queue_timers` key of the expiry of `key` at `due_ms`, built from
/// the documented layout (`queue` = namespace, `target` = identifier NUL
/// version).
fn expiry_timer_key(due_ms: u64, key: &CacheKey) -> Vec<u8> {
    Timer {
        due_ms,
        kind: TimerKind::CacheExpires,
        queue: key.namespace.clone(),
        target: format!("{}\0{}", key.identifier, key.version).into_bytes(),
    }
    .key()
}

/// Every cache row and timer equals what the model holds.
pub(super) fn check_views(
    views: &MemViews,
    model: &Model,
) -> std::result::Result<(), TestCaseError> {
    let rows: BTreeMap<Vec<u8>, CacheRow> =
        all_rows(views, View::CacheEntries).into_iter().collect();
    let expected: BTreeMap<Vec<u8>, CacheRow> = model
        .entries
        .iter()
        .map(|(key, e)| {
            let row = CacheRow {
                key: key.clone(),
                value: e.value.clone(),
                tags: e.tags.clone(),
                metadata: e.metadata.clone(),
                created_at_ms: e.created_at_ms,
                updated_at_ms: e.updated_at_ms,
                expires_at_ms: e.expires_at_ms,
                revision: e.revision,
            };
            (CacheRow::key(key), row)
        })
        .collect();
    prop_assert_eq!(rows, expected, "cache rows");

    let timers: BTreeSet<Vec<u8>> = model
        .timers()
        .iter()
        .map(|(at, key)| expiry_timer_key(*at, key))
        .collect();
    prop_assert_eq!(all_keys(views, View::QueueTimers), timers, "timers");
    Ok(())
}
