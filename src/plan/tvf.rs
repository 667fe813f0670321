//! Window table functions: Freshet's short form `TUMBLE(src, ts, INTERVAL …)` and Flink's
//! `TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL …))` (HOP, CUMULATE, SESSION likewise, with
//! named arguments and SESSION's `PARTITION BY`).
//!
//! sqlparser cannot read `TABLE src` as an argument, so [`rewrite_table_args`] blanks the keyword
//! before parsing (same length, so every position stays true). The planner then replaces each call
//! by a placeholder table whose logical plan is a [`WindowTvfNode`] over the input's plan: DataFusion
//! inlines it like a view, and the rest of the query plans as usual, with `window_start`,
//! `window_end` and `window_time` as ordinary columns.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::catalog::Session as CatalogSession;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::datasource::TableProvider;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, TableType, UserDefinedLogicalNodeCore};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast::{
    self, FunctionArg, FunctionArgExpr, FunctionArguments, Query, Spanned, TableFactor, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{Error, Result};
use crate::operator::window::WindowSpec;
use crate::sql::parser::{interval_ms, normalize};

/// The window functions, by name.
pub const WINDOW_FUNCTIONS: &[&str] = &["tumble", "hop", "cumulate", "session"];

/// Blank the `TABLE` keyword of `TUMBLE(TABLE t, …)`-style arguments and turn SESSION's `TABLE t
/// PARTITION BY a, b` into `t,__pby(a, b)`, keeping the text's length (and so every position).
pub fn rewrite_table_args(sql: &str) -> String {
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize_with_location() else {
        return sql.to_string();
    };
    let starts = line_starts(sql);
    let offset = |loc: datafusion::sql::sqlparser::tokenizer::Location| -> usize {
        let Some(&ls) = starts.get((loc.line as usize).wrapping_sub(1)) else {
            return sql.len();
        };
        sql[ls..]
            .char_indices()
            .nth((loc.column as usize).saturating_sub(1))
            .map_or(sql.len(), |(i, _)| ls + i)
    };
    let significant: Vec<usize> = (0..tokens.len())
        .filter(|i| !matches!(tokens[*i].token, Token::Whitespace(_)))
        .collect();
    let word = |k: usize, w: &str| matches!(&tokens[significant[k]].token, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
    let mut out = sql.to_string();
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let n = significant.len();
    let mut k = 0;
    while k + 2 < n {
        let is_tvf = WINDOW_FUNCTIONS.iter().any(|f| word(k, f)) && tokens[significant[k + 1]].token == Token::LParen;
        if !is_tvf {
            k += 1;
            continue;
        }
        let mut a = k + 2;
        // `DATA => TABLE t`
        if a + 1 < n && word(a, "data") && tokens[significant[a + 1]].token == Token::RArrow {
            a += 2;
        }
        if a + 1 < n && word(a, "table") && matches!(tokens[significant[a + 1]].token, Token::Word(_)) {
            let t = &tokens[significant[a]];
            let from = offset(t.span.start);
            edits.push((from, from + "table".len(), " ".repeat("table".len())));
            // The relation name, possibly dotted.
            let mut b = a + 1;
            while b + 2 < n && tokens[significant[b + 1]].token == Token::Period {
                b += 2;
            }
            if b + 2 < n && word(b + 1, "partition") && word(b + 2, "by") {
                let list_start = b + 3;
                let mut c = list_start;
                let mut depth = 0;
                while c < n {
                    match tokens[significant[c]].token {
                        Token::LParen => depth += 1,
                        Token::RParen if depth == 0 => break,
                        Token::RParen => depth -= 1,
                        Token::Comma if depth == 0 && !partition_continues(&tokens, &significant, c) => break,
                        _ => {}
                    }
                    c += 1;
                }
                if c > list_start && c < n {
                    let from = offset(tokens[significant[b]].span.end);
                    let list_from = offset(tokens[significant[list_start]].span.start);
                    let to = offset(tokens[significant[c]].span.start);
                    let list = sql[list_from..to].trim_end().to_string();
                    let replacement = format!(",__pby({list})");
                    let width = sql[from..to].chars().count();
                    if replacement.chars().count() <= width {
                        let pad = width - replacement.chars().count();
                        edits.push((from, to, format!("{replacement}{}", " ".repeat(pad))));
                    }
                }
            }
            k = a + 2;
            continue;
        }
        k += 1;
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (from, to, text) in edits {
        out.replace_range(from..to, &text);
    }
    out
}

/// In `PARTITION BY a, b, DESCRIPTOR(t)`, whether the comma at `c` separates partition columns (the
/// next item is a plain name not followed by `(`) rather than ending the list.
fn partition_continues(
    tokens: &[datafusion::sql::sqlparser::tokenizer::TokenWithSpan],
    significant: &[usize],
    c: usize,
) -> bool {
    let next = significant.get(c + 1).map(|i| &tokens[*i].token);
    let after = significant.get(c + 2).map(|i| &tokens[*i].token);
    matches!(next, Some(Token::Word(w)) if w.keyword == datafusion::sql::sqlparser::keywords::Keyword::NoKeyword || w.quote_style.is_some())
        && !matches!(after, Some(Token::LParen) | Some(Token::RArrow))
}

fn line_starts(sql: &str) -> Vec<usize> {
    let mut v = vec![0];
    v.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
    v
}

/// A window function call in a query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TvfCall {
    /// `TUMBLE`, `HOP`, `CUMULATE` or `SESSION`.
    pub function: String,
    pub spec: WindowSpec,
    /// The relation it windows (a source, view or CTE).
    pub input: String,
    pub time_col: String,
    /// SESSION's `PARTITION BY` columns.
    pub partition: Vec<String>,
    pub alias: Option<ast::TableAlias>,
    /// Line and column of the call (absolute in the script it was parsed from).
    pub at: (u64, u64),
}

fn usage(f: &str) -> &'static str {
    match f {
        "tumble" => {
            "TUMBLE(source, time_column, INTERVAL size) or TABLE(TUMBLE(TABLE source, DESCRIPTOR(time_column), INTERVAL size))"
        }
        "hop" => {
            "HOP(source, time_column, INTERVAL slide, INTERVAL size) or TABLE(HOP(TABLE source, DESCRIPTOR(time_column), INTERVAL slide, INTERVAL size))"
        }
        "cumulate" => {
            "CUMULATE(source, time_column, INTERVAL step, INTERVAL size) or TABLE(CUMULATE(TABLE source, DESCRIPTOR(time_column), INTERVAL step, INTERVAL size))"
        }
        _ => {
            "SESSION(source, time_column, INTERVAL gap) or TABLE(SESSION(TABLE source [PARTITION BY key], DESCRIPTOR(time_column), INTERVAL gap))"
        }
    }
}

