//! Checkpoints: a query's consistent snapshot, written atomically, read back with fallback.
//!
//! A checkpoint of epoch `N` of a query is a directory `DIR/chk-0000000N/` holding one Arrow IPC file
//! per operator state table (`op<node>-<table>.arrow`) and `manifest.json`. It is written as
//! `DIR/.chk-0000000N.tmp/`: every file written and fsynced, then the manifest, then the directory
//! fsynced and renamed to its final name, then `DIR` fsynced. A checkpoint is visible only once the
//! rename happened, so a crash at any point leaves either the whole checkpoint or none of it (a
//! leftover `.tmp` directory is removed when the store is next opened).
//!
//! `manifest.json` is two lines: the manifest as JSON, then `crc32:` and the CRC-32 of the first
//! line in hex. The manifest lists every file with its size and CRC-32, the query's fingerprint (a
//! hash of its SQL and its operator graph: a checkpoint is never restored into a different query),
//! and the runtime's part (`meta`: source positions, watermarks, the sink's pending epoch).
//!
//! Reading ([`CheckpointStore::load_latest`]) takes the newest checkpoint that verifies completely;
//! one that does not (a truncated manifest, a file missing, a size or CRC that differs, a file
//! Arrow cannot read) is skipped with a message naming the file, and the next older one is tried.
//! When checkpoints exist but none verifies, or the newest was taken for another query, loading
//! fails rather than guessing. The last `keep` checkpoints are kept.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::operator::state::{OpState, from_ipc, to_ipc};

const FORMAT: &str = "freshet-checkpoint";
const VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";

/// A query's snapshot: what the runtime writes and gets back.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub epoch: u64,
    /// The query's identity (see the module doc).
    pub fingerprint: String,
    /// The runtime's part: source positions, watermarks, the sink's pending epoch.
    pub meta: serde_json::Value,
    /// Each stateful operator's state, by graph node.
    pub operators: Vec<(usize, String, OpState)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    epoch: u64,
    query: String,
    fingerprint: String,
    created_ms: i64,
    meta: serde_json::Value,
    operators: Vec<OperatorEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct OperatorEntry {
    node: usize,
    operator: String,
    tables: Vec<TableEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TableEntry {
    name: String,
    file: String,
    rows: usize,
    bytes: u64,
    crc32: u32,
}

/// What writing a checkpoint took.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteStats {
    pub bytes: u64,
    pub files: usize,
    pub took: Duration,
}

/// A checkpoint read back, with what was skipped on the way to it.
#[derive(Debug)]
pub struct Loaded {
    pub checkpoint: Checkpoint,
    /// Newer checkpoints that did not verify, each with the reason (naming the file).
    pub skipped: Vec<String>,
}

/// The checkpoints of one query: `DIR/chk-…`.
pub struct CheckpointStore {
    dir: PathBuf,
    query: String,
    keep: usize,
    /// `DIR/lock`, held while the query runs: one process runs a query at a time.
    _lock: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Die at once, as `kill -9` would (no destructors, no flushing): what a named crash point does
/// (`FAILPOINTS=<point>=return`, or `=2*off->return` for its third visit; see the `fail` crate).
pub fn crash(point: &str) -> ! {
    eprintln!("crash point {point}: aborting");
    std::process::abort()
}

/// fsync a directory, so that renames and new entries in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn epoch_of(name: &str) -> Option<u64> {
    name.strip_prefix("chk-")?.parse().ok()
}

