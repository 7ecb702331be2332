//! Model test of the queue views: random queue events applied through
//! [`apply`] on [`MemViews`] must agree, event by event, with a small
//! in-memory model written from the queue semantics (not from
//! `views::queue_apply`), and the stored rows and indexes must equal what the
//! model holds after every event. Unit tests pin single behaviours.
//!
//! Where the semantics leave a choice open, the model pins the choice apply
//! makes, so changing it is deliberate: an auto-declared dead-letter queue
//! is FIFO with the source's sizes and no TTL, dedup or DLQ of its own;
//! redeclaring with equal settings is a no-op even if the dead-letter queue
//! was deleted since; a dead-lettered message gets priority 0 and no TTL, and
//! is dropped if its id is already in the dead-letter queue; a purge keeps
//! the dedup windows. Timers fire in key order (due, kind, queue, target).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::codec;
use crate::event::{
    DeliveredMessage, Delivery, EventKind, FiredTimers, NewMessage, Outcome, QueueSettings,
    QueueType, SentMessage,
};
use crate::replay::MemViews;
use crate::test_views::{AppliedViews, all_keys, all_rows};
use crate::topic::pattern_matches;
use crate::views::{
    DedupRow, MessageRow, MessageState, QueueRow, RowStore, Timer, TimerKind, View,
};

// ---------------------------------------------------------------- model

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Ready,
    Delayed,
    Leased { consumer: String, deadline_ms: u64 },
}

#[derive(Clone, Debug)]
struct Msg {
    seq: u64,
    id: String,
    topic: String,
    payload: String,
    priority: u8,
    delivery: Delivery,
    enqueued_at_ms: u64,
    ready_at_ms: u64,
    expires_at_ms: Option<u64>,
    attempts: u32,
    state: State,
}

#[derive(Clone, Debug)]
struct Queue {
    settings: QueueSettings,
    created_at_ms: u64,
    next_seq: u64,
    /// By seq.
    messages: BTreeMap<u64, Msg>,
    /// Client message id → end of its dedup window.
    dedup: BTreeMap<String, u64>,
}

/// What a pending deadline does; declared in firing order for equal times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    DelayEnds,
    LeaseExpires,
    MessageExpires,
    DedupEnds,
}

/// A pending deadline: (due, what, queue, seq or client id).
type ModelTimer = (u64, Due, String, Target);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Seq(u64),
    Id(String),
}

impl Queue {
    fn new(now: u64, settings: QueueSettings) -> Queue {
        Queue {
            settings,
            created_at_ms: now,
            next_seq: 1,
            messages: BTreeMap::new(),
            dedup: BTreeMap::new(),
        }
    }

    fn size(&self) -> u64 {
        self.messages.len() as u64
    }

    fn count(&self, state: fn(&State) -> bool) -> u64 {
        self.messages.values().filter(|m| state(&m.state)).count() as u64
    }

    fn seq_of(&self, id: &str) -> Option<u64> {
        self.messages.values().find(|m| m.id == id).map(|m| m.seq)
    }

