//! `connector = 'kafka'`: a source reading every partition of a topic, and an append sink producing
//! JSON rows, exactly once through transactions by default (see the sink section below).
//! librdkafka is bundled (rdkafka's default features).
//!
//! Source: partitions are assigned explicitly (one process reads them all; `startup = 'group'` resumes
//! from the consumer group's committed offsets). Offsets are never auto-committed: the engine calls
//! [`Source::commit`] after its sink committed, with the oldest event time still held in window state,
//! and only offsets whose records are all older than that are committed — so a restart re-reads
//! everything that open windows still need. Each partition has its own watermark; the source's is
//! the minimum over partitions that sent data within `idle_timeout_ms`. With `bounded = 'latest'`
//! the source stops at the end offsets it saw at start (used by tests and backfills).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::{Output, Poll, Sink, SinkMode, Source};
use crate::error::{Error, Result};
use crate::format::{BadRecord, Format, LineDecoder, to_json_lines};
use crate::sql::parser::{Options, SourceDef};

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// Keys valid for a Kafka source/sink besides `properties.*` (passed to librdkafka as they are).
const SOURCE_KEYS: &[&str] = &[
    "connector",
    "bootstrap_servers",
    "topic",
    "group_id",
    "startup",
    "format",
    "header",
    "delimiter",
    "bounded",
    "idle_timeout_ms",
];

fn check_keys(o: &Options, what: &str, valid: &[&str]) -> Result<Vec<(String, String)>> {
    let mut props = Vec::new();
    for (k, v) in &o.0 {
        if let Some(p) = k.strip_prefix("properties.") {
            props.push((p.to_string(), v.clone()));
        } else if !valid.contains(&k.as_str()) {
            return Err(Error::option(
                k,
                format!(
                    "unknown option for {what}; valid options: {}, properties.<librdkafka key>",
                    valid.join(", ")
                ),
            ));
        }
    }
    Ok(props)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    Earliest,
    Latest,
    Group,
}

#[derive(Debug, Clone)]
pub struct KafkaSourceOptions {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub startup: Startup,
    pub format: Format,
    pub bounded: bool,
    pub idle_timeout: Duration,
    pub properties: Vec<(String, String)>,
}

impl KafkaSourceOptions {
    pub fn parse(o: &Options, source_name: &str) -> Result<Self> {
        let properties = check_keys(o, "connector 'kafka' (source)", SOURCE_KEYS)?;
        let startup = match o.get("startup").unwrap_or("group") {
            "earliest" => Startup::Earliest,
            "latest" => Startup::Latest,
            "group" => Startup::Group,
            other => {
                return Err(Error::option(
                    "startup",
                    format!("'{other}'; valid: earliest, latest, group"),
                ));
            }
        };
        let bounded = match o.get("bounded").unwrap_or("none") {
            "none" => false,
            "latest" => true,
            other => return Err(Error::option("bounded", format!("'{other}'; valid: none, latest"))),
        };
        let header = o.parse_or("header", false)?;
        let delimiter = o
            .get("delimiter")
            .map(|d| d.as_bytes().first().copied().unwrap_or(b','))
            .unwrap_or(b',');
        Ok(KafkaSourceOptions {
            brokers: o.required("bootstrap_servers", "connector 'kafka'")?.to_string(),
            topic: o.required("topic", "connector 'kafka'")?.to_string(),
            group_id: o
                .get("group_id")
                .map(str::to_string)
                .unwrap_or_else(|| format!("freshet-{source_name}")),
            startup,
            format: Format::parse(o.get("format").unwrap_or("json"), header, delimiter)?,
            bounded,
            idle_timeout: Duration::from_millis(o.parse_or("idle_timeout_ms", 5_000u64)?),
            properties,
        })
    }
}

pub(crate) fn kafka_err(what: &str, e: KafkaError) -> Error {
    Error::External(format!("kafka: {what}: {e}"))
}

/// Progress of one partition.
#[derive(Debug)]
struct Partition {
    next_offset: i64,
    /// Bounded mode: stop at this offset.
    end: Option<i64>,
    max_ts: i64,
    last_seen: Instant,
    /// Unbounded mode: the broker's end offset, refreshed when the partition has been silent.
    high: Option<i64>,
    high_checked: Instant,
    /// Delivered chunks not yet committed: (poll number, offset after the chunk, newest event time in it).
    chunks: VecDeque<(u64, i64, i64)>,
}

/// One poll's records of a partition: their payloads in one buffer, each followed by `\n` (as the
/// decoder takes them: no allocation per record, no second copy), each with its offset and where
/// it ends.
#[derive(Default)]
pub(crate) struct Records {
    bytes: Vec<u8>,
    ends: Vec<(i64, usize)>,
}

impl Records {
    fn push(&mut self, offset: i64, payload: &[u8]) {
        self.bytes.extend_from_slice(payload);
        self.ends.push((offset, self.bytes.len()));
        self.bytes.push(b'\n');
    }

    /// Each record's offset and payload, in order (`bytes` is each payload followed by `\n`).
    fn view(&self) -> Vec<(i64, &[u8])> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&(offset, end)| {
                let payload = &self.bytes[start..end];
                start = end + 1;
                (offset, payload)
            })
            .collect()
    }

    fn first_offset(&self) -> Option<i64> {
        self.ends.first().map(|&(offset, _)| offset)
    }

    fn last_offset(&self) -> Option<i64> {
        self.ends.last().map(|&(offset, _)| offset)
    }
}

/// One poll's records of one partition, decoded (the records are kept: a reader sharing the poll
/// that wants only part of them decodes that part again, see [`Tracker::take`]).
pub(crate) struct Piece {
    pub(crate) partition: i32,
    records: Records,
    batch: Option<RecordBatch>,
    bad: Vec<BadRecord>,
    /// The newest event time among the rows (`i64::MIN`: none).
    newest: i64,
}

impl Piece {
    pub(crate) fn last_offset(&self) -> Option<i64> {
        self.records.last_offset()
    }
}

/// Errors a consumer cannot get past by waiting: the rest (a broker down, a connection reset, a
/// leader election) librdkafka recovers from by itself.
fn is_fatal(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::Fatal
                | C::UnknownTopicOrPartition
                | C::UnknownTopic
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::SaslAuthenticationFailed
                | C::Authentication
                | C::OffsetOutOfRange
        )
    )
}

/// Commit metadata: the query's watermark when the offsets were committed (every window ending at or
/// before it had been emitted completely), so a restart does not emit those windows again from the
/// part of their rows it re-reads.
const WATERMARK_METADATA: &str = "freshet.watermark=";

/// A consumer's configuration: `group` is the group its offsets are committed (and read) under;
/// `extra` settings come before the user's `properties.*`, which may override them.
pub(crate) fn consumer_config(opts: &KafkaSourceOptions, group: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &opts.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set(
            "auto.offset.reset",
            if opts.startup == Startup::Latest {
                "latest"
            } else {
                "earliest"
            },
        );
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    for (k, v) in &opts.properties {
        cfg.set(k, v);
    }
    cfg
}

/// Reads a topic's partitions from given offsets and decodes each poll's records per partition
/// (see [`KafkaSource`]; a shared reader serves several queries, `kafka_shared`).
pub(crate) struct Reader {
    consumer: Arc<BaseConsumer>,
    /// Each assigned partition's own queue (split from the consumer's after each assignment).
    queues: Vec<(i32, PartitionQueue<DefaultConsumerContext>)>,
    topic: String,
    decoder: LineDecoder,
    time_col: Option<String>,
    /// The partitions assigned, each with the offset to stop at (bounded).
    limits: BTreeMap<i32, Option<i64>>,
    /// When a transient error was last reported (they are reported at most every 10 s).
    last_warning: Option<Instant>,
    /// Threads the partitions of one poll are decoded on.
    workers: usize,
}

impl Reader {
    pub(crate) fn open(opts: &KafkaSourceOptions, group: &str, def: &SourceDef) -> Result<Self> {
        // The engine takes records in bursts (a micro-batch at a time). With librdkafka's defaults
        // a full local queue (100 000 messages) pauses fetching for up to a second, which capped a
        // consumer at ~190 K records/s here; keep fetching instead, memory bounded by
        // queued.max.messages.kbytes — which applies to each partition's queue once the partitions
        // are split (`assign`): 16 MB each (64 MB each took a 4-partition drain's peak from about
        // 0.95 to 1.2 GiB; docs/benchmarks.md).
        let cfg = consumer_config(
            opts,
            group,
            &[
                ("queued.min.messages", "1000000"),
                ("queued.max.messages.kbytes", "16384"),
                ("fetch.queue.backoff.ms", "20"),
            ],
        );
        let consumer: BaseConsumer = cfg.create().map_err(|e| kafka_err("creating the consumer", e))?;
        Ok(Reader {
            consumer: Arc::new(consumer),
            queues: Vec::new(),
            topic: opts.topic.clone(),
            decoder: LineDecoder::new(def.schema.clone(), opts.format),
            time_col: time_column(def),
            limits: BTreeMap::new(),
            last_warning: None,
            workers: 1,
        })
    }

