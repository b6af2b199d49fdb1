//! Snapshots (write_to, restore, inspect) and the content hash.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use logtree::{Backend, Config, Error};

mod common;

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.sync = false;
    c.segment_size = 32 << 10;
    c
}

/// Fills a database with a few buckets, overwrites and deletes (so the log holds garbage).
fn populate(db: &Backend) {
    let mut tx = db.batch_tx();
    for b in ["alpha", "beta", "gamma"] {
        tx.create_bucket(b).unwrap();
    }
    for i in 0..500u32 {
        tx.put("alpha", format!("k{i:04}"), format!("v{i}").repeat(5)).unwrap();
        tx.put("beta", i.to_be_bytes(), vec![i as u8; (i % 97) as usize]).unwrap();
    }
    drop(tx);
    let mut tx = db.batch_tx();
    for i in 0..500u32 {
        if i % 3 == 0 {
            tx.delete("alpha", format!("k{i:04}")).unwrap();
        } else {
            tx.put("alpha", format!("k{i:04}"), b"second").unwrap();
        }
    }
    tx.create_bucket("empty").unwrap();
    tx.delete_bucket("gamma").unwrap();
    drop(tx);
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn dump(db: &Backend) -> Vec<(Vec<u8>, Pairs)> {
    let r = db.read_tx();
    r.buckets()
        .into_iter()
        .map(|b| {
            let mut kvs = Vec::new();
            r.for_each(&b, |k, v| {
                kvs.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
            (b, kvs)
        })
        .collect()
}

#[test]
fn write_to_restore_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::open(config(&dir.path().join("src"))).unwrap();
    populate(&db);
    let snap = db.snapshot().unwrap();
    assert_eq!(db.stats().durable_seq, snap.seq(), "snapshot() makes pending writes durable");
    // Writes after the snapshot do not show in it.
    let mut tx = db.batch_tx();
    tx.put("alpha", "after", "x").unwrap();
    drop(tx);
    let mut image = Vec::new();
    let n = snap.write_to(&mut image).unwrap();
    assert_eq!(n, snap.size());
    assert_eq!(image.len() as u64, n);
    assert!(n < db.size(), "the image is compacted: {n} vs {}", db.size());

    let info = logtree::inspect_snapshot(&mut image.as_slice()).unwrap();
    assert_eq!(info.size, n);
    assert_eq!(info.buckets, 3);
    assert_eq!(info.keys, snap.read_tx().bucket_len("alpha").unwrap() as u64 + 500);
    assert_eq!(info.hash, logtree::Backend::hash(&db, &[(b"alpha", b"after")]).unwrap());

    let target = dir.path().join("restored");
    logtree::restore(&mut image.as_slice(), &target).unwrap();
    let copy = Backend::open(config(&target)).unwrap();
    assert_eq!(dump(&copy).len(), 3);
    let snap_dump = {
        let r = snap.read_tx();
        r.buckets().len()
    };
    assert_eq!(snap_dump, 3);
    assert_eq!(copy.hash(&[]).unwrap(), info.hash);
    assert_eq!(copy.read_tx().get("alpha", "after").unwrap(), None);
    assert_eq!(copy.size_in_use(), {
        let mut tx = db.batch_tx();
        tx.delete("alpha", "after").unwrap();
        drop(tx);
        db.size_in_use()
    });
    assert_eq!(dump(&copy), dump(&db));
}

#[test]
fn restore_refuses_damaged_images_and_leaves_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::open(config(&dir.path().join("src"))).unwrap();
    populate(&db);
    let mut image = Vec::new();
    db.snapshot().unwrap().write_to(&mut image).unwrap();
    let parent = dir.path().join("targets");
    std::fs::create_dir(&parent).unwrap();
    let target = parent.join("db");
    let listing = || std::fs::read_dir(&parent).unwrap().count();

    // Truncated at many points, including every byte of the last 64.
    let cuts: Vec<usize> = (0..image.len()).step_by(97).chain(image.len() - 64..image.len()).collect();
    for cut in cuts {
        let e = logtree::restore(&mut &image[..cut], &target).unwrap_err();
        assert!(e.is_corruption(), "cut {cut}: {e}");
        assert!(!target.exists(), "cut {cut} left a database");
        assert_eq!(listing(), 0, "cut {cut} left a temporary directory");
    }
    // A flipped byte anywhere (sampled) is caught.
    for at in (0..image.len()).step_by(61) {
        let mut bad = image.clone();
        bad[at] ^= 0x10;
        let e = logtree::restore(&mut bad.as_slice(), &target).unwrap_err();
        assert!(e.is_corruption(), "flip at {at}: {e}");
        assert!(!target.exists());
    }
    // Trailing garbage.
    let mut long = image.clone();
    long.push(0);
    assert!(logtree::restore(&mut long.as_slice(), &target).unwrap_err().is_corruption());
    assert_eq!(listing(), 0);
    // Not an image at all.
    let e = logtree::restore(&mut &b"hello world, this is not an image of anything"[..], &target).unwrap_err();
    assert!(matches!(e, Error::NotLogtree { .. }), "{e}");

    // A non-empty target is refused and untouched; an empty one is used.
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep.txt"), b"mine").unwrap();
    assert!(matches!(logtree::restore(&mut image.as_slice(), &target), Err(Error::NotEmpty { .. })));
    assert_eq!(std::fs::read(target.join("keep.txt")).unwrap(), b"mine");
    std::fs::remove_file(target.join("keep.txt")).unwrap();
    logtree::restore(&mut image.as_slice(), &target).unwrap();
    assert_eq!(Backend::open(config(&target)).unwrap().hash(&[]).unwrap(), db.hash(&[]).unwrap());
}

#[test]
fn snapshot_of_empty_database_and_streaming_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::open(config(&dir.path().join("src"))).unwrap();
    let snap = db.snapshot().unwrap();
    let path = dir.path().join("image");
    let mut f = std::fs::File::create(&path).unwrap();
    assert_eq!(snap.write_to(&mut f).unwrap(), snap.size());
    f.flush().unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), snap.size());
    logtree::restore(&mut std::fs::File::open(&path).unwrap(), &dir.path().join("copy")).unwrap();
    let copy = Backend::open(config(&dir.path().join("copy"))).unwrap();
    assert!(copy.read_tx().buckets().is_empty());
    assert_eq!(copy.hash(&[]).unwrap(), db.hash(&[]).unwrap());
}

