//! kv speed measurements (ignored; run in release with `--ignored --nocapture`): `set`, `get`
//! and CAS through `logtree::kv`, and the MVCC layer alone for comparison.
//!
//! The allocator is mimalloc, as in the `logtree` tool, the demo and the criterion benches (README
//! "Allocator"), so that these figures and `logtree bench`'s are measured alike.

use std::sync::Arc;
use std::time::Instant;

use logtree::kv::Store;

mod common;
use common::{Rng, cas_increment};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn key(i: u64) -> Vec<u8> {
    format!("key{:010}", mix(i)).into_bytes()
}

/// Copies of the keys of `n` random reads, side by side: reading the next key then costs no
/// cache miss, so a figure is the store's alone, as when a caller builds the key it asks for.
/// (A list of references into the million separately allocated keys made every get wait for
/// one more miss first, about 250 ns of the 1.4 µs it measured on the 2-core VM.)
fn random_reads(keys: &[Vec<u8>], n: usize) -> Vec<[u8; 13]> {
    (0..n as u64).map(|i| keys[(mix(i) % keys.len() as u64) as usize].as_slice().try_into().unwrap()).collect()
}

/// A well-mixed number below 10^10 for `i`.
fn mix(i: u64) -> u64 {
    Rng(i).next() % 10_000_000_000
}

/// 16 threads of CAS increments on 100 counters (20,000 each); successful CAS per second.
fn cas_speed(store: &Store) -> (f64, u64) {
    let (threads, per_thread) = (16u64, 20_000u64);
    let t = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|th| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| cas_increment(&store, format!("cas{:03}", mix(th * per_thread + i) % 100).as_bytes()))
                    .sum::<u64>()
            })
        })
        .collect();
    let retries: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    let el = t.elapsed();
    let sum: u64 = store
        .list_pairs(b"cas")
        .unwrap()
        .iter()
        .map(|p| String::from_utf8_lossy(&p.value).parse::<u64>().unwrap())
        .sum();
    assert_eq!(sum, threads * per_thread);
    ((threads * per_thread) as f64 / el.as_secs_f64(), retries)
}

/// Speeds, for the record: `cargo test --release --test kv_speed -- --ignored --exact speed
/// --nocapture` (`KV_SPEED_KEYS`, default 1,000,000). 13-byte keys, 100-byte values, default
/// `Config` (group commit every 100 ms or 10,000 writes).
#[test]
#[ignore = "measurement: run in release with --nocapture"]
fn speed() {
    let n: u64 = std::env::var("KV_SPEED_KEYS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let (store, _dir) = Store::open_temp().unwrap();
    let value = vec![b'v'; 100];
    let keys: Vec<Vec<u8>> = (0..n).map(key).collect();
    let t = Instant::now();
    for k in &keys {
        store.set(k, &value, None).unwrap();
    }
    println!("set: {n} keys: {:.0} ops/s", n as f64 / t.elapsed().as_secs_f64());

    let reads = random_reads(&keys, 2_000_000);
    let t = Instant::now();
    let found = reads.iter().filter(|k| store.get(k.as_slice()).unwrap().is_some()).count();
    println!("get: random over {n} keys: {:.0} ns/op", t.elapsed().as_nanos() as f64 / reads.len() as f64);
    assert_eq!(found, reads.len());
    let hot: Vec<&[u8]> = (0..2_000_000usize).map(|i| keys[i % 1000].as_slice()).collect();
    let t = Instant::now();
    hot.iter().for_each(|k| drop(std::hint::black_box(store.get(k).unwrap())));
    println!("get: 1,000 hot keys of {n}: {:.0} ns/op", t.elapsed().as_nanos() as f64 / hot.len() as f64);

    let (rate, retries) = cas_speed(&store);
    println!("cas: 16 threads, 100 keys, in the store of {n} keys: {rate:.0} successful CAS/s ({retries} retries)");
    drop(store);
    let (fresh, _dir2) = Store::open_temp().unwrap();
    let (rate, retries) = cas_speed(&fresh);
    println!("cas: 16 threads, 100 keys, in a new store: {rate:.0} successful CAS/s ({retries} retries)");
}

/// The MVCC layer alone, for comparison: `mvcc::KvStore::put` and a single-key `range`.
#[test]
#[ignore = "measurement: run in release with --nocapture"]
fn speed_mvcc_floor() {
    use logtree::mvcc::{KvStore, RangeOptions};
    let n: u64 = std::env::var("KV_SPEED_KEYS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let (b, _dir) = logtree::Backend::open_temp().unwrap();
    let kv = KvStore::open(Arc::new(b)).unwrap();
    let value = vec![b'v'; 100];
    let keys: Vec<Vec<u8>> = (0..n).map(key).collect();
    let t = Instant::now();
    for k in &keys {
        kv.put(k, &value, 0).unwrap();
    }
    println!("mvcc put: {:.0} ops/s", n as f64 / t.elapsed().as_secs_f64());
    let reads = random_reads(&keys, 2_000_000);
    let t = Instant::now();
    for k in &reads {
        assert_eq!(kv.range(k, b"", RangeOptions::default()).unwrap().kvs.len(), 1);
    }
    println!("mvcc range (one key), random: {:.0} ns/op", t.elapsed().as_nanos() as f64 / reads.len() as f64);
}
