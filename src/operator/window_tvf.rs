//! Window assignment: the window table function itself. Adds `window_start`, `window_end` and
//! `window_time` to each row.
//!
//! Alone (a `SELECT … FROM TUMBLE(…)` without aggregation, a window join or a window Top-N), a row
//! is copied into every window that contains it — one for TUMBLE, size/slide for HOP, several for
//! CUMULATE — and a row whose windows had all ended at the watermark it arrived under is late, as in
//! Flink. Feeding a window aggregate (`panes`), each row gets its *pane* instead (the slice its windows
//! are merged from) and the aggregate decides what is late.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use super::window::{WindowSpec, millis};
use super::{ChangeBatch, Context, Operator, batch_of};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Config {
    pub window: WindowSpec,
    /// The time attribute's column in the input.
    pub time_idx: usize,
    pub time_name: String,
    /// SESSION's PARTITION BY columns (checked against the aggregate's keys by the planner).
    pub partition: Vec<String>,
    /// Assign panes (for a window aggregate) instead of windows.
    pub panes: bool,
    /// Input columns, then the three window columns.
    pub schema: SchemaRef,
}

pub struct WindowTvf {
    cfg: Config,
}

impl WindowTvf {
    pub fn new(cfg: Config) -> WindowTvf {
        WindowTvf { cfg }
    }
}

fn with_windows(schema: &SchemaRef, batch: &RecordBatch, starts: Vec<i64>, ends: Vec<i64>) -> Result<RecordBatch> {
    let n = starts.len();
    let times: Vec<i64> = ends.iter().map(|e| e - 1).collect();
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols.push(Arc::new(TimestampMillisecondArray::from(starts)));
    cols.push(Arc::new(TimestampMillisecondArray::from(ends)));
    cols.push(Arc::new(TimestampMillisecondArray::from(times)));
    batch_of(schema, cols, n)
}

impl Operator for WindowTvf {
    /// Stateless: nothing to checkpoint.
    fn snapshot(&self) -> Result<super::state::OpState> {
        Ok(super::state::OpState::new())
    }

    fn restore(&mut self, _state: super::state::OpState) -> Result<()> {
        Ok(())
    }

    fn process(&mut self, _port: usize, input: ChangeBatch, cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let n = input.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        let ts = millis(input.batch.column(self.cfg.time_idx))?;
        let spec = self.cfg.window;
        if self.cfg.panes {
            let mut starts = Vec::with_capacity(n);
            let mut ends = Vec::with_capacity(n);
            for i in 0..n {
                if ts.is_null(i) {
                    return Err(Error::Internal("a NULL event time reached a window".into()));
                }
                let t = ts.value(i);
                let (s, e) = match spec {
                    WindowSpec::Session { gap } => (t, t.saturating_add(gap)),
                    _ => {
                        let p = spec.pane_of(t);
                        (p, p + spec.pane())
                    }
                };
                starts.push(s);
                ends.push(e);
            }
            let b = with_windows(&self.cfg.schema, &input.batch, starts, ends)?;
            return Ok(vec![input.with_batch(b)]);
        }
        let wms = input.wm.values();
        let mut idx: Vec<u32> = Vec::with_capacity(n);
        let mut starts = Vec::with_capacity(n);
        let mut ends = Vec::with_capacity(n);
        let mut late: Vec<u32> = Vec::new();
        for i in 0..n {
            if ts.is_null(i) {
                return Err(Error::Internal("a NULL event time reached a window".into()));
            }
            let mut any = false;
            for (s, e) in spec.windows_of_pane(spec.pane_of(ts.value(i))) {
                if e > wms[i] {
                    idx.push(i as u32);
                    starts.push(s);
                    ends.push(e);
                    any = true;
                }
            }
            if !any {
                late.push(i as u32);
            }
        }
        if !late.is_empty() {
            let wm = late.iter().map(|i| wms[*i as usize]).min().unwrap_or(i64::MIN);
            cx.late(
                &input,
                &UInt32Array::from(late),
                format!(
                    "late: its window had ended at the watermark {}",
                    crate::time::format_ms(wm)
                ),
            )?;
        }
        let taken = input.take(&UInt32Array::from(idx))?;
        let b = with_windows(&self.cfg.schema, &taken.batch, starts, ends)?;
        Ok(vec![taken.with_batch(b)])
    }
}
