//! The main job on an embedded default: load keys into a database in a temporary directory,
//! read them back at random, overwrite some in many small group-committed transactions,
//! reopen, and print what was done and how fast.
//!
//! ```text
//! cargo run --release --example demo            # 1,000,000 keys
//! cargo run --release --example demo -- 200000  # fewer
//! ```

use std::time::{Duration, Instant};

use logtree::{Backend, Config};

/// As the `logtree` tool: mimalloc serves the index's many small node buffers faster than the
/// system's malloc (README, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY_LEN: usize = 24;
const VALUE_LEN: usize = 150;

/// A small deterministic generator (xorshift64*), so that runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn key(i: u64) -> [u8; KEY_LEN] {
    // Spread keys over the key space so that inserts land at random places.
    let mut k = [0u8; KEY_LEN];
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    k[..8].copy_from_slice(&h.to_be_bytes());
    k[8..16].copy_from_slice(&i.to_be_bytes());
    k
}

fn rate(n: u64, d: Duration) -> String {
    format!("{:>10.0} ops/s", n as f64 / d.as_secs_f64())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|_| format!("usage: demo [NUMBER_OF_KEYS], got {a:?}"))?,
        None => 1_000_000,
    };
    let dir = tempfile::Builder::new().prefix("logtree-demo-").tempdir()?;
    let value = vec![0x5au8; VALUE_LEN];
    println!("logtree demo: {n} keys of {KEY_LEN} B with {VALUE_LEN} B values in {}", dir.path().display());

    let db = Backend::open(Config::new(dir.path()))?;
    let t = Instant::now();
    let mut tx = db.batch_tx();
    tx.create_bucket("data")?;
    for i in 0..n {
        tx.put("data", key(i), &value)?;
        if i % 100_000 == 99_999 {
            tx.commit()?;
            tx = db.batch_tx();
        }
    }
    tx.commit()?;
    let load = t.elapsed();
    println!("bulk load            {:>8.3} s  {}", load.as_secs_f64(), rate(n, load));

    let mut rng = Rng(0x1234_5678);
    let rtx = db.read_tx();
    let reads = n.min(1_000_000);
    let t = Instant::now();
    let mut found = 0u64;
    for _ in 0..reads {
        let i = rng.next() % n;
        if let Some(v) = rtx.get_ref("data", key(i))? {
            found += v.len() as u64 / VALUE_LEN as u64;
        }
    }
    let read = t.elapsed();
    assert_eq!(found, reads, "every key reads back");
    println!(
        "random get           {:>8.3} s  {}  ({:.0} ns/get)",
        read.as_secs_f64(),
        rate(reads, read),
        read.as_nanos() as f64 / reads as f64
    );

    let batches = 100u64;
    let t = Instant::now();
    for b in 0..batches {
        let mut tx = db.batch_tx();
        for _ in 0..1000 {
            let i = rng.next() % n;
            tx.put("data", key(i), [b as u8; VALUE_LEN])?;
        }
        tx.commit()?;
    }
    let batch = t.elapsed();
    println!(
        "100 x 1000 puts, commit() each (durable) {:>6.3} s  {}",
        batch.as_secs_f64(),
        rate(batches * 1000, batch)
    );

    let small = 20_000u64;
    let t = Instant::now();
    for _ in 0..small {
        let mut tx = db.batch_tx();
        tx.put("data", key(rng.next() % n), &value)?;
    }
    db.force_commit()?;
    let grouped = t.elapsed();
    println!("{small} one-put BatchTxs, group-committed {:>6.3} s  {}", grouped.as_secs_f64(), rate(small, grouped));

    let stats = db.stats();
    db.close()?;
    let t = Instant::now();
    let db = Backend::open(Config::new(dir.path()))?;
    let reopen = t.elapsed();
    let keys = db.read_tx().bucket_len("data")?;
    assert_eq!(keys as u64, n);
    println!("reopen               {:>8.3} s  ({keys} keys recovered)", reopen.as_secs_f64());
    println!(
        "on disk {:.1} MiB, live {:.1} MiB, index {:.1} MiB ({:.0} B/key), {} segments",
        stats.size as f64 / 1048576.0,
        stats.size_in_use as f64 / 1048576.0,
        stats.index_bytes as f64 / 1048576.0,
        stats.index_bytes as f64 / n as f64,
        stats.segments
    );
    db.close()?;
    Ok(())
}
