//! The rows of the node, function, subscription, route and credential views
//! (the ones the in-memory catalog holds) and the keys they are stored under. Queue
//! rows are in `queue_rows`, the cache row in `cache`.
//!
//! Rows are plain structs (no flatten, no untagged enums) so bincode encodes
//! them exactly; they are stored with [`crate::codec`].

use serde::{Deserialize, Serialize};

use super::row_key;
use crate::credential::Permissions;

/// Whether a node is serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Up,
    Left,
}

impl NodeStatus {
    /// Lowercase name, as SQL shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Left => "left",
        }
    }
}

/// `nodes` view: one row per node ever seen, keyed by node id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub node_id: String,
    pub cluster_id: String,
    pub addresses: Vec<String>,
    pub resources: Vec<String>,
    /// When the node last joined (unix ms).
    pub joined_at_ms: u64,
    pub status: NodeStatus,
    /// When the node left, if it did (unix ms).
    pub left_at_ms: Option<u64>,
}

impl NodeRow {
    pub fn key(node_id: &str) -> Vec<u8> {
        row_key(&[node_id])
    }
}

/// The `provider` of the functions every node serves itself (built-ins).
pub const BUILTIN_PROVIDER: &str = "builtin";

/// `functions` view: one row per (name, version, provider).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRow {
    pub name: String,
    pub function_id: String,
    pub version: String,
    pub resources: Vec<String>,
    pub provider: String,
    pub node_id: String,
    pub cluster_id: String,
    pub registered_at_ms: u64,
}

impl FunctionRow {
    pub fn key(name: &str, version: &str, provider: &str) -> Vec<u8> {
        row_key(&[name, version, provider])
    }

    /// Key prefix of every row of function `name`.
    pub fn name_prefix(name: &str) -> Vec<u8> {
        let mut prefix = row_key(&[name]);
        prefix.push(0);
        prefix
    }
}

/// `subscriptions` view: one row per subscription id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRow {
    pub subscription_id: String,
    pub patterns: Vec<String>,
    pub subscriber: String,
    pub node_id: String,
    pub durable: bool,
    pub created_at_ms: u64,
}

impl SubscriptionRow {
    pub fn key(subscription_id: &str) -> Vec<u8> {
        row_key(&[subscription_id])
    }
}

/// `routes` view: one row per (dest, advertiser), the path-vector table.
/// `S` is the text type: `String`, or `&str` for a row decoded in place
/// from the stored bytes, as SQL scans of millions of rows read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow<S = String> {
    pub dest: S,
    pub next_hop: S,
    pub path: Vec<S>,
    pub cost: u32,
    pub advertiser: S,
    pub learned_at_ms: u64,
    pub expires_at_ms: Option<u64>,
}

impl RouteRow {
    pub fn key(dest: &str, advertiser: &str) -> Vec<u8> {
        row_key(&[dest, advertiser])
    }

    /// Key prefix of every route to `dest`.
    pub fn dest_prefix(dest: &str) -> Vec<u8> {
        let mut prefix = row_key(&[dest]);
        prefix.push(0);
        prefix
    }
}

impl<S> RouteRow<S> {
    /// Number of cluster hops of the path.
    pub fn hops(&self) -> usize {
        self.path.len()
    }
}

/// `credentials` view: one row per credential name, kept after revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRow {
    pub name: String,
    /// SHA-256 of the token, lowercase hex; never the token.
    pub token_sha256: String,
    pub permissions: Permissions,
    pub set_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

impl CredentialRow {
    pub fn key(name: &str) -> Vec<u8> {
        row_key(&[name])
    }

    /// Whether the credential still works.
    pub fn live(&self) -> bool {
        self.revoked_at_ms.is_none()
    }
}
