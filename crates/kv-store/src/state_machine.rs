//! The replicated state machine in RocksDB.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv_core::{
    apply_request, Due, Entry, EntryMeta, Overlay, Record, Response, Session, Slot, StateView,
    Token, Tombstone,
};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{IteratorMode, WriteBatch, DB};
use serde::de::DeserializeOwned;

use crate::crash;
use crate::db::{
    blocking, cf, expiry_key, load_tokens, read_value, synced, DbView, Shared, Tokens, CF_DATA,
    CF_EXPIRY, CF_RECORDS, CF_SESSIONS, CF_SM_META, CF_TOKENS, DATA_END, EXPIRY_END, META_CLOCK,
    META_DATA_BYTES, META_INSTALLING, META_LAST_APPLIED, META_MAX_NODE_ID, META_MEMBERSHIP,
    META_RECORD_COUNT, META_TOMBSTONES,
};
use crate::entry_cache::EntryCache;
use crate::error::OrRaft;
use crate::snapshot::{Decoder, FileWriter, Opened, SnapshotData, SnapshotFiles, Window};
use crate::typ::{
    LogEntry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::StoreError;

/// Bytes of recently written keys and values the state machine keeps in memory, so
/// apply reads a rewritten key without a RocksDB lookup (see `entry_cache`).
const ENTRY_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The state machine: key entries, expiry index and metadata in RocksDB. The fields
/// here mirror what is persisted, and change only after the batch is written.
pub struct StateMachine {
    db: Arc<DB>,
    snapshots: SnapshotFiles,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Clock, data bytes and tombstones, shared with readers.
    shared: Arc<Shared>,
    cache: EntryCache,
    build_failures: BuildFailures,
}

/// The persisted state as apply reads it: cached entries first, then RocksDB; tokens
/// from memory, where every one is.
struct CachedView<'a> {
    db: DbView<'a>,
    cache: &'a EntryCache,
    tokens: &'a Tokens,
}

impl StateView for CachedView<'_> {
    type Error = StoreError;

    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        match self.cache.get(key) {
            Some(entry) => Ok(entry.clone()),
            None => self.db.get(key),
        }
    }

    fn get_record(&self, id: &str) -> Result<Option<Record>, StoreError> {
        self.db.get_record(id)
    }

    fn get_session(&self, id: u128) -> Result<Option<Session>, StoreError> {
        self.db.get_session(id)
    }

    fn get_token(&self, id: u64) -> Result<Option<Token>, StoreError> {
        Ok(self.tokens.get(&id).map(|t| Token::clone(t)))
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        skip: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<(String, EntryMeta)>, StoreError> {
        self.db.scan(prefix, after, limit, skip)
    }

    fn due(
        &self,
        up_to_ms: u64,
        limit: usize,
        skip: &mut dyn FnMut(&Due) -> bool,
    ) -> Result<Vec<Due>, StoreError> {
        self.db.due(up_to_ms, limit, skip)
    }
}

fn read_meta<T: DeserializeOwned>(db: &DB, key: &[u8]) -> Result<Option<T>, StoreError> {
    read_value(db, CF_SM_META, key)
}

/// The state machine's small state besides entries and records, as one apply or
/// install leaves it.
struct Books<'a> {
    clock_ms: u64,
    data_bytes: u64,
    record_count: u64,
    tombstones: &'a [Tombstone],
}

/// Adds the metadata writes that end every apply or install batch.
fn put_meta(
    db: &DB,
    batch: &mut WriteBatch,
    last_applied: &Option<LogId>,
    membership: &StoredMembership,
    books: &Books<'_>,
) -> Result<(), StoreError> {
    let meta = cf(db, CF_SM_META);
    batch.put_cf(meta, META_LAST_APPLIED, postcard::to_stdvec(last_applied)?);
    batch.put_cf(meta, META_MEMBERSHIP, postcard::to_stdvec(membership)?);
    batch.put_cf(meta, META_CLOCK, postcard::to_stdvec(&books.clock_ms)?);
    batch.put_cf(
        meta,
        META_DATA_BYTES,
        postcard::to_stdvec(&books.data_bytes)?,
    );
    batch.put_cf(
        meta,
        META_TOMBSTONES,
        postcard::to_stdvec(books.tombstones)?,
    );
    batch.put_cf(
        meta,
        META_RECORD_COUNT,
        postcard::to_stdvec(&books.record_count)?,
    );
    Ok(())
}

