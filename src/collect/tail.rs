//! The tail source: follows growing files, like Flume's TAILDIR source, and hands their complete lines to
//! an [`Intake`], each event with a `file` header naming the path it was followed under.
//!
//! **Files.** Each entry of `paths` is a path whose file-name part may contain `*` (any run of characters;
//! a leading `.` is only matched by a pattern starting with `.`). Patterns are matched at every poll, so
//! files that appear later are followed (from their start). Symbolic links are followed.
//!
//! **Position file.** JSON, rewritten after every batch the intake accepted (to `NAME.tmp`, fsync, then
//! renamed over `NAME`), so a crash re-reads at most one batch per file (`batch_lines` lines):
//!
//! ```json
//! {"version":1,"files":[{"path":"logs/app.log","dev":2049,"ino":1312,"offset":8192,"head_len":256,"head_hash":1234}]}
//! ```
//!
//! One entry per file being read: its identity (`dev`, `ino`), the path it is followed under, `offset` =
//! the byte after the last line handed over, and a fingerprint of its first `head_len` (≤ 256) bytes
//! (FNV-1a, `head_hash`), so an inode number reused by a new file is not mistaken for the old one. While
//! inside a line longer than `max_event_bytes` (its first bytes went to the dead letters), `"skip":true`
//! says the rest of that line is to be skipped. One position file per source: two sources sharing one
//! would overwrite each other's entries.
//!
//! **Rotation.** A file is identified by device and inode, not by name. When the file at a followed path
//! changes (rename-and-create rotation, or deletion), the old file stays open and is drained to its end;
//! it is done once nothing was written to it for `poll_ms` (so a writer that reopens its file a little
//! after the rename loses nothing; later writes to the old file are not read), and only then does reading
//! start on the new file at that path (so the old file's lines all come before the new file's). A final
//! line of a finished old file that lacks its `\n` is handed over then (nothing can complete it any more);
//! in a followed file, such a partial line waits for its `\n`. On restart, an entry whose inode is no longer at
//! its path is looked for in the same directory (e.g. `app.log.1`), finished from its saved offset, and
//! then the new file at the path is read from byte 0. A file that shrank below what was read, or whose
//! first bytes changed (copy-truncate rotation), is read again from byte 0. A deleted path is polled until
//! it reappears. A pattern that also matches rotated names (`app.log*`) follows them as files of their
//! own, without reading anything twice.
//!
//! `start = "end"` skips what files hold when the source starts (to just after their last `\n`), for files
//! the position file does not mention; files appearing later are always read from their start.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::intake::Intake;
use super::interceptor::InterceptorConfig;
use crate::error::{Error, Result};

/// Bytes read from a file at a time.
const CHUNK: usize = 256 << 10;
/// Chunks read from one file per poll before the others get their turn.
const CHUNKS_PER_POLL: usize = 16;
/// Bytes at the start of a file fingerprinted to recognise it.
const HEAD_BYTES: u64 = 256;

/// `[sources.NAME] type = "tail"`: follows growing files (see the module documentation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailConfig {
    /// Files to follow; the file-name part may contain `*` (e.g. `logs/app-*.log`), matched at every poll
    /// so new files are picked up.
    pub paths: Vec<PathBuf>,
    pub channel: String,
    /// Where positions are kept (required; one per source). Its directory is created if missing.
    pub position_file: PathBuf,
    /// For a file present at start that the position file does not mention: read it from the beginning
    /// (default) or only what is appended from now on.
    #[serde(default)]
    pub start: Start,
    /// Lines per intake submit (and per position-file write).
    #[serde(default = "default_batch_lines")]
    pub batch_lines: usize,
    /// Milliseconds to sleep when no file had anything new.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Carried for the agent, which builds the intake.
    #[serde(default)]
    pub interceptors: Vec<InterceptorConfig>,
    /// Carried for the agent, which builds the intake.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Carried for the agent, which builds the intake.
    #[serde(default = "crate::collect::intake::default_max_event_bytes")]
    pub max_event_bytes: usize,
}

/// Where to start a file the position file does not mention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    #[default]
    Beginning,
    End,
}

fn default_batch_lines() -> usize {
    1000
}

fn default_poll_ms() -> u64 {
    250
}

/// Follow `config.paths` until `stop` is set, handing complete lines to `intake` and persisting positions
/// after every accepted batch. Returns `Ok` once stopped; an error for a bad pattern, an unreadable or
/// corrupt position file, a failed read or position write, or an intake (channel) failure.
pub fn run(config: &TailConfig, intake: &Intake, stop: &AtomicBool) -> Result<()> {
    run_counting(config, intake, stop, &AtomicU64::new(0))
}

