//! The durable disk channel: events put by sources survive a crash until a sink takes *and commits* them.
//!
//! Producers call [`DiskChannel::put_batch`], which returns the events' ids once the batch is as durable as
//! the [`FsyncPolicy`] promises. The consumer takes events transactionally: [`DiskChannel::take`] hands out
//! the next events, [`DiskChannel::commit`] acknowledges everything taken so far, [`DiskChannel::rollback`]
//! makes it available again. After a crash, everything not acknowledged is delivered again (at least once):
//! the duplicates are what was taken but not committed, and they carry the ids they had before.
//!
//! # Guarantees
//!
//! - **Ids** start at 1 and strictly increase, across restarts too, but are not contiguous: a restart skips to
//!   the end of a reserved block (see `id_limit` below), so no id handed out before a crash — even one whose
//!   event was lost because it was never fsynced — is ever reused for another event.
//! - **Batches are atomic.** A batch lives in one segment and its last record is marked; recovery drops a
//!   trailing batch that was not written completely. A producer that got no ids back retries the whole batch,
//!   so the channel never keeps half of it under ids nobody was told about.
//! - **Backpressure.** When `capacity_events` events are unacknowledged (taken but uncommitted ones count),
//!   `put_batch` returns [`Error::Full`] without writing anything; retry after the consumer commits.
//! - **Fsync.** [`FsyncPolicy::EveryBatch`] returns ids only after `fdatasync`. `Interval(d)` syncs during a
//!   `put_batch` when `d` has passed since the last sync; an idle owner calls [`DiskChannel::sync_if_due`]
//!   from a timer. `Never` leaves it to the OS. Whatever the policy, a segment is synced before the next
//!   one is created, so only the last segment can have a torn tail, and the checkpoint is always synced.
//!
//! # Files in the channel directory
//!
//! All integers are little-endian; CRCs are CRC-32 (IEEE, as in zlib and Ethernet).
//!
//! - `lock`: empty; held with an exclusive lock while a channel is open, so two agents never share a directory.
//! - `{seq:020}.seg`: segments, numbered consecutively. An 8-byte header `FRSHSEG1`, then records:
//!
//!   ```text
//!   u32 len        bytes of payload
//!   u32 crc        CRC-32 of the 4 len bytes followed by the payload
//!   payload:
//!     u64 id
//!     u8  flags    bit 0: last record of its batch (other bits must be 0)
//!     u32 n        number of headers, then n times: u32 key len, key (UTF-8), u32 value len, value (UTF-8)
//!     ...          body: the rest of the payload
//!   ```
//!
//!   A new segment is started before a batch that would push the current one past `segment_bytes` (a batch
//!   bigger than that gets a segment of its own). Segments wholly before the checkpoint are deleted.
//! - `checkpoint`: 44 bytes: `FRSHCKP1`, u64 segment seq, u64 offset and u64 id of the first unacknowledged
//!   event (the end of the last segment and the next id when all are acknowledged), u64 `id_limit` (every id
//!   handed out is below it; reserved in blocks of 2^20), u32 CRC-32 of the preceding 40 bytes. Written as
//!   `checkpoint.tmp`, synced, renamed over `checkpoint`, directory synced.
//!
//! # Recovery
//!
//! [`DiskChannel::open`] reads the checkpoint, deletes segments before it (a crash between the checkpoint and
//! the deletion leaves them), and scans every remaining segment, checking each record's CRC, structure and
//! id order. In the last segment, the first torn or bad record (short header, length past the end of the
//! file, CRC mismatch) and everything after it is truncated away, as is a trailing incomplete batch; the
//! result is reported by [`DiskChannel::recovery`]. Anything wrong in an earlier segment — which was synced
//! before its successor existed, so cannot be torn — is [`Error::Corrupt`] naming the file and offset. So is,
//! under `EveryBatch`, a bad record in the last segment followed by intact records of a later batch: each
//! batch was synced before the next was written, so only the last one can be torn. (Under the other
//! policies several batches may be unsynced and written back out of order, so there it counts as a torn
//! tail.) If the checkpoint lies past the recovered end — acknowledged events that were never synced and
//! are gone — consumption resumes at the end.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and so who must act: the disk ([`Error::Io`]), an operator ([`Error::Corrupt`],
/// [`Error::Locked`]), or the caller ([`Error::Full`]: retry later; [`Error::TooLarge`]: never fits).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the channel could not be read, written or synced.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Damage that is not a torn write at the tail: recovery cannot decide what to drop.
    #[error("{}: corrupt at byte {offset}: {reason}", file.display())]
    Corrupt { file: PathBuf, offset: u64, reason: String },
    /// `capacity_events` events are unacknowledged; nothing was written. Retry after the consumer commits.
    #[error("channel full: {capacity} events not yet acknowledged")]
    Full { capacity: u64 },
    /// A batch or event that can never be stored (more events than the capacity, a field over 4 GiB).
    #[error("{0}")]
    TooLarge(String),
    /// Another channel (in this or another process) has the directory open.
    #[error("{}: channel directory is in use by another channel", dir.display())]
    Locked { dir: PathBuf },
}

impl Error {
    /// Backpressure: the batch may succeed later.
    pub fn is_full(&self) -> bool {
        matches!(self, Error::Full { .. })
    }
}

fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        file: file.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Whether a batch of `n` events fits a channel holding `len` of `capacity`: [`Error::TooLarge`] if it
/// never can, [`Error::Full`] if not now. Shared by every channel.
pub fn check_room(len: u64, n: u64, capacity: u64) -> Result<()> {
    if n > capacity {
        return Err(Error::TooLarge(format!(
            "a batch of {n} events can never fit a channel of capacity {capacity}"
        )));
    }
    if len + n > capacity {
        return Err(Error::Full { capacity });
    }
    Ok(())
}

/// When appended events are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before `put_batch` returns: nothing acknowledged to a producer is lost in a power failure.
    EveryBatch,
    /// At most this long after a write, provided the owner keeps calling `put_batch` or `sync_if_due`.
    Interval(Duration),
    /// Never (the OS writes back when it likes): survives a process crash, not a power failure.
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOptions {
    /// A segment is closed once the next batch would take it past this size (64 MiB by default).
    pub segment_bytes: u64,
    /// Most unacknowledged events the channel holds before `put_batch` fails with `Full` (1 000 000).
    pub capacity_events: u64,
    /// When writes reach the disk (`EveryBatch`).
    pub fsync: FsyncPolicy,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            segment_bytes: 64 << 20,
            capacity_events: 1_000_000,
            fsync: FsyncPolicy::EveryBatch,
        }
    }
}

