//! The reference model of the queues: messages per queue with their state,
//! written from the queue semantics (not from `views::queue_apply`), and
//! the outcome it expects of each event.

use std::collections::BTreeMap;

use crate::event::{
    DeliveredMessage, Delivery, EventKind, FiredTimers, NewMessage, Outcome, QueueSettings,
    QueueType, SentMessage,
};
use crate::topic::pattern_matches;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum State {
    Ready,
    Delayed,
    Leased { consumer: String, deadline_ms: u64 },
}

#[derive(Clone, Debug)]
pub(super) struct Msg {
    pub(super) seq: u64,
    pub(super) id: String,
    pub(super) topic: String,
    pub(super) payload: String,
    pub(super) priority: u8,
    pub(super) delivery: Delivery,
    pub(super) enqueued_at_ms: u64,
    pub(super) ready_at_ms: u64,
    pub(super) expires_at_ms: Option<u64>,
    pub(super) attempts: u32,
    pub(super) state: State,
}

#[derive(Clone, Debug)]
pub(super) struct Queue {
    pub(super) settings: QueueSettings,
    pub(super) created_at_ms: u64,
    pub(super) next_seq: u64,
    /// By seq.
    pub(super) messages: BTreeMap<u64, Msg>,
    /// Client message id → end of its dedup window.
    pub(super) dedup: BTreeMap<String, u64>,
}

/// What a pending deadline does; declared in firing order for equal times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Due {
    DelayEnds,
    LeaseExpires,
    MessageExpires,
    DedupEnds,
}

/// A pending deadline: (due, what, queue, seq or client id).
pub(super) type ModelTimer = (u64, Due, String, Target);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Target {
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

    pub(super) fn count(&self, state: fn(&State) -> bool) -> u64 {
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
pub(super) struct Model {
    pub(super) queues: BTreeMap<String, Queue>,
}

impl Model {
    /// The expected outcome. `Rejected` carries no reason.
    pub(super) fn apply(&mut self, now: u64, kind: &EventKind) -> Outcome {
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
    pub(super) fn leases(&self) -> Vec<Held> {
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
    pub(super) fn timers(&self) -> Vec<ModelTimer> {
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

/// A lease or delivery: (queue, message id, consumer).
pub(super) type Held = (String, String, String);

/// Whether apply's outcome is the one the model expects (a `Rejected`
/// matches whatever its reason).
pub(super) fn agrees(expected: &Outcome, actual: &Outcome) -> bool {
    match (expected, actual) {
        (Outcome::Rejected { .. }, Outcome::Rejected { .. }) => true,
        (e, a) => e == a,
    }
}
