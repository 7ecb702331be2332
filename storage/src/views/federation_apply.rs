//! Apply of the federation events: links to neighbour clusters, routes
//! learned, refreshed, withdrawn and expired, and their damping state.
//! The leader judged each route before proposing it; apply only stores
//! what it decided, with the event's time, and keeps the best
//! candidates per destination. Route signing keys and the catalog
//! summaries of other clusters are stored per cluster.

use super::View;
use super::federation_rows::{CandidateRow, DampingRow, LinkRow, RemoteCatalogRow, keys_key};
use super::txn::{RowStore, ViewTxn, check_ids, rejected};
use crate::error::Result;
use crate::event::Outcome;
use crate::federation::{CatalogAd, Damping, KeyAd, LearnedRoute, MAX_KEYS, RouteKey, newer, rank};

pub(super) fn link<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    cluster_id: &str,
    urls: &[String],
) -> Result<Outcome> {
    if let Some(refused) = check_ids(&[("cluster_id", cluster_id)]) {
        return Ok(refused);
    }
    let key = LinkRow::key(cluster_id);
    let linked_at_ms = txn
        .get::<LinkRow>(View::FederationLinks, &key)?
        .map_or(now, |row| row.linked_at_ms);
    let row = LinkRow {
        cluster_id: cluster_id.to_string(),
        urls: urls.to_vec(),
        linked_at_ms,
    };
    txn.put(View::FederationLinks, key, &row)?;
    Ok(Outcome::Applied)
}

pub(super) fn unlink<S: RowStore>(txn: &mut ViewTxn<'_, S>, cluster_id: &str) -> Result<Outcome> {
    if !txn.delete(View::FederationLinks, LinkRow::key(cluster_id))? {
        return Ok(rejected(format!("no link to cluster {cluster_id}")));
    }
    for row in txn.scan::<CandidateRow>(View::RouteCandidates, &[])? {
        if row.route.next_hop == cluster_id {
            txn.delete(
                View::RouteCandidates,
                CandidateRow::key(&row.route.dest, cluster_id),
            )?;
        }
    }
    for row in txn.scan::<DampingRow>(View::RouteDamping, &[])? {
        if row.advertiser == cluster_id {
            txn.delete(View::RouteDamping, DampingRow::key(&row.dest, cluster_id))?;
        }
    }
    txn.delete(View::RouteKeys, keys_key(cluster_id))?;
    Ok(Outcome::Applied)
}

pub(super) fn learn<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    via: &str,
    routes: &[LearnedRoute],
    ttl_ms: u64,
    max_routes: u32,
) -> Result<Outcome> {
    if let Some(refused) = check_ids(&[("via", via)]) {
        return Ok(refused);
    }
    if let Some(wrong) = routes.iter().find(|r| r.next_hop != via) {
        return Ok(rejected(format!(
            "a route to {} learned from {via} names next hop {}",
            wrong.dest, wrong.next_hop
        )));
    }
    if let Some(refused) = routes.iter().find_map(|r| check_ids(&[("dest", &r.dest)])) {
        return Ok(refused);
    }
    for route in routes {
        let key = CandidateRow::key(&route.dest, via);
        let held = txn.get::<CandidateRow>(View::RouteCandidates, &key)?;
        let learned_at_ms = match &held {
            Some(h) if h.withdrawn_at_ms.is_none() => {
                if !newer(
                    (route.epoch, route.advertised_at_ms),
                    (h.route.epoch, h.route.advertised_at_ms),
                ) {
                    continue;
                }
                if h.route.path == route.path {
                    h.learned_at_ms
                } else {
                    now
                }
            }
            _ => now,
        };
        let row = CandidateRow {
            route: route.clone(),
            learned_at_ms,
            expires_at_ms: now.saturating_add(ttl_ms),
            withdrawn_at_ms: None,
        };
        txn.put(View::RouteCandidates, key, &row)?;
        keep_best(txn, now, &route.dest, max_routes.max(1) as usize)?;
    }
    Ok(Outcome::Applied)
}