/// One event as stored: the id the channel gave it, its body and its headers (in the order given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// An event to put: its body and its headers.
pub type NewEvent = (Vec<u8>, Vec<(String, String)>);

/// Figures for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStats {
    /// Unacknowledged events (as [`DiskChannel::len`]).
    pub events: u64,
    /// Of those, taken but not yet committed.
    pub in_flight: u64,
    /// Bytes in segment files.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// The id the next event will get.
    pub next_id: u64,
}

/// What `open` cut from the tail of the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub file: PathBuf,
    /// The new end of the file.
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// What was found, and where.
    pub reason: String,
}

const SEGMENT_MAGIC: &[u8; 8] = b"FRSHSEG1";
const CHECKPOINT_MAGIC: &[u8; 8] = b"FRSHCKP1";
const SEGMENT_HEADER: u64 = 8;
/// `len` and `crc` before each payload.
const RECORD_HEADER: u64 = 8;
const CHECKPOINT_LEN: usize = 44;
const LAST_IN_BATCH: u8 = 1;
const FIRST_ID: u64 = 1;
/// Ids are reserved this many at a time (one checkpoint write per block).
const ID_BLOCK: u64 = 1 << 20;
const READ_BUFFER: usize = 256 << 10;
const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";
const LOCK: &str = "lock";

struct Segment {
    seq: u64,
    path: PathBuf,
    /// Bytes of complete batches (the file's length).
    len: u64,
    events: u64,
}

/// A record boundary. `ordinal` counts events from the first one present at `open`, so differences of
/// ordinals are event counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    seq: u64,
    offset: u64,
    ordinal: u64,
}

struct Reader {
    seq: u64,
    offset: u64,
    file: BufReader<File>,
}

struct Checkpoint {
    seq: u64,
    offset: u64,
    id: u64,
    id_limit: u64,
}

/// A durable, single-owner event channel in one directory. See the module documentation for the format.
pub struct DiskChannel {
    dir: PathBuf,
    opts: ChannelOptions,
    /// Held for its lock.
    _lock: File,
    /// Consecutive seqs; the last one is appended to.
    segments: VecDeque<Segment>,
    writer: File,
    next_id: u64,
    /// Every id handed out is below this, durably (it is in the checkpoint).
    id_limit: u64,
    /// The ordinal after the last event written.
    written: u64,
    /// The first unacknowledged event, and its id (`next_id` at the time, if there was none).
    ack: Cursor,
    ack_id: u64,
    /// The first event not yet taken.
    read: Cursor,
    reader: Option<Reader>,
    unsynced: bool,
    last_sync: Instant,
    /// Set when a failed write or sync leaves the last segment in doubt; only reopening recovers.
    poisoned: Option<String>,
    /// Acknowledged segments whose deletion failed; retried at each commit.
    pending_delete: Vec<PathBuf>,
    recovered: Option<Truncation>,
    buf: Vec<u8>,
}

impl DiskChannel {
    /// Open (creating if needed) the channel in `dir` and recover it; see the module documentation.
    pub fn open(dir: &Path, opts: ChannelOptions) -> Result<DiskChannel> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let lock = lock_dir(dir)?;
        remove_if_exists(&dir.join(CHECKPOINT_TMP))?;
        let checkpoint_path = dir.join(CHECKPOINT);
        let checkpoint = read_checkpoint(&checkpoint_path)?;

