//! Node layout and node-local algorithms: packed key arenas, search,
//! split planning, merging and redistribution.
//!
//! Everything here operates on one node (or one parent and two adjacent
//! children). The tree-wide walk lives in `mod.rs`; the recursive
//! insert/remove below only ever mutate nodes obtained through
//! [`Cx::make_mut`], which is what makes the whole structure copy-on-write.

use std::cmp::Ordering;
use std::ops::Deref;
use std::ptr::NonNull;

use super::{MAX_CHILDREN, MAX_LEAF_ENTRIES, MAX_NODE_KEY_BYTES, ValueRef, huge_backing, pool};

/// A node is "underfull" (and gets merged with or refilled from a sibling
/// after a delete) only if it is short on BOTH entries and key bytes: a leaf
/// holding three 5 KiB keys is not sparse, it is just holding big keys.
const MIN_LEAF_ENTRIES: usize = MAX_LEAF_ENTRIES / 4;
const MIN_CHILDREN: usize = MAX_CHILDREN / 4;
const MIN_NODE_KEY_BYTES: usize = MAX_NODE_KEY_BYTES / 4;

/// Result of splitting a node: the separator that goes up to the parent and
/// the new right-hand sibling. A split may yield more than one piece when a
/// single cut cannot bring both halves under the byte limit (huge keys).
pub(super) type Piece = (Vec<u8>, NodeRef);

/// A node's allocation besides the node: its generation.
const NODE_HEADER_BYTES: usize = std::mem::size_of::<u64>();

/// One node's allocation: the node and the generation of the change set that made it.
pub(super) struct NodeBox {
    generation: u64,
    node: Node,
}

/// A pointer to a node, without a reference count.
///
/// Why no count: with `Arc` children, copying an inner node (a writer's first change below it
/// since the last publish) incremented the count of each of its up to 64 children and freeing
/// the old copy decremented them again — one cache miss per child, and on x86 a locked
/// operation that waits for its miss. That was a third of a batch of 1,000 random puts over a
/// million keys. Here a copy copies the pointers and nothing else.
///
/// Who frees a node instead (see `mod.rs`, "Ownership"): a node belongs to the lineage of one
/// tree. It is freed when the change that made it unreachable is no longer visible to anyone:
/// at once if nobody but the writer ever saw it (its generation is the writer's current one,
/// [`Cx::discard`]), else with the last handle on the last version that still reached it
/// (`Version`'s drop).
///
/// Invariant that makes [`Deref`] sound: a `NodeRef` is only ever stored in a tree (its root,
/// or an inner node's children) or in a list of retired nodes, and a node stays allocated as
/// long as any tree that reaches it can be borrowed. Code outside this module never sees one.
pub(super) struct NodeRef(NonNull<NodeBox>);

// SAFETY: a node reachable from more than one tree version is never written (only nodes of the
// writer's own generation are, through `&mut` access to the one tree that reaches them), so
// sharing and sending pointers to them between threads is as safe as sharing `&Node`, and
// `Node` is `Send + Sync` (vectors of plain data and of these pointers).
unsafe impl Send for NodeRef {}
// SAFETY: as for `Send` above.
unsafe impl Sync for NodeRef {}

impl NodeRef {
    /// A new node of generation `generation`.
    pub(super) fn new(node: Node, generation: u64) -> NodeRef {
        #[cfg(test)]
        live::add(1);
        let node = NodeBox { generation, node };
        let b = match pool::take_box() {
            Some(mut b) => {
                b.write(node);
                // SAFETY: written on the line above.
                unsafe { b.assume_init() }
            }
            None => Box::new(node),
        };
        let node = NodeRef(NonNull::from(Box::leak(b)));
        node.note_memory();
        node
    }

    /// Reports where this node's memory is (its allocation and its buffers), so that it is
    /// backed with huge pages (see `huge_backing`).
    #[inline]
    fn note_memory(&self) {
        let (keys, second) = match &**self {
            Node::Leaf(leaf) => (&leaf.keys, leaf.vals.as_ptr() as usize),
            Node::Inner(inner) => (&inner.keys, inner.children.as_ptr() as usize),
        };
        huge_backing::note(&[
            self.0.as_ptr() as usize,
            keys.data.as_ptr() as usize,
            keys.ends.as_ptr() as usize,
            keys.heads.as_ptr() as usize,
            second,
        ]);
    }

    /// Asks for the node's allocation (generation and node: what a descent reads first).
    #[inline]
    pub(super) fn prefetch_allocation(&self) {
        crate::prefetch::prefetch_range(self.0.as_ptr() as usize, std::mem::size_of::<NodeBox>());
    }

    #[inline]
    pub(super) fn generation(&self) -> u64 {
        // SAFETY: see `Deref`: a stored `NodeRef` points to a live node.
        unsafe { self.0.as_ref().generation }
    }

    /// Another pointer to the same node: for a copy of a parent, or a node moved to another
    /// parent. It owns nothing; the node's lineage does.
    #[inline]
    pub(super) fn alias(&self) -> NodeRef {
        NodeRef(self.0)
    }

    /// Frees this node alone (its children are left as they are).
    ///
    /// # Safety
    /// Nothing may reach the node any more: no tree version anyone can still read, no list it
    /// will be freed from again.
    pub(super) unsafe fn free(self) {
        #[cfg(test)]
        live::add(-1);
        let raw = self.0.as_ptr();
        // SAFETY: made by `Box::leak` in `new`, and the caller guarantees that this is the only
        // release: the node is dropped once, and its allocation, left uninitialised, goes back
        // as a `MaybeUninit` of the same layout.
        let b = unsafe {
            std::ptr::drop_in_place(raw);
            Box::from_raw(raw.cast::<std::mem::MaybeUninit<NodeBox>>())
        };
        pool::give_box(b);
    }

    /// Frees the nodes of generation `generation` in this subtree: a writer's unpublished change
    /// set, which only reaches down from the root to nodes of other generations (a node is
    /// copied before anything below it is).
    ///
    /// # Safety
    /// Nothing but the tree being dropped may reach the nodes of generation `generation`.
    pub(super) unsafe fn free_generation(self, generation: u64) {
        if self.generation() != generation {
            return;
        }
        // SAFETY: the caller's guarantee, node by node.
        unsafe {
            if let Node::Inner(inner) = &*self {
                for c in &inner.children {
                    c.alias().free_generation(generation);
                }
            }
            self.free();
        }
    }
}

impl Deref for NodeRef {
    type Target = Node;

    #[inline]
    fn deref(&self) -> &Node {
        // SAFETY: the invariant on `NodeRef`: the node outlives every borrow of what stores
        // the pointer, and is written only through `Cx::make_mut` while its one tree is
        // borrowed mutably, so no `&Node` from here is alive then.
        unsafe { &self.0.as_ref().node }
    }
}

/// A writer's change set on one tree: the generation its new nodes get, and the nodes of older
/// generations it has replaced (still reachable from the version it started from).
pub(super) struct Cx<'t> {
    pub(super) generation: u64,
    pub(super) retired: &'t mut Vec<NodeRef>,
}

