//! Top-N and deduplication: `ROW_NUMBER()` / `RANK()` / `DENSE_RANK() OVER (PARTITION BY … ORDER BY …)`
//! kept to a range of ranks (Flink's Rank and Deduplicate operators). The output is the input's
//! columns and the rank.
//!
//! Rows of a partition are held in rank order as Arrow row-format bytes: the ORDER BY columns encoded
//! so that bytes sort as the rows should, then an arrival number, so rows that tie on ORDER BY rank in
//! arrival order as in Flink (the later arrival first when the order is the time attribute
//! descending: Flink's keep-last deduplication). How results leave depends on what the planner chose:
//!
//! - [`Emit::Updates`]: after every micro-batch, the changes to each touched partition's visible rows
//!   as a changelog. `ROW_NUMBER` results change by position (`-U`/`+U` of the row at rank k, keyed
//!   by partition and rank), `RANK`/`DENSE_RANK` results as rows leaving (`-D`) and entering (`+I`).
//!   Over an append-only input a partition keeps only rows that can still be visible (rank ≤ N);
//!   over a changelog it keeps all of them, since a retraction can bring a lower row back. The rank
//!   is always computed (the planner applies the projection above the Top-N afterwards): when a query
//!   does not select it, a row whose rank changes arrives as a `-U`/`+U` pair of the same row, which
//!   every sink applies as no change, where Flink would send nothing.
//! - [`Emit::FirstByTime`]: `rn = 1` ordered by the time attribute ascending over an append-only input
//!   (keep the first row per key). The first row is final once the watermark passes its time, so it
//!   is emitted then, once: an append-only result.
//! - [`Emit::Window`]: the partition includes `window_start` and `window_end`: rows are kept per window
//!   and its top N emitted once when the watermark reaches the window's end (append-only).
//!
//! Late rows follow Flink's rule, decided with each row's arrival watermark so that results do not
//! depend on micro-batch boundaries: for a window Top-N, a row whose window had fired; for first-row
//! deduplication, a row older than the first row its key had already settled on.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int8Array, Int64Array, StringArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::{cast, filter_record_batch, take};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::PhysicalExpr;

use super::groups::GroupTable;
use super::state::{self, OpState, column, keyed_table, plain_table};
use super::window::millis;
use super::{ChangeBatch, Context, Operator, RowKind};
use crate::error::{Error, Result};

/// The ranking function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankFn {
    RowNumber,
    Rank,
    DenseRank,
}

impl RankFn {
    pub fn sql(self) -> &'static str {
        match self {
            RankFn::RowNumber => "ROW_NUMBER",
            RankFn::Rank => "RANK",
            RankFn::DenseRank => "DENSE_RANK",
        }
    }
}

/// When and how results leave (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    Updates,
    /// `time`: the time attribute's column in the input.
    FirstByTime {
        time: usize,
    },
    /// `start`/`end`: the window columns in the input.
    Window {
        start: usize,
        end: usize,
    },
}

#[derive(Clone)]
pub struct Config {
    pub function: RankFn,
    pub partition: Vec<Arc<dyn PhysicalExpr>>,
    pub partition_types: Vec<DataType>,
    pub order: Vec<Arc<dyn PhysicalExpr>>,
    /// Type and direction of each ORDER BY item.
    pub order_fields: Vec<SortField>,
    /// Ranks kept: `lo..=hi`.
    pub lo: u64,
    pub hi: u64,
    /// Rows that tie on ORDER BY rank the later arrival first (ORDER BY the time attribute DESC).
    pub last_wins_ties: bool,
    pub emit: Emit,
    /// The input is a changelog.
    pub retracting: bool,
    /// The input's columns, then the rank.
    pub schema: SchemaRef,
}

/// Arrow row-format bytes of a row (or of its ORDER BY values).
type Bytes = Box<[u8]>;

/// Where a row ranks: its ORDER BY bytes, then the tie-break.
type RankKey = (Bytes, u64);

/// One partition's rows in rank order.
#[derive(Default)]
struct Part {
    rows: BTreeMap<RankKey, Bytes>,
    /// Row bytes → tie-breaks of the rows with them (kept over a changelog, to find retracted rows).
    index: HashMap<Bytes, Vec<u64>>,
    /// [`Emit::Window`]: listed under its window.
    registered: bool,
}

impl Part {
    /// Rows with their rank, in rank order, ranks `lo..=hi`.
    fn visible(&self, f: RankFn, lo: u64, hi: u64) -> Vec<(u64, &[u8])> {
        ranked(&self.rows, f)
            .take_while(|(r, _, _)| *r <= hi)
            .filter(|(r, _, _)| *r >= lo)
            .map(|(r, _, row)| (r, row))
            .collect()
    }

    /// Drop rows ranked below `hi` (an append-only input never brings them back).
    fn trim(&mut self, f: RankFn, hi: u64) {
        let cut = ranked(&self.rows, f)
            .find(|(r, _, _)| *r > hi)
            .map(|(_, k, _)| k.clone());
        if let Some(k) = cut {
            self.rows.split_off(&k);
        }
    }
}

/// Rows of a partition with their rank under `f` and their place, in rank order.
fn ranked(rows: &BTreeMap<RankKey, Bytes>, f: RankFn) -> impl Iterator<Item = (u64, &RankKey, &[u8])> {
    let mut pos = 0u64;
    let mut rank = 0u64;
    let mut dense = 0u64;
    let mut prev: Option<&[u8]> = None;
    rows.iter().map(move |(k, row)| {
        pos += 1;
        if prev != Some(k.0.as_ref()) {
            rank = pos;
            dense += 1;
        }
        prev = Some(k.0.as_ref());
        let r = match f {
            RankFn::RowNumber => pos,
            RankFn::Rank => rank,
            RankFn::DenseRank => dense,
        };
        (r, k, row.as_ref())
    })
}

/// First-row deduplication state of one key.
enum First {
    /// The earliest row so far, not yet final.
    Pending { time: i64, row: Bytes },
    /// The first row was emitted; its time.
    Emitted { time: i64 },
}

pub struct TopN {
    cfg: Config,
    sort: RowConverter,
    /// Converts whole input rows (what is stored and emitted).
    rows: RowConverter,
    table: GroupTable,
    /// By partition id.
    parts: Vec<Part>,
    seq: u64,
    /// The watermark of the last advance (carried by emitted rows).
    wm: i64,
    /// [`Emit::Updates`]: partitions touched since the last flush, with the rows they showed then.
    before: HashMap<u32, Vec<(u64, Bytes)>>,
    touched: Vec<u32>,
    /// [`Emit::FirstByTime`]: per partition id, and pending first rows by time.
    first: Vec<Option<First>>,
    due: BTreeSet<(i64, u32)>,
    /// [`Emit::Window`]: partitions by window (end, start).
    windows: BTreeMap<(i64, i64), Vec<u32>>,
    emit_floor: i64,
}

