//! Outages of the services a query depends on, caused for real: the Kafka broker killed with SIGKILL
//! and restarted three times while a query reads it, and HBase unreachable for 60 s while a query
//! writes to it (then the query stopped mid-outage and resumed from its checkpoint). The results are
//! exact; memory stays bounded; a stop is honoured while a service is away.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use freshet::connector::generator::{CourseGenerator, EPOCH_2026_MS};
use freshet::connector::kafka;
use freshet::engine::query::{EngineConfig, Metrics};
use freshet::session::Session;

use crate::services::{KAFKA, ORACLE_SQL, Proxy, THRIFT, VIEWS_SQL, hbase_rows, kafka_source, produce, up};
use crate::support::{COURSE_COLUMNS, assert_rows_eq, batch_rows, exec, gen_opts, oracle_ctx, unique};

/// A Kafka broker of this test's own (its own ports and directory), so that killing it disturbs no
/// other test. Started and restarted by `scripts/services`.
struct OwnKafka {
    dir: tempfile::TempDir,
    port: u16,
    controller: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl OwnKafka {
    fn services(&self, args: &[&str]) -> std::process::Output {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services"))
            .args(args)
            .env("FRESHET_SERVICES_DIR", self.dir.path())
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller.to_string())
            .output()
            .expect("scripts/services")
    }

    fn start() -> OwnKafka {
        let k = OwnKafka {
            dir: tempfile::tempdir().expect("tmp"),
            port: free_port(),
            controller: free_port(),
        };
        k.up();
        k
    }

    fn up(&self) {
        let out = self.services(&["start", "kafka"]);
        assert!(
            out.status.success(),
            "starting a Kafka broker on port {}: {}{}",
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL the broker.
    fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("kafka/kafka.pid")).expect("pid file");
        let status = Command::new("kill").args(["-9", pid.trim()]).status().expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{}", pid.trim())).exists()
            && std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "the broker did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        let _ = self.services(&["stop", "kafka"]);
    }
}

