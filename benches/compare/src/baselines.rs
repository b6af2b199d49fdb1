//! The two baselines that show the physical limits: std's `BTreeMap` in memory (no disk, no
//! durability: what lookups and inserts cost at best), and a raw file written with `write` and
//! made durable with `fdatasync` (no index, no framing: what durable writes cost at best).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Seek;
use std::io::Write;
use std::path::Path;
use std::sync::Barrier;
use std::time::Instant;

use crate::workload::{BATCH_SIZE, Data, KEY_LEN, PAIR_LEN, Results, SCAN_LEN, all_pairs, dir_size};

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn key(k: &[u8]) -> [u8; KEY_LEN] {
    k.try_into().unwrap()
}

pub fn btreemap(data: &Data) -> Results {
    let mut out: Results = Vec::new();
    let mut m: BTreeMap<[u8; KEY_LEN], Box<[u8]>> = BTreeMap::new();
    let t = Instant::now();
    for (k, v) in all_pairs(&data.bulk) {
        m.insert(key(k), v.into());
    }
    out.push(("bulk_load", Some(ms(t))));
    let t = Instant::now();
    for (k, v) in all_pairs(&data.individual) {
        m.insert(key(k), v.into());
    }
    out.push(("individual_writes", Some(ms(t))));
    let t = Instant::now();
    for (k, v) in all_pairs(&data.batches) {
        m.insert(key(k), v.into());
    }
    out.push(("batch_writes", Some(ms(t))));

    let get_each = |part: &[u32]| -> u64 { part.iter().map(|&i| m[&key(data.bulk_key(i as usize))][0] as u64).sum() };
    let t = Instant::now();
    let sum = get_each(&data.read_order);
    out.push(("reads_1t", Some(ms(t))));
    assert_eq!(sum, data.expect_reads);
    let (a, b) = data.read_order.split_at(data.n / 2);
    let barrier = Barrier::new(2);
    let t = Instant::now();
    let sum: u64 = std::thread::scope(|s| {
        let ha = s.spawn(|| {
            barrier.wait();
            get_each(a)
        });
        let hb = s.spawn(|| {
            barrier.wait();
            get_each(b)
        });
        ha.join().unwrap() + hb.join().unwrap()
    });
    out.push(("reads_2t", Some(ms(t))));
    assert_eq!(sum, data.expect_reads);

    let t = Instant::now();
    let (mut count, mut sum) = (0u64, 0u64);
    for s in &data.scan_starts {
        for (_, v) in m.range(*s..).take(SCAN_LEN) {
            count += 1;
            sum += v[0] as u64;
        }
    }
    out.push(("scans", Some(ms(t))));
    assert_eq!((count, sum), data.expect_scans);

    let t = Instant::now();
    for i in 0..data.n / 2 {
        m.remove(&key(data.bulk_key(i)));
    }
    out.push(("removals", Some(ms(t))));
    for id in ["size_load", "size_removed", "compact", "size_compacted", "reopen", "reopen_compacted"] {
        out.push((id, None));
    }
    out
}

/// Appends the pairs (key then value, no framing) to one file; each write is one `write` call
/// and one `fdatasync`.
pub fn raw_file(dir: &Path, data: &Data) -> Results {
    let mut out: Results = Vec::new();
    let mut f = File::create(dir.join("append.log")).unwrap();
    let t = Instant::now();
    f.write_all(&data.bulk).unwrap();
    f.sync_data().unwrap();
    out.push(("bulk_load", Some(ms(t))));
    let size_load = dir_size(dir).0;

    let t = Instant::now();
    for p in data.individual.chunks_exact(PAIR_LEN) {
        f.write_all(p).unwrap();
        f.sync_data().unwrap();
    }
    out.push(("individual_writes", Some(ms(t))));
    let t = Instant::now();
    append_batches(&mut f, data);
    out.push(("batch_writes", Some(ms(t))));
    out.push(("size_load", Some(size_load as f64 / (1024.0 * 1024.0))));
    for id in [
        "reads_1t",
        "reads_2t",
        "scans",
        "removals",
        "size_removed",
        "compact",
        "size_compacted",
        "reopen",
        "reopen_compacted",
    ] {
        out.push((id, None));
    }
    out
}

/// The batch row's writes, as they are: each batch one `write` and one `fdatasync`.
fn append_batches(f: &mut File, data: &Data) {
    for b in data.batches.chunks_exact(BATCH_SIZE * PAIR_LEN) {
        f.write_all(b).unwrap();
        f.sync_data().unwrap();
    }
}

/// Records the batch row's floor for an engine with a memtable in front of its index (README,
/// "Batch writes"): each pair framed as a log record (a CRC32 and a length before it), its key
/// put into an ordered in-memory table (std's `BTreeMap`, key → offset), then one `write` and
/// one `fdatasync` per batch, as `raw_file` does. Every `MERGE_EVERY` batches the table is
/// emptied, as a background merge into the index would take it away, so it stays small.
/// Returns the time of the same batches written plainly (`raw_file`'s batch row) and with the
/// framing and the table, in ms, each in a fresh file.
pub fn memtable_floor(dir: &Path, data: &Data) -> (f64, f64) {
    const MERGE_EVERY: usize = 10;
    let mut raw = File::create(dir.join("raw.log")).unwrap();
    let t = Instant::now();
    append_batches(&mut raw, data);
    let raw_ms = ms(t);

    let mut log = File::create(dir.join("framed.log")).unwrap();
    let mut table: BTreeMap<[u8; KEY_LEN], u64> = BTreeMap::new();
    let mut buf = Vec::with_capacity(BATCH_SIZE * (PAIR_LEN + 8));
    let t = Instant::now();
    for (n, b) in data.batches.chunks_exact(BATCH_SIZE * PAIR_LEN).enumerate() {
        let at = log.stream_position().unwrap();
        buf.clear();
        for (k, v) in all_pairs(b) {
            let start = buf.len();
            buf.extend_from_slice(&[0; 8]);
            buf.extend_from_slice(k);
            buf.extend_from_slice(v);
            let crc = crc32fast::hash(&buf[start + 8..]);
            buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
            buf[start + 4..start + 8].copy_from_slice(&((k.len() + v.len()) as u32).to_le_bytes());
            table.insert(key(k), at + start as u64);
        }
        log.write_all(&buf).unwrap();
        log.sync_data().unwrap();
        if (n + 1) % MERGE_EVERY == 0 {
            table.clear();
        }
    }
    (raw_ms, ms(t))
}
