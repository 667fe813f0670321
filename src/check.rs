//! `freshet check FILES_OR_DIRS…`: parse, plan and validate the connector options of every statement
//! in `.sql` files without starting anything (a [`Session`] in plan-only mode: no connection, no file
//! written, no generator run).
//!
//! Each file is split into statements at `;` tokens and every statement is parsed on its own (the
//! rest of the file blanked out, so positions stay absolute): a syntax error in one statement does not
//! hide the statements after it. Statements are then executed in order against one catalog per file.
//! A statement stops at its first error; later statements are still checked. A source whose options
//! are wrong is still declared (its columns are known), so queries over it are checked too; a name
//! whose statement failed otherwise is remembered, and "'name' not found" errors it causes later are
//! not reported again.
//!
//! Positions: syntax errors where the parser stopped; option errors at the option's key (unknown
//! option) or value (bad value, or the column inside a `row_key`/`key` list); a missing file at its
//! path; unknown sources, tables, views and columns at the first use of the name in the statement's
//! query; window errors at the window function (a bad interval at the interval); anything else at the
//! start of the statement.

use std::path::{Path, PathBuf};

use crate::engine::query::EngineConfig;
use crate::error::Error;
use crate::policy::Policy;
use crate::session::Session;
use crate::sql::parser::{Statement, parse_tokens as parse_tokens_of, tokenize};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Diagnostic {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FileReport {
    pub path: String,
    pub statements: usize,
    pub errors: Vec<Diagnostic>,
}

/// The `.sql` files named by `args`: files as given, directories searched recursively for `*.sql`
/// (sorted). A path that does not exist is a usage error.
pub fn collect_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    crate::test_runner::find_files(args, "sql")
}

/// Check one file. Unreadable files and invalid UTF-8 are reported as an error at 1:1.
pub async fn check_file(path: &Path, policy: &Policy) -> FileReport {
    let (statements, errors) = match std::fs::read(path) {
        Err(e) => (0, vec![diag_at(start_of_file(), format!("cannot read: {e}"))]),
        Ok(bytes) => match String::from_utf8(bytes) {
            Err(_) => (0, vec![diag_at(start_of_file(), "not valid UTF-8".into())]),
            Ok(sql) => check_sql_with(&sql, policy).await,
        },
    };
    FileReport {
        path: path.display().to_string(),
        statements,
        errors,
    }
}

fn start_of_file() -> Location {
    Location { line: 1, column: 1 }
}

fn diag_at(at: Location, message: String) -> Diagnostic {
    Diagnostic {
        line: at.line,
        column: at.column,
        message,
    }
}

/// Check a script as `policy` allows: (number of statements, errors in file order). A statement
/// the policy refuses is an error at the option it names.
pub async fn check_sql_with(sql: &str, policy: &Policy) -> (usize, Vec<Diagnostic>) {
    let dialect = GenericDialect {};
    let tokens: Vec<TokenWithSpan> = match Tokenizer::new(&dialect, sql).tokenize_with_location() {
        Ok(t) => t
            .into_iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .collect(),
        Err(e) => return (0, vec![diag_at(e.location, e.message)]),
    };
    // The tokens the parser takes (which differ a little: see `parse_script`), each statement's
    // parsed alone with its absolute positions. (Parsing the whole text with all but one statement
    // blanked out, as this did, made checking a file quadratic in its statements: the fuzzer found
    // 23 KB of short statements that took 50 s.)
    let parse_tokens: Vec<TokenWithSpan> = match tokenize(sql) {
        Ok(t) => t
            .into_iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .collect(),
        // Only the blanked `TABLE` keywords differ from the text tokenized above.
        Err(Error::Sql { line, col, message }) => return (0, vec![diag_at(Location { line, column: col }, message)]),
        Err(e) => return (0, vec![diag_at(start_of_file(), e.to_string())]),
    };
    let position = |at: Location| (at.line, at.column);
    let mut session = Session::new(EngineConfig {
        policy: policy.clone(),
        ..EngineConfig::default()
    });
    session.plan_only = true;
    let mut broken: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    let regions = statement_regions(&tokens);
    for r in &regions {
        let st = Stmt {
            tokens: &tokens[r.start..r.end],
            terminator: tokens.get(r.end),
        };
        let start = position(st.tokens[0].span.start);
        let first = parse_tokens.partition_point(|t| position(t.span.start) < start);
        let last = match st.terminator {
            Some(t) => parse_tokens.partition_point(|p| position(p.span.start) < position(t.span.start)),
            None => parse_tokens.len(),
        };
        let parsed = match parse_tokens_of(sql, parse_tokens[first..last.max(first)].to_vec()) {
            Ok(mut all) if all.len() == 1 => Ok(all.remove(0).statement),
            Ok(all) => Err(Error::Internal(format!(
                "statement split at the wrong place ({} statements)",
                all.len()
            ))),
            Err(e) => Err(e),
        };
        let statement = match parsed {
            Ok(s) => s,
            Err(e) => {
                errors.push(st.syntax_error(e));
                broken.extend(st.defined_name());
                continue;
            }
        };
        let Err(e) = session.execute(&statement).await else {
            continue;
        };
        if let Statement::CreateSource(def) = &statement {
            // Declare it anyway: its columns are known, so the queries over it can still be checked.
            if session
                .catalog
                .add(&def.name, crate::sql::catalog::Object::Source(def.clone()))
                .is_err()
            {
                broken.push(def.name.clone());
            }
        } else if let Some(name) = defined_name(&statement) {
            broken.push(name);
        }
        let message = e.to_string();
        if broken.iter().any(|b| message.contains(&format!("'{b}' not found"))) {
            continue; // a consequence of an error reported above
        }
        errors.push(st.locate(e));
    }
    (regions.len(), errors)
}

