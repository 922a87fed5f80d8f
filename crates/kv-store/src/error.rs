//! Storage errors, and their one translation into openraft's `StorageError`.

use openraft::{ErrorSubject, ErrorVerb, StorageIOError};
use thiserror::Error;

use crate::typ::StorageError;

/// What can go wrong below the raft log and the state machine.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("decoding stored data: {0}")]
    Codec(#[from] postcard::Error),
    #[error("file i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// Damage in the raft log that open must not cut away: acknowledged entries follow it.
    #[error("corrupt raft log: {} at byte {offset}: {what}", path.display())]
    CorruptLog {
        path: std::path::PathBuf,
        offset: u64,
        what: String,
    },
    /// A raft log file operation failed; names the file.
    #[error("raft log file {}: {source}", path.display())]
    LogIo {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An earlier change of the raft log failed, so it takes no more (see `log_files`).
    #[error("raft log takes no more writes after an earlier failure: {0}")]
    LogPoisoned(String),
    /// A blocking storage task panicked or was cancelled before it finished.
    #[error("a blocking storage task failed: {0}")]
    Task(String),
    /// A snapshot install is replacing the state; reads wait for its end.
    #[error("this node is installing a snapshot")]
    Installing,
    /// The store was used in a way its own code rules out (a bug, or a thread that
    /// panicked while holding a lock).
    #[error("storage invariant broken: {0}")]
    Invariant(&'static str),
}

impl StoreError {
    /// Translates into openraft's error, saying what was being done to what.
    pub(crate) fn into_raft(self, subject: ErrorSubject<u64>, verb: ErrorVerb) -> StorageError {
        StorageIOError::new(subject, verb, openraft::AnyError::new(&self)).into()
    }
}

/// Shorthands for the translation at each call site. The large error type is
/// openraft's, fixed by its storage traits.
#[allow(clippy::result_large_err)]
pub(crate) trait OrRaft<T> {
    fn or_raft(self, subject: ErrorSubject<u64>, verb: ErrorVerb) -> Result<T, StorageError>;
}

#[allow(clippy::result_large_err)]
impl<T, E: Into<StoreError>> OrRaft<T> for Result<T, E> {
    fn or_raft(self, subject: ErrorSubject<u64>, verb: ErrorVerb) -> Result<T, StorageError> {
        self.map_err(|e| e.into().into_raft(subject, verb))
    }
}