impl CheckpointStore {
    /// The store of query `query` in `dir` (created if missing); leftovers of checkpoints that were
    /// being written when a process died are removed.
    pub fn open(dir: &Path, query: &str, keep: usize) -> Result<CheckpointStore> {
        let gone = removed_name(dir);
        if gone.exists() {
            std::fs::remove_dir_all(&gone).map_err(io(&gone))?;
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::plan(format!(
                    "query '{query}' is already running (another process holds {})",
                    lock_path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let e = e.map_err(io(dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".chk-") && name.ends_with(".tmp") {
                let p = e.path();
                std::fs::remove_dir_all(&p).map_err(io(&p))?;
            }
        }
        Ok(CheckpointStore {
            dir: dir.to_path_buf(),
            query: query.to_string(),
            keep: keep.max(1),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Epochs of the visible checkpoints, newest first.
    pub fn epochs(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let e = e.map_err(io(&self.dir))?;
            if let Some(n) = epoch_of(&e.file_name().to_string_lossy()) {
                out.push(n);
            }
        }
        out.sort_unstable_by(|a, b| b.cmp(a));
        Ok(out)
    }

    fn path_of(&self, epoch: u64) -> PathBuf {
        self.dir.join(format!("chk-{epoch:08}"))
    }

    /// Write checkpoint `c` atomically (see the module doc), then drop all but the newest `keep`.
    /// On an error nothing new is visible.
    pub fn write(&self, c: &Checkpoint) -> Result<WriteStats> {
        let started = Instant::now();
        let tmp = self.dir.join(format!(".chk-{:08}.tmp", c.epoch));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        let result = self.write_into(&tmp, c);
        let (bytes, files) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let dest = self.path_of(c.epoch);
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
        }
        fail::fail_point!("checkpoint-before-rename", |_| crash("checkpoint-before-rename"));
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        sync_dir(&self.dir)?;
        for old in self.epochs()?.into_iter().skip(self.keep) {
            // Out of sight first (a kill during the removal must not leave a half checkpoint that
            // looks like one): renamed as a leftover `open` removes.
            let p = self.path_of(old);
            let gone = self.dir.join(format!(".chk-{old:08}.tmp"));
            std::fs::rename(&p, &gone).map_err(io(&p))?;
            std::fs::remove_dir_all(&gone).map_err(io(&gone))?;
        }
        Ok(WriteStats {
            bytes,
            files,
            took: started.elapsed(),
        })
    }

    fn write_into(&self, tmp: &Path, c: &Checkpoint) -> Result<(u64, usize)> {
        std::fs::create_dir_all(tmp).map_err(io(tmp))?;
        let mut operators = Vec::new();
        let (mut total, mut files) = (0u64, 0usize);
        for (node, name, state) in &c.operators {
            let mut tables = Vec::new();
            for (i, (tname, table)) in state.tables.iter().enumerate() {
                let file = format!("op{node}-{i}-{}.arrow", sanitize(tname));
                let bytes = to_ipc(table)?;
                write_synced(&tmp.join(&file), &bytes)?;
                total += bytes.len() as u64;
                files += 1;
                tables.push(TableEntry {
                    name: tname.clone(),
                    file,
                    rows: table.num_rows(),
                    bytes: bytes.len() as u64,
                    crc32: crc32fast::hash(&bytes),
                });
            }
            operators.push(OperatorEntry {
                node: *node,
                operator: name.clone(),
                tables,
            });
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            epoch: c.epoch,
            query: self.query.clone(),
            fingerprint: c.fingerprint.clone(),
            created_ms: crate::time::now_ms(),
            meta: c.meta.clone(),
            operators,
        };
        fail::fail_point!("checkpoint-before-manifest", |_| crash("checkpoint-before-manifest"));
        let body = serde_json::to_string(&manifest).map_err(|e| Error::Internal(format!("manifest: {e}")))?;
        let text = format!("{body}\ncrc32:{:08x}\n", crc32fast::hash(body.as_bytes()));
        write_synced(&tmp.join(MANIFEST), text.as_bytes())?;
        sync_dir(tmp)?;
        Ok((total + text.len() as u64, files + 1))
    }

    /// The newest checkpoint that verifies (see the module doc); `None` when there is none at all.
    pub fn load_latest(&self, fingerprint: &str) -> Result<Option<Loaded>> {
        let epochs = self.epochs()?;
        let mut skipped = Vec::new();
        for (i, epoch) in epochs.iter().enumerate() {
            match self.load(*epoch) {
                Ok(c) if c.fingerprint != fingerprint => {
                    if i == 0 {
                        return Err(Error::plan(format!(
                            "{}: taken for a different query (its SQL or plan changed since); to start '{}' \
                             over, remove {}",
                            self.path_of(*epoch).display(),
                            self.query,
                            self.dir.display()
                        )));
                    }
                    skipped.push(format!(
                        "{}: taken for a different query",
                        self.path_of(*epoch).display()
                    ));
                }
                Ok(checkpoint) => return Ok(Some(Loaded { checkpoint, skipped })),
                Err(e) => skipped.push(e.to_string()),
            }
        }
        if skipped.is_empty() {
            return Ok(None);
        }
        Err(Error::External(format!(
            "no usable checkpoint for query '{}' in {} ({}); refusing to guess: to start over, remove that directory",
            self.query,
            self.dir.display(),
            skipped.join("; ")
        )))
    }

    /// Read and verify checkpoint `epoch`; the error names the file at fault.
    pub fn load(&self, epoch: u64) -> Result<Checkpoint> {
        let dir = self.path_of(epoch);
        let mpath = dir.join(MANIFEST);
        let bad = |p: &Path, why: String| Error::External(format!("{}: {why}", p.display()));
        let text = std::fs::read_to_string(&mpath).map_err(|e| bad(&mpath, e.to_string()))?;
        let mut lines = text.lines();
        let body = lines.next().unwrap_or_default();
        let crc = lines
            .next()
            .and_then(|l| l.strip_prefix("crc32:"))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| bad(&mpath, "truncated: no checksum line".into()))?;
        if crc32fast::hash(body.as_bytes()) != crc {
            return Err(bad(&mpath, "checksum mismatch".into()));
        }
        let m: Manifest = serde_json::from_str(body).map_err(|e| bad(&mpath, format!("not a manifest: {e}")))?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(bad(
                &mpath,
                format!(
                    "format {} version {}, expected {FORMAT} version {VERSION}",
                    m.format, m.version
                ),
            ));
        }
        if m.epoch != epoch {
            return Err(bad(&mpath, format!("says epoch {}, directory says {epoch}", m.epoch)));
        }
        let mut operators = Vec::new();
        for op in m.operators {
            let mut state = OpState::new();
            for t in op.tables {
                let p = dir.join(&t.file);
                let bytes = std::fs::read(&p).map_err(|e| bad(&p, e.to_string()))?;
                if bytes.len() as u64 != t.bytes {
                    return Err(bad(&p, format!("{} bytes, the manifest says {}", bytes.len(), t.bytes)));
                }
                if crc32fast::hash(&bytes) != t.crc32 {
                    return Err(bad(&p, "checksum mismatch".into()));
                }
                let table = from_ipc(&bytes).map_err(|e| bad(&p, format!("not an Arrow IPC file: {e}")))?;
                if table.num_rows() != t.rows {
                    return Err(bad(
                        &p,
                        format!("{} rows, the manifest says {}", table.num_rows(), t.rows),
                    ));
                }
                state.put(&t.name, table);
            }
            operators.push((op.node, op.operator, state));
        }
        Ok(Checkpoint {
            epoch,
            fingerprint: m.fingerprint,
            meta: m.meta,
            operators,
        })
    }

    /// Remove every checkpoint (the query finished: there is nothing to resume). The directory is
    /// renamed out of sight first and fsynced, so a kill during the removal leaves no checkpoint
    /// that is half gone (the leftover is removed when the query's store is next opened).
    pub fn remove_all(&self) -> Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        let gone = removed_name(&self.dir);
        if gone.exists() {
            std::fs::remove_dir_all(&gone).map_err(io(&gone))?;
        }
        std::fs::rename(&self.dir, &gone).map_err(io(&self.dir))?;
        if let Some(parent) = self.dir.parent() {
            sync_dir(parent)?;
        }
        std::fs::remove_dir_all(&gone).map_err(io(&gone))
    }
}

/// Where [`CheckpointStore::remove_all`] moves a query's directory before removing it.
fn removed_name(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.removed"))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::state::keyed_table;
    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use std::sync::Arc;

    fn checkpoint(epoch: u64) -> Checkpoint {
        let mut s = OpState::new();
        let keys: Vec<&[u8]> = vec![b"a", b"b"];
        let t = keyed_table(
            keys,
            vec![("n", Arc::new(Int64Array::from(vec![epoch as i64, 2])) as ArrayRef)],
        )
        .expect("table");
        s.put("groups", t);
        Checkpoint {
            epoch,
            fingerprint: "fp".into(),
            meta: serde_json::json!({"watermark": epoch * 1000}),
            operators: vec![(3, "WindowAgg".into(), s)],
        }
    }

    fn store(dir: &Path) -> CheckpointStore {
        CheckpointStore::open(dir, "q", 3).expect("store")
    }

    /// Write epochs 1..=n; return the store.
    fn written(dir: &Path, n: u64) -> CheckpointStore {
        let s = store(dir);
        for e in 1..=n {
            s.write(&checkpoint(e)).expect("write");
        }
        s
    }

    fn loaded_epoch(s: &CheckpointStore) -> (u64, Vec<String>) {
        let l = s.load_latest("fp").expect("load").expect("a checkpoint");
        (l.checkpoint.epoch, l.skipped)
    }

    #[test]
    fn writes_reads_back_and_keeps_the_last_n() {
        let d = tempfile::tempdir().expect("tmp");
        let s = written(d.path(), 5);
        assert_eq!(s.epochs().expect("epochs"), vec![5, 4, 3]);
        let l = s.load_latest("fp").expect("load").expect("some");
        assert_eq!(l.checkpoint.epoch, 5);
        assert!(l.skipped.is_empty());
        assert_eq!(l.checkpoint.meta["watermark"], 5000);
        let (node, name, mut st) = l.checkpoint.operators.into_iter().next().expect("op");
        assert_eq!((node, name.as_str()), (3, "WindowAgg"));
        let t = st.take("groups").expect("table");
        assert_eq!(t, checkpoint(5).operators[0].2.tables[0].1);
    }

    #[test]
    fn nothing_written_loads_none() {
        let d = tempfile::tempdir().expect("tmp");
        assert!(store(d.path()).load_latest("fp").expect("load").is_none());
    }

    #[test]
    fn a_leftover_temp_directory_is_not_a_checkpoint_and_is_removed() {
        let d = tempfile::tempdir().expect("tmp");
        written(d.path(), 2);
        let tmp = d.path().join(".chk-00000003.tmp");
        std::fs::create_dir_all(&tmp).expect("mkdir");
        std::fs::write(tmp.join("op3-0-groups.arrow"), b"partial").expect("write");
        let s = store(d.path());
        assert!(!tmp.exists());
        assert_eq!(loaded_epoch(&s).0, 2);
    }

    /// Corrupt the newest checkpoint with `damage`; loading falls back to the previous one with a
    /// message naming the file.
    fn falls_back(damage: impl Fn(&Path), names: &str, says: &str) {
        let d = tempfile::tempdir().expect("tmp");
        let s = written(d.path(), 3);
        damage(&d.path().join("chk-00000003"));
        let (epoch, skipped) = loaded_epoch(&s);
        assert_eq!(epoch, 2, "fell back");
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(
            skipped[0].contains(names) && skipped[0].contains(says),
            "{:?} names {names} and says {says}",
            skipped[0]
        );
    }

    fn table_file(dir: &Path) -> PathBuf {
        dir.join("op3-0-groups.arrow")
    }

    #[test]
    fn a_truncated_manifest_falls_back() {
        falls_back(
            |d| {
                let m = d.join(MANIFEST);
                let text = std::fs::read(&m).expect("read");
                std::fs::write(&m, &text[..text.len() / 2]).expect("write");
            },
            "manifest.json",
            "truncated",
        );
    }

    #[test]
    fn a_manifest_with_a_flipped_byte_falls_back() {
        falls_back(
            |d| {
                let m = d.join(MANIFEST);
                let mut text = std::fs::read(&m).expect("read");
                let i = text.iter().position(|c| *c == b':').expect("colon") + 3;
                text[i] ^= 1;
                std::fs::write(&m, &text).expect("write");
            },
            "manifest.json",
            "checksum mismatch",
        );
    }

    #[test]
    fn a_missing_manifest_falls_back() {
        falls_back(
            |d| std::fs::remove_file(d.join(MANIFEST)).expect("rm"),
            "manifest.json",
            "No such file",
        );
    }

    #[test]
    fn a_missing_state_file_falls_back() {
        falls_back(
            |d| std::fs::remove_file(table_file(d)).expect("rm"),
            "op3-0-groups.arrow",
            "No such file",
        );
    }

    #[test]
    fn a_truncated_state_file_falls_back() {
        falls_back(
            |d| {
                let f = table_file(d);
                let b = std::fs::read(&f).expect("read");
                std::fs::write(&f, &b[..b.len() - 10]).expect("write");
            },
            "op3-0-groups.arrow",
            "the manifest says",
        );
    }

    #[test]
    fn a_state_file_with_a_bad_crc_falls_back() {
        falls_back(
            |d| {
                let f = table_file(d);
                let mut b = std::fs::read(&f).expect("read");
                let mid = b.len() / 2;
                b[mid] ^= 0xff;
                std::fs::write(&f, &b).expect("write");
            },
            "op3-0-groups.arrow",
            "checksum mismatch",
        );
    }

    #[test]
    fn a_state_file_that_is_not_arrow_falls_back() {
        // Same size and a matching checksum in a rewritten manifest: only Arrow can tell.
        falls_back(
            |d| {
                let f = table_file(d);
                let len = std::fs::metadata(&f).expect("meta").len() as usize;
                let junk = vec![7u8; len];
                std::fs::write(&f, &junk).expect("write");
                let m = d.join(MANIFEST);
                let text = std::fs::read_to_string(&m).expect("read");
                let body = text.lines().next().expect("body");
                let mut v: serde_json::Value = serde_json::from_str(body).expect("json");
                v["operators"][0]["tables"][0]["crc32"] = crc32fast::hash(&junk).into();
                let body = v.to_string();
                let text = format!("{body}\ncrc32:{:08x}\n", crc32fast::hash(body.as_bytes()));
                std::fs::write(&m, text).expect("write");
            },
            "op3-0-groups.arrow",
            "not an Arrow IPC file",
        );
    }

    #[test]
    fn a_manifest_of_another_format_version_falls_back() {
        falls_back(
            |d| {
                let m = d.join(MANIFEST);
                let text = std::fs::read_to_string(&m).expect("read");
                let body = text
                    .lines()
                    .next()
                    .expect("body")
                    .replace("\"version\":1", "\"version\":99");
                let text = format!("{body}\ncrc32:{:08x}\n", crc32fast::hash(body.as_bytes()));
                std::fs::write(&m, text).expect("write");
            },
            "manifest.json",
            "version 99",
        );
    }

    #[test]
    fn when_no_checkpoint_verifies_loading_refuses_naming_each() {
        let d = tempfile::tempdir().expect("tmp");
        let s = written(d.path(), 2);
        for e in [1, 2] {
            std::fs::remove_file(table_file(&s.path_of(e))).expect("rm");
        }
        let err = s.load_latest("fp").expect_err("refused").to_string();
        assert!(err.contains("no usable checkpoint for query 'q'"), "{err}");
        assert!(err.contains("chk-00000002") && err.contains("chk-00000001"), "{err}");
        assert!(err.contains("remove that directory"), "{err}");
    }

    #[test]
    fn a_checkpoint_of_another_query_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let s = written(d.path(), 1);
        let err = s.load_latest("other").expect_err("refused").to_string();
        assert!(err.contains("taken for a different query"), "{err}");
    }

    #[test]
    fn a_query_runs_in_one_process_at_a_time() {
        let d = tempfile::tempdir().expect("tmp");
        let first = store(d.path());
        let err = CheckpointStore::open(d.path(), "q", 3)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("query 'q' is already running"), "{err}");
        drop(first);
        assert!(CheckpointStore::open(d.path(), "q", 3).is_ok());
    }

    #[test]
    fn remove_all_leaves_nothing_to_resume() {
        let d = tempfile::tempdir().expect("tmp");
        let dir = d.path().join("q");
        let s = written(&dir, 2);
        s.remove_all().expect("rm");
        assert!(!dir.exists());
        drop(s);
        // A removal cut short by a kill: the renamed leftover is not a checkpoint and goes away.
        let s = written(&dir, 2);
        drop(s);
        std::fs::rename(&dir, removed_name(&dir)).expect("as if killed mid-removal");
        let s = store(&dir);
        assert!(s.load_latest("fp").expect("load").is_none());
        assert!(!removed_name(&dir).exists());
    }
}