impl Cx<'_> {
    /// A new node of this change set.
    #[inline]
    pub(super) fn alloc(&self, node: Node) -> NodeRef {
        NodeRef::new(node, self.generation)
    }

    /// The node at `slot`, for writing: a node of this change set is written in place; any
    /// other may be seen by readers of an older version, so it is copied (its children stay
    /// shared) and retired.
    #[inline]
    pub(super) fn make_mut<'n>(&mut self, slot: &'n mut NodeRef) -> &'n mut Node {
        if slot.generation() != self.generation {
            let copy = self.alloc((**slot).clone());
            self.retired.push(std::mem::replace(slot, copy));
        }
        // SAFETY: the node is of this change set's generation, so only this tree reaches it,
        // through `slot` (one parent each), which is borrowed mutably for `'n`.
        unsafe { &mut (*slot.0.as_ptr()).node }
    }

    /// Lets go of a node taken out of the tree: freed now if it is of this change set
    /// (nobody else ever saw it), else retired.
    #[inline]
    pub(super) fn discard(&mut self, node: NodeRef) {
        if node.generation() == self.generation {
            // SAFETY: a node of this change set is reachable only from this tree, and the
            // caller has taken it out.
            unsafe { node.free() }
        } else {
            self.retired.push(node);
        }
    }

    /// Puts `node` at `slot`, letting go of the node that was there.
    #[inline]
    fn replace(&mut self, slot: &mut NodeRef, node: Node) {
        let old = std::mem::replace(slot, self.alloc(node));
        self.discard(old);
    }
}

/// Live node count of this thread, for the tests that check nothing leaks.
#[cfg(test)]
pub(super) mod live {
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<i64> = const { Cell::new(0) };
    }

    pub(crate) fn add(n: i64) {
        LIVE.with(|l| l.set(l.get() + n));
    }

    /// Nodes made minus nodes freed on this thread.
    pub(crate) fn count() -> i64 {
        LIVE.with(Cell::get)
    }
}

/// Converts an arena offset to the stored `u32`.
///
/// Arenas hold at most `MAX_NODE_KEY_BYTES` plus a few maximal keys, so this
/// can only fail if the caller violates the documented key-length contract
/// by gigabytes; that is treated as an invariant violation.
#[inline]
fn off(n: usize) -> u32 {
    u32::try_from(n).expect("index node key arena exceeds u32::MAX bytes (key far too long)")
}

/// Grows `v` so that `additional` more elements fit, without `Vec`'s
/// default doubling.
///
/// Why: memory per key is a design target. Doubling would leave nodes up to
/// 50% slack (25% on average); growing by ~1/8 keeps average slack around
/// 6% while still amortising reallocation over several inserts. `min_step`
/// avoids reallocating on every insert while a node is tiny.
#[inline]
fn grow<T>(v: &mut Vec<T>, additional: usize, min_step: usize) {
    if v.capacity() - v.len() < additional {
        v.reserve_exact(additional.max(v.len() / 8).max(min_step));
    }
}

/// Gives back memory once a vector has shrunk to well under half its
/// capacity (after deletes), keeping a little headroom so that a
/// delete/insert mix does not reallocate back and forth.
#[inline]
fn maybe_shrink<T>(v: &mut Vec<T>) {
    if v.capacity() > 2 * v.len() + 8 {
        v.shrink_to(v.len() + v.len() / 8);
    }
}

/// The memory of a slice as bytes, for prefetch hints only.
#[inline]
fn as_bytes<T>(v: &[T]) -> &[u8] {
    // SAFETY: the view covers exactly the slice's memory (`size_of_val`) and `u8` has
    // alignment 1. Its only users are prefetch hints, which never read the bytes into the
    // program, so padding or pointer bytes among them are never observed.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Shortest prefix `s` of `right` with `left < s <= right`.
///
/// Used as the separator between two leaves: any key in the left leaf is
/// `<= left < s` and any key in the right leaf is `>= right >= s`, so `s` is
/// a correct separator while usually being 1-3 bytes instead of a whole key,
/// which keeps inner nodes small and wide. Requires `left < right`.
pub(super) fn shortest_separator<'k>(left: &[u8], right: &'k [u8]) -> &'k [u8] {
    &right[..(lcp(left, right) + 1).min(right.len())]
}

/// Length of the longest common prefix of `a` and `b`.
#[inline]
fn lcp(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The first 4 bytes of `s` as a big-endian integer, zero-padded.
///
/// Monotone: `a < b` implies `head(a) <= head(b)`, so comparing heads
/// orders keys correctly whenever the heads differ; equal heads (which
/// includes the zero-padding ambiguity) fall back to comparing bytes.
#[inline]
fn head(s: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = s.len().min(4);
    b[..n].copy_from_slice(&s[..n]);
    u32::from_be_bytes(b)
}

/// An ordered list of byte strings packed into one arena.
///
/// Key `i` is `data[ends[i-1]..ends[i]]` (with a start of 0 for `i = 0`).
/// One allocation for all key bytes plus 8 bytes of metadata per key (end
/// offset and head) is what keeps the per-key overhead small: no per-key
/// allocation.
///
/// Search speed: every key in the node starts with `data[..prefix]` (a
/// common prefix, not necessarily the longest), and `heads[i]` caches the 4
/// key bytes after it. A lookup compares the probe's prefix once, binary
/// searches the dense `heads` array (4 bytes per key, so a 64-key node's
/// heads span 4 cache lines) and touches the arena only to confirm a match
/// or break a tie. Lookups in a large tree are bound by cache misses, and
/// this avoids the several arena misses per node that comparing full keys
/// at every probe would cost.
#[derive(Default)]
pub(super) struct Keys {
    data: Vec<u8>,
    ends: Vec<u32>,
    heads: Vec<u32>,
    prefix: u32,
}

// Node buffers come from and go back to the writer's pool (see `pool.rs`) when one is lent to
// this thread, so that the copies each transaction makes do not go through the allocator.
impl Clone for Keys {
    fn clone(&self) -> Keys {
        Keys {
            data: pool::copy_of(&self.data),
            ends: pool::copy_of(&self.ends),
            heads: pool::copy_of(&self.heads),
            prefix: self.prefix,
        }
    }
}

impl Keys {
    /// A copy with `key` inserted as key `i`, made in one pass: what a shared node about to
    /// get a new key is replaced with. (A copy and then an insert would move the keys after
    /// `i` twice.)
    fn copy_inserting(&self, i: usize, key: &[u8]) -> Keys {
        let n = self.len();
        let p = self.prefix as usize;
        let shares = n > 0 && key.len() >= p && key[..p] == self.data[..p];
        let pos = self.start(i);
        let mut data = pool::take(self.data.len() + key.len());
        data.extend_from_slice(&self.data[..pos]);
        data.extend_from_slice(key);
        data.extend_from_slice(&self.data[pos..]);
        let mut ends = pool::take(n + 1);
        ends.extend_from_slice(&self.ends[..i]);
        ends.push(off(pos + key.len()));
        let k32 = off(key.len());
        ends.extend(self.ends[i..].iter().map(|e| e + k32));
        let mut heads = pool::take(n + 1);
        heads.extend_from_slice(&self.heads[..i]);
        heads.push(head(key.get(p..).unwrap_or_default()));
        heads.extend_from_slice(&self.heads[i..]);
        let mut keys = Keys { data, ends, heads, prefix: self.prefix };
        if !shares {
            keys.reprefix();
        }
        keys
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.data));
        pool::give(std::mem::take(&mut self.ends));
        pool::give(std::mem::take(&mut self.heads));
    }
}

