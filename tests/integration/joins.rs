//! Joins against batch oracles: lookup joins (stream ⋈ table) and regular stream ⋈ stream joins,
//! including joins of updating aggregates and `IN`/`EXISTS` subqueries. Every query runs at several
//! micro-batch sizes; the materialized view's final contents must equal DataFusion's batch answer over
//! the same events whatever the size. Refused joins name the construct and where it is.

use crate::support::*;

/// Micro-batch sizes: row by row (on a smaller input), odd small batches, and large ones.
const BATCH_SIZES: [usize; 4] = [1, 7, 4096, 65_536];

fn events_for(batch_size: usize) -> u64 {
    if batch_size == 1 { 2_000 } else { 12_000 }
}

/// A session with two event sources (`ev`, and `ev2` with part of its events) and the course table
/// `courses`,
/// and a batch context with the same data.
async fn setup(
    batch_size: usize,
) -> (
    tempfile::TempDir,
    freshet::session::Session,
    datafusion::prelude::SessionContext,
) {
    let dir = tempfile::tempdir().expect("tmp");
    let events = events_for(batch_size);
    // ev2 is the first half of ev's events: the same users, but not all of them.
    let (o1, o2) = (gen_opts(events, 31), gen_opts(events / 2, 31));
    let (p1, p2) = (dir.path().join("ev.jsonl"), dir.path().join("ev2.jsonl"));
    write_events(&p1, &o1);
    write_events(&p2, &o2);
    // Courses 1..=400 of the generator's 500 (the rest have no row), course 7 twice, one row without
    // an id.
    let catalog = dir.path().join("courses.csv");
    let mut csv = String::from("course_id,title,category\n");
    for c in 1..=400 {
        csv.push_str(&format!("{c},Course {c},{}\n", ["data", "web", "ml", "design"][c % 4]));
    }
    csv.push_str("7,Course 7 (new edition),data\n,Orphan,data\n");
    std::fs::write(&catalog, csv).expect("csv");
    let mut s = session(batch_size);
    exec(
        &mut s,
        &format!(
            "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'file', path = '{}', format = 'json');
             CREATE SOURCE ev2 ({COURSE_COLUMNS}) WITH (connector = 'file', path = '{}', format = 'json');
             CREATE TABLE courses (course_id BIGINT, title VARCHAR, category VARCHAR)
             WITH (connector = 'file', path = '{}', format = 'csv');",
            p1.display(),
            p2.display(),
            catalog.display()
        ),
    )
    .await;
    let ctx = oracle_ctx(&o1, "ev");
    let other = oracle_ctx(&o2, "ev2");
    let ev2 = other.table_provider("ev2").await.expect("ev2");
    ctx.register_table("ev2", ev2).expect("register");
    ctx.register_csv("courses", catalog.to_str().expect("utf8"), Default::default())
        .await
        .expect("csv");
    (dir, s, ctx)
}

/// Each query streamed into a materialized view at every batch size equals its batch answer (the
/// same SQL run by DataFusion).
async fn matches_batch(queries: &[&str]) {
    let pairs: Vec<(&str, &str)> = queries.iter().map(|q| (*q, *q)).collect();
    matches_batch_as(&pairs).await;
}

/// As [`matches_batch`], with the batch answer from its own SQL (for window functions).
async fn matches_batch_as(queries: &[(&str, &str)]) {
    for bs in BATCH_SIZES {
        let (_d, mut s, ctx) = setup(bs).await;
        for (q, batch) in queries {
            let want = batch_rows(&ctx, batch).await;
            assert!(!want.is_empty(), "the oracle returned no rows for {batch}");
            let got = streamed(&mut s, q).await;
            assert_rows_eq(&got, &want, &format!("batch size {bs}: {q}"));
        }
    }
}

#[tokio::test]
async fn lookup_inner_and_left_joins_match_batch() {
    matches_batch(&[
        // Inner: views of courses without a row drop out; course 7 meets two rows.
        "SELECT e.user_id, e.course_id, e.event_time, c.title FROM ev e JOIN courses c ON e.course_id = c.course_id",
        // Left, with a condition on the table in ON and one across both sides.
        "SELECT e.user_id, e.course_id, e.event_time, c.title, c.category
         FROM ev e LEFT JOIN courses c
           ON e.course_id = c.course_id AND c.category <> 'web' AND (e.user_id + c.course_id) % 3 <> 0",
        // The table on the left of a RIGHT JOIN keeping the stream's rows.
        "SELECT c.category, e.user_id, e.event_time FROM courses c RIGHT JOIN ev e ON c.course_id = e.course_id",
        // Aggregated above the join.
        "SELECT c.category, COUNT(*) AS views, COUNT(DISTINCT e.user_id) AS viewers
         FROM ev e JOIN courses c ON e.course_id = c.course_id GROUP BY c.category",
    ])
    .await;
}

