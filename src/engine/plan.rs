//! Planning a continuous query: find the window table functions, decide how the query runs, and
//! write the SQL that DataFusion executes per micro-batch.
//!
//! Three shapes:
//! - **Stateless** (filter/project, lookup joins, TUMBLE without aggregation): the query runs as is
//!   on each micro-batch.
//! - **WindowAgg** (one TUMBLE/HOP/SESSION with COUNT, COUNT(DISTINCT), SUM, MIN, MAX, AVG): a
//!   *pre-query* aggregates each micro-batch per (group key, pane) in DataFusion; the engine merges
//!   that into keyed state ([`super::window`]); a *post-query* computes the select list over the
//!   finished aggregates (`__agg`).
//! - **Buffered** (a windowed stream⋈stream join on the same TUMBLE window, or aggregates without an
//!   incremental form): rows are kept per window and the whole query runs once when the window closes.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, DuplicateTreatment, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, Query, Select,
    SelectItem, SetExpr, TableFactor, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::window::{AggKind, WindowSpec};
use crate::error::{Error, Result};
use crate::sql::catalog::{Catalog, Object, SYSTEM_TABLES};
use crate::sql::parser::{SourceKind, interval_ms, normalize};

#[derive(Debug, Clone)]
pub struct Tvf {
    pub spec: WindowSpec,
    pub input: String,
    pub time_col: String,
    pub alias: String,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Stateless {
        sql: String,
    },
    WindowAgg {
        spec: WindowSpec,
        pre_sql: String,
        post_sql: String,
        nkeys: usize,
        kinds: Vec<AggKind>,
    },
    Buffered {
        size: i64,
        feeds: Vec<(String, String)>,
        sql: String,
    },
}

/// Where a query's rows come from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Stream sources read, directly or through views.
    pub streams: BTreeSet<String>,
    /// Bounded tables (lookup joins).
    pub tables: BTreeSet<String>,
    pub views: BTreeSet<String>,
    pub mviews: BTreeSet<String>,
    pub system: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct Compiled {
    pub kind: Kind,
    pub inputs: Inputs,
    /// `ORDER BY … LIMIT …` of the original query, applied only when a result is displayed.
    pub presentation: String,
}

fn parse_query(sql: &str) -> Result<Box<Query>> {
    let mut p = Parser::new(&GenericDialect {}).try_with_sql(sql)?;
    Ok(p.parse_query()?)
}

pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Collect what `query` reads, expanding views.
pub fn inputs_of(query: &Query, catalog: &Catalog) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    collect_inputs(query, catalog, &mut inputs, 0)?;
    Ok(inputs)
}

fn collect_inputs(query: &Query, catalog: &Catalog, inputs: &mut Inputs, depth: usize) -> Result<()> {
    if depth > 16 {
        return Err(Error::plan("views nest too deeply"));
    }
    let mut names: Vec<String> = Vec::new();
    let _ = ast::visit_relations(query, |rel| {
        if let Some(last) = rel.0.last().and_then(|p| p.as_ident()) {
            names.push(normalize(last));
        }
        ControlFlow::<()>::Continue(())
    });
    // Window table functions name their input as an argument.
    let mut tvf_inputs = Vec::new();
    struct TvfInputs<'a>(&'a mut Vec<String>);
    impl ast::Visitor for TvfInputs<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
            if let Ok(Some(t)) = tvf_of(tf) {
                self.0.push(t.input);
            }
            ControlFlow::Continue(())
        }
    }
    let _ = ast::Visit::visit(query, &mut TvfInputs(&mut tvf_inputs));
    let ctes: BTreeSet<String> = query
        .with
        .iter()
        .flat_map(|w| w.cte_tables.iter().map(|c| normalize(&c.alias.name)))
        .collect();
    for name in names.into_iter().chain(tvf_inputs) {
        if ["tumble", "hop", "session"].contains(&name.as_str()) || ctes.contains(&name) {
            continue;
        }
        match catalog.get(&name) {
            Some(Object::Source(s)) if s.kind == SourceKind::Table => {
                inputs.tables.insert(name);
            }
            Some(Object::Source(_)) => {
                inputs.streams.insert(name);
            }
            Some(Object::View(v)) => {
                if inputs.views.insert(name) {
                    let q = v.query.clone();
                    collect_inputs(&q, catalog, inputs, depth + 1)?;
                }
            }
            Some(Object::MaterializedView(_)) => {
                inputs.mviews.insert(name);
            }
            Some(Object::Sink(_)) => return Err(Error::plan(format!("'{name}' is a sink; it cannot be queried"))),
            None if SYSTEM_TABLES.contains(&name.as_str()) => {
                inputs.system.insert(name);
            }
            None => return Err(Error::plan(format!("table, source or view '{name}' not found"))),
        }
    }
    Ok(())
}

