//! A node: the data dir, the raft instance over it, and the one way to
//! change shared state, [`Node::propose`].
//!
//! `propose` returns once the event is committed by a quorum, fsynced and
//! applied. A proposer task batches every proposal that arrives while the
//! previous batch is being committed into one log entry (group commit:
//! openraft 0.9 syncs each entry on its own). On the leader it stamps the
//! batch with the leader's clock and writes it through raft; on a follower
//! it forwards the batch to the leader, which stamps and commits it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mpreg_client::tls::TlsClient;
use mpreg_storage::typ::{Node as RaftNode, NodeId, Raft};
use mpreg_storage::{
    AppliedState, DataDir, Event, EventBatch, EventClock, EventKind, Identity, Inspector, LogStore,
    OpenMode, Outcome, StateMachine, StorageMetrics, Views, codec,
};
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::disk_space::DiskSpace;
use super::peer::{PeerError, Peers};
use super::peer_auth::PeerAuth;
use super::raft_network::FabricNetwork;
use crate::clock::{now_ms, now_us};
use crate::config::{Config, DEFAULT_CLUSTER_ID};
use crate::envelope::{PeerReply, PeerRequest, Refused};
use crate::error::{Error, Result};
use crate::tls::NodeCert;

/// Most events in one log entry.
const MAX_BATCH: usize = 1024;
/// Pause before asking again who leads, while there is no leader.
const LEADER_POLL: Duration = Duration::from_millis(50);

/// An event waiting to be proposed, and where its outcome goes.
struct Proposal {
    kind: EventKind,
    /// Its encoded size, counted by the proposing task.
    bytes: usize,
    reply: oneshot::Sender<std::result::Result<Outcome, Refused>>,
}

fn shutting_down() -> Refused {
    Refused::Unavailable("the node is shutting down".to_string())
}

/// The address member `id` registered in the membership `raft` applied.
fn member_addr(raft: &Raft, id: NodeId) -> Option<String> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.addr.clone())
}

/// The kinds of `events`, for the leader to stamp.
fn kinds_of(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|event| event.kind.clone()).collect()
}

/// Commits proposals: on the leader through raft, on a follower by
/// forwarding them to the leader. Everything queued while one batch
/// commits goes into the next one (group commit).
struct Proposer {
    raft: Raft,
    peers: Arc<Peers>,
    me: NodeId,
    /// Longest a batch waits for a leader, or for its commit.
    patience: Duration,
    /// Most encoded bytes of events in one entry.
    max_entry_bytes: usize,
    /// The latest event time in the log: stamps never go below it.
    clock: EventClock,
}

