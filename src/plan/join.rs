//! Planning rules for joins. What a join costs depends on what its inputs are, so the rule first asks
//! which sides read a stream:
//!
//! - stream ⋈ bounded relation (tables, materialized views' snapshots, `VALUES`): a **lookup join**
//!   ([`crate::operator::lookup_join`]); only the stream side becomes operators, DataFusion runs the
//!   bounded side when the query starts (and on refresh), and the join keeps no per-row state;
//! - stream ⋈ stream: a **window join** or an **interval join** when the condition bounds the rows in
//!   time ([`super::join_time`]), otherwise a **regular join** ([`crate::operator::stream_join`]), whose
//!   state grows with its inputs.
//!
//! `IN (SELECT …)` and `EXISTS` arrive as semi and anti joins and are planned the same way. What
//! cannot end with the batch answer is refused, naming the construct: a table's rows that no stream
//! row matches (a FULL join, or an outer join preserving the table), `NOT IN` over NULL-able columns,
//! and subqueries DataFusion turns into mark joins.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, JoinType, NullEquality};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{Expr, Join, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;

use super::context::{BoundedTable, StreamTable};
use super::convert::{Converter, map_props, refs, sql};
use super::graph::{Mode, Op, OpFactory, Props};
use super::locate::Site;
use super::tvf::{TvfTable, WindowTvfNode};
use crate::engine::lookup::LookupTable;
use crate::error::Result;
use crate::operator::Operator;
use crate::operator::lookup_join::{self, LookupJoin};
use crate::operator::partition::PartitionKeys;
use crate::operator::stream_join::{self, Emit, StreamJoin};

pub fn plan_join(conv: &mut Converter<'_>, join: &Join) -> Result<usize> {
    if matches!(join.join_type, JoinType::LeftMark | JoinType::RightMark) {
        return Err(conv.locate.refuse(
            Site::Subquery,
            "EXISTS or IN (SELECT …) combined with OR (or used as a value) is not supported in a continuous query; write it as a condition of its own in WHERE",
        ));
    }
    match (reads_stream(&join.left), reads_stream(&join.right)) {
        (true, true) => stream_stream(conv, join),
        (true, false) => lookup(conv, join, true),
        (false, true) => lookup(conv, join, false),
        (false, false) => {
            let n = number(conv, join);
            Err(conv.locate.refuse(
                site(join, n),
                "this join reads tables only; a continuous query must read a stream (join a stream to the tables)",
            ))
        }
    }
}

