//! Tests for the index: unit tests, snapshot (copy-on-write) tests checked
//! against `std::collections::BTreeMap`, a proptest over random operation
//! sequences, and an ignored release-mode benchmark.

use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;

use super::*;

type Model = BTreeMap<Vec<u8>, ValueRef>;

/// Small deterministic PRNG (splitmix64) so tests need no extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
    fn var_bytes(&mut self, min: usize, extra: usize) -> Vec<u8> {
        let n = min + self.below(extra);
        self.bytes(n)
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

fn vr(n: u64) -> ValueRef {
    ValueRef { seg: (n >> 32) as u32, off: n as u32, len: (n % 1000) as u32 }
}

/// Removes `k` from the tree and the model, or inserts it into both with `vr(step)`, and
/// checks that they answer alike.
fn remove_or_insert(t: &mut BTree, m: &mut Model, k: Vec<u8>, remove: bool, step: u64) {
    if remove {
        assert_eq!(t.remove(&k), m.remove(&k));
    } else {
        assert_eq!(t.insert(&k, vr(step)), m.insert(k, vr(step)));
    }
}

/// Every snapshot taken along the way is still a valid tree with the content it had then.
fn assert_snapshots(snaps: &[(BTree, Model)]) {
    for (s, sm) in snaps {
        s.check_invariants();
        assert_same(s, sm);
    }
}

fn assert_same(t: &BTree, m: &Model) {
    assert_eq!(t.len(), m.len());
    assert_eq!(t.is_empty(), m.is_empty());
    let mut it = t.iter();
    for (k, v) in m {
        let (tk, tv) = it.next().expect("tree iterator ended early");
        assert_eq!(tk, k.as_slice());
        assert_eq!(tv, *v);
    }
    assert!(it.next().is_none(), "tree iterator has extra items");
}

fn model_range(m: &Model, start: &[u8], end: Option<&[u8]>) -> Vec<(Vec<u8>, ValueRef)> {
    if let Some(e) = end
        && start >= e
    {
        return Vec::new();
    }
    let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
    m.range::<[u8], _>((Bound::Included(start), hi)).map(|(k, v)| (k.clone(), *v)).collect()
}

fn tree_range(t: &BTree, start: &[u8], end: Option<&[u8]>) -> Vec<(Vec<u8>, ValueRef)> {
    t.range(start, end).map(|(k, v)| (k.to_vec(), v)).collect()
}

fn root_ptr(t: &BTree) -> Option<*const Node> {
    t.root.as_deref().map(std::ptr::from_ref)
}

// ----------------------------------------------------------------- unit tests

#[test]
fn empty_tree() {
    let mut t = BTree::new();
    t.check_invariants();
    assert_eq!(t.len(), 0);
    assert!(t.is_empty());
    assert_eq!(t.get(b"a"), None);
    assert_eq!(t.iter().count(), 0);
    assert_eq!(t.range(b"", None).count(), 0);
    assert_eq!(t.range(b"a", Some(b"z")).count(), 0);
    assert_eq!(t.remove(b"a"), None);
    assert_eq!(t.heap_bytes(), 0);
    assert_eq!(format!("{t:?}"), "BTree { len: 0 }");
    t.check_invariants();
}

#[test]
fn single_key() {
    let mut t = BTree::new();
    assert_eq!(t.insert(b"k", vr(1)), None);
    t.check_invariants();
    assert_eq!(t.len(), 1);
    assert_eq!(t.get(b"k"), Some(vr(1)));
    assert_eq!(t.get(b"j"), None);
    assert_eq!(t.get(b"k\0"), None);
    assert_eq!(t.iter().collect::<Vec<_>>(), vec![(&b"k"[..], vr(1))]);
    assert!(t.heap_bytes() > 0);
    assert_eq!(t.remove(b"k"), Some(vr(1)));
    t.check_invariants();
    assert!(t.is_empty());
    assert!(t.root.is_none());
}

#[test]
fn empty_key_is_a_key() {
    let mut t = BTree::new();
    t.insert(b"b", vr(2));
    t.insert(b"", vr(1));
    t.check_invariants();
    assert_eq!(t.get(b""), Some(vr(1)));
    assert_eq!(t.iter().next(), Some((&b""[..], vr(1))));
    assert_eq!(t.remove(b""), Some(vr(1)));
    assert_eq!(t.get(b""), None);
}

#[test]
fn overwrite_returns_old() {
    let mut t = BTree::new();
    for i in 0..1000u64 {
        assert_eq!(t.insert(&i.to_be_bytes(), vr(i)), None);
    }
    for i in 0..1000u64 {
        assert_eq!(t.insert(&i.to_be_bytes(), vr(i + 7)), Some(vr(i)));
    }
    t.check_invariants();
    assert_eq!(t.len(), 1000);
    for i in 0..1000u64 {
        assert_eq!(t.get(&i.to_be_bytes()), Some(vr(i + 7)));
    }
}

#[test]
fn remove_missing_returns_none_and_does_not_unshare() {
    let mut t = BTree::new();
    for i in 0..5000u64 {
        t.insert(&(i * 2).to_be_bytes(), vr(i));
    }
    let snap = t.snapshot();
    assert_eq!(root_ptr(&snap), root_ptr(&t));
    for i in 0..5000u64 {
        assert_eq!(t.remove(&(i * 2 + 1).to_be_bytes()), None);
    }
    assert_eq!(t.remove(b""), None);
    assert_eq!(t.remove(&[0xff; 40]), None);
    // Misses must not have copied anything.
    assert_eq!(root_ptr(&snap), root_ptr(&t));
    assert_eq!(t.len(), 5000);
    t.check_invariants();
}

#[test]
fn range_bounds() {
    let mut t = BTree::new();
    let mut m = Model::new();
    // Keys 10, 20, ..., 9990 (big-endian u32) so gaps exist everywhere,
    // including between leaves.
    for i in 1..1000u32 {
        let k = (i * 10).to_be_bytes();
        t.insert(&k, vr(i.into()));
        m.insert(k.to_vec(), vr(i.into()));
    }
    t.check_invariants();
    let b = |x: u32| x.to_be_bytes();
    // start inclusive, end exclusive
    let r = tree_range(&t, &b(20), Some(&b(50)));
    assert_eq!(
        r.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![b(20).to_vec(), b(30).to_vec(), b(40).to_vec()]
    );
    // empty range and start > end
    assert!(tree_range(&t, &b(20), Some(&b(20))).is_empty());
    assert!(tree_range(&t, &b(50), Some(&b(20))).is_empty());
    assert!(tree_range(&t, &b(21), Some(&b(29))).is_empty());
    // start beyond last key
    assert!(tree_range(&t, &b(100_000), None).is_empty());
    assert!(tree_range(&t, &b(100_000), Some(&b(200_000))).is_empty());
    // end beyond last key / before first key
    assert_eq!(tree_range(&t, &b(9980), Some(&b(100_000))).len(), 2);
    assert!(tree_range(&t, &b(0), Some(&b(10))).is_empty());
    assert_eq!(tree_range(&t, b"", None).len(), 999);
    // Exhaustive against the model over a grid that hits keys and gaps.
    for s in (0..10_020u32).step_by(37) {
        for e in [s, s + 1, s + 5, s + 10, s + 640, s + 3000, 20_000] {
            assert_eq!(tree_range(&t, &b(s), Some(&b(e))), model_range(&m, &b(s), Some(&b(e))), "{s}..{e}");
        }
        assert_eq!(tree_range(&t, &b(s), None), model_range(&m, &b(s), None));
    }
    // Iterator is fused.
    let mut it = t.range(&b(20), Some(&b(30)));
    assert!(it.next().is_some());
    assert!(it.next().is_none());
    assert!(it.next().is_none());
}

#[test]
fn iteration_order_and_prefixes() {
    let mut t = BTree::new();
    let mut m = Model::new();
    let mut rng = Rng(7);
    // Many keys that are prefixes of each other exercise lexicographic
    // comparison and shortest separators.
    for _ in 0..20_000 {
        let len = rng.below(6);
        let k: Vec<u8> = (0..len).map(|_| b"ab\0\xff"[rng.below(4)]).collect();
        let v = vr(rng.next());
        assert_eq!(t.insert(&k, v), m.insert(k, v));
    }
    t.check_invariants();
    assert_same(&t, &m);
    let keys: Vec<&[u8]> = t.iter().map(|(k, _)| k).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn big_keys_force_byte_splits() {
    let mut t = BTree::new();
    let mut m = Model::new();
    let mut rng = Rng(11);
    // 20 KiB keys sharing long prefixes: nodes split on bytes with only one
    // or two entries, and separators are long.
    for i in 0..300u64 {
        let mut k = vec![b'x'; 20 * 1024];
        let tail = rng.next().to_be_bytes();
        let at = k.len() - 8 - rng.below(3) * 5000;
        k[at..at + 8].copy_from_slice(&tail);
        assert_eq!(t.insert(&k, vr(i)), m.insert(k, vr(i)));
        if i % 25 == 0 {
            t.check_invariants();
        }
    }
    t.check_invariants();
    assert_same(&t, &m);
    assert!(t.heap_bytes() >= m.keys().map(Vec::len).sum::<usize>());
    // Mixed sizes up to 32 KiB, then delete everything.
    for i in 0..400u64 {
        let len = [1, 30, 500, 5000, 17_000, 32 * 1024][rng.below(6)];
        let k = rng.bytes(len);
        assert_eq!(t.insert(&k, vr(i)), m.insert(k, vr(i)));
    }
    t.check_invariants();
    assert_same(&t, &m);
    let mut keys: Vec<Vec<u8>> = m.keys().cloned().collect();
    rng.shuffle(&mut keys);
    for (n, k) in keys.iter().enumerate() {
        assert_eq!(t.remove(k), m.remove(k));
        if n % 20 == 0 {
            t.check_invariants();
        }
    }
    t.check_invariants();
    assert!(t.is_empty());
    assert!(t.root.is_none());
}

#[test]
fn ascending_100k_fills_leaves() {
    let mut t = BTree::new();
    for i in 0..100_000u64 {
        assert_eq!(t.insert(&i.to_be_bytes(), vr(i)), None);
    }
    t.check_invariants();
    assert_eq!(t.len(), 100_000);
    for (n, (k, v)) in t.iter().enumerate() {
        assert_eq!(k, (n as u64).to_be_bytes());
        assert_eq!(v, vr(n as u64));
    }
    // Sequential loads must produce (nearly) full leaves.
    let mut leaves = 0usize;
    let mut stack = vec![t.root.as_deref().expect("root")];
    while let Some(n) = stack.pop() {
        match n {
            Node::Leaf(_) => leaves += 1,
            Node::Inner(i) => stack.extend(i.children.iter().map(|c| &**c)),
        }
    }
    assert!(leaves <= 100_000 / MAX_LEAF_ENTRIES + 2, "{leaves} leaves");
}

#[test]
fn descending_100k() {
    let mut t = BTree::new();
    for i in (0..100_000u64).rev() {
        assert_eq!(t.insert(&i.to_be_bytes(), vr(i)), None);
    }
    t.check_invariants();
    assert_eq!(t.len(), 100_000);
    assert!(
        t.iter().map(|(k, _)| k).eq((0..100_000u64)
            .map(|i| i.to_be_bytes())
            .collect::<Vec<_>>()
            .iter()
            .map(|k| &k[..]))
    );
}

#[test]
fn random_100k_then_delete_all() {
    let mut t = BTree::new();
    let mut m = Model::new();
    let mut rng = Rng(3);
    for i in 0..100_000u64 {
        let k = rng.var_bytes(4, 20);
        assert_eq!(t.insert(&k, vr(i)), m.insert(k, vr(i)));
    }
    t.check_invariants();
    assert_same(&t, &m);
    for k in m.keys() {
        assert!(t.get(k).is_some());
    }
    let mut keys: Vec<Vec<u8>> = m.keys().cloned().collect();
    rng.shuffle(&mut keys);
    for (n, k) in keys.iter().enumerate() {
        assert_eq!(t.remove(k), m.remove(k), "remove #{n}");
        assert_eq!(t.remove(k), None);
        if n % 10_000 == 0 {
            t.check_invariants();
            assert_same(&t, &m);
        }
    }
    t.check_invariants();
    assert!(t.is_empty());
    assert!(t.root.is_none());
    assert_eq!(t.heap_bytes(), 0);
}

#[test]
fn delete_ascending_and_descending() {
    for desc in [false, true] {
        let mut t = BTree::new();
        for i in 0..20_000u64 {
            t.insert(&i.to_be_bytes(), vr(i));
        }
        let order: Vec<u64> = if desc { (0..20_000).rev().collect() } else { (0..20_000).collect() };
        for (n, i) in order.into_iter().enumerate() {
            assert_eq!(t.remove(&i.to_be_bytes()), Some(vr(i)));
            if n % 997 == 0 {
                t.check_invariants();
            }
        }
        t.check_invariants();
        assert!(t.root.is_none());
    }
}

#[test]
fn memory_stays_near_target_after_deletes() {
    let mut t = BTree::new();
    let mut rng = Rng(5);
    let mut keys = Vec::new();
    for i in 0..50_000u64 {
        let k = rng.bytes(24);
        t.insert(&k, vr(i));
        keys.push(k);
    }
    rng.shuffle(&mut keys);
    for k in &keys[..40_000] {
        t.remove(k);
    }
    t.check_invariants();
    let per_key = t.heap_bytes() / t.len();
    assert!(per_key < 24 + 64, "{per_key} bytes/key after deletes");
}

/// Appends at the right edge grow a leaf's arrays by doubling (fewer reallocations); the split
/// of a full leaf trims it to size, so an ascending load takes no more memory than a random
/// one (its leaves are full where a random load's are about 70% so), and only the last leaf
/// may keep slack.
#[test]
fn ascending_inserts_leave_no_slack_behind() {
    let mut rng = Rng(11);
    let mut keys: Vec<Vec<u8>> = (0..60_000).map(|_| rng.bytes(24)).collect();
    let mut random = BTree::new();
    for (i, k) in keys.iter().enumerate() {
        random.insert(k, vr(i as u64));
    }
    keys.sort();
    let mut ascending = BTree::new();
    for (i, k) in keys.iter().enumerate() {
        ascending.insert(k, vr(i as u64));
    }
    ascending.check_invariants();
    assert_eq!(ascending.iter().map(|(k, _)| k.to_vec()).collect::<Vec<_>>(), keys);
    let (a, r) = (ascending.heap_bytes() / keys.len(), random.heap_bytes() / keys.len());
    assert!(a <= r, "ascending load: {a} bytes/key, random load: {r}");
    assert!(a < 24 + 40, "ascending load: {a} bytes/key");
}

#[test]
fn tree_is_send_sync_and_clone_is_shallow() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<BTree>();
    let mut t = BTree::new();
    for i in 0..10_000u64 {
        t.insert(&i.to_be_bytes(), vr(i));
    }
    let c = t.snapshot();
    assert_eq!(root_ptr(&c), root_ptr(&t));
    assert_eq!(format!("{c:?}"), "BTree { len: 10000 }");
}

// ------------------------------------------------------------ snapshot tests

#[test]
fn snapshots_are_frozen_random_workload() {
    let mut rng = Rng(42);
    let mut t = BTree::new();
    let mut m = Model::new();
    let mut snaps: Vec<(BTree, Model)> = Vec::new();
    for step in 0..60_000u64 {
        let k = rng.var_bytes(1, 3); // ~16M keyspace but skewed short
        let k = if rng.below(2) == 0 { k[..1].to_vec() } else { k };
        remove_or_insert(&mut t, &mut m, k, rng.below(3) == 0, step);
        if step % 1500 == 0 {
            snaps.push((t.snapshot(), m.clone()));
        }
        if step % 7919 == 0 {
            t.check_invariants();
        }
    }
    t.check_invariants();
    assert_same(&t, &m);
    assert_snapshots(&snaps);
}

/// With the writer's buffer pool lent (as inside a `BatchTx`), snapshots dropped along the
/// way give their nodes' buffers to the pool and later copies reuse them: every snapshot still
/// held reads as when it was taken, and the tree as the model.
#[test]
fn snapshots_are_frozen_while_copies_reuse_pooled_buffers() {
    assert!(super::pool::lend(Box::default()).is_none());
    let mut rng = Rng(7);
    let mut t = BTree::new();
    let mut m = Model::new();
    let mut snaps: Vec<(BTree, Model)> = Vec::new();
    for step in 0..40_000u64 {
        // 5,000 keys of 4 to 40 bytes, so that removes hit and nodes of many sizes are copied.
        let i = rng.below(5000);
        let k = format!("{i:0w$}", w = 4 + i % 37).into_bytes();
        remove_or_insert(&mut t, &mut m, k, rng.below(4) == 0, step);
        if step % 500 == 0 {
            snaps.push((t.snapshot(), m.clone()));
            if snaps.len() > 4 {
                snaps.remove(rng.below(4));
                assert_snapshots(&snaps);
            }
        }
    }
    t.check_invariants();
    assert_same(&t, &m);
    assert_snapshots(&snaps);
    let pool = super::pool::reclaim().expect("still lent");
    drop(snaps);
    drop(t);
    assert!(pool.bytes() > 0, "the dropped snapshots' buffers went to the pool");
}

#[test]
fn snapshot_survives_delete_everything_and_rebuild() {
    let mut rng = Rng(9);
    let mut t = BTree::new();
    let mut m = Model::new();
    for i in 0..30_000u64 {
        let k = rng.var_bytes(8, 30);
        t.insert(&k, vr(i));
        m.insert(k, vr(i));
    }
    let snap = t.snapshot();
    let snap_m = m.clone();
    let mut keys: Vec<Vec<u8>> = m.keys().cloned().collect();
    rng.shuffle(&mut keys);
    let mut snaps = Vec::new();
    for (n, k) in keys.iter().enumerate() {
        assert_eq!(t.remove(k), m.remove(k));
        if n % 3000 == 0 {
            snaps.push((t.snapshot(), m.clone()));
        }
    }
    assert!(t.is_empty());
    for i in 0..10_000u64 {
        let k = rng.bytes(8);
        t.insert(&k, vr(i));
        m.insert(k, vr(i));
    }
    t.check_invariants();
    assert_same(&t, &m);
    snap.check_invariants();
    assert_same(&snap, &snap_m);
    assert_snapshots(&snaps);
}

#[test]
fn writes_to_a_snapshot_do_not_leak_into_the_original() {
    let mut t = BTree::new();
    let mut m = Model::new();
    for i in 0..20_000u64 {
        t.insert(&(i * 3).to_be_bytes(), vr(i));
        m.insert((i * 3).to_be_bytes().to_vec(), vr(i));
    }
    let mut s = t.snapshot();
    let mut sm = m.clone();
    let mut rng = Rng(1);
    for i in 0..30_000u64 {
        let k = (rng.below(70_000) as u64).to_be_bytes();
        if i % 2 == 0 {
            assert_eq!(s.insert(&k, vr(i)), sm.insert(k.to_vec(), vr(i)));
        } else {
            assert_eq!(s.remove(&k), sm.remove(&k[..]));
        }
        // Interleave writes to the original as well.
        let k2 = (rng.below(70_000) as u64).to_be_bytes();
        if i % 3 == 0 {
            assert_eq!(t.remove(&k2), m.remove(&k2[..]));
        } else {
            assert_eq!(t.insert(&k2, vr(i)), m.insert(k2.to_vec(), vr(i)));
        }
    }
    t.check_invariants();
    s.check_invariants();
    assert_same(&t, &m);
    assert_same(&s, &sm);
}

#[test]
fn snapshots_with_big_keys() {
    let mut rng = Rng(77);
    let mut t = BTree::new();
    let mut m = Model::new();
    let mut snaps = Vec::new();
    for step in 0..1500u64 {
        let len = [1, 2, 40, 3000, 9000, 20_000][rng.below(6)];
        let mut k = vec![b'q'; len];
        let last = k.len() - 1;
        k[last] = rng.below(40) as u8;
        remove_or_insert(&mut t, &mut m, k, rng.below(3) == 0, step);
        if step % 100 == 0 {
            t.check_invariants();
            snaps.push((t.snapshot(), m.clone()));
        }
    }
    assert_snapshots(&snaps);
}

#[test]
fn big_key_churn_with_long_separators() {
    // Keys share long prefixes, so separators are long and inner nodes hit
    // the byte limit; a heavy insert/remove mix then exercises multi-piece
    // splits, redistribution that lengthens a separator (splitting a parent
    // during a remove), and merges at every level.
    let mut rng = Rng(2024);
    let mut t = BTree::new();
    let mut m = Model::new();
    let mut snaps = Vec::new();
    for step in 0..12_000u64 {
        let pad = [0usize, 50, 3000, 5000, 7000, 11_000][rng.below(6)];
        let mut k = vec![b'p'; pad];
        k.push(rng.below(24) as u8);
        if rng.below(2) == 0 {
            k.push(rng.below(8) as u8);
        }
        let grow_phase = (step / 2000) % 2 == 0;
        let insert = rng.below(10) < if grow_phase { 7 } else { 3 };
        remove_or_insert(&mut t, &mut m, k, !insert, step);
        if step % 97 == 0 {
            t.check_invariants();
            assert_eq!(t.len(), m.len());
        }
        if step % 1000 == 0 {
            snaps.push((t.snapshot(), m.clone()));
        }
    }
    t.check_invariants();
    assert_same(&t, &m);
    assert_snapshots(&snaps);
}

#[test]
fn remove_splits_parent_when_redistribution_lengthens_a_separator() {
    // Build: an inner node P whose separators total just under the byte
    // limit, where P's first separator is 1 byte long. Deleting from the
    // first leaf makes it underfull; it cannot merge with its 16 KB
    // neighbour, so the two are redistributed and the new boundary needs a
    // 4002-byte separator. P then exceeds the byte limit in the middle of a
    // remove and must split, passing a piece up to the root.
    let small = |i: u8| {
        let mut k = vec![0x10, i];
        k.resize(1000, b's');
        k
    };
    let big = |i: u8| {
        let mut k = vec![0x20];
        k.resize(4001, b'q');
        k.push(i);
        k
    };
    let tail = |i: u32| {
        let mut k = vec![0x30];
        k.extend_from_slice(&i.to_be_bytes());
        k
    };
    let mut t = BTree::new();
    let mut m = Model::new();
    let mut put = |t: &mut BTree, k: Vec<u8>| {
        let v = vr(m.len() as u64);
        assert_eq!(t.insert(&k, v), m.insert(k, v));
    };
    for i in 0..16 {
        put(&mut t, small(i));
    }
    for i in 0..20 {
        put(&mut t, big(i));
    }
    for i in 0..4000 {
        put(&mut t, tail(i));
    }
    t.check_invariants();
    assert_same(&t, &m);
    let height = |t: &BTree| {
        let mut h = 0;
        let mut n = t.root.as_deref();
        while let Some(Node::Inner(i)) = n {
            h += 1;
            n = Some(&i.children[0]);
        }
        h
    };
    assert_eq!(height(&t), 2);
    let root_children = |t: &BTree| match t.root.as_deref() {
        Some(Node::Inner(i)) => i.children.len(),
        _ => 0,
    };
    let before = root_children(&t);
    let snap = (t.snapshot(), m.clone());
    for i in 0..13 {
        assert_eq!(t.remove(&small(i)), m.remove(&small(i)));
        t.check_invariants();
    }
    assert!(root_children(&t) > before, "the parent should have split during a remove");
    assert_same(&t, &m);
    assert_same(&snap.0, &snap.1);
    // And drain everything.
    let keys: Vec<Vec<u8>> = m.keys().cloned().collect();
    for (n, k) in keys.iter().enumerate() {
        assert_eq!(t.remove(k), m.remove(k));
        if n % 50 == 0 {
            t.check_invariants();
        }
    }
    assert!(t.root.is_none());
    snap.0.check_invariants();
    assert_same(&snap.0, &snap.1);
}

// ----------------------------------------------------------------- proptest

#[derive(Debug, Clone)]
enum Op {
    Insert(Vec<u8>, u32),
    Remove(Vec<u8>),
    Get(Vec<u8>),
    Range(Vec<u8>, Option<Vec<u8>>),
    Snapshot,
    /// Check and drop the snapshot with this index (modulo count).
    DropSnapshot(usize),
}

fn op_strategy(key: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
        3 => key.clone().prop_map(Op::Remove),
        1 => key.clone().prop_map(Op::Get),
        1 => (key.clone(), prop::option::of(key)).prop_map(|(s, e)| Op::Range(s, e)),
        1 => Just(Op::Snapshot),
        1 => any::<usize>().prop_map(Op::DropSnapshot),
    ]
}

