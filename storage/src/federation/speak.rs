//! What a cluster's speaker decides from its catalog, as pure functions:
//! the route table it announces to a neighbour ([`export_table`]), what a
//! neighbour's table changes here ([`import_table`], the events to
//! propose), the candidates ranked per destination ([`ranked`]) and the
//! state each one is in ([`route_state`]). The daemon's leader, the SQL
//! `routes` table, the route gauges and the in-process simulation
//! ([`super::sim`]) all use them, so they agree.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Announcement, Candidate, Damping, Explained, JudgeContext, LearnedRoute, LinkMetrics, Reject,
    RouteMetrics, RoutePolicy, judge, rank,
};
use crate::event::EventKind;
use crate::views::{CandidateRow, Catalog, DampingRow};

/// Per destination, the candidates in rank order (best first), ranked at
/// `now_ms`.
pub fn ranked(catalog: &Catalog, now_ms: u64) -> BTreeMap<&str, Vec<&CandidateRow>> {
    let mut by_dest: BTreeMap<&str, Vec<&CandidateRow>> = BTreeMap::new();
    for row in catalog.candidates() {
        by_dest.entry(&row.route.dest).or_default().push(row);
    }
    for rows in by_dest.values_mut() {
        let candidates: Vec<_> = rows.iter().map(|r| r.candidate()).collect();
        let order = rank(&candidates, now_ms);
        *rows = order.into_iter().map(|i| rows[i]).collect();
    }
    by_dest
}

/// The candidates to `dest`, best first (as [`ranked`] orders them).
pub fn ranked_to<'a>(catalog: &'a Catalog, dest: &str, now_ms: u64) -> Vec<&'a CandidateRow> {
    let rows: Vec<&CandidateRow> = catalog.candidates_to(dest).collect();
    let candidates: Vec<_> = rows.iter().map(|r| r.candidate()).collect();
    rank(&candidates, now_ms)
        .into_iter()
        .map(|i| rows[i])
        .collect()
}

/// Whether a candidate can carry traffic at `now_ms`.
pub fn usable(row: &CandidateRow, now_ms: u64) -> bool {
    row.withdrawn_at_ms.is_none() && row.expires_at_ms > now_ms
}

/// Every state a candidate can be in (see [`route_state`]).
pub const ROUTE_STATES: [&str; 6] = [
    "active",
    "backup",
    "expired",
    "withdrawn",
    "held_down",
    "suppressed",
];

/// The state of an explained candidate at `now_ms`: `active` (selected),
/// `backup` (usable, ranked lower), `expired`, and for a withdrawn one
/// `held_down` or `suppressed` while `damping` holds it, else `withdrawn`
/// (until the leader's timer removes it).
pub fn route_state(e: &Explained, damping: Option<&DampingRow>, now_ms: u64) -> &'static str {
    match e.filtered_reason {
        None => "active",
        Some("lower_rank") => "backup",
        Some("withdrawn") => damping.and_then(|d| d.state(now_ms)).unwrap_or("withdrawn"),
        Some(reason) => reason,
    }
}

/// What [`export_table`] needs besides the catalog.
pub struct ExportContext<'a> {
    /// This cluster.
    pub local: &'a str,
    /// The neighbour the table is for.
    pub to: &'a str,
    pub now_ms: u64,
    /// The epoch of every announcement of this table.
    pub epoch: u64,
    pub ttl_ms: u64,
    /// The export policy for `to`.
    pub policy: &'a RoutePolicy,
}

