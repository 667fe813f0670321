//! Interval join (Flink's "Interval Join"): rows of two append-only streams that match on their keys
//! and whose time attributes lie within a bounded distance, e.g.
//! `p.t BETWEEN v.t AND v.t + INTERVAL '10' MINUTE`.
//!
//! Each side keeps its rows, indexed by key. A row arriving on one side is matched against the
//! rows the other side holds (the pairs go out at once), then kept for the other side's future
//! rows. The condition's time bounds say how long that is: with `r.t - l.t` within `[lo, hi]`, a
//! future right row (time ≥ watermark `w`, else it is late) can only match a left row while
//! `l.t + hi ≥ w`, and a future left row can only match a right row while `r.t - lo ≥ w`. Once the
//! watermark passes that, the row goes — and for an outer (or ANTI) side a row that never matched
//! is emitted then, NULL-padded, so outer interval joins stay append-only. A row whose time is
//! below the watermark it arrived under is late (Flink's rule): rows it should have matched may be
//! gone already.
//!
//! The bounds are only used to find candidates and to know when a row can go (widened by a
//! millisecond, as event times finer than that are truncated to it here, so they never cut a true
//! match); whether a pair matches is decided by the join condition itself, as the batch join does.

use std::collections::BTreeSet;

use datafusion::common::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;

use super::groups::GroupTable;
use super::state::{self, OpState};
pub use super::stream_join::{PROGRESS_TABLE, SIDE_TABLES};
use super::stream_join::{join_state, message, restore_join_state, rows_from_table, rows_table};
use super::window::millis;
use super::window_join::{JoinRows, LEFT, RIGHT, gather};
use super::{ChangeBatch, Context, Operator};
use crate::error::{Error, Result};
use crate::plan::graph::OpFactory;

/// A compiled interval join.
#[derive(Clone)]
pub struct Config {
    pub rows: JoinRows,
    /// The time attribute's column per side.
    pub time: [usize; 2],
    /// Every match has `right.t - left.t` within `[lo, hi]` (ms, rounded outwards).
    pub lo: i64,
    pub hi: i64,
    /// The join as SQL, for EXPLAIN.
    pub text: String,
}

impl OpFactory for Config {
    fn build(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(IntervalJoin::new(self.clone())?))
    }

    fn describe(&self) -> String {
        let ms = |v: i64| {
            if v == 0 {
                "0".to_string()
            } else {
                crate::operator::window::dur(v)
            }
        };
        format!(
            "IntervalJoin {} {}: right time - left time within [{}, {}]",
            self.rows.type_name(),
            self.text,
            ms(self.lo),
            ms(self.hi)
        )
    }

    fn state(&self) -> String {
        "per input: rows by key, each until the watermark passes its time plus the interval".into()
    }

    fn clone_box(&self) -> Box<dyn OpFactory> {
        Box::new(self.clone())
    }
    fn partition_keys(&self) -> Option<super::partition::PartitionKeys> {
        self.rows.partition_keys()
    }
}

/// A row held: which stored batch, which row, its time.
#[derive(Debug, Clone, Copy)]
struct Slot {
    chunk: u64,
    row: u32,
    t: i64,
}

/// Rows that arrived together, held while any of them is alive.
struct Chunk {
    batch: RecordBatch,
    matched: Vec<bool>,
    alive: Vec<bool>,
    live: usize,
}

/// What one side holds.
struct Side {
    chunks: HashMap<u64, Chunk>,
    next_chunk: u64,
    keys: GroupTable,
    /// Rows by key group id, by time (a probe looks at a time range); entries of rows that are gone
    /// are dropped lazily (`stale` counts them).
    by_key: Vec<Vec<Slot>>,
    /// Live rows by time, to expire in order.
    expiry: BTreeSet<(i64, u64, u32)>,
    stale: usize,
}

impl Side {
    fn new(rows: &JoinRows) -> Result<Side> {
        Ok(Side {
            chunks: HashMap::new(),
            next_chunk: 0,
            keys: GroupTable::new(&rows.key_types)?,
            by_key: Vec::new(),
            expiry: BTreeSet::new(),
            stale: 0,
        })
    }

    fn is_alive(&self, s: &Slot) -> bool {
        self.chunks.get(&s.chunk).is_some_and(|c| c.alive[s.row as usize])
    }

