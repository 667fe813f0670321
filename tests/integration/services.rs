//! Against real Apache Kafka and HBase, started by `scripts/services start` (the README's test command
//! does it). Under `CI=true` or `FRESHET_REQUIRE_SERVICES=1` a service that is not reachable fails the
//! test; elsewhere the test says it is skipped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshet::connector::generator::{CourseGenerator, EPOCH_2026_MS, GenOptions};
use freshet::connector::kafka;

use crate::support::*;

pub(crate) const KAFKA: &str = "127.0.0.1:9092";
pub(crate) const THRIFT: &str = "127.0.0.1:9090";

pub(crate) fn up(name: &str, addr: &str) -> bool {
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if reachable {
        return true;
    }
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("FRESHET_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{name} is not reachable at {addr}: start it with scripts/services start"
    );
    eprintln!("skipped: {name} is not reachable at {addr} (scripts/services start)");
    false
}

/// Produce the generator's events (or `extra` raw payloads first) to a new topic.
pub(crate) async fn produce(topic: &str, opts: &GenOptions, extra: &[&[u8]]) {
    produce_at(topic, opts, extra, EPOCH_2026_MS).await
}

/// [`produce`] with event times from `epoch` on.
pub(crate) async fn produce_at(topic: &str, opts: &GenOptions, extra: &[&[u8]], epoch: i64) {
    kafka::ensure_topic(KAFKA, topic, 4).await.expect("topic");
    let p = kafka::producer(KAFKA, &[]).expect("producer");
    for raw in extra {
        kafka::send(&p, topic, Some(b"bad"), raw).expect("send");
    }
    let mut g = CourseGenerator::new(opts.clone(), epoch);
    let mut line = String::new();
    while let Some(e) = g.next_event() {
        line.clear();
        e.write_json(&mut line);
        kafka::send(
            &p,
            topic,
            Some(e.user_id.to_string().as_bytes()),
            line.trim_end().as_bytes(),
        )
        .expect("send");
    }
    kafka::flush(&p).expect("flush");
}

pub(crate) fn kafka_source(name: &str, topic: &str) -> String {
    format!(
        "CREATE SOURCE {name} ({COURSE_COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{KAFKA}', topic = '{topic}',
         startup = 'earliest', bounded = 'latest', group_id = '{topic}-g');"
    )
}

pub(crate) const VIEWS_SQL: &str =
    "SELECT course_id, window_start, window_end, COUNT(*) AS views, COUNT(DISTINCT user_id) AS viewers,
       SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
FROM TUMBLE(ev, event_time, INTERVAL '10' SECOND) GROUP BY course_id, window_start, window_end";

pub(crate) const ORACLE_SQL: &str =
    "SELECT course_id, date_bin(INTERVAL '10 seconds', event_time, TIMESTAMP '1970-01-01'),
       COUNT(*), COUNT(DISTINCT user_id), SUM(CASE WHEN purchased THEN 1 ELSE 0 END) FROM ev GROUP BY 1, 2";

/// Read an HBase table back through Freshet's own lookup-table reader.
pub(crate) async fn hbase_rows(s: &mut freshet::session::Session, table: &str, thrift: &str) -> Vec<String> {
    let name = unique("read");
    exec(
        s,
        &format!(
            "CREATE TABLE {name} (course_id BIGINT, window_start TIMESTAMP, views BIGINT, viewers BIGINT, purchases BIGINT)
             WITH (connector = 'hbase', thrift = '{thrift}', table = '{table}', row_key = 'course_id, window_start');"
        ),
    )
    .await;
    sorted_rows(
        &exec(
            s,
            &format!("SELECT course_id, window_start, views, viewers, purchases FROM {name};"),
        )
        .await,
    )
}