/// Window aggregates over a lookup join: the window function below the join hands out panes (HOP) or
/// single-row sessions (SESSION) that the aggregate above merges.
#[tokio::test]
async fn window_aggregates_over_lookup_joins_match_batch() {
    matches_batch_as(&[
        (
            "SELECT c.category, window_start, window_end, COUNT(*) AS views, COUNT(DISTINCT e.user_id) AS viewers
             FROM HOP(ev, event_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS e
             JOIN courses c ON e.course_id = c.course_id
             GROUP BY c.category, window_start, window_end",
            "SELECT c.category, ws, ws + INTERVAL '10 seconds', COUNT(*), COUNT(DISTINCT w.user_id) FROM (
                SELECT user_id, course_id,
                       to_timestamp_millis((CAST(arrow_cast(event_time, 'Timestamp(Millisecond, None)') AS BIGINT) / 2000) * 2000 - k.i * 2000) AS ws
                FROM ev CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS k(i)) w
             JOIN courses c ON w.course_id = c.course_id GROUP BY c.category, ws",
        ),
        (
            "SELECT e.user_id, c.category, window_start, window_end, COUNT(*) AS views
             FROM SESSION(ev, event_time, INTERVAL '20' SECOND) AS e
             JOIN courses c ON e.course_id = c.course_id AND c.category <> 'web'
             WHERE e.user_id % 7 = 0
             GROUP BY e.user_id, c.category, window_start, window_end",
            "WITH j AS (
                SELECT e.user_id, c.category, e.event_time FROM ev e
                JOIN courses c ON e.course_id = c.course_id AND c.category <> 'web' WHERE e.user_id % 7 = 0),
             marked AS (
                SELECT *, CASE WHEN event_time - LAG(event_time) OVER (PARTITION BY user_id, category ORDER BY event_time)
                                    < INTERVAL '20 seconds' THEN 0 ELSE 1 END AS new_session
                FROM j),
             numbered AS (
                SELECT *, SUM(new_session) OVER (PARTITION BY user_id, category ORDER BY event_time ROWS UNBOUNDED PRECEDING) AS sid
                FROM marked)
             SELECT user_id, category, MIN(event_time), MAX(event_time) + INTERVAL '20 seconds', COUNT(*)
             FROM numbered GROUP BY user_id, category, sid",
        ),
    ])
    .await;
}

#[tokio::test]
async fn lookup_joins_of_updating_results_and_subqueries_match_batch() {
    matches_batch(&[
        // A changelog (per-course counts) through a lookup join, then aggregated again.
        "SELECT c.category, SUM(v.n) AS views, COUNT(*) AS courses
         FROM (SELECT course_id, COUNT(*) AS n FROM ev GROUP BY course_id) v
         JOIN courses c ON v.course_id = c.course_id GROUP BY c.category",
        // IN and NOT EXISTS over the table.
        "SELECT user_id, course_id, event_time FROM ev WHERE course_id IN (SELECT course_id FROM courses WHERE category = 'ml')",
        "SELECT user_id, course_id, event_time FROM ev e
         WHERE NOT EXISTS (SELECT 1 FROM courses c WHERE c.course_id = e.course_id AND c.category <> 'web')",
        // NOT IN: a set without NULLs, an empty set (everything passes), a set with a NULL (nothing does).
        "SELECT user_id, course_id, event_time FROM ev WHERE course_id NOT IN (SELECT course_id FROM courses WHERE category = 'ml')",
        "SELECT user_id, course_id, 'empty' AS q FROM ev WHERE course_id NOT IN (SELECT course_id FROM courses WHERE category = 'none')
         UNION ALL
         SELECT user_id, course_id, 'null' AS q FROM ev WHERE course_id NOT IN (SELECT course_id FROM courses)",
    ])
    .await;
}

#[tokio::test]
async fn stream_stream_inner_left_and_full_joins_match_batch() {
    matches_batch(&[
        // Inner, with a residual condition.
        "SELECT v.user_id, v.course_id, v.event_time, b.course_id AS bought
         FROM ev v JOIN ev2 b ON v.user_id = b.user_id AND v.course_id <> b.course_id WHERE b.purchased",
        // Left: views padded while the user has bought nothing in ev2.
        "SELECT v.user_id, v.event_time, b.course_id AS bought
         FROM ev v LEFT JOIN (SELECT user_id, course_id FROM ev2 WHERE purchased) b ON v.user_id = b.user_id",
        // Keys of two types (INT against BIGINT): split by key, equal keys must meet all the same.
        "SELECT v.user_id, v.event_time, b.course_id AS bought
         FROM ev v JOIN (SELECT CAST(user_id AS INT) AS uid, course_id FROM ev2 WHERE purchased) b ON v.user_id = b.uid",
        // Full, aggregated above (the join's changelog feeds a GROUP BY).
        "SELECT COALESCE(v.region, b.region) AS region, COUNT(*) AS n, COUNT(v.user_id) AS viewed, COUNT(b.user_id) AS bought
         FROM (SELECT user_id, region FROM ev WHERE course_id % 10 = 0) v
         FULL JOIN (SELECT user_id, region FROM ev2 WHERE purchased) b ON v.user_id = b.user_id
         GROUP BY COALESCE(v.region, b.region)",
    ])
    .await;
}