    /// Rows held, by `(chunk, row)`, as one batch of `schema`.
    fn rows(&self, schema: &SchemaRef, slots: &[(u64, u32)]) -> Result<RecordBatch> {
        let mut pos: HashMap<u64, usize> = HashMap::new();
        let mut batches: Vec<&RecordBatch> = Vec::new();
        let mut idx = Vec::with_capacity(slots.len());
        for (chunk, row) in slots {
            let p = match pos.get(chunk) {
                Some(p) => *p,
                None => {
                    let c = self
                        .chunks
                        .get(chunk)
                        .ok_or_else(|| Error::Internal("an interval join lost a stored batch".into()))?;
                    batches.push(&c.batch);
                    pos.insert(*chunk, batches.len() - 1);
                    batches.len() - 1
                }
            };
            idx.push((p, *row as usize));
        }
        gather(schema, &batches, &idx)
    }

    /// Drop index entries of rows that are gone, and keys with no rows left.
    fn sweep(&mut self) {
        let chunks = &self.chunks;
        for g in 0..self.by_key.len() {
            let list = &mut self.by_key[g];
            if list.is_empty() {
                continue;
            }
            list.retain(|s| chunks.get(&s.chunk).is_some_and(|c| c.alive[s.row as usize]));
            if list.is_empty() {
                self.keys.remove(g as u32);
            }
        }
        self.stale = 0;
    }
}

pub struct IntervalJoin {
    cfg: Config,
    sides: [Side; 2],
    /// The watermark before the current micro-batch's advance (carried by padded rows).
    wm: i64,
    /// The watermark stored before a restart (see [`Operator::set_emit_floor`]); `i64::MIN`: none.
    emit_floor: i64,
}

impl IntervalJoin {
    pub fn new(cfg: Config) -> Result<IntervalJoin> {
        let sides = [Side::new(&cfg.rows)?, Side::new(&cfg.rows)?];
        Ok(IntervalJoin {
            cfg,
            sides,
            wm: i64::MIN,
            emit_floor: i64::MIN,
        })
    }

    /// The bounds, widened by what truncating event times to milliseconds can change a difference by.
    fn bounds(&self) -> (i64, i64) {
        (self.cfg.lo.saturating_sub(1), self.cfg.hi.saturating_add(1))
    }

    /// The range of times of the `other` side's rows that a row of `side` at time `t` can match.
    fn partner_range(&self, side: usize, t: i64) -> (i64, i64) {
        let (lo, hi) = self.bounds();
        if side == LEFT {
            (t.saturating_add(lo), t.saturating_add(hi))
        } else {
            (t.saturating_sub(hi), t.saturating_sub(lo))
        }
    }

    /// Rows of `side` whose time is below this can go once the watermark is `wm`.
    fn expiry_threshold(&self, side: usize, wm: i64) -> i64 {
        if wm == i64::MAX {
            return i64::MAX;
        }
        let (lo, hi) = self.bounds();
        if side == LEFT {
            wm.saturating_sub(hi)
        } else {
            wm.saturating_add(lo)
        }
    }
}

fn take_wm(wm: &Int64Array, idx: &UInt32Array) -> Result<Int64Array> {
    take(wm, idx, None)?
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| Error::Internal("row watermarks are not Int64".into()))
}

fn out_batch(batch: RecordBatch, wm: Int64Array) -> ChangeBatch {
    ChangeBatch {
        batch,
        ops: None,
        wm,
        origin: None,
    }
}