impl TopN {
    pub fn new(cfg: Config) -> Result<TopN> {
        let nin = cfg.schema.fields().len().saturating_sub(1);
        let row_fields: Vec<SortField> = cfg
            .schema
            .fields()
            .iter()
            .take(nin)
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(TopN {
            sort: RowConverter::new(cfg.order_fields.clone())?,
            rows: RowConverter::new(row_fields)?,
            table: GroupTable::new(&cfg.partition_types)?,
            parts: Vec::new(),
            seq: 0,
            wm: i64::MIN,
            before: HashMap::new(),
            touched: Vec::new(),
            first: Vec::new(),
            due: BTreeSet::new(),
            windows: BTreeMap::new(),
            emit_floor: i64::MIN,
            cfg,
        })
    }

    fn eval(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let n = batch.num_rows();
        Ok(exprs
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<std::result::Result<_, _>>()?)
    }

    fn part(&mut self, gid: u32) -> &mut Part {
        let g = gid as usize;
        if self.parts.len() <= g {
            self.parts.resize_with(g + 1, Part::default);
        }
        &mut self.parts[g]
    }

    /// The tie-break of the next arriving row.
    fn next_tie(&mut self) -> u64 {
        self.seq += 1;
        if self.cfg.last_wins_ties {
            u64::MAX - self.seq
        } else {
            self.seq
        }
    }

    /// Add row `i` to partition `gid` (over an append-only input, only if it can still be visible).
    fn insert(&mut self, gid: u32, sort: &Rows, rows: &Rows, i: usize) {
        let tie = self.next_tie();
        let (f, hi, retracting) = (self.cfg.function, self.cfg.hi, self.cfg.retracting);
        let sk = sort.row(i);
        let part = self.part(gid);
        if !retracting
            && f != RankFn::DenseRank
            && part.rows.len() as u64 >= hi
            && let Some(((last_sk, last_tie), _)) = part.rows.last_key_value()
        {
            // Ranked after every kept row of a full partition: never visible.
            let after = match f {
                RankFn::RowNumber => (sk.as_ref(), tie) > (last_sk.as_ref(), *last_tie),
                _ => sk.as_ref() > last_sk.as_ref(),
            };
            if after {
                return;
            }
        }
        let row: Box<[u8]> = rows.row(i).as_ref().into();
        if retracting {
            part.index.entry(row.clone()).or_default().push(tie);
        }
        part.rows.insert((sk.as_ref().into(), tie), row);
        if !retracting && f == RankFn::RowNumber && part.rows.len() as u64 > hi {
            part.rows.pop_last();
        }
    }

    /// Remove one row equal to row `i` from partition `gid` (a retraction).
    fn remove(&mut self, gid: u32, sort: &Rows, rows: &Rows, i: usize) {
        let sk: Box<[u8]> = sort.row(i).as_ref().into();
        let row = rows.row(i);
        let part = self.part(gid);
        let Some(ties) = part.index.get_mut(row.as_ref()) else {
            // Never seen (or already retracted): nothing to take back.
            return;
        };
        let tie = ties.pop();
        if ties.is_empty() {
            part.index.remove(row.as_ref());
        }
        if let Some(tie) = tie {
            part.rows.remove(&(sk, tie));
        }
    }

    /// Output rows: `(row bytes, rank, kind)`.
    fn output(&self, rows: &[(&[u8], u64, RowKind)]) -> Result<ChangeBatch> {
        let parser = self.rows.parser();
        let n = rows.len();
        let mut cols = self.rows.convert_rows(rows.iter().map(|(r, _, _)| parser.parse(r)))?;
        let rank_field = self
            .cfg
            .schema
            .fields()
            .last()
            .ok_or_else(|| Error::Internal("a Top-N without a rank column".into()))?;
        let rank: ArrayRef = Arc::new(UInt64Array::from_iter_values(rows.iter().map(|(_, r, _)| *r)));
        cols.push(if rank_field.data_type() == &DataType::UInt64 {
            rank
        } else {
            cast(&rank, rank_field.data_type())?
        });
        let batch = RecordBatch::try_new_with_options(
            self.cfg.schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        let mut out = ChangeBatch::append(batch, self.wm);
        if rows.iter().any(|(_, _, k)| *k != RowKind::Insert) {
            out.ops = Some(Int8Array::from_iter_values(rows.iter().map(|(_, _, k)| *k as i8)));
        }
        Ok(out)
    }

    fn process_updates(&mut self, input: &ChangeBatch, gids: &[u32], sort: &Rows, rows: &Rows) -> Result<()> {
        let retract = input.retractions();
        if retract.is_some() && !self.cfg.retracting {
            return Err(Error::Internal("a Top-N planned for inserts got a retraction".into()));
        }
        let (f, lo, hi) = (self.cfg.function, self.cfg.lo, self.cfg.hi);
        for (i, gid) in gids.iter().enumerate() {
            if !self.before.contains_key(gid) {
                let shown = self.part(*gid).visible(f, lo, hi);
                let shown = shown.into_iter().map(|(r, b)| (r, Bytes::from(b))).collect();
                self.before.insert(*gid, shown);
                self.touched.push(*gid);
            }
            if retract.as_ref().is_some_and(|r| r[i]) {
                self.remove(*gid, sort, rows, i);
            } else {
                self.insert(*gid, sort, rows, i);
            }
        }
        Ok(())
    }

    /// The changes of every touched partition since the last call.
    fn emit_updates(&mut self) -> Result<Vec<ChangeBatch>> {
        if self.touched.is_empty() {
            return Ok(Vec::new());
        }
        let (f, lo, hi) = (self.cfg.function, self.cfg.lo, self.cfg.hi);
        let touched = std::mem::take(&mut self.touched);
        let mut before = std::mem::take(&mut self.before);
        if !self.cfg.retracting && f != RankFn::RowNumber {
            for g in &touched {
                self.part(*g).trim(f, hi);
            }
        }
        let olds: Vec<Vec<(u64, Bytes)>> = touched.iter().map(|g| before.remove(g).unwrap_or_default()).collect();
        let mut out: Vec<(&[u8], u64, RowKind)> = Vec::new();
        let empty = Part::default();
        for (g, old) in touched.iter().zip(&olds) {
            let new = self.parts.get(*g as usize).unwrap_or(&empty).visible(f, lo, hi);
            let old: Vec<(u64, &[u8])> = old.iter().map(|(r, b)| (*r, b.as_ref())).collect();
            diff(f, &old, &new, &mut out);
        }
        let batch = if out.is_empty() { None } else { Some(self.output(&out)?) };
        drop(out);
        if self.cfg.retracting {
            for g in touched {
                if self.parts.get(g as usize).is_some_and(|p| p.rows.is_empty()) {
                    self.parts[g as usize] = Part::default();
                    self.table.remove(g);
                }
            }
        }
        Ok(batch.into_iter().collect())
    }
}

/// What changed between a partition's visible rows `old` and `new` (each `(rank, row)` in rank
/// order): `ROW_NUMBER` by position, the others as rows leaving and entering.
fn diff<'a>(f: RankFn, old: &[(u64, &'a [u8])], new: &[(u64, &'a [u8])], out: &mut Vec<(&'a [u8], u64, RowKind)>) {
    if f == RankFn::RowNumber {
        // Both are ranks lo, lo+1, … in order: position i is the same rank in both.
        for i in 0..old.len().max(new.len()) {
            match (old.get(i), new.get(i)) {
                (Some(o), Some(n)) if o.1 == n.1 => {}
                (Some(o), Some(n)) => {
                    out.push((o.1, o.0, RowKind::UpdateBefore));
                    out.push((n.1, n.0, RowKind::UpdateAfter));
                }
                (Some(o), None) => out.push((o.1, o.0, RowKind::Delete)),
                (None, Some(n)) => out.push((n.1, n.0, RowKind::Insert)),
                (None, None) => {}
            }
        }
        return;
    }
    let mut unmatched: HashMap<(u64, &[u8]), i64> = HashMap::new();
    for (r, b) in new {
        *unmatched.entry((*r, *b)).or_default() += 1;
    }
    for (r, b) in old {
        match unmatched.get_mut(&(*r, *b)) {
            Some(c) if *c > 0 => *c -= 1,
            _ => out.push((b, *r, RowKind::Delete)),
        }
    }
    for (r, b) in new {
        if let Some(c) = unmatched.get_mut(&(*r, *b))
            && *c > 0
        {
            *c -= 1;
            out.push((b, *r, RowKind::Insert));
        }
    }
}

