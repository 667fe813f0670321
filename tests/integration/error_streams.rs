//! `_errors` and `_late` as durable streams: sinks over them hold every bad and every late record
//! exactly once across `kill -9` of `freshet run`, and a plain `SELECT … FROM _errors` still reads
//! the in-memory table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use freshet::engine::query::EngineConfig;
use freshet::session::Session;

use crate::support::{assert_rows_eq, exec, sorted_rows};

/// 2026-01-01T00:00:00Z.
const BASE: i64 = 1_767_225_600_000;
const LINES: usize = 80_000;
const DELAY_MS: i64 = 5_000;
const WINDOW_MS: i64 = 60_000;

/// The input, and what a batch run over it gives: which lines are malformed, which events are
/// late (Flink's rule, as the engine applies it: an event is late when its window had ended at the
/// watermark it arrived under, the newest event time before it minus the delay), and the windowed
/// answer over the rest.
struct Input {
    text: String,
    /// `(line number, line)` of each malformed line.
    bad: Vec<(usize, String)>,
    /// Ids of the late events.
    late: Vec<i64>,
    /// `(k, window start) → (count, sum of ids)` over the events on time.
    windows: BTreeMap<(String, i64), (i64, i64)>,
    /// Events that were ahead of the others (they hold the watermark ahead and make others late).
    future: usize,
}

