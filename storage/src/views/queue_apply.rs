//! Apply for queue events: declare, send, lease, ack, nack, release, purge
//! and delete, and the firing of queue timers ([`fire`], called from
//! [`super::timers`]).
//!
//! Every message is in exactly one state and has exactly the index rows of
//! that state: ready → a `queue_ready` key; delayed → a delay timer; leased →
//! a lease timer. [`unplace`] and [`place`] move a message between states
//! and keep the queue's counters equal to those rows. Time is the event's:
//! a timer fires only through `TimersFired`, which the leader proposes.

use std::collections::BTreeSet;

use serde::Serialize;

use super::View;
use super::queue_rows::{
    DedupRow, MessageRow, MessageState, QueueRow, Timer, TimerKind, queue_prefix, seq_of_ready_key,
};
use super::txn::{RowStore, ViewTxn, check_ids, check_step_limit, rejected, stepped};
use crate::error::Result;
use crate::event::{
    DeliveredMessage, Delivery, EventKind, FiredTimers, NewMessage, Outcome, QueueSettings,
    QueueType, SentMessage,
};
use crate::topic::pattern_matches;

/// Rows read per scan step.
const SCAN_CHUNK: usize = 256;
/// [`SCAN_CHUNK`] as a step limit.
const SCAN_CHUNK_U32: u32 = SCAN_CHUNK as u32;
/// Most ready messages one lease looks at when a topic pattern filters them.
const MAX_LEASE_SCAN: usize = 10_000;

fn unknown_queue(name: &str) -> Outcome {
    rejected(format!("unknown queue {name}"))
}

fn load_queue<S: RowStore>(txn: &ViewTxn<'_, S>, name: &str) -> Result<Option<QueueRow>> {
    txn.get(View::Queues, &QueueRow::key(name))
}

fn save_queue<S: RowStore>(txn: &mut ViewTxn<'_, S>, queue: &QueueRow) -> Result<()> {
    txn.put(View::Queues, QueueRow::key(&queue.name), queue)
}

fn message_by_id<S: RowStore>(
    txn: &ViewTxn<'_, S>,
    queue: &str,
    message_id: &str,
) -> Result<Option<MessageRow>> {
    match txn.get::<u64>(
        View::QueueMessageIds,
        &MessageRow::id_key(queue, message_id),
    )? {
        Some(seq) => txn.get(View::QueueMessages, &MessageRow::key(queue, seq)),
        None => Ok(None),
    }
}

/// Whether a message's rows are new (its keys carry a sequence number its
/// queue has not used, and its id was found absent) or already written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rows {
    New,
    Written,
}

fn put_row<S: RowStore, T: Serialize>(
    txn: &mut ViewTxn<'_, S>,
    rows: Rows,
    view: View,
    key: Vec<u8>,
    row: &T,
) -> Result<()> {
    match rows {
        Rows::New => txn.put_new(view, key, row),
        Rows::Written => txn.put(view, key, row),
    }
}

/// Puts a message in the state its `ready_at_ms` calls for at `now`.
fn place<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    queue: &mut QueueRow,
    mut message: MessageRow,
    now: u64,
    rows: Rows,
) -> Result<()> {
    if message.ready_at_ms <= now {
        message.state = MessageState::Ready;
        put_row(txn, rows, View::QueueReady, message.ready_key(), &())?;
        queue.ready += 1;
    } else {
        message.state = MessageState::Delayed;
        let timer = message.timer(TimerKind::DelayEnds, message.ready_at_ms);
        put_row(txn, rows, View::QueueTimers, timer.key(), &())?;
        queue.delayed += 1;
    }
    put_row(
        txn,
        rows,
        View::QueueMessages,
        MessageRow::key(&queue.name, message.seq),
        &message,
    )
}

