//! Connectors: where rows come from and where results go. One module per connector; `open_source` and
//! `open_sink` below are the single registry that lists them all (no magic registration).

mod decode_pool;
pub mod file;
pub mod generator;
pub mod hbase;
pub mod hbase_thrift2;
pub mod kafka;
pub mod kafka_shared;
pub mod memory;
pub mod nexmark;
pub mod parquet;
pub mod prefetch;
pub mod system_stream;
pub mod testing;

pub use prefetch::Prefetch;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use datafusion::arrow::array::{ArrayRef, Int8Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::format::BadRecord;
use crate::operator::RowKind;
use crate::plan::Accepts;
use crate::sql::parser::{Options, SourceDef};

/// What a source has for the engine right now.
pub enum Poll {
    /// Decoded rows (if any) and records that failed to decode.
    Ready(Option<RecordBatch>, Vec<BadRecord>),
    /// Nothing yet (a paced or unbounded source).
    Pending,
    /// A bounded source has been read to its end.
    Exhausted,
    /// Rows of a changelog (a materialized view read as a stream), with their kinds.
    Changes(RecordBatch, Int8Array),
}

pub trait Source: Send {
    /// Up to `max` rows. Never blocks for long.
    fn poll(&mut self, max: usize) -> Result<Poll>;
    /// Whether this source ends by itself.
    fn bounded(&self) -> bool;
    /// A watermark the source computes itself from the rows it has returned (e.g. the minimum over
    /// its active partitions); `None` lets the engine use `max event time − delay`.
    fn watermark(&self) -> Option<i64> {
        None
    }
    /// Whether rows come from several ordered parts (Kafka partitions) interleaved: then a row's
    /// position in a batch says nothing about the watermark it arrived under, and the engine gives
    /// every row of a batch the watermark from before the poll.
    fn partitioned(&self) -> bool {
        false
    }
    /// Everything with event time below `safe_ts` among the first `polls` `Ready` results has reached
    /// the sink durably: the source may record its progress (e.g. commit Kafka offsets) up to there.
    /// `watermark` is the query's: every window ending at or before it has been emitted completely;
    /// a source that can store it with its progress returns it from [`Source::resumed_watermark`].
    fn commit(&mut self, _safe_ts: i64, _polls: u64, _watermark: i64) -> Result<()> {
        Ok(())
    }
    /// The query watermark stored with the progress this source resumed from (see `commit`). Rows the
    /// source reads again after a restart may then rebuild windows already emitted from part of their
    /// rows; the engine emits no window ending at or before this.
    fn resumed_watermark(&self) -> Option<i64> {
        None
    }
    /// Where this source is, for a checkpoint: enough to read on from right after the last row
    /// `poll` returned (Kafka: the next offset of each partition; a file: its byte offset; a
    /// generator: the events made). `None`: this source cannot be checkpointed.
    fn position(&self) -> Option<serde_json::Value> {
        None
    }
    /// Read on from `position` (what [`Source::position`] returned), before the first poll.
    fn seek(&mut self, _position: &serde_json::Value) -> Result<()> {
        Err(Error::plan("this source cannot resume from a checkpoint"))
    }
    /// Make only `columns` of the source's schema (indices, ascending): the ones its query reads.
    /// Called once, before `decode_on` and the first poll. A source that cannot ignores it and
    /// goes on making every column; [`Source::columns`] says which it makes.
    fn project(&mut self, _columns: &[usize]) -> Result<()> {
        Ok(())
    }
    /// The columns of the source's schema its batches hold, if not all (see [`Source::project`]).
    fn columns(&self) -> Option<Vec<usize>> {
        None
    }
    /// Decode on `workers` threads where the source can (a file: chunks of lines decoded in
    /// parallel, returned in order). Called once, before the first poll.
    fn decode_on(&mut self, _workers: usize) -> Result<()> {
        Ok(())
    }
    /// State the source keeps for a checkpoint beyond its position (a materialized view read as a
    /// stream: the rows it has consumed). `None`: nothing.
    fn snapshot(&self) -> Result<Option<crate::operator::state::OpState>> {
        Ok(None)
    }
    /// Take back what [`Source::snapshot`] wrote, before the first poll.
    fn restore(&mut self, _state: crate::operator::state::OpState) -> Result<()> {
        Err(Error::plan("this source keeps no state to restore"))
    }
}

/// Upsert sinks get the changed window rows after every micro-batch; append sinks get each window row
/// once, when the watermark passes its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    Append,
    Upsert,
}

