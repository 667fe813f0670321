//! The stable fuzz driver: for each target of `freshet::fuzz`, seeded mutations of a corpus of real
//! inputs for `FUZZ_SECONDS` (default 1) each, on a thread with the stack Freshet plans on.
//!
//! `cargo test --test fuzz [-- TARGET…]`; environment: `FUZZ_SECONDS`, `FUZZ_SEED` (default: from
//! the clock, printed), `FUZZ_OUT` (where failing inputs go; default `fuzz-failures` in Cargo's test scratch directory, `$CARGO_TARGET_DIR/tmp`),
//! `FUZZ_REPRO=FILE` (run one saved input through the targets named, nothing else).
//!
//! Before each execution the input is written to `FUZZ_OUT/TARGET.current`, so that an abort the
//! process cannot catch (a stack overflow) still leaves its input behind; a panic is caught and
//! its input saved as `TARGET-SEED-N.crash`. Either way the driver exits non-zero.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The message of the latest panic (see the hook in `main`).
static LAST_PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Tokens worth inserting: SQL keywords and operators, JSON and CSV structure, boundary numbers.
const DICTIONARY: &[&str] = &[
    "SELECT ",
    " FROM ",
    " WHERE ",
    " GROUP BY ",
    " UNION ALL ",
    " JOIN ",
    " ON ",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ";",
    "'",
    "\"",
    "\\",
    "::",
    "+",
    "*",
    " AND ",
    " OR ",
    " NOT ",
    "NULL",
    "CASE WHEN ",
    " THEN ",
    " END",
    "TUMBLE(",
    "HOP(",
    "SESSION(",
    "INTERVAL '1' SECOND",
    "CREATE SOURCE ",
    "CREATE SINK ",
    "CREATE VIEW ",
    "CREATE MATERIALIZED VIEW ",
    "WITH (",
    "connector = 'generator'",
    "connector = 'file'",
    "WATERMARK FOR ",
    "-9223372036854775808",
    "18446744073709551616",
    "1e309",
    "NaN",
    "\n",
    "\r\n",
    "\u{0}",
    "\u{feff}",
    "é",
    "\u{10ffff}",
    "true",
    "false",
    "\"user_id\":",
    "----",
    "statement ok",
    "query ",
    "input ",
    "watermark ",
    "\u{fffd}",
    "\t",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => input.insert(rng.below(len + 1), rng.next() as u8),
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let piece = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            5 | 6 => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes();
                let at = rng.below(len + 1);
                input.splice(at..at, token.iter().copied());
            }
            7 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(256)).min(other.len());
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[a..b].iter().copied());
                }
            }
            8 if len > 0 => {
                // Repeat a piece many times: long lines, deep nesting, long operator chains.
                let a = rng.below(len);
                let b = (a + 1 + rng.below(8)).min(len);
                let piece = input[a..b].to_vec();
                let times = 1 + rng.below(2_000);
                let at = rng.below(len + 1);
                input.splice(at..at, piece.iter().copied().cycle().take(piece.len() * times));
            }
            _ => {}
        }
    }
    // Keep inputs small enough for many executions.
    input.truncate(64 << 10);
}

struct Outcome {
    execs: u64,
    failed: Option<PathBuf>,
}

