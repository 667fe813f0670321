//! Updating aggregate: `GROUP BY` without a window (and `SELECT DISTINCT`, an aggregate without
//! aggregate calls). Its result is a changelog keyed by the group key: a new group is `+I`, a
//! changed one `-U` old / `+U` new, a group whose last row was retracted `-D`. It takes a changelog
//! too (retractions undo what their insert did), so aggregates nest.
//!
//! State is unbounded by time: a group lives until its rows are retracted. With `state_ttl` (`SET
//! 'table.exec.state.ttl' = '1 h'`, as in Flink, in processing time) a group unchanged that long is
//! forgotten without a word: its result row stays where it was written, and a later row of its key
//! starts the group afresh — the user trades exactness for bounded state.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int8Array, RecordBatch};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;

use super::acc::{AggCall, Aggregates};
use super::groups::GroupTable;
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
}