/// Rows for a sink: an append-only batch, or a changelog with each row's kind and the columns that
/// identify a row.
#[derive(Debug, Clone)]
pub struct Output {
    pub batch: RecordBatch,
    /// Row kinds ([`RowKind`] as `i8`); `None`: every row is an insert.
    pub kinds: Option<Int8Array>,
    /// Columns that identify a row (what an update replaces, a delete removes); `None`: the whole row.
    pub key: Option<Arc<[usize]>>,
}

impl Output {
    /// Inserts only.
    pub fn append(batch: RecordBatch) -> Output {
        Output {
            batch,
            kinds: None,
            key: None,
        }
    }

    pub fn kind(&self, row: usize) -> RowKind {
        match &self.kinds {
            None => RowKind::Insert,
            Some(k) => RowKind::from_i8(k.value(row)),
        }
    }

    /// Whether every row is an insert.
    pub fn inserts_only(&self) -> bool {
        self.kinds
            .as_ref()
            .is_none_or(|k| k.values().iter().all(|v| *v == RowKind::Insert as i8))
    }

    /// The rows with a leading `op` column holding each row's kind (`+I`, `-U`, `+U`, `-D`): the
    /// changelog written as rows, which replayed in order gives the final result.
    pub fn with_op_column(&self) -> Result<RecordBatch> {
        let ops: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..self.batch.num_rows()).map(|i| self.kind(i).short()),
        ));
        let mut fields = vec![Arc::new(Field::new("op", DataType::Utf8, false))];
        fields.extend(self.batch.schema().fields().iter().cloned());
        let mut cols = vec![ops];
        cols.extend(self.batch.columns().iter().cloned());
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}

impl Output {
    /// The rows as Debezium-style JSON lines (`{"before": …, "after": …, "op": "c" | "d"}`, as
    /// Flink's `debezium-json` writes a changelog: an insert or update-after is a create of its row,
    /// a delete or update-before a delete of it).
    pub fn to_debezium_json(&self) -> Result<Vec<u8>> {
        let rows = crate::format::to_json_lines(&self.batch)?;
        let mut out = Vec::with_capacity(rows.len() + 40 * self.batch.num_rows());
        for (i, line) in rows.split(|c| *c == b'\n').filter(|l| !l.is_empty()).enumerate() {
            if self.kind(i).is_add() {
                out.extend_from_slice(b"{\"before\":null,\"after\":");
                out.extend_from_slice(line);
                out.extend_from_slice(b",\"op\":\"c\"}\n");
            } else {
                out.extend_from_slice(b"{\"before\":");
                out.extend_from_slice(line);
                out.extend_from_slice(b",\"after\":null,\"op\":\"d\"}\n");
            }
        }
        Ok(out)
    }
}

/// The schema of a changelog written as rows: `op`, then the query's columns.
pub fn changelog_schema(schema: &SchemaRef) -> SchemaRef {
    let mut fields = vec![Arc::new(Field::new("op", DataType::Utf8, false))];
    fields.extend(schema.fields().iter().cloned());
    Arc::new(Schema::new(fields))
}

