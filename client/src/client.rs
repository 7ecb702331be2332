//! The Rust client library: [`Client`] calls functions (one command or a
//! multi-command [`Request`]); [`Worker`] serves functions to a daemon.
//!
//! Both speak the same JSON protocol as MPREG clients, in binary WebSocket
//! frames, matching replies to requests by `u`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::borrow::Cow;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::framing::{Transport, is_framed_url, write_burst};
use crate::protocol::{
    InternalAnswer, PubSubAck, PubSubMessage, PubSubSubscription, Publish, RpcCommand, RpcError,
    RpcRequest, RpcResponse, Subscribe, TopicPattern, Unsubscribe,
};

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("failed to connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the connection closed before the reply arrived")]
    Closed,
    #[error("{0}")]
    Rpc(RpcError),
    #[error("unexpected reply: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
}

/// How [`Client::connect_with`] reaches a node.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Presented as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Trust for `wss://` URLs (a `wss://` URL without it is refused).
    pub tls: Option<crate::tls::TlsClient>,
}

/// A function served by a [`Worker`]: positional and keyword arguments in,
/// a JSON result or an error text out.
pub type Handler =
    Arc<dyn Fn(Vec<Value>, Map<String, Value>) -> Result<Value, String> + Send + Sync>;

/// Waiters for replies, by `u`; each gets its reply frame's text.
type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Bytes>>>>;
type Handlers = Arc<Mutex<HashMap<String, Served>>>;

/// A registered [`Handler`] and where its calls run.
#[derive(Clone)]
struct Served {
    handler: Handler,
    /// On the connection's runtime ([`Worker::register_inline`]), not on
    /// tokio's blocking pool ([`Worker::register`]).
    inline: bool,
}
type Subscriptions = Arc<Mutex<HashMap<String, NotificationSender>>>;
type QueueSubscriptions = Arc<Mutex<HashMap<String, mpsc::Sender<Value>>>>;

/// Notifications one pub/sub subscription buffers before the application
/// reads them; past this, new ones are dropped and counted in the next
/// delivered one's `dropped` (pub/sub delivery is at most once).
pub const SUBSCRIPTION_BUFFER: usize = 10_000;
/// Largest frame a `tcp://` connection reads (what a WebSocket reads by
/// default).
const MAX_FRAME_BYTES: usize = 64 << 20;
/// Most queue messages one queue subscription buffers (the largest
/// prefetch): the daemon pushes no more than the prefetch unacked, so only
/// leases that ran out unread can overflow it, and those are delivered
/// again.
pub const QUEUE_SUBSCRIPTION_BUFFER: usize = 1000;

/// The sending side of a pub/sub subscription, with the notifications it
/// dropped because the application did not keep up.
struct NotificationSender {
    tx: mpsc::Sender<Notification>,
    dropped: u64,
}

