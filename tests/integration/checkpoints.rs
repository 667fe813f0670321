//! Checkpoints under fire: `freshet run` killed with SIGKILL again and again, then let finish; every
//! sink must hold exactly the batch answer — nothing lost, nothing twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;

use crate::support::{
    COURSE_COLUMNS, batch_rows, kill_after_checkpoints, kill_delays, oracle_ctx, parquet_rows, progress,
};

const EVENTS: u64 = 400_000;
const SEED: u64 = 5;

fn job(events: u64) -> String {
    format!(
        "CREATE SOURCE views ({COURSE_COLUMNS})
           WITH (connector = 'generator', events = '{events}', seed = '{SEED}');
         -- TUMBLE, with an exact distinct count.
         CREATE SINK per_minute WITH (connector = 'parquet', path = 'out/per_minute', rollover_rows = '2000') AS
         SELECT course_id, window_start, COUNT(*) AS views, COUNT(DISTINCT user_id) AS users,
                SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
         FROM TABLE(TUMBLE(TABLE views, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))
         GROUP BY course_id, window_start, window_end;
         -- HOP, reading the same source.
         CREATE SINK hopping WITH (connector = 'parquet', path = 'out/hopping') AS
         SELECT region, window_start, COUNT(*) AS views
         FROM TABLE(HOP(TABLE views, DESCRIPTOR(event_time), INTERVAL '20' SECOND, INTERVAL '1' MINUTE))
         GROUP BY region, window_start, window_end;
         -- SESSION per user.
         CREATE SINK sessions WITH (connector = 'parquet', path = 'out/sessions') AS
         SELECT user_id, window_start, window_end, COUNT(*) AS views
         FROM TABLE(SESSION(TABLE views PARTITION BY user_id, DESCRIPTOR(event_time), INTERVAL '20' SECOND))
         GROUP BY user_id, window_start, window_end;
         -- An updating aggregate, archived as a changelog.
         CREATE SINK per_course WITH (connector = 'parquet', path = 'out/per_course', format = 'changelog') AS
         SELECT course_id, COUNT(*) AS views FROM views GROUP BY course_id;
         -- A materialized view, and a query reading it as a stream (its checkpoint holds the view
         -- as it had read it; after a restart it first catches up with the restored view).
         CREATE MATERIALIZED VIEW course_totals AS SELECT course_id, COUNT(*) AS views FROM views GROUP BY course_id;
         CREATE SINK popularity WITH (connector = 'parquet', path = 'out/popularity', format = 'changelog') AS
         SELECT views / 1000 AS band, COUNT(*) AS courses FROM course_totals GROUP BY views / 1000;"
    )
}

fn start(dir: &Path) -> Child {
    start_with(dir, None, 2)
}

/// Start the job on `workers` (the keyed aggregates split into that many instances when the run
/// starts without a checkpoint), with a crash point armed (`FAILPOINTS`, see
/// `freshet::state::crash`).
fn start_with(dir: &Path, failpoints: Option<&str>, workers: usize) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_freshet"));
    if let Some(f) = failpoints {
        cmd.env("FAILPOINTS", f);
    }
    cmd.current_dir(dir)
        .args([
            "run",
            "job.sql",
            "--checkpoint-dir",
            "chk",
            "--checkpoint-interval",
            "0.1",
            "--batch-size",
            "500",
            "--workers",
            &workers.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start freshet")
}

/// Published Parquet files of `dir` in the order they were written: by epoch, then sequence (the
/// last two `-` fields of `part-<run>-<epoch>-<seq>.parquet`).
fn files_in_order(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u64, u64, PathBuf)> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let stem = name.strip_prefix("part-")?.strip_suffix(".parquet")?.to_string();
            let mut parts = stem.rsplit('-');
            let seq = parts.next()?.parse().ok()?;
            let epoch = parts.next()?.parse().ok()?;
            Some((epoch, seq, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, _, p)| p).collect()
}

