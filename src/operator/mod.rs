//! Streaming operators: one file per operator, each owning its keyed state.
//!
//! Every edge of a query's operator graph carries [`ChangeBatch`]es: Arrow rows, with a row kind per
//! row when the edge is a changelog (Flink's `+I -U +U -D`), and the watermark each row arrived
//! under. The planner ([`crate::plan`]) decides which operators a query needs and what each edge is;
//! the runtime ([`crate::engine::query`]) pushes batches through them, one micro-batch at a time:
//!
//! 1. [`Operator::process`] for the rows that reached an operator's inputs,
//! 2. [`Operator::flush`] once every input of this micro-batch is in (early results for upsert sinks),
//! 3. [`Operator::advance`] with the query's new watermark: fire what it closes, evict what it expires.
//!
//! **Late rows.** Each row carries the watermark in force when it arrived (`ChangeBatch::wm`, see
//! [`crate::engine::query`]): a time-based operator treats a row as late for a window that ended at
//! or before it — the rule Flink applies record by record — so results do not depend on how rows are
//! cut into micro-batches. Rows an operator emits while advancing to watermark `w` carry the watermark
//! before `w`, as Flink forwards records before the watermark that produced them.

pub mod acc;
pub mod calc;
pub mod groups;
pub mod interval_join;
pub mod lookup_join;
pub mod over_agg;
pub mod partition;
pub mod session_agg;
pub mod state;
pub mod stream_join;
pub mod top_n;
pub mod union;
pub mod updating_agg;
pub mod window;
pub mod window_agg;
pub mod window_join;
pub mod window_tvf;

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int8Array, Int64Array, UInt32Array, UInt64Array};
use datafusion::arrow::compute::{concat, concat_batches, filter, filter_record_batch, take, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// The kind of a row on a changelog edge (Flink's `RowKind`, same byte values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i8)]
pub enum RowKind {
    Insert = 0,
    UpdateBefore = 1,
    UpdateAfter = 2,
    Delete = 3,
}

impl RowKind {
    pub fn from_i8(v: i8) -> RowKind {
        match v {
            1 => RowKind::UpdateBefore,
            2 => RowKind::UpdateAfter,
            3 => RowKind::Delete,
            _ => RowKind::Insert,
        }
    }

    /// `+I`, `-U`, `+U`, `-D`.
    pub fn short(self) -> &'static str {
        match self {
            RowKind::Insert => "+I",
            RowKind::UpdateBefore => "-U",
            RowKind::UpdateAfter => "+U",
            RowKind::Delete => "-D",
        }
    }

    /// Whether the row adds to the result (`+I`, `+U`) rather than retracting from it.
    pub fn is_add(self) -> bool {
        matches!(self, RowKind::Insert | RowKind::UpdateAfter)
    }
}

/// Rows on an edge of the operator graph.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    pub batch: RecordBatch,
    /// Row kinds ([`RowKind`] as `i8`); `None`: every row is an insert (append-only).
    pub ops: Option<Int8Array>,
    /// The watermark in force when each row arrived (ms); rows are late for windows ending at or
    /// before it.
    pub wm: Int64Array,
    /// Where each row came from (`source index << 32 | row` in the micro-batch's source batch), while
    /// rows are still source rows (through filters, projections and window assignment): a late row is
    /// reported as the record that arrived.
    pub origin: Option<UInt64Array>,
}

impl ChangeBatch {
    /// Inserts, all arrived under watermark `wm`.
    pub fn append(batch: RecordBatch, wm: i64) -> ChangeBatch {
        let n = batch.num_rows();
        ChangeBatch {
            batch,
            ops: None,
            wm: Int64Array::from_value(wm, n),
            origin: None,
        }
    }

