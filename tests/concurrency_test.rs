//! Concurrency and lifecycle: threads racing every public entry point of the backend, the MVCC
//! store and the kv API — closes and drops while others read, defrags beside writers, rollbacks
//! and snapshots, compactions beside reads at old revisions, watchers coming and going — and
//! checking that nothing committed is lost, nothing panics, nothing deadlocks or hangs. Every
//! wait is bounded: a watchdog turns a deadlock into a failure with a message.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use logtree::kv::{ListOptions, ManualClock, Options, Store};
use logtree::mvcc::{Compare, CompareOp, KvStore, Op, RangeOptions};
use logtree::{Backend, Config, Error};

mod common;
use common::Rng;

/// Every pair of `bucket`, read from a new `ReadTx`.
fn pairs_of(db: &Backend, bucket: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut pairs = BTreeMap::new();
    db.read_tx()
        .for_each(bucket, |k, v| {
            pairs.insert(k.to_vec(), v.to_vec());
            Ok(())
        })
        .unwrap();
    pairs
}

/// Runs `f` on its own thread and waits at most `secs` for it: a deadlock or a hang fails the
/// test with `what` instead of stalling it. A panic in `f` is passed on.
fn watchdog<T: Send + 'static>(what: &str, secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let r = f();
        let _ = tx.send(());
        r
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        Err(RecvTimeoutError::Disconnected) => match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        },
        Err(RecvTimeoutError::Timeout) => panic!("{what}: no answer within {secs} s (deadlock or hang)"),
    }
}