/// The hash is over content, not history; ignores leave pairs out; it sees pending writes.
#[test]
fn hash_is_deterministic_over_content() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = Backend::open(config(d1.path())).unwrap();
    let b = Backend::open(config(d2.path())).unwrap();
    let mut tx = a.batch_tx();
    tx.create_bucket("x").unwrap();
    tx.create_bucket("y").unwrap();
    tx.put("x", "1", "one").unwrap();
    tx.put("x", "2", "two").unwrap();
    tx.put("y", "k", "v").unwrap();
    drop(tx);
    // b reaches the same content by another history: other order, overwrites, deletes.
    let mut tx = b.batch_tx();
    tx.create_bucket("y").unwrap();
    tx.put("y", "k", "old").unwrap();
    tx.create_bucket("x").unwrap();
    tx.put("x", "2", "two").unwrap();
    tx.put("x", "3", "three").unwrap();
    drop(tx);
    assert_ne!(a.hash(&[]).unwrap(), b.hash(&[]).unwrap());
    let mut tx = b.batch_tx();
    tx.delete("x", "3").unwrap();
    tx.put("x", "1", "one").unwrap();
    tx.put("y", "k", "v").unwrap();
    drop(tx); // pending, not yet durable: still hashed
    assert_eq!(a.hash(&[]).unwrap(), b.hash(&[]).unwrap());

    // The exact definition (DESIGN.md §9.2): buckets ascending, tag 1 and the name, then per
    // pair tag 2, the key and the value; each part preceded by its length, u32 LE.
    let defined = |parts: &[(Option<u8>, &[u8])]| {
        let mut h = crc32fast::Hasher::new();
        for &(tag, part) in parts {
            if let Some(t) = tag {
                h.update(&[t]);
            }
            h.update(&(part.len() as u32).to_le_bytes());
            h.update(part);
        }
        h.finalize()
    };
    let (bucket, pair) = (Some(1), Some(2));
    let x1 = [(bucket, &b"x"[..]), (pair, b"1"), (None, b"one")];
    let rest = [(pair, &b"2"[..]), (None, b"two"), (bucket, b"y"), (pair, b"k"), (None, b"v")];
    assert_eq!(a.hash(&[]).unwrap(), defined(&[&x1[..], &rest].concat()));
    let without_x1 = [&x1[..1], &rest].concat();
    assert_eq!(a.hash(&[(b"x", b"1")]).unwrap(), defined(&without_x1), "ignores leave a pair out");
    assert_eq!(a.hash(&[(b"y", b"1")]).unwrap(), a.hash(&[]).unwrap(), "an ignore names bucket and key");

    // Unchanged by reopen.
    let before = a.hash(&[]).unwrap();
    a.close().unwrap();
    assert_eq!(Backend::open(config(d1.path())).unwrap().hash(&[]).unwrap(), before);
}

