//! Pub/sub: topic fan-out to subscriptions, with backlogs and per-subscriber
//! buffers.
//!
//! [`PubSub`] is the entry type. Publishing changes no shared state, so it
//! does not touch the log: a message is matched against the topic trie and
//! queued on every matching subscription, and sent to every other member
//! whose subscriptions (in the replicated catalog) match its topic. Subscribing and unsubscribing are
//! catalog events (`subscription_added` / `subscription_removed`), so the
//! `subscriptions` view shows what is live and a restart knows which
//! durable subscriptions to keep. A message also goes to the other
//! clusters whose subscription patterns match its topic ([`federated`]).
//!
//! Every subscription has its own bounded buffer and delivery task: a
//! publisher never waits for a subscriber. When a buffer is full the oldest
//! message is dropped and the next notification carries `"dropped": N`
//! (or, with the `disconnect` policy, the subscriber is disconnected).

mod backlog;
mod federated;
mod trie;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpreg_client::protocol::{PubSubMessage, PubSubSubscription};
use mpreg_storage::topic::pattern_matches;
use mpreg_storage::{EventKind, Outcome};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::clock::now_secs;
use crate::cluster::Node;
use crate::config::{PubSubLimits, SlowConsumerPolicy};
use crate::envelope::{FederationReply, FederationRequest, PeerReply, PeerRequest, Refused};
use crate::federation::{Federation, Routing};
use crate::metrics::PubSubMetrics;
use crate::session::{FrameKind, Outbound};
use backlog::Backlog;
use trie::TopicTrie;

/// Longest a forwarded publish waits for the other node's answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Forwarded publishes of this node waiting for their member's answer.
const MAX_FORWARDS_IN_FLIGHT: usize = 4096;

/// Why a publish, subscribe or unsubscribe failed.
#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    /// Refused as sent (a bad topic or pattern, an empty id, too large, an
    /// unknown or duplicate subscription); the same request fails again.
    #[error("{0}")]
    Invalid(String),
    /// The subscription change could not be committed to the log (the
    /// error says whether it may still commit).
    #[error(transparent)]
    Log(#[from] crate::Error),
}

/// A message as queued: its JSON, serialized once for every subscriber.
type Queued = Arc<str>;

/// Where a subscription's notifications go.
struct Sink {
    outbound: mpsc::Sender<Outbound>,
    /// Drops the subscriber's connection (`slow_consumer_policy =
    /// "disconnect"`): a close frame would wait behind a full queue.
    hang_up: CancellationToken,
    frame: FrameKind,
    conn_id: u64,
}

#[derive(Default)]
struct Buffer {
    items: VecDeque<(String, Queued)>,
    dropped: u64,
    sink: Option<Sink>,
    /// The connection the subscription belongs to while attached: kept
    /// when the sink goes on a failed send or a slow-consumer hang-up, so
    /// [`PubSub::disconnected`] still finds it.
    owner: Option<u64>,
    closed: bool,
}

/// One subscription's buffer and its delivery task's wake-up.
struct SubQueue {
    id: String,
    buffer: Mutex<Buffer>,
    wake: Notify,
    metrics: PubSubMetrics,
}

