//! Regular stream–stream join (Flink's `StreamingJoinOperator`): both inputs are kept, each row until
//! it is retracted, because a row that arrives on one side may match any row ever seen on the other.
//! There is no time bound, so the state is not bounded either: it is what a plain `JOIN` between two
//! streams costs, and EXPLAIN says so. Window and interval joins (`plan::join_time`) are the bounded
//! alternatives.
//!
//! **State.** Per side, the rows in Arrow's row format, grouped by join key ([`GroupTable`], one key
//! space for both sides), each with its multiplicity and its number of matches on the other side (the
//! rows with the same key that pass the residual condition, counted with multiplicity). A side whose
//! input may retract also indexes its rows by content (a retraction finds its row, a duplicate its
//! count); a side planned insert-only does not — a duplicate is a row of its own — which saves
//! hashing every stored row whole (in a profile of Nexmark q9, 6.5 % of all CPU went to that hash).
//!
//! **Changes.** Inputs may be changelogs (an updating aggregate below): a retraction takes back what
//! its insert did. The match counts drive the rows that do not pair up: an outer side's row is shown
//! NULL-padded while it has no match (retracted with `-D` when its first match arrives, shown again when
//! its last match goes); a semi join shows a row while it has a match, an anti join while it has none.
//! Rows are processed in arrival order, so the changelog is the same whatever the micro-batch size.
//!
//! NULL keys match nothing (unless the join says NULLs are equal); such rows are never stored: an
//! outer or anti side shows them at once, and takes them back when they are retracted.

use datafusion::common::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int8Array, Int64Array, UInt32Array, UInt64Array, new_null_array,
};
use datafusion::arrow::compute::{cast, interleave, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::PhysicalExpr;

use super::groups::GroupTable;
use super::state::{self, OpState};
use super::{ChangeBatch, Context, Operator, RowKind, batch_of, conformed_batch};
use crate::error::{Error, Result};

/// How a side's rows show in the output on their own (not paired with a row of the other side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// An outer side: the row, NULL-padded, while it has no match.
    Padded,
    /// A semi join's side: the row alone while it has a match.
    Semi,
    /// An anti join's side: the row alone while it has no match.
    Anti,
}

impl Emit {
    /// Whether a row with `matches` matches is shown.
    pub fn shown(self, matches: u64) -> bool {
        (matches > 0) == (self == Emit::Semi)
    }
}

#[derive(Clone)]
pub struct Config {
    /// Emit matched pairs (every join but semi and anti joins).
    pub pairs: bool,
    /// Per side (left, right): how its rows show on their own, if they do.
    pub emit: [Option<Emit>; 2],
    /// Equi-join key expressions per side (left, right); empty for a join on a condition only.
    pub keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    pub key_types: Vec<DataType>,
    /// `NULL = NULL` matches (`IS NOT DISTINCT FROM` keys).
    pub null_equal: bool,
    /// The residual condition, over `pair_schema`.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// Input schemas (left, right).
    pub inputs: [SchemaRef; 2],
    /// Per side: its input only inserts (no retraction can come), so its rows need no index by
    /// content — a duplicate is held as a row of its own, and no row is hashed whole.
    pub append_only: [bool; 2],
    /// Left columns, then right columns.
    pub pair_schema: SchemaRef,
    /// The output: `pair_schema` (with outer sides nullable), or one side's columns for semi and anti
    /// joins.
    pub schema: SchemaRef,
}

/// The key columns of `batch` (as `types`) and, per row, whether it can match anything: a NULL in a
/// key matches nothing unless NULLs are equal.
pub fn eval_keys(
    exprs: &[Arc<dyn PhysicalExpr>],
    types: &[DataType],
    null_equal: bool,
    batch: &RecordBatch,
) -> Result<(Vec<ArrayRef>, Vec<bool>)> {
    let n = batch.num_rows();
    let mut cols = Vec::with_capacity(exprs.len());
    let mut matchable = vec![true; n];
    for (e, t) in exprs.iter().zip(types) {
        let mut c = e.evaluate(batch)?.into_array(n)?;
        if c.data_type() != t {
            c = cast(&c, t)?;
        }
        if !null_equal && c.null_count() > 0 {
            for (i, m) in matchable.iter_mut().enumerate() {
                *m &= c.is_valid(i);
            }
        }
        cols.push(c);
    }
    Ok((cols, matchable))
}

