//! Bad input gets a clear error and loses nothing: malformed records go to `_errors`, late ones to
//! `_late`, bad SQL and options are reported precisely, and nothing panics.

use freshet::session::Outcome;
use freshet::sql::parser::parse_script;

use crate::support::*;

#[tokio::test]
async fn malformed_records_go_to_errors_and_the_query_goes_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("mixed.jsonl");
    let good = |u: i64, t: &str| {
        format!(r#"{{"user_id":{u},"course_id":1,"region":"eu-west","purchased":false,"event_time":"{t}"}}"#)
    };
    let lines = [
        good(1, "2026-01-01T00:00:01Z"),
        "{not json".to_string(),
        good(2, "2026-01-01T00:00:02Z"),
        r#"{"user_id":"three","course_id":1,"event_time":"2026-01-01T00:00:03Z"}"#.to_string(),
        good(4, "2026-01-01T00:01:04Z"),
        r#"{"user_id":5,"course_id":1,"event_time":"not a time"}"#.to_string(),
    ];
    std::fs::write(&path, lines.join("\n") + "\n").expect("write");
    // A fresh session with the file as source `ev` (each has its own `_errors`).
    let source = format!(
        "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'file', path = '{}');",
        path.display()
    );
    let mut s = session(2);
    exec(&mut s, &source).await;
    let rows = streamed(
        &mut s,
        "SELECT window_start, COUNT(*) AS n, COUNT(DISTINCT user_id) AS users
         FROM TUMBLE(ev, event_time, INTERVAL '1' MINUTE) GROUP BY window_start, window_end",
    )
    .await;
    assert_eq!(rows, vec!["2026-01-01T00:00:00|2|2", "2026-01-01T00:01:00|1|1"]);
    let errors = sorted_rows(&exec(&mut s, "SELECT position, raw, reason FROM _errors ORDER BY position;").await);
    assert_eq!(errors.len(), 3, "{errors:?}");
    let p = path.display().to_string();
    assert!(errors[0].starts_with(&format!("{p}:2|{{not json|")), "{errors:?}");
    assert!(errors[1].starts_with(&format!("{p}:4|")), "{errors:?}");
    assert!(errors[2].starts_with(&format!("{p}:6|")), "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.split('|').nth(2).is_some_and(|r| !r.is_empty())),
        "each error has a reason"
    );

    // A query that does not read `user_id` decodes only what it reads (as Flink's JSON format
    // does): line 4's bad `user_id` is then no error, and its row counts; lines 2 and 6 still are.
    let mut s = session(2);
    exec(&mut s, &source).await;
    let rows = streamed(
        &mut s,
        "SELECT window_start, COUNT(*) AS n FROM TUMBLE(ev, event_time, INTERVAL '1' MINUTE) GROUP BY window_start, window_end",
    )
    .await;
    assert_eq!(rows, vec!["2026-01-01T00:00:00|3", "2026-01-01T00:01:00|1"]);
    let errors = sorted_rows(&exec(&mut s, "SELECT position FROM _errors ORDER BY position;").await);
    assert_eq!(errors, vec![format!("{p}:2"), format!("{p}:6")]);
}

#[tokio::test]
async fn late_records_go_to_late_and_are_counted() {
    let mut s = session(500);
    exec(
        &mut s,
        &format!(
            "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'generator', seed = '5', events = '30000', late_ratio = '0.02');"
        ),
    )
    .await;
    let rows = streamed(
        &mut s,
        "SELECT COUNT(*) AS n FROM TUMBLE(ev, event_time, INTERVAL '10' SECOND) GROUP BY window_start",
    )
    .await;
    let counted: i64 = rows.iter().map(|r| r.parse::<i64>().expect("count")).sum();
    let late = sorted_rows(&exec(&mut s, "SELECT COUNT(*) FROM _late;").await);
    let late: i64 = late[0].parse().expect("n");
    assert!(late > 300, "about 2% of 30000 are late, got {late}");
    assert_eq!(counted + late, 30_000, "every event is either counted or in _late");
    let reasons = sorted_rows(&exec(&mut s, "SELECT DISTINCT substr(reason, 1, 31) FROM _late;").await);
    assert_eq!(reasons, vec!["late: its window had ended at t"]);
}

