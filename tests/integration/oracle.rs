//! Streaming results against a batch oracle: for bounded input whose disorder is within the watermark
//! delay, the final result of every window query must equal DataFusion's batch result over the same rows.

use crate::support::*;

/// 60 s of event time (the generator advances 1 ms per event), so 10 s windows give several windows.
const EVENTS: u64 = 60_000;

/// A streaming query and its batch answer: TUMBLE with an exact distinct count.
const TUMBLE: (&str, &str) = (
    "SELECT course_id, window_start, window_end, COUNT(*) AS views, COUNT(DISTINCT user_id) AS viewers,
            SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases, MIN(user_id) AS lo, MAX(user_id) AS hi,
            ROUND(AVG(user_id), 6) AS mean_user
     FROM TUMBLE(ev, event_time, INTERVAL '10' SECOND)
     GROUP BY course_id, window_start, window_end",
    "SELECT course_id, date_bin(INTERVAL '10 seconds', event_time, TIMESTAMP '1970-01-01') AS ws,
            date_bin(INTERVAL '10 seconds', event_time, TIMESTAMP '1970-01-01') + INTERVAL '10 seconds' AS we,
            COUNT(*), COUNT(DISTINCT user_id), SUM(CASE WHEN purchased THEN 1 ELSE 0 END), MIN(user_id), MAX(user_id),
            ROUND(AVG(user_id), 6)
     FROM ev GROUP BY 1, 2, 3",
);

/// HOP by panes: each event belongs to the 5 windows starting at its 2 s bin and the 4 bins before it.
const HOP: (&str, &str) = (
    "SELECT region, window_start, window_end, COUNT(*) AS views, COUNT(DISTINCT course_id) AS courses
     FROM HOP(ev, event_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
     GROUP BY region, window_start, window_end",
    "SELECT region, ws, ws + INTERVAL '10 seconds', COUNT(*), COUNT(DISTINCT course_id) FROM (
        SELECT region, course_id,
               to_timestamp_millis((CAST(arrow_cast(event_time, 'Timestamp(Millisecond, None)') AS BIGINT) / 2000) * 2000 - k.i * 2000) AS ws
        FROM ev CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS k(i)) w
     GROUP BY region, ws",
);

/// SESSION per user, against gaps and islands.
const SESSION: (&str, &str) = (
    "SELECT user_id, window_start, window_end, COUNT(*) AS views, COUNT(DISTINCT course_id) AS courses
     FROM SESSION(ev, event_time, INTERVAL '20' SECOND) WHERE user_id % 7 = 0
     GROUP BY user_id, window_start, window_end",
    "WITH marked AS (
        SELECT user_id, course_id, event_time,
               CASE WHEN event_time - LAG(event_time) OVER (PARTITION BY user_id ORDER BY event_time) < INTERVAL '20 seconds'
                    THEN 0 ELSE 1 END AS new_session
        FROM ev WHERE user_id % 7 = 0),
     numbered AS (
        SELECT *, SUM(new_session) OVER (PARTITION BY user_id ORDER BY event_time ROWS UNBOUNDED PRECEDING) AS sid FROM marked)
     SELECT user_id, MIN(event_time), MAX(event_time) + INTERVAL '20 seconds', COUNT(*), COUNT(DISTINCT course_id)
     FROM numbered GROUP BY user_id, sid",
);

/// A GROUP BY without a window (an updating aggregate) over an expression key.
const GROUPED: (&str, &str) = (
    "SELECT user_id % 50 AS band, COUNT(*) AS views, COUNT(DISTINCT course_id) AS courses, MAX(event_time) AS last
     FROM ev GROUP BY user_id % 50",
    "SELECT user_id % 50, COUNT(*), COUNT(DISTINCT course_id), MAX(event_time) FROM ev GROUP BY 1",
);

/// The events' directory, a session with the file source `ev` declared, and a batch context over
/// the same events.
type Setup = (
    tempfile::TempDir,
    freshet::session::Session,
    datafusion::prelude::SessionContext,
);