    /// Read each partition from its offset (on to its end offset, if any).
    pub(crate) fn assign(&mut self, from: &BTreeMap<i32, (i64, Option<i64>)>) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, (next, _)) in from {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*next))
                .map_err(|e| kafka_err("assigning partitions", e))?;
        }
        // An assignment deactivates the queues split before it.
        self.queues.clear();
        self.consumer
            .assign(&tpl)
            .map_err(|e| kafka_err("assigning partitions", e))?;
        self.limits = from.iter().map(|(p, (_, end))| (*p, *end)).collect();
        self.queues = from
            .keys()
            .filter_map(|p| self.consumer.split_partition_queue(&self.topic, *p).map(|q| (*p, q)))
            .collect();
        Ok(())
    }

    pub(crate) fn decode_on(&mut self, workers: usize) {
        self.workers = workers.max(1);
    }

    /// Decode only `columns` of the source's schema (see [`Source::project`]).
    pub(crate) fn project(&mut self, columns: &[usize]) -> Result<()> {
        self.decoder = self.decoder.for_columns(columns)?;
        Ok(())
    }

    /// Up to `max` records (waiting up to 50 ms for the first, reading for at most 100 ms), decoded,
    /// one piece per partition in partition order. Empty: nothing arrived. Each partition has its
    /// own queue (split from the consumer's): up to `workers` threads each poll and decode a share
    /// of the partitions, so librdkafka's cost per message is spread over the cores too.
    pub(crate) fn read(&mut self, max: usize) -> Result<Vec<Piece>> {
        // Errors and events come through the consumer's own queue (and records fetched before the
        // partitions were split, if any: they are older than any in the partition queues, so they
        // go out alone first).
        let mut early: BTreeMap<i32, Records> = BTreeMap::new();
        while let Some(polled) = self.consumer.poll(Duration::ZERO) {
            match polled {
                Err(e) => {
                    self.failed(e)?;
                    break;
                }
                Ok(m) => {
                    if self.accepts(m.partition(), m.offset()) {
                        early
                            .entry(m.partition())
                            .or_default()
                            .push(m.offset(), m.payload().unwrap_or_default());
                    }
                }
            }
        }
        if !early.is_empty() || self.queues.is_empty() {
            return self.decode_all(early.into_iter().collect());
        }
        let threads = self.workers.min(self.queues.len()).max(1);
        let budget = max.div_ceil(threads).max(1);
        let mut shares: Vec<Vec<&(i32, PartitionQueue<DefaultConsumerContext>)>> = vec![Vec::new(); threads];
        for (i, q) in self.queues.iter().enumerate() {
            shares[i % threads].push(q);
        }
        let limits = &self.limits;
        let (decoder, topic, time_col) = (&self.decoder, &self.topic, self.time_col.as_deref());
        let read_share = |share: &[&(i32, PartitionQueue<DefaultConsumerContext>)]| {
            let (records, error) = poll_share(share, budget, limits);
            let pieces: Result<Vec<Piece>> = records
                .into_iter()
                .map(|(p, recs)| decode_piece(decoder, topic, time_col, p, recs))
                .collect();
            (pieces, error)
        };
        let mut results = Vec::with_capacity(threads);
        if threads == 1 {
            results.push(read_share(&shares[0]));
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = shares.iter().map(|share| s.spawn(|| read_share(share))).collect();
                for h in handles {
                    results
                        .push(h.join().unwrap_or_else(|_| {
                            (Err(Error::Internal("a Kafka reading thread panicked".into())), None)
                        }));
                }
            });
        }
        let mut pieces = Vec::new();
        let mut error = None;
        for (p, e) in results {
            pieces.extend(p?);
            error = error.or(e);
        }
        if let Some(e) = error {
            self.failed(e)?;
        }
        pieces.sort_by_key(|p| p.partition);
        Ok(pieces)
    }

    fn accepts(&self, partition: i32, offset: i64) -> bool {
        self.limits
            .get(&partition)
            .is_some_and(|end| end.is_none_or(|e| offset < e))
    }

    /// A fatal error fails the read; the rest (a broker down or restarting: librdkafka reconnects
    /// and refetches by itself, the query waits with its watermark held) are reported every 10 s.
    fn failed(&mut self, e: KafkaError) -> Result<()> {
        if is_fatal(&e) {
            return Err(kafka_err("consuming", e));
        }
        if self.last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            eprintln!("kafka: {}: {e} (retrying)", self.topic);
            self.last_warning = Some(Instant::now());
        }
        Ok(())
    }

    fn decode_all(&self, records: Vec<(i32, Records)>) -> Result<Vec<Piece>> {
        records
            .into_iter()
            .map(|(p, recs)| decode_piece(&self.decoder, &self.topic, self.time_col.as_deref(), p, recs))
            .collect()
    }

    /// The consumer's position per partition. A transactionally written topic holds commit/abort
    /// markers (and, read committed, records of aborted transactions) that take offsets but are
    /// never returned, so the offset after the last record returned can stay short of the end for
    /// good (a bounded read would never finish, an idle partition never look caught up). librdkafka
    /// moves the consumer's position past them: see [`Tracker::advance`].
    pub(crate) fn positions(&self) -> Vec<(i32, i64)> {
        let Ok(positions) = self.consumer.position() else {
            return vec![];
        };
        positions
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }
}