/// A small deterministic pseudo-random sequence, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// JSON lines: ids in order, event times 50 ms apart pulled back by up to 2 s (never late by
/// themselves: the delay is 5 s); about 1% malformed lines (cut short, not JSON, a text id), 2% events
/// ten minutes behind (late), and 0.05% events 10–15 s ahead.
fn input() -> Input {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let (mut lines, mut bad, mut late, mut future) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut windows: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    let mut newest = i64::MIN;
    for i in 0..LINES {
        let id = i as i64;
        let now = BASE + id * 50;
        let r = rng.next() % 10_000;
        let line_no = i + 1;
        if r < 100 {
            let line = match i % 3 {
                0 => format!(r#"{{"id": {id}, "k": "a", "ts": "#),
                1 => format!("not json at all {id}"),
                _ => format!(r#"{{"id": "x{id}", "k": "b", "ts": {now}}}"#),
            };
            bad.push((line_no, line.clone()));
            lines.push(line);
            continue;
        }
        let ts = if r < 300 {
            now - 600_000 - (rng.next() % 1_000) as i64
        } else if r < 305 {
            future += 1;
            now + 10_000 + (rng.next() % 5_000) as i64
        } else {
            now - (rng.next() % 2_000) as i64
        };
        let k = ["a", "b", "c", "d", "e"][(rng.next() % 5) as usize];
        lines.push(format!(r#"{{"id": {id}, "k": "{k}", "ts": {ts}}}"#));
        let watermark = if newest == i64::MIN {
            i64::MIN
        } else {
            newest - DELAY_MS
        };
        let start = ts.div_euclid(WINDOW_MS) * WINDOW_MS;
        if start + WINDOW_MS <= watermark {
            late.push(id);
        } else {
            let w = windows.entry((k.to_string(), start)).or_default();
            w.0 += 1;
            w.1 += id;
        }
        newest = newest.max(ts);
    }
    Input {
        text: lines.join("\n") + "\n",
        bad,
        late,
        windows,
        future,
    }
}

const SOURCE: &str = "CREATE SOURCE ev (id BIGINT, k VARCHAR, ts TIMESTAMP(3),
                        WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
                      WITH (connector = 'file', path = 'in.jsonl');";

const MAIN: &str = "CREATE SINK per_key WITH (connector = 'parquet', path = 'out/per_key') AS
                    SELECT k, window_start, COUNT(*) AS n, SUM(id) AS ids
                    FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
                    GROUP BY k, window_start, window_end;";

const READERS: &str = "CREATE SINK bad WITH (connector = 'parquet', path = 'out/bad') AS SELECT * FROM _errors;
                       CREATE SINK late WITH (connector = 'parquet', path = 'out/late') AS
                       SELECT query, source, raw, reason FROM _late WHERE query = 'per_key';";

/// Which queries a run starts.
#[derive(Clone, Copy, PartialEq)]
enum Job {
    /// The windowed query alone (the readers join later, behind).
    Main,
    All,
    /// The readers alone, once the windowed query has finished (`freshet run` without a data
    /// directory would run a finished query again from the start, as a new query).
    Readers,
}

fn start(dir: &Path, job: Job) -> Child {
    let sql = match job {
        Job::Main => format!("{SOURCE}\n{MAIN}"),
        Job::All => format!("{SOURCE}\n{MAIN}\n{READERS}"),
        Job::Readers => format!("{SOURCE}\n{READERS}"),
    };
    std::fs::write(dir.join("job.sql"), sql).expect("job");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .expect("log");
    Command::new(env!("CARGO_BIN_EXE_freshet"))
        .current_dir(dir)
        .args([
            "run",
            "job.sql",
            "--checkpoint-dir",
            "chk",
            "--checkpoint-interval",
            "0.1",
            "--batch-size",
            "200",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start freshet")
}

/// The checkpoint directory of query `name` (`<name>-<12 hex>`), if it has one.
fn checkpoints_of(chk: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(chk).ok()?.filter_map(|e| e.ok()).find_map(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        let fp = n.strip_prefix(name)?.strip_prefix('-')?;
        (fp.len() == 12).then(|| e.path())
    })
}

/// The newest checkpoint epoch of query `name` (0: none).
fn epoch_of(chk: &Path, name: &str) -> u64 {
    checkpoints_of(chk, name)
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .filter_map(|c| c.ok())
        .filter_map(|c| c.file_name().to_str()?.strip_prefix("chk-")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// Published Parquet files of `dir` (none if it does not exist).
fn published(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("part-") && n.ends_with(".parquet")
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Every row of the published files of `dir`.
fn rows_of(dir: &Path) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for f in published(dir) {
        let file = std::fs::File::open(&f).expect("open");
        let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet")
            .build()
            .expect("reader");
        out.extend(reader.map(|b| b.expect("batch")));
    }
    out
}

fn count(dir: &Path) -> usize {
    rows_of(dir).iter().map(RecordBatch::num_rows).sum()
}

/// The windowed query finished: its last checkpoint has every source exhausted and it published
/// what that checkpoint covers. A run killed between the two leaves that output staged (it is
/// published when the query next starts, as Flink commits on restore): until then the query is
/// not done, and the readers of its side logs cannot see its last epoch.
fn main_finished(dir: &Path) -> bool {
    !published(&dir.join("out/per_key")).is_empty() && finished(&dir.join("chk"), "per_key") && staged(dir).is_empty()
}

/// The windowed query's output and side-log files written but not yet published.
fn staged(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![dir.join("out/per_key")];
    for stream in ["_errors", "_late"] {
        let root = dir.join("chk/_streams").join(stream);
        dirs.extend(
            std::fs::read_dir(&root)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("per_key-"))
                .map(|e| e.path()),
        );
    }
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().filter_map(|e| e.ok()))
        .filter(|e| e.file_name().to_string_lossy().ends_with(".staged"))
        .map(|e| e.path())
        .collect()
}

/// Query `name` finished by itself: its checkpoints are gone (the whole job finished) or its
/// newest one has every source at its end (a finished query keeps that one while the job's other
/// queries run).
fn finished(chk: &Path, name: &str) -> bool {
    let Some(dir) = checkpoints_of(chk, name) else {
        return true;
    };
    let epoch = epoch_of(chk, name);
    let Ok(text) = std::fs::read_to_string(dir.join(format!("chk-{epoch:08}")).join("manifest.json")) else {
        return false;
    };
    let manifest: serde_json::Value = match text.lines().next().map(serde_json::from_str) {
        Some(Ok(m)) => m,
        _ => return false,
    };
    manifest["meta"]["sources"]
        .as_array()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|s| s["exhausted"] == true))
}

/// Kill points after each checkpoint, 0–120 ms in.
fn delays(n: usize) -> Vec<u64> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..n).map(|_| rng.next() % 120).collect()
}

/// When a run is killed: after a checkpoint of a query newer than the one there at its start, or
/// once the windowed query finished.
enum Until<'a> {
    CheckpointOf(&'a str),
    MainFinished,
}

/// Run `freshet run` until `until` (a checkpoint of the windowed query also ends the wait when
/// that query finishes instead), then `wait` ms longer, then kill it with SIGKILL.
fn run_and_kill(dir: &Path, job: Job, until: Until, wait: u64) {
    let chk = dir.join("chk");
    let with_main = job != Job::Readers;
    let mut child = crate::support::KillOnDrop::new(start(dir, job));
    let reached = |before: u64| match until {
        Until::CheckpointOf(q) => epoch_of(&chk, q) > before || (with_main && main_finished(dir)),
        Until::MainFinished => main_finished(dir),
    };
    let before = match until {
        Until::CheckpointOf(q) => epoch_of(&chk, q),
        Until::MainFinished => 0,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !reached(before) {
        assert!(Instant::now() < deadline, "nothing within 120 s: {}", log(dir));
        assert!(child.try_wait().expect("wait").is_none(), "freshet ended: {}", log(dir));
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(wait));
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

#[test]
fn sinks_over_errors_and_late_hold_each_bad_and_late_record_once_across_sigkills() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let input = input();
    std::fs::write(d.join("in.jsonl"), &input.text).expect("input");
    assert!(input.bad.len() > 300 && input.late.len() > 700 && input.future > 5);

    // Killed at random points after the windowed query's checkpoints while it runs: first alone
    // (its side logs pile up), then with the readers, which start behind and then tail its side
    // logs, so the kills land in their epochs too ...
    let waits = delays(12);
    let mut kills_while_main = 0;
    let mut main_done = false;
    for (i, wait) in waits[..8].iter().enumerate() {
        let job = if i < 2 { Job::Main } else { Job::All };
        run_and_kill(d, job, Until::CheckpointOf("per_key"), *wait);
        kills_while_main += 1;
        // SIGKILL stopped everything: it may have finished before.
        main_done = main_finished(d);
        if main_done {
            break;
        }
    }
    assert!(
        kills_while_main >= 5,
        "only {kills_while_main} runs were killed before the windowed query finished: make the input longer"
    );
    // ... once more right after it finished ...
    if !main_done {
        run_and_kill(d, Job::All, Until::MainFinished, waits[8]);
        main_done = main_finished(d);
    }
    // ... and then, with only the readers left, after theirs.
    for wait in &waits[9..] {
        let job = if main_done { Job::Readers } else { Job::All };
        run_and_kill(d, job, Until::CheckpointOf("bad"), *wait);
        main_done = main_finished(d);
    }
    eprintln!(
        "{} malformed lines, {} late events ({} events ahead); {kills_while_main} kills while the windowed query ran",
        input.bad.len(),
        input.late.len(),
        input.future,
    );

    // The last run: until the windowed query finished and the readers have all rows, then a while
    // longer (anything read twice would show), then SIGTERM (a final checkpoint).
    let mut child = crate::support::KillOnDrop::new(start(d, if main_done { Job::Readers } else { Job::All }));
    let (out_bad, out_late) = (d.join("out/bad"), d.join("out/late"));
    let deadline = Instant::now() + Duration::from_secs(180);
    while !(main_finished(d) && count(&out_bad) >= input.bad.len() && count(&out_late) >= input.late.len()) {
        assert!(
            Instant::now() < deadline,
            "not done within 180 s: {} of {} bad, {} of {} late rows: {}",
            count(&out_bad),
            input.bad.len(),
            count(&out_late),
            input.late.len(),
            log(d)
        );
        assert!(child.try_wait().expect("wait").is_none(), "freshet ended: {}", log(d));
        std::thread::sleep(Duration::from_millis(50));
    }
    // "A while longer" is two more checkpoints of the `bad` reader: each committed whatever it read
    // since the one before, so a row read twice would be in the output the test reads afterwards.
    let seen = epoch_of(&d.join("chk"), "bad");
    while epoch_of(&d.join("chk"), "bad") < seen + 2 {
        assert!(
            Instant::now() < deadline,
            "the readers stopped checkpointing: {}",
            log(d)
        );
        assert!(child.try_wait().expect("wait").is_none(), "freshet ended: {}", log(d));
        std::thread::sleep(Duration::from_millis(20));
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let status = child.wait().expect("wait");
    let stderr = log(d);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("resuming from checkpoint"), "{stderr}");
    assert!(!stderr.contains("not checkpointed"), "{stderr}");

    for sink in ["per_key", "bad", "late"] {
        let temp: Vec<String> = std::fs::read_dir(d.join("out").join(sink))
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !(n.starts_with("part-") && n.ends_with(".parquet")))
            .collect();
        assert!(temp.is_empty(), "{sink}: temporary files left behind: {temp:?}");
    }

    // The malformed lines, each once, with its position and a reason.
    let mut got = Vec::new();
    for b in rows_of(&out_bad) {
        assert_eq!(b.num_columns(), 6, "query, source, position, raw, reason, at");
        let col = |i: usize| b.column(i).as_string::<i32>().clone();
        let (query, source, position, raw, reason) = (col(0), col(1), col(2), col(3), col(4));
        let at = b.column(5).as_primitive::<TimestampMillisecondType>();
        for i in 0..b.num_rows() {
            assert_eq!((query.value(i), source.value(i)), ("per_key", "ev"));
            assert!(!reason.value(i).is_empty(), "a reason for {}", raw.value(i));
            assert!(at.value(i) > BASE, "recorded at {}", at.value(i));
            got.push(format!("{}|{}", position.value(i), raw.value(i)));
        }
    }
    got.sort();
    let mut want: Vec<String> = input.bad.iter().map(|(n, l)| format!("in.jsonl:{n}|{l}")).collect();
    want.sort();
    assert_rows_eq(&got, &want, "_errors sink after kills");
    assert_eq!(got.len(), want.len());

    // The late events, each once.
    let mut got: Vec<i64> = Vec::new();
    for b in rows_of(&out_late) {
        assert_eq!(b.num_columns(), 4, "query, source, raw, reason");
        let (query, raw, reason) = (
            b.column(0).as_string::<i32>(),
            b.column(2).as_string::<i32>(),
            b.column(3).as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            assert_eq!(query.value(i), "per_key");
            assert!(reason.value(i).starts_with("late: "), "{}", reason.value(i));
            let v: serde_json::Value = serde_json::from_str(raw.value(i)).expect("raw is the event as JSON");
            got.push(v["id"].as_i64().expect("id"));
        }
    }
    got.sort();
    let mut want = input.late.clone();
    want.sort();
    let (g, w): (Vec<String>, Vec<String>) = (
        got.iter().map(i64::to_string).collect(),
        want.iter().map(i64::to_string).collect(),
    );
    assert_rows_eq(&g, &w, "_late sink after kills");
    assert_eq!(got, want);

    // The windowed answer over the events on time.
    let mut got = Vec::new();
    for b in rows_of(&d.join("out/per_key")) {
        let k = b.column(0).as_string::<i32>();
        let start = b.column(1).as_primitive::<TimestampMillisecondType>();
        let (n, ids) = (
            b.column(2).as_primitive::<Int64Type>(),
            b.column(3).as_primitive::<Int64Type>(),
        );
        for i in 0..b.num_rows() {
            assert!(!k.is_null(i));
            got.push(format!(
                "{}|{}|{}|{}",
                k.value(i),
                start.value(i),
                n.value(i),
                ids.value(i)
            ));
        }
    }
    got.sort();
    let want: Vec<String> = input
        .windows
        .iter()
        .map(|((k, s), (n, ids))| format!("{k}|{s}|{n}|{ids}"))
        .collect();
    assert_rows_eq(&got, &want, "windowed sink after kills");

    // The side logs the windowed query wrote outlive its checkpoints, published only.
    let side = d.join("chk/_streams/_errors");
    let dirs: Vec<String> = std::fs::read_dir(&side)
        .expect("side logs")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs.len(), 1, "only the windowed query had errors: {dirs:?}");
    assert!(dirs[0].starts_with("per_key-"), "{dirs:?}");
    assert_eq!(count(&side.join(&dirs[0])), input.bad.len());
}