fn arg_expr(a: &FunctionArg) -> Option<&Expr> {
    match a {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
        FunctionArg::Named {
            arg: FunctionArgExpr::Expr(e),
            ..
        } => Some(e),
        _ => None,
    }
}

fn ident_of(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(normalize(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(normalize),
        _ => None,
    }
}

/// Recognise `TUMBLE(src, ts, size)`, `HOP(src, ts, slide, size)`, `SESSION(src, ts, gap)`.
pub fn tvf_of(tf: &TableFactor) -> Result<Option<Tvf>> {
    let TableFactor::Table {
        name,
        alias,
        args: Some(args),
        ..
    } = tf
    else {
        return Ok(None);
    };
    let fname = name.to_string().to_ascii_lowercase();
    let usage = match fname.as_str() {
        "tumble" => "TUMBLE(source, time_column, INTERVAL 'n' unit)",
        "hop" => "HOP(source, time_column, INTERVAL slide, INTERVAL size)",
        "session" => "SESSION(source, time_column, INTERVAL gap)",
        _ => return Ok(None),
    };
    let exprs: Vec<&Expr> = args.args.iter().filter_map(arg_expr).collect();
    let want = if fname == "hop" { 4 } else { 3 };
    if exprs.len() != want || exprs.len() != args.args.len() {
        return Err(Error::plan(format!("{} expects {usage}", fname.to_uppercase())));
    }
    let input = ident_of(exprs[0])
        .ok_or_else(|| Error::plan(format!("{usage}: the first argument must be a source or view name")))?;
    let time_col =
        ident_of(exprs[1]).ok_or_else(|| Error::plan(format!("{usage}: the second argument must be a column")))?;
    let iv = |e: &Expr| -> Result<i64> {
        match interval_ms(e) {
            Some(ms) if ms > 0 => Ok(ms),
            _ => Err(Error::plan(format!("{usage}: expected a positive INTERVAL, found {e}"))),
        }
    };
    let spec = match fname.as_str() {
        "tumble" => WindowSpec::Tumble { size: iv(exprs[2])? },
        "hop" => {
            let (slide, size) = (iv(exprs[2])?, iv(exprs[3])?);
            if slide > size {
                return Err(Error::plan("HOP: the slide must not be larger than the size"));
            }
            WindowSpec::Hop { slide, size }
        }
        _ => WindowSpec::Session { gap: iv(exprs[2])? },
    };
    let alias = alias
        .as_ref()
        .map(|a| normalize(&a.name))
        .unwrap_or_else(|| input.clone());
    Ok(Some(Tvf {
        spec,
        input,
        time_col,
        alias,
    }))
}

/// `FROM` items holding window functions, by (from index, join index).
/// Where a table factor sits in `FROM`: (item index, join index within the item).
type FromPos = (usize, Option<usize>);

fn find_tvfs(select: &Select) -> Result<Vec<(FromPos, Tvf)>> {
    let mut out = Vec::new();
    for (i, twj) in select.from.iter().enumerate() {
        if let Some(t) = tvf_of(&twj.relation)? {
            out.push(((i, None), t));
        }
        for (j, join) in twj.joins.iter().enumerate() {
            if let Some(t) = tvf_of(&join.relation)? {
                out.push(((i, Some(j)), t));
            }
        }
    }
    Ok(out)
}

fn factor_mut(select: &mut Select, at: FromPos) -> Option<&mut TableFactor> {
    let twj = select.from.get_mut(at.0)?;
    match at.1 {
        None => Some(&mut twj.relation),
        Some(j) => twj.joins.get_mut(j).map(|j| &mut j.relation),
    }
}

/// A derived table `(inner) AS alias`, built by parsing so that the AST is always well-formed.
fn derived(inner: &str, alias: &str) -> Result<TableFactor> {
    let q = parse_query(&format!("SELECT * FROM ({inner}) AS {}", quote(alias)))?;
    match *q.body {
        SetExpr::Select(s) => s
            .from
            .into_iter()
            .next()
            .map(|t| t.relation)
            .ok_or_else(|| Error::Internal("derived table".into())),
        _ => Err(Error::Internal("derived table".into())),
    }
}

fn millis(col: &str) -> String {
    format!(
        "CAST(arrow_cast({}, 'Timestamp(Millisecond, None)') AS BIGINT)",
        quote(col)
    )
}

/// Floor of the event time to a multiple of `step` ms (correct for negative times too).
fn floor_ms(col: &str, step: i64) -> String {
    let ms = millis(col);
    format!("({ms} - ((({ms} % {step}) + {step}) % {step}))")
}

/// TUMBLE as a plain derived table adding `window_start`/`window_end` to each row.
fn tumble_rows(t: &Tvf, size: i64) -> String {
    let start = floor_ms(&t.time_col, size);
    format!(
        "SELECT *, to_timestamp_millis({start}) AS window_start, to_timestamp_millis({start} + {size}) AS window_end FROM {}",
        quote(&t.input)
    )
}

fn is_window_col(e: &Expr) -> Option<&'static str> {
    match ident_of(e).as_deref() {
        Some("window_start") => Some("window_start"),
        Some("window_end") => Some("window_end"),
        _ => None,
    }
}

