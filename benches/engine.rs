//! Criterion benches of the core operations, with the workload shapes of the issue tracker's
//! goals: 24-byte keys, 150-byte values, 1M keys.
//!
//! `cargo bench --bench engine` (all), or e.g. `cargo bench --bench engine -- get_random`.
//! LOGTREE_BENCH_KEYS overrides the 1,000,000 keys of the read benches.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use logtree::{Backend, Config};

/// As the `logtree` tool and the demo (README, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VALUE: [u8; 150] = [0x5a; 150];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn key(i: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    k[8..16].copy_from_slice(&i.to_be_bytes());
    k
}

fn keys() -> u64 {
    std::env::var("LOGTREE_BENCH_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

/// A database with `n` keys in bucket "b" (loaded without fsync: setup, not the measurement).
fn loaded(n: u64) -> (Backend, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path());
    c.sync = false;
    let db = Backend::open(c).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    for i in 0..n {
        tx.put("b", key(i), VALUE).unwrap();
    }
    drop(tx);
    db.force_commit().unwrap();
    (db, dir)
}

/// (a) 1,000 random puts in one BatchTx ended by a durable `commit()`.
fn put_commit(c: &mut Criterion) {
    let (db, _dir) = Backend::open_temp().unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.commit().unwrap();
    let mut rng = Rng(7);
    let mut g = c.benchmark_group("write");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("batch_1000_puts_commit", |b| {
        b.iter(|| {
            let mut tx = db.batch_tx();
            for _ in 0..1000 {
                tx.put("b", key(rng.next()), VALUE).unwrap();
            }
            tx.commit().unwrap();
        })
    });
    g.finish();

    // The goal's shape exactly: 100 transactions of 1,000 random puts, each ended by a durable
    // `commit()`, into a new database (the bench above keeps adding to one that grows with
    // every iteration, to millions of keys).
    let mut g = c.benchmark_group("write");
    g.sample_size(10);
    g.throughput(Throughput::Elements(100 * 1000));
    g.bench_function("100_batches_of_1000_puts_commit_new_db", |b| {
        b.iter_batched(
            || {
                let (db, dir) = Backend::open_temp().unwrap();
                let mut tx = db.batch_tx();
                tx.create_bucket("b").unwrap();
                tx.commit().unwrap();
                (db, dir)
            },
            |(db, dir)| {
                for _ in 0..100 {
                    let mut tx = db.batch_tx();
                    for _ in 0..1000 {
                        tx.put("b", key(rng.next()), VALUE).unwrap();
                    }
                    tx.commit().unwrap();
                }
                (db, dir)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("write");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_put_batch_tx_group_committed", |b| {
        b.iter(|| {
            let mut tx = db.batch_tx();
            tx.put("b", key(rng.next()), VALUE).unwrap();
        })
    });
    g.finish();
}

/// (b) random gets on one thread over 1M keys; read_tx creation; 100-key range scans.
fn reads(c: &mut Criterion) {
    let n = keys();
    let (db, _dir) = loaded(n);
    let rtx = db.read_tx();
    let mut rng = Rng(11);
    let mut g = c.benchmark_group("read");
    g.bench_function("get_random", |b| {
        b.iter(|| {
            let k = key(rng.next() % n);
            black_box(rtx.get("b", k).unwrap());
        })
    });
    g.bench_function("get_ref_random", |b| {
        b.iter(|| {
            let k = key(rng.next() % n);
            black_box(rtx.get_ref("b", k).unwrap().map(|v| v.len()));
        })
    });
    g.bench_function("read_tx", |b| b.iter(|| black_box(db.read_tx())));
    g.throughput(Throughput::Elements(100));
    g.bench_function("scan_100", |b| {
        b.iter(|| {
            let start = key(rng.next() % n);
            let mut sum = 0usize;
            for kv in rtx.scan("b", start, None).unwrap().take(100) {
                sum += kv.unwrap().1.len();
            }
            black_box(sum)
        })
    });
    g.bench_function("range_100", |b| {
        b.iter(|| {
            let start = key(rng.next() % n);
            black_box(rtx.range("b", start, [0xffu8; 24], 100).unwrap().len())
        })
    });
    g.finish();
}

/// Snapshot `write_to` (into a sink: the engine's side of the stream) and the content hash.
fn snapshot_and_hash(c: &mut Criterion) {
    let n = keys();
    let (db, _dir) = loaded(n);
    let snap = db.snapshot().unwrap();
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Bytes(snap.size()));
    g.bench_function("write_to_sink", |b| b.iter(|| snap.write_to(&mut std::io::sink()).unwrap()));
    g.bench_function("hash", |b| b.iter(|| black_box(db.hash(&[]).unwrap())));
    g.finish();
}

/// (c) opening a database of 1M keys (recovery replays the log into the index).
fn reopen(c: &mut Criterion) {
    let n = keys();
    let (db, dir) = loaded(n);
    db.close().unwrap();
    let mut g = c.benchmark_group("open");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("open_1m_keys", |b| {
        b.iter_batched(
            || (),
            |_| {
                let t = Instant::now();
                let db = Backend::open(Config::new(dir.path())).unwrap();
                let e = t.elapsed();
                drop(db);
                e
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, put_commit, reads, snapshot_and_hash, reopen);
criterion_main!(benches);
