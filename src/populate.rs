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

/// Asks the kernel to start writing back the dirty pages of `len` bytes of `file` at `off`,
/// without waiting for them (`sync_file_range` with `SYNC_FILE_RANGE_WRITE` alone, Linux; a
/// no-op elsewhere). A hint: it makes nothing durable and reports nothing — an error writing
/// the pages back is kept for the file's next fdatasync, which this call does not consume.
pub(crate) fn start_writeback(file: &std::fs::File, off: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(at), Ok(n)) = (libc::off64_t::try_from(off), libc::off64_t::try_from(len)) else { return };
        // SAFETY: a plain system call on an open descriptor; it changes no memory of ours.
        unsafe { libc::sync_file_range(file.as_raw_fd(), at, n, libc::SYNC_FILE_RANGE_WRITE) };
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, off, len);
    }
}

/// Advises `map` `MADV_HUGEPAGE`: the kernel then reads the file through it a huge page at a
/// time, in 2 MiB pages where the file system allows. False if refused, and on other platforms.
pub(crate) fn advise_huge(map: &Mmap) -> bool {
    #[cfg(target_os = "linux")]
    {
        map.advise(memmap2::Advice::HugePage).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = map;
        false
    }
}

/// Has the kernel read `len` bytes at `off` of `file` again, in huge pages where it can
/// (DESIGN.md §2.3): the readers' map `readers` loses its page-table entries for the range
/// (`MADV_DONTNEED`), the range's clean pages leave the page cache (`POSIX_FADV_DONTNEED`), it
/// is faulted in again through `through` (a map advised with [`advise_huge`];
/// `MADV_POPULATE_READ`) and then mapped again in `readers`. False if the kernel refused the
/// read (the range is then read again at its next touch), and on other platforms.
///
/// Every byte read through `readers` stays what it was: the kernel drops only clean pages,
/// whose bytes are the file's, and never one that is dirty, under write-back or mapped
/// elsewhere.
///
/// # Safety
///
/// `readers` and `through` must be read-only shared maps of `file` from its first byte, and
/// `off + len` must pass neither map's end nor the file's.
pub(crate) unsafe fn reread_huge(readers: &Mmap, through: &Mmap, file: &std::fs::File, off: usize, len: usize) -> bool {
    debug_assert!(off.checked_add(len).is_some_and(|end| end <= readers.len().min(through.len())));
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: on a shared map of a file, `MADV_DONTNEED` only removes the range's
        // page-table entries (the caller promises such a map and a range inside it); a later
        // touch maps the page cache's page again.
        if unsafe { readers.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, len) }.is_err() {
            return false;
        }
        let (Ok(at), Ok(n)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else { return false };
        // SAFETY: a plain system call on an open descriptor; it changes no memory of ours.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), at, n, libc::POSIX_FADV_DONTNEED) };
        let read = through.advise_range(memmap2::Advice::PopulateRead, off, len).is_ok();
        read && readers.advise_range(memmap2::Advice::PopulateRead, off, len).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (readers, through, file, off, len);
        false
    }
}

/// A field of the map that holds `addr` (its start, or any address in it) in
/// `/proc/self/smaps`, in KiB (`"Rss:"`, `"FilePmdMapped:"`, the huge pages of a file it maps,
/// `"AnonHugePages:"`); None if unknown. Reading smaps walks every map of the process: for a
/// rare check only.
pub(crate) fn smaps_kib(addr: usize, field: &str) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    // A map's lines start with its address range; its fields follow, up to the next map's.
    let range = |l: &str| {
        let (from, rest) = l.split_once('-')?;
        let to = rest.split(' ').next()?;
        Some(usize::from_str_radix(from, 16).ok()?..usize::from_str_radix(to, 16).ok()?)
    };
    let mut lines = smaps.lines().skip_while(|l| !range(l).is_some_and(|r| r.contains(&addr)));
    lines.next()?;
    let line = lines.take_while(|l| range(l).is_none()).find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
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
