//! Stopping and restarting a continuous query that reads real Kafka with `startup = 'group'`: the
//! restarted query re-reads what was not committed (offsets are committed only behind the oldest event
//! still held in window state), yet every row the append sink gets across both runs is a
//! window's complete count — never a second, partial row for a window emitted before the stop. Under
//! `CI=true` or `FRESHET_REQUIRE_SERVICES=1` an unreachable Kafka fails the test.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use freshet::connector::generator::{CourseGenerator, EPOCH_2026_MS, Rng};
use freshet::connector::kafka;
use freshet::engine::query::{EngineConfig, Metrics};
use freshet::session::Session;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::support::*;

const KAFKA: &str = "127.0.0.1:9092";
const EVENTS: usize = 6_000;
const PARTITIONS: i32 = 3;
/// 80 ms of event time per event: 6 000 events span 8 minutes, so eight 1-minute windows per course.
const STEP_MS: i64 = 80;
/// Each event is pulled back by up to this much: disorder well within the 5 s watermark delay, so the
/// streaming result must equal the batch result.
const JITTER_MS: u64 = 2_000;
const COURSES: i64 = 6;
const MINUTE_MS: i64 = 60_000;

struct Event {
    /// The JSON record.
    payload: String,
    /// The record key: the user, so every partition gets times from the whole span, interleaved.
    key: String,
    course_id: i64,
    time: i64,
}

/// The generator's users and courses (folded onto a few courses, so each window counts ~125 views)
/// with event time spread over several minutes.
fn events() -> Vec<Event> {
    let mut g = CourseGenerator::new(gen_opts(EVENTS as u64, 41), EPOCH_2026_MS);
    let mut rng = Rng::new(41);
    let mut out = Vec::with_capacity(EVENTS);
    let mut i: i64 = 0;
    while let Some(mut e) = g.next_event() {
        e.course_id = 1 + e.course_id % COURSES;
        e.event_time_ms = EPOCH_2026_MS + 1_000 + i * STEP_MS - rng.below(JITTER_MS) as i64;
        let mut line = String::new();
        e.write_json(&mut line);
        out.push(Event {
            payload: line.trim_end().to_string(),
            key: e.user_id.to_string(),
            course_id: e.course_id,
            time: e.event_time_ms,
        });
        i += 1;
    }
    out
}

/// The batch result: the count per course and minute, as `course|window_start|count`.
async fn oracle(events: &[Event]) -> Vec<String> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("course_id", DataType::Int64, false),
        Field::new("event_time", DataType::Timestamp(TimeUnit::Millisecond, None), false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.course_id))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                events.iter().map(|e| e.time),
            )),
        ],
    )
    .expect("batch");
    let ctx = SessionContext::new();
    ctx.register_table(
        "ev",
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("memtable")),
    )
    .expect("register");
    batch_rows(
        &ctx,
        "SELECT course_id, date_bin(INTERVAL '1 minute', event_time, TIMESTAMP '1970-01-01'), COUNT(*)
         FROM ev GROUP BY 1, 2",
    )
    .await
}

/// The sink's JSON lines read back, in file order, as `course|window_start|views`.
fn output_rows(path: &std::path::Path) -> Vec<String> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("course_id", DataType::Int64, true),
        Field::new("window_start", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("views", DataType::Int64, true),
    ]));
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let reader = datafusion::arrow::json::ReaderBuilder::new(schema)
        .build(std::io::BufReader::new(file))
        .expect("json reader");
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("sink output is JSON lines");
    // `sorted_rows` sorts; file order does not matter for the checks.
    sorted_rows(&batches)
}

/// A consumer of the query's group that only reads what the group committed (it joins nothing and
/// commits nothing).
fn group_reader(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// The group's committed offsets per partition and the newest watermark stored with them.
fn committed(c: &BaseConsumer, topic: &str) -> (BTreeMap<i32, i64>, Option<i64>) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(15))
        .expect("committed offsets");
    let mut offsets = BTreeMap::new();
    let mut watermark = None;
    for e in got.elements() {
        if let Offset::Offset(o) = e.offset() {
            offsets.insert(e.partition(), o);
        }
        if let Some(w) = e
            .metadata()
            .strip_prefix("freshet.watermark=")
            .and_then(|w| w.parse::<i64>().ok())
        {
            watermark = Some(watermark.map_or(w, |m: i64| m.max(w)));
        }
    }
    (offsets, watermark)
}

