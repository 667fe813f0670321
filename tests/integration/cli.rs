//! The `freshet` binary as a user runs it.

use std::process::Command;

fn freshet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_freshet"))
}

#[test]
fn generate_is_deterministic_and_shaped() {
    let run = |seed: &str| {
        let out = freshet()
            .args(["generate", "courses", "--events", "2000", "--seed", seed, "--out", "-"])
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let a = run("3");
    assert_eq!(a, run("3"), "same seed, same bytes");
    assert_ne!(a, run("4"));
    let text = String::from_utf8(a).expect("utf8");
    assert_eq!(text.lines().count(), 2000);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        for k in ["user_id", "course_id", "region", "purchased", "event_time"] {
            assert!(v.get(k).is_some(), "{k} missing in {line}");
        }
    }
    let csv = freshet()
        .args(["generate", "courses", "--events", "5", "--format", "csv"])
        .output()
        .expect("run");
    let csv = String::from_utf8(csv.stdout).expect("utf8");
    assert!(csv.starts_with("user_id,course_id,region,purchased,event_time\n"));
    assert_eq!(csv.lines().count(), 6);
}

#[tokio::test]
async fn main_job_writes_parquet_with_correct_per_minute_counts() {
    let dir = tempfile::tempdir().expect("tmp");
    let sql =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/queries/course_activity.sql")).expect("query");
    let sql = sql.replace("events = '1000000'", "events = '200000'");
    assert!(sql.contains("events = '200000'"));
    std::fs::write(dir.path().join("job.sql"), &sql).expect("write");
    let out = freshet()
        .current_dir(dir.path())
        .args(["run", "job.sql"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("course_views_archive: 200000 rows in"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("conversion_pct"), "the report prints: {stdout}");

    // Oracle: the archive's per-minute counts equal a batch count over the same generated events.
    let ctx = datafusion::prelude::SessionContext::new();
    let archive = dir.path().join("out/course_views");
    ctx.register_parquet("a", archive.to_str().expect("utf8"), Default::default())
        .await
        .expect("parquet");
    let got =
        crate::support::batch_rows(&ctx, "SELECT course_id, window_start, views, viewers, purchases FROM a").await;
    let opts = crate::support::gen_opts(200_000, 42);
    let oracle = crate::support::oracle_ctx(&opts, "ev");
    let want = crate::support::batch_rows(
        &oracle,
        "SELECT course_id, date_bin(INTERVAL '1 minute', event_time, TIMESTAMP '1970-01-01'), COUNT(*), COUNT(DISTINCT user_id),
                SUM(CASE WHEN purchased THEN 1 ELSE 0 END) FROM ev GROUP BY 1, 2",
    )
    .await;
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}

#[test]
fn bad_script_fails_with_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("bad.sql"),
        "SHOW SOURCES;\n\nSELECT (course_id FROM t;\n",
    )
    .expect("write");
    let out = freshet()
        .current_dir(dir.path())
        .args(["run", "bad.sql"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.sql:3:19:"), "{stderr}");
    let out = freshet().args(["run", "/no/such.sql"]).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such.sql"));
}

#[test]
fn sigterm_stops_an_unbounded_run_cleanly_with_sinks_committed() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("live.sql"),
        "CREATE SOURCE ev (user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR, purchased BOOLEAN,
            event_time TIMESTAMP NOT NULL, WATERMARK FOR event_time AS event_time - INTERVAL '200' MILLISECOND)
         WITH (connector = 'generator', rate = '5000', out_of_order_ms = '100');
         CREATE SINK per_second WITH (connector = 'parquet', path = 'out/live') AS
         SELECT region, window_start, COUNT(*) AS n FROM TUMBLE(ev, event_time, INTERVAL '1' SECOND)
         GROUP BY region, window_start, window_end;",
    )
    .expect("write");
    let mut child = freshet()
        .current_dir(dir.path())
        .args(["run", "live.sql", "--batch-interval-ms", "100"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.starts_with("running")) {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("freshet announces it is running");
        lines.push(l);
    }
    // Let a few one-second windows close before stopping.
    std::thread::sleep(Duration::from_millis(3500));
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = child.wait().expect("wait");
    lines.extend(rx.try_iter());
    assert!(status.success(), "exit after SIGTERM: {status:?}\n{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("per_second:") && l.contains("rows in")),
        "{}",
        lines.join("\n")
    );
    let files: Vec<String> = std::fs::read_dir(dir.path().join("out/live"))
        .expect("archive dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!files.is_empty(), "windows closed before the stop were committed");
    assert!(
        files.iter().all(|f| f.ends_with(".parquet") && !f.starts_with('.')),
        "no temp files left: {files:?}"
    );
}

/// Run `freshet check ARGS…` from the repository root (shipped queries name files relative to it).
fn check(args: &[&str]) -> (Option<i32>, String, String) {
    let out = freshet()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("check")
        .args(args)
        .output()
        .expect("run freshet check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sql_files_below(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            sql_files_below(&p, out);
        } else if p.extension().is_some_and(|x| x == "sql") {
            out.push(p);
        }
    }
}

#[test]
fn check_passes_every_shipped_query() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in ["queries", "examples"] {
        sql_files_below(&root.join(d), &mut files);
    }
    assert!(files.len() >= 4, "{files:?}");
    let (code, stdout, stderr) = check(&["queries", "examples"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("checked ") && summary.ends_with(&format!(" in {} files: 0 errors", files.len())),
        "{stdout}"
    );
}

