//! Recovery benchmark (`scripts/bench-recovery.sh`, or `cargo bench --bench recovery -- KEYS`): a
//! query holding KEYS groups of state (an updating `GROUP BY user_id, course_id` over the course
//! generator, default 1 000 000 keys) takes a checkpoint; the process state is dropped as a crash
//! would; a new session resumes it. Prints the checkpoint's size, the time to write it, and the time
//! from the restart to the first micro-batch after recovery.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use freshet::engine::query::{EngineConfig, Metrics};
use freshet::session::Session;
use freshet::sql::parser::parse_script;

const SQL: &str = "CREATE SOURCE ev (user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR,
        purchased BOOLEAN, event_time TIMESTAMP NOT NULL,
        WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
    WITH (connector = 'generator', seed = '3');
CREATE SINK per_pair WITH (connector = 'blackhole', format = 'changelog') AS
SELECT user_id, course_id, COUNT(*) AS views, SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
FROM ev GROUP BY user_id, course_id;";

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|es| {
            es.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn start(config: &EngineConfig) -> Session {
    let mut s = Session::new(config.clone());
    for st in parse_script(SQL).expect("sql") {
        s.execute(&st.statement).await.expect("statement");
    }
    s
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this as a quick smoke test.
    let bench = std::env::args().any(|a| a == "--bench");
    let keys: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(if bench { 1_000_000 } else { 20_000 });
    let dir = tempfile::tempdir().expect("tmp");
    let config = EngineConfig {
        checkpoint_dir: Some(dir.path().to_path_buf()),
        // Checkpoints only when asked (the stop below).
        commit_interval: Duration::from_secs(3600),
        ..EngineConfig::default()
    };

    let mut s = start(&config).await;
    let m = s.queries[0].metrics.clone();
    let t0 = Instant::now();
    while Metrics::get(&m.groups) < keys {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "state did not reach {keys} keys"
        );
    }
    let events = Metrics::get(&m.rows_in);
    // Stopping takes a checkpoint; then the session (the process's state) is gone.
    s.stop_all().await;
    let groups = Metrics::get(&m.groups);
    let bytes = m.checkpoint_bytes.load(Ordering::Relaxed);
    let write = Duration::from_micros(m.checkpoint_us.load(Ordering::Relaxed));
    drop(s);
    let on_disk = dir_size(dir.path());

    let t1 = Instant::now();
    let s = start(&config).await;
    let m = s.queries[0].metrics.clone();
    while Metrics::get(&m.batches) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(t1.elapsed() < Duration::from_secs(600), "no batch after the restart");
    }
    let recovered = t1.elapsed();
    let restored_groups = Metrics::get(&m.groups);
    println!("state: {groups} keys after {events} events (restored: {restored_groups} keys)");
    println!(
        "checkpoint: {:.1} MB manifest-counted, {:.1} MB on disk, written in {:.2} s",
        bytes as f64 / 1e6,
        on_disk as f64 / 1e6,
        write.as_secs_f64()
    );
    println!(
        "restart to first micro-batch after recovery: {:.2} s",
        recovered.as_secs_f64()
    );
    assert!(restored_groups >= groups, "the restored query holds its state");
}
