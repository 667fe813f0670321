//! Text formats ⇄ Arrow, with per-record error capture.
//!
//! Decoding tries the whole chunk at once with arrow's vectorised readers (the fast path). Only when
//! that fails is the chunk decoded line by line, so that each bad record is isolated with its reason
//! and every good record still gets through.

use std::sync::Arc;

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::ReaderBuilder as JsonReaderBuilder;
use datafusion::arrow::json::reader::Decoder as JsonDecoder;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

mod depth;
mod timestamp;

use timestamp::TextTimestamps;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv { header: bool, delimiter: u8 },
}

impl Format {
    pub fn parse(text: &str, header: bool, delimiter: u8) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv { header, delimiter }),
            other => Err(Error::option(
                "format",
                format!("unknown format '{other}'; valid: json, csv"),
            )),
        }
    }
}

/// A record that could not be decoded: where it came from, its text, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    pub position: String,
    pub raw: String,
    pub reason: String,
}

pub struct Decoded {
    pub batch: Option<RecordBatch>,
    pub errors: Vec<BadRecord>,
}

/// Rows a JSON decoder takes before it is flushed: a chunk of more lines is decoded in pieces of
/// this many, then put together. Measured on the course TUMBLE and Nexmark queries: decoding
/// 65 536-line chunks whole took 8–20 % more CPU than in pieces of 16 384 (the decoder's tape then
/// stays in the cache).
const DECODE_PIECE_ROWS: usize = 16_384;

pub struct LineDecoder {
    /// The batches' schema: the source's columns that are read (see [`LineDecoder::with_columns`]).
    schema: SchemaRef,
    format: Format,
    /// Every column of the records, and the indices of those made if not all (see
    /// [`LineDecoder::with_columns`]; CSV fields are positional, so a CSV decoder reads `all`).
    all: SchemaRef,
    columns: Option<Vec<usize>>,
    /// The last JSON chunk had malformed lines: the next one goes straight to the scan that sets
    /// them aside, instead of a whole-chunk decode that would fail first (input that has bad lines
    /// tends to keep having them).
    dirty: std::sync::atomic::AtomicBool,
    /// JSON decoders done with a chunk, for the next one (a decoder's tape buffers are grown once, not
    /// per chunk); each reads timestamps as text or not. About one per decoding thread.
    idle: std::sync::Mutex<Vec<(bool, JsonDecoder)>>,
    /// JSON: the timestamp columns, read as text and converted by [`timestamp`] (faster than
    /// arrow-json's own parse; same values).
    text_timestamps: Option<TextTimestamps>,
    /// Reading timestamps as text is still worth trying: cleared when a chunk failed that way but
    /// decoded the ordinary way (its timestamps are JSON numbers, which arrow-json takes as epoch
    /// values), so that such a stream is not decoded twice over.
    timestamps_as_text: std::sync::atomic::AtomicBool,
}

impl LineDecoder {
    pub fn new(schema: SchemaRef, format: Format) -> Self {
        Self::build(schema.clone(), schema, format, None)
    }

    /// A decoder whose batches hold only `columns` of `schema` (indices, ascending) — what a
    /// source's queries read (projection pushdown, as Flink's JSON and CSV formats do). The other
    /// columns are not converted: a value of the wrong type there, or a NOT NULL one missing, is
    /// not an error. A record must still be one well-formed JSON object (or a CSV line of the
    /// right number of fields).
    pub fn with_columns(schema: SchemaRef, format: Format, columns: &[usize]) -> Result<Self> {
        if !columns.windows(2).all(|w| w[0] < w[1]) {
            return Err(Error::Internal(format!("decoder columns not ascending: {columns:?}")));
        }
        let projected = Arc::new(schema.project(columns)?);
        Ok(Self::build(projected, schema, format, Some(columns.to_vec())))
    }

    /// A decoder of the same records making only `columns` of them (see [`Self::with_columns`]).
    pub fn for_columns(&self, columns: &[usize]) -> Result<Self> {
        Self::with_columns(self.all.clone(), self.format, columns)
    }

    fn build(schema: SchemaRef, all: SchemaRef, format: Format, columns: Option<Vec<usize>>) -> Self {
        let text_timestamps = match format {
            Format::Json => TextTimestamps::of(&schema),
            Format::Csv { .. } => None,
        };
        LineDecoder {
            schema,
            all,
            format,
            columns,
            dirty: std::sync::atomic::AtomicBool::new(false),
            idle: std::sync::Mutex::new(Vec::new()),
            timestamps_as_text: std::sync::atomic::AtomicBool::new(text_timestamps.is_some()),
            text_timestamps,
        }
    }

    /// The schema of the batches this decoder makes.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The columns of the records it makes, if not all (see [`Self::with_columns`]).
    pub fn columns(&self) -> Option<Vec<usize>> {
        self.columns.clone()
    }

