//! Window join (Flink's "Window Join"): two inputs windowed alike, joined window by window.
//!
//! Both inputs carry `window_start`/`window_end` of the same window specification, and the join
//! equates them; the other equalities are the join keys and the rest of the ON/WHERE condition is
//! evaluated on each candidate pair. A window's rows are kept, per side, until the watermark reaches
//! the window's end: no on-time row can join the window after that. Then the window is joined as a
//! bounded batch and emitted once, NULL-padded rows for the unmatched rows of an outer side included
//! — so every join type yields an append-only stream, as in Flink. A row whose window had ended at
//! the watermark it arrived under is late (the window was joined without it).
//!
//! [`JoinRows`] — how rows of the two sides match and what the join emits for a pair, a matched row
//! or an unmatched row — is shared with the interval join ([`super::interval_join`]), which keeps
//! rows by time instead of by window.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array, new_null_array,
};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, interleave, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatchOptions;
use datafusion::logical_expr::JoinType;
use datafusion::physical_expr::PhysicalExpr;

use super::groups::GroupTable;
use super::state::{self, OpState};
pub use super::stream_join::{PROGRESS_TABLE, SIDE_TABLES};
use super::stream_join::{join_state, message, restore_join_state, rows_from_table, rows_table};
use super::window::{WindowSpec, millis};
use super::{ChangeBatch, Context, Operator};
use crate::error::{Error, Result};
use crate::plan::graph::OpFactory;

/// The sides of a join, by input port.
pub const LEFT: usize = 0;
pub const RIGHT: usize = 1;

/// How the rows of a two-input join match, and what the join emits. Shared by the window join and the
/// interval join: they differ only in which rows are candidates and when a row is final.
#[derive(Clone)]
pub struct JoinRows {
    /// INNER, LEFT, RIGHT, FULL, or a SEMI/ANTI join of either side.
    pub join_type: JoinType,
    /// Equi-join keys per side ([`LEFT`], [`RIGHT`]), evaluated on that side's rows.
    pub keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    /// The keys' types (the left side's; right keys are cast to them if they differ).
    pub key_types: Vec<DataType>,
    /// `NULL = NULL` matches (DataFusion's `NullEquality::NullEqualsNull`); SQL's `=` does not.
    pub nulls_equal: bool,
    /// The rest of the join condition, over a pair's columns (left's, then right's).
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// The inputs' schemas.
    pub inputs: [SchemaRef; 2],
    /// A candidate pair's columns: the left input's, then the right input's.
    pub pair_schema: SchemaRef,
    /// The join's output (DataFusion's join schema).
    pub schema: SchemaRef,
}

impl JoinRows {
    /// The equi-join keys per side, which the join is split by ([`super::partition`]); `None` for a
    /// join on a condition only.
    pub fn partition_keys(&self) -> Option<super::partition::PartitionKeys> {
        (!self.key_types.is_empty()).then(|| super::partition::PartitionKeys {
            ports: self.keys.to_vec(),
            types: self.key_types.clone(),
        })
    }

    /// Key columns of rows of `side`, and per row whether it can match at all (no NULL key unless
    /// NULLs are equal).
    pub fn keys(&self, side: usize, batch: &RecordBatch) -> Result<(Vec<ArrayRef>, Vec<bool>)> {
        let n = batch.num_rows();
        let mut ok = vec![true; n];
        let mut cols = Vec::with_capacity(self.key_types.len());
        for (e, t) in self.keys[side].iter().zip(&self.key_types) {
            let mut a = e.evaluate(batch)?.into_array(n)?;
            if a.data_type() != t {
                a = cast(&a, t)?;
            }
            if !self.nulls_equal && a.null_count() > 0 {
                for (i, o) in ok.iter_mut().enumerate() {
                    *o = *o && a.is_valid(i);
                }
            }
            cols.push(a);
        }
        Ok((cols, ok))
    }

