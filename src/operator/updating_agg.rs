//! Updating aggregate: `GROUP BY` without a window (and `SELECT DISTINCT`, an aggregate without
//! aggregate calls). Its result is a changelog keyed by the group key: a new group is `+I`, a
//! changed one `-U` old / `+U` new, a group whose last row was retracted `-D`. It takes a changelog
//! too (retractions undo what their insert did), so aggregates nest.
//!
//! State is unbounded by time: a group lives until its rows are retracted. With `state_ttl` (`SET
//! 'table.exec.state.ttl' = '1 h'`, as in Flink, in processing time) a group unchanged that long is
//! forgotten without a word: its result row stays where it was written, and a later row of its key
//! starts the group afresh — the user trades exactness for bounded state.

use datafusion::common::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, DurationMicrosecondArray, Int8Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;

use super::acc::{AggCall, Aggregates};
use super::groups::GroupTable;
use super::state::{self, OpState, keyed_table, plain_table};
use super::{ChangeBatch, Context, Operator, RowKind, batch_of, conformed_batch};
use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Config {
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Names of the keys (EXPLAIN).
    pub key_names: Vec<String>,
    pub key_types: Vec<DataType>,
    pub calls: Arc<[AggCall]>,
    /// Output: the keys, then one column per call.
    pub schema: SchemaRef,
    /// The input is a changelog.
    pub retracting: bool,
    /// Forget groups unchanged for this long (processing time).
    pub state_ttl: Option<std::time::Duration>,
}

pub struct UpdatingAgg {
    cfg: Config,
    table: GroupTable,
    aggs: Aggregates,
    /// Compares old and new values so unchanged groups emit nothing.
    values: Option<RowConverter>,
    wm: i64,
    /// When each group last changed (with `state_ttl`).
    changed: Vec<std::time::Instant>,
    last_sweep: std::time::Instant,
}

impl UpdatingAgg {
    pub fn new(cfg: Config) -> Result<UpdatingAgg> {
        let types: Vec<SortField> = cfg
            .calls
            .iter()
            .map(|c| SortField::new(c.return_type.clone()))
            .collect();
        Ok(UpdatingAgg {
            table: GroupTable::new(&cfg.key_types)?,
            aggs: Aggregates::new(&cfg.calls, cfg.retracting)?,
            values: if types.is_empty() {
                None
            } else {
                Some(RowConverter::new(types)?)
            },
            cfg,
            wm: i64::MIN,
            changed: Vec::new(),
            last_sweep: std::time::Instant::now(),
        })
    }

    /// Forget the groups unchanged for longer than the TTL (at most every TTL / 4).
    fn expire(&mut self) {
        let Some(ttl) = self.cfg.state_ttl else { return };
        let now = std::time::Instant::now();
        if now.duration_since(self.last_sweep) < ttl / 4 {
            return;
        }
        self.last_sweep = now;
        let old: Vec<u32> = self
            .table
            .ids()
            .filter(|g| {
                self.changed
                    .get(*g as usize)
                    .is_none_or(|t| now.duration_since(*t) >= ttl)
            })
            .collect();
        for g in old {
            self.table.remove(g);
            self.aggs.reset(g);
        }
    }

    fn rows_of(&mut self, gids: &[u32]) -> Result<(RecordBatch, Vec<ArrayRef>)> {
        let keys = self.table.keys_of(gids)?;
        let vals = self.aggs.evaluate(gids)?;
        let cols: Vec<ArrayRef> = keys.into_iter().chain(vals.iter().cloned()).collect();
        let batch = conformed_batch(&self.cfg.schema, cols, gids.len())?;
        Ok((batch, vals))
    }
}

