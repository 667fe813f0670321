//! Line-oriented sources: the spooling directory, TCP lines and standard input, and the line splitter
//! they share (complete lines only, oversized lines cut and rejected, batches handed to an [`Intake`]).

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::intake::Intake;
use crate::error::{Error, Result};

const READ_CHUNK: usize = 256 << 10;

/// Splits a byte stream into lines and hands them to an [`Intake`] in batches. A line longer than the
/// intake's `max_event_bytes` is cut to that length and rejected (dead letter); the rest of it, up to its
/// newline, is skipped.
pub struct LineBatcher<'a> {
    intake: &'a Intake,
    headers: Vec<(String, String)>,
    batch_lines: usize,
    /// Complete lines not yet submitted, newline-terminated.
    pending: Vec<u8>,
    pending_lines: usize,
    /// The unfinished line at the end of what was fed.
    partial: Vec<u8>,
    /// Inside an oversized line whose rest is being skipped.
    skipping: bool,
    /// Bytes fed whose lines are all submitted (or skipped): where a reader may resume.
    pub consumed: u64,
    /// Bytes fed so far.
    fed: u64,
    /// Lines handed to the intake (accepted or rejected).
    pub handed: u64,
}

impl<'a> LineBatcher<'a> {
    pub fn new(intake: &'a Intake, headers: Vec<(String, String)>, batch_lines: usize) -> LineBatcher<'a> {
        LineBatcher {
            intake,
            headers,
            batch_lines: batch_lines.max(1),
            pending: Vec::new(),
            pending_lines: 0,
            partial: Vec::new(),
            skipping: false,
            consumed: 0,
            fed: 0,
            handed: 0,
        }
    }

    /// Feed the next bytes; submits whenever `batch_lines` complete lines are pending, and after each
    /// batch the intake took calls `after_batch` with [`Self::consumed`] (a reader saves its position
    /// there, so a crash re-reads at most one batch).
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        stop: &AtomicBool,
        mut after_batch: impl FnMut(u64) -> Result<()>,
    ) -> Result<()> {
        while !bytes.is_empty() {
            let nl = bytes.iter().position(|b| *b == b'\n');
            let (piece, rest, complete) = match nl {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            self.fed += (piece.len() + usize::from(complete)) as u64;
            bytes = rest;
            let max = self.intake.max_event_bytes;
            if self.skipping {
                self.skipping = !complete;
            } else if self.partial.len() + piece.len() > max {
                let len = self.partial.len() + piece.len();
                let line_start = self.fed - (len + usize::from(complete)) as u64;
                let mut head = std::mem::take(&mut self.partial);
                let room = max - head.len();
                head.extend_from_slice(&piece[..room]);
                self.flush(stop)?;
                // Resume at the start of this line until it is wholly skipped.
                self.consumed = if complete { self.fed } else { line_start };
                let whole = complete.then_some(len);
                self.intake
                    .reject(vec![self.intake.oversized(&head, whole, &self.headers)], stop)?;
                self.handed += 1;
                self.skipping = !complete;
                continue;
            } else if complete {
                if self.partial.is_empty() {
                    self.pending.extend_from_slice(piece);
                } else {
                    self.pending.append(&mut self.partial);
                    self.pending.extend_from_slice(piece);
                }
                self.pending.push(b'\n');
                self.pending_lines += 1;
                if self.pending_lines >= self.batch_lines {
                    self.flush(stop)?;
                    after_batch(self.consumed)?;
                }
            } else {
                self.partial.extend_from_slice(piece);
            }
        }
        Ok(())
    }

    /// Submit the complete lines pending.
    pub fn flush(&mut self, stop: &AtomicBool) -> Result<()> {
        if !self.pending.is_empty() {
            self.intake.submit_lines(&self.pending, &self.headers, stop)?;
            self.handed += self.pending_lines as u64;
            self.pending.clear();
            self.pending_lines = 0;
        }
        // While an oversized line is skipped, a reader resuming mid-line would see its rest as a line:
        // stay at its start (it is rejected again rather than cut in two).
        if !self.skipping {
            self.consumed = self.fed - self.partial.len() as u64;
        }
        Ok(())
    }

    /// End of input: the unfinished last line counts as a line; everything is submitted.
    pub fn finish(&mut self, stop: &AtomicBool) -> Result<()> {
        if !self.partial.is_empty() {
            self.pending.append(&mut self.partial);
            self.pending.push(b'\n');
            self.pending_lines += 1;
        }
        self.skipping = false;
        self.flush(stop)
    }

    pub fn pending_lines(&self) -> usize {
        self.pending_lines
    }
}

/// Progress through the file being spooled, kept in `.freshet-spool.json` in the spool directory and
/// rewritten (tmp + rename) after every batch the channel accepted, so after a crash at most one batch
/// of that file is read again.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct SpoolProgress {
    file: String,
    inode: u64,
    offset: u64,
}

const SPOOL_PROGRESS: &str = ".freshet-spool.json";

