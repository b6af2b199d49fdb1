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

use super::{BTree, ValueRef};
use crate::log::format::{create_bucket_len, put_len};

#[derive(Clone, Debug)]
pub struct Bucket {
    pub name: Arc<[u8]>,
    pub id: u32,
    pub tree: BTree,
    /// Bytes of the records a defrag would keep for this bucket: its create-bucket record and
    /// the put record of every live key. Kept exact through overwrites and deletes.
    pub live_bytes: u64,
}

impl Bucket {
    fn new(name: &[u8], id: u32) -> Bucket {
        Bucket { name: name.into(), id, tree: BTree::new(), live_bytes: create_bucket_len(name.len()) as u64 }
    }

    /// Points `key` at a new value; returns the old one.
    pub fn put(&mut self, key: &[u8], value: ValueRef) -> Option<ValueRef> {
        let old = self.tree.insert(key, value);
        self.live_bytes += put_len(key.len(), value.len as usize) as u64;
        if let Some(o) = old {
            self.live_bytes -= put_len(key.len(), o.len as usize) as u64;
        }
        old
    }

    /// Fills an empty bucket with `entries` (strictly ascending keys) in one bottom-up build;
    /// returns false, changing nothing, if the bucket has keys or a key is too long to build
    /// with (see [`BTree::from_sorted`]), for the caller to insert them instead.
    pub fn load_sorted(&mut self, entries: &[(&[u8], ValueRef)]) -> bool {
        if !self.tree.is_empty() {
            return false;
        }
        let Some(tree) = BTree::from_sorted(entries) else { return false };
        self.tree = tree;
        self.live_bytes += entries.iter().map(|(k, v)| put_len(k.len(), v.len as usize) as u64).sum::<u64>();
        true
    }

    /// Removes `key`; returns its value if it was there.
    pub fn delete(&mut self, key: &[u8]) -> Option<ValueRef> {
        let old = self.tree.remove(key);
        self.account_delete(key, old)
    }

    /// [`delete`](Self::delete) of a key expected to be there (see [`BTree::remove_expected`]).
    pub fn delete_expected(&mut self, key: &[u8]) -> Option<ValueRef> {
        let old = self.tree.remove_expected(key);
        self.account_delete(key, old)
    }

    fn account_delete(&mut self, key: &[u8], old: Option<ValueRef>) -> Option<ValueRef> {
        if let Some(o) = old {
            self.live_bytes -= put_len(key.len(), o.len as usize) as u64;
        }
        old
    }
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Sorted by name.
    buckets: Vec<Bucket>,
}

impl Catalog {
    pub const EMPTY: Catalog = Catalog { buckets: Vec::new() };

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
                self.buckets.insert(i, Bucket::new(name, id));
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
        self.buckets.iter().map(|b| b.live_bytes).sum()
    }

    /// Publishes every bucket's changes ([`BTree::snapshot`]) and returns a catalog sharing
    /// all their nodes: what a reader gets.
    pub fn snapshot(&mut self) -> Catalog {
        let buckets = self
            .buckets
            .iter_mut()
            .map(|b| Bucket { tree: b.tree.snapshot(), name: Arc::clone(&b.name), ..*b })
            .collect();
        Catalog { buckets }
    }

    pub fn key_count(&self) -> u64 {
        self.buckets.iter().map(|b| b.tree.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
