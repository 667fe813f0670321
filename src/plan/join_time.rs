//! Planning rules for time-bounded stream–stream joins: window joins (both inputs windowed alike,
//! joined on `window_start` and `window_end`) and interval joins (one side's time attribute bounded
//! by the other's). [`super::join::plan_join`] tries these before falling back to a regular join.
//!
//! Both keep state bounded by the watermark and emit append-only results, so they are only chosen
//! when that gives exactly the batch answer: a join whose shape is recognized but cannot be run
//! that way (different windows on the two sides, a bound measured in months) is refused here
//! rather than left to a regular join. A join that merely lacks the shape (no window equality, a
//! time condition bounded on one side only, an updating input) is not ours: `Ok(None)`.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, IntervalUnit, SchemaRef, TimeUnit};
use datafusion::common::{DFSchema, NullEquality, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Join, JoinType, Operator as BinOp};
use datafusion::physical_expr::PhysicalExpr;

use super::convert::{Converter, column_index, sql, unalias};
use super::graph::{Mode, Op, Props, WindowCols};
use super::locate::Site;
use crate::error::Result;
use crate::operator::window::WindowSpec;
use crate::operator::window_join::JoinRows;
use crate::operator::{interval_join, window_join};

/// A window join of the converted inputs `left` and `right`, if `join` is one.
pub fn try_window_join(conv: &mut Converter<'_>, join: &Join, left: usize, right: usize) -> Result<Option<usize>> {
    let (lp, rp) = (conv.props(left), conv.props(right));
    let (Some(lw), Some(rw)) = (lp.window, rp.window) else {
        return Ok(None);
    };
    let (ls, rs) = (join.left.schema(), join.right.schema());
    let (mut starts, mut ends) = (false, false);
    let mut keys: Vec<(&Expr, &Expr)> = Vec::new();
    for (le, re) in &join.on {
        match (column_index(le, ls), column_index(re, rs)) {
            (Some(a), Some(b)) if lw.start == Some(a) && rw.start == Some(b) => starts = true,
            (Some(a), Some(b)) if lw.end == Some(a) && rw.end == Some(b) => ends = true,
            _ => keys.push((le, re)),
        }
    }
    if !starts && !ends {
        return Ok(None);
    }
    if !supported(join) {
        return Ok(None);
    }
    let site = Site::Join(conv.joins_seen.saturating_sub(1));
    if lw.spec != rw.spec {
        return Err(conv.locate.refuse(
            site,
            format!(
                "a window join needs the same windows on both sides: the left input has {}, the right {}",
                lw.spec.describe(),
                rw.spec.describe()
            ),
        ));
    }
    match lw.spec {
        WindowSpec::Session { .. } => {
            return Err(conv.locate.refuse(
                site,
                "a window join of SESSION windows is not supported (sessions differ per key); join TUMBLE, HOP or CUMULATE windows",
            ));
        }
        WindowSpec::Cumulate { .. } if !(starts && ends) => {
            return Err(conv.locate.refuse(
                site,
                "a window join of CUMULATE windows must equate both window_start and window_end (windows share starts)",
            ));
        }
        _ => {}
    }
    for (p, side) in [(&lp, "left"), (&rp, "right")] {
        if p.mode != Mode::Append {
            return Err(conv.locate.refuse(
                site.clone(),
                format!(
                    "a window join needs append-only inputs; the {side} input is an updating result ({})",
                    p.mode.name()
                ),
            ));
        }
    }
    let rows = join_rows(conv, join, &keys)?;
    let nl = ls.fields().len();
    let moved = |w: WindowCols, by: usize| WindowCols {
        spec: w.spec,
        start: w.start.map(|i| i + by),
        end: w.end.map(|i| i + by),
        time: w.time.map(|i| i + by),
        // The join's output rows are whole windows, not rows a window aggregate could take as panes.
        assigned_by: None,
    };
    // The windows of the side whose columns are never NULL in the output. A FULL join pads both
    // sides, so its window columns can be NULL: no window (and no time attribute) goes on.
    let window = match join.join_type {
        JoinType::Inner | JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => Some(moved(lw, 0)),
        JoinType::Right => Some(moved(rw, nl)),
        JoinType::RightSemi | JoinType::RightAnti => Some(moved(rw, 0)),
        _ => None,
    };
    // Rows of a window go out when the watermark reaches its end, carrying the watermark before it:
    // window_time (or window_end) is never behind that, so it stays a time attribute.
    let props = Props {
        mode: Mode::Append,
        key: None,
        rowtime: window.and_then(|w| w.time.or(w.end)),
        window,
    };
    let text = describe(join, &keys);
    let cfg = window_join::Config {
        rows,
        window: lw.spec,
        bounds: [(lw.start, lw.end), (rw.start, rw.end)],
        text,
    };
    let schema = cfg.rows.schema.clone();
    Ok(Some(conv.add(
        Op::Custom(Box::new(cfg)),
        vec![left, right],
        schema,
        props,
        "",
    )))
}