impl Keys {
    /// Asks for the lines a search of this node reads first — all of `heads` and the start of
    /// the arena (the prefix) — so that their cache misses overlap instead of following one
    /// another.
    #[inline]
    pub(super) fn prefetch_for_search(&self) {
        crate::prefetch::prefetch_all(as_bytes(&self.heads));
        crate::prefetch::prefetch(&self.data);
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Total key bytes (what the byte-based split limit is measured on).
    #[inline]
    pub(super) fn bytes(&self) -> usize {
        self.data.len()
    }

    #[inline]
    fn start(&self, i: usize) -> usize {
        if i == 0 { 0 } else { self.ends[i - 1] as usize }
    }

    #[inline]
    pub(super) fn get(&self, i: usize) -> &[u8] {
        &self.data[self.start(i)..self.ends[i] as usize]
    }

    /// Key bytes of keys `lo..hi`.
    #[inline]
    fn range_bytes(&self, lo: usize, hi: usize) -> usize {
        self.start(hi) - self.start(lo)
    }

    /// First phase of a search: the range `lo..hi` of keys whose head
    /// equals the probe's (keys before `lo` are smaller, keys from `hi` on
    /// are larger), plus the probe's bytes after the node prefix.
    #[inline]
    fn head_range<'k>(&self, key: &'k [u8]) -> (usize, usize, &'k [u8]) {
        let n = self.heads.len();
        let p = self.prefix as usize;
        if p > 0 {
            // A key not starting with the node prefix sorts before or after
            // every key here (a proper prefix of it sorts before).
            match key[..p.min(key.len())].cmp(&self.data[..p]) {
                Ordering::Less => return (0, 0, key),
                Ordering::Greater => return (n, n, key),
                Ordering::Equal => {}
            }
        }
        let rest = key.get(p..).unwrap_or_default();
        let hk = head(rest);
        // Heads are non-decreasing (`head` is monotone and keys sorted).
        let lo = self.heads.partition_point(|&h| h < hk);
        let mut hi = lo;
        while hi < n && self.heads[hi] == hk {
            hi += 1;
        }
        (lo, hi, rest)
    }

    /// Bytes of key `i` after the node prefix.
    #[inline]
    fn rest(&self, i: usize) -> &[u8] {
        self.get(i).get(self.prefix as usize..).unwrap_or_default()
    }

    /// Same contract as `slice::binary_search` over the keys.
    #[inline]
    pub(super) fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let (mut lo, mut hi, rest) = self.head_range(key);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.rest(mid).cmp(rest) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// Recomputes every head for common-prefix length `p`.
    fn set_prefix(&mut self, p: usize) {
        self.prefix = off(p);
        self.heads.clear();
        let mut start = 0;
        for &end in &self.ends {
            let end = end as usize;
            self.heads.push(head(self.data.get(start + p..end).unwrap_or_default()));
            start = end;
        }
    }

    /// Sets the prefix to the longest one shared by all keys (that of the
    /// first and the last key, as keys are sorted).
    fn reprefix(&mut self) {
        let n = self.len();
        let p = if n == 0 { 0 } else { lcp(self.get(0), self.get(n - 1)) };
        self.set_prefix(p);
    }

    /// Inserts `key` as key `i`. `doubling`: grow the arrays by doubling (see
    /// `Leaf::insert_at`) rather than by an eighth.
    fn insert(&mut self, i: usize, key: &[u8], doubling: bool) {
        let n = self.len();
        let p = self.prefix as usize;
        let step = |base: usize, len: usize| if doubling { base.max(len) } else { base };
        // A key inserted between two keys shares their prefix; only a new
        // first or last key can break it, and then heads are recomputed.
        let shares = n > 0 && key.len() >= p && key[..p] == self.data[..p];
        let pos = self.start(i);
        let old_len = self.data.len();
        let k = key.len();
        grow(&mut self.data, k, step(4 * k, old_len));
        self.data.resize(old_len + k, 0);
        self.data.copy_within(pos..old_len, pos + k);
        self.data[pos..pos + k].copy_from_slice(key);
        grow(&mut self.ends, 1, step(4, n));
        grow(&mut self.heads, 1, step(4, n));
        self.ends.insert(i, off(pos + k));
        self.heads.insert(i, head(key.get(p..).unwrap_or_default()));
        let k32 = off(k);
        for e in &mut self.ends[i + 1..] {
            *e += k32;
        }
        if !shares {
            self.reprefix();
        }
    }

    /// Removing keys never invalidates the common prefix, so heads stay.
    fn remove(&mut self, i: usize) {
        let (s, e) = (self.start(i), self.ends[i] as usize);
        self.data.copy_within(e.., s);
        self.data.truncate(self.data.len() - (e - s));
        self.ends.remove(i);
        self.heads.remove(i);
        let k32 = off(e - s);
        for end in &mut self.ends[i..] {
            *end -= k32;
        }
        if self.ends.is_empty() {
            self.prefix = 0;
        }
    }

    fn replace(&mut self, i: usize, key: &[u8]) {
        self.remove(i);
        self.insert(i, key, false);
    }

    /// Keeps keys `..at`, returns keys `at..` in a new exactly-sized arena.
    /// Both halves get their (usually longer) own common prefix.
    fn split_off(&mut self, at: usize) -> Keys {
        let base = self.start(at);
        let b32 = off(base);
        let mut tail = Keys {
            data: self.data[base..].to_vec(),
            ends: self.ends[at..].iter().map(|e| e - b32).collect(),
            heads: Vec::with_capacity(self.len() - at),
            prefix: 0,
        };
        self.data.truncate(base);
        self.ends.truncate(at);
        self.heads.truncate(at);
        self.reprefix();
        tail.reprefix();
        tail
    }

    /// Removes the last key and returns it.
    fn pop(&mut self) -> Vec<u8> {
        let n = self.len();
        let s = self.start(n - 1);
        let key = self.data[s..].to_vec();
        self.data.truncate(s);
        self.ends.pop();
        self.heads.pop();
        if self.ends.is_empty() {
            self.prefix = 0;
        }
        key
    }

    /// `a ++ [mid] ++ b` with exact capacity.
    fn concat(a: &Keys, mid: Option<&[u8]>, b: &Keys) -> Keys {
        let mid_len = mid.map_or(0, <[u8]>::len);
        let n = a.len() + usize::from(mid.is_some()) + b.len();
        let mut data = Vec::with_capacity(a.bytes() + mid_len + b.bytes());
        let mut ends = Vec::with_capacity(n);
        data.extend_from_slice(&a.data);
        ends.extend_from_slice(&a.ends);
        if let Some(m) = mid {
            data.extend_from_slice(m);
            ends.push(off(data.len()));
        }
        let base = off(data.len());
        data.extend_from_slice(&b.data);
        ends.extend(b.ends.iter().map(|e| e + base));
        let mut keys = Keys { data, ends, heads: Vec::with_capacity(n), prefix: 0 };
        keys.reprefix();
        keys
    }

    fn shrink_to_fit(&mut self) {
        self.data.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.heads.shrink_to_fit();
    }

    fn maybe_shrink(&mut self) {
        maybe_shrink(&mut self.data);
        maybe_shrink(&mut self.ends);
        maybe_shrink(&mut self.heads);
    }

