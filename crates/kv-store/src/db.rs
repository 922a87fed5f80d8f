//! Opening the database, its column families and key layouts, and the read-only view
//! the HTTP layer serves reads from.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use kv_core::{
    tombstoned, Due, Entry, EntryMeta, Fingerprinter, Record, Session, Slot, StateView, Token,
    Tombstone,
};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, DB};

use crate::log_files::LogFiles;
use crate::snapshot::{SnapshotFiles, SnapshotStore};
use crate::state_machine::{install_from, write_snapshot};
use crate::typ::{LogId, NodeId, NodeInfo, SnapshotMeta, StoredMembership, Vote};
use crate::{LogStore, StateMachine, StoreError};

/// Raft log entries, keyed by big-endian index, in databases written before the log
/// moved to its own files; opened only to refuse such a database.
pub(crate) const CF_LOG: &str = "raft_log";
/// Vote, committed log id, last purged log id.
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// Key → postcard-encoded [`Entry`].
pub(crate) const CF_DATA: &str = "sm_data";
/// Last applied log id, membership, clock, data bytes, tombstones.
pub(crate) const CF_SM_META: &str = "sm_meta";
/// Big-endian `expires_at_ms`, a slot byte (key or record), then the key or record id;
/// empty values.
pub(crate) const CF_EXPIRY: &str = "sm_expiry";
/// Idempotency key → postcard-encoded [`Record`].
pub(crate) const CF_RECORDS: &str = "sm_records";
/// Big-endian 16-byte session id → postcard-encoded [`Session`].
pub(crate) const CF_SESSIONS: &str = "sm_sessions";
/// Big-endian 8-byte token id → postcard-encoded [`Token`].
pub(crate) const CF_TOKENS: &str = "sm_tokens";

pub(crate) const META_VOTE: &[u8] = b"vote";
pub(crate) const META_COMMITTED: &[u8] = b"committed";
pub(crate) const META_LAST_PURGED: &[u8] = b"last_purged";
pub(crate) const META_LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const META_MEMBERSHIP: &[u8] = b"membership";
pub(crate) const META_CLOCK: &[u8] = b"clock";
pub(crate) const META_DATA_BYTES: &[u8] = b"data_bytes";
pub(crate) const META_TOMBSTONES: &[u8] = b"tombstones";
pub(crate) const META_RECORD_COUNT: &[u8] = b"record_count";
/// The highest node id any applied membership named: ids are never handed out again.
pub(crate) const META_MAX_NODE_ID: &[u8] = b"max_node_id";
/// Present while a snapshot install is under way: the log id of the snapshot.
pub(crate) const META_INSTALLING: &[u8] = b"installing";

/// An exclusive upper bound above every data key: 0xFF never occurs in UTF-8.
pub(crate) const DATA_END: &[u8] = &[0xFF];
/// An exclusive upper bound above every expiry-index key (expiries are capped far below
/// `u64::MAX`, and the key part never starts with 0xFF).
pub(crate) const EXPIRY_END: &[u8] = &[0xFF; 9];

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    db.cf_handle(name)
        .expect("every column family is created when the database is opened")
}

pub(crate) fn expiry_key((at, slot, key): &Due) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.extend_from_slice(&at.to_be_bytes());
    k.push(slot.byte());
    k.extend_from_slice(key.as_bytes());
    k
}

fn parse_expiry_key(raw: &[u8]) -> Result<Due, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("expiry index key {what}"));
    let (at, rest) = raw
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("too short"))?;
    let (slot, key) = rest.split_first().ok_or_else(|| corrupt("has no slot"))?;
    let slot = Slot::from_byte(*slot).ok_or_else(|| corrupt("has an unknown slot"))?;
    let key = std::str::from_utf8(key).map_err(|_| corrupt("is not UTF-8"))?;
    Ok((u64::from_be_bytes(*at), slot, key.to_owned()))
}

/// The postcard-decoded value of `key` in column family `cf_name`, if present.
pub(crate) fn read_value<T: serde::de::DeserializeOwned>(
    db: &DB,
    cf_name: &str,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match db.get_pinned_cf(cf(db, cf_name), key)? {
        Some(raw) => Ok(Some(postcard::from_bytes(&raw)?)),
        None => Ok(None),
    }
}

