//! The client + peer listener on `--listen`: WebSocket connections carrying
//! MPREG JSON frames, one session per connection; connections on path
//! `/peer` are other nodes and go to the [`PeerServer`]. Connections that
//! open with a length prefix instead of an upgrade (`tcp://`, `tcps://`)
//! are clients of the same JSON frames, each preceded by its length.
//!
//! Each session has a reader (parses frames, dispatches them), a writer
//! (drains a bounded outbound queue, sends pings), a limit on requests in
//! flight and an idle timeout. Replies use the frame type of the request.
//! One slow or hostile connection only ever waits on its own queue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mpreg_client::framing::{FrameCodec, MessageTransport, write_burst};
use mpreg_client::protocol::{self, ErrorCode, Inbound, PubSubAck, RpcError, RpcResponse};
use mpreg_storage::credential::Action;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_util::codec::Framed;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Auth, Principal, Refused};
use crate::cache::{self, Cache};
use crate::cluster::peer::MAX_PEER_FRAME;
use crate::config::TransportLimits;
use crate::metrics::TransportMetrics;
use crate::peer_server::PeerServer;
use crate::pubsub::PubSub;
use crate::queue::{Queues, subscribe_ack};
use crate::refusal::Refusal;
use crate::rpc::Rpc;
use crate::session::{FrameKind, Outbound};
use crate::tls::{ServerStream, ServerTls};

/// The systems a session dispatches frames to.
pub struct Services {
    pub auth: Arc<Auth>,
    pub rpc: Arc<Rpc>,
    pub pubsub: Arc<PubSub>,
    pub queues: Arc<Queues>,
    pub cache: Arc<Cache>,
}

/// What the listener serves: peers from the start, clients once the
/// node's systems run.
pub struct Endpoints {
    pub peers: Arc<PeerServer>,
    services: OnceLock<Arc<Services>>,
}

impl Endpoints {
    pub fn new(peers: Arc<PeerServer>) -> Arc<Self> {
        Arc::new(Endpoints {
            peers,
            services: OnceLock::new(),
        })
    }

    /// Opens the listener to clients.
    pub fn serve_clients(&self, services: Arc<Services>) {
        let _ = self.services.set(services);
    }
}

/// Peer connections served at once (other members of the cluster; each
/// opens one link per address).
const MAX_PEER_CONNECTIONS: usize = 256;

/// Whether the HTTP request waiting on `stream` asks for path `/peer`, read
/// without consuming it (the handshake reads it again). This one answer
/// picks the connection's slot, frame limit and server, so a peer has the
/// peer frame limit from its first frame. A request line that is slow to
/// arrive is treated as a client's. Over TLS the first decrypted read is
/// looked at: clients and peers write the request in one piece.
/// What a new connection opens with, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opening {
    /// A WebSocket upgrade on `/peer`: another node.
    Peer,
    /// A WebSocket upgrade on any other path: a client.
    WebSocket,
    /// A length prefix (`tcp://`, `tcps://`): a client of framed JSON. Its
    /// first byte is below 0x20 for any frame under 512 MiB, where a
    /// WebSocket upgrade starts with `G`.
    Framed,
}

const PEER_UPGRADE: &[u8] = b"GET /peer";

/// The opening `head` shows, or `None` while it is a prefix of both a
/// peer's and a client's upgrade.
fn opening_of(head: &[u8]) -> Option<Opening> {
    match head.first() {
        None => None,
        Some(&first) if first < 0x20 => Some(Opening::Framed),
        _ if head.len() >= PEER_UPGRADE.len() => Some(if head.starts_with(PEER_UPGRADE) {
            Opening::Peer
        } else {
            Opening::WebSocket
        }),
        _ if PEER_UPGRADE.starts_with(head) => None,
        _ => Some(Opening::WebSocket),
    }
}

