//! The public value types of the MVCC layer and the encoding of a stored `KeyValue`.
//!
//! A `key` bucket value is: format byte (1), create_revision (i64 LE), mod_revision (i64 LE),
//! version (i64 LE), lease (i64 LE), key length (u32 LE), key, value — fixed-width integers so
//! that decoding is a few bounds-checked reads. A tombstone stores the key with an empty value.

use crate::error::{Error, Result};

/// A key's state at some revision, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for a deletion event).
    pub value: Vec<u8>,
    /// The revision of the put that created this generation of the key.
    pub create_revision: i64,
    /// The revision of the last change.
    pub mod_revision: i64,
    /// Changes since creation: 1 for a new key.
    pub version: i64,
    /// The lease id attached by the put (0 for none).
    pub lease: i64,
}

const FORMAT: u8 = 1;
const FIXED: usize = 1 + 8 * 4 + 4;

impl KeyValue {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        encode_into(
            &mut b,
            &self.key,
            &self.value,
            [self.create_revision, self.mod_revision, self.version, self.lease],
        );
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<KeyValue> {
        KeyValueRef::decode(b).map(|kv| kv.to_owned())
    }
}

/// Replaces `b` with the stored form of a `KeyValue` made of `key`, `value` and `nums`
/// (create_revision, mod_revision, version, lease), without building one.
pub(crate) fn encode_into(b: &mut Vec<u8>, key: &[u8], value: &[u8], nums: [i64; 4]) {
    b.clear();
    b.reserve(FIXED + key.len() + value.len());
    b.push(FORMAT);
    for n in nums {
        b.extend_from_slice(&n.to_le_bytes());
    }
    b.extend_from_slice(&(key.len() as u32).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(value);
}

/// The key, create revision and version of a stored `KeyValue`, without copying it (the index
/// rebuild at open reads only these).
pub(crate) fn peek(b: &[u8]) -> Result<(&[u8], i64, i64)> {
    parse(b).map(|kv| (kv.key, kv.create_revision, kv.version)).ok_or_else(malformed)
}

fn malformed() -> Error {
    super::key_bucket_corruption("malformed stored KeyValue")
}

/// The stored form's layout, read; `None` if `b` is not one. No error is built here: the
/// watchers' loop over every feed event inlines this, and the callers that report bad input
/// turn `None` into `Error::Corruption`.
#[inline]
fn parse(b: &[u8]) -> Option<KeyValueRef<'_>> {
    if b.len() < FIXED || b[0] != FORMAT {
        return None;
    }
    let i = |at: usize| b.get(at..at + 8).and_then(|x| x.try_into().ok()).map(i64::from_le_bytes);
    let klen = u32::from_le_bytes(b.get(33..37)?.try_into().ok()?) as usize;
    let key = b.get(FIXED..FIXED.checked_add(klen)?)?;
    Some(KeyValueRef {
        key,
        value: &b[FIXED + key.len()..],
        create_revision: i(1)?,
        mod_revision: i(9)?,
        version: i(17)?,
        lease: i(25)?,
    })
}

/// Options of a watch; see [`KvStore::watch_with`](crate::mvcc::KvStore::watch_with).
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// The first revision to deliver; 0 for the next write.
    pub start_rev: i64,
    /// Whether events carry the key's previous value (etcd's `WithPrevKV`); `prev_kv` is
    /// `None` in every event otherwise. Previous values cost the writer a read of the old
    /// value per changed key while any watcher asks for them.
    pub prev_kv: bool,
}

/// Options of a range read.
#[derive(Clone, Debug, Default)]
pub struct RangeOptions {
    /// The revision to read at; 0 for the current one (as in etcd, so is any negative one).
    pub rev: i64,
    /// At most this many key-values in the result; 0 for all. `count` still counts all.
    pub limit: usize,
    /// Return only the count.
    pub count_only: bool,
    /// Return keys without values.
    pub keys_only: bool,
}