/// Idempotency records, sessions and session answers, counted by reading them all.
fn count_records(db: &DB) -> Result<u64, StoreError> {
    let mut count = db
        .iterator_cf(cf(db, CF_RECORDS), IteratorMode::Start)
        .count() as u64;
    for item in db.iterator_cf(cf(db, CF_SESSIONS), IteratorMode::Start) {
        let (_, value) = item?;
        count += postcard::from_bytes::<Session>(&value)?.records();
    }
    Ok(count)
}

/// Key and value bytes of every stored entry, counted by reading them all: for a
/// database written before the count was kept.
fn count_data_bytes(db: &DB) -> Result<u64, StoreError> {
    let mut bytes = 0;
    for item in db.iterator_cf(cf(db, CF_DATA), IteratorMode::Start) {
        let (key, value) = item?;
        let entry: Entry = postcard::from_bytes(&value)?;
        bytes += (key.len() + entry.value.len()) as u64;
    }
    Ok(bytes)
}

/// Adds an overlay's pending changes to one column family, each key encoded by `key`:
/// `Some` puts, `None` deletes.
fn put_pending<K, T: serde::Serialize, B: AsRef<[u8]>>(
    db: &DB,
    batch: &mut WriteBatch,
    name: &str,
    pending: &std::collections::BTreeMap<K, Option<T>>,
    key: impl Fn(&K) -> B,
) -> Result<(), StoreError> {
    for (k, value) in pending {
        match value {
            Some(value) => batch.put_cf(cf(db, name), key(k), postcard::to_stdvec(value)?),
            None => batch.delete_cf(cf(db, name), key(k)),
        }
    }
    Ok(())
}

impl StateMachine {
    /// Loads the state machine, first installing the stored snapshot if it is ahead of
    /// the applied state (a crash cut short the install of a received snapshot).
    pub(crate) fn load(db: Arc<DB>, snapshots: SnapshotFiles) -> Result<Self, StoreError> {
        let applied = read_meta::<Option<LogId>>(&db, META_LAST_APPLIED)?.flatten();
        // An install a crash cut short left its marker; the stored snapshot is at least
        // the one it was installing (a later one may have been received meanwhile).
        let marker = read_meta::<Option<LogId>>(&db, META_INSTALLING)?;
        let current = snapshots.open_current()?;
        if let Some(marker) = marker {
            if current.as_ref().is_none_or(|c| c.meta.last_log_id < marker) {
                return Err(StoreError::Corrupt(format!(
                    "an install of the snapshot at {} was cut short and the stored snapshot \
                     is not that one or a later one",
                    marker.map_or("nothing".into(), |m| m.to_string())
                )));
            }
        }
        if let Some(current) = current {
            if current.meta.last_log_id > applied || marker.is_some() {
                tracing::info!(
                    snapshot = ?current.meta.last_log_id,
                    applied = ?applied,
                    "installing the stored snapshot, which is ahead of the state"
                );
                current.verify()?;
                install_from(&db, &current.meta, || current.data(), &Shared::default())?;
            }
        }
        let last_applied = read_meta::<Option<LogId>>(&db, META_LAST_APPLIED)?.flatten();
        let membership = read_meta(&db, META_MEMBERSHIP)?.unwrap_or_default();
        let shared = Shared::default();
        shared
            .clock_ms
            .store(read_meta(&db, META_CLOCK)?.unwrap_or(0), Ordering::Release);
        let (data_bytes, record_count) = match (
            read_meta(&db, META_DATA_BYTES)?,
            read_meta(&db, META_RECORD_COUNT)?,
        ) {
            (Some(bytes), Some(records)) => (bytes, records),
            _ => {
                // Written before the counts were kept: count once and keep them, so this
                // replica's metadata (and digest) matches one that installed a snapshot.
                let counts = (count_data_bytes(&db)?, count_records(&db)?);
                let mut batch = WriteBatch::default();
                let meta = cf(&db, CF_SM_META);
                batch.put_cf(meta, META_DATA_BYTES, postcard::to_stdvec(&counts.0)?);
                batch.put_cf(meta, META_RECORD_COUNT, postcard::to_stdvec(&counts.1)?);
                if read_meta::<Vec<Tombstone>>(&db, META_TOMBSTONES)?.is_none() {
                    let none: Vec<Tombstone> = Vec::new();
                    batch.put_cf(meta, META_TOMBSTONES, postcard::to_stdvec(&none)?);
                }
                db.write(batch)?;
                counts
            }
        };
        shared.data_bytes.store(data_bytes, Ordering::Release);
        shared.record_count.store(record_count, Ordering::Release);
        shared.set_tombstones(read_meta(&db, META_TOMBSTONES)?.unwrap_or_default());
        shared.set_tokens(load_tokens(&db)?);
        // Kept since this version; before it, the current membership is what is known.
        let max_node_id = read_meta::<u64>(&db, META_MAX_NODE_ID)?
            .unwrap_or(0)
            .max(highest_node(&membership));
        shared.max_node_id.store(max_node_id, Ordering::Release);
        Ok(Self {
            db,
            snapshots,
            last_applied,
            membership,
            shared: Arc::new(shared),
            cache: EntryCache::new(ENTRY_CACHE_BYTES),
            build_failures: BuildFailures::default(),
        })
    }

