//! Pushed queue subscriptions: a connection subscribes to a queue, and a
//! task per subscription leases ready messages (up to its prefetch limit of
//! unacked messages) and pushes them as `queue-message` frames.
//!
//! Subscriptions of one queue share its messages: each leases at most its
//! free prefetch and an even share of what is ready; its lease changes the
//! queue's row, which wakes the others, so a burst spreads across them. A broadcast
//! message is pushed to every subscription of the queue whose pattern
//! matches. When the connection closes, its leases are released (events).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpreg_client::protocol::QueueSubscribe;
use mpreg_storage::Flow;
use mpreg_storage::event::{DeliveredMessage, Delivery};
use mpreg_storage::topic::pattern_matches;
use mpreg_storage::views::{MessageRow, MessageState, Timer, TimerKind, View};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{QueueResult, Queues, message_json};
use crate::refusal::Refusal;
use crate::session::{FrameKind, Outbound};

/// Prefetch when the subscriber names none.
const DEFAULT_PREFETCH: u64 = 10;
/// Most unacked messages one subscription may hold.
const MAX_PREFETCH: u64 = 1000;

/// What one lease-and-push round did.
enum Pushed {
    /// Messages were pushed.
    Some,
    /// Nothing was ready (or matched).
    Nothing,
    /// The connection closed.
    ConnectionGone,
}

/// One subscription of a connection to a queue.
struct Subscription {
    id: String,
    /// The consumer its leases are held by: `push:<node>:<run>:<id>`, so a
    /// restarted node can tell the leases of its previous run's
    /// subscriptions and release them.
    consumer: String,
    queue: String,
    conn_id: u64,
    pattern: Option<String>,
    prefetch: usize,
    auto_ack: bool,
    outbound: mpsc::Sender<Outbound>,
    kind: FrameKind,
    /// Leased, unacked messages: id → lease deadline (unix ms).
    held: Mutex<HashMap<String, u64>>,
    /// Signalled when a held message is acked or nacked.
    settled: Notify,
    cancel: CancellationToken,
}

impl Subscription {
    /// How many messages to lease now: none until a quarter of the
    /// prefetch is free (or nothing is held), so acks arriving one by one
    /// do not each cost a lease event. Leases that ran out no longer count.
    /// `now` is event time (the lease deadlines are).
    fn room(&self, now: u64) -> usize {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, deadline| *deadline > now);
        let free = self.prefetch.saturating_sub(held.len());
        if held.is_empty() || free * 4 >= self.prefetch {
            free
        } else {
            0
        }
    }

    /// Leased messages not yet settled.
    fn held_count(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn matches(&self, topic: &str) -> bool {
        self.pattern
            .as_deref()
            .is_none_or(|p| pattern_matches(p, topic))
    }

    async fn push(&self, message: &DeliveredMessage) -> bool {
        let frame = json!({
            "role": "queue-message",
            "u": format!("{}:{}", self.id, message.message_id),
            "queue_name": self.queue,
            "subscriber_id": self.id,
            "message": message_json(message),
        });
        self.outbound.send(self.kind.json(&frame)).await.is_ok()
    }
}

/// Subscriptions of this node, by subscriber id.
#[derive(Default)]
pub(super) struct Registry {
    by_id: Mutex<HashMap<String, Arc<Subscription>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Subscription>>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease holder of subscriber `id`'s messages, if it is a pushed
    /// subscription of this node.
    pub(super) fn consumer_of(&self, id: &str) -> Option<String> {
        self.lock().get(id).map(|s| s.consumer.clone())
    }

    /// A held message of subscriber `id` was acked or nacked.
    pub(super) fn settled(&self, id: &str, message_id: &str) {
        if let Some(sub) = self.lock().get(id) {
            sub.held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(message_id);
            sub.settled.notify_one();
        }
    }

    pub(super) fn count(&self, queue: &str) -> usize {
        self.lock().values().filter(|s| s.queue == queue).count()
    }

    fn of_queue(&self, queue: &str) -> Vec<Arc<Subscription>> {
        self.lock()
            .values()
            .filter(|s| s.queue == queue)
            .cloned()
            .collect()
    }

    fn take(&self, pick: impl Fn(&Subscription) -> bool) -> Vec<(String, String, Vec<String>)> {
        let mut subs = self.lock();
        let gone: Vec<String> = subs
            .values()
            .filter(|s| pick(s))
            .map(|s| s.id.clone())
            .collect();
        gone.into_iter()
            .filter_map(|id| subs.remove(&id))
            .map(|sub| {
                sub.cancel.cancel();
                let held = sub.held.lock().unwrap_or_else(|e| e.into_inner());
                (
                    sub.queue.clone(),
                    sub.consumer.clone(),
                    held.keys().cloned().collect(),
                )
            })
            .collect()
    }

