//! The backend's semantics, ported from etcd's backend_test.go, batch_tx_test.go and
//! tx_buffer_test.go, plus what logtree promises beyond them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use logtree::{Backend, Config, Error};

mod common;
use common::{Content, content_of};

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.sync = false;
    c
}

fn open(dir: &std::path::Path) -> Backend {
    Backend::open(config(dir)).expect("open")
}

fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

/// etcd TestBatchTxPut / TestRangeAfterDeleteMatch and friends: the basic contract.
#[test]
fn put_get_range_delete() {
    let (db, _d) = Backend::open_temp().unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("test").unwrap();
    tx.put("test", "foo", "bar").unwrap();
    assert_eq!(tx.get("test", "foo").unwrap(), Some(b"bar".to_vec()), "a BatchTx sees its own put");
    tx.commit().unwrap();
    let r = db.read_tx();
    assert_eq!(r.get("test", "foo").unwrap(), Some(b"bar".to_vec()));
    assert_eq!(r.get("test", "nope").unwrap(), None);

    let mut tx = db.batch_tx();
    tx.delete("test", "foo").unwrap();
    assert_eq!(tx.get("test", "foo").unwrap(), None, "a BatchTx sees its own delete");
    tx.delete("test", "foo").unwrap(); // missing: a no-op
    drop(tx);
    // etcd #17158: a stale read after delete. The delete is visible at once.
    assert_eq!(db.read_tx().get("test", "foo").unwrap(), None);
    assert_eq!(r.get("test", "foo").unwrap(), Some(b"bar".to_vec()), "the old snapshot keeps its view");
}

/// A `BatchTx` hands its puts to the index a group at a time (src/backend/tx_buffer.rs): at
/// every count of puts, whatever the group boundary, its reads, deletes and bucket changes see
/// them all, a rollback drops them all, and a commit keeps them all.
#[test]
fn a_transaction_sees_its_puts_before_and_after_each_group() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut tx = db.batch_tx();
    tx.create_bucket("a").unwrap();
    tx.create_bucket("b").unwrap();
    let mut model: BTreeMap<(&str, Vec<u8>), Vec<u8>> = BTreeMap::new();
    let key = |i: u32| format!("k{:03}", (i * 37) % 101).into_bytes();
    for i in 0..70u32 {
        let bucket = if i % 5 == 0 { "b" } else { "a" };
        let value = format!("v{i}").into_bytes();
        tx.put(bucket, key(i), &value).unwrap();
        model.insert((bucket, key(i)), value.clone());
        assert_eq!(tx.get(bucket, key(i)).unwrap(), Some(value), "put {i}");
        let in_a: Vec<(Vec<u8>, Vec<u8>)> =
            model.iter().filter(|((b, _), _)| *b == "a").map(|((_, k), v)| (k.clone(), v.clone())).collect();
        assert_eq!(tx.range("a", "", "\u{ff}", 0).unwrap(), in_a, "put {i}");
        assert_eq!(tx.bucket_len("a").unwrap(), in_a.len(), "put {i}");
        if i % 7 == 3 {
            // A delete right after the put it undoes.
            tx.delete(bucket, key(i)).unwrap();
            model.remove(&(bucket, key(i)));
            assert_eq!(tx.get(bucket, key(i)).unwrap(), None, "delete after put {i}");
        }
    }
    // Dropping a bucket with puts staged in it and in another, then re-creating it.
    tx.put("b", "staged", "x").unwrap();
    tx.put("a", "staged", "y").unwrap();
    tx.delete_bucket("b").unwrap();
    model.retain(|(b, _), _| *b != "b");
    model.insert(("a", b"staged".to_vec()), b"y".to_vec());
    tx.create_bucket("b").unwrap();
    assert_eq!(tx.bucket_len("b").unwrap(), 0);
    tx.put("b", "again", "z").unwrap();
    model.insert(("b", b"again".to_vec()), b"z".to_vec());
    tx.commit().unwrap();

    // A rolled-back transaction's puts, staged or applied, are gone.
    let mut tx = db.batch_tx();
    for i in 0..(3 * 16 + 3) {
        tx.put("a", format!("rolled-back-{i}"), "r").unwrap();
    }
    tx.rollback();
    let want: Content = model.iter().map(|((b, k), v)| ((b.as_bytes().to_vec(), k.clone()), v.clone())).collect();
    assert_eq!(content_of(&db.read_tx()), want);
    assert_eq!(db.read_tx().bucket_len("a").unwrap() + db.read_tx().bucket_len("b").unwrap(), want.len());
    db.close().unwrap();
    let db = open(dir.path());
    assert_eq!(content_of(&db.read_tx()), want, "after reopen");
}

