//! A collector agent, configured like a Flume agent: named sources put events into named channels,
//! named sinks take them out. This first cut has a spooling-directory and a stdin source, the durable
//! disk channel, and Kafka, file and logger sinks. A sink commits its take only after the destination
//! acknowledged the events, so when Kafka is unreachable the events stay in the channel and flow when
//! it returns.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use super::channel::{ChannelOptions, DiskChannel, FsyncPolicy, NewEvent};
use crate::connector::kafka;
use crate::error::{Error, Result};

/// The agent's TOML configuration (`freshet collect --config FILE`); see docs/collector.md.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// Complete files dropped into `dir`; a file is read once its size stopped changing, then renamed
    /// to `NAME.COMPLETED` (or deleted with `delete = true`). Names starting with `.` or ending in
    /// `.tmp` are ignored, so writers can create a file elsewhere and rename it in.
    Spool {
        dir: PathBuf,
        channel: String,
        #[serde(default)]
        delete: bool,
        #[serde(default = "default_batch")]
        batch_lines: usize,
    },
    /// Lines from standard input.
    Stdin { channel: String },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ChannelConfig {
    /// The durable disk channel (segments + checkpoint).
    Disk {
        dir: PathBuf,
        /// `batch` (fsync before a put is acknowledged), `never`, or a number of milliseconds.
        #[serde(default = "default_fsync")]
        fsync: String,
        #[serde(default = "default_capacity")]
        capacity: u64,
    },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    Kafka {
        channel: String,
        bootstrap_servers: String,
        topic: String,
        /// A JSON field of each event whose value becomes the record key.
        key_field: Option<String>,
        #[serde(default = "default_batch")]
        batch_size: usize,
    },
    File {
        channel: String,
        path: PathBuf,
        #[serde(default = "default_batch")]
        batch_size: usize,
    },
    Logger {
        channel: String,
    },
}

fn default_batch() -> usize {
    1000
}
fn default_fsync() -> String {
    "batch".into()
}
fn default_capacity() -> u64 {
    1_000_000
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Plan(format!("{}: {e}", path.display())))
    }
}

type Shared = Arc<Mutex<DiskChannel>>;

fn chan_err(e: super::channel::Error) -> Error {
    Error::External(format!("channel: {e}"))
}

fn lock(c: &Shared) -> std::sync::MutexGuard<'_, DiskChannel> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// Put `events`, waiting while the channel is full (backpressure on the source).
fn put(c: &Shared, events: &[NewEvent], stop: &AtomicBool) -> Result<()> {
    loop {
        match lock(c).put_batch(events) {
            Ok(_) => return Ok(()),
            Err(e) if e.is_full() && !stop.load(Ordering::Relaxed) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(chan_err(e)),
        }
    }
}