fn run_target(name: &str, target: fn(&[u8]), seed: u64, budget: Duration, root: &Path, out: &Path) -> Outcome {
    let mut corpus: Vec<Vec<u8>> = freshet::fuzz::corpus(name, root);
    // Inputs that once failed (each fixed, each with a test at its cause) run first, every time.
    let regressions = root.join("tests/fuzz-regressions").join(name);
    if let Ok(dir) = std::fs::read_dir(&regressions) {
        let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        corpus.extend(files.iter().filter_map(|f| std::fs::read(f).ok()));
    }
    let current = out.join(format!("{name}.current"));
    let mut rng = Rng(seed
        ^ name
            .bytes()
            .fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| h.rotate_left(5) ^ u64::from(b))
        | 1);
    let started = Instant::now();
    let mut execs = 0u64;
    // The corpus as it is first, then mutations of it: half of the time of the input just run
    // (up to 8 in a row), so that mutations stack and reach further from the corpus.
    let mut pending: Vec<Vec<u8>> = corpus.clone();
    pending.push(Vec::new());
    let (mut last, mut streak) = (Vec::new(), 0);
    loop {
        let input = match pending.pop() {
            Some(i) => i,
            None if started.elapsed() >= budget => break,
            None => {
                let mut i = if streak < 8 && rng.below(2) == 0 {
                    streak += 1;
                    std::mem::take(&mut last)
                } else if corpus.is_empty() {
                    streak = 0;
                    Vec::new()
                } else {
                    streak = 0;
                    corpus[rng.below(corpus.len())].clone()
                };
                mutate(&mut rng, &mut i, &corpus);
                i
            }
        };
        if std::fs::write(&current, &input).is_err() {
            eprintln!("fuzz: cannot write {}", current.display());
        }
        let result = std::panic::catch_unwind(|| target(&input));
        execs += 1;
        if result.is_err() {
            let saved = out.join(format!("{name}-{seed}-{execs}.crash"));
            let _ = std::fs::write(&saved, &input);
            return Outcome {
                execs,
                failed: Some(saved),
            };
        }
        last = input;
    }
    let _ = std::fs::remove_file(&current);
    Outcome { execs, failed: None }
}

fn main() -> std::process::ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::var_os("FUZZ_OUT").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures"),
        PathBuf::from,
    );
    let out = std::path::absolute(&out).unwrap_or(out);
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("fuzz: cannot create {}: {e}", out.display());
        return std::process::ExitCode::FAILURE;
    }
    let seconds: f64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    // Names given on the command line (cargo passes its own flags too: ignore those).
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let targets: Vec<(&str, freshet::fuzz::Target)> = freshet::fuzz::TARGETS
        .iter()
        .copied()
        .filter(|(n, _)| wanted.is_empty() || wanted.iter().any(|w| w == n))
        .collect();
    // Targets that write files do it in a scratch directory of their own.
    let work = match tempfile::tempdir() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("fuzz: no temporary directory: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::env::set_current_dir(work.path()) {
        eprintln!("fuzz: cannot enter {}: {e}", work.path().display());
        return std::process::ExitCode::FAILURE;
    }
    let repro = std::env::var_os("FUZZ_REPRO").map(PathBuf::from);
    // Panics are kept, not printed: some are caught inside Freshet on purpose (a third-party reader
    // that panics on bad input), and the one that fails a target is printed with its input below.
    std::panic::set_hook(Box::new(|info| {
        let mut last = LAST_PANIC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *last = info.to_string();
    }));
    let budget = Duration::from_secs_f64(seconds);
    let runner = std::thread::Builder::new()
        .name("fuzz".into())
        .stack_size(freshet::sql::depth::PLANNING_STACK_BYTES)
        .spawn(move || {
            let mut failed = false;
            println!("fuzz: seed {seed}, {seconds} s per target");
            for (name, target) in targets {
                if let Some(file) = &repro {
                    let input = std::fs::read(file).unwrap_or_default();
                    let ok = std::panic::catch_unwind(|| target(&input)).is_ok();
                    if !ok {
                        let why = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
                        println!("fuzz: {name}: {why}");
                    }
                    println!(
                        "fuzz: {name}: {} on {}",
                        if ok { "ok" } else { "FAILED" },
                        file.display()
                    );
                    failed |= !ok;
                    continue;
                }
                let t0 = Instant::now();
                let o = run_target(name, target, seed, budget, &root, &out);
                let secs = t0.elapsed().as_secs_f64();
                match o.failed {
                    None => println!(
                        "fuzz: {name}: {} executions in {secs:.1} s ({:.0}/s), no failure",
                        o.execs,
                        o.execs as f64 / secs.max(1e-9)
                    ),
                    Some(saved) => {
                        failed = true;
                        let why = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
                        println!("fuzz: {name}: {why}");
                        println!(
                            "fuzz: {name}: FAILED after {} executions; input saved as {} (reproduce: \
                             FUZZ_REPRO={} cargo test --test fuzz -- {name})",
                            o.execs,
                            saved.display(),
                            saved.display()
                        );
                    }
                }
            }
            failed
        });
    match runner.map(|t| t.join()) {
        Ok(Ok(false)) => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::FAILURE,
    }
}
