//! OVER aggregates: `SUM/COUNT/AVG/MIN/MAX(x) OVER (PARTITION BY k ORDER BY <time attribute> <frame>)`
//! (Flink's row-time OVER aggregation). Every input row leaves once, with the aggregates of its frame.
//!
//! A row's frame is only known when no row can arrive before it any more, so rows wait for the
//! watermark to pass their time; then each partition's waiting rows are taken in time order (ties in
//! arrival order) and its aggregates move along: a row (`ROWS`) or all rows of one time (`RANGE`:
//! peers share the frame and the result) are added, rows that fell out of the frame are retracted
//! (retractable accumulators of [`super::acc`]), the values are read. Many partitions move in one
//! step: step k adds the k-th row (or time) of every partition in one batch update.
//!
//! Late rows follow Flink's rule, decided with each row's arrival watermark so that results do not
//! depend on micro-batch boundaries: a row is late if its partition had already produced a result for
//! its time or a later one (a row of the partition, arrived before it, whose time the watermark had
//! passed when it arrived).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, UInt32Array};
use datafusion::arrow::compute::{cast, interleave};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;

use super::acc::{AggCall, Aggregates};
use super::groups::GroupTable;
use super::window::millis;
use super::{ChangeBatch, Context, Operator};
use crate::error::{Error, Result};

/// A frame ending at the current row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `ROWS BETWEEN n PRECEDING AND CURRENT ROW` (`None`: `UNBOUNDED PRECEDING`).
    Rows(Option<u64>),
    /// `RANGE BETWEEN INTERVAL … PRECEDING AND CURRENT ROW`, in ms (`None`: `UNBOUNDED PRECEDING`).
    Range(Option<i64>),
}

impl Frame {
    pub fn sql(&self) -> String {
        match self {
            Frame::Rows(None) => "ROWS UNBOUNDED PRECEDING".into(),
            Frame::Rows(Some(n)) => format!("ROWS {n} PRECEDING"),
            Frame::Range(None) => "RANGE UNBOUNDED PRECEDING".into(),
            Frame::Range(Some(ms)) => format!("RANGE {} PRECEDING", super::window::dur(*ms)),
        }
    }

    fn bounded(&self) -> bool {
        matches!(self, Frame::Rows(Some(_)) | Frame::Range(Some(_)))
    }
}

#[derive(Clone)]
pub struct Config {
    pub partition: Vec<Arc<dyn PhysicalExpr>>,
    pub partition_types: Vec<DataType>,
    /// The time attribute's column in the input.
    pub time: usize,
    /// The aggregate calls in output order, each with its frame.
    pub calls: Vec<(AggCall, Frame)>,
    /// The input's columns, then one per call.
    pub schema: SchemaRef,
}

/// Rows in a partition's frame, oldest first: time and Arrow row-format bytes.
type FrameRows = VecDeque<(i64, Box<[u8]>)>;

/// Calls sharing a frame: one aggregate state, moved along together.
struct FrameGroup {
    frame: Frame,
    calls: Arc<[AggCall]>,
    /// Output column (among the calls) of each of `calls`.
    outputs: Vec<usize>,
    aggs: Aggregates,
    /// Per partition id, the rows in the frame that will leave it (bounded frames): time and row.
    frame_rows: Vec<FrameRows>,
}

/// A partition's rows waiting for the watermark, by (time, arrival).
#[derive(Default)]
struct Part {
    waiting: BTreeMap<(i64, u64), Box<[u8]>>,
    /// The newest time a result was produced for.
    done: Option<i64>,
}

pub struct OverAgg {
    cfg: Config,
    rows: RowConverter,
    /// The input's columns (what the aggregates' arguments are evaluated on).
    input_schema: SchemaRef,
    table: GroupTable,
    parts: Vec<Part>,
    groups: Vec<FrameGroup>,
    /// Waiting rows of every partition by (time, arrival).
    due: BTreeSet<(i64, u64, u32)>,
    seq: u64,
    wm: i64,
    emit_floor: i64,
}

