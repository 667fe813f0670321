//! `connector = 'file'`: a bounded source of JSON-lines or CSV records, and a JSON-lines sink
//! (`connector = 'file'` / `'console'`).
//!
//! The file sink writes one file, `path`, with exactly-once effect across restarts from the
//! engine's checkpoints. Only committed rows are ever appended to `path`; rows on their way sit in
//! part files next to it:
//!
//! - `.<name>.<epoch>-<seq>.inprogress`: rows of epoch `epoch` being written;
//! - `.<name>.<epoch>-<seq>.staged`: flushed and fsynced at [`Sink::prepare`] (or `commit`);
//!   `prepare` returns the byte offset in `path` where each staged part goes and the length `path`
//!   has once they are all in (`{"len": …, "staged": [{"part": …, "at": …}]}`), which the checkpoint
//!   stores;
//! - [`Sink::publish`] appends the staged parts of epochs up to its epoch to `path`, oldest first,
//!   fsyncs it and deletes each part.
//!
//! Recovery from checkpoint `k` writes each staged part it lists that is still there at its offset
//! (over a partial copy left by a publish cut short), truncates `path` to the committed length
//! (dropping what epochs after `k` published: the resumed query writes those rows again, also after
//! a fallback to an older checkpoint), and deletes every other part. It is idempotent. A start from
//! scratch deletes the parts (unpublished output of runs that left no checkpoint) and appends after
//! what `path` holds. Hence, given the engine's checkpoints, every result row is in `path` exactly
//! once, and a reader of `path` never sees a row that a restart takes back (except after a fallback
//! to an older checkpoint), provided one query writes one file.
//!
//! Why parts copied on publish rather than rows appended straight to `path` and truncated back to
//! the committed length on recovery: the latter shows readers rows a crash then takes back and
//! writes again; and why one file rather than a directory of per-epoch files (as Parquet does):
//! `path` stays a plain file to tail or `cat`, as before. The cost is writing each row twice.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;

use super::decode_pool::DecodePool;
use super::{Output, Poll, Sink, SinkMode, Source};
use crate::error::{Error, Result};
use crate::format::{Format, LineDecoder, Lines, to_json_lines};
use crate::sql::parser::Options;

#[derive(Debug, Clone)]
pub struct FileOptions {
    pub path: PathBuf,
    pub format: Format,
}

impl FileOptions {
    pub fn parse(o: &Options) -> Result<Self> {
        o.check_keys(
            "connector 'file'",
            &[
                "connector",
                "path",
                "format",
                "header",
                "delimiter",
                "refresh_interval_ms",
            ],
        )?;
        let path = PathBuf::from(o.required("path", "connector 'file'")?);
        let header = o.parse_or("header", true)?;
        let delimiter = match o.get("delimiter") {
            None => b',',
            Some(d) if d.len() == 1 => d.as_bytes()[0],
            Some(d) => {
                return Err(Error::option(
                    "delimiter",
                    format!("must be one character, found '{d}'"),
                ));
            }
        };
        let format = Format::parse(o.get("format").unwrap_or("json"), header, delimiter)?;
        Ok(FileOptions { path, format })
    }

    pub fn check_exists(&self) -> Result<()> {
        std::fs::metadata(&self.path)
            .map(|_| ())
            .map_err(|e| Error::io(&self.path, e))
    }
}

pub struct FileSource {
    file: File,
    decoder: Arc<LineDecoder>,
    path: String,
    /// Bytes read but not yet decoded (an incomplete last line).
    pending: Vec<u8>,
    /// Line number of the first line in `pending`.
    line_no: u64,
    skip_header: bool,
    eof: bool,
    /// Bytes read from the file so far.
    read: u64,
    /// Chunks decoded on worker threads (see [`FileSource::decode_on`]); `None`: on the polling one.
    pool: Option<DecodePool>,
    /// With a pool: the byte offset and line number of the first line not yet returned.
    returned: (u64, u64),
    /// Without a pool: the last chunk's buffer, emptied, for the next one.
    spare: Option<Vec<u8>>,
}

/// What [`FileSource::cut_next`] found.
enum Cut {
    /// Whole lines, what the cut learned of them (see [`Lines`]), and the line number of the first.
    Chunk(Vec<u8>, Lines, u64),
    /// Everything was cut.
    End,
}