impl Proposer {
    async fn run(self, mut queue: mpsc::Receiver<Proposal>) {
        // A proposal that did not fit the previous entry starts the next.
        let mut carried: Option<Proposal> = None;
        loop {
            let first = match carried.take() {
                Some(first) => first,
                None => match queue.recv().await {
                    Some(first) => first,
                    None => return,
                },
            };
            let mut bytes = first.bytes;
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(more) if bytes.saturating_add(more.bytes) > self.max_entry_bytes => {
                        carried = Some(more);
                        break;
                    }
                    Ok(more) => {
                        bytes += more.bytes;
                        batch.push(more);
                    }
                    Err(_) => break,
                }
            }
            let (kinds, replies): (Vec<EventKind>, Vec<_>) =
                batch.into_iter().map(|p| (p.kind, p.reply)).unzip();
            match self.commit(kinds).await {
                Ok(outcomes) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Commits `kinds` in one entry, wherever the leader is. Retries only
    /// where nothing can have been committed (no leader yet, leader not
    /// reachable, or it said it is not the leader).
    async fn commit(&self, kinds: Vec<EventKind>) -> std::result::Result<Vec<Outcome>, Refused> {
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut last_problem = "no leader is known".to_string();
        // Stamped when proposed here; shared with the entry, so a retry
        // after a failed attempt restamps without copying.
        let mut events: Arc<Vec<Event>> = Arc::new(
            kinds
                .into_iter()
                .map(|kind| Event { time_ms: 0, kind })
                .collect(),
        );
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            let addr = leader.and_then(|id| member_addr(&self.raft, id));
            match (leader, addr) {
                (Some(id), _) if id == self.me => {
                    let time_ms = self.clock.stamp(now_us(), std::time::Instant::now());
                    for event in Arc::make_mut(&mut events) {
                        event.time_ms = time_ms;
                    }
                    let write = self.raft.client_write(EventBatch {
                        events: events.clone(),
                    });
                    match tokio::time::timeout_at(deadline, write).await {
                        Ok(Ok(written)) => return Ok(written.data),
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                            last_problem = "leadership moved".to_string();
                        }
                        Ok(Err(e)) => return Err(Refused::Uncertain(e.to_string())),
                        Err(_) => {
                            return Err(Refused::Uncertain(format!(
                                "not committed within {:?} (no quorum?); it may still commit: retry with an idempotent request",
                                self.patience
                            )));
                        }
                    }
                }
                (Some(id), Some(addr)) => {
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let forwarded = self
                        .peers
                        .request(&addr, PeerRequest::Propose(kinds_of(&events)), remaining)
                        .await;
                    match forwarded {
                        Ok(PeerReply::Proposed(Ok(outcomes))) => return Ok(outcomes),
                        Ok(PeerReply::Proposed(Err(Refused::NotLeader { .. }))) => {
                            last_problem = format!("node {id} is no longer the leader");
                        }
                        Ok(PeerReply::Proposed(Err(refused)) | PeerReply::Refused(refused)) => {
                            return Err(refused);
                        }
                        Ok(other) => {
                            return Err(Refused::Uncertain(format!(
                                "leader {id} answered {other:?}"
                            )));
                        }
                        Err(e @ PeerError::Unreachable { .. }) => last_problem = e.to_string(),
                        Err(e) => {
                            return Err(Refused::Uncertain(format!(
                                "forwarded to leader {id}: {e}; the write may or may not have committed"
                            )));
                        }
                    }
                }
                (Some(id), None) => last_problem = format!("leader {id} has no known address"),
                (None, _) => {}
            }
            if tokio::time::Instant::now() + LEADER_POLL >= deadline {
                return Err(Refused::Unavailable(format!(
                    "no leader accepted the write within {:?} ({last_problem}); it was not committed: retry",
                    self.patience
                )));
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }
}

/// A running node.
pub struct Node {
    raft: Raft,
    /// Proposals waiting for the proposer task.
    proposals: mpsc::Sender<Proposal>,
    /// The time events are stamped with (shared with the proposer).
    clock: EventClock,
    views: Arc<Views>,
    identity: Identity,
    raft_id: u64,
    peers: Arc<Peers>,
    /// Lower bound of the election timeout (health: how long a leader may
    /// go without hearing from a quorum).
    election_timeout: Duration,
    /// Longest a write or a strong read waits for a leader.
    patience: Duration,
    /// Largest event (encoded) a proposal may carry.
    max_entry_bytes: usize,
    /// Refuses writes while the data dir's filesystem is short of space.
    disk_space: DiskSpace,
    /// Holds the data dir lock for as long as the node runs.
    data_dir: DataDir,
    /// The certificate links to other nodes present (`tls_cert_file`).
    certificate: Option<Arc<NodeCert>>,
    /// Where a damaged store was moved at this start, if it was.
    set_aside: Option<std::path::PathBuf>,
}

/// Whether a store damaged on disk may be set aside and rebuilt from the
/// cluster: only for a node that names itself (`--node-id`) and its
/// cluster (`--join` or `--peers`), so it can rejoin under its own name.
fn can_rebuild(config: &Config) -> bool {
    config.node_id.is_some() && (config.join.is_some() || !config.peers.is_empty())
}

/// A data dir opened with its raft storage.
struct Storage {
    data_dir: DataDir,
    log_store: LogStore,
    state_machine: StateMachine,
    /// Where a damaged store was moved before this one was opened empty.
    set_aside: Option<std::path::PathBuf>,
}

/// Opens the data dir at `path` and its raft storage. Damage found while
/// opening ([`mpreg_storage::Error::is_damage`]) is an error, unless
/// `rebuilding`: then the damaged files are moved aside and the dir opens
/// empty.
fn open_storage(
    path: &std::path::Path,
    metrics: Arc<StorageMetrics>,
    rebuilding: bool,
) -> Result<Storage> {
    let open = |set_aside| -> mpreg_storage::Result<Storage> {
        let data_dir = DataDir::open(path, OpenMode::ReadWrite)?;
        let (log_store, state_machine) =
            mpreg_storage::open_raft_storage(&data_dir, metrics.clone())?;
        Ok(Storage {
            data_dir,
            log_store,
            state_machine,
            set_aside,
        })
    };
    match open(None) {
        Err(damage) if rebuilding && damage.is_damage() => {
            let aside = DataDir::set_aside_damaged(path)?;
            tracing::error!(
                error = %crate::error::with_causes(&damage),
                moved_to = %aside.display(),
                "the store is damaged; it was moved aside and this node rebuilds it from its cluster (it rejoins as a learner)"
            );
            Ok(open(Some(aside))?)
        }
        opened => Ok(opened?),
    }
}

/// Raft's view of this node, as `/status` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct RaftStatus {
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
}

