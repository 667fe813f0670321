//! `_errors` and `_late` read as streams: a source over the side logs every checkpointed query
//! writes (see [`crate::engine::query`]).
//!
//! A query with checkpoints writes its `_errors` rows to `<checkpoint dir>/_streams/_errors/<query
//! dir>/` and its `_late` rows to `…/_late/<query dir>/` (`<query dir>` is the `<query>-<fingerprint>`
//! name of its checkpoint directory), each through a [`super::parquet::ParquetSink`] that rides the
//! query's epochs: a file is published (renamed to `part-<run>-<epoch>-<seq>.parquet`) only once the
//! checkpoint covering the input it came from is durable, and never changes after that.
//!
//! This source reads the published files of every query directory under one stream's root, each
//! directory's files in order — by run (`<unix millis>-<pid>`: a later run of the query started
//! later), then epoch, then sequence — and polls the directories for new files every `interval`
//! (it never ends). Its position is, per directory, the file it is in and how many of that file's
//! rows it has returned (`complete` once all): as files are immutable, that is an exact place to read
//! on from. Its own query's directories (`<query>-<12 hex>`) are skipped, so a query reading
//! `_late` never reads its own late rows back.
//!
//! Published files disappear only when their producer falls back to an older checkpoint (the newest
//! was damaged): the epochs after it are then written again, and a reader that had read them reads
//! their new files too (at least once, in that case only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::{Value, json};

use super::{Poll, Source, conform};
use crate::error::{Error, Result};

/// Where a published file sits in its directory's order: run start (ms), run pid, epoch, seq, and
/// the name (a tie-break for runs whose id does not parse).
type FileKey = (u64, u64, u64, u64, String);

fn file_key(name: &str) -> Option<FileKey> {
    let (run, epoch, seq) = super::parquet::published_part(name)?;
    let (ms, pid) = run.split_once('-').unwrap_or((run, "0"));
    Some((
        ms.parse().unwrap_or(0),
        pid.parse().unwrap_or(0),
        epoch,
        seq,
        name.to_string(),
    ))
}

/// How far one query directory has been read.
#[derive(Debug, Clone, Default, PartialEq)]
struct DirState {
    /// The file being read, or read last.
    file: Option<String>,
    /// Rows of `file` returned so far.
    rows: usize,
    /// Every row of `file` was returned.
    complete: bool,
}

/// The file being read: its rows, and how many were returned.
struct Open {
    dir: String,
    batch: RecordBatch,
    offset: usize,
}

pub struct SystemStreamSource {
    root: PathBuf,
    /// The reading query's directory name (`<query>` of `<query>-<12 hex>`): its side logs are skipped.
    exclude: Option<String>,
    schema: SchemaRef,
    interval: Duration,
    last_scan: Option<Instant>,
    dirs: BTreeMap<String, DirState>,
    /// Files found and not yet read, per directory, in order.
    queue: BTreeMap<String, Vec<FileKey>>,
    open: Option<Open>,
}

impl SystemStreamSource {
    /// Read the side logs under `root` (`<checkpoint dir>/_streams/<stream>`), rows as `schema`,
    /// skipping the directories of query dir name `exclude`; new files are looked for every `interval`.
    pub fn new(root: &Path, exclude: Option<&str>, schema: SchemaRef, interval: Duration) -> Self {
        SystemStreamSource {
            root: root.to_path_buf(),
            exclude: exclude.map(str::to_string),
            schema,
            interval,
            last_scan: None,
            dirs: BTreeMap::new(),
            queue: BTreeMap::new(),
            open: None,
        }
    }

