//! The `freshet` binary as a user runs it.

use std::process::Command;

fn freshet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_freshet"));
    // Checkpoints (and any catalog) of these runs stay out of the user's data directory.
    c.env(
        "FRESHET_DATA_DIR",
        std::env::temp_dir().join(format!("freshet-cli-tests-{}", std::process::id())),
    );
    c
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
    // Stop once a closed window has been committed (a published Parquet file): what the test checks
    // after the stop is then known to have been there to lose.
    let published = || {
        std::fs::read_dir(dir.path().join("out/live")).is_ok_and(|d| {
            d.filter_map(|e| e.ok()).any(|e| {
                e.file_name().to_string_lossy().ends_with(".parquet")
                    && !e.file_name().to_string_lossy().starts_with('.')
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !published() {
        assert!(Instant::now() < deadline, "no window was committed within 60 s");
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "freshet exited before the stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// `freshet serve --listen 127.0.0.1:0` on its own data directory (the server tests' launcher), killed
/// when dropped; and its URL.
struct Server {
    url: String,
    _server: crate::server::Server,
    _dir: tempfile::TempDir,
}

fn serve(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("tmp");
    let server = crate::server::Server::start(dir.path(), extra);
    Server {
        url: format!("http://{}", server.addr),
        _server: server,
        _dir: dir,
    }
}

/// `freshet repl ARGS…` with `input` on its (non-terminal) stdin: (success, stdout, stderr).
fn repl(args: &[&str], input: &str) -> (bool, String, String) {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tmp");
    let mut child = freshet()
        .arg("repl")
        .args(args)
        .arg("--history")
        .arg(dir.path().join("history"))
        .env_remove("FRESHET_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn freshet repl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for freshet repl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn repl_runs_statements_on_a_server() {
    let server = serve(&[]);
    let url = server.url.as_str();
    let (ok, out, err) = repl(
        &["--server", url],
        "CREATE SOURCE s (user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR,
           purchased BOOLEAN, event_time TIMESTAMP NOT NULL,
           WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
         WITH (connector = 'generator', kind = 'courses', seed = '1', events = '20000');
         CREATE MATERIALIZED VIEW per_course AS
           SELECT course_id, window_start, COUNT(*) AS views FROM TUMBLE(s, event_time, INTERVAL '1' MINUTE)
           GROUP BY course_id, window_start, window_end;
         CREATE SOURCE paced (user_id BIGINT NOT NULL, event_time TIMESTAMP NOT NULL)
         WITH (connector = 'generator', rate = '50');
         CREATE MATERIALIZED VIEW live AS SELECT user_id FROM paced;
         \\pause live
         \\pause live
         \\resume live
         \\pause nope
         SELECT course_id FROM s;
         SELEC 1;
         \\d per_course
         \\q
         SHOW QUERIES;",
    );
    assert!(ok, "{out}{err}");
    for expected in [
        "created source s",
        "created materialized view per_course",
        "created materialized view live",
        "query live is paused\n",
        "error: 'live' is already paused\n",
        "query live is running\n",
        "error: no continuous query 'nope'\n",
        "error: a continuous SELECT has no end to answer with",
        "error: 1:10: expected CREATE",
        "| window_start | Timestamp(ms) |",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    assert!(!out.contains("| name "), "\\q ended the input: {out}");

    // The server's queries, as its SHOW QUERIES lists them; the bounded one finishes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let shown = loop {
        let (ok, out, err) = repl(&["--server", url], "SHOW QUERIES;\n");
        assert!(ok, "{out}{err}");
        let row = |name: &str| {
            out.lines()
                .find(|l| l.starts_with(&format!("| {name} ")))
                .map(str::to_string)
        };
        let (per_course, live) = (row("per_course"), row("live"));
        assert!(
            per_course
                .as_ref()
                // `finishing`: its thread ended, the server has not collected its report yet.
                .is_some_and(|r| ["| running ", "| finishing ", "| finished "]
                    .iter()
                    .any(|s| r.contains(s))),
            "{out}"
        );
        assert!(live.as_ref().is_some_and(|r| r.contains("| running ")), "{out}");
        if per_course.is_some_and(|r| r.contains("| finished ")) {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "per_course never finished:\n{out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(shown.contains("(2 rows)"), "{shown}");

    let (ok, out, err) = repl(
        &["--server", url],
        "SELECT course_id, window_start, views
           FROM per_course ORDER BY views DESC, course_id LIMIT 3;
         \\format csv
         SELECT SUM(views) AS total FROM per_course;
         \\format json
         SELECT COUNT(*) AS n FROM per_course WHERE views > 0;
         \\format table
         SHOW SOURCES; DESCRIBE nope; SHOW SINKS;",
    );
    assert!(ok, "{out}{err}");
    let table: Vec<&str> = out.lines().take_while(|l| !l.starts_with('(')).collect();
    assert_eq!(table.len(), 7, "header, 3 rows, rules:\n{out}");
    assert!(table[1].contains("course_id") && table[1].contains("views"), "{out}");
    assert!(
        table[3..6].iter().all(|l| l.contains("2026-01-01T")),
        "windows of the generated day:\n{out}"
    );
    assert!(out.contains("(3 rows)\n"), "{out}");
    assert!(
        out.contains("total\n20000\n(1 row)\n"),
        "every event in a window: {out}"
    );
    assert!(out.contains("{\"n\":"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("| s ") && l.contains("| generator |")),
        "{out}"
    );
    // The failed statement ends the input: SHOW SINKS after it does not run.
    assert!(out.ends_with("(2 rows)\nerror: line 1: 'nope' not found\n"), "{out}");
}

#[test]
fn repl_server_errors_are_clear() {
    let server = serve(&["--token", "sekrit"]);
    let url = server.url.as_str();
    let (ok, out, err) = repl(&["--server", url, "--token", "wrong"], "SHOW QUERIES;\n");
    assert!(!ok, "{out}");
    assert!(
        err.contains("the server wants a token: --token or FRESHET_TOKEN"),
        "{err}"
    );
    let (ok, _, err) = repl(&["--server", url], "SHOW QUERIES;\n");
    assert!(
        !ok && err.contains("the server wants a token: --token or FRESHET_TOKEN"),
        "{err}"
    );
    let (ok, out, err) = repl(&["--server", url, "--token", "sekrit"], "SHOW QUERIES;\n");
    assert!(ok && out.contains("(0 rows)"), "{out}{err}");

    let (ok, _, err) = repl(&["--server", "http://127.0.0.1:1"], "SHOW QUERIES;\n");
    assert!(!ok, "{err}");
    assert!(
        err.contains("cannot reach the freshet server at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().to_str().expect("utf8");
    let (ok, _, err) = repl(&["--server", url, "--data-dir", data], "");
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}

/// Run `freshet test ARGS…` from the repository root.
fn freshet_test(args: &[&str]) -> (Option<i32>, String, String) {
    let out = freshet()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("test")
        .args(args)
        .output()
        .expect("run freshet test");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The spec files and the CI example pass; a copy of one with one expected row changed fails with exit
/// 1 and names the file and the line of that row, with a diff; `--complete` writes the row back.
#[test]
fn freshet_test_passes_the_specs_and_names_a_changed_row() {
    let (code, stdout, stderr) = freshet_test(&["tests/sql", "examples/ci/tests"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.ends_with(" failed") && summary.contains(", 0 failed"),
        "{stdout}"
    );
    assert!(stdout.contains("ok   tests/sql/session.fslt"), "{stdout}");

    let dir = tempfile::tempdir().expect("tmp");
    let original = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql/upsert_vs_append.fslt"),
    )
    .expect("read spec");
    // The first expected row "eu-west | … | 3 | 16.5": HBase's upsert after the third micro-batch.
    let (index, row) = original
        .lines()
        .enumerate()
        .find(|(_, l)| l.starts_with("eu-west") && l.ends_with("| 3      | 16.5"))
        .expect("an expected row");
    let changed = original.replacen(row, &row.replace("| 3      |", "| 4      |"), 1);
    let copy = dir.path().join("upsert_vs_append.fslt");
    std::fs::write(&copy, &changed).expect("write copy");
    let path = copy.to_str().expect("utf8");
    let (code, stdout, _) = freshet_test(&[path]);
    assert_eq!(code, Some(1), "{stdout}");
    let at = format!("{path}:{}: emitted revenue_hbase: expected 2 rows, got 2:", index + 1);
    assert!(stdout.contains(&at), "names {at}: {stdout}");
    assert!(
        stdout.contains(&format!("  - {}", row.replace("| 3      |", "| 4      |"))),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("  + {row}")), "{stdout}");
    assert!(stdout.ends_with("0 passed, 1 failed\n"), "{stdout}");

    let (code, stdout, _) = freshet_test(&["--complete", path]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&copy).expect("read"),
        original,
        "--complete restored the row"
    );

    let (code, _, stderr) = freshet_test(&["no/such/dir"]);
    assert_eq!(code, Some(2), "{stderr}");
}