async fn error_of(sql: &str) -> String {
    let mut s = session(1000);
    let mut last = None;
    match parse_script(sql) {
        Err(e) => return e.to_string(),
        Ok(stmts) => {
            for st in stmts {
                match s.execute(&st.statement).await {
                    Err(e) => return e.to_string(),
                    Ok(Outcome::Live(l)) => last = Some(l.handle.await.expect("join").map(|_| ())),
                    Ok(_) => {}
                }
            }
        }
    }
    match last {
        Some(Err(e)) => e.to_string(),
        _ => panic!("no error for {sql}"),
    }
}

#[tokio::test]
async fn bad_sql_and_options_are_reported_precisely() {
    let e = error_of("SHOW SOURCES;\nSELECT (a FROM s;").await;
    assert!(e.starts_with("2:11:"), "{e}");
    let e = error_of("CREATE SOURCE s (a BIGINT) WITH (connector = 'generator', kind = 'courses', speed = '1');").await;
    assert!(
        e.contains("'speed'") && e.contains("valid options: connector, kind, seed"),
        "{e}"
    );
    let e = error_of("CREATE SOURCE s (a BIGINT) WITH (connector = 'file', path = '/no/such/file.jsonl');").await;
    assert!(e.contains("/no/such/file.jsonl"), "{e}");
    let e = error_of("CREATE SOURCE s (a BIGINT) WITH (connector = 'kafkaa');").await;
    assert!(e.contains("unknown source connector 'kafkaa'"), "{e}");
    let e = error_of(&format!(
        "CREATE SOURCE s ({COURSE_COLUMNS}) WITH (connector = 'generator', events = '10');
         CREATE SINK k WITH (connector = 'parquet', path = '/tmp/x', rollover_rowz = '3') AS SELECT * FROM s;"
    ))
    .await;
    assert!(e.contains("'rollover_rowz'") && e.contains("rollover_rows"), "{e}");
    let e = error_of(
        "CREATE SOURCE s (user_id BIGINT, event_time TIMESTAMP) WITH (connector = 'generator', events = '10');
         SELECT COUNT(*) FROM TUMBLE(s, event_time, INTERVAL '1' MINUTE) GROUP BY window_start;",
    )
    .await;
    assert!(e.contains("has no WATERMARK"), "{e}");
    // SESSION's PARTITION BY must be the GROUP BY keys (Flink); the refusal names both and where.
    let e = error_of(&format!(
        "CREATE SOURCE s ({COURSE_COLUMNS}) WITH (connector = 'generator', events = '10');
         SELECT user_id, window_start, COUNT(*) FROM TABLE(SESSION(TABLE s PARTITION BY region, DESCRIPTOR(event_time), INTERVAL '5' SECOND))
         GROUP BY user_id, window_start, window_end;"
    ))
    .await;
    assert!(
        e.starts_with("4:19:")
            && e.contains("SESSION … PARTITION BY (region) must list the same keys as the GROUP BY (s.user_id)"),
        "{e}"
    );
    let e = error_of(&format!(
        "CREATE SOURCE s ({COURSE_COLUMNS}) WITH (connector = 'generator', events = '10');
         SELECT nope FROM s;"
    ))
    .await;
    assert!(e.contains("nope"), "{e}");
    // A blackhole takes an updating result only as a changelog, and no other format.
    let e = error_of(&format!(
        "CREATE SOURCE s ({COURSE_COLUMNS}) WITH (connector = 'generator', events = '10');
         CREATE SINK k WITH (connector = 'blackhole', format = 'json') AS SELECT course_id, COUNT(*) FROM s GROUP BY course_id;"
    ))
    .await;
    assert!(e.contains("option 'format'") && e.contains("valid: changelog"), "{e}");
    let e = error_of(&format!(
        "CREATE SOURCE s ({COURSE_COLUMNS}) WITH (connector = 'generator', events = '10');
         CREATE SINK k WITH (connector = 'blackhole') AS SELECT course_id, COUNT(*) FROM s GROUP BY course_id;"
    ))
    .await;
    assert!(
        e.contains("takes an append-only stream") && e.contains("format = 'changelog'"),
        "{e}"
    );
}

