//! The raft log (entries in segment files, see `log_files`) and raft metadata (vote,
//! committed, last purged) in RocksDB.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use rocksdb::{WriteBatch, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crash;
use crate::db::{
    cf, read_value, synced, CF_RAFT_META, META_COMMITTED, META_LAST_PURGED, META_VOTE,
};
use crate::error::OrRaft;
use crate::log_files::LogFiles;
use crate::typ::{LogEntry, LogId, StorageError, TypeConfig, Vote};
use crate::StoreError;

/// Most bytes of log records one AppendEntries carries (always at least one entry).
const APPEND_ENTRIES_BYTES: u64 = 2 * 1024 * 1024;

/// The raft log store. Cloning shares the database and the log files.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    files: LogFiles,
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>, files: LogFiles) -> Self {
        Self { db, files }
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        read_value(&self.db, CF_RAFT_META, key)
    }

    /// Writes one metadata value; `sync` makes it durable before returning.
    fn write_meta<T: Serialize>(
        &self,
        key: &'static [u8],
        value: &T,
        sync: bool,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_RAFT_META), key, postcard::to_stdvec(value)?);
        if sync {
            self.write_synced(batch)
        } else {
            Ok(self.db.write(batch)?)
        }
    }

    /// Writes and fsyncs one batch on the calling task. Deliberately not on the
    /// blocking pool: openraft's core awaits these writes before it does anything else,
    /// so a handoff would only add two thread switches.
    fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        Ok(self.db.write_opt(batch, &synced())?)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        self.files
            .entries(start, end)
            .or_raft(ErrorSubject::Logs, ErrorVerb::Read)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<LogEntry>, StorageError> {
        // openraft gives one AppendEntries a deadline of one heartbeat whatever it
        // carries: a few MiB at most, so that it can arrive and be synced in time.
        let end = self.files.end_within(start, end, APPEND_ENTRIES_BYTES);
        self.files
            .entries(start, end)
            .or_raft(ErrorSubject::Logs, ErrorVerb::Read)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self
            .read_meta(META_LAST_PURGED)
            .or_raft(ErrorSubject::Store, ErrorVerb::Read)?;
        let last_log_id = self.files.last_log_id().or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // Synced: a vote forgotten in a crash lets this node vote twice in one term.
        self.write_meta(META_VOTE, vote, true)
            .or_raft(ErrorSubject::Vote, ErrorVerb::Write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(META_VOTE)
            .or_raft(ErrorSubject::Vote, ErrorVerb::Read)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: losing it only means replaying a little more on restart; the next
        // synced write carries it to disk anyway.
        self.write_meta(META_COMMITTED, &committed, false)
            .or_raft(ErrorSubject::Store, ErrorVerb::Write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(META_COMMITTED)
            .or_raft(ErrorSubject::Store, ErrorVerb::Read)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One write and one fdatasync for all of them: the callback tells openraft the
        // entries are durable, and a leader counts itself toward the quorum on that word.
        let started = std::time::Instant::now();
        let result = self.files.append(entries.into_iter().collect());
        metrics::histogram!("quorumkv_log_append_duration_seconds").record(started.elapsed());
        let io_result = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io_result);
        result.or_raft(ErrorSubject::Logs, ErrorVerb::Write)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Durable before returning: a conflicting suffix that came back after a crash
        // could be applied.
        self.files
            .truncate(log_id.index)
            .or_raft(ErrorSubject::Logs, ErrorVerb::Delete)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let last_purged =
            postcard::to_stdvec(&log_id).or_raft(ErrorSubject::Store, ErrorVerb::Write)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_RAFT_META), META_LAST_PURGED, last_purged);
        // Synced, and before any entry is dropped: the log never has a hole that
        // last_purged does not explain. The sync also makes every earlier (unsynced)
        // apply batch durable, as they share RocksDB's WAL. Purged entries are applied or
        // in a durable snapshot: openraft purges past a snapshot it built, or up to one
        // it received, which the raft listener has stored before raft saw it (and
        // `open` installs a stored snapshot that is ahead of the state).
        self.write_synced(batch)
            .or_raft(ErrorSubject::Logs, ErrorVerb::Delete)?;
        crash::point(crash::PURGE_RECORDED);
        self.files
            .purge(log_id.index)
            .or_raft(ErrorSubject::Logs, ErrorVerb::Delete)?;
        crash::point(crash::PURGED);
        Ok(())
    }
}
