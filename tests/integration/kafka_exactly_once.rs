//! The Kafka sink's delivery guarantees against a real broker (`scripts/services start`), driven
//! through the engine's two-phase epoch protocol (`Sink::recover` / `prepare` / `publish`) by hand so
//! that every crash window can be hit exactly. A crash is the sink dropped (the query failed: the
//! open transaction is aborted) or forgotten (`kill -9`: the producer lives on as a zombie with its
//! transaction open). Under `CI=true` a missing Kafka fails these tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::Int64Array;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use freshet::connector::kafka::{self, DeliveryGuarantee, KafkaSink, KafkaSinkOptions};
use freshet::connector::{Output, Sink};
use freshet::sql::parser::Options;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;

use crate::support::{service_up, unique};

const KAFKA: &str = "127.0.0.1:9092";
const PARTITIONS: i32 = 3;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

fn rows(range: std::ops::RangeInclusive<i64>) -> Output {
    let batch = RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from_iter_values(range))]).expect("batch");
    Output::append(batch)
}

fn options(topic: &str, extra: &[(&str, &str)]) -> Options {
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("connector", "kafka"),
        ("bootstrap_servers", KAFKA),
        ("topic", topic),
        ("key", "n"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        m.insert(k.to_string(), v.to_string());
    }
    Options(m)
}

fn sink(topic: &str, extra: &[(&str, &str)]) -> KafkaSink {
    KafkaSink::open(&options(topic, extra), schema()).expect("open sink")
}

async fn topic(prefix: &str) -> String {
    let t = unique(prefix);
    kafka::ensure_topic(KAFKA, &t, PARTITIONS).await.expect("topic");
    t
}

/// Every value of `n` in the topic, sorted, as a consumer with `isolation.level = isolation` sees
/// them (read from the start until nothing new arrives for 1.5 s).
fn read(topic: &str, isolation: &str) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(1_500) {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            let v: Value = serde_json::from_slice(m.payload().expect("payload")).expect("json");
            out.push(v["n"].as_i64().expect("n"));
            quiet = Instant::now();
        }
    }
    out.sort();
    out
}

fn committed(topic: &str) -> Vec<i64> {
    read(topic, "read_committed")
}

fn seq(ranges: &[std::ops::RangeInclusive<i64>]) -> Vec<i64> {
    let mut v: Vec<i64> = ranges.iter().cloned().flatten().collect();
    v.sort();
    v
}

/// One epoch: rows written, prepared (the returned value is what the checkpoint stores).
fn epoch(s: &mut KafkaSink, e: u64, r: std::ops::RangeInclusive<i64>) -> Value {
    s.write(&rows(r)).expect("write");
    s.prepare(e).expect("prepare")
}

#[test]
fn sink_options() {
    let o = KafkaSinkOptions::parse(&options("out", &[])).expect("defaults");
    assert_eq!(o.guarantee, DeliveryGuarantee::ExactlyOnce);
    assert_eq!(o.transactional_id.as_deref(), Some("freshet-sink-out"));
    let o = KafkaSinkOptions::parse(&options(
        "out",
        &[("properties.transactional.id", "q1-out"), ("properties.linger.ms", "1")],
    ))
    .expect("own id");
    assert_eq!(o.transactional_id.as_deref(), Some("q1-out"));
    assert_eq!(o.properties, vec![("linger.ms".to_string(), "1".to_string())]);
    let o = KafkaSinkOptions::parse(&options("out", &[("sink.delivery-guarantee", "at-least-once")])).expect("alo");
    assert_eq!(o.guarantee, DeliveryGuarantee::AtLeastOnce);
    assert_eq!(o.transactional_id, None);
    let e = KafkaSinkOptions::parse(&options("out", &[("sink.delivery-guarantee", "none")]))
        .expect_err("unknown guarantee")
        .to_string();
    assert!(
        e.contains("sink.delivery-guarantee") && e.contains("exactly-once"),
        "{e}"
    );
    let e = KafkaSinkOptions::parse(&options(
        "out",
        &[
            ("sink.delivery-guarantee", "at-least-once"),
            ("properties.transactional.id", "x"),
        ],
    ))
    .expect_err("id without transactions")
    .to_string();
    assert!(e.contains("transactional.id"), "{e}");
}