fn ident_of(e: &ast::Expr) -> Option<String> {
    match e {
        ast::Expr::Identifier(i) => Some(normalize(i)),
        ast::Expr::CompoundIdentifier(parts) => parts.last().map(normalize),
        _ => None,
    }
}

/// Recognise a window function call in `FROM`.
pub fn tvf_call(tf: &TableFactor) -> Result<Option<TvfCall>> {
    let (name, args, alias): (String, Vec<FunctionArg>, Option<ast::TableAlias>) = match tf {
        TableFactor::Table {
            name,
            alias,
            args: Some(args),
            ..
        } => (name.to_string(), args.args.clone(), alias.clone()),
        TableFactor::TableFunction {
            expr: ast::Expr::Function(f),
            alias,
        } => {
            let FunctionArguments::List(list) = &f.args else {
                return Ok(None);
            };
            (f.name.to_string(), list.args.clone(), alias.clone())
        }
        TableFactor::Function { name, args, alias, .. } => (name.to_string(), args.clone(), alias.clone()),
        _ => return Ok(None),
    };
    let f = name.to_ascii_lowercase();
    if !WINDOW_FUNCTIONS.contains(&f.as_str()) {
        return Ok(None);
    }
    let start = tf.span().start;
    let at = (start.line, start.column);
    let err = |m: String| Error::Sql {
        line: at.0,
        col: at.1,
        message: m,
    };
    // Positional arguments, then named ones by Flink's names.
    let mut positional: Vec<ast::Expr> = Vec::new();
    let mut named: Vec<(String, ast::Expr)> = Vec::new();
    let mut partition: Vec<String> = Vec::new();
    for a in &args {
        match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => {
                if let ast::Expr::Function(pf) = e
                    && pf.name.to_string().eq_ignore_ascii_case("__pby")
                {
                    if let FunctionArguments::List(l) = &pf.args {
                        for x in &l.args {
                            if let FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) = x
                                && let Some(c) = ident_of(x)
                            {
                                partition.push(c);
                            }
                        }
                    }
                    continue;
                }
                positional.push(e.clone());
            }
            FunctionArg::Named {
                name,
                arg: FunctionArgExpr::Expr(e),
                ..
            } => named.push((name.value.to_ascii_lowercase(), e.clone())),
            _ => return Err(err(format!("{} expects {}", f.to_uppercase(), usage(&f)))),
        }
    }
    let names: &[&str] = match f.as_str() {
        "tumble" => &["data", "timecol", "size", "offset"],
        "hop" => &["data", "timecol", "slide", "size", "offset"],
        "cumulate" => &["data", "timecol", "step", "size", "offset"],
        _ => &["data", "timecol", "gap"],
    };
    let mut slots: Vec<Option<ast::Expr>> = vec![None; names.len()];
    for (i, e) in positional.into_iter().enumerate() {
        if i >= slots.len() {
            return Err(err(format!("{} expects {}", f.to_uppercase(), usage(&f))));
        }
        slots[i] = Some(e);
    }
    for (n, e) in named {
        let i = names
            .iter()
            .position(|x| *x == n)
            .ok_or_else(|| err(format!("{}: unknown argument '{n}'; {}", f.to_uppercase(), usage(&f))))?;
        slots[i] = Some(e);
    }
    let want = names.len() - usize::from(names.last() == Some(&"offset"));
    if slots[..want].iter().any(Option::is_none) {
        return Err(err(format!("{} expects {}", f.to_uppercase(), usage(&f))));
    }
    if let Some(Some(o)) = slots.get(want) {
        return Err(err(format!(
            "{}: a window offset ({o}) is not supported; windows are aligned to the epoch",
            f.to_uppercase()
        )));
    }
    let input = slots[0].as_ref().and_then(ident_of).ok_or_else(|| {
        err(format!(
            "{}: the first argument must be a source, view or CTE name",
            f.to_uppercase()
        ))
    })?;
    let time_col = match slots[1].as_ref() {
        Some(ast::Expr::Function(d)) if d.name.to_string().eq_ignore_ascii_case("descriptor") => match &d.args {
            FunctionArguments::List(l) if l.args.len() == 1 => match &l.args[0] {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => ident_of(e),
                _ => None,
            },
            _ => None,
        },
        Some(e) => ident_of(e),
        None => None,
    }
    .ok_or_else(|| {
        err(format!(
            "{}: the second argument must be a column, or DESCRIPTOR(column)",
            f.to_uppercase()
        ))
    })?;
    let iv = |i: usize| -> Result<i64> {
        let e = slots[i]
            .as_ref()
            .ok_or_else(|| err(format!("{} expects {}", f.to_uppercase(), usage(&f))))?;
        match interval_ms(e) {
            Some(ms) if ms > 0 => Ok(ms),
            _ => {
                let p = e.span().start;
                Err(Error::Sql {
                    line: p.line,
                    col: p.column,
                    message: format!(
                        "{}: expected a positive INTERVAL, found {e}{}",
                        f.to_uppercase(),
                        if e.to_string().to_ascii_uppercase().contains("MONTH")
                            || e.to_string().to_ascii_uppercase().contains("YEAR")
                        {
                            " (months and years have no fixed length)"
                        } else {
                            ""
                        }
                    ),
                })
            }
        }
    };
    let spec = match f.as_str() {
        "tumble" => WindowSpec::Tumble { size: iv(2)? },
        "hop" => {
            let (slide, size) = (iv(2)?, iv(3)?);
            if slide > size {
                return Err(err("HOP: the slide must not be larger than the size".into()));
            }
            WindowSpec::Hop { slide, size }
        }
        "cumulate" => {
            let (step, size) = (iv(2)?, iv(3)?);
            if size % step != 0 {
                return Err(err("CUMULATE: the size must be a multiple of the step".into()));
            }
            WindowSpec::Cumulate { step, size }
        }
        _ => WindowSpec::Session { gap: iv(2)? },
    };
    if !partition.is_empty() && !spec.is_session() {
        return Err(err(format!(
            "{}: PARTITION BY is for SESSION windows",
            f.to_uppercase()
        )));
    }
    Ok(Some(TvfCall {
        function: f.to_uppercase(),
        spec,
        input,
        time_col,
        partition,
        alias,
        at,
    }))
}

