//! The raft log's entries in segment files of preallocated space, written with one
//! `write` and one `fdatasync` per append.
//!
//! Why not RocksDB: there every append's `fdatasync` also has to journal the WAL file's new
//! size, and each entry is inserted into a memtable, flushed and compacted only to be
//! deleted by the next purge. Here a segment is zero-filled and fsynced before it is used
//! (by a background thread, ahead of need), so an append's `fdatasync` writes only data.
//!
//! Layout: `dir/<first index, 20 digits>.seg`, each [`HEADER`] bytes (magic, the CRC chain
//! value before its first record) and then records: `u32` payload length, `u32` CRC, the
//! postcard-encoded entry. The CRC of each record covers the previous record's CRC, its
//! length and its payload (a chain, as in etcd's WAL), so after a truncation or a torn
//! write no leftover record can pass as the continuation of newer ones: reading a segment
//! stops at the first record that is zero, [`TRUNCATED`], short or breaks the chain.
//!
//! Only the end of the last segment may be cut at open: earlier segments were complete
//! when the next one was started, so a segment that ends before the next one begins is
//! damage and `open` refuses it, naming the file and offset. The one exception is a
//! segment that ends at a truncation marker: the segments after it are leftovers of an
//! interrupted truncation and are removed.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::log_fs::{LogFs, SegmentFile, StdFs};
use crate::typ::{LogEntry, LogId};
use crate::StoreError;

const MAGIC: &[u8; 8] = b"QKVLOG01";
/// Magic, then the chain value before the segment's first record, then 4 spare bytes.
const HEADER: u64 = 16;
/// Length and CRC before each record's payload.
const RECORD_HEADER: usize = 8;
/// The record header `truncate` writes where the removed records began: length 0 (no
/// record) and a CRC field no zero-filled space has, so open can tell a truncation from
/// zeroes where records should be.
const TRUNCATED: [u8; RECORD_HEADER] = [0, 0, 0, 0, b'T', b'R', b'N', b'C'];
/// Zeroes written at a time when preparing a segment.
const ZERO_CHUNK: usize = 1024 * 1024;
/// A log sync this slow is logged: it holds raft's core for as long.
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(200);
/// The background preparation writes small synced chunks with pauses between them: one
/// burst of a whole segment of zeroes queues every append's fdatasync behind it.
const PACED_CHUNK: usize = 64 * 1024;
const PACED_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);
/// Decoded entries kept for replication, which reads what was just appended.
const CACHED_ENTRIES: usize = 4096;
const CACHED_BYTES: usize = 64 * 1024 * 1024;

/// Where one entry is.
#[derive(Clone, Copy)]
struct Pos {
    log_id: LogId,
    /// First index of the segment holding it.
    segment: u64,
    offset: u64,
    len: u32,
    /// The chain value after this record.
    crc: u32,
}

/// What readers see: positions of every entry after the last purge, open segments, and
/// the most recent entries decoded.
#[derive(Default)]
struct Index {
    positions: VecDeque<Pos>,
    segments: BTreeMap<u64, Arc<dyn SegmentFile>>,
    /// The chain value before `positions[0]` (or before the next append if empty).
    chain_before: u32,
    /// Entries for the last `cache.len()` positions.
    cache: VecDeque<(LogEntry, usize)>,
    cache_bytes: usize,
}

impl Index {
    fn first_index(&self) -> Option<u64> {
        self.positions.front().map(|p| p.log_id.index)
    }

    fn slot(&self, index: u64) -> Option<usize> {
        let first = self.first_index()?;
        let slot = index.checked_sub(first)? as usize;
        (slot < self.positions.len()).then_some(slot)
    }

    fn cache_entry(&mut self, entry: LogEntry, bytes: usize) {
        self.cache.push_back((entry, bytes));
        self.cache_bytes += bytes;
        while self.cache.len() > CACHED_ENTRIES || self.cache_bytes > CACHED_BYTES {
            self.uncache(1, true);
        }
    }

    /// Drops up to `n` cached entries from the oldest end (`oldest`) or the newest.
    fn uncache(&mut self, n: usize, oldest: bool) {
        for _ in 0..n.min(self.cache.len()) {
            let dropped = if oldest {
                self.cache.pop_front()
            } else {
                self.cache.pop_back()
            };
            if let Some((_, bytes)) = dropped {
                self.cache_bytes -= bytes;
            }
        }
    }

    /// Drops positions (and cached entries) from `slot` on.
    fn cut(&mut self, slot: usize) {
        let removed = self.positions.len() - slot;
        self.positions.truncate(slot);
        self.uncache(removed, false);
    }

    /// Drops the first `n` positions (and their cached entries, if still cached).
    fn forget(&mut self, n: usize) {
        let uncached = self.positions.len() - self.cache.len();
        self.uncache(n.saturating_sub(uncached), true);
        self.positions.drain(..n);
    }

    /// The open segment starting at `first`.
    fn segment(&self, first: u64) -> Result<Arc<dyn SegmentFile>, StoreError> {
        self.segments
            .get(&first)
            .cloned()
            .ok_or_else(|| corrupt(format!("log segment {first} is not open")))
    }

    /// Closes the segments whose first index is in `range` and removes their files,
    /// oldest first; says whether there were any.
    fn remove_segments(
        &mut self,
        fs: &dyn LogFs,
        dir: &Path,
        range: impl std::ops::RangeBounds<u64>,
    ) -> Result<bool, StoreError> {
        let gone: Vec<u64> = self.segments.range(range).map(|(k, _)| *k).collect();
        for &first in &gone {
            self.segments.remove(&first);
            fs.remove(&segment_path(dir, first))?;
        }
        Ok(!gone.is_empty())
    }

    /// Removes the segments after `segment`, newest first and each durably, so a crash
    /// midway leaves a log whose segments still follow each other (the last one ends
    /// early, as a truncation's does), never one with a hole before a later segment.
    fn remove_segments_after(
        &mut self,
        fs: &dyn LogFs,
        dir: &Path,
        segment: u64,
    ) -> Result<(), StoreError> {
        let gone: Vec<u64> = self
            .segments
            .range(segment + 1..)
            .map(|(k, _)| *k)
            .collect();
        for &first in gone.iter().rev() {
            self.segments.remove(&first);
            fs.remove(&segment_path(dir, first))?;
            fs.sync_dir(dir)?;
        }
        Ok(())
    }
}

/// The segment appends go to.
struct Active {
    first: u64,
    file: Arc<dyn SegmentFile>,
    size: u64,
    offset: u64,
}

/// State only the writer (openraft's core, through `LogStore`) touches.
#[derive(Default)]
struct Writer {
    active: Option<Active>,
    chain: u32,
    spare: Option<Spare>,
    /// Why the log takes no more changes, once one has failed.
    poisoned: Option<String>,
}

