//! The cluster's identity: a random id that the bootstrapping node creates once, before
//! it initializes raft, and that every node keeps in `data_dir/cluster_id`.
//!
//! Every raft hello carries the sender's id and every accepted hello is answered with the
//! listener's, so two nodes that both know an id talk only if the ids are equal: a node
//! started on the data directory of another cluster (a reused directory or address) is
//! refused by every member, and refuses them, with a reason that says so (etcd checks its
//! cluster ID the same way). A node whose raft is not initialized yet (a fresh data
//! directory) adopts the first id a peer presents; an initialized node never adopts one,
//! so a stray node cannot hand its id to a cluster that has none (one bootstrapped before
//! cluster ids existed: its nodes check nothing). Bootstrap a new cluster on fresh data
//! directories only: a fresh node cannot tell a stale node of an old cluster from a
//! member of the new one.

use std::collections::hash_map::RandomState;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Longest id accepted from a peer.
const MAX_LEN: usize = 64;

/// This node's cluster id, if it has one, and where it is kept.
#[derive(Clone)]
pub struct ClusterId {
    path: PathBuf,
    current: Arc<Mutex<Option<String>>>,
    /// Whether a peer's id may still be adopted: only while raft is not initialized.
    may_adopt: Arc<AtomicBool>,
    /// Whether this process adopted its id from a peer (then the cluster exists).
    adopted: Arc<AtomicBool>,
}

/// What a peer's id means for a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Same cluster, or one side does not know its cluster yet.
    Accept,
    /// Both know their cluster, and they differ.
    OtherCluster { ours: String, theirs: String },
}

