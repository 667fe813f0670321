//! Window joins and interval joins against batch oracles.
//!
//! Course events (a share of them late: pulled 30–60 s behind the watermark) stream through a file
//! source `ev`, split by a filter into the views `views` and `purchases`; DataFusion joins the same
//! events in batch. Late rows go to `_late` and the oracle leaves them out by the rule the operator
//! applies — each event's arrival watermark is the newest event time before it minus the source's
//! delay — so the comparison is exact. Every join runs at micro-batch sizes 1, 7, 4096 and 65536:
//! the result must not depend on how rows are cut into batches.

use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, Int64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use freshet::connector::generator::{CourseEvent, CourseGenerator, EPOCH_2026_MS, GenOptions};
use freshet::connector::nexmark::{Nexmark, NexmarkOptions, Stream};
use freshet::session::{Outcome, Session};
use freshet::sql::parser::parse_script;

use crate::support::*;

/// The watermark delay of [`COURSE_COLUMNS`].
const DELAY_MS: i64 = 5_000;
/// Micro-batch sizes each join runs at.
const SIZES: [usize; 4] = [1, 7, 4096, 65_536];
/// Events per run (one every 20 ms: 4 minutes of event time); fewer one row at a time.
const EVENTS: u64 = 12_000;
const SMALL: u64 = 2_500;

/// Rows late for a 1-minute TUMBLE window.
const MINUTE: Late = Late::Window {
    slide: 60_000,
    size: 60_000,
};

/// Which rows a join sets aside as late.
#[derive(Clone, Copy)]
enum Late {
    /// Time before the arrival watermark (interval joins).
    Time,
    /// Every window of the row (TUMBLE or HOP windows of `size` every `slide` ms) had ended at its
    /// arrival watermark (window joins).
    Window { slide: i64, size: i64 },
}

/// A run's events: in a JSON file for the stream, and as table `ev` for the oracle with each event's
/// time (`t_ms`) and arrival watermark (`wm`) in ms.
struct Data {
    dir: tempfile::TempDir,
    events: Vec<CourseEvent>,
    oracle: SessionContext,
}

impl Data {
    async fn new(events: u64, seed: u64) -> Data {
        let opts = GenOptions {
            seed,
            events: Some(events),
            rate: Some(50.0),
            late_ratio: 0.01,
            ..GenOptions::default()
        };
        let mut g = CourseGenerator::new(opts, EPOCH_2026_MS);
        let mut evs = Vec::new();
        let mut json = String::new();
        while let Some(e) = g.next_event() {
            e.write_json(&mut json);
            evs.push(e);
        }
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("events.jsonl"), json).expect("write events");
        let wms = arrival_watermarks(&evs);
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("course_id", DataType::Int64, false),
            Field::new("region", DataType::Utf8, true),
            Field::new("purchased", DataType::Boolean, true),
            Field::new("event_time", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("t_ms", DataType::Int64, false),
            Field::new("wm", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.user_id))),
                Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.course_id))),
                Arc::new(StringArray::from_iter_values(evs.iter().map(|e| e.region))),
                Arc::new(BooleanArray::from_iter(evs.iter().map(|e| Some(e.purchased)))),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    evs.iter().map(|e| e.event_time_ms),
                )),
                Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.event_time_ms))),
                Arc::new(Int64Array::from(wms)),
            ],
        )
        .expect("oracle batch");
        let oracle = SessionContext::new();
        oracle
            .register_table(
                "ev",
                Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("memtable")),
            )
            .expect("register");
        Data {
            dir,
            events: evs,
            oracle,
        }
    }

    /// A session streaming the events as source `ev`, with the views `views` and `purchases`.
    async fn session(&self, batch_size: usize) -> Session {
        let mut s = session(batch_size);
        exec(
            &mut s,
            &format!(
                "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'file', path = '{}', format = 'json');
                 CREATE VIEW views AS SELECT user_id, course_id, region, event_time FROM ev WHERE NOT purchased;
                 CREATE VIEW purchases AS SELECT user_id, course_id, event_time FROM ev WHERE purchased;",
                self.dir.path().join("events.jsonl").display()
            ),
        )
        .await;
        s
    }

    /// How many events are late by `rule`.
    fn late(&self, rule: Late) -> usize {
        let wms = arrival_watermarks(&self.events);
        self.events
            .iter()
            .zip(wms)
            .filter(|(e, wm)| {
                let t = e.event_time_ms;
                match rule {
                    Late::Time => t < *wm,
                    Late::Window { slide, size } => t.div_euclid(slide) * slide + size <= *wm,
                }
            })
            .count()
    }
}

