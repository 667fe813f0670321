//! The collector's faults (issue 5, "Bad input and faults"), through the real `freshet collect` binary and
//! real Kafka: `kill -9` mid-stream, a Kafka outage (a private broker on its own ports, started and stopped
//! by `scripts/services`), bad input routed to a dead-letter topic, and a full disk channel.
//!
//! Every event body starts with a unique id, `{"n":ID,...}`; what reached Kafka is counted by that id, never
//! by offsets. Like `services.rs`, a Kafka that is not reachable fails these tests under `CI=true` or
//! `FRESHET_REQUIRE_SERVICES=1` and skips them otherwise. The tests take a lock so they run one at a time:
//! they time faults against the agent's progress, which two agents and a JVM on two cores would blur.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use freshet::connector::kafka;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::{service_up, services_required, unique};

const KAFKA: &str = "127.0.0.1:9092";

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Poll `done` every 50 ms until it holds; fail with `what` (and `detail()`) after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool, detail: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}",
            detail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(kafka::ensure_topic(brokers, topic, partitions))
        .expect("create topic");
}

/// One event: its id first, so [`id_of`] finds it without a JSON parser.
fn event(n: u64, src: &str) -> String {
    format!(
        r#"{{"n":{n},"user_id":{},"course_id":{},"region":"eu-west","purchased":false,"event_time":"2026-01-01T00:00:{:02}.{:03}Z","src":"{src}"}}"#,
        n % 9973,
        n % 37,
        n % 60,
        n % 1000
    )
}