#[tokio::test]
async fn joins_of_updating_aggregates_match_batch() {
    matches_batch(&[
        // Per-user counts on both sides: every count change retracts and re-pads.
        "SELECT a.user_id AS a_user, b.user_id AS b_user, a.n, b.m
         FROM (SELECT user_id, COUNT(*) AS n FROM ev GROUP BY user_id) a
         FULL JOIN (SELECT user_id, COUNT(*) AS m FROM ev2 GROUP BY user_id) b ON a.user_id = b.user_id",
        // Per-user counts joined to per-course counts on the counts themselves: the key changes.
        "SELECT u.user_id, c.course_id, u.n
         FROM (SELECT user_id, COUNT(*) AS n FROM ev GROUP BY user_id) u
         JOIN (SELECT course_id, COUNT(*) AS m FROM ev2 GROUP BY course_id) c
           ON u.n = c.m AND u.user_id % 20 = c.course_id % 20",
        // A left join of an aggregate to a stream of rows.
        "SELECT u.user_id, u.n, e.course_id
         FROM (SELECT user_id, COUNT(*) AS n FROM ev GROUP BY user_id HAVING COUNT(*) > 1) u
         LEFT JOIN (SELECT user_id, course_id FROM ev2 WHERE purchased) e ON u.user_id = e.user_id",
    ])
    .await;
}

#[tokio::test]
async fn semi_anti_and_cross_joins_of_streams_match_batch() {
    matches_batch(&[
        "SELECT user_id, course_id, event_time FROM ev WHERE user_id IN (SELECT user_id FROM ev2 WHERE purchased)",
        "SELECT user_id, course_id, event_time FROM ev e
         WHERE NOT EXISTS (SELECT 1 FROM ev2 b WHERE b.user_id = e.user_id AND b.course_id <> e.course_id)",
        // No equality at all: every pair is a candidate.
        "SELECT a.user_id, b.user_id AS other FROM (SELECT user_id, course_id FROM ev WHERE user_id % 97 = 0) a,
                (SELECT user_id, course_id FROM ev2 WHERE user_id % 89 = 0) b WHERE a.course_id < b.course_id",
    ])
    .await;
}

/// The refusal of `query` as a materialized view, and the position (`line:col: `) where `needle`
/// starts in that statement.
async fn refusal(query: &str, needle: &str) -> (String, String) {
    let (_d, mut s, _ctx) = setup(4096).await;
    let sql = format!("CREATE MATERIALIZED VIEW mv AS {query};");
    let st = freshet::sql::parser::parse_script(&sql).expect("parses").remove(0);
    let at = sql.find(needle).expect("needle");
    let line = sql[..at].matches('\n').count() + 1;
    let col = at - sql[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    match s.execute(&st.statement).await {
        Ok(_) => panic!("accepted: {query}"),
        Err(e) => (e.to_string(), format!("{line}:{col}: ")),
    }
}

#[tokio::test]
async fn joins_that_cannot_end_with_the_batch_answer_are_refused() {
    for (query, needle, says) in [
        (
            "SELECT * FROM ev e FULL JOIN courses c ON e.course_id = c.course_id",
            "courses c",
            "a FULL JOIN of a stream and table 'courses' is not supported",
        ),
        (
            "SELECT * FROM courses c LEFT JOIN ev e ON e.course_id = c.course_id",
            "ev e",
            "a LEFT JOIN of a stream and table 'courses' is not supported",
        ),
        (
            "SELECT * FROM ev WHERE region NOT IN (SELECT region FROM ev2 WHERE purchased)",
            "region NOT IN",
            "NOT IN (SELECT …) over columns that may be NULL",
        ),
        (
            "SELECT * FROM courses WHERE course_id IN (SELECT course_id FROM ev)",
            "course_id IN",
            "rows of table 'courses' filtered by IN/EXISTS over a stream",
        ),
        (
            "SELECT * FROM ev e WHERE e.user_id > 10 OR EXISTS (SELECT 1 FROM ev2 b WHERE b.user_id = e.user_id)",
            "SELECT 1 FROM ev2",
            "EXISTS or IN (SELECT …) combined with OR",
        ),
        // The second JOIN written is the one refused.
        (
            "SELECT * FROM ev e JOIN ev2 b ON e.user_id = b.user_id\nFULL JOIN courses c ON e.course_id = c.course_id",
            "courses c",
            "a FULL JOIN of a stream and table 'courses'",
        ),
    ] {
        let (message, at) = refusal(query, needle).await;
        assert!(
            message.starts_with(&format!("{at}{says}")),
            "{query}: {message} (expected at {at})"
        );
    }
}
