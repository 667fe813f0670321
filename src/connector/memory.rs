//! In-memory result tables: what a `CREATE MATERIALIZED VIEW` maintains and a plain `SELECT` reads.
//! A changelog is applied by key: `+I`/`+U` insert or replace the row with that key, `-U`/`-D`
//! remove it. Without a key (an append-only result, or a changelog whose key was projected away) the
//! whole row is its identity: inserts add a row, retractions remove one equal row.
//!
//! Later continuous queries read a materialized view as a changelog stream ([`MvSource`]): its rows
//! when they start, then every change as a full changelog (`+I`, `-U`/`+U` with the replaced row,
//! `-D` with the removed row), whatever form the view's own query wrote it in.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int8Array, ListArray, UInt32Array, new_empty_array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::datatypes::UInt32Type;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;

use super::{Output, Poll, Sink, SinkMode, Source};
use crate::error::Result;
use crate::operator::RowKind;
use crate::operator::state::{OpState, column, plain_table};

/// A held row: its identity bytes and its values.
type Held = (Box<[u8]>, Vec<ScalarValue>);

#[derive(Default)]
struct Rows {
    /// Rows (with their identity) in arrival order; `None` where a row was removed.
    rows: Vec<Option<Held>>,
    live: usize,
    /// Identity bytes → positions of the rows with it (one for keyed rows).
    index: HashMap<Box<[u8]>, Vec<usize>>,
    /// The key columns the index was built for (`None`: the whole row).
    key: Option<Arc<[usize]>>,
    converter: Option<RowConverter>,
    /// Queries reading this table as a stream.
    subscribers: Vec<Sender<Change>>,
    /// The query writing it ended (its input was bounded).
    closed: bool,
    /// The query writing it ends by itself.
    bounded: bool,
}

/// Changes applied to a table, as a full changelog.
pub struct Change {
    pub batch: RecordBatch,
    pub kinds: Int8Array,
}

#[derive(Clone)]
pub struct MemoryTable {
    schema: SchemaRef,
    rows: Arc<Mutex<Rows>>,
}

impl std::fmt::Debug for MemoryTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryTable({} rows)", self.len())
    }
}

