//! Snapshot files: the current snapshot, files being written or received, and the data
//! handle openraft reads snapshots through. Nothing here holds a snapshot in memory.
//!
//! A file is version 2 ([`kv_core::snapshot_file`]): head, meta, data, trailer with a
//! SHA-256. Files written before it (version 1: the postcard encoding of meta and data)
//! are read in place, without a checksum.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use kv_core::snapshot_file::{self as layout, Trailer, HEAD_LEN, TRAILER_LEN};
use ring::digest::{self, SHA256};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::typ::SnapshotMeta;
use crate::StoreError;

/// Bytes read from the start of a version-1 file to decode its meta (it comes first,
/// and holds little more than the membership).
const V1_META_PREFIX: u64 = 1024 * 1024;

/// Buffer of the writers and readers of snapshot files.
const IO_BUFFER: usize = 1024 * 1024;

/// A snapshot file opened for reading: its meta, and where its data lies.
pub(crate) struct Opened {
    pub meta: SnapshotMeta,
    pub file: File,
    pub start: u64,
    pub len: u64,
    /// The SHA-256 the file ends with (version 2 only).
    pub sha256: Option<[u8; 32]>,
}

impl Opened {
    /// Reads the layout of `file`: a version-2 head and trailer, or a version-1 file.
    pub fn read(mut file: File) -> Result<Self, StoreError> {
        let size = file.metadata()?.len();
        let mut head = [0; HEAD_LEN as usize];
        let got = read_up_to(&mut file, &mut head)?;
        let parsed = (got == head.len())
            .then(|| layout::parse_head(&head))
            .flatten();
        match parsed {
            Some(Err(version)) => Err(StoreError::Corrupt(format!(
                "snapshot file version {version} is not one this node reads"
            ))),
            Some(Ok(meta_len)) => {
                let start = HEAD_LEN + u64::from(meta_len);
                if size < start + TRAILER_LEN {
                    return Err(StoreError::Corrupt(
                        "snapshot file is shorter than its head and trailer".into(),
                    ));
                }
                let mut raw = vec![0; meta_len as usize];
                file.read_exact_at(&mut raw, HEAD_LEN)?;
                let meta = postcard::from_bytes(&raw)?;
                let mut end = [0; TRAILER_LEN as usize];
                file.read_exact_at(&mut end, size - TRAILER_LEN)?;
                let trailer = Trailer::parse(&end).ok_or_else(|| {
                    StoreError::Corrupt("snapshot file has no trailer (cut short?)".into())
                })?;
                if start + trailer.data_len + TRAILER_LEN != size {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot file is {size} bytes, its trailer says {} of data after \
                         {start}",
                        trailer.data_len
                    )));
                }
                Ok(Self {
                    meta,
                    file,
                    start,
                    len: trailer.data_len,
                    sha256: Some(trailer.sha256),
                })
            }
            None => {
                // Version 1: postcard meta, then the data as one byte string.
                let mut prefix = vec![];
                Window::new(&file, 0, size.min(V1_META_PREFIX)).read_to_end(&mut prefix)?;
                let (meta, rest) = postcard::take_from_bytes::<SnapshotMeta>(&prefix)?;
                let (len, rest) = postcard::take_from_bytes::<u64>(rest)?;
                let start = (prefix.len() - rest.len()) as u64;
                if start + len != size {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot file is {size} bytes, its data ends at {}",
                        start + len
                    )));
                }
                Ok(Self {
                    meta,
                    file,
                    start,
                    len,
                    sha256: None,
                })
            }
        }
    }

    /// Checks the file against its SHA-256, reading it whole.
    pub fn verify(&self) -> Result<(), StoreError> {
        let Some(expected) = self.sha256 else {
            return Ok(());
        };
        let hash = sha256_of(&self.file, self.start + self.len + 8, &[])?;
        if hash.as_ref() != expected {
            return Err(StoreError::Corrupt(
                "snapshot file does not match its SHA-256".into(),
            ));
        }
        Ok(())
    }

    /// A reader over the data.
    pub fn data(&self) -> impl Read + '_ {
        BufReader::with_capacity(IO_BUFFER, Window::new(&self.file, self.start, self.len))
    }
}

