//! Aggregate state by group id, updated a batch at a time.
//!
//! The common aggregates are incremental and retractable: `COUNT(*)`, `COUNT(x)`, `COUNT(DISTINCT x)`,
//! `SUM`, `AVG` (over integers, floats and decimals), `MIN`/`MAX` (any type; over a changelog a
//! multiset per group, as Flink's `MinWithRetract`). Each keeps plain vectors indexed by group id, so
//! a batch updates them in one pass. Any other DataFusion aggregate (`median`, `stddev`,
//! `string_agg`, …) runs through its own [`Accumulator`] per group; those take a changelog only if
//! DataFusion can retract them.
//!
//! `FILTER (WHERE …)` is applied before the update; `DISTINCT` is kept as a count per distinct value.
//!
//! For a checkpoint the state of chosen groups is written as Arrow columns, one row per group
//! ([`Aggregates::state_columns`], restored by [`Aggregates::restore_columns`] into other group ids
//! if need be): `rows`, then per call `a{i}_…` — `n` (COUNT), `sum`/`n` (SUM, AVG), `best` and over a
//! changelog `values`/`counts` lists (MIN/MAX), `values`/`counts` (COUNT(DISTINCT)), all values in
//! the argument's own type; a DataFusion accumulator writes `present` and its
//! [`Accumulator::state`] as `state0`, `state1`, … and is restored with `merge_batch`. Since
//! `state()` may consume the accumulator, a checkpoint rebuilds it from the state it wrote: it and a
//! copy restored from that state go on exactly alike (a floating-point aggregate such as `stddev`
//! may round its last bits differently from one never checkpointed, as DataFusion's own merges do).

use std::any::Any;
use std::collections::BTreeMap;

use datafusion::common::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array, ListArray, UInt32Array,
    UInt64Array, new_null_array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::{cast, concat, filter, take};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Field, Float64Type, Int64Type, UInt64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use super::state;
use crate::error::{Error, Result};

/// What an aggregate call computes.
#[derive(Debug, Clone)]
pub enum AggKind {
    CountStar,
    Count,
    Sum,
    Avg,
    Min,
    Max,
    /// Any other DataFusion aggregate, through its own accumulator per group.
    Generic(Arc<AggregateFunctionExpr>),
}

/// One aggregate call of a query, compiled against its input.
#[derive(Debug, Clone)]
pub struct AggCall {
    /// As the user wrote it (for EXPLAIN and errors).
    pub display: String,
    pub kind: AggKind,
    pub args: Vec<Arc<dyn PhysicalExpr>>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    pub distinct: bool,
    /// The type DataFusion gives the result (the output column's type).
    pub return_type: DataType,
}

impl AggCall {
    /// Whether this call can take retractions (a changelog input).
    pub fn retractable(&self) -> bool {
        match &self.kind {
            AggKind::Generic(f) => !self.distinct && f.create_accumulator().is_ok_and(|a| a.supports_retract_batch()),
            AggKind::Sum | AggKind::Avg => !self.distinct && incremental_sum_type(&self.return_type),
            _ => true,
        }
    }

    /// Whether this call has a state that can be merged without consuming it (panes of HOP and
    /// CUMULATE windows are merged into several windows).
    pub fn mergeable_repeatedly(&self) -> bool {
        !matches!(self.kind, AggKind::Generic(_))
            && !(matches!(self.kind, AggKind::Sum | AggKind::Avg)
                && (self.distinct || !incremental_sum_type(&self.return_type)))
    }

    fn new_acc(&self) -> Result<Box<dyn Acc>> {
        let kind = if self.distinct {
            match self.kind {
                AggKind::Count => return Ok(Box::new(CountDistinct::default())),
                // MIN/MAX of the distinct values are MIN/MAX.
                AggKind::Min | AggKind::Max => self.kind.clone(),
                _ => return Ok(Box::new(Generic::new(self)?)),
            }
        } else {
            self.kind.clone()
        };
        Ok(match kind {
            AggKind::CountStar | AggKind::Count => Box::new(Count::default()),
            AggKind::Sum | AggKind::Avg if !incremental_sum_type(&self.return_type) => Box::new(Generic::new(self)?),
            AggKind::Sum => Box::new(Sum::new(&self.return_type)),
            AggKind::Avg => Box::new(Avg::default()),
            AggKind::Min => Box::new(MinMax::new(true, &self.return_type)),
            AggKind::Max => Box::new(MinMax::new(false, &self.return_type)),
            AggKind::Generic(_) => Box::new(Generic::new(self)?),
        })
    }
}

/// SUM/AVG kept incrementally for these result types; others go through DataFusion's accumulator.
fn incremental_sum_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int64 | DataType::UInt64 | DataType::Float64 | DataType::Decimal128(_, _)
    )
}

/// Aggregate state of one aggregate call, by group id.
pub trait Acc: Send {
    /// Add (or, where `retract[i]`, remove) row `i` of `args` to group `gids[i]`. `capacity` is the
    /// number of group ids in use (state grows to it).
    fn update(&mut self, args: &[ArrayRef], gids: &[u32], retract: Option<&[bool]>, capacity: usize) -> Result<()>;
    /// Merge group `src` of `other` (the same kind of state) into group `dst`.
    fn merge_from(&mut self, dst: u32, other: &mut dyn Acc, src: u32, capacity: usize) -> Result<()>;
    /// Merge group `src` into group `dst` of this same state (sessions that merge); `src` is left
    /// to be reset.
    fn merge_within(&mut self, dst: u32, src: u32) -> Result<()>;
    /// The values of the given groups.
    fn evaluate(&mut self, gids: &[u32], return_type: &DataType) -> Result<ArrayRef>;
    /// Forget a group (its id may be reused).
    fn reset(&mut self, gid: u32);
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// The state of the given groups as named columns, one row per group (for a checkpoint).
    fn state_columns(&self, gids: &[u32]) -> Result<Vec<(String, ArrayRef)>>;
    /// Set groups `gids` (row `i` of `cols` → `gids[i]`) to the state [`Acc::state_columns`] wrote.
    fn restore_columns(&mut self, gids: &[u32], cols: &StateColumns<'_>) -> Result<()>;
}

/// The columns of one aggregate call in a state table (named `a{call}_{column}`), read with the
/// types checked.
pub struct StateColumns<'a> {
    table: &'a RecordBatch,
    prefix: String,
}

impl<'a> StateColumns<'a> {
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Column `name` as `T`, without NULLs.
    fn get<T: Array + 'static>(&self, name: &str) -> Result<&'a T> {
        let full = self.name(name);
        let c = state::column::<T>(self.table, &full)?;
        if c.null_count() > 0 {
            return Err(Error::Internal(format!("state column '{full}' has NULLs")));
        }
        Ok(c)
    }

    /// Column `name`, any type.
    fn array(&self, name: &str) -> Result<&'a ArrayRef> {
        let full = self.name(name);
        self.table
            .column_by_name(&full)
            .ok_or_else(|| Error::Internal(format!("state table has no column '{full}'")))
    }

    /// List column `name`: per row, the range of its flat values.
    fn list(&self, name: &str) -> Result<&'a ListArray> {
        self.get::<ListArray>(name)
    }
}

/// A list column: one list per group, `lens[i]` values of the flat `values` each.
fn list_column(values: ArrayRef, lens: impl IntoIterator<Item = usize>) -> ArrayRef {
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    Arc::new(ListArray::new(field, OffsetBuffer::from_lengths(lens), values, None))
}

/// The size a state vector must have for groups `gids`.
fn capacity_of(gids: &[u32]) -> usize {
    gids.iter().map(|g| *g as usize + 1).max().unwrap_or(0)
}

/// An error while checkpointing or restoring `what` (an internal error: the state is ours).
fn context(e: Error, what: String) -> Error {
    match e {
        Error::Internal(m) => Error::Internal(format!("{what}: {m}")),
        e => Error::Internal(format!("{what}: {e}")),
    }
}

fn named(cols: Vec<(&str, ArrayRef)>) -> Vec<(String, ArrayRef)> {
    cols.into_iter().map(|(n, a)| (n.to_string(), a)).collect()
}

fn grow<T: Clone>(v: &mut Vec<T>, capacity: usize, fill: T) {
    if v.len() < capacity {
        v.resize(capacity, fill);
    }
}

fn downcast<T: 'static>(other: &mut dyn Acc) -> Result<&mut T> {
    other
        .as_any_mut()
        .downcast_mut::<T>()
        .ok_or_else(|| Error::Internal("merging aggregate states of different kinds".into()))
}

fn sign(retract: Option<&[bool]>, i: usize) -> i64 {
    if retract.is_some_and(|r| r[i]) { -1 } else { 1 }
}

fn conform(a: ArrayRef, t: &DataType) -> Result<ArrayRef> {
    if a.data_type() == t { Ok(a) } else { Ok(cast(&a, t)?) }
}

/// COUNT(*) and COUNT(x) (NULLs of `x` are not counted; COUNT(*) gets no argument).
#[derive(Default)]
struct Count {
    n: Vec<i64>,
}

