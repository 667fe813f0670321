//! A running continuous query: the micro-batch loop.
//!
//! Each turn polls every source for up to `batch_size` rows, splits off late rows (event time below the
//! query's watermark) to `_late`, runs the planned SQL over the batch in DataFusion, merges results into
//! window state, advances the watermark (the minimum over the query's sources; +∞ for a source that is
//! exhausted), and hands the sink what the emit rule says: changed rows for upsert sinks, closed windows
//! for append sinks. When every source is exhausted all windows close, the sink commits and the loop ends.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, StringArray};
use datafusion::arrow::compute::{filter_record_batch, not};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use tokio::sync::watch;

use super::plan::{Compiled, Inputs, Kind, quote};
use super::slot::SlotTable;
use super::window::{WindowAggState, WindowRow, agg_schema, rows_to_batch};
use crate::connector::{self, Output, Poll, Sink, SinkMode, Source};
use crate::error::{Error, Result};
use crate::format::{BadRecord, to_json_lines};
use crate::sql::catalog::{Catalog, Object};
use crate::sql::parser::SourceDef;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most rows taken from one source per micro-batch.
    pub batch_size: usize,
    /// How long to wait for data when a source has none.
    pub batch_interval: Duration,
    /// How often sinks commit and sources record their progress (e.g. Kafka offsets).
    pub commit_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            batch_size: 65_536,
            batch_interval: Duration::from_millis(200),
            commit_interval: Duration::from_secs(10),
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
    /// event time, in ms buckets (meaningful when event time is the wall clock, e.g. a paced source).
    pub latency: LatencyHistogram,
    /// How long micro-batches take (for `/metrics`).
    pub batch_time: BatchHistogram,
}

/// Upper bounds (seconds) of the micro-batch duration buckets.
pub const BATCH_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A Prometheus-style histogram of micro-batch durations: counts per bucket, sum and count.
#[derive(Debug, Default)]
pub struct BatchHistogram {
    buckets: [AtomicU64; BATCH_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl BatchHistogram {
    pub fn record(&self, took: Duration) {
        let s = took.as_secs_f64();
        if let Some(i) = BATCH_BUCKETS.iter().position(|le| s <= *le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per upper bound, the sum in seconds, and the count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut acc = 0;
        let buckets = BATCH_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(le, n)| {
                acc += n.load(Ordering::Relaxed);
                (*le, acc)
            })
            .collect();
        (
            buckets,
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            self.count.load(Ordering::Relaxed),
        )
    }
}

/// Millisecond buckets up to 5 minutes; later values land in the last bucket.
#[derive(Debug)]
pub struct LatencyHistogram(Mutex<Vec<u64>>);

const LATENCY_BUCKETS: usize = 300_001;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(Mutex::new(Vec::new()))
    }
}

impl LatencyHistogram {
    pub fn record(&self, now_ms: i64, event_times: &[i64]) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if h.is_empty() {
            h.resize(LATENCY_BUCKETS, 0);
        }
        for t in event_times {
            let ms = (now_ms - t).clamp(0, LATENCY_BUCKETS as i64 - 1) as usize;
            h[ms] += 1;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().sum()
    }

    /// The `q` quantile (0..=1) in ms, if anything was recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let total: u64 = h.iter().sum();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, n) in h.iter().enumerate() {
            seen += n;
            if seen >= target {
                return Some(ms as u64);
            }
        }
        None
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
}

/// The `_errors` and `_late` streams, kept as bounded in-memory tables (the newest rows).
#[derive(Debug, Default)]
pub struct SystemTables {
    errors: Mutex<VecDeque<SysRow>>,
    late: Mutex<VecDeque<SysRow>>,
}

