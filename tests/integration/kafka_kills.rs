//! A live Kafka run killed with SIGKILL again and again: TUMBLE into HBase, HOP, SESSION and a
//! windowed join into Parquet, an updating aggregate into a materialized view — five queries reading
//! one Kafka source. After the last run finishes, every sink holds the batch answer: nothing lost,
//! nothing twice, one version per HBase cell.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use hbase_thrift::hbase::THbaseSyncClient;

use crate::services::{KAFKA, THRIFT, produce, up};
use crate::support::{
    COURSE_COLUMNS, assert_rows_eq, batch_rows, exec, gen_opts, kill_after_checkpoints, kill_delays, oracle_ctx,
    parquet_rows, session, sorted_rows, unique,
};

const EVENTS: u64 = 300_000;
const SEED: u64 = 17;

fn job(topic: &str, table: &str) -> String {
    let windowed = |filter: &str| {
        format!(
            "SELECT region, window_start, window_end, COUNT(*) AS n
             FROM TABLE(TUMBLE(TABLE views, DESCRIPTOR(event_time), INTERVAL '1' MINUTE)) {filter}
             GROUP BY region, window_start, window_end"
        )
    };
    format!(
        "CREATE SOURCE views ({COURSE_COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{KAFKA}',
             topic = '{topic}', startup = 'earliest', bounded = 'latest');
         CREATE SINK per_minute WITH (connector = 'hbase', thrift = '{THRIFT}', table = '{table}',
             column_family = 'v', row_key = 'course_id, window_start', create_table = 'true') AS
         SELECT course_id, window_start, window_end, COUNT(*) AS views, COUNT(DISTINCT user_id) AS viewers,
                SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
         FROM TABLE(TUMBLE(TABLE views, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))
         GROUP BY course_id, window_start, window_end;
         CREATE SINK hopping WITH (connector = 'parquet', path = 'out/hopping') AS
         SELECT region, window_start, COUNT(*) AS views
         FROM TABLE(HOP(TABLE views, DESCRIPTOR(event_time), INTERVAL '20' SECOND, INTERVAL '1' MINUTE))
         GROUP BY region, window_start, window_end;
         CREATE SINK sessions WITH (connector = 'parquet', path = 'out/sessions') AS
         SELECT user_id, window_start, window_end, COUNT(*) AS views
         FROM TABLE(SESSION(TABLE views PARTITION BY user_id, DESCRIPTOR(event_time), INTERVAL '20' SECOND))
         GROUP BY user_id, window_start, window_end;
         CREATE SINK buyers WITH (connector = 'parquet', path = 'out/buyers') AS
         SELECT v.region, v.window_start, v.n AS views, b.n AS buys
         FROM ({all}) v JOIN ({buys}) b
           ON v.region = b.region AND v.window_start = b.window_start AND v.window_end = b.window_end;
         CREATE MATERIALIZED VIEW per_course AS SELECT course_id, COUNT(*) AS views FROM views GROUP BY course_id;
         SELECT course_id, views FROM per_course;",
        all = windowed(""),
        buys = windowed("WHERE purchased"),
    )
}