impl FileSource {
    pub fn open(opts: FileOptions, schema: SchemaRef) -> Result<Self> {
        let file = File::open(&opts.path).map_err(|e| Error::io(&opts.path, e))?;
        let skip_header = matches!(opts.format, Format::Csv { header: true, .. });
        Ok(FileSource {
            file,
            decoder: Arc::new(LineDecoder::new(schema, opts.format)),
            path: opts.path.display().to_string(),
            pending: Vec::new(),
            line_no: 1,
            skip_header,
            eof: false,
            read: 0,
            pool: None,
            returned: (0, 1),
            spare: None,
        })
    }

    /// Read up to 1 MiB more into `pending` (into its spare capacity: nothing is zeroed first).
    fn read_more(&mut self) -> Result<()> {
        let old = self.pending.len();
        self.pending.reserve(1 << 20);
        let n = (&mut self.file)
            .take(1 << 20)
            .read_to_end(&mut self.pending)
            .map_err(|e| Error::io(&self.path, e))?;
        debug_assert_eq!(self.pending.len(), old + n);
        self.read += n as u64;
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// The next chunk of up to `max` whole lines (after the header, if any). Each byte is searched
    /// for newlines once, on the polling thread; the count goes with the chunk to its decoder.
    fn cut_next(&mut self, max: usize) -> Result<Cut> {
        if self.skip_header {
            let mut from = 0;
            loop {
                if let Some(i) = memchr::memchr(b'\n', &self.pending[from..]) {
                    self.pending.drain(..=from + i);
                    self.line_no += 1;
                    self.skip_header = false;
                    // Nothing is in flight before the header: it counts as returned.
                    self.returned = (self.read - self.pending.len() as u64, self.line_no);
                    break;
                }
                if self.eof {
                    self.pending.clear();
                    return Ok(Cut::End);
                }
                from = self.pending.len();
                self.read_more()?;
            }
        }
        let max = max.max(1);
        // Newlines in pending[..scanned]: fewer than `max`; the longest line so far, and where the
        // current one starts.
        let (mut scanned, mut lines, mut longest, mut line_start) = (0, 0, 0, 0);
        let end = loop {
            let mut at = None;
            for i in memchr::memchr_iter(b'\n', &self.pending[scanned..]) {
                lines += 1;
                longest = longest.max(scanned + i - line_start);
                line_start = scanned + i + 1;
                if lines == max {
                    at = Some(scanned + i + 1);
                    break;
                }
            }
            match at {
                Some(end) => break end,
                None if self.eof => break self.pending.len(),
                None => {
                    scanned = self.pending.len();
                    self.read_more()?;
                }
            }
        };
        if end == 0 {
            return Ok(Cut::End);
        }
        // The chunk takes the buffer; the (short) rest moves to one sized for the next chunk — a
        // buffer a decoder is done with, when there is one.
        let mut rest = match self
            .pool
            .as_ref()
            .map_or_else(|| self.spare.take(), DecodePool::spare_buffer)
        {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::new(),
        };
        rest.reserve(end + (1 << 20));
        rest.extend_from_slice(&self.pending[end..]);
        let mut chunk = std::mem::replace(&mut self.pending, rest);
        chunk.truncate(end);
        let first = self.line_no;
        self.line_no += lines as u64;
        let lines = Lines {
            count: lines + usize::from(chunk.last() != Some(&b'\n')),
            longest: longest.max(end.saturating_sub(line_start)),
        };
        Ok(Cut::Chunk(chunk, lines, first))
    }
}

impl Source for FileSource {
    fn poll(&mut self, max: usize) -> Result<Poll> {
        if self.pool.is_none() {
            return match self.cut_next(max)? {
                Cut::Chunk(chunk, lines, first) => {
                    let decoded = self.decoder.decode_chunk_lines(&chunk, lines, first, &self.path)?;
                    self.spare = Some(chunk);
                    Ok(Poll::Ready(decoded.batch, decoded.errors))
                }
                Cut::End => Ok(Poll::Exhausted),
            };
        }
        // Keep every worker busy, then wait for the oldest chunk.
        let mut ended = false;
        while self.pool.as_ref().is_some_and(DecodePool::has_room) {
            match self.cut_next(max)? {
                Cut::Chunk(chunk, lines, first) => {
                    let after = (self.read - self.pending.len() as u64, self.line_no);
                    let pool = self
                        .pool
                        .as_mut()
                        .ok_or_else(|| Error::Internal("no decode pool".into()))?;
                    pool.submit(chunk, lines, first, after)?;
                }
                Cut::End => {
                    ended = true;
                    break;
                }
            }
        }
        let pool = self
            .pool
            .as_mut()
            .ok_or_else(|| Error::Internal("no decode pool".into()))?;
        match pool.next()? {
            Some((decoded, after)) => {
                self.returned = after;
                Ok(Poll::Ready(decoded.batch, decoded.errors))
            }
            None if ended => Ok(Poll::Exhausted),
            None => Ok(Poll::Pending),
        }
    }