/// Reads (without consuming) the first bytes of a connection until they
/// tell what it opens with; one that says nothing in time is taken for a
/// WebSocket client, whose handshake then fails.
async fn opening(stream: &mut ServerStream, deadline: tokio::time::Instant) -> Opening {
    let tcp = match stream {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => {
            return match tokio::time::timeout_at(deadline, tls.fill_buf()).await {
                Ok(Ok(head)) => opening_of(head).unwrap_or(Opening::WebSocket),
                _ => Opening::WebSocket,
            };
        }
    };
    let mut buf = [0u8; PEER_UPGRADE.len()];
    loop {
        match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => match opening_of(&buf[..n]) {
                Some(opening) => return opening,
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            },
            _ => return Opening::WebSocket,
        }
    }
}

/// Accepts connections until `shutdown` is cancelled; sessions and their
/// requests run on `tasks` so shutdown can wait for them. A WebSocket
/// opened on path `/peer` is another node; any other path is a client.
pub async fn serve(
    listener: TcpListener,
    endpoints: Arc<Endpoints>,
    limits: TransportLimits,
    metrics: TransportMetrics,
    tls: Option<Arc<ServerTls>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    // Connections whose first request line is not read yet, then clients
    // and peers on their own limits: clients filling theirs never keep the
    // other members of the cluster out.
    let unclassified = Arc::new(Semaphore::new(limits.max_connections));
    let client_slots = Arc::new(Semaphore::new(limits.max_connections));
    let peer_slots = Arc::new(Semaphore::new(MAX_PEER_CONNECTIONS));
    let next_id = Arc::new(AtomicU64::new(1));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        // Replies are small and latency-bound: Nagle's algorithm would hold
        // a reply back until the client's delayed ACK (tens of ms).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        let Ok(classifying) = unclassified.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            continue;
        };
        let (client_slots, peer_slots) = (client_slots.clone(), peer_slots.clone());
        let (endpoints, limits, metrics, shutdown, tasks_inner, next_id) = (
            endpoints.clone(),
            limits.clone(),
            metrics.clone(),
            shutdown.clone(),
            tasks.clone(),
            next_id.clone(),
        );
        let tls = tls.clone();
        tasks.spawn(async move {
            // The TLS handshake and the request line share one deadline.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            let mut stream = match tls {
                None => Either::Left(stream),
                Some(tls) => match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            let opening = opening(&mut stream, deadline).await;
            let asks_for_peer = opening == Opening::Peer;
            drop(classifying);
            let slots = if asks_for_peer {
                peer_slots
            } else {
                client_slots
            };
            let Ok(slot) = slots.try_acquire_owned() else {
                let what = if asks_for_peer { "peer" } else { "client" };
                tracing::warn!(%peer, what, "connection limit reached; closing new connection");
                return;
            };
            metrics.connections_accepted.inc();
            metrics.connections_open.inc();
            // Frames up to twice the limit are read whole and refused with
            // the connection kept; only larger ones break the stream. Peers
            // have their own limit, which raft batches are built to fit.
            let hard_cap = if asks_for_peer {
                MAX_PEER_FRAME
            } else {
                limits.max_frame_bytes.saturating_mul(2)
            };
            let services = endpoints.services.get().filter(|_| !asks_for_peer);
            let session = |services: &Services, principal| Session {
                id: next_id.fetch_add(1, Ordering::Relaxed),
                peer,
                principal,
                auth: services.auth.clone(),
                rpc: services.rpc.clone(),
                pubsub: services.pubsub.clone(),
                queues: services.queues.clone(),
                cache: services.cache.clone(),
                limits: limits.clone(),
                metrics: metrics.clone(),
                tasks: tasks_inner.clone(),
            };
            if opening == Opening::Framed {
                let mut framed = Framed::new(stream, FrameCodec::new(hard_cap));
                match services.map(|s| (s, s.auth.authenticate(None))) {
                    Some((services, Ok(principal))) => {
                        session(services, principal).run(framed, shutdown).await;
                    }
                    refused => {
                        let error = match refused {
                            Some((_, Err(refused))) => RpcError::new(
                                ErrorCode::PermissionDenied,
                                format!(
                                    "{}; tcp:// and tcps:// carry no token: connect over ws:// or wss://",
                                    refused.message
                                ),
                            ),
                            _ => RpcError::new(
                                ErrorCode::Unavailable,
                                "the node is starting; retry".to_string(),
                            ),
                        };
                        let response = RpcResponse::error(None, error);
                        let _ = framed.send(reply(FrameKind::Binary, &response)).await;
                        let _ = framed.close().await;
                    }
                }
                metrics.connections_open.dec();
                metrics.connections_closed.inc();
                drop(slot);
                return;
            }
            let config = WebSocketConfig::default()
                .max_message_size(Some(hard_cap))
                .max_frame_size(Some(hard_cap));
            let mut principal = None;
            // The handshake callback's signature is tungstenite's.
            #[allow(clippy::result_large_err)]
            let authenticate = |request: &Request, response: Response| {
                let Some(services) = services else {
                    return Ok(response);
                };
                let token = auth::presented_token(request.headers());
                match services.auth.authenticate(token.as_deref()) {
                    Ok(who) => {
                        principal = Some(who);
                        Ok(response)
                    }
                    Err(refused) => {
                        tracing::info!(%peer, reason = refused.reason, "client refused at the upgrade");
                        let mut answer = ErrorResponse::new(Some(refused.message));
                        *answer.status_mut() = StatusCode::UNAUTHORIZED;
                        answer.headers_mut().insert(
                            "www-authenticate",
                            HeaderValue::from_static("Bearer realm=\"mpreg\""),
                        );
                        Err(answer)
                    }
                }
            };
            match tokio_tungstenite::accept_hdr_async_with_config(stream, authenticate, Some(config))
                .await
            {
                Err(e) => tracing::debug!(%peer, error = %e, "websocket handshake failed"),
                Ok(ws) if asks_for_peer => {
                    endpoints.peers.clone().serve(ws, peer, shutdown).await;
                }
                Ok(mut ws) => match (services, principal) {
                    (Some(services), Some(principal)) => {
                        session(services, principal).run(ws, shutdown).await;
                    }
                    _ => {
                        let close = CloseFrame {
                            code: CloseCode::Again,
                            reason: "the node is starting; retry".into(),
                        };
                        let _ = ws.close(Some(close)).await;
                    }
                },
            }
            metrics.connections_open.dec();
            metrics.connections_closed.inc();
            drop(slot);
        });
    }
}

