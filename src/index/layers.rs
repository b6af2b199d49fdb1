//! The layers of a running bucket's index: recent writes kept apart from the large tree.
//!
//! # Why
//!
//! A put into a tree of a million keys costs about 600 ns, nearly all of it memory: the cache
//! misses down to its leaf, the copy of that leaf (copy-on-write, about 2.5 KiB), and later
//! the free of the copy it replaced. Done by the committing writer, that was three quarters of
//! a durable batch of 1,000 random puts, against a quarter for writing and syncing the log.
//! A small tree of the latest writes stays in the cache and costs a fraction of that, so the
//! writer puts into one of those (`recent`), and a thread of its own (`backend::merger`)
//! carries those writes into the large tree (the *base*), several thousand at a time, in key
//! order, off the writer's path.
//!
//! # The layers, newest first
//!
//! * `recent`: the writer's own, changed by every transaction (copy-on-write like any tree,
//!   so a published view keeps the version it saw);
//! * `sealed`: former `recent` trees that reached `Config::layer_entries` entries (8,192 by
//!   default: small enough that `recent`'s nodes stay in the cache while transactions change
//!   it, about 200 leaves; large enough that a merge carries many puts into the base per copy
//!   of an inner node), frozen, waiting for the merger, oldest first in `Bucket::sealed`;
//! * the base, changed only by the merger (and, where no merger runs — at recovery, in a
//!   defrag's new catalog — directly).
//!
//! A key's value is the one in the newest layer that has the key. A delete that must hide
//! the key in an older layer leaves a [`TOMBSTONE`] in `recent`. Iteration merges the
//! layers ([`Merge`]). Counts and live bytes, exact for the base, are worked out for the
//! layers above it when asked (`Bucket::len`): a put does not look the key up in the base,
//! since that lookup is most of what the layers save.
//!
//! # Invariants
//!
//! * Only the merger changes the base of a layered bucket, and only by installing a tree it
//!   built from the base and a prefix of `sealed`, both as a published view had them: the
//!   install checks that the bucket (its `incarnation`) and that prefix are still there
//!   (`Bucket::install`), so a merge overtaken by a bucket's deletion or a defrag is dropped.
//! * Each layer holds at most one entry per key (it is a tree), so a merge of layers gives
//!   each key the value of its newest layer.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, OnceLock};

use super::filter::{Filter, KeyHash};
use super::{BTree, Iter, ValueRef, WARM_GROUP};
use crate::log::format::put_len;

/// The value a layer holds for a key deleted since older layers were made: the key is absent.
/// No value can lie there: offsets and lengths are `u32`s within one segment, and this one
/// would end 4 GiB past the segment's start.
pub const TOMBSTONE: ValueRef = ValueRef { seg: u32::MAX, off: u32::MAX, len: u32::MAX };

/// The merger carries a bucket's sealed layers into its tree once it has this many, or once
/// the writer is idle (`merger.rs`). Why wait: a merge copies each leaf of the tree it brings a
/// key to, so one of a few thousand random keys into a million copies about a leaf per key —
/// what the writer's own inserts cost — while one of a hundred thousand brings several keys
/// to most leaves.
pub const MERGE_FROM: usize = 16;

/// A bucket with this many sealed layers waits for the merger before its next transaction:
/// the bound on memory, and on the layers a read looks through.
pub const MAX_SEALED: usize = 32;

/// A former `recent` tree, frozen.
#[derive(Debug)]
pub struct Sealed {
    pub tree: BTree,
    /// How many of its entries are [`TOMBSTONE`]s.
    pub tombstones: usize,
    /// Every key of `tree`, tombstones' too: a read skips the layer when the filter says the
    /// key is not there (`filter.rs`).
    pub filter: Arc<Filter>,
    /// The change in keys and live bytes its entries make to what lies below it, once worked
    /// out (`Bucket::counts`).
    pub counts: OnceLock<(i64, i64)>,
}

impl Sealed {
    /// Seals `tree` (published) with `filter`, the one its keys went into as `recent`, or if
    /// that one took too many to tell anything (a bulk load), a new one of the tree's size.
    pub fn new(tree: BTree, tombstones: usize, filter: Arc<Filter>) -> Sealed {
        let filter = if filter.saturated() {
            let f = Filter::with_capacity(tree.len());
            for (key, _) in tree.iter() {
                f.insert(KeyHash::of(key));
            }
            Arc::new(f)
        } else {
            filter
        };
        Sealed { tree, tombstones, filter, counts: OnceLock::new() }
    }
}