impl TopN {
    fn process_first(
        &mut self,
        input: &ChangeBatch,
        gids: &[u32],
        rows: &Rows,
        time: usize,
        cx: &mut Context,
    ) -> Result<()> {
        let ts = millis(input.batch.column(time))?;
        let wms = input.wm.values();
        let mut late = Vec::new();
        let mut reason = String::new();
        for (i, g) in gids.iter().enumerate() {
            let g = *g as usize;
            if self.first.len() <= g {
                self.first.resize_with(g + 1, || None);
            }
            if ts.is_null(i) {
                late.push(i as u32);
                continue;
            }
            let (t, w) = (ts.value(i), wms[i]);
            // The time of the row the key had settled on when this row arrived, if it had.
            let settled = match &self.first[g] {
                Some(First::Emitted { time }) => Some(*time),
                Some(First::Pending { time, .. }) if *time < w => Some(*time),
                _ => None,
            };
            match (settled, &self.first[g]) {
                (Some(first), _) => {
                    if t < first {
                        late.push(i as u32);
                        if reason.is_empty() {
                            reason = format!(
                                "late: the first row of its key (at {}) was final at the watermark {}",
                                crate::time::format_ms(first),
                                crate::time::format_ms(w)
                            );
                        }
                    }
                }
                (None, Some(First::Pending { time, .. })) => {
                    // Ties keep the earlier arrival.
                    if t < *time {
                        self.due.remove(&(*time, g as u32));
                        self.due.insert((t, g as u32));
                        self.first[g] = Some(First::Pending {
                            time: t,
                            row: rows.row(i).as_ref().into(),
                        });
                    }
                }
                (None, _) => {
                    self.due.insert((t, g as u32));
                    self.first[g] = Some(First::Pending {
                        time: t,
                        row: rows.row(i).as_ref().into(),
                    });
                }
            }
        }
        if reason.is_empty() {
            reason = "its time is NULL".into();
        }
        cx.late(input, &UInt32Array::from(late), reason)
    }

    /// Emit the first rows the watermark `wm` made final.
    fn fire_first(&mut self, wm: i64) -> Result<Vec<ChangeBatch>> {
        let rest = self.due.split_off(&(wm, 0));
        let ready = std::mem::replace(&mut self.due, rest);
        let mut rows: Vec<Box<[u8]>> = Vec::new();
        for (t, g) in ready {
            let slot = &mut self.first[g as usize];
            if let Some(First::Pending { row, .. }) = slot.take()
                && t >= self.emit_floor
            {
                rows.push(row);
            }
            *slot = Some(First::Emitted { time: t });
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let out: Vec<(&[u8], u64, RowKind)> = rows.iter().map(|r| (r.as_ref(), 1, RowKind::Insert)).collect();
        Ok(vec![self.output(&out)?])
    }

    fn process_window(
        &mut self,
        input: &ChangeBatch,
        gids: &[u32],
        (sort, rows): (&Rows, &Rows),
        (start, end): (usize, usize),
        cx: &mut Context,
    ) -> Result<()> {
        let starts = millis(input.batch.column(start))?;
        let ends = millis(input.batch.column(end))?;
        let wms = input.wm.values();
        let mut late = Vec::new();
        for (i, g) in gids.iter().enumerate() {
            let (s, e) = (starts.value(i), ends.value(i));
            if ends.is_null(i) || e <= wms[i] {
                late.push(i as u32);
                continue;
            }
            let part = self.part(*g);
            if !part.registered {
                part.registered = true;
                self.windows.entry((e, s)).or_default().push(*g);
            }
            self.insert(*g, sort, rows, i);
        }
        if !late.is_empty() {
            let wm = late.iter().map(|i| wms[*i as usize]).min().unwrap_or(i64::MIN);
            cx.late(
                input,
                &UInt32Array::from(late),
                format!(
                    "late: its window had ended at the watermark {}",
                    crate::time::format_ms(wm)
                ),
            )?;
        }
        if self.cfg.function != RankFn::RowNumber {
            let (f, hi) = (self.cfg.function, self.cfg.hi);
            for g in gids {
                self.part(*g).trim(f, hi);
            }
        }
        Ok(())
    }

    /// Emit the top rows of every window ending at or before `wm`, and forget those windows.
    fn fire_windows(&mut self, wm: i64) -> Result<Vec<ChangeBatch>> {
        let rest = if wm == i64::MAX {
            BTreeMap::new()
        } else {
            self.windows.split_off(&(wm + 1, i64::MIN))
        };
        let ready = std::mem::replace(&mut self.windows, rest);
        if ready.is_empty() {
            return Ok(Vec::new());
        }
        let (f, lo, hi) = (self.cfg.function, self.cfg.lo, self.cfg.hi);
        let mut out: Vec<(&[u8], u64, RowKind)> = Vec::new();
        let empty = Part::default();
        for ((e, _), gids) in &ready {
            if *e <= self.emit_floor {
                continue;
            }
            for g in gids {
                let part = self.parts.get(*g as usize).unwrap_or(&empty);
                out.extend(
                    part.visible(f, lo, hi)
                        .into_iter()
                        .map(|(r, b)| (b, r, RowKind::Insert)),
                );
            }
        }
        let batch = if out.is_empty() { None } else { Some(self.output(&out)?) };
        drop(out);
        for g in ready.into_values().flatten() {
            if let Some(p) = self.parts.get_mut(g as usize) {
                *p = Part::default();
            }
            self.table.remove(g);
        }
        Ok(batch.into_iter().collect())
    }
}

/// Checkpoints (see [`super::state`]). Tables:
///
/// - `meta` (one row): `plan` (which Top-N wrote it), `seq` (arrivals so far: the next tie-break),
///   `wm` (the watermark emitted rows carry), `emit_floor`.
/// - `rows` ([`Emit::Updates`], [`Emit::Window`]; keyed by partition): every row a partition holds,
///   in rank order, with its `tie` (the tie-break after its ORDER BY values), then the input's
///   columns (`row.<name>`). The ORDER BY bytes are computed again from the rows; over a changelog
///   the index of rows to retract is rebuilt in arrival order. The rows visible now are what was
///   emitted, so nothing else is needed to retract them later.
/// - `windows` ([`Emit::Window`]; keyed by partition): `window_start`, `window_end` (ms) of every
///   partition waiting for its window, in firing order.
/// - `first` ([`Emit::FirstByTime`]; keyed by partition, one row per partition id in id order):
///   `time` (of the first row so far; NULL: none yet), `emitted` (it was emitted), then the input's
///   columns holding the pending first row (NULL once emitted).
impl TopN {
    /// The input's columns (the output without the rank).
    fn input_schema(&self) -> SchemaRef {
        let fields = self.cfg.schema.fields();
        Arc::new(Schema::new(
            fields
                .iter()
                .take(fields.len().saturating_sub(1))
                .cloned()
                .collect::<Vec<_>>(),
        ))
    }

