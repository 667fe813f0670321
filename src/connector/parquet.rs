//! `connector = 'parquet'`: an append-only archive of Parquet files in one directory, written with
//! exactly-once effect across restarts from the engine's checkpoints.
//!
//! Each sink has a lineage id `run` (`<unix millis>-<pid>` on a fresh start; a query resumed from a
//! checkpoint continues the lineage stored in it). Every file name carries the run, the epoch (the
//! checkpoint whose output it holds) and a sequence number:
//!
//! - `.part-<run>-<epoch>-<seq>.parquet.inprogress`: being written;
//! - `.part-<run>-<epoch>-<seq>.parquet.staged`: complete and fsynced, not yet visible. A file is
//!   closed and staged when it reaches `rollover_rows` rows, when it has been open `rollover_seconds`
//!   (checked on every write, before the rows go in, and at [`Sink::prepare`]), and at every
//!   `prepare` (which stages all rows written since the last epoch);
//! - `part-<run>-<epoch>-<seq>.parquet`: published (visible), once checkpoint `epoch` is durable
//!   ([`Sink::publish`] renames every staged file of that epoch and earlier, then fsyncs the
//!   directory). Readers that skip dot-files only ever see complete, committed files.
//!
//! Recovery ([`Sink::recover`]) from checkpoint `k` adopts the checkpoint's run and, among that run's
//! files, publishes the staged files of epochs up to `k` (their checkpoint is durable, the publish
//! may not have happened), and deletes every in-progress file and every staged or published file
//! of a later epoch (the resumed query writes those rows again; a fallback to an older checkpoint
//! must not leave a second copy). It is idempotent. A start from scratch deletes every `.part-…`
//! in-progress or staged file in the directory: the unpublished output of runs that left no
//! checkpoint. Hence the guarantee: given the engine's checkpoints, every result row appears in the
//! published files exactly once, provided one query writes one directory.
//!
//! [`Sink::commit`] (callers that use no epochs) stages and publishes everything at once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;

use super::file::sync_dir;
use super::{Output, Sink, SinkMode};
use crate::error::{Error, Result};
use crate::sql::parser::Options;

#[derive(Debug, Clone)]
pub struct ParquetOptions {
    pub path: PathBuf,
    pub rollover_rows: usize,
    pub rollover_seconds: u64,
    /// `format = 'changelog'`: every row with its kind in a leading `op` column (`+I`, `-U`, `+U`,
    /// `-D`), so an updating result can be archived and replayed.
    pub changelog: bool,
}

impl ParquetOptions {
    pub fn parse(o: &Options) -> Result<Self> {
        o.check_keys(
            "connector 'parquet'",
            &["connector", "path", "rollover_rows", "rollover_seconds", "format"],
        )?;
        let changelog = match o.get("format").unwrap_or("parquet") {
            "parquet" => false,
            "changelog" => true,
            other => {
                return Err(Error::option(
                    "format",
                    format!("unknown format '{other}' for connector 'parquet'; valid: parquet, changelog"),
                ));
            }
        };
        let rollover_rows = o.parse_or("rollover_rows", 1_000_000usize)?;
        if rollover_rows == 0 {
            return Err(Error::option("rollover_rows", "must be > 0"));
        }
        Ok(ParquetOptions {
            path: PathBuf::from(o.required("path", "connector 'parquet'")?),
            rollover_rows,
            rollover_seconds: o.parse_or("rollover_seconds", 60u64)?,
            changelog,
        })
    }
}

/// What a file in the sink's directory is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    InProgress,
    Staged,
    Published,
}

impl Stage {
    fn name(self, run: &str, epoch: u64, seq: u64) -> String {
        let stem = format!("part-{run}-{epoch:08}-{seq:05}.parquet");
        match self {
            Stage::InProgress => format!(".{stem}.inprogress"),
            Stage::Staged => format!(".{stem}.staged"),
            Stage::Published => stem,
        }
    }