/// Poll a thread's share of the partition queues: up to `budget` records, waiting up to 50 ms for
/// the first, for at most 100 ms in all (the clock is read every 256 records: per record it was 7 %
/// of a drain's CPU). Stops at the first error, which it returns with what it read.
fn poll_share(
    share: &[&(i32, PartitionQueue<DefaultConsumerContext>)],
    budget: usize,
    limits: &BTreeMap<i32, Option<i64>>,
) -> (BTreeMap<i32, Records>, Option<KafkaError>) {
    let mut records: BTreeMap<i32, Records> = BTreeMap::new();
    let mut n = 0;
    let started = Instant::now();
    loop {
        let before = n;
        for (partition, queue) in share.iter().map(|q| (q.0, &q.1)) {
            let end = limits.get(&partition).copied().flatten();
            while n < budget {
                match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Err(e)) => return (records, Some(e)),
                    Some(Ok(m)) => {
                        if end.is_none_or(|e| m.offset() < e) {
                            records
                                .entry(partition)
                                .or_default()
                                .push(m.offset(), m.payload().unwrap_or_default());
                            n += 1;
                            if n % 256 == 0 && started.elapsed() >= Duration::from_millis(100) {
                                return (records, None);
                            }
                        }
                    }
                }
            }
        }
        if n >= budget || (n == before && (n > 0 || started.elapsed() >= Duration::from_millis(50))) {
            return (records, None);
        }
        if n == before {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn decode_piece(
    decoder: &LineDecoder,
    topic: &str,
    time_col: Option<&str>,
    partition: i32,
    records: Records,
) -> Result<Piece> {
    let decoded = decoder.decode_joined(&records.bytes, &records.view(), &format!("{topic}/{partition}"))?;
    let time_idx = time_col.and_then(|c| decoder.schema().index_of(c).ok());
    let newest = decoded
        .batch
        .as_ref()
        .map(|b| max_time(b, time_idx))
        .unwrap_or(i64::MIN);
    Ok(Piece {
        partition,
        records,
        batch: decoded.batch,
        bad: decoded.errors,
        newest,
    })
}

/// `batch` with the columns of `schema` only: a shared reader decodes the columns any of its
/// queries reads; each query takes its own (see [`Source::project`]).
fn columns_of(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.num_columns() == schema.fields().len() {
        return Ok(batch.clone());
    }
    let keep = schema
        .fields()
        .iter()
        .map(|f| batch.schema().index_of(f.name()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(batch.project(&keep)?)
}

/// The watermarked event-time column, found by name in each decoder's schema (a decoder may make
/// only some of the source's columns, see [`Source::project`]).
fn time_column(def: &SourceDef) -> Option<String> {
    def.watermark
        .as_ref()
        .filter(|w| def.schema.index_of(&w.column).is_ok())
        .map(|w| w.column.clone())
}

/// What one query has read of a topic: per partition the next offset, the newest event time (its
/// watermark), the chunks not yet committed; the consumer group its offsets are committed under.
pub(crate) struct Tracker {
    opts: KafkaSourceOptions,
    time_col: Option<String>,
    delay: i64,
    partitions: BTreeMap<i32, Partition>,
    /// `Ready` results returned so far (the engine's commits count them).
    polls: u64,
    /// The query watermark stored with the committed offsets resumed from (`startup = 'group'`).
    resumed: Option<i64>,
}

impl Tracker {
    /// Where to start each partition of the topic: the startup mode's offset (the group's committed
    /// one for `startup = 'group'`), and in bounded mode the end offset now. `consumer` need not
    /// be assigned anything: it answers metadata and offset questions, under `opts.group_id`.
    pub(crate) fn open(opts: KafkaSourceOptions, consumer: &BaseConsumer, def: &SourceDef) -> Result<Self> {
        let md = consumer
            .fetch_metadata(Some(&opts.topic), METADATA_TIMEOUT)
            .map_err(|e| kafka_err(&format!("metadata of topic '{}' from {}", opts.topic, opts.brokers), e))?;
        let ids: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == opts.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if ids.is_empty() {
            return Err(Error::External(format!(
                "kafka: topic '{}' not found on {}",
                opts.topic, opts.brokers
            )));
        }
        let mut committed = BTreeMap::new();
        let mut resumed: Option<i64> = None;
        if opts.startup == Startup::Group {
            let mut tpl = TopicPartitionList::new();
            for p in &ids {
                tpl.add_partition(&opts.topic, *p);
            }
            let c = consumer
                .committed_offsets(tpl, METADATA_TIMEOUT)
                .map_err(|e| kafka_err("committed offsets", e))?;
            for e in c.elements() {
                if let Offset::Offset(o) = e.offset() {
                    committed.insert(e.partition(), o);
                }
                // Each stored watermark was true when written and watermarks only grow: take the newest.
                if let Some(w) = e
                    .metadata()
                    .strip_prefix(WATERMARK_METADATA)
                    .and_then(|w| w.parse::<i64>().ok())
                {
                    resumed = Some(resumed.map_or(w, |r| r.max(w)));
                }
            }
        }
        let mut partitions = BTreeMap::new();
        for p in ids {
            let (low, high) = consumer
                .fetch_watermarks(&opts.topic, p, METADATA_TIMEOUT)
                .map_err(|e| kafka_err(&format!("offsets of {}/{p}", opts.topic), e))?;
            let start = match opts.startup {
                Startup::Earliest => low,
                Startup::Latest => high,
                Startup::Group => committed.get(&p).copied().unwrap_or(low).max(low),
            };
            partitions.insert(
                p,
                Partition {
                    next_offset: start,
                    end: opts.bounded.then_some(high),
                    max_ts: i64::MIN,
                    last_seen: Instant::now(),
                    high: Some(high),
                    high_checked: Instant::now(),
                    chunks: VecDeque::new(),
                },
            );
        }
        let delay = def.watermark.as_ref().map_or(0, |w| w.delay_ms);
        Ok(Tracker {
            time_col: time_column(def),
            opts,
            delay,
            partitions,
            polls: 0,
            resumed,
        })
    }

    /// Per partition: the next offset to read and the offset to stop at.
    pub(crate) fn starts(&self) -> BTreeMap<i32, (i64, Option<i64>)> {
        self.partitions
            .iter()
            .map(|(id, p)| (*id, (p.next_offset, p.end)))
            .collect()
    }

    pub(crate) fn topic(&self) -> &str {
        &self.opts.topic
    }

    pub(crate) fn bounded(&self) -> bool {
        self.opts.bounded
    }

    pub(crate) fn done(&self) -> bool {
        self.partitions
            .values()
            .all(|p| p.end.is_some_and(|e| p.next_offset >= e))
    }

    /// Nothing to return now: the end of a bounded read, or wait.
    pub(crate) fn no_rows(&self) -> Poll {
        if self.done() { Poll::Exhausted } else { Poll::Pending }
    }

    /// For partitions silent for `idle_timeout_ms`, learn the broker's end offset (at most once per
    /// timeout), so that `watermark` can tell an idle partition from one that is behind.
    pub(crate) fn refresh_silent_partitions(&mut self, consumer: &BaseConsumer) {
        let idle = self.opts.idle_timeout;
        for (id, p) in self.partitions.iter_mut() {
            if p.end.is_none() && p.last_seen.elapsed() >= idle && p.high_checked.elapsed() >= idle {
                p.high_checked = Instant::now();
                if let Ok((_, high)) = consumer.fetch_watermarks(&self.opts.topic, *id, Duration::from_secs(2)) {
                    p.high = Some(high);
                }
            }
        }
    }

    /// Move partitions on to the reader's positions (past transaction markers, see
    /// [`Reader::positions`]); never back.
    pub(crate) fn advance(&mut self, positions: &[(i32, i64)]) {
        for (id, o) in positions {
            if let Some(p) = self.partitions.get_mut(id)
                && *o > p.next_offset
            {
                p.next_offset = *o;
            }
        }
    }

    /// This query's rows of a poll's pieces: of each partition, the records from its next offset up
    /// to its end. A piece wholly inside is taken as decoded; one that straddles (a reader shared
    /// with queries that started elsewhere) has the records in range decoded again by `decoder`.
    /// `None`: nothing of it is this query's.
    pub(crate) fn take(
        &mut self,
        pieces: &[Piece],
        decoder: &LineDecoder,
    ) -> Result<Option<(Option<RecordBatch>, Vec<BadRecord>)>> {
        let mut batches = Vec::new();
        let mut bad = Vec::new();
        let mut took = Vec::new();
        for piece in pieces {
            let Some(part) = self.partitions.get(&piece.partition) else {
                continue;
            };
            let (Some(first), Some(last)) = (piece.records.first_offset(), piece.records.last_offset()) else {
                continue;
            };
            let (lo, hi) = (part.next_offset, part.end.unwrap_or(i64::MAX));
            if last < lo || first >= hi {
                continue;
            }
            let (newest, last) = if first >= lo && last < hi {
                batches.extend(
                    piece
                        .batch
                        .as_ref()
                        .map(|b| columns_of(b, decoder.schema()))
                        .transpose()?,
                );
                bad.extend(piece.bad.iter().cloned());
                (piece.newest, last)
            } else {
                let mut mine = Records::default();
                for (offset, payload) in piece.records.view() {
                    if (lo..hi).contains(&offset) {
                        mine.push(offset, payload);
                    }
                }
                // Offsets have gaps (transaction markers): the range may hold none of them.
                let Some(last) = mine.last_offset() else {
                    continue;
                };
                let again = decode_piece(
                    decoder,
                    &self.opts.topic,
                    self.time_col.as_deref(),
                    piece.partition,
                    mine,
                )?;
                batches.extend(again.batch);
                bad.extend(again.bad);
                (again.newest, last)
            };
            took.push((piece.partition, last, newest));
        }
        if took.is_empty() {
            return Ok(None);
        }
        self.polls += 1;
        for (id, last, newest) in took {
            if let Some(part) = self.partitions.get_mut(&id) {
                part.next_offset = last + 1;
                part.max_ts = part.max_ts.max(newest);
                part.last_seen = Instant::now();
                part.chunks.push_back((self.polls, last + 1, newest));
            }
        }
        let batch = match batches.len() {
            0 => None,
            1 => batches.pop(),
            _ => Some(datafusion::arrow::compute::concat_batches(
                &batches[0].schema(),
                batches.iter(),
            )?),
        };
        Ok(Some((batch, bad)))
    }

    pub(crate) fn watermark(&self) -> Option<i64> {
        // A partition counts unless it is finished (bounded) or idle: caught up with the end offset
        // *and* silent for `idle_timeout_ms`. A partition that is merely behind is never idle, so a
        // slow or stalled reader cannot push the watermark past its data.
        let idle = self.opts.idle_timeout;
        self.partitions
            .values()
            .filter(|p| {
                let finished = p.end.is_some_and(|e| p.next_offset >= e);
                let caught_up = p.end.or(p.high).is_none_or(|e| p.next_offset >= e);
                let idle_now = caught_up && p.last_seen.elapsed() >= idle;
                !(finished || idle_now)
            })
            .map(|p| {
                if p.max_ts == i64::MIN {
                    i64::MIN
                } else {
                    p.max_ts - self.delay
                }
            })
            .min()
    }

    pub(crate) fn resumed_watermark(&self) -> Option<i64> {
        self.resumed
    }

    /// Per partition: the next offset to read, the newest event time seen (its watermark), and in
    /// bounded mode the offset to stop at.
    pub(crate) fn position(&self) -> serde_json::Value {
        let parts: serde_json::Map<String, serde_json::Value> = self
            .partitions
            .iter()
            .map(|(id, p)| {
                (
                    id.to_string(),
                    serde_json::json!({ "next": p.next_offset, "max_ts": p.max_ts, "end": p.end }),
                )
            })
            .collect();
        serde_json::json!({ "topic": self.opts.topic, "partitions": parts })
    }

    /// Take a checkpoint's position (the caller then reads from [`Self::starts`]).
    pub(crate) fn seek(&mut self, position: &serde_json::Value, consumer: &BaseConsumer) -> Result<()> {
        let bad = |why: &str| Error::External(format!("kafka source position {position}: {why}"));
        if position.get("topic").and_then(serde_json::Value::as_str) != Some(self.opts.topic.as_str()) {
            return Err(bad(&format!("not of topic '{}'", self.opts.topic)));
        }
        let parts = position
            .get("partitions")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| bad("no partitions"))?;
        for (id, p) in self.partitions.iter_mut() {
            // A partition added since the checkpoint is read from its start.
            if let Some(at) = parts.get(&id.to_string()) {
                let next = at
                    .get("next")
                    .and_then(serde_json::Value::as_i64)
                    .ok_or_else(|| bad("no 'next'"))?;
                let (low, _) = consumer
                    .fetch_watermarks(&self.opts.topic, *id, METADATA_TIMEOUT)
                    .map_err(|e| kafka_err(&format!("offsets of {}/{id}", self.opts.topic), e))?;
                if next < low {
                    return Err(Error::External(format!(
                        "kafka: {}/{id}: the checkpoint resumes at offset {next}, but the topic now starts at {low} \
                         (records were deleted by retention): resuming would lose them",
                        self.opts.topic
                    )));
                }
                p.next_offset = next;
                p.max_ts = at.get("max_ts").and_then(serde_json::Value::as_i64).unwrap_or(i64::MIN);
                if p.end.is_some() {
                    p.end = at.get("end").and_then(serde_json::Value::as_i64).or(p.end);
                }
                p.chunks.clear();
            }
        }
        // The checkpoint, not the group's commits, says where this query is.
        self.resumed = None;
        Ok(())
    }

    /// Commit, under the query's group, the offsets of the chunks among the first `polls` whose
    /// rows are all older than `safe_ts` (see [`Source::commit`]).
    pub(crate) fn commit(&mut self, consumer: &BaseConsumer, safe_ts: i64, polls: u64, watermark: i64) -> Result<()> {
        let upto = if polls == 0 { self.polls } else { polls };
        let mut tpl = TopicPartitionList::new();
        for (p, part) in &mut self.partitions {
            let mut offset = None;
            while let Some(&(seq, next, newest)) = part.chunks.front() {
                if seq > upto || newest >= safe_ts {
                    break;
                }
                offset = Some(next);
                part.chunks.pop_front();
            }
            if let Some(o) = offset {
                tpl.add_partition_offset(&self.opts.topic, *p, Offset::Offset(o))
                    .map_err(|e| kafka_err("committing offsets", e))?;
                if watermark > i64::MIN
                    && let Some(mut e) = tpl.find_partition(&self.opts.topic, *p)
                {
                    e.set_metadata(format!("{WATERMARK_METADATA}{watermark}"));
                }
            }
        }
        if tpl.count() > 0 {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| kafka_err("committing offsets", e))?;
        }
        Ok(())
    }
}

/// A query's own reader of a topic: one consumer, assigned the partitions explicitly.
pub struct KafkaSource {
    reader: Reader,
    tracker: Tracker,
}

impl KafkaSource {
    pub fn open(def: &SourceDef) -> Result<Self> {
        let opts = KafkaSourceOptions::parse(&def.options, &def.name)?;
        let mut reader = Reader::open(&opts, &opts.group_id, def)?;
        let tracker = Tracker::open(opts, &reader.consumer, def)?;
        reader.assign(&tracker.starts())?;
        Ok(KafkaSource { reader, tracker })
    }
}

fn max_time(batch: &RecordBatch, idx: Option<usize>) -> i64 {
    idx.and_then(|i| batch.column(i).as_primitive_opt::<TimestampMillisecondType>().cloned())
        .and_then(|a| datafusion::arrow::compute::max(&a))
        .unwrap_or(i64::MIN)
}

impl Source for KafkaSource {
    fn poll(&mut self, max: usize) -> Result<Poll> {
        if self.tracker.done() {
            return Ok(Poll::Exhausted);
        }
        let pieces = self.reader.read(max)?;
        self.tracker.refresh_silent_partitions(&self.reader.consumer);
        match self.tracker.take(&pieces, &self.reader.decoder)? {
            Some((batch, bad)) => Ok(Poll::Ready(batch, bad)),
            None => {
                self.tracker.advance(&self.reader.positions());
                Ok(self.tracker.no_rows())
            }
        }
    }

    fn bounded(&self) -> bool {
        self.tracker.bounded()
    }

    fn decode_on(&mut self, workers: usize) -> Result<()> {
        self.reader.decode_on(workers);
        Ok(())
    }

    fn project(&mut self, columns: &[usize]) -> Result<()> {
        self.reader.project(columns)
    }

    fn columns(&self) -> Option<Vec<usize>> {
        self.reader.decoder.columns()
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
        self.tracker.seek(position, &self.reader.consumer)?;
        self.reader.assign(&self.tracker.starts())
    }

    fn partitioned(&self) -> bool {
        true
    }

    fn commit(&mut self, safe_ts: i64, polls: u64, watermark: i64) -> Result<()> {
        self.tracker.commit(&self.reader.consumer, safe_ts, polls, watermark)
    }
}

/// Records delivery failures so that the sink can surface them.
#[derive(Default)]
pub struct DeliveryErrors(std::sync::Mutex<Vec<String>>);

impl ClientContext for DeliveryErrors {}

impl ProducerContext for DeliveryErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
        }
    }
}

