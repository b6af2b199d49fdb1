//! The MVCC layer against an in-memory history of states.
//!
//! [`run_mvcc_model`] runs a sequence of [`MvccStep`]s on a fresh `KvStore` and on a model that
//! keeps every key's changes (so the state at any revision), and panics, naming the step, where
//! they differ.
//! The steps come from bytes ([`decode_mvcc_input`], the `mvcc_model` fuzz target) or from
//! proptest (`tests/mvcc_model_test.rs`, which shrinks a failure to a minimal sequence).
//!
//! What it checks: every write's revision and response (puts, `delete_range`'s count, a txn's
//! branch); compactions' errors; after a reopen, the current and compacted revisions; ranges
//! of every key at a revision picked from the history — `Compacted` below the compaction,
//! otherwise the state at that revision with limit, count and keys-only — and, at the end, at
//! every revision still readable. A bulk step writes a few thousand keys in one txn, so that
//! ranges cross the 1,024-key pieces a long range is read in.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use super::Bytes;
use crate::mvcc::{Compare, CompareOp, KeyValue, KvStore, Op, RangeOptions};
use crate::{Backend, Config, Error};

/// One step of [`run_mvcc_model`]. Keys are `key{k}` (and `bulk{i:05}` for [`MvccStep::Bulk`]).
#[derive(Clone, Debug)]
pub enum MvccStep {
    /// `put(key(k), [v])`.
    Put(u8, u8),
    /// `delete_range(key(a), key(b))`.
    Delete(u8, u8),
    /// A txn: if `version(key(k)) == v` then `put(key(k), [x])` else `delete_range(key(k))`.
    Txn(u8, i64, u8),
    /// One txn putting `bulk00000` … up to `n` (at most [`MAX_BULK`]) keys, each value `[v]`.
    Bulk(u16, u8),
    /// `compact` at a revision picked from the history.
    Compact(u8),
    /// Commit, drop the store, open it again.
    Reopen,
    /// A range of every key at a revision picked from the history, with `limit` (0: all) and
    /// keys only or not.
    ReadAt { pick: u8, limit: u16, keys_only: bool },
}

/// The most keys one [`MvccStep::Bulk`] writes: enough for three pieces of a long range.
pub const MAX_BULK: u16 = 3000;

fn key(k: u8) -> Vec<u8> {
    format!("key{k}").into_bytes()
}

fn bulk_key(i: u16) -> Vec<u8> {
    format!("bulk{i:05}").into_bytes()
}

/// Segments of 64 KiB: a bulk step still spans several, and reopens replay more than one, but
/// with the smallest (4 KiB) a 3,000-key bulk created some fifty segment files and rewrote the
/// manifest for each, most of an input's time (file creation on ext4 alone was ~70%).
fn open(dir: &Path) -> KvStore {
    let c = Config { sync: false, segment_size: 64 << 10, ..Config::new(dir) };
    let backend = Backend::open(c).unwrap_or_else(|e| panic!("open backend: {e}"));
    KvStore::open(Arc::new(backend)).unwrap_or_else(|e| panic!("open store: {e}"))
}

/// Every key's changes: `keys[k]` lists `(revision, state from then on)`, `None` for a deletion,
/// ascending. The state at a revision is each key's last change at or before it; kept per key
/// rather than as a whole state per revision, which cost a copy of every key (thousands after a
/// bulk txn) at every revision.
struct History {
    keys: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
    current: i64,
    compacted: i64,
}

impl History {
    fn current(&self) -> i64 {
        self.current
    }

    fn pick(&self, pick: u8) -> i64 {
        1 + pick as i64 % self.current()
    }

    /// The key's state at revision `rev`.
    fn get_at(&self, k: &[u8], rev: i64) -> Option<&KeyValue> {
        at(self.keys.get(k)?, rev)
    }