    /// The log id of the last applied entry.
    pub(crate) fn last_applied(&self) -> Option<LogId> {
        self.last_applied
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn clock(&self) -> u64 {
        self.shared.clock_ms.load(Ordering::Acquire)
    }

    /// Replaces the state with a snapshot's. The snapshot file is durable before the
    /// state changes, so a crash at any point leaves a snapshot `open` can install.
    async fn install(&mut self, meta: &SnapshotMeta, data: SnapshotData) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        // The cached entries describe the state being replaced.
        self.cache.clear();
        let (file, start, len) = data.into_parts().await?;
        let (files, db, m) = (self.snapshots.clone(), self.db.clone(), meta.clone());
        let shared = self.shared.clone();
        blocking(move || {
            files.keep(&m, &file, start, len)?;
            let data =
                || std::io::BufReader::with_capacity(1 << 20, Window::new(&file, start, len));
            install_from(&db, &m, data, &shared)
        })
        .await?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        metrics::counter!("quorumkv_snapshot_installs_total").increment(1);
        metrics::histogram!("quorumkv_snapshot_install_duration_seconds").record(started.elapsed());
        Ok(())
    }
}

/// Batches of an install's puts: written (WAL, not synced) when they reach this size.
const INSTALL_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Writes `batch` once it is large enough, leaving an empty one.
fn write_if_full(db: &DB, batch: &mut WriteBatch) -> Result<(), StoreError> {
    if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
        db.write(std::mem::take(batch))?;
    }
    Ok(())
}

/// Replaces the state with a snapshot's, decoding `data` as it streams, in batches of
/// bounded size: a synced one that clears the state and marks the install, unsynced
/// ones with the data, and a synced last one with the metadata that ends the mark.
/// A crash in between leaves the mark, and `load` installs the stored snapshot again.
/// Readers get [`StoreError::Installing`] meanwhile rather than half a state.
pub(crate) fn install_from<R: Read>(
    db: &DB,
    meta: &SnapshotMeta,
    data: impl Fn() -> R,
    shared: &Shared,
) -> Result<(), StoreError> {
    // Decoded once before anything changes: data that does not decode (a newer layout,
    // damage) leaves the state as it was, and nothing for `open` to redo.
    validate(data())?;
    shared.begin_install();
    write_install(db, meta, data(), shared)?;
    shared.end_install();
    crash::point(crash::SNAPSHOT_INSTALLED);
    Ok(())
}