/// A stored key as a string; keys are written from `&str`, so anything else is corruption.
fn utf8_key(raw: Box<[u8]>, cf_name: &str) -> Result<String, StoreError> {
    String::from_utf8(raw.into_vec())
        .map_err(|_| StoreError::Corrupt(format!("a key in {cf_name} is not UTF-8")))
}

/// Everything a node needs from its database.
pub struct Stores {
    /// The raft log store, for `Raft::new`.
    pub log: LogStore,
    /// The state machine, for `Raft::new`.
    pub state_machine: StateMachine,
    /// Direct reads for the HTTP layer.
    pub reader: StateReader,
    /// Where the raft listener makes received snapshots durable.
    pub snapshots: SnapshotStore,
}

/// Memtable size of the state machine's entries, expiry index and idempotency records.
/// Small on purpose: apply writes every key it changes into the memtable, a skiplist,
/// and each insert searches it. A key rewritten often leaves a version per write
/// there, so RocksDB's default 64 MiB grows to hundreds of thousands of nodes whose
/// searches miss the CPU caches (see docs/performance.md).
const DATA_MEMTABLE_BYTES: usize = 4 * 1024 * 1024;
/// Memtable size of the metadata column families: a handful of keys, each rewritten
/// with every apply or commit.
const META_MEMTABLE_BYTES: usize = 1024 * 1024;

fn cf_options(name: &str) -> Options {
    let mut opts = Options::default();
    opts.set_write_buffer_size(match name {
        CF_DATA | CF_EXPIRY | CF_RECORDS | CF_SESSIONS => DATA_MEMTABLE_BYTES,
        _ => META_MEMTABLE_BYTES,
    });
    opts
}

/// Size of one raft log segment file.
pub const DEFAULT_LOG_SEGMENT_BYTES: u64 = 32 * 1024 * 1024;

/// Opens (creating if needed) the stores under `dir`: RocksDB in `dir/db`, the raft log
/// in `dir/log`, the current snapshot in `dir/snapshot`.
pub fn open(dir: &Path) -> Result<Stores, StoreError> {
    open_with(dir, DEFAULT_LOG_SEGMENT_BYTES)
}

/// [`open`] with raft log segments of `log_segment_bytes` (each is zero-filled ahead of
/// use, so small test clusters use small ones).
pub fn open_with(dir: &Path, log_segment_bytes: u64) -> Result<Stores, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [
        CF_LOG,
        CF_RAFT_META,
        CF_DATA,
        CF_SM_META,
        CF_EXPIRY,
        CF_RECORDS,
        CF_SESSIONS,
        CF_TOKENS,
    ]
    .map(|name| ColumnFamilyDescriptor::new(name, cf_options(name)));
    let db = Arc::new(DB::open_cf_descriptors(&opts, dir.join("db"), cfs)?);
    if db
        .iterator_cf(cf(&db, CF_LOG), IteratorMode::Start)
        .next()
        .is_some()
    {
        return Err(StoreError::Corrupt(
            "this data directory keeps its raft log in RocksDB, an older layout this \
             version does not read"
                .into(),
        ));
    }
    let last_purged: Option<LogId> = read_value(&db, CF_RAFT_META, META_LAST_PURGED)?;
    let files = LogFiles::open(&dir.join("log"), log_segment_bytes, last_purged)?;
    let snapshots = SnapshotFiles::open(dir.join("snapshot"))?;
    let state_machine = StateMachine::load(db.clone(), snapshots.clone())?;
    reconcile_log(&files, last_purged, state_machine.last_applied())?;
    let reader = StateReader {
        db: db.clone(),
        shared: state_machine.shared(),
        snapshots: snapshots.clone(),
    };
    Ok(Stores {
        log: LogStore::new(db, files),
        state_machine,
        reader,
        snapshots: SnapshotStore(snapshots),
    })
}