    fn heap_bytes(&self) -> usize {
        self.data.capacity() + (self.ends.capacity() + self.heads.capacity()) * std::mem::size_of::<u32>()
    }
}

/// Leaf: entry `i` is `(keys.get(i), vals[i])`, keys strictly ascending.
#[derive(Default)]
pub(super) struct Leaf {
    pub(super) keys: Keys,
    pub(super) vals: Vec<ValueRef>,
}

impl Clone for Leaf {
    fn clone(&self) -> Leaf {
        Leaf { keys: self.keys.clone(), vals: pool::copy_of(&self.vals) }
    }
}

impl Leaf {
    /// A copy with `(key, val)` inserted as entry `i`, in one pass (see `Keys::copy_inserting`).
    fn copy_inserting(&self, i: usize, key: &[u8], val: ValueRef) -> Leaf {
        let mut vals = pool::take(self.vals.len() + 1);
        vals.extend_from_slice(&self.vals[..i]);
        vals.push(val);
        vals.extend_from_slice(&self.vals[i..]);
        Leaf { keys: self.keys.copy_inserting(i, key), vals }
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.vals));
    }
}

/// Inner node with `n` children and `n - 1` separators.
///
/// Separator invariant: every key in `children[i]` is `>= keys[i-1]` and
/// `< keys[i]`. Separators need not be keys present in the tree (they are
/// shortened on leaf splits and may go stale after deletes); only this
/// bracketing matters, and it is what `child_index` relies on.
#[derive(Default)]
pub(super) struct Inner {
    pub(super) keys: Keys,
    pub(super) children: Vec<NodeRef>,
}

// A copy's children are the same nodes (pointers copied, nothing counted: see `NodeRef`); a
// freed inner node frees only itself.
impl Clone for Inner {
    fn clone(&self) -> Inner {
        Inner { keys: self.keys.clone(), children: pool::copy_of(&self.children) }
    }
}

impl Clone for NodeRef {
    /// As [`NodeRef::alias`] (for copies of child lists).
    fn clone(&self) -> NodeRef {
        self.alias()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.children));
    }
}

/// A tree node. Nodes are shared between tree versions; a node reachable
/// from more than one version is immutable, and the writer gets a private
/// copy through [`Cx::make_mut`] before touching it (the copy shares all of
/// its children, so a write copies only one root-to-leaf path).
#[derive(Clone)]
pub(super) enum Node {
    Leaf(Leaf),
    Inner(Inner),
}

impl Node {
    /// Asks for the lines a search of this node reads — its keys' heads and prefix, and its
    /// values or child pointers — before the search needs them, so that those cache
    /// misses overlap instead of following one another down each level. (Measured: random
    /// `get` over 1M keys 1,201–1,373 → 810–1,007 ns, eight alternated runs of the demo.)
    #[inline]
    pub(super) fn prefetch_for_search(&self) {
        match self {
            Node::Leaf(leaf) => {
                leaf.keys.prefetch_for_search();
                crate::prefetch::prefetch_all(as_bytes(&leaf.vals));
            }
            Node::Inner(inner) => {
                inner.keys.prefetch_for_search();
                crate::prefetch::prefetch_all(as_bytes(&inner.children));
            }
        }
    }

    /// For a leaf, asks for what a scan through it reads: its key offsets, keys and values
    /// (an insert's copy reads these and the heads: `prefetch_for_insert`). Nothing for an
    /// inner node.
    #[inline]
    pub(super) fn prefetch_for_scan(&self) {
        if let Node::Leaf(leaf) = self {
            crate::prefetch::prefetch_all(as_bytes(&leaf.keys.ends));
            crate::prefetch::prefetch_all(&leaf.keys.data);
            crate::prefetch::prefetch_all(as_bytes(&leaf.vals));
        }
    }

    /// As [`prefetch_for_search`](Self::prefetch_for_search), and for a leaf all of it: an
    /// insert into a leaf shared with readers copies every byte of it.
    #[inline]
    pub(super) fn prefetch_for_insert(&self) {
        match self {
            Node::Leaf(leaf) => {
                crate::prefetch::prefetch_all(as_bytes(&leaf.keys.heads));
                self.prefetch_for_scan();
            }
            Node::Inner(_) => self.prefetch_for_search(),
        }
    }
}

// ---------------------------------------------------------------------------
// Fill rules.
//
// Upper bounds (hard, checked by `check_invariants`):
//   leaf:  1..=MAX_LEAF_ENTRIES entries, key bytes <= MAX_NODE_KEY_BYTES
//          unless it holds a single entry;
//   inner: 2..=MAX_CHILDREN children, separator bytes <= MAX_NODE_KEY_BYTES
//          unless it holds at most 2 separators.
// The exemptions exist because a single key (or the separators around one
// child) can be bigger than the limit; those are the smallest pieces a node
// can be split into while keeping leaves non-empty and inner nodes binary.
//
// Lower bounds (soft): there is no hard minimum fill beyond non-emptiness,
// because sequential-insert splits deliberately leave a tiny right node and
// byte-based splits can leave few entries. Deletes restore fill lazily: a
// node that is underfull after a delete in it is merged with a sibling or
// refilled from one.
// ---------------------------------------------------------------------------

/// Whether a leaf with `n` entries and `bytes` key bytes exceeds the upper
/// bounds (and must be split).
#[inline]
fn leaf_over(n: usize, bytes: usize) -> bool {
    n > MAX_LEAF_ENTRIES || (n > 1 && bytes > MAX_NODE_KEY_BYTES)
}

/// Whether an inner node with `n` children and `bytes` separator bytes
/// exceeds the upper bounds (and must be split).
#[inline]
fn inner_over(n: usize, bytes: usize) -> bool {
    n > MAX_CHILDREN || (n > 3 && bytes > MAX_NODE_KEY_BYTES)
}

/// Leaf entries `lo..hi` form a valid leaf.
#[inline]
fn leaf_range_ok(keys: &Keys, lo: usize, hi: usize) -> bool {
    hi > lo && !leaf_over(hi - lo, keys.range_bytes(lo, hi))
}

/// Children `lo..hi` together with separators `lo..hi-1` form a valid
/// inner node.
#[inline]
fn inner_range_ok(keys: &Keys, lo: usize, hi: usize) -> bool {
    hi >= lo + 2 && !inner_over(hi - lo, keys.range_bytes(lo, hi - 1))
}

/// How "big" a piece is relative to its limits; splits minimise the larger
/// half's cost, i.e. they balance entry counts when keys are small and key
/// bytes when keys are big.
#[inline]
fn cost(count: usize, max_count: usize, bytes: usize) -> u64 {
    let by_count = count as u64 * MAX_NODE_KEY_BYTES as u64;
    let by_bytes = bytes as u64 * max_count as u64;
    by_count.max(by_bytes)
}

/// Best single cut `s` of leaf entries `lo..hi` into `lo..s` and `s..hi`:
/// a cut leaving both halves within limits if one exists, the most balanced
/// among those.
fn best_leaf_cut(keys: &Keys, lo: usize, hi: usize) -> usize {
    let mut best = (u8::MAX, u64::MAX, lo + 1);
    for s in lo + 1..hi {
        let invalid = u8::from(!(leaf_range_ok(keys, lo, s) && leaf_range_ok(keys, s, hi)));
        let c = cost(s - lo, MAX_LEAF_ENTRIES, keys.range_bytes(lo, s)).max(cost(
            hi - s,
            MAX_LEAF_ENTRIES,
            keys.range_bytes(s, hi),
        ));
        if (invalid, c) < (best.0, best.1) {
            best = (invalid, c, s);
        }
    }
    best.2
}