impl MemoryTable {
    pub fn new(schema: SchemaRef) -> Self {
        MemoryTable {
            schema,
            rows: Arc::new(Mutex::new(Rows::default())),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn len(&self) -> usize {
        self.lock().live
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn apply(&self, out: &Output) -> Result<()> {
        let b = &out.batch;
        if b.num_rows() == 0 {
            return Ok(());
        }
        let mut rows = self.lock();
        if rows.converter.is_none() || rows.key != out.key {
            let cols: Vec<usize> = match &out.key {
                Some(k) => k.to_vec(),
                None => (0..b.num_columns()).collect(),
            };
            rows.converter = Some(RowConverter::new(
                cols.iter()
                    .map(|i| SortField::new(b.schema().field(*i).data_type().clone()))
                    .collect(),
            )?);
            if rows.key != out.key {
                // Re-index what is held under the new identity (only happens on a restart).
                rows.key = out.key.clone();
                rows.index.clear();
            }
        }
        let key_cols: Vec<ArrayRef> = match &out.key {
            Some(k) => k.iter().map(|i| b.column(*i).clone()).collect(),
            None => b.columns().to_vec(),
        };
        // An empty key (a global aggregate) identifies its one row: every row has the same identity.
        let ids = match (&rows.converter, key_cols.is_empty()) {
            (Some(c), false) => Some(c.convert_columns(&key_cols)?),
            _ => None,
        };
        let keyed = out.key.is_some();
        let tell = !rows.subscribers.is_empty();
        let mut changes: Vec<(RowKind, Vec<ScalarValue>)> = Vec::new();
        for r in 0..b.num_rows() {
            let id: Box<[u8]> = match &ids {
                Some(ids) => ids.row(r).as_ref().into(),
                None => Box::new([]),
            };
            if out.kind(r).is_add() {
                let row: Vec<ScalarValue> = b
                    .columns()
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, r))
                    .collect::<Result<_, _>>()?;
                let existing = if keyed {
                    rows.index.get(&id).and_then(|v| v.first().copied())
                } else {
                    None
                };
                match existing {
                    Some(at) => {
                        let old = rows.rows[at].replace((id, row.clone()));
                        if tell && let Some((_, old)) = old {
                            changes.push((RowKind::UpdateBefore, old));
                            changes.push((RowKind::UpdateAfter, row));
                        }
                    }
                    None => {
                        let at = rows.rows.len();
                        if tell {
                            changes.push((RowKind::Insert, row.clone()));
                        }
                        rows.rows.push(Some((id.clone(), row)));
                        rows.live += 1;
                        rows.index.entry(id).or_default().push(at);
                    }
                }
            } else if let Some(list) = rows.index.get_mut(&id)
                && let Some(at) = list.pop()
            {
                if list.is_empty() {
                    rows.index.remove(&id);
                }
                if let Some((_, old)) = rows.rows[at].take() {
                    rows.live -= 1;
                    if tell {
                        changes.push((RowKind::Delete, old));
                    }
                }
            }
        }
        if tell && !changes.is_empty() {
            let kinds = Int8Array::from_iter_values(changes.iter().map(|(k, _)| *k as i8));
            let batch = Self::rows_batch(&self.schema, changes.iter().map(|(_, r)| r))?;
            rows.subscribers.retain(|s| {
                s.send(Change {
                    batch: batch.clone(),
                    kinds: kinds.clone(),
                })
                .is_ok()
            });
        }
        // Compact when most slots are empty.
        if rows.rows.len() > 1024 && rows.live * 2 < rows.rows.len() {
            let kept: Vec<Option<Held>> = rows.rows.drain(..).filter(Option::is_some).collect();
            let mut index: HashMap<Box<[u8]>, Vec<usize>> = HashMap::new();
            for (at, r) in kept.iter().enumerate() {
                if let Some((id, _)) = r {
                    index.entry(id.clone()).or_default().push(at);
                }
            }
            rows.rows = kept;
            rows.index = index;
        }
        Ok(())
    }

    /// Forget every row (a restarted process starts with empty in-memory tables).
    pub fn clear(&self) {
        let mut r = self.lock();
        r.rows.clear();
        r.index.clear();
        r.live = 0;
        r.key = None;
        r.converter = None;
        r.closed = false;
    }

    fn to_batch(schema: &SchemaRef, rows: &[Option<Held>]) -> Result<RecordBatch> {
        Self::rows_batch(schema, rows.iter().flatten().map(|(_, r)| r))
    }

    fn rows_batch<'a>(schema: &SchemaRef, rows: impl Iterator<Item = &'a Vec<ScalarValue>>) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        let live: Vec<&Vec<ScalarValue>> = rows.collect();
        for (i, f) in schema.fields().iter().enumerate() {
            if live.is_empty() {
                cols.push(new_empty_array(f.data_type()));
            } else {
                let a = ScalarValue::iter_to_array(live.iter().map(|r| r[i].clone()))?;
                cols.push(if a.data_type() == f.data_type() {
                    a
                } else {
                    datafusion::arrow::compute::cast(&a, f.data_type())?
                });
            }
        }
        Ok(RecordBatch::try_new_with_options(
            schema.clone(),
            cols,
            &datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(live.len())),
        )?)
    }

    /// The current contents as one batch.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let rows = self.lock();
        Self::to_batch(&self.schema, &rows.rows)
    }

    /// Read this table as a stream: its rows now, then its changes.
    pub fn subscribe(&self) -> Result<MvSource> {
        let (tx, rx) = channel();
        let mut rows = self.lock();
        let first = Self::to_batch(&self.schema, &rows.rows)?;
        rows.subscribers.push(tx);
        Ok(MvSource {
            table: self.clone(),
            first: (first.num_rows() > 0).then_some(first),
            rx,
            seen: Seen::new(&self.schema),
            restored: false,
        })
    }

    /// The query writing this table ends by itself (so do the streams read from it).
    pub fn set_bounded(&self, bounded: bool) {
        self.lock().bounded = bounded;
    }

    /// The query writing this table has ended.
    pub fn close(&self) {
        self.lock().closed = true;
    }
}

