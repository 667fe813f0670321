//! The HBase sink under replays, against a real HBase (`scripts/services start`; under `CI=true` a
//! missing HBase fails these tests): a changelog of upserts, retractions and NULLs written across
//! checkpoint epochs, a "crash" (the sink dropped), and the epochs after the checkpoint written again
//! with other intermediate values. Every cell must end with exactly one version holding the final
//! value, on a table that keeps 10 versions (so version growth would show). Also: the retry loop
//! gives up promptly once the query stops.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Int8Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use freshet::connector::hbase::{self, HBaseSink};
use freshet::connector::{Output, Sink};
use freshet::operator::RowKind::{self, *};
use freshet::sql::parser::Options;
use hbase_thrift::hbase::{ColumnDescriptor, THbaseSyncClient};

use crate::support::*;

pub(crate) const THRIFT: &str = "127.0.0.1:9090";

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("window_end", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Utf8, true),
    ]))
}

/// Row `k`'s window ends at minute `k` (so every row has its own cell timestamps).
fn window_end(k: i64) -> i64 {
    60_000 * k
}

type Change<'a> = (RowKind, i64, Option<i64>, Option<&'a str>);

fn changes(rows: &[Change]) -> Output {
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| window_end(r.1)),
            )),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.3))),
        ],
    )
    .expect("batch");
    Output {
        batch,
        kinds: Some(Int8Array::from_iter_values(rows.iter().map(|r| r.0 as i8))),
        key: Some(Arc::from([0usize])),
    }
}

