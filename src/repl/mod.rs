//! The interactive SQL shell.
//!
//! [`run`] is the rustyline loop: it reads one complete input (the [`helper::ReplHelper`] validator
//! keeps reading until a statement ends with `;`) and hands it to [`Repl::handle_line`], which does
//! everything else and writes what the user sees to any `Write`, so the shell is testable without a
//! terminal. Backslash commands live in [`command`].
//!
//! Statements run on a [`Backend`]: an in-process [`Session`], or a `freshet serve` reached over
//! HTTP ([`remote`]), whose answers are printed with the same code.

pub mod command;
pub mod helper;
pub mod remote;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{CompletionType, Config, Editor};
use tokio::sync::watch;

use crate::engine::query::{EngineConfig, Metrics, Report, SystemTables};
use crate::error::{Error, Result};
use crate::print::{PrintFormat, format_batches, row_count};
use crate::session::{LiveQuery, Outcome, Session, present};
use crate::sql::catalog::{Object, SYSTEM_TABLES};
use crate::sql::parser::{Located, ShowKind, Statement, parse_script};
use command::Command;
use helper::ReplHelper;
use remote::{Remote, RemoteOutcome};

/// Where statements run.
pub enum Backend {
    /// In this process (boxed: a session is far larger than a remote handle).
    Local(Box<Session>),
    /// On a `freshet serve`, over HTTP.
    Remote(Remote),
}

/// What the loop does after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Quit,
}

/// The shell's state: the backend, display settings and the words completion offers.
pub struct Repl {
    pub backend: Backend,
    pub format: PrintFormat,
    /// Print how long each statement took.
    pub timing: bool,
    /// The output is a terminal: live queries redraw in place. Otherwise a live query prints its
    /// table once, when it ends.
    pub terminal: bool,
    /// Terminal (columns, rows), used to fit the live drawing on the screen.
    pub term_size: Option<(usize, usize)>,
    /// How often a live query's table is redrawn.
    pub refresh: Duration,
    words: Arc<Mutex<Vec<String>>>,
    /// Output columns of views and sinks, by name and SQL (computing them plans the query); for a
    /// server, of every object, by name and its SHOW row.
    derived_columns: HashMap<(String, String), Vec<String>>,
    /// Bumped on every Ctrl-C (SIGINT) while no line is being edited.
    interrupts: Option<watch::Receiver<u64>>,
}

fn write_err(e: std::io::Error) -> Error {
    Error::External(format!("cannot write output: {e}"))
}

/// `writeln!` to the output, turning an I/O error into ours.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err(write_err)?
    };
}

fn format_name(f: PrintFormat) -> &'static str {
    match f {
        PrintFormat::Table => "table",
        PrintFormat::Csv => "csv",
        PrintFormat::Json => "json",
    }
}

fn watermark_text(m: &Metrics) -> String {
    match m.watermark.load(Ordering::Relaxed) {
        i64::MIN => "-".to_string(),
        i64::MAX => "end".to_string(),
        w => crate::time::format_ms(w),
    }
}