/// Published Parquet rows of `dir` (none if it does not exist yet).
async fn parquet_rows(dir: &Path) -> Vec<String> {
    if !dir.exists() || std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0) == 0 {
        return Vec::new();
    }
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_parquet("t", dir.to_str().expect("utf8"), Default::default())
        .await
        .expect("parquet");
    batch_rows(&ctx, "SELECT course_id, window_start, views, viewers, purchases FROM t").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_broker_killed_three_times_mid_run_loses_and_repeats_nothing() {
    if !up("Kafka", KAFKA) {
        return;
    }
    const N: u64 = 240_000;
    let broker = OwnKafka::start();
    let brokers = broker.brokers();
    let topic = unique("broker_kills");
    kafka::ensure_topic(&brokers, &topic, 1).await.expect("topic");

    // A producer paced at ~20 000 events/s for the whole run, then one event far ahead to close
    // every window; it rides out the broker's deaths (librdkafka buffers and retries, idempotently).
    let opts = gen_opts(N, 31);
    let (p_brokers, p_topic, p_opts) = (brokers.clone(), topic.clone(), opts.clone());
    let producer = std::thread::spawn(move || {
        let p = kafka::producer(&p_brokers, &[]).expect("producer");
        let mut g = CourseGenerator::new(p_opts, EPOCH_2026_MS);
        let t0 = Instant::now();
        let mut line = String::new();
        let mut n = 0u64;
        while let Some(e) = g.next_event() {
            line.clear();
            e.write_json(&mut line);
            while kafka::send(
                &p,
                &p_topic,
                Some(e.user_id.to_string().as_bytes()),
                line.trim_end().as_bytes(),
            )
            .is_err()
            {
                p.poll(Duration::from_millis(50)); // the local queue is full while the broker is away
            }
            n += 1;
            if n.is_multiple_of(1000) {
                p.poll(Duration::ZERO);
                let due = Duration::from_secs_f64(n as f64 / 20_000.0);
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        let far = r#"{"user_id":1,"course_id":1,"region":"x","purchased":false,"event_time":"2027-01-01T00:00:00Z"}"#;
        kafka::send(&p, &p_topic, Some(b"end"), far.as_bytes()).expect("send");
        kafka::flush_within(&p, Duration::from_secs(300)).expect("every event delivered");
    });

    let dir = tempfile::tempdir().expect("tmp");
    let mut s = Session::new(EngineConfig {
        batch_size: 2_000,
        commit_interval: Duration::from_millis(500),
        ..EngineConfig::default()
    });
    exec(
        &mut s,
        &format!(
            "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{brokers}',
                 topic = '{topic}', startup = 'earliest');
             CREATE SINK pq WITH (connector = 'parquet', path = '{}') AS {VIEWS_SQL};",
            dir.path().join("pq").display()
        ),
    )
    .await;
    let m = s.queries[0].metrics.clone();
    for (k, at) in [N / 4, N / 2, 3 * N / 4].into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Metrics::get(&m.rows_in) < at {
            assert!(
                Instant::now() < deadline,
                "kill {k}: the query read only {}",
                Metrics::get(&m.rows_in)
            );
            assert_eq!(s.queries[0].status(), "running", "{:?}", s.queries[0].outcome);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        broker.kill();
        let stalled = Metrics::get(&m.rows_in);
        broker.up();
        assert_eq!(
            s.queries[0].status(),
            "running",
            "the broker's death is waited out: {:?}",
            s.queries[0].outcome
        );
        assert!(stalled >= at);
    }
    producer.join().expect("producer");

    let want = batch_rows(&oracle_ctx(&opts, "ev"), ORACLE_SQL).await;
    let out = dir.path().join("pq");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = parquet_rows(&out).await;
    while got.len() < want.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} windows written",
            got.len(),
            want.len()
        );
        assert_eq!(s.queries[0].status(), "running", "{:?}", s.queries[0].outcome);
        tokio::time::sleep(Duration::from_millis(200)).await;
        got = parquet_rows(&out).await;
    }
    s.stop_all().await;
    assert_rows_eq(&parquet_rows(&out).await, &want, "TUMBLE across three broker deaths");
    assert_eq!(Metrics::get(&m.rows_in), N + 1, "every event read once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbase_unreachable_for_60_s_then_a_stop_mid_outage_and_a_resume_give_the_exact_result() {
    if !up("Kafka", KAFKA) || !up("HBase Thrift", THRIFT) {
        return;
    }
    let topic = unique("hbase_outage");
    let table = unique("outage_60s");
    let opts = gen_opts(150_000, 29);
    produce(&topic, &opts, &[]).await;
    let proxy = Proxy::start(THRIFT);
    let chk: PathBuf = tempfile::tempdir().expect("tmp").keep();
    let config = EngineConfig {
        batch_size: 1_000,
        commit_interval: Duration::from_millis(300),
        checkpoint_dir: Some(chk.clone()),
        ..EngineConfig::default()
    };
    let sql = format!(
        "{}
         CREATE SINK hb WITH (connector = 'hbase', thrift = '{}', table = '{table}', row_key = 'course_id, window_start',
             create_table = 'true', batch_rows = '200') AS {VIEWS_SQL};",
        kafka_source("ev", &topic),
        proxy.addr
    );
    let mut s = Session::new(config.clone());
    exec(&mut s, &sql).await;
    let m = s.queries[0].metrics.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.bytes.load(Ordering::SeqCst) < 50_000 || m.checkpoint_epoch.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "the sink never wrote");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    proxy.down();
    let during = proxy.bytes.load(Ordering::SeqCst);
    // Blocked in its sink, the query reads no further: what it read is bounded by the micro-batch
    // it was writing and the next (not by the length of the outage). (This test used to bound the
    // test process's resident memory instead, which other tests running at the same time grow.)
    let read_before = Metrics::get(&m.rows_in);
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            s.queries[0].status(),
            "running",
            "the query waits: {:?}",
            s.queries[0].outcome
        );
    }
    assert_eq!(
        proxy.bytes.load(Ordering::SeqCst),
        during,
        "nothing reached HBase while it was away"
    );
    let read_during = Metrics::get(&m.rows_in) - read_before;
    assert!(
        read_during <= 2 * 1_000,
        "{read_during} more rows read during the outage (micro-batches of 1 000)"
    );
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), s.stop_all())
        .await
        .expect("a stop is honoured while HBase is away");
    let stopped_in = stopping.elapsed();
    drop(s);

    // HBase is back: the same query, started again, resumes from its last checkpoint.
    proxy.up();
    let mut s = Session::new(config);
    exec(&mut s, &sql).await;
    crate::support::finish_within(&mut s, std::time::Duration::from_secs(300)).await;
    assert!(
        matches!(s.queries[0].outcome, Some(Ok(_))),
        "{:?}",
        s.queries[0].outcome
    );
    let want = batch_rows(&oracle_ctx(&opts, "ev"), ORACLE_SQL).await;
    let got = hbase_rows(&mut s, &table, THRIFT).await;
    assert_rows_eq(&got, &want, "after a 60 s outage, a stop and a resume");
    eprintln!("stop during the outage took {stopped_in:?}; {read_during} rows read during it");
    let _ = std::fs::remove_dir_all(chk);
}