    /// What a checkpoint must have been written by.
    fn plan_text(&self) -> String {
        let emit = match self.cfg.emit {
            Emit::Updates => "updates".to_string(),
            Emit::FirstByTime { time } => format!("first row by column {time}"),
            Emit::Window { start, end } => format!("window (columns {start}, {end})"),
        };
        format!(
            "{} ranks {}..={} emitting {emit}{}{} over {} columns",
            self.cfg.function.sql(),
            self.cfg.lo,
            self.cfg.hi,
            if self.cfg.retracting { ", over a changelog" } else { "" },
            if self.cfg.last_wins_ties {
                ", later arrivals first"
            } else {
                ""
            },
            self.cfg.schema.fields().len().saturating_sub(1),
        )
    }

    /// Row-format rows as the input's columns, named `row.<name>`.
    fn row_columns(&self, rows: &[&[u8]]) -> Result<Vec<(String, ArrayRef)>> {
        let parser = self.rows.parser();
        let cols = self.rows.convert_rows(rows.iter().map(|r| parser.parse(r)))?;
        Ok(self
            .input_schema()
            .fields()
            .iter()
            .zip(cols)
            .map(|(f, c)| (format!("row.{}", f.name()), c))
            .collect())
    }

    /// The input's columns of state table `name`, from column `from` on, as an input batch.
    fn read_rows(&self, name: &str, t: &RecordBatch, from: usize) -> Result<RecordBatch> {
        state::check_key_groups(name, t)?;
        let schema = self.input_schema();
        let nin = schema.fields().len();
        if t.num_columns() != from + nin {
            return Err(Error::Internal(format!(
                "Top-N state table '{name}' has {} columns, not the {} this Top-N writes",
                t.num_columns(),
                from + nin
            )));
        }
        for (i, f) in schema.fields().iter().enumerate() {
            let c = t.column(from + i);
            if c.data_type() != f.data_type() {
                return Err(Error::Internal(format!(
                    "Top-N state table '{name}': column '{}' has type {}, not the input's {}",
                    t.schema().field(from + i).name(),
                    c.data_type(),
                    f.data_type()
                )));
            }
        }
        Ok(RecordBatch::try_new_with_options(
            schema,
            t.columns()[from..].to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(t.num_rows())),
        )?)
    }

    /// The partition ids of `batch`'s rows (interned), checked against the keys the table stored.
    fn intern_checked(&mut self, name: &str, batch: &RecordBatch, stored: &BinaryArray) -> Result<Vec<u32>> {
        let gids = self
            .table
            .intern(&Self::eval(&self.cfg.partition, batch)?, batch.num_rows())?;
        for (i, g) in gids.iter().enumerate() {
            if self.table.key_bytes(*g) != Some(stored.value(i)) {
                return Err(Error::Internal(format!(
                    "Top-N state table '{name}': row {i} is stored under another partition than its own"
                )));
            }
        }
        Ok(gids)
    }

    fn snapshot_rows(&self, st: &mut OpState) -> Result<()> {
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut ties: Vec<u64> = Vec::new();
        let mut rows: Vec<&[u8]> = Vec::new();
        for g in self.table.ids() {
            let (Some(key), Some(part)) = (self.table.key_bytes(g), self.parts.get(g as usize)) else {
                continue;
            };
            for ((_, tie), row) in &part.rows {
                keys.push(key);
                ties.push(*tie);
                rows.push(row);
            }
        }
        let named = self.row_columns(&rows)?;
        let mut cols: Vec<(&str, ArrayRef)> = vec![("tie", Arc::new(UInt64Array::from(ties)))];
        cols.extend(named.iter().map(|(n, c)| (n.as_str(), c.clone())));
        st.put("rows", keyed_table(keys, cols)?);
        Ok(())
    }

