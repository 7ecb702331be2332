//! The leader's side of each link: resolve the configured neighbours,
//! keep one task per link that pings the neighbour, sends it the route
//! table (on an interval and at once when it changes) and withdraws the
//! link's routes when it stops answering; a timer that proposes the
//! expiry of routes and catalog summaries nobody refreshed and of
//! rotated-out keys; and, on
//! every member, the registration of its signing key on the log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mpreg_storage::EventKind;
use mpreg_storage::federation::{
    KeyAd, ROUTE_STATES, RouteShape, explain, export_summaries, ranked, route_state, routes_gone,
    routes_via, summaries_gone, table_shape, usable,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Federation, FederationError, export_table};
use crate::clock::now_ms;
use crate::envelope::{FederationReply, FederationRequest};

/// How often the speaker looks at links, leadership and the route table.
const TICK: Duration = Duration::from_millis(50);
/// How often the expiry timer and the route gauges run.
const SWEEP: Duration = Duration::from_secs(1);
/// Wait before asking an unresolved `--federate` URL again.
const RESOLVE_RETRY: Duration = Duration::from_secs(1);

pub(super) async fn run(federation: Arc<Federation>, shutdown: CancellationToken) {
    let mut tasks: BTreeMap<String, CancellationToken> = BTreeMap::new();
    let mut resolved: BTreeSet<String> = BTreeSet::new();
    let mut last_resolve = Instant::now() - RESOLVE_RETRY;
    let mut last_sweep = Instant::now() - SWEEP;
    let mut last_table = Vec::new();
    let mut seen_index = None;
    let mut changed_at = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = shutdown.cancelled() => break,
        }
        // The table only changes with an applied entry (or a route's
        // expiry, which the sweep catches).
        let index = federation.node.applied().last_applied_index();
        if seen_index != Some(index) || last_sweep.elapsed() >= SWEEP {
            seen_index = Some(index);
            let table = route_fingerprint(&federation);
            if table != last_table {
                last_table = table;
                changed_at = Instant::now();
            }
        }
        let sweep = last_sweep.elapsed() >= SWEEP;
        if sweep {
            last_sweep = Instant::now();
            register_key(&federation).await;
            federation
                .metrics
                .seconds_since_route_change
                .set(changed_at.elapsed().as_secs() as i64);
            route_gauges(&federation);
        }
        if !federation.node.is_leader() {
            for (cluster, task) in std::mem::take(&mut tasks) {
                task.cancel();
                federation.runtime(&cluster, |r| r.state = "standby");
            }
            federation.metrics.links_up.set(0);
            federation.metrics.links_down.set(0);
            continue;
        }
        if last_resolve.elapsed() >= RESOLVE_RETRY {
            last_resolve = Instant::now();
            resolve_configured(&federation, &mut resolved).await;
        }
        let linked: BTreeSet<String> = federation
            .node
            .views()
            .catalog()
            .links()
            .map(|row| row.cluster_id.clone())
            .collect();
        tasks.retain(|cluster, task| {
            let keep = linked.contains(cluster) && !task.is_cancelled();
            if !keep {
                task.cancel();
            }
            keep
        });
        for cluster in linked {
            tasks.entry(cluster).or_insert_with_key(|cluster| {
                let token = shutdown.child_token();
                tokio::spawn(link_task(
                    federation.clone(),
                    cluster.clone(),
                    token.clone(),
                ));
                token
            });
        }
        let (up, down) = {
            let links = federation.links.lock().unwrap_or_else(|e| e.into_inner());
            let count = |state| links.values().filter(|r| r.state == state).count() as i64;
            (count("up"), count("down"))
        };
        federation.metrics.links_up.set(up);
        federation.metrics.links_down.set(down);
        if sweep {
            expire(&federation).await;
            expire_keys(&federation).await;
        }
    }
    for task in tasks.values() {
        task.cancel();
    }
}

/// Links the clusters of the `--federate` URLs not linked yet. A URL of
/// this cluster is refused once, with an error naming it.
async fn resolve_configured(federation: &Federation, resolved: &mut BTreeSet<String>) {
    for url in federation.settings().federate {
        if resolved.contains(&url) {
            continue;
        }
        let linked = {
            let catalog = federation.node.views().catalog();
            catalog.links().any(|row| row.urls.contains(&url))
        };
        if linked {
            resolved.insert(url);
            continue;
        }
        match federation.link(&url).await {
            Ok(cluster) => {
                tracing::info!(%url, %cluster, "linked a neighbour cluster");
                resolved.insert(url);
            }
            Err(FederationError::Invalid(reason)) => {
                tracing::error!(%url, %reason, "--federate URL refused");
                resolved.insert(url);
            }
            Err(e) => tracing::debug!(%url, error = %e, "neighbour not reached yet"),
        }
    }
}