/// Removes the index row of the message's current state.
fn unplace<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    queue: &mut QueueRow,
    message: &MessageRow,
) -> Result<()> {
    match &message.state {
        MessageState::Ready => {
            txn.delete(View::QueueReady, message.ready_key())?;
            queue.ready = queue.ready.saturating_sub(1);
        }
        MessageState::Delayed => {
            let timer = message.timer(TimerKind::DelayEnds, message.ready_at_ms);
            txn.delete(View::QueueTimers, timer.key())?;
            queue.delayed = queue.delayed.saturating_sub(1);
        }
        MessageState::Leased { deadline_ms, .. } => {
            let timer = message.timer(TimerKind::LeaseExpires, *deadline_ms);
            txn.delete(View::QueueTimers, timer.key())?;
            queue.in_flight = queue.in_flight.saturating_sub(1);
        }
    }
    Ok(())
}

/// Deletes the message row, its id and its TTL timer (not its state index).
fn forget<S: RowStore>(txn: &mut ViewTxn<'_, S>, message: &MessageRow) -> Result<()> {
    txn.delete(
        View::QueueMessages,
        MessageRow::key(&message.queue, message.seq),
    )?;
    txn.delete(
        View::QueueMessageIds,
        MessageRow::id_key(&message.queue, &message.message_id),
    )?;
    if let Some(expires_at_ms) = message.expires_at_ms {
        let timer = message.timer(TimerKind::MessageExpires, expires_at_ms);
        txn.delete(View::QueueTimers, timer.key())?;
    }
    Ok(())
}

fn remove<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    queue: &mut QueueRow,
    message: &MessageRow,
) -> Result<()> {
    unplace(txn, queue, message)?;
    forget(txn, message)
}

/// Adds a new message to `queue` (id, TTL timer, state index, row): its
/// `seq` is the queue's next and its id is not in the queue, so every row
/// is new.
fn insert<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    queue: &mut QueueRow,
    message: MessageRow,
    now: u64,
) -> Result<()> {
    txn.put_new(
        View::QueueMessageIds,
        MessageRow::id_key(&queue.name, &message.message_id),
        &message.seq,
    )?;
    if let Some(expires_at_ms) = message.expires_at_ms {
        let timer = message.timer(TimerKind::MessageExpires, expires_at_ms);
        txn.put_new(View::QueueTimers, timer.key(), &())?;
    }
    place(txn, queue, message, now, Rows::New)
}

/// Moves a message that ran out of retries (already removed from its
/// queue) to the dead-letter queue, if there is one with room for it.
/// Returns whether it landed there.
fn dead_letter<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    from: &QueueRow,
    message: MessageRow,
    now: u64,
) -> Result<bool> {
    let Some(name) = &from.settings.dead_letter_queue else {
        return Ok(false);
    };
    let Some(mut dlq) = load_queue(txn, name)? else {
        return Ok(false);
    };
    let taken = txn
        .get::<u64>(
            View::QueueMessageIds,
            &MessageRow::id_key(name, &message.message_id),
        )?
        .is_some();
    if taken || dlq.size() >= dlq.settings.max_size {
        return Ok(false);
    }
    let moved = MessageRow {
        queue: dlq.name.clone(),
        seq: dlq.next_seq,
        priority: 0,
        delivery: Delivery::AtLeastOnce,
        ready_at_ms: now,
        expires_at_ms: None,
        attempts: 0,
        state: MessageState::Ready,
        ..message
    };
    dlq.next_seq += 1;
    insert(txn, &mut dlq, moved, now)?;
    save_queue(txn, &dlq)?;
    Ok(true)
}

/// Where [`release`] put a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Released {
    /// Back in its queue (ready, or delayed by the nack's delay).
    Requeued,
    /// Out of retries: moved to the dead-letter queue (`landed`) or dropped.
    DeadLettered { landed: bool },
}

/// Ends a message's lease: ready again after `delay_ms`, or dead-lettered
/// when it has been delivered more than `max_retries` times after the first.
fn release<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    queue: &mut QueueRow,
    mut message: MessageRow,
    now: u64,
    delay_ms: u64,
) -> Result<Released> {
    unplace(txn, queue, &message)?;
    if message.attempts > queue.settings.max_retries {
        forget(txn, &message)?;
        let landed = dead_letter(txn, queue, message, now)?;
        return Ok(Released::DeadLettered { landed });
    }
    message.ready_at_ms = now.saturating_add(delay_ms);
    place(txn, queue, message, now, Rows::Written)?;
    Ok(Released::Requeued)
}

