//! Outbound links to other nodes: per peer address, one WebSocket per
//! [`Lane`] (raft and membership traffic; forwarded writes, calls and
//! publishes), requests multiplexed on it by id, reconnect with exponential
//! backoff.
//!
//! A link connects to `<addr>/peer?from=<node id>&lane=<lane>`: the path
//! tells the listener this is a peer, and a fault-injecting proxy reads who
//! is calling from the query.
//!
//! Each link bounds its requests in flight ([`MAX_IN_FLIGHT_PER_LINK`]); a
//! request over the bound waits for room within its timeout, then fails
//! with nothing sent. A full link is slow, not dead: only a read or write
//! error, or [`PEER_IDLE_TIMEOUT`] without a frame from the peer and with
//! nothing in flight, closes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mpreg_client::tls::TlsClient;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::peer_auth::{HandshakeError, PeerAuth};
use crate::envelope::{Body, Envelope, Lane, PeerReply, PeerRequest, Refused};

/// First wait after a failed connect; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// Longest a connect (TCP + WebSocket handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest peer frame read (raft batches and snapshot chunks).
pub const MAX_PEER_FRAME: usize = 64 * 1024 * 1024;
/// Most requests waiting for their reply on one link.
pub const MAX_IN_FLIGHT_PER_LINK: usize = 1024;
/// An outbound link that reads no frame for this long, with no request
/// waiting, is closed; raft heartbeats keep the raft lane far busier than
/// this. The serving end waits twice as long ([`PEER_SERVE_IDLE_TIMEOUT`]),
/// so the caller, which knows whether a request is on its way, closes first.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A served peer connection that brings no frame for this long is closed.
pub const PEER_SERVE_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Nothing was sent: the peer could not be reached.
    #[error("peer {addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    /// Sent, but no reply came in time; the request may have run.
    #[error("peer {addr} did not answer within {after:?}")]
    Timeout { addr: String, after: Duration },
    /// Sent, but the connection closed before the reply; it may have run.
    #[error("the connection to peer {addr} closed before it answered")]
    Closed { addr: String },
    /// Nothing was sent: one side refused the other at the handshake (a
    /// secret missing or not matching); retrying does not help.
    #[error("peer {addr}: {reason}")]
    Unauthenticated { addr: String, reason: String },
}

/// Across nodes, a failed request says whether it can have run: nothing
/// was sent when the peer was unreachable; after a timeout or a closed link
/// it may have.
impl From<PeerError> for Refused {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::Unreachable { .. } | PeerError::Unauthenticated { .. } => {
                Refused::Unavailable(e.to_string())
            }
            PeerError::Timeout { .. } | PeerError::Closed { .. } => {
                Refused::Uncertain(e.to_string())
            }
        }
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<PeerReply>>>>;