impl Operator for IntervalJoin {
    fn process(&mut self, port: usize, input: ChangeBatch, cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        if port > RIGHT {
            return Err(Error::Internal(format!("an interval join has no input {port}")));
        }
        let n = input.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        if input.retractions().is_some() {
            return Err(Error::Internal("an interval join got a changelog".into()));
        }
        let (side, other) = (port, 1 - port);
        let rows = &self.cfg.rows;
        let times = millis(input.batch.column(self.cfg.time[side]))?;
        let wms = input.wm.values();
        let (keys, key_ok) = rows.keys(side, &input.batch)?;
        let partner_gids = self.sides[other].keys.lookup(&keys, n)?;

        // Late rows, rows that can never match (NULL key or time), and candidate pairs.
        let mut late = Vec::new();
        let mut keep = Vec::with_capacity(n);
        let mut never = Vec::new();
        let (mut mine, mut theirs): (Vec<u32>, Vec<Slot>) = (Vec::new(), Vec::new());
        for i in 0..n {
            if times.is_null(i) || !key_ok[i] {
                never.push(i as u32);
                continue;
            }
            let t = times.value(i);
            if t < wms[i] {
                late.push(i as u32);
                continue;
            }
            keep.push(i as u32);
            let Some(g) = partner_gids[i] else { continue };
            let (from, to) = self.partner_range(side, t);
            let o = &self.sides[other];
            let list = &o.by_key[g as usize];
            let (a, b) = (
                list.partition_point(|s| s.t < from),
                list.partition_point(|s| s.t <= to),
            );
            for s in list.get(a..b).unwrap_or_default() {
                if o.is_alive(s) {
                    mine.push(i as u32);
                    theirs.push(*s);
                }
            }
        }
        if !late.is_empty() {
            let wm = late.iter().map(|i| wms[*i as usize]).min().unwrap_or(i64::MIN);
            cx.late(
                &input,
                &UInt32Array::from(late),
                format!(
                    "late: its time is before the watermark {} it arrived under",
                    crate::time::format_ms(wm)
                ),
            )?;
        }

        // Pairs: this side's rows with the other side's candidates, checked by the join condition.
        let mut out = Vec::new();
        let mine = UInt32Array::from(mine);
        let slots: Vec<(u64, u32)> = theirs.iter().map(|s| (s.chunk, s.row)).collect();
        let here = datafusion::arrow::compute::take_record_batch(&input.batch, &mine)?;
        let there = self.sides[other].rows(&rows.inputs[other], &slots)?;
        let (pairs, ok) = if side == LEFT {
            rows.check_pairs(&here, &there)?
        } else {
            rows.check_pairs(&there, &here)?
        };
        // After a restart, a pair of rows both older than the stored watermark went out before it:
        // both had arrived (on time) before the watermark passed them, and so before that commit.
        let floor = self.emit_floor;
        let fresh = |k: usize| floor == i64::MIN || times.value(mine.value(k) as usize).max(theirs[k].t) >= floor;
        let emit: BooleanArray = if floor == i64::MIN {
            ok.clone()
        } else {
            (0..ok.len()).map(|k| Some(ok.value(k) && fresh(k))).collect()
        };
        let pair_wm = take_wm(&input.wm, &mine)?;
        if let Some(b) = rows.joined(&pairs, &emit)? {
            let kept = datafusion::arrow::compute::filter(&pair_wm, &emit)?;
            let wm = kept
                .as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .ok_or_else(|| Error::Internal("row watermarks are not Int64".into()))?;
            out.push(out_batch(b, wm));
        }

        // Matches: flags of the other side's rows (a SEMI row of theirs goes out on its first match)
        // and of this side's rows.
        let mut matched = vec![false; n];
        let mut matched_before_restart = vec![false; n];
        let mut first: Vec<(u64, u32)> = Vec::new();
        let mut first_wm: Vec<i64> = Vec::new();
        let emit_first = rows.emits_matched(other);
        for (k, s) in theirs.iter().enumerate() {
            if !ok.value(k) {
                continue;
            }
            let i = mine.value(k) as usize;
            matched[i] = true;
            matched_before_restart[i] |= !fresh(k);
            if let Some(c) = self.sides[other].chunks.get_mut(&s.chunk)
                && !c.matched[s.row as usize]
            {
                c.matched[s.row as usize] = true;
                if emit_first && fresh(k) {
                    first.push((s.chunk, s.row));
                    first_wm.push(wms[i]);
                }
            }
        }
        if !first.is_empty() {
            let b = self.sides[other].rows(&rows.inputs[other], &first)?;
            out.push(out_batch(rows.side_rows(other, &b)?, Int64Array::from(first_wm)));
        }
        if rows.emits_matched(side) {
            let idx: UInt32Array = keep
                .iter()
                .copied()
                .filter(|i| matched[*i as usize] && !matched_before_restart[*i as usize])
                .collect();
            if !idx.is_empty() {
                let b = datafusion::arrow::compute::take_record_batch(&input.batch, &idx)?;
                out.push(out_batch(rows.side_rows(side, &b)?, take_wm(&input.wm, &idx)?));
            }
        }
        // Rows that can never match are final now (and went out before a restart if older than it).
        never.retain(|i| floor == i64::MIN || times.is_null(*i as usize) || times.value(*i as usize) >= floor);
        if rows.emits_unmatched(side) && !never.is_empty() {
            let idx = UInt32Array::from(never);
            let b = datafusion::arrow::compute::take_record_batch(&input.batch, &idx)?;
            out.push(out_batch(rows.side_rows(side, &b)?, take_wm(&input.wm, &idx)?));
        }

        // Keep this side's on-time rows for the other side's future rows.
        if !keep.is_empty() {
            let keep = UInt32Array::from(keep);
            let batch = datafusion::arrow::compute::take_record_batch(&input.batch, &keep)?;
            let key_cols = keys
                .iter()
                .map(|k| take(k, &keep, None))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let s = &mut self.sides[side];
            let gids = s.keys.intern(&key_cols, keep.len())?;
            if s.by_key.len() < s.keys.capacity() {
                s.by_key.resize_with(s.keys.capacity(), Vec::new);
            }
            let id = s.next_chunk;
            s.next_chunk += 1;
            for (row, (i, g)) in keep.values().iter().zip(&gids).enumerate() {
                let t = times.value(*i as usize);
                // Rows come nearly in time order: a late one goes in near the end.
                let list = &mut s.by_key[*g as usize];
                let at = list.len() - list.iter().rev().take_while(|x| x.t > t).count();
                list.insert(
                    at,
                    Slot {
                        chunk: id,
                        row: row as u32,
                        t,
                    },
                );
                s.expiry.insert((t, id, row as u32));
            }
            let m = keep.len();
            s.chunks.insert(
                id,
                Chunk {
                    batch,
                    matched: keep.values().iter().map(|i| matched[*i as usize]).collect(),
                    alive: vec![true; m],
                    live: m,
                },
            );
        }
        Ok(out)
    }