/// Puts with no read between them fill whole groups in the transaction's buffer; runs of two
/// buckets interleave in them, and a bucket created mid-way sorts before both (so every
/// bucket's position in the catalog moves, which the staged puts must not outlive).
#[test]
fn groups_of_puts_across_buckets_with_no_reads_between() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut model = Content::new();
    let mut tx = db.batch_tx();
    tx.create_bucket("m").unwrap();
    tx.create_bucket("z").unwrap();
    let mut put = |tx: &mut logtree::BatchTx<'_>, b: &str, i: u32| {
        let (k, v) = (format!("key{:05}", (i * 7919) % 1000).into_bytes(), format!("value{i}").into_bytes());
        tx.put(b, &k, &v).unwrap();
        model.insert((b.as_bytes().to_vec(), k), v);
    };
    for i in 0..100u32 {
        put(&mut tx, if (i / 3) % 2 == 0 { "m" } else { "z" }, i);
    }
    tx.create_bucket("a").unwrap();
    for i in 100..250u32 {
        put(&mut tx, ["a", "m", "z"][(i % 3) as usize], i);
    }
    tx.commit().unwrap();
    assert_eq!(content_of(&db.read_tx()), model);
    db.close().unwrap();
    assert_eq!(content_of(&open(dir.path()).read_tx()), model, "after reopen");
}

/// etcd TestBatchTxRange / TestRangeTxn: empty end = single key, limits, missing keys.
#[test]
fn range_semantics() {
    let (db, _d) = Backend::open_temp().unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    for k in ["foo", "foo1", "foo2"] {
        tx.put("b", k, format!("{k}-v")).unwrap();
    }
    drop(tx);
    let r = db.read_tx();
    let all = vec![kv("foo", "foo-v"), kv("foo1", "foo1-v"), kv("foo2", "foo2-v")];
    // single key
    assert_eq!(r.range("b", "foo", "", 0).unwrap(), vec![kv("foo", "foo-v")]);
    // single missing key
    assert_eq!(r.range("b", "fo", "", 0).unwrap(), vec![]);
    // [foo, foo3): all
    assert_eq!(r.range("b", "foo", "foo3", 0).unwrap(), all);
    // [foo, foo3) limit 2
    assert_eq!(r.range("b", "foo", "foo3", 2).unwrap(), all[..2].to_vec());
    // [foo1, foo2): end exclusive
    assert_eq!(r.range("b", "foo1", "foo2", 0).unwrap(), vec![kv("foo1", "foo1-v")]);
    // empty start = from the beginning
    assert_eq!(r.range("b", "", "foo1", 0).unwrap(), vec![kv("foo", "foo-v")]);
    // end before start: nothing
    assert_eq!(r.range("b", "foo2", "foo", 0).unwrap(), vec![]);
    // start past the last key
    assert_eq!(r.range("b", "zzz", "zzzz", 0).unwrap(), vec![]);
    // the same through the BatchTx
    let tx = db.batch_tx();
    assert_eq!(tx.range("b", "foo", "foo3", 0).unwrap(), all);
    assert_eq!(tx.range("b", "foo", "", 0).unwrap(), vec![kv("foo", "foo-v")]);
}

/// etcd TestBackendWritebackForEach / tx_buffer tests: for_each equals range, in order, and an
/// error from the callback stops the walk.
#[test]
fn for_each_equals_range() {
    let (db, _d) = Backend::open_temp().unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("key").unwrap();
    // unordered puts (etcd TestBackendWritebackForEach writes out of order)
    for i in [5u32, 1, 9, 3, 7, 0, 8, 2, 6, 4] {
        tx.put("key", format!("{i:04}"), format!("v{i}")).unwrap();
    }
    let mut in_tx = Vec::new();
    tx.for_each("key", |k, v| {
        in_tx.push((k.to_vec(), v.to_vec()));
        Ok(())
    })
    .unwrap();
    assert_eq!(in_tx, tx.range("key", "0", "9999", 0).unwrap());
    drop(tx);
    let r = db.read_tx();
    let mut seen = Vec::new();
    r.for_each("key", |k, v| {
        seen.push((k.to_vec(), v.to_vec()));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, in_tx);
    assert_eq!(seen.len(), 10);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));

    let mut n = 0;
    let err = r.for_each("key", |_, _| {
        n += 1;
        if n == 3 { Err(Error::Closed) } else { Ok(()) }
    });
    assert!(matches!(err, Err(Error::Closed)));
    assert_eq!(n, 3, "the error stops the walk");

    // zero-copy scan agrees too
    let scanned: Vec<_> = r
        .scan("key", "", None)
        .unwrap()
        .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(scanned, seen);
}