fn write_install(
    db: &DB,
    meta: &SnapshotMeta,
    data: impl Read,
    shared: &Shared,
) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cf(db, CF_DATA), &[][..], DATA_END);
    batch.delete_range_cf(cf(db, CF_EXPIRY), &[][..], EXPIRY_END);
    batch.delete_range_cf(cf(db, CF_RECORDS), &[][..], DATA_END);
    batch.delete_range_cf(cf(db, CF_SESSIONS), &[][..], &[0xFF; 17][..]);
    batch.delete_range_cf(cf(db, CF_TOKENS), &[][..], &[0xFF; 9][..]);
    batch.put_cf(
        cf(db, CF_SM_META),
        META_INSTALLING,
        postcard::to_stdvec(&meta.last_log_id)?,
    );
    db.write_opt(std::mem::take(&mut batch), &synced())?;

    let (mut data_bytes, mut record_count) = (0, 0);
    let mut in_memory = Tokens::new();
    let tail = walk(data, |part| {
        match part {
            Part::Entry(key, entry) => {
                data_bytes += entry.meta(&key).bytes;
                if let Some(at) = entry.expires_at_ms {
                    let due = (at, Slot::Key, key.clone());
                    batch.put_cf(cf(db, CF_EXPIRY), expiry_key(&due), []);
                }
                let value = postcard::to_stdvec(&entry)?;
                batch.put_cf(cf(db, CF_DATA), key.as_bytes(), value);
            }
            Part::Record(id, record) => {
                record_count += 1;
                let due = (record.expires_at_ms, Slot::Record, id);
                let value = postcard::to_stdvec(&record)?;
                batch.put_cf(cf(db, CF_RECORDS), due.2.as_bytes(), value);
                batch.put_cf(cf(db, CF_EXPIRY), expiry_key(&due), []);
            }
            Part::Session(id, session) => {
                record_count += session.records();
                let key = kv_core::session::session_key(id);
                let due = (session.expires_at_ms, Slot::Session, key);
                let value = postcard::to_stdvec(&session)?;
                batch.put_cf(cf(db, CF_SESSIONS), id.to_be_bytes(), value);
                batch.put_cf(cf(db, CF_EXPIRY), expiry_key(&due), []);
            }
            Part::Token(id, token) => {
                let value = postcard::to_stdvec(&token)?;
                batch.put_cf(cf(db, CF_TOKENS), id.to_be_bytes(), value);
                in_memory.insert(id, Arc::new(token));
            }
        }
        write_if_full(db, &mut batch)
    })?;
    let books = Books {
        clock_ms: tail.clock_ms,
        data_bytes,
        record_count,
        tombstones: &tail.tombstones,
    };
    put_meta(
        db,
        &mut batch,
        &meta.last_log_id,
        &meta.last_membership,
        &books,
    )?;
    match tail.max_node_id {
        Some(id) => batch.put_cf(
            cf(db, CF_SM_META),
            META_MAX_NODE_ID,
            postcard::to_stdvec(&id)?,
        ),
        None => batch.delete_cf(cf(db, CF_SM_META), META_MAX_NODE_ID),
    }
    batch.delete_cf(cf(db, CF_SM_META), META_INSTALLING);
    crash::point(crash::SNAPSHOT_INSTALLING);
    // Before the data is readable again, as in apply: a revoked token never reads what
    // followed its revoke.
    shared.set_tokens(in_memory);
    // Synced: the log the snapshot replaces may be purged right after.
    db.write_opt(batch, &synced())?;
    shared.clock_ms.store(tail.clock_ms, Ordering::Release);
    shared.data_bytes.store(data_bytes, Ordering::Release);
    shared.record_count.store(record_count, Ordering::Release);
    shared.set_tombstones(tail.tombstones);
    let highest = highest_node(&meta.last_membership);
    shared.max_node_id.store(
        tail.max_node_id.unwrap_or(0).max(highest),
        Ordering::Release,
    );
    Ok(())
}

/// Checks that a snapshot's data decodes whole, without writing anything.
pub(crate) fn validate(data: impl Read) -> Result<(), StoreError> {
    walk(data, |_| Ok(())).map(|_| ())
}

/// One stored item of a snapshot's data.
enum Part {
    Entry(String, Entry),
    Record(String, Record),
    Session(u128, Session),
    Token(u64, Token),
}

/// What a snapshot's data holds besides its items.
struct Tail {
    clock_ms: u64,
    tombstones: Vec<Tombstone>,
    max_node_id: Option<u64>,
}