    fn project(&mut self, columns: &[usize]) -> Result<()> {
        self.decoder = Arc::new(self.decoder.for_columns(columns)?);
        Ok(())
    }

    fn columns(&self) -> Option<Vec<usize>> {
        self.decoder.columns()
    }

    fn decode_on(&mut self, workers: usize) -> Result<()> {
        self.pool = match workers {
            0 | 1 => None,
            n => Some(DecodePool::new(n, self.decoder.clone(), Arc::from(self.path.as_str()))?),
        };
        self.returned = (self.read - self.pending.len() as u64, self.line_no);
        Ok(())
    }

    fn bounded(&self) -> bool {
        true
    }

    /// The byte offset of the first line not yet returned, and its line number.
    fn position(&self) -> Option<serde_json::Value> {
        let (offset, line) = match &self.pool {
            Some(_) => self.returned,
            None => (self.read - self.pending.len() as u64, self.line_no),
        };
        Some(serde_json::json!({
            "offset": offset,
            "line": line,
            "header_skipped": !self.skip_header,
        }))
    }

    fn seek(&mut self, position: &serde_json::Value) -> Result<()> {
        use std::io::Seek;
        let bad = || {
            Error::External(format!(
                "{}: file source position {position} is not one it wrote",
                self.path
            ))
        };
        let offset = position
            .get("offset")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(bad)?;
        let line = position
            .get("line")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(bad)?;
        let skipped = position
            .get("header_skipped")
            .and_then(serde_json::Value::as_bool)
            .ok_or_else(bad)?;
        let len = self.file.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        if offset > len {
            return Err(Error::External(format!(
                "{}: the checkpoint read up to byte {offset}, but the file now has {len} bytes (it was replaced or truncated)",
                self.path
            )));
        }
        self.file
            .seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| Error::io(&self.path, e))?;
        if self.pool.as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(Error::Internal("a file source seeks before its first poll".into()));
        }
        self.read = offset;
        self.pending.clear();
        self.line_no = line;
        self.skip_header = !skipped;
        self.eof = false;
        self.returned = (offset, line);
        Ok(())
    }
}

/// Fsync a directory, so the renames and deletions in it are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// JSON lines to a file (see the module doc for how it is committed) or to stdout.
pub struct JsonLinesSink {
    target: Target,
    /// Each row with its kind in an `op` field (`format = 'changelog'`).
    changelog: bool,
    /// Debezium-style JSON (`format = 'debezium-json'`).
    debezium: bool,
}

enum Target {
    Stdout(std::io::Stdout),
    File(Box<FileTarget>),
}

/// A part written since the last publish, fsynced under its staged name.
struct Part {
    epoch: u64,
    seq: u64,
    len: u64,
}

/// The open part: rows of epoch `epoch` not yet staged.
struct OpenPart {
    out: BufWriter<File>,
    temp: PathBuf,
    epoch: u64,
    seq: u64,
    len: u64,
}

struct FileTarget {
    /// The output file: only published rows are ever appended to it.
    path: PathBuf,
    dir: PathBuf,
    /// The output file's name (the parts are `.<name>.<epoch>-<seq>.…` next to it).
    name: String,
    current: Option<OpenPart>,
    /// The epoch rows written now belong to: one past the last prepared (or recovered) epoch.
    epoch: u64,
    seq: u64,
    /// Staged parts not yet appended, oldest first.
    staged: Vec<Part>,
    /// The output file's length with everything published so far.
    len: u64,
}

impl FileTarget {
    fn part(&self, epoch: u64, seq: u64, suffix: &str) -> PathBuf {
        self.dir.join(format!(".{}.{epoch:08}-{seq:05}.{suffix}", self.name))
    }

