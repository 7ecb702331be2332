//! The generator: random cache ops (proptest strategies) over a few keys,
//! patterns and JSON values that meet each other often, and the event each
//! op becomes.

use proptest::prelude::*;
use serde_json::Value;

use super::model::Model;
use crate::event::{AtomicOp, CacheKey, EventKind};

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
pub(super) enum Json {
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
pub(super) enum Expect {
    Absent,
    Current,
    Reformatted,
    Other(Json),
}

#[derive(Clone, Copy, Debug)]
pub(super) struct KeySpec {
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
pub(super) enum Op {
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
pub(super) fn run() -> impl Strategy<Value = Vec<(u64, Op)>> {
    proptest::collection::vec(
        (prop_oneof![1 => Just(0u64), 3 => ticks(1..4)], op()),
        1..60,
    )
}

/// Turns a generated op into an event; a compare-and-swap may name the
/// value the model holds for its key at `now`.
pub(super) fn event_kind(model: &Model, now: u64, op: &Op) -> EventKind {
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