/// Drops the worst candidates to `dest` beyond `max`.
fn keep_best<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    dest: &str,
    max: usize,
) -> Result<()> {
    let rows: Vec<CandidateRow> =
        txn.scan(View::RouteCandidates, &CandidateRow::dest_prefix(dest))?;
    if rows.len() <= max {
        return Ok(());
    }
    let candidates: Vec<_> = rows.iter().map(CandidateRow::candidate).collect();
    let order = rank(&candidates, now);
    for &index in order.iter().skip(max) {
        txn.delete(
            View::RouteCandidates,
            CandidateRow::key(dest, &rows[index].route.next_hop),
        )?;
    }
    Ok(())
}

pub(super) fn refresh<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    via: &str,
    ttl_ms: u64,
) -> Result<Outcome> {
    for mut row in txn.scan::<CandidateRow>(View::RouteCandidates, &[])? {
        if row.route.next_hop == via && row.withdrawn_at_ms.is_none() {
            row.expires_at_ms = now.saturating_add(ttl_ms);
            let key = CandidateRow::key(&row.route.dest, via);
            txn.put(View::RouteCandidates, key, &row)?;
        }
    }
    Ok(Outcome::Applied)
}

pub(super) fn withdraw<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    via: &str,
    dests: &[String],
    damping: &Damping,
) -> Result<Outcome> {
    for dest in dests {
        let key = CandidateRow::key(dest, via);
        let Some(mut row) = txn.get::<CandidateRow>(View::RouteCandidates, &key)? else {
            continue;
        };
        if row.withdrawn_at_ms.is_some() {
            continue;
        }
        let damped = damp(txn, now, dest, via, damping)?;
        if damped {
            row.withdrawn_at_ms = Some(now);
            txn.put(View::RouteCandidates, key, &row)?;
        } else {
            txn.delete(View::RouteCandidates, key)?;
        }
    }
    Ok(Outcome::Applied)
}

/// Starts hold-down and counts a flap for (`dest`, `advertiser`); whether
/// the route is now damped.
fn damp<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    dest: &str,
    advertiser: &str,
    damping: &Damping,
) -> Result<bool> {
    let counting = damping.flap_threshold > 0 && damping.flap_window_ms > 0;
    if damping.hold_down_ms == 0 && !counting {
        return Ok(false);
    }
    let key = DampingRow::key(dest, advertiser);
    let mut row = txn
        .get::<DampingRow>(View::RouteDamping, &key)?
        .unwrap_or_else(|| DampingRow {
            dest: dest.to_string(),
            advertiser: advertiser.to_string(),
            window_start_ms: now,
            ..DampingRow::default()
        });
    if damping.hold_down_ms > 0 {
        row.held_down_until_ms = Some(now.saturating_add(damping.hold_down_ms));
    }
    if counting {
        if now.saturating_sub(row.window_start_ms) > damping.flap_window_ms {
            row.flaps = 0;
            row.window_start_ms = now;
        }
        row.flaps = row.flaps.saturating_add(1);
        if row.flaps >= damping.flap_threshold {
            row.suppressed_until_ms = Some(now.saturating_add(damping.flap_window_ms));
        }
    }
    let damped = row.active(now);
    txn.put(View::RouteDamping, key, &row)?;
    Ok(damped)
}

pub(super) fn expire<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    routes: &[(String, String)],
) -> Result<Outcome> {
    for (dest, next_hop) in routes {
        let key = CandidateRow::key(dest, next_hop);
        let Some(row) = txn.get::<CandidateRow>(View::RouteCandidates, &key)? else {
            continue;
        };
        let damping = match row.withdrawn_at_ms {
            None => None,
            Some(_) => {
                txn.get::<DampingRow>(View::RouteDamping, &DampingRow::key(dest, next_hop))?
            }
        };
        if row.gone_at(now, damping.as_ref()) {
            txn.delete(View::RouteCandidates, key)?;
        }
    }
    Ok(Outcome::Applied)
}

