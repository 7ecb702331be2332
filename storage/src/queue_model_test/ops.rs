//! The generator: random queue runs (proptest strategies) over a few
//! queues, consumers, topics and settings, and the event each op becomes.

use proptest::prelude::*;

use super::model::Held;
use crate::event::{Delivery, EventKind, NewMessage, QueueSettings, QueueType};

const QUEUES: [&str; 3] = ["q0", "q1", "dlq"];
const CONSUMERS: [&str; 2] = ["c0", "c1"];
const TOPICS: [&str; 3] = ["a.x", "a.y", "b.x"];
const PATTERNS: [&str; 4] = ["a.*", "#", "b.x", "*.y"];

#[derive(Clone, Debug)]
pub(super) struct MsgSpec {
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
pub(super) enum Aim {
    Holder,
    Past,
    OtherConsumer,
    UnknownId,
}

#[derive(Clone, Debug)]
pub(super) enum Op {
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
pub(super) struct Run {
    variants: Vec<QueueSettings>,
    pub(super) declare_q1: bool,
    pub(super) ops: Vec<(u64, Op)>,
}

pub(super) fn run() -> impl Strategy<Value = Run> {
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

/// Turns a generated op into an event, given the current leases and the
/// at-least-once deliveries so far.
pub(super) fn event_kind(run: &Run, op: &Op, leases: &[Held], deliveries: &[Held]) -> EventKind {
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
