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
//! plain mutex-protected ordered map.

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Mutex;

use allocator_api2::alloc::{AllocError, Allocator, Global, Layout};

/// Size and alignment of an x86-64 (and common aarch64) transparent huge page.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// The anonymous maps handed out, by the address of the block given to the caller.
static MAPS: Mutex<BTreeMap<usize, memmap2::MmapMut>> = Mutex::new(BTreeMap::new());

/// The allocator: large blocks on huge pages, the rest from the global allocator.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HugePages;

impl HugePages {
    /// A block of at least `layout.size()` bytes from its own huge-page-advised map, or None
    /// (the caller then uses the global allocator).
    fn map(layout: Layout) -> Option<NonNull<[u8]>> {
        if !cfg!(target_os = "linux") || layout.size() < HUGE_PAGE || layout.align() > HUGE_PAGE {
            return None;
        }
        let len = layout.size().checked_next_multiple_of(HUGE_PAGE)?;
        // One huge page more than needed, so that an aligned block of `len` bytes fits inside
        // wherever the kernel places the map; the unused head and tail are never touched, so
        // they take no memory.
        let mut map = memmap2::MmapOptions::new().len(len.checked_add(HUGE_PAGE)?).map_anon().ok()?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let base = map.as_mut_ptr();
        let skip = base.align_offset(HUGE_PAGE);
        if skip > HUGE_PAGE {
            return None;
        }
        // SAFETY: `skip <= HUGE_PAGE`, and the map is `len + HUGE_PAGE` bytes long, so
        // `base + skip` and the `len` bytes after it lie inside the map.
        let block = unsafe { base.add(skip) };
        let block = NonNull::slice_from_raw_parts(NonNull::new(block)?, len);
        MAPS.lock().unwrap_or_else(|e| e.into_inner()).insert(block.cast::<u8>().as_ptr() as usize, map);
        Some(block)
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
