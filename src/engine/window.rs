//! Window operators over incremental keyed state.
//!
//! State is plain data: for TUMBLE and HOP a map pane-start → group key → partial aggregates, where a
//! pane is gcd(slide, size) long (TUMBLE: the window itself), so a row is counted once, never copied into
//! each window it belongs to; a window's value is the merge of its panes. For SESSION, per group key the
//! open sessions, merged when an event bridges them. Each micro-batch arrives pre-aggregated per
//! (key, pane) by DataFusion, so merging costs O(touched groups), not O(history). A pane is dropped once
//! the watermark has passed the end of the last window that contains it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringArray, new_empty_array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    Tumble { size: i64 },
    Hop { slide: i64, size: i64 },
    Session { gap: i64 },
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl WindowSpec {
    /// The granularity at which rows are pre-aggregated (ms); 1 for sessions (exact event time).
    pub fn pane(&self) -> i64 {
        match *self {
            WindowSpec::Tumble { size } => size,
            WindowSpec::Hop { slide, size } => gcd(slide, size),
            WindowSpec::Session { .. } => 1,
        }
    }

    fn slide_size(&self) -> (i64, i64) {
        match *self {
            WindowSpec::Tumble { size } => (size, size),
            WindowSpec::Hop { slide, size } => (slide, size),
            WindowSpec::Session { gap } => (gap, gap),
        }
    }

    /// Starts of the windows that contain the pane starting at `p`, latest first.
    pub fn windows_of(&self, p: i64) -> impl Iterator<Item = i64> {
        let (slide, size) = self.slide_size();
        let last = p.div_euclid(slide) * slide;
        (0..).map(move |i| last - i * slide).take_while(move |s| s + size > p)
    }

    /// The end of the last window that contains the pane starting at `p`.
    fn last_end(&self, p: i64) -> i64 {
        let (slide, size) = self.slide_size();
        p.div_euclid(slide) * slide + size
    }

    pub fn describe(&self) -> String {
        match self {
            WindowSpec::Tumble { size } => format!("TUMBLE(size {size} ms)"),
            WindowSpec::Hop { slide, size } => {
                format!("HOP(slide {slide} ms, size {size} ms, panes of {} ms)", self.pane())
            }
            WindowSpec::Session { gap } => format!("SESSION(gap {gap} ms, per key)"),
        }
    }
}

/// The aggregates kept incrementally, and how each is pre-aggregated per micro-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    CountStar,
    Count,
    Sum,
    Min,
    Max,
    Avg,
    CountDistinct,
}

impl AggKind {
    pub fn from_name(name: &str, distinct: bool, star: bool) -> Option<AggKind> {
        Some(match (name, distinct, star) {
            ("count", false, true) => AggKind::CountStar,
            ("count", false, false) => AggKind::Count,
            ("count", true, false) => AggKind::CountDistinct,
            ("sum", false, false) => AggKind::Sum,
            ("min", _, false) => AggKind::Min,
            ("max", _, false) => AggKind::Max,
            ("avg" | "mean", false, false) => AggKind::Avg,
            _ => return None,
        })
    }

    /// The partial aggregate(s) computed by DataFusion over one micro-batch, as SQL over `arg`.
    pub fn partial_sql(&self, arg: &str) -> Vec<String> {
        match self {
            AggKind::CountStar => vec!["count(*)".into()],
            AggKind::Count => vec![format!("count({arg})")],
            AggKind::Sum => vec![format!("sum({arg})")],
            AggKind::Min => vec![format!("min({arg})")],
            AggKind::Max => vec![format!("max({arg})")],
            AggKind::Avg => vec![format!("sum(CAST({arg} AS DOUBLE))"), format!("count({arg})")],
            AggKind::CountDistinct => vec![format!("array_agg(DISTINCT {arg})")],
        }
    }
}

/// One partial aggregate.
#[derive(Debug, Clone, PartialEq)]
pub enum Acc {
    Count(i64),
    Sum(ScalarValue),
    Min(ScalarValue),
    Max(ScalarValue),
    Avg { sum: f64, count: i64 },
    Distinct(HashSet<ScalarValue>),
}

