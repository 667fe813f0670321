//! `connector = 'file'`: a bounded source of JSON-lines or CSV records, and a JSON-lines sink
//! (`connector = 'file'` / `'console'`) for debugging.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;

use datafusion::arrow::datatypes::SchemaRef;

use super::{Output, Poll, Sink, SinkMode, Source};
use crate::error::{Error, Result};
use crate::format::{Format, LineDecoder, to_json_lines};
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
    decoder: LineDecoder,
    path: String,
    /// Bytes read but not yet decoded (an incomplete last line).
    pending: Vec<u8>,
    /// Line number of the first line in `pending`.
    line_no: u64,
    skip_header: bool,
    eof: bool,
}

impl FileSource {
    pub fn open(opts: FileOptions, schema: SchemaRef) -> Result<Self> {
        let file = File::open(&opts.path).map_err(|e| Error::io(&opts.path, e))?;
        let skip_header = matches!(opts.format, Format::Csv { header: true, .. });
        Ok(FileSource {
            file,
            decoder: LineDecoder::new(schema, opts.format),
            path: opts.path.display().to_string(),
            pending: Vec::new(),
            line_no: 1,
            skip_header,
            eof: false,
        })
    }

    /// Byte offset just past the `max`-th newline in `pending`, if there are that many.
    fn cut(&self, max: usize) -> Option<usize> {
        let mut seen = 0;
        for (i, b) in self.pending.iter().enumerate() {
            if *b == b'\n' {
                seen += 1;
                if seen == max {
                    return Some(i + 1);
                }
            }
        }
        None
    }
}

impl Source for FileSource {
    fn poll(&mut self, max: usize) -> Result<Poll> {
        let mut scanned_lines = self.pending.iter().filter(|b| **b == b'\n').count();
        while !self.eof && scanned_lines < max + usize::from(self.skip_header) {
            let old = self.pending.len();
            self.pending.resize(old + (1 << 20), 0);
            let n = self
                .file
                .read(&mut self.pending[old..])
                .map_err(|e| Error::io(&self.path, e))?;
            self.pending.truncate(old + n);
            if n == 0 {
                self.eof = true;
            }
            scanned_lines += self.pending[old..].iter().filter(|b| **b == b'\n').count();
        }
        if self.skip_header {
            match self.pending.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.pending.drain(..=i);
                    self.line_no += 1;
                    self.skip_header = false;
                }
                None if self.eof => self.pending.clear(),
                None => return Ok(Poll::Pending),
            }
        }
        let end = match self.cut(max) {
            Some(end) => end,
            None if self.eof => self.pending.len(),
            None => return Ok(Poll::Pending),
        };
        if end == 0 {
            return Ok(Poll::Exhausted);
        }
        let chunk: Vec<u8> = self.pending.drain(..end).collect();
        let first = self.line_no;
        self.line_no += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        let decoded = self.decoder.decode_chunk(&chunk, first, &self.path)?;
        Ok(Poll::Ready(decoded.batch, decoded.errors))
    }

    fn bounded(&self) -> bool {
        true
    }
}

/// JSON lines to a file (appending) or to stdout.
pub struct JsonLinesSink {
    out: Box<dyn Write + Send>,
    path: String,
    /// Each row with its kind in an `op` field (`format = 'changelog'`).
    changelog: bool,
    /// Debezium-style JSON (`format = 'debezium-json'`).
    debezium: bool,
}

impl JsonLinesSink {
    pub fn file(path: &str, format: Option<&str>) -> Result<Self> {
        let p = PathBuf::from(path);
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| Error::io(&p, e))?;
        Ok(JsonLinesSink {
            out: Box::new(BufWriter::new(f)),
            path: path.to_string(),
            changelog: format == Some("changelog"),
            debezium: format == Some("debezium-json"),
        })
    }

    pub fn stdout() -> Self {
        JsonLinesSink {
            out: Box::new(std::io::stdout()),
            path: "<stdout>".into(),
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
        self.out.write_all(&bytes).map_err(|e| Error::io(&self.path, e))
    }
    fn commit(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}