    /// The live keys of `[a, b)` at revision `rev`, ascending.
    fn range_at(&self, a: &[u8], b: &[u8], rev: i64) -> impl Iterator<Item = &KeyValue> + '_ {
        let b = b.max(a); // `b <= a`: no key
        self.keys
            .range::<[u8], _>((Bound::Included(a), Bound::Excluded(b)))
            .filter_map(move |(_, changes)| at(changes, rev))
    }

    /// Every live key at revision `rev`, ascending.
    fn state_at(&self, rev: i64) -> impl Iterator<Item = &KeyValue> + '_ {
        self.keys.values().filter_map(move |changes| at(changes, rev))
    }

    /// etcd's put at revision `rev`: a live key keeps its creation revision and gains a version.
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>, rev: i64) {
        let prev = self.get_at(&k, rev);
        let kv = KeyValue {
            key: k.clone(),
            value: v,
            create_revision: prev.map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.map_or(1, |p| p.version + 1),
            lease: 0,
        };
        self.change(k, rev, Some(kv));
    }

    /// Records the key's change at `rev` (each step changes a key at most once per revision).
    fn change(&mut self, k: Vec<u8>, rev: i64, kv: Option<KeyValue>) {
        self.keys.entry(k).or_default().push((rev, kv));
    }

    fn check_range(&self, store: &KvStore, rev: i64, limit: usize, keys_only: bool, ctx: &str) {
        let opts = RangeOptions { rev, limit, keys_only, ..Default::default() };
        let r = store.range(b"", b"\0", opts.clone());
        if rev < self.compacted {
            assert!(matches!(r, Err(Error::Compacted { .. })), "{ctx}: rev {rev} below the compaction: {r:?}");
            return;
        }
        let r = r.unwrap_or_else(|e| panic!("{ctx}: range at {rev}: {e}"));
        let all: Vec<&KeyValue> = self.state_at(rev).collect();
        let want: Vec<KeyValue> = all
            .iter()
            .take(if limit == 0 { usize::MAX } else { limit })
            .map(|kv| if keys_only { KeyValue { value: Vec::new(), ..(*kv).clone() } } else { (*kv).clone() })
            .collect();
        assert_eq!(r.count, all.len(), "{ctx}: count at {rev}");
        assert!(r.kvs == want, "{ctx}: rows at {rev} (limit {limit}, keys only {keys_only})");
        assert_eq!(r.rev, self.current(), "{ctx}: the range's revision");
        let counted = store
            .range(b"", b"\0", RangeOptions { count_only: true, ..opts })
            .unwrap_or_else(|e| panic!("{ctx}: count at {rev}: {e}"));
        assert!(counted.count == all.len() && counted.kvs.is_empty(), "{ctx}: count only at {rev}");
    }
}

/// The state at revision `rev` of a key whose changes are `changes`.
fn at(changes: &[(i64, Option<KeyValue>)], rev: i64) -> Option<&KeyValue> {
    let n = changes.partition_point(|(r, _)| *r <= rev);
    changes[..n].last().and_then(|(_, kv)| kv.as_ref())
}