pub trait Sink: Send {
    fn mode(&self) -> SinkMode;
    fn write(&mut self, out: &Output) -> Result<()>;
    /// Make everything written so far durable and visible (e.g. rename Parquet temp files).
    fn commit(&mut self) -> Result<()>;
    /// The query ended by itself (its sources were read to their end): nothing more will come.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
    /// Checkpoint, phase 1, before checkpoint `epoch` is written: make everything written since
    /// the last epoch durable but not yet visible where publishing could show it twice (Parquet:
    /// files closed under staged names). Returns what recovery needs to finish publishing it,
    /// stored in the checkpoint. By default: [`Sink::commit`] (a sink whose writes are idempotent).
    fn prepare(&mut self, _epoch: u64) -> Result<serde_json::Value> {
        self.commit()?;
        Ok(serde_json::Value::Null)
    }
    /// Checkpoint, phase 2: checkpoint `epoch` is durable; make its output (and that of every
    /// earlier epoch not yet published) visible.
    fn publish(&mut self, _epoch: u64) -> Result<()> {
        Ok(())
    }
    /// At start, before any write: the query resumes from checkpoint `epoch` (`None`: from
    /// scratch), whose [`Sink::prepare`] returned `pending`. Publish that epoch's output if it was
    /// not, and discard what later epochs left behind (they will be written again).
    fn recover(&mut self, _epoch: Option<u64>, _pending: &serde_json::Value) -> Result<()> {
        Ok(())
    }
    /// What the sink itself holds that a restart must get back (a materialized view's rows), for
    /// the checkpoint. `None`: nothing (its output lives outside the process).
    fn snapshot(&self) -> Result<Option<crate::operator::state::OpState>> {
        Ok(None)
    }
    /// Take back what [`Sink::snapshot`] wrote (at start, after `recover`, before any write).
    fn restore(&mut self, _state: crate::operator::state::OpState) -> Result<()> {
        Err(Error::plan("this sink keeps no state to restore"))
    }
    /// A flag for the engine to set, from any thread, once the query is asked to stop: a sink
    /// blocked retrying a service that does not answer (HBase through an outage) then gives up with
    /// an error instead of waiting for it forever. While the service answers the sink keeps
    /// writing, so the stop's last commit still goes out. Take it right after opening the sink.
    /// `None` (the default): the sink never blocks for long.
    fn interrupt_handle(&self) -> Option<Arc<AtomicBool>> {
        None
    }
}

pub const SOURCE_CONNECTORS: &[&str] = &["generator", "file", "kafka", "hbase (tables)"];
pub const SINK_CONNECTORS: &[&str] = &["parquet", "file", "console", "blackhole", "kafka", "hbase"];

/// Check a source definition's options without opening it.
pub fn validate_source(def: &SourceDef) -> Result<()> {
    match def.options.get("connector").unwrap_or_default() {
        "generator" if def.options.get("kind") == Some("nexmark") => nexmark::source_options(def).map(|_| ()),
        "generator" => generator_options(def).map(|_| ()),
        "file" if def.lazy_path => file::FileOptions::parse(&def.options).map(|_| ()),
        // A table only written to (`INSERT INTO`), as Flink declares sinks.
        "parquet" | "console" | "blackhole" if def.kind == crate::sql::parser::SourceKind::Table => {
            validate_sink(&def.options)
        }
        "file" => file::FileOptions::parse(&def.options).and_then(|o| o.check_exists()),
        "kafka" => kafka::KafkaSourceOptions::parse(&def.options, &def.name).map(|_| ()),
        "hbase" if def.kind == crate::sql::parser::SourceKind::Table => {
            let o = hbase::table_options(&def.options)?;
            match o.row_key.iter().find(|c| def.schema.index_of(c).is_err()) {
                Some(c) => Err(Error::option(
                    "row_key",
                    format!("no column '{c}' in table '{}'", def.name),
                )),
                None => Ok(()),
            }
        }
        "hbase" => Err(Error::option(
            "connector",
            "'hbase' is a lookup table: declare it with CREATE TABLE",
        )),
        other => Err(Error::option(
            "connector",
            format!(
                "unknown source connector '{other}'; valid: {}",
                SOURCE_CONNECTORS.join(", ")
            ),
        )),
    }
}

fn generator_options(def: &SourceDef) -> Result<generator::GenOptions> {
    let o = &def.options;
    o.check_keys(
        "connector 'generator'",
        &[
            "connector",
            "kind",
            "seed",
            "rate",
            "events",
            "out_of_order_ms",
            "late_ratio",
        ],
    )?;
    match o.get("kind").unwrap_or("courses") {
        "courses" => {}
        other => {
            return Err(Error::option(
                "kind",
                format!("unknown generator kind '{other}'; valid: courses, nexmark"),
            ));
        }
    }
    let schema = generator::course_schema();
    for f in def.schema.fields() {
        if schema.field_with_name(f.name()).is_err() {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(Error::plan(format!(
                "column '{}' is not produced by generator kind 'courses'; it produces: {}",
                f.name(),
                have.join(", ")
            )));
        }
    }
    let d = generator::GenOptions::default();
    let rate: Option<f64> = o.parse_opt("rate")?;
    if rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(Error::option("rate", "must be > 0"));
    }
    let late_ratio = o.parse_or("late_ratio", d.late_ratio)?;
    if !(0.0..=1.0).contains(&late_ratio) {
        return Err(Error::option("late_ratio", "must be between 0 and 1"));
    }
    Ok(generator::GenOptions {
        seed: o.parse_or("seed", d.seed)?,
        events: o.parse_opt("events")?,
        rate,
        out_of_order_ms: o.parse_or("out_of_order_ms", d.out_of_order_ms)?,
        late_ratio,
    })
}