fn config(dir: Option<&Path>) -> EngineConfig {
    EngineConfig {
        batch_size: 100,
        batch_interval: Duration::from_millis(20),
        commit_interval: Duration::from_millis(50),
        checkpoint_dir: dir.map(Path::to_path_buf),
        ..EngineConfig::default()
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A source with 3 bad lines, in `dir`.
fn bad_input(dir: &Path) -> String {
    let path = dir.join("in.jsonl");
    std::fs::write(
        &path,
        "{\"id\": 1, \"k\": \"a\", \"ts\": 1000}\n{broken\n{\"id\": 2, \"k\": \"a\", \"ts\": 2000}\nnope\n{\"id\": \"x\"}\n",
    )
    .expect("write");
    format!(
        "CREATE SOURCE ev (id BIGINT, k VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
         WITH (connector = 'file', path = '{}');",
        path.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_stream_into_a_file_sink_and_a_materialized_view_and_select_still_reads_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let mut s = Session::new(config(Some(&d.join("chk"))));
    let out = d.join("bad.jsonl");
    exec(
        &mut s,
        &format!(
            "{}
             CREATE SINK bad WITH (connector = 'file', path = '{}') AS
               SELECT position, reason FROM _errors WHERE raw <> 'nope';
             CREATE MATERIALIZED VIEW per_source AS SELECT source, COUNT(*) AS n FROM _errors GROUP BY source;
             CREATE SINK copy WITH (connector = 'blackhole') AS SELECT * FROM ev;",
            bad_input(d),
            out.display()
        ),
    )
    .await;
    // The plain SELECT reads the in-memory table, as before (`copy` reads the source and records
    // its bad lines; both `copy`'s and nothing else's).
    wait_for("the in-memory _errors", || {
        s.system.snapshot("_errors").expect("snap").num_rows() == 3
    })
    .await;
    let rows = sorted_rows(&exec(&mut s, "SELECT query, raw FROM _errors;").await);
    assert_eq!(rows, vec!["copy|nope", "copy|{\"id\": \"x\"}", "copy|{broken"]);
    // The file sink gets them once published (the finished query's last checkpoint).
    wait_for("the file sink", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() == 2)
    })
    .await;
    let text = std::fs::read_to_string(&out).expect("read");
    let p = d.join("in.jsonl").display().to_string();
    assert!(text.contains(&format!("\"position\":\"{p}:2\"")), "{text}");
    assert!(text.contains(&format!("\"position\":\"{p}:5\"")), "{text}");
    wait_for("the view", || {
        s.catalog
            .get("per_source")
            .map(|o| match o {
                freshet::sql::catalog::Object::MaterializedView(m) => m.table.len() == 1,
                _ => false,
            })
            .unwrap_or(false)
    })
    .await;
    let rows = sorted_rows(&exec(&mut s, "SELECT * FROM per_source;").await);
    assert_eq!(rows, vec!["ev|3"]);
    s.stop_all().await;
    for q in &s.queries {
        assert!(!matches!(q.outcome, Some(Err(_))), "{}: {:?}", q.name, q.outcome);
    }
}

#[tokio::test]
async fn a_stream_over_errors_needs_checkpoints_and_a_plain_select_does_not() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = Session::new(config(None));
    exec(&mut s, &bad_input(dir.path())).await;
    for sql in [
        "CREATE SINK bad WITH (connector = 'console') AS SELECT * FROM _errors;",
        "CREATE MATERIALIZED VIEW late_n AS SELECT COUNT(*) AS n FROM _late;",
    ] {
        let st = freshet::sql::parser::parse_script(sql).expect("parse");
        let err = s.execute(&st[0].statement).await.err().expect("refused").to_string();
        assert!(err.contains("--checkpoint-dir") && err.contains("checkpoint"), "{err}");
    }
    assert!(s.catalog.get("bad").is_none() && s.catalog.get("late_n").is_none());
    assert!(
        exec(&mut s, "SELECT * FROM _errors;")
            .await
            .iter()
            .all(|b| b.num_rows() == 0)
    );
    // Windows cannot read it: it has no event time.
    let mut s = Session::new(config(Some(&dir.path().join("chk"))));
    let st = freshet::sql::parser::parse_script(
        "CREATE SINK w WITH (connector = 'console') AS SELECT window_start, COUNT(*) FROM TABLE(TUMBLE(TABLE _errors, DESCRIPTOR(at), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end;",
    )
    .expect("parse");
    let err = s.execute(&st[0].statement).await.err().expect("refused").to_string();
    assert!(err.contains("WATERMARK") || err.contains("time attribute"), "{err}");
}
