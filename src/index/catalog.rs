//! The buckets: name → (id, key index, live bytes).
//!
//! A catalog is a small sorted vector of buckets, each owning a copy-on-write [`BTree`].
//! Cloning it costs one reference-count increment per bucket (names are `Arc<[u8]>`, trees
//! share their nodes), which is what publishing a transaction's result to readers costs.
//!
//! Buckets have numeric ids so that log records need not repeat names. An id is unique among
//! the buckets that exist at one moment; a deleted bucket's id may be given again later, which
//! is safe because the log is replayed in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::filter::{Filter, KeyHash};
use super::layers::{self, LayeredIter, MERGE_FROM, Merge, Merged, Sealed, TOMBSTONE, entry_bytes};
use super::{BTree, ValueRef};
use crate::log::format::create_bucket_len;

/// From this many entries on, `recent` no longer stays in the cache and puts into it fetch
/// their paths ahead (`Bucket::warm_paths`).
const WARM_RECENT_FROM: usize = 1 << 16;

/// Incarnations of buckets, unique in the process (see `Bucket::incarnation`).
static NEXT_INCARNATION: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Debug)]
pub struct Bucket {
    pub name: Arc<[u8]>,
    pub id: u32,
    /// The base layer: every key, but for the writes in the layers above (`layers.rs`).
    base: BTree,
    /// Bytes of the records a defrag would keep for the base: the bucket's create-bucket
    /// record and the put record of every key in the base. Kept exact through overwrites and
    /// deletes; the layers above are accounted for when asked (`live_bytes`).
    base_live_bytes: u64,
    /// The writer's layer of recent writes (only if `layered`).
    recent: BTree,
    /// How many of `recent`'s entries are tombstones.
    recent_tombstones: usize,
    /// Every key put into `recent` (`filter.rs`), shared with the views of it and then with
    /// the layer it becomes.
    recent_filter: Arc<Filter>,
    /// The keys `recent` holds when sealed (`Config::layer_entries`): what its filter is
    /// sized for. 0: writes go straight into the base, not to `recent` (recovery, a defrag's
    /// new catalog: nothing merges there); see `layered`.
    layer_entries: usize,
    /// Former `recent` layers waiting for the merger, oldest first.
    sealed: Vec<Arc<Sealed>>,
    /// This bucket's identity, for a merge to find the bucket it was made for: distinct for
    /// every bucket created, even one with the name and id of a deleted one.
    incarnation: u64,
}

