//! The replicated cache view and its apply: put, delete, invalidate,
//! atomic operations and TTL expiry.
//!
//! `cache_entries` holds one [`CacheRow`] per key, keyed (namespace,
//! identifier, version). An entry with a TTL also has a `CacheExpires`
//! timer in `queue_timers`; it fires through `TimersFired` (see
//! [`super::timers`], which calls [`expire`]). An entry whose
//! expiry time has passed counts as absent for every operation even before
//! its timer fires, so the outcome never depends on when the leader noticed.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::queue_rows::{Timer, TimerKind};
use super::txn::{RowStore, ViewTxn, check_ids, check_step_limit, rejected, stepped};
use super::{View, row_key};
use crate::error::Result;
use crate::event::{AtomicOp, CacheKey, EventKind, Outcome};
use crate::topic::pattern_matches;

/// Rows read per scan step of an invalidation.
const SCAN_CHUNK: usize = 256;

/// `cache_entries` view row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRow {
    pub key: CacheKey,
    /// JSON text.
    pub value: String,
    pub tags: Vec<String>,
    /// JSON text (`null` when the entry was created by an atomic operation).
    pub metadata: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// 1 when created, +1 per change.
    pub revision: u64,
}

impl CacheRow {
    pub fn key(key: &CacheKey) -> Vec<u8> {
        row_key(&[&key.namespace, &key.identifier, &key.version])
    }

    /// Key prefix of every entry of a namespace.
    pub fn namespace_prefix(namespace: &str) -> Vec<u8> {
        let mut prefix = row_key(&[namespace]);
        prefix.push(0);
        prefix
    }

    /// Key prefix of every version of `key`'s namespace and identifier.
    pub fn identifier_prefix(key: &CacheKey) -> Vec<u8> {
        let mut prefix = row_key(&[&key.namespace, &key.identifier]);
        prefix.push(0);
        prefix
    }

    /// Whether the entry is still live at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }

    pub fn size_bytes(&self) -> usize {
        self.value.len()
    }
}

fn expiry_timer(key: &CacheKey, due_ms: u64) -> Timer {
    let mut target = key.identifier.as_bytes().to_vec();
    target.push(0);
    target.extend_from_slice(key.version.as_bytes());
    Timer {
        due_ms,
        kind: TimerKind::CacheExpires,
        queue: key.namespace.clone(),
        target,
    }
}

/// The key a `CacheExpires` timer points at.
fn timer_key(timer: &Timer) -> Option<CacheKey> {
    let nul = timer.target.iter().position(|b| *b == 0)?;
    Some(CacheKey {
        namespace: timer.queue.clone(),
        identifier: String::from_utf8(timer.target[..nul].to_vec()).ok()?,
        version: String::from_utf8(timer.target[nul + 1..].to_vec()).ok()?,
    })
}

fn check_key(key: &CacheKey) -> Option<Outcome> {
    check_ids(&[
        ("namespace", &key.namespace),
        ("identifier", &key.identifier),
    ])
    .or_else(|| {
        key.version
            .contains('\0')
            .then(|| rejected("version must not contain NUL"))
    })
}

/// The stored row of `key`, live or expired.
fn stored<S: RowStore>(txn: &ViewTxn<'_, S>, key: &CacheKey) -> Result<Option<CacheRow>> {
    txn.get(View::CacheEntries, &CacheRow::key(key))
}

/// Deletes the stored row of `key` (live or not) and its timer.
fn remove<S: RowStore>(txn: &mut ViewTxn<'_, S>, key: &CacheKey) -> Result<Option<CacheRow>> {
    let stored: Option<CacheRow> = txn.get(View::CacheEntries, &CacheRow::key(key))?;
    if let Some(row) = &stored {
        if let Some(at) = row.expires_at_ms {
            txn.delete(View::QueueTimers, expiry_timer(key, at).key())?;
        }
        txn.delete(View::CacheEntries, CacheRow::key(key))?;
    }
    Ok(stored)
}

/// Writes `value` under `key`; `stored` is the row it replaces (live or
/// expired: only a live one passes on its creation time and revision).
fn write<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    key: &CacheKey,
    value: String,
    (tags, metadata): (Vec<String>, String),
    expires_at_ms: Option<u64>,
    stored: Option<&CacheRow>,
) -> Result<Outcome> {
    if let Some(at) = stored.and_then(|row| row.expires_at_ms) {
        txn.delete(View::QueueTimers, expiry_timer(key, at).key())?;
    }
    let previous = stored.filter(|row| row.is_live(now));
    let row = CacheRow {
        key: key.clone(),
        value,
        tags,
        metadata,
        created_at_ms: previous.map_or(now, |p| p.created_at_ms),
        updated_at_ms: now,
        expires_at_ms,
        revision: previous.map_or(1, |p| p.revision + 1),
    };
    if let Some(at) = expires_at_ms {
        txn.put(View::QueueTimers, expiry_timer(key, at).key(), &())?;
    }
    txn.put(View::CacheEntries, CacheRow::key(key), &row)?;
    Ok(Outcome::Cache {
        changed: true,
        value: Some(row.value),
        revision: row.revision,
    })
}