/// The SHA-256 of the first `len` bytes of `file`, then of `extra`.
fn sha256_of(file: &File, len: u64, extra: &[u8]) -> io::Result<digest::Digest> {
    let mut hash = digest::Context::new(&SHA256);
    let mut reader = BufReader::with_capacity(IO_BUFFER, Window::new(file, 0, len));
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        hash.update(chunk);
        let n = chunk.len();
        reader.consume(n);
    }
    hash.update(extra);
    Ok(hash.finish())
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// `len` bytes of a file from `start`, read with positioned reads (no shared cursor).
pub(crate) struct Window<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> Window<'a> {
    pub fn new(file: &'a File, start: u64, len: u64) -> Self {
        Self {
            file,
            pos: start,
            end: start + len,
        }
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "snapshot file ends before its data",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Writes a version-2 file: the head and meta at creation, the data through `Write`,
/// the trailer at [`FileWriter::finish`]; hashing everything as it goes.
pub(crate) struct FileWriter {
    out: BufWriter<File>,
    hash: digest::Context,
    data_len: u64,
}

impl FileWriter {
    pub fn create(path: &Path, meta: &SnapshotMeta) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let meta = postcard::to_stdvec(meta)?;
        let meta_len = u32::try_from(meta.len())
            .map_err(|_| StoreError::Invariant("snapshot meta over 4 GiB"))?;
        let mut writer = Self {
            out: BufWriter::with_capacity(IO_BUFFER, file),
            hash: digest::Context::new(&SHA256),
            data_len: 0,
        };
        writer.raw(&layout::head(meta_len))?;
        writer.raw(&meta)?;
        Ok(writer)
    }

    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes)
    }

    /// Writes the trailer and fsyncs the file.
    pub fn finish(mut self) -> Result<File, StoreError> {
        self.raw(&Trailer::len_bytes(self.data_len))?;
        let sha = self.hash.clone().finish();
        self.out.write_all(sha.as_ref())?;
        self.out.write_all(layout::END)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(file)
    }
}

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.raw(buf)?;
        self.data_len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A snapshot's data as openraft reads it: a window of a file. Only the file
/// `begin_receiving_snapshot` makes is writable (openraft's own chunk receiver; the raft
/// listener receives into [`Incoming`] instead).
pub struct SnapshotData {
    file: Option<tokio::fs::File>,
    start: u64,
    len: u64,
    pos: u64,
    /// A seek was started and its position is not known yet.
    seeking: bool,
    writable: bool,
}

impl SnapshotData {
    /// The data of an opened snapshot file.
    pub(crate) fn of(mut opened: Opened) -> Result<Self, StoreError> {
        // Reading the layout moved the cursor; reads start at the data.
        opened.file.seek(SeekFrom::Start(opened.start))?;
        Ok(Self {
            file: Some(tokio::fs::File::from_std(opened.file)),
            start: opened.start,
            len: opened.len,
            pos: 0,
            seeking: false,
            writable: false,
        })
    }

    /// No data: what a failed build hands openraft, which reads only its meta.
    pub(crate) fn empty() -> Self {
        Self {
            file: None,
            start: 0,
            len: 0,
            pos: 0,
            seeking: false,
            writable: false,
        }
    }

    /// A new empty file to be written from the start.
    pub(crate) fn writable(file: File) -> Self {
        Self {
            file: Some(tokio::fs::File::from_std(file)),
            start: 0,
            len: 0,
            pos: 0,
            seeking: false,
            writable: true,
        }
    }