    /// `(epoch, seq, staged)` of a part of this file, by its name.
    fn parse(&self, file: &str) -> Option<(u64, u64, bool)> {
        let rest = file
            .strip_prefix('.')?
            .strip_prefix(self.name.as_str())?
            .strip_prefix('.')?;
        let (rest, staged) = match rest.strip_suffix(".staged") {
            Some(r) => (r, true),
            None => (rest.strip_suffix(".inprogress")?, false),
        };
        let (epoch, seq) = rest.split_once('-')?;
        Some((epoch.parse().ok()?, seq.parse().ok()?, staged))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.current.is_none() {
            let temp = self.part(self.epoch, self.seq, "inprogress");
            let f = File::create(&temp).map_err(|e| Error::io(&temp, e))?;
            self.current = Some(OpenPart {
                out: BufWriter::new(f),
                temp,
                epoch: self.epoch,
                seq: self.seq,
                len: 0,
            });
            self.seq += 1;
        }
        let Some(p) = self.current.as_mut() else {
            return Err(Error::Internal("file sink: no open part".into()));
        };
        p.out.write_all(bytes).map_err(|e| Error::io(&p.temp, e))?;
        p.len += bytes.len() as u64;
        Ok(())
    }

    /// Flush and fsync the open part and give it its staged name, labelled with its epoch but at
    /// most `cap`.
    fn stage(&mut self, cap: u64) -> Result<()> {
        let Some(p) = self.current.take() else {
            return Ok(());
        };
        let f = p.out.into_inner().map_err(|e| Error::io(&p.temp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&p.temp, e))?;
        drop(f);
        let epoch = p.epoch.min(cap);
        let dest = self.part(epoch, p.seq, "staged");
        std::fs::rename(&p.temp, &dest).map_err(|e| Error::io(&dest, e))?;
        self.staged.push(Part {
            epoch,
            seq: p.seq,
            len: p.len,
        });
        Ok(())
    }