/// Decodes a snapshot's data as it streams, handing each item to `each`: the clock,
/// entries and records, then tombstones, sessions, tokens and the highest node id, each
/// of the last four absent from snapshots written before it existed.
fn walk(
    data: impl Read,
    mut each: impl FnMut(Part) -> Result<(), StoreError>,
) -> Result<Tail, StoreError> {
    let mut input = Decoder::new(data);
    let clock_ms: u64 = input.next()?;
    for _ in 0..input.next::<usize>()? {
        let (key, entry) = input.next()?;
        each(Part::Entry(key, entry))?;
    }
    for _ in 0..input.next::<usize>()? {
        let (id, record) = input.next()?;
        each(Part::Record(id, record))?;
    }
    let tombstones = if input.at_end()? {
        Vec::new()
    } else {
        input.next()?
    };
    let sessions = if input.at_end()? {
        0
    } else {
        input.next::<usize>()?
    };
    for _ in 0..sessions {
        let (id, session) = input.next()?;
        each(Part::Session(id, session))?;
    }
    let tokens = if input.at_end()? {
        0
    } else {
        input.next::<usize>()?
    };
    for _ in 0..tokens {
        let (id, token) = input.next()?;
        each(Part::Token(id, token))?;
    }
    let max_node_id = if input.at_end()? { None } else { input.next()? };
    if !input.at_end()? {
        return Err(StoreError::Corrupt(format!(
            "{} bytes follow the snapshot's state",
            input.rest_len()?
        )));
    }
    Ok(Tail {
        clock_ms,
        tombstones,
        max_node_id,
    })
}

/// The highest node id a membership names, voters and learners alike.
fn highest_node(membership: &StoredMembership) -> u64 {
    membership
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .max()
        .unwrap_or(0)
}

/// Writes the state as of the RocksDB snapshot `snap` into a new snapshot file at
/// `path`, metadata included, and returns that metadata.
///
/// The data is the postcard encoding of the clock, the entries, the records, the
/// tombstones, the sessions, the tokens and the highest node id (an option), written
/// straight from RocksDB: a stored value is already the postcard
/// encoding of its `Entry`, `Record`, `Session` or `Token`, so each pair is the key
/// with its length and the stored bytes. Sequences are counted in a first pass, since
/// their encoding starts with their length.
pub(crate) fn write_snapshot(
    db: &DB,
    snap: &rocksdb::Snapshot<'_>,
    path: &Path,
) -> Result<SnapshotMeta, StoreError> {
    let decode = |key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(snap.get_cf(cf(db, CF_SM_META), key)?)
    };
    let last_applied: Option<LogId> = match decode(META_LAST_APPLIED)? {
        Some(raw) => postcard::from_bytes(&raw)?,
        None => None,
    };
    let membership: StoredMembership = match decode(META_MEMBERSHIP)? {
        Some(raw) => postcard::from_bytes(&raw)?,
        None => StoredMembership::default(),
    };
    let clock_ms: u64 = match decode(META_CLOCK)? {
        Some(raw) => postcard::from_bytes(&raw)?,
        None => 0,
    };
    let tombstones: Vec<Tombstone> = match decode(META_TOMBSTONES)? {
        Some(raw) => postcard::from_bytes(&raw)?,
        None => Vec::new(),
    };
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let snapshot_id = match last_applied {
        Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, micros),
        None => format!("0-0-{micros}"),
    };
    let meta = SnapshotMeta {
        last_log_id: last_applied,
        last_membership: membership,
        snapshot_id,
    };
    let scan = |name: &str| {
        let mut opts = rocksdb::ReadOptions::default();
        // A scan of everything once: keep the block cache for the reads that serve.
        opts.fill_cache(false);
        snap.iterator_cf_opt(cf(db, name), opts, IteratorMode::Start)
    };
    let mut out = FileWriter::create(path, &meta)?;
    postcard::to_io(&clock_ms, &mut out)?;
    for name in [CF_DATA, CF_RECORDS] {
        postcard::to_io(&scan(name).count(), &mut out)?;
        for item in scan(name) {
            let (key, value) = item?;
            let key = std::str::from_utf8(&key)
                .map_err(|_| StoreError::Corrupt(format!("a key in {name} is not UTF-8")))?;
            postcard::to_io(key, &mut out)?;
            out.write_all(&value)?;
        }
    }
    postcard::to_io(&tombstones, &mut out)?;
    postcard::to_io(&scan(CF_SESSIONS).count(), &mut out)?;
    for item in scan(CF_SESSIONS) {
        let (key, value) = item?;
        let id = <[u8; 16]>::try_from(&*key)
            .map_err(|_| StoreError::Corrupt("a session id is not 16 bytes".into()))?;
        postcard::to_io(&u128::from_be_bytes(id), &mut out)?;
        out.write_all(&value)?;
    }
    postcard::to_io(&scan(CF_TOKENS).count(), &mut out)?;
    for item in scan(CF_TOKENS) {
        let (key, value) = item?;
        let id = <[u8; 8]>::try_from(&*key)
            .map_err(|_| StoreError::Corrupt("a token id is not 8 bytes".into()))?;
        postcard::to_io(&u64::from_be_bytes(id), &mut out)?;
        out.write_all(&value)?;
    }
    let max_node_id: Option<u64> = match decode(META_MAX_NODE_ID)? {
        Some(raw) => Some(postcard::from_bytes(&raw)?),
        None => None,
    };
    postcard::to_io(&max_node_id, &mut out)?;
    out.finish()?;
    Ok(meta)
}

