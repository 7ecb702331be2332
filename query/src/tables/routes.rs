//! The `routes` table: every route this cluster holds, one row per
//! (destination cluster, next hop): the rows of the `routes` view (the
//! cluster's route to itself, and routes announced by `RouteAnnounced`),
//! then the federation candidates of the `route_candidates` view, ranked
//! per destination with [`mpreg_storage::federation::explain`] when read.
//! `dest = '...'` narrows both scans to that destination's prefix.
//!
//! Columns: `dest`, `next_hop`, `path` (list), `hops`, `latency_ms`,
//! `bandwidth_mbps`, `reliability`, `cost`, `score`, `advertiser`, `epoch`,
//! `tags` (list), `learned_at`, `expires_at` (nullable), `state`:
//! `active` (the selected candidate, or a view row not expired), and for
//! a candidate [`route_state`]'s `backup`, `expired`, `withdrawn`,
//! `held_down` or `suppressed`.
//!
//! The two views are read at two snapshots, a moment apart at most.

use datafusion::error::Result;
use mpreg_storage::federation::{
    Candidate, Explained, FULL_RELIABILITY, RouteMetrics, explain, rank, route_state, score, usable,
};
use mpreg_storage::views::{CandidateRow, DampingRow, RouteRow, View};
use mpreg_storage::{Flow, Inspector, codec};

use super::{now_ms, scan_in_place, scan_view, storage};
use crate::columns::{Column, Kind, Value};
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("dest", Kind::Text),
    Column::new("next_hop", Kind::Text),
    Column::new("path", Kind::TextList),
    Column::new("hops", Kind::U32),
    Column::new("latency_ms", Kind::F64),
    Column::new("bandwidth_mbps", Kind::U32),
    Column::new("reliability", Kind::F64),
    Column::new("cost", Kind::U32),
    Column::new("score", Kind::F64),
    Column::new("advertiser", Kind::Text),
    Column::new("epoch", Kind::U64),
    Column::new("tags", Kind::TextList),
    Column::new("learned_at", Kind::Time),
    Column::nullable("expires_at", Kind::Time),
    Column::new("state", Kind::Text),
];

/// The column whose equality narrows a scan.
pub(super) const KEY: &str = "dest";

/// The metrics a row of the `routes` view stands for: its path length as
/// hops, its cost, no latency, full reliability, unknown bandwidth.
pub(super) fn view_metrics<S>(r: &RouteRow<S>) -> RouteMetrics {
    RouteMetrics {
        hops: u32::try_from(r.hops()).unwrap_or(u32::MAX),
        latency_us: 0,
        bandwidth_mbps: 0,
        reliability_ppm: FULL_RELIABILITY,
        cost: r.cost,
    }
}

/// Whether `r` is the cluster's route to itself (recorded at start, with
/// an empty path).
pub(super) fn is_own_route(r: &RouteRow) -> bool {
    r.path.is_empty() && r.advertiser == r.dest && r.next_hop == r.dest
}

/// A row of the `routes` view as ranking sees it.
pub(super) fn view_candidate<'a>(r: &'a RouteRow, metrics: &'a RouteMetrics) -> Candidate<'a> {
    Candidate {
        next_hop: &r.next_hop,
        advertiser: &r.advertiser,
        path: &r.path,
        metrics,
        expires_at_ms: r.expires_at_ms,
        withdrawn: false,
    }
}

/// The candidates to one destination, explained at `now`: best first, as
/// [`explain`] orders them.
fn explained(rows: &[CandidateRow], now: u64) -> Vec<Explained> {
    let candidates: Vec<Candidate<'_>> = rows.iter().map(CandidateRow::candidate).collect();
    explain(&candidates, now, &[])
}