impl Acc for Count {
    fn update(&mut self, args: &[ArrayRef], gids: &[u32], retract: Option<&[bool]>, capacity: usize) -> Result<()> {
        grow(&mut self.n, capacity, 0);
        let nulls = args.first().and_then(|a| a.logical_nulls());
        for (i, g) in gids.iter().enumerate() {
            if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                continue;
            }
            self.n[*g as usize] += sign(retract, i);
        }
        Ok(())
    }

    fn merge_from(&mut self, dst: u32, other: &mut dyn Acc, src: u32, capacity: usize) -> Result<()> {
        grow(&mut self.n, capacity, 0);
        let o = downcast::<Count>(other)?;
        self.n[dst as usize] += o.n.get(src as usize).copied().unwrap_or(0);
        Ok(())
    }

    fn merge_within(&mut self, dst: u32, src: u32) -> Result<()> {
        let v = self.n.get(src as usize).copied().unwrap_or(0);
        grow(&mut self.n, dst as usize + 1, 0);
        self.n[dst as usize] += v;
        Ok(())
    }

    fn evaluate(&mut self, gids: &[u32], t: &DataType) -> Result<ArrayRef> {
        let a = Int64Array::from_iter_values(gids.iter().map(|g| self.n.get(*g as usize).copied().unwrap_or(0)));
        conform(Arc::new(a), t)
    }

    fn reset(&mut self, gid: u32) {
        if let Some(n) = self.n.get_mut(gid as usize) {
            *n = 0;
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn state_columns(&self, gids: &[u32]) -> Result<Vec<(String, ArrayRef)>> {
        let n = Int64Array::from_iter_values(gids.iter().map(|g| self.n.get(*g as usize).copied().unwrap_or(0)));
        Ok(named(vec![("n", Arc::new(n))]))
    }

    fn restore_columns(&mut self, gids: &[u32], cols: &StateColumns<'_>) -> Result<()> {
        let n = cols.get::<Int64Array>("n")?;
        grow(&mut self.n, capacity_of(gids), 0);
        for (i, g) in gids.iter().enumerate() {
            self.n[*g as usize] = n.value(i);
        }
        Ok(())
    }
}

/// Sums by result type; a count of non-NULL values per group makes an empty sum NULL.
enum SumVals {
    I64(Vec<i64>),
    U64(Vec<u64>),
    F64(Vec<f64>),
    D128(Vec<i128>),
}

struct Sum {
    vals: SumVals,
    n: Vec<i64>,
}

impl Sum {
    fn new(t: &DataType) -> Sum {
        Sum {
            vals: match t {
                DataType::UInt64 => SumVals::U64(Vec::new()),
                DataType::Float64 => SumVals::F64(Vec::new()),
                DataType::Decimal128(_, _) => SumVals::D128(Vec::new()),
                _ => SumVals::I64(Vec::new()),
            },
            n: Vec::new(),
        }
    }

    fn grow(&mut self, capacity: usize) {
        grow(&mut self.n, capacity, 0);
        match &mut self.vals {
            SumVals::I64(v) => grow(v, capacity, 0),
            SumVals::U64(v) => grow(v, capacity, 0),
            SumVals::F64(v) => grow(v, capacity, 0.0),
            SumVals::D128(v) => grow(v, capacity, 0),
        }
    }
}

impl Acc for Sum {
    fn update(&mut self, args: &[ArrayRef], gids: &[u32], retract: Option<&[bool]>, capacity: usize) -> Result<()> {
        self.grow(capacity);
        let arg = args
            .first()
            .ok_or_else(|| Error::Internal("SUM without an argument".into()))?;
        match &mut self.vals {
            SumVals::I64(v) => {
                let a = cast(arg, &DataType::Int64)?;
                let a = a.as_primitive::<Int64Type>();
                for (i, g) in gids.iter().enumerate() {
                    if a.is_valid(i) {
                        let s = sign(retract, i);
                        v[*g as usize] = v[*g as usize].wrapping_add(a.value(i).wrapping_mul(s));
                        self.n[*g as usize] += s;
                    }
                }
            }
            SumVals::U64(v) => {
                let a = cast(arg, &DataType::UInt64)?;
                let a = a.as_primitive::<UInt64Type>();
                for (i, g) in gids.iter().enumerate() {
                    if a.is_valid(i) {
                        let s = sign(retract, i);
                        let x = &mut v[*g as usize];
                        *x = if s > 0 {
                            x.wrapping_add(a.value(i))
                        } else {
                            x.wrapping_sub(a.value(i))
                        };
                        self.n[*g as usize] += s;
                    }
                }
            }
            SumVals::F64(v) => {
                let a = cast(arg, &DataType::Float64)?;
                let a = a.as_primitive::<Float64Type>();
                for (i, g) in gids.iter().enumerate() {
                    if a.is_valid(i) {
                        let s = sign(retract, i);
                        v[*g as usize] += a.value(i) * s as f64;
                        self.n[*g as usize] += s;
                    }
                }
            }
            SumVals::D128(v) => {
                let a = arg
                    .as_primitive_opt::<Decimal128Type>()
                    .ok_or_else(|| Error::Internal(format!("SUM over {} into a decimal", arg.data_type())))?;
                for (i, g) in gids.iter().enumerate() {
                    if a.is_valid(i) {
                        let s = sign(retract, i);
                        v[*g as usize] = v[*g as usize].wrapping_add(a.value(i).wrapping_mul(s as i128));
                        self.n[*g as usize] += s;
                    }
                }
            }
        }
        Ok(())
    }

    fn merge_from(&mut self, dst: u32, other: &mut dyn Acc, src: u32, capacity: usize) -> Result<()> {
        self.grow(capacity);
        let o = downcast::<Sum>(other)?;
        let (d, s) = (dst as usize, src as usize);
        if s >= o.n.len() {
            return Ok(());
        }
        self.n[d] += o.n[s];
        match (&mut self.vals, &o.vals) {
            (SumVals::I64(a), SumVals::I64(b)) => a[d] = a[d].wrapping_add(b[s]),
            (SumVals::U64(a), SumVals::U64(b)) => a[d] = a[d].wrapping_add(b[s]),
            (SumVals::F64(a), SumVals::F64(b)) => a[d] += b[s],
            (SumVals::D128(a), SumVals::D128(b)) => a[d] = a[d].wrapping_add(b[s]),
            _ => return Err(Error::Internal("merging sums of different types".into())),
        }
        Ok(())
    }

    fn merge_within(&mut self, dst: u32, src: u32) -> Result<()> {
        let (d, s) = (dst as usize, src as usize);
        self.grow(d.max(s) + 1);
        self.n[d] += self.n[s];
        match &mut self.vals {
            SumVals::I64(v) => v[d] = v[d].wrapping_add(v[s]),
            SumVals::U64(v) => v[d] = v[d].wrapping_add(v[s]),
            SumVals::F64(v) => v[d] += v[s],
            SumVals::D128(v) => v[d] = v[d].wrapping_add(v[s]),
        }
        Ok(())
    }

    fn evaluate(&mut self, gids: &[u32], t: &DataType) -> Result<ArrayRef> {
        let live = |g: &u32| self.n.get(*g as usize).is_some_and(|n| *n > 0);
        let a: ArrayRef = match &self.vals {
            SumVals::I64(v) => Arc::new(Int64Array::from_iter(
                gids.iter().map(|g| live(g).then(|| v[*g as usize])),
            )),
            SumVals::U64(v) => Arc::new(UInt64Array::from_iter(
                gids.iter().map(|g| live(g).then(|| v[*g as usize])),
            )),
            SumVals::F64(v) => Arc::new(Float64Array::from_iter(
                gids.iter().map(|g| live(g).then(|| v[*g as usize])),
            )),
            SumVals::D128(v) => {
                let DataType::Decimal128(p, s) = t else {
                    return Err(Error::Internal(format!("decimal SUM typed {t}")));
                };
                Arc::new(
                    Decimal128Array::from_iter(gids.iter().map(|g| live(g).then(|| v[*g as usize])))
                        .with_precision_and_scale(*p, *s)?,
                )
            }
        };
        conform(a, t)
    }

    fn reset(&mut self, gid: u32) {
        let g = gid as usize;
        if g < self.n.len() {
            self.n[g] = 0;
            match &mut self.vals {
                SumVals::I64(v) => v[g] = 0,
                SumVals::U64(v) => v[g] = 0,
                SumVals::F64(v) => v[g] = 0.0,
                SumVals::D128(v) => v[g] = 0,
            }
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn state_columns(&self, gids: &[u32]) -> Result<Vec<(String, ArrayRef)>> {
        fn at<T: Copy + Default>(v: &[T], g: &u32) -> T {
            v.get(*g as usize).copied().unwrap_or_default()
        }
        let sum: ArrayRef = match &self.vals {
            SumVals::I64(v) => Arc::new(Int64Array::from_iter_values(gids.iter().map(|g| at(v, g)))),
            SumVals::U64(v) => Arc::new(UInt64Array::from_iter_values(gids.iter().map(|g| at(v, g)))),
            SumVals::F64(v) => Arc::new(Float64Array::from_iter_values(gids.iter().map(|g| at(v, g)))),
            // Unscaled: the sum's digits, whatever the result's scale.
            SumVals::D128(v) => Arc::new(
                Decimal128Array::from_iter_values(gids.iter().map(|g| at(v, g))).with_precision_and_scale(38, 0)?,
            ),
        };
        let n = Int64Array::from_iter_values(gids.iter().map(|g| at(&self.n, g)));
        Ok(named(vec![("sum", sum), ("n", Arc::new(n))]))
    }

    fn restore_columns(&mut self, gids: &[u32], cols: &StateColumns<'_>) -> Result<()> {
        let n = cols.get::<Int64Array>("n")?;
        self.grow(capacity_of(gids));
        match &mut self.vals {
            SumVals::I64(v) => {
                let s = cols.get::<Int64Array>("sum")?;
                for (i, g) in gids.iter().enumerate() {
                    v[*g as usize] = s.value(i);
                }
            }
            SumVals::U64(v) => {
                let s = cols.get::<UInt64Array>("sum")?;
                for (i, g) in gids.iter().enumerate() {
                    v[*g as usize] = s.value(i);
                }
            }
            SumVals::F64(v) => {
                let s = cols.get::<Float64Array>("sum")?;
                for (i, g) in gids.iter().enumerate() {
                    v[*g as usize] = s.value(i);
                }
            }
            SumVals::D128(v) => {
                let s = cols.get::<Decimal128Array>("sum")?;
                for (i, g) in gids.iter().enumerate() {
                    v[*g as usize] = s.value(i);
                }
            }
        }
        for (i, g) in gids.iter().enumerate() {
            self.n[*g as usize] = n.value(i);
        }
        Ok(())
    }
}

/// AVG over integers and floats (a DOUBLE result): sum and count.
#[derive(Default)]
struct Avg {
    sum: Vec<f64>,
    n: Vec<i64>,
}

impl Acc for Avg {
    fn update(&mut self, args: &[ArrayRef], gids: &[u32], retract: Option<&[bool]>, capacity: usize) -> Result<()> {
        grow(&mut self.sum, capacity, 0.0);
        grow(&mut self.n, capacity, 0);
        let arg = args
            .first()
            .ok_or_else(|| Error::Internal("AVG without an argument".into()))?;
        let a = cast(arg, &DataType::Float64)?;
        let a = a.as_primitive::<Float64Type>();
        for (i, g) in gids.iter().enumerate() {
            if a.is_valid(i) {
                let s = sign(retract, i);
                self.sum[*g as usize] += a.value(i) * s as f64;
                self.n[*g as usize] += s;
            }
        }
        Ok(())
    }

    fn merge_from(&mut self, dst: u32, other: &mut dyn Acc, src: u32, capacity: usize) -> Result<()> {
        grow(&mut self.sum, capacity, 0.0);
        grow(&mut self.n, capacity, 0);
        let o = downcast::<Avg>(other)?;
        if let (Some(s), Some(n)) = (o.sum.get(src as usize), o.n.get(src as usize)) {
            self.sum[dst as usize] += s;
            self.n[dst as usize] += n;
        }
        Ok(())
    }

    fn merge_within(&mut self, dst: u32, src: u32) -> Result<()> {
        let (d, s) = (dst as usize, src as usize);
        grow(&mut self.sum, d.max(s) + 1, 0.0);
        grow(&mut self.n, d.max(s) + 1, 0);
        self.sum[d] += self.sum[s];
        self.n[d] += self.n[s];
        Ok(())
    }

    fn evaluate(&mut self, gids: &[u32], t: &DataType) -> Result<ArrayRef> {
        let a = Float64Array::from_iter(gids.iter().map(|g| {
            let g = *g as usize;
            match self.n.get(g) {
                Some(n) if *n > 0 => Some(self.sum[g] / *n as f64),
                _ => None,
            }
        }));
        conform(Arc::new(a), t)
    }

    fn reset(&mut self, gid: u32) {
        if let Some(n) = self.n.get_mut(gid as usize) {
            *n = 0;
            self.sum[gid as usize] = 0.0;
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn state_columns(&self, gids: &[u32]) -> Result<Vec<(String, ArrayRef)>> {
        let sum =
            Float64Array::from_iter_values(gids.iter().map(|g| self.sum.get(*g as usize).copied().unwrap_or(0.0)));
        let n = Int64Array::from_iter_values(gids.iter().map(|g| self.n.get(*g as usize).copied().unwrap_or(0)));
        Ok(named(vec![("sum", Arc::new(sum)), ("n", Arc::new(n))]))
    }

    fn restore_columns(&mut self, gids: &[u32], cols: &StateColumns<'_>) -> Result<()> {
        let sum = cols.get::<Float64Array>("sum")?;
        let n = cols.get::<Int64Array>("n")?;
        grow(&mut self.sum, capacity_of(gids), 0.0);
        grow(&mut self.n, capacity_of(gids), 0);
        for (i, g) in gids.iter().enumerate() {
            self.sum[*g as usize] = sum.value(i);
            self.n[*g as usize] = n.value(i);
        }
        Ok(())
    }
}

/// A single column's values in Arrow's row format, whose bytes sort as the values do.
#[derive(Default)]
struct ValueRows {
    converter: Option<RowConverter>,
    data_type: Option<DataType>,
}

impl ValueRows {
    fn rows(&mut self, a: &ArrayRef) -> Result<datafusion::arrow::row::Rows> {
        if self.converter.is_none() {
            self.converter = Some(RowConverter::new(vec![SortField::new(a.data_type().clone())])?);
            self.data_type = Some(a.data_type().clone());
        }
        let c = self
            .converter
            .as_ref()
            .ok_or_else(|| Error::Internal("row converter".into()))?;
        Ok(c.convert_columns(std::slice::from_ref(a))?)
    }

    /// The values' type (`Null` before any value was seen): the type their state columns have.
    fn state_type(&self) -> DataType {
        self.data_type.clone().unwrap_or(DataType::Null)
    }

    /// Values (row bytes, `None` for NULL) as an array of [`ValueRows::state_type`].
    fn state_values<'a>(&self, keys: impl Iterator<Item = Option<&'a [u8]>>) -> Result<ArrayRef> {
        self.values(keys, &self.state_type())
    }

    /// Restoring: the values' type as state column `what` has it (`Null`: none seen yet). The type
    /// comes with the state (a fresh aggregate learns it from its first values); the columns of
    /// one aggregate must agree on it.
    fn restore_type(&mut self, t: &DataType, what: &str) -> Result<()> {
        match &self.data_type {
            _ if *t == DataType::Null => Ok(()),
            None => {
                self.converter = Some(RowConverter::new(vec![SortField::new(t.clone())])?);
                self.data_type = Some(t.clone());
                Ok(())
            }
            Some(have) if have == t => Ok(()),
            Some(have) => Err(Error::Internal(format!(
                "state column '{what}' has values of type {t}, this aggregate's are {have}"
            ))),
        }
    }

    /// Restoring: the row bytes of values read from a state column (of the restored type).
    fn restore_rows(&self, a: &ArrayRef, what: &str) -> Result<datafusion::arrow::row::Rows> {
        let Some(c) = &self.converter else {
            return Err(Error::Internal(format!(
                "state column '{what}' has values but no value type"
            )));
        };
        c.convert_columns(std::slice::from_ref(a))
            .map_err(|e| Error::Internal(format!("state column '{what}': {e}")))
    }

    fn values<'a>(&self, keys: impl Iterator<Item = Option<&'a [u8]>>, t: &DataType) -> Result<ArrayRef> {
        let keys: Vec<Option<&[u8]>> = keys.collect();
        let Some(c) = &self.converter else {
            return Ok(new_null_array(t, keys.len()));
        };
        let parser = c.parser();
        // Rows for present values; NULLs filled in by position afterwards.
        let present: Vec<_> = keys.iter().flatten().map(|k| parser.parse(k)).collect();
        let vals = c.convert_rows(present)?.remove(0);
        if keys.iter().all(Option::is_some) {
            return conform(vals, t);
        }
        let mut at = 0u32;
        let idx: UInt32Array = keys
            .iter()
            .map(|k| {
                k.map(|_| {
                    at += 1;
                    at - 1
                })
            })
            .collect();
        conform(take(&vals, &idx, None)?, t)
    }
}

/// A count per value per group as two list columns, `values` (of the values' type) and `counts`.
fn multiset_columns<'a, M, K>(
    rows: &ValueRows,
    sets: impl Iterator<Item = Option<M>>,
) -> Result<Vec<(String, ArrayRef)>>
where
    M: IntoIterator<Item = (&'a K, &'a i64)>,
    K: AsRef<[u8]> + 'a + ?Sized,
{
    let mut keys: Vec<Option<&[u8]>> = Vec::new();
    let mut counts: Vec<i64> = Vec::new();
    let mut lens: Vec<usize> = Vec::new();
    for set in sets {
        let before = counts.len();
        for (k, n) in set.into_iter().flatten() {
            keys.push(Some(k.as_ref()));
            counts.push(*n);
        }
        lens.push(counts.len() - before);
    }
    Ok(multiset_state(rows.state_values(keys.into_iter())?, counts, lens))
}

/// The `values`/`counts` list columns of per-group multisets: `lens[g]` of the flat values and
/// counts each.
fn multiset_state(values: ArrayRef, counts: Vec<i64>, lens: Vec<usize>) -> Vec<(String, ArrayRef)> {
    named(vec![
        ("values", list_column(values, lens.iter().copied())),
        ("counts", list_column(Arc::new(Int64Array::from(counts)), lens)),
    ])
}

/// Read back what [`multiset_state`] wrote: the `values` lists and the flat counts, checked to
/// pair up.
fn multiset_lists<'a>(cols: &StateColumns<'a>) -> Result<(&'a ListArray, &'a Int64Array)> {
    let values = cols.list("values")?;
    let counts = cols.list("counts")?;
    if values.value_offsets() != counts.value_offsets() {
        return Err(Error::Internal(format!(
            "state columns '{}' and '{}' do not pair up",
            cols.name("values"),
            cols.name("counts")
        )));
    }
    let n = counts
        .values()
        .as_any()
        .downcast_ref::<Int64Array>()
        .filter(|n| n.null_count() == 0)
        .ok_or_else(|| {
            Error::Internal(format!(
                "state column '{}' is not a list of counts",
                cols.name("counts")
            ))
        })?;
    Ok((values, n))
}

/// (value bytes, count) pairs of one group.
type Counted = Vec<(Box<[u8]>, i64)>;

/// Read what [`multiset_columns`] wrote: per row, (value bytes, count) pairs.
fn restore_multisets(rows: &mut ValueRows, cols: &StateColumns<'_>) -> Result<Vec<Counted>> {
    let (values, n) = multiset_lists(cols)?;
    let flat = values.values();
    rows.restore_type(flat.data_type(), &cols.name("values"))?;
    let bytes = if flat.is_empty() {
        None
    } else {
        Some(rows.restore_rows(flat, &cols.name("values"))?)
    };
    let offsets = values.value_offsets();
    let mut out = Vec::with_capacity(values.len());
    for w in offsets.windows(2) {
        let (a, b) = (w[0] as usize, w[1] as usize);
        let mut set = Vec::with_capacity(b - a);
        if let Some(r) = &bytes {
            for j in a..b {
                set.push((r.row(j).as_ref().into(), n.value(j)));
            }
        }
        out.push(set);
    }
    Ok(out)
}

/// Whether values of type `t` (a MIN/MAX argument's, read from a state) can have a result of type
/// `result`: the same type, up to dictionary encoding and string or binary layouts (`Null`: no
/// value seen).
fn value_fits(t: &DataType, result: &DataType) -> bool {
    use DataType::*;
    let t = match t {
        Dictionary(_, v) => v.as_ref(),
        t => t,
    };
    let strings = |t: &DataType| matches!(t, Utf8 | LargeUtf8 | Utf8View);
    let binaries = |t: &DataType| matches!(t, Binary | LargeBinary | BinaryView);
    *t == Null || t == result || (strings(t) && strings(result)) || (binaries(t) && binaries(result))
}

/// MIN/MAX of any type: the extreme value's row bytes per group, or, once a retraction is seen, a
/// count per value so the next extreme is known.
struct MinMax {
    min: bool,
    /// The result's type (a restored value type must fit it).
    return_type: DataType,
    rows: ValueRows,
    best: Vec<Option<Box<[u8]>>>,
    /// Per group, a count per value (kept from the first retraction on; `None` until then).
    multiset: Option<Vec<BTreeMap<Box<[u8]>, i64>>>,
}

impl MinMax {
    fn new(min: bool, return_type: &DataType) -> MinMax {
        MinMax {
            min,
            return_type: return_type.clone(),
            rows: ValueRows {
                converter: None,
                data_type: None,
            },
            best: Vec::new(),
            multiset: None,
        }
    }

    fn better(&self, a: &[u8], b: &[u8]) -> bool {
        if self.min { a < b } else { a > b }
    }
}

fn extreme(min: bool, m: &BTreeMap<Box<[u8]>, i64>) -> Option<Box<[u8]>> {
    let k = if min { m.keys().next() } else { m.keys().next_back() };
    k.cloned()
}

impl Acc for MinMax {
    fn update(&mut self, args: &[ArrayRef], gids: &[u32], retract: Option<&[bool]>, capacity: usize) -> Result<()> {
        grow(&mut self.best, capacity, None);
        if let Some(m) = &mut self.multiset {
            grow(m, capacity, BTreeMap::new());
        }
        let arg = args
            .first()
            .ok_or_else(|| Error::Internal("MIN/MAX without an argument".into()))?;
        let rows = self.rows.rows(arg)?;
        if retract.is_some() && self.multiset.is_none() {
            return Err(Error::Internal(
                "MIN/MAX got a retraction without being planned for a changelog".into(),
            ));
        }
        for (i, g) in gids.iter().enumerate() {
            if arg.is_null(i) {
                continue;
            }
            let v = rows.row(i);
            let g = *g as usize;
            if let Some(m) = &mut self.multiset {
                let e = m[g].entry(v.as_ref().into()).or_insert(0);
                *e += sign(retract, i);
                if *e == 0 {
                    m[g].remove(v.as_ref());
                }
                continue;
            }
            let replace = match &self.best[g] {
                None => true,
                Some(b) => self.better(v.as_ref(), b),
            };
            if replace {
                self.best[g] = Some(v.as_ref().into());
            }
        }
        if let Some(m) = &self.multiset {
            let touched: Vec<usize> = gids.iter().map(|g| *g as usize).collect();
            for g in touched {
                self.best[g] = extreme(self.min, &m[g]);
            }
        }
        Ok(())
    }

    fn merge_from(&mut self, dst: u32, other: &mut dyn Acc, src: u32, capacity: usize) -> Result<()> {
        grow(&mut self.best, capacity, None);
        let o = downcast::<MinMax>(other)?;
        if self.rows.converter.is_none()
            && let Some(t) = &o.rows.data_type
        {
            self.rows.converter = Some(RowConverter::new(vec![SortField::new(t.clone())])?);
            self.rows.data_type = Some(t.clone());
        }
        if let (Some(mine), Some(theirs)) = (&mut self.multiset, &o.multiset) {
            grow(mine, capacity, BTreeMap::new());
            if let Some(t) = theirs.get(src as usize) {
                for (k, n) in t {
                    *mine[dst as usize].entry(k.clone()).or_insert(0) += n;
                }
            }
            self.best[dst as usize] = extreme(self.min, &mine[dst as usize]);
            return Ok(());
        }
        if let Some(Some(v)) = o.best.get(src as usize) {
            let replace = match &self.best[dst as usize] {
                None => true,
                Some(b) => self.better(v, b),
            };
            if replace {
                self.best[dst as usize] = Some(v.clone());
            }
        }
        Ok(())
    }

    fn merge_within(&mut self, dst: u32, src: u32) -> Result<()> {
        let (d, s) = (dst as usize, src as usize);
        grow(&mut self.best, d.max(s) + 1, None);
        if let Some(m) = &mut self.multiset {
            grow(m, d.max(s) + 1, BTreeMap::new());
            let theirs = std::mem::take(&mut m[s]);
            for (k, n) in theirs {
                *m[d].entry(k).or_insert(0) += n;
            }
            self.best[d] = extreme(self.min, &m[d]);
            return Ok(());
        }
        if let Some(v) = self.best[s].clone() {
            let replace = match &self.best[d] {
                None => true,
                Some(b) => self.better(&v, b),
            };
            if replace {
                self.best[d] = Some(v);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, gids: &[u32], t: &DataType) -> Result<ArrayRef> {
        self.rows.values(
            gids.iter()
                .map(|g| self.best.get(*g as usize).and_then(|b| b.as_deref())),
            t,
        )
    }

    fn reset(&mut self, gid: u32) {
        if let Some(b) = self.best.get_mut(gid as usize) {
            *b = None;
        }
        if let Some(m) = self.multiset.as_mut().and_then(|m| m.get_mut(gid as usize)) {
            m.clear();
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    /// `best` (the extreme value, of the argument's type; `Null` typed before any value), and over
    /// a changelog the multiset as `values`/`counts` lists.
    fn state_columns(&self, gids: &[u32]) -> Result<Vec<(String, ArrayRef)>> {
        let best = self.rows.state_values(
            gids.iter()
                .map(|g| self.best.get(*g as usize).and_then(|b| b.as_deref())),
        )?;
        let mut cols = named(vec![("best", best)]);
        if let Some(m) = &self.multiset {
            cols.extend(multiset_columns(&self.rows, gids.iter().map(|g| m.get(*g as usize)))?);
        }
        Ok(cols)
    }

    fn restore_columns(&mut self, gids: &[u32], cols: &StateColumns<'_>) -> Result<()> {
        let best = cols.array("best")?;
        if !value_fits(best.data_type(), &self.return_type) {
            return Err(Error::Internal(format!(
                "state column '{}' has type {}, not that of a {} value",
                cols.name("best"),
                best.data_type(),
                self.return_type
            )));
        }
        self.rows.restore_type(best.data_type(), &cols.name("best"))?;
        let cap = capacity_of(gids);
        grow(&mut self.best, cap, None);
        if best.data_type() != &DataType::Null {
            let rows = self.rows.restore_rows(best, &cols.name("best"))?;
            for (i, g) in gids.iter().enumerate() {
                self.best[*g as usize] = best.is_valid(i).then(|| rows.row(i).as_ref().into());
            }
        } else {
            for g in gids {
                self.best[*g as usize] = None;
            }
        }
        if self.multiset.is_some() {
            let sets = restore_multisets(&mut self.rows, cols)?;
            if let Some(m) = &mut self.multiset {
                grow(m, cap, BTreeMap::new());
                for (g, set) in gids.iter().zip(sets) {
                    m[*g as usize] = set.into_iter().collect();
                }
            }
        }
        Ok(())
    }
}

/// A value's row bytes as a hash key: inline when short (numbers, dates, short strings), so counting
/// distinct values allocates nothing per value. Hashes and compares as the bytes (`[u8]`).
#[derive(Clone)]
enum ValueKey {
    Inline { len: u8, bytes: [u8; ValueKey::INLINE] },
    Heap(Box<[u8]>),
}

impl ValueKey {
    const INLINE: usize = 22;
}

impl From<&[u8]> for ValueKey {
    fn from(b: &[u8]) -> ValueKey {
        if b.len() <= ValueKey::INLINE {
            let mut bytes = [0; ValueKey::INLINE];
            bytes[..b.len()].copy_from_slice(b);
            ValueKey::Inline {
                len: b.len() as u8,
                bytes,
            }
        } else {
            ValueKey::Heap(b.into())
        }
    }
}

impl AsRef<[u8]> for ValueKey {
    fn as_ref(&self) -> &[u8] {
        match self {
            ValueKey::Inline { len, bytes } => &bytes[..*len as usize],
            ValueKey::Heap(b) => b,
        }
    }
}

impl std::borrow::Borrow<[u8]> for ValueKey {
    fn borrow(&self) -> &[u8] {
        self.as_ref()
    }
}

impl std::hash::Hash for ValueKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state)
    }
}

impl PartialEq for ValueKey {
    fn eq(&self, other: &ValueKey) -> bool {
        match (self, other) {
            // Fixed-size compare (the bytes past `len` are zero).
            (ValueKey::Inline { len: a, bytes: x }, ValueKey::Inline { len: b, bytes: y }) => a == b && x == y,
            _ => self.as_ref() == other.as_ref(),
        }
    }
}

impl Eq for ValueKey {}

/// COUNT(DISTINCT x): a count per distinct value per group (so retractions work). BIGINT values
/// (the usual `COUNT(DISTINCT user_id)`) are counted by value; others by their row bytes.
#[derive(Default)]
struct CountDistinct {
    rows: ValueRows,
    sets: DistinctSets,
}

/// The per-group multisets of a [`CountDistinct`], in the form its values call for (decided by
/// the first values it sees or restores).
#[derive(Default)]
enum DistinctSets {
    #[default]
    Unknown,
    /// BIGINT: no row conversion, and keys that hash and compare as one word.
    Ints(Vec<HashMap<i64, i64>>),
    /// Any other type: the values' row bytes.
    Rows(Vec<HashMap<ValueKey, i64>>),
}

impl DistinctSets {
    fn for_type(t: &DataType) -> DistinctSets {
        if *t == DataType::Int64 {
            DistinctSets::Ints(Vec::new())
        } else {
            DistinctSets::Rows(Vec::new())
        }
    }

    fn len_of(&self, g: u32) -> usize {
        match self {
            DistinctSets::Unknown => 0,
            DistinctSets::Ints(v) => v.get(g as usize).map_or(0, HashMap::len),
            DistinctSets::Rows(v) => v.get(g as usize).map_or(0, HashMap::len),
        }
    }
}

/// Add `n` to `key`'s count in `set`; a count back at zero leaves the set.
fn count_into<K: std::hash::Hash + Eq>(set: &mut HashMap<K, i64>, key: K, n: i64) {
    match set.entry(key) {
        datafusion::common::hash_map::Entry::Occupied(mut e) => {
            *e.get_mut() += n;
            if *e.get() == 0 {
                e.remove();
            }
        }
        datafusion::common::hash_map::Entry::Vacant(e) => {
            e.insert(n);
        }
    }
}

/// Empty group `gid`'s set, keeping a small table for the group that reuses the id.
fn reset_set<K>(sets: &mut [HashMap<K, i64>], gid: u32) {
    if let Some(s) = sets.get_mut(gid as usize) {
        if s.capacity() <= CountDistinct::KEEP {
            s.clear();
        } else {
            *s = HashMap::default();
        }
    }
}

impl CountDistinct {
    /// A reset group keeps a table this small for the group that reuses its id.
    const KEEP: usize = 64;

    fn mismatch() -> Error {
        Error::Internal("COUNT(DISTINCT) states of different value types".into())
    }
}

impl Acc for CountDistinct {
    fn update(&mut self, args: &[ArrayRef], gids: &[u32], retract: Option<&[bool]>, capacity: usize) -> Result<()> {
        let arg = args
            .first()
            .ok_or_else(|| Error::Internal("COUNT(DISTINCT) without an argument".into()))?;
        if matches!(self.sets, DistinctSets::Unknown) {
            self.sets = DistinctSets::for_type(arg.data_type());
        }
        let nulls = arg.nulls();
        match &mut self.sets {
            DistinctSets::Ints(sets) => {
                let values = arg
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(Self::mismatch)?
                    .values();
                grow(sets, capacity, HashMap::default());
                for (i, g) in gids.iter().enumerate() {
                    if !nulls.is_some_and(|n| n.is_null(i)) {
                        count_into(&mut sets[*g as usize], values[i], sign(retract, i));
                    }
                }
            }
            DistinctSets::Rows(sets) => {
                grow(sets, capacity, HashMap::default());
                let rows = self.rows.rows(arg)?;
                for (i, g) in gids.iter().enumerate() {
                    if nulls.is_some_and(|n| n.is_null(i)) {
                        continue;
                    }
                    let set = &mut sets[*g as usize];
                    let v = rows.row(i);
                    // Look up by the borrowed bytes first: a value seen before allocates nothing.
                    match set.get_mut(v.as_ref()) {
                        Some(n) => {
                            *n += sign(retract, i);
                            if *n == 0 {
                                set.remove(v.as_ref());
                            }
                        }
                        None => {
                            set.insert(ValueKey::from(v.as_ref()), sign(retract, i));
                        }
                    }
                }
            }
            DistinctSets::Unknown => {}
        }
        Ok(())
    }

    fn merge_from(&mut self, dst: u32, other: &mut dyn Acc, src: u32, capacity: usize) -> Result<()> {
        let o = downcast::<CountDistinct>(other)?;
        if matches!(self.sets, DistinctSets::Unknown) {
            self.sets = match &o.sets {
                DistinctSets::Unknown => return Ok(()),
                DistinctSets::Ints(_) => DistinctSets::Ints(Vec::new()),
                DistinctSets::Rows(_) => DistinctSets::Rows(Vec::new()),
            };
        }
        if let DistinctSets::Rows(_) = o.sets {
            // Values merged in before any were seen here: learn their type, for the checkpoint.
            self.rows.restore_type(&o.rows.state_type(), "COUNT(DISTINCT) values")?;
        }
        match (&mut self.sets, &o.sets) {
            (_, DistinctSets::Unknown) => {}
            (DistinctSets::Ints(mine), DistinctSets::Ints(theirs)) => {
                grow(mine, capacity, HashMap::default());
                for (k, n) in theirs.get(src as usize).into_iter().flatten() {
                    count_into(&mut mine[dst as usize], *k, *n);
                }
            }
            (DistinctSets::Rows(mine), DistinctSets::Rows(theirs)) => {
                grow(mine, capacity, HashMap::default());
                for (k, n) in theirs.get(src as usize).into_iter().flatten() {
                    count_into(&mut mine[dst as usize], k.clone(), *n);
                }
            }
            _ => return Err(Self::mismatch()),
        }
        Ok(())
    }

    fn merge_within(&mut self, dst: u32, src: u32) -> Result<()> {
        let (d, s) = (dst as usize, src as usize);
        match &mut self.sets {
            DistinctSets::Unknown => {}
            DistinctSets::Ints(sets) => {
                grow(sets, d.max(s) + 1, HashMap::default());
                for (k, n) in std::mem::take(&mut sets[s]) {
                    count_into(&mut sets[d], k, n);
                }
            }
            DistinctSets::Rows(sets) => {
                grow(sets, d.max(s) + 1, HashMap::default());
                for (k, n) in std::mem::take(&mut sets[s]) {
                    count_into(&mut sets[d], k, n);
                }
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, gids: &[u32], t: &DataType) -> Result<ArrayRef> {
        let a = Int64Array::from_iter_values(gids.iter().map(|g| self.sets.len_of(*g) as i64));
        conform(Arc::new(a), t)
    }

    fn reset(&mut self, gid: u32) {
        match &mut self.sets {
            DistinctSets::Unknown => {}
            DistinctSets::Ints(sets) => reset_set(sets, gid),
            DistinctSets::Rows(sets) => reset_set(sets, gid),
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    /// The distinct values and their counts as `values`/`counts` lists (the same columns in
    /// either form, so a checkpoint does not depend on it).
    fn state_columns(&self, gids: &[u32]) -> Result<Vec<(String, ArrayRef)>> {
        match &self.sets {
            DistinctSets::Ints(sets) => {
                let (mut values, mut counts, mut lens) = (Vec::new(), Vec::new(), Vec::new());
                for g in gids {
                    let set = sets.get(*g as usize);
                    lens.push(set.map_or(0, HashMap::len));
                    for (k, n) in set.into_iter().flatten() {
                        values.push(*k);
                        counts.push(*n);
                    }
                }
                Ok(multiset_state(Arc::new(Int64Array::from(values)), counts, lens))
            }
            DistinctSets::Rows(sets) => multiset_columns(&self.rows, gids.iter().map(|g| sets.get(*g as usize))),
            DistinctSets::Unknown => {
                multiset_columns::<&HashMap<ValueKey, i64>, ValueKey>(&self.rows, gids.iter().map(|_| None))
            }
        }
    }

    fn restore_columns(&mut self, gids: &[u32], cols: &StateColumns<'_>) -> Result<()> {
        let flat = cols.list("values")?.values().clone();
        if matches!(self.sets, DistinctSets::Unknown) && *flat.data_type() != DataType::Null {
            self.sets = DistinctSets::for_type(flat.data_type());
        }
        match &mut self.sets {
            DistinctSets::Unknown => Ok(()),
            DistinctSets::Ints(sets) => {
                let (values, n) = multiset_lists(cols)?;
                let v = values.values().as_any().downcast_ref::<Int64Array>().ok_or_else(|| {
                    Error::Internal(format!("state column '{}' is not BIGINT values", cols.name("values")))
                })?;
                grow(sets, capacity_of(gids), HashMap::default());
                for (g, w) in gids.iter().zip(values.value_offsets().windows(2)) {
                    sets[*g as usize] = (w[0] as usize..w[1] as usize)
                        .map(|j| (v.value(j), n.value(j)))
                        .collect();
                }
                Ok(())
            }
            DistinctSets::Rows(sets) => {
                let restored = restore_multisets(&mut self.rows, cols)?;
                grow(sets, capacity_of(gids), HashMap::default());
                for (g, set) in gids.iter().zip(restored) {
                    sets[*g as usize] = set.into_iter().map(|(k, n)| (ValueKey::from(&k[..]), n)).collect();
                }
                Ok(())
            }
        }
    }
}

/// Any DataFusion aggregate: one [`Accumulator`] per group.
///
/// Each sits in a mutex only so that a checkpoint (which reads state through `&self`) can call
/// [`Accumulator::state`], which takes `&mut self` and may consume what it returns.
struct Generic {
    func: Arc<AggregateFunctionExpr>,
    accs: Vec<Option<Mutex<Box<dyn Accumulator>>>>,
}

fn poisoned<T>(_: T) -> Error {
    Error::Internal("an aggregate accumulator's lock is poisoned".into())
}

/// An accumulator's state (consumed) as one-row arrays.
fn state_arrays(acc: &mut dyn Accumulator) -> Result<Vec<ArrayRef>> {
    Ok(acc
        .state()?
        .into_iter()
        .map(|s| s.to_array())
        .collect::<std::result::Result<_, _>>()?)
}

/// Whether two state types have the same shape (nested field names and nullability aside): what
/// `merge_batch` relies on when it downcasts.
fn same_shape(a: &DataType, b: &DataType) -> bool {
    use DataType::*;
    match (a, b) {
        (List(x), List(y))
        | (LargeList(x), LargeList(y))
        | (ListView(x), ListView(y))
        | (LargeListView(x), LargeListView(y)) => same_shape(x.data_type(), y.data_type()),
        (FixedSizeList(x, n), FixedSizeList(y, m)) => n == m && same_shape(x.data_type(), y.data_type()),
        (Struct(x), Struct(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|(x, y)| same_shape(x.data_type(), y.data_type()))
        }
        (Map(x, _), Map(y, _)) => same_shape(x.data_type(), y.data_type()),
        (Dictionary(k, v), Dictionary(l, w)) => k == l && same_shape(v, w),
        _ => a == b,
    }
}

impl Generic {
    fn new(call: &AggCall) -> Result<Generic> {
        let AggKind::Generic(func) = &call.kind else {
            return Err(Error::Internal(format!(
                "{}: no DataFusion accumulator was planned for it",
                call.display
            )));
        };
        Ok(Generic {
            func: func.clone(),
            accs: Vec::new(),
        })
    }

    fn acc(&mut self, g: usize) -> Result<&mut Box<dyn Accumulator>> {
        if self.accs.len() <= g {
            self.accs.resize_with(g + 1, || None);
        }
        if self.accs[g].is_none() {
            self.accs[g] = Some(Mutex::new(self.func.create_accumulator()?));
        }
        self.accs[g]
            .as_mut()
            .ok_or_else(|| Error::Internal("accumulator".into()))?
            .get_mut()
            .map_err(poisoned)
    }

    /// The state of group `g` as one-row arrays (`None`: the group has no accumulator yet). The
    /// accumulator is rebuilt from that state (`state()` may consume it), so it goes on exactly as
    /// one restored from the same arrays would.
    fn group_state(&self, g: u32) -> Result<Option<Vec<ArrayRef>>> {
        let Some(Some(m)) = self.accs.get(g as usize) else {
            return Ok(None);
        };
        let mut acc = m.lock().map_err(poisoned)?;
        let state = state_arrays(acc.as_mut())?;
        let mut fresh = self.func.create_accumulator()?;
        fresh.merge_batch(&state)?;
        *acc = fresh;
        Ok(Some(state))
    }

    /// The types of this aggregate's state (those of a fresh accumulator).
    fn state_types(&self) -> Result<Vec<DataType>> {
        let mut fresh = self.func.create_accumulator()?;
        Ok(state_arrays(fresh.as_mut())?
            .iter()
            .map(|a| a.data_type().clone())
            .collect())
    }
}

impl Acc for Generic {
    fn update(&mut self, args: &[ArrayRef], gids: &[u32], retract: Option<&[bool]>, _capacity: usize) -> Result<()> {
        // Rows by group, in arrival order within a group; inserts and retractions apart.
        let mut by_group: BTreeMap<(u32, bool), Vec<u32>> = BTreeMap::new();
        for (i, g) in gids.iter().enumerate() {
            let r = retract.is_some_and(|r| r[i]);
            by_group.entry((*g, r)).or_default().push(i as u32);
        }
        for ((g, r), rows) in by_group {
            let idx = UInt32Array::from(rows);
            let part: Vec<ArrayRef> = args
                .iter()
                .map(|a| take(a, &idx, None))
                .collect::<std::result::Result<_, _>>()?;
            let acc = self.acc(g as usize)?;
            if r {
                acc.retract_batch(&part)?;
            } else {
                acc.update_batch(&part)?;
            }
        }
        Ok(())
    }

    fn merge_from(&mut self, dst: u32, other: &mut dyn Acc, src: u32, _capacity: usize) -> Result<()> {
        let o = downcast::<Generic>(other)?;
        let Some(Some(theirs)) = o.accs.get_mut(src as usize) else {
            return Ok(());
        };
        // Consumes `other`'s state: only used where the source group is dropped afterwards.
        let state = state_arrays(theirs.get_mut().map_err(poisoned)?.as_mut())?;
        o.accs[src as usize] = None;
        self.acc(dst as usize)?.merge_batch(&state)?;
        Ok(())
    }

    fn merge_within(&mut self, dst: u32, src: u32) -> Result<()> {
        let Some(Some(theirs)) = self.accs.get_mut(src as usize).map(Option::take) else {
            return Ok(());
        };
        let state = state_arrays(theirs.into_inner().map_err(poisoned)?.as_mut())?;
        self.acc(dst as usize)?.merge_batch(&state)?;
        Ok(())
    }

    fn evaluate(&mut self, gids: &[u32], t: &DataType) -> Result<ArrayRef> {
        let mut vals = Vec::with_capacity(gids.len());
        for g in gids {
            vals.push(self.acc(*g as usize)?.evaluate()?);
        }
        if vals.is_empty() {
            return Ok(new_null_array(t, 0));
        }
        conform(ScalarValue::iter_to_array(vals)?, t)
    }

    fn reset(&mut self, gid: u32) {
        if let Some(a) = self.accs.get_mut(gid as usize) {
            *a = None;
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    /// `present` (whether the group has an accumulator), then the accumulator's state
    /// ([`Accumulator::state`]) as `state0`, `state1`, … (NULL where not present).
    fn state_columns(&self, gids: &[u32]) -> Result<Vec<(String, ArrayRef)>> {
        let mut present = Vec::with_capacity(gids.len());
        let mut states: Vec<Vec<ArrayRef>> = Vec::new();
        let mut at: Vec<Option<u32>> = Vec::with_capacity(gids.len());
        for g in gids {
            match self.group_state(*g)? {
                Some(s) => {
                    at.push(Some(states.len() as u32));
                    states.push(s);
                    present.push(true);
                }
                None => {
                    at.push(None);
                    present.push(false);
                }
            }
        }
        let types = self.state_types()?;
        let mut cols = named(vec![("present", Arc::new(BooleanArray::from(present)) as ArrayRef)]);
        let idx = UInt32Array::from(at);
        for (j, t) in types.iter().enumerate() {
            let col = if states.is_empty() {
                new_null_array(t, gids.len())
            } else {
                let parts: Vec<&dyn Array> = states
                    .iter()
                    .map(|s| {
                        s.get(j).map(|a| a.as_ref()).ok_or_else(|| {
                            Error::Internal("an accumulator's state changed its number of fields".into())
                        })
                    })
                    .collect::<Result<_>>()?;
                take(&concat(&parts)?, &idx, None)?
            };
            cols.push((format!("state{j}"), col));
        }
        Ok(cols)
    }

    fn restore_columns(&mut self, gids: &[u32], cols: &StateColumns<'_>) -> Result<()> {
        let present = cols.get::<BooleanArray>("present")?;
        let types = self.state_types()?;
        let mut state = Vec::with_capacity(types.len());
        for (j, t) in types.iter().enumerate() {
            let name = format!("state{j}");
            let a = cols.array(&name)?;
            if !same_shape(a.data_type(), t) {
                return Err(Error::Internal(format!(
                    "state column '{}' has type {}, this aggregate's state is {t}",
                    cols.name(&name),
                    a.data_type()
                )));
            }
            state.push(a);
        }
        if self.accs.len() < capacity_of(gids) {
            self.accs.resize_with(capacity_of(gids), || None);
        }
        for (i, g) in gids.iter().enumerate() {
            self.accs[*g as usize] = if present.value(i) {
                let row: Vec<ArrayRef> = state.iter().map(|a| a.slice(i, 1)).collect();
                let mut acc = self.func.create_accumulator()?;
                acc.merge_batch(&row)?;
                Some(Mutex::new(acc))
            } else {
                None
            };
        }
        Ok(())
    }
}

/// Arguments of every call evaluated over one batch (after each call's FILTER).
pub struct Evaluated {
    /// Per call: argument arrays and, with a FILTER, the rows kept.
    calls: Vec<(Vec<ArrayRef>, Option<BooleanArray>)>,
}

/// The state of all aggregate calls of one operator (or one window pane), by group id, with a row
/// count per group (a group whose count drops to zero is gone).
pub struct Aggregates {
    calls: Arc<[AggCall]>,
    accs: Vec<Box<dyn Acc>>,
    rows: Vec<i64>,
}

impl Aggregates {
    /// `retracting`: the input is a changelog (MIN/MAX keep a multiset from the start).
    pub fn new(calls: &Arc<[AggCall]>, retracting: bool) -> Result<Aggregates> {
        let mut accs = Vec::with_capacity(calls.len());
        for c in calls.iter() {
            let mut a = c.new_acc()?;
            if retracting && let Some(m) = a.as_any_mut().downcast_mut::<MinMax>() {
                m.multiset = Some(Vec::new());
            }
            accs.push(a);
        }
        Ok(Aggregates {
            calls: calls.clone(),
            accs,
            rows: Vec::new(),
        })
    }

    /// Evaluate every call's arguments and FILTER over `batch`.
    pub fn evaluate_args(calls: &[AggCall], batch: &RecordBatch) -> Result<Evaluated> {
        let mut out = Vec::with_capacity(calls.len());
        for c in calls {
            let args: Vec<ArrayRef> = c
                .args
                .iter()
                .map(|e| e.evaluate(batch).and_then(|v| v.into_array(batch.num_rows())))
                .collect::<std::result::Result<_, _>>()?;
            let keep = match &c.filter {
                None => None,
                Some(f) => {
                    let v = f.evaluate(batch)?.into_array(batch.num_rows())?;
                    let b = v
                        .as_boolean_opt()
                        .ok_or_else(|| Error::plan(format!("{}: FILTER must be a boolean condition", c.display)))?;
                    // NULL is not true.
                    Some(b.iter().map(|v| Some(v == Some(true))).collect::<BooleanArray>())
                }
            };
            out.push((args, keep));
        }
        Ok(Evaluated { calls: out })
    }

    /// Apply rows (`rows` selects which rows of the evaluated batch; `None`: all) to groups `gids`.
    pub fn update(
        &mut self,
        ev: &Evaluated,
        rows: Option<&UInt32Array>,
        gids: &[u32],
        retract: Option<&[bool]>,
        capacity: usize,
    ) -> Result<()> {
        grow(&mut self.rows, capacity, 0);
        for (i, g) in gids.iter().enumerate() {
            self.rows[*g as usize] += sign(retract, i);
        }
        for (acc, (args, keep)) in self.accs.iter_mut().zip(&ev.calls) {
            let mut args: Vec<ArrayRef> = match rows {
                Some(ix) => args
                    .iter()
                    .map(|a| take(a, ix, None))
                    .collect::<std::result::Result<_, _>>()?,
                None => args.clone(),
            };
            match keep {
                None => acc.update(&args, gids, retract, capacity)?,
                Some(k) => {
                    let k: BooleanArray = match rows {
                        Some(ix) => take(k, ix, None)?.as_boolean().clone(),
                        None => k.clone(),
                    };
                    args = args
                        .iter()
                        .map(|a| filter(a, &k))
                        .collect::<std::result::Result<_, _>>()?;
                    let g: Vec<u32> = gids
                        .iter()
                        .zip(k.values())
                        .filter(|(_, k)| *k)
                        .map(|(g, _)| *g)
                        .collect();
                    let r: Option<Vec<bool>> =
                        retract.map(|r| r.iter().zip(k.values()).filter(|(_, k)| *k).map(|(r, _)| *r).collect());
                    acc.update(&args, &g, r.as_deref(), capacity)?;
                }
            }
        }
        Ok(())
    }

    /// Merge group `src` of `other` into group `dst`.
    pub fn merge_from(&mut self, dst: u32, other: &mut Aggregates, src: u32, capacity: usize) -> Result<()> {
        grow(&mut self.rows, capacity, 0);
        self.rows[dst as usize] += other.rows.get(src as usize).copied().unwrap_or(0);
        for (a, b) in self.accs.iter_mut().zip(other.accs.iter_mut()) {
            a.merge_from(dst, b.as_mut(), src, capacity)?;
        }
        Ok(())
    }

    /// Merge group `src` into group `dst` (sessions that merge); reset `src` afterwards.
    pub fn merge_groups(&mut self, dst: u32, src: u32) -> Result<()> {
        grow(&mut self.rows, dst.max(src) as usize + 1, 0);
        self.rows[dst as usize] += self.rows[src as usize];
        for a in &mut self.accs {
            a.merge_within(dst, src)?;
        }
        Ok(())
    }

    /// Final values of every call for the given groups, one array per call.
    pub fn evaluate(&mut self, gids: &[u32]) -> Result<Vec<ArrayRef>> {
        self.accs
            .iter_mut()
            .zip(self.calls.iter())
            .map(|(a, c)| a.evaluate(gids, &c.return_type))
            .collect()
    }

    /// Rows currently in a group (inserts minus retractions).
    pub fn rows(&self, gid: u32) -> i64 {
        self.rows.get(gid as usize).copied().unwrap_or(0)
    }

    pub fn reset(&mut self, gid: u32) {
        if let Some(r) = self.rows.get_mut(gid as usize) {
            *r = 0;
        }
        for a in &mut self.accs {
            a.reset(gid);
        }
    }

    /// The state of the given groups as named columns, one row per group, for a checkpoint: `rows`
    /// (the row count), then each call's columns prefixed `a{i}_` (see each [`Acc`]).
    pub fn state_columns(&self, gids: &[u32]) -> Result<Vec<(String, ArrayRef)>> {
        let rows = Int64Array::from_iter_values(gids.iter().map(|g| self.rows(*g)));
        let mut cols = named(vec![("rows", Arc::new(rows))]);
        for (i, (a, c)) in self.accs.iter().zip(self.calls.iter()).enumerate() {
            let part = a
                .state_columns(gids)
                .map_err(|e| context(e, format!("checkpointing {}", c.display)))?;
            cols.extend(part.into_iter().map(|(n, a)| (format!("a{i}_{n}"), a)));
        }
        Ok(cols)
    }

    /// Set groups `gids` (row `i` of `table` → `gids[i]`) to the state [`Aggregates::state_columns`]
    /// wrote into `table` (which may hold other columns too).
    pub fn restore_columns(&mut self, gids: &[u32], table: &RecordBatch) -> Result<()> {
        if table.num_rows() != gids.len() {
            return Err(Error::Internal(format!(
                "restoring {} groups from a state table of {} rows",
                gids.len(),
                table.num_rows()
            )));
        }
        let rows = state::column::<Int64Array>(table, "rows")?;
        if rows.null_count() > 0 {
            return Err(Error::Internal("state column 'rows' has NULLs".into()));
        }
        grow(&mut self.rows, capacity_of(gids), 0);
        for (i, g) in gids.iter().enumerate() {
            self.rows[*g as usize] = rows.value(i);
        }
        for (i, (a, c)) in self.accs.iter_mut().zip(self.calls.iter()).enumerate() {
            let cols = StateColumns {
                table,
                prefix: format!("a{i}_"),
            };
            a.restore_columns(gids, &cols)
                .map_err(|e| context(e, format!("restoring {}", c.display)))?;
        }
        Ok(())
    }
}

/// Test support: an input of keys, times and values, and aggregate calls of every kind over it.
#[cfg(test)]
pub mod testing {
    use super::*;
    use crate::operator::ChangeBatch;
    use datafusion::arrow::array::{StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Schema, TimeUnit};
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    use datafusion::physical_expr::expressions::{cast as cast_expr, col};

    /// `k VARCHAR, t TIMESTAMP(ms), x BIGINT`.
    pub fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("x", DataType::Int64, true),
        ]))
    }

    /// Inserts `(k, t, x)`, each arrived under its watermark.
    pub fn rows(keys: &[&str], ts: &[i64], xs: &[Option<i64>], wms: &[i64]) -> ChangeBatch {
        let b = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(TimestampMillisecondArray::from(ts.to_vec())),
                Arc::new(Int64Array::from(xs.to_vec())),
            ],
        )
        .expect("batch");
        let mut c = ChangeBatch::append(b, 0);
        c.wm = Int64Array::from(wms.to_vec());
        c
    }

    fn call(display: &str, kind: AggKind, arg: Option<&str>, distinct: bool, t: DataType) -> AggCall {
        let s = schema();
        AggCall {
            display: display.into(),
            kind,
            args: arg.map(|a| col(a, &s).expect("col")).into_iter().collect(),
            filter: None,
            distinct,
            return_type: t,
        }
    }

    /// A DataFusion aggregate over `x` (cast to `arg_type`), run as [`AggKind::Generic`].
    pub fn generic(name: &str, arg_type: DataType) -> AggCall {
        let s = schema();
        let udaf = match name {
            "median" => datafusion::functions_aggregate::median::median_udaf(),
            "stddev" => datafusion::functions_aggregate::stddev::stddev_udaf(),
            _ => panic!("no test aggregate {name}"),
        };
        let arg = cast_expr(col("x", &s).expect("x"), &s, arg_type).expect("cast");
        let f = AggregateExprBuilder::new(udaf, vec![arg.clone()])
            .schema(s.clone())
            .alias(name)
            .build()
            .expect("aggregate");
        let t = f.field().data_type().clone();
        AggCall {
            display: format!("{name}(x)"),
            kind: AggKind::Generic(Arc::new(f)),
            args: vec![arg],
            filter: None,
            distinct: false,
            return_type: t,
        }
    }

    /// `count(*), count(x), sum(x), avg(x), min(x), max(x), count(DISTINCT x)`, each retractable
    /// and mergeable into several windows.
    pub fn native_calls() -> Vec<AggCall> {
        vec![
            call("count(*)", AggKind::CountStar, None, false, DataType::Int64),
            call("count(x)", AggKind::Count, Some("x"), false, DataType::Int64),
            call("sum(x)", AggKind::Sum, Some("x"), false, DataType::Int64),
            call("avg(x)", AggKind::Avg, Some("x"), false, DataType::Float64),
            call("min(x)", AggKind::Min, Some("x"), false, DataType::Int64),
            call("max(x)", AggKind::Max, Some("x"), false, DataType::Int64),
            call("count(DISTINCT x)", AggKind::Count, Some("x"), true, DataType::Int64),
        ]
    }

    /// [`native_calls`], then `median(x)` (a DataFusion accumulator).
    pub fn all_calls() -> Vec<AggCall> {
        let mut v = native_calls();
        v.push(generic("median", DataType::Int64));
        v
    }

    /// The output fields of `calls` (`a0`, `a1`, …, nullable).
    pub fn fields(calls: &[AggCall]) -> Vec<Field> {
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(format!("a{i}"), c.return_type.clone(), true))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::col;

    fn batch(vals: &[Option<i64>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vals.to_vec()))]).expect("batch")
    }

    fn call(kind: AggKind, distinct: bool, t: DataType) -> AggCall {
        let schema = Schema::new(vec![Field::new("x", DataType::Int64, true)]);
        AggCall {
            display: format!("{kind:?}"),
            args: if matches!(kind, AggKind::CountStar) {
                vec![]
            } else {
                vec![col("x", &schema).expect("col")]
            },
            kind,
            filter: None,
            distinct,
            return_type: t,
        }
    }

    #[test]
    fn retractions_undo_inserts() {
        let calls: Arc<[AggCall]> = vec![
            call(AggKind::CountStar, false, DataType::Int64),
            call(AggKind::Count, false, DataType::Int64),
            call(AggKind::Sum, false, DataType::Int64),
            call(AggKind::Avg, false, DataType::Float64),
            call(AggKind::Min, false, DataType::Int64),
            call(AggKind::Max, false, DataType::Int64),
            call(AggKind::Count, true, DataType::Int64),
        ]
        .into();
        let mut a = Aggregates::new(&calls, true).expect("aggs");
        let b = batch(&[Some(5), Some(1), None, Some(5), Some(9)]);
        let ev = Aggregates::evaluate_args(&calls, &b).expect("args");
        a.update(&ev, None, &[0, 0, 0, 0, 1], None, 2).expect("update");
        let out = a.evaluate(&[0, 1]).expect("eval");
        let ints = |i: usize| out[i].as_primitive::<Int64Type>().iter().collect::<Vec<_>>();
        assert_eq!(ints(0), vec![Some(4), Some(1)]);
        assert_eq!(ints(1), vec![Some(3), Some(1)]);
        assert_eq!(ints(2), vec![Some(11), Some(9)]);
        assert_eq!(ints(4), vec![Some(1), Some(9)]);
        assert_eq!(ints(5), vec![Some(5), Some(9)]);
        assert_eq!(ints(6), vec![Some(2), Some(1)]);
        // Retract the 1 and one 5 from group 0, the 9 from group 1.
        let b = batch(&[Some(1), Some(5), Some(9)]);
        let ev = Aggregates::evaluate_args(&calls, &b).expect("args");
        a.update(&ev, None, &[0, 0, 1], Some(&[true, true, true]), 2)
            .expect("retract");
        let out = a.evaluate(&[0, 1]).expect("eval");
        let ints = |i: usize| out[i].as_primitive::<Int64Type>().iter().collect::<Vec<_>>();
        assert_eq!(ints(2), vec![Some(5), None], "an empty SUM is NULL");
        assert_eq!(ints(4), vec![Some(5), None]);
        assert_eq!(ints(6), vec![Some(1), Some(0)]);
        assert_eq!(a.rows(1), 0);
        assert_eq!(out[3].as_primitive::<Float64Type>().value(0), 5.0);
    }

    #[test]
    fn merges_groups_of_two_states() {
        let calls: Arc<[AggCall]> = vec![
            call(AggKind::Sum, false, DataType::Int64),
            call(AggKind::Max, false, DataType::Int64),
            call(AggKind::Count, true, DataType::Int64),
        ]
        .into();
        let mut a = Aggregates::new(&calls, false).expect("aggs");
        let mut b = Aggregates::new(&calls, false).expect("aggs");
        let ev = Aggregates::evaluate_args(&calls, &batch(&[Some(1), Some(2)])).expect("args");
        a.update(&ev, None, &[0, 0], None, 1).expect("a");
        let ev = Aggregates::evaluate_args(&calls, &batch(&[Some(2), Some(7)])).expect("args");
        b.update(&ev, None, &[3, 3], None, 4).expect("b");
        a.merge_from(0, &mut b, 3, 1).expect("merge");
        let out = a.evaluate(&[0]).expect("eval");
        assert_eq!(out[0].as_primitive::<Int64Type>().value(0), 12);
        assert_eq!(out[1].as_primitive::<Int64Type>().value(0), 7);
        assert_eq!(out[2].as_primitive::<Int64Type>().value(0), 3);
        assert_eq!(a.rows(0), 4);
    }

    /// COUNT(DISTINCT) over values short enough to be kept inline in the hash key and long ones
    /// kept on the heap: they count, retract, survive a checkpoint, and a reset group id that is
    /// used again starts empty.
    #[test]
    fn distinct_values_short_and_long() {
        use datafusion::arrow::array::StringArray;
        let schema = Schema::new(vec![Field::new("x", DataType::Utf8, true)]);
        let calls: Arc<[AggCall]> = vec![AggCall {
            display: "count(DISTINCT x)".into(),
            kind: AggKind::Count,
            args: vec![col("x", &schema).expect("col")],
            filter: None,
            distinct: true,
            return_type: DataType::Int64,
        }]
        .into();
        let long = "a value longer than the twenty-two inline bytes";
        let b = RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(StringArray::from(vec![
                Some("a"),
                Some(long),
                None,
                Some("a"),
                Some(long),
                Some("b"),
                Some(long),
            ]))],
        )
        .expect("batch");
        let ev = Aggregates::evaluate_args(&calls, &b).expect("args");
        let count = |a: &mut Aggregates, g: &[u32]| -> Vec<i64> {
            a.evaluate(g).expect("eval")[0]
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        };
        let mut a = Aggregates::new(&calls, true).expect("aggs");
        a.update(&ev, None, &[0, 0, 0, 0, 0, 1, 1], None, 2).expect("update");
        assert_eq!(count(&mut a, &[0, 1]), vec![2, 2]);
        // Retract both "a" of group 0: its long value stays.
        let both_a = UInt32Array::from(vec![0, 3]);
        a.update(&ev, Some(&both_a), &[0, 0], Some(&[true, true]), 2)
            .expect("retract");
        assert_eq!(count(&mut a, &[0, 1]), vec![1, 2]);
        let table = through_ipc(a.state_columns(&[0, 1]).expect("state"));
        let mut r = Aggregates::new(&calls, true).expect("aggs");
        r.restore_columns(&[1, 0], &table).expect("restore");
        assert_eq!(count(&mut r, &[1, 0]), vec![1, 2]);
        r.update(&ev, Some(&both_a), &[1, 0], None, 2).expect("update");
        assert_eq!(count(&mut r, &[1, 0]), vec![2, 3]);
        a.reset(1);
        let one_long = UInt32Array::from(vec![1]);
        a.update(&ev, Some(&one_long), &[1], None, 2).expect("update");
        assert_eq!(count(&mut a, &[0, 1]), vec![1, 1]);
    }

    /// BIGINT values are counted by value, other types by row bytes: both must count alike and
    /// checkpoint the same columns, so a state written in one form restores in the other.
    #[test]
    fn distinct_bigints_by_value_count_and_checkpoint_as_row_bytes_do() {
        let values: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(7),
            Some(-3),
            None,
            Some(7),
            Some(i64::MAX),
            Some(-3),
            Some(0),
        ]));
        let gids = [0, 0, 0, 0, 1, 1, 1];
        let retract = [false, false, false, false, false, false, true];
        let run = |mut acc: CountDistinct| {
            acc.update(std::slice::from_ref(&values), &gids, None, 2)
                .expect("update");
            acc.update(std::slice::from_ref(&values), &gids, Some(&retract), 2)
                .expect("retract");
            acc
        };
        let by_value = run(CountDistinct::default());
        assert!(matches!(by_value.sets, DistinctSets::Ints(_)));
        let by_rows = run(CountDistinct {
            sets: DistinctSets::Rows(Vec::new()),
            ..CountDistinct::default()
        });
        let counts = |a: &mut CountDistinct| {
            a.evaluate(&[0, 1], &DataType::Int64)
                .expect("eval")
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        };
        let (mut by_value, mut by_rows) = (by_value, by_rows);
        // Group 0: 7 four times, -3 twice, NULL never; group 1: MAX and -3 twice each, 0 inserted
        // and retracted (gone).
        assert_eq!(counts(&mut by_value), vec![2, 2]);
        assert_eq!(counts(&mut by_rows), counts(&mut by_value));
        let sorted_state = |a: &CountDistinct| {
            let t = through_ipc(a.state_columns(&[0, 1]).expect("state"));
            (0..2)
                .map(|g| {
                    let v = t.column(0).as_list::<i32>().value(g);
                    let n = t.column(1).as_list::<i32>().value(g);
                    let mut pairs: Vec<(i64, i64)> = v
                        .as_primitive::<Int64Type>()
                        .values()
                        .iter()
                        .zip(n.as_primitive::<Int64Type>().values().iter())
                        .map(|(a, b)| (*a, *b))
                        .collect();
                    pairs.sort();
                    pairs
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(sorted_state(&by_value), sorted_state(&by_rows));
        // Written by one form, restored by a fresh aggregate (which takes the BIGINT form).
        for written in [&by_value, &by_rows] {
            let table = through_ipc(written.state_columns(&[0, 1]).expect("state"));
            let mut restored = CountDistinct::default();
            let cols = StateColumns {
                table: &table,
                prefix: String::new(),
            };
            restored.restore_columns(&[1, 0], &cols).expect("restore");
            assert!(matches!(restored.sets, DistinctSets::Ints(_)));
            assert_eq!(counts(&mut restored), vec![2, 2]);
            assert_eq!(sorted_state(&restored), {
                let mut swapped = sorted_state(written);
                swapped.reverse();
                swapped
            });
        }
    }

    fn through_ipc(cols: Vec<(String, ArrayRef)>) -> RecordBatch {
        let cols: Vec<(&str, ArrayRef)> = cols.iter().map(|(n, a)| (n.as_str(), a.clone())).collect();
        let t = state::plain_table(cols).expect("table");
        state::from_ipc(&state::to_ipc(&t).expect("ipc")).expect("read")
    }

    #[test]
    fn state_columns_restore_every_kind_into_other_group_ids() {
        use super::testing::{all_calls, rows};
        let calls: Arc<[AggCall]> = all_calls().into();
        let mut a = Aggregates::new(&calls, true).expect("aggs");
        let ins = rows(
            &["a", "a", "b", "b", "a", "a"],
            &[0; 6],
            &[Some(5), Some(1), None, Some(7), Some(5), Some(9)],
            &[0; 6],
        );
        let ev = Aggregates::evaluate_args(&calls, &ins.batch).expect("args");
        a.update(&ev, None, &[0, 0, 2, 2, 0, 0], None, 3).expect("update");
        // Retract the 1 and one 5 (MIN/MAX fall back on their multiset).
        let del = rows(&["a", "a"], &[0, 0], &[Some(1), Some(9)], &[0, 0]);
        let ev_del = Aggregates::evaluate_args(&calls, &del.batch).expect("args");
        a.update(&ev_del, None, &[0, 0], Some(&[true, true]), 3)
            .expect("retract");

        let table = through_ipc(a.state_columns(&[0, 2, 1]).expect("state"));
        let mut r = Aggregates::new(&calls, true).expect("aggs");
        r.restore_columns(&[4, 1, 0], &table).expect("restore");
        assert_eq!(
            a.evaluate(&[0, 2, 1]).expect("eval"),
            r.evaluate(&[4, 1, 0]).expect("eval")
        );
        assert_eq!((a.rows(0), a.rows(2)), (r.rows(4), r.rows(1)));
        // Both go on alike: retract the last 5 and the 7, add a 3.
        let more = rows(&["a", "b", "a"], &[0; 3], &[Some(5), Some(7), Some(3)], &[0; 3]);
        let ev = Aggregates::evaluate_args(&calls, &more.batch).expect("args");
        let retract = [true, true, false];
        a.update(&ev, None, &[0, 2, 0], Some(&retract), 3).expect("a");
        r.update(&ev, None, &[4, 1, 4], Some(&retract), 5).expect("r");
        assert_eq!(a.evaluate(&[0, 2]).expect("eval"), r.evaluate(&[4, 1]).expect("eval"));
    }

    #[test]
    fn an_empty_state_restores_and_learns_its_types_later() {
        use super::testing::{all_calls, rows};
        let calls: Arc<[AggCall]> = all_calls().into();
        let a = Aggregates::new(&calls, true).expect("aggs");
        let table = through_ipc(a.state_columns(&[]).expect("state"));
        let mut r = Aggregates::new(&calls, true).expect("aggs");
        r.restore_columns(&[], &table).expect("restore");
        let ins = rows(&["a"], &[0], &[Some(2)], &[0]);
        let ev = Aggregates::evaluate_args(&calls, &ins.batch).expect("args");
        r.update(&ev, None, &[0], None, 1).expect("update");
        let out = r.evaluate(&[0]).expect("eval");
        assert_eq!(out[4].as_primitive::<Int64Type>().value(0), 2);
    }

    #[test]
    fn a_state_of_other_columns_or_types_is_refused() {
        use super::testing::all_calls;
        let calls: Arc<[AggCall]> = all_calls().into();
        let a = Aggregates::new(&calls, false).expect("aggs");
        let good = a.state_columns(&[]).expect("state");
        let mut r = Aggregates::new(&calls, false).expect("aggs");
        // Without a column.
        let missing: Vec<(String, ArrayRef)> = good.iter().filter(|(n, _)| n != "a2_sum").cloned().collect();
        let err = r.restore_columns(&[], &through_ipc(missing)).expect_err("missing");
        assert!(err.to_string().contains("a2_sum"), "{err}");
        // A column of another type (each kind's, in turn).
        for name in ["rows", "a0_n", "a3_sum", "a4_best", "a6_values", "a7_state0"] {
            let wrong: Vec<(String, ArrayRef)> = good
                .iter()
                .map(|(n, a)| {
                    if n == name {
                        (n.clone(), Arc::new(BooleanArray::from(Vec::<bool>::new())) as ArrayRef)
                    } else {
                        (n.clone(), a.clone())
                    }
                })
                .collect();
            let mut r = Aggregates::new(&calls, false).expect("aggs");
            let err = r.restore_columns(&[], &through_ipc(wrong)).expect_err(name);
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
        // More rows than groups.
        let one = a.state_columns(&[0]).expect("state");
        assert!(r.restore_columns(&[], &through_ipc(one)).is_err());
        // MIN's value and its multiset disagree on the values' type.
        let mut a = Aggregates::new(&calls, true).expect("aggs");
        let ins = super::testing::rows(&["a"], &[0], &[Some(2)], &[0]);
        let ev = Aggregates::evaluate_args(&calls, &ins.batch).expect("args");
        a.update(&ev, None, &[0], None, 1).expect("update");
        let bad: Vec<(String, ArrayRef)> = a
            .state_columns(&[0])
            .expect("state")
            .into_iter()
            .map(|(n, c)| {
                if n == "a4_best" {
                    // A type MIN over BIGINT could have (as a dictionary), not the multiset's.
                    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Int64));
                    let two: ArrayRef = Arc::new(Int64Array::from(vec![2]));
                    (n, cast(&two, &dict).expect("dictionary"))
                } else {
                    (n, c)
                }
            })
            .collect();
        let mut r = Aggregates::new(&calls, true).expect("aggs");
        let err = r.restore_columns(&[0], &through_ipc(bad)).expect_err("types disagree");
        assert!(err.to_string().contains("a4_values"), "{err}");
        // A value type no MIN over BIGINT has.
        let mut r = Aggregates::new(&calls, false).expect("aggs");
        let a = Aggregates::new(&calls, false).expect("aggs");
        let strings: Vec<(String, ArrayRef)> = a
            .state_columns(&[])
            .expect("state")
            .into_iter()
            .map(|(n, c)| {
                if n == "a4_best" {
                    (
                        n,
                        Arc::new(datafusion::arrow::array::StringArray::from(Vec::<String>::new())) as ArrayRef,
                    )
                } else {
                    (n, c)
                }
            })
            .collect();
        let err = r.restore_columns(&[], &through_ipc(strings)).expect_err("strings");
        assert!(err.to_string().contains("a4_best"), "{err}");
    }
}
