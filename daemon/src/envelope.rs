//! The node-to-node envelope: routing headers and a bincode payload behind
//! a version byte ([`ENVELOPE_VERSION`]), carried in binary WebSocket
//! frames on connections opened on path `/peer` of `--listen` (the
//! transport tells peers from clients at the handshake). Requests carry an
//! id; the reply to a request carries the same id. Errors that cross
//! nodes are typed ([`Refused`]) and say whether a retry is safe.
//!
//! Public so that a test can speak for a neighbour cluster over the wire
//! (`tests/daemon/federation/wire.rs`); it is not a client protocol.

use mpreg_client::protocol::RpcError;
use mpreg_storage::federation::{Announcement, CatalogAd, KeyAd, TableSignature};
use mpreg_storage::typ::NodeId;
use mpreg_storage::views::FunctionRow;
use mpreg_storage::{EventKind, Outcome, TypeConfig, codec};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

/// First byte of every peer frame written by this binary. 0xB5: route
/// tables carry catalog summaries, and calls cross clusters
/// (`FederationRequest::Call`, `Publish`, `Cache`); 0xB4: requests from neighbour clusters
/// (`PeerRequest::Federation`); 0xB3: forwarded
/// calls carry their caller's remaining time (`PeerRequest::Call`); 0xB2
/// brought typed refusals ([`Refused`], [`PeerReply::Refused`]). A node
/// that writes an older version is refused with an error naming both.
pub const ENVELOPE_VERSION: u8 = 0xB5;

/// Most nodes a forwarded message may cross.
pub const DEFAULT_HOP_BUDGET: u8 = 8;

/// One frame between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Node ids this message has passed through, sender first.
    pub routing_path: Vec<String>,
    /// Cluster ids this message has passed through (federation).
    pub federation_path: Vec<String>,
    /// Hops left; a node never forwards a message whose budget is spent.
    pub hop_budget: u8,
    pub source_cluster: String,
    pub target_cluster: Option<String>,
    /// Correlates a reply with its request (per connection).
    pub id: u64,
    pub body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Body {
    Request(PeerRequest),
    Reply(PeerReply),
}

/// What one node asks of another.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Who are you? Answered with [`PeerReply::Hello`].
    Hello,
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Events proposed on a follower, for the leader to commit.
    Propose(Vec<EventKind>),
    /// A node asks to become a member (learner, then voter).
    Join {
        node_id: String,
        addr: String,
    },
    /// Remove a member (by node id or raft id).
    Remove {
        node: String,
    },
    /// Run a function on a worker connected to the receiving node. Values
    /// travel as JSON text (bincode cannot carry `serde_json::Value`).
    Call {
        function: FunctionRow,
        args: String,
        kwargs: String,
        /// What is left of the caller's deadline: the receiver drops the
        /// call when it passes.
        timeout_ms: u64,
    },
    /// Fan a pub/sub message (JSON) out to the receiver's subscribers.
    Publish {
        message: String,
    },
    /// The leader's read index: the log index a linearizable read must
    /// wait for (raft read-index, confirmed by a quorum heartbeat).
    ReadIndex,
    /// From a neighbour cluster (the one request another cluster may make).
    Federation(FederationRequest),
    /// A node starting with an empty store asks to become a member. Like
    /// [`PeerRequest::Join`], except that a voter of that name (one whose
    /// store was lost or damaged) is made a learner first: a voter that
    /// forgot its log and its votes must not count towards a quorum until
    /// it has caught up.
    JoinEmpty {
        node_id: String,
        addr: String,
    },
}

/// What a neighbour cluster asks of a member of this cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FederationRequest {
    /// Who are you? Any member answers; nothing changes.
    Hello { cluster_id: String },
    /// The sender's whole route table for the receiver: routes missing from
    /// it are withdrawn. Only the receiver's leader takes it. `urls`: the
    /// sender's members, so the link survives the loss of any one.
    Announce {
        cluster_id: String,
        urls: Vec<String>,
        routes: Vec<Announcement>,
        /// The sender's public keys (only the sender's own are taken).
        keys: Option<KeyAd>,
        /// The catalog summaries the sender holds (its own first).
        catalogs: Vec<CatalogAd>,
        /// Over `mpreg_storage::federation::table_bytes`; none when unsigned.
        signatures: Vec<TableSignature>,
    },
    /// The sender removed its link to the receiver.
    Unlink { cluster_id: String },
    /// A round trip, to measure the link and see that it lives.
    Ping,
    /// Run a function in the envelope's `target_cluster`, or carry the call
    /// one cluster closer to it. Any member takes it.
    Call(FederatedCall),
    /// Pub/sub messages (JSON), in publish order, for the subscribers of
    /// the envelope's `target_cluster`, or to carry one cluster closer.
    Publish { messages: Vec<String> },
    /// A `cache-request` (JSON) for the cluster that holds its namespace
    /// (the envelope's `target_cluster`), or to carry one cluster closer.
    Cache { request: String },
}

