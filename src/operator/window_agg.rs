//! Window aggregate over TUMBLE, HOP and CUMULATE windows (Flink's window TVF aggregation).
//!
//! State is per pane: a group table (keys in Arrow's row format) and the aggregate state of its
//! groups. TUMBLE's pane is its window; a HOP or CUMULATE window is the merge of its panes when it
//! fires. A pane is dropped once the watermark passes the end of the last window containing it.
//!
//! Emission: each window row once, when the watermark reaches the window's end (append-only) — or,
//! with `early_fire` (chosen by the planner when the result goes straight to an upsert sink), the
//! changed window rows after every micro-batch as `+U` rows keyed by group key and window (at most
//! every `table.exec.emit.early-fire.delay` when set: the engine holds them back in between, see
//! [`Context::hold_early`]; a window that closes goes out then whatever the delay).
//!
//! Late rows: a row is dropped to `_late` when every window containing it had ended at the
//! watermark it arrived under. A HOP/CUMULATE row late for only some of its windows splits the
//! batch at the window ends between, so it joins exactly the windows that had not fired.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::compute::{cast, concat, take, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;

use super::acc::{AggCall, Aggregates};
use super::groups::GroupTable;
use super::state::{self, OpState, keyed_table, plain_table};
use super::window::{WindowSpec, group_rows, millis};
use super::{ChangeBatch, Context, Operator, RowKind, conformed_batch, split_by_watermark};
use crate::error::{Error, Result};

/// What an output column of a window aggregate (a GROUP BY item) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutCol {
    /// The i-th group key.
    Key(usize),
    Start,
    End,
    /// `window_time`: the window's end minus 1 ms.
    Time,
}

/// A compiled window aggregate.
#[derive(Clone)]
pub struct Config {
    pub window: WindowSpec,
    /// Group keys other than the window columns.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Names of the keys (EXPLAIN).
    pub key_names: Vec<String>,
    pub key_types: Vec<datafusion::arrow::datatypes::DataType>,
    /// Evaluates to each row's pane (or, for sessions, event time) as a TIMESTAMP, minus `pane_shift` ms.
    pub pane: Arc<dyn PhysicalExpr>,
    pub pane_shift: i64,
    /// The GROUP BY items in output order.
    pub columns: Vec<OutCol>,
    pub calls: Arc<[AggCall]>,
    pub schema: SchemaRef,
    pub early_fire: bool,
}

struct Pane {
    table: GroupTable,
    aggs: Aggregates,
    /// Groups changed since the last early firing.
    touched: HashSet<u32>,
}

pub struct WindowAgg {
    cfg: Config,
    panes: BTreeMap<i64, Pane>,
    /// Windows ending at or before this have fired.
    fired: i64,
    /// The watermark before the current micro-batch's advance (carried by emitted rows).
    wm: i64,
    /// Windows ending at or before this are not emitted (see [`Operator::set_emit_floor`]).
    emit_floor: i64,
}

impl WindowAgg {
    pub fn new(cfg: Config) -> Result<WindowAgg> {
        if cfg.window.is_session() {
            return Err(Error::Internal("SESSION windows use the session operator".into()));
        }
        Ok(WindowAgg {
            cfg,
            panes: BTreeMap::new(),
            fired: i64::MIN,
            wm: i64::MIN,
            emit_floor: i64::MIN,
        })
    }

    fn merges_panes(&self) -> bool {
        !matches!(self.cfg.window, WindowSpec::Tumble { .. } | WindowSpec::Windowed { .. })
    }

    /// Pane start of each row.
    fn panes_of(&self, batch: &RecordBatch) -> Result<Vec<i64>> {
        let v = self.cfg.pane.evaluate(batch)?.into_array(batch.num_rows())?;
        let ms = millis(&v)?;
        if ms.null_count() > 0 {
            return Err(Error::Internal("a window's time is NULL".into()));
        }
        let spec = self.cfg.window;
        Ok(ms
            .values()
            .iter()
            .map(|t| spec.pane_of(t - self.cfg.pane_shift))
            .collect())
    }

