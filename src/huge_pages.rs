//! An allocator that puts large in-memory tables on transparent huge pages.
//!
//! Why: a random lookup in a table of a hundred megabytes misses the TLB as well as the
//! cache. With 4 KiB pages the translation itself is another walk through memory (and on a
//! virtual machine, a two-level one), so a hash lookup pays two such walks besides its two
//! cache misses. Backing the table with 2 MiB pages makes its translations fit in the TLB:
//! measured on the development VM, a chain of dependent lookups in a one-million-entry
//! hashbrown map took about 270 ns each instead of 370–560 ns.
//!
//! Linux gives anonymous memory huge pages only where asked (`transparent_hugepage` set to
//! `madvise`, the common default), and the C allocator never asks. So allocations of at least
//! [`HUGE_PAGE`] bytes get their own anonymous map, aligned to a huge page and advised with
//! `MADV_HUGEPAGE`; anything smaller, and everything on other systems, goes to the global
//! allocator. If the kernel has no huge pages to give, the map simply keeps 4 KiB pages:
//! nothing depends on the advice being followed.
//!
//! Only tables that grow large and are read at random use it (the MVCC key index's hash
//! map). Their big allocations are few (one per doubling), so the registry of maps below is a
//! plain mutex-protected ordered map. A table about to double can have its next block made and
//! faulted in ahead, on another thread ([`prepare`]).

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use allocator_api2::alloc::{AllocError, Allocator, Global, Layout};

/// Size and alignment of an x86-64 (and common aarch64) transparent huge page.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// The anonymous maps handed out, by the address of the block given to the caller.
static MAPS: Mutex<BTreeMap<usize, memmap2::MmapMut>> = Mutex::new(BTreeMap::new());

/// The block the next growth of a table is expected to ask for (see [`prepare`]): at most one.
static NEXT: Mutex<Next> = Mutex::new(Next::None);

/// How many prepared blocks allocations took, for tests.
#[cfg(test)]
static PREPARED_TAKEN: AtomicU64 = AtomicU64::new(0);

/// How long a prepared block waits to be taken before its memory is given back.
const KEEP_PREPARED: Duration = Duration::from_secs(10);

enum Next {
    None,
    /// A thread is making a block of `len` bytes; `id` tells this request from a later one.
    Preparing {
        len: usize,
        id: u64,
    },
    /// A block of `len` bytes at `skip` in `map`, faulted in, waiting to be taken; `keeper` is
    /// the thread that made it, which gives it back if it waits too long.
    Ready {
        len: usize,
        id: u64,
        map: memmap2::MmapMut,
        skip: usize,
        keeper: std::thread::Thread,
    },
}

impl Next {
    /// The id of the request this is, if any.
    fn id(&self) -> Option<u64> {
        match self {
            Next::None => None,
            Next::Preparing { id, .. } | Next::Ready { id, .. } => Some(*id),
        }
    }

    /// The length of the block prepared or being prepared, if any.
    fn len(&self) -> Option<usize> {
        match self {
            Next::None => None,
            Next::Preparing { len, .. } | Next::Ready { len, .. } => Some(*len),
        }
    }
}

/// The slot of the prepared block, locked.
fn next() -> std::sync::MutexGuard<'static, Next> {
    NEXT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The allocator: large blocks on huge pages, the rest from the global allocator.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HugePages;

impl HugePages {
    /// A block of at least `layout.size()` bytes from its own huge-page-advised map — the
    /// prepared one if it has that length — or None (the caller then uses the global
    /// allocator).
    fn map(layout: Layout) -> Option<NonNull<[u8]>> {
        if !cfg!(target_os = "linux") || layout.size() < HUGE_PAGE || layout.align() > HUGE_PAGE {
            return None;
        }
        let len = layout.size().checked_next_multiple_of(HUGE_PAGE)?;
        let (mut map, skip) = match take_prepared(len) {
            Some(ready) => ready,
            None => new_map(len)?,
        };
        // SAFETY: `skip <= HUGE_PAGE` and the map is `len + HUGE_PAGE` bytes long (`new_map`),
        // so `base + skip` and the `len` bytes after it lie inside the map.
        let block = unsafe { map.as_mut_ptr().add(skip) };
        let block = NonNull::slice_from_raw_parts(NonNull::new(block)?, len);
        MAPS.lock().unwrap_or_else(|e| e.into_inner()).insert(block.cast::<u8>().as_ptr() as usize, map);
        Some(block)
    }
}

