//! OVER aggregates: `SUM/COUNT/AVG/MIN/MAX(x) OVER (PARTITION BY k ORDER BY <time attribute> <frame>)`
//! (Flink's row-time OVER aggregation). Every input row leaves once, with the aggregates of its frame.
//!
//! A row's frame is only known when no row can arrive before it any more, so rows wait for the
//! watermark to pass their time; then each partition's waiting rows are taken in time order (ties in
//! arrival order) and its aggregates move along: a row (`ROWS`) or all rows of one time (`RANGE`:
//! peers share the frame and the result) are added, rows that fell out of the frame are retracted
//! (retractable accumulators of [`super::acc`]), the values are read. Many partitions move in one
//! step: step k adds the k-th row (or time) of every partition in one batch update.
//!
//! Late rows follow Flink's rule, decided with each row's arrival watermark so that results do not
//! depend on micro-batch boundaries: a row is late if its partition had already produced a result for
//! its time or a later one (a row of the partition, arrived before it, whose time the watermark had
//! passed when it arrived).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray, UInt32Array, UInt64Array};
use datafusion::arrow::compute::{cast, interleave};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::PhysicalExpr;

use super::acc::{AggCall, Aggregates};
use super::groups::GroupTable;
use super::state::{self, OpState, column, keyed_table, plain_table};
use super::window::millis;
use super::{ChangeBatch, Context, Operator};
use crate::error::{Error, Result};

/// A frame ending at the current row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `ROWS BETWEEN n PRECEDING AND CURRENT ROW` (`None`: `UNBOUNDED PRECEDING`).
    Rows(Option<u64>),
    /// `RANGE BETWEEN INTERVAL … PRECEDING AND CURRENT ROW`, in ms (`None`: `UNBOUNDED PRECEDING`).
    Range(Option<i64>),
}

impl Frame {
    pub fn sql(&self) -> String {
        match self {
            Frame::Rows(None) => "ROWS UNBOUNDED PRECEDING".into(),
            Frame::Rows(Some(n)) => format!("ROWS {n} PRECEDING"),
            Frame::Range(None) => "RANGE UNBOUNDED PRECEDING".into(),
            Frame::Range(Some(ms)) => format!("RANGE {} PRECEDING", super::window::dur(*ms)),
        }
    }

    fn bounded(&self) -> bool {
        matches!(self, Frame::Rows(Some(_)) | Frame::Range(Some(_)))
    }
}

#[derive(Clone)]
pub struct Config {
    pub partition: Vec<Arc<dyn PhysicalExpr>>,
    pub partition_types: Vec<DataType>,
    /// The time attribute's column in the input.
    pub time: usize,
    /// The aggregate calls in output order, each with its frame.
    pub calls: Vec<(AggCall, Frame)>,
    /// The input's columns, then one per call.
    pub schema: SchemaRef,
}

/// Rows in a partition's frame, oldest first: time and Arrow row-format bytes.
type FrameRows = VecDeque<(i64, Box<[u8]>)>;

/// Calls sharing a frame: one aggregate state, moved along together.
struct FrameGroup {
    frame: Frame,
    calls: Arc<[AggCall]>,
    /// Output column (among the calls) of each of `calls`.
    outputs: Vec<usize>,
    aggs: Aggregates,
    /// Per partition id, the rows in the frame that will leave it (bounded frames): time and row.
    frame_rows: Vec<FrameRows>,
}

/// A partition's rows waiting for the watermark, by (time, arrival).
#[derive(Default)]
struct Part {
    waiting: BTreeMap<(i64, u64), Box<[u8]>>,
    /// The newest time a result was produced for.
    done: Option<i64>,
}

pub struct OverAgg {
    cfg: Config,
    rows: RowConverter,
    /// The input's columns (what the aggregates' arguments are evaluated on).
    input_schema: SchemaRef,
    table: GroupTable,
    parts: Vec<Part>,
    groups: Vec<FrameGroup>,
    /// Waiting rows of every partition by (time, arrival).
    due: BTreeSet<(i64, u64, u32)>,
    seq: u64,
    wm: i64,
    emit_floor: i64,
}

