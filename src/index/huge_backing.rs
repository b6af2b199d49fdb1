//! The index's nodes on transparent huge pages, whatever allocator the program uses.
//!
//! Why: the index of a large database is tens or hundreds of megabytes of small buffers (see
//! `node.rs`), and a descent or a copy-on-write leaf copy lands on a page it has not touched for
//! a while. With 4 KiB pages such a page's translation has usually left the TLB too, and on a
//! virtual machine a TLB miss is a two-level page walk, several more memory reads before the
//! one wanted. With 2 MiB pages the translations of a whole index fit in the TLB. The library
//! does not choose the allocator (the program's global one), and glibc's malloc asks for huge
//! pages only when the program starts with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`; Linux gives
//! anonymous memory huge pages by itself only where asked (`transparent_hugepage` set to
//! `madvise`, the common default). Measured on this project's machine with glibc's malloc,
//! durable batches of 1,000 random puts into 1M keys (DESIGN.md §3): the puts took a fifth to a
//! third less time once the index's memory was on huge pages.
//!
//! How: every new node reports where its memory is ([`note`]); the first time a 2 MiB region
//! of the address space is reported, it is handed to a background thread, which asks the kernel
//! to back it with a huge page (`madvise(MADV_COLLAPSE)`, Linux 6.1 and later). The kernel
//! copies the region's pages into one huge page, or, for pages never touched, maps zeroes; the
//! contents of every byte stay what they were, whoever in the process allocated them, so the
//! advice is safe on memory the allocator shares with other users. A region the allocator has
//! not fully mapped yet (the top of a heap still growing) is refused and tried again later.
//! Each region is asked for once; the cost is one copy of at most 2 MiB per region, on the
//! background thread, and at most 2 MiB of memory per region that the allocator had left
//! unmapped. Where the kernel does not know the advice, or refuses huge pages altogether, the
//! first request finds out and nothing more is asked, in the whole process. With an allocator
//! that already uses huge pages (mimalloc), the advice finds them and changes nothing.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The size and alignment of a transparent huge page on x86-64 (and common aarch64).
pub(crate) const REGION: usize = crate::huge_pages::HUGE_PAGE;

/// Regions waiting for the background thread at most; a region that finds the queue full is
/// forgotten, to be reported again by a later node in it.
const QUEUE: usize = 4096;

/// How many times a refused region is tried before it is given up (until a later node in it
/// reports it again).
const MAX_ATTEMPTS: u32 = 50;

/// How long the background thread waits before it tries the refused regions again.
const RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Off once the kernel turned the advice down as unknown, on other platforms, and when the
/// program turned it off ([`crate::set_index_huge_pages`]).
static ENABLED: AtomicBool = AtomicBool::new(cfg!(target_os = "linux"));

/// Turns the requests on or off for the rest of the process (on has no effect where the
/// kernel or the platform cannot serve them). Regions already backed stay as they are.
pub(crate) fn set_enabled(on: bool) {
    ENABLED
        .store(on && cfg!(target_os = "linux") && (!PROBED.load(Ordering::Relaxed) || supported()), Ordering::Relaxed);
}

/// Regions the background thread has backed with a huge page so far.
static BACKED: AtomicU64 = AtomicU64::new(0);

/// Every region ever handed to the background thread (whatever became of it).
static REQUESTED: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

thread_local! {
    /// The regions this thread reported last: consecutive nodes are mostly in the same few, so
    /// a report usually ends here without taking the lock.
    static RECENT: Cell<[usize; 4]> = const { Cell::new([usize::MAX; 4]) };
}

/// The region holding `addr`.
#[inline]
fn region_of(addr: usize) -> usize {
    addr & !(REGION - 1)
}