    fn excluded(&self, dir: &str) -> bool {
        let Some(q) = &self.exclude else { return false };
        dir.strip_prefix(q.as_str())
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|fp| fp.len() == 12 && fp.chars().all(|c| c.is_ascii_hexdigit()))
    }

    /// Look for files not yet read in every query directory.
    fn scan(&mut self) -> Result<()> {
        self.last_scan = Some(Instant::now());
        for dir in names(&self.root)? {
            if dir.starts_with('.') || self.excluded(&dir) || !self.root.join(&dir).is_dir() {
                continue;
            }
            let state = self.dirs.get(&dir).cloned().unwrap_or_default();
            let reading = self.open.as_ref().is_some_and(|o| o.dir == dir);
            let queued = self.queue.entry(dir.clone()).or_default();
            // Files after this one are new (and this one too, when `inclusive`: a file read in part
            // before a restart). A file that sorts before what was read is never taken: files are
            // published in order, so one appears behind only when it is written again after its
            // producer fell back to an older checkpoint (see the module doc).
            let (from, inclusive) = match (queued.last(), state.file.as_deref().and_then(file_key)) {
                (Some(last), _) => (Some(last.clone()), false),
                (None, Some(at)) => (Some(at), !reading && !state.complete),
                (None, None) => (None, false),
            };
            let mut found: Vec<FileKey> = names(&self.root.join(&dir))?
                .iter()
                .filter_map(|n| file_key(n))
                .filter(|k| match &from {
                    None => true,
                    Some(f) => k > f || (inclusive && k == f),
                })
                .collect();
            found.sort();
            queued.extend(found);
        }
        Ok(())
    }

    /// Open the next queued file (the first directory that has one), skipping the rows of it
    /// already returned before a restart.
    fn open_next(&mut self) -> Result<bool> {
        let Some((dir, key)) = self
            .queue
            .iter_mut()
            .find(|(_, q)| !q.is_empty())
            .map(|(d, q)| (d.clone(), q.remove(0)))
        else {
            return Ok(false);
        };
        let name = key.4.clone();
        let path = self.root.join(&dir).join(&name);
        let batch = read_all(&path, &self.schema)?;
        let state = self.dirs.entry(dir.clone()).or_default();
        let offset = if state.file.as_deref() == Some(name.as_str()) {
            state.rows.min(batch.num_rows())
        } else {
            0
        };
        *state = DirState {
            file: Some(name),
            rows: offset,
            complete: offset == batch.num_rows(),
        };
        if !state.complete {
            self.open = Some(Open { dir, batch, offset });
        }
        Ok(true)
    }
}

/// Names in `dir`, sorted (none if it does not exist).
fn names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|err| Error::io(dir, err))?;
        out.push(e.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

/// Every row of a published Parquet file, as `schema`.
fn read_all(path: &Path, schema: &SchemaRef) -> Result<RecordBatch> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| Error::External(format!("reading {}: {e}", path.display())))?;
    let mut batches = Vec::new();
    for b in reader {
        let b = b.map_err(|e| Error::External(format!("reading {}: {e}", path.display())))?;
        batches.push(conform(&b, schema)?);
    }
    Ok(datafusion::arrow::compute::concat_batches(schema, &batches)?)
}

impl Source for SystemStreamSource {
    fn poll(&mut self, max: usize) -> Result<Poll> {
        loop {
            if let Some(o) = &mut self.open {
                let n = max.max(1).min(o.batch.num_rows() - o.offset);
                let rows = o.batch.slice(o.offset, n);
                o.offset += n;
                let done = o.offset == o.batch.num_rows();
                let state = self.dirs.entry(o.dir.clone()).or_default();
                state.rows = o.offset;
                state.complete = done;
                if done {
                    self.open = None;
                }
                return Ok(Poll::Ready(Some(rows), vec![]));
            }
            if self.open_next()? {
                continue;
            }
            if self.last_scan.is_some_and(|t| t.elapsed() < self.interval) {
                return Ok(Poll::Pending);
            }
            self.scan()?;
            if !self.open_next()? {
                return Ok(Poll::Pending);
            }
        }
    }

    fn bounded(&self) -> bool {
        false
    }

    fn position(&self) -> Option<Value> {
        let dirs: serde_json::Map<String, Value> = self
            .dirs
            .iter()
            .filter(|(_, s)| s.file.is_some())
            .map(|(d, s)| {
                (
                    d.clone(),
                    json!({ "file": s.file, "rows": s.rows, "complete": s.complete }),
                )
            })
            .collect();
        Some(json!({ "dirs": dirs }))
    }