    fn open_output(&self) -> Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Write the staged part `part` into the output at byte `at` (whatever the output holds from
    /// there on is a partial earlier attempt), fsync, and delete the part.
    fn append(&self, out: &mut File, part: &Path, at: u64) -> Result<u64> {
        use std::io::{Seek, SeekFrom};
        let have = out.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        if have < at {
            return Err(Error::External(format!(
                "file sink: {} has {have} bytes, but {at} were committed before {} (was it truncated?)",
                self.path.display(),
                part.display()
            )));
        }
        out.set_len(at).map_err(|e| Error::io(&self.path, e))?;
        out.seek(SeekFrom::Start(at)).map_err(|e| Error::io(&self.path, e))?;
        let mut src = File::open(part).map_err(|e| Error::io(part, e))?;
        let n = std::io::copy(&mut src, out).map_err(|e| Error::io(&self.path, e))?;
        out.sync_all().map_err(|e| Error::io(&self.path, e))?;
        std::fs::remove_file(part).map_err(|e| Error::io(part, e))?;
        Ok(at + n)
    }

    /// Append the staged parts of epochs up to `epoch` to the output, oldest first.
    fn publish(&mut self, epoch: u64) -> Result<()> {
        if !self.staged.iter().any(|p| p.epoch <= epoch) {
            return Ok(());
        }
        let mut out = self.open_output()?;
        while let Some(i) = self.staged.iter().position(|p| p.epoch <= epoch) {
            let part = self.part(self.staged[i].epoch, self.staged[i].seq, "staged");
            self.len = self.append(&mut out, &part, self.len)?;
            self.staged.remove(i);
        }
        sync_dir(&self.dir)
    }

    fn prepare(&mut self, epoch: u64) -> Result<serde_json::Value> {
        if epoch + 1 < self.epoch {
            return Err(Error::Internal(format!(
                "file sink: prepare({epoch}) after epoch {} was prepared",
                self.epoch - 1
            )));
        }
        self.stage(epoch)?;
        // Parts labelled later than `epoch` (only when the engine prepares the same epoch again, or
        // starts at 0) hold its rows: relabel them.
        for i in 0..self.staged.len() {
            let p = &self.staged[i];
            if p.epoch > epoch {
                let (from, to) = (self.part(p.epoch, p.seq, "staged"), self.part(epoch, p.seq, "staged"));
                std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
                self.staged[i].epoch = epoch;
            }
        }
        sync_dir(&self.dir)?;
        self.epoch = epoch + 1;
        // Where each staged part goes in the output, and the output's length once all are in.
        let mut at = self.len;
        let mut parts = Vec::new();
        for p in &self.staged {
            parts.push(serde_json::json!({
                "part": self.part(p.epoch, p.seq, "staged").file_name().map(|n| n.to_string_lossy().into_owned()),
                "at": at,
            }));
            at += p.len;
        }
        Ok(serde_json::json!({ "len": at, "staged": parts }))
    }

    fn recover(&mut self, epoch: Option<u64>, pending: &serde_json::Value) -> Result<()> {
        self.current = None;
        self.staged.clear();
        self.seq = 0;
        let mut out = self.open_output()?;
        if let Some(k) = epoch {
            let bad = || {
                Error::External(format!(
                    "file sink {}: checkpoint {k} holds no committed length ({pending})",
                    self.path.display()
                ))
            };
            let len = pending.get("len").and_then(|l| l.as_u64()).ok_or_else(bad)?;
            // Finish the publish the checkpoint may not have seen through: each staged part still
            // there goes where the checkpoint said (over a partial copy, if any).
            for p in pending.get("staged").and_then(|s| s.as_array()).into_iter().flatten() {
                let name = p.get("part").and_then(|n| n.as_str()).ok_or_else(bad)?;
                let at = p.get("at").and_then(|a| a.as_u64()).ok_or_else(bad)?;
                let part = self.dir.join(name);
                if part.exists() {
                    self.append(&mut out, &part, at)?;
                }
            }
            let have = out.metadata().map_err(|e| Error::io(&self.path, e))?.len();
            if have < len {
                return Err(Error::External(format!(
                    "file sink: {} has {have} bytes, but checkpoint {k} committed {len} (was it truncated?)",
                    self.path.display()
                )));
            }
            // What later epochs published is written again by the resumed query.
            if have > len {
                out.set_len(len).map_err(|e| Error::io(&self.path, e))?;
                out.sync_all().map_err(|e| Error::io(&self.path, e))?;
            }
            self.epoch = k + 1;
        } else {
            self.epoch = 1;
        }
        // Every other part is unpublished output of an epoch no checkpoint holds (or one already
        // appended).
        for e in std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let e = e.map_err(|e| Error::io(&self.dir, e))?;
            let name = e.file_name();
            let Some((_, seq, _)) = name.to_str().and_then(|n| self.parse(n)) else {
                continue;
            };
            self.seq = self.seq.max(seq + 1);
            let path = e.path();
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        sync_dir(&self.dir)?;
        self.len = out.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        Ok(())
    }
}

impl JsonLinesSink {
    pub fn file(path: &str, format: Option<&str>) -> Result<Self> {
        let p = PathBuf::from(path);
        let dir = match p.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                dir.to_path_buf()
            }
            None => PathBuf::from("."),
        };
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::option("path", format!("'{path}' does not name a file")))?
            .to_string();
        let mut t = FileTarget {
            path: p,
            dir,
            name,
            current: None,
            epoch: 1,
            seq: 0,
            staged: vec![],
            len: 0,
        };
        t.len = t.open_output()?.metadata().map_err(|e| Error::io(&t.path, e))?.len();
        Ok(JsonLinesSink {
            target: Target::File(Box::new(t)),
            changelog: format == Some("changelog"),
            debezium: format == Some("debezium-json"),
        })
    }

    pub fn stdout() -> Self {
        JsonLinesSink {
            target: Target::Stdout(std::io::stdout()),
            changelog: false,
            debezium: false,
        }
    }
}

impl Sink for JsonLinesSink {
    fn mode(&self) -> SinkMode {
        SinkMode::Append
    }
    fn write(&mut self, out: &Output) -> Result<()> {
        let bytes = if self.debezium {
            out.to_debezium_json()?
        } else if self.changelog || !out.inserts_only() {
            to_json_lines(&out.with_op_column()?)?
        } else {
            to_json_lines(&out.batch)?
        };
        match &mut self.target {
            Target::Stdout(s) => s.write_all(&bytes).map_err(|e| Error::io("<stdout>", e)),
            Target::File(t) => t.write(&bytes),
        }
    }
    /// Stage and publish everything written so far (for callers that use no epochs).
    fn commit(&mut self) -> Result<()> {
        match &mut self.target {
            Target::Stdout(s) => s.flush().map_err(|e| Error::io("<stdout>", e)),
            Target::File(t) => {
                t.stage(u64::MAX)?;
                t.publish(u64::MAX)
            }
        }
    }
    fn prepare(&mut self, epoch: u64) -> Result<serde_json::Value> {
        match &mut self.target {
            Target::Stdout(s) => {
                s.flush().map_err(|e| Error::io("<stdout>", e))?;
                Ok(serde_json::Value::Null)
            }
            Target::File(t) => t.prepare(epoch),
        }
    }
    fn publish(&mut self, epoch: u64) -> Result<()> {
        match &mut self.target {
            Target::Stdout(_) => Ok(()),
            Target::File(t) => t.publish(epoch),
        }
    }
    fn recover(&mut self, epoch: Option<u64>, pending: &serde_json::Value) -> Result<()> {
        match &mut self.target {
            Target::Stdout(_) => Ok(()),
            Target::File(t) => t.recover(epoch, pending),
        }
    }
}

