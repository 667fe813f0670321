//! `connector = 'kafka'`: a source reading every partition of a topic, and an append sink producing
//! JSON rows. librdkafka is bundled (rdkafka's default features).
//!
//! Source: partitions are assigned explicitly (one process reads them all; `startup = 'group'` resumes
//! from the consumer group's committed offsets). Offsets are never auto-committed: the engine calls
//! [`Source::commit`] after its sink committed, with the oldest event time still held in window state,
//! and only offsets whose records are all older than that are committed — so a restart re-reads
//! everything that open windows still need. Each partition has its own watermark; the source's is
//! the minimum over partitions that sent data within `idle_timeout_ms`. With `bounded = 'latest'`
//! the source stops at the end offsets it saw at start (used by tests and backfills).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::{Output, Poll, Sink, SinkMode, Source};
use crate::error::{Error, Result};
use crate::format::{Format, LineDecoder, to_json_lines};
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
const SINK_KEYS: &[&str] = &["connector", "bootstrap_servers", "topic", "key", "format"];

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

fn kafka_err(what: &str, e: KafkaError) -> Error {
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

pub struct KafkaSource {
    consumer: BaseConsumer,
    opts: KafkaSourceOptions,
    decoder: LineDecoder,
    time_idx: Option<usize>,
    delay: i64,
    partitions: BTreeMap<i32, Partition>,
    polls: u64,
    /// The query watermark stored with the committed offsets resumed from (`startup = 'group'`).
    resumed: Option<i64>,
    /// When a transient error was last reported (they are reported at most every 10 s).
    last_warning: Option<Instant>,
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

impl KafkaSource {
    pub fn open(def: &SourceDef) -> Result<Self> {
        let opts = KafkaSourceOptions::parse(&def.options, &def.name)?;
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &opts.brokers)
            .set("group.id", &opts.group_id)
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
            )
            // The engine takes records in bursts (a micro-batch at a time). With librdkafka's defaults
            // a full local queue (100 000 messages) pauses fetching for up to a second, which capped a
            // consumer at ~190 K records/s here; keep fetching instead (memory stays bounded by
            // queued.max.messages.kbytes, 64 MB).
            .set("queued.min.messages", "1000000")
            .set("fetch.queue.backoff.ms", "20");
        for (k, v) in &opts.properties {
            cfg.set(k, v);
        }
        let consumer: BaseConsumer = cfg.create().map_err(|e| kafka_err("creating the consumer", e))?;
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
        let mut tpl = TopicPartitionList::new();
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
            tpl.add_partition_offset(&opts.topic, p, Offset::Offset(start))
                .map_err(|e| kafka_err("assigning partitions", e))?;
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
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_err("assigning partitions", e))?;
        let (time_idx, delay) = match &def.watermark {
            Some(w) => (def.schema.index_of(&w.column).ok(), w.delay_ms),
            None => (None, 0),
        };
        Ok(KafkaSource {
            consumer,
            decoder: LineDecoder::new(def.schema.clone(), opts.format),
            opts,
            time_idx,
            delay,
            partitions,
            polls: 0,
            resumed,
            last_warning: None,
        })
    }

    /// For partitions silent for `idle_timeout_ms`, learn the broker's end offset (at most once per
    /// timeout), so that `watermark` can tell an idle partition from one that is behind.
    fn refresh_silent_partitions(&mut self) {
        let idle = self.opts.idle_timeout;
        for (id, p) in self.partitions.iter_mut() {
            if p.end.is_none() && p.last_seen.elapsed() >= idle && p.high_checked.elapsed() >= idle {
                p.high_checked = Instant::now();
                if let Ok((_, high)) = self
                    .consumer
                    .fetch_watermarks(&self.opts.topic, *id, Duration::from_secs(2))
                {
                    p.high = Some(high);
                }
            }
        }
    }

    fn done(&self) -> bool {
        self.partitions
            .values()
            .all(|p| p.end.is_some_and(|e| p.next_offset >= e))
    }
}

fn max_time(batch: &RecordBatch, idx: Option<usize>) -> i64 {
    idx.and_then(|i| batch.column(i).as_primitive_opt::<TimestampMillisecondType>().cloned())
        .and_then(|a| datafusion::arrow::compute::max(&a))
        .unwrap_or(i64::MIN)
}