/// The result of a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// The matching key-values, ascending by key, at most `limit`.
    pub kvs: Vec<KeyValue>,
    /// How many keys matched.
    pub count: usize,
    /// The store's current revision when the read was served; for a range inside a txn, the
    /// revision it read at (the txn's start before the txn's first write, its own after).
    pub rev: i64,
}

/// How a [`Compare`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// The target equals the operand.
    Equal,
    /// The target differs from the operand.
    NotEqual,
    /// The target is less than the operand.
    Less,
    /// The target is greater than the operand.
    Greater,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Value(Vec<u8>),
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Lease(i64),
}

/// A condition of a [`crate::mvcc::KvStore::txn`], on one key (etcd's `Compare`). A missing key
/// has version, create and mod revision and lease 0, and no value (a value compare fails).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub(crate) key: Vec<u8>,
    pub(crate) op: CompareOp,
    pub(crate) target: Target,
}

impl Compare {
    /// Compares the key's value.
    pub fn value(key: &[u8], op: CompareOp, value: &[u8]) -> Compare {
        Compare { key: key.to_vec(), op, target: Target::Value(value.to_vec()) }
    }
    /// Compares the key's version.
    pub fn version(key: &[u8], op: CompareOp, v: i64) -> Compare {
        Compare { key: key.to_vec(), op, target: Target::Version(v) }
    }
    /// Compares the key's create revision.
    pub fn create_revision(key: &[u8], op: CompareOp, rev: i64) -> Compare {
        Compare { key: key.to_vec(), op, target: Target::CreateRevision(rev) }
    }
    /// Compares the key's mod revision.
    pub fn mod_revision(key: &[u8], op: CompareOp, rev: i64) -> Compare {
        Compare { key: key.to_vec(), op, target: Target::ModRevision(rev) }
    }
    /// Compares the key's lease.
    pub fn lease(key: &[u8], op: CompareOp, lease: i64) -> Compare {
        Compare { key: key.to_vec(), op, target: Target::Lease(lease) }
    }

    pub(crate) fn holds(&self, kv: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ord: Ordering = match (&self.target, kv) {
            (Target::Value(v), Some(kv)) => kv.value.as_slice().cmp(v),
            (Target::Value(_), None) => return false,
            (Target::Version(n), kv) => kv.map_or(0, |k| k.version).cmp(n),
            (Target::CreateRevision(n), kv) => kv.map_or(0, |k| k.create_revision).cmp(n),
            (Target::ModRevision(n), kv) => kv.map_or(0, |k| k.mod_revision).cmp(n),
            (Target::Lease(n), kv) => kv.map_or(0, |k| k.lease).cmp(n),
        };
        match self.op {
            CompareOp::Equal => ord == Ordering::Equal,
            CompareOp::NotEqual => ord != Ordering::Equal,
            CompareOp::Less => ord == Ordering::Less,
            CompareOp::Greater => ord == Ordering::Greater,
        }
    }
}

/// An operation of a [`crate::mvcc::KvStore::txn`] branch.
#[derive(Clone, Debug)]
pub enum Op {
    /// Put a key.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease id (0 for none).
        lease: i64,
    },
    /// Delete the keys in a range.
    DeleteRange {
        /// Start of the range.
        key: Vec<u8>,
        /// End of the range, as in `range`.
        end: Vec<u8>,
    },
    /// Read a range.
    Range {
        /// Start of the range.
        key: Vec<u8>,
        /// End of the range: empty for the single key, `\0` for every key ≥ `key`.
        end: Vec<u8>,
        /// Options.
        opts: RangeOptions,
    },
}

impl Op {
    /// A put.
    pub fn put(key: &[u8], value: &[u8], lease: i64) -> Op {
        Op::Put { key: key.to_vec(), value: value.to_vec(), lease }
    }
    /// A delete of `[key, end)`.
    pub fn delete_range(key: &[u8], end: &[u8]) -> Op {
        Op::DeleteRange { key: key.to_vec(), end: end.to_vec() }
    }
    /// A read of `[key, end)`.
    pub fn range(key: &[u8], end: &[u8], opts: RangeOptions) -> Op {
        Op::Range { key: key.to_vec(), end: end.to_vec(), opts }
    }
}

