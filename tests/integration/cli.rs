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
