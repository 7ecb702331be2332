//! What the leader does with a neighbour's announcement: judge every
//! route against the views, then propose, in one log entry, the
//! withdrawal of what the neighbour no longer announces, the routes that
//! are new or changed, and a refresh of the rest when it is due.
//! Re-announcements that change nothing add nothing to the log until
//! half the route TTL has passed. A table whose signature does not check
//! out, or older than one already taken, changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use mpreg_storage::EventKind;
use mpreg_storage::federation::{
    Announcement, JudgeContext, KeyAd, LinkMetrics, Reject, SignatureContext, TableSignature,
    check_table, judge, table_bytes,
};

use super::{Federation, MAX_LINK_URLS};
use crate::clock::now_ms;
use crate::config::is_node_url;
use crate::envelope::{FederationReply, Refused};

/// Most routes one announcement may carry.
pub const MAX_ANNOUNCED_ROUTES: usize = 100_000;

/// A neighbour's table, as it arrived.
pub(super) struct Table {
    pub sender: String,
    pub urls: Vec<String>,
    pub routes: Vec<Announcement>,
    pub keys: Option<KeyAd>,
    pub signatures: Vec<TableSignature>,
}

pub(super) async fn announce(
    federation: &Federation,
    table: Table,
) -> Result<FederationReply, Refused> {
    let Table {
        sender,
        urls,
        routes,
        keys,
        signatures,
    } = table;
    let sender = sender.as_str();
    let local = federation.local().to_string();
    if sender == local {
        return Err(Refused::Invalid(format!(
            "an announcement from cluster {sender} reached a member of {local}: a cluster does not link to itself"
        )));
    }
    if routes.len() > MAX_ANNOUNCED_ROUTES {
        return Err(Refused::Invalid(format!(
            "{} routes in one announcement, above the limit of {MAX_ANNOUNCED_ROUTES}",
            routes.len()
        )));
    }
    if !federation.node.is_leader() {
        let (_, leader_url) = federation.own_urls();
        return Ok(FederationReply::NotLeader { leader_url });
    }
    if federation.recently_unlinked(sender) {
        return Err(Refused::Invalid(format!(
            "cluster {local} removed its link to {sender}"
        )));
    }
    let settings = federation.settings();
    let now = now_ms();
    let ttl_ms = settings.route_ttl.as_millis() as u64;
    let mut events = Vec::new();
    let checked = {
        let catalog = federation.node.views().catalog();
        let ctx = SignatureContext {
            sender,
            now_ms: now,
            known: catalog.route_keys(sender),
            require_signatures: settings.require_signatures,
        };
        let bytes = table_bytes(sender, &urls, &routes, keys.as_ref());
        check_table(&ctx, keys.as_ref(), &signatures, &bytes)
    };
    match checked {
        Ok(checked) => {
            if checked.foreign_key_ad {
                count_rejections(
                    federation,
                    sender,
                    &BTreeMap::from([(Reject::ForeignKey, 1)]),
                );
            }
            if let Some(keys) = checked.learned {
                events.push(EventKind::RouteKeysLearned { keys });
            }
        }
        Err(reason) => return Ok(refuse_table(federation, sender, reason, routes.len())),
    }
    if let Some(epoch) = routes.iter().map(|r| r.epoch).max() {
        let replayed = federation.runtime(sender, |r| {
            let replayed = epoch <= r.table_epoch;
            r.table_epoch = r.table_epoch.max(epoch);
            replayed
        });
        if replayed {
            return Ok(refuse_table(
                federation,
                sender,
                Reject::Stale,
                routes.len(),
            ));
        }
    }
    let runtime = federation.runtime(sender, |r| {
        r.last_seen_ms = Some(now);
        r.announcements_in += routes.len() as u64;
        r.rtt_us
    });
    let link = LinkMetrics {
        latency_us: runtime.unwrap_or(0) / 2,
        ..LinkMetrics::default()
    };
    let policy = settings.import.lookup(sender);

    let mut rejected: BTreeMap<Reject, u32> = BTreeMap::new();
    let mut learned = Vec::new();
    let mut still_announced = BTreeSet::new();
    let mut refresh_due = false;
    let mut unchanged = 0u64;
    {
        let catalog = federation.node.views().catalog();
        let known_urls = catalog.link(sender).map(|row| row.urls.clone());
        let merged = merge_urls(known_urls.as_deref(), &urls);
        if let Some(urls) = merged {
            events.push(EventKind::FederationLinked {
                cluster_id: sender.to_string(),
                urls,
            });
        }
        for route in &routes {
            let held = catalog
                .candidate(&route.dest, sender)
                .filter(|row| row.withdrawn_at_ms.is_none());
            let damping = catalog.damping(&route.dest, sender);
            let ctx = JudgeContext {
                local: &local,
                sender,
                now_ms: now,
                link: &link,
                policy: &policy,
                held: held.map(|h| (h.route.epoch, h.route.advertised_at_ms)),
                held_down_until_ms: damping.and_then(|d| d.held_down_until_ms),
                suppressed_until_ms: damping.and_then(|d| d.suppressed_until_ms),
            };
            match judge(route, &ctx) {
                Ok(accepted) => {
                    still_announced.insert(route.dest.clone());
                    match held {
                        Some(h) if h.route.same_as(&accepted) => {
                            unchanged += 1;
                            refresh_due |= h.expires_at_ms.saturating_sub(now) < ttl_ms / 2;
                        }
                        _ => learned.push(accepted),
                    }
                }
                Err(Reject::Stale) => {
                    still_announced.insert(route.dest.clone());
                    *rejected.entry(Reject::Stale).or_default() += 1;
                }
                Err(reason) => *rejected.entry(reason).or_default() += 1,
            }
        }
        let gone: Vec<String> = catalog
            .candidates()
            .filter(|row| row.route.next_hop == sender && row.withdrawn_at_ms.is_none())
            .map(|row| row.route.dest.clone())
            .filter(|dest| !still_announced.contains(dest))
            .collect();
        if !gone.is_empty() {
            federation.metrics.withdrawals.inc_by(gone.len() as u64);
            events.push(EventKind::RoutesWithdrawn {
                via: sender.to_string(),
                dests: gone,
                damping: settings.damping,
            });
        }
    }
    let accepted = learned.len() as u32;
    let metrics = &federation.metrics;
    metrics
        .announcements
        .with_label_values(&["accepted"])
        .inc_by(u64::from(accepted));
    metrics
        .announcements
        .with_label_values(&["unchanged"])
        .inc_by(unchanged);
    if !learned.is_empty() {
        events.push(EventKind::RoutesLearned {
            via: sender.to_string(),
            routes: learned,
            ttl_ms,
            max_routes: settings.max_routes_per_dest,
        });
    }
    if refresh_due {
        events.push(EventKind::RoutesRefreshed {
            via: sender.to_string(),
            ttl_ms,
        });
    }
    count_rejections(federation, sender, &rejected);
    federation.propose(events).await?;
    Ok(FederationReply::Announced {
        accepted,
        rejected: rejected
            .into_iter()
            .map(|(reason, count)| (reason.as_str().to_string(), count))
            .collect(),
    })
}

