//! Model test of the cache view: random cache events applied through
//! [`apply`] on [`MemViews`] must agree, event by event, with a small
//! in-memory model written from the cache semantics (not from
//! `views::cache`), and the stored `cache_entries` rows and `CacheExpires`
//! timers must equal what the model holds after every event. Unit tests pin
//! single behaviours.
//! Bulk events (purge, delete, invalidate) are applied three times in four
//! as bulk steps of 1 to 3 rows ([`AppliedViews::apply_in_steps`]) and
//! must agree with the model just the same.
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
//!
//! - `model`: the reference model and the outcome it expects;
//! - `ops`: the generator of random runs and their events;
//! - `checks`: the stored rows compared with the model;
//! - here: the property test, the harness and the unit tests.

mod checks;
mod model;
mod ops;

use proptest::prelude::*;

use crate::codec;
use crate::event::{AtomicOp, CacheKey, EventKind, FiredTimers, Outcome};
use crate::test_views::{AppliedViews, all_keys};
use crate::views::{CacheRow, RowStore, Timer, TimerKind, View};
use checks::check_views;
use model::{Model, agrees};
use ops::{Op, event_kind, run};

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

fn check_run(ops: &[(u64, Op)]) -> std::result::Result<(), TestCaseError> {
    let mut views = AppliedViews::default();
    let mut model = Model::default();
    let mut now = 1_000;
    for (step, (dt, op)) in ops.iter().enumerate() {
        now += dt;
        let kind = event_kind(&model, now, op);
        let expected = model.apply(now, &kind);
        let actual = match step % 4 {
            0 => views.apply(now, kind.clone()),
            limit => views.apply_in_steps(now, kind.clone(), limit as u32),
        };
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
