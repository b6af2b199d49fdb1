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
//! A region is asked for once, unless it was given up or found the queue full (then a later
//! node in it asks again); the cost is one copy of at most 2 MiB per region, on the
//! background thread, and at most 2 MiB of memory per region that the allocator had left
//! unused (or given back to the system). During that copy the kernel holds the process's
//! memory-map lock for writing, and a page fault of the writer waits for it, so requests give
//! way to commits (`crate::pacing`). Where the administrator turned transparent huge pages
//! off (`never`, which the advice would not respect by itself), or the kernel does not know the
//! advice, the first request finds out and nothing more is asked, in the whole process. With an
//! allocator whose memory is already on huge pages (mimalloc on this project's machine: its
//! page faults allocate huge pages), the advice finds them in place.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::pacing::{PACE, Pacer, QUIET};

/// The size and alignment of a transparent huge page on x86-64 (and common aarch64).
pub(crate) const REGION: usize = crate::huge_pages::HUGE_PAGE;

/// Regions waiting for the background thread at most; a region that finds the queue full is
/// forgotten, to be reported again by a later node in it.
const QUEUE: usize = 4096;

/// How many times a refused region is tried before it is given up (until a later node in it
/// reports it again).
const MAX_ATTEMPTS: u32 = 50;

/// How long the background thread waits before it tries the refused regions again.
const RETRY: Duration = Duration::from_millis(100);

/// A request answered faster than this (a refusal, a region already backed) does not count
/// as a turn.
const CHEAP: Duration = Duration::from_micros(300);

/// Off once the kernel turned the advice down as unknown, on other platforms, and when the
/// program turned it off ([`crate::set_index_huge_pages`]).
static ENABLED: AtomicBool = AtomicBool::new(cfg!(target_os = "linux"));

/// Turns the requests on or off for the rest of the process (on has no effect where the
/// kernel or the platform cannot serve them). Regions already backed stay as they are.
pub(crate) fn set_enabled(on: bool) {
    ENABLED
        .store(on && cfg!(target_os = "linux") && (!PROBED.load(Ordering::Relaxed) || supported()), Ordering::Relaxed);
}

/// Every region ever handed to the background thread (whatever became of it).
static REQUESTED: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

/// Slots of each thread's cache of regions it has reported (see `RECENT`).
const RECENT_SLOTS: usize = 256;

thread_local! {
    /// The regions this thread has reported, direct-mapped by region number: 256 slots cover
    /// 512 MiB of contiguous index without a collision, so after the first report of a region
    /// its nodes' reports end here, without the lock. A collision only costs a look at the set.
    static RECENT: [Cell<usize>; RECENT_SLOTS] = const { [const { Cell::new(usize::MAX) }; RECENT_SLOTS] };
}

/// The region holding `addr`.
#[inline]
fn region_of(addr: usize) -> usize {
    addr & !(REGION - 1)
}

/// Reports that the memory at each of `addrs` (a new node's allocation and its buffers) is in
/// use by the index.
#[inline]
pub(super) fn note(addrs: &[usize]) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    // Gone only while the thread exits: nothing to report then.
    let _ = RECENT.try_with(|recent| {
        // Below the first region: an empty vector's dangling pointer, not memory.
        for region in addrs.iter().filter(|&&addr| addr >= REGION).map(|&addr| region_of(addr)) {
            let slot = &recent[(region / REGION) % RECENT_SLOTS];
            if slot.replace(region) != region {
                request(region);
            }
        }
    });
}