/// A snapshot being written into a file on the blocking pool, from a RocksDB snapshot
/// taken while apply waited.
pub struct SnapshotBuilder {
    /// The build under way; `None` when a failed one is still being waited out.
    build: Option<tokio::task::JoinHandle<(PathBuf, Result<SnapshotMeta, StoreError>)>>,
    snapshots: SnapshotFiles,
    failures: BuildFailures,
    /// When the build began.
    started: std::time::Instant,
}

impl SnapshotBuilder {
    async fn finish(&mut self) -> Result<(SnapshotMeta, SnapshotData, u64), (PathBuf, StoreError)> {
        let build = self.build.take().ok_or_else(|| {
            let e = StoreError::Invariant("snapshot builder used twice");
            (PathBuf::new(), e)
        })?;
        let (path, written) = build
            .await
            .map_err(|e| (PathBuf::new(), StoreError::Task(e.to_string())))?;
        let files = self.snapshots.clone();
        let fail = |e: StoreError| (path.clone(), e);
        let meta = written.map_err(fail)?;
        let p = path.clone();
        let m = meta.clone();
        let (data, size) = blocking(move || {
            // Opened before it is renamed (or removed, when a newer one is there).
            let opened = Opened::read(std::fs::File::open(&p)?)?;
            let size = opened.len;
            files.promote(&p, &m)?;
            Ok((SnapshotData::of(opened)?, size))
        })
        .await
        .map_err(fail)?;
        Ok((meta, data, size))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        if self.build.is_none() {
            return Ok(failed_build());
        }
        match self.finish().await {
            Ok((meta, data, size)) => {
                self.failures.succeeded();
                metrics::counter!("quorumkv_snapshot_builds_total").increment(1);
                metrics::histogram!("quorumkv_snapshot_build_duration_seconds")
                    .record(self.started.elapsed());
                metrics::gauge!("quorumkv_snapshot_size_bytes").set(size as f64);
                Ok(Snapshot {
                    meta,
                    snapshot: Box::new(data),
                })
            }
            Err((path, e)) => {
                // An error here would stop raft (openraft treats it as fatal). The log
                // is kept instead; the next build waits out a growing pause, so a full
                // disk is not scanned and written again at every commit.
                let pause = self.failures.failed();
                tracing::error!(
                    error = %e,
                    retry_in_s = pause.as_secs(),
                    "building a snapshot failed; the log is kept"
                );
                metrics::counter!("quorumkv_snapshot_build_failures_total").increment(1);
                if !path.as_os_str().is_empty() {
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(error = %e, "removing a failed snapshot build");
                    }
                }
                Ok(failed_build())
            }
        }
    }
}