fn seed() -> u64 {
    std::env::var("LT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.sync = false;
    c.segment_size = 64 << 10;
    c.batch_interval = Duration::from_millis(2);
    c
}

fn mvcc_at(dir: &std::path::Path) -> Arc<KvStore> {
    Arc::new(KvStore::open(Arc::new(Backend::open(config(dir)).unwrap())).unwrap())
}

fn stored_meta(s: &KvStore, key: &str) -> i64 {
    match s.backend().read_tx().get("meta", key).unwrap() {
        Some(v) => i64::from_le_bytes(v.try_into().unwrap()),
        None => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// MVCC

/// `get_with` lends the record to a callback; a callback that writes to the same store (or
/// reads it while a writer waits) must not deadlock.
#[test]
fn get_with_callback_may_use_the_store() {
    let d = tempfile::tempdir().unwrap();
    let s = mvcc_at(d.path());
    s.put(b"a", b"1", 0).unwrap();
    let s2 = s.clone();
    watchdog("a put inside get_with's callback", 10, move || {
        let rev = s2
            .get_with(b"a", |kv| {
                let v = kv.expect("a exists").value.to_vec();
                s2.put(b"b", &v, 0).unwrap()
            })
            .unwrap();
        assert_eq!(rev, 3);
    });
    assert_eq!(s.range(b"b", b"", RangeOptions::default()).unwrap().kvs[0].value, b"1");
}

/// Two compactions asked at once, at different revisions: the durable record of the compacted
/// revision must never go backwards, or after a reopen reads between the two revisions return
/// compacted-away history as if it were whole (keys missing) instead of `Error::Compacted`.
#[test]
fn concurrent_compactions_never_lower_the_compacted_revision() {
    let d = tempfile::tempdir().unwrap();
    let s = mvcc_at(d.path());
    // Each key overwritten at every round, so that any compaction has revisions to remove.
    for i in 0..2000u32 {
        s.put(format!("k{}", i % 50).as_bytes(), &i.to_le_bytes(), 0).unwrap();
    }
    let s2 = s.clone();
    watchdog("concurrent compactions", 20, move || {
        let mut rng = Rng(7);
        let mut base = s2.current_revision();
        for round in 0..40 {
            for i in 0..100u32 {
                s2.put(format!("k{}", i % 50).as_bytes(), &i.to_le_bytes(), 0).unwrap();
            }
            let cur = s2.current_revision();
            let (lo, hi) = (base + 1 + rng.below(20) as i64, cur - rng.below(20) as i64);
            base = cur;
            let barrier = Arc::new(Barrier::new(3));
            // A hash holds the compaction lock meanwhile, so both compactions pass their
            // checks before either runs.
            let hs = s2.clone();
            let hb = barrier.clone();
            let hasher = std::thread::spawn(move || {
                hb.wait();
                hs.hash_by_rev(0).unwrap();
            });
            let ts: Vec<_> = [hi, lo]
                .into_iter()
                .map(|rev| {
                    let (s, b) = (s2.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        match s.compact(rev) {
                            Ok(()) => Some(rev),
                            Err(Error::Compacted { .. }) => None,
                            Err(e) => panic!("compact({rev}): {e}"),
                        }
                    })
                })
                .collect();
            let done: Vec<i64> = ts.into_iter().filter_map(|t| t.join().unwrap()).collect();
            hasher.join().unwrap();
            let want = done.iter().copied().max().unwrap_or(0).max(s2.compacted_revision());
            assert_eq!(s2.compacted_revision(), want, "round {round}");
            assert_eq!(
                stored_meta(&s2, "finishedCompactRev"),
                s2.compacted_revision(),
                "round {round}: compactions {done:?} finished; the stored compacted revision went back"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Backend

/// A value that says which key and generation it belongs to and checks itself: any byte read
/// from a wrong place (a dangling map, a segment removed or cut back) shows.
fn value_of(key: &[u8], g: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(16));
    v.extend_from_slice(&g.to_le_bytes());
    let mut x = g ^ crc32fast::hash(key) as u64;
    while v.len() + 8 < len.max(16) {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        v.push((x >> 33) as u8);
    }
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v.extend_from_slice(&(crc32fast::hash(key)).to_le_bytes());
    v
}

fn check_value(key: &[u8], v: &[u8]) -> u64 {
    assert!(v.len() >= 16, "value of {key:?} is {} bytes", v.len());
    let n = v.len();
    let body = &v[..n - 8];
    assert_eq!(
        u32::from_le_bytes(v[n - 8..n - 4].try_into().unwrap()),
        crc32fast::hash(body),
        "value of {key:?} damaged"
    );
    assert_eq!(u32::from_le_bytes(v[n - 4..].try_into().unwrap()), crc32fast::hash(key), "value of another key");
    u64::from_le_bytes(v[..8].try_into().unwrap())
}

const GROUP: usize = 8;

/// What a reader checks in any view: the group keys `g0..g7`, written together by every
/// transaction, agree (atomic visibility), every value is intact, and the generation never goes
/// back for a reader taking views one after another.
fn check_view(r: &logtree::ReadTx, last_gen: &mut u64) {
    let mut gen_seen = None;
    for i in 0..GROUP {
        let k = format!("g{i}");
        let v = r.get("b", &k).unwrap().unwrap_or_else(|| panic!("{k} missing"));
        let g = check_value(k.as_bytes(), &v);
        match gen_seen {
            None => gen_seen = Some(g),
            Some(s) => assert_eq!(s, g, "a view shows half a transaction"),
        }
    }
    let g = gen_seen.unwrap();
    assert!(g >= *last_gen, "a later view went back from generation {} to {g}", *last_gen);
    *last_gen = g;
    r.for_each("b", |k, v| {
        check_value(k, v);
        Ok(())
    })
    .unwrap();
}

/// Segment files present in `dir`.
fn segment_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    v.sort();
    v
}

/// One writer (puts, deletes, multi-part transactions across segment roll-overs, rollbacks,
/// commits, drops), two defrags at once in a loop, readers scanning, snapshots streamed and
/// checked, hashes and force_commits: every view is atomic and intact, every snapshot image
/// verifies, and after close and reopen the content is exactly what the writer ended.
#[test]
fn backend_writer_defrags_readers_snapshots_at_once() {
    let d = tempfile::tempdir().unwrap();
    let mut c = config(d.path());
    c.batch_limit = 40;
    let path = d.path().to_path_buf();
    let model = watchdog("backend stress", 60, move || {
        let db = Backend::open(c).unwrap();
        let mut tx = db.batch_tx();
        tx.create_bucket("b").unwrap();
        for i in 0..GROUP {
            let k = format!("g{i}");
            tx.put("b", &k, value_of(k.as_bytes(), 0, 20)).unwrap();
        }
        tx.commit().unwrap();
        let stop = AtomicBool::new(false);
        let model = Mutex::new(BTreeMap::<Vec<u8>, Vec<u8>>::new());
        let defrags = AtomicUsize::new(0);
        let snapshots = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            // The writer.
            sc.spawn(|| {
                let mut rng = Rng(seed());
                let mut m = BTreeMap::new();
                for i in 0..GROUP {
                    let k = format!("g{i}").into_bytes();
                    m.insert(k.clone(), value_of(&k, 0, 20));
                }
                let deadline = Instant::now() + Duration::from_secs(4);
                let mut g = 0u64;
                while Instant::now() < deadline {
                    g += 1;
                    let mut tx = db.batch_tx();
                    let mut changes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
                    let big = rng.chance(10);
                    for i in 0..GROUP {
                        let k = format!("g{i}").into_bytes();
                        let v = value_of(&k, g, if big { 12_000 } else { 20 + rng.below(200) as usize });
                        tx.put("b", &k, &v).unwrap();
                        changes.push((k, Some(v)));
                    }
                    for _ in 0..rng.below(6) {
                        let k = format!("r{:03}", rng.below(300)).into_bytes();
                        if rng.chance(25) {
                            tx.delete("b", &k).unwrap();
                            changes.push((k, None));
                        } else {
                            let v = value_of(&k, g, 16 + rng.below(3000) as usize);
                            tx.put("b", &k, &v).unwrap();
                            changes.push((k, Some(v)));
                        }
                    }
                    let keep = match rng.below(10) {
                        0 => {
                            tx.rollback();
                            false
                        }
                        1 => {
                            tx.commit().unwrap();
                            true
                        }
                        2 => {
                            tx.finish().unwrap();
                            true
                        }
                        _ => {
                            drop(tx);
                            true
                        }
                    };
                    if keep {
                        for (k, v) in changes {
                            match v {
                                Some(v) => m.insert(k, v),
                                None => m.remove(&k),
                            };
                        }
                    }
                }
                *model.lock().unwrap() = m;
                stop.store(true, Ordering::SeqCst);
            });
            // Two defrags at once, for ever.
            for _ in 0..2 {
                sc.spawn(|| {
                    while !stop.load(Ordering::SeqCst) {
                        db.defrag().unwrap();
                        defrags.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            // Readers, some holding their views across many later writes and defrags.
            for t in 0..2 {
                let (db, stop) = (&db, &stop);
                sc.spawn(move || {
                    let mut last = 0;
                    let mut held = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let r = db.read_tx();
                        check_view(&r, &mut last);
                        i += 1;
                        if i.is_multiple_of(3 + t) {
                            held.push(r);
                        }
                        if held.len() > 20 {
                            let mut l = 0;
                            for r in held.drain(..) {
                                check_view(&r, &mut l);
                            }
                        }
                    }
                });
            }
            // Snapshots streamed while everything goes on, and hashes, stats, force_commit.
            sc.spawn(|| {
                let mut last = 0;
                while !stop.load(Ordering::SeqCst) {
                    let snap = db.snapshot().unwrap();
                    check_view(&snap.read_tx(), &mut last);
                    let mut image = Vec::new();
                    assert_eq!(snap.write_to(&mut image).unwrap(), snap.size());
                    let info = logtree::inspect_snapshot(&mut image.as_slice()).unwrap();
                    assert_eq!(info.seq, snap.seq());
                    snapshots.fetch_add(1, Ordering::Relaxed);
                }
            });
            sc.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    db.hash(&[]).unwrap();
                    db.force_commit().unwrap();
                    let s = db.stats();
                    assert!(s.durable_seq <= s.written_seq, "{s:?}");
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        });
        let model = model.into_inner().unwrap();
        assert!(pairs_of(&db, "b") == model, "content differs from the writer's model before close");
        assert!(defrags.load(Ordering::Relaxed) > 0 && snapshots.load(Ordering::Relaxed) > 0);
        eprintln!(
            "defrags {} snapshots {} keys {}",
            defrags.load(Ordering::Relaxed),
            snapshots.load(Ordering::Relaxed),
            model.len()
        );
        db.close().unwrap();
        model
    });
    let db = Backend::open(config(&path)).unwrap();
    assert!(pairs_of(&db, "b") == model, "content differs from the writer's model after reopen");
    let segs = db.stats().segments;
    drop(db);
    assert_eq!(segment_files(&path).len(), segs, "files left behind: {:?}", segment_files(&path));
}

/// Closing (or dropping) the backend while other threads read through `ReadTx`s, iterate
/// scans, and stream snapshots; then opening the directory again, writing, defragmenting and
/// closing it, while the first instance's readers still read: they keep their view, intact.
#[test]
fn close_and_reopen_while_readers_of_the_old_instance_read() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    watchdog("close with readers", 60, move || {
        let mut rng = Rng(3);
        let mut g = 0u64;
        for round in 0..12 {
            let db = Backend::open(config(&path)).unwrap();
            for _ in 0..30 {
                g += 1;
                let mut tx = db.batch_tx();
                tx.create_bucket("b").unwrap();
                for i in 0..GROUP {
                    let k = format!("g{i}");
                    tx.put("b", &k, value_of(k.as_bytes(), g, 16 + rng.below(4000) as usize)).unwrap();
                }
                for _ in 0..3 {
                    let k = format!("r{:03}", rng.below(200));
                    tx.put("b", &k, value_of(k.as_bytes(), g, 16 + rng.below(4000) as usize)).unwrap();
                }
                if rng.chance(10) {
                    tx.rollback();
                    g -= 1;
                }
            }
            let expect_gen = g;
            let stop = Arc::new(AtomicBool::new(false));
            let started = Arc::new(Barrier::new(4));
            let mut threads = Vec::new();
            for t in 0..3 {
                let r = db.read_tx();
                let snap = db.snapshot().unwrap();
                let (stop, started) = (stop.clone(), started.clone());
                threads.push(std::thread::spawn(move || {
                    started.wait();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) || n < 3 {
                        let mut last = 0;
                        check_view(&r, &mut last);
                        assert_eq!(last, expect_gen);
                        if t == 0 {
                            let mut image = Vec::new();
                            snap.write_to(&mut image).unwrap();
                            logtree::inspect_snapshot(&mut image.as_slice()).unwrap();
                        }
                        n += 1;
                    }
                }));
            }
            started.wait();
            if round % 2 == 0 {
                db.close().unwrap()
            } else {
                drop(db)
            }
            // Open the directory again while the old readers read; write, roll over, defrag.
            let db = Backend::open(config(&path)).unwrap();
            for _ in 0..20 {
                let mut tx = db.batch_tx();
                for _ in 0..4 {
                    let k = format!("r{:03}", rng.below(200));
                    tx.put("b", &k, value_of(k.as_bytes(), g, 16 + rng.below(6000) as usize)).unwrap();
                }
            }
            db.defrag().unwrap();
            let mut last = 0;
            check_view(&db.read_tx(), &mut last);
            db.close().unwrap();
            stop.store(true, Ordering::SeqCst);
            for t in threads {
                t.join().unwrap();
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// MVCC under load

#[derive(Clone, Debug)]
enum MOp {
    Put(Vec<u8>, Vec<u8>),
    /// etcd's range conventions: an empty end is the single key.
    Del(Vec<u8>, Vec<u8>),
}

/// One event as the model sees it: (revision, kind is put, the key-value, the previous one).
type MEvent = (i64, bool, logtree::mvcc::KeyValue, Option<logtree::mvcc::KeyValue>);

fn mkey(i: u64) -> Vec<u8> {
    format!("k{i:02}").into_bytes()
}

/// Replays the writers' record revision by revision; calls `at(rev, state)` after each.
fn replay_model(
    writes: &BTreeMap<i64, Vec<MOp>>,
    mut at: impl FnMut(i64, &BTreeMap<Vec<u8>, logtree::mvcc::KeyValue>, &[MEvent]),
) {
    use logtree::mvcc::KeyValue;
    let mut state: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
    for (&rev, ops) in writes {
        let mut events = Vec::new();
        for op in ops {
            match op {
                MOp::Put(k, v) => {
                    let prev = state.get(k).cloned();
                    let kv = KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        lease: 0,
                    };
                    state.insert(k.clone(), kv.clone());
                    events.push((rev, true, kv, prev));
                }
                MOp::Del(a, b) => {
                    let keys: Vec<Vec<u8>> = if b.is_empty() {
                        state.contains_key(a).then(|| a.clone()).into_iter().collect()
                    } else {
                        state.range(a.clone()..b.clone()).map(|(k, _)| k.clone()).collect()
                    };
                    for k in keys {
                        let prev = state.remove(&k);
                        let kv = KeyValue { key: k, mod_revision: rev, ..Default::default() };
                        events.push((rev, false, kv, prev));
                    }
                }
            }
        }
        at(rev, &state, &events);
    }
}

/// Writers (puts, deletes, txns that read their own writes) on three threads; readers at old
/// revisions; compactions in bounded batches; hashes by revision; defrags of the backend under
/// the store; watchers created at explicit revisions, reading at different paces and dropped
/// while the writers run. Every read at a revision is checked against a model replayed from the
/// writers' record, every watcher's events are exactly the model's from its start, every
/// revision was given exactly once, and a reopened store has the final state and the highest
/// compaction.
#[test]
fn mvcc_writers_readers_compaction_watchers_defrag() {
    use logtree::mvcc::KeyValue;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    watchdog("mvcc stress", 60, move || {
        let s = mvcc_at(&path);
        let stop = AtomicBool::new(false);
        let writes = Mutex::new(BTreeMap::<i64, Vec<MOp>>::new());
        let reads = Mutex::new(Vec::<(i64, Vec<KeyValue>)>::new());
        type Got = Vec<(bool, KeyValue, Option<KeyValue>)>;
        let watched = Mutex::new(Vec::<(i64, bool, (Vec<u8>, Vec<u8>), Got)>::new());
        let max_compacted = AtomicI64::new(0);
        let range_all = |rev: i64| RangeOptions { rev, ..Default::default() };
        std::thread::scope(|sc| {
            for t in 0..3u64 {
                let (s, writes) = (&s, &writes);
                sc.spawn(move || {
                    let mut rng = Rng(seed() * 100 + t);
                    let deadline = Instant::now() + Duration::from_secs(4);
                    let mut n = 0;
                    while Instant::now() < deadline {
                        n += 1;
                        let value = |rng: &mut Rng| {
                            let len = if rng.chance(3) { 5000 } else { 1 + rng.below(40) as usize };
                            let mut v = format!("w{t}-{n}-").into_bytes();
                            v.resize(len.max(v.len()), b'x');
                            v
                        };
                        let (rev, ops) = match rng.below(10) {
                            0..=4 => {
                                let (k, v) = (mkey(rng.below(40)), value(&mut rng));
                                (s.put(&k, &v, 0).unwrap(), vec![MOp::Put(k, v)])
                            }
                            5 | 6 => {
                                let a = rng.below(40);
                                let (ka, kb) = (mkey(a), mkey(a + 1 + rng.below(4)));
                                let (deleted, rev) = s.delete_range(&ka, &kb).unwrap();
                                if deleted == 0 {
                                    continue;
                                }
                                (rev, vec![MOp::Del(ka, kb)])
                            }
                            _ => {
                                let (ka, kb, kc) = (mkey(rng.below(40)), mkey(rng.below(40)), mkey(rng.below(40)));
                                let (va, vc) = (value(&mut rng), value(&mut rng));
                                let success = [
                                    Op::put(&ka, &va, 0),
                                    Op::range(&ka, b"", RangeOptions::default()),
                                    Op::delete_range(&kb, b""),
                                    Op::put(&kc, &vc, 0),
                                ];
                                let failure = [Op::put(&kc, &vc, 0)];
                                let cmp = [Compare::version(&ka, CompareOp::Greater, 0)];
                                let r = s.txn(&cmp, &success, &failure).unwrap();
                                if r.succeeded {
                                    // The range inside the txn sees the txn's own put.
                                    match &r.responses[1] {
                                        logtree::mvcc::OpResponse::Range(rr) => {
                                            assert_eq!(rr.kvs[0].value, va, "a txn's range misses its own put")
                                        }
                                        other => panic!("{other:?}"),
                                    }
                                    let ops = vec![
                                        MOp::Put(ka.clone(), va),
                                        MOp::Del(kb, Vec::new()),
                                        MOp::Put(kc.clone(), vc),
                                    ];
                                    (r.revision, ops)
                                } else {
                                    (r.revision, vec![MOp::Put(kc, vc)])
                                }
                            }
                        };
                        assert!(writes.lock().unwrap().insert(rev, ops).is_none(), "revision {rev} given twice");
                    }
                });
            }
            // Readers at old revisions (and at the current one), each read twice, some time apart.
            for t in 0..2 {
                let (s, stop, reads) = (&s, &stop, &reads);
                sc.spawn(move || {
                    let mut rng = Rng(seed() * 1000 + t);
                    while !stop.load(Ordering::SeqCst) {
                        let (lo, hi) = (s.compacted_revision(), s.current_revision());
                        let rev = lo.max(1) + rng.below((hi - lo.max(1) + 1) as u64) as i64;
                        let first = match s.range(b"k", b"l", range_all(rev)) {
                            Ok(r) => r.kvs,
                            Err(Error::Compacted { .. }) => continue,
                            Err(e) => panic!("range at {rev}: {e}"),
                        };
                        std::thread::sleep(Duration::from_micros(rng.below(3000)));
                        match s.range(b"k", b"l", range_all(rev)) {
                            Ok(r) => assert_eq!(r.kvs, first, "a read at revision {rev} changed"),
                            Err(Error::Compacted { .. }) => {}
                            Err(e) => panic!("range at {rev}: {e}"),
                        }
                        let k = mkey(rng.below(40));
                        s.get_with(&k, |kv| {
                            if let Some(kv) = kv {
                                assert_eq!(kv.key, &k[..]);
                                assert!(kv.mod_revision <= s.current_revision());
                            }
                        })
                        .unwrap();
                        reads.lock().unwrap().push((rev, first));
                    }
                });
            }
            // Compactions, hashes by revision, defrags.
            {
                let (s, stop, max_compacted) = (&s, &stop, &max_compacted);
                sc.spawn(move || {
                    let mut rng = Rng(seed() + 77);
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20 + rng.below(40)));
                        let rev = s.current_revision() - rng.below(20_000) as i64;
                        match s.compact(rev) {
                            Ok(()) => {
                                max_compacted.fetch_max(rev, Ordering::SeqCst);
                            }
                            Err(Error::Compacted { .. }) | Err(Error::FutureRev { .. }) => {}
                            Err(e) => panic!("compact({rev}): {e}"),
                        }
                    }
                });
                sc.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let rev = s.current_revision();
                        let Ok(h1) = s.hash_by_rev(rev) else { continue };
                        std::thread::sleep(Duration::from_millis(5));
                        match s.hash_by_rev(rev) {
                            Ok(h2) if h2.compact_revision == h1.compact_revision => {
                                assert_eq!(h1.hash, h2.hash, "hash at {rev} changed without a compaction")
                            }
                            Ok(_) | Err(Error::Compacted { .. }) => {}
                            Err(e) => panic!("hash_by_rev({rev}): {e}"),
                        }
                    }
                });
                sc.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        s.backend().defrag().unwrap();
                        std::thread::sleep(Duration::from_millis(30));
                    }
                });
            }
            // Watchers, created and dropped while everything runs.
            for t in 0..3u64 {
                let (s, stop, watched) = (&s, &stop, &watched);
                sc.spawn(move || {
                    let mut rng = Rng(seed() * 10_000 + t);
                    while !stop.load(Ordering::SeqCst) {
                        let back = rng.below(if t == 0 { 100_000 } else { 2000 }) as i64;
                        let start = (s.current_revision() + 1 - back).max(s.compacted_revision() + 1).max(1);
                        let prev = rng.chance(50);
                        let (key, end) = match rng.below(3) {
                            0 => (b"k".to_vec(), b"l".to_vec()),
                            1 => (mkey(5), Vec::new()),
                            _ => (mkey(10), mkey(20)),
                        };
                        let w = match s.watch_with(
                            &key,
                            &end,
                            logtree::mvcc::WatchOptions { start_rev: start, prev_kv: prev },
                        ) {
                            Ok(w) => w,
                            Err(Error::Compacted { .. }) => continue,
                            Err(e) => panic!("watch from {start}: {e}"),
                        };
                        let mut got = Vec::new();
                        let until = Instant::now() + Duration::from_millis(50 + rng.below(400));
                        let slow = rng.chance(30);
                        if t == 0 && rng.chance(50) {
                            // Falls behind the feed before reading anything.
                            std::thread::sleep(Duration::from_millis(1500));
                        }
                        while Instant::now() < until {
                            match w.recv_timeout(Duration::from_millis(20)) {
                                Ok(Some(e)) => {
                                    got.push((e.kind == logtree::mvcc::EventKind::Put, e.kv, e.prev_kv));
                                }
                                Ok(None) => {}
                                Err(Error::Compacted { .. }) => break,
                                Err(e) => panic!("watcher: {e}"),
                            }
                            if slow {
                                std::thread::sleep(Duration::from_millis(2));
                            }
                        }
                        drop(w);
                        watched.lock().unwrap().push((start, prev, (key, end), got));
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(4100));
            stop.store(true, Ordering::SeqCst);
        });
        let writes = writes.into_inner().unwrap();
        let current = s.current_revision();
        assert_eq!(
            writes.keys().copied().collect::<Vec<_>>(),
            (2..=current).collect::<Vec<_>>(),
            "every revision given exactly once"
        );
        // Reads at revisions against the model.
        let mut reads = reads.into_inner().unwrap();
        reads.sort_by_key(|r| r.0);
        let mut all_events: Vec<MEvent> = Vec::new();
        let mut i = 0;
        let mut last_state = BTreeMap::new();
        replay_model(&writes, |rev, state, events| {
            all_events.extend_from_slice(events);
            while i < reads.len() && reads[i].0 < rev {
                i += 1; // revision 1 (empty) was read: nothing to check beyond emptiness
            }
            while i < reads.len() && reads[i].0 == rev {
                let want: Vec<KeyValue> = state.values().cloned().collect();
                assert!(reads[i].1 == want, "range at revision {rev} differs from the model");
                i += 1;
            }
            last_state = state.clone();
        });
        // Watchers against the model's events.
        let watched = watched.into_inner().unwrap();
        let mut checked = 0;
        for (start, prev, (key, end), got) in &watched {
            let from = all_events.partition_point(|e| e.0 < *start);
            let in_range = |k: &[u8]| if end.is_empty() { k == &key[..] } else { k >= &key[..] && k < &end[..] };
            let want: Vec<&MEvent> = all_events[from..].iter().filter(|e| in_range(&e.2.key)).collect();
            assert!(got.len() <= want.len(), "watcher from {start} got more events than there were");
            for (j, ((is_put, kv, pkv), (_, w_put, w_kv, w_prev))) in got.iter().zip(want).enumerate() {
                assert_eq!((is_put, kv), (w_put, w_kv), "watcher from {start}: event {j} differs");
                if *prev {
                    if let Some(p) = pkv {
                        assert_eq!(Some(p), w_prev.as_ref(), "watcher from {start}: previous value of event {j}");
                    }
                } else {
                    assert!(pkv.is_none());
                }
            }
            checked += got.len();
        }
        eprintln!(
            "revisions {current}, reads {}, watchers {} with {checked} events, compacted {}",
            reads.len(),
            watched.len(),
            s.compacted_revision()
        );
        let final_range = s.range(b"k", b"l", RangeOptions::default()).unwrap().kvs;
        assert!(final_range == last_state.values().cloned().collect::<Vec<_>>());
        let compacted = s.compacted_revision();
        assert_eq!(compacted, max_compacted.load(Ordering::SeqCst).max(0));
        drop(s);
        let s = mvcc_at(&path);
        assert_eq!(s.current_revision(), current);
        assert_eq!(s.compacted_revision(), compacted, "the compacted revision after reopen");
        assert!(s.range(b"k", b"l", RangeOptions::default()).unwrap().kvs == final_range);
    });
}

// ---------------------------------------------------------------------------------------------
// MVCC lifecycle

/// Dropping the store while watchers wait in `recv_timeout` (live, or reading history behind a
/// writer) ends every watch with `Error::Closed` promptly, and the directory can be opened
/// again at once.
#[test]
fn dropping_the_store_ends_blocked_watchers() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    watchdog("drop with blocked watchers", 30, move || {
        for round in 0..10u64 {
            let s = mvcc_at(&path);
            let first = s.current_revision();
            for i in 0..200u32 {
                s.put(format!("k{}", i % 7).as_bytes(), b"v", 0).unwrap();
            }
            let barrier = Arc::new(Barrier::new(9));
            let threads: Vec<_> = (0..8u64)
                .map(|t| {
                    let w = s.watch(b"k", b"l", if t % 2 == 0 { 0 } else { first + 1 }).unwrap();
                    let b = barrier.clone();
                    std::thread::spawn(move || {
                        b.wait();
                        let start = Instant::now();
                        loop {
                            match w.recv_timeout(Duration::from_secs(60)) {
                                Ok(Some(_)) => {}
                                Ok(None) => panic!("a 60 s wait ended without event or error"),
                                Err(Error::Closed) => break,
                                Err(e) => panic!("watcher: {e}"),
                            }
                            assert!(start.elapsed() < Duration::from_secs(20), "never closed");
                        }
                        assert!(matches!(w.try_recv(), Err(Error::Closed)));
                    })
                })
                .collect();
            barrier.wait();
            // A writer going on until the very end.
            let w = {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..(round * 50) {
                        s.put(b"k9", &i.to_le_bytes(), 0).unwrap();
                    }
                    s
                })
            };
            let s2 = w.join().unwrap();
            drop(s2);
            let backend = s.backend().clone();
            drop(Arc::try_unwrap(s).unwrap_or_else(|_| panic!("the only handle")));
            for t in threads {
                t.join().unwrap();
            }
            Arc::try_unwrap(backend).unwrap_or_else(|_| panic!("the store let go of its backend")).close().unwrap();
        }
    });
}