    /// Candidate pairs, `left[k]` with `right[k]`, as rows of [`Self::pair_schema`], and which of them
    /// satisfy the residual condition (a NULL condition does not).
    pub fn check_pairs(&self, left: &RecordBatch, right: &RecordBatch) -> Result<(RecordBatch, BooleanArray)> {
        let n = left.num_rows();
        let cols: Vec<ArrayRef> = left.columns().iter().chain(right.columns()).cloned().collect();
        let pairs = RecordBatch::try_new_with_options(
            self.pair_schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        let keep = match &self.filter {
            None => BooleanArray::from(vec![true; n]),
            Some(f) => {
                let v = f.evaluate(&pairs)?.into_array(n)?;
                let b = v
                    .as_boolean_opt()
                    .ok_or_else(|| Error::Internal(format!("a join condition evaluated to {}", v.data_type())))?;
                if b.null_count() > 0 {
                    prep_null_mask_filter(b)
                } else {
                    b.clone()
                }
            }
        };
        Ok((pairs, keep))
    }

    /// The output rows of the kept pairs (none for SEMI and ANTI joins, which emit rows of one side).
    pub fn joined(&self, pairs: &RecordBatch, keep: &BooleanArray) -> Result<Option<RecordBatch>> {
        if !matches!(
            self.join_type,
            JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
        ) {
            return Ok(None);
        }
        let kept = filter_record_batch(pairs, keep)?;
        if kept.num_rows() == 0 {
            return Ok(None);
        }
        self.output(kept.columns().to_vec(), kept.num_rows()).map(Some)
    }

    /// Whether the join emits a row of `side` when it first matches (a SEMI join of that side).
    pub fn emits_matched(&self, side: usize) -> bool {
        matches!(
            (self.join_type, side),
            (JoinType::LeftSemi, LEFT) | (JoinType::RightSemi, RIGHT)
        )
    }

    /// Whether the join emits a row of `side` that never matched (an outer or ANTI join of that side).
    pub fn emits_unmatched(&self, side: usize) -> bool {
        matches!(
            (self.join_type, side),
            (JoinType::Left | JoinType::Full | JoinType::LeftAnti, LEFT)
                | (JoinType::Right | JoinType::Full | JoinType::RightAnti, RIGHT)
        )
    }

    /// Output rows for rows of `side` on their own: NULL-padded for an outer join, as they are for a
    /// SEMI or ANTI join.
    pub fn side_rows(&self, side: usize, rows: &RecordBatch) -> Result<RecordBatch> {
        let n = rows.num_rows();
        let padded = matches!(
            self.join_type,
            JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
        );
        if !padded {
            return self.output(rows.columns().to_vec(), n);
        }
        let nulls = |schema: &SchemaRef| -> Vec<ArrayRef> {
            schema
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), n))
                .collect()
        };
        let cols: Vec<ArrayRef> = if side == LEFT {
            rows.columns()
                .iter()
                .cloned()
                .chain(nulls(&self.inputs[RIGHT]))
                .collect()
        } else {
            nulls(&self.inputs[LEFT])
                .into_iter()
                .chain(rows.columns().iter().cloned())
                .collect()
        };
        self.output(cols, n)
    }

    fn output(&self, cols: Vec<ArrayRef>, n: usize) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }

    /// Join two bounded sets of rows completely: pairs, then the rows each side emits matched or
    /// unmatched.
    pub fn join_all(&self, left: &RecordBatch, right: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let (lk, lok) = self.keys(LEFT, left)?;
        let (rk, rok) = self.keys(RIGHT, right)?;
        let mut table = GroupTable::new(&self.key_types)?;
        let lg = table.intern(&lk, left.num_rows())?;
        let rg = table.lookup(&rk, right.num_rows())?;
        let mut by_key: Vec<Vec<u32>> = vec![Vec::new(); table.capacity()];
        for (i, g) in lg.iter().enumerate() {
            if lok[i] {
                by_key[*g as usize].push(i as u32);
            }
        }
        let (mut li, mut ri) = (Vec::new(), Vec::new());
        for (j, g) in rg.iter().enumerate() {
            if let Some(g) = g
                && rok[j]
            {
                for i in &by_key[*g as usize] {
                    li.push(*i);
                    ri.push(j as u32);
                }
            }
        }
        let (li, ri) = (UInt32Array::from(li), UInt32Array::from(ri));
        let (pairs, keep) = self.check_pairs(&take_rows(left, &li)?, &take_rows(right, &ri)?)?;
        let mut out: Vec<RecordBatch> = self.joined(&pairs, &keep)?.into_iter().collect();
        let mut matched = [vec![false; left.num_rows()], vec![false; right.num_rows()]];
        for k in 0..keep.len() {
            if keep.value(k) {
                matched[LEFT][li.value(k) as usize] = true;
                matched[RIGHT][ri.value(k) as usize] = true;
            }
        }
        for (side, rows) in [(LEFT, left), (RIGHT, right)] {
            let want = if self.emits_matched(side) {
                true
            } else if self.emits_unmatched(side) {
                false
            } else {
                continue;
            };
            let idx: UInt32Array = (0..rows.num_rows() as u32)
                .filter(|i| matched[side][*i as usize] == want)
                .collect();
            if !idx.is_empty() {
                out.push(self.side_rows(side, &take_rows(rows, &idx)?)?);
            }
        }
        Ok(out)
    }

    /// The join type as SQL.
    pub fn type_name(&self) -> &'static str {
        match self.join_type {
            JoinType::Inner => "INNER",
            JoinType::Left => "LEFT OUTER",
            JoinType::Right => "RIGHT OUTER",
            JoinType::Full => "FULL OUTER",
            JoinType::LeftSemi => "LEFT SEMI",
            JoinType::RightSemi => "RIGHT SEMI",
            JoinType::LeftAnti => "LEFT ANTI",
            JoinType::RightAnti => "RIGHT ANTI",
            JoinType::LeftMark | JoinType::RightMark => "MARK",
        }
    }
}

