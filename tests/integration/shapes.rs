//! Query shapes, table-driven: each either runs and ends with exactly the batch answer (DataFusion
//! batch SQL over the same events) at several micro-batch sizes, or is refused with its message —
//! none may run and differ. The shapes are the ones a template planner gets wrong: aggregates in
//! CTEs, UNION ALL, DISTINCT, OVER, QUALIFY, nested windows, windows in views, a window aggregate
//! joined to a stream, stream ⋈ stream without a window, HAVING that stops matching.

use crate::support::*;

enum Expect {
    /// The batch SQL whose rows the streamed result must equal (sorted, as text).
    Batch(&'static str),
    /// A fragment of the refusal message.
    Refused(&'static str),
}

struct Shape {
    name: &'static str,
    /// Statements run first (views).
    setup: &'static str,
    query: &'static str,
    expect: Expect,
}

/// The window start of a 2-second TUMBLE, in batch SQL.
const W2: &str = "date_bin(INTERVAL '2 seconds', event_time, TIMESTAMP '1970-01-01')";

fn shapes() -> Vec<Shape> {
    use Expect::*;
    vec![
        Shape {
            name: "window aggregate in a CTE, filtered after",
            setup: "",
            query: "WITH w AS (SELECT course_id, window_start, COUNT(*) AS n FROM TUMBLE(ev, event_time, INTERVAL '2' SECOND)
                             GROUP BY course_id, window_start, window_end)
                    SELECT course_id, window_start, n FROM w WHERE n > 3",
            expect: Batch("SELECT course_id, WS, COUNT(*) FROM ev GROUP BY course_id, WS HAVING COUNT(*) > 3"),
        },
        Shape {
            name: "UNION ALL of two filtered streams",
            setup: "",
            query: "SELECT user_id, course_id FROM ev WHERE region = 'us-east'
                    UNION ALL SELECT user_id, course_id FROM ev WHERE purchased",
            expect: Batch(
                "SELECT user_id, course_id FROM ev WHERE region = 'us-east' UNION ALL SELECT user_id, course_id FROM ev WHERE purchased",
            ),
        },
        Shape {
            name: "UNION ALL feeding a window aggregate",
            setup: "CREATE VIEW both AS SELECT user_id, region, event_time FROM ev WHERE purchased
                    UNION ALL SELECT user_id, region, event_time FROM ev WHERE region = 'eu-west';",
            query: "SELECT region, window_start, COUNT(*) AS n FROM TUMBLE(both, event_time, INTERVAL '2' SECOND)
                    GROUP BY region, window_start, window_end",
            expect: Batch(
                "SELECT region, WS, COUNT(*) FROM (SELECT region, event_time FROM ev WHERE purchased
                 UNION ALL SELECT region, event_time FROM ev WHERE region = 'eu-west') GROUP BY region, WS",
            ),
        },
        Shape {
            name: "SELECT DISTINCT over a window",
            setup: "",
            query: "SELECT DISTINCT region, window_start FROM TUMBLE(ev, event_time, INTERVAL '2' SECOND)",
            expect: Batch("SELECT DISTINCT region, WS FROM ev"),
        },
        Shape {
            name: "SELECT DISTINCT over a stream (updating)",
            setup: "",
            query: "SELECT DISTINCT region, course_id % 5 AS c FROM ev",
            expect: Batch("SELECT DISTINCT region, course_id % 5 FROM ev"),
        },
        Shape {
            name: "GROUP BY without a window (updating)",
            setup: "",
            query: "SELECT region, COUNT(*) AS n, SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS buys, MAX(user_id) AS top,
                           COUNT(DISTINCT course_id) AS courses, AVG(user_id) AS mean
                    FROM ev GROUP BY region",
            expect: Batch(
                "SELECT region, COUNT(*), SUM(CASE WHEN purchased THEN 1 ELSE 0 END), MAX(user_id), COUNT(DISTINCT course_id), AVG(user_id)
                 FROM ev GROUP BY region",
            ),
        },
        Shape {
            name: "a global aggregate (no GROUP BY)",
            setup: "",
            query: "SELECT COUNT(*) AS n, COUNT(DISTINCT user_id) AS users, MAX(event_time) AS last FROM ev",
            expect: Batch("SELECT COUNT(*), COUNT(DISTINCT user_id), MAX(event_time) FROM ev"),
        },
        Shape {
            name: "an aggregate of an aggregate (retractions flow)",
            setup: "",
            query: "SELECT n, COUNT(*) AS courses, MIN(course_id) AS first FROM
                      (SELECT course_id, COUNT(*) AS n FROM ev GROUP BY course_id) GROUP BY n",
            expect: Batch(
                "SELECT n, COUNT(*), MIN(course_id) FROM (SELECT course_id, COUNT(*) AS n FROM ev GROUP BY course_id) GROUP BY n",
            ),
        },
        Shape {
            name: "HAVING that stops matching retracts the row",
            setup: "",
            query: "SELECT course_id, COUNT(*) AS n FROM ev GROUP BY course_id HAVING COUNT(*) < 40",
            expect: Batch("SELECT course_id, COUNT(*) FROM ev GROUP BY course_id HAVING COUNT(*) < 40"),
        },
        Shape {
            name: "a window aggregate in a view, read with a filter",
            setup: "CREATE VIEW per_course AS SELECT course_id, window_start, window_end, COUNT(*) AS n
                    FROM TUMBLE(ev, event_time, INTERVAL '2' SECOND) GROUP BY course_id, window_start, window_end;",
            query: "SELECT course_id, window_start, n FROM per_course WHERE course_id < 10",
            expect: Batch("SELECT course_id, WS, COUNT(*) FROM ev WHERE course_id < 10 GROUP BY course_id, WS"),
        },
        Shape {
            name: "nested windows: a 10 s TUMBLE over a 2 s one's results",
            setup: "CREATE VIEW fine AS SELECT course_id, window_start AS ws, window_time AS wt, COUNT(*) AS n
                    FROM TUMBLE(ev, event_time, INTERVAL '2' SECOND) GROUP BY course_id, window_start, window_end, window_time;",
            query: "SELECT window_start, SUM(n) AS n, COUNT(DISTINCT course_id) AS courses
                    FROM TUMBLE(fine, wt, INTERVAL '10' SECOND) GROUP BY window_start, window_end",
            expect: Batch(
                "SELECT date_bin(INTERVAL '10 seconds', event_time, TIMESTAMP '1970-01-01'), COUNT(*), COUNT(DISTINCT course_id) FROM ev GROUP BY 1",
            ),
        },
        Shape {
            name: "a window aggregate grouped again by window (cascade)",
            setup: "",
            query: "SELECT window_start, MAX(n) AS busiest FROM
                      (SELECT course_id, window_start, window_end, COUNT(*) AS n FROM TUMBLE(ev, event_time, INTERVAL '2' SECOND)
                       GROUP BY course_id, window_start, window_end)
                    GROUP BY window_start, window_end",
            expect: Batch("SELECT ws, MAX(n) FROM (SELECT course_id, WS AS ws, COUNT(*) AS n FROM ev GROUP BY 1, 2) GROUP BY ws"),
        },
        Shape {
            name: "HOP with a window aggregate in a subquery feeding another aggregate",
            setup: "",
            query: "SELECT n, COUNT(*) AS windows FROM
                      (SELECT region, window_start, COUNT(*) AS n FROM HOP(ev, event_time, INTERVAL '1' SECOND, INTERVAL '4' SECOND)
                       GROUP BY region, window_start, window_end)
                    GROUP BY n",
            expect: Batch(
                "SELECT n, COUNT(*) FROM (SELECT region, ws, COUNT(*) AS n FROM (
                   SELECT region, to_timestamp_millis((CAST(arrow_cast(event_time, 'Timestamp(Millisecond, None)') AS BIGINT) / 1000) * 1000 - k.i * 1000) AS ws
                   FROM ev CROSS JOIN (VALUES (0), (1), (2), (3)) AS k(i)) GROUP BY region, ws) GROUP BY n",
            ),
        },
        Shape {
            name: "CUMULATE windows",
            setup: "",
            query: "SELECT region, window_start, window_end, COUNT(*) AS n
                    FROM TABLE(CUMULATE(TABLE ev, DESCRIPTOR(event_time), INTERVAL '1' SECOND, INTERVAL '4' SECOND))
                    GROUP BY region, window_start, window_end",
            expect: Batch(
                "SELECT region, to_timestamp_millis(ws), to_timestamp_millis(ws + k.i * 1000), COUNT(*) FROM (
                   SELECT region, t, (t / 4000) * 4000 AS ws FROM (
                     SELECT region, CAST(arrow_cast(event_time, 'Timestamp(Millisecond, None)') AS BIGINT) AS t FROM ev)) e
                 CROSS JOIN (VALUES (1), (2), (3), (4)) AS k(i)
                 WHERE e.t < e.ws + k.i * 1000
                 GROUP BY region, ws, k.i",
            ),
        },
        Shape {
            name: "Flink's spelling with a WHERE on input columns",
            setup: "",
            query: "SELECT course_id, window_start, window_end, COUNT(*) AS n, SUM(user_id) AS s
                    FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(event_time), INTERVAL '2' SECOND))
                    WHERE region <> 'us-east' GROUP BY course_id, window_start, window_end",
            expect: Batch(
                "SELECT course_id, WS, WS + INTERVAL '2 seconds', COUNT(*), SUM(user_id) FROM ev WHERE region <> 'us-east' GROUP BY 1, 2, 3",
            ),
        },
        Shape {
            name: "a materialized view read as a changelog by a later query",
            setup: "CREATE MATERIALIZED VIEW per_course AS SELECT course_id, COUNT(*) AS n FROM ev GROUP BY course_id;",
            query: "SELECT n / 10 AS bucket, COUNT(*) AS courses, SUM(n) AS events FROM per_course GROUP BY n / 10",
            expect: Batch(
                "SELECT n / 10, COUNT(*), SUM(n) FROM (SELECT course_id, COUNT(*) AS n FROM ev GROUP BY course_id) GROUP BY n / 10",
            ),
        },
        Shape {
            name: "ORDER BY … LIMIT inside a subquery",
            setup: "",
            query: "SELECT * FROM (SELECT user_id FROM ev ORDER BY user_id LIMIT 5)",
            expect: Refused("ORDER BY … LIMIT inside a continuous query"),
        },
        Shape {
            name: "SESSION windows without an aggregate",
            setup: "",
            query: "SELECT user_id, window_start FROM SESSION(ev, event_time, INTERVAL '5' SECOND)",
            expect: Refused("SESSION windows need an aggregate"),
        },
        Shape {
            name: "HOP with an aggregate that cannot merge panes",
            setup: "",
            query: "SELECT region, window_start, median(user_id) AS m FROM HOP(ev, event_time, INTERVAL '1' SECOND, INTERVAL '4' SECOND)
                    GROUP BY region, window_start, window_end",
            expect: Refused("merged from panes"),
        },
        Shape {
            name: "a TUMBLE aggregate DataFusion computes (median)",
            setup: "",
            // Floating-point sums depend on the order rows are added: compared rounded.
            query: "SELECT region, window_start, median(user_id) AS m, ROUND(stddev(user_id), 6) AS sd
                    FROM TUMBLE(ev, event_time, INTERVAL '2' SECOND) GROUP BY region, window_start, window_end",
            expect: Batch("SELECT region, WS, median(user_id), ROUND(stddev(user_id), 6) FROM ev GROUP BY region, WS"),
        },
        Shape {
            name: "an aggregate over a stream joined nowhere needs no window",
            setup: "",
            query: "SELECT course_id % 3 AS g, COUNT(*) AS n FROM ev WHERE purchased GROUP BY course_id % 3",
            expect: Batch("SELECT course_id % 3, COUNT(*) FROM ev WHERE purchased GROUP BY course_id % 3"),
        },
    ]
}

