//! `… OVER (…)` against batch oracles: Top-N (over an updating aggregate, with and without the rank),
//! deduplication (first and last row per key), window Top-N, and OVER aggregates with ROWS and RANGE
//! frames. Each runs at several micro-batch sizes — one row per micro-batch included — and the
//! materialized view's final contents must equal DataFusion's batch result over the same events.
//! Refusals name the construct and where it is.

use freshet::session::Session;
use freshet::sql::parser::parse_one;

use crate::support::*;

/// (events, micro-batch size): one row per micro-batch over a small input, then larger inputs.
const RUNS: [(u64, usize); 4] = [(3_000, 1), (10_000, 7), (60_000, 4096), (60_000, 65_536)];

async fn source(s: &mut Session, dir: &std::path::Path, events: u64, seed: u64) -> std::path::PathBuf {
    let path = dir.join(format!("events-{events}-{seed}.jsonl"));
    if !path.exists() {
        write_events(&path, &gen_opts(events, seed));
    }
    exec(
        s,
        &format!(
            "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'file', path = '{}', format = 'json');",
            path.display()
        ),
    )
    .await;
    path
}

/// `query` streamed at every size of [`RUNS`] equals `oracle` (the same SQL unless given) in batch.
async fn matches_batch(seed: u64, query: &str, oracle: Option<&str>) {
    let dir = tempfile::tempdir().expect("tmp");
    for (events, batch) in RUNS {
        let mut s = session(batch);
        source(&mut s, dir.path(), events, seed).await;
        let got = streamed(&mut s, query).await;
        let ctx = oracle_ctx(&gen_opts(events, seed), "ev");
        let want = batch_rows(&ctx, oracle.unwrap_or(query)).await;
        assert!(!want.is_empty(), "the oracle returned no rows");
        assert_rows_eq(&got, &want, &format!("{events} events, micro-batches of {batch}"));
    }
}

/// `WHERE user_id NOT IN (…)`: users with two events at one time, left out where "first", "last" or
/// a ROWS frame per user would depend on arrival order (which a batch query does not know; the
/// operators' unit tests cover Flink's tie rules).
async fn without_tied_users(seed: u64) -> String {
    let mut tied: Vec<String> = Vec::new();
    for (events, _) in RUNS {
        let ctx = oracle_ctx(&gen_opts(events, seed), "ev");
        tied.extend(
            batch_rows(
                &ctx,
                "SELECT DISTINCT user_id FROM ev GROUP BY user_id, event_time HAVING COUNT(*) > 1",
            )
            .await,
        );
    }
    tied.sort();
    tied.dedup();
    if tied.is_empty() {
        return "TRUE".into();
    }
    format!("user_id NOT IN ({})", tied.join(", "))
}

const TOP_COURSES: &str = "SELECT region, course_id, c, rn FROM (
        SELECT region, course_id, c, ROW_NUMBER() OVER (PARTITION BY region ORDER BY c DESC, course_id) AS rn
        FROM (SELECT region, course_id, COUNT(*) AS c FROM ev GROUP BY region, course_id))
     WHERE rn <= 3";

#[tokio::test]
async fn top_courses_per_region_over_an_updating_aggregate() {
    matches_batch(21, TOP_COURSES, None).await;
}

#[tokio::test]
async fn top_courses_without_the_rank_and_with_rank_functions() {
    matches_batch(
        22,
        "SELECT region, course_id, c FROM (
            SELECT region, course_id, c, ROW_NUMBER() OVER (PARTITION BY region ORDER BY c DESC, course_id) AS rn
            FROM (SELECT region, course_id, COUNT(*) AS c FROM ev GROUP BY region, course_id))
         WHERE rn < 4",
        None,
    )
    .await;
    // Ties on the count share a rank; rows beyond the last kept rank leave.
    matches_batch(
        23,
        "SELECT region, course_id, c, r FROM (
            SELECT region, course_id, c, RANK() OVER (PARTITION BY region ORDER BY c DESC) AS r
            FROM (SELECT region, course_id, COUNT(*) AS c FROM ev GROUP BY region, course_id))
         WHERE r <= 4",
        None,
    )
    .await;
    matches_batch(
        24,
        "SELECT region, course_id, c, r FROM (
            SELECT region, course_id, c, DENSE_RANK() OVER (PARTITION BY region ORDER BY c DESC) AS r
            FROM (SELECT region, course_id, COUNT(*) AS c FROM ev GROUP BY region, course_id))
         WHERE r BETWEEN 2 AND 3",
        None,
    )
    .await;
}

#[tokio::test]
async fn top_n_over_an_append_only_stream() {
    // The three most recent purchases per region by course id (a Top-N on a non-time order).
    matches_batch(
        25,
        "SELECT * FROM (
            SELECT region, user_id, course_id, event_time,
                   ROW_NUMBER() OVER (PARTITION BY region ORDER BY course_id DESC, user_id, event_time) AS rn
            FROM ev WHERE purchased)
         WHERE rn <= 3",
        None,
    )
    .await;
}

#[tokio::test]
async fn first_and_last_event_per_user() {
    let known = without_tied_users(26).await;
    matches_batch(
        26,
        &format!(
            "SELECT user_id, course_id, event_time FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY event_time) AS rn FROM ev WHERE {known})
             WHERE rn = 1"
        ),
        None,
    )
    .await;
    matches_batch(
        26,
        &format!(
            "SELECT user_id, course_id, region, event_time,
                    ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY event_time DESC) AS rn
             FROM ev WHERE {known} QUALIFY rn < 2"
        ),
        None,
    )
    .await;
}

