//! Row types of the federation views: links to neighbour clusters, the
//! route candidates learned through them, route damping state, and the
//! route signing keys (a [`crate::federation::KeyAd`] per cluster, keyed
//! by [`keys_key`]), and the catalog summaries of other clusters.

use serde::{Deserialize, Serialize};

use super::row_key;
use crate::federation::{Candidate, CatalogAd, LearnedRoute, RouteMetrics};

/// Key of the `route_keys` row of `cluster_id`.
pub fn keys_key(cluster_id: &str) -> Vec<u8> {
    row_key(&[cluster_id])
}

/// `federation_links` view: one row per neighbour cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRow {
    pub cluster_id: String,
    /// Client URLs of the neighbour's members (any one reaches it).
    pub urls: Vec<String>,
    pub linked_at_ms: u64,
}

impl LinkRow {
    pub fn key(cluster_id: &str) -> Vec<u8> {
        row_key(&[cluster_id])
    }
}

/// `route_candidates` view: one row per (destination, next hop), a route
/// learned from a neighbour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateRow {
    pub route: LearnedRoute,
    /// When this path was first learned (kept across refreshes).
    pub learned_at_ms: u64,
    /// The route goes unless refreshed by then.
    pub expires_at_ms: u64,
    /// Set when the route was withdrawn and is kept only to show that it
    /// is held down or suppressed.
    pub withdrawn_at_ms: Option<u64>,
}

impl CandidateRow {
    pub fn key(dest: &str, next_hop: &str) -> Vec<u8> {
        row_key(&[dest, next_hop])
    }

    /// Key prefix of every candidate to `dest`.
    pub fn dest_prefix(dest: &str) -> Vec<u8> {
        let mut prefix = row_key(&[dest]);
        prefix.push(0);
        prefix
    }

    /// This row as ranking sees it.
    pub fn candidate(&self) -> Candidate<'_> {
        Candidate {
            next_hop: &self.route.next_hop,
            advertiser: &self.route.next_hop,
            path: &self.route.path,
            metrics: &self.route.metrics,
            expires_at_ms: Some(self.expires_at_ms),
            withdrawn: self.withdrawn_at_ms.is_some(),
        }
    }

    pub fn metrics(&self) -> &RouteMetrics {
        &self.route.metrics
    }

    /// Whether the route goes at `now_ms`: a live one once it expired, a
    /// withdrawn one once `damping` (its row, if any) no longer holds it.
    /// Apply decides with this at the event's time; the leader's timer
    /// with it picks what to propose.
    pub fn gone_at(&self, now_ms: u64, damping: Option<&DampingRow>) -> bool {
        match self.withdrawn_at_ms {
            None => self.expires_at_ms <= now_ms,
            Some(_) => !damping.is_some_and(|d| d.active(now_ms)),
        }
    }
}

/// `route_damping` view: hold-down and flap state per (destination,
/// advertiser), kept after a withdrawal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DampingRow {
    pub dest: String,
    pub advertiser: String,
    /// Withdrawals counted in the current window.
    pub flaps: u32,
    pub window_start_ms: u64,
    /// Announcements are refused until then (hold-down).
    pub held_down_until_ms: Option<u64>,
    /// Announcements are refused until then (flap damping).
    pub suppressed_until_ms: Option<u64>,
}

impl DampingRow {
    pub fn key(dest: &str, advertiser: &str) -> Vec<u8> {
        row_key(&[dest, advertiser])
    }

    /// Whether hold-down or suppression still refuses announcements at `now_ms`.
    pub fn active(&self, now_ms: u64) -> bool {
        self.held_down_until_ms.is_some_and(|t| now_ms < t)
            || self.suppressed_until_ms.is_some_and(|t| now_ms < t)
    }

    /// The state a withdrawn route shows while damped at `now_ms`.
    pub fn state(&self, now_ms: u64) -> Option<&'static str> {
        if self.suppressed_until_ms.is_some_and(|t| now_ms < t) {
            Some("suppressed")
        } else if self.held_down_until_ms.is_some_and(|t| now_ms < t) {
            Some("held_down")
        } else {
            None
        }
    }
}

/// `remote_catalogs` view: one row per other cluster whose catalog
/// summary this cluster holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCatalogRow {
    pub ad: CatalogAd,
    /// The neighbour it came from.
    pub via: String,
    pub learned_at_ms: u64,
    /// The summary goes unless a newer one arrives by then.
    pub expires_at_ms: u64,
}

impl RemoteCatalogRow {
    pub fn key(cluster_id: &str) -> Vec<u8> {
        row_key(&[cluster_id])
    }
}