    /// Rows with the given kinds, all arrived under watermark `wm`.
    pub fn changes(batch: RecordBatch, ops: Vec<RowKind>, wm: i64) -> ChangeBatch {
        let n = batch.num_rows();
        let all_inserts = ops.iter().all(|k| *k == RowKind::Insert);
        ChangeBatch {
            batch,
            ops: (!all_inserts).then(|| Int8Array::from_iter_values(ops.into_iter().map(|k| k as i8))),
            wm: Int64Array::from_value(wm, n),
            origin: None,
        }
    }

    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    pub fn kind(&self, row: usize) -> RowKind {
        match &self.ops {
            None => RowKind::Insert,
            Some(o) => RowKind::from_i8(o.value(row)),
        }
    }

    /// Whether row `row` retracts (`-U`, `-D`).
    pub fn is_retract(&self, row: usize) -> bool {
        !self.kind(row).is_add()
    }

    /// One flag per row: does it retract? `None` when nothing does.
    pub fn retractions(&self) -> Option<Vec<bool>> {
        let ops = self.ops.as_ref()?;
        let v: Vec<bool> = ops.values().iter().map(|o| *o == 1 || *o == 3).collect();
        v.iter().any(|r| *r).then_some(v)
    }

    /// The same rows with other columns (a projection).
    pub fn with_batch(&self, batch: RecordBatch) -> ChangeBatch {
        ChangeBatch {
            batch,
            ops: self.ops.clone(),
            wm: self.wm.clone(),
            origin: self.origin.clone(),
        }
    }

    pub fn filter(&self, mask: &BooleanArray) -> Result<ChangeBatch> {
        Ok(ChangeBatch {
            batch: filter_record_batch(&self.batch, mask)?,
            ops: match &self.ops {
                Some(o) => Some(as_i8(&filter(o, mask)?)?),
                None => None,
            },
            wm: as_i64(&filter(&self.wm, mask)?)?,
            origin: match &self.origin {
                Some(o) => Some(as_u64(&filter(o, mask)?)?),
                None => None,
            },
        })
    }

    pub fn take(&self, indices: &UInt32Array) -> Result<ChangeBatch> {
        Ok(ChangeBatch {
            batch: take_record_batch(&self.batch, indices)?,
            ops: match &self.ops {
                Some(o) => Some(as_i8(&take(o, indices, None)?)?),
                None => None,
            },
            wm: as_i64(&take(&self.wm, indices, None)?)?,
            origin: match &self.origin {
                Some(o) => Some(as_u64(&take(o, indices, None)?)?),
                None => None,
            },
        })
    }

    /// Concatenate batches of one schema.
    pub fn concat(schema: &SchemaRef, parts: &[ChangeBatch]) -> Result<ChangeBatch> {
        match parts {
            [] => Ok(ChangeBatch::append(RecordBatch::new_empty(schema.clone()), i64::MIN)),
            [one] => Ok(one.clone()),
            _ => {
                let batch = concat_batches(schema, parts.iter().map(|p| &p.batch))?;
                let ops = if parts.iter().all(|p| p.ops.is_none()) {
                    None
                } else {
                    let arrays: Vec<ArrayRef> = parts
                        .iter()
                        .map(|p| match &p.ops {
                            Some(o) => Arc::new(o.clone()) as ArrayRef,
                            None => Arc::new(Int8Array::from_value(0, p.num_rows())) as ArrayRef,
                        })
                        .collect();
                    let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
                    Some(as_i8(&concat(&refs)?)?)
                };
                let wms: Vec<&dyn Array> = parts.iter().map(|p| &p.wm as &dyn Array).collect();
                let origin = if parts.iter().all(|p| p.origin.is_some()) {
                    let o: Vec<&dyn Array> = parts
                        .iter()
                        .filter_map(|p| p.origin.as_ref())
                        .map(|o| o as &dyn Array)
                        .collect();
                    Some(as_u64(&concat(&o)?)?)
                } else {
                    None
                };
                Ok(ChangeBatch {
                    batch,
                    ops,
                    wm: as_i64(&concat(&wms)?)?,
                    origin,
                })
            }
        }
    }
}