/// Replace every window function call in `query` by a placeholder table (`__tvf_<n>`, numbered from
/// `*next`), in the order they appear (CTEs first). Returns the placeholders and their calls.
pub fn replace_tvfs(query: &mut Query, next: &mut usize) -> Result<Vec<(String, TvfCall)>> {
    struct Replace<'a> {
        next: &'a mut usize,
        found: Vec<(String, TvfCall)>,
        error: Option<Error>,
    }
    impl VisitorMut for Replace<'_> {
        type Break = ();
        fn post_visit_table_factor(&mut self, tf: &mut TableFactor) -> ControlFlow<()> {
            match tvf_call(tf) {
                Ok(Some(call)) => {
                    let name = format!("__tvf_{}", *self.next);
                    *self.next += 1;
                    let alias = call.alias.clone().unwrap_or_else(|| ast::TableAlias {
                        explicit: true,
                        name: ast::Ident::with_quote('"', call.input.clone()),
                        columns: vec![],
                        at: None,
                    });
                    *tf = TableFactor::Table {
                        name: ast::ObjectName::from(vec![ast::Ident::with_quote('"', name.clone())]),
                        alias: Some(alias),
                        args: None,
                        with_hints: vec![],
                        version: None,
                        with_ordinality: false,
                        partitions: vec![],
                        json_path: None,
                        sample: None,
                        index_hints: vec![],
                    };
                    self.found.push((name, call));
                    ControlFlow::Continue(())
                }
                Ok(None) => ControlFlow::Continue(()),
                Err(e) => {
                    self.error = Some(e);
                    ControlFlow::Break(())
                }
            }
        }
    }
    let mut r = Replace {
        next,
        found: Vec::new(),
        error: None,
    };
    let _ = query.visit(&mut r);
    match r.error {
        Some(e) => Err(e),
        None => Ok(r.found),
    }
}