fn take_rows(batch: &RecordBatch, idx: &UInt32Array) -> Result<RecordBatch> {
    Ok(datafusion::arrow::compute::take_record_batch(batch, idx)?)
}

/// Rows gathered from several batches of one schema: `(batch, row)` per output row.
pub fn gather(schema: &SchemaRef, batches: &[&RecordBatch], idx: &[(usize, usize)]) -> Result<RecordBatch> {
    let cols = (0..schema.fields().len())
        .map(|c| {
            if batches.is_empty() {
                return Ok(new_null_array(schema.field(c).data_type(), 0));
            }
            let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
            interleave(&arrays, idx)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(idx.len())),
    )?)
}

/// A compiled window join.
#[derive(Clone)]
pub struct Config {
    pub rows: JoinRows,
    /// The window specification both inputs share.
    pub window: WindowSpec,
    /// Per side: the `window_start` and `window_end` columns (at least one of them; the other follows
    /// from the specification, except for CUMULATE, which needs both).
    pub bounds: [(Option<usize>, Option<usize>); 2],
    /// The join as SQL, for EXPLAIN.
    pub text: String,
}

impl OpFactory for Config {
    fn build(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(WindowJoin::new(self.clone())))
    }

    fn describe(&self) -> String {
        format!(
            "WindowJoin {} {} {}, emits each window once when the watermark passes window_end",
            self.rows.type_name(),
            self.window.describe(),
            self.text
        )
    }

    fn state(&self) -> String {
        "per window: the rows of both inputs, until the watermark passes window_end".into()
    }

    fn clone_box(&self) -> Box<dyn OpFactory> {
        Box::new(self.clone())
    }
    fn partition_keys(&self) -> Option<super::partition::PartitionKeys> {
        self.rows.partition_keys()
    }
}

/// The window `(start, end)` of a row from whichever bound its input carries.
fn window_of(spec: WindowSpec, start: Option<i64>, end: Option<i64>) -> Option<(i64, i64)> {
    let size = match spec {
        WindowSpec::Tumble { size } | WindowSpec::Hop { size, .. } | WindowSpec::Windowed { size } => Some(size),
        WindowSpec::Cumulate { .. } | WindowSpec::Session { .. } => None,
    };
    match (start, end, size) {
        (Some(s), Some(e), _) => Some((s, e)),
        (Some(s), None, Some(size)) => Some((s, s.checked_add(size)?)),
        (None, Some(e), Some(size)) => Some((e.checked_sub(size)?, e)),
        _ => None,
    }
}

/// Rows of one window, per side.
#[derive(Default)]
struct Pending {
    sides: [Vec<RecordBatch>; 2],
}

pub struct WindowJoin {
    cfg: Config,
    /// By `(end, start)`, so windows fire in order of their ends.
    windows: BTreeMap<(i64, i64), Pending>,
    rows: usize,
    /// The watermark before the current micro-batch's advance (carried by emitted rows).
    wm: i64,
    /// Windows ending at or before this were emitted before a restart.
    emit_floor: i64,
}

impl WindowJoin {
    pub fn new(cfg: Config) -> WindowJoin {
        WindowJoin {
            cfg,
            windows: BTreeMap::new(),
            rows: 0,
            wm: i64::MIN,
            emit_floor: i64::MIN,
        }
    }

    /// Bound column `col` of `batch` as event times, if the input carries it.
    fn bound(batch: &RecordBatch, col: Option<usize>) -> Result<Option<Int64Array>> {
        col.map(|c| millis(batch.column(c))).transpose()
    }
}