fn as_i8(a: &ArrayRef) -> Result<Int8Array> {
    a.as_any()
        .downcast_ref::<Int8Array>()
        .cloned()
        .ok_or_else(|| Error::Internal("row kinds are not Int8".into()))
}

/// A batch of `schema` with these columns and `n` rows (zero columns allowed).
pub fn batch_of(schema: &SchemaRef, cols: Vec<ArrayRef>, n: usize) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        cols,
        &datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n)),
    )?)
}

/// [`batch_of`], each column cast to the schema's type where it differs (keys and aggregates come
/// back in the types their state keeps; an execution may differ in view types).
pub fn conformed_batch(schema: &SchemaRef, cols: Vec<ArrayRef>, n: usize) -> Result<RecordBatch> {
    let cols = cols
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                datafusion::arrow::compute::cast(&c, f.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    batch_of(schema, cols, n)
}

fn as_u64(a: &ArrayRef) -> Result<UInt64Array> {
    a.as_any()
        .downcast_ref::<UInt64Array>()
        .cloned()
        .ok_or_else(|| Error::Internal("row origins are not UInt64".into()))
}

fn as_i64(a: &ArrayRef) -> Result<Int64Array> {
    a.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| Error::Internal("row watermarks are not Int64".into()))
}

/// Rows an operator set aside as late, for the `_late` stream.
#[derive(Debug, Clone)]
pub struct LateRows {
    pub rows: RecordBatch,
    /// Where they came from (see [`ChangeBatch::origin`]).
    pub origin: Option<UInt64Array>,
    pub reason: String,
}

/// What operators report besides their output.
#[derive(Debug, Default)]
pub struct Context {
    /// Rows dropped as late (they go to `_late`).
    pub late: Vec<LateRows>,
    /// Early results are held back this micro-batch (`EngineConfig::early_fire_delay` has not
    /// passed since they last went out): `flush` emits none; windows that close still fire.
    pub hold_early: bool,
}

impl Context {
    /// Set rows `idx` of `input` aside as late.
    pub fn late(&mut self, input: &ChangeBatch, idx: &UInt32Array, reason: impl Into<String>) -> Result<()> {
        if idx.is_empty() {
            return Ok(());
        }
        let part = input.take(idx)?;
        self.late.push(LateRows {
            rows: part.batch,
            origin: part.origin,
            reason: reason.into(),
        });
        Ok(())
    }
}

/// A streaming operator. Inputs are numbered by port (a join has two).
pub trait Operator: Send {
    /// Rows arriving on input `port`; returns rows to send on.
    fn process(&mut self, port: usize, input: ChangeBatch, cx: &mut Context) -> Result<Vec<ChangeBatch>>;

    /// Every input of the current micro-batch has been processed: emit what an upsert sink wants
    /// now (early window results). Most operators emit as they process and return nothing.
    fn flush(&mut self, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        Ok(Vec::new())
    }

    /// The watermark advanced to `wm` (`i64::MAX`: every input ended): fire and evict.
    fn advance(&mut self, _wm: i64, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        Ok(Vec::new())
    }

    /// The oldest event time this operator still needs to see again after a restart without
    /// checkpoints (`i64::MAX`: nothing; `i64::MIN`: everything, its state is not bounded by time).
    fn low_water(&self) -> i64 {
        i64::MAX
    }

    /// Entries held in state (groups, windows, rows), for metrics.
    fn state_size(&self) -> usize {
        0
    }

    /// How many instances run this operator, each owning a range of keys ([`partition`]).
    fn instances(&self) -> usize {
        1
    }

    /// Windows ending at or before `floor` were emitted completely before a restart (without
    /// checkpoints, sources re-read rows of them): an operator that emits windows skips them.
    fn set_emit_floor(&mut self, _floor: i64) {}

