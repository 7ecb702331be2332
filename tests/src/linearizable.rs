//! A linearizability checker for histories of a key/value store whose keys
//! are registers with put, get, delete and compare-and-swap: Wing & Gong's
//! search with Lowe's memoization of (linearized set, state), the algorithm
//! Porcupine implements. Keys are independent (P-compositionality), so
//! each key's history is checked on its own.
//!
//! A call whose outcome is unknown (a timeout, a lost connection, "outcome
//! unknown") may have taken effect at any point after it was invoked, or
//! never: it returns at infinity and any result is accepted for it.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// What a client asked of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(String),
    Get,
    Delete,
    /// Writes `new` if the value is `expected` (`None`: no entry).
    Cas {
        expected: Option<String>,
        new: String,
    },
}

/// What the store answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Written,
    /// The value read (`None`: no entry).
    Read(Option<String>),
    /// Whether the delete removed an entry.
    Deleted(bool),
    /// Whether the swap happened; when it did not, the current value if
    /// the store reported it.
    Swapped(bool, Option<Option<String>>),
}

/// One call in the history, with its times on one clock shared by every
/// client (any unit; only the order matters).
#[derive(Clone, Debug)]
pub struct Call {
    pub key: String,
    pub op: Op,
    pub invoked: u64,
    /// The answer and when it came; `None` when the outcome is unknown.
    pub completed: Option<(u64, Output)>,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.completed {
            Some((at, out)) => write!(f, "[{}..{at}] {:?} -> {out:?}", self.invoked, self.op),
            None => write!(f, "[{}..?] {:?} -> unknown", self.invoked, self.op),
        }
    }
}

/// The register's state after `op`, or `None` if `output` cannot be
/// `op`'s answer in `state`.
fn step(state: &Option<String>, op: &Op, output: Option<&Output>) -> Option<Option<String>> {
    match (op, output) {
        (Op::Put(v), None | Some(Output::Written)) => Some(Some(v.clone())),
        (Op::Get, None) => Some(state.clone()),
        (Op::Get, Some(Output::Read(v))) => (v == state).then(|| state.clone()),
        (Op::Delete, None) => Some(None),
        (Op::Delete, Some(Output::Deleted(removed))) => {
            (*removed == state.is_some()).then_some(None)
        }
        (Op::Cas { expected, new }, out) => {
            let swaps = expected == state;
            match out {
                None => Some(if swaps {
                    Some(new.clone())
                } else {
                    state.clone()
                }),
                Some(Output::Swapped(true, _)) if swaps => Some(Some(new.clone())),
                Some(Output::Swapped(false, current)) if !swaps => current
                    .as_ref()
                    .is_none_or(|c| c == state)
                    .then(|| state.clone()),
                Some(_) => None,
            }
        }
        _ => None,
    }
}

/// An event of the search list: the call or the return of call `id`.
#[derive(Clone, Copy)]
struct Event {
    id: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For a call, the index of its return event.
    partner: usize,
}