pub fn producer(brokers: &str, properties: &[(String, String)]) -> Result<BaseProducer<DeliveryErrors>> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000");
    for (k, v) in properties {
        cfg.set(k, v);
    }
    cfg.create_with_context(DeliveryErrors::default())
        .map_err(|e| kafka_err("creating the producer", e))
}

/// Send one record, waiting while librdkafka's queue is full.
pub fn send(p: &BaseProducer<DeliveryErrors>, topic: &str, key: Option<&[u8]>, payload: &[u8]) -> Result<()> {
    send_with_headers(p, topic, key, payload, None)
}

/// [`send`] with record headers.
pub fn send_with_headers(
    p: &BaseProducer<DeliveryErrors>,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> Result<()> {
    let mut headers = headers;
    loop {
        let mut rec = BaseRecord::to(topic).payload(payload);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(h) = headers.take() {
            rec = rec.headers(h);
        }
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), rec)) => {
                headers = rec.headers;
                p.poll(Duration::from_millis(50));
            }
            Err((e, _)) => return Err(kafka_err(&format!("producing to '{topic}'"), e)),
        }
    }
}

/// Wait up to `timeout` for every record sent to be acknowledged or to fail; then report failures.
pub fn flush_within(p: &BaseProducer<DeliveryErrors>, timeout: Duration) -> Result<()> {
    // Not `BaseProducer::flush`: it polls in slices of up to 100 ms that last their whole timeout, so
    // a flush never returned in under 100 ms while a record was in flight (the collector's Kafka sink
    // was capped at ~46 K events/s by that; see docs/benchmarks.md). Serve delivery reports until
    // nothing is in flight instead; a short sleep between polls (a timed poll shorter than 1 ms spins).
    use rdkafka::producer::Producer;
    let deadline = Instant::now() + timeout;
    let _ = p.flush(Duration::ZERO);
    while p.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(Error::External(format!(
                "kafka: flushing: {} record(s) not acknowledged within {timeout:?}",
                p.in_flight_count()
            )));
        }
        p.poll(Duration::ZERO);
        if p.in_flight_count() > 0 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    delivery_errors(p)
}

pub fn delivery_errors(p: &BaseProducer<DeliveryErrors>) -> Result<()> {
    let errs = std::mem::take(&mut *p.context().0.lock().unwrap_or_else(|e| e.into_inner()));
    match errs.first() {
        None => Ok(()),
        Some(first) => Err(Error::External(format!(
            "kafka: {} record(s) not delivered: {first}",
            errs.len()
        ))),
    }
}

/// Flush outstanding records and report failed deliveries.
pub fn flush(p: &BaseProducer<DeliveryErrors>) -> Result<()> {
    flush_within(p, Duration::from_secs(60))
}

