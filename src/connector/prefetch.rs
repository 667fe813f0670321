//! Runs a source on its own thread, ahead of the engine, so that decoding (JSON, CSV, Kafka,
//! generation) overlaps with query execution on the other core.
//!
//! Rows are gathered into micro-batches of up to `max` rows, or whatever arrived within `interval`
//! (paced and unbounded sources). Each delivery carries the source's own watermark and how many of the
//! source's `Ready` results it contains, so that a later `commit` names exactly what the engine has
//! processed — never the batches still waiting in the channel.
//!
//! Commits are carried out by the source's thread. It never blocks on a full channel without serving
//! them, and before it ends (the engine dropped its side: the query stopped) it carries out every commit
//! still queued; dropping a `Prefetch` waits for that, so a query's final commit — on stop, after its
//! sink committed — reaches the source (e.g. Kafka) before the query is reported stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;

use super::{Poll, Source};
use crate::error::Result;
use crate::format::BadRecord;

struct Delivery {
    poll: Result<Poll>,
    watermark: Option<i64>,
    /// `Ready` results of the inner source included so far (cumulative).
    polls: u64,
    /// The inner source's position right after this delivery's rows.
    position: Option<serde_json::Value>,
}

pub struct Prefetch {
    rx: Receiver<Delivery>,
    commits: Sender<(i64, u64, i64)>,
    bounded: bool,
    resumed: Option<i64>,
    partitioned: bool,
    watermark: Option<i64>,
    polls: u64,
    /// The position after the last delivery the engine took.
    position: Option<serde_json::Value>,
    /// The thread delivered the end of the input (or an error).
    ended: bool,
    /// The inner source's columns (see [`Source::columns`]).
    columns: Option<Vec<usize>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prefetch {
    pub fn spawn(mut inner: Box<dyn Source>, max: usize, interval: Duration) -> Self {
        let bounded = inner.bounded();
        let resumed = inner.resumed_watermark();
        let partitioned = inner.partitioned();
        let position = inner.position();
        let columns = inner.columns();
        // Its watermark before any delivery (a source resumed from a checkpoint already has one).
        let watermark = inner.watermark();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Delivery>(2);
        let (commits, commit_rx) = std::sync::mpsc::channel::<(i64, u64, i64)>();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let pumped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pump(inner.as_mut(), max, interval, &tx, &commit_rx, &stopped)
            }));
            if let Err(panic) = pumped {
                // A source that panicked fails its query: it must not read as one that ended.
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let _ = tx.send(Delivery {
                    poll: Err(crate::error::Error::Internal(format!(
                        "the source's thread panicked: {what}"
                    ))),
                    watermark: None,
                    polls: 0,
                    position: None,
                });
                return;
            }
            // The engine let go (or the source ended): carry out the commits it sent last.
            while let Ok((ts, upto, wm)) = commit_rx.try_recv() {
                if let Err(e) = inner.commit(ts, upto, wm) {
                    eprintln!("source: final commit failed: {e}");
                }
            }
        });
        Prefetch {
            rx,
            commits,
            bounded,
            resumed,
            partitioned,
            watermark,
            polls: 0,
            position,
            ended: false,
            columns,
            stop,
            thread: Some(thread),
        }
    }
}