/// The route table this cluster announces to `ctx.to`: itself, then its
/// selected route to every other destination that neither goes through
/// `to` nor is refused by the export policy, all stamped with `ctx.epoch`
/// and `ctx.now_ms`.
pub fn export_table(catalog: &Catalog, ctx: &ExportContext<'_>) -> Vec<Announcement> {
    let local = ctx.local;
    let announce =
        |dest: &str, path: Vec<String>, metrics: RouteMetrics, tags: Vec<String>| Announcement {
            dest: dest.to_string(),
            path,
            metrics,
            advertiser: local.to_string(),
            advertised_at_ms: ctx.now_ms,
            ttl_ms: ctx.ttl_ms,
            epoch: ctx.epoch,
            tags,
        };
    let mut table = vec![announce(
        local,
        vec![local.to_string()],
        RouteMetrics::origin(),
        Vec::new(),
    )];
    for (dest, rows) in ranked(catalog, ctx.now_ms) {
        let Some(best) = rows.first().filter(|r| usable(r, ctx.now_ms)) else {
            continue;
        };
        let route = &best.route;
        if route.path.iter().any(|c| c == ctx.to)
            || !ctx.policy.allows(dest, local, &route.tags)
            || ctx
                .policy
                .max_hops
                .is_some_and(|max| route.metrics.hops.saturating_add(1) > max)
        {
            continue;
        }
        table.push(announce(
            dest,
            route.path.clone(),
            route.metrics.clone(),
            route.tags.clone(),
        ));
    }
    table
}

/// What of one announced route matters for "did the table change":
/// destination, path, hops, cost and tags (not the epoch or the time,
/// which change with every table, nor latency jitter).
pub type RouteShape = (String, Vec<String>, u32, u32, Vec<String>);

/// The shape of a table: equal shapes need not be sent again before the
/// announce interval.
pub fn table_shape(table: &[Announcement]) -> Vec<RouteShape> {
    table
        .iter()
        .map(|a| {
            (
                a.dest.clone(),
                a.path.clone(),
                a.metrics.hops,
                a.metrics.cost,
                a.tags.clone(),
            )
        })
        .collect()
}

/// What [`import_table`] needs besides the catalog.
pub struct ImportContext<'a> {
    /// This cluster.
    pub local: &'a str,
    /// The neighbour whose table this is.
    pub sender: &'a str,
    pub now_ms: u64,
    /// The link the table came over (its measured latency).
    pub link: &'a LinkMetrics,
    /// The import policy for `sender`.
    pub policy: &'a RoutePolicy,
    pub ttl_ms: u64,
    pub max_routes: u32,
    pub damping: Damping,
}

/// What a neighbour's table changes.
#[derive(Debug, Default, PartialEq)]
pub struct Imported {
    /// To propose, in one log entry: the withdrawal of what the neighbour
    /// no longer announces, the routes new or changed, and a refresh of
    /// the rest when half the TTL is gone. Empty when nothing changes.
    pub events: Vec<EventKind>,
    /// Routes new or changed.
    pub accepted: u32,
    /// Routes announced again unchanged, or new but worse than the
    /// `max_routes` held (apply would drop them at once).
    pub unchanged: u64,
    /// Routes withdrawn by omission.
    pub withdrawn: u64,
    /// Routes refused, by reason.
    pub rejected: BTreeMap<Reject, u32>,
}