/// The differences between two settings, `field: old -> new`.
fn settings_diff(old: &QueueSettings, new: &QueueSettings) -> Vec<String> {
    let mut diff = Vec::new();
    if old.queue_type != new.queue_type {
        diff.push(format!(
            "queue_type: {} -> {}",
            old.queue_type.as_str(),
            new.queue_type.as_str()
        ));
    }
    macro_rules! compare {
        ($($field:ident),*) => {$(
            if old.$field != new.$field {
                diff.push(format!(
                    "{}: {:?} -> {:?}",
                    stringify!($field),
                    old.$field,
                    new.$field
                ));
            }
        )*};
    }
    compare!(
        max_size,
        visibility_timeout_ms,
        ack_timeout_ms,
        message_ttl_ms,
        max_retries,
        dead_letter_queue,
        dedup_window_ms
    );
    diff
}

pub(super) fn declare<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    name: &str,
    settings: &QueueSettings,
) -> Result<Outcome> {
    if let Some(refused) = check_ids(&[("queue name", name)]) {
        return Ok(refused);
    }
    if settings.max_size == 0 {
        return Ok(rejected(format!(
            "queue {name}: max_size must be at least 1"
        )));
    }
    if let Some(dlq) = &settings.dead_letter_queue {
        if let Some(refused) = check_ids(&[("dead_letter_queue", dlq)]) {
            return Ok(refused);
        }
        if dlq == name {
            return Ok(rejected(format!(
                "queue {name} cannot be its own dead-letter queue"
            )));
        }
    }
    if let Some(existing) = load_queue(txn, name)? {
        let diff = settings_diff(&existing.settings, settings);
        if diff.is_empty() {
            return Ok(Outcome::Applied);
        }
        return Ok(rejected(format!(
            "queue {name} already exists with other settings ({})",
            diff.join(", ")
        )));
    }
    let new_queue = |name: &str, settings: QueueSettings| QueueRow {
        name: name.to_string(),
        settings,
        created_at_ms: now,
        next_seq: 1,
        ready: 0,
        delayed: 0,
        in_flight: 0,
    };
    if let Some(dlq) = &settings.dead_letter_queue
        && load_queue(txn, dlq)?.is_none()
    {
        let dlq_settings = QueueSettings {
            queue_type: QueueType::Fifo,
            message_ttl_ms: None,
            dead_letter_queue: None,
            dedup_window_ms: None,
            ..settings.clone()
        };
        save_queue(txn, &new_queue(dlq, dlq_settings))?;
    }
    save_queue(txn, &new_queue(name, settings.clone()))?;
    Ok(Outcome::Applied)
}

/// Removes up to `limit` messages of `queue` whose seq is in
/// `from..below` (counters included). Returns how many went and the seq to
/// resume at when some are left.
fn remove_messages<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    queue: &mut QueueRow,
    (from, below): (u64, u64),
    limit: u32,
) -> Result<(u64, Option<u64>)> {
    let prefix = queue_prefix(&queue.name);
    let start = MessageRow::key(&queue.name, from);
    let rows = txn.rows::<MessageRow>(View::QueueMessages, &prefix, &start, limit as usize + 1)?;
    let mut removed = 0;
    for (_, message) in rows {
        if message.seq >= below {
            break;
        }
        if removed == u64::from(limit) {
            return Ok((removed, Some(message.seq)));
        }
        remove(txn, queue, &message)?;
        removed += 1;
    }
    Ok((removed, None))
}

/// Removes every message of `queue` in one apply (the events written before
/// bulk steps).
fn remove_all_messages<S: RowStore>(txn: &mut ViewTxn<'_, S>, queue: &mut QueueRow) -> Result<()> {
    let mut from = 0;
    while let (_, Some(resume)) = remove_messages(txn, queue, (from, u64::MAX), SCAN_CHUNK_U32)? {
        from = resume;
    }
    Ok(())
}

