//! The file-system seam.
//!
//! Every call by which the engine changes what is on disk — creating a file, writing at an
//! offset, changing a length, `fdatasync`, renaming, removing, syncing a directory — goes
//! through a [`Vfs`]. The real implementation, [`StdVfs`], is a thin layer over `std::fs`.
//! Tests substitute one that injects `ENOSPC`/`EIO` on the N-th call, or that remembers what
//! each file held at its last `sync_data` so that a simulated power cut can roll the files back
//! to it: a SIGKILL test cannot catch a missing fsync (the page cache survives the process),
//! but that can.
//!
//! Reads do not go through the seam: the engine reads segments through memory maps of the
//! real file ([`VfsFile::as_file`]), since that is where its speed comes from. A test
//! implementation must therefore keep the real files' bytes equal to what it reports. Nor do
//! appends to a segment whose space [`VfsFile::allocate`] reserved: those are copied into a
//! writable map of the file (no system call per transaction). An implementation that must see
//! every byte written keeps the default `allocate`, which declines. Because those maps make a
//! lying implementation able to crash the process (a store past a file's end is SIGBUS),
//! [`VfsFile`] is an `unsafe trait`: its `# Safety` section lists what an implementation
//! promises, and the engine also checks what it cheaply can (DESIGN.md §2.3).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How [`Vfs::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read an existing file.
    Read,
    /// Read and write an existing file.
    ReadWrite,
    /// Create a new file for reading and writing; fails if it exists.
    CreateNew,
}

/// A file opened through a [`Vfs`].
///
/// # Safety
///
/// The engine reads segments through memory maps of [`as_file`](Self::as_file) and, after
/// `allocate` returns `Ok(true)`, writes through a writable map of it; touching a mapped page
/// beyond the real file's end raises SIGBUS, and a mapped byte that changes while a reader
/// borrows it is undefined behaviour. An implementation must therefore guarantee that
/// `as_file` is the file `write_all_at` and `set_len` change; that `size` is never more than
/// its real length; that `Ok(true)` from `allocate` means the real file now covers
/// `offset..offset + len` on reserved blocks; and that nothing but these calls shrinks the file
/// or changes bytes the engine has written.
pub unsafe trait VfsFile: Send + Sync + fmt::Debug {
    /// Writes all of `buf` at `offset` (pwrite), extending the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn size(&self) -> io::Result<u64>;
    /// The real file, for memory maps and locks. Never write through it.
    fn as_file(&self) -> &File;
    /// Allocates disk blocks for `len` bytes at `offset`, extending the file to cover them
    /// (`fallocate`). `Ok(true)` means the engine may then write those bytes through a
    /// writable memory map of [`as_file`](Self::as_file) instead of calling
    /// [`write_all_at`](Self::write_all_at), so this seam does not see them; `Ok(false)` (the
    /// default: not supported, or an implementation that must see every write, as a
    /// fault-injecting one does) makes it keep writing with `write_all_at`.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<bool> {
        let _ = (offset, len);
        Ok(false)
    }
}

/// A file system as the engine sees it. See the module documentation.
pub trait Vfs: Send + Sync + fmt::Debug {
    /// Opens `path` as `mode` says.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// The paths of the entries in a directory, in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdVfs;

/// A file of [`StdVfs`].
#[derive(Debug)]
pub struct StdFile(File);

// SAFETY: every method acts on the one `File` that `as_file` returns, `size` is its real
// length, and `allocate` is `fallocate` with mode 0, which extends the file over reserved blocks.
unsafe impl VfsFile for StdFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn as_file(&self) -> &File {
        &self.0
    }
    #[cfg(target_os = "linux")]
    fn allocate(&self, offset: u64, len: u64) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Ok(false);
        };
        // SAFETY: fallocate reads no memory of ours; the descriptor is open (we own the File).
        let r = unsafe { libc::fallocate(self.0.as_raw_fd(), 0, offset, len) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // The file system cannot: write with pwrite as before.
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
            _ => Err(e),
        }
    }
}

/// Opens `path` with `o`, refusing anything but a regular file. On Linux the open does not
/// wait: a FIFO planted in the database directory (as `MANIFEST`, `LOCK` or a segment) would
/// otherwise block a read-only open until someone writes into it. (`O_NONBLOCK` changes
/// nothing for a regular file.)
pub(crate) fn open_regular_file(o: &mut OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK);
    }
    let f = o.open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(f)
}

impl Vfs for StdVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::CreateNew => o.read(true).write(true).create_new(true),
        };
        Ok(Box::new(StdFile(open_regular_file(&mut o, path)?)))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect()
    }
}