pub fn open_source(def: &SourceDef) -> Result<Box<dyn Source>> {
    validate_source(def)?;
    match def.options.get("connector").unwrap_or_default() {
        "generator" if def.options.get("kind") == Some("nexmark") => {
            let (opts, stream) = nexmark::source_options(def)?;
            Ok(Box::new(nexmark::NexmarkSource::new(opts, stream, def.schema.clone())))
        }
        "generator" => Ok(Box::new(generator::GeneratorSource::new(
            generator_options(def)?,
            def.schema.clone(),
        ))),
        "kafka" => Ok(Box::new(kafka::KafkaSource::open(def)?)),
        _ => Ok(Box::new(file::FileSource::open(
            file::FileOptions::parse(&def.options)?,
            def.schema.clone(),
        )?)),
    }
}

/// All rows of a bounded table (for lookup joins).
pub fn load_table(def: &SourceDef) -> Result<Vec<RecordBatch>> {
    if def.options.get("connector") == Some("hbase") {
        return hbase::load(def);
    }
    let mut src = open_source(def)?;
    if !src.bounded() {
        return Err(Error::plan(format!(
            "table '{}' must be bounded (a file, or a generator with events)",
            def.name
        )));
    }
    let mut out = Vec::new();
    loop {
        match src.poll(65_536)? {
            Poll::Ready(b, bad) => {
                if let Some(first) = bad.first() {
                    return Err(Error::plan(format!(
                        "table '{}': {} bad record(s); first at {}: {}",
                        def.name,
                        bad.len(),
                        first.position,
                        first.reason
                    )));
                }
                out.extend(b);
            }
            Poll::Pending => std::thread::sleep(std::time::Duration::from_millis(5)),
            Poll::Exhausted => return Ok(out),
            Poll::Changes(..) => return Err(Error::plan(format!("table '{}' is a changelog", def.name))),
        }
    }
}

pub fn validate_sink(options: &Options) -> Result<()> {
    match options.get("connector").unwrap_or_default() {
        "parquet" => parquet::ParquetOptions::parse(options).map(|_| ()),
        "file" => options
            .check_keys("connector 'file' (sink)", &["connector", "path", "format"])
            .and_then(|_| {
                options.required("path", "connector 'file'")?;
                json_only(options)
            }),
        "console" => options.check_keys("connector 'console'", &["connector"]),
        "kafka" => kafka::KafkaSink::validate(options),
        "hbase" => hbase::HBaseOptions::parse(options).map(|_| ()),
        // Discards rows of any stream: `format = 'changelog'` lets it take an updating one.
        "blackhole" => {
            options.check_keys("connector 'blackhole'", &["connector", "format"])?;
            match options.get("format") {
                None | Some("changelog") => Ok(()),
                Some(other) => Err(Error::option(
                    "format",
                    format!("'{other}' for connector 'blackhole'; valid: changelog"),
                )),
            }
        }
        other => Err(Error::option(
            "connector",
            format!(
                "unknown sink connector '{other}'; valid: {}",
                SINK_CONNECTORS.join(", ")
            ),
        )),
    }
}