fn same_expr(a: &Expr, b: &Expr) -> bool {
    a == b
        || matches!((ident_of(a), ident_of(b)), (Some(x), Some(y)) if x == y && !matches!((a, b), (Expr::CompoundIdentifier(_), Expr::CompoundIdentifier(_))))
}

#[derive(Debug, Clone)]
struct AggCall {
    kind: AggKind,
    arg: Option<Expr>,
    original: Expr,
}

/// Replaces group keys by `__k{i}`, aggregate calls by `__a{j}` and window columns by their plain
/// names, top-down, so an aggregate's argument is never mistaken for a key.
struct AggRewriter<'a> {
    keys: &'a [Expr],
    aggs: Vec<AggCall>,
    is_aggregate: &'a dyn Fn(&str) -> bool,
    unsupported: Option<String>,
}

impl VisitorMut for AggRewriter<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if let Some(w) = is_window_col(e) {
            *e = Expr::Identifier(Ident::with_quote('"', w));
            return ControlFlow::Continue(());
        }
        if let Some(i) = self.keys.iter().position(|k| same_expr(k, e)) {
            *e = Expr::Identifier(Ident::with_quote('"', format!("__k{i}")));
            return ControlFlow::Continue(());
        }
        if let Expr::Function(f) = e {
            let name = f.name.to_string().to_ascii_lowercase();
            if f.over.is_none() && (self.is_aggregate)(&name) {
                match classify(f) {
                    Some((kind, arg)) => {
                        let j = match self.aggs.iter().position(|a| a.original == *e) {
                            Some(j) => j,
                            None => {
                                self.aggs.push(AggCall {
                                    kind,
                                    arg,
                                    original: e.clone(),
                                });
                                self.aggs.len() - 1
                            }
                        };
                        *e = Expr::Identifier(Ident::with_quote('"', format!("__a{j}")));
                    }
                    None => self.unsupported = Some(e.to_string()),
                }
            }
        }
        ControlFlow::Continue(())
    }
}