impl OverAgg {
    pub fn new(cfg: Config) -> Result<OverAgg> {
        let nin = cfg.schema.fields().len().saturating_sub(cfg.calls.len());
        let fields: Vec<SortField> = cfg
            .schema
            .fields()
            .iter()
            .take(nin)
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        let input_schema = Arc::new(Schema::new(
            cfg.schema.fields().iter().take(nin).cloned().collect::<Vec<_>>(),
        ));
        let mut by_frame: Vec<(Frame, Vec<AggCall>, Vec<usize>)> = Vec::new();
        for (i, (call, frame)) in cfg.calls.iter().enumerate() {
            match by_frame.iter_mut().find(|g| g.0 == *frame) {
                Some(g) => {
                    g.1.push(call.clone());
                    g.2.push(i);
                }
                None => by_frame.push((*frame, vec![call.clone()], vec![i])),
            }
        }
        let groups = by_frame
            .into_iter()
            .map(|(frame, calls, outputs)| {
                let calls: Arc<[AggCall]> = calls.into();
                Ok(FrameGroup {
                    frame,
                    aggs: Aggregates::new(&calls, frame.bounded())?,
                    calls,
                    outputs,
                    frame_rows: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(OverAgg {
            rows: RowConverter::new(fields)?,
            input_schema,
            table: GroupTable::new(&cfg.partition_types)?,
            parts: Vec::new(),
            groups,
            due: BTreeSet::new(),
            seq: 0,
            wm: i64::MIN,
            emit_floor: i64::MIN,
            cfg,
        })
    }

    /// Compute and emit every waiting row whose time is before `wm`.
    fn fire(&mut self, wm: i64) -> Result<Vec<ChangeBatch>> {
        let rest = self.due.split_off(&(wm, 0, 0));
        let ready = std::mem::replace(&mut self.due, rest);
        if ready.is_empty() {
            return Ok(Vec::new());
        }
        // The rows to emit, in (time, arrival) order, and per partition the positions of its rows.
        let mut times: Vec<i64> = Vec::with_capacity(ready.len());
        let mut gids: Vec<u32> = Vec::with_capacity(ready.len());
        let mut fresh: Vec<Box<[u8]>> = Vec::with_capacity(ready.len());
        for (t, seq, g) in ready {
            let part = &mut self.parts[g as usize];
            let row = part
                .waiting
                .remove(&(t, seq))
                .ok_or_else(|| Error::Internal("an OVER aggregate lost a waiting row".into()))?;
            part.done = Some(part.done.map_or(t, |d| d.max(t)));
            times.push(t);
            gids.push(g);
            fresh.push(row);
        }
        let mut by_part: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, g) in gids.iter().enumerate() {
            by_part.entry(*g).or_default().push(i);
        }
        let nfresh = fresh.len();
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.cfg.calls.len()];
        let cap = self.table.capacity();
        for fg in &mut self.groups {
            let cols = move_frame(fg, (&self.rows, &self.input_schema), &fresh, &times, &by_part, cap)?;
            for (c, a) in fg.outputs.iter().zip(cols) {
                columns[*c] = Some(a);
            }
        }
        // The emitted rows: the waiting rows with the aggregate values.
        let parser = self.rows.parser();
        let mut cols = self.rows.convert_rows(fresh.iter().map(|r| parser.parse(r)))?;
        let nin = cols.len();
        for (i, c) in columns.into_iter().enumerate() {
            let a = c.ok_or_else(|| Error::Internal("an OVER aggregate without its frame".into()))?;
            let f = self.cfg.schema.field(nin + i);
            cols.push(if a.data_type() == f.data_type() {
                a
            } else {
                cast(&a, f.data_type())?
            });
        }
        let batch = RecordBatch::try_new_with_options(
            self.cfg.schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(nfresh)),
        )?;
        let mut out = ChangeBatch::append(batch, self.wm);
        if self.emit_floor > i64::MIN {
            // Rows before the restart floor were emitted before the restart.
            let keep: datafusion::arrow::array::BooleanArray =
                times.iter().map(|t| Some(*t >= self.emit_floor)).collect();
            out = out.filter(&keep)?;
        }
        Ok(if out.is_empty() { Vec::new() } else { vec![out] })
    }
}

/// Move frame group `fg` over the rows `fresh` (times `times`; positions per partition in `by_part`,
/// in order); the values of its calls for each row, in row order.
fn move_frame(
    fg: &mut FrameGroup,
    (conv, schema): (&RowConverter, &SchemaRef),
    fresh: &[Box<[u8]>],
    times: &[i64],
    by_part: &BTreeMap<u32, Vec<usize>>,
    capacity: usize,
) -> Result<Vec<ArrayRef>> {
    if fg.frame_rows.len() < capacity {
        fg.frame_rows.resize_with(capacity, VecDeque::new);
    }
    // Rows the aggregates see, as one batch: the rows still in the frames of these partitions
    // (they may leave now), then the new rows.
    let mut all: Vec<&[u8]> = Vec::new();
    // Per partition: the positions in `all` of its frame rows, with their times.
    let mut in_frame: BTreeMap<u32, VecDeque<(i64, u32)>> = BTreeMap::new();
    let held: Vec<(u32, FrameRows)> = if fg.frame.bounded() {
        by_part
            .keys()
            .map(|g| (*g, std::mem::take(&mut fg.frame_rows[*g as usize])))
            .collect()
    } else {
        Vec::new()
    };
    if fg.frame.bounded() {
        for (g, rows) in &held {
            let q = in_frame.entry(*g).or_default();
            for (t, r) in rows {
                q.push_back((*t, all.len() as u32));
                all.push(r);
            }
        }
    }
    let offset = all.len() as u32;
    all.extend(fresh.iter().map(|r| r.as_ref()));
    let parser = conv.parser();
    let batch = RecordBatch::try_new_with_options(
        schema.clone(),
        conv.convert_rows(all.iter().map(|r| parser.parse(r)))?,
        &RecordBatchOptions::new().with_row_count(Some(all.len())),
    )?;
    let ev = Aggregates::evaluate_args(&fg.calls, &batch)?;
    // Units of each partition: a row (ROWS) or the rows of one time (RANGE), as positions in `fresh`.
    let units: Vec<(u32, Vec<Vec<usize>>)> = by_part
        .iter()
        .map(|(g, rows)| {
            let mut us: Vec<Vec<usize>> = Vec::new();
            for r in rows {
                match (fg.frame, us.last_mut()) {
                    (Frame::Range(_), Some(u)) if u.first().is_some_and(|f| times[*f] == times[*r]) => u.push(*r),
                    _ => us.push(vec![*r]),
                }
            }
            (*g, us)
        })
        .collect();
    let steps = units.iter().map(|(_, u)| u.len()).max().unwrap_or(0);
    // Per step, the values of every call (one per partition in the step); per row, where its value is.
    let mut values: Vec<Vec<ArrayRef>> = Vec::with_capacity(steps);
    let mut at: Vec<(usize, usize)> = vec![(0, 0); fresh.len()];
    for k in 0..steps {
        let mut idx: Vec<u32> = Vec::new();
        let mut gids: Vec<u32> = Vec::new();
        let mut retract: Vec<bool> = Vec::new();
        let mut step_gids: Vec<u32> = Vec::new();
        for (g, us) in &units {
            let Some(unit) = us.get(k) else { continue };
            let slot = step_gids.len();
            step_gids.push(*g);
            let t = times[unit[0]];
            for r in unit {
                idx.push(offset + *r as u32);
                gids.push(*g);
                retract.push(false);
                at[*r] = (k, slot);
            }
            if let Some(q) = in_frame.get_mut(g) {
                for r in unit {
                    q.push_back((times[*r], offset + *r as u32));
                }
                let leaving = |q: &VecDeque<(i64, u32)>| match fg.frame {
                    Frame::Rows(Some(n)) => q.len() as u64 > n + 1,
                    Frame::Range(Some(ms)) => q.front().is_some_and(|(ft, _)| *ft < t.saturating_sub(ms)),
                    _ => false,
                };
                while leaving(q) {
                    let Some((_, p)) = q.pop_front() else { break };
                    idx.push(p);
                    gids.push(*g);
                    retract.push(true);
                }
            }
        }
        let rows = UInt32Array::from(idx);
        let retract = retract.iter().any(|r| *r).then_some(retract);
        fg.aggs.update(&ev, Some(&rows), &gids, retract.as_deref(), capacity)?;
        values.push(fg.aggs.evaluate(&step_gids)?);
    }
    // Keep what is still in the frames.
    for (g, q) in in_frame {
        fg.frame_rows[g as usize] = q.into_iter().map(|(t, p)| (t, all[p as usize].into())).collect();
    }
    (0..fg.calls.len())
        .map(|c| {
            let arrays: Vec<&dyn Array> = values.iter().map(|v| v[c].as_ref()).collect();
            Ok(interleave(&arrays, &at)?)
        })
        .collect()
}

/// Checkpoints (see [`super::state`]). Tables:
///
/// - `meta` (one row): `plan` (which OVER aggregate wrote it), `seq` (arrivals so far), `wm` (the
///   watermark emitted rows carry), `emit_floor`.
/// - `partitions` (keyed by partition, every partition in id order): `done` (the newest time it
///   had a result for; NULL: none).
/// - `aggregates_<i>` (keyed by partition, same rows), one per frame of the calls (calls sharing a
///   frame share one state, in the order of their first call): the aggregate state of each
///   partition's frame as [`Aggregates::state_columns`] writes it (`rows`, `a<call>_…`).
/// - `waiting` (keyed by partition): the rows waiting for the watermark, in (time, arrival) order:
///   `time` (ms), `seq` (arrival), then the input's columns (`row.<name>`).
/// - `frame_rows` (keyed by partition): the rows in a bounded frame, oldest first, that will leave
///   it: `frame` (which `aggregates_<i>`), `time` (ms), then the input's columns.
impl OverAgg {
    /// What a checkpoint must have been written by.
    fn plan_text(&self) -> String {
        let calls: Vec<String> = self
            .cfg
            .calls
            .iter()
            .map(|(c, f)| format!("{} {}", c.display, f.sql()))
            .collect();
        format!(
            "OVER ({}) by column {} over {} columns",
            calls.join(", "),
            self.cfg.time,
            self.input_schema.fields().len()
        )
    }