// ---------------------------------------------------------------------------------------------
// kv

fn kv_opts(clock: &Arc<ManualClock>) -> Options {
    Options { clock: clock.clone(), sweep_interval: Duration::from_millis(1), compact_after: 200, ..Options::default() }
}

/// CAS increments from many threads on clones and namespaces, racing atomic deletes of the same
/// counters, TTL'd keys expiring under a moving clock with the sweeper (and its automatic
/// compactions) running: the only errors are the CAS ones, and no increment is lost — every
/// successful increment is in a final value or in a value an atomic delete removed.
#[test]
fn kv_cas_increments_deletes_expiry_and_namespaces() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    watchdog("kv stress", 60, move || {
        let clock = Arc::new(ManualClock::default());
        let store = Store::open_with(config(&path), kv_opts(&clock)).unwrap();
        let stop = AtomicBool::new(false);
        let increments = AtomicU64::new(0);
        let deleted_sum = AtomicU64::new(0);
        let parse = |v: &[u8]| std::str::from_utf8(v).unwrap().parse::<u64>().unwrap();
        std::thread::scope(|sc| {
            for t in 0..4u64 {
                let (st, stop, increments) = (store.namespace("cas"), &stop, &increments);
                sc.spawn(move || {
                    let mut rng = Rng(seed() * 7 + t);
                    while !stop.load(Ordering::SeqCst) {
                        let k = format!("c{}", rng.below(3));
                        let r = match st.get_pair(k.as_bytes()).unwrap() {
                            None => st.atomic_put(k.as_bytes(), b"1", None),
                            Some(p) => {
                                st.atomic_put(k.as_bytes(), (parse(&p.value) + 1).to_string().as_bytes(), Some(&p))
                            }
                        };
                        match r {
                            Ok(_) => {
                                increments.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(Error::KeyExists | Error::KeyModified | Error::KeyNotFound) => {}
                            Err(e) => panic!("cas: {e}"),
                        }
                    }
                });
            }
            {
                let (st, stop, deleted_sum) = (store.namespace("cas"), &stop, &deleted_sum);
                sc.spawn(move || {
                    let mut rng = Rng(seed() * 11);
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(rng.below(5)));
                        let k = format!("c{}", rng.below(3));
                        let Some(p) = st.get_pair(k.as_bytes()).unwrap() else { continue };
                        match st.atomic_delete(k.as_bytes(), &p) {
                            Ok(()) => {
                                deleted_sum.fetch_add(parse(&p.value), Ordering::Relaxed);
                            }
                            Err(Error::KeyModified | Error::KeyNotFound) => {}
                            Err(e) => panic!("atomic_delete: {e}"),
                        }
                    }
                });
            }
            // Keys with deadlines, rewritten and CAS'd while the clock moves and the sweeper
            // deletes them.
            for t in 0..2u64 {
                let (st, stop) = (store.namespace("ttl"), &stop);
                sc.spawn(move || {
                    let mut rng = Rng(seed() * 13 + t);
                    while !stop.load(Ordering::SeqCst) {
                        let k = format!("t{}", rng.below(20));
                        match rng.below(4) {
                            0 => st.set(k.as_bytes(), b"v", Some(Duration::from_millis(1 + rng.below(30)))).unwrap(),
                            1 => match st.get_pair(k.as_bytes()).unwrap() {
                                Some(p) => match st.atomic_put(k.as_bytes(), b"w", Some(&p)) {
                                    Ok(_) | Err(Error::KeyModified | Error::KeyNotFound) => {}
                                    Err(e) => panic!("cas on a ttl key: {e}"),
                                },
                                None => match st.atomic_put(k.as_bytes(), b"n", None) {
                                    Ok(_) | Err(Error::KeyExists | Error::KeyModified) => {}
                                    Err(e) => panic!("create on a ttl key: {e}"),
                                },
                            },
                            2 => st.expire(k.as_bytes()).unwrap(),
                            _ => {
                                st.list(ListOptions::default()).unwrap();
                                st.count(b"t").unwrap();
                            }
                        }
                    }
                });
            }
            // Namespaces side by side: each sees exactly its own keys.
            for t in 0..2u64 {
                let (st, stop) = (store.namespace("ns").namespace(&t.to_string()), &stop);
                sc.spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        st.set(format!("{n:06}").as_bytes(), b"x", None).unwrap();
                        n += 1;
                        if n.is_multiple_of(50) {
                            assert_eq!(st.count(b"").unwrap() as u64, n, "namespace {t}");
                        }
                    }
                });
            }
            {
                let (clock, stop) = (&clock, &stop);
                sc.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        clock.advance(Duration::from_millis(3));
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
            }
            std::thread::sleep(Duration::from_secs(4));
            stop.store(true, Ordering::SeqCst);
        });
        let cas = store.namespace("cas");
        let finals: u64 = (0..3).filter_map(|i| cas.get(format!("c{i}").as_bytes()).unwrap()).map(|v| parse(&v)).sum();
        let (inc, del) = (increments.load(Ordering::Relaxed), deleted_sum.load(Ordering::Relaxed));
        eprintln!("increments {inc}, in final values {finals}, in deleted values {del}");
        assert_eq!(inc, finals + del, "increments lost or invented");
        clock.advance(Duration::from_secs(3600));
        store.sweep().unwrap();
        let ttl = store.namespace("ttl");
        for p in ttl.list_pairs(b"").unwrap() {
            assert_eq!(p.expires_at, None, "{p:?} is visible after its deadline");
        }
        store.close().unwrap();
    });
}