/// Whether a plan reads a stream source (directly, through a window function, or in a subquery).
fn reads_stream(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|p| {
        found = match p {
            LogicalPlan::TableScan(s) => source_as_provider(&s.source)
                .is_ok_and(|t| t.downcast_ref::<StreamTable>().is_some() || t.downcast_ref::<TvfTable>().is_some()),
            LogicalPlan::Extension(e) => e.node.as_any().downcast_ref::<WindowTvfNode>().is_some(),
            _ => false,
        };
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// Semi and anti joins come from `IN`/`EXISTS` subqueries, not from a JOIN the user wrote.
fn from_subquery(t: JoinType) -> bool {
    matches!(
        t,
        JoinType::LeftSemi | JoinType::LeftAnti | JoinType::RightSemi | JoinType::RightAnti
    )
}

/// This join's number among the JOINs written (call once its written-earlier inputs are converted).
fn number(conv: &mut Converter<'_>, j: &Join) -> usize {
    let n = conv.joins_seen;
    if !from_subquery(j.join_type) {
        conv.joins_seen += 1;
    }
    n
}

/// Where a refusal of this join points.
fn site(j: &Join, n: usize) -> Site {
    if from_subquery(j.join_type) {
        Site::Subquery
    } else {
        Site::Join(n)
    }
}

/// JOINs written inside a plan that is not converted (a lookup join's bounded side).
fn written_joins(plan: &LogicalPlan) -> usize {
    let mut n = 0;
    let _ = plan.apply(|p| {
        if let LogicalPlan::Join(j) = p
            && !from_subquery(j.join_type)
            && !matches!(j.join_type, JoinType::LeftMark | JoinType::RightMark)
        {
            n += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    n
}

fn arrow(schema: &DFSchema) -> SchemaRef {
    Arc::new(schema.as_arrow().clone())
}

fn type_name(t: JoinType) -> &'static str {
    match t {
        JoinType::Inner => "INNER",
        JoinType::Left => "LEFT",
        JoinType::Right => "RIGHT",
        JoinType::Full => "FULL",
        JoinType::LeftSemi => "LEFT SEMI",
        JoinType::LeftAnti => "LEFT ANTI",
        JoinType::RightSemi => "RIGHT SEMI",
        JoinType::RightAnti => "RIGHT ANTI",
        JoinType::LeftMark | JoinType::RightMark => "MARK",
    }
}

/// `on [a = b, …] where …`, for EXPLAIN.
fn condition(j: &Join) -> String {
    let on: Vec<String> = j.on.iter().map(|(l, r)| format!("{} = {}", sql(l), sql(r))).collect();
    let mut s = if on.is_empty() {
        "without equality keys".to_string()
    } else {
        format!("on [{}]", on.join(", "))
    };
    if let Some(f) = &j.filter {
        s.push_str(&format!(" where {}", sql(f)));
    }
    s
}

/// The equi-join keys as physical expressions over each input, and their type.
struct Keys {
    left: Vec<Arc<dyn PhysicalExpr>>,
    right: Vec<Arc<dyn PhysicalExpr>>,
    types: Vec<DataType>,
}

fn keys(conv: &Converter<'_>, j: &Join, at: &Site) -> Result<Keys> {
    let (ls, rs) = (j.left.schema(), j.right.schema());
    let mut k = Keys {
        left: Vec::new(),
        right: Vec::new(),
        types: Vec::new(),
    };
    for (l, r) in &j.on {
        let pl = conv.physical(l, ls)?;
        let pr = conv.physical(r, rs)?;
        let (tl, tr) = (pl.data_type(ls.as_arrow())?, pr.data_type(rs.as_arrow())?);
        if tl != tr {
            return Err(conv.locate.refuse(
                at.clone(),
                format!(
                    "the join keys {} ({tl}) and {} ({tr}) have different types; CAST one of them",
                    sql(l),
                    sql(r)
                ),
            ));
        }
        k.left.push(pl);
        k.right.push(pr);
        k.types.push(tl);
    }
    Ok(k)
}

/// The residual condition over left columns then right columns, and that schema.
fn residual(conv: &Converter<'_>, j: &Join) -> Result<(Option<Arc<dyn PhysicalExpr>>, DFSchema)> {
    let pair = j.left.schema().join(j.right.schema())?;
    let filter = j.filter.as_ref().map(|f| conv.physical(f, &pair)).transpose()?;
    Ok((filter, pair))
}

fn refuse_not_in(conv: &Converter<'_>, j: &Join, at: &Site) -> Result<()> {
    if j.null_aware {
        return Err(conv.locate.refuse(
            at.clone(),
            "NOT IN (SELECT …) over columns that may be NULL is not supported in a continuous query (one NULL would take back every row); write NOT EXISTS (SELECT … WHERE …), or declare the columns NOT NULL",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Stream ⋈ bounded relation

#[derive(Clone)]
struct LookupFactory {
    cfg: lookup_join::Config,
    text: String,
}

impl OpFactory for LookupFactory {
    fn build(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(LookupJoin::new(self.cfg.clone())?))
    }
    fn describe(&self) -> String {
        self.text.clone()
    }
    fn state(&self) -> String {
        "the table's rows hashed on the join key (read when the query starts, and on refresh); nothing per stream row"
            .into()
    }
    fn clone_box(&self) -> Box<dyn OpFactory> {
        Box::new(self.clone())
    }
}

/// Names of the tables a bounded plan reads.
fn tables_of(plan: &LogicalPlan) -> Vec<String> {
    let mut v = Vec::new();
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(s) = p {
            v.push(s.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    v.sort();
    v.dedup();
    v
}

/// The shortest `refresh_interval_ms` of the tables a bounded plan reads.
fn refresh_of(plan: &LogicalPlan) -> Option<Duration> {
    let mut min: Option<Duration> = None;
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(s) = p
            && let Ok(t) = source_as_provider(&s.source)
            && let Some(b) = t.downcast_ref::<BoundedTable>()
            && let Some(inner) = &b.inner
            && let Some(every) = inner
                .downcast_ref::<LookupTable>()
                .and_then(LookupTable::refresh_interval)
        {
            min = Some(min.map_or(every, |m| m.min(every)));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    min
}

fn lookup(conv: &mut Converter<'_>, j: &Join, stream_left: bool) -> Result<usize> {
    let (stream_plan, table_plan) = if stream_left {
        (&j.left, &j.right)
    } else {
        (&j.right, &j.left)
    };
    // Convert in the order written, so refusals further on point at the right JOIN.
    let (input, n) = if stream_left {
        let input = conv.convert(stream_plan)?;
        let n = number(conv, j);
        conv.joins_seen += written_joins(table_plan);
        (input, n)
    } else {
        conv.joins_seen += written_joins(table_plan);
        let n = number(conv, j);
        (conv.convert(stream_plan)?, n)
    };
    let at = site(j, n);
    let tables = tables_of(table_plan);
    let table = if tables.is_empty() {
        "constant rows".to_string()
    } else {
        format!("table '{}'", tables.join("', '"))
    };
    let kind = lookup_kind(conv, j, stream_left, &at, &table)?;
    let in_props = conv.props(input);
    if in_props.mode == Mode::Upsert {
        return Err(conv.locate.refuse(
            at,
            "this join's stream input is an upsert stream (rows replace rows with the same key); join before the aggregate that makes it",
        ));
    }
    let k = keys(conv, j, &at)?;
    let (filter, pair) = residual(conv, j)?;
    let (stream_keys, table_keys) = if stream_left {
        (k.left, k.right)
    } else {
        (k.right, k.left)
    };
    // Where the stream's columns start in the pairs the condition reads, and in the output.
    let offset = if stream_left {
        0
    } else {
        table_plan.schema().fields().len()
    };
    let out_offset = if matches!(kind, lookup_join::Kind::Semi | lookup_join::Kind::Anti) {
        0
    } else {
        offset
    };
    let stream_len = stream_plan.schema().fields().len();
    let out_at: Vec<Option<usize>> = (0..stream_len).map(|i| Some(i + out_offset)).collect();
    let mut props = map_props(&in_props, &out_at);
    // A stream row may meet several table rows: the stream's key does not identify output rows.
    props.key = None;
    let window_cols: Vec<usize> = in_props
        .window
        .map(|w| [w.start, w.end, w.time].into_iter().flatten().collect())
        .unwrap_or_default();
    let reads_window = reads_columns(j, stream_left, &pair, offset, &window_cols);
    let cfg = lookup_join::Config {
        kind,
        stream_left,
        stream_keys,
        table_keys,
        key_types: k.types,
        null_equal: j.null_equality == NullEquality::NullEqualsNull,
        null_aware: j.null_aware,
        filter,
        pair_schema: arrow(&pair),
        schema: arrow(&j.schema),
        table: table_plan.clone(),
        table_schema: arrow(table_plan.schema()),
        refresh: refresh_of(table_plan),
    };
    let refresh = cfg
        .refresh
        .map(|d| format!(", re-read every {}", crate::operator::window::dur(d.as_millis() as i64)))
        .unwrap_or_default();
    let text = format!(
        "LookupJoin {} {} with {table} (read when the query starts{refresh})",
        type_name(j.join_type),
        condition(j)
    );
    let id = conv.add(
        Op::Custom(Box::new(LookupFactory { cfg, text })),
        vec![input],
        arrow(&j.schema),
        props,
        "",
    );
    // Rows pass one by one with their window columns as they were: a window aggregate above may
    // still take panes from the window function below, unless the join reads those columns.
    if !reads_window {
        conv.row_wise.insert(id);
    }
    Ok(id)
}

/// Which stream rows a lookup join emits, or the refusal of a join that would have to emit table
/// rows no stream row matches.
fn lookup_kind(conv: &Converter<'_>, j: &Join, stream_left: bool, at: &Site, table: &str) -> Result<lookup_join::Kind> {
    let kind = match (j.join_type, stream_left) {
        (JoinType::Inner, _) => lookup_join::Kind::Inner,
        (JoinType::Left, true) | (JoinType::Right, false) => lookup_join::Kind::Outer,
        (JoinType::LeftSemi, true) | (JoinType::RightSemi, false) => lookup_join::Kind::Semi,
        (JoinType::LeftAnti, true) | (JoinType::RightAnti, false) => lookup_join::Kind::Anti,
        (JoinType::Full, _) | (JoinType::Left, false) | (JoinType::Right, true) => {
            let keep = if stream_left { "LEFT" } else { "RIGHT" };
            return Err(conv.locate.refuse(
                at.clone(),
                format!(
                    "a {} JOIN of a stream and {table} is not supported in a continuous query: it keeps the table's rows that no stream row matches, and which those are changes with every stream row; keep the stream's rows only ({keep} JOIN with the stream on the {} side) or use an inner join",
                    type_name(j.join_type),
                    keep.to_lowercase()
                ),
            ));
        }
        _ => {
            return Err(conv.locate.refuse(
                at.clone(),
                format!(
                    "rows of {table} filtered by IN/EXISTS over a stream are not supported in a continuous query (which of them qualify changes with every stream row)"
                ),
            ));
        }
    };
    // NOT IN against a table is decided per stream row; with a condition besides the key (a correlated
    // NOT IN), which table rows count depends on the stream row: refused.
    if kind != lookup_join::Kind::Anti || j.filter.is_some() {
        refuse_not_in(conv, j, at)?;
    }
    Ok(kind)
}

/// Whether a lookup join's keys or condition read any of the stream's columns `cols` (the stream's
/// columns start at `offset` in `pair`, the schema the condition reads).
fn reads_columns(j: &Join, stream_left: bool, pair: &DFSchema, offset: usize, cols: &[usize]) -> bool {
    let stream_schema = if stream_left { j.left.schema() } else { j.right.schema() };
    let stream_len = stream_schema.fields().len();
    let in_keys =
        j.on.iter()
            .map(|(l, r)| if stream_left { l } else { r })
            .any(|e| refs(e, stream_schema).iter().any(|i| cols.contains(i)));
    let in_filter = j.filter.as_ref().is_some_and(|f: &Expr| {
        refs(f, pair).iter().any(|i| {
            i.checked_sub(offset)
                .is_some_and(|s| s < stream_len && cols.contains(&s))
        })
    });
    in_keys || in_filter
}

// ---------------------------------------------------------------------------------------------------
// Stream ⋈ stream

#[derive(Clone)]
struct RegularFactory {
    cfg: stream_join::Config,
    text: String,
}

impl OpFactory for RegularFactory {
    fn build(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(StreamJoin::new(self.cfg.clone())?))
    }
    fn describe(&self) -> String {
        self.text.clone()
    }
    fn state(&self) -> String {
        "per join key, each side's rows with their multiplicity and match count; kept until retracted (not bounded by time)"
            .into()
    }
    fn clone_box(&self) -> Box<dyn OpFactory> {
        Box::new(self.clone())
    }
    fn partition_keys(&self) -> Option<PartitionKeys> {
        let keys = &self.cfg.keys;
        (!self.cfg.key_types.is_empty()).then(|| PartitionKeys {
            ports: keys.to_vec(),
            types: self.cfg.key_types.clone(),
        })
    }
}

fn stream_stream(conv: &mut Converter<'_>, j: &Join) -> Result<usize> {
    let left = conv.convert(&j.left)?;
    let n = number(conv, j);
    let right = conv.convert(&j.right)?;
    if let Some(id) = super::join_time::try_window_join(conv, j, left, right)? {
        return Ok(id);
    }
    if let Some(id) = super::join_time::try_interval_join(conv, j, left, right)? {
        return Ok(id);
    }
    regular(conv, j, [left, right], site(j, n))
}

fn regular(conv: &mut Converter<'_>, j: &Join, inputs: [usize; 2], at: Site) -> Result<usize> {
    let (pairs, emit) = match j.join_type {
        JoinType::Inner => (true, [None, None]),
        JoinType::Left => (true, [Some(Emit::Padded), None]),
        JoinType::Right => (true, [None, Some(Emit::Padded)]),
        JoinType::Full => (true, [Some(Emit::Padded), Some(Emit::Padded)]),
        JoinType::LeftSemi => (false, [Some(Emit::Semi), None]),
        JoinType::LeftAnti => (false, [Some(Emit::Anti), None]),
        JoinType::RightSemi => (false, [None, Some(Emit::Semi)]),
        JoinType::RightAnti => (false, [None, Some(Emit::Anti)]),
        JoinType::LeftMark | JoinType::RightMark => {
            return Err(conv
                .locate
                .refuse(at, "this subquery is not supported in a continuous query"));
        }
    };
    refuse_not_in(conv, j, &at)?;
    let modes = [conv.props(inputs[0]).mode, conv.props(inputs[1]).mode];
    if modes.contains(&Mode::Upsert) {
        return Err(conv.locate.refuse(
            at,
            "this join's input is an upsert stream (rows replace rows with the same key); join before the aggregate that makes it",
        ));
    }
    let k = keys(conv, j, &at)?;
    let (filter, pair) = residual(conv, j)?;
    let inputs_schemas = [arrow(j.left.schema()), arrow(j.right.schema())];
    if let Some(c) = inputs_schemas.iter().find_map(stream_join::unstorable) {
        return Err(conv.locate.refuse(
            at,
            format!("a stream–stream join keeps its inputs' rows, and column {c} cannot be kept; leave it out of the join's inputs"),
        ));
    }
    // Inserts only stay inserts: an inner join's pairs, and a semi join's rows (matches only grow).
    let only_grows = matches!(j.join_type, JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi);
    let mode = if only_grows && modes == [Mode::Append, Mode::Append] {
        Mode::Append
    } else {
        Mode::Retract
    };
    let cfg = stream_join::Config {
        pairs,
        emit,
        keys: [k.left, k.right],
        key_types: k.types,
        null_equal: j.null_equality == NullEquality::NullEqualsNull,
        filter,
        inputs: inputs_schemas,
        append_only: modes.map(|m| m == Mode::Append),
        pair_schema: arrow(&pair),
        schema: arrow(&j.schema),
    };
    let text = format!(
        "Join {} {} (regular: state kept per key, not bounded by time)",
        type_name(j.join_type),
        condition(j)
    );
    // A regular join's rows come out when they match, in no time order: no time attribute or
    // window survives it, and a stream row may pair with many, so no key either.
    let props = Props {
        mode,
        key: None,
        rowtime: None,
        window: None,
    };
    Ok(conv.add(
        Op::Custom(Box::new(RegularFactory { cfg, text })),
        inputs.to_vec(),
        arrow(&j.schema),
        props,
        "",
    ))
}