pub use mpreg_storage::raft_id;

fn generated_node_id() -> String {
    let seed = format!("{}-{}", now_ms(), std::process::id());
    format!(
        "node-{:012x}",
        xxhash_rust::xxh3::xxh3_64(seed.as_bytes()) & 0xffff_ffff_ffff
    )
}

/// The identity of the dir: stored at first start, checked afterwards.
fn resolve_identity(dir: &DataDir, config: &Config) -> Result<Identity> {
    match dir.identity()? {
        Some(stored) => {
            if let Some(requested) = config.node_id.as_ref().filter(|id| **id != stored.node_id) {
                return Err(mpreg_storage::Error::NodeIdMismatch {
                    stored: stored.node_id,
                    requested: requested.clone(),
                }
                .into());
            }
            if let Some(requested) = config
                .cluster_id
                .as_ref()
                .filter(|id| **id != stored.cluster_id)
            {
                return Err(mpreg_storage::Error::ClusterIdMismatch {
                    stored: stored.cluster_id,
                    requested: requested.clone(),
                }
                .into());
            }
            Ok(stored)
        }
        None => {
            let identity = Identity {
                node_id: config.node_id.clone().unwrap_or_else(generated_node_id),
                cluster_id: config
                    .cluster_id
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CLUSTER_ID.to_string()),
            };
            dir.set_identity(&identity)?;
            Ok(identity)
        }
    }
}

fn raft_config(config: &Config, cluster_id: &str) -> Result<openraft::Config> {
    let election_ms = config.election_timeout.as_millis() as u64;
    openraft::Config {
        cluster_name: cluster_id.to_string(),
        election_timeout_min: election_ms,
        election_timeout_max: election_ms * 2,
        heartbeat_interval: (election_ms / 3).max(10),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_interval),
        max_in_snapshot_log_to_keep: config.log_retention,
        // Bounded peer frames: at most this many entries per AppendEntries,
        // snapshots in 1 MiB chunks.
        max_payload_entries: 64,
        snapshot_max_chunk_size: 1 << 20,
        install_snapshot_timeout: (election_ms * 4).max(2_000),
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::InvalidSetting(format!("raft: {e}")))
}

