//! The deterministic apply function: one event in, row changes out.
//!
//! [`apply`] reads and writes rows only through a [`ViewTxn`] and takes time
//! only from the event, so the same events give the same rows (and the same
//! digest) on the live node, in replay and after a snapshot install. It
//! applies node, function, subscription and route events itself and hands
//! queue, cache and timer events to their modules.

use super::rows::{CredentialRow, FunctionRow, NodeRow, NodeStatus, RouteRow, SubscriptionRow};
use super::txn::{RowStore, ViewTxn, check_ids, rejected};
use super::{View, cache, federation_apply, queue_apply, timers};
use crate::credential::Permissions;
use crate::error::Result;
use crate::event::{Event, EventKind, Outcome};

/// Applies one event to the views. `Err` means storage failed (the entry is
/// not applied); a refused event is `Ok(Outcome::Rejected)` and changes nothing.
pub fn apply<S: RowStore>(txn: &mut ViewTxn<'_, S>, event: &Event) -> Result<Outcome> {
    let now = event.time_ms;
    match &event.kind {
        EventKind::NodeJoined {
            node_id,
            cluster_id,
            addresses,
            resources,
        } => {
            if let Some(refused) = check_ids(&[("node_id", node_id), ("cluster_id", cluster_id)]) {
                return Ok(refused);
            }
            let row = NodeRow {
                node_id: node_id.clone(),
                cluster_id: cluster_id.clone(),
                addresses: addresses.clone(),
                resources: resources.clone(),
                joined_at_ms: now,
                status: NodeStatus::Up,
                left_at_ms: None,
            };
            txn.put(View::Nodes, NodeRow::key(node_id), &row)?;
        }
        EventKind::NodeLeft { node_id } => {
            let key = NodeRow::key(node_id);
            let Some(mut row) = txn.get::<NodeRow>(View::Nodes, &key)? else {
                return Ok(rejected(format!("unknown node {node_id}")));
            };
            row.status = NodeStatus::Left;
            row.left_at_ms = Some(now);
            txn.put(View::Nodes, key, &row)?;
        }
        EventKind::FunctionRegistered {
            name,
            function_id,
            version,
            resources,
            provider,
            node_id,
            cluster_id,
        } => {
            if let Some(refused) = check_ids(&[
                ("name", name),
                ("function_id", function_id),
                ("version", version),
                ("provider", provider),
            ]) {
                return Ok(refused);
            }
            let existing: Vec<FunctionRow> =
                txn.scan(View::Functions, &FunctionRow::name_prefix(name))?;
            if let Some(other) = existing.iter().find(|f| &f.function_id != function_id) {
                return Ok(rejected(format!(
                    "function {name} is registered with function_id {}, not {function_id}",
                    other.function_id
                )));
            }
            let row = FunctionRow {
                name: name.clone(),
                function_id: function_id.clone(),
                version: version.clone(),
                resources: resources.clone(),
                provider: provider.clone(),
                node_id: node_id.clone(),
                cluster_id: cluster_id.clone(),
                registered_at_ms: now,
            };
            txn.put(
                View::Functions,
                FunctionRow::key(name, version, provider),
                &row,
            )?;
        }
        EventKind::FunctionWithdrawn {
            name,
            version,
            provider,
        } => {
            if !txn.delete(View::Functions, FunctionRow::key(name, version, provider))? {
                return Ok(rejected(format!(
                    "function {name} {version} is not registered by {provider}"
                )));
            }
        }
        EventKind::SubscriptionAdded {
            subscription_id,
            patterns,
            subscriber,
            node_id,
            durable,
        } => {
            if let Some(refused) = check_ids(&[("subscription_id", subscription_id)]) {
                return Ok(refused);
            }
            let key = SubscriptionRow::key(subscription_id);
            if txn
                .get::<SubscriptionRow>(View::Subscriptions, &key)?
                .is_some()
            {
                return Ok(rejected(format!(
                    "subscription {subscription_id} already exists"
                )));
            }
            let row = SubscriptionRow {
                subscription_id: subscription_id.clone(),
                patterns: patterns.clone(),
                subscriber: subscriber.clone(),
                node_id: node_id.clone(),
                durable: *durable,
                created_at_ms: now,
            };
            txn.put(View::Subscriptions, key, &row)?;
        }
        EventKind::SubscriptionRemoved { subscription_id } => {
            if !txn.delete(View::Subscriptions, SubscriptionRow::key(subscription_id))? {
                return Ok(rejected(format!("unknown subscription {subscription_id}")));
            }
        }
        EventKind::RouteAnnounced {
            dest,
            next_hop,
            path,
            cost,
            advertiser,
            expires_at_ms,
        } => {
            if let Some(refused) = check_ids(&[("dest", dest), ("advertiser", advertiser)]) {
                return Ok(refused);
            }
            let row = RouteRow {
                dest: dest.clone(),
                next_hop: next_hop.clone(),
                path: path.clone(),
                cost: *cost,
                advertiser: advertiser.clone(),
                learned_at_ms: now,
                expires_at_ms: *expires_at_ms,
            };
            txn.put(View::Routes, RouteRow::key(dest, advertiser), &row)?;
        }
        EventKind::RouteWithdrawn { dest, advertiser } => {
            if !txn.delete(View::Routes, RouteRow::key(dest, advertiser))? {
                return Ok(rejected(format!("no route to {dest} from {advertiser}")));
            }
        }
        EventKind::FederationLinked { cluster_id, urls } => {
            return federation_apply::link(txn, now, cluster_id, urls);
        }
        EventKind::FederationUnlinked { cluster_id } => {
            return federation_apply::unlink(txn, cluster_id);
        }
        EventKind::RoutesLearned {
            via,
            routes,
            ttl_ms,
            max_routes,
        } => return federation_apply::learn(txn, now, via, routes, *ttl_ms, *max_routes),
        EventKind::RoutesRefreshed { via, ttl_ms } => {
            return federation_apply::refresh(txn, now, via, *ttl_ms);
        }
        EventKind::RoutesWithdrawn {
            via,
            dests,
            damping,
        } => return federation_apply::withdraw(txn, now, via, dests, damping),
        EventKind::RoutesExpired { routes } => {
            return federation_apply::expire(txn, now, routes);
        }
        EventKind::RouteKeyAdded {
            cluster_id,
            key,
            primary,
        } => return federation_apply::add_key(txn, now, cluster_id, key, *primary),
        EventKind::RouteKeyRetired {
            cluster_id,
            key_id,
            expires_at_ms,
        } => return federation_apply::retire_key(txn, cluster_id, key_id, *expires_at_ms),
        EventKind::RouteKeysLearned { keys } => return federation_apply::learn_keys(txn, keys),
        EventKind::RouteKeysExpired { keys } => {
            return federation_apply::expire_keys(txn, now, keys);
        }
        EventKind::CatalogsLearned {
            via,
            catalogs,
            ttl_ms,
        } => return federation_apply::learn_catalogs(txn, now, via, catalogs, *ttl_ms),
        EventKind::CatalogsExpired { clusters } => {
            return federation_apply::expire_catalogs(txn, now, clusters);
        }
        EventKind::CredentialSet {
            name,
            token_sha256,
            permissions,
        } => return set_credential(txn, now, name, token_sha256, permissions),
        EventKind::CredentialRevoked { name } => {
            let key = CredentialRow::key(name);
            let Some(mut row) = txn.get::<CredentialRow>(View::Credentials, &key)? else {
                return Ok(rejected(format!("unknown credential {name}")));
            };
            if !row.live() {
                return Ok(rejected(format!("credential {name} is already revoked")));
            }
            row.revoked_at_ms = Some(now);
            txn.put(View::Credentials, key, &row)?;
        }
        EventKind::QueueDeclared { name, settings } => {
            return queue_apply::declare(txn, now, name, settings);
        }
        EventKind::QueueDeleted { name } => return queue_apply::delete(txn, name),
        EventKind::QueuePurged { name } => return queue_apply::purge(txn, name),
        EventKind::MessagesSent { queue, messages } => {
            return queue_apply::send(txn, now, queue, messages);
        }
        EventKind::MessagesLeased {
            queue,
            consumer,
            max,
            lease_ms,
            topic_pattern,
        } => {
            let lease = queue_apply::Lease {
                queue,
                consumer,
                max: *max,
                lease_ms: *lease_ms,
                topic_pattern: topic_pattern.as_deref(),
            };
            return queue_apply::lease(txn, now, lease);
        }
        EventKind::MessageAcked {
            queue,
            message_id,
            consumer,
        } => return queue_apply::ack(txn, queue, message_id, consumer),
        EventKind::MessageNacked {
            queue,
            message_id,
            consumer,
            delay_ms,
        } => return queue_apply::nack(txn, now, queue, message_id, consumer, *delay_ms),
        EventKind::LeasesReleased {
            queue,
            consumer,
            message_ids,
        } => return queue_apply::release_leases(txn, now, queue, consumer, message_ids),
        EventKind::TimersFired { max } => return timers::fire(txn, now, *max),
        EventKind::CachePut {
            key,
            value,
            tags,
            metadata,
            ttl_ms,
        } => return cache::put(txn, now, key, value, (tags, metadata), *ttl_ms),
        EventKind::CacheDeleted { key } => return cache::delete(txn, now, key),
        EventKind::CacheInvalidated { namespace, pattern } => {
            return cache::invalidate(txn, now, namespace, pattern.as_deref());
        }
        EventKind::CacheAtomic { key, operation } => {
            return cache::atomic(txn, now, key, operation);
        }
        EventKind::QueueTrimmed {
            name,
            from_seq,
            below_seq,
            limit,
        } => return queue_apply::trim(txn, name, (*from_seq, *below_seq), *limit),
        EventKind::QueueDeleteStep {
            name,
            from_seq,
            from_id,
            limit,
        } => return queue_apply::delete_step(txn, name, (*from_seq, from_id), *limit),
        EventKind::CacheInvalidateStep {
            namespace,
            pattern,
            from,
            limit,
        } => {
            let target = (namespace.as_str(), pattern.as_deref());
            return cache::invalidate_step(txn, now, target, from, *limit);
        }
    }
    Ok(Outcome::Applied)
}

