//! The peer server: answers the connections other nodes open on
//! `--listen` (WebSocket path `/peer`): raft RPCs, proposals forwarded by
//! followers, membership requests, and calls and publishes routed to the
//! node that holds the worker or the subscriber, and calls, messages and
//! cache requests from other clusters. Entry type [`PeerServer`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mpreg_storage::ArrivingSnapshot;
use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::cluster::membership::Joining;
use crate::cluster::peer::{MAX_IN_FLIGHT_PER_LINK, PEER_SERVE_IDLE_TIMEOUT};
use crate::cluster::{Node, membership};
use crate::envelope::{
    Body, Envelope, FederationReply, FederationRequest, PeerReply, PeerRequest, Refused,
};
use crate::federation::{Federation, Routing};
use crate::pubsub::PubSub;
use crate::rpc::Rpc;
use crate::tls::ServerStream;

/// The systems forwarded calls, publishes and neighbour clusters'
/// requests run on, once started.
struct Systems {
    rpc: Arc<Rpc>,
    pubsub: Arc<PubSub>,
    cache: Arc<Cache>,
    federation: Arc<Federation>,
}

/// Serves requests from other nodes.
pub struct PeerServer {
    node: Arc<Node>,
    systems: OnceLock<Systems>,
    /// Peers refused at the handshake, by reason.
    auth_refusals: IntCounterVec,
    /// The checksum of the snapshot arriving from the leader, chunk by
    /// chunk: a damaged one is refused here, since raft stops on a failed
    /// install.
    arriving_snapshot: std::sync::Mutex<ArrivingSnapshot>,
}

impl PeerServer {
    pub fn new(node: Arc<Node>, auth_refusals: IntCounterVec) -> Arc<Self> {
        Arc::new(PeerServer {
            node,
            systems: OnceLock::new(),
            auth_refusals,
            arriving_snapshot: std::sync::Mutex::default(),
        })
    }

    /// Serves forwarded calls and publishes from now on (before, they are
    /// refused as "starting").
    pub fn attach(
        &self,
        rpc: Arc<Rpc>,
        pubsub: Arc<PubSub>,
        cache: Arc<Cache>,
        federation: Arc<Federation>,
    ) {
        let _ = self.systems.set(Systems {
            rpc,
            pubsub,
            cache,
            federation,
        });
    }

