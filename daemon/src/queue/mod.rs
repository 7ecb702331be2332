//! Durable queues on the log: the `mpreg.queue.*` functions, pushed
//! subscriptions and the leader's timer task.
//!
//! [`Queues`] is the entry type. Every change (declare, send, lease, ack,
//! nack, release, timers) is an event proposed through [`Node::propose`], so
//! a reply means the change is committed and fsynced. Delivery reads the
//! queue views; nothing about a queue lives only in memory except who is
//! subscribed on this node and which leases those subscribers hold (for
//! prefetch limits and releasing them when the connection closes).

mod args;
mod subscriptions;
mod timers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpreg_client::protocol::ErrorCode;
use mpreg_storage::event::{BULK_STEP_ROWS, DeliveredMessage, NewMessage, SentMessage};
use mpreg_storage::views::{QueueRow, View};
use mpreg_storage::{EventKind, Outcome};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::cluster::Node;
use crate::metrics::QueueMetrics;
use crate::refusal::{Refusal, committed, unexpected};
use args::{Fields, body, millis};
pub use subscriptions::subscribe_ack;

/// The functions clients call, all served by every node.
pub const FUNCTIONS: [&str; 8] = [
    "mpreg.queue.create",
    "mpreg.queue.send",
    "mpreg.queue.receive",
    "mpreg.queue.ack",
    "mpreg.queue.nack",
    "mpreg.queue.purge",
    "mpreg.queue.delete",
    "mpreg.queue.stats",
];

/// Most messages one send or receive may carry.
const MAX_BATCH: usize = 1000;

type QueueResult<T> = Result<T, Refusal>;

/// The queues of a node.
pub struct Queues {
    node: Arc<Node>,
    metrics: QueueMetrics,
    /// One counter per queue, bumped whenever its ready messages may have
    /// changed; waiting receivers and subscriptions watch it.
    changes: Mutex<HashMap<String, watch::Sender<u64>>>,
    subscriptions: subscriptions::Registry,
    /// This run of the node: its start time (hex ms). Generated message ids
    /// are `msg-<run>-<n>`; pushed leases are held as `push:<node>:<run>:..`.
    run: String,
    next_id: AtomicU64,
    /// Longest a pull `receive` waits: under the RPC request timeout, so a
    /// wait never outlives the call that carries it.
    max_receive_wait: Duration,
    shutdown: CancellationToken,
}

/// The one waker of consumers: whenever apply changed a queue's row (a
/// send, lease, ack, release, fired timer, dead-letter, delete; proposed
/// on this node or any other), wakes whoever waits on that queue.
async fn wake_on_apply(queues: Arc<Queues>) {
    let views = queues.node.views().clone();
    loop {
        let changes = tokio::select! {
            changes = views.next_queue_changes() => changes,
            () = queues.shutdown.cancelled() => return,
        };
        let counters = queues.changes.lock().unwrap_or_else(|e| e.into_inner());
        for (queue, counter) in counters.iter() {
            if changes.everything || changes.queues.contains(queue) {
                counter.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}

/// Waits for changes of one queue; dropping the last waiter of a queue
/// removes its entry, so waiting leaves nothing behind.
struct Watch<'a> {
    changes: &'a Mutex<HashMap<String, watch::Sender<u64>>>,
    queue: String,
    receiver: Option<watch::Receiver<u64>>,
}

impl Watch<'_> {
    async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        match &mut self.receiver {
            Some(receiver) => receiver.changed().await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.receiver = None;
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if changes
            .get(&self.queue)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            changes.remove(&self.queue);
        }
    }
}

/// A message as clients see it.
fn message_json(m: &DeliveredMessage) -> Value {
    let payload: Value = serde_json::from_str(&m.payload).unwrap_or(Value::Null);
    json!({
        "message_id": m.message_id,
        "topic": m.topic,
        "payload": payload,
        "priority": m.priority,
        "attempts": m.attempts,
        "delivery_guarantee": m.delivery.as_str(),
        "enqueued_at": m.enqueued_at_ms as f64 / 1000.0,
        "lease_deadline": m.lease_deadline_ms.map(|ms| ms as f64 / 1000.0),
    })
}