/// Whether the calls on one key, starting from no entry, are linearizable.
fn linearizable_key(calls: &[&Call]) -> bool {
    // Events in time order; a call before a return at the same time (the
    // two overlap). Unknown outcomes return after everything.
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(calls.len() * 2);
    for (id, call) in calls.iter().enumerate() {
        order.push((call.invoked, false, id));
        let end = call.completed.as_ref().map_or(u64::MAX, |(at, _)| *at);
        order.push((end, true, id));
    }
    order.sort();
    // Slot 0 is the head; event k of `order` is slot k + 1.
    let n = order.len();
    let mut events = vec![
        Event {
            id: usize::MAX,
            is_call: false,
            prev: 0,
            next: 1,
            partner: 0,
        };
        n + 1
    ];
    let mut return_slot = vec![0; calls.len()];
    for (k, &(_, is_return, id)) in order.iter().enumerate() {
        let slot = k + 1;
        events[slot] = Event {
            id,
            is_call: !is_return,
            prev: slot - 1,
            next: if slot == n { usize::MAX } else { slot + 1 },
            partner: 0,
        };
        if is_return {
            return_slot[id] = slot;
        }
    }
    if n == 0 {
        return true;
    }
    for event in &mut events[1..] {
        if event.is_call {
            event.partner = return_slot[event.id];
        }
    }
    let lift = |events: &mut Vec<Event>, slot: usize| {
        for s in [slot, events[slot].partner] {
            let Event { prev, next, .. } = events[s];
            events[prev].next = next;
            if next != usize::MAX {
                events[next].prev = prev;
            }
        }
    };
    let unlift = |events: &mut Vec<Event>, slot: usize| {
        for s in [events[slot].partner, slot] {
            let Event { prev, next, .. } = events[s];
            events[prev].next = s;
            if next != usize::MAX {
                events[next].prev = s;
            }
        }
    };

    let words = calls.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut state: Option<String> = None;
    let mut slot = events[0].next;
    while events[0].next != usize::MAX {
        let event = events[slot];
        if event.is_call {
            let call = calls[event.id];
            let output = call.completed.as_ref().map(|(_, out)| out);
            if let Some(next_state) = step(&state, &call.op, output) {
                let mut next_linearized = linearized.clone();
                next_linearized[event.id / 64] |= 1 << (event.id % 64);
                if seen.insert((next_linearized.clone(), next_state.clone())) {
                    stack.push((slot, std::mem::replace(&mut state, next_state)));
                    linearized = next_linearized;
                    lift(&mut events, slot);
                    slot = events[0].next;
                    continue;
                }
            }
            slot = event.next;
        } else {
            // A return whose call is not linearized yet: undo the last choice.
            let Some((call_slot, previous)) = stack.pop() else {
                return false;
            };
            state = previous;
            let id = events[call_slot].id;
            linearized[id / 64] &= !(1 << (id % 64));
            unlift(&mut events, call_slot);
            slot = events[call_slot].next;
        }
    }
    true
}