/// etcd #21986: the same key written twice in one BatchTx reads back the last value everywhere.
/// Also overwrite-then-delete and delete-then-put in one transaction.
#[test]
fn overwrite_and_delete_in_one_tx() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.put("b", "k", "1").unwrap();
    tx.put("b", "k", "2").unwrap();
    tx.put("b", "gone", "x").unwrap();
    tx.put("b", "gone", "y").unwrap();
    tx.delete("b", "gone").unwrap();
    tx.put("b", "back", "x").unwrap();
    tx.delete("b", "back").unwrap();
    tx.put("b", "back", "z").unwrap();
    assert_eq!(tx.get("b", "k").unwrap(), Some(b"2".to_vec()));
    drop(tx);
    let check = |db: &Backend| {
        let r = db.read_tx();
        assert_eq!(r.get("b", "k").unwrap(), Some(b"2".to_vec()));
        assert_eq!(r.get("b", "gone").unwrap(), None);
        assert_eq!(r.get("b", "back").unwrap(), Some(b"z".to_vec()));
        assert_eq!(r.range("b", "a", "z", 0).unwrap(), vec![kv("back", "z"), kv("k", "2")]);
    };
    check(&db);
    db.close().unwrap();
    check(&open(dir.path()));
}

#[test]
fn buckets_create_delete_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut tx = db.batch_tx();
    assert!(matches!(tx.put("missing", "k", "v"), Err(Error::BucketNotFound { bucket }) if bucket == b"missing"));
    assert!(matches!(tx.get("missing", "k"), Err(Error::BucketNotFound { .. })));
    assert!(matches!(tx.delete("missing", "k"), Err(Error::BucketNotFound { .. })));
    tx.create_bucket("b").unwrap();
    tx.create_bucket("b").unwrap(); // no-op
    tx.create_bucket("a").unwrap();
    tx.put("b", "k", "v").unwrap();
    assert_eq!(tx.buckets(), vec![b"a".to_vec(), b"b".to_vec()]);
    tx.delete_bucket("nope").unwrap(); // no-op
    tx.delete_bucket("b").unwrap();
    assert!(matches!(tx.get("b", "k"), Err(Error::BucketNotFound { .. })));
    tx.create_bucket("b").unwrap();
    assert_eq!(tx.get("b", "k").unwrap(), None, "a re-created bucket starts empty");
    tx.put("b", "k2", "v2").unwrap();
    drop(tx);
    assert!(matches!(db.read_tx().range("zz", "a", "b", 0), Err(Error::BucketNotFound { .. })));
    assert!(matches!(db.read_tx().for_each("zz", |_, _| Ok(())), Err(Error::BucketNotFound { .. })));
    db.close().unwrap();
    let db = open(dir.path());
    let r = db.read_tx();
    assert_eq!(r.buckets(), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(r.range("b", "a", "z", 0).unwrap(), vec![kv("k2", "v2")]);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let (db, _d) = Backend::open_temp().unwrap();
    let mut tx = db.batch_tx();
    assert!(matches!(tx.create_bucket(""), Err(Error::EmptyKey)));
    tx.create_bucket("b").unwrap();
    assert!(matches!(tx.put("b", "", "v"), Err(Error::EmptyKey)));
    assert!(matches!(tx.get("b", ""), Err(Error::EmptyKey)));
    let big_key = vec![b'k'; logtree::MAX_KEY_LEN + 1];
    assert!(matches!(tx.put("b", &big_key, "v"), Err(Error::KeyTooLarge { .. })));
    assert!(matches!(tx.create_bucket(&big_key), Err(Error::KeyTooLarge { .. })));
    let max_key = vec![b'k'; logtree::MAX_KEY_LEN];
    tx.put("b", &max_key, "v").unwrap();
    let big_value = vec![0u8; logtree::MAX_VALUE_LEN + 1];
    assert!(matches!(tx.put("b", "k", &big_value), Err(Error::ValueTooLarge { .. })));
    tx.put("b", "empty-value", "").unwrap();
    assert_eq!(tx.get("b", "empty-value").unwrap(), Some(vec![]));
    // A failed call changes nothing and the transaction goes on.
    tx.put("b", "after", "ok").unwrap();
    drop(tx);
    let r = db.read_tx();
    assert_eq!(r.get("b", "after").unwrap(), Some(b"ok".to_vec()));
    assert_eq!(r.get("b", &max_key).unwrap(), Some(b"v".to_vec()));
    assert_eq!(r.bucket_len("b").unwrap(), 3);

    let mut c = Config::new(_d.path().join("x"));
    c.batch_limit = 0;
    assert!(matches!(Backend::open(c), Err(Error::InvalidConfig(_))));
    let mut c = Config::new(_d.path().join("x"));
    c.segment_size = 10;
    assert!(matches!(Backend::open(c), Err(Error::InvalidConfig(_))));
}

