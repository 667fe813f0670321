//! SESSION window aggregate: per group key, sessions that grow and merge.
//!
//! A row at time `t` is the session `[t, t + gap)`; sessions of one key that overlap or touch merge
//! (Flink's rule: `[t, t+gap)` and `[t+gap, …)` are one session). A session fires once, when the
//! watermark reaches its end; it is append-only output.
//!
//! Rows are taken in arrival order: a session that had ended at the watermark a row arrived under is
//! closed for it (as if it had fired already), so the row opens a new session instead of reviving
//! the old one — the same result whatever the micro-batch size. A row whose own session `[t, t+gap)`
//! had ended is late.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use datafusion::common::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;

use super::acc::{AggCall, Aggregates};
use super::groups::GroupTable;
use super::state::{self, OpState, keyed_table, plain_table};
use super::window::millis;
use super::window_agg::OutCol;
use super::{ChangeBatch, Context, Operator, conformed_batch};
use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Config {
    pub gap: i64,
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Names of the keys (EXPLAIN).
    pub key_names: Vec<String>,
    pub key_types: Vec<DataType>,
    /// Evaluates to each row's event time (minus `time_shift` ms).
    pub time: Arc<dyn PhysicalExpr>,
    pub time_shift: i64,
    pub columns: Vec<OutCol>,
    pub calls: Arc<[AggCall]>,
    pub schema: SchemaRef,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    start: i64,
    end: i64,
    gid: u32,
}

/// What a session id stands for: the key of its session and the end under which the session waits
/// in [`SessionAgg::by_end`] (`i64::MIN`: none — the id is free or its session is new in this
/// micro-batch).
#[derive(Debug, Clone, Copy)]
struct Slot {
    kid: u32,
    end: i64,
}

/// No end: an open session ends after the watermark, so never at `i64::MIN`.
const NO_END: i64 = i64::MIN;

pub struct SessionAgg {
    cfg: Config,
    keys: GroupTable,
    /// Open sessions by key id (the index), each key's by start; empty for a key id not in use.
    sessions: Vec<Vec<Session>>,
    /// Sessions open now.
    open: usize,
    /// By session id: its key and the end it waits under in `by_end`.
    slots: Vec<Slot>,
    /// (end, gid) of every open session, earliest end (then lowest id) first, to fire in order.
    /// Entries go stale when their session grows, merges into another or fires (its slot no longer
    /// has that end); they are skipped when they come up. A session's entry is written once per
    /// micro-batch that changed its end, not per row.
    by_end: BinaryHeap<Reverse<(i64, u32)>>,
    aggs: Aggregates,
    next_gid: u32,
    free: Vec<u32>,
    wm: i64,
    /// Sessions ending at or before this are not emitted (see [`Operator::set_emit_floor`]).
    emit_floor: i64,
    /// Scratch for `process`: positions in a key's list of the sessions a row touches.
    hits: Vec<usize>,
    /// Scratch for `process`: ids of sessions created or grown in this micro-batch.
    touched: Vec<u32>,
}

impl SessionAgg {
    pub fn new(cfg: Config) -> Result<SessionAgg> {
        Ok(SessionAgg {
            keys: GroupTable::new(&cfg.key_types)?,
            aggs: Aggregates::new(&cfg.calls, false)?,
            cfg,
            sessions: Vec::new(),
            open: 0,
            slots: Vec::new(),
            by_end: BinaryHeap::new(),
            next_gid: 0,
            free: Vec::new(),
            wm: i64::MIN,
            emit_floor: i64::MIN,
            hits: Vec::new(),
            touched: Vec::new(),
        })
    }

    /// The open sessions of key `kid` (an empty list for a key id seen first).
    fn list_mut(sessions: &mut Vec<Vec<Session>>, kid: u32) -> &mut Vec<Session> {
        let k = kid as usize;
        if k >= sessions.len() {
            sessions.resize_with(k + 1, Vec::new);
        }
        &mut sessions[k]
    }