fn defined_name(s: &Statement) -> Option<String> {
    match s {
        Statement::CreateSource(def) => Some(def.name.clone()),
        Statement::CreateSink { name, .. } | Statement::CreateView { name, .. } => Some(name.clone()),
        Statement::Insert { table, .. } => Some(format!("insert_into_{table}")),
        _ => None,
    }
}

/// Token index ranges of the statements, each up to (not including) its `;`, as `parse_script` splits.
fn statement_regions(tokens: &[TokenWithSpan]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if matches!(tokens[i].token, Token::SemiColon | Token::EOF) {
            i += 1;
            continue;
        }
        let start = i;
        while i < tokens.len() && !matches!(tokens[i].token, Token::SemiColon | Token::EOF) {
            i += 1;
        }
        out.push(start..i);
    }
    out
}

/// One statement's tokens (comments and whitespace dropped) and the `;` that ends it, if any.
struct Stmt<'a> {
    tokens: &'a [TokenWithSpan],
    terminator: Option<&'a TokenWithSpan>,
}

fn is_word(t: &TokenWithSpan, w: &str) -> bool {
    matches!(&t.token, Token::Word(x) if x.value.eq_ignore_ascii_case(w))
}

fn is_keyword(t: &TokenWithSpan, k: Keyword) -> bool {
    matches!(&t.token, Token::Word(x) if x.keyword == k && x.quote_style.is_none())
}

