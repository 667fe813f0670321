//! DataFusion's optimized `LogicalPlan` → the operator graph, one rule per plan node. Every node
//! either maps to an operator with streaming semantics or the query is refused, naming the
//! construct and its position.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;

use super::context::{BoundedTable, StreamTable};
use super::graph::{Graph, Mode, Node, Op, Props, WindowCols};
use super::locate::{Locator, Site};
use super::tvf::WindowTvfNode;
use crate::error::{Error, Result};
use crate::operator::acc::{AggCall, AggKind};
use crate::operator::calc::{self, Step};
use crate::operator::window::WindowSpec;
use crate::operator::window_agg::OutCol;
use crate::operator::{session_agg, updating_agg, window_agg, window_tvf};

pub struct Converter<'a> {
    pub graph: Graph,
    pub locate: &'a Locator,
    props: ExecutionProps,
    /// Calc nodes that compute from window columns (not just pass them on).
    uses_window: HashSet<usize>,
    /// Nodes besides Calcs that take each row on its own and pass its window columns on untouched
    /// (lookup joins not reading them): a window function below them can still hand out panes.
    pub row_wise: HashSet<usize>,
    /// Joins converted so far (to locate the n-th).
    pub joins_seen: usize,
    /// Stream sources read that have no WATERMARK.
    no_watermark: Vec<String>,
    /// Window function nodes, with where the call is.
    pub tvfs: Vec<(usize, (u64, u64))>,
}

/// The innermost expression under aliases.
pub fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

/// An expression as SQL, for EXPLAIN and messages.
pub fn sql(e: &Expr) -> String {
    match datafusion::sql::unparser::expr_to_sql(e) {
        Ok(s) => s.to_string(),
        Err(_) => e.to_string(),
    }
}

/// The input column an expression is, if it is a plain column reference.
pub fn column_index(e: &Expr, schema: &DFSchema) -> Option<usize> {
    match unalias(e) {
        Expr::Column(c) => schema.maybe_index_of_column(c),
        _ => None,
    }
}

fn arrow(schema: &DFSchema) -> SchemaRef {
    Arc::new(schema.as_arrow().clone())
}

