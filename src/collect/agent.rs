//! A collector agent, configured like a Flume agent (docs/collector.md): named sources hand events
//! through their interceptor chains into named channels; named sinks take them out and commit only after
//! the destination acknowledged them, so when Kafka is unreachable events stay in the channel and flow
//! when it returns. Delivery is at least once; channel ids let a consumer spot redelivery.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::channel::{ChannelOptions, DiskChannel, Event, FsyncPolicy};
use super::http::{self, HttpSource};
use super::intake::{ChannelHandle, Intake, MemoryChannel, Metrics, SinkMetrics, default_max_event_bytes};
use super::interceptor::{Chain, InterceptorConfig};
use super::source;
use super::tail::{self, TailConfig};
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
    pub metrics: Option<MetricsConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` serving `GET /metrics` (Prometheus text format).
    pub listen: String,
}

/// Keys every source has (repeated in each variant: serde cannot flatten with `deny_unknown_fields`).
macro_rules! source_config {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty $(= $default:literal)?),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub channel: String,
            /// Interceptors, applied in order.
            #[serde(default)]
            pub interceptors: Vec<InterceptorConfig>,
            /// Channel receiving rejected events (header `freshet.error` holds the reason).
            pub dead_letter: Option<String>,
            #[serde(default = "default_max_event_bytes")]
            pub max_event_bytes: usize,
            $($(#[$fdoc])* $(#[serde(default = $default)])? pub $field: $ty,)*
        }
    };
}

source_config!(
    /// Complete files dropped into `dir`.
    SpoolConfig {
        dir: PathBuf,
        /// Delete a file once read (otherwise rename it to `NAME.COMPLETED`).
        delete: bool = "no",
        batch_lines: usize = "default_batch",
    }
);
source_config!(
    /// `POST` JSON lines or a JSON array.
    HttpConfig {
        listen: String,
        path: String = "default_path",
        max_body_bytes: usize = "default_max_body",
        busy_timeout_ms: u64 = "default_busy_timeout",
        /// Require `Authorization: Bearer TOKEN` on every request but `/health`.
        token: Option<String> = "none",
        /// The name of an environment variable holding the token (keeps it out of the file).
        token_env: Option<String> = "none",
        /// Listen beyond loopback without a token (a public beacon endpoint: events are data).
        allow_unauthenticated: bool = "no",
        /// Requests served at once; more get 503 with `Retry-After`.
        max_concurrent_requests: usize = "default_max_concurrent",
        /// Time to send a request's headers and body (408 past it).
        request_timeout_ms: u64 = "default_request_timeout",
    }
);
source_config!(
    /// Newline-terminated events on TCP connections.
    TcpConfig {
        listen: String,
        ack: bool = "no",
        batch_lines: usize = "default_batch",
    }
);
source_config!(
    /// Lines of standard input.
    StdinConfig {
        batch_lines: usize = "default_batch",
    }
);

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    Spool(SpoolConfig),
    Tail(TailConfig),
    Http(HttpConfig),
    Tcp(TcpConfig),
    Stdin(StdinConfig),
}

impl SourceConfig {
    fn common(&self) -> (&str, &[InterceptorConfig], Option<&str>, usize) {
        macro_rules! common {
            ($c:expr) => {
                (
                    $c.channel.as_str(),
                    $c.interceptors.as_slice(),
                    $c.dead_letter.as_deref(),
                    $c.max_event_bytes,
                )
            };
        }
        match self {
            SourceConfig::Spool(c) => common!(c),
            SourceConfig::Tail(c) => common!(c),
            SourceConfig::Http(c) => common!(c),
            SourceConfig::Tcp(c) => common!(c),
            SourceConfig::Stdin(c) => common!(c),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ChannelConfig {
    /// The durable disk channel (segments + checkpoint).
    Disk {
        dir: PathBuf,
        /// `batch` (fsync before a put is acknowledged), `never`, or the interval: a number of
        /// milliseconds or a duration (`100ms`, `1s`).
        #[serde(default = "default_fsync")]
        fsync: String,
        #[serde(default = "default_capacity")]
        capacity: u64,
        /// Bytes per segment file.
        #[serde(default = "default_segment_bytes")]
        segment_bytes: u64,
    },
    /// In memory: lost when the agent stops.
    Memory {
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
        #[serde(default = "default_kafka_batch")]
        batch_size: usize,
        /// How long a batch may wait for Kafka's acknowledgement before it is retried.
        #[serde(default = "default_delivery_timeout")]
        delivery_timeout_ms: u64,
        /// librdkafka producer properties.
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
    /// Rolling files of JSON lines in `dir`.
    File {
        channel: String,
        dir: PathBuf,
        #[serde(default = "default_prefix")]
        prefix: String,
        #[serde(default = "default_roll_bytes")]
        roll_bytes: u64,
        #[serde(default = "default_roll_seconds")]
        roll_seconds: u64,
        #[serde(default = "default_batch")]
        batch_size: usize,
    },
    Logger {
        channel: String,
    },
}

fn no() -> bool {
    false
}
fn default_batch() -> usize {
    1000
}
fn default_kafka_batch() -> usize {
    5000
}
fn none<T>() -> Option<T> {
    None
}
fn default_max_concurrent() -> usize {
    64
}
fn default_request_timeout() -> u64 {
    30_000
}
fn default_path() -> String {
    "/events".into()
}
fn default_max_body() -> usize {
    16 << 20
}
fn default_busy_timeout() -> u64 {
    5000
}
fn default_fsync() -> String {
    "batch".into()
}
fn default_capacity() -> u64 {
    1_000_000
}
fn default_segment_bytes() -> u64 {
    64 << 20
}
fn default_delivery_timeout() -> u64 {
    30_000
}
fn default_prefix() -> String {
    "events".into()
}
fn default_roll_bytes() -> u64 {
    128 << 20
}
fn default_roll_seconds() -> u64 {
    3600
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|e| match e {
            Error::Plan(m) => Error::Plan(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Plan(e.to_string().trim_end().to_string()))
    }

    /// Check what can be checked without opening anything (`freshet collect --check`, and the first
    /// thing `Agent::start` does): every channel named exists, each channel feeds exactly one sink,
    /// interceptors compile, sizes and paths make sense. Errors name the key.
    pub fn validate(&self) -> Result<()> {
        let known = || self.channels.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
        let exists = |key: String, name: &str| -> Result<()> {
            if self.channels.contains_key(name) {
                Ok(())
            } else {
                Err(Error::option(
                    key,
                    format!("no channel '{name}'; channels: {}", known()),
                ))
            }
        };
        let mut fed_by: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, sink) in &self.sinks {
            let ch = sink.channel();
            exists(format!("sinks.{name}.channel"), ch)?;
            if let Some(other) = fed_by.insert(ch, name) {
                return Err(Error::option(
                    format!("sinks.{name}.channel"),
                    format!("channel '{ch}' already feeds sink '{other}'; a channel has one sink"),
                ));
            }
        }
        for name in self.channels.keys() {
            if !fed_by.contains_key(name.as_str()) {
                eprintln!("warning: channels.{name}: no sink takes from this channel; its events never leave");
            }
        }
        for (name, src) in &self.sources {
            let (ch, interceptors, dead_letter, max_event_bytes) = src.common();
            let key = format!("sources.{name}");
            exists(format!("{key}.channel"), ch)?;
            if let Some(d) = dead_letter {
                exists(format!("{key}.dead_letter"), d)?;
            }
            Chain::new(interceptors, &format!("{key}.interceptors"))?;
            if max_event_bytes == 0 {
                return Err(Error::option(format!("{key}.max_event_bytes"), "must be at least 1"));
            }
            if let SourceConfig::Http(c) = src
                && !c.path.starts_with('/')
            {
                return Err(Error::option(format!("{key}.path"), "must start with '/'"));
            }
        }
        Ok(())
    }
}

impl SinkConfig {
    fn channel(&self) -> &str {
        match self {
            SinkConfig::Kafka { channel, .. } | SinkConfig::File { channel, .. } | SinkConfig::Logger { channel } => {
                channel
            }
        }
    }
}

/// A running agent: its threads, the addresses its listeners bound, its metrics.
pub struct Agent {
    stop: Arc<AtomicBool>,
    threads: Vec<(String, std::thread::JoinHandle<Result<()>>)>,
    /// Threads that may block where `stop` cannot reach (stdin); not waited for.
    detached: Vec<std::thread::JoinHandle<Result<()>>>,
    /// Bound address of each listener: `sources.NAME` or `metrics`.
    pub addrs: BTreeMap<String, SocketAddr>,
    pub metrics: Arc<Metrics>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// An HTTP source's token: `token`, or the variable `token_env` names (which must be set).
fn http_token(c: &HttpConfig, key: &str) -> Result<Option<String>> {
    let token = match (&c.token, &c.token_env) {
        (Some(_), Some(_)) => {
            return Err(Error::option(
                format!("{key}.token_env"),
                "set `token` or `token_env`, not both",
            ));
        }
        (Some(t), None) => Some(t.clone()),
        (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
            Error::option(
                format!("{key}.token_env"),
                format!("the environment variable {var} is not set"),
            )
        })?),
        (None, None) => None,
    };
    match token {
        Some(t) if t.is_empty() => Err(Error::option(format!("{key}.token"), "must not be empty")),
        t => Ok(t),
    }
}

/// `channels.NAME.fsync`: `batch`, `never`, or the interval as milliseconds (`100`) or a duration
/// (`100ms`, `1s`).
fn fsync_policy(name: &str, text: &str) -> Result<FsyncPolicy> {
    Ok(match text {
        "batch" => FsyncPolicy::EveryBatch,
        "never" => FsyncPolicy::Never,
        interval => {
            let ms = crate::time::parse_duration_ms(interval).ok_or_else(|| {
                Error::option(
                    format!("channels.{name}.fsync"),
                    format!("'{interval}'; valid: batch, never, or an interval (milliseconds, or e.g. 100ms, 1s)"),
                )
            })?;
            FsyncPolicy::Interval(Duration::from_millis(ms.unsigned_abs())) // never negative
        }
    })
}

fn open_channel(name: &str, cfg: &ChannelConfig) -> Result<Arc<ChannelHandle>> {
    match cfg {
        ChannelConfig::Disk {
            dir,
            fsync,
            capacity,
            segment_bytes,
        } => {
            let fsync = fsync_policy(name, fsync)?;
            let opts = ChannelOptions {
                capacity_events: *capacity,
                fsync,
                segment_bytes: *segment_bytes,
            };
            let ch = DiskChannel::open(dir, opts).map_err(|e| Error::External(format!("channels.{name}: {e}")))?;
            if let Some(t) = ch.recovery() {
                eprintln!(
                    "collect: channel '{name}': recovered; cut {} bytes at {}:{}: {}",
                    t.bytes,
                    t.file.display(),
                    t.offset,
                    t.reason
                );
            }
            Ok(ChannelHandle::new(name, Box::new(ch)))
        }
        ChannelConfig::Memory { capacity } => Ok(ChannelHandle::new(name, Box::new(MemoryChannel::new(*capacity)))),
    }
}

impl Agent {
    /// Open the channels, bind the listeners and start every source and sink. Errors here (a bad key, a
    /// port in use, a locked channel) leave nothing running.
    pub fn start(config: &AgentConfig, stop: Arc<AtomicBool>) -> Result<Agent> {
        config.validate()?;
        let mut channels: BTreeMap<String, Arc<ChannelHandle>> = BTreeMap::new();
        for (name, cfg) in &config.channels {
            channels.insert(name.clone(), open_channel(name, cfg)?);
        }
        let channel = |key: String, name: &str| -> Result<Arc<ChannelHandle>> {
            channels.get(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = channels.keys().map(String::as_str).collect();
                Error::option(key, format!("no channel '{name}'; channels: {}", known.join(", ")))
            })
        };
        let mut intakes = Vec::new();
        for (name, src) in &config.sources {
            let (ch, interceptors, dead_letter, max_event_bytes) = src.common();
            let key = format!("sources.{name}");
            let chain = Chain::new(interceptors, &format!("{key}.interceptors"))?;
            let ch = channel(format!("{key}.channel"), ch)?;
            let dl = dead_letter
                .map(|d| channel(format!("{key}.dead_letter"), d))
                .transpose()?;
            intakes.push((
                name.clone(),
                Arc::new(Intake::new(name, chain, ch, dl, max_event_bytes)),
                src,
            ));
        }
        let needs_runtime =
            config.metrics.is_some() || config.sources.values().any(|s| matches!(s, SourceConfig::Http(_)));
        let runtime = if needs_runtime {
            Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("collect-http")
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Internal(format!("starting the HTTP runtime: {e}")))?,
            )
        } else {
            None
        };
        let mut agent = Agent {
            stop: stop.clone(),
            threads: Vec::new(),
            detached: Vec::new(),
            addrs: BTreeMap::new(),
            metrics: Arc::new(Metrics::default()),
            runtime: None,
        };
        // Listeners first, so a port in use fails before any thread starts.
        let mut tcp_listeners = BTreeMap::new();
        let mut metrics = Metrics {
            sources: intakes.iter().map(|(n, i, _)| (n.clone(), i.metrics.clone())).collect(),
            channels: channels.values().cloned().collect(),
            sinks: Vec::new(),
        };
        for (name, _, src) in &intakes {
            if let SourceConfig::Tcp(c) = src {
                let l = std::net::TcpListener::bind(&c.listen).map_err(|e| {
                    Error::option(format!("sources.{name}.listen"), format!("binding {}: {e}", c.listen))
                })?;
                let addr = l.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
                agent.addrs.insert(format!("sources.{name}"), addr);
                tcp_listeners.insert(name.clone(), l);
            }
        }
        let mut sinks = Vec::new();
        for (name, sink) in &config.sinks {
            let m = Arc::new(SinkMetrics::default());
            metrics.sinks.push((name.clone(), m.clone()));
            sinks.push((name, sink, m));
        }
        let metrics = Arc::new(metrics);
        agent.metrics = metrics.clone();
        if let Some(rt) = &runtime {
            for (name, intake, src) in &intakes {
                if let SourceConfig::Http(c) = src {
                    let key = format!("sources.{name}");
                    let token = http_token(c, &key)?;
                    let limits = crate::guard::Limits {
                        token: token.clone(),
                        server_names: None,
                        max_body: c.max_body_bytes,
                        request_timeout: Duration::from_millis(c.request_timeout_ms.max(1)),
                        max_concurrent: c.max_concurrent_requests.max(1),
                        ..crate::guard::Limits::default()
                    };
                    let app = http::source_router(
                        Arc::new(HttpSource {
                            intake: intake.clone(),
                            busy_timeout: Duration::from_millis(c.busy_timeout_ms),
                            stop: stop.clone(),
                        }),
                        &c.path,
                        limits.clone(),
                    );
                    let listen = http::Listen {
                        addr: &c.listen,
                        key: &format!("{key}.listen"),
                        loopback_only: (token.is_none() && !c.allow_unauthenticated).then_some(
                            "set `token` or `token_env` (or `allow_unauthenticated = true` for a public endpoint)",
                        ),
                        header_timeout: limits.request_timeout,
                        max_connections: limits.max_concurrent.saturating_mul(4),
                    };
                    let (addr, _) = http::serve(rt, listen, app, stop.clone())?;
                    agent.addrs.insert(key, addr);
                }
            }
            if let Some(m) = &config.metrics {
                let listen = http::Listen {
                    addr: &m.listen,
                    key: "metrics.listen",
                    loopback_only: None,
                    header_timeout: Duration::from_secs(30),
                    max_connections: 64,
                };
                let (addr, _) = http::serve(rt, listen, http::metrics_router(metrics.clone()), stop.clone())?;
                agent.addrs.insert("metrics".into(), addr);
            }
        }
        agent.runtime = runtime;
        for (name, intake, src) in intakes {
            let stop = stop.clone();
            let label = format!("source {name}");
            let handle = match src {
                SourceConfig::Spool(c) => {
                    let c = c.clone();
                    std::thread::spawn(move || source::spool(&c.dir, &intake, c.delete, c.batch_lines, &stop))
                }
                SourceConfig::Tail(c) => {
                    let c = c.clone();
                    std::thread::spawn(move || tail::run(&c, &intake, &stop))
                }
                SourceConfig::Tcp(c) => {
                    let Some(l) = tcp_listeners.remove(&name) else { continue };
                    let (ack, batch) = (c.ack, c.batch_lines);
                    std::thread::spawn(move || source::tcp(l, intake, batch, ack, stop))
                }
                SourceConfig::Stdin(c) => {
                    let batch = c.batch_lines;
                    agent
                        .detached
                        .push(std::thread::spawn(move || source::stdin(&intake, batch, &stop)));
                    continue;
                }
                SourceConfig::Http(_) => continue,
            };
            agent.threads.push((label, handle));
        }
        for (name, sink, m) in sinks {
            let stop = stop.clone();
            let label = format!("sink {name}");
            let key = format!("sinks.{name}");
            let handle = match sink {
                SinkConfig::Kafka {
                    channel: ch,
                    bootstrap_servers,
                    topic,
                    key_field,
                    batch_size,
                    delivery_timeout_ms,
                    properties,
                } => {
                    let c = channel(format!("{key}.channel"), ch)?;
                    let mut props: Vec<(String, String)> = vec![
                        ("message.timeout.ms".into(), delivery_timeout_ms.to_string()),
                        // The sink waits for each batch's acknowledgements before the next: a long
                        // linger only adds to every batch.
                        ("linger.ms".into(), "2".into()),
                        ("batch.size".into(), "1000000".into()),
                    ];
                    props.extend(properties.iter().map(|(k, v)| (k.clone(), v.clone())));
                    let mut out = KafkaOut {
                        brokers: bootstrap_servers.clone(),
                        props,
                        producer: None,
                        topic: topic.clone(),
                        key_field: key_field.clone(),
                        wait: Duration::from_millis(*delivery_timeout_ms + 5000),
                    };
                    out.producer()?;
                    let batch = *batch_size;
                    std::thread::spawn(move || {
                        drain(&c, batch, &m, &stop, |events| out.deliver(events));
                        Ok(())
                    })
                }
                SinkConfig::File {
                    channel: ch,
                    dir,
                    prefix,
                    roll_bytes,
                    roll_seconds,
                    batch_size,
                } => {
                    let c = channel(format!("{key}.channel"), ch)?;
                    let mut out = RollingFile::open(dir, prefix, *roll_bytes, Duration::from_secs(*roll_seconds))?;
                    let batch = *batch_size;
                    std::thread::spawn(move || {
                        drain(&c, batch, &m, &stop, |events| out.write(events));
                        out.close()
                    })
                }
                SinkConfig::Logger { channel: ch } => {
                    let c = channel(format!("{key}.channel"), ch)?;
                    std::thread::spawn(move || {
                        drain(&c, default_batch(), &m, &stop, |events| {
                            let mut out = std::io::stdout().lock();
                            for e in events {
                                let headers: Vec<String> = e.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
                                writeln!(
                                    out,
                                    "event {} [{}]: {}",
                                    e.id,
                                    headers.join(" "),
                                    String::from_utf8_lossy(&e.body)
                                )
                                .map_err(|e| Error::io("<stdout>", e))?;
                            }
                            Ok(())
                        });
                        Ok(())
                    })
                }
            };
            agent.threads.push((label, handle));
        }
        // Interval fsync of idle disk channels.
        let chans: Vec<Arc<ChannelHandle>> = channels.values().cloned().collect();
        agent.threads.push((
            "channel timer".into(),
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    for c in &chans {
                        if let Err(e) = c.tick() {
                            eprintln!("collect: {e}");
                        }
                    }
                }
                Ok(())
            }),
        ));
        Ok(agent)
    }

    /// Wait until every thread ended (after `stop`, or a source's fatal error, which stops the rest).
    pub fn wait(self) -> Result<()> {
        let mut first_error = None;
        let mut threads = self.threads;
        while !threads.is_empty() {
            let mut i = 0;
            while i < threads.len() {
                if threads[i].1.is_finished() {
                    let (label, t) = threads.swap_remove(i);
                    let result = t
                        .join()
                        .unwrap_or_else(|_| Err(Error::Internal(format!("{label} panicked"))));
                    if let Err(e) = result {
                        eprintln!("collect: {label}: {e}");
                        self.stop.store(true, Ordering::Relaxed);
                        first_error.get_or_insert(e);
                    }
                } else {
                    i += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for t in self.detached {
            if t.is_finished()
                && let Ok(Err(e)) = t.join()
            {
                first_error.get_or_insert(e);
            }
        }
        if let Some(rt) = self.runtime {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        first_error.map_or(Ok(()), Err)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Run the agent until `stop` turns true.
pub fn run(config: &AgentConfig, stop: Arc<AtomicBool>) -> Result<()> {
    let agent = Agent::start(config, stop)?;
    for (what, addr) in &agent.addrs {
        eprintln!("collect: {what} listening on {addr}");
    }
    agent.wait()
}

/// Deliver what the channel holds with `deliver`; commit after success, roll back and back off after
/// failure (the events stay in the channel).
fn drain(
    c: &ChannelHandle,
    batch: usize,
    m: &SinkMetrics,
    stop: &AtomicBool,
    mut deliver: impl FnMut(&[Event]) -> Result<()>,
) {
    let mut backoff = Duration::from_millis(100);
    let batch = batch.max(1);
    while !stop.load(Ordering::Relaxed) {
        let events = match c.take(batch, Duration::from_millis(100)) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("collect: {e}");
                std::thread::sleep(backoff);
                continue;
            }
        };
        if events.is_empty() {
            continue;
        }
        match deliver(&events) {
            Ok(()) => {
                if let Err(e) = c.commit() {
                    eprintln!("collect: {e}");
                }
                m.sent.fetch_add(events.len() as u64, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                c.rollback();
                m.failed.fetch_add(events.len() as u64, Ordering::Relaxed);
                eprintln!(
                    "collect: channel '{}': {e}; {} events stay in the channel, retrying in {backoff:?}",
                    c.name,
                    events.len()
                );
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The record key: a top-level field of the JSON body (strings without quotes, others as their JSON
/// text). One pass: the wanted value is taken raw, every other value skipped unbuilt.
fn key_of(body: &[u8], field: &str) -> Option<Vec<u8>> {
    use serde::Deserializer as _;
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    use serde_json::value::RawValue;

    /// Deserializes a key to whether it is the wanted one (no allocation for unescaped keys).
    struct IsField<'f>(&'f str);
    impl<'de> DeserializeSeed<'de> for IsField<'_> {
        type Value = bool;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<bool, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl Visitor<'_> for IsField<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a field name")
        }
        fn visit_str<E>(self, v: &str) -> std::result::Result<bool, E> {
            Ok(v == self.0)
        }
    }
    /// The object, to the raw value of the wanted field.
    struct Find<'f>(&'f str);
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = Option<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(is) = map.next_key_seed(IsField(self.0))? {
                if is && found.is_none() {
                    found = Some(map.next_value::<&RawValue>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = (&mut de).deserialize_map(Find(field)).ok()??;
    de.end().ok()?;
    let text = raw.get();
    if text.starts_with('"') {
        serde_json::from_str::<String>(text).ok().map(String::into_bytes)
    } else {
        Some(text.as_bytes().to_vec())
    }
}

/// Header carrying the channel id of an event in Kafka, so consumers can spot redelivery.
pub const ID_HEADER: &str = "freshet.id";

struct KafkaOut {
    brokers: String,
    props: Vec<(String, String)>,
    producer: Option<rdkafka::producer::BaseProducer<kafka::DeliveryErrors>>,
    topic: String,
    key_field: Option<String>,
    wait: Duration,
}

impl KafkaOut {
    fn producer(&mut self) -> Result<&rdkafka::producer::BaseProducer<kafka::DeliveryErrors>> {
        if self.producer.is_none() {
            self.producer = Some(kafka::producer(&self.brokers, &self.props)?);
        }
        self.producer
            .as_ref()
            .ok_or_else(|| Error::Internal("no producer".into()))
    }

    fn deliver(&mut self, events: &[Event]) -> Result<()> {
        use rdkafka::message::{Header, OwnedHeaders};
        let (topic, key_field, wait) = (self.topic.clone(), self.key_field.clone(), self.wait);
        let p = self.producer()?;
        let result = (|| {
            for e in events {
                let key = key_field.as_deref().and_then(|f| key_of(&e.body, f));
                let id = e.id.to_string();
                let mut headers = OwnedHeaders::new_with_capacity(e.headers.len() + 1).insert(Header {
                    key: ID_HEADER,
                    value: Some(id.as_bytes()),
                });
                for (k, v) in &e.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                kafka::send_with_headers(p, &topic, key.as_deref(), &e.body, Some(headers))?;
            }
            kafka::flush_within(p, wait)
        })();
        if result.is_err() {
            use rdkafka::client::Client;
            let client: &Client<_> = rdkafka::producer::Producer::client(p);
            if let Some(fatal) = client.fatal_error() {
                // An idempotent producer can end in a fatal state (e.g. after timeouts); start afresh.
                eprintln!("collect: kafka producer failed fatally ({fatal:?}); creating a new one");
                self.producer = None;
            }
        }
        result
    }
}

/// Rolling files of JSON lines: `PREFIX-<unix ms>-<n>.jsonl`, written as `….jsonl.tmp` and renamed when
/// rolled (by size or age) or when the sink stops, so readers only ever see complete files. A `.tmp` left
/// by a crash is completed at the next start.
struct RollingFile {
    dir: PathBuf,
    prefix: String,
    roll_bytes: u64,
    roll_after: Duration,
    current: Option<(PathBuf, std::fs::File, u64, Instant)>,
    seq: u64,
}

impl RollingFile {
    fn open(dir: &Path, prefix: &str, roll_bytes: u64, roll_after: Duration) -> Result<RollingFile> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{prefix}-"))
                && let Some(done) = name.strip_suffix(".tmp")
            {
                std::fs::rename(entry.path(), dir.join(done)).map_err(|e| Error::io(entry.path(), e))?;
            }
        }
        Ok(RollingFile {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            roll_bytes,
            roll_after,
            current: None,
            seq: 0,
        })
    }

    fn write(&mut self, events: &[Event]) -> Result<()> {
        if let Some((_, _, bytes, since)) = &self.current
            && (*bytes >= self.roll_bytes || (!self.roll_after.is_zero() && since.elapsed() >= self.roll_after))
        {
            self.close()?;
        }
        if self.current.is_none() {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            self.seq += 1;
            let path = self.dir.join(format!("{}-{ms}-{}.jsonl.tmp", self.prefix, self.seq));
            let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
            self.current = Some((path, f, 0, Instant::now()));
        }
        let Some((path, f, bytes, _)) = self.current.as_mut() else {
            return Err(Error::Internal("no current file".into()));
        };
        let mut buf = Vec::new();
        for e in events {
            buf.extend_from_slice(&e.body);
            buf.push(b'\n');
        }
        f.write_all(&buf)
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::io(&*path, e))?;
        *bytes += buf.len() as u64;
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some((path, _, _, _)) = self.current.take() {
            let done = path.with_extension("");
            std::fs::rename(&path, &done).map_err(|e| Error::io(&done, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn fsync_is_batch_never_or_an_interval() {
        let p = |t: &str| fsync_policy("d", t);
        assert_eq!(p("batch").expect("batch"), FsyncPolicy::EveryBatch);
        assert_eq!(p("never").expect("never"), FsyncPolicy::Never);
        let ms = |n| FsyncPolicy::Interval(Duration::from_millis(n));
        assert_eq!(
            p("250").expect("a number"),
            ms(250),
            "a bare number is milliseconds, as before"
        );
        assert_eq!(p("250ms").expect("ms"), ms(250));
        assert_eq!(p("1s").expect("s"), ms(1000));
        let e = p("soon").expect_err("not a duration").to_string();
        assert!(e.contains("channels.d.fsync") && e.contains("'soon'"), "{e}");
        assert!(p("-5").is_err());
    }

    #[test]
    fn record_keys_come_from_a_top_level_field() {
        let key = |b: &str, f: &str| key_of(b.as_bytes(), f).map(|k| String::from_utf8(k).expect("utf-8"));
        assert_eq!(
            key(r#"{"user_id":42,"x":{"user_id":1}}"#, "user_id").as_deref(),
            Some("42")
        );
        assert_eq!(key(r#"{"u":"a\"b","n":null}"#, "u").as_deref(), Some("a\"b"));
        assert_eq!(key(r#"{"u":[1, 2]}"#, "u").as_deref(), Some("[1, 2]"));
        assert_eq!(key(r#"{"u":1}"#, "v"), None);
        assert_eq!(key("not json", "u"), None);
    }

    #[test]
    fn the_shipped_example_validates_and_mistakes_name_their_key() {
        let example = include_str!("../../examples/collector/course_events.toml");
        AgentConfig::parse(example).expect("parses").validate().expect("valid");
        let e = AgentConfig::parse(&example.replace("dead_letter = \"rejected\"", "dead_letter = \"nope\""))
            .expect("parses")
            .validate()
            .expect_err("unknown dead-letter channel");
        assert!(
            e.to_string().contains("dead_letter") && e.to_string().contains("'nope'"),
            "{e}"
        );
        let e = AgentConfig::parse(&example.replace("channel = \"rejected\"", "channel = \"durable\""))
            .expect("parses")
            .validate()
            .expect_err("two sinks on one channel");
        assert!(e.to_string().contains("a channel has one sink"), "{e}");
    }

    #[test]
    fn config_rejects_unknown_keys_and_names_them() {
        let bad = "[sources.s]\ntype = \"spool\"\ndir = \"x\"\nchannel = \"c\"\nspeed = 3\n";
        let e = AgentConfig::parse(bad).expect_err("unknown key");
        assert!(e.to_string().contains("speed"), "{e}");
        let e = AgentConfig::parse("[sinks.k]\ntype = \"carrier-pigeon\"\nchannel = \"c\"\n").expect_err("type");
        assert!(e.to_string().contains("carrier-pigeon"), "{e}");
        let e = AgentConfig::parse("[sources.h]\ntype = \"http\"\nlisten = \"x\"\nchannel = \"c\"\nmax_body = 1\n")
            .expect_err("unknown http key");
        assert!(e.to_string().contains("max_body"), "{e}");
        let cfg =
            AgentConfig::parse("[sources.s]\ntype = \"stdin\"\nchannel = \"nope\"\n[channels.m]\ntype = \"memory\"\n")
                .expect("parses");
        let e = Agent::start(&cfg, Arc::default()).err().expect("unknown channel");
        assert!(
            e.to_string().contains("sources.s.channel") && e.to_string().contains("no channel 'nope'"),
            "{e}"
        );
    }

    fn start(toml: &str) -> (Agent, Arc<AtomicBool>) {
        let cfg = AgentConfig::parse(toml).expect("config");
        let stop = Arc::new(AtomicBool::new(false));
        (Agent::start(&cfg, stop.clone()).expect("start"), stop)
    }

    fn lines_in(dir: &Path) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One HTTP/1.1 request; returns (status, body).
    fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).expect("write");
        s.write_all(body).expect("write");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("read");
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn spool_to_disk_channel_to_rolling_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("spool")).expect("mkdir");
        let lines: Vec<String> = (0..53).map(|i| format!("{{\"n\":{i}}}")).collect();
        std::fs::write(dir.path().join("spool/a.tmp"), lines.join("\n") + "\n").expect("write");
        std::fs::rename(dir.path().join("spool/a.tmp"), dir.path().join("spool/a.jsonl")).expect("rename");
        let (agent, stop) = start(&format!(
            "[sources.in]\ntype = \"spool\"\ndir = \"{d}/spool\"\nchannel = \"d\"\nbatch_lines = 7\n\
             [channels.d]\ntype = \"disk\"\ndir = \"{d}/chan\"\n\
             [sinks.out]\ntype = \"file\"\nchannel = \"d\"\ndir = \"{d}/out\"\nbatch_size = 5\nroll_bytes = 100\n"
        ));
        wait_for("53 lines", || lines_in(&dir.path().join("out")).len() >= 53);
        stop.store(true, Ordering::Relaxed);
        agent.wait().expect("agent");
        assert_eq!(lines_in(&dir.path().join("out")), lines, "every line once, in order");
        let files: Vec<String> = std::fs::read_dir(dir.path().join("out"))
            .expect("out")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(files.len() > 3, "rolled by size: {files:?}");
        assert!(
            files.iter().all(|f| f.starts_with("events-") && f.ends_with(".jsonl")),
            "{files:?}"
        );
        assert!(
            dir.path().join("spool/a.jsonl.COMPLETED").exists(),
            "the spooled file is marked done"
        );
    }

    #[test]
    fn http_source_answers_after_the_channel_and_rejects_bad_bodies() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().display();
        let (agent, stop) = start(&format!(
            "[sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\nchannel = \"d\"\nmax_body_bytes = 200\n\
             dead_letter = \"dlq\"\ninterceptors = [{{ type = \"json\", require = [\"user_id\"] }}]\n\
             [channels.d]\ntype = \"disk\"\ndir = \"{d}/chan\"\n\
             [channels.dlq]\ntype = \"memory\"\n\
             [sinks.out]\ntype = \"file\"\nchannel = \"d\"\ndir = \"{d}/out\"\n\
             [sinks.bad]\ntype = \"file\"\nchannel = \"dlq\"\ndir = \"{d}/bad\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n"
        ));
        let web = agent.addrs["sources.web"];
        let (status, body) = http(web, "POST", "/events", b"{\"user_id\":1}\n{\"user_id\":2}\n");
        assert_eq!((status, body.as_str()), (200, "{\"accepted\":2,\"rejected\":0}"));
        let (status, body) = http(web, "POST", "/events", b"[{\"user_id\":3}, {\"course\":4}]");
        assert_eq!(
            (status, body.as_str()),
            (200, "{\"accepted\":1,\"rejected\":1}"),
            "missing field → dead letter"
        );
        let (status, body) = http(web, "POST", "/events", b"{\"user_id\":5}\n{\"user_id\":\n");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("line 2: malformed JSON"), "{body}");
        let (status, body) = http(web, "POST", "/events", b"{\"user_id\":\"\xc3\x28\"}");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("not UTF-8"), "{body}");
        let (status, _) = http(web, "POST", "/events", &[b'{'; 300]);
        assert_eq!(status, 413, "over max_body_bytes");
        let (status, _) = http(web, "POST", "/nope", b"{}");
        assert_eq!(status, 404);
        wait_for("3 events", || lines_in(&dir.path().join("out")).len() >= 3);
        wait_for("1 dead letter", || !lines_in(&dir.path().join("bad")).is_empty());
        // The sinks count after they commit, a moment after the files show the lines.
        let metrics_text = || http(agent.addrs["metrics"], "GET", "/metrics", b"");
        wait_for("the sinks' counts", || {
            metrics_text()
                .1
                .contains("freshet_collector_sink_sent_total{sink=\"bad\"} 1")
                && metrics_text()
                    .1
                    .contains("freshet_collector_sink_sent_total{sink=\"out\"} 3")
        });
        let (status, text) = metrics_text();
        assert_eq!(status, 200);
        for want in [
            "freshet_collector_source_received_total{source=\"web\"} 4",
            "freshet_collector_source_accepted_total{source=\"web\"} 3",
            "freshet_collector_source_rejected_total{source=\"web\"} 1",
            "freshet_collector_sink_sent_total{sink=\"out\"} 3",
            "freshet_collector_channel_size{channel=\"d\"} 0",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        stop.store(true, Ordering::Relaxed);
        agent.wait().expect("agent");
        assert_eq!(
            lines_in(&dir.path().join("out")),
            vec!["{\"user_id\":1}", "{\"user_id\":2}", "{\"user_id\":3}"],
            "nothing of a rejected request was kept"
        );
        assert_eq!(lines_in(&dir.path().join("bad")), vec!["{\"course\":4}"]);
    }

    /// docs/security.md, the collector's rules: token, loopback without one, slow bodies,
    /// concurrency; each refusal followed by a request that works.
    #[test]
    fn http_source_hardening() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().display();
        let (agent, stop) = start(&format!(
            "[sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\nchannel = \"m\"\ntoken = \"s3cret\"\n\
             max_concurrent_requests = 1\nrequest_timeout_ms = 3000\n\
             [channels.m]\ntype = \"memory\"\n\
             [sinks.out]\ntype = \"file\"\nchannel = \"m\"\ndir = \"{d}/out\"\n"
        ));
        let web = agent.addrs["sources.web"];
        let send = |head: &str, body: &[u8]| {
            let mut s = std::net::TcpStream::connect(web).expect("connect");
            s.write_all(
                format!(
                    "POST /events HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .and_then(|_| s.write_all(body))
            .expect("write");
            let mut resp = String::new();
            s.read_to_string(&mut resp).expect("read");
            resp
        };
        for head in ["", "Authorization: Bearer wrong\r\n", "Authorization: s3cret\r\n"] {
            let resp = send(head, b"{\"user_id\":1}\n");
            assert!(resp.starts_with("HTTP/1.1 401"), "{head}: {resp}");
        }
        assert_eq!(http(web, "GET", "/health", b"").0, 200, "no token for /health");
        let ok = "Authorization: Bearer s3cret\r\n";
        assert!(send(ok, b"{\"user_id\":1}\n").starts_with("HTTP/1.1 200"));

        // Two bodies that stall: one takes the only request slot and holds it until its 408, the
        // other is turned away at once (which one is up to the server); a request meanwhile: 503.
        let stall = || {
            let mut c = std::net::TcpStream::connect(web).expect("connect");
            c.write_all(
                format!("POST /events HTTP/1.1\r\nHost: x\r\n{ok}Content-Length: 50\r\nConnection: close\r\n\r\n{{")
                    .as_bytes(),
            )
            .expect("write");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut answer = String::new();
                let _ = c.read_to_string(&mut answer);
                let _ = tx.send(answer);
            });
            rx
        };
        let (a, b) = (stall(), stall());
        let deadline = Instant::now() + Duration::from_secs(20);
        let (turned_away, held) = loop {
            if let Ok(r) = a.try_recv() {
                break (r, b);
            }
            if let Ok(r) = b.try_recv() {
                break (r, a);
            }
            assert!(Instant::now() < deadline, "neither stalled request was turned away");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(turned_away.starts_with("HTTP/1.1 503"), "{turned_away}");
        let busy = send(ok, b"{\"user_id\":2}\n");
        assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
        assert!(busy.to_ascii_lowercase().contains("retry-after: 1"), "{busy}");
        let held = held.recv().expect("answer");
        assert!(held.starts_with("HTTP/1.1 408"), "{held}");
        wait_for("the slot to be free", || {
            send(ok, b"{\"user_id\":3}\n").starts_with("HTTP/1.1 200")
        });
        wait_for("2 events", || lines_in(&dir.path().join("out")).len() >= 2);
        stop.store(true, Ordering::Relaxed);
        drop(agent);

        // Beyond loopback only with a token, or when told it is a public endpoint.
        let public = |extra: &str| {
            let cfg = AgentConfig::parse(&format!(
                "[sources.web]\ntype = \"http\"\nlisten = \"0.0.0.0:0\"\nchannel = \"m\"\n{extra}\
                 [channels.m]\ntype = \"memory\"\n\
                 [sinks.out]\ntype = \"file\"\nchannel = \"m\"\ndir = \"{d}/out2\"\n"
            ))
            .expect("config");
            let stop = Arc::new(AtomicBool::new(false));
            let started = Agent::start(&cfg, stop.clone());
            stop.store(true, Ordering::Relaxed);
            started.map(|_| ())
        };
        let e = public("").expect_err("no token beyond loopback").to_string();
        assert!(
            e.starts_with("option 'sources.web.listen'") && e.contains("beyond loopback"),
            "{e}"
        );
        public("allow_unauthenticated = true\n").expect("a public endpoint by choice");
        public("token = \"t\"\n").expect("with a token");
        let e = public("token_env = \"FRESHET_TEST_SURELY_UNSET\"\n")
            .expect_err("unset variable")
            .to_string();
        assert!(e.contains("sources.web.token_env") && e.contains("not set"), "{e}");
    }

    #[test]
    fn http_source_answers_503_while_the_channel_stays_full() {
        let (agent, stop) = start(
            "[sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\nchannel = \"m\"\nbusy_timeout_ms = 100\n\
             [channels.m]\ntype = \"memory\"\ncapacity = 2\n",
        );
        let web = agent.addrs["sources.web"];
        assert_eq!(http(web, "POST", "/events", b"1\n2\n").0, 200);
        let (status, body) = http(web, "POST", "/events", b"3\n");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("channel full"), "{body}");
        stop.store(true, Ordering::Relaxed);
        agent.wait().expect("agent");
    }

    #[test]
    fn tcp_lines_with_acks_oversized_lines_to_dead_letter() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().display();
        let (agent, stop) = start(&format!(
            "[sources.t]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"\nchannel = \"m\"\nack = true\n\
             max_event_bytes = 10\ndead_letter = \"dlq\"\n\
             [channels.m]\ntype = \"memory\"\n[channels.dlq]\ntype = \"memory\"\n\
             [sinks.out]\ntype = \"file\"\nchannel = \"m\"\ndir = \"{d}/out\"\n\
             [sinks.bad]\ntype = \"file\"\nchannel = \"dlq\"\ndir = \"{d}/bad\"\n"
        ));
        let mut s = std::net::TcpStream::connect(agent.addrs["sources.t"]).expect("connect");
        s.write_all(b"one\r\ntwo\nthis line is far too long\nth")
            .expect("write");
        s.write_all(b"ree\n").expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        while !String::from_utf8_lossy(&got).contains("OK 4\n") {
            let n = s.read(&mut buf).expect("ack");
            assert!(
                n > 0,
                "connection closed before the ack: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"no-newline").expect("write");
        drop(s);
        wait_for("4 lines", || lines_in(&dir.path().join("out")).len() >= 4);
        stop.store(true, Ordering::Relaxed);
        agent.wait().expect("agent");
        assert_eq!(
            lines_in(&dir.path().join("out")),
            vec!["one", "two", "three", "no-newline"]
        );
        assert_eq!(
            lines_in(&dir.path().join("bad")),
            vec!["this line "],
            "cut to max_event_bytes"
        );
    }

    #[test]
    fn a_port_in_use_names_the_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let cfg = AgentConfig::parse(&format!(
            "[sources.t]\ntype = \"tcp\"\nlisten = \"{}\"\nchannel = \"m\"\n[channels.m]\ntype = \"memory\"\n",
            taken.local_addr().expect("addr")
        ))
        .expect("config");
        let e = Agent::start(&cfg, Arc::default()).err().expect("in use");
        assert!(e.to_string().contains("sources.t.listen"), "{e}");
    }
}
