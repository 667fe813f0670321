//! One Kafka reader for every query of a `freshet run` script that reads the same source: the topic
//! is fetched and decoded once, and each query gets every poll's decoded rows (Flink's source reuse
//! in a statement set). Measured: each query consuming and decoding the topic itself made the
//! two-query Kafka → HBase + Parquet benchmark read 0.4 M events/s; see docs/benchmarks.md.
//!
//! Each query keeps everything a query's own [`KafkaSource`](super::kafka::KafkaSource) keeps — its
//! next offset per partition, its watermark, its checkpoint position, its consumer group and the
//! offsets it commits there — in a [`Subscriber`]. The reader starts each partition at the lowest
//! offset any of its queries starts at (a query restored from its checkpoint, or resuming its
//! group, may be ahead of another) and stops at the highest end; a query takes of each poll only the
//! records from its own next offset to its own end (a poll's records of a partition that straddle
//! either are decoded again for that query, which happens once per partition at most).
//!
//! Queries join while the script is read; the reader starts when the session says so
//! ([`SharedKafka::start`]: before a statement that waits on queries, and after the last one), so
//! that every query's start is known. The reader hands each poll to every query through a channel
//! of two: a query that falls behind holds the others back (as one Flink source with two sinks
//! does), and none reads ahead of the slowest by more than two polls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;

use super::kafka::{KafkaSourceOptions, Piece, Reader, Tracker, consumer_config, kafka_err};
use super::{Poll, Source};
use crate::error::{Error, Result};
use crate::format::LineDecoder;
use crate::sql::parser::SourceDef;

/// What the reader hands each query.
#[derive(Clone)]
enum Msg {
    Pieces(Arc<Vec<Piece>>),
    /// The reader's consumer positions (past transaction markers), when a poll returned nothing.
    Positions(Arc<Vec<(i32, i64)>>),
    Failed(String),
}

/// Per partition: the next offset and the end offset of one query.
type Starts = BTreeMap<i32, (i64, Option<i64>)>;

struct Joined {
    tx: SyncSender<Msg>,
    starts: Arc<Mutex<Starts>>,
    /// The columns the query reads (`None`: all, or not said; see [`Source::project`]).
    columns: Arc<Mutex<Option<Vec<usize>>>>,
}

/// A reader waiting for its queries to join.
struct Pending {
    def: SourceDef,
    opts: KafkaSourceOptions,
    joined: Vec<Joined>,
    live: Arc<AtomicUsize>,
    started: Arc<std::sync::atomic::AtomicBool>,
    /// Rows per poll and decode threads (the first query's).
    batch_size: usize,
    workers: usize,
}

/// The readers of one session (`freshet run`), by source.
#[derive(Default)]
pub struct SharedKafka {
    pending: Mutex<BTreeMap<String, Pending>>,
}

impl std::fmt::Debug for SharedKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKafka").finish_non_exhaustive()
    }
}

/// Queries share a reader when they read the same source with the same options (the consumer
/// group and startup mode aside: those are each query's own).
fn key(def: &SourceDef) -> String {
    let options: Vec<_> = def
        .options
        .0
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "group_id" | "startup"))
        .collect();
    format!(
        "{}\u{0}{:?}\u{0}{:?}\u{0}{:?}",
        def.name, options, def.schema, def.watermark
    )
}

