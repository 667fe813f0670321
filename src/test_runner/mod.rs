//! `freshet test`: deterministic, offline tests of continuous queries, written as `.fslt` files
//! (format and semantics: docs/testing.md).
//!
//! A test runs the same SQL as `freshet run` through a [`Session`] in plan-only mode, which
//! validates every statement and keeps the catalog, and drives each continuous query itself: a
//! [`QueryRuntime`] built with test-fed sources ([`Feeds`]) and a [`Capture`] of its sink, stepped
//! one micro-batch at a time with [`QueryRuntime::step_manually`] — the engine's own loop turn, so
//! windows, watermarks, late rows and emission are the real code. Nothing is opened: no Kafka, no
//! HBase, no file written, no generator run; there is no thread per query, no wall clock and no sleep.

pub mod rows;
pub mod script;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::connector::SinkMode;
use crate::connector::memory::MemorySink;
use crate::connector::testing::{Capture, Chunk, Feed, Feeds, StandIn};
use crate::engine::query::{EngineConfig, QueryRuntime};
use crate::error::Error;
use crate::format::{Format, LineDecoder};
use crate::plan::{self, Compiled};
use crate::session::{Outcome, Session};
use crate::sql::catalog::Object;
use crate::sql::parser::{ObjectKind, Options, SourceDef, SourceKind, Statement, parse_one, parse_script};
use rows::Table;
use script::{Check, Directive, InputFormat, InputRows, Record};

/// The extension of test files.
pub const EXTENSION: &str = "fslt";

/// A record that failed: where, and what (possibly several lines: a diff).
#[derive(Debug, Clone)]
pub struct Failure {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: String,
    pub records: usize,
    pub failures: Vec<Failure>,
    /// `--complete` rewrote the file.
    pub rewritten: bool,
}

/// The test files named by `args`: files as given, directories searched recursively for `*.fslt`
/// (sorted). A path that does not exist is a usage error.
pub fn collect_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    find_files(args, EXTENSION)
}