/// What a failed or skipped build hands openraft: no log id, which is never newer than
/// the snapshot it knows, so it keeps that one and purges nothing.
fn failed_build() -> Snapshot {
    Snapshot {
        meta: SnapshotMeta::default(),
        snapshot: Box::new(SnapshotData::empty()),
    }
}

/// Failed snapshot builds: when the next may start.
#[derive(Clone, Default)]
pub(crate) struct BuildFailures(Arc<std::sync::Mutex<Option<(std::time::Instant, Duration)>>>);

/// The first pause after a failed build, doubled after each failure up to the last.
const BUILD_RETRY_FIRST: Duration = Duration::from_secs(30);
const BUILD_RETRY_MAX: Duration = Duration::from_secs(600);

impl BuildFailures {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(std::time::Instant, Duration)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a failure; the pause before the next build.
    fn failed(&self) -> Duration {
        let mut last = self.lock();
        let pause = last.map_or(BUILD_RETRY_FIRST, |(_, p)| (p * 2).min(BUILD_RETRY_MAX));
        *last = Some((std::time::Instant::now(), pause));
        pause
    }

    fn succeeded(&self) {
        *self.lock() = None;
    }

    /// Whether a build now would come too soon after a failure.
    fn pausing(&self) -> bool {
        self.lock().is_some_and(|(at, pause)| at.elapsed() < pause)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let mut overlay = Overlay::new(self.clock());
        overlay.data_bytes = self.shared.data_bytes.load(Ordering::Acquire);
        overlay.record_count = self.shared.record_count.load(Ordering::Acquire);
        overlay.tombstones = self.shared.tombstones().to_vec();
        let tokens = self.shared.tokens();
        overlay.token_count = tokens.len() as u64;
        let mut last_applied = self.last_applied;
        let mut membership = self.membership.clone();
        let mut max_node_id = self.shared.max_node_id.load(Ordering::Acquire);
        let mut max_node_changed = false;
        let mut responses = vec![];
        let view = CachedView {
            db: DbView(&self.db),
            cache: &self.cache,
            tokens: &tokens,
        };
        for entry in entries {
            let log_id = entry.log_id;
            responses.push(match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(request) => Response::Applied(
                    apply_request(&view, &mut overlay, &request, log_id.index)
                        .or_raft(ErrorSubject::Apply(log_id), ErrorVerb::Read)?,
                ),
                EntryPayload::Membership(m) => {
                    if m.get_joint_config().len() > 1 {
                        crate::crash::point(crate::crash::MEMBERSHIP_JOINT_APPLIED);
                    }
                    membership = StoredMembership::new(Some(log_id), m);
                    let highest = highest_node(&membership);
                    if highest > max_node_id {
                        max_node_id = highest;
                        max_node_changed = true;
                    }
                    Response::None
                }
            });
            last_applied = Some(log_id);
        }

