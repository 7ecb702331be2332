//! The reference model of the cache: every stored entry by key, written
//! from the cache semantics (not from `views::cache`), and the outcome it
//! expects of each event.

use std::collections::BTreeMap;

use serde_json::{Number, Value};

use crate::event::{AtomicOp, CacheKey, EventKind, FiredTimers, Outcome};

/// One stored entry (live or expired but not yet removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) value: String,
    pub(super) tags: Vec<String>,
    pub(super) metadata: String,
    pub(super) created_at_ms: u64,
    pub(super) updated_at_ms: u64,
    pub(super) expires_at_ms: Option<u64>,
    pub(super) revision: u64,
}

impl Entry {
    fn is_live(&self, now: u64) -> bool {
        match self.expires_at_ms {
            None => true,
            Some(at) => at > now,
        }
    }

    pub(super) fn json(&self) -> Value {
        serde_json::from_str(&self.value).expect("stored values are JSON")
    }
}

fn refused() -> Outcome {
    Outcome::Rejected {
        reason: String::new(),
    }
}

fn cache(changed: bool, entry: Option<&Entry>) -> Outcome {
    Outcome::Cache {
        changed,
        value: entry.map(|e| e.value.clone()),
        revision: entry.map_or(0, |e| e.revision),
    }
}

fn json(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok()
}

/// A JSON number as an exact integer, if it is one.
fn integer(v: &Value) -> Option<i128> {
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
}

/// `a + b`: exact while both are integers (refused when the sum fits
/// neither i64 nor u64), else as floats (refused when not finite); `None`
/// unless both are numbers.
fn sum(a: &Value, b: &Value) -> Option<Value> {
    if let (Some(x), Some(y)) = (integer(a), integer(b)) {
        let s = x + y;
        return match (i64::try_from(s), u64::try_from(s)) {
            (Ok(i), _) => Some(Value::from(i)),
            (_, Ok(u)) => Some(Value::from(u)),
            _ => None,
        };
    }
    let (x, y) = (a.as_f64()?, b.as_f64()?);
    Number::from_f64(x + y).map(Value::Number)
}

fn valid_key(key: &CacheKey) -> bool {
    !key.namespace.is_empty()
        && !key.identifier.is_empty()
        && !format!("{}{}{}", key.namespace, key.identifier, key.version).contains('\0')
}