impl NotificationSender {
    fn deliver(&mut self, mut notification: Notification) {
        notification.dropped += self.dropped;
        match self.tx.try_send(notification) {
            Ok(()) => self.dropped = 0,
            Err(mpsc::error::TrySendError::Full(lost)) => self.dropped = lost.dropped + 1,
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// The messages pushed to one queue subscription, in delivery order. Each
/// is the `message` object of a `queue-message` frame; ack it with
/// [`Client::queue`] `("ack", ..)` and this subscription's `id`.
pub type QueueSubscription = Subscription<Value>;

/// A message delivered to a subscription.
#[derive(Clone, Debug)]
pub struct Notification {
    pub message: PubSubMessage,
    /// Messages dropped for this subscriber just before this one (slow consumer).
    pub dropped: u64,
}

/// The messages of one subscription (pub/sub, or a queue's pushed
/// messages), in delivery order.
pub struct Subscription<T = Notification> {
    /// The subscription id (for a queue: the subscriber id to ack with).
    pub id: String,
    messages: mpsc::Receiver<T>,
}

impl<T> Subscription<T> {
    /// The next message; `None` once the connection is gone.
    pub async fn next(&mut self) -> Option<T> {
        self.messages.recv().await
    }
}

/// A multi-command request.
#[derive(Clone, Debug, Default)]
pub struct Request {
    cmds: Vec<RpcCommand>,
    intermediate_results: bool,
    execution_summary: bool,
}

impl Request {
    pub fn new() -> Self {
        Request::default()
    }

    /// Adds a command; a string argument equal to another command's name is
    /// replaced by that command's result.
    pub fn cmd(mut self, name: &str, fun: &str, args: Vec<Value>) -> Self {
        self.cmds.push(RpcCommand {
            name: name.into(),
            fun: fun.into(),
            args,
            ..RpcCommand::default()
        });
        self
    }

    /// Adds a fully specified command (kwargs, locs, version constraint...).
    pub fn command(mut self, cmd: RpcCommand) -> Self {
        self.cmds.push(cmd);
        self
    }

    /// Also return every level's results.
    pub fn intermediate_results(mut self, on: bool) -> Self {
        self.intermediate_results = on;
        self
    }

    /// Also return timings.
    pub fn execution_summary(mut self, on: bool) -> Self {
        self.execution_summary = on;
        self
    }
}

/// A connection to a daemon.
pub struct Client {
    outbound: mpsc::Sender<Message>,
    pending: Pending,
    handlers: Handlers,
    subscriptions: Subscriptions,
    queue_subscriptions: QueueSubscriptions,
    /// Set when the connection is gone: new requests fail at once instead
    /// of waiting for a reply that cannot come.
    closed: Arc<AtomicBool>,
    next_u: AtomicU64,
    prefix: String,
    /// Reader and writer tasks; aborted on drop, which closes the socket.
    io: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.io.iter().for_each(|task| task.abort());
    }
}

fn new_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{}", nanos, std::process::id())
}

/// The fields of a frame the reader routes it by, read without building
/// the rest.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    u: Option<Cow<'a, str>>,
    /// The `u` a `pubsub-ack` answers.
    #[serde(borrow, default)]
    operation_id: Option<Cow<'a, str>>,
}

/// An `internal-rpc`: the daemon asks this worker to run a function.
#[derive(Deserialize)]
struct Call {
    #[serde(default)]
    u: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
}

/// A `pubsub-notification`.
#[derive(Deserialize)]
struct Delivered {
    #[serde(default)]
    subscription_id: String,
    #[serde(default)]
    dropped: u64,
    message: PubSubMessage,
}

/// A `queue-message`.
#[derive(Deserialize)]
struct Pushed {
    #[serde(default)]
    subscriber_id: String,
    message: Value,
}

/// A `cache-request` on one key, written by the typed cache calls.
#[derive(Serialize)]
struct CacheCall<'a, V: ?Sized> {
    role: &'static str,
    u: &'a str,
    operation: &'static str,
    key: KeyRef<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a V>,
}

/// A cache key as written: namespace and identifier.
#[derive(Serialize)]
struct KeyRef<'a> {
    namespace: &'a str,
    identifier: &'a str,
}

/// The fields of a `cache-response` that say whether it succeeded.
#[derive(Deserialize)]
struct CacheStatus<'a> {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    error_code: Option<Value>,
    #[serde(borrow, default)]
    error_message: Option<Cow<'a, str>>,
}

/// A `cache-response` to a `get`: its status and the entry's value.
#[derive(Deserialize)]
struct CacheGot<'a> {
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(default)]
    entry: Option<CacheGotEntry>,
}

#[derive(Deserialize)]
struct CacheGotEntry {
    value: Value,
}

/// What a committed cache write answered ([`Client::cache_put`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CacheWritten {
    /// False when the write left the entry as it was.
    #[serde(default)]
    pub changed: bool,
    /// The entry's revision after the write.
    #[serde(default)]
    pub revision: u64,
}

/// An `rpc` request of one command, written from borrowed fields by the
/// typed calls ([`Client::call_as`]).
#[derive(Serialize)]
struct OneCall<'a, A: ?Sized> {
    role: &'static str,
    u: &'a str,
    cmds: [OneCommand<'a, A>; 1],
}

#[derive(Serialize)]
struct OneCommand<'a, A: ?Sized> {
    name: &'a str,
    fun: &'a str,
    args: &'a A,
}

/// The reply to a one-command `rpc` request: its results by command name,
/// or the request's error.
#[derive(Deserialize)]
struct OneReply<R> {
    r: Option<HashMap<String, R>>,
    error: Option<RpcError>,
}

/// The body of an `mpreg.queue.send` of one message.
#[derive(Serialize)]
struct QueueSendBody<'a, P: ?Sized> {
    queue_name: &'a str,
    payload: &'a P,
}