/// The raft log entries of one node. Cloning shares them.
#[derive(Clone)]
pub(crate) struct LogFiles {
    inner: Arc<Inner>,
}

struct Inner {
    fs: Arc<dyn LogFs>,
    dir: PathBuf,
    segment_bytes: u64,
    index: Mutex<Index>,
    writer: Mutex<Writer>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves data readers can use: appends update the
    // index after their I/O succeeded, and truncate and purge only drop entries from it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn spare_path(dir: &Path) -> PathBuf {
    dir.join("spare.tmp")
}

fn chain(prev: u32, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(prev);
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Writes `size` bytes of zeroes to `path` and syncs them, so later writes into it change
/// no file metadata (fallocate would leave unwritten extents, whose conversion on first
/// write costs the same journal commit). Paced while `hurry` is given and unset: in small
/// synced chunks with pauses, for the background, so appends' fdatasyncs never wait
/// behind a long flush; at full speed once an append waits for it.
fn prepare_segment(
    fs: &dyn LogFs,
    path: &Path,
    size: u64,
    hurry: Option<&AtomicBool>,
) -> std::io::Result<()> {
    let file = fs.open(path, true)?;
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut written = 0u64;
    while written < size {
        let paced = hurry.is_some_and(|h| !h.load(Ordering::Relaxed));
        let chunk = if paced { PACED_CHUNK } else { ZERO_CHUNK };
        let n = (size - written).min(chunk as u64) as usize;
        file.write_all_at(&zeros[..n], written)?;
        written += n as u64;
        if paced {
            file.sync_data()?;
            std::thread::sleep(PACED_PAUSE);
        }
    }
    file.sync_all()
}

/// The next segment, being prepared in the background.
struct Spare {
    done: JoinHandle<std::io::Result<()>>,
    /// Set when an append waits for it: from then on pacing only stalls the append
    /// (a 32 MiB segment takes over half a second paced).
    hurry: Arc<AtomicBool>,
}

impl Spare {
    /// Waits for the preparation, unpaced from now on; whether it succeeded.
    fn finish(self) -> bool {
        self.hurry.store(true, Ordering::Relaxed);
        matches!(self.done.join(), Ok(Ok(())))
    }
}

fn corrupt(what: String) -> StoreError {
    StoreError::Corrupt(what)
}

/// How a segment's records end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Zeroes (space never written) or the end of the file.
    Clean,
    /// The marker `truncate` writes.
    Truncated,
    /// A record that is short, breaks the chain or is not the next entry: a torn write,
    /// leftovers of truncated records overwritten by shorter ones, or damage.
    Broken(&'static str),
}

/// A segment's records as read at open: positions (with decoded entries) until the
/// first record that is zero, a truncation marker, short, or breaks the chain.
struct Scanned {
    /// The chain value in the header: before the segment's first record.
    prev: u32,
    records: Vec<(Pos, LogEntry, usize)>,
    /// Where reading stopped, and why.
    end: u64,
    ends: End,
    chain: u32,
    /// The file's size.
    size: u64,
}

/// At open, the segment before the one being read.
struct Before<'a> {
    path: &'a Path,
    /// The index and chain value its continuation starts with.
    next: u64,
    chain: u32,
    /// How and where its records ended.
    ends: End,
    end: u64,
}

/// Sequential reads of a segment file from its start.
struct ReadFrom<'a> {
    file: &'a dyn SegmentFile,
    offset: u64,
}

impl Read for ReadFrom<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Reads `file`'s records from the start; `None` if it has no valid header (a segment
/// whose first write never reached the disk).
/// Whether anything but zeroes follows the header where the first record would start.
fn records_follow(file: &dyn SegmentFile) -> Result<bool, StoreError> {
    let mut rh = [0u8; RECORD_HEADER];
    if file.size()? < HEADER + RECORD_HEADER as u64 {
        return Ok(false);
    }
    file.read_exact_at(&mut rh, HEADER)?;
    Ok(rh != [0u8; RECORD_HEADER])
}

