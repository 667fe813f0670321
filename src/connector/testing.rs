//! Stand-ins for real connectors under `freshet test` (see docs/testing.md): every stream source is
//! fed rows by the test, and every sink records what it is given.
//!
//! - [`Feeds`] keeps, per source name, the input the test has given so far and hands each query that
//!   reads the source its own [`Feed`], holding everything given so far (a query reads its source
//!   from the beginning, as a file or a Kafka topic read from `earliest` is).
//! - A [`FedSource`] delivers whatever was given since its last poll as one chunk. Delivered chunks
//!   are kept until committed, by the Kafka source's rule: a chunk is committed once the engine's
//!   `safe_ts` (the oldest event time still held in window state) is above its newest event time.
//!   [`Feed::rewind`] puts the uncommitted chunks back in front, which is what a Kafka consumer
//!   restarting from its committed offsets reads again.
//! - A [`Capture`] wraps the sink a query writes to (a materialized view's table, or a [`StandIn`]
//!   for an external sink, which is never opened) and records every row in the order the engine
//!   wrote them, grouped by micro-batch, plus what the sink holds: an upsert sink's rows by their
//!   identity, an append sink's rows one after another.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::record_batch::RecordBatch;

use super::memory::MemoryTable;
use super::{Output, Poll, Sink, SinkMode, Source};
use crate::error::Result;
use crate::format::BadRecord;
use crate::sql::parser::SourceDef;

/// Rows (and records that failed to decode) given to a source in one go.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    pub batch: Option<RecordBatch>,
    pub bad: Vec<BadRecord>,
}

#[derive(Debug)]
struct FeedState {
    queued: VecDeque<Chunk>,
    /// Delivered and not yet committed: (poll number, chunk, newest event time in it).
    delivered: VecDeque<(u64, Chunk, i64)>,
    polls: u64,
    ended: bool,
    time_idx: Option<usize>,
    /// The query watermark stored with the last commit (as the Kafka source stores it in the offset
    /// commit's metadata); a restarted query resumes with it.
    committed_watermark: i64,
}

/// One query's view of one source: what it has not read yet, and what it read but not committed.
#[derive(Debug, Clone)]
pub struct Feed(Arc<Mutex<FeedState>>);

impl Feed {
    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A source reading this feed (a restarted query gets a new one over the same feed).
    pub fn source(&self) -> FedSource {
        FedSource(self.clone())
    }

    /// Put every delivered chunk that is not committed back in front of the queue, in order.
    pub fn rewind(&self) {
        let mut st = self.lock();
        let back: Vec<Chunk> = st.delivered.drain(..).map(|(_, c, _)| c).collect();
        for c in back.into_iter().rev() {
            st.queued.push_front(c);
        }
    }

    /// Rows delivered and not committed (what a restart reads again).
    pub fn uncommitted_rows(&self) -> usize {
        self.lock()
            .delivered
            .iter()
            .map(|(_, c, _)| c.batch.as_ref().map_or(0, RecordBatch::num_rows))
            .sum()
    }
}

#[derive(Debug, Default)]
struct SourceLog {
    given: Vec<Chunk>,
    ended: bool,
    readers: Vec<Weak<Mutex<FeedState>>>,
}

/// The input of every source, and the feeds of the queries reading them.
#[derive(Debug, Clone, Default)]
pub struct Feeds(Arc<Mutex<BTreeMap<String, SourceLog>>>);

impl Feeds {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, SourceLog>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn each_reader(log: &mut SourceLog, mut f: impl FnMut(&mut FeedState)) {
        log.readers.retain(|r| match r.upgrade() {
            Some(feed) => {
                f(&mut feed.lock().unwrap_or_else(|p| p.into_inner()));
                true
            }
            None => false,
        });
    }

    /// Give `source` more input: every query reading it gets it at its next poll.
    pub fn push(&self, source: &str, chunk: Chunk) {
        let mut all = self.lock();
        let log = all.entry(source.to_string()).or_default();
        Self::each_reader(log, |st| st.queued.push_back(chunk.clone()));
        log.given.push(chunk);
    }

    /// `source` has no more input: once read, it is exhausted (its watermark goes to +∞).
    pub fn end(&self, source: &str) {
        let mut all = self.lock();
        let log = all.entry(source.to_string()).or_default();
        log.ended = true;
        Self::each_reader(log, |st| st.ended = true);
    }

    /// Forget `source` (dropped): a source created later under its name starts with no input.
    pub fn forget(&self, source: &str) {
        self.lock().remove(source);
    }