/// A base built by merging sealed layers into it, for `Bucket::install`.
pub struct Merged {
    /// The bucket it was built for (`Bucket::incarnation`).
    pub incarnation: u64,
    /// The sealed layers it holds, oldest first: the prefix of the bucket's `sealed` it
    /// replaces.
    pub layers: Vec<Arc<Sealed>>,
    pub base: BTree,
    /// The base's live bytes (see `Bucket::live_bytes`).
    pub live_bytes: u64,
}

/// Bytes a live entry keeps in the log (its put record).
pub(crate) fn entry_bytes(key: &[u8], v: ValueRef) -> u64 {
    put_len(key.len(), v.len as usize) as u64
}

/// Carries `layers` (oldest first) into `base`: the new base, published, and its live bytes
/// given the old base's. `None` if `stop` returns true (asked every [`STOP_EVERY`] entries).
pub fn merge_into(
    mut base: BTree,
    mut live_bytes: u64,
    layers: &[Arc<Sealed>],
    stop: &dyn Fn() -> bool,
) -> Option<(BTree, u64)> {
    if let [only] = layers
        && base.is_empty()
        && only.tombstones == 0
    {
        // Nothing to merge with: the layer becomes the base as it is.
        // (An empty base's live bytes are the bucket's create-bucket record.)
        let tree = only.tree.clone();
        let live = live_bytes + tree.iter().map(|(k, v)| entry_bytes(k, v)).sum::<u64>();
        return Some((tree, live));
    }
    let mut merge = Merge::new(layers.iter().rev().map(|l| l.tree.iter()).collect(), true);
    let mut group: Vec<(&[u8], ValueRef)> = Vec::with_capacity(WARM_GROUP);
    let mut keys: Vec<&[u8]> = Vec::with_capacity(WARM_GROUP);
    let mut done = 0usize;
    loop {
        if done > 0 && done.is_multiple_of(STOP_EVERY) && stop() {
            return None;
        }
        done += WARM_GROUP;
        group.clear();
        group.extend(merge.by_ref().take(WARM_GROUP));
        if group.is_empty() {
            break;
        }
        // The keys ascend, so the group's paths share their top; the leaves are the misses.
        keys.clear();
        keys.extend(group.iter().map(|&(k, _)| k));
        base.warm_paths(&keys);
        for &(key, v) in &group {
            let old = if v == TOMBSTONE {
                base.remove(key)
            } else {
                live_bytes += entry_bytes(key, v);
                base.insert(key, v)
            };
            if let Some(o) = old {
                live_bytes -= entry_bytes(key, o);
            }
        }
    }
    Some((base.snapshot(), live_bytes))
}

/// How many entries a merge carries between looks at whether to stop (a whole number of
/// groups).
const STOP_EVERY: usize = 4096;
const _: () = assert!(STOP_EVERY.is_multiple_of(WARM_GROUP));

/// Ascending entries of several layers, newest first in `iters`: each key once, with its
/// newest layer's value; tombstones kept or skipped. A heap orders the layers' next entries,
/// so an entry costs a few comparisons however many layers there are (a merge may take
/// dozens).
pub struct Merge<'a> {
    iters: Vec<Iter<'a>>,
    /// The value of each layer's next entry (meaningful while the layer is in `heap`).
    values: Vec<ValueRef>,
    /// Each layer's next key with the layer's place in `iters`: the smallest key on top, and
    /// of equal keys the newest layer.
    heap: BinaryHeap<Reverse<(&'a [u8], usize)>>,
    keep_tombstones: bool,
}

impl<'a> Merge<'a> {
    pub fn new(iters: Vec<Iter<'a>>, keep_tombstones: bool) -> Merge<'a> {
        let n = iters.len();
        let mut m =
            Merge { iters, values: vec![ValueRef::default(); n], heap: BinaryHeap::with_capacity(n), keep_tombstones };
        for i in 0..n {
            m.advance(i);
        }
        m
    }

    /// Moves layer `i` on to its next entry, if it has one.
    fn advance(&mut self, i: usize) {
        if let Some((key, v)) = self.iters[i].next() {
            self.values[i] = v;
            self.heap.push(Reverse((key, i)));
        }
    }
}

impl<'a> Iterator for Merge<'a> {
    type Item = (&'a [u8], ValueRef);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Reverse((key, i)) = self.heap.pop()?;
            let v = self.values[i];
            self.advance(i);
            // Older layers' entries for the same key are hidden by this one.
            while let Some(&Reverse((older, j))) = self.heap.peek() {
                if older != key {
                    break;
                }
                self.heap.pop();
                self.advance(j);
            }
            if v != TOMBSTONE || self.keep_tombstones {
                return Some((key, v));
            }
        }
    }
}