    /// Serves one peer connection until it closes (or reads nothing for
    /// [`PEER_SERVE_IDLE_TIMEOUT`]): first the handshake, which names the
    /// cluster the peer proved (or claimed, with no secret for it); then
    /// each request runs on its own task, at most
    /// [`MAX_IN_FLIGHT_PER_LINK`] at once, and its reply is written when
    /// ready. A request whose envelope names another cluster is refused.
    pub async fn serve(
        self: Arc<Self>,
        mut ws: WebSocketStream<ServerStream>,
        peer: std::net::SocketAddr,
        shutdown: CancellationToken,
    ) {
        let certificate = crate::tls::presented_certificate(ws.get_ref());
        let accepted = self
            .node
            .peers()
            .auth()
            .accept(&mut ws, certificate.as_ref());
        let cluster: Arc<str> = match accepted.await {
            Ok(cluster) => cluster.into(),
            Err(refusal) => {
                tracing::warn!(%peer, reason = refusal.reason(), error = %refusal, "peer refused at the handshake");
                self.auth_refusals
                    .with_label_values(&[refusal.reason()])
                    .inc();
                return;
            }
        };
        let (mut sink, mut frames) = ws.split();
        let (replies, mut queue) = mpsc::channel::<Message>(256);
        let running = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_PER_LINK));
        let writer = tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        loop {
            let frame = tokio::select! {
                frame = tokio::time::timeout(PEER_SERVE_IDLE_TIMEOUT, frames.next()) => frame,
                () = shutdown.cancelled() => break,
            };
            let bytes = match frame {
                Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
                Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => break,
                Ok(Some(Ok(_))) => continue,
                Err(_) => {
                    tracing::debug!(%peer, "closing an idle peer connection");
                    break;
                }
            };
            let envelope = match Envelope::decode(&bytes) {
                Ok(envelope) => envelope,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "closing a peer connection that sent an unreadable frame");
                    break;
                }
            };
            // At most MAX_IN_FLIGHT_PER_LINK requests of one connection run
            // at once; past that this stops reading it (TCP pushes back).
            let Ok(permit) = running.clone().acquire_owned().await else {
                break;
            };
            let server = self.clone();
            let replies = replies.clone();
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let _running = permit;
                let reply = server.answer(envelope, &cluster).await;
                match reply.encode() {
                    Ok(bytes) => {
                        let _ = replies.send(Message::binary(bytes)).await;
                    }
                    Err(e) => tracing::error!(error = %e, "peer reply did not encode"),
                }
            });
        }
        drop(replies);
        let _ = writer.await;
    }

    /// The reply to `envelope`, which came on a link from `proven`'s node.
    async fn answer(&self, mut envelope: Envelope, proven: &str) -> Envelope {
        let me = self.node.identity().node_id.clone();
        if envelope.source_cluster != proven {
            let refused = Refused::Invalid(format!(
                "the link was set up by a node of cluster {proven}; the request claims cluster {:?}",
                envelope.source_cluster
            ));
            return envelope.reply(&me, PeerReply::Refused(refused));
        }
        let body = std::mem::replace(
            &mut envelope.body,
            Body::Reply(PeerReply::Refused(Refused::Invalid(String::new()))),
        );
        let cluster = &self.node.identity().cluster_id;
        let reply = match body {
            Body::Request(PeerRequest::Federation(FederationRequest::Call(call))) => {
                match self.systems.get() {
                    Some(systems) => {
                        let routing = routing(&envelope);
                        let called = systems.rpc.call_federated(call, routing).await;
                        PeerReply::Federation(Ok(FederationReply::Called(called)))
                    }
                    None => PeerReply::Refused(starting()),
                }
            }
            Body::Request(PeerRequest::Federation(FederationRequest::Publish { messages })) => {
                match self.systems.get() {
                    Some(systems) => {
                        let routing = routing(&envelope);
                        PeerReply::Federation(
                            systems.pubsub.publish_federated(messages, routing).await,
                        )
                    }
                    None => PeerReply::Refused(starting()),
                }
            }
            Body::Request(PeerRequest::Federation(FederationRequest::Cache { request })) => {
                match self.systems.get() {
                    Some(systems) => {
                        let routing = routing(&envelope);
                        PeerReply::Federation(
                            systems.cache.handle_federated(request, routing).await,
                        )
                    }
                    None => PeerReply::Refused(starting()),
                }
            }
            Body::Request(PeerRequest::Federation(request)) => match self.systems.get() {
                Some(systems) => PeerReply::Federation(systems.federation.handle(request).await),
                None => PeerReply::Refused(starting()),
            },
            Body::Request(_) if envelope.source_cluster != *cluster => {
                PeerReply::Refused(Refused::Invalid(format!(
                    "node {me} is in cluster {cluster:?}, the request came from cluster {:?}",
                    envelope.source_cluster
                )))
            }
            Body::Request(request) if envelope.hop_budget > 0 => {
                self.handle(request, &envelope).await
            }
            Body::Request(_) => PeerReply::Refused(Refused::Invalid(format!(
                "hop budget spent after {:?}",
                envelope.routing_path
            ))),
            Body::Reply(_) => {
                PeerReply::Refused(Refused::Invalid("a reply is not a request".to_string()))
            }
        };
        envelope.reply(&me, reply)
    }

    async fn handle(&self, request: PeerRequest, envelope: &Envelope) -> PeerReply {
        let raft = self.node.raft();
        match request {
            PeerRequest::Hello => PeerReply::Hello {
                node_id: self.node.identity().node_id.clone(),
            },
            PeerRequest::AppendEntries(rpc) => {
                PeerReply::AppendEntries(raft.append_entries(rpc).await)
            }
            // A node with no membership yet (joining, or rebuilding a
            // lost store) has no vote to give: the one it gave before its
            // store was lost is forgotten.
            PeerRequest::Vote(_) if !self.node.has_membership() => PeerReply::Refused(
                Refused::Unavailable("this node is joining and does not vote yet".to_string()),
            ),
            PeerRequest::Vote(rpc) => PeerReply::Vote(raft.vote(rpc).await),
            PeerRequest::InstallSnapshot(rpc) => {
                let checked = self
                    .arriving_snapshot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .chunk(&rpc.meta.snapshot_id, rpc.offset, &rpc.data, rpc.done);
                match checked {
                    Ok(()) => PeerReply::InstallSnapshot(raft.install_snapshot(rpc).await),
                    Err(damage) => {
                        tracing::error!(%damage, "refused a snapshot from the leader");
                        PeerReply::Refused(Refused::Invalid(damage))
                    }
                }
            }
            PeerRequest::Propose(kinds) => {
                if !self.node.is_leader() {
                    return PeerReply::Proposed(Err(Refused::NotLeader {
                        leader: self.node.leader(),
                    }));
                }
                PeerReply::Proposed(self.node.propose_all(kinds).await)
            }
            PeerRequest::Join { node_id, addr } => PeerReply::Membership(
                membership::join(&self.node, &node_id, &addr, Joining::Running, envelope).await,
            ),
            PeerRequest::JoinEmpty { node_id, addr } => PeerReply::Membership(
                membership::join(&self.node, &node_id, &addr, Joining::Empty, envelope).await,
            ),
            PeerRequest::Remove { node } => {
                PeerReply::Membership(membership::remove(&self.node, &node, envelope).await)
            }
            PeerRequest::Call {
                function,
                args,
                kwargs,
                timeout_ms,
            } => match self.systems.get() {
                Some(systems) => {
                    let timeout = Duration::from_millis(timeout_ms);
                    let called = systems
                        .rpc
                        .call_forwarded(&function, (&args, &kwargs), timeout);
                    PeerReply::Called(called.await)
                }
                None => PeerReply::Refused(starting()),
            },
            PeerRequest::ReadIndex => PeerReply::ReadIndex(self.node.read_index().await),
            PeerRequest::Publish { message } => match self.systems.get() {
                Some(systems) => PeerReply::Published(systems.pubsub.publish_forwarded(&message)),
                None => PeerReply::Refused(starting()),
            },
            PeerRequest::Federation(_) => PeerReply::Refused(Refused::Invalid(
                "a federation request is answered before this".to_string(),
            )),
        }
    }
}

/// Where a request from another cluster is going and where it has been.
fn routing(envelope: &Envelope) -> Routing {
    Routing {
        target: envelope.target_cluster.clone().unwrap_or_default(),
        path: envelope.federation_path.clone(),
        budget: envelope.hop_budget,
    }
}

fn starting() -> Refused {
    Refused::Unavailable("the node is starting".to_string())
}
