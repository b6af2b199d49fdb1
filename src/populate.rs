//! Faulting in the pages of a map as a write would, without writing a byte
//! (`madvise(MADV_POPULATE_WRITE)`, Linux 5.14 and later), so that the kernel's work of a first
//! touch is done ahead, on another thread: the log writer's next pages (`log/prefault.rs`) and
//! the MVCC key index's next table (`huge_pages::prepare`).

use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::{MmapMut, MmapRaw};

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
