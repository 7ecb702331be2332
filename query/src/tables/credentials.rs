//! The `credentials` table: one row per client credential, from the
//! `credentials` view, revoked ones included. Tokens never appear, not even
//! hashed.
//!
//! Columns: `name`; the permission patterns `call`, `register`, `publish`,
//! `subscribe`, `queues`, `cache` (each a comma-separated list, empty when
//! nothing is allowed); `sql`, `admin`; `set_at`; `revoked_at` (NULL while
//! it works); `active`. `name = '...'` is a point read.

use datafusion::error::Result;
use mpreg_storage::views::{CredentialRow, View};
use mpreg_storage::{Flow, Inspector};

use super::point_or_scan;
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("name", Kind::Text),
    Column::new("call", Kind::Text),
    Column::new("register", Kind::Text),
    Column::new("publish", Kind::Text),
    Column::new("subscribe", Kind::Text),
    Column::new("queues", Kind::Text),
    Column::new("cache", Kind::Text),
    Column::new("sql", Kind::Bool),
    Column::new("admin", Kind::Bool),
    Column::new("set_at", Kind::Time),
    Column::nullable("revoked_at", Kind::Time),
    Column::new("active", Kind::Bool),
];

/// The column whose equality is a point read.
pub(super) const KEY: &str = "name";

pub(super) fn produce(inspector: &Inspector, name: Option<&str>, sink: &mut RowSink) -> Result<()> {
    point_or_scan(
        inspector,
        View::Credentials,
        name.map(CredentialRow::key),
        sink,
        |sink, row: CredentialRow| {
            let p = &row.permissions;
            let lists = [
                &p.call,
                &p.register,
                &p.publish,
                &p.subscribe,
                &p.queues,
                &p.cache,
            ]
            .map(|patterns| patterns.join(","));
            let flow: Flow = sink.push(&[
                Value::Text(&row.name),
                Value::Text(&lists[0]),
                Value::Text(&lists[1]),
                Value::Text(&lists[2]),
                Value::Text(&lists[3]),
                Value::Text(&lists[4]),
                Value::Text(&lists[5]),
                Value::Bool(p.sql),
                Value::Bool(p.admin),
                Value::Time(row.set_at_ms),
                row.revoked_at_ms.map_or(Value::Null, Value::Time),
                Value::Bool(row.live()),
            ])?;
            Ok(flow)
        },
    )
}