/// Removes up to `limit` dedup windows of `queue` from message id `from_id`
/// on. Returns how many went and the id to resume at when some are left.
fn remove_dedup_windows<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    name: &str,
    from_id: &str,
    limit: u64,
) -> Result<(u64, Option<String>)> {
    let prefix = queue_prefix(name);
    let start = MessageRow::id_key(name, from_id);
    let rows = txn.rows::<DedupRow>(View::QueueDedup, &prefix, &start, limit as usize + 1)?;
    let mut removed = 0;
    for (key, window) in rows {
        let id = &key[prefix.len()..];
        if removed == limit {
            return Ok((removed, Some(String::from_utf8_lossy(id).into_owned())));
        }
        let timer = Timer {
            due_ms: window.expires_at_ms,
            kind: TimerKind::DedupEnds,
            queue: name.to_string(),
            target: id.to_vec(),
        };
        txn.delete(View::QueueTimers, timer.key())?;
        txn.delete(View::QueueDedup, key)?;
        removed += 1;
    }
    Ok((removed, None))
}

pub(super) fn purge<S: RowStore>(txn: &mut ViewTxn<'_, S>, name: &str) -> Result<Outcome> {
    let Some(mut queue) = load_queue(txn, name)? else {
        return Ok(unknown_queue(name));
    };
    remove_all_messages(txn, &mut queue)?;
    save_queue(txn, &queue)?;
    Ok(Outcome::Applied)
}

pub(super) fn delete<S: RowStore>(txn: &mut ViewTxn<'_, S>, name: &str) -> Result<Outcome> {
    let Some(mut queue) = load_queue(txn, name)? else {
        return Ok(unknown_queue(name));
    };
    remove_all_messages(txn, &mut queue)?;
    let mut from_id = String::new();
    while let (_, Some(resume)) =
        remove_dedup_windows(txn, name, &from_id, u64::from(SCAN_CHUNK_U32))?
    {
        from_id = resume;
    }
    txn.delete(View::Queues, QueueRow::key(name))?;
    Ok(Outcome::Applied)
}

/// One step of a purge (see [`EventKind::QueueTrimmed`]).
pub(super) fn trim<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    name: &str,
    (from_seq, below_seq): (u64, Option<u64>),
    limit: u32,
) -> Result<Outcome> {
    if let Some(refused) = check_step_limit(limit) {
        return Ok(refused);
    }
    let Some(mut queue) = load_queue(txn, name)? else {
        return Ok(unknown_queue(name));
    };
    let below = below_seq.unwrap_or(queue.next_seq);
    let (removed, resume) = remove_messages(txn, &mut queue, (from_seq, below), limit)?;
    save_queue(txn, &queue)?;
    let next = resume.map(|from_seq| EventKind::QueueTrimmed {
        name: name.to_string(),
        from_seq,
        below_seq: Some(below),
        limit,
    });
    Ok(stepped(removed, next))
}

/// One step of deleting a queue (see [`EventKind::QueueDeleteStep`]):
/// messages first, then dedup windows, then the queue.
pub(super) fn delete_step<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    name: &str,
    (from_seq, from_id): (u64, &str),
    limit: u32,
) -> Result<Outcome> {
    if let Some(refused) = check_step_limit(limit) {
        return Ok(refused);
    }
    let Some(mut queue) = load_queue(txn, name)? else {
        return Ok(unknown_queue(name));
    };
    let next = |from_seq, from_id: &str| EventKind::QueueDeleteStep {
        name: name.to_string(),
        from_seq,
        from_id: from_id.to_string(),
        limit,
    };
    let (messages, resume) = remove_messages(txn, &mut queue, (from_seq, u64::MAX), limit)?;
    if let Some(seq) = resume {
        save_queue(txn, &queue)?;
        return Ok(stepped(messages, Some(next(seq, from_id))));
    }
    let budget = u64::from(limit) - messages;
    let (windows, resume) = remove_dedup_windows(txn, name, from_id, budget)?;
    let removed = messages + windows;
    match resume {
        Some(id) => {
            save_queue(txn, &queue)?;
            Ok(stepped(removed, Some(next(queue.next_seq, &id))))
        }
        None => {
            txn.delete(View::Queues, QueueRow::key(name))?;
            Ok(stepped(removed, None))
        }
    }
}

