//! The `route_keys` table: the public keys route tables are signed with,
//! one row per key, from the `route_keys` view: this cluster's keys (one
//! per member, rotated ones until their overlap ends) and those each
//! neighbour announced.
//!
//! Columns: `cluster`, `key_id`, `public_key` (hex), `added_at`,
//! `expires_at` (NULL until the key is rotated out), `primary` (the key
//! the cluster signs with now), `active` (whether it still verifies).
//! `cluster = '...'` is a point read.

use datafusion::error::Result;
use mpreg_storage::federation::KeyAd;
use mpreg_storage::views::{View, keys_key};
use mpreg_storage::{Flow, Inspector};

use super::{now_ms, point_or_scan};
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("cluster", Kind::Text),
    Column::new("key_id", Kind::Text),
    Column::new("public_key", Kind::Text),
    Column::new("added_at", Kind::Time),
    Column::nullable("expires_at", Kind::Time),
    Column::new("primary", Kind::Bool),
    Column::new("active", Kind::Bool),
];

/// The column whose equality is a point read.
pub(super) const KEY: &str = "cluster";

pub(super) fn produce(
    inspector: &Inspector,
    cluster: Option<&str>,
    sink: &mut RowSink,
) -> Result<()> {
    let now = now_ms();
    let key = cluster.map(keys_key);
    point_or_scan(inspector, View::RouteKeys, key, sink, |sink, ad: KeyAd| {
        for key in &ad.keys {
            let flow = sink.push(&[
                Value::Text(&ad.cluster_id),
                Value::Text(&key.key_id),
                Value::Text(&key.public_key),
                Value::Time(key.added_at_ms),
                key.expires_at_ms.map_or(Value::Null, Value::Time),
                Value::Bool(key.key_id == ad.primary_key_id),
                Value::Bool(key.active(now)),
            ])?;
            if let Flow::Stop = flow {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    })
}
