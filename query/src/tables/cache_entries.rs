//! The `cache_entries` table: one row per stored cache entry, from the
//! `cache_entries` view, expired ones included until their timer removes
//! them. `namespace = '...'` narrows the scan to that namespace's prefix;
//! with it, `identifier = '...'` to that key's versions, and with both,
//! `version = '...'` is a point read.
//!
//! Columns: `namespace`, `identifier`, `version` (nullable: the key has
//! none), `tags` (list), `size_bytes`, `revision`, `created_at`,
//! `updated_at`, `expires_at` (nullable), `hits`, `tier` (`memory` or
//! `disk`).
//!
//! `hits` and `tier` are the live half: whether an entry is in the node's
//! memory tier and its hits there. The running cache answers
//! ([`CacheTierSource`] implemented by the daemon); a stopped node has no
//! memory tier ([`StoppedCacheTier`]).

use datafusion::error::{DataFusionError, Result};
use mpreg_storage::event::CacheKey;
use mpreg_storage::views::{CacheRow, View};
use mpreg_storage::{Flow, Inspector};

use super::{Narrowing, per_value, scan_keys_as_rows, scan_rows, storage};
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

/// One row per stored entry, expired ones included until their timer
/// removes them. `hits` and `tier` come from the node's memory tier when
/// the row is read ([`CacheTierSource`]).
pub(super) const COLUMNS: &[Column] = &[
    Column::new("namespace", Kind::Text),
    Column::new("identifier", Kind::Text),
    Column::nullable("version", Kind::Text),
    Column::new("tags", Kind::TextList),
    Column::new("size_bytes", Kind::U64),
    Column::new("revision", Kind::U64),
    Column::new("created_at", Kind::Time),
    Column::new("updated_at", Kind::Time),
    Column::nullable("expires_at", Kind::Time),
    Column::new("hits", Kind::U64),
    Column::new("tier", Kind::Text),
];

/// The key columns, outermost first: each narrows the scan once those
/// before it are fixed.
pub(super) const KEYS: &[&str] = &["namespace", "identifier", "version"];

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

/// Positions in [`COLUMNS`] of the columns the memory tier answers.
const TIER_COLUMNS: [usize; 2] = [9, 10];

pub(super) fn produce(
    inspector: &Inspector,
    tier: &dyn CacheTierSource,
    narrowing: &Narrowing,
    sink: &mut RowSink,
) -> Result<()> {
    // A query of key columns only (e.g. `GROUP BY namespace`) reads keys,
    // not rows; one without `hits` and `tier` does not ask the memory tier.
    let keys_only = !sink.reads_any(KEYS.len()..COLUMNS.len());
    let tier = if sink.reads_any(TIER_COLUMNS) {
        tier
    } else {
        &StoppedCacheTier
    };
    let push = |sink: &mut RowSink, r: CacheRow| push_entry(tier, sink, &r);
    let scan = |prefix: &[u8], sink: &mut RowSink| {
        if keys_only {
            scan_keys_as_rows(inspector, View::CacheEntries, prefix, sink, push_key)
        } else {
            scan_rows(inspector, View::CacheEntries, prefix, sink, push)
        }
    };
    per_value(narrowing, "namespace", sink, |namespace, sink| {
        let Some(namespace) = namespace else {
            return scan(b"", sink);
        };
        per_value(narrowing, "identifier", sink, |identifier, sink| {
            let Some(identifier) = identifier else {
                return scan(&CacheRow::namespace_prefix(namespace), sink);
            };
            per_value(narrowing, "version", sink, |version, sink| {
                let key = CacheKey {
                    namespace: namespace.to_string(),
                    identifier: identifier.to_string(),
                    version: version.unwrap_or_default().to_string(),
                };
                let Some(version) = version else {
                    return scan(&CacheRow::identifier_prefix(&key), sink);
                };
                if version.is_empty() {
                    // A key without a version shows NULL, which equals nothing.
                    return Ok(());
                }
                let row = inspector
                    .get::<CacheRow>(View::CacheEntries, &CacheRow::key(&key))
                    .map_err(storage)?;
                match row {
                    Some(row) => push(sink, row).map(|_| ()),
                    None => Ok(()),
                }
            })
        })
    })
}

/// The key columns of the entry stored under `key` (namespace,
/// identifier and version, `\0`-separated); the other columns are not read.
fn push_key(sink: &mut RowSink, key: &[u8]) -> Result<Flow> {
    let malformed = || {
        DataFusionError::Internal(format!(
            "malformed cache_entries key {}",
            key.escape_ascii()
        ))
    };
    let text = std::str::from_utf8(key).map_err(|_| malformed())?;
    let mut parts = text.split('\0');
    let (Some(namespace), Some(identifier), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let mut values: [Value<'_>; COLUMNS.len()] = std::array::from_fn(|_| Value::Null);
    values[0] = Value::Text(namespace);
    values[1] = Value::Text(identifier);
    if !version.is_empty() {
        values[2] = Value::Text(version);
    }
    sink.push(&values)
}

fn push_entry(tier: &dyn CacheTierSource, sink: &mut RowSink, r: &CacheRow) -> Result<Flow> {
    let memory_hits = tier.memory_hits(&r.key);
    let version = &r.key.version;
    sink.push(&[
        Value::Text(&r.key.namespace),
        Value::Text(&r.key.identifier),
        if version.is_empty() {
            Value::Null
        } else {
            Value::Text(version)
        },
        Value::TextList(&r.tags),
        Value::U64(u64::try_from(r.size_bytes()).unwrap_or(u64::MAX)),
        Value::U64(r.revision),
        Value::Time(r.created_at_ms),
        Value::Time(r.updated_at_ms),
        r.expires_at_ms.map_or(Value::Null, Value::Time),
        Value::U64(memory_hits.unwrap_or(0)),
        Value::Text(if memory_hits.is_some() {
            "memory"
        } else {
            "disk"
        }),
    ])
}
