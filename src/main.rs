//! The `freshet` command line: maps subcommands onto library calls.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use freshet::connector::generator::{CSV_HEADER, CourseGenerator, EPOCH_2026_MS, GenOptions};
use freshet::connector::kafka;
use freshet::engine::query::EngineConfig;
use freshet::policy::Policy;
use freshet::print::{PrintFormat, format_batches};
use freshet::session::{Outcome, Session};

#[derive(Parser)]
#[command(name = "freshet", version, about = "Continuous windowed SQL over event streams")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct EngineArgs {
    /// Most rows read from a source per micro-batch.
    #[arg(long, default_value_t = 65_536)]
    batch_size: usize,
    /// Milliseconds to wait for data when a source has none.
    #[arg(long, default_value_t = 200)]
    batch_interval_ms: u64,
    /// Seconds between checkpoints (each publishes the sinks' output; see docs/design.md).
    #[arg(long, default_value_t = 10.0)]
    checkpoint_interval: f64,
    /// Where queries keep their checkpoints [default: DATA_DIR/checkpoints, DATA_DIR being
    /// --data-dir, else $FRESHET_DATA_DIR, else $XDG_DATA_HOME/freshet or ~/.local/share/freshet].
    #[arg(long, env = "FRESHET_CHECKPOINT_DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Take no checkpoints: a restarted query starts over (or from its Kafka group's offsets).
    #[arg(long, conflicts_with = "checkpoint_dir")]
    no_checkpoints: bool,
    /// Threads each source decodes on (a file's chunks of lines in parallel), and instances each
    /// keyed operator is split into by key [default: the number of cores].
    #[arg(long, env = "FRESHET_WORKERS")]
    workers: Option<usize>,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// What one request to `serve` may carry and take (docs/security.md).
#[derive(clap::Args, Clone)]
struct ServeLimits {
    /// A `Host` name this server answers to, besides IP addresses and `localhost` (requests naming
    /// another get 421: DNS rebinding); repeatable.
    #[arg(long, value_name = "NAME")]
    server_name: Vec<String>,
    /// Largest request body, bytes (413 past it).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Seconds a request may take: to send its headers and body (408), to be answered (503; a
    /// statement still completes).
    #[arg(long, default_value_t = 30.0)]
    request_timeout: f64,
    /// Requests served at once (503 with Retry-After past it).
    #[arg(long, default_value_t = 64)]
    max_concurrent_requests: usize,
    /// Most rows `POST /v1/query` answers (422 past it).
    #[arg(long, default_value_t = 100_000)]
    max_result_rows: usize,
    /// Most bytes (in memory, Arrow) `POST /v1/query` answers (422 past it).
    #[arg(long, default_value_t = 64 << 20)]
    max_result_bytes: usize,
    /// Memory DataFusion may take to compute one `POST /v1/query`, bytes (422 past it).
    #[arg(long, default_value_t = 256 << 20)]
    query_memory_bytes: usize,
}

/// What SQL may touch outside the process (docs/security.md).
#[derive(clap::Args, Clone, Default)]
struct PolicyArgs {
    /// Let `path` options (file and parquet connectors, librdkafka's `ssl.*.location`) resolve under
    /// this directory too; repeatable. By default: the working directory tree (`run`, `repl`,
    /// `check`), the data directory (`serve`).
    #[arg(long, value_name = "DIR")]
    allow_path: Vec<PathBuf>,
    /// `serve`: let Kafka and HBase be reached at this host (`HOST` for any port, `HOST:PORT`, or `*`
    /// for any host); repeatable. By default `serve` allows loopback only; the other commands any host.
    #[arg(long, value_name = "HOST[:PORT]")]
    allow_host: Vec<String>,
    /// Let `properties.KEY` pass this librdkafka key too, beyond the built-in list
    /// (docs/security.md); repeatable. Keys that load code or run commands are never allowed.
    #[arg(long, value_name = "KEY")]
    allow_property: Vec<String>,
}