    fn advance(&mut self, wm: i64, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let mut out = Vec::new();
        for side in [LEFT, RIGHT] {
            let threshold = self.expiry_threshold(side, wm);
            let pad = self.cfg.rows.emits_unmatched(side);
            // Rows that had expired at the watermark stored before a restart went out before it.
            let padded_before = if self.emit_floor == i64::MIN {
                i64::MIN
            } else {
                self.expiry_threshold(side, self.emit_floor)
            };
            let s = &mut self.sides[side];
            let rest = s.expiry.split_off(&(threshold, 0, 0));
            let gone = std::mem::replace(&mut s.expiry, rest);
            if gone.is_empty() {
                continue;
            }
            let mut unmatched: Vec<(u64, u32)> = Vec::new();
            for (t, chunk, row) in &gone {
                if let Some(c) = s.chunks.get_mut(chunk) {
                    c.alive[*row as usize] = false;
                    c.live -= 1;
                    if pad && !c.matched[*row as usize] && *t >= padded_before {
                        unmatched.push((*chunk, *row));
                    }
                }
            }
            s.stale += gone.len();
            if !unmatched.is_empty() {
                let b = s.rows(&self.cfg.rows.inputs[side], &unmatched)?;
                out.push(ChangeBatch::append(self.cfg.rows.side_rows(side, &b)?, self.wm));
            }
            s.chunks.retain(|_, c| c.live > 0);
            if s.stale > s.expiry.len() + 1024 {
                s.sweep();
            }
        }
        self.wm = self.wm.max(wm);
        Ok(out)
    }

    fn low_water(&self) -> i64 {
        self.sides
            .iter()
            .filter_map(|s| s.expiry.first().map(|e| e.0))
            .min()
            .unwrap_or(i64::MAX)
    }

    fn state_size(&self) -> usize {
        self.sides.iter().map(|s| s.expiry.len()).sum()
    }

    fn set_emit_floor(&mut self, floor: i64) {
        self.emit_floor = floor;
    }

    /// Per side, its live rows (see [`SIDE_TABLES`]; bookkeeping: `event_time` (Int64, ms: the
    /// row's time attribute), `matched` (Boolean: it has matched a row of the other side)) in the
    /// order they expire (by time, then arrival), which is also the order a probe meets a key's rows; and the watermark and emit floor
    /// ([`PROGRESS_TABLE`]). The per-key index and the expiry order are rebuilt on restore.
    fn snapshot(&self) -> Result<OpState> {
        join_state(|side| self.side_table(side), Some((self.wm, self.emit_floor)))
    }

    fn restore(&mut self, state: OpState) -> Result<()> {
        let progress = restore_join_state(state, "an interval join", true, |side, name, t| {
            self.restore_side(side, name, t)
        })?;
        if let Some([wm, emit_floor]) = progress {
            (self.wm, self.emit_floor) = (wm, emit_floor);
        }
        Ok(())
    }
}