fn start(dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_freshet"))
        .current_dir(dir)
        .args([
            "run",
            "job.sql",
            "--checkpoint-dir",
            "chk",
            "--checkpoint-interval",
            "0.2",
            "--batch-size",
            "2000",
            "--format",
            "csv",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start freshet")
}

/// How many versions each cell of `table` holds: cell → versions.
fn versions(table: &str) -> BTreeMap<(Vec<u8>, Vec<u8>), usize> {
    let mut c = freshet::connector::hbase::connect(THRIFT).expect("thrift");
    let t = table.as_bytes().to_vec();
    let id = c
        .scanner_open(t.clone(), Vec::new(), vec![b"v".to_vec()], BTreeMap::new())
        .expect("scan");
    let mut cells = Vec::new();
    loop {
        let rows = c.scanner_get_list(id, 1000).expect("scan rows");
        if rows.is_empty() {
            break;
        }
        for r in rows {
            let row = r.row.unwrap_or_default();
            for col in r.columns.unwrap_or_default().into_keys() {
                cells.push((row.clone(), col));
            }
        }
    }
    let _ = c.scanner_close(id);
    cells
        .into_iter()
        .map(|(row, col)| {
            let n = c
                .get_ver(t.clone(), row.clone(), col.clone(), 1000, BTreeMap::new())
                .expect("versions")
                .len();
            ((row, col), n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_of_a_live_kafka_run_leave_hbase_parquet_and_views_exact() {
    if !up("Kafka", KAFKA) || !up("HBase Thrift", THRIFT) {
        return;
    }
    let topic = unique("kills");
    let table = unique("kills_per_minute");
    let opts = gen_opts(EVENTS, SEED);
    produce(&topic, &opts, &[]).await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("job.sql"), job(&topic, &table)).expect("write");
    let chk = dir.path().join("chk");

    let (kills, out) = kill_after_checkpoints(|| start(dir.path()), &chk, &kill_delays(0x2545_F491_4F6C_DD1D, 12, 250));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        kills >= 10,
        "only {kills} runs were killed before the job finished: make it longer"
    );
    assert!(stderr.contains("resuming from checkpoint"), "{stderr}");
    assert!(!stderr.contains("not checkpointed"), "{stderr}");

    let oracle = oracle_ctx(&opts, "ev");
    // The materialized view, printed by the final run.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut got: Vec<String> = stdout
        .lines()
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|l| l.replace(',', "|"))
        .collect();
    got.sort();
    let want = batch_rows(&oracle, "SELECT course_id, COUNT(*) FROM ev GROUP BY 1").await;
    assert_rows_eq(&got, &want, "the materialized view after kills");

    // HBase: the batch answer, one version per cell.
    let mut s = session(10_000);
    let name = unique("read");
    exec(
        &mut s,
        &format!(
            "CREATE TABLE {name} (course_id BIGINT, window_start TIMESTAMP, views BIGINT, viewers BIGINT, purchases BIGINT)
             WITH (connector = 'hbase', thrift = '{THRIFT}', table = '{table}', row_key = 'course_id, window_start');"
        ),
    )
    .await;
    let got = sorted_rows(
        &exec(
            &mut s,
            &format!("SELECT course_id, window_start, views, viewers, purchases FROM {name};"),
        )
        .await,
    );
    let want = batch_rows(
        &oracle,
        "SELECT course_id, date_bin(INTERVAL '1 minute', event_time, TIMESTAMP '1970-01-01'), COUNT(*),
                COUNT(DISTINCT user_id), SUM(CASE WHEN purchased THEN 1 ELSE 0 END) FROM ev GROUP BY 1, 2",
    )
    .await;
    assert_rows_eq(&got, &want, "HBase after kills");
    let many: Vec<_> = versions(&table).into_iter().filter(|(_, n)| *n != 1).take(5).collect();
    assert!(many.is_empty(), "cells with more than one version: {many:?}");

    let out = dir.path().join("out");
    let got = parquet_rows(&out.join("hopping"), "SELECT region, window_start, views FROM t").await;
    let want = batch_rows(
        &oracle,
        "SELECT region, ws, COUNT(*) FROM (
            SELECT region, date_bin(INTERVAL '20 seconds', event_time, TIMESTAMP '1970-01-01') - s.o AS ws
            FROM ev CROSS JOIN (VALUES (INTERVAL '0 seconds'), (INTERVAL '20 seconds'), (INTERVAL '40 seconds')) AS s(o))
         GROUP BY region, ws",
    )
    .await;
    assert_rows_eq(&got, &want, "HOP after kills");

    let got = parquet_rows(
        &out.join("sessions"),
        "SELECT user_id, window_start, window_end, views FROM t",
    )
    .await;
    let want = batch_rows(
        &oracle,
        "SELECT user_id, MIN(event_time), MAX(event_time) + INTERVAL '20 seconds', COUNT(*) FROM (
            SELECT user_id, event_time, SUM(brk) OVER (PARTITION BY user_id ORDER BY event_time
                ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid
            FROM (SELECT user_id, event_time,
                    CASE WHEN event_time - LAG(event_time) OVER (PARTITION BY user_id ORDER BY event_time)
                              <= INTERVAL '20 seconds' THEN 0 ELSE 1 END AS brk FROM ev))
         GROUP BY user_id, sid",
    )
    .await;
    assert_rows_eq(&got, &want, "SESSION after kills");

    let got = parquet_rows(&out.join("buyers"), "SELECT region, window_start, views, buys FROM t").await;
    let want = batch_rows(
        &oracle,
        "WITH w AS (SELECT region, date_bin(INTERVAL '1 minute', event_time, TIMESTAMP '1970-01-01') AS ws,
                           COUNT(*) AS n, SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS b FROM ev GROUP BY 1, 2)
         SELECT region, ws, n, b FROM w WHERE b > 0",
    )
    .await;
    assert_rows_eq(&got, &want, "the windowed join after kills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_an_hbase_batch_leaves_hbase_exact() {
    if !up("Kafka", KAFKA) || !up("HBase Thrift", THRIFT) {
        return;
    }
    let topic = unique("hbase_crash");
    let table = unique("hbase_crash");
    let opts = gen_opts(60_000, 19);
    produce(&topic, &opts, &[]).await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("job.sql"),
        format!(
            "CREATE SOURCE views ({COURSE_COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{KAFKA}',
                 topic = '{topic}', startup = 'earliest', bounded = 'latest');
             CREATE SINK per_minute WITH (connector = 'hbase', thrift = '{THRIFT}', table = '{table}',
                 column_family = 'v', row_key = 'course_id, window_start', create_table = 'true', batch_rows = '50') AS
             SELECT course_id, window_start, window_end, COUNT(*) AS views, COUNT(DISTINCT user_id) AS viewers,
                    SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
             FROM TABLE(TUMBLE(TABLE views, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))
             GROUP BY course_id, window_start, window_end;"
        ),
    )
    .expect("write");
    let run = |failpoints: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_freshet"));
        if let Some(f) = failpoints {
            c.env("FAILPOINTS", f);
        }
        c.current_dir(dir.path())
            .args([
                "run",
                "job.sql",
                "--checkpoint-dir",
                "chk",
                "--checkpoint-interval",
                "0.2",
            ])
            .args(["--batch-size", "1000"])
            .output()
            .expect("run")
    };
    let crashed = run(Some("hbase-mid-batch=30*off->return"));
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert!(
        !crashed.status.success() && stderr.contains("crash point hbase-mid-batch"),
        "{stderr}"
    );
    let out = run(None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut s = session(10_000);
    let name = unique("read");
    exec(
        &mut s,
        &format!(
            "CREATE TABLE {name} (course_id BIGINT, window_start TIMESTAMP, views BIGINT, viewers BIGINT, purchases BIGINT)
             WITH (connector = 'hbase', thrift = '{THRIFT}', table = '{table}', row_key = 'course_id, window_start');"
        ),
    )
    .await;
    let got = sorted_rows(
        &exec(
            &mut s,
            &format!("SELECT course_id, window_start, views, viewers, purchases FROM {name};"),
        )
        .await,
    );
    let want = batch_rows(
        &oracle_ctx(&opts, "ev"),
        "SELECT course_id, date_bin(INTERVAL '1 minute', event_time, TIMESTAMP '1970-01-01'), COUNT(*),
                COUNT(DISTINCT user_id), SUM(CASE WHEN purchased THEN 1 ELSE 0 END) FROM ev GROUP BY 1, 2",
    )
    .await;
    assert_rows_eq(&got, &want, "HBase after a crash mid-batch");
    let many: Vec<_> = versions(&table).into_iter().filter(|(_, n)| *n != 1).take(5).collect();
    assert!(many.is_empty(), "cells with more than one version: {many:?}");
}