    fn seek(&mut self, position: &Value) -> Result<()> {
        let dirs = position
            .get("dirs")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::External(format!("not a position of a system stream: {position}")))?;
        self.dirs.clear();
        self.queue.clear();
        self.open = None;
        for (d, s) in dirs {
            let state = DirState {
                file: s.get("file").and_then(Value::as_str).map(str::to_string),
                rows: s.get("rows").and_then(Value::as_u64).unwrap_or(0) as usize,
                complete: s.get("complete").and_then(Value::as_bool).unwrap_or(false),
            };
            self.dirs.insert(d.clone(), state);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::parquet::{ParquetOptions, ParquetSink};
    use crate::connector::{Output, Sink};
    use crate::engine::query::{SysRow, SystemTables};
    use datafusion::arrow::array::AsArray;

    /// A producer's side log: a Parquet sink in `root/<dir>`.
    fn producer(root: &Path, dir: &str) -> ParquetSink {
        let mut s = ParquetSink::new(
            ParquetOptions {
                path: root.join(dir),
                rollover_rows: 1_000_000,
                rollover_seconds: 3600,
                changelog: false,
            },
            SystemTables::schema(),
        );
        s.recover(None, &Value::Null).expect("recover");
        s
    }

    fn rows(query: &str, raws: &[&str]) -> Output {
        let rows: Vec<SysRow> = raws
            .iter()
            .map(|r| SysRow {
                query: query.into(),
                source: "src".into(),
                position: format!("f:{r}"),
                raw: r.to_string(),
                reason: "bad".into(),
                at: 0,
            })
            .collect();
        Output::append(SystemTables::batch(&rows).expect("batch"))
    }

    /// One epoch of the producer: rows written, prepared and published.
    fn epoch(s: &mut ParquetSink, e: u64, query: &str, raws: &[&str]) {
        s.write(&rows(query, raws)).expect("write");
        s.prepare(e).expect("prepare");
        s.publish(e).expect("publish");
    }

    fn source(root: &Path, exclude: Option<&str>) -> SystemStreamSource {
        SystemStreamSource::new(root, exclude, SystemTables::schema(), Duration::ZERO)
    }

    /// `query:raw` of every row the source has now, `max` rows a poll.
    fn drain(s: &mut SystemStreamSource, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match s.poll(max).expect("poll") {
                Poll::Ready(Some(b), bad) => {
                    assert!(bad.is_empty());
                    assert!(b.num_rows() <= max.max(1));
                    let q = b.column(0).as_string::<i32>();
                    let raw = b.column(3).as_string::<i32>();
                    out.extend((0..b.num_rows()).map(|i| format!("{}:{}", q.value(i), raw.value(i))));
                }
                Poll::Pending => return out,
                _ => panic!("unexpected poll"),
            }
        }
    }