impl Bucket {
    fn new(name: &[u8], id: u32, layer_entries: usize) -> Bucket {
        Bucket {
            name: name.into(),
            id,
            base: BTree::new(),
            base_live_bytes: create_bucket_len(name.len()) as u64,
            recent: BTree::new(),
            recent_tombstones: 0,
            recent_filter: Arc::new(Filter::with_capacity(layer_entries)),
            layer_entries,
            sealed: Vec::new(),
            incarnation: NEXT_INCARNATION.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Whether writes go to `recent` (a running backend's buckets) or straight into the base.
    fn layered(&self) -> bool {
        self.layer_entries > 0
    }

    /// Whether any layer lies above the base.
    pub fn has_layers(&self) -> bool {
        !self.recent.is_empty() || !self.sealed.is_empty()
    }

    /// The layers above the base, newest first.
    fn upper(&self) -> impl Iterator<Item = &BTree> {
        std::iter::once(&self.recent).chain(self.sealed.iter().rev().map(|s| &s.tree))
    }

    /// Points `key` at a new value.
    pub fn put(&mut self, key: &[u8], value: ValueRef) {
        if self.layered() {
            self.recent_filter.insert(KeyHash::of(key));
            if self.recent.insert(key, value) == Some(TOMBSTONE) {
                self.recent_tombstones -= 1;
            }
            return;
        }
        let old = self.base.insert(key, value);
        self.base_live_bytes += entry_bytes(key, value);
        if let Some(o) = old {
            self.base_live_bytes -= entry_bytes(key, o);
        }
    }

    /// Fills an empty bucket with `entries` (strictly ascending keys) in one bottom-up build;
    /// returns false, changing nothing, if the bucket has keys or layers, or a key is too long
    /// to build with (see [`BTree::from_sorted`]), for the caller to insert them instead.
    pub fn load_sorted(&mut self, entries: &[(&[u8], ValueRef)]) -> bool {
        if !self.base.is_empty() || self.has_layers() {
            return false;
        }
        let Some(tree) = BTree::from_sorted(entries) else { return false };
        self.base = tree;
        self.base_live_bytes += entries.iter().map(|&(k, v)| entry_bytes(k, v)).sum::<u64>();
        true
    }

    /// Removes `key`; returns its value if it was there.
    pub fn delete(&mut self, key: &[u8]) -> Option<ValueRef> {
        if self.layered() {
            let old = self.get(key)?;
            self.hide(key);
            return Some(old);
        }
        let old = self.base.remove(key);
        self.account_delete(key, old)
    }

    /// [`delete`](Self::delete) of a key expected to be there (see [`BTree::remove_expected`]).
    /// A layered bucket does not look the key up, and returns `None`.
    pub fn delete_expected(&mut self, key: &[u8]) -> Option<ValueRef> {
        if self.layered() {
            // The caller found the key: the tombstone needs no second look through the layers.
            self.hide(key);
            return None;
        }
        let old = self.base.remove_expected(key);
        self.account_delete(key, old)
    }

    /// Makes `key`, which is there, absent: a tombstone in `recent`, unless no older layer
    /// could hold it.
    fn hide(&mut self, key: &[u8]) {
        if self.base.is_empty() && self.sealed.is_empty() {
            if self.recent.remove(key) == Some(TOMBSTONE) {
                self.recent_tombstones -= 1;
            }
        } else {
            self.recent_filter.insert(KeyHash::of(key));
            if self.recent.insert(key, TOMBSTONE) != Some(TOMBSTONE) {
                self.recent_tombstones += 1;
            }
        }
    }

    fn account_delete(&mut self, key: &[u8], old: Option<ValueRef>) -> Option<ValueRef> {
        if let Some(o) = old {
            self.base_live_bytes -= entry_bytes(key, o);
        }
        old
    }

    pub fn get(&self, key: &[u8]) -> Option<ValueRef> {
        self.get_early(key, |_| {})
    }

    /// [`BTree::get_early`] through the layers: `early` goes to the first tree searched, so a
    /// layer that turns out not to have the key spends it (the caller checks what it was
    /// given).
    pub fn get_early(&self, key: &[u8], early: impl FnOnce(ValueRef)) -> Option<ValueRef> {
        if !self.has_layers() {
            return self.base.get_early(key, early);
        }
        let h = KeyHash::of(key);
        let mut early = Some(early);
        let mut early_once = |v| {
            if let Some(e) = early.take() {
                e(v)
            }
        };
        let found = if self.recent_filter.may_contain(h)
            && let Some(v) = self.recent.get_early(key, &mut early_once)
        {
            v
        } else {
            self.get_below(key, h, self.sealed.len(), &mut early_once)?
        };
        (found != TOMBSTONE).then_some(found)
    }

    /// `key`'s entry (possibly a tombstone) in the `below` oldest sealed layers, newest first,
    /// or else in the base; `early` as for [`get_early`](Self::get_early).
    fn get_below(&self, key: &[u8], h: KeyHash, below: usize, early: &mut impl FnMut(ValueRef)) -> Option<ValueRef> {
        // All the filters first, without stopping at a "maybe": their cache misses are
        // independent and overlap. Then the layers that may hold the key, newest first.
        for chunk in self.sealed[..below].rchunks(64) {
            let mut maybe = 0u64;
            for (i, layer) in chunk.iter().rev().enumerate() {
                maybe |= u64::from(layer.filter.may_contain(h)) << i;
            }
            while maybe != 0 {
                let layer = &chunk[chunk.len() - 1 - maybe.trailing_zeros() as usize];
                maybe &= maybe - 1;
                if let Some(v) = layer.tree.get_early(key, &mut *early) {
                    return Some(v);
                }
            }
        }
        self.base.get_early(key, early)
    }

    /// Ascending live entries with keys in `[start, end)` (`end = None`: unbounded).
    pub fn range<'a>(&'a self, start: &[u8], end: Option<&[u8]>) -> LayeredIter<'a> {
        if !self.has_layers() {
            return LayeredIter::One(self.base.range(start, end));
        }
        let iters = self.upper().chain([&self.base]).map(|t| t.range(start, end)).collect();
        LayeredIter::Many(Merge::new(iters, false))
    }

    /// All live entries, ascending.
    pub fn iter(&self) -> LayeredIter<'_> {
        self.range(&[], None)
    }