impl SubQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, message_id: String, message: Queued, limits: &PubSubLimits) {
        let mut buffer = self.lock();
        if buffer.items.len() >= limits.subscriber_buffer {
            match limits.slow_consumer {
                SlowConsumerPolicy::DropOldest => {
                    buffer.items.pop_front();
                    buffer.dropped += 1;
                    self.metrics.dropped.inc();
                }
                SlowConsumerPolicy::Disconnect => {
                    self.metrics.dropped.inc_by(buffer.items.len() as u64 + 1);
                    buffer.items.clear();
                    if let Some(sink) = buffer.sink.take() {
                        let _ = sink.outbound.try_send(Message::Close(None));
                        sink.hang_up.cancel();
                    }
                    return;
                }
            }
        }
        buffer.items.push_back((message_id, message));
        drop(buffer);
        self.wake.notify_one();
    }

    /// Sends buffered notifications while a sink is attached.
    async fn deliver(self: Arc<Self>) {
        loop {
            let next = {
                let mut buffer = self.lock();
                if buffer.closed {
                    return;
                }
                match &buffer.sink {
                    Some(sink) if !buffer.items.is_empty() => {
                        let (outbound, frame) = (sink.outbound.clone(), sink.frame);
                        let (message_id, message) = buffer.items.pop_front().unwrap_or_default();
                        let dropped = std::mem::take(&mut buffer.dropped);
                        Some((outbound, frame, message_id, message, dropped))
                    }
                    _ => None,
                }
            };
            let Some((outbound, frame, message_id, message, dropped)) = next else {
                self.wake.notified().await;
                continue;
            };
            let id = Value::String(self.id.clone());
            let u = Value::String(format!("notification_{message_id}_{}", self.id));
            let dropped_field = if dropped > 0 {
                format!(",\"dropped\":{dropped}")
            } else {
                String::new()
            };
            let json = format!(
                r#"{{"role":"pubsub-notification","message":{message},"subscription_id":{id},"u":{u}{dropped_field}}}"#
            );
            if outbound.send(frame.message(json)).await.is_ok() {
                self.metrics.delivered.inc();
            } else {
                // The subscriber is gone: keep the message for a durable
                // subscription's return.
                let mut buffer = self.lock();
                buffer.sink = None;
                buffer.items.push_front((message_id, message));
                buffer.dropped += dropped;
            }
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

struct Subscription {
    patterns: Vec<String>,
    durable: bool,
    queue: Arc<SubQueue>,
}

#[derive(Default)]
struct State {
    trie: TopicTrie<String>,
    subs: HashMap<String, Subscription>,
    backlog: Backlog,
}

/// The pub/sub system of a node.
pub struct PubSub {
    node: Arc<Node>,
    limits: PubSubLimits,
    state: Mutex<State>,
    metrics: PubSubMetrics,
    /// One permit per forwarded publish not yet answered by its member
    /// ([`MAX_FORWARDS_IN_FLIGHT`]); a publish waits for room, so a burst
    /// slows its publishers instead of piling up tasks.
    forwards: Arc<tokio::sync::Semaphore>,
    /// Carries messages to other clusters with matching subscriptions.
    outboxes: federated::Outboxes,
    federation: Arc<Federation>,
}

impl PubSub {
    /// Starts pub/sub: durable subscriptions of this node are kept (waiting
    /// for their subscriber), the others are removed (their connections are
    /// gone).
    pub async fn start(
        node: Arc<Node>,
        limits: PubSubLimits,
        metrics: PubSubMetrics,
        federation: Arc<Federation>,
    ) -> crate::Result<PubSub> {
        let rows: Vec<_> = {
            let catalog = node.views().catalog();
            catalog
                .subscriptions()
                .filter(|s| s.node_id == node.identity().node_id)
                .cloned()
                .collect()
        };
        let pubsub = PubSub {
            outboxes: federated::Outboxes::new(
                node.clone(),
                federation.clone(),
                metrics.federated.clone(),
            ),
            federation,
            node,
            state: Mutex::new(State {
                backlog: Backlog::new(limits.backlog_window, limits.backlog_bytes),
                ..State::default()
            }),
            limits,
            metrics,
            forwards: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS_IN_FLIGHT)),
        };
        for row in rows {
            if row.durable {
                let queue =
                    pubsub.register(&row.subscription_id, row.patterns.clone(), true, None, 0);
                tokio::spawn(queue.deliver());
            } else {
                pubsub
                    .node
                    .propose(EventKind::SubscriptionRemoved {
                        subscription_id: row.subscription_id,
                    })
                    .await?;
            }
        }
        Ok(pubsub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fans a message out to every matching subscription: here, on every
    /// other member with a matching subscription (in the background, once
    /// there is room among the forwards in flight; pub/sub delivery is at
    /// most once), and in every other cluster with one.
    pub async fn publish(&self, message: &PubSubMessage) -> Result<(), PubSubError> {
        let json = self.publish_here(message)?;
        self.metrics.published.inc();
        self.to_members(&message.topic, &json).await;
        self.outboxes.send(&message.topic, &json);
        Ok(())
    }

    /// Takes messages another cluster sent (JSON, in publish order): fans
    /// them out in this cluster when it is their target, else carries them
    /// one cluster closer.
    pub async fn publish_federated(
        &self,
        messages: Vec<String>,
        routing: Routing,
    ) -> Result<FederationReply, Refused> {
        let local = &self.node.identity().cluster_id;
        let count = messages.len() as u64;
        if routing.target.is_empty() {
            return Err(Refused::Invalid(format!(
                "messages reached cluster {local} naming no target cluster"
            )));
        }
        if routing.target != *local {
            let request = FederationRequest::Publish { messages };
            let timeout = federated::SEND_TIMEOUT;
            let reply = self.federation.forward(request, &routing, timeout).await;
            let reply = reply.map_err(Refused::from)?;
            self.metrics
                .federated
                .with_label_values(&["relayed"])
                .inc_by(count);
            return Ok(reply);
        }
        let mut accepted = 0u32;
        for text in messages {
            let message: PubSubMessage = serde_json::from_str(&text)
                .map_err(|e| Refused::Invalid(format!("message from another cluster: {e}")))?;
            let json = self
                .publish_here(&message)
                .map_err(|e| Refused::Invalid(e.to_string()))?;
            self.to_members(&message.topic, &json).await;
            accepted += 1;
        }
        self.metrics
            .federated
            .with_label_values(&["received"])
            .inc_by(count);
        Ok(FederationReply::Published { accepted })
    }

    /// Sends a message to every other member of this cluster with a
    /// subscription matching `topic`.
    async fn to_members(&self, topic: &str, json: &Queued) {
        for addr in self.remote_subscribers(topic) {
            let Ok(permit) = self.forwards.clone().acquire_owned().await else {
                break;
            };
            let peers = self.node.peers().clone();
            let message = json.to_string();
            let forwarded = self.metrics.forwarded.clone();
            tokio::spawn(async move {
                let _forwarding = permit;
                let request = PeerRequest::Publish { message };
                let outcome = match peers.request(&addr, request, FORWARD_TIMEOUT).await {
                    Ok(PeerReply::Published(Ok(()))) => "sent",
                    Ok(other) => {
                        tracing::warn!(%addr, ?other, "forwarded publish refused");
                        "failed"
                    }
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "forwarded publish failed");
                        "failed"
                    }
                };
                forwarded.with_label_values(&[outcome]).inc();
            });
        }
    }

    /// Fans out a message another node forwarded (JSON), here only.
    pub fn publish_forwarded(&self, message: &str) -> Result<(), Refused> {
        let message: PubSubMessage = serde_json::from_str(message)
            .map_err(|e| Refused::Invalid(format!("forwarded message: {e}")))?;
        self.publish_here(&message)
            .map_err(|e| Refused::Invalid(e.to_string()))?;
        self.metrics
            .forwarded
            .with_label_values(&["received"])
            .inc();
        Ok(())
    }

    /// Addresses of the other members with a subscription matching `topic`.
    fn remote_subscribers(&self, topic: &str) -> BTreeSet<String> {
        let me = &self.node.identity().node_id;
        let nodes: BTreeSet<String> = self
            .node
            .views()
            .catalog()
            .subscriptions()
            .filter(|s| s.node_id != *me)
            .filter(|s| s.patterns.iter().any(|p| pattern_matches(p, topic)))
            .map(|s| s.node_id.clone())
            .collect();
        nodes
            .iter()
            .filter_map(|node_id| self.node.member_addr_of(node_id))
            .collect()
    }

    /// Fans a message out to the matching subscriptions of this node and
    /// keeps it in the backlog; returns it as JSON.
    fn publish_here(&self, message: &PubSubMessage) -> Result<Queued, PubSubError> {
        crate::topic::check_topic(&message.topic).map_err(PubSubError::Invalid)?;
        if message.message_id.is_empty() {
            return Err(PubSubError::Invalid("message_id must not be empty".into()));
        }
        let json =
            serde_json::to_string(message).map_err(|e| PubSubError::Invalid(e.to_string()))?;
        if json.len() > self.limits.max_payload_bytes {
            return Err(PubSubError::Invalid(format!(
                "message of {} bytes is larger than the limit of {} bytes",
                json.len(),
                self.limits.max_payload_bytes
            )));
        }
        let json: Queued = json.into();
        let mut state = self.lock();
        state.backlog.push(
            now_secs(),
            &message.topic,
            &message.message_id,
            json.clone(),
        );
        self.metrics
            .backlog_bytes
            .set(i64::try_from(state.backlog.bytes()).unwrap_or(i64::MAX));
        for id in state.trie.matches(&message.topic) {
            if let Some(sub) = state.subs.get(&id) {
                sub.queue
                    .push(message.message_id.clone(), json.clone(), &self.limits);
            }
        }
        Ok(json)
    }

    /// Registers a subscription in memory, with its backlog queued first.
    /// Matching messages queue up from now on; they flow once the caller
    /// spawns the returned queue's `deliver`.
    fn register(
        &self,
        id: &str,
        patterns: Vec<String>,
        durable: bool,
        sink: Option<Sink>,
        backlog_seconds: u64,
    ) -> Arc<SubQueue> {
        let queue = Arc::new(SubQueue {
            id: id.to_string(),
            buffer: Mutex::new(Buffer {
                owner: sink.as_ref().map(|k| k.conn_id),
                sink,
                ..Buffer::default()
            }),
            wake: Notify::new(),
            metrics: self.metrics.clone(),
        });
        let mut state = self.lock();
        if backlog_seconds > 0 {
            let since = now_secs() - backlog_seconds as f64;
            for (message_id, json) in state.backlog.matching(since, &patterns) {
                queue.push(message_id, json, &self.limits);
            }
        }
        for pattern in &patterns {
            state.trie.insert(pattern, id.to_string());
        }
        state.subs.insert(
            id.to_string(),
            Subscription {
                patterns,
                durable,
                queue: queue.clone(),
            },
        );
        self.metrics.subscriptions.set(state.subs.len() as i64);
        queue
    }

    /// Handles `pubsub-subscribe` from connection `conn_id`; `ack` sends the
    /// success answer, before any notification of the subscription.
    pub async fn subscribe(
        &self,
        sub: PubSubSubscription,
        conn_id: u64,
        outbound: mpsc::Sender<Outbound>,
        hang_up: CancellationToken,
        frame: FrameKind,
        ack: impl std::future::Future<Output = ()>,
    ) -> Result<(), PubSubError> {
        let invalid = |text: String| PubSubError::Invalid(text);
        if sub.subscription_id.is_empty() {
            return Err(invalid("subscription_id must not be empty".into()));
        }
        if sub.patterns.is_empty() {
            return Err(invalid("a subscription needs at least one pattern".into()));
        }
        let patterns: Vec<String> = sub.patterns.iter().map(|p| p.pattern.clone()).collect();
        for pattern in &patterns {
            crate::topic::check_pattern(pattern).map_err(invalid)?;
        }
        let mut sink = Some(Sink {
            outbound,
            hang_up,
            frame,
            conn_id,
        });
        // A durable subscription whose subscriber is away: resume it.
        let resumed = {
            let state = self.lock();
            match state.subs.get(&sub.subscription_id) {
                None => None,
                Some(existing) => {
                    let mut buffer = existing.queue.lock();
                    if !existing.durable || buffer.sink.is_some() {
                        return Err(invalid(format!(
                            "subscription {} already exists",
                            sub.subscription_id
                        )));
                    }
                    buffer.owner = sink.as_ref().map(|k| k.conn_id);
                    buffer.sink = sink.take();
                    Some(existing.queue.clone())
                }
            }
        };
        if let Some(queue) = resumed {
            ack.await;
            queue.wake.notify_one();
            return Ok(());
        }
        let outcome = self
            .node
            .propose(EventKind::SubscriptionAdded {
                subscription_id: sub.subscription_id.clone(),
                patterns: patterns.clone(),
                subscriber: sub.subscriber.clone(),
                node_id: self.node.identity().node_id.clone(),
                durable: sub.durable,
            })
            .await?;
        if let Outcome::Rejected { reason } = outcome {
            return Err(invalid(reason));
        }
        let backlog = if sub.get_backlog {
            sub.backlog_seconds.max(1)
        } else {
            0
        };
        // Matched from before the ack (a publish right after it is not
        // missed), delivered after it (the ack comes first).
        let queue = self.register(&sub.subscription_id, patterns, sub.durable, sink, backlog);
        ack.await;
        tokio::spawn(queue.deliver());
        Ok(())
    }

    fn forget(&self, id: &str) -> Option<Subscription> {
        let mut state = self.lock();
        let sub = state.subs.remove(id)?;
        self.metrics.subscriptions.set(state.subs.len() as i64);
        for pattern in &sub.patterns {
            state.trie.remove(pattern, &id.to_string());
        }
        sub.queue.close();
        Some(sub)
    }

    /// Handles `pubsub-unsubscribe`.
    pub async fn unsubscribe(&self, id: &str) -> Result<(), PubSubError> {
        if self.forget(id).is_none() {
            return Err(PubSubError::Invalid(format!("unknown subscription {id}")));
        }
        self.node
            .propose_ok(EventKind::SubscriptionRemoved {
                subscription_id: id.to_string(),
            })
            .await?;
        Ok(())
    }

    /// Connection `conn_id` closed: its subscriptions go, except durable
    /// ones, which keep buffering until their subscriber returns.
    pub async fn disconnected(&self, conn_id: u64) {
        let owned: Vec<(String, bool)> = {
            let state = self.lock();
            state
                .subs
                .iter()
                .filter(|(_, s)| s.queue.lock().owner == Some(conn_id))
                .map(|(id, s)| (id.clone(), s.durable))
                .collect()
        };
        for (id, durable) in owned {
            if durable {
                if let Some(sub) = self.lock().subs.get(&id) {
                    let mut buffer = sub.queue.lock();
                    buffer.sink = None;
                    buffer.owner = None;
                }
            } else if let Err(e) = self.unsubscribe(&id).await {
                tracing::warn!(subscription_id = %id, error = %e, "failed to remove subscription");
            }
        }
    }
}