/// (1) An epoch prepared but never checkpointed nor published, then a crash: a read_committed
/// reader never sees its rows; the epochs after the recovery are seen exactly once. Also: a crash
/// after a publish (before the next checkpoint) writes nothing again.
#[tokio::test]
async fn unpublished_epoch_stays_invisible_after_a_crash() {
    if !service_up("Kafka", KAFKA) {
        return;
    }
    let t = topic("eos_unpublished").await;
    let mut s = sink(&t, &[]);
    s.recover(None, &Value::Null).expect("recover");
    let p1 = epoch(&mut s, 1, 1..=10);
    assert_eq!(committed(&t), Vec::<i64>::new(), "prepared rows are not visible");
    s.publish(1).expect("publish");
    assert_eq!(committed(&t), seq(&[1..=10]));
    assert!(p1["txn"].as_u64().is_some(), "{p1}");

    // Epoch 2 is prepared; the query fails before its checkpoint is written (the sink is dropped).
    let _ = epoch(&mut s, 2, 11..=20);
    drop(s);
    let mut s = sink(&t, &[]);
    s.recover(Some(1), &p1).expect("recover from checkpoint 1");
    assert_eq!(committed(&t), seq(&[1..=10]), "epoch 2 was never published");
    // The engine replays from checkpoint 1: epoch 2 again (here other rows, to tell them apart).
    let p2 = epoch(&mut s, 2, 21..=30);
    s.publish(2).expect("publish");
    assert_eq!(committed(&t), seq(&[1..=10, 21..=30]));

    // kill -9 during epoch 3 (prepared, no checkpoint): the producer stays alive as a zombie with
    // its transaction open, which holds read_committed readers back until a restart fences it.
    let _ = epoch(&mut s, 3, 31..=40);
    std::mem::forget(s);
    // Checkpoint 2 was published before the crash: recovering from it writes nothing again.
    let mut s = sink(&t, &[]);
    s.recover(Some(2), &p2).expect("recover from checkpoint 2");
    assert_eq!(committed(&t), seq(&[1..=10, 21..=30]));
    let _ = epoch(&mut s, 3, 41..=50);
    s.publish(3).expect("publish");
    assert_eq!(committed(&t), seq(&[1..=10, 21..=30, 41..=50]));
}

/// (2) The crash window between the checkpoint and the publish: the checkpoint holds epoch 2, whose
/// transaction Kafka aborts at the restart. Recovery writes its records again: each row is seen
/// exactly once — also when recovery itself is repeated, and with another producer writing to the
/// same partitions in between. The old producer, if still alive, is fenced.
#[tokio::test]
async fn crash_between_checkpoint_and_publish_loses_nothing() {
    if !service_up("Kafka", KAFKA) {
        return;
    }
    let t = topic("eos_window").await;
    let mut s = sink(&t, &[]);
    s.recover(None, &Value::Null).expect("recover");
    let _ = epoch(&mut s, 1, 1..=10);
    s.publish(1).expect("publish");
    s.write(&rows(11..=20)).expect("write");
    // Someone else writes to the same partitions while the transaction is open.
    let other = kafka::producer(KAFKA, &[]).expect("producer");
    for n in 1000..1010 {
        let line = format!("{{\"n\":{n}}}");
        kafka::send(&other, &t, Some(n.to_string().as_bytes()), line.as_bytes()).expect("send");
    }
    kafka::flush(&other).expect("flush");
    let p2 = epoch(&mut s, 2, 21..=25);
    assert!(
        p2["records"].as_object().is_some_and(|r| !r.is_empty()),
        "the checkpoint says where the records are: {p2}"
    );
    // Checkpoint 2 is written; the process dies before `publish(2)` — but the old producer is not
    // dead yet (a zombie): the restart must fence it.
    let mut zombie = s;
    let mut s = sink(&t, &[]);
    s.recover(Some(2), &p2).expect("recover from checkpoint 2");
    let want = seq(&[1..=25, 1000..=1009]);
    assert_eq!(committed(&t), want, "epoch 2 written again, once");
    let fenced = zombie.publish(2);
    assert!(fenced.is_err(), "the zombie cannot commit any more");
    drop(zombie);
    assert_eq!(committed(&t), want);

    // The restarted query dies again before its next checkpoint: recovering from checkpoint 2 once
    // more finds epoch 2 committed and writes nothing.
    drop(s);
    let mut s = sink(&t, &[]);
    s.recover(Some(2), &p2).expect("recover again");
    assert_eq!(committed(&t), want);
    let _ = epoch(&mut s, 3, 26..=30);
    s.publish(3).expect("publish");
    assert_eq!(committed(&t), seq(&[1..=30, 1000..=1009]));

    // A kill -9 in the same window (no zombie left to abort anything, a checkpoint with two epochs'
    // rows in one transaction because checkpoint 4 failed) is recovered the same way.
    let _ = epoch(&mut s, 4, 31..=35);
    let p5 = epoch(&mut s, 5, 36..=40);
    std::mem::forget(s);
    let mut s = sink(&t, &[]);
    s.recover(Some(5), &p5).expect("recover from checkpoint 5");
    assert_eq!(committed(&t), seq(&[1..=40, 1000..=1009]));
    drop(s);
}

