//! Filter pushdown: which `WHERE` conjuncts narrow a scan to a key range.
//!
//! Tables push down equality and `IN` lists on their key columns
//! (`routes.dest = 'c2'`, `cache_entries.identifier IN ('a', 'b')`, or an
//! `OR` of such equalities) and ranges on the log index
//! (`events.index > 100`). Pushdown is always
//! `Inexact`: the scan reads a superset and DataFusion still applies the
//! filter, so a narrowing can never change an answer, only its cost.

use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use datafusion::scalar::ScalarValue;

fn column_name(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Column(c) => Some(c.name.as_str()),
        Expr::Cast(cast) => column_name(&cast.expr),
        Expr::TryCast(cast) => column_name(&cast.expr),
        _ => None,
    }
}

fn literal(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(value, _) => Some(value),
        _ => None,
    }
}

/// `column OP literal`, with the operator turned so the column is on the left.
fn comparison<'a>(expr: &'a Expr, column: &str) -> Option<(Operator, &'a ScalarValue)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return None;
    };
    if column_name(left) == Some(column) {
        return literal(right).map(|v| (*op, v));
    }
    if column_name(right) == Some(column) {
        return literal(left).and_then(|v| op.swap().map(|op| (op, v)));
    }
    None
}

/// The texts `column` may equal for `expr` to hold (sorted, without
/// repeats), if `expr` says so: `column = 'a'`, `column IN ('a', 'b')`, or
/// an `OR` of those on the same column.
pub fn text_values(expr: &Expr, column: &str) -> Option<Vec<String>> {
    let text = |value: &ScalarValue| value.try_as_str().flatten().map(str::to_string);
    let mut values = match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut values = text_values(left, column)?;
            values.extend(text_values(right, column)?);
            values
        }
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) if column_name(expr) == Some(column) => list
            .iter()
            .map(|item| literal(item).and_then(text))
            .collect::<Option<Vec<String>>>()?,
        _ => match comparison(expr, column)? {
            (Operator::Eq, value) => vec![text(value)?],
            _ => return None,
        },
    };
    values.sort();
    values.dedup();
    Some(values)
}

fn as_i128(value: &ScalarValue) -> Option<i128> {
    Some(match value {
        ScalarValue::Int8(Some(v)) => i128::from(*v),
        ScalarValue::Int16(Some(v)) => i128::from(*v),
        ScalarValue::Int32(Some(v)) => i128::from(*v),
        ScalarValue::Int64(Some(v)) => i128::from(*v),
        ScalarValue::UInt8(Some(v)) => i128::from(*v),
        ScalarValue::UInt16(Some(v)) => i128::from(*v),
        ScalarValue::UInt32(Some(v)) => i128::from(*v),
        ScalarValue::UInt64(Some(v)) => i128::from(*v),
        _ => return None,
    })
}

/// Inclusive bounds on an unsigned integer column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub low: u64,
    pub high: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            low: 0,
            high: u64::MAX,
        }
    }
}

fn clamp(v: i128) -> u64 {
    u64::try_from(v.max(0)).unwrap_or(u64::MAX)
}

impl Bounds {
    fn at_least(&mut self, v: i128) {
        self.low = self.low.max(clamp(v));
    }

    fn at_most(&mut self, v: i128) {
        if v < 0 {
            self.low = 1;
            self.high = 0;
        } else {
            self.high = self.high.min(clamp(v));
        }
    }

    /// Narrows the bounds by `expr` where it constrains `column`; returns
    /// whether it did.
    pub fn narrow(&mut self, expr: &Expr, column: &str) -> bool {
        if let Expr::Between(Between {
            expr: inner,
            negated: false,
            low,
            high,
        }) = expr
            && column_name(inner) == Some(column)
            && let (Some(low), Some(high)) = (
                literal(low).and_then(as_i128),
                literal(high).and_then(as_i128),
            )
        {
            self.at_least(low);
            self.at_most(high);
            return true;
        }
        let Some((op, value)) = comparison(expr, column) else {
            return false;
        };
        let Some(v) = as_i128(value) else {
            return false;
        };
        match op {
            Operator::Eq => {
                self.at_least(v);
                self.at_most(v);
            }
            Operator::Gt => self.at_least(v + 1),
            Operator::GtEq => self.at_least(v),
            Operator::Lt => self.at_most(v - 1),
            Operator::LtEq => self.at_most(v),
            _ => return false,
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.low > self.high
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn texts(values: &[&str]) -> Option<Vec<String>> {
        Some(values.iter().map(|v| v.to_string()).collect())
    }

    #[test]
    fn finds_text_equality_on_either_side() {
        assert_eq!(
            text_values(&col("dest").eq(lit("c2")), "dest"),
            texts(&["c2"])
        );
        assert_eq!(
            text_values(&lit("c2").eq(col("dest")), "dest"),
            texts(&["c2"])
        );
        assert_eq!(text_values(&col("dest").not_eq(lit("c2")), "dest"), None);
        assert_eq!(text_values(&col("next_hop").eq(lit("c2")), "dest"), None);
    }

    #[test]
    fn finds_in_lists_and_ors_of_equalities() {
        let in_list = col("dest").in_list(vec![lit("c3"), lit("c2"), lit("c3")], false);
        assert_eq!(text_values(&in_list, "dest"), texts(&["c2", "c3"]));
        let not_in = col("dest").in_list(vec![lit("c2")], true);
        assert_eq!(text_values(&not_in, "dest"), None);
        let with_column = col("dest").in_list(vec![lit("c2"), col("next_hop")], false);
        assert_eq!(text_values(&with_column, "dest"), None);
        let or = col("dest").eq(lit("c4")).or(lit("c1").eq(col("dest")));
        assert_eq!(text_values(&or, "dest"), texts(&["c1", "c4"]));
        let mixed = col("dest").eq(lit("c4")).or(col("next_hop").eq(lit("c1")));
        assert_eq!(text_values(&mixed, "dest"), None);
        let numbers = col("dest").in_list(vec![lit(1), lit(2)], false);
        assert_eq!(text_values(&numbers, "dest"), None);
    }

    #[test]
    fn narrows_index_bounds() {
        let mut b = Bounds::default();
        assert!(b.narrow(&col("index").gt(lit(10u64)), "index"));
        assert!(b.narrow(&lit(20i64).gt_eq(col("index")), "index"));
        assert_eq!(b, Bounds { low: 11, high: 20 });
        assert!(b.narrow(&col("index").between(lit(15), lit(30)), "index"));
        assert_eq!(b, Bounds { low: 15, high: 20 });
        assert!(!b.narrow(&col("term").gt(lit(1)), "index"));
        assert!(b.narrow(&col("index").lt(lit(0)), "index"));
        assert!(b.is_empty());
    }
}