/// Whether `message_id` is in the queue or inside its dedup window.
fn is_duplicate<S: RowStore>(
    txn: &ViewTxn<'_, S>,
    queue: &QueueRow,
    message: &NewMessage,
    now: u64,
) -> Result<bool> {
    let key = MessageRow::id_key(&queue.name, &message.message_id);
    if txn.get::<u64>(View::QueueMessageIds, &key)?.is_some() {
        return Ok(true);
    }
    if !message.client_id || queue.settings.dedup_window_ms.is_none() {
        return Ok(false);
    }
    let window: Option<DedupRow> = txn.get(View::QueueDedup, &key)?;
    Ok(window.is_some_and(|w| w.expires_at_ms > now))
}

/// Opens (or reopens) the dedup window of a client message id.
fn open_dedup_window<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    queue: &QueueRow,
    message_id: &str,
    until_ms: u64,
) -> Result<()> {
    let key = MessageRow::id_key(&queue.name, message_id);
    let timer = |due_ms| Timer {
        due_ms,
        kind: TimerKind::DedupEnds,
        queue: queue.name.clone(),
        target: message_id.as_bytes().to_vec(),
    };
    if let Some(old) = txn.get::<DedupRow>(View::QueueDedup, &key)? {
        txn.delete(View::QueueTimers, timer(old.expires_at_ms).key())?;
    }
    txn.put(
        View::QueueDedup,
        key,
        &DedupRow {
            expires_at_ms: until_ms,
        },
    )?;
    txn.put(View::QueueTimers, timer(until_ms).key(), &())
}

pub(super) fn send<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    name: &str,
    messages: &[NewMessage],
) -> Result<Outcome> {
    let Some(mut queue) = load_queue(txn, name)? else {
        return Ok(unknown_queue(name));
    };
    for message in messages {
        if let Some(refused) = check_ids(&[
            ("message_id", &message.message_id),
            ("topic", &message.topic),
        ]) {
            return Ok(refused);
        }
    }
    // Duplicates add nothing, so only new messages need room. Within the
    // batch, an id added by an earlier message is in the queue by the time
    // a repeat of it is sent.
    let mut duplicates = Vec::with_capacity(messages.len());
    let mut added = BTreeSet::new();
    for message in messages {
        let duplicate =
            added.contains(message.message_id.as_str()) || is_duplicate(txn, &queue, message, now)?;
        if !duplicate {
            added.insert(message.message_id.as_str());
        }
        duplicates.push(duplicate);
    }
    let new = duplicates.iter().filter(|d| !**d).count() as u64;
    let room = queue.settings.max_size.saturating_sub(queue.size());
    if new > room {
        return Ok(rejected(format!(
            "queue {name} is full: it holds {} of at most {} messages, {new} new were sent",
            queue.size(),
            queue.settings.max_size,
        )));
    }
    let mut sent = Vec::with_capacity(messages.len());
    for (message, duplicate) in messages.iter().zip(duplicates) {
        sent.push(SentMessage {
            message_id: message.message_id.clone(),
            duplicate,
        });
        if duplicate {
            continue;
        }
        if let (true, Some(window)) = (message.client_id, queue.settings.dedup_window_ms) {
            open_dedup_window(txn, &queue, &message.message_id, now.saturating_add(window))?;
        }
        let row = MessageRow {
            queue: queue.name.clone(),
            seq: queue.next_seq,
            message_id: message.message_id.clone(),
            topic: message.topic.clone(),
            payload: message.payload.clone(),
            priority: match queue.settings.queue_type {
                QueueType::Priority => message.priority,
                QueueType::Fifo | QueueType::Delay => 0,
            },
            delivery: message.delivery,
            enqueued_at_ms: now,
            ready_at_ms: now.saturating_add(message.delay_ms),
            expires_at_ms: message
                .ttl_ms
                .or(queue.settings.message_ttl_ms)
                .map(|ttl| now.saturating_add(ttl)),
            attempts: 0,
            state: MessageState::Ready,
        };
        queue.next_seq += 1;
        insert(txn, &mut queue, row, now)?;
    }
    save_queue(txn, &queue)?;
    Ok(Outcome::Sent { messages: sent })
}