/// Where `filter` holds on the rows of `batch` (NULL is not true).
pub fn filter_mask(filter: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<Vec<bool>> {
    let v = filter.evaluate(batch)?.into_array(batch.num_rows())?;
    let b = v
        .as_boolean_opt()
        .ok_or_else(|| Error::plan("a join condition must be boolean"))?;
    Ok((0..b.len()).map(|i| b.is_valid(i) && b.value(i)).collect())
}

/// The columns of a row of one side next to those of the other, left first.
pub fn left_first(mine_is_left: bool, mine: Vec<ArrayRef>, other: Vec<ArrayRef>) -> Vec<ArrayRef> {
    if mine_is_left {
        mine.into_iter().chain(other).collect()
    } else {
        other.into_iter().chain(mine).collect()
    }
}

/// The first column of `schema` that Arrow's row format (the join's state) cannot hold, if any.
pub fn unstorable(schema: &SchemaRef) -> Option<String> {
    schema
        .fields()
        .iter()
        .find(|f| !RowConverter::supports_fields(&[SortField::new(f.data_type().clone())]))
        .map(|f| format!("{} ({})", f.name(), f.data_type()))
}

/// Row `i`'s bytes (a side without columns has no rows in Arrow's format: every row is the empty row).
fn row_bytes(rows: &Rows, i: usize) -> &[u8] {
    if i < rows.num_rows() { rows.row(i).data() } else { &[] }
}

/// A stored row: its bytes, key, multiplicity, and matches on the other side.
struct Stored {
    /// Shared with the index ([`Side::by_row`]): the bytes are held once.
    row: Arc<[u8]>,
    gid: u32,
    count: u64,
    matches: u64,
    /// Position in its key's bucket.
    at: usize,
}

/// One input's rows.
struct Side {
    conv: RowConverter,
    slots: Vec<Option<Stored>>,
    free: Vec<u32>,
    by_row: HashMap<Arc<[u8]>, u32>,
    /// `by_row` is kept (the input may retract); otherwise it stays empty.
    indexed: bool,
    /// Key id → slots of the rows with that key.
    buckets: HashMap<u32, Vec<u32>>,
    /// Rows held, with multiplicity.
    rows: u64,
}

impl Side {
    fn new(schema: &SchemaRef, indexed: bool) -> Result<Side> {
        Ok(Side {
            conv: RowConverter::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )?,
            slots: Vec::new(),
            free: Vec::new(),
            by_row: HashMap::new(),
            indexed,
            buckets: HashMap::new(),
            rows: 0,
        })
    }

    fn get(&self, slot: u32) -> Option<&Stored> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn get_mut(&mut self, slot: u32) -> Option<&mut Stored> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn count(&self, slot: u32) -> u64 {
        self.get(slot).map_or(0, |s| s.count)
    }

    /// The slot holding `row`, if the side is indexed and holds it.
    fn held(&self, row: &[u8]) -> Option<u32> {
        if self.indexed {
            self.by_row.get(row).copied()
        } else {
            None
        }
    }

    fn bucket(&self, gid: u32) -> &[u32] {
        self.buckets.get(&gid).map_or(&[], Vec::as_slice)
    }

    /// One more copy of `row` (key `gid`, `matches` matches on the other side).
    fn insert(&mut self, row: &[u8], gid: u32, matches: u64) {
        if let Some(s) = self.held(row).and_then(|s| self.get_mut(s)) {
            s.count += 1;
            self.rows += 1;
            return;
        }
        self.put(row, gid, 1, matches);
    }

    /// A row not held yet, `count` copies of it, at the end of its key's bucket.
    fn put(&mut self, row: &[u8], gid: u32, count: u64, matches: u64) {
        self.rows += count;
        let bytes: Arc<[u8]> = row.into();
        let bucket = self.buckets.entry(gid).or_default();
        let stored = Stored {
            row: bytes.clone(),
            gid,
            count,
            matches,
            at: bucket.len(),
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(stored);
                s
            }
            None => {
                self.slots.push(Some(stored));
                (self.slots.len() - 1) as u32
            }
        };
        bucket.push(slot);
        if self.indexed {
            self.by_row.insert(bytes, slot);
        }
    }

    /// One copy fewer of the row in `slot`; the row goes when its last copy does.
    fn remove_one(&mut self, slot: u32) {
        let Some(s) = self.get_mut(slot) else { return };
        s.count -= 1;
        let gone = s.count == 0;
        self.rows -= 1;
        if !gone {
            return;
        }
        let Some(s) = self.slots[slot as usize].take() else {
            return;
        };
        self.by_row.remove(&*s.row);
        self.free.push(slot);
        if let Some(bucket) = self.buckets.get_mut(&s.gid) {
            bucket.swap_remove(s.at);
            if let Some(moved) = bucket.get(s.at).copied()
                && let Some(m) = self.slots[moved as usize].as_mut()
            {
                m.at = s.at;
            }
            if bucket.is_empty() {
                self.buckets.remove(&s.gid);
            }
        }
    }

    /// The columns of the rows in `slots`, in order (each distinct row decoded once).
    fn decode(&self, slots: &[u32]) -> Result<Vec<ArrayRef>> {
        let mut first: HashMap<u32, u32> = HashMap::new();
        let mut distinct: Vec<u32> = Vec::new();
        let idx: Vec<u32> = slots
            .iter()
            .map(|s| {
                *first.entry(*s).or_insert_with(|| {
                    distinct.push(*s);
                    (distinct.len() - 1) as u32
                })
            })
            .collect();
        let parser = self.conv.parser();
        let rows = distinct
            .iter()
            .map(|s| {
                self.get(*s)
                    .map(|st| parser.parse(&st.row))
                    .ok_or_else(|| Error::Internal("a join row vanished from its state".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        let cols = self.conv.convert_rows(rows)?;
        if distinct.len() == slots.len() {
            return Ok(cols);
        }
        let idx = UInt32Array::from(idx);
        Ok(cols
            .iter()
            .map(|c| take(c, &idx, None))
            .collect::<std::result::Result<_, _>>()?)
    }
}

/// Output rows of one input batch, by source: 0 = matched pairs, 1 = the input's rows on their own,
/// 2 = the other side's stored rows on their own.
#[derive(Default)]
struct Out {
    picks: Vec<(usize, usize)>,
    kinds: Vec<i8>,
    wms: Vec<i64>,
    /// The other side's slots shown or taken back (source 2, in order).
    others: Vec<u32>,
}

impl Out {
    fn push(&mut self, src: usize, idx: usize, kind: RowKind, wm: i64, copies: u64) {
        for _ in 0..copies {
            self.picks.push((src, idx));
            self.kinds.push(kind as i8);
            self.wms.push(wm);
        }
    }
}

pub struct StreamJoin {
    cfg: Config,
    keys: GroupTable,
    sides: [Side; 2],
}

impl StreamJoin {
    pub fn new(cfg: Config) -> Result<StreamJoin> {
        Ok(StreamJoin {
            keys: GroupTable::new(&cfg.key_types)?,
            sides: [
                Side::new(&cfg.inputs[0], !cfg.append_only[0])?,
                Side::new(&cfg.inputs[1], !cfg.append_only[1])?,
            ],
            cfg,
        })
    }

    /// Side `side`'s rows in the form they show on their own: padded with NULLs for the other
    /// side's columns (outer joins), or alone (semi and anti joins).
    fn alone(&self, side: usize, cols: Vec<ArrayRef>, n: usize) -> Result<RecordBatch> {
        let cols = match self.cfg.emit[side] {
            Some(Emit::Padded) => {
                let nulls: Vec<ArrayRef> = self.cfg.inputs[1 - side]
                    .fields()
                    .iter()
                    .map(|f| new_null_array(f.data_type(), n))
                    .collect();
                left_first(side == 0, cols, nulls)
            }
            _ => cols,
        };
        batch_of(&self.cfg.schema, cols, n)
    }
}

impl Operator for StreamJoin {
    fn process(&mut self, port: usize, input: ChangeBatch, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let n = input.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        let (a, b) = if port == 0 { (0, 1) } else { (1, 0) };
        let (key_cols, matchable) = eval_keys(
            &self.cfg.keys[a],
            &self.cfg.key_types,
            self.cfg.null_equal,
            &input.batch,
        )?;
        let gids = self.keys.intern(&key_cols, n)?;
        let rows = self.sides[a].conv.convert_columns(input.batch.columns())?;

        // Candidate pairs: each row with the other side's rows of its key. The other side does not
        // change while this batch is processed, so the residual condition is evaluated in one go.
        let mut cand_row: Vec<u32> = Vec::new();
        let mut cand_slot: Vec<u32> = Vec::new();
        let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(n);
        for i in 0..n {
            let start = cand_row.len();
            if matchable[i] {
                for s in self.sides[b].bucket(gids[i]) {
                    cand_row.push(i as u32);
                    cand_slot.push(*s);
                }
            }
            ranges.push((start, cand_row.len()));
        }
        let need_pairs = !cand_row.is_empty() && (self.cfg.pairs || self.cfg.filter.is_some());
        let pairs = if need_pairs {
            let idx = UInt32Array::from(cand_row.clone());
            let mine: Vec<ArrayRef> = input
                .batch
                .columns()
                .iter()
                .map(|c| take(c, &idx, None))
                .collect::<std::result::Result<_, _>>()?;
            let other = self.sides[b].decode(&cand_slot)?;
            Some(batch_of(
                &self.cfg.pair_schema,
                left_first(a == 0, mine, other),
                cand_row.len(),
            )?)
        } else {
            None
        };
        let ok: Vec<bool> = match (&self.cfg.filter, &pairs) {
            (Some(f), Some(p)) => filter_mask(f, p)?,
            _ => vec![true; cand_row.len()],
        };

        let mut out = Out::default();
        let mut touched: Vec<u32> = Vec::new();
        for i in 0..n {
            let kind = input.kind(i);
            let wm = input.wm.value(i);
            let row = row_bytes(&rows, i);
            if !kind.is_add() && !self.sides[a].indexed {
                return Err(Error::Internal(format!(
                    "a join input planned as insert-only sent a retraction (port {port})"
                )));
            }
            let held = self.sides[a].held(row);
            if !kind.is_add() && matchable[i] && held.is_none() {
                // A retraction of a row never held (as Flink, ignore it).
                continue;
            }
            let (s, e) = ranges[i];
            let matched: Vec<usize> = (s..e).filter(|p| ok[*p]).collect();
            let total: u64 = matched.iter().map(|p| self.sides[b].count(cand_slot[*p])).sum();
            if kind.is_add() {
                self.other_side_counts(b, &matched, &cand_slot, 1, wm, &mut out);
            }
            if self.cfg.pairs {
                for p in &matched {
                    out.push(0, *p, kind, wm, self.sides[b].count(cand_slot[*p]));
                }
            }
            if let Some(emit) = self.cfg.emit[a]
                && emit.shown(total)
            {
                out.push(1, i, kind, wm, 1);
            }
            if !kind.is_add() {
                self.other_side_counts(b, &matched, &cand_slot, -1, wm, &mut out);
            }
            if matchable[i] {
                if kind.is_add() {
                    self.sides[a].insert(row, gids[i], total);
                } else if let Some(slot) = held {
                    self.sides[a].remove_one(slot);
                }
            }
            touched.push(gids[i]);
        }
        // Keys no row holds any more.
        touched.sort_unstable();
        touched.dedup();
        for g in touched {
            if !self.sides[0].buckets.contains_key(&g) && !self.sides[1].buckets.contains_key(&g) {
                self.keys.remove(g);
            }
        }
        self.assemble(a, &input, pairs, out)
    }

    fn low_water(&self) -> i64 {
        if self.state_size() > 0 { i64::MIN } else { i64::MAX }
    }

    fn state_size(&self) -> usize {
        (self.sides[0].rows + self.sides[1].rows) as usize
    }

    /// Per side, its rows (see [`SIDE_TABLES`]): each distinct row once, with its key, its
    /// multiplicity and its matches on the other side, key by key, each key's rows in the order a
    /// probe meets them. The index (row bytes → slot, key → rows) is rebuilt on restore.
    fn snapshot(&self) -> Result<OpState> {
        join_state(|side| self.side_table(side), None)
    }

    fn restore(&mut self, state: OpState) -> Result<()> {
        restore_join_state(state, "a regular join", false, |side, name, t| {
            self.restore_side(side, name, t)
        })?;
        Ok(())
    }
}

/// The state tables of a join, per side, each starting `key_group`, `key` (the join key's bytes),
/// then the operator's bookkeeping, then the input's columns. A regular join's bookkeeping: `count`
/// (UInt64, copies of the row held), `matches` (UInt64, rows of the other side it matches, with
/// multiplicity).
pub const SIDE_TABLES: [&str; 2] = ["left_rows", "right_rows"];

impl StreamJoin {
    fn side_table(&self, side: usize) -> Result<RecordBatch> {
        let s = &self.sides[side];
        let mut gids: Vec<u32> = s.buckets.keys().copied().collect();
        gids.sort_unstable();
        let slots: Vec<u32> = gids.iter().flat_map(|g| s.bucket(*g).iter().copied()).collect();
        let stored = slots
            .iter()
            .map(|slot| {
                s.get(*slot)
                    .ok_or_else(|| Error::Internal("a join row vanished from its state".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        let keys = stored
            .iter()
            .map(|st| {
                self.keys
                    .key_bytes(st.gid)
                    .ok_or_else(|| Error::Internal("a join row's key vanished from its state".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        let schema = &self.cfg.inputs[side];
        let rows = conformed_batch(schema, s.decode(&slots)?, slots.len())?;
        let counts: ArrayRef = Arc::new(UInt64Array::from_iter_values(stored.iter().map(|st| st.count)));
        let matches: ArrayRef = Arc::new(UInt64Array::from_iter_values(stored.iter().map(|st| st.matches)));
        rows_table(&keys, vec![("count", counts), ("matches", matches)], &rows)
    }

    fn restore_side(&mut self, side: usize, name: &str, t: &RecordBatch) -> Result<()> {
        let rows = rows_from_table(name, t, &["count", "matches"], &self.cfg.inputs[side])?;
        let bad = |what: String| Error::Internal(format!("join state table '{name}': {what}"));
        let counts = state::column::<UInt64Array>(t, "count").map_err(|e| bad(message(e)))?;
        let matches = state::column::<UInt64Array>(t, "matches").map_err(|e| bad(message(e)))?;
        let keys = state::keys(t).map_err(|e| bad(message(e)))?;
        let n = rows.num_rows();
        let (key_cols, matchable) = eval_keys(&self.cfg.keys[side], &self.cfg.key_types, self.cfg.null_equal, &rows)?;
        let gids = self.keys.intern(&key_cols, n)?;
        let bytes = self.sides[side].conv.convert_columns(rows.columns())?;
        for i in 0..n {
            if !matchable[i] {
                return Err(bad(format!("row {i} has a NULL key, which a join never holds")));
            }
            if self.keys.key_bytes(gids[i]) != Some(keys.value(i)) {
                return Err(bad(format!("row {i}'s key is not the key of its columns")));
            }
            if counts.is_null(i) || counts.value(i) == 0 || matches.is_null(i) {
                return Err(bad(format!("row {i} has no count or no match count")));
            }
            let row = row_bytes(&bytes, i);
            let s = &mut self.sides[side];
            if s.indexed && s.by_row.contains_key(row) {
                return Err(bad(format!("row {i} is there twice")));
            }
            s.put(row, gids[i], counts.value(i), matches.value(i));
        }
        Ok(())
    }
}

/// A state table of rows of one input: `key_group` and `key` (the rows' join key, see
/// [`state::keyed_table`]), the bookkeeping columns `book`, then the rows' own columns, named as in
/// their input (they are read back by position: an input column may share a bookkeeping column's
/// name).
pub(crate) fn rows_table(keys: &[&[u8]], book: Vec<(&str, ArrayRef)>, rows: &RecordBatch) -> Result<RecordBatch> {
    let schema = rows.schema();
    let mut cols = book;
    for (f, c) in schema.fields().iter().zip(rows.columns()) {
        cols.push((f.name().as_str(), c.clone()));
    }
    state::keyed_table(keys.iter().copied(), cols)
}

/// The rows of table `name`, written by [`rows_table`], as a batch of `schema`, once its columns
/// are checked: `key_group`, `key` and `book` in that order, then `schema`'s columns (names, types,
/// no NULLs where the input allows none), and each row's key group that of its key.
pub(crate) fn rows_from_table(
    name: &str,
    table: &RecordBatch,
    book: &[&str],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let bad = |what: String| Error::Internal(format!("join state table '{name}': {what}"));
    let ts = table.schema();
    let head: Vec<&str> = ["key_group", "key"].into_iter().chain(book.iter().copied()).collect();
    let want = head.len() + schema.fields().len();
    if ts.fields().len() != want {
        return Err(bad(format!(
            "{} columns, not the {want} this join writes ({}, then its input's)",
            ts.fields().len(),
            head.join(", ")
        )));
    }
    for (i, h) in head.iter().enumerate() {
        if ts.field(i).name() != h {
            return Err(bad(format!("column {i} is '{}', not '{h}'", ts.field(i).name())));
        }
    }
    state::check_key_groups(name, table).map_err(|e| Error::Internal(format!("join {}", message(e))))?;
    let cols = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (tf, c) = (ts.field(head.len() + i), table.column(head.len() + i));
            if tf.name() != f.name() || c.data_type() != f.data_type() {
                Err(bad(format!(
                    "column '{}' ({}) where the input has '{}' ({})",
                    tf.name(),
                    c.data_type(),
                    f.name(),
                    f.data_type()
                )))
            } else if !f.is_nullable() && c.null_count() > 0 {
                Err(bad(format!(
                    "column '{}' has NULLs, which the input does not allow",
                    f.name()
                )))
            } else {
                Ok(c.clone())
            }
        })
        .collect::<Result<Vec<_>>>()?;
    batch_of(schema, cols, table.num_rows())
}

/// The text of an error from [`state`]'s readers.
pub(crate) fn message(e: Error) -> String {
    match e {
        Error::Internal(m) => m,
        other => other.to_string(),
    }
}

/// A one-row table of a time-bounded join (interval, window): `watermark` (Int64, the watermark
/// the rows it emits carry) and `emit_floor` (Int64, see [`Operator::set_emit_floor`]; `i64::MIN`:
/// none).
pub const PROGRESS_TABLE: &str = "progress";

/// A join's state: each side's table ([`SIDE_TABLES`], written by `side_table`) and, for a
/// time-bounded join, its watermark and emit floor ([`PROGRESS_TABLE`]).
pub(crate) fn join_state(
    mut side_table: impl FnMut(usize) -> Result<RecordBatch>,
    progress: Option<(i64, i64)>,
) -> Result<OpState> {
    let mut st = OpState::new();
    for (side, name) in SIDE_TABLES.iter().enumerate() {
        st.put(name, side_table(side)?);
    }
    if let Some((wm, emit_floor)) = progress {
        st.put(
            PROGRESS_TABLE,
            scalars_table(&[("watermark", wm), ("emit_floor", emit_floor)])?,
        );
    }
    Ok(st)
}

/// Take [`join_state`]'s tables back: `restore_side` gets each side's; returns the watermark and
/// emit floor when `timed`; refuses tables `op` did not write.
pub(crate) fn restore_join_state(
    mut state: OpState,
    op: &str,
    timed: bool,
    mut restore_side: impl FnMut(usize, &str, &RecordBatch) -> Result<()>,
) -> Result<Option<[i64; 2]>> {
    for (side, name) in SIDE_TABLES.iter().enumerate() {
        let t = state.take(name)?;
        restore_side(side, name, &t)?;
    }
    let progress = if timed {
        Some(read_scalars(&mut state, PROGRESS_TABLE, ["watermark", "emit_floor"])?)
    } else {
        None
    };
    no_other_tables(op, &state)?;
    Ok(progress)
}

/// An error if `state` holds tables `op` did not take (a state written by another plan).
pub(crate) fn no_other_tables(op: &str, state: &OpState) -> Result<()> {
    if state.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = state.tables.iter().map(|(n, _)| n.as_str()).collect();
    Err(Error::Internal(format!(
        "{op}'s state has tables it does not write: {}",
        names.join(", ")
    )))
}

/// A one-row table of scalars (watermarks, emit floors), all `Int64`.
pub(crate) fn scalars_table(cols: &[(&str, i64)]) -> Result<RecordBatch> {
    state::plain_table(
        cols.iter()
            .map(|(n, v)| (*n, Arc::new(Int64Array::from(vec![*v])) as ArrayRef))
            .collect(),
    )
}

/// The scalars `names` of table `name`, written by [`scalars_table`].
pub(crate) fn read_scalars<const N: usize>(state: &mut OpState, name: &str, names: [&str; N]) -> Result<[i64; N]> {
    let t = state.take(name)?;
    let bad = |what: String| Error::Internal(format!("join state table '{name}': {what}"));
    if t.num_rows() != 1 {
        return Err(bad(format!("{} rows, not one", t.num_rows())));
    }
    let mut out = [0; N];
    for (o, n) in out.iter_mut().zip(names) {
        let c = state::column::<Int64Array>(&t, n).map_err(|e| bad(message(e)))?;
        if c.is_null(0) {
            return Err(bad(format!("'{n}' is NULL")));
        }
        *o = c.value(0);
    }
    Ok(out)
}

impl StreamJoin {
    /// A row of side `1 - b` arrived (`delta` 1) or was retracted (-1): the matched rows of side `b`
    /// gain or lose a match, and those whose visibility flips are shown or taken back.
    fn other_side_counts(
        &mut self,
        b: usize,
        matched: &[usize],
        cand_slot: &[u32],
        delta: i64,
        wm: i64,
        out: &mut Out,
    ) {
        let emit = self.cfg.emit[b];
        for p in matched {
            let slot = cand_slot[*p];
            let Some(s) = self.sides[b].get_mut(slot) else { continue };
            let before = s.matches;
            s.matches = if delta > 0 {
                before + 1
            } else {
                before.saturating_sub(1)
            };
            let (after, copies) = (s.matches, s.count);
            if let Some(e) = emit
                && e.shown(before) != e.shown(after)
            {
                let kind = if e.shown(after) {
                    RowKind::Insert
                } else {
                    RowKind::Delete
                };
                out.others.push(slot);
                out.push(2, out.others.len() - 1, kind, wm, copies);
            }
        }
    }

    /// The output batch of the rows picked.
    fn assemble(
        &self,
        a: usize,
        input: &ChangeBatch,
        pairs: Option<RecordBatch>,
        out: Out,
    ) -> Result<Vec<ChangeBatch>> {
        if out.picks.is_empty() {
            return Ok(Vec::new());
        }
        let used = |src: usize| out.picks.iter().any(|(s, _)| *s == src);
        let empty = RecordBatch::new_empty(self.cfg.schema.clone());
        let paired = match pairs {
            Some(p) if used(0) => batch_of(&self.cfg.schema, p.columns().to_vec(), p.num_rows())?,
            _ => empty.clone(),
        };
        let mine = if used(1) {
            self.alone(a, input.batch.columns().to_vec(), input.num_rows())?
        } else {
            empty.clone()
        };
        let theirs = if used(2) {
            let b = 1 - a;
            self.alone(b, self.sides[b].decode(&out.others)?, out.others.len())?
        } else {
            empty
        };
        let m = out.picks.len();
        let cols: Vec<ArrayRef> = (0..self.cfg.schema.fields().len())
            .map(|c| {
                interleave(
                    &[
                        paired.column(c).as_ref(),
                        mine.column(c).as_ref(),
                        theirs.column(c).as_ref(),
                    ],
                    &out.picks,
                )
            })
            .collect::<std::result::Result<_, _>>()?;
        let all_inserts = out.kinds.iter().all(|k| *k == RowKind::Insert as i8);
        Ok(vec![ChangeBatch {
            batch: batch_of(&self.cfg.schema, cols, m)?,
            ops: (!all_inserts).then(|| Int8Array::from(out.kinds)),
            wm: Int64Array::from(out.wms),
            origin: None,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Int64Type, Schema};
    use datafusion::physical_expr::expressions::col;

    fn schema(names: &[&str], nullable: bool) -> SchemaRef {
        Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, DataType::Int64, nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// `l(k, a) ⋈ r(k, b) ON l.k = r.k`, emitting per side as given.
    fn join(pairs: bool, emit: [Option<Emit>; 2]) -> StreamJoin {
        join_of(pairs, emit, [false, false])
    }

    /// [`join`] with sides planned as insert-only.
    fn join_of(pairs: bool, emit: [Option<Emit>; 2], append_only: [bool; 2]) -> StreamJoin {
        let (l, r) = (schema(&["k", "a"], false), schema(&["k", "b"], false));
        let out = match (pairs, emit) {
            (false, [Some(_), _]) => l.clone(),
            (false, _) => r.clone(),
            _ => schema(&["k", "a", "k", "b"], true),
        };
        StreamJoin::new(Config {
            pairs,
            emit,
            keys: [vec![col("k", &l).expect("k")], vec![col("k", &r).expect("k")]],
            key_types: vec![DataType::Int64],
            null_equal: false,
            filter: None,
            inputs: [l, r],
            append_only,
            pair_schema: schema(&["k", "a", "k", "b"], false),
            schema: out,
        })
        .expect("join")
    }

    fn rows(k: &[Option<i64>], v: &[i64], kinds: &[RowKind]) -> ChangeBatch {
        let s = schema(&["k", "v"], true);
        let b = RecordBatch::try_new(
            s,
            vec![
                Arc::new(Int64Array::from(k.to_vec())),
                Arc::new(Int64Array::from(v.to_vec())),
            ],
        )
        .expect("batch");
        ChangeBatch::changes(b, kinds.to_vec(), 0)
    }

    /// Output rows as `kind k,a,k,b` (NULL as `_`).
    fn show(out: &[ChangeBatch]) -> Vec<String> {
        let mut v = Vec::new();
        for b in out {
            for i in 0..b.num_rows() {
                let cells: Vec<String> = b
                    .batch
                    .columns()
                    .iter()
                    .map(|c| {
                        let c = c.as_primitive::<Int64Type>();
                        if c.is_null(i) {
                            "_".into()
                        } else {
                            c.value(i).to_string()
                        }
                    })
                    .collect();
                v.push(format!("{} {}", b.kind(i).short(), cells.join(",")));
            }
        }
        v
    }

    use RowKind::{Delete as D, Insert as I};

    #[test]
    fn full_join_pads_and_unpads_as_matches_come_and_go() {
        let mut j = join(true, [Some(Emit::Padded), Some(Emit::Padded)]);
        let mut cx = Context::default();
        let out = j
            .process(0, rows(&[Some(1), None], &[10, 11], &[I, I]), &mut cx)
            .expect("p");
        assert_eq!(show(&out), ["+I 1,10,_,_", "+I _,11,_,_"]);
        let out = j
            .process(1, rows(&[Some(1), Some(1)], &[20, 21], &[I, I]), &mut cx)
            .expect("p");
        assert_eq!(show(&out), ["-D 1,10,_,_", "+I 1,10,1,20", "+I 1,10,1,21"]);
        let out = j.process(0, rows(&[Some(1)], &[10], &[D]), &mut cx).expect("p");
        assert_eq!(
            show(&out),
            ["-D 1,10,1,20", "-D 1,10,1,21", "+I _,_,1,20", "+I _,_,1,21"]
        );
        let out = j.process(0, rows(&[None], &[11], &[D]), &mut cx).expect("p");
        assert_eq!(show(&out), ["-D _,11,_,_"]);
        assert_eq!(j.state_size(), 2);
        assert_eq!(j.low_water(), i64::MIN);
        let out = j
            .process(1, rows(&[Some(1), Some(1)], &[20, 21], &[D, D]), &mut cx)
            .expect("p");
        assert_eq!(show(&out), ["-D _,_,1,20", "-D _,_,1,21"]);
        assert_eq!(j.state_size(), 0);
        assert_eq!(j.low_water(), i64::MAX);
        assert!(j.keys.is_empty(), "no key is held once every row is gone");
    }

    #[test]
    fn duplicates_multiply_and_retractions_of_unknown_rows_are_ignored() {
        let mut j = join(true, [None, None]);
        let mut cx = Context::default();
        j.process(0, rows(&[Some(1), Some(1)], &[10, 10], &[I, I]), &mut cx)
            .expect("p");
        let out = j.process(1, rows(&[Some(1)], &[20], &[I]), &mut cx).expect("p");
        assert_eq!(show(&out), ["+I 1,10,1,20", "+I 1,10,1,20"]);
        let out = j
            .process(0, rows(&[Some(1), Some(2)], &[10, 99], &[D, D]), &mut cx)
            .expect("p");
        assert_eq!(show(&out), ["-D 1,10,1,20"]);
        assert_eq!(j.state_size(), 2);
    }

    #[test]
    fn semi_and_anti_show_rows_by_whether_they_match() {
        let mut semi = join(false, [Some(Emit::Semi), None]);
        let mut anti = join(false, [Some(Emit::Anti), None]);
        let mut cx = Context::default();
        let left = rows(&[Some(1), Some(2)], &[10, 20], &[I, I]);
        assert!(semi.process(0, left.clone(), &mut cx).expect("p").is_empty());
        assert_eq!(
            show(&anti.process(0, left, &mut cx).expect("p")),
            ["+I 1,10", "+I 2,20"]
        );
        let right = rows(&[Some(1), Some(1)], &[5, 6], &[I, I]);
        assert_eq!(show(&semi.process(1, right.clone(), &mut cx).expect("p")), ["+I 1,10"]);
        assert_eq!(show(&anti.process(1, right, &mut cx).expect("p")), ["-D 1,10"]);
        let gone = rows(&[Some(1), Some(1)], &[5, 6], &[D, D]);
        assert_eq!(show(&semi.process(1, gone.clone(), &mut cx).expect("p")), ["-D 1,10"]);
        assert_eq!(show(&anti.process(1, gone, &mut cx).expect("p")), ["+I 1,10"]);
    }

    #[test]
    fn sides_without_columns_count_rows() {
        let none: SchemaRef = Arc::new(Schema::empty());
        let mut j = StreamJoin::new(Config {
            pairs: true,
            emit: [None, Some(Emit::Padded)],
            keys: [vec![], vec![]],
            key_types: vec![],
            null_equal: false,
            filter: None,
            inputs: [none.clone(), none.clone()],
            append_only: [false, false],
            pair_schema: none.clone(),
            schema: none.clone(),
        })
        .expect("join");
        let empty = |n: usize, kinds: Vec<RowKind>| {
            let b = batch_of(&none, vec![], n).expect("batch");
            ChangeBatch::changes(b, kinds, 0)
        };
        let mut cx = Context::default();
        let out = j.process(1, empty(1, vec![I]), &mut cx).expect("p");
        assert_eq!(show(&out), ["+I "]);
        let out = j.process(0, empty(2, vec![I, I]), &mut cx).expect("p");
        assert_eq!(show(&out), ["-D ", "+I ", "+I "]);
        let out = j.process(0, empty(1, vec![D]), &mut cx).expect("p");
        assert_eq!(show(&out), ["-D "]);
        assert_eq!(j.state_size(), 2);
    }

    use crate::operator::state::testing::{Step, assert_restores_at_every_split};
    use RowKind::{UpdateAfter as UA, UpdateBefore as UB};

    /// Every split of `steps` restores identically.
    fn restores_at_every_split(make: impl Fn() -> StreamJoin, steps: &[Step]) {
        assert!(
            assert_restores_at_every_split(make, steps) > 0,
            "the steps emit something"
        );
    }

    fn l(k: &[Option<i64>], v: &[i64], kinds: &[RowKind]) -> Step {
        Step::Rows(0, rows(k, v, kinds))
    }

    fn r(k: &[Option<i64>], v: &[i64], kinds: &[RowKind]) -> Step {
        Step::Rows(1, rows(k, v, kinds))
    }

    #[test]
    fn outer_joins_restore_padded_rows_and_match_counts() {
        // Rows wait unmatched, get matched after the split (their padded row is taken back), lose
        // their matches again (padded again); NULL keys are shown at once and never held.
        let steps = vec![
            l(&[Some(1), None, Some(2)], &[10, 11, 12], &[I, I, I]),
            r(&[Some(1), Some(3)], &[20, 30], &[I, I]),
            r(&[Some(1), Some(2)], &[21, 22], &[I, I]),
            l(&[Some(1)], &[10], &[D]),
            l(&[None], &[11], &[D]),
            l(&[Some(3), Some(1)], &[13, 14], &[I, I]),
            r(&[Some(1), Some(1), Some(2)], &[20, 21, 22], &[D, D, D]),
            l(&[Some(2)], &[12], &[D]),
        ];
        for emit in [
            [Some(Emit::Padded), Some(Emit::Padded)],
            [Some(Emit::Padded), None],
            [None, Some(Emit::Padded)],
            [None, None],
        ] {
            restores_at_every_split(|| join(true, emit), &steps);
        }
    }

    #[test]
    fn insert_only_sides_hold_duplicates_as_rows_of_their_own_with_the_same_results() {
        // Duplicates on both sides, NULL keys, keys matched before and after: an insert-only side
        // (no index by row content) gives the multiset of rows an indexed one gives, every emit mode,
        // and restores at every split; a retraction sent to it is an error, not a wrong result.
        let steps = vec![
            l(&[Some(1), Some(1), None, Some(2)], &[10, 10, 11, 12], &[I, I, I, I]),
            r(&[Some(1), Some(3), Some(1)], &[20, 30, 20], &[I, I, I]),
            l(&[Some(3), Some(1), Some(4)], &[13, 10, 14], &[I, I, I]),
            r(&[Some(2), Some(4), Some(4)], &[22, 24, 24], &[I, I, I]),
        ];
        let sorted = |j: &mut StreamJoin| {
            let mut cx = Context::default();
            let mut out = Vec::new();
            for s in &steps {
                let Step::Rows(port, b) = s else { continue };
                out.extend(show(&j.process(*port, b.clone(), &mut cx).expect("p")));
            }
            out.sort();
            (out, j.state_size())
        };
        for (pairs, emit) in [
            (true, [None, None]),
            (true, [Some(Emit::Padded), Some(Emit::Padded)]),
            (false, [Some(Emit::Semi), None]),
            (false, [None, Some(Emit::Anti)]),
        ] {
            let want = sorted(&mut join(pairs, emit));
            assert!(!want.0.is_empty());
            for append_only in [[true, true], [true, false], [false, true]] {
                assert_eq!(sorted(&mut join_of(pairs, emit, append_only)), want, "{append_only:?}");
                restores_at_every_split(|| join_of(pairs, emit, append_only), &steps);
            }
        }
        let mut j = join_of(true, [None, None], [true, false]);
        let mut cx = Context::default();
        j.process(0, rows(&[Some(1)], &[10], &[I]), &mut cx).expect("insert");
        let err = j
            .process(0, rows(&[Some(1)], &[10], &[D]), &mut cx)
            .expect_err("refused");
        assert!(err.to_string().contains("insert-only"), "{err}");
        j.process(1, rows(&[Some(1)], &[20], &[D]), &mut cx)
            .expect("an indexed side takes retractions");
    }

    #[test]
    fn changelog_inputs_with_updates_and_duplicates_restore() {
        // Updating inputs: -U/+U pairs, duplicate rows (multiplicity), a retraction of a row never
        // held (ignored, before and after a restore).
        let steps = vec![
            l(&[Some(1), Some(1), Some(2)], &[10, 10, 20], &[I, I, I]),
            r(&[Some(1)], &[100], &[I]),
            l(&[Some(1), Some(1)], &[10, 11], &[UB, UA]),
            r(&[Some(1), Some(1), Some(2)], &[100, 101, 200], &[UB, UA, I]),
            l(&[Some(9), Some(1)], &[99, 11], &[D, D]),
            r(&[Some(2), Some(2)], &[200, 201], &[UB, UA]),
            l(&[Some(1), Some(2)], &[10, 20], &[D, D]),
        ];
        restores_at_every_split(|| join(true, [None, None]), &steps);
        restores_at_every_split(|| join(true, [Some(Emit::Padded), Some(Emit::Padded)]), &steps);
        restores_at_every_split(|| join(false, [Some(Emit::Semi), None]), &steps);
        restores_at_every_split(|| join(false, [Some(Emit::Anti), None]), &steps);
        restores_at_every_split(|| join(false, [None, Some(Emit::Anti)]), &steps);
    }

    /// `l(k, a) ⋈ r(k, b) ON l.k = r.k AND l.a < r.b`, full outer: match counts come from the residual
    /// condition.
    fn join_with_filter() -> StreamJoin {
        use datafusion::physical_expr::expressions::{BinaryExpr, Column};
        let mut j = join(true, [Some(Emit::Padded), Some(Emit::Padded)]);
        let f = BinaryExpr::new(
            Arc::new(Column::new("a", 1)),
            datafusion::logical_expr::Operator::Lt,
            Arc::new(Column::new("b", 3)),
        );
        j.cfg.filter = Some(Arc::new(f));
        j
    }

    #[test]
    fn a_residual_condition_restores() {
        let steps = vec![
            l(&[Some(1), Some(1)], &[5, 50], &[I, I]),
            r(&[Some(1)], &[10], &[I]),
            r(&[Some(1)], &[60], &[I]),
            l(&[Some(1)], &[5], &[D]),
            r(&[Some(1)], &[10], &[D]),
        ];
        restores_at_every_split(join_with_filter, &steps);
    }

    #[test]
    fn sides_without_columns_restore() {
        let none: SchemaRef = Arc::new(Schema::empty());
        let make = || {
            StreamJoin::new(Config {
                pairs: true,
                emit: [None, Some(Emit::Padded)],
                keys: [vec![], vec![]],
                key_types: vec![],
                null_equal: false,
                filter: None,
                inputs: [none.clone(), none.clone()],
                append_only: [false, false],
                pair_schema: none.clone(),
                schema: none.clone(),
            })
            .expect("join")
        };
        let empty = |port: usize, kinds: Vec<RowKind>| {
            let b = batch_of(&none, vec![], kinds.len()).expect("batch");
            Step::Rows(port, ChangeBatch::changes(b, kinds, 0))
        };
        let steps = [
            empty(1, vec![I]),
            empty(0, vec![I, I]),
            empty(0, vec![D]),
            empty(1, vec![I]),
            empty(0, vec![D]),
        ];
        // The shared check prints no rows without columns: compare row kinds here.
        for split in 0..=steps.len() {
            let run = |j: &mut StreamJoin, steps: &[Step]| {
                let mut cx = Context::default();
                let mut out = Vec::new();
                for s in steps {
                    if let Step::Rows(p, b) = s {
                        out.extend(show(&j.process(*p, b.clone(), &mut cx).expect("p")));
                    }
                }
                out
            };
            let mut whole = make();
            run(&mut whole, &steps[..split]);
            let want = run(&mut whole, &steps[split..]);
            let mut first = make();
            run(&mut first, &steps[..split]);
            let mut restored = make();
            restored.restore(first.snapshot().expect("snapshot")).expect("restore");
            assert_eq!(restored.state_size(), first.state_size());
            assert_eq!(run(&mut restored, &steps[split..]), want, "split {split}");
        }
        // The tables: no input columns, the empty key.
        let mut j = make();
        let mut cx = Context::default();
        j.process(
            1,
            ChangeBatch::append(batch_of(&none, vec![], 3).expect("b"), 0),
            &mut cx,
        )
        .expect("p");
        let st = j.snapshot().expect("snapshot");
        let t = &st.tables[1].1;
        assert_eq!(
            (st.tables[1].0.as_str(), t.num_rows(), t.num_columns()),
            ("right_rows", 1, 4)
        );
        assert_eq!(state::keys(t).expect("keys").value(0), b"");
        assert_eq!(state::column::<UInt64Array>(t, "count").expect("count").value(0), 3);
    }

    #[test]
    fn snapshot_holds_the_rows_with_their_keys_counts_and_matches() {
        let mut j = join(true, [Some(Emit::Padded), None]);
        let mut cx = Context::default();
        j.process(
            0,
            rows(&[Some(1), Some(1), Some(2)], &[10, 10, 20], &[I, I, I]),
            &mut cx,
        )
        .expect("p");
        j.process(1, rows(&[Some(1)], &[30], &[I]), &mut cx).expect("p");
        let st = j.snapshot().expect("snapshot");
        let names: Vec<&str> = st.tables.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, SIDE_TABLES);
        let left = &st.tables[0].1;
        let cols: Vec<String> = left.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(cols, ["key_group", "key", "count", "matches", "k", "a"]);
        let a: Vec<i64> = left.column(5).as_primitive::<Int64Type>().values().to_vec();
        let counts = state::column::<UInt64Array>(left, "count").expect("count");
        let matches = state::column::<UInt64Array>(left, "matches").expect("matches");
        let mut got: Vec<(i64, u64, u64)> = (0..3.min(a.len()))
            .map(|i| (a[i], counts.value(i), matches.value(i)))
            .collect();
        got.sort();
        assert_eq!(got, [(10, 2, 1), (20, 1, 0)]);
        assert_eq!(st.num_rows(), 3);
    }

    #[test]
    fn a_corrupted_state_is_refused() {
        let mut j = join(true, [Some(Emit::Padded), Some(Emit::Padded)]);
        let mut cx = Context::default();
        j.process(0, rows(&[Some(1), Some(2)], &[10, 20], &[I, I]), &mut cx)
            .expect("p");
        j.process(1, rows(&[Some(1)], &[30], &[I]), &mut cx).expect("p");
        let st = j.snapshot().expect("snapshot");
        let fresh = || join(true, [Some(Emit::Padded), Some(Emit::Padded)]);
        let err = |st: OpState| {
            let e = fresh().restore(st).expect_err("corrupted state restored");
            e.to_string()
        };
        assert!(fresh().restore(st.clone()).is_ok());

        let mut missing = st.clone();
        missing.tables.remove(1);
        assert!(err(missing).contains("right_rows"));

        let replace = |col: &str, a: ArrayRef| {
            let mut bad = st.clone();
            let t = &bad.tables[0].1;
            let i = t.schema().index_of(col).expect("col");
            let mut fields: Vec<Field> = t.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            fields[i] = Field::new(col, a.data_type().clone(), true);
            let mut cols = t.columns().to_vec();
            cols[i] = a;
            bad.tables[0].1 = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("batch");
            bad
        };
        let e = err(replace("count", Arc::new(Int64Array::from(vec![1, 1]))));
        assert!(e.contains("left_rows") && e.contains("count"), "{e}");
        let e = err(replace("a", Arc::new(StringArray::from(vec!["x", "y"]))));
        assert!(e.contains("'a'"), "{e}");
        let e = err(replace("k", Arc::new(Int64Array::from(vec![7, 8]))));
        assert!(e.contains("key"), "{e}");
        let e = err(replace(
            "key",
            Arc::new(datafusion::arrow::array::BinaryArray::from_vec(vec![b"x", b"y"])),
        ));
        assert!(e.contains("key_group"), "{e}");

        let mut extra = st.clone();
        extra.put("other", st.tables[0].1.clone());
        assert!(err(extra).contains("other"));
    }

    #[test]
    fn keys_with_nulls_match_nothing() {
        let l = schema(&["k", "a"], true);
        let b = RecordBatch::try_new(
            l.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .expect("b");
        let e = vec![col("k", &l).expect("k")];
        let (_, m) = eval_keys(&e, &[DataType::Int64], false, &b).expect("keys");
        assert_eq!(m, vec![true, false]);
        let (_, m) = eval_keys(&e, &[DataType::Int64], true, &b).expect("keys");
        assert_eq!(m, vec![true, true]);
        let s: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
        assert_eq!(s.len(), 1);
    }
}