/// Create `topic` with `partitions` partitions if it does not exist.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| kafka_err("creating the admin client", e))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let res = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .map_err(|e| kafka_err("creating topic", e))?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(Error::External(format!("kafka: creating topic '{t}': {e}"))),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------- sink
//
// Exactly-once (`'sink.delivery-guarantee' = 'exactly-once'`, the default) follows the engine's
// two-phase epochs (see `Sink` in `connector/mod.rs`):
//
// * One transactional producer per sink, with a stable `transactional.id` (`properties.transactional.id`,
//   else `freshet-sink-<sink name>-<topic>` as the session sets it, else `freshet-sink-<topic>`).
//   `recover` calls `init_transactions`, which fences a producer of an earlier run still alive (a
//   zombie) and aborts the transaction it left open.
// * `write` begins a transaction before the first row after a commit; every transaction gets a number
//   (`txn`, increasing per `transactional.id`, never reused).
// * `prepare(epoch)` waits until every record is acknowledged (delivery failures fail the query) and
//   adds to the transaction an offset commit for the consumer group `freshet-commits.<transactional.id>`:
//   offset `txn` on partition 0 of the topic. Kafka commits that offset atomically with the records,
//   so after a restart the group's committed offset says which transaction committed last: a marker
//   that cannot disagree with the data. The transaction is NOT committed; the checkpoint stores its
//   number and where its records landed (partition → offset ranges, from the delivery reports).
// * `publish(epoch)` commits the transaction.
//
// The crash window between the checkpoint and `commit_transaction`: librdkafka cannot commit a
// transaction of an earlier producer instance (Flink's "resumeTransaction" sets the producer id and epoch
// by reflection into the Java client; KIP-939's keepPreparedTxn is neither in librdkafka 2.12 nor enabled
// in brokers by default), and the restarted `init_transactions` aborts it. The engine resumes after
// the epoch's input, so it cannot produce the rows again. So `recover(k, pending)` reads the marker: if
// the checkpoint's transaction is not committed, its records — aborted, but still in the log — are
// read back with `isolation.level = read_uncommitted` at the offsets the checkpoint holds and written
// again in a new transaction that carries the same marker, then committed. A crash during that is
// recovered the same way (the marker still says "not committed"); after it, the marker says
// "committed" and nothing is written twice. The marker's metadata names the sink's lineage (a random
// name from a start from scratch, kept through recoveries): a marker of another lineage at or past the
// checkpoint's transaction means two sinks share the transactional.id, and recovery refuses to guess.
// Guarantee for `read_committed` readers, per crash window: before the checkpoint — the transaction is
// aborted and the replay writes the rows again: once; between the checkpoint and the commit — copied by
// recovery: once; during or after the commit — committed (a commit the coordinator started completes)
// and recovery sees the marker: once. A `read_uncommitted` reader sees the aborted copies as well. This is what Arroyo's issue #224 / PR #218 describe as
// the workable approach for librdkafka ("replay the data by reading the uncommitted records off of
// kafka into a new commit"), with the marker answering "did it commit?".

/// `'sink.delivery-guarantee'`, as Flink names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryGuarantee {
    /// Transactions committed with the engine's checkpoints (the default).
    ExactlyOnce,
    /// An idempotent producer flushed at every commit; a restart may write rows again.
    AtLeastOnce,
}

const SINK_KEYS: &[&str] = &[
    "connector",
    "bootstrap_servers",
    "topic",
    "key",
    "format",
    "sink.delivery-guarantee",
];

/// How long a transactional call (init, commit, abort, offsets) may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// The consumer group whose committed offset on partition 0 of the topic is the number of the last
/// transaction committed under `transactional_id`.
pub fn commit_marker_group(transactional_id: &str) -> String {
    format!("freshet-commits.{transactional_id}")
}

#[derive(Debug, Clone)]
pub struct KafkaSinkOptions {
    pub brokers: String,
    pub topic: String,
    pub key: Vec<String>,
    /// Each row with its kind in an `op` field (`format = 'changelog'`).
    pub changelog: bool,
    /// Debezium-style JSON (`format = 'debezium-json'`).
    pub debezium: bool,
    pub guarantee: DeliveryGuarantee,
    /// Exactly-once: the producer's `transactional.id` (`properties.transactional.id`, else
    /// `freshet-sink-<sink name>-<topic>` as the session sets it, else `freshet-sink-<topic>`).
    pub transactional_id: Option<String>,
    /// `properties.<librdkafka key>` but `transactional.id`.
    pub properties: Vec<(String, String)>,
}

impl KafkaSinkOptions {
    pub fn parse(o: &Options) -> Result<Self> {
        let mut properties = check_keys(o, "connector 'kafka' (sink)", SINK_KEYS)?;
        let brokers = o.required("bootstrap_servers", "connector 'kafka'")?.to_string();
        let topic = o.required("topic", "connector 'kafka'")?.to_string();
        super::json_only(o)?;
        let guarantee = match o.get("sink.delivery-guarantee").unwrap_or("exactly-once") {
            "exactly-once" => DeliveryGuarantee::ExactlyOnce,
            "at-least-once" => DeliveryGuarantee::AtLeastOnce,
            other => {
                return Err(Error::option(
                    "sink.delivery-guarantee",
                    format!("'{other}'; valid: exactly-once, at-least-once"),
                ));
            }
        };
        let given = properties
            .iter()
            .position(|(k, _)| k == "transactional.id")
            .map(|i| properties.remove(i).1);
        let transactional_id = match guarantee {
            DeliveryGuarantee::ExactlyOnce => {
                let id = given.unwrap_or_else(|| format!("freshet-sink-{topic}"));
                if id.is_empty() {
                    return Err(Error::option("properties.transactional.id", "must not be empty"));
                }
                Some(id)
            }
            DeliveryGuarantee::AtLeastOnce if given.is_some() => {
                return Err(Error::option(
                    "properties.transactional.id",
                    "only with 'sink.delivery-guarantee' = 'exactly-once'",
                ));
            }
            DeliveryGuarantee::AtLeastOnce => None,
        };
        Ok(KafkaSinkOptions {
            brokers,
            topic,
            key: o
                .get("key")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect(),
            changelog: o.get("format") == Some("changelog"),
            debezium: o.get("format") == Some("debezium-json"),
            guarantee,
            transactional_id,
            properties,
        })
    }
}

/// Offset ranges `[start, end)` per partition.
type Ranges = BTreeMap<i32, Vec<(i64, i64)>>;

fn add_offset(r: &mut Ranges, partition: i32, offset: i64) {
    let v = r.entry(partition).or_default();
    match v.last_mut() {
        Some(last) if last.1 == offset => last.1 = offset + 1,
        _ => v.push((offset, offset + 1)),
    }
}

/// `from` added to `into`, each partition's ranges sorted and merged.
fn merge_ranges(into: &mut Ranges, from: Ranges) {
    for (p, mut v) in from {
        let all = into.entry(p).or_default();
        all.append(&mut v);
        all.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(all.len());
        for &(s, e) in all.iter() {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *all = merged;
    }
}

fn count_ranges(r: &Ranges) -> u64 {
    r.values().flatten().map(|(s, e)| (e - s) as u64).sum()
}

/// Delivery reports of a sink's producer: the failures, and where each delivered record landed
/// (exactly-once recovery reads a transaction's records back from there).
#[derive(Default)]
pub struct SinkDeliveries {
    errors: std::sync::Mutex<Vec<String>>,
    landed: std::sync::Mutex<Ranges>,
    track: bool,
}

impl ClientContext for SinkDeliveries {}

impl ProducerContext for SinkDeliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) if self.track => {
                let mut l = self.landed.lock().unwrap_or_else(|p| p.into_inner());
                add_offset(&mut l, m.partition(), m.offset());
            }
            Ok(_) => {}
            Err((e, _)) => self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.to_string()),
        }
    }
}

type SinkProducer = BaseProducer<SinkDeliveries>;

/// A producer as [`producer`] makes one; transactional when `transactional_id` is given.
fn sink_producer(o: &KafkaSinkOptions, transactional_id: Option<&str>) -> Result<SinkProducer> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &o.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000");
    if let Some(id) = transactional_id {
        cfg.set("transactional.id", id);
    }
    for (k, v) in &o.properties {
        cfg.set(k, v);
    }
    cfg.create_with_context(SinkDeliveries {
        track: transactional_id.is_some(),
        ..SinkDeliveries::default()
    })
    .map_err(|e| kafka_err("creating the producer", e))
}

/// A consumer for the sink's own bookkeeping (the commit marker, reading records back).
fn sink_consumer(o: &KafkaSinkOptions, group: &str, isolation: &str) -> Result<BaseConsumer> {
    let mut cfg = ClientConfig::new();
    // The user's properties carry security settings the consumer needs too; producer-only keys
    // are ignored by librdkafka (with a log line).
    for (k, v) in &o.properties {
        cfg.set(k, v);
    }
    cfg.set("bootstrap.servers", &o.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", isolation);
    cfg.create().map_err(|e| kafka_err("creating a consumer", e))
}

/// Send one record (to `partition`, or where the key leads), waiting while librdkafka's queue is full.
fn send_record(
    p: &SinkProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: &[u8],
    timestamp: Option<i64>,
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> Result<()> {
    let mut headers = headers;
    loop {
        let mut rec = BaseRecord::to(topic).payload(payload);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(part) = partition {
            rec = rec.partition(part);
        }
        if let Some(t) = timestamp {
            rec = rec.timestamp(t);
        }
        if let Some(h) = headers.take() {
            rec = rec.headers(h);
        }
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), rec)) => {
                headers = rec.headers;
                p.poll(Duration::from_millis(50));
            }
            Err((e, _)) => return Err(kafka_err(&format!("producing to '{topic}'"), e)),
        }
    }
}

fn take_errors(p: &SinkProducer) -> Result<()> {
    let errs = std::mem::take(&mut *p.context().errors.lock().unwrap_or_else(|e| e.into_inner()));
    match errs.first() {
        None => Ok(()),
        Some(first) => Err(Error::External(format!(
            "kafka: {} record(s) not delivered: {first}",
            errs.len()
        ))),
    }
}