impl PolicyArgs {
    /// The policy of `run`, `repl` and `check`: paths under the working directory and the allowed
    /// directories, any host.
    fn local(&self) -> Result<Policy> {
        let cwd = std::env::current_dir().context("the working directory")?;
        self.with_roots(Policy::default(), std::iter::once(cwd))
    }

    /// The policy of `serve`: paths under the data directory and the allowed directories; Kafka and
    /// HBase at loopback and the allowed hosts.
    fn server(&self, data_dir: &std::path::Path) -> Result<Policy> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let hosts = freshet::policy::LOOPBACK_HOSTS
            .iter()
            .map(|h| h.to_string())
            .chain(self.allow_host.iter().cloned());
        self.with_roots(
            Policy::default().with_hosts(hosts),
            std::iter::once(data_dir.to_path_buf()),
        )
    }

    fn with_roots(&self, policy: Policy, defaults: impl Iterator<Item = PathBuf>) -> Result<Policy> {
        let roots: Vec<PathBuf> = defaults.chain(self.allow_path.iter().cloned()).collect();
        policy
            .with_roots(&roots)
            .context("--allow-path")?
            .with_properties(&self.allow_property)
            .context("--allow-property")
    }
}

impl EngineArgs {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            batch_size: self.batch_size.max(1),
            batch_interval: Duration::from_millis(self.batch_interval_ms),
            commit_interval: Duration::from_secs_f64(self.checkpoint_interval.max(0.01)),
            checkpoint_dir: self.checkpoint_dir.clone(),
            workers: self
                .workers
                .unwrap_or_else(freshet::engine::query::default_workers)
                .max(1),
            ..EngineConfig::default()
        }
    }

    /// The config, with checkpoints under `data_dir` unless told otherwise.
    fn config_in(&self, data_dir: &std::path::Path) -> EngineConfig {
        let mut c = self.config();
        if self.no_checkpoints {
            c.checkpoint_dir = None;
        } else {
            c.checkpoint_dir.get_or_insert_with(|| data_dir.join("checkpoints"));
        }
        c
    }
}

