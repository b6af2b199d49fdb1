//! The workloads, the same for every engine, after redb's `lmdb_benchmark`: 24-byte random keys,
//! 150-byte random values, a bulk load in one transaction, durable single writes and batches,
//! random reads on one and two threads, short range scans, removal of half the keys, sizes,
//! compaction and reopen.
//!
//! Everything an engine is given is generated before its clock starts (redb's benchmark
//! generates keys inside the timed loops), and reads visit the loaded keys in a shuffled order,
//! not in load order: a log-structured engine stores values in load order, so reading in that
//! order would walk its files sequentially and flatter it.

use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

pub const KEY_LEN: usize = 24;
pub const VALUE_LEN: usize = 150;
pub const PAIR_LEN: usize = KEY_LEN + VALUE_LEN;
pub const INDIVIDUAL_WRITES: usize = 1_000;
pub const BATCHES: usize = 100;
pub const BATCH_SIZE: usize = 1_000;
pub const SCANS: usize = 10_000;
pub const SCAN_LEN: usize = 100;
const SEED: u64 = 3;

/// What an engine must do; every write method is one transaction, durable when it returns.
pub trait Engine: Sized + Sync {
    /// Most engines bulk load in one transaction, as redb's benchmark does; an engine for which
    /// that is pathological loads in transactions of this many pairs instead (and says so).
    const BULK_TX_LIMIT: Option<usize> = None;
    /// Opens the database in `dir` (creating it if empty) with its one table or bucket, ready
    /// to read.
    fn open(dir: &Path) -> Self;
    /// One transaction putting every pair; durable (fsync'd) when it returns.
    fn put_tx<'a>(&self, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>);
    /// One transaction removing every key; durable when it returns.
    fn delete_tx<'a>(&self, keys: impl Iterator<Item = &'a [u8]>);
    /// In one read transaction, looks up every key (each must exist) and returns the sum of
    /// the first byte of the values, so that the values are really touched.
    fn get_each<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> u64;
    /// In one read transaction, for each start key reads up to `len` pairs from it on;
    /// returns (pairs read, sum of the first byte of their values).
    fn scan_each(&self, starts: &[[u8; KEY_LEN]], len: usize) -> (u64, u64);
    /// Runs the engine's own compaction, if it has one, and says how; `None` if it has none.
    /// `dir` is where the engine was opened.
    fn compact(&mut self, dir: &Path) -> Option<&'static str>;
    /// Closes cleanly (everything durable, files released).
    fn close(self);
}

/// The data every engine is given, generated from a fixed seed.
pub struct Data {
    pub n: usize,
    /// `n` pairs, key then value, back to back.
    pub bulk: Vec<u8>,
    /// `INDIVIDUAL_WRITES` new pairs.
    pub individual: Vec<u8>,
    /// `BATCHES * BATCH_SIZE` new pairs.
    pub batches: Vec<u8>,
    /// A permutation of `0..n`: the order the bulk keys are read in.
    pub read_order: Vec<u32>,
    /// Random start keys of the range scans (almost never present keys).
    pub scan_starts: Vec<[u8; KEY_LEN]>,
    /// Expected results: sum of value[0] over all reads; (pairs, sum) of the scans.
    pub expect_reads: u64,
    pub expect_scans: (u64, u64),
}

fn pairs(n: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut v = vec![0u8; n * PAIR_LEN];
    rng.fill(&mut v);
    v
}

pub fn pair(buf: &[u8], i: usize) -> (&[u8], &[u8]) {
    let p = &buf[i * PAIR_LEN..(i + 1) * PAIR_LEN];
    (&p[..KEY_LEN], &p[KEY_LEN..])
}

pub fn all_pairs(buf: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    buf.chunks_exact(PAIR_LEN).map(|p| (&p[..KEY_LEN], &p[KEY_LEN..]))
}