    /// The number of keys. O(1) without layers above the base; else it looks each key of
    /// `recent` up below it, and each sealed layer's once (see `counts`).
    pub fn len(&self) -> usize {
        let (len, _) = self.counts();
        len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the records a defrag would keep for this bucket: its create-bucket record and
    /// the put record of every live key. Costs what [`len`](Self::len) costs.
    pub fn live_bytes(&self) -> u64 {
        let (_, live) = self.counts();
        live
    }

    /// The number of keys and the live bytes: the base's, corrected by each layer above it.
    /// A sealed layer's correction is worked out once (`Sealed::counts`): what lies below it
    /// reads the same in every view that has it, merged or not.
    fn counts(&self) -> (usize, u64) {
        let (mut len, mut live) = (self.base.len() as i64, self.base_live_bytes as i64);
        for (i, layer) in self.sealed.iter().enumerate() {
            let (l, b) = *layer.counts.get_or_init(|| self.change_over(&layer.tree, i));
            len += l;
            live += b;
        }
        if !self.recent.is_empty() {
            let (l, b) = self.change_over(&self.recent, self.sealed.len());
            len += l;
            live += b;
        }
        (len as usize, live as u64)
    }

    /// The change in keys and live bytes that `layer`'s entries make to the bucket as the base
    /// and the `below` oldest sealed layers have it.
    fn change_over(&self, layer: &BTree, below: usize) -> (i64, i64) {
        let (mut len, mut live) = (0i64, 0i64);
        for (key, v) in layer.iter() {
            let old = self.get_below(key, KeyHash::of(key), below, &mut |_| {}).filter(|&o| o != TOMBSTONE);
            if let Some(o) = old {
                len -= 1;
                live -= entry_bytes(key, o) as i64;
            }
            if v != TOMBSTONE {
                len += 1;
                live += entry_bytes(key, v) as i64;
            }
        }
        (len, live)
    }

    /// Approximate heap bytes of every layer's nodes.
    pub fn heap_bytes(&self) -> usize {
        let filters: usize = self.sealed.iter().map(|s| s.filter.heap_bytes()).sum();
        filters + self.upper().chain([&self.base]).map(BTree::heap_bytes).sum::<usize>()
    }

    /// Brings into the cache what putting `keys` will read (see [`BTree::warm_paths`]): the
    /// base's paths, where puts go when the bucket is not layered. (Layered puts go to a small
    /// tree that is in the cache already.)
    pub fn warm_paths(&self, keys: &[&[u8]]) {
        if !self.layered() {
            self.base.warm_paths(keys);
        } else if self.recent.len() >= WARM_RECENT_FROM {
            // One large transaction (a bulk load) made `recent` too large for the cache.
            self.recent.warm_paths(keys);
        }
    }

    /// Seals `recent` if it has grown to `entries` entries (and is not empty); returns
    /// whether it did.
    fn seal_if(&mut self, entries: usize) -> bool {
        if self.recent.is_empty() || self.recent.len() < entries {
            return false;
        }
        let tree = std::mem::take(&mut self.recent).snapshot();
        let tombstones = std::mem::take(&mut self.recent_tombstones);
        let filter = std::mem::replace(&mut self.recent_filter, Arc::new(Filter::with_capacity(self.layer_entries)));
        self.sealed.push(Arc::new(Sealed::new(tree, tombstones, filter)));
        true
    }

    /// Carries this bucket's sealed layers into its base, as the merger does (`layers.rs`):
    /// `None` if it has none, or if `stop` says so part way (asked every few thousand entries).
    pub fn merge_sealed(&self, stop: &dyn Fn() -> bool) -> Option<Merged> {
        if self.sealed.is_empty() {
            return None;
        }
        let (base, live_bytes) = layers::merge_into(self.base.clone(), self.base_live_bytes, &self.sealed, stop)?;
        Some(Merged { incarnation: self.incarnation, layers: self.sealed.clone(), base, live_bytes })
    }

    /// Takes `merged` as the base in place of the layers it holds, if it was made for this
    /// bucket and they are still its oldest sealed ones; returns whether it did.
    fn install(&mut self, merged: &Merged) -> bool {
        let n = merged.layers.len();
        if merged.incarnation != self.incarnation
            || self.sealed.len() < n
            || !self.sealed.iter().zip(&merged.layers).all(|(a, b)| Arc::ptr_eq(a, b))
        {
            return false;
        }
        self.base = merged.base.clone();
        self.base_live_bytes = merged.live_bytes;
        self.sealed.drain(..n);
        true
    }

    /// An upper bound of [`len`](Self::len), in O(layers).
    pub fn len_at_most(&self) -> usize {
        self.base.len() + self.unmerged()
    }

    /// Entries in the layers above the base.
    pub fn unmerged(&self) -> usize {
        self.upper().map(BTree::len).sum()
    }

    /// How many layers wait for the merger.
    pub fn sealed_layers(&self) -> usize {
        self.sealed.len()
    }

    /// Whether the merger should merge the sealed layers now rather than wait for more
    /// (`merger.rs`): there are [`MERGE_FROM`] of them, or as many entries as that many full
    /// ones, or the base is empty (the merge then costs next to nothing: a lone layer becomes
    /// the base).
    pub fn merge_due(&self) -> bool {
        let entries: usize = self.sealed.iter().map(|s| s.tree.len()).sum();
        !self.sealed.is_empty()
            && (self.sealed.len() >= MERGE_FROM || entries >= MERGE_FROM * self.layer_entries || self.base.is_empty())
    }
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Sorted by name.
    buckets: Vec<Bucket>,
    /// `Bucket::layer_entries` of its buckets (0: not layered).
    layer_entries: usize,
}

impl Catalog {
    pub const EMPTY: Catalog = Catalog { buckets: Vec::new(), layer_entries: 0 };