/// Reports that `addr` (a new node's memory, or one of its buffers) is in use by the index.
#[inline]
pub(super) fn note(addr: usize) {
    // Below the first region: an empty vector's dangling pointer, not memory.
    if !ENABLED.load(Ordering::Relaxed) || addr < REGION {
        return;
    }
    let region = region_of(addr);
    let Ok(fresh) = RECENT.try_with(|recent| {
        let mut r = recent.get();
        if r.contains(&region) {
            return false;
        }
        r.rotate_right(1);
        r[0] = region;
        recent.set(r);
        true
    }) else {
        return;
    };
    if fresh {
        request(region);
    }
}

/// Hands `region` to the background thread unless it was already.
#[cold]
fn request(region: usize) {
    {
        let mut requested = REQUESTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !requested.get_or_insert_with(HashSet::new).insert(region) {
            return;
        }
    }
    let sent = worker().is_some_and(|tx| tx.try_send(region).is_ok());
    if !sent {
        forget(region);
    }
}

/// Lets a region be requested again.
fn forget(region: usize) {
    let mut requested = REQUESTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(set) = requested.as_mut() {
        set.remove(&region);
    }
}

/// The background thread's queue, started on first use; `None` if it could not be started.
fn worker() -> Option<&'static crossbeam_channel::Sender<usize>> {
    static WORKER: OnceLock<Option<crossbeam_channel::Sender<usize>>> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            let (tx, rx) = crossbeam_channel::bounded::<usize>(QUEUE);
            std::thread::Builder::new().name("logtree-huge-backing".into()).spawn(move || serve(&rx)).ok()?;
            Some(tx)
        })
        .as_ref()
}

/// The background thread: backs each region it is handed. A refused one is tried again every
/// [`RETRY`] while any is left, up to [`MAX_ATTEMPTS`] times: the region at a heap's top, the
/// one a growing index reports first, is refused until the heap has grown past its end, a few
/// allocations later.
fn serve(rx: &crossbeam_channel::Receiver<usize>) {
    if !supported() {
        return; // the queue closes with this thread: requests are no longer sent
    }
    let mut refused: Vec<(usize, u32)> = Vec::new();
    loop {
        let next = if refused.is_empty() {
            rx.recv().map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(RETRY)
        };
        match next {
            Ok(region) => match back(region) {
                Backed::Yes => {
                    BACKED.fetch_add(1, Ordering::Relaxed);
                }
                _ => refused.push((region, 1)),
            },
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                refused.retain_mut(|(region, attempts)| {
                    *attempts += 1;
                    let left = back(*region) != Backed::Yes;
                    if !left {
                        BACKED.fetch_add(1, Ordering::Relaxed);
                    }
                    if left && *attempts >= MAX_ATTEMPTS {
                        forget(*region); // a later node in it may ask again
                        return false;
                    }
                    left
                });
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// What became of a request to back a region.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Backed {
    Yes,
    /// Refused for this region (not all of it mapped, or mapped from a file; memory short).
    NotNow,
    /// The kernel does not give huge pages this way (older than 6.1, huge pages turned off),
    /// or the platform is not Linux.
    Never,
}

/// Asks the kernel to back the 2 MiB region at `region` (aligned) with a huge page.
pub(crate) fn back(region: usize) -> Backed {
    debug_assert_eq!(region % REGION, 0);
    #[cfg(target_os = "linux")]
    {
        /// `MADV_COLLAPSE` (Linux 6.1), spelled out: not every libc target defines it.
        const MADV_COLLAPSE: libc::c_int = 25;
        // SAFETY: `MADV_COLLAPSE` changes how memory is backed, never what it holds: the
        // kernel copies each page of the range into the huge page (pages never touched read
        // as zeroes, as they did), so no byte any code in the process can read changes, and no
        // page becomes inaccessible. Whatever else the region holds (memory the allocator gave
        // to other code, or a mapping the kernel cannot collapse, which it refuses unchanged),
        // the call is therefore harmless to it; the address needs no validity, since the
        // kernel checks the range against the process's mappings.
        let rc = unsafe { libc::madvise(region as *mut libc::c_void, REGION, MADV_COLLAPSE) };
        if rc == 0 {
            return Backed::Yes;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            // EINVAL: the advice unknown (before 6.1), or huge pages turned off ("never"), or
            // this range not anonymous memory; the first request of the process is made on a
            // map of our own (see `supported`) to tell these apart.
            Some(libc::EINVAL) if !PROBED.load(Ordering::Relaxed) => Backed::Never,
            _ => Backed::NotNow,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = region;
        Backed::Never
    }
}

/// Whether the kernel's answer to an unknown advice has been ruled out (see [`supported`]).
static PROBED: AtomicBool = AtomicBool::new(false);

/// Whether the kernel backs anonymous memory with huge pages on request: tried once per
/// process on a map of our own, which is all anonymous memory, so an `EINVAL` there means the
/// advice itself is refused. Every later `EINVAL` is then about a region only.
pub(crate) fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let Ok(mut map) = memmap2::MmapMut::map_anon(2 * REGION) else { return false };
        let skip = map.as_ptr().align_offset(REGION);
        map[skip] = 1; // one page touched: the collapse has something to copy
        let ok = back(map.as_ptr() as usize + skip) == Backed::Yes;
        PROBED.store(true, Ordering::Relaxed);
        if !ok {
            ENABLED.store(false, Ordering::Relaxed);
        }
        ok
    })
}