    /// `(stage, run, epoch, seq)` of a name this sink writes.
    fn parse(name: &str) -> Option<(Stage, &str, u64, u64)> {
        let (stage, stem) = if let Some(s) = name.strip_suffix(".parquet.inprogress") {
            (Stage::InProgress, s.strip_prefix(".part-")?)
        } else if let Some(s) = name.strip_suffix(".parquet.staged") {
            (Stage::Staged, s.strip_prefix(".part-")?)
        } else {
            (Stage::Published, name.strip_suffix(".parquet")?.strip_prefix("part-")?)
        };
        let mut it = stem.rsplitn(3, '-');
        let seq = it.next()?.parse().ok()?;
        let epoch = it.next()?.parse().ok()?;
        let run = it.next().filter(|r| !r.is_empty())?;
        Some((stage, run, epoch, seq))
    }
}

/// `(run, epoch, seq)` of a published file's name (`part-<run>-<epoch>-<seq>.parquet`), for readers
/// of a sink's directory (see [`super::system_stream`]); `None` for any other name.
pub fn published_part(name: &str) -> Option<(&str, u64, u64)> {
    match Stage::parse(name)? {
        (Stage::Published, run, epoch, seq) => Some((run, epoch, seq)),
        _ => None,
    }
}

struct OpenFile {
    writer: ArrowWriter<File>,
    temp: PathBuf,
    epoch: u64,
    seq: u64,
    rows: usize,
    opened: Instant,
}

/// A complete file not yet published.
struct StagedFile {
    epoch: u64,
    seq: u64,
}

pub struct ParquetSink {
    opts: ParquetOptions,
    schema: SchemaRef,
    current: Option<OpenFile>,
    run_id: String,
    /// The epoch rows written now belong to: one past the last prepared (or recovered) epoch.
    epoch: u64,
    /// The next file's sequence number (unique within the run, across restarts).
    seq: u64,
    /// Staged files not yet published, oldest first.
    staged: Vec<StagedFile>,
    /// Files published by this sink.
    pub files: Vec<PathBuf>,
}

impl ParquetSink {
    pub fn new(opts: ParquetOptions, schema: SchemaRef) -> Self {
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let schema = if opts.changelog {
            super::changelog_schema(&schema)
        } else {
            schema
        };
        ParquetSink {
            opts,
            schema,
            current: None,
            run_id: format!("{run_id}-{}", std::process::id()),
            epoch: 1,
            seq: 0,
            staged: vec![],
            files: vec![],
        }
    }

    /// This sink's lineage id (the `<run>` in its file names).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    fn path(&self, stage: Stage, epoch: u64, seq: u64) -> PathBuf {
        self.opts.path.join(stage.name(&self.run_id, epoch, seq))
    }

    fn max_age(&self) -> Duration {
        Duration::from_secs(self.opts.rollover_seconds.max(1))
    }

    fn open(&mut self) -> Result<&mut OpenFile> {
        if self.current.is_none() {
            std::fs::create_dir_all(&self.opts.path).map_err(|e| Error::io(&self.opts.path, e))?;
            let temp = self.path(Stage::InProgress, self.epoch, self.seq);
            let file = File::create(&temp).map_err(|e| Error::io(&temp, e))?;
            let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
            let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(props))
                .map_err(|e| Error::External(format!("parquet writer for {}: {e}", temp.display())))?;
            self.current = Some(OpenFile {
                writer,
                temp,
                epoch: self.epoch,
                seq: self.seq,
                rows: 0,
                opened: Instant::now(),
            });
            self.seq += 1;
        }
        self.current
            .as_mut()
            .ok_or_else(|| Error::Internal("parquet file not open".into()))
    }

    /// Close the open file (if any), fsync it and give it its staged name, labelled with its epoch
    /// but at most `cap`. The directory is not fsynced here (see [`Self::sync`]).
    fn stage(&mut self, cap: u64) -> Result<()> {
        if let Some(mut f) = self.current.take() {
            f.writer
                .finish()
                .map_err(|e| Error::External(format!("closing {}: {e}", f.temp.display())))?;
            f.writer.inner_mut().sync_all().map_err(|e| Error::io(&f.temp, e))?;
            drop(f.writer);
            let epoch = f.epoch.min(cap);
            let dest = self.path(Stage::Staged, epoch, f.seq);
            std::fs::rename(&f.temp, &dest).map_err(|e| Error::io(&dest, e))?;
            self.staged.push(StagedFile { epoch, seq: f.seq });
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        if self.opts.path.is_dir() {
            sync_dir(&self.opts.path)?;
        }
        Ok(())
    }

    /// Publish the staged files of epochs up to `epoch`, then fsync the directory.
    fn publish_up_to(&mut self, epoch: u64) -> Result<()> {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.staged)
            .into_iter()
            .partition(|s| s.epoch <= epoch);
        self.staged = later;
        for (i, s) in now.iter().enumerate() {
            let from = self.path(Stage::Staged, s.epoch, s.seq);
            let to = self.path(Stage::Published, s.epoch, s.seq);
            if let Err(e) = std::fs::rename(&from, &to) {
                // Keep what is still unpublished for a retry.
                self.staged.splice(0..0, now.into_iter().skip(i));
                return Err(Error::io(&to, e));
            }
            self.files.push(to);
            fail::fail_point!("parquet-mid-publish", |_| crate::state::crash("parquet-mid-publish"));
        }
        if !now.is_empty() {
            self.sync()?;
        }
        Ok(())
    }
}