    /// Row-format rows as the input's columns, named `row.<name>`.
    fn row_columns(&self, rows: &[&[u8]]) -> Result<Vec<(String, ArrayRef)>> {
        let parser = self.rows.parser();
        let cols = self.rows.convert_rows(rows.iter().map(|r| parser.parse(r)))?;
        Ok(self
            .input_schema
            .fields()
            .iter()
            .zip(cols)
            .map(|(f, c)| (format!("row.{}", f.name()), c))
            .collect())
    }

    /// A keyed table of rows: `book` columns, then the rows'.
    fn rows_table(&self, keys: Vec<&[u8]>, book: Vec<(&str, ArrayRef)>, rows: &[&[u8]]) -> Result<RecordBatch> {
        let named = self.row_columns(rows)?;
        let mut cols = book;
        cols.extend(named.iter().map(|(n, c)| (n.as_str(), c.clone())));
        keyed_table(keys, cols)
    }

    /// The rows of state table `name` (after `book` bookkeeping columns) as row-format rows, with
    /// their partition ids: each row's partition must be the one it is stored under, its time the
    /// one stored beside it.
    fn read_rows(&self, name: &str, t: &RecordBatch, book: usize) -> Result<(Vec<u32>, Rows)> {
        let bad = |what: String| Error::Internal(format!("OVER aggregate state table '{name}': {what}"));
        state::check_key_groups(name, t)?;
        let from = 2 + book;
        let nin = self.input_schema.fields().len();
        if t.num_columns() != from + nin {
            return Err(bad(format!(
                "{} columns, not the {} this OVER aggregate writes",
                t.num_columns(),
                from + nin
            )));
        }
        for (i, f) in self.input_schema.fields().iter().enumerate() {
            let c = t.column(from + i);
            if c.data_type() != f.data_type() {
                return Err(bad(format!(
                    "column '{}' has type {}, not the input's {}",
                    t.schema().field(from + i).name(),
                    c.data_type(),
                    f.data_type()
                )));
            }
        }
        let batch = RecordBatch::try_new_with_options(
            self.input_schema.clone(),
            t.columns()[from..].to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(t.num_rows())),
        )
        .map_err(|e| bad(e.to_string()))?;
        let n = batch.num_rows();
        let key_cols: Vec<ArrayRef> = self
            .cfg
            .partition
            .iter()
            .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
            .collect::<std::result::Result<_, _>>()?;
        let stored = state::keys(t)?;
        let times = column::<Int64Array>(t, "time")?;
        let ts = millis(batch.column(self.cfg.time))?;
        let mut gids = Vec::with_capacity(n);
        for (i, g) in self.table.lookup(&key_cols, n)?.into_iter().enumerate() {
            match g {
                Some(g) if self.table.key_bytes(g) == Some(stored.value(i)) => gids.push(g),
                _ => return Err(bad(format!("row {i} is stored under another partition than its own"))),
            }
            if times.is_null(i) || ts.is_null(i) || times.value(i) != ts.value(i) {
                return Err(bad(format!("row {i}'s time is not the one stored beside it")));
            }
        }
        Ok((gids, self.rows.convert_columns(batch.columns())?))
    }
}