    /// Bytes of data.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are no bytes of data.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file, the data's start and length, once every write has landed.
    pub(crate) async fn into_parts(mut self) -> Result<(File, u64, u64), StoreError> {
        let mut file = self
            .file
            .take()
            .ok_or(StoreError::Invariant("installing a snapshot with no data"))?;
        // tokio reports a failed background write only to the next operation.
        tokio::io::AsyncWriteExt::flush(&mut file).await?;
        Ok((file.into_std().await, self.start, self.len))
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let left = this.len.saturating_sub(this.pos);
        let Some(file) = this.file.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let want = buf
            .remaining()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(want));
        ready!(Pin::new(file).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        buf.advance(n);
        this.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let target = match position {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => this.len.checked_add_signed(d),
            SeekFrom::Current(d) => this.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        match this.file.as_mut() {
            Some(file) => {
                Pin::new(file).start_seek(SeekFrom::Start(this.start + target))?;
                this.seeking = true;
                Ok(())
            }
            None => {
                this.pos = target;
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        // tokio's file knows its position only after a seek of its own: reads move
        // `pos` here, and only a seek this type started sets it from the file.
        if let (Some(file), true) = (this.file.as_mut(), this.seeking) {
            let at = ready!(Pin::new(file).poll_complete(cx))?;
            this.pos = at.saturating_sub(this.start);
            this.seeking = false;
        }
        Poll::Ready(Ok(this.pos))
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let file = match this.file.as_mut() {
            Some(file) if this.writable => file,
            _ => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "a stored snapshot is not written to",
                )))
            }
        };
        let n = ready!(Pin::new(file).poll_write(cx, buf))?;
        this.pos += n as u64;
        this.len = this.len.max(this.pos);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().file.as_mut() {
            Some(file) => Pin::new(file).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().file.as_mut() {
            Some(file) => Pin::new(file).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// The folder of snapshot files: `current`, and temporary files that become it.
#[derive(Clone)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    /// Serializes check-and-replace, so a slow build cannot overwrite a newer install.
    lock: Arc<Mutex<()>>,
    /// The id of the current snapshot once checked against its SHA-256 (or written here).
    checked: Arc<Mutex<Option<String>>>,
}

impl SnapshotFiles {
    /// The folder `dir`, without the temporary files a crash left there.
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        fs::create_dir_all(&dir)?;
        for item in fs::read_dir(&dir)? {
            let path = item?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path)?;
            }
        }
        Ok(Self {
            dir,
            lock: Arc::new(Mutex::new(())),
            checked: Arc::default(),
        })
    }

    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// A temporary file named for `what`; removed at the next open if left behind.
    pub fn tmp(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}.tmp"))
    }

    /// A temporary file named for `what` that no other in this process shares, so a
    /// write a cancelled task left running never lands in another's file.
    pub fn unique_tmp(&self, what: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tmp(&format!("{what}-{n}"))
    }

    /// The current snapshot, checked against its SHA-256 the first time this process
    /// opens it (files this process wrote were hashed as they were written), so damage
    /// on disk is not sent to another node.
    pub fn open_checked(&self) -> Result<Option<Opened>, StoreError> {
        let Some(opened) = self.open_current()? else {
            return Ok(None);
        };
        let id = opened.meta.snapshot_id.clone();
        let mut checked = self
            .checked
            .lock()
            .map_err(|_| StoreError::Invariant("snapshot lock poisoned"))?;
        if checked.as_deref() != Some(id.as_str()) {
            opened.verify()?;
            *checked = Some(id);
        }
        Ok(Some(opened))
    }

    /// The current snapshot opened for reading; a missing file is no snapshot, a corrupt
    /// one an error.
    pub fn open_current(&self) -> Result<Option<Opened>, StoreError> {
        match File::open(self.current()) {
            Ok(file) => Opened::read(file).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The meta of the current snapshot.
    pub fn load_meta(&self) -> Result<Option<SnapshotMeta>, StoreError> {
        Ok(self.open_current()?.map(|o| o.meta))
    }

    /// Makes the complete, fsynced file `tmp` holding `meta` the current snapshot unless
    /// one as new is there already (then `tmp` goes); whether it did.
    pub fn promote(&self, tmp: &Path, meta: &SnapshotMeta) -> Result<bool, StoreError> {
        let _guard = self
            .lock
            .lock()
            .map_err(|_| StoreError::Invariant("snapshot lock poisoned"))?;
        if let Some(existing) = self.load_meta()? {
            // The same log id is the same state.
            if existing.last_log_id >= meta.last_log_id {
                fs::remove_file(tmp)?;
                return Ok(false);
            }
        }
        fs::rename(tmp, self.current())?;
        sync_dir(&self.dir)?;
        // Hashed as it was written or received.
        *self
            .checked
            .lock()
            .map_err(|_| StoreError::Invariant("snapshot lock poisoned"))? =
            Some(meta.snapshot_id.clone());
        Ok(true)
    }

    /// Makes `len` bytes of `data` from `start`, the data of `meta`, the current
    /// snapshot unless one as new is there: copied into a version-2 file first.
    pub fn keep(
        &self,
        meta: &SnapshotMeta,
        data: &File,
        start: u64,
        len: u64,
    ) -> Result<(), StoreError> {
        if self
            .load_meta()?
            .is_some_and(|m| m.last_log_id >= meta.last_log_id)
        {
            return Ok(());
        }
        let tmp = self.unique_tmp("keep");
        let mut out = FileWriter::create(&tmp, meta)?;
        io::copy(&mut Window::new(data, start, len), &mut out)?;
        out.finish()?;
        self.promote(&tmp, meta)?;
        Ok(())
    }

    /// Starts receiving the data of `meta` into a file of its own.
    pub fn begin(&self, meta: &SnapshotMeta) -> Result<Incoming, StoreError> {
        let path = self.unique_tmp("incoming");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let meta_raw = postcard::to_stdvec(meta)?;
        let meta_len = u32::try_from(meta_raw.len())
            .map_err(|_| StoreError::Invariant("snapshot meta over 4 GiB"))?;
        file.write_all_at(&layout::head(meta_len), 0)?;
        file.write_all_at(&meta_raw, HEAD_LEN)?;
        Ok(Incoming {
            file,
            path,
            meta: meta.clone(),
            start: HEAD_LEN + u64::from(meta_len),
            len: 0,
        })
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    Ok(File::open(dir)?.sync_all()?)
}

/// A snapshot being received chunk by chunk into its own file.
pub struct Incoming {
    file: File,
    path: PathBuf,
    meta: SnapshotMeta,
    /// Where the data starts in the file.
    start: u64,
    /// Bytes of data received.
    len: u64,
}

impl Incoming {
    /// Bytes of data received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been received yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The snapshot being received.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Writes `data` at `offset` of the data, at most at its end; a resent chunk
    /// overwrites what it covers and drops what followed it.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        if offset > self.len {
            return Err(StoreError::Invariant(
                "a snapshot chunk past the received end",
            ));
        }
        self.file.write_all_at(data, self.start + offset)?;
        self.len = offset + data.len() as u64;
        self.file.set_len(self.start + self.len)?;
        Ok(())
    }
}