    /// Sends one message (no size check); whether it was a duplicate.
    fn send_one(&mut self, now: u64, m: &NewMessage) -> SentMessage {
        let in_window = m.client_id && self.dedup.get(&m.message_id).is_some_and(|end| *end > now);
        let duplicate = self.seq_of(&m.message_id).is_some() || in_window;
        if !duplicate {
            if let (true, Some(window)) = (m.client_id, self.settings.dedup_window_ms) {
                self.dedup.insert(m.message_id.clone(), now + window);
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let ready_at_ms = now + m.delay_ms;
            let msg = Msg {
                seq,
                id: m.message_id.clone(),
                topic: m.topic.clone(),
                payload: m.payload.clone(),
                priority: if self.settings.queue_type == QueueType::Priority {
                    m.priority
                } else {
                    0
                },
                delivery: m.delivery,
                enqueued_at_ms: now,
                ready_at_ms,
                expires_at_ms: m.ttl_ms.or(self.settings.message_ttl_ms).map(|t| now + t),
                attempts: 0,
                state: if ready_at_ms <= now {
                    State::Ready
                } else {
                    State::Delayed
                },
            };
            self.messages.insert(seq, msg);
        }
        SentMessage {
            message_id: m.message_id.clone(),
            duplicate,
        }
    }

    fn timers(&self, name: &str, out: &mut Vec<ModelTimer>) {
        for m in self.messages.values() {
            let seq = Target::Seq(m.seq);
            match &m.state {
                State::Ready => {}
                State::Delayed => {
                    out.push((m.ready_at_ms, Due::DelayEnds, name.into(), seq.clone()))
                }
                State::Leased { deadline_ms, .. } => {
                    out.push((*deadline_ms, Due::LeaseExpires, name.into(), seq.clone()))
                }
            }
            if let Some(at) = m.expires_at_ms {
                out.push((at, Due::MessageExpires, name.into(), seq));
            }
        }
        for (id, end) in &self.dedup {
            out.push((*end, Due::DedupEnds, name.into(), Target::Id(id.clone())));
        }
    }
}

fn refused() -> Outcome {
    Outcome::Rejected {
        reason: String::new(),
    }
}

/// The queue state, kept the simplest way: messages per queue with their
/// state; timers are derived from the messages, not stored.
#[derive(Default)]
struct Model {
    queues: BTreeMap<String, Queue>,
}

impl Model {
    /// The expected outcome. `Rejected` carries no reason.
    fn apply(&mut self, now: u64, kind: &EventKind) -> Outcome {
        match kind {
            EventKind::QueueDeclared { name, settings } => self.declare(now, name, settings),
            EventKind::QueueDeleted { name } => match self.queues.remove(name) {
                Some(_) => Outcome::Applied,
                None => refused(),
            },
            EventKind::QueuePurged { name } => match self.queues.get_mut(name) {
                Some(q) => {
                    q.messages.clear();
                    Outcome::Applied
                }
                None => refused(),
            },
            EventKind::MessagesSent { queue, messages } => {
                let Some(q) = self.queues.get_mut(queue) else {
                    return refused();
                };
                let mut trial = q.clone();
                let sent = messages.iter().map(|m| trial.send_one(now, m)).collect();
                if trial.size() > trial.settings.max_size {
                    return refused();
                }
                *q = trial;
                Outcome::Sent { messages: sent }
            }
            EventKind::MessagesLeased {
                queue,
                consumer,
                max,
                lease_ms,
                topic_pattern,
            } => self.lease(
                now,
                queue,
                consumer,
                *max,
                *lease_ms,
                topic_pattern.as_deref(),
            ),
            EventKind::MessageAcked {
                queue,
                message_id,
                consumer,
            } => {
                let Some(seq) = self.leased_to(queue, message_id, consumer) else {
                    return refused();
                };
                let m = self.queues.get_mut(queue).unwrap().messages.remove(&seq);
                Outcome::Acked {
                    enqueued_at_ms: m.unwrap().enqueued_at_ms,
                }
            }
            EventKind::MessageNacked {
                queue,
                message_id,
                consumer,
                delay_ms,
            } => {
                let Some(seq) = self.leased_to(queue, message_id, consumer) else {
                    return refused();
                };
                let dead = self.release(now, queue, seq, *delay_ms);
                Outcome::Released {
                    requeued: u64::from(!dead),
                    dead_lettered: u64::from(dead),
                }
            }
            EventKind::LeasesReleased {
                queue,
                consumer,
                message_ids,
            } => {
                if !self.queues.contains_key(queue) {
                    return refused();
                }
                let (mut requeued, mut dead_lettered) = (0, 0);
                for id in message_ids {
                    if let Some(seq) = self.leased_to(queue, id, consumer) {
                        match self.release(now, queue, seq, 0) {
                            true => dead_lettered += 1,
                            false => requeued += 1,
                        }
                    }
                }
                Outcome::Released {
                    requeued,
                    dead_lettered,
                }
            }
            EventKind::TimersFired { max } => self.fire_timers(now, *max),
            other => panic!("not a queue event: {other:?}"),
        }
    }

