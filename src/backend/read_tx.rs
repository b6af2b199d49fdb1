//! Reading: the published [`View`], the read-only transaction [`ReadTx`], and the read
//! operations that `ReadTx` and `BatchTx` share.
//!
//! A `View` is immutable once published: a catalog of copy-on-write trees plus the list of
//! segments their values lie in. A `ReadTx` is one `Arc<View>`, so taking it is O(1) and it
//! never waits for the writer, and everything it can reach stays alive and mapped for as long
//! as it lives — whatever the writer, a segment roll-over or a defrag does meanwhile.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::index::ValueRef;
use crate::index::catalog::{Bucket, Catalog};
use crate::index::layers::LayeredIter;
use crate::log::segment::segment_file_name;
use crate::log::writer::{LogPos, SegmentSet, find_segment};

/// One published state of the database.
#[derive(Debug)]
pub(crate) struct View {
    pub catalog: Catalog,
    pub segments: SegmentSet,
    /// Sequence number of the last transaction this view includes (0 for none).
    pub seq: u64,
    /// Where in the log that transaction ends (a defrag replays what lies after it).
    pub end: LogPos,
}

/// Where the bytes of a value can be found.
pub(crate) trait Values {
    fn value(&self, v: ValueRef) -> Option<&[u8]>;
}

impl Values for View {
    fn value(&self, v: ValueRef) -> Option<&[u8]> {
        find_segment(&self.segments, v.seg)?.bytes(v.off as u64, v.len as usize)
    }
}

fn dangling(v: ValueRef) -> Error {
    Error::corruption(
        PathBuf::from(segment_file_name(v.seg)),
        v.off as u64,
        "the index points outside the log (an engine bug: please report it)",
    )
}

/// The read operations, over a catalog and a source of values.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    pub catalog: &'a Catalog,
    pub values: &'a dyn Values,
}

impl<'a> Reader<'a> {
    fn bucket(&self, name: &[u8]) -> Result<&'a Bucket> {
        self.catalog.get(name).ok_or_else(|| Error::BucketNotFound { bucket: name.to_vec() })
    }

    pub fn value(&self, v: ValueRef) -> Result<&'a [u8]> {
        self.values.value(v).ok_or_else(|| dangling(v))
    }

    pub fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<&'a [u8]>> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        // The value's lines are asked for while the leaf confirms the key, so that its cache
        // miss (and TLB miss: the log is mapped in 4 KiB pages) overlaps the key's; the place
        // found for them then serves the read, unless the key turned out to have another.
        let mut early: Option<(ValueRef, &'a [u8])> = None;
        let found = self.bucket(bucket)?.get_early(key, |v| {
            if let Some(bytes) = self.values.value(v) {
                crate::prefetch::prefetch_all(bytes);
                early = Some((v, bytes));
            }
        });
        match (found, early) {
            (Some(v), Some((seen, bytes))) if seen == v => Ok(Some(bytes)),
            (Some(v), _) => self.value(v).map(Some),
            (None, _) => Ok(None),
        }
    }

    pub fn scan(&self, bucket: &[u8], start: &[u8], end: Option<&[u8]>) -> Result<Iter<'a>> {
        let it = Iter { inner: self.bucket(bucket)?.range(start, end), reader: *self };
        // `next` asks for the value `SCAN_PREFETCH_AHEAD` entries on; the ones before that
        // are asked for here, so that a short scan's first values are not read one miss after
        // another.
        for n in 0..SCAN_PREFETCH_AHEAD {
            it.prefetch_value(n);
        }
        Ok(it)
    }

    pub fn range(&self, bucket: &[u8], start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if end.is_empty() {
            let b = self.bucket(bucket)?;
            return match b.get(start).filter(|_| !start.is_empty()) {
                Some(v) => Ok(vec![(start.to_vec(), self.value(v)?.to_vec())]),
                None => Ok(Vec::new()),
            };
        }
        let limit = if limit == 0 { usize::MAX } else { limit };
        self.scan(bucket, start, Some(end))?.take(limit).map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect()
    }

    pub fn for_each(&self, bucket: &[u8], mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        for kv in self.scan(bucket, &[], None)? {
            let (k, v) = kv?;
            f(k, v)?;
        }
        Ok(())
    }

    pub fn buckets(&self) -> Vec<Vec<u8>> {
        self.catalog.iter().map(|b| b.name.to_vec()).collect()
    }

    pub fn bucket_len(&self, bucket: &[u8]) -> Result<usize> {
        Ok(self.bucket(bucket)?.len())
    }
}

/// Ascending (key, value) pairs of one bucket, borrowed from the transaction's view: no copy.
/// Yields an error only if the index and the log disagree, which is an engine bug.
pub struct Iter<'a> {
    inner: LayeredIter<'a>,
    reader: Reader<'a>,
}

/// How many entries ahead a scan asks for values, and how many of each value's first bytes.
const SCAN_PREFETCH_AHEAD: usize = 8;
const SCAN_PREFETCH_BYTES: usize = 256;

impl<'a> Iterator for Iter<'a> {
    type Item = Result<(&'a [u8], &'a [u8])>;
    fn next(&mut self) -> Option<Self::Item> {
        // Neighbouring keys' values lie wherever they were written in the log, each a cache
        // (and often a TLB) miss of its own; asking for the value a few entries ahead lets
        // those misses overlap instead of following one another.
        self.prefetch_value(SCAN_PREFETCH_AHEAD);
        let (k, v) = self.inner.next()?;
        Some(self.reader.value(v).map(|v| (k, v)))
    }
}

