//! The in-memory index of the views that routing reads on every call.
//!
//! It is rebuilt from the view column families when the store opens and
//! updated with each committed apply batch, so it always equals the views
//! at `last_applied`.

use std::collections::BTreeMap;

use super::View;
use super::federation_rows::{CandidateRow, DampingRow, LinkRow, RemoteCatalogRow, keys_key};
use super::rows::{CredentialRow, FunctionRow, NodeRow, RouteRow, SubscriptionRow};
use crate::codec;
use crate::error::Result;
use crate::federation::KeyAd;

/// Decoded rows of every view, keyed as in RocksDB.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    nodes: BTreeMap<Vec<u8>, NodeRow>,
    functions: BTreeMap<Vec<u8>, FunctionRow>,
    subscriptions: BTreeMap<Vec<u8>, SubscriptionRow>,
    routes: BTreeMap<Vec<u8>, RouteRow>,
    links: BTreeMap<Vec<u8>, LinkRow>,
    candidates: BTreeMap<Vec<u8>, CandidateRow>,
    damping: BTreeMap<Vec<u8>, DampingRow>,
    keys: BTreeMap<Vec<u8>, KeyAd>,
    remote_catalogs: BTreeMap<Vec<u8>, RemoteCatalogRow>,
    credentials: BTreeMap<Vec<u8>, CredentialRow>,
}

fn change<T: serde::de::DeserializeOwned>(
    map: &mut BTreeMap<Vec<u8>, T>,
    view: View,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<()> {
    match value {
        Some(bytes) => {
            map.insert(key.to_vec(), codec::decode_row(view.cf_name(), key, bytes)?);
        }
        None => {
            map.remove(key);
        }
    }
    Ok(())
}

fn with_prefix<T>(map: &BTreeMap<Vec<u8>, T>, prefix: Vec<u8>) -> impl Iterator<Item = &T> {
    map.range(prefix.clone()..)
        .take_while(move |(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
}

impl Catalog {
    /// Records one committed row change (`None` = deleted).
    pub(crate) fn apply_change(
        &mut self,
        view: View,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<()> {
        match view {
            View::Nodes => change(&mut self.nodes, view, key, value),
            View::Functions => change(&mut self.functions, view, key, value),
            View::Subscriptions => change(&mut self.subscriptions, view, key, value),
            View::Routes => change(&mut self.routes, view, key, value),
            View::FederationLinks => change(&mut self.links, view, key, value),
            View::RouteCandidates => change(&mut self.candidates, view, key, value),
            View::RouteDamping => change(&mut self.damping, view, key, value),
            View::RouteKeys => change(&mut self.keys, view, key, value),
            View::RemoteCatalogs => change(&mut self.remote_catalogs, view, key, value),
            View::Credentials => change(&mut self.credentials, view, key, value),
            View::Queues
            | View::QueueMessages
            | View::QueueReady
            | View::QueueMessageIds
            | View::QueueDedup
            | View::QueueTimers
            | View::CacheEntries => Ok(()),
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeRow> {
        self.nodes.values()
    }

    pub fn node(&self, node_id: &str) -> Option<&NodeRow> {
        self.nodes.get(&NodeRow::key(node_id))
    }

    pub fn functions(&self) -> impl Iterator<Item = &FunctionRow> {
        self.functions.values()
    }

    /// Every registration of function `name` (all versions and providers).
    pub fn functions_named(&self, name: &str) -> impl Iterator<Item = &FunctionRow> {
        with_prefix(&self.functions, FunctionRow::name_prefix(name))
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = &SubscriptionRow> {
        self.subscriptions.values()
    }

    pub fn routes(&self) -> impl Iterator<Item = &RouteRow> {
        self.routes.values()
    }

    /// Every known route to cluster `dest`.
    pub fn routes_to(&self, dest: &str) -> impl Iterator<Item = &RouteRow> {
        with_prefix(&self.routes, RouteRow::dest_prefix(dest))
    }

    /// Links to neighbour clusters.
    pub fn links(&self) -> impl Iterator<Item = &LinkRow> {
        self.links.values()
    }

    pub fn link(&self, cluster_id: &str) -> Option<&LinkRow> {
        self.links.get(&LinkRow::key(cluster_id))
    }

    /// Every route learned from a neighbour, by destination.
    pub fn candidates(&self) -> impl Iterator<Item = &CandidateRow> {
        self.candidates.values()
    }

    /// The routes learned to `dest`.
    pub fn candidates_to(&self, dest: &str) -> impl Iterator<Item = &CandidateRow> {
        with_prefix(&self.candidates, CandidateRow::dest_prefix(dest))
    }

    pub fn candidate(&self, dest: &str, next_hop: &str) -> Option<&CandidateRow> {
        self.candidates.get(&CandidateRow::key(dest, next_hop))
    }

    pub fn damping(&self, dest: &str, advertiser: &str) -> Option<&DampingRow> {
        self.damping.get(&DampingRow::key(dest, advertiser))
    }

    /// The route signing keys of `cluster` (this one or a neighbour).
    pub fn route_keys(&self, cluster: &str) -> Option<&KeyAd> {
        self.keys.get(&keys_key(cluster))
    }

    /// The route signing keys of every cluster known.
    pub fn all_route_keys(&self) -> impl Iterator<Item = &KeyAd> {
        self.keys.values()
    }

    /// The catalog summaries held of other clusters (live or not).
    pub fn remote_catalogs(&self) -> impl Iterator<Item = &RemoteCatalogRow> {
        self.remote_catalogs.values()
    }

    pub fn remote_catalog(&self, cluster_id: &str) -> Option<&RemoteCatalogRow> {
        self.remote_catalogs.get(&RemoteCatalogRow::key(cluster_id))
    }

    /// Every credential, revoked ones included, by name.
    pub fn credentials(&self) -> impl Iterator<Item = &CredentialRow> {
        self.credentials.values()
    }

    pub fn credential(&self, name: &str) -> Option<&CredentialRow> {
        self.credentials.get(&CredentialRow::key(name))
    }

    /// The live credential whose token has this SHA-256 (lowercase hex).
    pub fn credential_by_token(&self, token_sha256: &str) -> Option<&CredentialRow> {
        self.credentials
            .values()
            .find(|row| row.live() && row.token_sha256 == token_sha256)
    }

    /// Whether clients must present a token: some credential is live.
    pub fn requires_credentials(&self) -> bool {
        self.credentials.values().any(CredentialRow::live)
    }
}
