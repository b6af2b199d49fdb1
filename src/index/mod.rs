//! In-memory index: an ordered map from byte-string keys to [`ValueRef`]s
//! (where a value lives in the log), stored as a copy-on-write B-tree.
//!
//! # Sharing rule (why snapshots are cheap and safe)
//!
//! A tree changes in change sets: every node a change set makes carries its
//! generation, a number no other change set has. [`BTree::snapshot`] ends the
//! current change set: its nodes become a published `Version`, never written
//! again, and the snapshot (like any clone of a tree without unpublished
//! changes) shares them, so a reader's snapshot costs one reference count and
//! stays frozen. The writer reaches every node it changes through
//! `Cx::make_mut`: a node of its current generation is edited in place; any
//! other is copied first (the copy's children are the same nodes) and the
//! original is *retired*. A change set therefore copies each node on the paths
//! it changes once, however many of its writes go through it.
//!
//! # Ownership (who frees a node)
//!
//! Nodes carry no reference count (copying an inner node would otherwise touch
//! every child's count: see `node::NodeRef`). Instead each tree has a lineage
//! (`Lineage`): its published versions, and for each version someone holds,
//! the nodes only it (or it and older versions) still keeps allocated.
//!
//! * Every node is reachable from the newest version (or from the writer's
//!   unpublished change set on top of it), or was *retired* by a change set:
//!   a node made by generation `b` and retired by change set `d + 1` is
//!   reached by exactly the versions `b..=d`.
//! * So a retired node may be freed once no version between its generation
//!   and its retirement is held. Publishing pins a change set's retired nodes
//!   to its base version (held by the writer). When nobody holds a version any
//!   more, its pinned nodes that an older held version reaches (generation at
//!   most that version's) are handed down to the newest such version; the rest
//!   are freed. One old reader therefore keeps its own tree allocated, not
//!   every node the writer copies and lets go of after it.
//! * The newest version, once nobody holds it (the bucket deleted, the engine
//!   closed), hands down its whole tree the same way: nodes newer than every
//!   held version are freed (a node is never older than its children, so the
//!   walk stops at the first one an older version reaches).
//! * A node of the writer's current generation that the writer takes out of
//!   the tree is freed at once: nobody else ever saw it. Dropping a tree with
//!   unpublished changes frees that change set's nodes and keeps the rest.
//! * Only one tree may build on a version (the one that *claims* it by
//!   starting a change set on it); a second tree cloned from the same version
//!   that starts changing gets a copy of its own, a new lineage, since two
//!   successors of one version would each retire nodes the other still uses.
//!
//! # Shape invariants
//!
//! * All leaves are at the same depth; a tree with no keys has no root.
//! * Keys within a node are strictly ascending (`[u8]` order).
//! * Separators: an inner node with children `c[0..n]` holds separators
//!   `s[0..n-1]` and every key under `c[i]` satisfies `s[i-1] <= key < s[i]`.
//!   Separators are the shortest byte strings that separate the two sides of
//!   a leaf split, not full keys, so inner nodes stay small.
//! * Fill: leaves hold 1..=[`MAX_LEAF_ENTRIES`] entries, inner nodes
//!   2..=[`MAX_CHILDREN`] children, and a node's key bytes stay within
//!   [`MAX_NODE_KEY_BYTES`] unless that is impossible (a single huge key, or
//!   at most two huge separators); see `node.rs`.
//!
//! # Memory layout
//!
//! Keys of a node are packed into one byte arena with 8 bytes of metadata
//! each (end offset, plus a 4-byte "head" used to search without touching
//! the arena), and leaf values live in a parallel array, so a key costs its
//! own length plus 20 bytes in its leaf plus a small share of node overhead.
//! Vectors grow by ~1/8 instead of doubling and split-off nodes are sized
//! exactly, to keep slack low. Lookups are memory-latency bound, so the
//! layout is chosen to minimise dependent cache misses per node (see
//! `node::Keys`).
//!
//! Keys may be any byte string (including empty). The engine limits them to
//! 32 KiB; longer keys still work (a node then holds just that key) but keys
//! approaching 1 GiB would overflow the `u32` arena offsets, which panics.