/// Names in `dir` (none if it does not exist).
fn list(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, e))?;
        names.extend(e.file_name().to_str().map(str::to_string));
    }
    names.sort();
    Ok(names)
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

impl Sink for ParquetSink {
    fn mode(&self) -> SinkMode {
        SinkMode::Append
    }

    fn write(&mut self, out: &Output) -> Result<()> {
        // A file open too long is rolled before new rows go in, even if none came for a while.
        if self
            .current
            .as_ref()
            .is_some_and(|f| f.opened.elapsed() >= self.max_age())
        {
            self.stage(u64::MAX)?;
        }
        if out.batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = if self.opts.changelog {
            out.with_op_column()?
        } else {
            out.batch.clone()
        };
        let batch = batch.clone().with_schema(self.schema.clone()).unwrap_or(batch);
        let (max_rows, max_age) = (self.opts.rollover_rows, self.max_age());
        let f = self.open()?;
        f.writer
            .write(&batch)
            .map_err(|e| Error::External(format!("writing {}: {e}", f.temp.display())))?;
        f.rows += batch.num_rows();
        fail::fail_point!("parquet-mid-write", |_| crate::state::crash("parquet-mid-write"));
        if f.rows >= max_rows || f.opened.elapsed() >= max_age {
            self.stage(u64::MAX)?;
        }
        Ok(())
    }

    /// Stage and publish everything written so far (for callers that use no epochs).
    fn commit(&mut self) -> Result<()> {
        self.stage(u64::MAX)?;
        self.publish_up_to(u64::MAX)
    }

    /// Stage every row written since the last epoch (the open file is closed whatever its age or
    /// size: the checkpoint needs its rows durable) and fsync the directory. Returns the run and
    /// the staged files recovery will publish.
    fn prepare(&mut self, epoch: u64) -> Result<serde_json::Value> {
        if epoch + 1 < self.epoch {
            return Err(Error::Internal(format!(
                "parquet sink: prepare({epoch}) after epoch {} was prepared",
                self.epoch - 1
            )));
        }
        // Rows written since the last epoch belong to `epoch`: files labelled later (only when the
        // engine prepares the same epoch again, or starts at 0) are relabelled.
        self.stage(epoch)?;
        for s in &mut self.staged {
            if s.epoch > epoch {
                let from = Stage::Staged.name(&self.run_id, s.epoch, s.seq);
                let to = Stage::Staged.name(&self.run_id, epoch, s.seq);
                std::fs::rename(self.opts.path.join(&from), self.opts.path.join(&to))
                    .map_err(|e| Error::io(self.opts.path.join(&to), e))?;
                s.epoch = epoch;
            }
        }
        self.sync()?;
        self.epoch = epoch + 1;
        let staged: Vec<String> = self
            .staged
            .iter()
            .map(|s| Stage::Staged.name(&self.run_id, s.epoch, s.seq))
            .collect();
        Ok(serde_json::json!({ "run": self.run_id, "epoch": epoch, "staged": staged }))
    }