impl Operator for OverAgg {
    fn process(&mut self, _port: usize, input: ChangeBatch, cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let n = input.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        if input.retractions().is_some() {
            return Err(Error::Internal("an OVER aggregate got a changelog".into()));
        }
        let b = &input.batch;
        let keys: Vec<ArrayRef> = self
            .cfg
            .partition
            .iter()
            .map(|e| e.evaluate(b).and_then(|v| v.into_array(n)))
            .collect::<std::result::Result<_, _>>()?;
        let gids = self.table.intern(&keys, n)?;
        if self.parts.len() < self.table.capacity() {
            self.parts.resize_with(self.table.capacity(), Part::default);
        }
        let ts = millis(b.column(self.cfg.time))?;
        let rows = self.rows.convert_columns(b.columns())?;
        let wms = input.wm.values();
        let mut late = Vec::new();
        let mut reason = String::new();
        for (i, g) in gids.iter().enumerate() {
            if ts.is_null(i) {
                late.push(i as u32);
                continue;
            }
            let (t, w) = (ts.value(i), wms[i]);
            let part = &mut self.parts[*g as usize];
            // The newest time this partition had a result for when the row arrived: rows waiting
            // now whose time the watermark had passed then were computed by then.
            let passed = part.waiting.range(..(w, 0)).next_back().map(|((t, _), _)| *t);
            let done = part.done.max(passed);
            if let Some(d) = done
                && t <= d
            {
                late.push(i as u32);
                if reason.is_empty() {
                    reason = format!(
                        "late: its partition had results up to {} at the watermark {}",
                        crate::time::format_ms(d),
                        crate::time::format_ms(w)
                    );
                }
                continue;
            }
            self.seq += 1;
            part.waiting.insert((t, self.seq), rows.row(i).as_ref().into());
            self.due.insert((t, self.seq, *g));
        }
        if reason.is_empty() {
            reason = "its time is NULL".into();
        }
        cx.late(&input, &UInt32Array::from(late), reason)?;
        Ok(Vec::new())
    }

