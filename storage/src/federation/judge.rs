//! Judging one route announcement from a neighbour: upstream MPREG's
//! checks, in its order, each with its named reject reason; an accepted
//! announcement becomes the [`LearnedRoute`] to store.

use serde::{Deserialize, Serialize};

use super::{Announcement, LearnedRoute, LinkMetrics};

/// Longest path an announcement may carry; a longer one is `malformed`.
pub const MAX_PATH_CLUSTERS: usize = 64;
/// Longest cluster id or tag in an announcement.
pub const MAX_ID_BYTES: usize = 256;
/// Most tags an announcement may carry.
pub const MAX_TAGS: usize = 32;

/// Why an announcement was not accepted (upstream's reason names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// `advertised_at + ttl` has passed.
    Expired,
    /// It came from this cluster itself.
    SelfOrigin,
    /// The import policy for the sender refuses it.
    Policy,
    EmptyPath,
    /// The advertiser is not the sender, or `path[0]` is not the advertiser.
    AdvertiserMismatch,
    /// The path does not end at the destination.
    DestinationMismatch,
    /// The path already holds this cluster (or a cluster twice).
    Loop,
    /// The route was withdrawn recently (hold-down).
    HoldDown,
    /// The route flapped too often (flap damping).
    Suppressed,
    /// Not newer than the route already held from the sender.
    Stale,
    /// A missing, unknown or wrong signature.
    Signature,
    /// Oversized or unreadable fields.
    Malformed,
    /// A key announcement naming another cluster than its sender (ignored).
    ForeignKey,
}

impl Reject {
    pub const ALL: [Reject; 13] = [
        Reject::Expired,
        Reject::SelfOrigin,
        Reject::Policy,
        Reject::EmptyPath,
        Reject::AdvertiserMismatch,
        Reject::DestinationMismatch,
        Reject::Loop,
        Reject::HoldDown,
        Reject::Suppressed,
        Reject::Stale,
        Reject::Signature,
        Reject::Malformed,
        Reject::ForeignKey,
    ];

    /// The reason's name in SQL, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Expired => "expired",
            Reject::SelfOrigin => "self",
            Reject::Policy => "policy",
            Reject::EmptyPath => "empty_path",
            Reject::AdvertiserMismatch => "advertiser_mismatch",
            Reject::DestinationMismatch => "destination_mismatch",
            Reject::Loop => "loop",
            Reject::HoldDown => "hold_down",
            Reject::Suppressed => "suppressed",
            Reject::Stale => "stale",
            Reject::Signature => "signature",
            Reject::Malformed => "malformed",
            Reject::ForeignKey => "foreign_key",
        }
    }
}

/// Hold-down and flap damping settings, carried by each withdrawal event
/// so apply does not depend on the configuration of the node replaying.
/// Zero turns each off (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damping {
    /// After a withdrawal, announcements of the route are refused this long.
    pub hold_down_ms: u64,
    /// Withdrawals within `flap_window_ms` that suppress the route.
    pub flap_threshold: u32,
    /// The flap counting window, and how long a suppression lasts.
    pub flap_window_ms: u64,
}

/// A neighbour policy: which announcements to accept from (import) or
/// send to (export) a neighbour. An unset list allows everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutePolicy {
    pub allowed_destinations: Option<Vec<String>>,
    pub allowed_advertisers: Option<Vec<String>>,
    /// A route must carry one of these tags (so an untagged route fails).
    pub allowed_tags: Option<Vec<String>>,
    /// A route carrying one of these tags is refused.
    pub deny_tags: Vec<String>,
    /// Most hops a route may have once extended by the link.
    pub max_hops: Option<u32>,
    /// Added to the cost of every route learned through this neighbour.
    pub extra_cost: u32,
}

impl RoutePolicy {
    /// Whether the policy lets a route to `dest` from `advertiser` with
    /// `tags` through (`max_hops` is checked separately, on the extended
    /// hop count).
    pub fn allows(&self, dest: &str, advertiser: &str, tags: &[String]) -> bool {
        let listed = |list: &Option<Vec<String>>, value: &str| {
            list.as_ref().is_none_or(|l| l.iter().any(|v| v == value))
        };
        listed(&self.allowed_destinations, dest)
            && listed(&self.allowed_advertisers, advertiser)
            && self
                .allowed_tags
                .as_ref()
                .is_none_or(|allowed| tags.iter().any(|t| allowed.contains(t)))
            && !tags.iter().any(|t| self.deny_tags.contains(t))
    }
}