/// The fields of an `mpreg.queue.send` result [`Client::queue_send`] reads.
#[derive(Deserialize)]
struct QueueSendResult {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error_code: Option<Value>,
    #[serde(default)]
    error_message: Option<String>,
}

/// What a committed queue send answered ([`Client::queue_send`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSent {
    /// The id the daemon gave the message.
    pub message_id: String,
    /// True when the queue already held a message with this id.
    pub duplicate: bool,
}

/// A queue or cache refusal: its message and error code.
fn refused(message: Option<&str>, code: &Value) -> ClientError {
    ClientError::Refused(format!(
        "{} (error_code {code})",
        message.unwrap_or("no error message")
    ))
}

/// `Ok` for a `cache-response` with `success: true`; a refusal (it has an
/// `error_code`) is [`ClientError::Refused`], anything else a protocol error.
fn cache_succeeded(frame: &[u8]) -> Result<(), ClientError> {
    let status: CacheStatus<'_> = decoded(frame)?;
    match (status.success, status.error_code) {
        (true, _) => Ok(()),
        (false, Some(code)) => Err(refused(status.error_message.as_deref(), &code)),
        (false, None) => Err(ClientError::Protocol(format!(
            "unexpected cache reply: {}",
            String::from_utf8_lossy(frame)
        ))),
    }
}

/// A frame as written: `role`, then the fields of `body`.
#[derive(Serialize)]
struct Framed<'a, T> {
    role: &'a str,
    #[serde(flatten)]
    body: &'a T,
}

/// The text of the frame of `role` carrying `body`.
fn framed<T: Serialize>(role: &str, body: &T) -> Result<Vec<u8>, ClientError> {
    encoded(&Framed { role, body })
}

/// The JSON text of a frame.
fn encoded<T: Serialize + ?Sized>(frame: &T) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(frame).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// A reply read as `T`; one that does not fit is [`ClientError::Protocol`].
fn decoded<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Result<T, ClientError> {
    serde_json::from_slice(frame).map_err(|e| ClientError::Protocol(e.to_string()))
}

async fn serve_call(handlers: Handlers, outbound: mpsc::Sender<Message>, call: Call) {
    let Call {
        u,
        command,
        args,
        kwargs,
    } = call;
    let served = handlers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&command)
        .cloned();
    let outcome = match served {
        None => Err(format!("this worker does not serve {command}")),
        Some(Served {
            handler,
            inline: true,
        }) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(args, kwargs)))
            .unwrap_or_else(|_| Err("handler panicked".to_string())),
        Some(Served {
            handler,
            inline: false,
        }) => tokio::task::spawn_blocking(move || handler(args, kwargs))
            .await
            .unwrap_or_else(|e| Err(format!("handler panicked: {e}"))),
    };
    let answer = match outcome {
        Ok(value) => InternalAnswer {
            u,
            answer: value,
            error: None,
        },
        Err(error) => InternalAnswer {
            u,
            answer: Value::Null,
            error: Some(error),
        },
    };
    if let Ok(frame) = framed("internal-answer", &answer) {
        let _ = outbound.send(Message::binary(frame)).await;
    }
}

