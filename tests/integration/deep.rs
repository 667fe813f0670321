//! Deep nesting through the real binary, whose threads' stacks are what matters (the main thread's
//! is the system's, tokio's workers and query threads have their own): SQL nested too deeply is an
//! error, JSON nested too deeply a bad record, never a stack overflow.

use std::process::Command;

fn freshet(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_freshet"));
    c.current_dir(dir).env("FRESHET_DATA_DIR", dir.join("data"));
    c
}

#[test]
fn check_refuses_sql_nested_too_deeply_and_accepts_it_within_the_limit() {
    let dir = tempfile::tempdir().expect("tmp");
    let deep = [
        ("plus.sql", format!("SELECT {};", vec!["1"; 100_000].join("+"))),
        (
            "parens.sql",
            format!("SELECT {}1{};", "(".repeat(10_000), ")".repeat(10_000)),
        ),
        (
            "subqueries.sql",
            format!(
                "SELECT * FROM {}(SELECT 1 AS x) t{};",
                "(SELECT * FROM ".repeat(5_000),
                ") t".repeat(5_000)
            ),
        ),
        (
            "case.sql",
            format!(
                "SELECT {}1{};",
                "CASE WHEN true THEN ".repeat(5_000),
                " END".repeat(5_000)
            ),
        ),
        (
            "union.sql",
            format!("{};", vec!["SELECT 1 AS x"; 20_000].join(" UNION ALL ")),
        ),
    ];
    for (name, sql) in &deep {
        std::fs::write(dir.path().join(name), sql).expect("write");
        let out = freshet(dir.path()).args(["check", name]).output().expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("nested too deeply") || stdout.contains("recursion limit"),
            "{name}: {stdout}"
        );
    }
    // Just within the limit: planned, on the command's own thread.
    std::fs::write(
        dir.path().join("ok.sql"),
        format!("SELECT {};", vec!["1"; 250].join("+")),
    )
    .expect("write");
    let out = freshet(dir.path()).args(["check", "ok.sql"]).output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn run_sets_json_nested_100_000_deep_aside_as_bad_records() {
    let dir = tempfile::tempdir().expect("tmp");
    let good = |n: u32| format!(r#"{{"a":{n},"b":"x"}}"#);
    let lines = [
        good(1),
        format!(r#"{{"a":2,"b":{}1{}}}"#, "[".repeat(100_000), "]".repeat(100_000)),
        format!(
            r#"{{"a":3,"b":{}1{}}}"#,
            r#"{"c":"#.repeat(100_000),
            "}".repeat(100_000)
        ),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        good(4),
    ];
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").expect("write");
    std::fs::write(
        dir.path().join("job.sql"),
        "CREATE SOURCE s (a BIGINT, b VARCHAR) WITH (connector = 'file', path = 'in.jsonl');
         CREATE SINK f WITH (connector = 'file', path = 'out.jsonl') AS SELECT a FROM s;",
    )
    .expect("write");
    let out = freshet(dir.path()).args(["run", "job.sql"]).output().expect("run");
    assert!(
        out.status.success(),
        "{:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("sink file");
    let rows: Vec<&str> = written.lines().collect();
    assert_eq!(rows, [r#"{"a":1}"#, r#"{"a":4}"#]);
}
