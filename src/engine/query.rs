//! A running continuous query: the micro-batch loop.
//!
//! Each turn polls every source for up to `batch_size` rows, sends rows with a NULL event time to
//! `_errors`, gives every row the watermark in force when it arrived (the query's watermark, with the
//! row's own source advanced by the rows before it), pushes the rows through the operator graph
//! ([`crate::plan::graph`]), advances every operator to the new watermark (the minimum over the
//! query's sources; +∞ for a source that is exhausted), and writes what reaches the root to the sink.
//! Operators set late rows aside for `_late`. When every source is exhausted all windows close, the
//! sink commits and the loop ends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray, UInt64Array};
use datafusion::arrow::compute::{filter_record_batch, not};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::watch;

pub use super::latency::LatencyHistogram;
use crate::connector::parquet::{ParquetOptions, ParquetSink};
use crate::connector::system_stream::SystemStreamSource;
use crate::connector::{self, Output, Poll, Sink, SinkMode, Source};
use crate::error::{Error, Result};
use crate::format::{BadRecord, to_json_lines};
use crate::operator::{ChangeBatch, Context, Operator};
use crate::plan::Compiled;
use crate::plan::graph::{Graph, Mode, Op};
use crate::sql::catalog::Catalog;
use crate::sql::parser::SourceDef;
use crate::state::{Checkpoint, CheckpointStore};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most rows taken from one source per micro-batch.
    pub batch_size: usize,
    /// How long to wait for data when a source has none.
    pub batch_interval: Duration,
    /// How often a checkpoint is taken: sinks commit (publish an epoch) and sources record their
    /// progress (Flink's `execution.checkpointing.interval`).
    pub commit_interval: Duration,
    /// Forget a group of a GROUP BY without a window when it has not changed for this long
    /// (processing time; Flink's `table.exec.state.ttl`). `None`: keep it while it has rows.
    pub state_ttl: Option<Duration>,
    /// Early results of a window aggregate into an upsert sink go out at most this often
    /// (processing time; Flink's `table.exec.emit.early-fire.delay`); a window's final result
    /// still goes out as soon as it closes. Zero: after every micro-batch.
    pub early_fire_delay: Duration,
    /// Where queries keep their checkpoints (`<dir>/<query>-<fingerprint>/`, see [`crate::state`]);
    /// `None`: no checkpoints (a restart resumes from what sources committed, if anything).
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// How many checkpoints of a query are kept.
    pub checkpoints_kept: usize,
    /// Threads a source may decode on, and instances each keyed operator is split into
    /// ([`crate::operator::partition`]) (`--workers`; Flink's `parallelism.default`).
    pub workers: usize,
    /// What statements may touch outside the process (paths, librdkafka keys, hosts); checked by
    /// the session before a connector is opened. Not settable by SQL.
    pub policy: crate::policy::Policy,
    /// Kafka readers shared by the queries that read the same source (`freshet run`: see
    /// [`connector::kafka_shared`]); `None`: each query reads its sources itself.
    pub shared_kafka: Option<Arc<connector::kafka_shared::SharedKafka>>,
}

/// The default for [`EngineConfig::workers`]: every core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            batch_size: 65_536,
            batch_interval: Duration::from_millis(200),
            commit_interval: Duration::from_secs(10),
            state_ttl: None,
            early_fire_delay: Duration::ZERO,
            checkpoint_dir: None,
            checkpoints_kept: 3,
            workers: default_workers(),
            policy: crate::policy::Policy::default(),
            shared_kafka: None,
        }
    }
}

/// Live counters of one query, shared with whoever watches it.
#[derive(Debug, Default)]
pub struct Metrics {
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub errors: AtomicU64,
    pub late: AtomicU64,
    pub batches: AtomicU64,
    pub groups: AtomicU64,
    pub watermark: AtomicI64,
    pub last_batch_us: AtomicU64,
    /// Event-time latency to an upsert sink: wall clock when the sink took the batch minus each row's
    /// event time, in ms (meaningful when event time is the wall clock, e.g. a paced source).
    pub latency: LatencyHistogram,
    /// How long micro-batches take (for `/metrics`).
    pub batch_time: BatchHistogram,
    /// The newest checkpoint written (0: none), its size and how long writing it took.
    pub checkpoint_epoch: AtomicU64,
    pub checkpoint_bytes: AtomicU64,
    pub checkpoint_us: AtomicU64,
    /// Checkpoints that could not be written (e.g. a full disk); the query went on.
    pub checkpoint_failures: AtomicU64,
}

/// Upper bounds (seconds) of the micro-batch duration buckets.
pub const BATCH_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Micro-batch durations for `/metrics` ([`crate::metrics`] encodes it).
#[derive(Debug)]
pub struct BatchHistogram(prometheus_client::metrics::histogram::Histogram);

impl Default for BatchHistogram {
    fn default() -> Self {
        BatchHistogram(prometheus_client::metrics::histogram::Histogram::new(BATCH_BUCKETS))
    }
}

impl BatchHistogram {
    pub fn record(&self, took: Duration) {
        self.0.observe(took.as_secs_f64());
    }

    pub fn histogram(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.0
    }
}

impl Metrics {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// One row of `_errors` or `_late`.
#[derive(Debug, Clone)]
pub struct SysRow {
    pub query: String,
    pub source: String,
    pub position: String,
    pub raw: String,
    pub reason: String,
    /// When it was recorded (wall clock, ms since the epoch).
    pub at: i64,
}

/// The `_errors` and `_late` streams as bounded in-memory tables (the newest rows), what a plain
/// `SELECT … FROM _errors` reads. Queries with checkpoints also write them to side logs, read as
/// streams by continuous queries (see [`SideLogs`] and [`crate::connector::system_stream`]).
#[derive(Debug, Default)]
pub struct SystemTables {
    errors: Mutex<VecDeque<SysRow>>,
    late: Mutex<VecDeque<SysRow>>,
}

const SYSTEM_ROWS_KEPT: usize = 10_000;

/// Wall-clock milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl SystemTables {
    fn push(q: &Mutex<VecDeque<SysRow>>, rows: impl IntoIterator<Item = SysRow>) {
        let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
        for r in rows {
            if q.len() >= SYSTEM_ROWS_KEPT {
                q.pop_front();
            }
            q.push_back(r);
        }
    }