impl IntervalJoin {
    fn side_table(&self, side: usize) -> Result<RecordBatch> {
        let s = &self.sides[side];
        // The key of each live row, from the index.
        let mut gid_of: HashMap<(u64, u32), u32> = HashMap::new();
        for (g, list) in s.by_key.iter().enumerate() {
            for slot in list.iter().filter(|x| s.is_alive(x)) {
                gid_of.insert((slot.chunk, slot.row), g as u32);
            }
        }
        let slots: Vec<(u64, u32)> = s.expiry.iter().map(|(_, c, r)| (*c, *r)).collect();
        let keys = slots
            .iter()
            .map(|k| {
                gid_of
                    .get(k)
                    .and_then(|g| s.keys.key_bytes(*g))
                    .ok_or_else(|| Error::Internal("an interval join row lost its key".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        let times: ArrayRef = Arc::new(Int64Array::from_iter_values(s.expiry.iter().map(|e| e.0)));
        let matched: ArrayRef = Arc::new(
            slots
                .iter()
                .map(|(c, r)| Some(s.chunks.get(c).is_some_and(|c| c.matched[*r as usize])))
                .collect::<BooleanArray>(),
        );
        let rows = s.rows(&self.cfg.rows.inputs[side], &slots)?;
        rows_table(&keys, vec![("event_time", times), ("matched", matched)], &rows)
    }

    fn restore_side(&mut self, side: usize, name: &str, t: &RecordBatch) -> Result<()> {
        let batch = rows_from_table(name, t, &["event_time", "matched"], &self.cfg.rows.inputs[side])?;
        let bad = |what: String| Error::Internal(format!("join state table '{name}': {what}"));
        let stored_times = state::column::<Int64Array>(t, "event_time").map_err(|e| bad(message(e)))?;
        let matched = state::column::<BooleanArray>(t, "matched").map_err(|e| bad(message(e)))?;
        let keys = state::keys(t).map_err(|e| bad(message(e)))?;
        let n = batch.num_rows();
        let times = millis(batch.column(self.cfg.time[side]))?;
        let (key_cols, key_ok) = self.cfg.rows.keys(side, &batch)?;
        let s = &mut self.sides[side];
        let gids = s.keys.intern(&key_cols, n)?;
        for i in 0..n {
            if !key_ok[i] || times.is_null(i) {
                return Err(bad(format!(
                    "row {i} has a NULL key or time, which the join never holds"
                )));
            }
            if stored_times.is_null(i) || stored_times.value(i) != times.value(i) {
                return Err(bad(format!("row {i}'s event_time is not the time of its columns")));
            }
            if s.keys.key_bytes(gids[i]) != Some(keys.value(i)) {
                return Err(bad(format!("row {i}'s key is not the key of its columns")));
            }
            if matched.is_null(i) {
                return Err(bad(format!("row {i}'s 'matched' is NULL")));
            }
        }
        if s.by_key.len() < s.keys.capacity() {
            s.by_key.resize_with(s.keys.capacity(), Vec::new);
        }
        // One chunk; its rows in the order they were written (by time, then arrival).
        let id = s.next_chunk;
        s.next_chunk += 1;
        for (row, g) in gids.iter().enumerate() {
            let t = times.value(row);
            let list = &mut s.by_key[*g as usize];
            let at = list.len() - list.iter().rev().take_while(|x| x.t > t).count();
            list.insert(
                at,
                Slot {
                    chunk: id,
                    row: row as u32,
                    t,
                },
            );
            s.expiry.insert((t, id, row as u32));
        }
        if n > 0 {
            s.chunks.insert(
                id,
                Chunk {
                    batch,
                    matched: (0..n).map(|i| matched.value(i)).collect(),
                    alive: vec![true; n],
                    live: n,
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::window_join::tests::{join_rows, lines, rows_of};
    use datafusion::logical_expr::JoinType;

    /// `l.k = r.k AND l.v <> r.v`, `r.t - l.t` within `[0, 1000]`.
    fn op(join_type: JoinType) -> IntervalJoin {
        IntervalJoin::new(Config {
            rows: join_rows(join_type, true),
            time: [2, 2],
            lo: 0,
            hi: 1_000,
            text: String::new(),
        })
        .expect("op")
    }

    #[test]
    fn left_outer_interval_join_matches_across_batches_and_pads_on_expiry() {
        let mut j = op(JoinType::Left);
        let (l, r) = (j.cfg.rows.inputs[LEFT].clone(), j.cfg.rows.inputs[RIGHT].clone());
        let mut cx = Context::default();
        let out = j
            .process(
                LEFT,
                rows_of(
                    &l,
                    &[Some(1), Some(1), None],
                    &["a", "b", "c"],
                    &[100, 3_000, 50],
                    &[0; 3],
                ),
                &mut cx,
            )
            .expect("left");
        assert_eq!(
            lines(&out),
            vec!["| | c | 1970-01-01T00:00:00.050 | | | |"],
            "a NULL key never matches"
        );
        // 1/x at 900 matches 1/a at 100 (not b at 3000: too late for it).
        let out = j
            .process(
                RIGHT,
                rows_of(&r, &[Some(1), Some(1)], &["x", "a"], &[900, 1_000], &[0, 0]),
                &mut cx,
            )
            .expect("right");
        assert_eq!(
            lines(&out),
            vec!["| 1 | a | 1970-01-01T00:00:00.100 | 1 | x | 1970-01-01T00:00:00.900 |"],
            "1/a at 1000 fails a <> a"
        );
        assert!(j.advance(1_100, &mut cx).expect("advance").is_empty());
        assert_eq!(
            j.state_size(),
            2,
            "the right rows have gone (no left row at or after 1100 can match them); a at 100 stays, as a right row at 1100 still could"
        );
        // A right row at 500 is late (watermark 1100); one at 3500 matches b.
        let out = j
            .process(
                RIGHT,
                rows_of(&r, &[Some(1), Some(1)], &["y", "z"], &[500, 3_500], &[1_100, 1_100]),
                &mut cx,
            )
            .expect("right");
        assert_eq!(cx.late.len(), 1);
        assert_eq!(
            lines(&out),
            vec!["| 1 | b | 1970-01-01T00:00:03 | 1 | z | 1970-01-01T00:00:03.500 |"]
        );
        let out = j.advance(i64::MAX, &mut cx).expect("end");
        assert!(out.is_empty());
        assert_eq!((j.state_size(), j.low_water()), (0, i64::MAX));
    }

    #[test]
    fn unmatched_rows_are_padded_once_the_watermark_passes_their_interval() {
        let mut j = op(JoinType::Full);
        let (l, r) = (j.cfg.rows.inputs[LEFT].clone(), j.cfg.rows.inputs[RIGHT].clone());
        let mut cx = Context::default();
        j.process(LEFT, rows_of(&l, &[Some(1)], &["a"], &[1_000], &[0]), &mut cx)
            .expect("left");
        j.process(RIGHT, rows_of(&r, &[Some(2)], &["b"], &[1_000], &[0]), &mut cx)
            .expect("right");
        assert_eq!(j.low_water(), 1_000);
        let out = j.advance(1_500, &mut cx).expect("advance");
        assert_eq!(
            lines(&out),
            vec!["| | | | 2 | b | 1970-01-01T00:00:01 |"],
            "no left row at or after 1500 can match the right row at 1000"
        );
        assert!(
            j.advance(2_001, &mut cx).expect("advance").is_empty(),
            "a right row at 2000 (or, with finer timestamps, 2000.9) could still match"
        );
        let out = j.advance(2_002, &mut cx).expect("advance");
        assert_eq!(lines(&out), vec!["| 1 | a | 1970-01-01T00:00:01 | | | |"]);
        assert_eq!(
            out[0].wm.value(0),
            2_001,
            "padded rows carry the watermark before the advance"
        );
    }

    #[test]
    fn after_a_restart_what_went_out_before_the_stored_watermark_is_not_emitted_again() {
        let mut j = op(JoinType::Full);
        j.set_emit_floor(5_000);
        let (l, r) = (j.cfg.rows.inputs[LEFT].clone(), j.cfg.rows.inputs[RIGHT].clone());
        let mut cx = Context::default();
        // Re-read rows: a and x (both before 5000) matched before; b (at 4500) matches y (at 5200) now.
        let out = j
            .process(
                LEFT,
                rows_of(
                    &l,
                    &[Some(1), Some(2), Some(3), None],
                    &["a", "b", "c", "n"],
                    &[3_000, 4_500, 3_500, 100],
                    &[0; 4],
                ),
                &mut cx,
            )
            .expect("left");
        assert!(
            out.is_empty(),
            "the row with a NULL key (at 100) went out before the restart"
        );
        let out = j
            .process(
                RIGHT,
                rows_of(&r, &[Some(1), Some(2)], &["x", "y"], &[3_500, 5_200], &[0; 2]),
                &mut cx,
            )
            .expect("right");
        assert_eq!(
            lines(&out),
            vec!["| 2 | b | 1970-01-01T00:00:04.500 | 2 | y | 1970-01-01T00:00:05.200 |"]
        );
        // c (at 3500, unmatched) expired at watermark 4502 < 5000: padded before the restart.
        let out = j.advance(i64::MAX, &mut cx).expect("end");
        assert!(out.is_empty(), "{:?}", lines(&out));
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
        let schema = join_rows(JoinType::Inner, true).inputs[port].clone();
        Step::Rows(port, rows_of(&schema, k, v, ts, wm))
    }

    /// Every split of `steps` restores identically, for every join type; returns the rows compared.
    fn restores_at_every_split(make: impl Fn(JoinType) -> IntervalJoin, steps: &[Step]) -> usize {
        ALL_TYPES
            .into_iter()
            .map(|t| assert_restores_at_every_split(|| make(t), steps))
            .sum()
    }

    #[test]
    fn matches_late_rows_and_padding_on_expiry_restore() {
        // The first test's input, then more: rows that match after the split, rows evicted (and
        // padded) by an advance after it, late rows after it, first matches of SEMI rows on both
        // sides of it.
        let steps = vec![
            side(
                LEFT,
                &[Some(1), Some(1), None],
                &["a", "b", "c"],
                &[100, 3_000, 50],
                &[0; 3],
            ),
            side(RIGHT, &[Some(1), Some(1)], &["x", "a"], &[900, 1_000], &[0, 0]),
            Step::Advance(1_100),
            side(RIGHT, &[Some(1), Some(1)], &["y", "z"], &[500, 3_500], &[1_100, 1_100]),
            side(LEFT, &[Some(2), Some(1)], &["d", "e"], &[1_200, 3_400], &[1_100, 1_100]),
            side(
                RIGHT,
                &[Some(1), Some(2), Some(2)],
                &["w", "d", "v"],
                &[3_600, 1_300, 1_900],
                &[1_100; 3],
            ),
            Step::Advance(2_500),
            side(
                LEFT,
                &[Some(2), Some(1)],
                &["late", "f"],
                &[1_000, 3_800],
                &[2_500, 2_500],
            ),
            Step::Advance(4_100),
            side(RIGHT, &[Some(1)], &["u"], &[4_500], &[4_100]),
            Step::Advance(i64::MAX),
        ];
        assert!(restores_at_every_split(op, &steps) > 0);
    }

    #[test]
    fn padding_once_the_interval_passes_restores() {
        let steps = vec![
            side(LEFT, &[Some(1)], &["a"], &[1_000], &[0]),
            side(RIGHT, &[Some(2)], &["b"], &[1_000], &[0]),
            Step::Advance(1_500),
            Step::Advance(2_001),
            Step::Advance(2_002),
            side(LEFT, &[Some(2), Some(3)], &["c", "d"], &[2_500, 2_600], &[2_002, 2_002]),
            side(RIGHT, &[Some(2)], &["e"], &[3_000], &[2_002]),
            Step::Advance(i64::MAX),
        ];
        assert!(restores_at_every_split(op, &steps) > 0);
    }

    #[test]
    fn the_emit_floor_restores() {
        let make = |t: JoinType| {
            let mut j = op(t);
            j.set_emit_floor(5_000);
            j
        };
        let steps = vec![
            side(
                LEFT,
                &[Some(1), Some(2), Some(3), None],
                &["a", "b", "c", "n"],
                &[3_000, 4_500, 3_500, 100],
                &[0; 4],
            ),
            side(RIGHT, &[Some(1), Some(2)], &["x", "y"], &[3_500, 5_200], &[0; 2]),
            Step::Advance(5_500),
            side(LEFT, &[Some(2)], &["z"], &[5_600], &[5_500]),
            Step::Advance(i64::MAX),
        ];
        assert!(restores_at_every_split(make, &steps) > 0);
        // The floor is part of the state: a fresh operator without one takes it from the snapshot.
        let mut j = make(JoinType::Full);
        let mut cx = Context::default();
        if let Step::Rows(p, b) = &steps[0] {
            j.process(*p, b.clone(), &mut cx).expect("left");
        }
        let mut restored = op(JoinType::Full);
        restored.restore(j.snapshot().expect("snapshot")).expect("restore");
        assert_eq!((restored.emit_floor, restored.state_size()), (5_000, 3));
    }

    #[test]
    fn padded_rows_carry_the_restored_watermark() {
        let mut j = op(JoinType::Full);
        let l = j.cfg.rows.inputs[LEFT].clone();
        let mut cx = Context::default();
        j.process(LEFT, rows_of(&l, &[Some(1)], &["a"], &[1_000], &[0]), &mut cx)
            .expect("left");
        assert!(j.advance(1_200, &mut cx).expect("advance").is_empty());
        let mut restored = op(JoinType::Full);
        restored.restore(j.snapshot().expect("snapshot")).expect("restore");
        let out = restored.advance(i64::MAX, &mut cx).expect("end");
        assert_eq!(lines(&out), vec!["| 1 | a | 1970-01-01T00:00:01 | | | |"]);
        assert_eq!(out[0].wm.value(0), 1_200);
    }

    #[test]
    fn snapshot_holds_live_rows_in_expiry_order() {
        let mut j = op(JoinType::Left);
        let (l, r) = (j.cfg.rows.inputs[LEFT].clone(), j.cfg.rows.inputs[RIGHT].clone());
        let mut cx = Context::default();
        j.process(
            LEFT,
            rows_of(&l, &[Some(1), Some(2)], &["a", "b"], &[300, 100], &[0; 2]),
            &mut cx,
        )
        .expect("left");
        j.process(RIGHT, rows_of(&r, &[Some(2)], &["x"], &[150], &[0]), &mut cx)
            .expect("right");
        j.advance(50, &mut cx).expect("advance");
        let st = j.snapshot().expect("snapshot");
        let names: Vec<&str> = st.tables.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["left_rows", "right_rows", "progress"]);
        let left = &st.tables[0].1;
        let cols: Vec<String> = left.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(cols, ["key_group", "key", "event_time", "matched", "lk", "lv", "lws"]);
        let t = state::column::<Int64Array>(left, "event_time").expect("times");
        let m = state::column::<BooleanArray>(left, "matched").expect("matched");
        assert_eq!(t.values().to_vec(), vec![100, 300]);
        assert_eq!((m.value(0), m.value(1)), (true, false));
        let p = &st.tables[2].1;
        assert_eq!(state::column::<Int64Array>(p, "watermark").expect("wm").value(0), 50);
    }

    #[test]
    fn a_corrupted_state_is_refused() {
        let mut j = op(JoinType::Full);
        let (l, r) = (j.cfg.rows.inputs[LEFT].clone(), j.cfg.rows.inputs[RIGHT].clone());
        let mut cx = Context::default();
        j.process(
            LEFT,
            rows_of(&l, &[Some(1), Some(2)], &["a", "b"], &[300, 100], &[0; 2]),
            &mut cx,
        )
        .expect("left");
        j.process(RIGHT, rows_of(&r, &[Some(2)], &["x"], &[150], &[0]), &mut cx)
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
            use datafusion::arrow::datatypes::{Field, Schema};
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
        let e = err(replace(0, "matched", Arc::new(Int64Array::from(vec![1, 0]))));
        assert!(e.contains("left_rows") && e.contains("matched"), "{e}");
        let e = err(replace(0, "event_time", Arc::new(Int64Array::from(vec![100, 301]))));
        assert!(e.contains("event_time"), "{e}");
        let e = err(replace(1, "rk", Arc::new(Int64Array::from(vec![3]))));
        assert!(e.contains("right_rows"), "{e}");
        let strs = Arc::new(datafusion::arrow::array::StringArray::from(vec!["0"]));
        let e = err(replace(2, "watermark", strs));
        assert!(e.contains("progress") && e.contains("watermark"), "{e}");
    }

    #[test]
    fn semi_join_emits_a_row_on_its_first_match_and_anti_on_expiry() {
        let mut semi = op(JoinType::LeftSemi);
        let mut anti = op(JoinType::LeftAnti);
        let (l, r) = (semi.cfg.rows.inputs[LEFT].clone(), semi.cfg.rows.inputs[RIGHT].clone());
        let mut cx = Context::default();
        for j in [&mut semi, &mut anti] {
            let mut out = j
                .process(
                    LEFT,
                    rows_of(&l, &[Some(1), Some(2)], &["a", "b"], &[0, 0], &[0; 2]),
                    &mut cx,
                )
                .expect("left");
            out.extend(
                j.process(
                    RIGHT,
                    rows_of(&r, &[Some(1), Some(1)], &["x", "y"], &[10, 20], &[0; 2]),
                    &mut cx,
                )
                .expect("right"),
            );
            out.extend(j.advance(i64::MAX, &mut cx).expect("end"));
            let want = if j.cfg.rows.join_type == JoinType::LeftSemi {
                "| 1 | a |"
            } else {
                "| 2 | b |"
            };
            assert_eq!(lines(&out), vec![format!("{want} 1970-01-01T00:00:00 |")]);
        }
    }
}