/// (3) `'sink.delivery-guarantee' = 'at-least-once'`: no transactions — rows are visible once
/// flushed, and a replay after a crash writes them again.
#[tokio::test]
async fn at_least_once_writes_without_transactions() {
    if !service_up("Kafka", KAFKA) {
        return;
    }
    let t = topic("eos_alo").await;
    let alo = [("sink.delivery-guarantee", "at-least-once")];
    let mut s = sink(&t, &alo);
    assert_eq!(s.guarantee(), DeliveryGuarantee::AtLeastOnce);
    s.recover(None, &Value::Null).expect("recover");
    let p1 = epoch(&mut s, 1, 1..=10);
    assert_eq!(p1, Value::Null);
    assert_eq!(
        committed(&t),
        seq(&[1..=10]),
        "visible once flushed, before the publish"
    );
    s.publish(1).expect("publish");
    let _ = epoch(&mut s, 2, 11..=20);
    drop(s);
    // Replayed from checkpoint 1: epoch 2's rows arrive twice.
    let mut s = sink(&t, &alo);
    s.recover(Some(1), &p1).expect("recover");
    let _ = epoch(&mut s, 2, 11..=20);
    s.publish(2).expect("publish");
    assert_eq!(committed(&t), seq(&[1..=20, 11..=20]));
    assert_eq!(read(&t, "read_uncommitted"), seq(&[1..=20, 11..=20]));
}

/// (4) A reader with `isolation.level = read_uncommitted` (Kafka's Java default, so Flink's unless
/// set) sees the rows of aborted transactions: those of an epoch never published, and the first copy
/// of an epoch written again by recovery.
#[tokio::test]
async fn read_uncommitted_readers_see_aborted_rows() {
    if !service_up("Kafka", KAFKA) {
        return;
    }
    let t = topic("eos_uncommitted").await;
    let mut s = sink(&t, &[]);
    s.recover(None, &Value::Null).expect("recover");
    let p1 = epoch(&mut s, 1, 1..=5);
    s.publish(1).expect("publish");
    let _ = epoch(&mut s, 2, 6..=10);
    drop(s); // epoch 2 never checkpointed: aborted
    let mut s = sink(&t, &[]);
    s.recover(Some(1), &p1).expect("recover");
    let p2 = epoch(&mut s, 2, 11..=15);
    std::mem::forget(s); // checkpoint 2 written, not published
    let mut s = sink(&t, &[]);
    s.recover(Some(2), &p2).expect("recover");
    drop(s);
    assert_eq!(committed(&t), seq(&[1..=5, 11..=15]));
    assert_eq!(
        read(&t, "read_uncommitted"),
        seq(&[1..=5, 6..=10, 11..=15, 11..=15]),
        "aborted rows, and the aborted first copy of epoch 2, are visible to read_uncommitted"
    );
}

// ------------------------------------------------------------------------ through `freshet run`

const EVENTS: u64 = 200_000;
/// The kill test's job: long enough that no killed run reaches its end (a kill while a finished
/// query removes its checkpoints is a hazard of the checkpoint store, not of this sink).
const KILLED_EVENTS: u64 = 1_000_000;
const SEED: u64 = 11;