impl<'a> Converter<'a> {
    pub fn new(locate: &'a Locator) -> Converter<'a> {
        Converter {
            graph: Graph::default(),
            locate,
            props: ExecutionProps::new(),
            uses_window: HashSet::new(),
            row_wise: HashSet::new(),
            joins_seen: 0,
            no_watermark: Vec::new(),
            tvfs: Vec::new(),
        }
    }

    pub fn physical(&self, e: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(datafusion::physical_expr::create_physical_expr(
            e,
            schema,
            &self.props,
            &PhysicalPlanningContext::default(),
        )?)
    }

    pub fn props(&self, id: usize) -> Props {
        self.graph.nodes[id].props.clone()
    }

    pub fn add(
        &mut self,
        op: Op,
        inputs: Vec<usize>,
        schema: SchemaRef,
        props: Props,
        note: impl Into<String>,
    ) -> usize {
        self.graph.add(Node {
            op,
            inputs,
            schema,
            props,
            note: note.into(),
        })
    }

    /// Convert a plan node (and its inputs) and return the node that yields its rows.
    pub fn convert(&mut self, plan: &LogicalPlan) -> Result<usize> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let provider = source_as_provider(&scan.source)?;
                let name = scan.table_name.table().to_string();
                if let Some(st) = provider.downcast_ref::<StreamTable>() {
                    if scan.fetch.is_some() {
                        return Err(self.locate.refuse(Site::Limit, "LIMIT on a stream has no end; refused"));
                    }
                    let schema = arrow(&scan.projected_schema);
                    if st.rowtime.is_none() && !st.changelog {
                        self.no_watermark.push(st.name.clone());
                    }
                    let rowtime = match &scan.projection {
                        None => st.rowtime,
                        Some(p) => st.rowtime.and_then(|t| p.iter().position(|i| *i == t)),
                    };
                    let props = Props {
                        mode: if st.changelog { Mode::Retract } else { Mode::Append },
                        key: None,
                        rowtime,
                        window: None,
                    };
                    return Ok(self.add(
                        Op::Source {
                            name: st.name.clone(),
                            projection: scan.projection.clone(),
                        },
                        vec![],
                        schema,
                        props,
                        "",
                    ));
                }
                if provider.downcast_ref::<BoundedTable>().is_some() {
                    return Err(self.locate.refuse(
                        Site::Relation(name.clone()),
                        format!(
                            "'{name}' is a table: a continuous query can join a stream to it (a lookup join), but not read it as a stream"
                        ),
                    ));
                }
                Err(self.locate.refuse(
                    Site::Relation(name.clone()),
                    format!("'{name}' cannot be read by a continuous query"),
                ))
            }
            LogicalPlan::SubqueryAlias(a) => self.convert(&a.input),
            LogicalPlan::Projection(p) => {
                let input = self.convert(&p.input)?;
                let in_schema = p.input.schema();
                let exprs: Vec<Arc<dyn PhysicalExpr>> = p
                    .expr
                    .iter()
                    .map(|e| self.physical(e, in_schema))
                    .collect::<Result<_>>()?;
                let schema = arrow(&p.schema);
                let mut map: Vec<Option<usize>> = vec![None; in_schema.fields().len()];
                for (o, e) in p.expr.iter().enumerate() {
                    if let Some(i) = column_index(e, in_schema)
                        && map[i].is_none()
                    {
                        map[i] = Some(o);
                    }
                }
                let in_props = self.props(input);
                let computes_from_window = in_props.window.is_some_and(|w| {
                    let wc: HashSet<usize> = [w.start, w.end, w.time].into_iter().flatten().collect();
                    p.expr
                        .iter()
                        .any(|e| column_index(e, in_schema).is_none() && refs(e, in_schema).iter().any(|i| wc.contains(i)))
                });
                let props = map_props(&in_props, &map);
                let text = format!("project {}", p.expr.iter().map(sql).collect::<Vec<_>>().join(", "));
                Ok(self.calc(input, Step::Project { exprs, schema: schema.clone() }, text, schema, props, computes_from_window))
            }
            LogicalPlan::Filter(f) => {
                if let Some(id) = super::over::plan_filter(self, f)? {
                    return Ok(id);
                }
                if has_subquery(&f.predicate) {
                    return Err(self.locate.refuse(
                        Site::Subquery,
                        "a subquery in WHERE that DataFusion cannot turn into a join is not supported in a continuous query",
                    ));
                }
                let input = self.convert(&f.input)?;
                let in_schema = f.input.schema();
                let pred = self.physical(&f.predicate, in_schema)?;
                let in_props = self.props(input);
                let on_window = in_props.window.is_some_and(|w| {
                    refs(&f.predicate, in_schema)
                        .iter()
                        .any(|i| [w.start, w.end, w.time].contains(&Some(*i)))
                });
                let schema = self.graph.nodes[input].schema.clone();
                let text = format!("filter {}", sql(&f.predicate));
                Ok(self.calc(input, Step::Filter(pred), text, schema, in_props, on_window))
            }
            LogicalPlan::Aggregate(a) => self.aggregate(a),
            LogicalPlan::Extension(ext) => {
                let Some(node) = ext.node.as_any().downcast_ref::<WindowTvfNode>() else {
                    return Err(Error::Internal(format!("unknown plan extension {}", ext.node.name())));
                };
                self.window_tvf(node)
            }
            LogicalPlan::Union(u) => {
                let mut inputs = Vec::new();
                for i in &u.inputs {
                    inputs.push(self.convert(i)?);
                }
                let mut mode = Mode::Append;
                let mut rowtime = self.props(inputs[0]).rowtime;
                for i in &inputs {
                    let p = self.props(*i);
                    mode = mode.merge(p.mode);
                    if p.rowtime != rowtime {
                        rowtime = None;
                    }
                }
                let props = Props {
                    mode,
                    key: None,
                    rowtime,
                    window: None,
                };
                Ok(self.add(Op::Union, inputs, arrow(&u.schema), props, "UNION ALL"))
            }
            LogicalPlan::Join(j) => super::join::plan_join(self, j),
            LogicalPlan::Window(w) => super::over::plan_window(self, w),
            LogicalPlan::Sort(sort) => Err(self.locate.refuse(
                Site::OrderBy,
                format!(
                    "{} inside a continuous query has no meaning on an unbounded stream; refused (ORDER BY … LIMIT on a live SELECT only orders what is shown; for a Top-N write ROW_NUMBER() OVER (PARTITION BY … ORDER BY …) … WHERE rn <= N)",
                    if sort.fetch.is_some() { "ORDER BY … LIMIT" } else { "ORDER BY" }
                ),
            )),
            LogicalPlan::Limit(_) => Err(self.locate.refuse(
                Site::Limit,
                "LIMIT inside a continuous query has no meaning on an unbounded stream; refused (for a Top-N write ROW_NUMBER() OVER (PARTITION BY … ORDER BY …) … WHERE rn <= N)",
            )),
            LogicalPlan::Distinct(_) => Err(self.locate.refuse(Site::Distinct, "DISTINCT ON is not supported in a continuous query")),
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => Err(self.locate.refuse(
                Site::Query,
                "a continuous query must read a stream; this part reads constant rows only",
            )),
            LogicalPlan::Unnest(_) => Err(self.locate.refuse(Site::Query, "UNNEST is not supported in a continuous query yet")),
            LogicalPlan::Subquery(_) => Err(self.locate.refuse(Site::Subquery, "a correlated subquery is not supported in a continuous query")),
            other => Err(self.locate.refuse(
                Site::Query,
                format!("{} is not supported in a continuous query", other.display()),
            )),
        }
    }

    /// Append a Calc step, merging into the input when it is a Calc already.
    fn calc(
        &mut self,
        input: usize,
        step: Step,
        text: String,
        schema: SchemaRef,
        props: Props,
        uses_window: bool,
    ) -> usize {
        let id = if let Op::Calc(c) = &mut self.graph.nodes[input].op {
            c.steps.push(step);
            c.text.push(text);
            self.graph.nodes[input].schema = schema;
            self.graph.nodes[input].props = props;
            input
        } else {
            self.add(
                Op::Calc(calc::Config {
                    steps: vec![step],
                    upsert: false,
                    text: vec![text],
                }),
                vec![input],
                schema,
                props,
                "",
            )
        };
        if uses_window {
            self.uses_window.insert(id);
        }
        id
    }

    fn window_tvf(&mut self, node: &WindowTvfNode) -> Result<usize> {
        let call = &node.call;
        let err = |m: String| Error::Sql {
            line: call.at.0,
            col: call.at.1,
            message: m,
        };
        let input = self.convert(&node.input)?;
        let in_schema = node.input.schema();
        let t = in_schema
            .fields()
            .iter()
            .position(|f| *f.name() == call.time_col)
            .ok_or_else(|| {
                err(format!(
                    "{}: '{}' has no column {}",
                    call.function, call.input, call.time_col
                ))
            })?;
        let in_props = self.props(input);
        if in_props.mode != Mode::Append {
            return Err(err(format!(
                "{}: '{}' is an updating result ({}); windows need an append-only input",
                call.function,
                call.input,
                in_props.mode.name()
            )));
        }
        if in_props.rowtime.is_none()
            && let Some(s) = self.no_watermark.first()
        {
            return Err(Error::plan(format!(
                "source '{s}' has no WATERMARK; windows need one: WATERMARK FOR col AS col - INTERVAL '5' SECOND"
            )));
        }
        if in_props.rowtime != Some(t) {
            let have = in_props
                .rowtime
                .map(|r| format!("; its time attribute is {}", in_schema.field(r).name()))
                .unwrap_or_default();
            return Err(err(format!(
                "{}: {} is not a time attribute of '{}' (a column with WATERMARK FOR in CREATE SOURCE, or window_time of a window aggregate){have}",
                call.function, call.time_col, call.input
            )));
        }
        let n = in_schema.fields().len();
        let schema = arrow(&node.schema);
        let id = self.graph.nodes.len();
        self.tvfs.push((id, call.at));
        let props = Props {
            mode: Mode::Append,
            key: None,
            rowtime: Some(t),
            window: Some(WindowCols {
                spec: call.spec,
                start: Some(n),
                end: Some(n + 1),
                time: Some(n + 2),
                assigned_by: Some(id),
            }),
        };
        Ok(self.add(
            Op::WindowTvf(window_tvf::Config {
                window: call.spec,
                time_idx: t,
                time_name: call.time_col.clone(),
                partition: call.partition.clone(),
                panes: false,
                schema: schema.clone(),
            }),
            vec![input],
            schema,
            props,
            format!("{} over {}", call.function, call.input),
        ))
    }

    /// Checks once every node is converted: a SESSION window function must feed an aggregate (its
    /// windows exist only by merging rows).
    pub fn finish(&self) -> Result<()> {
        for (id, (line, col)) in &self.tvfs {
            if let Op::WindowTvf(c) = &self.graph.nodes[*id].op
                && c.window.is_session()
                && !c.panes
            {
                return Err(Error::Sql {
                    line: *line,
                    col: *col,
                    message: "SESSION windows need an aggregate over them: GROUP BY …, window_start, window_end".into(),
                });
            }
        }
        Ok(())
    }

    /// Compile an aggregate call.
    pub fn agg_call(&self, e: &Expr, in_schema: &DFSchema, return_type: DataType) -> Result<AggCall> {
        let inner = unalias(e);
        let Expr::AggregateFunction(af) = inner else {
            return Err(Error::Internal(format!("not an aggregate call: {e}")));
        };
        let name = af.func.name().to_ascii_lowercase();
        let p = &af.params;
        let display = sql(inner);
        let args: Vec<Arc<dyn PhysicalExpr>> = p
            .args
            .iter()
            .map(|a| self.physical(a, in_schema))
            .collect::<Result<_>>()?;
        let filter = p.filter.as_ref().map(|f| self.physical(f, in_schema)).transpose()?;
        let simple = p.order_by.is_empty() && p.null_treatment.is_none();
        let one = p.args.len() == 1;
        let incremental_sum = matches!(
            return_type,
            DataType::Int64 | DataType::UInt64 | DataType::Float64 | DataType::Decimal128(_, _)
        );
        let kind = match name.as_str() {
            "count" if simple && !p.distinct && (p.args.is_empty() || (one && is_non_null_literal(&p.args[0]))) => {
                AggKind::CountStar
            }
            "count" if simple && one => AggKind::Count,
            "sum" if simple && one && !p.distinct && incremental_sum => AggKind::Sum,
            "avg" | "mean" if simple && one && !p.distinct && return_type == DataType::Float64 => AggKind::Avg,
            "min" if simple && one => AggKind::Min,
            "max" if simple && one => AggKind::Max,
            _ => {
                let lowered = LoweredAggregateBuilder::new(
                    e,
                    in_schema,
                    in_schema.as_arrow(),
                    &self.props,
                    &PhysicalPlanningContext::default(),
                )
                .build()?;
                AggKind::Generic(lowered.aggregate)
            }
        };
        Ok(AggCall {
            display,
            kind,
            args: if matches!(name.as_str(), "count") && p.args.len() == 1 && is_non_null_literal(&p.args[0]) {
                vec![]
            } else {
                args
            },
            filter,
            distinct: p.distinct,
            return_type,
        })
    }

    fn aggregate(&mut self, a: &Aggregate) -> Result<usize> {
        if a.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
            return Err(self.locate.refuse(
                Site::GroupBy,
                "GROUPING SETS, CUBE and ROLLUP are not supported in a continuous query",
            ));
        }
        let input = self.convert(&a.input)?;
        let in_props = self.props(input);
        let in_schema = a.input.schema();
        let out_schema = arrow(&a.schema);
        let ngroups = a.group_expr.len();
        let mut cols: Vec<OutCol> = Vec::new();
        let mut keys: Vec<&Expr> = Vec::new();
        for e in &a.group_expr {
            let idx = column_index(e, in_schema);
            let w = in_props.window;
            let c = match (idx, w) {
                (Some(i), Some(w)) if w.start == Some(i) => OutCol::Start,
                (Some(i), Some(w)) if w.end == Some(i) => OutCol::End,
                (Some(i), Some(w)) if w.time == Some(i) => OutCol::Time,
                _ => {
                    keys.push(e);
                    OutCol::Key(keys.len() - 1)
                }
            };
            cols.push(c);
        }
        let key_exprs: Vec<Arc<dyn PhysicalExpr>> = keys
            .iter()
            .map(|e| self.physical(e, in_schema))
            .collect::<Result<_>>()?;
        let key_types: Vec<DataType> = cols
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c, OutCol::Key(_)))
            .map(|(i, _)| out_schema.field(i).data_type().clone())
            .collect();
        let key_names: Vec<String> = keys.iter().map(|e| sql(e)).collect();
        let calls: Vec<AggCall> = a
            .aggr_expr
            .iter()
            .enumerate()
            .map(|(j, e)| self.agg_call(e, in_schema, out_schema.field(ngroups + j).data_type().clone()))
            .collect::<Result<_>>()?;
        let calls: Arc<[AggCall]> = calls.into();
        let windowed = cols.iter().any(|c| matches!(c, OutCol::Start | OutCol::End));
        let key_positions: Vec<usize> = cols
            .iter()
            .enumerate()
            .filter(|(_, c)| !matches!(c, OutCol::Time))
            .map(|(i, _)| i)
            .collect();
        if !windowed {
            if in_props.mode != Mode::Append
                && let Some(c) = calls.iter().find(|c| !c.retractable())
            {
                return Err(self.locate.refuse(
                    Site::Function(agg_name(c)),
                    format!(
                        "{}: this aggregate cannot take back rows, and its input is an updating result; refused (COUNT, SUM, AVG, MIN, MAX and COUNT(DISTINCT) can)",
                        c.display
                    ),
                ));
            }
            let props = Props {
                mode: Mode::Retract,
                key: Some((0..ngroups).collect()),
                rowtime: None,
                window: None,
            };
            let note = if calls.is_empty() {
                "DISTINCT / GROUP BY without aggregates"
            } else {
                ""
            };
            return Ok(self.add(
                Op::UpdatingAgg(updating_agg::Config {
                    keys: key_exprs,
                    key_names,
                    key_types,
                    calls,
                    schema: out_schema.clone(),
                    retracting: in_props.mode != Mode::Append,
                    state_ttl: None,
                }),
                vec![input],
                out_schema,
                props,
                note,
            ));
        }
        let w = in_props
            .window
            .ok_or_else(|| Error::Internal("window columns without a window".into()))?;
        if in_props.mode != Mode::Append {
            return Err(self.locate.refuse(
                Site::GroupBy,
                "a window aggregate needs an append-only input; this one updates rows",
            ));
        }
        let pos = |want: OutCol| cols.iter().position(|c| *c == want);
        let out_window = WindowCols {
            spec: w.spec,
            start: pos(OutCol::Start),
            end: pos(OutCol::End),
            time: pos(OutCol::Time),
            assigned_by: None,
        };
        let props = Props {
            mode: Mode::Append,
            key: Some(key_positions),
            rowtime: pos(OutCol::Time).or(pos(OutCol::End)),
            window: Some(out_window),
        };
        // The time of each row: its pane (or its window, or for sessions its own time) from the window
        // start column, or from the end.
        let (time_col, shift_of_end) = match (w.start, w.end) {
            (Some(s), _) if cols.contains(&OutCol::Start) || w.end.is_none() => (s, false),
            (_, Some(e)) => (e, true),
            (Some(s), None) => (s, false),
            (None, None) => return Err(Error::Internal("a window without bounds".into())),
        };
        let time_expr: Arc<dyn PhysicalExpr> = Arc::new(datafusion::physical_expr::expressions::Column::new(
            in_schema.field(time_col).name(),
            time_col,
        ));
        // Can the window function above hand out panes (rows unexploded)?
        let panes_ok = match w.assigned_by {
            Some(tvf) => self.passes_panes(input, tvf),
            None => false,
        };
        let merges = matches!(
            w.spec,
            WindowSpec::Hop { .. } | WindowSpec::Cumulate { .. } | WindowSpec::Session { .. }
        );
        if let Some(tvf) = w.assigned_by {
            if panes_ok {
                if let Op::WindowTvf(c) = &mut self.graph.nodes[tvf].op {
                    c.panes = true;
                }
            } else if merges {
                return Err(self.locate.refuse(
                    Site::GroupBy,
                    format!(
                        "{}: a condition or expression on window_start/window_end/window_time between the window function and its GROUP BY is not supported; apply it in HAVING or after the aggregate",
                        w.spec.describe()
                    ),
                ));
            }
        }
        let (op_spec, pane_shift) = match (w.spec, w.assigned_by) {
            (WindowSpec::Session { gap }, Some(_)) => (w.spec, if shift_of_end { gap } else { 0 }),
            (WindowSpec::Tumble { size }, _) => (w.spec, if shift_of_end { size } else { 0 }),
            (spec @ (WindowSpec::Hop { .. } | WindowSpec::Cumulate { .. }), Some(_)) => {
                (spec, if shift_of_end { spec.pane() } else { 0 })
            }
            (WindowSpec::Hop { size, .. }, None) if !shift_of_end => (WindowSpec::Windowed { size }, 0),
            (WindowSpec::Hop { size, .. }, None) => (WindowSpec::Windowed { size }, size),
            (spec, _) => {
                return Err(self.locate.refuse(
                    Site::GroupBy,
                    format!(
                        "a window aggregate over the result of a {} window aggregate is not supported yet",
                        spec.describe()
                    ),
                ));
            }
        };
        if let WindowSpec::Session { gap } = op_spec {
            // Flink: sessions are per PARTITION BY key, which must be the GROUP BY keys.
            if let Some(tvf) = w.assigned_by {
                let part = self.session_partition(tvf);
                if !part.is_empty() {
                    let mut a: Vec<String> = part.clone();
                    // By column name: the keys' SQL would quote names that are keywords
                    // (`ev."region"`).
                    let mut b: Vec<String> = keys
                        .iter()
                        .map(|e| match unalias(e) {
                            Expr::Column(c) => c.name.clone(),
                            other => sql(other),
                        })
                        .collect();
                    a.sort();
                    b.sort();
                    if a != b {
                        return Err(self.locate.refuse(
                            Site::GroupBy,
                            format!(
                                "SESSION … PARTITION BY ({}) must list the same keys as the GROUP BY ({})",
                                part.join(", "),
                                key_names.join(", ")
                            ),
                        ));
                    }
                }
            }
            return Ok(self.add(
                Op::SessionAgg(session_agg::Config {
                    gap,
                    keys: key_exprs,
                    key_names,
                    key_types,
                    time: time_expr,
                    time_shift: pane_shift,
                    columns: cols,
                    calls,
                    schema: out_schema.clone(),
                }),
                vec![input],
                out_schema,
                props,
                "",
            ));
        }
        if matches!(op_spec, WindowSpec::Hop { .. } | WindowSpec::Cumulate { .. })
            && let Some(c) = calls.iter().find(|c| !c.mergeable_repeatedly())
        {
            return Err(self.locate.refuse(
                Site::Function(agg_name(c)),
                format!(
                    "{}: {} windows are merged from panes, which this aggregate cannot do; use COUNT, SUM, AVG, MIN, MAX or COUNT(DISTINCT), or a TUMBLE window",
                    c.display,
                    w.spec.describe()
                ),
            ));
        }
        Ok(self.add(
            Op::WindowAgg(window_agg::Config {
                window: op_spec,
                keys: key_exprs,
                key_names,
                key_types,
                pane: time_expr,
                pane_shift,
                columns: cols,
                calls,
                schema: out_schema.clone(),
                early_fire: false,
            }),
            vec![input],
            out_schema,
            props,
            "",
        ))
    }

    /// Whether rows reach node `id` from window function node `tvf` only through Calcs that do not
    /// compute from the window columns and [`Self::row_wise`] nodes.
    fn passes_panes(&self, mut id: usize, tvf: usize) -> bool {
        while id != tvf {
            let n = &self.graph.nodes[id];
            let row_wise = matches!(n.op, Op::Calc(_)) || self.row_wise.contains(&id);
            if !row_wise || self.uses_window.contains(&id) || n.inputs.len() != 1 {
                return false;
            }
            id = n.inputs[0];
        }
        true
    }

    /// The PARTITION BY columns of the SESSION call that made window function node `tvf`.
    fn session_partition(&self, tvf: usize) -> Vec<String> {
        match &self.graph.nodes[tvf].op {
            Op::WindowTvf(c) => c.partition.clone(),
            _ => Vec::new(),
        }
    }
}

