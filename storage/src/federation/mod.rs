//! Federation route control, as pure functions over plain values: what a
//! route announcement carries, how a cluster judges one from a neighbour
//! (the accept and reject rules of upstream MPREG's path-vector control,
//! see `docs/federation.md`), and how the candidates to one destination
//! are scored, ranked and explained.
//!
//! Nothing here reads a clock, the network or storage: the daemon's leader
//! judges announcements against the views with its clock and proposes what
//! it accepts; apply (in `views`) stores it with the event's time; SQL ranks
//! the stored candidates with [`rank`]. All three use these functions, so
//! they agree.
//!
//! - `judge`: [`judge`], one announcement in, a [`LearnedRoute`] or a
//!   [`Reject`] reason out; [`RoutePolicy`];
//! - `rank`: [`score`], [`rank`] and [`explain`];
//! - `sign`: signed route tables and keys: [`table_bytes`], [`check_table`];
//! - `speak`: what a speaker decides from its catalog: [`export_table`],
//!   [`import_table`], [`ranked`], [`route_state`];
//! - `catalog`: the catalog summaries clusters exchange: [`CatalogAd`],
//!   [`export_summaries`], [`import_summaries`];
//! - `sim`: those rules run by many clusters in memory, in virtual time.

mod catalog;
mod judge;
mod rank;
mod sign;
pub mod sim;
mod speak;

pub use catalog::{
    CatalogAd, CatalogSummary, MAX_SUMMARIES, MAX_SUMMARY_ENTRIES, RemoteFunction, check_summaries,
    export_summaries, import_summaries, live, summaries_gone,
};
pub(crate) use judge::newer;
pub use judge::{
    Damping, JudgeContext, MAX_ID_BYTES, MAX_PATH_CLUSTERS, MAX_TAGS, Reject, RoutePolicy, judge,
};
pub use rank::{Candidate, Explained, explain, rank, score};
pub use sign::{
    ALGORITHM, Checked, KeyAd, MAX_KEYS, RouteKey, SignatureContext, TableSignature, check_table,
    key_id, table_bytes, verify,
};
pub use speak::{
    ExportContext, ImportContext, Imported, ROUTE_STATES, RouteShape, export_table, import_table,
    ranked, ranked_to, route_state, routes_gone, routes_via, table_shape, usable,
};

use serde::{Deserialize, Serialize};

/// Path metrics, in integer units so events and rows compare exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMetrics {
    /// Cluster hops from the holder of the route to the destination.
    pub hops: u32,
    /// Sum of the link latencies along the path, in microseconds.
    pub latency_us: u64,
    /// Narrowest positive link bandwidth along the path (0: unknown).
    pub bandwidth_mbps: u32,
    /// Least link reliability along the path, in millionths (1,000,000 = 1).
    pub reliability_ppm: u32,
    /// Sum of the link costs along the path.
    pub cost: u32,
}

/// Latency changes up to this are not news (see [`LearnedRoute::same_as`]).
pub const LATENCY_TOLERANCE_US: u64 = 5_000;

/// Reliability 1.0 in [`RouteMetrics::reliability_ppm`] units.
pub const FULL_RELIABILITY: u32 = 1_000_000;

impl RouteMetrics {
    /// The metrics a cluster advertises for a route to itself.
    pub fn origin() -> Self {
        RouteMetrics {
            hops: 0,
            latency_us: 0,
            bandwidth_mbps: 0,
            reliability_ppm: FULL_RELIABILITY,
            cost: 0,
        }
    }

    /// These metrics one link further: hops + 1, latency and cost add,
    /// reliability is the least, bandwidth the least of the known ones.
    pub fn extend(&self, link: &LinkMetrics) -> RouteMetrics {
        let bandwidth_mbps = match (self.bandwidth_mbps, link.bandwidth_mbps) {
            (0, b) | (b, 0) => b,
            (a, b) => a.min(b),
        };
        RouteMetrics {
            hops: self.hops.saturating_add(1),
            latency_us: self.latency_us.saturating_add(link.latency_us),
            bandwidth_mbps,
            reliability_ppm: self.reliability_ppm.min(link.reliability_ppm),
            cost: self.cost.saturating_add(link.cost),
        }
    }