impl Client {
    /// Connects to a daemon's client URL (`ws://127.0.0.1:6666`).
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, &ConnectOptions::default()).await
    }

    /// Connects presenting `token` (`Authorization: Bearer <token>`), as a
    /// node with credentials requires.
    pub async fn connect_with_token(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let options = ConnectOptions {
            token: token.map(str::to_string),
            ..ConnectOptions::default()
        };
        Client::connect_with(url, &options).await
    }

    /// Connects with `options`: a token to present, and how to trust the
    /// node of a `wss://` or `tcps://` URL. A `tcp://` or `tcps://` URL
    /// speaks length-prefixed frames, which carry no token.
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Client, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let failed = |reason: String| ClientError::Connect {
            url: url.to_string(),
            reason,
        };
        let transport: Transport = if is_framed_url(url) {
            if options.token.is_some() {
                return Err(failed(
                    "tcp:// and tcps:// carry no token: use ws:// or wss:// with a token".into(),
                ));
            }
            let framed = crate::tls::connect_framed(url, options.tls.as_ref(), MAX_FRAME_BYTES)
                .await
                .map_err(failed)?;
            Box::pin(framed)
        } else {
            let mut request = url
                .into_client_request()
                .map_err(|e| failed(e.to_string()))?;
            if let Some(token) = &options.token {
                let value = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| failed("the token is not a valid header value".into()))?;
                request.headers_mut().insert("authorization", value);
            }
            let (ws, _) = crate::tls::connect(request, options.tls.as_ref(), None)
                .await
                .map_err(failed)?;
            Box::pin(ws)
        };
        let (mut sink, mut stream) = transport.split();
        let (outbound, mut queue) = mpsc::channel::<Message>(1024);
        let writer = tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if write_burst(&mut sink, message, &mut queue, |_| {})
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let handlers: Handlers = Arc::default();
        let subscriptions: Subscriptions = Arc::default();
        let (reader_pending, reader_handlers, reader_out) =
            (pending.clone(), handlers.clone(), outbound.clone());
        let reader_subscriptions = subscriptions.clone();
        let queue_subscriptions: QueueSubscriptions = Arc::default();
        let reader_queue_subscriptions = queue_subscriptions.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let reader_closed = closed.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let bytes: Bytes = match message {
                    Message::Text(text) => text.into(),
                    Message::Binary(bytes) => bytes,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Ok(head) = serde_json::from_slice::<Head>(&bytes) else {
                    continue;
                };
                let key = match head.role.as_deref() {
                    Some("internal-rpc") => {
                        if let Ok(call) = serde_json::from_slice::<Call>(&bytes) {
                            tokio::spawn(serve_call(
                                reader_handlers.clone(),
                                reader_out.clone(),
                                call,
                            ));
                        }
                        continue;
                    }
                    Some("pubsub-notification") => {
                        let Ok(delivered) = serde_json::from_slice::<Delivered>(&bytes) else {
                            continue;
                        };
                        let mut subscriptions = reader_subscriptions
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        if let Some(sender) = subscriptions.get_mut(&delivered.subscription_id) {
                            sender.deliver(Notification {
                                message: delivered.message,
                                dropped: delivered.dropped,
                            });
                        }
                        continue;
                    }
                    Some("queue-message") => {
                        let Ok(pushed) = serde_json::from_slice::<Pushed>(&bytes) else {
                            continue;
                        };
                        let subscriptions = reader_queue_subscriptions
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        if let Some(tx) = subscriptions.get(&pushed.subscriber_id) {
                            let _ = tx.try_send(pushed.message);
                        }
                        continue;
                    }
                    Some("pubsub-ack") => head.operation_id,
                    _ => head.u,
                };
                let waiter = key.and_then(|k| {
                    reader_pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(k.as_ref())
                });
                if let Some(waiter) = waiter {
                    let _ = waiter.send(bytes);
                }
            }
            reader_closed.store(true, Ordering::SeqCst);
            reader_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        });
        Ok(Client {
            outbound,
            pending,
            handlers,
            subscriptions,
            queue_subscriptions,
            closed,
            next_u: AtomicU64::new(1),
            prefix: new_prefix(),
            io: vec![reader, writer],
        })
    }

    fn next_u(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next_u.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Sends one frame (which must carry `u`) and waits for the reply to it.
    async fn exchange(&self, u: String, frame: Vec<u8>) -> Result<Bytes, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(u.clone(), tx);
        // The reader marks the connection closed before it drops the
        // waiters, so a request registered after that is seen here.
        if self.closed.load(Ordering::SeqCst) {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&u);
            return Err(ClientError::Closed);
        }
        self.outbound
            .send(Message::binary(frame))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Runs a multi-command request; returns the whole reply.
    pub async fn send(&self, request: Request) -> Result<RpcResponse, ClientError> {
        let u = self.next_u();
        let wire = RpcRequest {
            u: u.clone(),
            cmds: request.cmds,
            return_intermediate_results: request.intermediate_results,
            include_execution_summary: request.execution_summary,
            debug_mode: false,
        };
        let frame = framed("rpc", &wire)?;
        let response: RpcResponse = decoded(&self.exchange(u, frame).await?)?;
        match response.error {
            Some(error) => Err(ClientError::Rpc(error)),
            None => Ok(response),
        }
    }

    /// Sends a pub/sub request and checks its ack.
    async fn pubsub(&self, u: String, frame: Vec<u8>) -> Result<(), ClientError> {
        let ack: PubSubAck = decoded(&self.exchange(u, frame).await?)?;
        match ack.success {
            true => Ok(()),
            false => Err(ClientError::Refused(ack.error.unwrap_or_default())),
        }
    }

    /// Publishes `payload` on `topic`; returns once it is fanned out.
    pub async fn publish(&self, topic: &str, payload: Value) -> Result<(), ClientError> {
        let u = self.next_u();
        let message = PubSubMessage {
            topic: topic.to_string(),
            payload,
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            message_id: format!("m-{u}"),
            publisher: self.prefix.clone(),
            headers: Map::new(),
            routing_path: None,
            current_hop: None,
        };
        let frame = framed(
            "pubsub-publish",
            &Publish {
                u: u.clone(),
                message,
            },
        )?;
        self.pubsub(u, frame).await
    }

    /// Subscribes to `patterns` (`*` = one level, `#` = zero or more);
    /// `backlog_seconds` > 0 also delivers retained messages that recent.
    pub async fn subscribe(
        &self,
        patterns: &[&str],
        backlog_seconds: u64,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_with(patterns, backlog_seconds, false).await
    }

    /// Like [`Client::subscribe`]; a durable subscription keeps buffering
    /// while its connection is away.
    pub async fn subscribe_with(
        &self,
        patterns: &[&str],
        backlog_seconds: u64,
        durable: bool,
    ) -> Result<Subscription, ClientError> {
        let u = self.next_u();
        let id = format!("s-{u}");
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), NotificationSender { tx, dropped: 0 });
        let subscription = PubSubSubscription {
            subscription_id: id.clone(),
            patterns: patterns
                .iter()
                .map(|p| TopicPattern {
                    pattern: p.to_string(),
                    exact_match: !p.contains('*') && !p.contains('#'),
                })
                .collect(),
            subscriber: self.prefix.clone(),
            created_at: 0.0,
            get_backlog: backlog_seconds > 0,
            backlog_seconds,
            durable,
        };
        let frame = framed(
            "pubsub-subscribe",
            &Subscribe {
                u: u.clone(),
                subscription,
            },
        );
        if let Err(e) = match frame {
            Ok(frame) => self.pubsub(u, frame).await,
            Err(e) => Err(e),
        } {
            self.subscriptions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(e);
        }
        Ok(Subscription { id, messages: rx })
    }

    /// Ends a subscription.
    pub async fn unsubscribe(&self, id: &str) -> Result<(), ClientError> {
        let u = self.next_u();
        let frame = framed(
            "pubsub-unsubscribe",
            &Unsubscribe {
                u: u.clone(),
                subscription_id: id.to_string(),
            },
        )?;
        let result = self.pubsub(u, frame).await;
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        result
    }

    /// Runs a multi-command request; returns the last level's results.
    pub async fn request(&self, request: Request) -> Result<Map<String, Value>, ClientError> {
        match self.send(request).await?.r {
            Some(Value::Object(results)) => Ok(results),
            other => Err(ClientError::Protocol(format!(
                "r is not an object: {other:?}"
            ))),
        }
    }

    /// Calls `mpreg.queue.<op>` (create, send, receive, ack, nack, purge,
    /// delete, stats) with `body`; a reply with `success: false` is
    /// [`ClientError::Refused`] carrying its message and error code.
    pub async fn queue(&self, op: &str, body: Value) -> Result<Value, ClientError> {
        let reply = self.call(&format!("mpreg.queue.{op}"), vec![body]).await?;
        if reply["success"] == json!(true) {
            Ok(reply)
        } else {
            Err(refused(
                reply["error_message"].as_str(),
                &reply["error_code"],
            ))
        }
    }

    /// Calls `fun` with the positional arguments `args` (anything that
    /// serializes as a JSON array) and reads its result as `R`: [`Client::call`]
    /// without a JSON tree on either side. A result `R` cannot read is
    /// [`ClientError::Protocol`].
    pub async fn call_as<A, R>(&self, fun: &str, args: &A) -> Result<R, ClientError>
    where
        A: Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        let u = self.next_u();
        let call = OneCall {
            role: "rpc",
            u: &u,
            cmds: [OneCommand {
                name: fun,
                fun,
                args,
            }],
        };
        let frame = encoded(&call)?;
        let reply: OneReply<R> = decoded(&self.exchange(u, frame).await?)?;
        match (reply.error, reply.r) {
            (Some(error), _) => Err(ClientError::Rpc(error)),
            (None, Some(mut results)) => results
                .remove(fun)
                .ok_or_else(|| ClientError::Protocol(format!("no result named {fun}"))),
            (None, None) => Err(ClientError::Protocol(
                "a reply with neither r nor error".into(),
            )),
        }
    }

    /// Sends one message with `payload` to `queue` and returns once it is
    /// committed: [`Client::queue`]'s `send` without a JSON tree on either
    /// side (no topic, priority, delay, TTL or id of the caller's; use
    /// [`Client::queue`] for those).
    pub async fn queue_send<P: Serialize + ?Sized>(
        &self,
        queue: &str,
        payload: &P,
    ) -> Result<QueueSent, ClientError> {
        let body = QueueSendBody {
            queue_name: queue,
            payload,
        };
        let sent: QueueSendResult = self.call_as("mpreg.queue.send", &[body]).await?;
        match sent {
            QueueSendResult {
                success: true,
                message_id: Some(message_id),
                duplicate,
                ..
            } => Ok(QueueSent {
                message_id,
                duplicate,
            }),
            QueueSendResult {
                success: false,
                error_code: Some(code),
                error_message,
                ..
            } => Err(refused(error_message.as_deref(), &code)),
            _ => Err(ClientError::Protocol(
                "a queue send result without success and message_id".into(),
            )),
        }
    }

    /// Sends one `cache-request` (`request` holds `operation`, `key`,
    /// `value`, `options`, ...; `role` and `u` are filled in) and returns
    /// the `cache-response`; one with `success: false` is
    /// [`ClientError::Refused`] carrying its message and error code.
    pub async fn cache(&self, mut request: Value) -> Result<Value, ClientError> {
        let u = self.next_u();
        request["role"] = json!("cache-request");
        request["u"] = json!(u);
        let frame = encoded(&request)?;
        let reply = self.exchange(u, frame).await?;
        cache_succeeded(&reply)?;
        decoded(&reply)
    }

    /// Puts `value` under `namespace`/`identifier` and returns what the
    /// committed write answered: [`Client::cache`]'s `put` without a JSON
    /// tree on either side (no metadata, tags or TTL; use
    /// [`Client::cache`] for those).
    pub async fn cache_put<V: Serialize + ?Sized>(
        &self,
        namespace: &str,
        identifier: &str,
        value: &V,
    ) -> Result<CacheWritten, ClientError> {
        let reply = self
            .cache_call("put", namespace, identifier, Some(value))
            .await?;
        decoded(&reply)
    }

    /// The value stored under `namespace`/`identifier`, `None` on a miss:
    /// [`Client::cache`]'s `get`, reading only the value from the reply.
    pub async fn cache_get(
        &self,
        namespace: &str,
        identifier: &str,
    ) -> Result<Option<Value>, ClientError> {
        let reply = self
            .cache_call::<()>("get", namespace, identifier, None)
            .await?;
        let got: CacheGot<'_> = decoded(&reply)?;
        match (got.status.as_ref(), got.entry) {
            ("hit", Some(entry)) => Ok(Some(entry.value)),
            ("miss", _) => Ok(None),
            _ => Err(ClientError::Protocol(format!(
                "unexpected cache reply: {}",
                String::from_utf8_lossy(&reply)
            ))),
        }
    }

    /// Sends a `cache-request` of `operation` on one key and returns its
    /// successful reply's frame.
    async fn cache_call<V: Serialize + ?Sized>(
        &self,
        operation: &'static str,
        namespace: &str,
        identifier: &str,
        value: Option<&V>,
    ) -> Result<Bytes, ClientError> {
        let u = self.next_u();
        let call = CacheCall {
            role: "cache-request",
            u: &u,
            operation,
            key: KeyRef {
                namespace,
                identifier,
            },
            value,
        };
        let frame = encoded(&call)?;
        let reply = self.exchange(u, frame).await?;
        cache_succeeded(&reply)?;
        Ok(reply)
    }

    /// Subscribes to a queue: the daemon pushes up to `prefetch` unacked
    /// messages at a time, leased to this subscription until acked.
    pub async fn subscribe_queue(
        &self,
        queue: &str,
        prefetch: u64,
        topic_pattern: Option<&str>,
    ) -> Result<QueueSubscription, ClientError> {
        let u = self.next_u();
        let id = format!("q-{u}");
        let (tx, rx) = mpsc::channel(QUEUE_SUBSCRIPTION_BUFFER);
        self.queue_subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        let frame = json!({
            "role": "queue-subscribe",
            "u": u,
            "queue_name": queue,
            "subscriber_id": id,
            "prefetch": prefetch,
            "topic_pattern": topic_pattern,
        });
        let frame = encoded(&frame)?;
        let reply: Value = decoded(&self.exchange(u, frame).await?)?;
        if reply["success"] != json!(true) {
            self.queue_subscriptions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(ClientError::Refused(
                reply["error_message"]
                    .as_str()
                    .unwrap_or("no error message")
                    .to_string(),
            ));
        }
        Ok(Subscription { id, messages: rx })
    }

    /// Calls one function and returns its result ([`Client::call_as`] with
    /// the result as a JSON tree).
    pub async fn call(&self, fun: &str, args: Vec<Value>) -> Result<Value, ClientError> {
        self.call_as(fun, &args).await
    }
}