impl SharedKafka {
    /// A query's reader of `def` (its `group_id` set), fed once the reader starts. The reader polls
    /// up to `batch_size` records at a time and decodes on `workers` threads.
    pub fn subscribe(&self, def: &SourceDef, batch_size: usize, workers: usize) -> Result<Box<dyn Source>> {
        let opts = KafkaSourceOptions::parse(&def.options, &def.name)?;
        // Answers metadata and offset questions and commits under the query's group; assigned
        // nothing, it fetches no records.
        let committer: BaseConsumer = consumer_config(&opts, &opts.group_id, &[])
            .create()
            .map_err(|e| kafka_err("creating the consumer", e))?;
        let tracker = Tracker::open(opts.clone(), &committer, def)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let starts = Arc::new(Mutex::new(tracker.starts()));
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| Error::Internal("shared kafka lock".into()))?;
        let p = pending.entry(key(def)).or_insert_with(|| Pending {
            def: def.clone(),
            opts,
            joined: Vec::new(),
            live: Arc::new(AtomicUsize::new(0)),
            started: Arc::default(),
            batch_size: batch_size.max(1),
            workers: workers.max(1),
        });
        let columns = Arc::new(Mutex::new(None));
        p.joined.push(Joined {
            tx,
            starts: starts.clone(),
            columns: columns.clone(),
        });
        p.live.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Subscriber {
            tracker,
            committer,
            rx,
            decoder: LineDecoder::new(def.schema.clone(), p.opts.format),
            columns,
            starts,
            live: p.live.clone(),
            started: p.started.clone(),
            hub_gone: false,
        }))
    }

    /// Start the reader of every source queries have joined since the last call; queries that
    /// join later get new readers. Returns each reader's source and how many queries it serves.
    pub fn start(&self) -> Vec<(String, usize)> {
        let Ok(mut pending) = self.pending.lock() else {
            return vec![];
        };
        let mut started = Vec::new();
        for (_, p) in std::mem::take(&mut *pending) {
            p.started.store(true, Ordering::SeqCst);
            started.push((p.def.name.clone(), p.joined.len()));
            let name = format!("kafka-{}", p.def.name);
            let spawned = std::thread::Builder::new().name(name).spawn(move || run_reader(p));
            if let Err(e) = spawned {
                eprintln!("kafka: could not start a reader thread: {e}");
            }
        }
        started
    }
}

/// The reader's loop: poll, hand every query the pieces, until every query has gone, the reader
/// reached the end of a bounded read, or it failed (every query is told).
fn run_reader(p: Pending) {
    let Pending {
        def,
        opts,
        mut joined,
        live,
        batch_size,
        workers,
        ..
    } = p;
    let fail = |joined: &[Joined], e: Error| {
        for j in joined {
            let _ = j.tx.send(Msg::Failed(e.to_string()));
        }
    };
    // From the lowest start of any query to the highest end.
    let mut range: Starts = BTreeMap::new();
    for j in &joined {
        let Ok(starts) = j.starts.lock() else {
            return fail(&joined, Error::Internal("shared kafka lock".into()));
        };
        for (id, &(next, end)) in starts.iter() {
            range
                .entry(*id)
                .and_modify(|r| *r = (r.0.min(next), r.1.max(end)))
                .or_insert((next, end));
        }
    }
    let mut reader = match Reader::open(&opts, &format!("freshet-shared-{}", def.name), &def) {
        Ok(r) => r,
        Err(e) => return fail(&joined, e),
    };
    reader.decode_on(workers);
    // The columns any of its queries reads.
    let mut union = std::collections::BTreeSet::new();
    for j in &joined {
        match j.columns.lock().map(|c| c.clone()) {
            Ok(Some(c)) => union.extend(c),
            Ok(None) => {
                union.clear();
                break;
            }
            Err(_) => return fail(&joined, Error::Internal("shared kafka lock".into())),
        }
    }
    if !union.is_empty()
        && union.len() < def.schema.fields().len()
        && let Err(e) = reader.project(&union.into_iter().collect::<Vec<_>>())
    {
        return fail(&joined, e);
    }
    if let Err(e) = reader.assign(&range) {
        return fail(&joined, e);
    }
    let done = |range: &Starts| range.values().all(|(next, end)| end.is_some_and(|e| *next >= e));
    while !done(&range) && live.load(Ordering::SeqCst) > 0 {
        let msg = match reader.read(batch_size) {
            Err(e) => return fail(&joined, e),
            Ok(pieces) if pieces.is_empty() => {
                let positions = reader.positions();
                let mut moved = false;
                for (id, o) in &positions {
                    if let Some(r) = range.get_mut(id)
                        && *o > r.0
                    {
                        r.0 = *o;
                        moved = true;
                    }
                }
                if !moved {
                    continue;
                }
                Msg::Positions(Arc::new(positions))
            }
            Ok(pieces) => {
                for piece in &pieces {
                    if let (Some(r), Some(last)) = (range.get_mut(&piece.partition), piece.last_offset()) {
                        r.0 = r.0.max(last + 1);
                    }
                }
                Msg::Pieces(Arc::new(pieces))
            }
        };
        // A query that stopped has dropped its receiver: forget it.
        joined.retain(|j| j.tx.send(msg.clone()).is_ok());
        if joined.is_empty() {
            return;
        }
    }
}