fn options(thrift: &str, table: &str) -> Options {
    Options(BTreeMap::from(
        [
            ("connector", "hbase"),
            ("thrift", thrift),
            ("table", table),
            ("row_key", "k"),
            ("column_family", "v"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    ))
}

/// Options over the defaults (the Thrift1 gateway at [`THRIFT`]), e.g. the Thrift2 protocol.
pub(crate) type Extra<'a> = &'a [(&'a str, &'a str)];

fn open(table: &str, extra: Extra) -> HBaseSink {
    let mut o = options(THRIFT, table);
    o.0.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    HBaseSink::open(&o, schema()).expect("open the sink")
}

/// A table whose family keeps 10 versions, so that a sink adding versions would show.
pub(crate) fn create_table(table: &str) {
    let mut c = hbase::connect(THRIFT).expect("connect");
    let cd = ColumnDescriptor {
        name: Some(b"v:".to_vec()),
        max_versions: Some(10),
        compression: Some("NONE".into()),
        bloom_filter_type: Some("NONE".into()),
        time_to_live: Some(i32::MAX),
        ..Default::default()
    };
    c.create_table(table.as_bytes().to_vec(), vec![cd])
        .expect("create table");
}

pub(crate) fn row_key(k: i64) -> Vec<u8> {
    let mut key = Vec::new();
    hbase::encode_key(&mut key, &ScalarValue::Int64(Some(k))).expect("key");
    key
}

/// Every version HBase returns for row `k`'s column (up to 10), newest first, as text.
fn versions(table: &str, k: i64, column: &str) -> Vec<String> {
    let mut c = hbase::connect(THRIFT).expect("connect");
    c.get_ver(
        table.as_bytes().to_vec(),
        row_key(k),
        format!("v:{column}").into_bytes(),
        10,
        BTreeMap::new(),
    )
    .expect("getVer")
    .into_iter()
    .map(|cell| String::from_utf8(cell.value.unwrap_or_default()).expect("utf8"))
    .collect()
}

/// Row `k`'s visible cells `a` and `b` (getRowWithColumns), as `a=…,b=…` with `-` for no cell.
fn row(table: &str, k: i64) -> String {
    let mut c = hbase::connect(THRIFT).expect("connect");
    let got = c
        .get_row_with_columns(
            table.as_bytes().to_vec(),
            row_key(k),
            vec![b"v:a".to_vec(), b"v:b".to_vec()],
            BTreeMap::new(),
        )
        .expect("getRowWithColumns");
    let cells = got.into_iter().next().and_then(|r| r.columns).unwrap_or_default();
    let cell = |c: &str| {
        cells
            .get(c.as_bytes())
            .and_then(|cell| cell.value.clone())
            .map_or("-".to_string(), |v| String::from_utf8(v).expect("utf8"))
    };
    format!("a={},b={}", cell("v:a"), cell("v:b"))
}

/// One epoch: its writes, then the checkpoint's two phases; returns what `prepare` gave the checkpoint.
fn epoch(sink: &mut HBaseSink, n: u64, writes: &[&[Change]]) -> serde_json::Value {
    for w in writes {
        sink.write(&changes(w)).expect("write");
    }
    let pending = sink.prepare(n).expect("prepare");
    sink.publish(n).expect("publish");
    pending
}

/// Each row's final `a` and `b` (`None`: no cell): every column holds exactly that, in one version,
/// and `window_end` one version unless the row is gone.
fn assert_final(table: &str, want: &[(i64, Option<&str>, Option<&str>)]) {
    for &(k, a, b) in want {
        for (column, v) in [("a", a), ("b", b)] {
            let got = versions(table, k, column);
            let want: Vec<String> = v.into_iter().map(String::from).collect();
            assert_eq!(got, want, "row {k}, column {column}: every version HBase holds");
        }
        let ends = versions(table, k, "window_end").len();
        assert_eq!(ends, 1, "row {k}: window_end has one version");
    }
}

#[test]
fn a_replay_after_a_crash_leaves_one_version_per_cell_holding_the_final_value() {
    if !service_up("HBase Thrift", THRIFT) {
        return;
    }
    let table = unique("hb_replay");
    create_table(&table);
    replay_after_a_crash(&table, &[]);
}

/// The first test's story on `table`, written with the sink options `extra`: rows 1 to 5.
pub(crate) fn replay_after_a_crash(table: &str, extra: Extra) {
    let table = table.to_string();
    // The first run.
    let mut sink = open(&table, extra);
    sink.recover(None, &serde_json::Value::Null).expect("recover");
    epoch(
        &mut sink,
        1,
        &[&[
            (Insert, 1, Some(1), Some("x")),
            (Insert, 2, Some(10), Some("y")),
            (Insert, 3, Some(5), Some("n")),
            (Insert, 4, Some(1), Some("q")),
        ]],
    );
    // Epoch 2: an update, a retraction, NULLs. Deletes wait for the checkpoint.
    for w in [
        &[
            (UpdateBefore, 1, Some(1), Some("x")),
            (UpdateAfter, 1, Some(2), Some("x")),
        ][..],
        &[(Delete, 2, Some(10), Some("y"))],
        &[(UpdateBefore, 3, Some(5), Some("n")), (UpdateAfter, 3, None, Some("n"))],
        &[(UpdateAfter, 4, None, Some("q"))],
    ] {
        sink.write(&changes(w)).expect("write");
    }
    assert_eq!(
        row(&table, 2),
        "a=10,b=y",
        "a retraction shows once its epoch is checkpointed"
    );
    let checkpoint2 = sink.prepare(2).expect("prepare");
    sink.publish(2).expect("publish");
    assert_eq!(row(&table, 1), "a=2,b=x");
    assert_eq!(row(&table, 2), "a=-,b=-", "the retracted row is gone");
    assert_eq!(row(&table, 3), "a=-,b=n", "a NULL is no cell");
    assert_eq!(row(&table, 4), "a=-,b=q");

    // Epoch 3, never checkpointed: the run crashes after these writes.
    for w in [
        &[(UpdateAfter, 1, Some(3), Some("x"))][..],
        &[(Insert, 2, Some(20), None)],
        &[(UpdateAfter, 3, Some(7), None)],
        &[(Insert, 5, Some(1), Some("w"))],
        &[(UpdateAfter, 5, None, None)],
    ] {
        sink.write(&changes(w)).expect("write");
    }
    assert_eq!(row(&table, 1), "a=3,b=x");
    drop(sink);

    // The restart resumes from checkpoint 2 and writes epoch 3 again, cut otherwise.
    let mut sink = open(&table, extra);
    sink.recover(Some(2), &checkpoint2).expect("recover");
    sink.write(&changes(&[(UpdateAfter, 1, Some(30), Some("x"))]))
        .expect("write");
    // The replay writes the first run's cell versions: at an equal timestamp HBase keeps the last
    // write, so while the replay catches up a row can show an earlier value than before the crash.
    assert_eq!(
        row(&table, 1),
        "a=30,b=x",
        "the replayed intermediate value replaces the newer one"
    );
    assert_eq!(versions(&table, 1, "a"), ["30"], "in place: one version");
    epoch(
        &mut sink,
        3,
        &[
            &[
                (Insert, 2, Some(21), None),
                (UpdateAfter, 3, Some(6), Some("n")),
                (Insert, 5, Some(2), Some("w")),
            ],
            &[
                (UpdateAfter, 1, Some(4), Some("x")),
                (UpdateAfter, 3, Some(8), Some("m")),
                (UpdateAfter, 4, Some(9), Some("q")),
            ],
        ],
    );
    assert_final(
        &table,
        &[
            (1, Some("4"), Some("x")),
            (2, Some("21"), None),
            (3, Some("8"), Some("m")),
            (4, Some("9"), Some("q")),
            (5, Some("2"), Some("w")),
        ],
    );

    // Later epochs: a row deleted, then inserted again; a NULL, then a value.
    epoch(
        &mut sink,
        4,
        &[&[(Delete, 5, Some(2), Some("w")), (UpdateAfter, 3, None, Some("m"))]],
    );
    assert_eq!(row(&table, 5), "a=-,b=-");
    assert_eq!(row(&table, 3), "a=-,b=m");
    epoch(
        &mut sink,
        5,
        &[&[(Insert, 5, Some(3), Some("w2")), (UpdateAfter, 3, Some(11), Some("m"))]],
    );
    assert_final(
        &table,
        &[
            (1, Some("4"), Some("x")),
            (2, Some("21"), None),
            (3, Some("11"), Some("m")),
            (4, Some("9"), Some("q")),
            (5, Some("3"), Some("w2")),
        ],
    );
}

#[test]
fn a_checkpoint_not_published_before_the_crash_is_published_by_recovery_and_a_second_crash_is_harmless() {
    if !service_up("HBase Thrift", THRIFT) {
        return;
    }
    let table = unique("hb_recover");
    create_table(&table);
    recovery_publishes_a_checkpoint(&table, &[]);
}

/// The second test's story on `table`, written with the sink options `extra`: rows 1 and 2.
pub(crate) fn recovery_publishes_a_checkpoint(table: &str, extra: Extra) {
    let table = table.to_string();
    let mut sink = open(&table, extra);
    sink.recover(None, &serde_json::Value::Null).expect("recover");
    epoch(
        &mut sink,
        1,
        &[&[(Insert, 1, Some(1), Some("x")), (Insert, 2, Some(2), Some("y"))]],
    );
    sink.write(&changes(&[
        (Delete, 1, Some(1), Some("x")),
        (UpdateAfter, 2, None, Some("y")),
    ]))
    .expect("write");
    // Checkpoint 2 is written, then the process dies before publishing it.
    let checkpoint2 = sink.prepare(2).expect("prepare");
    drop(sink);
    assert_eq!(row(&table, 1), "a=1,b=x", "not published yet");
    assert_eq!(row(&table, 2), "a=2,b=y");

    // First restart: recovery publishes checkpoint 2's deletes; the replay re-inserts row 1
    // (with an intermediate value), and NULLs row 2's b, then crashes again before checkpoint 3.
    let mut sink = open(&table, extra);
    sink.recover(Some(2), &checkpoint2).expect("recover");
    sink.write(&changes(&[(Insert, 1, Some(5), Some("x"))])).expect("write");
    assert_eq!(row(&table, 1), "a=5,b=x", "the re-inserted row shows");
    assert_eq!(row(&table, 2), "a=-,b=y", "recovery published the NULL");
    sink.write(&changes(&[(UpdateAfter, 2, None, None)])).expect("write");
    drop(sink);

    // Second restart from the same checkpoint, other batches: row 1 final at 6, row 2's b back.
    let mut sink = open(&table, extra);
    sink.recover(Some(2), &checkpoint2).expect("recover");
    epoch(
        &mut sink,
        3,
        &[&[(Insert, 1, Some(6), Some("x")), (UpdateAfter, 2, Some(7), Some("z"))]],
    );
    assert_final(&table, &[(1, Some("6"), Some("x")), (2, Some("7"), Some("z"))]);
}

#[tokio::test]
async fn a_query_started_from_scratch_over_an_earlier_runs_table_is_not_hidden_by_its_deletes() {
    if !service_up("HBase Thrift", THRIFT) {
        return;
    }
    let table = unique("hb_scratch");
    create_table(&table);
    let mut sink = open(&table, &[]);
    sink.recover(None, &serde_json::Value::Null).expect("recover");
    epoch(
        &mut sink,
        1,
        &[&[(Insert, 1, Some(1), Some("x")), (Insert, 2, Some(2), Some("y"))]],
    );
    epoch(
        &mut sink,
        2,
        &[&[(Delete, 1, Some(1), Some("x")), (UpdateAfter, 2, Some(3), None)]],
    );
    epoch(&mut sink, 3, &[&[(UpdateAfter, 2, Some(4), Some("y"))]]);
    drop(sink);

    // Another query (or the same, changed) writes the table from scratch: no checkpoint.
    let mut sink = open(&table, &[]);
    sink.recover(None, &serde_json::Value::Null).expect("recover");
    epoch(
        &mut sink,
        1,
        &[&[(Insert, 1, Some(10), Some("x")), (Insert, 2, Some(20), Some("y"))]],
    );
    assert_final(&table, &[(1, Some("10"), Some("x")), (2, Some("20"), Some("y"))]);

    // The lookup reader skips the sink's generation row.
    let mut s = session(1_000);
    exec(
        &mut s,
        &format!(
            "CREATE TABLE t (k BIGINT, a BIGINT, b VARCHAR)
             WITH (connector = 'hbase', thrift = '{THRIFT}', table = '{table}', row_key = 'k');"
        ),
    )
    .await;
    let got = sorted_rows(&exec(&mut s, "SELECT k, a, b FROM t;").await);
    assert_eq!(got, ["1|10|x", "2|20|y"]);
}

/// Sets the sink's stop flag after `after`, as the engine does when the query is stopped.
fn stop_later(sink: &HBaseSink, after: Duration) -> std::thread::JoinHandle<()> {
    let flag = sink.interrupt_handle().expect("the HBase sink can be interrupted");
    std::thread::spawn(move || {
        std::thread::sleep(after);
        flag.store(true, Ordering::SeqCst);
    })
}

#[test]
fn the_retry_loop_gives_up_promptly_once_the_query_stops() {
    let rows: &[Change] = &[(Insert, 1, Some(1), Some("x"))];

    // Nothing listens: every connection is refused and the sink retries with backoff.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let mut sink = HBaseSink::open(&options(&addr, "t"), schema()).expect("open");
    let stopper = stop_later(&sink, Duration::from_millis(700));
    let t0 = Instant::now();
    let err = sink
        .write(&changes(rows))
        .expect_err("no HBase: the write fails once stopped");
    let took = t0.elapsed();
    stopper.join().expect("stopper");
    assert!(
        sink.retries >= 2,
        "it retried before the stop ({} retries)",
        sink.retries
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(1_500),
        "gave up {took:?} after the write began, the stop came at 700 ms"
    );
    assert!(err.to_string().contains("stopping"), "{err}");

    // A server that accepts and never answers: the call in flight waits at most STOP_GRACE.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(4) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    let mut sink = HBaseSink::open(&options(&addr, "t"), schema()).expect("open");
    let stopper = stop_later(&sink, Duration::from_millis(500));
    let t0 = Instant::now();
    let err = sink
        .write(&changes(rows))
        .expect_err("a silent server: the write fails once stopped");
    let took = t0.elapsed();
    stopper.join().expect("stopper");
    assert!(
        took >= hbase::STOP_GRACE && took < hbase::STOP_GRACE + Duration::from_millis(1_500),
        "gave up after {took:?}: the call waits STOP_GRACE ({:?}), then no retry",
        hbase::STOP_GRACE
    );
    assert!(err.to_string().contains("stopping"), "{err}");
    drop(held);
}

#[test]
fn a_stopping_query_still_writes_while_hbase_answers() {
    if !service_up("HBase Thrift", THRIFT) {
        return;
    }
    let table = unique("hb_stop");
    create_table(&table);
    let mut sink = open(&table, &[]);
    sink.recover(None, &serde_json::Value::Null).expect("recover");
    sink.interrupt_handle().expect("handle").store(true, Ordering::SeqCst);
    epoch(
        &mut sink,
        1,
        &[&[(Insert, 1, Some(1), Some("x"))], &[(UpdateAfter, 1, None, Some("x"))]],
    );
    assert_final(&table, &[(1, None, Some("x"))]);
}

#[test]
fn wide_rows_cut_into_calls_by_bytes_all_arrive_once() {
    if !service_up("HBase Thrift", THRIFT) {
        return;
    }
    // 300 rows of ~20 KB: one write of 6 MB, cut into calls of at most 64 KB (3 rows each) over
    // three connections; then every other row updated, and row 7 widened past the limit alone.
    let table = unique("hb_wide");
    create_table(&table);
    let mut sink = open(&table, &[("batch_bytes", "65536"), ("connections", "3")]);
    sink.recover(None, &serde_json::Value::Null).expect("recover");
    let wide = |k: i64, n: usize| format!("{k}:{}", "w".repeat(n));
    let first: Vec<String> = (1..=300).map(|k| wide(k, 20_000)).collect();
    let second: Vec<String> = (1..=300)
        .map(|k| {
            if k == 7 {
                wide(k, 200_000)
            } else {
                wide(k + 1000, 20_000)
            }
        })
        .collect();
    sink.write(&changes(&inserts(&first, |_| true))).expect("write");
    sink.write(&changes(&inserts(&second, |k| k % 2 == 1))).expect("write");
    sink.prepare(1).expect("prepare");
    sink.publish(1).expect("publish");
    for k in 1..=300i64 {
        let want = if k % 2 == 1 { &second } else { &first };
        assert_eq!(
            versions(&table, k, "b"),
            vec![want[k as usize - 1].clone()],
            "row {k}: one version, the latest value"
        );
    }
}

/// Rows `k` of 1 to `values.len()` that `pick` takes, inserted with `a = k` and `b = values[k - 1]`.
fn inserts(values: &[String], pick: impl Fn(i64) -> bool) -> Vec<Change<'_>> {
    (1..=values.len() as i64)
        .filter(|k| pick(*k))
        .map(|k| (Insert, k, Some(k), Some(values[k as usize - 1].as_str())))
        .collect()
}