impl Source for KafkaSource {
    fn poll(&mut self, max: usize) -> Result<Poll> {
        if self.done() {
            return Ok(Poll::Exhausted);
        }
        let mut records: BTreeMap<i32, Vec<(i64, Vec<u8>)>> = BTreeMap::new();
        let mut n = 0;
        let started = Instant::now();
        while n < max && started.elapsed() < Duration::from_millis(100) {
            let wait = if n == 0 {
                Duration::from_millis(50)
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                None => break,
                Some(Err(e)) if is_fatal(&e) => return Err(kafka_err("consuming", e)),
                Some(Err(e)) => {
                    // A broker down or restarting: librdkafka reconnects and refetches by itself;
                    // the query waits (its watermark holds) instead of failing.
                    if self.last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        eprintln!("kafka: {}: {e} (retrying)", self.opts.topic);
                        self.last_warning = Some(Instant::now());
                    }
                    break;
                }
                Some(Ok(m)) => {
                    let Some(part) = self.partitions.get(&m.partition()) else {
                        continue;
                    };
                    if part.end.is_some_and(|e| m.offset() >= e) {
                        continue;
                    }
                    records
                        .entry(m.partition())
                        .or_default()
                        .push((m.offset(), m.payload().unwrap_or_default().to_vec()));
                    n += 1;
                }
            }
        }
        self.refresh_silent_partitions();
        if n == 0 {
            return Ok(if self.done() { Poll::Exhausted } else { Poll::Pending });
        }
        self.polls += 1;
        let mut batches = Vec::new();
        let mut bad = Vec::new();
        for (p, recs) in records {
            let view: Vec<(i64, &[u8])> = recs.iter().map(|(o, r)| (*o, r.as_slice())).collect();
            let origin = format!("{}/{p}", self.opts.topic);
            let decoded = self.decoder.decode_records(&view, &origin)?;
            let newest = decoded
                .batch
                .as_ref()
                .map(|b| max_time(b, self.time_idx))
                .unwrap_or(i64::MIN);
            let last = recs.last().map(|(o, _)| *o).unwrap_or_default();
            if let Some(part) = self.partitions.get_mut(&p) {
                part.next_offset = last + 1;
                part.max_ts = part.max_ts.max(newest);
                part.last_seen = Instant::now();
                part.chunks.push_back((self.polls, last + 1, newest));
            }
            bad.extend(decoded.errors);
            batches.extend(decoded.batch);
        }
        let batch = match batches.len() {
            0 => None,
            1 => batches.pop(),
            _ => Some(datafusion::arrow::compute::concat_batches(
                &batches[0].schema(),
                batches.iter(),
            )?),
        };
        Ok(Poll::Ready(batch, bad))
    }

    fn bounded(&self) -> bool {
        self.opts.bounded
    }

    fn watermark(&self) -> Option<i64> {
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

    fn resumed_watermark(&self) -> Option<i64> {
        self.resumed
    }

    /// Per partition: the next offset to read, the newest event time seen (its watermark), and in
    /// bounded mode the offset to stop at.
    fn position(&self) -> Option<serde_json::Value> {
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
        Some(serde_json::json!({ "topic": self.opts.topic, "partitions": parts }))
    }

    fn seek(&mut self, position: &serde_json::Value) -> Result<()> {
        let bad = |why: &str| Error::External(format!("kafka source position {position}: {why}"));
        if position.get("topic").and_then(serde_json::Value::as_str) != Some(self.opts.topic.as_str()) {
            return Err(bad(&format!("not of topic '{}'", self.opts.topic)));
        }
        let parts = position
            .get("partitions")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| bad("no partitions"))?;
        let mut tpl = TopicPartitionList::new();
        for (id, p) in self.partitions.iter_mut() {
            // A partition added since the checkpoint is read from its start.
            if let Some(at) = parts.get(&id.to_string()) {
                let next = at
                    .get("next")
                    .and_then(serde_json::Value::as_i64)
                    .ok_or_else(|| bad("no 'next'"))?;
                let (low, _) = self
                    .consumer
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
            tpl.add_partition_offset(&self.opts.topic, *id, Offset::Offset(p.next_offset))
                .map_err(|e| kafka_err("seeking", e))?;
        }
        self.consumer.assign(&tpl).map_err(|e| kafka_err("seeking", e))?;
        // The checkpoint, not the group's commits, says where this query is.
        self.resumed = None;
        Ok(())
    }

    fn partitioned(&self) -> bool {
        true
    }

    fn commit(&mut self, safe_ts: i64, polls: u64, watermark: i64) -> Result<()> {
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
            self.consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| kafka_err("committing offsets", e))?;
        }
        Ok(())
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

pub struct KafkaSink {
    producer: BaseProducer<DeliveryErrors>,
    topic: String,
    key_cols: Vec<usize>,
    /// Each row with its kind in an `op` field (`format = 'changelog'`).
    changelog: bool,
    /// Debezium-style JSON (`format = 'debezium-json'`).
    debezium: bool,
}

impl KafkaSink {
    pub fn validate(o: &Options) -> Result<()> {
        check_keys(o, "connector 'kafka' (sink)", SINK_KEYS)?;
        o.required("bootstrap_servers", "connector 'kafka'")?;
        o.required("topic", "connector 'kafka'")?;
        super::json_only(o)
    }

    pub fn open(o: &Options, schema: SchemaRef) -> Result<Self> {
        Self::validate(o)?;
        let props = check_keys(o, "connector 'kafka' (sink)", SINK_KEYS)?;
        let mut key_cols = Vec::new();
        for k in o
            .get("key")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            let i = schema.index_of(k).map_err(|_| {
                Error::option(
                    "key",
                    format!("no column '{k}' in the query's output ({})", field_names(&schema)),
                )
            })?;
            key_cols.push(i);
        }
        Ok(KafkaSink {
            producer: producer(o.required("bootstrap_servers", "connector 'kafka'")?, &props)?,
            topic: o.required("topic", "connector 'kafka'")?.to_string(),
            key_cols,
            changelog: o.get("format") == Some("changelog"),
            debezium: o.get("format") == Some("debezium-json"),
        })
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
        let b = &out.batch;
        let json = if self.debezium {
            out.to_debezium_json()?
        } else if self.changelog || !out.inserts_only() {
            to_json_lines(&out.with_op_column()?)?
        } else {
            to_json_lines(b)?
        };
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
            send(&self.producer, &self.topic, key.as_deref(), line)?;
        }
        self.producer.poll(Duration::ZERO);
        delivery_errors(&self.producer)
    }

    fn commit(&mut self) -> Result<()> {
        flush(&self.producer)
    }
}