    /// Everything this operator holds, for a checkpoint (see [`state`]): restored into a fresh
    /// operator of the same plan, it makes one that emits exactly what this one would. Taken
    /// between micro-batches. A stateless operator returns an empty state.
    fn snapshot(&self) -> Result<state::OpState> {
        Err(Error::plan(format!(
            "{} cannot be checkpointed yet",
            std::any::type_name::<Self>()
                .rsplit("::")
                .next()
                .unwrap_or("this operator")
        )))
    }

    /// Take the state [`Operator::snapshot`] wrote (on a fresh operator, before any input).
    fn restore(&mut self, state: state::OpState) -> Result<()> {
        if state.is_empty() {
            return Ok(());
        }
        Err(Error::plan(format!(
            "{} cannot be restored from a checkpoint yet",
            std::any::type_name::<Self>()
                .rsplit("::")
                .next()
                .unwrap_or("this operator")
        )))
    }
}

/// A batch of rows that arrived under different watermarks, split into the parts processed before
/// each of `points` fires: part `i` holds the rows whose watermark is below `points[i]` (and at or
/// above `points[i-1]`); the last part the rest. `points` must be ascending.
pub fn split_by_watermark(input: &ChangeBatch, points: &[i64]) -> Result<Vec<ChangeBatch>> {
    if points.is_empty() {
        return Ok(vec![input.clone()]);
    }
    let seg = |w: i64| points.partition_point(|p| *p <= w);
    let wms = input.wm.values();
    let first = wms.first().map(|w| seg(*w));
    if wms.iter().all(|w| Some(seg(*w)) == first) {
        let mut out: Vec<ChangeBatch> = (0..=points.len())
            .map(|_| ChangeBatch::append(RecordBatch::new_empty(input.batch.schema()), i64::MIN))
            .collect();
        out[first.unwrap_or(0)] = input.clone();
        return Ok(out);
    }
    let mut idx: Vec<Vec<u32>> = vec![Vec::new(); points.len() + 1];
    for (i, w) in wms.iter().enumerate() {
        idx[seg(*w)].push(i as u32);
    }
    idx.into_iter().map(|ix| input.take(&UInt32Array::from(ix))).collect()
}

/// Rows for operator tests: a key and an event time per row, each with its arrival watermark.
#[cfg(test)]
pub mod test_rows {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::record_batch::RecordBatch;

    use super::ChangeBatch;

    /// `k VARCHAR, t TIMESTAMP(ms)`.
    pub fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]))
    }

    pub fn rows(keys: &[&str], ts: &[i64], wms: &[i64]) -> ChangeBatch {
        let b = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(TimestampMillisecondArray::from(ts.to_vec())),
            ],
        )
        .expect("batch");
        let mut c = ChangeBatch::append(b, 0);
        c.wm = Int64Array::from(wms.to_vec());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch(vals: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vals.to_vec()))]).expect("batch")
    }

    #[test]
    fn concat_filter_and_split_keep_kinds_and_watermarks() {
        let a = ChangeBatch::append(batch(&[1, 2]), 10);
        let b = ChangeBatch::changes(batch(&[3]), vec![RowKind::Delete], 20);
        let c = ChangeBatch::concat(&a.batch.schema(), &[a, b]).expect("concat");
        assert_eq!(c.num_rows(), 3);
        assert_eq!(c.kind(2), RowKind::Delete);
        assert_eq!(c.wm.values().to_vec(), vec![10, 10, 20]);
        assert_eq!(c.retractions(), Some(vec![false, false, true]));
        let f = c.filter(&BooleanArray::from(vec![false, true, true])).expect("filter");
        assert_eq!((f.num_rows(), f.kind(1), f.wm.value(0)), (2, RowKind::Delete, 10));
        let parts = split_by_watermark(&c, &[15]).expect("split");
        assert_eq!(parts.iter().map(ChangeBatch::num_rows).collect::<Vec<_>>(), vec![2, 1]);
        let parts = split_by_watermark(&c, &[5, 50]).expect("split");
        assert_eq!(
            parts.iter().map(ChangeBatch::num_rows).collect::<Vec<_>>(),
            vec![0, 3, 0]
        );
    }
}
