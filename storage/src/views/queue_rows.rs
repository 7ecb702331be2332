//! The rows and keys of the queue views.
//!
//! - `queues`: one [`QueueRow`] per queue (settings and counters);
//! - `queue_messages`: one [`MessageRow`] per message, keyed (queue, seq);
//! - `queue_ready`: the delivery order of ready messages, keyed
//!   (queue, 255 - priority, ready_at, seq), empty values;
//! - `queue_message_ids`: message id → seq, keyed (queue, message id);
//! - `queue_dedup`: client message ids inside their dedup window;
//! - `queue_timers`: every pending deadline (of queues, and of cache
//!   entries), keyed (due, kind, queue or namespace, ..), so the due ones
//!   are a range scan from the start.
//!
//! Numbers in keys are big-endian so key order is numeric order.

use serde::{Deserialize, Serialize};

use super::row_key;
use crate::event::{Delivery, QueueSettings};

/// `queues` view row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRow {
    pub name: String,
    pub settings: QueueSettings,
    pub created_at_ms: u64,
    /// Sequence number of the next message sent.
    pub next_seq: u64,
    /// Messages waiting for delivery now.
    pub ready: u64,
    /// Messages waiting for their delay (or retry delay) to end.
    pub delayed: u64,
    /// Messages leased to a consumer.
    pub in_flight: u64,
}

impl QueueRow {
    pub fn key(name: &str) -> Vec<u8> {
        row_key(&[name])
    }

    /// Every message the queue holds.
    pub fn size(&self) -> u64 {
        self.ready + self.delayed + self.in_flight
    }
}

/// Where a message is in its life. `S` is the text type: `String`, or
/// `&str` to read a stored row in place (see [`MessageRow`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState<S = String> {
    Ready,
    Delayed,
    Leased { consumer: S, deadline_ms: u64 },
}

impl MessageState {
    /// This state with its text borrowed.
    pub fn borrowed(&self) -> MessageState<&str> {
        match self {
            MessageState::Ready => MessageState::Ready,
            MessageState::Delayed => MessageState::Delayed,
            MessageState::Leased {
                consumer,
                deadline_ms,
            } => MessageState::Leased {
                consumer,
                deadline_ms: *deadline_ms,
            },
        }
    }
}

impl<S> MessageState<S> {
    pub fn as_str(&self) -> &'static str {
        match self {
            MessageState::Ready => "ready",
            MessageState::Delayed => "delayed",
            MessageState::Leased { .. } => "leased",
        }
    }
}

/// `queue_messages` view row. `S` is the text type: `String`, or `&str`
/// for a row decoded in place from the stored bytes
/// ([`crate::codec::decode_row`] borrows), which SQL scans of millions of
/// rows use to allocate nothing per row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRow<S = String> {
    pub queue: S,
    pub seq: u64,
    pub message_id: S,
    pub topic: S,
    /// JSON text.
    pub payload: S,
    pub priority: u8,
    pub delivery: Delivery,
    pub enqueued_at_ms: u64,
    /// When the message is (or becomes) deliverable.
    pub ready_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// Deliveries so far.
    pub attempts: u32,
    pub state: MessageState<S>,
}

/// `queue_dedup` view row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRow {
    pub expires_at_ms: u64,
}

/// The prefix of every key of `queue` in the per-queue views.
pub fn queue_prefix(queue: &str) -> Vec<u8> {
    let mut key = queue.as_bytes().to_vec();
    key.push(0);
    key
}

impl MessageRow {
    pub fn key(queue: &str, seq: u64) -> Vec<u8> {
        let mut key = queue_prefix(queue);
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }

    /// Key in `queue_ready`.
    pub(crate) fn ready_key(&self) -> Vec<u8> {
        let mut key = queue_prefix(&self.queue);
        key.push(255 - self.priority);
        key.extend_from_slice(&self.ready_at_ms.to_be_bytes());
        key.extend_from_slice(&self.seq.to_be_bytes());
        key
    }

    /// Key in `queue_message_ids` (also the key in `queue_dedup`).
    pub fn id_key(queue: &str, message_id: &str) -> Vec<u8> {
        let mut key = queue_prefix(queue);
        key.extend_from_slice(message_id.as_bytes());
        key
    }

    /// The `queue_timers` entry of this message's `kind` deadline.
    pub fn timer(&self, kind: TimerKind, due_ms: u64) -> Timer {
        Timer::message(due_ms, kind, &self.queue, self.seq)
    }

    /// This row with its text borrowed, as a row decoded in place is.
    pub fn borrowed(&self) -> MessageRow<&str> {
        MessageRow {
            queue: &self.queue,
            seq: self.seq,
            message_id: &self.message_id,
            topic: &self.topic,
            payload: &self.payload,
            priority: self.priority,
            delivery: self.delivery,
            enqueued_at_ms: self.enqueued_at_ms,
            ready_at_ms: self.ready_at_ms,
            expires_at_ms: self.expires_at_ms,
            attempts: self.attempts,
            state: self.state.borrowed(),
        }
    }
}

