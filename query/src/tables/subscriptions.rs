//! The `subscriptions` table: one row per (subscription, pattern), from the
//! `subscriptions` view, then one per pattern another cluster subscribes
//! to, from the catalog summaries held of other clusters (those not
//! expired).
//!
//! Columns: `subscription_id`, `pattern`, `subscriber`, `node_id`,
//! `durable` (each null for another cluster's), `created_at` (for another
//! cluster's: when its summary was learned), `cluster_id` (here: the
//! cluster of the subscriber's node), `next_hop` (null here; else the
//! neighbour the best usable route there goes through).
//! `subscription_id = '...'` is a point read (another cluster's rows have
//! none, so they are skipped).

use std::collections::HashMap;

use datafusion::error::Result;
use mpreg_storage::federation::live;
use mpreg_storage::views::{NodeRow, RemoteCatalogRow, SubscriptionRow, View};
use mpreg_storage::{Flow, Inspector};

use super::routes::next_hop;
use super::{now_ms, point_or_scan, scan_view, storage};
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::nullable("subscription_id", Kind::Text),
    Column::new("pattern", Kind::Text),
    Column::nullable("subscriber", Kind::Text),
    Column::nullable("node_id", Kind::Text),
    Column::nullable("durable", Kind::Bool),
    Column::new("created_at", Kind::Time),
    Column::nullable("cluster_id", Kind::Text),
    Column::nullable("next_hop", Kind::Text),
];

/// The column whose equality is a point read.
pub(super) const KEY: &str = "subscription_id";

pub(super) fn produce(
    inspector: &Inspector,
    subscription_id: Option<&str>,
    sink: &mut RowSink,
) -> Result<()> {
    let mut stopped = false;
    let mut clusters: HashMap<String, Option<String>> = HashMap::new();
    point_or_scan(
        inspector,
        View::Subscriptions,
        subscription_id.map(SubscriptionRow::key),
        sink,
        |sink, r: SubscriptionRow| {
            let cluster = match clusters.get(&r.node_id) {
                Some(cluster) => cluster.clone(),
                None => {
                    let node = inspector
                        .get::<NodeRow>(View::Nodes, &NodeRow::key(&r.node_id))
                        .map_err(storage)?;
                    let cluster = node.map(|n| n.cluster_id);
                    clusters.insert(r.node_id.clone(), cluster.clone());
                    cluster
                }
            };
            for pattern in &r.patterns {
                let flow = sink.push(&[
                    Value::Text(&r.subscription_id),
                    Value::Text(pattern),
                    Value::Text(&r.subscriber),
                    Value::Text(&r.node_id),
                    Value::Bool(r.durable),
                    Value::Time(r.created_at_ms),
                    cluster.as_deref().map_or(Value::Null, Value::Text),
                    Value::Null,
                ])?;
                if flow == Flow::Stop {
                    stopped = true;
                    return Ok(Flow::Stop);
                }
            }
            Ok(Flow::Continue)
        },
    )?;
    if stopped || subscription_id.is_some() {
        return Ok(());
    }
    let now = now_ms();
    scan_view(
        inspector,
        View::RemoteCatalogs,
        b"",
        sink,
        |sink, r: RemoteCatalogRow| {
            if !live(&r, now) {
                return Ok(Flow::Continue);
            }
            let next_hop = next_hop(inspector, &r.ad.cluster_id, now)?;
            for pattern in &r.ad.summary.topics {
                let flow = sink.push(&[
                    Value::Null,
                    Value::Text(pattern),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Time(r.learned_at_ms),
                    Value::Text(&r.ad.cluster_id),
                    next_hop.as_deref().map_or(Value::Null, Value::Text),
                ])?;
                if flow == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
            Ok(Flow::Continue)
        },
    )
}