    /// Register the new ends of the sessions in `touched` (those still open) in `by_end`.
    fn register_touched(&mut self) {
        for g in self.touched.drain(..) {
            let slot = &mut self.slots[g as usize];
            let Some(s) = self
                .sessions
                .get(slot.kid as usize)
                .and_then(|l| l.iter().find(|s| s.gid == g))
            else {
                continue; // merged into another session in this micro-batch
            };
            if s.end != slot.end {
                slot.end = s.end;
                self.by_end.push(Reverse((s.end, g)));
            }
        }
    }

    /// Drop key `kid` once it has no open session.
    fn drop_key_if_idle(&mut self, kid: u32) {
        if self.sessions.get(kid as usize).is_none_or(Vec::is_empty) {
            self.keys.remove(kid);
        }
    }
}

/// Follow merges to the surviving session.
fn resolve(redirect: &HashMap<u32, u32>, mut g: u32) -> u32 {
    while let Some(n) = redirect.get(&g) {
        g = *n;
    }
    g
}

impl Operator for SessionAgg {
    fn process(&mut self, _port: usize, input: ChangeBatch, cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let n = input.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        if input.retractions().is_some() {
            return Err(Error::Internal("a session window aggregate got a changelog".into()));
        }
        let b = &input.batch;
        let ts = millis(&self.cfg.time.evaluate(b)?.into_array(n)?)?;
        if ts.null_count() > 0 {
            return Err(Error::Internal("a session's time is NULL".into()));
        }
        let key_cols: Vec<ArrayRef> = self
            .cfg
            .keys
            .iter()
            .map(|e| e.evaluate(b).and_then(|v| v.into_array(n)))
            .collect::<std::result::Result<_, _>>()?;
        let kids = self.keys.intern(&key_cols, n)?;
        let gap = self.cfg.gap;
        let wms = input.wm.values();
        let mut assigned: Vec<u32> = Vec::with_capacity(n);
        let mut rows: Vec<u32> = Vec::with_capacity(n);
        let mut late: Vec<u32> = Vec::new();
        let mut redirect: HashMap<u32, u32> = HashMap::new();
        let mut merges: Vec<(u32, u32)> = Vec::new();
        let mut retired: Vec<u32> = Vec::new();
        let mut hits = std::mem::take(&mut self.hits);
        for (i, (t, (&w, &kid))) in ts.values().iter().zip(wms.iter().zip(&kids)).enumerate() {
            let t = t - self.cfg.time_shift;
            let (start, end) = (t, t.saturating_add(gap));
            if end <= w {
                late.push(i as u32);
                continue;
            }
            let list = Self::list_mut(&mut self.sessions, kid);
            // Open sessions (not ended at this row's watermark) that overlap or touch the row's.
            hits.clear();
            hits.extend(
                list.iter()
                    .enumerate()
                    .filter(|(_, s)| s.end > w && s.start <= end && s.end >= start)
                    .map(|(j, _)| j),
            );
            let gid = match hits.first() {
                None => {
                    let gid = self.free.pop().unwrap_or_else(|| {
                        self.next_gid += 1;
                        self.next_gid - 1
                    });
                    let at = list.partition_point(|s| s.start < start);
                    list.insert(at, Session { start, end, gid });
                    let slot = Slot { kid, end: NO_END };
                    match self.slots.get_mut(gid as usize) {
                        Some(s) => *s = slot,
                        None => {
                            self.slots.resize(gid as usize + 1, Slot { kid: 0, end: NO_END });
                            self.slots[gid as usize] = slot;
                        }
                    }
                    self.open += 1;
                    self.touched.push(gid);
                    gid
                }
                Some(&first) => {
                    let keep = list[first];
                    let mut merged = Session {
                        start: keep.start.min(start),
                        end: keep.end.max(end),
                        gid: keep.gid,
                    };
                    for &j in hits[1..].iter() {
                        let other = list[j];
                        merged.start = merged.start.min(other.start);
                        merged.end = merged.end.max(other.end);
                        redirect.insert(other.gid, keep.gid);
                        merges.push((keep.gid, other.gid));
                        retired.push(other.gid);
                    }
                    for &j in hits[1..].iter().rev() {
                        list.remove(j);
                    }
                    self.open -= hits.len() - 1;
                    if merged.end != keep.end {
                        self.touched.push(keep.gid);
                    }
                    list[first] = merged;
                    merged.gid
                }
            };
            assigned.push(gid);
            rows.push(i as u32);
        }
        self.hits = hits;
        if !late.is_empty() {
            let idx = UInt32Array::from(late);
            let wm = idx.values().iter().map(|i| wms[*i as usize]).min().unwrap_or(i64::MIN);
            cx.late(
                &input,
                &idx,
                format!(
                    "late: its session window had ended at the watermark {}",
                    crate::time::format_ms(wm)
                ),
            )?;
            // A late row's key with no session of its own is not kept.
            for i in idx.values() {
                self.drop_key_if_idle(kids[*i as usize]);
            }
        }
        // State merges first (in the order they happened), then this batch's rows, once.
        for (dst, src) in merges {
            self.aggs.merge_groups(dst, src)?;
        }
        let gids: Vec<u32> = if redirect.is_empty() {
            assigned
        } else {
            assigned.iter().map(|g| resolve(&redirect, *g)).collect()
        };
        if !gids.is_empty() {
            let ev = Aggregates::evaluate_args(&self.cfg.calls, b)?;
            let sel = UInt32Array::from(rows);
            let all = sel.len() == n;
            self.aggs
                .update(&ev, (!all).then_some(&sel), &gids, None, self.next_gid as usize)?;
        }
        for g in retired {
            self.aggs.reset(g);
            self.slots[g as usize].end = NO_END;
            self.free.push(g);
        }
        self.register_touched();
        Ok(Vec::new())
    }

