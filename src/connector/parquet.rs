//! `connector = 'parquet'`: an append-only archive. Rows go to a file named `.part-….inprogress` that
//! is renamed to `part-….parquet` on commit, so readers only ever see complete files. A file is
//! committed when it reaches `rollover_rows` rows, when `rollover_seconds` have passed since it was
//! opened, and when the query stops.

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;

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

struct OpenFile {
    writer: ArrowWriter<File>,
    temp: PathBuf,
    rows: usize,
    opened: Instant,
}

pub struct ParquetSink {
    opts: ParquetOptions,
    schema: SchemaRef,
    current: Option<OpenFile>,
    run_id: String,
    seq: u64,
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
            seq: 0,
            files: vec![],
        }
    }

    fn final_name(&self) -> PathBuf {
        self.opts
            .path
            .join(format!("part-{}-{:05}.parquet", self.run_id, self.seq))
    }

    fn open(&mut self) -> Result<&mut OpenFile> {
        if self.current.is_none() {
            std::fs::create_dir_all(&self.opts.path).map_err(|e| Error::io(&self.opts.path, e))?;
            let temp = self
                .opts
                .path
                .join(format!(".part-{}-{:05}.parquet.inprogress", self.run_id, self.seq));
            let file = File::create(&temp).map_err(|e| Error::io(&temp, e))?;
            let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
            let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(props))
                .map_err(|e| Error::External(format!("parquet writer for {}: {e}", temp.display())))?;
            self.current = Some(OpenFile {
                writer,
                temp,
                rows: 0,
                opened: Instant::now(),
            });
        }
        self.current
            .as_mut()
            .ok_or_else(|| Error::Internal("parquet file not open".into()))
    }

    fn roll(&mut self) -> Result<()> {
        if let Some(f) = self.current.take() {
            f.writer
                .close()
                .map_err(|e| Error::External(format!("closing {}: {e}", f.temp.display())))?;
            let dest = self.final_name();
            std::fs::rename(&f.temp, &dest).map_err(|e| Error::io(&dest, e))?;
            self.files.push(dest);
            self.seq += 1;
        }
        Ok(())
    }
}

impl Sink for ParquetSink {
    fn mode(&self) -> SinkMode {
        SinkMode::Append
    }

    fn write(&mut self, out: &Output) -> Result<()> {
        if out.batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = if self.opts.changelog {
            out.with_op_column()?
        } else {
            out.batch.clone()
        };
        let batch = batch.clone().with_schema(self.schema.clone()).unwrap_or(batch);
        let max_rows = self.opts.rollover_rows;
        let f = self.open()?;
        f.writer
            .write(&batch)
            .map_err(|e| Error::External(format!("writing {}: {e}", f.temp.display())))?;
        f.rows += batch.num_rows();
        let full = f.rows >= max_rows || f.opened.elapsed().as_secs() >= self.opts.rollover_seconds.max(1);
        if full {
            self.roll()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.roll()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    #[test]
    fn rolls_and_renames_on_commit() {
        let dir = tempfile::tempdir().expect("tmp");
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let opts = ParquetOptions {
            path: dir.path().join("out"),
            rollover_rows: 3,
            rollover_seconds: 3600,
            changelog: false,
        };
        let mut sink = ParquetSink::new(opts, schema.clone());
        let batch = |v: Vec<i64>| {
            Output::append(RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).expect("b"))
        };
        sink.write(&batch(vec![1, 2])).expect("w");
        let visible = |d: &std::path::Path| {
            std::fs::read_dir(d)
                .expect("dir")
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                .count()
        };
        assert_eq!(visible(&dir.path().join("out")), 0, "nothing visible before commit");
        sink.write(&batch(vec![3])).expect("w");
        assert_eq!(visible(&dir.path().join("out")), 1, "rolled at 3 rows");
        sink.write(&batch(vec![4])).expect("w");
        sink.commit().expect("commit");
        assert_eq!(visible(&dir.path().join("out")), 2);
        assert_eq!(sink.files.len(), 2);
        let f = File::open(&sink.files[0]).expect("open");
        let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .expect("r")
            .build()
            .expect("b");
        let rows: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
        assert_eq!(rows, 3);
    }
}