/// Checks every key's history. On a violation, names the key and lists
/// its calls.
pub fn check(history: &[Call]) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
    for call in history {
        by_key.entry(&call.key).or_default().push(call);
    }
    for (key, calls) in by_key {
        if !linearizable_key(&calls) {
            let listed: Vec<String> = calls.iter().map(|c| c.to_string()).collect();
            return Err(format!(
                "the history of key {key} is not linearizable:\n{}",
                listed.join("\n")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    fn call(op: Op, invoked: u64, completed: u64, out: Output) -> Call {
        Call {
            key: "k".into(),
            op,
            invoked,
            completed: Some((completed, out)),
        }
    }

    fn put(v: &str, a: u64, b: u64) -> Call {
        call(Op::Put(v.into()), a, b, Output::Written)
    }

    fn get(v: Option<&str>, a: u64, b: u64) -> Call {
        call(Op::Get, a, b, Output::Read(v.map(str::to_string)))
    }

    #[test]
    fn sequential_reads_see_the_last_write() {
        let history = [
            put("a", 0, 1),
            get(Some("a"), 2, 3),
            put("b", 4, 5),
            get(Some("b"), 6, 7),
        ];
        assert!(check(&history).is_ok());
        let stale = [put("a", 0, 1), put("b", 2, 3), get(Some("a"), 4, 5)];
        let err = check(&stale).unwrap_err();
        assert!(err.contains("key k") && err.contains("Put(\"b\")"), "{err}");
    }

    #[test]
    fn a_read_overlapping_a_write_may_see_either() {
        for seen in [None, Some("a")] {
            assert!(check(&[put("a", 0, 10), get(seen, 5, 6)]).is_ok());
        }
        // Once one read saw the new value, a later read may not go back.
        let back = [put("a", 0, 10), get(Some("a"), 1, 2), get(None, 3, 4)];
        assert!(check(&back).is_err());
    }

    #[test]
    fn concurrent_writes_take_one_order_every_reader_agrees_on() {
        // Two overlapping puts, a read that saw "b", then a second read.
        let then_read = |seen| {
            [
                put("a", 0, 10),
                put("b", 0, 10),
                get(Some("b"), 11, 12),
                get(Some(seen), 13, 14),
            ]
        };
        assert!(check(&then_read("b")).is_ok());
        assert!(check(&then_read("a")).is_err(), "flapping back to a");
    }

    #[test]
    fn compare_and_swap_is_judged_against_the_state() {
        let cas = |expected: Option<&str>, new: &str, a, b, out| {
            call(
                Op::Cas {
                    expected: expected.map(str::to_string),
                    new: new.into(),
                },
                a,
                b,
                out,
            )
        };
        let ok = [
            cas(None, "a", 0, 1, Output::Swapped(true, None)),
            cas(Some("x"), "b", 2, 3, Output::Swapped(false, Some(s("a")))),
            cas(Some("a"), "c", 4, 5, Output::Swapped(true, None)),
            get(Some("c"), 6, 7),
        ];
        assert!(check(&ok).is_ok());
        // Two swaps from the same value cannot both succeed.
        let both = [
            put("a", 0, 1),
            cas(Some("a"), "b", 2, 5, Output::Swapped(true, None)),
            cas(Some("a"), "c", 2, 5, Output::Swapped(true, None)),
        ];
        assert!(check(&both).is_err());
        // A failed swap that reports a value the register never held.
        let wrong_current = [
            put("a", 0, 1),
            cas(Some("x"), "b", 2, 3, Output::Swapped(false, Some(s("z")))),
        ];
        assert!(check(&wrong_current).is_err());
    }

    #[test]
    fn deletes_report_whether_an_entry_was_there() {
        let ok = [
            put("a", 0, 1),
            call(Op::Delete, 2, 3, Output::Deleted(true)),
            call(Op::Delete, 4, 5, Output::Deleted(false)),
            get(None, 6, 7),
        ];
        assert!(check(&ok).is_ok());
        let lost = [
            put("a", 0, 1),
            call(Op::Delete, 2, 3, Output::Deleted(false)),
        ];
        assert!(check(&lost).is_err());
    }

    #[test]
    fn an_unknown_outcome_may_apply_late_or_never() {
        let unknown = |v: &str, a| Call {
            key: "k".into(),
            op: Op::Put(v.into()),
            invoked: a,
            completed: None,
        };
        assert!(check(&[put("a", 0, 1), unknown("b", 2), get(Some("a"), 3, 4)]).is_ok());
        assert!(check(&[put("a", 0, 1), unknown("b", 2), get(Some("b"), 30, 40)]).is_ok());
        assert!(
            check(&[
                put("a", 0, 1),
                unknown("b", 2),
                get(Some("b"), 3, 4),
                get(Some("a"), 5, 6)
            ])
            .is_err(),
            "once seen, an unknown write stays applied"
        );
        // It cannot take effect before it was invoked.
        assert!(check(&[put("a", 0, 1), get(Some("b"), 2, 3), unknown("b", 4)]).is_err());
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut other = put("b", 0, 1);
        other.key = "j".into();
        let mut read = get(Some("b"), 2, 3);
        read.key = "j".into();
        assert!(check(&[put("a", 0, 1), other.clone(), read, get(Some("a"), 2, 3)]).is_ok());
        let mut wrong = get(Some("a"), 2, 3);
        wrong.key = "j".into();
        let err = check(&[put("a", 0, 1), other, wrong]).unwrap_err();
        assert!(err.contains("key j"), "{err}");
    }

    #[test]
    fn a_long_concurrent_history_is_checked_quickly() {
        // 8 writers over 200 rounds, each round's writes overlapping, a
        // read after each round seeing the last writer: 1,800 calls.
        let mut history = Vec::new();
        for round in 0..200u64 {
            let t = round * 10;
            for w in 0..8 {
                history.push(put(&format!("{round}-{w}"), t, t + 5));
            }
            history.push(get(Some(&format!("{round}-7")), t + 6, t + 7));
        }
        assert!(check(&history).is_ok());
        history.push(get(Some("0-0"), 5000, 5001));
        assert!(check(&history).is_err());
    }
}