    fn advance(&mut self, wm: i64, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let mut closing: Vec<(i64, u32, u32)> = Vec::new();
        while let Some(&Reverse((end, gid))) = self.by_end.peek() {
            if end > wm {
                break;
            }
            self.by_end.pop();
            let slot = &mut self.slots[gid as usize];
            if slot.end != end {
                continue; // stale
            }
            slot.end = NO_END;
            closing.push((end, gid, slot.kid));
        }
        let prev = self.wm;
        self.wm = self.wm.max(wm);
        self.open -= closing.len();
        // Sessions emitted before a restart: drop what was read again of them.
        let floor = self.emit_floor;
        let (skip, keep): (Vec<_>, Vec<_>) = closing.into_iter().partition(|c| c.0 <= floor);
        for (_, gid, kid) in skip {
            Self::list_mut(&mut self.sessions, kid).retain(|s| s.gid != gid);
            self.aggs.reset(gid);
            self.free.push(gid);
            self.drop_key_if_idle(kid);
        }
        let closing = keep;
        if closing.is_empty() {
            return Ok(Vec::new());
        }
        let mut starts = Vec::with_capacity(closing.len());
        let mut gids = Vec::with_capacity(closing.len());
        let mut kids = Vec::with_capacity(closing.len());
        for (end, gid, kid) in &closing {
            let list = Self::list_mut(&mut self.sessions, *kid);
            let at = list
                .iter()
                .position(|s| s.gid == *gid)
                .ok_or_else(|| Error::Internal("a closing session is missing".into()))?;
            let s = list.remove(at);
            debug_assert_eq!(s.end, *end);
            starts.push(s.start);
            gids.push(*gid);
            kids.push(*kid);
        }
        let keys = self.keys.keys_of(&kids)?;
        let vals = self.aggs.evaluate(&gids)?;
        let n = gids.len();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.cfg.schema.fields().len());
        for c in &self.cfg.columns {
            cols.push(match c {
                OutCol::Key(i) => keys
                    .get(*i)
                    .cloned()
                    .ok_or_else(|| Error::Internal("session key column".into()))?,
                OutCol::Start => Arc::new(TimestampMillisecondArray::from(starts.clone())),
                OutCol::End => Arc::new(TimestampMillisecondArray::from_iter_values(closing.iter().map(|c| c.0))),
                OutCol::Time => Arc::new(TimestampMillisecondArray::from_iter_values(
                    closing.iter().map(|c| c.0 - 1),
                )),
            });
        }
        cols.extend(vals);
        let batch = conformed_batch(&self.cfg.schema, cols, n)?;
        for (g, k) in gids.iter().zip(&kids) {
            self.aggs.reset(*g);
            self.free.push(*g);
            self.drop_key_if_idle(*k);
        }
        Ok(vec![ChangeBatch::append(batch, prev)])
    }

    fn low_water(&self) -> i64 {
        self.sessions
            .iter()
            .flat_map(|l| l.iter().map(|s| s.start))
            .min()
            .unwrap_or(i64::MAX)
    }

    fn state_size(&self) -> usize {
        self.open
    }

    fn set_emit_floor(&mut self, floor: i64) {
        self.emit_floor = floor;
    }

    /// Tables: `session_agg` (one row: `next_gid` — the next new session id —, `wm`,
    /// `emit_floor`), `session_free_ids` (`gid`: ids of closed sessions to reuse, in the order they
    /// are taken back last first) and `sessions` (keyed: per open session, `start`, `end`, `gid`,
    /// then its aggregate state, see [`Aggregates::state_columns`]), by key, each key's sessions in
    /// their list order. Session ids are kept as they are: sessions ending together fire in id
    /// order.
    fn snapshot(&self) -> Result<OpState> {
        let mut st = OpState::new();
        st.put(
            "session_agg",
            plain_table(vec![
                ("next_gid", Arc::new(UInt32Array::from(vec![self.next_gid])) as ArrayRef),
                ("wm", Arc::new(Int64Array::from(vec![self.wm]))),
                ("emit_floor", Arc::new(Int64Array::from(vec![self.emit_floor]))),
            ])?,
        );
        st.put(
            "session_free_ids",
            plain_table(vec![(
                "gid",
                Arc::new(UInt32Array::from(self.free.clone())) as ArrayRef,
            )])?,
        );
        let mut keys: Vec<&[u8]> = Vec::new();
        let (mut starts, mut ends, mut gids) = (Vec::new(), Vec::new(), Vec::new());
        for (kid, list) in self.sessions.iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let key = self
                .keys
                .key_bytes(kid as u32)
                .ok_or_else(|| Error::Internal("an open session's key is missing".into()))?;
            for s in list {
                keys.push(key);
                starts.push(s.start);
                ends.push(s.end);
                gids.push(s.gid);
            }
        }
        let aggs = self.aggs.state_columns(&gids)?;
        let mut cols: Vec<(&str, ArrayRef)> = vec![
            ("start", Arc::new(Int64Array::from(starts))),
            ("end", Arc::new(Int64Array::from(ends))),
            ("gid", Arc::new(UInt32Array::from(gids))),
        ];
        cols.extend(aggs.iter().map(|(n, a)| (n.as_str(), a.clone())));
        st.put("sessions", keyed_table(keys, cols)?);
        Ok(st)
    }

    fn restore(&mut self, mut st: OpState) -> Result<()> {
        let meta = st.take_single_row("session_agg")?;
        let next = state::column::<UInt32Array>(&meta, "next_gid")?;
        let wm = state::column::<Int64Array>(&meta, "wm")?;
        let floor = state::column::<Int64Array>(&meta, "emit_floor")?;
        if next.is_null(0) || wm.is_null(0) || floor.is_null(0) {
            return Err(Error::Internal("state table 'session_agg' has NULLs".into()));
        }
        let next_gid = next.value(0);
        let free_t = st.take("session_free_ids")?;
        let free = state::column::<UInt32Array>(&free_t, "gid")?;
        let t = st.take("sessions")?;
        let keys = state::keys(&t)?;
        let start = state::column::<Int64Array>(&t, "start")?;
        let end = state::column::<Int64Array>(&t, "end")?;
        let gid = state::column::<UInt32Array>(&t, "gid")?;
        if [
            keys.null_count(),
            start.null_count(),
            end.null_count(),
            gid.null_count(),
            free.null_count(),
        ]
        .iter()
        .any(|n| *n > 0)
        {
            return Err(Error::Internal(
                "state table 'sessions' or 'session_free_ids' has NULLs".into(),
            ));
        }
        // Every id below `next_gid`, each once: an open session's or a free one.
        let mut seen = datafusion::common::HashSet::new();
        for g in gid.values().iter().chain(free.values().iter()) {
            if *g >= next_gid || !seen.insert(*g) {
                return Err(Error::Internal(format!(
                    "state table 'sessions' has session id {g} twice or beyond next_gid {next_gid}"
                )));
            }
        }
        let mut table = GroupTable::new(&self.cfg.key_types)?;
        let mut sessions: Vec<Vec<Session>> = Vec::new();
        let mut slots = vec![Slot { kid: 0, end: NO_END }; next_gid as usize];
        let mut by_end = BinaryHeap::with_capacity(t.num_rows());
        for i in 0..t.num_rows() {
            let kid = table.intern_bytes(keys.value(i));
            let s = Session {
                start: start.value(i),
                end: end.value(i),
                gid: gid.value(i),
            };
            Self::list_mut(&mut sessions, kid).push(s);
            slots[s.gid as usize] = Slot { kid, end: s.end };
            by_end.push(Reverse((s.end, s.gid)));
        }
        self.aggs.restore_columns(gid.values(), &t)?;
        self.keys = table;
        self.sessions = sessions;
        self.open = t.num_rows();
        self.slots = slots;
        self.by_end = by_end;
        self.next_gid = next_gid;
        self.free = free.values().to_vec();
        self.wm = wm.value(0);
        self.emit_floor = self.emit_floor.max(floor.value(0));
        Ok(())
    }
}