    /// Aggregate rows (no row is late for a window that fires before the next call).
    fn absorb(&mut self, input: &ChangeBatch, cx: &mut Context) -> Result<()> {
        let n = input.num_rows();
        if n == 0 {
            return Ok(());
        }
        if input.retractions().is_some() {
            return Err(Error::Internal("a window aggregate got a changelog".into()));
        }
        let panes = self.panes_of(&input.batch)?;
        let spec = self.cfg.window;
        let wms = input.wm.values();
        let mut late = Vec::new();
        let mut on_time = Vec::with_capacity(n);
        for (i, p) in panes.iter().enumerate() {
            if spec.last_end(*p) <= wms[i] {
                late.push(i as u32);
            } else {
                on_time.push(i);
            }
        }
        if !late.is_empty() {
            let idx = UInt32Array::from(late);
            let wm = idx.values().iter().map(|i| wms[*i as usize]).min().unwrap_or(i64::MIN);
            cx.late(
                input,
                &idx,
                format!(
                    "late: its window had ended at the watermark {}",
                    crate::time::format_ms(wm)
                ),
            )?;
        }
        let ev = Aggregates::evaluate_args(&self.cfg.calls, &input.batch)?;
        let keys: Vec<ArrayRef> = self
            .cfg
            .keys
            .iter()
            .map(|e| e.evaluate(&input.batch).and_then(|v| v.into_array(n)))
            .collect::<std::result::Result<_, _>>()?;
        for (p, idx) in group_rows(on_time.iter().map(|i| panes[*i])) {
            // `idx` indexes into `on_time`; map back to batch rows.
            let rows = UInt32Array::from_iter_values(idx.values().iter().map(|j| on_time[*j as usize] as u32));
            let pane = match self.panes.get_mut(&p) {
                Some(pane) => pane,
                None => {
                    let pane = Pane {
                        table: GroupTable::new(&self.cfg.key_types)?,
                        aggs: Aggregates::new(&self.cfg.calls, false)?,
                        touched: HashSet::new(),
                    };
                    self.panes.entry(p).or_insert(pane)
                }
            };
            let key_cols: Vec<ArrayRef> = keys
                .iter()
                .map(|k| take(k, &rows, None))
                .collect::<std::result::Result<_, _>>()?;
            let gids = pane.table.intern(&key_cols, rows.len())?;
            pane.aggs.update(&ev, Some(&rows), &gids, None, pane.table.capacity())?;
            if self.cfg.early_fire {
                pane.touched.extend(gids);
            }
        }
        Ok(())
    }

