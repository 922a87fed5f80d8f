//! Snapshot encoding and the current-snapshot file.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kv_core::{Entry, Record};
use serde::{Deserialize, Serialize};

use crate::typ::SnapshotMeta;
use crate::StoreError;

/// The state-machine data in a snapshot, followed by the encoding of the tombstones
/// (`Vec<Tombstone>`; absent in snapshots written before they existed). On-disk and
/// wire type.
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
    // One byte string, not a sequence of bytes: the same encoding, decoded in one copy.
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// [`SnapshotFile`] borrowed, for writing without copying the data (postcard encodes a
/// slice and a `Vec` alike).
#[derive(Serialize)]
struct SnapshotFileRef<'a> {
    meta: &'a SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
}

/// Bytes read from the start of the file to decode just the meta (it comes first, and
/// holds little more than the membership).
const META_PREFIX: u64 = 1024 * 1024;

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

    /// The meta of the current snapshot, read from the start of its file only.
    pub fn load_meta(&self) -> Result<Option<SnapshotMeta>, StoreError> {
        let file = match File::open(self.current()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut prefix = vec![];
        file.take(META_PREFIX).read_to_end(&mut prefix)?;
        let (meta, _) = postcard::take_from_bytes::<SnapshotMeta>(&prefix)?;
        Ok(Some(meta))
    }

    /// Makes `meta`/`data` the current snapshot unless one as new is already there:
    /// write a temporary file, fsync it, rename it over the old one, fsync the folder.
    pub fn store(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
        let _guard = self
            .lock
            .lock()
            .map_err(|_| StoreError::Invariant("snapshot lock poisoned"))?;
        if let Some(existing) = self.load_meta()? {
            // The same log id is the same state: a received snapshot stored before its
            // install is not written twice.
            if existing.last_log_id >= meta.last_log_id {
                return Ok(());
            }
        }
        let tmp = self.dir.join("current.tmp");
        let mut f = std::io::BufWriter::with_capacity(1024 * 1024, File::create(&tmp)?);
        postcard::to_io(&SnapshotFileRef { meta, data }, &mut f)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, self.current())?;
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    Ok(File::open(dir)?.sync_all()?)
}

/// Where a node makes a snapshot it received durable, before raft learns of it.
///
/// openraft 0.9 purges the log up to a received snapshot as soon as it queues the
/// install, while the state machine may still be decoding it; a crash in between would
/// leave a log that starts after the state. So the raft listener stores the whole
/// snapshot here first, and `open` installs a stored snapshot that is ahead of the state.
#[derive(Clone)]
pub struct SnapshotStore(pub(crate) SnapshotFiles);

impl SnapshotStore {
    /// Makes `data` the current snapshot (written, fsynced, renamed) unless one at least
    /// as new is already stored.
    pub fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
        self.0.store(meta, data)
    }
}