/// One open connection.
struct Connection {
    outbound: mpsc::Sender<Message>,
    waiters: Waiters,
    closed: Arc<AtomicBool>,
    /// One permit per request waiting for its reply.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// The state of the link to one address.
#[derive(Default)]
struct Link {
    connection: Option<Arc<Connection>>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// A link, locked while it connects.
type SharedLink = Arc<tokio::sync::Mutex<Link>>;

/// Links to every peer this node talks to.
pub struct Peers {
    node_id: String,
    cluster_id: String,
    auth: PeerAuth,
    /// Trust for `wss://` peers (`tls_ca_file`).
    tls: Option<TlsClient>,
    links: Mutex<HashMap<(String, Lane), SharedLink>>,
    /// When each address last answered (unix ms).
    last_contact: Arc<Mutex<HashMap<String, u64>>>,
    next_id: AtomicU64,
}

impl Peers {
    /// Links of node `node_id`; `tls` is the trust for `wss://` peers.
    pub fn new(node_id: &str, cluster_id: &str, auth: PeerAuth, tls: Option<TlsClient>) -> Self {
        Peers {
            node_id: node_id.to_string(),
            cluster_id: cluster_id.to_string(),
            auth,
            tls,
            links: Mutex::default(),
            last_contact: Arc::default(),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// How this node proves itself to peers and judges them.
    pub fn auth(&self) -> &PeerAuth {
        &self.auth
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Sends `request` to the node at `addr` and waits for its reply.
    pub async fn request(
        &self,
        addr: &str,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply, PeerError> {
        let envelope = Envelope::request(&self.node_id, &self.cluster_id, 0, request);
        self.send(addr, envelope, timeout).await
    }

    /// Sends `request` toward another cluster: the envelope carries the
    /// `federation_path` (clusters crossed, this one last), the cluster
    /// `hop_budget` left and the `target_cluster`.
    pub async fn request_across(
        &self,
        addr: &str,
        request: PeerRequest,
        (federation_path, hop_budget, target): (Vec<String>, u8, &str),
        timeout: Duration,
    ) -> Result<PeerReply, PeerError> {
        let mut envelope = Envelope::request(&self.node_id, &self.cluster_id, 0, request);
        envelope.federation_path = federation_path;
        envelope.hop_budget = hop_budget;
        envelope.target_cluster = Some(target.to_string());
        self.send(addr, envelope, timeout).await
    }

    /// Sends `request`, which arrived in `received`, on to `addr`: the
    /// routing path grows by this node and the hop budget shrinks by one.
    pub async fn forward(
        &self,
        addr: &str,
        request: PeerRequest,
        received: &Envelope,
        timeout: Duration,
    ) -> Result<PeerReply, PeerError> {
        if received.hop_budget <= 1 || received.routing_path.contains(&self.node_id) {
            return Err(PeerError::Unreachable {
                addr: addr.to_string(),
                reason: format!(
                    "not forwarded: routing path {:?}, hop budget {}",
                    received.routing_path, received.hop_budget
                ),
            });
        }
        let mut envelope = Envelope::request(&self.node_id, &self.cluster_id, 0, request);
        envelope.routing_path = received.routing_path.clone();
        envelope.routing_path.push(self.node_id.clone());
        envelope.hop_budget = received.hop_budget - 1;
        self.send(addr, envelope, timeout).await
    }

    async fn send(
        &self,
        addr: &str,
        mut envelope: Envelope,
        timeout: Duration,
    ) -> Result<PeerReply, PeerError> {
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let lane = match &envelope.body {
            Body::Request(request) => request.lane(),
            Body::Reply(_) => Lane::Bulk,
        };
        let unsent = |reason: String| PeerError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        // Connecting (or waiting for another request's connect to this
        // peer) is within the request's time too.
        let connection = tokio::time::timeout_at(deadline, self.connection(addr, lane))
            .await
            .map_err(|_| unsent(format!("not connected within {timeout:?}")))??;
        let permit = tokio::time::timeout_at(
            deadline,
            connection.in_flight.clone().acquire_owned(),
        )
        .await
        .map_err(|_| {
            unsent(format!(
                "{MAX_IN_FLIGHT_PER_LINK} requests in flight on its {} link for {timeout:?}",
                lane.as_str()
            ))
        })?
        .map_err(|_| unsent("connection closed".to_string()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        envelope.id = id;
        let bytes = envelope.encode().map_err(unsent)?;
        let (reply, answer) = oneshot::channel();
        connection
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, reply);
        let forget = || {
            connection
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        };
        // The link may have closed since it was picked: its reader and
        // writer mark it closed, then drop every waiter, so a waiter added
        // after that would wait for nothing until the deadline.
        if connection.closed.load(Ordering::SeqCst) {
            forget();
            return Err(unsent("connection closed".to_string()));
        }
        // A full queue waits (the link is slow, not dead), within the
        // request's time; nothing is sent if it stays full.
        match tokio::time::timeout_at(deadline, connection.outbound.send(Message::binary(bytes)))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                forget();
                return Err(unsent("connection closed".to_string()));
            }
            Err(_) => {
                forget();
                return Err(unsent(format!(
                    "its {} link stayed full for {timeout:?}",
                    lane.as_str()
                )));
            }
        }
        let replied = tokio::time::timeout_at(deadline, answer).await;
        drop(permit);
        match replied {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(PeerError::Closed {
                addr: addr.to_string(),
            }),
            Err(_) => {
                forget();
                Err(PeerError::Timeout {
                    addr: addr.to_string(),
                    after: timeout,
                })
            }
        }
    }

    /// When `addr` last answered a request (unix ms).
    pub fn last_contact(&self, addr: &str) -> Option<u64> {
        self.last_contact
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .copied()
    }

    /// The open connection to `addr` on `lane`, connecting unless a recent
    /// failure says to wait.
    async fn connection(&self, addr: &str, lane: Lane) -> Result<Arc<Connection>, PeerError> {
        let link = self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((addr.to_string(), lane))
            .or_default()
            .clone();
        let mut link = link.lock().await;
        if let Some(connection) = &link.connection {
            if !connection.closed.load(Ordering::SeqCst) {
                return Ok(connection.clone());
            }
            link.connection = None;
        }
        if let Some(retry_at) = link.retry_at
            && Instant::now() < retry_at
        {
            return Err(PeerError::Unreachable {
                addr: addr.to_string(),
                reason: format!(
                    "{} failed connects; retrying in {:?}",
                    link.failures,
                    retry_at - Instant::now()
                ),
            });
        }
        match self.connect(addr, lane).await {
            Ok(connection) => {
                link.failures = 0;
                link.retry_at = None;
                link.connection = Some(connection.clone());
                Ok(connection)
            }
            Err(e) => {
                link.failures = link.failures.saturating_add(1);
                let backoff = MIN_BACKOFF
                    .saturating_mul(1 << link.failures.min(8))
                    .min(MAX_BACKOFF);
                link.retry_at = Some(Instant::now() + backoff);
                Err(e)
            }
        }
    }

    async fn connect(&self, addr: &str, lane: Lane) -> Result<Arc<Connection>, PeerError> {
        let url = format!(
            "{}/peer?from={}&lane={}",
            addr.trim_end_matches('/'),
            self.node_id,
            lane.as_str()
        );
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_PEER_FRAME))
            .max_frame_size(Some(MAX_PEER_FRAME));
        let connecting = mpreg_client::tls::connect(url.as_str(), self.tls.as_ref(), Some(config));
        let unreachable = |reason: String| PeerError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let (mut ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable(format!("connect timed out after {CONNECT_TIMEOUT:?}")))?
            .map_err(unreachable)?;
        match self.auth.connect(&self.node_id, &mut ws).await {
            Ok(()) => {}
            Err(HandshakeError::Failed(reason)) => return Err(unreachable(reason)),
            Err(HandshakeError::Refused(reason)) => {
                return Err(PeerError::Unauthenticated {
                    addr: addr.to_string(),
                    reason,
                });
            }
        }
        let (mut sink, mut stream) = ws.split();
        let (outbound, mut queue) = mpsc::channel::<Message>(256);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_PER_LINK));
        let waiters: Waiters = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (writer_waiters, writer_closed) = (waiters.clone(), closed.clone());
        tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            // Requests queued behind a failed write are never sent: their
            // waiters go (they fail as closed), as when the reader ends.
            writer_closed.store(true, Ordering::SeqCst);
            writer_waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            let _ = sink.close().await;
        });
        let (reader_waiters, reader_closed) = (waiters.clone(), closed.clone());
        let reader_in_flight = in_flight.clone();
        let last_contact = self.last_contact.clone();
        let peer = addr.to_string();
        tokio::spawn(async move {
            loop {
                let message = match tokio::time::timeout(PEER_IDLE_TIMEOUT, stream.next()).await {
                    Ok(Some(Ok(message))) => message,
                    Ok(_) => break,
                    // Idle: close only with nothing in flight, so no request
                    // races the close (the next one reconnects).
                    Err(_)
                        if !reader_waiters
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .is_empty() =>
                    {
                        continue;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, lane = lane.as_str(), "closing an idle link");
                        break;
                    }
                };
                let bytes = match message {
                    Message::Binary(bytes) => bytes,
                    Message::Close(_) => break,
                    _ => continue,
                };
                match Envelope::decode(&bytes) {
                    Ok(Envelope {
                        id,
                        body: Body::Reply(reply),
                        ..
                    }) => {
                        last_contact
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(peer.clone(), crate::clock::now_ms());
                        let waiter = reader_waiters
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(reply);
                        }
                    }
                    Ok(_) => tracing::debug!(%peer, "peer sent a request on an outbound link"),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "closing the link to a peer that sent an unreadable frame");
                        break;
                    }
                }
            }
            reader_closed.store(true, Ordering::SeqCst);
            reader_in_flight.close();
            reader_waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        });
        Ok(Arc::new(Connection {
            outbound,
            waiters,
            closed,
            in_flight,
        }))
    }
}