impl Data {
    pub fn generate(n: usize) -> Data {
        let mut rng = fastrand::Rng::with_seed(SEED);
        let bulk = pairs(n, &mut rng);
        let individual = pairs(INDIVIDUAL_WRITES, &mut rng);
        let batches = pairs(BATCHES * BATCH_SIZE, &mut rng);
        let mut read_order: Vec<u32> = (0..n as u32).collect();
        rng.shuffle(&mut read_order);
        let scan_starts: Vec<[u8; KEY_LEN]> = (0..SCANS)
            .map(|_| {
                let mut k = [0u8; KEY_LEN];
                rng.fill(&mut k);
                k
            })
            .collect();
        let expect_reads = read_order.iter().map(|&i| pair(&bulk, i as usize).1[0] as u64).sum();

        // What the scans must return: every key written before them, sorted.
        let mut sorted: Vec<(&[u8], u8)> =
            all_pairs(&bulk).chain(all_pairs(&individual)).chain(all_pairs(&batches)).map(|(k, v)| (k, v[0])).collect();
        sorted.sort_unstable();
        sorted.dedup_by(|a, b| a.0 == b.0);
        let (mut count, mut sum) = (0u64, 0u64);
        for s in &scan_starts {
            let from = sorted.partition_point(|(k, _)| *k < &s[..]);
            for (_, b) in sorted[from..].iter().take(SCAN_LEN) {
                count += 1;
                sum += *b as u64;
            }
        }
        let expect_scans = (count, sum);
        drop(sorted);
        Data { n, bulk, individual, batches, read_order, scan_starts, expect_reads, expect_scans }
    }

    pub fn bulk_key(&self, i: usize) -> &[u8] {
        pair(&self.bulk, i).0
    }

    fn read_keys(&self, part: &[u32]) -> impl Iterator<Item = &[u8]> {
        part.iter().map(|&i| self.bulk_key(i as usize))
    }
}

/// The rows of the table, in order: (id, label; `{n}` and `{half}` are filled in).
pub const ROWS: &[(&str, &str)] = &[
    ("bulk_load", "bulk load: {n} pairs, 1 tx (ms)"),
    ("individual_writes", "1,000 individual writes, durable (ms)"),
    ("batch_writes", "100 batches of 1,000 random writes, durable (ms)"),
    ("reads_1t", "{n} random reads, 1 thread (ms)"),
    ("reads_2t", "{n} random reads, 2 threads (ms)"),
    ("scans", "10,000 range scans of 100 keys (ms)"),
    ("removals", "remove {half} keys, 1 tx (ms)"),
    ("size_load", "size after bulk load (MiB)"),
    ("size_removed", "size after removals (MiB)"),
    ("compact", "defrag / compact (ms)"),
    ("size_compacted", "size after defrag / compact (MiB)"),
    ("reopen", "reopen after removals (ms)"),
    ("reopen_compacted", "reopen after defrag / compact (ms)"),
];

pub fn is_size(id: &str) -> bool {
    id.starts_with("size")
}

/// One measured value (ms or MiB), or nothing when the engine cannot do the workload.
pub type Results = Vec<(&'static str, Option<f64>)>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Bytes of all files under `dir`: apparent length, as `ls` shows it (and as redb's benchmark
/// counts), and allocated blocks, as `du` shows it.
pub fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut len, mut blocks) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                len += m.len();
                blocks += m.blocks() * 512;
            }
        }
    }
    (len, blocks)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn say(name: &str, what: &str, v: f64, unit: &str) {
    eprintln!("  {name:<8} {what:<42} {v:>10.1} {unit}");
}