    /// `query, source, position, raw, reason` (text) and `at` (when it was recorded).
    pub fn schema() -> SchemaRef {
        let mut fields: Vec<Field> = ["query", "source", "position", "raw", "reason"]
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, false))
            .collect();
        fields.push(Field::new(
            "at",
            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
            false,
        ));
        Arc::new(Schema::new(fields))
    }

    /// Rows as a batch of [`Self::schema`].
    pub fn batch(rows: &[SysRow]) -> Result<RecordBatch> {
        let col = |f: fn(&SysRow) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.iter().map(f))) };
        Ok(RecordBatch::try_new(
            Self::schema(),
            vec![
                col(|r| &r.query),
                col(|r| &r.source),
                col(|r| &r.position),
                col(|r| &r.raw),
                col(|r| &r.reason),
                Arc::new(datafusion::arrow::array::TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| r.at),
                )),
            ],
        )?)
    }

    pub fn snapshot(&self, name: &str) -> Result<RecordBatch> {
        let q = match name {
            "_errors" => &self.errors,
            "_late" => &self.late,
            other => return Err(Error::plan(format!("no system table '{other}'"))),
        };
        let rows = q.lock().unwrap_or_else(|p| p.into_inner());
        let rows: Vec<SysRow> = rows.iter().cloned().collect();
        Self::batch(&rows)
    }
}

/// The side logs of a query with checkpoints: its `_errors` and `_late` rows, each written to
/// `<checkpoint dir>/_streams/<stream>/<query>-<fingerprint>/` by a Parquet sink that rides the
/// query's epochs (prepared, published and recovered with the query's own sink), so a row becomes
/// visible exactly once, when the checkpoint covering the input it came from is durable.
struct SideLogs {
    errors: ParquetSink,
    late: ParquetSink,
}

/// Where stream `stream` (`_errors`, `_late`) keeps its side logs under checkpoint directory `root`.
pub fn side_log_root(root: &std::path::Path, stream: &str) -> std::path::PathBuf {
    root.join("_streams").join(stream)
}

impl SideLogs {
    fn open(root: &std::path::Path, query_dir: &str) -> SideLogs {
        let sink = |stream: &str| {
            ParquetSink::new(
                ParquetOptions {
                    path: side_log_root(root, stream).join(query_dir),
                    rollover_rows: 100_000,
                    // Files close at every checkpoint anyway.
                    rollover_seconds: 3_600,
                    changelog: false,
                },
                SystemTables::schema(),
            )
        };
        SideLogs {
            errors: sink("_errors"),
            late: sink("_late"),
        }
    }