    fn restore_rows(&mut self, t: RecordBatch) -> Result<()> {
        let stored = state::keys(&t)?.clone();
        let ties = state::dense_column::<UInt64Array>("rows", &t, "tie")?.clone();
        let batch = self.read_rows("rows", &t, 3)?;
        let gids = self.intern_checked("rows", &batch, &stored)?;
        let sort = self.sort.convert_columns(&Self::eval(&self.cfg.order, &batch)?)?;
        let rows = self.rows.convert_columns(batch.columns())?;
        let retracting = self.cfg.retracting;
        for (i, g) in gids.iter().enumerate() {
            let tie = ties.value(i);
            let row: Bytes = rows.row(i).as_ref().into();
            let part = self.part(*g);
            if retracting {
                part.index.entry(row.clone()).or_default().push(tie);
            }
            part.rows.insert((sort.row(i).as_ref().into(), tie), row);
        }
        // Equal rows are retracted latest arrival first.
        let last_wins = self.cfg.last_wins_ties;
        for part in &mut self.parts {
            for ties in part.index.values_mut() {
                if last_wins {
                    ties.sort_unstable_by(|a, b| b.cmp(a));
                } else {
                    ties.sort_unstable();
                }
            }
        }
        Ok(())
    }

    fn snapshot_windows(&self, st: &mut OpState) -> Result<()> {
        let mut keys: Vec<&[u8]> = Vec::new();
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        for ((e, s), gids) in &self.windows {
            for g in gids {
                let key = self
                    .table
                    .key_bytes(*g)
                    .ok_or_else(|| Error::Internal("a Top-N window lists a forgotten partition".into()))?;
                keys.push(key);
                starts.push(*s);
                ends.push(*e);
            }
        }
        st.put(
            "windows",
            keyed_table(
                keys,
                vec![
                    ("window_start", Arc::new(Int64Array::from(starts))),
                    ("window_end", Arc::new(Int64Array::from(ends))),
                ],
            )?,
        );
        Ok(())
    }

    fn restore_windows(&mut self, t: RecordBatch) -> Result<()> {
        let keys = state::keys(&t)?;
        state::check_key_groups("windows", &t)?;
        let starts = state::dense_column::<Int64Array>("windows", &t, "window_start")?;
        let ends = state::dense_column::<Int64Array>("windows", &t, "window_end")?;
        for i in 0..t.num_rows() {
            let g = self.table.intern_bytes(keys.value(i));
            let part = self.part(g);
            if part.registered {
                return Err(Error::Internal(
                    "Top-N state table 'windows' lists a partition twice".into(),
                ));
            }
            part.registered = true;
            self.windows
                .entry((ends.value(i), starts.value(i)))
                .or_default()
                .push(g);
        }
        Ok(())
    }