/// A command forwarded to another cluster. Values travel as JSON text.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FederatedCall {
    pub fun: String,
    pub function_id: Option<String>,
    pub version_constraint: Option<String>,
    pub locs: Vec<String>,
    pub args: String,
    pub kwargs: String,
    /// What is left of the caller's deadline.
    pub timeout_ms: u64,
}

/// Answers to [`FederationRequest`]s.
#[derive(Debug, Serialize, Deserialize)]
pub enum FederationReply {
    /// The receiver's cluster, its members' client URLs and its leader's.
    Hello {
        cluster_id: String,
        urls: Vec<String>,
        leader_url: Option<String>,
    },
    /// How many routes the announcement brought in (new, changed or
    /// refreshed) and how many were refused, by reason.
    Announced {
        accepted: u32,
        rejected: Vec<(String, u32)>,
    },
    /// Only the leader takes announcements; this is where it is.
    NotLeader {
        leader_url: Option<String>,
    },
    Unlinked,
    Pong,
    /// The result of a [`FederationRequest::Call`] (JSON text), or its
    /// error, whose details name the cluster it arose in.
    Called(Result<String, RpcError>),
    /// The messages of a [`FederationRequest::Publish`] reached the target
    /// cluster's subscribers (how many it took).
    Published {
        accepted: u32,
    },
    /// The `cache-response` (JSON) to a [`FederationRequest::Cache`].
    Cached(String),
}

/// The connection a request travels on. Raft and membership traffic has
/// its own, so a burst of forwarded publishes, calls and writes queues
/// behind other bulk traffic, never in front of a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    Raft,
    Bulk,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Raft => "raft",
            Lane::Bulk => "bulk",
        }
    }
}

impl PeerRequest {
    pub fn lane(&self) -> Lane {
        match self {
            PeerRequest::Hello
            | PeerRequest::AppendEntries(_)
            | PeerRequest::Vote(_)
            | PeerRequest::InstallSnapshot(_)
            | PeerRequest::Join { .. }
            | PeerRequest::JoinEmpty { .. }
            | PeerRequest::Remove { .. }
            | PeerRequest::ReadIndex => Lane::Raft,
            PeerRequest::Propose(_)
            | PeerRequest::Call { .. }
            | PeerRequest::Publish { .. }
            | PeerRequest::Federation(_) => Lane::Bulk,
        }
    }
}

/// Why a request to another node did not (certainly) take effect. Each
/// variant says whether retrying is safe ([`Refused::retry_safe`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refused {
    /// The receiver is not the leader; nothing was proposed. Retry at the
    /// leader.
    #[error("not the leader (leader is {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The receiver could not take it now (starting, no leader in time, the
    /// leader unreachable); nothing ran. Retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// It was sent or ran and then failed (a timeout, a closed link, a raft
    /// error mid-change); it may have taken effect. Retry only what is
    /// idempotent.
    #[error("outcome unknown: {0}")]
    Uncertain(String),
    /// Refused as asked (another cluster, hop budget spent, not a member,
    /// the last voter, not a request); nothing ran, and the same request
    /// will be refused again.
    #[error("{0}")]
    Invalid(String),
}

impl Refused {
    /// Whether nothing ran, so sending the same request again is safe.
    pub fn retry_safe(&self) -> bool {
        matches!(self, Refused::NotLeader { .. } | Refused::Unavailable(_))
    }
}

/// Answers to [`PeerRequest`]s.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReply {
    /// The node id of the receiver (a peer of another cluster refuses
    /// every request instead, naming both cluster ids).
    Hello {
        node_id: String,
    },
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Proposed(Result<Vec<Outcome>, Refused>),
    /// Membership changed (join or remove); the members after it.
    Membership(Result<Vec<String>, Refused>),
    /// The function's result as JSON text, or its error.
    Called(Result<String, RpcError>),
    Published(Result<(), Refused>),
    ReadIndex(Result<u64, Refused>),
    Federation(Result<FederationReply, Refused>),
    /// The request is not served (another cluster, hop budget spent, the
    /// node is starting, a reply sent as a request).
    Refused(Refused),
}

impl Envelope {
    pub fn request(from: &str, cluster: &str, id: u64, request: PeerRequest) -> Self {
        Envelope {
            routing_path: vec![from.to_string()],
            federation_path: vec![cluster.to_string()],
            hop_budget: DEFAULT_HOP_BUDGET,
            source_cluster: cluster.to_string(),
            target_cluster: Some(cluster.to_string()),
            id,
            body: Body::Request(request),
        }
    }

    /// The envelope of a request made on this node itself (admin HTTP):
    /// an empty routing path, so it may be forwarded to the leader.
    pub fn local(cluster: &str, request: PeerRequest) -> Self {
        let mut envelope = Envelope::request("", cluster, 0, request);
        envelope.routing_path.clear();
        envelope
    }