    fn each(&mut self) -> [(&'static str, &mut ParquetSink); 2] {
        [("_errors", &mut self.errors), ("_late", &mut self.late)]
    }

    fn write(&mut self, stream: &str, rows: &[SysRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let sink = if stream == "_errors" {
            &mut self.errors
        } else {
            &mut self.late
        };
        sink.write(&Output::append(SystemTables::batch(rows)?))
    }

    /// Phase 1 of epoch `epoch` for both logs: what recovery needs, by stream.
    fn prepare(&mut self, epoch: u64) -> Result<serde_json::Value> {
        let mut out = serde_json::Map::new();
        for (stream, s) in self.each() {
            out.insert(stream.to_string(), s.prepare(epoch)?);
        }
        Ok(serde_json::Value::Object(out))
    }

    fn publish(&mut self, epoch: u64) -> Result<()> {
        for (_, s) in self.each() {
            s.publish(epoch)?;
        }
        Ok(())
    }

    /// At start: resume from checkpoint `epoch`, whose meta holds `pending` (what [`Self::prepare`]
    /// returned). A checkpoint without an entry for a log (written before side logs existed)
    /// recovers that log from scratch.
    fn recover(&mut self, epoch: Option<u64>, pending: Option<&serde_json::Value>) -> Result<()> {
        for (stream, s) in self.each() {
            match (epoch, pending.and_then(|p| p.get(stream)).filter(|p| !p.is_null())) {
                (Some(e), Some(p)) => s.recover(Some(e), p)?,
                _ => s.recover(None, &serde_json::Value::Null)?,
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        for (_, s) in self.each() {
            s.close()?;
        }
        Ok(())
    }
}

struct SourceRt {
    name: String,
    source: Box<dyn Source>,
    /// Graph nodes reading this source.
    nodes: Vec<usize>,
    time_idx: Option<usize>,
    delay: i64,
    max_ts: i64,
    exhausted: bool,
    /// The source's watermark is held at this or above (manual drive only; `i64::MIN` otherwise).
    floor: i64,
    /// A changelog without event time (a materialized view): it never holds the watermark back.
    timeless: bool,
}

impl SourceRt {
    /// This source's watermark now.
    fn watermark(&self) -> i64 {
        let w = if self.exhausted || self.timeless {
            i64::MAX
        } else if let Some(w) = self.source.watermark() {
            w
        } else if self.max_ts == i64::MIN || self.time_idx.is_none() {
            i64::MIN
        } else {
            self.max_ts - self.delay
        };
        w.max(self.floor)
    }
}

/// What a finished (or stopped) query did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub rows_in: u64,
    pub rows_out: u64,
    pub errors: u64,
    pub late: u64,
    pub batches: u64,
    pub elapsed: Duration,
    /// Every source reached its end (rather than the query being stopped).
    pub finished: bool,
}

pub struct QueryRuntime {
    name: String,
    sources: Vec<SourceRt>,
    graph: Graph,
    ops: Vec<Box<dyn Operator>>,
    /// Per node: the nodes reading it.
    consumers: Vec<Vec<usize>>,
    root: usize,
    sink: Box<dyn Sink>,
    /// Columns that identify a result row (for upsert sinks).
    sink_key: Option<Arc<[usize]>>,
    metrics: Arc<Metrics>,
    system: Arc<SystemTables>,
    config: EngineConfig,
    watermark: i64,
    /// Windows ending at or before this were emitted completely before a restart (the watermark the
    /// sources stored with their committed progress): rows read again may rebuild them from part of
    /// their rows, so they are not emitted again.
    emit_floor: i64,
    output_schema: SchemaRef,
    /// Event times of the rows of the current micro-batch (for the latency histogram) — and of the
    /// micro-batches before it whose early results were held back (`EngineConfig::early_fire_delay`).
    batch_times: Vec<i64>,
    track_latency: bool,
    /// When early results last went out (see `EngineConfig::early_fire_delay`), and whether the
    /// last micro-batch held them back.
    early_out: Instant,
    held_early: bool,
    /// This micro-batch's rows by source (late rows are reported as the records that arrived).
    arrived: Vec<Option<RecordBatch>>,
    checkpoints: Option<Checkpointing>,
    /// The last epoch begun (checkpoint `epoch` covers everything before it).
    epoch: u64,
    /// `_errors` and `_late` as side logs (a query with checkpoints only).
    side: Option<SideLogs>,
}

/// A query's checkpoints (see [`crate::state`]).
struct Checkpointing {
    store: CheckpointStore,
    fingerprint: String,
    /// Why this query cannot be checkpointed (a source or an operator that cannot say where it
    /// is), if so: it then runs as without checkpoints.
    disabled: Option<String>,
}

/// The identity of a query for its checkpoints: its SQL, the directory it runs in, its sources'
/// definitions, its operator graph and its output columns. A checkpoint is only ever restored into the same query.
/// Checkpointed state of a source (not an operator) is stored under this name plus the source's,
/// as a node past the sink's.
const SOURCE_STATE: &str = "Source ";

fn source_state_name(source: &str) -> String {
    format!("{SOURCE_STATE}{source}")
}

fn fingerprint(compiled: &Compiled, catalog: &Catalog) -> String {
    let mut text = compiled.query.to_string();
    // Relative paths in the SQL name different files from another directory.
    if let Ok(cwd) = std::env::current_dir() {
        text.push_str(&cwd.to_string_lossy());
    }
    for s in compiled.graph.sources() {
        if let Some(d) = catalog.source(&s) {
            text.push('\n');
            text.push_str(&d.sql);
        }
    }
    text.push('\n');
    text.push_str(&compiled.graph.explain());
    text.push_str(&format!("{:?}", compiled.schema.fields()));
    format!("{:016x}", twox_hash::XxHash64::oneshot(0, text.as_bytes()))
}

/// Remove every checkpoint of query `name` (it was dropped).
pub fn remove_checkpoints(config: &EngineConfig, name: &str) -> Result<()> {
    let Some(root) = &config.checkpoint_dir else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    let prefix = format!("{}-", dir_name(name));
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        // `<name>-<12 hex>`: a query named `a` must not take `a-b`'s checkpoints with it.
        if let Some(fp) = n.strip_prefix(&prefix)
            && fp.len() == 12
            && fp.chars().all(|c| c.is_ascii_hexdigit())
        {
            std::fs::remove_dir_all(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// A query name as a directory name.
fn dir_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The columns of a source (`width` of them) that `graph` reads through its source nodes `nodes`,
/// with the event time `time_idx`, ascending; `None` when that is every column.
fn read_columns(
    graph: &crate::plan::graph::Graph,
    nodes: &[usize],
    time_idx: Option<usize>,
    width: usize,
) -> Option<Vec<usize>> {
    let mut read = std::collections::BTreeSet::new();
    read.extend(time_idx);
    for &n in nodes {
        match &graph.nodes[n].op {
            Op::Source {
                projection: Some(p), ..
            } => read.extend(p.iter().copied()),
            _ => return None,
        }
    }
    // Nothing read (`SELECT COUNT(*)`): every column still says what a record is.
    (!read.is_empty() && read.len() < width).then(|| read.into_iter().collect())
}

/// The output schema of a compiled query (planning only, nothing runs).
pub fn output_schema(compiled: &Compiled) -> SchemaRef {
    compiled.schema.clone()
}

impl QueryRuntime {
    /// Build the operators of `compiled` and open its sources (each decoded ahead on its own thread,
    /// see [`connector::Prefetch`]). `make_sink` receives the output schema.
    pub async fn new(
        name: &str,
        compiled: &Compiled,
        catalog: &Catalog,
        system: Arc<SystemTables>,
        config: EngineConfig,
        make_sink: impl FnOnce(SchemaRef) -> Result<Box<dyn Sink>>,
    ) -> Result<Self> {
        let (batch_size, interval, workers) = (config.batch_size, config.batch_interval, config.workers);
        let shared = config.shared_kafka.clone();
        let query = name.to_string();
        let open = |def: &SourceDef,
                    position: Option<&serde_json::Value>,
                    columns: Option<&[usize]>|
         -> Result<Box<dyn Source>> {
            // Each query reads through its own consumer group: two queries never share progress.
            let mut def = def.clone();
            if def.options.get("connector") == Some("kafka") && def.options.get("group_id").is_none() {
                def.options
                    .0
                    .insert("group_id".into(), format!("freshet-{query}-{}", def.name));
            }
            let mut source = match &shared {
                Some(shared) if def.options.get("connector") == Some("kafka") => {
                    connector::validate_source(&def)?;
                    shared.subscribe(&def, batch_size, workers)?
                }
                _ => connector::open_source(&def)?,
            };
            if let Some(p) = position {
                source.seek(p)?;
            }
            if let Some(c) = columns {
                source.project(c)?;
            }
            source.decode_on(workers)?;
            Ok(Box::new(connector::Prefetch::spawn(source, batch_size, interval)))
        };
        Self::with_sources(name, compiled, catalog, system, config, open, make_sink).await
    }

    /// [`Self::new`] with the sources made by `open` (once per stream source the query reads, with
    /// its position to resume from and the columns the query reads of it, if not all).
    pub async fn with_sources(
        name: &str,
        compiled: &Compiled,
        catalog: &Catalog,
        system: Arc<SystemTables>,
        config: EngineConfig,
        mut open: impl FnMut(&SourceDef, Option<&serde_json::Value>, Option<&[usize]>) -> Result<Box<dyn Source>>,
        make_sink: impl FnOnce(SchemaRef) -> Result<Box<dyn Sink>>,
    ) -> Result<Self> {
        let mut graph = compiled.graph.clone();
        let root = graph.root()?;
        let needs_watermark = graph.needs_watermark();
        let mut checkpoints = match &config.checkpoint_dir {
            Some(root) => {
                let fingerprint = fingerprint(compiled, catalog);
                let dir = root.join(format!("{}-{}", dir_name(name), &fingerprint[..12]));
                Some(Checkpointing {
                    store: CheckpointStore::open(&dir, name, config.checkpoints_kept)?,
                    fingerprint,
                    disabled: None,
                })
            }
            None => None,
        };
        let loaded = match &checkpoints {
            Some(c) => c.store.load_latest(&c.fingerprint)?,
            None => None,
        };
        if let Some(l) = &loaded {
            for s in &l.skipped {
                eprintln!("query '{name}': checkpoint not usable, falling back to an older one: {s}");
            }
        }
        let restored = loaded.map(|l| l.checkpoint);
        let meta = restored.as_ref().map(|c| c.meta.clone()).unwrap_or_default();
        let source_meta = |sname: &str| -> Option<serde_json::Value> {
            meta.get("sources")?
                .as_array()?
                .iter()
                .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(sname))
                .cloned()
        };
        let mut sources = Vec::new();
        for sname in graph.sources() {
            let nodes: Vec<usize> = graph
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| matches!(&n.op, Op::Source { name, .. } if *name == sname))
                .map(|(i, _)| i)
                .collect();
            if crate::sql::catalog::SYSTEM_TABLES.contains(&sname.as_str()) && catalog.get(&sname).is_none() {
                let Some(root) = &config.checkpoint_dir else {
                    return Err(Error::plan(format!(
                        "'{sname}' is read as a stream from the side logs that queries with checkpoints write, \
                         and there is no checkpoint directory: run with --checkpoint-dir (or a data directory), \
                         or look at its newest rows with a plain SELECT … FROM {sname}"
                    )));
                };
                if needs_watermark {
                    return Err(Error::plan(format!(
                        "'{sname}' has no event time (no WATERMARK): windows cannot read it"
                    )));
                }
                let mut source = SystemStreamSource::new(
                    &side_log_root(root, &sname),
                    Some(&dir_name(name)),
                    SystemTables::schema(),
                    config.batch_interval,
                );
                let at = source_meta(&sname);
                if let Some(p) = at.as_ref().and_then(|m| m.get("position")).filter(|p| !p.is_null()) {
                    source.seek(p)?;
                }
                sources.push(SourceRt {
                    name: sname.clone(),
                    source: Box::new(connector::Prefetch::spawn(
                        Box::new(source),
                        config.batch_size,
                        config.batch_interval,
                    )),
                    nodes,
                    time_idx: None,
                    delay: 0,
                    max_ts: i64::MIN,
                    exhausted: false,
                    floor: i64::MIN,
                    // No event time: it never holds the watermark back.
                    timeless: true,
                });
                continue;
            }
            if let Some(crate::sql::catalog::Object::MaterializedView(mv)) = catalog.get(&sname) {
                // Its checkpoint holds the view's rows as this query consumed them (the view's own
                // query restored the view itself, before this one started).
                let mut source = mv.table.subscribe()?;
                let label = source_state_name(&sname);
                if let Some(c) = &mut checkpoints
                    && c.disabled.is_none()
                    && let Err(e) = source.snapshot()
                {
                    c.disabled = Some(e.to_string());
                }
                if let Some((_, _, state)) = restored
                    .as_ref()
                    .and_then(|c| c.operators.iter().find(|(_, o, _)| *o == label))
                {
                    source.restore(state.clone()).map_err(|e| {
                        Error::External(format!("checkpoint of query '{name}': restoring {label}: {e}"))
                    })?;
                }
                sources.push(SourceRt {
                    name: sname.clone(),
                    source: Box::new(source),
                    nodes,
                    time_idx: None,
                    delay: 0,
                    max_ts: i64::MIN,
                    exhausted: false,
                    floor: i64::MIN,
                    timeless: true,
                });
                continue;
            }
            let def = catalog
                .source(&sname)
                .ok_or_else(|| Error::plan(format!("source '{sname}' not found")))?;
            let (time_idx, delay) = match &def.watermark {
                Some(w) => (def.schema.index_of(&w.column).ok(), w.delay_ms),
                None if needs_watermark => {
                    return Err(Error::plan(format!(
                        "source '{sname}' has no WATERMARK; windows need one: WATERMARK FOR col AS col - INTERVAL '5' SECOND"
                    )));
                }
                None => (None, 0),
            };
            let at = source_meta(&sname);
            let position = at.as_ref().and_then(|m| m.get("position")).filter(|p| !p.is_null());
            let wanted = read_columns(&graph, &nodes, time_idx, def.schema.fields().len());
            let source = open(def, position, wanted.as_deref())?;
            // A source that makes only the columns read: its nodes (and the event time) pick them
            // from its batches by their place there.
            let time_idx = match source.columns() {
                None => time_idx,
                Some(made) => {
                    let place = |i: usize| {
                        made.binary_search(&i).map_err(|_| {
                            Error::Internal(format!("source '{sname}' does not make column {i} the query reads"))
                        })
                    };
                    for &n in &nodes {
                        if let Op::Source { projection, .. } = &mut graph.nodes[n].op {
                            let p = projection.as_ref().ok_or_else(|| {
                                Error::Internal(format!("source '{sname}' makes some columns, the query reads all"))
                            })?;
                            *projection = Some(p.iter().map(|&i| place(i)).collect::<Result<_>>()?);
                        }
                    }
                    time_idx.map(place).transpose()?
                }
            };
            if let Some(c) = &mut checkpoints
                && c.disabled.is_none()
                && source.position().is_none()
            {
                c.disabled = Some(format!("source '{sname}' cannot say where it is"));
            }
            let num = |k: &str, d: i64| at.as_ref().and_then(|m| m.get(k)).and_then(|v| v.as_i64()).unwrap_or(d);
            sources.push(SourceRt {
                name: sname.clone(),
                source,
                nodes,
                time_idx,
                delay,
                max_ts: num("max_ts", i64::MIN),
                exhausted: at
                    .as_ref()
                    .and_then(|m| m.get("exhausted"))
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
                floor: num("floor", i64::MIN),
                timeless: false,
            });
        }
        let mut ops = graph.build(config.workers)?;
        if let Some(c) = &mut checkpoints
            && c.disabled.is_none()
            && let Some(e) = ops.iter().find_map(|o| o.snapshot().err())
        {
            c.disabled = Some(e.to_string());
        }
        // The sink's own state (a materialized view's rows) is stored as one node past the last.
        let sink_node = ops.len();
        let mut sink_state = None;
        if let Some(c) = &restored {
            for (node, opname, state) in c.operators.clone() {
                if node == sink_node && opname == "Sink" {
                    sink_state = Some(state);
                    continue;
                }
                if node > sink_node && opname.starts_with(SOURCE_STATE) {
                    continue; // a source's, taken back when it was opened
                }
                let here = (node < ops.len()).then(|| graph.op_name(node));
                if here.as_deref() != Some(opname.as_str()) {
                    return Err(Error::External(format!(
                        "checkpoint {} of query '{name}': node {node} is {opname} there but {} here",
                        c.epoch,
                        here.unwrap_or_else(|| "missing".into())
                    )));
                }
                ops[node].restore(state).map_err(|e| {
                    Error::External(format!(
                        "checkpoint {} of query '{name}': restoring {opname} (node {node}): {e}",
                        c.epoch
                    ))
                })?;
                let (now, split) = (ops[node].instances(), graph.nodes[node].op.partition_keys().is_some());
                if split && now != crate::plan::graph::instances_for(config.workers) {
                    eprintln!(
                        "query '{name}': {opname} (node {node}) runs as the {now} instance(s) its checkpoint was taken with; \
                         --workers {} applies to a query started without a checkpoint",
                        config.workers
                    );
                }
            }
        }
        if let Some(c) = &checkpoints
            && let Some(why) = &c.disabled
        {
            eprintln!("query '{name}': not checkpointed: {why}");
        }
        let consumers = (0..graph.nodes.len()).map(|i| graph.consumers(i)).collect();
        let output_schema = compiled.schema.clone();
        let mut sink = make_sink(output_schema.clone())?;
        let null = serde_json::Value::Null;
        sink.recover(
            restored.as_ref().map(|c| c.epoch),
            restored.as_ref().and_then(|c| c.meta.get("sink")).unwrap_or(&null),
        )?;
        if let Some(st) = sink_state {
            sink.restore(st)?;
        }
        // The side logs ride the same epochs (and sit next to the checkpoints, not in their
        // directory: a finished query removes its checkpoints, not what it published).
        let mut side = match (&config.checkpoint_dir, &checkpoints) {
            (Some(root), Some(c)) if c.disabled.is_none() => {
                let query_dir = c.store.dir().file_name().map(|n| n.to_string_lossy().into_owned());
                Some(SideLogs::open(root, &query_dir.unwrap_or_else(|| dir_name(name))))
            }
            _ => None,
        };
        if let Some(s) = &mut side {
            s.recover(
                restored.as_ref().map(|c| c.epoch),
                restored.as_ref().and_then(|c| c.meta.get("side_sinks")),
            )
            .map_err(|e| Error::External(format!("query '{name}': recovering its _errors/_late side logs: {e}")))?;
        }
        let sink_key: Option<Arc<[usize]>> = match graph.nodes[root].props.mode {
            Mode::Append => None,
            _ => graph.nodes[root].props.key.clone().map(Into::into),
        };
        let track_latency = sink.mode() == SinkMode::Upsert && graph.nodes[root].props.mode == Mode::Upsert;
        let metrics = Arc::new(Metrics::default());
        metrics.watermark.store(i64::MIN, Ordering::Relaxed);
        // Each stored watermark was true when written: the newest holds.
        let emit_floor = sources
            .iter()
            .filter_map(|s| s.source.resumed_watermark())
            .max()
            .unwrap_or(i64::MIN);
        if restored.is_none() {
            for op in &mut ops {
                op.set_emit_floor(emit_floor);
            }
        }
        let watermark = meta.get("watermark").and_then(|v| v.as_i64()).unwrap_or(i64::MIN);
        metrics.watermark.store(watermark, Ordering::Relaxed);
        let epoch = restored.as_ref().map_or(0, |c| c.epoch);
        metrics.checkpoint_epoch.store(epoch, Ordering::Relaxed);
        if let Some(c) = &restored {
            eprintln!(
                "query '{name}': resuming from checkpoint {} ({} operator state rows)",
                c.epoch,
                c.operators.iter().map(|(_, _, s)| s.num_rows()).sum::<usize>()
            );
        }
        Ok(QueryRuntime {
            name: name.to_string(),
            sources,
            graph,
            ops,
            consumers,
            root,
            sink,
            sink_key,
            metrics,
            system,
            config,
            watermark,
            emit_floor: if restored.is_some() { i64::MIN } else { emit_floor },
            output_schema,
            batch_times: Vec::new(),
            track_latency,
            // The first early results wait a delay too (counted from the start, as Flink's timer).
            early_out: Instant::now(),
            held_early: false,
            arrived: Vec::new(),
            checkpoints,
            epoch,
            side,
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    pub fn bounded(&self) -> bool {
        self.sources.iter().all(|s| s.source.bounded())
    }

    fn record_bad(&mut self, source: &str, bad: Vec<BadRecord>) -> Result<()> {
        if bad.is_empty() {
            return Ok(());
        }
        self.metrics.errors.fetch_add(bad.len() as u64, Ordering::Relaxed);
        let at = now_ms();
        let rows: Vec<SysRow> = bad
            .into_iter()
            .map(|b| SysRow {
                query: self.name.clone(),
                source: source.to_string(),
                position: b.position,
                raw: b.raw,
                reason: b.reason,
                at,
            })
            .collect();
        self.record("_errors", rows)
    }

    /// Rows for `_errors` or `_late`: into the in-memory table and, with checkpoints, the side log.
    fn record(&mut self, stream: &str, rows: Vec<SysRow>) -> Result<()> {
        if let Some(side) = &mut self.side {
            side.write(stream, &rows)
                .map_err(|e| Error::External(format!("query '{}': writing its {stream} side log: {e}", self.name)))?;
        }
        let table = if stream == "_errors" {
            &self.system.errors
        } else {
            &self.system.late
        };
        SystemTables::push(table, rows);
        Ok(())
    }

    /// Rows whose event time is NULL cannot be placed in time: they go to `_errors`.
    fn split_null_times(&mut self, i: usize, batch: RecordBatch) -> Result<RecordBatch> {
        let Some(ti) = self.sources[i].time_idx else {
            return Ok(batch);
        };
        let col = batch.column(ti);
        if col.null_count() == 0 {
            return Ok(batch);
        }
        let valid = datafusion::arrow::compute::is_not_null(col)?;
        let bad = filter_record_batch(&batch, &not(&valid)?)?;
        let text = String::from_utf8_lossy(&to_json_lines(&bad)?).into_owned();
        let name = self.sources[i].name.clone();
        let column = batch.schema().field(ti).name().clone();
        self.record_bad(
            &name,
            text.lines()
                .map(|l| BadRecord {
                    position: String::new(),
                    raw: l.to_string(),
                    reason: format!("event time column '{column}' is NULL"),
                })
                .collect(),
        )?;
        Ok(filter_record_batch(&batch, &valid)?)
    }

    /// Per row, the watermark in force when it arrived: the query's watermark with this source's
    /// advanced by the rows before it in the batch (the other sources as they were at its start).
    /// Also advances the source's newest event time.
    fn arrival_watermarks(&mut self, i: usize, batch: &RecordBatch, at_start: &[i64]) -> Result<Int64Array> {
        let others = at_start
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, w)| *w)
            .min()
            .unwrap_or(i64::MAX);
        let floor = self.watermark;
        let n = batch.num_rows();
        // The watermark from before the poll.
        let before = floor.max(at_start[i].min(others));
        let Some(ti) = self.sources[i].time_idx else {
            return Ok(Int64Array::from_value(before, n));
        };
        let ts = crate::operator::window::millis(batch.column(ti))?;
        if self.track_latency {
            self.batch_times.extend(ts.values().iter().copied());
        }
        let s = &mut self.sources[i];
        if s.source.partitioned() {
            // Rows of a partitioned source (Kafka) interleave parts, each in its own order: they
            // all arrived under the watermark from before the poll (the source's own, the minimum
            // over its partitions, has already moved with them).
            s.max_ts = s.max_ts.max(ts.values().iter().copied().max().unwrap_or(i64::MIN));
            return Ok(Int64Array::from_value(before, n));
        }
        let mut out = Vec::with_capacity(n);
        for t in ts.values().iter() {
            let mine = if s.max_ts == i64::MIN {
                i64::MIN
            } else {
                s.max_ts - s.delay
            }
            .max(s.floor);
            out.push(floor.max(mine.min(others)));
            s.max_ts = s.max_ts.max(*t);
        }
        Ok(Int64Array::from(out))
    }

    fn current_watermark(&self) -> i64 {
        self.sources.iter().map(SourceRt::watermark).min().unwrap_or(i64::MAX)
    }

    /// The oldest event time still held in operator state: every event older than this has been
    /// emitted (or dropped as late).
    fn low_water(&self) -> i64 {
        self.ops.iter().map(|o| o.low_water()).min().unwrap_or(i64::MAX)
    }

    /// End the current epoch: the sink prepares it, the checkpoint is written (when the query has
    /// checkpoints), the sink publishes it, and sources record progress up to what the sink now
    /// holds durably. A checkpoint that cannot be written (a full disk) is reported and counted;
    /// the sink's output then stays prepared until a later checkpoint succeeds.
    pub fn commit(&mut self) -> Result<()> {
        self.epoch += 1;
        let epoch = self.epoch;
        let pending = self.sink.prepare(epoch)?;
        let side_pending = match &mut self.side {
            Some(s) => Some(s.prepare(epoch).map_err(|e| {
                Error::External(format!(
                    "query '{}': preparing its _errors/_late side logs: {e}",
                    self.name
                ))
            })?),
            None => None,
        };
        if let Some(c) = self.checkpoints.as_ref().filter(|c| c.disabled.is_none()) {
            let written = self
                .snapshot(epoch, &c.fingerprint, pending, side_pending)
                .and_then(|s| c.store.write(&s));
            match written {
                Ok(stats) => {
                    let m = &self.metrics;
                    m.checkpoint_epoch.store(epoch, Ordering::Relaxed);
                    m.checkpoint_bytes.store(stats.bytes, Ordering::Relaxed);
                    m.checkpoint_us.store(stats.took.as_micros() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.metrics.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "query '{}': checkpoint {epoch} failed, its output stays unpublished until one succeeds: {e}",
                        self.name
                    );
                    return Ok(());
                }
            }
        }
        fail::fail_point!("checkpoint-before-publish", |_| crate::state::crash(
            "checkpoint-before-publish"
        ));
        self.sink.publish(epoch)?;
        if let Some(s) = &mut self.side {
            s.publish(epoch)?;
        }
        let safe = self.low_water();
        // Windows up to the floor were emitted before the restart, so the floor stays true. At the end
        // of a bounded source the watermark is "forever": store the newest event time instead, so rows
        // appended to the source later still make windows of their own.
        let newest = self.sources.iter().map(|s| s.max_ts).max().unwrap_or(i64::MIN);
        let wm = self.watermark.min(newest).max(self.emit_floor);
        for s in &mut self.sources {
            s.source.commit(safe, 0, wm)?;
        }
        Ok(())
    }

    /// The query's state now, as checkpoint `epoch`.
    fn snapshot(
        &self,
        epoch: u64,
        fingerprint: &str,
        sink: serde_json::Value,
        side_sinks: Option<serde_json::Value>,
    ) -> Result<Checkpoint> {
        let mut operators = Vec::new();
        for (i, op) in self.ops.iter().enumerate() {
            let state = op.snapshot()?;
            if !state.is_empty() {
                operators.push((i, self.graph.op_name(i), state));
            }
        }
        if let Some(state) = self.sink.snapshot()? {
            operators.push((self.ops.len(), "Sink".to_string(), state));
        }
        for (i, s) in self.sources.iter().enumerate() {
            if let Some(state) = s.source.snapshot()? {
                operators.push((self.ops.len() + 1 + i, source_state_name(&s.name), state));
            }
        }
        let sources: Vec<serde_json::Value> = self
            .sources
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "position": s.source.position(),
                    "max_ts": s.max_ts,
                    "floor": s.floor,
                    "exhausted": s.exhausted,
                })
            })
            .collect();
        let mut meta = serde_json::json!({
            "watermark": self.watermark,
            "sources": sources,
            "sink": sink,
        });
        if let Some(side) = side_sinks {
            meta["side_sinks"] = side;
        }
        Ok(Checkpoint {
            epoch,
            fingerprint: fingerprint.to_string(),
            meta,
            operators,
        })
    }

    fn late_rows(&mut self, cx: Context) -> Result<()> {
        let at = now_ms();
        for l in cx.late {
            self.metrics.late.fetch_add(l.rows.num_rows() as u64, Ordering::Relaxed);
            let mut rows = Vec::with_capacity(l.rows.num_rows());
            match &l.origin {
                // As the records arrived, with their source.
                Some(origin) => {
                    for o in origin.values().iter() {
                        let (s, r) = ((o >> 32) as usize, (o & 0xffff_ffff) as usize);
                        let raw = match self.arrived.get(s).and_then(Option::as_ref) {
                            Some(b) if r < b.num_rows() => String::from_utf8_lossy(&to_json_lines(&b.slice(r, 1))?)
                                .trim_end()
                                .to_string(),
                            _ => String::new(),
                        };
                        let source = self.sources.get(s).map(|x| x.name.clone()).unwrap_or_default();
                        rows.push((source, raw));
                    }
                }
                None => {
                    let text = String::from_utf8_lossy(&to_json_lines(&l.rows)?).into_owned();
                    rows.extend(text.lines().map(|t| (String::new(), t.to_string())));
                }
            }
            let rows = rows
                .into_iter()
                .map(|(source, raw)| SysRow {
                    query: self.name.clone(),
                    source,
                    position: String::new(),
                    raw,
                    reason: l.reason.clone(),
                    at,
                })
                .collect();
            self.record("_late", rows)?;
        }
        Ok(())
    }

    /// Push the polled batches through the graph, then advance every operator to the new watermark
    /// and write what reaches the root to the sink.
    fn run_graph(&mut self, polled: Vec<(usize, ChangeBatch)>) -> Result<()> {
        let n = self.ops.len();
        let mut inbox: Vec<Vec<(usize, ChangeBatch)>> = (0..n).map(|_| Vec::new()).collect();
        for (s, b) in polled {
            for node in &self.sources[s].nodes {
                inbox[*node].push((0, b.clone()));
            }
        }
        let wm = self.current_watermark().max(self.watermark);
        // Early results go out at most every `early_fire_delay`: hold them back until it passed.
        let now = Instant::now();
        self.held_early = self.holds_early(now);
        if !self.held_early {
            self.early_out = now;
        }
        let mut cx = Context {
            hold_early: self.held_early,
            ..Context::default()
        };
        let mut out: Vec<ChangeBatch> = Vec::new();
        for id in 0..n {
            let mut produced = Vec::new();
            for (port, b) in std::mem::take(&mut inbox[id]) {
                produced.extend(self.ops[id].process(port, b, &mut cx)?);
            }
            produced.extend(self.ops[id].flush(&mut cx)?);
            produced.extend(self.ops[id].advance(wm, &mut cx)?);
            if id == self.root {
                out.extend(produced);
                continue;
            }
            for c in &self.consumers[id] {
                let port = self.graph.nodes[*c].inputs.iter().position(|i| *i == id).unwrap_or(0);
                for b in &produced {
                    inbox[*c].push((port, b.clone()));
                }
            }
        }
        self.watermark = wm;
        self.metrics.watermark.store(wm, Ordering::Relaxed);
        self.metrics
            .groups
            .store(self.ops.iter().map(|o| o.state_size() as u64).sum(), Ordering::Relaxed);
        self.late_rows(cx)?;
        for b in out {
            self.emit(b)?;
        }
        Ok(())
    }

    /// Whether early results are held back at `now`: `early_fire_delay` has not passed since they
    /// last went out.
    fn holds_early(&self, now: Instant) -> bool {
        now.duration_since(self.early_out) < self.config.early_fire_delay
    }

    fn emit(&mut self, b: ChangeBatch) -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        self.metrics.rows_out.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
        let batch = RecordBatch::try_new_with_options(
            self.output_schema.clone(),
            b.batch.columns().to_vec(),
            &datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
        )?;
        self.sink.write(&Output {
            batch,
            kinds: b.ops,
            key: self.sink_key.clone(),
        })
    }