    pub fn get(&self, name: &[u8]) -> Option<&Bucket> {
        self.position(name).ok().map(|i| &self.buckets[i])
    }

    pub fn get_mut(&mut self, name: &[u8]) -> Option<&mut Bucket> {
        self.position(name).ok().map(|i| &mut self.buckets[i])
    }

    /// The index of the bucket named `name`.
    pub fn index_of_name(&self, name: &[u8]) -> Option<usize> {
        self.position(name).ok()
    }

    /// The bucket at `index` (from [`Catalog::index_of_name`] or [`Catalog::index_of_id`]).
    pub fn at(&self, index: usize) -> &Bucket {
        &self.buckets[index]
    }

    /// The index of the bucket with id `id` (a linear scan: buckets are few).
    pub fn index_of_id(&self, id: u32) -> Option<usize> {
        self.buckets.iter().position(|b| b.id == id)
    }

    /// The bucket at `index` (from [`Catalog::index_of_id`]; valid until buckets change).
    pub fn at_mut(&mut self, index: usize) -> &mut Bucket {
        &mut self.buckets[index]
    }

    fn position(&self, name: &[u8]) -> Result<usize, usize> {
        self.buckets.binary_search_by(|b| b.name.as_ref().cmp(name))
    }

    /// Creates a bucket with the given id. False (and no change) if the name exists.
    pub fn create(&mut self, name: &[u8], id: u32) -> bool {
        match self.position(name) {
            Ok(_) => false,
            Err(i) => {
                self.buckets.insert(i, Bucket::new(name, id, self.layer_entries));
                true
            }
        }
    }

    /// The bucket with id `id` (a linear scan: buckets are few).
    pub fn get_by_id_mut(&mut self, id: u32) -> Option<&mut Bucket> {
        self.buckets.iter_mut().find(|b| b.id == id)
    }