impl Iter<'_> {
    /// Asks for the first bytes of the value `n` entries after the next one.
    #[inline]
    fn prefetch_value(&self, n: usize) {
        if let Some(ahead) = self.inner.peek_value(n)
            && let Some(bytes) = self.reader.values.value(ahead)
        {
            crate::prefetch::prefetch_all(&bytes[..bytes.len().min(SCAN_PREFETCH_BYTES)]);
        }
    }
}

/// The read methods shared by [`ReadTx`] and [`crate::BatchTx`]; each type provides
/// `fn reader(&self) -> Reader<'_>`.
macro_rules! read_methods {
    () => {
        /// The value of `key` in `bucket`, copied out.
        pub fn get(&self, bucket: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> $crate::Result<Option<Vec<u8>>> {
            Ok(self.reader().get(bucket.as_ref(), key.as_ref())?.map(<[u8]>::to_vec))
        }

        /// The value of `key` in `bucket`, borrowed from the log's memory map: no copy.
        pub fn get_ref(&self, bucket: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> $crate::Result<Option<&[u8]>> {
            self.reader().get(bucket.as_ref(), key.as_ref())
        }

        /// The pairs with keys in `[start, end)`, ascending, at most `limit` of them
        /// (0 = no limit). An empty `end` means the single key `start` (as etcd's
        /// `UnsafeRange`).
        pub fn range(
            &self,
            bucket: impl AsRef<[u8]>,
            start: impl AsRef<[u8]>,
            end: impl AsRef<[u8]>,
            limit: usize,
        ) -> $crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.reader().range(bucket.as_ref(), start.as_ref(), end.as_ref(), limit)
        }

        /// Iterates the pairs with keys in `[start, end)` (`None`: to the bucket's end),
        /// ascending, borrowing keys and values: the zero-copy form of `range`.
        pub fn scan(
            &self,
            bucket: impl AsRef<[u8]>,
            start: impl AsRef<[u8]>,
            end: Option<&[u8]>,
        ) -> $crate::Result<$crate::backend::Iter<'_>> {
            self.reader().scan(bucket.as_ref(), start.as_ref(), end)
        }

        /// Calls `f` for every pair of `bucket`, ascending; an `Err` from `f` stops the walk
        /// and is returned.
        pub fn for_each(
            &self,
            bucket: impl AsRef<[u8]>,
            f: impl FnMut(&[u8], &[u8]) -> $crate::Result<()>,
        ) -> $crate::Result<()> {
            self.reader().for_each(bucket.as_ref(), f)
        }

        /// The names of all buckets, ascending.
        pub fn buckets(&self) -> Vec<Vec<u8>> {
            self.reader().buckets()
        }

        /// Whether `bucket` exists.
        pub fn has_bucket(&self, bucket: impl AsRef<[u8]>) -> bool {
            self.reader().catalog.get(bucket.as_ref()).is_some()
        }

        /// The number of keys in `bucket`.
        pub fn bucket_len(&self, bucket: impl AsRef<[u8]>) -> $crate::Result<usize> {
            self.reader().bucket_len(bucket.as_ref())
        }
    };
}
pub(crate) use read_methods;

/// A consistent, read-only snapshot of the database.
///
/// Taking one is O(1) and never waits for the writer; it sees every `BatchTx` that ended
/// before it was taken (durable or not) and nothing after, however long it lives. It is
/// `Send + Sync` and owns what it reads, so it may outlive nothing but itself: the segments it
/// reads stay mapped until it is dropped.
///
/// ```
/// let (db, _dir) = logtree::Backend::open_temp()?;
/// let mut tx = db.batch_tx();
/// tx.create_bucket("b")?;
/// tx.put("b", "k", "v1")?;
/// drop(tx);
/// let old = db.read_tx();
/// let mut tx = db.batch_tx();
/// tx.put("b", "k", "v2")?;
/// drop(tx);
/// assert_eq!(old.get("b", "k")?, Some(b"v1".to_vec()));
/// assert_eq!(db.read_tx().get("b", "k")?, Some(b"v2".to_vec()));
/// # Ok::<(), logtree::Error>(())
/// ```
#[derive(Clone)]
pub struct ReadTx {
    view: Arc<View>,
}

impl ReadTx {
    pub(crate) fn new(view: Arc<View>) -> ReadTx {
        ReadTx { view }
    }

    pub(crate) fn reader(&self) -> Reader<'_> {
        Reader { catalog: &self.view.catalog, values: self.view.as_ref() }
    }

    /// The bytes a put wrote at `v` (from [`BatchTx::put_ref`](super::BatchTx)), if this
    /// snapshot's log still has the segment: until a defrag rewrites the log, a place in it
    /// holds the same bytes in every later snapshot. `None` after a defrag (or for a place this
    /// snapshot cannot reach): look the key up instead.
    pub(crate) fn value_at(&self, v: ValueRef) -> Option<&[u8]> {
        self.view.value(v)
    }

    /// Sequence number of the last transaction this snapshot includes (0 for none). Strictly
    /// increasing with every `BatchTx` that writes something.
    pub fn seq(&self) -> u64 {
        self.view.seq
    }

    read_methods!();
}

impl std::fmt::Debug for ReadTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadTx").field("seq", &self.view.seq).finish()
    }
}