fn inode(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The spooling-directory source: complete files dropped into `dir` are read once their size held still
/// for one scan, then renamed to `NAME.COMPLETED` (or deleted). Names starting with `.` or ending in
/// `.tmp` / `.COMPLETED` are ignored. Files are taken oldest first (modification time, then name).
pub fn spool(dir: &Path, intake: &Intake, delete: bool, batch_lines: usize, stop: &AtomicBool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let progress_path = dir.join(SPOOL_PROGRESS);
    let mut sizes: std::collections::HashMap<PathBuf, u64> = std::collections::HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let mut ready = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".COMPLETED") || name.ends_with(".tmp") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            // Never read a file still being written: its size must hold still for one scan.
            if sizes.insert(path.clone(), meta.len()) == Some(meta.len()) {
                ready.push((meta.modified().ok(), name, path, inode(&meta)));
            }
        }
        ready.sort();
        for (_, name, path, ino) in ready {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let start = std::fs::read(&progress_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<SpoolProgress>(&b).ok())
                .filter(|p| p.file == name && p.inode == ino)
                .map_or(0, |p| p.offset);
            let done = spool_file(&path, &name, ino, start, intake, batch_lines, &progress_path, stop)?;
            if !done {
                break;
            }
            sizes.remove(&path);
            if delete {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            } else {
                let completed = path.with_file_name(format!("{name}.COMPLETED"));
                std::fs::rename(&path, &completed).map_err(|e| Error::io(&completed, e))?;
            }
            let _ = std::fs::remove_file(&progress_path);
        }
        sleep_unless(stop, Duration::from_millis(250));
    }
    Ok(())
}

/// Read one spooled file from `start`; false if stopped before its end.
#[allow(clippy::too_many_arguments)]
fn spool_file(
    path: &Path,
    name: &str,
    ino: u64,
    start: u64,
    intake: &Intake,
    batch_lines: usize,
    progress_path: &Path,
    stop: &AtomicBool,
) -> Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    file.seek(SeekFrom::Start(start)).map_err(|e| Error::io(path, e))?;
    let mut lines = LineBatcher::new(intake, vec![("file".to_string(), name.to_string())], batch_lines);
    let mut buf = vec![0u8; READ_CHUNK];
    let save = |consumed: u64| -> Result<()> {
        let p = SpoolProgress {
            file: name.to_string(),
            inode: ino,
            offset: start + consumed,
        };
        write_atomically(progress_path, &serde_json::to_vec(&p).unwrap_or_default())
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            // Held back by a full channel when asked to stop: what was put is saved, nothing is lost.
            let _ = lines.flush(stop);
            save(lines.consumed)?;
            return Ok(false);
        }
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            lines.finish(stop)?;
            return Ok(true);
        }
        match lines.feed(&buf[..n], stop, &save) {
            Ok(()) => {}
            Err(_) if stop.load(Ordering::Relaxed) => {}
            Err(e) => return Err(e),
        }
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let step = Duration::from_millis(25);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step.min(left));
        left = left.saturating_sub(step);
    }
}

/// Standard input, one event per line, until end of input.
pub fn stdin(intake: &Intake, batch_lines: usize, stop: &AtomicBool) -> Result<()> {
    let mut lines = LineBatcher::new(intake, vec![], batch_lines);
    let mut input = std::io::stdin().lock();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return lines.finish(stop),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("<stdin>", e)),
        };
        lines.feed(&buf[..n], stop, |_| Ok(()))?;
        // Stdin is often interactive: what has arrived goes in now rather than when a batch fills.
        lines.flush(stop)?;
    }
}

/// TCP lines: every connection sends newline-terminated events. With `ack`, the source answers
/// `OK <n>\n` once the `n` lines received so far on that connection are in the channel.
pub fn tcp(
    listener: TcpListener,
    intake: Arc<Intake>,
    batch_lines: usize,
    ack: bool,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::External(format!("tcp source: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::External(format!("tcp source {addr}: {e}")))?;
    let mut conns: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let (intake, stop) = (intake.clone(), stop.clone());
                conns.push(std::thread::spawn(move || {
                    if let Err(e) = tcp_connection(stream, &intake, batch_lines, ack, &stop) {
                        eprintln!("collect: source '{}': connection from {peer}: {e}", intake.name);
                    }
                }));
                conns.retain(|c| !c.is_finished());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::External(format!("tcp source {addr}: accept: {e}"))),
        }
    }
    for c in conns {
        let _ = c.join();
    }
    Ok(())
}

fn tcp_connection(
    mut stream: TcpStream,
    intake: &Intake,
    batch_lines: usize,
    ack: bool,
    stop: &AtomicBool,
) -> Result<()> {
    let io = |e: std::io::Error| Error::External(format!("tcp: {e}"));
    stream.set_nonblocking(false).map_err(io)?;
    stream.set_read_timeout(Some(Duration::from_millis(100))).map_err(io)?;
    let mut lines = LineBatcher::new(intake, vec![], batch_lines);
    let mut buf = vec![0u8; 64 << 10];
    let mut acked = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return lines.flush(stop);
        }
        let (n, idle) = match stream.read(&mut buf) {
            Ok(0) => {
                lines.finish(stop)?;
                return Ok(());
            }
            Ok(n) => (n, n < buf.len()),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                (0, true)
            }
            Err(e) => return Err(io(e)),
        };
        lines.feed(&buf[..n], stop, |_| Ok(()))?;
        if idle && lines.pending_lines() > 0 {
            lines.flush(stop)?;
        }
        if ack {
            let total = lines.handed;
            if total > acked {
                acked = total;
                stream.write_all(format!("OK {total}\n").as_bytes()).map_err(io)?;
            }
        }
    }
}