    /// Ends every subscription of a connection; returns (queue, consumer,
    /// held message ids) of each.
    pub(super) fn remove_connection(&self, conn_id: u64) -> Vec<(String, String, Vec<String>)> {
        self.take(|s| s.conn_id == conn_id)
    }
}

impl Queues {
    /// Subscribes connection `conn_id` to a queue and answers with a
    /// `queue-subscribe-ack` before the first message is pushed.
    pub async fn subscribe(
        self: &Arc<Self>,
        request: QueueSubscribe,
        conn_id: u64,
        outbound: mpsc::Sender<Outbound>,
        kind: FrameKind,
    ) {
        let u = request.u.clone();
        let result = self
            .register(request, conn_id, outbound.clone(), kind)
            .await;
        let ack = kind.json(&subscribe_ack(
            &u,
            &result.as_ref().map(|s| s.id.clone()).map_err(Clone::clone),
        ));
        let _ = outbound.send(ack).await;
        if let Ok(sub) = result {
            tokio::spawn(self.clone().deliver(sub));
        }
    }

    async fn register(
        &self,
        request: QueueSubscribe,
        conn_id: u64,
        outbound: mpsc::Sender<Outbound>,
        kind: FrameKind,
    ) -> QueueResult<Arc<Subscription>> {
        self.queue(&request.queue_name).await?;
        let pattern = match request.topic_pattern.as_deref() {
            None | Some("#") => None,
            Some(p) => {
                crate::topic::check_pattern(p).map_err(Refusal::invalid)?;
                Some(p.to_string())
            }
        };
        let prefetch = request.prefetch.unwrap_or(DEFAULT_PREFETCH);
        if prefetch == 0 || prefetch > MAX_PREFETCH {
            return Err(Refusal::invalid(format!(
                "prefetch must be 1 to {MAX_PREFETCH}, got {prefetch}"
            )));
        }
        let id = request
            .subscriber_id
            .unwrap_or_else(|| format!("subscriber-{}", self.generated_id()));
        let sub = Arc::new(Subscription {
            consumer: format!("{}{id}", self.push_prefix()),
            id: id.clone(),
            queue: request.queue_name,
            conn_id,
            pattern,
            prefetch: prefetch as usize,
            auto_ack: request.auto_acknowledge,
            outbound,
            kind,
            held: Mutex::new(HashMap::new()),
            settled: Notify::new(),
            cancel: self.shutdown.child_token(),
        });
        {
            let mut subs = self.subscriptions.lock();
            if subs.contains_key(&id) {
                return Err(Refusal::invalid(format!(
                    "subscriber_id {id} is already subscribed on this node"
                )));
            }
            subs.insert(id, sub.clone());
        }
        Ok(sub)
    }

    /// Ends one subscription and releases what it held.
    pub async fn unsubscribe(&self, subscriber_id: &str) -> QueueResult<()> {
        let gone = self.subscriptions.take(|s| s.id == subscriber_id);
        if gone.is_empty() {
            return Err(Refusal::invalid(format!(
                "unknown subscriber_id {subscriber_id}"
            )));
        }
        for (queue, consumer, held) in gone {
            self.release(&queue, &consumer, held).await;
        }
        Ok(())
    }

