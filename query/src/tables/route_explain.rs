//! The `route_explain('dest')` table function: every candidate route to
//! one destination with its score, its rank and why it was or was not
//! selected, as [`mpreg_storage::federation::explain`] decides at the time
//! of the query. The candidates are the `route_candidates` rows to `dest`,
//! plus, when `dest` is this cluster, its route to itself.
//!
//! Columns: `dest`, `next_hop`, `advertiser`, `path` (list), `hops`,
//! `latency_ms`, `reliability`, `bandwidth_mbps`, `cost`, `score`, `rank`
//! (1 = best), `selected`, `filtered_reason` (nullable: `expired`,
//! `withdrawn`, `avoid_clusters`, `lower_rank`; NULL when selected).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use mpreg_storage::federation::{Candidate, explain};
use mpreg_storage::views::{CandidateRow, RouteRow, View};
use mpreg_storage::{Flow, Inspector};

use super::routes::{is_own_route, view_candidate, view_metrics};
use super::{Sources, now_ms, scan_view, storage, streaming_scan};
use crate::columns::{Column, Kind, Value, schema};
use crate::scan::RowSink;

/// The function's name in SQL.
pub const NAME: &str = "route_explain";

pub(super) const COLUMNS: &[Column] = &[
    Column::new("dest", Kind::Text),
    Column::new("next_hop", Kind::Text),
    Column::new("advertiser", Kind::Text),
    Column::new("path", Kind::TextList),
    Column::new("hops", Kind::U32),
    Column::new("latency_ms", Kind::F64),
    Column::new("reliability", Kind::F64),
    Column::new("bandwidth_mbps", Kind::U32),
    Column::new("cost", Kind::U32),
    Column::new("score", Kind::F64),
    Column::new("rank", Kind::U32),
    Column::new("selected", Kind::Bool),
    Column::nullable("filtered_reason", Kind::Text),
];

/// `route_explain(dest)`: makes a [`RouteExplainTable`] for its argument.
pub struct RouteExplain {
    sources: Arc<Sources>,
}

impl RouteExplain {
    pub fn new(sources: Arc<Sources>) -> Self {
        RouteExplain { sources }
    }
}

impl fmt::Debug for RouteExplain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RouteExplain")
    }
}

/// The destination named by the function's arguments: one text literal.
fn destination(exprs: &[Expr]) -> Result<String> {
    let [arg] = exprs else {
        return plan_err!(
            "{NAME} takes one argument, the destination cluster as a text literal \
             (route_explain('c3')); got {} arguments",
            exprs.len()
        );
    };
    match arg {
        Expr::Literal(
            ScalarValue::Utf8(Some(dest))
            | ScalarValue::LargeUtf8(Some(dest))
            | ScalarValue::Utf8View(Some(dest)),
            _,
        ) => Ok(dest.clone()),
        Expr::Literal(value, _) => plan_err!(
            "{NAME} takes the destination cluster as a text literal (route_explain('c3')); \
             got {value} of type {}",
            value.data_type()
        ),
        other => plan_err!(
            "{NAME} takes the destination cluster as a text literal (route_explain('c3')); \
             got the expression {other}"
        ),
    }
}

impl TableFunctionImpl for RouteExplain {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let dest = destination(args.exprs())?;
        Ok(Arc::new(RouteExplainTable {
            dest,
            schema: schema(COLUMNS),
            sources: self.sources.clone(),
        }))
    }
}

/// The rows of `route_explain(dest)` for one `dest`.
#[derive(Clone)]
pub struct RouteExplainTable {
    dest: String,
    schema: SchemaRef,
    sources: Arc<Sources>,
}

impl fmt::Debug for RouteExplainTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RouteExplainTable({})", self.dest)
    }
}

#[async_trait]
impl TableProvider for RouteExplainTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let table = self.clone();
        streaming_scan(NAME, COLUMNS, projection, limit, move |sink| {
            produce(&table.sources.inspector, &table.dest, sink)
        })
    }
}

fn produce(inspector: &Inspector, dest: &str, sink: &mut RowSink) -> Result<()> {
    let now = now_ms();
    let mut own: Vec<RouteRow> = Vec::new();
    inspector
        .scan_view(View::Routes, &RouteRow::dest_prefix(dest), |r: RouteRow| {
            if r.dest == dest && is_own_route(&r) {
                own.push(r);
            }
            Flow::Continue
        })
        .map_err(storage)?;
    let mut learned: Vec<CandidateRow> = Vec::new();
    scan_view(
        inspector,
        View::RouteCandidates,
        &CandidateRow::dest_prefix(dest),
        sink,
        |_, row: CandidateRow| {
            learned.push(row);
            Ok(Flow::Continue)
        },
    )?;
    let own_metrics: Vec<_> = own.iter().map(view_metrics).collect();
    let candidates: Vec<Candidate<'_>> = own
        .iter()
        .zip(&own_metrics)
        .map(|(r, m)| view_candidate(r, m))
        .chain(learned.iter().map(CandidateRow::candidate))
        .collect();
    for (position, e) in explain(&candidates, now, &[]).into_iter().enumerate() {
        let c = &candidates[e.index];
        let m = c.metrics;
        let flow = sink.push(&[
            Value::Text(dest),
            Value::Text(c.next_hop),
            Value::Text(c.advertiser),
            Value::TextList(c.path),
            Value::U32(m.hops),
            Value::F64(m.latency_ms()),
            Value::F64(m.reliability()),
            Value::U32(m.bandwidth_mbps),
            Value::U32(m.cost),
            Value::F64(e.score),
            Value::U32(u32::try_from(position + 1).unwrap_or(u32::MAX)),
            Value::Bool(e.selected),
            e.filtered_reason.map_or(Value::Null, Value::Text),
        ])?;
        if flow == Flow::Stop {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    #[test]
    fn takes_one_text_literal_and_names_itself_otherwise() {
        assert_eq!(destination(&[lit("c3")]).expect("dest"), "c3");
        for bad in [
            vec![],
            vec![lit("c3"), lit("c4")],
            vec![lit(3)],
            vec![lit(ScalarValue::Utf8(None))],
            vec![col("dest")],
        ] {
            let err = destination(&bad).expect_err("refused").to_string();
            assert!(err.contains("route_explain"), "{err}");
        }
    }
}