/// An interval join of the converted inputs `left` and `right`, if `join` is one.
pub fn try_interval_join(conv: &mut Converter<'_>, join: &Join, left: usize, right: usize) -> Result<Option<usize>> {
    let (lp, rp) = (conv.props(left), conv.props(right));
    let (Some(lt), Some(rt)) = (lp.rowtime, rp.rowtime) else {
        return Ok(None);
    };
    let (ls, rs) = (join.left.schema(), join.right.schema());
    let pair = ls.join(rs)?;
    let times = (lt, ls.fields().len() + rt);
    // Every condition the join applies: the equalities, then the rest.
    let mut conds: Vec<Expr> = join
        .on
        .iter()
        .map(|(l, r)| Expr::BinaryExpr(BinaryExpr::new(Box::new(l.clone()), BinOp::Eq, Box::new(r.clone()))))
        .collect();
    if let Some(f) = &join.filter {
        conds.extend(split_conjunction(f).into_iter().cloned());
    }
    let (mut lo, mut hi): (Option<i64>, Option<i64>) = (None, None);
    for c in &conds {
        for (a, op, b) in comparisons(c) {
            let Some(d) = difference(a, b, times, &pair) else {
                continue;
            };
            if d.months {
                return Err(conv.locate.refuse(
                    Site::Join(conv.joins_seen.saturating_sub(1)),
                    format!(
                        "{}: an interval of months bounds the join's times, but a month has no fixed length, so how long to keep rows is unknown; use days",
                        sql(c)
                    ),
                ));
            }
            let (l, h) = d.bounds(op);
            lo = max_opt(lo, l);
            hi = min_opt(hi, h);
        }
    }
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(None);
    };
    if lp.mode != Mode::Append || rp.mode != Mode::Append || !supported(join) {
        return Ok(None);
    }
    let keys: Vec<(&Expr, &Expr)> = join.on.iter().map(|(l, r)| (l, r)).collect();
    let rows = join_rows(conv, join, &keys)?;
    let text = describe(join, &keys);
    let cfg = interval_join::Config {
        rows,
        time: [lt, rt],
        lo,
        hi,
        text,
    };
    let schema = cfg.rows.schema.clone();
    // A pair goes out when its second row arrives, and an unmatched row when the watermark passes its
    // interval: either can be well behind the watermark (Flink holds the watermark back by the
    // interval for that; we do not), so neither side's time stays a time attribute.
    Ok(Some(conv.add(
        Op::Custom(Box::new(cfg)),
        vec![left, right],
        schema,
        Props::append(),
        "",
    )))
}

/// Join types these joins run: every type but mark joins and NULL-aware anti joins (`NOT IN`, whose
/// answer depends on every row of the other side ever seen).
fn supported(join: &Join) -> bool {
    !matches!(join.join_type, JoinType::LeftMark | JoinType::RightMark) && !join.null_aware
}