        let mut seqs = list_segments(dir)?;
        if let Some(ck) = &checkpoint {
            for &seq in seqs.iter().filter(|&&seq| seq < ck.seq) {
                remove_if_exists(&segment_path(dir, seq))?;
            }
            seqs.retain(|&seq| seq >= ck.seq);
            if seqs.first() != Some(&ck.seq) {
                let missing = segment_path(dir, ck.seq);
                return Err(corrupt(
                    &checkpoint_path,
                    8,
                    format!("refers to segment {}, which is missing", missing.display()),
                ));
            }
        } else if seqs.is_empty() {
            create_segment(dir, 0)?;
            seqs.push(0);
        }
        for pair in seqs.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(corrupt(&segment_path(dir, pair[0] + 1), 0, "segment file is missing"));
            }
        }

        let lookahead = opts.fsync == FsyncPolicy::EveryBatch;
        let mut segments = VecDeque::with_capacity(seqs.len());
        let mut prev_id = None;
        let mut ordinal = 0;
        let mut ack = None;
        let mut recovered = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            let path = segment_path(dir, seq);
            let target = checkpoint.as_ref().filter(|ck| ck.seq == seq);
            let scan = scan_segment(&path, last, lookahead, prev_id, target.map(|ck| ck.offset))?;
            if let Some(ck) = target {
                let cursor = match scan.hit {
                    Some(hit) => {
                        if let Some(id) = hit.id
                            && id != ck.id
                        {
                            return Err(corrupt(
                                &checkpoint_path,
                                24,
                                format!("names event {} but {} holds event {id} there", ck.id, path.display()),
                            ));
                        }
                        Cursor {
                            seq,
                            offset: ck.offset,
                            ordinal: ordinal + hit.events_before,
                        }
                    }
                    // Acknowledged events that were never synced are gone: nothing of them to redeliver.
                    None if last && ck.offset > scan.len => Cursor {
                        seq,
                        offset: scan.len,
                        ordinal: ordinal + scan.events,
                    },
                    None => {
                        return Err(corrupt(
                            &checkpoint_path,
                            16,
                            format!("offset {} is not a record boundary of {}", ck.offset, path.display()),
                        ));
                    }
                };
                ack = Some(cursor);
            }
            if scan.truncated.is_some() {
                recovered = scan.truncated;
            }
            prev_id = scan.last_id.or(prev_id);
            ordinal += scan.events;
            segments.push_back(Segment {
                seq,
                path,
                len: scan.len,
                events: scan.events,
            });
        }

        let (first_seq, last_path) = match (segments.front(), segments.back()) {
            (Some(first), Some(last)) => (first.seq, last.path.clone()),
            _ => return Err(corrupt(dir, 0, "no segments")),
        };
        let ack = ack.unwrap_or(Cursor {
            seq: first_seq,
            offset: SEGMENT_HEADER,
            ordinal: 0,
        });
        let next_id = prev_id
            .map_or(FIRST_ID, |id| id + 1)
            .max(checkpoint.as_ref().map_or(FIRST_ID, |ck| ck.id.max(ck.id_limit)));
        let writer = open_append(&last_path)?;
        let mut channel = DiskChannel {
            dir: dir.to_path_buf(),
            opts,
            _lock: lock,
            segments,
            writer,
            next_id,
            id_limit: next_id,
            written: ordinal,
            ack,
            ack_id: next_id,
            read: ack,
            reader: None,
            unsynced: false,
            last_sync: Instant::now(),
            poisoned: None,
            pending_delete: Vec::new(),
            recovered,
            buf: Vec::new(),
        };
        // Rewrite the checkpoint now: it reserves the first block of ids, and if recovery moved the
        // acknowledged position, no new record may land where the old checkpoint points.
        channel.ack = channel.normalize(channel.ack)?;
        channel.read = channel.ack;
        channel.ack_id = channel.id_at(channel.ack)?;
        channel.id_limit = next_id + ID_BLOCK;
        channel.write_checkpoint(channel.ack, channel.ack_id, channel.id_limit)?;
        Ok(channel)
    }

    /// Append a batch; returns the ids given to its events, once the batch is as durable as the policy says.
    /// Takes a slice so that the caller still has the events to retry with after [`Error::Full`]. The batch
    /// is all or nothing: on any error none of it is stored.
    pub fn put_batch(&mut self, events: &[NewEvent]) -> Result<Vec<u64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.check_writable()?;
        let n = events.len() as u64;
        check_room(self.len(), n, self.opts.capacity_events)?;
        let first_id = self.next_id;
        if first_id + n > self.id_limit {
            let id_limit = first_id + n + ID_BLOCK;
            self.write_checkpoint(self.ack, self.ack_id, id_limit)?;
            self.id_limit = id_limit;
        }

        self.buf.clear();
        for (i, (body, headers)) in events.iter().enumerate() {
            let last = i + 1 == events.len();
            encode_record(&mut self.buf, first_id + i as u64, last, body, headers)?;
        }
        let batch_len = self.buf.len() as u64;
        if let Some(seg) = self.segments.back()
            && seg.len > SEGMENT_HEADER
            && seg.len + batch_len > self.opts.segment_bytes
        {
            self.roll()?;
        }
        let Some(seg) = self.segments.back_mut() else {
            return Err(corrupt(&self.dir, 0, "no segments"));
        };
        if let Err(e) = self.writer.write_all(&self.buf) {
            // Cut the partial batch off so the next one does not follow garbage.
            if let Err(e2) = self.writer.set_len(seg.len) {
                self.poisoned = Some(format!("truncating after a failed write: {e2}"));
            }
            return Err(io_err(&seg.path, e));
        }
        self.unsynced = true;
        let sync_now = match self.opts.fsync {
            FsyncPolicy::EveryBatch => true,
            FsyncPolicy::Interval(d) => self.last_sync.elapsed() >= d,
            FsyncPolicy::Never => false,
        };
        if sync_now {
            self.sync_writer()?;
        }
        if let Some(seg) = self.segments.back_mut() {
            seg.len += batch_len;
            seg.events += n;
        }
        self.next_id += n;
        self.written += n;
        Ok((first_id..first_id + n).collect())
    }

    /// Up to `max` events after the last taken one (fewer, or none, when the channel has no more).
    pub fn take(&mut self, max: usize) -> Result<Vec<Event>> {
        let mut out = Vec::with_capacity(max.min(self.len() as usize));
        let result = self.take_into(max, &mut out);
        if result.is_err() {
            // The reader may be anywhere within a record; reopen it next time.
            self.reader = None;
        }
        result.map(|()| out)
    }

    fn take_into(&mut self, max: usize, out: &mut Vec<Event>) -> Result<()> {
        let mut cur = self.read;
        while out.len() < max {
            cur = self.normalize(cur)?;
            let seg = find(&self.segments, cur.seq)?;
            if cur.offset >= seg.len {
                break;
            }
            let reader = position(&mut self.reader, seg, cur.offset)?;
            let mut payload = Vec::new();
            let size = match read_record(&mut reader.file, cur.offset, seg.len, &mut payload) {
                Ok(Record::Valid { size, .. }) => size,
                Ok(Record::End) => return Err(corrupt(&seg.path, cur.offset, "unexpected end of segment")),
                Ok(Record::Torn(reason) | Record::Bad { reason, .. }) => {
                    return Err(corrupt(&seg.path, cur.offset, reason));
                }
                Err(e) => return Err(io_err(&seg.path, e)),
            };
            reader.offset += size;
            out.push(decode_event(payload).map_err(|reason| corrupt(&seg.path, cur.offset, reason))?);
            cur.offset += size;
            cur.ordinal += 1;
        }
        self.read = cur;
        Ok(())
    }

    /// Acknowledge every event taken so far: write the checkpoint, then delete segments wholly before it.
    /// If only a deletion fails, the acknowledgement still stands and the deletion is retried next time.
    pub fn commit(&mut self) -> Result<()> {
        if self.read.ordinal != self.ack.ordinal {
            let cur = self.normalize(self.read)?;
            let id = self.id_at(cur)?;
            self.write_checkpoint(cur, id, self.id_limit)?;
            self.ack = cur;
            self.ack_id = id;
            self.read = cur;
            while let Some(front) = self.segments.front()
                && front.seq < cur.seq
            {
                if let Some(seg) = self.segments.pop_front() {
                    self.pending_delete.push(seg.path);
                }
            }
        }
        let mut failed = None;
        self.pending_delete.retain(|path| match fs::remove_file(path) {
            Ok(()) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                failed.get_or_insert_with(|| io_err(path, e));
                true
            }
        });
        failed.map_or(Ok(()), Err)
    }

    /// Make the events taken since the last commit available to `take` again.
    pub fn rollback(&mut self) {
        self.read = self.ack;
    }

    /// Unacknowledged events (taken-but-uncommitted ones included): what a crash now would redeliver.
    pub fn len(&self) -> u64 {
        self.written - self.ack.ordinal
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> ChannelStats {
        ChannelStats {
            events: self.len(),
            in_flight: self.read.ordinal - self.ack.ordinal,
            bytes: self.segments.iter().map(|s| s.len).sum(),
            segments: self.segments.len(),
            next_id: self.next_id,
        }
    }

    pub fn options(&self) -> &ChannelOptions {
        &self.opts
    }

    /// What `open` truncated from the last segment, if anything (for the agent to log).
    pub fn recovery(&self) -> Option<&Truncation> {
        self.recovered.as_ref()
    }

    /// Force appended events to disk now, whatever the policy.
    pub fn sync(&mut self) -> Result<()> {
        self.check_writable()?;
        if self.unsynced { self.sync_writer() } else { Ok(()) }
    }

    /// Under [`FsyncPolicy::Interval`], sync if the interval has passed since the last sync; otherwise do
    /// nothing. For a timer, so that the last writes before a quiet spell do not wait for the next batch.
    pub fn sync_if_due(&mut self) -> Result<()> {
        match self.opts.fsync {
            FsyncPolicy::Interval(d) if self.unsynced && self.last_sync.elapsed() >= d => self.sync(),
            _ => Ok(()),
        }
    }

    fn sync_writer(&mut self) -> Result<()> {
        if let Err(e) = self.writer.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages: what is on disk is unknown
            // until a reopen scans it.
            self.poisoned = Some(format!("fsync failed: {e}"));
            return Err(io_err(self.write_path(), e));
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        match &self.poisoned {
            None => Ok(()),
            Some(reason) => Err(io_err(
                self.write_path(),
                io::Error::other(format!("an earlier write failed ({reason}); reopen the channel")),
            )),
        }
    }

    fn write_path(&self) -> &Path {
        self.segments.back().map_or(self.dir.as_path(), |s| s.path.as_path())
    }

    /// Close the last segment and start the next one.
    fn roll(&mut self) -> Result<()> {
        // Sync the finished segment before its successor exists: recovery treats damage anywhere but in
        // the last segment as corruption, not as a torn write.
        if self.unsynced {
            self.sync_writer()?;
        }
        let seq = self.segments.back().map_or(0, |s| s.seq + 1);
        let path = segment_path(&self.dir, seq);
        match create_segment(&self.dir, seq).and_then(|_| open_append(&path)) {
            Ok(writer) => self.writer = writer,
            Err(e) => {
                // Appends go on to the current segment: a successor left behind would make it look
                // finished (and synced) to recovery.
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        }
        self.segments.push_back(Segment {
            seq,
            path,
            len: SEGMENT_HEADER,
            events: 0,
        });
        Ok(())
    }

    /// Move a cursor at the end of a segment that is not the last to the start of the next one.
    fn normalize(&self, mut cur: Cursor) -> Result<Cursor> {
        loop {
            let seg = find(&self.segments, cur.seq)?;
            let is_last = self.segments.back().is_some_and(|last| last.seq == seg.seq);
            if cur.offset < seg.len || is_last {
                return Ok(cur);
            }
            cur.seq += 1;
            cur.offset = SEGMENT_HEADER;
        }
    }

    /// The id of the event at a (normalized) cursor, or the next id if it is at the end.
    fn id_at(&mut self, cur: Cursor) -> Result<u64> {
        let seg = find(&self.segments, cur.seq)?;
        if cur.offset >= seg.len {
            return Ok(self.next_id);
        }
        let reader = position(&mut self.reader, seg, cur.offset)?;
        let mut head = [0u8; 16];
        let peek = reader
            .file
            .read_exact(&mut head)
            .and_then(|()| reader.file.seek_relative(-(head.len() as i64)));
        if let Err(e) = peek {
            self.reader = None;
            return Err(io_err(&seg.path, e));
        }
        Ok(u64::from_le_bytes(array(&head, 8)))
    }

    fn write_checkpoint(&self, at: Cursor, id: u64, id_limit: u64) -> Result<()> {
        let mut bytes = Vec::with_capacity(CHECKPOINT_LEN);
        bytes.extend_from_slice(CHECKPOINT_MAGIC);
        for field in [at.seq, at.offset, id, id_limit] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        let crc = crc32(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join(CHECKPOINT_TMP);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_err(&tmp, e))?;
        let path = self.dir.join(CHECKPOINT);
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        sync_dir(&self.dir)
    }
}

impl Drop for DiskChannel {
    fn drop(&mut self) {
        if self.unsynced && self.poisoned.is_none() && self.opts.fsync != FsyncPolicy::Never {
            // Best effort: nobody is left to tell, and the policy never promised more.
            let _ = self.writer.sync_data();
        }
    }
}

fn find(segments: &VecDeque<Segment>, seq: u64) -> Result<&Segment> {
    let found = segments
        .front()
        .and_then(|first| seq.checked_sub(first.seq))
        .and_then(|i| usize::try_from(i).ok())
        .and_then(|i| segments.get(i));
    found.ok_or_else(|| {
        let path = segments.front().map_or_else(PathBuf::new, |s| s.path.clone());
        io_err(&path, io::Error::other(format!("internal: segment {seq} is not open")))
    })
}

/// The reader, on `seg` at `offset`, reusing the open file and its buffer when it is already there.
fn position<'a>(slot: &'a mut Option<Reader>, seg: &Segment, offset: u64) -> Result<&'a mut Reader> {
    let reader = match slot.take() {
        Some(reader) if reader.seq == seg.seq => reader,
        _ => Reader {
            seq: seg.seq,
            offset: 0,
            file: BufReader::with_capacity(READ_BUFFER, File::open(&seg.path).map_err(|e| io_err(&seg.path, e))?),
        },
    };
    let reader = slot.insert(reader);
    if reader.offset != offset {
        reader
            .file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| io_err(&seg.path, e))?;
        reader.offset = offset;
    }
    Ok(reader)
}

