//! Catalog summaries exchanged between clusters: what one cluster serves
//! (worker functions, subscription patterns, queues, cache namespaces),
//! and the pure rules for the summaries a cluster sends a neighbour and
//! the ones it accepts.
//!
//! A summary is advertised by its own cluster (the origin) under an epoch
//! that grows whenever its content changes and at least once per TTL, and
//! relayed unchanged by every cluster that holds it. A receiver keeps, per
//! origin, the summary of the highest epoch; one it does not hear again
//! within the TTL goes. So summaries flood any topology without loops, and
//! an origin that vanishes fades out.

use serde::{Deserialize, Serialize};

use crate::views::{Catalog, RemoteCatalogRow};

/// Most entries of each kind (functions, topics, queues, namespaces) one
/// summary may carry; a table with a larger one is refused whole.
pub const MAX_SUMMARY_ENTRIES: usize = 10_000;
/// Most summaries one table may carry.
pub const MAX_SUMMARIES: usize = 1_000;

/// One function a cluster serves (its providers collapsed).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RemoteFunction {
    pub name: String,
    pub function_id: String,
    pub version: String,
    pub resources: Vec<String>,
}

/// What one cluster serves, each list sorted and without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSummary {
    pub functions: Vec<RemoteFunction>,
    /// Subscription patterns of the cluster's subscribers.
    pub topics: Vec<String>,
    /// Queues declared in the cluster (it owns them).
    pub queues: Vec<String>,
    /// Cache namespaces the cluster holds entries of (it owns them).
    pub caches: Vec<String>,
}

/// A cluster's summary as it travels: the origin and its epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogAd {
    pub cluster_id: String,
    pub epoch: u64,
    pub summary: CatalogSummary,
}

impl CatalogSummary {
    /// The summary of cluster `local` from its catalog: the functions its
    /// members registered (providers named `skip_provider`, the built-ins
    /// every cluster has, left out), every subscription pattern, `queues`
    /// and cache namespaces (`caches`).
    pub fn of(
        catalog: &Catalog,
        local: &str,
        skip_provider: &str,
        (mut queues, mut caches): (Vec<String>, Vec<String>),
    ) -> Self {
        let mut functions: Vec<RemoteFunction> = catalog
            .functions()
            .filter(|f| f.cluster_id == local && f.provider != skip_provider)
            .map(|f| RemoteFunction {
                name: f.name.clone(),
                function_id: f.function_id.clone(),
                version: f.version.clone(),
                resources: f.resources.clone(),
            })
            .collect();
        functions.sort();
        functions.dedup();
        let mut topics: Vec<String> = catalog
            .subscriptions()
            .flat_map(|s| s.patterns.iter().cloned())
            .collect();
        topics.sort();
        topics.dedup();
        queues.sort();
        queues.dedup();
        caches.sort();
        caches.dedup();
        CatalogSummary {
            functions,
            topics,
            queues,
            caches,
        }
    }

    fn too_large(&self) -> Option<(&'static str, usize)> {
        [
            ("functions", self.functions.len()),
            ("topics", self.topics.len()),
            ("queues", self.queues.len()),
            ("cache namespaces", self.caches.len()),
        ]
        .into_iter()
        .find(|(_, n)| *n > MAX_SUMMARY_ENTRIES)
    }
}

/// Why a table's summaries are refused whole, if they are: too many, or
/// one too large.
pub fn check_summaries(ads: &[CatalogAd]) -> Result<(), String> {
    if ads.len() > MAX_SUMMARIES {
        return Err(format!(
            "{} catalog summaries in one table, above the limit of {MAX_SUMMARIES}",
            ads.len()
        ));
    }
    for ad in ads {
        if let Some((kind, n)) = ad.summary.too_large() {
            return Err(format!(
                "the catalog summary of cluster {} lists {n} {kind}, above the limit of {MAX_SUMMARY_ENTRIES}",
                ad.cluster_id
            ));
        }
    }
    Ok(())
}

/// Whether a held summary still counts at `now_ms`.
pub fn live(row: &RemoteCatalogRow, now_ms: u64) -> bool {
    row.expires_at_ms > now_ms
}

/// The summaries this cluster sends neighbour `to`: its own, and every
/// live one it holds except `to`'s own.
pub fn export_summaries(
    catalog: &Catalog,
    own: &CatalogAd,
    to: &str,
    now_ms: u64,
) -> Vec<CatalogAd> {
    std::iter::once(own.clone())
        .chain(
            catalog
                .remote_catalogs()
                .filter(|row| row.ad.cluster_id != to && live(row, now_ms))
                .map(|row| row.ad.clone()),
        )
        .collect()
}

/// Of the summaries a neighbour sent, those to accept: not this cluster's
/// own, and of a higher epoch than the one held for their origin.
pub fn import_summaries(catalog: &Catalog, local: &str, ads: &[CatalogAd]) -> Vec<CatalogAd> {
    ads.iter()
        .filter(|ad| ad.cluster_id != local)
        .filter(|ad| {
            catalog
                .remote_catalog(&ad.cluster_id)
                .is_none_or(|held| ad.epoch > held.ad.epoch)
        })
        .cloned()
        .collect()
}

/// The held summaries past their time at `now_ms` (the leader's timer
/// proposes their expiry).
pub fn summaries_gone(catalog: &Catalog, now_ms: u64) -> Vec<String> {
    catalog
        .remote_catalogs()
        .filter(|row| !live(row, now_ms))
        .map(|row| row.ad.cluster_id.clone())
        .collect()
}