/// What the table a neighbour would be sent depends on: every candidate's
/// destination, next hop, path and whether it is usable.
fn route_fingerprint(federation: &Federation) -> Vec<(String, String, Vec<String>, bool)> {
    let now = now_ms();
    let catalog = federation.node.views().catalog();
    catalog
        .candidates()
        .map(|row| {
            (
                row.route.dest.clone(),
                row.route.next_hop.clone(),
                row.route.path.clone(),
                usable(row, now),
            )
        })
        .collect()
}

fn route_gauges(federation: &Federation) {
    let now = now_ms();
    let mut counts: BTreeMap<&str, i64> = ROUTE_STATES.iter().map(|s| (*s, 0)).collect();
    let mut unreachable = 0;
    {
        let catalog = federation.node.views().catalog();
        for rows in ranked(&catalog, now).values() {
            if !rows.first().is_some_and(|row| usable(row, now)) {
                unreachable += 1;
            }
            let candidates: Vec<_> = rows.iter().map(|row| row.candidate()).collect();
            for e in explain(&candidates, now, &[]) {
                let route = &rows[e.index].route;
                let damping = catalog.damping(&route.dest, &route.next_hop);
                *counts.entry(route_state(&e, damping, now)).or_default() += 1;
            }
        }
    }
    for (state, count) in counts {
        federation
            .metrics
            .routes
            .with_label_values(&[state])
            .set(count);
    }
    federation.metrics.unreachable_destinations.set(unreachable);
}

/// Proposes the expiry of routes past their time, of withdrawn routes no
/// longer damped, and of catalog summaries nobody refreshed.
async fn expire(federation: &Federation) {
    let now = now_ms();
    let (routes, clusters) = {
        let catalog = federation.node.views().catalog();
        (routes_gone(&catalog, now), summaries_gone(&catalog, now))
    };
    let mut events = Vec::new();
    if !routes.is_empty() {
        events.push(EventKind::RoutesExpired { routes });
    }
    if !clusters.is_empty() {
        events.push(EventKind::CatalogsExpired { clusters });
    }
    if let Err(e) = federation.propose(events).await {
        tracing::debug!(error = %e, "expiry not proposed");
    }
}

/// Once the cluster has a link, puts this node's signing key on the log
/// if it is not there, and makes it the primary one while this node
/// leads, so neighbours hold every member's key before that member leads.
/// (A cluster that never federates records no key.)
async fn register_key(federation: &Federation) {
    let own = federation.keys().current().clone();
    let leader = federation.node.is_leader();
    let registered = {
        let catalog = federation.node.views().catalog();
        if catalog.links().next().is_none() {
            return;
        }
        catalog.route_keys(federation.local()).map(|ad| {
            (
                ad.keys.iter().any(|k| k.key_id == own.key_id),
                ad.primary_key_id == own.key_id,
            )
        })
    };
    let needed = match registered {
        None | Some((false, _)) => true,
        Some((true, primary)) => leader && !primary,
    };
    if !needed {
        return;
    }
    let event = EventKind::RouteKeyAdded {
        cluster_id: federation.local().to_string(),
        key: own,
        primary: leader,
    };
    if let Err(e) = federation.propose(vec![event]).await {
        tracing::debug!(error = %e, "signing key not registered yet");
    }
}

/// Proposes the expiry of rotated-out keys whose overlap ended.
async fn expire_keys(federation: &Federation) {
    let now = now_ms();
    let keys: Vec<(String, String)> = {
        let catalog = federation.node.views().catalog();
        catalog
            .all_route_keys()
            .flat_map(|ad| {
                ad.keys
                    .iter()
                    .filter(move |k| !k.active(now))
                    .map(|k| (ad.cluster_id.clone(), k.key_id.clone()))
            })
            .collect()
    };
    if !keys.is_empty()
        && let Err(e) = federation
            .propose(vec![EventKind::RouteKeysExpired { keys }])
            .await
    {
        tracing::debug!(error = %e, "key expiry not proposed");
    }
}

/// What a sent table held that a change would make worth sending again:
/// its routes, keys, and the epoch of each catalog summary.
type Sent = (Vec<RouteShape>, KeyAd, Vec<(String, u64)>);