/// [`setup_on`] the workers [`workers_for`] the batch size (as every oracle family).
async fn setup(seed: u64, batch_size: usize) -> Setup {
    setup_on(seed, batch_size, workers_for(batch_size)).await
}

/// `EVENTS` generated events with `seed` in micro-batches of `batch_size`, the keyed operators
/// split over `workers` instances.
async fn setup_on(seed: u64, batch_size: usize, workers: usize) -> Setup {
    let dir = tempfile::tempdir().expect("tmp");
    let opts = gen_opts(EVENTS, seed);
    let path = dir.path().join("events.jsonl");
    write_events(&path, &opts);
    let mut s = session_on(batch_size, workers);
    exec(
        &mut s,
        &format!(
            "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'file', path = '{}', format = 'json');",
            path.display()
        ),
    )
    .await;
    (dir, s, oracle_ctx(&opts, "ev"))
}

fn assert_same(streamed: &[String], batch: &[String]) {
    assert!(!batch.is_empty(), "the oracle returned no rows");
    assert_eq!(streamed.len(), batch.len(), "row counts differ");
    for (a, b) in streamed.iter().zip(batch) {
        assert_eq!(a, b);
    }
}

#[tokio::test]
async fn tumble_matches_batch() {
    let (_d, mut s, ctx) = setup(11, 997).await;
    let got = streamed(&mut s, TUMBLE.0).await;
    let want = batch_rows(&ctx, TUMBLE.1).await;
    assert_same(&got, &want);
}

/// The keyed aggregates split by key over 1, 3 and 4 instances (`--workers`), at a micro-batch size
/// whose rows are routed on the query thread and at one large enough for the instances to run on
/// their own threads: every split gives the batch answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_aggregates_split_over_workers_match_batch() {
    for (workers, batch_size) in [(1, 20_000), (3, 997), (3, 20_000), (4, 8_192)] {
        let (_d, mut s, ctx) = setup_on(21, batch_size, workers).await;
        for (what, (query, answer)) in [
            ("TUMBLE", TUMBLE),
            ("HOP", HOP),
            ("SESSION", SESSION),
            ("GROUP BY", GROUPED),
        ] {
            let got = streamed(&mut s, query).await;
            let want = batch_rows(&ctx, answer).await;
            assert_rows_eq(
                &got,
                &want,
                &format!("{what}, {workers} workers, micro-batches of {batch_size}"),
            );
        }
    }
}

/// `SET 'table.exec.emit.early-fire.delay'` (Flink's key): a window aggregate into an upsert sink
/// (here a materialized view) holds its early results back for that long; each window still goes out
/// when it closes. The view ends at the batch answer either way; with a delay longer than the run,
/// each window row goes out once, at its close, where every micro-batch sent the changed ones.
#[tokio::test]
async fn held_early_results_still_end_at_the_batch_answer_with_each_window_sent_once() {
    let mut sent = Vec::new();
    for (delay, batch_size) in [("0", 997), ("1 h", 997), ("1 h", 8_192)] {
        let (_d, mut s, ctx) = setup(13, batch_size).await;
        exec(&mut s, &format!("SET 'table.exec.emit.early-fire.delay' = '{delay}';")).await;
        exec(&mut s, &format!("CREATE MATERIALIZED VIEW mv AS {};", TUMBLE.0)).await;
        let metrics = s.queries[0].metrics.clone();
        finish_within(&mut s, std::time::Duration::from_secs(300)).await;
        let got = sorted_rows(&exec(&mut s, "SELECT * FROM mv;").await);
        let want = batch_rows(&ctx, TUMBLE.1).await;
        assert_rows_eq(
            &got,
            &want,
            &format!("early fire delay {delay}, micro-batches of {batch_size}"),
        );
        sent.push((
            freshet::engine::query::Metrics::get(&metrics.rows_out),
            want.len() as u64,
        ));
    }
    let [(every_batch, windows), (held, same), (held_big, same_big)] = sent[..] else {
        unreachable!()
    };
    assert_eq!((same, same_big), (windows, windows));
    assert_eq!(
        (held, held_big),
        (windows, windows),
        "held back: each window row once, when it closed"
    );
    assert!(
        every_batch > 2 * windows,
        "every micro-batch: {every_batch} rows for {windows} windows"
    );
}