/// Runs `steps` on a fresh store and the model; panics at the first difference.
pub fn run_mvcc_model(steps: &[MvccStep]) {
    let tmp = super::temp_dir();
    let mut store = open(tmp.path());
    let mut h = History { keys: BTreeMap::new(), current: 1, compacted: 0 };
    let fail = |ctx: &str, e: Error| -> ! { panic!("{ctx}: {e}") };
    for (i, s) in steps.iter().enumerate() {
        let ctx = &format!("step {i} {s:?}");
        match *s {
            MvccStep::Put(k, v) => {
                let rev = store.put(&key(k), &[v], 0).unwrap_or_else(|e| fail(ctx, e));
                h.current += 1;
                h.put(key(k), vec![v], h.current);
                assert_eq!(rev, h.current(), "{ctx}");
            }
            MvccStep::Delete(a, b) => {
                let (n, rev) = store.delete_range(&key(a), &key(b)).unwrap_or_else(|e| fail(ctx, e));
                let doomed: Vec<Vec<u8>> = h.range_at(&key(a), &key(b), h.current).map(|kv| kv.key.clone()).collect();
                assert_eq!(n as usize, doomed.len(), "{ctx}: deleted");
                if !doomed.is_empty() {
                    h.current += 1;
                    for k in doomed {
                        h.change(k, h.current, None);
                    }
                }
                assert_eq!(rev, h.current(), "{ctx}");
            }
            MvccStep::Txn(k, v, x) => {
                let r = store
                    .txn(
                        &[Compare::version(&key(k), CompareOp::Equal, v)],
                        &[Op::put(&key(k), &[x], 0)],
                        &[Op::delete_range(&key(k), b"")],
                    )
                    .unwrap_or_else(|e| fail(ctx, e));
                let version = h.get_at(&key(k), h.current).map_or(0, |kv| kv.version);
                assert_eq!(r.succeeded, version == v, "{ctx}: branch");
                if r.succeeded {
                    h.current += 1;
                    h.put(key(k), vec![x], h.current);
                } else if version > 0 {
                    h.current += 1;
                    h.change(key(k), h.current, None);
                }
                assert_eq!(r.revision, h.current(), "{ctx}");
            }
            MvccStep::Bulk(n, v) => {
                let n = n.min(MAX_BULK);
                let ops: Vec<Op> = (0..n).map(|i| Op::put(&bulk_key(i), &[v], 0)).collect();
                let r = store.txn(&[], &ops, &[]).unwrap_or_else(|e| fail(ctx, e));
                if n > 0 {
                    h.current += 1;
                    for i in 0..n {
                        h.put(bulk_key(i), vec![v], h.current);
                    }
                }
                assert_eq!(r.revision, h.current(), "{ctx}");
            }
            MvccStep::Compact(pick) => {
                let rev = h.pick(pick);
                let r = store.compact(rev);
                if rev <= h.compacted {
                    assert!(matches!(r, Err(Error::Compacted { .. })), "{ctx}: {r:?}");
                } else {
                    r.unwrap_or_else(|e| fail(ctx, e));
                    h.compacted = rev;
                }
            }
            MvccStep::Reopen => {
                store.backend().force_commit().unwrap_or_else(|e| fail(ctx, e));
                drop(store);
                store = open(tmp.path());
                assert_eq!(store.current_revision(), h.current(), "{ctx}: current revision");
                assert_eq!(store.compacted_revision(), h.compacted, "{ctx}: compacted revision");
            }
            MvccStep::ReadAt { pick, limit, keys_only } => {
                h.check_range(&store, h.pick(pick), limit as usize, keys_only, ctx);
            }
        }
    }
    for rev in h.compacted.max(1)..=h.current() {
        h.check_range(&store, rev, 0, false, "at the end");
    }
}

/// The most steps one fuzz input runs.
pub const MAX_MVCC_STEPS: usize = 64;

/// Parses an [`mvcc_model`] input: steps, each a kind byte and its arguments.
pub fn decode_mvcc_input(data: &[u8]) -> Vec<MvccStep> {
    let mut b = Bytes(data);
    let mut steps = Vec::new();
    // Few keys, so that steps meet the same ones.
    let k = |b: &mut Bytes<'_>| b.u8() % 8;
    while !b.0.is_empty() && steps.len() < MAX_MVCC_STEPS {
        let step = match b.u8() % 8 {
            0 | 1 => MvccStep::Put(k(&mut b), b.u8()),
            2 => MvccStep::Delete(k(&mut b), k(&mut b)),
            3 => MvccStep::Txn(k(&mut b), (b.u8() % 3) as i64, b.u8()),
            4 => MvccStep::Bulk(b.u16() % (MAX_BULK + 1), b.u8()),
            5 => MvccStep::Compact(b.u8()),
            6 => MvccStep::Reopen,
            _ => MvccStep::ReadAt { pick: b.u8(), limit: b.u16() % 2048, keys_only: b.u8() % 2 == 1 },
        };
        steps.push(step);
    }
    steps
}

/// Fuzz target: arbitrary step sequences on the MVCC store against the history model.
pub fn mvcc_model(data: &[u8]) {
    run_mvcc_model(&decode_mvcc_input(data));
}