#[derive(Subcommand)]
enum Command {
    /// Generate fake events.
    Generate {
        #[command(subcommand)]
        kind: GenerateKind,
    },
    /// Run the statements of a SQL file; keep running while an unbounded source feeds a sink.
    Run {
        file: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
        /// Register the file's objects in this data directory (as `freshet serve` keeps them): queries
        /// stored there start too, and what this run registers runs again under `freshet serve`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// How to print the results of SELECT statements.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Parse, plan and validate every statement of .sql files without starting anything (for CI).
    ///
    /// Errors print to stdout as FILE:LINE:COLUMN: message, then a summary line. Exit status: 0 when
    /// every statement checks, 1 when any has an error, 2 for usage errors (e.g. no such file).
    Check {
        /// Files, or directories searched recursively for *.sql.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// `text` (FILE:LINE:COLUMN: message lines and a summary) or `json` (one document, for tools).
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Run streaming tests: .fslt files that feed sources, move event and processing time, restart
    /// queries and check what sinks and views got (docs/testing.md). Deterministic and offline.
    ///
    /// Failures print as FILE:LINE: what differs, with a diff; then a summary line. Exit status: 0
    /// when every file passes, 1 when any fails, 2 for usage errors (e.g. no such file).
    Test {
        /// Files, or directories searched recursively for *.fslt.
        #[arg(default_value = ".")]
        paths: Vec<PathBuf>,
        /// Rewrite each expected block (after `----`) with the actual output instead of comparing.
        #[arg(long)]
        complete: bool,
    },
    /// Collect events into Kafka (a Flume-style agent: sources → durable channel → sinks).
    Collect {
        /// The agent's TOML configuration (docs/collector.md).
        #[arg(long)]
        config: PathBuf,
        /// Only check the configuration (keys, channel references, interceptors) and exit.
        #[arg(long)]
        check: bool,
    },
    /// Serve the HTTP API (docs/server.md): register continuous queries, watch, pause, resume and drop
    /// them, query materialized views, /metrics. Queries and the catalog persist in the data directory
    /// and run again when the server restarts.
    Serve {
        /// Address to listen on (loopback by default; port 0 picks a free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where the catalog is kept (default: $FRESHET_DATA_DIR, else $XDG_DATA_HOME/freshet, else
        /// ~/.local/share/freshet).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Require `Authorization: Bearer TOKEN` on every request but /health (required unless
        /// --listen is a loopback address).
        #[arg(long, env = "FRESHET_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        limits: ServeLimits,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Interactive SQL.
    Repl {
        #[command(flatten)]
        engine: EngineArgs,
        /// Keep the catalog (and running queries) in this data directory, as `freshet serve` does.
        /// Without it the session's catalog lives in memory only.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Send the statements to this `freshet serve` (e.g. http://127.0.0.1:8080) instead of running
        /// them here: SHOW QUERIES, \pause and \resume then act on the server's queries.
        #[arg(long, value_name = "URL", conflicts_with = "data_dir")]
        server: Option<String>,
        /// The server's bearer token (with --server).
        #[arg(long, env = "FRESHET_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// History file (default: ~/.freshet_history).
        #[arg(long)]
        history: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CheckFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum GenFormat {
    Json,
    Csv,
}

#[derive(Subcommand)]
enum GenerateKind {
    /// The Nexmark benchmark's events: person.jsonl, auction.jsonl and bid.jsonl (and q13's
    /// side_input.csv) in one directory, or three Kafka topics.
    Nexmark(NexmarkArgs),
    /// Course-page views on an online-education site.
    Courses {
        /// Number of events (default: unbounded).
        #[arg(long)]
        events: Option<u64>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output file, or - for stdout.
        #[arg(long, default_value = "-")]
        out: String,
        #[arg(long, value_enum, default_value = "json")]
        format: GenFormat,
        /// Events per second on the wall clock (event time is then the wall clock).
        #[arg(long)]
        rate: Option<f64>,
        /// Largest disorder of event times.
        #[arg(long, default_value_t = 2000)]
        out_of_order_ms: u64,
        /// Share of events made late (30–60 s behind).
        #[arg(long, default_value_t = 0.0)]
        late_ratio: f64,
        /// Produce to Kafka at these bootstrap servers instead of writing text (keyed by user id).
        #[arg(long)]
        kafka: Option<String>,
        /// The Kafka topic (created if missing).
        #[arg(long)]
        topic: Option<String>,
        /// Partitions of a topic that has to be created.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
}

fn main() -> std::process::ExitCode {
    // Named crash points for the fault tests (`FAILPOINTS`, see `freshet::state::crash`).
    let _crash_points = fail::FailScenario::setup();
    let cli = Cli::parse();
    // The command runs on a thread of its own for its stack size: the main thread's is the
    // system's (often 8 MiB), and planning needs what `sql::depth` allows for.
    let thread = std::thread::Builder::new()
        .name("freshet".into())
        .stack_size(freshet::sql::depth::PLANNING_STACK_BYTES)
        .spawn(move || run_command(cli));
    match thread.map(|t| t.join()) {
        Ok(Ok(code)) => code,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => {
            eprintln!("error: starting the command's thread: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_command(cli: Cli) -> std::process::ExitCode {
    let result = match cli.command {
        Command::Generate {
            kind: GenerateKind::Nexmark(args),
        } => generate_nexmark(args),
        Command::Generate { kind } => generate(kind),
        Command::Run {
            file,
            engine,
            data_dir,
            format,
        } => engine.policy.local().and_then(|policy| {
            let mut config = engine.config_in(&data_dir.clone().unwrap_or_else(freshet::store::default_data_dir));
            config.policy = policy;
            runtime().and_then(|rt| rt.block_on(run(file, config, data_dir, &format)))
        }),
        Command::Check { paths, format, policy } => return check(&paths, format, &policy),
        Command::Test { paths, complete } => return test(&paths, complete),
        Command::Collect { config, check } => collect(&config, check),
        Command::Serve {
            listen,
            data_dir,
            token,
            limits,
            engine,
        } => {
            let dir = data_dir.unwrap_or_else(freshet::store::default_data_dir);
            engine.policy.server(&dir).and_then(|policy| {
                let mut config = engine.config_in(&dir);
                config.policy = policy;
                runtime().and_then(|rt| rt.block_on(serve(&listen, dir, token, &limits, config)))
            })
        }
        Command::Repl {
            engine,
            data_dir,
            server,
            token,
            history,
        } => runtime().and_then(|rt| {
            rt.block_on(async {
                if let Some(url) = server {
                    let remote = freshet::repl::remote::Remote::new(&url, token)?;
                    return freshet::repl::run_remote(remote, history).await;
                }
                let policy = engine
                    .policy
                    .local()
                    .map_err(|e| freshet::Error::External(format!("{e:#}")))?;
                let session = match &data_dir {
                    Some(d) => {
                        Session::open(
                            EngineConfig {
                                policy,
                                ..engine.config_in(d)
                            },
                            d,
                        )
                        .await?
                    }
                    None => Session::new(EngineConfig {
                        policy,
                        ..engine.config()
                    }),
                };
                report_unrestored(&session);
                freshet::repl::run_with(session, history).await
            })
            .map_err(Into::into)
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `freshet check`: exit 0 clean, 1 on any error in the files, 2 on a usage error.
fn check(paths: &[PathBuf], format: CheckFormat, policy: &PolicyArgs) -> std::process::ExitCode {
    let usage = |msg: String| {
        eprintln!("error: {msg}");
        std::process::ExitCode::from(2)
    };
    let files = match freshet::check::collect_files(paths) {
        Ok(f) if f.is_empty() => return usage("no .sql files found".into()),
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    let policy = match policy.local() {
        Ok(p) => p,
        Err(e) => return usage(format!("{e:#}")),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return usage(format!("{e:#}")),
    };
    let reports: Vec<freshet::check::FileReport> = rt.block_on(async {
        let mut out = Vec::new();
        for f in &files {
            out.push(freshet::check::check_file(f, &policy).await);
        }
        out
    });
    freshet::check::print(&reports, matches!(format, CheckFormat::Json))
}

fn report_unrestored(session: &Session) {
    for o in &session.unrestored {
        eprintln!(
            "warning: {} {} was not restored: {}",
            o.kind,
            o.name,
            o.error.as_deref().unwrap_or("?")
        );
    }
}

async fn serve(
    listen: &str,
    dir: PathBuf,
    token: Option<String>,
    limits: &ServeLimits,
    config: EngineConfig,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    let addr = listener.local_addr()?;
    let token = token.filter(|t| !t.is_empty());
    if token.is_none() && !addr.ip().is_loopback() {
        anyhow::bail!(
            "--listen {listen}: refusing to serve beyond loopback without a token (anyone who reaches {addr} could run SQL); set --token or FRESHET_TOKEN"
        );
    }
    let mut session = Session::open(config, &dir).await?;
    session.result_limits = Some(freshet::session::ResultLimits {
        rows: limits.max_result_rows,
        bytes: limits.max_result_bytes,
        memory_bytes: limits.query_memory_bytes,
    });
    report_unrestored(&session);
    eprintln!(
        "serving on http://{addr} (data dir {}; {} queries; {}); Ctrl-C stops",
        dir.display(),
        session.queries.len(),
        if token.is_some() {
            "bearer token required"
        } else {
            "no token"
        }
    );
    let names = limits
        .server_name
        .iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let state = freshet::server::AppState::new(
        session,
        freshet::guard::Limits {
            token,
            server_names: Some(names.collect()),
            max_body: limits.max_body_bytes,
            request_timeout: Duration::from_secs_f64(limits.request_timeout.max(0.001)),
            max_concurrent: limits.max_concurrent_requests.max(1),
            ..freshet::guard::Limits::default()
        },
    );
    freshet::server::serve(listener, state, shutdown_signal()).await?;
    eprintln!(
        "stopped; the queries run again with the next `freshet serve --data-dir {}`",
        dir.display()
    );
    Ok(())
}

/// `freshet test`: exit 0 when every file passes, 1 on any failure, 2 on a usage error.
fn test(paths: &[PathBuf], complete: bool) -> std::process::ExitCode {
    use freshet::test_runner;
    let usage = |msg: String| {
        eprintln!("error: {msg}");
        std::process::ExitCode::from(2)
    };
    let files = match test_runner::collect_files(paths) {
        Ok(f) if f.is_empty() => return usage(format!("no .{} files found", test_runner::EXTENSION)),
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return usage(format!("{e:#}")),
    };
    let reports: Vec<test_runner::FileReport> = rt.block_on(async {
        let mut out = Vec::new();
        for f in &files {
            out.push(test_runner::run_file(f, complete).await);
        }
        out
    });
    test_runner::print(&reports)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Statements are planned on the workers too (the server): see `sql::depth`.
        .thread_stack_size(freshet::sql::depth::PLANNING_STACK_BYTES)
        .build()
        .context("starting the async runtime")
}

fn generate(kind: GenerateKind) -> Result<()> {
    let GenerateKind::Courses {
        events,
        seed,
        out,
        format,
        rate,
        out_of_order_ms,
        late_ratio,
        kafka,
        topic,
        partitions,
    } = kind
    else {
        anyhow::bail!("not the courses generator");
    };
    anyhow::ensure!(
        (0.0..=1.0).contains(&late_ratio),
        "--late-ratio must be between 0 and 1"
    );
    anyhow::ensure!(rate.is_none_or(|r| r > 0.0), "--rate must be > 0");
    let opts = GenOptions {
        seed,
        events,
        rate,
        out_of_order_ms,
        late_ratio,
    };
    let start = if rate.is_some() {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(EPOCH_2026_MS)
    } else {
        EPOCH_2026_MS
    };
    let mut g = CourseGenerator::new(opts, start);
    let mut target = match &kafka {
        Some(brokers) => {
            let topic = topic.clone().context("--kafka needs --topic")?;
            runtime()?.block_on(kafka::ensure_topic(brokers, &topic, partitions))?;
            Target::Kafka {
                producer: kafka::producer(brokers, &[])?,
                topic,
            }
        }
        None if out == "-" => Target::Text(Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout().lock(),
        ))),
        None => {
            let f = std::fs::File::create(&out).with_context(|| format!("creating {out}"))?;
            Target::Text(Box::new(std::io::BufWriter::with_capacity(1 << 20, f)))
        }
    };
    let progress = (out != "-" || kafka.is_some()) && std::io::IsTerminal::is_terminal(&std::io::stderr());
    if let (Target::Text(w), GenFormat::Csv) = (&mut target, format) {
        w.write_all(CSV_HEADER.as_bytes())?;
    }
    let t0 = std::time::Instant::now();
    let mut buf = String::with_capacity(1 << 16);
    let mut last_report = std::time::Instant::now();
    loop {
        if let Some(r) = rate {
            let due = (t0.elapsed().as_secs_f64() * r) as u64;
            if g.produced() >= due {
                target.idle()?;
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        }
        let Some(e) = g.next_event() else { break };
        match format {
            GenFormat::Json => e.write_json(&mut buf),
            GenFormat::Csv => e.write_csv(&mut buf),
        }
        match &mut target {
            Target::Kafka { producer, topic } => {
                let key = e.user_id.to_string();
                kafka::send(producer, topic, Some(key.as_bytes()), buf.trim_end().as_bytes())?;
                buf.clear();
            }
            Target::Text(w) => {
                if buf.len() > 60_000 || rate.is_some() {
                    if let Err(err) = w.write_all(buf.as_bytes()) {
                        if err.kind() == std::io::ErrorKind::BrokenPipe {
                            return Ok(());
                        }
                        return Err(err.into());
                    }
                    buf.clear();
                    if rate.is_some() {
                        w.flush()?;
                    }
                }
            }
        }
        if progress && last_report.elapsed() > Duration::from_millis(250) {
            last_report = std::time::Instant::now();
            let n = g.produced();
            let bar = match events {
                Some(total) if total > 0 => {
                    let filled = (n * 30 / total) as usize;
                    format!(
                        "[{}{}] {:>3}%",
                        "#".repeat(filled),
                        "-".repeat(30 - filled),
                        n * 100 / total
                    )
                }
                _ => String::new(),
            };
            eprint!(
                "\r{bar} {n} events, {:.0} events/s   ",
                n as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    match &mut target {
        Target::Text(w) => {
            w.write_all(buf.as_bytes())?;
            w.flush()?;
        }
        Target::Kafka { producer, .. } => kafka::flush(producer)?,
    }
    if progress {
        eprintln!(
            "\r{} events in {:.1} s{}",
            g.produced(),
            t0.elapsed().as_secs_f64(),
            " ".repeat(40)
        );
    }
    Ok(())
}

#[derive(clap::Args)]
struct NexmarkArgs {
    /// Events of all three streams together (1 person : 3 auctions : 46 bids).
    #[arg(long)]
    events: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Directory for person.jsonl, auction.jsonl, bid.jsonl and side_input.csv (created if missing).
    #[arg(long, default_value = "data/nexmark")]
    out: PathBuf,
    /// Events per second of event time (not paced on the wall clock).
    #[arg(long, default_value_t = freshet::connector::nexmark::DEFAULT_RATE)]
    rate: f64,
    /// Pull each event's time back by up to this much (disorder within a bound).
    #[arg(long, default_value_t = 0)]
    out_of_order_ms: u64,
    /// Produce to Kafka at these bootstrap servers instead: topics PREFIXperson, PREFIXauction,
    /// PREFIXbid (created if missing), keyed by person id, auction id and a bid's auction.
    #[arg(long)]
    kafka: Option<String>,
    #[arg(long, default_value = "nexmark_")]
    topic_prefix: String,
    /// Partitions of topics that have to be created.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
}

/// `freshet generate nexmark`: one pass over the event sequence, each event to its stream's file or topic.
fn generate_nexmark(a: NexmarkArgs) -> Result<()> {
    use freshet::connector::nexmark::{Nexmark, NexmarkOptions, Stream, side_input_csv};
    anyhow::ensure!(a.rate.is_finite() && a.rate > 0.0, "--rate must be > 0");
    let g = Nexmark::new(NexmarkOptions {
        seed: a.seed,
        events: Some(a.events),
        rate: a.rate,
        out_of_order_ms: a.out_of_order_ms,
    });
    let index = |s: Stream| Stream::ALL.iter().position(|x| *x == s).unwrap_or(0);
    let mut kafka_out = None;
    let mut files: Vec<Box<dyn Write>> = Vec::new();
    match &a.kafka {
        Some(brokers) => {
            let rt = runtime()?;
            let mut topics = Vec::new();
            for s in Stream::ALL {
                let topic = format!("{}{}", a.topic_prefix, s.name());
                rt.block_on(kafka::ensure_topic(brokers, &topic, a.partitions))?;
                topics.push(topic);
            }
            kafka_out = Some((kafka::producer(brokers, &[])?, topics));
        }
        None => {
            std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
            for s in Stream::ALL {
                let path = a.out.join(format!("{}.jsonl", s.name()));
                let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                files.push(Box::new(std::io::BufWriter::with_capacity(1 << 20, f)));
            }
            let side = a.out.join("side_input.csv");
            std::fs::write(&side, side_input_csv()).with_context(|| format!("writing {}", side.display()))?;
        }
    }
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let t0 = std::time::Instant::now();
    let mut last_report = t0;
    let mut bufs = [String::new(), String::new(), String::new()];
    for n in 0..a.events {
        let e = g.event(n);
        let i = index(e.stream());
        e.write_json(&mut bufs[i]);
        if let Some((producer, topics)) = &kafka_out {
            let key = e.key().to_string();
            kafka::send(
                producer,
                &topics[i],
                Some(key.as_bytes()),
                bufs[i].trim_end().as_bytes(),
            )?;
            bufs[i].clear();
        } else if bufs[i].len() > 60_000 {
            files[i].write_all(bufs[i].as_bytes())?;
            bufs[i].clear();
        }
        if progress && n % 65_536 == 0 && last_report.elapsed() > Duration::from_millis(250) {
            last_report = std::time::Instant::now();
            eprint!(
                "\r{n} of {} events ({:.0}%), {:.0} events/s   ",
                a.events,
                n as f64 * 100.0 / a.events.max(1) as f64,
                n as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    match &kafka_out {
        Some((producer, _)) => kafka::flush(producer)?,
        None => {
            for (f, b) in files.iter_mut().zip(&bufs) {
                f.write_all(b.as_bytes())?;
                f.flush()?;
            }
        }
    }
    eprintln!(
        "{}{} events in {:.1} s -> {}",
        if progress { "\r" } else { "" },
        a.events,
        t0.elapsed().as_secs_f64(),
        match &kafka_out {
            Some((_, topics)) => format!("topics {}", topics.join(", ")),
            None => format!("{}/{{person,auction,bid}}.jsonl", a.out.display()),
        }
    );
    Ok(())
}

fn collect(config: &std::path::Path, check_only: bool) -> Result<()> {
    let cfg = freshet::collect::agent::AgentConfig::load(config)?;
    if check_only {
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
        println!(
            "{}: ok ({} sources, {} channels, {} sinks)",
            config.display(),
            cfg.sources.len(),
            cfg.channels.len(),
            cfg.sinks.len()
        );
        return Ok(());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_signal = stop.clone();
    let rt = runtime()?;
    let _in_runtime = rt.enter();
    let signal = shutdown_signal();
    rt.spawn(async move {
        signal.await;
        eprintln!("stopping: events not yet delivered stay in the channel");
        on_signal.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    eprintln!("collecting ({}); Ctrl-C stops", config.display());
    Ok(freshet::collect::agent::run(&cfg, stop)?)
}

/// Where `freshet generate` writes.
enum Target {
    Text(Box<dyn Write>),
    Kafka {
        producer: rdkafka::producer::BaseProducer<kafka::DeliveryErrors>,
        topic: String,
    },
}

impl Target {
    /// Between paced events: let the Kafka producer deliver and report failures.
    fn idle(&mut self) -> Result<()> {
        if let Target::Kafka { producer, .. } = self {
            producer.poll(Duration::ZERO);
            kafka::delivery_errors(producer)?;
        }
        Ok(())
    }
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is called (not when first polled), so a
/// signal that arrives while statements are still starting is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut t), Some(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(file: PathBuf, mut config: EngineConfig, data_dir: Option<PathBuf>, format: &str) -> Result<()> {
    let format: PrintFormat = format.parse()?;
    // The script's queries that read the same Kafka source share one reader, started once they
    // have all joined: before a statement that waits on them (a SELECT) and after the last.
    config.shared_kafka = Some(std::sync::Arc::new(
        freshet::connector::kafka_shared::SharedKafka::default(),
    ));
    let sql = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let statements = freshet::sql::parser::parse_script(&sql).map_err(|e| anyhow::anyhow!("{}:{e}", file.display()))?;
    let mut stop = Box::pin(shutdown_signal());
    let mut session = match &data_dir {
        Some(d) => Session::open(config, d).await?,
        None => Session::new(config),
    };
    report_unrestored(&session);
    session.wait_for_bounded = true;
    let mut interrupted = false;
    for st in &statements {
        let waits = matches!(st.statement, freshet::sql::parser::Statement::Query(_));
        if waits {
            say_shared(session.start_shared_readers());
        }
        let outcome = session.execute(&st.statement).await;
        if waits {
            say_shared(session.start_shared_readers());
        }
        match outcome {
            Err(e) => {
                session.stop_all().await;
                let loc = match &e {
                    freshet::Error::Sql { .. } => String::new(),
                    _ => format!("{}: ", st.line),
                };
                anyhow::bail!("{}:{loc}{e}", file.display());
            }
            Ok(Outcome::Done(msg)) => eprintln!("{msg}"),
            Ok(Outcome::Text(t)) => println!("{t}"),
            Ok(Outcome::Rows(b, _)) => print!("{}", format_batches(&b, format)?),
            Ok(Outcome::Live(live)) => {
                // A continuous SELECT in a script prints its rows once the query ends (or is stopped).
                let stop_query = live.stop.clone();
                tokio::select! {
                    _ = &mut stop => { let _ = stop_query.send(true); interrupted = true; }
                    _ = async { while !live.handle.is_finished() { tokio::time::sleep(Duration::from_millis(50)).await; } } => {}
                }
                let report = live.handle.await.context("live query task")?;
                report?;
                let rows = freshet::session::present(&live.table, &live.presentation).await?;
                print!("{}", format_batches(&rows, format)?);
                if interrupted {
                    break;
                }
            }
        }
    }
    say_shared(session.start_shared_readers());
    let unbounded = session.queries.iter().any(|q| !q.bounded);
    if unbounded {
        eprintln!("running; Ctrl-C stops and flushes the sinks");
    }
    if interrupted {
        session.stop_all().await;
    } else {
        session.wait_all(stop).await;
    }
    let mut failed = false;
    for q in &session.queries {
        match &q.outcome {
            Some(Ok(r)) => {
                eprintln!(
                    "{}: {} rows in, {} rows out, {} errors, {} late, {} batches, {:.2} s ({:.0} rows/s)",
                    q.name,
                    r.rows_in,
                    r.rows_out,
                    r.errors,
                    r.late,
                    r.batches,
                    r.elapsed.as_secs_f64(),
                    r.rows_in as f64 / r.elapsed.as_secs_f64().max(1e-9)
                );
                // Only meaningful when event time is the wall clock (a paced source): below 5 minutes.
                let lat = &q.metrics.latency;
                if let (Some(p50), Some(p99)) = (lat.quantile(0.5), lat.quantile(0.99))
                    && p99 < freshet::engine::latency::LATENCY_MAX_MS
                {
                    eprintln!(
                        "{}: event-time latency to the sink: p50 {p50} ms, p99 {p99} ms over {} rows",
                        q.name,
                        lat.count()
                    );
                }
            }
            Some(Err(e)) => {
                failed = true;
                eprintln!("{}: failed: {e}", q.name);
            }
            None => {}
        }
    }
    if let Some(kb) = peak_rss_kb() {
        eprintln!("peak memory: {:.1} MiB", kb as f64 / 1024.0);
    }
    anyhow::ensure!(!failed, "a query failed");
    session.forget_finished()?;
    Ok(())
}

/// Which Kafka sources several queries read through one reader.
fn say_shared(readers: Vec<(String, usize)>) {
    for (source, queries) in readers.into_iter().filter(|(_, n)| *n > 1) {
        eprintln!("{source}: one Kafka reader for {queries} queries");
    }
}

/// Peak resident memory of this process (Linux), for run summaries and benchmarks.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