fn take_landed(p: &SinkProducer) -> Ranges {
    std::mem::take(&mut *p.context().landed.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Wait until every record sent is acknowledged or failed (as [`flush_within`]); report failures.
fn flush_sink(p: &SinkProducer, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let _ = p.flush(Duration::ZERO);
    while p.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(Error::External(format!(
                "kafka: flushing: {} record(s) not acknowledged within {timeout:?}",
                p.in_flight_count()
            )));
        }
        p.poll(Duration::ZERO);
        if p.in_flight_count() > 0 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    take_errors(p)
}

/// The commit marker of one `transactional.id`: reads the number of the last transaction committed,
/// and adds "transaction n committed" to an open transaction.
struct Marker {
    /// The `transactional.id` it belongs to.
    id: String,
    consumer: BaseConsumer,
    cgm: rdkafka::consumer::ConsumerGroupMetadata,
    topic: String,
}

impl Marker {
    fn open(o: &KafkaSinkOptions, transactional_id: &str, topic: &str) -> Result<Marker> {
        let consumer = sink_consumer(o, &commit_marker_group(transactional_id), "read_committed")?;
        let cgm = consumer
            .group_metadata()
            .ok_or_else(|| Error::External("kafka: no consumer group metadata for the commit marker".into()))?;
        Ok(Marker {
            id: transactional_id.to_string(),
            consumer,
            cgm,
            topic: topic.to_string(),
        })
    }

    /// The last transaction committed (number 0: none). Read after `init_transactions`, so no
    /// transaction of this id is still pending.
    fn committed(&self) -> Result<Committed> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, 0);
        let c = self
            .consumer
            .committed_offsets(tpl, METADATA_TIMEOUT)
            .map_err(|e| kafka_err("reading the sink's commit marker", e))?;
        let mut last = Committed { txn: 0, lineage: None };
        for e in c.elements() {
            e.error()
                .map_err(|e| kafka_err("reading the sink's commit marker", e))?;
            if let Offset::Offset(o) = e.offset() {
                last = Committed {
                    txn: o.max(0) as u64,
                    lineage: e
                        .metadata()
                        .strip_prefix("freshet:")
                        .and_then(|m| m.split(':').next())
                        .map(str::to_string),
                };
            }
        }
        Ok(last)
    }

    /// Make the open transaction say that it is transaction `txn` of `lineage` (and `epoch`) when it
    /// commits.
    fn mark(&self, p: &SinkProducer, lineage: &str, txn: u64, epoch: u64) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Offset(txn as i64))
            .map_err(|e| kafka_err("commit marker", e))?;
        if let Some(mut e) = tpl.find_partition(&self.topic, 0) {
            e.set_metadata(format!("freshet:{lineage}:{txn}:{epoch}"));
        }
        p.send_offsets_to_transaction(&tpl, &self.cgm, TXN_TIMEOUT)
            .map_err(|e| txn_err("adding the commit marker to the transaction", e, &self.id))
    }
}

/// What the commit marker says: the last transaction committed and the sink lineage that committed it.
struct Committed {
    txn: u64,
    lineage: Option<String>,
}

impl Committed {
    /// Whether the transaction a checkpoint left unpublished (`p.txn`) was committed. A marker written
    /// by another lineage at or past it means two sinks share the transactional.id: the answer cannot
    /// be told, so the sink refuses (rather than lose or repeat the epoch).
    fn covers(&self, p: &KafkaPending, topic: &str) -> Result<bool> {
        let ours = self.lineage.as_deref() == Some(p.lineage.as_str());
        let at_or_past = match p.txn {
            Some(n) => self.txn >= n,
            None => self.txn >= p.next,
        };
        if at_or_past && !ours {
            return Err(Error::External(format!(
                "kafka sink '{topic}': the commit marker of transactional.id '{}' (consumer group '{}') was written \
                 by another sink ({}, transaction {}) since checkpoint {}: two sinks use this transactional.id, so \
                 whether that checkpoint's output was committed cannot be told. Give each sink its own \
                 'properties.transactional.id'",
                p.transactional_id,
                commit_marker_group(&p.transactional_id),
                self.lineage.as_deref().unwrap_or("no Freshet lineage"),
                self.txn,
                p.epoch
            )));
        }
        Ok(p.txn.is_none_or(|n| self.txn >= n))
    }
}

/// A transactional call's error; a fatal one (the producer is fenced) explains the two causes.
fn txn_err(what: &str, e: KafkaError, transactional_id: &str) -> Error {
    let fatal = matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
    let mut err = kafka_err(what, e);
    if fatal && let Error::External(m) = &mut err {
        m.push_str(&format!(
            " (another producer with transactional.id '{transactional_id}' started, or the transaction stayed \
             open longer than transaction.timeout.ms — keep that well above the checkpoint interval; the query's \
             output since its last published checkpoint is written again when it resumes from its checkpoint)"
        ));
    }
    err
}

/// `commit_transaction`, retried while librdkafka says the error is retriable.
fn commit_txn(p: &SinkProducer) -> rdkafka::error::KafkaResult<()> {
    let mut attempt = 0;
    loop {
        match p.commit_transaction(TXN_TIMEOUT) {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < 3 => attempt += 1,
            r => return r,
        }
    }
}

/// Write transaction `txn`'s records again — they were delivered under it, then aborted — in a new
/// transaction that carries the marker `txn`, and commit it. They are read back from `topic` with
/// `isolation.level = read_uncommitted` at the offsets the delivery reports gave (aborted records stay
/// in the log until retention deletes them), each to its partition with its key, timestamp and headers.
/// Returns how many records were written.
fn rewrite(
    o: &KafkaSinkOptions,
    p: &SinkProducer,
    marker: &Marker,
    lineage: &str,
    records: &Ranges,
    txn: u64,
    epoch: u64,
) -> Result<u64> {
    let topic = marker.topic.as_str();
    let want = count_ranges(records);
    let lost = |why: String| {
        Error::External(format!(
            "kafka sink: the {want} record(s) of transaction {txn} (epoch {epoch}) in '{topic}' were not committed \
             and cannot be written again: {why}"
        ))
    };
    let reader = sink_consumer(
        o,
        &format!("{}.reread", commit_marker_group(&marker.id)),
        "read_uncommitted",
    )?;
    let mut tpl = TopicPartitionList::new();
    for (part, ranges) in records {
        let Some(&(first, _)) = ranges.first() else { continue };
        let (low, _) = reader
            .fetch_watermarks(topic, *part, METADATA_TIMEOUT)
            .map_err(|e| kafka_err(&format!("offsets of {topic}/{part}"), e))?;
        if first < low {
            return Err(lost(format!(
                "{topic}/{part} now starts at offset {low}, after {first} (deleted by retention)"
            )));
        }
        tpl.add_partition_offset(topic, *part, Offset::Offset(first))
            .map_err(|e| kafka_err("assigning partitions", e))?;
    }
    p.begin_transaction()
        .map_err(|e| kafka_err("beginning a transaction", e))?;
    let copied = copy_records(p, &reader, &tpl, records, topic).and_then(|written| {
        if written != want {
            return Err(lost(format!(
                "{written} found (compaction or retention removed the others)"
            )));
        }
        flush_sink(p, TXN_TIMEOUT)?;
        take_landed(p);
        marker.mark(p, lineage, txn, epoch)?;
        commit_txn(p).map_err(|e| kafka_err("committing the transaction", e))?;
        Ok(written)
    });
    if copied.is_err() {
        let _ = p.abort_transaction(TXN_TIMEOUT);
        take_landed(p);
    }
    copied.map_err(|e| match e {
        Error::External(m) if !m.starts_with("kafka sink:") => lost(m),
        e => e,
    })
}

/// Read `records` from `reader` (assigned at `tpl`, their first offsets) and send each to `p`.
fn copy_records(
    p: &SinkProducer,
    reader: &BaseConsumer,
    tpl: &TopicPartitionList,
    records: &Ranges,
    topic: &str,
) -> Result<u64> {
    let mut written = 0u64;
    if tpl.count() == 0 {
        return Ok(0);
    }
    reader.assign(tpl).map_err(|e| kafka_err("assigning partitions", e))?;
    // Per partition: the index of the range being read.
    let mut at: BTreeMap<i32, usize> = records.keys().map(|p| (*p, 0)).collect();
    let mut last_progress = Instant::now();
    while at.iter().any(|(part, i)| *i < records[part].len()) {
        if last_progress.elapsed() > Duration::from_secs(30) {
            return Err(Error::External(format!("only {written} read back within 30 s")));
        }
        let m = match reader.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(e)) => return Err(kafka_err("reading records back", e)),
            Some(Ok(m)) => m,
        };
        last_progress = Instant::now();
        let (part, off) = (m.partition(), m.offset());
        let (Some(ranges), Some(i)) = (records.get(&part), at.get_mut(&part)) else {
            continue;
        };
        while *i < ranges.len() && off >= ranges[*i].1 {
            *i += 1;
        }
        if *i < ranges.len() && off >= ranges[*i].0 {
            let ts = match m.timestamp() {
                rdkafka::Timestamp::CreateTime(t) => Some(t),
                _ => None,
            };
            let headers = m.headers().map(|h| h.detach());
            send_record(
                p,
                topic,
                Some(part),
                m.key(),
                m.payload().unwrap_or_default(),
                ts,
                headers,
            )?;
            p.poll(Duration::ZERO);
            written += 1;
            if off + 1 == ranges[*i].1 {
                *i += 1;
            }
        }
        if *i == ranges.len() {
            // Read to its last record: stop fetching it.
            let mut done = TopicPartitionList::new();
            done.add_partition(topic, part);
            let _ = reader.pause(&done);
        }
    }
    Ok(written)
}