pub mod catalog;
pub mod filter;
pub(crate) mod huge_backing;
pub mod layers;
mod node;
pub(crate) mod pool;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::iter::FusedIterator;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use node::{Cx, Inner, Leaf, Node, NodeRef};

/// Maximum entries in a leaf. Wide nodes keep the tree shallow (4 levels
/// for tens of millions of keys), so a lookup touches few cache lines.
pub const MAX_LEAF_ENTRIES: usize = 64;
/// Maximum children of an inner node.
pub const MAX_CHILDREN: usize = 64;

/// Paths [`BTree::warm_paths`] fetches at once: enough misses in flight to use the memory
/// system's parallelism (about ten outstanding lines per core), few enough that the group's
/// leaves (about 2.5 KiB each) stay in the cache until their inserts.
pub const WARM_GROUP: usize = 16;
/// A node whose packed key bytes exceed this is split even if it has fewer
/// entries than the count limit, so huge keys do not make huge nodes (which
/// would make every copy-on-write path copy expensive).
pub const MAX_NODE_KEY_BYTES: usize = 16 * 1024;

/// Location of a value in the log. Kept at 12 bytes because one is stored
/// per key in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ValueRef {
    pub seg: u32,
    pub off: u32,
    pub len: u32,
}

const _: () = assert!(std::mem::size_of::<ValueRef>() == 12);

/// Generations of change sets, unique in the process (0 is never given out).
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

fn new_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// The versions of one tree, oldest to newest (see the module docs, "Ownership").
struct Lineage {
    state: Mutex<LineageState>,
}