/// Judges every route of `sender`'s table against the catalog and says
/// what to propose. Re-announcements that change nothing propose nothing
/// until half the route TTL has passed; a route refused as `stale` still
/// counts as announced (it is not withdrawn).
pub fn import_table(
    catalog: &Catalog,
    ctx: &ImportContext<'_>,
    routes: &[Announcement],
) -> Imported {
    let sender = ctx.sender;
    let mut imported = Imported::default();
    let mut learned = Vec::new();
    let mut still_announced = BTreeSet::new();
    let mut refresh_due = false;
    for route in routes {
        let held = catalog
            .candidate(&route.dest, sender)
            .filter(|row| row.withdrawn_at_ms.is_none());
        let damping = catalog.damping(&route.dest, sender);
        let judge_ctx = JudgeContext {
            local: ctx.local,
            sender,
            now_ms: ctx.now_ms,
            link: ctx.link,
            policy: ctx.policy,
            held: held.map(|h| (h.route.epoch, h.route.advertised_at_ms)),
            held_down_until_ms: damping.and_then(|d| d.held_down_until_ms),
            suppressed_until_ms: damping.and_then(|d| d.suppressed_until_ms),
        };
        match judge(route, &judge_ctx) {
            Ok(accepted) => {
                still_announced.insert(route.dest.clone());
                match held {
                    Some(h) if h.route.same_as(&accepted) => {
                        imported.unchanged += 1;
                        refresh_due |= h.expires_at_ms.saturating_sub(ctx.now_ms) < ctx.ttl_ms / 2;
                    }
                    Some(_) => learned.push(accepted),
                    None if kept(catalog, ctx, &accepted) => learned.push(accepted),
                    None => imported.unchanged += 1,
                }
            }
            Err(Reject::Stale) => {
                still_announced.insert(route.dest.clone());
                *imported.rejected.entry(Reject::Stale).or_default() += 1;
            }
            Err(reason) => *imported.rejected.entry(reason).or_default() += 1,
        }
    }
    let gone: Vec<String> = catalog
        .candidates()
        .filter(|row| row.route.next_hop == sender && row.withdrawn_at_ms.is_none())
        .map(|row| row.route.dest.clone())
        .filter(|dest| !still_announced.contains(dest))
        .collect();
    if !gone.is_empty() {
        imported.withdrawn = gone.len() as u64;
        imported.events.push(EventKind::RoutesWithdrawn {
            via: sender.to_string(),
            dests: gone,
            damping: ctx.damping,
        });
    }
    imported.accepted = learned.len() as u32;
    if !learned.is_empty() {
        imported.events.push(EventKind::RoutesLearned {
            via: sender.to_string(),
            routes: learned,
            ttl_ms: ctx.ttl_ms,
            max_routes: ctx.max_routes,
        });
    }
    if refresh_due {
        imported.events.push(EventKind::RoutesRefreshed {
            via: sender.to_string(),
            ttl_ms: ctx.ttl_ms,
        });
    }
    imported
}

/// Whether a new route from `ctx.sender` would be among the best
/// `ctx.max_routes` to its destination, as apply ranks them (withdrawn
/// and expired candidates last). A route that would be dropped at once is
/// not proposed: else every table would propose it again.
fn kept(catalog: &Catalog, ctx: &ImportContext<'_>, route: &LearnedRoute) -> bool {
    let max = ctx.max_routes.max(1) as usize;
    let others: Vec<&CandidateRow> = catalog
        .candidates_to(&route.dest)
        .filter(|row| row.route.next_hop != ctx.sender)
        .collect();
    if others.len() < max {
        return true;
    }
    let new = Candidate {
        next_hop: &route.next_hop,
        advertiser: &route.next_hop,
        path: &route.path,
        metrics: &route.metrics,
        expires_at_ms: Some(ctx.now_ms.saturating_add(ctx.ttl_ms)),
        withdrawn: false,
    };
    let mut candidates: Vec<Candidate<'_>> = others.iter().map(|row| row.candidate()).collect();
    candidates.push(new);
    let last = candidates.len() - 1;
    rank(&candidates, ctx.now_ms)
        .into_iter()
        .take(max)
        .any(|i| i == last)
}

/// Every route learned through `via` not yet withdrawn: what to withdraw
/// when the link to `via` is lost.
pub fn routes_via(catalog: &Catalog, via: &str) -> Vec<String> {
    catalog
        .candidates()
        .filter(|row| row.route.next_hop == via && row.withdrawn_at_ms.is_none())
        .map(|row| row.route.dest.clone())
        .collect()
}

/// The routes the leader's timer expires at `now_ms`: live ones past
/// their time, withdrawn ones no longer damped.
pub fn routes_gone(catalog: &Catalog, now_ms: u64) -> Vec<(String, String)> {
    catalog
        .candidates()
        .filter(|row| {
            let damping = catalog.damping(&row.route.dest, &row.route.next_hop);
            row.gone_at(now_ms, damping)
        })
        .map(|row| (row.route.dest.clone(), row.route.next_hop.clone()))
        .collect()
}