/// Best separator index `j` to push up when cutting children `lo..hi` into
/// `lo..j+1` and `j+1..hi` (each keeping at least two children).
/// Requires `hi - lo >= 4`.
fn best_inner_cut(keys: &Keys, lo: usize, hi: usize) -> usize {
    let mut best = (u8::MAX, u64::MAX, lo + 1);
    for j in lo + 1..hi - 2 {
        let invalid = u8::from(!(inner_range_ok(keys, lo, j + 1) && inner_range_ok(keys, j + 1, hi)));
        let c = cost(j + 1 - lo, MAX_CHILDREN, keys.range_bytes(lo, j)).max(cost(
            hi - j - 1,
            MAX_CHILDREN,
            keys.range_bytes(j + 1, hi - 1),
        ));
        if (invalid, c) < (best.0, best.1) {
            best = (invalid, c, j);
        }
    }
    best.2
}

/// Appends (ascending) the cut points that split leaf entries `lo..hi` into
/// pieces that are all within limits. Terminates because every cut shrinks
/// both sides and a single entry is always within limits.
fn plan_leaf(keys: &Keys, lo: usize, hi: usize, cuts: &mut Vec<usize>) {
    if hi - lo <= 1 || leaf_range_ok(keys, lo, hi) {
        return;
    }
    let s = best_leaf_cut(keys, lo, hi);
    plan_leaf(keys, lo, s, cuts);
    cuts.push(s);
    plan_leaf(keys, s, hi, cuts);
}

/// Like `plan_leaf` for children `lo..hi` of an inner node; cut points are
/// separator indices pushed up to the parent. Fewer than 4 children always
/// fit (at most 2 separators), so the recursion ends.
fn plan_inner(keys: &Keys, lo: usize, hi: usize, cuts: &mut Vec<usize>) {
    if hi - lo < 4 || inner_range_ok(keys, lo, hi) {
        return;
    }
    let j = best_inner_cut(keys, lo, hi);
    plan_inner(keys, lo, j + 1, cuts);
    cuts.push(j);
    plan_inner(keys, j + 1, hi, cuts);
}

impl Leaf {
    pub(super) fn single(key: &[u8], val: ValueRef) -> Leaf {
        Leaf {
            keys: {
                let mut k = Keys::default();
                k.insert(0, key, false);
                k
            },
            vals: vec![val],
        }
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.vals.len()
    }

    /// Point lookup.
    #[inline]
    pub(super) fn get(&self, key: &[u8], early: impl FnOnce(ValueRef)) -> Option<ValueRef> {
        let (lo, hi, rest) = self.keys.head_range(key);
        if hi == lo + 1 {
            // The common case: one candidate. Read its value — and let the caller start
            // fetching what it points to — before confirming the key, so that the cache
            // misses overlap.
            let v = self.vals[lo];
            early(v);
            return (self.keys.rest(lo) == rest).then_some(v);
        }
        self.keys.search(key).ok().map(|i| self.vals[i])
    }

    /// Index of the first entry `>= key`.
    #[inline]
    pub(super) fn lower_bound(&self, key: &[u8]) -> usize {
        match self.keys.search(key) {
            Ok(i) | Err(i) => i,
        }
    }

    fn is_overfull(&self) -> bool {
        leaf_over(self.len(), self.keys.bytes())
    }

    fn is_underfull(&self) -> bool {
        self.len() == 0 || (self.len() < MIN_LEAF_ENTRIES && self.keys.bytes() < MIN_NODE_KEY_BYTES)
    }

    /// Inserts entry `i`. `doubling` is for appends at the right edge of the tree (ascending
    /// keys: every MVCC revision, a sorted load, recovery's sorted replay): the leaf will fill
    /// up and split, and the split trims the full left half to size, so its arrays may grow by
    /// doubling, a few reallocations per leaf instead of about fifteen, at no lasting cost in
    /// memory.
    fn insert_at(&mut self, i: usize, key: &[u8], val: ValueRef, doubling: bool) {
        self.keys.insert(i, key, doubling);
        let step = if doubling { self.vals.len().max(4) } else { 4 };
        grow(&mut self.vals, 1, step);
        self.vals.insert(i, val);
    }

    fn remove_at(&mut self, i: usize) -> ValueRef {
        self.keys.remove(i);
        let v = self.vals.remove(i);
        self.keys.maybe_shrink();
        maybe_shrink(&mut self.vals);
        v
    }

    /// Splits an overfull leaf: `self` keeps the first piece, the others are
    /// appended to `out` in key order.
    ///
    /// `appended` says the entry that made it overflow went to the end. Then
    /// the leaf is cut right before that entry so the left part stays full
    /// and the new right leaf starts with just the new key: sequential
    /// loads fill leaves to ~100% instead of ~50%.
    fn split(&mut self, appended: bool, out: &mut Vec<Piece>, generation: u64) {
        let n = self.len();
        let mut cuts = Vec::new();
        if appended && n >= 2 && leaf_range_ok(&self.keys, 0, n - 1) {
            cuts.push(n - 1);
        } else {
            plan_leaf(&self.keys, 0, n, &mut cuts);
        }
        let first = out.len();
        for &s in cuts.iter().rev() {
            let keys = self.keys.split_off(s);
            let vals = self.vals.split_off(s);
            let sep = shortest_separator(self.keys.get(s - 1), keys.get(0)).to_vec();
            out.push((sep, NodeRef::new(Node::Leaf(Leaf { keys, vals }), generation)));
        }
        out[first..].reverse();
        self.keys.shrink_to_fit();
        self.vals.shrink_to_fit();
    }

    fn concat(a: &Leaf, b: &Leaf) -> Leaf {
        let mut vals = Vec::with_capacity(a.len() + b.len());
        vals.extend_from_slice(&a.vals);
        vals.extend_from_slice(&b.vals);
        Leaf { keys: Keys::concat(&a.keys, None, &b.keys), vals }
    }

    /// Cuts `self` in two balanced, within-limit halves; returns the
    /// separator and the right half.
    fn split_in_two(mut self) -> (Leaf, Vec<u8>, Leaf) {
        let s = best_leaf_cut(&self.keys, 0, self.len());
        let keys = self.keys.split_off(s);
        let vals = self.vals.split_off(s);
        let sep = shortest_separator(self.keys.get(s - 1), keys.get(0)).to_vec();
        self.keys.shrink_to_fit();
        self.vals.shrink_to_fit();
        (self, sep, Leaf { keys, vals })
    }
}