impl Stmt<'_> {
    fn start(&self) -> Location {
        self.tokens[0].span.start
    }

    /// Where the statement's input ends: its `;`, else just after its last token.
    fn end(&self) -> Location {
        match (self.terminator, self.tokens.last()) {
            (Some(t), _) => t.span.start,
            (None, Some(t)) => t.span.end,
            (None, None) => start_of_file(),
        }
    }

    fn at(&self, at: Location, message: String) -> Diagnostic {
        diag_at(at, one_line(&message))
    }

    /// A parse error of this statement alone. The parser gives no position for "found: EOF" (the end
    /// of this statement): that is the `;` (which the whole-script parser would have named) or the end
    /// of the file.
    fn syntax_error(&self, e: Error) -> Diagnostic {
        match e {
            Error::Sql { line, col, message } => {
                let eof = line == 0 || ((line, col) == (1, 1) && message.contains("found: EOF"));
                if !eof {
                    return self.at(Location { line, column: col }, message);
                }
                let message = match self.terminator {
                    Some(_) => message.replace("found: EOF", "found: ;"),
                    None => message,
                };
                self.at(self.end(), message)
            }
            other => self.locate(other),
        }
    }

    /// The name a `CREATE …` statement defines, read from its tokens (for statements that do not parse).
    fn defined_name(&self) -> Option<String> {
        let t = self.tokens;
        if !t.first().is_some_and(|t| is_keyword(t, Keyword::CREATE)) {
            return None;
        }
        let mut i = 1;
        let skip = |i: &mut usize, words: &[&str]| {
            if words
                .iter()
                .enumerate()
                .all(|(k, w)| t.get(*i + k).is_some_and(|x| is_word(x, w)))
            {
                *i += words.len();
            }
        };
        skip(&mut i, &["OR", "REPLACE"]);
        skip(&mut i, &["MATERIALIZED"]);
        if !["SOURCE", "TABLE", "SINK", "VIEW"]
            .iter()
            .any(|w| t.get(i).is_some_and(|x| is_word(x, w)))
        {
            return None;
        }
        i += 1;
        skip(&mut i, &["IF", "NOT", "EXISTS"]);
        match &t.get(i)?.token {
            Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
            Token::Word(w) => Some(w.value.to_ascii_lowercase()),
            _ => None,
        }
    }

    /// Where the query of a `CREATE SINK/VIEW … AS` starts (the whole statement otherwise).
    fn query(&self) -> &[TokenWithSpan] {
        if self.tokens.first().is_some_and(|t| is_keyword(t, Keyword::CREATE))
            && let Some(i) = self.tokens.iter().position(|t| is_keyword(t, Keyword::AS))
        {
            return &self.tokens[i + 1..];
        }
        self.tokens
    }

    /// The position of an error found while planning or validating this statement.
    fn locate(&self, e: Error) -> Diagnostic {
        let message = match &e {
            Error::Sql { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let at = match &e {
            Error::Sql { line, col, .. } => Some(Location {
                line: *line,
                column: *col,
            }),
            Error::Option { key, message } | Error::Forbidden { key, message } => self.option_position(key, message),
            Error::Io { path, .. } => {
                let path = path.display().to_string();
                self.tokens
                    .iter()
                    .find(|t| matches!(&t.token, Token::SingleQuotedString(s) if *s == path))
                    .map(|t| t.span.start)
            }
            Error::Plan(m) => self.plan_position(m),
            Error::DataFusion(d) => self.datafusion_position(&d.to_string()),
            _ => None,
        };
        self.at(at.unwrap_or_else(|| self.start()), message)
    }

    fn option_position(&self, key: &str, message: &str) -> Option<Location> {
        let with = self
            .tokens
            .windows(2)
            .position(|w| is_keyword(&w[0], Keyword::WITH) && w[1].token == Token::LParen)?;
        let opts = &self.tokens[with..];
        // The key: a quoted string, or words joined by dots; then `=` and the value.
        let mut found = None;
        for i in 0..opts.len() {
            let after_key = match &opts[i].token {
                Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) if s.eq_ignore_ascii_case(key) => {
                    Some(i + 1)
                }
                Token::Word(_) => {
                    let mut j = i;
                    let mut parts = key.split('.');
                    let mut ok = true;
                    loop {
                        match (parts.next(), opts.get(j)) {
                            (Some(p), Some(t)) if is_word(t, p) => j += 1,
                            (None, _) => break,
                            _ => {
                                ok = false;
                                break;
                            }
                        }
                        if parts.clone().next().is_some() {
                            if opts.get(j).is_some_and(|t| t.token == Token::Period) {
                                j += 1;
                            } else {
                                ok = false;
                                break;
                            }
                        }
                    }
                    ok.then_some(j)
                }
                _ => None,
            };
            if let Some(j) = after_key
                && opts.get(j).is_some_and(|t| t.token == Token::Eq)
            {
                found = Some((i, j + 1));
                break;
            }
        }
        let Some((key_at, value_at)) = found else {
            // A required option that is missing: the WITH clause.
            return Some(opts[0].span.start);
        };
        if message.starts_with("unknown option") {
            return Some(opts[key_at].span.start);
        }
        let value = opts.get(value_at)?;
        // A column named inside a list value (`row_key = 'a, b'`): point into the string.
        if let (Some(column), Token::SingleQuotedString(s)) = (quoted(message, "no column "), &value.token)
            && let Some(i) = s.find(column.as_str())
            && !s[..i].contains(['\n', '\''])
        {
            return Some(Location {
                line: value.span.start.line,
                column: value.span.start.column + 1 + s[..i].chars().count() as u64,
            });
        }
        Some(value.span.start)
    }

    fn plan_position(&self, message: &str) -> Option<Location> {
        for f in ["TUMBLE", "HOP", "SESSION"] {
            if !message.starts_with(f) {
                continue;
            }
            let q = self.query();
            let at = q
                .windows(2)
                .position(|w| is_word(&w[0], f) && w[1].token == Token::LParen)?;
            // "… expected a positive INTERVAL, found INTERVAL '0' MINUTE": the interval with that literal.
            if let Some(found) = message.split("found ").nth(1)
                && let Some(literal) = quoted(found, "")
            {
                let iv = q[at..].windows(2).position(|w| {
                    is_keyword(&w[0], Keyword::INTERVAL)
                        && matches!(&w[1].token, Token::SingleQuotedString(s) if *s == literal)
                });
                if let Some(i) = iv {
                    return Some(q[at + i].span.start);
                }
            }
            return Some(q[at].span.start);
        }
        if message.starts_with("ORDER BY and LIMIT") {
            return self
                .query()
                .iter()
                .find(|t| is_keyword(t, Keyword::ORDER) || is_keyword(t, Keyword::LIMIT))
                .map(|t| t.span.start);
        }
        let name = quoted(message, "")?;
        let in_query = ["not found", "WATERMARK", "cannot be queried"]
            .iter()
            .any(|m| message.contains(m));
        self.find_name(if in_query { self.query() } else { self.tokens }, &name)
    }

    fn datafusion_position(&self, message: &str) -> Option<Location> {
        // "Schema error: No field named nope." / "No field named e.nope." / "No field named \"e\".\"x\"."
        let name = match message.split("No field named ").nth(1) {
            Some(rest) => {
                let name = rest.split(". ").next().unwrap_or(rest);
                let name = name.split_whitespace().next().unwrap_or_default();
                name.trim_end_matches('.').replace('"', "")
            }
            None => quoted(message, "")?,
        };
        let q = self.query();
        let parts: Vec<&str> = name.split('.').collect();
        for (i, _) in q.iter().enumerate() {
            let mut j = i;
            let mut ok = true;
            for (k, p) in parts.iter().enumerate() {
                if k > 0 {
                    if q.get(j).is_some_and(|t| t.token == Token::Period) {
                        j += 1;
                    } else {
                        ok = false;
                        break;
                    }
                }
                if q.get(j).is_some_and(|t| is_word(t, p)) {
                    j += 1;
                } else {
                    ok = false;
                    break;
                }
            }
            if ok {
                return Some(q[i].span.start);
            }
        }
        parts.last().and_then(|last| self.find_name(q, last))
    }

    fn find_name(&self, tokens: &[TokenWithSpan], name: &str) -> Option<Location> {
        tokens
            .iter()
            .find(|t| matches!(&t.token, Token::Word(w) if w.value.eq_ignore_ascii_case(name)))
            .map(|t| t.span.start)
    }
}