impl OverAgg {
    pub fn new(cfg: Config) -> Result<OverAgg> {
        let nin = cfg.schema.fields().len().saturating_sub(cfg.calls.len());
        let fields: Vec<SortField> = cfg
            .schema
            .fields()
            .iter()
            .take(nin)
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        let input_schema = Arc::new(Schema::new(
            cfg.schema.fields().iter().take(nin).cloned().collect::<Vec<_>>(),
        ));
        let mut by_frame: Vec<(Frame, Vec<AggCall>, Vec<usize>)> = Vec::new();
        for (i, (call, frame)) in cfg.calls.iter().enumerate() {
            match by_frame.iter_mut().find(|g| g.0 == *frame) {
                Some(g) => {
                    g.1.push(call.clone());
                    g.2.push(i);
                }
                None => by_frame.push((*frame, vec![call.clone()], vec![i])),
            }
        }
        let groups = by_frame
            .into_iter()
            .map(|(frame, calls, outputs)| {
                let calls: Arc<[AggCall]> = calls.into();
                Ok(FrameGroup {
                    frame,
                    aggs: Aggregates::new(&calls, frame.bounded())?,
                    calls,
                    outputs,
                    frame_rows: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(OverAgg {
            rows: RowConverter::new(fields)?,
            input_schema,
            table: GroupTable::new(&cfg.partition_types)?,
            parts: Vec::new(),
            groups,
            due: BTreeSet::new(),
            seq: 0,
            wm: i64::MIN,
            emit_floor: i64::MIN,
            cfg,
        })
    }

    /// Compute and emit every waiting row whose time is before `wm`.
    fn fire(&mut self, wm: i64) -> Result<Vec<ChangeBatch>> {
        let rest = self.due.split_off(&(wm, 0, 0));
        let ready = std::mem::replace(&mut self.due, rest);
        if ready.is_empty() {
            return Ok(Vec::new());
        }
        // The rows to emit, in (time, arrival) order, and per partition the positions of its rows.
        let mut times: Vec<i64> = Vec::with_capacity(ready.len());
        let mut gids: Vec<u32> = Vec::with_capacity(ready.len());
        let mut fresh: Vec<Box<[u8]>> = Vec::with_capacity(ready.len());
        for (t, seq, g) in ready {
            let part = &mut self.parts[g as usize];
            let row = part
                .waiting
                .remove(&(t, seq))
                .ok_or_else(|| Error::Internal("an OVER aggregate lost a waiting row".into()))?;
            part.done = Some(part.done.map_or(t, |d| d.max(t)));
            times.push(t);
            gids.push(g);
            fresh.push(row);
        }
        let mut by_part: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, g) in gids.iter().enumerate() {
            by_part.entry(*g).or_default().push(i);
        }
        let nfresh = fresh.len();
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.cfg.calls.len()];
        let cap = self.table.capacity();
        for fg in &mut self.groups {
            let cols = move_frame(fg, (&self.rows, &self.input_schema), &fresh, &times, &by_part, cap)?;
            for (c, a) in fg.outputs.iter().zip(cols) {
                columns[*c] = Some(a);
            }
        }
        // The emitted rows: the waiting rows with the aggregate values.
        let parser = self.rows.parser();
        let mut cols = self.rows.convert_rows(fresh.iter().map(|r| parser.parse(r)))?;
        let nin = cols.len();
        for (i, c) in columns.into_iter().enumerate() {
            let a = c.ok_or_else(|| Error::Internal("an OVER aggregate without its frame".into()))?;
            let f = self.cfg.schema.field(nin + i);
            cols.push(if a.data_type() == f.data_type() {
                a
            } else {
                cast(&a, f.data_type())?
            });
        }
        let batch = RecordBatch::try_new_with_options(
            self.cfg.schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(nfresh)),
        )?;
        let mut out = ChangeBatch::append(batch, self.wm);
        if self.emit_floor > i64::MIN {
            // Rows before the restart floor were emitted before the restart.
            let keep: datafusion::arrow::array::BooleanArray =
                times.iter().map(|t| Some(*t >= self.emit_floor)).collect();
            out = out.filter(&keep)?;
        }
        Ok(if out.is_empty() { Vec::new() } else { vec![out] })
    }
}

/// Move frame group `fg` over the rows `fresh` (times `times`; positions per partition in `by_part`,
/// in order); the values of its calls for each row, in row order.
fn move_frame(
    fg: &mut FrameGroup,
    (conv, schema): (&RowConverter, &SchemaRef),
    fresh: &[Box<[u8]>],
    times: &[i64],
    by_part: &BTreeMap<u32, Vec<usize>>,
    capacity: usize,
) -> Result<Vec<ArrayRef>> {
    if fg.frame_rows.len() < capacity {
        fg.frame_rows.resize_with(capacity, VecDeque::new);
    }
    // Rows the aggregates see, as one batch: the rows still in the frames of these partitions
    // (they may leave now), then the new rows.
    let mut all: Vec<&[u8]> = Vec::new();
    // Per partition: the positions in `all` of its frame rows, with their times.
    let mut in_frame: BTreeMap<u32, VecDeque<(i64, u32)>> = BTreeMap::new();
    let held: Vec<(u32, FrameRows)> = if fg.frame.bounded() {
        by_part
            .keys()
            .map(|g| (*g, std::mem::take(&mut fg.frame_rows[*g as usize])))
            .collect()
    } else {
        Vec::new()
    };
    if fg.frame.bounded() {
        for (g, rows) in &held {
            let q = in_frame.entry(*g).or_default();
            for (t, r) in rows {
                q.push_back((*t, all.len() as u32));
                all.push(r);
            }
        }
    }
    let offset = all.len() as u32;
    all.extend(fresh.iter().map(|r| r.as_ref()));
    let parser = conv.parser();
    let batch = RecordBatch::try_new_with_options(
        schema.clone(),
        conv.convert_rows(all.iter().map(|r| parser.parse(r)))?,
        &RecordBatchOptions::new().with_row_count(Some(all.len())),
    )?;
    let ev = Aggregates::evaluate_args(&fg.calls, &batch)?;
    // Units of each partition: a row (ROWS) or the rows of one time (RANGE), as positions in `fresh`.
    let units: Vec<(u32, Vec<Vec<usize>>)> = by_part
        .iter()
        .map(|(g, rows)| {
            let mut us: Vec<Vec<usize>> = Vec::new();
            for r in rows {
                match (fg.frame, us.last_mut()) {
                    (Frame::Range(_), Some(u)) if u.first().is_some_and(|f| times[*f] == times[*r]) => u.push(*r),
                    _ => us.push(vec![*r]),
                }
            }
            (*g, us)
        })
        .collect();
    let steps = units.iter().map(|(_, u)| u.len()).max().unwrap_or(0);
    // Per step, the values of every call (one per partition in the step); per row, where its value is.
    let mut values: Vec<Vec<ArrayRef>> = Vec::with_capacity(steps);
    let mut at: Vec<(usize, usize)> = vec![(0, 0); fresh.len()];
    for k in 0..steps {
        let mut idx: Vec<u32> = Vec::new();
        let mut gids: Vec<u32> = Vec::new();
        let mut retract: Vec<bool> = Vec::new();
        let mut step_gids: Vec<u32> = Vec::new();
        for (g, us) in &units {
            let Some(unit) = us.get(k) else { continue };
            let slot = step_gids.len();
            step_gids.push(*g);
            let t = times[unit[0]];
            for r in unit {
                idx.push(offset + *r as u32);
                gids.push(*g);
                retract.push(false);
                at[*r] = (k, slot);
            }
            if let Some(q) = in_frame.get_mut(g) {
                for r in unit {
                    q.push_back((times[*r], offset + *r as u32));
                }
                let leaving = |q: &VecDeque<(i64, u32)>| match fg.frame {
                    Frame::Rows(Some(n)) => q.len() as u64 > n + 1,
                    Frame::Range(Some(ms)) => q.front().is_some_and(|(ft, _)| *ft < t.saturating_sub(ms)),
                    _ => false,
                };
                while leaving(q) {
                    let Some((_, p)) = q.pop_front() else { break };
                    idx.push(p);
                    gids.push(*g);
                    retract.push(true);
                }
            }
        }
        let rows = UInt32Array::from(idx);
        let retract = retract.iter().any(|r| *r).then_some(retract);
        fg.aggs.update(&ev, Some(&rows), &gids, retract.as_deref(), capacity)?;
        values.push(fg.aggs.evaluate(&step_gids)?);
    }
    // Keep what is still in the frames.
    for (g, q) in in_frame {
        fg.frame_rows[g as usize] = q.into_iter().map(|(t, p)| (t, all[p as usize].into())).collect();
    }
    (0..fg.calls.len())
        .map(|c| {
            let arrays: Vec<&dyn Array> = values.iter().map(|v| v[c].as_ref()).collect();
            Ok(interleave(&arrays, &at)?)
        })
        .collect()
}

impl Operator for OverAgg {
    fn process(&mut self, _port: usize, input: ChangeBatch, cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let n = input.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        if input.retractions().is_some() {
            return Err(Error::Internal("an OVER aggregate got a changelog".into()));
        }
        let b = &input.batch;
        let keys: Vec<ArrayRef> = self
            .cfg
            .partition
            .iter()
            .map(|e| e.evaluate(b).and_then(|v| v.into_array(n)))
            .collect::<std::result::Result<_, _>>()?;
        let gids = self.table.intern(&keys, n)?;
        if self.parts.len() < self.table.capacity() {
            self.parts.resize_with(self.table.capacity(), Part::default);
        }
        let ts = millis(b.column(self.cfg.time))?;
        let rows = self.rows.convert_columns(b.columns())?;
        let wms = input.wm.values();
        let mut late = Vec::new();
        let mut reason = String::new();
        for (i, g) in gids.iter().enumerate() {
            if ts.is_null(i) {
                late.push(i as u32);
                continue;
            }
            let (t, w) = (ts.value(i), wms[i]);
            let part = &mut self.parts[*g as usize];
            // The newest time this partition had a result for when the row arrived: rows waiting
            // now whose time the watermark had passed then were computed by then.
            let passed = part.waiting.range(..(w, 0)).next_back().map(|((t, _), _)| *t);
            let done = part.done.max(passed);
            if let Some(d) = done
                && t <= d
            {
                late.push(i as u32);
                if reason.is_empty() {
                    reason = format!(
                        "late: its partition had results up to {} at the watermark {}",
                        crate::time::format_ms(d),
                        crate::time::format_ms(w)
                    );
                }
                continue;
            }
            self.seq += 1;
            part.waiting.insert((t, self.seq), rows.row(i).as_ref().into());
            self.due.insert((t, self.seq, *g));
        }
        if reason.is_empty() {
            reason = "its time is NULL".into();
        }
        cx.late(&input, &UInt32Array::from(late), reason)?;
        Ok(Vec::new())
    }