/// The window function as a logical plan node: the input's columns, then `window_start`,
/// `window_end` and `window_time` (TIMESTAMP, ms).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowTvfNode {
    pub id: usize,
    pub call: TvfCall,
    pub input: LogicalPlan,
    pub schema: DFSchemaRef,
}

pub const WINDOW_COLUMNS: [&str; 3] = ["window_start", "window_end", "window_time"];

impl WindowTvfNode {
    pub fn new(id: usize, call: TvfCall, input: LogicalPlan) -> Result<WindowTvfNode> {
        let in_schema = input.schema();
        for c in WINDOW_COLUMNS {
            if in_schema.fields().iter().any(|f| f.name() == c) {
                return Err(Error::Sql {
                    line: call.at.0,
                    col: call.at.1,
                    message: format!(
                        "{}: its input '{}' already has a column {c}; rename it (e.g. in a view) before windowing again",
                        call.function, call.input
                    ),
                });
            }
        }
        let mut fields: Vec<(Option<datafusion::common::TableReference>, Arc<Field>)> =
            in_schema.iter().map(|(q, f)| (q.cloned(), f.clone())).collect();
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        for c in WINDOW_COLUMNS {
            fields.push((None, Arc::new(Field::new(c, ts.clone(), false))));
        }
        let schema = DFSchema::new_with_metadata(fields, in_schema.metadata().clone())?;
        Ok(WindowTvfNode {
            id,
            call,
            input,
            schema: Arc::new(schema),
        })
    }

    /// As a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension { node: Arc::new(self) })
    }
}

impl PartialOrd for WindowTvfNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.id.partial_cmp(&other.id)
    }
}

impl UserDefinedLogicalNodeCore for WindowTvfNode {
    fn name(&self) -> &str {
        "WindowTvf"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    /// Projection push-down: the input columns the query reads through the window (its columns
    /// keep their places; the window columns come after them), plus the time column and SESSION's
    /// `PARTITION BY` columns, which the window itself reads. `None` (read everything) when one of
    /// those is not found by name (planning then names it).
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let fields = self.input.schema().fields();
        let by_name = |c: &String| fields.iter().position(|f| f.name() == c);
        let mut need: std::collections::BTreeSet<usize> =
            output_columns.iter().copied().filter(|i| *i < fields.len()).collect();
        need.insert(by_name(&self.call.time_col)?);
        for c in &self.call.partition {
            need.insert(by_name(c)?);
        }
        Some(vec![need.into_iter().collect()])
    }