/// A map holding an aligned block of `len` bytes, and where in it the block starts.
fn new_map(len: usize) -> Option<(memmap2::MmapMut, usize)> {
    // One huge page more than needed, so that an aligned block of `len` bytes fits inside
    // wherever the kernel places the map; the unused head and tail are never touched, so they
    // take no memory.
    let mut map = memmap2::MmapOptions::new().len(len.checked_add(HUGE_PAGE)?).map_anon().ok()?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    let skip = map.as_mut_ptr().align_offset(HUGE_PAGE);
    (skip <= HUGE_PAGE).then_some((map, skip))
}

/// The prepared block if it is `len` bytes long (one of another length stays for the
/// allocation it was made for, or until it expires).
fn take_prepared(len: usize) -> Option<(memmap2::MmapMut, usize)> {
    let mut next = next();
    if !matches!(*next, Next::Ready { len: l, .. } if l == len) {
        return None;
    }
    let Next::Ready { map, skip, keeper, .. } = std::mem::replace(&mut *next, Next::None) else { return None };
    drop(next);
    keeper.unpark(); // its block is taken: it need not wait any longer
    #[cfg(test)]
    PREPARED_TAKEN.fetch_add(1, Ordering::Relaxed);
    Some((map, skip))
}

/// Asks for a block of `size` bytes to be made and faulted in on another thread, for a table
/// that will soon grow to that size: the allocation then takes it instead of a new map, and
/// the table's growth no longer pays for the kernel's zeroing of every page it touches.
///
/// Why: filling a table that had just doubled (copying a million entries to random places of a
/// new 300 MiB block) faulted in every one of its huge pages on the writer's thread; on the
/// development VM that was ~12% of the time of setting a million new kv keys (perf:
/// `clear_page_erms` under hashbrown's insert), as the new memory of a virtual machine is slow to
/// touch the first time. The prepared block waits at most [`KEEP_PREPARED`] and is given back
/// if nothing took it (the table stopped growing), so it costs memory only shortly before the
/// growth, when the table would have needed it anyway. One block is prepared at a time in the
/// process: a request for another length replaces it. Best effort throughout: without a
/// thread, the growth makes its own map as before; where the kernel refuses
/// `MADV_POPULATE_WRITE` (`crate::populate`), that block is handed out as it is (faulted in by
/// its user, as before) and no other is prepared.
pub(crate) fn prepare(size: usize) {
    if size < HUGE_PAGE || !crate::populate::supported() {
        return;
    }
    let Some(len) = size.checked_next_multiple_of(HUGE_PAGE) else { return };
    static IDS: AtomicU64 = AtomicU64::new(0);
    let id = IDS.fetch_add(1, Ordering::Relaxed);
    let stale = {
        let mut next = next();
        if next.len() == Some(len) {
            return;
        }
        std::mem::replace(&mut *next, Next::Preparing { len, id })
    };
    let made = std::thread::Builder::new().name("logtree-huge-pages".into()).spawn(move || {
        drop(stale); // a block of another length: unmapped here, not on the caller's thread
        let Some((map, skip)) = new_map(len) else { return forget(id) };
        // Unsupported or refused, the block is still handed out, to be faulted in by its user.
        let _ = crate::populate::populate(&map, skip, len);
        {
            let mut next = next();
            if next.id() != Some(id) {
                return; // no longer wanted: dropping the map unmaps it
            }
            *next = Next::Ready { len, id, map, skip, keeper: std::thread::current() };
        }
        // Until the block is taken (`take_prepared` unparks this thread) or has waited long
        // enough; a spurious wake-up only looks again.
        let until = std::time::Instant::now() + KEEP_PREPARED;
        loop {
            let expired = {
                let mut next = next();
                if next.id() != Some(id) {
                    return; // taken, or replaced by a later request
                }
                if std::time::Instant::now() < until { None } else { Some(std::mem::replace(&mut *next, Next::None)) }
            };
            match expired {
                Some(block) => return drop(block), // unmapped outside the lock
                None => std::thread::park_timeout(until.saturating_duration_since(std::time::Instant::now())),
            }
        }
    });
    if made.is_err() {
        forget(id);
    }
}

/// Empties the slot if it still holds request `id` (which could not be served).
fn forget(id: u64) {
    let mut next = next();
    if next.id() == Some(id) {
        *next = Next::None;
    }
}