impl Operator for WindowJoin {
    fn process(&mut self, port: usize, input: ChangeBatch, cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        if port > RIGHT {
            return Err(Error::Internal(format!("a window join has no input {port}")));
        }
        if input.is_empty() {
            return Ok(Vec::new());
        }
        if input.retractions().is_some() {
            return Err(Error::Internal("a window join got a changelog".into()));
        }
        let (sc, ec) = self.cfg.bounds[port];
        let starts = Self::bound(&input.batch, sc)?;
        let ends = Self::bound(&input.batch, ec)?;
        let wms = input.wm.values();
        let mut by_window: BTreeMap<(i64, i64), Vec<u32>> = BTreeMap::new();
        let mut late = Vec::new();
        for (i, wm) in wms.iter().enumerate() {
            let get = |a: &Option<Int64Array>| a.as_ref().and_then(|a| a.is_valid(i).then(|| a.value(i)));
            let (s, e) = window_of(self.cfg.window, get(&starts), get(&ends))
                .ok_or_else(|| Error::Internal("a row reached a window join without its window".into()))?;
            if e <= *wm {
                late.push(i as u32);
            } else {
                by_window.entry((e, s)).or_default().push(i as u32);
            }
        }
        if !late.is_empty() {
            let wm = late.iter().map(|i| wms[*i as usize]).min().unwrap_or(i64::MIN);
            cx.late(
                &input,
                &UInt32Array::from(late),
                format!(
                    "late: its window had ended (and was joined) at the watermark {}",
                    crate::time::format_ms(wm)
                ),
            )?;
        }
        for (w, idx) in by_window {
            let part = take_rows(&input.batch, &UInt32Array::from(idx))?;
            self.rows += part.num_rows();
            self.windows.entry(w).or_default().sides[port].push(part);
        }
        Ok(Vec::new())
    }

    fn advance(&mut self, wm: i64, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let mut out = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            let (end, _) = *entry.key();
            if end > wm {
                break;
            }
            let pending = entry.remove();
            let n: usize = pending.sides.iter().flatten().map(RecordBatch::num_rows).sum();
            self.rows -= n;
            if end <= self.emit_floor {
                continue;
            }
            let [l, r] = &pending.sides;
            let left = concat_batches(&self.cfg.rows.inputs[LEFT], l)?;
            let right = concat_batches(&self.cfg.rows.inputs[RIGHT], r)?;
            for b in self.cfg.rows.join_all(&left, &right)? {
                if b.num_rows() > 0 {
                    out.push(ChangeBatch::append(b, self.wm));
                }
            }
        }
        self.wm = self.wm.max(wm);
        Ok(out)
    }

    fn low_water(&self) -> i64 {
        self.windows.keys().map(|(_, s)| *s).min().unwrap_or(i64::MAX)
    }

    fn state_size(&self) -> usize {
        self.rows
    }

    fn set_emit_floor(&mut self, floor: i64) {
        self.emit_floor = floor;
    }

    /// Per side, the rows of the windows that have not fired (see [`SIDE_TABLES`]; a NULL key's
    /// bytes too; bookkeeping: `window_start`, `window_end` (Int64, ms: the row's window)), window by
    /// window in firing order, each window's rows in arrival order; and the watermark and emit floor
    /// ([`PROGRESS_TABLE`]). Fired windows hold nothing: they are gone from the state.
    fn snapshot(&self) -> Result<OpState> {
        join_state(|side| self.side_table(side), Some((self.wm, self.emit_floor)))
    }

    fn restore(&mut self, state: OpState) -> Result<()> {
        let progress = restore_join_state(state, "a window join", true, |side, name, t| {
            self.restore_side(side, name, t)
        })?;
        if let Some([wm, emit_floor]) = progress {
            (self.wm, self.emit_floor) = (wm, emit_floor);
        }
        Ok(())
    }
}

impl WindowJoin {
    fn side_table(&self, side: usize) -> Result<RecordBatch> {
        let schema = &self.cfg.rows.inputs[side];
        let mut parts: Vec<&RecordBatch> = Vec::new();
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        for ((end, start), p) in &self.windows {
            for b in &p.sides[side] {
                parts.push(b);
                starts.extend(std::iter::repeat_n(*start, b.num_rows()));
                ends.extend(std::iter::repeat_n(*end, b.num_rows()));
            }
        }
        let rows = concat_batches(schema, parts)?;
        let (key_cols, _) = self.cfg.rows.keys(side, &rows)?;
        let mut keys = GroupTable::new(&self.cfg.rows.key_types)?;
        let gids = keys.intern(&key_cols, rows.num_rows())?;
        let key_bytes: Vec<&[u8]> = gids.iter().map(|g| keys.key_bytes(*g).unwrap_or_default()).collect();
        let book: Vec<(&str, ArrayRef)> = vec![
            ("window_start", Arc::new(Int64Array::from(starts))),
            ("window_end", Arc::new(Int64Array::from(ends))),
        ];
        rows_table(&key_bytes, book, &rows)
    }