/// How rows of the two inputs match: the equalities `keys`, the rest of the condition, the output.
fn join_rows(conv: &Converter<'_>, join: &Join, keys: &[(&Expr, &Expr)]) -> Result<JoinRows> {
    let (ls, rs) = (join.left.schema(), join.right.schema());
    let arrow = |s: &DFSchema| -> SchemaRef { Arc::new(s.as_arrow().clone()) };
    let pair = ls.join(rs)?;
    let left_keys: Vec<Arc<dyn PhysicalExpr>> =
        keys.iter().map(|(l, _)| conv.physical(l, ls)).collect::<Result<_>>()?;
    let right_keys: Vec<Arc<dyn PhysicalExpr>> =
        keys.iter().map(|(_, r)| conv.physical(r, rs)).collect::<Result<_>>()?;
    let inputs = [arrow(ls), arrow(rs)];
    let key_types: Vec<DataType> = left_keys
        .iter()
        .map(|k| k.data_type(&inputs[0]))
        .collect::<std::result::Result<_, _>>()?;
    let filter = join.filter.as_ref().map(|f| conv.physical(f, &pair)).transpose()?;
    Ok(JoinRows {
        join_type: join.join_type,
        keys: [left_keys, right_keys],
        key_types,
        nulls_equal: join.null_equality == NullEquality::NullEqualsNull,
        filter,
        inputs,
        pair_schema: arrow(&pair),
        schema: arrow(&join.schema),
    })
}

