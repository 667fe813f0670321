//! Queries of one script that read the same Kafka source share one reader
//! (`connector::kafka_shared`), against real Kafka: each query still sees exactly its own part of
//! the topic — from its own start (its consumer group's offsets, or its checkpoint) to its own end —
//! and commits its own progress.

use std::sync::Arc;
use std::time::Duration;

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use freshet::connector::generator::{CourseGenerator, EPOCH_2026_MS, GenOptions, course_schema};
use freshet::connector::kafka_shared::SharedKafka;
use freshet::engine::query::EngineConfig;
use freshet::session::Session;

use crate::services::{KAFKA, ORACLE_SQL, up};
use crate::support::*;

const DAY_MS: i64 = 86_400_000;

/// Produce the generator's events with event times from `epoch` on; returns them as batches.
async fn produce_at(topic: &str, opts: &GenOptions, epoch: i64) -> Vec<datafusion::arrow::record_batch::RecordBatch> {
    crate::services::produce_at(topic, opts, &[], epoch).await;
    let mut g = CourseGenerator::new(opts.clone(), epoch);
    let mut batches = Vec::new();
    while let Some(b) = g.next_batch(10_000) {
        batches.push(b);
    }
    batches
}

async fn oracle(batches: Vec<datafusion::arrow::record_batch::RecordBatch>) -> Vec<String> {
    oracle_of(batches, ORACLE_SQL).await
}

/// `sql` over `batches` as the table `ev`, in batch.
async fn oracle_of(batches: Vec<datafusion::arrow::record_batch::RecordBatch>, sql: &str) -> Vec<String> {
    let ctx = SessionContext::new();
    ctx.register_table(
        "ev",
        Arc::new(MemTable::try_new(course_schema(), vec![batches]).expect("memtable")),
    )
    .expect("register");
    batch_rows(&ctx, sql).await
}

fn shared_session(batch_size: usize) -> Session {
    Session::new(EngineConfig {
        batch_size,
        shared_kafka: Some(Arc::new(SharedKafka::default())),
        ..EngineConfig::default()
    })
}

const SINK_SQL: &str = "SELECT course_id, window_start, COUNT(*) AS views, COUNT(DISTINCT user_id) AS viewers,
       SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
FROM TUMBLE(ev, event_time, INTERVAL '10' SECOND) GROUP BY course_id, window_start, window_end";

/// Start the session's readers, wait for its bounded queries and check each ended well.
async fn run_all(s: &mut Session, readers: &[(&str, usize)]) {
    let started = s.start_shared_readers();
    let started: Vec<(&str, usize)> = started.iter().map(|(n, q)| (n.as_str(), *q)).collect();
    assert_eq!(started, readers, "readers started, with the queries each serves");
    finish_within(s, Duration::from_secs(300)).await;
    for q in &s.queries {
        assert!(matches!(q.outcome, Some(Ok(_))), "{}: {:?}", q.name, q.outcome);
    }
}

async fn archived(dir: &std::path::Path) -> Vec<String> {
    parquet_rows(dir, "SELECT course_id, window_start, views, viewers, purchases FROM t").await
}

/// A query that resumes its consumer group's offsets and one that reads from the start share a
/// reader: the reader starts at the earlier, the first query skips what it had read (part of a
/// poll, decoded again for it) and each equals the batch answer over exactly its events, at two
/// micro-batch sizes.
#[tokio::test]
async fn queries_sharing_a_reader_each_read_from_their_own_start() {
    if !up("Kafka", KAFKA) {
        return;
    }
    for batch_size in [1_000, 65_536] {
        let topic = unique("shared");
        let source = format!(
            "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{KAFKA}',
             topic = '{topic}', startup = 'group', bounded = 'latest');"
        );
        let first = produce_at(&topic, &gen_opts(12_000, 31), EPOCH_2026_MS).await;
        let dir = tempfile::tempdir().expect("tmp");
        let out = |name: &str| dir.path().join(name);
        let sink = |name: &str, path: &str| {
            format!(
                "CREATE SINK {name} WITH (connector = 'parquet', path = '{}') AS {SINK_SQL};",
                out(path).display()
            )
        };
        // Query `a` reads the first events and commits its group's offsets at the end.
        let mut s = shared_session(batch_size);
        exec(&mut s, &source).await;
        exec(&mut s, &sink("a", "a1")).await;
        run_all(&mut s, &[("ev", 1)]).await;
        drop(s);
        // A day later, more events; `a` resumes its group, `b` (a new group) reads from the start.
        let second = produce_at(&topic, &gen_opts(9_000, 32), EPOCH_2026_MS + DAY_MS).await;
        let mut s = shared_session(batch_size);
        exec(&mut s, &source).await;
        exec(&mut s, &sink("a", "a2")).await;
        exec(&mut s, &sink("b", "b2")).await;
        run_all(&mut s, &[("ev", 2)]).await;
        let what = format!("batch size {batch_size}");
        assert_rows_eq(
            &archived(&out("a1")).await,
            &oracle(first.clone()).await,
            &format!("a, first run, {what}"),
        );
        assert_rows_eq(
            &archived(&out("a2")).await,
            &oracle(second.clone()).await,
            &format!("a resumed, {what}"),
        );
        let all = first.into_iter().chain(second).collect();
        assert_rows_eq(
            &archived(&out("b2")).await,
            &oracle(all).await,
            &format!("b from the start, {what}"),
        );
    }
}