/// What a checkpoint stores for an exactly-once Kafka sink.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KafkaPending {
    pub transactional_id: String,
    pub topic: String,
    /// The open transaction holding this epoch's unpublished rows (and those of earlier epochs whose
    /// checkpoint failed), if any.
    pub txn: Option<u64>,
    pub epoch: u64,
    /// Where that transaction's records landed: partition → `[start, end)` offset ranges.
    #[serde(default)]
    pub records: BTreeMap<i32, Vec<(i64, i64)>>,
    /// The number the next transaction gets.
    pub next: u64,
    /// The sink's lineage: a random name given at a start from scratch and kept through every
    /// recovery from its checkpoints, written into the commit marker.
    pub lineage: String,
}

/// A name no other sink lineage has.
fn new_lineage() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

struct Txn {
    id: String,
    /// Set once `init_transactions` ran (at `recover`, or before the first write if nothing recovered).
    marker: Option<Marker>,
    /// The open transaction's number.
    open: Option<u64>,
    next: u64,
    /// Where the open transaction's records landed (as of the last prepare).
    records: Ranges,
    /// Rows written since the last prepare.
    unprepared: bool,
    /// The epoch last prepared.
    epoch: u64,
    lineage: String,
}

pub struct KafkaSink {
    opts: KafkaSinkOptions,
    producer: SinkProducer,
    key_cols: Vec<usize>,
    /// Exactly-once only.
    txn: Option<Txn>,
}

impl KafkaSink {
    pub fn validate(o: &Options) -> Result<()> {
        KafkaSinkOptions::parse(o).map(|_| ())
    }

    pub fn open(o: &Options, schema: SchemaRef) -> Result<Self> {
        let opts = KafkaSinkOptions::parse(o)?;
        let mut key_cols = Vec::new();
        for k in &opts.key {
            let i = schema.index_of(k).map_err(|_| {
                Error::option(
                    "key",
                    format!("no column '{k}' in the query's output ({})", field_names(&schema)),
                )
            })?;
            key_cols.push(i);
        }
        let producer = sink_producer(&opts, opts.transactional_id.as_deref())?;
        let txn = opts.transactional_id.clone().map(|id| Txn {
            id,
            marker: None,
            open: None,
            next: 1,
            records: Ranges::new(),
            unprepared: false,
            epoch: 0,
            lineage: new_lineage(),
        });
        Ok(KafkaSink {
            opts,
            producer,
            key_cols,
            txn,
        })
    }

    pub fn guarantee(&self) -> DeliveryGuarantee {
        self.opts.guarantee
    }

    /// Exactly-once: `init_transactions` (fencing an earlier instance, aborting what it left open)
    /// and the commit marker, once.
    fn init(&mut self) -> Result<()> {
        let Some(t) = &mut self.txn else { return Ok(()) };
        if t.marker.is_some() {
            return Ok(());
        }
        self.producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(|e| kafka_err(&format!("initializing transactions of '{}'", t.id), e))?;
        let marker = Marker::open(&self.opts, &t.id, &self.opts.topic)?;
        t.next = t.next.max(marker.committed()?.txn + 1);
        t.marker = Some(marker);
        Ok(())
    }

    /// Prepare the open transaction (exactly-once): everything delivered, the marker added.
    fn prepare_txn(&mut self, epoch: u64) -> Result<Option<KafkaPending>> {
        self.init()?;
        flush_sink(&self.producer, Duration::from_secs(60))?;
        let landed = take_landed(&self.producer);
        let Some(t) = &mut self.txn else { return Ok(None) };
        merge_ranges(&mut t.records, landed);
        if let (Some(n), Some(m)) = (t.open, &t.marker) {
            m.mark(&self.producer, &t.lineage, n, epoch)?;
        }
        t.unprepared = false;
        t.epoch = epoch;
        Ok(Some(KafkaPending {
            transactional_id: t.id.clone(),
            topic: self.opts.topic.clone(),
            txn: t.open,
            epoch,
            records: if t.open.is_some() {
                t.records.clone()
            } else {
                Ranges::new()
            },
            next: t.next,
            lineage: t.lineage.clone(),
        }))
    }

    /// Commit the open transaction (exactly-once). If Kafka aborted it meanwhile (its
    /// `transaction.timeout.ms` passed), its records are written again in a new one.
    fn commit_open(&mut self) -> Result<()> {
        let Some(t) = &mut self.txn else { return Ok(()) };
        let Some(n) = t.open else { return Ok(()) };
        if t.unprepared {
            return Err(Error::Internal(
                "kafka sink: publishing a transaction with rows written after its prepare".into(),
            ));
        }
        match commit_txn(&self.producer) {
            Ok(()) => {}
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                eprintln!(
                    "kafka sink '{}': transaction {n} could not be committed ({e}); writing its records again",
                    self.opts.topic
                );
                self.producer
                    .abort_transaction(TXN_TIMEOUT)
                    .map_err(|e| kafka_err("aborting the transaction", e))?;
                let m = t
                    .marker
                    .as_ref()
                    .ok_or_else(|| Error::Internal("kafka sink: no marker".into()))?;
                rewrite(&self.opts, &self.producer, m, &t.lineage, &t.records, n, t.epoch)?;
            }
            Err(e) => return Err(txn_err(&format!("committing transaction {n}"), e, &t.id)),
        }
        t.open = None;
        t.records.clear();
        Ok(())
    }

    /// Settle the transaction a checkpoint left unpublished: nothing if the marker says it committed,
    /// else its records written again (see the notes above [`DeliveryGuarantee`]).
    fn settle(&mut self, p: &KafkaPending) -> Result<()> {
        let own = self.txn.as_ref().is_some_and(|t| t.id == p.transactional_id) && p.topic == self.opts.topic;
        let (committed, rewritten) = if own {
            let t = self
                .txn
                .as_mut()
                .ok_or_else(|| Error::Internal("kafka sink: no transaction state".into()))?;
            let m = t
                .marker
                .as_ref()
                .ok_or_else(|| Error::Internal("kafka sink: no marker".into()))?;
            let committed = m.committed()?;
            let rewritten = match p.txn {
                Some(n) if !committed.covers(p, &self.opts.topic)? => Some(rewrite(
                    &self.opts,
                    &self.producer,
                    m,
                    &p.lineage,
                    &p.records,
                    n,
                    p.epoch,
                )?),
                _ => None,
            };
            // The lineage goes on; no transaction number is used twice.
            t.lineage = p.lineage.clone();
            t.next = t.next.max(p.next).max(committed.txn + 1);
            (committed, rewritten)
        } else {
            // The checkpoint was taken under another transactional.id or topic (the options changed):
            // settle it with a producer of that id, which also fences what is left of it.
            let producer = sink_producer(&self.opts, Some(&p.transactional_id))?;
            producer
                .init_transactions(TXN_TIMEOUT)
                .map_err(|e| kafka_err(&format!("initializing transactions of '{}'", p.transactional_id), e))?;
            let m = Marker::open(&self.opts, &p.transactional_id, &p.topic)?;
            let committed = m.committed()?;
            let rewritten = match p.txn {
                Some(n) if !committed.covers(p, &p.topic)? => {
                    Some(rewrite(&self.opts, &producer, &m, &p.lineage, &p.records, n, p.epoch)?)
                }
                _ => None,
            };
            (committed, rewritten)
        };
        if let Some(rows) = rewritten {
            eprintln!(
                "kafka sink '{}': transaction {} of epoch {} was not committed before the restart; \
                 its {rows} record(s) were written again and committed",
                p.topic,
                p.txn.unwrap_or_default(),
                p.epoch
            );
        } else if committed.txn >= p.next {
            eprintln!(
                "kafka sink '{}': transactions after checkpoint {} were committed (up to {committed}), but the query \
                 resumes from that older checkpoint: the rows of the later epochs will appear twice",
                p.topic,
                p.epoch,
                committed = committed.txn
            );
        }
        Ok(())
    }
}