/// Contents that differ only by where a name, key or value ends hash differently: etcd's hash,
/// and this one before image version 2, fed the bare bytes and gave each group one hash.
#[test]
fn hash_tells_apart_contents_that_differ_only_by_where_parts_end() {
    let hash_of = |build: &dyn Fn(&mut logtree::BatchTx<'_>)| {
        let (db, _dir) = Backend::open_temp().unwrap();
        let mut tx = db.batch_tx();
        build(&mut tx);
        tx.commit().unwrap();
        db.hash(&[]).unwrap()
    };
    let groups: [Vec<u32>; 2] = [
        vec![
            hash_of(&|tx| {
                tx.create_bucket("a").unwrap();
                tx.create_bucket("b").unwrap();
            }),
            hash_of(&|tx| tx.create_bucket("ab").unwrap()),
            hash_of(&|tx| {
                tx.create_bucket("a").unwrap();
                tx.put("a", "b", "").unwrap();
            }),
        ],
        vec![
            hash_of(&|tx| {
                tx.create_bucket("b").unwrap();
                tx.put("b", "k1", "v").unwrap();
            }),
            hash_of(&|tx| {
                tx.create_bucket("b").unwrap();
                tx.put("b", "k", "1v").unwrap();
            }),
            hash_of(&|tx| {
                tx.create_bucket("b").unwrap();
                tx.put("b", "k", "1").unwrap();
                tx.put("b", "v", "").unwrap();
            }),
        ],
    ];
    for g in &groups {
        for i in 0..g.len() {
            for j in i + 1..g.len() {
                assert_ne!(g[i], g[j], "contents {i} and {j} of {g:?} hash alike");
            }
        }
    }
}