/// Ascending live entries of a bucket: of its only layer, or merged from several.
pub enum LayeredIter<'a> {
    One(Iter<'a>),
    Many(Merge<'a>),
}

impl LayeredIter<'_> {
    /// The value `n` entries after the next one, if cheaply known (see [`Iter::peek_value`]):
    /// only for a bucket with no layer above its base.
    #[inline]
    pub fn peek_value(&self, n: usize) -> Option<ValueRef> {
        match self {
            LayeredIter::One(it) => it.peek_value(n),
            LayeredIter::Many(_) => None,
        }
    }
}

impl<'a> Iterator for LayeredIter<'a> {
    type Item = (&'a [u8], ValueRef);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            LayeredIter::One(it) => it.next(),
            LayeredIter::Many(m) => m.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u32) -> ValueRef {
        ValueRef { seg: 1, off: n, len: n % 5 }
    }

    fn tree(entries: &[(&str, ValueRef)]) -> BTree {
        let mut t = BTree::new();
        for (k, val) in entries {
            t.insert(k.as_bytes(), *val);
        }
        t.snapshot()
    }

    fn sealed(entries: &[(&str, ValueRef)]) -> Arc<Sealed> {
        let tombstones = entries.iter().filter(|(_, x)| *x == TOMBSTONE).count();
        let filter = Filter::with_capacity(0);
        filter.insert(KeyHash::of(b"so many that it is saturated"));
        filter.insert(KeyHash::of(b"and a new one is built"));
        filter.insert(KeyHash::of(b"from the tree"));
        Arc::new(Sealed::new(tree(entries), tombstones, Arc::new(filter)))
    }

    #[test]
    fn merge_gives_each_key_its_newest_value_and_drops_tombstones() {
        let newest = tree(&[("a", v(9)), ("c", TOMBSTONE), ("e", v(7))]);
        let older = tree(&[("a", v(1)), ("b", v(2)), ("c", v(3)), ("d", TOMBSTONE)]);
        let base = tree(&[("b", v(4)), ("d", v(5)), ("f", v(6))]);
        let merged: Vec<_> = Merge::new(vec![newest.iter(), older.iter(), base.iter()], false).collect();
        let want = vec![(&b"a"[..], v(9)), (b"b", v(2)), (b"e", v(7)), (b"f", v(6))];
        assert_eq!(merged, want);
        let with: Vec<_> = Merge::new(vec![newest.iter(), older.iter()], true).map(|(k, _)| k.to_vec()).collect();
        assert_eq!(with, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec(), b"e".to_vec()]);
    }

    #[test]
    fn merge_into_applies_layers_oldest_first_and_counts_live_bytes() {
        let base_entries = [("b", v(4)), ("d", v(5)), ("f", v(6))];
        let base = tree(&base_entries);
        let live: u64 = base_entries.iter().map(|(k, x)| entry_bytes(k.as_bytes(), *x)).sum();
        let layers = [sealed(&[("a", v(1)), ("d", TOMBSTONE), ("z", TOMBSTONE)]), sealed(&[("a", v(8)), ("f", v(11))])];
        let (merged, live) = merge_into(base, live, &layers, &|| false).unwrap();
        let got: Vec<_> = merged.iter().map(|(k, x)| (k.to_vec(), x)).collect();
        let want = vec![(b"a".to_vec(), v(8)), (b"b".to_vec(), v(4)), (b"f".to_vec(), v(11))];
        assert_eq!(got, want);
        assert_eq!(live, want.iter().map(|(k, x)| entry_bytes(k, *x)).sum::<u64>());
    }

    #[test]
    fn a_lone_layer_over_an_empty_base_becomes_the_base() {
        let layer = sealed(&[("a", v(1)), ("b", v(2))]);
        let (merged, live) = merge_into(BTree::new(), 7, std::slice::from_ref(&layer), &|| false).unwrap();
        assert_eq!(merged.iter().collect::<Vec<_>>(), layer.tree.iter().collect::<Vec<_>>());
        assert_eq!(live, 7 + entry_bytes(b"a", v(1)) + entry_bytes(b"b", v(2)));
    }
}
