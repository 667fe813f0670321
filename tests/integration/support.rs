//! Helpers shared by the integration tests.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use freshet::connector::generator::{CourseGenerator, EPOCH_2026_MS, GenOptions, course_schema};
use freshet::engine::query::EngineConfig;
use freshet::session::{Outcome, Session};
use freshet::sql::parser::parse_script;

pub fn gen_opts(events: u64, seed: u64) -> GenOptions {
    GenOptions {
        seed,
        events: Some(events),
        ..GenOptions::default()
    }
}

/// Write the generator's events as JSON lines to `path`.
pub fn write_events(path: &Path, opts: &GenOptions) {
    let mut g = CourseGenerator::new(opts.clone(), EPOCH_2026_MS);
    let mut s = String::new();
    while let Some(e) = g.next_event() {
        e.write_json(&mut s);
    }
    std::fs::write(path, s).expect("write events");
}

/// The same events as an in-memory table for batch (oracle) queries.
pub fn oracle_ctx(opts: &GenOptions, name: &str) -> SessionContext {
    let mut g = CourseGenerator::new(opts.clone(), EPOCH_2026_MS);
    let mut batches = Vec::new();
    while let Some(b) = g.next_batch(10_000) {
        batches.push(b);
    }
    let ctx = SessionContext::new();
    ctx.register_table(
        name,
        Arc::new(MemTable::try_new(course_schema(), vec![batches]).expect("memtable")),
    )
    .expect("register");
    ctx
}

pub async fn batch_rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches = ctx
        .sql(sql)
        .await
        .expect("oracle sql")
        .collect()
        .await
        .expect("oracle run");
    sorted_rows(&batches)
}

