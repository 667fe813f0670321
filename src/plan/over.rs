//! Planning rules for `… OVER (…)` (Flink's semantics):
//!
//! - a filter on a `ROW_NUMBER()`/`RANK()`/`DENSE_RANK()` with an upper bound (`WHERE rn <= N`,
//!   `rn < N`, `rn = N`, `QUALIFY …`) is a Top-N ([`crate::operator::top_n`]); ordered by the time
//!   attribute with `rn = 1` it is a deduplication, and partitioned by a window's start and end a
//!   window Top-N emitted when the window closes;
//! - `COUNT/SUM/AVG/MIN/MAX(x) OVER (PARTITION BY … ORDER BY <time attribute> <frame ending at the
//!   current row>)` is an OVER aggregate ([`crate::operator::over_agg`]).
//!
//! Everything else under OVER is refused where it is written: a rank of every row (it would change
//! with every later row), other window functions, frames that need rows not yet arrived, orders other
//! than the time attribute for aggregates.
//!
//! DataFusion puts the rank filter right above the `Window` node, or above a projection of it
//! (`QUALIFY`, or an outer query that renames): [`plan_filter`] looks through projections and aliases,
//! builds the Top-N with the `Window` node's columns (its input's, then the rank) and applies the
//! projections and the rest of the filter above it.

use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::SortField;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Filter, LogicalPlan, Operator as BinOp, Window, WindowFrameBound, WindowFrameUnits,
    WindowFunctionDefinition,
};
use datafusion::physical_expr::PhysicalExpr;

use super::context::StreamTable;
use super::convert::{Converter, column_index, map_props, sql, unalias};
use super::graph::{Mode, Op, OpFactory, Props, WindowCols};
use super::locate::Site;
use crate::error::{Error, Result};
use crate::operator::Operator;
use crate::operator::acc::AggKind;
use crate::operator::calc::{self, Step};
use crate::operator::over_agg::{self, Frame, OverAgg};
use crate::operator::partition::PartitionKeys;
use crate::operator::top_n::{self, Emit, RankFn, TopN};

fn arrow(schema: &DFSchema) -> SchemaRef {
    Arc::new(schema.as_arrow().clone())
}

/// The window function of a `Window` node's expression.
fn window_fn(e: &Expr) -> Result<&WindowFunction> {
    match unalias(e) {
        Expr::WindowFunction(wf) => Ok(wf),
        other => Err(Error::Internal(format!("not a window function: {other}"))),
    }
}

fn rank_fn(name: &str) -> Option<RankFn> {
    match name {
        "row_number" => Some(RankFn::RowNumber),
        "rank" => Some(RankFn::Rank),
        "dense_rank" => Some(RankFn::DenseRank),
        _ => None,
    }
}

/// The ranking function an expression of a `Window` node is, if it is one.
fn ranking(e: &Expr) -> Option<(RankFn, &WindowFunction)> {
    let wf = window_fn(e).ok()?;
    match &wf.fun {
        WindowFunctionDefinition::WindowUDF(f) => rank_fn(&f.name().to_ascii_lowercase()).map(|r| (r, wf)),
        WindowFunctionDefinition::AggregateUDF(_) => None,
    }
}