/// `freshet run`: the queries declared before a `SELECT` share a reader, started before the
/// `SELECT` (which waits for them: without the start it would wait for ever); a query declared after
/// it gets a reader of its own. Every archive equals the batch answer.
#[tokio::test]
async fn a_script_shares_a_reader_among_the_queries_before_each_select() {
    if !up("Kafka", KAFKA) {
        return;
    }
    let topic = unique("shared_run");
    let events = produce_at(&topic, &gen_opts(15_000, 33), EPOCH_2026_MS).await;
    let dir = tempfile::tempdir().expect("tmp");
    let sink =
        |name: &str| format!("CREATE SINK {name} WITH (connector = 'parquet', path = 'out/{name}') AS {SINK_SQL};");
    let script = format!(
        "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{KAFKA}',
             topic = '{topic}', startup = 'earliest', bounded = 'latest');
         {}
         {}
         SELECT 40 + 2 AS answer;
         {}",
        sink("a"),
        sink("b"),
        sink("c")
    );
    std::fs::write(dir.path().join("job.sql"), script).expect("script");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_freshet"))
        .current_dir(dir.path())
        .env("FRESHET_DATA_DIR", dir.path().join("data"))
        .args(["run", "job.sql", "--batch-size", "1500", "--format", "csv"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start freshet");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("freshet run did not finish within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().expect("output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("42"), "the SELECT ran: {stdout}");
    assert_eq!(
        stderr.matches("ev: one Kafka reader for 2 queries").count(),
        1,
        "a and b share one reader, c has its own: {stderr}"
    );
    let want = oracle(events).await;
    for name in ["a", "b", "c"] {
        assert_rows_eq(&archived(&dir.path().join("out").join(name)).await, &want, name);
    }
}

/// Queries reading different columns of one source share a reader that decodes only the columns
/// some query reads (`purchased` is read by none); each query gets its own columns — also of the
/// records of a poll decoded again for it (`a` resumes its group, `b` reads from the start) — and
/// equals the batch answer.
#[tokio::test]
async fn queries_reading_different_columns_share_a_reader_and_each_gets_its_own() {
    if !up("Kafka", KAFKA) {
        return;
    }
    let topic = unique("shared_cols");
    let source = format!(
        "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{KAFKA}',
         topic = '{topic}', startup = 'group', bounded = 'latest');"
    );
    let (a_sql, a_oracle) = (
        "SELECT course_id, window_start, COUNT(*) AS views FROM TUMBLE(ev, event_time, INTERVAL '10' SECOND)
         GROUP BY course_id, window_start, window_end",
        "SELECT course_id, date_bin(INTERVAL '10 seconds', event_time, TIMESTAMP '1970-01-01'), COUNT(*)
         FROM ev GROUP BY 1, 2",
    );
    let (b_sql, b_oracle) = (
        "SELECT region, window_start, COUNT(DISTINCT user_id) AS users FROM TUMBLE(ev, event_time, INTERVAL '10' SECOND)
         GROUP BY region, window_start, window_end",
        "SELECT region, date_bin(INTERVAL '10 seconds', event_time, TIMESTAMP '1970-01-01'), COUNT(DISTINCT user_id)
         FROM ev GROUP BY 1, 2",
    );
    let dir = tempfile::tempdir().expect("tmp");
    let out = |name: &str| dir.path().join(name);
    let sink = |name: &str, path: &str, sql: &str| {
        format!(
            "CREATE SINK {name} WITH (connector = 'parquet', path = '{}') AS {sql};",
            out(path).display()
        )
    };
    let first = produce_at(&topic, &gen_opts(8_000, 41), EPOCH_2026_MS).await;
    let mut s = shared_session(1_000);
    exec(&mut s, &source).await;
    exec(&mut s, &sink("a", "a1", a_sql)).await;
    run_all(&mut s, &[("ev", 1)]).await;
    drop(s);
    let second = produce_at(&topic, &gen_opts(6_000, 42), EPOCH_2026_MS + DAY_MS).await;
    let mut s = shared_session(1_000);
    exec(&mut s, &source).await;
    exec(&mut s, &sink("a", "a2", a_sql)).await;
    exec(&mut s, &sink("b", "b2", b_sql)).await;
    run_all(&mut s, &[("ev", 2)]).await;
    let all = "SELECT * FROM t";
    assert_rows_eq(
        &parquet_rows(&out("a1"), all).await,
        &oracle_of(first.clone(), a_oracle).await,
        "a, first run",
    );
    assert_rows_eq(
        &parquet_rows(&out("a2"), all).await,
        &oracle_of(second.clone(), a_oracle).await,
        "a resumed",
    );
    let events = first.into_iter().chain(second).collect();
    assert_rows_eq(
        &parquet_rows(&out("b2"), all).await,
        &oracle_of(events, b_oracle).await,
        "b from the start",
    );
}