/// A message on one line, without the engine's internal columns (`__pane`) in DataFusion's lists of
/// valid fields.
fn one_line(message: &str) -> String {
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match message.split_once("Valid fields are ") {
        Some((head, fields)) => {
            let (fields, tail) = fields.split_once(". ").unwrap_or((fields.trim_end_matches('.'), ""));
            let fields: Vec<&str> = fields.split(", ").filter(|f| !f.contains("__")).collect();
            format!(
                "{head}Valid fields are {}.{}{tail}",
                fields.join(", "),
                if tail.is_empty() { "" } else { " " }
            )
        }
        None => message,
    }
}

/// The first `'…'`-quoted text in `message` after `prefix`.
fn quoted(message: &str, prefix: &str) -> Option<String> {
    let i = message.find(&format!("{prefix}'"))? + prefix.len() + 1;
    let rest = &message[i..];
    Some(rest[..rest.find('\'')?].to_string())
}

/// Print the reports; the exit code: 0 clean, 1 errors.
pub fn print(reports: &[FileReport], json: bool) -> std::process::ExitCode {
    let errors: usize = reports.iter().map(|r| r.errors.len()).sum();
    if json {
        let doc = serde_json::json!({ "files": reports, "errors": errors });
        println!("{doc:#}");
    } else {
        for r in reports {
            for d in &r.errors {
                println!("{}:{}:{}: {}", r.path, d.line, d.column, d.message);
            }
        }
        let statements: usize = reports.iter().map(|r| r.statements).sum();
        println!(
            "checked {statements} statement{} in {} file{}: {errors} error{}",
            plural(statements),
            reports.len(),
            plural(reports.len()),
            plural(errors)
        );
    }
    if errors == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (tests/fuzz.rs, sql): checking was quadratic in the number of statements
    /// (3 650 short ones took 50 s). 20 000 that do not parse (so nothing is planned) take about a
    /// second now; the bound only catches the quadratic behaviour coming back (that would take
    /// many minutes), not a slow machine.
    #[tokio::test]
    async fn checking_is_linear_in_the_number_of_statements() {
        let sql = format!("SELECT 1;\n{}", ");\n".repeat(20_000));
        let started = std::time::Instant::now();
        let (statements, errors) = check_sql_with(&sql, &Policy::default()).await;
        assert_eq!((statements, errors.len()), (20_001, 20_000));
        assert_eq!((errors[1].line, errors[1].column), (3, 1), "{:?}", errors[1]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
    }
}