impl Inner {
    /// Index of the child whose key range contains `key`.
    #[inline]
    pub(super) fn child_index(&self, key: &[u8]) -> usize {
        match self.keys.search(key) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    fn is_overfull(&self) -> bool {
        inner_over(self.children.len(), self.keys.bytes())
    }

    fn is_underfull(&self) -> bool {
        let n = self.children.len();
        n < 2 || (n < MIN_CHILDREN && self.keys.bytes() < MIN_NODE_KEY_BYTES)
    }

    /// Inserts the pieces split off `children[c]` right after it.
    fn insert_pieces(&mut self, c: usize, pieces: Vec<Piece>) {
        grow(&mut self.children, pieces.len(), 4);
        for (t, (sep, node)) in pieces.into_iter().enumerate() {
            self.keys.insert(c + t, &sep, false);
            self.children.insert(c + 1 + t, node);
        }
    }

    /// Splits an overfull inner node: `self` keeps the first piece, the
    /// others go to `out` in key order.
    ///
    /// `grown_last = Some(c)` means the overflow came from splitting the
    /// last child `c` (sequential inserts). Then the cut is placed before
    /// child `c` so `self` stays nearly full and the new right node holds
    /// only the still-growing rightmost children.
    fn split(&mut self, grown_last: Option<usize>, out: &mut Vec<Piece>, generation: u64) {
        let n = self.children.len();
        let mut cuts = Vec::new();
        match grown_last {
            Some(c) if c >= 2 && c + 2 <= n && inner_range_ok(&self.keys, 0, c) => {
                cuts.push(c - 1);
                plan_inner(&self.keys, c, n, &mut cuts);
            }
            _ => plan_inner(&self.keys, 0, n, &mut cuts),
        }
        let first = out.len();
        for &j in cuts.iter().rev() {
            let children = self.children.split_off(j + 1);
            let keys = self.keys.split_off(j + 1);
            let sep = self.keys.pop();
            out.push((sep, NodeRef::new(Node::Inner(Inner { keys, children }), generation)));
        }
        out[first..].reverse();
        self.keys.shrink_to_fit();
        self.children.shrink_to_fit();
    }

    fn concat(a: &Inner, sep: &[u8], b: &Inner) -> Inner {
        let mut children = Vec::with_capacity(a.children.len() + b.children.len());
        children.extend(a.children.iter().map(NodeRef::alias));
        children.extend(b.children.iter().map(NodeRef::alias));
        Inner { keys: Keys::concat(&a.keys, Some(sep), &b.keys), children }
    }

    fn split_in_two(mut self) -> (Inner, Vec<u8>, Inner) {
        let j = best_inner_cut(&self.keys, 0, self.children.len());
        let children = self.children.split_off(j + 1);
        let keys = self.keys.split_off(j + 1);
        let sep = self.keys.pop();
        self.keys.shrink_to_fit();
        self.children.shrink_to_fit();
        (self, sep, Inner { keys, children })
    }

    /// Whether children `i` and `i + 1` fit in one node.
    fn can_merge(&self, i: usize) -> bool {
        match (&*self.children[i], &*self.children[i + 1]) {
            (Node::Leaf(a), Node::Leaf(b)) => !leaf_over(a.len() + b.len(), a.keys.bytes() + b.keys.bytes()),
            (Node::Inner(a), Node::Inner(b)) => {
                let n = a.children.len() + b.children.len();
                !inner_over(n, a.keys.bytes() + self.keys.get(i).len() + b.keys.bytes())
            }
            _ => false,
        }
    }

    /// Restores fill after `children[c]` became underfull: merge it with a
    /// neighbour when the two fit in one node, otherwise share the
    /// neighbour's entries evenly between the two. Empty children always
    /// merge (merging with an empty node always fits), so no empty node
    /// survives.
    fn rebalance(&mut self, c: usize, cx: &mut Cx<'_>) {
        let n = self.children.len();
        if n < 2 {
            return;
        }
        let left = c.checked_sub(1);
        let right = (c + 1 < n).then_some(c);
        let pair = [left, right].into_iter().flatten().find(|&i| self.can_merge(i)).or(left).or(right);
        let Some(i) = pair else { return };

        // The pair is rebuilt into fresh, exactly sized nodes rather than
        // edited in place: the siblings may be shared with snapshots anyway,
        // and this keeps the merged node free of slack.
        let merged = match (&*self.children[i], &*self.children[i + 1]) {
            (Node::Leaf(a), Node::Leaf(b)) => Node::Leaf(Leaf::concat(a, b)),
            (Node::Inner(a), Node::Inner(b)) => Node::Inner(Inner::concat(a, self.keys.get(i), b)),
            _ => panic!("index B-tree invariant violated: siblings at different depths"),
        };
        let overfull = match &merged {
            Node::Leaf(l) => l.is_overfull(),
            Node::Inner(m) => m.is_overfull(),
        };
        if !overfull {
            cx.replace(&mut self.children[i], merged);
            let right = self.children.remove(i + 1);
            cx.discard(right);
            self.keys.remove(i);
            self.keys.maybe_shrink();
            maybe_shrink(&mut self.children);
            return;
        }
        // Two siblings that are each within limits can always be re-cut
        // into two halves within limits (their original boundary is one such
        // cut, or for a one-child inner node, moving one child over is), so
        // this never changes the number of children.
        let (l, sep, r) = match merged {
            Node::Leaf(m) => {
                let (l, sep, r) = m.split_in_two();
                (Node::Leaf(l), sep, Node::Leaf(r))
            }
            Node::Inner(m) => {
                let (l, sep, r) = m.split_in_two();
                (Node::Inner(l), sep, Node::Inner(r))
            }
        };
        cx.replace(&mut self.children[i], l);
        cx.replace(&mut self.children[i + 1], r);
        self.keys.replace(i, &sep);
    }
}

impl Node {
    fn is_underfull(&self) -> bool {
        match self {
            Node::Leaf(l) => l.is_underfull(),
            Node::Inner(i) => i.is_underfull(),
        }
    }