    /// Whether `source` has been ended.
    pub fn ended(&self, source: &str) -> bool {
        self.lock().get(source).is_some_and(|l| l.ended)
    }

    /// A new reader of `def`'s input, holding everything given so far.
    pub fn subscribe(&self, def: &SourceDef) -> Feed {
        let mut all = self.lock();
        let log = all.entry(def.name.clone()).or_default();
        let feed = Feed(Arc::new(Mutex::new(FeedState {
            queued: log.given.iter().cloned().collect(),
            delivered: VecDeque::new(),
            polls: 0,
            ended: log.ended,
            time_idx: def.watermark.as_ref().and_then(|w| def.schema.index_of(&w.column).ok()),
            committed_watermark: i64::MIN,
        })));
        log.readers.push(Arc::downgrade(&feed.0));
        feed
    }
}

/// The [`Source`] over a [`Feed`]: each poll delivers what was given since the last one.
pub struct FedSource(Feed);

fn newest(batch: &RecordBatch, time_idx: Option<usize>) -> i64 {
    time_idx
        .and_then(|i| batch.column(i).as_primitive_opt::<TimestampMillisecondType>())
        .and_then(datafusion::arrow::compute::max)
        .unwrap_or(i64::MIN)
}

impl Source for FedSource {
    fn poll(&mut self, max: usize) -> Result<Poll> {
        let mut st = self.0.lock();
        if st.queued.is_empty() {
            return Ok(if st.ended { Poll::Exhausted } else { Poll::Pending });
        }
        let mut rows: Vec<RecordBatch> = Vec::new();
        let mut bad = Vec::new();
        let mut n = 0;
        while n < max.max(1) {
            let Some(mut c) = st.queued.pop_front() else { break };
            bad.append(&mut c.bad);
            if let Some(b) = c.batch {
                let take = b.num_rows().min(max.max(1) - n);
                if take < b.num_rows() {
                    st.queued.push_front(Chunk {
                        batch: Some(b.slice(take, b.num_rows() - take)),
                        bad: Vec::new(),
                    });
                }
                n += take;
                rows.push(b.slice(0, take));
            }
        }
        let batch = match rows.len() {
            0 => None,
            1 => rows.pop(),
            _ => Some(concat_batches(&rows[0].schema(), rows.iter())?),
        };
        let newest = batch.as_ref().map_or(i64::MIN, |b| newest(b, st.time_idx));
        st.polls += 1;
        let seq = st.polls;
        let chunk = Chunk { batch, bad };
        st.delivered.push_back((seq, chunk.clone(), newest));
        Ok(Poll::Ready(chunk.batch, chunk.bad))
    }

    fn bounded(&self) -> bool {
        false
    }

    fn resumed_watermark(&self) -> Option<i64> {
        Some(self.0.lock().committed_watermark).filter(|w| *w > i64::MIN)
    }

    /// The Kafka source's rule: a chunk is committed when every event in it is older than `safe_ts`.
    fn commit(&mut self, safe_ts: i64, polls: u64, watermark: i64) -> Result<()> {
        let mut st = self.0.lock();
        st.committed_watermark = st.committed_watermark.max(watermark);
        let upto = if polls == 0 { st.polls } else { polls };
        while st
            .delivered
            .front()
            .is_some_and(|(seq, _, newest)| *seq <= upto && *newest < safe_ts)
        {
            st.delivered.pop_front();
        }
        Ok(())
    }
}

/// An external sink under test: it is never opened and writes nothing; it only has the real sink's mode.
pub struct StandIn(pub SinkMode);

impl Sink for StandIn {
    fn mode(&self) -> SinkMode {
        self.0
    }
    fn write(&mut self, _out: &Output) -> Result<()> {
        Ok(())
    }
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
}

struct CaptureState {
    inner: Box<dyn Sink>,
    /// What the sink holds: upserted by row identity (upsert sinks), or appended.
    held: Option<MemoryTable>,
    /// Written since the last [`Capture::seal`].
    current: Vec<RecordBatch>,
    /// Rows of each sealed micro-batch (that emitted anything), in order.
    batches: Vec<Vec<RecordBatch>>,
    /// Batches already returned by [`Capture::take_unseen`].
    seen: usize,
    commits: u64,
}

/// Records what a query writes to its sink; survives restarts of the query.
#[derive(Clone)]
pub struct Capture(Arc<Mutex<CaptureState>>);