/// SESSION partitioned by a column the SQL unparser quotes (`region`, a keyword: the GROUP BY key
/// reads `ev."region"`), over three of the source's five columns: the batch answer (sessions merge
/// when they touch, as in Flink).
#[tokio::test]
async fn session_partitioned_by_a_keyword_named_column_matches_batch() {
    for batch_size in [7, 20_000] {
        let (_d, mut s, ctx) = setup(14, batch_size).await;
        let got = streamed(
            &mut s,
            "SELECT region, window_start, window_end, COUNT(*) AS n
         FROM TABLE(SESSION(TABLE ev PARTITION BY region, DESCRIPTOR(event_time), INTERVAL '1' SECOND))
         WHERE user_id % 500 = 0 GROUP BY region, window_start, window_end",
        )
        .await;
        let want = batch_rows(
        &ctx,
        "WITH m AS (
            SELECT region, event_time,
                   CASE WHEN event_time - LAG(event_time) OVER (PARTITION BY region ORDER BY event_time) <= INTERVAL '1 second'
                        THEN 0 ELSE 1 END AS new_session
            FROM ev WHERE user_id % 500 = 0),
         numbered AS (
            SELECT *, SUM(new_session) OVER (PARTITION BY region ORDER BY event_time ROWS UNBOUNDED PRECEDING) AS sid FROM m)
         SELECT region, MIN(event_time), MAX(event_time) + INTERVAL '1 second', COUNT(*) FROM numbered GROUP BY region, sid",
    )
    .await;
        assert!(want.len() > 12, "several sessions per region: {want:?}");
        assert_rows_eq(
            &got,
            &want,
            &format!("SESSION PARTITION BY region, micro-batches of {batch_size}"),
        );
    }
}

#[tokio::test]
async fn tumble_with_filter_expression_keys_and_having() {
    let (_d, mut s, ctx) = setup(12, 4096).await;
    let got = streamed(
        &mut s,
        "SELECT upper(region) AS r, window_start, COUNT(*) AS n FROM TUMBLE(ev, event_time, INTERVAL '30' SECOND)
         WHERE course_id < 20 GROUP BY upper(region), window_start, window_end HAVING COUNT(*) > 3",
    )
    .await;
    let want = batch_rows(
        &ctx,
        "SELECT upper(region), date_bin(INTERVAL '30 seconds', event_time, TIMESTAMP '1970-01-01') AS ws, COUNT(*)
         FROM ev WHERE course_id < 20 GROUP BY 1, 2 HAVING COUNT(*) > 3",
    )
    .await;
    assert_same(&got, &want);
}

#[tokio::test]
async fn hop_by_panes_matches_batch() {
    let (_d, mut s, ctx) = setup(13, 1500).await;
    let got = streamed(&mut s, HOP.0).await;
    let want = batch_rows(&ctx, HOP.1).await;
    assert_same(&got, &want);
}

#[tokio::test]
async fn session_windows_match_batch_gaps_and_islands() {
    let (_d, mut s, ctx) = setup(14, 2000).await;
    let got = streamed(&mut s, SESSION.0).await;
    let want = batch_rows(&ctx, SESSION.1).await;
    assert_same(&got, &want);
}