    pub fn latency_ms(&self) -> f64 {
        self.latency_us as f64 / 1000.0
    }

    pub fn reliability(&self) -> f64 {
        f64::from(self.reliability_ppm) / f64::from(FULL_RELIABILITY)
    }
}

/// What the receiving cluster knows of the link an announcement came over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkMetrics {
    /// Measured one-way latency (half the round trip), microseconds.
    pub latency_us: u64,
    pub bandwidth_mbps: u32,
    pub reliability_ppm: u32,
    pub cost: u32,
}

impl Default for LinkMetrics {
    fn default() -> Self {
        LinkMetrics {
            latency_us: 0,
            bandwidth_mbps: 0,
            reliability_ppm: FULL_RELIABILITY,
            cost: 0,
        }
    }
}

/// A route announcement as it travels between clusters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The destination cluster.
    pub dest: String,
    /// Clusters from the advertiser to the destination: `path[0]` is the
    /// advertiser, the last is `dest`.
    pub path: Vec<String>,
    pub metrics: RouteMetrics,
    /// The cluster that sent it (a neighbour re-advertises what it
    /// accepted; a raw relay is refused).
    pub advertiser: String,
    /// The advertiser's clock when it sent the announcement (unix ms).
    pub advertised_at_ms: u64,
    /// How long the announcement is good for after `advertised_at_ms`.
    pub ttl_ms: u64,
    /// Grows with each announcement of the advertiser; a higher epoch
    /// replaces a lower one.
    pub epoch: u64,
    pub tags: Vec<String>,
}

/// A route a cluster accepted from neighbour `next_hop`, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedRoute {
    pub dest: String,
    /// The neighbour cluster the route goes through (and that advertised
    /// it).
    pub next_hop: String,
    /// This cluster, then the announcement's path: `[local, next_hop, .., dest]`.
    pub path: Vec<String>,
    /// The announcement's metrics extended by the link to `next_hop`.
    pub metrics: RouteMetrics,
    pub advertised_at_ms: u64,
    pub epoch: u64,
    pub tags: Vec<String>,
}

impl LearnedRoute {
    /// Whether `other` says the same thing as this route, apart from its
    /// epoch and time: the same path, tags and metrics, latency within
    /// 25% or 5 ms (jitter is not news: a route whose latency follows every
    /// measurement makes the best paths flap). A re-announcement like that
    /// only refreshes the route.
    pub fn same_as(&self, other: &LearnedRoute) -> bool {
        let (a, b) = (self.metrics.latency_us, other.metrics.latency_us);
        let tolerance = (a.max(b) / 4).max(LATENCY_TOLERANCE_US);
        self.dest == other.dest
            && self.next_hop == other.next_hop
            && self.path == other.path
            && self.tags == other.tags
            && self.metrics.hops == other.metrics.hops
            && self.metrics.bandwidth_mbps == other.metrics.bandwidth_mbps
            && self.metrics.reliability_ppm == other.metrics.reliability_ppm
            && self.metrics.cost == other.metrics.cost
            && a.abs_diff(b) <= tolerance
    }
}

#[cfg(test)]
mod catalog_test;
#[cfg(test)]
mod sign_test;
#[cfg(test)]
mod test;

#[cfg(test)]
mod same_as_test {
    use super::*;

    fn route(latency_us: u64) -> LearnedRoute {
        LearnedRoute {
            dest: "c3".into(),
            next_hop: "c2".into(),
            path: vec!["c1".into(), "c2".into(), "c3".into()],
            metrics: RouteMetrics {
                latency_us,
                ..RouteMetrics::origin()
            },
            advertised_at_ms: 1,
            epoch: 1,
            tags: Vec::new(),
        }
    }

    #[test]
    fn latency_jitter_is_not_news_but_a_real_change_is() {
        assert!(route(1_000).same_as(&route(6_000)));
        assert!(!route(1_000).same_as(&route(6_001)));
        assert!(route(100_000).same_as(&route(125_000)));
        assert!(!route(100_000).same_as(&route(140_000)));
        let mut longer = route(1_000);
        longer.path.push("c4".into());
        assert!(!route(1_000).same_as(&longer));
    }
}