    /// One turn of the micro-batch loop: poll every source once and, if any had something (rows, bad
    /// records, or its end), run a micro-batch over it. Returns whether a micro-batch ran.
    async fn turn(&mut self) -> Result<bool> {
        let started = Instant::now();
        let mut got = false;
        let mut polled = Vec::new();
        self.arrived = vec![None; self.sources.len()];
        // Every source's watermark before this turn's polls (rows arrive under these).
        let at_start: Vec<i64> = self.sources.iter().map(SourceRt::watermark).collect();
        for i in 0..self.sources.len() {
            if self.sources[i].exhausted {
                continue;
            }
            match self.sources[i].source.poll(self.config.batch_size)? {
                Poll::Exhausted => {
                    self.sources[i].exhausted = true;
                    got = true;
                }
                Poll::Pending => {}
                Poll::Changes(b, kinds) => {
                    got = true;
                    self.metrics.rows_in.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                    let wm = Int64Array::from_value(self.watermark, b.num_rows());
                    polled.push((
                        i,
                        ChangeBatch {
                            batch: b,
                            ops: Some(kinds),
                            wm,
                            origin: None,
                        },
                    ));
                }
                Poll::Ready(batch, bad) => {
                    let name = self.sources[i].name.clone();
                    self.record_bad(&name, bad)?;
                    got = true;
                    if let Some(b) = batch {
                        self.metrics.rows_in.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                        let b = self.split_null_times(i, b)?;
                        let wm = self.arrival_watermarks(i, &b, &at_start)?;
                        let origin = Some(UInt64Array::from_iter_values(
                            (0..b.num_rows() as u64).map(|r| ((i as u64) << 32) | r),
                        ));
                        self.arrived[i] = Some(b.clone());
                        polled.push((
                            i,
                            ChangeBatch {
                                batch: b,
                                ops: None,
                                wm,
                                origin,
                            },
                        ));
                    }
                }
            }
        }
        // Early results held back go out once the delay has passed, rows or not (a source that
        // has nothing says `Pending`, and a paused input must not keep them back).
        if !got && self.held_early && !self.holds_early(Instant::now()) {
            got = true;
        }
        if got {
            self.run_graph(polled)?;
            // Rows whose early results were held back count when they go out (or the input ends).
            let out = !self.held_early || self.sources.iter().all(|s| s.exhausted);
            if out && !self.batch_times.is_empty() {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or_default();
                self.metrics.latency.record(now, &self.batch_times);
                self.batch_times.clear();
            }
            self.metrics.batches.fetch_add(1, Ordering::Relaxed);
            let took = started.elapsed();
            self.metrics
                .last_batch_us
                .store(took.as_micros() as u64, Ordering::Relaxed);
            self.metrics.batch_time.record(took);
        }
        Ok(got)
    }