impl ClusterId {
    /// Reads the id kept in `data_dir`, if any.
    pub fn load(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join("cluster_id");
        let current = match fs::read_to_string(&path) {
            Ok(text) if valid(text.trim()) => Some(text.trim().to_owned()),
            Ok(_) => {
                let what = format!("{} does not hold a cluster id", path.display());
                return Err(std::io::Error::other(what));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(Self {
            path,
            current: Arc::new(Mutex::new(current)),
            may_adopt: Arc::new(AtomicBool::new(true)),
            adopted: Arc::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // The value is replaced whole, so it is consistent even if a holder panicked.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on a peer's id is never adopted: raft is initialized.
    pub fn stop_adopting(&self) {
        self.may_adopt.store(false, Ordering::Release);
    }

    /// Whether this process adopted its id from a peer, which proves the cluster exists.
    pub fn adopted(&self) -> bool {
        self.adopted.load(Ordering::Acquire)
    }

    /// The id, or "" when this node does not know its cluster yet.
    pub fn get(&self) -> String {
        self.lock().clone().unwrap_or_default()
    }

    /// Creates a new random id unless this node has one; returns the id.
    pub fn create_if_missing(&self) -> std::io::Result<String> {
        let mut current = self.lock();
        if let Some(id) = current.as_ref() {
            return Ok(id.clone());
        }
        let id = format!("{:016x}{:016x}", random(), random());
        self.store(&id)?;
        *current = Some(id.clone());
        Ok(id)
    }

    /// Makes `id` this node's cluster id for a node that joins an existing cluster: kept
    /// if it has none, refused if it has another; no peer's id is adopted after this.
    pub fn join(&self, id: &str) -> std::io::Result<()> {
        if !valid(id) {
            return Err(std::io::Error::other(format!(
                "join = {:?} is not a cluster id (up to {MAX_LEN} hex digits, as GET \
                 /v1/cluster shows it)",
                id.escape_default().to_string()
            )));
        }
        self.stop_adopting();
        let mut current = self.lock();
        match current.as_deref() {
            Some(ours) if ours == id => Ok(()),
            Some(ours) => Err(std::io::Error::other(format!(
                "this data directory belongs to cluster {ours}, not to cluster {id} named by \
                 join: use an empty data directory to join another cluster"
            ))),
            None => {
                self.store(id)?;
                *current = Some(id.to_owned());
                Ok(())
            }
        }
    }

    /// Compares a peer's id with ours, adopting it (durably) if we have none.
    pub fn meet(&self, theirs: &str) -> std::io::Result<Verdict> {
        if theirs.is_empty() {
            return Ok(Verdict::Accept);
        }
        if !valid(theirs) {
            return Ok(Verdict::OtherCluster {
                ours: self.get(),
                theirs: theirs.escape_default().to_string(),
            });
        }
        let mut current = self.lock();
        match current.as_deref() {
            Some(ours) if ours == theirs => Ok(Verdict::Accept),
            Some(ours) => Ok(Verdict::OtherCluster {
                ours: ours.to_owned(),
                theirs: theirs.to_owned(),
            }),
            None if self.may_adopt.load(Ordering::Acquire) => {
                self.store(theirs)?;
                tracing::info!(cluster_id = theirs, "joined the cluster a peer presented");
                *current = Some(theirs.to_owned());
                self.adopted.store(true, Ordering::Release);
                Ok(Verdict::Accept)
            }
            None => Ok(Verdict::Accept),
        }
    }

    /// Writes the id to a temporary file, fsyncs it, renames it into place and fsyncs
    /// the folder, so a crash leaves either no id or the whole one.
    fn store(&self, id: &str) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(format!("{id}\n").as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        match self.path.parent() {
            Some(dir) => File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    }
}

fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 64 random bits: std seeds each `RandomState` from the operating system's randomness.
fn random() -> u64 {
    RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_node_adopts_the_first_id_and_refuses_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = ClusterId::load(dir.path()).expect("load");
        assert_eq!(id.get(), "");
        assert_eq!(id.meet("").expect("meet"), Verdict::Accept);
        assert_eq!(id.meet("abc123").expect("meet"), Verdict::Accept);
        assert_eq!(id.get(), "abc123");
        assert!(matches!(
            id.meet("def456").expect("meet"),
            Verdict::OtherCluster { .. }
        ));
        assert!(id.adopted());
        // Kept across restarts.
        let again = ClusterId::load(dir.path()).expect("load");
        assert_eq!(again.get(), "abc123");
        assert_eq!(again.create_if_missing().expect("create"), "abc123");
        assert!(!again.adopted());
    }

    #[test]
    fn a_joining_node_keeps_the_named_id_and_refuses_another_clusters_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = ClusterId::load(dir.path()).expect("load");
        id.join("abc123").expect("join");
        assert_eq!(id.get(), "abc123");
        assert!(matches!(
            id.meet("def456").expect("meet"),
            Verdict::OtherCluster { .. }
        ));
        let again = ClusterId::load(dir.path()).expect("load");
        again.join("abc123").expect("the same cluster again");
        let e = again.join("def456").expect_err("another cluster");
        assert!(e.to_string().contains("belongs to cluster abc123"), "{e}");
        assert!(again.join("not hex!").is_err());
        // No id is adopted from a peer once joining named one.
        let fresh = tempfile::tempdir().expect("tempdir");
        let joiner = ClusterId::load(fresh.path()).expect("load");
        joiner.join("abc123").expect("join");
        assert!(!joiner.adopted());
    }

    #[test]
    fn an_initialized_node_without_an_id_adopts_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = ClusterId::load(dir.path()).expect("load");
        id.stop_adopting();
        assert_eq!(id.meet("abc123").expect("meet"), Verdict::Accept);
        assert_eq!(id.get(), "", "a stray node's id is not taken up");
        assert!(!id.adopted());
    }

    #[test]
    fn created_ids_differ_and_garbage_is_refused() {
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let a = ClusterId::load(a.path()).expect("load");
        let b = ClusterId::load(b.path()).expect("load");
        let (x, y) = (
            a.create_if_missing().expect("x"),
            b.create_if_missing().expect("y"),
        );
        assert_ne!(x, y);
        assert_eq!(x.len(), 32);
        assert!(matches!(
            a.meet("not hex\n").expect("meet"),
            Verdict::OtherCluster { .. }
        ));
    }
}