impl Node {
    /// Opens the data dir and starts raft over the node transport. The
    /// node serves peers from here on, but is not a member of a cluster
    /// with a leader until `membership::serve` (or [`Node::start`]).
    pub async fn open(config: &Config, metrics: Arc<StorageMetrics>) -> Result<Node> {
        let rebuilding = can_rebuild(config);
        let path = config.data_dir.clone();
        let Storage {
            data_dir,
            log_store,
            state_machine,
            set_aside,
        } = tokio::task::spawn_blocking(move || open_storage(&path, metrics, rebuilding))
            .await
            .map_err(|e| Error::RaftStart(e.to_string()))??;
        let identity = resolve_identity(&data_dir, config)?;
        let raft_id = raft_id(&identity.node_id);
        let views = state_machine.views();
        let clock = log_store.event_clock();
        let raft_config = Arc::new(raft_config(config, &identity.cluster_id)?);
        let auth = PeerAuth::new(&identity.cluster_id, &config.secrets.load()?)
            .requiring_certificates(config.tls_client_ca_file.is_some());
        // Links to other nodes present this node's certificate: a node
        // with `tls_client_ca_file` accepts only certified peers.
        let certificate = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(NodeCert::load(cert, key)?),
            _ => None,
        };
        let tls = config
            .tls_ca_file
            .as_deref()
            .map(|ca| match &certificate {
                Some(cert) => TlsClient::with_cert_resolver(ca, cert.clone()),
                None => TlsClient::new(ca, None),
            })
            .transpose()
            .map_err(|e| Error::InvalidSetting(format!("tls_ca_file: {e}")))?;
        let peers = Arc::new(Peers::new(
            &identity.node_id,
            &identity.cluster_id,
            auth,
            tls,
        ));
        let raft = Raft::new(
            raft_id,
            raft_config,
            FabricNetwork::new(peers.clone(), raft_id),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| Error::RaftStart(e.to_string()))?;
        let (proposals, queue) = mpsc::channel(MAX_BATCH * 4);
        let proposer = Proposer {
            raft: raft.clone(),
            peers: peers.clone(),
            me: raft_id,
            patience: config.propose_timeout(),
            max_entry_bytes: config.max_entry_bytes,
            clock: clock.clone(),
        };
        tokio::spawn(proposer.run(queue));
        Ok(Node {
            raft,
            proposals,
            clock,
            views,
            identity,
            raft_id,
            peers,
            election_timeout: config.election_timeout,
            patience: config.propose_timeout(),
            max_entry_bytes: config.max_entry_bytes,
            disk_space: DiskSpace::new(config.data_dir.clone(), config.min_free_disk_bytes),
            data_dir,
            certificate,
            set_aside,
        })
    }

    /// Where this start moved a damaged store (`D/damaged-<secs>`): the
    /// node rebuilds from its cluster instead ([`can_rebuild`]).
    pub fn set_aside(&self) -> Option<&std::path::Path> {
        self.set_aside.as_deref()
    }

    /// Reads this node's certificate files again; links opened afterwards
    /// present the new certificate (see [`NodeCert::reload`]).
    pub fn reload_certificate(&self) -> Result<()> {
        match &self.certificate {
            Some(cert) => cert.reload(),
            None => Ok(()),
        }
    }

    /// Opens and serves a node that no other node reaches (no peer
    /// listener): a single-member cluster, for tests and benchmarks.
    pub async fn start(
        config: &Config,
        addresses: Vec<String>,
        metrics: Arc<StorageMetrics>,
    ) -> Result<Node> {
        let node = Node::open(config, metrics).await?;
        let own_url = addresses.first().cloned().unwrap_or_default();
        if !node.is_initialized().await? {
            node.initialize_alone(&own_url).await?;
        }
        node.announce(addresses, &CancellationToken::new()).await?;
        Ok(node)
    }

    /// Whether raft has a log or membership already (this is not a first start).
    pub async fn is_initialized(&self) -> Result<bool> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| Error::RaftStart(e.to_string()))
    }

    /// Once the node is a member: waits for a leader and records
    /// `NodeJoined` and the route to its cluster.
    pub async fn announce(
        &self,
        addresses: Vec<String>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        self.wait_for_leader(shutdown).await?;
        self.propose_until_committed(
            EventKind::NodeJoined {
                node_id: self.identity.node_id.clone(),
                cluster_id: self.identity.cluster_id.clone(),
                addresses,
                resources: Vec::new(),
            },
            shutdown,
        )
        .await?;
        self.propose_until_committed(
            EventKind::RouteAnnounced {
                dest: self.identity.cluster_id.clone(),
                next_hop: self.identity.cluster_id.clone(),
                path: Vec::new(),
                cost: 0,
                advertiser: self.identity.cluster_id.clone(),
                expires_at_ms: None,
            },
            shutdown,
        )
        .await?;
        tracing::info!(node_id = %self.identity.node_id, cluster_id = %self.identity.cluster_id, "node serving");
        Ok(())
    }

    /// Commits `kind`, an announcement that may commit twice, trying again
    /// while no quorum commits it. After an outage of the whole cluster
    /// the first member back may lead by its own vote alone (openraft
    /// restores a committed leader's role at start) and can commit nothing
    /// until a majority is back: it waits for them, it does not exit.
    async fn propose_until_committed(
        &self,
        kind: EventKind,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            match self.propose_ok(kind.clone()).await {
                Ok(_) => return Ok(()),
                Err(Error::Propose { kind, refused })
                    if !matches!(refused, Refused::Invalid(_)) =>
                {
                    tracing::warn!(event = kind, waited = ?started.elapsed(), %refused, "not committed yet; waiting for a quorum of the cluster");
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                () = shutdown.cancelled() => return Err(Error::NoLeader(started.elapsed())),
            }
        }
    }

    /// Forms a cluster of this node alone, reached at `own_url`.
    pub async fn initialize_alone(&self, own_url: &str) -> Result<()> {
        self.initialize(BTreeMap::from([(self.raft_id, RaftNode::new(own_url))]))
            .await
    }

    /// Initializes raft with `members`; a node that already has a log
    /// (another member initialized it first) is fine.
    pub async fn initialize(&self, members: BTreeMap<NodeId, RaftNode>) -> Result<()> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(Error::RaftStart(e.to_string())),
        }
    }

    /// Event time now: what timers, leases and TTLs are judged by. It
    /// follows the wall clock but never goes back, and keeps real pace when
    /// the wall clock jumps (see [`EventClock`]).
    pub fn event_now(&self) -> u64 {
        self.clock.read(now_us(), std::time::Instant::now())
    }

    /// Whether raft runs (it has not stopped on an error).
    pub fn raft_running(&self) -> bool {
        self.raft.metrics().borrow().running_state.is_ok()
    }

    /// Resolves when raft stops on its own, with the reason: a storage
    /// error (a WAL sync that failed, ...) or a panic in its core. Raft
    /// never retries a failed sync, so from then on the node can commit
    /// nothing.
    ///
    /// It watches raft's server metrics, which change with the role, the
    /// leader or the membership, not with every commit as the full metrics
    /// do: so this task does not wake (on another thread) for each write.
    /// Their sender goes away when raft's core stops, after it recorded
    /// why in the full metrics.
    pub async fn raft_failed(&self) -> String {
        let mut server = self.raft.server_metrics();
        while server.changed().await.is_ok() {}
        match &self.raft.metrics().borrow().running_state {
            Err(fatal) => fatal.to_string(),
            Ok(()) => "raft stopped".to_string(),
        }
    }

    /// Waits until a leader is known, logging every 5 s while there is none.
    async fn wait_for_leader(&self, shutdown: &CancellationToken) -> Result<()> {
        let mut metrics = self.raft.metrics();
        let step = Duration::from_secs(5);
        let mut waited = Duration::ZERO;
        loop {
            if metrics.borrow_and_update().current_leader.is_some() {
                return Ok(());
            }
            tokio::select! {
                changed = tokio::time::timeout(step, metrics.changed()) => match changed {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(Error::RaftStart("raft stopped".into())),
                    Err(_) => {
                        waited += step;
                        tracing::warn!(?waited, "no raft leader yet; waiting for a quorum of the cluster");
                    }
                },
                () = shutdown.cancelled() => return Err(Error::NoLeader(waited)),
            }
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Read-only scans of the views and the log (SQL).
    pub fn inspector(&self) -> Inspector {
        Inspector::new(&self.data_dir)
    }

    /// The read side of the views.
    pub fn views(&self) -> &Arc<Views> {
        &self.views
    }

    /// The proposal of `kind`, unless it is larger than a log entry may be.
    fn proposal(
        &self,
        kind: EventKind,
    ) -> std::result::Result<
        (
            Proposal,
            oneshot::Receiver<std::result::Result<Outcome, Refused>>,
        ),
        Refused,
    > {
        let bytes = codec::encoded_len(&kind);
        if bytes > self.max_entry_bytes {
            return Err(Refused::Invalid(format!(
                "event {} is {bytes} bytes encoded, more than max_entry_bytes ({})",
                kind.name(),
                self.max_entry_bytes
            )));
        }
        if let Some(shortage) = self.disk_space.shortage() {
            return Err(Refused::Unavailable(shortage));
        }
        let (reply, outcome) = oneshot::channel();
        Ok((Proposal { kind, bytes, reply }, outcome))
    }

    /// Appends an event and waits until it is committed, fsynced and applied.
    /// An event larger than `max_entry_bytes` is refused before it is
    /// proposed.
    pub async fn propose(&self, kind: EventKind) -> Result<Outcome> {
        let name = kind.name();
        let stopped = || Error::Propose {
            kind: name,
            refused: shutting_down(),
        };
        let (proposal, outcome) = self.proposal(kind).map_err(|refused| Error::Propose {
            kind: name,
            refused,
        })?;
        self.proposals.send(proposal).await.map_err(|_| stopped())?;
        outcome
            .await
            .map_err(|_| stopped())?
            .map_err(|refused| Error::Propose {
                kind: name,
                refused,
            })
    }

    /// Proposes a bulk step and then each step it names next (see
    /// `Outcome::Stepped`), one at a time, so no apply removes more than
    /// one step's rows. Answers `Stepped` with the rows removed in all and
    /// no next step, or the first other outcome (a refusal) as it is. A
    /// failure part way leaves the steps before it applied.
    pub async fn propose_steps(&self, first: EventKind) -> Result<Outcome> {
        let mut step = first;
        let mut total = 0;
        loop {
            match self.propose(step).await? {
                Outcome::Stepped { removed, next } => {
                    total += removed;
                    match next {
                        Some(next) => step = *next,
                        None => {
                            return Ok(Outcome::Stepped {
                                removed: total,
                                next: None,
                            });
                        }
                    }
                }
                other => return Ok(other),
            }
        }
    }

    /// Like [`Node::propose`], but a refused event is an error.
    pub async fn propose_ok(&self, kind: EventKind) -> Result<Outcome> {
        let name = kind.name();
        match self.propose(kind).await? {
            Outcome::Rejected { reason } => Err(Error::Rejected { kind: name, reason }),
            accepted => Ok(accepted),
        }
    }

    /// Waits until this node has applied everything committed when the
    /// call began (raft read index, confirmed by a quorum heartbeat of the
    /// leader), so a read that follows sees every write acknowledged
    /// before it, through any node. A follower asks the leader for the
    /// index and waits until it applied that far.
    pub async fn read_barrier(&self) -> Result<()> {
        let failed = |refused: Refused| Error::Propose {
            kind: "read barrier",
            refused,
        };
        let deadline = tokio::time::Instant::now() + self.patience;
        let index = loop {
            let attempt = if self.is_leader() {
                self.read_index().await
            } else {
                match self.leader().and_then(|id| self.member_addr(id)) {
                    None => Err(Refused::NotLeader { leader: None }),
                    Some(addr) => {
                        let remaining =
                            deadline.saturating_duration_since(tokio::time::Instant::now());
                        match self
                            .peers
                            .request(&addr, PeerRequest::ReadIndex, remaining)
                            .await
                        {
                            Ok(PeerReply::ReadIndex(result)) => result,
                            Ok(PeerReply::Refused(refused)) => Err(refused),
                            Ok(other) => {
                                Err(Refused::Uncertain(format!("leader answered {other:?}")))
                            }
                            Err(e) => Err(e.into()),
                        }
                    }
                }
            };
            match attempt {
                Ok(index) => break index,
                Err(Refused::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(LEADER_POLL).await;
                }
                Err(e @ Refused::NotLeader { .. }) => {
                    return Err(failed(Refused::Unavailable(format!(
                        "no leader gave a read index within {:?} ({e}); retry",
                        self.patience
                    ))));
                }
                Err(e) => return Err(failed(e)),
            }
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(drop)
            .map_err(|e| {
                failed(Refused::Unavailable(format!(
                    "did not apply up to the read index {index}: {e}"
                )))
            })
    }

    /// On the leader: the index a linearizable read must wait for.
    pub async fn read_index(&self) -> std::result::Result<u64, Refused> {
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |id| id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(Refused::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(e) => Err(Refused::Unavailable(e.to_string())),
        }
    }

    /// What the state machine has applied (last_applied, digest).
    pub fn applied(&self) -> AppliedState {
        self.views.applied()
    }

    /// Highest index known committed: the stored commit record, never below
    /// what is applied.
    pub fn commit_index(&self) -> u64 {
        let applied = self.applied().last_applied_index();
        self.inspector()
            .stored_raft()
            .map_or(applied, |stored| stored.committed.max(applied))
    }

    /// Raft role, term, leader and log positions.
    pub fn raft_status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        RaftStatus {
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.map_or(0, |id| id.index),
            purged_index: m.purged.map_or(0, |id| id.index),
        }
    }

    /// Whether this node knows a membership (it formed, joined, or was
    /// replicated one); a node starting empty has none until it joined.
    pub fn has_membership(&self) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some()
    }

    /// Whether this node is the raft leader (only the leader proposes
    /// timer firings).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.raft_id)
    }

    /// Whether this node has a leader that can commit: a follower that
    /// knows one, or a leader that heard from a quorum within twice the
    /// election timeout (a leader cut off in a minority cannot commit).
    pub fn has_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        match m.current_leader {
            None => false,
            Some(id) if id == self.raft_id => {
                m.membership_config.membership().voter_ids().count() <= 1
                    || m.millis_since_quorum_ack
                        .is_some_and(|ms| ms <= self.election_timeout.as_millis() as u64 * 2)
            }
            Some(_) => true,
        }
    }

    pub fn raft_id(&self) -> u64 {
        self.raft_id
    }

    /// The raft instance (peer RPCs, membership changes).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Links to the other nodes.
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// The raft id of the current leader, if one is known.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The address a member registered in the membership.
    pub fn member_addr(&self, id: NodeId) -> Option<String> {
        member_addr(&self.raft, id)
    }

    /// The address of the member whose node id is `node_id`.
    pub fn member_addr_of(&self, node_id: &str) -> Option<String> {
        self.member_addr(raft_id(node_id))
    }

    /// Proposes several events (forwarded by a follower) and returns their
    /// outcomes in order.
    pub async fn propose_all(
        &self,
        kinds: Vec<EventKind>,
    ) -> std::result::Result<Vec<Outcome>, Refused> {
        let stopping = shutting_down;
        let mut waiting = Vec::with_capacity(kinds.len());
        for kind in kinds {
            let (proposal, outcome) = self.proposal(kind)?;
            self.proposals
                .send(proposal)
                .await
                .map_err(|_| stopping())?;
            waiting.push(outcome);
        }
        let mut outcomes = Vec::with_capacity(waiting.len());
        for outcome in waiting {
            outcomes.push(outcome.await.map_err(|_| stopping())??);
        }
        Ok(outcomes)
    }

    /// Stops raft and syncs the WAL; the data dir is released on drop.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown failed");
        }
        if let Err(e) = self.data_dir.db().flush_wal(true) {
            tracing::warn!(error = %e, "failed to sync the WAL at shutdown");
        }
        if let Err(e) = self.data_dir.flush_memtables() {
            tracing::warn!(error = %e, "failed to flush memtables at shutdown");
        }
    }
}