fn id_of(body: &[u8]) -> Option<u64> {
    let rest = body.strip_prefix(br#"{"n":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Write `content` into the spool directory the way a producer must: under a `.tmp` name, then renamed.
fn drop_file(spool: &Path, name: &str, content: &[u8]) {
    let tmp = spool.join(format!("{name}.tmp"));
    std::fs::write(&tmp, content).expect("write spool file");
    std::fs::rename(&tmp, spool.join(name)).expect("rename spool file");
}

fn completed(spool: &Path, name: &str) -> bool {
    spool.join(format!("{name}.COMPLETED")).exists()
}

// ---------------------------------------------------------------------------------------------- HTTP

struct Response {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection.
fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {resp:?}")))?;
    Ok(Response {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// A JSON-lines body of events `ids`.
fn batch(ids: std::ops::Range<u64>, src: &str) -> Vec<u8> {
    let mut body = String::new();
    for n in ids {
        body.push_str(&event(n, src));
        body.push('\n');
    }
    body.into_bytes()
}

// ---------------------------------------------------------------------------------------------- the agent

/// `freshet collect --config FILE` as a child process, killed when dropped. Its stderr is drained all the
/// time (a full pipe would stall the agent); the last lines are kept for failure messages.
struct Agent {
    child: Child,
    log: Arc<Mutex<VecDeque<String>>>,
    addrs: BTreeMap<String, SocketAddr>,
}

impl Agent {
    /// Start the agent and wait until each of `listeners` (`sources.NAME`, `metrics`) printed its address.
    fn start(config: &Path, listeners: &[&str]) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_freshet"))
            .args(["collect", "--config", config.to_str().expect("utf8 path")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start freshet collect");
        let stderr = child.stderr.take().expect("stderr");
        let log: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
                if log.len() == 400 {
                    log.pop_front();
                }
                log.push_back(String::from_utf8_lossy(&line).into_owned());
            }
        });
        let mut agent = Agent {
            child,
            log,
            addrs: BTreeMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while agent.addrs.len() < listeners.len() {
            for line in agent.log_lines() {
                // collect: sources.web listening on 127.0.0.1:40123
                if let Some((what, addr)) = line
                    .strip_prefix("collect: ")
                    .and_then(|l| l.split_once(" listening on "))
                    && listeners.contains(&what)
                {
                    agent
                        .addrs
                        .insert(what.to_string(), addr.trim().parse().expect("listen address"));
                }
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("the agent exited ({status}) before listening:\n{}", agent.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not print its addresses {listeners:?}:\n{}",
                agent.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn log_lines(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn log_tail(&self) -> String {
        let lines = self.log_lines();
        let from = lines.len().saturating_sub(40);
        format!("---- agent stderr (last lines)\n{}", lines[from..].join("\n"))
    }

    fn metrics(&self) -> String {
        let r = request(self.addrs["metrics"], "GET", "/metrics", b"")
            .unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", self.log_tail()));
        assert_eq!(r.status, 200, "{}", r.body);
        if let Err(e) = freshet::metrics::parse::parse(&r.body) {
            panic!("/metrics is not valid Prometheus text: {e}\n{}", r.body);
        }
        r.body
    }

    /// One sample, e.g. `freshet_collector_sink_sent_total{sink="kafka"}`.
    fn metric(&self, series: &str) -> u64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    /// SIGKILL, and reap.
    fn kill9(&mut self) {
        self.child.kill().expect("kill -9 the agent");
        self.child.wait().expect("wait");
    }

    /// SIGTERM; SIGKILL if it has not stopped within `grace`. None if it had to be killed.
    fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------- Kafka

struct Record {
    body: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads a whole topic from its start (assign, no group offsets), keeping every record.
struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    /// Next offset to read, per partition.
    next: HashMap<i32, i64>,
    records: Vec<Record>,
    /// Event id → the channel ids (`freshet.id`) of its copies.
    copies: HashMap<u64, Vec<String>>,
}

impl TopicReader {
    fn new(brokers: &str, topic: &str) -> TopicReader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("freshet-test-reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        let deadline = Instant::now() + Duration::from_secs(60);
        let partitions: Vec<i32> = loop {
            let parts = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .ok()
                .and_then(|md| {
                    let t = md.topics().iter().find(|t| t.name() == topic)?;
                    (t.error().is_none() && !t.partitions().is_empty())
                        .then(|| t.partitions().iter().map(|p| p.id()).collect())
                });
            if let Some(p) = parts {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "topic {topic} has no partitions at {brokers}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        TopicReader {
            consumer,
            topic: topic.to_string(),
            next: partitions.iter().map(|p| (*p, 0)).collect(),
            partitions,
            records: Vec::new(),
            copies: HashMap::new(),
        }
    }

    /// Read what arrives for `d`.
    fn poll_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let body = m.payload().unwrap_or_default().to_vec();
                    let headers: Vec<(String, Vec<u8>)> = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default();
                    self.next.insert(m.partition(), m.offset() + 1);
                    let rec = Record { body, headers };
                    if let Some(n) = id_of(&rec.body) {
                        self.copies
                            .entry(n)
                            .or_default()
                            .push(rec.header("freshet.id").unwrap_or_default());
                    }
                    self.records.push(rec);
                }
                Some(Err(e)) => eprintln!("reader: {e}"),
                None => {}
            }
        }
    }

    /// Read up to the current end of every partition.
    fn read_to_end(&mut self) {
        let mut high = HashMap::new();
        for p in &self.partitions {
            let (_, h) = self
                .consumer
                .fetch_watermarks(&self.topic, *p, Duration::from_secs(30))
                .expect("watermarks");
            high.insert(*p, h);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while high.iter().any(|(p, h)| self.next[p] < *h) {
            assert!(
                Instant::now() < deadline,
                "could not read {} to its end {high:?}; at {:?}",
                self.topic,
                self.next
            );
            self.poll_for(Duration::from_millis(200));
        }
    }

    fn missing<'a>(&self, want: impl IntoIterator<Item = &'a u64>) -> Vec<u64> {
        want.into_iter()
            .filter(|n| !self.copies.contains_key(n))
            .copied()
            .collect()
    }

    /// Copies beyond the first, in all: (total, of which with a channel id seen before — redelivered by the
    /// sink — and of which with a new channel id — put into the channel again by a source).
    fn duplicates(&self) -> (usize, usize, usize) {
        let (mut total, mut same_id) = (0, 0);
        for ids in self.copies.values() {
            total += ids.len() - 1;
            let mut distinct = ids.clone();
            distinct.sort();
            distinct.dedup();
            same_id += ids.len() - distinct.len();
        }
        (total, same_id, total - same_id)
    }
}

// ---------------------------------------------------------------------------------------------- a private broker

/// A Kafka broker of this test's own (its own services dir and ports), so the test can stop it while the
/// shared one keeps running. Stopped when dropped, also when the test fails.
struct PrivateKafka {
    dir: tempfile::TempDir,
    port: u16,
    controller_port: u16,
}

impl PrivateKafka {
    fn new() -> PrivateKafka {
        // Two ports free now (held together, so they differ).
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        PrivateKafka {
            dir: tempfile::tempdir().expect("tmp"),
            port: a.local_addr().expect("addr").port(),
            controller_port: b.local_addr().expect("addr").port(),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn services(&self, cmd: &str) -> std::process::Output {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services"))
            .args([cmd, "kafka"])
            .env("FRESHET_SERVICES_DIR", self.dir.path())
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_HEAP", "256m")
            .env("SERVICES_TIMEOUT", "180")
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/services")
    }

    /// Start (or restart: the data dir keeps the topics); Err with the script's output if it failed.
    fn start(&self) -> Result<Duration, String> {
        let t0 = Instant::now();
        let out = self.services("start");
        if out.status.success() {
            Ok(t0.elapsed())
        } else {
            Err(format!(
                "scripts/services start kafka (port {}) failed ({}):\n{}{}",
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn stop(&self) {
        let out = self.services("stop");
        assert!(
            out.status.success(),
            "scripts/services stop kafka (port {}): {}{}",
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        let _ = self.services("stop");
    }
}

// ---------------------------------------------------------------------------------------------- tests

const SENT: &str = r#"freshet_collector_sink_sent_total{sink="kafka"}"#;
const FAILED: &str = r#"freshet_collector_sink_failed_total{sink="kafka"}"#;
const SIZE: &str = r#"freshet_collector_channel_size{channel="durable"}"#;
const SPOOL_ACCEPTED: &str = r#"freshet_collector_source_accepted_total{source="spool"}"#;

/// Spool files and HTTP batches → disk channel (fsync per batch) → Kafka; the agent is killed with SIGKILL
/// once Kafka has some of the events, then restarted. Every accepted event reaches Kafka at least once,
/// and the copies beyond the first are bounded by what was in flight: one sink batch taken but not
/// committed, plus one spool batch put but not yet recorded in the spool's progress file.
#[test]
fn kill_9_mid_stream_loses_nothing_and_duplicates_are_bounded() {
    if !service_up("Kafka", KAFKA) {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    const FILES: u64 = 5;
    const LINES: u64 = 40_000;
    const SINK_BATCH: u64 = 2000;
    const SPOOL_BATCH: u64 = 1000;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().display();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("spool dir");
    let topic = unique("collect_kill9");
    create_topic(KAFKA, &topic, 4);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.spool]\ntype = \"spool\"\ndir = \"{d}/spool\"\nchannel = \"durable\"\nbatch_lines = {SPOOL_BATCH}\n\
             [sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\nchannel = \"durable\"\n\
             [channels.durable]\ntype = \"disk\"\ndir = \"{d}/channel\"\nfsync = \"batch\"\n\
             [sinks.kafka]\ntype = \"kafka\"\nchannel = \"durable\"\nbootstrap_servers = \"{KAFKA}\"\ntopic = \"{topic}\"\n\
             key_field = \"user_id\"\nbatch_size = {SINK_BATCH}\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .expect("config");

    let mut agent = Agent::start(&config, &["sources.web", "metrics"]);
    let web = agent.addrs["sources.web"];
    let names: Vec<String> = (0..FILES).map(|f| format!("part-{f}.jsonl")).collect();
    for (f, name) in names.iter().enumerate() {
        let first = f as u64 * LINES;
        let mut text = String::with_capacity(LINES as usize * 140);
        for n in first..first + LINES {
            text.push_str(&event(n, "spool"));
            text.push('\n');
        }
        drop_file(&spool, name, text.as_bytes());
    }
    // HTTP batches alongside, until the agent dies: only those answered 200 count as accepted.
    let accepted_http: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop_posting = Arc::new(AtomicBool::new(false));
    let poster = {
        let (accepted, stop) = (accepted_http.clone(), stop_posting.clone());
        std::thread::spawn(move || {
            let mut next = 1_000_000u64;
            for _ in 0..40 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let ids = next..next + 250;
                next += 250;
                if let Ok(r) = request(web, "POST", "/events", &batch(ids.clone(), "http"))
                    && r.status == 200
                {
                    accepted.lock().expect("accepted").extend(ids);
                }
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    let total = FILES * LINES;
    let (mut sent, mut spooled) = (0, 0);
    wait_for(
        "the sink to deliver and the spool source to be inside its first file",
        Duration::from_secs(120),
        || {
            let text = agent.metrics();
            let get = |series: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<u64>().ok())
                    .unwrap_or_default()
            };
            (sent, spooled) = (get(SENT), get(SPOOL_ACCEPTED));
            sent > 0 && spooled >= LINES / 4
        },
        || agent.log_tail(),
    );
    agent.kill9();
    stop_posting.store(true, Ordering::Relaxed);
    poster.join().expect("poster");
    let accepted_http = accepted_http.lock().expect("accepted").clone();
    let done_before = names.iter().filter(|n| completed(&spool, n)).count();
    eprintln!(
        "kill -9 at {:.1?}: sink had sent {sent} of {total}+ events, the spool source had put {spooled} lines; \
         {done_before} of {FILES} files completed; {} HTTP events accepted",
        t0.elapsed(),
        accepted_http.len()
    );
    assert!(
        sent < total / 2,
        "killed well before the end: {sent} of {total} already sent"
    );

    let agent = Agent::start(&config, &["sources.web", "metrics"]);
    wait_for(
        "every spooled file to be completed and the channel to drain",
        Duration::from_secs(600),
        || names.iter().all(|n| completed(&spool, n)) && agent.metric(SIZE) == 0,
        || format!("{}\n{}", agent.metrics(), agent.log_tail()),
    );
    let recovered: Vec<String> = agent
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("recovered"))
        .collect();
    drop(agent);
    let mut reader = TopicReader::new(KAFKA, &topic);
    reader.read_to_end();
    let want: Vec<u64> = (0..total).chain(accepted_http.iter().copied()).collect();
    let missing = reader.missing(&want);
    assert!(
        missing.is_empty(),
        "{} accepted events never reached Kafka, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        names.iter().all(|n| !spool.join(n).exists()),
        "every spooled file is renamed .COMPLETED"
    );
    let (dups, redelivered, reread) = reader.duplicates();
    let bound = (SINK_BATCH + SPOOL_BATCH) as usize;
    eprintln!(
        "kill -9: {} records for {} accepted events: {dups} duplicates ({redelivered} redelivered by the sink under \
         the same freshet.id, {reread} read again by a source); bound {bound} = sink batch_size {SINK_BATCH} + \
         spool batch_lines {SPOOL_BATCH}; channel recovery: {recovered:?}; {:.1?}",
        reader.records.len(),
        want.len(),
        t0.elapsed()
    );
    assert!(
        dups <= bound,
        "{dups} duplicates ({redelivered} redelivered by the sink, {reread} read again by a source) exceed the \
         {bound} events in flight"
    );
}

/// Kafka down when the agent starts, then back, then down again mid-stream and back: events wait in the
/// disk channel while it is down (the sink counts failures) and all arrive once it returns; copies beyond
/// the first are redeliveries of failed deliveries (same `freshet.id`), never more than those held.
#[test]
fn kafka_outage_events_wait_in_the_channel_and_arrive_when_it_returns() {
    let _serial = serial();
    let t0 = Instant::now();
    const BATCH: u64 = 500;
    let broker = PrivateKafka::new();
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().display();
    let topic = unique("collect_outage");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\nchannel = \"durable\"\n\
             [channels.durable]\ntype = \"disk\"\ndir = \"{d}/channel\"\n\
             [sinks.kafka]\ntype = \"kafka\"\nchannel = \"durable\"\nbootstrap_servers = \"{}\"\ntopic = \"{topic}\"\n\
             key_field = \"user_id\"\nbatch_size = {BATCH}\ndelivery_timeout_ms = 3000\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            broker.addr()
        ),
    )
    .expect("config");
    let agent = Agent::start(&config, &["sources.web", "metrics"]);
    let web = agent.addrs["sources.web"];
    let mut accepted: Vec<u64> = Vec::new();
    let post = |accepted: &mut Vec<u64>, ids: std::ops::Range<u64>| {
        let r = request(web, "POST", "/events", &batch(ids.clone(), "http")).expect("POST");
        assert_eq!(r.status, 200, "{}", r.body);
        accepted.extend(ids);
    };

    // 1. Kafka is down: the events wait in the channel, the sink fails and retries.
    const N: u64 = 3000;
    for i in 0..N / BATCH {
        post(&mut accepted, i * BATCH..(i + 1) * BATCH);
    }
    wait_for(
        "the sink to fail against the stopped broker",
        Duration::from_secs(60),
        || agent.metric(FAILED) > 0,
        || agent.log_tail(),
    );
    assert_eq!(agent.metric(SIZE), N, "all {N} events wait in the channel");
    assert_eq!(agent.metric(SENT), 0);

    // 2. Kafka comes up: they arrive.
    let took = match broker.start() {
        Ok(t) => t,
        Err(e) if !services_required() => {
            eprintln!("skipped: could not start a private Kafka broker: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    eprintln!("outage: private broker at {} up in {took:.1?}", broker.addr());
    create_topic(&broker.addr(), &topic, 4);
    wait_for(
        "the first events to reach Kafka",
        Duration::from_secs(120),
        || agent.metric(SIZE) == 0,
        || format!("{}\n{}", agent.metrics(), agent.log_tail()),
    );
    let mut reader = TopicReader::new(&broker.addr(), &topic);
    reader.read_to_end();
    assert!(reader.missing(&accepted).is_empty(), "all {N} arrived after the outage");

    // 3. Kafka goes down while events stream in; more are sent while it is down.
    let streamed: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop_streaming = Arc::new(AtomicBool::new(false));
    let streamer = {
        let (streamed, stop) = (streamed.clone(), stop_streaming.clone());
        std::thread::spawn(move || {
            let mut next = 100_000u64;
            while !stop.load(Ordering::Relaxed) {
                let ids = next..next + 100;
                next += 100;
                let r = request(web, "POST", "/events", &batch(ids.clone(), "stream")).expect("POST");
                assert_eq!(r.status, 200, "{}", r.body);
                streamed.lock().expect("streamed").extend(ids);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let sent_before = agent.metric(SENT);
    wait_for(
        "the stream to flow into Kafka",
        Duration::from_secs(60),
        || agent.metric(SENT) >= sent_before + 2 * BATCH,
        || agent.log_tail(),
    );
    broker.stop();
    stop_streaming.store(true, Ordering::Relaxed);
    streamer.join().expect("streamer");
    accepted.extend(streamed.lock().expect("streamed").iter().copied());
    let failed_before = agent.metric(FAILED);
    const M: u64 = 2000;
    for i in 0..M / BATCH {
        post(&mut accepted, 200_000 + i * BATCH..200_000 + (i + 1) * BATCH);
    }
    wait_for(
        "the sink to fail again",
        Duration::from_secs(60),
        || agent.metric(FAILED) > failed_before,
        || agent.log_tail(),
    );
    let (size, sent_down) = (agent.metric(SIZE), agent.metric(SENT));
    assert!(
        size >= M,
        "the {M} events sent while Kafka is down wait in the channel: {size}"
    );
    assert_eq!(
        size,
        accepted.len() as u64 - sent_down,
        "the channel holds exactly what Kafka has not acknowledged"
    );
    eprintln!(
        "outage: broker stopped mid-stream; {size} events wait in the channel ({} streamed, {M} sent while down)",
        streamed.lock().expect("streamed").len()
    );

    // 4. Kafka returns (same data dir: the topic is still there): everything arrives.
    let took = broker.start().unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        "the channel to drain after the broker returned",
        Duration::from_secs(180),
        || agent.metric(SIZE) == 0,
        || format!("{}\n{}", agent.metrics(), agent.log_tail()),
    );
    assert_eq!(
        agent.metric(SENT),
        accepted.len() as u64,
        "the sink counts each event once"
    );
    let failed = agent.metric(FAILED);
    drop(agent);
    let mut reader = TopicReader::new(&broker.addr(), &topic);
    reader.read_to_end();
    let missing = reader.missing(&accepted);
    assert!(
        missing.is_empty(),
        "{} accepted events never reached Kafka, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let (dups, redelivered, reread) = reader.duplicates();
    // A copy beyond the first comes from a delivery that failed (a batch cut by the broker going away, or
    // timing out while it comes back with some partitions not yet led) and was retried: at most one extra
    // copy per event per failed delivery, and under the same channel id.
    eprintln!(
        "outage: {} events, {} records in Kafka, {dups} duplicates ({redelivered} redelivered under the same \
         freshet.id, {reread} otherwise) = {:.1} sink batches of {BATCH}; bound: {failed} events in failed \
         deliveries (sink_failed_total); broker restarted in {took:.1?}; {:.1?}",
        accepted.len(),
        reader.records.len(),
        dups as f64 / BATCH as f64,
        t0.elapsed()
    );
    assert_eq!(reread, 0, "no source put an event twice");
    assert!(
        dups as u64 <= failed,
        "{dups} duplicates exceed the {failed} events in deliveries that failed"
    );
}

/// Bad lines in a spooled file go to the dead-letter channel, and from there through a second Kafka sink
/// to a DLQ topic with the reason in `freshet.error`; good lines go to the main topic; nothing is lost.
#[test]
fn bad_input_goes_to_a_dead_letter_topic_with_the_reason() {
    if !service_up("Kafka", KAFKA) {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().display();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("spool dir");
    let (topic, dlq) = (unique("collect_main"), unique("collect_dlq"));
    create_topic(KAFKA, &topic, 2);
    create_topic(KAFKA, &dlq, 1);
    const MAX: usize = 256;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.spool]\ntype = \"spool\"\ndir = \"{d}/spool\"\nchannel = \"durable\"\nbatch_lines = 64\n\
             max_event_bytes = {MAX}\ndead_letter = \"rejected\"\n\
             interceptors = [{{ type = \"json\", require = [\"user_id\"] }}]\n\
             [channels.durable]\ntype = \"disk\"\ndir = \"{d}/channel\"\n\
             [channels.rejected]\ntype = \"disk\"\ndir = \"{d}/dlq\"\n\
             [sinks.kafka]\ntype = \"kafka\"\nchannel = \"durable\"\nbootstrap_servers = \"{KAFKA}\"\ntopic = \"{topic}\"\n\
             key_field = \"user_id\"\n\
             [sinks.dead_letters]\ntype = \"kafka\"\nchannel = \"rejected\"\nbootstrap_servers = \"{KAFKA}\"\n\
             topic = \"{dlq}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .expect("config");
    let oversized = format!(r#"{{"n":900001,"user_id":1,"pad":"{}"}}"#, "x".repeat(400)).into_bytes();
    // (line, what reaches the DLQ, the reason it must name)
    let bad: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
        (
            oversized.clone(),
            oversized[..MAX].to_vec(),
            "longer than max_event_bytes (256)",
        ),
        (
            b"{\"n\":900002,\"user_id\":2,\"name\":\"ab\xffc\"}".to_vec(),
            b"{\"n\":900002,\"user_id\":2,\"name\":\"ab\xffc\"}".to_vec(),
            "invalid UTF-8 at byte 34",
        ),
        (
            br#"{"n":900003,"user_id":"#.to_vec(),
            br#"{"n":900003,"user_id":"#.to_vec(),
            "malformed JSON at line 1 column 22: EOF while parsing a value",
        ),
        (
            b"[900004, 1]".to_vec(),
            b"[900004, 1]".to_vec(),
            "not a JSON object (array)",
        ),
        (
            br#"{"n":900005,"course_id":3}"#.to_vec(),
            br#"{"n":900005,"course_id":3}"#.to_vec(),
            "missing field 'user_id'",
        ),
    ];
    // 1000 good lines with the bad ones among them, a blank line, a CRLF line, no newline at the end.
    const GOOD: u64 = 1000;
    let mut file = Vec::new();
    let mut non_blank = 0;
    for n in 0..GOOD {
        if n % 150 == 75 && ((n / 150) as usize) < bad.len() {
            let (line, _, _) = &bad[(n / 150) as usize];
            file.extend_from_slice(line);
            file.push(b'\n');
            non_blank += 1;
        }
        if n == 500 {
            file.push(b'\n');
        }
        file.extend_from_slice(event(n, "spool").as_bytes());
        non_blank += 1;
        if n == 600 {
            file.push(b'\r');
        }
        if n + 1 < GOOD {
            file.push(b'\n');
        }
    }
    assert_eq!(
        non_blank,
        GOOD as usize + bad.len(),
        "each bad line is in the file once"
    );
    let name = "mixed.jsonl";
    drop_file(&spool, name, &file);
    let agent = Agent::start(&config, &["metrics"]);
    wait_for(
        "the file to be completed and both channels to drain",
        Duration::from_secs(120),
        || {
            completed(&spool, name)
                && agent.metric(SIZE) == 0
                && agent.metric(r#"freshet_collector_channel_size{channel="rejected"}"#) == 0
        },
        || format!("{}\n{}", agent.metrics(), agent.log_tail()),
    );
    let metric = |m: &str| agent.metric(&format!("freshet_collector_source_{m}_total{{source=\"spool\"}}"));
    let (received, accepted, rejected) = (metric("received"), metric("accepted"), metric("rejected"));
    drop(agent);
    assert_eq!(
        (received, accepted, rejected),
        (non_blank as u64, GOOD, bad.len() as u64),
        "received, accepted, rejected"
    );

    let mut main = TopicReader::new(KAFKA, &topic);
    main.read_to_end();
    assert_eq!(main.records.len(), GOOD as usize, "each good line once in {topic}");
    let good: Vec<u64> = (0..GOOD).collect();
    assert!(main.missing(&good).is_empty(), "every good line in {topic}");
    let mut dead = TopicReader::new(KAFKA, &dlq);
    dead.read_to_end();
    let got: Vec<(String, String, String)> = dead
        .records
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(&r.body).into_owned(),
                r.header("freshet.error").unwrap_or_default(),
                r.header("freshet.source").unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(dead.records.len(), bad.len(), "each bad line once in {dlq}: {got:#?}");
    for (line, body, reason) in &bad {
        let rec = dead
            .records
            .iter()
            .find(|r| &r.body == body)
            .unwrap_or_else(|| panic!("{} not in {dlq}: {got:#?}", String::from_utf8_lossy(line)));
        let error = rec.header("freshet.error").unwrap_or_default();
        assert!(
            error.contains(reason),
            "{}: freshet.error {error:?} should name {reason:?}",
            String::from_utf8_lossy(line)
        );
        assert_eq!(rec.header("freshet.source").as_deref(), Some("spool"));
        assert_eq!(rec.header("file").as_deref(), Some(name), "the file header is kept");
        assert!(rec.header("freshet.id").is_some());
    }
    eprintln!(
        "bad input: {GOOD} good lines in {topic}, {} bad ones in {dlq} with their reasons: {:?}; {:.1?}",
        bad.len(),
        got.iter().map(|(_, e, _)| e.as_str()).collect::<Vec<_>>(),
        t0.elapsed()
    );
}

/// A full disk channel holds sources back: HTTP requests get 503 with Retry-After (nothing of them kept)
/// and the spooled file stops being read. Restarted against a reachable Kafka, the agent delivers
/// everything that was accepted.
#[test]
fn a_full_disk_channel_holds_sources_back_and_loses_nothing() {
    if !service_up("Kafka", KAFKA) {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    const CAPACITY: u64 = 1000;
    const SPOOL_BATCH: u64 = 100;
    const HTTP_BATCH: u64 = 50;
    const LINES: u64 = 5000;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().display();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("spool dir");
    let topic = unique("collect_full");
    create_topic(KAFKA, &topic, 2);
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = |brokers: &str| {
        format!(
            "[sources.spool]\ntype = \"spool\"\ndir = \"{d}/spool\"\nchannel = \"durable\"\nbatch_lines = {SPOOL_BATCH}\n\
             [sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\nchannel = \"durable\"\nbusy_timeout_ms = 200\n\
             [channels.durable]\ntype = \"disk\"\ndir = \"{d}/channel\"\ncapacity = {CAPACITY}\n\
             [sinks.kafka]\ntype = \"kafka\"\nchannel = \"durable\"\nbootstrap_servers = \"{brokers}\"\ntopic = \"{topic}\"\n\
             batch_size = 300\ndelivery_timeout_ms = 1000\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n"
        )
    };
    let dead_config = dir.path().join("dead.toml");
    std::fs::write(&dead_config, config(&format!("127.0.0.1:{dead_port}"))).expect("config");
    let name = "lines.jsonl";
    drop_file(&spool, name, &batch(0..LINES, "spool"));
    let mut agent = Agent::start(&dead_config, &["sources.web", "metrics"]);
    let web = agent.addrs["sources.web"];

    // A few requests while the channel has room (the spool source waits a scan before reading), then
    // the spool source fills it; from then on requests are refused: 503 with Retry-After.
    let mut accepted: Vec<u64> = Vec::new();
    let mut refused: Vec<u64> = Vec::new();
    let mut next = 100_000u64;
    for _ in 0..4 {
        let ids = next..next + HTTP_BATCH;
        next += HTTP_BATCH;
        let r = request(web, "POST", "/events", &batch(ids.clone(), "http")).expect("POST");
        assert_eq!(r.status, 200, "{}", r.body);
        accepted.extend(ids);
    }
    wait_for(
        "the spool source to put lines",
        Duration::from_secs(60),
        || agent.metric(SPOOL_ACCEPTED) > 0,
        || agent.log_tail(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "never refused:\n{}", agent.log_tail());
        let ids = next..next + HTTP_BATCH;
        next += HTTP_BATCH;
        let r = request(web, "POST", "/events", &batch(ids.clone(), "http")).expect("POST");
        match r.status {
            200 => accepted.extend(ids),
            503 => {
                assert!(
                    r.head.to_ascii_lowercase().contains("\r\nretry-after: "),
                    "503 carries Retry-After: {}",
                    r.head
                );
                assert!(r.body.contains("channel full"), "{}", r.body);
                refused.extend(ids);
                break;
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    let size = agent.metric(SIZE);
    assert!(
        size <= CAPACITY && size + SPOOL_BATCH.max(HTTP_BATCH) > CAPACITY,
        "the channel is full: {size} of {CAPACITY}"
    );
    // Still full: another request is refused too, and the spool source does not advance.
    let held = agent.metric(SPOOL_ACCEPTED);
    let r = request(web, "POST", "/events", &batch(next..next + HTTP_BATCH, "http")).expect("POST");
    assert_eq!(r.status, 503, "{}", r.body);
    refused.extend(next..next + HTTP_BATCH);
    let failed_before = agent.metric(FAILED);
    wait_for(
        "two more failed deliveries while the spool waits",
        Duration::from_secs(60),
        || agent.metric(FAILED) >= failed_before + 2,
        || agent.log_tail(),
    );
    assert_eq!(agent.metric(SPOOL_ACCEPTED), held, "the spool source is held back");
    assert!(held < LINES, "{held}");
    assert!(
        !completed(&spool, name),
        "the spooled file is not completed while the channel is full"
    );
    assert_eq!(agent.metric(SENT), 0);
    let status = agent.terminate(Duration::from_secs(60));
    let last: Vec<String> = agent.log_lines().into_iter().rev().take(3).collect();
    eprintln!(
        "full channel: {size} of {CAPACITY} held ({held} spooled lines, {} HTTP events accepted, {} refused); \
         agent stopped on SIGTERM: {status:?}; its last lines: {last:?}",
        accepted.len(),
        refused.len()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent stops cleanly on SIGTERM, also while its sources are held back: {status:?}\n{}",
        agent.log_tail()
    );
    let tail = agent.log_tail();
    drop(agent);

    // Restarted against the real Kafka, with the same channel and spool directories.
    let live_config = dir.path().join("live.toml");
    std::fs::write(&live_config, config(KAFKA)).expect("config");
    let agent = Agent::start(&live_config, &["sources.web", "metrics"]);
    wait_for(
        "the file to be completed and the channel to drain",
        Duration::from_secs(180),
        || completed(&spool, name) && agent.metric(SIZE) == 0,
        || format!("{}\n{}\n{tail}", agent.metrics(), agent.log_tail()),
    );
    drop(agent);
    let mut reader = TopicReader::new(KAFKA, &topic);
    reader.read_to_end();
    let want: Vec<u64> = (0..LINES).chain(accepted.iter().copied()).collect();
    let missing = reader.missing(&want);
    assert!(
        missing.is_empty(),
        "{} accepted events never reached Kafka, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let kept: Vec<&u64> = refused.iter().filter(|n| reader.copies.contains_key(n)).collect();
    assert!(kept.is_empty(), "nothing of a refused request is kept: {kept:?}");
    let (dups, redelivered, reread) = reader.duplicates();
    eprintln!(
        "full channel: {} events in Kafka, {dups} duplicates ({redelivered} redelivered under the same freshet.id, \
         {reread} read again by the spool source); {:.1?}",
        want.len(),
        t0.elapsed()
    );
    assert!(
        dups <= SPOOL_BATCH as usize,
        "{dups} duplicates ({reread} lines read again by the spool source) after a stop: more than one spool batch \
         ({SPOOL_BATCH})"
    );
}