/// A windowed count per course and second into a Kafka sink (rows in every epoch), checkpointed every
/// 0.1 s.
fn job(topic: &str, events: u64) -> String {
    format!(
        "CREATE SOURCE views ({})
           WITH (connector = 'generator', events = '{events}', seed = '{SEED}');
         CREATE SINK per_minute WITH (connector = 'kafka', bootstrap_servers = '{KAFKA}', topic = '{topic}',
                                      key = 'course_id') AS
         SELECT course_id, window_start, COUNT(*) AS views
         FROM TABLE(TUMBLE(TABLE views, DESCRIPTOR(event_time), INTERVAL '1' SECOND))
         GROUP BY course_id, window_start, window_end;",
        crate::support::COURSE_COLUMNS
    )
}

fn start(dir: &std::path::Path, failpoints: Option<&str>) -> std::process::Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_freshet"));
    if let Some(f) = failpoints {
        cmd.env("FAILPOINTS", f);
    }
    cmd.current_dir(dir)
        .args([
            "run",
            "job.sql",
            "--checkpoint-dir",
            "chk",
            "--checkpoint-interval",
            "0.1",
            "--batch-size",
            "500",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start freshet")
}

/// The newest checkpoint epoch under `chk` (0: none).
fn newest_checkpoint(chk: &std::path::Path) -> u64 {
    let Ok(queries) = std::fs::read_dir(chk) else {
        return 0;
    };
    queries
        .filter_map(|q| q.ok())
        .filter_map(|q| std::fs::read_dir(q.path()).ok())
        .flatten()
        .filter_map(|c| c.ok())
        .filter_map(|c| c.file_name().to_str()?.strip_prefix("chk-")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// The job's rows in the topic as `course_id|window_start|views`, sorted, read with `isolation`.
fn job_rows(topic: &str, isolation: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(1_500) {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let v: Value = serde_json::from_slice(m.expect("consume").payload().expect("payload")).expect("json");
            out.push(format!(
                "{}|{}|{}",
                v["course_id"],
                v["window_start"].as_str().expect("window_start"),
                v["views"]
            ));
            quiet = Instant::now();
        }
    }
    out.sort();
    out
}

async fn batch_answer(events: u64) -> Vec<String> {
    let oracle = crate::support::oracle_ctx(&crate::support::gen_opts(events, SEED), "ev");
    crate::support::batch_rows(
        &oracle,
        "SELECT course_id, date_bin(INTERVAL '1 second', event_time, TIMESTAMP '1970-01-01'), COUNT(*)
         FROM ev GROUP BY 1, 2",
    )
    .await
}

/// (2), through the engine: the process dies (abort, as `kill -9`: no destructor aborts anything)
/// right after checkpoint 4 is written, before its publish. The run after it writes epoch 4's rows
/// again; a read_committed reader then holds exactly the batch answer, a read_uncommitted one sees
/// epoch 4's first copy too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshet_run_crashing_before_publish_leaves_the_topic_exact() {
    if !service_up("Kafka", KAFKA) {
        return;
    }
    let t = topic("eos_run_crash").await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("job.sql"), job(&t, EVENTS)).expect("write");
    let crashed = start(dir.path(), Some("checkpoint-before-publish=3*off->return"))
        .wait_with_output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert!(
        !crashed.status.success() && stderr.contains("crash point checkpoint-before-publish"),
        "the run did not crash before publishing: {stderr}"
    );
    let out = start(dir.path(), None).wait_with_output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming from checkpoint 4"), "{stderr}");
    assert!(stderr.contains("were written again and committed"), "{stderr}");
    let want = batch_answer(EVENTS).await;
    let got = job_rows(&t, "read_committed");
    crate::support::assert_rows_eq(&got, &want, "read_committed after a crash before publish");
    let uncommitted = job_rows(&t, "read_uncommitted");
    assert!(
        uncommitted.len() > got.len(),
        "read_uncommitted also sees the aborted first copy of epoch 4 ({} rows, {} committed)",
        uncommitted.len(),
        got.len()
    );
}