    /// The delivery loop of one subscription.
    async fn deliver(self: Arc<Self>, sub: Arc<Subscription>) {
        let mut changes = self.watch(&sub.queue);
        loop {
            if sub.cancel.is_cancelled() {
                return;
            }
            let room = sub.room(self.node.event_now());
            if room > 0 {
                match self.push_some(&sub, room).await {
                    Pushed::ConnectionGone => return,
                    // More may be ready (and within this one's share).
                    Pushed::Some => continue,
                    Pushed::Nothing => {}
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = sub.settled.notified() => {}
                // Every applied change of the queue's row signals `changes`
                // (sends, releases, fired timers, on any node); this
                // periodic look is only a safety net.
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                () = sub.cancel.cancelled() => return,
            }
        }
    }

    /// How many of `ready` messages `sub` may lease now: enough to hold an
    /// even share of what this node's subscriptions of the queue hold and
    /// could take, so a burst spreads over them instead of filling the one
    /// woken first; all of them when no other subscription has room.
    fn share(&self, sub: &Subscription, ready: usize) -> usize {
        let subs = self.subscriptions.of_queue(&sub.queue);
        let now = self.node.event_now();
        let others_have_room = subs.iter().any(|s| s.id != sub.id && s.room(now) > 0);
        if !others_have_room {
            return ready;
        }
        let held: usize = subs.iter().map(|s| s.held_count()).sum();
        let fair = ready.saturating_add(held).div_ceil(subs.len().max(1));
        fair.saturating_sub(sub.held_count())
    }

    /// Leases up to `room` messages (at most an even share of the ready
    /// ones) for `sub` and pushes them.
    async fn push_some(&self, sub: &Subscription, room: usize) -> Pushed {
        let row = match self.queue(&sub.queue).await {
            Ok(row) if row.ready > 0 => row,
            Ok(_) => return Pushed::Nothing,
            Err(e) => {
                tracing::debug!(queue = %sub.queue, error = %e, "subscription queue unavailable");
                return Pushed::Nothing;
            }
        };
        let share = self.share(sub, usize::try_from(row.ready).unwrap_or(usize::MAX));
        if share == 0 {
            return Pushed::Nothing;
        }
        let lease_ms = row.settings.ack_timeout_ms;
        let messages = match self
            .lease(
                &sub.queue,
                &sub.consumer,
                room.min(share),
                lease_ms,
                sub.pattern.as_deref(),
            )
            .await
        {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(queue = %sub.queue, subscriber = %sub.id, error = %e, "lease failed");
                return Pushed::Nothing;
            }
        };
        if messages.is_empty() {
            return Pushed::Nothing;
        }
        for message in &messages {
            if let Some(deadline) = message.lease_deadline_ms {
                sub.held
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(message.message_id.clone(), deadline);
            }
            if message.delivery == Delivery::Broadcast {
                for other in self.subscriptions.of_queue(&sub.queue) {
                    if other.matches(&message.topic) {
                        other.push(message).await;
                    }
                }
            } else if !sub.push(message).await {
                return Pushed::ConnectionGone;
            }
            if sub.auto_ack
                && message.lease_deadline_ms.is_some()
                && let Err(e) = self
                    .settle(&sub.queue, &message.message_id, &sub.id, None)
                    .await
            {
                tracing::warn!(queue = %sub.queue, error = %e, "auto-ack failed");
            }
        }
        Pushed::Some
    }
}

/// Releases the leases that pushed subscriptions of this node's previous
/// runs held (their connections died with the process), so other consumers
/// get those messages now instead of after the acknowledgment timeout.
/// Runs once at start, off the startup path: it reads every lease timer.
pub(super) async fn release_previous_run(queues: Arc<Queues>) {
    let ours = format!("push:{}:", queues.node.identity().node_id);
    let current = queues.push_prefix();
    let inspector = queues.node.inspector();
    let found = tokio::task::spawn_blocking(move || {
        let mut found: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let scanned = inspector.scan_keys(View::QueueTimers, &[], |key| {
            let Some((timer, seq)) = Timer::from_key(key)
                .filter(|t| t.kind == TimerKind::LeaseExpires)
                .and_then(|t| t.seq().map(|seq| (t, seq)))
            else {
                return Flow::Continue;
            };
            let message: Option<MessageRow> = inspector
                .get(View::QueueMessages, &MessageRow::key(&timer.queue, seq))
                .ok()
                .flatten();
            if let Some(message) = message
                && let MessageState::Leased { consumer, .. } = message.state
                && consumer.starts_with(&ours)
                && !consumer.starts_with(&current)
            {
                found
                    .entry((timer.queue, consumer))
                    .or_default()
                    .push(message.message_id);
            }
            Flow::Continue
        });
        if let Err(e) = scanned {
            tracing::warn!(error = %e, "failed to scan the leases of the previous run");
        }
        found
    })
    .await
    .unwrap_or_default();
    for ((queue, consumer), message_ids) in found {
        tracing::info!(%queue, %consumer, messages = message_ids.len(), "releasing the leases of a subscription of the previous run");
        queues.release(&queue, &consumer, message_ids).await;
    }
}

/// The reply to `queue-subscribe` / `queue-unsubscribe`.
pub fn subscribe_ack(u: &str, result: &QueueResult<String>) -> Value {
    match result {
        Ok(id) => json!({
            "role": "queue-subscribe-ack",
            "u": u,
            "success": true,
            "subscriber_id": id,
            "error_message": null,
            "error_code": null,
        }),
        Err(e) => json!({
            "role": "queue-subscribe-ack",
            "u": u,
            "success": false,
            "subscriber_id": null,
            "error_message": e.message,
            "error_code": e.code as i64,
        }),
    }
}