#[tokio::test]
async fn kafka_to_hbase_and_parquet_match_the_batch_result() {
    if !up("Kafka", KAFKA) || !up("HBase Thrift", THRIFT) {
        return;
    }
    let topic = unique("views");
    let table = unique("course_views");
    let opts = gen_opts(30_000, 21);
    produce(&topic, &opts, &[]).await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = session(2_000);
    exec(&mut s, &kafka_source("ev", &topic)).await;
    exec(
        &mut s,
        &format!(
            "CREATE SINK hb WITH (connector = 'hbase', thrift = '{THRIFT}', table = '{table}', column_family = 'v',
             row_key = 'course_id, window_start', create_table = 'true') AS {VIEWS_SQL};
             CREATE SINK pq WITH (connector = 'parquet', path = '{}') AS {VIEWS_SQL};",
            dir.path().join("pq").display()
        ),
    )
    .await;
    crate::support::finish_within(&mut s, std::time::Duration::from_secs(300)).await;
    for q in &s.queries {
        assert!(matches!(q.outcome, Some(Ok(_))), "{}: {:?}", q.name, q.outcome);
    }
    let want = batch_rows(&oracle_ctx(&opts, "ev"), ORACLE_SQL).await;
    let got = hbase_rows(&mut s, &table, THRIFT).await;
    assert_eq!(got.len(), want.len());
    assert_rows_eq(&got, &want, "HBase holds the batch result");
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_parquet("pq", dir.path().join("pq").to_str().expect("utf8"), Default::default())
        .await
        .expect("pq");
    let archived = batch_rows(
        &ctx,
        "SELECT course_id, window_start, views, viewers, purchases FROM pq",
    )
    .await;
    assert_rows_eq(&archived, &want, "the Parquet archive holds the batch result");
}

#[tokio::test]
async fn invalid_kafka_messages_go_to_errors_and_the_run_goes_on() {
    if !up("Kafka", KAFKA) {
        return;
    }
    let topic = unique("mixed");
    let opts = gen_opts(5_000, 22);
    produce(
        &topic,
        &opts,
        &[
            b"{not json",
            b"\xff\xfe",
            br#"{"user_id":"x","course_id":1,"event_time":"2026-01-01T00:00:00Z"}"#,
        ],
    )
    .await;
    let mut s = session(1_000);
    exec(&mut s, &kafka_source("ev", &topic)).await;
    // The query reads `user_id`, so the record whose `user_id` is "x" is an error (a column no
    // query reads is not converted: see `bad_input`).
    let got = streamed(
        &mut s,
        "SELECT COUNT(user_id) AS n FROM TUMBLE(ev, event_time, INTERVAL '1' HOUR) GROUP BY window_start",
    )
    .await;
    let total: i64 = got.iter().map(|r| r.parse::<i64>().expect("n")).sum();
    assert_eq!(total, 5_000, "every valid event is counted");
    let errors = sorted_rows(&exec(&mut s, "SELECT source, position, reason FROM _errors;").await);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors.iter().all(|e| e.starts_with(&format!("ev|{topic}/"))),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .all(|e| e.split('|').nth(1).is_some_and(|p| p.contains('@'))),
        "topic/partition@offset: {errors:?}"
    );
    assert!(errors.iter().any(|e| e.ends_with("invalid UTF-8")), "{errors:?}");
}

/// A TCP proxy in front of HBase's Thrift server that the test can take down and bring back.
/// Forwarding happens under the same lock as `down`, so once `down` returns no byte gets through —
/// not even one a copy thread had already read.
pub(crate) struct Proxy {
    pub(crate) addr: String,
    /// Whether traffic flows, and the sockets to cut when it stops.
    state: Arc<Mutex<(bool, Vec<TcpStream>)>>,
    pub(crate) bytes: Arc<AtomicU64>,
}

