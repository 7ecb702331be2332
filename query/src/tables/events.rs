//! The `events` table: the retained raft log, one row per event (one per
//! membership entry), oldest first. Ranges on `index` narrow the log scan;
//! `kind = '...'` (or `IN`) is checked before a row is built. A query that
//! reads only `index` and `term` (`count(*)` among them) and filters no
//! kind has its events counted, not decoded.
//!
//! Columns: `index`, `term`, `time` (nullable: NULL for `membership`
//! entries), `kind`, `summary` (the event's fields as one JSON object).

use datafusion::error::Result;
use mpreg_storage::inspect::{EntryShape, LogScan};
use mpreg_storage::{EventKind, Flow, Inspector};
use openraft::{EntryPayload, RaftLogId};

use super::{Narrowing, PARALLEL_SCAN_BYTES, in_two_threads, stop_on_error, storage};
use crate::columns::{Column, Kind, Value};
use crate::pushdown::Bounds;
use crate::scan::RowSink;

pub(super) const COLUMNS: &[Column] = &[
    Column::new("index", Kind::U64),
    Column::new("term", Kind::U64),
    Column::nullable("time", Kind::Time),
    Column::new("kind", Kind::Text),
    Column::new("summary", Kind::Text),
];

/// The log index column, whose ranges narrow a scan.
pub(super) const INDEX: &str = "index";
/// The event kind column, checked before a row is built.
pub(super) const KIND: &str = "kind";
/// Positions of the columns only a decoded event has: `time`, `kind`,
/// `summary`.
const EVENT_COLUMNS: [usize; 3] = [2, 3, 4];

/// The fields of an event as one JSON object (the kind is its own column).
fn summary(kind: &EventKind) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::Object(tagged)) => tagged
            .into_iter()
            .next()
            .map_or_else(String::new, |(_, fields)| fields.to_string()),
        Ok(other) => other.to_string(),
        Err(e) => format!("{{\"error\":\"{e}\"}}"),
    }
}

pub(super) fn produce(
    inspector: &Inspector,
    narrowing: &Narrowing,
    sink: &mut RowSink,
) -> Result<()> {
    let bounds: Bounds = narrowing.bounds;
    if bounds.is_empty() {
        return Ok(());
    }
    let log = inspector.log_scan().map_err(storage)?;
    let positions_only = narrowing.values(KIND).is_none() && !sink.reads_any(EVENT_COLUMNS);
    let cut = if sink.wants_every_row() && !positions_only {
        log.halves(bounds.low, bounds.high, PARALLEL_SCAN_BYTES)
            .map_err(storage)?
    } else {
        None
    };
    let log = if cut.is_some() { log.bulk() } else { log };
    let run = |bounds: &Bounds, sink: &mut RowSink| {
        if positions_only {
            produce_positions(&log, *bounds, sink)
        } else {
            produce_events(&log, narrowing, *bounds, sink)
        }
    };
    let Some(cut) = cut else {
        return run(&bounds, sink);
    };
    let lower = Bounds {
        low: bounds.low,
        high: cut - 1,
    };
    let upper = Bounds {
        low: cut,
        high: bounds.high,
    };
    in_two_threads("the log", sink, &lower, &upper, run)
}

/// One row per event (and per membership entry) in `bounds` whose kind
/// the filters allow, decoded.
fn produce_events(
    log: &LogScan<'_>,
    narrowing: &Narrowing,
    bounds: Bounds,
    sink: &mut RowSink,
) -> Result<()> {
    let mut failed = None;
    log.entries(bounds.low, bounds.high, |entry| {
        let log_id = entry.get_log_id();
        let batch = match &entry.payload {
            EntryPayload::Normal(batch) => batch,
            EntryPayload::Membership(_) if !narrowing.allows(KIND, "membership") => {
                return Flow::Continue;
            }
            EntryPayload::Membership(membership) => {
                let summary_of = || serde_json::to_string(membership).unwrap_or_default();
                let pushed = sink.push(&[
                    Value::U64(log_id.index),
                    Value::U64(log_id.leader_id.term),
                    Value::Null,
                    Value::Text("membership"),
                    Value::LazyText(&summary_of),
                ]);
                return stop_on_error(&mut failed, pushed);
            }
            EntryPayload::Blank => return Flow::Continue,
        };
        for event in batch.events.iter() {
            if !narrowing.allows(KIND, event.kind.name()) {
                continue;
            }
            let summary_of = || summary(&event.kind);
            let pushed = sink.push(&[
                Value::U64(log_id.index),
                Value::U64(log_id.leader_id.term),
                Value::Time(event.time_ms),
                Value::Text(event.kind.name()),
                Value::LazyText(&summary_of),
            ]);
            if stop_on_error(&mut failed, pushed) == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    })
    .map_err(storage)?;
    failed.map_or(Ok(()), Err)
}

/// One row per event (and per membership entry) in `bounds`, with only its
/// `index` and `term`: the log's entries are read for their number of
/// events, which are not decoded.
fn produce_positions(log: &LogScan<'_>, bounds: Bounds, sink: &mut RowSink) -> Result<()> {
    let mut failed = None;
    log.shapes(bounds.low, bounds.high, |log_id, shape| {
        let rows = match shape {
            EntryShape::Blank => 0,
            EntryShape::Events(n) => n,
            EntryShape::Membership => 1,
        };
        let row = [Value::U64(log_id.index), Value::U64(log_id.leader_id.term)];
        for _ in 0..rows {
            if stop_on_error(&mut failed, sink.push(&row)) == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    })
    .map_err(storage)?;
    failed.map_or(Ok(()), Err)
}