#[tokio::test]
async fn show_describe_explain_and_drop() {
    let mut s = session(1000);
    exec(
        &mut s,
        &format!("CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'generator', events = '5000');"),
    )
    .await;
    exec(&mut s, "CREATE VIEW buys AS SELECT * FROM ev WHERE purchased;").await;
    let shown = sorted_rows(&exec(&mut s, "SHOW SOURCES;").await);
    assert_eq!(shown, vec!["ev|source|generator"]);
    let desc = sorted_rows(&exec(&mut s, "DESCRIBE ev;").await);
    assert!(desc.contains(&"user_id|Int64|NO".to_string()), "{desc:?}");
    assert!(
        desc.iter()
            .any(|r| r.starts_with("WATERMARK FOR event_time|event_time - 5000 ms")),
        "{desc:?}"
    );
    let plan = match s
        .execute(&freshet::sql::parser::parse_one(
            "EXPLAIN SELECT course_id, window_start, COUNT(*) FROM HOP(buys, event_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
             GROUP BY course_id, window_start, window_end",
        )
        .expect("parse"))
        .await
        .expect("explain")
    {
        Outcome::Text(t) => t,
        _ => panic!("EXPLAIN gives text"),
    };
    assert!(
        plan.contains("WindowAggregate HOP(slide 2s, size 10s; panes of 2s)"),
        "{plan}"
    );
    assert!(plan.contains("streams: ev"), "{plan}");
    assert!(
        plan.contains("WindowAssign HOP(slide 2s, size 10s; panes of 2s) on event_time (panes"),
        "the window function hands out panes: {plan}"
    );
    assert!(
        plan.contains("⇒ upsert, key (course_id, window_start)"),
        "each edge's kind and key: {plan}"
    );
    assert!(
        plan.contains("state: per pane (2s)"),
        "the state each operator keeps: {plan}"
    );
    assert!(
        plan.contains("filter ev.purchased") || plan.contains("filter purchased"),
        "{plan}"
    );
    let e = s
        .execute(&freshet::sql::parser::parse_one("DROP SOURCE ev").expect("parse"))
        .await
        .err()
        .expect("ev is used by the view");
    assert!(e.to_string().contains("'buys' uses it"), "{e}");
    exec(&mut s, "DROP VIEW buys; DROP SOURCE ev;").await;
    assert!(sorted_rows(&exec(&mut s, "SHOW SOURCES;").await).is_empty());
    let e = s
        .execute(&freshet::sql::parser::parse_one("DROP SOURCE ev").expect("parse"))
        .await
        .err()
        .expect("gone");
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[tokio::test]
async fn set_takes_flinks_keys_and_names_what_it_refuses() {
    let mut s = session(1_000);
    exec(&mut s, "SET 'execution.checkpointing.interval' = '2 s';").await;
    assert_eq!(s.config.commit_interval, std::time::Duration::from_secs(2));
    exec(&mut s, "SET 'table.exec.state.ttl' = '1 h';").await;
    assert_eq!(s.config.state_ttl, Some(std::time::Duration::from_secs(3600)));
    exec(&mut s, "SET 'table.exec.state.ttl' = '0';").await;
    assert_eq!(s.config.state_ttl, None);
    let e = error_of("SET 'execution.checkpointing.interval' = 'soon';").await;
    assert!(
        e.contains("execution.checkpointing.interval") && e.contains("not a duration"),
        "{e}"
    );
    let e = error_of("SET 'pipeline.name' = 'x';").await;
    assert!(e.contains("pipeline.name") && e.contains("unknown setting"), "{e}");
}