    fn advance(&mut self, wm: i64, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let out = self.fire(wm)?;
        self.wm = self.wm.max(wm);
        Ok(out)
    }

    fn low_water(&self) -> i64 {
        if self.table.is_empty() { i64::MAX } else { i64::MIN }
    }

    fn state_size(&self) -> usize {
        self.due.len()
            + self
                .groups
                .iter()
                .map(|g| g.frame_rows.iter().map(VecDeque::len).sum::<usize>())
                .sum::<usize>()
    }

    fn set_emit_floor(&mut self, floor: i64) {
        self.emit_floor = floor;
    }

    fn snapshot(&self) -> Result<OpState> {
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
        let (gids, keys) = self.table.snapshot();
        let done = Int64Array::from_iter(gids.iter().map(|g| self.parts.get(*g as usize).and_then(|p| p.done)));
        st.put("partitions", keyed_table(keys.clone(), vec![("done", Arc::new(done))])?);
        for (i, fg) in self.groups.iter().enumerate() {
            let cols = fg.aggs.state_columns(&gids)?;
            st.put(
                &format!("aggregates_{i}"),
                keyed_table(
                    keys.clone(),
                    cols.iter().map(|(n, c)| (n.as_str(), c.clone())).collect(),
                )?,
            );
        }
        let (mut wkeys, mut times, mut seqs, mut rows) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (g, key) in gids.iter().zip(&keys) {
            for ((t, seq), row) in self.parts.get(*g as usize).map(|p| &p.waiting).into_iter().flatten() {
                wkeys.push(*key);
                times.push(*t);
                seqs.push(*seq);
                rows.push(row.as_ref());
            }
        }
        st.put(
            "waiting",
            self.rows_table(
                wkeys,
                vec![
                    ("time", Arc::new(Int64Array::from(times))),
                    ("seq", Arc::new(UInt64Array::from(seqs))),
                ],
                &rows,
            )?,
        );
        let (mut fkeys, mut frames, mut times, mut rows) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (g, key) in gids.iter().zip(&keys) {
            for (i, fg) in self.groups.iter().enumerate() {
                for (t, row) in fg.frame_rows.get(*g as usize).into_iter().flatten() {
                    fkeys.push(*key);
                    frames.push(i as u32);
                    times.push(*t);
                    rows.push(row.as_ref());
                }
            }
        }
        st.put(
            "frame_rows",
            self.rows_table(
                fkeys,
                vec![
                    ("frame", Arc::new(UInt32Array::from(frames))),
                    ("time", Arc::new(Int64Array::from(times))),
                ],
                &rows,
            )?,
        );
        Ok(st)
    }

