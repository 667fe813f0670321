//! Freshet's statements on top of sqlparser (the way DataFusion's `DFParser` adds its own): `CREATE
//! SOURCE`, `CREATE TABLE … WITH`, `CREATE SINK … AS`, `CREATE [MATERIALIZED] VIEW`, `SHOW`, `DESCRIBE`,
//! `DROP`, `EXPLAIN` and queries. One parser reads a whole script, so every error carries the absolute
//! line and column.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, ColumnOption, Expr, Query, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::error::{Error, Result};

/// `WITH (key = 'value', …)`: keys lower-cased, values as text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options(pub BTreeMap<String, String>);

impl Options {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    /// Fail on the first key not in `valid`, naming it and listing the valid ones.
    pub fn check_keys(&self, what: &str, valid: &[&str]) -> Result<()> {
        for k in self.0.keys() {
            if !valid.contains(&k.as_str()) {
                return Err(Error::option(
                    k,
                    format!("unknown option for {what}; valid options: {}", valid.join(", ")),
                ));
            }
        }
        Ok(())
    }
    pub fn required(&self, key: &str, what: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| Error::option(key, format!("required by {what}")))
    }
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| Error::option(key, format!("cannot parse '{v}'"))),
        }
    }
    pub fn parse_opt<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Error::option(key, format!("cannot parse '{v}'"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    pub column: String,
    pub delay_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// An event stream (`CREATE SOURCE`).
    Stream,
    /// A bounded table read once, for lookup joins (`CREATE TABLE … WITH (…)`).
    Table,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceDef {
    pub name: String,
    pub kind: SourceKind,
    pub schema: SchemaRef,
    pub watermark: Option<Watermark>,
    pub options: Options,
    pub sql: String,
    /// Declared in Flink's style (`'connector' = 'filesystem'`): as in Flink, the declaration alone
    /// checks nothing about the path (the table may be written by an INSERT INTO first).
    pub lazy_path: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Source,
    Table,
    Sink,
    View,
    MaterializedView,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Source => "source",
            ObjectKind::Table => "table",
            ObjectKind::Sink => "sink",
            ObjectKind::View => "view",
            ObjectKind::MaterializedView => "materialized view",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowKind {
    Sources,
    Tables,
    Sinks,
    Views,
    Queries,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    CreateSource(SourceDef),
    CreateSink {
        name: String,
        options: Options,
        query: Box<Query>,
        sql: String,
    },
    CreateView {
        name: String,
        materialized: bool,
        query: Box<Query>,
        sql: String,
    },
    Show(ShowKind),
    Describe(String),
    Drop {
        kind: ObjectKind,
        name: String,
        if_exists: bool,
    },
    Explain(Box<Query>),
    Query(Box<Query>),
    /// `SET key = value` (Flink's `SET 'key' = 'value'` too): a setting for the queries started
    /// after it in this session.
    Set {
        key: String,
        value: String,
    },
    /// `INSERT INTO table [(columns)] query`: a continuous query writing into a table declared with
    /// `CREATE TABLE … WITH (connector …)` (Flink's way to declare a sink).
    Insert {
        table: String,
        columns: Vec<String>,
        query: Box<Query>,
        sql: String,
    },
}

/// A statement with the line where it starts (1-based) in its script.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub statement: Statement,
    pub line: u64,
}

pub fn parse_script(sql: &str) -> Result<Vec<Located>> {
    parse_tokens(sql, tokenize(sql)?)
}

/// The tokens [`parse_tokens`] takes for `sql`, with their positions in it.
pub fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>> {
    // Flink's `TUMBLE(TABLE t, …)`: the keyword blanked, same length, so positions and the
    // statements' text (taken from `sql`) stay as written.
    let rewritten = crate::plan::tvf::rewrite_table_args(sql);
    Tokenizer::new(&GenericDialect {}, &rewritten)
        .tokenize_with_location()
        .map_err(|e| Error::from(datafusion::sql::sqlparser::parser::ParserError::from(e)))
}

/// [`parse_script`] of tokens from [`tokenize`]`(sql)`, or any run of them (`freshet check` parses
/// each statement's alone, in time proportional to the statement, positions still absolute).
pub fn parse_tokens(sql: &str, tokens: Vec<TokenWithSpan>) -> Result<Vec<Located>> {
    let dialect = GenericDialect {};
    // Before any tree is built: a tree too deep overflows the stack of whatever walks or drops it.
    if let Err((at, depth)) = crate::sql::depth::check(&tokens, crate::sql::depth::MAX_DEPTH) {
        return Err(Error::Sql {
            line: at.line,
            col: at.column,
            message: format!(
                "statement nested too deeply (about {depth} levels of operators, parentheses and \
                 subqueries here; at most {} are accepted): split it, e.g. into views",
                crate::sql::depth::MAX_DEPTH
            ),
        });
    }
    let mut p = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let mut out = Vec::new();
    loop {
        while p.consume_token(&Token::SemiColon) {}
        if p.peek_token().token == Token::EOF {
            break;
        }
        let start = p.peek_token().span.start;
        let statement = parse_statement(&mut p, sql, start)?;
        out.push(Located {
            statement,
            line: start.line,
        });
        let next = p.peek_token();
        if next.token != Token::EOF && next.token != Token::SemiColon {
            let at = next.span.start;
            return Err(Error::Sql {
                line: at.line,
                col: at.column,
                message: format!("expected end of statement (;), found {}", next.token),
            });
        }
    }
    Ok(out)
}

/// One statement (a trailing `;` is optional).
pub fn parse_one(sql: &str) -> Result<Statement> {
    let mut all = parse_script(sql)?;
    match all.len() {
        1 => Ok(all.remove(0).statement),
        0 => Err(Error::Sql {
            line: 1,
            col: 1,
            message: "empty statement".into(),
        }),
        _ => Err(Error::Sql {
            line: all[1].line,
            col: 1,
            message: "expected one statement, found several".into(),
        }),
    }
}

fn word(p: &Parser, upper: &str) -> bool {
    matches!(&p.peek_token().token, Token::Word(w) if w.value.eq_ignore_ascii_case(upper))
}

fn error_here<T>(p: &Parser, message: &str) -> Result<T> {
    let loc = p.peek_token().span.start;
    Err(Error::Sql {
        line: loc.line,
        col: loc.column,
        message: message.into(),
    })
}

/// The text of the statement from `start` to the parser's current position.
fn text_since(p: &Parser, sql: &str, start: Location) -> String {
    let end = p.peek_token().span.start;
    let from = offset_of(sql, start);
    let to = if p.peek_token().token == Token::EOF {
        sql.len()
    } else {
        offset_of(sql, end)
    };
    sql.get(from..to.max(from)).unwrap_or_default().trim().to_string()
}

fn offset_of(sql: &str, loc: Location) -> usize {
    let mut off = 0;
    for (line, l) in (1..).zip(sql.split_inclusive('\n')) {
        if line == loc.line {
            let col = (loc.column as usize).saturating_sub(1);
            return off + l.char_indices().nth(col).map(|(i, _)| i).unwrap_or(l.len());
        }
        off += l.len();
    }
    sql.len()
}

fn ident(p: &mut Parser) -> Result<String> {
    Ok(normalize(&p.parse_identifier()?))
}

/// Unquoted identifiers are case-insensitive (lower-cased), quoted ones are kept, as in DataFusion.
pub fn normalize(id: &ast::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

fn parse_statement(p: &mut Parser, sql: &str, start: Location) -> Result<Statement> {
    if p.parse_keyword(Keyword::CREATE) {
        let _ = p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
        if word(p, "SOURCE") {
            p.next_token();
            return parse_create_source(p, sql, start, SourceKind::Stream);
        }
        if p.parse_keyword(Keyword::TABLE) {
            return parse_create_source(p, sql, start, SourceKind::Table);
        }
        if word(p, "SINK") {
            p.next_token();
            let name = ident(p)?;
            let options = parse_with(p)?;
            if options.0.is_empty() {
                return error_here(p, "CREATE SINK needs WITH (connector = '…', …)");
            }
            p.expect_keyword(Keyword::AS)?;
            let query = p.parse_query()?;
            return Ok(Statement::CreateSink {
                name,
                options,
                query,
                sql: text_since(p, sql, start),
            });
        }
        let materialized = p.parse_keyword(Keyword::MATERIALIZED);
        if p.parse_keyword(Keyword::VIEW) {
            let name = ident(p)?;
            p.expect_keyword(Keyword::AS)?;
            let query = p.parse_query()?;
            return Ok(Statement::CreateView {
                name,
                materialized,
                query,
                sql: text_since(p, sql, start),
            });
        }
        return error_here(
            p,
            "expected SOURCE, TABLE, SINK, VIEW or MATERIALIZED VIEW after CREATE",
        );
    }
    if p.parse_keyword(Keyword::SHOW) {
        let kind = match p.next_token().token {
            Token::Word(w) => match w.value.to_ascii_uppercase().as_str() {
                "SOURCES" => ShowKind::Sources,
                "TABLES" => ShowKind::Tables,
                "SINKS" => ShowKind::Sinks,
                "VIEWS" => ShowKind::Views,
                "QUERIES" => ShowKind::Queries,
                _ => {
                    p.prev_token();
                    return error_here(p, "expected SOURCES, TABLES, SINKS, VIEWS or QUERIES after SHOW");
                }
            },
            _ => {
                p.prev_token();
                return error_here(p, "expected SOURCES, TABLES, SINKS, VIEWS or QUERIES after SHOW");
            }
        };
        return Ok(Statement::Show(kind));
    }
    if p.parse_keyword(Keyword::DESCRIBE) || p.parse_keyword(Keyword::DESC) {
        return Ok(Statement::Describe(ident(p)?));
    }
    if p.parse_keyword(Keyword::DROP) {
        let kind = if word(p, "SOURCE") {
            p.next_token();
            ObjectKind::Source
        } else if word(p, "SINK") {
            p.next_token();
            ObjectKind::Sink
        } else if p.parse_keyword(Keyword::TABLE) {
            ObjectKind::Table
        } else if p.parse_keyword(Keyword::VIEW) {
            ObjectKind::View
        } else if p.parse_keywords(&[Keyword::MATERIALIZED, Keyword::VIEW]) {
            ObjectKind::MaterializedView
        } else {
            return error_here(p, "expected SOURCE, TABLE, SINK, VIEW or MATERIALIZED VIEW after DROP");
        };
        let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        return Ok(Statement::Drop {
            kind,
            name: ident(p)?,
            if_exists,
        });
    }
    if p.parse_keyword(Keyword::SET) {
        let at = p.peek_token().span.start;
        let key = match p.next_token().token {
            Token::SingleQuotedString(k) | Token::DoubleQuotedString(k) => k,
            Token::Word(w) => {
                let mut k = w.value;
                while p.consume_token(&Token::Period) {
                    k.push('.');
                    k.push_str(&p.parse_identifier()?.value);
                }
                k
            }
            other => {
                return Err(Error::Sql {
                    line: at.line,
                    col: at.column,
                    message: format!("expected a setting name after SET, found {other}"),
                });
            }
        };
        if !p.consume_token(&Token::Eq) {
            p.expect_keyword(Keyword::TO)?;
        }
        let value = p.parse_expr()?;
        let value =
            literal_text(&value).ok_or_else(|| Error::option(key.to_ascii_lowercase(), "value must be a literal"))?;
        return Ok(Statement::Set {
            key: key.to_ascii_lowercase(),
            value,
        });
    }
    if p.parse_keyword(Keyword::INSERT) {
        p.expect_keyword(Keyword::INTO)?;
        let table = ident(p)?;
        let mut columns = Vec::new();
        if p.consume_token(&Token::LParen) {
            loop {
                columns.push(ident(p)?);
                if !p.consume_token(&Token::Comma) {
                    p.expect_token(&Token::RParen)?;
                    break;
                }
            }
        }
        let query = p.parse_query()?;
        return Ok(Statement::Insert {
            table,
            columns,
            query,
            sql: text_since(p, sql, start),
        });
    }
    if p.parse_keyword(Keyword::EXPLAIN) {
        return Ok(Statement::Explain(p.parse_query()?));
    }
    if matches!(&p.peek_token().token, Token::Word(w) if matches!(w.keyword, Keyword::SELECT | Keyword::WITH | Keyword::VALUES))
        || p.peek_token().token == Token::LParen
    {
        return Ok(Statement::Query(p.parse_query()?));
    }
    error_here(
        p,
        "expected CREATE SOURCE|TABLE|SINK|VIEW|MATERIALIZED VIEW, SELECT, INSERT INTO, SET, SHOW, DESCRIBE, DROP or EXPLAIN",
    )
}

fn parse_create_source(p: &mut Parser, sql: &str, start: Location, kind: SourceKind) -> Result<Statement> {
    let _ = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = ident(p)?;
    p.expect_token(&Token::LParen)?;
    let mut fields = Vec::new();
    let mut watermark = None;
    loop {
        if word(p, "WATERMARK") {
            p.next_token();
            p.expect_keyword(Keyword::FOR)?;
            let column = ident(p)?;
            p.expect_keyword(Keyword::AS)?;
            let at = p.peek_token().span.start;
            let expr = p.parse_expr()?;
            let delay_ms = watermark_delay(&column, &expr).map_err(|m| Error::Sql {
                line: at.line,
                col: at.column,
                message: m,
            })?;
            watermark = Some(Watermark { column, delay_ms });
        } else {
            let at = p.peek_token().span.start;
            let col = p.parse_column_def()?;
            let data_type = arrow_type(&col.data_type).ok_or_else(|| Error::Sql {
                line: at.line,
                col: at.column,
                message: format!("unsupported column type {}", col.data_type),
            })?;
            let not_null = col.options.iter().any(|o| matches!(o.option, ColumnOption::NotNull));
            fields.push(Field::new(normalize(&col.name), data_type, !not_null));
        }
        if p.consume_token(&Token::Comma) {
            continue;
        }
        p.expect_token(&Token::RParen)?;
        break;
    }
    if let Some(w) = &watermark {
        match fields.iter().find(|f| f.name() == &w.column) {
            None => return error_here(p, &format!("WATERMARK FOR {}: no such column", w.column)),
            Some(f) if !matches!(f.data_type(), DataType::Timestamp(_, _)) => {
                return error_here(
                    p,
                    &format!("WATERMARK FOR {}: the column must be a TIMESTAMP", w.column),
                );
            }
            _ => {}
        }
    }
    let options = parse_with(p)?;
    if options.get("connector").is_none() {
        return error_here(p, "missing WITH (connector = '…', …)");
    }
    let lazy_path = options.get("connector") == Some("filesystem");
    let options = flink_options(options);
    // Flink's `CREATE TABLE` declares streams too: one with a WATERMARK, or over an unbounded
    // connector, is a source; the others are bounded tables (lookup joins).
    let kind = match kind {
        SourceKind::Table if watermark.is_some() => SourceKind::Stream,
        SourceKind::Table => match options.get("connector") {
            Some("kafka") => SourceKind::Stream,
            Some("generator") if options.get("events").is_none() => SourceKind::Stream,
            _ => SourceKind::Table,
        },
        k => k,
    };
    let schema = Arc::new(Schema::new(fields));
    Ok(Statement::CreateSource(SourceDef {
        name,
        kind,
        schema,
        watermark,
        options,
        sql: text_since(p, sql, start),
        lazy_path,
    }))
}

/// Flink's option names as Freshet's: `properties.bootstrap.servers` → `bootstrap_servers`,
/// `properties.group.id` → `group_id`, `scan.startup.mode` → `startup`, `connector = 'filesystem'`
/// → `file` (or `parquet` for Parquet), `print` → `console`, `value.format` → `format`. Freshet's own
/// names pass unchanged, so a Flink SQL file needs only its connector options checked.
pub fn flink_options(o: Options) -> Options {
    let mut m = o.0;
    let mut rename = |from: &str, to: &str| {
        if let Some(v) = m.remove(from) {
            m.entry(to.to_string()).or_insert(v);
        }
    };
    rename("properties.bootstrap.servers", "bootstrap_servers");
    rename("properties.group.id", "group_id");
    rename("value.format", "format");
    rename("scan.startup.mode", "startup");
    if let Some(mode) = m.get_mut("startup") {
        *mode = match mode.as_str() {
            "earliest-offset" => "earliest".into(),
            "latest-offset" => "latest".into(),
            "group-offsets" => "group".into(),
            other => other.to_string(),
        };
    }
    match m.get("connector").map(String::as_str) {
        Some("filesystem") => {
            let parquet = m.get("format").is_some_and(|f| f == "parquet");
            m.insert("connector".into(), if parquet { "parquet" } else { "file" }.into());
            if parquet {
                m.remove("format");
            }
        }
        Some("print") => {
            m.insert("connector".into(), "console".into());
        }
        _ => {}
    }
    Options(m)
}

/// `WITH (key = value, …)`; a key is a name, a dotted name (`properties.fetch.max.bytes`) or a quoted
/// string (`'properties.fetch.max.bytes'`, as in Flink).
fn parse_with(p: &mut Parser) -> Result<Options> {
    let mut map = BTreeMap::new();
    if !p.parse_keyword(Keyword::WITH) {
        return Ok(Options(map));
    }
    p.expect_token(&Token::LParen)?;
    loop {
        if p.consume_token(&Token::RParen) {
            break;
        }
        let at = p.peek_token().span.start;
        let key = match p.next_token().token {
            Token::SingleQuotedString(k) | Token::DoubleQuotedString(k) => k,
            Token::Word(w) => {
                let mut k = w.value;
                while p.consume_token(&Token::Period) {
                    k.push('.');
                    k.push_str(&p.parse_identifier()?.value);
                }
                k
            }
            other => {
                return Err(Error::Sql {
                    line: at.line,
                    col: at.column,
                    message: format!("expected an option name, found {other}"),
                });
            }
        };
        p.expect_token(&Token::Eq)?;
        let value = p.parse_expr()?;
        let text = literal_text(&value).ok_or_else(|| {
            Error::option(
                key.to_ascii_lowercase(),
                format!("value must be a literal, found {value}"),
            )
        })?;
        map.insert(key.to_ascii_lowercase(), text);
        if !p.consume_token(&Token::Comma) {
            p.expect_token(&Token::RParen)?;
            break;
        }
    }
    Ok(Options(map))
}

pub fn literal_text(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.clone()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => literal_text(expr).map(|t| format!("-{t}")),
        _ => None,
    }
}

/// `INTERVAL '5' SECOND`, `INTERVAL '5 seconds'`, `INTERVAL '5 m'`, `INTERVAL '1' MINUTE` →
/// milliseconds, read exactly as DataFusion reads interval literals (arrow's interval parser, a bare
/// number in seconds). `None` for what is not a fixed-length, non-negative interval (months vary).
pub fn interval_ms(e: &Expr) -> Option<i64> {
    use datafusion::arrow::compute::kernels::cast_utils::{
        IntervalParseConfig, IntervalUnit, parse_interval_month_day_nano_config,
    };
    let Expr::Interval(iv) = e else { return None };
    if iv.last_field.is_some() || iv.leading_precision.is_some() {
        return None;
    }
    let text = literal_text(&iv.value)?;
    let text = match &iv.leading_field {
        Some(f) => format!("{text} {f}"),
        None => text,
    };
    let v = parse_interval_month_day_nano_config(&text, IntervalParseConfig::new(IntervalUnit::Second)).ok()?;
    if v.months != 0 {
        return None;
    }
    let ms = i128::from(v.days) * 86_400_000 + i128::from(v.nanoseconds) / 1_000_000;
    (ms >= 0 && ms <= i128::from(i64::MAX)).then_some(ms as i64)
}

/// A duration as text (`'1 h'`, `'30 min'`, `'250 ms'`, a bare number in seconds) → milliseconds,
/// read as interval literals are.
pub fn duration_ms(text: &str) -> Option<i64> {
    use datafusion::arrow::compute::kernels::cast_utils::{
        IntervalParseConfig, IntervalUnit, parse_interval_month_day_nano_config,
    };
    let v = parse_interval_month_day_nano_config(text.trim(), IntervalParseConfig::new(IntervalUnit::Second)).ok()?;
    let ms = i128::from(v.days) * 86_400_000 + i128::from(v.nanoseconds) / 1_000_000;
    (v.months == 0 && ms >= 0 && ms <= i128::from(i64::MAX)).then_some(ms as i64)
}

fn watermark_delay(column: &str, e: &Expr) -> std::result::Result<i64, String> {
    let bad = || format!("watermark must be `{column}` or `{column} - INTERVAL '…' unit`, found {e}");
    match e {
        Expr::Identifier(i) if normalize(i) == column => Ok(0),
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Minus,
            right,
        } => match left.as_ref() {
            Expr::Identifier(i) if normalize(i) == column => interval_ms(right).ok_or_else(bad),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

pub fn arrow_type(t: &ast::DataType) -> Option<DataType> {
    use ast::DataType as D;
    Some(match t {
        D::BigInt(_) | D::Int8(_) | D::Int64 => DataType::Int64,
        D::Int(_) | D::Integer(_) | D::Int4(_) | D::Int32 => DataType::Int32,
        D::SmallInt(_) | D::Int2(_) | D::Int16 => DataType::Int16,
        D::TinyInt(_) => DataType::Int8,
        D::Double(_) | D::DoublePrecision | D::Float8 | D::Float64 => DataType::Float64,
        D::Float(_) | D::Real | D::Float4 | D::Float32 => DataType::Float32,
        D::Varchar(_) | D::Text | D::String(_) | D::Char(_) | D::CharVarying(_) | D::Character(_) => DataType::Utf8,
        D::Boolean | D::Bool => DataType::Boolean,
        D::Timestamp(_, _) | D::Datetime(_) => DataType::Timestamp(TimeUnit::Millisecond, None),
        D::Date => DataType::Date32,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "-- the course stream
CREATE SOURCE course_events (
    user_id BIGINT NOT NULL,
    course_id BIGINT NOT NULL,
    region VARCHAR,
    purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (connector = 'generator', kind = 'courses', seed = 7, events = '1000');

CREATE SINK out WITH (connector = 'parquet', path = 'out/x') AS
SELECT course_id, window_start, COUNT(*) AS views
FROM TUMBLE(course_events, event_time, INTERVAL '1' MINUTE)
GROUP BY course_id, window_start, window_end;
SHOW SOURCES; describe course_events; DROP SINK IF EXISTS out;
";

    #[test]
    fn parses_a_script_with_positions() {
        let stmts = parse_script(SCRIPT).expect("parses");
        assert_eq!(stmts.len(), 5);
        let Statement::CreateSource(src) = &stmts[0].statement else {
            panic!("not a source")
        };
        assert_eq!(stmts[0].line, 2);
        assert_eq!(src.name, "course_events");
        assert_eq!(src.schema.fields().len(), 5);
        assert!(!src.schema.field(0).is_nullable());
        assert!(src.schema.field(2).is_nullable());
        assert_eq!(
            src.watermark,
            Some(Watermark {
                column: "event_time".into(),
                delay_ms: 5000
            })
        );
        assert_eq!(src.options.get("seed"), Some("7"));
        let Statement::CreateSource(k) = parse_one(
            "CREATE SOURCE k (a BIGINT) WITH (connector = 'kafka', properties.fetch.max.bytes = '1', 'properties.acks' = 'all')",
        )
        .expect("dotted and quoted keys") else {
            panic!("not a source")
        };
        assert_eq!(k.options.get("properties.fetch.max.bytes"), Some("1"));
        assert_eq!(k.options.get("properties.acks"), Some("all"));
        assert!(src.sql.starts_with("CREATE SOURCE course_events"));
        assert!(src.sql.ends_with("events = '1000')"));
        let Statement::CreateSink { name, options, .. } = &stmts[1].statement else {
            panic!("not a sink")
        };
        assert_eq!((name.as_str(), options.get("connector")), ("out", Some("parquet")));
        assert_eq!(stmts[1].line, 11);
        assert_eq!(stmts[2].statement, Statement::Show(ShowKind::Sources));
        assert_eq!(stmts[3].statement, Statement::Describe("course_events".into()));
        assert_eq!(
            stmts[4].statement,
            Statement::Drop {
                kind: ObjectKind::Sink,
                name: "out".into(),
                if_exists: true
            }
        );
    }

    #[test]
    fn flink_ddl_declares_sources_and_insert_into() {
        let Statement::CreateSource(k) = parse_one(
            "CREATE TABLE bid (auction BIGINT, date_time TIMESTAMP, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
             WITH ('connector' = 'kafka', 'topic' = 'bid', 'properties.bootstrap.servers' = 'k:9092',
                   'scan.startup.mode' = 'earliest-offset', 'format' = 'json')",
        )
        .expect("parse") else {
            panic!()
        };
        assert_eq!(k.kind, SourceKind::Stream);
        assert_eq!(k.options.get("bootstrap_servers"), Some("k:9092"));
        assert_eq!(k.options.get("startup"), Some("earliest"));
        let Statement::CreateSource(t) = parse_one(
            "CREATE TABLE c (id BIGINT) WITH ('connector' = 'filesystem', 'path' = 'c.csv', 'format' = 'csv')",
        )
        .expect("parse") else {
            panic!()
        };
        assert_eq!(t.kind, SourceKind::Table, "a bounded table for lookups");
        assert_eq!(t.options.get("connector"), Some("file"));
        let Statement::Insert { table, columns, .. } = parse_one("INSERT INTO out (a, b) SELECT 1, 2").expect("parse")
        else {
            panic!()
        };
        assert_eq!((table.as_str(), columns.len()), ("out", 2));
        assert_eq!(
            parse_one("SET 'table.exec.state.ttl' = '1 h'").expect("set"),
            Statement::Set {
                key: "table.exec.state.ttl".into(),
                value: "1 h".into()
            }
        );
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let e = parse_script("SHOW SOURCES;\nSELECT a FROM t WHERE;\n").expect_err("bad sql");
        let Error::Sql { line, col, .. } = e else { panic!("{e}") };
        assert_eq!((line, col), (2, 22));
        let e = parse_script(
            "CREATE SOURCE s (a BIGINT, t TIMESTAMP,\n  WATERMARK FOR t AS t + 1) WITH (connector='file')",
        )
        .expect_err("bad");
        assert!(e.to_string().starts_with("2:22:"), "{e}");
        let e = parse_script("CREATE SOURCE s (a BLOB) WITH (connector='file')").expect_err("bad type");
        assert!(e.to_string().starts_with("1:18: unsupported column type"), "{e}");
        let e = parse_script("FROBNICATE x").expect_err("unknown");
        assert!(e.to_string().starts_with("1:1: expected CREATE"), "{e}");
    }

    #[test]
    fn intervals() {
        let q = |s: &str| {
            let mut p = Parser::new(&GenericDialect {}).try_with_sql(s).expect("tokens");
            interval_ms(&p.parse_expr().expect("expr"))
        };
        assert_eq!(q("INTERVAL '5' SECOND"), Some(5000));
        assert_eq!(q("INTERVAL '1' MINUTE"), Some(60_000));
        assert_eq!(q("INTERVAL '10 seconds'"), Some(10_000));
        assert_eq!(q("INTERVAL '250' MILLISECOND"), Some(250));
        assert_eq!(q("INTERVAL '5 m'"), Some(300_000), "'m' is minutes, as in DataFusion");
        assert_eq!(q("INTERVAL '1 hour 30 minutes'"), Some(5_400_000));
        assert_eq!(q("INTERVAL '2' DAY"), Some(172_800_000));
        assert_eq!(q("INTERVAL '1' MONTH"), None, "months have no fixed length");
        assert_eq!(q("5"), None);
    }

    /// Trees too deep for the stack of whatever walks or drops them are refused before they are
    /// built (sql::depth): each of these overflowed the stack of `freshet check` before.
    #[test]
    fn statements_nested_too_deeply_are_errors_not_stack_overflows() {
        let terms = vec!["1"; 100_000].join("+");
        let cases = [
            format!("SELECT {terms}"),
            format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000)),
            format!(
                "SELECT * FROM {}(SELECT 1 AS x) t{}",
                "(SELECT * FROM ".repeat(5_000),
                ") t".repeat(5_000)
            ),
            format!(
                "SELECT {}1{}",
                "CASE WHEN true THEN ".repeat(5_000),
                " END".repeat(5_000)
            ),
            format!("SELECT 1 WHERE {}", vec!["a = 1"; 50_000].join(" OR ")),
            vec!["SELECT 1"; 20_000].join(" UNION ALL "),
            format!("SELECT 1{}", "::BIGINT".repeat(50_000)),
        ];
        for sql in &cases {
            let e = parse_script(sql).expect_err("too deep");
            let Error::Sql { line: 1, message, .. } = &e else {
                panic!("{e}");
            };
            assert!(message.contains("nested too deeply"), "{message}");
        }
        // What the limit allows still parses.
        parse_script(&format!("SELECT {}", vec!["1"; 200].join("+"))).expect("200 terms");
    }
}