/// Checks that the log continues the applied state, after `StateMachine::load` may have
/// installed a snapshot whose install a crash cut short. A log that reaches the applied
/// index must hold exactly the applied entry there; one that holds another entry there,
/// or ends before it, holds only entries the state covers or uncommitted ones that
/// cannot follow it: all of them go, and openraft then purges up to the state, as it
/// does whenever the log ends before the state. (openraft's own check compares log ids,
/// term first, and would keep a log of a later term that ends before the state.)
fn reconcile_log(
    files: &LogFiles,
    last_purged: Option<LogId>,
    applied: Option<LogId>,
) -> Result<(), StoreError> {
    if let Some(purged) = last_purged {
        if applied.is_none_or(|a| purged.index > a.index) {
            let applied = applied.map_or("nothing".into(), |a| a.to_string());
            return Err(StoreError::Corrupt(format!(
                "the raft log is purged up to {purged} but the state machine has applied \
                 only {applied}, and no stored snapshot covers the entries in between"
            )));
        }
    }
    let (Some(applied), Some(first)) = (applied, files.first_index()) else {
        return Ok(());
    };
    if first > applied.index {
        return Ok(());
    }
    let at_applied = files.entries(applied.index, applied.index + 1)?;
    if at_applied.first().is_none_or(|e| e.log_id != applied) {
        tracing::warn!(
            %applied,
            "the log does not hold the installed snapshot's last entry: dropping the log"
        );
        files.truncate(first)?;
    }
    Ok(())
}

/// Roughly what an entry adds to a page besides its key and value: its metadata as JSON.
const ENTRY_OVERHEAD: usize = 128;

/// Which page of a listing [`StateReader::list`] reads.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    /// Every key listed starts with this.
    pub prefix: &'a str,
    /// The page starts after this key (the previous page's last).
    pub after: Option<&'a str>,
    /// The most entries on the page.
    pub limit: usize,
    /// The most bytes of keys and values on the page (at least one entry is returned).
    pub max_bytes: usize,
    /// Metadata only: values are left empty.
    pub keys_only: bool,
    /// If given, only keys under these prefixes (each under `prefix`, sorted, none
    /// under another) are listed: what a token may read.
    pub within: Option<&'a [String]>,
}

/// Every stored token, by id: few and read by every request, so kept in memory.
pub(crate) type Tokens = std::collections::HashMap<u64, Arc<Token>>;

/// Every token in [`CF_TOKENS`].
pub(crate) fn load_tokens(db: &DB) -> Result<Tokens, StoreError> {
    let mut tokens = Tokens::new();
    for item in db.iterator_cf(cf(db, CF_TOKENS), IteratorMode::Start) {
        let (k, v) = item?;
        let id = <[u8; 8]>::try_from(&*k)
            .map_err(|_| StoreError::Corrupt("a token id is not 8 bytes".into()))?;
        tokens.insert(u64::from_be_bytes(id), Arc::new(postcard::from_bytes(&v)?));
    }
    Ok(tokens)
}

/// What the state machine shares with readers besides RocksDB. Set after each apply or
/// install is written, before openraft reports it applied.
///
/// A reader reads the tombstones first and RocksDB second. A tombstone dropped by a
/// purge covers nothing RocksDB still holds, so the order alone keeps such reads whole;
/// a tombstone added would be missed by a reader that took the tombstones before the
/// write and reads the data after it, so writes that add tombstones (and installs) are
/// bracketed by `generation` (odd while one is under way), and such a reader retries.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The latest stamp applied.
    pub clock_ms: AtomicU64,
    /// Key and value bytes of every stored entry.
    pub data_bytes: AtomicU64,
    /// Idempotency records, sessions and session answers stored.
    pub record_count: AtomicU64,
    /// Prefix deletes not yet purged.
    pub tombstones: RwLock<Arc<Vec<Tombstone>>>,
    /// Every stored token, by id.
    pub tokens: RwLock<Arc<Tokens>>,
    /// Bumped before and after each write that adds tombstones, and around an install.
    generation: AtomicU64,
    /// Set while a snapshot install replaces the state, batch by batch.
    installing: AtomicBool,
    /// The highest node id any membership applied so far named.
    pub max_node_id: AtomicU64,
}