/// What the receiving cluster knows when it judges an announcement.
#[derive(Clone, Debug)]
pub struct JudgeContext<'a> {
    /// This cluster.
    pub local: &'a str,
    /// The neighbour cluster the announcement came from.
    pub sender: &'a str,
    /// The judging clock (unix ms).
    pub now_ms: u64,
    /// The link to the sender, to extend the metrics by.
    pub link: &'a LinkMetrics,
    /// The import policy for the sender.
    pub policy: &'a RoutePolicy,
    /// `(epoch, advertised_at_ms)` of the route to this destination
    /// already held from the sender, if any.
    pub held: Option<(u64, u64)>,
    /// Until when the destination is held down for this sender.
    pub held_down_until_ms: Option<u64>,
    /// Until when the destination is suppressed for this sender.
    pub suppressed_until_ms: Option<u64>,
}

fn malformed(a: &Announcement) -> bool {
    let long = |s: &String| s.len() > MAX_ID_BYTES || s.contains('\0');
    a.path.len() > MAX_PATH_CLUSTERS
        || a.tags.len() > MAX_TAGS
        || long(&a.dest)
        || long(&a.advertiser)
        || a.path.iter().any(long)
        || a.tags.iter().any(long)
}

/// Judges `a` from `ctx.sender`: the route to store, or why not.
pub fn judge(a: &Announcement, ctx: &JudgeContext<'_>) -> Result<LearnedRoute, Reject> {
    if malformed(a) {
        return Err(Reject::Malformed);
    }
    if ctx.sender == ctx.local {
        return Err(Reject::SelfOrigin);
    }
    if a.advertiser != ctx.sender {
        return Err(Reject::AdvertiserMismatch);
    }
    if ctx.now_ms > a.advertised_at_ms.saturating_add(a.ttl_ms) {
        return Err(Reject::Expired);
    }
    if !ctx.policy.allows(&a.dest, &a.advertiser, &a.tags) {
        return Err(Reject::Policy);
    }
    let (Some(first), Some(last)) = (a.path.first(), a.path.last()) else {
        return Err(Reject::EmptyPath);
    };
    if *first != a.advertiser {
        return Err(Reject::AdvertiserMismatch);
    }
    if *last != a.dest {
        return Err(Reject::DestinationMismatch);
    }
    let mut seen = std::collections::BTreeSet::new();
    if a.path.iter().any(|c| c == ctx.local || !seen.insert(c)) {
        return Err(Reject::Loop);
    }
    if ctx.held_down_until_ms.is_some_and(|t| ctx.now_ms < t) {
        return Err(Reject::HoldDown);
    }
    if ctx.suppressed_until_ms.is_some_and(|t| ctx.now_ms < t) {
        return Err(Reject::Suppressed);
    }
    let mut metrics = a.metrics.extend(ctx.link);
    metrics.cost = metrics.cost.saturating_add(ctx.policy.extra_cost);
    if ctx.policy.max_hops.is_some_and(|max| metrics.hops > max) {
        return Err(Reject::Policy);
    }
    if let Some((epoch, at)) = ctx.held
        && !newer((a.epoch, a.advertised_at_ms), (epoch, at))
    {
        return Err(Reject::Stale);
    }
    let mut path = Vec::with_capacity(a.path.len() + 1);
    path.push(ctx.local.to_string());
    path.extend(a.path.iter().cloned());
    let mut tags = a.tags.clone();
    tags.sort();
    tags.dedup();
    Ok(LearnedRoute {
        dest: a.dest.clone(),
        next_hop: ctx.sender.to_string(),
        path,
        metrics,
        advertised_at_ms: a.advertised_at_ms,
        epoch: a.epoch,
        tags,
    })
}

/// Whether `(epoch, advertised_at)` replaces `held`: a higher epoch, or the
/// same epoch advertised strictly later.
pub(crate) fn newer(candidate: (u64, u64), held: (u64, u64)) -> bool {
    candidate.0 > held.0 || (candidate.0 == held.0 && candidate.1 > held.1)
}
