//! A node: the data dir, the raft instance over it, and the one way to
//! change shared state, [`Node::propose`].
//!
//! `propose` returns once the event is committed, fsynced and applied. A
//! proposer task batches every proposal that arrives while the previous
//! batch is being committed into one log entry (group commit: openraft 0.9
//! syncs each entry on its own) and stamps the batch with the leader's
//! clock (this node is the leader of its single-member cluster).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mpreg_storage::typ::{Node as RaftNode, Raft};
use mpreg_storage::{
    AppliedState, DataDir, Event, EventBatch, EventKind, Identity, Inspector, OpenMode, Outcome,
    StorageMetrics, Views,
};
use openraft::{ServerState, SnapshotPolicy};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::clock::now_ms;
use crate::config::{Config, DEFAULT_CLUSTER_ID};
use crate::error::{Error, Result};
use crate::raft_network::SingleNodeNetwork;

/// Most events in one log entry.
const MAX_BATCH: usize = 1024;

/// An event waiting to be proposed, and where its outcome goes.
type Proposal = (
    EventKind,
    oneshot::Sender<std::result::Result<Outcome, String>>,
);

/// Commits proposals in batches: everything queued while one batch commits
/// goes into the next entry.
async fn propose_batches(raft: Raft, mut queue: mpsc::Receiver<Proposal>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let time_ms = now_ms();
        let (events, replies): (Vec<Event>, Vec<_>) = batch
            .into_iter()
            .map(|(kind, reply)| (Event { time_ms, kind }, reply))
            .unzip();
        match raft.client_write(EventBatch { events }).await {
            Ok(written) => {
                for (reply, outcome) in replies.into_iter().zip(written.data) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// How long a starting node waits to become leader of its own cluster.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// A running node.
pub struct Node {
    raft: Raft,
    /// Proposals waiting for the proposer task.
    proposals: mpsc::Sender<Proposal>,
    views: Arc<Views>,
    identity: Identity,
    raft_id: u64,
    /// Holds the data dir lock for as long as the node runs.
    data_dir: DataDir,
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

/// The numeric raft id of a node id: stable, non-zero.
pub fn raft_id(node_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(node_id.as_bytes()).max(1)
}

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
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::InvalidSetting(format!("raft: {e}")))
}

impl Node {
    /// Opens the data dir, starts raft, becomes leader of the single-member
    /// cluster (initializing it on first start) and records `NodeJoined`
    /// and the route to its own cluster.
    pub async fn start(
        config: &Config,
        addresses: Vec<String>,
        metrics: Arc<StorageMetrics>,
    ) -> Result<Node> {
        let path = config.data_dir.clone();
        let data_dir =
            tokio::task::spawn_blocking(move || DataDir::open(&path, OpenMode::ReadWrite))
                .await
                .map_err(|e| Error::RaftStart(e.to_string()))??;
        let identity = resolve_identity(&data_dir, config)?;
        let raft_id = raft_id(&identity.node_id);
        let (log_store, state_machine) = mpreg_storage::open_raft_storage(&data_dir, metrics)?;
        let views = state_machine.views();
        let raft_config = Arc::new(raft_config(config, &identity.cluster_id)?);
        let raft = Raft::new(
            raft_id,
            raft_config,
            SingleNodeNetwork,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| Error::RaftStart(e.to_string()))?;
        if !raft
            .is_initialized()
            .await
            .map_err(|e| Error::RaftStart(e.to_string()))?
        {
            let client_url = addresses.first().cloned().unwrap_or_default();
            let members = BTreeMap::from([(raft_id, RaftNode { addr: client_url })]);
            raft.initialize(members)
                .await
                .map_err(|e| Error::RaftStart(e.to_string()))?;
        }
        raft.wait(Some(LEADER_WAIT))
            .metrics(|m| m.current_leader == Some(raft_id), "become leader")
            .await
            .map_err(|_| Error::NoLeader(LEADER_WAIT))?;
        let (proposals, queue) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(propose_batches(raft.clone(), queue));
        let node = Node {
            raft,
            proposals,
            views,
            identity,
            raft_id,
            data_dir,
        };
        node.propose_ok(EventKind::NodeJoined {
            node_id: node.identity.node_id.clone(),
            cluster_id: node.identity.cluster_id.clone(),
            addresses,
            resources: Vec::new(),
        })
        .await?;
        node.propose_ok(EventKind::RouteAnnounced {
            dest: node.identity.cluster_id.clone(),
            next_hop: node.identity.cluster_id.clone(),
            path: Vec::new(),
            cost: 0,
            advertiser: node.identity.cluster_id.clone(),
            expires_at_ms: None,
        })
        .await?;
        tracing::info!(node_id = %node.identity.node_id, cluster_id = %node.identity.cluster_id, "node serving");
        Ok(node)
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

    /// Appends an event and waits until it is committed, fsynced and applied.
    pub async fn propose(&self, kind: EventKind) -> Result<Outcome> {
        let name = kind.name();
        let (reply, outcome) = oneshot::channel();
        let stopped = || Error::Propose {
            kind: name,
            reason: "the node is shutting down".to_string(),
        };
        self.proposals
            .send((kind, reply))
            .await
            .map_err(|_| stopped())?;
        outcome
            .await
            .map_err(|_| stopped())?
            .map_err(|reason| Error::Propose { kind: name, reason })
    }

    /// Like [`Node::propose`], but a refused event is an error.
    pub async fn propose_ok(&self, kind: EventKind) -> Result<Outcome> {
        let name = kind.name();
        match self.propose(kind).await? {
            Outcome::Rejected { reason } => Err(Error::Rejected { kind: name, reason }),
            accepted => Ok(accepted),
        }
    }

    /// Waits until this node is confirmed leader and has applied everything
    /// committed when the call began (raft read index), so a read that
    /// follows sees every write acknowledged before it.
    pub async fn read_barrier(&self) -> Result<()> {
        self.raft
            .ensure_linearizable()
            .await
            .map(drop)
            .map_err(|e| Error::Propose {
                kind: "read barrier",
                reason: e.to_string(),
            })
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

    /// Whether this node is the raft leader (only the leader proposes
    /// timer firings).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.raft_id)
    }

    /// Whether this node has a leader (itself, in a single-member cluster).
    pub fn has_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader.is_some()
    }

    pub fn raft_id(&self) -> u64 {
        self.raft_id
    }

    /// Stops raft and syncs the WAL; the data dir is released on drop.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown failed");
        }
        if let Err(e) = self.data_dir.db().flush_wal(true) {
            tracing::warn!(error = %e, "failed to sync the WAL at shutdown");
        }
    }
}