    /// Run until every source is exhausted (then close all windows and commit) or `stop` turns true
    /// (then commit what was emitted; open windows stay open).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<Report> {
        let t0 = Instant::now();
        let mut last_commit = Instant::now();
        let mut finished = false;
        loop {
            if *stop.borrow() {
                break;
            }
            let got = self.turn().await?;
            if self.sources.iter().all(|s| s.exhausted) {
                self.sink.close()?;
                if let Some(s) = &mut self.side {
                    s.close()?;
                }
                // Finished: the last epoch is checkpointed and published like any other (below).
                // The checkpoints stay: a restart of a job killed while its other queries still
                // ran resumes this one from there, finds every source at its end and finishes
                // again with nothing new. `freshet run` forgets them once the whole job is done
                // (see `Session::forget_finished`), DROP does otherwise.
                finished = true;
                break;
            }
            if last_commit.elapsed() >= self.config.commit_interval {
                self.commit()?;
                last_commit = Instant::now();
            }
            if !got {
                // Sources wait for data themselves (see `Prefetch`); just let `stop` in.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        self.commit()?;
        let m = &self.metrics;
        Ok(Report {
            rows_in: Metrics::get(&m.rows_in),
            rows_out: Metrics::get(&m.rows_out),
            errors: Metrics::get(&m.errors),
            late: Metrics::get(&m.late),
            batches: Metrics::get(&m.batches),
            elapsed: t0.elapsed(),
            finished,
        })
    }

    // Manual drive (`freshet test`): the caller owns the runtime and steps it, on no thread of its
    // own and with no clock; each step is the loop's own turn, so emission is the real code.

    /// Run one micro-batch now: poll every source once, as [`Self::run`] does, and process what came.
    /// With nothing new from any source, still advance the watermark (see [`Self::raise_watermark`])
    /// and emit what that closes.
    pub async fn step_manually(&mut self) -> Result<()> {
        if !self.turn().await? {
            self.run_graph(Vec::new())?;
        }
        Ok(())
    }

    /// Hold `source`'s watermark at `ts` or above from the next micro-batch on, as if it had seen
    /// data that far ahead (the watermark never goes back; a raise below it does nothing).
    pub fn raise_watermark(&mut self, source: &str, ts: i64) -> Result<()> {
        let s = self
            .sources
            .iter_mut()
            .find(|s| s.name == source)
            .ok_or_else(|| Error::plan(format!("query '{}' does not read '{source}'", self.name)))?;
        s.floor = s.floor.max(ts);
        Ok(())
    }

    /// The stream sources this query reads.
    pub fn source_names(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|s| s.name.as_str())
    }