#[cfg(test)]
mod test {
    use std::time::Duration;

    use super::{PeerAuth, PeerError, Peers};
    use crate::envelope::{Envelope, PeerRequest};

    /// Nothing listens there: a request that is really sent fails to
    /// connect, one the guard stops never tries.
    const NOWHERE: &str = "ws://127.0.0.1:9";

    fn forward_reason(peers: &Peers, received: &Envelope) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sent = runtime.block_on(peers.forward(
            NOWHERE,
            PeerRequest::Hello,
            received,
            Duration::from_millis(300),
        ));
        match sent {
            Err(PeerError::Unreachable { reason, .. }) => reason,
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    /// docs/cluster.md: "a node never forwards a request whose budget is
    /// spent or whose path already holds it".
    #[test]
    fn the_hop_budget_and_the_routing_path_stop_a_forward() {
        let peers = Peers::new("n2", "c", PeerAuth::new("c", &Default::default()), None);
        let mut received = Envelope::request("n1", "c", 1, PeerRequest::Hello);

        received.hop_budget = 1;
        assert_eq!(
            forward_reason(&peers, &received),
            r#"not forwarded: routing path ["n1"], hop budget 1"#
        );

        received.hop_budget = 8;
        received.routing_path = vec!["n1".into(), "n2".into(), "n3".into()];
        assert_eq!(
            forward_reason(&peers, &received),
            r#"not forwarded: routing path ["n1", "n2", "n3"], hop budget 8"#
        );

        // With budget left and a path without this node it is sent (and
        // fails to connect).
        received.routing_path = vec!["n1".into()];
        received.hop_budget = 2;
        let reason = forward_reason(&peers, &received);
        assert!(!reason.starts_with("not forwarded"), "{reason}");
    }
}