    /// Output rows of window `[s, e)`; with `only`, just those groups (by key bytes).
    fn window_batch(&mut self, s: i64, e: i64, only: Option<&HashSet<Box<[u8]>>>) -> Result<Option<RecordBatch>> {
        if e <= self.emit_floor {
            return Ok(None);
        }
        let (keys, vals, n) = if !self.merges_panes() {
            let Some(pane) = self.panes.get_mut(&s) else {
                return Ok(None);
            };
            let gids: Vec<u32> = match only {
                Some(o) => pane
                    .table
                    .ids()
                    .filter(|g| pane.table.key_bytes(*g).is_some_and(|k| o.contains(k)))
                    .collect(),
                None => pane.table.ids().collect(),
            };
            if gids.is_empty() {
                return Ok(None);
            }
            (pane.table.keys_of(&gids)?, pane.aggs.evaluate(&gids)?, gids.len())
        } else {
            let mut table = GroupTable::new(&self.cfg.key_types)?;
            let mut aggs = Aggregates::new(&self.cfg.calls, false)?;
            for (_, pane) in self.panes.range_mut(s..e) {
                let gids: Vec<u32> = pane.table.ids().collect();
                for g in gids {
                    let Some(kb) = pane.table.key_bytes(g) else { continue };
                    if only.is_some_and(|o| !o.contains(kb)) {
                        continue;
                    }
                    let w = table.intern_bytes(kb);
                    aggs.merge_from(w, &mut pane.aggs, g, table.capacity())?;
                }
            }
            let gids: Vec<u32> = table.ids().collect();
            if gids.is_empty() {
                return Ok(None);
            }
            (table.keys_of(&gids)?, aggs.evaluate(&gids)?, gids.len())
        };
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.cfg.schema.fields().len());
        let ts = |v: i64| -> ArrayRef { Arc::new(TimestampMillisecondArray::from_value(v, n)) };
        for c in &self.cfg.columns {
            cols.push(match c {
                OutCol::Key(i) => keys
                    .get(*i)
                    .cloned()
                    .ok_or_else(|| Error::Internal("window key column".into()))?,
                OutCol::Start => ts(s),
                OutCol::End => ts(e),
                OutCol::Time => ts(e - 1),
            });
        }
        cols.extend(vals);
        Ok(Some(conformed_batch(&self.cfg.schema, cols, n)?))
    }

    /// Early firing: the current value of every open window changed since it last went out — or,
    /// with `closing`, of those ending by then only (they fire now; the marks stay for the open
    /// windows that share their panes, which go out at a later flush).
    fn emit_touched(&mut self, closing: Option<i64>) -> Result<Vec<ChangeBatch>> {
        let upto = closing.unwrap_or(i64::MAX);
        let mut windows: BTreeSet<(i64, i64)> = BTreeSet::new();
        for (p, pane) in &self.panes {
            if pane.touched.is_empty() {
                continue;
            }
            for (s, e) in self.cfg.window.windows_of_pane(*p) {
                if e > self.fired && e <= upto {
                    windows.insert((e, s));
                }
            }
        }
        let mut out = Vec::new();
        for (e, s) in windows {
            let mut keys: HashSet<Box<[u8]>> = HashSet::new();
            for (_, pane) in self.panes.range(s..e) {
                for g in &pane.touched {
                    if let Some(k) = pane.table.key_bytes(*g) {
                        keys.insert(k.into());
                    }
                }
            }
            if let Some(b) = self.window_batch(s, e, Some(&keys))? {
                let n = b.num_rows();
                out.push(ChangeBatch::changes(b, vec![RowKind::UpdateAfter; n], self.wm));
            }
        }
        if closing.is_none() {
            for pane in self.panes.values_mut() {
                pane.touched.clear();
            }
        }
        Ok(out)
    }

    /// Fire every window ending in `(fired, upto]` and drop panes no window needs any more.
    fn fire(&mut self, upto: i64) -> Result<Vec<ChangeBatch>> {
        if upto <= self.fired {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if self.cfg.early_fire {
            out = self.emit_touched(Some(upto))?;
        } else {
            let mut windows: BTreeSet<(i64, i64)> = BTreeSet::new();
            for p in self.panes.keys() {
                if *p >= upto {
                    break;
                }
                for (s, e) in self.cfg.window.windows_of_pane(*p) {
                    if e > self.fired && e <= upto {
                        windows.insert((e, s));
                    }
                }
            }
            for (e, s) in windows {
                if let Some(b) = self.window_batch(s, e, None)? {
                    out.push(ChangeBatch::append(b, self.wm));
                }
            }
        }
        let spec = self.cfg.window;
        self.panes.retain(|p, _| spec.last_end(*p) > upto);
        self.fired = upto;
        Ok(out)
    }
}

impl Operator for WindowAgg {
    fn process(&mut self, _port: usize, input: ChangeBatch, cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        if !self.merges_panes() || input.is_empty() {
            self.absorb(&input, cx)?;
            return Ok(Vec::new());
        }
        // A row late for some (not all) of its windows: fire those windows first, in order.
        let panes = self.panes_of(&input.batch)?;
        let wms = input.wm.values();
        let spec = self.cfg.window;
        let partly_late = panes
            .iter()
            .zip(wms.iter())
            .any(|(p, w)| spec.first_end(*p) <= *w && spec.last_end(*p) > *w && spec.first_end(*p) > self.fired);
        if !partly_late {
            self.absorb(&input, cx)?;
            return Ok(Vec::new());
        }
        // Windows ending at or before the lowest watermark fire before any of these rows; then one
        // point per window end up to the highest.
        let lo = wms.iter().copied().min().unwrap_or(i64::MIN);
        let top = wms.iter().copied().max().unwrap_or(i64::MIN);
        let mut points = Vec::new();
        if lo > self.fired {
            points.push(lo);
        }
        points.extend(spec.ends_between(self.fired.max(lo), top));
        let mut out = Vec::new();
        for (i, part) in split_by_watermark(&input, &points)?.into_iter().enumerate() {
            self.absorb(&part, cx)?;
            if let Some(p) = points.get(i) {
                out.extend(self.fire(*p)?);
            }
        }
        Ok(out)
    }