#[cfg(test)]
mod sink_tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use serde_json::Value;
    use std::sync::Arc;

    #[test]
    fn a_source_seeks_to_the_position_it_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("in.csv");
        std::fs::write(&path, "x\n1\n2\n3\n4\n5\n").expect("write");
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let opts = FileOptions {
            path: path.clone(),
            format: Format::parse("csv", true, b',').expect("csv"),
        };
        let values = |p: Poll| match p {
            Poll::Ready(Some(b), bad) => {
                assert!(bad.is_empty());
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().expect("i64").clone();
                a.values().to_vec()
            }
            _ => panic!("rows expected"),
        };
        let mut first = FileSource::open(opts.clone(), schema.clone()).expect("open");
        assert_eq!(values(first.poll(2).expect("poll")), vec![1, 2]);
        let at = first.position().expect("position");
        let mut second = FileSource::open(opts.clone(), schema.clone()).expect("open");
        second.seek(&at).expect("seek");
        assert_eq!(values(second.poll(10).expect("poll")), vec![3, 4, 5]);
        assert!(matches!(second.poll(10).expect("poll"), Poll::Exhausted));
        // A file cut shorter than the checkpoint read is refused, not read from a wrong place.
        std::fs::write(&path, "x\n1\n").expect("truncate");
        let mut third = FileSource::open(opts, schema).expect("open");
        let err = third.seek(&at).expect_err("refused").to_string();
        assert!(err.contains("replaced or truncated"), "{err}");
    }

    #[test]
    fn decoding_on_several_threads_returns_the_same_rows_errors_and_positions_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("in.csv");
        let mut text = String::from("x\n");
        for i in 0..2000 {
            if i % 131 == 7 {
                text.push_str("oops\n");
            } else {
                text.push_str(&format!("{i}\n"));
            }
        }
        std::fs::write(&path, text).expect("write");
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let opts = FileOptions {
            path,
            format: Format::parse("csv", true, b',').expect("csv"),
        };
        // Every poll: its values, its bad positions and the position after it.
        type Step = (Vec<i64>, Vec<String>, serde_json::Value);
        let steps = |src: &mut FileSource, max: usize| -> Vec<Step> {
            let mut out = Vec::new();
            loop {
                match src.poll(max).expect("poll") {
                    Poll::Ready(b, bad) => {
                        let values = b.map_or(Vec::new(), |b| {
                            b.column(0)
                                .as_any()
                                .downcast_ref::<Int64Array>()
                                .expect("i64")
                                .values()
                                .to_vec()
                        });
                        let bad = bad.into_iter().map(|e| e.position).collect();
                        out.push((values, bad, src.position().expect("position")));
                    }
                    Poll::Exhausted => return out,
                    _ => {}
                }
            }
        };
        let mut one = FileSource::open(opts.clone(), schema.clone()).expect("open");
        let want = steps(&mut one, 37);
        assert!(want.iter().any(|s| !s.1.is_empty()), "the file has bad lines");
        let mut three = FileSource::open(opts.clone(), schema.clone()).expect("open");
        three.decode_on(3).expect("pool");
        assert_eq!(steps(&mut three, 37), want);
        // Resumed from a position taken mid-way on threads, the rest is the same too.
        let mut resumed = FileSource::open(opts, schema).expect("open");
        resumed.seek(&want[20].2).expect("seek");
        resumed.decode_on(2).expect("pool");
        assert_eq!(steps(&mut resumed, 37), want[21..].to_vec());
    }

    #[test]
    fn chunks_hold_at_most_max_whole_lines_across_reads_and_number_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("in.jsonl");
        // Lines of 10 bytes to 1.5 MiB (longer than one read), a bad line every 13th, no final newline.
        let mut text = String::new();
        let mut bad_lines = Vec::new();
        let n = 200;
        for i in 0..n {
            if i % 13 == 5 {
                text.push_str("{oops\n");
                bad_lines.push(i + 1);
                continue;
            }
            let pad = if i % 50 == 7 { 1_500_000 } else { i % 17 };
            text.push_str(&format!("{{\"x\": {i}, \"s\": \"{}\"}}", "y".repeat(pad)));
            if i + 1 < n {
                text.push('\n');
            }
        }
        std::fs::write(&path, &text).expect("write");
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let opts = FileOptions {
            path: path.clone(),
            format: Format::parse("json", true, b',').expect("json"),
        };
        for (max, workers) in [(1, 1), (3, 1), (7, 2), (64, 1), (1000, 3)] {
            let mut src = FileSource::open(opts.clone(), schema.clone()).expect("open");
            src.decode_on(workers).expect("pool");
            let (mut xs, mut bad) = (Vec::new(), Vec::new());
            loop {
                match src.poll(max).expect("poll") {
                    Poll::Ready(b, errs) => {
                        let rows = b.as_ref().map_or(0, RecordBatch::num_rows);
                        assert!(
                            rows + errs.len() <= max,
                            "max {max}: {rows} rows and {} bad",
                            errs.len()
                        );
                        if let Some(b) = b {
                            let a = b.column(0).as_any().downcast_ref::<Int64Array>().expect("i64");
                            xs.extend(a.values().iter().copied());
                        }
                        bad.extend(errs.into_iter().map(|e| e.position));
                    }
                    Poll::Exhausted => break,
                    Poll::Pending => {}
                    Poll::Changes(..) => panic!("a file source emits no changes"),
                }
            }
            let want: Vec<i64> = (0..n as i64).filter(|i| i % 13 != 5).collect();
            assert_eq!(xs, want, "max {max}, {workers} workers");
            let want_bad: Vec<String> = bad_lines.iter().map(|l| format!("{}:{l}", path.display())).collect();
            assert_eq!(bad, want_bad, "max {max}, {workers} workers");
            let end = src.position().expect("position");
            assert_eq!(end["offset"], serde_json::json!(text.len()), "max {max}");
            assert_eq!(
                end["line"],
                serde_json::json!(n),
                "max {max}: the last line has no newline"
            );
        }
    }

    fn batch(v: &[i64]) -> Output {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        Output::append(RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(v.to_vec()))]).expect("batch"))
    }

    fn sink(path: &Path) -> JsonLinesSink {
        JsonLinesSink::file(path.to_str().expect("utf-8"), None).expect("open")
    }

    /// The `x` of every line of the output, in order.
    fn rows(path: &Path) -> Vec<i64> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("json");
                v["x"].as_i64().expect("x")
            })
            .collect()
    }

    /// The part files next to the output.
    fn parts(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    /// Epochs 1..=3 of rows `[1, 2]`, `[3]`, `[4, 5]`, published up to `publish_upto`; then a row
    /// of epoch 4 written and the sink dropped (a crash). Returns each epoch's `prepare` result.
    fn run_and_crash(path: &Path, publish_upto: u64) -> Vec<Value> {
        let mut s = sink(path);
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
        pending
    }

    #[test]
    fn commit_publishes_and_nothing_shows_before() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sub/out.jsonl");
        let mut s = sink(&path);
        assert!(path.exists(), "the output is created at open");
        s.write(&batch(&[1, 2])).expect("write");
        assert!(rows(&path).is_empty(), "nothing visible before commit");
        s.commit().expect("commit");
        assert_eq!(rows(&path), vec![1, 2]);
        s.write(&batch(&[3])).expect("write");
        s.commit().expect("commit");
        assert_eq!(rows(&path), vec![1, 2, 3]);
        assert!(parts(&path).is_empty(), "{:?}", parts(&path));
    }

    #[test]
    fn crash_after_prepare_resumes_from_the_epoch_before() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("out.jsonl");
        let pending = run_and_crash(&path, 2);
        assert_eq!(rows(&path), vec![1, 2, 3], "epoch 3 only staged");
        assert_eq!(
            parts(&path).len(),
            2,
            "epoch 3 staged, epoch 4 in progress: {:?}",
            parts(&path)
        );
        let mut s = sink(&path);
        s.recover(Some(2), &pending[2]).expect("recover");
        assert_eq!(rows(&path), vec![1, 2, 3], "epochs 1-2 once");
        assert!(parts(&path).is_empty(), "{:?}", parts(&path));
        // The resumed query writes epoch 3 again.
        s.write(&batch(&[4, 5])).expect("write");
        s.prepare(3).expect("prepare");
        s.publish(3).expect("publish");
        assert_eq!(rows(&path), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn recovery_publishes_a_prepared_epoch_once_and_is_idempotent() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("out.jsonl");
        let pending = run_and_crash(&path, 2);
        for _ in 0..2 {
            let mut s = sink(&path);
            s.recover(Some(3), &pending[3]).expect("recover");
            assert_eq!(rows(&path), vec![1, 2, 3, 4, 5]);
            assert!(parts(&path).is_empty(), "{:?}", parts(&path));
        }
        let mut s = sink(&path);
        s.recover(Some(3), &pending[3]).expect("recover");
        s.recover(Some(3), &pending[3]).expect("recover again");
        s.write(&batch(&[6])).expect("write");
        s.prepare(4).expect("prepare");
        s.publish(4).expect("publish");
        assert_eq!(rows(&path), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn recovery_completes_a_publish_cut_short() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("out.jsonl");
        let pending = run_and_crash(&path, 2);
        // The crash came while epoch 3's part was being appended: half of it is in the output.
        let part = parts(&path)
            .into_iter()
            .find(|n| n.ends_with(".staged"))
            .expect("staged");
        let bytes = std::fs::read(dir.path().join(&part)).expect("part");
        let mut out = std::fs::OpenOptions::new().append(true).open(&path).expect("out");
        out.write_all(&bytes[..bytes.len() / 2]).expect("append");
        drop(out);
        let mut s = sink(&path);
        s.recover(Some(3), &pending[3]).expect("recover");
        assert_eq!(rows(&path), vec![1, 2, 3, 4, 5]);
        // Or it had all been appended, but the part not yet deleted.
        let pending = run_and_crash(&dir.path().join("b.jsonl"), 3);
        let b = dir.path().join("b.jsonl");
        let part = &pending[3]["staged"][0]["part"];
        std::fs::write(dir.path().join(part.as_str().expect("name")), b"{\"x\":4}\n{\"x\":5}\n").expect("put back");
        let mut s = sink(&b);
        s.recover(Some(3), &pending[3]).expect("recover");
        assert_eq!(rows(&b), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn fallback_to_an_older_checkpoint_drops_later_epochs() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("out.jsonl");
        let pending = run_and_crash(&path, 3);
        assert_eq!(rows(&path), vec![1, 2, 3, 4, 5]);
        let mut s = sink(&path);
        s.recover(Some(2), &pending[2]).expect("recover");
        assert_eq!(rows(&path), vec![1, 2, 3]);
        assert!(parts(&path).is_empty());
        s.write(&batch(&[4, 5])).expect("write");
        s.prepare(3).expect("prepare");
        s.publish(3).expect("publish");
        assert_eq!(rows(&path), vec![1, 2, 3, 4, 5]);
        // An output shorter than a checkpoint committed cannot be recovered exactly once.
        std::fs::write(&path, b"{\"x\":1}\n").expect("truncate");
        assert!(sink(&path).recover(Some(3), &pending[3]).is_err());
    }

    #[test]
    fn recovery_from_scratch_removes_parts_and_keeps_the_output() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("out.jsonl");
        run_and_crash(&path, 2);
        std::fs::write(dir.path().join(".other"), "keep").expect("write");
        let mut s = sink(&path);
        s.recover(None, &Value::Null).expect("recover");
        assert_eq!(parts(&path), vec![".other".to_string()]);
        assert_eq!(rows(&path), vec![1, 2, 3], "a fresh start appends after what is there");
        s.write(&batch(&[9])).expect("write");
        s.prepare(1).expect("prepare");
        s.publish(1).expect("publish");
        assert_eq!(rows(&path), vec![1, 2, 3, 9]);
    }

    #[test]
    fn rows_between_prepare_and_publish_wait_for_their_epoch() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("out.jsonl");
        let mut s = sink(&path);
        s.write(&batch(&[1])).expect("write");
        let p1 = s.prepare(1).expect("prepare");
        assert_eq!(p1["len"], 8, "{p1}");
        s.write(&batch(&[2])).expect("write");
        s.publish(1).expect("publish");
        assert_eq!(rows(&path), vec![1]);
        let p2 = s.prepare(2).expect("prepare");
        assert_eq!(
            (p2["len"].as_u64(), p2["staged"][0]["at"].as_u64()),
            (Some(16), Some(8))
        );
        s.publish(2).expect("publish");
        assert_eq!(rows(&path), vec![1, 2]);
        assert!(s.prepare(1).is_err(), "epochs go forward");
    }
}