impl Shared {
    /// Marks the start of a write that adds tombstones.
    pub(crate) fn begin_change(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Marks its end, once the write is done and the tombstones are set.
    pub(crate) fn end_change(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Marks the start of a snapshot install: readers are refused until one completes
    /// (after a failed one, the state is not whole until `open` installs it again).
    pub(crate) fn begin_install(&self) {
        if !self.installing.swap(true, Ordering::AcqRel) {
            self.begin_change();
        }
    }

    /// Marks the end of a completed install.
    pub(crate) fn end_install(&self) {
        if self.installing.load(Ordering::Acquire) {
            self.end_change();
            self.installing.store(false, Ordering::Release);
        }
    }

    /// Runs `read` with the tombstones that describe the data it reads: again if a
    /// write adding tombstones ran meanwhile.
    fn consistent<T>(
        &self,
        mut read: impl FnMut(&[Tombstone]) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        loop {
            let before = self.generation.load(Ordering::Acquire);
            if before % 2 == 1 {
                if self.installing.load(Ordering::Acquire) {
                    return Err(StoreError::Installing);
                }
                std::thread::yield_now();
                continue;
            }
            let result = read(&self.tombstones())?;
            std::sync::atomic::fence(Ordering::Acquire);
            if self.generation.load(Ordering::Acquire) == before {
                return Ok(result);
            }
        }
    }

    pub(crate) fn tombstones(&self) -> Arc<Vec<Tombstone>> {
        self.tombstones
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn tokens(&self) -> Arc<Tokens> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_tokens(&self, tokens: Tokens) {
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tokens);
    }

    pub(crate) fn set_tombstones(&self, tombstones: Vec<Tombstone>) {
        let mut current = self.tombstones.write().unwrap_or_else(|e| e.into_inner());
        if **current != tombstones {
            *current = Arc::new(tombstones);
        }
    }
}

/// A stored entry read without copying its value: the fields of [`Entry`] in its order,
/// so it decodes the same postcard bytes.
#[derive(serde::Deserialize)]
struct StoredMeta<'a> {
    #[serde(borrow)]
    _value: &'a [u8],
    revision: u64,
    create_revision: u64,
    version: u64,
    expires_at_ms: Option<u64>,
}

impl StoredMeta<'_> {
    fn entry_meta(&self, key: &str) -> EntryMeta {
        EntryMeta {
            revision: self.revision,
            expires_at_ms: self.expires_at_ms,
            bytes: kv_core::data_bytes(key, self._value.len()),
        }
    }