impl Queues {
    /// Starts the queues of `node` and the timer task that fires lease,
    /// delay, TTL and dedup deadlines until `shutdown`. RPC calls carrying
    /// a `receive` end after `request_timeout`.
    pub fn start(
        node: Arc<Node>,
        metrics: QueueMetrics,
        request_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let queues = Arc::new(Queues {
            node,
            metrics,
            changes: Mutex::new(HashMap::new()),
            subscriptions: subscriptions::Registry::default(),
            run: format!("{:x}", now_ms()),
            next_id: AtomicU64::new(1),
            max_receive_wait: request_timeout.saturating_sub(Duration::from_secs(1)),
            shutdown,
        });
        tokio::spawn(timers::run(queues.clone()));
        tokio::spawn(subscriptions::release_previous_run(queues.clone()));
        tokio::spawn(wake_on_apply(queues.clone()));
        queues
    }

    /// The consumer-id prefix of pushed subscriptions of this node and run.
    fn push_prefix(&self) -> String {
        format!("push:{}:{}:", self.node.identity().node_id, self.run)
    }

    /// Runs `mpreg.queue.<op>`; failures are in the reply (`success: false`).
    pub async fn call(&self, fun: &str, args: &[Value], kwargs: &Map<String, Value>) -> Value {
        let result = match body(args, kwargs) {
            Ok(body) => self.dispatch(fun, &body).await,
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| e.to_value())
    }

    async fn dispatch(&self, fun: &str, body: &Map<String, Value>) -> QueueResult<Value> {
        match fun.strip_prefix("mpreg.queue.") {
            Some("create") => self.declare(body).await,
            Some("send") => self.send(body).await,
            Some("receive") => self.receive(body).await,
            Some("ack") => self.ack(body).await,
            Some("nack") => self.nack(body).await,
            Some("purge") => self.purge(body).await,
            Some("delete") => self.delete(body).await,
            Some("stats") => self.stats(body).await,
            _ => Err(Refusal::invalid(format!("no queue function {fun}"))),
        }
    }

    /// Proposes a queue event; a refusal by apply is a [`Refusal`].
    async fn propose(&self, kind: EventKind) -> QueueResult<Outcome> {
        committed(self.node.propose(kind).await)
    }

    /// The queue's row, as last applied (read off the reactor).
    async fn queue(&self, name: &str) -> QueueResult<QueueRow> {
        self.node
            .inspector()
            .get_blocking(View::Queues, QueueRow::key(name))
            .await
            .map_err(|e| Refusal::new(ErrorCode::Unavailable, e.to_string()))?
            .ok_or_else(|| unknown_queue(name))
    }

    /// A waiter that wakes whenever apply changed `queue` (see
    /// [`wake_on_apply`]); the queue's entry goes with its last waiter.
    fn watch(&self, queue: &str) -> Watch<'_> {
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = changes
            .entry(queue.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Watch {
            changes: &self.changes,
            queue: queue.to_string(),
            receiver: Some(receiver),
        }
    }