impl Acc {
    /// An empty accumulator; `partial_types` are the types of this aggregate's partial columns.
    pub fn empty(kind: AggKind, partial_types: &[DataType]) -> Result<Acc> {
        let null_of = |i: usize| -> Result<ScalarValue> {
            let t = partial_types
                .get(i)
                .ok_or_else(|| Error::Internal("missing partial type".into()))?;
            Ok(ScalarValue::try_from(t)?)
        };
        Ok(match kind {
            AggKind::CountStar | AggKind::Count => Acc::Count(0),
            AggKind::Sum => Acc::Sum(null_of(0)?),
            AggKind::Min => Acc::Min(null_of(0)?),
            AggKind::Max => Acc::Max(null_of(0)?),
            AggKind::Avg => Acc::Avg { sum: 0.0, count: 0 },
            AggKind::CountDistinct => Acc::Distinct(HashSet::new()),
        })
    }

    /// The type of the final value, given the partial column types.
    pub fn final_type(kind: AggKind, partial_types: &[DataType]) -> DataType {
        match kind {
            AggKind::CountStar | AggKind::Count | AggKind::CountDistinct => DataType::Int64,
            AggKind::Avg => DataType::Float64,
            AggKind::Sum | AggKind::Min | AggKind::Max => partial_types.first().cloned().unwrap_or(DataType::Null),
        }
    }

    /// Merge row `row` of this aggregate's partial columns.
    pub fn merge_row(&mut self, cols: &[ArrayRef], row: usize) -> Result<()> {
        let col = |i: usize| {
            cols.get(i)
                .ok_or_else(|| Error::Internal("missing partial column".into()))
        };
        match self {
            Acc::Count(n) => *n += int_at(col(0)?, row),
            Acc::Avg { sum, count } => {
                let s = ScalarValue::try_from_array(col(0)?, row)?;
                if let ScalarValue::Float64(Some(v)) = s {
                    *sum += v;
                }
                *count += int_at(col(1)?, row);
            }
            Acc::Sum(_) | Acc::Min(_) | Acc::Max(_) => {
                let v = ScalarValue::try_from_array(col(0)?, row)?;
                self.merge_scalar(v)?;
            }
            Acc::Distinct(set) => {
                let list = col(0)?;
                if list.is_null(row) {
                    return Ok(());
                }
                let values = match list.data_type() {
                    DataType::List(_) => list.as_list::<i32>().value(row),
                    DataType::LargeList(_) => list.as_list::<i64>().value(row),
                    other => return Err(Error::Internal(format!("COUNT(DISTINCT) partial is {other}"))),
                };
                for i in 0..values.len() {
                    if !values.is_null(i) {
                        set.insert(ScalarValue::try_from_array(&values, i)?);
                    }
                }
            }
        }
        Ok(())
    }

    fn merge_scalar(&mut self, v: ScalarValue) -> Result<()> {
        if v.is_null() {
            return Ok(());
        }
        match self {
            Acc::Sum(acc) => *acc = if acc.is_null() { v } else { acc.add(&v)? },
            Acc::Min(acc) => {
                if acc.is_null() || v.partial_cmp(acc) == Some(std::cmp::Ordering::Less) {
                    *acc = v;
                }
            }
            Acc::Max(acc) => {
                if acc.is_null() || v.partial_cmp(acc) == Some(std::cmp::Ordering::Greater) {
                    *acc = v;
                }
            }
            _ => return Err(Error::Internal("merge_scalar on a non-scalar accumulator".into())),
        }
        Ok(())
    }

    pub fn merge(&mut self, other: &Acc) -> Result<()> {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Avg { sum, count }, Acc::Avg { sum: s2, count: c2 }) => {
                *sum += s2;
                *count += c2;
            }
            (Acc::Distinct(a), Acc::Distinct(b)) => a.extend(b.iter().cloned()),
            (me @ (Acc::Sum(_) | Acc::Min(_) | Acc::Max(_)), Acc::Sum(v) | Acc::Min(v) | Acc::Max(v)) => {
                me.merge_scalar(v.clone())?
            }
            _ => return Err(Error::Internal("merging accumulators of different kinds".into())),
        }
        Ok(())
    }

    pub fn finish(&self) -> ScalarValue {
        match self {
            Acc::Count(n) => ScalarValue::Int64(Some(*n)),
            Acc::Sum(v) | Acc::Min(v) | Acc::Max(v) => v.clone(),
            Acc::Avg { sum, count } => ScalarValue::Float64((*count > 0).then(|| sum / *count as f64)),
            Acc::Distinct(set) => ScalarValue::Int64(Some(set.len() as i64)),
        }
    }
}