impl Capture {
    pub fn new(inner: Box<dyn Sink>) -> Self {
        Capture(Arc::new(Mutex::new(CaptureState {
            inner,
            held: None,
            current: Vec::new(),
            batches: Vec::new(),
            seen: 0,
            commits: 0,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, CaptureState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sink for the query's runtime: writes go to the wrapped sink and are recorded.
    pub fn sink(&self) -> Box<dyn Sink> {
        Box::new(CaptureSink(self.clone()))
    }

    pub fn mode(&self) -> SinkMode {
        self.lock().inner.mode()
    }

    /// End of a micro-batch: what was written since the last call becomes one batch of the log.
    pub fn seal(&self) {
        let mut st = self.lock();
        let current = std::mem::take(&mut st.current);
        if !current.is_empty() {
            st.batches.push(current);
        }
    }

    /// The rows of the micro-batches sealed since the last call, one `Vec` per micro-batch.
    pub fn take_unseen(&self) -> Vec<Vec<RecordBatch>> {
        let mut st = self.lock();
        let out = st.batches[st.seen..].to_vec();
        st.seen = st.batches.len();
        out
    }

    /// Every sealed micro-batch's rows, in order.
    pub fn all(&self) -> Vec<Vec<RecordBatch>> {
        self.lock().batches.clone()
    }

    /// What the sink holds now (an upsert sink: the latest row per identity), if it wrote anything.
    pub fn held(&self) -> Result<Option<RecordBatch>> {
        self.lock().held.as_ref().map(MemoryTable::snapshot).transpose()
    }

    /// How often the engine committed the sink.
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }
}

struct CaptureSink(Capture);

impl Sink for CaptureSink {
    fn mode(&self) -> SinkMode {
        self.0.mode()
    }

    fn interrupt_handle(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
        self.0.lock().inner.interrupt_handle()
    }

    fn write(&mut self, out: &Output) -> Result<()> {
        let mut st = self.0.lock();
        st.inner.write(out)?;
        let mode = st.inner.mode();
        let held = st
            .held
            .get_or_insert_with(|| MemoryTable::new(out.batch.schema()))
            .clone();
        let _ = mode;
        held.apply(out)?;
        st.current.push(out.batch.clone());
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        let mut st = self.0.lock();
        st.commits += 1;
        st.inner.commit()
    }

    fn close(&mut self) -> Result<()> {
        self.0.lock().inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parser::{Statement, parse_one};
    use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray};

    fn def() -> SourceDef {
        let Ok(Statement::CreateSource(d)) = parse_one(
            "CREATE SOURCE s (k BIGINT, t TIMESTAMP, WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (connector = 'test')",
        ) else {
            panic!("parse")
        };
        d
    }

    fn chunk(d: &SourceDef, times: &[i64]) -> Chunk {
        let b = RecordBatch::try_new(
            d.schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1; times.len()])),
                Arc::new(TimestampMillisecondArray::from(times.to_vec())),
            ],
        )
        .expect("batch");
        Chunk {
            batch: Some(b),
            bad: vec![],
        }
    }

    fn rows(p: Poll) -> usize {
        match p {
            Poll::Ready(b, _) => b.map_or(0, |b| b.num_rows()),
            _ => 0,
        }
    }

    #[test]
    fn feeds_deliver_commit_like_kafka_and_rewind() {
        let d = def();
        let feeds = Feeds::default();
        feeds.push("s", chunk(&d, &[1_000, 2_000]));
        let feed = feeds.subscribe(&d);
        feeds.push("s", chunk(&d, &[3_000]));
        let mut src = feed.source();
        assert_eq!(
            rows(src.poll(100).expect("poll")),
            3,
            "given before and after subscribing"
        );
        assert!(matches!(src.poll(100).expect("poll"), Poll::Pending));
        feeds.push("s", chunk(&d, &[10_000, 4_000]));
        assert_eq!(rows(src.poll(1).expect("poll")), 1, "max rows per poll");
        assert_eq!(rows(src.poll(100).expect("poll")), 1);
        // Chunks: [1000..3000], [10000], [4000]. safe 5000 commits the first only (the second's
        // newest is 10000, and commits go in order).
        src.commit(5_000, 0, i64::MIN).expect("commit");
        assert_eq!(feed.uncommitted_rows(), 2);
        feed.rewind();
        let mut again = feed.source();
        assert_eq!(rows(again.poll(100).expect("poll")), 2, "re-read after a restart");
        feeds.end("s");
        assert!(matches!(again.poll(100).expect("poll"), Poll::Exhausted));
        assert!(feeds.ended("s"));
    }
}
