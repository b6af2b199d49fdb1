//! Recycled node buffers for the writer.
//!
//! Why: a transaction copies every node on the path to each key it changes (copy-on-write,
//! see `node.rs`), and publishing it makes the previous version's copies garbage. A batch of
//! 1,000 random puts over a million keys copies some 1,400 nodes — each four or five
//! allocations of 64 B–1.5 KiB — and frees as many. Most of those sizes are past glibc's
//! per-thread cache (1,032 bytes), and the rest overflow its few entries per size, so they
//! went through the allocator's bins and chunk consolidation:
//! measured, malloc and free were about 45% of such a batch. A writer frees about as many
//! buffers of each size as it allocates, so it keeps the freed ones here and takes copies'
//! buffers from them.
//!
//! The pool belongs to the backend's writer (`Writer::pool`) and is lent to the thread of the
//! `BatchTx` for its lifetime (`lend` / `reclaim`); only that thread's node copies and frees
//! use it. Other threads — a reader dropping the last handle on an old view — free as usual,
//! so no thread other than a writer ever holds pooled memory. The pool holds at most
//! [`POOL_BYTES`]; buffers are kept by size class (eight per power of two), and a copy takes a
//! buffer of the class at or above what it needs, so a buffer is at most an eighth larger
//! than an exact one. A transaction that ends with the pool over half full trims each class to
//! what was asked of it lately (`Pool::trim_if_full`), so that the pool holds the sizes in
//! demand rather than those some earlier workload freed.

use super::ValueRef;
use super::node::{NodeBox, NodeRef};
use std::cell::Cell;
use std::mem::MaybeUninit;

/// Most bytes of buffers one pool keeps.
const POOL_BYTES: usize = 16 << 20;
/// Most node allocations (`NodeBox`es, 128 bytes each) one pool keeps.
const POOL_BOXES: usize = 16 << 10;
/// Buffers smaller than this (in bytes) are left to the allocator.
const MIN_BYTES: usize = 64;
/// Buffers larger than this (in bytes) are left to the allocator (nodes with huge keys).
const MAX_BYTES: usize = 64 << 10;
/// Size classes: eight per power of two from `MIN_BYTES` to `MAX_BYTES`.
const CLASSES: usize = 8 * 11;

/// Freed node buffers, by element type and size class.
#[derive(Default)]
pub(crate) struct Pool {
    bytes: usize,
    u8s: Bins<u8>,
    u32s: Bins<u32>,
    vals: Bins<ValueRef>,
    children: Bins<NodeRef>,
    /// Freed node allocations, their nodes dropped. Boxes, not values: each is handed back as
    /// the allocation a `NodeRef` points to.
    #[allow(clippy::vec_box)]
    boxes: Vec<Box<MaybeUninit<NodeBox>>>,
}

pub(super) struct Bins<T> {
    classes: Vec<Vec<Vec<T>>>,
    /// Buffers of each class asked for since the pool was last trimmed.
    demand: Vec<u32>,
}

impl<T> Default for Bins<T> {
    fn default() -> Bins<T> {
        Bins { classes: (0..CLASSES).map(|_| Vec::new()).collect(), demand: vec![0; CLASSES] }
    }
}

impl<T> Bins<T> {
    /// Frees the buffers of each class beyond what was asked for since the last trim (and a
    /// quarter more); returns the bytes freed.
    fn trim(&mut self) -> usize {
        let mut freed = 0;
        for (bufs, demand) in self.classes.iter_mut().zip(&mut self.demand) {
            let keep = *demand as usize + *demand as usize / 4;
            for v in bufs.drain(keep.min(bufs.len())..) {
                freed += v.capacity() * std::mem::size_of::<T>().max(1);
            }
            *demand = 0;
        }
        freed
    }
}

impl Pool {
    /// Bytes of the buffers held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Once the pool is over half full, frees the buffers of each size class beyond those
    /// asked for since the last trim.
    ///
    /// Why: a pool that only ever grows until its bound fills up with the sizes some past
    /// workload freed (a bulk load's growing leaves; a tree that has since grown, so its copies
    /// are a class or two larger) and then turns away the very sizes being asked for. Measured,
    /// batches of 1,000 random puts over 1M keys after a bulk load: 18% of takes missed and
    /// as many gives found the pool full, so a fifth of node copies went through malloc and
    /// free. What the last transactions asked for is what the next ones will.
    fn trim_if_full(&mut self) {
        if self.bytes > POOL_BYTES / 2 {
            let freed = self.u8s.trim() + self.u32s.trim() + self.vals.trim() + self.children.trim();
            self.bytes -= freed;
        }
    }
}