// ---- Segments on disk ----

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(seq) = stem.parse()
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// A new, empty, synced segment (replacing a leftover of a failed attempt).
fn create_segment(dir: &Path, seq: u64) -> Result<PathBuf> {
    let path = segment_path(dir, seq);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    file.write_all(SEGMENT_MAGIC)
        .and_then(|()| file.sync_data())
        .map_err(|e| io_err(&path, e))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Appending means a write after `set_len` (undoing a failed batch) lands at the new end, not past it.
fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new().append(true).open(path).map_err(|e| io_err(path, e))
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Locked { dir: dir.to_path_buf() }),
        Err(TryLockError::Error(e)) => Err(io_err(&path, e)),
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Make created, renamed and deleted names durable.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))?;
    Ok(())
}

fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    if bytes.len() != CHECKPOINT_LEN {
        return Err(corrupt(
            path,
            0,
            format!("{} bytes, expected {CHECKPOINT_LEN}", bytes.len()),
        ));
    }
    if bytes[..8] != CHECKPOINT_MAGIC[..] {
        return Err(corrupt(path, 0, "not a channel checkpoint (bad magic)"));
    }
    if crc32(&bytes[..40]) != u32::from_le_bytes(array(&bytes, 40)) {
        return Err(corrupt(path, 40, "CRC mismatch"));
    }
    Ok(Some(Checkpoint {
        seq: u64::from_le_bytes(array(&bytes, 8)),
        offset: u64::from_le_bytes(array(&bytes, 16)),
        id: u64::from_le_bytes(array(&bytes, 24)),
        id_limit: u64::from_le_bytes(array(&bytes, 32)),
    }))
}