    pub(super) fn heap_bytes(&self) -> usize {
        let own = NODE_HEADER_BYTES + std::mem::size_of::<Node>();
        match self {
            Node::Leaf(l) => own + l.keys.heap_bytes() + l.vals.capacity() * std::mem::size_of::<ValueRef>(),
            Node::Inner(i) => {
                own + i.keys.heap_bytes()
                    + i.children.capacity() * std::mem::size_of::<NodeRef>()
                    + i.children.iter().map(|c| c.heap_bytes()).sum::<usize>()
            }
        }
    }
}

/// Inserts into the subtree at `node`; returns the previous value.
///
/// Every node on the path is obtained with [`Cx::make_mut`]: a node an older
/// version may share is copied (its children stay shared), one of this change
/// set is edited in place. If `node` overflows, it keeps its first piece and
/// the rest go to `out` for the caller to link in.
///
/// `rightmost` says `node` is on the tree's right edge (its root, the last child of the
/// last child…), where an append is an ascending-key workload.
pub(super) fn insert(
    node: &mut NodeRef,
    key: &[u8],
    val: ValueRef,
    out: &mut Vec<Piece>,
    rightmost: bool,
    cx: &mut Cx<'_>,
) -> Option<ValueRef> {
    node.prefetch_for_search();
    // A shared leaf is copied before it changes. If the change is a new key, the copy is made
    // with the key in place, in one pass: `make_mut`'s exact copy would be grown — copied
    // again, through the allocator — by the insert, and the insert would move the keys after
    // it once more. The search is done once: the copy holds the same keys.
    let mut leaf_slot = None;
    if let Node::Leaf(leaf) = &**node {
        let slot = leaf.keys.search(key);
        if let Err(i) = slot
            && node.generation() != cx.generation
        {
            let mut copy = leaf.copy_inserting(i, key, val);
            if copy.is_overfull() {
                copy.split(i == leaf.len(), out, cx.generation);
            }
            cx.replace(node, Node::Leaf(copy));
            return None;
        }
        leaf_slot = Some(slot);
    }
    let generation = cx.generation;
    match cx.make_mut(node) {
        Node::Leaf(leaf) => match leaf_slot.unwrap_or_else(|| leaf.keys.search(key)) {
            Ok(i) => Some(std::mem::replace(&mut leaf.vals[i], val)),
            Err(i) => {
                let appended = i == leaf.len();
                leaf.insert_at(i, key, val, rightmost && appended);
                if leaf.is_overfull() {
                    leaf.split(appended, out, generation);
                }
                None
            }
        },
        Node::Inner(inner) => {
            let c = inner.child_index(key);
            let mut pieces = Vec::new();
            let last = c + 1 == inner.children.len();
            let old = insert(&mut inner.children[c], key, val, &mut pieces, rightmost && last, cx);
            if !pieces.is_empty() {
                let was_last = c + 1 == inner.children.len();
                inner.insert_pieces(c, pieces);
                if inner.is_overfull() {
                    inner.split(was_last.then_some(c), out, generation);
                }
            }
            old
        }
    }
}

/// Removes `key` from the subtree at `node`; returns the removed value.
///
/// Copies the path like `insert`, so callers should first check that the
/// key exists to avoid copying shared nodes for nothing. Rebalancing can
/// lengthen a separator in `node` (a redistributed boundary gets a new
/// separator), which may push it over the byte limit; it then splits into
/// `out` exactly as on insert.
pub(super) fn remove(node: &mut NodeRef, key: &[u8], out: &mut Vec<Piece>, cx: &mut Cx<'_>) -> Option<ValueRef> {
    node.prefetch_for_search();
    let generation = cx.generation;
    match cx.make_mut(node) {
        Node::Leaf(leaf) => {
            let i = leaf.keys.search(key).ok()?;
            Some(leaf.remove_at(i))
        }
        Node::Inner(inner) => {
            let c = inner.child_index(key);
            let mut pieces = Vec::new();
            let old = remove(&mut inner.children[c], key, &mut pieces, cx)?;
            if !pieces.is_empty() {
                inner.insert_pieces(c, pieces);
            } else if inner.children[c].is_underfull() {
                inner.rebalance(c, cx);
            }
            if inner.is_overfull() {
                inner.split(None, out, generation);
            }
            Some(old)
        }
    }
}

/// Puts new levels on top of `root` until the pieces split off the old root
/// are all linked in.
pub(super) fn grow_root(mut root: NodeRef, mut pieces: Vec<Piece>, generation: u64) -> NodeRef {
    while !pieces.is_empty() {
        let mut inner = Inner { keys: Keys::default(), children: vec![root] };
        inner.insert_pieces(0, pieces);
        let mut out = Vec::new();
        if inner.is_overfull() {
            inner.split(None, &mut out, generation);
        }
        root = NodeRef::new(Node::Inner(inner), generation);
        pieces = out;
    }
    root
}

/// Keys longer than this make [`build`] decline (the caller inserts one by one instead): with
/// every key at most 1 KiB, a node closed at the byte limit still holds at least 16 keys or
/// children, which is what lets `build` keep every inner node at two children or more.
pub(super) const BUILD_MAX_KEY: usize = 1024;

impl Keys {
    /// Appends a key after all others (the caller keeps the order); the prefix and heads are
    /// set once the node is complete, by `reprefix`.
    fn push_unprefixed(&mut self, key: &[u8]) {
        self.data.extend_from_slice(key);
        self.ends.push(off(self.data.len()));
    }
}

/// Builds a tree holding `entries` — strictly ascending keys, each at most
/// [`BUILD_MAX_KEY`] bytes — bottom up: leaves filled in order to the count and byte limits,
/// then each level of inner nodes over the one below, with the shortest separators, as a
/// sequence of ascending inserts would leave it but without a search or a copy per key.
/// Returns the root (`None` for no entries). Recovery uses it to load a bucket's keys when
/// its tree is empty.
pub(super) fn build<'k>(entries: impl IntoIterator<Item = (&'k [u8], ValueRef)>, generation: u64) -> Option<NodeRef> {
    let (nodes, seps) = build_leaves(entries, generation);
    build_levels(nodes, seps, generation)
}

/// [`build`] over `entries` (strictly ascending keys, each prefetched a few entries ahead).
/// From [`BUILD_SPLIT_FROM`](super::BUILD_SPLIT_FROM) entries on, the two halves' leaves are
/// built on two threads (`parallel::join`) and joined under one separator; the first half's
/// last leaf may then be underfull, a shape ascending inserts would not leave (nothing relies
/// on full leaves).
pub(super) fn build_sorted(entries: &[(&[u8], ValueRef)], generation: u64) -> Option<NodeRef> {
    if entries.len() < super::BUILD_SPLIT_FROM {
        return build(fetched(entries), generation);
    }
    let (first, second) = entries.split_at(entries.len() / 2);
    let ((mut nodes, mut seps), (more_nodes, more_seps)) = crate::parallel::join(
        "logtree-build",
        || build_leaves(fetched(first), generation),
        || build_leaves(fetched(second), generation),
    );
    seps.push(shortest_separator(first[first.len() - 1].0, second[0].0).to_vec());
    nodes.extend(more_nodes);
    seps.extend(more_seps);
    build_levels(nodes, seps, generation)
}

