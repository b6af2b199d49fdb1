//! A deterministic hash of the content, for comparing replicas (etcd's `Backend.Hash`).
//!
//! Content, not history: a crc32fast (IEEE) hasher is fed, for each bucket in ascending name
//! order, the bucket's name, then for each of its keys in ascending order that is not ignored,
//! the key and then the value — each part preceded by a tag byte and its length (DESIGN.md
//! §9.2 has the bytes). Equal content gives equal hashes whatever the overwrites, deletes,
//! segment layout, reopen, defrag or restore that led to it. (etcd's `Hash(nil)` hashes only
//! bucket names; here an empty `ignores` hashes everything.)
//!
//! Why the tags and lengths: etcd's hash, and this one until image version 2, fed the bare
//! bytes, so contents that differ only by where a name, key or value ends hashed alike (two
//! empty buckets `a` and `b` and one bucket `ab`; key `k1` with value `v` and key `k` with
//! value `1v`). With each part's length in front, the bytes fed encode the content one to one.

use std::collections::HashSet;

use super::read_tx::Reader;
use crate::error::Result;

/// Tag fed before a bucket's name.
const TAG_BUCKET: u8 = 1;
/// Tag fed before a key (its value follows, length first, without a tag).
const TAG_PAIR: u8 = 2;

/// The hash of everything `reader` sees except the (bucket, key) pairs in `ignores`.
pub(crate) fn hash(reader: Reader<'_>, ignores: &[(&[u8], &[u8])]) -> Result<u32> {
    let ignored: HashSet<(&[u8], &[u8])> = ignores.iter().copied().collect();
    let mut h = ContentHasher::new(false);
    for bucket in reader.catalog.iter() {
        let name: &[u8] = &bucket.name;
        h.bucket(name);
        for (key, v) in bucket.iter() {
            if !ignored.is_empty() && ignored.contains(&(name, key)) {
                continue;
            }
            h.pair(key, reader.value(v)?);
        }
    }
    Ok(h.finish())
}

/// The content hash fed one part at a time: what [`hash`], a snapshot's `write_to` and an
/// image's verification share, so that the definition is written once.
#[derive(Clone)]
pub(crate) struct ContentHasher {
    h: crc32fast::Hasher,
    /// The definition of image version 1: bare bytes, no tags or lengths. Only for verifying
    /// images written before version 2.
    legacy: bool,
}

impl ContentHasher {
    pub fn new(legacy: bool) -> ContentHasher {
        ContentHasher { h: crc32fast::Hasher::new(), legacy }
    }

    pub fn bucket(&mut self, name: &[u8]) {
        if !self.legacy {
            self.h.update(&[TAG_BUCKET]);
            self.h.update(&(name.len() as u32).to_le_bytes());
        }
        self.h.update(name);
    }

    pub fn pair(&mut self, key: &[u8], value: &[u8]) {
        if self.legacy {
            self.h.update(key);
            self.h.update(value);
            return;
        }
        self.h.update(&[TAG_PAIR]);
        self.h.update(&(key.len() as u32).to_le_bytes());
        self.h.update(key);
        self.h.update(&(value.len() as u32).to_le_bytes());
        self.h.update(value);
    }

    pub fn finish(self) -> u32 {
        self.h.finalize()
    }
}