/// SIGKILLs at different points of an epoch (writing, preparing, between checkpoint and publish),
/// then a run to the end: a read_committed reader holds exactly the batch answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshet_run_killed_again_and_again_leaves_the_topic_exact() {
    if !service_up("Kafka", KAFKA) {
        return;
    }
    let t = topic("eos_run_kills").await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("job.sql"), job(&t, KILLED_EVENTS)).expect("write");
    let chk = dir.path().join("chk");
    let mut kills = 0;
    let mut finished = None;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let wait = x % 150;
        let mut child = crate::support::KillOnDrop::new(start(dir.path(), None));
        let before = newest_checkpoint(&chk);
        let deadline = Instant::now() + Duration::from_secs(120);
        while newest_checkpoint(&chk) == before && child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "no checkpoint within 120 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(wait));
        if child.try_wait().expect("wait").is_none() {
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            kills += 1;
        } else {
            finished = Some(child.into_inner().wait_with_output().expect("output"));
            break;
        }
    }
    let out = match finished {
        Some(out) => out,
        None => start(dir.path(), None).wait_with_output().expect("final run"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        kills, 8,
        "a run finished before it could be killed: make the job longer"
    );
    assert!(stderr.contains("resuming from checkpoint"), "{stderr}");
    let got = job_rows(&t, "read_committed");
    crate::support::assert_rows_eq(
        &got,
        &batch_answer(KILLED_EVENTS).await,
        "read_committed after SIGKILLs",
    );
}

/// A transaction open longer than `transaction.timeout.ms` (a checkpoint interval longer than it,
/// or checkpoints failing for that long) is aborted by Kafka, which then reports the producer as
/// fenced — as it would a zombie, so the sink cannot go on by itself: the publish fails and says
/// why; the restart from the checkpoint writes the epoch again, once.
#[tokio::test]
async fn a_transaction_kafka_expired_fails_the_publish_and_the_restart_restores_it() {
    if !service_up("Kafka", KAFKA) {
        return;
    }
    let t = topic("eos_expired").await;
    let short = [("properties.transaction.timeout.ms", "2000")];
    let mut s = sink(&t, &short);
    s.recover(None, &Value::Null).expect("recover");
    let _ = epoch(&mut s, 1, 1..=10);
    s.publish(1).expect("publish");
    let p2 = epoch(&mut s, 2, 11..=20);
    // The broker looks for expired transactions every 10 s
    // (transaction.abort.timed.out.transaction.cleanup.interval.ms).
    std::thread::sleep(Duration::from_secs(13));
    let e = s.publish(2).expect_err("the transaction expired").to_string();
    assert!(e.contains("transaction.timeout.ms"), "{e}");
    drop(s);
    assert_eq!(committed(&t), seq(&[1..=10]));
    let mut s = sink(&t, &short);
    s.recover(Some(2), &p2).expect("recover from checkpoint 2");
    assert_eq!(committed(&t), seq(&[1..=20]));
    let _ = epoch(&mut s, 3, 21..=30);
    s.publish(3).expect("publish");
    assert_eq!(committed(&t), seq(&[1..=30]));
}

/// Two sinks sharing a `transactional.id` (two queries writing one topic with the default id) fence
/// each other; the one recovering then finds the commit marker written by the other, cannot tell
/// whether its checkpoint's transaction committed, and refuses instead of guessing.
#[tokio::test]
async fn a_transactional_id_shared_by_two_sinks_is_refused_at_recovery() {
    if !service_up("Kafka", KAFKA) {
        return;
    }
    let t = topic("eos_shared").await;
    let mut a = sink(&t, &[]);
    a.recover(None, &Value::Null).expect("recover");
    let _ = epoch(&mut a, 1, 1..=5);
    a.publish(1).expect("publish");
    let pa2 = epoch(&mut a, 2, 6..=10);
    std::mem::forget(a); // checkpoint 2 written, then a crash
    let mut b = sink(&t, &[]); // another query, same topic, same default transactional.id
    b.recover(None, &Value::Null).expect("recover");
    let _ = epoch(&mut b, 1, 100..=105);
    b.publish(1).expect("publish");
    let mut a = sink(&t, &[]);
    let e = a.recover(Some(2), &pa2).expect_err("ambiguous marker").to_string();
    assert!(e.contains("two sinks use this transactional.id"), "{e}");
}
