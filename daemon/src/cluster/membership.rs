//! The raft membership: forming a cluster from `--peers`, joining one with
//! `--join` (then [`serve`] makes the node a serving member), and adding or
//! removing members. Changes run on the leader
//! (add as learner, wait until it caught up, then promote to voter); a
//! follower forwards the request there. Raft ids are derived from node ids
//! ([`super::node::raft_id`]), so a node id names a member everywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mpreg_storage::EventKind;
use mpreg_storage::typ::{Node as RaftNode, NodeId};
use openraft::ChangeMembers;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::node::{Node, raft_id};
use super::peer::PeerError;
use crate::config::Config;
use crate::envelope::{Envelope, PeerReply, PeerRequest, Refused};
use crate::error::{Error, Result};

/// How long a join may take: adding a learner waits until it caught up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between attempts while peers or a leader are not there yet.
const RETRY: Duration = Duration::from_millis(300);

/// One member, as `/cluster/members` and the `peers` table show it.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    /// Node id, when the catalog knows it (every started member records it).
    pub node_id: Option<String>,
    pub raft_id: NodeId,
    pub addr: String,
    /// `voter` or `learner`.
    pub role: &'static str,
    pub leader: bool,
    /// Last log index known replicated to it (on the leader only).
    pub match_index: Option<u64>,
    /// Entries it is behind the leader's log (on the leader only).
    pub lag: Option<u64>,
}

/// The members of the cluster, as this node last applied them.
pub fn members(node: &Node) -> Vec<Member> {
    let metrics = node.raft().metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let names: BTreeMap<NodeId, String> = node
        .views()
        .catalog()
        .nodes()
        .map(|row| (raft_id(&row.node_id), row.node_id.clone()))
        .collect();
    let last_log = metrics.last_log_index.unwrap_or(0);
    membership
        .nodes()
        .map(|(id, raft_node)| {
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id))
                .map(|log_id| log_id.map_or(0, |l| l.index));
            let matched = if *id == metrics.id && metrics.current_leader == Some(*id) {
                Some(last_log)
            } else {
                matched
            };
            Member {
                node_id: names.get(id).cloned(),
                raft_id: *id,
                addr: raft_node.addr.clone(),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                },
                leader: metrics.current_leader == Some(*id),
                match_index: matched,
                lag: matched.map(|m| last_log.saturating_sub(m)),
            }
        })
        .collect()
}

fn member_names(node: &Node) -> Vec<String> {
    members(node)
        .into_iter()
        .map(|m| m.node_id.unwrap_or_else(|| m.raft_id.to_string()))
        .collect()
}

/// Sends a membership request on to the leader, when this node is not it.
async fn via_leader(
    node: &Node,
    request: PeerRequest,
    envelope: &Envelope,
) -> std::result::Result<Vec<String>, Refused> {
    let Some(addr) = node.leader().and_then(|id| node.member_addr(id)) else {
        return Err(Refused::NotLeader { leader: None });
    };
    match node
        .peers()
        .forward(&addr, request, envelope, JOIN_TIMEOUT)
        .await
    {
        Ok(PeerReply::Membership(result)) => result,
        Ok(PeerReply::Refused(refused)) => Err(refused),
        Ok(other) => Err(Refused::Uncertain(format!("leader answered {other:?}"))),
        Err(e) => Err(e.into()),
    }
}

/// What the node asking to join holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joining {
    /// A running node, added by an operator (`POST /cluster/members`).
    Running,
    /// A node starting with an empty store (`--join`, or a store rebuilt
    /// after damage).
    Empty,
}