impl SessionAgg {
    /// Sessions open now (for tests and metrics).
    pub fn open_sessions(&self) -> usize {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::acc::AggKind;
    use crate::operator::test_rows::rows;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Field, Int64Type, Schema, TimeUnit, TimestampMillisecondType};
    use datafusion::physical_expr::expressions::col;

    fn op(gap: i64) -> SessionAgg {
        let s = crate::operator::test_rows::schema();
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        SessionAgg::new(Config {
            gap,
            keys: vec![col("k", &s).expect("k")],
            key_names: vec!["k".into()],
            key_types: vec![DataType::Utf8],
            time: col("t", &s).expect("t"),
            time_shift: 0,
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
        })
        .expect("op")
    }

    fn collect(out: &[ChangeBatch]) -> Vec<(String, i64, i64, i64)> {
        let mut v = Vec::new();
        for c in out {
            let b = &c.batch;
            for i in 0..b.num_rows() {
                v.push((
                    b.column(0).as_string::<i32>().value(i).to_string(),
                    b.column(1).as_primitive::<TimestampMillisecondType>().value(i),
                    b.column(2).as_primitive::<TimestampMillisecondType>().value(i),
                    b.column(3).as_primitive::<Int64Type>().value(i),
                ));
            }
        }
        v.sort();
        v
    }