#[tokio::test]
async fn windowed_stream_join_matches_batch() {
    let (d, mut s, ctx) = setup(15, 3000).await;
    let path = d.path().join("events.jsonl");
    exec(
        &mut s,
        &format!(
            "CREATE SOURCE buys ({COURSE_COLUMNS}) WITH (connector = 'file', path = '{}', format = 'json');",
            path.display()
        ),
    )
    .await;
    let got = streamed(
        &mut s,
        "SELECT v.region, v.window_start, COUNT(*) AS pairs, COUNT(DISTINCT v.user_id) AS buyers
         FROM TUMBLE(ev, event_time, INTERVAL '10' SECOND) AS v
         JOIN TUMBLE(buys, event_time, INTERVAL '10' SECOND) AS b
           ON v.user_id = b.user_id AND v.window_start = b.window_start
         WHERE b.purchased AND v.course_id <> b.course_id
         GROUP BY v.region, v.window_start",
    )
    .await;
    let want = batch_rows(
        &ctx,
        "WITH w AS (SELECT *, date_bin(INTERVAL '10 seconds', event_time, TIMESTAMP '1970-01-01') AS ws FROM ev)
         SELECT v.region, v.ws, COUNT(*), COUNT(DISTINCT v.user_id)
         FROM w v JOIN w b ON v.user_id = b.user_id AND v.ws = b.ws
         WHERE b.purchased AND v.course_id <> b.course_id GROUP BY v.region, v.ws",
    )
    .await;
    assert_same(&got, &want);
}

#[tokio::test]
async fn lookup_join_with_a_course_catalog_matches_batch() {
    let (d, mut s, ctx) = setup(16, 2500).await;
    let catalog = d.path().join("courses.csv");
    let mut csv = String::from("course_id,title,category\n");
    for c in 1..=500 {
        csv.push_str(&format!("{c},Course {c},{}\n", ["data", "web", "ml", "design"][c % 4]));
    }
    std::fs::write(&catalog, csv).expect("csv");
    exec(
        &mut s,
        &format!(
            "CREATE TABLE courses (course_id BIGINT, title VARCHAR, category VARCHAR)
             WITH (connector = 'file', path = '{}', format = 'csv');",
            catalog.display()
        ),
    )
    .await;
    let got = streamed(
        &mut s,
        "SELECT c.category, window_start, COUNT(*) AS views, SUM(CASE WHEN e.purchased THEN 1 ELSE 0 END) AS buys
         FROM TUMBLE(ev, event_time, INTERVAL '10' SECOND) AS e JOIN courses c ON e.course_id = c.course_id
         GROUP BY c.category, window_start, window_end",
    )
    .await;
    ctx.register_csv("courses", catalog.to_str().expect("utf8"), Default::default())
        .await
        .expect("csv");
    let want = batch_rows(
        &ctx,
        "SELECT c.category, date_bin(INTERVAL '10 seconds', e.event_time, TIMESTAMP '1970-01-01'), COUNT(*),
                SUM(CASE WHEN e.purchased THEN 1 ELSE 0 END)
         FROM ev e JOIN courses c ON e.course_id = c.course_id GROUP BY 1, 2",
    )
    .await;
    assert_same(&got, &want);
}

#[tokio::test]
async fn append_sink_gets_each_window_once_and_matches_upsert_view() {
    let (d, mut s, _ctx) = setup(17, 800).await;
    let out = d.path().join("archive");
    let q = "SELECT course_id, window_start, COUNT(*) AS views FROM TUMBLE(ev, event_time, INTERVAL '10' SECOND)
             GROUP BY course_id, window_start, window_end";
    exec(
        &mut s,
        &format!(
            "CREATE SINK arch WITH (connector = 'parquet', path = '{}', rollover_rows = '500') AS {q};",
            out.display()
        ),
    )
    .await;
    let upserted = streamed(&mut s, q).await;
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_parquet("arch", out.to_str().expect("utf8"), Default::default())
        .await
        .expect("parquet");
    let archived = batch_rows(&ctx, "SELECT * FROM arch").await;
    assert_same(&archived, &upserted);
    let files = std::fs::read_dir(&out)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(files.len() > 1, "rolled into several files: {files:?}");
    assert!(
        files.iter().all(|f| f.starts_with("part-") && f.ends_with(".parquet")),
        "no temp files left: {files:?}"
    );
}