impl<S: AsRef<str>> MessageRow<S> {
    /// Size of the payload in bytes.
    pub fn size(&self) -> usize {
        self.payload.as_ref().len()
    }
}

/// The sequence number at the end of a `queue_ready` key.
pub fn seq_of_ready_key(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// What a timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    /// A delayed message becomes ready.
    DelayEnds = 1,
    /// A lease runs out.
    LeaseExpires = 2,
    /// A message's TTL runs out.
    MessageExpires = 3,
    /// A dedup window closes.
    DedupEnds = 4,
    /// A cache entry's TTL runs out (`queue` holds its namespace, `target`
    /// its identifier and version).
    CacheExpires = 5,
}

/// One entry of `queue_timers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    pub due_ms: u64,
    pub kind: TimerKind,
    pub queue: String,
    /// The message seq (big-endian) or, for dedup, the message id.
    pub target: Vec<u8>,
}

impl Timer {
    pub fn message(due_ms: u64, kind: TimerKind, queue: &str, seq: u64) -> Timer {
        Timer {
            due_ms,
            kind,
            queue: queue.to_string(),
            target: seq.to_be_bytes().to_vec(),
        }
    }

    pub fn key(&self) -> Vec<u8> {
        let mut key = self.due_ms.to_be_bytes().to_vec();
        key.push(self.kind as u8);
        key.extend_from_slice(&queue_prefix(&self.queue));
        key.extend_from_slice(&self.target);
        key
    }

    /// Parses a `queue_timers` key; `None` if it is not one.
    pub fn from_key(key: &[u8]) -> Option<Timer> {
        let due_ms = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
        let kind = match key.get(8)? {
            1 => TimerKind::DelayEnds,
            2 => TimerKind::LeaseExpires,
            3 => TimerKind::MessageExpires,
            4 => TimerKind::DedupEnds,
            5 => TimerKind::CacheExpires,
            _ => return None,
        };
        let rest = key.get(9..)?;
        let nul = rest.iter().position(|b| *b == 0)?;
        let queue = String::from_utf8(rest[..nul].to_vec()).ok()?;
        Some(Timer {
            due_ms,
            kind,
            queue,
            target: rest[nul + 1..].to_vec(),
        })
    }

    /// The message seq a message timer points at.
    pub fn seq(&self) -> Option<u64> {
        Some(u64::from_be_bytes(self.target.as_slice().try_into().ok()?))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn timer_keys_round_trip_and_sort_by_due_time() {
        let early = Timer::message(5, TimerKind::LeaseExpires, "q", 9);
        let late = Timer {
            due_ms: 300,
            kind: TimerKind::DedupEnds,
            queue: "a".to_string(),
            target: b"id-1".to_vec(),
        };
        assert_eq!(Timer::from_key(&early.key()), Some(early.clone()));
        assert_eq!(Timer::from_key(&late.key()), Some(late.clone()));
        assert!(early.key() < late.key());
        assert_eq!(early.seq(), Some(9));
        assert_eq!(Timer::from_key(b"short"), None);
    }

    #[test]
    fn ready_keys_order_by_priority_then_time_then_seq() {
        let row = |priority, ready_at_ms, seq| MessageRow {
            queue: "q".to_string(),
            seq,
            message_id: format!("m{seq}"),
            topic: "t".to_string(),
            payload: "null".to_string(),
            priority,
            delivery: Delivery::AtLeastOnce,
            enqueued_at_ms: 0,
            ready_at_ms,
            expires_at_ms: None,
            attempts: 0,
            state: MessageState::Ready,
        };
        let mut keys =
            [row(0, 1, 1), row(9, 5, 2), row(9, 5, 3), row(0, 0, 4)].map(|r| r.ready_key());
        keys.sort();
        let seqs: Vec<u64> = keys.iter().filter_map(|k| seq_of_ready_key(k)).collect();
        assert_eq!(seqs, [2, 3, 4, 1]);
    }
}

#[cfg(test)]
mod in_place_test {
    use super::*;

    #[test]
    fn a_row_decoded_in_place_equals_the_owned_row_borrowed() {
        for state in [
            MessageState::Ready,
            MessageState::Delayed,
            MessageState::Leased {
                consumer: "w1".to_string(),
                deadline_ms: 9,
            },
        ] {
            let row = MessageRow {
                queue: "orders".to_string(),
                seq: 7,
                message_id: "m-7".to_string(),
                topic: "orders.new".to_string(),
                payload: "{\"n\":7}".to_string(),
                priority: 3,
                delivery: Delivery::AtLeastOnce,
                enqueued_at_ms: 1,
                ready_at_ms: 2,
                expires_at_ms: Some(3),
                attempts: 1,
                state,
            };
            let bytes = crate::codec::encode("row", &row).unwrap();
            let in_place: MessageRow<&str> = crate::codec::decode_row("row", b"k", &bytes).unwrap();
            assert_eq!(in_place, row.borrowed());
        }
    }
}