    #[test]
    fn sessions_merge_when_they_touch_and_a_bridge_joins_two() {
        let mut s = op(1_000);
        let mut cx = Context::default();
        // u: 0 and 1000 touch ([0,1000) and [1000,2000)); 5000 alone; then, in a later batch, 3000
        // opens a session, 2000 bridges it to [0, 2000) and 4000 bridges all to [5000, 6000).
        s.process(
            0,
            rows(&["u", "u", "u", "v"], &[0, 1_000, 5_000, 0], &[0, 0, 0, 0]),
            &mut cx,
        )
        .expect("p");
        assert_eq!(s.open_sessions(), 3);
        s.process(0, rows(&["u", "u", "u"], &[3_000, 2_000, 4_000], &[0, 0, 0]), &mut cx)
            .expect("p");
        assert_eq!(s.open_sessions(), 2);
        let out = s.advance(i64::MAX, &mut cx).expect("a");
        assert_eq!(
            collect(&out),
            vec![("u".into(), 0, 6_000, 6), ("v".into(), 0, 1_000, 1)]
        );
        assert_eq!(s.state_size(), 0);
    }

    #[test]
    fn a_row_after_its_key_session_ended_opens_a_new_one() {
        let mut s = op(1_000);
        let mut cx = Context::default();
        // The session [0, 1000) has ended at watermark 1500 when the row at 900 arrives: that row's
        // own session [900, 1900) is open, and separate.
        s.process(0, rows(&["u", "u", "u"], &[0, 2_600, 900], &[0, 0, 1_500]), &mut cx)
            .expect("p");
        let out = s.advance(i64::MAX, &mut cx).expect("a");
        assert_eq!(
            collect(&out),
            vec![
                ("u".into(), 0, 1_000, 1),
                ("u".into(), 900, 1_900, 1),
                ("u".into(), 2_600, 3_600, 1)
            ]
        );
        s.process(0, rows(&["u"], &[100], &[5_000]), &mut cx).expect("p");
        assert_eq!(cx.late.len(), 1);
    }