/// Element types of node buffers.
pub(super) trait Pooled: Sized {
    fn bins(pool: &mut Pool) -> &mut Bins<Self>;
}

impl Pooled for u8 {
    fn bins(pool: &mut Pool) -> &mut Bins<u8> {
        &mut pool.u8s
    }
}

impl Pooled for u32 {
    fn bins(pool: &mut Pool) -> &mut Bins<u32> {
        &mut pool.u32s
    }
}

impl Pooled for ValueRef {
    fn bins(pool: &mut Pool) -> &mut Bins<ValueRef> {
        &mut pool.vals
    }
}

impl Pooled for NodeRef {
    fn bins(pool: &mut Pool) -> &mut Bins<NodeRef> {
        &mut pool.children
    }
}

thread_local! {
    /// The pool lent to this thread, while it holds a `BatchTx`.
    static LENT: Cell<Option<Box<Pool>>> = const { Cell::new(None) };
}

/// Lends `pool` to this thread's node copies and frees. Gives it back if the thread already
/// has one (a second backend's `BatchTx` on the same thread).
pub(crate) fn lend(pool: Box<Pool>) -> Option<Box<Pool>> {
    LENT.try_with(|lent| match lent.take() {
        None => {
            lent.set(Some(pool));
            None
        }
        Some(mine) => {
            lent.set(Some(mine));
            Some(pool)
        }
    })
    .unwrap_or(None)
}

/// Takes back the pool lent to this thread.
pub(crate) fn reclaim() -> Option<Box<Pool>> {
    let mut pool = LENT.try_with(Cell::take).ok().flatten()?;
    pool.trim_if_full();
    Some(pool)
}

/// Runs `f` on this thread's lent pool, if it has one.
fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> Option<R> {
    LENT.try_with(|lent| {
        let mut pool = lent.take()?;
        let r = f(&mut pool);
        lent.set(Some(pool));
        Some(r)
    })
    .ok()
    .flatten()
}

/// The class of a buffer of `bytes` bytes: the `i` with `class_bytes(i) <= bytes`, largest.
fn class_below(bytes: usize) -> Option<usize> {
    if !(MIN_BYTES..=MAX_BYTES).contains(&bytes) {
        return None;
    }
    let lg = bytes.ilog2() as usize;
    let eighth = (bytes >> (lg - 3)) & 7;
    Some((lg - MIN_BYTES.ilog2() as usize) * 8 + eighth).filter(|&c| c < CLASSES)
}

/// The smallest size of class `c`.
fn class_bytes(c: usize) -> usize {
    let lg = c / 8 + MIN_BYTES.ilog2() as usize;
    (8 + c % 8) << (lg - 3)
}

/// An empty vector with room for at least `n` elements: a pooled buffer if this thread has a
/// pool with one of the right size class, else a new one. On a thread with a pool, sizes that
/// have a class are allocated rounded up to it (at most an eighth more), so that once freed
/// they serve the same size again.
pub(super) fn take<T: Pooled>(n: usize) -> Vec<T> {
    let size = std::mem::size_of::<T>().max(1);
    if let Some(mut c) = class_below(n * size) {
        if class_bytes(c) < n * size {
            c += 1;
        }
        if c < CLASSES {
            let pooled = with_pool(|p| {
                let bins = T::bins(p);
                bins.demand[c] = bins.demand[c].saturating_add(1);
                let v = bins.classes[c].pop()?;
                // The buffer the take after next of this class gets is asked for now: it was
                // last touched when the node it belonged to was made, transactions ago, and a
                // copy into it waited on a miss at every line. Not the next one: a leaf copy
                // takes its key ends and heads from the same class one after the other, so
                // the next one's lines would not have come yet (see DESIGN.md §3).
                let bufs = &bins.classes[c];
                if let Some(ahead) = bufs.len().checked_sub(2).map(|i| &bufs[i]) {
                    crate::prefetch::prefetch_range(ahead.as_ptr() as usize, ahead.capacity() * size);
                }
                p.bytes -= v.capacity() * size;
                Some(v)
            });
            match pooled {
                Some(Some(v)) => {
                    debug_assert!(v.is_empty() && v.capacity() >= n);
                    return v;
                }
                Some(None) => return Vec::with_capacity(class_bytes(c).div_ceil(size)),
                None => {}
            }
        }
    }
    Vec::with_capacity(n)
}