impl Proxy {
    pub(crate) fn start(upstream: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let state: Arc<Mutex<(bool, Vec<TcpStream>)>> = Arc::new(Mutex::new((true, Vec::new())));
        let bytes = Arc::new(AtomicU64::new(0));
        let (st, b) = (state.clone(), bytes.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                {
                    let mut guard = st.lock().expect("state");
                    if !guard.0 {
                        continue; // down: the connection is dropped at once
                    }
                    for sock in [&client, &server] {
                        if let Ok(sock) = sock.try_clone() {
                            guard.1.push(sock);
                        }
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    let (b, st) = (b.clone(), st.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            let guard = st.lock().expect("state");
                            if n == 0 || !guard.0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            b.fetch_add(n as u64, Ordering::SeqCst);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, state, bytes }
    }

    pub(crate) fn down(&self) {
        let mut guard = self.state.lock().expect("state");
        guard.0 = false;
        for sock in guard.1.drain(..) {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
    }

    pub(crate) fn up(&self) {
        self.state.lock().expect("state").0 = true;
    }
}

#[tokio::test]
async fn hbase_outage_mid_run_blocks_the_sink_and_loses_nothing() {
    if !up("Kafka", KAFKA) || !up("HBase Thrift", THRIFT) {
        return;
    }
    let topic = unique("outage");
    let table = unique("outage_views");
    let opts = gen_opts(40_000, 23);
    produce(&topic, &opts, &[]).await;
    let proxy = Proxy::start(THRIFT);
    let mut s = session(1_000);
    exec(&mut s, &kafka_source("ev", &topic)).await;
    exec(
        &mut s,
        &format!(
            "CREATE SINK hb WITH (connector = 'hbase', thrift = '{}', table = '{table}', row_key = 'course_id, window_start',
             create_table = 'true', batch_rows = '200') AS {VIEWS_SQL};",
            proxy.addr
        ),
    )
    .await;
    // Wait (with a deadline) until the sink has written something, then cut HBase off for 3 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.bytes.load(Ordering::SeqCst) < 50_000 {
        assert!(std::time::Instant::now() < deadline, "the sink never wrote");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.down();
    let during = proxy.bytes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        proxy.bytes.load(Ordering::SeqCst),
        during,
        "nothing reaches HBase while it is down"
    );
    assert_eq!(s.queries[0].status(), "running", "the query waits instead of failing");
    proxy.up();
    crate::support::finish_within(&mut s, std::time::Duration::from_secs(300)).await;
    assert!(
        matches!(s.queries[0].outcome, Some(Ok(ref r)) if r.late == 0 && r.rows_in == 40_000),
        "{:?}",
        s.queries[0].outcome
    );
    let want = batch_rows(&oracle_ctx(&opts, "ev"), ORACLE_SQL).await;
    let got = hbase_rows(&mut s, &table, THRIFT).await;
    assert_rows_eq(&got, &want, "after the outage HBase holds the complete result");
}

/// The recommendation case in batch SQL over the generated events (`ev`): hesitations (sessions per
/// user and course with a 30 s gap, merged when they touch, three or more views and no purchase), the
/// regional top 3 of every 1-hour window sliding by a minute, and the hourly co-purchases.
const RECOMMENDATION_CTES: &str = "
WITH e AS (SELECT user_id, course_id, region, purchased,
                  CAST(arrow_cast(event_time, 'Timestamp(Millisecond, None)') AS BIGINT) AS t FROM ev),
marked AS (SELECT *, CASE WHEN t - LAG(t) OVER (PARTITION BY user_id, course_id, region ORDER BY t) <= 30000
                          THEN 0 ELSE 1 END AS new_visit FROM e),
numbered AS (SELECT *, SUM(new_visit) OVER (PARTITION BY user_id, course_id, region ORDER BY t
                                            ROWS UNBOUNDED PRECEDING) AS visit FROM marked),
visits AS (SELECT user_id, course_id, region, MIN(t) AS vs, MAX(t) + 30000 AS ve, COUNT(*) AS views,
                  SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS buys
           FROM numbered GROUP BY user_id, course_id, region, visit),
hes AS (SELECT * FROM visits WHERE views >= 3 AND buys = 0),
hop AS (SELECT region, course_id, (t / 60000) * 60000 - k.value * 60000 AS ws
        FROM e CROSS JOIN generate_series(0, 59) AS k WHERE purchased),
counted AS (SELECT region, course_id, ws, ws + 3600000 AS we, COUNT(*) AS buys FROM hop GROUP BY region, course_id, ws),
best AS (SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY region, ws ORDER BY buys DESC, course_id) AS rank
                        FROM counted) WHERE rank <= 3),
