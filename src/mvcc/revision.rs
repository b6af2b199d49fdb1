//! Revisions and how they are stored: the `key` bucket is keyed by revision, as etcd's.
//!
//! A revision is (main, sub): `main` counts the store's write transactions, `sub` the changes
//! inside one. Its bucket key is 17 bytes — `main` as 8 big-endian bytes, `_`, `sub` as 8
//! big-endian bytes — so that byte order is revision order, plus a trailing `t` for a tombstone
//! (a deletion), which is how a reader of the bucket tells a delete from a put.

use crate::error::Result;

/// A revision: the `main` revision of a write and the index of a change within it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// The store-wide revision of the write.
    pub main: i64,
    /// The change's index within that write, from 0.
    pub sub: i64,
}

/// Length of a revision's bucket key without the tombstone mark.
pub const REV_KEY_LEN: usize = 17;
const TOMBSTONE: u8 = b't';

impl Revision {
    /// The bucket key of this revision; `tombstone` appends the deletion mark.
    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        let mut k = Vec::with_capacity(REV_KEY_LEN + 1);
        k.extend_from_slice(&self.main.to_be_bytes());
        k.push(b'_');
        k.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            k.push(TOMBSTONE);
        }
        k
    }

    /// As [`to_key`](Self::to_key), on the stack: the hot paths (every put, every read of a
    /// value by revision) make no allocation for it.
    pub fn key_bytes(self, tombstone: bool) -> RevKey {
        let mut buf = [0u8; REV_KEY_LEN + 1];
        buf[..8].copy_from_slice(&self.main.to_be_bytes());
        buf[8] = b'_';
        buf[9..17].copy_from_slice(&self.sub.to_be_bytes());
        buf[17] = TOMBSTONE;
        RevKey { buf, len: if tombstone { REV_KEY_LEN + 1 } else { REV_KEY_LEN } }
    }

    /// Parses a bucket key: the revision and whether it is a tombstone.
    pub fn from_key(k: &[u8]) -> Result<(Revision, bool)> {
        let bad = || super::key_bucket_corruption(format!("malformed revision key {k:02x?}"));
        if !(k.len() == REV_KEY_LEN || k.len() == REV_KEY_LEN + 1) || k[8] != b'_' {
            return Err(bad());
        }
        let tombstone = match k.get(REV_KEY_LEN) {
            None => false,
            Some(&TOMBSTONE) => true,
            Some(_) => return Err(bad()),
        };
        let main = i64::from_be_bytes(k[0..8].try_into().map_err(|_| bad())?);
        let sub = i64::from_be_bytes(k[9..17].try_into().map_err(|_| bad())?);
        Ok((Revision { main, sub }, tombstone))
    }
}

/// A revision's bucket key, held on the stack (see [`Revision::key_bytes`]).
#[derive(Clone, Copy)]
pub struct RevKey {
    buf: [u8; REV_KEY_LEN + 1],
    len: usize,
}

impl std::ops::Deref for RevKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl AsRef<[u8]> for RevKey {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_revision_order_and_round_trip() {
        let revs = [
            Revision { main: 1, sub: 0 },
            Revision { main: 1, sub: 1 },
            Revision { main: 2, sub: 0 },
            Revision { main: 256, sub: 0 },
        ];
        let keys: Vec<Vec<u8>> = revs.iter().map(|r| r.to_key(false)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for r in revs {
            assert_eq!(Revision::from_key(&r.to_key(false)).unwrap(), (r, false));
            assert_eq!(Revision::from_key(&r.to_key(true)).unwrap(), (r, true));
            assert_eq!(&*r.key_bytes(false), &r.to_key(false)[..]);
            assert_eq!(&*r.key_bytes(true), &r.to_key(true)[..]);
        }
        assert!(Revision::from_key(b"short").is_err());
        let mut bad = revs[0].to_key(false);
        bad[8] = b'-';
        assert!(Revision::from_key(&bad).is_err());
        let mut bad = revs[0].to_key(true);
        bad[17] = b'x';
        assert!(Revision::from_key(&bad).is_err());
    }
}
