//! Snapshots (write_to, restore, inspect) and the content hash.

use std::io::Write;

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

    // The exact definition: crc32 of name, then key and value of each pair, buckets ascending.
    let mut h = crc32fast::Hasher::new();
    for part in [&b"x"[..], b"1", b"one", b"2", b"two", b"y", b"k", b"v"] {
        h.update(part);
    }
    assert_eq!(a.hash(&[]).unwrap(), h.finalize());
    let mut h = crc32fast::Hasher::new();
    for part in [&b"x"[..], b"2", b"two", b"y", b"k", b"v"] {
        h.update(part);
    }
    assert_eq!(a.hash(&[(b"x", b"1")]).unwrap(), h.finalize(), "ignores leave a pair out");
    assert_eq!(a.hash(&[(b"y", b"1")]).unwrap(), a.hash(&[]).unwrap(), "an ignore names bucket and key");

    // Unchanged by reopen.
    let before = a.hash(&[]).unwrap();
    a.close().unwrap();
    assert_eq!(Backend::open(config(d1.path())).unwrap().hash(&[]).unwrap(), before);
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
