//! The file operations of the raft log behind a small trait, so tests can make them fail
//! on purpose: a failed fsync, a short write, a full disk, a crash between two steps.
//!
//! Production uses [`StdFs`], held once by the log as a trait object: a virtual call
//! next to each system call, and no allocation per append.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// One open segment file: positioned reads and writes, and syncs.
pub(crate) trait SegmentFile: Send + Sync {
    /// Writes some of `buf` at `offset` and says how much, as `pwrite` does.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Reads some bytes at `offset` into `buf` and says how many, as `pread` does.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and metadata durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;
    /// The file's size in bytes.
    fn size(&self) -> io::Result<u64>;

    /// Writes all of `buf` at `offset`; a write that stores nothing is an error.
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Fills `buf` from `offset`; the end of the file before that is an error.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// How the log opens its files and changes its directory.
pub(crate) trait LogFs: Send + Sync {
    /// Opens `path` for reading and writing; `create` makes it, emptied if it exists.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn SegmentFile>>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file at `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
pub(crate) struct StdFs;

impl SegmentFile for File {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        FileExt::write_at(self, buf, offset)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl LogFs for StdFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)?;
        Ok(Arc::new(file))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A file system over real files that fails on command.
#[cfg(test)]
pub(crate) mod fault {
    use std::fs::File;
    use std::io;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::{LogFs, SegmentFile, StdFs};

    /// Linux's errno for a full disk.
    const ENOSPC: i32 = 28;
    /// Linux's errno for an I/O error (what a failed writeback reports).
    const EIO: i32 = 5;

    /// Which operations a planned fault counts.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(crate) enum Op {
        Write,
        Sync,
        /// Every write, sync, open, rename, removal and directory sync.
        Any,
    }

    /// What happens at the planned operation.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(crate) enum Fault {
        /// It fails with EIO, as an fsync does after writeback lost pages.
        Eio,
        /// The disk is full: it fails with ENOSPC, and so does every later write.
        NoSpace,
        /// A write stores half its bytes and says so; the disk is then full.
        Short,
        /// The machine stops: it does not happen (a write stores half its bytes first),
        /// and neither does any later operation.
        Crash,
    }

    #[derive(Default)]
    struct State {
        ops: u64,
        writes: u64,
        syncs: u64,
        /// The fault, its kind of operation and the count of that kind it fires at.
        plan: Option<(Op, u64, Fault)>,
        full: bool,
        crashed: bool,
    }

    /// What one operation does.
    enum Fate {
        Proceed,
        Fail(io::Error),
        /// Write the first half, then report that (`Ok`) or an error.
        Half(Option<io::Error>),
    }

    /// Counts the log's operations on real files and fails the planned one. The spare
    /// segment's background preparation is not counted, so counts are deterministic.
    #[derive(Clone, Default)]
    pub(crate) struct FaultFs {
        state: Arc<Mutex<State>>,
    }

    impl FaultFs {
        /// Plans `fault` at the `n`th operation of kind `op` from now (1 is the next).
        pub(crate) fn inject(&self, op: Op, n: u64, fault: Fault) {
            let mut s = self.lock();
            let at = match op {
                Op::Write => s.writes,
                Op::Sync => s.syncs,
                Op::Any => s.ops,
            } + n;
            s.plan = Some((op, at, fault));
        }

        /// Whether the planned fault has fired.
        pub(crate) fn fired(&self) -> bool {
            self.lock().plan.is_none()
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        fn fate(&self, op: Op, counted: bool) -> Fate {
            let mut s = self.lock();
            if s.crashed {
                return Fate::Fail(io::Error::from_raw_os_error(EIO));
            }
            if s.full && op == Op::Write {
                return Fate::Fail(io::Error::from_raw_os_error(ENOSPC));
            }
            if !counted {
                return Fate::Proceed;
            }
            s.ops += 1;
            let count = match op {
                Op::Write => {
                    s.writes += 1;
                    s.writes
                }
                Op::Sync => {
                    s.syncs += 1;
                    s.syncs
                }
                Op::Any => s.ops,
            };
            let Some((kind, at, fault)) = s.plan else {
                return Fate::Proceed;
            };
            let hit = match kind {
                Op::Any => s.ops == at,
                kind => kind == op && count == at,
            };
            if !hit {
                return Fate::Proceed;
            }
            s.plan = None;
            let write = op == Op::Write;
            match fault {
                Fault::Eio => Fate::Fail(io::Error::from_raw_os_error(EIO)),
                Fault::NoSpace | Fault::Short if !write => {
                    Fate::Fail(io::Error::from_raw_os_error(ENOSPC))
                }
                Fault::NoSpace => {
                    s.full = true;
                    Fate::Fail(io::Error::from_raw_os_error(ENOSPC))
                }
                Fault::Short => {
                    s.full = true;
                    Fate::Half(None)
                }
                Fault::Crash => {
                    s.crashed = true;
                    let error = io::Error::from_raw_os_error(EIO);
                    if write {
                        Fate::Half(Some(error))
                    } else {
                        Fate::Fail(error)
                    }
                }
            }
        }

        fn check(&self, op: Op) -> io::Result<()> {
            match self.fate(op, true) {
                Fate::Proceed => Ok(()),
                Fate::Fail(e) | Fate::Half(Some(e)) => Err(e),
                Fate::Half(None) => Err(io::Error::from_raw_os_error(ENOSPC)),
            }
        }
    }

    struct FaultFile {
        file: File,
        fs: FaultFs,
        /// False for the spare, prepared on a thread of its own.
        counted: bool,
    }

    impl SegmentFile for FaultFile {
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
            match self.fs.fate(Op::Write, self.counted) {
                Fate::Proceed => SegmentFile::write_at(&self.file, buf, offset),
                Fate::Fail(e) => Err(e),
                Fate::Half(then) => {
                    let half = buf.len() / 2;
                    self.file.write_all_at(&buf[..half], offset)?;
                    then.map_or(Ok(half), Err)
                }
            }
        }

        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            SegmentFile::read_at(&self.file, buf, offset)
        }

        fn sync_data(&self) -> io::Result<()> {
            if let Fate::Fail(e) = self.fs.fate(Op::Sync, self.counted) {
                return Err(e);
            }
            self.file.sync_data()
        }

        fn sync_all(&self) -> io::Result<()> {
            if let Fate::Fail(e) = self.fs.fate(Op::Sync, self.counted) {
                return Err(e);
            }
            self.file.sync_all()
        }

        fn size(&self) -> io::Result<u64> {
            self.file.size()
        }
    }

    impl LogFs for FaultFs {
        fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn SegmentFile>> {
            let counted = !path.ends_with("spare.tmp");
            if let Fate::Fail(e) = self.fate(Op::Any, counted) {
                return Err(e);
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(create)
                .open(path)?;
            Ok(Arc::new(FaultFile {
                file,
                fs: self.clone(),
                counted,
            }))
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.check(Op::Any)?;
            StdFs.rename(from, to)
        }

        fn remove(&self, path: &Path) -> io::Result<()> {
            self.check(Op::Any)?;
            StdFs.remove(path)
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.check(Op::Any)?;
            StdFs.sync_dir(dir)
        }
    }
}