    /// An id no current bucket has: one more than the largest, or, if that is u32::MAX (a
    /// log may name any id), the smallest free one. `None` only if every id is taken.
    pub fn unused_id(&self) -> Option<u32> {
        match self.buckets.iter().map(|b| b.id).max() {
            None => Some(1),
            Some(m) if m < u32::MAX => Some(m + 1),
            Some(_) => {
                let mut ids: Vec<u32> = self.buckets.iter().map(|b| b.id).collect();
                ids.sort_unstable();
                let mut want = 1u32;
                for id in ids {
                    if id > want {
                        break;
                    }
                    if id == want {
                        want = id.checked_add(1)?;
                    }
                }
                Some(want)
            }
        }
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Bucket> {
        self.position(name).ok().map(|i| self.buckets.remove(i))
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Bucket> {
        self.buckets.iter()
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn live_bytes(&self) -> u64 {
        self.buckets.iter().map(Bucket::live_bytes).sum()
    }

    /// Sends the buckets' writes, from now on, to layers that the merger carries into their
    /// bases (`layers.rs`): for the catalog of a running backend.
    pub fn set_layered(&mut self, layer_entries: usize) {
        debug_assert!(layer_entries > 0, "0 means not layered");
        self.layer_entries = layer_entries;
        for b in &mut self.buckets {
            debug_assert!(!b.has_layers(), "an unlayered bucket has nothing above its base");
            b.layer_entries = layer_entries;
            b.recent_filter = Arc::new(Filter::with_capacity(layer_entries));
        }
    }

    /// Seals every bucket's `recent` layer that is full (`Config::layer_entries`); returns
    /// whether any was.
    pub fn seal_full(&mut self) -> bool {
        let mut any = false;
        for b in &mut self.buckets {
            any |= b.seal_if(b.layer_entries);
        }
        any
    }

    /// Seals every bucket's `recent` layer that holds anything (the writer is idle); returns
    /// whether any did.
    pub fn seal_all(&mut self) -> bool {
        let mut any = false;
        for b in &mut self.buckets {
            any |= b.seal_if(1);
        }
        any
    }

    /// Installs `merged` in its bucket, if still wanted (see `Bucket::install`).
    pub fn install(&mut self, merged: &Merged) -> bool {
        self.buckets.iter_mut().any(|b| b.install(merged))
    }

    /// Whether any bucket has a layer above its base.
    pub fn has_layers(&self) -> bool {
        self.buckets.iter().any(Bucket::has_layers)
    }

    /// The most sealed layers any bucket has.
    pub fn most_sealed(&self) -> usize {
        self.buckets.iter().map(Bucket::sealed_layers).max().unwrap_or(0)
    }

    /// Publishes every bucket's changes ([`BTree::snapshot`]) and returns a catalog sharing
    /// all their nodes: what a reader gets.
    pub fn snapshot(&mut self) -> Catalog {
        let buckets = self
            .buckets
            .iter_mut()
            .map(|b| Bucket {
                base: b.base.snapshot(),
                recent: b.recent.snapshot(),
                recent_filter: Arc::clone(&b.recent_filter),
                sealed: b.sealed.clone(),
                name: Arc::clone(&b.name),
                ..*b
            })
            .collect();
        Catalog { buckets, layer_entries: self.layer_entries }
    }

    pub fn key_count(&self) -> u64 {
        self.buckets.iter().map(|b| b.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::format::put_len;

    fn v(len: u32) -> ValueRef {
        ValueRef { seg: 1, off: 0, len }
    }

    #[test]
    fn live_bytes_follow_overwrites_and_deletes() {
        let mut c = Catalog::default();
        assert!(c.create(b"b", 1));
        assert!(!c.create(b"b", 2));
        let base = c.live_bytes();
        assert_eq!(base, create_bucket_len(1) as u64);
        let b = c.get_mut(b"b").unwrap();
        b.put(b"k", v(10));
        b.put(b"k", v(3));
        assert_eq!(c.live_bytes(), base + put_len(1, 3) as u64);
        c.get_mut(b"b").unwrap().delete(b"k");
        c.get_mut(b"b").unwrap().delete(b"k");
        assert_eq!(c.live_bytes(), base);
        assert!(c.create(b"a", c.unused_id().unwrap()));
        assert_eq!(c.iter().map(|b| b.name.to_vec()).collect::<Vec<_>>(), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(c.get(b"a").unwrap().id, 2);
        assert!(c.remove(b"b").is_some());
        assert!(c.get(b"b").is_none());
    }

    #[test]
    fn unused_id_after_the_largest_id() {
        let mut c = Catalog::default();
        assert!(c.create(b"max", u32::MAX));
        assert_eq!(c.unused_id(), Some(1));
        assert!(c.create(b"one", 1));
        assert!(c.create(b"three", 3));
        assert_eq!(c.unused_id(), Some(2));
    }
}