/// A node allocation from this thread's pool, if it has one to spare.
pub(super) fn take_box() -> Option<Box<MaybeUninit<NodeBox>>> {
    with_pool(|p| p.boxes.pop()).flatten()
}

/// Keeps a node allocation (its node already dropped) in this thread's pool if it has one with
/// room; frees it otherwise.
pub(super) fn give_box(b: Box<MaybeUninit<NodeBox>>) {
    with_pool(move |p| {
        if p.boxes.len() < POOL_BOXES {
            p.boxes.push(b);
        }
    });
}

/// A copy of `items` in a buffer from [`take`].
pub(super) fn copy_of<T: Pooled + Clone>(items: &[T]) -> Vec<T> {
    let mut v = take(items.len());
    v.extend_from_slice(items);
    v
}

/// Frees `v`, keeping its buffer in this thread's pool if it has one with room.
pub(super) fn give<T: Pooled>(mut v: Vec<T>) {
    let size = std::mem::size_of::<T>().max(1);
    let bytes = v.capacity() * size;
    let Some(c) = class_below(bytes) else { return };
    // Emptied first: dropping children may free (and give) nodes below, which uses the pool.
    v.clear();
    with_pool(move |p| {
        if p.bytes + bytes <= POOL_BYTES {
            p.bytes += bytes;
            T::bins(p).classes[c].push(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_their_sizes() {
        for bytes in MIN_BYTES..=MAX_BYTES {
            let c = class_below(bytes).unwrap();
            assert!(class_bytes(c) <= bytes, "{bytes}");
            assert!(c + 1 == CLASSES || class_bytes(c + 1) > bytes, "{bytes}");
        }
        assert_eq!(class_below(MIN_BYTES - 1), None);
        assert_eq!(class_below(MAX_BYTES + 1), None);
    }

    #[test]
    fn buffers_are_reused_only_on_a_thread_with_a_pool() {
        let v = take::<u32>(300);
        assert_eq!(v.capacity(), 300, "no pool lent: an exact allocation");
        give(v);
        assert!(lend(Box::default()).is_none());
        assert_eq!(reclaim().unwrap().bytes, 0, "freed with no pool lent: nothing kept");

        assert!(lend(Box::default()).is_none());
        assert!(lend(Box::default()).is_some(), "a second pool is handed back");
        let v = take::<u32>(300);
        assert!(v.capacity() >= 300 && v.capacity() <= 300 + 300 / 8, "rounded up to its class");
        let p = v.as_ptr();
        give(v);
        let again = take::<u32>(290);
        assert_eq!(again.as_ptr(), p, "a buffer of the same class is reused");
        assert!(again.is_empty() && again.capacity() >= 290);
        give(again);
        assert!(take::<u32>(600).capacity() >= 600, "a smaller buffer is never handed out");
        let pool = reclaim().unwrap();
        assert!(pool.bytes > 0);
        assert!(reclaim().is_none());
    }

    #[test]
    fn the_pool_is_bounded() {
        assert!(lend(Box::default()).is_none());
        for _ in 0..(POOL_BYTES / 4096) * 2 {
            give(Vec::<u8>::with_capacity(4096));
        }
        assert_eq!(with_pool(|p| p.bytes), Some(POOL_BYTES));
        reclaim().unwrap();
    }

    #[test]
    fn a_full_pool_keeps_only_the_sizes_asked_for() {
        assert!(lend(Box::default()).is_none());
        // A quarter of the pool in 1 KiB buffers nobody asks for: under half full, kept.
        for _ in 0..POOL_BYTES / 4 / 1024 {
            give(Vec::<u8>::with_capacity(1024));
        }
        let pool = reclaim().unwrap();
        assert_eq!(pool.bytes, POOL_BYTES / 4, "a pool under half full is not trimmed");
        assert!(lend(pool).is_none());
        // Ten 4 KiB buffers are asked for and given back, then the pool fills past half with
        // more of both sizes.
        let asked: Vec<Vec<u8>> = (0..10).map(|_| take::<u8>(4096)).collect();
        asked.into_iter().for_each(give);
        for _ in 0..POOL_BYTES / 4 / 1024 {
            give(Vec::<u8>::with_capacity(1024));
            give(Vec::<u8>::with_capacity(4096));
        }
        let pool = reclaim().unwrap();
        assert_eq!(pool.bytes, 12 * 4096, "the 4 KiB buffers asked for and a quarter more; no 1 KiB ones");
    }
}