    fn without_value(self) -> Entry {
        Entry {
            value: Vec::new(),
            revision: self.revision,
            create_revision: self.create_revision,
            version: self.version,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// Reads of the applied state, straight from RocksDB, for the HTTP layer. Snapshot
/// installs are one atomic batch, so a read never sees half of one.
#[derive(Clone)]
pub struct StateReader {
    db: Arc<DB>,
    shared: Arc<Shared>,
    snapshots: SnapshotFiles,
}

impl StateReader {
    /// The stored entry of `key`, live or expired, unless a prefix delete deleted it:
    /// the caller decides liveness at its own reading time.
    pub fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.shared.consistent(|tombstones| {
            Ok(DbView(&self.db)
                .get(key)?
                .filter(|e| !tombstoned(tombstones, key, e.revision)))
        })
    }

    /// Live entries at `now_ms` whose keys start with `prefix`, in key order, strictly
    /// after `after` if given; and whether more may follow. A page holds at most `limit`
    /// entries and ends before the keys and values it holds would pass `max_bytes` (but
    /// holds at least one). `keys_only` leaves values empty and does not copy them.
    /// Blocking: may read many entries.
    pub fn list(
        &self,
        page: &Page<'_>,
        now_ms: u64,
    ) -> Result<(Vec<(String, Entry)>, bool), StoreError> {
        self.shared
            .consistent(|tombstones| self.list_with(page, now_ms, tombstones))
    }

    fn list_with(
        &self,
        page: &Page<'_>,
        now_ms: u64,
        tombstones: &[Tombstone],
    ) -> Result<(Vec<(String, Entry)>, bool), StoreError> {
        let whole = [page.prefix.to_owned()];
        let after = page.after;
        let mut items = vec![];
        let mut bytes = 0;
        for prefix in page.within.unwrap_or(&whole) {
            let start = match after {
                Some(a) if a >= prefix.as_str() => a,
                _ => prefix,
            };
            let mode = IteratorMode::From(start.as_bytes(), Direction::Forward);
            for item in self.db.iterator_cf(cf(&self.db, CF_DATA), mode) {
                let (k, v) = item?;
                if !k.starts_with(prefix.as_bytes()) {
                    break;
                }
                if after.is_some_and(|a| k.as_ref() <= a.as_bytes()) {
                    continue;
                }
                let entry = if page.keys_only {
                    postcard::from_bytes::<StoredMeta<'_>>(&v)?.without_value()
                } else {
                    postcard::from_bytes::<Entry>(&v)?
                };
                if !entry.is_live_at(now_ms) {
                    continue;
                }
                // Keys a prefix delete deleted are skipped until purged: a list of a
                // just-deleted prefix reads past them.
                let deleted = |t: &Tombstone| {
                    entry.revision < t.revision && k.starts_with(t.prefix.as_bytes())
                };
                if tombstones.iter().any(deleted) {
                    continue;
                }
                let size = k.len() + entry.value.len() + ENTRY_OVERHEAD;
                if items.len() == page.limit || (!items.is_empty() && bytes + size > page.max_bytes)
                {
                    return Ok((items, true));
                }
                bytes += size;
                items.push((utf8_key(k, CF_DATA)?, entry));
            }
        }
        Ok((items, false))
    }

    /// Token `id`, if it exists on this node (as of its last apply).
    pub fn token(&self, id: u64) -> Option<Arc<Token>> {
        self.shared.tokens().get(&id).cloned()
    }

    /// Every token on this node, by id.
    pub fn tokens(&self) -> Vec<(u64, Arc<Token>)> {
        let mut all: Vec<_> = self
            .shared
            .tokens()
            .iter()
            .map(|(id, t)| (*id, t.clone()))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    /// Writes the whole state as of now into a snapshot file, a backup, and returns its
    /// meta with the file: opened, and already removed from the folder, so its space
    /// goes when the file is closed. Blocking: reads the whole state.
    pub fn backup(&self) -> Result<(SnapshotMeta, std::fs::File, u64), StoreError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let snap = self.db.snapshot();
        if snap
            .get_cf(cf(&self.db, CF_SM_META), META_INSTALLING)?
            .is_some()
        {
            return Err(StoreError::Installing);
        }
        let path = self
            .snapshots
            .tmp(&format!("backup-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let written = write_snapshot(&self.db, &snap, &path).and_then(|meta| {
            let file = std::fs::File::open(&path)?;
            let size = file.metadata()?.len();
            Ok((meta, file, size))
        });
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(error = %e, path = %path.display(), "removing a backup file");
        }
        written
    }

    /// The highest node id any membership this node applied (or installed) named, for
    /// ids that are never handed out twice.
    pub fn max_node_id(&self) -> u64 {
        self.shared.max_node_id.load(Ordering::Acquire)
    }

    /// The state machine's clock: the latest stamp applied so far.
    pub fn clock_ms(&self) -> u64 {
        self.shared.clock_ms.load(Ordering::Acquire)
    }

    /// Key and value bytes of every stored entry (expired and deleted ones until they
    /// are removed): what `limits.max_data_bytes` bounds.
    pub fn data_bytes(&self) -> u64 {
        self.shared.data_bytes.load(Ordering::Acquire)
    }

    /// Idempotency records, sessions and session answers stored: what
    /// `limits.max_records` bounds.
    pub fn record_count(&self) -> u64 {
        self.shared.record_count.load(Ordering::Acquire)
    }

    /// How many prefix deletes still have entries to purge.
    pub fn pending_purges(&self) -> usize {
        self.shared.tombstones().len()
    }

    /// RocksDB's estimate of the stored entries (live, expired or deleted by prefix and
    /// not yet purged): cheap, unlike counting them.
    pub fn estimated_keys(&self) -> Result<u64, StoreError> {
        let estimate = self
            .db
            .property_int_value_cf(cf(&self.db, CF_DATA), "rocksdb.estimate-num-keys")?;
        Ok(estimate.unwrap_or(0))
    }

    /// How many expiry-index entries are due at `now_ms`, counting at most `cap`.
    pub fn due_count(&self, now_ms: u64, cap: usize) -> Result<usize, StoreError> {
        Ok(DbView(&self.db).due(now_ms, cap, &mut |_| false)?.len())
    }

    /// Whether any key's expiry is at or before `now_ms`, i.e. an Expire command would
    /// remove something.
    pub fn has_due(&self, now_ms: u64) -> Result<bool, StoreError> {
        Ok(!DbView(&self.db).due(now_ms, 1, &mut |_| false)?.is_empty())
    }
}

/// A hash of the whole state machine at one applied log index: replicas that applied the
/// same log must report the same digest at the same index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Digest {
    /// The last applied log index (None before anything was applied).
    pub applied_index: Option<u64>,
    /// Stable 128-bit hash over every state-machine column family, in key order.
    pub hash: u128,
    /// Stored data entries, live or expired.
    pub keys: u64,
    /// Stored idempotency records.
    pub records: u64,
    /// Stored client sessions.
    pub sessions: u64,
    /// Stored tokens.
    pub tokens: u64,
}

