//! Text formats ⇄ Arrow, with per-record error capture.
//!
//! Decoding tries the whole chunk at once with arrow's vectorised readers (the fast path). Only when
//! that fails is the chunk decoded line by line, so that each bad record is isolated with its reason
//! and every good record still gets through.

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::ReaderBuilder as JsonReaderBuilder;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

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

pub struct LineDecoder {
    schema: SchemaRef,
    format: Format,
}

impl LineDecoder {
    pub fn new(schema: SchemaRef, format: Format) -> Self {
        LineDecoder { schema, format }
    }

    fn decode_bytes(&self, bytes: &[u8], rows: usize) -> Result<Option<RecordBatch>, String> {
        let rows = rows.max(1);
        match self.format {
            Format::Json => {
                let mut d = JsonReaderBuilder::new(self.schema.clone())
                    .with_batch_size(rows)
                    .build_decoder()
                    .map_err(|e| e.to_string())?;
                let used = d.decode(bytes).map_err(|e| e.to_string())?;
                if used < bytes.len() {
                    return Err("more records than expected".into());
                }
                d.flush().map_err(|e| e.to_string())
            }
            Format::Csv { delimiter, .. } => {
                let mut d = datafusion::arrow::csv::ReaderBuilder::new(self.schema.clone())
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
        let newlines = chunk.iter().filter(|b| **b == b'\n').count();
        let lines = newlines + usize::from(chunk.last().is_some_and(|b| *b != b'\n'));
        if lines == 0 {
            return Ok(Decoded {
                batch: None,
                errors: vec![],
            });
        }
        // Fast path: the whole chunk in one vectorised decode.
        if std::str::from_utf8(chunk).is_ok()
            && let Ok(Some(b)) = self.decode_bytes(chunk, lines)
            && b.num_rows() == lines
        {
            return Ok(Decoded {
                batch: Some(b),
                errors: vec![],
            });
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

    /// Decode one record per message (e.g. Kafka values); positions of bad records are
    /// `origin@offset`.
    pub fn decode_records(&self, records: &[(i64, &[u8])], origin: &str) -> Result<Decoded> {
        if records.is_empty() {
            return Ok(Decoded {
                batch: None,
                errors: vec![],
            });
        }
        let mut buf = Vec::with_capacity(records.iter().map(|(_, r)| r.len() + 1).sum());
        for (_, r) in records {
            buf.extend_from_slice(r);
            buf.push(b'\n');
        }
        if std::str::from_utf8(&buf).is_ok()
            && let Ok(Some(b)) = self.decode_bytes(&buf, records.len())
            && b.num_rows() == records.len()
        {
            return Ok(Decoded {
                batch: Some(b),
                errors: vec![],
            });
        }
        let mut text = Vec::with_capacity(records.len());
        let mut errors = Vec::new();
        for (off, raw) in records {
            match std::str::from_utf8(raw) {
                Ok(t) if !t.trim().is_empty() => text.push((format!("{origin}@{off}"), t)),
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
            if line.trim().is_empty() {
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
        assert!(out.errors[0].reason.to_lowercase().contains("user_id") || !out.errors[0].reason.is_empty());
        assert_eq!(out.errors[1].raw, "not json at all");
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
}