/// Each file in tests/check/bad starts with `-- expect: LINE:COL: message fragment` lines: exactly
/// those errors, at exactly those positions. Adding a case is adding a file.
#[test]
fn check_reports_each_bad_case_at_its_expected_position() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check/bad");
    let mut files = Vec::new();
    sql_files_below(&dir, &mut files);
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let (code, stdout, stderr) = check(&["--format", "json", "tests/check/bad"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON output");
    let reports = doc["files"].as_array().expect("files");
    assert_eq!(reports.len(), files.len());
    let mut total = 0;
    let mut text_lines = Vec::new();
    for f in &files {
        let name = f.file_name().expect("name").to_string_lossy().into_owned();
        let rel = format!("tests/check/bad/{name}");
        let sql = std::fs::read_to_string(f).expect("read case");
        let expected: Vec<(u64, u64, String)> = sql
            .lines()
            .map_while(|l| l.strip_prefix("-- expect: "))
            .map(|e| {
                let mut parts = e.splitn(3, ':');
                let mut num = || {
                    parts
                        .next()
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .expect("LINE:COL")
                };
                let (line, col) = (num(), num());
                (line, col, parts.next().unwrap_or_default().trim().to_string())
            })
            .collect();
        assert!(
            !expected.is_empty(),
            "{name}: starts with no `-- expect: LINE:COL: message` line"
        );
        let report = reports
            .iter()
            .find(|r| r["path"] == rel.as_str())
            .unwrap_or_else(|| panic!("{rel} not in {stdout}"));
        let got = report["errors"].as_array().expect("errors");
        assert_eq!(got.len(), expected.len(), "{name}: {got:?}");
        for ((line, col, fragment), e) in expected.iter().zip(got) {
            let message = e["message"].as_str().expect("message");
            assert_eq!(
                (e["line"].as_u64(), e["column"].as_u64()),
                (Some(*line), Some(*col)),
                "{name}: {message}"
            );
            assert!(
                message.contains(fragment.as_str()),
                "{name}: '{message}' lacks '{fragment}'"
            );
            text_lines.push(format!("{rel}:{line}:{col}: {message}"));
        }
        assert!(report["statements"].as_u64().is_some_and(|n| n >= 1), "{report}");
        total += expected.len();
    }
    assert_eq!(doc["errors"].as_u64(), Some(total as u64));
    // The text format: the same errors as FILE:LINE:COL: message lines, then the summary.
    let (code, stdout, _) = check(&["tests/check/bad"]);
    assert_eq!(code, Some(1));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..lines.len() - 1], text_lines, "{stdout}");
    assert!(lines[lines.len() - 1].ends_with(&format!("in {} files: {total} errors", files.len())));
}

#[test]
fn check_json_counts_statements_and_errors_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    // Nothing here may be opened: a Kafka source and an HBase sink at closed ports, Parquet and file
    // sinks that would create `out/`, a generator that would run.
    let good = "CREATE SOURCE k (user_id BIGINT, event_time TIMESTAMP, WATERMARK FOR event_time AS event_time)
         WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1', topic = 't');
         CREATE SINK h WITH (connector = 'hbase', thrift = '127.0.0.1:1', table = 't', row_key = 'user_id',
                             create_table = 'true') AS
         SELECT user_id, window_start, COUNT(*) AS n FROM TUMBLE(k, event_time, INTERVAL '1' SECOND)
         GROUP BY user_id, window_start, window_end;
         CREATE SOURCE g (user_id BIGINT, event_time TIMESTAMP) WITH (connector = 'generator', events = '10');
         CREATE SINK p WITH (connector = 'parquet', path = 'out/p') AS SELECT * FROM g;
         CREATE SINK f WITH (connector = 'file', path = 'out/f.jsonl') AS SELECT * FROM g;";
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("sub/good.sql"), good).expect("write");
    std::fs::write(
        dir.path().join("bad.sql"),
        "CREATE SOURCE g (a BIGINT) WITH (connector = 'generator', colour = 'red');\nSELECT b FROM g;\nSHOW SINKS;",
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not SQL").expect("write");
    let out = freshet()
        .current_dir(dir.path())
        .args(["check", "--format", "json", "."])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(doc["errors"], 2, "{doc}");
    let files = doc["files"].as_array().expect("files");
    let summary: Vec<(String, u64, usize)> = files
        .iter()
        .map(|f| {
            let path = f["path"].as_str().expect("path").to_string();
            let n = f["statements"].as_u64().expect("statements");
            (path, n, f["errors"].as_array().expect("errors").len())
        })
        .collect();
    assert_eq!(
        summary,
        vec![("./bad.sql".to_string(), 3, 2), ("./sub/good.sql".to_string(), 5, 0)]
    );
    assert_eq!(files[0]["errors"][0]["line"], 1);
    assert_eq!(files[0]["errors"][0]["column"], 59, "at `colour`: {doc}");
    assert_eq!(files[0]["errors"][1]["line"], 2);
    assert_eq!(files[0]["errors"][1]["column"], 8, "at `b`: {doc}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left.len(), 3, "check wrote nothing: {left:?}");

    // Usage errors exit 2.
    let (code, _, stderr) = check(&["no/such/dir"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no/such/dir"), "{stderr}");
    let empty = tempfile::tempdir().expect("tmp");
    let (code, _, stderr) = check(&[empty.path().to_str().expect("utf8")]);
    assert_eq!(code, Some(2), "{stderr}");
}
