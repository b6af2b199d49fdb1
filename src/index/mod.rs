//! TEMPORARY stand-in (BTreeMap) until the copy-on-write B-tree lands.
use std::collections::BTreeMap;
use std::sync::Arc;

pub mod catalog;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ValueRef {
    pub seg: u32,
    pub off: u32,
    pub len: u32,
}

#[derive(Clone, Default, Debug)]
pub struct BTree {
    m: Arc<BTreeMap<Vec<u8>, ValueRef>>,
}
impl BTree {
    pub fn new() -> BTree {
        BTree::default()
    }
    pub fn len(&self) -> usize {
        self.m.len()
    }
    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }
    pub fn get(&self, key: &[u8]) -> Option<ValueRef> {
        self.m.get(key).copied()
    }
    pub fn insert(&mut self, key: &[u8], value: ValueRef) -> Option<ValueRef> {
        Arc::make_mut(&mut self.m).insert(key.to_vec(), value)
    }
    pub fn remove(&mut self, key: &[u8]) -> Option<ValueRef> {
        Arc::make_mut(&mut self.m).remove(key)
    }
    pub fn range<'a>(&'a self, start: &[u8], end: Option<&[u8]>) -> Iter<'a> {
        use std::ops::Bound::*;
        let e = match end {
            Some(e) => Excluded(e.to_vec()),
            None => Unbounded,
        };
        if let Some(en) = end {
            if en <= start {
                return Iter { it: None };
            }
        }
        Iter { it: Some(self.m.range::<Vec<u8>, _>((Included(start.to_vec()), e))) }
    }
    pub fn iter(&self) -> Iter<'_> {
        self.range(&[], None)
    }
    pub fn heap_bytes(&self) -> usize {
        self.m.len() * 64
    }
}
pub struct Iter<'a> {
    it: Option<std::collections::btree_map::Range<'a, Vec<u8>, ValueRef>>,
}
impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], ValueRef);
    fn next(&mut self) -> Option<Self::Item> {
        self.it.as_mut()?.next().map(|(k, v)| (k.as_slice(), *v))
    }
}