/// A materialized view read as a changelog stream (see the module doc).
///
/// The reader checkpoints the view as it has consumed it (`seen`), not a position: the view's
/// own query restores it from a checkpoint of its own, taken at another moment. After a restart
/// the reader first emits the difference between what it had seen and the view now (deletes,
/// then inserts), then the view's changes: downstream state, restored with `seen`, ends where an
/// uninterrupted reader would be, with the changes in between coalesced.
pub struct MvSource {
    table: MemoryTable,
    first: Option<RecordBatch>,
    rx: Receiver<Change>,
    /// The rows consumed so far; an error when the view's column types have no row format (the
    /// reader then cannot be checkpointed).
    seen: Result<Seen, datafusion::arrow::error::ArrowError>,
    /// `seen` came from a checkpoint: the first poll emits the difference to the view now.
    restored: bool,
}

/// A multiset of rows in arrow's row format.
struct Seen {
    converter: RowConverter,
    rows: HashMap<Box<[u8]>, usize>,
}

impl Seen {
    fn new(schema: &SchemaRef) -> Result<Seen, datafusion::arrow::error::ArrowError> {
        let fields = schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(Seen {
            converter: RowConverter::new(fields)?,
            rows: HashMap::new(),
        })
    }

    /// Count in (or out, for retractions) the rows of a changelog batch.
    fn apply(&mut self, batch: &RecordBatch, kinds: Option<&Int8Array>) -> Result<()> {
        let converted = self.converter.convert_columns(batch.columns())?;
        for (i, row) in converted.iter().enumerate() {
            let add = kinds.is_none_or(|k| RowKind::from_i8(k.value(i)).is_add());
            if add {
                *self.rows.entry(row.as_ref().into()).or_default() += 1;
            } else if let Some(n) = self.rows.get_mut(row.as_ref()) {
                *n -= 1;
                if *n == 0 {
                    self.rows.remove(row.as_ref());
                }
            }
        }
        Ok(())
    }

    /// The rows as a batch of `schema` (each as many times as it is held).
    fn batch(&self, schema: &SchemaRef) -> Result<RecordBatch> {
        let parser = self.converter.parser();
        let columns = self.converter.convert_rows(
            self.rows
                .iter()
                .flat_map(|(row, n)| std::iter::repeat_n(parser.parse(row), *n)),
        )?;
        Ok(RecordBatch::try_new_with_options(
            schema.clone(),
            columns,
            &datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(self.rows.values().sum())),
        )?)
    }
}

impl MvSource {
    /// After a restart: what the view gained (inserts) and lost (deletes) since the checkpoint,
    /// as one changelog batch (`None` when nothing changed). `seen` becomes the view now.
    fn catch_up(&mut self) -> Result<Option<(RecordBatch, Int8Array)>> {
        let schema = self.table.schema();
        let Ok(seen) = &mut self.seen else {
            return Ok(None);
        };
        let now = self
            .first
            .take()
            .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
        let converted = seen.converter.convert_columns(now.columns())?;
        let mut gone = Seen::new(&schema)?;
        gone.rows = std::mem::take(&mut seen.rows);
        let mut inserted = Vec::new();
        for (i, row) in converted.iter().enumerate() {
            *seen.rows.entry(row.as_ref().into()).or_default() += 1;
            match gone.rows.get_mut(row.as_ref()) {
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        gone.rows.remove(row.as_ref());
                    }
                }
                None => inserted.push(i as u32),
            }
        }
        let deleted = gone.batch(&schema)?;
        let inserted = datafusion::arrow::compute::take_record_batch(&now, &UInt32Array::from(inserted))?;
        if deleted.num_rows() + inserted.num_rows() == 0 {
            return Ok(None);
        }
        let kinds = Int8Array::from_iter_values(
            std::iter::repeat_n(RowKind::Delete as i8, deleted.num_rows())
                .chain(std::iter::repeat_n(RowKind::Insert as i8, inserted.num_rows())),
        );
        let batch = datafusion::arrow::compute::concat_batches(&schema, [&deleted, &inserted])?;
        Ok(Some((batch, kinds)))
    }

    fn seen_mut(&mut self) -> Option<&mut Seen> {
        self.seen.as_mut().ok()
    }
}