/// Sends `stop` when dropped, so a live query never outlives the statement that showed it.
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// Resolves on the next Ctrl-C; never if there is no listener.
async fn interrupted(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Move the cursor up over the last `lines` lines drawn and clear from there down.
fn erase(out: &mut dyn Write, lines: usize) -> Result<()> {
    if lines > 0 {
        write!(out, "\x1b[{lines}A\r\x1b[J").map_err(write_err)?;
    }
    Ok(())
}

/// Fit a live drawing on the screen: lines cut to the width, the body cut to the height, so that
/// moving the cursor up by the number of lines erases all of it.
fn fit(body: &str, status: &str, size: Option<(usize, usize)>) -> (String, usize) {
    let mut lines: Vec<String> = body.lines().map(str::to_string).collect();
    if let Some((_, rows)) = size {
        let room = rows.saturating_sub(2).max(2);
        if lines.len() > room {
            let hidden = lines.len() - (room - 1);
            lines.truncate(room - 1);
            lines.push(format!("… {hidden} more lines"));
        }
    }
    lines.push(status.to_string());
    if let Some((cols, _)) = size {
        let width = cols.saturating_sub(1).max(1);
        for l in &mut lines {
            if l.chars().count() > width {
                *l = l.chars().take(width).collect();
            }
        }
    }
    let n = lines.len();
    (lines.join("\n") + "\n", n)
}

impl Repl {
    pub fn new(config: EngineConfig) -> Self {
        Repl::with_session(Session::new(config))
    }

    pub fn with_session(session: Session) -> Self {
        Repl::with_backend(Backend::Local(Box::new(session)))
    }

    pub fn with_backend(backend: Backend) -> Self {
        Repl {
            backend,
            format: PrintFormat::Table,
            timing: false,
            terminal: false,
            term_size: None,
            refresh: Duration::from_millis(500),
            words: Arc::new(Mutex::new(Vec::new())),
            derived_columns: HashMap::new(),
            interrupts: None,
        }
    }

    /// The local session, if statements run in this process.
    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match &mut self.backend {
            Backend::Local(s) => Some(s.as_mut()),
            Backend::Remote(_) => None,
        }
    }

    /// The completion words (catalog names and columns) for the rustyline helper; kept current by
    /// [`Repl::refresh_words`], which runs after every statement.
    pub fn completion_words(&self) -> Arc<Mutex<Vec<String>>> {
        self.words.clone()
    }

    /// Start counting Ctrl-C presses (SIGINT). Once the handler is installed, Ctrl-C no longer ends
    /// the process: it stops the live query being shown, if any. Needs a Tokio runtime.
    fn listen_for_interrupts(&mut self) {
        if self.interrupts.is_some() {
            return;
        }
        let (tx, rx) = watch::channel(0u64);
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut sigint) = signal(SignalKind::interrupt()) else {
                return;
            };
            tokio::spawn(async move {
                let mut n = 0u64;
                while sigint.recv().await.is_some() {
                    n += 1;
                    if tx.send(n).is_err() {
                        break;
                    }
                }
            });
        }
        #[cfg(not(unix))]
        {
            tokio::spawn(async move {
                let mut n = 0u64;
                while tokio::signal::ctrl_c().await.is_ok() {
                    n += 1;
                    if tx.send(n).is_err() {
                        break;
                    }
                }
            });
        }
        self.interrupts = Some(rx);
    }

    /// A receiver that fires on the next Ctrl-C (earlier presses are ignored).
    fn interrupt_receiver(&mut self) -> Option<watch::Receiver<u64>> {
        self.listen_for_interrupts();
        let mut rx = self.interrupts.clone()?;
        rx.borrow_and_update();
        Some(rx)
    }

    /// Process one complete input — statements or a backslash command — writing what a user would
    /// see to `out`. Mistakes in the input are printed as `error: …`; `Err` means `out` failed.
    pub async fn handle_line(&mut self, input: &str, out: &mut dyn Write) -> Result<Control> {
        let trimmed = input.trim();
        let control = if trimmed.is_empty() {
            Control::Continue
        } else if trimmed.starts_with('\\') {
            self.command(trimmed, out).await?
        } else if command::is_quit_word(trimmed) {
            Control::Quit
        } else {
            self.run_sql(input, None, out).await?;
            Control::Continue
        };
        out.flush().map_err(write_err)?;
        Ok(control)
    }

    async fn command(&mut self, line: &str, out: &mut dyn Write) -> Result<Control> {
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(msg) => {
                say!(out, "error: {msg}");
                return Ok(Control::Continue);
            }
        };
        match cmd {
            Command::Help => write!(out, "{}", command::HELP).map_err(write_err)?,
            Command::Quit => return Ok(Control::Quit),
            Command::List => {
                let started = Instant::now();
                match self.list().await {
                    Ok((batches, schema)) => {
                        self.print_rows(&batches, &schema, out)?;
                        self.print_timing(started, out)?;
                    }
                    Err(e) => say!(out, "error: {e}"),
                }
            }
            Command::Describe(name) => {
                if matches!(self.backend, Backend::Remote(_)) {
                    self.run_remote(&format!("DESCRIBE {};", quote_identifier(&name)), None, out)
                        .await?;
                } else {
                    self.run_statements(
                        &[Located {
                            statement: Statement::Describe(name),
                            line: 1,
                        }],
                        None,
                        out,
                    )
                    .await?;
                }
            }
            Command::Pause(name) => self.pause_or_resume(&name, true, out).await?,
            Command::Resume(name) => self.pause_or_resume(&name, false, out).await?,
            Command::Timing(on) => {
                self.timing = on.unwrap_or(!self.timing);
                say!(out, "timing is {}", if self.timing { "on" } else { "off" });
            }
            Command::Format(None) => say!(out, "format is {}", format_name(self.format)),
            Command::Format(Some(f)) => {
                self.format = f;
                say!(out, "format is {}", format_name(f));
            }
            Command::Include(file) => self.include(&file, out).await?,
        }
        Ok(Control::Continue)
    }

    /// `\pause NAME`, `\resume NAME`: stop a continuous query keeping its definition, start it again.
    async fn pause_or_resume(&mut self, name: &str, pause: bool, out: &mut dyn Write) -> Result<()> {
        let started = Instant::now();
        let interrupts = self.interrupt_receiver();
        let result = match &mut self.backend {
            Backend::Local(session) => {
                let done = if pause {
                    session.pause(name).await
                } else {
                    session.resume(name).await
                };
                done.map(|()| {
                    session
                        .queries
                        .iter()
                        .find(|q| q.name == name)
                        .map_or("gone", |q| q.status())
                        .to_string()
                })
            }
            Backend::Remote(remote) => abandonable(interrupts, remote.pause_or_resume(name, pause)).await,
        };
        match result {
            Ok(status) => {
                say!(out, "query {name} is {status}");
                self.print_timing(started, out)?;
            }
            Err(e) => say!(out, "error: {e}"),
        }
        Ok(())
    }

    /// `\d`: SHOW SOURCES, SINKS, VIEWS and TABLES as one table.
    async fn list(&mut self) -> Result<(Vec<RecordBatch>, SchemaRef)> {
        let mut batches = Vec::new();
        let mut schema = None;
        match &mut self.backend {
            Backend::Local(session) => {
                for kind in [ShowKind::Sources, ShowKind::Sinks, ShowKind::Views, ShowKind::Tables] {
                    if let Outcome::Rows(b, s) = session.execute(&Statement::Show(kind)).await? {
                        batches.extend(b);
                        schema = Some(s);
                    }
                }
            }
            Backend::Remote(remote) => {
                let remote = remote.clone();
                let reply = abandonable(self.interrupt_receiver(), remote.statements(LIST_SQL)).await?;
                if let Some(e) = reply.error {
                    return Err(e.error);
                }
                for r in reply.results {
                    if let RemoteOutcome::Rows(b, s) = r {
                        batches.extend(b);
                        schema = Some(s);
                    }
                }
            }
        }
        let schema = schema.ok_or_else(|| Error::Internal("SHOW returned no rows".into()))?;
        Ok((batches, schema))
    }

    /// `\i FILE`: the file's statements, stopping at the first error (reported as file:line:col).
    async fn include(&mut self, file: &str, out: &mut dyn Write) -> Result<()> {
        let path = match (file.strip_prefix("~/"), std::env::var_os("HOME")) {
            (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
            _ => PathBuf::from(file),
        };
        match std::fs::read_to_string(&path) {
            Ok(sql) => {
                self.run_sql(&sql, Some(&path), out).await?;
            }
            Err(e) => say!(out, "error: {}", Error::io(&path, e)),
        }
        Ok(())
    }

    /// Parse and run `sql`; `origin` names the file it came from. Returns whether every statement
    /// succeeded (the first failure is printed and ends the run).
    async fn run_sql(&mut self, sql: &str, origin: Option<&Path>, out: &mut dyn Write) -> Result<bool> {
        if matches!(self.backend, Backend::Remote(_)) {
            return self.run_remote(sql, origin, out).await;
        }
        match parse_script(sql) {
            Ok(statements) => self.run_statements(&statements, origin, out).await,
            Err(e) => {
                self.print_error(&e, origin, None, out)?;
                Ok(false)
            }
        }
    }

    async fn run_statements(
        &mut self,
        statements: &[Located],
        origin: Option<&Path>,
        out: &mut dyn Write,
    ) -> Result<bool> {
        let many = statements.len() > 1;
        for st in statements {
            let started = Instant::now();
            let result = self.execute(&st.statement, out).await;
            self.refresh_words().await;
            match result {
                Ok(()) => self.print_timing(started, out)?,
                Err(e) => {
                    self.print_error(&e, origin, (many || origin.is_some()).then_some(st.line), out)?;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Send `sql` to the server as one request and print each statement's result as a local run
    /// would; the first failure ends the run (the server runs nothing after it).
    async fn run_remote(&mut self, sql: &str, origin: Option<&Path>, out: &mut dyn Write) -> Result<bool> {
        let Backend::Remote(remote) = &self.backend else {
            return Err(Error::Internal("run_remote without a server".into()));
        };
        let remote = remote.clone();
        // Parsed here only to count the statements (the server parses and reports errors itself).
        let count = parse_script(sql).map(|s| s.len()).ok();
        if count == Some(0) {
            return Ok(true);
        }
        let many = count.unwrap_or(1) > 1;
        let started = Instant::now();
        let reply = match abandonable(self.interrupt_receiver(), remote.statements(sql)).await {
            Ok(r) => r,
            Err(e) => {
                say!(out, "error: {e}");
                return Ok(false);
            }
        };
        let changed = reply.results.iter().any(|r| matches!(r, RemoteOutcome::Done(_)));
        for r in &reply.results {
            match r {
                RemoteOutcome::Done(msg) => say!(out, "{msg}"),
                RemoteOutcome::Text(text) => print_text(text, out)?,
                RemoteOutcome::Rows(batches, schema) => self.print_rows(batches, schema, out)?,
            }
        }
        let ok = match &reply.error {
            None => {
                self.print_timing(started, out)?;
                true
            }
            Some(failed) => {
                let line = if many || origin.is_some() { failed.line } else { None };
                self.print_error(&failed.error, origin, line, out)?;
                false
            }
        };
        if changed {
            self.refresh_words().await;
        }
        Ok(ok)
    }

    fn print_error(&self, e: &Error, origin: Option<&Path>, line: Option<u64>, out: &mut dyn Write) -> Result<()> {
        // SQL errors carry their own line:col.
        let loc = match (origin, e, line) {
            (Some(p), Error::Sql { .. }, _) => format!("{}:", p.display()),
            (Some(p), _, None) => format!("{}: ", p.display()),
            (Some(p), _, Some(l)) => format!("{}:{l}: ", p.display()),
            (None, Error::Sql { .. }, _) | (None, _, None) => String::new(),
            (None, _, Some(l)) => format!("line {l}: "),
        };
        say!(out, "error: {loc}{e}");
        Ok(())
    }

    fn print_timing(&self, started: Instant, out: &mut dyn Write) -> Result<()> {
        if self.timing {
            say!(out, "Time: {:.3} ms", started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(())
    }

    async fn execute(&mut self, statement: &Statement, out: &mut dyn Write) -> Result<()> {
        let Backend::Local(session) = &mut self.backend else {
            return Err(Error::Internal("a local statement without a session".into()));
        };
        match session.execute(statement).await? {
            Outcome::Done(msg) => say!(out, "{msg}"),
            Outcome::Text(text) => print_text(&text, out)?,
            Outcome::Rows(batches, schema) => self.print_rows(&batches, &schema, out)?,
            Outcome::Live(live) => self.live(live, out).await?,
        }
        Ok(())
    }

    /// Rows in the current format; a table with no rows still shows its header.
    fn render_rows(&self, batches: &[RecordBatch], schema: &SchemaRef) -> Result<String> {
        if self.format == PrintFormat::Table && row_count(batches) == 0 {
            return Ok(format!("{}\n", pretty_format_batches_with_schema(schema.clone(), &[])?));
        }
        format_batches(batches, self.format)
    }

    fn print_rows(&self, batches: &[RecordBatch], schema: &SchemaRef, out: &mut dyn Write) -> Result<()> {
        let text = self.render_rows(batches, schema)?;
        write!(out, "{text}").map_err(write_err)?;
        let n = row_count(batches);
        say!(out, "({n} {})", if n == 1 { "row" } else { "rows" });
        Ok(())
    }

    /// Show a live query: on a terminal its table is redrawn every `refresh` until the query ends
    /// by itself or Ctrl-C stops it; then the final table is printed.
    async fn live(&mut self, live: LiveQuery, out: &mut dyn Write) -> Result<()> {
        let LiveQuery {
            table,
            presentation,
            metrics,
            stop,
            mut handle,
        } = live;
        let _stop_on_drop = StopOnDrop(stop.clone());
        let mut interrupts = self.interrupt_receiver();
        let started = Instant::now();
        let schema = table.schema();
        let mut drawn = 0;
        let mut stopped = false;
        let joined = loop {
            if self.terminal {
                let body = match present(&table, &presentation)
                    .await
                    .and_then(|rows| self.render_rows(&rows, &schema))
                {
                    Ok(body) => body,
                    Err(e) => format!("error: {e}\n"),
                };
                let status = format!(
                    "{} rows in, {} rows out, watermark {}, {:.1} s (Ctrl-C stops)",
                    Metrics::get(&metrics.rows_in),
                    Metrics::get(&metrics.rows_out),
                    watermark_text(&metrics),
                    started.elapsed().as_secs_f64()
                );
                let (frame, lines) = fit(&body, &status, self.term_size);
                erase(out, drawn)?;
                write!(out, "{frame}").map_err(write_err)?;
                out.flush().map_err(write_err)?;
                drawn = lines;
            }
            tokio::select! {
                r = &mut handle => break r,
                _ = interrupted(&mut interrupts) => {
                    let _ = stop.send(true);
                    stopped = true;
                    break (&mut handle).await;
                }
                _ = tokio::time::sleep(self.refresh), if self.terminal => {}
            }
        };
        erase(out, drawn)?;
        let report: Report = match joined {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Error::Internal(format!("live query task: {e}"))),
        };
        let rows = present(&table, &presentation).await?;
        self.print_rows(&rows, &schema, out)?;
        if self.terminal || stopped {
            say!(
                out,
                "query {}: {} rows in, {} rows out, {} late, {} errors, watermark {}, {:.2} s",
                if stopped { "stopped" } else { "finished" },
                report.rows_in,
                report.rows_out,
                report.late,
                report.errors,
                watermark_text(&metrics),
                report.elapsed.as_secs_f64()
            );
        }
        Ok(())
    }

    /// Recompute the completion words: object names, their columns and the system tables.
    pub async fn refresh_words(&mut self) {
        let mut words: Vec<String> = SYSTEM_TABLES.iter().map(|s| s.to_string()).collect();
        words.extend(SystemTables::schema().fields().iter().map(|f| f.name().clone()));
        match &self.backend {
            Backend::Local(_) => self.local_words(&mut words).await,
            Backend::Remote(remote) => {
                let remote = remote.clone();
                self.remote_words(&remote, &mut words).await;
            }
        }
        words.sort();
        words.dedup();
        *self.words.lock().unwrap_or_else(|p| p.into_inner()) = words;
    }

    /// A server's object names (one request) and their columns (DESCRIBE, once per object); what
    /// cannot be had is left out: completion is best effort.
    async fn remote_words(&mut self, remote: &Remote, words: &mut Vec<String>) {
        let Ok(reply) = remote.statements(LIST_SQL).await else {
            return;
        };
        let mut objects = Vec::new();
        for r in &reply.results {
            if let RemoteOutcome::Rows(batches, _) = r {
                for b in batches {
                    let columns: Vec<Vec<Option<String>>> = b.columns().iter().map(strings).collect();
                    for i in 0..b.num_rows() {
                        let row: Vec<String> = columns
                            .iter()
                            .map(|c| c.get(i).cloned().flatten().unwrap_or_default())
                            .collect();
                        if let Some(name) = row.first().filter(|n| !n.is_empty()) {
                            objects.push((name.clone(), row.join("\u{1f}")));
                        }
                    }
                }
            }
        }
        self.derived_columns.retain(|key, _| objects.contains(key));
        for key in objects {
            words.push(key.0.clone());
            if !self.derived_columns.contains_key(&key) {
                let mut columns = Vec::new();
                let describe = format!("DESCRIBE {};", quote_identifier(&key.0));
                if let Ok(reply) = remote.statements(&describe).await
                    && let Some(RemoteOutcome::Rows(batches, _)) = reply.results.first()
                {
                    columns = column_names(batches);
                }
                self.derived_columns.insert(key.clone(), columns);
            }
            if let Some(columns) = self.derived_columns.get(&key) {
                words.extend(columns.iter().cloned());
            }
        }
    }

    /// The local catalog's names and columns.
    async fn local_words(&mut self, words: &mut Vec<String>) {
        let Backend::Local(session) = &self.backend else {
            return;
        };
        let mut derived = Vec::new();
        for (name, object) in session.catalog.ordered() {
            words.push(name.to_string());
            match object {
                Object::Source(s) => words.extend(s.schema.fields().iter().map(|f| f.name().clone())),
                Object::MaterializedView(m) => words.extend(m.table.schema().fields().iter().map(|f| f.name().clone())),
                Object::View(_) | Object::Sink(_) => derived.push((name.to_string(), object.sql().to_string())),
            }
        }
        self.derived_columns.retain(|key, _| derived.contains(key));
        for key in derived {
            if !self.derived_columns.contains_key(&key) {
                let columns = self.columns_of(&key.0).await;
                self.derived_columns.insert(key.clone(), columns);
            }
            if let Some(columns) = self.derived_columns.get(&key) {
                words.extend(columns.iter().cloned());
            }
        }
    }

    /// Output columns of a view or sink, as DESCRIBE gives them (none if it cannot be planned).
    async fn columns_of(&mut self, name: &str) -> Vec<String> {
        let Backend::Local(session) = &mut self.backend else {
            return Vec::new();
        };
        match session.execute(&Statement::Describe(name.to_string())).await {
            Ok(Outcome::Rows(batches, _)) => column_names(&batches),
            _ => Vec::new(),
        }
    }
}

/// `\d`'s statements.
const LIST_SQL: &str = "SHOW SOURCES; SHOW SINKS; SHOW VIEWS; SHOW TABLES;";

/// A name as SQL that reads back as exactly that name.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// EXPLAIN's text, ending with a newline.
fn print_text(text: &str, out: &mut dyn Write) -> Result<()> {
    write!(out, "{text}").map_err(write_err)?;
    if !text.ends_with('\n') {
        say!(out, "");
    }
    Ok(())
}

/// A column's values as text (any type); nulls as `None`.
fn strings(column: &datafusion::arrow::array::ArrayRef) -> Vec<Option<String>> {
    match datafusion::arrow::compute::cast(column, &DataType::Utf8) {
        Ok(c) => c
            .as_string_opt::<i32>()
            .map(|s| s.iter().map(|v| v.map(str::to_string)).collect())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// The column names in DESCRIBE's rows (its first column; the WATERMARK line left out).
fn column_names(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .iter()
        .filter_map(|b| b.columns().first())
        .flat_map(strings)
        .flatten()
        .filter(|c| !c.contains(' '))
        .collect()
}

/// `fut`, unless Ctrl-C comes first: then the request is abandoned (the server may still run it).
async fn abandonable<T>(
    mut interrupts: Option<watch::Receiver<u64>>,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        r = fut => r,
        _ = interrupted(&mut interrupts) => Err(Error::External(
            "interrupted: stopped waiting for the server (it may still run the request)".into(),
        )),
    }
}

fn readline_err(e: ReadlineError) -> Error {
    Error::External(format!("line editor: {e}"))
}

fn default_history() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".freshet_history"))
}

/// The interactive loop: read complete inputs with rustyline and run them until `\q` or Ctrl-D.
pub async fn run(config: EngineConfig, history: Option<PathBuf>) -> Result<()> {
    run_with(Session::new(config), history).await
}

/// [`run`] over a given session (e.g. one opened on a data directory).
pub async fn run_with(session: Session, history: Option<PathBuf>) -> Result<()> {
    run_backend(Backend::Local(Box::new(session)), history).await
}

/// The REPL against a `freshet serve`: fails at once if the server cannot be reached or refuses
/// the token.
pub async fn run_remote(remote: Remote, history: Option<PathBuf>) -> Result<()> {
    remote.check().await?;
    run_backend(Backend::Remote(remote), history).await
}

async fn run_backend(backend: Backend, history: Option<PathBuf>) -> Result<()> {
    let mut repl = Repl::with_backend(backend);
    repl.terminal = std::io::stdout().is_terminal();
    repl.listen_for_interrupts();
    repl.refresh_words().await;

    let rl_config = Config::builder()
        .completion_type(CompletionType::List)
        .history_ignore_space(true)
        .max_history_size(10_000)
        .map_err(readline_err)?
        .build();
    let mut rl: Editor<ReplHelper, DefaultHistory> = Editor::with_config(rl_config).map_err(readline_err)?;
    rl.set_helper(Some(ReplHelper::new(repl.completion_words())));
    let history = history.or_else(default_history);
    if let Some(path) = &history
        && path.exists()
        && let Err(e) = rl.load_history(path)
    {
        eprintln!("warning: cannot read history {}: {e}", path.display());
    }
    if std::io::stdin().is_terminal() {
        let on = match &repl.backend {
            Backend::Local(_) => "continuous SQL over streams".to_string(),
            Backend::Remote(r) => format!("statements run on {}", r.url()),
        };
        println!(
            "Freshet {}: {on}. \\? for help, \\q to quit.",
            env!("CARGO_PKG_VERSION")
        );
    }

    let result = loop {
        if let Some((cols, rows)) = rl.dimensions() {
            repl.term_size = Some((cols as usize, rows as usize));
        }
        match rl.readline("freshet> ") {
            Ok(line) => {
                if line.trim().is_empty() {
                    continue;
                }
                let _ = rl.add_history_entry(line.as_str());
                let mut out = std::io::stdout();
                match repl.handle_line(&line, &mut out).await {
                    Ok(Control::Continue) => {}
                    Ok(Control::Quit) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
            // Ctrl-C at the prompt abandons the line being typed.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break Ok(()),
            Err(e) => break Err(readline_err(e)),
        }
    };
    if let Some(path) = &history
        && let Err(e) = rl.save_history(path)
    {
        eprintln!("warning: cannot write history {}: {e}", path.display());
    }
    if let Backend::Local(session) = &mut repl.backend {
        session.stop_all().await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "CREATE SOURCE s (user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, \
        purchased BOOLEAN, event_time TIMESTAMP NOT NULL, WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND) \
        WITH (connector = 'generator', kind = 'courses', seed = '1', events = '20000');";
    const TOP3: &str = "SELECT course_id, COUNT(*) AS views FROM TUMBLE(s, event_time, INTERVAL '1' MINUTE) \
        GROUP BY course_id, window_start, window_end ORDER BY views DESC LIMIT 3;";

    async fn input(repl: &mut Repl, line: &str) -> (Control, String) {
        let mut out = Vec::new();
        let control = repl.handle_line(line, &mut out).await.expect("handle_line");
        (control, String::from_utf8(out).expect("utf-8 output"))
    }

    async fn with_source() -> Repl {
        let mut repl = Repl::new(EngineConfig::default());
        let (control, out) = input(&mut repl, SOURCE).await;
        assert_eq!(control, Control::Continue);
        assert!(out.contains("created source s"), "{out}");
        repl
    }

    /// Data rows of a pretty table: lines starting with `|`, minus the header.
    fn table_rows(out: &str) -> usize {
        out.lines().filter(|l| l.starts_with('|')).count().saturating_sub(1)
    }

    fn header(out: &str) -> &str {
        out.lines().find(|l| l.starts_with('|')).unwrap_or_default()
    }

    #[tokio::test]
    async fn live_window_select_prints_final_table() {
        let mut repl = with_source().await;
        let (control, out) = input(&mut repl, TOP3).await;
        assert_eq!(control, Control::Continue);
        let head = header(&out);
        assert!(head.contains("course_id") && head.contains("views"), "{out}");
        assert_eq!(table_rows(&out), 3, "{out}");
        assert!(out.contains("(3 rows)"), "{out}");
        assert!(!out.contains("error"), "{out}");
    }

    #[tokio::test]
    async fn materialized_view_can_be_selected() {
        let mut repl = with_source().await;
        let (_, out) = input(
            &mut repl,
            "CREATE MATERIALIZED VIEW per_course AS\n  SELECT course_id, COUNT(*) AS views\n  FROM TUMBLE(s, event_time, INTERVAL '1' MINUTE)\n  GROUP BY course_id, window_start, window_end;",
        )
        .await;
        assert!(out.contains("created materialized view per_course"), "{out}");
        repl.session_mut().expect("local").wait_bounded().await;
        let (_, out) = input(
            &mut repl,
            "SELECT course_id, views FROM per_course ORDER BY views DESC LIMIT 2;",
        )
        .await;
        let head = header(&out);
        assert!(head.contains("course_id") && head.contains("views"), "{out}");
        assert_eq!(table_rows(&out), 2, "{out}");
        assert!(out.contains("(2 rows)"), "{out}");
        // The view's name and columns are offered by completion.
        let words = repl.completion_words();
        let words = words.lock().expect("words").clone();
        for w in ["s", "per_course", "course_id", "views", "event_time", "_errors"] {
            assert!(words.contains(&w.to_string()), "{w} missing from {words:?}");
        }
    }

    #[tokio::test]
    async fn backslash_commands() {
        let mut repl = with_source().await;
        let (_, out) = input(
            &mut repl,
            "CREATE VIEW big AS SELECT user_id, course_id FROM s WHERE course_id > 10;",
        )
        .await;
        assert!(out.contains("created view big"), "{out}");

        let (_, out) = input(&mut repl, "\\d").await;
        assert!(header(&out).contains("name") && header(&out).contains("kind"), "{out}");
        assert!(
            out.contains("| s ") && out.contains("generator") && out.contains("| big "),
            "{out}"
        );
        assert!(out.contains("(2 rows)"), "{out}");

        let (_, out) = input(&mut repl, "\\d s").await;
        for col in [
            "user_id",
            "course_id",
            "region",
            "purchased",
            "event_time",
            "WATERMARK FOR event_time",
        ] {
            assert!(out.contains(col), "{col}: {out}");
        }
        let (_, out) = input(&mut repl, "\\d nope").await;
        assert!(out.starts_with("error: ") && out.contains("nope"), "{out}");
        let words = repl.completion_words();
        assert!(words.lock().expect("words").contains(&"big".to_string()));

        let (_, out) = input(&mut repl, "\\format csv").await;
        assert_eq!(out, "format is csv\n");
        assert_eq!(repl.format, PrintFormat::Csv);
        let (_, out) = input(&mut repl, "SHOW SOURCES;").await;
        assert!(out.starts_with("name,kind,detail\ns,source,generator\n"), "{out}");
        let (_, out) = input(&mut repl, "\\format xml").await;
        assert!(out.starts_with("error: unknown format 'xml'"), "{out}");
        let (_, out) = input(&mut repl, "\\format json").await;
        assert_eq!(out, "format is json\n");
        let (_, out) = input(&mut repl, "SHOW SOURCES;").await;
        assert!(out.contains("\"name\":\"s\""), "{out}");
        input(&mut repl, "\\format table").await;

        let (_, out) = input(&mut repl, "\\timing").await;
        assert_eq!(out, "timing is on\n");
        let (_, out) = input(&mut repl, "SHOW SINKS;").await;
        assert!(
            out.contains("(0 rows)") && out.contains("Time: ") && out.contains(" ms"),
            "{out}"
        );
        let (_, out) = input(&mut repl, "\\timing").await;
        assert_eq!(out, "timing is off\n");
        assert!(!repl.timing);

        let (_, out) = input(&mut repl, "\\?").await;
        assert!(out.contains("\\timing") && out.contains("\\format"), "{out}");
        let (control, out) = input(&mut repl, "\\bogus").await;
        assert_eq!(control, Control::Continue);
        assert!(out.starts_with("error: unknown command '\\bogus'"), "{out}");
    }

    #[tokio::test]
    async fn errors_do_not_end_the_session() {
        let mut repl = Repl::new(EngineConfig::default());
        let (control, out) = input(&mut repl, "SELEC 1;").await;
        assert_eq!(control, Control::Continue);
        assert!(out.starts_with("error: 1:1"), "{out}");
        let (_, out) = input(&mut repl, "SELECT * FROM missing;").await;
        assert!(out.starts_with("error: "), "{out}");
        let (_, out) = input(&mut repl, "SELECT 1 AS one;").await;
        assert!(header(&out).contains("one") && out.contains("(1 row)"), "{out}");
        // The second statement of an input fails: the first ran, the error names the line.
        let (_, out) = input(&mut repl, "SELECT 2 AS two;\nDESCRIBE nothing;\nSELECT 3 AS three;").await;
        assert!(
            out.contains("two") && out.contains("error: line 2: ") && !out.contains("three"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn quit_and_exit() {
        let mut repl = Repl::new(EngineConfig::default());
        assert_eq!(input(&mut repl, "\\q").await.0, Control::Quit);
        assert_eq!(input(&mut repl, "  \\quit  ").await.0, Control::Quit);
        assert_eq!(input(&mut repl, "exit").await.0, Control::Quit);
        assert_eq!(input(&mut repl, "").await, (Control::Continue, String::new()));
    }

    #[tokio::test]
    async fn include_runs_a_file_and_stops_at_the_first_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.sql");
        std::fs::write(&good, format!("-- a source and a query\n{SOURCE}\n\n{TOP3}\n")).expect("write");
        let mut repl = Repl::new(EngineConfig::default());
        let (_, out) = input(&mut repl, &format!("\\i {}", good.display())).await;
        assert!(out.contains("created source s") && out.contains("(3 rows)"), "{out}");

        let bad = dir.path().join("bad.sql");
        std::fs::write(&bad, "SHOW SOURCES;\n\nSELEC 1;\n").expect("write");
        let (_, out) = input(&mut repl, &format!("\\i {}", bad.display())).await;
        assert!(out.starts_with(&format!("error: {}:3:", bad.display())), "{out}");

        let failing = dir.path().join("failing.sql");
        std::fs::write(
            &failing,
            "CREATE VIEW v AS SELECT user_id FROM s;\nDESCRIBE nothing;\nCREATE VIEW w AS SELECT 1;\n",
        )
        .expect("write");
        let (_, out) = input(&mut repl, &format!("\\i {}", failing.display())).await;
        assert!(out.contains("created view v"), "{out}");
        assert!(out.contains(&format!("error: {}:2: ", failing.display())), "{out}");
        assert!(!out.contains("created view w"), "{out}");

        let (_, out) = input(&mut repl, "\\i /no/such/file.sql").await;
        assert!(out.starts_with("error: /no/such/file.sql"), "{out}");
    }

    const PACED: &str = "CREATE SOURCE paced (user_id BIGINT NOT NULL, event_time TIMESTAMP NOT NULL) \
        WITH (connector = 'generator', rate = '50');\nCREATE MATERIALIZED VIEW live AS SELECT user_id FROM paced;";

    #[tokio::test]
    async fn pause_and_resume_a_local_query() {
        let mut repl = Repl::new(EngineConfig::default());
        let (_, out) = input(&mut repl, PACED).await;
        assert!(out.contains("created materialized view live"), "{out}");
        let (_, out) = input(&mut repl, "\\pause live").await;
        assert_eq!(out, "query live is paused\n");
        let (_, out) = input(&mut repl, "\\pause LIVE").await;
        assert_eq!(out, "error: 'live' is already paused\n");
        let (_, out) = input(&mut repl, "\\resume live").await;
        assert_eq!(out, "query live is running\n");
        let (_, out) = input(&mut repl, "\\resume nope").await;
        assert_eq!(out, "error: no continuous query 'nope'\n");
        repl.session_mut().expect("local").stop_all().await;
    }

    /// The REPL against an in-process `freshet serve` on port 0.
    #[tokio::test]
    async fn remote_backend_prints_like_a_local_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = crate::server::AppState::new(Session::new(EngineConfig::default()), Default::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::server::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let remote = Remote::new(&addr.to_string(), None).expect("url");
        remote.check().await.expect("server answers");
        let mut repl = Repl::with_backend(Backend::Remote(remote));
        assert!(repl.session_mut().is_none());

        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("script.sql");
        std::fs::write(&script, format!("{SOURCE}\n{PACED}\nDESCRIBE nothing;\nSHOW SINKS;\n")).expect("write");
        let (_, out) = input(&mut repl, &format!("\\i {}", script.display())).await;
        assert!(
            out.contains("created source s\n") && out.contains("created materialized view live\n"),
            "{out}"
        );
        assert!(
            out.ends_with(&format!("error: {}:4: 'nothing' not found\n", script.display())),
            "{out}"
        );
        // Completion knows the server's objects and their columns.
        let words = repl.completion_words();
        let words = words.lock().expect("words").clone();
        for w in ["s", "paced", "live", "course_id", "user_id", "_errors"] {
            assert!(words.contains(&w.to_string()), "{w} missing from {words:?}");
        }

        let (_, out) = input(&mut repl, "\\d").await;
        assert!(out.contains("| live ") && out.contains("(3 rows)"), "{out}");
        let (_, out) = input(&mut repl, "\\d live").await;
        assert!(out.contains("| user_id ") && out.contains("(1 row)"), "{out}");
        let (_, out) = input(&mut repl, "SELEC 1;").await;
        assert!(out.starts_with("error: 1:1: "), "{out}");
        let (_, out) = input(&mut repl, "SHOW SOURCES;\nDESCRIBE nothing;").await;
        assert!(out.ends_with("(2 rows)\nerror: line 2: 'nothing' not found\n"), "{out}");
        let (_, out) = input(&mut repl, "EXPLAIN SELECT * FROM live;").await;
        assert!(out.contains("TableScan: live") && out.ends_with('\n'), "{out}");
        let (_, out) = input(&mut repl, "SELECT user_id FROM paced;").await;
        assert!(out.starts_with("error: a continuous SELECT has no end"), "{out}");
        let (_, out) = input(&mut repl, "\\pause live").await;
        assert_eq!(out, "query live is paused\n");
        let (_, out) = input(&mut repl, "\\pause live").await;
        assert_eq!(out, "error: 'live' is already paused\n");
        let (_, out) = input(&mut repl, "\\resume live").await;
        assert_eq!(out, "query live is running\n");

        let _ = stop.send(());
        server.await.expect("server task").expect("server");
        let (_, out) = input(&mut repl, "SHOW QUERIES;").await;
        assert!(
            out.starts_with(&format!("error: cannot reach the freshet server at http://{addr}: ")),
            "{out}"
        );
    }

    #[test]
    fn validator_needs_a_semicolon() {
        assert!(!helper::is_complete("SELECT 1"));
        assert!(helper::is_complete("SELECT 1;"));
        assert!(helper::is_complete("\\d s"));
    }

    #[test]
    fn live_drawing_fits_the_screen() {
        let body = (0..30)
            .map(|i| format!("line {i} {}", "x".repeat(100)))
            .collect::<Vec<_>>()
            .join("\n");
        let (frame, n) = fit(&body, "status", Some((40, 10)));
        assert_eq!(n, 9);
        assert_eq!(frame.lines().count(), 9);
        assert!(frame.lines().all(|l| l.chars().count() <= 39));
        assert!(frame.contains("more lines") && frame.ends_with("status\n"));
        let (frame, n) = fit("a\nb\n", "s", None);
        assert_eq!((frame.as_str(), n), ("a\nb\ns\n", 3));
    }
}