/// Event times of the records from `from` (per partition) to the end of the topic: what a restart
/// with `startup = 'group'` reads. A separate consumer that never commits.
fn uncommitted_times(topic: &str, from: &BTreeMap<i32, i64>, time_of: &HashMap<&str, i64>) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", format!("{topic}-inspect"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut left = 0;
    for p in 0..PARTITIONS {
        let (low, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(15))
            .expect("watermarks");
        let start = from.get(&p).copied().unwrap_or(low);
        left += (high - start).max(0);
        tpl.add_partition_offset(topic, p, Offset::Offset(start))
            .expect("assign");
    }
    c.assign(&tpl).expect("assign");
    let mut times = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (times.len() as i64) < left {
        assert!(Instant::now() < deadline, "reading the uncommitted records timed out");
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            let payload = std::str::from_utf8(m.payload().unwrap_or_default()).expect("utf8");
            times.push(*time_of.get(payload).expect("a record the test produced"));
        }
    }
    times
}

/// The query. Run 1 reads the topic as it grows; run 2 stops at the end offsets it saw at start
/// (`bounded = 'latest'`), and a source's end closes every window.
fn sql(topic: &str, out: &std::path::Path, bounded: &str) -> String {
    format!(
        "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{KAFKA}', topic = '{topic}',
           group_id = '{topic}-g', startup = 'group', bounded = '{bounded}');
         CREATE SINK counts WITH (connector = 'file', path = '{}') AS
         SELECT course_id, window_start, COUNT(*) AS views FROM TUMBLE(ev, event_time, INTERVAL '1' MINUTE)
         GROUP BY course_id, window_start, window_end;",
        out.display()
    )
}

fn engine() -> Session {
    // Small micro-batches, so that many of them straddle a minute; no periodic commit within the test,
    // so the only commit of run 1 is the one its stop makes.
    Session::new(EngineConfig {
        batch_size: 100,
        commit_interval: Duration::from_secs(600),
        ..EngineConfig::default()
    })
}

fn produce(topic: &str, events: &[Event]) {
    let p = kafka::producer(KAFKA, &[]).expect("producer");
    for e in events {
        kafka::send(&p, topic, Some(e.key.as_bytes()), e.payload.as_bytes()).expect("send");
    }
    kafka::flush(&p).expect("flush");
}