/// The next hop of the best usable route to `dest` at `now`, if any.
pub(super) fn next_hop(inspector: &Inspector, dest: &str, now: u64) -> Result<Option<String>> {
    let mut rows: Vec<CandidateRow> = Vec::new();
    inspector
        .scan_view(
            View::RouteCandidates,
            &CandidateRow::dest_prefix(dest),
            |row| {
                rows.push(row);
                Flow::Continue
            },
        )
        .map_err(storage)?;
    let candidates: Vec<Candidate<'_>> = rows.iter().map(CandidateRow::candidate).collect();
    Ok(rank(&candidates, now)
        .into_iter()
        .map(|i| &rows[i])
        .find(|row| usable(row, now))
        .map(|row| row.route.next_hop.clone()))
}

pub(super) fn produce(inspector: &Inspector, dest: Option<&str>, sink: &mut RowSink) -> Result<()> {
    let now = now_ms();
    let prefix = dest.map(RouteRow::dest_prefix).unwrap_or_default();
    // Rows of the view are decoded in place: their text borrows the
    // stored bytes.
    scan_in_place(
        inspector,
        View::Routes,
        &prefix,
        sink,
        |sink, key, value| {
            let r: RouteRow<&str> =
                codec::decode_row(View::Routes.cf_name(), key, value).map_err(storage)?;
            let state = match r.expires_at_ms {
                Some(at) if at <= now => "expired",
                _ => "active",
            };
            let metrics = view_metrics(&r);
            let flow = sink.push(&[
                Value::Text(r.dest),
                Value::Text(r.next_hop),
                Value::StrList(&r.path),
                Value::U32(metrics.hops),
                Value::F64(metrics.latency_ms()),
                Value::U32(metrics.bandwidth_mbps),
                Value::F64(metrics.reliability()),
                Value::U32(r.cost),
                Value::F64(score(&metrics)),
                Value::Text(r.advertiser),
                Value::U64(0),
                Value::TextList(&[]),
                Value::Time(r.learned_at_ms),
                r.expires_at_ms.map_or(Value::Null, Value::Time),
                Value::Text(state),
            ])?;
            Ok(flow)
        },
    )?;
    if !sink.wants_more() {
        return Ok(());
    }
    let prefix = dest.map(CandidateRow::dest_prefix).unwrap_or_default();
    // Rows come in key order, so a destination's candidates are adjacent:
    // gather them, then rank and write them together.
    let mut group: Vec<CandidateRow> = Vec::new();
    scan_view(
        inspector,
        View::RouteCandidates,
        &prefix,
        sink,
        |sink, row: CandidateRow| {
            if group
                .first()
                .is_some_and(|first| first.route.dest != row.route.dest)
            {
                let flow = push_candidates(inspector, &std::mem::take(&mut group), now, sink)?;
                if flow == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
            group.push(row);
            Ok(Flow::Continue)
        },
    )?;
    push_candidates(inspector, &group, now, sink).map(|_| ())
}

/// Writes the candidates to one destination with their state at `now`.
fn push_candidates(
    inspector: &Inspector,
    rows: &[CandidateRow],
    now: u64,
    sink: &mut RowSink,
) -> Result<Flow> {
    for e in explained(rows, now) {
        let row = &rows[e.index];
        let route = &row.route;
        let damping = match e.filtered_reason {
            Some("withdrawn") => inspector
                .get::<DampingRow>(
                    View::RouteDamping,
                    &DampingRow::key(&route.dest, &route.next_hop),
                )
                .map_err(storage)?,
            _ => None,
        };
        let state = route_state(&e, damping.as_ref(), now);
        let m = &route.metrics;
        let flow = sink.push(&[
            Value::Text(&route.dest),
            Value::Text(&route.next_hop),
            Value::TextList(&route.path),
            Value::U32(m.hops),
            Value::F64(m.latency_ms()),
            Value::U32(m.bandwidth_mbps),
            Value::F64(m.reliability()),
            Value::U32(m.cost),
            Value::F64(e.score),
            Value::Text(&route.next_hop),
            Value::U64(route.epoch),
            Value::TextList(&route.tags),
            Value::Time(row.learned_at_ms),
            Value::Time(row.expires_at_ms),
            Value::Text(state),
        ])?;
        if flow == Flow::Stop {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Continue)
}