fn spool(dir: &Path, c: &Shared, delete: bool, batch: usize, stop: &AtomicBool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut sizes: HashMap<PathBuf, u64> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let mut ready = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".COMPLETED") || name.ends_with(".tmp") || !path.is_file() {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            // Never read a file still being written: its size must hold still for one scan.
            if sizes.insert(path.clone(), size) == Some(size) {
                ready.push((path, name));
            }
        }
        for (path, name) in ready {
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            let mut events: Vec<NewEvent> = Vec::with_capacity(batch);
            for line in std::io::BufReader::new(file).split(b'\n') {
                let mut line = line.map_err(|e| Error::io(&path, e))?;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.is_empty() {
                    continue;
                }
                events.push((line, vec![("file".to_string(), name.clone())]));
                if events.len() >= batch {
                    put(c, &events, stop)?;
                    events.clear();
                }
            }
            put(c, &events, stop)?;
            sizes.remove(&path);
            if delete {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            } else {
                let done = path.with_file_name(format!("{name}.COMPLETED"));
                std::fs::rename(&path, &done).map_err(|e| Error::io(&done, e))?;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

fn stdin_source(c: &Shared, stop: &AtomicBool) -> Result<()> {
    let mut events = Vec::new();
    for line in std::io::stdin().lock().split(b'\n') {
        let line = line.map_err(|e| Error::io("<stdin>", e))?;
        if !line.is_empty() {
            events.push((line, vec![]));
        }
        if events.len() >= default_batch() {
            put(c, &events, stop)?;
            events.clear();
        }
    }
    put(c, &events, stop)
}

/// Deliver what the channel holds with `deliver`; commit after success, roll back and back off after
/// failure (the events stay in the channel).
fn drain(c: &Shared, batch: usize, stop: &AtomicBool, mut deliver: impl FnMut(&[super::channel::Event]) -> Result<()>) {
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        let events = match lock(c).take(batch) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("collect: taking from the channel: {e}");
                std::thread::sleep(backoff);
                continue;
            }
        };
        if events.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        match deliver(&events) {
            Ok(()) => {
                if let Err(e) = lock(c).commit() {
                    eprintln!("collect: committing the channel: {e}");
                }
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                lock(c).rollback();
                eprintln!(
                    "collect: {e}; {} events stay in the channel, retrying in {backoff:?}",
                    events.len()
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn key_of(body: &[u8], field: &str) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(match v.get(field)? {
        serde_json::Value::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    })
}

/// Run the agent until `stop` turns true.
pub fn run(config: &AgentConfig, stop: Arc<AtomicBool>) -> Result<()> {
    let mut channels: BTreeMap<String, Shared> = BTreeMap::new();
    for (name, ChannelConfig::Disk { dir, fsync, capacity }) in &config.channels {
        let fsync = match fsync.as_str() {
            "batch" => FsyncPolicy::EveryBatch,
            "never" => FsyncPolicy::Never,
            ms => FsyncPolicy::Interval(Duration::from_millis(ms.parse().map_err(|_| {
                Error::option(
                    format!("channels.{name}.fsync"),
                    format!("'{ms}'; valid: batch, never, or milliseconds"),
                )
            })?)),
        };
        let opts = ChannelOptions {
            capacity_events: *capacity,
            fsync,
            ..ChannelOptions::default()
        };
        let ch = DiskChannel::open(dir, opts).map_err(chan_err)?;
        channels.insert(name.clone(), Arc::new(Mutex::new(ch)));
    }
    let channel = |owner: &str, name: &str| -> Result<Shared> {
        channels.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = channels.keys().map(String::as_str).collect();
            Error::option(
                format!("{owner}.channel"),
                format!("no channel '{name}'; channels: {}", known.join(", ")),
            )
        })
    };
    let mut threads: Vec<std::thread::JoinHandle<Result<()>>> = Vec::new();
    for (name, src) in &config.sources {
        let stop = stop.clone();
        match src {
            SourceConfig::Spool {
                dir,
                channel: ch,
                delete,
                batch_lines,
            } => {
                let (c, dir, delete, batch) = (
                    channel(&format!("sources.{name}"), ch)?,
                    dir.clone(),
                    *delete,
                    *batch_lines,
                );
                threads.push(std::thread::spawn(move || spool(&dir, &c, delete, batch.max(1), &stop)));
            }
            SourceConfig::Stdin { channel: ch } => {
                let c = channel(&format!("sources.{name}"), ch)?;
                threads.push(std::thread::spawn(move || stdin_source(&c, &stop)));
            }
        }
    }
    for (name, sink) in &config.sinks {
        let stop = stop.clone();
        match sink {
            SinkConfig::Kafka {
                channel: ch,
                bootstrap_servers,
                topic,
                key_field,
                batch_size,
            } => {
                let c = channel(&format!("sinks.{name}"), ch)?;
                let producer = kafka::producer(bootstrap_servers, &[])?;
                let (topic, key_field, batch) = (topic.clone(), key_field.clone(), *batch_size);
                threads.push(std::thread::spawn(move || {
                    drain(&c, batch.max(1), &stop, |events| {
                        for e in events {
                            let key = key_field.as_deref().and_then(|f| key_of(&e.body, f));
                            kafka::send(&producer, &topic, key.as_deref(), &e.body)?;
                        }
                        kafka::flush(&producer)
                    });
                    Ok(())
                }));
            }
            SinkConfig::File {
                channel: ch,
                path,
                batch_size,
            } => {
                let (c, path, batch) = (channel(&format!("sinks.{name}"), ch)?, path.clone(), *batch_size);
                threads.push(std::thread::spawn(move || {
                    drain(&c, batch.max(1), &stop, |events| {
                        let mut f = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)
                            .map_err(|e| Error::io(&path, e))?;
                        let mut buf = Vec::new();
                        for e in events {
                            buf.extend_from_slice(&e.body);
                            buf.push(b'\n');
                        }
                        f.write_all(&buf)
                            .and_then(|_| f.sync_data())
                            .map_err(|e| Error::io(&path, e))
                    });
                    Ok(())
                }));
            }
            SinkConfig::Logger { channel: ch } => {
                let c = channel(&format!("sinks.{name}"), ch)?;
                threads.push(std::thread::spawn(move || {
                    drain(&c, default_batch(), &stop, |events| {
                        for e in events {
                            println!("event {}: {}", e.id, String::from_utf8_lossy(&e.body));
                        }
                        Ok(())
                    });
                    Ok(())
                }));
            }
        }
    }
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(Error::Internal("a collector thread panicked".into()));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_unknown_keys_and_names_them() {
        let bad = "[sources.s]\ntype = \"spool\"\ndir = \"x\"\nchannel = \"c\"\nspeed = 3\n";
        let e = toml::from_str::<AgentConfig>(bad).expect_err("unknown key");
        assert!(e.to_string().contains("speed"), "{e}");
        let e =
            toml::from_str::<AgentConfig>("[sinks.k]\ntype = \"carrier-pigeon\"\nchannel = \"c\"\n").expect_err("type");
        assert!(e.to_string().contains("carrier-pigeon"), "{e}");
    }

    #[test]
    fn spool_to_disk_channel_to_file_sink() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg: AgentConfig = toml::from_str(&format!(
            "[sources.in]\ntype = \"spool\"\ndir = \"{0}/spool\"\nchannel = \"d\"\nbatch_lines = 7\n\
             [channels.d]\ntype = \"disk\"\ndir = \"{0}/chan\"\n\
             [sinks.out]\ntype = \"file\"\nchannel = \"d\"\npath = \"{0}/out.jsonl\"\nbatch_size = 5\n",
            dir.path().display()
        ))
        .expect("config");
        std::fs::create_dir_all(dir.path().join("spool")).expect("mkdir");
        let lines: Vec<String> = (0..53).map(|i| format!("{{\"n\":{i}}}")).collect();
        std::fs::write(dir.path().join("spool/a.tmp"), lines.join("\n") + "\n").expect("write");
        std::fs::rename(dir.path().join("spool/a.tmp"), dir.path().join("spool/a.jsonl")).expect("rename");
        let stop = Arc::new(AtomicBool::new(false));
        let agent = {
            let stop = stop.clone();
            std::thread::spawn(move || run(&cfg, stop))
        };
        let out = dir.path().join("out.jsonl");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&out).map(|s| s.lines().count()).unwrap_or(0) < 53 {
            assert!(std::time::Instant::now() < deadline, "events did not arrive");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        agent.join().expect("join").expect("agent");
        let got = std::fs::read_to_string(&out).expect("out");
        assert_eq!(got.lines().collect::<Vec<_>>(), lines, "every line once, in order");
        assert!(
            dir.path().join("spool/a.jsonl.COMPLETED").exists(),
            "the spooled file is marked done"
        );
    }
}