    fn snapshot_first(&self, st: &mut OpState) -> Result<()> {
        let n = self.table.capacity();
        let mut keys: Vec<&[u8]> = Vec::with_capacity(n);
        let mut times: Vec<Option<i64>> = Vec::with_capacity(n);
        let mut emitted: Vec<bool> = Vec::with_capacity(n);
        let mut pending: Vec<&[u8]> = Vec::new();
        let mut at: Vec<Option<u32>> = Vec::with_capacity(n);
        for g in 0..n {
            let key = self
                .table
                .key_bytes(g as u32)
                .ok_or_else(|| Error::Internal("a first-row deduplication forgot a key".into()))?;
            keys.push(key);
            let (time, done, row) = match self.first.get(g) {
                Some(Some(First::Pending { time, row })) => (Some(*time), false, Some(row.as_ref())),
                Some(Some(First::Emitted { time })) => (Some(*time), true, None),
                _ => (None, false, None),
            };
            times.push(time);
            emitted.push(done);
            at.push(row.map(|r| {
                pending.push(r);
                (pending.len() - 1) as u32
            }));
        }
        let at = UInt32Array::from(at);
        let named = self
            .row_columns(&pending)?
            .into_iter()
            .map(|(name, c)| Ok((name, take(&c, &at, None)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut cols: Vec<(&str, ArrayRef)> = vec![
            ("time", Arc::new(Int64Array::from(times))),
            ("emitted", Arc::new(BooleanArray::from(emitted))),
        ];
        cols.extend(named.iter().map(|(n, c)| (n.as_str(), c.clone())));
        st.put("first", keyed_table(keys, cols)?);
        Ok(())
    }

    fn restore_first(&mut self, t: RecordBatch) -> Result<()> {
        state::check_key_groups("first", &t)?;
        let keys = state::keys(&t)?.clone();
        let times = column::<Int64Array>(&t, "time")?.clone();
        let emitted = state::dense_column::<BooleanArray>("first", &t, "emitted")?.clone();
        // Partition ids as they were: the table never forgets a key here, so ids are dense.
        for i in 0..t.num_rows() {
            if self.table.intern_bytes(keys.value(i)) as usize != i {
                return Err(Error::Internal(
                    "Top-N state table 'first' lists a partition twice".into(),
                ));
            }
        }
        let is_pending: BooleanArray = (0..t.num_rows())
            .map(|i| Some(times.is_valid(i) && !emitted.value(i)))
            .collect();
        let pending = filter_record_batch(&t, &is_pending)?;
        let batch = self.read_rows("first", &pending, 4)?;
        self.intern_checked("first", &batch, state::keys(&pending)?)?;
        let rows = self.rows.convert_columns(batch.columns())?;
        self.first = Vec::with_capacity(t.num_rows());
        let mut next = 0;
        for i in 0..t.num_rows() {
            let time = times.is_valid(i).then(|| times.value(i));
            self.first.push(match time {
                None => None,
                Some(time) if emitted.value(i) => Some(First::Emitted { time }),
                Some(time) => {
                    let row = rows.row(next).as_ref().into();
                    next += 1;
                    self.due.insert((time, i as u32));
                    Some(First::Pending { time, row })
                }
            });
        }
        Ok(())
    }
}

impl Operator for TopN {
    fn process(&mut self, _port: usize, input: ChangeBatch, cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let n = input.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        let b = &input.batch;
        let keys = Self::eval(&self.cfg.partition, b)?;
        let gids = self.table.intern(&keys, n)?;
        let rows = self.rows.convert_columns(b.columns())?;
        match self.cfg.emit {
            Emit::Updates => {
                let sort = self.sort.convert_columns(&Self::eval(&self.cfg.order, b)?)?;
                self.process_updates(&input, &gids, &sort, &rows)?;
            }
            Emit::FirstByTime { time } => self.process_first(&input, &gids, &rows, time, cx)?,
            Emit::Window { start, end } => {
                let sort = self.sort.convert_columns(&Self::eval(&self.cfg.order, b)?)?;
                self.process_window(&input, &gids, (&sort, &rows), (start, end), cx)?;
            }
        }
        Ok(Vec::new())
    }

    fn flush(&mut self, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        match self.cfg.emit {
            Emit::Updates => self.emit_updates(),
            _ => Ok(Vec::new()),
        }
    }

    fn advance(&mut self, wm: i64, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let out = match self.cfg.emit {
            Emit::Updates => Vec::new(),
            Emit::FirstByTime { .. } => self.fire_first(wm)?,
            Emit::Window { .. } => self.fire_windows(wm)?,
        };
        self.wm = self.wm.max(wm);
        Ok(out)
    }

    fn low_water(&self) -> i64 {
        match self.cfg.emit {
            Emit::Window { .. } => self.windows.keys().map(|(_, s)| *s).min().unwrap_or(i64::MAX),
            _ if self.table.is_empty() => i64::MAX,
            _ => i64::MIN,
        }
    }

    fn state_size(&self) -> usize {
        match self.cfg.emit {
            Emit::FirstByTime { .. } => self.table.len(),
            _ => self.parts.iter().map(|p| p.rows.len()).sum(),
        }
    }

    fn set_emit_floor(&mut self, floor: i64) {
        self.emit_floor = floor;
    }

    fn snapshot(&self) -> Result<OpState> {
        if !self.touched.is_empty() {
            return Err(Error::Internal(
                "a Top-N was snapshotted in the middle of a micro-batch (before its flush)".into(),
            ));
        }
        let mut st = OpState::new();
        st.put(
            "meta",
            plain_table(vec![
                ("plan", Arc::new(StringArray::from(vec![self.plan_text()]))),
                ("seq", Arc::new(UInt64Array::from(vec![self.seq]))),
                ("wm", Arc::new(Int64Array::from(vec![self.wm]))),
                ("emit_floor", Arc::new(Int64Array::from(vec![self.emit_floor]))),
            ])?,
        );
        match self.cfg.emit {
            Emit::Updates => self.snapshot_rows(&mut st)?,
            Emit::FirstByTime { .. } => self.snapshot_first(&mut st)?,
            Emit::Window { .. } => {
                self.snapshot_rows(&mut st)?;
                self.snapshot_windows(&mut st)?;
            }
        }
        Ok(st)
    }

    fn restore(&mut self, mut st: OpState) -> Result<()> {
        let meta = st.take_single_row("meta")?;
        let plan = state::dense_column::<StringArray>("meta", &meta, "plan")?.value(0);
        if plan != self.plan_text() {
            return Err(Error::Internal(format!(
                "the checkpoint holds the state of another Top-N ({plan}), not of this one ({})",
                self.plan_text()
            )));
        }
        self.seq = state::dense_column::<UInt64Array>("meta", &meta, "seq")?.value(0);
        self.wm = state::dense_column::<Int64Array>("meta", &meta, "wm")?.value(0);
        self.emit_floor = self
            .emit_floor
            .max(state::dense_column::<Int64Array>("meta", &meta, "emit_floor")?.value(0));
        match self.cfg.emit {
            Emit::Updates => self.restore_rows(st.take("rows")?)?,
            Emit::FirstByTime { .. } => self.restore_first(st.take("first")?)?,
            Emit::Window { .. } => {
                self.restore_rows(st.take("rows")?)?;
                self.restore_windows(st.take("windows")?)?;
            }
        }
        if !st.is_empty() {
            let names: Vec<&str> = st.tables.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Error::Internal(format!(
                "a Top-N's state has tables it does not write: {}",
                names.join(", ")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::compute::SortOptions;
    use datafusion::arrow::datatypes::{Field, Int64Type, Schema, TimeUnit, UInt64Type};
    use datafusion::physical_expr::expressions::col;

    fn input_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]))
    }

    /// Top-N of `k` by `v` (descending) or, with `by_time`, by `t`.
    fn op(function: RankFn, hi: u64, emit: Emit, retracting: bool, by_time: Option<bool>) -> TopN {
        let s = input_schema();
        let mut fields: Vec<Field> = s.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("rn", DataType::UInt64, false));
        let (order, desc) = match by_time {
            Some(asc) => ("t", !asc),
            None => ("v", true),
        };
        let order_type = s.field_with_name(order).expect("order").data_type().clone();
        TopN::new(Config {
            function,
            partition: vec![col("k", &s).expect("k")],
            partition_types: vec![DataType::Utf8],
            order: vec![col(order, &s).expect("order")],
            order_fields: vec![SortField::new_with_options(
                order_type,
                SortOptions {
                    descending: desc,
                    nulls_first: false,
                },
            )],
            lo: 1,
            hi,
            last_wins_ties: by_time == Some(false),
            emit,
            retracting,
            schema: Arc::new(Schema::new(fields)),
        })
        .expect("op")
    }

    /// Rows `(k, v, t)` arrived under watermarks `wms`, with kinds.
    fn rows(r: &[(&str, i64, i64)], wms: &[i64], kinds: Option<Vec<RowKind>>) -> ChangeBatch {
        let b = RecordBatch::try_new(
            input_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(r.iter().map(|x| x.0))),
                Arc::new(Int64Array::from_iter_values(r.iter().map(|x| x.1))),
                Arc::new(TimestampMillisecondArray::from_iter_values(r.iter().map(|x| x.2))),
            ],
        )
        .expect("batch");
        let mut c = match kinds {
            Some(k) => ChangeBatch::changes(b, k, 0),
            None => ChangeBatch::append(b, 0),
        };
        c.wm = Int64Array::from(wms.to_vec());
        c
    }

    /// Output rows as `kind k v t rank`.
    fn show(out: &[ChangeBatch]) -> Vec<String> {
        let mut v = Vec::new();
        for c in out {
            let b = &c.batch;
            for i in 0..b.num_rows() {
                v.push(format!(
                    "{} {} {} {} {}",
                    c.kind(i).short(),
                    b.column(0).as_string::<i32>().value(i),
                    b.column(1).as_primitive::<Int64Type>().value(i),
                    b.column(2)
                        .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>()
                        .value(i),
                    b.column(3).as_primitive::<UInt64Type>().value(i)
                ));
            }
        }
        v
    }

    fn step(op: &mut TopN, input: ChangeBatch, wm: i64, cx: &mut Context) -> Vec<String> {
        let mut out = op.process(0, input, cx).expect("process");
        out.extend(op.flush(cx).expect("flush"));
        out.extend(op.advance(wm, cx).expect("advance"));
        show(&out)
    }