/// Visibility: a BatchTx's writes become visible when it is dropped — not before, and before
/// they are durable (etcd's writeback on unlock).
#[test]
fn visible_at_drop_not_before_and_before_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path());
    c.batch_interval = Duration::ZERO; // no timer: only explicit commits make things durable
    let db = Backend::open(c).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.put("b", "k", "v").unwrap();
    let during = db.read_tx();
    assert!(!during.has_bucket("b"), "nothing shows before the BatchTx ends");
    drop(tx);
    assert!(!during.has_bucket("b"), "a snapshot never changes");
    let after = db.read_tx();
    assert_eq!(after.get("b", "k").unwrap(), Some(b"v".to_vec()));
    let s = db.stats();
    assert!(s.durable_seq < s.written_seq, "visible but not yet durable: {s:?}");
    db.force_commit().unwrap();
    let s = db.stats();
    assert_eq!(s.durable_seq, s.written_seq);
}

/// etcd TestBackendBatchLimit-like: with batch_limit 1 every BatchTx is durable when dropped.
#[test]
fn batch_limit_commits_at_drop() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path());
    c.batch_interval = Duration::ZERO;
    c.batch_limit = 1;
    let db = Backend::open(c).unwrap();
    for i in 0..5 {
        let mut tx = db.batch_tx();
        tx.create_bucket("b").unwrap();
        tx.put("b", format!("k{i}"), "v").unwrap();
        drop(tx);
        let s = db.stats();
        assert_eq!(s.durable_seq, s.written_seq, "after drop {i}: {s:?}");
    }
    // With a limit of 3 operations, the third pending op triggers the commit.
    drop(db);
    let mut c = Config::new(dir.path());
    c.batch_interval = Duration::ZERO;
    c.batch_limit = 3;
    let db = Backend::open(c).unwrap();
    let put = |k: &str| {
        let mut tx = db.batch_tx();
        tx.put("b", k, "v").unwrap();
    };
    put("x1");
    put("x2");
    let s = db.stats();
    assert!(s.durable_seq < s.written_seq, "2 of 3: {s:?}");
    put("x3");
    let s = db.stats();
    assert_eq!(s.durable_seq, s.written_seq, "3 of 3: {s:?}");
}

/// etcd TestBackendBatchInterval: pending writes become durable within the interval, without
/// any explicit commit.
#[test]
fn batch_interval_commits_in_background() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path());
    c.batch_interval = Duration::from_millis(5);
    let db = Backend::open(c).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.put("b", "k", "v").unwrap();
    drop(tx);
    let written = db.stats().written_seq;
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.stats().durable_seq < written {
        assert!(Instant::now() < deadline, "the committer never committed");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An idle engine does no I/O: the committer does not sync when nothing is pending. (The
/// durable sequence number only moves when there is something to make durable.)
#[test]
fn empty_transactions_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let size = db.size();
    for _ in 0..10 {
        let tx = db.batch_tx();
        drop(tx);
        let mut tx = db.batch_tx();
        tx.delete_bucket("none").unwrap();
        drop(tx);
    }
    assert_eq!(db.size(), size);
    assert_eq!(db.stats().written_seq, 0);
    assert_eq!(db.read_tx().seq(), 0);
}

/// A ReadTx taken before 10,000 later writes still reads its old view, including across
/// segment roll-overs and bucket deletion.
#[test]
fn snapshot_survives_10k_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.segment_size = 64 << 10;
    let db = Backend::open(c).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    for i in 0..1000u32 {
        tx.put("b", i.to_be_bytes(), format!("old-{i}")).unwrap();
    }
    drop(tx);
    let snap = db.read_tx();
    let before_segments = db.stats().segments;
    for round in 0..10u32 {
        let mut tx = db.batch_tx();
        for i in 0..1000u32 {
            if i % 3 == 0 {
                tx.delete("b", i.to_be_bytes()).unwrap();
            } else {
                tx.put("b", i.to_be_bytes(), format!("new-{round}-{i}-{}", "x".repeat(40))).unwrap();
            }
        }
        drop(tx);
    }
    let mut tx = db.batch_tx();
    tx.delete_bucket("b").unwrap();
    drop(tx);
    assert!(db.stats().segments > before_segments, "the writes rolled over segments");
    assert_eq!(snap.bucket_len("b").unwrap(), 1000);
    for i in 0..1000u32 {
        assert_eq!(snap.get("b", i.to_be_bytes()).unwrap(), Some(format!("old-{i}").into_bytes()));
    }
    assert!(!db.read_tx().has_bucket("b"));
}