/// The join condition as SQL, for EXPLAIN.
fn describe(join: &Join, keys: &[(&Expr, &Expr)]) -> String {
    let mut parts: Vec<String> = keys.iter().map(|(l, r)| format!("{} = {}", sql(l), sql(r))).collect();
    if let Some(f) = &join.filter {
        parts.push(sql(f));
    }
    if parts.is_empty() {
        "ON TRUE".into()
    } else {
        format!("ON {}", parts.join(" AND "))
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// The comparisons a condition is made of, as `a op b` (a `BETWEEN` is two).
fn comparisons(c: &Expr) -> Vec<(&Expr, BinOp, &Expr)> {
    match unalias(c) {
        Expr::BinaryExpr(b) if matches!(b.op, BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq | BinOp::Eq) => {
            vec![(b.left.as_ref(), b.op, b.right.as_ref())]
        }
        Expr::Between(b) if !b.negated => vec![
            (b.expr.as_ref(), BinOp::GtEq, b.low.as_ref()),
            (b.expr.as_ref(), BinOp::LtEq, b.high.as_ref()),
        ],
        _ => Vec::new(),
    }
}

const NANOS_PER_MS: i128 = 1_000_000;
const NANOS_PER_DAY: i128 = 86_400_000_000_000;

/// `l * left.t + r * right.t + ns` (nanoseconds), within `slack` ns of the value SQL computes (casts to
/// coarser timestamps truncate); `months`: an interval of months is part of it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Linear {
    l: i64,
    r: i64,
    ns: i128,
    slack: i128,
    months: bool,
}

impl Linear {
    fn plus(self, o: Linear, sign: i64) -> Linear {
        Linear {
            l: self.l + sign * o.l,
            r: self.r + sign * o.r,
            ns: self.ns + i128::from(sign) * o.ns,
            slack: self.slack + o.slack,
            months: self.months || o.months,
        }
    }

    /// `right.t - left.t` bounds from `self op 0`, where `self` is `±(right.t - left.t) + ns`: in
    /// whole ms, rounded outwards (and widened by what casts truncate).
    fn bounds(self, op: BinOp) -> (Option<i64>, Option<i64>) {
        // Make it `right.t - left.t + ns op 0`.
        let (ns, op) = if self.r == 1 {
            (self.ns, op)
        } else {
            (-self.ns, flip(op))
        };
        // right.t - left.t op -ns.
        let v = -ns;
        let lo = || i64::try_from((v - self.slack).div_euclid(NANOS_PER_MS)).unwrap_or(i64::MIN);
        let hi = || i64::try_from((v + self.slack + NANOS_PER_MS - 1).div_euclid(NANOS_PER_MS)).unwrap_or(i64::MAX);
        match op {
            BinOp::Lt | BinOp::LtEq => (None, Some(hi())),
            BinOp::Gt | BinOp::GtEq => (Some(lo()), None),
            BinOp::Eq => (Some(lo()), Some(hi())),
            _ => (None, None),
        }
    }
}

fn flip(op: BinOp) -> BinOp {
    match op {
        BinOp::Lt => BinOp::Gt,
        BinOp::LtEq => BinOp::GtEq,
        BinOp::Gt => BinOp::Lt,
        BinOp::GtEq => BinOp::LtEq,
        other => other,
    }
}

/// `a - b` when it is `±(right.t - left.t) + constant`: a bound between the two time attributes
/// (`times`: their columns in `schema`, the left input's columns then the right's).
fn difference(a: &Expr, b: &Expr, times: (usize, usize), schema: &DFSchema) -> Option<Linear> {
    let d = linear(a, times, schema)?.plus(linear(b, times, schema)?, -1);
    ((d.l, d.r) == (-1, 1) || (d.l, d.r) == (1, -1)).then_some(d)
}

/// An expression as a [`Linear`] combination of the time attributes, if it is one.
fn linear(e: &Expr, times: (usize, usize), schema: &DFSchema) -> Option<Linear> {
    let zero = Linear::default();
    match unalias(e) {
        Expr::Column(c) => match schema.maybe_index_of_column(c)? {
            i if i == times.0 => Some(Linear { l: 1, ..zero }),
            i if i == times.1 => Some(Linear { r: 1, ..zero }),
            _ => None,
        },
        Expr::Literal(v, _) => interval_nanos(v).map(|(ns, months)| Linear { ns, months, ..zero }),
        Expr::BinaryExpr(b) => {
            let sign = match b.op {
                BinOp::Plus => 1,
                BinOp::Minus => -1,
                _ => return None,
            };
            Some(linear(&b.left, times, schema)?.plus(linear(&b.right, times, schema)?, sign))
        }
        Expr::Negative(x) => Some(zero.plus(linear(x, times, schema)?, -1)),
        Expr::Cast(c) => cast_of(&c.expr, c.field.data_type(), times, schema),
        Expr::TryCast(c) => cast_of(&c.expr, c.field.data_type(), times, schema),
        _ => None,
    }
}

/// A cast between timestamp types keeps the instant, and one between durations and intervals (a
/// difference of times compared with an interval) the length, truncated to the target's unit.
fn cast_of(e: &Expr, to: &DataType, times: (usize, usize), schema: &DFSchema) -> Option<Linear> {
    let unit = |u: &TimeUnit| match u {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 0,
    };
    let slack = match to {
        DataType::Timestamp(u, _) | DataType::Duration(u) => unit(u),
        DataType::Interval(IntervalUnit::MonthDayNano) => 0,
        DataType::Interval(IntervalUnit::DayTime) => 1_000_000,
        _ => return None,
    };
    let mut v = linear(e, times, schema)?;
    v.slack += slack;
    Some(v)
}

/// A constant interval or duration in nanoseconds, and whether it has months (no fixed length).
fn interval_nanos(v: &ScalarValue) -> Option<(i128, bool)> {
    Some(match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) => (
            i128::from(i.days) * NANOS_PER_DAY + i128::from(i.nanoseconds),
            i.months != 0,
        ),
        ScalarValue::IntervalDayTime(Some(i)) => (
            i128::from(i.days) * NANOS_PER_DAY + i128::from(i.milliseconds) * NANOS_PER_MS,
            false,
        ),
        ScalarValue::IntervalYearMonth(Some(m)) => (0, *m != 0),
        ScalarValue::DurationSecond(Some(s)) => (i128::from(*s) * 1_000_000_000, false),
        ScalarValue::DurationMillisecond(Some(s)) => (i128::from(*s) * NANOS_PER_MS, false),
        ScalarValue::DurationMicrosecond(Some(s)) => (i128::from(*s) * 1_000, false),
        ScalarValue::DurationNanosecond(Some(s)) => (i128::from(*s), false),
        _ => return None,
    })
}
#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::logical_expr::{cast, col, lit};

    /// Left `v(t, x)`, right `p(t, y)`: `v.t` is column 0, `p.t` column 2.
    fn schema() -> DFSchema {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let side = |q: &str, other: &str| {
            DFSchema::try_from_qualified_schema(
                q,
                &Schema::new(vec![
                    Field::new("t", ts.clone(), false),
                    Field::new(other, DataType::Int64, false),
                ]),
            )
            .expect("schema")
        };
        side("v", "x").join(&side("p", "y")).expect("join")
    }

    fn minutes(m: i64) -> Expr {
        lit(ScalarValue::new_interval_mdn(0, 0, m * 60_000_000_000))
    }

    /// `(lo, hi)` of `p.t - v.t` from conditions, as the planner finds them.
    fn bounds(conds: &[Expr]) -> (Option<i64>, Option<i64>, bool) {
        let s = schema();
        let (mut lo, mut hi, mut months) = (None, None, false);
        for c in conds {
            for (a, op, b) in comparisons(c) {
                if let Some(d) = difference(a, b, (0, 2), &s) {
                    months |= d.months;
                    let (l, h) = d.bounds(op);
                    lo = max_opt(lo, l);
                    hi = min_opt(hi, h);
                }
            }
        }
        (lo, hi, months)
    }

    #[test]
    fn time_bounds_are_found_in_any_spelling_and_widened() {
        let (v, p) = (col("v.t"), col("p.t"));
        // p.t BETWEEN v.t AND v.t + 10 minutes
        let between = p.clone().between(v.clone(), v.clone() + minutes(10));
        assert_eq!(bounds(&[between]), (Some(0), Some(600_000), false));
        // v.t > p.t - 1 minute (p.t < v.t + 1 minute), p.t - v.t >= -(2 minutes)
        assert_eq!(
            bounds(&[
                v.clone().gt(p.clone() - minutes(1)),
                (p.clone() - v.clone()).gt_eq(Expr::Negative(Box::new(minutes(2)))),
            ]),
            (Some(-120_000), Some(60_000), false)
        );
        // The tightest of several bounds; equal times; a cast to seconds widens by a second.
        assert_eq!(
            bounds(&[
                p.clone().lt_eq(v.clone() + minutes(5)),
                p.clone().lt(v.clone() + minutes(10)),
                p.clone().eq(v.clone())
            ]),
            (Some(0), Some(0), false)
        );
        let secs = DataType::Timestamp(TimeUnit::Second, None);
        assert_eq!(
            bounds(&[
                cast(p.clone(), secs).gt_eq(v.clone()),
                p.clone().lt_eq(v.clone() + lit(ScalarValue::DurationSecond(Some(3))))
            ]),
            (Some(-1_000), Some(3_000), false)
        );
        // A difference of times cast to an interval (how DataFusion compares it with one).
        let diff = cast(p.clone() - v.clone(), DataType::Interval(IntervalUnit::MonthDayNano));
        assert_eq!(
            bounds(&[diff.lt_eq(minutes(1)), p.clone().gt(v.clone())]),
            (Some(0), Some(60_000), false)
        );
        // Not bounds between the two times.
        assert_eq!(
            bounds(&[
                p.clone().gt(col("v.x")),
                p.clone().gt(v.clone() + v.clone()),
                col("v.x").lt(col("p.y")),
                p.clone().not_between(v.clone(), v.clone() + minutes(1)),
            ]),
            (None, None, false)
        );
        // Months have no fixed length.
        let month = lit(ScalarValue::new_interval_mdn(1, 0, 0));
        assert!(bounds(&[p.clone().lt_eq(v.clone() + month)]).2);
        let month = lit(ScalarValue::IntervalYearMonth(Some(1)));
        assert!(bounds(&[p.lt_eq(v + month)]).2);
    }
}