    /// The reply to this envelope, routed back along its path.
    pub fn reply(&self, from: &str, reply: PeerReply) -> Self {
        let mut routing_path = vec![from.to_string()];
        routing_path.extend(self.routing_path.iter().rev().cloned());
        Envelope {
            routing_path,
            federation_path: self.federation_path.clone(),
            hop_budget: self.hop_budget,
            source_cluster: self.target_cluster.clone().unwrap_or_default(),
            target_cluster: Some(self.source_cluster.clone()),
            id: self.id,
            body: Body::Reply(reply),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, String> {
        codec::encode_versioned(ENVELOPE_VERSION, "peer envelope", self).map_err(|e| e.to_string())
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, String> {
        codec::decode_versioned(ENVELOPE_VERSION, "peer envelope", bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use mpreg_storage::typ::{Entry, LogId, Vote};
    use mpreg_storage::{Event, EventBatch};
    use openraft::{CommittedLeaderId, EntryPayload};

    #[test]
    fn raft_requests_round_trip() {
        let log_id = LogId::new(CommittedLeaderId::new(3, 7), 42);
        let entry = Entry {
            log_id,
            payload: EntryPayload::Normal(EventBatch {
                events: vec![Event {
                    time_ms: 5,
                    kind: EventKind::NodeLeft {
                        node_id: "n1".into(),
                    },
                }]
                .into(),
            }),
        };
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 7),
            prev_log_id: Some(log_id),
            entries: vec![entry],
            leader_commit: Some(log_id),
        };
        let envelope = Envelope::request("a", "c", 9, PeerRequest::AppendEntries(request));
        let bytes = envelope.encode().unwrap();
        assert_eq!(bytes.first(), Some(&ENVELOPE_VERSION));
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back.id, 9);
        let Body::Request(PeerRequest::AppendEntries(request)) = back.body else {
            panic!("wrong body {:?}", back.body);
        };
        assert_eq!(request.entries.len(), 1);
        assert_eq!(request.prev_log_id, Some(log_id));
        let reply = envelope.reply(
            "b",
            PeerReply::Proposed(Err(Refused::NotLeader { leader: Some(4) })),
        );
        let reply = Envelope::decode(&reply.encode().unwrap()).unwrap();
        assert_eq!(reply.routing_path, ["b", "a"]);
        assert!(matches!(
            reply.body,
            Body::Reply(PeerReply::Proposed(Err(Refused::NotLeader {
                leader: Some(4)
            })))
        ));
    }

    #[test]
    fn unknown_versions_and_garbage_are_named() {
        let empty = Envelope::decode(&[]).unwrap_err();
        assert!(empty.contains("peer envelope"), "{empty}");
        let newer = Envelope::decode(&[7, 1]).unwrap_err();
        assert!(newer.contains("version 7"), "{newer}");
        let garbage = Envelope::decode(&[ENVELOPE_VERSION, 200, 200]).unwrap_err();
        assert!(garbage.contains("peer envelope"), "{garbage}");
    }

    #[test]
    fn eleven_bytes_claiming_a_terabyte_are_an_error() {
        // The version byte, then a routing path whose first string claims 2^40 bytes.
        let mut frame = vec![ENVELOPE_VERSION, 1, 253];
        frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = Envelope::decode(&frame).unwrap_err();
        assert!(err.contains("claims more memory"), "{err}");
    }

    fn cases() -> u32 {
        let soak = std::env::var("MPREG_SOAK").is_ok_and(|v| v == "1");
        if soak { 50_000 } else { 2_000 }
    }

    /// Real envelopes of several kinds, as a peer would write them.
    fn real(pick: u8, text: String) -> Envelope {
        let request = match pick % 6 {
            0 => PeerRequest::Hello,
            1 => PeerRequest::Propose(vec![EventKind::NodeLeft {
                node_id: text.clone(),
            }]),
            2 => PeerRequest::Join {
                node_id: text.clone(),
                addr: format!("ws://{text}"),
            },
            3 => PeerRequest::Publish {
                message: format!("{{\"topic\":{text:?}}}"),
            },
            4 => PeerRequest::Remove { node: text.clone() },
            _ => PeerRequest::ReadIndex,
        };
        let envelope = Envelope::request(&text, "c1", u64::from(pick), request);
        if pick.is_multiple_of(2) {
            envelope
        } else {
            envelope.reply("b", PeerReply::Refused(Refused::Unavailable(text)))
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(cases()))]

        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut frame = vec![ENVELOPE_VERSION];
            frame.extend_from_slice(&bytes);
            let _ = Envelope::decode(&frame);
        }

        #[test]
        fn damaged_real_frames_decode_or_fail(
            pick in proptest::prelude::any::<u8>(),
            text in ".{0,40}",
            at in proptest::prelude::any::<usize>(),
            mask in 1..=255u8,
            cut in proptest::prelude::any::<bool>(),
        ) {
            let bytes = real(pick, text).encode().unwrap();
            proptest::prop_assert!(Envelope::decode(&bytes).is_ok());
            let mut damaged = bytes.clone();
            if cut {
                damaged.truncate(at % bytes.len());
                proptest::prop_assert!(Envelope::decode(&damaged).is_err());
            } else {
                damaged[at % bytes.len()] ^= mask;
                let _ = Envelope::decode(&damaged);
            }
        }
    }
}