/// Rows of the streamed query, or the refusal.
async fn run(seed: u64, events: u64, batch: usize, shape: &Shape) -> (Result<Vec<String>, String>, Vec<String>) {
    let dir = tempfile::tempdir().expect("tmp");
    let opts = gen_opts(events, seed);
    let path = dir.path().join("events.jsonl");
    write_events(&path, &opts);
    let mut s = session(batch);
    exec(
        &mut s,
        &format!(
            "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'file', path = '{}', format = 'json');",
            path.display()
        ),
    )
    .await;
    if !shape.setup.is_empty() {
        exec(&mut s, shape.setup).await;
    }
    let ctx = oracle_ctx(&opts, "ev");
    let want = match shape.expect {
        Expect::Batch(sql) => batch_rows(&ctx, &sql.replace("WS", W2)).await,
        Expect::Refused(_) => Vec::new(),
    };
    let created = freshet::sql::parser::parse_one(&format!("CREATE MATERIALIZED VIEW mv AS {};", shape.query));
    let outcome = match created {
        Err(e) => Err(e.to_string()),
        Ok(st) => match s.execute(&st).await {
            Err(e) => Err(e.to_string()),
            Ok(_) => Ok(()),
        },
    };
    let got = match outcome {
        Err(e) => Err(e),
        Ok(()) => {
            crate::support::finish_within(&mut s, std::time::Duration::from_secs(300)).await;
            if let Some(Err(e)) = s.queries.iter().find_map(|q| q.outcome.clone()) {
                panic!("{}: the query failed while running: {e}", shape.name);
            }
            Ok(sorted_rows(&exec(&mut s, "SELECT * FROM mv;").await))
        }
    };
    (got, want)
}