/// One writer at a time: a second batch_tx() waits; readers never do.
#[test]
fn one_writer_readers_never_wait() {
    let (db, _d) = Backend::open_temp().unwrap();
    let db = Arc::new(db);
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.put("b", "k", "1").unwrap();
    drop(tx);

    let held = db.batch_tx(); // hold the writer
    // Readers proceed while it is held.
    assert_eq!(db.read_tx().get("b", "k").unwrap(), Some(b"1".to_vec()));
    let got_it = Arc::new(AtomicBool::new(false));
    let t = {
        let (db, got_it) = (db.clone(), got_it.clone());
        std::thread::spawn(move || {
            let mut tx = db.batch_tx();
            got_it.store(true, Ordering::SeqCst);
            tx.put("b", "k", "2").unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(!got_it.load(Ordering::SeqCst), "the second writer must wait");
    drop(held);
    t.join().unwrap();
    assert!(got_it.load(Ordering::SeqCst));
    assert_eq!(db.read_tx().get("b", "k").unwrap(), Some(b"2".to_vec()));
}

/// A second batch_tx() on the thread that holds one would deadlock; it is unusable instead.
#[test]
fn same_thread_second_writer_is_unusable_not_a_deadlock() {
    let (db, _d) = Backend::open_temp().unwrap();
    let mut first = db.batch_tx();
    first.create_bucket("b").unwrap();
    let mut second = db.batch_tx();
    assert!(matches!(second.put("b", "k", "v"), Err(Error::TxUnusable(_))));
    assert!(matches!(second.create_bucket("c"), Err(Error::TxUnusable(_))));
    drop(second);
    first.put("b", "k", "v").unwrap();
    first.commit().unwrap();
    let mut third = db.batch_tx();
    third.put("b", "k2", "v").unwrap();
    assert!(matches!(db.batch_tx().commit(), Err(Error::TxUnusable(_))));
}

#[test]
fn rollback_and_panic_discard_the_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.put("b", "keep", "1").unwrap();
    tx.commit().unwrap();
    let mut tx = db.batch_tx();
    tx.put("b", "keep", "2").unwrap();
    tx.put("b", "new", "x").unwrap();
    tx.delete_bucket("b").unwrap();
    tx.rollback();
    let check = |db: &Backend| {
        let r = db.read_tx();
        assert_eq!(r.get("b", "keep").unwrap(), Some(b"1".to_vec()));
        assert_eq!(r.get("b", "new").unwrap(), None);
    };
    check(&db);
    let db = Arc::new(db);
    let db2 = db.clone();
    let r = std::thread::spawn(move || {
        let mut tx = db2.batch_tx();
        tx.put("b", "keep", "3").unwrap();
        panic!("user code panics mid-transaction");
    })
    .join();
    assert!(r.is_err());
    check(&db);
    // The writer is usable again.
    let mut tx = db.batch_tx();
    tx.put("b", "after", "y").unwrap();
    tx.commit().unwrap();
    let db = Arc::into_inner(db).unwrap();
    db.close().unwrap();
    let db = open(dir.path());
    check(&db);
    assert_eq!(db.read_tx().get("b", "after").unwrap(), Some(b"y".to_vec()));
}

#[test]
fn exclusive_open_and_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.put("b", "k", "v").unwrap();
    tx.commit().unwrap();
    assert!(matches!(Backend::open(config(dir.path())), Err(Error::Locked { .. })));
    let mut ro = config(dir.path());
    ro.read_only = true;
    assert!(matches!(Backend::open(ro.clone()), Err(Error::Locked { .. })), "a writer excludes readers too");
    db.close().unwrap();

    let files_before = snapshot_files(dir.path());
    let r1 = Backend::open(ro.clone()).unwrap();
    let r2 = Backend::open(ro.clone()).expect("read-only opens share the lock");
    assert!(matches!(Backend::open(config(dir.path())), Err(Error::Locked { .. })));
    assert_eq!(r1.read_tx().get("b", "k").unwrap(), Some(b"v".to_vec()));
    let mut tx = r2.batch_tx();
    assert_eq!(tx.get("b", "k").unwrap(), Some(b"v".to_vec()));
    assert!(matches!(tx.put("b", "k", "w"), Err(Error::ReadOnly)));
    assert!(matches!(tx.create_bucket("c"), Err(Error::ReadOnly)));
    drop(tx);
    r1.force_commit().unwrap();
    drop(r1);
    r2.close().unwrap();
    assert_eq!(snapshot_files(dir.path()), files_before, "read-only opens modify nothing");

    let empty = tempfile::tempdir().unwrap();
    let mut ro = config(&empty.path().join("none"));
    ro.read_only = true;
    assert!(Backend::open(ro).is_err(), "read-only open of a missing database fails");
    assert!(!empty.path().join("none").exists(), "and creates nothing");
}

fn snapshot_files(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Not a logtree directory: a file where a segment should be, or an unwritable place.
#[test]
fn foreign_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    drop(db);
    std::fs::write(dir.path().join("seg-0000000001.log"), b"this is not a logtree segment at all, no").unwrap();
    let e = Backend::open(config(dir.path())).unwrap_err();
    assert!(matches!(e, Error::NotLogtree { .. }), "{e}");
    std::fs::write(dir.path().join("MANIFEST"), b"garbage").unwrap();
    let e = Backend::open(config(dir.path())).unwrap_err();
    assert!(e.is_corruption(), "{e}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = Backend::open(config(&file)).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "a path that is a file: {e}");
}

/// size() is what the files take; size_in_use() counts only live records, exactly, through
/// overwrites, deletes, bucket deletion and reopen.
#[test]
fn size_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.segment_size = 16 << 10;
    let db = Backend::open(c.clone()).unwrap();
    let recount = |db: &Backend| -> u64 {
        let r = db.read_tx();
        let mut total = 0u64;
        for b in r.buckets() {
            total += 9 + b.len() as u64; // a create-bucket record
            r.for_each(&b, |k, v| {
                total += 13 + k.len() as u64 + v.len() as u64; // a put record
                Ok(())
            })
            .unwrap();
        }
        total
    };
    let mut tx = db.batch_tx();
    tx.create_bucket("a").unwrap();
    tx.create_bucket("bb").unwrap();
    for i in 0..300u32 {
        tx.put("a", format!("k{i}"), vec![1u8; (i % 50) as usize]).unwrap();
        tx.put("bb", format!("k{i}"), vec![2u8; 100]).unwrap();
    }
    drop(tx);
    assert_eq!(db.size_in_use(), recount(&db));
    let in_use_before = db.size_in_use();
    let size_before = db.size();
    let mut tx = db.batch_tx();
    for i in 0..300u32 {
        tx.put("a", format!("k{i}"), vec![3u8; 10]).unwrap();
        if i % 2 == 0 {
            tx.delete("bb", format!("k{i}")).unwrap();
        }
    }
    drop(tx);
    assert_eq!(db.size_in_use(), recount(&db));
    assert!(db.size_in_use() < in_use_before);
    assert!(db.size() > size_before, "overwrites and deletes only add to the log");
    let mut tx = db.batch_tx();
    tx.delete_bucket("bb").unwrap();
    drop(tx);
    assert_eq!(db.size_in_use(), recount(&db));
    assert!(db.size() >= db.size_in_use());
    assert_eq!(db.size(), common::bytes_on_disk(dir.path()), "size() is what the files take");
    let in_use = db.size_in_use();
    db.close().unwrap();
    let db = Backend::open(c).unwrap();
    assert_eq!(db.size_in_use(), in_use, "exact after reopen");
    assert_eq!(db.size_in_use(), recount(&db));
    assert_eq!(db.size(), common::bytes_on_disk(dir.path()));
}

/// Many small transactions from several threads, then reopen: everything is there, and the
/// snapshot each reader took stays consistent (a reader never sees half a transaction).
#[test]
fn concurrent_writers_and_readers_see_whole_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.segment_size = 32 << 10;
    c.batch_interval = Duration::from_millis(1);
    let db = Arc::new(Backend::open(c.clone()).unwrap());
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    drop(tx);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut checks = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Each transaction writes a pair (a/i, b/i); a snapshot has both or neither.
                    let r = db.read_tx();
                    let a = r.range("b", "a/", "a0", 0).unwrap();
                    let b = r.range("b", "b/", "b0", 0).unwrap();
                    assert_eq!(a.len(), b.len(), "half a transaction is visible");
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    let writers: Vec<_> = (0..3u32)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..300u32 {
                    let mut tx = db.batch_tx();
                    tx.put("b", format!("a/{w}/{i:05}"), "x".repeat(50)).unwrap();
                    tx.put("b", format!("b/{w}/{i:05}"), "y".repeat(50)).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let db = Arc::into_inner(db).unwrap();
    db.close().unwrap();
    let db = Backend::open(c).unwrap();
    assert_eq!(db.read_tx().bucket_len("b").unwrap(), 1800);
    assert_eq!(db.recovery_stats().torn_bytes, 0);
}

/// A large transaction spans several frames and segments and is still atomic and readable.
#[test]
fn large_transaction_spans_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.segment_size = 64 << 10;
    let db = Backend::open(c.clone()).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    for i in 0..3000u32 {
        tx.put("b", format!("{i:06}"), format!("{i}-{}", "v".repeat(200))).unwrap();
    }
    // values in earlier parts and in the unwritten frame both read back
    assert_eq!(tx.get("b", "000000").unwrap().unwrap(), format!("0-{}", "v".repeat(200)).into_bytes());
    assert_eq!(tx.get("b", "002999").unwrap().unwrap(), format!("2999-{}", "v".repeat(200)).into_bytes());
    // a value larger than a segment gets one of its own
    tx.put("b", "huge", vec![7u8; 200 << 10]).unwrap();
    drop(tx);
    assert!(db.stats().segments > 5);
    db.close().unwrap();
    let db = Backend::open(c).unwrap();
    let r = db.read_tx();
    assert_eq!(r.bucket_len("b").unwrap(), 3001);
    assert_eq!(r.get("b", "huge").unwrap().unwrap(), vec![7u8; 200 << 10]);
    assert_eq!(r.get("b", "001234").unwrap().unwrap(), format!("1234-{}", "v".repeat(200)).into_bytes());
}