/// Adds `node_id` at `addr`: as a learner, then (once it caught up) as a
/// voter. Already a voter: nothing to do for a running node; a node that
/// starts empty under a voter's name lost that voter's store, so it is made
/// a learner first and promoted again once it caught up.
pub async fn join(
    node: &Node,
    node_id: &str,
    addr: &str,
    joining: Joining,
    envelope: &Envelope,
) -> std::result::Result<Vec<String>, Refused> {
    if !node.is_leader() {
        let (node_id, addr) = (node_id.to_string(), addr.to_string());
        let request = match joining {
            Joining::Running => PeerRequest::Join { node_id, addr },
            Joining::Empty => PeerRequest::JoinEmpty { node_id, addr },
        };
        return via_leader(node, request, envelope).await;
    }
    let id = raft_id(node_id);
    let raft = node.raft();
    let voters: BTreeSet<NodeId> = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    if voters.contains(&id) {
        if joining == Joining::Running {
            return Ok(member_names(node));
        }
        tracing::warn!(%node_id, %addr, "a voter starts with an empty store; making it a learner until it has caught up");
        raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
            .await
            .map_err(|e| Refused::Uncertain(format!("making {node_id} a learner failed: {e}")))?;
    }
    tracing::info!(%node_id, %addr, "adding a learner");
    raft.add_learner(id, RaftNode::new(addr), true)
        .await
        .map_err(|e| Refused::Uncertain(format!("adding {node_id} as a learner failed: {e}")))?;
    tracing::info!(%node_id, "learner caught up; promoting it to voter");
    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        .await
        .map_err(|e| Refused::Uncertain(format!("promoting {node_id} to voter failed: {e}")))?;
    Ok(member_names(node))
}

/// Removes a member, named by node id or raft id, and records `NodeLeft`.
pub async fn remove(
    node: &Node,
    who: &str,
    envelope: &Envelope,
) -> std::result::Result<Vec<String>, Refused> {
    if !node.is_leader() {
        let request = PeerRequest::Remove {
            node: who.to_string(),
        };
        return via_leader(node, request, envelope).await;
    }
    let raft = node.raft();
    let membership = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .clone();
    let id = [raft_id(who)]
        .into_iter()
        .chain(who.parse::<NodeId>().ok())
        .find(|id| membership.get_node(id).is_some())
        .ok_or_else(|| Refused::Invalid(format!("{who} is not a member of this cluster")))?;
    let is_voter = membership.voter_ids().any(|v| v == id);
    if is_voter && membership.voter_ids().count() == 1 {
        return Err(Refused::Invalid(format!(
            "{who} is the only voter; a cluster cannot remove its last voter"
        )));
    }
    let change = if is_voter {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    raft.change_membership(change, false)
        .await
        .map_err(|e| Refused::Uncertain(format!("removing {who} failed: {e}")))?;
    let node_id = node_name(node, id).unwrap_or_else(|| who.to_string());
    if let Err(e) = node
        .propose_ok(EventKind::NodeLeft {
            node_id: node_id.clone(),
        })
        .await
    {
        tracing::warn!(%node_id, error = %e, "member removed, but recording node_left failed");
    }
    Ok(member_names(node))
}

/// The node id of raft member `id`, from the catalog.
pub fn node_name(node: &Node, id: NodeId) -> Option<String> {
    node.views()
        .catalog()
        .nodes()
        .find(|row| raft_id(&row.node_id) == id)
        .map(|row| row.node_id.clone())
}

/// Asks `url` for its node id until it answers (or `shutdown`).
async fn hello(node: &Node, url: &str, shutdown: &CancellationToken) -> Result<String> {
    loop {
        match node
            .peers()
            .request(url, PeerRequest::Hello, Duration::from_secs(2))
            .await
        {
            Ok(PeerReply::Hello { node_id }) => return Ok(node_id),
            // A peer of another cluster answers every request with this.
            Ok(PeerReply::Refused(reason)) => {
                return Err(Error::InvalidSetting(format!(
                    "peer {url} refused: {reason}"
                )));
            }
            Ok(other) => tracing::warn!(%url, ?other, "unexpected answer to hello"),
            Err(e) => tracing::debug!(%url, error = %e, "peer not reachable yet"),
        }
        pause(shutdown, "forming the cluster").await?;
    }
}

/// Waits [`RETRY`] before the next attempt; an error once `shutdown`.
async fn pause(shutdown: &CancellationToken, doing: &str) -> Result<()> {
    tokio::select! {
        () = tokio::time::sleep(RETRY) => Ok(()),
        () = shutdown.cancelled() => Err(Error::RaftStart(format!("shut down while {doing}"))),
    }
}

/// First start with `--peers`: learns every peer's node id and initializes
/// the cluster with all of them as voters. Every node of the list does the
/// same with the same members, which openraft allows.
async fn form(
    node: &Node,
    own_url: &str,
    peer_urls: &[String],
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut members = BTreeMap::from([(node.raft_id(), RaftNode::new(own_url))]);
    for url in peer_urls.iter().filter(|url| url.as_str() != own_url) {
        let node_id = hello(node, url, shutdown).await?;
        members.insert(raft_id(&node_id), RaftNode::new(url.as_str()));
    }
    tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "forming the cluster");
    node.initialize(members).await
}