impl StateReader {
    /// Hashes data, expiry index, idempotency records, sessions, tokens and state-machine
    /// metadata (last applied, membership, clock, counts, tombstones) from one RocksDB
    /// snapshot. Apply and install write all of these in one batch, so the snapshot never
    /// splits an apply. Blocking: reads the whole state.
    pub fn digest(&self) -> Result<Digest, StoreError> {
        self.digest_of(false)
    }

    /// [`Self::digest`] of the state alone: without the last applied log id and the
    /// membership, which a restored backup does not share with its source.
    pub fn state_digest(&self) -> Result<Digest, StoreError> {
        self.digest_of(true)
    }

    fn digest_of(&self, state_only: bool) -> Result<Digest, StoreError> {
        let snap = self.db.snapshot();
        if snap
            .get_cf(cf(&self.db, CF_SM_META), META_INSTALLING)?
            .is_some()
        {
            return Err(StoreError::Installing);
        }
        let mut hash = Fingerprinter::new();
        let mut counts = [0u64; 6];
        let names = [
            CF_SM_META,
            CF_DATA,
            CF_EXPIRY,
            CF_RECORDS,
            CF_SESSIONS,
            CF_TOKENS,
        ];
        for (i, name) in names.iter().enumerate() {
            // Tokens came last: a state without any hashes as it did before them.
            if *name != CF_TOKENS {
                hash.part(name.as_bytes());
            }
            for item in snap.iterator_cf(cf(&self.db, name), IteratorMode::Start) {
                let (k, v) = item?;
                if state_only
                    && *name == CF_SM_META
                    && [META_LAST_APPLIED, META_MEMBERSHIP].contains(&&*k)
                {
                    continue;
                }
                hash.part(&k);
                hash.part(&v);
                counts[i] += 1;
            }
        }
        let applied: Option<LogId> =
            match snap.get_cf(cf(&self.db, CF_SM_META), META_LAST_APPLIED)? {
                Some(raw) => postcard::from_bytes(&raw)?,
                None => None,
            };
        Ok(Digest {
            applied_index: applied.map(|l| l.index),
            hash: hash.finish(),
            keys: counts[1],
            records: counts[3],
            sessions: counts[4],
            tokens: counts[5],
        })
    }
}

/// The persisted state machine, as kv-core reads it while applying.
pub(crate) struct DbView<'a>(pub(crate) &'a DB);