/// Runs every workload on engine `E` in `dir` (a fresh, empty directory).
pub fn run<E: Engine>(name: &str, dir: &Path, data: &Data) -> Results {
    let mut out: Results = Vec::new();
    let mut rec = |id: &'static str, v: Option<f64>, unit: &str| {
        if let Some(v) = v {
            say(name, id, v, unit);
        }
        out.push((id, v));
    };
    let n = data.n;

    let db = E::open(dir);
    let t = Instant::now();
    match E::BULK_TX_LIMIT {
        None => db.put_tx(all_pairs(&data.bulk)),
        Some(limit) => {
            for chunk in data.bulk.chunks(limit * PAIR_LEN) {
                db.put_tx(all_pairs(chunk));
            }
        }
    }
    rec("bulk_load", Some(ms(t.elapsed())), "ms");
    let size_load = dir_size(dir);

    let t = Instant::now();
    for p in all_pairs(&data.individual) {
        db.put_tx(std::iter::once(p));
    }
    rec("individual_writes", Some(ms(t.elapsed())), "ms");

    let t = Instant::now();
    for b in data.batches.chunks_exact(BATCH_SIZE * PAIR_LEN) {
        db.put_tx(all_pairs(b));
    }
    rec("batch_writes", Some(ms(t.elapsed())), "ms");

    let t = Instant::now();
    let sum = db.get_each(data.read_keys(&data.read_order));
    rec("reads_1t", Some(ms(t.elapsed())), "ms");
    assert_eq!(sum, data.expect_reads, "{name}: 1-thread reads returned wrong values");

    let (a, b) = data.read_order.split_at(n / 2);
    let barrier = Barrier::new(2);
    let t = Instant::now();
    let sum: u64 = std::thread::scope(|s| {
        let ha = s.spawn(|| {
            barrier.wait();
            db.get_each(data.read_keys(a))
        });
        let hb = s.spawn(|| {
            barrier.wait();
            db.get_each(data.read_keys(b))
        });
        ha.join().unwrap() + hb.join().unwrap()
    });
    rec("reads_2t", Some(ms(t.elapsed())), "ms");
    assert_eq!(sum, data.expect_reads, "{name}: 2-thread reads returned wrong values");

    let t = Instant::now();
    let got = db.scan_each(&data.scan_starts, SCAN_LEN);
    rec("scans", Some(ms(t.elapsed())), "ms");
    assert_eq!(got, data.expect_scans, "{name}: range scans returned wrong pairs");

    let half = n / 2;
    let t = Instant::now();
    db.delete_tx((0..half).map(|i| data.bulk_key(i)));
    rec("removals", Some(ms(t.elapsed())), "ms");
    rec("size_load", Some(mib(size_load.0)), "MiB");

    // Sizes after removals and after compaction are taken closed, at rest: engines that work in
    // the background (fjall, sled) have finished, and every engine has written what it keeps.
    // Reopen is timed from open until the first read has answered; the page cache is warm.
    let probe = data.bulk_key(n - 1);
    db.close();
    rec("size_removed", Some(mib(dir_size(dir).0)), "MiB");
    let t = Instant::now();
    let mut db = E::open(dir);
    let first = db.get_each(std::iter::once(probe));
    let reopen = ms(t.elapsed());
    assert_eq!(first, pair(&data.bulk, n - 1).1[0] as u64);
    check_after_removals(name, &db, data);

    let t = Instant::now();
    let how = db.compact(dir);
    let compact = ms(t.elapsed());
    if let Some(how) = how {
        eprintln!("  {name:<8} compaction: {how}");
    }
    rec("compact", how.map(|_| compact), "ms");
    rec("reopen", Some(reopen), "ms");

    let reopen_compacted = if how.is_some() {
        db.close();
        rec("size_compacted", Some(mib(dir_size(dir).0)), "MiB");
        let t = Instant::now();
        db = E::open(dir);
        let first = db.get_each(std::iter::once(probe));
        let d = ms(t.elapsed());
        assert_eq!(first, pair(&data.bulk, n - 1).1[0] as u64);
        check_after_removals(name, &db, data);
        Some(d)
    } else {
        rec("size_compacted", None, "MiB");
        None
    };
    rec("reopen_compacted", reopen_compacted, "ms");
    db.close();
    out
}

/// The second half of the bulk keys is still there (a sample), and the scans see no removed key.
fn check_after_removals<E: Engine>(name: &str, db: &E, data: &Data) {
    let n = data.n;
    let step = (n / 2 / 1000).max(1);
    let sample: Vec<usize> = (n / 2..n).step_by(step).collect();
    let expect: u64 = sample.iter().map(|&i| pair(&data.bulk, i).1[0] as u64).sum();
    let got = db.get_each(sample.iter().map(|&i| data.bulk_key(i)));
    assert_eq!(got, expect, "{name}: values lost or changed after reopen");
    let (count, _) = db.scan_each(&data.scan_starts[..100], 1);
    assert!(count > 0, "{name}: scans find nothing after reopen");
}