    fn generated_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("msg-{}-{n}", self.run)
    }

    async fn declare(&self, body: &Map<String, Value>) -> QueueResult<Value> {
        let (name, settings) = args::declare(body)?;
        self.propose(EventKind::QueueDeclared {
            name: name.clone(),
            settings: settings.clone(),
        })
        .await?;
        Ok(json!({
            "success": true,
            "queue_name": name,
            "queue_type": settings.queue_type.as_str(),
            "dead_letter_queue": settings.dead_letter_queue,
        }))
    }

    /// One message of a send body (the body itself, or one of `messages`).
    fn new_message(&self, queue: &str, f: &Fields<'_>) -> QueueResult<NewMessage> {
        let payload =
            f.0.get("payload")
                .or_else(|| f.0.get("message_payload"))
                .unwrap_or(&Value::Null);
        let topic = match f.str("topic")? {
            Some(topic) => topic.to_string(),
            None => format!("mpreg.queue.{queue}"),
        };
        crate::topic::check_topic(&topic).map_err(Refusal::invalid)?;
        let priority = f.uint("priority")?.unwrap_or(0);
        let priority = u8::try_from(priority)
            .map_err(|_| Refusal::invalid(format!("priority must be 0..=255, got {priority}")))?;
        let client_id = f.str("message_id")?.map(str::to_string);
        Ok(NewMessage {
            client_id: client_id.is_some(),
            message_id: client_id.unwrap_or_else(|| self.generated_id()),
            topic,
            payload: payload.to_string(),
            priority,
            delay_ms: f.seconds("delay_seconds")?.map_or(0, millis),
            ttl_ms: f.seconds("ttl_seconds")?.map(millis),
            delivery: args::delivery(f)?,
        })
    }

    async fn send(&self, body: &Map<String, Value>) -> QueueResult<Value> {
        let f = Fields(body);
        let queue = f.required_str("queue_name")?.to_string();
        let batch = match body.get("messages") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(items),
            Some(other) => {
                return Err(Refusal::invalid(format!(
                    "messages must be a list of message objects, got {other}"
                )));
            }
        };
        let messages = match batch {
            None => vec![self.new_message(&queue, &f)?],
            Some(items) if items.is_empty() || items.len() > MAX_BATCH => {
                return Err(Refusal::invalid(format!(
                    "messages must hold 1 to {MAX_BATCH} messages, got {}",
                    items.len()
                )));
            }
            Some(items) => items
                .iter()
                .map(|item| match item {
                    Value::Object(map) => self.new_message(&queue, &Fields(map)),
                    other => Err(Refusal::invalid(format!(
                        "each message must be an object, got {other}"
                    ))),
                })
                .collect::<QueueResult<Vec<_>>>()?,
        };
        let topics: Vec<String> = messages.iter().map(|m| m.topic.clone()).collect();
        let outcome = self
            .propose(EventKind::MessagesSent {
                queue: queue.clone(),
                messages,
            })
            .await?;
        let Outcome::Sent { messages: sent } = outcome else {
            return Err(unexpected(&outcome));
        };
        let added = sent.iter().filter(|m| !m.duplicate).count() as u64;
        self.metrics.enqueued.inc_by(added);
        self.metrics.duplicates.inc_by(sent.len() as u64 - added);
        let result = |m: &SentMessage, topic: &String| json!({"message_id": m.message_id, "duplicate": m.duplicate, "topic": topic});
        match (batch, sent.as_slice()) {
            (None, [one]) => Ok(json!({
                "success": true,
                "message_id": one.message_id,
                "duplicate": one.duplicate,
                "queue_name": queue,
                "topic": topics[0],
                "error_message": null,
            })),
            _ => Ok(json!({
                "success": true,
                "queue_name": queue,
                "messages": sent.iter().zip(&topics).map(|(m, t)| result(m, t)).collect::<Vec<_>>(),
            })),
        }
    }

    /// Leases up to `max` ready messages of `queue` to `consumer`.
    async fn lease(
        &self,
        queue: &str,
        consumer: &str,
        max: usize,
        lease_ms: u64,
        topic_pattern: Option<&str>,
    ) -> QueueResult<Vec<DeliveredMessage>> {
        let outcome = self
            .propose(EventKind::MessagesLeased {
                queue: queue.to_string(),
                consumer: consumer.to_string(),
                max: u32::try_from(max).unwrap_or(u32::MAX),
                lease_ms,
                topic_pattern: topic_pattern.map(str::to_string),
            })
            .await?;
        let Outcome::Delivered { messages } = outcome else {
            return Err(unexpected(&outcome));
        };
        self.metrics.delivered.inc_by(messages.len() as u64);
        self.metrics
            .redelivered
            .inc_by(messages.iter().filter(|m| m.attempts > 1).count() as u64);
        Ok(messages)
    }

    async fn receive(&self, body: &Map<String, Value>) -> QueueResult<Value> {
        let f = Fields(body);
        let queue = f.required_str("queue_name")?.to_string();
        let subscriber = match f.str("subscriber_id")? {
            Some(id) => id.to_string(),
            None => format!("receiver-{}", self.generated_id()),
        };
        let pattern = match f.str("topic_pattern")? {
            None | Some("#") => None,
            Some(p) => {
                crate::topic::check_pattern(p).map_err(Refusal::invalid)?;
                Some(p.to_string())
            }
        };
        let max = f.uint("max_messages")?.unwrap_or(1) as usize;
        if max == 0 || max > MAX_BATCH {
            return Err(Refusal::invalid(format!(
                "max_messages must be 1 to {MAX_BATCH}, got {max}"
            )));
        }
        let auto_ack = f.bool("auto_acknowledge", false)?;
        let wait = args::receive_timeout(&f)?.min(self.max_receive_wait);
        let deadline = tokio::time::Instant::now() + wait;
        // An unknown queue is refused before anything waits on it.
        self.queue(&queue).await?;
        let mut changes = self.watch(&queue);
        let messages = loop {
            let row = self.queue(&queue).await?;
            if row.ready > 0 {
                let lease_ms = row.settings.visibility_timeout_ms;
                let got = self
                    .lease(&queue, &subscriber, max, lease_ms, pattern.as_deref())
                    .await?;
                if !got.is_empty() {
                    break got;
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                // Timers make messages ready without a send; look again.
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                () = tokio::time::sleep_until(deadline) => break Vec::new(),
                () = self.shutdown.cancelled() => break Vec::new(),
            }
            if tokio::time::Instant::now() >= deadline {
                break Vec::new();
            }
        };
        if auto_ack {
            for m in messages.iter().filter(|m| m.lease_deadline_ms.is_some()) {
                self.settle(&queue, &m.message_id, &subscriber, None)
                    .await?;
            }
        }
        let listed: Vec<Value> = messages.iter().map(message_json).collect();
        Ok(json!({
            "success": true,
            "empty": listed.is_empty(),
            "message": listed.first(),
            "messages": listed,
            "queue_name": queue,
            "subscriber_id": subscriber,
        }))
    }

    /// Acks (`nack_delay` = `None`) or nacks a message leased to
    /// `subscriber` (a pull consumer, or a pushed subscription of this node).
    async fn settle(
        &self,
        queue: &str,
        message_id: &str,
        subscriber: &str,
        nack_delay: Option<Duration>,
    ) -> QueueResult<()> {
        let pushed = self.subscriptions.consumer_of(subscriber);
        let consumer = pushed.as_deref().unwrap_or(subscriber);
        let kind = match nack_delay {
            None => EventKind::MessageAcked {
                queue: queue.to_string(),
                message_id: message_id.to_string(),
                consumer: consumer.to_string(),
            },
            Some(delay) => EventKind::MessageNacked {
                queue: queue.to_string(),
                message_id: message_id.to_string(),
                consumer: consumer.to_string(),
                delay_ms: millis(delay),
            },
        };
        let outcome = self.propose(kind).await?;
        self.subscriptions.settled(subscriber, message_id);
        match outcome {
            Outcome::Acked { enqueued_at_ms } => {
                self.metrics.acked.inc();
                let age_ms = now_ms().saturating_sub(enqueued_at_ms);
                self.metrics
                    .end_to_end_seconds
                    .observe(age_ms as f64 / 1000.0);
            }
            Outcome::Released {
                requeued,
                dead_lettered,
            } => {
                self.metrics.nacked.inc_by(requeued + dead_lettered);
                self.metrics.dead_lettered.inc_by(dead_lettered);
            }
            other => return Err(unexpected(&other)),
        }
        Ok(())
    }

    async fn ack(&self, body: &Map<String, Value>) -> QueueResult<Value> {
        let f = Fields(body);
        let queue = f.required_str("queue_name")?;
        let message_id = f.required_str("message_id")?;
        let subscriber = f.required_str("subscriber_id")?;
        // Upstream acks with `success: false` to give a message back.
        let nack = (!f.bool("success", true)?).then_some(Duration::ZERO);
        self.settle(queue, message_id, subscriber, nack).await?;
        Ok(json!({"success": true, "queue_name": queue, "message_id": message_id}))
    }

    async fn nack(&self, body: &Map<String, Value>) -> QueueResult<Value> {
        let f = Fields(body);
        let queue = f.required_str("queue_name")?;
        let message_id = f.required_str("message_id")?;
        let subscriber = f.required_str("subscriber_id")?;
        let delay = f.seconds("delay_seconds")?.unwrap_or(Duration::ZERO);
        self.settle(queue, message_id, subscriber, Some(delay))
            .await?;
        Ok(json!({"success": true, "queue_name": queue, "message_id": message_id}))
    }

    async fn purge(&self, body: &Map<String, Value>) -> QueueResult<Value> {
        let queue = Fields(body).required_str("queue_name")?.to_string();
        committed(
            self.node
                .propose_steps(EventKind::QueueTrimmed {
                    name: queue.clone(),
                    from_seq: 0,
                    below_seq: None,
                    limit: BULK_STEP_ROWS,
                })
                .await,
        )?;
        Ok(json!({"success": true, "queue_name": queue}))
    }

    async fn delete(&self, body: &Map<String, Value>) -> QueueResult<Value> {
        let queue = Fields(body).required_str("queue_name")?.to_string();
        committed(
            self.node
                .propose_steps(EventKind::QueueDeleteStep {
                    name: queue.clone(),
                    from_seq: 0,
                    from_id: String::new(),
                    limit: BULK_STEP_ROWS,
                })
                .await,
        )?;
        Ok(json!({"success": true, "queue_name": queue}))
    }

    /// Settings and counters of one queue (`queue_name`) or of all.
    async fn stats(&self, body: &Map<String, Value>) -> QueueResult<Value> {
        let rows = match Fields(body).str("queue_name")? {
            Some(name) => vec![self.queue(name).await?],
            None => self.all_queues().await?,
        };
        let queues: Vec<Value> = rows
            .iter()
            .map(|q| {
                json!({
                    "queue_name": q.name,
                    "queue_type": q.settings.queue_type.as_str(),
                    "max_size": q.settings.max_size,
                    "depth": q.ready + q.delayed,
                    "ready": q.ready,
                    "delayed": q.delayed,
                    "in_flight": q.in_flight,
                    "dead_letter_queue": q.settings.dead_letter_queue,
                    "subscribers": self.subscriptions.count(&q.name),
                })
            })
            .collect();
        Ok(json!({"success": true, "queues": queues}))
    }

    /// Every queue row, in name order (read off the reactor).
    async fn all_queues(&self) -> QueueResult<Vec<QueueRow>> {
        let inspector = self.node.inspector();
        let scan = tokio::task::spawn_blocking(move || {
            let mut rows = Vec::new();
            inspector
                .scan_view(View::Queues, &[], |row: QueueRow| {
                    rows.push(row);
                    mpreg_storage::Flow::Continue
                })
                .map(|_| rows)
        });
        let unavailable = |e: String| Refusal::new(ErrorCode::Unavailable, e);
        scan.await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|e| unavailable(e.to_string()))
    }

    /// Connection `conn_id` closed: its subscriptions end and the messages
    /// they held are released to other consumers at once.
    pub async fn disconnected(&self, conn_id: u64) {
        for (queue, consumer, message_ids) in self.subscriptions.remove_connection(conn_id) {
            self.release(&queue, &consumer, message_ids).await;
        }
    }

    /// Releases a gone consumer's leases.
    async fn release(&self, queue: &str, consumer: &str, message_ids: Vec<String>) {
        if message_ids.is_empty() {
            return;
        }
        let released = self
            .propose(EventKind::LeasesReleased {
                queue: queue.to_string(),
                consumer: consumer.to_string(),
                message_ids,
            })
            .await;
        match released {
            Ok(Outcome::Released { dead_lettered, .. }) => {
                self.metrics.dead_lettered.inc_by(dead_lettered);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%queue, %consumer, error = %e, "failed to release leases"),
        }
    }
}