    use crate::operator::acc::testing::{all_calls, fields, rows as xrows};
    use crate::operator::state::testing::{Step, assert_restores_at_every_split};

    /// A session aggregate over `k, t, x` grouped by `k` with `calls`.
    fn op_with(gap: i64, calls: Vec<AggCall>) -> SessionAgg {
        let s = crate::operator::acc::testing::schema();
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let mut out = vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
        ];
        out.extend(fields(&calls));
        SessionAgg::new(Config {
            gap,
            keys: vec![col("k", &s).expect("k")],
            key_names: vec!["k".into()],
            key_types: vec![DataType::Utf8],
            time: col("t", &s).expect("t"),
            time_shift: 0,
            columns: vec![OutCol::Key(0), OutCol::Start, OutCol::End],
            calls: calls.into(),
            schema: Arc::new(Schema::new(out)),
        })
        .expect("op")
    }

    /// Sessions that merge across steps, fire, free their ids for new ones, take late rows, and
    /// end together (firing in session id order).
    fn steps() -> Vec<Step> {
        vec![
            Step::Rows(
                0,
                xrows(
                    &["u", "u", "u", "v"],
                    &[0, 1_000, 5_000, 0],
                    &[Some(1), Some(2), Some(3), Some(4)],
                    &[0; 4],
                ),
            ),
            // 3000 opens a session, 2000 bridges it to [0, 2000), 4000 bridges all to [5000, 6000).
            Step::Rows(
                0,
                xrows(
                    &["u", "u", "u"],
                    &[3_000, 2_000, 4_000],
                    &[None, Some(5), Some(5)],
                    &[0; 3],
                ),
            ),
            Step::Rows(0, xrows(&["v", "w"], &[2_500, 100], &[Some(6), Some(7)], &[0, 0])),
            Step::Advance(1_500),
            // v@900 opens [900, 1900) (v's [0, 1000) fired); w@50 is late; u grows to [0, 6500).
            Step::Rows(
                0,
                xrows(
                    &["v", "w", "u"],
                    &[900, 50, 5_500],
                    &[Some(8), Some(9), Some(1)],
                    &[1_500; 3],
                ),
            ),
            Step::Advance(3_000),
            Step::Rows(
                0,
                xrows(
                    &["v", "x", "y"],
                    &[3_400, 7_000, 7_000],
                    &[Some(2), Some(3), Some(4)],
                    &[3_000; 3],
                ),
            ),
            Step::Rows(
                0,
                xrows(
                    &["y", "x", "z"],
                    &[7_500, 7_500, 7_500],
                    &[Some(1), None, Some(2)],
                    &[3_000; 3],
                ),
            ),
            Step::Advance(7_000),
            Step::Rows(0, xrows(&["v"], &[100], &[Some(1)], &[7_000])),
            Step::Advance(i64::MAX),
        ]
    }

    #[test]
    fn sessions_restore_with_every_accumulator_kind() {
        let n = assert_restores_at_every_split(|| op_with(1_000, all_calls()), &steps());
        assert!(n > 0);
    }

    #[test]
    fn a_row_after_its_key_session_ended_restores() {
        let steps = vec![
            Step::Rows(
                0,
                xrows(
                    &["u", "u", "u"],
                    &[0, 2_600, 900],
                    &[Some(1), Some(2), Some(3)],
                    &[0, 0, 1_500],
                ),
            ),
            Step::Advance(2_000),
            Step::Rows(
                0,
                xrows(&["u", "u"], &[1_000, 3_000], &[Some(4), Some(5)], &[2_000, 2_000]),
            ),
            Step::Advance(i64::MAX),
            Step::Rows(0, xrows(&["u"], &[100], &[Some(6)], &[5_000])),
        ];
        assert_restores_at_every_split(|| op_with(1_000, all_calls()), &steps);
    }

    #[test]
    fn a_corrupted_session_state_is_refused() {
        let make = || op_with(1_000, all_calls());
        let mut s = make();
        let mut cx = Context::default();
        for step in &steps()[..3] {
            if let Step::Rows(_, b) = step {
                s.process(0, b.clone(), &mut cx).expect("process");
            }
        }
        let st = s.snapshot().expect("snapshot");
        let names: Vec<&str> = st.tables.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["session_agg", "session_free_ids", "sessions"]);
        for t in names {
            let mut missing = st.clone();
            missing.tables.retain(|(n, _)| n != t);
            let err = make().restore(missing).expect_err("missing table");
            assert!(err.to_string().contains(t), "{err}");
        }
        let replace = |table: &str, col: &str, with: ArrayRef| {
            let mut out = OpState::new();
            for (n, t) in &st.tables {
                if n != table {
                    out.put(n, t.clone());
                    continue;
                }
                let i = t.schema().index_of(col).expect("column");
                let mut fields: Vec<Field> = t.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
                fields[i] = Field::new(col, with.data_type().clone(), true);
                let mut cols = t.columns().to_vec();
                cols[i] = with.clone();
                out.put(
                    n,
                    datafusion::arrow::array::RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("table"),
                );
            }
            out
        };
        let sessions = st.tables[2].1.num_rows();
        assert_eq!(
            sessions, 4,
            "u [0, 2000), u [5000, 6000), v [0, 1000), v [2500, 3500), w [100, 1100)"
        );
        let strings = |n: usize| Arc::new(datafusion::arrow::array::StringArray::from(vec!["x"; n])) as ArrayRef;
        for (table, col, n) in [
            ("session_agg", "next_gid", 1),
            ("session_agg", "wm", 1),
            ("session_free_ids", "gid", st.tables[1].1.num_rows()),
            ("sessions", "start", sessions),
            ("sessions", "gid", sessions),
            ("sessions", "a4_best", sessions),
            ("sessions", "a7_state0", sessions),
        ] {
            let err = make().restore(replace(table, col, strings(n))).expect_err(col);
            assert!(err.to_string().contains(col), "{col}: {err}");
        }
        let twice = UInt32Array::from(vec![0; sessions]);
        let err = make()
            .restore(replace("sessions", "gid", Arc::new(twice)))
            .expect_err("ids twice");
        assert!(err.to_string().contains("twice"), "{err}");
        make().restore(st).expect("the state as written restores");
    }
}