/// [`run`], counting finished polls in `polls`: tests wait for a poll that began after they changed
/// the files instead of sleeping and hoping one did.
fn run_counting(config: &TailConfig, intake: &Intake, stop: &AtomicBool, polls: &AtomicU64) -> Result<()> {
    let mut tailer = Tailer::open(config)?;
    while !stop.load(Ordering::Relaxed) {
        let polled = tailer.poll(intake, stop);
        polls.fetch_add(1, Ordering::SeqCst);
        match polled {
            Ok(true) => {}
            Ok(false) => pause(Duration::from_millis(config.poll_ms.max(1)), stop),
            // Held back by a full channel when asked to stop: nothing was lost, positions are saved.
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sleep `d`, waking early when `stop` is set.
fn pause(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Device and inode.
type Id = (u64, u64);

fn id_of(m: &std::fs::Metadata) -> Id {
    (m.dev(), m.ino())
}

/// One entry of `paths`.
enum Pattern {
    Literal(PathBuf),
    /// `dir` as written (possibly empty: the current directory), `name` with `*`s.
    Glob {
        dir: PathBuf,
        name: Vec<u8>,
    },
}

impl Pattern {
    fn parse(path: &Path) -> Result<Pattern> {
        let bad = |why: &str| Error::option("paths", format!("'{}': {why}", path.display()));
        let name = path.file_name().ok_or_else(|| bad("names no file"))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        if dir.as_os_str().as_bytes().contains(&b'*') {
            return Err(bad("only the file-name part may contain '*'"));
        }
        Ok(if name.as_bytes().contains(&b'*') {
            Pattern::Glob {
                dir: dir.to_path_buf(),
                name: name.as_bytes().to_vec(),
            }
        } else {
            Pattern::Literal(path.to_path_buf())
        })
    }

    fn matches(&self, path: &Path) -> bool {
        match self {
            Pattern::Literal(p) => p == path,
            Pattern::Glob { dir, name } => {
                path.parent() == Some(dir.as_path()) && path.file_name().is_some_and(|n| glob_match(name, n.as_bytes()))
            }
        }
    }
}

/// `*` matches any run of bytes; a leading `.` only matches a pattern starting with `.`.
fn glob_match(pat: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pat.first() != Some(&b'.') {
        return false;
    }
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pat.len() && pat[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            star = Some((sp, sn + 1));
            p = sp + 1;
            n = sn + 1;
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&b| b == b'*')
}

/// The position file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PositionFile {
    version: u32,
    files: Vec<Position>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Position {
    path: String,
    dev: u64,
    ino: u64,
    offset: u64,
    head_len: u64,
    head_hash: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    skip: bool,
}

/// FNV-1a of the first `len` bytes of `file`, or `None` if it is shorter.
fn head_hash(file: &File, len: u64) -> std::io::Result<Option<u64>> {
    let mut buf = [0u8; HEAD_BYTES as usize];
    let buf = &mut buf[..len.min(HEAD_BYTES) as usize];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(buf.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })))
}

/// Where a file is being read.
struct Tail {
    id: Id,
    /// The path it is followed under (kept after it was rotated away: it names the file in the `file`
    /// header, and the file now at that path waits until this one is done).
    path: PathBuf,
    headers: Vec<(String, String)>,
    file: File,
    /// The byte after the last line handed over.
    offset: u64,
    /// Bytes read from `offset` on, not handed over yet (an unfinished line).
    buf: Vec<u8>,
    head_len: u64,
    head_hash: u64,
    /// Inside an oversized line whose rest is to be skipped.
    skip: bool,
    /// Set once the file is no longer at any followed path: when that was noticed or it last grew since.
    orphan: Option<Instant>,
    done: bool,
}

impl Tail {
    fn new(path: PathBuf, file: File, id: Id, offset: u64) -> Tail {
        Tail {
            id,
            headers: vec![("file".to_string(), path.display().to_string())],
            path,
            file,
            offset,
            buf: Vec::new(),
            head_len: 0,
            head_hash: 0,
            skip: false,
            orphan: None,
            done: false,
        }
    }

    fn position(&self) -> Position {
        Position {
            path: self.path.to_string_lossy().into_owned(),
            dev: self.id.0,
            ino: self.id.1,
            offset: self.offset,
            head_len: self.head_len,
            head_hash: self.head_hash,
            skip: self.skip,
        }
    }

    fn set_path(&mut self, path: &Path) {
        self.path = path.to_path_buf();
        self.headers = vec![("file".to_string(), path.display().to_string())];
    }

    /// The file is still at a followed path and is `size` bytes long: if it shrank below what was read or
    /// its first bytes changed, start again from byte 0 (returns true). Extends the fingerprint as the
    /// file grows.
    fn check_rewritten(&mut self, size: u64) -> std::io::Result<bool> {
        let read_to = self.offset + self.buf.len() as u64;
        let rewritten = size < read_to || self.head_changed()?;
        if rewritten {
            self.restart();
        }
        self.extend_head(size)?;
        Ok(rewritten)
    }

    fn head_changed(&self) -> std::io::Result<bool> {
        Ok(self.head_len > 0 && head_hash(&self.file, self.head_len)? != Some(self.head_hash))
    }

    /// Read the file again from byte 0.
    fn restart(&mut self) {
        self.offset = 0;
        self.buf.clear();
        self.skip = false;
        self.head_len = 0;
        self.head_hash = 0;
    }

    /// Fingerprint up to [`HEAD_BYTES`] of the first `size` bytes, if not done yet.
    fn extend_head(&mut self, size: u64) -> std::io::Result<()> {
        if self.head_len < HEAD_BYTES && size > self.head_len {
            let len = size.min(HEAD_BYTES);
            if let Some(hash) = head_hash(&self.file, len)? {
                (self.head_len, self.head_hash) = (len, hash);
            }
        }
        Ok(())
    }

    /// Append the next bytes of the file (up to `scratch.len()`) to `buf`; returns how many (0 at the end
    /// of the file), or `None` if the file's first bytes changed meanwhile (it was truncated and written
    /// again: what was read is not the continuation), after which it is read again from byte 0. Reading
    /// into a shared scratch buffer keeps idle files from holding a chunk each.
    fn fill(&mut self, scratch: &mut [u8]) -> Result<Option<usize>> {
        let at = self.offset + self.buf.len() as u64;
        let n = loop {
            match self.file.read_at(scratch, at) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                other => break other.map_err(|e| Error::io(&self.path, e))?,
            }
        };
        if n > 0 {
            if self.head_changed().map_err(|e| Error::io(&self.path, e))? {
                self.restart();
                return Ok(None);
            }
            self.buf.extend_from_slice(&scratch[..n]);
            self.extend_head(at + n as u64).map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(Some(n))
    }
}

/// Up to `max_lines` complete lines at the start of `data`: (lines, bytes up to and including the last
/// `\n`).
fn batch_end(data: &[u8], max_lines: usize) -> (usize, usize) {
    let (mut lines, mut end) = (0, 0);
    for (k, &b) in data.iter().enumerate() {
        if b == b'\n' {
            lines += 1;
            end = k + 1;
            if lines == max_lines {
                break;
            }
        }
    }
    (lines, end)
}

/// The position file, written atomically when what it would say changed.
struct Store {
    path: PathBuf,
    tmp: PathBuf,
    last: Vec<Position>,
}

impl Store {
    fn save(&mut self, tails: &[Tail]) -> Result<()> {
        let files: Vec<Position> = tails.iter().filter(|t| !t.done).map(Tail::position).collect();
        if files == self.last {
            return Ok(());
        }
        let content = PositionFile { version: 1, files };
        let bytes = serde_json::to_vec(&content).map_err(|e| Error::Internal(format!("tail positions: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&self.tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)
        };
        write().map_err(|e| Error::io(&self.path, e))?;
        self.last = content.files;
        Ok(())
    }
}

struct Tailer<'a> {
    config: &'a TailConfig,
    patterns: Vec<Pattern>,
    /// In the order they were found: a tail is read only when no earlier one has the same path.
    tails: Vec<Tail>,
    store: Store,
    /// Paths the position file mentioned at start (`start = "end"` does not apply to them).
    known_paths: HashSet<PathBuf>,
    polls: u64,
    scratch: Vec<u8>,
    /// Problems already reported (each is printed once).
    reported: HashSet<String>,
}

impl<'a> Tailer<'a> {
    fn open(config: &'a TailConfig) -> Result<Tailer<'a>> {
        if config.paths.is_empty() {
            return Err(Error::option("paths", "no files to follow"));
        }
        let patterns = config
            .paths
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>>>()?;
        let path = config.position_file.clone();
        let name = path
            .file_name()
            .ok_or_else(|| Error::option("position_file", format!("'{}' names no file", path.display())))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<PositionFile>(&bytes)
                .map_err(|e| Error::External(format!("{}: not a tail position file: {e}", path.display())))?,
            Err(e) if e.kind() == ErrorKind::NotFound => PositionFile::default(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let mut tailer = Tailer {
            config,
            patterns,
            tails: Vec::new(),
            store: Store {
                path,
                tmp,
                last: saved.files.clone(),
            },
            known_paths: HashSet::new(),
            polls: 0,
            scratch: vec![0; CHUNK],
            reported: HashSet::new(),
        };
        for pos in saved.files {
            let path = PathBuf::from(&pos.path);
            if !tailer.patterns.iter().any(|p| p.matches(&path)) {
                continue; // no longer followed
            }
            tailer.known_paths.insert(path.clone());
            if tailer.tails.iter().any(|t| t.id == (pos.dev, pos.ino)) {
                continue;
            }
            match find(&path, (pos.dev, pos.ino), pos.head_len, pos.head_hash) {
                Some(file) => {
                    let mut tail = Tail::new(path, file, (pos.dev, pos.ino), pos.offset);
                    (tail.head_len, tail.head_hash, tail.skip) = (pos.head_len, pos.head_hash, pos.skip);
                    tailer.tails.push(tail);
                }
                None => eprintln!(
                    "collect: tail: the file last read as '{}' (inode {}) is gone; whatever it held after byte {} \
                     and was not read is lost",
                    pos.path, pos.ino, pos.offset
                ),
            }
        }
        Ok(tailer)
    }

    fn report(&mut self, msg: String) {
        if self.reported.insert(msg.clone()) {
            eprintln!("collect: tail: {msg}");
        }
    }

    /// The regular files at followed paths now: (path, identity, size), each identity once.
    fn scan(&mut self) -> Vec<(PathBuf, Id, u64)> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut problems = Vec::new();
        for pattern in &self.patterns {
            let mut candidates = Vec::new();
            match pattern {
                Pattern::Literal(p) => candidates.push(p.clone()),
                Pattern::Glob { dir, name } => {
                    let list = if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir.as_path()
                    };
                    match std::fs::read_dir(list) {
                        Ok(entries) => {
                            let mut names: Vec<_> = entries
                                .flatten()
                                .map(|e| e.file_name())
                                .filter(|n| glob_match(name, n.as_bytes()))
                                .collect();
                            names.sort();
                            candidates.extend(names.into_iter().map(|n| dir.join(n)));
                        }
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => problems.push(format!("{}: {e}", list.display())),
                    }
                }
            }
            for path in candidates {
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => {
                        if seen.insert(id_of(&m)) {
                            out.push((path, id_of(&m), m.len()));
                        }
                    }
                    Ok(_) => problems.push(format!("{}: not a regular file", path.display())),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => problems.push(format!("{}: {e}", path.display())),
                }
            }
        }
        for p in problems {
            self.report(p);
        }
        out
    }

    /// One round: notice rotations, truncations and new files, then read what is new. Returns whether
    /// anything happened (if not, the caller sleeps).
    fn poll(&mut self, intake: &Intake, stop: &AtomicBool) -> Result<bool> {
        self.polls += 1;
        let first = self.polls == 1;
        let grace = Duration::from_millis(self.config.poll_ms.max(1));
        let mut progress = false;
        let matched = self.scan();
        let index: HashMap<Id, usize> = matched.iter().enumerate().map(|(k, (_, id, _))| (*id, k)).collect();
        for i in 0..self.tails.len() {
            let t = &mut self.tails[i];
            match index.get(&t.id) {
                Some(&k) => {
                    let (path, _, size) = &matched[k];
                    if t.path != *path {
                        t.set_path(path);
                    }
                    t.orphan = None;
                    match t.check_rewritten(*size) {
                        Ok(true) => {
                            let msg = format!(
                                "{} shrank or was rewritten: reading it again from the start",
                                path.display()
                            );
                            eprintln!("collect: tail: {msg}");
                            progress = true;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            let msg = format!("{}: {e}", path.display());
                            self.report(msg);
                        }
                    }
                }
                None => {
                    t.orphan.get_or_insert_with(Instant::now);
                }
            }
        }
        for (path, id, _) in matched {
            if !self.tails.iter().any(|t| t.id == id) {
                progress |= self.follow_new(path, first);
            }
        }
        self.store.save(&self.tails)?;
        for i in 0..self.tails.len() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let blocked = self.tails[..i].iter().any(|o| !o.done && o.path == self.tails[i].path);
            if blocked {
                continue;
            }
            let got = self.read_tail(i, intake, stop)?;
            progress |= got > 0;
            let finished = match &mut self.tails[i].orphan {
                Some(since) if got > 0 => {
                    *since = Instant::now();
                    false
                }
                Some(since) => since.elapsed() >= grace,
                None => false,
            };
            if finished {
                self.finish(i, intake, stop)?;
                progress = true;
            }
        }
        self.tails.retain(|t| !t.done);
        self.store.save(&self.tails)?;
        Ok(progress)
    }

    /// Start following a file just found at `path`. Returns whether it was added.
    fn follow_new(&mut self, path: PathBuf, first: bool) -> bool {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return false,
            Err(e) => {
                self.report(format!("{}: {e}", path.display()));
                return false;
            }
        };
        // The file may have been replaced since it was listed: take the identity of what was opened.
        let (id, size) = match file.metadata() {
            Ok(m) => (id_of(&m), m.len()),
            Err(e) => {
                self.report(format!("{}: {e}", path.display()));
                return false;
            }
        };
        if self.tails.iter().any(|t| t.id == id) {
            return false;
        }
        let offset = if first && self.config.start == Start::End && !self.known_paths.contains(&path) {
            match after_last_newline(&file, size) {
                Ok(o) => o,
                Err(e) => {
                    self.report(format!("{}: {e}", path.display()));
                    return false;
                }
            }
        } else {
            0
        };
        let mut tail = Tail::new(path, file, id, offset);
        if let Err(e) = tail.check_rewritten(size) {
            self.report(format!("{}: {e}", tail.path.display()));
        }
        self.tails.push(tail);
        true
    }

    /// Read what is new in tail `i` (up to [`CHUNKS_PER_POLL`] chunks), handing complete lines over in
    /// batches and saving the position after each. Returns the bytes read.
    fn read_tail(&mut self, i: usize, intake: &Intake, stop: &AtomicBool) -> Result<usize> {
        let batch = self.config.batch_lines.max(1);
        let mut total = 0;
        for _ in 0..CHUNKS_PER_POLL {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let Some(n) = self.tails[i].fill(&mut self.scratch)? else {
                eprintln!(
                    "collect: tail: {} was rewritten: reading it again from the start",
                    self.tails[i].path.display()
                );
                total += 1;
                continue;
            };
            if n == 0 {
                break;
            }
            total += n;
            let mut cursor = 0;
            let t = &mut self.tails[i];
            if t.skip {
                // The rest of an oversized line: drop it, up to and including its newline.
                cursor = match t.buf.iter().position(|&b| b == b'\n') {
                    Some(k) => {
                        t.skip = false;
                        k + 1
                    }
                    None => t.buf.len(),
                };
                t.offset += cursor as u64;
            }
            loop {
                let t = &self.tails[i];
                let (lines, end) = batch_end(&t.buf[cursor..], batch);
                if lines == 0 {
                    break;
                }
                intake.submit_lines(&t.buf[cursor..cursor + end], &t.headers, stop)?;
                cursor += end;
                self.tails[i].offset += end as u64;
                self.store.save(&self.tails)?;
            }
            let t = &mut self.tails[i];
            let rest = t.buf.len() - cursor;
            if !t.skip && rest > intake.max_event_bytes.saturating_add(1) {
                // An unfinished line already too long: hand over its start (the intake rejects it), skip
                // the rest rather than buffer it.
                intake.submit_lines(&t.buf[cursor..], &t.headers, stop)?;
                t.offset += rest as u64;
                t.skip = true;
                cursor = t.buf.len();
                self.store.save(&self.tails)?;
            }
            self.tails[i].buf.drain(..cursor);
            if n < self.scratch.len() {
                break; // at the end of the file for now
            }
        }
        let buf = &mut self.tails[i].buf;
        if buf.capacity() > 4 * CHUNK && buf.len() < CHUNK {
            buf.shrink_to(CHUNK);
        }
        Ok(total)
    }

    /// Tail `i` was rotated away and is read to its end: hand over its unfinished last line, forget it.
    fn finish(&mut self, i: usize, intake: &Intake, stop: &AtomicBool) -> Result<()> {
        let t = &mut self.tails[i];
        if !t.skip && !t.buf.is_empty() {
            intake.submit_lines(&t.buf, &t.headers, stop)?;
        }
        t.offset += t.buf.len() as u64;
        t.buf.clear();
        t.done = true;
        self.store.save(&self.tails)
    }
}