/// `entries`, each key prefetched a few entries before it is taken. The keys of a sorted build
/// are read from all over the log's memory map (they are in key order, the log in write order):
/// asked for ahead, their misses overlap instead of following one another.
fn fetched<'e, 'k>(entries: &'e [(&'k [u8], ValueRef)]) -> impl Iterator<Item = (&'k [u8], ValueRef)> + 'e {
    const AHEAD: usize = 16;
    entries.iter().enumerate().map(move |(i, &entry)| {
        if let Some((key, _)) = entries.get(i + AHEAD) {
            crate::prefetch::prefetch_all(key);
        }
        entry
    })
}

/// The leaves of [`build`] over `entries` (ascending keys), and the separator before each
/// leaf but the first.
fn build_leaves<'k>(
    entries: impl IntoIterator<Item = (&'k [u8], ValueRef)>,
    generation: u64,
) -> (Vec<NodeRef>, Vec<Vec<u8>>) {
    let mut nodes: Vec<NodeRef> = Vec::new();
    let mut seps: Vec<Vec<u8>> = Vec::new();
    let mut leaf = Leaf::default();
    let mut last: &[u8] = &[];
    for (key, val) in entries {
        debug_assert!(key.len() <= BUILD_MAX_KEY);
        debug_assert!(leaf.len() == 0 && nodes.is_empty() || last < key, "keys must ascend");
        let full = leaf.len() == MAX_LEAF_ENTRIES || leaf.keys.bytes() + key.len() > MAX_NODE_KEY_BYTES;
        if leaf.len() > 0 && full {
            leaf.keys.reprefix();
            nodes.push(NodeRef::new(Node::Leaf(std::mem::take(&mut leaf)), generation));
            seps.push(shortest_separator(last, key).to_vec());
        }
        leaf.keys.push_unprefixed(key);
        leaf.vals.push(val);
        last = key;
    }
    if leaf.len() > 0 {
        leaf.keys.reprefix();
        nodes.push(NodeRef::new(Node::Leaf(leaf), generation));
    }
    (nodes, seps)
}

/// The inner levels of [`build`] over one level's `nodes` (in key order) and the separator
/// before each node but the first; returns the root.
fn build_levels(mut nodes: Vec<NodeRef>, mut seps: Vec<Vec<u8>>, generation: u64) -> Option<NodeRef> {
    debug_assert_eq!(seps.len() + 1, nodes.len().max(1));
    while nodes.len() > 1 {
        // Group the nodes: a group closes at MAX_CHILDREN children or when one more separator
        // would pass the byte limit; a last group of one borrows a node from the one before.
        let mut bounds = vec![0];
        let mut bytes = 0;
        for i in 1..nodes.len() {
            let start = *bounds.last().expect("bounds start with 0");
            if i - start == MAX_CHILDREN || bytes + seps[i - 1].len() > MAX_NODE_KEY_BYTES {
                bounds.push(i);
                bytes = 0;
            } else {
                bytes += seps[i - 1].len();
            }
        }
        let n = bounds.len();
        if n > 1 && nodes.len() - bounds[n - 1] == 1 {
            bounds[n - 1] -= 1;
        }
        bounds.push(nodes.len());
        let mut children = nodes.into_iter();
        let mut up_nodes = Vec::with_capacity(bounds.len() - 1);
        let mut up_seps = Vec::with_capacity(bounds.len().saturating_sub(2));
        for w in bounds.windows(2) {
            let (a, b) = (w[0], w[1]);
            let mut keys = Keys::default();
            for sep in &seps[a..b - 1] {
                keys.push_unprefixed(sep);
            }
            keys.reprefix();
            let inner = Inner { keys, children: children.by_ref().take(b - a).collect() };
            up_nodes.push(NodeRef::new(Node::Inner(inner), generation));
            if b < seps.len() + 1 {
                up_seps.push(std::mem::take(&mut seps[b - 1]));
            }
        }
        nodes = up_nodes;
        seps = up_seps;
    }
    nodes.pop()
}

/// Leftmost leaf of a subtree.
pub(super) fn leftmost_leaf(mut node: &Node) -> &Leaf {
    loop {
        match node {
            Node::Leaf(l) => return l,
            Node::Inner(i) => node = &i.children[0],
        }
    }
}

#[cfg(test)]
pub(super) fn check_node(
    node: &Node,
    lo: Option<&[u8]>,
    hi: Option<&[u8]>,
    is_root: bool,
    depth: usize,
    leaf_depth: &mut Option<usize>,
) -> usize {
    let keys = match node {
        Node::Leaf(l) => &l.keys,
        Node::Inner(i) => &i.keys,
    };
    // Arena layout, common prefix and cached heads.
    assert_eq!(keys.ends.len(), keys.heads.len());
    let mut prev_end = 0u32;
    for &e in &keys.ends {
        assert!(e >= prev_end, "ends not monotonic");
        prev_end = e;
    }
    assert_eq!(keys.data.len(), prev_end as usize, "arena length != last end");
    let p = keys.prefix as usize;
    if keys.len() == 0 {
        assert_eq!(p, 0);
    }
    for i in 0..keys.len() {
        let k = keys.get(i);
        assert!(k.len() >= p && k[..p] == keys.data[..p], "key lacks the node prefix");
        assert_eq!(keys.heads[i], head(&k[p..]), "stale head");
    }
    // Ordering and bracketing by the parent's separators.
    for i in 0..keys.len() {
        let k = keys.get(i);
        if i > 0 {
            assert!(keys.get(i - 1) < k, "keys not strictly ascending");
        }
        if let Some(lo) = lo {
            assert!(lo <= k, "key below lower separator");
        }
        if let Some(hi) = hi {
            assert!(k < hi, "key not below upper separator");
        }
    }
    match node {
        Node::Leaf(l) => {
            assert_eq!(l.vals.len(), l.keys.len());
            assert!(l.len() >= 1, "empty leaf (root={is_root})");
            assert!(leaf_range_ok(&l.keys, 0, l.len()), "leaf over limits");
            match leaf_depth {
                Some(d) => assert_eq!(*d, depth, "leaves at different depths"),
                None => *leaf_depth = Some(depth),
            }
            l.len()
        }
        Node::Inner(inner) => {
            assert_eq!(inner.children.len(), inner.keys.len() + 1);
            assert!(inner_range_ok(&inner.keys, 0, inner.children.len()), "inner node over limits or < 2 children");
            let mut total = 0;
            for (c, child) in inner.children.iter().enumerate() {
                let clo = if c == 0 { lo } else { Some(inner.keys.get(c - 1)) };
                let chi = if c + 1 == inner.children.len() { hi } else { Some(inner.keys.get(c)) };
                total += check_node(child, clo, chi, false, depth + 1, leaf_depth);
            }
            total
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(sizes: &[usize]) -> Keys {
        let mut k = Keys::default();
        for (i, &s) in sizes.iter().enumerate() {
            let mut key = vec![0u8; s];
            if let Some(b) = key.first_mut() {
                *b = i as u8;
            }
            k.insert(i, &key, false);
        }
        k
    }

    /// Split plans must always end in pieces within limits, whatever the
    /// key sizes (including sizes that need more than one cut).
    #[test]
    fn split_plans_yield_valid_pieces() {
        let mut seed = 1u64;
        let mut rnd = |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n
        };
        for _ in 0..600 {
            let n = 1 + rnd(80);
            let sizes: Vec<usize> = (0..n).map(|_| [1, 8, 300, 4000, 9000, 20_000, 33_000][rnd(7)]).collect();
            let keys = keys_of(&sizes);

            let mut cuts = Vec::new();
            plan_leaf(&keys, 0, n, &mut cuts);
            let mut bounds = vec![0];
            bounds.extend(&cuts);
            bounds.push(n);
            for w in bounds.windows(2) {
                assert!(leaf_range_ok(&keys, w[0], w[1]), "leaf piece {w:?} of {sizes:?}");
            }

            // As separators of an inner node with n + 1 children.
            let mut cuts = Vec::new();
            plan_inner(&keys, 0, n + 1, &mut cuts);
            let mut lo = 0;
            for &j in &cuts {
                assert!(inner_range_ok(&keys, lo, j + 1), "inner piece {lo}..{} of {sizes:?}", j + 1);
                lo = j + 1;
            }
            assert!(inner_range_ok(&keys, lo, n + 1), "inner piece {lo}..{} of {sizes:?}", n + 1);
        }
    }

    #[test]
    fn shortest_separator_separates() {
        let cases: &[(&[u8], &[u8])] =
            &[(b"", b"a"), (b"a", b"b"), (b"abc", b"abd"), (b"ab", b"abc"), (b"abz", b"ac"), (b"a\xff\xff", b"b")];
        for &(l, r) in cases {
            let s = shortest_separator(l, r);
            assert!(l < s && s <= r, "{l:?} {s:?} {r:?}");
            assert!(r.starts_with(s));
        }
        assert_eq!(shortest_separator(b"abc", b"abd"), b"abd");
        assert_eq!(shortest_separator(b"abz", b"ac"), b"ac");
        assert_eq!(shortest_separator(b"apple", b"banana"), b"b");
    }
}