impl Operator for UpdatingAgg {
    fn process(&mut self, _port: usize, input: ChangeBatch, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let n = input.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        let b = &input.batch;
        let keys: Vec<ArrayRef> = self
            .cfg
            .keys
            .iter()
            .map(|e| e.evaluate(b).and_then(|v| v.into_array(n)))
            .collect::<std::result::Result<_, _>>()?;
        let gids = self.table.intern(&keys, n)?;
        if self.cfg.state_ttl.is_some() {
            let now = std::time::Instant::now();
            if self.changed.len() < self.table.capacity() {
                self.changed.resize(self.table.capacity(), now);
            }
            for g in &gids {
                self.changed[*g as usize] = now;
            }
        }
        let retract = input.retractions();
        if retract.is_some() && !self.cfg.retracting {
            return Err(Error::Internal(
                "an aggregate planned for inserts got a retraction".into(),
            ));
        }
        // Touched groups in first-seen order, with their row counts before this batch.
        let mut seen: HashMap<u32, usize> = HashMap::new();
        let mut touched: Vec<(u32, i64)> = Vec::new();
        for g in &gids {
            seen.entry(*g).or_insert_with(|| {
                touched.push((*g, self.aggs.rows(*g)));
                touched.len() - 1
            });
        }
        let before: Vec<u32> = touched.iter().filter(|(_, r)| *r > 0).map(|(g, _)| *g).collect();
        let (old, old_vals) = self.rows_of(&before)?;
        let ev = Aggregates::evaluate_args(&self.cfg.calls, b)?;
        self.aggs
            .update(&ev, None, &gids, retract.as_deref(), self.table.capacity())?;
        let after: Vec<u32> = touched
            .iter()
            .filter(|(g, _)| self.aggs.rows(*g) > 0)
            .map(|(g, _)| *g)
            .collect();
        let (new, new_vals) = self.rows_of(&after)?;
        // Equal values need no update.
        let same: Vec<bool> = match &self.values {
            None => vec![true; after.len()],
            Some(conv) => {
                let o = conv.convert_columns(&old_vals)?;
                let nw = conv.convert_columns(&new_vals)?;
                let old_at: HashMap<u32, usize> = before.iter().enumerate().map(|(i, g)| (*g, i)).collect();
                after
                    .iter()
                    .enumerate()
                    .map(|(j, g)| old_at.get(g).is_some_and(|i| o.row(*i) == nw.row(j)))
                    .collect()
            }
        };
        let old_at: HashMap<u32, usize> = before.iter().enumerate().map(|(i, g)| (*g, i)).collect();
        let new_at: HashMap<u32, usize> = after.iter().enumerate().map(|(i, g)| (*g, i)).collect();
        let mut pick: Vec<(usize, usize)> = Vec::new();
        let mut kinds: Vec<i8> = Vec::new();
        let mut gone = Vec::new();
        for (g, _) in &touched {
            match (old_at.get(g), new_at.get(g)) {
                (None, Some(j)) => {
                    pick.push((1, *j));
                    kinds.push(RowKind::Insert as i8);
                }
                (Some(i), None) => {
                    pick.push((0, *i));
                    kinds.push(RowKind::Delete as i8);
                    gone.push(*g);
                }
                (Some(i), Some(j)) => {
                    if !same[*j] {
                        pick.push((0, *i));
                        kinds.push(RowKind::UpdateBefore as i8);
                        pick.push((1, *j));
                        kinds.push(RowKind::UpdateAfter as i8);
                    }
                }
                (None, None) => gone.push(*g),
            }
        }
        for g in gone {
            self.table.remove(g);
            self.aggs.reset(g);
        }
        if pick.is_empty() {
            return Ok(Vec::new());
        }
        let cols: Vec<ArrayRef> = (0..self.cfg.schema.fields().len())
            .map(|c| interleave(&[old.column(c).as_ref(), new.column(c).as_ref()], &pick))
            .collect::<std::result::Result<_, _>>()?;
        let m = pick.len();
        let batch = batch_of(&self.cfg.schema, cols, m)?;
        let mut out = ChangeBatch::append(batch, self.wm);
        out.ops = Some(Int8Array::from(kinds));
        Ok(vec![out])
    }

    fn advance(&mut self, wm: i64, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        self.wm = self.wm.max(wm);
        self.expire();
        Ok(Vec::new())
    }

