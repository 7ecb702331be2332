//! Model test of the queue views: random queue events applied through
//! [`apply`] on [`MemViews`] must agree, event by event, with a small
//! in-memory model written from the queue semantics (not from
//! `views::queue_apply`), and the stored rows and indexes must equal what the
//! model holds after every event. Unit tests pin single behaviours.
//! Bulk events (purge, delete, invalidate) are applied three times in four
//! as bulk steps of 1 to 3 rows ([`AppliedViews::apply_in_steps`]) and
//! must agree with the model just the same.
//!
//! Where the semantics leave a choice open, the model pins the choice apply
//! makes, so changing it is deliberate: an auto-declared dead-letter queue
//! is FIFO with the source's sizes and no TTL, dedup or DLQ of its own;
//! redeclaring with equal settings is a no-op even if the dead-letter queue
//! was deleted since; a dead-lettered message gets priority 0 and no TTL, and
//! is dropped if its id is already in the dead-letter queue; a purge keeps
//! the dedup windows. Timers fire in key order (due, kind, queue, target).
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
use crate::event::{
    DeliveredMessage, Delivery, EventKind, FiredTimers, NewMessage, Outcome, QueueSettings,
    QueueType, SentMessage,
};
use crate::test_views::{AppliedViews, all_rows};
use crate::views::{MessageRow, MessageState, QueueRow, RowStore, View};
use checks::check_views;
use model::{Held, Model, agrees};
use ops::{Op, Run, event_kind, run};

// -------------------------------------------------------------- harness

impl AppliedViews {
    fn queue(&self, name: &str) -> QueueRow {
        let bytes = self.store.get(View::Queues, &QueueRow::key(name)).unwrap();
        codec::decode("queue", &bytes.expect("queue exists")).unwrap()
    }

    /// The messages of `queue`, in seq order.
    fn messages(&self, queue: &str) -> Vec<MessageRow> {
        all_rows::<MessageRow>(&self.store, View::QueueMessages)
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| m.queue == queue)
            .collect()
    }
}