const SYSTEM_ROWS_KEPT: usize = 10_000;

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

    pub fn schema() -> SchemaRef {
        Arc::new(Schema::new(
            ["query", "source", "position", "raw", "reason"]
                .iter()
                .map(|n| Field::new(*n, DataType::Utf8, false))
                .collect::<Vec<_>>(),
        ))
    }

    pub fn snapshot(&self, name: &str) -> Result<RecordBatch> {
        let q = match name {
            "_errors" => &self.errors,
            "_late" => &self.late,
            other => return Err(Error::plan(format!("no system table '{other}'"))),
        };
        let rows = q.lock().unwrap_or_else(|p| p.into_inner());
        let col = |f: fn(&SysRow) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.iter().map(f))) };
        Ok(RecordBatch::try_new(
            Self::schema(),
            vec![
                col(|r| &r.query),
                col(|r| &r.source),
                col(|r| &r.position),
                col(|r| &r.raw),
                col(|r| &r.reason),
            ],
        )?)
    }
}

/// A SessionContext for running `inputs`: stream sources as swappable slots, tables loaded, views
/// registered, materialized views and system tables as snapshots.
pub async fn context_for(
    catalog: &Catalog,
    inputs: &Inputs,
    system: &SystemTables,
) -> Result<(SessionContext, BTreeMap<String, SlotTable>)> {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    let ctx = SessionContext::new_with_config(config);
    let mut slots = BTreeMap::new();
    for name in &inputs.streams {
        let def = catalog
            .source(name)
            .ok_or_else(|| Error::plan(format!("source '{name}' not found")))?;
        let slot = SlotTable::new(def.schema.clone());
        ctx.register_table(TableReference::bare(name.as_str()), Arc::new(slot.clone()))?;
        slots.insert(name.clone(), slot);
    }
    for name in &inputs.tables {
        let def = catalog
            .source(name)
            .ok_or_else(|| Error::plan(format!("table '{name}' not found")))?;
        ctx.register_table(
            TableReference::bare(name.as_str()),
            Arc::new(super::lookup::LookupTable::load(def)?),
        )?;
    }
    for name in &inputs.mviews {
        if let Some(Object::MaterializedView(mv)) = catalog.get(name) {
            let snap = mv.table.snapshot()?;
            ctx.register_table(
                TableReference::bare(name.as_str()),
                Arc::new(MemTable::try_new(snap.schema(), vec![vec![snap]])?),
            )?;
        }
    }
    for name in &inputs.system {
        let snap = system.snapshot(name)?;
        ctx.register_table(
            TableReference::bare(name.as_str()),
            Arc::new(MemTable::try_new(snap.schema(), vec![vec![snap]])?),
        )?;
    }
    for (name, obj) in catalog.ordered() {
        if let Object::View(v) = obj
            && inputs.views.contains(name)
        {
            ctx.sql(&format!("CREATE VIEW {} AS {}", quote(name), v.query)).await?;
        }
    }
    Ok((ctx, slots))
}