async fn check_all(seed: u64, events: u64, batches: &[usize]) {
    for shape in shapes() {
        for &b in batches {
            let (got, want) = run(seed, events, b, &shape).await;
            match (&shape.expect, got) {
                (Expect::Batch(_), Ok(rows)) => {
                    assert!(!want.is_empty(), "{}: the oracle returned no rows", shape.name);
                    assert_rows_eq(&rows, &want, &format!("{} (batch size {b})", shape.name));
                }
                (Expect::Batch(_), Err(e)) => panic!("{}: refused, expected to run: {e}", shape.name),
                (Expect::Refused(m), Err(e)) => {
                    assert!(e.contains(m), "{}: refused with '{e}', expected '{m}'", shape.name);
                    // A refusal names where: line:column of the construct.
                    assert!(
                        e.split(':').next().is_some_and(|l| l.trim().parse::<u64>().is_ok()),
                        "{}: the refusal has no position: {e}",
                        shape.name
                    );
                }
                (Expect::Refused(m), Ok(rows)) => {
                    panic!("{}: ran ({} rows), expected a refusal '{m}'", shape.name, rows.len())
                }
            }
        }
    }
}

#[tokio::test]
async fn shapes_match_batch_or_are_refused_in_large_micro_batches() {
    check_all(21, 30_000, &[4096, 65_536]).await;
}

#[tokio::test]
async fn shapes_match_batch_in_small_micro_batches() {
    check_all(23, 4_000, &[7]).await;
}

#[tokio::test]
async fn shapes_match_batch_one_row_at_a_time() {
    check_all(22, 1_500, &[1]).await;
}