/// The watermark each event arrives under: the newest event time before it minus the delay (the
/// rule of `engine::query` for a single source).
fn arrival_watermarks(evs: &[CourseEvent]) -> Vec<i64> {
    let mut max = i64::MIN;
    evs.iter()
        .map(|e| {
            let wm = if max == i64::MIN { i64::MIN } else { max - DELAY_MS };
            max = max.max(e.event_time_ms);
            wm
        })
        .collect()
}

/// The operator graph of `query`, as EXPLAIN shows it.
async fn explain(s: &mut Session, query: &str) -> String {
    let st = parse_script(&format!("EXPLAIN {query};")).expect("parses").remove(0);
    match s.execute(&st.statement).await.expect("explain") {
        Outcome::Text(t) => t,
        _ => panic!("EXPLAIN returned no text"),
    }
}

/// Run `query` (planned as operator `op`) at every batch size and compare its final result with
/// `oracle` (SQL over `ev`), and what went to `_late` with the events late by `late`.
async fn check(name: &str, seed: u64, op: &str, query: &str, oracle: &str, late: Late) {
    let big = Data::new(EVENTS, seed).await;
    let small = Data::new(SMALL, seed).await;
    let plan = explain(&mut small.session(1).await, query).await;
    assert!(plan.contains(op), "{name}: not planned as {op}:\n{plan}");
    for size in SIZES {
        let data = if size == 1 { &small } else { &big };
        let want = batch_rows(&data.oracle, oracle).await;
        assert!(!want.is_empty(), "{name}: the oracle returned no rows");
        let mut s = data.session(size).await;
        let got = streamed(&mut s, query).await;
        assert_rows_eq(&got, &want, &format!("{name}, batch size {size}"));
        let late_rows = sorted_rows(&exec(&mut s, "SELECT COUNT(*) FROM _late;").await);
        let expected = data.late(late);
        assert!(expected > 0, "{name}: no late events to test with");
        assert_eq!(
            late_rows,
            vec![expected.to_string()],
            "{name}, batch size {size}: rows in _late"
        );
    }
}