/// Regions the background thread has backed with a huge page so far in this process.
#[cfg(test)]
pub(crate) fn backed() -> u64 {
    BACKED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{BTree, ValueRef};
    use std::time::{Duration, Instant};

    /// The huge-page memory of the map starting at `start`, from the process's `smaps`, in KiB.
    fn huge_kib(start: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut here = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((from, _)) = range.split_once('-')
                && let Ok(from) = usize::from_str_radix(from, 16)
                && !line.ends_with(" kB")
            {
                here = from == start;
            } else if here && let Some(kib) = line.strip_prefix("AnonHugePages:") {
                return kib.trim().trim_end_matches(" kB").trim().parse().ok();
            }
        }
        None
    }

    #[test]
    fn a_region_is_backed_by_a_huge_page_and_keeps_its_bytes() {
        if !supported() {
            eprintln!("this kernel does not back memory with huge pages on request: nothing to check");
            return;
        }
        let mut map = memmap2::MmapMut::map_anon(2 * REGION).unwrap();
        let skip = map.as_ptr().align_offset(REGION);
        for (i, b) in map[skip..skip + REGION].iter_mut().enumerate().step_by(4096) {
            *b = (i / 4096) as u8 | 1;
        }
        map[skip + 12_345] = 0xab;
        assert_eq!(huge_kib(map.as_ptr() as usize), Some(0), "4 KiB pages before");
        assert_eq!(back(map.as_ptr() as usize + skip), Backed::Yes);
        assert!(huge_kib(map.as_ptr() as usize).unwrap() >= 2048, "one huge page after");
        for (i, &b) in map[skip..skip + REGION].iter().enumerate().step_by(4096) {
            assert_eq!(b, (i / 4096) as u8 | 1, "page {}", i / 4096);
        }
        assert_eq!(map[skip + 12_345], 0xab);
        assert_eq!(map[skip + 12_346], 0, "untouched bytes still read as zeroes");
    }

    #[test]
    fn a_growing_index_has_its_regions_backed() {
        if !supported() {
            eprintln!("this kernel does not back memory with huge pages on request: nothing to check");
            return;
        }
        let before = backed();
        // About 30 MiB of nodes, most of them in regions no other test has reported.
        let mut tree = BTree::new();
        for i in 0..400_000u32 {
            let key = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes();
            tree.insert(&key, ValueRef { seg: 1, off: i, len: 1 });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while backed() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(backed() > before, "no region of the index was backed within 30 s");
        for i in (0..400_000u32).step_by(997) {
            let key = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes();
            assert_eq!(tree.get(&key).map(|v| v.off), Some(i));
        }
    }
}