/// One query's side of a shared reader.
pub struct Subscriber {
    tracker: Tracker,
    committer: BaseConsumer,
    rx: Receiver<Msg>,
    /// For records of a poll that straddle this query's start or end; its schema is the columns
    /// this query reads.
    decoder: LineDecoder,
    /// The columns this query reads, for the reader (see [`Source::project`]).
    columns: Arc<Mutex<Option<Vec<usize>>>>,
    /// Where this query starts, for the reader to start from.
    starts: Arc<Mutex<Starts>>,
    /// Queries still reading through the reader.
    live: Arc<AtomicUsize>,
    started: Arc<std::sync::atomic::AtomicBool>,
    /// The reader ended without this query at its end: it failed, and said so, or (bounded) it
    /// reached the end.
    hub_gone: bool,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Source for Subscriber {
    fn poll(&mut self, _max: usize) -> Result<Poll> {
        if self.tracker.done() {
            return Ok(Poll::Exhausted);
        }
        self.tracker.refresh_silent_partitions(&self.committer);
        if self.hub_gone {
            return Err(Error::Internal(format!(
                "the shared reader of topic '{}' ended before this query's end",
                self.tracker.topic()
            )));
        }
        match self.rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Msg::Pieces(pieces)) => Ok(match self.tracker.take(&pieces, &self.decoder)? {
                Some((batch, bad)) => Poll::Ready(batch, bad),
                None => Poll::Pending,
            }),
            Ok(Msg::Positions(positions)) => {
                self.tracker.advance(&positions);
                Ok(self.tracker.no_rows())
            }
            Ok(Msg::Failed(e)) => {
                self.hub_gone = true;
                Err(Error::External(e))
            }
            Err(RecvTimeoutError::Timeout) => Ok(Poll::Pending),
            Err(RecvTimeoutError::Disconnected) => {
                self.hub_gone = true;
                Ok(self.tracker.no_rows())
            }
        }
    }

    fn bounded(&self) -> bool {
        self.tracker.bounded()
    }

    fn watermark(&self) -> Option<i64> {
        self.tracker.watermark()
    }

    fn resumed_watermark(&self) -> Option<i64> {
        self.tracker.resumed_watermark()
    }

    fn position(&self) -> Option<serde_json::Value> {
        Some(self.tracker.position())
    }

    fn seek(&mut self, position: &serde_json::Value) -> Result<()> {
        if self.started.load(Ordering::SeqCst) {
            return Err(Error::Internal(
                "a shared Kafka reader cannot seek once it has started".into(),
            ));
        }
        self.tracker.seek(position, &self.committer)?;
        *self
            .starts
            .lock()
            .map_err(|_| Error::Internal("shared kafka lock".into()))? = self.tracker.starts();
        Ok(())
    }

    fn partitioned(&self) -> bool {
        true
    }

    fn project(&mut self, columns: &[usize]) -> Result<()> {
        if self.started.load(Ordering::SeqCst) {
            return Err(Error::Internal(
                "a shared Kafka reader cannot change its columns once it has started".into(),
            ));
        }
        self.decoder = self.decoder.for_columns(columns)?;
        *self
            .columns
            .lock()
            .map_err(|_| Error::Internal("shared kafka lock".into()))? = self.decoder.columns();
        Ok(())
    }

    fn columns(&self) -> Option<Vec<usize>> {
        self.decoder.columns()
    }

    fn commit(&mut self, safe_ts: i64, polls: u64, watermark: i64) -> Result<()> {
        self.tracker.commit(&self.committer, safe_ts, polls, watermark)
    }
}