pub fn field_names(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Sink for KafkaSink {
    fn mode(&self) -> SinkMode {
        SinkMode::Append
    }

    fn write(&mut self, out: &Output) -> Result<()> {
        if self.txn.is_some() {
            self.init()?;
        }
        let b = &out.batch;
        let json = if self.opts.debezium {
            out.to_debezium_json()?
        } else if self.opts.changelog || !out.inserts_only() {
            to_json_lines(&out.with_op_column()?)?
        } else {
            to_json_lines(b)?
        };
        if let Some(t) = &mut self.txn {
            if t.open.is_none() && !json.is_empty() {
                self.producer
                    .begin_transaction()
                    .map_err(|e| txn_err("beginning a transaction", e, &t.id))?;
                t.open = Some(t.next);
                t.next += 1;
            }
            t.unprepared |= !json.is_empty();
        }
        let opts = FormatOptions::default();
        let fmts: Vec<ArrayFormatter> = self
            .key_cols
            .iter()
            .map(|i| ArrayFormatter::try_new(b.column(*i).as_ref(), &opts))
            .collect::<Result<_, _>>()?;
        for (row, line) in json.split(|c| *c == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let key = (!fmts.is_empty()).then(|| {
                fmts.iter()
                    .map(|f| f.value(row).to_string())
                    .collect::<Vec<_>>()
                    .join("|")
                    .into_bytes()
            });
            send_record(&self.producer, &self.opts.topic, None, key.as_deref(), line, None, None)?;
        }
        self.producer.poll(Duration::ZERO);
        take_errors(&self.producer)
    }

    /// Everything written so far durable and visible: at-least-once a flush; exactly-once the open
    /// transaction prepared and committed.
    fn commit(&mut self) -> Result<()> {
        if self.txn.is_none() {
            return flush_sink(&self.producer, Duration::from_secs(60));
        }
        self.prepare_txn(0)?;
        self.commit_open()
    }

    /// Exactly-once: every record of the open transaction acknowledged and the commit marker added,
    /// not committed; returns the transaction's number and where its records are ([`KafkaPending`]).
    /// At-least-once: a flush.
    fn prepare(&mut self, epoch: u64) -> Result<serde_json::Value> {
        if self.txn.is_none() {
            flush_sink(&self.producer, Duration::from_secs(60))?;
            return Ok(serde_json::Value::Null);
        }
        let pending = self.prepare_txn(epoch)?;
        serde_json::to_value(pending).map_err(|e| Error::Internal(format!("kafka sink: {e}")))
    }

    fn publish(&mut self, _epoch: u64) -> Result<()> {
        self.commit_open()
    }

    fn recover(&mut self, epoch: Option<u64>, pending: &serde_json::Value) -> Result<()> {
        self.init()?;
        if epoch.is_none() || pending.is_null() {
            return Ok(());
        }
        let p: KafkaPending = serde_json::from_value(pending.clone()).map_err(|e| {
            Error::External(format!(
                "kafka sink: checkpoint {} holds no transaction state ({e}): {pending}",
                epoch.unwrap_or_default()
            ))
        })?;
        self.settle(&p)
    }
}

impl Drop for KafkaSink {
    /// A transaction left open (the query failed) is aborted, so that `read_committed` readers are not
    /// held back until `transaction.timeout.ms`; a checkpoint that holds it writes its records again.
    fn drop(&mut self) {
        if let Some(t) = &self.txn
            && t.open.is_some()
            && t.marker.is_some()
        {
            let _ = self.producer.abort_transaction(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::generator::course_schema;
    use crate::format::{Format, LineDecoder};

    #[test]
    fn a_polls_records_are_joined_once_and_decode_as_records_do() {
        let payloads: [&[u8]; 5] = [
            br#"{"user_id":1,"course_id":2,"region":"eu","purchased":false,"event_time":"2026-01-01T00:00:00Z"}"#,
            b"",
            b"{\"user_id\":\n3}",
            br#"{"user_id":4,"course_id":2,"region":null,"purchased":true,"event_time":"2026-01-01T00:00:01Z"}"#,
            b"not json",
        ];
        let mut recs = Records::default();
        for (i, p) in payloads.iter().enumerate() {
            recs.push(100 + i as i64, p);
        }
        let view = recs.view();
        assert_eq!(
            view.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            [100, 101, 102, 103, 104]
        );
        assert_eq!(view.iter().map(|(_, p)| *p).collect::<Vec<_>>(), payloads);
        assert_eq!(
            recs.bytes,
            payloads.iter().flat_map(|p| [*p, b"\n"].concat()).collect::<Vec<u8>>()
        );
        assert_eq!(recs.last_offset(), Some(104));
        let decoder = LineDecoder::new(course_schema(), Format::Json);
        let joined = decoder.decode_joined(&recs.bytes, &view, "t/0").expect("decode");
        let one_by_one = decoder.decode_records(&view, "t/0").expect("decode");
        assert_eq!(joined.batch, one_by_one.batch);
        assert_eq!(joined.errors, one_by_one.errors);
        assert_eq!(joined.batch.map(|b| b.num_rows()), Some(2));
        let positions: Vec<_> = joined.errors.iter().map(|e| e.position.as_str()).collect();
        assert_eq!(positions, ["t/0@101", "t/0@102", "t/0@104"]);
    }

    fn piece(decoder: &LineDecoder, partition: i32, offsets: &[i64]) -> Piece {
        let mut records = Records::default();
        for &o in offsets {
            let line = if o % 7 == 3 {
                "not json".to_string()
            } else {
                format!(
                    r#"{{"user_id":{o},"course_id":{},"region":"eu","purchased":false,"event_time":"2026-01-01T00:00:{:02}Z"}}"#,
                    o % 5,
                    o % 60
                )
            };
            records.push(o, line.as_bytes());
        }
        let d = decoder
            .decode_joined(&records.bytes, &records.view(), &format!("t/{partition}"))
            .expect("decode");
        let newest = d.batch.as_ref().map_or(i64::MIN, |b| max_time(b, Some(4)));
        Piece {
            partition,
            records,
            batch: d.batch,
            bad: d.errors,
            newest,
        }
    }

    fn tracker(parts: &[(i32, i64, Option<i64>)]) -> Tracker {
        let opts = KafkaSourceOptions {
            brokers: "b".into(),
            topic: "t".into(),
            group_id: "g".into(),
            startup: Startup::Earliest,
            format: Format::Json,
            bounded: true,
            idle_timeout: Duration::from_secs(5),
            properties: vec![],
        };
        Tracker {
            opts,
            time_col: Some("event_time".into()),
            delay: 0,
            partitions: parts
                .iter()
                .map(|&(id, next, end)| {
                    (
                        id,
                        Partition {
                            next_offset: next,
                            end,
                            max_ts: i64::MIN,
                            last_seen: Instant::now(),
                            high: end,
                            high_checked: Instant::now(),
                            chunks: VecDeque::new(),
                        },
                    )
                })
                .collect(),
            polls: 0,
            resumed: None,
        }
    }

    /// A shared reader's poll holds records before a query's start and past its end: the query
    /// takes exactly its range, decoded as if it had read that range alone.
    #[test]
    fn a_query_takes_only_its_own_range_of_a_shared_poll() {
        let decoder = LineDecoder::new(course_schema(), Format::Json);
        // Partition 0: this query starts at 5 and ends at 12; partition 1: wholly its own; partition
        // 2: all before its start; offsets with gaps (transaction markers) in partition 0.
        let mut t = tracker(&[(0, 5, Some(12)), (1, 0, Some(100)), (2, 50, Some(100))]);
        let offsets0 = [0, 1, 2, 4, 6, 7, 9, 10, 11, 13, 14];
        let pieces = vec![
            piece(&decoder, 0, &offsets0),
            piece(&decoder, 1, &[0, 1, 2, 3]),
            piece(&decoder, 2, &[10, 11]),
        ];
        let (batch, bad) = t.take(&pieces, &decoder).expect("take").expect("rows");
        let alone0 = piece(&decoder, 0, &[6, 7, 9, 10, 11]);
        let alone1 = &pieces[1];
        let want = datafusion::arrow::compute::concat_batches(
            &course_schema(),
            [
                alone0.batch.as_ref().expect("rows"),
                alone1.batch.as_ref().expect("rows"),
            ],
        )
        .expect("concat");
        assert_eq!(batch, Some(want));
        let positions: Vec<_> = bad.iter().map(|b| b.position.as_str()).collect();
        assert_eq!(positions, ["t/0@10", "t/1@3"]);
        let starts = t.starts();
        assert_eq!(starts[&0], (12, Some(12)), "partition 0 read to its end");
        assert_eq!(starts[&1], (4, Some(100)));
        assert_eq!(starts[&2], (50, Some(100)), "nothing of partition 2 was this query's");
        assert_eq!(t.polls, 1);
        assert_eq!(t.partitions[&0].max_ts, alone0.newest);
        // The next poll: partition 0 is past its end, partition 2 still before the start.
        let pieces = vec![piece(&decoder, 0, &[15, 16]), piece(&decoder, 2, &[12, 13])];
        assert!(t.take(&pieces, &decoder).expect("take").is_none());
        assert_eq!(t.polls, 1, "a poll with nothing taken is not counted");
        // A range holding no record (a gap): nothing taken, nothing moved.
        let mut t = tracker(&[(0, 3, Some(4))]);
        assert!(
            t.take(&[piece(&decoder, 0, &[1, 2, 5])], &decoder)
                .expect("take")
                .is_none()
        );
        assert_eq!(t.starts()[&0], (3, Some(4)));
    }
}