/// A numeric constant, as a float (ranks compared with `2.5` are bounded by 2 or 3 as the
/// comparison says).
fn number(e: &Expr) -> Option<f64> {
    match unalias(e) {
        Expr::Literal(v, _) if !v.is_null() && v.data_type().is_numeric() => {
            match v.cast_to(&DataType::Float64).ok()? {
                ScalarValue::Float64(Some(f)) if f.is_finite() => Some(f),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `e` without casts to numbers (they keep the order of ranks; a cast to text would not).
fn uncast(e: &Expr) -> &Expr {
    match unalias(e) {
        Expr::Cast(c) if c.field.data_type().is_numeric() => uncast(&c.expr),
        Expr::TryCast(c) if c.field.data_type().is_numeric() => uncast(&c.expr),
        other => other,
    }
}

/// Ranks kept, from the conditions on the rank (`None`: unbounded).
#[derive(Debug, Clone, Copy)]
struct Bounds {
    lo: i64,
    hi: Option<i64>,
}

impl Bounds {
    fn at_least(&mut self, v: i64) {
        self.lo = self.lo.max(v);
    }

    fn at_most(&mut self, v: i64) {
        self.hi = Some(self.hi.map_or(v, |h| h.min(v)));
    }
}

/// Plan nodes between a filter and the `Window` node it reads (projections and aliases, top down).
struct Levels<'a> {
    levels: Vec<&'a LogicalPlan>,
    window: &'a Window,
}

impl<'a> Levels<'a> {
    fn of(filter: &'a Filter) -> Option<Levels<'a>> {
        let mut levels = Vec::new();
        let mut cur = filter.input.as_ref();
        loop {
            match cur {
                LogicalPlan::Projection(p) => {
                    levels.push(cur);
                    cur = p.input.as_ref();
                }
                LogicalPlan::SubqueryAlias(a) => {
                    levels.push(cur);
                    cur = a.input.as_ref();
                }
                LogicalPlan::Window(window) => return Some(Levels { levels, window }),
                _ => return None,
            }
        }
    }

    /// Column `i` of the filter's input as a column of the `Window` node, if it is passed on as is
    /// or cast to a number (common subexpressions: `CAST(rn AS DOUBLE) AS __common_expr_1`).
    fn down(&self, mut i: usize) -> Option<usize> {
        for l in &self.levels {
            if let LogicalPlan::Projection(p) = l {
                i = column_index(uncast(p.expr.get(i)?), p.input.schema())?;
            }
        }
        Some(i)
    }

    /// The window expression (index into `window_expr`) a ranking column `e` of the filter's input is.
    fn rank_column(&self, e: &Expr, schema: &DFSchema) -> Option<usize> {
        let Expr::Column(c) = uncast(e) else { return None };
        let j = self.down(schema.maybe_index_of_column(c)?)?;
        let k = j.checked_sub(self.window.input.schema().fields().len())?;
        ranking(self.window.window_expr.get(k)?).map(|_| k)
    }

    /// A condition bounding a ranking column: which one, and how.
    fn bound(&self, e: &Expr, schema: &DFSchema) -> Option<(usize, BinOp, f64)> {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if let (Some(k), Some(v)) = (self.rank_column(left, schema), number(right)) {
                    return Some((k, *op, v));
                }
                let (k, v) = (self.rank_column(right, schema)?, number(left)?);
                Some((k, op.swap()?, v))
            }
            _ => None,
        }
    }
}

/// A filter that makes a Top-N of a ranking function below it; `None` if it is a plain filter.
pub fn plan_filter(conv: &mut Converter<'_>, filter: &Filter) -> Result<Option<usize>> {
    let Some(levels) = Levels::of(filter) else {
        return Ok(None);
    };
    let fschema = filter.input.schema();
    let mut bounds = Bounds { lo: 1, hi: None };
    let mut ranked: Option<usize> = None;
    let mut residual: Vec<Expr> = Vec::new();
    let mut mentions_rank = false;
    for c in split_conjunction(&filter.predicate) {
        let found: Option<(usize, Bounds)> = match c {
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => match (levels.rank_column(expr, fschema), number(low), number(high)) {
                (Some(k), Some(l), Some(h)) => Some((
                    k,
                    Bounds {
                        lo: l.ceil() as i64,
                        hi: Some(h.floor() as i64),
                    },
                )),
                _ => None,
            },
            _ => levels.bound(c, fschema).and_then(|(k, op, v)| {
                // Ranks are integers: `rn < v` is `rn <= ceil(v) - 1`, `rn > v` is `rn >= floor(v) + 1`.
                let mut b = Bounds { lo: 1, hi: None };
                match op {
                    BinOp::Lt => b.at_most((v.ceil() as i64).saturating_sub(1)),
                    BinOp::LtEq => b.at_most(v.floor() as i64),
                    BinOp::Eq => {
                        b.at_least(v.ceil() as i64);
                        b.at_most(v.floor() as i64);
                    }
                    BinOp::Gt => b.at_least((v.floor() as i64).saturating_add(1)),
                    BinOp::GtEq => b.at_least(v.ceil() as i64),
                    _ => return None,
                }
                Some((k, b))
            }),
        };
        match found {
            Some((k, b)) if ranked.is_none_or(|r| r == k) => {
                ranked = Some(k);
                bounds.at_least(b.lo);
                if let Some(h) = b.hi {
                    bounds.at_most(h);
                }
            }
            _ => {
                mentions_rank |= c
                    .column_refs()
                    .iter()
                    .any(|col| levels.rank_column(&Expr::Column((*col).clone()), fschema).is_some());
                residual.push(c.clone());
            }
        }
    }
    let k = match ranked {
        Some(k) => k,
        None if mentions_rank => {
            let (f, _) = levels
                .window
                .window_expr
                .iter()
                .find_map(ranking)
                .ok_or_else(|| Error::Internal("a rank column without a ranking function".into()))?;
            return Err(conv.locate.refuse(
                Site::Function(f.sql().to_ascii_lowercase()),
                format!(
                    "{}() OVER (…) is a Top-N only with a condition that bounds its result from above: WHERE rn <= N (or rn < N, rn = N, rn BETWEEN a AND b)",
                    f.sql()
                ),
            ));
        }
        None => return Ok(None),
    };
    let Some(hi) = bounds.hi else {
        let (f, _) = ranking(&levels.window.window_expr[k]).ok_or_else(|| Error::Internal("rank".into()))?;
        return Err(conv.locate.refuse(
            Site::Function(f.sql().to_ascii_lowercase()),
            format!(
                "{}() OVER (…) needs an upper bound on its result to be a Top-N: a stream has no last row; add rn <= N (or rn < N, rn = N)",
                f.sql()
            ),
        ));
    };
    let (lo, hi) = (bounds.lo.max(1) as u64, hi.max(0) as u64);
    let (id, props) = top_n_node(conv, levels.window, k, lo, hi)?;
    // The projections between the filter and the window, then the rest of the filter.
    let mut steps = Vec::new();
    let mut text = Vec::new();
    let mut props = props;
    for l in levels.levels.iter().rev() {
        if let LogicalPlan::Projection(p) = l {
            let in_schema = p.input.schema();
            let exprs: Vec<Arc<dyn PhysicalExpr>> = p
                .expr
                .iter()
                .map(|e| conv.physical(e, in_schema))
                .collect::<Result<_>>()?;
            let mut map: Vec<Option<usize>> = vec![None; in_schema.fields().len()];
            for (o, e) in p.expr.iter().enumerate() {
                if let Some(i) = column_index(e, in_schema)
                    && map[i].is_none()
                {
                    map[i] = Some(o);
                }
            }
            props = map_props(&props, &map);
            steps.push(Step::Project {
                exprs,
                schema: arrow(&p.schema),
            });
            text.push(format!(
                "project {}",
                p.expr.iter().map(sql).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if let Some(rest) = conjunction(residual) {
        steps.push(Step::Filter(conv.physical(&rest, fschema)?));
        text.push(format!("filter {}", sql(&rest)));
    }
    if steps.is_empty() {
        return Ok(Some(id));
    }
    Ok(Some(conv.add(
        Op::Calc(calc::Config {
            steps,
            upsert: false,
            text,
        }),
        vec![id],
        arrow(fschema),
        props,
        "",
    )))
}

/// Builds a fresh Top-N for each run.
#[derive(Clone)]
struct TopNFactory {
    cfg: top_n::Config,
    text: String,
    state: String,
}

impl OpFactory for TopNFactory {
    fn build(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(TopN::new(self.cfg.clone())?))
    }
    fn describe(&self) -> String {
        self.text.clone()
    }
    fn state(&self) -> String {
        self.state.clone()
    }
    fn clone_box(&self) -> Box<dyn OpFactory> {
        Box::new(self.clone())
    }
    fn partition_keys(&self) -> Option<PartitionKeys> {
        (!self.cfg.partition.is_empty()).then(|| PartitionKeys::one(&self.cfg.partition, &self.cfg.partition_types))
    }
}

/// Builds a fresh OVER aggregate for each run.
#[derive(Clone)]
struct OverAggFactory {
    cfg: over_agg::Config,
    text: String,
}

impl OpFactory for OverAggFactory {
    fn build(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(OverAgg::new(self.cfg.clone())?))
    }
    fn describe(&self) -> String {
        self.text.clone()
    }
    fn state(&self) -> String {
        "per partition: rows waiting for the watermark to pass their time, the rows still in their frame and the aggregates; partitions are kept (not bounded by time)".into()
    }
    fn clone_box(&self) -> Box<dyn OpFactory> {
        Box::new(self.clone())
    }
    fn partition_keys(&self) -> Option<PartitionKeys> {
        (!self.cfg.partition.is_empty()).then(|| PartitionKeys::one(&self.cfg.partition, &self.cfg.partition_types))
    }
}

fn sort_sql(s: &datafusion::logical_expr::SortExpr) -> String {
    format!("{}{}", sql(&s.expr), if s.asc { "" } else { " DESC" })
}

/// The Top-N of ranking expression `k` of `w`, keeping ranks `lo..=hi`: its node and output props.
fn top_n_node(conv: &mut Converter<'_>, w: &Window, k: usize, lo: u64, hi: u64) -> Result<(usize, Props)> {
    let (func, wf) = ranking(&w.window_expr[k]).ok_or_else(|| Error::Internal("not a ranking function".into()))?;
    let site = || Site::Function(func.sql().to_ascii_lowercase());
    if w.window_expr.len() > 1 {
        return Err(conv.locate.refuse(
            site(),
            format!(
                "{}() OVER (…) as a Top-N cannot share its SELECT with other OVER expressions; compute them in a query of their own",
                func.sql()
            ),
        ));
    }
    let p = &wf.params;
    if p.order_by.is_empty() {
        return Err(conv.locate.refuse(
            site(),
            format!(
                "{}() OVER (PARTITION BY …) needs an ORDER BY to say which rows are the top ones",
                func.sql()
            ),
        ));
    }
    let input = conv.convert(&w.input)?;
    let in_props = conv.props(input);
    let in_schema = w.input.schema();
    if in_props.mode == Mode::Upsert {
        return Err(conv.locate.refuse(
            site(),
            format!(
                "{}() OVER (…): a Top-N needs an append-only input or a full changelog; this input is an upsert stream",
                func.sql()
            ),
        ));
    }
    let arrow_in = in_schema.as_arrow();
    let partition: Vec<Arc<dyn PhysicalExpr>> = p
        .partition_by
        .iter()
        .map(|e| conv.physical(e, in_schema))
        .collect::<Result<_>>()?;
    let partition_types: Vec<DataType> = partition
        .iter()
        .map(|e| e.data_type(arrow_in))
        .collect::<std::result::Result<_, _>>()?;
    let part_cols: Option<Vec<usize>> = p.partition_by.iter().map(|e| column_index(e, in_schema)).collect();
    let order: Vec<Arc<dyn PhysicalExpr>> = p
        .order_by
        .iter()
        .map(|s| conv.physical(&s.expr, in_schema))
        .collect::<Result<_>>()?;
    let order_fields: Vec<SortField> = p
        .order_by
        .iter()
        .zip(&order)
        .map(|(s, e)| {
            Ok(SortField::new_with_options(
                e.data_type(arrow_in)?,
                SortOptions {
                    descending: !s.asc,
                    nulls_first: s.nulls_first,
                },
            ))
        })
        .collect::<Result<_>>()?;
    // Ordered by the time attribute alone: ascending or descending.
    let by_time: Option<bool> = match (p.order_by.as_slice(), in_props.rowtime) {
        ([s], Some(t)) if column_index(&s.expr, in_schema) == Some(t) => Some(s.asc),
        _ => None,
    };
    let append = in_props.mode == Mode::Append;
    let window_cols = in_props.window.and_then(|wc| match (wc.start, wc.end, &part_cols) {
        (Some(s), Some(e), Some(cols)) if append && cols.contains(&s) && cols.contains(&e) => Some((wc, s, e)),
        _ => None,
    });
    let emit = match (window_cols, in_props.rowtime) {
        (Some((_, start, end)), _) => Emit::Window { start, end },
        (None, Some(time)) if append && func == RankFn::RowNumber && lo == 1 && hi == 1 && by_time == Some(true) => {
            Emit::FirstByTime { time }
        }
        _ => Emit::Updates,
    };
    let schema = arrow(&w.schema);
    let rn = in_schema.fields().len();
    // A key: the partition (one row each when only rank 1 is kept), else the partition and rank.
    let key = match (&part_cols, func) {
        (Some(cols), RankFn::RowNumber) if hi <= 1 && !cols.is_empty() => Some(cols.clone()),
        (Some(cols), RankFn::RowNumber) => Some(cols.iter().copied().chain([rn]).collect()),
        _ => None,
    };
    let names = |v: Vec<String>| v.join(", ");
    let order_text = names(p.order_by.iter().map(sort_sql).collect());
    let part_text = names(p.partition_by.iter().map(sql).collect());
    let ranks = if lo == hi {
        format!("rank {lo}")
    } else {
        format!("ranks {lo}..{hi}")
    };
    let (props, text, state) = match emit {
        Emit::Updates => (
            Props {
                mode: Mode::Retract,
                key,
                rowtime: None,
                window: None,
            },
            format!(
                "TopN {}() PARTITION BY [{part_text}] ORDER BY [{order_text}] {ranks}, changes after every micro-batch",
                func.sql()
            ),
            if append {
                format!("per partition: the rows that can still rank {hi} or better (not bounded by time)")
            } else {
                "per partition: every row (a retraction can bring a lower row back; not bounded by time)".into()
            },
        ),
        Emit::FirstByTime { .. } => (
            Props {
                mode: Mode::Append,
                key: part_cols.clone().filter(|c| !c.is_empty()),
                rowtime: in_props.rowtime,
                window: in_props.window.map(|wc| WindowCols {
                    assigned_by: None,
                    ..wc
                }),
            },
            format!("Deduplicate first row per [{part_text}] by {order_text}, emitted once the watermark passes it"),
            "per key: its earliest row until the watermark passes it, then the key alone (not bounded by time)".into(),
        ),
        Emit::Window { .. } => {
            let wc = window_cols.map(|(wc, _, _)| wc);
            (
                Props {
                    mode: Mode::Append,
                    key,
                    rowtime: wc.and_then(|wc| wc.time.or(wc.end)),
                    window: wc.map(|wc| WindowCols {
                        assigned_by: None,
                        ..wc
                    }),
                },
                format!(
                    "WindowTopN {}() PARTITION BY [{part_text}] ORDER BY [{order_text}] {ranks}, emitted when the watermark passes window_end",
                    func.sql()
                ),
                "per window and partition: its top rows; a window is dropped when the watermark passes its end".into(),
            )
        }
    };
    let cfg = top_n::Config {
        function: func,
        partition,
        partition_types,
        order,
        order_fields,
        lo,
        hi,
        last_wins_ties: by_time == Some(false),
        emit,
        retracting: !append,
        schema: schema.clone(),
    };
    let id = conv.add(
        Op::Custom(Box::new(TopNFactory { cfg, text, state })),
        vec![input],
        schema,
        props.clone(),
        "",
    );
    Ok((id, props))
}

/// The frame of an OVER aggregate, or a refusal naming it.
fn frame_of(conv: &Converter<'_>, wf: &WindowFunction, display: &str) -> Result<Frame> {
    let f = &wf.params.window_frame;
    let refuse = |m: String| Err(conv.locate.refuse(Site::Over, format!("{display} OVER (…): {m}")));
    if !matches!(f.end_bound, WindowFrameBound::CurrentRow) {
        return refuse(
            "a frame that ends after the current row needs rows that have not arrived; end it at CURRENT ROW (… PRECEDING AND CURRENT ROW)".into(),
        );
    }
    let start = &f.start_bound;
    match f.units {
        WindowFrameUnits::Rows => match start {
            WindowFrameBound::CurrentRow => Ok(Frame::Rows(Some(0))),
            WindowFrameBound::Preceding(v) if v.is_null() => Ok(Frame::Rows(None)),
            WindowFrameBound::Preceding(v) => match v.cast_to(&DataType::UInt64) {
                Ok(ScalarValue::UInt64(Some(n))) => Ok(Frame::Rows(Some(n))),
                _ => refuse(format!("ROWS {v} PRECEDING: the count must be a non-negative integer")),
            },
            WindowFrameBound::Following(_) => refuse("the frame must start at or before the current row".into()),
        },
        WindowFrameUnits::Range => match start {
            WindowFrameBound::CurrentRow => Ok(Frame::Range(Some(0))),
            WindowFrameBound::Preceding(v) if v.is_null() => Ok(Frame::Range(None)),
            WindowFrameBound::Preceding(ScalarValue::IntervalMonthDayNano(Some(iv))) if iv.months == 0 => {
                Ok(Frame::Range(Some(
                    i64::from(iv.days) * 86_400_000 + iv.nanoseconds.div_euclid(1_000_000),
                )))
            }
            WindowFrameBound::Preceding(ScalarValue::IntervalDayTime(Some(iv))) => Ok(Frame::Range(Some(
                i64::from(iv.days) * 86_400_000 + i64::from(iv.milliseconds),
            ))),
            WindowFrameBound::Preceding(v) => refuse(format!(
                "RANGE {v} PRECEDING: over the time attribute the range is an INTERVAL of fixed length, e.g. RANGE BETWEEN INTERVAL '10' SECOND PRECEDING AND CURRENT ROW (months and years vary in length)"
            )),
            WindowFrameBound::Following(_) => refuse("the frame must start at or before the current row".into()),
        },
        WindowFrameUnits::Groups => refuse("GROUPS frames are not supported; use ROWS or RANGE".into()),
    }
}

/// The WATERMARK FOR column of a stream `plan` reads (for messages, when the column itself was not read).
fn watermarked(plan: &LogicalPlan) -> Option<String> {
    let mut found = None;
    let _ = plan.apply(|p| {
        if let LogicalPlan::TableScan(scan) = p
            && let Ok(provider) = source_as_provider(&scan.source)
            && let Some(st) = provider.downcast_ref::<StreamTable>()
            && let Some(t) = st.rowtime
        {
            found = Some(st.schema.field(t).name().clone());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// A `Window` node that is not under a Top-N filter: OVER aggregates, or a refusal.
pub fn plan_window(conv: &mut Converter<'_>, w: &Window) -> Result<usize> {
    for e in &w.window_expr {
        let wf = window_fn(e)?;
        if let WindowFunctionDefinition::WindowUDF(f) = &wf.fun {
            let name = f.name().to_ascii_lowercase();
            return Err(match rank_fn(&name) {
                Some(r) => conv.locate.refuse(
                    Site::Function(name),
                    format!(
                        "{}() OVER (…) is supported as a Top-N only: keep the top rows with a condition on its result, e.g. WHERE rn <= N (or QUALIFY rn <= N); a rank of every row would change with every later row",
                        r.sql()
                    ),
                ),
                None => conv.locate.refuse(
                    Site::Function(name.clone()),
                    format!(
                        "{}() OVER (…) is not supported in a continuous query; OVER takes COUNT, SUM, AVG, MIN or MAX ordered by the time attribute, and ROW_NUMBER, RANK or DENSE_RANK as a Top-N (… WHERE rn <= N)",
                        name.to_uppercase()
                    ),
                ),
            });
        }
    }
    let input = conv.convert(&w.input)?;
    let in_props = conv.props(input);
    let in_schema = w.input.schema();
    let nin = in_schema.fields().len();
    let first = window_fn(&w.window_expr[0])?;
    let mut calls = Vec::with_capacity(w.window_expr.len());
    for (k, e) in w.window_expr.iter().enumerate() {
        let wf = window_fn(e)?;
        let WindowFunctionDefinition::AggregateUDF(udaf) = &wf.fun else {
            return Err(Error::Internal("a window function among OVER aggregates".into()));
        };
        let p = &wf.params;
        let agg = Expr::AggregateFunction(AggregateFunction::new_udf(
            udaf.clone(),
            p.args.clone(),
            p.distinct,
            p.filter.clone(),
            vec![],
            p.null_treatment,
        ));
        let name = udaf.name().to_ascii_lowercase();
        let call = conv.agg_call(&agg, in_schema, w.schema.field(nin + k).data_type().clone())?;
        let display = call.display.clone();
        if in_props.mode != Mode::Append {
            return Err(conv.locate.refuse(
                Site::Over,
                format!(
                    "{display} OVER (…) needs an append-only input (each row is computed once, in time order); this one updates rows ({}): apply the OVER aggregate before the operator that updates, or use GROUP BY",
                    in_props.mode.name()
                ),
            ));
        }
        let attribute = match in_props
            .rowtime
            .map(|t| in_schema.field(t).name().clone())
            .or_else(|| watermarked(&w.input))
        {
            Some(t) => format!("ORDER BY {t}"),
            None => {
                "ORDER BY the column with WATERMARK FOR in CREATE SOURCE, or window_time of a window aggregate".into()
            }
        };
        match p.order_by.as_slice() {
            [s] if s.asc && in_props.rowtime.is_some() && column_index(&s.expr, in_schema) == in_props.rowtime => {}
            [] => {
                return Err(conv.locate.refuse(
                    Site::Over,
                    format!(
                        "{display} OVER (…) without ORDER BY aggregates a whole partition, which never ends on a stream; add {attribute} (a running aggregate), or use GROUP BY with a window"
                    ),
                ));
            }
            order => {
                return Err(conv.locate.refuse(
                    Site::Over,
                    format!(
                        "{display} OVER (… ORDER BY {}): an OVER aggregate on a stream is ordered by its time attribute ascending ({attribute}), so each row is computed once, when the watermark passes its time",
                        order.iter().map(sort_sql).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        if p.partition_by != first.params.partition_by {
            return Err(Error::Internal(
                "OVER aggregates of one window node partition differently".into(),
            ));
        }
        let frame = frame_of(conv, wf, &display)?;
        if matches!(call.kind, AggKind::Generic(_))
            || (frame != Frame::Rows(None) && frame != Frame::Range(None) && !call.retractable())
        {
            return Err(conv.locate.refuse(
                Site::Function(name),
                format!(
                    "{display} OVER (…) is not supported: an OVER aggregate takes COUNT, SUM, AVG, MIN or MAX (rows leave its frame as it moves)"
                ),
            ));
        }
        calls.push((call, frame));
    }
    let p = &first.params;
    let arrow_in = in_schema.as_arrow();
    let partition: Vec<Arc<dyn PhysicalExpr>> = p
        .partition_by
        .iter()
        .map(|e| conv.physical(e, in_schema))
        .collect::<Result<_>>()?;
    let partition_types: Vec<DataType> = partition
        .iter()
        .map(|e| e.data_type(arrow_in))
        .collect::<std::result::Result<_, _>>()?;
    let time = in_props
        .rowtime
        .ok_or_else(|| Error::Internal("an OVER aggregate without a time attribute".into()))?;
    let text = format!(
        "OverAggregate PARTITION BY [{}] ORDER BY {} [{}], each row emitted once the watermark passes its time",
        p.partition_by.iter().map(sql).collect::<Vec<_>>().join(", "),
        in_schema.field(time).name(),
        calls
            .iter()
            .map(|(c, f)| format!("{} {}", c.display, f.sql()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let schema = arrow(&w.schema);
    let props = Props {
        mode: Mode::Append,
        key: in_props.key.clone(),
        rowtime: Some(time),
        window: in_props.window.map(|wc| WindowCols {
            assigned_by: None,
            ..wc
        }),
    };
    let cfg = over_agg::Config {
        partition,
        partition_types,
        time,
        calls,
        schema: schema.clone(),
    };
    Ok(conv.add(
        Op::Custom(Box::new(OverAggFactory { cfg, text })),
        vec![input],
        schema,
        props,
        "",
    ))
}

#[cfg(test)]
mod tests {
    use crate::engine::query::EngineConfig;
    use crate::session::{Outcome, Session};
    use crate::sql::parser::parse_one;

    /// EXPLAIN of `query` over a stream `ev` of course views.
    async fn explain(query: &str) -> String {
        let mut s = Session::new(EngineConfig::default());
        let create = parse_one(
            "CREATE SOURCE ev (user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR,
             event_time TIMESTAMP NOT NULL, WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
             WITH (connector = 'generator', events = '10')",
        )
        .expect("parse");
        s.execute(&create).await.expect("source");
        match s.execute(&parse_one(&format!("EXPLAIN {query}")).expect("parse")).await {
            Ok(Outcome::Text(t)) => t,
            Ok(_) => panic!("EXPLAIN gives text"),
            Err(e) => panic!("{query}: {e}"),
        }
    }

    #[tokio::test]
    async fn picks_the_operator_for_each_shape() {
        let first = explain(
            "SELECT user_id, course_id FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY event_time) AS rn
             FROM ev) WHERE rn = 1",
        )
        .await;
        assert!(
            first.contains("Deduplicate first row per [ev.user_id] by ev.event_time"),
            "{first}"
        );
        assert!(
            first.contains("⇒ append, key (user_id), time attribute event_time"),
            "{first}"
        );
        let last = explain(
            "SELECT user_id, course_id, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY event_time DESC) AS rn
             FROM ev QUALIFY rn <= 1",
        )
        .await;
        assert!(
            last.contains("TopN ROW_NUMBER() PARTITION BY [ev.user_id] ORDER BY [ev.event_time DESC] rank 1"),
            "{last}"
        );
        assert!(last.contains("⇒ changelog, key (user_id)"), "{last}");
        let top = explain(
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY region ORDER BY c DESC) AS rn
             FROM (SELECT region, course_id, COUNT(*) AS c FROM ev GROUP BY region, course_id)) WHERE rn <= 3 AND c > 1",
        )
        .await;
        assert!(top.contains("ranks 1..3, changes after every micro-batch"), "{top}");
        assert!(
            top.contains("state: per partition: every row"),
            "a changelog input keeps every row: {top}"
        );
        assert!(
            top.contains("filter (c > 1)"),
            "the rest of the condition applies to the Top-N's result: {top}"
        );
        let global = explain(
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (ORDER BY c DESC) AS rn
             FROM (SELECT course_id, COUNT(*) AS c FROM ev GROUP BY course_id)) WHERE rn <= 1",
        )
        .await;
        assert!(
            global.contains("⇒ changelog, key (rn)"),
            "one row overall, keyed by its rank: {global}"
        );
        let fractional = explain(
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY course_id) AS rn FROM ev)
             WHERE rn < 2.5 AND 0.5 < rn",
        )
        .await;
        assert!(
            fractional.contains("ORDER BY [ev.course_id] ranks 1..2,"),
            "{fractional}"
        );
        let window = explain(
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY c DESC) AS rn
             FROM (SELECT window_start, window_end, course_id, COUNT(*) AS c
                   FROM TUMBLE(ev, event_time, INTERVAL '1' MINUTE) GROUP BY window_start, window_end, course_id))
             WHERE rn <= 3",
        )
        .await;
        assert!(window.contains("WindowTopN ROW_NUMBER()"), "{window}");
        assert!(
            window.contains("⇒ append, key (window_start, window_end, rn)"),
            "{window}"
        );
        let over = explain(
            "SELECT user_id, SUM(course_id) OVER (PARTITION BY user_id ORDER BY event_time
             ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s FROM ev",
        )
        .await;
        assert!(
            over.contains(
                "OverAggregate PARTITION BY [ev.user_id] ORDER BY event_time [sum(ev.course_id) ROWS 2 PRECEDING]"
            ),
            "{over}"
        );
    }
}