    #[test]
    fn row_number_changes_by_position_and_ties_keep_arrival_order() {
        let mut t = op(RankFn::RowNumber, 2, Emit::Updates, false, None);
        let mut cx = Context::default();
        assert_eq!(
            step(
                &mut t,
                rows(&[("a", 5, 0), ("a", 7, 1), ("b", 1, 2)], &[0; 3], None),
                0,
                &mut cx
            ),
            vec!["+I a 7 1 1", "+I a 5 0 2", "+I b 1 2 1"]
        );
        assert_eq!(
            step(&mut t, rows(&[("a", 6, 3)], &[0], None), 0, &mut cx),
            vec!["-U a 5 0 2", "+U a 6 3 2"]
        );
        // Ties on v rank in arrival order: the second 7 ranks after the first.
        assert_eq!(
            step(&mut t, rows(&[("a", 7, 4)], &[0], None), 0, &mut cx),
            vec!["-U a 6 3 2", "+U a 7 4 2"]
        );
        // Below the top 2: nothing; an append-only input keeps only what can still be visible.
        assert!(step(&mut t, rows(&[("a", 1, 5)], &[0], None), 0, &mut cx).is_empty());
        assert_eq!(t.state_size(), 3);
    }

    #[test]
    fn over_a_changelog_a_retraction_brings_a_lower_row_back() {
        let mut t = op(RankFn::Rank, 1, Emit::Updates, true, None);
        let mut cx = Context::default();
        let out = step(
            &mut t,
            rows(&[("a", 5, 0), ("a", 9, 1), ("a", 9, 2)], &[0; 3], None),
            0,
            &mut cx,
        );
        assert_eq!(out, vec!["+I a 9 1 1", "+I a 9 2 1"], "ties share rank 1");
        let out = step(
            &mut t,
            rows(
                &[("a", 9, 1), ("a", 9, 2)],
                &[0; 2],
                Some(vec![RowKind::UpdateBefore, RowKind::Delete]),
            ),
            0,
            &mut cx,
        );
        assert_eq!(out, vec!["-D a 9 1 1", "-D a 9 2 1", "+I a 5 0 1"]);
        let out = step(
            &mut t,
            rows(&[("a", 5, 0)], &[0], Some(vec![RowKind::Delete])),
            0,
            &mut cx,
        );
        assert_eq!(out, vec!["-D a 5 0 1"]);
        assert_eq!((t.state_size(), t.table.len()), (0, 0), "an empty partition is dropped");
    }

    #[test]
    fn last_row_by_time_wins_ties_by_arrival() {
        let mut t = op(RankFn::RowNumber, 1, Emit::Updates, false, Some(false));
        let mut cx = Context::default();
        assert_eq!(
            step(
                &mut t,
                rows(&[("a", 1, 10), ("a", 2, 10), ("a", 3, 5)], &[0; 3], None),
                0,
                &mut cx
            ),
            vec!["+I a 2 10 1"],
            "of two rows at the newest time, the later arrival"
        );
        assert_eq!(
            step(&mut t, rows(&[("a", 4, 10)], &[0], None), 0, &mut cx),
            vec!["-U a 2 10 1", "+U a 4 10 1"]
        );
    }

    #[test]
    fn first_row_by_time_is_emitted_once_final_and_older_rows_after_that_are_late() {
        let mut t = op(RankFn::RowNumber, 1, Emit::FirstByTime { time: 2 }, false, Some(true));
        let mut cx = Context::default();
        // b's row at 5 and a's row at 8 are final at watermark 9; a's at 3 is older than what a had
        // settled on when it arrived (8, behind that row's watermark 9): late. Ties keep the first.
        let out = step(
            &mut t,
            rows(&[("a", 1, 10), ("a", 2, 8), ("b", 3, 5), ("b", 4, 5)], &[0; 4], None),
            9,
            &mut cx,
        );
        assert_eq!(out, vec!["+I b 3 5 1", "+I a 2 8 1"]);
        let out = step(
            &mut t,
            rows(&[("a", 5, 3), ("a", 6, 9), ("c", 7, 2)], &[9; 3], None),
            20,
            &mut cx,
        );
        assert_eq!(
            out,
            vec!["+I c 7 2 1"],
            "behind the watermark, but c had no first row yet"
        );
        assert_eq!(cx.late.len(), 1);
        assert_eq!(cx.late[0].rows.num_rows(), 1);
        assert!(
            cx.late[0].reason.starts_with("late: the first row of its key"),
            "{}",
            cx.late[0].reason
        );
    }

    #[test]
    fn window_top_n_fires_at_window_end_and_drops_late_rows() {
        // `t` stands for both window_start and window_end here (the partition `k` holds one window).
        let mut t = op(RankFn::RowNumber, 1, Emit::Window { start: 2, end: 2 }, false, None);
        let mut cx = Context::default();
        let out = step(
            &mut t,
            rows(&[("a", 1, 10), ("a", 3, 10), ("b", 2, 20)], &[0; 3], None),
            5,
            &mut cx,
        );
        assert!(out.is_empty(), "no window has ended");
        let out = step(&mut t, rows(&[("a", 9, 10)], &[10], None), 10, &mut cx);
        assert_eq!(out, vec!["+I a 3 10 1"], "the window ending at 10 fires without the 9");
        assert_eq!(cx.late.len(), 1, "its window had ended when the 9 arrived");
        assert_eq!(t.low_water(), 20);
        let out = step(&mut t, rows(&[], &[], None), i64::MAX, &mut cx);
        assert_eq!(out, vec!["+I b 2 20 1"]);
        assert_eq!(t.state_size(), 0);
    }

    use crate::operator::state::testing::{Step, assert_restores_at_every_split};

    fn ins(r: &[(&str, i64, i64)], wm: i64) -> Step {
        Step::Rows(0, rows(r, &vec![wm; r.len()], None))
    }

    fn changes(r: &[(&str, i64, i64)], kinds: Vec<RowKind>) -> Step {
        Step::Rows(0, rows(r, &vec![0; r.len()], Some(kinds)))
    }

    #[test]
    fn restored_top_1_retracts_the_winner_from_before_the_restore() {
        let steps = [
            ins(&[("a", 5, 0), ("b", 3, 1)], 0),
            ins(&[("a", 4, 2), ("a", 5, 3)], 0),
            ins(&[("a", 7, 4)], 0),
            ins(&[("b", 9, 5), ("c", 1, 6)], 0),
            ins(&[("a", 8, 7), ("b", 9, 8)], 0),
        ];
        let n = assert_restores_at_every_split(|| op(RankFn::RowNumber, 1, Emit::Updates, false, None), &steps);
        assert!(n > 10, "{n}");
        for f in [RankFn::Rank, RankFn::DenseRank] {
            assert!(assert_restores_at_every_split(|| op(f, 2, Emit::Updates, false, None), &steps) > 0);
        }
    }