#[tokio::test]
async fn stop_and_restart_with_group_offsets_emits_each_window_whole() {
    if !service_up("Kafka", KAFKA) {
        return;
    }
    let t0 = Instant::now();
    let topic = unique("restart");
    let events = events();
    let want = oracle(&events).await;
    kafka::ensure_topic(KAFKA, &topic, PARTITIONS).await.expect("topic");
    // 70% of the events first: run 1 is stopped within them, however fast it reads.
    let (early, rest) = events.split_at(EVENTS * 7 / 10);
    produce(&topic, early);
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("counts.jsonl");

    // Run 1: stop once 40% of all events went through the query; the stop commits the sink, then the
    // offsets with the query watermark.
    let group = group_reader(&format!("{topic}-g"));
    let mut s = engine();
    exec(&mut s, &sql(&topic, &out, "none")).await;
    let metrics = s.queries[0].metrics.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    // 40% read, and the watermark two minutes in: windows were emitted (which the restart must not emit
    // again from part of their rows) and window state has moved on, so the stop has offsets to commit.
    let first_time = events.iter().map(|e| e.time).min().unwrap_or_default();
    let watermark = |m: &Metrics| m.watermark.load(std::sync::atomic::Ordering::Relaxed);
    while Metrics::get(&metrics.rows_in) < (EVENTS * 2 / 5) as u64 || watermark(&metrics) < first_time + 2 * MINUTE_MS {
        assert!(
            Instant::now() < deadline,
            "run 1 read only {} rows and emitted {}",
            Metrics::get(&metrics.rows_in),
            Metrics::get(&metrics.rows_out)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(committed(&group, &topic).1, None, "nothing committed before the stop");
    s.stop_all().await;
    let stop_watermark = metrics.watermark.load(std::sync::atomic::Ordering::Relaxed);
    let first = match &s.queries[0].outcome {
        Some(Ok(r)) => r.clone(),
        other => panic!("run 1: {other:?}"),
    };
    drop(s);
    let run1_rows = output_rows(&out);
    assert!(
        !run1_rows.is_empty(),
        "run 1 emitted the windows it closed: {first:?}, watermark {stop_watermark}"
    );
    produce(&topic, rest);

    // What run 1 committed, and what a restart will read again.
    let (offsets, floor) = committed(&group, &topic);
    drop(group);
    let floor = floor.unwrap_or_else(|| {
        panic!("the stop committed offsets with the query watermark in their metadata: offsets {offsets:?}")
    });
    assert_eq!(
        floor, stop_watermark,
        "the stop's own commit stored the watermark the query stopped at"
    );
    let resumed_at: i64 = offsets.values().sum();
    assert!(
        resumed_at > 0 && resumed_at < first.rows_in as i64,
        "the commit is part-way and behind what run 1 read ({} rows): {offsets:?}",
        first.rows_in
    );
    let time_of: HashMap<&str, i64> = events.iter().map(|e| (e.payload.as_str(), e.time)).collect();
    let again = uncommitted_times(&topic, &offsets, &time_of);
    // Rows of windows that run 1 emitted (ending at or before the stored watermark) that the restart
    // reads again: without the emit floor they would come out as second, partial rows.
    let emitted_again = again
        .iter()
        .filter(|t| *t - t.rem_euclid(MINUTE_MS) + MINUTE_MS <= floor)
        .count();
    assert!(
        emitted_again > 0,
        "the restart re-reads rows of windows emitted before the stop (the case under test); floor {}",
        freshet::time::format_ms(floor)
    );

    // Run 2: the same query in a new session, the same group: resumes from the committed offsets and
    // runs to the end of the topic, which closes every window.
    let mut s = engine();
    exec(&mut s, &sql(&topic, &out, "latest")).await;
    crate::support::finish_within(&mut s, std::time::Duration::from_secs(300)).await;
    let second = match &s.queries[0].outcome {
        Some(Ok(r)) => r.clone(),
        other => panic!("run 2: {other:?}"),
    };
    assert_eq!(
        second.rows_in as usize,
        again.len(),
        "run 2 reads from the committed offsets"
    );
    assert_eq!((first.late, second.late, first.errors, second.errors), (0, 0, 0, 0));
    let all = output_rows(&out);

    // Every emitted row, by (course, window_start), against the oracle.
    let oracle: BTreeMap<(String, String), String> = want
        .iter()
        .map(|r| {
            let mut f = r.split('|').map(str::to_string);
            let (c, w, n) = (f.next().expect("c"), f.next().expect("w"), f.next().expect("n"));
            ((c, w), n)
        })
        .collect();
    let mut got: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in &all {
        let mut f = r.split('|').map(str::to_string);
        let (c, w, n) = (f.next().expect("c"), f.next().expect("w"), f.next().expect("n"));
        got.entry((c, w)).or_default().push(n);
    }
    let missing: Vec<_> = oracle.keys().filter(|k| !got.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "every window of the oracle is emitted; missing: {missing:?}"
    );
    let wrong: Vec<String> = got
        .iter()
        .flat_map(|(k, ns)| {
            let want = oracle.get(k);
            ns.iter()
                .filter(move |n| want != Some(*n))
                .map(move |n| format!("{}|{}: emitted {n}, oracle {want:?}", k.0, k.1))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "every emitted row is its window's whole count; {} are not (first 10): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    // Rows are equal to the oracle, so a window emitted twice was emitted identically.
    let duplicates = all.len() - got.len();
    eprintln!(
        "restart: {} windows; run 1 read {} rows, emitted {} rows, stopped at watermark {}; committed \
         {resumed_at} offsets {offsets:?} with watermark {}; run 2 read {} rows ({} of them again, {emitted_again} of \
         windows already emitted) and emitted {} rows; {duplicates} identical duplicate rows; {:.1?}",
        oracle.len(),
        first.rows_in,
        run1_rows.len(),
        freshet::time::format_ms(stop_watermark),
        freshet::time::format_ms(floor),
        second.rows_in,
        first.rows_in as usize + second.rows_in as usize - EVENTS,
        all.len() - run1_rows.len(),
        t0.elapsed()
    );
}