    fn restore_side(&mut self, side: usize, name: &str, t: &RecordBatch) -> Result<()> {
        let batch = rows_from_table(name, t, &["window_start", "window_end"], &self.cfg.rows.inputs[side])?;
        let bad = |what: String| Error::Internal(format!("join state table '{name}': {what}"));
        let ws = state::column::<Int64Array>(t, "window_start").map_err(|e| bad(message(e)))?;
        let we = state::column::<Int64Array>(t, "window_end").map_err(|e| bad(message(e)))?;
        let keys = state::keys(t).map_err(|e| bad(message(e)))?;
        let n = batch.num_rows();
        let (key_cols, _) = self.cfg.rows.keys(side, &batch)?;
        let mut table = GroupTable::new(&self.cfg.rows.key_types)?;
        let gids = table.intern(&key_cols, n)?;
        let (sc, ec) = self.cfg.bounds[side];
        let (starts, ends) = (Self::bound(&batch, sc)?, Self::bound(&batch, ec)?);
        let mut by_window: BTreeMap<(i64, i64), Vec<u32>> = BTreeMap::new();
        for (i, g) in gids.iter().enumerate() {
            if table.key_bytes(*g) != Some(keys.value(i)) {
                return Err(bad(format!("row {i}'s key is not the key of its columns")));
            }
            let get = |a: &Option<Int64Array>| a.as_ref().and_then(|a| a.is_valid(i).then(|| a.value(i)));
            let w = window_of(self.cfg.window, get(&starts), get(&ends));
            if ws.is_null(i) || we.is_null(i) || w != Some((ws.value(i), we.value(i))) {
                return Err(bad(format!(
                    "row {i}'s window_start/window_end are not the window of its columns"
                )));
            }
            by_window.entry((we.value(i), ws.value(i))).or_default().push(i as u32);
        }
        for (w, idx) in by_window {
            let part = take_rows(&batch, &UInt32Array::from(idx))?;
            self.rows += part.num_rows();
            self.windows.entry(w).or_default().sides[side].push(part);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Field, Int64Type, Schema, TimeUnit};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::physical_expr::expressions::{BinaryExpr, col};

    fn side_schema(prefix: &str) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(format!("{prefix}k"), DataType::Int64, true),
            Field::new(format!("{prefix}v"), DataType::Utf8, false),
            Field::new(
                format!("{prefix}ws"),
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]))
    }

    pub(crate) fn rows_of(schema: &SchemaRef, k: &[Option<i64>], v: &[&str], ts: &[i64], wm: &[i64]) -> ChangeBatch {
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(k.to_vec())),
                Arc::new(StringArray::from(v.to_vec())),
                Arc::new(TimestampMillisecondArray::from(ts.to_vec())),
            ],
        )
        .expect("batch");
        let mut c = ChangeBatch::append(b, 0);
        c.wm = Int64Array::from(wm.to_vec());
        c
    }

    /// `l.k = r.k` (and, with `filter`, `l.v <> r.v`) over the test schemas.
    pub(crate) fn join_rows(join_type: JoinType, filter: bool) -> JoinRows {
        let (l, r) = (side_schema("l"), side_schema("r"));
        let pair = Arc::new(Schema::new(
            l.fields().iter().chain(r.fields()).cloned().collect::<Vec<_>>(),
        ));
        let nullable = |s: &SchemaRef, yes: bool| -> Vec<Arc<Field>> {
            s.fields()
                .iter()
                .map(|f| Arc::new(f.as_ref().clone().with_nullable(yes || f.is_nullable())))
                .collect()
        };
        let schema = match join_type {
            JoinType::LeftSemi | JoinType::LeftAnti => l.clone(),
            JoinType::RightSemi | JoinType::RightAnti => r.clone(),
            _ => {
                let lo = matches!(join_type, JoinType::Right | JoinType::Full);
                let ro = matches!(join_type, JoinType::Left | JoinType::Full);
                Arc::new(Schema::new(
                    nullable(&l, lo).into_iter().chain(nullable(&r, ro)).collect::<Vec<_>>(),
                ))
            }
        };
        let filter: Option<Arc<dyn PhysicalExpr>> = filter.then(|| {
            Arc::new(BinaryExpr::new(
                col("lv", &pair).expect("lv"),
                datafusion::logical_expr::Operator::NotEq,
                col("rv", &pair).expect("rv"),
            )) as Arc<dyn PhysicalExpr>
        });
        JoinRows {
            join_type,
            keys: [vec![col("lk", &l).expect("lk")], vec![col("rk", &r).expect("rk")]],
            key_types: vec![DataType::Int64],
            nulls_equal: false,
            filter,
            inputs: [l, r],
            pair_schema: pair,
            schema,
        }
    }

    fn op(join_type: JoinType) -> WindowJoin {
        WindowJoin::new(Config {
            rows: join_rows(join_type, true),
            window: WindowSpec::Tumble { size: 1_000 },
            bounds: [(Some(2), None), (Some(2), None)],
            text: String::new(),
        })
    }

    pub(crate) fn lines(out: &[ChangeBatch]) -> Vec<String> {
        let batches: Vec<RecordBatch> = out.iter().map(|c| c.batch.clone()).collect();
        let text = pretty_format_batches(&batches).expect("format").to_string();
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with('|'))
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn full_outer_window_join_pads_unmatched_rows_when_the_window_ends() {
        let mut j = op(JoinType::Full);
        let mut cx = Context::default();
        let l = side_schema("l");
        let r = side_schema("r");
        j.process(
            LEFT,
            rows_of(&l, &[Some(1), Some(2), None], &["a", "b", "c"], &[0, 0, 0], &[0; 3]),
            &mut cx,
        )
        .expect("left");
        j.process(
            RIGHT,
            rows_of(&r, &[Some(1), Some(1), None], &["x", "a", "y"], &[0, 0, 0], &[0; 3]),
            &mut cx,
        )
        .expect("right");
        j.process(RIGHT, rows_of(&r, &[Some(2)], &["z"], &[1_000], &[0]), &mut cx)
            .expect("right, next window");
        assert!(
            j.advance(999, &mut cx).expect("advance").is_empty(),
            "window [0, 1000) is open"
        );
        let out = j.advance(1_000, &mut cx).expect("advance");
        assert!(out.iter().all(|c| c.wm.values().iter().all(|w| *w == 999)));
        assert_eq!(
            lines(&out),
            vec![
                "| 1 | a | 1970-01-01T00:00:00 | 1 | x | 1970-01-01T00:00:00 |",
                "| 2 | b | 1970-01-01T00:00:00 | | | |",
                "| | c | 1970-01-01T00:00:00 | | | |",
                "| | | | 1 | a | 1970-01-01T00:00:00 |",
                "| | | | | y | 1970-01-01T00:00:00 |",
            ],
            "1/a matches 1/x only (a <> a fails); NULL keys never match"
        );
        assert_eq!(j.state_size(), 1);
        // A row of the fired window is late; one of the open window joins it.
        j.process(
            LEFT,
            rows_of(&l, &[Some(2), Some(2)], &["p", "q"], &[0, 1_000], &[1_000, 1_000]),
            &mut cx,
        )
        .expect("late");
        assert_eq!(cx.late.len(), 1);
        assert_eq!(cx.late[0].rows.num_rows(), 1);
        let out = j.advance(i64::MAX, &mut cx).expect("end");
        assert_eq!(
            lines(&out),
            vec!["| 2 | q | 1970-01-01T00:00:01 | 2 | z | 1970-01-01T00:00:01 |"]
        );
        assert_eq!((j.state_size(), j.low_water()), (0, i64::MAX));
    }

    use crate::operator::state::testing::{Step, assert_restores_at_every_split};

    const ALL_TYPES: [JoinType; 8] = [
        JoinType::Inner,
        JoinType::Left,
        JoinType::Right,
        JoinType::Full,
        JoinType::LeftSemi,
        JoinType::LeftAnti,
        JoinType::RightSemi,
        JoinType::RightAnti,
    ];

    fn side(port: usize, k: &[Option<i64>], v: &[&str], ts: &[i64], wm: &[i64]) -> Step {
        Step::Rows(
            port,
            rows_of(&side_schema(if port == LEFT { "l" } else { "r" }), k, v, ts, wm),
        )
    }

    /// Every split of `steps` restores identically, for every join type; returns the rows compared.
    fn restores_at_every_split(make: impl Fn(JoinType) -> WindowJoin, steps: &[Step]) -> usize {
        ALL_TYPES
            .into_iter()
            .map(|t| assert_restores_at_every_split(|| make(t), steps))
            .sum()
    }

    #[test]
    fn windows_fire_across_a_restore() {
        // The first test's input, then more: windows that open before the split and fire after it,
        // rows joining a window after the split, late rows after it, several windows in one advance.
        let steps = vec![
            side(LEFT, &[Some(1), Some(2), None], &["a", "b", "c"], &[0, 0, 0], &[0; 3]),
            side(RIGHT, &[Some(1), Some(1), None], &["x", "a", "y"], &[0, 0, 0], &[0; 3]),
            side(RIGHT, &[Some(2)], &["z"], &[1_000], &[0]),
            Step::Advance(999),
            side(LEFT, &[Some(1), Some(3)], &["d", "e"], &[0, 2_000], &[999, 999]),
            Step::Advance(1_000),
            side(LEFT, &[Some(2), Some(2)], &["p", "q"], &[0, 1_000], &[1_000, 1_000]),
            side(
                RIGHT,
                &[Some(3), Some(4)],
                &["f", "g"],
                &[2_000, 3_000],
                &[1_000, 1_000],
            ),
            side(LEFT, &[Some(4)], &["h"], &[3_000], &[1_000]),
            Step::Advance(3_500),
            side(
                RIGHT,
                &[Some(4), Some(4)],
                &["late", "i"],
                &[2_000, 4_000],
                &[3_500, 3_500],
            ),
            Step::Advance(i64::MAX),
        ];
        assert!(restores_at_every_split(op, &steps) > 0);
    }

    #[test]
    fn the_emit_floor_restores() {
        let make = |t: JoinType| {
            let mut j = op(t);
            j.set_emit_floor(1_000);
            j
        };
        let steps = vec![
            side(LEFT, &[Some(1), Some(2)], &["a", "b"], &[0, 1_000], &[0; 2]),
            side(RIGHT, &[Some(1), Some(2)], &["x", "y"], &[0, 1_000], &[0; 2]),
            Step::Advance(1_000),
            Step::Advance(i64::MAX),
        ];
        assert!(restores_at_every_split(make, &steps) > 0);
        let mut j = make(JoinType::Inner);
        let mut cx = Context::default();
        if let Step::Rows(p, b) = &steps[0] {
            j.process(*p, b.clone(), &mut cx).expect("left");
        }
        let mut restored = op(JoinType::Inner);
        restored.restore(j.snapshot().expect("snapshot")).expect("restore");
        assert_eq!((restored.emit_floor, restored.state_size()), (1_000, 2));
        assert!(
            restored.advance(1_000, &mut cx).expect("advance").is_empty(),
            "window [0, 1000) went out before the restart"
        );
    }

    #[test]
    fn emitted_rows_carry_the_restored_watermark() {
        let mut j = op(JoinType::Full);
        let mut cx = Context::default();
        let (l, r) = (side_schema("l"), side_schema("r"));
        j.process(LEFT, rows_of(&l, &[Some(1)], &["a"], &[1_000], &[0]), &mut cx)
            .expect("left");
        j.process(RIGHT, rows_of(&r, &[Some(2)], &["b"], &[1_000], &[0]), &mut cx)
            .expect("right");
        assert!(j.advance(1_500, &mut cx).expect("advance").is_empty());
        let mut restored = op(JoinType::Full);
        restored.restore(j.snapshot().expect("snapshot")).expect("restore");
        let out = restored.advance(2_000, &mut cx).expect("advance");
        assert_eq!(lines(&out).len(), 2);
        assert!(out.iter().all(|c| c.wm.values().iter().all(|w| *w == 1_500)));
    }

    #[test]
    fn snapshot_holds_open_windows_rows() {
        let mut j = op(JoinType::Full);
        let mut cx = Context::default();
        let l = side_schema("l");
        j.process(
            LEFT,
            rows_of(&l, &[Some(1), None, Some(1)], &["a", "b", "c"], &[1_000, 0, 0], &[0; 3]),
            &mut cx,
        )
        .expect("left");
        j.advance(5, &mut cx).expect("advance");
        let st = j.snapshot().expect("snapshot");
        let names: Vec<&str> = st.tables.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["left_rows", "right_rows", "progress"]);
        let t = &st.tables[0].1;
        let cols: Vec<String> = t.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            cols,
            ["key_group", "key", "window_start", "window_end", "lk", "lv", "lws"]
        );
        let ws = state::column::<Int64Array>(t, "window_start").expect("ws");
        assert_eq!(ws.values().to_vec(), vec![0, 0, 1_000], "by window, then arrival");
        let v: Vec<&str> = t.column(5).as_string::<i32>().iter().flatten().collect();
        assert_eq!(v, ["b", "c", "a"]);
        let keys = state::keys(t).expect("keys");
        assert_eq!(keys.value(1), keys.value(2));
        assert_ne!(keys.value(0), keys.value(1), "a NULL key has bytes of its own");
        assert_eq!(st.tables[1].1.num_rows(), 0);
        let p = &st.tables[2].1;
        assert_eq!(state::column::<Int64Array>(p, "watermark").expect("wm").value(0), 5);
    }

    #[test]
    fn a_corrupted_state_is_refused() {
        let mut j = op(JoinType::Full);
        let mut cx = Context::default();
        let (l, r) = (side_schema("l"), side_schema("r"));
        j.process(
            LEFT,
            rows_of(&l, &[Some(1), Some(2)], &["a", "b"], &[0, 1_000], &[0; 2]),
            &mut cx,
        )
        .expect("left");
        j.process(RIGHT, rows_of(&r, &[Some(2)], &["x"], &[1_000], &[0]), &mut cx)
            .expect("right");
        let st = j.snapshot().expect("snapshot");
        let err = |st: OpState| {
            op(JoinType::Full)
                .restore(st)
                .expect_err("corrupted state restored")
                .to_string()
        };
        assert!(op(JoinType::Full).restore(st.clone()).is_ok());
        for (i, name) in ["left_rows", "right_rows", "progress"].iter().enumerate() {
            let mut missing = st.clone();
            missing.tables.remove(i);
            assert!(err(missing).contains(name));
        }
        let replace = |table: usize, col: &str, a: ArrayRef| {
            let mut bad = st.clone();
            let t = &bad.tables[table].1;
            let i = t.schema().index_of(col).expect("col");
            let mut fields: Vec<Field> = t.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            fields[i] = Field::new(col, a.data_type().clone(), true);
            let mut cols = t.columns().to_vec();
            cols[i] = a;
            bad.tables[table].1 = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("batch");
            bad
        };
        let e = err(replace(0, "window_end", Arc::new(StringArray::from(vec!["a", "b"]))));
        assert!(e.contains("left_rows") && e.contains("window_end"), "{e}");
        let e = err(replace(0, "window_end", Arc::new(Int64Array::from(vec![1_000, 3_000]))));
        assert!(e.contains("window"), "{e}");
        let e = err(replace(1, "rws", Arc::new(Int64Array::from(vec![1_000]))));
        assert!(e.contains("right_rows") && e.contains("rws"), "{e}");
        let e = err(replace(1, "rk", Arc::new(Int64Array::from(vec![3]))));
        assert!(e.contains("key"), "{e}");
        let e = err(replace(2, "emit_floor", Arc::new(StringArray::from(vec!["x"]))));
        assert!(e.contains("progress") && e.contains("emit_floor"), "{e}");
    }

    #[test]
    fn semi_and_anti_emit_rows_of_one_side() {
        let l = side_schema("l");
        let r = side_schema("r");
        for (t, want) in [
            (JoinType::LeftSemi, vec!["| 1 | a | 1970-01-01T00:00:00 |"]),
            (JoinType::LeftAnti, vec!["| 2 | b | 1970-01-01T00:00:00 |"]),
            (JoinType::RightAnti, vec!["| 3 | c | 1970-01-01T00:00:00 |"]),
        ] {
            let mut j = op(t);
            let mut cx = Context::default();
            j.process(
                LEFT,
                rows_of(&l, &[Some(1), Some(2)], &["a", "b"], &[0, 0], &[0; 2]),
                &mut cx,
            )
            .expect("left");
            j.process(
                RIGHT,
                rows_of(&r, &[Some(1), Some(1), Some(3)], &["x", "y", "c"], &[0, 0, 0], &[0; 3]),
                &mut cx,
            )
            .expect("right");
            let out = j.advance(i64::MAX, &mut cx).expect("end");
            assert_eq!(lines(&out), want, "{t}");
            let n: usize = out
                .iter()
                .map(|c| c.batch.column(0).as_primitive::<Int64Type>().len())
                .sum();
            assert_eq!(n, want.len(), "{t}: a SEMI join emits a matched row once");
        }
    }
}