    /// Filters on the input's columns may run before windowing; those on the window columns not.
    fn prevent_predicate_push_down_columns(&self) -> std::collections::HashSet<String> {
        WINDOW_COLUMNS.iter().map(|s| s.to_string()).collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} over {}({})",
            self.call.spec.describe(),
            self.call.input,
            self.call.time_col
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        let input = inputs.pop().unwrap_or_else(|| self.input.clone());
        WindowTvfNode::new(self.id, self.call.clone(), input)
            .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))
    }
}

/// The placeholder table of a window function call: DataFusion inlines its plan, like a view's.
#[derive(Debug)]
pub struct TvfTable {
    plan: LogicalPlan,
    schema: SchemaRef,
}

impl TvfTable {
    pub fn new(node: WindowTvfNode) -> TvfTable {
        let schema = Arc::new(node.schema.as_arrow().clone());
        TvfTable {
            plan: node.into_plan(),
            schema,
        }
    }
}

#[async_trait]
impl TableProvider for TvfTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        Some(Cow::Borrowed(&self.plan))
    }

    async fn scan(
        &self,
        _state: &dyn CatalogSession,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(datafusion::error::DataFusionError::Plan(
            "a window function runs only in a continuous query".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parser::{Statement, parse_one};

    #[test]
    fn flink_table_arguments_are_blanked_in_place() {
        let sql = "SELECT * FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))";
        let r = rewrite_table_args(sql);
        assert_eq!(r.len(), sql.len());
        assert_eq!(
            r,
            "SELECT * FROM TABLE(TUMBLE(      bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))"
        );
        let s = "FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))";
        let r = rewrite_table_args(s);
        assert_eq!(r.len(), s.len());
        assert!(r.contains("bid,__pby(bidder)"), "{r}");
        assert!(r.ends_with(", DESCRIPTOR(dateTime), INTERVAL '10' SECOND))"), "{r}");
        let create = "CREATE TABLE t (a INT) WITH (connector = 'file')";
        assert_eq!(rewrite_table_args(create), create);
    }

    fn first_call(sql: &str) -> Result<TvfCall> {
        let Statement::Query(mut q) = parse_one(&rewrite_table_args(sql))? else {
            panic!("not a query")
        };
        let mut n = 0;
        let found = replace_tvfs(&mut q, &mut n)?;
        assert!(q.to_string().contains("__tvf_0"), "{q}");
        Ok(found.into_iter().next().expect("a call").1)
    }

    #[test]
    fn both_forms_and_named_arguments() {
        let a = first_call("SELECT * FROM TUMBLE(ev, event_time, INTERVAL '1' MINUTE)").expect("short");
        assert_eq!((a.input.as_str(), a.time_col.as_str()), ("ev", "event_time"));
        assert_eq!(a.spec, WindowSpec::Tumble { size: 60_000 });
        let b = first_call(
            "SELECT * FROM TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND))",
        )
        .expect("flink");
        assert_eq!(
            b.spec,
            WindowSpec::Hop {
                slide: 2_000,
                size: 10_000
            }
        );
        assert_eq!(b.time_col, "datetime");
        let c = first_call(
            "SELECT * FROM TABLE(CUMULATE(DATA => TABLE bid, TIMECOL => DESCRIPTOR(t), STEP => INTERVAL '1' MINUTE, SIZE => INTERVAL '5 m'))",
        )
        .expect("named");
        assert_eq!(
            c.spec,
            WindowSpec::Cumulate {
                step: 60_000,
                size: 300_000
            }
        );
        let d = first_call(
            "SELECT * FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, auction, DESCRIPTOR(t), INTERVAL '10' SECOND))",
        )
        .expect("session");
        assert_eq!(d.partition, vec!["bidder".to_string(), "auction".to_string()]);
        let e = first_call("SELECT * FROM TUMBLE(ev, event_time, INTERVAL '0' MINUTE)").expect_err("zero");
        assert!(
            e.to_string().starts_with("1:47: TUMBLE: expected a positive INTERVAL"),
            "{e}"
        );
        let e =
            first_call("SELECT * FROM\n  HOP(ev, t, INTERVAL '10' SECOND, INTERVAL '2' SECOND)").expect_err("slide");
        assert!(e.to_string().starts_with("2:3: HOP: the slide"), "{e}");
    }
}