    fn publish(&mut self, epoch: u64) -> Result<()> {
        self.publish_up_to(epoch)
    }

    fn recover(&mut self, epoch: Option<u64>, pending: &serde_json::Value) -> Result<()> {
        let dir = self.opts.path.clone();
        self.current = None;
        self.staged.clear();
        self.seq = 0;
        let Some(k) = epoch else {
            // From scratch: no checkpoint holds any unpublished output here.
            for name in list(&dir)? {
                if name.starts_with(".part-") && (name.ends_with(".inprogress") || name.ends_with(".staged")) {
                    remove(&dir.join(&name))?;
                }
            }
            self.epoch = 1;
            return self.sync();
        };
        let run = pending
            .get("run")
            .and_then(|r| r.as_str())
            .ok_or_else(|| Error::External(format!("parquet sink: checkpoint {k} holds no run id ({pending})")))?;
        self.run_id = run.to_string();
        self.epoch = k + 1;
        for name in list(&dir)? {
            let Some((stage, run, e, seq)) = Stage::parse(&name) else {
                continue;
            };
            if run != self.run_id {
                continue;
            }
            self.seq = self.seq.max(seq + 1);
            let path = dir.join(&name);
            match stage {
                Stage::Staged if e <= k => {
                    let to = self.path(Stage::Published, e, seq);
                    std::fs::rename(&path, &to).map_err(|err| Error::io(&to, err))?;
                    self.files.push(to);
                }
                Stage::Published if e <= k => {}
                _ => remove(&path)?,
            }
        }
        self.sync()?;
        // Every file the checkpoint staged must now be published.
        for name in pending.get("staged").and_then(|s| s.as_array()).into_iter().flatten() {
            let Some((_, _, e, seq)) = name.as_str().and_then(Stage::parse) else {
                continue;
            };
            let published = self.path(Stage::Published, e, seq);
            if !published.exists() {
                return Err(Error::External(format!(
                    "parquet sink: output of checkpoint {k} is missing: {} (neither staged nor published)",
                    published.display()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use serde_json::Value;
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]))
    }

    fn batch(v: &[i64]) -> Output {
        Output::append(RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(v.to_vec()))]).expect("batch"))
    }

    fn sink(dir: &Path, rollover_rows: usize, rollover_seconds: u64) -> ParquetSink {
        let opts = ParquetOptions {
            path: dir.to_path_buf(),
            rollover_rows,
            rollover_seconds,
            changelog: false,
        };
        ParquetSink::new(opts, schema())
    }

    fn names(dir: &Path, suffix: &str) -> Vec<String> {
        list(dir)
            .expect("list")
            .into_iter()
            .filter(|n| n.ends_with(suffix))
            .collect()
    }

    fn rows_of(path: &Path) -> Vec<i64> {
        let f = File::open(path).expect("open");
        let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .expect("reader")
            .build()
            .expect("build");
        let mut out = vec![];
        for b in reader {
            let b = b.expect("batch");
            let c = b.column(0).as_any().downcast_ref::<Int64Array>().expect("int64");
            out.extend(c.values().iter().copied());
        }
        out
    }

    /// Every row in the published files, sorted.
    fn published(dir: &Path) -> Vec<i64> {
        let mut rows: Vec<i64> = names(dir, ".parquet")
            .iter()
            .filter(|n| !n.starts_with('.'))
            .flat_map(|n| rows_of(&dir.join(n)))
            .collect();
        rows.sort();
        rows
    }

    /// Whatever is not published: in-progress and staged files.
    fn temp(dir: &Path) -> Vec<String> {
        list(dir)
            .expect("list")
            .into_iter()
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    /// Epochs 1..=3 of rows `[1, 2]`, `[3]`, `[4, 5]` (2 rows a file), checkpoint `publish_upto`
    /// published; then rows of epoch 4 in progress and the sink dropped (a crash). Returns each
    /// epoch's `prepare` result.
    fn run_and_crash(dir: &Path, publish_upto: u64) -> Vec<Value> {
        let mut s = sink(dir, 2, 3600);
        s.recover(None, &Value::Null).expect("recover");
        let mut pending = vec![Value::Null];
        for (e, rows) in [(1, &[1i64, 2][..]), (2, &[3]), (3, &[4, 5])] {
            for r in rows {
                s.write(&batch(&[*r])).expect("write");
            }
            pending.push(s.prepare(e).expect("prepare"));
            if e <= publish_upto {
                s.publish(e).expect("publish");
            }
        }
        s.write(&batch(&[6])).expect("write");
        assert_eq!(names(dir, ".inprogress").len(), 1);
        pending
    }

    #[test]
    fn rolls_to_staged_and_publishes_on_commit() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("out");
        let mut s = sink(&out, 3, 3600);
        s.write(&batch(&[1, 2])).expect("w");
        assert!(published(&out).is_empty(), "nothing visible before commit");
        s.write(&batch(&[3])).expect("w");
        assert_eq!(names(&out, ".staged").len(), 1, "rolled at 3 rows");
        assert!(published(&out).is_empty(), "a rolled file is only staged");
        s.write(&batch(&[4])).expect("w");
        s.commit().expect("commit");
        assert_eq!(s.files.len(), 2);
        assert_eq!(rows_of(&s.files[0]), vec![1, 2, 3]);
        assert_eq!(published(&out), vec![1, 2, 3, 4]);
        assert!(temp(&out).is_empty(), "{:?}", temp(&out));
    }

    #[test]
    fn names_round_trip() {
        for stage in [Stage::InProgress, Stage::Staged, Stage::Published] {
            let n = stage.name("1700000000000-42", 7, 3);
            assert_eq!(Stage::parse(&n), Some((stage, "1700000000000-42", 7, 3)), "{n}");
        }
        assert_eq!(Stage::parse("part-x.parquet"), None);
        assert_eq!(Stage::parse("notes.txt"), None);
    }

    #[test]
    fn crash_after_prepare_resumes_from_the_epoch_before() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        let pending = run_and_crash(d, 2);
        assert_eq!(published(d), vec![1, 2, 3]);
        assert!(!names(d, ".staged").is_empty(), "epoch 3 staged");
        // Resume from checkpoint 2: epoch 3's staged files and epoch 4's open file go.
        let mut s = sink(d, 2, 3600);
        s.recover(Some(2), &pending[2]).expect("recover");
        assert!(temp(d).is_empty(), "{:?}", temp(d));
        assert_eq!(published(d), vec![1, 2, 3], "epochs 1-2 once");
        assert_eq!(
            s.run_id(),
            pending[2]["run"].as_str().expect("run"),
            "continues its lineage"
        );
        // The resumed query writes epoch 3 again.
        s.write(&batch(&[4, 5])).expect("write");
        s.prepare(3).expect("prepare");
        s.publish(3).expect("publish");
        assert_eq!(published(d), vec![1, 2, 3, 4, 5]);
        assert!(temp(d).is_empty());
        let runs: std::collections::BTreeSet<String> = names(d, ".parquet")
            .iter()
            .filter_map(|n| Stage::parse(n).map(|(_, r, _, _)| r.to_string()))
            .collect();
        assert_eq!(runs.len(), 1, "one lineage: {runs:?}");
    }

    #[test]
    fn recovery_publishes_a_prepared_epoch_once_and_is_idempotent() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        let pending = run_and_crash(d, 2);
        for _ in 0..2 {
            let mut s = sink(d, 2, 3600);
            s.recover(Some(3), &pending[3]).expect("recover");
            assert_eq!(published(d), vec![1, 2, 3, 4, 5]);
            assert!(temp(d).is_empty(), "{:?}", temp(d));
        }
        // Recovering the same sink twice in a row is the same.
        let mut s = sink(d, 2, 3600);
        s.recover(Some(3), &pending[3]).expect("recover");
        s.recover(Some(3), &pending[3]).expect("recover again");
        assert_eq!(published(d), vec![1, 2, 3, 4, 5]);
        s.write(&batch(&[6])).expect("write");
        s.prepare(4).expect("prepare");
        s.publish(4).expect("publish");
        assert_eq!(published(d), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn fallback_to_an_older_checkpoint_deletes_later_published_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        let pending = run_and_crash(d, 3);
        assert_eq!(published(d), vec![1, 2, 3, 4, 5]);
        // Checkpoint 3 was lost: the query resumes from 2 and writes epoch 3 again.
        let mut s = sink(d, 2, 3600);
        s.recover(Some(2), &pending[2]).expect("recover");
        assert_eq!(published(d), vec![1, 2, 3]);
        assert!(temp(d).is_empty());
        s.write(&batch(&[4, 5])).expect("write");
        s.prepare(3).expect("prepare");
        s.publish(3).expect("publish");
        assert_eq!(published(d), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_checkpoints_staged_file_that_is_gone_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        let pending = run_and_crash(d, 2);
        for n in names(d, ".staged") {
            std::fs::remove_file(d.join(n)).expect("rm");
        }
        let err = sink(d, 2, 3600)
            .recover(Some(3), &pending[3])
            .expect_err("missing output");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn recovery_from_scratch_removes_unpublished_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        run_and_crash(d, 2);
        std::fs::write(d.join("notes.txt"), "keep").expect("write");
        let before = published(d);
        let mut s = sink(d, 2, 3600);
        s.recover(None, &Value::Null).expect("recover");
        assert!(temp(d).is_empty(), "{:?}", temp(d));
        assert_eq!(published(d), before, "published files stay");
        assert!(d.join("notes.txt").exists());
        // Recovering from scratch where the directory does not exist yet is fine.
        let mut s = sink(&d.join("new"), 2, 3600);
        s.recover(None, &Value::Null).expect("recover");
    }

    #[test]
    fn rolls_by_age_without_new_rows() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        let mut s = sink(d, 1_000, 1);
        s.recover(None, &Value::Null).expect("recover");
        s.write(&batch(&[1])).expect("write");
        std::thread::sleep(Duration::from_millis(1_100));
        // No rows arrive (an empty write), yet the file open past `rollover_seconds` is closed.
        s.write(&batch(&[])).expect("empty write");
        assert_eq!(names(d, ".staged").len(), 1);
        assert!(names(d, ".inprogress").is_empty());
        assert!(published(d).is_empty(), "staged only, until its checkpoint");
        // The rows that come later go to a file of their own.
        s.write(&batch(&[2])).expect("write");
        std::thread::sleep(Duration::from_millis(1_100));
        s.write(&batch(&[3])).expect("write");
        let staged = names(d, ".staged");
        assert_eq!(staged.len(), 2, "{staged:?}");
        assert_eq!(
            rows_of(&d.join(&staged[1])),
            vec![2],
            "rolled before the late rows went in"
        );
        s.prepare(1).expect("prepare");
        s.publish(1).expect("publish");
        assert_eq!(published(d), vec![1, 2, 3]);
        assert_eq!(s.files.len(), 3);
        assert!(temp(d).is_empty());
    }

    #[test]
    fn rows_between_prepare_and_publish_wait_for_their_epoch() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        let mut s = sink(d, 1_000, 3600);
        s.write(&batch(&[1])).expect("write");
        let p1 = s.prepare(1).expect("prepare");
        assert_eq!(p1["staged"].as_array().map(Vec::len), Some(1));
        s.write(&batch(&[2])).expect("write");
        s.publish(1).expect("publish");
        assert_eq!(published(d), vec![1]);
        // Without a checkpoint store: prepare + publish back to back.
        s.prepare(2).expect("prepare");
        s.publish(2).expect("publish");
        assert_eq!(published(d), vec![1, 2]);
        // An epoch with no rows stages nothing.
        assert_eq!(s.prepare(3).expect("prepare")["staged"], serde_json::json!([]));
        s.publish(3).expect("publish");
        assert!(s.prepare(1).is_err(), "epochs go forward");
    }
}