impl Source for MvSource {
    fn poll(&mut self, _max: usize) -> Result<Poll> {
        if self.restored {
            self.restored = false;
            if let Some((batch, kinds)) = self.catch_up()? {
                return Ok(Poll::Changes(batch, kinds));
            }
        }
        if let Some(b) = self.first.take() {
            if let Some(seen) = self.seen_mut() {
                seen.apply(&b, None)?;
            }
            return Ok(Poll::Ready(Some(b), Vec::new()));
        }
        let change = match self.rx.try_recv() {
            Ok(c) => c,
            Err(TryRecvError::Empty) if self.table.lock().closed => {
                // Closed after its last change was sent: drained.
                match self.rx.try_recv() {
                    Ok(c) => c,
                    Err(_) => return Ok(Poll::Exhausted),
                }
            }
            Err(TryRecvError::Empty) => return Ok(Poll::Pending),
            Err(TryRecvError::Disconnected) => return Ok(Poll::Exhausted),
        };
        if let Some(seen) = self.seen_mut() {
            seen.apply(&change.batch, Some(&change.kinds))?;
        }
        Ok(Poll::Changes(change.batch, change.kinds))
    }

    fn bounded(&self) -> bool {
        self.table.lock().bounded
    }

    fn snapshot(&self) -> Result<Option<OpState>> {
        let seen = self.seen.as_ref().map_err(|e| {
            crate::error::Error::plan(format!(
                "a materialized view read as a stream needs column types with a row format: {e}"
            ))
        })?;
        let mut st = OpState::new();
        st.put("seen", seen.batch(&self.table.schema())?);
        Ok(Some(st))
    }

    fn restore(&mut self, mut state: OpState) -> Result<()> {
        let table = state.take("seen")?;
        let schema = self.table.schema();
        let Ok(seen) = &mut self.seen else {
            return Err(crate::error::Error::plan("this view's reader cannot be restored"));
        };
        if table.schema().fields().len() != schema.fields().len() {
            return Err(crate::error::Error::Internal(format!(
                "the checkpoint saw the view with {} columns, the view has {}",
                table.schema().fields().len(),
                schema.fields().len()
            )));
        }
        seen.rows.clear();
        seen.apply(&table, None)?;
        self.restored = true;
        Ok(())
    }
}

/// The sink side of a materialized view (or a live REPL query).
pub struct MemorySink(pub MemoryTable);

impl Sink for MemorySink {
    fn mode(&self) -> SinkMode {
        SinkMode::Upsert
    }
    fn write(&mut self, out: &Output) -> Result<()> {
        self.0.apply(out)
    }
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
    fn close(&mut self) -> Result<()> {
        self.0.close();
        Ok(())
    }

    /// The view's rows and the columns that identify them: a restarted query gets its view back
    /// whole, not empty.
    fn snapshot(&self) -> Result<Option<OpState>> {
        let rows = self.0.snapshot()?;
        let key = self.0.lock().key.clone();
        let mut st = OpState::new();
        st.put("rows", rows);
        let keyed = BooleanArray::from(vec![key.is_some()]);
        let cols = UInt32Array::from_iter_values(key.iter().flat_map(|k| k.iter().map(|c| *c as u32)));
        st.put(
            "key",
            plain_table(vec![(
                "columns",
                Arc::new(ListArray::from_iter_primitive::<UInt32Type, _, _>(vec![Some(
                    cols.values().iter().map(|c| Some(*c)).collect::<Vec<_>>(),
                )])) as ArrayRef,
            )])?,
        );
        st.put("keyed", plain_table(vec![("keyed", Arc::new(keyed) as ArrayRef)])?);
        Ok(Some(st))
    }