/// The raft listener's handle on the snapshot folder: where a received snapshot is made
/// durable before raft learns of it.
///
/// openraft 0.9 purges the log up to a received snapshot as soon as it queues the
/// install, while the state machine may still be writing it; a crash in between would
/// leave a log that starts after the state. So the whole snapshot is stored first, and
/// `open` installs a stored snapshot that is ahead of the state.
#[derive(Clone)]
pub struct SnapshotStore(pub(crate) SnapshotFiles);

impl SnapshotStore {
    /// Starts receiving the snapshot `meta` into a file. Blocking.
    pub fn begin(&self, meta: &SnapshotMeta) -> Result<Incoming, StoreError> {
        self.0.begin(meta)
    }

    /// Completes a received snapshot: hashed, trailer written, fsynced, checked to
    /// decode whole, and made the current snapshot unless one as new is stored. Returns its data for raft to
    /// install. Blocking: reads the file once to hash it.
    pub fn finish(&self, incoming: Incoming) -> Result<SnapshotData, StoreError> {
        let Incoming {
            mut file,
            path,
            meta,
            start,
            len,
        } = incoming;
        let len_bytes = Trailer::len_bytes(len);
        let hash = sha256_of(&file, start + len, &len_bytes)?;
        file.seek(SeekFrom::Start(start + len))?;
        let mut trailer = Vec::with_capacity(TRAILER_LEN as usize);
        trailer.extend_from_slice(&len_bytes);
        trailer.extend_from_slice(hash.as_ref());
        trailer.extend_from_slice(layout::END);
        file.write_all(&trailer)?;
        file.sync_all()?;
        // Refused before it becomes the current snapshot, which `open` would install.
        crate::state_machine::validate(BufReader::with_capacity(
            IO_BUFFER,
            Window::new(&file, start, len),
        ))?;
        let data = SnapshotData::of(Opened {
            meta: meta.clone(),
            file: file.try_clone()?,
            start,
            len,
            sha256: None,
        })?;
        self.0.promote(&path, &meta)?;
        Ok(data)
    }