/// Check the columns a sink's options name (HBase `row_key` and `timestamp_column`, Kafka `key`)
/// against the query's output schema, without opening the sink.
pub fn validate_sink_schema(options: &Options, schema: &SchemaRef) -> Result<()> {
    let has = |key: &str, column: &str| match schema.index_of(column) {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::option(
            key,
            format!(
                "no column '{column}' in the query's output ({})",
                kafka::field_names(schema)
            ),
        )),
    };
    match options.get("connector").unwrap_or_default() {
        "hbase" => {
            let o = hbase::HBaseOptions::parse(options)?;
            for c in &o.row_key {
                has("row_key", c)?;
            }
            if let Some(c) = &o.timestamp_column {
                has("timestamp_column", c)?;
            }
        }
        "kafka" => {
            let keys = options.get("key").unwrap_or_default();
            for k in keys.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                has("key", k)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// How a sink takes rows, from its options alone (without opening it): HBase upserts, the others append.
pub fn sink_mode(options: &Options) -> SinkMode {
    match options.get("connector").unwrap_or_default() {
        "hbase" => SinkMode::Upsert,
        _ => SinkMode::Append,
    }
}

/// The sink options of a table (`INSERT INTO t` writes to where `CREATE TABLE t … WITH (…)` says):
/// a source's reading options are dropped, the rest must be valid for the sink.
pub fn table_as_sink(def: &SourceDef) -> Result<Options> {
    let mut o = def.options.clone();
    let connector = o.get("connector").unwrap_or_default().to_string();
    let read_only: &[&str] = match connector.as_str() {
        "kafka" => &[
            "group_id",
            "startup",
            "header",
            "delimiter",
            "bounded",
            "idle_timeout_ms",
        ],
        "file" => &["header", "delimiter", "refresh_interval_ms"],
        "hbase" => &["refresh_interval_ms"],
        "parquet" | "console" | "blackhole" => &[],
        other => {
            return Err(Error::plan(format!(
                "INSERT INTO {}: connector '{other}' cannot be written to; sinks: {}",
                def.name,
                SINK_CONNECTORS.join(", ")
            )));
        }
    };
    for k in read_only {
        o.0.remove(*k);
    }
    validate_sink(&o).map_err(|e| Error::plan(format!("INSERT INTO {}: {e}", def.name)))?;
    Ok(o)
}

/// What a sink accepts, from its options: HBase a keyed changelog, a sink with `format =
/// 'changelog'` any changelog (with an `op` column), the others inserts only.
pub fn sink_accepts(options: &Options) -> Accepts {
    match (options.get("connector").unwrap_or_default(), options.get("format")) {
        ("hbase", _) => Accepts::Upsert,
        (_, Some("changelog" | "debezium-json")) => Accepts::Changelog,
        _ => Accepts::Append,
    }
}

pub fn open_sink(options: &Options, schema: SchemaRef) -> Result<Box<dyn Sink>> {
    validate_sink(options)?;
    validate_sink_schema(options, &schema)?;
    match options.get("connector").unwrap_or_default() {
        "parquet" => Ok(Box::new(parquet::ParquetSink::new(
            parquet::ParquetOptions::parse(options)?,
            schema,
        ))),
        "file" => Ok(Box::new(file::JsonLinesSink::file(
            options.required("path", "connector 'file'")?,
            options.get("format"),
        )?)),
        "console" => Ok(Box::new(file::JsonLinesSink::stdout())),
        "kafka" => Ok(Box::new(kafka::KafkaSink::open(options, schema)?)),
        "hbase" => Ok(Box::new(hbase::HBaseSink::open(options, schema)?)),
        _ => Ok(Box::new(Blackhole)),
    }
}

/// Sinks that write JSON rows accept `format = 'json'` (the default) or `'changelog'` (an `op` field).
pub fn json_only(options: &Options) -> Result<()> {
    match options.get("format").unwrap_or("json") {
        "json" | "changelog" | "debezium-json" => Ok(()),
        other => Err(Error::option(
            "format",
            format!(
                "unknown sink format '{other}'; valid: json, changelog (JSON with each row's kind in an 'op' field), debezium-json"
            ),
        )),
    }
}

/// Discards rows: for benchmarks and dry runs.
pub struct Blackhole;

impl Sink for Blackhole {
    fn mode(&self) -> SinkMode {
        SinkMode::Append
    }
    fn write(&mut self, _out: &Output) -> Result<()> {
        Ok(())
    }
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Reorder/cast `batch` to the declared `schema` by column name.
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let (i, _) = batch
            .schema()
            .column_with_name(f.name())
            .ok_or_else(|| Error::plan(format!("column '{}' missing from source data", f.name())))?;
        let c = batch.column(i);
        cols.push(if c.data_type() == f.data_type() {
            c.clone()
        } else {
            cast(c, f.data_type())?
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}
