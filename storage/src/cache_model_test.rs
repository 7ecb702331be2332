//! Model test of the cache view: random cache events applied through
//! [`apply`] on [`MemViews`] must agree, event by event, with a small
//! in-memory model written from the cache semantics (not from
//! `views::cache`), and the stored `cache_entries` rows and `CacheExpires`
//! timers must equal what the model holds after every event. Unit tests pin
//! single behaviours.
//!
//! Where the semantics leave a choice open, the model pins the choice apply
//! makes, so changing it is deliberate: atomic operations keep the live
//! entry's tags (none when they create it); put and compare-and-swap store
//! the JSON text as given, increment and append store serde_json's compact
//! text; JSON values are equal as serde_json values (`1` is not `1.0`,
//! object key order and whitespace do not matter); malformed JSON in any
//! input is refused even where it would not be used; integers are
//! serde_json's (the i64 and u64 ranges), added exactly, and a sum outside
//! both is refused; a float sum must be finite; a TTL of 0 writes an entry
//! that is already expired. Timers fire in key order (due, namespace,
//! identifier, version).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{Number, Value};

use crate::codec;
use crate::event::{AtomicOp, CacheKey, EventKind, FiredTimers, Outcome};
use crate::replay::MemViews;
use crate::test_views::{AppliedViews, all_keys, all_rows};
use crate::views::{CacheRow, RowStore, Timer, TimerKind, View};

// ---------------------------------------------------------------- model

/// One stored entry (live or expired but not yet removed).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    value: String,
    tags: Vec<String>,
    metadata: String,
    created_at_ms: u64,
    updated_at_ms: u64,
    expires_at_ms: Option<u64>,
    revision: u64,
}

impl Entry {
    fn is_live(&self, now: u64) -> bool {
        match self.expires_at_ms {
            None => true,
            Some(at) => at > now,
        }
    }