fn agg_name(c: &AggCall) -> String {
    c.display.split('(').next().unwrap_or_default().trim().to_string()
}

fn is_non_null_literal(e: &Expr) -> bool {
    matches!(unalias(e), Expr::Literal(v, _) if !v.is_null())
        && !matches!(unalias(e), Expr::Literal(ScalarValue::Null, _))
}

fn has_subquery(e: &Expr) -> bool {
    let mut found = false;
    let _ = e.apply(|x| {
        if matches!(x, Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)) {
            found = true;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

/// Input column indices an expression reads.
pub fn refs(e: &Expr, schema: &DFSchema) -> Vec<usize> {
    e.column_refs()
        .into_iter()
        .filter_map(|c| schema.maybe_index_of_column(c))
        .collect()
}

use datafusion::common::tree_node::TreeNode;

/// Props through a projection: `map[i]` is where input column `i` went (if passed on as is).
pub fn map_props(p: &Props, map: &[Option<usize>]) -> Props {
    let m = |i: usize| map.get(i).copied().flatten();
    // Within a key, a window's start and end determine each other (a key's sessions do not overlap;
    // fixed-size windows have one end per start); only CUMULATE windows share starts.
    let substitute = |i: usize| -> Option<usize> {
        m(i).or_else(|| {
            let w = p.window?;
            if w.start == Some(i) && !matches!(w.spec, WindowSpec::Cumulate { .. }) {
                w.end.and_then(m)
            } else if w.end == Some(i) && !matches!(w.spec, WindowSpec::Cumulate { .. }) {
                w.start.and_then(m)
            } else if w.start == Some(i) {
                w.end.and_then(m)
            } else {
                None
            }
        })
    };
    let key = p.key.as_ref().and_then(|k| {
        let mut v: Vec<usize> = k.iter().map(|i| substitute(*i)).collect::<Option<Vec<_>>>()?;
        v.sort_unstable();
        v.dedup();
        Some(v)
    });
    Props {
        mode: p.mode,
        key,
        rowtime: p.rowtime.and_then(m),
        window: p.window.and_then(|w| {
            let start = w.start.and_then(m);
            let end = w.end.and_then(m);
            if start.is_none() && end.is_none() {
                return None;
            }
            Some(WindowCols {
                spec: w.spec,
                start,
                end,
                time: w.time.and_then(m),
                assigned_by: w.assigned_by,
            })
        }),
    }
}
