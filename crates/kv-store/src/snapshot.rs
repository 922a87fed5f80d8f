//! Snapshot encoding and the current-snapshot file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kv_core::{Entry, Record};
use serde::{Deserialize, Serialize};

use crate::typ::SnapshotMeta;
use crate::StoreError;

/// The state-machine data in a snapshot. On-disk and wire type.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotState {
    pub clock_ms: u64,
    pub entries: Vec<(String, Entry)>,
    pub records: Vec<(String, Record)>,
}

/// The current snapshot as persisted. On-disk type.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The one file holding the current snapshot, replaced atomically.
#[derive(Clone)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    /// Serializes check-and-replace, so a slow build cannot overwrite a newer install.
    lock: Arc<Mutex<()>>,
}

impl SnapshotFiles {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            lock: Arc::new(Mutex::new(())),
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// Reads the current snapshot; a missing file is no snapshot, a corrupt one an error.
    pub fn load(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
        match fs::read(self.current()) {
            Ok(raw) => {
                let file: SnapshotFile = postcard::from_bytes(&raw)?;
                Ok(Some((file.meta, file.data)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes `meta`/`data` the current snapshot unless a newer one is already there:
    /// write a temporary file, fsync it, rename it over the old one, fsync the folder.
    pub fn store(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
        let _guard = self
            .lock
            .lock()
            .map_err(|_| StoreError::Task("snapshot lock poisoned".into()))?;
        if let Some((existing, _)) = self.load()? {
            if existing.last_log_id > meta.last_log_id {
                return Ok(());
            }
        }
        let raw = postcard::to_stdvec(&SnapshotFile {
            meta: meta.clone(),
            data: data.to_vec(),
        })?;
        let tmp = self.dir.join("current.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&raw)?;
        f.sync_all()?;
        fs::rename(&tmp, self.current())?;
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    Ok(File::open(dir)?.sync_all()?)
}
