//! Window aggregate over TUMBLE, HOP and CUMULATE windows (Flink's window TVF aggregation).
//!
//! State is per pane: a group table (keys in Arrow's row format) and the aggregate state of its
//! groups. TUMBLE's pane is its window; a HOP or CUMULATE window is the merge of its panes when it
//! fires. A pane is dropped once the watermark passes the end of the last window containing it.
//!
//! Emission: each window row once, when the watermark reaches the window's end (append-only) — or,
//! with `early_fire` (chosen by the planner when the result goes straight to an upsert sink), the
//! changed window rows after every micro-batch as `+U` rows keyed by group key and window.
//!
//! Late rows: a row is dropped to `_late` when every window containing it had ended at the
//! watermark it arrived under. A HOP/CUMULATE row late for only some of its windows splits the
//! batch at the window ends between, so it joins exactly the windows that had not fired.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;

use super::acc::{AggCall, Aggregates};
use super::groups::GroupTable;
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

    /// Early firing: the current value of every window changed since the last call.
    fn emit_touched(&mut self) -> Result<Vec<ChangeBatch>> {
        let mut windows: BTreeSet<(i64, i64)> = BTreeSet::new();
        for (p, pane) in &self.panes {
            if pane.touched.is_empty() {
                continue;
            }
            for (s, e) in self.cfg.window.windows_of_pane(*p) {
                if e > self.fired {
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
        for pane in self.panes.values_mut() {
            pane.touched.clear();
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
            out = self.emit_touched()?;
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

    fn flush(&mut self, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        if self.cfg.early_fire {
            self.emit_touched()
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
}