fn parse(what: &str, text: &str) -> std::result::Result<Value, Outcome> {
    serde_json::from_str(text).map_err(|e| not_json(what, e))
}

/// Refuses `text` unless it is JSON, without building the value.
fn check_json(what: &str, text: &str) -> Option<Outcome> {
    serde_json::from_str::<IgnoredAny>(text)
        .err()
        .map(|e| not_json(what, e))
}

fn not_json(what: &str, error: serde_json::Error) -> Outcome {
    rejected(format!("{what} is not JSON: {error}"))
}

pub(super) fn put<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    key: &CacheKey,
    value: &str,
    (tags, metadata): (&[String], &str),
    ttl_ms: Option<u64>,
) -> Result<Outcome> {
    if let Some(refused) = check_key(key) {
        return Ok(refused);
    }
    if let Some(refused) = check_json("value", value).or_else(|| check_json("metadata", metadata)) {
        return Ok(refused);
    }
    let stored = stored(txn, key)?;
    let expires = ttl_ms.map(|ttl| now.saturating_add(ttl));
    write(
        txn,
        now,
        key,
        value.to_string(),
        (tags.to_vec(), metadata.to_string()),
        expires,
        stored.as_ref(),
    )
}

pub(super) fn delete<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    key: &CacheKey,
) -> Result<Outcome> {
    let existed = remove(txn, key)?.is_some_and(|row| row.is_live(now));
    Ok(Outcome::Cache {
        changed: existed,
        value: None,
        revision: 0,
    })
}

pub(super) fn invalidate<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    namespace: &str,
    pattern: Option<&str>,
) -> Result<Outcome> {
    if let Some(refused) = check_ids(&[("namespace", namespace)]) {
        return Ok(refused);
    }
    let prefix = CacheRow::namespace_prefix(namespace);
    let mut from = prefix.clone();
    let mut entries = 0;
    loop {
        let rows = txn.rows::<CacheRow>(View::CacheEntries, &prefix, &from, SCAN_CHUNK)?;
        let Some((last, _)) = rows.last() else { break };
        from = last.clone();
        from.push(0);
        for (_, row) in rows {
            if pattern.is_none_or(|p| pattern_matches(p, &row.key.identifier)) {
                if row.is_live(now) {
                    entries += 1;
                }
                remove(txn, &row.key)?;
            }
        }
    }
    Ok(Outcome::CacheRemoved { entries })
}

/// One step of an invalidation (see [`EventKind::CacheInvalidateStep`]).
pub(super) fn invalidate_step<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    (namespace, pattern): (&str, Option<&str>),
    from: &[u8],
    limit: u32,
) -> Result<Outcome> {
    if let Some(refused) = check_ids(&[("namespace", namespace)]).or(check_step_limit(limit)) {
        return Ok(refused);
    }
    let prefix = CacheRow::namespace_prefix(namespace);
    let start = [prefix.as_slice(), from].concat();
    let rows = txn.rows::<CacheRow>(View::CacheEntries, &prefix, &start, limit as usize + 1)?;
    let mut entries = 0;
    for (scanned, (key, row)) in rows.into_iter().enumerate() {
        if scanned == limit as usize {
            let next = EventKind::CacheInvalidateStep {
                namespace: namespace.to_string(),
                pattern: pattern.map(str::to_string),
                from: key[prefix.len()..].to_vec(),
                limit,
            };
            return Ok(stepped(entries, Some(next)));
        }
        if pattern.is_none_or(|p| pattern_matches(p, &row.key.identifier)) {
            if row.is_live(now) {
                entries += 1;
            }
            remove(txn, &row.key)?;
        }
    }
    Ok(stepped(entries, None))
}

/// A JSON number as an exact integer, if it is one (serde_json holds
/// integers as i64 or, above i64::MAX, as u64).
fn integer(v: &Value) -> Option<i128> {
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
}

/// `a + b` as JSON: an exact integer while both are integers (`None` when
/// the sum fits neither i64 nor u64), else a float.
fn add(a: &Value, b: &Value) -> Option<Value> {
    if let (Some(x), Some(y)) = (integer(a), integer(b)) {
        let sum = x + y;
        return match (i64::try_from(sum), u64::try_from(sum)) {
            (Ok(i), _) => Some(Value::from(i)),
            (_, Ok(u)) => Some(Value::from(u)),
            _ => None,
        };
    }
    let sum = a.as_f64()? + b.as_f64()?;
    serde_json::Number::from_f64(sum).map(Value::Number)
}