    #[test]
    fn restored_top_3_over_a_changelog_takes_retractions_of_rows_from_before() {
        use RowKind::*;
        let steps = [
            changes(
                &[
                    ("a", 5, 0),
                    ("a", 9, 1),
                    ("a", 9, 6),
                    ("a", 6, 1),
                    ("a", 9, 1),
                    ("a", 2, 2),
                    ("a", 1, 3),
                ],
                vec![Insert; 7],
            ),
            changes(&[("b", 4, 0), ("a", 7, 4)], vec![Insert, Insert]),
            changes(&[("a", 9, 1), ("a", 8, 1)], vec![UpdateBefore, UpdateAfter]),
            changes(&[("a", 9, 1), ("a", 5, 0)], vec![Delete, Delete]),
            changes(&[("b", 4, 0), ("a", 3, 9)], vec![Delete, Insert]),
            changes(&[("a", 8, 1), ("c", 1, 1)], vec![Delete, Delete]),
        ];
        for f in [RankFn::RowNumber, RankFn::Rank, RankFn::DenseRank] {
            let n = assert_restores_at_every_split(|| op(f, 3, Emit::Updates, true, None), &steps);
            assert!(n > 10, "{f:?}: {n}");
        }
        // Equal rows retract the later arrival first, also where later arrivals rank first.
        let n = assert_restores_at_every_split(|| op(RankFn::RowNumber, 6, Emit::Updates, true, Some(false)), &steps);
        assert!(n > 0);
    }

    #[test]
    fn restored_deduplication_keeps_its_first_and_last_rows() {
        // Keep-last: ROW_NUMBER over the time descending, rank 1.
        let last = [
            ins(&[("a", 1, 10), ("a", 2, 10), ("b", 3, 5)], 0),
            ins(&[("a", 4, 10), ("b", 5, 4)], 0),
            ins(&[("b", 6, 7), ("a", 7, 9)], 0),
        ];
        let n = assert_restores_at_every_split(|| op(RankFn::RowNumber, 1, Emit::Updates, false, Some(false)), &last);
        assert!(n > 0);
        // Keep-first: emitted once final; older rows after that are late, also after the restore.
        let first = [
            ins(&[("a", 1, 10), ("a", 2, 8), ("b", 3, 5), ("b", 4, 5)], 0),
            Step::Advance(6),
            ins(&[("c", 5, 8), ("b", 6, 1), ("d", 7, 20)], 6),
            Step::Advance(9),
            ins(&[("a", 8, 3), ("a", 9, 9), ("e", 10, 2)], 9),
            ins(&[("d", 11, 15), ("f", 12, 15)], 9),
            Step::Advance(30),
            ins(&[("d", 13, 1)], 30),
        ];
        let make = || op(RankFn::RowNumber, 1, Emit::FirstByTime { time: 2 }, false, Some(true));
        assert!(assert_restores_at_every_split(make, &first) > 10);
    }

    #[test]
    fn restored_window_top_n_fires_windows_filled_before_the_restore() {
        // `t` stands for both window_start and window_end (the partition `k` holds one window).
        let steps = [
            ins(&[("a", 1, 10), ("a", 3, 10), ("b", 2, 20), ("c", 5, 10)], 0),
            ins(&[("a", 2, 10), ("b", 7, 20), ("d", 1, 30)], 0),
            Step::Advance(10),
            ins(&[("a", 9, 10), ("b", 8, 20)], 10),
            Step::Advance(25),
            ins(&[("d", 4, 30), ("b", 1, 20)], 25),
            Step::Advance(i64::MAX),
        ];
        for f in [RankFn::RowNumber, RankFn::Rank, RankFn::DenseRank] {
            let make = || op(f, 2, Emit::Window { start: 2, end: 2 }, false, None);
            assert!(assert_restores_at_every_split(make, &steps) > 5);
        }
    }

    #[test]
    fn restoring_a_state_that_is_not_this_top_ns_fails() {
        let mut t = op(RankFn::Rank, 3, Emit::Updates, true, None);
        let mut cx = Context::default();
        step(&mut t, rows(&[("a", 5, 0), ("b", 9, 1)], &[0; 2], None), 0, &mut cx);
        let good = t.snapshot().expect("snapshot");
        let fresh = || op(RankFn::Rank, 3, Emit::Updates, true, None);
        fresh().restore(good.clone()).expect("restores");

        let mut missing = good.clone();
        missing.take("rows").expect("rows");
        let e = fresh().restore(missing).expect_err("no rows").to_string();
        assert!(e.contains("'rows'"), "{e}");

        // A row column of another type.
        let mut st = good.clone();
        let rows_t = st.take("rows").expect("rows");
        let mut cols = rows_t.columns().to_vec();
        cols[4] = cast(&cols[4], &DataType::Utf8).expect("cast");
        let schema = Schema::new(
            rows_t
                .schema()
                .fields()
                .iter()
                .zip(&cols)
                .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        st.put("rows", RecordBatch::try_new(Arc::new(schema), cols).expect("batch"));
        let e = fresh().restore(st).expect_err("wrong type").to_string();
        assert!(e.contains("row.v") && e.contains("Utf8"), "{e}");

        // A bookkeeping column of another type.
        let mut st = good.clone();
        let meta = st.take("meta").expect("meta");
        let mut cols = meta.columns().to_vec();
        cols[1] = cast(&cols[1], &DataType::Int32).expect("cast");
        st.put(
            "meta",
            plain_table(
                meta.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .zip(cols)
                    .collect(),
            )
            .expect("meta"),
        );
        let e = fresh().restore(st).expect_err("wrong type").to_string();
        assert!(e.contains("'seq'"), "{e}");

        // Rows under keys of other key groups.
        let mut st = good.clone();
        let t = st.take("rows").expect("rows");
        let mut cols = t.columns().to_vec();
        cols[0] = Arc::new(datafusion::arrow::array::UInt16Array::from_iter_values(
            (0..t.num_rows()).map(|_| 7000),
        ));
        st.put("rows", RecordBatch::try_new(t.schema(), cols).expect("rows"));
        let e = fresh().restore(st).expect_err("key groups").to_string();
        assert!(e.contains("key_group"), "{e}");
        // A table it does not write.
        let mut st = good.clone();
        st.put("surprise", RecordBatch::new_empty(input_schema()));
        let e = fresh().restore(st).expect_err("extra table").to_string();
        assert!(e.contains("surprise"), "{e}");

        // Another Top-N's state.
        let e = op(RankFn::Rank, 2, Emit::Updates, true, None)
            .restore(good.clone())
            .expect_err("another plan")
            .to_string();
        assert!(e.contains("another Top-N"), "{e}");
        let e = op(RankFn::RowNumber, 1, Emit::FirstByTime { time: 2 }, false, Some(true))
            .restore(OpState::new())
            .expect_err("empty")
            .to_string();
        assert!(e.contains("'meta'"), "{e}");
    }
}