impl StateView for DbView<'_> {
    type Error = StoreError;

    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        read_value(self.0, CF_DATA, key.as_bytes())
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        skip: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<(String, EntryMeta)>, StoreError> {
        let start = match after {
            Some(a) if a >= prefix => a,
            _ => prefix,
        };
        let mut found = vec![];
        let mode = IteratorMode::From(start.as_bytes(), Direction::Forward);
        for item in self.0.iterator_cf(cf(self.0, CF_DATA), mode) {
            if found.len() >= limit {
                break;
            }
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if after.is_some_and(|a| k.as_ref() <= a.as_bytes()) {
                continue;
            }
            let key = utf8_key(k, CF_DATA)?;
            if skip(&key) {
                continue;
            }
            let meta = postcard::from_bytes::<StoredMeta<'_>>(&v)?.entry_meta(&key);
            found.push((key, meta));
        }
        Ok(found)
    }

    fn get_record(&self, id: &str) -> Result<Option<Record>, StoreError> {
        read_value(self.0, CF_RECORDS, id.as_bytes())
    }

    fn get_session(&self, id: u128) -> Result<Option<Session>, StoreError> {
        read_value(self.0, CF_SESSIONS, &id.to_be_bytes())
    }

    fn get_token(&self, id: u64) -> Result<Option<Token>, StoreError> {
        read_value(self.0, CF_TOKENS, &id.to_be_bytes())
    }

    fn due(
        &self,
        up_to_ms: u64,
        limit: usize,
        skip: &mut dyn FnMut(&Due) -> bool,
    ) -> Result<Vec<Due>, StoreError> {
        let mut due = vec![];
        for item in self.0.iterator_cf(
            cf(self.0, CF_EXPIRY),
            IteratorMode::From(&[], Direction::Forward),
        ) {
            if due.len() >= limit {
                break;
            }
            let (raw, _) = item?;
            let entry = parse_expiry_key(&raw)?;
            if entry.0 > up_to_ms {
                break;
            }
            if !skip(&entry) {
                due.push(entry);
            }
        }
        Ok(due)
    }
}

/// Runs a blocking RocksDB or file operation off the async worker threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Write options for everything that must survive a crash once acknowledged.
pub(crate) fn synced() -> rocksdb::WriteOptions {
    let mut w = rocksdb::WriteOptions::default();
    w.set_sync(true);
    w
}

/// Seeds the empty data directory `dir` from the backup file `from`, as a one-node
/// cluster whose only member is `id` at `node`: the backup, checked against its SHA-256,
/// becomes the current snapshot (with that membership) and the state; the log starts
/// after it, and this node's vote is of the backup's term, so its first election takes
/// a later one. Log ids, and so revisions, go on from the backup's. Returns the meta.
pub fn restore(
    dir: &Path,
    from: &Path,
    id: NodeId,
    node: NodeInfo,
) -> Result<SnapshotMeta, StoreError> {
    let backup = crate::snapshot::Opened::read(std::fs::File::open(from)?)?;
    if backup.sha256.is_none() {
        return Err(StoreError::Corrupt(
            "not a backup: a backup ends with a SHA-256 trailer".into(),
        ));
    }
    backup.verify()?;
    let last = backup
        .meta
        .last_log_id
        .ok_or_else(|| StoreError::Corrupt("the backup holds no applied state".into()))?;
    let stores = open(dir)?;
    if stores.state_machine.last_applied().is_some() {
        return Err(StoreError::Corrupt(format!(
            "{} holds a state already: restore into an empty data directory",
            dir.display()
        )));
    }
    let (db, snapshots) = (stores.reader.db.clone(), stores.reader.snapshots.clone());
    let membership = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([id])],
        std::collections::BTreeMap::from([(id, node)]),
    );
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), membership),
        snapshot_id: format!("{}-{}-restored", last.leader_id.term, last.index),
    };
    snapshots.keep(&meta, &backup.file, backup.start, backup.len)?;
    let current = snapshots
        .open_current()?
        .ok_or(StoreError::Invariant("the restored snapshot vanished"))?;
    install_from(&db, &meta, || current.data(), &Shared::default())?;
    let max_node_id = read_value::<u64>(&db, CF_SM_META, META_MAX_NODE_ID)?
        .unwrap_or(0)
        .max(id);
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(
        cf(&db, CF_SM_META),
        META_MAX_NODE_ID,
        postcard::to_stdvec(&max_node_id)?,
    );
    batch.put_cf(
        cf(&db, CF_RAFT_META),
        META_LAST_PURGED,
        postcard::to_stdvec(&last)?,
    );
    let vote = Vote::new(last.leader_id.term, id);
    batch.put_cf(
        cf(&db, CF_RAFT_META),
        META_VOTE,
        postcard::to_stdvec(&vote)?,
    );
    db.write_opt(batch, &synced())?;
    Ok(meta)
}
