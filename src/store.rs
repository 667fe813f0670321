//! The persisted catalog: every source, table, view, sink and materialized view of a data directory, as
//! the SQL that created it, in creation order, with the state of each continuous query.
//!
//! `DATA_DIR/catalog.json` (written as `catalog.json.tmp`, fsynced, renamed over, directory fsynced):
//!
//! ```json
//! {"version": 1, "objects": [
//!   {"name": "events", "kind": "source", "sql": "CREATE SOURCE events (…) WITH (…)"},
//!   {"name": "per_minute", "kind": "materialized view", "sql": "CREATE MATERIALIZED VIEW …", "state": "running"}
//! ]}
//! ```
//!
//! `state` (sinks and materialized views only): `running` (started again when the catalog is opened),
//! `paused`, `finished` (a bounded query that ended; not run again) or `failed` (not restarted until
//! resumed), with `error` for the last error. `DATA_DIR/lock` is held with an exclusive lock while a
//! process has the directory open, so a server and a REPL never run the same queries twice.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const CATALOG: &str = "catalog.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    pub name: String,
    /// `source`, `table`, `view`, `sink` or `materialized view`.
    pub kind: String,
    pub sql: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    objects: Vec<StoredObject>,
}

/// An open data directory.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    /// Open (creating) `dir` and lock it; fails if another process has it open.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::External(format!(
                    "{}: the data directory is in use by another freshet process (a `freshet serve`? then use \
                     `freshet repl --server URL`)",
                    dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored objects, in creation order (none for a new directory).
    pub fn load(&self) -> Result<Vec<StoredObject>> {
        let path = self.dir.join(CATALOG);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let file: CatalogFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::External(format!("{}: not a Freshet catalog: {e}", path.display())))?;
        if file.version != 1 {
            return Err(Error::External(format!(
                "{}: catalog version {} is not supported (this freshet reads version 1)",
                path.display(),
                file.version
            )));
        }
        Ok(file.objects)
    }

    /// Replace the stored catalog, atomically.
    pub fn save(&self, objects: &[StoredObject]) -> Result<()> {
        let path = self.dir.join(CATALOG);
        let tmp = self.dir.join(format!("{CATALOG}.tmp"));
        let body = serde_json::to_vec_pretty(&CatalogFile {
            version: 1,
            objects: objects.to_vec(),
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(&body)
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The default data directory: `$FRESHET_DATA_DIR`, else `$XDG_DATA_HOME/freshet`, else
/// `~/.local/share/freshet`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FRESHET_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("freshet");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/freshet")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_lock() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(dir.path()).expect("open");
        assert!(store.load().expect("empty").is_empty());
        let objects = vec![
            StoredObject {
                name: "s".into(),
                kind: "source".into(),
                sql: "CREATE SOURCE s …".into(),
                state: None,
                error: None,
            },
            StoredObject {
                name: "k".into(),
                kind: "sink".into(),
                sql: "CREATE SINK k …".into(),
                state: Some("paused".into()),
                error: Some("boom".into()),
            },
        ];
        store.save(&objects).expect("save");
        assert_eq!(store.load().expect("load"), objects);
        let e = Store::open(dir.path()).err().expect("locked");
        assert!(e.to_string().contains("in use"), "{e}");
        drop(store);
        assert_eq!(Store::open(dir.path()).expect("reopen").load().expect("load"), objects);
        std::fs::write(dir.path().join(CATALOG), "{\"version\": 7, \"objects\": []}").expect("write");
        let e = Store::open(dir.path()).expect("open").load().expect_err("version");
        assert!(e.to_string().contains("version 7"), "{e}");
    }
}
