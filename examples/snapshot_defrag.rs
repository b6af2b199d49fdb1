//! Measures snapshots and online defrag on 1M keys (24-byte keys, 150-byte values):
//! `write_to` into a file, defrag of a database that is half garbage while a writer and two
//! readers run (the longest wait any writer transaction saw), and size after overwriting every
//! key five times and defragging.
//!
//! ```text
//! cargo run --release --example snapshot_defrag            # 1,000,000 keys
//! cargo run --release --example snapshot_defrag -- 200000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use logtree::{Backend, Config};

fn key(i: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    k[8..16].copy_from_slice(&i.to_be_bytes());
    k
}

fn write_all(db: &Backend, n: u64, fill: u8) -> Result<(), logtree::Error> {
    let mut tx = db.batch_tx();
    for i in 0..n {
        tx.put("data", key(i), [fill; 150])?;
        if i % 100_000 == 99_999 {
            tx.commit()?;
            tx = db.batch_tx();
        }
    }
    tx.commit()
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let dir = tempfile::Builder::new().prefix("logtree-snapdefrag-").tempdir()?;
    let db = Arc::new(Backend::open(Config::new(dir.path().join("db")))?);
    let mut tx = db.batch_tx();
    tx.create_bucket("data")?;
    tx.commit()?;
    write_all(&db, n, 1)?;
    println!("{n} keys loaded: {:.1} MiB on disk, {:.1} MiB live", mib(db.size()), mib(db.size_in_use()));

    // write_to into a file.
    let snap = db.snapshot()?;
    let path = dir.path().join("image");
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let t = Instant::now();
    let bytes = snap.write_to(&mut f)?;
    let file = f.into_inner().map_err(|e| e.into_error())?;
    let streamed = t.elapsed();
    file.sync_data()?;
    let synced = t.elapsed();
    drop(snap);
    println!(
        "write_to: {:.1} MiB in {:.3} s = {:.0} MB/s streamed ({:.0} MB/s including fdatasync)",
        mib(bytes),
        streamed.as_secs_f64(),
        bytes as f64 / 1e6 / streamed.as_secs_f64(),
        bytes as f64 / 1e6 / synced.as_secs_f64()
    );

    // Half garbage: every key overwritten once. Then defrag with a writer and two readers.
    write_all(&db, n, 2)?;
    let stop = Arc::new(AtomicBool::new(false));
    let longest_wait_us = Arc::new(AtomicU64::new(0));
    let writer = {
        let (db, stop, longest) = (db.clone(), stop.clone(), longest_wait_us.clone());
        std::thread::spawn(move || -> Result<u64, logtree::Error> {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut tx = db.batch_tx();
                longest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                for _ in 0..10 {
                    tx.put("data", key(i % n), [3u8; 150])?;
                    i += 7919;
                }
                drop(tx);
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(i)
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || -> Result<u64, logtree::Error> {
                let mut reads = 0u64;
                let mut j = r as u64;
                while !stop.load(Ordering::Relaxed) {
                    let rtx = db.read_tx();
                    for _ in 0..1000 {
                        j = j.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        assert!(rtx.get_ref("data", key(j % n))?.is_some());
                        reads += 1;
                    }
                }
                Ok(reads)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let before = db.size();
    let stats = db.defrag()?;
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().expect("writer")?;
    let reads: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum::<Result<u64, _>>()?;
    println!(
        "defrag (half garbage, 1 writer + 2 readers running): {:.1} MiB -> {:.1} MiB in {:.3} s, \
         {} catch-up rounds, writer lock held {:.2} ms, longest BatchTx wait {:.2} ms \
         ({} writer puts, {} reads meanwhile)",
        mib(before),
        mib(stats.size_after),
        stats.duration.as_secs_f64(),
        stats.catch_up_rounds,
        stats.longest_writer_pause.as_secs_f64() * 1e3,
        longest_wait_us.load(Ordering::Relaxed) as f64 / 1e3,
        writes / 7919,
        reads
    );

    // Write-heavy: every key overwritten five times, then defrag.
    for round in 0..5u8 {
        write_all(&db, n, 10 + round)?;
    }
    let before = db.size();
    let stats = db.defrag()?;
    println!(
        "5 overwrites of every key then defrag: {:.1} MiB -> {:.1} MiB; live {:.1} MiB; size/live = {:.3}",
        mib(before),
        mib(db.size()),
        mib(db.size_in_use()),
        db.size() as f64 / db.size_in_use() as f64
    );
    let _ = stats;
    Ok(())
}
