//! A deterministic hash of the content, for comparing replicas (etcd's `Backend.Hash`).
//!
//! Content, not history: a crc32fast (IEEE) hasher is fed, for each bucket in ascending name
//! order, the bucket's name, then for each of its keys in ascending order that is not ignored,
//! the key's bytes and then the value's bytes. Equal content gives equal hashes whatever the
//! overwrites, deletes, segment layout, reopen, defrag or restore that led to it. (etcd's
//! `Hash(nil)` hashes only bucket names; here an empty `ignores` hashes everything.)
//!
//! Known weakness, as etcd's: the parts are fed without their lengths, so contents that differ
//! only by where a name, key or value ends hash alike (DESIGN.md §9.2 says what would fix it).

use std::collections::HashSet;

use super::read_tx::Reader;
use crate::error::Result;

/// The hash of everything `reader` sees except the (bucket, key) pairs in `ignores`.
pub(crate) fn hash(reader: Reader<'_>, ignores: &[(&[u8], &[u8])]) -> Result<u32> {
    let ignored: HashSet<(&[u8], &[u8])> = ignores.iter().copied().collect();
    let mut h = crc32fast::Hasher::new();
    for bucket in reader.catalog.iter() {
        let name: &[u8] = &bucket.name;
        h.update(name);
        for (key, v) in bucket.tree.iter() {
            if !ignored.is_empty() && ignored.contains(&(name, key)) {
                continue;
            }
            h.update(key);
            h.update(reader.value(v)?);
        }
    }
    Ok(h.finalize())
}