impl Lineage {
    /// The state, locked. A panic while it was held cannot have left it half changed in a
    /// way that matters more than refusing to free anything again would.
    fn lock(&self) -> std::sync::MutexGuard<'_, LineageState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Default)]
struct LineageState {
    /// Generations of the versions someone holds.
    held: BTreeSet<u64>,
    /// The generation of the newest version.
    newest: u64,
    /// What each held version keeps allocated besides what newer versions reach: nodes retired
    /// since (a version held by nobody passes its list down, see `Version`'s drop).
    pinned: BTreeMap<u64, Vec<Garbage>>,
}

/// Nodes to free once no held version reaches them.
enum Garbage {
    /// One node, retired by a change set: a version older than that change set may reach it.
    Node(NodeRef),
    /// A subtree of the newest version, released with no newer one to hand it on to.
    Subtree(NodeRef),
}

/// How many retired nodes ahead of the one being freed `LineageState::collect` asks for.
///
/// Why: publishing a transaction of 1,000 random puts over 1M keys frees the 1,400 or so nodes
/// the one before it replaced, and each free reads the node's allocation (its generation and
/// its buffers' places), which nothing has touched since that transaction copied it.
const FREE_AHEAD: usize = 8;

impl LineageState {
    /// Frees what of `items` no held version at or below `upto` reaches (none reaches a node
    /// made after the newest of them, and a node is never older than its children), and
    /// leaves the rest pinned to that version.
    fn collect(&mut self, upto: u64, items: Vec<Garbage>) {
        let keeper = self.held.range(..=upto).next_back().copied();
        let mut kept = Vec::new();
        let mut stack = Vec::new();
        let mut items = items.into_iter();
        loop {
            // Retired nodes were last touched a transaction or more ago, and freeing one reads
            // its allocation: asked for this many items ahead, those misses overlap instead of
            // following one another (see `FREE_AHEAD`).
            if let Some(Garbage::Node(ahead)) = items.as_slice().get(FREE_AHEAD) {
                ahead.prefetch_allocation();
            }
            let Some(item) = items.next() else { break };
            match item {
                Garbage::Node(node) => {
                    if keeper.is_some_and(|k| node.generation() <= k) {
                        kept.push(Garbage::Node(node));
                    } else {
                        // SAFETY: retired, so no version after the change set that retired it
                        // reaches it; none before its generation does either; and no held
                        // version lies in between (`keeper` is the newest held one).
                        unsafe { node.free() };
                    }
                }
                Garbage::Subtree(root) => stack.push(root),
            }
            while let Some(node) = stack.pop() {
                if keeper.is_some_and(|k| node.generation() <= k) {
                    // Reached by `keeper`, and so is everything below it (children are never
                    // newer than their parent).
                    kept.push(Garbage::Subtree(node));
                    continue;
                }
                if let Node::Inner(inner) = &*node {
                    stack.extend(inner.children.iter().map(NodeRef::alias));
                }
                // SAFETY: a node of the released newest version made after every held
                // version: nothing else reaches it; its children were taken above.
                unsafe { node.free() };
            }
        }
        if let Some(k) = keeper
            && !kept.is_empty()
        {
            self.pinned.entry(k).or_default().extend(kept);
        }
    }
}

/// A published state of a tree: what a snapshot of it holds.
struct Version {
    generation: u64,
    root: Option<NodeRef>,
    /// Whether a tree has started a change set on this version.
    claimed: AtomicBool,
    lineage: Arc<Lineage>,
}

impl Drop for Version {
    /// Nobody holds this version any more: what only it kept allocated is freed, what an older
    /// held version also reaches is handed down to it.
    fn drop(&mut self) {
        let mut state = self.lineage.lock();
        state.held.remove(&self.generation);
        let mut items = state.pinned.remove(&self.generation).unwrap_or_default();
        if state.newest == self.generation
            && let Some(root) = self.root.take()
        {
            // No newer version, and nobody builds on this one (a tree building on it would
            // hold it): its whole tree is garbage but for what older versions reach.
            items.push(Garbage::Subtree(root));
        }
        state.collect(self.generation, items);
    }
}

/// The writer's change set that is not published yet.
struct Unpublished {
    generation: u64,
    /// Nodes of older generations replaced so far (still reached by the base version).
    retired: Vec<NodeRef>,
}

/// A copy-on-write B-tree map from byte strings to [`ValueRef`].
///
/// [`snapshot`](Self::snapshot) publishes the changes made so far and returns a tree that
/// shares every node: O(1), and later changes to either tree are invisible to the other. A
/// `clone` of a tree without unpublished changes is the same; of one with, a deep copy.
#[derive(Default)]
pub struct BTree {
    root: Option<NodeRef>,
    len: usize,
    /// The version this tree's shared nodes belong to (`None`: every node is this tree's own).
    base: Option<Arc<Version>>,
    unpublished: Option<Unpublished>,
}

impl fmt::Debug for BTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BTree").field("len", &self.len).finish()
    }
}

impl Clone for BTree {
    fn clone(&self) -> BTree {
        if self.unpublished.is_some() {
            return self.deep_copy();
        }
        BTree {
            root: self.root.as_ref().map(NodeRef::alias),
            len: self.len,
            base: self.base.clone(),
            unpublished: None,
        }
    }
}

impl Drop for BTree {
    fn drop(&mut self) {
        if let Some(u) = self.unpublished.take() {
            if let Some(root) = self.root.take() {
                // SAFETY: nodes of the unpublished generation are reached only from this tree,
                // which is going away; `free_generation` stops at the shared nodes below them.
                unsafe { root.free_generation(u.generation) };
            }
            // The retired nodes still belong to the base version; another tree may build on it.
            if let Some(base) = &self.base {
                base.claimed.store(false, Ordering::Release);
            }
        }
    }
}