    #[test]
    fn reads_each_directory_in_epoch_order_and_tails_new_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        let mut a = producer(root, "a-000000000000");
        let mut b = producer(root, "b-000000000000");
        epoch(&mut a, 1, "a", &["1", "2"]);
        // Staged but not published: invisible.
        a.write(&rows("a", &["staged"])).expect("write");
        a.prepare(2).expect("prepare");
        epoch(&mut b, 1, "b", &["x"]);
        let mut s = source(root, None);
        assert_eq!(drain(&mut s, 100), vec!["a:1", "a:2", "b:x"]);
        // Published later: read on from there.
        a.publish(2).expect("publish");
        epoch(&mut a, 3, "a", &["3"]);
        epoch(&mut b, 2, "b", &["y"]);
        assert_eq!(drain(&mut s, 100), vec!["a:staged", "a:3", "b:y"]);
        assert!(drain(&mut s, 100).is_empty(), "nothing new");
        // A new run of a query (started afresh) comes after the old run's files.
        std::thread::sleep(Duration::from_millis(5));
        let mut a2 = producer(root, "a-000000000000");
        epoch(&mut a2, 1, "a", &["new run"]);
        assert_eq!(drain(&mut s, 100), vec!["a:new run"]);
    }

    #[test]
    fn order_is_epoch_then_sequence_not_name() {
        // Epoch 10 sorts after epoch 9 even where names would not (they are zero-padded; keys are numbers).
        let mut keys: Vec<FileKey> = [
            "part-17-1-00000010-00002.parquet",
            "part-17-1-00000009-00003.parquet",
            "part-17-1-00000010-00001.parquet",
            "part-9-1-00000099-00000.parquet",
        ]
        .iter()
        .map(|n| file_key(n).expect("key"))
        .collect();
        keys.sort();
        let names: Vec<&str> = keys.iter().map(|k| k.4.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "part-9-1-00000099-00000.parquet",
                "part-17-1-00000009-00003.parquet",
                "part-17-1-00000010-00001.parquet",
                "part-17-1-00000010-00002.parquet",
            ]
        );
        assert!(file_key(".part-17-1-00000010-00002.parquet.staged").is_none());
        assert!(file_key("notes.txt").is_none());
    }

    #[test]
    fn a_position_mid_file_resumes_at_the_next_row_and_after_a_complete_file_at_the_next_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        let mut a = producer(root, "a-000000000000");
        epoch(&mut a, 1, "a", &["1", "2", "3"]);
        epoch(&mut a, 2, "a", &["4", "5"]);
        let all = vec!["a:1", "a:2", "a:3", "a:4", "a:5"];
        // Stop after every number of rows (2 rows a poll): a source seeked to that position returns
        // exactly the rest.
        let mut s = source(root, None);
        let mut taken: Vec<String> = Vec::new();
        let mut positions = vec![s.position().expect("position")];
        loop {
            match s.poll(2).expect("poll") {
                Poll::Ready(Some(b), _) => {
                    let raw = b.column(3).as_string::<i32>();
                    taken.extend((0..b.num_rows()).map(|i| format!("a:{}", raw.value(i))));
                    positions.push(s.position().expect("position"));
                }
                Poll::Pending => break,
                _ => panic!(),
            }
        }
        assert_eq!(taken, all);
        let mut seen = 0;
        for p in &positions {
            let mut r = source(root, None);
            r.seek(&serde_json::from_str(&p.to_string()).expect("json"))
                .expect("seek");
            let rest = drain(&mut r, 100);
            assert_eq!(rest, all[all.len() - rest.len()..], "from {p}");
            assert!(all.len() - rest.len() >= seen, "positions go forward: {p}");
            seen = all.len() - rest.len();
        }
        assert_eq!(seen, all.len());
        // After the last file was read whole, a new file is all that comes.
        let mut r = source(root, None);
        r.seek(positions.last().expect("last")).expect("seek");
        epoch(&mut a, 3, "a", &["6"]);
        assert_eq!(drain(&mut r, 100), vec!["a:6"]);
    }

    #[test]
    fn skips_its_own_query_directories() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        epoch(&mut producer(root, "bad-0123456789ab"), 1, "bad", &["own"]);
        epoch(
            &mut producer(root, "bad-ffffffffffff"),
            1,
            "bad",
            &["own, older version"],
        );
        epoch(&mut producer(root, "bad-x-0123456789ab"), 1, "bad-x", &["other"]);
        epoch(&mut producer(root, "job-0123456789ab"), 1, "job", &["other too"]);
        let mut s = source(root, Some("bad"));
        assert_eq!(drain(&mut s, 100), vec!["bad-x:other", "job:other too"]);
        let mut s = source(root, None);
        assert_eq!(drain(&mut s, 100).len(), 4);
    }

    #[test]
    fn no_root_yet_is_pending_then_reads_what_appears() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("_streams").join("_errors");
        let mut s = source(&root, None);
        assert!(matches!(s.poll(10).expect("poll"), Poll::Pending));
        assert_eq!(s.position(), Some(json!({ "dirs": {} })));
        epoch(&mut producer(&root, "q-0123456789ab"), 1, "q", &["1"]);
        assert_eq!(drain(&mut s, 10), vec!["q:1"]);
        assert!(!s.bounded());
    }

    #[test]
    fn polls_the_directories_only_every_interval() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        let mut s = SystemStreamSource::new(root, None, SystemTables::schema(), Duration::from_secs(3600));
        assert!(matches!(s.poll(10).expect("poll"), Poll::Pending));
        epoch(&mut producer(root, "q-0123456789ab"), 1, "q", &["1"]);
        assert!(matches!(s.poll(10).expect("poll"), Poll::Pending), "not looked for yet");
        s.last_scan = None;
        assert_eq!(drain(&mut s, 10), vec!["q:1"]);
    }
}