/// Speaks for this cluster on the link to `cluster` until cancelled.
async fn link_task(federation: Arc<Federation>, cluster: String, cancel: CancellationToken) {
    let settings = federation.settings();
    let ping_every =
        (settings.link_dead / 3).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut urls: Vec<String> = federation
        .node
        .views()
        .catalog()
        .link(&cluster)
        .map(|row| row.urls.clone())
        .unwrap_or_default();
    let mut target = 0usize;
    let mut last_ok = Instant::now();
    let mut last_ping = Instant::now() - ping_every;
    let mut lost = false;
    let mut last_sent: Option<Sent> = None;
    let mut sent_at = Instant::now();
    let mut built_at_index = None;
    let mut built_at = Instant::now();
    federation.runtime(&cluster, |r| r.state = "connecting");
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = cancel.cancelled() => break,
        }
        let settings = federation.settings();
        if urls.is_empty() {
            continue;
        }
        let url = urls[target % urls.len()].clone();
        if last_ping.elapsed() >= ping_every {
            last_ping = Instant::now();
            let started = Instant::now();
            match federation.request(&url, FederationRequest::Ping).await {
                Ok(_) => {
                    let sample = started.elapsed().as_micros() as u64;
                    last_ok = Instant::now();
                    federation.runtime(&cluster, |r| {
                        // Smoothed (EWMA, 1/8 per sample, as TCP's SRTT), so
                        // one slow answer does not move the routes.
                        r.rtt_us = Some(r.rtt_us.map_or(sample, |rtt| (rtt * 7 + sample) / 8));
                        r.last_seen_ms = Some(now_ms());
                        r.state = "up";
                    });
                    if lost {
                        lost = false;
                        last_sent = None;
                        tracing::info!(%cluster, "link back up");
                    }
                }
                Err(e) => {
                    tracing::info!(%cluster, %url, error = %e, "ping failed; trying the next member");
                    target += 1;
                    if let Some(row) = federation.node.views().catalog().link(&cluster) {
                        urls = row.urls.clone();
                    }
                }
            }
        }
        if !lost
            && last_ok.elapsed() > settings.link_dead
            && !heard_within(&federation, &cluster, &urls, settings.link_dead)
        {
            lost = true;
            federation.runtime(&cluster, |r| r.state = "down");
            tracing::warn!(%cluster, after = ?settings.link_dead, "link lost: withdrawing its routes");
            withdraw_all(&federation, &cluster, &settings.damping).await;
        }
        if lost {
            continue;
        }
        // The table changes only with an applied entry, or with a route's
        // expiry: build it when one happened, when sending is due, or
        // every second.
        let due = sent_at.elapsed() >= settings.announce_interval;
        let index = federation.node.applied().last_applied_index();
        if last_sent.is_some()
            && !due
            && built_at_index == Some(index)
            && built_at.elapsed() < SWEEP
        {
            continue;
        }
        built_at_index = Some(index);
        built_at = Instant::now();
        let table = export_table(&federation, &cluster, &settings);
        let now = now_ms();
        // A new key (a rotation, a new member) goes out at once too.
        let keys = federation.key_ad(now);
        // Built before the catalog is read below: it reads the catalog
        // too, and a second read lock taken by a thread that holds one
        // waits forever once apply is queued for the write lock.
        let own = federation.own_summary();
        let catalogs = export_summaries(&federation.node.views().catalog(), &own, &cluster, now);
        let versions = catalogs
            .iter()
            .map(|ad| (ad.cluster_id.clone(), ad.epoch))
            .collect();
        let key = (table_shape(&table), keys.clone(), versions);
        if last_sent.as_ref() == Some(&key) && !due {
            continue;
        }
        let count = table.len() as u64;
        let (own_urls, _) = federation.own_urls();
        let signatures = federation.sign_table(&own_urls, &table, &keys, &catalogs, now);
        let request = FederationRequest::Announce {
            cluster_id: federation.local().to_string(),
            urls: own_urls,
            routes: table,
            keys: Some(keys),
            catalogs,
            signatures,
        };
        match federation.request(&url, request).await {
            Ok(FederationReply::Announced { .. }) => {
                last_sent = Some(key);
                sent_at = Instant::now();
                federation.runtime(&cluster, |r| r.announcements_out += count);
            }
            Ok(FederationReply::NotLeader { leader_url }) => {
                if let Some(leader) = leader_url {
                    match urls.iter().position(|u| *u == leader) {
                        Some(i) => target = i,
                        None => {
                            urls.push(leader);
                            target = urls.len() - 1;
                        }
                    }
                }
            }
            Ok(other) => tracing::warn!(%cluster, ?other, "unexpected answer to an announcement"),
            Err(e) => {
                tracing::debug!(%cluster, %url, error = %e, "announcement not delivered");
                target += 1;
            }
        }
    }
}

/// Whether a member of `cluster` answered this node (any request, on any
/// of its `urls`) or its leader sent a table within `window`: a link that
/// carries traffic is alive even while its pings go to a dead member.
fn heard_within(federation: &Federation, cluster: &str, urls: &[String], window: Duration) -> bool {
    let peers = federation.node.peers();
    let announced = federation.runtime(cluster, |r| r.last_seen_ms);
    let heard = urls
        .iter()
        .filter_map(|url| peers.last_contact(url))
        .chain(announced)
        .max();
    heard.is_some_and(|at| now_ms().saturating_sub(at) <= window.as_millis() as u64)
}

/// Withdraws every route learned through `cluster` (its link is lost).
async fn withdraw_all(
    federation: &Federation,
    cluster: &str,
    damping: &mpreg_storage::federation::Damping,
) {
    let dests = routes_via(&federation.node.views().catalog(), cluster);
    if dests.is_empty() {
        return;
    }
    federation.metrics.withdrawals.inc_by(dests.len() as u64);
    let event = EventKind::RoutesWithdrawn {
        via: cluster.to_string(),
        dests,
        damping: *damping,
    };
    if let Err(e) = federation.propose(vec![event]).await {
        tracing::warn!(%cluster, error = %e, "withdrawal not proposed");
    }
}