/// Files as given, and below directories (recursively, sorted) those with `extension`. A path that
/// does not exist is a usage error. Shared by `freshet test` and `freshet check`.
pub fn find_files(args: &[PathBuf], extension: &str) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, extension, out)?;
            } else if path.extension().is_some_and(|e| e == extension) {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for a in args {
        let meta = std::fs::metadata(a).map_err(|e| format!("{}: {e}", a.display()))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(a, extension, &mut found).map_err(|e| format!("{}: {e}", a.display()))?;
            found.sort();
            out.extend(found);
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// Print the failures and a summary; the exit code: 0 when every file passed, 1 otherwise.
pub fn print(reports: &[FileReport]) -> std::process::ExitCode {
    let mut failed = 0;
    for r in reports {
        if r.failures.is_empty() {
            println!(
                "ok   {} ({} records){}",
                r.path,
                r.records,
                if r.rewritten { ", rewritten" } else { "" }
            );
            continue;
        }
        failed += 1;
        println!("FAIL {}", r.path);
        for f in &r.failures {
            let mut lines = f.message.lines();
            println!("{}:{}: {}", r.path, f.line, lines.next().unwrap_or_default());
            for l in lines {
                println!("{l}");
            }
        }
    }
    let records: usize = reports.iter().map(|r| r.records).sum();
    println!(
        "tested {} file{} ({records} records): {} passed, {failed} failed",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" },
        reports.len() - failed
    );
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Run one test file; with `complete`, rewrite its expected blocks from the actual output. A rewrite
/// moves lines, and output can name lines of the file (`_errors` positions), so `complete` runs the
/// file again until it no longer changes.
pub async fn run_file(path: &Path, complete: bool) -> FileReport {
    let mut report = run_once(path, complete).await;
    let mut passes = 1;
    while complete && report.rewritten && report.failures.is_empty() && passes < 4 {
        let again = run_once(path, true).await;
        passes += 1;
        let rewritten = again.rewritten;
        report = FileReport {
            rewritten: true,
            ..again
        };
        if !rewritten {
            break;
        }
    }
    report
}

async fn run_once(path: &Path, complete: bool) -> FileReport {
    let display = path.display().to_string();
    let mut report = FileReport {
        path: display.clone(),
        records: 0,
        failures: Vec::new(),
        rewritten: false,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            report.failures.push(Failure {
                line: 1,
                message: format!("cannot read: {e}"),
            });
            return report;
        }
    };
    let records = match script::parse(&text) {
        Ok(r) => r,
        Err(e) => {
            report.failures.push(Failure {
                line: e.line,
                message: e.message,
            });
            return report;
        }
    };
    let mut runner = match Runner::new(path) {
        Ok(r) => r,
        Err(e) => {
            report.failures.push(Failure { line: 1, message: e });
            return report;
        }
    };
    let mut edits: Vec<(usize, usize, Vec<String>)> = Vec::new();
    for r in &records {
        report.records += 1;
        match runner.record(r).await {
            Ok(None) => {}
            Ok(Some(result)) => {
                let Directive::Check {
                    rowsort,
                    expected,
                    last,
                    check,
                } = &r.directive
                else {
                    continue;
                };
                let what = match check {
                    Check::Emitted(n) => format!("emitted {n}"),
                    Check::Contents(n) => format!("contents {n}"),
                    Check::Query { .. } => "query".to_string(),
                };
                let mut canonical = result.clone();
                if *rowsort {
                    canonical.sort_text();
                }
                let rendered = rows::render(&canonical);
                match expected {
                    Some(e) => {
                        if let Some((diff, line)) = rows::compare(&e.lines, &result, *rowsort) {
                            if complete {
                                edits.push((e.dashes + 1, e.end, rendered));
                            } else {
                                report.failures.push(Failure {
                                    line: line.unwrap_or(r.line),
                                    message: format!("{what}: {diff}"),
                                });
                            }
                        }
                    }
                    None if complete => {
                        let mut block = vec!["----".to_string()];
                        block.extend(rendered);
                        edits.push((last + 1, last + 1, block));
                    }
                    None => report.failures.push(Failure {
                        line: r.line,
                        message: format!(
                            "{what}: no expected output (a `----` line and the rows); `freshet test --complete` writes it:\n{}",
                            rendered.iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
                        ),
                    }),
                }
            }
            Err(e) => {
                report.failures.push(Failure {
                    line: r.line,
                    message: e.split_whitespace().collect::<Vec<_>>().join(" "),
                });
                // What follows depends on this record: stop here.
                break;
            }
        }
    }
    runner.finish();
    if complete && !edits.is_empty() && report.failures.is_empty() {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        for (from, to, new) in edits.into_iter().rev() {
            let needs_gap = lines.get(to).is_some_and(|l| !l.trim().is_empty());
            let mut new = new;
            if needs_gap {
                new.push(String::new());
            }
            lines.splice(from..to, new);
        }
        let mut out = lines.join("\n");
        if text.ends_with('\n') || text.is_empty() {
            out.push('\n');
        }
        if out != text {
            match std::fs::write(path, out) {
                Ok(()) => report.rewritten = true,
                Err(e) => report.failures.push(Failure {
                    line: 1,
                    message: format!("cannot rewrite: {e}"),
                }),
            }
        }
    }
    report
}

/// A continuous query under test.
struct Manual {
    name: String,
    kind: ObjectKind,
    compiled: Compiled,
    /// `None` only while it restarts.
    runtime: Option<QueryRuntime>,
    feeds: BTreeMap<String, Feed>,
    capture: Capture,
    schema: SchemaRef,
    /// Processing time of the last commit (ms on the test's clock).
    last_commit: i64,
    /// Every source ended and was read to its end: the query committed and stopped, as `freshet
    /// run` ends a bounded query.
    finished: bool,
}

/// Scratch files for tables (removed when the test ends).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Runner {
    /// The test file's name (positions of bad input rows in `_errors` are `NAME:LINE`, the same
    /// wherever the test runs from) and its directory.
    file: String,
    dir: PathBuf,
    session: Session,
    feeds: Feeds,
    queries: Vec<Manual>,
    /// Watermark floors per source (`watermark` directives), applied to every query reading it.
    floors: BTreeMap<String, i64>,
    /// Processing time, ms since the test started.
    clock: i64,
    /// Each table's rows, as JSON lines in a scratch file its stand-in `file` connector reads.
    tables: BTreeMap<String, PathBuf>,
    scratch: Scratch,
}

type R<T> = std::result::Result<T, String>;

fn err(e: Error) -> String {
    e.to_string()
}

/// Source options under test: checked as `freshet run` would, except that nothing the test replaces
/// has to exist (a `file` source's or table's path); `connector = 'test'` takes no other option.
fn validate_under_test(def: &SourceDef) -> crate::Result<()> {
    match def.options.get("connector").unwrap_or_default() {
        "test" => def.options.check_keys("connector 'test'", &["connector"]),
        "file" => crate::connector::file::FileOptions::parse(&def.options).map(|_| ()),
        _ => crate::connector::validate_source(def),
    }
}

async fn compile(session: &Session, q: &datafusion::sql::sqlparser::ast::Query) -> crate::Result<Compiled> {
    plan::compile(q, &session.catalog, &session.system, true, plan::Reads::Continuous).await
}

impl Runner {
    fn new(file: &Path) -> R<Self> {
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scratch = std::env::temp_dir().join(format!("freshet-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
        let mut session = Session::new(EngineConfig {
            // One `input` is one chunk, however long.
            batch_size: usize::MAX,
            ..EngineConfig::default()
        });
        session.plan_only = true;
        Ok(Runner {
            file: file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dir,
            session,
            feeds: Feeds::default(),
            queries: Vec::new(),
            floors: BTreeMap::new(),
            clock: 0,
            tables: BTreeMap::new(),
            scratch: Scratch(scratch),
        })
    }

    fn finish(&mut self) {
        self.queries.clear();
    }

    /// Run one record; a check returns the actual rows.
    async fn record(&mut self, r: &Record) -> R<Option<Table>> {
        match &r.directive {
            Directive::Statement { error, sql, line } => {
                let result = self.script(sql, *line, None).await;
                match (error, result) {
                    (None, Ok(())) => {}
                    (None, Err(e)) => return Err(format!("statement failed: {e}")),
                    (Some(want), Err(e)) => {
                        if !e.contains(want.as_str()) {
                            return Err(format!(
                                "statement failed with '{e}', expected an error containing '{want}'"
                            ));
                        }
                    }
                    (Some(want), Ok(())) => {
                        return Err(format!("statement succeeded, expected an error containing '{want}'"));
                    }
                }
            }
            Directive::Include(path) => {
                let full = self.dir.join(path);
                let sql = std::fs::read_to_string(&full).map_err(|e| format!("include {}: {e}", full.display()))?;
                self.script(&sql, 1, Some(path)).await?;
            }
            Directive::Input { name, rows } => self.input(name, rows)?,
            Directive::Flush => self.flush().await?,
            Directive::Watermark { source, text } => {
                let ts = parse_time(text)?;
                for s in self.sources(source.as_deref())? {
                    let f = self.floors.entry(s.clone()).or_insert(i64::MIN);
                    *f = (*f).max(ts);
                    for q in &mut self.queries {
                        if q.feeds.contains_key(&s)
                            && let Some(rt) = q.runtime.as_mut()
                        {
                            rt.raise_watermark(&s, ts).map_err(err)?;
                        }
                    }
                }
                self.flush().await?;
            }
            Directive::End(source) => {
                for s in self.sources(source.as_deref())? {
                    self.feeds.end(&s);
                }
                // One micro-batch reads what is left, the next finds the end (as a file source's).
                self.flush().await?;
                self.flush().await?;
            }
            Directive::AdvanceProcessingTime { text } => {
                let ms = crate::time::parse_duration_ms(text)
                    .ok_or_else(|| format!("cannot read the duration '{text}' (e.g. 500ms, 10s, 1m, 1h)"))?;
                self.clock += ms;
                self.commit_due()?;
            }
            Directive::Restart { query, crash } => {
                let names: Vec<String> = match query {
                    Some(q) => {
                        if !self.queries.iter().any(|m| &m.name == q) {
                            return Err(format!("no continuous query '{q}' to restart"));
                        }
                        vec![q.clone()]
                    }
                    None => self.queries.iter().map(|m| m.name.clone()).collect(),
                };
                for n in names {
                    self.restart(&n, !crash).await.map_err(err)?;
                }
            }
            Directive::Check { check, .. } => return self.check(check).await.map(Some),
        }
        Ok(None)
    }

    /// The stream sources named (or all declared ones).
    fn sources(&self, name: Option<&str>) -> R<Vec<String>> {
        match name {
            Some(n) => match self.session.catalog.source(n) {
                Some(d) if d.kind == SourceKind::Stream => Ok(vec![n.to_string()]),
                Some(_) => Err(format!("'{n}' is a table; tables have no watermark and no end")),
                None => Err(format!("no source '{n}'")),
            },
            None => Ok(self
                .session
                .catalog
                .of_kind(ObjectKind::Source)
                .map(|(n, _)| n.to_string())
                .collect()),
        }
    }

    /// Run the statements of `sql`, whose first line is line `first_line` of its file. Errors name
    /// the line (`origin:LINE:` for an included file, else `line LINE:` of the test file).
    async fn script(&mut self, sql: &str, first_line: usize, origin: Option<&str>) -> R<()> {
        let at = |line: u64| {
            let n = first_line + line as usize - 1;
            match origin {
                Some(o) => format!("{o}:{n}"),
                None => format!("line {n}"),
            }
        };
        let statements = parse_script(sql).map_err(|e| match e {
            Error::Sql { line, col, message } => format!("{}:{col}: {message}", at(line)),
            other => other.to_string(),
        })?;
        for st in statements {
            self.statement(&st.statement)
                .await
                .map_err(|e| format!("{}: {e}", at(st.line)))?;
        }
        Ok(())
    }

    async fn statement(&mut self, st: &Statement) -> R<()> {
        match st {
            Statement::CreateSource(def) => {
                validate_under_test(def).map_err(err)?;
                let mut def = def.clone();
                if def.kind == SourceKind::Table {
                    if self.session.catalog.get(&def.name).is_some() {
                        return Err(format!("'{}' already exists", def.name));
                    }
                    def.options = self.table_stand_in(&def.name)?;
                }
                let name = def.name.clone();
                self.session.catalog.add(&name, Object::Source(def)).map_err(err)?;
            }
            Statement::CreateSink { name, .. }
            | Statement::CreateView {
                name,
                materialized: true,
                ..
            } => {
                // Plan-only: validated, planned and added to the catalog; nothing started.
                self.session.execute(st).await.map_err(err)?;
                if let Err(e) = self.start(name).await {
                    let kind = self.session.catalog.get(name).map(Object::kind);
                    if let Some(kind) = kind {
                        let _ = self.session.catalog.remove(kind, name, true);
                    }
                    return Err(err(e));
                }
            }
            Statement::Drop { name, .. } => {
                self.session.execute(st).await.map_err(err)?;
                if self.session.catalog.get(name).is_none() {
                    self.queries.retain(|q| &q.name != name);
                    self.feeds.forget(name);
                    self.floors.remove(name);
                    self.tables.remove(name);
                }
            }
            Statement::Query(q) => {
                self.bounded_select(q).await?;
            }
            Statement::Insert { .. } => {
                let sink = self.session.insert_as_sink(st).map_err(err)?;
                Box::pin(self.statement(&sink)).await?;
            }
            _ => {
                self.session.execute(st).await.map_err(err)?;
            }
        }
        Ok(())
    }

    /// A table's rows come only from the test: its connector is replaced by a `file` one reading a
    /// scratch file of JSON lines (empty until `input` gives it rows). No refresh: a query sees the
    /// rows given before it started (or restarted).
    fn table_stand_in(&mut self, name: &str) -> R<Options> {
        let path = self.scratch.0.join(format!("{}.jsonl", self.tables.len()));
        std::fs::write(&path, "").map_err(|e| format!("{}: {e}", path.display()))?;
        self.tables.insert(name.to_string(), path.clone());
        let mut o = BTreeMap::new();
        o.insert("connector".to_string(), "file".to_string());
        o.insert("format".to_string(), "json".to_string());
        o.insert("path".to_string(), path.display().to_string());
        Ok(Options(o))
    }

    async fn bounded_select(&mut self, q: &datafusion::sql::sqlparser::ast::Query) -> R<(Vec<RecordBatch>, SchemaRef)> {
        let compiled = plan::compile(
            q,
            &self.session.catalog,
            &self.session.system,
            true,
            plan::Reads::Interactive,
        )
        .await
        .map_err(err)?;
        if !compiled.bounded() {
            return Err(
                "a SELECT over a stream runs forever; make it a CREATE MATERIALIZED VIEW and check that with `contents`"
                    .into(),
            );
        }
        self.session.plan_only = false;
        let out = self.session.execute(&Statement::Query(Box::new(q.clone()))).await;
        self.session.plan_only = true;
        match out.map_err(err)? {
            Outcome::Rows(b, s) => Ok((b, s)),
            _ => Err("the query returned no rows".into()),
        }
    }

    async fn build(
        &self,
        name: &str,
        compiled: &Compiled,
        feeds: &mut BTreeMap<String, Feed>,
        capture: &Capture,
    ) -> crate::Result<QueryRuntime> {
        let subscribe = feeds.is_empty();
        let mut rt = QueryRuntime::with_sources(
            name,
            compiled,
            &self.session.catalog,
            self.session.system.clone(),
            EngineConfig {
                // Specs run from the start every time: nothing to resume.
                checkpoint_dir: None,
                ..self.session.config.clone()
            },
            |def, _position, _columns| {
                if subscribe {
                    feeds.insert(def.name.clone(), self.feeds.subscribe(def));
                }
                let feed = feeds
                    .get(&def.name)
                    .ok_or_else(|| Error::Internal(format!("no feed for '{}'", def.name)))?;
                Ok(Box::new(feed.source()))
            },
            |_| Ok(capture.sink()),
        )
        .await?;
        let sources: Vec<String> = rt.source_names().map(str::to_string).collect();
        for s in sources {
            if let Some(ts) = self.floors.get(&s) {
                rt.raise_watermark(&s, *ts)?;
            }
        }
        Ok(rt)
    }

    /// Start the continuous query of the sink or materialized view `name` (just added to the catalog).
    async fn start(&mut self, name: &str) -> crate::Result<()> {
        let (query, kind, sink, accepts, label): (_, _, Box<dyn crate::connector::Sink>, _, _) =
            match self.session.catalog.get(name) {
                Some(Object::Sink(s)) => (
                    s.query.clone(),
                    ObjectKind::Sink,
                    Box::new(StandIn(crate::connector::sink_mode(&s.options))),
                    crate::connector::sink_accepts(&s.options),
                    format!("sink '{name}' ({})", s.options.get("connector").unwrap_or_default()),
                ),
                Some(Object::MaterializedView(m)) => (
                    m.query.clone(),
                    ObjectKind::MaterializedView,
                    Box::new(MemorySink(m.table.clone())),
                    plan::Accepts::Upsert,
                    name.to_string(),
                ),
                _ => return Err(Error::Internal(format!("'{name}' is not a continuous query"))),
            };
        let mut compiled = compile(&self.session, &query).await?;
        plan::finalize(&mut compiled, accepts, &label)?;
        compiled.set_state_ttl(self.session.config.state_ttl);
        let capture = Capture::new(sink);
        let mut feeds = BTreeMap::new();
        let rt = self.build(name, &compiled, &mut feeds, &capture).await?;
        self.queries.push(Manual {
            name: name.to_string(),
            kind,
            compiled,
            schema: rt.output_schema(),
            runtime: Some(rt),
            feeds,
            capture,
            last_commit: self.clock,
            finished: false,
        });
        Ok(())
    }

    /// What a process restart does to query `name` (see docs/testing.md): a clean stop commits
    /// first, a crash does not; window state is gone; the query is planned again and its sources
    /// re-deliver what they had not committed; a materialized view's table starts empty.
    async fn restart(&mut self, name: &str, commit_first: bool) -> crate::Result<()> {
        let i = self
            .queries
            .iter()
            .position(|q| q.name == name)
            .ok_or_else(|| Error::plan(format!("no continuous query '{name}'")))?;
        if let Some(mut rt) = self.queries[i].runtime.take()
            && commit_first
            && !self.queries[i].finished
        {
            rt.commit()?;
        }
        for f in self.queries[i].feeds.values() {
            f.rewind();
        }
        if self.queries[i].kind == ObjectKind::MaterializedView
            && let Some(Object::MaterializedView(mv)) = self.session.catalog.get(name)
        {
            mv.table.clear();
        }
        let mut feeds = std::mem::take(&mut self.queries[i].feeds);
        let compiled = self.queries[i].compiled.clone();
        let capture = self.queries[i].capture.clone();
        let built = self.build(name, &compiled, &mut feeds, &capture).await;
        let q = &mut self.queries[i];
        q.feeds = feeds;
        q.runtime = Some(built?);
        q.last_commit = self.clock;
        q.finished = false;
        Ok(())
    }

    fn input(&mut self, name: &str, rows: &InputRows) -> R<()> {
        let def = self
            .session
            .catalog
            .source(name)
            .cloned()
            .ok_or_else(|| format!("no source or table '{name}'"))?;
        let (format, lines) = match rows {
            InputRows::Inline { format, rows } => {
                let format = format.unwrap_or_else(|| {
                    if rows.first().is_some_and(|(_, l)| l.trim_start().starts_with('{')) {
                        InputFormat::Json
                    } else {
                        InputFormat::Csv
                    }
                });
                let lines = rows
                    .iter()
                    .map(|(n, l)| (format!("{}:{n}", self.file), l.clone()))
                    .collect();
                (format, lines)
            }
            InputRows::File(p) => {
                let full = self.dir.join(p);
                let text = std::fs::read_to_string(&full).map_err(|e| format!("{}: {e}", full.display()))?;
                let format = match full.extension().and_then(|e| e.to_str()) {
                    Some("csv") => InputFormat::Csv,
                    Some("json" | "jsonl" | "ndjson") => InputFormat::Json,
                    _ => {
                        return Err(format!(
                            "{p}: the format comes from the extension: .csv (a header line first), .json or .jsonl"
                        ));
                    }
                };
                let header = usize::from(format == InputFormat::Csv);
                let lines = text
                    .lines()
                    .enumerate()
                    .skip(header)
                    .map(|(i, l)| (format!("{p}:{}", i + 1), l.to_string()))
                    .collect();
                (format, lines)
            }
        };
        self.give(&def, format, lines)
    }

    /// Decode `lines` (position, text) for `def` and give them to the source, or add them to the table.
    fn give(&mut self, def: &SourceDef, format: InputFormat, lines: Vec<(String, String)>) -> R<()> {
        let format = match format {
            InputFormat::Json => Format::Json,
            InputFormat::Csv => Format::Csv {
                header: false,
                delimiter: b',',
            },
        };
        let decoded = LineDecoder::new(def.schema.clone(), format)
            .decode(lines.iter().map(|(p, l)| (p.clone(), l.as_str())))
            .map_err(err)?;
        if def.kind == SourceKind::Table {
            if let Some(bad) = decoded.errors.first() {
                return Err(format!("table '{}': {}: {}", def.name, bad.position, bad.reason));
            }
            let path = self
                .tables
                .get(&def.name)
                .ok_or_else(|| format!("table '{}' has no rows file", def.name))?;
            if let Some(b) = decoded.batch {
                let json = crate::format::to_json_lines(&b).map_err(err)?;
                use std::io::Write;
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(&json))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            return Ok(());
        }
        if self.feeds.ended(&def.name) {
            return Err(format!("source '{}' has ended; it takes no more input", def.name));
        }
        self.feeds.push(
            &def.name,
            Chunk {
                batch: decoded.batch,
                bad: decoded.errors,
            },
        );
        Ok(())
    }

    /// One micro-batch for every running query, in the order they were created.
    async fn flush(&mut self) -> R<()> {
        for q in &mut self.queries {
            if q.finished {
                continue;
            }
            let Some(rt) = q.runtime.as_mut() else { continue };
            rt.step_manually()
                .await
                .map_err(|e| format!("query '{}' failed: {e}", q.name))?;
            q.capture.seal();
            if rt.watermark() == i64::MAX && q.feeds.keys().all(|s| self.feeds.ended(s)) {
                // Every source read to its end: the query commits and ends, as in `freshet run`.
                rt.commit().map_err(err)?;
                q.finished = true;
            }
        }
        self.commit_due()
    }

    /// Commit each query whose commit interval has passed on the test's clock.
    fn commit_due(&mut self) -> R<()> {
        let every = self.session.config.commit_interval.as_millis() as i64;
        for q in &mut self.queries {
            if q.finished || self.clock - q.last_commit < every {
                continue;
            }
            if let Some(rt) = q.runtime.as_mut() {
                rt.commit().map_err(err)?;
                q.last_commit = self.clock;
            }
        }
        Ok(())
    }

    async fn check(&mut self, check: &Check) -> R<Table> {
        match check {
            Check::Emitted(name) => {
                let q = self.query(name)?;
                let mut batches = Vec::new();
                for group in q.capture.take_unseen() {
                    batches.push(rows::sorted(&q.schema, &group).map_err(err)?);
                }
                rows::table(&q.schema, &batches).map_err(err)
            }
            Check::Contents(name) => {
                if let Some(Object::MaterializedView(mv)) = self.session.catalog.get(name) {
                    let schema = mv.table.schema();
                    let snap = mv.table.snapshot().map_err(err)?;
                    return rows::table(&schema, &[rows::sorted(&schema, &[snap]).map_err(err)?]).map_err(err);
                }
                let q = self.query(name)?;
                match q.capture.mode() {
                    SinkMode::Upsert => {
                        let held: Vec<RecordBatch> = q.capture.held().map_err(err)?.into_iter().collect();
                        rows::table(&q.schema, &[rows::sorted(&q.schema, &held).map_err(err)?]).map_err(err)
                    }
                    SinkMode::Append => {
                        let mut batches = Vec::new();
                        for group in q.capture.all() {
                            batches.push(rows::sorted(&q.schema, &group).map_err(err)?);
                        }
                        rows::table(&q.schema, &batches).map_err(err)
                    }
                }
            }
            Check::Query { sql, line } => {
                let st = parse_one(sql).map_err(|e| match e {
                    Error::Sql { line: l, col, message } => format!("line {}:{col}: {message}", line + l as usize - 1),
                    other => other.to_string(),
                })?;
                let Statement::Query(q) = st else {
                    return Err("`query` takes a SELECT; use `statement ok` for other statements".into());
                };
                let (batches, schema) = self.bounded_select(&q).await?;
                rows::table(&schema, &batches).map_err(err)
            }
        }
    }

    fn query(&self, name: &str) -> R<&Manual> {
        self.queries.iter().find(|q| q.name == name).ok_or_else(|| {
            format!(
                "no continuous query '{name}' (`emitted` and `contents` name a CREATE SINK or CREATE MATERIALIZED VIEW)"
            )
        })
    }
}

/// A timestamp as in the input rows: `2026-01-01T00:01:00Z`, `2026-01-01 00:01:00.500`, …
fn parse_time(text: &str) -> R<i64> {
    datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text)
        .map(|ns| ns.div_euclid(1_000_000))
        .map_err(|e| format!("cannot read the timestamp '{text}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: &str = "statement ok
CREATE SOURCE s (k BIGINT, t TIMESTAMP NOT NULL, WATERMARK FOR t AS t - INTERVAL '1' SECOND)
WITH (connector = 'file', path = 'no/such/file.json');

statement ok
CREATE SINK counts WITH (connector = 'parquet', path = 'never/written') AS
SELECT k, window_start, COUNT(*) AS n FROM TUMBLE(s, t, INTERVAL '10' SECOND) GROUP BY k, window_start, window_end;

input s
1,2026-01-01T00:00:01Z
1,2026-01-01T00:00:02Z
2,2026-01-01T00:00:03Z
oops

flush

emitted counts

watermark s 2026-01-01T00:00:10Z

emitted counts

query
SELECT position, raw FROM _errors
";

    #[tokio::test]
    async fn completes_then_passes_then_names_a_changed_row() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("t.fslt");
        std::fs::write(&path, TEST).expect("write");
        let r = run_file(&path, false).await;
        assert_eq!(r.failures.len(), 3, "no expected blocks yet: {:?}", r.failures);
        let r = run_file(&path, true).await;
        assert!(r.failures.is_empty() && r.rewritten, "{:?}", r.failures);
        let done = std::fs::read_to_string(&path).expect("read");
        assert!(
            done.contains(
                "emitted counts\n----\nk | window_start        | n\n1 | 2026-01-01T00:00:00 | 2\n2 | 2026-01-01T00:00:00 | 1\n"
            ),
            "{done}"
        );
        assert!(done.contains("position  | raw\nt.fslt:13 | oops\n"), "{done}");
        assert!(!dir.path().join("never").exists(), "the Parquet sink was not opened");
        let r = run_file(&path, false).await;
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        assert_eq!(r.records, 8);

        let changed = done.replacen("2 | 2026-01-01T00:00:00 | 1", "2 | 2026-01-01T00:00:00 | 5", 1);
        let line = changed
            .lines()
            .position(|l| l == "2 | 2026-01-01T00:00:00 | 5")
            .expect("row")
            + 1;
        std::fs::write(&path, changed).expect("write");
        let r = run_file(&path, false).await;
        assert_eq!(r.failures.len(), 1);
        assert_eq!(r.failures[0].line, line);
        assert!(
            r.failures[0]
                .message
                .starts_with("emitted counts: expected 2 rows, got 2")
        );
    }
}