    fn advance(&mut self, wm: i64, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let out = self.fire(wm)?;
        self.wm = self.wm.max(wm);
        Ok(out)
    }

    fn low_water(&self) -> i64 {
        if self.table.is_empty() { i64::MAX } else { i64::MIN }
    }

    fn state_size(&self) -> usize {
        self.due.len()
            + self
                .groups
                .iter()
                .map(|g| g.frame_rows.iter().map(VecDeque::len).sum::<usize>())
                .sum::<usize>()
    }

    fn set_emit_floor(&mut self, floor: i64) {
        self.emit_floor = floor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::acc::AggKind;
    use datafusion::arrow::array::{AsArray, Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Field, Int64Type, TimeUnit};
    use datafusion::physical_expr::expressions::col;

    fn input_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]))
    }

    /// SUM(v) and MAX(v) over `frame`, partitioned by `k`.
    fn op(frame: Frame) -> OverAgg {
        let s = input_schema();
        let call = |kind: AggKind, name: &str| AggCall {
            display: format!("{name}(v)"),
            kind,
            args: vec![col("v", &s).expect("v")],
            filter: None,
            distinct: false,
            return_type: DataType::Int64,
        };
        let mut fields: Vec<Field> = s.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("s", DataType::Int64, true));
        fields.push(Field::new("m", DataType::Int64, true));
        OverAgg::new(Config {
            partition: vec![col("k", &s).expect("k")],
            partition_types: vec![DataType::Utf8],
            time: 2,
            calls: vec![(call(AggKind::Sum, "sum"), frame), (call(AggKind::Max, "max"), frame)],
            schema: Arc::new(Schema::new(fields)),
        })
        .expect("op")
    }

    fn rows(r: &[(&str, i64, i64)], wm: i64) -> ChangeBatch {
        let b = RecordBatch::try_new(
            input_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(r.iter().map(|x| x.0))),
                Arc::new(Int64Array::from_iter_values(r.iter().map(|x| x.1))),
                Arc::new(TimestampMillisecondArray::from_iter_values(r.iter().map(|x| x.2))),
            ],
        )
        .expect("batch");
        ChangeBatch::append(b, wm)
    }

    /// Rows `(k, v, sum, max)` emitted by processing `input` and advancing to `wm`.
    fn step(op: &mut OverAgg, input: ChangeBatch, wm: i64, cx: &mut Context) -> Vec<(String, i64, i64, i64)> {
        let mut out = op.process(0, input, cx).expect("process");
        out.extend(op.advance(wm, cx).expect("advance"));
        let mut v = Vec::new();
        for c in out {
            let b = &c.batch;
            for i in 0..b.num_rows() {
                v.push((
                    b.column(0).as_string::<i32>().value(i).to_string(),
                    b.column(1).as_primitive::<Int64Type>().value(i),
                    b.column(3).as_primitive::<Int64Type>().value(i),
                    b.column(4).as_primitive::<Int64Type>().value(i),
                ));
            }
        }
        v
    }

    fn r(k: &str, v: i64, s: i64, m: i64) -> (String, i64, i64, i64) {
        (k.to_string(), v, s, m)
    }

    #[test]
    fn rows_frames_move_in_time_order_once_the_watermark_passes() {
        let mut o = op(Frame::Rows(Some(1)));
        let mut cx = Context::default();
        // Out of order within a partition; nothing is final before the watermark passes it.
        assert!(
            step(
                &mut o,
                rows(&[("a", 5, 30), ("a", 1, 10), ("b", 7, 10), ("a", 2, 20)], 0),
                10,
                &mut cx
            )
            .is_empty()
        );
        assert_eq!(
            step(&mut o, rows(&[], 10), 31, &mut cx),
            vec![r("a", 1, 1, 1), r("b", 7, 7, 7), r("a", 2, 3, 2), r("a", 5, 7, 5)]
        );
        // The previous row and this one: 5 and 4; MAX forgets the 5's predecessor.
        assert_eq!(
            step(&mut o, rows(&[("a", 4, 40)], 31), 41, &mut cx),
            vec![r("a", 4, 9, 5)]
        );
        assert!(cx.late.is_empty());
    }

    #[test]
    fn range_frames_share_results_among_peers_and_late_rows_follow_their_partition() {
        let mut o = op(Frame::Range(Some(10)));
        let mut cx = Context::default();
        let out = step(
            &mut o,
            rows(&[("a", 1, 0), ("a", 2, 10), ("a", 3, 10), ("a", 4, 21)], 0),
            100,
            &mut cx,
        );
        assert_eq!(
            out,
            vec![r("a", 1, 1, 1), r("a", 2, 6, 3), r("a", 3, 6, 3), r("a", 4, 4, 4)],
            "the rows at 10 see each other and the one at 0; at 21, the ones at 10 have left"
        );
        // Behind the watermark: a's row at 15 is older than a's last result (21), late; b had none.
        let out = step(&mut o, rows(&[("a", 9, 15), ("b", 9, 15)], 100), 100, &mut cx);
        assert_eq!(out, vec![r("b", 9, 9, 9)]);
        assert_eq!(cx.late.len(), 1);
        assert_eq!(cx.late[0].rows.num_rows(), 1);
        // A row whose partition had a result for a later time by the time it arrived is late even
        // within one micro-batch: the row at 150 was computed when the watermark reached 200.
        let mut b = rows(&[("c", 1, 150), ("c", 2, 120)], 0);
        b.wm = Int64Array::from(vec![100, 200]);
        let out = step(&mut o, b, 300, &mut cx);
        assert_eq!(out, vec![r("c", 1, 1, 1)]);
        assert_eq!(cx.late.len(), 2);
    }
}