/// Short keys over a 3-letter alphabet: ~1100 distinct keys, many of them
/// prefixes of each other, so inserts collide and removes hit.
fn small_key() -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, b'a', 0xff]), 0..7).boxed()
}

/// Keys with long shared prefixes and sizes up to 9 KiB: few keys fill a
/// node by bytes, so even short runs build multi-level trees with long
/// separators and byte-based splits and merges.
fn big_key() -> BoxedStrategy<Vec<u8>> {
    (prop::sample::select(vec![0usize, 1, 100, 2000, 5000, 9000]), 0u8..12, 0u8..4)
        .prop_map(|(pad, a, b)| {
            let mut k = vec![b'p'; pad];
            k.push(a);
            if b > 0 {
                k.push(b);
            }
            k
        })
        .boxed()
}

fn run_ops(ops: &[Op]) {
    let mut t = BTree::new();
    let mut m = Model::new();
    let mut snaps: Vec<(BTree, Model)> = Vec::new();
    for op in ops {
        match op {
            Op::Insert(k, v) => {
                let v = vr(u64::from(*v));
                assert_eq!(t.insert(k, v), m.insert(k.clone(), v));
            }
            Op::Remove(k) => assert_eq!(t.remove(k), m.remove(k)),
            Op::Get(k) => assert_eq!(t.get(k), m.get(k).copied()),
            Op::Range(s, e) => {
                assert_eq!(tree_range(&t, s, e.as_deref()), model_range(&m, s, e.as_deref()));
            }
            Op::Snapshot => snaps.push((t.snapshot(), m.clone())),
            Op::DropSnapshot(i) => {
                if !snaps.is_empty() {
                    let (s, sm) = snaps.swap_remove(i % snaps.len());
                    s.check_invariants();
                    assert_same(&s, &sm);
                }
            }
        }
        t.check_invariants();
        assert_eq!(t.len(), m.len());
    }
    assert_same(&t, &m);
    assert_snapshots(&snaps);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn prop_small_keys_match_btreemap(ops in prop::collection::vec(op_strategy(small_key()), 1..600)) {
        run_ops(&ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn prop_big_keys_match_btreemap(ops in prop::collection::vec(op_strategy(big_key()), 1..300)) {
        run_ops(&ops);
    }
}

// --------------------------------------------------------------- bulk build

/// A tree built from sorted entries (`BTree::from_sorted`, what recovery uses) is a valid tree
/// with exactly those entries, for sizes around every fill boundary and keys from empty to
/// 1 KiB (the byte limit closes nodes early); later inserts, removes and snapshots work on it
/// as on any tree.
#[test]
fn built_trees_are_valid_and_stay_so_under_changes() {
    let mut rng = Rng(77);
    let sizes = [0usize, 1, 2, 63, 64, 65, 127, 128, 129, 64 * 64, 64 * 64 + 1, 64 * 64 * 2 + 3, 50_000];
    for &n in &sizes {
        for key_len in [0usize, 8, 24, 300, 1024] {
            let mut m = Model::new();
            while m.len() < n {
                // Lengths vary up to `key_len`, so that the byte limit and the count limit
                // alternate in closing nodes.
                let len = if key_len == 0 { 0 } else { 1 + rng.below(key_len) };
                let k = rng.var_bytes(len.min(8), len.saturating_sub(7).max(1));
                m.insert(k, vr(m.len() as u64));
                if key_len == 0 {
                    break;
                }
            }
            let entries: Vec<(&[u8], ValueRef)> = m.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
            let mut t = BTree::from_sorted(&entries).expect("keys of at most 1 KiB");
            t.check_invariants();
            assert_same(&t, &m);
            for (k, v) in m.iter().take(200) {
                assert_eq!(t.get(k), Some(*v));
            }
            let snap = t.snapshot();
            let snap_model = m.clone();
            for step in 0..300u64 {
                let k = if rng.below(2) == 0 && !m.is_empty() {
                    m.keys().nth(rng.below(m.len())).unwrap().clone()
                } else {
                    rng.var_bytes(1, 40)
                };
                remove_or_insert(&mut t, &mut m, k, rng.below(3) == 0, step);
            }
            t.check_invariants();
            assert_same(&t, &m);
            assert_snapshots(&[(snap, snap_model)]);
        }
    }
}

/// From `BUILD_SPLIT_FROM` entries on, the two halves' leaves are built on two threads and
/// joined: the tree is valid and exact whichever way the halves' leaves end at the join (a full
/// leaf, a leaf of one, a node closed by the byte limit).
#[test]
fn trees_built_in_two_halves_are_valid() {
    let mut rng = Rng(78);
    let split = crate::index::BUILD_SPLIT_FROM;
    // With 8-byte keys leaves close at 64 entries: the first half's last leaf is full, has
    // one entry, or has 31 (the halves of these sizes are 32,768, 32,769 and 65,567).
    for n in [split, split + 2, 2 * split + 63] {
        for key_len in [8usize, 300] {
            let mut m = Model::new();
            while m.len() < n {
                let len = 1 + rng.below(key_len);
                m.insert(rng.var_bytes(len.min(8), len.saturating_sub(7).max(1)), vr(m.len() as u64));
            }
            let entries: Vec<(&[u8], ValueRef)> = m.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
            let mut t = BTree::from_sorted(&entries).expect("keys of at most 1 KiB");
            t.check_invariants();
            assert_same(&t, &m);
            for step in 0..300u64 {
                let k = m.keys().nth(rng.below(m.len())).unwrap().clone();
                remove_or_insert(&mut t, &mut m, k, rng.below(2) == 0, step);
            }
            t.check_invariants();
            assert_same(&t, &m);
        }
    }
}

#[test]
fn building_declines_keys_over_1_kib() {
    let long = vec![7u8; 1025];
    let entries: Vec<(&[u8], ValueRef)> = vec![(b"a", vr(1)), (long.as_slice(), vr(2))];
    assert!(BTree::from_sorted(&entries).is_none());
}

// --------------------------------------------------------------- benchmark

/// Release-mode numbers: `cargo test --release -- --ignored --nocapture bench`.
#[test]
#[ignore]
fn bench_1m_24_byte_keys() {
    use std::hint::black_box;
    use std::time::Instant;

    const N: usize = 1_000_000;
    let mut rng = Rng(12345);
    let keys: Vec<[u8; 24]> = (0..N)
        .map(|_| {
            let mut k = [0u8; 24];
            for c in k.chunks_mut(8) {
                c.copy_from_slice(&rng.next().to_le_bytes());
            }
            k
        })
        .collect();
    let probes: Vec<usize> = (0..N).map(|_| rng.below(N)).collect();

    let t0 = Instant::now();
    let mut t = BTree::new();
    for (i, k) in keys.iter().enumerate() {
        t.insert(k, vr(i as u64));
    }
    let ins = t0.elapsed();

    let t0 = Instant::now();
    let mut m: BTreeMap<Vec<u8>, ValueRef> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        m.insert(k.to_vec(), vr(i as u64));
    }
    let ins_std = t0.elapsed();

    let mut results = Vec::new();
    for round in 0..3 {
        let t0 = Instant::now();
        let mut acc = 0u64;
        for &p in &probes {
            acc += u64::from(black_box(&t).get(&keys[p]).map_or(0, |v| v.off));
        }
        black_box(acc);
        let get = t0.elapsed();

        let t0 = Instant::now();
        let mut acc = 0u64;
        for &p in &probes {
            acc += u64::from(black_box(&m).get(&keys[p][..]).map_or(0, |v| v.off));
        }
        black_box(acc);
        let get_std = t0.elapsed();
        results.push((round, get, get_std));
    }

    let t0 = Instant::now();
    let mut acc = 0usize;
    for (k, v) in black_box(&t).iter() {
        acc += k.len() + v.len as usize;
    }
    black_box(acc);
    let iter = t0.elapsed();

    let t0 = Instant::now();
    let mut acc = 0usize;
    for (k, v) in black_box(&m).iter() {
        acc += k.len() + v.len as usize;
    }
    black_box(acc);
    let iter_std = t0.elapsed();

    println!("random insert 1M: BTree {:?}, std BTreeMap {:?}", ins, ins_std);
    for (round, get, get_std) in results {
        println!(
            "round {round}: get: BTree {:.0} ns/get, std BTreeMap {:.0} ns/get",
            get.as_nanos() as f64 / N as f64,
            get_std.as_nanos() as f64 / N as f64
        );
    }
    println!("full iteration: BTree {:?}, std BTreeMap {:?}", iter, iter_std);
    println!("random keys: heap_bytes/len = {:.1}", t.heap_bytes() as f64 / t.len() as f64);

    // Snapshot-heavy write cost: clone before every 1000 inserts.
    let t0 = Instant::now();
    let mut t2 = t.snapshot();
    let mut snaps = Vec::new();
    for (i, k) in keys.iter().take(100_000).enumerate() {
        if i % 1000 == 0 {
            snaps.push(t2.snapshot());
        }
        t2.insert(&k[..12], vr(i as u64));
    }
    println!("100k inserts with a snapshot every 1000: {:?}", t0.elapsed());
    drop(snaps);

    let t0 = Instant::now();
    for k in &keys {
        t.remove(k);
    }
    println!("remove all 1M (random order of insertion): {:?}", t0.elapsed());

    let t0 = Instant::now();
    let mut a = BTree::new();
    for i in 0..N as u64 {
        let mut k = [0u8; 24];
        k[16..].copy_from_slice(&i.to_be_bytes());
        a.insert(&k, vr(i));
    }
    println!("ascending insert 1M: {:?}", t0.elapsed());
    println!("ascending keys: heap_bytes/len = {:.1}", a.heap_bytes() as f64 / a.len() as f64);
    drop(a);

    let t0 = Instant::now();
    let mut d = BTree::new();
    for i in (0..N as u64).rev() {
        let mut k = [0u8; 24];
        k[16..].copy_from_slice(&i.to_be_bytes());
        d.insert(&k, vr(i));
    }
    println!("descending insert 1M: {:?}", t0.elapsed());
    println!("descending keys: heap_bytes/len = {:.1}", d.heap_bytes() as f64 / d.len() as f64);
}

/// `peek_value(n)` is the value `n` entries on, or nothing; never another entry's. It sees into
/// the next leaf of the same parent, so only where one parent's leaves end does a look ahead
/// come back empty: a scan's prefetch then reaches the first values of each next leaf too.
#[test]
fn peek_value_looks_into_the_next_leaf() {
    let mut t = BTree::new();
    let mut rng = Rng(7);
    let mut keys: Vec<Vec<u8>> = (0..100_000u64).map(|i| [rng.bytes(8), i.to_be_bytes().to_vec()].concat()).collect();
    for (i, k) in keys.iter().enumerate() {
        t.insert(k, vr(i as u64));
    }
    keys.sort();
    let expect: Vec<ValueRef> = keys.iter().map(|k| t.get(k).unwrap()).collect();
    const AHEAD: usize = 12;
    let (mut asked, mut empty) = (0usize, 0usize);
    let mut it = t.iter();
    for pos in 0..expect.len() {
        for n in 0..AHEAD {
            match it.peek_value(n) {
                Some(v) => assert_eq!(Some(&v), expect.get(pos + n), "{n} on from entry {pos}"),
                None if pos + n < expect.len() => empty += 1,
                None => {}
            }
            asked += usize::from(pos + n < expect.len());
        }
        assert_eq!(it.next().map(|(_, v)| v), Some(expect[pos]));
    }
    assert!(it.next().is_none());
    // Within one leaf only, about AHEAD / 2 of every leaf's 32–64 entries' looks would be
    // empty (over a tenth); across a parent's leaves, a few per thousand.
    assert!(empty * 100 < asked, "{empty} of {asked} looks ahead found nothing");
}

// ------------------------------------------------------------ node ownership (mod.rs, "Ownership")

/// Nodes reachable from `t`.
fn node_count(t: &BTree) -> i64 {
    fn count(n: &Node) -> i64 {
        match n {
            Node::Leaf(_) => 1,
            Node::Inner(i) => 1 + i.children.iter().map(|c| count(c)).sum::<i64>(),
        }
    }
    t.root.as_deref().map_or(0, count)
}

/// Snapshots dropped in every order, forks, abandoned change sets: the nodes made on this
/// thread are freed once no tree reaches them, and only then (the trees stay readable until
/// dropped, which the checks against the model would show if a node were freed early).
#[test]
fn every_node_is_freed_once_nobody_reaches_it() {
    let before = node::live::count();
    let mut rng = Rng(5);
    let mut t = BTree::new();
    let mut m = Model::new();
    let mut snaps: Vec<(BTree, Model)> = Vec::new();
    for round in 0..40u64 {
        for step in 0..400 {
            let k = rng.bytes(2);
            remove_or_insert(&mut t, &mut m, k, rng.below(4) == 0, round * 1000 + step);
        }
        match rng.below(5) {
            // A change set abandoned: a clone of the last snapshot replaces the tree.
            0 if !snaps.is_empty() => {
                let (s, sm) = &snaps[snaps.len() - 1];
                t = s.clone();
                m = sm.clone();
            }
            // A fork: a snapshot changes too (it takes over the lineage or copies).
            1 if !snaps.is_empty() => {
                let i = rng.below(snaps.len());
                let (s, sm) = &mut snaps[i];
                for step in 0..50 {
                    let k = rng.bytes(2);
                    remove_or_insert(s, sm, k, rng.below(2) == 0, step);
                }
            }
            _ => snaps.push((t.snapshot(), m.clone())),
        }
        // Drop a random snapshot now and then: oldest, newest or in between.
        if snaps.len() > 4 {
            snaps.remove(rng.below(snaps.len()));
        }
        assert_snapshots(&snaps);
        assert_same(&t, &m);
    }
    drop(snaps);
    // With every snapshot gone, what is left allocated is the tree itself: retired nodes of
    // versions nobody reads are freed, not kept until the tree goes.
    assert_eq!(node::live::count() - before, node_count(&t));
    t.check_invariants();
    drop(t);
    assert_eq!(node::live::count(), before, "nodes leaked");
}

/// A change set copies each shared node once, whatever number of writes go through it: the
/// first insert after a snapshot copies the path, the next ones into the same leaf copy nothing.
#[test]
fn a_change_set_copies_each_shared_node_once() {
    let mut t = BTree::new();
    for i in 0..10_000u64 {
        t.insert(&(i * 2).to_be_bytes(), vr(i));
    }
    let snap = t.snapshot();
    let depth = {
        let mut d = 0;
        let mut n: &Node = t.root.as_deref().unwrap();
        while let Node::Inner(i) = n {
            d += 1;
            n = &i.children[0];
        }
        d + 1
    };
    let before = node::live::count();
    // Overwrites and a delete in the first (full) leaf, so that nothing splits or merges.
    t.insert(&0u64.to_be_bytes(), vr(1));
    assert_eq!(node::live::count() - before, depth, "the first write copies its path");
    t.insert(&4u64.to_be_bytes(), vr(3));
    t.insert(&2u64.to_be_bytes(), vr(4));
    t.remove(&6u64.to_be_bytes());
    assert_eq!(node::live::count() - before, depth, "later writes on that path change the copies");
    // Published and the snapshot dropped: the old path is freed.
    let _published = t.snapshot();
    drop(snap);
    assert_eq!(node::live::count() - before, 0);
    assert_eq!(t.get(&2u64.to_be_bytes()), Some(vr(4)));
}

/// Dropping a tree whose change set was never published frees that change set's nodes and
/// leaves the published version whole, and the next tree built on it takes over the lineage.
#[test]
fn an_abandoned_change_set_frees_its_nodes_and_keeps_the_version() {
    let mut t = BTree::new();
    for i in 0..5_000u64 {
        t.insert(&i.to_be_bytes(), vr(i));
    }
    let published = t.snapshot();
    let before = node::live::count();
    for i in 0..5_000u64 {
        t.insert(&(i * 7).to_be_bytes(), vr(i + 1));
    }
    drop(t);
    assert_eq!(node::live::count(), before, "the change set's nodes are freed");
    for i in 0..5_000u64 {
        assert_eq!(published.get(&i.to_be_bytes()), Some(vr(i)));
    }
    let mut next = published.clone();
    let base = root_ptr(&next);
    next.insert(&1u64.to_be_bytes(), vr(9));
    next.snapshot();
    // Built on the version, not a deep copy: the leaves it did not change are shared.
    assert_ne!(root_ptr(&next), base);
    let shared = |a: &BTree, b: &BTree| match (a.root.as_deref(), b.root.as_deref()) {
        (Some(Node::Inner(x)), Some(Node::Inner(y))) => std::ptr::eq(&*x.children[1], &*y.children[1]),
        _ => false,
    };
    assert!(shared(&next, &published), "the unchanged subtree is shared");
    // A second tree changing the same version gets a copy of its own.
    let mut fork = published.clone();
    fork.insert(&2u64.to_be_bytes(), vr(10));
    assert!(!shared(&fork, &published), "a fork copies");
    assert_eq!(next.get(&2u64.to_be_bytes()), Some(vr(2)));
    assert_eq!(fork.get(&1u64.to_be_bytes()), Some(vr(1)));
    fork.check_invariants();
    next.check_invariants();
}

/// A snapshot held while the writer goes on keeps its own tree allocated, not every node the
/// writer copies and lets go of after it (found by review: with each version holding the next,
/// one old reader kept all later garbage; 30,000 one-put commits under a held `ReadTx` grew the
/// process by 143 MiB).
#[test]
fn an_old_snapshot_keeps_only_its_own_tree() {
    let base = node::live::count();
    let mut t = BTree::new();
    for i in 0..10_000u64 {
        t.insert(&i.to_be_bytes(), vr(i));
    }
    let old = t.snapshot();
    let mut middle = None;
    for r in 0..2_000u64 {
        t.insert(&((r * 7919) % 10_000).to_be_bytes(), vr(r + 1));
        let s = t.snapshot();
        if r == 1_000 {
            // A second reader in between: what it reaches stays too, the rest goes.
            middle = Some(s);
        }
    }
    let middle = middle.unwrap();
    let live = node::live::count() - base;
    let bound = node_count(&t) + node_count(&old) + node_count(&middle);
    assert!(live <= bound, "{live} nodes kept by two snapshots and the tree, which reach {bound}");
    drop(middle);
    let live = node::live::count() - base;
    assert!(live <= node_count(&t) + node_count(&old), "{live} nodes kept");
    for i in 0..10_000u64 {
        assert_eq!(old.get(&i.to_be_bytes()), Some(vr(i)), "the old snapshot is intact");
    }
    drop(old);
    assert_eq!(node::live::count() - base, node_count(&t));
}

/// Copies of trees with keys too long for the bottom-up build: a clone with unpublished
/// changes, and a second tree changing a claimed version (found by review: both panicked).
#[test]
fn deep_copies_of_long_keys() {
    let keys: Vec<Vec<u8>> = (0..40u8)
        .map(|i| {
            let mut k = vec![b'p'; 20_000];
            k[19_500] = i;
            k
        })
        .collect();
    let mut t = BTree::new();
    for (i, k) in keys.iter().enumerate() {
        t.insert(k, vr(i as u64));
    }
    let c = t.clone();
    c.check_invariants();
    assert_eq!(c.len(), keys.len());
    let mut s = t.snapshot();
    t.insert(b"x", vr(1));
    s.insert(b"y", vr(2));
    s.check_invariants();
    t.check_invariants();
    assert_eq!(s.get(b"x"), None);
    assert_eq!(t.get(b"y"), None);
    assert_eq!(s.len(), keys.len() + 1);
}

// ------------------------------------------------- lineage review: exact accounting, threads

/// Distinct nodes reachable from `trees` and from the versions they hold (a tree with an
/// unpublished change set still holds its base version, whose tree includes what the change
/// set retired): exactly what must be allocated.
fn reachable(trees: &[&BTree]) -> i64 {
    fn walk(n: &Node, seen: &mut std::collections::HashSet<*const Node>) {
        if !seen.insert(std::ptr::from_ref(n)) {
            return;
        }
        if let Node::Inner(i) = n {
            for c in &i.children {
                walk(c, seen);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for t in trees {
        if let Some(r) = t.root.as_deref() {
            walk(r, &mut seen);
        }
        if let Some(r) = t.base.as_ref().and_then(|b| b.root.as_deref()) {
            walk(r, &mut seen);
        }
    }
    seen.len() as i64
}

/// A key: mostly short (many collisions, so removes hit), some medium, a few long enough for
/// byte-based splits and to make the bottom-up build and deep copy decline (> 1 KiB).
fn review_key(rng: &mut Rng) -> Vec<u8> {
    match rng.below(100) {
        0..=69 => vec![b'a' + rng.below(20) as u8, rng.below(40) as u8],
        70..=97 => {
            let mut k = vec![b'm'; 8 + rng.below(24)];
            let n = k.len();
            k[n - 1] = rng.below(200) as u8;
            k
        }
        _ => {
            let mut k = vec![b'z'; 1500 + rng.below(5000)];
            k[1499] = rng.below(8) as u8;
            k
        }
    }
}

fn review_ops(rng: &mut Rng, t: &mut BTree, m: &mut Model, n: usize, step: &mut u64) {
    let remove_share = [2, 4, 8][rng.below(3)];
    for _ in 0..n {
        *step += 1;
        let k = review_key(rng);
        match rng.below(10) {
            // `remove_expected` of a key maybe absent: copies the path for nothing.
            0 => assert_eq!(t.remove_expected(&k), m.remove(&k)),
            x if x < remove_share => assert_eq!(t.remove(&k), m.remove(&k)),
            _ => assert_eq!(t.insert(&k, vr(*step)), m.insert(k, vr(*step))),
        }
    }
}

/// A tree of `m` built as defrag and recovery do: bottom up, or by inserts if a key is too long.
fn review_rebuild(m: &Model) -> BTree {
    let entries: Vec<(&[u8], ValueRef)> = m.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
    BTree::from_sorted(&entries).unwrap_or_else(|| {
        let mut t = BTree::new();
        for (k, v) in m {
            t.insert(k, *v);
        }
        t
    })
}

/// Every step of a random life of a lineage — publishes, snapshots held and dropped in any
/// order, rollbacks, the writer restarting from an old snapshot (claim taken or refused),
/// forks that publish, deep copies, bucket delete and re-create, rebuilds, emptying — keeps
/// allocated exactly the nodes some live tree or held version reaches: nothing freed early
/// (the model checks and ASan would show it), nothing kept late.
#[test]
fn lineage_keeps_exactly_what_live_trees_reach() {
    let rounds: u64 = std::env::var("LOGTREE_LINEAGE_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    for seed in 1..=3u64 {
        let base = node::live::count();
        let mut rng = Rng(seed * 7777);
        let mut step = 0u64;
        let mut t = BTree::new();
        let mut m = Model::new();
        // The engine's published view of the bucket.
        let mut view: (BTree, Model) = (t.snapshot(), m.clone());
        let mut snaps: Vec<(BTree, Model)> = Vec::new();
        for round in 0..rounds {
            let n = [1, 5, 40, 300][rng.below(4)];
            review_ops(&mut rng, &mut t, &mut m, n, &mut step);
            match rng.below(16) {
                // Commit: publish, readers take the view.
                0..=5 => {
                    view = (t.snapshot(), m.clone());
                    for _ in 0..rng.below(3) {
                        snaps.push((view.0.clone(), view.1.clone()));
                    }
                }
                // Rollback: the working tree replaced by a clone of the view.
                6 | 7 => {
                    t = view.0.clone();
                    m = view.1.clone();
                }
                // The writer restarts from a held snapshot (claims it if nobody did, else copies).
                8 if !snaps.is_empty() => {
                    let (s, sm) = &snaps[rng.below(snaps.len())];
                    t = s.clone();
                    m = sm.clone();
                }
                // A snapshot changes and publishes (takes over its version or copies).
                9 if !snaps.is_empty() => {
                    let i = rng.below(snaps.len());
                    let (s, sm) = &mut snaps[i];
                    let k = 1 + rng.below(60);
                    review_ops(&mut rng, s, sm, k, &mut step);
                    if rng.below(2) == 0 {
                        let p = (s.snapshot(), sm.clone());
                        snaps.push(p);
                    }
                }
                // A clone of a tree with unpublished changes (a deep copy), held.
                10 => snaps.push((t.clone(), m.clone())),
                // Bucket deleted (and re-created empty): working tree and view go.
                11 => {
                    t = BTree::new();
                    m = Model::new();
                    view = (t.snapshot(), m.clone());
                }
                // Defrag: a new tree of the same entries swapped in.
                12 => {
                    t = review_rebuild(&m);
                    view = (t.snapshot(), m.clone());
                }
                // Emptying: most keys removed (merges, root collapse).
                13 => {
                    let keys: Vec<Vec<u8>> = m.keys().cloned().collect();
                    for k in keys {
                        if rng.below(10) != 0 {
                            assert_eq!(t.remove(&k), m.remove(&k));
                        }
                    }
                }
                _ => {}
            }
            // Snapshots let go of in random order, several at a time now and then.
            let drops = if snaps.len() > 8 { 1 + rng.below(4) } else { rng.below(2) };
            for _ in 0..drops.min(snaps.len()) {
                snaps.remove(rng.below(snaps.len()));
            }
            let mut trees: Vec<&BTree> = vec![&t, &view.0];
            trees.extend(snaps.iter().map(|(s, _)| s));
            assert_eq!(
                node::live::count() - base,
                reachable(&trees),
                "seed {seed} round {round}: allocated != reachable"
            );
            if round % 16 == 0 {
                t.check_invariants();
                assert_same(&t, &m);
                assert_same(&view.0, &view.1);
                assert_snapshots(&snaps);
            }
        }
        assert_snapshots(&snaps);
        drop(snaps);
        drop(view);
        assert_eq!(node::live::count() - base, reachable(&[&t]));
        drop(t);
        assert_eq!(node::live::count(), base, "seed {seed}: nodes leaked");
    }
}

/// One writer changes, publishes, rolls back, restarts from old snapshots, rebuilds and
/// deletes its tree while three reader threads take snapshots, check them against the model,
/// fork and publish them, and drop them in random order (often the last holder of a version,
/// so that lineages hand nodes down and free them on reader threads during publishes). At the
/// end every node made is freed (the per-thread counts sum to zero). Run under ASan:
/// `LOGTREE_STRESS_SECS=300`.
#[test]
fn snapshots_dropped_on_reader_threads_while_the_writer_publishes() {
    use std::sync::atomic::{AtomicBool, AtomicI64};
    use std::time::{Duration, Instant};
    type Shared = Mutex<Vec<(BTree, Arc<Model>)>>;
    let secs: u64 = std::env::var("LOGTREE_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let shared: Shared = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let made = AtomicI64::new(0);
    let checked = AtomicI64::new(0);
    let pick = |rng: &mut Rng, shared: &Shared, take: bool| -> Option<(BTree, Arc<Model>)> {
        let mut s = shared.lock().unwrap();
        if s.is_empty() {
            return None;
        }
        let i = rng.below(s.len());
        Some(if take { s.swap_remove(i) } else { (s[i].0.clone(), Arc::clone(&s[i].1)) })
    };
    std::thread::scope(|scope| {
        for r in 0..3u64 {
            let (shared, stop, made, checked) = (&shared, &stop, &made, &checked);
            scope.spawn(move || {
                let base = node::live::count();
                let mut rng = Rng(1000 + r);
                let mut step = 1u64 << 40;
                let mut held: Vec<(BTree, Arc<Model>)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match rng.below(20) {
                        0..=5 => held.extend(pick(&mut rng, shared, false)),
                        6..=8 => held.extend(pick(&mut rng, shared, true)),
                        9..=11 if !held.is_empty() => drop(held.swap_remove(rng.below(held.len()))),
                        12..=14 if !held.is_empty() => {
                            let (s, sm) = &held[rng.below(held.len())];
                            s.check_invariants();
                            assert_same(s, sm);
                            checked.fetch_add(1, Ordering::Relaxed);
                        }
                        15 if !held.is_empty() => {
                            // A fork: claims the version if nobody did (the writer then copies).
                            let (s, sm) = &held[rng.below(held.len())];
                            let (mut f, mut fm) = (s.clone(), (**sm).clone());
                            let n = 1 + rng.below(30);
                            review_ops(&mut rng, &mut f, &mut fm, n, &mut step);
                            let p = (f.snapshot(), Arc::new(fm.clone()));
                            assert_same(&f, &fm);
                            if rng.below(2) == 0 {
                                shared.lock().unwrap().push(p);
                            } else {
                                held.push(p);
                            }
                        }
                        16 if !held.is_empty() => {
                            let p = held.swap_remove(rng.below(held.len()));
                            shared.lock().unwrap().push(p);
                        }
                        17 if !held.is_empty() => {
                            // Spot checks of gets.
                            let (s, sm) = &held[rng.below(held.len())];
                            for _ in 0..20 {
                                let k = review_key(&mut rng);
                                assert_eq!(s.get(&k), sm.get(&k).copied());
                            }
                        }
                        _ => std::thread::yield_now(),
                    }
                    while held.len() > 6 {
                        drop(held.swap_remove(rng.below(held.len())));
                    }
                }
                drop(held);
                made.fetch_add(node::live::count() - base, Ordering::Relaxed);
            });
        }
        // The writer.
        let base = node::live::count();
        let mut rng = Rng(99);
        let mut step = 0u64;
        let mut t = BTree::new();
        let mut m = Model::new();
        let mut view: (BTree, Arc<Model>) = (t.snapshot(), Arc::new(m.clone()));
        let mut rounds = 0u64;
        let mut lent = false;
        while Instant::now() < deadline {
            rounds += 1;
            // The writer's buffer pool lent to this thread half the time, as in a `BatchTx`:
            // nodes freed here then go to it and are reused by the next copies.
            if rounds.is_multiple_of(64) {
                if lent {
                    drop(super::pool::reclaim());
                } else {
                    assert!(super::pool::lend(Box::default()).is_none());
                }
                lent = !lent;
            }
            let n = [1, 3, 20, 200][rng.below(4)];
            review_ops(&mut rng, &mut t, &mut m, n, &mut step);
            match rng.below(20) {
                0..=9 => {
                    view = (t.snapshot(), Arc::new(m.clone()));
                    shared.lock().unwrap().push((view.0.clone(), Arc::clone(&view.1)));
                }
                10 | 11 => {
                    t = view.0.clone();
                    m = (*view.1).clone();
                }
                12 => {
                    let take = rng.below(2) == 0;
                    if let Some((s, sm)) = pick(&mut rng, &shared, take) {
                        t = s.clone();
                        m = (*sm).clone();
                    }
                }
                13 => {
                    t = BTree::new();
                    m = Model::new();
                    view = (t.snapshot(), Arc::new(m.clone()));
                }
                14 => {
                    t = review_rebuild(&m);
                    view = (t.snapshot(), Arc::new(m.clone()));
                    shared.lock().unwrap().push((view.0.clone(), Arc::clone(&view.1)));
                }
                15 => {
                    let keys: Vec<Vec<u8>> = m.keys().cloned().collect();
                    for k in keys {
                        if rng.below(8) != 0 {
                            assert_eq!(t.remove(&k), m.remove(&k));
                        }
                    }
                }
                16 => {
                    let c = t.clone();
                    assert_same(&c, &m);
                }
                _ => {}
            }
            {
                let mut s = shared.lock().unwrap();
                while s.len() > 12 {
                    let i = rng.below(s.len());
                    drop(s.swap_remove(i));
                }
            }
            if rounds.is_multiple_of(32) {
                t.check_invariants();
                assert_same(&t, &m);
            }
        }
        stop.store(true, Ordering::Relaxed);
        if lent {
            drop(super::pool::reclaim());
        }
        assert_same(&t, &m);
        drop(t);
        drop(view);
        made.fetch_add(node::live::count() - base, Ordering::Relaxed);
        eprintln!("writer rounds {rounds}, reader checks {}", checked.load(Ordering::Relaxed));
    });
    // Readers are done; what is left in the shared pool is dropped here, on this thread.
    let base = node::live::count();
    drop(shared);
    made.fetch_add(node::live::count() - base, Ordering::Relaxed);
    assert_eq!(made.load(Ordering::Relaxed), 0, "nodes leaked (or freed twice)");
}

/// `warm_paths` only reads: on trees of one to four levels, for keys present, absent, empty,
/// past either end and longer than a node's key bytes, in groups shorter and longer than
/// `WARM_GROUP`, the tree is unchanged, no node is made or copied, and inserts that follow
/// give what they give without it.
#[test]
fn warming_paths_changes_nothing() {
    let mut rng = Rng(17);
    for n in [0usize, 1, 40, 3_000, 200_000] {
        let mut t = BTree::new();
        let mut m = Model::new();
        for i in 0..n {
            let k = rng.var_bytes(1, 24);
            t.insert(&k, vr(i as u64));
            m.insert(k, vr(i as u64));
        }
        let snap = t.snapshot();
        let nodes = node::live::count();
        let mut probes: Vec<Vec<u8>> = m.keys().step_by(97).cloned().collect();
        probes.extend([vec![], vec![0], vec![0xff; 40], vec![7; 20_000]]);
        probes.extend((0..50).map(|_| rng.var_bytes(0, 30)));
        let probe_refs: Vec<&[u8]> = probes.iter().map(Vec::as_slice).collect();
        for len in [0, 1, WARM_GROUP - 1, WARM_GROUP, WARM_GROUP + 1, probe_refs.len()] {
            t.warm_paths(&probe_refs[..len.min(probe_refs.len())]);
        }
        assert_eq!(node::live::count(), nodes, "n = {n}");
        t.check_invariants();
        assert!(t.iter().eq(m.iter().map(|(k, v)| (k.as_slice(), *v))), "n = {n}");
        for (i, k) in probes.iter().enumerate() {
            t.warm_paths(&probe_refs[i..(i + 3).min(probes.len())]);
            assert_eq!(t.insert(k, vr(i as u64)), m.insert(k.clone(), vr(i as u64)));
        }
        t.check_invariants();
        assert!(t.iter().eq(m.iter().map(|(k, v)| (k.as_slice(), *v))), "n = {n}");
        drop(snap);
    }
}