fn unknown_queue(queue: &str) -> Refusal {
    Refusal::new(ErrorCode::NotFound, format!("unknown queue {queue}"))
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn receivers_leave_no_waiters_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::new(dir.path().to_path_buf());
        let node = Arc::new(
            Node::start(&config, vec![], Default::default())
                .await
                .expect("node"),
        );
        let metrics = Metrics::new(100).expect("metrics");
        let shutdown = CancellationToken::new();
        let queues = Queues::start(
            node.clone(),
            metrics.queue.clone(),
            Duration::from_secs(30),
            shutdown.clone(),
        );
        let waiting = || {
            queues
                .changes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len()
        };
        let call = |fun: &'static str, body: Value| {
            let queues = queues.clone();
            async move {
                let Value::Object(kwargs) = body else {
                    unreachable!("bodies are objects")
                };
                queues.call(fun, &[], &kwargs).await
            }
        };
        let unknown = call(
            "mpreg.queue.receive",
            json!({"queue_name": "nope", "timeout_seconds": 0.05}),
        )
        .await;
        assert_eq!(unknown["error_code"], 1009, "{unknown}");
        assert_eq!(
            waiting(),
            0,
            "a receive on an unknown queue registered a waiter"
        );

        call("mpreg.queue.create", json!({"queue_name": "q"})).await;
        let empty = call(
            "mpreg.queue.receive",
            json!({"queue_name": "q", "timeout_seconds": 0.05}),
        )
        .await;
        assert_eq!(empty["empty"], true, "{empty}");
        assert_eq!(waiting(), 0, "a finished receive left its waiter");
        shutdown.cancel();
        node.shutdown().await;
    }
}