    fn declare(&mut self, now: u64, name: &str, settings: &QueueSettings) -> Outcome {
        if settings.max_size == 0 || settings.dead_letter_queue.as_deref() == Some(name) {
            return refused();
        }
        if let Some(existing) = self.queues.get(name) {
            return if existing.settings == *settings {
                Outcome::Applied
            } else {
                refused()
            };
        }
        if let Some(dlq) = &settings.dead_letter_queue
            && !self.queues.contains_key(dlq)
        {
            let dlq_settings = QueueSettings {
                queue_type: QueueType::Fifo,
                message_ttl_ms: None,
                dead_letter_queue: None,
                dedup_window_ms: None,
                ..settings.clone()
            };
            self.queues
                .insert(dlq.clone(), Queue::new(now, dlq_settings));
        }
        self.queues
            .insert(name.to_string(), Queue::new(now, settings.clone()));
        Outcome::Applied
    }

    fn lease(
        &mut self,
        now: u64,
        queue: &str,
        consumer: &str,
        max: u32,
        lease_ms: u64,
        pattern: Option<&str>,
    ) -> Outcome {
        let Some(q) = self.queues.get_mut(queue) else {
            return refused();
        };
        let mut ready: Vec<&Msg> = q
            .messages
            .values()
            .filter(|m| m.state == State::Ready)
            .filter(|m| pattern.is_none_or(|p| pattern_matches(p, &m.topic)))
            .collect();
        ready.sort_by_key(|m| (255 - m.priority, m.ready_at_ms, m.seq));
        let chosen: Vec<u64> = ready.iter().take(max as usize).map(|m| m.seq).collect();
        let mut delivered = Vec::new();
        for seq in chosen {
            let m = q.messages.get_mut(&seq).unwrap();
            m.attempts += 1;
            let mut lease_deadline_ms = None;
            if m.delivery == Delivery::AtLeastOnce {
                lease_deadline_ms = Some(now + lease_ms);
                m.state = State::Leased {
                    consumer: consumer.to_string(),
                    deadline_ms: now + lease_ms,
                };
            }
            let m = if lease_deadline_ms.is_some() {
                m.clone()
            } else {
                q.messages.remove(&seq).unwrap()
            };
            delivered.push(DeliveredMessage {
                message_id: m.id,
                topic: m.topic,
                payload: m.payload,
                priority: m.priority,
                attempts: m.attempts,
                delivery: m.delivery,
                enqueued_at_ms: m.enqueued_at_ms,
                lease_deadline_ms,
            });
        }
        Outcome::Delivered {
            messages: delivered,
        }
    }

    /// Every current lease.
    fn leases(&self) -> Vec<Held> {
        let mut out = Vec::new();
        for (name, q) in &self.queues {
            for m in q.messages.values() {
                if let State::Leased { consumer, .. } = &m.state {
                    out.push((name.clone(), m.id.clone(), consumer.clone()));
                }
            }
        }
        out
    }

    /// The seq of `id` if `consumer` holds its lease.
    fn leased_to(&self, queue: &str, id: &str, consumer: &str) -> Option<u64> {
        let q = self.queues.get(queue)?;
        let seq = q.seq_of(id)?;
        match &q.messages[&seq].state {
            State::Leased { consumer: c, .. } if c == consumer => Some(seq),
            _ => None,
        }
    }

    /// Ends a lease: ready again after `delay_ms`, or dead-lettered when
    /// delivered more than `max_retries` times after the first. Returns
    /// whether it was dead-lettered.
    fn release(&mut self, now: u64, queue: &str, seq: u64, delay_ms: u64) -> bool {
        let q = self.queues.get_mut(queue).unwrap();
        let m = q.messages.get_mut(&seq).unwrap();
        if m.attempts <= q.settings.max_retries {
            m.ready_at_ms = now + delay_ms;
            if delay_ms == 0 {
                m.state = State::Ready;
                return false;
            }
            m.state = State::Delayed;
            return false;
        }
        let m = q.messages.remove(&seq).unwrap();
        let Some(dlq_name) = q.settings.dead_letter_queue.clone() else {
            return true;
        };
        let Some(dlq) = self.queues.get_mut(&dlq_name) else {
            return true;
        };
        if dlq.seq_of(&m.id).is_some() || dlq.size() >= dlq.settings.max_size {
            return true;
        }
        let seq = dlq.next_seq;
        dlq.next_seq += 1;
        dlq.messages.insert(
            seq,
            Msg {
                seq,
                priority: 0,
                delivery: Delivery::AtLeastOnce,
                ready_at_ms: now,
                expires_at_ms: None,
                attempts: 0,
                state: State::Ready,
                ..m
            },
        );
        true
    }