/// What one [`Op`] of a txn returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    /// A put: the revision it got.
    Put {
        /// The revision.
        revision: i64,
    },
    /// A delete: how many keys it deleted.
    DeleteRange {
        /// The count.
        deleted: u64,
    },
    /// A range read.
    Range(RangeResult),
}

/// The result of a txn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (so the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the txn.
    pub revision: i64,
    /// One response per op of the branch that ran.
    pub responses: Vec<OpResponse>,
}

/// The result of [`crate::mvcc::KvStore::hash_by_rev`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKv {
    /// CRC32 over the stored revisions ≤ the requested revision.
    pub hash: u32,
    /// The compacted revision when hashed.
    pub compact_revision: i64,
    /// The revision hashed: the one asked for, or the current one if 0 was (etcd's
    /// `KeyValueHash.Revision`).
    pub revision: i64,
}

/// What kind of change a [`WatchEvent`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was put.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change, as delivered to a watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete, the key with `mod_revision` the deleting
    /// revision and an empty value.
    pub kv: KeyValue,
    /// The key before the change, if it existed and its revision is not compacted.
    pub prev_kv: Option<KeyValue>,
}

/// A [`KeyValue`] lent rather than owned: what [`Watcher::recv_with`](super::Watcher::recv_with)
/// hands out, read in place from the store's shared feed of events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyValueRef<'a> {
    /// As [`KeyValue::key`].
    pub key: &'a [u8],
    /// As [`KeyValue::value`].
    pub value: &'a [u8],
    /// As [`KeyValue::create_revision`].
    pub create_revision: i64,
    /// As [`KeyValue::mod_revision`].
    pub mod_revision: i64,
    /// As [`KeyValue::version`].
    pub version: i64,
    /// As [`KeyValue::lease`].
    pub lease: i64,
}

impl KeyValueRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> KeyValue {
        KeyValue {
            key: self.key.to_vec(),
            value: self.value.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }

    /// Reads the stored form (see the module documentation).
    pub(crate) fn decode(b: &[u8]) -> Result<KeyValueRef<'_>> {
        parse(b).ok_or_else(malformed)
    }
}

impl KeyValue {
    /// This key-value, lent.
    pub fn as_ref(&self) -> KeyValueRef<'_> {
        KeyValueRef {
            key: &self.key,
            value: &self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// A [`WatchEvent`] lent rather than owned (see [`KeyValueRef`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchEventRef<'a> {
    /// As [`WatchEvent::kind`].
    pub kind: EventKind,
    /// As [`WatchEvent::kv`].
    pub kv: KeyValueRef<'a>,
    /// As [`WatchEvent::prev_kv`].
    pub prev_kv: Option<KeyValueRef<'a>>,
}

impl WatchEventRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> WatchEvent {
        WatchEvent { kind: self.kind, kv: self.kv.to_owned(), prev_kv: self.prev_kv.map(|p| p.to_owned()) }
    }
}

impl WatchEvent {
    /// This event, lent.
    pub fn as_ref(&self) -> WatchEventRef<'_> {
        WatchEventRef { kind: self.kind, kv: self.kv.as_ref(), prev_kv: self.prev_kv.as_ref().map(|p| p.as_ref()) }
    }
}

/// A revision's events, encoded one after another into one buffer for the watch feed: per
/// event, kind (u8: 0 put, 1 delete), whether a previous value follows (u8), the stored form of
/// the key-value (u32 LE length, bytes), then that of the previous one if any. One allocation
/// per revision, however many events and watchers: the feed's events used to be owned structs,
/// seven allocations per put, and with 100 watchers the allocator was a third of a put's time.
#[derive(Default)]
pub(crate) struct EventsBuf {
    pub buf: Vec<u8>,
    pub count: usize,
}