    /// A JSON decoder reading timestamps as text or not: an idle one if there is one, else a new one.
    fn json_decoder(&self, text: bool) -> Result<(bool, JsonDecoder), String> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = idle.iter().position(|(t, _)| *t == text) {
            return Ok(idle.swap_remove(i));
        }
        drop(idle);
        let schema = match &self.text_timestamps {
            Some(t) if text => t.text_schema.clone(),
            _ => self.schema.clone(),
        };
        let d = JsonReaderBuilder::new(schema)
            .with_batch_size(DECODE_PIECE_ROWS)
            .build_decoder()
            .map_err(|e| e.to_string())?;
        Ok((text, d))
    }

    fn decode_bytes(&self, bytes: &[u8], rows: usize) -> Result<Option<RecordBatch>, String> {
        let rows = rows.max(1);
        match self.format {
            Format::Json => self.decode_runs(&[bytes], rows),
            Format::Csv { delimiter, .. } => {
                let builder = match &self.columns {
                    None => datafusion::arrow::csv::ReaderBuilder::new(self.schema.clone()),
                    Some(keep) => {
                        datafusion::arrow::csv::ReaderBuilder::new(self.all.clone()).with_projection(keep.clone())
                    }
                };
                let mut d = builder
                    .with_header(false)
                    .with_delimiter(delimiter)
                    .with_batch_size(rows)
                    .build_decoder();
                let mut off = 0;
                while off < bytes.len() {
                    let used = d.decode(&bytes[off..]).map_err(|e| e.to_string())?;
                    if used == 0 {
                        break;
                    }
                    off += used;
                }
                d.flush().map_err(|e| e.to_string())
            }
        }
    }

    /// Decode a chunk of whole lines (`\n`-separated) whose first line is line `first_line` of
    /// `origin`. Positions of bad records are `origin:line`.
    pub fn decode_chunk(&self, chunk: &[u8], first_line: u64, origin: &str) -> Result<Decoded> {
        let lines = Lines {
            count: lines_in(chunk),
            longest: chunk.len(),
        };
        self.decode_chunk_lines(chunk, lines, first_line, origin)
    }

    /// [`Self::decode_chunk`] of a chunk whose lines the caller has counted already (see [`Lines`]).
    pub fn decode_chunk_lines(&self, chunk: &[u8], shape: Lines, first_line: u64, origin: &str) -> Result<Decoded> {
        let lines = shape.count;
        debug_assert_eq!(lines, lines_in(chunk));
        debug_assert!(chunk.split(|b| *b == b'\n').all(|l| l.len() <= shape.longest));
        if lines == 0 {
            return Ok(Decoded {
                batch: None,
                errors: vec![],
            });
        }
        let json = matches!(self.format, Format::Json);
        let dirty = json && self.dirty.load(std::sync::atomic::Ordering::Relaxed);
        // Invalid UTF-8 anywhere: the line-by-line path names the line. The JSON fast path needs no
        // check of its own: arrow's tape decoder validates every string (unknown fields' too) and
        // refuses any other non-ASCII byte, so a chunk with invalid UTF-8 fails it and is checked
        // below.
        let utf8 = std::cell::OnceCell::new();
        let utf8 = || *utf8.get_or_init(|| std::str::from_utf8(chunk).is_ok());
        if dirty
            && utf8()
            && let Some(d) =
                self.decode_around_malformed(chunk, &|i| format!("{origin}:{}", first_line + i), ObjectCheck::Ends)?
        {
            self.dirty
                .store(!d.errors.is_empty(), std::sync::atomic::Ordering::Relaxed);
            return Ok(d);
        }
        // Fast path: the whole chunk in one vectorised decode (not with a line arrow cannot take).
        if !dirty
            && (json || utf8())
            // A line nesting past the limit has more openers than that, so more bytes.
            && !(json && shape.longest > depth::MAX_DEPTH && depth::any_too_deep(chunk))
            && let Ok(Some(b)) = self.decode_bytes(chunk, lines)
            && b.num_rows() == lines
        {
            return Ok(Decoded {
                batch: Some(b),
                errors: vec![],
            });
        }
        // JSON with a few malformed lines: those a JSON parser rejects are set aside (decoded alone
        // below, for arrow's reason), the rest decoded together — one vectorised decode, not one
        // per line. If that still fails (a well-formed record of the wrong types), line by line.
        if json
            && !dirty
            && utf8()
            && let Some(d) =
                self.decode_around_malformed(chunk, &|i| format!("{origin}:{}", first_line + i), ObjectCheck::Ends)?
        {
            self.dirty
                .store(!d.errors.is_empty(), std::sync::atomic::Ordering::Relaxed);
            return Ok(d);
        }
        // Slow path: line by line, so that each bad record is isolated with its reason.
        let mut text_lines = Vec::with_capacity(lines);
        let mut errors = Vec::new();
        for (i, raw) in chunk.split(|b| *b == b'\n').enumerate().take(lines) {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let pos = first_line + i as u64;
            match std::str::from_utf8(raw) {
                Ok(l) => text_lines.push((pos, l)),
                Err(_) => errors.push(BadRecord {
                    position: format!("{origin}:{pos}"),
                    raw: String::from_utf8_lossy(raw).into_owned(),
                    reason: "invalid UTF-8".into(),
                }),
            }
        }
        let mut out = self.decode(text_lines.into_iter().map(|(n, l)| (format!("{origin}:{n}"), l)))?;
        errors.append(&mut out.errors);
        errors.sort_by_key(|e| e.position.rsplit(':').next().and_then(|n| n.parse::<u64>().ok()));
        Ok(Decoded {
            batch: out.batch,
            errors,
        })
    }

    /// [`Self::decode_chunk`]'s middle path for JSON: `None` when the well-formed lines do not
    /// decode together (the caller goes line by line). The lines set aside are those that fail
    /// `check`; when the rest still do not decode, the next, stricter check runs. The good lines
    /// are fed to one decoder as the runs between bad lines, in place (no copy). `position` names
    /// the line of index `i` (0: the first of `chunk`) for error reports.
    fn decode_around_malformed(
        &self,
        chunk: &[u8],
        position: &dyn Fn(u64) -> String,
        check: ObjectCheck,
    ) -> Result<Option<Decoded>> {
        let mut runs: Vec<&[u8]> = Vec::new();
        let mut good_rows = 0;
        let mut bad = Vec::new();
        let (mut line_start, mut run_start) = (0, 0);
        for (i, end) in memchr::memchr_iter(b'\n', chunk)
            .chain((chunk.last() != Some(&b'\n')).then_some(chunk.len()))
            .enumerate()
        {
            let raw = &chunk[line_start..end];
            let next = end + 1;
            let trimmed = raw.trim_ascii();
            if !blank(raw) {
                if check.passes(trimmed) {
                    good_rows += 1;
                } else {
                    runs.push(&chunk[run_start..line_start]);
                    run_start = next.min(chunk.len());
                    bad.push((i as u64, raw.strip_suffix(b"\r").unwrap_or(raw)));
                }
            }
            line_start = next.min(chunk.len());
        }
        runs.push(&chunk[run_start..]);
        let batch = match good_rows {
            0 => None,
            n => match self.decode_runs(&runs, n) {
                Ok(Some(b)) if b.num_rows() == n => Some(b),
                _ => match check.stricter() {
                    Some(stricter) => return self.decode_around_malformed(chunk, position, stricter),
                    None => return Ok(None),
                },
            },
        };
        // The reason is the JSON parser's (with the column where the line goes wrong): asking
        // arrow line by line would cost a decoder per bad line.
        let errors = bad
            .into_iter()
            .map(|(n, raw)| BadRecord {
                position: position(n),
                raw: String::from_utf8_lossy(raw).into_owned(),
                reason: match serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
                    Err(e) => format!("not JSON: {e}"),
                    Ok(_) => "not a JSON object".into(),
                },
            })
            .collect();
        Ok(Some(Decoded { batch, errors }))
    }

    /// Decode consecutive pieces of JSON lines as one batch of up to `rows` rows. A decoder that
    /// failed is dropped (its state is not known); one that flushed is empty again and goes back to
    /// the idle ones.
    fn decode_runs(&self, runs: &[&[u8]], rows: usize) -> Result<Option<RecordBatch>, String> {
        use std::sync::atomic::Ordering::Relaxed;
        let text = self
            .text_timestamps
            .as_ref()
            .filter(|_| self.timestamps_as_text.load(Relaxed));
        let pieces = match text {
            None => self.decode_pieces(runs, rows, false)?,
            Some(text) => {
                let converted = self
                    .decode_pieces(runs, rows, true)
                    .ok()
                    .and_then(|pieces| pieces.into_iter().map(|b| text.convert(b, &self.schema)).collect());
                match converted {
                    Some(pieces) => pieces,
                    None => {
                        // Not timestamps text gives: the ordinary decode decides (values and reasons
                        // arrow-json's).
                        let typed = self.decode_pieces(runs, rows, false)?;
                        self.timestamps_as_text.store(false, Relaxed);
                        typed
                    }
                }
            }
        };
        match pieces.len() {
            0 => Ok(None),
            1 => Ok(pieces.into_iter().next()),
            _ => concat_batches(&self.schema, &pieces)
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }

    /// [`Self::decode_runs`] with timestamps read as text (converted by the caller) or not, as
    /// batches of up to [`DECODE_PIECE_ROWS`] rows.
    fn decode_pieces(&self, runs: &[&[u8]], rows: usize, text: bool) -> Result<Vec<RecordBatch>, String> {
        let (text, mut d) = self.json_decoder(text)?;
        let mut pieces = Vec::with_capacity(rows.div_ceil(DECODE_PIECE_ROWS));
        let mut decoded = 0;
        let mut flush = |d: &mut JsonDecoder| -> Result<bool, String> {
            let Some(b) = d.flush().map_err(|e| e.to_string())? else {
                return Ok(false);
            };
            decoded += b.num_rows();
            if decoded > rows {
                return Err("more records than expected".into());
            }
            pieces.push(b);
            Ok(true)
        };
        for run in runs {
            let mut at = 0;
            while at < run.len() {
                at += d.decode(&run[at..]).map_err(|e| e.to_string())?;
                // The decoder stops when it holds a piece's rows.
                if at < run.len() && !flush(&mut d)? {
                    return Err("the JSON decoder made no progress".into());
                }
            }
        }
        flush(&mut d)?;
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((text, d));
        Ok(pieces)
    }

    /// Decode one record per message (e.g. Kafka values); positions of bad records are
    /// `origin@offset`.
    pub fn decode_records(&self, records: &[(i64, &[u8])], origin: &str) -> Result<Decoded> {
        let mut buf = Vec::with_capacity(records.iter().map(|(_, r)| r.len() + 1).sum());
        for (_, r) in records {
            buf.extend_from_slice(r);
            buf.push(b'\n');
        }
        self.decode_joined(&buf, records, origin)
    }

    /// [`Self::decode_records`] of records the caller has joined already: `buf` is each record of
    /// `records` followed by `\n`, in order.
    pub fn decode_joined(&self, buf: &[u8], records: &[(i64, &[u8])], origin: &str) -> Result<Decoded> {
        debug_assert_eq!(buf.len(), records.iter().map(|(_, r)| r.len() + 1).sum::<usize>());
        if records.is_empty() {
            return Ok(Decoded {
                batch: None,
                errors: vec![],
            });
        }
        let utf8 = std::str::from_utf8(buf).is_ok();
        let json = matches!(self.format, Format::Json);
        if utf8
            && !(json && depth::any_too_deep(buf))
            && let Ok(Some(b)) = self.decode_bytes(buf, records.len())
            && b.num_rows() == records.len()
        {
            return Ok(Decoded {
                batch: Some(b),
                errors: vec![],
            });
        }
        // JSON records of one line each, none blank: set the malformed ones aside as for a file
        // (one vectorised decode of the rest, not one decoder per record).
        if utf8
            && matches!(self.format, Format::Json)
            && records
                .iter()
                .all(|(_, r)| memchr::memchr(b'\n', r).is_none() && !blank(r))
            && let Some(d) = self.decode_around_malformed(
                buf,
                &|i| format!("{origin}@{}", records.get(i as usize).map_or(-1, |r| r.0)),
                ObjectCheck::Ends,
            )?
        {
            return Ok(d);
        }
        let mut text = Vec::with_capacity(records.len());
        let mut errors = Vec::new();
        for (off, raw) in records {
            match std::str::from_utf8(raw) {
                Ok(t) if !blank(t.as_bytes()) => text.push((format!("{origin}@{off}"), t)),
                Ok(_) => errors.push(BadRecord {
                    position: format!("{origin}@{off}"),
                    raw: String::new(),
                    reason: "empty record".into(),
                }),
                Err(_) => errors.push(BadRecord {
                    position: format!("{origin}@{off}"),
                    raw: String::from_utf8_lossy(raw).into_owned(),
                    reason: "invalid UTF-8".into(),
                }),
            }
        }
        let mut out = self.decode(text)?;
        errors.append(&mut out.errors);
        Ok(Decoded {
            batch: out.batch,
            errors,
        })
    }

    /// Decode `lines` one by one (each with its position for error reports); blank lines are skipped.
    pub fn decode<'a>(&self, lines: impl IntoIterator<Item = (String, &'a str)>) -> Result<Decoded> {
        let mut good = Vec::new();
        let mut errors = Vec::new();
        for (pos, line) in lines {
            if blank(line.as_bytes()) {
                continue;
            }
            if matches!(self.format, Format::Json) && depth::too_deep(line.as_bytes()) {
                errors.push(BadRecord {
                    position: pos,
                    raw: line.to_string(),
                    reason: format!("not JSON: nested deeper than {} levels", depth::MAX_DEPTH),
                });
                continue;
            }
            let mut one = Vec::with_capacity(line.len() + 1);
            one.extend_from_slice(line.as_bytes());
            one.push(b'\n');
            match self.decode_bytes(&one, 1) {
                Ok(Some(b)) if b.num_rows() == 1 => good.push(b),
                Ok(_) => errors.push(BadRecord {
                    position: pos,
                    raw: line.to_string(),
                    reason: "record decoded to no row".into(),
                }),
                Err(reason) => errors.push(BadRecord {
                    position: pos,
                    raw: line.to_string(),
                    reason,
                }),
            }
        }
        let batch = if good.is_empty() {
            None
        } else {
            Some(concat_batches(&self.schema, &good)?)
        };
        Ok(Decoded { batch, errors })
    }
}