pub(super) fn atomic<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    key: &CacheKey,
    operation: &AtomicOp,
) -> Result<Outcome> {
    if let Some(refused) = check_key(key) {
        return Ok(refused);
    }
    let stored = stored(txn, key)?;
    let current = stored.as_ref().filter(|row| row.is_live(now));
    // Atomic writes keep the entry's tags and metadata.
    let attributes = current.map_or_else(
        || (Vec::new(), "null".to_string()),
        |c| (c.tags.clone(), c.metadata.clone()),
    );
    let expiry = |ttl_ms: Option<u64>| match ttl_ms {
        Some(ttl) => Some(now.saturating_add(ttl)),
        None => current.and_then(|c| c.expires_at_ms),
    };
    let current_value = match current.map(|c| parse("stored value", &c.value)) {
        Some(Err(refused)) => return Ok(refused),
        Some(Ok(v)) => Some(v),
        None => None,
    };
    let unchanged = || Outcome::Cache {
        changed: false,
        value: current.map(|c| c.value.clone()),
        revision: current.map_or(0, |c| c.revision),
    };
    let new_value = match operation {
        AtomicOp::CompareAndSwap {
            expected,
            new_value,
            ttl_ms,
        } => {
            let expected = match expected.as_deref().map(|e| parse("expected_value", e)) {
                Some(Err(refused)) => return Ok(refused),
                Some(Ok(v)) => Some(v),
                None => None,
            };
            if let Some(refused) = check_json("new_value", new_value) {
                return Ok(refused);
            }
            if expected != current_value {
                return Ok(unchanged());
            }
            return write(
                txn,
                now,
                key,
                new_value.clone(),
                attributes,
                expiry(*ttl_ms),
                stored.as_ref(),
            );
        }
        AtomicOp::Increment {
            by,
            initial,
            ttl_ms,
        } => {
            let (by, initial) = match (parse("increment_by", by), parse("initial_value", initial)) {
                (Ok(by), Ok(initial)) => (by, initial),
                (Err(refused), _) | (_, Err(refused)) => return Ok(refused),
            };
            let base = current_value.unwrap_or(initial);
            let Some(sum) = add(&base, &by) else {
                return Ok(rejected(format!(
                    "cannot increment {base} by {by}: both must be numbers (and the sum must fit)"
                )));
            };
            (sum, *ttl_ms)
        }
        AtomicOp::Append {
            value,
            prepend,
            ttl_ms,
        } => {
            let value = match parse("new_value", value) {
                Ok(v) => v,
                Err(refused) => return Ok(refused),
            };
            let joined = match (current_value, value) {
                (None, Value::String(s)) => Value::String(s),
                (None, other) => Value::Array(vec![other]),
                (Some(Value::String(old)), Value::String(s)) => {
                    Value::String(if *prepend { s + &old } else { old + &s })
                }
                (Some(Value::Array(mut items)), other) => {
                    if *prepend {
                        items.insert(0, other);
                    } else {
                        items.push(other);
                    }
                    Value::Array(items)
                }
                (Some(old), other) => {
                    return Ok(rejected(format!(
                        "cannot append {other} to {old}: the value must be a string (with a string) or a list"
                    )));
                }
            };
            (joined, *ttl_ms)
        }
        AtomicOp::ExtendTtl { ttl_ms } => {
            let Some(row) = current else {
                return Ok(unchanged());
            };
            return write(
                txn,
                now,
                key,
                row.value.clone(),
                attributes,
                Some(now.saturating_add(*ttl_ms)),
                stored.as_ref(),
            );
        }
    };
    let (value, ttl_ms) = new_value;
    write(
        txn,
        now,
        key,
        value.to_string(),
        attributes,
        expiry(ttl_ms),
        stored.as_ref(),
    )
}

/// Fires a `CacheExpires` timer (already deleted): removes the entry if
/// the timer is still its expiry. Returns whether it did.
pub(super) fn expire<S: RowStore>(txn: &mut ViewTxn<'_, S>, timer: &Timer) -> Result<bool> {
    let Some(key) = timer_key(timer) else {
        return Ok(false);
    };
    let stored: Option<CacheRow> = txn.get(View::CacheEntries, &CacheRow::key(&key))?;
    if stored.is_some_and(|row| row.expires_at_ms == Some(timer.due_ms)) {
        txn.delete(View::CacheEntries, CacheRow::key(&key))?;
        return Ok(true);
    }
    Ok(false)
}
