//! `connector = 'file'`: a bounded source of JSON-lines or CSV records, and a JSON-lines sink
//! (`connector = 'file'` / `'console'`) for debugging.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use datafusion::arrow::datatypes::SchemaRef;

use super::{Output, Poll, Sink, SinkMode, Source};
use crate::error::{Error, Result};
use crate::format::{BadRecord, Format, LineDecoder, to_json_lines};
use crate::sql::parser::Options;

#[derive(Debug, Clone)]
pub struct FileOptions {
    pub path: PathBuf,
    pub format: Format,
}

impl FileOptions {
    pub fn parse(o: &Options) -> Result<Self> {
        o.check_keys("connector 'file'", &["connector", "path", "format", "header", "delimiter"])?;
        let path = PathBuf::from(o.required("path", "connector 'file'")?);
        let header = o.parse_or("header", true)?;
        let delimiter = match o.get("delimiter") {
            None => b',',
            Some(d) if d.len() == 1 => d.as_bytes()[0],
            Some(d) => return Err(Error::option("delimiter", format!("must be one character, found '{d}'"))),
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
    reader: BufReader<File>,
    decoder: LineDecoder,
    path: String,
    line_no: u64,
    skip_header: bool,
    done: bool,
}

impl FileSource {
    pub fn open(opts: FileOptions, schema: SchemaRef) -> Result<Self> {
        let file = File::open(&opts.path).map_err(|e| Error::io(&opts.path, e))?;
        let skip_header = matches!(opts.format, Format::Csv { header: true, .. });
        Ok(FileSource {
            reader: BufReader::with_capacity(1 << 20, file),
            decoder: LineDecoder::new(schema, opts.format),
            path: opts.path.display().to_string(),
            line_no: 0,
            skip_header,
            done: false,
        })
    }
}

impl Source for FileSource {
    fn poll(&mut self, max: usize) -> Result<Poll> {
        if self.done {
            return Ok(Poll::Exhausted);
        }
        let mut lines: Vec<(u64, String)> = Vec::with_capacity(max.min(1 << 16));
        let mut bad = Vec::new();
        let mut buf = Vec::new();
        while lines.len() < max {
            buf.clear();
            let n = self.reader.read_until(b'\n', &mut buf).map_err(|e| Error::io(&self.path, e))?;
            if n == 0 {
                self.done = true;
                break;
            }
            self.line_no += 1;
            if self.skip_header {
                self.skip_header = false;
                continue;
            }
            while buf.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                buf.pop();
            }
            match String::from_utf8(std::mem::take(&mut buf)) {
                Ok(s) => lines.push((self.line_no, s)),
                Err(e) => bad.push(BadRecord {
                    position: format!("{}:{}", self.path, self.line_no),
                    raw: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    reason: "invalid UTF-8".into(),
                }),
            }
        }
        let path = &self.path;
        let decoded = self.decoder.decode(lines.iter().map(|(n, l)| (format!("{path}:{n}"), l.as_str())))?;
        bad.extend(decoded.errors);
        if decoded.batch.is_none() && bad.is_empty() && self.done {
            return Ok(Poll::Exhausted);
        }
        Ok(Poll::Ready(decoded.batch, bad))
    }

    fn bounded(&self) -> bool {
        true
    }
}

/// JSON lines to a file (appending) or to stdout.
pub struct JsonLinesSink {
    out: Box<dyn Write + Send>,
    path: String,
}

impl JsonLinesSink {
    pub fn file(path: &str) -> Result<Self> {
        let p = PathBuf::from(path);
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(|e| Error::io(&p, e))?;
        Ok(JsonLinesSink { out: Box::new(BufWriter::new(f)), path: path.to_string() })
    }

    pub fn stdout() -> Self {
        JsonLinesSink { out: Box::new(std::io::stdout()), path: "<stdout>".into() }
    }
}

impl Sink for JsonLinesSink {
    fn mode(&self) -> SinkMode {
        SinkMode::Append
    }
    fn write(&mut self, out: &Output) -> Result<()> {
        let bytes = to_json_lines(&out.batch)?;
        self.out.write_all(&bytes).map_err(|e| Error::io(&self.path, e))
    }
    fn commit(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}