impl EventsBuf {
    /// Appends an event from the stored forms of the key-value and its previous one.
    pub fn push(&mut self, kind: EventKind, kv: &[u8], prev: Option<&[u8]>) {
        // Exactly: a revision of one event then becomes its boxed slice without a reallocation.
        self.buf.reserve_exact(2 + 4 + kv.len() + prev.map_or(0, |p| 4 + p.len()));
        self.buf.push(match kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        self.buf.push(u8::from(prev.is_some()));
        for part in std::iter::once(kv).chain(prev) {
            self.buf.extend_from_slice(&(part.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(part);
        }
        self.count += 1;
    }
}

/// One event of an [`EventsBuf`], not yet decoded: a watcher decodes only the events in its
/// range, and this is small enough to move around in registers (a decoded `WatchEventRef` is
/// not: moving it cost a `memcpy` call per event).
#[derive(Clone, Copy)]
pub(crate) struct RawEvent<'a> {
    kind: EventKind,
    kv: &'a [u8],
    prev: Option<&'a [u8]>,
}

impl<'a> RawEvent<'a> {
    /// The whole event if its key is in the range `[start, end)` (see `in_range`), with its
    /// previous value if `prev_kv` and the feed has it. The previous value is decoded only for
    /// an event in range. `None` also if a stored form does not decode (a bug: this process
    /// wrote them).
    #[inline]
    pub fn decode_in(&self, start: &[u8], end: &[u8], prev_kv: bool) -> Option<WatchEventRef<'a>> {
        let kv = parse(self.kv).filter(|kv| super::in_range(kv.key, start, end))?;
        let prev_kv = match self.prev.filter(|_| prev_kv) {
            Some(p) => Some(parse(p)?),
            None => None,
        };
        Some(WatchEventRef { kind: self.kind, kv, prev_kv })
    }
}

/// The events of an [`EventsBuf`]'s bytes, in order. The bytes were written by this process and
/// never change, so a malformed one is a bug: iteration stops there.
pub(crate) fn events(mut b: &[u8]) -> impl Iterator<Item = RawEvent<'_>> {
    fn part<'a>(r: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(r.get(..4)?.try_into().ok()?) as usize;
        let bytes = r.get(4..4usize.checked_add(len)?)?;
        *r = &r[4 + len..];
        Some(bytes)
    }
    std::iter::from_fn(move || {
        let (&kind, rest) = b.split_first()?;
        let (&has_prev, mut r) = rest.split_first()?;
        let kv = part(&mut r)?;
        let prev = if has_prev == 1 { Some(part(&mut r)?) } else { None };
        b = r;
        let kind = if kind == 0 { EventKind::Put } else { EventKind::Delete };
        Some(RawEvent { kind, kv, prev })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_round_trip_and_damage() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"value".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: -1,
        };
        let b = kv.encode();
        assert_eq!(KeyValue::decode(&b).unwrap(), kv);
        for cut in 0..FIXED + 1 {
            assert!(KeyValue::decode(&b[..cut]).is_err(), "cut {cut}");
        }
        let mut bad = b.clone();
        bad[0] = 9;
        assert!(KeyValue::decode(&bad).is_err());
    }

    #[test]
    fn compares() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"b".to_vec(),
            create_revision: 2,
            mod_revision: 4,
            version: 2,
            lease: 0,
        };
        assert!(Compare::value(b"k", CompareOp::Equal, b"b").holds(Some(&kv)));
        assert!(Compare::value(b"k", CompareOp::Greater, b"a").holds(Some(&kv)));
        assert!(!Compare::value(b"k", CompareOp::Equal, b"b").holds(None));
        assert!(Compare::version(b"k", CompareOp::Equal, 0).holds(None), "a missing key has version 0");
        assert!(Compare::create_revision(b"k", CompareOp::Less, 3).holds(Some(&kv)));
        assert!(Compare::mod_revision(b"k", CompareOp::NotEqual, 3).holds(Some(&kv)));
        assert!(Compare::lease(b"k", CompareOp::Equal, 0).holds(Some(&kv)));
    }
}
