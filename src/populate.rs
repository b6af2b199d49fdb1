//! Faulting in the pages of a map as a write would, without writing a byte
//! (`madvise(MADV_POPULATE_WRITE)`, Linux 5.14 and later), so that the kernel's work of a first
//! touch is done ahead, on another thread: the log writer's next pages (`log/prefault.rs`) and
//! the MVCC key index's next table (`huge_pages::prepare`). And the converse for the log
//! writer's map: dropping the mappings of pages about to be written back ([`discard`]). And for
//! a sealed segment's readers' map, reading it again in huge pages ([`reread_huge`]).

use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::{Mmap, MmapMut, MmapRaw};

/// What became of a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Populated {
    Done,
    /// Refused for this range only: past a file's end (`EFAULT`; the kernel answers that
    /// instead of raising SIGBUS), memory short (`ENOMEM`), a signal (`EINTR`).
    Refused,
    /// The kernel does not know the advice (`EINVAL`, before Linux 5.14), or the platform has
    /// none: no request is made after this one, in the whole process.
    Unsupported,
}

static UNSUPPORTED: AtomicBool = AtomicBool::new(!cfg!(target_os = "linux"));

/// Whether requests can be made at all (false once the kernel refused the advice, and on
/// other platforms).
pub(crate) fn supported() -> bool {
    !UNSUPPORTED.load(Ordering::Relaxed)
}

/// A map whose pages can be faulted in.
pub(crate) trait Map {
    fn len(&self) -> usize;
    #[cfg(target_os = "linux")]
    fn populate_write(&self, off: usize, len: usize) -> std::io::Result<()>;
}

impl Map for MmapRaw {
    fn len(&self) -> usize {
        MmapRaw::len(self)
    }
    #[cfg(target_os = "linux")]
    fn populate_write(&self, off: usize, len: usize) -> std::io::Result<()> {
        self.advise_range(memmap2::Advice::PopulateWrite, off, len)
    }
}

impl Map for MmapMut {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    #[cfg(target_os = "linux")]
    fn populate_write(&self, off: usize, len: usize) -> std::io::Result<()> {
        self.advise_range(memmap2::Advice::PopulateWrite, off, len)
    }
}

/// Removes the page-table entries of `len` bytes at `off` of `map` (`madvise(MADV_DONTNEED)`;
/// the start is rounded down to a page), so that writing those pages back flushes no TLB entry
/// page by page (DESIGN.md §2.3). On a shared map of a file this drops only the mapping: the
/// page cache keeps every page and every byte written to it, and a later access maps it
/// again. False if the kernel refused (nothing changed), and on other platforms.
///
/// # Safety
///
/// `map` must be a shared (`MAP_SHARED`) map of a file — on a private map the advice would
/// throw away what was written through it — and `off + len` must not pass its end (the call
/// would reach whatever is mapped after it).
pub(crate) unsafe fn discard(map: &MmapRaw, off: usize, len: usize) -> bool {
    debug_assert!(off.checked_add(len).is_some_and(|end| end <= map.len()), "discard past the map's end");
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the caller promises a shared map of a file and a range inside it, on which
        // the advice removes mappings and nothing else (see above).
        unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, len) }.is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (map, off, len);
        false
    }
}

/// Has the kernel drop the page cache of `len` bytes at `off` of `file` and read them again
/// through `map`, in huge pages where it can (DESIGN.md §2.3): the map's page-table entries of
/// the range are removed (`MADV_DONTNEED`), its clean pages dropped from the page cache
/// (`POSIX_FADV_DONTNEED`) and the range faulted in again (`MADV_POPULATE_READ`), which on a
/// map advised `MADV_HUGEPAGE` reads a whole huge page at a time. False if the kernel refused
/// the last step (the range is then read again page by page at its next touch), and on other
/// platforms.
///
/// Every byte read through the map stays what it was: the kernel drops only clean pages, whose
/// bytes are the file's, and never one that is dirty, under write-back or mapped elsewhere.
///
/// # Safety
///
/// `map` must be a read-only shared map of `file` from its first byte, and `off + len` must
/// not pass the map's end nor the file's.
pub(crate) unsafe fn reread_huge(map: &Mmap, file: &std::fs::File, off: usize, len: usize) -> bool {
    debug_assert!(off.checked_add(len).is_some_and(|end| end <= map.len()), "reread past the map's end");
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: on a shared map of a file, `MADV_DONTNEED` only removes the range's
        // page-table entries (the caller promises such a map and a range inside it); a later
        // touch maps the page cache's page again.
        if unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, len) }.is_err() {
            return false;
        }
        let (Ok(at), Ok(n)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else { return false };
        // SAFETY: a plain system call on an open descriptor; it changes no memory of ours.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), at, n, libc::POSIX_FADV_DONTNEED) };
        map.advise_range(memmap2::Advice::PopulateRead, off, len).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (map, file, off, len);
        false
    }
}

/// Faults in `len` bytes at `off` of `map` (cut at the map's end).
pub(crate) fn populate(map: &impl Map, off: usize, len: usize) -> Populated {
    if !supported() {
        return Populated::Unsupported;
    }
    let len = len.min(map.len().saturating_sub(off));
    #[cfg(target_os = "linux")]
    {
        /// `EINVAL` on Linux (every architecture).
        const EINVAL: i32 = 22;
        match map.populate_write(off, len) {
            Ok(()) => Populated::Done,
            Err(e) if e.raw_os_error() == Some(EINVAL) => {
                UNSUPPORTED.store(true, Ordering::Relaxed);
                Populated::Unsupported
            }
            Err(_) => Populated::Refused,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (map, len);
        Populated::Unsupported
    }
}
