//! The `federation_links` table: one row per neighbour cluster this
//! cluster is linked to, from the `federation_links` view, with the live
//! state of the link asked of a [`LinkStateSource`] as each row is read.
//!
//! Columns: `cluster_id`, `urls` (list), `linked_at`, `state`, `rtt_ms`
//! (nullable), `last_seen` (nullable), `announcements_in`,
//! `announcements_out`, `rejections` (a JSON object, reason → count).
//! `cluster_id = '...'` is a point read.
//!
//! Without a source (a stopped node, or a daemon that wires none) `state`
//! is `unknown`, `rtt_ms` and `last_seen` are NULL, the counters 0 and
//! `rejections` `{}`.

use std::collections::BTreeMap;

use datafusion::error::Result;
use mpreg_storage::Inspector;
use mpreg_storage::views::{LinkRow, View};

use super::point_or_scan;
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("cluster_id", Kind::Text),
    Column::new("urls", Kind::TextList),
    Column::new("linked_at", Kind::Time),
    Column::new("state", Kind::Text),
    Column::nullable("rtt_ms", Kind::F64),
    Column::nullable("last_seen", Kind::Time),
    Column::new("announcements_in", Kind::U64),
    Column::new("announcements_out", Kind::U64),
    Column::new("rejections", Kind::Text),
];

/// The live state of the link to one neighbour cluster, as the daemon
/// knows it (none of it is stored).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkState {
    /// How the link is now, in the daemon's words (`up`, `down`,
    /// `connecting`, ...).
    pub state: String,
    /// Last measured round trip to the neighbour.
    pub rtt_ms: Option<f64>,
    /// When the neighbour was last heard from (unix ms).
    pub last_seen_ms: Option<u64>,
    /// Route announcements received from the neighbour.
    pub announcements_in: u64,
    /// Route announcements sent to the neighbour.
    pub announcements_out: u64,
    /// Announcements from the neighbour refused, per reject reason
    /// (`loop`, `stale`, ... as `mpreg_storage::federation::Reject::as_str`).
    pub rejections: BTreeMap<String, u64>,
}

/// Answers the live columns of `federation_links` when a query reads them.
pub trait LinkStateSource: Send + Sync {
    /// The link to `cluster_id` now; `None` when the daemon knows nothing
    /// of it (the row then shows `unknown`).
    fn link_state(&self, cluster_id: &str) -> Option<LinkState>;
}

/// The state shown when no source answers.
const UNKNOWN: &str = "unknown";

/// The column whose equality is a point read.
pub(super) const KEY: &str = "cluster_id";

pub(super) fn produce(
    inspector: &Inspector,
    links: Option<&dyn LinkStateSource>,
    cluster_id: Option<&str>,
    sink: &mut RowSink,
) -> Result<()> {
    point_or_scan(
        inspector,
        View::FederationLinks,
        cluster_id.map(LinkRow::key),
        sink,
        |sink, row: LinkRow| {
            let live = links.and_then(|source| source.link_state(&row.cluster_id));
            let rejections = || {
                live.as_ref().map_or_else(
                    || "{}".to_string(),
                    |l| serde_json::to_string(&l.rejections).unwrap_or_else(|_| "{}".to_string()),
                )
            };
            sink.push(&[
                Value::Text(&row.cluster_id),
                Value::TextList(&row.urls),
                Value::Time(row.linked_at_ms),
                Value::Text(live.as_ref().map_or(UNKNOWN, |l| l.state.as_str())),
                live.as_ref()
                    .and_then(|l| l.rtt_ms)
                    .map_or(Value::Null, Value::F64),
                live.as_ref()
                    .and_then(|l| l.last_seen_ms)
                    .map_or(Value::Null, Value::Time),
                Value::U64(live.as_ref().map_or(0, |l| l.announcements_in)),
                Value::U64(live.as_ref().map_or(0, |l| l.announcements_out)),
                Value::LazyText(&rejections),
            ])
        },
    )
}