hv AS (SELECT DISTINCT user_id, course_id, (t / 3600000) * 3600000 AS hs FROM e WHERE NOT purchased),
hb AS (SELECT DISTINCT user_id, course_id, (t / 3600000) * 3600000 AS hs FROM e WHERE purchased),
co AS (SELECT v.course_id AS viewed, b.course_id AS bought, v.hs + 3600000 AS he, COUNT(*) AS buyers
       FROM hv v JOIN hb b ON v.user_id = b.user_id AND v.hs = b.hs AND v.course_id <> b.course_id
       GROUP BY v.course_id, b.course_id, v.hs)";

#[tokio::test]
async fn shipped_kafka_pipeline_fills_hbase_with_the_right_counts() {
    if !up("Kafka", KAFKA) || !up("HBase Thrift", THRIFT) {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let sql = std::fs::read_to_string(format!("{root}/queries/course_activity_kafka.sql")).expect("shipped query");
    let (topic, views, recs, similar) = (
        unique("course_events"),
        unique("course_views"),
        unique("recommendations"),
        unique("similar_habits"),
    );
    let dir = tempfile::tempdir().expect("tmp");
    let sql = sql
        .replace(
            "topic = 'course_events'",
            &format!("topic = '{topic}', bounded = 'latest'"),
        )
        .replace("startup = 'group'", "startup = 'earliest'")
        .replace("table = 'course_views'", &format!("table = '{views}'"))
        .replace("table = 'recommendations'", &format!("table = '{recs}'"))
        .replace("table = 'similar_habits'", &format!("table = '{similar}'"))
        .replace("path = 'out/", &format!("path = '{}/", dir.path().display()));
    assert!(
        sql.contains(&topic) && sql.contains(&views) && sql.contains(&recs) && sql.contains(&similar),
        "the shipped query names what the test replaces"
    );
    let opts = gen_opts(120_000, 24);
    produce(&topic, &opts, &[]).await;
    let mut s = session(10_000);
    exec(&mut s, &sql).await;
    crate::support::finish_within(&mut s, std::time::Duration::from_secs(300)).await;
    for q in &s.queries {
        assert!(
            matches!(q.outcome, Some(Ok(ref r)) if r.late == 0 && r.errors == 0),
            "{}: {:?}",
            q.name,
            q.outcome
        );
    }
    let ctx = oracle_ctx(&opts, "ev");
    let want = batch_rows(
        &ctx,
        "SELECT course_id, date_bin(INTERVAL '1 minute', event_time, TIMESTAMP '1970-01-01'), COUNT(*), COUNT(DISTINCT user_id),
                SUM(CASE WHEN purchased THEN 1 ELSE 0 END) FROM ev GROUP BY 1, 2",
    )
    .await;
    let got = hbase_rows(&mut s, &views, THRIFT).await;
    assert_rows_eq(&got, &want, "HBase course_views holds the per-minute counts");

    // Recommendations from the region's bestsellers: exactly the batch answer.
    let read = unique("recs");
    exec(
        &mut s,
        &format!(
            "CREATE TABLE {read} (user_id BIGINT, hesitated_course BIGINT, visit_start TIMESTAMP, suggestion BIGINT,
                                  region VARCHAR, views BIGINT, rank BIGINT, buys BIGINT)
             WITH (connector = 'hbase', table = '{recs}', column_family = 'r',
                   row_key = 'user_id, hesitated_course, visit_start, suggestion');"
        ),
    )
    .await;
    let got = sorted_rows(
        &exec(
            &mut s,
            &format!(
                "SELECT user_id, hesitated_course, visit_start, suggestion, region, views, rank, buys FROM {read};"
            ),
        )
        .await,
    );
    let want = batch_rows(
        &ctx,
        &format!(
            "{RECOMMENDATION_CTES}
             SELECT h.user_id, h.course_id, to_timestamp_millis(h.vs), b.course_id, h.region, h.views, b.rank, b.buys
             FROM hes h JOIN best b ON b.region = h.region AND b.course_id <> h.course_id
              AND b.we >= h.ve AND b.we < h.ve + 60000"
        ),
    )
    .await;
    assert!(
        want.len() > 10,
        "the events have hesitations to recommend for: {}",
        want.len()
    );
    assert_rows_eq(
        &got,
        &want,
        "HBase recommendations hold the regional bestsellers of each hesitation",
    );

    // Suggestions from users with similar habits: the top 3 per hesitation, rows that fell out of the
    // top 3 deleted from HBase.
    let read = unique("similar");
    exec(
        &mut s,
        &format!(
            "CREATE TABLE {read} (user_id BIGINT, hesitated_course BIGINT, visit_start TIMESTAMP, rank BIGINT,
                                  suggestion BIGINT, buyers BIGINT)
             WITH (connector = 'hbase', table = '{similar}', column_family = 's',
                   row_key = 'user_id, hesitated_course, visit_start, rank');"
        ),
    )
    .await;
    let got = sorted_rows(&exec(&mut s, &format!("SELECT * FROM {read};")).await);
    let want = batch_rows(
        &ctx,
        &format!(
            "{RECOMMENDATION_CTES}
             SELECT user_id, course_id, to_timestamp_millis(vs), rank, bought, buyers FROM (
               SELECT h.user_id, h.course_id, h.vs, c.bought, c.buyers,
                      ROW_NUMBER() OVER (PARTITION BY h.user_id, h.course_id, h.vs ORDER BY c.buyers DESC, c.bought) AS rank
               FROM hes h JOIN co c ON c.viewed = h.course_id AND c.he > h.ve AND c.he <= h.ve + 3600000)
             WHERE rank <= 3"
        ),
    )
    .await;
    assert!(want.len() > 10, "similar users bought something: {}", want.len());
    assert_rows_eq(&got, &want, "HBase similar_habits holds the top 3 per hesitation");
}