    /// Stores `data` as the snapshot `meta` (received whole). Blocking.
    pub fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<SnapshotData, StoreError> {
        let mut incoming = self.begin(meta)?;
        incoming.write_at(0, data)?;
        self.finish(incoming)
    }
}

/// Decodes a stream of postcard values from a reader through a buffer that holds a few
/// of them at a time, so memory follows the largest value rather than the stream.
pub(crate) struct Decoder<R> {
    reader: R,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

/// Bytes read at a time.
const DECODE_WINDOW: usize = 8 * 1024 * 1024;
/// The largest single value a snapshot may hold (values are far smaller; a raft frame
/// carrying any command is smaller still).
const DECODE_MAX: usize = 512 * 1024 * 1024;

impl<R: Read> Decoder<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buf: Vec::new(),
            pos: 0,
            eof: false,
        }
    }

    /// The next value.
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<T, StoreError> {
        loop {
            match postcard::take_from_bytes::<T>(&self.buf[self.pos..]) {
                Ok((value, rest)) => {
                    self.pos = self.buf.len() - rest.len();
                    return Ok(value);
                }
                Err(postcard::Error::DeserializeUnexpectedEnd) if !self.eof => self.fill()?,
                Err(postcard::Error::DeserializeUnexpectedEnd) => {
                    return Err(StoreError::Corrupt(
                        "snapshot data ends in the middle of a value".into(),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether every byte has been decoded.
    pub fn at_end(&mut self) -> Result<bool, StoreError> {
        if self.pos == self.buf.len() && !self.eof {
            self.fill()?;
        }
        Ok(self.pos == self.buf.len())
    }

    /// Bytes left once decoding stopped early.
    pub fn rest_len(&mut self) -> Result<u64, StoreError> {
        let mut left = (self.buf.len() - self.pos) as u64;
        left += io::copy(&mut self.reader, &mut io::sink())?;
        Ok(left)
    }

    fn fill(&mut self) -> Result<(), StoreError> {
        self.buf.drain(..self.pos);
        self.pos = 0;
        let have = self.buf.len();
        if have >= DECODE_MAX {
            return Err(StoreError::Corrupt(format!(
                "a value in the snapshot is over {DECODE_MAX} bytes"
            )));
        }
        self.buf.resize(have + DECODE_WINDOW, 0);
        let mut got = 0;
        while got < DECODE_WINDOW {
            match self.reader.read(&mut self.buf[have + got..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(e.into());
                }
            }
        }
        self.buf.truncate(have + got);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(1, 1),
                index,
            )),
            last_membership: Default::default(),
            snapshot_id: format!("1-{index}-0"),
        }
    }

    /// Snapshot data that decodes: a clock and one entry with a value of `n` bytes.
    fn valid_data(n: usize) -> Vec<u8> {
        let entry = kv_core::Entry {
            value: vec![b'v'; n],
            revision: 1,
            create_revision: 1,
            version: 1,
            expires_at_ms: None,
        };
        let mut data =
            postcard::to_stdvec(&(7u64, 1usize, ("key", entry), 0usize)).expect("encode");
        data.extend([0, 0, 0, 0]);
        data
    }

    fn data_of(opened: &Opened) -> Vec<u8> {
        let mut out = vec![];
        opened.data().read_to_end(&mut out).expect("read");
        out
    }

    #[test]
    fn a_written_file_reads_back_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SnapshotFiles::open(dir.path().to_owned()).expect("open");
        let tmp = files.tmp("t");
        let mut w = FileWriter::create(&tmp, &meta(5)).expect("create");
        w.write_all(b"hello snapshot").expect("write");
        w.finish().expect("finish");
        assert!(files.promote(&tmp, &meta(5)).expect("promote"));
        let opened = files.open_current().expect("open").expect("a snapshot");
        assert_eq!(opened.meta, meta(5));
        assert_eq!(data_of(&opened), b"hello snapshot");
        opened.verify().expect("verifies");
    }

    #[test]
    fn a_flipped_byte_is_refused_by_the_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SnapshotFiles::open(dir.path().to_owned()).expect("open");
        let store = SnapshotStore(files.clone());
        store.save(&meta(5), &valid_data(5000)).expect("save");
        let path = dir.path().join("current");
        let mut raw = fs::read(&path).expect("read");
        raw[HEAD_LEN as usize + 100] ^= 1;
        fs::write(&path, &raw).expect("write");
        let opened = files.open_current().expect("open").expect("a snapshot");
        match opened.verify() {
            Err(StoreError::Corrupt(why)) => assert!(why.contains("SHA-256"), "{why}"),
            other => panic!("expected corruption, got {other:?}"),
        }
        // Cut short: no trailer.
        fs::write(&path, &raw[..raw.len() - 3]).expect("write");
        assert!(matches!(files.open_current(), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_version_1_file_is_read_in_place() {
        #[derive(serde::Serialize)]
        struct V1<'a> {
            meta: &'a SnapshotMeta,
            #[serde(with = "serde_bytes")]
            data: &'a [u8],
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SnapshotFiles::open(dir.path().to_owned()).expect("open");
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let raw = postcard::to_stdvec(&V1 {
            meta: &meta(9),
            data: &data,
        })
        .expect("encode");
        fs::write(dir.path().join("current"), raw).expect("write");
        let opened = files.open_current().expect("open").expect("a snapshot");
        assert_eq!(opened.meta, meta(9));
        assert_eq!(data_of(&opened), data);
        opened.verify().expect("nothing to verify");
    }

    #[test]
    fn a_resent_chunk_overwrites_and_an_older_snapshot_is_not_promoted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SnapshotFiles::open(dir.path().to_owned()).expect("open");
        let store = SnapshotStore(files.clone());
        let data = valid_data(100);
        let mut incoming = store.begin(&meta(8)).expect("begin");
        incoming.write_at(0, &data[..40]).expect("write");
        incoming.write_at(40, &[9; 80]).expect("write");
        incoming.write_at(40, &data[40..]).expect("resend");
        assert!(incoming.write_at(200, b"x").is_err(), "past the end");
        store.finish(incoming).expect("finish");
        let opened = files.open_current().expect("open").expect("a snapshot");
        assert_eq!(data_of(&opened), data);
        opened.verify().expect("verifies");
        store.save(&meta(7), &valid_data(1)).expect("save");
        let opened = files.open_current().expect("open").expect("a snapshot");
        assert_eq!(opened.meta, meta(8), "the newer one stays");
        assert_eq!(
            fs::read_dir(dir.path()).expect("dir").count(),
            1,
            "no tmp left"
        );
    }

    #[test]
    fn a_received_snapshot_that_does_not_decode_is_never_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SnapshotFiles::open(dir.path().to_owned()).expect("open");
        let store = SnapshotStore(files.clone());
        let bad = [valid_data(10), vec![1, 2]].concat();
        assert!(matches!(
            store.save(&meta(3), &bad),
            Err(StoreError::Corrupt(_))
        ));
        assert!(files.open_current().expect("open").is_none());
    }

    #[test]
    fn the_decoder_reads_values_larger_than_its_window() {
        let big = vec![3u8; DECODE_WINDOW * 2 + 5];
        let mut raw =
            postcard::to_stdvec(&(1u64, serde_bytes::ByteBuf::from(big.clone()))).expect("encode");
        raw.extend(postcard::to_stdvec(&"tail").expect("encode"));
        let mut d = Decoder::new(&raw[..]);
        let (n, b): (u64, serde_bytes::ByteBuf) = d.next().expect("big");
        assert_eq!((n, b.into_vec()), (1, big));
        assert!(!d.at_end().expect("more"));
        assert_eq!(d.next::<String>().expect("tail"), "tail");
        assert!(d.at_end().expect("end"));
        assert!(matches!(d.next::<u8>(), Err(StoreError::Corrupt(_))));
    }
}