pub(super) fn add_key<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    cluster_id: &str,
    key: &RouteKey,
    primary: bool,
) -> Result<Outcome> {
    if let Some(refused) = check_ids(&[("cluster_id", cluster_id), ("key_id", &key.key_id)]) {
        return Ok(refused);
    }
    let row_key = keys_key(cluster_id);
    let mut row = txn
        .get::<KeyAd>(View::RouteKeys, &row_key)?
        .unwrap_or_else(|| KeyAd {
            cluster_id: cluster_id.to_string(),
            keys: Vec::new(),
            primary_key_id: key.key_id.clone(),
        });
    if !row.keys.iter().any(|k| k.key_id == key.key_id) {
        if row.keys.len() >= MAX_KEYS {
            return Ok(rejected(format!(
                "cluster {cluster_id} already has {MAX_KEYS} route keys"
            )));
        }
        row.keys.push(RouteKey {
            added_at_ms: now,
            expires_at_ms: None,
            ..key.clone()
        });
    }
    if primary {
        row.primary_key_id = key.key_id.clone();
    }
    txn.put(View::RouteKeys, row_key, &row.normalized())?;
    Ok(Outcome::Applied)
}

pub(super) fn retire_key<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    cluster_id: &str,
    key_id: &str,
    expires_at_ms: u64,
) -> Result<Outcome> {
    let row_key = keys_key(cluster_id);
    let Some(mut row) = txn.get::<KeyAd>(View::RouteKeys, &row_key)? else {
        return Ok(rejected(format!("no route keys of cluster {cluster_id}")));
    };
    let Some(key) = row.keys.iter_mut().find(|k| k.key_id == key_id) else {
        return Ok(rejected(format!(
            "no route key {key_id} of cluster {cluster_id}"
        )));
    };
    key.expires_at_ms = Some(
        key.expires_at_ms
            .map_or(expires_at_ms, |t| t.min(expires_at_ms)),
    );
    txn.put(View::RouteKeys, row_key, &row)?;
    Ok(Outcome::Applied)
}

pub(super) fn learn_keys<S: RowStore>(txn: &mut ViewTxn<'_, S>, keys: &KeyAd) -> Result<Outcome> {
    if let Some(refused) = check_ids(&[("cluster_id", &keys.cluster_id)]) {
        return Ok(refused);
    }
    if keys.keys.len() > MAX_KEYS {
        return Ok(rejected(format!(
            "{} route keys of cluster {}, above {MAX_KEYS}",
            keys.keys.len(),
            keys.cluster_id
        )));
    }
    let row = keys.clone().normalized();
    txn.put(View::RouteKeys, keys_key(&keys.cluster_id), &row)?;
    Ok(Outcome::Applied)
}

pub(super) fn expire_keys<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    keys: &[(String, String)],
) -> Result<Outcome> {
    for (cluster_id, key_id) in keys {
        let row_key = keys_key(cluster_id);
        let Some(mut row) = txn.get::<KeyAd>(View::RouteKeys, &row_key)? else {
            continue;
        };
        let before = row.keys.len();
        row.keys.retain(|k| k.key_id != *key_id || k.active(now));
        if row.keys.len() == before {
            continue;
        }
        if row.keys.is_empty() {
            txn.delete(View::RouteKeys, row_key)?;
        } else {
            txn.put(View::RouteKeys, row_key, &row)?;
        }
    }
    Ok(Outcome::Applied)
}

pub(super) fn learn_catalogs<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    via: &str,
    catalogs: &[CatalogAd],
    ttl_ms: u64,
) -> Result<Outcome> {
    if let Some(refused) = check_ids(&[("via", via)]) {
        return Ok(refused);
    }
    if let Some(refused) = catalogs
        .iter()
        .find_map(|ad| check_ids(&[("cluster_id", &ad.cluster_id)]))
    {
        return Ok(refused);
    }
    for ad in catalogs {
        let key = RemoteCatalogRow::key(&ad.cluster_id);
        if let Some(held) = txn.get::<RemoteCatalogRow>(View::RemoteCatalogs, &key)?
            && held.ad.epoch >= ad.epoch
        {
            continue;
        }
        let row = RemoteCatalogRow {
            ad: ad.clone(),
            via: via.to_string(),
            learned_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
        };
        txn.put(View::RemoteCatalogs, key, &row)?;
    }
    Ok(Outcome::Applied)
}

pub(super) fn expire_catalogs<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    clusters: &[String],
) -> Result<Outcome> {
    for cluster in clusters {
        let key = RemoteCatalogRow::key(cluster);
        if let Some(held) = txn.get::<RemoteCatalogRow>(View::RemoteCatalogs, &key)?
            && held.expires_at_ms <= now
        {
            txn.delete(View::RemoteCatalogs, key)?;
        }
    }
    Ok(Outcome::Applied)
}