/// The file with identity `id` and the given fingerprint: at `path`, or else under another name in the
/// same directory (rotated while the source was stopped).
fn find(path: &Path, id: Id, head_len: u64, hash: u64) -> Option<File> {
    let open = |p: &Path| -> Option<File> {
        let f = File::open(p).ok()?;
        let same = id_of(&f.metadata().ok()?) == id && (head_len == 0 || head_hash(&f, head_len).ok()? == Some(hash));
        same.then_some(f)
    };
    if let Some(f) = open(path) {
        return Some(f);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && id_of(&m) == id))
        .find_map(|e| open(&e.path()))
}

/// The byte after the last `\n` in the first `size` bytes of `file` (0 if there is none).
fn after_last_newline(file: &File, size: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut end = size;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(k) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + k as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::collect::intake::{ChannelHandle, MemoryChannel};
    use crate::collect::interceptor::Chain;

    /// A tail source running in a thread over a memory channel.
    struct Running {
        stop: Arc<AtomicBool>,
        polls: Arc<AtomicU64>,
        thread: std::thread::JoinHandle<Result<()>>,
    }

    impl Running {
        fn start(config: &TailConfig, handle: &Arc<ChannelHandle>) -> Running {
            let stop = Arc::new(AtomicBool::new(false));
            let polls = Arc::new(AtomicU64::new(0));
            let (config, handle, s, p) = (config.clone(), handle.clone(), stop.clone(), polls.clone());
            let thread = std::thread::spawn(move || {
                let chain = Chain::new(&[], "x").expect("chain");
                let intake = Intake::new("t", chain, handle, None, config.max_event_bytes);
                run_counting(&config, &intake, &s, &p)
            });
            Running { stop, polls, thread }
        }

        /// Wait (failing after 20 s) until a whole poll has run after this call: the one under way
        /// may have looked at the files before the caller changed them, the next one began after.
        fn full_poll(&self) {
            let target = self.polls.load(Ordering::SeqCst) + 2;
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.polls.load(Ordering::SeqCst) < target {
                assert!(Instant::now() < deadline, "the tail source stopped polling");
                assert!(!self.thread.is_finished(), "the tail source ended");
                std::thread::sleep(Duration::from_millis(2));
            }
        }

        /// Nothing more arrives. Meaningful without a fixed wait: a poll that began after the call
        /// read every followed file to its end and put what it found into the channel before
        /// finishing, so anything that was going to arrive is in the channel now.
        fn quiet(&self, handle: &ChannelHandle) {
            self.full_poll();
            let extra = handle.take(100, Duration::ZERO).expect("take");
            let extra: Vec<_> = extra
                .iter()
                .map(|e| String::from_utf8_lossy(&e.body).into_owned())
                .collect();
            assert!(extra.is_empty(), "unexpected events: {extra:?}");
        }

        fn stop(self) {
            self.stop.store(true, Ordering::Relaxed);
            self.thread.join().expect("join").expect("tail source");
        }
    }

    fn config(dir: &Path, paths: &[&str], extra: &str) -> TailConfig {
        let paths: Vec<String> = paths.iter().map(|p| format!("\"{}\"", dir.join(p).display())).collect();
        toml::from_str(&format!(
            "paths = [{}]\nchannel = \"c\"\nposition_file = \"{}\"\npoll_ms = 10\n{extra}",
            paths.join(", "),
            dir.join("pos/tail.json").display()
        ))
        .expect("config")
    }

    fn channel() -> Arc<ChannelHandle> {
        ChannelHandle::new("c", Box::new(MemoryChannel::new(1_000_000)))
    }

    /// Take events until `n` arrived (failing after 20 s): (body, file header).
    fn take(handle: &ChannelHandle, n: usize) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} events arrived: {got:?}",
                got.len()
            );
            for e in handle.take(100_000, Duration::from_millis(20)).expect("take") {
                let file = e.headers.iter().find(|(k, _)| k == "file").map(|(_, v)| v.clone());
                got.push((String::from_utf8(e.body).expect("utf8"), file.expect("file header")));
            }
            handle.commit().expect("commit");
        }
        assert_eq!(got.len(), n, "more events than expected: {got:?}");
        got
    }

    fn bodies(handle: &ChannelHandle, n: usize) -> Vec<String> {
        take(handle, n).into_iter().map(|(b, _)| b).collect()
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        f.write_all(text.as_bytes()).expect("write");
    }

    fn lines(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("{prefix}-{i}")).collect()
    }

    fn text(lines: &[String]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    fn positions(dir: &Path) -> PositionFile {
        serde_json::from_slice(&std::fs::read(dir.join("pos/tail.json")).expect("position file")).expect("json")
    }

    #[test]
    fn config_is_a_newtype_variant_of_a_tagged_enum() {
        #[derive(Debug, Deserialize)]
        #[serde(tag = "type", rename_all = "lowercase")]
        enum Source {
            Tail(TailConfig),
        }
        let parse = |s: &str| toml::from_str::<Source>(s);
        let Source::Tail(c) =
            parse("type = \"tail\"\npaths = [\"logs/app-*.log\"]\nchannel = \"c\"\nposition_file = \"p.json\"\n")
                .expect("minimal config");
        assert_eq!(c.paths, vec![PathBuf::from("logs/app-*.log")]);
        assert_eq!((c.start, c.batch_lines, c.poll_ms), (Start::Beginning, 1000, 250));
        assert_eq!(c.max_event_bytes, crate::collect::intake::default_max_event_bytes());
        assert!(c.interceptors.is_empty() && c.dead_letter.is_none());
        let Source::Tail(c) = parse(
            "type = \"tail\"\npaths = [\"a\"]\nchannel = \"c\"\nposition_file = \"p\"\nstart = \"end\"\n\
             batch_lines = 7\npoll_ms = 5\ndead_letter = \"dl\"\nmax_event_bytes = 99\n",
        )
        .expect("full config");
        assert_eq!(
            (
                c.start,
                c.batch_lines,
                c.poll_ms,
                c.dead_letter.as_deref(),
                c.max_event_bytes
            ),
            (Start::End, 7, 5, Some("dl"), 99)
        );
        let e = parse("type = \"tail\"\npaths = [\"a\"]\nchannel = \"c\"\nposition_file = \"p\"\nspeed = 1\n")
            .expect_err("unknown key");
        assert!(e.to_string().contains("speed"), "{e}");
        let e = parse("type = \"tail\"\npaths = [\"a\"]\nchannel = \"c\"\n").expect_err("no position file");
        assert!(e.to_string().contains("position_file"), "{e}");
        let e = parse("type = \"tail\"\npaths = [\"a\"]\nchannel = \"c\"\nposition_file = \"p\"\nstart = \"middle\"\n")
            .expect_err("bad start");
        assert!(e.to_string().contains("middle"), "{e}");
    }

    #[test]
    fn glob_matching() {
        let m = |p: &str, n: &str| glob_match(p.as_bytes(), n.as_bytes());
        assert!(m("app-*.log", "app-1.log") && m("app-*.log", "app-.log") && m("*", "x") && m("a*b*c", "aXbYbc"));
        assert!(!m("app-*.log", "app-1.log.1") && !m("app-*.log", "xapp-1.log") && !m("*.log", ".hidden.log"));
        assert!(m(".*.log", ".hidden.log") && m("app.log", "app.log") && !m("app.log", "app.lo"));
        assert!(Pattern::parse(Path::new("logs*/a.log")).is_err());
        assert!(
            Pattern::parse(Path::new("logs/a*.log"))
                .expect("glob")
                .matches(Path::new("logs/ab.log"))
        );
        assert!(
            Pattern::parse(Path::new("a*.log"))
                .expect("glob")
                .matches(Path::new("ab.log"))
        );
    }

    #[test]
    fn pieces_arrive_once_in_order_and_a_partial_line_waits() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("app.log");
        let handle = channel();
        let src = Running::start(&config(dir.path(), &["app.log"], "batch_lines = 3"), &handle);
        append(&log, "one\ntw");
        assert_eq!(bodies(&handle, 1), ["one"]);
        src.quiet(&handle); // "tw" has no newline yet
        append(&log, "o\r\nthree\n\nfo");
        assert_eq!(
            bodies(&handle, 2),
            ["two", "three"],
            "\\r stripped, the empty line skipped"
        );
        append(&log, "ur\n");
        assert_eq!(bodies(&handle, 1), ["four"]);
        let mut want = Vec::new();
        for k in 0..30 {
            let chunk = lines(&format!("p{k}"), 0..(k * 7 % 11));
            want.extend(chunk.iter().cloned());
            // Split at an arbitrary byte, so lines straddle the writes.
            let t = text(&chunk);
            let (a, b) = t.split_at(t.len() / 3);
            append(&log, a);
            append(&log, b);
        }
        let got = take(&handle, want.len());
        assert!(got.iter().all(|(_, f)| *f == log.display().to_string()), "file header");
        assert_eq!(got.into_iter().map(|(b, _)| b).collect::<Vec<_>>(), want);
        src.quiet(&handle);
        src.stop();
        let pos = positions(dir.path());
        assert_eq!(pos.files.len(), 1);
        assert_eq!(pos.files[0].offset, std::fs::metadata(&log).expect("meta").len());
    }

    #[test]
    fn restart_resumes_at_the_saved_position() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("app.log");
        let cfg = config(dir.path(), &["app.log"], "batch_lines = 10");
        let handle = channel();
        append(&log, &text(&lines("a", 0..95)));
        append(&log, "partial");
        let src = Running::start(&cfg, &handle);
        assert_eq!(bodies(&handle, 95), lines("a", 0..95));
        src.stop();
        append(&log, &format!("-end\n{}", text(&lines("b", 0..40))));
        let src = Running::start(&cfg, &handle);
        let mut want = vec!["partial-end".to_string()];
        want.extend(lines("b", 0..40));
        assert_eq!(bodies(&handle, 41), want, "no line again, none lost");
        src.quiet(&handle);
        src.stop();
        // A third start with nothing new reads nothing.
        let src = Running::start(&cfg, &handle);
        src.quiet(&handle);
        src.stop();
    }

    #[test]
    fn rotation_while_running_drains_the_old_file_first() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("app.log");
        let handle = channel();
        // Writes to the old file are read for poll_ms after it last grew: make that long enough for a
        // busy test machine.
        let cfg = TailConfig {
            poll_ms: 200,
            ..config(dir.path(), &["app.log"], "batch_lines = 4")
        };
        let src = Running::start(&cfg, &handle);
        append(&log, &text(&lines("old", 0..10)));
        assert_eq!(bodies(&handle, 10), lines("old", 0..10));
        // The writer still holds the old file and writes to it after the rename, ending with an
        // unfinished line; meanwhile the new file gets lines too.
        let mut writer = std::fs::OpenOptions::new().append(true).open(&log).expect("open");
        std::fs::rename(&log, dir.path().join("app.log.1")).expect("rename");
        writer.write_all(text(&lines("old", 10..20)).as_bytes()).expect("write");
        append(&log, &text(&lines("new", 0..5)));
        writer.write_all(b"old-last").expect("write");
        drop(writer);
        let mut want = lines("old", 10..20);
        want.push("old-last".into());
        want.extend(lines("new", 0..5));
        let got = take(&handle, want.len());
        assert_eq!(
            got.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
            want,
            "old file first, nothing lost"
        );
        assert!(
            got.iter().all(|(_, f)| *f == log.display().to_string()),
            "followed as app.log"
        );
        append(&log, &text(&lines("new", 5..8)));
        assert_eq!(bodies(&handle, 3), lines("new", 5..8));
        src.quiet(&handle);
        src.stop();
        let pos = positions(dir.path());
        assert_eq!(pos.files.len(), 1, "the finished old file is forgotten: {pos:?}");
        let meta = std::fs::metadata(&log).expect("meta");
        assert_eq!((pos.files[0].ino, pos.files[0].offset), (meta.ino(), meta.len()));
    }

    #[test]
    fn rotation_while_stopped_finishes_the_old_file_then_reads_the_new_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("app.log");
        let cfg = config(dir.path(), &["app.log"], "batch_lines = 4");
        let handle = channel();
        append(&log, &text(&lines("old", 0..10)));
        let src = Running::start(&cfg, &handle);
        assert_eq!(bodies(&handle, 10), lines("old", 0..10));
        src.stop();
        append(&log, &text(&lines("old", 10..15)));
        std::fs::rename(&log, dir.path().join("app.log.1")).expect("rename");
        append(&log, &text(&lines("new", 0..6)));
        let src = Running::start(&cfg, &handle);
        let mut want = lines("old", 10..15);
        want.extend(lines("new", 0..6));
        assert_eq!(bodies(&handle, want.len()), want);
        src.quiet(&handle);
        src.stop();
        // Rotated twice while stopped: the file read last is gone from the directory; the newest is read
        // from its start, and the one in between is not followed (it was never seen).
        std::fs::rename(&log, dir.path().join("app.log.1")).expect("rename");
        append(&log, &text(&lines("newer", 0..3)));
        let src = Running::start(&cfg, &handle);
        assert_eq!(bodies(&handle, 3), lines("newer", 0..3));
        src.quiet(&handle);
        src.stop();
    }

    fn truncate(path: &Path) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open")
            .set_len(0)
            .expect("truncate");
    }

    #[test]
    fn copy_truncate_reads_again_from_the_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("app.log");
        let cfg = config(dir.path(), &["app.log"], "");
        let handle = channel();
        let src = Running::start(&cfg, &handle);
        append(&log, &text(&lines("first", 0..20)));
        assert_eq!(bodies(&handle, 20), lines("first", 0..20));
        std::fs::copy(&log, dir.path().join("app.log.1")).expect("copy");
        truncate(&log);
        append(&log, &text(&lines("second", 0..3)));
        assert_eq!(bodies(&handle, 3), lines("second", 0..3));
        src.quiet(&handle);
        src.stop();
        // While stopped: truncated and refilled past the old offset with other content (the fingerprint of
        // the first bytes tells).
        truncate(&log);
        append(&log, &text(&lines("third-and-longer", 0..10)));
        let src = Running::start(&cfg, &handle);
        assert_eq!(bodies(&handle, 10), lines("third-and-longer", 0..10));
        src.quiet(&handle);
        src.stop();
        // While running, truncated and refilled past the offset between two polls (the source sleeps 300 ms
        // when idle): the fingerprint tells, a size check alone could not.
        let slow = TailConfig {
            poll_ms: 300,
            ..cfg.clone()
        };
        let src = Running::start(&slow, &handle);
        append(
            &log, "x
",
        );
        assert_eq!(bodies(&handle, 1), ["x"]);
        truncate(&log);
        append(&log, &text(&lines("fourth-even-longer-lines", 0..12)));
        assert_eq!(bodies(&handle, 12), lines("fourth-even-longer-lines", 0..12));
        src.quiet(&handle);
        src.stop();
    }

    #[test]
    fn glob_picks_up_new_files_and_deleted_files_come_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).expect("mkdir");
        let handle = channel();
        append(&logs.join("app-1.log"), &text(&lines("one", 0..3)));
        append(&logs.join("other.txt"), "not followed\n");
        let src = Running::start(&config(dir.path(), &["logs/app-*.log", "solo.log"], ""), &handle);
        assert_eq!(bodies(&handle, 3), lines("one", 0..3));
        append(&logs.join("app-2.log"), &text(&lines("two", 0..4)));
        let got = take(&handle, 4);
        assert_eq!(
            got.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
            lines("two", 0..4)
        );
        assert_eq!(got[0].1, logs.join("app-2.log").display().to_string());
        // A literal path that appears late, disappears, and comes back with new content (maybe reusing
        // the inode number of the deleted file).
        let solo = dir.path().join("solo.log");
        append(&solo, &text(&lines("solo", 0..5)));
        assert_eq!(bodies(&handle, 5), lines("solo", 0..5));
        std::fs::remove_file(&solo).expect("rm");
        src.full_poll(); // the source has seen it gone
        append(&solo, &text(&lines("back", 0..2)));
        assert_eq!(bodies(&handle, 2), lines("back", 0..2));
        append(&logs.join("app-1.log"), &text(&lines("one", 3..5)));
        assert_eq!(bodies(&handle, 2), lines("one", 3..5));
        src.quiet(&handle);
        src.stop();
    }

    #[test]
    fn a_pattern_matching_rotated_names_reads_nothing_twice() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("app.log");
        let handle = channel();
        let src = Running::start(&config(dir.path(), &["app.log*"], ""), &handle);
        append(&log, &text(&lines("a", 0..5)));
        assert_eq!(bodies(&handle, 5), lines("a", 0..5));
        std::fs::rename(&log, dir.path().join("app.log.1")).expect("rename");
        append(&dir.path().join("app.log.1"), &text(&lines("a", 5..7)));
        append(&log, &text(&lines("b", 0..2)));
        let mut got = bodies(&handle, 4);
        got.sort();
        assert_eq!(got, ["a-5", "a-6", "b-0", "b-1"]);
        src.quiet(&handle);
        src.stop();
    }

    #[test]
    fn start_at_end_skips_what_files_hold_at_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("app.log");
        let cfg = config(dir.path(), &["*.log"], "start = \"end\"");
        append(&log, &text(&lines("before", 0..5)));
        append(&log, "unfinished");
        let handle = channel();
        let src = Running::start(&cfg, &handle);
        src.full_poll(); // the first poll has placed the start at the end of what the file held
        append(&log, "-line\nafter\n");
        append(&dir.path().join("late.log"), "late\n");
        let mut got = bodies(&handle, 3);
        got.sort();
        assert_eq!(
            got,
            ["after", "late", "unfinished-line"],
            "the unfinished line is completed, not cut"
        );
        src.stop();
        // On restart the saved position wins over `start`.
        append(&log, "while-stopped\n");
        let src = Running::start(&cfg, &handle);
        assert_eq!(bodies(&handle, 1), ["while-stopped"]);
        src.quiet(&handle);
        src.stop();
    }

    #[test]
    fn an_oversized_line_is_rejected_without_buffering_it_all() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("app.log");
        let handle = channel();
        let src = Running::start(&config(dir.path(), &["app.log"], "max_event_bytes = 100"), &handle);
        append(&log, "small\n");
        append(&log, &"x".repeat(CHUNK * 2 + 17));
        assert_eq!(bodies(&handle, 1), ["small"]);
        src.full_poll(); // the oversized start is read (and set aside) before the rest of the line
        append(&log, &format!("{}\nok\n", "y".repeat(300)));
        assert_eq!(
            bodies(&handle, 1),
            ["ok"],
            "the oversized line went to the dead letters"
        );
        src.quiet(&handle);
        src.stop();
    }

    #[test]
    fn many_lines_in_big_batches() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("app.log");
        let n = 200_000;
        let mut big = String::new();
        for i in 0..n {
            big.push_str(&format!(
                "{{\"n\":{i},\"msg\":\"some log line of a typical length\"}}\n"
            ));
        }
        std::fs::write(&log, &big).expect("write");
        let handle = channel();
        let t0 = Instant::now();
        let src = Running::start(&config(dir.path(), &["app.log"], ""), &handle);
        let got = bodies(&handle, n);
        let rate = n as f64 / t0.elapsed().as_secs_f64();
        src.stop();
        eprintln!("tail: {n} lines in {:?} ({rate:.0} lines/s, debug build)", t0.elapsed());
        for (i, b) in got.iter().enumerate().step_by(997) {
            assert!(b.starts_with(&format!("{{\"n\":{i},")), "line {i}: {b}");
        }
        assert_eq!(got.len(), n);
    }

    #[test]
    fn a_corrupt_position_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("pos")).expect("mkdir");
        std::fs::write(dir.path().join("pos/tail.json"), "{not json").expect("write");
        let cfg = config(dir.path(), &["app.log"], "");
        let e = Tailer::open(&cfg).err().expect("error");
        assert!(e.to_string().contains("tail.json"), "{e}");
    }
}