fn scan(file: &dyn SegmentFile, first: u64) -> Result<Option<Scanned>, StoreError> {
    let size = file.size()?;
    let mut reader = BufReader::with_capacity(1024 * 1024, ReadFrom { file, offset: 0 });
    let mut header = [0u8; HEADER as usize];
    if size < HEADER {
        return Ok(None);
    }
    reader.read_exact(&mut header)?;
    if &header[..8] != MAGIC {
        return Ok(None);
    }
    let prev = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let mut out = Scanned {
        prev,
        records: vec![],
        end: HEADER,
        ends: End::Clean,
        chain: prev,
        size,
    };
    let mut expected = first;
    out.ends = loop {
        let mut rh = [0u8; RECORD_HEADER];
        if out.end + RECORD_HEADER as u64 > size {
            break End::Clean;
        }
        reader.read_exact(&mut rh)?;
        if rh == [0u8; RECORD_HEADER] {
            break End::Clean;
        }
        if rh == TRUNCATED {
            break End::Truncated;
        }
        let len = u32::from_le_bytes(rh[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(rh[4..].try_into().expect("4 bytes"));
        let body_at = out.end + RECORD_HEADER as u64;
        if len == 0 || body_at + u64::from(len) > size {
            break End::Broken("record length out of bounds");
        }
        let mut payload = vec![0u8; len as usize];
        reader.read_exact(&mut payload)?;
        if chain(out.chain, len, &payload) != crc {
            break End::Broken("CRC mismatch");
        }
        let Ok(entry) = postcard::from_bytes::<LogEntry>(&payload) else {
            break End::Broken("undecodable entry");
        };
        if entry.log_id.index != expected {
            break End::Broken("entry out of order");
        }
        let pos = Pos {
            log_id: entry.log_id,
            segment: first,
            offset: out.end,
            len,
            crc,
        };
        out.records.push((pos, entry, len as usize));
        out.chain = crc;
        out.end = body_at + u64::from(len);
        expected += 1;
    };
    Ok(Some(out))
}

impl LogFiles {
    /// Opens the log in `dir` (created if missing), dropping entries at or before
    /// `last_purged` and anything that does not continue the chain.
    pub(crate) fn open(
        dir: &Path,
        segment_bytes: u64,
        last_purged: Option<LogId>,
    ) -> Result<Self, StoreError> {
        Self::open_on(Arc::new(StdFs), dir, segment_bytes, last_purged)
    }

    /// [`LogFiles::open`] on the file system `fs`.
    fn open_on(
        fs: Arc<dyn LogFs>,
        dir: &Path,
        segment_bytes: u64,
        last_purged: Option<LogId>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        match fs.remove(&spare_path(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let mut names = BTreeMap::new();
        for item in std::fs::read_dir(dir)? {
            let path = item?.path();
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                names.insert(first, path);
            }
        }
        // Index 0 is a real entry (openraft's first membership), so "nothing purged" is
        // not "purged up to 0".
        let is_purged = |index: u64| last_purged.is_some_and(|l| index <= l.index);
        let mut index = Index::default();
        let mut writer = Writer::default();
        let mut before: Option<Before> = None;
        let mut stale = false;
        for (i, (&first, path)) in names.iter().enumerate() {
            if stale {
                fs.remove(path)?;
                continue;
            }
            let file = fs.open(path, false)?;
            let after_truncation = before.as_ref().is_some_and(|b| b.ends == End::Truncated);
            let Some(scanned) = scan(&*file, first)? else {
                // The newest segment, created but its first write torn (nothing in it was
                // acknowledged), or a leftover of a truncation. A header is synced before
                // any record is written, so records behind a bad header are damage.
                if i + 1 == names.len() && !after_truncation && records_follow(&*file)? {
                    return Err(StoreError::CorruptLog {
                        path: path.clone(),
                        offset: 0,
                        what: "damaged segment header, and records follow it".into(),
                    });
                }
                if i + 1 == names.len() || after_truncation {
                    stale = after_truncation;
                    fs.remove(path)?;
                    continue;
                }
                return Err(StoreError::CorruptLog {
                    path: path.clone(),
                    offset: 0,
                    what: "no segment header, and later segments follow".into(),
                });
            };
            if let Some(b) = &before {
                if b.next != first || b.chain != scanned.prev {
                    let torn_creation = i + 1 == names.len()
                        && b.next == first
                        && scanned.records.is_empty()
                        && scanned.ends == End::Clean;
                    if torn_creation {
                        // The newest segment's header write was cut short: no record was
                        // written to it yet.
                        fs.remove(path)?;
                        continue;
                    }
                    if after_truncation && first > b.next {
                        // Left over from a truncation interrupted before it removed them
                        // (they start after the cut; a continuation starts at it).
                        stale = true;
                        fs.remove(path)?;
                        continue;
                    }
                    if !(index.positions.is_empty() && first.checked_sub(1).is_some_and(is_purged))
                    {
                        let why = match b.ends {
                            End::Broken(why) => why,
                            _ => "records end early",
                        };
                        return Err(StoreError::CorruptLog {
                            path: b.path.to_owned(),
                            offset: b.end,
                            what: format!(
                                "{why}, and the next segment {} starts after entries lost here",
                                path.display()
                            ),
                        });
                    }
                    // Everything before this segment is purged: the damage loses nothing,
                    // and the log starts here.
                    index.chain_before = scanned.prev;
                }
            } else {
                index.chain_before = scanned.prev;
            }
            let next = first + scanned.records.len() as u64;
            for (pos, entry, bytes) in scanned.records {
                if is_purged(pos.log_id.index) {
                    index.chain_before = pos.crc;
                    continue;
                }
                index.positions.push_back(pos);
                index.cache_entry(entry, bytes);
            }
            before = Some(Before {
                path,
                next,
                chain: scanned.chain,
                ends: scanned.ends,
                end: scanned.end,
            });
            writer.chain = scanned.chain;
            writer.active = Some(Active {
                first,
                file: file.clone(),
                size: scanned.size,
                offset: scanned.end,
            });
            index.segments.insert(first, file);
        }
        // A log purged past its last entry (a snapshot installed) starts over after
        // the purge point.
        if index.positions.is_empty() {
            index.remove_segments(&*fs, dir, ..)?;
            index = Index::default();
            writer = Writer::default();
        } else {
            // Segments wholly at or before the purge point.
            let first_kept = index.positions[0].segment;
            index.remove_segments(&*fs, dir, ..first_kept)?;
        }
        // What a crashed process wrote may still be only in the page cache; it is part
        // of the log from now on, so it must be durable before anything builds on it.
        if let Some(active) = &writer.active {
            active
                .file
                .sync_data()
                .map_err(|source| StoreError::LogIo {
                    path: segment_path(dir, active.first),
                    source,
                })?;
        }
        fs.sync_dir(dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                fs,
                dir: dir.to_owned(),
                segment_bytes,
                index: Mutex::new(index),
                writer: Mutex::new(writer),
            }),
        })
    }

    /// The id of the last entry, if any.
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        lock(&self.inner.index).positions.back().map(|p| p.log_id)
    }

    /// Entries `start..end` that exist, in order.
    pub(crate) fn entries(&self, start: u64, end: u64) -> Result<Vec<LogEntry>, StoreError> {
        let mut out: Vec<Option<LogEntry>> = vec![];
        let mut to_read = vec![];
        {
            let index = lock(&self.inner.index);
            let Some(first) = index.first_index() else {
                return Ok(vec![]);
            };
            let last = first + index.positions.len() as u64 - 1;
            let cached_from = last + 1 - index.cache.len() as u64;
            for i in start.max(first)..end.min(last + 1) {
                if i >= cached_from {
                    out.push(Some(index.cache[(i - cached_from) as usize].0.clone()));
                } else {
                    let pos = index.positions[(i - first) as usize];
                    to_read.push((out.len(), pos, index.segment(pos.segment)?));
                    out.push(None);
                }
            }
        }
        // Older entries are read from their files without holding the lock.
        for (slot, pos, file) in to_read {
            let mut raw = vec![0u8; pos.len as usize];
            file.read_exact_at(&mut raw, pos.offset + RECORD_HEADER as u64)?;
            out[slot] = Some(postcard::from_bytes(&raw)?);
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The index of the first entry held, if any.
    pub(crate) fn first_index(&self) -> Option<u64> {
        lock(&self.inner.index).first_index()
    }

    /// The end of the longest run of entries from `start` (before `end`) whose records
    /// add up to at most `max_bytes`, and never less than one entry.
    pub(crate) fn end_within(&self, start: u64, end: u64, max_bytes: u64) -> u64 {
        let index = lock(&self.inner.index);
        let Some(first_slot) = index.slot(start) else {
            return end;
        };
        let mut bytes = 0;
        for (n, pos) in index.positions.range(first_slot..).enumerate() {
            let at = start + n as u64;
            bytes += u64::from(pos.len);
            if at >= end || (n > 0 && bytes > max_bytes) {
                return at.min(end);
            }
        }
        end
    }

    /// Runs one change of the log under the writer lock. After a failed one the log takes
    /// no more: what a failed write or fsync left on disk is unknown, and a retried fsync
    /// can succeed without the pages the failed one lost (PostgreSQL's "fsyncgate").
    fn change<T>(
        &self,
        op: impl FnOnce(&mut Writer) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut w = lock(&self.inner.writer);
        if let Some(cause) = &w.poisoned {
            return Err(StoreError::LogPoisoned(cause.clone()));
        }
        let result = op(&mut w);
        if let Err(e) = &result {
            w.poisoned = Some(e.to_string());
        }
        result
    }

    /// An I/O error on the segment starting at `first`, naming its file.
    fn io_error(&self, first: u64) -> impl Fn(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::LogIo {
            path: segment_path(&self.inner.dir, first),
            source,
        }
    }

    /// Appends `entries` after the last one and makes them durable.
    pub(crate) fn append(&self, entries: Vec<LogEntry>) -> Result<(), StoreError> {
        let Some(first_new) = entries.first().map(|e| e.log_id.index) else {
            return Ok(());
        };
        // Positions are found by index - first: a gap would make reads return the wrong
        // entries, so it is refused rather than written.
        if let Some(last) = self.last_log_id() {
            if first_new != last.index + 1 {
                return Err(StoreError::Corrupt(format!(
                    "append of entries from {first_new} to a log that ends at {}",
                    last.index
                )));
            }
        }
        self.change(|w| self.append_locked(w, first_new, entries))
    }

    fn append_locked(
        &self,
        w: &mut Writer,
        first_new: u64,
        entries: Vec<LogEntry>,
    ) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(entries.len() * 256);
        let mut records = Vec::with_capacity(entries.len());
        let chain_start = w.chain;
        let mut crc = chain_start;
        for entry in entries {
            let at = buf.len();
            buf.extend_from_slice(&[0u8; RECORD_HEADER]);
            buf = postcard::to_extend(&entry, buf)?;
            let len = (buf.len() - at - RECORD_HEADER) as u32;
            crc = chain(crc, len, &buf[at + RECORD_HEADER..]);
            buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
            buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
            records.push((entry, at as u64, len, crc));
        }
        let fits = w
            .active
            .as_ref()
            .is_some_and(|a| a.offset + buf.len() as u64 <= a.size);
        if !fits {
            let size = self.inner.segment_bytes.max(HEADER + buf.len() as u64);
            let file = self
                .new_segment(w, first_new, size)
                .map_err(self.io_error(first_new))?;
            w.active = Some(Active {
                first: first_new,
                file,
                size,
                offset: HEADER,
            });
        }
        let active = w
            .active
            .as_mut()
            .expect("an active segment was just ensured");
        let io_error = self.io_error(active.first);
        active
            .file
            .write_all_at(&buf, active.offset)
            .map_err(&io_error)?;
        // The one sync that makes the entries durable.
        let started = std::time::Instant::now();
        active.file.sync_data().map_err(&io_error)?;
        let took = started.elapsed();
        metrics::histogram!("quorumkv_log_fsync_duration_seconds").record(took);
        metrics::counter!("quorumkv_log_appended_bytes_total").increment(buf.len() as u64);
        if took >= SLOW_SYNC {
            tracing::warn!(?took, bytes = buf.len(), "slow raft log sync");
        }
        let (segment, base, file) = (active.first, active.offset, active.file.clone());
        active.offset += buf.len() as u64;
        w.chain = crc;

        let mut index = lock(&self.inner.index);
        if index.positions.is_empty() {
            index.chain_before = chain_start;
        }
        if !fits {
            // Replaces the handle of a file the new segment was renamed over (an empty
            // segment of the same first index): reads and truncation go to this one.
            index.segments.insert(segment, file);
        }
        for (entry, at, len, crc) in records {
            index.positions.push_back(Pos {
                log_id: entry.log_id,
                segment,
                offset: base + at,
                len,
                crc,
            });
            index.cache_entry(entry, len as usize);
        }
        Ok(())
    }

    /// Creates the segment starting at `first` from the prepared spare when there is one
    /// (then prepares the next in the background), else by preparing it now, and writes
    /// its header with the current chain value.
    fn new_segment(
        &self,
        w: &mut Writer,
        first: u64,
        size: u64,
    ) -> std::io::Result<Arc<dyn SegmentFile>> {
        let (fs, dir) = (&self.inner.fs, &self.inner.dir);
        let path = segment_path(dir, first);
        // A spare of another size is finished only so that two preparations never
        // write the same file.
        let spare_ready = w
            .spare
            .take()
            .is_some_and(|spare| spare.finish() && size == self.inner.segment_bytes);
        if spare_ready {
            fs.rename(&spare_path(dir), &path)?;
        } else {
            prepare_segment(&**fs, &path, size, None)?;
        }
        let file = fs.open(&path, false)?;
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&w.chain.to_le_bytes());
        file.write_all_at(&header, 0)?;
        // Synced before any record is written, so a header that does not continue the
        // chain is damage, or (in an empty newest segment) a creation cut short.
        file.sync_data()?;
        // The new name must survive a crash before entries in it are acknowledged.
        fs.sync_dir(dir)?;
        let (fs, spare, bytes) = (fs.clone(), spare_path(dir), self.inner.segment_bytes);
        let hurry = Arc::new(AtomicBool::new(false));
        let flag = hurry.clone();
        let done = std::thread::spawn(move || prepare_segment(&*fs, &spare, bytes, Some(&flag)));
        w.spare = Some(Spare { done, hurry });
        Ok(file)
    }

    /// Removes entries from `index` on, durably: later segments are removed, and the
    /// record there is overwritten with [`TRUNCATED`] so a restart stops before it.
    pub(crate) fn truncate(&self, index_from: u64) -> Result<(), StoreError> {
        self.change(|w| {
            let mut index = lock(&self.inner.index);
            let Some(slot) = index.slot(index_from) else {
                return Ok(());
            };
            let pos = index.positions[slot];
            let chain_before = match slot {
                0 => index.chain_before,
                s => index.positions[s - 1].crc,
            };
            let file = index.segment(pos.segment)?;
            let io_error = self.io_error(pos.segment);
            index.cut(slot);
            let (fs, dir) = (&*self.inner.fs, &self.inner.dir);
            // Later segments go first, durably: a crash then leaves a shorter prefix of
            // the log (entries being truncated are uncommitted), never a segment that
            // ends early (a torn marker) with later ones after it.
            index.remove_segments_after(fs, dir, pos.segment)?;
            file.write_all_at(&TRUNCATED, pos.offset)
                .map_err(&io_error)?;
            file.sync_data().map_err(&io_error)?;
            let size = file.size().map_err(&io_error)?;
            w.active = Some(Active {
                first: pos.segment,
                file,
                size,
                offset: pos.offset,
            });
            w.chain = chain_before;
            Ok(())
        })
    }

    /// Forgets entries up to and including `upto` and removes segments holding only such
    /// entries. The caller has made the purge point durable first.
    pub(crate) fn purge(&self, upto: u64) -> Result<(), StoreError> {
        self.change(|w| {
            let mut index = lock(&self.inner.index);
            let removed = match index.first_index() {
                Some(first) if upto >= first => {
                    ((upto - first + 1) as usize).min(index.positions.len())
                }
                Some(_) => return Ok(()),
                None => 0,
            };
            if removed > 0 {
                index.chain_before = index.positions[removed - 1].crc;
                index.forget(removed);
            }
            if index.positions.is_empty() {
                // Purged up to or past the last entry (a snapshot was installed): the next
                // entry may not follow the last one, so it starts a segment of its own.
                w.active = None;
            }
            // Keep the segment of the next entry; with none left, keep none.
            let keep_from = index.positions.front().map_or(u64::MAX, |p| p.segment);
            index.remove_segments(&*self.inner.fs, &self.inner.dir, ..keep_from)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{File, OpenOptions};

    use kv_core::{Command, Precondition, Request, Ttl};
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::log_fs::fault::{Fault, FaultFs, Op};

    /// Small segments, so a few entries span several files.
    const SMALL: u64 = 2048;

    fn entry(term: u64, index: u64) -> LogEntry {
        entry_sized(term, index, 100)
    }

    /// An entry whose value has `value_len` bytes.
    fn entry_sized(term: u64, index: u64, value_len: usize) -> LogEntry {
        LogEntry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Request {
                stamp_ms: index,
                command: Command::Set {
                    key: format!("k{index}"),
                    value: vec![b'v'; value_len],
                    ttl: Ttl::Clear,
                    precondition: Precondition::Always,
                },
            }),
        }
    }

    fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<LogEntry> {
        range.map(|i| entry(term, i)).collect()
    }

    /// (term, index) of every entry the log holds.
    fn ids(log: &LogFiles) -> Vec<(u64, u64)> {
        log.entries(0, u64::MAX)
            .expect("read")
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    fn expected(parts: &[(u64, std::ops::RangeInclusive<u64>)]) -> Vec<(u64, u64)> {
        parts
            .iter()
            .flat_map(|(t, r)| r.clone().map(move |i| (*t, i)))
            .collect()
    }

    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .expect("entry")
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count()
    }

    fn open_small(dir: &Path, last_purged: Option<LogId>) -> LogFiles {
        LogFiles::open(dir, SMALL, last_purged).expect("open")
    }

    fn purged(index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(1, 1), index))
    }

    #[test]
    fn an_append_that_would_leave_a_gap_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open_small(dir.path(), None);
        log.append(entries(1, 1..=3)).expect("append");
        assert!(log.append(entries(1, 5..=6)).is_err());
        assert!(log.append(entries(1, 3..=4)).is_err());
        log.append(entries(1, 4..=5))
            .expect("the next index is fine");
        assert_eq!(ids(&log), expected(&[(1, 1..=5)]));
    }

    #[test]
    fn a_byte_budget_ends_a_run_of_entries_early_but_never_before_its_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogFiles::open(dir.path(), 64 * 1024, None).expect("open");
        log.append((1..=10).map(|i| entry_sized(1, i, 1000)).collect())
            .expect("append");
        let record = u64::from(lock(&log.inner.index).positions[0].len);
        assert_eq!(log.end_within(1, 11, 3 * record), 4, "three records fit");
        assert_eq!(log.end_within(1, 11, 3 * record - 1), 3);
        assert_eq!(
            log.end_within(1, 11, 1),
            2,
            "one entry even over the budget"
        );
        assert_eq!(
            log.end_within(5, 7, 100 * record),
            7,
            "the range's end holds"
        );
        assert_eq!(log.end_within(20, 30, record), 30, "nothing held: as asked");
    }

    #[test]
    fn entries_survive_reopen_across_segments_and_are_read_back_from_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = open_small(dir.path(), None);
            for start in (1..=100).step_by(3) {
                log.append(entries(1, start..=(start + 2).min(100)))
                    .expect("append");
            }
            assert_eq!(ids(&log), expected(&[(1, 1..=100)]));
        }
        assert!(segments(dir.path()) > 5, "small segments roll over");
        let log = open_small(dir.path(), None);
        assert_eq!(ids(&log), expected(&[(1, 1..=100)]));
        // Without the cache every entry comes from its file.
        lock(&log.inner.index).cache.clear();
        lock(&log.inner.index).cache_bytes = 0;
        assert_eq!(ids(&log), expected(&[(1, 1..=100)]));
        assert_eq!(
            log.entries(40, 43).expect("read")[0].log_id.index,
            40,
            "a range starts where asked"
        );
        assert_eq!(log.entries(40, 43).expect("read").len(), 3);
    }

    #[test]
    fn the_entry_at_index_zero_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = open_small(dir.path(), None);
            log.append(entries(1, 0..=3)).expect("append");
        }
        let log = open_small(dir.path(), None);
        assert_eq!(ids(&log), expected(&[(1, 0..=3)]));
        drop(log);
        let log = open_small(dir.path(), purged(0));
        assert_eq!(ids(&log), expected(&[(1, 1..=3)]));
    }

    #[test]
    fn truncated_entries_never_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = open_small(dir.path(), None);
            log.append(entries(1, 1..=40)).expect("append");
            log.truncate(21).expect("truncate");
            assert_eq!(ids(&log), expected(&[(1, 1..=20)]));
        }
        // Reopened before anything else was written: the truncation held.
        let log = open_small(dir.path(), None);
        assert_eq!(ids(&log), expected(&[(1, 1..=20)]));
        // New entries of the same size land exactly where old ones were; the old ones
        // after them do not pass as their continuation.
        log.append(entries(2, 21..=25)).expect("append");
        drop(log);
        let log = open_small(dir.path(), None);
        assert_eq!(ids(&log), expected(&[(1, 1..=20), (2, 21..=25)]));
        log.append(entries(2, 26..=30)).expect("append");
        assert_eq!(ids(&log), expected(&[(1, 1..=20), (2, 21..=30)]));
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = LogFiles::open(dir.path(), 1 << 20, None).expect("open");
            log.append(entries(1, 1..=5)).expect("append");
        }
        // Damage the last record's payload, as a crash mid-write can.
        let seg = segment_path(dir.path(), 1);
        let raw = std::fs::read(&seg).expect("read segment");
        let end = raw.iter().rposition(|b| *b != 0).expect("data");
        let file = OpenOptions::new().write(true).open(&seg).expect("open");
        file.write_all_at(&[raw[end] ^ 0xFF], end as u64)
            .expect("write");
        drop(file);
        let log = LogFiles::open(dir.path(), 1 << 20, None).expect("reopen");
        assert_eq!(ids(&log), expected(&[(1, 1..=4)]));
        log.append(entries(2, 5..=6)).expect("append");
        drop(log);
        let log = LogFiles::open(dir.path(), 1 << 20, None).expect("reopen");
        assert_eq!(ids(&log), expected(&[(1, 1..=4), (2, 5..=6)]));
    }

    #[test]
    fn purge_forgets_entries_and_their_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = open_small(dir.path(), None);
            for i in 1..=60 {
                log.append(vec![entry(1, i)]).expect("append");
            }
            let before = segments(dir.path());
            log.purge(40).expect("purge");
            assert_eq!(ids(&log), expected(&[(1, 41..=60)]));
            assert!(segments(dir.path()) < before, "whole segments are removed");
        }
        let log = open_small(dir.path(), purged(40));
        assert_eq!(ids(&log), expected(&[(1, 41..=60)]));
        log.append(entries(1, 61..=62)).expect("append");
        assert_eq!(ids(&log), expected(&[(1, 41..=62)]));
    }

    #[test]
    fn a_log_purged_past_its_end_goes_on_after_the_purge_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = open_small(dir.path(), None);
            log.append(entries(1, 1..=10)).expect("append");
            // A snapshot up to 100 was installed.
            log.purge(100).expect("purge");
            assert_eq!(ids(&log), vec![]);
            assert_eq!(log.last_log_id(), None);
            log.append(entries(3, 101..=105)).expect("append");
        }
        let log = open_small(dir.path(), purged(100));
        assert_eq!(ids(&log), expected(&[(3, 101..=105)]));
        // Purged past the end and reopened before the next append.
        log.purge(200).expect("purge");
        drop(log);
        let log = open_small(dir.path(), purged(200));
        assert_eq!(ids(&log), vec![]);
        log.append(entries(4, 201..=202)).expect("append");
        drop(log);
        let log = open_small(dir.path(), purged(200));
        assert_eq!(ids(&log), expected(&[(4, 201..=202)]));
    }

    #[test]
    fn truncating_everything_then_purging_keeps_the_next_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = open_small(dir.path(), None);
            log.append(entries(1, 1..=10)).expect("append");
            log.purge(5).expect("purge");
            log.truncate(6).expect("truncate");
            assert_eq!(ids(&log), vec![]);
            log.append(entries(2, 6..=8)).expect("append");
        }
        let log = open_small(dir.path(), purged(5));
        assert_eq!(ids(&log), expected(&[(2, 6..=8)]));
    }

    /// Where the record of `index` starts: its segment file and byte offset.
    fn record_at(log: &LogFiles, index: u64) -> (PathBuf, u64) {
        let idx = lock(&log.inner.index);
        let slot = idx.slot(index).expect("entry is in the log");
        let pos = idx.positions[slot];
        (segment_path(&log.inner.dir, pos.segment), pos.offset)
    }

    fn flip_byte(path: &Path, at: u64) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open");
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, at).expect("read");
        file.write_all_at(&[b[0] ^ 0xFF], at).expect("write");
    }

    /// Damages the record at a segment file's byte offset.
    type Damage = fn(&Path, u64);

    #[test]
    fn a_damaged_header_of_the_newest_segment_with_records_is_refused_not_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = {
            let log = open_small(dir.path(), None);
            for i in 1..=40 {
                log.append(vec![entry(1, i)]).expect("append");
            }
            record_at(&log, 40).0
        };
        flip_byte(&seg, 0);
        let Err(err) = LogFiles::open(dir.path(), SMALL, None) else {
            panic!("open dropped the newest segment's acknowledged entries");
        };
        assert!(
            matches!(&err, StoreError::CorruptLog { path, .. } if *path == seg),
            "{err}"
        );
    }

    #[test]
    fn a_broken_record_before_the_last_segment_is_refused_not_cut() {
        // A bit flip inside a payload, and zeroes over a record header.
        let damages: [(&str, Damage); 2] = [
            ("bit flip", |seg, offset| {
                flip_byte(seg, offset + RECORD_HEADER as u64 + 5)
            }),
            ("zeroed header", |seg, offset| {
                let file = OpenOptions::new().write(true).open(seg).expect("open");
                file.write_all_at(&[0u8; RECORD_HEADER], offset)
                    .expect("write");
            }),
        ];
        for (what, damage) in damages {
            let dir = tempfile::tempdir().expect("tempdir");
            let (seg, offset) = {
                let log = open_small(dir.path(), None);
                for i in 1..=60 {
                    log.append(vec![entry(1, i)]).expect("append");
                }
                record_at(&log, 3)
            };
            let before = segments(dir.path());
            assert!(
                before > 3,
                "the damage is in a segment that is not the last"
            );
            damage(&seg, offset);
            let Err(err) = LogFiles::open(dir.path(), SMALL, None) else {
                panic!("{what}: open cut acknowledged entries after a broken record");
            };
            assert!(
                matches!(&err, StoreError::CorruptLog { path, offset: at, .. }
                    if *path == seg && *at == offset),
                "{what}: the error names the file and offset: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&seg.display().to_string()) && msg.contains(&format!("byte {offset}")),
                "{what}: the message names the file and offset: {msg}"
            );
            assert_eq!(
                segments(dir.path()),
                before,
                "{what}: no segment was removed"
            );
        }
    }

    #[test]
    fn segments_left_by_an_interrupted_truncation_are_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let saved: Vec<(PathBuf, Vec<u8>)> = {
            let log = open_small(dir.path(), None);
            for i in 1..=40 {
                log.append(vec![entry(1, i)]).expect("append");
            }
            let (cut_in, _) = record_at(&log, 21);
            let later: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir.path())
                .expect("dir")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg") && *p > cut_in)
                .map(|p| {
                    let bytes = std::fs::read(&p).expect("read");
                    (p, bytes)
                })
                .collect();
            log.truncate(21).expect("truncate");
            later
        };
        assert!(!saved.is_empty(), "entries after 21 fill later segments");
        // As if the crash came after the marker was synced but before the removals were.
        for (path, bytes) in &saved {
            std::fs::write(path, bytes).expect("restore");
        }
        let log = open_small(dir.path(), None);
        assert_eq!(ids(&log), expected(&[(1, 1..=20)]));
        assert!(saved.iter().all(|(p, _)| !p.exists()), "leftovers removed");
        log.append(entries(2, 21..=25)).expect("append");
        drop(log);
        let log = open_small(dir.path(), None);
        assert_eq!(ids(&log), expected(&[(1, 1..=20), (2, 21..=25)]));
    }

    #[test]
    fn leftovers_of_truncated_records_before_a_later_segment_are_not_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cut_in = {
            let log = open_small(dir.path(), None);
            for i in 1..=40 {
                log.append(vec![entry(1, i)]).expect("append");
            }
            let (cut_in, _) = record_at(&log, 21);
            log.truncate(21).expect("truncate");
            // A shorter entry ends inside the old one; the next does not fit and starts a
            // new segment, so the old bytes stay before it.
            log.append(vec![entry_sized(2, 21, 30)]).expect("append");
            log.append(vec![entry_sized(2, 22, 3000)]).expect("append");
            log.append(entries(2, 23..=30)).expect("append");
            cut_in
        };
        let file = File::open(&cut_in).expect("open");
        let first_of_cut = cut_in
            .file_stem()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u64>().ok())
            .expect("segment name");
        let scanned = scan(&file, first_of_cut).expect("scan").expect("header");
        assert!(
            matches!(scanned.ends, End::Broken(_)),
            "the segment ends at leftover bytes"
        );
        let log = open_small(dir.path(), None);
        assert_eq!(ids(&log), expected(&[(1, 1..=20), (2, 21..=30)]));
    }

    #[test]
    fn a_spare_renamed_over_an_open_segment_takes_its_place_for_reads_and_truncation() {
        const LARGER: u64 = 64 * 1024;
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = open_small(dir.path(), None);
            for i in 1..=30 {
                log.append(vec![entry(1, i)]).expect("append");
            }
        }
        // Restarted with larger segments: the small ones stay as they are.
        let log = LogFiles::open(dir.path(), LARGER, None).expect("reopen");
        // Too big for the last small segment: a new one, and a spare prepared behind it.
        log.append(vec![entry_sized(1, 31, 4000)]).expect("append");
        let small_last = lock(&log.inner.index).positions[29].segment;
        assert!(small_last > 1, "entries 1..=30 span several small segments");
        // The small segment becomes empty and active; the next entry does not fit in
        // it, so the spare is renamed over its file.
        log.truncate(small_last).expect("truncate");
        log.append(vec![entry_sized(2, small_last, 4000)])
            .expect("append");
        {
            let mut index = lock(&log.inner.index);
            index.cache.clear();
            index.cache_bytes = 0;
        }
        let read = log.entries(small_last, small_last + 1).expect("read");
        assert_eq!(
            read.iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect::<Vec<_>>(),
            vec![(2, small_last)],
            "the entry is read from the file now at the segment's path"
        );
        log.truncate(small_last).expect("truncate");
        drop(log);
        let log = LogFiles::open(dir.path(), LARGER, None).expect("reopen");
        assert_eq!(
            ids(&log),
            expected(&[(1, 1..=small_last - 1)]),
            "the truncation reached the file at the segment's path"
        );
    }

    fn open_faulty(dir: &Path) -> (LogFiles, FaultFs) {
        let fs = FaultFs::default();
        let log = LogFiles::open_on(Arc::new(fs.clone()), dir, SMALL, None).expect("open");
        (log, fs)
    }

    /// Drops the cached entries, so reads come from the files.
    fn uncache(log: &LogFiles) {
        let mut index = lock(&log.inner.index);
        index.cache.clear();
        index.cache_bytes = 0;
    }

    /// Whether `got` is `1..=n` of term 1 with `n` in `at_least..=at_most`.
    fn is_prefix(got: &[(u64, u64)], at_least: u64, at_most: u64) -> bool {
        let n = got.len() as u64;
        (at_least..=at_most).contains(&n) && got == expected(&[(1, 1..=n)])
    }

    #[test]
    fn a_failed_fsync_poisons_the_log_and_its_entries_never_show() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, fs) = open_faulty(dir.path());
        log.append(entries(1, 1..=3)).expect("append");
        fs.inject(Op::Sync, 1, Fault::Eio);
        let err = log.append(entries(1, 4..=5)).expect_err("its fsync failed");
        assert!(fs.fired(), "the append's fsync was the one that failed");
        assert!(
            matches!(&err, StoreError::LogIo { source, .. } if source.raw_os_error() == Some(5)),
            "{err}"
        );
        assert_eq!(log.last_log_id().map(|l| l.index), Some(3));
        assert_eq!(
            ids(&log),
            expected(&[(1, 1..=3)]),
            "failed entries are not read"
        );
        // The fault was one-shot: a retried fsync would succeed now, without the pages
        // the failed one may have dropped. The log must not retry and carry on.
        for retry in [entries(1, 4..=5), entries(1, 4..=4)] {
            let err = log
                .append(retry)
                .expect_err("a poisoned log takes no appends");
            assert!(matches!(err, StoreError::LogPoisoned(_)), "{err}");
        }
        assert!(matches!(log.truncate(2), Err(StoreError::LogPoisoned(_))));
        assert!(matches!(log.purge(1), Err(StoreError::LogPoisoned(_))));
        uncache(&log);
        assert_eq!(ids(&log), expected(&[(1, 1..=3)]), "reads still work");
        drop(log);
        let log = open_small(dir.path(), None);
        assert!(is_prefix(&ids(&log), 3, 5), "{:?}", ids(&log));
    }

    #[test]
    fn a_short_write_fails_the_append_and_leaves_only_whole_records() {
        for new_segment in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (log, fs) = open_faulty(dir.path());
            log.append(entries(1, 1..=3)).expect("append");
            // Three records, or enough to need a new segment.
            let batch = if new_segment { 4..=30 } else { 4..=6 };
            let last_tried = *batch.end();
            fs.inject(Op::Write, 1, Fault::Short);
            let err = log.append(entries(1, batch)).expect_err("short write");
            assert!(fs.fired());
            assert!(
                matches!(&err, StoreError::LogIo { source, .. }
                    if source.kind() == std::io::ErrorKind::StorageFull),
                "{err}"
            );
            assert_eq!(ids(&log), expected(&[(1, 1..=3)]), "nothing half-visible");
            assert!(matches!(
                log.append(entries(1, 4..=4)),
                Err(StoreError::LogPoisoned(_))
            ));
            drop(log);
            let log = open_small(dir.path(), None);
            let got = ids(&log);
            assert!(is_prefix(&got, 3, last_tried), "{got:?}");
            // Whatever whole records were found, the log goes on after them.
            let next = got.len() as u64 + 1;
            log.append(entries(1, next..=next + 1)).expect("append");
            drop(log);
            let log = open_small(dir.path(), None);
            assert!(is_prefix(&ids(&log), next + 1, next + 1));
        }
    }

    #[test]
    fn no_space_fails_the_append_clearly_and_reads_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = open_small(dir.path(), None);
            log.append(entries(1, 1..=10)).expect("append");
        }
        let (log, fs) = open_faulty(dir.path());
        fs.inject(Op::Write, 1, Fault::NoSpace);
        // Larger than a segment: prepared on the spot, where the disk is found full.
        let err = log
            .append(vec![entry_sized(1, 11, 3000)])
            .expect_err("disk full");
        let seg = segment_path(dir.path(), 11);
        assert!(
            matches!(&err, StoreError::LogIo { path, source }
                if *path == seg && source.kind() == std::io::ErrorKind::StorageFull),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&seg.display().to_string()) && msg.contains("No space left"),
            "{msg}"
        );
        uncache(&log);
        assert_eq!(ids(&log), expected(&[(1, 1..=10)]), "reads still work");
        assert_eq!(log.last_log_id().map(|l| l.index), Some(10));
    }

    /// For k = 1, 2, …: a fresh log built by `setup`, a crash planned at the kth file
    /// operation of `run`, then the log reopened from its files and handed to `check`
    /// with what `run` returned; until `run` finishes before its kth operation. Returns
    /// how many crash points were tried.
    fn crash_at_each_point<T>(
        last_purged: Option<LogId>,
        setup: impl Fn(&LogFiles),
        run: impl Fn(&LogFiles) -> T,
        check: impl Fn(&Path, LogFiles, T),
    ) -> u64 {
        for k in 1.. {
            let dir = tempfile::tempdir().expect("tempdir");
            let (log, fs) = open_faulty(dir.path());
            setup(&log);
            fs.inject(Op::Any, k, Fault::Crash);
            let out = run(&log);
            let crashed = fs.fired();
            drop(log);
            if !crashed {
                return k - 1;
            }
            let log = open_small(dir.path(), last_purged);
            check(dir.path(), log, out);
        }
        unreachable!("the loop returns")
    }

    #[test]
    fn a_crash_anywhere_in_appends_keeps_exactly_a_prefix_with_every_acknowledged_entry() {
        let points = crash_at_each_point(
            None,
            |log| {
                for i in 1..=10 {
                    log.append(vec![entry(1, i)]).expect("append");
                }
            },
            |log| {
                // Appends within a segment, across into a new one, and of a single entry.
                let mut acked = 10;
                for (from, to) in [(11, 12), (13, 30), (31, 31), (32, 40)] {
                    if log.append(entries(1, from..=to)).is_err() {
                        break;
                    }
                    acked = to;
                }
                acked
            },
            |dir, log, acked| {
                let got = ids(&log);
                assert!(is_prefix(&got, acked, 40), "acked {acked}, found {got:?}");
                let next = got.len() as u64 + 1;
                log.append(entries(1, next..=next + 2)).expect("append");
                drop(log);
                let log = open_small(dir, None);
                assert!(is_prefix(&ids(&log), next + 2, next + 2));
            },
        );
        assert!(points > 10, "every operation of the appends: {points}");
    }

    #[test]
    fn a_crash_anywhere_in_truncate_keeps_every_entry_before_the_cut() {
        let points = crash_at_each_point(
            None,
            |log| {
                for i in 1..=40 {
                    log.append(vec![entry(1, i)]).expect("append");
                }
            },
            |log| log.truncate(21).is_ok(),
            |dir, log, done| {
                // Unfinished, it may have removed some of the (uncommitted) entries.
                let got = ids(&log);
                let most = if done { 20 } else { 40 };
                assert!(
                    is_prefix(&got, 20, most),
                    "truncation done: {done}, found {got:?}"
                );
                if got.len() > 20 {
                    log.truncate(21).expect("truncate");
                }
                log.append(entries(2, 21..=25)).expect("append");
                drop(log);
                let log = open_small(dir, None);
                assert_eq!(ids(&log), expected(&[(1, 1..=20), (2, 21..=25)]));
            },
        );
        assert!(points >= 3, "marker, sync and removals: {points}");
    }

    #[test]
    fn a_crash_anywhere_in_a_truncate_across_several_segments_keeps_a_prefix() {
        let points = crash_at_each_point(
            None,
            |log| {
                for i in 1..=80 {
                    log.append(vec![entry(1, i)]).expect("append");
                }
            },
            |log| log.truncate(21).is_ok(),
            |dir, log, done| {
                let got = ids(&log);
                let most = if done { 20 } else { 80 };
                assert!(
                    is_prefix(&got, 20, most),
                    "truncation done: {done}, found {got:?}"
                );
                if got.len() > 20 {
                    log.truncate(21).expect("truncate");
                }
                log.append(entries(2, 21..=25)).expect("append");
                drop(log);
                let log = open_small(dir, None);
                assert_eq!(ids(&log), expected(&[(1, 1..=20), (2, 21..=25)]));
            },
        );
        assert!(
            points >= 5,
            "a removal of each later segment, marker, sync: {points}"
        );
    }

    #[test]
    fn a_crash_anywhere_in_purge_keeps_every_entry_after_the_purge_point() {
        let points = crash_at_each_point(
            purged(40),
            |log| {
                for i in 1..=60 {
                    log.append(vec![entry(1, i)]).expect("append");
                }
            },
            |log| log.purge(40).is_ok(),
            |dir, log, _| {
                assert_eq!(ids(&log), expected(&[(1, 41..=60)]));
                log.append(entries(1, 61..=62)).expect("append");
                drop(log);
                let log = open_small(dir, purged(40));
                assert_eq!(ids(&log), expected(&[(1, 41..=62)]));
            },
        );
        assert!(points >= 2, "segment removals: {points}");
    }

    #[test]
    fn a_preparation_an_append_waits_for_is_no_longer_paced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prepared.seg");
        let fs = FaultFs::default();
        let size = 2 * PACED_CHUNK as u64;
        // Paced, every chunk is synced: the second sync comes before the end.
        fs.inject(Op::Sync, 2, Fault::Eio);
        let paced = prepare_segment(&fs, &path, size, Some(&AtomicBool::new(false)));
        assert!(paced.is_err() && fs.fired(), "a sync per paced chunk");
        // Hurried, the only sync is the last one.
        fs.inject(Op::Sync, 2, Fault::Eio);
        prepare_segment(&fs, &path, size, Some(&AtomicBool::new(true))).expect("prepare");
        assert!(!fs.fired(), "no sync before the last");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), size);
    }

    #[test]
    fn damage_in_a_purged_segment_not_yet_removed_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (seg, offset, second) = {
            let log = open_small(dir.path(), None);
            for i in 1..=60 {
                log.append(vec![entry(1, i)]).expect("append");
            }
            let (seg, offset) = record_at(&log, 3);
            let second = lock(&log.inner.index)
                .positions
                .iter()
                .find(|p| p.segment != 1)
                .expect("a second segment")
                .segment;
            (seg, offset, second)
        };
        flip_byte(&seg, offset + RECORD_HEADER as u64 + 5);
        // Entries before the second segment are purged, its file not yet removed.
        let log = open_small(dir.path(), purged(second - 1));
        assert_eq!(ids(&log), expected(&[(1, second..=60)]));
        assert!(!seg.exists(), "the purged segment is removed");
        log.append(entries(1, 61..=62)).expect("append");
        drop(log);
        let log = open_small(dir.path(), purged(second - 1));
        assert_eq!(ids(&log), expected(&[(1, second..=62)]));
    }
}