/// How [`LineDecoder::decode_around_malformed`] tells a line that cannot be one JSON object,
/// cheapest first: each pass that still leaves the rest undecodable moves to the next.
#[derive(Debug, Clone, Copy)]
enum ObjectCheck {
    /// `{` first and `}` last (catches truncated lines and stray text in O(1)).
    Ends,
    /// [`looks_like_an_object`]: braces and brackets balance outside strings.
    Balanced,
    /// A JSON parser accepts it.
    Parse,
}

impl ObjectCheck {
    fn passes(self, line: &[u8]) -> bool {
        // Never one for arrow, whichever the check (the JSON parser names the reason).
        if depth::too_deep(line) {
            return false;
        }
        match self {
            ObjectCheck::Ends => line.first() == Some(&b'{') && line.last() == Some(&b'}'),
            ObjectCheck::Balanced => looks_like_an_object(line),
            ObjectCheck::Parse => serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok(),
        }
    }

    fn stricter(self) -> Option<Self> {
        match self {
            ObjectCheck::Ends => Some(ObjectCheck::Balanced),
            ObjectCheck::Balanced => Some(ObjectCheck::Parse),
            ObjectCheck::Parse => None,
        }
    }
}

/// A line that holds no record: only ASCII whitespace. One definition for every path through
/// the decoder (the fuzzer found a line of a vertical tab skipped on one path and a bad record on
/// another); Unicode spaces, not being JSON whitespace either, make a bad record.
pub fn blank(line: &[u8]) -> bool {
    line.trim_ascii().is_empty()
}