    /// Every pending deadline, in firing order.
    fn timers(&self) -> Vec<ModelTimer> {
        let mut out = Vec::new();
        for (name, q) in &self.queues {
            q.timers(name, &mut out);
        }
        out.sort();
        out
    }

    fn fire_timers(&mut self, now: u64, max: u32) -> Outcome {
        let mut fired = FiredTimers::default();
        let mut count = 0;
        while let Some((_, due, queue, target)) =
            self.timers().into_iter().next().filter(|t| t.0 <= now)
        {
            if count == max {
                fired.more_due = true;
                break;
            }
            count += 1;
            let q = self.queues.get_mut(&queue).unwrap();
            match (due, target) {
                (Due::DelayEnds, Target::Seq(seq)) => {
                    q.messages.get_mut(&seq).unwrap().state = State::Ready;
                    fired.delays_ended += 1;
                }
                (Due::LeaseExpires, Target::Seq(seq)) => {
                    fired.leases_expired += 1;
                    let dead = self.release(now, &queue, seq, 0);
                    fired.dead_lettered += u64::from(dead);
                }
                (Due::MessageExpires, Target::Seq(seq)) => {
                    q.messages.remove(&seq);
                    fired.messages_expired += 1;
                }
                (Due::DedupEnds, Target::Id(id)) => {
                    q.dedup.remove(&id);
                    fired.dedup_ended += 1;
                }
                other => unreachable!("{other:?}"),
            }
        }
        Outcome::TimersFired(fired)
    }
}

/// Whether apply's outcome is the one the model expects (a `Rejected`
/// matches whatever its reason).
fn agrees(expected: &Outcome, actual: &Outcome) -> bool {
    match (expected, actual) {
        (Outcome::Rejected { .. }, Outcome::Rejected { .. }) => true,
        (e, a) => e == a,
    }
}

// ------------------------------------------------------ reading the views

fn timer_key((due_ms, due, queue, target): &ModelTimer) -> Vec<u8> {
    let kind = match due {
        Due::DelayEnds => TimerKind::DelayEnds,
        Due::LeaseExpires => TimerKind::LeaseExpires,
        Due::MessageExpires => TimerKind::MessageExpires,
        Due::DedupEnds => TimerKind::DedupEnds,
    };
    let target = match target {
        Target::Seq(seq) => seq.to_be_bytes().to_vec(),
        Target::Id(id) => id.as_bytes().to_vec(),
    };
    Timer {
        due_ms: *due_ms,
        kind,
        queue: queue.clone(),
        target,
    }
    .key()
}

fn message_row(queue: &str, m: &Msg) -> MessageRow {
    MessageRow {
        queue: queue.to_string(),
        seq: m.seq,
        message_id: m.id.clone(),
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        priority: m.priority,
        delivery: m.delivery,
        enqueued_at_ms: m.enqueued_at_ms,
        ready_at_ms: m.ready_at_ms,
        expires_at_ms: m.expires_at_ms,
        attempts: m.attempts,
        state: match &m.state {
            State::Ready => MessageState::Ready,
            State::Delayed => MessageState::Delayed,
            State::Leased {
                consumer,
                deadline_ms,
            } => MessageState::Leased {
                consumer: consumer.clone(),
                deadline_ms: *deadline_ms,
            },
        },
    }
}

/// Every queue row and index equals what the model holds.
fn check_views(views: &MemViews, model: &Model) -> std::result::Result<(), TestCaseError> {
    let queues: BTreeMap<Vec<u8>, QueueRow> = all_rows(views, View::Queues).into_iter().collect();
    let expected: BTreeMap<Vec<u8>, QueueRow> = model
        .queues
        .iter()
        .map(|(name, q)| {
            let row = QueueRow {
                name: name.clone(),
                settings: q.settings.clone(),
                created_at_ms: q.created_at_ms,
                next_seq: q.next_seq,
                ready: q.count(|s| *s == State::Ready),
                delayed: q.count(|s| *s == State::Delayed),
                in_flight: q.count(|s| matches!(s, State::Leased { .. })),
            };
            (QueueRow::key(name), row)
        })
        .collect();
    prop_assert_eq!(queues, expected, "queue rows");

    let messages: BTreeMap<Vec<u8>, MessageRow> =
        all_rows(views, View::QueueMessages).into_iter().collect();
    let expected: BTreeMap<Vec<u8>, MessageRow> = model
        .queues
        .iter()
        .flat_map(|(name, q)| {
            q.messages
                .values()
                .map(move |m| (MessageRow::key(name, m.seq), message_row(name, m)))
        })
        .collect();
    prop_assert_eq!(&messages, &expected, "message rows");

    let ready: BTreeSet<Vec<u8>> = expected
        .values()
        .filter(|m| m.state == MessageState::Ready)
        .map(MessageRow::ready_key)
        .collect();
    prop_assert_eq!(all_keys(views, View::QueueReady), ready, "ready index");

    let ids: BTreeMap<Vec<u8>, u64> = all_rows(views, View::QueueMessageIds).into_iter().collect();
    let expected_ids: BTreeMap<Vec<u8>, u64> = expected
        .values()
        .map(|m| (MessageRow::id_key(&m.queue, &m.message_id), m.seq))
        .collect();
    prop_assert_eq!(ids, expected_ids, "message id index");

    let dedup: BTreeMap<Vec<u8>, DedupRow> =
        all_rows(views, View::QueueDedup).into_iter().collect();
    let expected_dedup: BTreeMap<Vec<u8>, DedupRow> = model
        .queues
        .iter()
        .flat_map(|(name, q)| {
            q.dedup.iter().map(move |(id, end)| {
                let row = DedupRow {
                    expires_at_ms: *end,
                };
                (MessageRow::id_key(name, id), row)
            })
        })
        .collect();
    prop_assert_eq!(dedup, expected_dedup, "dedup windows");

    let timers: BTreeSet<Vec<u8>> = model.timers().iter().map(timer_key).collect();
    prop_assert_eq!(all_keys(views, View::QueueTimers), timers, "timers");
    Ok(())
}

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

// ------------------------------------------------------------ generator

const QUEUES: [&str; 3] = ["q0", "q1", "dlq"];
const CONSUMERS: [&str; 2] = ["c0", "c1"];
const TOPICS: [&str; 3] = ["a.x", "a.y", "b.x"];
const PATTERNS: [&str; 4] = ["a.*", "#", "b.x", "*.y"];

#[derive(Clone, Debug)]
struct MsgSpec {
    id: u8,
    client_id: bool,
    topic: usize,
    priority: u8,
    delay_ms: u64,
    ttl_ms: Option<u64>,
    delivery: Delivery,
}

/// What an ack or nack names: a current lease and its holder, a past
/// at-least-once delivery (acked, expired or re-leased since, most likely), a
/// current lease but another consumer, or an id that was never sent.
#[derive(Clone, Copy, Debug)]
enum Aim {
    Holder,
    Past,
    OtherConsumer,
    UnknownId,
}

#[derive(Clone, Debug)]
enum Op {
    Declare {
        queue: usize,
        variant: usize,
    },
    Delete {
        queue: usize,
    },
    Purge {
        queue: usize,
    },
    Send {
        queue: usize,
        messages: Vec<MsgSpec>,
    },
    Lease {
        queue: usize,
        consumer: usize,
        max: u32,
        lease_ms: u64,
        pattern: Option<usize>,
    },
    /// `pick` chooses a lease (see [`Aim`]).
    Ack {
        pick: usize,
        aim: Aim,
    },
    Nack {
        pick: usize,
        aim: Aim,
        delay_ms: u64,
    },
    /// Releases, for the first picked lease's consumer, the picked leases
    /// (some may be another consumer's).
    Release {
        picks: Vec<usize>,
    },
    Timers {
        max: u32,
    },
}

/// A duration of `n` ticks of 5 ms: times, delays and deadlines in
/// coarse steps meet exactly often, so boundaries (`<` vs `<=`) are hit.
fn ticks(n: std::ops::Range<u64>) -> impl Strategy<Value = u64> {
    n.prop_map(|n| n * 5)
}

/// Settings for `QUEUES[own]`; the dead-letter queue is mostly `dlq`, and
/// rarely the queue itself (refused).
fn settings(own: usize) -> impl Strategy<Value = QueueSettings> {
    let other = if own == 0 { QUEUES[1] } else { QUEUES[0] };
    (
        prop_oneof![
            Just(QueueType::Fifo),
            Just(QueueType::Priority),
            Just(QueueType::Delay)
        ],
        1u64..8,
        prop_oneof![3 => Just(None), 1 => ticks(0..16).prop_map(Some)],
        0u32..3,
        prop_oneof![
            3 => Just(None),
            12 => Just(Some("dlq")),
            3 => Just(Some(other)),
            1 => Just(Some(QUEUES[own])),
        ],
        proptest::option::of(ticks(0..12)),
    )
        .prop_map(
            |(queue_type, max_size, message_ttl_ms, max_retries, dlq, dedup_window_ms)| {
                QueueSettings {
                    queue_type,
                    max_size,
                    visibility_timeout_ms: 30,
                    ack_timeout_ms: 30,
                    message_ttl_ms,
                    max_retries,
                    dead_letter_queue: dlq.map(String::from),
                    dedup_window_ms,
                }
            },
        )
}

fn msg_spec() -> impl Strategy<Value = MsgSpec> {
    (
        0u8..4,
        any::<bool>(),
        0..TOPICS.len(),
        prop_oneof![4 => 0u8..4, 1 => Just(255u8)],
        prop_oneof![3 => Just(0u64), 1 => ticks(1..8)],
        prop_oneof![3 => Just(None), 1 => ticks(0..16).prop_map(Some)],
        prop_oneof![
            3 => Just(Delivery::AtLeastOnce),
            1 => Just(Delivery::AtMostOnce),
            1 => Just(Delivery::Broadcast),
        ],
    )
        .prop_map(
            |(id, client_id, topic, priority, delay_ms, ttl_ms, delivery)| MsgSpec {
                id,
                client_id,
                topic,
                priority,
                delay_ms,
                ttl_ms,
                delivery,
            },
        )
}

fn aim() -> impl Strategy<Value = Aim> {
    prop_oneof![
        6 => Just(Aim::Holder),
        1 => Just(Aim::Past),
        1 => Just(Aim::OtherConsumer),
        1 => Just(Aim::UnknownId),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let queue = || prop_oneof![6 => Just(0usize), 3 => Just(1usize), 1 => Just(2usize)];
    prop_oneof![
        3 => (queue(), 0usize..2).prop_map(|(queue, variant)| Op::Declare { queue, variant }),
        1 => queue().prop_map(|queue| Op::Delete { queue }),
        1 => queue().prop_map(|queue| Op::Purge { queue }),
        12 => (queue(), proptest::collection::vec(msg_spec(), 0..5))
            .prop_map(|(queue, messages)| Op::Send { queue, messages }),
        10 => (
            queue(),
            0..CONSUMERS.len(),
            prop_oneof![1 => Just(0u32), 5 => 1u32..4],
            ticks(0..16),
            prop_oneof![3 => Just(None), 1 => (0..PATTERNS.len()).prop_map(Some)],
        )
            .prop_map(|(queue, consumer, max, lease_ms, pattern)| Op::Lease {
                queue,
                consumer,
                max,
                lease_ms,
                pattern,
            }),
        6 => (any::<usize>(), aim()).prop_map(|(pick, aim)| Op::Ack { pick, aim }),
        5 => (any::<usize>(), aim(), prop_oneof![Just(0u64), ticks(1..6)])
            .prop_map(|(pick, aim, delay_ms)| Op::Nack { pick, aim, delay_ms }),
        2 => proptest::collection::vec(any::<usize>(), 1..4)
            .prop_map(|picks| Op::Release { picks }),
        8 => prop_oneof![1 => 0u32..3, 3 => Just(1000u32)].prop_map(|max| Op::Timers { max }),
    ]
}

/// A generated run: settings variants per queue, whether `q1` is declared
/// up front, and the ops with the time step before each.
#[derive(Clone, Debug)]
struct Run {
    variants: Vec<QueueSettings>,
    declare_q1: bool,
    ops: Vec<(u64, Op)>,
}

fn run() -> impl Strategy<Value = Run> {
    (
        (0..QUEUES.len() * 2)
            .map(|i| settings(i / 2))
            .collect::<Vec<_>>(),
        any::<bool>(),
        proptest::collection::vec(
            (prop_oneof![1 => Just(0u64), 3 => ticks(1..4)], op()),
            1..60,
        ),
    )
        .prop_map(|(variants, declare_q1, ops)| Run {
            variants,
            declare_q1,
            ops,
        })
}

/// A lease or delivery: (queue, message id, consumer).
type Held = (String, String, String);

/// Turns a generated op into an event, given the current leases and the
/// at-least-once deliveries so far.
fn event_kind(run: &Run, op: &Op, leases: &[Held], deliveries: &[Held]) -> EventKind {
    let picked = |pick: usize, aim: Aim| {
        let from = match aim {
            Aim::Past => deliveries,
            _ => leases,
        };
        let (queue, id, consumer) = if from.is_empty() {
            ("q0".to_string(), "m0".to_string(), "c0".to_string())
        } else {
            from[pick % from.len()].clone()
        };
        match aim {
            Aim::Holder | Aim::Past => (queue, id, consumer),
            Aim::OtherConsumer => {
                let other = if consumer == CONSUMERS[0] {
                    CONSUMERS[1]
                } else {
                    CONSUMERS[0]
                };
                (queue, id, other.to_string())
            }
            Aim::UnknownId => (queue, "never-sent".to_string(), consumer),
        }
    };
    match op {
        Op::Declare { queue, variant } => EventKind::QueueDeclared {
            name: QUEUES[*queue].to_string(),
            settings: run.variants[queue * 2 + variant].clone(),
        },
        Op::Delete { queue } => EventKind::QueueDeleted {
            name: QUEUES[*queue].to_string(),
        },
        Op::Purge { queue } => EventKind::QueuePurged {
            name: QUEUES[*queue].to_string(),
        },
        Op::Send { queue, messages } => EventKind::MessagesSent {
            queue: QUEUES[*queue].to_string(),
            messages: messages
                .iter()
                .enumerate()
                .map(|(i, m)| NewMessage {
                    message_id: format!("m{}", m.id),
                    client_id: m.client_id,
                    topic: TOPICS[m.topic].to_string(),
                    payload: format!("[{},{i}]", m.id),
                    priority: m.priority,
                    delay_ms: m.delay_ms,
                    ttl_ms: m.ttl_ms,
                    delivery: m.delivery,
                })
                .collect(),
        },
        Op::Lease {
            queue,
            consumer,
            max,
            lease_ms,
            pattern,
        } => EventKind::MessagesLeased {
            queue: QUEUES[*queue].to_string(),
            consumer: CONSUMERS[*consumer].to_string(),
            max: *max,
            lease_ms: *lease_ms,
            topic_pattern: pattern.map(|p| PATTERNS[p].to_string()),
        },
        Op::Ack { pick, aim } => {
            let (queue, message_id, consumer) = picked(*pick, *aim);
            EventKind::MessageAcked {
                queue,
                message_id,
                consumer,
            }
        }
        Op::Nack {
            pick,
            aim,
            delay_ms,
        } => {
            let (queue, message_id, consumer) = picked(*pick, *aim);
            EventKind::MessageNacked {
                queue,
                message_id,
                consumer,
                delay_ms: *delay_ms,
            }
        }
        Op::Release { picks } => {
            let (queue, _, consumer) = picked(picks[0], Aim::Holder);
            EventKind::LeasesReleased {
                queue,
                consumer,
                message_ids: picks.iter().map(|p| picked(*p, Aim::Holder).1).collect(),
            }
        }
        Op::Timers { max } => EventKind::TimersFired { max: *max },
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
        let actual = views.apply(now, kind.clone());
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