#[tokio::test]
async fn top_courses_per_window() {
    matches_batch(
        27,
        "SELECT window_start, window_end, course_id, c, rn FROM (
            SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY c DESC, course_id) AS rn
            FROM (SELECT window_start, window_end, course_id, COUNT(*) AS c
                  FROM TUMBLE(ev, event_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end, course_id))
         WHERE rn <= 3",
        Some(
            "SELECT ws, ws + INTERVAL '10 seconds', course_id, c, rn FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY ws ORDER BY c DESC, course_id) AS rn
                FROM (SELECT date_bin(INTERVAL '10 seconds', event_time, TIMESTAMP '1970-01-01') AS ws, course_id,
                             COUNT(*) AS c FROM ev GROUP BY 1, 2))
             WHERE rn <= 3",
        ),
    )
    .await;
}

#[tokio::test]
async fn first_view_per_user_and_hop_window() {
    // Window deduplication straight over a window function: each view is in two windows.
    let known = without_tied_users(30).await;
    matches_batch(
        30,
        &format!(
            "SELECT window_start, user_id, course_id, event_time FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end, user_id ORDER BY event_time) AS rn
                FROM HOP(ev, event_time, INTERVAL '5' SECOND, INTERVAL '10' SECOND) WHERE {known})
             WHERE rn = 1"
        ),
        Some(&format!(
            "SELECT ws, user_id, course_id, event_time FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY ws, user_id ORDER BY event_time) AS rn FROM (
                    SELECT user_id, course_id, event_time, to_timestamp_millis(
                        (CAST(arrow_cast(event_time, 'Timestamp(Millisecond, None)') AS BIGINT) / 5000) * 5000 - k.i * 5000) AS ws
                    FROM ev CROSS JOIN (VALUES (0), (1)) AS k(i) WHERE {known}))
             WHERE rn = 1"
        )),
    )
    .await;
}

#[tokio::test]
async fn over_aggregates_with_rows_and_range_frames() {
    let known = without_tied_users(28).await;
    matches_batch(
        28,
        &format!(
            "SELECT user_id, course_id, event_time,
                    SUM(course_id) OVER w AS s3, COUNT(*) OVER w AS n3, MAX(course_id) OVER w AS m3,
                    COUNT(*) OVER (PARTITION BY user_id ORDER BY event_time ROWS UNBOUNDED PRECEDING) AS seen
             FROM ev WHERE {known}
             WINDOW w AS (PARTITION BY user_id ORDER BY event_time ROWS BETWEEN 2 PRECEDING AND CURRENT ROW)"
        ),
        None,
    )
    .await;
    // Peers (rows of one time) share a RANGE frame; regions have many.
    matches_batch(
        29,
        "SELECT region, user_id, course_id, event_time,
                COUNT(*) OVER w AS n, SUM(course_id) OVER w AS s, MIN(user_id) OVER w AS lo,
                ROUND(AVG(course_id) OVER (PARTITION BY region ORDER BY event_time), 6) AS mean
         FROM ev WINDOW w AS (PARTITION BY region ORDER BY event_time
                              RANGE BETWEEN INTERVAL '1' SECOND PRECEDING AND CURRENT ROW)",
        None,
    )
    .await;
}

/// The error of planning `query` as a materialized view.
async fn refusal(query: &str) -> String {
    let mut s = session(1000);
    exec(
        &mut s,
        &format!("CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'generator', events = '10');"),
    )
    .await;
    let st = parse_one(&format!("CREATE MATERIALIZED VIEW mv AS\n{query}")).expect("parse");
    match s.execute(&st).await {
        Ok(_) => panic!("planned: {query}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn refusals_name_the_construct_and_where_it_is() {
    let e = refusal("SELECT user_id, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY event_time) AS rn FROM ev").await;
    assert!(
        e.starts_with("2:17: ROW_NUMBER() OVER (…) is supported as a Top-N only"),
        "{e}"
    );
    assert!(e.contains("WHERE rn <= N"), "{e}");
    let e = refusal(
        "SELECT * FROM (SELECT user_id, RANK() OVER (PARTITION BY user_id ORDER BY event_time) AS r FROM ev)\nWHERE r >= 2",
    )
    .await;
    assert!(e.starts_with("2:32: RANK() OVER (…) needs an upper bound"), "{e}");
    let e =
        refusal("SELECT user_id,\n  SUM(course_id) OVER (PARTITION BY user_id ORDER BY course_id) AS s FROM ev").await;
    assert!(
        e.starts_with("3:3: sum(ev.course_id) OVER (… ORDER BY ev.course_id)"),
        "{e}"
    );
    assert!(e.contains("ORDER BY event_time"), "{e}");
    let e =
        refusal("SELECT user_id, LAG(course_id) OVER (PARTITION BY user_id ORDER BY event_time) AS p FROM ev").await;
    assert!(e.starts_with("2:17: LAG() OVER (…) is not supported"), "{e}");
    let e =
        refusal("SELECT user_id, MEDIAN(course_id) OVER (PARTITION BY user_id ORDER BY event_time) AS p FROM ev").await;
    assert!(
        e.starts_with("2:17: median(") && e.contains("OVER (…) is not supported"),
        "{e}"
    );
    let e = refusal(
        "SELECT user_id, COUNT(*) OVER (PARTITION BY user_id ORDER BY event_time\n  ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS n FROM ev",
    )
    .await;
    assert!(
        e.starts_with("2:17: count(") && e.contains("OVER (…): a frame that ends after the current row"),
        "{e}"
    );
}