/// A connection that serves functions to the daemon.
pub struct Worker {
    client: Client,
}

impl Worker {
    pub async fn connect(url: &str) -> Result<Worker, ClientError> {
        Ok(Worker {
            client: Client::connect(url).await?,
        })
    }

    /// [`Worker::connect`] with a token or TLS trust.
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Worker, ClientError> {
        Ok(Worker {
            client: Client::connect_with(url, options).await?,
        })
    }

    /// Serves `name` at `version` (semver) with resource tags `resources`;
    /// returns once the registration is committed. Each call runs on
    /// tokio's blocking pool, so `handler` may block or compute at length.
    pub async fn register(
        &self,
        name: &str,
        version: &str,
        resources: &[&str],
        handler: impl Fn(Vec<Value>, Map<String, Value>) -> Result<Value, String>
        + Send
        + Sync
        + 'static,
    ) -> Result<(), ClientError> {
        let served = Served {
            handler: Arc::new(handler),
            inline: false,
        };
        self.serve(name, version, resources, served).await
    }

    /// [`Worker::register`] for a handler that returns at once (no I/O,
    /// no long computation): each call runs on the connection's runtime,
    /// without the two thread hand-offs of the blocking pool. A handler
    /// that blocks here stalls the worker's connection.
    pub async fn register_inline(
        &self,
        name: &str,
        version: &str,
        resources: &[&str],
        handler: impl Fn(Vec<Value>, Map<String, Value>) -> Result<Value, String>
        + Send
        + Sync
        + 'static,
    ) -> Result<(), ClientError> {
        let served = Served {
            handler: Arc::new(handler),
            inline: true,
        };
        self.serve(name, version, resources, served).await
    }