    fn flush(&mut self, cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        if self.cfg.early_fire && !cx.hold_early {
            self.emit_touched(None)
        } else {
            Ok(Vec::new())
        }
    }

    fn advance(&mut self, wm: i64, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let out = self.fire(wm)?;
        self.wm = self.wm.max(wm);
        Ok(out)
    }

    fn low_water(&self) -> i64 {
        self.panes.keys().next().copied().unwrap_or(i64::MAX)
    }

    fn state_size(&self) -> usize {
        self.panes.values().map(|p| p.table.len()).sum()
    }

    fn set_emit_floor(&mut self, floor: i64) {
        self.emit_floor = floor;
    }

    /// Tables: `window_agg` (one row: `fired`, `wm`, `emit_floor`), `window_panes` (`pane`: every
    /// pane's start) and `window_groups` (keyed: per pane and group, `pane`, `touched` — changed
    /// since the last early firing — then the aggregate state, see [`Aggregates::state_columns`]),
    /// ordered by pane, then group id.
    fn snapshot(&self) -> Result<OpState> {
        let mut st = OpState::new();
        st.put(
            "window_agg",
            plain_table(vec![
                ("fired", Arc::new(Int64Array::from(vec![self.fired])) as ArrayRef),
                ("wm", Arc::new(Int64Array::from(vec![self.wm]))),
                ("emit_floor", Arc::new(Int64Array::from(vec![self.emit_floor]))),
            ])?,
        );
        st.put(
            "window_panes",
            plain_table(vec![(
                "pane",
                Arc::new(Int64Array::from_iter_values(self.panes.keys().copied())) as ArrayRef,
            )])?,
        );
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut pane_col: Vec<i64> = Vec::new();
        let mut touched: Vec<bool> = Vec::new();
        let mut parts: Vec<Vec<(String, ArrayRef)>> = Vec::new();
        for (p, pane) in &self.panes {
            let (gids, k) = pane.table.snapshot();
            pane_col.extend(std::iter::repeat_n(*p, gids.len()));
            touched.extend(gids.iter().map(|g| pane.touched.contains(g)));
            parts.push(pane.aggs.state_columns(&gids)?);
            keys.extend(k);
        }
        // No pane: the columns of an empty state.
        if parts.is_empty() {
            parts.push(Aggregates::new(&self.cfg.calls, false)?.state_columns(&[])?);
        }
        let aggs = concat_columns(parts)?;
        let mut cols: Vec<(&str, ArrayRef)> = vec![
            ("pane", Arc::new(Int64Array::from(pane_col))),
            ("touched", Arc::new(BooleanArray::from(touched))),
        ];
        cols.extend(aggs.iter().map(|(n, a)| (n.as_str(), a.clone())));
        st.put("window_groups", keyed_table(keys, cols)?);
        Ok(st)
    }

