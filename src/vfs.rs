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
    /// Drops the file's pages from the page cache, so that what is read of it next comes from
    /// the disk; `Ok(true)` if none of its pages is cached any more. Dirty pages, and pages
    /// some process has mapped and touched, stay (then `Ok(false)`).
    ///
    /// Why the engine needs it: after a failed fdatasync Linux may keep the pages it could not
    /// write in the page cache, marked clean, so reads show bytes the disk does not hold
    /// (DESIGN.md §5, §6). The default asks the kernel (`posix_fadvise(POSIX_FADV_DONTNEED)`)
    /// and checks with `mincore` over a fresh map of [`as_file`](Self::as_file); where that
    /// cannot be done it answers `Ok(false)`.
    fn drop_cached(&self) -> io::Result<bool> {
        drop_cached_pages(self.as_file())
    }
}

/// [`VfsFile::drop_cached`] for a real file.
#[cfg(target_os = "linux")]
pub(crate) fn drop_cached_pages(file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    if in_memory_fs(file)? {
        // tmpfs and ramfs keep files in the page cache alone: what it shows is the file.
        return Ok(true);
    }
    let len = file.metadata()?.len();
    // The kernel drops clean pages that no one maps as it is asked; pages still on their way
    // to the LRU lists are missed on a first pass, hence a second one before giving up.
    for _ in 0..2 {
        // SAFETY: posix_fadvise reads no memory of ours; the descriptor is open (`file` is
        // borrowed for the call).
        let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        if len == 0 || !any_page_cached(file, len)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `file` lives on tmpfs or ramfs, whose pages are the only copy of the file.
#[cfg(target_os = "linux")]
fn in_memory_fs(file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    const TMPFS_MAGIC: u32 = 0x0102_1994;
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    // SAFETY: an all-zero `statfs` is a valid value of that plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes one `statfs` into `st`, which is ours and large enough; the
    // descriptor is open (`file` is borrowed for the call).
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // `f_type` is a signed word whose width differs between targets; the magic numbers are 32
    // bits (RAMFS_MAGIC has its top bit set, so widening a 32-bit word would sign-extend it).
    #[allow(clippy::unnecessary_cast)]
    let kind = st.f_type as u32;
    Ok(kind == TMPFS_MAGIC || kind == RAMFS_MAGIC)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn drop_cached_pages(_file: &File) -> io::Result<bool> {
    Ok(false)
}

/// Whether any page of the first `len` bytes of `file` is in the page cache (`mincore`). For a
/// file this process neither owns nor may write, Linux (since 5.2) reports every page cached,
/// so such a file never passes: the safe answer. The engine's own files are both.
#[cfg(target_os = "linux")]
fn any_page_cached(file: &File, len: u64) -> io::Result<bool> {
    let Ok(len) = usize::try_from(len) else { return Ok(true) };
    // SAFETY: a read-only map that this function never reads through (only `mincore` looks at
    // its pages, and it faults none in), dropped before returning; a file that shrinks
    // meanwhile cannot make an unread map fault.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
    let mut resident = vec![0u8; len.div_ceil(page)];
    // SAFETY: the map starts on a page boundary and covers `len` bytes, and `resident` has one
    // byte for each of its pages, which is what mincore writes.
    let r = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, resident.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(resident.iter().any(|b| b & 1 != 0))
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

/// Creates `dir` and whichever of its parents are missing, and makes each new directory's entry
/// in its parent durable, from the top down.
///
/// Why: creating a directory changes its parent, and only an fsync of the parent makes that
/// change durable. Without it a database created in a new directory (or a snapshot restored
/// under a new path) could have every commit synced and still be gone after a power cut, its
/// directory with it. ext4's journal happens to commit the creation with the first fsync
/// inside; POSIX does not promise it, and other file systems need not do it.
pub(crate) fn create_dir_durably(vfs: &dyn Vfs, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && fs::symlink_metadata(at).is_err() {
        missing.push(at);
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    vfs.create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        vfs.sync_dir(parent)?;
    }
    Ok(())
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// What the engine relies on: pages a process has mapped and touched stay (and say so),
    /// and once nothing holds them the file reads back the same from the disk.
    #[test]
    fn drop_cached_pages_drops_what_nothing_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_data().unwrap();
        let memory = in_memory_fs(&file).unwrap();

        // SAFETY: a read-only map of a file this test alone writes, which it does not change
        // while the map lives.
        let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
        assert_eq!(map[4096], bytes[4096]);
        assert!(any_page_cached(&file, bytes.len() as u64).unwrap(), "mincore sees the touched page");
        assert_eq!(drop_cached_pages(&file).unwrap(), memory, "a touched page of a map stays cached");
        drop(map);

        assert!(drop_cached_pages(&file).unwrap(), "nothing holds the pages any more");
        if !memory {
            assert!(!any_page_cached(&file, bytes.len() as u64).unwrap());
        }
        assert!(fs::read(&path).unwrap() == bytes, "the file reads back the same");
    }
}