/// `N` bytes of `bytes` from `at`, zero-filled past the end (callers check lengths first).
fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Where the checkpoint lies within a scanned segment.
struct Hit {
    events_before: u64,
    /// The event there; `None` at the end of the segment.
    id: Option<u64>,
}

struct SegmentScan {
    /// Bytes kept (after any truncation).
    len: u64,
    events: u64,
    last_id: Option<u64>,
    /// `Some` when the target offset is a kept record boundary or the kept end.
    hit: Option<Hit>,
    truncated: Option<Truncation>,
}

/// Check every record of a segment; in the last one, cut a torn tail (see the module documentation).
fn scan_segment(
    path: &Path,
    last: bool,
    lookahead: bool,
    mut prev_id: Option<u64>,
    target: Option<u64>,
) -> Result<SegmentScan> {
    let mut file = File::open(path).map_err(|e| io_err(path, e))?;
    let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
    if file_len < SEGMENT_HEADER {
        if !last {
            return Err(corrupt(path, 0, "shorter than a segment header"));
        }
        // Crashed while creating it: start it again.
        drop(file);
        return rewrite_segment(path, file_len, target);
    }
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic).map_err(|e| io_err(path, e))?;
    if &magic != SEGMENT_MAGIC {
        return Err(corrupt(path, 0, "not a channel segment (bad magic)"));
    }

    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let mut payload = Vec::new();
    let mut offset = SEGMENT_HEADER;
    let mut events = 0;
    // The end of the last complete batch, and what it holds.
    let (mut kept_len, mut kept_events, mut kept_last_id) = (SEGMENT_HEADER, 0, prev_id);
    let mut target_hit = None;
    let mut problem = None;
    loop {
        let record = read_record(&mut reader, offset, file_len, &mut payload).map_err(|e| io_err(path, e))?;
        match record {
            Record::End => break,
            Record::Torn(reason) => {
                problem = Some((offset, reason));
                break;
            }
            Record::Bad { size, reason } => {
                // Under EveryBatch only the last batch can be torn: a valid record of a later batch after
                // this one means the damage came after the write.
                if last && lookahead {
                    let (mut at, mut batch_ended) = (offset + size, false);
                    while let Ok(Record::Valid {
                        last_in_batch, size, ..
                    }) = read_record(&mut reader, at, file_len, &mut payload)
                    {
                        if batch_ended {
                            return Err(corrupt(
                                path,
                                offset,
                                format!("{reason}, but later batches are intact: damage, not a torn write"),
                            ));
                        }
                        batch_ended = last_in_batch;
                        at += size;
                    }
                }
                problem = Some((offset, reason));
                break;
            }
            Record::Valid {
                id,
                last_in_batch,
                size,
            } => {
                if let Some(prev) = prev_id
                    && id <= prev
                {
                    return Err(corrupt(path, offset, format!("event id {id} does not follow {prev}")));
                }
                if target == Some(offset) {
                    target_hit = Some(Hit {
                        events_before: events,
                        id: Some(id),
                    });
                }
                prev_id = Some(id);
                offset += size;
                events += 1;
                if last_in_batch {
                    (kept_len, kept_events, kept_last_id) = (offset, events, prev_id);
                }
            }
        }
    }
    if problem.is_none() && kept_len < offset {
        problem = Some((offset, "the segment ends inside a batch".to_string()));
    }

    let mut truncated = None;
    if let Some((at, reason)) = problem {
        if !last {
            return Err(corrupt(path, at, reason));
        }
        let file = OpenOptions::new().write(true).open(path).map_err(|e| io_err(path, e))?;
        file.set_len(kept_len)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_err(path, e))?;
        truncated = Some(Truncation {
            file: path.to_path_buf(),
            offset: kept_len,
            bytes: file_len - kept_len,
            reason: format!("at byte {at}: {reason}"),
        });
    }
    let hit = match target {
        Some(t) if t == kept_len => Some(Hit {
            events_before: kept_events,
            id: None,
        }),
        Some(t) if t < kept_len => target_hit,
        _ => None,
    };
    Ok(SegmentScan {
        len: kept_len,
        events: kept_events,
        last_id: kept_last_id,
        hit,
        truncated,
    })
}

/// Recreate a last segment whose header was torn.
fn rewrite_segment(path: &Path, old_len: u64, target: Option<u64>) -> Result<SegmentScan> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    file.write_all(SEGMENT_MAGIC)
        .and_then(|()| file.sync_data())
        .map_err(|e| io_err(path, e))?;
    Ok(SegmentScan {
        len: SEGMENT_HEADER,
        events: 0,
        last_id: None,
        hit: (target == Some(SEGMENT_HEADER)).then_some(Hit {
            events_before: 0,
            id: None,
        }),
        truncated: Some(Truncation {
            file: path.to_path_buf(),
            offset: 0,
            bytes: old_len,
            reason: format!("segment header torn ({old_len} bytes)"),
        }),
    })
}

// ---- Records ----

enum Record {
    /// No bytes left.
    End,
    /// The record runs past the end of the file.
    Torn(String),
    /// A record of `size` bytes whose CRC or structure is wrong.
    Bad { size: u64, reason: String },
    /// A checked record; its payload is in the caller's buffer.
    Valid { id: u64, last_in_batch: bool, size: u64 },
}

/// Read the record at `offset` (where `r` must be), not reading past `end`.
fn read_record(r: &mut impl Read, offset: u64, end: u64, payload: &mut Vec<u8>) -> io::Result<Record> {
    let left = end.saturating_sub(offset);
    if left == 0 {
        return Ok(Record::End);
    }
    if left < RECORD_HEADER {
        return Ok(Record::Torn(format!("{left} bytes left, fewer than a record header")));
    }
    let mut head = [0u8; RECORD_HEADER as usize];
    r.read_exact(&mut head)?;
    let len = u32::from_le_bytes(array(&head, 0));
    let size = RECORD_HEADER + u64::from(len);
    if size > left {
        return Ok(Record::Torn(format!(
            "record of {len} bytes, but only {} left",
            left - RECORD_HEADER
        )));
    }
    payload.clear();
    payload.resize(len as usize, 0);
    r.read_exact(payload)?;
    if record_crc(&len.to_le_bytes(), payload) != u32::from_le_bytes(array(&head, 4)) {
        return Ok(Record::Bad {
            size,
            reason: "CRC mismatch".to_string(),
        });
    }
    match parse_payload(payload, |_, _| {}) {
        Ok((id, flags, _)) => Ok(Record::Valid {
            id,
            last_in_batch: flags & LAST_IN_BATCH != 0,
            size,
        }),
        Err(reason) => Ok(Record::Bad {
            size,
            reason: reason.to_string(),
        }),
    }
}