/// `CredentialSet`: refuses a token that a revoked credential of the same
/// name had (revocation must not be undone by re-reading an old config) and
/// a token another live credential has (one token, one name).
fn set_credential<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    name: &str,
    token_sha256: &str,
    permissions: &Permissions,
) -> Result<Outcome> {
    if let Some(refused) = check_ids(&[("name", name), ("token_sha256", token_sha256)]) {
        return Ok(refused);
    }
    let key = CredentialRow::key(name);
    if let Some(held) = txn.get::<CredentialRow>(View::Credentials, &key)?
        && !held.live()
        && held.token_sha256 == token_sha256
    {
        return Ok(rejected(format!(
            "credential {name} was revoked with this token; set it with another token"
        )));
    }
    let others: Vec<CredentialRow> = txn.scan(View::Credentials, &[])?;
    if let Some(other) = others
        .iter()
        .find(|row| row.name != name && row.live() && row.token_sha256 == token_sha256)
    {
        return Ok(rejected(format!(
            "credential {} already has this token",
            other.name
        )));
    }
    let row = CredentialRow {
        name: name.to_string(),
        token_sha256: token_sha256.to_string(),
        permissions: permissions.clone(),
        set_at_ms: now,
        revoked_at_ms: None,
    };
    txn.put(View::Credentials, key, &row)?;
    Ok(Outcome::Applied)
}