        let db = &self.db;
        let mut batch = WriteBatch::default();
        let text = |k: &String| k.clone().into_bytes();
        put_pending(db, &mut batch, CF_DATA, &overlay.data, text)
            .and_then(|()| put_pending(db, &mut batch, CF_RECORDS, &overlay.records, text))
            .and_then(|()| {
                let id = |id: &u128| id.to_be_bytes();
                put_pending(db, &mut batch, CF_SESSIONS, &overlay.sessions, id)
            })
            .and_then(|()| {
                let id = |id: &u64| id.to_be_bytes();
                put_pending(db, &mut batch, CF_TOKENS, &overlay.tokens, id)
            })
            .or_raft(ErrorSubject::StateMachine, ErrorVerb::Write)?;
        for (due, added) in overlay.index {
            if added {
                batch.put_cf(cf(db, CF_EXPIRY), expiry_key(&due), []);
            } else {
                batch.delete_cf(cf(db, CF_EXPIRY), expiry_key(&due));
            }
        }
        let books = Books {
            clock_ms: overlay.clock_ms,
            data_bytes: overlay.data_bytes,
            record_count: overlay.record_count,
            tombstones: &overlay.tombstones,
        };
        put_meta(db, &mut batch, &last_applied, &membership, &books)
            .or_raft(ErrorSubject::StateMachine, ErrorVerb::Write)?;
        if max_node_changed {
            batch.put_cf(
                cf(db, CF_SM_META),
                META_MAX_NODE_ID,
                postcard::to_stdvec(&max_node_id)
                    .map_err(StoreError::from)
                    .or_raft(ErrorSubject::StateMachine, ErrorVerb::Write)?,
            );
        }
        // Tokens change before the data: a reader never sees data written after a revoke
        // with the revoked token still valid. The entries are committed, and a failed
        // write stops the node.
        if !overlay.tokens.is_empty() {
            let mut changed = Tokens::clone(&tokens);
            for (id, token) in &overlay.tokens {
                match token {
                    Some(token) => changed.insert(*id, Arc::new(token.clone())),
                    None => changed.remove(id),
                };
            }
            self.shared.set_tokens(changed);
        }
        // Not synced: every entry applied here is already synced in the raft log files.
        // A crash can only lose a suffix of apply batches (last_applied goes back with
        // them, and openraft applies those entries again from the log); and the log is
        // never purged past them, because a purge first writes last_purged to RocksDB
        // synced, and RocksDB's one WAL makes every earlier apply batch durable with it.
        // Written on the calling task: an unsynced write only fills the memtable and
        // the WAL's page cache, cheaper than a handoff to the blocking pool.
        let current = self.shared.tombstones();
        let adds_tombstones = overlay.tombstones.iter().any(|t| {
            !current
                .iter()
                .any(|c| c.prefix == t.prefix && c.revision == t.revision)
        });
        if adds_tombstones {
            self.shared.begin_change();
        }
        let written = self.db.write(batch);
        if written.is_ok() {
            self.shared.set_tombstones(overlay.tombstones);
        }
        if adds_tombstones {
            self.shared.end_change();
        }

        written
            .map_err(StoreError::from)
            .or_raft(ErrorSubject::StateMachine, ErrorVerb::Write)?;
        // Only after the write: the cache holds nothing RocksDB does not.
        for (key, entry) in overlay.data {
            self.cache.put(key, entry);
        }
        self.last_applied = last_applied;
        self.membership = membership;
        self.shared
            .max_node_id
            .store(max_node_id, Ordering::Release);
        self.shared
            .clock_ms
            .store(overlay.clock_ms, Ordering::Release);
        self.shared
            .data_bytes
            .store(overlay.data_bytes, Ordering::Release);
        self.shared
            .record_count
            .store(overlay.record_count, Ordering::Release);
        metrics::histogram!("quorumkv_apply_duration_seconds").record(started.elapsed());
        metrics::counter!("quorumkv_applied_entries_total").increment(responses.len() as u64);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let started = std::time::Instant::now();
        if self.build_failures.pausing() {
            return SnapshotBuilder {
                build: None,
                snapshots: self.snapshots.clone(),
                failures: self.build_failures.clone(),
                started,
            };
        }
        let (taken, was_taken) = tokio::sync::oneshot::channel();
        let (db, files) = (self.db.clone(), self.snapshots.clone());
        let build = tokio::task::spawn_blocking(move || {
            let snap = db.snapshot();
            let _ = taken.send(());
            let path = files.unique_tmp("build");
            let written = write_snapshot(&db, &snap, &path);
            (path, written)
        });
        // openraft serializes this call with apply: apply waits for the RocksDB snapshot
        // only, not for the scan.
        let _ = was_taken.await;
        SnapshotBuilder {
            build: Some(build),
            snapshots: self.snapshots.clone(),
            failures: self.build_failures.clone(),
            started,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let files = self.snapshots.clone();
        let file = blocking(move || {
            Ok(std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(files.unique_tmp("openraft-receive"))?)
        })
        .await
        .or_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write)?;
        Ok(Box::new(SnapshotData::writable(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        self.install(meta, *snapshot).await.or_raft(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
        )
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let files = self.snapshots.clone();
        let current = blocking(move || files.open_checked())
            .await
            .or_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read)?;
        let Some(opened) = current else {
            return Ok(None);
        };
        let meta = opened.meta.clone();
        let data =
            SnapshotData::of(opened).or_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}