/// Replay a changelog archive (`op`, a BIGINT key, a BIGINT value) in order: the final table.
fn replayed(dir: &Path) -> Vec<String> {
    let mut table: BTreeMap<i64, i64> = BTreeMap::new();
    for f in files_in_order(dir) {
        let file = std::fs::File::open(&f).expect("open");
        let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet")
            .build()
            .expect("reader");
        for b in reader {
            let b = b.expect("batch");
            let op = b.column(0).as_string::<i32>();
            let course = b.column(1).as_primitive::<Int64Type>();
            let views = b.column(2).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                match op.value(i) {
                    "+I" | "+U" => {
                        table.insert(course.value(i), views.value(i));
                    }
                    "-U" | "-D" => {
                        let old = table.remove(&course.value(i));
                        assert_eq!(
                            old,
                            Some(views.value(i)),
                            "{}: a retraction of a row not there",
                            f.display()
                        );
                    }
                    other => panic!("op {other}"),
                }
                assert!(!views.is_null(i));
            }
        }
    }
    let mut rows: Vec<String> = table.into_iter().map(|(c, n)| format!("{c}|{n}")).collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_leave_every_sink_exact() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("job.sql"), job(EVENTS)).expect("write");
    let chk = dir.path().join("chk");
    // Each run on another number of workers: the first run's keyed operators run as 3 instances,
    // and every restored one keeps the 3 of its checkpoint, whatever `--workers` says now.
    const WORKERS: [usize; 5] = [3, 1, 4, 2, 1];
    let runs = std::cell::Cell::new(0usize);
    let started = || {
        runs.set(runs.get() + 1);
        start_with(dir.path(), None, WORKERS[(runs.get() - 1) % WORKERS.len()])
    };
    let (kills, out) = kill_after_checkpoints(started, &chk, &kill_delays(0x9E37_79B9_7F4A_7C15, 12, 120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let last = WORKERS[(runs.get() - 1) % WORKERS.len()];
    assert_eq!(
        stderr.contains("runs as the 3 instance(s) its checkpoint was taken with"),
        last != 3,
        "the last run, on --workers {last}: {stderr}"
    );
    assert!(
        kills >= 10,
        "only {kills} runs were killed mid-run before the job finished: make the job longer"
    );
    assert!(stderr.contains("resuming from checkpoint"), "{stderr}");
    assert!(!stderr.contains("not checkpointed"), "{stderr}");
    assert_eq!(progress(&chk), 0, "a finished query leaves no checkpoints");

    assert_sinks_exact(&dir.path().join("out"), EVENTS).await;
}

/// Every sink of the job holds exactly the batch answer over the same events.
async fn assert_sinks_exact(out: &Path, events: u64) {
    let opts = freshet::connector::generator::GenOptions {
        seed: SEED,
        events: Some(events),
        ..Default::default()
    };
    let oracle = oracle_ctx(&opts, "ev");
    let temp_files: Vec<String> = ["per_minute", "hopping", "sessions", "per_course", "popularity"]
        .iter()
        .flat_map(|d| std::fs::read_dir(out.join(d)).expect("dir"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !(n.starts_with("part-") && n.ends_with(".parquet")))
        .collect();
    assert!(temp_files.is_empty(), "temporary files left behind: {temp_files:?}");

    let got = parquet_rows(
        &out.join("per_minute"),
        "SELECT course_id, window_start, views, users, purchases FROM t",
    )
    .await;
    let want = batch_rows(
        &oracle,
        "SELECT course_id, date_bin(INTERVAL '1 minute', event_time, TIMESTAMP '1970-01-01'), COUNT(*),
                COUNT(DISTINCT user_id), SUM(CASE WHEN purchased THEN 1 ELSE 0 END) FROM ev GROUP BY 1, 2",
    )
    .await;
    crate::support::assert_rows_eq(&got, &want, "TUMBLE after kills");

    let got = parquet_rows(&out.join("hopping"), "SELECT region, window_start, views FROM t").await;
    let want = batch_rows(
        &oracle,
        "SELECT region, ws, COUNT(*) FROM (
            SELECT region, date_bin(INTERVAL '20 seconds', event_time, TIMESTAMP '1970-01-01') - s.o AS ws
            FROM ev CROSS JOIN (VALUES (INTERVAL '0 seconds'), (INTERVAL '20 seconds'), (INTERVAL '40 seconds')) AS s(o))
         GROUP BY region, ws",
    )
    .await;
    crate::support::assert_rows_eq(&got, &want, "HOP after kills");

    let got = parquet_rows(
        &out.join("sessions"),
        "SELECT user_id, window_start, window_end, views FROM t",
    )
    .await;
    // Flink's rule: sessions whose events are at most the gap apart are one.
    let want = batch_rows(
        &oracle,
        "SELECT user_id, MIN(event_time), MAX(event_time) + INTERVAL '20 seconds', COUNT(*) FROM (
            SELECT user_id, event_time, SUM(brk) OVER (PARTITION BY user_id ORDER BY event_time
                ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid
            FROM (SELECT user_id, event_time,
                    CASE WHEN event_time - LAG(event_time) OVER (PARTITION BY user_id ORDER BY event_time)
                              <= INTERVAL '20 seconds' THEN 0 ELSE 1 END AS brk FROM ev))
         GROUP BY user_id, sid",
    )
    .await;
    crate::support::assert_rows_eq(&got, &want, "SESSION after kills");

    let got = replayed(&out.join("per_course"));
    let want = batch_rows(&oracle, "SELECT course_id, COUNT(*) FROM ev GROUP BY 1").await;
    crate::support::assert_rows_eq(&got, &want, "updating GROUP BY changelog after kills");

    let got = replayed(&out.join("popularity"));
    let want = batch_rows(
        &oracle,
        "SELECT views / 1000, COUNT(*) FROM (SELECT course_id, COUNT(*) AS views FROM ev GROUP BY 1) GROUP BY 1",
    )
    .await;
    crate::support::assert_rows_eq(&got, &want, "a stream over a materialized view, after kills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_named_point_of_a_checkpoint_loses_and_repeats_nothing() {
    const N: u64 = 100_000;
    for point in [
        "checkpoint-before-manifest=3*off->return",
        "checkpoint-before-rename=3*off->return",
        "checkpoint-before-publish=3*off->return",
        "parquet-mid-write=40*off->return",
        "parquet-mid-publish=5*off->return",
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("job.sql"), job(N)).expect("write");
        let crashed = start_with(dir.path(), Some(point), 3).wait_with_output().expect("run");
        let stderr = String::from_utf8_lossy(&crashed.stderr);
        let name = point.split('=').next().unwrap_or_default();
        assert!(
            !crashed.status.success() && stderr.contains(&format!("crash point {name}")),
            "{point}: the run did not crash there: {stderr}"
        );
        let out = start(dir.path()).wait_with_output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{point}: {stderr}");
        assert_sinks_exact(&dir.path().join("out"), N).await;
    }
}

/// A tmpfs mounted for the life of the value (the disk-full test needs a small, fillable disk).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs at {} (this test needs root): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the file system of `dir` up: a file grown until the disk says it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let block = vec![0u8; 64 * 1024];
    loop {
        match f.write_all(&block).and_then(|()| f.sync_all()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_checkpoint_disk_publishes_nothing_partial_and_checkpoints_resume_when_space_returns() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("job.sql"), job(EVENTS)).expect("write");
    let chk = dir.path().join("chk");
    let _disk = Tmpfs::mount(&chk, "32m");
    let filler = fill(&chk);

    let mut child = crate::support::KillOnDrop::new(start(dir.path()));
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen
        .iter()
        .any(|l: &String| l.contains("checkpoint") && l.contains("failed"))
    {
        assert!(Instant::now() < deadline, "no checkpoint failure reported: {seen:?}");
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
            seen.push(l);
        }
    }
    let failure = seen.iter().find(|l| l.contains("failed")).cloned().unwrap_or_default();
    assert!(failure.contains("No space left on device"), "{failure}");
    // Nothing partial is visible: no checkpoint at all, and no output published past the last one.
    assert_eq!(progress(&chk), 0, "a checkpoint became visible on a full disk");
    let published: usize = ["per_minute", "hopping", "sessions", "per_course"]
        .iter()
        .filter_map(|d| std::fs::read_dir(dir.path().join("out").join(d)).ok())
        .flat_map(|e| e.filter_map(|e| e.ok()))
        .filter(|e| e.file_name().to_string_lossy().starts_with("part-"))
        .count();
    assert_eq!(published, 0, "output was published without a checkpoint");
    assert!(child.try_wait().expect("wait").is_none(), "the query kept running");

    // Space returns: checkpoints resume by themselves.
    std::fs::remove_file(&filler).expect("free space");
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress(&chk) == 0 {
        assert!(Instant::now() < deadline, "no checkpoint after space returned");
        assert!(child.try_wait().expect("wait").is_none(), "the query ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    // And they are real: kill it, resume from them, finish, compare.
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let out = start(dir.path()).wait_with_output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming from checkpoint"), "{stderr}");
    assert_sinks_exact(&dir.path().join("out"), EVENTS).await;
}