/// An image of version 1 (before the hash took tags and lengths) still inspects and restores:
/// its end record is verified by the old definition, and the figures reported are the current
/// definition's, as the restored database hashes. One whose hash is wrong by its own
/// definition is refused.
#[test]
fn version_1_images_are_still_read() {
    let (db, _dir) = Backend::open_temp().unwrap();
    populate(&db);
    let mut image = Vec::new();
    db.snapshot().unwrap().write_to(&mut image).unwrap();
    assert_eq!(u32::from_le_bytes(image[8..12].try_into().unwrap()), 2, "images are written as version 2");

    // The same image as version 1 wrote it: header version 1, end record's hash over bare bytes.
    let mut v1 = image.clone();
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32fast::hash(&v1[..28]);
    v1[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut old = crc32fast::Hasher::new();
    let tx = db.read_tx();
    for name in tx.buckets() {
        old.update(&name);
        tx.for_each(&name, |k, v| {
            old.update(k);
            old.update(v);
            Ok(())
        })
        .unwrap();
    }
    let end = v1.len() - 29; // the end record: crc, len, 21-byte body
    let set_end_hash = |img: &mut Vec<u8>, h: u32| {
        img[end + 8 + 17..].copy_from_slice(&h.to_le_bytes());
        let crc = crc32fast::hash(&img[end + 4..]);
        img[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    };
    set_end_hash(&mut v1, old.finalize());

    let info = logtree::inspect_snapshot(&mut v1.as_slice()).unwrap();
    assert_eq!(info, logtree::inspect_snapshot(&mut image.as_slice()).unwrap());
    assert_eq!(info.hash, db.hash(&[]).unwrap());
    let target = tempfile::tempdir().unwrap();
    logtree::restore(&mut v1.as_slice(), &target.path().join("db")).unwrap();
    let copy = Backend::open(config(&target.path().join("db"))).unwrap();
    assert_eq!(copy.hash(&[]).unwrap(), db.hash(&[]).unwrap());

    // A version 1 image carrying the new definition's hash does not verify, nor the reverse.
    let mut wrong = v1.clone();
    set_end_hash(&mut wrong, db.hash(&[]).unwrap());
    assert!(logtree::inspect_snapshot(&mut wrong.as_slice()).unwrap_err().is_corruption());
    let mut wrong = image.clone();
    let old_hash = u32::from_le_bytes(v1[v1.len() - 4..].try_into().unwrap());
    set_end_hash(&mut wrong, old_hash);
    assert!(logtree::inspect_snapshot(&mut wrong.as_slice()).unwrap_err().is_corruption());
}

/// A record of a hand-built image: (bucket id, name or key, value); no value is a bucket's
/// creation.
type ImageRecord<'a> = (u32, &'a [u8], Option<&'a [u8]>);

/// An image built record by record, with valid checksums, counts and hash (computed in the
/// records' order by the definition of DESIGN.md §9.2).
fn image_of(records: &[ImageRecord<'_>]) -> Vec<u8> {
    let mut img = vec![0u8; 32];
    img[..8].copy_from_slice(b"LOGTREE\0");
    img[8..12].copy_from_slice(&2u32.to_le_bytes());
    img[12..16].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32fast::hash(&img[..28]);
    img[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut hash = crc32fast::Hasher::new();
    let part = |h: &mut crc32fast::Hasher, b: &[u8]| {
        h.update(&(b.len() as u32).to_le_bytes());
        h.update(b);
    };
    let (mut buckets, mut keys) = (0u64, 0u64);
    let record = |img: &mut Vec<u8>, body: &[u8]| {
        let len = (body.len() as u32).to_le_bytes();
        let mut c = crc32fast::Hasher::new();
        c.update(&len);
        c.update(body);
        img.extend_from_slice(&c.finalize().to_le_bytes());
        img.extend_from_slice(&len);
        img.extend_from_slice(body);
    };
    for &(id, name_or_key, value) in records {
        let mut body = Vec::new();
        match value {
            None => {
                body.push(3);
                body.extend_from_slice(&id.to_le_bytes());
                body.extend_from_slice(&(name_or_key.len() as u32).to_le_bytes());
                body.extend_from_slice(name_or_key);
                hash.update(&[1]);
                part(&mut hash, name_or_key);
                buckets += 1;
            }
            Some(v) => {
                body.push(1);
                body.extend_from_slice(&id.to_le_bytes());
                body.extend_from_slice(&(name_or_key.len() as u32).to_le_bytes());
                body.extend_from_slice(&(v.len() as u32).to_le_bytes());
                body.extend_from_slice(name_or_key);
                body.extend_from_slice(v);
                hash.update(&[2]);
                part(&mut hash, name_or_key);
                part(&mut hash, v);
                keys += 1;
            }
        }
        record(&mut img, &body);
    }
    let mut end = vec![0xFE];
    end.extend_from_slice(&buckets.to_le_bytes());
    end.extend_from_slice(&keys.to_le_bytes());
    end.extend_from_slice(&hash.finalize().to_le_bytes());
    record(&mut img, &end);
    img
}

/// An image's records must come as `write_to` writes them — buckets by name, each followed by
/// its keys in order, each key once, within the engine's limits: one out of order is refused by
/// `inspect_snapshot` too, not only by `restore` once it has built the whole database and found
/// the hash different.
#[test]
fn images_out_of_order_are_refused_by_inspect_and_restore() {
    let b: Option<&[u8]> = None;
    let v = Some(&b"v"[..]);
    let good = image_of(&[(1, b"a", b), (1, b"k1", v), (1, b"k2", v), (2, b"b", b), (2, b"k1", v)]);
    let info = logtree::inspect_snapshot(&mut good.as_slice()).unwrap();
    assert_eq!((info.buckets, info.keys), (2, 3), "the hand-built image is well formed");
    let dir = tempfile::tempdir().unwrap();
    logtree::restore(&mut good.as_slice(), &dir.path().join("good")).unwrap();
    assert_eq!(Backend::open(config(&dir.path().join("good"))).unwrap().hash(&[]).unwrap(), info.hash);

    let long = vec![b'x'; logtree::MAX_KEY_LEN + 1];
    let bad: [(&str, Vec<u8>); 8] = [
        ("keys out of order", image_of(&[(1, b"a", b), (1, b"k2", v), (1, b"k1", v)])),
        ("a key twice", image_of(&[(1, b"a", b), (1, b"k1", v), (1, b"k1", Some(b"w"))])),
        ("buckets out of order", image_of(&[(1, b"b", b), (2, b"a", b)])),
        ("a put after another bucket's", image_of(&[(1, b"a", b), (2, b"b", b), (1, b"k1", v)])),
        ("an empty key", image_of(&[(1, b"a", b), (1, b"", v)])),
        // Limits the engine enforces: refused as damage, not as `EmptyKey` / `KeyTooLarge`
        // from `restore` alone (inspect used to accept them).
        ("an empty bucket name", image_of(&[(1, b"", b)])),
        ("a key too long", image_of(&[(1, b"a", b), (1, &long, v)])),
        ("a bucket name too long", image_of(&[(1, &long, b)])),
    ];
    for (what, img) in bad {
        let e = logtree::inspect_snapshot(&mut img.as_slice()).unwrap_err();
        assert!(e.is_corruption(), "{what}: inspect: {e}");
        let target = dir.path().join("bad");
        let e = logtree::restore(&mut img.as_slice(), &target).unwrap_err();
        assert!(e.is_corruption(), "{what}: restore: {e}");
        assert!(!target.exists(), "{what}: restore left a database");
    }
}

/// A restore of buckets of thousands of keys, of keys up to 2,100 bytes, of an empty bucket and of
/// a one-key bucket gives back every pair, the hash and the live bytes.
#[test]
fn restore_indexes_large_buckets_and_long_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::open(config(&dir.path().join("src"))).unwrap();
    let mut tx = db.batch_tx();
    common::put_buckets_of_every_shape(&mut tx);
    tx.commit().unwrap();
    let mut image = Vec::new();
    db.snapshot().unwrap().write_to(&mut image).unwrap();
    let target = dir.path().join("restored");
    logtree::restore(&mut image.as_slice(), &target).unwrap();
    let copy = Backend::open(config(&target)).unwrap();
    assert_eq!(dump(&copy), dump(&db));
    assert_eq!(copy.hash(&[]).unwrap(), db.hash(&[]).unwrap());
    assert_eq!(copy.size_in_use(), db.size_in_use());
}

/// Same content by different histories (deletes and re-puts, buckets deleted and re-created
/// with other ids, many segments), then defrag, restore, reopen: equal content, hash, size_in_use.
#[test]
fn hash_and_size_in_use_equal_across_histories_defrag_restore_and_segments() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = Backend::open(config(d1.path())).unwrap();
    let b = Backend::open(config(&d2.path().join("b"))).unwrap();
    let mut tx = a.batch_tx();
    tx.create_bucket("x").unwrap();
    tx.create_bucket("y").unwrap();
    for i in 0..2000u32 {
        tx.put("x", i.to_be_bytes(), vec![i as u8; 50]).unwrap();
    }
    tx.put("y", "k", "v").unwrap();
    drop(tx);
    // b: many segments, bucket delete & re-create, deletes then re-puts
    for round in 0..3 {
        let mut tx = b.batch_tx();
        tx.create_bucket("y").unwrap();
        tx.create_bucket("x").unwrap();
        tx.create_bucket("z").unwrap();
        for i in 0..2000u32 {
            tx.put("x", i.to_be_bytes(), vec![round as u8; 70]).unwrap();
        }
        drop(tx);
        let mut tx = b.batch_tx();
        tx.delete_bucket("x").unwrap();
        tx.delete_bucket("z").unwrap();
        tx.delete_bucket("y").unwrap();
        drop(tx);
    }
    let mut tx = b.batch_tx();
    tx.create_bucket("x").unwrap();
    for i in 0..2000u32 {
        tx.put("x", i.to_be_bytes(), b"tmp").unwrap();
        tx.delete("x", i.to_be_bytes()).unwrap();
    }
    drop(tx);
    let mut tx = b.batch_tx();
    for i in (0..2000u32).rev() {
        tx.put("x", i.to_be_bytes(), vec![i as u8; 50]).unwrap();
    }
    tx.create_bucket("y").unwrap();
    tx.put("y", "k", "v").unwrap();
    drop(tx);
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(a.hash(&[]).unwrap(), b.hash(&[]).unwrap());
    assert_eq!(a.size_in_use(), b.size_in_use());
    assert_eq!(a.stats().keys, b.stats().keys);
    let h = a.hash(&[]).unwrap();
    let piu = b.size_in_use();
    let st = b.defrag().unwrap();
    assert_eq!(b.hash(&[]).unwrap(), h);
    assert_eq!(st.size_in_use, piu);
    assert_eq!(b.size_in_use(), piu);
    let snap = b.snapshot().unwrap();
    let mut img = Vec::new();
    assert_eq!(snap.write_to(&mut img).unwrap(), snap.size());
    assert_eq!(img.len() as u64, snap.size());
    let t = d2.path().join("r");
    logtree::restore(&mut img.as_slice(), &t).unwrap();
    let r = Backend::open(config(&t)).unwrap();
    assert_eq!(r.hash(&[]).unwrap(), h);
    assert_eq!(r.size_in_use(), piu);
    assert_eq!(dump(&r), dump(&a));
    r.close().unwrap();
    b.close().unwrap();
    let b = Backend::open(config(&d2.path().join("b"))).unwrap();
    assert_eq!(b.hash(&[]).unwrap(), h);
    assert_eq!(b.size_in_use(), piu);
}

/// Keys and bucket names at MAX_KEY_LEN, an empty bucket: size() == bytes written; a writer that
/// fails midway is an Io error and the snapshot stays usable; a target locked by an open Backend
/// is NotEmpty; bad targets are errors, not panics.
#[test]
fn snapshot_at_size_limits_failing_writer_and_locked_target() {
    let d = tempfile::tempdir().unwrap();
    let db = Backend::open(config(&d.path().join("s"))).unwrap();
    let mut tx = db.batch_tx();
    let big = vec![b'n'; logtree::MAX_KEY_LEN];
    tx.create_bucket(&big).unwrap();
    tx.create_bucket("empty").unwrap();
    tx.put(&big, &big, vec![7u8; 1 << 20]).unwrap();
    tx.put(&big, "a", "").unwrap();
    assert!(tx.create_bucket(vec![b'n'; logtree::MAX_KEY_LEN + 1]).is_err());
    assert!(tx.create_bucket("").is_err());
    drop(tx);
    let snap = db.snapshot().unwrap();
    let mut img = Vec::new();
    assert_eq!(snap.write_to(&mut img).unwrap(), snap.size());
    assert_eq!(img.len() as u64, snap.size());
    let info = logtree::inspect_snapshot(&mut img.as_slice()).unwrap();
    assert_eq!(info.size, snap.size());
    assert_eq!(info.buckets, 2);
    struct Fail(usize);
    impl Write for Fail {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("boom"));
            }
            let n = b.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    for lim in [0usize, 10, 40, 1 << 20, (1 << 20) + 1000] {
        let r = snap.write_to(&mut Fail(lim));
        assert!(matches!(r, Err(Error::Io { .. })), "{lim}: {r:?}");
    }
    struct Zero;
    impl Write for Zero {
        fn write(&mut self, _b: &[u8]) -> std::io::Result<usize> {
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    assert!(snap.write_to(&mut Zero).is_err());
    let mut img2 = Vec::new();
    snap.write_to(&mut img2).unwrap();
    assert_eq!(img, img2);
    // restore onto a dir locked by another open Backend
    let other = d.path().join("other");
    let o = Backend::open(config(&other)).unwrap();
    let r = logtree::restore(&mut img.as_slice(), &other);
    assert!(matches!(r, Err(Error::NotEmpty { .. })));
    drop(o);
    let t = d.path().join("t");
    logtree::restore(&mut img.as_slice(), &t).unwrap();
    let c = Backend::open(config(&t)).unwrap();
    assert_eq!(dump(&c), dump(&db));
    assert_eq!(c.size_in_use(), db.size_in_use());
    // restore onto a file path, under a file: errors, no panic
    let f = d.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    assert!(matches!(logtree::restore(&mut img.as_slice(), &f), Err(Error::Io { .. })));
    assert!(matches!(logtree::restore(&mut img.as_slice(), &f.join("sub")), Err(Error::Io { .. })));
    // hash ignores
    let h_all = db.hash(&[]).unwrap();
    let h_ign = db.hash(&[(&big[..], b"a")]).unwrap();
    assert_ne!(h_all, h_ign);
    assert_eq!(db.hash(&[(b"nope", b"a")]).unwrap(), h_all, "an ignore of an absent bucket changes nothing");
}

/// Images taken while a writer commits 52-key transactions (and defrags run) hold each
/// transaction whole or not at all.
#[test]
fn snapshot_during_writes_and_defrag_is_one_transaction_consistent() {
    let d = tempfile::tempdir().unwrap();
    let db = Arc::new(Backend::open(config(d.path())).unwrap());
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    drop(tx);
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let db = db.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut tx = db.batch_tx();
                tx.put("b", "x", i.to_be_bytes()).unwrap();
                for j in 0..50u32 {
                    tx.put("b", format!("f{j}"), i.to_be_bytes()).unwrap();
                }
                tx.put("b", "y", i.to_be_bytes()).unwrap();
                drop(tx);
                i += 1;
            }
        })
    };
    for n in 0..60 {
        let snap = db.snapshot().unwrap();
        let mut img = Vec::new();
        snap.write_to(&mut img).unwrap();
        if n % 10 == 0 {
            let _ = db.defrag().unwrap();
        }
        let t = d.path().join(format!("r{n}"));
        logtree::restore(&mut img.as_slice(), &t).unwrap();
        let c = Backend::open(config(&t)).unwrap();
        let r = c.read_tx();
        let x = r.get("b", "x").unwrap();
        let y = r.get("b", "y").unwrap();
        assert_eq!(x, y, "snapshot {n} torn");
        for j in 0..50u32 {
            assert_eq!(r.get("b", format!("f{j}")).unwrap(), x);
        }
        drop(r);
        c.close().unwrap();
        std::fs::remove_dir_all(&t).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
}