/// The CRC runs over the length prefix then the payload, as one stream, without copying them together.
fn record_crc(len: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len);
    hasher.update(payload);
    hasher.finalize()
}

fn encode_record(
    buf: &mut Vec<u8>,
    id: u64,
    last_in_batch: bool,
    body: &[u8],
    headers: &[(String, String)],
) -> Result<()> {
    let too_large = |what: &str| Error::TooLarge(format!("event {id}: {what} exceeds 4 GiB"));
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER as usize]);
    buf.extend_from_slice(&id.to_le_bytes());
    buf.push(if last_in_batch { LAST_IN_BATCH } else { 0 });
    let count = u32::try_from(headers.len()).map_err(|_| too_large("header count"))?;
    buf.extend_from_slice(&count.to_le_bytes());
    for (key, value) in headers {
        for field in [key, value] {
            let len = u32::try_from(field.len()).map_err(|_| too_large("a header"))?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(field.as_bytes());
        }
    }
    buf.extend_from_slice(body);
    let payload_start = start + RECORD_HEADER as usize;
    let len = u32::try_from(buf.len() - payload_start).map_err(|_| too_large("the record"))?;
    let crc = record_crc(&len.to_le_bytes(), &buf[payload_start..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Walk a payload, calling `header` for each header; returns the id, the flags and where the body starts.
fn parse_payload(p: &[u8], mut header: impl FnMut(&str, &str)) -> Result<(u64, u8, usize), &'static str> {
    let mut at = 0;
    let id = u64::from_le_bytes(field(p, &mut at, 8)?.try_into().map_err(|_| OVERRUN)?);
    let flags = field(p, &mut at, 1)?[0];
    if flags & !LAST_IN_BATCH != 0 {
        return Err("unknown record flags");
    }
    let count = u32::from_le_bytes(field(p, &mut at, 4)?.try_into().map_err(|_| OVERRUN)?);
    for _ in 0..count {
        let key = text(p, &mut at)?;
        let value = text(p, &mut at)?;
        header(key, value);
    }
    Ok((id, flags, at))
}

const OVERRUN: &str = "record fields overrun its length";

fn field<'a>(p: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], &'static str> {
    let bytes = at.checked_add(n).and_then(|end| p.get(*at..end)).ok_or(OVERRUN)?;
    *at += n;
    Ok(bytes)
}

fn text<'a>(p: &'a [u8], at: &mut usize) -> Result<&'a str, &'static str> {
    let len = u32::from_le_bytes(field(p, at, 4)?.try_into().map_err(|_| OVERRUN)?);
    std::str::from_utf8(field(p, at, len as usize)?).map_err(|_| "header is not UTF-8")
}

fn decode_event(mut payload: Vec<u8>) -> Result<Event, &'static str> {
    let mut headers = Vec::new();
    let (id, _, body_start) = parse_payload(&payload, |k, v| headers.push((k.to_string(), v.to_string())))?;
    payload.drain(..body_start);
    Ok(Event {
        id,
        body: payload,
        headers,
    })
}

// ---- CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) ----