    fn restore(&mut self, mut st: OpState) -> Result<()> {
        let meta = st.take_single_row("window_agg")?;
        let scalar = |name: &str| -> Result<i64> {
            let c = state::column::<Int64Array>(&meta, name)?;
            if c.is_null(0) {
                return Err(Error::Internal(format!("state column '{name}' is NULL")));
            }
            Ok(c.value(0))
        };
        let (fired, wm, emit_floor) = (scalar("fired")?, scalar("wm")?, scalar("emit_floor")?);
        let panes = st.take("window_panes")?;
        let starts = state::column::<Int64Array>(&panes, "pane")?;
        if starts.null_count() > 0 {
            return Err(Error::Internal("state column 'pane' has NULLs".into()));
        }
        let groups = st.take("window_groups")?;
        state::keys(&groups)?;
        let pane_of = state::column::<Int64Array>(&groups, "pane")?;
        let touched = state::column::<BooleanArray>(&groups, "touched")?;
        if pane_of.null_count() > 0 || touched.null_count() > 0 {
            return Err(Error::Internal(
                "state table 'window_groups' has NULL panes or marks".into(),
            ));
        }
        let mut panes: BTreeMap<i64, Pane> = BTreeMap::new();
        for p in starts.values() {
            let pane = Pane {
                table: GroupTable::new(&self.cfg.key_types)?,
                aggs: Aggregates::new(&self.cfg.calls, false)?,
                touched: HashSet::new(),
            };
            panes.insert(*p, pane);
        }
        // Rows by pane, in table order (the groups' old order).
        let mut rows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, p) in pane_of.values().iter().enumerate() {
            rows.entry(*p).or_default().push(i as u32);
        }
        for (p, idx) in rows {
            let pane = panes.get_mut(&p).ok_or_else(|| {
                Error::Internal(format!(
                    "state table 'window_groups' has groups of pane {p}, which is not in 'window_panes'"
                ))
            })?;
            let idx = UInt32Array::from(idx);
            let part = take_record_batch(&groups, &idx)?;
            let gids = pane.table.restore(state::keys(&part)?)?;
            pane.aggs.restore_columns(&gids, &part)?;
            for (j, i) in idx.values().iter().enumerate() {
                if touched.value(*i as usize) {
                    pane.touched.insert(gids[j]);
                }
            }
        }
        self.panes = panes;
        self.fired = fired;
        self.wm = wm;
        self.emit_floor = self.emit_floor.max(emit_floor);
        Ok(())
    }
}

/// Concatenate the state columns of several parts (the same names in the same order); a column
/// typed `Null` in some part (an aggregate that saw no value there) takes the others' type.
fn concat_columns(parts: Vec<Vec<(String, ArrayRef)>>) -> Result<Vec<(String, ArrayRef)>> {
    let Some(first) = parts.first() else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = first.iter().map(|(n, _)| n.clone()).collect();
    let mut out = Vec::with_capacity(names.len());
    for (j, name) in names.into_iter().enumerate() {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(parts.len());
        for p in &parts {
            match p.get(j) {
                Some((n, a)) if *n == name => arrays.push(a.clone()),
                _ => return Err(Error::Internal(format!("panes disagree on state column '{name}'"))),
            }
        }
        let t = arrays
            .iter()
            .map(|a| a.data_type())
            .find(|t| !is_null_like(t))
            .unwrap_or(arrays[0].data_type())
            .clone();
        let arrays: Vec<ArrayRef> = arrays
            .into_iter()
            .map(|a| if a.data_type() == &t { Ok(a) } else { cast(&a, &t) })
            .collect::<std::result::Result<_, _>>()?;
        let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
        out.push((name, concat(&refs)?));
    }
    Ok(out)
}