async fn plan(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan> {
    Ok(ctx.state().create_logical_plan(sql).await?)
}

async fn run_plan(ctx: &SessionContext, plan: &LogicalPlan) -> Result<Vec<RecordBatch>> {
    Ok(ctx.execute_logical_plan(plan.clone()).await?.collect().await?)
}

fn nullable_schema(plan: &LogicalPlan, drop_last: bool) -> SchemaRef {
    let arrow = plan.schema().as_arrow();
    let n = arrow.fields().len() - usize::from(drop_last);
    Arc::new(Schema::new(
        arrow
            .fields()
            .iter()
            .take(n)
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

enum Exec {
    Stateless {
        plan: LogicalPlan,
    },
    WindowAgg {
        pre: LogicalPlan,
        post: LogicalPlan,
        agg: SlotTable,
        agg_schema: SchemaRef,
        state: Box<WindowAggState>,
        session: bool,
    },
    Buffered {
        size: i64,
        feeds: Vec<(SlotTable, LogicalPlan)>,
        plan: LogicalPlan,
        buffers: BTreeMap<i64, Vec<Vec<RecordBatch>>>,
    },
}

struct SourceRt {
    name: String,
    source: Box<dyn Source>,
    slot: SlotTable,
    time_idx: Option<usize>,
    delay: i64,
    max_ts: i64,
    exhausted: bool,
    /// The source's watermark is held at this or above (manual drive only; `i64::MIN` otherwise).
    floor: i64,
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
}

pub struct QueryRuntime {
    name: String,
    ctx: SessionContext,
    sources: Vec<SourceRt>,
    exec: Exec,
    sink: Box<dyn Sink>,
    metrics: Arc<Metrics>,
    system: Arc<SystemTables>,
    config: EngineConfig,
    watermark: i64,
    /// Windows ending at or before this were emitted completely before a restart (the watermark the
    /// sources stored with their committed progress): rows read again may rebuild them from part of
    /// their rows, so they are not emitted again.
    emit_floor: i64,
    output_schema: SchemaRef,
    /// Event times of the on-time rows of the current micro-batch (for the latency histogram).
    batch_times: Vec<i64>,
}

/// The output schema of a compiled query (planning only, nothing runs).
pub async fn output_schema(compiled: &Compiled, catalog: &Catalog, system: &SystemTables) -> Result<SchemaRef> {
    let (ctx, _) = context_for(catalog, &compiled.inputs, system).await?;
    let (_, schema) = build_exec(&ctx, compiled).await?;
    Ok(schema)
}

async fn build_exec(ctx: &SessionContext, compiled: &Compiled) -> Result<(Exec, SchemaRef)> {
    Ok(match &compiled.kind {
        Kind::Stateless { sql } => {
            let p = plan(ctx, sql).await?;
            let schema = nullable_schema(&p, false);
            (Exec::Stateless { plan: p }, schema)
        }
        Kind::WindowAgg {
            spec,
            pre_sql,
            post_sql,
            nkeys,
            kinds,
        } => {
            let pre = plan(ctx, pre_sql).await?;
            let pre_schema = pre.schema().as_arrow().clone();
            if pre_schema.field(*nkeys).data_type() != &DataType::Int64 {
                return Err(Error::plan("the window's time column must be a TIMESTAMP"));
            }
            let state = WindowAggState::new(*spec, *nkeys, kinds.clone(), &pre_schema)?;
            let key_types: Vec<DataType> = (0..*nkeys).map(|i| pre_schema.field(i).data_type().clone()).collect();
            let agg_schema = agg_schema(&key_types, &state.final_types(&pre_schema));
            let agg = SlotTable::new(agg_schema.clone());
            ctx.register_table(TableReference::bare("__agg"), Arc::new(agg.clone()))?;
            let post = plan(ctx, post_sql).await?;
            let schema = nullable_schema(&post, true);
            let session = matches!(spec, super::window::WindowSpec::Session { .. });
            (
                Exec::WindowAgg {
                    pre,
                    post,
                    agg,
                    agg_schema,
                    state: Box::new(state),
                    session,
                },
                schema,
            )
        }
        Kind::Buffered { size, feeds, sql } => {
            let mut fs = Vec::new();
            for (slot_name, feed_sql) in feeds {
                let feed = plan(ctx, feed_sql).await?;
                let slot = SlotTable::new(Arc::new(feed.schema().as_arrow().clone()));
                ctx.register_table(TableReference::bare(slot_name.as_str()), Arc::new(slot.clone()))?;
                fs.push((slot, feed));
            }
            let p = plan(ctx, sql).await?;
            let schema = nullable_schema(&p, false);
            (
                Exec::Buffered {
                    size: *size,
                    feeds: fs,
                    plan: p,
                    buffers: BTreeMap::new(),
                },
                schema,
            )
        }
    })
}

impl QueryRuntime {
    /// Plan `compiled` and open its sources (each decoded ahead on its own thread, see
    /// [`connector::Prefetch`]). `make_sink` receives the output schema.
    pub async fn new(
        name: &str,
        compiled: &Compiled,
        catalog: &Catalog,
        system: Arc<SystemTables>,
        config: EngineConfig,
        make_sink: impl FnOnce(SchemaRef) -> Result<Box<dyn Sink>>,
    ) -> Result<Self> {
        let (batch_size, interval) = (config.batch_size, config.batch_interval);
        let open = |def: &SourceDef| -> Result<Box<dyn Source>> {
            Ok(Box::new(connector::Prefetch::spawn(
                connector::open_source(def)?,
                batch_size,
                interval,
            )))
        };
        Self::with_sources(name, compiled, catalog, system, config, open, make_sink).await
    }

    /// [`Self::new`] with the sources made by `open` (once per stream source the query reads).
    pub async fn with_sources(
        name: &str,
        compiled: &Compiled,
        catalog: &Catalog,
        system: Arc<SystemTables>,
        config: EngineConfig,
        mut open: impl FnMut(&SourceDef) -> Result<Box<dyn Source>>,
        make_sink: impl FnOnce(SchemaRef) -> Result<Box<dyn Sink>>,
    ) -> Result<Self> {
        let (ctx, slots) = context_for(catalog, &compiled.inputs, &system).await?;
        let (mut exec, output_schema) = build_exec(&ctx, compiled).await?;
        let needs_watermark = !matches!(exec, Exec::Stateless { .. });
        let mut sources = Vec::new();
        for (sname, slot) in slots {
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
            sources.push(SourceRt {
                name: sname,
                source: open(def)?,
                slot,
                time_idx,
                delay,
                max_ts: i64::MIN,
                exhausted: false,
                floor: i64::MIN,
            });
        }
        let sink = make_sink(output_schema.clone())?;
        if let Exec::WindowAgg { state, session, .. } = &mut exec {
            state.track_changes(sink.mode() == SinkMode::Upsert && !*session);
        }
        let metrics = Arc::new(Metrics::default());
        metrics.watermark.store(i64::MIN, Ordering::Relaxed);
        // Each stored watermark was true when written: the newest holds.
        let emit_floor = sources
            .iter()
            .filter_map(|s| s.source.resumed_watermark())
            .max()
            .unwrap_or(i64::MIN);
        Ok(QueryRuntime {
            name: name.to_string(),
            ctx,
            sources,
            exec,
            sink,
            metrics,
            system,
            config,
            watermark: i64::MIN,
            emit_floor,
            output_schema,
            batch_times: Vec::new(),
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

    fn record_bad(&self, source: &str, bad: Vec<BadRecord>) {
        if bad.is_empty() {
            return;
        }
        self.metrics.errors.fetch_add(bad.len() as u64, Ordering::Relaxed);
        SystemTables::push(
            &self.system.errors,
            bad.into_iter().map(|b| SysRow {
                query: self.name.clone(),
                source: source.to_string(),
                position: b.position,
                raw: b.raw,
                reason: b.reason,
            }),
        );
    }

    /// Split off rows below the watermark; returns the on-time rows.
    fn split_late(&mut self, i: usize, batch: RecordBatch) -> Result<RecordBatch> {
        let Some(ti) = self.sources[i].time_idx else {
            return Ok(batch);
        };
        let wm = self.watermark;
        let ts = batch
            .column(ti)
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| Error::Internal("event time is not TIMESTAMP(ms)".into()))?;
        let mut max = self.sources[i].max_ts;
        let mut any_late = false;
        let mask: BooleanArray = ts
            .iter()
            .map(|v| {
                let late = v.is_some_and(|t| t < wm);
                if let Some(t) = v
                    && !late
                {
                    max = max.max(t);
                }
                any_late |= late;
                Some(late)
            })
            .collect();
        self.sources[i].max_ts = max;
        if self.tracks_latency() {
            let on_time = ts
                .iter()
                .zip(mask.iter())
                .filter_map(|(t, late)| t.filter(|_| late != Some(true)));
            self.batch_times.extend(on_time);
        }
        if !any_late {
            return Ok(batch);
        }
        let late = filter_record_batch(&batch, &mask)?;
        let on_time = filter_record_batch(&batch, &not(&mask)?)?;
        self.metrics.late.fetch_add(late.num_rows() as u64, Ordering::Relaxed);
        let text = String::from_utf8_lossy(&to_json_lines(&late)?).into_owned();
        let src = self.sources[i].name.clone();
        let reason = format!("event time before the watermark {}", crate::time::format_ms(wm));
        SystemTables::push(
            &self.system.late,
            text.lines().map(|l| SysRow {
                query: self.name.clone(),
                source: src.clone(),
                position: String::new(),
                raw: l.to_string(),
                reason: reason.clone(),
            }),
        );
        Ok(on_time)
    }

    /// Latency is measured where rows reach the sink in the micro-batch that carried them: upsert
    /// sinks, except for session windows (written when they close).
    fn tracks_latency(&self) -> bool {
        self.sink.mode() == SinkMode::Upsert && !matches!(self.exec, Exec::WindowAgg { session: true, .. })
    }

    fn current_watermark(&self) -> i64 {
        self.sources
            .iter()
            .map(|s| {
                let w = if s.exhausted {
                    i64::MAX
                } else if let Some(w) = s.source.watermark() {
                    w
                } else if s.max_ts == i64::MIN {
                    i64::MIN
                } else {
                    s.max_ts - s.delay
                };
                w.max(s.floor)
            })
            .min()
            .unwrap_or(i64::MAX)
    }

    /// The oldest event time still held in operator state: every event older than this has been
    /// emitted (or dropped as late).
    fn low_water(&self) -> i64 {
        match &self.exec {
            Exec::Stateless { .. } => i64::MAX,
            Exec::WindowAgg { state, .. } => state.low_water(),
            Exec::Buffered { buffers, .. } => buffers.keys().next().copied().unwrap_or(i64::MAX),
        }
    }

    /// Commit the sink, then let sources record progress up to what the sink now holds durably.
    pub fn commit(&mut self) -> Result<()> {
        self.sink.commit()?;
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

    async fn write_rows(&mut self, rows: Vec<WindowRow>) -> Result<()> {
        let Exec::WindowAgg {
            post, agg, agg_schema, ..
        } = &self.exec
        else {
            return Ok(());
        };
        if rows.is_empty() {
            return Ok(());
        }
        agg.set(vec![rows_to_batch(agg_schema, &rows)?]);
        let out = run_plan(&self.ctx, post).await?;
        agg.set(vec![]);
        for b in out {
            let n = b.num_columns() - 1;
            let ids = b
                .column(n)
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap_or_default().to_string())
                .collect();
            let batch = RecordBatch::try_new(self.output_schema.clone(), b.columns()[..n].to_vec())?;
            self.emit(Output { batch, ids: Some(ids) })?;
        }
        Ok(())
    }

    fn emit(&mut self, out: Output) -> Result<()> {
        if out.batch.num_rows() == 0 {
            return Ok(());
        }
        self.metrics
            .rows_out
            .fetch_add(out.batch.num_rows() as u64, Ordering::Relaxed);
        self.sink.write(&out)
    }

    fn conform_out(&self, b: RecordBatch) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(self.output_schema.clone(), b.columns().to_vec())?)
    }

    /// Run one micro-batch over the rows now in the slots, then advance the watermark and emit.
    async fn step(&mut self) -> Result<()> {
        let upsert = self.sink.mode() == SinkMode::Upsert;
        match &mut self.exec {
            Exec::Stateless { plan } => {
                let plan = plan.clone();
                for b in run_plan(&self.ctx, &plan).await? {
                    let b = self.conform_out(b)?;
                    self.emit(Output { batch: b, ids: None })?;
                }
            }
            Exec::WindowAgg { pre, state, .. } => {
                for b in run_plan(&self.ctx, pre).await? {
                    state.merge_batch(&b)?;
                }
            }
            Exec::Buffered { feeds, buffers, .. } => {
                let n = feeds.len();
                for (i, (_, feed)) in feeds.iter().enumerate() {
                    for b in run_plan(&self.ctx, feed).await? {
                        let ws_idx = b.schema().index_of("window_start")?;
                        let ws = datafusion::arrow::compute::cast(b.column(ws_idx), &DataType::Int64)?;
                        let ws = ws.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                        let mut starts: Vec<i64> = ws.iter().flatten().collect();
                        starts.sort_unstable();
                        starts.dedup();
                        for s in starts {
                            let mask: BooleanArray = ws.iter().map(|v| Some(v == Some(s))).collect();
                            let part = filter_record_batch(&b, &mask)?;
                            buffers.entry(s).or_insert_with(|| vec![Vec::new(); n])[i].push(part);
                        }
                    }
                }
            }
        }
        for s in &self.sources {
            s.slot.set(vec![]);
        }
        self.advance(upsert).await
    }

    async fn advance(&mut self, upsert: bool) -> Result<()> {
        let wm = self.current_watermark().max(self.watermark);
        self.watermark = wm;
        self.metrics.watermark.store(wm, Ordering::Relaxed);
        let mut rows = Vec::new();
        match &mut self.exec {
            Exec::Stateless { .. } => {}
            Exec::WindowAgg { state, session, .. } => {
                if upsert && !*session {
                    rows = state.take_changed()?;
                    state.close(wm)?;
                } else {
                    rows = state.close(wm)?;
                }
                let floor = self.emit_floor;
                rows.retain(|r| r.end > floor);
                self.metrics.groups.store(state.groups() as u64, Ordering::Relaxed);
            }
            Exec::Buffered {
                size,
                feeds,
                plan,
                buffers,
            } => {
                let size = *size;
                let closing: Vec<i64> = buffers
                    .keys()
                    .copied()
                    .take_while(|s| s.saturating_add(size) <= wm)
                    .collect();
                // Windows emitted before a restart: drop what was read again of them.
                let floor = self.emit_floor;
                let closing: Vec<i64> = closing
                    .into_iter()
                    .filter(|s| {
                        let emitted = s.saturating_add(size) <= floor;
                        if emitted {
                            buffers.remove(s);
                        }
                        !emitted
                    })
                    .collect();
                let plan = plan.clone();
                let mut outs = Vec::new();
                for s in closing {
                    if let Some(parts) = buffers.remove(&s) {
                        for ((slot, _), rows) in feeds.iter().zip(parts) {
                            slot.set(rows);
                        }
                        outs.extend(run_plan(&self.ctx, &plan).await?);
                    }
                }
                for (slot, _) in feeds.iter() {
                    slot.set(vec![]);
                }
                for b in outs {
                    let b = self.conform_out(b)?;
                    self.emit(Output { batch: b, ids: None })?;
                }
            }
        }
        self.write_rows(rows).await
    }

    /// One turn of the micro-batch loop: poll every source once and, if any had something (rows, bad
    /// records, or its end), run a micro-batch over it. Returns whether a micro-batch ran.
    async fn turn(&mut self) -> Result<bool> {
        let started = Instant::now();
        let mut got = false;
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
                Poll::Ready(batch, bad) => {
                    let name = self.sources[i].name.clone();
                    self.record_bad(&name, bad);
                    got = true;
                    if let Some(b) = batch {
                        self.metrics.rows_in.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                        let b = self.split_late(i, b)?;
                        self.sources[i].slot.set(vec![b]);
                    }
                }
            }
        }
        if got {
            self.step().await?;
            if !self.batch_times.is_empty() {
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
        loop {
            if *stop.borrow() {
                break;
            }
            let got = self.turn().await?;
            if self.sources.iter().all(|s| s.exhausted) {
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
        })
    }

    // Manual drive (`freshet test`): the caller owns the runtime and steps it, on no thread of its
    // own and with no clock; each step is the loop's own turn, so emission is the real code.

    /// Run one micro-batch now: poll every source once, as [`Self::run`] does, and process what came.
    /// With nothing new from any source, still advance the watermark (see [`Self::raise_watermark`])
    /// and emit what that closes.
    pub async fn step_manually(&mut self) -> Result<()> {
        if !self.turn().await? {
            let upsert = self.sink.mode() == SinkMode::Upsert;
            self.advance(upsert).await?;
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
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finished = done.clone();
        let name = format!("freshet-query-{}", rt.name);
        std::thread::Builder::new()
            .name(name)
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