fn check_run(run: &Run) -> std::result::Result<(), TestCaseError> {
    let mut views = AppliedViews::default();
    let mut model = Model::default();
    let mut deliveries: Vec<Held> = Vec::new();
    let mut now = 1_000;
    let mut ops = vec![(
        0,
        Op::Declare {
            queue: 0,
            variant: 0,
        },
    )];
    if run.declare_q1 {
        ops.push((
            0,
            Op::Declare {
                queue: 1,
                variant: 0,
            },
        ));
    }
    ops.extend(run.ops.iter().cloned());
    for (step, (dt, op)) in ops.iter().enumerate() {
        now += dt;
        let kind = event_kind(run, op, &model.leases(), &deliveries);
        let expected = model.apply(now, &kind);
        let actual = match step % 4 {
            0 => views.apply(now, kind.clone()),
            limit => views.apply_in_steps(now, kind.clone(), limit as u32),
        };
        prop_assert!(
            agrees(&expected, &actual),
            "step {step} at {now}: {kind:?}\nexpected {expected:?}\nactual   {actual:?}"
        );
        if let (
            EventKind::MessagesLeased {
                queue, consumer, ..
            },
            Outcome::Delivered { messages },
        ) = (&kind, &expected)
        {
            for m in messages.iter().filter(|m| m.lease_deadline_ms.is_some()) {
                deliveries.push((queue.clone(), m.message_id.clone(), consumer.clone()));
            }
        }
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
    fn queue_apply_matches_model(run in run()) {
        check_run(&run)?;
    }
}

// ------------------------------------------------------------ unit tests

fn fifo(max_size: u64) -> QueueSettings {
    QueueSettings {
        queue_type: QueueType::Fifo,
        max_size,
        visibility_timeout_ms: 30_000,
        ack_timeout_ms: 30_000,
        message_ttl_ms: None,
        max_retries: 3,
        dead_letter_queue: None,
        dedup_window_ms: None,
    }
}

fn message(id: &str) -> NewMessage {
    NewMessage {
        message_id: id.to_string(),
        client_id: false,
        topic: "t".to_string(),
        payload: "null".to_string(),
        priority: 0,
        delay_ms: 0,
        ttl_ms: None,
        delivery: Delivery::AtLeastOnce,
    }
}

fn declare(views: &mut AppliedViews, now: u64, name: &str, settings: QueueSettings) {
    let kind = EventKind::QueueDeclared {
        name: name.to_string(),
        settings,
    };
    assert_eq!(views.apply(now, kind), Outcome::Applied);
}

fn send(views: &mut AppliedViews, now: u64, queue: &str, messages: Vec<NewMessage>) -> Outcome {
    let kind = EventKind::MessagesSent {
        queue: queue.to_string(),
        messages,
    };
    views.apply(now, kind)
}

fn lease(
    views: &mut AppliedViews,
    now: u64,
    queue: &str,
    max: u32,
    lease_ms: u64,
) -> Vec<DeliveredMessage> {
    let kind = EventKind::MessagesLeased {
        queue: queue.to_string(),
        consumer: "c".to_string(),
        max,
        lease_ms,
        topic_pattern: None,
    };
    match views.apply(now, kind) {
        Outcome::Delivered { messages } => messages,
        other => panic!("lease refused: {other:?}"),
    }
}

fn ids(delivered: &[DeliveredMessage]) -> Vec<&str> {
    delivered.iter().map(|m| m.message_id.as_str()).collect()
}

fn fire(views: &mut AppliedViews, now: u64, max: u32) -> FiredTimers {
    match views.apply(now, EventKind::TimersFired { max }) {
        Outcome::TimersFired(fired) => fired,
        other => panic!("timers refused: {other:?}"),
    }
}

fn sent(ids: &[(&str, bool)]) -> Outcome {
    Outcome::Sent {
        messages: ids
            .iter()
            .map(|(id, duplicate)| SentMessage {
                message_id: id.to_string(),
                duplicate: *duplicate,
            })
            .collect(),
    }
}

#[test]
fn queue_fifo_delivers_in_send_order() {
    let mut v = AppliedViews::default();
    declare(&mut v, 0, "q", fifo(10));
    let mut high = message("b");
    high.priority = 9;
    send(&mut v, 1, "q", vec![message("a"), high, message("c")]);
    send(&mut v, 2, "q", vec![message("d")]);
    assert_eq!(ids(&lease(&mut v, 3, "q", 2, 100)), ["a", "b"]);
    assert_eq!(ids(&lease(&mut v, 3, "q", 5, 100)), ["c", "d"]);
    assert!(lease(&mut v, 3, "q", 5, 100).is_empty());
}

#[test]
fn queue_priority_delivers_highest_first_then_send_order() {
    let mut v = AppliedViews::default();
    declare(
        &mut v,
        0,
        "q",
        QueueSettings {
            queue_type: QueueType::Priority,
            ..fifo(10)
        },
    );
    let with = |id: &str, priority| NewMessage {
        priority,
        ..message(id)
    };
    send(
        &mut v,
        1,
        "q",
        vec![
            with("low", 1),
            with("top", 200),
            with("mid1", 5),
            with("mid2", 5),
        ],
    );
    let delivered = lease(&mut v, 2, "q", 10, 100);
    assert_eq!(ids(&delivered), ["top", "mid1", "mid2", "low"]);
    assert_eq!(delivered[0].priority, 200);
}

#[test]
fn queue_delayed_message_is_ready_once_its_timer_fires() {
    let mut v = AppliedViews::default();
    declare(&mut v, 0, "q", fifo(10));
    let delayed = NewMessage {
        delay_ms: 50,
        ..message("later")
    };
    send(&mut v, 100, "q", vec![delayed, message("now")]);
    assert_eq!((v.queue("q").ready, v.queue("q").delayed), (1, 1));
    assert_eq!(ids(&lease(&mut v, 149, "q", 5, 1_000)), ["now"]);
    // Not due yet: nothing fires.
    assert_eq!(fire(&mut v, 149, 10), FiredTimers::default());
    // Due, but time alone does not make it ready: only the timer event does.
    assert!(lease(&mut v, 150, "q", 5, 1_000).is_empty());
    let fired = fire(&mut v, 150, 10);
    assert_eq!(fired.delays_ended, 1);
    assert_eq!(ids(&lease(&mut v, 151, "q", 5, 1_000)), ["later"]);
}

#[test]
fn queue_expired_lease_redelivers_with_one_more_attempt() {
    let mut v = AppliedViews::default();
    declare(&mut v, 0, "q", fifo(10));
    send(&mut v, 0, "q", vec![message("m")]);
    let first = lease(&mut v, 10, "q", 1, 20);
    assert_eq!(
        (first[0].attempts, first[0].lease_deadline_ms),
        (1, Some(30))
    );
    assert_eq!(v.queue("q").in_flight, 1);
    assert!(lease(&mut v, 29, "q", 1, 20).is_empty());
    let fired = fire(&mut v, 30, 10);
    assert_eq!((fired.leases_expired, fired.dead_lettered), (1, 0));
    assert_eq!((v.queue("q").ready, v.queue("q").in_flight), (1, 0));
    let second = lease(&mut v, 31, "q", 1, 20);
    assert_eq!(ids(&second), ["m"]);
    assert_eq!(
        (second[0].attempts, second[0].lease_deadline_ms),
        (2, Some(51))
    );
}

#[test]
fn queue_message_out_of_retries_lands_in_the_dead_letter_queue() {
    let mut v = AppliedViews::default();
    let settings = QueueSettings {
        max_retries: 1,
        dead_letter_queue: Some("dead".to_string()),
        ..fifo(10)
    };
    declare(&mut v, 0, "q", settings);
    assert_eq!(v.queue("dead").settings.queue_type, QueueType::Fifo);
    send(&mut v, 0, "q", vec![message("m")]);
    let nack = || EventKind::MessageNacked {
        queue: "q".to_string(),
        message_id: "m".to_string(),
        consumer: "c".to_string(),
        delay_ms: 0,
    };
    lease(&mut v, 1, "q", 1, 100);
    let requeued = Outcome::Released {
        requeued: 1,
        dead_lettered: 0,
    };
    assert_eq!(v.apply(2, nack()), requeued);
    // Second delivery = first retry; giving it back runs out of retries.
    assert_eq!(lease(&mut v, 3, "q", 1, 100)[0].attempts, 2);
    let dead = Outcome::Released {
        requeued: 0,
        dead_lettered: 1,
    };
    assert_eq!(v.apply(4, nack()), dead);
    assert!(v.messages("q").is_empty());
    let moved = v.messages("dead");
    assert_eq!(moved.len(), 1);
    assert_eq!((moved[0].message_id.as_str(), moved[0].attempts), ("m", 0));
    assert_eq!(
        (moved[0].state.clone(), moved[0].enqueued_at_ms),
        (MessageState::Ready, 0)
    );
    assert_eq!(ids(&lease(&mut v, 5, "dead", 1, 100)), ["m"]);
}

#[test]
fn queue_expired_lease_out_of_retries_is_dead_lettered_ready() {
    let mut v = AppliedViews::default();
    let settings = QueueSettings {
        max_retries: 0,
        dead_letter_queue: Some("dead".to_string()),
        ..fifo(10)
    };
    declare(&mut v, 0, "q", settings);
    send(&mut v, 0, "q", vec![message("m")]);
    lease(&mut v, 1, "q", 1, 10);
    let fired = fire(&mut v, 11, 10);
    assert_eq!((fired.leases_expired, fired.dead_lettered), (1, 1));
    // Which queues changed (to wake consumers) is the change feed's job:
    // change_feed_test checks that the dead-letter queue is named.
    assert_eq!(v.queue("dead").ready, 1, "{fired:?}");
}

#[test]
fn queue_dedup_window_refuses_a_client_id_then_accepts_it_after_closing() {
    let mut v = AppliedViews::default();
    let settings = QueueSettings {
        dedup_window_ms: Some(100),
        ..fifo(10)
    };
    declare(&mut v, 0, "q", settings);
    let client = NewMessage {
        client_id: true,
        ..message("once")
    };
    // Leases and acks the one message of the queue.
    let take = |v: &mut AppliedViews, now| {
        assert_eq!(ids(&lease(v, now, "q", 1, 1)), ["once"]);
        let ack = EventKind::MessageAcked {
            queue: "q".to_string(),
            message_id: "once".to_string(),
            consumer: "c".to_string(),
        };
        assert!(matches!(v.apply(now, ack), Outcome::Acked { .. }));
    };
    let accepted = sent(&[("once", false)]);
    let duplicate = sent(&[("once", true)]);
    assert_eq!(send(&mut v, 1_000, "q", vec![client.clone()]), accepted);
    // In the queue still: a duplicate.
    assert_eq!(send(&mut v, 1_010, "q", vec![client.clone()]), duplicate);
    take(&mut v, 1_020);
    // Gone from the queue, but its window is open until 1_100; a
    // server-chosen id is not held by the window.
    assert_eq!(
        send(&mut v, 1_099, "q", vec![client.clone(), message("once")]),
        sent(&[("once", true), ("once", false)])
    );
    take(&mut v, 1_099);
    // The window ends at 1_100 whether or not its timer has fired; the
    // accepted send opens a new one, until 1_200.
    assert_eq!(send(&mut v, 1_100, "q", vec![client.clone()]), accepted);
    take(&mut v, 1_100);
    assert_eq!(fire(&mut v, 1_199, 10), FiredTimers::default());
    assert_eq!(send(&mut v, 1_199, "q", vec![client.clone()]), duplicate);
    assert_eq!(fire(&mut v, 1_200, 10).dedup_ended, 1);
    assert_eq!(send(&mut v, 1_200, "q", vec![client]), accepted);
}

#[test]
fn queue_ttl_removes_messages_in_any_state() {
    let mut v = AppliedViews::default();
    let settings = QueueSettings {
        message_ttl_ms: Some(50),
        ..fifo(10)
    };
    declare(&mut v, 0, "q", settings);
    let short = NewMessage {
        ttl_ms: Some(10),
        ..message("short")
    };
    let delayed = NewMessage {
        delay_ms: 1_000,
        ..message("delayed")
    };
    send(&mut v, 0, "q", vec![message("leased"), short, delayed]);
    lease(&mut v, 0, "q", 1, 1_000);
    assert_eq!(fire(&mut v, 9, 10), FiredTimers::default());
    let fired = fire(&mut v, 10, 10);
    assert_eq!(fired.messages_expired, 1);
    let left: Vec<String> = v.messages("q").into_iter().map(|m| m.message_id).collect();
    assert_eq!(left, ["leased", "delayed"]);
    let fired = fire(&mut v, 50, 10);
    assert_eq!(fired.messages_expired, 2);
    assert!(v.messages("q").is_empty());
    let q = v.queue("q");
    assert_eq!((q.ready, q.delayed, q.in_flight), (0, 0, 0));
    assert_eq!(fire(&mut v, 5_000, 10), FiredTimers::default());
}

#[test]
fn queue_redeclare_with_other_settings_is_refused_naming_the_field() {
    let mut v = AppliedViews::default();
    declare(&mut v, 0, "q", fifo(10));
    declare(&mut v, 1, "q", fifo(10));
    let other = QueueSettings {
        max_retries: 7,
        ..fifo(10)
    };
    let kind = EventKind::QueueDeclared {
        name: "q".to_string(),
        settings: other,
    };
    match v.apply(2, kind) {
        Outcome::Rejected { reason } => {
            assert!(reason.contains("max_retries: 3 -> 7"), "{reason}");
            assert!(!reason.contains("max_size"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(v.queue("q").settings, fifo(10));
}

#[test]
fn queue_full_rejects_the_whole_send() {
    let mut v = AppliedViews::default();
    declare(&mut v, 0, "q", fifo(3));
    send(&mut v, 0, "q", vec![message("a"), message("b")]);
    let outcome = send(&mut v, 1, "q", vec![message("c"), message("d")]);
    assert!(
        matches!(&outcome, Outcome::Rejected { reason } if reason.contains("full")),
        "{outcome:?}"
    );
    assert_eq!(v.messages("q").len(), 2);
    assert_eq!(v.queue("q").next_seq, 3);
    assert_eq!(
        send(&mut v, 1, "q", vec![message("c")]),
        sent(&[("c", false)])
    );
}

#[test]
fn queue_full_still_answers_duplicates() {
    let mut v = AppliedViews::default();
    declare(&mut v, 0, "q", fifo(2));
    send(&mut v, 0, "q", vec![message("a"), message("b")]);
    // A retried batch adds nothing, so it does not exceed max_size.
    let retry = send(&mut v, 1, "q", vec![message("a"), message("b")]);
    assert_eq!(retry, sent(&[("a", true), ("b", true)]));
    let with_new = send(&mut v, 1, "q", vec![message("a"), message("c")]);
    assert!(matches!(with_new, Outcome::Rejected { .. }), "{with_new:?}");
}

#[test]
fn queue_timers_fire_up_to_max_even_when_one_removes_another() {
    let mut v = AppliedViews::default();
    declare(&mut v, 0, "q", fifo(10));
    // TTL at 10 removes "a" and with it its delay timer at 20.
    let a = NewMessage {
        delay_ms: 20,
        ttl_ms: Some(10),
        ..message("a")
    };
    let b = NewMessage {
        delay_ms: 30,
        ..message("b")
    };
    send(&mut v, 0, "q", vec![a, b]);
    let fired = fire(&mut v, 100, 2);
    assert_eq!((fired.messages_expired, fired.delays_ended), (1, 1));
    assert!(!fired.more_due, "{fired:?}");
    assert_eq!(ids(&lease(&mut v, 100, "q", 5, 10)), ["b"]);
}

#[test]
fn queue_timer_removed_by_an_earlier_one_is_not_more_due() {
    let mut v = AppliedViews::default();
    declare(&mut v, 0, "q", fifo(10));
    // TTL at 1_000 fires first and takes the delay timer at 1_010 with it.
    let m = NewMessage {
        delay_ms: 10,
        ttl_ms: Some(0),
        ..message("m")
    };
    send(&mut v, 1_000, "q", vec![m]);
    let fired = fire(&mut v, 1_010, 1);
    assert_eq!((fired.messages_expired, fired.more_due), (1, false));
}