fn int_at(a: &ArrayRef, row: usize) -> i64 {
    a.as_any()
        .downcast_ref::<Int64Array>()
        .filter(|a| !a.is_null(row))
        .map(|a| a.value(row))
        .unwrap_or(0)
}

pub type Key = Vec<ScalarValue>;

/// One result row of a window: group key, bounds, final aggregate values.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRow {
    pub key: Key,
    pub start: i64,
    pub end: i64,
    pub values: Vec<ScalarValue>,
}

#[derive(Debug, Clone)]
struct Session {
    start: i64,
    end: i64,
    accs: Vec<Acc>,
}

/// Incremental window aggregation state for one continuous query.
pub struct WindowAggState {
    spec: WindowSpec,
    nkeys: usize,
    kinds: Vec<AggKind>,
    /// Index of each aggregate's first partial column in the pre-aggregated batch.
    partial_at: Vec<usize>,
    template: Vec<Acc>,
    panes: BTreeMap<i64, HashMap<Key, Vec<Acc>>>,
    sessions: HashMap<Key, Vec<Session>>,
    touched: BTreeSet<(i64, usize)>,
    touched_keys: Vec<Key>,
    touched_index: HashMap<Key, usize>,
    /// Whether to remember touched windows (only upsert sinks need them).
    track: bool,
    closed_through: i64,
}

impl WindowAggState {
    /// `pre_schema`: `k0..k{nkeys-1}, __pane, partials…` as produced by the pre-aggregation query.
    pub fn new(spec: WindowSpec, nkeys: usize, kinds: Vec<AggKind>, pre_schema: &Schema) -> Result<Self> {
        let mut partial_at = Vec::new();
        let mut template = Vec::new();
        let mut at = nkeys + 1;
        for k in &kinds {
            let n = k.partial_sql("x").len();
            let types: Vec<DataType> = (at..at + n)
                .map(|i| {
                    pre_schema
                        .fields()
                        .get(i)
                        .map(|f| f.data_type().clone())
                        .unwrap_or(DataType::Null)
                })
                .collect();
            partial_at.push(at);
            template.push(Acc::empty(*k, &types)?);
            at += n;
        }
        Ok(WindowAggState {
            spec,
            nkeys,
            kinds,
            partial_at,
            template,
            panes: BTreeMap::new(),
            sessions: HashMap::new(),
            touched: BTreeSet::new(),
            touched_keys: Vec::new(),
            touched_index: HashMap::new(),
            track: true,
            closed_through: i64::MIN,
        })
    }

    /// Output types of the final aggregates (for the post-query's input schema).
    pub fn final_types(&self, pre_schema: &Schema) -> Vec<DataType> {
        self.kinds
            .iter()
            .zip(&self.partial_at)
            .map(|(k, at)| {
                let t: Vec<DataType> = pre_schema
                    .fields()
                    .get(*at)
                    .map(|f| vec![f.data_type().clone()])
                    .unwrap_or_default();
                Acc::final_type(*k, &t)
            })
            .collect()
    }

    /// The oldest event time that open windows still hold (`i64::MAX` when empty).
    pub fn low_water(&self) -> i64 {
        let panes = self.panes.keys().next().copied().unwrap_or(i64::MAX);
        let sessions = self
            .sessions
            .values()
            .flat_map(|l| l.iter().map(|s| s.start))
            .min()
            .unwrap_or(i64::MAX);
        panes.min(sessions)
    }

    pub fn groups(&self) -> usize {
        self.panes.values().map(HashMap::len).sum::<usize>() + self.sessions.values().map(Vec::len).sum::<usize>()
    }

    /// Remember touched windows for [`Self::take_changed`] (on by default; append sinks turn it off).
    pub fn track_changes(&mut self, on: bool) {
        self.track = on;
    }

    fn touch(&mut self, start: i64, key: &Key) {
        if !self.track {
            return;
        }
        let idx = match self.touched_index.get(key) {
            Some(i) => *i,
            None => {
                self.touched_keys.push(key.clone());
                self.touched_index.insert(key.clone(), self.touched_keys.len() - 1);
                self.touched_keys.len() - 1
            }
        };
        self.touched.insert((start, idx));
    }