/// The key right after `key` in key order.
fn after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

pub(super) struct Lease<'a> {
    pub queue: &'a str,
    pub consumer: &'a str,
    pub max: u32,
    pub lease_ms: u64,
    pub topic_pattern: Option<&'a str>,
}

pub(super) fn lease<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    lease: Lease<'_>,
) -> Result<Outcome> {
    if let Some(refused) = check_ids(&[("consumer", lease.consumer)]) {
        return Ok(refused);
    }
    let Some(mut queue) = load_queue(txn, lease.queue)? else {
        return Ok(unknown_queue(lease.queue));
    };
    let max = lease.max as usize;
    let prefix = queue_prefix(lease.queue);
    let mut from = prefix.clone();
    let mut delivered = Vec::new();
    let mut examined = 0;
    while delivered.len() < max && examined < MAX_LEASE_SCAN {
        let keys = txn.keys(View::QueueReady, &prefix, &from, SCAN_CHUNK)?;
        let Some(last) = keys.last() else { break };
        from = after(last);
        for key in keys {
            examined += 1;
            let Some(seq) = seq_of_ready_key(&key) else {
                continue;
            };
            let Some(mut message) =
                txn.get::<MessageRow>(View::QueueMessages, &MessageRow::key(lease.queue, seq))?
            else {
                continue;
            };
            if lease
                .topic_pattern
                .is_some_and(|p| !pattern_matches(p, &message.topic))
            {
                continue;
            }
            unplace(txn, &mut queue, &message)?;
            message.attempts += 1;
            let mut lease_deadline_ms = None;
            if message.delivery == Delivery::AtLeastOnce {
                let deadline_ms = now.saturating_add(lease.lease_ms);
                lease_deadline_ms = Some(deadline_ms);
                message.state = MessageState::Leased {
                    consumer: lease.consumer.to_string(),
                    deadline_ms,
                };
                let timer = message.timer(TimerKind::LeaseExpires, deadline_ms);
                txn.put(View::QueueTimers, timer.key(), &())?;
                queue.in_flight += 1;
                txn.put(
                    View::QueueMessages,
                    MessageRow::key(lease.queue, seq),
                    &message,
                )?;
            } else {
                forget(txn, &message)?;
            }
            delivered.push(DeliveredMessage {
                message_id: message.message_id,
                topic: message.topic,
                payload: message.payload,
                priority: message.priority,
                attempts: message.attempts,
                delivery: message.delivery,
                enqueued_at_ms: message.enqueued_at_ms,
                lease_deadline_ms,
            });
            if delivered.len() >= max {
                break;
            }
        }
    }
    save_queue(txn, &queue)?;
    Ok(Outcome::Delivered {
        messages: delivered,
    })
}

/// The message `message_id` if `consumer` holds its lease; else why not.
fn leased_to<S: RowStore>(
    txn: &ViewTxn<'_, S>,
    queue: &str,
    message_id: &str,
    consumer: &str,
) -> Result<std::result::Result<MessageRow, Outcome>> {
    let Some(message) = message_by_id(txn, queue, message_id)? else {
        return Ok(Err(rejected(format!(
            "message {message_id} is not in queue {queue} (acked, expired, dead-lettered or never sent)"
        ))));
    };
    match &message.state {
        MessageState::Leased {
            consumer: holder, ..
        } if holder == consumer => Ok(Ok(message)),
        MessageState::Leased {
            consumer: holder, ..
        } => Ok(Err(rejected(format!(
            "message {message_id} of queue {queue} is leased to {holder}, not {consumer}"
        )))),
        _ => Ok(Err(rejected(format!(
            "message {message_id} of queue {queue} is not leased (its lease ran out)"
        )))),
    }
}