/// `Null`, or a list of `Null` (the state type of values not seen yet).
fn is_null_like(t: &DataType) -> bool {
    match t {
        DataType::Null => true,
        DataType::List(f) => f.data_type() == &DataType::Null,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::acc::AggKind;
    use crate::operator::test_rows::rows;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
    use datafusion::physical_expr::expressions::col;

    fn op(window: WindowSpec, early_fire: bool) -> WindowAgg {
        let s = crate::operator::test_rows::schema();
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        WindowAgg::new(Config {
            window,
            keys: vec![col("k", &s).expect("k")],
            key_names: vec!["k".into()],
            key_types: vec![DataType::Utf8],
            pane: col("t", &s).expect("t"),
            pane_shift: 0,
            columns: vec![OutCol::Key(0), OutCol::Start, OutCol::End],
            calls: vec![AggCall {
                display: "count(*)".into(),
                kind: AggKind::CountStar,
                args: vec![],
                filter: None,
                distinct: false,
                return_type: DataType::Int64,
            }]
            .into(),
            schema: Arc::new(Schema::new(vec![
                Field::new("k", DataType::Utf8, false),
                Field::new("window_start", ts.clone(), false),
                Field::new("window_end", ts, false),
                Field::new("n", DataType::Int64, false),
            ])),
            early_fire,
        })
        .expect("op")
    }

    fn collect(out: &[ChangeBatch]) -> Vec<(String, i64, i64)> {
        let mut v = Vec::new();
        for c in out {
            let b = &c.batch;
            for i in 0..b.num_rows() {
                v.push((
                    b.column(0).as_string::<i32>().value(i).to_string(),
                    b.column(1)
                        .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>()
                        .value(i),
                    b.column(3).as_primitive::<Int64Type>().value(i),
                ));
            }
        }
        v
    }

    #[test]
    fn hop_fires_merged_panes_and_a_partly_late_row_joins_only_open_windows() {
        let mut w = op(
            WindowSpec::Hop {
                slide: 2_000,
                size: 4_000,
            },
            false,
        );
        let mut cx = Context::default();
        // Row 3 (t=1000) arrives after the watermark reached 2500: window [-2000, 2000) had ended,
        // window [0, 4000) had not.
        let out = w
            .process(0, rows(&["a", "a", "a"], &[500, 2_500, 1_000], &[0, 0, 2_500]), &mut cx)
            .expect("process");
        assert_eq!(collect(&out), vec![("a".into(), -2_000, 1)]);
        let out = w.advance(i64::MAX, &mut cx).expect("advance");
        assert_eq!(
            collect(&out),
            vec![("a".into(), 0, 3), ("a".into(), 2_000, 1)],
            "[0,4000) has all three rows, [2000,6000) the one at 2500"
        );
        assert!(cx.late.is_empty());
        assert_eq!(w.state_size(), 0);
    }

    #[test]
    fn tumble_drops_late_rows_and_fires_early_when_asked() {
        let mut w = op(WindowSpec::Tumble { size: 1_000 }, true);
        let mut cx = Context::default();
        w.process(0, rows(&["a", "b", "a"], &[100, 200, 1_500], &[0, 0, 0]), &mut cx)
            .expect("process");
        let early = w.flush(&mut cx).expect("flush");
        assert_eq!(
            collect(&early),
            vec![("a".into(), 0, 1), ("b".into(), 0, 1), ("a".into(), 1_000, 1)]
        );
        assert_eq!(early[0].kind(0), RowKind::UpdateAfter);
        w.advance(1_200, &mut cx).expect("advance");
        w.process(0, rows(&["a"], &[900], &[1_200]), &mut cx).expect("late");
        assert_eq!(cx.late.len(), 1, "window [0, 1000) had fired");
        w.process(0, rows(&["a"], &[1_600], &[1_200]), &mut cx)
            .expect("on time");
        let early = w.flush(&mut cx).expect("flush");
        assert_eq!(collect(&early), vec![("a".into(), 1_000, 2)]);
    }

    #[test]
    fn held_early_results_go_out_later_and_closing_windows_go_out_at_once() {
        let hold = || Context {
            hold_early: true,
            ..Context::default()
        };
        // TUMBLE: nothing goes out while held, then the window [0, 1000) closes and goes out
        // final; [1000, 2000), still open, goes out with the next flush not held.
        let mut w = op(WindowSpec::Tumble { size: 1_000 }, true);
        let mut cx = hold();
        w.process(0, rows(&["a", "b", "a"], &[100, 200, 1_500], &[0, 0, 0]), &mut cx)
            .expect("process");
        assert!(collect(&w.flush(&mut cx).expect("flush")).is_empty());
        w.process(0, rows(&["a"], &[300], &[0]), &mut cx).expect("process");
        assert!(collect(&w.flush(&mut cx).expect("flush")).is_empty());
        let closed = w.advance(1_000, &mut cx).expect("advance");
        assert_eq!(collect(&closed), vec![("a".into(), 0, 2), ("b".into(), 0, 1)]);
        let later = w.flush(&mut Context::default()).expect("flush");
        assert_eq!(collect(&later), vec![("a".into(), 1_000, 1)]);
        assert!(
            collect(&w.flush(&mut Context::default()).expect("flush")).is_empty(),
            "sent once"
        );
        // HOP 2 s / 1 s: the pane [1000, 2000) is in [0, 2000) and [1000, 3000). When the first
        // closes, the second (open, sharing the touched pane) still goes out at the next flush.
        let mut h = op(
            WindowSpec::Hop {
                slide: 1_000,
                size: 2_000,
            },
            true,
        );
        let mut cx = hold();
        h.process(0, rows(&["a"], &[1_500], &[0]), &mut cx).expect("process");
        assert!(collect(&h.flush(&mut cx).expect("flush")).is_empty());
        let closed = h.advance(2_000, &mut cx).expect("advance");
        assert_eq!(collect(&closed), vec![("a".into(), 0, 1)]);
        let later = h.flush(&mut Context::default()).expect("flush");
        assert_eq!(collect(&later), vec![("a".into(), 1_000, 1)]);
    }

    use crate::operator::acc::testing::{all_calls, fields, native_calls, rows as xrows};
    use crate::operator::state::testing::{Step, assert_restores_at_every_split, replace_column};

    /// A window aggregate over `k, t, x` grouped by `k` with `calls`.
    fn op_with(window: WindowSpec, early_fire: bool, calls: Vec<AggCall>) -> WindowAgg {
        let s = crate::operator::acc::testing::schema();
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let mut out = vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
        ];
        out.extend(fields(&calls));
        WindowAgg::new(Config {
            window,
            keys: vec![col("k", &s).expect("k")],
            key_names: vec!["k".into()],
            key_types: vec![DataType::Utf8],
            pane: col("t", &s).expect("t"),
            pane_shift: 0,
            columns: vec![OutCol::Key(0), OutCol::Start, OutCol::End],
            calls: calls.into(),
            schema: Arc::new(Schema::new(out)),
            early_fire,
        })
        .expect("op")
    }

    fn tumble_steps() -> Vec<Step> {
        vec![
            Step::Rows(
                0,
                xrows(
                    &["a", "b", "a"],
                    &[100, 200, 1_500],
                    &[Some(5), Some(1), Some(7)],
                    &[0, 0, 0],
                ),
            ),
            Step::Rows(0, xrows(&["b", "a"], &[300, 400], &[None, Some(5)], &[0, 0])),
            Step::Advance(1_200),
            // Late: [0, 1000) has fired.
            Step::Rows(0, xrows(&["a"], &[900], &[Some(100)], &[1_200])),
            Step::Rows(
                0,
                xrows(
                    &["a", "b", "a"],
                    &[1_600, 1_700, 2_100],
                    &[Some(3), None, Some(2)],
                    &[1_200, 1_200, 1_200],
                ),
            ),
            Step::Advance(2_500),
            Step::Rows(
                0,
                xrows(&["b", "a"], &[2_600, 1_999], &[Some(4), Some(8)], &[2_500, 2_500]),
            ),
            Step::Advance(i64::MAX),
        ]
    }

    #[test]
    fn tumble_restores_with_every_accumulator_kind() {
        let steps = tumble_steps();
        let n = assert_restores_at_every_split(
            || op_with(WindowSpec::Tumble { size: 1_000 }, false, all_calls()),
            &steps,
        );
        assert!(n > 0);
    }

    #[test]
    fn tumble_with_early_firing_restores_its_touched_groups() {
        let steps = tumble_steps();
        let n = assert_restores_at_every_split(
            || op_with(WindowSpec::Tumble { size: 1_000 }, true, all_calls()),
            &steps,
        );
        assert!(n > 0);
    }

    #[test]
    fn tumble_restores_a_stddev_through_its_accumulator_state() {
        // Values whose running means are exact: the state a checkpoint rebuilds the accumulator
        // from is then exactly the one it had.
        let calls = vec![crate::operator::acc::testing::generic("stddev", DataType::Float64)];
        let steps = vec![
            Step::Rows(
                0,
                xrows(
                    &["a", "a", "b"],
                    &[100, 200, 300],
                    &[Some(1), Some(3), Some(4)],
                    &[0, 0, 0],
                ),
            ),
            Step::Rows(0, xrows(&["a", "b"], &[400, 500], &[Some(5), Some(8)], &[0, 0])),
            Step::Advance(i64::MAX),
        ];
        assert_restores_at_every_split(
            || op_with(WindowSpec::Tumble { size: 1_000 }, false, calls.clone()),
            &steps,
        );
    }

    #[test]
    fn hop_restores_merged_panes_and_partly_late_rows() {
        let steps = vec![
            // Row 3 (t=1000) is late for [-2000, 2000) only.
            Step::Rows(
                0,
                xrows(
                    &["a", "a", "a"],
                    &[500, 2_500, 1_000],
                    &[Some(1), Some(2), Some(3)],
                    &[0, 0, 2_500],
                ),
            ),
            Step::Rows(
                0,
                xrows(&["b", "a"], &[3_100, 3_900], &[Some(6), None], &[2_500, 2_500]),
            ),
            Step::Advance(4_000),
            Step::Rows(
                0,
                xrows(&["b", "a"], &[3_500, 5_000], &[Some(1), Some(9)], &[4_000, 4_000]),
            ),
            Step::Advance(i64::MAX),
        ];
        let hop = WindowSpec::Hop {
            slide: 2_000,
            size: 4_000,
        };
        let n = assert_restores_at_every_split(|| op_with(hop, false, native_calls()), &steps);
        assert!(n > 0);
        assert_restores_at_every_split(|| op_with(hop, true, native_calls()), &steps);
    }

    #[test]
    fn cumulate_restores() {
        let steps = vec![
            Step::Rows(
                0,
                xrows(
                    &["a", "b", "a"],
                    &[100, 1_200, 2_500],
                    &[Some(4), Some(2), Some(1)],
                    &[0, 0, 0],
                ),
            ),
            Step::Advance(1_500),
            // Late for [0, 1000) only (which it is not in anyway), then one late for [0, 2000).
            Step::Rows(
                0,
                xrows(&["a", "b"], &[1_700, 900], &[Some(6), Some(7)], &[1_500, 2_100]),
            ),
            Step::Advance(3_000),
            Step::Rows(0, xrows(&["a"], &[3_300], &[Some(5)], &[3_000])),
            Step::Advance(i64::MAX),
        ];
        let cum = WindowSpec::Cumulate {
            step: 1_000,
            size: 3_000,
        };
        let n = assert_restores_at_every_split(|| op_with(cum, false, native_calls()), &steps);
        assert!(n > 0);
        assert_restores_at_every_split(|| op_with(cum, true, native_calls()), &steps);
    }

    /// `st` with column `col` of table `table` replaced by `with`.

    #[test]
    fn a_corrupted_state_is_refused() {
        let make = || op_with(WindowSpec::Tumble { size: 1_000 }, true, all_calls());
        let mut w = make();
        let mut cx = Context::default();
        for s in &tumble_steps()[..2] {
            if let Step::Rows(_, b) = s {
                w.process(0, b.clone(), &mut cx).expect("process");
            }
        }
        let st = w.snapshot().expect("snapshot");
        assert_eq!(
            st.tables.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["window_agg", "window_panes", "window_groups"]
        );
        let rows_of = |t: &str| {
            st.tables
                .iter()
                .find(|(n, _)| n == t)
                .map(|(_, b)| b.num_rows())
                .expect("table")
        };
        assert_eq!((rows_of("window_panes"), rows_of("window_groups")), (2, 3));

        let mut missing = st.clone();
        missing.tables.retain(|(n, _)| n != "window_panes");
        let err = make().restore(missing).expect_err("missing table");
        assert!(err.to_string().contains("window_panes"), "{err}");

        let strings = |n: usize| Arc::new(datafusion::arrow::array::StringArray::from(vec!["x"; n])) as ArrayRef;
        for (table, col, n) in [
            ("window_agg", "fired", 1),
            ("window_groups", "pane", 3),
            ("window_groups", "touched", 3),
            ("window_groups", "key", 3),
            ("window_groups", "rows", 3),
            ("window_groups", "a2_sum", 3),
            ("window_groups", "a6_counts", 3),
        ] {
            let err = make()
                .restore(replace_column(&st, table, col, strings(n)))
                .expect_err(col);
            assert!(err.to_string().contains(col), "{col}: {err}");
        }
        // A group of a pane the pane list lacks.
        let err = make()
            .restore(replace_column(
                &st,
                "window_panes",
                "pane",
                Arc::new(Int64Array::from(vec![0, 5_000])),
            ))
            .expect_err("pane");
        assert!(err.to_string().contains("pane 1000"), "{err}");
        make().restore(st).expect("the state as written restores");
    }
}