    fn restore(&mut self, mut state: OpState) -> Result<()> {
        let rows = state.take("rows")?;
        let keyed = state.take("keyed")?;
        let keyed = column::<BooleanArray>(&keyed, "keyed")?;
        let key = state.take("key")?;
        let lists = column::<ListArray>(&key, "columns")?;
        let key: Option<Arc<[usize]>> = if keyed.len() == 1 && keyed.value(0) && lists.len() == 1 {
            let v = lists.value(0);
            let v = v
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| crate::error::Error::Internal("view key columns are not UInt32".into()))?;
            Some(v.values().iter().map(|c| *c as usize).collect::<Vec<_>>().into())
        } else {
            None
        };
        if rows.schema().fields().len() != self.0.schema.fields().len() {
            return Err(crate::error::Error::Internal(format!(
                "the view's checkpoint has {} columns, the view {}",
                rows.schema().fields().len(),
                self.0.schema.fields().len()
            )));
        }
        self.0.clear();
        let batch = RecordBatch::try_new(self.0.schema.clone(), rows.columns().to_vec())?;
        self.0.apply(&Output {
            batch,
            kinds: None,
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::RowKind;
    use datafusion::arrow::array::{AsArray, Int8Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn out(keys: &[&str], vals: &[i64], kinds: &[RowKind], key: Option<Vec<usize>>) -> Output {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        Output {
            batch: RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from(keys.to_vec())),
                    Arc::new(Int64Array::from(vals.to_vec())),
                ],
            )
            .expect("b"),
            kinds: Some(Int8Array::from_iter_values(kinds.iter().map(|k| *k as i8))),
            key: key.map(Into::into),
        }
    }