/// The standard IEEE (zlib) CRC-32 that segment records and checkpoints carry; `crc32fast` picks a
/// SIMD or table implementation at run time, and the known vectors in the tests pin the polynomial
/// so files written before the swap from the hand-written table still verify.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Batch = Vec<NewEvent>;

    fn opts(segment_bytes: u64, capacity_events: u64) -> ChannelOptions {
        ChannelOptions {
            segment_bytes,
            capacity_events,
            fsync: FsyncPolicy::Never,
        }
    }

    fn batch(range: std::ops::Range<u32>) -> Batch {
        range
            .map(|i| {
                (
                    format!("event-{i}").into_bytes(),
                    vec![("n".to_string(), i.to_string())],
                )
            })
            .collect()
    }

    /// Events without headers and with an 8-byte body: 29-byte records.
    fn plain(range: std::ops::Range<u32>) -> Batch {
        range
            .map(|i| (format!("body{i:04}").into_bytes(), Vec::new()))
            .collect()
    }
    const PLAIN_RECORD: u64 = RECORD_HEADER + 8 + 1 + 4 + 8;

    fn bodies(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| String::from_utf8_lossy(&e.body).into_owned())
            .collect()
    }

    fn ids(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.id).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = list_segments(dir)
            .expect("list")
            .into_iter()
            .map(|seq| segment_path(dir, seq))
            .collect();
        files.sort();
        files
    }

    fn open(dir: &Path, o: &ChannelOptions) -> DiskChannel {
        DiskChannel::open(dir, o.clone()).expect("open")
    }

    #[test]
    fn crc32_matches_known_vectors() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"a"), 0xE8B7_BE43);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
        // A record's CRC covers its length prefix and payload as one stream.
        assert_eq!(record_crc(b"12345", b"6789"), 0xCBF4_3926);
        assert_eq!(record_crc(b"", b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_across_segment_rolls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(200, 1000);
        let mut ch = open(dir.path(), &o);
        let mut expected = Vec::new();
        for b in 0..10 {
            let events = batch(b * 5..b * 5 + 5);
            let got = ch.put_batch(&events).expect("put");
            assert_eq!(got.len(), 5);
            expected.extend(events.into_iter().zip(got));
        }
        assert!(ch.stats().segments > 3, "{:?}", ch.stats());
        assert_eq!(ch.len(), 50);
        let mut taken = Vec::new();
        loop {
            let events = ch.take(7).expect("take");
            if events.is_empty() {
                break;
            }
            taken.extend(events);
        }
        assert_eq!(taken.len(), 50);
        for (event, ((body, headers), id)) in taken.iter().zip(&expected) {
            assert_eq!((&event.body, &event.headers, event.id), (body, headers, *id));
        }
        assert!(ids(&taken).windows(2).all(|w| w[1] == w[0] + 1), "{:?}", ids(&taken));
        ch.commit().expect("commit");
        assert!(ch.is_empty());
        assert_eq!(ch.stats().segments, 1);
        assert_eq!(segment_files(dir.path()).len(), 1);
    }

    #[test]
    fn ids_keep_increasing_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(1 << 20, 1000);
        let mut last = 0;
        for round in 0..3 {
            let mut ch = open(dir.path(), &o);
            let got = ch.put_batch(&batch(0..3)).expect("put");
            assert!(
                got[0] > last && got.windows(2).all(|w| w[1] > w[0]),
                "round {round}: {got:?}"
            );
            last = got[2];
            assert!(ch.stats().next_id > last);
            if round == 1 {
                let all = ch.take(100).expect("take");
                assert_eq!(all.len(), 6);
                ch.commit().expect("commit");
            }
        }
        // Everything acknowledged and deleted but the last segment: the ids still go on.
        let mut ch = open(dir.path(), &o);
        assert_eq!(ch.len(), 3);
        ch.take(10).expect("take");
        ch.commit().expect("commit");
        drop(ch);
        let mut ch = open(dir.path(), &o);
        assert!(ch.is_empty());
        assert!(ch.put_batch(&batch(0..1)).expect("put")[0] > last);
    }

    #[test]
    fn take_rollback_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ch = open(dir.path(), &opts(1 << 20, 1000));
        ch.put_batch(&batch(0..10)).expect("put");
        assert_eq!(bodies(&ch.take(3).expect("take")), ["event-0", "event-1", "event-2"]);
        assert_eq!(bodies(&ch.take(2).expect("take")), ["event-3", "event-4"]);
        assert_eq!(ch.stats().in_flight, 5);
        ch.rollback();
        assert_eq!(ch.stats().in_flight, 0);
        assert_eq!(ch.take(5).expect("take").len(), 5);
        assert_eq!(ch.len(), 10, "taken events stay unacknowledged until commit");
        ch.commit().expect("commit");
        assert_eq!(ch.len(), 5);
        ch.rollback();
        let rest = ch.take(100).expect("take");
        assert_eq!(bodies(&rest), ["event-5", "event-6", "event-7", "event-8", "event-9"]);
        assert!(ch.take(100).expect("take").is_empty());
        // New events are visible to a consumer that had reached the end.
        ch.put_batch(&batch(10..11)).expect("put");
        assert_eq!(bodies(&ch.take(100).expect("take")), ["event-10"]);
        ch.commit().expect("commit");
        assert!(ch.is_empty());
        ch.commit().expect("commit with nothing taken");
    }

    #[test]
    fn restart_redelivers_exactly_the_unacknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(150, 1000);
        let mut ch = open(dir.path(), &o);
        for b in 0..5 {
            ch.put_batch(&batch(b * 2..b * 2 + 2)).expect("put");
        }
        let first = ch.take(4).expect("take");
        ch.commit().expect("commit");
        let in_flight = ch.take(3).expect("take");
        drop(ch); // a crash: taken, never committed

        let mut ch = open(dir.path(), &o);
        assert_eq!(ch.len(), 6);
        let again = ch.take(100).expect("take");
        assert_eq!(
            ids(&again[..3]),
            ids(&in_flight),
            "the in-flight events come back with their ids"
        );
        assert_eq!(
            bodies(&again),
            ["event-4", "event-5", "event-6", "event-7", "event-8", "event-9"]
        );
        assert!(ids(&again)[0] > ids(&first)[3]);
        ch.commit().expect("commit");
        drop(ch);

        let mut ch = open(dir.path(), &o);
        assert!(ch.is_empty());
        assert!(ch.take(100).expect("take").is_empty());
    }

    #[test]
    fn torn_tail_is_cut_back_to_the_last_complete_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = ChannelOptions {
            fsync: FsyncPolicy::EveryBatch,
            ..opts(1 << 20, 1000)
        };
        let mut ch = open(dir.path(), &o);
        ch.put_batch(&batch(0..3)).expect("put");
        ch.put_batch(&batch(3..5)).expect("put");
        ch.put_batch(&batch(5..8)).expect("put");
        drop(ch);
        let seg = segment_files(dir.path()).pop().expect("segment");
        let len = fs::metadata(&seg).expect("metadata").len();

        // A crash mid-write: the last record is short. Its whole batch goes.
        let f = OpenOptions::new().write(true).open(&seg).expect("open segment");
        f.set_len(len - 3).expect("truncate");
        drop(f);
        let mut ch = open(dir.path(), &o);
        let truncation = ch.recovery().expect("a truncation").clone();
        assert_eq!(truncation.file, seg);
        assert!(truncation.reason.contains("left"), "{truncation:?}");
        let all = ch.take(100).expect("take");
        assert_eq!(bodies(&all), ["event-0", "event-1", "event-2", "event-3", "event-4"]);
        ch.rollback();
        // Appends after recovery land after the good data, and survive the next restart.
        let more = ch.put_batch(&batch(8..9)).expect("put");
        assert!(more[0] > all[4].id);
        drop(ch);

        // Garbage appended after a complete batch: a huge length, then a short header.
        for garbage in [&[0xFFu8; 20][..], &[1, 2, 3][..]] {
            let mut f = OpenOptions::new().append(true).open(&seg).expect("open segment");
            f.write_all(garbage).expect("append");
            drop(f);
            let mut ch = open(dir.path(), &o);
            assert!(ch.recovery().is_some());
            assert_eq!(ch.len(), 6);
            let all = ch.take(100).expect("take");
            assert_eq!(bodies(&all)[5], "event-8");
        }

        // A segment whose creation was cut short, after the last complete one.
        fs::write(segment_path(dir.path(), 1), b"FRS").expect("write");
        let mut ch = open(dir.path(), &o);
        assert_eq!(ch.recovery().map(|t| t.offset), Some(0));
        assert_eq!(ch.len(), 6);
        ch.put_batch(&batch(9..10)).expect("put");
        drop(ch);
        let mut ch = open(dir.path(), &o);
        assert!(ch.recovery().is_none());
        assert_eq!(
            bodies(&ch.take(100).expect("take")).last().map(String::as_str),
            Some("event-9")
        );
    }

    #[test]
    fn damage_in_an_older_segment_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(100, 1000);
        let mut ch = open(dir.path(), &o);
        for b in 0..6 {
            ch.put_batch(&batch(b * 2..b * 2 + 2)).expect("put");
        }
        drop(ch);
        let files = segment_files(dir.path());
        assert!(files.len() >= 3, "{files:?}");
        let victim = &files[1];
        let mut bytes = fs::read(victim).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        fs::write(victim, &bytes).expect("write");
        match DiskChannel::open(dir.path(), o.clone()) {
            Err(Error::Corrupt { file, offset, reason }) => {
                assert_eq!(&file, victim);
                assert!(offset >= SEGMENT_HEADER && offset <= middle as u64, "{offset} {reason}");
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|c| c.stats())),
        }
        // The message names the file, for the operator.
        let message = DiskChannel::open(dir.path(), o)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains(&victim.display().to_string()), "{message}");
    }

    #[test]
    fn damage_before_intact_batches_in_the_last_segment() {
        for (fsync, corrupt_expected) in [(FsyncPolicy::EveryBatch, true), (FsyncPolicy::Never, false)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let o = ChannelOptions {
                fsync,
                ..opts(1 << 20, 1000)
            };
            let mut ch = open(dir.path(), &o);
            for i in 0..5 {
                ch.put_batch(&plain(i..i + 1)).expect("put");
            }
            drop(ch);
            let seg = segment_files(dir.path()).pop().expect("segment");
            let mut bytes = fs::read(&seg).expect("read");
            assert_eq!(bytes.len() as u64, SEGMENT_HEADER + 5 * PLAIN_RECORD);
            let second_body_end = (SEGMENT_HEADER + 2 * PLAIN_RECORD - 1) as usize;
            bytes[second_body_end] ^= 1;
            fs::write(&seg, &bytes).expect("write");
            match DiskChannel::open(dir.path(), o) {
                Err(Error::Corrupt { file, offset, .. }) if corrupt_expected => {
                    assert_eq!((file, offset), (seg, SEGMENT_HEADER + PLAIN_RECORD));
                }
                Ok(mut ch) if !corrupt_expected => {
                    assert!(ch.recovery().is_some_and(|t| t.reason.contains("CRC")));
                    assert_eq!(bodies(&ch.take(10).expect("take")), ["body0000"]);
                }
                other => panic!("{fsync:?}: unexpected {:?}", other.map(|c| c.stats())),
            }
        }
    }

    #[test]
    fn full_until_the_consumer_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ch = open(dir.path(), &opts(1 << 20, 5));
        ch.put_batch(&batch(0..3)).expect("put");
        let full = ch.put_batch(&batch(3..6)).expect_err("full");
        assert!(matches!(full, Error::Full { capacity: 5 }) && full.is_full(), "{full}");
        ch.put_batch(&batch(3..5)).expect("fits exactly");
        assert!(ch.put_batch(&batch(5..6)).is_err_and(|e| e.is_full()));
        ch.take(2).expect("take");
        assert!(
            ch.put_batch(&batch(5..6)).is_err_and(|e| e.is_full()),
            "taken is not acknowledged"
        );
        ch.commit().expect("commit");
        ch.put_batch(&batch(5..7)).expect("room after commit");
        assert_eq!(ch.len(), 5);
        assert!(matches!(ch.put_batch(&batch(0..6)), Err(Error::TooLarge(_))));
        assert!(ch.put_batch(&[]).expect("empty batch").is_empty());
    }

    #[test]
    fn acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(100, 1000);
        let mut ch = open(dir.path(), &o);
        for i in 0..12 {
            ch.put_batch(&plain(i..i + 1)).expect("put");
        }
        // 29-byte records, 100-byte segments: three records each.
        assert_eq!(segment_files(dir.path()).len(), 4);
        assert_eq!(ch.stats().bytes, 4 * SEGMENT_HEADER + 12 * PLAIN_RECORD);
        ch.take(7).expect("take");
        assert_eq!(segment_files(dir.path()).len(), 4, "nothing deleted before commit");
        ch.commit().expect("commit");
        assert_eq!(segment_files(dir.path()).len(), 2);
        ch.take(2).expect("take"); // ends exactly at a segment's end
        ch.commit().expect("commit");
        assert_eq!(segment_files(dir.path()).len(), 1);
        assert_eq!(ch.len(), 3);
        drop(ch);
        let mut ch = open(dir.path(), &o);
        assert_eq!(
            bodies(&ch.take(10).expect("take")),
            ["body0009", "body0010", "body0011"]
        );
    }

    #[test]
    fn lost_acknowledged_tail_resumes_at_the_end() {
        // Under FsyncPolicy::Never a power loss can take events the consumer already committed.
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(1 << 20, 1000);
        let mut ch = open(dir.path(), &o);
        let mut issued = Vec::new();
        for i in 0..5 {
            issued.extend(ch.put_batch(&plain(i..i + 1)).expect("put"));
        }
        ch.take(5).expect("take");
        ch.commit().expect("commit");
        drop(ch);
        let seg = segment_files(dir.path()).pop().expect("segment");
        let f = OpenOptions::new().write(true).open(&seg).expect("open segment");
        f.set_len(SEGMENT_HEADER + 2 * PLAIN_RECORD).expect("truncate");
        drop(f);
        let mut ch = open(dir.path(), &o);
        assert!(ch.is_empty());
        let id = ch.put_batch(&plain(9..10)).expect("put")[0];
        assert!(id > issued[4], "no id is reused: {id} after {issued:?}");
        drop(ch);
        let mut ch = open(dir.path(), &o);
        assert_eq!(bodies(&ch.take(10).expect("take")), ["body0009"]);
    }

    #[test]
    fn one_channel_per_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(1 << 20, 10);
        let ch = open(dir.path(), &o);
        assert!(matches!(
            DiskChannel::open(dir.path(), o.clone()),
            Err(Error::Locked { .. })
        ));
        drop(ch);
        open(dir.path(), &o);
    }

    #[test]
    fn damaged_checkpoint_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(1 << 20, 10);
        drop(open(dir.path(), &o));
        let path = dir.path().join(CHECKPOINT);
        let mut bytes = fs::read(&path).expect("read");
        bytes[17] ^= 1;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            DiskChannel::open(dir.path(), o),
            Err(Error::Corrupt { file, .. }) if file == path
        ));
    }

    #[test]
    fn interval_policy_syncs_when_due() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ch = open(
            dir.path(),
            &ChannelOptions {
                fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
                ..opts(1 << 20, 10)
            },
        );
        ch.put_batch(&batch(0..2)).expect("put");
        assert!(ch.unsynced);
        ch.sync_if_due().expect("sync_if_due");
        assert!(ch.unsynced, "not due yet");
        ch.sync().expect("sync");
        assert!(!ch.unsynced);
        ch.opts.fsync = FsyncPolicy::Interval(Duration::ZERO);
        ch.put_batch(&batch(2..3)).expect("put");
        assert!(!ch.unsynced);
    }
}