    fn low_water(&self) -> i64 {
        if self.table.is_empty() { i64::MAX } else { i64::MIN }
    }

    fn state_size(&self) -> usize {
        self.table.len()
    }

    /// Tables: `updating_agg` (one row: `wm`, `last_sweep_age`) and `groups` (keyed: per group,
    /// `changed_age`, then the aggregate state, see [`Aggregates::state_columns`]). The values a
    /// group emitted last (what a `-U` retracts) are its aggregates' values, so they need no column
    /// of their own.
    ///
    /// State TTL runs in processing time (`Instant`s, which mean nothing in another process): a
    /// group's last change and the last sweep are written as ages (how long before the snapshot),
    /// and restored as that long before the restore. Time the query spent stopped does not count
    /// toward a TTL.
    fn snapshot(&self) -> Result<OpState> {
        let now = std::time::Instant::now();
        let age = |t: &std::time::Instant| now.saturating_duration_since(*t).as_micros() as i64;
        let mut st = OpState::new();
        st.put(
            "updating_agg",
            plain_table(vec![
                ("wm", Arc::new(Int64Array::from(vec![self.wm])) as ArrayRef),
                (
                    "last_sweep_age",
                    Arc::new(DurationMicrosecondArray::from(vec![age(&self.last_sweep)])),
                ),
            ])?,
        );
        let (gids, keys) = self.table.snapshot();
        // NULL: no change time kept (without a TTL).
        let changed = DurationMicrosecondArray::from_iter(gids.iter().map(|g| self.changed.get(*g as usize).map(age)));
        let aggs = self.aggs.state_columns(&gids)?;
        let mut cols: Vec<(&str, ArrayRef)> = vec![("changed_age", Arc::new(changed))];
        cols.extend(aggs.iter().map(|(n, a)| (n.as_str(), a.clone())));
        st.put("groups", keyed_table(keys, cols)?);
        Ok(st)
    }