// SAFETY: a block from `map` stays valid until `deallocate` removes its map from `MAPS`, which
// only happens for the address `map` returned; every clone of `HugePages` shares the one
// global registry, so a block may be freed through any of them. Blocks from `Global` are freed
// by `Global`: `deallocate` finds no map at their address (a live map's block and a live
// global block cannot share an address). Blocks are aligned to `HUGE_PAGE`, which is at least
// the requested alignment (larger ones go to `Global`).
unsafe impl Allocator for HugePages {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        match HugePages::map(layout) {
            Some(block) => Ok(block),
            None => Global.allocate(layout),
        }
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() >= HUGE_PAGE {
            let map = MAPS.lock().unwrap_or_else(|e| e.into_inner()).remove(&(ptr.as_ptr() as usize));
            if map.is_some() {
                return; // dropping the map unmaps it
            }
        }
        // SAFETY: not one of our maps, so the block came from `Global.allocate` with this
        // layout (the caller's contract).
        unsafe { Global.deallocate(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large and small blocks are usable over their whole length, aligned, and freed (the
    /// registry forgets large ones), including through a clone of the allocator. (Other tests
    /// allocate concurrently, so this looks only at its own blocks in the registry.)
    #[test]
    fn blocks_of_every_kind_are_usable_and_freed() {
        for (size, align) in [(16, 8), (HUGE_PAGE - 1, 64), (HUGE_PAGE, 16), (3 * HUGE_PAGE + 5, 4096)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let block = HugePages.allocate(layout).unwrap();
            assert!(block.len() >= size);
            let p = block.cast::<u8>().as_ptr();
            assert_eq!(p as usize % align, 0);
            // SAFETY: the block is at least `size` bytes, owned here until freed below.
            unsafe {
                std::ptr::write_bytes(p, 0xa5, size);
                assert_eq!(*p.add(size - 1), 0xa5);
            }
            if cfg!(target_os = "linux") && size >= HUGE_PAGE {
                assert_eq!(p as usize % HUGE_PAGE, 0, "large blocks are huge-page aligned");
                assert!(MAPS.lock().unwrap().contains_key(&(p as usize)), "a large block has its own map");
            }
            // SAFETY: allocated above with this layout, freed once.
            unsafe { HugePages.clone().deallocate(block.cast(), layout) };
            assert!(!MAPS.lock().unwrap().contains_key(&(p as usize)), "freeing unmaps it");
        }
    }

    /// Waits (up to 10 s) until a block of `len` bytes is prepared; false if none came.
    fn wait_prepared(len: usize) -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < until {
            if matches!(*NEXT.lock().unwrap(), Next::Ready { len: l, .. } if l == len) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// A prepared block is what the next allocation of its length gets, usable over its whole
    /// length; an allocation of another length leaves it and is served as before. (One test
    /// only: the prepared block is process-wide.)
    #[test]
    fn a_prepared_block_serves_the_allocation_of_its_length() {
        if !cfg!(target_os = "linux") {
            return;
        }
        // A length no other test of this binary allocates.
        let len = 37 * HUGE_PAGE;
        prepare(len - 100);
        assert!(wait_prepared(len), "the block was prepared");
        let taken = PREPARED_TAKEN.load(Ordering::Relaxed);
        let other = Layout::from_size_align(5 * HUGE_PAGE, 16).unwrap();
        let b = HugePages.allocate(other).unwrap();
        // SAFETY: allocated just above with this layout, freed once.
        unsafe { HugePages.deallocate(b.cast(), other) };
        assert_eq!(PREPARED_TAKEN.load(Ordering::Relaxed), taken, "another length does not take it");
        assert!(matches!(*NEXT.lock().unwrap(), Next::Ready { len: l, .. } if l == len), "and leaves it");
        let layout = Layout::from_size_align(len - 10, 64).unwrap();
        let block = HugePages.allocate(layout).unwrap();
        assert_eq!(PREPARED_TAKEN.load(Ordering::Relaxed), taken + 1, "the allocation took the prepared block");
        let p = block.cast::<u8>().as_ptr();
        assert_eq!(p as usize % HUGE_PAGE, 0);
        // SAFETY: the block is at least `len - 10` bytes, owned here until freed below.
        unsafe {
            assert_eq!(*p.add(len - 11), 0, "a prepared block reads as zeros");
            std::ptr::write_bytes(p, 0x5a, len - 10);
            assert_eq!(*p.add(len - 11), 0x5a);
            HugePages.deallocate(block.cast(), layout);
        }
        assert!(matches!(*NEXT.lock().unwrap(), Next::None), "nothing left prepared");
    }

    /// A hash map on this allocator grows through several huge blocks and keeps its entries.
    #[test]
    fn a_growing_map_keeps_its_entries() {
        let mut map: hashbrown::HashMap<u64, [u64; 4], hashbrown::DefaultHashBuilder, HugePages> =
            hashbrown::HashMap::with_hasher_in(Default::default(), HugePages);
        for i in 0..200_000u64 {
            map.insert(i, [i; 4]);
        }
        assert!((0..200_000u64).all(|i| map[&i] == [i; 4]));
        map.retain(|k, _| k % 2 == 0);
        map.shrink_to_fit();
        assert_eq!(map.len(), 100_000);
        assert!((0..200_000u64).all(|i| map.get(&i).is_some() == (i % 2 == 0)));
    }
}