/// AMQP topic match over dot-separated levels: `*` is one level, `#` zero
/// or more.
fn amqp_matches(pattern: &str, identifier: &str) -> bool {
    fn go(p: &[&str], t: &[&str]) -> bool {
        match (p.first(), t.first()) {
            (None, _) => t.is_empty(),
            (Some(&"#"), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(_), None) => false,
            (Some(&"*"), Some(_)) => go(&p[1..], &t[1..]),
            (Some(level), Some(word)) => level == word && go(&p[1..], &t[1..]),
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = identifier.split('.').collect();
    go(&p, &t)
}

/// The cache: every stored entry by key. Timers are derived from the
/// entries' expiry times, not stored.
#[derive(Default)]
pub(super) struct Model {
    pub(super) entries: BTreeMap<CacheKey, Entry>,
}

impl Model {
    pub(super) fn live(&self, now: u64, key: &CacheKey) -> Option<&Entry> {
        self.entries.get(key).filter(|e| e.is_live(now))
    }

    /// The expected outcome; `Rejected` carries no reason.
    pub(super) fn apply(&mut self, now: u64, kind: &EventKind) -> Outcome {
        match kind {
            EventKind::CachePut {
                key,
                value,
                tags,
                metadata,
                ttl_ms,
            } => {
                if !valid_key(key) || json(value).is_none() || json(metadata).is_none() {
                    return refused();
                }
                let expires = ttl_ms.map(|ttl| now + ttl);
                let attributes = (tags.clone(), metadata.clone());
                self.write(now, key, value.clone(), attributes, expires)
            }
            EventKind::CacheDeleted { key } => {
                let removed = self.entries.remove(key);
                cache(removed.is_some_and(|e| e.is_live(now)), None)
            }
            EventKind::CacheInvalidated { namespace, pattern } => {
                if namespace.is_empty() || namespace.contains('\0') {
                    return refused();
                }
                let mut entries = 0;
                self.entries.retain(|key, e| {
                    let hit = key.namespace == *namespace
                        && pattern
                            .as_deref()
                            .is_none_or(|p| amqp_matches(p, &key.identifier));
                    if hit && e.is_live(now) {
                        entries += 1;
                    }
                    !hit
                });
                Outcome::CacheRemoved { entries }
            }
            EventKind::CacheAtomic { key, operation } => self.atomic(now, key, operation),
            EventKind::TimersFired { max } => self.fire_timers(now, *max),
            other => panic!("not a cache event: {other:?}"),
        }
    }

    /// Writes a new value of `key`, replacing the live entry if any.
    fn write(
        &mut self,
        now: u64,
        key: &CacheKey,
        value: String,
        (tags, metadata): (Vec<String>, String),
        expires_at_ms: Option<u64>,
    ) -> Outcome {
        let previous = self.live(now, key);
        let entry = Entry {
            value,
            tags,
            metadata,
            created_at_ms: previous.map_or(now, |p| p.created_at_ms),
            updated_at_ms: now,
            expires_at_ms,
            revision: previous.map_or(1, |p| p.revision + 1),
        };
        let outcome = cache(true, Some(&entry));
        self.entries.insert(key.clone(), entry);
        outcome
    }

    fn atomic(&mut self, now: u64, key: &CacheKey, operation: &AtomicOp) -> Outcome {
        if !valid_key(key) {
            return refused();
        }
        let current = self.live(now, key).cloned();
        let current_json = current.as_ref().map(Entry::json);
        let tags = current.as_ref().map_or_else(
            || (Vec::new(), "null".to_string()),
            |c| (c.tags.clone(), c.metadata.clone()),
        );
        let expiry = |ttl_ms: Option<u64>| match ttl_ms {
            Some(ttl) => Some(now + ttl),
            None => current.as_ref().and_then(|c| c.expires_at_ms),
        };
        let unchanged = cache(false, current.as_ref());
        match operation {
            AtomicOp::CompareAndSwap {
                expected,
                new_value,
                ttl_ms,
            } => {
                let expected = match expected.as_deref().map(json) {
                    Some(None) => return refused(),
                    Some(Some(v)) => Some(v),
                    None => None,
                };
                if json(new_value).is_none() {
                    return refused();
                }
                if expected != current_json {
                    return unchanged;
                }
                self.write(now, key, new_value.clone(), tags, expiry(*ttl_ms))
            }
            AtomicOp::Increment {
                by,
                initial,
                ttl_ms,
            } => {
                let (Some(by), Some(initial)) = (json(by), json(initial)) else {
                    return refused();
                };
                let base = current_json.unwrap_or(initial);
                match sum(&base, &by) {
                    Some(total) => self.write(now, key, total.to_string(), tags, expiry(*ttl_ms)),
                    None => refused(),
                }
            }
            AtomicOp::Append {
                value,
                prepend,
                ttl_ms,
            } => {
                let Some(item) = json(value) else {
                    return refused();
                };
                let joined = match (current_json, item) {
                    (None, Value::String(s)) => Value::String(s),
                    (None, item) => Value::Array(vec![item]),
                    (Some(Value::String(old)), Value::String(s)) if *prepend => {
                        Value::String(format!("{s}{old}"))
                    }
                    (Some(Value::String(old)), Value::String(s)) => {
                        Value::String(format!("{old}{s}"))
                    }
                    (Some(Value::Array(mut items)), item) => {
                        if *prepend {
                            items.insert(0, item);
                        } else {
                            items.push(item);
                        }
                        Value::Array(items)
                    }
                    (Some(_), _) => return refused(),
                };
                self.write(now, key, joined.to_string(), tags, expiry(*ttl_ms))
            }
            AtomicOp::ExtendTtl { ttl_ms } => match current {
                None => unchanged,
                Some(c) => self.write(now, key, c.value, tags, Some(now + ttl_ms)),
            },
        }
    }

    /// Every pending expiry, in firing order.
    pub(super) fn timers(&self) -> Vec<(u64, CacheKey)> {
        let mut out: Vec<(u64, CacheKey)> = self
            .entries
            .iter()
            .filter_map(|(key, e)| e.expires_at_ms.map(|at| (at, key.clone())))
            .collect();
        out.sort();
        out
    }

    fn fire_timers(&mut self, now: u64, max: u32) -> Outcome {
        let due: Vec<CacheKey> = self
            .timers()
            .into_iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, key)| key)
            .collect();
        let firing = due.len().min(max as usize);
        for key in &due[..firing] {
            self.entries.remove(key);
        }
        Outcome::TimersFired(FiredTimers {
            cache_expired: firing as u64,
            more_due: due.len() > firing,
            ..FiredTimers::default()
        })
    }
}

/// Whether apply's outcome is the one the model expects (a refusal's
/// reason is not compared).
pub(super) fn agrees(expected: &Outcome, actual: &Outcome) -> bool {
    match (expected, actual) {
        (Outcome::Rejected { .. }, Outcome::Rejected { .. }) => true,
        (e, a) => e == a,
    }
}