/// The error a statement gets (the statements before it must succeed).
async fn refusal(s: &mut Session, script: &str) -> String {
    let statements = parse_script(script).expect("script parses");
    let (last, before) = statements.split_last().expect("a statement");
    for st in before {
        s.execute(&st.statement).await.expect("statement");
    }
    match s.execute(&last.statement).await {
        Ok(_) => panic!("expected a refusal of: {script}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn window_join_inner_matches_batch() {
    check(
        "TUMBLE ⋈ TUMBLE, INNER",
        31,
        "WindowJoin",
        "SELECT v.user_id, v.window_start, v.window_end, v.course_id AS viewed, p.course_id AS bought
         FROM TUMBLE(views, event_time, INTERVAL '1' MINUTE) AS v
         JOIN TUMBLE(purchases, event_time, INTERVAL '1' MINUTE) AS p
           ON v.user_id = p.user_id AND v.window_start = p.window_start AND v.window_end = p.window_end",
        "WITH w AS (SELECT *, t_ms - t_ms % 60000 AS ws FROM ev WHERE t_ms - t_ms % 60000 + 60000 > wm)
         SELECT v.user_id, to_timestamp_millis(v.ws), to_timestamp_millis(v.ws + 60000), v.course_id, p.course_id
         FROM w v JOIN w p ON v.user_id = p.user_id AND v.ws = p.ws
         WHERE NOT v.purchased AND p.purchased",
        MINUTE,
    )
    .await;
}

#[tokio::test]
async fn window_join_left_with_a_residual_condition_matches_batch() {
    check(
        "TUMBLE ⟕ TUMBLE",
        32,
        "WindowJoin",
        "SELECT v.user_id, v.window_start, v.course_id AS viewed, p.course_id AS bought, p.event_time
         FROM TUMBLE(views, event_time, INTERVAL '1' MINUTE) AS v
         LEFT JOIN TUMBLE(purchases, event_time, INTERVAL '1' MINUTE) AS p
           ON v.user_id = p.user_id AND v.window_start = p.window_start AND v.window_end = p.window_end
          AND v.course_id <> p.course_id",
        "WITH w AS (SELECT *, t_ms - t_ms % 60000 AS ws FROM ev WHERE t_ms - t_ms % 60000 + 60000 > wm),
              v AS (SELECT * FROM w WHERE NOT purchased), p AS (SELECT * FROM w WHERE purchased)
         SELECT v.user_id, to_timestamp_millis(v.ws), v.course_id, p.course_id, p.event_time
         FROM v LEFT JOIN p ON v.user_id = p.user_id AND v.ws = p.ws AND v.course_id <> p.course_id",
        MINUTE,
    )
    .await;
}

#[tokio::test]
async fn window_join_full_outer_matches_batch() {
    check(
        "HOP ⟗ HOP",
        33,
        "WindowJoin",
        "SELECT v.user_id, v.window_start, v.window_end, v.course_id AS viewed, p.user_id AS buyer,
                p.window_start AS bought_in, p.course_id AS bought
         FROM HOP(views, event_time, INTERVAL '30' SECOND, INTERVAL '1' MINUTE) AS v
         FULL JOIN HOP(purchases, event_time, INTERVAL '30' SECOND, INTERVAL '1' MINUTE) AS p
           ON v.user_id = p.user_id AND v.window_start = p.window_start AND v.window_end = p.window_end",
        // Each event is in the window starting at its 30 s bin and the one before; a row joins the
        // windows that had not ended at its arrival watermark.
        "WITH w AS (
            SELECT * FROM (
                SELECT ev.*, t_ms - t_ms % 30000 - k.i * 30000 AS ws FROM ev CROSS JOIN (VALUES (0), (1)) AS k(i)) x
            WHERE ws + 60000 > wm),
              v AS (SELECT * FROM w WHERE NOT purchased), p AS (SELECT * FROM w WHERE purchased)
         SELECT v.user_id, to_timestamp_millis(v.ws), to_timestamp_millis(v.ws + 60000), v.course_id,
                p.user_id, to_timestamp_millis(p.ws), p.course_id
         FROM v FULL JOIN p ON v.user_id = p.user_id AND v.ws = p.ws",
        // Late: both windows had ended (a row late for one window only still joins the other).
        Late::Window {
            slide: 30_000,
            size: 60_000,
        },
    )
    .await;
}

#[tokio::test]
async fn window_join_of_two_window_aggregates_matches_batch() {
    check(
        "window aggregate ⋈ window aggregate",
        34,
        "WindowJoin",
        "SELECT v.user_id, v.ws, v.n AS views, p.n AS buys, p.courses
         FROM (SELECT user_id, window_start AS ws, window_end AS we, COUNT(*) AS n
               FROM TUMBLE(views, event_time, INTERVAL '1' MINUTE) GROUP BY user_id, window_start, window_end) v
         JOIN (SELECT user_id, window_start, window_end, COUNT(*) AS n, COUNT(DISTINCT course_id) AS courses
               FROM TUMBLE(purchases, event_time, INTERVAL '1' MINUTE) GROUP BY user_id, window_start, window_end) p
           ON v.user_id = p.user_id AND v.ws = p.window_start AND v.we = p.window_end",
        "WITH w AS (SELECT *, t_ms - t_ms % 60000 AS ws FROM ev WHERE t_ms - t_ms % 60000 + 60000 > wm),
              v AS (SELECT user_id, ws, COUNT(*) AS n FROM w WHERE NOT purchased GROUP BY user_id, ws),
              p AS (SELECT user_id, ws, COUNT(*) AS n, COUNT(DISTINCT course_id) AS c FROM w WHERE purchased GROUP BY user_id, ws)
         SELECT v.user_id, to_timestamp_millis(v.ws), v.n, p.n, p.c FROM v JOIN p ON v.user_id = p.user_id AND v.ws = p.ws",
        MINUTE,
    )
    .await;
}

#[tokio::test]
async fn window_aggregate_over_a_window_join_matches_batch() {
    check(
        "window aggregate over TUMBLE ⋈ TUMBLE",
        35,
        "WindowJoin",
        "SELECT v.region, v.window_start, COUNT(*) AS pairs, COUNT(DISTINCT v.user_id) AS buyers
         FROM TUMBLE(views, event_time, INTERVAL '1' MINUTE) AS v
         JOIN TUMBLE(purchases, event_time, INTERVAL '1' MINUTE) AS p
           ON v.user_id = p.user_id AND v.window_start = p.window_start
         GROUP BY v.region, v.window_start, v.window_end",
        "WITH w AS (SELECT *, t_ms - t_ms % 60000 AS ws FROM ev WHERE t_ms - t_ms % 60000 + 60000 > wm)
         SELECT v.region, to_timestamp_millis(v.ws), COUNT(*), COUNT(DISTINCT v.user_id)
         FROM w v JOIN w p ON v.user_id = p.user_id AND v.ws = p.ws
         WHERE NOT v.purchased AND p.purchased GROUP BY v.region, v.ws",
        MINUTE,
    )
    .await;
}

#[tokio::test]
async fn interval_join_inner_matches_batch() {
    check(
        "views ⋈ purchases within 10 minutes",
        36,
        "IntervalJoin",
        "SELECT v.user_id, v.course_id, v.event_time, p.course_id AS bought, p.event_time AS bought_at
         FROM views v JOIN purchases p
           ON v.user_id = p.user_id AND p.event_time BETWEEN v.event_time AND v.event_time + INTERVAL '10' MINUTE",
        "WITH ok AS (SELECT * FROM ev WHERE t_ms >= wm)
         SELECT v.user_id, v.course_id, v.event_time, p.course_id, p.event_time
         FROM ok v JOIN ok p
           ON v.user_id = p.user_id AND p.event_time BETWEEN v.event_time AND v.event_time + INTERVAL '10' MINUTE
         WHERE NOT v.purchased AND p.purchased",
        Late::Time,
    )
    .await;
}

#[tokio::test]
async fn interval_join_left_matches_batch() {
    check(
        "views ⟕ purchases within 10 minutes",
        37,
        "IntervalJoin",
        "SELECT v.user_id, v.course_id, v.event_time, p.course_id AS bought, p.event_time AS bought_at
         FROM views v LEFT JOIN purchases p
           ON v.user_id = p.user_id AND p.event_time BETWEEN v.event_time AND v.event_time + INTERVAL '10' MINUTE",
        "WITH v AS (SELECT * FROM ev WHERE t_ms >= wm AND NOT purchased),
              p AS (SELECT * FROM ev WHERE t_ms >= wm AND purchased)
         SELECT v.user_id, v.course_id, v.event_time, p.course_id, p.event_time
         FROM v LEFT JOIN p
           ON v.user_id = p.user_id AND p.event_time BETWEEN v.event_time AND v.event_time + INTERVAL '10' MINUTE",
        Late::Time,
    )
    .await;
}

#[tokio::test]
async fn interval_join_full_outer_with_a_short_interval_matches_batch() {
    // Rows expire (and unmatched ones are padded) while the stream runs, not only at its end.
    check(
        "views ⟗ purchases from 2 s before to 5 s after, other courses",
        38,
        "IntervalJoin",
        "SELECT v.user_id, v.course_id, v.event_time, p.user_id AS buyer, p.course_id AS bought,
                p.event_time AS bought_at
         FROM views v FULL JOIN purchases p
           ON v.user_id = p.user_id AND p.event_time > v.event_time - INTERVAL '2' SECOND
          AND p.event_time - v.event_time <= INTERVAL '5' SECOND AND p.course_id <> v.course_id",
        "WITH v AS (SELECT * FROM ev WHERE t_ms >= wm AND NOT purchased),
              p AS (SELECT * FROM ev WHERE t_ms >= wm AND purchased)
         SELECT v.user_id, v.course_id, v.event_time, p.user_id, p.course_id, p.event_time
         FROM v FULL JOIN p
           ON v.user_id = p.user_id AND p.event_time > v.event_time - INTERVAL '2' SECOND
          AND p.event_time <= v.event_time + INTERVAL '5' SECOND AND p.course_id <> v.course_id",
        Late::Time,
    )
    .await;
}

#[tokio::test]
async fn interval_join_without_keys_matches_batch() {
    check(
        "purchases and the views of the 300 ms before them, anyone's",
        42,
        "IntervalJoin",
        "SELECT v.user_id, v.event_time, p.user_id AS buyer, p.event_time AS bought_at
         FROM views v JOIN purchases p
           ON p.event_time BETWEEN v.event_time AND v.event_time + INTERVAL '300 milliseconds'",
        "WITH ok AS (SELECT * FROM ev WHERE t_ms >= wm)
         SELECT v.user_id, v.event_time, p.user_id, p.event_time
         FROM ok v JOIN ok p ON p.event_time BETWEEN v.event_time AND v.event_time + INTERVAL '300 milliseconds'
         WHERE NOT v.purchased AND p.purchased",
        Late::Time,
    )
    .await;
}

#[tokio::test]
async fn interval_join_semi_and_anti_match_batch() {
    check(
        "views with a purchase of the course within 30 s (EXISTS)",
        39,
        "IntervalJoin",
        "SELECT v.user_id, v.course_id, v.event_time FROM views v
         WHERE EXISTS (SELECT 1 FROM purchases p WHERE p.user_id = v.user_id AND p.course_id = v.course_id
                         AND p.event_time BETWEEN v.event_time AND v.event_time + INTERVAL '30' SECOND)",
        "WITH v AS (SELECT * FROM ev WHERE t_ms >= wm AND NOT purchased),
              p AS (SELECT * FROM ev WHERE t_ms >= wm AND purchased)
         SELECT v.user_id, v.course_id, v.event_time FROM v
         WHERE EXISTS (SELECT 1 FROM p WHERE p.user_id = v.user_id AND p.course_id = v.course_id
                         AND p.event_time BETWEEN v.event_time AND v.event_time + INTERVAL '30' SECOND)",
        Late::Time,
    )
    .await;
    check(
        "views without a purchase within 30 s (NOT EXISTS)",
        40,
        "IntervalJoin",
        "SELECT v.user_id, v.course_id, v.event_time FROM views v
         WHERE NOT EXISTS (SELECT 1 FROM purchases p WHERE p.user_id = v.user_id
                             AND p.event_time BETWEEN v.event_time AND v.event_time + INTERVAL '30' SECOND)",
        "WITH v AS (SELECT * FROM ev WHERE t_ms >= wm AND NOT purchased),
              p AS (SELECT * FROM ev WHERE t_ms >= wm AND purchased)
         SELECT v.user_id, v.course_id, v.event_time FROM v
         WHERE NOT EXISTS (SELECT 1 FROM p WHERE p.user_id = v.user_id
                             AND p.event_time BETWEEN v.event_time AND v.event_time + INTERVAL '30' SECOND)",
        Late::Time,
    )
    .await;
}

#[tokio::test]
async fn joins_that_cannot_be_bounded_exactly_are_refused_where_written() {
    let data = Data::new(100, 41).await;
    let mut s = data.session(100).await;
    let e = refusal(
        &mut s,
        "CREATE MATERIALIZED VIEW bad AS SELECT v.user_id, p.course_id
FROM TUMBLE(views, event_time, INTERVAL '1' MINUTE) AS v
JOIN TUMBLE(purchases, event_time, INTERVAL '30' SECOND) AS p
  ON v.user_id = p.user_id AND v.window_start = p.window_start AND v.window_end = p.window_end;",
    )
    .await;
    assert!(
        e.starts_with("3:6: a window join needs the same windows on both sides")
            && e.contains("TUMBLE(size 1m)")
            && e.contains("TUMBLE(size 30s)"),
        "{e}"
    );
    let e = refusal(
        &mut s,
        "CREATE MATERIALIZED VIEW bad AS SELECT v.user_id, p.course_id
FROM CUMULATE(views, event_time, INTERVAL '10' SECOND, INTERVAL '1' MINUTE) AS v
JOIN CUMULATE(purchases, event_time, INTERVAL '10' SECOND, INTERVAL '1' MINUTE) AS p
  ON v.user_id = p.user_id AND v.window_start = p.window_start;",
    )
    .await;
    assert!(
        e.starts_with("3:6: a window join of CUMULATE windows must equate both window_start and window_end"),
        "{e}"
    );
    let e = refusal(
        &mut s,
        "CREATE MATERIALIZED VIEW bad AS SELECT v.user_id, p.course_id FROM views v
  JOIN purchases p ON v.user_id = p.user_id
   AND p.event_time BETWEEN v.event_time AND v.event_time + INTERVAL '1' MONTH;",
    )
    .await;
    assert!(
        e.starts_with("2:8: ") && e.contains("months") && e.contains("a month has no fixed length"),
        "{e}"
    );
}

/// Nexmark q7 (an interval join of bids with their window's highest price) and q8 (a window join of
/// two window aggregates), as shipped in `queries/nexmark`, over generated streams.
#[tokio::test]
async fn nexmark_q7_and_q8_match_batch() {
    let opts = NexmarkOptions {
        seed: 77,
        events: Some(100_000),
        rate: 1_000.0,
        out_of_order_ms: 2_000,
    };
    let g = Nexmark::new(opts.clone());
    let oracle = SessionContext::new();
    for stream in Stream::ALL {
        let batches = g.all_batches(stream, 10_000).expect("events");
        let table = MemTable::try_new(stream.schema(), vec![batches]).expect("memtable");
        oracle.register_table(stream.name(), Arc::new(table)).expect("register");
    }
    let w10 = "date_bin(INTERVAL '10 seconds', date_time, TIMESTAMP '1970-01-01')";
    let cases = [
        (
            7,
            "IntervalJoin",
            format!(
                "WITH b1 AS (SELECT MAX(price) AS maxprice, {w10} + INTERVAL '10 seconds' AS dt FROM bid GROUP BY {w10})
                 SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bid B JOIN b1 ON B.price = b1.maxprice
                 WHERE B.date_time >= b1.dt - INTERVAL '10 seconds' AND B.date_time <= b1.dt"
            ),
        ),
        (
            8,
            "WindowJoin",
            format!(
                "WITH P AS (SELECT DISTINCT id, name, {w10} AS starttime FROM person),
                      A AS (SELECT DISTINCT seller, {w10} AS starttime FROM auction)
                 SELECT P.id, P.name, P.starttime FROM P JOIN A ON P.id = A.seller AND P.starttime = A.starttime"
            ),
        ),
    ];
    for (q, op, oracle_sql) in cases {
        let want = batch_rows(&oracle, &oracle_sql).await;
        assert!(!want.is_empty(), "q{q}: the oracle returned no rows");
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("queries/nexmark/q{q}.sql"));
        let script = std::fs::read_to_string(&file).expect("query file");
        for size in [61, 65_536] {
            // The file's sources, reading the generator instead of files; its sink's query into a view.
            let mut s = session(size);
            let mut query = None;
            for chunk in script.split(';') {
                let text: String = chunk
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n");
                if text.trim().is_empty() {
                    continue;
                }
                if text.contains("CREATE SINK") {
                    let at = text.find(" AS\n").expect("CREATE SINK … AS");
                    query = Some(text[at + 4..].to_string());
                    continue;
                }
                let stream = ["person", "auction", "bid"]
                    .into_iter()
                    .find(|n| text.contains(&format!("{n}.jsonl")))
                    .expect("a source of the file");
                let with = text
                    .find("WITH ('connector' = 'filesystem'")
                    .expect("a filesystem source in Flink's DDL");
                let def = format!(
                    "{} WITH (connector = 'generator', kind = 'nexmark', stream = '{stream}', seed = '{}', events = '{}',
                              rate = '{}', out_of_order_ms = '{}');",
                    &text[..with],
                    opts.seed,
                    opts.events.unwrap_or_default(),
                    opts.rate,
                    opts.out_of_order_ms
                );
                exec(&mut s, &def).await;
            }
            let query = query.expect("the query of q{q}.sql");
            let plan = explain(&mut s, &query).await;
            assert!(plan.contains(op), "q{q} is not planned as {op}:\n{plan}");
            let got = streamed(&mut s, &query).await;
            assert_rows_eq(&got, &want, &format!("q{q}, batch size {size}"));
        }
    }
}