/// Hands `region` to the background thread unless it was already.
fn request(region: usize) {
    {
        let mut requested = REQUESTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !requested.get_or_insert_with(HashSet::new).insert(region) {
            return;
        }
    }
    match worker().map(|tx| tx.try_send(region)) {
        Some(Ok(())) => {}
        // Full: forgotten, for a later node in the region to ask again.
        Some(Err(crossbeam_channel::TrySendError::Full(_))) => forget(region),
        // No thread, or it has ended (the kernel refused the advice): nothing more is asked.
        None | Some(Err(crossbeam_channel::TrySendError::Disconnected(_))) => {
            ENABLED.store(false, Ordering::Relaxed);
            forget(region);
        }
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
/// allocations later. Turned off, it backs nothing more (what is queued is dropped).
fn serve(rx: &crossbeam_channel::Receiver<usize>) {
    if !supported() {
        return; // the queue closes with this thread: requests are no longer sent
    }
    let mut refused: Vec<(usize, u32)> = Vec::new();
    let mut next_retry = Instant::now() + RETRY;
    // Each request waits for its turn (see `crate::pacing`): a collapse holds the process's
    // memory-map lock for writing, so a fault of a committing writer waits for it.
    let mut pacer = Pacer::new(QUIET, PACE);
    // A refusal, or a region already on a huge page (an allocator that asks for them itself),
    // costs the kernel little and holds the lock briefly: its turn is given back.
    let mut paced_back = |region| {
        if !pacer.wait_turn(|| !ENABLED.load(Ordering::Relaxed)) {
            return Backed::NotNow;
        }
        let started = Instant::now();
        let backed = back(region);
        if backed != Backed::Yes || started.elapsed() < CHEAP {
            pacer.return_turn();
        }
        backed
    };
    loop {
        let next = if refused.is_empty() {
            rx.recv().map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_deadline(next_retry)
        };
        let on = ENABLED.load(Ordering::Relaxed);
        match next {
            Ok(region) if !on => forget(region),
            Ok(region) => {
                if paced_back(region) != Backed::Yes {
                    if refused.is_empty() {
                        next_retry = Instant::now() + RETRY;
                    }
                    refused.push((region, 1));
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
        // Retried on time even while requests keep coming (a growing index reports new regions
        // more often than every `RETRY`).
        if !refused.is_empty() && Instant::now() >= next_retry {
            refused.retain_mut(|(region, attempts)| {
                *attempts += 1;
                let backed = on && paced_back(*region) == Backed::Yes;
                let give_up = !on || *attempts >= MAX_ATTEMPTS;
                if !backed && give_up {
                    forget(*region); // a later node in it may ask again
                }
                !backed && !give_up
            });
            next_retry = Instant::now() + RETRY;
        }
    }
}

/// What became of a request to back a region.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
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

/// Whether the kernel backs anonymous memory with huge pages on request, asked once per
/// process: not where the administrator turned transparent huge pages off (`never`, which
/// `MADV_COLLAPSE` would not respect by itself), nor where they are not 2 MiB (arm64 with
/// larger base pages), nor where the kernel does not know the advice, which a request on a map
/// of our own tells: that map is all anonymous memory, so an `EINVAL` there is about the
/// advice, and every later `EINVAL` about a region only. Any other refusal of that request
/// (no free huge page at the moment) still shows that the advice is known.
pub(crate) fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let sysfs = |name: &str| std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{name}"));
        let allowed = sysfs("enabled").is_ok_and(|s| !s.contains("[never]"))
            && sysfs("hpage_pmd_size").is_ok_and(|s| s.trim().parse::<usize>() == Ok(REGION));
        let known = allowed
            && memmap2::MmapMut::map_anon(2 * REGION).is_ok_and(|mut map| {
                let skip = map.as_ptr().align_offset(REGION);
                map[skip] = 1; // one page touched: the collapse has something to copy
                back(map.as_ptr() as usize + skip) != Backed::Never
            });
        PROBED.store(true, Ordering::Relaxed);
        if !known {
            ENABLED.store(false, Ordering::Relaxed);
        }
        known
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The huge-page KiB of the mapping containing `addr`.
    fn huge_kib(addr: usize) -> Option<u64> {
        crate::populate::smaps_kib(addr, "AnonHugePages:")
    }

    /// Whether huge pages are given only on request here (with `always`, a fresh map may get
    /// them unasked, and nothing tells the advice's work from the kernel's).
    fn only_on_request() -> bool {
        supported()
            && std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .is_ok_and(|s| s.contains("[madvise]"))
    }

    /// A map of two regions with the aligned one's pages written, and that region, held by the
    /// test alone (the guard); `None` (and a line saying why) where huge pages are not given on
    /// request only.
    ///
    /// smaps counts huge pages per kernel map, and the kernel merges neighbouring anonymous maps
    /// of the same kind into one: another test's map beside this one, backed meanwhile, would
    /// count as this one's. So the map is advised `MADV_DONTDUMP`, which no other map of the
    /// process has, to keep it a kernel map of its own, and the tests that make one take turns.
    fn written_region() -> Option<(std::sync::MutexGuard<'static, ()>, memmap2::MmapMut, usize)> {
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        if !only_on_request() {
            eprintln!("huge pages are not given on request only here: nothing to check");
            return None;
        }
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut map = memmap2::MmapMut::map_anon(2 * REGION).unwrap();
        map.advise(memmap2::Advice::DontDump).unwrap();
        let skip = map.as_ptr().align_offset(REGION);
        for (i, b) in map[skip..skip + REGION].iter_mut().enumerate().step_by(4096) {
            *b = (i / 4096) as u8 | 1;
        }
        map[skip + 12_345] = 0xab;
        let region = map.as_ptr() as usize + skip;
        Some((turn, map, region))
    }

    fn assert_bytes_kept(map: &memmap2::MmapMut, region: usize) {
        let skip = region - map.as_ptr() as usize;
        for (i, &b) in map[skip..skip + REGION].iter().enumerate().step_by(4096) {
            assert_eq!(b, (i / 4096) as u8 | 1, "page {}", i / 4096);
        }
        assert_eq!(map[skip + 12_345], 0xab);
        assert_eq!(map[skip + 12_346], 0, "untouched bytes still read as zeroes");
    }

    #[test]
    fn a_region_is_backed_by_a_huge_page_and_keeps_its_bytes() {
        let Some((_turn, map, region)) = written_region() else { return };
        assert_eq!(huge_kib(region), Some(0), "4 KiB pages before");
        // A refusal for want of a free huge page at the moment is the kernel's to make, and
        // passes: asked again.
        let mut backed = false;
        for _ in 0..20 {
            backed = back(region) == Backed::Yes;
            if backed {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(backed, "the kernel refused 20 times");
        assert!(huge_kib(region).unwrap() >= 2048, "one huge page after");
        assert_bytes_kept(&map, region);
    }

    #[test]
    fn a_reported_region_is_backed_by_the_background_thread() {
        let Some((_turn, map, region)) = written_region() else { return };
        note(&[region + 100]);
        // Long: requests are paced while other tests commit (`crate::pacing`).
        let deadline = Instant::now() + Duration::from_secs(120);
        while huge_kib(region) == Some(0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(huge_kib(region).unwrap() >= 2048, "not backed within 120 s");
        assert_bytes_kept(&map, region);
    }
}