pub(super) fn ack<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    name: &str,
    message_id: &str,
    consumer: &str,
) -> Result<Outcome> {
    let Some(mut queue) = load_queue(txn, name)? else {
        return Ok(unknown_queue(name));
    };
    let message = match leased_to(txn, name, message_id, consumer)? {
        Ok(message) => message,
        Err(refused) => return Ok(refused),
    };
    remove(txn, &mut queue, &message)?;
    save_queue(txn, &queue)?;
    Ok(Outcome::Acked {
        enqueued_at_ms: message.enqueued_at_ms,
    })
}

pub(super) fn nack<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    name: &str,
    message_id: &str,
    consumer: &str,
    delay_ms: u64,
) -> Result<Outcome> {
    let Some(mut queue) = load_queue(txn, name)? else {
        return Ok(unknown_queue(name));
    };
    let message = match leased_to(txn, name, message_id, consumer)? {
        Ok(message) => message,
        Err(refused) => return Ok(refused),
    };
    let dead = release(txn, &mut queue, message, now, delay_ms)? != Released::Requeued;
    save_queue(txn, &queue)?;
    Ok(Outcome::Released {
        requeued: u64::from(!dead),
        dead_lettered: u64::from(dead),
    })
}

pub(super) fn release_leases<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    name: &str,
    consumer: &str,
    message_ids: &[String],
) -> Result<Outcome> {
    let Some(mut queue) = load_queue(txn, name)? else {
        return Ok(unknown_queue(name));
    };
    let (mut requeued, mut dead_lettered) = (0, 0);
    for message_id in message_ids {
        if let Ok(message) = leased_to(txn, name, message_id, consumer)? {
            match release(txn, &mut queue, message, now, 0)? {
                Released::Requeued => requeued += 1,
                Released::DeadLettered { .. } => dead_lettered += 1,
            }
        }
    }
    save_queue(txn, &queue)?;
    Ok(Outcome::Released {
        requeued,
        dead_lettered,
    })
}

/// Fires one due queue timer (delay, lease, message TTL or dedup window);
/// the timer row is already deleted.
pub(super) fn fire<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    timer: &Timer,
    fired: &mut FiredTimers,
) -> Result<()> {
    let Some(mut queue) = load_queue(txn, &timer.queue)? else {
        return Ok(());
    };
    if timer.kind == TimerKind::DedupEnds {
        let key = MessageRow::id_key(&timer.queue, &String::from_utf8_lossy(&timer.target));
        let window: Option<DedupRow> = txn.get(View::QueueDedup, &key)?;
        if window.is_some_and(|w| w.expires_at_ms == timer.due_ms) {
            txn.delete(View::QueueDedup, key)?;
            fired.dedup_ended += 1;
        }
        return Ok(());
    }
    let Some(seq) = timer.seq() else {
        return Ok(());
    };
    let Some(message) =
        txn.get::<MessageRow>(View::QueueMessages, &MessageRow::key(&timer.queue, seq))?
    else {
        return Ok(());
    };
    match (timer.kind, &message.state) {
        (TimerKind::DelayEnds, MessageState::Delayed) if message.ready_at_ms == timer.due_ms => {
            unplace(txn, &mut queue, &message)?;
            place(txn, &mut queue, message, now, Rows::Written)?;
            fired.delays_ended += 1;
        }
        (TimerKind::LeaseExpires, MessageState::Leased { deadline_ms, .. })
            if *deadline_ms == timer.due_ms =>
        {
            fired.leases_expired += 1;
            match release(txn, &mut queue, message, now, 0)? {
                Released::Requeued => {}
                Released::DeadLettered { .. } => fired.dead_lettered += 1,
            }
        }
        (TimerKind::MessageExpires, _) if message.expires_at_ms == Some(timer.due_ms) => {
            remove(txn, &mut queue, &message)?;
            fired.messages_expired += 1;
        }
        _ => return Ok(()),
    }
    save_queue(txn, &queue)
}