#[test]
fn reopen_keeps_everything_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for round in 0..5u32 {
        let db = open(dir.path());
        let r = db.read_tx();
        if round > 0 {
            let got: BTreeMap<_, _> = r.range("b", "", "\u{ff}", 0).unwrap().into_iter().collect();
            assert_eq!(got, model, "round {round}");
        }
        let mut tx = db.batch_tx();
        tx.create_bucket("b").unwrap();
        for i in 0..100u32 {
            let k = format!("k{:03}", (i * 7 + round * 13) % 150).into_bytes();
            if i % 5 == 4 {
                tx.delete("b", &k).unwrap();
                model.remove(&k);
            } else {
                let v = format!("{round}-{i}").into_bytes();
                tx.put("b", &k, &v).unwrap();
                model.insert(k, v);
            }
        }
        drop(tx);
        if round % 2 == 0 {
            db.close().unwrap();
        } // else: dropped without close (best-effort commit in Drop)
    }
}

/// Small transactions are replayed into the catalog of the view they replace when no reader
/// holds it (the writer then alternates between two catalogs instead of copying paths). Readers
/// taken at any point, kept across thousands of such transactions (inserts, overwrites,
/// deletes, bucket creations and deletions, rollbacks) and dropped in any order, keep reading
/// exactly the state they were taken at; the live state and a reopen match the model.
#[test]
fn small_transactions_never_change_a_view_a_reader_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut model = Content::new();
    let dump = content_of;
    let mut kept: Vec<(logtree::ReadTx, Content)> = Vec::new();
    let mut rng = common::Rng(0x2545_f491_4f6c_dd1d);
    let mut rnd = |n: u64| rng.below(n);
    let mut tx = db.batch_tx();
    tx.create_bucket("a").unwrap();
    tx.commit().unwrap();
    for i in 0..4000u64 {
        let mut tx = db.batch_tx();
        let mut pending = model.clone();
        let bucket = if i % 500 < 400 { b"a".to_vec() } else { b"b".to_vec() };
        if i % 500 >= 400 {
            // A no-op once it exists; repeated because the transaction creating it may be the
            // one rolled back.
            tx.create_bucket("b").unwrap();
        }
        if i % 500 == 499 {
            tx.delete_bucket("b").unwrap();
            pending.retain(|(b, _), _| b != b"b");
        } else {
            for _ in 0..=rnd(3) {
                let k = format!("k{:03}", rnd(300)).into_bytes();
                if rnd(4) == 0 {
                    tx.delete(&bucket, &k).unwrap();
                    pending.remove(&(bucket.clone(), k));
                } else {
                    let v = format!("v{i}").into_bytes();
                    tx.put(&bucket, &k, &v).unwrap();
                    pending.insert((bucket.clone(), k), v);
                }
            }
        }
        if rnd(20) == 0 {
            tx.rollback();
        } else {
            drop(tx);
            model = pending;
        }
        if rnd(10) == 0 {
            kept.push((db.read_tx(), model.clone()));
        }
        if !kept.is_empty() && rnd(8) == 0 {
            let (old, want) = kept.swap_remove(rnd(kept.len() as u64) as usize);
            assert_eq!(dump(&old), want, "a view changed after it was taken (transaction {i})");
        }
    }
    for (old, want) in &kept {
        assert_eq!(&dump(old), want, "a view changed after it was taken");
    }
    assert_eq!(dump(&db.read_tx()), model);
    db.close().unwrap();
    assert_eq!(dump(&open(dir.path()).read_tx()), model);
}