    fn restore(&mut self, mut st: OpState) -> Result<()> {
        let meta = st.take_single_row("updating_agg")?;
        let wm = state::column::<Int64Array>(&meta, "wm")?;
        let sweep = state::column::<DurationMicrosecondArray>(&meta, "last_sweep_age")?;
        if wm.is_null(0) || sweep.is_null(0) {
            return Err(Error::Internal("state table 'updating_agg' has NULLs".into()));
        }
        let groups = st.take("groups")?;
        let changed = state::column::<DurationMicrosecondArray>(&groups, "changed_age")?;
        let mut table = GroupTable::new(&self.cfg.key_types)?;
        let gids = table.restore(state::keys(&groups)?)?;
        let mut aggs = Aggregates::new(&self.cfg.calls, self.cfg.retracting)?;
        aggs.restore_columns(&gids, &groups)?;
        let now = std::time::Instant::now();
        let ago = |us: i64| {
            now.checked_sub(std::time::Duration::from_micros(us.max(0) as u64))
                .unwrap_or(now)
        };
        let mut times = Vec::new();
        if self.cfg.state_ttl.is_some() {
            // A group without a change time (a state written without a TTL) starts its TTL now.
            times = vec![now; table.capacity()];
            for (i, g) in gids.iter().enumerate() {
                if changed.is_valid(i) {
                    times[*g as usize] = ago(changed.value(i));
                }
            }
        }
        self.table = table;
        self.aggs = aggs;
        self.changed = times;
        self.last_sweep = ago(sweep.value(0));
        self.wm = wm.value(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::acc::AggKind;
    use datafusion::arrow::array::{AsArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Int64Type, Schema};
    use datafusion::physical_expr::expressions::col;

    #[test]
    fn emits_inserts_updates_and_deletes() {
        let in_schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("x", DataType::Int64, false),
        ]));
        let mut op = UpdatingAgg::new(Config {
            keys: vec![col("k", &in_schema).expect("k")],
            key_names: vec!["k".into()],
            key_types: vec![DataType::Utf8],
            calls: vec![AggCall {
                display: "sum(x)".into(),
                kind: AggKind::Sum,
                args: vec![col("x", &in_schema).expect("x")],
                filter: None,
                distinct: false,
                return_type: DataType::Int64,
            }]
            .into(),
            schema: Arc::new(Schema::new(vec![
                Field::new("k", DataType::Utf8, false),
                Field::new("s", DataType::Int64, true),
            ])),
            retracting: true,
            state_ttl: None,
        })
        .expect("op");
        let batch = |k: Vec<&str>, x: Vec<i64>| {
            RecordBatch::try_new(
                in_schema.clone(),
                vec![Arc::new(StringArray::from(k)), Arc::new(Int64Array::from(x))],
            )
            .expect("b")
        };
        let mut cx = Context::default();
        let out = op
            .process(
                0,
                ChangeBatch::append(batch(vec!["a", "b", "a"], vec![1, 2, 3]), 0),
                &mut cx,
            )
            .expect("p");
        assert_eq!(out[0].num_rows(), 2);
        assert_eq!(out[0].batch.column(1).as_primitive::<Int64Type>().value(0), 4);
        let retract_b = ChangeBatch::changes(
            batch(vec!["b", "a", "a"], vec![2, 3, 5]),
            vec![RowKind::Delete, RowKind::UpdateBefore, RowKind::UpdateAfter],
            0,
        );
        let out = op.process(0, retract_b, &mut cx).expect("p");
        let kinds: Vec<RowKind> = (0..out[0].num_rows()).map(|i| out[0].kind(i)).collect();
        assert_eq!(
            kinds,
            vec![RowKind::Delete, RowKind::UpdateBefore, RowKind::UpdateAfter]
        );
        let sums: Vec<i64> = out[0].batch.column(1).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(sums, vec![2, 4, 6]);
        assert_eq!(op.state_size(), 1);
        // Net zero change to a: nothing emitted.
        let noop = ChangeBatch::changes(
            batch(vec!["a", "a"], vec![1, 1]),
            vec![RowKind::Delete, RowKind::Insert],
            0,
        );
        assert!(op.process(0, noop, &mut cx).expect("p").is_empty());
    }

    #[test]
    fn a_state_ttl_forgets_unchanged_groups() {
        let in_schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
        let mut op = UpdatingAgg::new(Config {
            keys: vec![col("k", &in_schema).expect("k")],
            key_names: vec!["k".into()],
            key_types: vec![DataType::Utf8],
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
                Field::new("n", DataType::Int64, false),
            ])),
            retracting: false,
            state_ttl: Some(std::time::Duration::ZERO),
        })
        .expect("op");
        let mut cx = Context::default();
        let b = RecordBatch::try_new(in_schema.clone(), vec![Arc::new(StringArray::from(vec!["a", "a"]))]).expect("b");
        op.process(0, ChangeBatch::append(b.clone(), 0), &mut cx).expect("p");
        op.advance(0, &mut cx).expect("a");
        assert_eq!(op.state_size(), 0, "forgotten");
        let out = op.process(0, ChangeBatch::append(b, 0), &mut cx).expect("p");
        assert_eq!(out[0].kind(0), RowKind::Insert, "the key starts afresh");
        assert_eq!(out[0].batch.column(1).as_primitive::<Int64Type>().value(0), 2);
    }

    use crate::operator::acc::testing::{all_calls, fields, generic, native_calls, rows as xrows};
    use crate::operator::state::testing::{Step, assert_restores_at_every_split, replace_column};

    /// `GROUP BY k` (or, with `keyed` false, no key) over `k, t, x` with `calls`.
    fn op_with(keyed: bool, calls: Vec<AggCall>, retracting: bool, ttl: Option<std::time::Duration>) -> UpdatingAgg {
        let s = crate::operator::acc::testing::schema();
        let mut out = if keyed {
            vec![Field::new("k", DataType::Utf8, false)]
        } else {
            vec![]
        };
        out.extend(fields(&calls));
        UpdatingAgg::new(Config {
            keys: if keyed { vec![col("k", &s).expect("k")] } else { vec![] },
            key_names: if keyed { vec!["k".into()] } else { vec![] },
            key_types: if keyed { vec![DataType::Utf8] } else { vec![] },
            calls: calls.into(),
            schema: Arc::new(Schema::new(out)),
            retracting,
            state_ttl: ttl,
        })
        .expect("op")
    }

    /// Changes `(kind, k, x)`.
    fn changes(rows: &[(RowKind, &str, Option<i64>)]) -> Step {
        let keys: Vec<&str> = rows.iter().map(|r| r.1).collect();
        let xs: Vec<Option<i64>> = rows.iter().map(|r| r.2).collect();
        let b = xrows(&keys, &vec![0; rows.len()], &xs, &vec![0; rows.len()]);
        Step::Rows(0, ChangeBatch::changes(b.batch, rows.iter().map(|r| r.0).collect(), 0))
    }

    use RowKind::{Delete as D, Insert as I, UpdateAfter as UA, UpdateBefore as UB};

    fn changelog_steps() -> Vec<Step> {
        vec![
            changes(&[
                (I, "a", Some(1)),
                (I, "b", Some(2)),
                (I, "a", Some(3)),
                (I, "a", Some(3)),
            ]),
            changes(&[(D, "b", Some(2)), (UB, "a", Some(3)), (UA, "a", Some(5))]),
            // Net nothing for a: no output.
            changes(&[(D, "a", Some(1)), (I, "a", Some(1))]),
            Step::Advance(1_000),
            // a's MIN and MAX fall back on what is left; c comes and b returns.
            changes(&[(I, "c", Some(7)), (D, "a", Some(1)), (D, "a", Some(5)), (I, "b", None)]),
            // a's last row goes: -D; a NULL joins c.
            changes(&[
                (D, "a", Some(3)),
                (UB, "c", Some(7)),
                (UA, "c", None),
                (I, "c", Some(7)),
            ]),
            changes(&[(I, "a", Some(4)), (I, "b", Some(4)), (I, "b", Some(4)), (D, "c", None)]),
            Step::Advance(2_000),
        ]
    }

    #[test]
    fn a_changelog_aggregate_restores_its_retractions() {
        let n = assert_restores_at_every_split(|| op_with(true, all_calls(), true, None), &changelog_steps());
        assert!(n > 0);
    }

    #[test]
    fn an_aggregate_without_keys_restores() {
        assert_restores_at_every_split(|| op_with(false, all_calls(), true, None), &changelog_steps());
    }

    #[test]
    fn an_append_only_aggregate_restores() {
        let mut calls = native_calls();
        calls.push(generic("stddev", DataType::Float64));
        let steps = vec![
            Step::Rows(
                0,
                xrows(&["a", "b", "a"], &[0; 3], &[Some(1), Some(2), Some(3)], &[0; 3]),
            ),
            Step::Rows(0, xrows(&["a", "b"], &[0; 2], &[Some(5), None], &[0; 2])),
            Step::Advance(10),
            Step::Rows(
                0,
                xrows(&["c", "a", "a"], &[0; 3], &[Some(9), Some(7), Some(7)], &[10; 3]),
            ),
        ];
        assert_restores_at_every_split(|| op_with(true, calls.clone(), false, None), &steps);
    }

    #[test]
    fn a_state_ttl_restores() {
        let steps = vec![
            Step::Rows(
                0,
                xrows(&["a", "a", "b"], &[0; 3], &[Some(1), Some(2), Some(3)], &[0; 3]),
            ),
            Step::Advance(0),
            Step::Rows(0, xrows(&["a"], &[0], &[Some(4)], &[0])),
            Step::Rows(0, xrows(&["a", "b"], &[0; 2], &[Some(5), Some(6)], &[0; 2])),
            Step::Advance(1),
        ];
        for ttl in [std::time::Duration::ZERO, std::time::Duration::from_secs(3_600)] {
            assert_restores_at_every_split(|| op_with(true, native_calls(), false, Some(ttl)), &steps);
        }
    }

    /// `st` with column `col` of table `table` replaced by `with`.

    #[test]
    fn group_ages_carry_the_ttl_across_a_restore() {
        let ttl = std::time::Duration::from_secs(3_600);
        let mut op = op_with(true, native_calls(), false, Some(ttl));
        let mut cx = Context::default();
        op.process(0, xrows(&["a", "b"], &[0, 0], &[Some(1), Some(2)], &[0, 0]), &mut cx)
            .expect("p");
        let st = op.snapshot().expect("snapshot");
        let groups = &st.tables[1].1;
        let ages = state::column::<DurationMicrosecondArray>(groups, "changed_age").expect("ages");
        assert!(ages.values().iter().all(|a| (0..60_000_000).contains(a)), "{ages:?}");
        // Restored as last changed 2 h ago (a) and now (b), swept 2 h ago: a sweep forgets a.
        let old = 2 * 3_600 * 1_000_000;
        let st = replace_column(
            &st,
            "groups",
            "changed_age",
            Arc::new(DurationMicrosecondArray::from(vec![old, 0])),
        );
        let st = replace_column(
            &st,
            "updating_agg",
            "last_sweep_age",
            Arc::new(DurationMicrosecondArray::from(vec![old])),
        );
        let mut restored = op_with(true, native_calls(), false, Some(ttl));
        restored.restore(st).expect("restore");
        assert_eq!(restored.state_size(), 2);
        restored.advance(0, &mut cx).expect("advance");
        assert_eq!(restored.state_size(), 1, "a is forgotten, b kept");
        let out = restored
            .process(0, xrows(&["a", "b"], &[0, 0], &[Some(1), Some(1)], &[0, 0]), &mut cx)
            .expect("p");
        let kinds: Vec<RowKind> = (0..out[0].num_rows()).map(|i| out[0].kind(i)).collect();
        assert_eq!(
            kinds,
            vec![RowKind::Insert, RowKind::UpdateBefore, RowKind::UpdateAfter]
        );
    }

    #[test]
    fn a_corrupted_state_is_refused() {
        let make = || op_with(true, all_calls(), true, None);
        let mut op = make();
        let mut cx = Context::default();
        for s in &changelog_steps()[..2] {
            if let Step::Rows(_, b) = s {
                op.process(0, b.clone(), &mut cx).expect("p");
            }
        }
        let st = op.snapshot().expect("snapshot");
        let names: Vec<&str> = st.tables.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["updating_agg", "groups"]);
        for t in names {
            let mut missing = st.clone();
            missing.tables.retain(|(n, _)| n != t);
            let err = make().restore(missing).expect_err("missing table");
            assert!(err.to_string().contains(t), "{err}");
        }
        let n = st.tables[1].1.num_rows();
        assert_eq!(n, 1, "a (b was deleted)");
        let strings = |n: usize| Arc::new(StringArray::from(vec!["x"; n])) as ArrayRef;
        for (table, col, n) in [
            ("updating_agg", "wm", 1),
            ("updating_agg", "last_sweep_age", 1),
            ("groups", "key", n),
            ("groups", "changed_age", n),
            ("groups", "rows", n),
            ("groups", "a3_n", n),
            ("groups", "a5_best", n),
            ("groups", "a5_counts", n),
            ("groups", "a7_present", n),
        ] {
            let err = make()
                .restore(replace_column(&st, table, col, strings(n)))
                .expect_err(col);
            assert!(err.to_string().contains(col), "{col}: {err}");
        }
        let mut missing_col = st.clone();
        let t = &mut missing_col.tables[1].1;
        let i = t.schema().index_of("a2_sum").expect("a2_sum");
        t.remove_column(i);
        let err = make().restore(missing_col).expect_err("missing column");
        assert!(err.to_string().contains("a2_sum"), "{err}");
        make().restore(st).expect("the state as written restores");
    }
}