/// size() equals the files' bytes (LOCK excluded) after deletes, defrag and restore; size_in_use is
/// kept by defrag and restore.
#[test]
fn size_matches_files_after_deletes_defrag_and_restore() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("db");
    let db = Backend::open(config(&p)).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.create_bucket("e").unwrap();
    for i in 0..3000u32 {
        tx.put("b", i.to_be_bytes(), vec![1u8; 100]).unwrap();
    }
    drop(tx);
    let mut tx = db.batch_tx();
    for i in 0..3000u32 {
        if i % 2 == 0 {
            tx.delete("b", i.to_be_bytes()).unwrap();
        }
    }
    drop(tx);
    db.force_commit().unwrap();
    let snap = db.snapshot().unwrap();
    let st = db.defrag().unwrap();
    assert_eq!(st.size_after, db.size());
    assert_eq!(st.size_in_use, db.size_in_use());
    let mut img = Vec::new();
    snap.write_to(&mut img).unwrap();
    drop(snap);
    assert_eq!(db.size(), common::bytes_on_disk(&p));
    let t = d.path().join("r");
    logtree::restore(&mut img.as_slice(), &t).unwrap();
    let r = Backend::open(config(&t)).unwrap();
    assert_eq!(r.size(), common::bytes_on_disk(&t));
    assert_eq!(r.size_in_use(), db.size_in_use());
    assert_eq!(r.stats().keys, 1500);
    assert_eq!(r.stats().buckets, 2);
    db.close().unwrap();
    let mut c = config(&p);
    c.read_only = true;
    let ro = Backend::open(c).unwrap();
    assert_eq!(ro.size(), common::bytes_on_disk(&p));
    assert!(matches!(ro.defrag(), Err(Error::ReadOnly)));
    let s = ro.snapshot().unwrap();
    let mut img2 = Vec::new();
    s.write_to(&mut img2).unwrap();
    assert_eq!(logtree::inspect_snapshot(&mut img2.as_slice()).unwrap().hash, ro.hash(&[]).unwrap());
}