/// Counts refused announcements from `sender` by reason, in the link's
/// counters and the metrics.
fn count_rejections(federation: &Federation, sender: &str, rejected: &BTreeMap<Reject, u32>) {
    federation.runtime(sender, |r| {
        for (reason, count) in rejected {
            *r.rejections.entry(reason.as_str()).or_default() += u64::from(*count);
        }
    });
    let metrics = &federation.metrics;
    for (reason, count) in rejected {
        metrics
            .announcements
            .with_label_values(&["rejected"])
            .inc_by(u64::from(*count));
        metrics
            .rejections
            .with_label_values(&[reason.as_str()])
            .inc_by(u64::from(*count));
    }
}

/// The answer to a table refused as a whole (bad signature, replayed):
/// every route in it counts as refused for `reason`, nothing is proposed,
/// and nothing held is withdrawn.
fn refuse_table(
    federation: &Federation,
    sender: &str,
    reason: Reject,
    routes: usize,
) -> FederationReply {
    let count = u32::try_from(routes.max(1)).unwrap_or(u32::MAX);
    tracing::warn!(%sender, reason = reason.as_str(), routes, "route table refused");
    count_rejections(federation, sender, &BTreeMap::from([(reason, count)]));
    FederationReply::Announced {
        accepted: 0,
        rejected: vec![(reason.as_str().to_string(), count)],
    }
}

/// The URLs to record for a neighbour when its announcement names members
/// the link row does not hold (or there is no link yet: a link is
/// symmetric); `None` when nothing is new.
fn merge_urls(known: Option<&[String]>, announced: &[String]) -> Option<Vec<String>> {
    let valid = |u: &&String| u.len() <= 256 && is_node_url(u);
    match known {
        None => Some(
            announced
                .iter()
                .filter(valid)
                .take(MAX_LINK_URLS)
                .cloned()
                .collect(),
        ),
        Some(known) => {
            let new: Vec<&String> = announced
                .iter()
                .filter(valid)
                .filter(|u| !known.contains(u))
                .collect();
            if new.is_empty() || known.len() >= MAX_LINK_URLS {
                return None;
            }
            let mut urls = known.to_vec();
            urls.extend(new.into_iter().cloned());
            urls.truncate(MAX_LINK_URLS);
            Some(urls)
        }
    }
}