fn classify(f: &ast::Function) -> Option<(AggKind, Option<Expr>)> {
    if f.filter.is_some() || !f.within_group.is_empty() {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    if list.args.len() != 1 || !list.clauses.is_empty() {
        return None;
    }
    let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
    let name = f.name.to_string().to_ascii_lowercase();
    match &list.args[0] {
        FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => AggKind::from_name(&name, distinct, true).map(|k| (k, None)),
        a => {
            let e = arg_expr(a)?.clone();
            AggKind::from_name(&name, distinct, false).map(|k| (k, Some(e)))
        }
    }
}

fn has_aggregates(select: &Select, is_aggregate: &dyn Fn(&str) -> bool) -> bool {
    let mut found = false;
    let mut probe = select.clone();
    let _ = ast::visit_expressions_mut(&mut probe, |e| {
        if let Expr::Function(f) = e
            && f.over.is_none()
            && is_aggregate(&f.name.to_string().to_ascii_lowercase())
        {
            found = true;
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

fn presentation(q: &Query) -> String {
    let mut s = String::new();
    if let Some(o) = &q.order_by {
        s.push_str(&format!(" {o}"));
    }
    if let Some(l) = &q.limit_clause {
        s.push_str(&format!(" {}", l.to_string().trim()));
    }
    s
}

/// Plan `query` as a continuous query over the streams it reads.
pub fn compile(query: &Query, catalog: &Catalog, is_aggregate: &dyn Fn(&str) -> bool) -> Result<Compiled> {
    let inputs = inputs_of(query, catalog)?;
    let presentation = presentation(query);
    let mut q = query.clone();
    q.order_by = None;
    q.limit_clause = None;
    let select: Option<Select> = match q.body.as_ref() {
        SetExpr::Select(s) => Some((**s).clone()),
        _ => None,
    };
    let Some(mut select) = select else {
        return Ok(Compiled {
            kind: Kind::Stateless { sql: q.to_string() },
            inputs,
            presentation,
        });
    };
    let tvfs = find_tvfs(&select)?;
    for (_, t) in &tvfs {
        if !inputs.streams.contains(&t.input) && catalog.source(&t.input).is_none() && !inputs.views.contains(&t.input)
        {
            return Err(Error::plan(format!(
                "window input '{}' must be a source or a view over one",
                t.input
            )));
        }
    }
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
        || has_aggregates(&select, is_aggregate);
    let with_prefix = q.with.as_ref().map(|w| format!("{w} ")).unwrap_or_default();

    match tvfs.len() {
        0 => {
            if grouped && !inputs.streams.is_empty() {
                return Err(Error::plan(
                    "an aggregate over a stream needs a window: FROM TUMBLE(src, time_col, INTERVAL …), HOP(…) or SESSION(…)",
                ));
            }
            Ok(Compiled {
                kind: Kind::Stateless { sql: q.to_string() },
                inputs,
                presentation,
            })
        }
        1 => {
            let (at, tvf) = tvfs.into_iter().next().ok_or_else(|| Error::Internal("tvf".into()))?;
            if !grouped {
                let WindowSpec::Tumble { size } = tvf.spec else {
                    return Err(Error::plan(
                        "HOP and SESSION need GROUP BY with aggregates; TUMBLE may be used without",
                    ));
                };
                if let Some(f) = factor_mut(&mut select, at) {
                    *f = derived(&tumble_rows(&tvf, size), &tvf.alias)?;
                }
                *q.body = SetExpr::Select(Box::new(select));
                return Ok(Compiled {
                    kind: Kind::Stateless { sql: q.to_string() },
                    inputs,
                    presentation,
                });
            }
            window_agg(q, select, at, tvf, inputs, presentation, is_aggregate, &with_prefix)
        }
        2 => {
            let size = match (tvfs[0].1.spec, tvfs[1].1.spec) {
                (WindowSpec::Tumble { size: a }, WindowSpec::Tumble { size: b }) if a == b => a,
                _ => {
                    return Err(Error::plan(
                        "a windowed join needs the same TUMBLE window on both sides",
                    ));
                }
            };
            buffered(q, select, &tvfs, size, inputs, presentation, &with_prefix)
        }
        _ => Err(Error::plan("at most two window functions (a windowed join) per query")),
    }
}

/// Rows of each window function's input are kept per window (slot `__win_{i}`, fed per micro-batch
/// by a TUMBLE derived table); the query itself runs over a window's rows when it closes.
fn buffered(
    mut q: Query,
    mut select: Select,
    tvfs: &[(FromPos, Tvf)],
    size: i64,
    inputs: Inputs,
    presentation: String,
    with_prefix: &str,
) -> Result<Compiled> {
    let mut feeds = Vec::new();
    for (i, (at, t)) in tvfs.iter().enumerate() {
        let slot = format!("__win_{i}");
        feeds.push((slot.clone(), format!("{with_prefix}{}", tumble_rows(t, size))));
        if let Some(f) = factor_mut(&mut select, *at) {
            *f = derived(&format!("SELECT * FROM {}", quote(&slot)), &t.alias)?;
        }
    }
    *q.body = SetExpr::Select(Box::new(select));
    Ok(Compiled {
        kind: Kind::Buffered {
            size,
            feeds,
            sql: q.to_string(),
        },
        inputs,
        presentation,
    })
}

#[allow(clippy::too_many_arguments)]
fn window_agg(
    q: Query,
    mut select: Select,
    at: FromPos,
    tvf: Tvf,
    inputs: Inputs,
    presentation: String,
    is_aggregate: &dyn Fn(&str) -> bool,
    with_prefix: &str,
) -> Result<Compiled> {
    let group_exprs: Vec<Expr> = match &select.group_by {
        GroupByExpr::Expressions(e, mods) if mods.is_empty() => e.clone(),
        _ => {
            return Err(Error::plan(
                "GROUP BY ALL and grouping sets are not supported in continuous queries",
            ));
        }
    };
    let keys: Vec<Expr> = group_exprs.into_iter().filter(|e| is_window_col(e).is_none()).collect();
    for k in &keys {
        if let Expr::Value(_) = k {
            return Err(Error::plan(format!(
                "GROUP BY {k}: positions are not supported; name the expression"
            )));
        }
    }
    let mut rw = AggRewriter {
        keys: &keys,
        aggs: Vec::new(),
        is_aggregate,
        unsupported: None,
    };
    // Keep the user's column names: an unaliased item is named after its original expression.
    let mut projection: Vec<SelectItem> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) => {
                let name = ident_of(e).unwrap_or_else(|| e.to_string());
                SelectItem::ExprWithAlias {
                    expr: e.clone(),
                    alias: Ident::with_quote('"', name),
                }
            }
            other => other.clone(),
        })
        .collect();
    let _ = projection.visit(&mut rw);
    let mut having = select.having.clone();
    let _ = having.visit(&mut rw);
    if let Some(bad) = rw.unsupported.clone() {
        // No incremental form: keep the rows of each window and aggregate when it closes.
        let WindowSpec::Tumble { size } = tvf.spec else {
            return Err(Error::plan(format!(
                "{bad}: HOP and SESSION windows support COUNT, COUNT(DISTINCT), SUM, MIN, MAX and AVG"
            )));
        };
        return buffered(q, select, &[(at, tvf)], size, inputs, presentation, with_prefix);
    }
    let mut sel_where = select.selection.clone();
    if let Some(w) = &mut sel_where {
        let mut uses_window = false;
        let _ = ast::visit_expressions(w, |e| {
            uses_window |= is_window_col(e).is_some();
            ControlFlow::<()>::Continue(())
        });
        if uses_window {
            return Err(Error::plan(
                "WHERE cannot use window_start/window_end; filter them in HAVING",
            ));
        }
    }
    // The pre-query: one row per (key, pane) of each micro-batch, with partial aggregates.
    let pane_expr = match tvf.spec {
        WindowSpec::Session { .. } => millis(&tvf.time_col),
        spec => floor_ms(&tvf.time_col, spec.pane()),
    };
    if let Some(f) = factor_mut(&mut select, at) {
        *f = derived(
            &format!("SELECT *, {pane_expr} AS \"__pane\" FROM {}", quote(&tvf.input)),
            &tvf.alias,
        )?;
    }
    let mut items: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} AS \"__k{i}\""))
        .collect();
    items.push("\"__pane\"".into());
    let mut n = 0;
    for a in &rw.aggs {
        let arg = a.arg.as_ref().map(|e| e.to_string()).unwrap_or_default();
        for p in a.kind.partial_sql(&arg) {
            items.push(format!("{p} AS \"__p{n}\""));
            n += 1;
        }
    }
    let from: Vec<String> = select.from.iter().map(|t| t.to_string()).collect();
    let mut group: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    group.push("\"__pane\"".into());
    let pre_sql = format!(
        "{with_prefix}SELECT {} FROM {}{} GROUP BY {}",
        items.join(", "),
        from.join(", "),
        sel_where.map(|w| format!(" WHERE {w}")).unwrap_or_default(),
        group.join(", ")
    );
    let proj: Vec<String> = projection.iter().map(|p| p.to_string()).collect();
    let post_sql = format!(
        "SELECT {}, \"__id\" FROM \"__agg\"{}",
        proj.join(", "),
        having.map(|h| format!(" WHERE {h}")).unwrap_or_default()
    );
    Ok(Compiled {
        kind: Kind::WindowAgg {
            spec: tvf.spec,
            pre_sql,
            post_sql,
            nkeys: keys.len(),
            kinds: rw.aggs.iter().map(|a| a.kind).collect(),
        },
        inputs,
        presentation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parser::{Statement, parse_one};

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        let Statement::CreateSource(def) = parse_one(
            "CREATE SOURCE ev (user_id BIGINT, course_id BIGINT, region VARCHAR, purchased BOOLEAN, event_time TIMESTAMP,
             WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND) WITH (connector = 'generator')",
        )
        .expect("parse") else {
            panic!()
        };
        c.add("ev", Object::Source(def)).expect("add");
        c
    }

    fn agg(name: &str) -> bool {
        ["count", "sum", "min", "max", "avg", "median", "array_agg"].contains(&name)
    }

    fn compile_sql(sql: &str) -> Result<Compiled> {
        let Statement::Query(q) = parse_one(sql)? else {
            panic!("not a query")
        };
        compile(&q, &catalog(), &agg)
    }

    #[test]
    fn tumble_aggregate_splits_into_pre_and_post() {
        let c = compile_sql(
            "SELECT course_id, window_start, COUNT(*) AS views, COUNT(DISTINCT user_id) AS viewers, COUNT(*) + 1 AS v1
             FROM TUMBLE(ev, event_time, INTERVAL '1' MINUTE) WHERE region <> 'x'
             GROUP BY course_id, window_start, window_end HAVING COUNT(*) > 2 ORDER BY views DESC LIMIT 3",
        )
        .expect("compiles");
        let Kind::WindowAgg {
            spec,
            pre_sql,
            post_sql,
            nkeys,
            kinds,
        } = c.kind
        else {
            panic!("{:?}", c.kind)
        };
        assert_eq!(spec, WindowSpec::Tumble { size: 60_000 });
        assert_eq!(nkeys, 1);
        assert_eq!(kinds, vec![AggKind::CountStar, AggKind::CountDistinct]);
        assert!(pre_sql.contains("array_agg(DISTINCT user_id)"), "{pre_sql}");
        assert!(pre_sql.contains("WHERE region <> 'x'"), "{pre_sql}");
        assert!(pre_sql.ends_with("GROUP BY course_id, \"__pane\""), "{pre_sql}");
        assert_eq!(
            post_sql,
            "SELECT \"__k0\" AS \"course_id\", \"window_start\" AS \"window_start\", \"__a0\" AS views, \"__a1\" AS viewers, \"__a0\" + 1 AS v1, \"__id\" FROM \"__agg\" WHERE \"__a0\" > 2"
        );
        assert_eq!(c.presentation, " ORDER BY views DESC LIMIT 3");
        assert!(c.inputs.streams.contains("ev"));
    }

    #[test]
    fn shapes_and_errors() {
        assert!(matches!(
            compile_sql("SELECT * FROM ev WHERE purchased").expect("ok").kind,
            Kind::Stateless { .. }
        ));
        assert!(matches!(
            compile_sql("SELECT region, median(course_id) FROM TUMBLE(ev, event_time, INTERVAL '1' MINUTE) GROUP BY region, window_start").expect("ok").kind,
            Kind::Buffered { .. }
        ));
        let e = compile_sql("SELECT region, count(*) FROM ev GROUP BY region").expect_err("needs window");
        assert!(e.to_string().contains("needs a window"), "{e}");
        let e = compile_sql("SELECT * FROM nope").expect_err("missing");
        assert!(e.to_string().contains("'nope' not found"), "{e}");
        let e = compile_sql(
            "SELECT count(*) FROM HOP(ev, event_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND) GROUP BY window_start",
        )
        .expect_err("slide > size");
        assert!(e.to_string().contains("slide"), "{e}");
        let e = compile_sql("SELECT count(*) FROM TUMBLE(ev, event_time) GROUP BY window_start").expect_err("args");
        assert!(e.to_string().contains("TUMBLE expects"), "{e}");
    }
}
