//! What the leader does with a neighbour's announcement: check its
//! signature and epoch, judge its routes against the views
//! ([`import_table`]) and its catalog summaries ([`import_summaries`]), and
//! propose in one log entry the neighbour's new member URLs and keys and
//! what its table changes. A table whose
//! signature does not check out, or older than one already taken, changes
//! nothing.

use std::collections::BTreeMap;

use mpreg_storage::EventKind;
use mpreg_storage::federation::{
    Announcement, CatalogAd, ImportContext, Imported, KeyAd, LinkMetrics, Reject, SignatureContext,
    TableSignature, check_summaries, check_table, import_summaries, import_table, table_bytes,
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
    pub catalogs: Vec<CatalogAd>,
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
        catalogs,
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
    check_summaries(&catalogs).map_err(Refused::Invalid)?;
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
    let mut events = Vec::new();
    let checked = {
        let catalog = federation.node.views().catalog();
        let ctx = SignatureContext {
            sender,
            now_ms: now,
            known: catalog.route_keys(sender),
            require_signatures: settings.require_signatures,
        };
        let bytes = table_bytes(sender, &urls, &routes, keys.as_ref(), &catalogs);
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
    let imported = {
        let catalog = federation.node.views().catalog();
        let known_urls = catalog.link(sender).map(|row| row.urls.clone());
        if let Some(urls) = merge_urls(known_urls.as_deref(), &urls) {
            events.push(EventKind::FederationLinked {
                cluster_id: sender.to_string(),
                urls,
            });
        }
        let ctx = ImportContext {
            local: &local,
            sender,
            now_ms: now,
            link: &link,
            policy: &policy,
            ttl_ms: settings.route_ttl.as_millis() as u64,
            max_routes: settings.max_routes_per_dest,
            damping: settings.damping,
        };
        let learned = import_summaries(&catalog, &local, &catalogs);
        if !learned.is_empty() {
            events.push(EventKind::CatalogsLearned {
                via: sender.to_string(),
                catalogs: learned,
                ttl_ms: settings.route_ttl.as_millis() as u64,
            });
        }
        import_table(&catalog, &ctx, &routes)
    };
    let Imported {
        events: route_events,
        accepted,
        unchanged,
        withdrawn,
        rejected,
    } = imported;
    events.extend(route_events);
    let metrics = &federation.metrics;
    metrics.withdrawals.inc_by(withdrawn);
    metrics
        .announcements
        .with_label_values(&["accepted"])
        .inc_by(u64::from(accepted));
    metrics
        .announcements
        .with_label_values(&["unchanged"])
        .inc_by(unchanged);
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