/// `close` from one clone while others are mid-call (writes, lists, CAS, sweeps) and the sweeper
/// thread runs: every call either completes or says `Closed`, none succeeds after one saw the
/// store closed, the directory can be opened again at once, and every acknowledged write is there.
#[test]
fn kv_close_while_calls_and_sweeper_run_keeps_acknowledged_writes() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    watchdog("kv close", 60, move || {
        for round in 0..8u64 {
            let clock = Arc::new(ManualClock::default());
            let store = Store::open_with(config(&path), kv_opts(&clock)).unwrap();
            let acked: Vec<_> = (0..5u64)
                .map(|t| {
                    let st = store.namespace(&format!("w{t}"));
                    let clock = clock.clone();
                    std::thread::spawn(move || {
                        let mut rng = Rng(seed() * 17 + round * 5 + t);
                        let mut last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
                        for i in 0u64.. {
                            let k = format!("k{}", rng.below(30)).into_bytes();
                            let v = format!("{round}-{i}").into_bytes();
                            let r = match rng.below(7) {
                                0 | 1 => st.set(&k, &v, None).map(|()| last.insert(k.clone(), Some(v.clone()))),
                                2 => st.delete(&k).map(|()| last.insert(k.clone(), None)),
                                3 => st.set(b"ttl", b"x", Some(Duration::from_millis(2))).map(|()| None),
                                4 => st.list_pairs(b"").map(|_| None),
                                5 => st.sweep().map(|_| {
                                    clock.advance(Duration::from_millis(1));
                                    None
                                }),
                                _ => match st.get_pair(&k) {
                                    Ok(Some(p)) => {
                                        let v2 = format!("{round}-{i}-cas").into_bytes();
                                        match st.atomic_put(&k, &v2, Some(&p)) {
                                            Ok(_) => Ok(last.insert(k.clone(), Some(v2))),
                                            Err(Error::KeyModified | Error::KeyNotFound) => Ok(None),
                                            Err(e) => Err(e),
                                        }
                                    }
                                    Ok(None) => Ok(None),
                                    Err(e) => Err(e),
                                },
                            };
                            match r {
                                Ok(_) => {}
                                Err(Error::Closed) => break,
                                Err(e) => panic!("{e}"),
                            }
                        }
                        // Closed for good.
                        assert!(matches!(st.get(b"k1"), Err(Error::Closed)));
                        assert!(matches!(st.set(b"k1", b"v", None), Err(Error::Closed)));
                        last
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(100 + 30 * round));
            if round % 2 == 0 {
                store.close().unwrap();
            } else {
                store.namespace("other").close().unwrap();
            }
            assert!(matches!(store.close(), Err(Error::Closed)));
            let acked: Vec<_> = acked.into_iter().map(|t| t.join().unwrap()).collect();
            drop(store);
            // Open again at once: the first instance released the directory.
            let store = Store::open_with(config(&path), kv_opts(&clock)).unwrap();
            for (t, last) in acked.iter().enumerate() {
                let st = store.namespace(&format!("w{t}"));
                for (k, v) in last {
                    assert_eq!(&st.get(k).unwrap(), v, "round {round}: an acknowledged write of thread {t} is lost");
                }
            }
            store.close().unwrap();
        }
    });
}

/// `hash_by_rev` reads a snapshot of the whole `key` bucket; a write (and, behind it, every
/// reader) must not wait for it. Run against a store large enough that one hash takes tens of
/// milliseconds: a put issued while a hash runs finishes before it.
#[test]
fn writes_and_reads_do_not_wait_for_hash_by_rev() {
    let d = tempfile::tempdir().unwrap();
    let s = mvcc_at(d.path());
    for i in 0..150_000u32 {
        s.put(format!("k{}", i % 1000).as_bytes(), &[7u8; 50], 0).unwrap();
    }
    let t = Instant::now();
    s.hash_by_rev(0).unwrap();
    let one_hash = t.elapsed();
    let s2 = s.clone();
    watchdog("put during hash_by_rev", 30, move || {
        let mut overlapped = 0;
        for _ in 0..5 {
            let hashing = Arc::new(AtomicBool::new(true));
            let (hs, h) = (s2.clone(), hashing.clone());
            let hasher = std::thread::spawn(move || {
                hs.hash_by_rev(0).unwrap();
                h.store(false, Ordering::SeqCst);
            });
            std::thread::sleep(one_hash / 5);
            let t = Instant::now();
            s2.put(b"w", b"x", 0).unwrap();
            s2.range(b"k1", b"", RangeOptions::default()).unwrap();
            if hashing.load(Ordering::SeqCst) && t.elapsed() < one_hash / 4 {
                overlapped += 1;
            }
            hasher.join().unwrap();
        }
        assert!(overlapped > 0, "every put waited for a hash_by_rev of {one_hash:?} to finish");
    });
}

/// `stats()` while commits run: a transaction is never durable before it is written.
#[test]
fn stats_never_show_more_durable_than_written() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    watchdog("stats beside commits", 30, move || {
        let db = Backend::open(config(&path)).unwrap();
        let mut tx = db.batch_tx();
        tx.create_bucket("b").unwrap();
        tx.commit().unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for i in 0..60_000u32 {
                    let mut tx = db.batch_tx();
                    tx.put("b", "k", i.to_le_bytes()).unwrap();
                    tx.commit().unwrap();
                }
                stop.store(true, Ordering::SeqCst);
            });
            while !stop.load(Ordering::SeqCst) {
                let s = db.stats();
                assert!(s.durable_seq <= s.written_seq, "{s:?}");
            }
        });
        db.close().unwrap();
    });
}