#[tokio::test]
async fn generate_to_kafka_then_a_kafka_sink_round_trip() {
    if !up("Kafka", KAFKA) {
        return;
    }
    let (input, output) = (unique("gen_in"), unique("sink_out"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_freshet"))
        .args([
            "generate",
            "courses",
            "--events",
            "3000",
            "--seed",
            "5",
            "--kafka",
            KAFKA,
            "--topic",
            &input,
            "--partitions",
            "2",
        ])
        .output()
        .expect("run generate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut s = session(1_000);
    exec(&mut s, &kafka_source("ev", &input)).await;
    kafka::ensure_topic(KAFKA, &output, 2).await.expect("topic");
    exec(
        &mut s,
        &format!(
            "CREATE SINK k WITH (connector = 'kafka', bootstrap_servers = '{KAFKA}', topic = '{output}', key = 'region') AS
             SELECT region, window_start AS ws, COUNT(*) AS n FROM TUMBLE(ev, event_time, INTERVAL '10' SECOND)
             GROUP BY region, window_start, window_end;"
        ),
    )
    .await;
    crate::support::finish_within(&mut s, std::time::Duration::from_secs(300)).await;
    assert!(
        matches!(s.queries[0].outcome, Some(Ok(_))),
        "{:?}",
        s.queries[0].outcome
    );
    exec(
        &mut s,
        &format!(
            "CREATE SOURCE back (region VARCHAR, ws TIMESTAMP NOT NULL, n BIGINT, WATERMARK FOR ws AS ws) WITH (connector = 'kafka',
             bootstrap_servers = '{KAFKA}', topic = '{output}', startup = 'earliest', bounded = 'latest');"
        ),
    )
    .await;
    let rows = streamed(
        &mut s,
        "SELECT SUM(n) AS total, COUNT(*) AS c FROM TUMBLE(back, ws, INTERVAL '1' DAY) GROUP BY window_start",
    )
    .await;
    // Windows near midnight fall on two days: add them up.
    let sums: Vec<Vec<i64>> = rows
        .iter()
        .map(|r| r.split('|').map(|v| v.parse().expect("number")).collect())
        .collect();
    let total: i64 = sums.iter().map(|p| p[0]).sum();
    let count: i64 = sums.iter().map(|p| p[1]).sum();
    assert_eq!(
        total, 3000,
        "every generated event is counted once in the rows read back: {rows:?}"
    );
    assert_eq!(
        count, 14,
        "one row per region and 10-second window (two windows): {rows:?}"
    );
}

#[tokio::test]
async fn collector_moves_a_spooled_file_into_kafka() {
    if !up("Kafka", KAFKA) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let topic = unique("collected");
    kafka::ensure_topic(KAFKA, &topic, 2).await.expect("topic");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.spool]\ntype = \"spool\"\ndir = \"{0}/spool\"\nchannel = \"durable\"\n\
             [channels.durable]\ntype = \"disk\"\ndir = \"{0}/channel\"\n\
             [sinks.kafka]\ntype = \"kafka\"\nchannel = \"durable\"\nbootstrap_servers = \"{KAFKA}\"\ntopic = \"{topic}\"\nkey_field = \"user_id\"\n",
            dir.path().display()
        ),
    )
    .expect("config");
    let opts = gen_opts(20_000, 31);
    std::fs::create_dir_all(dir.path().join("spool")).expect("spool");
    write_events(&dir.path().join("spool/.batch.tmp"), &opts);
    std::fs::rename(
        dir.path().join("spool/.batch.tmp"),
        dir.path().join("spool/batch.jsonl"),
    )
    .expect("rename");
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_freshet"))
        .args(["collect", "--config", config.to_str().expect("utf8")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("collect");
    let done = dir.path().join("spool/batch.jsonl.COMPLETED");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done.exists() {
        assert!(std::time::Instant::now() < deadline, "the spooled file was not taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Count what reached the topic, waiting (with a deadline) for the sink to drain the channel.
    let mut total = 0;
    while total < 20_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {total} of 20000 events reached Kafka"
        );
        let mut s = session(50_000);
        exec(&mut s, &kafka_source("ev", &topic)).await;
        let rows = streamed(
            &mut s,
            "SELECT COUNT(*) AS n FROM TUMBLE(ev, event_time, INTERVAL '1' HOUR) GROUP BY window_start",
        )
        .await;
        total = rows.iter().map(|r| r.parse::<i64>().expect("n")).sum::<i64>();
        assert!(total <= 20_000, "no duplicates without a crash: {total}");
    }
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &agent.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    assert!(
        agent.wait().expect("wait").success(),
        "the agent stops cleanly on SIGTERM"
    );
}

/// With `SET 'table.exec.emit.early-fire.delay'`, early window results held back go out once the
/// delay has passed even when no more rows arrive: a view over a topic whose producer has stopped
/// shows every event's count, though its window never closes (the watermark waits for rows).
#[tokio::test]
async fn held_early_results_go_out_when_the_input_pauses() {
    if !up("Kafka", KAFKA) {
        return;
    }
    let topic = unique("early_pause");
    // 3 000 events 1 ms apart, in windows of an hour that stay open.
    produce(&topic, &gen_opts(3_000, 51), &[]).await;
    let mut s = session(1_000);
    exec(&mut s, "SET 'table.exec.emit.early-fire.delay' = '500 ms';").await;
    exec(
        &mut s,
        &format!(
            "CREATE SOURCE ev ({COURSE_COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{KAFKA}',
             topic = '{topic}', startup = 'earliest');"
        ),
    )
    .await;
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW mv AS SELECT window_start, COUNT(*) AS n
         FROM TUMBLE(ev, event_time, INTERVAL '1' HOUR) GROUP BY window_start, window_end;",
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = sorted_rows(&exec(&mut s, "SELECT SUM(n) FROM mv;").await);
        if rows == ["3000"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 60 s the view shows {rows:?}, not the 3000 events read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exec(&mut s, "DROP MATERIALIZED VIEW mv;").await;
}