    /// Merge one pre-aggregated micro-batch.
    pub fn merge_batch(&mut self, pre: &RecordBatch) -> Result<()> {
        let keys: Vec<&ArrayRef> = (0..self.nkeys).map(|i| pre.column(i)).collect();
        let panes = pre
            .column(self.nkeys)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::Internal("__pane is not BIGINT".into()))?
            .clone();
        let cols: Vec<ArrayRef> = pre.columns().to_vec();
        for row in 0..pre.num_rows() {
            if panes.is_null(row) {
                continue;
            }
            let pane = panes.value(row);
            let key: Key = keys
                .iter()
                .map(|a| ScalarValue::try_from_array(a, row))
                .collect::<Result<_, _>>()?;
            let mut accs = self.template.clone();
            for (j, acc) in accs.iter_mut().enumerate() {
                let at = self.partial_at[j];
                let n = self.kinds[j].partial_sql("x").len();
                acc.merge_row(&cols[at..at + n], row)?;
            }
            match self.spec {
                WindowSpec::Session { gap } => self.merge_session(key, pane, pane + gap, accs)?,
                _ => {
                    let group = self.panes.entry(pane).or_default();
                    match group.get_mut(&key) {
                        Some(existing) => {
                            for (a, b) in existing.iter_mut().zip(&accs) {
                                a.merge(b)?;
                            }
                        }
                        None => {
                            group.insert(key.clone(), accs);
                        }
                    }
                    if self.track {
                        let starts: Vec<i64> = self.spec.windows_of(pane).collect();
                        for s in starts {
                            self.touch(s, &key);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn merge_session(&mut self, key: Key, start: i64, end: i64, accs: Vec<Acc>) -> Result<()> {
        let list = self.sessions.entry(key.clone()).or_default();
        let mut merged = Session { start, end, accs };
        let mut keep = Vec::with_capacity(list.len());
        for s in list.drain(..) {
            if s.start < merged.end && merged.start < s.end {
                merged.start = merged.start.min(s.start);
                merged.end = merged.end.max(s.end);
                for (a, b) in merged.accs.iter_mut().zip(&s.accs) {
                    a.merge(b)?;
                }
            } else {
                keep.push(s);
            }
        }
        keep.push(merged);
        keep.sort_by_key(|s| s.start);
        *list = keep;
        Ok(())
    }

    fn window_row(&self, start: i64, key: &Key) -> Result<Option<WindowRow>> {
        let (_, size) = self.spec.slide_size();
        let mut accs: Option<Vec<Acc>> = None;
        for (_, groups) in self.panes.range(start..start + size) {
            if let Some(a) = groups.get(key) {
                match &mut accs {
                    None => accs = Some(a.clone()),
                    Some(acc) => {
                        for (x, y) in acc.iter_mut().zip(a) {
                            x.merge(y)?;
                        }
                    }
                }
            }
        }
        Ok(accs.map(|accs| WindowRow {
            key: key.clone(),
            start,
            end: start + size,
            values: accs.iter().map(Acc::finish).collect(),
        }))
    }

    /// Current values of the windows touched since the last call (for upsert sinks). Session windows
    /// are reported when they close, since a merge changes their identity.
    pub fn take_changed(&mut self) -> Result<Vec<WindowRow>> {
        let touched = std::mem::take(&mut self.touched);
        let keys = std::mem::take(&mut self.touched_keys);
        self.touched_index.clear();
        let mut out = Vec::with_capacity(touched.len());
        for (start, k) in touched {
            if let Some(r) = self.window_row(start, &keys[k])? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Close every window whose end is at or before `watermark`; return their rows in window order and
    /// drop the state no open window needs.
    pub fn close(&mut self, watermark: i64) -> Result<Vec<WindowRow>> {
        let mut out = Vec::new();
        if let WindowSpec::Session { .. } = self.spec {
            for (key, list) in self.sessions.iter_mut() {
                list.retain(|s| {
                    if s.end <= watermark {
                        out.push(WindowRow {
                            key: key.clone(),
                            start: s.start,
                            end: s.end,
                            values: s.accs.iter().map(Acc::finish).collect(),
                        });
                        false
                    } else {
                        true
                    }
                });
            }
            self.sessions.retain(|_, l| !l.is_empty());
            out.sort_by_key(|r| (r.start, r.end));
            return Ok(out);
        }
        let (_, size) = self.spec.slide_size();
        let mut starts = BTreeSet::new();
        for &p in self.panes.keys() {
            if p >= watermark {
                break;
            }
            for s in self.spec.windows_of(p) {
                let end = s.saturating_add(size);
                if end <= watermark && end > self.closed_through {
                    starts.insert(s);
                }
            }
        }
        for s in starts {
            let mut keys: Vec<&Key> = Vec::new();
            let mut seen: HashSet<&Key> = HashSet::new();
            for (_, groups) in self.panes.range(s..s + size) {
                for k in groups.keys() {
                    if seen.insert(k) {
                        keys.push(k);
                    }
                }
            }
            for k in keys {
                if let Some(r) = self.window_row(s, k)? {
                    out.push(r);
                }
            }
        }
        let spec = self.spec;
        self.panes.retain(|p, _| spec.last_end(*p) > watermark);
        self.closed_through = self.closed_through.max(watermark);
        Ok(out)
    }
}

/// Schema of the rows handed to the post-query: `__k0.., window_start, window_end, __a0.., __id`
/// (`__id` is the row's upsert identity, see [`row_identity`]).
pub fn agg_schema(key_types: &[DataType], final_types: &[DataType]) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let mut fields = Vec::new();
    for (i, t) in key_types.iter().enumerate() {
        fields.push(Field::new(format!("__k{i}"), t.clone(), true));
    }
    fields.push(Field::new("window_start", ts.clone(), false));
    fields.push(Field::new("window_end", ts, false));
    for (i, t) in final_types.iter().enumerate() {
        fields.push(Field::new(format!("__a{i}"), t.clone(), true));
    }
    fields.push(Field::new("__id", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// Rows to an Arrow batch of `schema` (see [`agg_schema`]); columns are filled by name.
pub fn rows_to_batch(schema: &SchemaRef, rows: &[WindowRow]) -> Result<RecordBatch> {
    let index = |name: &str, prefix: &str| name.strip_prefix(prefix).and_then(|i| i.parse::<usize>().ok());
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let name = f.name().as_str();
        if name == "__id" {
            cols.push(Arc::new(StringArray::from_iter_values(rows.iter().map(row_identity))));
            continue;
        }
        let scalars: Vec<ScalarValue> = match name {
            "window_start" => rows
                .iter()
                .map(|r| ScalarValue::TimestampMillisecond(Some(r.start), None))
                .collect(),
            "window_end" => rows
                .iter()
                .map(|r| ScalarValue::TimestampMillisecond(Some(r.end), None))
                .collect(),
            _ => match (index(name, "__k"), index(name, "__a")) {
                (Some(k), _) => rows.iter().map(|r| r.key[k].clone()).collect(),
                (_, Some(a)) => rows.iter().map(|r| r.values[a].clone()).collect(),
                _ => return Err(Error::Internal(format!("unexpected window column '{name}'"))),
            },
        };
        let arr = if scalars.is_empty() {
            new_empty_array(f.data_type())
        } else {
            let a = ScalarValue::iter_to_array(scalars)?;
            if a.data_type() != f.data_type() {
                datafusion::arrow::compute::cast(&a, f.data_type())?
            } else {
                a
            }
        };
        cols.push(arr);
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// A stable text identity of a window row (group key + bounds), used as the upsert key.
pub fn row_identity(r: &WindowRow) -> String {
    let mut s = String::new();
    for k in &r.key {
        s.push_str(&k.to_string());
        s.push('\u{1f}');
    }
    s.push_str(&r.start.to_string());
    s.push('\u{1f}');
    s.push_str(&r.end.to_string());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;

    #[test]
    fn hop_windows_of_a_pane() {
        let hop = WindowSpec::Hop {
            slide: 2_000,
            size: 10_000,
        };
        assert_eq!(hop.pane(), 2_000);
        let w: Vec<i64> = hop.windows_of(10_000).collect();
        assert_eq!(w, vec![10_000, 8_000, 6_000, 4_000, 2_000]);
        let odd = WindowSpec::Hop {
            slide: 4_000,
            size: 6_000,
        };
        assert_eq!(odd.pane(), 2_000);
        assert_eq!(odd.windows_of(2_000).collect::<Vec<_>>(), vec![0]);
        assert_eq!(odd.windows_of(4_000).collect::<Vec<_>>(), vec![4_000, 0]);
        assert_eq!(
            WindowSpec::Tumble { size: 60_000 }
                .windows_of(120_000)
                .collect::<Vec<_>>(),
            vec![120_000]
        );
    }

    fn pre_batch(keys: &[&str], panes: &[i64], counts: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("__pane", DataType::Int64, false),
            Field::new("c", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(panes.to_vec())),
                Arc::new(Int64Array::from(counts.to_vec())),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn hop_merges_panes_and_evicts() {
        let b = pre_batch(&["a", "a", "b"], &[0, 2_000, 2_000], &[1, 2, 5]);
        let mut st = WindowAggState::new(
            WindowSpec::Hop {
                slide: 2_000,
                size: 4_000,
            },
            1,
            vec![AggKind::CountStar],
            &b.schema(),
        )
        .expect("state");
        st.merge_batch(&b).expect("merge");
        let changed = st.take_changed().expect("changed");
        // a: windows -2000 (pane 0), 0 (panes 0,2000), 2000 (pane 2000); b: windows 0, 2000
        assert_eq!(changed.len(), 5);
        let closed = st.close(4_000).expect("close");
        let got: Vec<(i64, String, ScalarValue)> = closed
            .iter()
            .map(|r| (r.start, r.key[0].to_string(), r.values[0].clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (-2_000, "a".into(), ScalarValue::Int64(Some(1))),
                (0, "a".into(), ScalarValue::Int64(Some(3))),
                (0, "b".into(), ScalarValue::Int64(Some(5))),
            ]
        );
        assert_eq!(st.groups(), 2, "pane 0 evicted, pane 2000 still needed");
        let closed = st.close(i64::MAX).expect("close all");
        assert_eq!(closed.len(), 2);
        assert_eq!(st.groups(), 0);
        assert!(st.close(i64::MAX).expect("again").is_empty(), "windows close once");
    }

    #[test]
    fn sessions_merge_when_bridged() {
        let b = pre_batch(&["u", "u", "v"], &[0, 10_000, 1_000], &[1, 1, 1]);
        let mut st = WindowAggState::new(
            WindowSpec::Session { gap: 6_000 },
            1,
            vec![AggKind::CountStar],
            &b.schema(),
        )
        .expect("state");
        st.merge_batch(&b).expect("merge");
        assert_eq!(st.groups(), 3);
        // an event at 5000 bridges u's sessions [0,6000) and [10000,16000)
        st.merge_batch(&pre_batch(&["u"], &[5_000], &[2])).expect("merge");
        assert_eq!(st.groups(), 2);
        let closed = st.close(i64::MAX).expect("close");
        let got: Vec<(String, i64, i64, ScalarValue)> = closed
            .iter()
            .map(|r| (r.key[0].to_string(), r.start, r.end, r.values[0].clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("u".into(), 0, 16_000, ScalarValue::Int64(Some(4))),
                ("v".into(), 1_000, 7_000, ScalarValue::Int64(Some(1)))
            ]
        );
    }

    #[test]
    fn accumulators_merge() {
        let mut a = Acc::Min(ScalarValue::Int64(None));
        a.merge(&Acc::Min(ScalarValue::Int64(Some(5)))).expect("m");
        a.merge(&Acc::Min(ScalarValue::Int64(Some(3)))).expect("m");
        a.merge(&Acc::Min(ScalarValue::Int64(None))).expect("m");
        assert_eq!(a.finish(), ScalarValue::Int64(Some(3)));
        let mut s = Acc::Sum(ScalarValue::Float64(None));
        s.merge(&Acc::Sum(ScalarValue::Float64(Some(1.5)))).expect("m");
        s.merge(&Acc::Sum(ScalarValue::Float64(Some(2.0)))).expect("m");
        assert_eq!(s.finish(), ScalarValue::Float64(Some(3.5)));
        let mut avg = Acc::Avg { sum: 3.0, count: 2 };
        avg.merge(&Acc::Avg { sum: 3.0, count: 1 }).expect("m");
        assert_eq!(avg.finish(), ScalarValue::Float64(Some(2.0)));
        assert_eq!(Acc::Avg { sum: 0.0, count: 0 }.finish(), ScalarValue::Float64(None));
        assert!(Acc::Count(1).merge(&Acc::Avg { sum: 0.0, count: 0 }).is_err());
    }
}