/// The number of `\n` in `bytes` (SIMD).
pub fn count_lines(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', bytes).count()
}

/// What a source learned of a chunk while cutting it at newlines: how many lines (its newlines, plus
/// one for a last line without one) and a bound on the longest, in bytes (the decoder skips its
/// search for lines nested too deep when no line is long enough to be).
#[derive(Debug, Clone, Copy)]
pub struct Lines {
    pub count: usize,
    pub longest: usize,
}

/// The lines of a chunk: its newlines, plus one for a last line without one.
fn lines_in(chunk: &[u8]) -> usize {
    count_lines(chunk) + usize::from(chunk.last().is_some_and(|b| *b != b'\n'))
}

/// A quick scan, not a parse: `{`, then braces and brackets that balance outside strings (with
/// escapes), closing at the last byte. A line that fails it is certainly not one JSON object; one
/// that passes may still be malformed (the caller then parses).
fn looks_like_an_object(line: &[u8]) -> bool {
    let line = line.trim_ascii();
    if line.first() != Some(&b'{') {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, b) in line.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = match depth.checked_sub(1) {
                    Some(d) => d,
                    None => return false,
                };
                if depth == 0 {
                    return i == line.len() - 1;
                }
            }
            _ => {}
        }
    }
    false
}

/// Encode a batch as JSON lines (timestamps as RFC 3339 text).
pub fn to_json_lines(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
        w.write(batch)?;
        w.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::generator::course_schema;
    use datafusion::arrow::array::{Array, Int64Array, TimestampMillisecondArray};

    fn lines(text: &str) -> Vec<(String, &str)> {
        text.lines()
            .enumerate()
            .map(|(i, l)| (format!("line {}", i + 1), l))
            .collect()
    }

    #[test]
    fn the_quick_object_scan_rejects_only_what_cannot_be_one_object() {
        for ok in [r#"{"a":1}"#, r#" {"a":"}{\"","b":[1,{"c":2}]} "#, "{}"] {
            assert!(looks_like_an_object(ok.as_bytes()), "{ok}");
        }
        for bad in [
            r#"{"a":1"#,
            r#"{"a":1}}"#,
            r#"{"a":1} x"#,
            "[1]",
            "",
            r#"{"a":"}"#,
            "oops",
        ] {
            assert!(!looks_like_an_object(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn a_chunk_with_malformed_lines_keeps_every_good_row_in_order_and_each_bad_one_with_its_reason() {
        let d = LineDecoder::new(course_schema(), Format::Json);
        let good = |u: i64| {
            format!(
                r#"{{"user_id":{u},"course_id":2,"region":"eu","purchased":false,"event_time":"2026-01-01T00:00:00Z"}}"#
            )
        };
        let mut lines = Vec::new();
        for u in 0..300 {
            lines.push(good(u));
            if u % 99 == 98 {
                lines.push(r#"{"user_id": 1, "course_id": oops"#.to_string()); // caught by the scan
            }
        }
        lines.insert(10, r#"{"user_id": 1, "course_id": oops}"#.to_string()); // balanced, still bad
        // Each check level in turn: a second line that passes the ends check only, and a chunk
        // whose lines end in \r\n (the \r is not part of the raw record).
        let mut harder = lines.clone();
        harder.insert(50, r#"{"oops": 1}}"#.to_string());
        for (text, expected) in [
            (lines.join("\n"), vec!["f:11", "f:101", "f:201", "f:301"]),
            (lines.join("\r\n") + "\r\n", vec!["f:11", "f:101", "f:201", "f:301"]),
            (harder.join("\n"), vec!["f:11", "f:51", "f:102", "f:202", "f:302"]),
        ] {
            // Twice: the first chunk finds the bad lines after a failed whole-chunk decode, the
            // second goes straight to setting them aside (the decoder remembers dirty input).
            for _ in 0..2 {
                let out = d.decode_chunk(text.as_bytes(), 1, "f").expect("decode");
                let users = out.batch.expect("rows");
                let users = users.column(0).as_any().downcast_ref::<Int64Array>().expect("i64");
                assert_eq!(users.values().to_vec(), (0..300).collect::<Vec<i64>>());
                let positions: Vec<_> = out.errors.iter().map(|e| e.position.as_str()).collect();
                assert_eq!(positions, expected);
                assert!(
                    out.errors.iter().all(|e| e.reason.starts_with("not JSON: ")
                        && e.raw.contains("oops")
                        && !e.raw.ends_with('\r')),
                    "{:?}",
                    out.errors
                );
            }
        }
    }

    #[test]
    fn records_of_a_kafka_poll_keep_every_good_one_and_name_each_bad_one_by_offset() {
        let d = LineDecoder::new(course_schema(), Format::Json);
        let good = |u: i64| {
            format!(
                r#"{{"user_id":{u},"course_id":2,"region":"eu","purchased":false,"event_time":"2026-01-01T00:00:00Z"}}"#
            )
        };
        let mut owned: Vec<(i64, Vec<u8>)> = (0..200).map(|u| (1000 + u, good(u).into_bytes())).collect();
        owned[5].1 = br#"{"user_id": 1, "course_id": oops"#.to_vec(); // set aside by the quick check
        owned[50].1 = br#"{"user_id": "x", "course_id": 2}"#.to_vec(); // well-formed, wrong type
        owned[120].1 = b"\xff\xfe".to_vec(); // not UTF-8
        owned[150].1 = b"   ".to_vec(); // blank
        // A record spread over lines (pretty-printed JSON) is still one record.
        owned[7].1 = good(7).replace(",", ",\n  ").into_bytes();
        let records: Vec<(i64, &[u8])> = owned.iter().map(|(o, r)| (*o, r.as_slice())).collect();
        let out = d.decode_records(&records, "t/0").expect("decode");
        let users = out.batch.expect("rows");
        let users = users.column(0).as_any().downcast_ref::<Int64Array>().expect("i64");
        let want: Vec<i64> = (0..200).filter(|u| ![5, 50, 120, 150].contains(u)).collect();
        assert_eq!(users.values().to_vec(), want);
        let mut positions: Vec<_> = out.errors.iter().map(|e| e.position.as_str()).collect();
        positions.sort();
        assert_eq!(positions, ["t/0@1005", "t/0@1050", "t/0@1120", "t/0@1150"]);
        // Only malformed lines (no multi-line, blank, non-UTF-8 or wrongly typed record: those
        // go record by record): the same answer through the path that sets them aside.
        for u in [7, 50, 120, 150] {
            owned[u].1 = good(u as i64).into_bytes();
        }
        let records: Vec<(i64, &[u8])> = owned.iter().map(|(o, r)| (*o, r.as_slice())).collect();
        let out = d.decode_records(&records, "t/0").expect("decode");
        let users = out.batch.expect("rows");
        let users = users.column(0).as_any().downcast_ref::<Int64Array>().expect("i64");
        let want: Vec<i64> = (0..200).filter(|u| *u != 5).collect();
        assert_eq!(users.values().to_vec(), want);
        let positions: Vec<_> = out.errors.iter().map(|e| e.position.as_str()).collect();
        assert_eq!(positions, ["t/0@1005"]);
        assert!(
            out.errors[0].reason.starts_with("not JSON: "),
            "{}",
            out.errors[0].reason
        );
    }

    #[test]
    fn json_invalid_utf8_in_any_string_is_named_and_decoders_are_reused_across_chunks() {
        let line = |u: i64, extra: &[u8]| {
            let mut l = format!(r#"{{"user_id":{u},"course_id":2,"region":""#).into_bytes();
            l.extend_from_slice(if u % 2 == 0 { extra } else { b"eu" });
            l.extend_from_slice(br#"","purchased":false,"event_time":"2026-01-01T00:00:00Z","note":""#);
            l.extend_from_slice(if u % 2 == 1 { extra } else { b"ok" });
            l.extend_from_slice(b"\"}\n");
            l
        };
        // Chunks of growing and shrinking size through one decoder (its JSON decoders are reused),
        // clean ones and ones with invalid UTF-8 in a column's string or in an unknown field's.
        let d = LineDecoder::new(course_schema(), Format::Json);
        for (n, bad) in [
            (3, None),
            (40, Some(17)),
            (10, None),
            (80, Some(8)),
            (5, Some(0)),
            (80, None),
        ] {
            let mut chunk = Vec::new();
            for u in 0..n {
                chunk.extend(line(u, if Some(u) == bad { b"\xff\xfe" } else { b"fine" }));
            }
            let out = d.decode_chunk(&chunk, 100, "f").expect("decode");
            let users = out.batch.expect("rows");
            let users = users.column(0).as_any().downcast_ref::<Int64Array>().expect("i64");
            let want: Vec<i64> = (0..n).filter(|u| Some(*u) != bad).collect();
            assert_eq!(users.values().to_vec(), want, "{n} lines, bad {bad:?}");
            let errors: Vec<(String, String)> = out.errors.into_iter().map(|e| (e.position, e.reason)).collect();
            let want_errors: Vec<(String, String)> = bad
                .map(|b| (format!("f:{}", 100 + b), "invalid UTF-8".to_string()))
                .into_iter()
                .collect();
            assert_eq!(errors, want_errors, "{n} lines");
            let fresh = LineDecoder::new(course_schema(), Format::Json)
                .decode_chunk(&chunk, 100, "f")
                .expect("decode");
            assert_eq!(fresh.batch.map(|b| b.num_rows()), Some(want.len()));
        }
    }

    #[test]
    fn json_fast_path_and_bad_records_isolated() {
        let d = LineDecoder::new(course_schema(), Format::Json);
        let text = r#"{"user_id":1,"course_id":2,"region":"eu-west","purchased":false,"event_time":"2026-01-01T00:00:00.123Z"}
{"user_id":"abc","course_id":2,"region":"eu-west","purchased":false,"event_time":"2026-01-01T00:00:00Z"}
not json at all

{"user_id":3,"course_id":4,"region":null,"purchased":true,"event_time":"2026-01-01T00:01:00Z"}
{"course_id":4,"region":"x","purchased":true,"event_time":"2026-01-01T00:01:00Z"}"#;
        let out = d.decode_chunk(text.as_bytes(), 1, "f").expect("decode");
        let b = out.batch.expect("good rows");
        assert_eq!(b.num_rows(), 2);
        let users = b.column(0).as_any().downcast_ref::<Int64Array>().expect("i64");
        assert_eq!(users.values(), &[1, 3]);
        let ts = b
            .column(4)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("ts");
        assert_eq!(ts.value(0), 1_767_225_600_123);
        assert!(b.column(2).is_null(1));
        let positions: Vec<_> = out.errors.iter().map(|e| e.position.as_str()).collect();
        assert_eq!(positions, ["f:2", "f:3", "f:6"]);
        let fast = d
            .decode_chunk(format!("{}\n", text.lines().next().expect("line")).as_bytes(), 1, "f")
            .expect("ok");
        assert_eq!(fast.batch.expect("row").num_rows(), 1);
        let bad_utf8 = d.decode_chunk(b"\xff\xfe\n", 7, "f").expect("ok");
        assert_eq!(bad_utf8.errors[0].position, "f:7");
        assert_eq!(bad_utf8.errors[0].reason, "invalid UTF-8");
        let reasons: Vec<_> = out.errors.iter().map(|e| e.reason.as_str()).collect();
        // Arrow's reasons, each naming what is wrong with its line: the type of `user_id`, the text
        // that is no JSON, the missing non-nullable `user_id`.
        assert_eq!(
            reasons,
            [
                r#"Json error: whilst decoding field 'user_id': failed to parse "abc" as Int64"#,
                "Json error: Encountered unexpected 'o' whilst parsing literal",
                r#"Json error: Encountered unmasked nulls in non-nullable StructArray child: Field { "user_id": Int64 }"#,
            ]
        );
        assert_eq!(out.errors[1].raw, "not json at all");
    }

    #[test]
    fn timestamps_read_as_text_decode_as_arrow_json_decodes_them() {
        let line =
            |t: &str| format!(r#"{{"user_id":1,"course_id":2,"region":"eu","purchased":false,"event_time":{t}}}"#);
        let arrow_json = |chunk: &str| {
            let mut d = JsonReaderBuilder::new(course_schema())
                .build_decoder()
                .expect("decoder");
            d.decode(chunk.as_bytes())
                .and_then(|_| d.flush())
                .map_err(|e| e.to_string())
        };
        let d = LineDecoder::new(course_schema(), Format::Json);
        // Strings of the common shape and others (offsets, a space, no time, a leap second).
        let texts = [
            r#""2026-01-01T00:00:00.123Z""#,
            r#""2025-12-31T23:59:59Z""#,
            r#""2026-01-01 01:00:00+01:00""#,
            r#""2026-01-01""#,
            r#""2016-12-31T23:59:60Z""#,
            r#""1960-02-29T12:00:00.5""#,
        ];
        let chunk: String = texts.iter().map(|t| line(t) + "\n").collect();
        let got = d.decode_chunk(chunk.as_bytes(), 1, "f").expect("decode");
        assert!(got.errors.is_empty(), "{:?}", got.errors);
        assert_eq!(got.batch, arrow_json(&chunk).expect("arrow decodes it"));
        assert!(d.timestamps_as_text.load(std::sync::atomic::Ordering::Relaxed));
        // A bad timestamp, a NULL one (the column is NOT NULL): the same reasons as arrow-json's
        // (naming the column's type, not text), and the text path stays on.
        for t in [r#""2026-02-30T00:00:00Z""#, "null", "true"] {
            let bad = line(t) + "\n";
            let got = d.decode_chunk(bad.as_bytes(), 9, "f").expect("decode");
            assert_eq!(got.errors.len(), 1);
            assert_eq!(got.errors[0].reason, arrow_json(&bad).expect_err("arrow refuses it"));
            assert!(d.timestamps_as_text.load(std::sync::atomic::Ordering::Relaxed));
        }
        // Epoch numbers (arrow-json takes them as the column's unit): the same values, and the
        // decoder stops trying text first for this stream.
        let numbers: String = ["1767225600123", "-5"].iter().map(|t| line(t) + "\n").collect();
        let got = d.decode_chunk(numbers.as_bytes(), 1, "f").expect("decode");
        assert_eq!(got.batch, arrow_json(&numbers).expect("arrow decodes it"));
        assert!(!d.timestamps_as_text.load(std::sync::atomic::Ordering::Relaxed));
        let got = d.decode_chunk(chunk.as_bytes(), 1, "f").expect("decode");
        assert_eq!(got.batch, arrow_json(&chunk).expect("arrow decodes it"));
    }

    #[test]
    fn a_chunk_longer_than_a_piece_decodes_in_pieces_into_one_batch_in_order() {
        let n = 2 * DECODE_PIECE_ROWS + 1_000;
        let line = |u: usize, t: &str| {
            format!(r#"{{"user_id":{u},"course_id":2,"region":"eu","purchased":false,"event_time":{t}}}"#)
        };
        let ts = |u: usize| {
            format!(
                r#""2026-01-01T00:{:02}:{:02}.{:03}Z""#,
                u / 60_000 % 60,
                u / 1000 % 60,
                u % 1000
            )
        };
        let chunk = |bad: Option<usize>, number: Option<usize>| -> String {
            (0..n)
                .map(|u| match (Some(u) == bad, Some(u) == number) {
                    (true, _) => "{\"user_id\":\n".to_string(),
                    (_, true) => line(u, &u.to_string()) + "\n",
                    _ => line(u, &ts(u)) + "\n",
                })
                .collect()
        };
        let d = LineDecoder::new(course_schema(), Format::Json);
        let clean = chunk(None, None);
        let whole = {
            let mut a = JsonReaderBuilder::new(course_schema())
                .with_batch_size(n)
                .build_decoder()
                .expect("decoder");
            a.decode(clean.as_bytes()).expect("decode");
            a.flush().expect("flush").expect("rows")
        };
        let got = d.decode_chunk(clean.as_bytes(), 1, "f").expect("decode");
        assert!(got.errors.is_empty());
        assert_eq!(got.batch.as_ref(), Some(&whole));
        // A malformed line in the second piece: every other row, in order, and the line named.
        let bad = DECODE_PIECE_ROWS + 7;
        let got = d
            .decode_chunk(chunk(Some(bad), None).as_bytes(), 1, "f")
            .expect("decode");
        let b = got.batch.expect("rows");
        let users = b.column(0).as_any().downcast_ref::<Int64Array>().expect("i64");
        let want: Vec<i64> = (0..n as i64).filter(|u| *u != bad as i64).collect();
        assert_eq!(users.values().to_vec(), want);
        let positions: Vec<_> = got.errors.iter().map(|e| e.position.clone()).collect();
        assert_eq!(positions, [format!("f:{}", bad + 1)]);
        // An epoch number in the third piece: arrow-json's values for the whole chunk.
        let numbers = chunk(None, Some(2 * DECODE_PIECE_ROWS + 3));
        let got = d.decode_chunk(numbers.as_bytes(), 1, "f").expect("decode");
        let mut a = JsonReaderBuilder::new(course_schema())
            .with_batch_size(n)
            .build_decoder()
            .expect("decoder");
        a.decode(numbers.as_bytes()).expect("decode");
        assert_eq!(got.batch, a.flush().expect("flush"));
    }

    #[test]
    fn csv_decodes_and_isolates() {
        let d = LineDecoder::new(
            course_schema(),
            Format::Csv {
                header: true,
                delimiter: b',',
            },
        );
        let text = "1,2,eu-west,false,2026-01-01T00:00:00.000Z\nx,2,eu-west,false,2026-01-01T00:00:00Z\n5,6,us-east,true,2026-01-01T00:00:01Z";
        let out = d.decode(lines(text)).expect("decode");
        assert_eq!(out.batch.expect("rows").num_rows(), 2);
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].position, "line 2");
    }

    /// JSON nested 100 000 deep (as a field's value, or as the whole line) is a bad record, not a
    /// stack overflow: arrow's tape decoder keeps its nesting on the heap and serde_json, which
    /// names the reason, stops at 128 levels.
    #[test]
    fn json_nested_100_000_deep_is_a_bad_record() {
        let d = LineDecoder::new(course_schema(), Format::Json);
        let good = r#"{"user_id":1,"course_id":2,"region":"eu","purchased":false,"event_time":"2026-01-01T00:00:00Z"}"#;
        let deep = [
            format!(
                r#"{{"user_id":1,"region":{}1{}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            format!(
                r#"{{"user_id":1,"region":{}1{}}}"#,
                r#"{"a":"#.repeat(100_000),
                "}".repeat(100_000)
            ),
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            "{\"a\":".repeat(100_000),
        ];
        for line in &deep {
            let chunk = format!("{good}\n{line}\n{good}\n");
            let out = d.decode_chunk(chunk.as_bytes(), 1, "f").expect("decode");
            assert_eq!(out.batch.map(|b| b.num_rows()), Some(2));
            let positions: Vec<_> = out.errors.iter().map(|e| e.position.as_str()).collect();
            assert_eq!(positions, ["f:2"]);
            let records = d
                .decode_records(&[(7, good.as_bytes()), (8, line.as_bytes())], "k")
                .expect("decode");
            assert_eq!(records.batch.map(|b| b.num_rows()), Some(1));
            assert_eq!(records.errors.len(), 1);
        }
    }

    /// Found by fuzzing (tests/fuzz.rs, json_lines): a line of a vertical tab was skipped as blank
    /// on the line-by-line path and a bad record on the others, so rows + errors depended on the
    /// path the chunk took. Every path now asks `blank`.
    #[test]
    fn a_line_is_blank_or_a_record_whatever_the_path() {
        let d = LineDecoder::new(course_schema(), Format::Json);
        let good = r#"{"user_id":1,"course_id":2,"region":"eu","purchased":false,"event_time":"2026-01-01T00:00:00Z"}"#;
        for (odd, is_record) in [("\u{b}  ", true), ("\u{a0}", true), ("\u{c} \t", false), (" \r", false)] {
            let chunk = format!("{good}\n{odd}\n{good}\n");
            let chunked = d.decode_chunk(chunk.as_bytes(), 1, "f").expect("decode");
            let lines = [
                ("f:1".to_string(), good),
                ("f:2".to_string(), odd),
                ("f:3".to_string(), good),
            ];
            let one_by_one = d.decode(lines).expect("decode");
            let records = d
                .decode_records(&[(1, good.as_bytes()), (2, odd.as_bytes()), (3, good.as_bytes())], "k")
                .expect("decode");
            for (path, out) in [("chunk", &chunked), ("lines", &one_by_one)] {
                assert_eq!(out.batch.as_ref().map(|b| b.num_rows()), Some(2), "{odd:?} {path}");
                assert_eq!(
                    out.errors.len(),
                    usize::from(is_record),
                    "{odd:?} {path}: {:?}",
                    out.errors
                );
            }
            // A message is a record even when blank (it is reported as empty).
            assert_eq!(records.errors.len(), 1, "{odd:?}: {:?}", records.errors);
        }
    }

    #[test]
    fn a_decoder_of_some_columns_makes_those_and_checks_only_those() {
        let schema = course_schema();
        let keep = [1, 4]; // course_id, event_time
        let good = |u: i64, c: i64| {
            format!(
                r#"{{"user_id":{u},"course_id":{c},"region":"eu","purchased":true,"event_time":"2026-01-01T00:00:0{u}Z"}}"#
            )
        };
        // A wrong type in a column not read (user_id, purchased), a NOT NULL one not read missing.
        let unread_bad = [
            r#"{"user_id":"three","course_id":3,"purchased":"no","event_time":"2026-01-01T00:00:03Z"}"#.to_string(),
            r#"{"course_id":4,"event_time":"2026-01-01T00:00:04Z"}"#.to_string(),
        ];
        let read_bad = r#"{"user_id":5,"course_id":"five","event_time":"2026-01-01T00:00:05Z"}"#;
        let text = [
            good(1, 1),
            good(2, 2),
            unread_bad[0].clone(),
            unread_bad[1].clone(),
            read_bad.to_string(),
            "{oops".into(),
        ]
        .join("\n");
        let d = LineDecoder::with_columns(schema.clone(), Format::Json, &keep).expect("decoder");
        assert_eq!(d.schema().as_ref(), &schema.project(&keep).expect("project"));
        let out = d.decode_chunk(text.as_bytes(), 1, "f").expect("decode");
        let b = out.batch.expect("rows");
        assert_eq!(b.schema(), *d.schema());
        let courses = b.column(0).as_any().downcast_ref::<Int64Array>().expect("i64");
        assert_eq!(courses.values().to_vec(), vec![1, 2, 3, 4]);
        let times = b
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("ts");
        assert_eq!(times.value(3) - times.value(0), 3_000);
        let positions: Vec<_> = out.errors.iter().map(|e| e.position.as_str()).collect();
        assert_eq!(positions, ["f:5", "f:6"], "{:?}", out.errors);
        // Every column: the same text has two more bad records.
        let all = LineDecoder::new(schema.clone(), Format::Json)
            .decode_chunk(text.as_bytes(), 1, "f")
            .expect("decode");
        assert_eq!(all.errors.len(), 4, "{:?}", all.errors);
        // CSV: fields stay positional; a line must still have every field.
        let csv = Format::Csv {
            header: false,
            delimiter: b',',
        };
        let d = LineDecoder::with_columns(schema.clone(), csv, &keep).expect("decoder");
        let text = "1,7,eu,true,2026-01-01T00:00:01Z\nx,8,eu,maybe,2026-01-01T00:00:02Z\n3,nine,eu,true,2026-01-01T00:00:03Z\n4,10,eu\n";
        let out = d.decode_chunk(text.as_bytes(), 1, "f").expect("decode");
        let b = out.batch.expect("rows");
        assert_eq!(b.schema(), *d.schema());
        let courses = b.column(0).as_any().downcast_ref::<Int64Array>().expect("i64");
        assert_eq!(courses.values().to_vec(), vec![7, 8]);
        let positions: Vec<_> = out.errors.iter().map(|e| e.position.as_str()).collect();
        assert_eq!(positions, ["f:3", "f:4"], "{:?}", out.errors);
        assert!(
            LineDecoder::with_columns(schema, Format::Json, &[4, 1]).is_err(),
            "columns out of order"
        );
    }
}