    fn restore(&mut self, mut st: OpState) -> Result<()> {
        let meta = st.take_single_row("meta")?;
        let plan = state::dense_column::<StringArray>("meta", &meta, "plan")?.value(0);
        if plan != self.plan_text() {
            return Err(Error::Internal(format!(
                "the checkpoint holds the state of another OVER aggregate ({plan}), not of this one ({})",
                self.plan_text()
            )));
        }
        self.seq = state::dense_column::<UInt64Array>("meta", &meta, "seq")?.value(0);
        self.wm = state::dense_column::<Int64Array>("meta", &meta, "wm")?.value(0);
        self.emit_floor = self
            .emit_floor
            .max(state::dense_column::<Int64Array>("meta", &meta, "emit_floor")?.value(0));

        let parts = st.take("partitions")?;
        state::check_key_groups("partitions", &parts)?;
        let done = column::<Int64Array>(&parts, "done")?;
        let gids = self.table.restore(state::keys(&parts)?)?;
        let cap = self.table.capacity();
        self.parts.resize_with(cap, Part::default);
        for (i, g) in gids.iter().enumerate() {
            self.parts[*g as usize].done = done.is_valid(i).then(|| done.value(i));
        }
        for (i, fg) in self.groups.iter_mut().enumerate() {
            let name = format!("aggregates_{i}");
            let t = st.take(&name)?;
            state::check_key_groups(&name, &t)?;
            if state::keys(&t)? != state::keys(&parts)? {
                return Err(Error::Internal(format!(
                    "OVER aggregate state table '{name}' has other partitions than 'partitions'"
                )));
            }
            fg.aggs
                .restore_columns(&gids, &t)
                .map_err(|e| Error::Internal(format!("OVER aggregate state table '{name}': {e}")))?;
            fg.frame_rows.resize_with(cap, VecDeque::new);
        }

        let t = st.take("waiting")?;
        let (wgids, rows) = self.read_rows("waiting", &t, 2)?;
        let times = column::<Int64Array>(&t, "time")?;
        let seqs = column::<UInt64Array>(&t, "seq")?;
        for (i, g) in wgids.iter().enumerate() {
            let (time, seq) = (times.value(i), seqs.value(i));
            if seqs.is_null(i) || seq > self.seq || !self.due.insert((time, seq, *g)) {
                return Err(Error::Internal(format!(
                    "OVER aggregate state table 'waiting': row {i}'s arrival is not one of this operator's"
                )));
            }
            self.parts[*g as usize]
                .waiting
                .insert((time, seq), rows.row(i).as_ref().into());
        }

        let t = st.take("frame_rows")?;
        let (fgids, rows) = self.read_rows("frame_rows", &t, 2)?;
        let times = column::<Int64Array>(&t, "time")?;
        let frames = column::<UInt32Array>(&t, "frame")?;
        for (i, g) in fgids.iter().enumerate() {
            let fg = frames
                .is_valid(i)
                .then(|| self.groups.get_mut(frames.value(i) as usize))
                .flatten()
                .filter(|fg| fg.frame.bounded())
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "OVER aggregate state table 'frame_rows': row {i} is in no bounded frame of this operator"
                    ))
                })?;
            fg.frame_rows[*g as usize].push_back((times.value(i), rows.row(i).as_ref().into()));
        }
        if !st.is_empty() {
            let names: Vec<&str> = st.tables.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Error::Internal(format!(
                "an OVER aggregate's state has tables it does not write: {}",
                names.join(", ")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::acc::AggKind;
    use datafusion::arrow::array::{AsArray, Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Field, Int64Type, TimeUnit};
    use datafusion::physical_expr::expressions::col;

    fn input_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]))
    }

    /// SUM(v) and MAX(v) over `frame`, partitioned by `k`.
    fn op(frame: Frame) -> OverAgg {
        let s = input_schema();
        let call = |kind: AggKind, name: &str| AggCall {
            display: format!("{name}(v)"),
            kind,
            args: vec![col("v", &s).expect("v")],
            filter: None,
            distinct: false,
            return_type: DataType::Int64,
        };
        let mut fields: Vec<Field> = s.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("s", DataType::Int64, true));
        fields.push(Field::new("m", DataType::Int64, true));
        OverAgg::new(Config {
            partition: vec![col("k", &s).expect("k")],
            partition_types: vec![DataType::Utf8],
            time: 2,
            calls: vec![(call(AggKind::Sum, "sum"), frame), (call(AggKind::Max, "max"), frame)],
            schema: Arc::new(Schema::new(fields)),
        })
        .expect("op")
    }

    fn rows(r: &[(&str, i64, i64)], wm: i64) -> ChangeBatch {
        let b = RecordBatch::try_new(
            input_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(r.iter().map(|x| x.0))),
                Arc::new(Int64Array::from_iter_values(r.iter().map(|x| x.1))),
                Arc::new(TimestampMillisecondArray::from_iter_values(r.iter().map(|x| x.2))),
            ],
        )
        .expect("batch");
        ChangeBatch::append(b, wm)
    }

    /// Rows `(k, v, sum, max)` emitted by processing `input` and advancing to `wm`.
    fn step(op: &mut OverAgg, input: ChangeBatch, wm: i64, cx: &mut Context) -> Vec<(String, i64, i64, i64)> {
        let mut out = op.process(0, input, cx).expect("process");
        out.extend(op.advance(wm, cx).expect("advance"));
        let mut v = Vec::new();
        for c in out {
            let b = &c.batch;
            for i in 0..b.num_rows() {
                v.push((
                    b.column(0).as_string::<i32>().value(i).to_string(),
                    b.column(1).as_primitive::<Int64Type>().value(i),
                    b.column(3).as_primitive::<Int64Type>().value(i),
                    b.column(4).as_primitive::<Int64Type>().value(i),
                ));
            }
        }
        v
    }

    fn r(k: &str, v: i64, s: i64, m: i64) -> (String, i64, i64, i64) {
        (k.to_string(), v, s, m)
    }

    #[test]
    fn rows_frames_move_in_time_order_once_the_watermark_passes() {
        let mut o = op(Frame::Rows(Some(1)));
        let mut cx = Context::default();
        // Out of order within a partition; nothing is final before the watermark passes it.
        assert!(
            step(
                &mut o,
                rows(&[("a", 5, 30), ("a", 1, 10), ("b", 7, 10), ("a", 2, 20)], 0),
                10,
                &mut cx
            )
            .is_empty()
        );
        assert_eq!(
            step(&mut o, rows(&[], 10), 31, &mut cx),
            vec![r("a", 1, 1, 1), r("b", 7, 7, 7), r("a", 2, 3, 2), r("a", 5, 7, 5)]
        );
        // The previous row and this one: 5 and 4; MAX forgets the 5's predecessor.
        assert_eq!(
            step(&mut o, rows(&[("a", 4, 40)], 31), 41, &mut cx),
            vec![r("a", 4, 9, 5)]
        );
        assert!(cx.late.is_empty());
    }

    #[test]
    fn range_frames_share_results_among_peers_and_late_rows_follow_their_partition() {
        let mut o = op(Frame::Range(Some(10)));
        let mut cx = Context::default();
        let out = step(
            &mut o,
            rows(&[("a", 1, 0), ("a", 2, 10), ("a", 3, 10), ("a", 4, 21)], 0),
            100,
            &mut cx,
        );
        assert_eq!(
            out,
            vec![r("a", 1, 1, 1), r("a", 2, 6, 3), r("a", 3, 6, 3), r("a", 4, 4, 4)],
            "the rows at 10 see each other and the one at 0; at 21, the ones at 10 have left"
        );
        // Behind the watermark: a's row at 15 is older than a's last result (21), late; b had none.
        let out = step(&mut o, rows(&[("a", 9, 15), ("b", 9, 15)], 100), 100, &mut cx);
        assert_eq!(out, vec![r("b", 9, 9, 9)]);
        assert_eq!(cx.late.len(), 1);
        assert_eq!(cx.late[0].rows.num_rows(), 1);
        // A row whose partition had a result for a later time by the time it arrived is late even
        // within one micro-batch: the row at 150 was computed when the watermark reached 200.
        let mut b = rows(&[("c", 1, 150), ("c", 2, 120)], 0);
        b.wm = Int64Array::from(vec![100, 200]);
        let out = step(&mut o, b, 300, &mut cx);
        assert_eq!(out, vec![r("c", 1, 1, 1)]);
        assert_eq!(cx.late.len(), 2);
    }

    use crate::operator::acc::testing as calls;
    use crate::operator::state::testing::{Step, assert_restores_at_every_split};

    /// Every kind of aggregate call over `x` ([`calls::all_calls`]), partitioned by `k`, ordered by
    /// `t`, call `i` over `frames[i % frames.len()]`.
    fn op_all(frames: &[Frame]) -> OverAgg {
        let s = calls::schema();
        let all = calls::all_calls();
        let mut fields: Vec<Field> = s.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(calls::fields(&all));
        OverAgg::new(Config {
            partition: vec![col("k", &s).expect("k")],
            partition_types: vec![DataType::Utf8],
            time: 1,
            calls: all
                .into_iter()
                .enumerate()
                .map(|(i, c)| (c, frames[i % frames.len()]))
                .collect(),
            schema: Arc::new(Schema::new(fields)),
        })
        .expect("op")
    }

    #[test]
    fn restored_rows_frames_hold_the_rows_that_will_leave() {
        let steps = [
            Step::Rows(0, rows(&[("a", 5, 30), ("a", 1, 10), ("b", 7, 10), ("a", 2, 20)], 0)),
            Step::Advance(10),
            Step::Rows(0, rows(&[("b", 3, 15), ("a", 6, 30)], 10)),
            Step::Advance(31),
            Step::Rows(0, rows(&[("a", 4, 40), ("b", 8, 35), ("a", 9, 20)], 31)),
            Step::Advance(41),
            Step::Rows(0, rows(&[("b", 1, 50), ("c", 2, 45)], 41)),
            Step::Advance(i64::MAX),
        ];
        for frame in [Frame::Rows(Some(1)), Frame::Rows(Some(3)), Frame::Rows(None)] {
            assert!(assert_restores_at_every_split(|| op(frame), &steps) > 10, "{frame:?}");
        }
    }

    #[test]
    fn restored_range_frames_and_late_rows_after_the_restore() {
        let mut mixed = rows(&[("c", 1, 150), ("c", 2, 120), ("a", 3, 130)], 0);
        mixed.wm = Int64Array::from(vec![100, 200, 200]);
        let steps = [
            Step::Rows(0, rows(&[("a", 1, 0), ("a", 2, 10), ("a", 3, 10), ("a", 4, 21)], 0)),
            Step::Advance(15),
            Step::Rows(0, rows(&[("a", 5, 12), ("a", 6, 30), ("b", 9, 15)], 15)),
            Step::Advance(100),
            Step::Rows(0, rows(&[("a", 9, 15), ("b", 9, 15), ("a", 7, 100)], 100)),
            Step::Rows(0, mixed),
            Step::Advance(300),
        ];
        for frame in [Frame::Range(Some(10)), Frame::Range(None)] {
            assert!(assert_restores_at_every_split(|| op(frame), &steps) > 8, "{frame:?}");
        }
    }

    #[test]
    fn restored_aggregates_of_every_kind_and_several_frames() {
        let r =
            |k: &[&str], t: &[i64], x: &[Option<i64>], wm: i64| Step::Rows(0, calls::rows(k, t, x, &vec![wm; k.len()]));
        let steps = [
            r(
                &["a", "a", "b", "a"],
                &[10, 5, 10, 20],
                &[Some(4), Some(1), None, Some(4)],
                0,
            ),
            Step::Advance(11),
            r(&["a", "b", "b"], &[20, 12, 30], &[Some(7), Some(2), Some(2)], 11),
            Step::Advance(25),
            r(&["a", "a", "b"], &[40, 30, 31], &[None, Some(-3), Some(9)], 25),
            Step::Advance(35),
            r(&["b", "a"], &[50, 45], &[Some(2), Some(8)], 35),
            Step::Advance(i64::MAX),
        ];
        let frames = [
            vec![Frame::Rows(None)],
            vec![Frame::Range(None), Frame::Rows(Some(1))],
            vec![Frame::Range(Some(10)), Frame::Rows(Some(2)), Frame::Rows(None)],
        ];
        for f in frames {
            assert!(assert_restores_at_every_split(|| op_all(&f), &steps) > 10, "{f:?}");
        }
    }

    #[test]
    fn restoring_a_state_that_is_not_this_over_aggregates_fails() {
        let mut o = op(Frame::Rows(Some(1)));
        let mut cx = Context::default();
        step(&mut o, rows(&[("a", 1, 10), ("b", 7, 10)], 0), 20, &mut cx);
        step(&mut o, rows(&[("a", 5, 30), ("b", 2, 40)], 20), 20, &mut cx);
        let good = o.snapshot().expect("snapshot");
        let fresh = || op(Frame::Rows(Some(1)));
        fresh().restore(good.clone()).expect("restores");
        let restore = |st: OpState| match fresh().restore(st.clone()) {
            Ok(()) => panic!("restored a corrupted state: {:?}", st.tables),
            Err(e) => e.to_string(),
        };

        for (i, (name, _)) in good.tables.iter().enumerate() {
            let mut missing = good.clone();
            missing.tables.remove(i);
            let e = restore(missing);
            assert!(e.contains(&format!("'{name}'")), "{name}: {e}");
        }
        // A column of another type, one of each table in turn.
        for (table, col) in [
            ("meta", "seq"),
            ("partitions", "done"),
            ("aggregates_0", "a0_sum"),
            ("waiting", "row.v"),
            ("frame_rows", "frame"),
        ] {
            let mut st = good.clone();
            let t = st.take(table).expect("table");
            let cols: Vec<(String, ArrayRef)> = t
                .schema()
                .fields()
                .iter()
                .zip(t.columns())
                .map(|(f, c)| {
                    let c = if f.name() == col {
                        cast(c, &DataType::Utf8).expect("cast")
                    } else {
                        c.clone()
                    };
                    (f.name().clone(), c)
                })
                .collect();
            assert!(cols.iter().any(|(n, _)| n == col), "{table} has {col}");
            st.put(
                table,
                plain_table(cols.iter().map(|(n, c)| (n.as_str(), c.clone())).collect()).expect("table"),
            );
            let e = restore(st);
            assert!(e.contains(col) && e.contains("Utf8"), "{table}.{col}: {e}");
        }
        // A row under another partition's key.
        let mut st = good.clone();
        let t = st.take("waiting").expect("waiting");
        let keys: Vec<&[u8]> = (0..t.num_rows())
            .map(|_| state::keys(&t).expect("keys").value(0))
            .collect();
        let mut fixed = keyed_table(keys, Vec::new()).expect("keys").columns().to_vec();
        fixed.extend(t.columns()[2..].iter().cloned());
        st.put("waiting", RecordBatch::try_new(t.schema(), fixed).expect("table"));
        let e = restore(st);
        assert!(e.contains("another partition"), "{e}");
        // Another OVER aggregate's state, and a table it does not write.
        let e = op(Frame::Rows(Some(2)))
            .restore(good.clone())
            .expect_err("plan")
            .to_string();
        assert!(e.contains("another OVER aggregate"), "{e}");
        let mut extra = good.clone();
        extra.put("surprise", RecordBatch::new_empty(input_schema()));
        assert!(restore(extra).contains("surprise"));
    }
}