    async fn serve(
        &self,
        name: &str,
        version: &str,
        resources: &[&str],
        served: Served,
    ) -> Result<(), ClientError> {
        self.client
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), served);
        let u = self.client.next_u();
        let frame = json!({
            "role": "worker-register",
            "u": u,
            "functions": [{"name": name, "version": version, "resources": resources}],
        });
        let frame = encoded(&frame)?;
        let response: RpcResponse = decoded(&self.client.exchange(u, frame).await?)?;
        match response.error {
            Some(error) => Err(ClientError::Rpc(error)),
            None => Ok(()),
        }
    }

    /// The worker's connection, for calls.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn notification(i: u64) -> Notification {
        let message = serde_json::from_value(
            json!({"topic": "t", "payload": i, "message_id": i.to_string()}),
        );
        Notification {
            message: message.unwrap(),
            dropped: 0,
        }
    }

    #[test]
    fn a_full_subscription_drops_and_counts_what_it_dropped() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut sender = NotificationSender { tx, dropped: 0 };
        for i in 0..5 {
            sender.deliver(notification(i));
        }
        let kept: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|n| n.dropped)
            .collect();
        assert_eq!(kept, [0, 0], "the buffer holds two");
        sender.deliver(notification(5));
        let next = rx.try_recv().unwrap();
        assert_eq!((next.message.payload, next.dropped), (json!(5), 3));
    }
}