struct Session {
    id: u64,
    peer: SocketAddr,
    /// Who the connection presented itself as at the upgrade.
    principal: Principal,
    auth: Arc<Auth>,
    rpc: Arc<Rpc>,
    pubsub: Arc<PubSub>,
    queues: Arc<Queues>,
    cache: Arc<Cache>,
    limits: TransportLimits,
    metrics: TransportMetrics,
    tasks: TaskTracker,
}

/// The `kind` label of a refused frame, from its error code.
fn frame_error_kind(code: i64) -> &'static str {
    if code == ErrorCode::FrameTooLarge.code() {
        "too_large"
    } else if code == ErrorCode::InvalidRole.code() {
        "unknown_role"
    } else if code == ErrorCode::Busy.code() {
        "busy"
    } else {
        "malformed"
    }
}

fn ack(kind: FrameKind, u: &str, result: Result<(), String>) -> Outbound {
    kind.json(&PubSubAck::new(u, result))
}

fn reply(kind: FrameKind, response: &RpcResponse) -> Outbound {
    kind.message(serde_json::to_string(response).unwrap_or_else(|e| {
        format!(r#"{{"u":null,"r":null,"error":{{"code":1003,"message":"RPC execution failed","details":"reply did not serialize: {e}"}}}}"#)
    }))
}

/// The in-flight bounds of one connection: requests running in the
/// background hold one request slot and their frame's size in bytes until
/// their reply is queued.
struct Admission {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
}

/// A request's place among the connection's in-flight ones.
struct Admitted {
    _request: tokio::sync::OwnedSemaphorePermit,
    _bytes: tokio::sync::OwnedSemaphorePermit,
}

impl Admission {
    fn new(limits: &TransportLimits) -> Self {
        Admission {
            requests: Arc::new(Semaphore::new(limits.max_in_flight)),
            bytes: Arc::new(Semaphore::new(limits.max_in_flight_bytes)),
            max_bytes: limits.max_in_flight_bytes,
        }
    }

    /// Room for a request of `frame_bytes`, or `None` (refuse it: busy).
    fn admit(&self, frame_bytes: usize) -> Option<Admitted> {
        let weight = u32::try_from(frame_bytes.clamp(1, self.max_bytes)).unwrap_or(u32::MAX);
        let request = self.requests.clone().try_acquire_owned().ok()?;
        let bytes = self.bytes.clone().try_acquire_many_owned(weight).ok()?;
        Some(Admitted {
            _request: request,
            _bytes: bytes,
        })
    }
}

impl Session {
    /// Why a frame over the connection's in-flight limit is refused
    /// (counted as a frame error).
    fn busy_details(&self) -> String {
        self.metrics
            .frame_errors
            .with_label_values(&[frame_error_kind(ErrorCode::Busy.code())])
            .inc();
        format!(
            "{} requests or {} bytes of requests in flight on this connection (max_in_flight_per_connection, max_in_flight_bytes_per_connection)",
            self.limits.max_in_flight, self.limits.max_in_flight_bytes
        )
    }

    /// The reply to an RPC-shaped request over the in-flight limit.
    fn busy(&self, kind: FrameKind, u: String) -> Outbound {
        let error = RpcError::new(ErrorCode::Busy, self.busy_details());
        reply(kind, &RpcResponse::error(Some(u), error))
    }

    /// The reply to a request its credential does not allow.
    fn denied(&self, kind: FrameKind, u: String, refused: &Refused) -> Outbound {
        reply(kind, &RpcResponse::error(Some(u), refused.rpc_error()))
    }

    /// The reply to a pub/sub frame over the in-flight limit.
    fn busy_ack(&self, kind: FrameKind, u: &str) -> Outbound {
        ack(kind, u, Err(self.busy_details()))
    }

    /// Whether the connection's credential allows every one of `actions`.
    fn permitted(&self, actions: &[Action<'_>]) -> Result<(), Refused> {
        self.auth.authorize(&self.principal, actions)
    }

    /// Runs one request's work on a task of its own, boxed: the future of
    /// a request is as large as its deepest await, and tokio copies a
    /// task's future by value when it spawns it and again when it
    /// finishes; boxed, it copies a pointer.
    fn spawn_request(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(Box::pin(work));
    }

    fn provider_id(&self) -> String {
        format!("{}/conn-{}", self.rpc_node_id(), self.id)
    }

    fn rpc_node_id(&self) -> &str {
        self.rpc.node_id()
    }

    #[tracing::instrument(name = "session", skip_all, fields(conn_id = self.id, peer = %self.peer))]
    /// Serves the connection's frames, WebSocket or length-prefixed.
    async fn run<T>(self, transport: T, shutdown: CancellationToken)
    where
        T: MessageTransport + 'static,
    {
        let (mut sink, mut frames) = transport.split();
        let (outbound, mut queue) = mpsc::channel::<Outbound>(self.limits.outbound_queue);
        // Cancelled to drop the connection at once, even when the client
        // reads nothing and the writer waits on a full socket (a slow
        // consumer under `slow_consumer_policy = "disconnect"`).
        let hang_up = CancellationToken::new();
        let ping_interval = self.limits.ping_interval;
        let metrics = self.metrics.clone();
        let writer_hang_up = hang_up.clone();
        let writer = tokio::spawn(async move {
            let mut ping = tokio::time::interval(ping_interval);
            ping.tick().await;
            // This connection's share of the outbound queue gauge.
            let mut queued = 0i64;
            loop {
                let message = tokio::select! {
                    next = queue.recv() => match next {
                        Some(message) => message,
                        None => break,
                    },
                    _ = ping.tick() => Message::Ping(Vec::new().into()),
                    () = writer_hang_up.cancelled() => break,
                };
                let count = |message: &Message| {
                    let bytes = match message {
                        Message::Text(text) => text.len(),
                        Message::Binary(bytes) => bytes.len(),
                        _ => return,
                    };
                    metrics.frames_sent.inc();
                    metrics.bytes_sent.inc_by(bytes as u64);
                };
                let wrote = tokio::select! {
                    wrote = write_burst(&mut sink, message, &mut queue, count) => wrote,
                    () = writer_hang_up.cancelled() => break,
                };
                let waiting = i64::try_from(queue.len()).unwrap_or(i64::MAX);
                metrics.outbound_queue_frames.add(waiting - queued);
                queued = waiting;
                if !matches!(wrote, Ok(false)) {
                    break;
                }
            }
            metrics.outbound_queue_frames.sub(queued);
            if !writer_hang_up.is_cancelled() {
                let _ = sink.close().await;
            }
        });

        let in_flight = Admission::new(&self.limits);
        let mut worker = false;
        let mut last_seen = Instant::now();
        // One timer for the connection's life, not one per frame: when it
        // fires it is moved to `idle_timeout` after the last frame, and
        // the connection closes only if none came since.
        let idle = tokio::time::sleep(self.limits.idle_timeout);
        tokio::pin!(idle);
        loop {
            let frame = tokio::select! {
                frame = frames.next() => frame,
                () = shutdown.cancelled() => break,
                () = hang_up.cancelled() => {
                    tracing::debug!("hanging up");
                    break;
                }
                () = idle.as_mut() => {
                    let deadline = last_seen + self.limits.idle_timeout;
                    if Instant::now() < deadline {
                        idle.as_mut().reset(tokio::time::Instant::from_std(deadline));
                        continue;
                    }
                    tracing::debug!("closing idle connection");
                    let _ = outbound.send(Message::Close(None)).await;
                    break;
                }
            };
            last_seen = Instant::now();
            let (bytes, kind) = match frame {
                Some(Ok(Message::Text(text))) => (Bytes::from(text), FrameKind::Text),
                Some(Ok(Message::Binary(bytes))) => (bytes, FrameKind::Binary),
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => continue,
                Some(Err(WsError::Capacity(e))) => {
                    self.metrics
                        .frame_errors
                        .with_label_values(&[frame_error_kind(ErrorCode::FrameTooLarge.code())])
                        .inc();
                    let error = RpcError::new(
                        ErrorCode::FrameTooLarge,
                        format!("{e}; the limit is {} bytes", self.limits.max_frame_bytes),
                    );
                    let _ = outbound
                        .send(reply(FrameKind::Text, &RpcResponse::error(None, error)))
                        .await;
                    let close = CloseFrame {
                        code: CloseCode::Size,
                        reason: "frame too large".into(),
                    };
                    let _ = outbound.send(Message::Close(Some(close))).await;
                    break;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "connection failed");
                    break;
                }
            };
            self.metrics.frames_received.inc();
            self.metrics.bytes_received.inc_by(bytes.len() as u64);
            if bytes.len() > self.limits.max_frame_bytes {
                self.metrics
                    .frame_errors
                    .with_label_values(&[frame_error_kind(ErrorCode::FrameTooLarge.code())])
                    .inc();
                let details = format!(
                    "frame of {} bytes; the limit is {} bytes",
                    bytes.len(),
                    self.limits.max_frame_bytes
                );
                let response =
                    RpcResponse::error(None, RpcError::new(ErrorCode::FrameTooLarge, details));
                if outbound.send(reply(kind, &response)).await.is_err() {
                    break;
                }
                continue;
            }
            match protocol::parse(&bytes) {
                Err(refused) => {
                    self.metrics
                        .frame_errors
                        .with_label_values(&[frame_error_kind(refused.error.code)])
                        .inc();
                    let response = RpcResponse::error(refused.u, refused.error);
                    if outbound.send(reply(kind, &response)).await.is_err() {
                        break;
                    }
                }
                Ok(Inbound::Rpc(request)) => {
                    if let Err(refused) = self.permitted(&auth::rpc_actions(&request)) {
                        let _ = outbound.send(self.denied(kind, request.u, &refused)).await;
                        continue;
                    }
                    let Some(permit) = in_flight.admit(bytes.len()) else {
                        let _ = outbound.send(self.busy(kind, request.u)).await;
                        continue;
                    };
                    let rpc = self.rpc.clone();
                    let outbound = outbound.clone();
                    self.spawn_request(async move {
                        let response = rpc.handle(request).await;
                        let _ = outbound.send(reply(kind, &response)).await;
                        drop(permit);
                    });
                }
                Ok(Inbound::CacheRequest(request)) => {
                    let namespace = cache::namespace_of(&request).map(Action::Cache);
                    if let Err(refused) = self.permitted(namespace.as_slice()) {
                        let refusal = Refusal::new(ErrorCode::PermissionDenied, refused.message);
                        let answer = Cache::refused(&request, refusal);
                        let _ = outbound.send(kind.json(&answer)).await;
                        continue;
                    }
                    let Some(permit) = in_flight.admit(bytes.len()) else {
                        let _ = outbound.send(self.busy(kind, request.u)).await;
                        continue;
                    };
                    let cache = self.cache.clone();
                    let outbound = outbound.clone();
                    self.spawn_request(async move {
                        let answer = cache.handle(request).await;
                        let _ = outbound.send(kind.json(&answer)).await;
                        drop(permit);
                    });
                }
                Ok(Inbound::WorkerRegister(register)) => {
                    let names: Vec<_> = register
                        .functions
                        .iter()
                        .map(|f| Action::Register(&f.name))
                        .collect();
                    if let Err(refused) = self.permitted(&names) {
                        let _ = outbound.send(self.denied(kind, register.u, &refused)).await;
                        continue;
                    }
                    let Some(permit) = in_flight.admit(bytes.len()) else {
                        let _ = outbound.send(self.busy(kind, register.u)).await;
                        continue;
                    };
                    let provider = self.provider_id();
                    self.rpc
                        .workers()
                        .connect(&provider, outbound.clone(), kind);
                    worker = true;
                    let rpc = self.rpc.clone();
                    let outbound = outbound.clone();
                    self.spawn_request(async move {
                        let response = match rpc.register(&provider, register.functions).await {
                            Ok(r) => RpcResponse::ok(register.u, r),
                            Err(e) => RpcResponse::error(Some(register.u), e),
                        };
                        let _ = outbound.send(reply(kind, &response)).await;
                        drop(permit);
                    });
                }
                Ok(Inbound::WorkerWithdraw(withdraw)) => {
                    let names: Vec<_> = withdraw
                        .functions
                        .iter()
                        .map(|f| Action::Register(&f.name))
                        .collect();
                    if let Err(refused) = self.permitted(&names) {
                        let _ = outbound.send(self.denied(kind, withdraw.u, &refused)).await;
                        continue;
                    }
                    let Some(permit) = in_flight.admit(bytes.len()) else {
                        let _ = outbound.send(self.busy(kind, withdraw.u)).await;
                        continue;
                    };
                    let provider = self.provider_id();
                    let rpc = self.rpc.clone();
                    let outbound = outbound.clone();
                    self.spawn_request(async move {
                        let response = match rpc.withdraw(&provider, &withdraw.functions).await {
                            Ok(r) => RpcResponse::ok(withdraw.u, r),
                            Err(e) => RpcResponse::error(Some(withdraw.u), e),
                        };
                        let _ = outbound.send(reply(kind, &response)).await;
                        drop(permit);
                    });
                }
                Ok(Inbound::InternalAnswer(answer)) => {
                    self.rpc.workers().answer(&self.provider_id(), answer)
                }
                Ok(Inbound::Publish(publish)) => {
                    let result = match self.permitted(&[Action::Publish(&publish.message.topic)]) {
                        Ok(()) => self
                            .pubsub
                            .publish(&publish.message)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(refused) => Err(refused.message),
                    };
                    if outbound.send(ack(kind, &publish.u, result)).await.is_err() {
                        break;
                    }
                }
                Ok(Inbound::Subscribe(subscribe)) => {
                    let patterns: Vec<_> = subscribe
                        .subscription
                        .patterns
                        .iter()
                        .map(|p| Action::Subscribe(&p.pattern))
                        .collect();
                    if let Err(refused) = self.permitted(&patterns) {
                        let _ = outbound
                            .send(ack(kind, &subscribe.u, Err(refused.message)))
                            .await;
                        continue;
                    }
                    let Some(permit) = in_flight.admit(bytes.len()) else {
                        let _ = outbound.send(self.busy_ack(kind, &subscribe.u)).await;
                        continue;
                    };
                    let pubsub = self.pubsub.clone();
                    let outbound = outbound.clone();
                    let hang_up = hang_up.clone();
                    let conn_id = self.id;
                    self.spawn_request(async move {
                        let u = subscribe.u;
                        let ack_ok = {
                            let (outbound, u) = (outbound.clone(), u.clone());
                            async move {
                                let _ = outbound.send(ack(kind, &u, Ok(()))).await;
                            }
                        };
                        let subscribed = pubsub
                            .subscribe(
                                subscribe.subscription,
                                conn_id,
                                outbound.clone(),
                                hang_up.clone(),
                                kind,
                                ack_ok,
                            )
                            .await;
                        if let Err(e) = subscribed {
                            let _ = outbound.send(ack(kind, &u, Err(e.to_string()))).await;
                        }
                        drop(permit);
                    });
                }
                Ok(Inbound::QueueSubscribe(subscribe)) => {
                    if let Err(refused) = self.permitted(&[Action::Queue(&subscribe.queue_name)]) {
                        let refusal = Refusal::new(ErrorCode::PermissionDenied, refused.message);
                        let refused = subscribe_ack(&subscribe.u, &Err(refusal));
                        let _ = outbound.send(kind.json(&refused)).await;
                        continue;
                    }
                    self.queues
                        .subscribe(subscribe, self.id, outbound.clone(), kind)
                        .await;
                }
                Ok(Inbound::QueueUnsubscribe(unsubscribe)) => {
                    let Some(permit) = in_flight.admit(bytes.len()) else {
                        let busy = Refusal::new(ErrorCode::Busy, self.busy_details());
                        let refused = subscribe_ack(&unsubscribe.u, &Err(busy));
                        let _ = outbound.send(kind.json(&refused)).await;
                        continue;
                    };
                    let queues = self.queues.clone();
                    let outbound = outbound.clone();
                    self.spawn_request(async move {
                        let u = unsubscribe.u;
                        let id = unsubscribe.subscriber_id;
                        let result = queues.unsubscribe(&id).await.map(|()| id);
                        let _ = outbound.send(kind.json(&subscribe_ack(&u, &result))).await;
                        drop(permit);
                    });
                }
                Ok(Inbound::Unsubscribe(unsubscribe)) => {
                    let Some(permit) = in_flight.admit(bytes.len()) else {
                        let _ = outbound.send(self.busy_ack(kind, &unsubscribe.u)).await;
                        continue;
                    };
                    let pubsub = self.pubsub.clone();
                    let outbound = outbound.clone();
                    self.spawn_request(async move {
                        let result = pubsub
                            .unsubscribe(&unsubscribe.subscription_id)
                            .await
                            .map_err(|e| e.to_string());
                        let _ = outbound.send(ack(kind, &unsubscribe.u, result)).await;
                        drop(permit);
                    });
                }
            }
        }
        self.pubsub.disconnected(self.id).await;
        self.queues.disconnected(self.id).await;
        if worker {
            self.rpc.worker_gone(&self.provider_id()).await;
        }
        drop(outbound);
        let _ = writer.await;
    }
}