/// First start with `--join URL` (or a store rebuilt after damage, through
/// any of `urls`): asks a member (which forwards to the leader) to add this
/// node, until it is a voter (by this request or by one a member got, e.g.
/// `POST /cluster/members`). Tries `urls` in turn.
async fn join_via(
    node: &Node,
    urls: &[String],
    own_url: &str,
    shutdown: &CancellationToken,
) -> Result<()> {
    let request = || PeerRequest::JoinEmpty {
        node_id: node.identity().node_id.clone(),
        addr: own_url.to_string(),
    };
    for url in urls.iter().cycle() {
        // Another member may have added this node meanwhile (`POST
        // /cluster/members` while the join target is unreachable).
        let me = node.raft_id();
        let voter = node
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == me);
        if voter {
            tracing::info!("added to the cluster by a member");
            return Ok(());
        }
        match node.peers().request(url, request(), JOIN_TIMEOUT).await {
            Ok(PeerReply::Membership(Ok(members))) => {
                tracing::info!(?members, "joined the cluster");
                return Ok(());
            }
            Ok(PeerReply::Membership(Err(e))) => {
                tracing::warn!(%url, error = %e, "join refused; retrying")
            }
            Ok(PeerReply::Refused(reason)) => {
                return Err(Error::InvalidSetting(format!(
                    "cannot join through {url}: {reason}"
                )));
            }
            Ok(other) => tracing::warn!(%url, ?other, "unexpected answer to join"),
            Err(e @ PeerError::Unauthenticated { .. }) => {
                return Err(Error::InvalidSetting(format!(
                    "cannot join through {url}: {e}"
                )));
            }
            Err(e) => tracing::info!(%url, error = %e, "cluster not reachable yet"),
        }
        pause(shutdown, "joining").await?;
    }
    Err(Error::InvalidSetting(
        "no member to join through (--join or --peers)".to_string(),
    ))
}

/// Makes `node` a serving member: on first start it forms a cluster (alone,
/// or with `--peers`) or joins one (`--join`); then it waits for a leader
/// and records itself ([`Node::announce`]). `own_url` is the address other
/// nodes reach it at.
pub async fn serve(
    node: &Node,
    config: &Config,
    own_url: &str,
    addresses: Vec<String>,
    shutdown: &CancellationToken,
) -> Result<()> {
    if !node.is_initialized().await? {
        if let Some(url) = &config.join {
            join_via(node, std::slice::from_ref(url), own_url, shutdown).await?;
        } else if node.set_aside().is_some() {
            // A rebuilt store joins its cluster again rather than forming
            // a new one with its peers.
            let others: Vec<String> = config
                .peers
                .iter()
                .filter(|url| url.as_str() != own_url)
                .cloned()
                .collect();
            join_via(node, &others, own_url, shutdown).await?;
        } else if !config.peers.is_empty() {
            form(node, own_url, &config.peers, shutdown).await?;
        } else {
            node.initialize_alone(own_url).await?;
        }
    }
    node.announce(addresses, shutdown).await
}