fn pump(
    inner: &mut dyn Source,
    max: usize,
    interval: Duration,
    tx: &SyncSender<Delivery>,
    commits: &Receiver<(i64, u64, i64)>,
    stopped: &AtomicBool,
) {
    let mut rows: Vec<RecordBatch> = Vec::new();
    let mut bad: Vec<BadRecord> = Vec::new();
    let mut n = 0;
    let mut polls = 0u64;
    let mut since: Option<Instant> = None;
    let commit = |inner: &mut dyn Source, (ts, upto, wm): (i64, u64, i64)| {
        if let Err(e) = inner.commit(ts, upto, wm) {
            let _ = tx.try_send(Delivery {
                poll: Err(e),
                watermark: None,
                polls: upto,
                position: None,
            });
        }
    };
    // Hand a delivery over, serving commits while the engine has not taken the previous ones; false
    // once the engine is gone (or stopping).
    let deliver = |inner: &mut dyn Source, mut d: Delivery| -> bool {
        loop {
            match tx.try_send(d) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if stopped.load(Ordering::Relaxed) {
                        return false;
                    }
                    d = back;
                    while let Ok(c) = commits.try_recv() {
                        commit(inner, c);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    };
    while !stopped.load(Ordering::Relaxed) {
        while let Ok(c) = commits.try_recv() {
            commit(inner, c);
        }
        let end = match inner.poll(max.saturating_sub(n).max(1)) {
            Ok(Poll::Ready(b, e)) => {
                n += b.as_ref().map_or(0, |b| b.num_rows());
                rows.extend(b);
                bad.extend(e);
                polls += 1;
                since.get_or_insert_with(Instant::now);
                None
            }
            Ok(Poll::Pending) => {
                std::thread::sleep(Duration::from_millis(2));
                None
            }
            other => Some(other),
        };
        let due = end.is_some() || n >= max || since.is_some_and(|t| t.elapsed() >= interval);
        if due && (!rows.is_empty() || !bad.is_empty()) {
            let batch = match rows.len() {
                0 => Ok(None),
                1 => Ok(rows.pop()),
                _ => datafusion::arrow::compute::concat_batches(&rows[0].schema(), rows.iter())
                    .map(Some)
                    .map_err(Into::into),
            };
            rows.clear();
            let poll = batch.map(|b| Poll::Ready(b, std::mem::take(&mut bad)));
            n = 0;
            since = None;
            let watermark = inner.watermark();
            let position = inner.position();
            if !deliver(
                inner,
                Delivery {
                    poll,
                    watermark,
                    polls,
                    position,
                },
            ) {
                return;
            }
        }
        if let Some(last) = end {
            let watermark = inner.watermark();
            let position = inner.position();
            if !deliver(
                inner,
                Delivery {
                    poll: last,
                    watermark,
                    polls,
                    position,
                },
            ) {
                return;
            }
            // Exhausted (or failed): keep serving commits until the engine lets go.
            while let Ok(c) = commits.recv() {
                commit(inner, c);
            }
            return;
        }
    }
}

impl Source for Prefetch {
    fn poll(&mut self, _max: usize) -> Result<Poll> {
        match self.rx.recv_timeout(Duration::from_millis(20)) {
            Ok(d) => {
                self.watermark = d.watermark;
                self.polls = d.polls;
                if d.position.is_some() {
                    self.position = d.position;
                }
                if matches!(d.poll, Ok(Poll::Exhausted) | Err(_)) {
                    self.ended = true;
                }
                d.poll
            }
            Err(RecvTimeoutError::Timeout) => Ok(Poll::Pending),
            // The thread delivers the end (or its error) before it lets go: gone without either,
            // it died.
            Err(RecvTimeoutError::Disconnected) if self.ended => Ok(Poll::Exhausted),
            Err(RecvTimeoutError::Disconnected) => Err(crate::error::Error::Internal(
                "the source's thread ended without reaching the end of its input".into(),
            )),
        }
    }

    fn bounded(&self) -> bool {
        self.bounded
    }

    fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    fn commit(&mut self, safe_ts: i64, _polls: u64, watermark: i64) -> Result<()> {
        let _ = self.commits.send((safe_ts, self.polls, watermark));
        Ok(())
    }

    fn partitioned(&self) -> bool {
        self.partitioned
    }

    fn resumed_watermark(&self) -> Option<i64> {
        self.resumed
    }

    fn position(&self) -> Option<serde_json::Value> {
        self.position.clone()
    }

    fn columns(&self) -> Option<Vec<usize>> {
        self.columns.clone()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Close the commit channel (a source that ended waits on it), keeping what was queued.
        drop(std::mem::replace(&mut self.commits, std::sync::mpsc::channel().0));
        // Wait for the thread to carry out the commits queued (the query's final one among them). It
        // ends promptly: a source's poll never blocks for long, and it no longer waits on the channel.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panics on its second poll.
    struct Panicky(u32);

    impl Source for Panicky {
        fn poll(&mut self, _max: usize) -> Result<Poll> {
            self.0 += 1;
            if self.0 > 1 {
                panic!("decoder bug");
            }
            Ok(Poll::Ready(None, vec![]))
        }

        fn bounded(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_panicking_source_fails_instead_of_ending() {
        let mut p = Prefetch::spawn(Box::new(Panicky(0)), 10, Duration::from_millis(1));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no error within 10 s");
            match p.poll(10) {
                Ok(Poll::Exhausted) => panic!("a source that panicked read as exhausted"),
                Err(e) => {
                    assert!(e.to_string().contains("panicked: decoder bug"), "{e}");
                    break;
                }
                Ok(_) => {}
            }
        }
    }
}
