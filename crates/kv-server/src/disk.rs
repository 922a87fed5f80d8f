//! The disk guard: a write that grows the data is refused while the file system holding
//! the data directory has less free space than `limits.min_free_disk_mib`; and each
//! write carries `limits.max_data_bytes` and `limits.max_records`, which applying it
//! checks against the stored data and records exactly (`Command::WithinLimits`).
//!
//! openraft 0.9 stops a node for good when a log write fails, so the log must never meet
//! a full disk. Refusing growth early keeps a reserve for what must still work: the log
//! entries of deletes and expiry, log segments, snapshots and RocksDB's compactions,
//! which are what frees space. Writes resume on their own once space is free again
//! (unlike etcd's NOSPACE alarm, which needs an operator to disarm it).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_core::{Command, Limits};

/// How long one measurement of the free space is trusted.
const MEASURED_FOR: Duration = Duration::from_millis(100);

/// Measures free space under the data directory, at most every [`MEASURED_FOR`].
#[derive(Clone)]
pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    limits: Limits,
    /// When free space was last measured, and what was found.
    last: Arc<Mutex<Option<(Instant, u64)>>>,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the data directory's disk has {free_mib} MiB free, below the {min_mib} MiB this node \
     keeps for deletes, expiry and compaction; writes that grow the data resume once space \
     is freed (delete keys, or free disk space)"
)]
pub struct DiskFull {
    pub free_mib: u64,
    pub min_mib: u64,
}

impl DiskGuard {
    /// A guard for `dir` that keeps `min_free` bytes free, and puts `limits` on what
    /// writes store.
    pub fn new(dir: PathBuf, min_free: u64, limits: Limits) -> Self {
        Self {
            dir,
            min_free,
            limits,
            last: Arc::default(),
        }
    }

    /// Free bytes available to this process under the data directory.
    fn free(&self) -> std::io::Result<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, free)) = *last {
            if at.elapsed() < MEASURED_FOR {
                return Ok(free);
            }
        }
        let stat = rustix::fs::statvfs(&self.dir)?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        *last = Some((Instant::now(), free));
        Ok(free)
    }

    /// Whether `command` may be proposed now: everything that does not grow the data
    /// always may; a write that does, only while the reserve is free.
    pub fn admits(&self, command: &Command) -> Result<(), DiskFull> {
        if !grows(command) {
            return Ok(());
        }
        match self.free() {
            Ok(free) if free < self.min_free => Err(DiskFull {
                free_mib: free >> 20,
                min_mib: self.min_free >> 20,
            }),
            Ok(_) => Ok(()),
            Err(e) => {
                // Not knowing is no reason to refuse: the log write itself will tell.
                tracing::warn!(error = %e, "measuring free disk space");
                Ok(())
            }
        }
    }

    /// `command` with the storage limits in force while it applies, if it can store
    /// data or records; deletes and housekeeping need none.
    pub fn within_limits(&self, command: Command) -> Command {
        match command {
            Command::Delete { .. }
            | Command::DeletePrefix { .. }
            | Command::Expire { .. }
            | Command::Purge => command,
            other => Command::WithinLimits {
                limits: self.limits,
                command: Box::new(other),
            },
        }
    }
}

/// Whether applying `command` can make the stored data larger.
fn grows(command: &Command) -> bool {
    match command {
        Command::Set { .. } | Command::OpenSession { .. } | Command::PutToken { .. } => true,
        Command::Delete { .. }
        | Command::DeletePrefix { .. }
        | Command::Expire { .. }
        | Command::Purge
        | Command::RevokeToken { .. } => false,
        Command::Idempotent { command, .. }
        | Command::WithinQuota { command, .. }
        | Command::WithinLimits { command, .. }
        | Command::Session { command, .. }
        | Command::Authorized { command, .. } => grows(command),
        Command::Batch(commands) => commands.iter().any(grows),
    }
}

#[cfg(test)]
mod tests {
    use kv_core::{Precondition, Ttl};

    use super::*;

    const NO_LIMITS: Limits = Limits {
        max_data_bytes: u64::MAX,
        max_records: u64::MAX,
    };

    fn set() -> Command {
        Command::Set {
            key: "k".into(),
            value: b"1".to_vec(),
            ttl: Ttl::Clear,
            precondition: Precondition::Always,
        }
    }

    fn delete() -> Command {
        Command::Delete {
            key: "k".into(),
            precondition: Precondition::Always,
        }
    }

    #[test]
    fn below_the_reserve_only_writes_that_grow_the_data_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full = DiskGuard::new(dir.path().to_owned(), u64::MAX, NO_LIMITS);
        let refused = full.admits(&set()).expect_err("refused");
        assert!(refused.to_string().contains("MiB free"), "{refused}");
        let idempotent = Command::Idempotent {
            id: "i".into(),
            fingerprint: 1,
            retain_ms: 1,
            command: Box::new(set()),
        };
        assert!(full.admits(&idempotent).is_err());
        assert!(full.admits(&Command::Batch(vec![delete(), set()])).is_err());
        assert!(full.admits(&delete()).is_ok());
        assert!(full
            .admits(&Command::DeletePrefix { prefix: "a".into() })
            .is_ok());
        assert!(full.admits(&Command::Expire { up_to_ms: 1 }).is_ok());

        let roomy = DiskGuard::new(dir.path().to_owned(), 0, NO_LIMITS);
        assert!(roomy.admits(&set()).is_ok());
    }

    #[test]
    fn writes_that_can_store_carry_the_limits_and_deletes_do_not() {
        let limits = Limits {
            max_data_bytes: 99,
            max_records: 5,
        };
        let guard = DiskGuard::new(PathBuf::from("."), 0, limits);
        let limited = |c: Command| Command::WithinLimits {
            limits,
            command: Box::new(c),
        };
        let idempotent = |c: Command| Command::Idempotent {
            id: "i".into(),
            fingerprint: 1,
            retain_ms: 1,
            command: Box::new(c),
        };
        assert_eq!(guard.within_limits(set()), limited(set()));
        assert_eq!(
            guard.within_limits(idempotent(delete())),
            limited(idempotent(delete()))
        );
        assert_eq!(guard.within_limits(delete()), delete());
        assert_eq!(guard.within_limits(Command::Purge), Command::Purge);
    }
}