    fn json(&self) -> Value {
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
struct Model {
    entries: BTreeMap<CacheKey, Entry>,
}

impl Model {
    fn live(&self, now: u64, key: &CacheKey) -> Option<&Entry> {
        self.entries.get(key).filter(|e| e.is_live(now))
    }

    /// The expected outcome; `Rejected` carries no reason.
    fn apply(&mut self, now: u64, kind: &EventKind) -> Outcome {
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
    fn timers(&self) -> Vec<(u64, CacheKey)> {
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
fn agrees(expected: &Outcome, actual: &Outcome) -> bool {
    match (expected, actual) {
        (Outcome::Rejected { .. }, Outcome::Rejected { .. }) => true,
        (e, a) => e == a,
    }
}

// ------------------------------------------------------ reading the views

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
fn check_views(views: &MemViews, model: &Model) -> std::result::Result<(), TestCaseError> {
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

// -------------------------------------------------------------- harness

impl AppliedViews {
    /// The stored row of `key`, live or not.
    fn entry(&self, key: &CacheKey) -> Option<CacheRow> {
        let bytes = self
            .store
            .get(View::CacheEntries, &CacheRow::key(key))
            .unwrap();
        bytes.map(|b| codec::decode("cache entry", &b).unwrap())
    }

    /// Every timer, in key order.
    fn timers(&self) -> Vec<Timer> {
        all_keys(&self.store, View::QueueTimers)
            .iter()
            .map(|k| Timer::from_key(k).expect("a timer key"))
            .collect()
    }
}

// ------------------------------------------------------------ generator

const NAMESPACES: [&str; 2] = ["n0", "n1"];
const IDENTIFIERS: [&str; 4] = ["a", "a.b", "b.c", "a.b.c"];
const VERSIONS: [&str; 2] = ["", "v1"];
const PATTERNS: [&str; 10] = [
    "a", "a.*", "*", "#", "a.#", "*.c", "#.c", "b.*", "*.b.#", "x",
];

/// Values that meet each other often: numbers at the i64/u64 edges,
/// integral and fractional floats, strings, lists, objects in two
/// formattings, and scalars that nothing appends or adds to.
const VALUES: [&str; 27] = [
    "0",
    "1",
    "-1",
    "2.5",
    "1.0",
    "-0.5",
    "1e308",
    "9223372036854775807",
    "9223372036854775806",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775807",
    "18446744073709551615",
    "18446744073709551614",
    "\"x\"",
    "\"yz\"",
    "\"\"",
    "[]",
    "[1]",
    "[\"x\", 2]",
    "{}",
    "{\"k\": 1}",
    "{\"a\":1,\"b\":[true,null]}",
    "{ \"b\": [true, null],\n \"a\": 1 }",
    "null",
    "true",
    " 7 ",
];

/// Increments: small, at the edges, fractional, huge, and non-numbers.
const STEPS: [&str; 13] = [
    "1",
    "-1",
    "2",
    "0.5",
    "-2.5",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "18446744073709551615",
    "1e308",
    "\"1\"",
    "null",
    "[1]",
];

/// Initial values of an increment (used only when the entry is missing).
const INITIALS: [&str; 7] = [
    "0",
    "10",
    "1.5",
    "-9223372036854775808",
    "9223372036854775807",
    "18446744073709551615",
    "\"s\"",
];

/// A JSON input: from [`VALUES`], random, or malformed.
#[derive(Clone, Debug)]
enum Json {
    Pool(usize),
    Random(String),
    Malformed,
}

impl Json {
    fn text(&self) -> String {
        match self {
            Json::Pool(i) => VALUES[*i].to_string(),
            Json::Random(text) => text.clone(),
            Json::Malformed => "{\"k\":".to_string(),
        }
    }
}

/// What a compare-and-swap expects: no entry, the live value's text, the
/// live value reformatted, or some other value.
#[derive(Clone, Debug)]
enum Expect {
    Absent,
    Current,
    Reformatted,
    Other(Json),
}

#[derive(Clone, Copy, Debug)]
struct KeySpec {
    namespace: usize,
    identifier: usize,
    version: usize,
}

impl KeySpec {
    fn key(self) -> CacheKey {
        CacheKey {
            namespace: NAMESPACES[self.namespace].to_string(),
            identifier: IDENTIFIERS[self.identifier].to_string(),
            version: VERSIONS[self.version].to_string(),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: KeySpec,
        value: Json,
        tags: usize,
        ttl_ms: Option<u64>,
    },
    Delete {
        key: KeySpec,
    },
    Invalidate {
        namespace: usize,
        pattern: Option<usize>,
    },
    Cas {
        key: KeySpec,
        expected: Expect,
        new_value: Json,
        ttl_ms: Option<u64>,
    },
    Increment {
        key: KeySpec,
        by: usize,
        initial: usize,
        ttl_ms: Option<u64>,
    },
    Append {
        key: KeySpec,
        value: Json,
        prepend: bool,
        ttl_ms: Option<u64>,
    },
    ExtendTtl {
        key: KeySpec,
        ttl_ms: u64,
    },
    Timers {
        max: u32,
    },
}

/// A duration of `n` ticks of 5 ms: times and expiries in coarse steps
/// meet exactly often, so boundaries (`<` vs `<=`) are hit.
fn ticks(n: std::ops::Range<u64>) -> impl Strategy<Value = u64> {
    n.prop_map(|n| n * 5)
}

fn ttl() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![2 => Just(None), 1 => ticks(0..16).prop_map(Some)]
}

/// TTL of an atomic operation: mostly `None` (keeps the entry's expiry).
fn atomic_ttl() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![3 => Just(None), 1 => ticks(0..16).prop_map(Some)]
}

fn key_spec() -> impl Strategy<Value = KeySpec> {
    (
        prop_oneof![3 => Just(0usize), 1 => Just(1usize)],
        0..IDENTIFIERS.len(),
        0..VERSIONS.len(),
    )
        .prop_map(|(namespace, identifier, version)| KeySpec {
            namespace,
            identifier,
            version,
        })
}

/// A random JSON value: numbers (including the i64/u64 edges), strings,
/// lists and objects, nested a little.
fn random_value() -> impl Strategy<Value = Value> {
    let edge = i64::MAX as u64;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (i64::MAX - 2..=i64::MAX).prop_map(Value::from),
        (i64::MIN..=i64::MIN + 2).prop_map(Value::from),
        (edge - 1..=edge + 2).prop_map(Value::from),
        (u64::MAX - 2..=u64::MAX).prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-c]{0,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map("[a-c]", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_input() -> impl Strategy<Value = Json> {
    prop_oneof![
        6 => (0..VALUES.len()).prop_map(Json::Pool),
        3 => (random_value(), any::<bool>()).prop_map(|(v, pretty)| {
            Json::Random(if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                v.to_string()
            })
        }),
        1 => Just(Json::Malformed),
    ]
}

/// An index into [`STEPS`]: mostly a small integer or float.
fn step() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 0usize..5, 2 => 0..STEPS.len()]
}

/// What an append adds: mostly a short string (strings join only with
/// strings), else any input.
fn appended() -> impl Strategy<Value = Json> {
    prop_oneof![
        2 => "[a-c]{0,2}".prop_map(|s| Json::Random(Value::from(s).to_string())),
        3 => json_input(),
    ]
}

fn expect() -> impl Strategy<Value = Expect> {
    prop_oneof![
        2 => Just(Expect::Absent),
        4 => Just(Expect::Current),
        2 => Just(Expect::Reformatted),
        2 => json_input().prop_map(Expect::Other),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (key_spec(), json_input(), 0usize..3, ttl()).prop_map(|(key, value, tags, ttl_ms)| {
            Op::Put {
                key,
                value,
                tags,
                ttl_ms,
            }
        }),
        2 => key_spec().prop_map(|key| Op::Delete { key }),
        2 => (
            prop_oneof![3 => Just(0usize), 1 => Just(1usize)],
            prop_oneof![1 => Just(None), 4 => (0..PATTERNS.len()).prop_map(Some)],
        )
            .prop_map(|(namespace, pattern)| Op::Invalidate { namespace, pattern }),
        6 => (key_spec(), expect(), json_input(), atomic_ttl()).prop_map(
            |(key, expected, new_value, ttl_ms)| Op::Cas {
                key,
                expected,
                new_value,
                ttl_ms,
            }
        ),
        6 => (key_spec(), step(), 0..INITIALS.len(), atomic_ttl()).prop_map(
            |(key, by, initial, ttl_ms)| Op::Increment {
                key,
                by,
                initial,
                ttl_ms,
            }
        ),
        5 => (key_spec(), appended(), any::<bool>(), atomic_ttl()).prop_map(
            |(key, value, prepend, ttl_ms)| Op::Append {
                key,
                value,
                prepend,
                ttl_ms,
            }
        ),
        3 => (key_spec(), ticks(0..16)).prop_map(|(key, ttl_ms)| Op::ExtendTtl { key, ttl_ms }),
        5 => prop_oneof![1 => 0u32..3, 3 => Just(1000u32)].prop_map(|max| Op::Timers { max }),
    ]
}

/// The ops of a run, each with the time step before it (0 or a few ticks:
/// time never goes back).
fn run() -> impl Strategy<Value = Vec<(u64, Op)>> {
    proptest::collection::vec(
        (prop_oneof![1 => Just(0u64), 3 => ticks(1..4)], op()),
        1..60,
    )
}

/// Turns a generated op into an event; a compare-and-swap may name the
/// value the model holds for its key at `now`.
fn event_kind(model: &Model, now: u64, op: &Op) -> EventKind {
    match op {
        Op::Put {
            key,
            value,
            tags,
            ttl_ms,
        } => EventKind::CachePut {
            key: key.key(),
            value: value.text(),
            tags: (0..*tags).map(|i| format!("t{i}")).collect(),
            metadata: if *tags == 2 {
                "not json".to_string()
            } else {
                format!("{{\"cost\":{tags}}}")
            },
            ttl_ms: *ttl_ms,
        },
        Op::Delete { key } => EventKind::CacheDeleted { key: key.key() },
        Op::Invalidate { namespace, pattern } => EventKind::CacheInvalidated {
            namespace: NAMESPACES[*namespace].to_string(),
            pattern: pattern.map(|p| PATTERNS[p].to_string()),
        },
        Op::Cas {
            key,
            expected,
            new_value,
            ttl_ms,
        } => {
            let current = model.live(now, &key.key());
            let expected = match expected {
                Expect::Absent => None,
                Expect::Current => current.map(|e| e.value.clone()),
                Expect::Reformatted => {
                    current.map(|e| serde_json::to_string_pretty(&e.json()).unwrap())
                }
                Expect::Other(json) => Some(json.text()),
            };
            EventKind::CacheAtomic {
                key: key.key(),
                operation: AtomicOp::CompareAndSwap {
                    expected,
                    new_value: new_value.text(),
                    ttl_ms: *ttl_ms,
                },
            }
        }
        Op::Increment {
            key,
            by,
            initial,
            ttl_ms,
        } => EventKind::CacheAtomic {
            key: key.key(),
            operation: AtomicOp::Increment {
                by: STEPS[*by].to_string(),
                initial: INITIALS[*initial].to_string(),
                ttl_ms: *ttl_ms,
            },
        },
        Op::Append {
            key,
            value,
            prepend,
            ttl_ms,
        } => EventKind::CacheAtomic {
            key: key.key(),
            operation: AtomicOp::Append {
                value: value.text(),
                prepend: *prepend,
                ttl_ms: *ttl_ms,
            },
        },
        Op::ExtendTtl { key, ttl_ms } => EventKind::CacheAtomic {
            key: key.key(),
            operation: AtomicOp::ExtendTtl { ttl_ms: *ttl_ms },
        },
        Op::Timers { max } => EventKind::TimersFired { max: *max },
    }
}

fn check_run(ops: &[(u64, Op)]) -> std::result::Result<(), TestCaseError> {
    let mut views = AppliedViews::default();
    let mut model = Model::default();
    let mut now = 1_000;
    for (step, (dt, op)) in ops.iter().enumerate() {
        now += dt;
        let kind = event_kind(&model, now, op);
        let expected = model.apply(now, &kind);
        let actual = views.apply(now, kind.clone());
        prop_assert!(
            agrees(&expected, &actual),
            "step {step} at {now}: {kind:?}\nexpected {expected:?}\nactual   {actual:?}"
        );
        check_views(&views.store, &model).map_err(|e| {
            TestCaseError::fail(format!("after step {step} at {now} ({kind:?}): {e}"))
        })?;
    }
    prop_assert_eq!(views.digest, views.store.digest(), "incremental digest");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cache_apply_matches_model(ops in run()) {
        check_run(&ops)?;
    }
}

// ------------------------------------------------------------ unit tests

fn key(identifier: &str) -> CacheKey {
    CacheKey {
        namespace: "ns".to_string(),
        identifier: identifier.to_string(),
        version: String::new(),
    }
}

fn put(
    v: &mut AppliedViews,
    now: u64,
    key: &CacheKey,
    value: &str,
    ttl_ms: Option<u64>,
) -> Outcome {
    let kind = EventKind::CachePut {
        key: key.clone(),
        value: value.to_string(),
        tags: vec!["t".to_string()],
        metadata: "{}".to_string(),
        ttl_ms,
    };
    v.apply(now, kind)
}

fn atomic(v: &mut AppliedViews, now: u64, key: &CacheKey, operation: AtomicOp) -> Outcome {
    let kind = EventKind::CacheAtomic {
        key: key.clone(),
        operation,
    };
    v.apply(now, kind)
}

fn cas(expected: Option<&str>, new_value: &str) -> AtomicOp {
    AtomicOp::CompareAndSwap {
        expected: expected.map(String::from),
        new_value: new_value.to_string(),
        ttl_ms: None,
    }
}

fn increment(by: &str, initial: &str) -> AtomicOp {
    AtomicOp::Increment {
        by: by.to_string(),
        initial: initial.to_string(),
        ttl_ms: None,
    }
}

fn append(value: &str, prepend: bool) -> AtomicOp {
    AtomicOp::Append {
        value: value.to_string(),
        prepend,
        ttl_ms: None,
    }
}

fn fire(v: &mut AppliedViews, now: u64, max: u32) -> FiredTimers {
    match v.apply(now, EventKind::TimersFired { max }) {
        Outcome::TimersFired(fired) => fired,
        other => panic!("timers refused: {other:?}"),
    }
}

fn written(value: &str, revision: u64) -> Outcome {
    Outcome::Cache {
        changed: true,
        value: Some(value.to_string()),
        revision,
    }
}

fn unchanged(value: Option<&str>, revision: u64) -> Outcome {
    Outcome::Cache {
        changed: false,
        value: value.map(String::from),
        revision,
    }
}

fn is_rejected(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Rejected { .. })
}

#[test]
fn cache_put_replaces_with_the_next_revision_and_keeps_created_at() {
    let mut v = AppliedViews::default();
    let k = key("a");
    assert_eq!(put(&mut v, 10, &k, "1", None), written("1", 1));
    assert_eq!(
        put(&mut v, 20, &k, "{\"x\": 2}", None),
        written("{\"x\": 2}", 2)
    );
    let row = v.entry(&k).unwrap();
    assert_eq!(
        (row.created_at_ms, row.updated_at_ms, row.revision),
        (10, 20, 2)
    );
    assert_eq!(
        (row.value.as_str(), row.tags.as_slice()),
        ("{\"x\": 2}", &["t".to_string()][..])
    );
    // Another version of the identifier is another entry.
    let v1 = CacheKey {
        version: "v1".to_string(),
        ..k.clone()
    };
    assert_eq!(put(&mut v, 30, &v1, "3", None), written("3", 1));
    assert_eq!(v.entry(&k).unwrap().revision, 2);
    assert!(is_rejected(&put(&mut v, 40, &k, "{not json", None)));
    assert!(is_rejected(&put(&mut v, 40, &key(""), "1", None)));
    assert_eq!(v.entry(&k).unwrap().revision, 2);
}

#[test]
fn cache_ttl_expires_through_timers_fired() {
    let mut v = AppliedViews::default();
    let k = key("a");
    put(&mut v, 100, &k, "\"x\"", Some(50));
    assert_eq!(v.entry(&k).unwrap().expires_at_ms, Some(150));
    let timers = v.timers();
    assert_eq!(timers.len(), 1);
    assert_eq!(
        (timers[0].due_ms, timers[0].kind, timers[0].queue.as_str()),
        (150, TimerKind::CacheExpires, "ns")
    );
    assert_eq!(fire(&mut v, 149, 10), FiredTimers::default());
    assert!(v.entry(&k).is_some());
    let fired = fire(&mut v, 150, 10);
    assert_eq!((fired.cache_expired, fired.more_due), (1, false));
    assert!(v.entry(&k).is_none());
    assert!(v.timers().is_empty());
    // A put without TTL drops the old expiry timer.
    put(&mut v, 200, &k, "1", Some(10));
    put(&mut v, 201, &k, "2", None);
    assert!(v.timers().is_empty());
    assert_eq!(fire(&mut v, 1_000, 10), FiredTimers::default());
    assert_eq!(v.entry(&k).unwrap().value, "2");
}

#[test]
fn cache_timers_fire_up_to_max() {
    let mut v = AppliedViews::default();
    put(&mut v, 0, &key("a"), "1", Some(10));
    put(&mut v, 0, &key("b"), "1", Some(10));
    put(&mut v, 0, &key("c"), "1", Some(20));
    let fired = fire(&mut v, 20, 2);
    assert_eq!((fired.cache_expired, fired.more_due), (2, true));
    // Key order: the earliest expiries first.
    assert!(v.entry(&key("a")).is_none() && v.entry(&key("b")).is_none());
    assert_eq!(fire(&mut v, 20, 2).cache_expired, 1);
    assert!(v.entry(&key("c")).is_none());
}

#[test]
fn cache_expired_entry_is_absent_before_its_timer_fires() {
    let mut v = AppliedViews::default();
    let k = key("a");
    put(&mut v, 100, &k, "5", Some(50));
    // Expired at 150: still stored, but absent for a compare-and-swap.
    assert!(v.entry(&k).is_some());
    assert_eq!(
        atomic(&mut v, 150, &k, cas(Some("5"), "6")),
        unchanged(None, 0)
    );
    assert_eq!(atomic(&mut v, 150, &k, cas(None, "7")), written("7", 1));
    let row = v.entry(&k).unwrap();
    assert_eq!((row.created_at_ms, row.expires_at_ms), (150, None));
    // The replaced entry's timer went with it.
    assert!(v.timers().is_empty());
    assert_eq!(fire(&mut v, 150, 10), FiredTimers::default());
    // An increment starts from the initial value, a delete reports nothing
    // live.
    put(&mut v, 200, &k, "5", Some(10));
    assert_eq!(
        atomic(&mut v, 210, &k, increment("1", "0")),
        written("1", 1)
    );
    put(&mut v, 300, &k, "5", Some(10));
    let delete = EventKind::CacheDeleted { key: k.clone() };
    assert_eq!(v.apply(310, delete), unchanged(None, 0));
    assert!(v.entry(&k).is_none() && v.timers().is_empty());
    // A put over an expired entry starts again from revision 1.
    put(&mut v, 400, &k, "1", Some(10));
    assert_eq!(put(&mut v, 410, &k, "2", None), written("2", 1));
    assert_eq!(v.entry(&k).unwrap().created_at_ms, 410);
}

#[test]
fn cache_compare_and_swap_compares_json_values() {
    let mut v = AppliedViews::default();
    let k = key("a");
    assert_eq!(
        atomic(&mut v, 1, &k, cas(Some("1"), "2")),
        unchanged(None, 0)
    );
    assert_eq!(
        atomic(&mut v, 1, &k, cas(None, "{\"a\":1,\"b\":2}")),
        written("{\"a\":1,\"b\":2}", 1)
    );
    assert_eq!(
        atomic(&mut v, 2, &k, cas(None, "3")),
        unchanged(Some("{\"a\":1,\"b\":2}"), 1)
    );
    // Key order and whitespace do not matter; the new text is stored as given.
    assert_eq!(
        atomic(&mut v, 3, &k, cas(Some("{ \"b\": 2, \"a\": 1 }"), " [1] ")),
        written(" [1] ", 2)
    );
    assert_eq!(
        atomic(&mut v, 4, &k, cas(Some("[2]"), "0")),
        unchanged(Some(" [1] "), 2)
    );
    assert!(is_rejected(&atomic(&mut v, 5, &k, cas(Some("[1"), "0"))));
    assert!(is_rejected(&atomic(&mut v, 5, &k, cas(Some("[1]"), "x"))));
    // TTL None keeps the entry's expiry; Some sets a new one.
    put(&mut v, 10, &k, "1", Some(100));
    atomic(&mut v, 20, &k, cas(Some("1"), "2"));
    assert_eq!(v.entry(&k).unwrap().expires_at_ms, Some(110));
    let with_ttl = AtomicOp::CompareAndSwap {
        expected: Some("2".to_string()),
        new_value: "3".to_string(),
        ttl_ms: Some(5),
    };
    atomic(&mut v, 30, &k, with_ttl);
    assert_eq!(v.entry(&k).unwrap().expires_at_ms, Some(35));
    assert_eq!(v.timers().len(), 1);
    assert_eq!(v.timers()[0].due_ms, 35);
}

/// Increments a stored `value` by `by` (revision 2 on success).
fn increment_stored(value: &str, by: &str) -> Outcome {
    let mut v = AppliedViews::default();
    put(&mut v, 0, &key("n"), value, None);
    let outcome = atomic(&mut v, 1, &key("n"), increment(by, "0"));
    if is_rejected(&outcome) {
        assert_eq!(
            v.entry(&key("n")).unwrap().value,
            value,
            "refused: unchanged"
        );
    }
    outcome
}

#[test]
fn cache_increment_keeps_integers_and_refuses_overflow_and_non_numbers() {
    let mut v = AppliedViews::default();
    let k = key("n");
    // From the initial value, then from the stored one.
    assert_eq!(
        atomic(&mut v, 1, &k, increment("5", "10")),
        written("15", 1)
    );
    assert_eq!(
        atomic(&mut v, 2, &k, increment("-20", "0")),
        written("-5", 2)
    );
    assert_eq!(
        atomic(&mut v, 3, &k, increment("0.5", "0")),
        written("-4.5", 3)
    );
    assert!(is_rejected(&atomic(
        &mut v,
        4,
        &key("m"),
        increment("\"1\"", "0")
    )));
    assert!(is_rejected(&atomic(
        &mut v,
        4,
        &key("m"),
        increment("1", "[]")
    )));
    assert!(v.entry(&key("m")).is_none());

    // A float on either side makes a float.
    assert_eq!(increment_stored("1.0", "1"), written("2.0", 2));
    assert_eq!(increment_stored("3", "0.5"), written("3.5", 2));
    // Integers stay exact integers over serde_json's whole integer range
    // (i64 and u64), past i64::MAX too.
    let (i64_max, u64_max) = (i64::MAX.to_string(), u64::MAX.to_string());
    assert_eq!(
        increment_stored(&i64_max, "-1"),
        written("9223372036854775806", 2)
    );
    assert_eq!(
        increment_stored(&i64_max, "1"),
        written("9223372036854775808", 2)
    );
    assert_eq!(
        increment_stored("9223372036854775808", "1"),
        written("9223372036854775809", 2)
    );
    assert_eq!(
        increment_stored(&u64_max, "-1"),
        written("18446744073709551614", 2)
    );
    assert_eq!(
        increment_stored(&u64_max, "-9223372036854775808"),
        written("9223372036854775807", 2)
    );
    // Beyond both ranges: refused.
    assert!(is_rejected(&increment_stored(&u64_max, "1")));
    assert!(is_rejected(&increment_stored(&i64::MIN.to_string(), "-1")));
    // Non-numbers, and a float sum that is not finite: refused.
    assert!(is_rejected(&increment_stored("\"7\"", "1")));
    assert!(is_rejected(&increment_stored("[7]", "1")));
    assert!(is_rejected(&increment_stored("7", "null")));
    assert!(is_rejected(&increment_stored("1e308", "1e308")));
}

#[test]
fn cache_append_joins_strings_and_lists() {
    let mut v = AppliedViews::default();
    let s = key("s");
    assert_eq!(
        atomic(&mut v, 1, &s, append("\"b\"", false)),
        written("\"b\"", 1)
    );
    assert_eq!(
        atomic(&mut v, 2, &s, append("\"c\"", false)),
        written("\"bc\"", 2)
    );
    assert_eq!(
        atomic(&mut v, 3, &s, append("\"a\"", true)),
        written("\"abc\"", 3)
    );
    assert!(is_rejected(&atomic(&mut v, 4, &s, append("1", false))));

    let l = key("l");
    assert_eq!(atomic(&mut v, 5, &l, append("1", false)), written("[1]", 1));
    assert_eq!(
        atomic(&mut v, 6, &l, append("\"x\"", false)),
        written("[1,\"x\"]", 2)
    );
    assert_eq!(
        atomic(&mut v, 7, &l, append("[0]", true)),
        written("[[0],1,\"x\"]", 3)
    );

    let o = key("o");
    put(&mut v, 8, &o, "{\"k\":1}", None);
    assert!(is_rejected(&atomic(&mut v, 9, &o, append("\"x\"", false))));
    put(&mut v, 10, &o, "3", None);
    assert!(is_rejected(&atomic(&mut v, 11, &o, append("[1]", true))));
    assert_eq!(v.entry(&o).unwrap().revision, 2);
}

#[test]
fn cache_extend_ttl_moves_the_expiry_of_a_live_entry() {
    let mut v = AppliedViews::default();
    let k = key("a");
    let extend = |ttl_ms| AtomicOp::ExtendTtl { ttl_ms };
    assert_eq!(atomic(&mut v, 1, &k, extend(10)), unchanged(None, 0));
    assert!(v.entry(&k).is_none());
    put(&mut v, 10, &k, "1", Some(20));
    assert_eq!(atomic(&mut v, 20, &k, extend(100)), written("1", 2));
    let row = v.entry(&k).unwrap();
    assert_eq!(
        (row.expires_at_ms, row.created_at_ms, row.updated_at_ms),
        (Some(120), 10, 20)
    );
    assert_eq!(
        v.timers().iter().map(|t| t.due_ms).collect::<Vec<_>>(),
        [120]
    );
    assert_eq!(fire(&mut v, 30, 10), FiredTimers::default());
    // An entry without expiry gets one.
    put(&mut v, 40, &key("b"), "2", None);
    atomic(&mut v, 40, &key("b"), extend(5));
    assert_eq!(v.entry(&key("b")).unwrap().expires_at_ms, Some(45));
    // Expired: nothing to extend.
    assert_eq!(atomic(&mut v, 120, &k, extend(100)), unchanged(None, 0));
    assert_eq!(fire(&mut v, 120, 10).cache_expired, 2);
    assert!(v.entry(&k).is_none());
}

#[test]
fn cache_invalidate_removes_matching_identifiers_and_counts_live_ones() {
    let mut v = AppliedViews::default();
    for id in ["a", "a.b", "a.b.c", "b.a", "ab"] {
        put(&mut v, 0, &key(id), "1", None);
    }
    put(&mut v, 0, &key("a.x"), "1", Some(5));
    let other = CacheKey {
        namespace: "other".to_string(),
        ..key("a.b")
    };
    put(&mut v, 0, &other, "1", None);
    let invalidate = |pattern: Option<&str>| EventKind::CacheInvalidated {
        namespace: "ns".to_string(),
        pattern: pattern.map(String::from),
    };
    // `a.*` takes a.b and the expired a.x (not counted), not a or a.b.c.
    assert_eq!(
        v.apply(10, invalidate(Some("a.*"))),
        Outcome::CacheRemoved { entries: 1 }
    );
    assert!(v.entry(&key("a.x")).is_none() && v.timers().is_empty());
    assert!(v.entry(&key("a")).is_some() && v.entry(&key("a.b.c")).is_some());
    // `a.#` matches zero levels too.
    assert_eq!(
        v.apply(11, invalidate(Some("a.#"))),
        Outcome::CacheRemoved { entries: 2 }
    );
    assert_eq!(
        v.apply(12, invalidate(Some("#.a"))),
        Outcome::CacheRemoved { entries: 1 }
    );
    assert_eq!(
        v.apply(13, invalidate(None)),
        Outcome::CacheRemoved { entries: 1 }
    );
    assert!(v.entry(&key("ab")).is_none());
    assert!(v.entry(&other).is_some(), "another namespace is untouched");
    assert!(is_rejected(&v.apply(
        14,
        EventKind::CacheInvalidated {
            namespace: String::new(),
            pattern: None,
        }
    )));
}

#[test]
fn cache_delete_removes_the_entry_and_its_timer() {
    let mut v = AppliedViews::default();
    let k = key("a");
    let delete = || EventKind::CacheDeleted { key: k.clone() };
    assert_eq!(v.apply(0, delete()), unchanged(None, 0));
    put(&mut v, 0, &k, "1", Some(100));
    let deleted = Outcome::Cache {
        changed: true,
        value: None,
        revision: 0,
    };
    assert_eq!(v.apply(1, delete()), deleted);
    assert!(v.entry(&k).is_none() && v.timers().is_empty());
    // Created again from revision 1.
    assert_eq!(put(&mut v, 2, &k, "2", None), written("2", 1));
    assert_eq!(v.entry(&k).unwrap().created_at_ms, 2);
    assert_eq!(v.digest, v.store.digest());
}
