//! Reading the views back: the stored queue rows, messages, ready index,
//! message ids, dedup windows and timers must equal what the model holds.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::model::{Due, Model, ModelTimer, Msg, State, Target};
use crate::replay::MemViews;
use crate::test_views::{all_keys, all_rows};
use crate::views::{DedupRow, MessageRow, MessageState, QueueRow, Timer, TimerKind, View};

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
pub(super) fn check_views(
    views: &MemViews,
    model: &Model,
) -> std::result::Result<(), TestCaseError> {
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
