//! Helpers shared by the integration tests: a backend's content for comparing with a model, a
//! deterministic PRNG, an MVCC history, a kv CAS increment. Each test crate uses only some of
//! them.
#![allow(dead_code)]

use std::collections::BTreeMap;

use logtree::{BatchTx, ReadTx};

/// Every pair of every bucket: `(bucket, key) → value`.
pub type Content = BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>>;

/// Everything `r` shows, read with `for_each` bucket by bucket.
pub fn content_of(r: &ReadTx) -> Content {
    let mut m = Content::new();
    for b in r.buckets() {
        r.for_each(&b, |k, v| {
            m.insert((b.clone(), k.to_vec()), v.to_vec());
            Ok(())
        })
        .expect("for_each over a listed bucket");
    }
    m
}

/// A small deterministic PRNG (splitmix64): a seed replays a run, and the tests need no crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Puts buckets of every shape an index build must handle: "many" (5,000 keys, written out of
/// order), "long keys" (one key of each length from 1 to 2,100 bytes, so past the 1 KiB that a
/// bottom-up build declines), "empty", and "one" (a single key).
pub fn put_buckets_of_every_shape(tx: &mut BatchTx<'_>) {
    for b in ["many", "long keys", "empty", "one"] {
        tx.create_bucket(b).unwrap();
    }
    for i in 0..5000u32 {
        tx.put("many", format!("k{:07}", i * 7 % 5000), format!("v{i}")).unwrap();
    }
    for len in 1..=2100usize {
        let key: Vec<u8> = (0..len).map(|j| (j * 31 + len) as u8).collect();
        tx.put("long keys", &key, len.to_le_bytes()).unwrap();
    }
    tx.put("one", "only", "key").unwrap();
}

/// The bytes of every file in `dir` but `LOCK`: what `Backend::size` must report.
pub fn bytes_on_disk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "LOCK")
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Writes the MVCC history the compaction crash tests share — 3,000 puts over 300 keys and a
/// delete of ten of them every 500 puts — and makes it durable.
pub fn write_mvcc_history(s: &logtree::mvcc::KvStore) {
    for i in 0..3000u32 {
        s.put(format!("k{:03}", i % 300).as_bytes(), format!("v{i}").as_bytes(), 0).expect("put");
        if i % 500 == 499 {
            s.delete_range(b"k010", b"k020").expect("delete");
        }
    }
    s.backend().force_commit().expect("commit");
}

/// Increments the decimal counter at `k` with CAS until one succeeds; returns the retries.
pub fn cas_increment(store: &logtree::kv::Store, k: &[u8]) -> u64 {
    let mut retries = 0;
    loop {
        let prev: Option<logtree::kv::KvPair> = store.get_pair(k).unwrap();
        let n: u64 = prev.as_ref().map_or(0, |p| std::str::from_utf8(&p.value).unwrap().parse().unwrap());
        match store.atomic_put(k, (n + 1).to_string().as_bytes(), prev.as_ref()) {
            Ok(_) => return retries,
            Err(logtree::Error::KeyModified | logtree::Error::KeyExists | logtree::Error::KeyNotFound) => retries += 1,
            Err(e) => panic!("atomic_put: {e}"),
        }
    }
}

/// Inside `impl Vfs for …` of a test Vfs that only wraps files: the directory methods, those of
/// the real file system.
#[allow(unused_macros)] // each test crate uses only some helpers
macro_rules! real_directory_ops {
    () => {
        $crate::common::real_directory_ops!(@but_sync_dir);
        fn sync_dir(&self, path: &std::path::Path) -> std::io::Result<()> {
            logtree::vfs::StdVfs.sync_dir(path)
        }
    };
    // All but `sync_dir`, for a Vfs that watches directory syncs.
    (@but_sync_dir) => {
        fn create_dir_all(&self, path: &std::path::Path) -> std::io::Result<()> {
            logtree::vfs::StdVfs.create_dir_all(path)
        }
        fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
            logtree::vfs::StdVfs.rename(from, to)
        }
        fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
            logtree::vfs::StdVfs.remove_file(path)
        }
        fn read_dir(&self, path: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
            logtree::vfs::StdVfs.read_dir(path)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use real_directory_ops;