    /// The query's watermark (`i64::MIN` before any data, `i64::MAX` once every source ended).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }
}

/// A query running on its own thread, with its own single-threaded async runtime, so that a sink
/// that blocks (HBase retrying through an outage, a slow disk) holds back only its own query — never
/// the REPL, the server, or other queries. Await it for the query's report.
pub struct QueryTask {
    rx: tokio::sync::oneshot::Receiver<Result<Report>>,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl QueryTask {
    pub fn spawn(rt: QueryRuntime, stop: watch::Receiver<bool>) -> Result<Self> {
        // A sink blocked on a service (HBase retrying through an outage) is on the query's thread,
        // which cannot see the stop: tell the sink from here.
        if let Some(flag) = rt.sink.interrupt_handle()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let mut stop = stop.clone();
            handle.spawn(async move {
                while !*stop.borrow() {
                    if stop.changed().await.is_err() {
                        return;
                    }
                }
                flag.store(true, Ordering::SeqCst);
            });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finished = done.clone();
        let name = format!("freshet-query-{}", rt.name);
        std::thread::Builder::new()
            .name(name)
            // DataFusion recurses once per level of the query's expressions (sql::depth).
            .stack_size(crate::sql::depth::PLANNING_STACK_BYTES)
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Internal(format!("query runtime: {e}")))
                    .and_then(|runtime| runtime.block_on(rt.run(stop)));
                finished.store(true, Ordering::SeqCst);
                let _ = tx.send(result);
            })
            .map_err(|e| Error::Internal(format!("starting the query thread: {e}")))?;
        Ok(QueryTask { rx, done })
    }

    pub fn is_finished(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
}

impl std::future::Future for QueryTask {
    type Output = std::result::Result<Result<Report>, tokio::sync::oneshot::error::RecvError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx).poll(cx)
    }
}