/// Opening replays the log; a bucket that is empty when a run of operations reaches it gets
/// its keys in one bottom-up build (the last operation on each key decides), any other by
/// inserts. Both must leave exactly what was written: overwrites, deletes (also of keys never
/// written), a key deleted and written again, keys over 1 KiB (which the build declines), and
/// a bucket deleted and created again — a bucket operation ends a run, so the operations after
/// it meet buckets that already hold keys.
#[test]
fn reopen_rebuilds_exactly_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let mut rng = common::Rng(2024);
    let db = open(path);
    for round in 0..6u64 {
        let mut tx = db.batch_tx();
        for b in ["a", "b", "c"] {
            tx.create_bucket(b).unwrap();
        }
        for i in 0..2000u64 {
            let bucket = ["a", "b", "c"][rng.below(3) as usize];
            let n = rng.below(3000);
            let mut k = format!("k{n:05}").into_bytes();
            // Only bucket "b" has keys over 1 KiB, which its build declines.
            if bucket == "b" && n.is_multiple_of(97) {
                k.resize(1100 + (n as usize % 50), b'x');
            }
            if rng.below(5) == 0 {
                tx.delete(bucket, &k).unwrap();
            } else {
                let len = rng.below(200) as usize;
                let v = rng.bytes(len);
                tx.put(bucket, &k, &v).unwrap();
            }
            if round == 2 && i == 1000 {
                tx.delete_bucket("c").unwrap();
                tx.create_bucket("c").unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let state = |db: &Backend| (content_of(&db.read_tx()), db.size_in_use(), db.hash(&[]).unwrap());
    let want = state(&db);
    assert!(want.0.len() > 3000, "the workload leaves keys in every bucket");
    db.close().unwrap();
    let db = open(path);
    let got = state(&db);
    assert!(got.0 == want.0, "the reopened content differs");
    assert_eq!((got.1, got.2), (want.1, want.2), "live bytes and hash");
}

/// A Vfs that records which directories it synced, in order, and does the real thing.
#[derive(Debug, Default)]
struct DirSyncLog(std::sync::Mutex<Vec<std::path::PathBuf>>);

impl logtree::vfs::Vfs for DirSyncLog {
    fn open(
        &self,
        path: &std::path::Path,
        mode: logtree::vfs::OpenMode,
    ) -> std::io::Result<Box<dyn logtree::vfs::VfsFile>> {
        logtree::vfs::StdVfs.open(path, mode)
    }
    fn sync_dir(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.0.lock().unwrap().push(path.to_path_buf());
        logtree::vfs::StdVfs.sync_dir(path)
    }
    common::real_directory_ops!(@but_sync_dir);
}

/// Creating a database in a new directory makes the directory itself durable: each directory
/// the open creates is synced into its parent, top down, so that a power cut after the first
/// commit cannot take the database's directory (and every synced commit in it) away. An open
/// of an existing database syncs none of its parents.
#[test]
fn an_open_that_creates_directories_syncs_their_parents() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a").join("b").join("db");
    let log = Arc::new(DirSyncLog::default());
    let mut c = Config::new(&dir);
    c.vfs = log.clone();
    let db = Backend::open(c.clone()).unwrap();
    let synced = std::mem::take(&mut *log.0.lock().unwrap());
    let parents = [tmp.path().to_path_buf(), tmp.path().join("a"), tmp.path().join("a").join("b")];
    let first = synced.iter().position(|p| *p == parents[0]).expect("the top parent is synced");
    assert_eq!(synced[first..first + 3], parents, "each new directory's parent, top down: {synced:?}");
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.put("b", "k", "v").unwrap();
    tx.commit().unwrap();
    db.close().unwrap();
    let again = Backend::open(c).unwrap();
    again.close().unwrap();
    let synced = log.0.lock().unwrap().clone();
    assert!(synced.iter().all(|p| p == &dir), "an existing database's parents are not synced: {synced:?}");
}