impl BTree {
    pub fn new() -> BTree {
        BTree::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Publishes the changes made since the last snapshot and returns a tree sharing every
    /// node with this one: O(1) (one allocation if there were changes). Each tree then goes
    /// its own way; only this one may go on changing without copying everything (module
    /// docs, "Ownership").
    pub fn snapshot(&mut self) -> BTree {
        self.publish();
        self.clone()
    }

    /// Makes the unpublished changes a version of their own.
    fn publish(&mut self) {
        let Some(u) = self.unpublished.take() else { return };
        let lineage = match &self.base {
            Some(base) => Arc::clone(&base.lineage),
            None => Arc::new(Lineage { state: Mutex::new(LineageState::default()) }),
        };
        {
            let mut state = lineage.lock();
            state.held.insert(u.generation);
            state.newest = u.generation;
            match &self.base {
                // The retired nodes come from the base's tree and the base is held (by this
                // tree): they are pinned to it, whatever else is held.
                Some(base) => {
                    debug_assert!(u.retired.iter().all(|n| n.generation() <= base.generation));
                    state.pinned.entry(base.generation).or_default().extend(u.retired.into_iter().map(Garbage::Node));
                }
                None => debug_assert!(u.retired.is_empty(), "a tree without a base has nothing to retire"),
            }
        }
        let version = Version {
            generation: u.generation,
            root: self.root.as_ref().map(NodeRef::alias),
            claimed: AtomicBool::new(false),
            lineage,
        };
        // The old base is let go of after the lock above: its drop takes the lock.
        self.base = Some(Arc::new(version));
    }

    /// The change set for a write, started if there is none (claiming the base version, or if
    /// another tree already builds on it, first making this tree a deep copy of its own), and
    /// the root, left in place so that a panic part way through a write leaves a tree that
    /// still reaches every node of its change set (freed when the tree is dropped).
    fn change_set(&mut self) -> (&mut Option<NodeRef>, Cx<'_>) {
        if self.unpublished.is_none() {
            if let Some(base) = &self.base
                && base.claimed.swap(true, Ordering::AcqRel)
            {
                *self = self.deep_copy();
            }
            if self.unpublished.is_none() {
                self.unpublished = Some(Unpublished { generation: new_generation(), retired: Vec::new() });
            }
        }
        let u = self.unpublished.as_mut().expect("started above");
        (&mut self.root, Cx { generation: u.generation, retired: &mut u.retired })
    }

    /// A tree of the same entries sharing no node with this one.
    fn deep_copy(&self) -> BTree {
        let entries: Vec<(&[u8], ValueRef)> = self.iter().collect();
        BTree::from_sorted(&entries).unwrap_or_else(|| {
            // A key too long for the bottom-up build: inserted one by one.
            let mut copy = BTree::new();
            for (k, v) in entries {
                copy.insert(k, v);
            }
            copy
        })
    }

    pub fn get(&self, key: &[u8]) -> Option<ValueRef> {
        self.get_early(key, |_| {})
    }

    /// As [`get`](Self::get), but calls `early` with the value the key most likely has as
    /// soon as the leaf shows it, before the key is confirmed (which costs a cache miss of its
    /// own), so that the caller can start fetching the value's bytes meanwhile. `early` may
    /// see a value that turns out not to be the key's, or not be called at all.
    pub fn get_early(&self, key: &[u8], early: impl FnOnce(ValueRef)) -> Option<ValueRef> {
        let mut node: &Node = self.root.as_deref()?;
        loop {
            node.prefetch_for_search();
            match node {
                Node::Inner(inner) => node = &inner.children[inner.child_index(key)],
                Node::Leaf(leaf) => return leaf.get(key, early),
            }
        }
    }

    /// A tree of `entries`, which must be in strictly ascending key order, built bottom up
    /// (much faster than inserting them one by one). `None` if a key is longer than 1 KiB:
    /// then insert them instead.
    ///
    /// From [`BUILD_SPLIT_FROM`] entries on, the leaves of the second half are built on a
    /// second thread while this one builds the first half's (`node::build_sorted`): the build
    /// is most of a large bucket's open, where a second core has nothing else to do. A
    /// defrag's build takes the second core too, for the tenth of a second or so a million
    /// keys take.
    pub fn from_sorted(entries: &[(&[u8], ValueRef)]) -> Option<BTree> {
        if entries.iter().any(|(k, _)| k.len() > node::BUILD_MAX_KEY) {
            return None;
        }
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0), "keys must ascend");
        let generation = new_generation();
        let root = node::build_sorted(entries, generation);
        Some(BTree {
            root,
            len: entries.len(),
            base: None,
            unpublished: Some(Unpublished { generation, retired: Vec::new() }),
        })
    }

    /// Brings into the cache what inserting `keys` will read — each key's path from the root
    /// and the whole leaf at its end, which the insert copies — a group at a time, level by
    /// level, so that the cache misses of the group's paths overlap rather than follow one
    /// another. Changes nothing; the inserts that follow find their nodes warm.
    ///
    /// Why: a put into a large tree waits on about two misses per level below the cached top
    /// (a node's allocation, then its keys), one after the other, since each address comes
    /// from the line before. Across keys nothing depends, so a transaction's buffered puts
    /// (`backend::tx_buffer`) ask for all of a level's lines at once.
    pub fn warm_paths(&self, keys: &[&[u8]]) {
        let Some(root) = self.root.as_deref() else { return };
        root.prefetch_for_search();
        for group in keys.chunks(WARM_GROUP) {
            let mut at: [&Node; WARM_GROUP] = [root; WARM_GROUP];
            let at = &mut at[..group.len()];
            // All leaves are at the same depth: the group reaches them in the same round.
            while matches!(at[0], Node::Inner(_)) {
                for (node, key) in at.iter_mut().zip(group) {
                    if let Node::Inner(inner) = *node {
                        let child = &inner.children[inner.child_index(key)];
                        child.prefetch_allocation();
                        *node = child;
                    }
                }
                for node in at.iter() {
                    node.prefetch_for_insert();
                }
            }
        }
    }

    /// Inserts or overwrites; returns the previous value.
    pub fn insert(&mut self, key: &[u8], value: ValueRef) -> Option<ValueRef> {
        let (root, mut cx) = self.change_set();
        let Some(node) = root.as_mut() else {
            *root = Some(cx.alloc(Node::Leaf(Leaf::single(key, value))));
            self.len = 1;
            return None;
        };
        let mut pieces = Vec::new();
        let old = node::insert(node, key, value, &mut pieces, true, &mut cx);
        if !pieces.is_empty()
            && let Some(r) = root.take()
        {
            *root = Some(node::grow_root(r, pieces, cx.generation));
        }
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`; returns the removed value.
    pub fn remove(&mut self, key: &[u8]) -> Option<ValueRef> {
        // A miss must not copy nodes shared with snapshots, so look first
        // (read-only) and only then walk the path with `make_mut`.
        self.get(key)?;
        self.remove_expected(key)
    }

    /// [`remove`](Self::remove) for a key the caller knows to be there, without the look
    /// first: one descent instead of two. A key that is not there is still not removed, but
    /// the nodes on its path that the tree shares with snapshots are copied for nothing.
    pub fn remove_expected(&mut self, key: &[u8]) -> Option<ValueRef> {
        self.root.as_ref()?;
        let (root, mut cx) = self.change_set();
        let node = root.as_mut().expect("checked above");
        let mut pieces = Vec::new();
        let old = node::remove(node, key, &mut pieces, &mut cx);
        if !pieces.is_empty()
            && let Some(r) = root.take()
        {
            *root = Some(node::grow_root(r, pieces, cx.generation));
        }
        Self::collapse_root(root, &mut cx);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Drops an empty root leaf and root inner nodes with a single child,
    /// so the height shrinks as the tree empties and an empty tree has no
    /// nodes at all.
    fn collapse_root(root: &mut Option<NodeRef>, cx: &mut Cx<'_>) {
        while let Some(r) = root.take() {
            let next = match &*r {
                Node::Leaf(l) if l.len() == 0 => None,
                Node::Inner(i) if i.children.len() == 1 => Some(i.children[0].alias()),
                _ => {
                    *root = Some(r);
                    return;
                }
            };
            cx.discard(r);
            *root = next;
        }
    }

    /// Ascending iterator over keys in `[start, end)`; `end = None` means
    /// unbounded. `start >= end` yields nothing.
    pub fn range<'a>(&'a self, start: &[u8], end: Option<&[u8]>) -> Iter<'a> {
        let mut it = Iter { stack: Vec::new(), leaf: None, idx: 0, end: None };
        let Some(root): Option<&Node> = self.root.as_deref() else {
            return it;
        };
        if let Some(e) = end
            && start >= e
        {
            return it;
        }
        // The end is turned into a position (leaf, index of the first key
        // >= end) up front, so iteration compares a pointer and an index per
        // item instead of keys, and `Iter` need not borrow `end`.
        if let Some(e) = end {
            it.end = seek_end(root, e);
        }
        it.stack.reserve(8);
        let mut node = root;
        loop {
            node.prefetch_for_search();
            match node {
                Node::Inner(inner) => {
                    let c = inner.child_index(start);
                    it.stack.push((inner, c));
                    node = &inner.children[c];
                }
                Node::Leaf(leaf) => {
                    it.leaf = Some(leaf);
                    it.idx = leaf.lower_bound(start);
                    it.entered_leaf();
                    return it;
                }
            }
        }
    }

    /// All entries, ascending.
    pub fn iter(&self) -> Iter<'_> {
        self.range(&[], None)
    }

    /// Approximate heap bytes of the nodes reachable from this tree
    /// (allocated capacities plus node headers; allocator overhead and
    /// sharing with other trees are not accounted for).
    pub fn heap_bytes(&self) -> usize {
        self.root.as_deref().map_or(0, Node::heap_bytes)
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        match self.root.as_deref() {
            None => assert_eq!(self.len, 0, "no root but len != 0"),
            Some(root) => {
                let mut leaf_depth = None;
                let n = node::check_node(root, None, None, true, 0, &mut leaf_depth);
                assert_eq!(n, self.len, "len does not match entry count");
                assert!(n > 0, "root exists but tree has no entries");
            }
        }
    }
}

/// Position of the first key `>= end` as (leaf, index), normalised so the
/// index is inside the leaf; `None` if every key is `< end`.
///
/// Normalising matters: a start and an end falling in the same gap between
/// two leaves must map to the same position, or the iterator could walk past
/// the end position without ever seeing it.
fn seek_end<'a>(root: &'a Node, end: &[u8]) -> Option<(&'a Leaf, usize)> {
    let mut node = root;
    let mut next_subtree: Option<&'a Node> = None;
    loop {
        match node {
            Node::Inner(inner) => {
                let c = inner.child_index(end);
                if let Some(n) = inner.children.get(c + 1) {
                    next_subtree = Some(n);
                }
                node = &inner.children[c];
            }
            Node::Leaf(leaf) => {
                let i = leaf.lower_bound(end);
                if i < leaf.len() {
                    return Some((leaf, i));
                }
                return next_subtree.map(|n| (node::leftmost_leaf(n), 0));
            }
        }
    }
}

impl<'a> IntoIterator for &'a BTree {
    type Item = (&'a [u8], ValueRef);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Entries before the end of a leaf at which a scan asks for the next leaf's keys and values.
///
/// Why: a scan of 100 pairs crosses two or three leaves, and arriving at a leaf cost a miss on
/// its allocation, then misses on its key offsets, keys and values, each address read from
/// the line before; and the value prefetch (`Iter::peek_value`, a few entries ahead) made the
/// first of those misses earlier but waited for it. Its allocation is asked for on arriving at
/// the leaf before it, and its buffers this many entries ahead, by which time the allocation
/// has come.
const NEXT_LEAF_LEAD: usize = 16;

/// Ascending iterator over a [`BTree`] (or a snapshot of one). Borrows the
/// tree; allocates only its small path stack when created.
pub struct Iter<'a> {
    /// Inner nodes on the path to `leaf`, with the index of the child being
    /// visited in each.
    stack: Vec<(&'a Inner, usize)>,
    /// Current leaf; `None` once exhausted.
    leaf: Option<&'a Leaf>,
    idx: usize,
    /// Stop position (see `seek_end`); `None` = run to the end of the tree.
    end: Option<(&'a Leaf, usize)>,
}

impl<'a> Iter<'a> {
    /// The value `n` entries after the next one, if it is in the same leaf or the next leaf of
    /// the same parent (possibly past the iteration's end): for a caller that fetches values
    /// ahead of reading them. Looking into the next leaf matters: a scan of 100 pairs crosses
    /// two or three leaves, and stopping at each leaf's end left the first entries of the
    /// next one unfetched, each a miss of its own.
    #[inline]
    pub fn peek_value(&self, n: usize) -> Option<ValueRef> {
        let leaf = self.leaf?;
        let at = self.idx + n;
        if let Some(&v) = leaf.vals.get(at) {
            return Some(v);
        }
        let &(parent, i) = self.stack.last()?;
        match &**parent.children.get(i + 1)? {
            Node::Leaf(next) => next.vals.get(at - leaf.vals.len()).copied(),
            Node::Inner(_) => None,
        }
    }

    /// The node after the current leaf, if the same parent holds both and the iteration does
    /// not end in the current leaf (a short bounded range must not pay for a leaf it never
    /// reads): its pointer is in the parent's child list, which the descent has read, so
    /// finding it costs no cache miss.
    #[inline]
    fn sibling(&self) -> Option<&'a NodeRef> {
        if let (Some(leaf), Some((end_leaf, _))) = (self.leaf, self.end)
            && std::ptr::eq(leaf, end_leaf)
        {
            return None;
        }
        let &(parent, i) = self.stack.last()?;
        parent.children.get(i + 1)
    }

    /// On arriving at a leaf: asks for the next leaf's allocation, so that it is in the cache
    /// when [`prefetch_next_leaf`](Self::prefetch_next_leaf) reads where that leaf's buffers
    /// are. If the scan starts past the point where `next` asks for the buffers
    /// (`NEXT_LEAF_LEAD` entries before the end), too close to the end for the allocation to
    /// come first, asks for them now.
    #[inline]
    fn entered_leaf(&self) {
        let Some(leaf) = self.leaf else { return };
        if self.idx + NEXT_LEAF_LEAD > leaf.len() {
            self.prefetch_next_leaf();
        } else if let Some(next) = self.sibling() {
            next.prefetch_allocation();
        }
    }

    /// Asks for the keys and values of the next leaf, `NEXT_LEAF_LEAD` entries before the scan
    /// reaches it (see `NEXT_LEAF_LEAD`).
    #[inline]
    fn prefetch_next_leaf(&self) {
        if let Some(next) = self.sibling() {
            next.prefetch_for_scan();
        }
    }

    /// Moves to the leaf after the current one, or `None` at the end.
    fn next_leaf(&mut self) -> Option<&'a Leaf> {
        loop {
            let top = self.stack.last_mut()?;
            let inner: &'a Inner = top.0;
            if top.1 + 1 < inner.children.len() {
                top.1 += 1;
                let mut node: &'a Node = &inner.children[top.1];
                loop {
                    match node {
                        Node::Leaf(l) => return Some(l),
                        Node::Inner(i) => {
                            self.stack.push((i, 0));
                            node = &i.children[0];
                        }
                    }
                }
            }
            self.stack.pop();
        }
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], ValueRef);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let leaf = self.leaf?;
            if let Some((end_leaf, end_idx)) = self.end
                && std::ptr::eq(leaf, end_leaf)
                && self.idx >= end_idx
            {
                self.leaf = None;
                return None;
            }
            if self.idx < leaf.len() {
                let i = self.idx;
                self.idx += 1;
                if i + NEXT_LEAF_LEAD == leaf.len() {
                    self.prefetch_next_leaf();
                }
                return Some((leaf.keys.get(i), leaf.vals[i]));
            }
            self.leaf = self.next_leaf();
            self.idx = 0;
            self.entered_leaf();
        }
    }
}

impl FusedIterator for Iter<'_> {}

/// Entries from which [`BTree::from_sorted`] builds on two threads.
pub(crate) const BUILD_SPLIT_FROM: usize = 1 << 16;