    fn contents(t: &MemoryTable) -> Vec<(String, i64)> {
        let b = t.snapshot().expect("snapshot");
        let mut v: Vec<(String, i64)> = (0..b.num_rows())
            .map(|i| {
                (
                    b.column(0).as_string::<i32>().value(i).to_string(),
                    b.column(1).as_primitive::<Int64Type>().value(i),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Every row a reader got, as (kind, key, value), until it has nothing more.
    fn drain(src: &mut MvSource) -> Vec<(RowKind, String, i64)> {
        let mut got = Vec::new();
        loop {
            let (b, kinds) = match src.poll(1000).expect("poll") {
                Poll::Ready(Some(b), _) => (b, None),
                Poll::Changes(b, k) => (b, Some(k)),
                _ => return got,
            };
            for i in 0..b.num_rows() {
                got.push((
                    kinds.as_ref().map_or(RowKind::Insert, |k| RowKind::from_i8(k.value(i))),
                    b.column(0).as_string::<i32>().value(i).to_string(),
                    b.column(1).as_primitive::<Int64Type>().value(i),
                ));
            }
        }
    }

    #[test]
    fn a_reader_restored_from_its_checkpoint_catches_up_with_the_view_by_its_difference() {
        use RowKind::*;
        let table = MemoryTable::new(out(&[], &[], &[], None).batch.schema());
        table
            .apply(&out(&["a", "b", "b"], &[1, 2, 2], &[Insert, Insert, Insert], None))
            .expect("w");
        let mut reader = table.subscribe().expect("subscribe");
        assert_eq!(drain(&mut reader).len(), 3);
        table.apply(&out(&["a"], &[1], &[Delete], None)).expect("w");
        table.apply(&out(&["c"], &[3], &[Insert], None)).expect("w");
        assert_eq!(
            drain(&mut reader),
            vec![(Delete, "a".into(), 1), (Insert, "c".into(), 3)]
        );
        // The reader's checkpoint: {b 2, b 2, c 3}, through Arrow IPC.
        let mut state = reader.snapshot().expect("snapshot").expect("a reader has state");
        for (_, t) in &mut state.tables {
            *t = crate::operator::state::from_ipc(&crate::operator::state::to_ipc(t).expect("ipc")).expect("ipc");
        }
        // The view moved on before the restart (its own query checkpointed later): one b gone,
        // d added, c unchanged.
        table
            .apply(&out(&["b", "d"], &[2, 4], &[Delete, Insert], None))
            .expect("w");
        let mut again = table.subscribe().expect("subscribe");
        again.restore(state).expect("restore");
        assert_eq!(
            drain(&mut again),
            vec![(Delete, "b".into(), 2), (Insert, "d".into(), 4)]
        );
        // Then the view's own changes, as for any reader.
        table.apply(&out(&["e"], &[5], &[Insert], None)).expect("w");
        assert_eq!(drain(&mut again), vec![(Insert, "e".into(), 5)]);
        // Nothing changed since the checkpoint: nothing to catch up.
        let st = again.snapshot().expect("snapshot").expect("state");
        let mut third = table.subscribe().expect("subscribe");
        third.restore(st).expect("restore");
        assert!(drain(&mut third).is_empty());
    }

    #[test]
    fn a_view_comes_back_whole_from_its_checkpoint_with_its_key() {
        use RowKind::*;
        let schema = out(&[], &[], &[], None).batch.schema();
        let mut sink = MemorySink(MemoryTable::new(schema.clone()));
        sink.write(&out(
            &["a", "b", "c"],
            &[1, 2, 3],
            &[Insert, Insert, Insert],
            Some(vec![0]),
        ))
        .expect("w");
        sink.write(&out(
            &["b", "b", "c"],
            &[2, 5, 3],
            &[UpdateBefore, UpdateAfter, Delete],
            Some(vec![0]),
        ))
        .expect("w");
        let mut state = sink.snapshot().expect("snapshot").expect("a view has state");
        for (_, t) in &mut state.tables {
            *t = crate::operator::state::from_ipc(&crate::operator::state::to_ipc(t).expect("ipc")).expect("ipc");
        }
        let mut again = MemorySink(MemoryTable::new(schema));
        again.restore(state.clone()).expect("restore");
        assert_eq!(contents(&again.0), vec![("a".into(), 1), ("b".into(), 5)]);
        // The key came back too: an update replaces the row instead of adding one.
        again
            .write(&out(&["a", "a"], &[1, 9], &[UpdateBefore, UpdateAfter], Some(vec![0])))
            .expect("w");
        assert_eq!(contents(&again.0), vec![("a".into(), 9), ("b".into(), 5)]);
        state.tables.retain(|(n, _)| n != "keyed");
        assert!(
            MemorySink(MemoryTable::new(out(&[], &[], &[], None).batch.schema()))
                .restore(state)
                .is_err()
        );
    }

    #[test]
    fn applies_a_changelog_by_key_or_by_row() {
        use RowKind::*;
        let keyed = out(
            &["a", "b", "a", "a", "b"],
            &[1, 2, 1, 5, 2],
            &[Insert, Insert, UpdateBefore, UpdateAfter, Delete],
            Some(vec![0]),
        );
        let t = MemoryTable::new(keyed.batch.schema());
        t.apply(&keyed).expect("apply");
        let s = t.snapshot().expect("snap");
        assert_eq!(s.num_rows(), 1);
        assert_eq!(s.column(1).as_primitive::<Int64Type>().value(0), 5);
        let rows = out(&["x", "x", "x"], &[1, 1, 1], &[Insert, Insert, Delete], None);
        let t = MemoryTable::new(rows.batch.schema());
        t.apply(&rows).expect("apply");
        assert_eq!(t.len(), 1, "a retraction removes one equal row");
    }
}