/// Rows as `a|b|c` text, sorted, so results compare regardless of order.
pub fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).expect("fmt"))
            .collect();
        for r in 0..b.num_rows() {
            rows.push(
                fmts.iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    rows.sort();
    rows
}

pub const COURSE_COLUMNS: &str =
    "user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
    event_time TIMESTAMP NOT NULL, WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND";

/// A session whose queries run at micro-batches of `batch_size`, on [`workers_for`] it.
pub fn session(batch_size: usize) -> Session {
    session_on(batch_size, workers_for(batch_size))
}

/// A session whose queries run at micro-batches of `batch_size` on `workers`.
pub fn session_on(batch_size: usize, workers: usize) -> Session {
    Session::new(EngineConfig {
        batch_size,
        workers,
        ..EngineConfig::default()
    })
}

/// Workers (decode threads, and instances of each keyed operator) for a micro-batch size. The oracle
/// families run each query at several sizes, so each query also runs split several ways: row by row
/// on one instance, small batches over 3 (routed on the query thread), batches of thousands over 2
/// and large ones over 4 (the instances on threads of their own).
pub fn workers_for(batch_size: usize) -> usize {
    match batch_size {
        0..=1 => 1,
        2..=999 => 3,
        1_000..=9_999 => 2,
        _ => 4,
    }
}

/// Execute a script, expecting every statement to succeed; returns the last outcome's rows, if any.
pub async fn exec(session: &mut Session, sql: &str) -> Vec<RecordBatch> {
    let mut last = Vec::new();
    for st in parse_script(sql).expect("script parses") {
        match session
            .execute(&st.statement)
            .await
            .unwrap_or_else(|e| panic!("statement at line {}: {e}", st.line))
        {
            Outcome::Rows(b, _) => last = b,
            Outcome::Live(live) => {
                live.handle.await.expect("join").expect("live query");
                last = freshet::session::present(&live.table, &live.presentation)
                    .await
                    .expect("present");
            }
            _ => {}
        }
    }
    last
}

/// Wait for the session's bounded queries to finish, failing the test (with each query's status)
/// after `limit` instead of hanging it.
pub async fn finish_within(session: &mut Session, limit: std::time::Duration) {
    if tokio::time::timeout(limit, session.wait_bounded()).await.is_err() {
        let states: Vec<String> = session
            .queries
            .iter()
            .map(|q| format!("{}: {} {:?}", q.name, q.status(), q.outcome))
            .collect();
        panic!("the bounded queries did not finish within {limit:?}: {states:?}");
    }
}

/// Run a streaming query into a materialized view over the source(s) already declared, wait for the
/// bounded input to end, and return the view's rows.
pub async fn streamed(session: &mut Session, query: &str) -> Vec<String> {
    exec(session, &format!("CREATE MATERIALIZED VIEW mv AS {query};")).await;
    finish_within(session, std::time::Duration::from_secs(300)).await;
    for q in &session.queries {
        if let Some(Err(e)) = &q.outcome {
            panic!("query {} failed: {e}", q.name);
        }
    }
    let rows = exec(session, "SELECT * FROM mv;").await;
    exec(session, "DROP MATERIALIZED VIEW mv;").await;
    sorted_rows(&rows)
}

/// Compare row sets, reporting only the differences (row sets here run to thousands of rows).
pub fn assert_rows_eq(got: &[String], want: &[String], what: &str) {
    if got == want {
        return;
    }
    let g: std::collections::BTreeSet<&String> = got.iter().collect();
    let w: std::collections::BTreeSet<&String> = want.iter().collect();
    let missing: Vec<&&String> = w.difference(&g).take(5).collect();
    let extra: Vec<&&String> = g.difference(&w).take(5).collect();
    panic!(
        "{what}: {} rows, expected {}; missing (first 5): {missing:?}; unexpected (first 5): {extra:?}",
        got.len(),
        want.len()
    );
}

/// Whether tests against real services must fail (`CI=true` or `FRESHET_REQUIRE_SERVICES=1`, as the
/// README's test command sets) rather than skip when a service is not there.
pub fn services_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var("FRESHET_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Whether `name` accepts connections at `addr`. If not: fails the test when services are required,
/// otherwise says the test is skipped and returns false. (The same rule as `services.rs`.)
pub fn service_up(name: &str, addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok());
    if reachable {
        return true;
    }
    assert!(
        !services_required(),
        "{name} is not reachable at {addr}: start it with scripts/services start"
    );
    eprintln!("skipped: {name} is not reachable at {addr} (scripts/services start)");
    false
}

/// A name no other run uses (topics, groups): `prefix_<pid>_<nanos mod 1e9>`.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// The sum of the newest checkpoint epoch of every query under `chk` (grows with any progress).
pub fn progress(chk: &Path) -> u64 {
    newest_epochs(chk).values().sum()
}

/// The newest checkpoint epoch of each query directory under `chk`.
fn newest_epochs(chk: &Path) -> std::collections::BTreeMap<std::ffi::OsString, u64> {
    let Ok(queries) = std::fs::read_dir(chk) else {
        return Default::default();
    };
    queries
        .filter_map(|q| q.ok())
        .filter_map(|q| {
            let newest = std::fs::read_dir(q.path())
                .ok()?
                .filter_map(|c| c.ok())
                .filter_map(|c| c.file_name().to_str()?.strip_prefix("chk-")?.parse::<u64>().ok())
                .max()?;
            Some((q.file_name(), newest))
        })
        .collect()
}

/// Every query that had a checkpoint in `before` has a newer one now, and there is at least one:
/// each query of the job has made progress in this run (so a kill tests every query's restore).
fn every_query_moved(chk: &Path, before: &std::collections::BTreeMap<std::ffi::OsString, u64>) -> bool {
    let now = newest_epochs(chk);
    !now.is_empty() && before.iter().all(|(q, e)| now.get(q).is_some_and(|n| n > e))
}

/// The published Parquet files of `dir` as table `t`, queried with `sql`; rows as text, sorted.
pub async fn parquet_rows(dir: &Path, sql: &str) -> Vec<String> {
    let ctx = SessionContext::new();
    ctx.register_parquet("t", dir.to_str().expect("utf8"), Default::default())
        .await
        .expect("parquet");
    batch_rows(&ctx, sql).await
}

/// `n` pseudo-random delays below `max_ms` from `seed` (xorshift), so that kill points can be
/// replayed.
pub fn kill_delays(seed: u64, n: usize, max_ms: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % max_ms
        })
        .collect()
}

/// Run a job (`start` starts it) and SIGKILL it once every query under `chk` has taken a new
/// checkpoint in this run, each kill `waits_ms[i]` after that, so every run makes progress and
/// the kill lands at another point of an epoch each time; then let it finish. Returns how many runs were killed
/// mid-run and the output of the run that finished (one that finishes before its kill ends the
/// killing: run again, it would start over, as a finished job keeps no checkpoints).
pub fn kill_after_checkpoints(
    start: impl Fn() -> std::process::Child,
    chk: &Path,
    waits_ms: &[u64],
) -> (usize, std::process::Output) {
    use std::time::{Duration, Instant};
    let mut kills = 0;
    for wait in waits_ms {
        let mut child = KillOnDrop::new(start());
        let before = newest_epochs(chk);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !every_query_moved(chk, &before) && child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "no checkpoint within 120 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(*wait));
        if child.try_wait().expect("wait").is_some() {
            return (kills, child.into_inner().wait_with_output().expect("output"));
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        kills += 1;
    }
    (kills, start().wait_with_output().expect("final run"))
}

/// A child process killed (SIGKILL) when this is dropped — also when a test panics while the child
/// runs, so that a failed test never leaves an engine running behind it.
pub struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    pub fn new(child: std::process::Child) -> KillOnDrop {
        KillOnDrop(Some(child))
    }

    /// The child, no longer killed on drop.
    pub fn into_inner(mut self) -> std::process::Child {
        self.0.take().expect("the child is there until into_inner")
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().expect("the child is there until into_inner")
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("the child is there until into_inner")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0
            && let Ok(None) = c.try_wait()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
