//! Federation settings: neighbour clusters to link at start, announcement
//! timing, route damping, and the neighbour policies (import and export),
//! which `POST /federation/reload` and SIGHUP read again.

use std::collections::BTreeMap;
use std::time::Duration;

use mpreg_storage::federation::{Damping, RoutePolicy};
use serde::Deserialize;

/// Default `announce_interval_seconds`.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(10);
/// Default `route_ttl_seconds`.
pub const DEFAULT_ROUTE_TTL: Duration = Duration::from_secs(30);
/// Default `link_dead_seconds`.
pub const DEFAULT_LINK_DEAD: Duration = Duration::from_secs(3);
/// Default `max_routes_per_dest`.
pub const DEFAULT_MAX_ROUTES_PER_DEST: u32 = 4;
/// Default `hop_budget`: most cluster hops a forwarded call or message
/// crosses (upstream's planner default).
pub const DEFAULT_HOP_BUDGET: u8 = 5;
/// Default `key_overlap_seconds` (upstream's rotation overlap).
pub const DEFAULT_KEY_OVERLAP: Duration = Duration::from_secs(60);

/// Policies per neighbour cluster, with a default: a neighbour's own policy
/// replaces the default; with neither, everything passes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyDirectory {
    pub default: Option<RoutePolicy>,
    pub neighbors: BTreeMap<String, RoutePolicy>,
}

impl PolicyDirectory {
    /// The policy for `cluster`: its own, else the default, else allow all.
    pub fn lookup(&self, cluster: &str) -> RoutePolicy {
        self.neighbors
            .get(cluster)
            .or(self.default.as_ref())
            .cloned()
            .unwrap_or_default()
    }
}

/// How a cluster takes part in a federation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederationSettings {
    /// Client URLs of members of neighbour clusters to link at start.
    pub federate: Vec<String>,
    /// A cluster sends its neighbours its whole route table this often
    /// (and at once when it changes).
    pub announce_interval: Duration,
    /// A learned route goes unless announced again within this time.
    pub route_ttl: Duration,
    /// A link that answers nothing for this long is lost: its routes are
    /// withdrawn.
    pub link_dead: Duration,
    /// Candidates kept per destination.
    pub max_routes_per_dest: u32,
    /// Hold-down and flap damping of withdrawn routes (off by default).
    pub damping: Damping,
    /// Refuse unsigned route tables even from neighbours that never
    /// signed (tables are always signed; a neighbour that signed once
    /// must keep signing either way).
    pub require_signatures: bool,
    /// After `rotate-key`, the old key stays valid (and keeps signing)
    /// this long.
    pub key_overlap: Duration,
    /// Most cluster hops a call or message forwarded from this cluster
    /// may cross.
    pub hop_budget: u8,
    /// What to accept from each neighbour.
    pub import: PolicyDirectory,
    /// What to announce to each neighbour.
    pub export: PolicyDirectory,
}

impl Default for FederationSettings {
    fn default() -> Self {
        FederationSettings {
            federate: Vec::new(),
            announce_interval: DEFAULT_ANNOUNCE_INTERVAL,
            route_ttl: DEFAULT_ROUTE_TTL,
            link_dead: DEFAULT_LINK_DEAD,
            max_routes_per_dest: DEFAULT_MAX_ROUTES_PER_DEST,
            damping: Damping::default(),
            require_signatures: false,
            key_overlap: DEFAULT_KEY_OVERLAP,
            hop_budget: DEFAULT_HOP_BUDGET,
            import: PolicyDirectory::default(),
            export: PolicyDirectory::default(),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_neighbours_policy_replaces_the_default_and_none_allows_all() {
        let directory: PolicyDirectory =
            toml::from_str("[default]\ndeny_tags = [\"beta\"]\n[neighbors.c2]\nmax_hops = 3\n")
                .unwrap();
        assert_eq!(directory.lookup("c2").max_hops, Some(3));
        assert!(directory.lookup("c2").deny_tags.is_empty());
        assert_eq!(directory.lookup("c9").deny_tags, ["beta"]);
        assert_eq!(
            PolicyDirectory::default().lookup("c9"),
            RoutePolicy::default()
        );
    }
}
