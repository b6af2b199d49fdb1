//! Replays the fuzz targets' seed corpus (`fuzz/corpus/<target>/*`) through the same
//! `logtree::fuzzing` functions the cargo-fuzz targets call, so that plain `cargo test` runs the
//! targets' code and their checks, and a crashing input added to the corpus stays fixed.
//!
//! The seeds are written by `write_seed_corpus` (ignored; run it after a format change:
//! `cargo test --test fuzz_corpus_test -- --ignored write_seed_corpus`). Seeds named `valid-*`
//! must reach the success path (the database opens, the image restores): a format change that
//! silently turned every seed into an early error would otherwise go unnoticed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use logtree::fuzzing::{self, FLAG_FIX_CHECKSUMS};
use logtree::{Backend, Config};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

#[test]
fn replay_open_segments() {
    let mut outcomes = BTreeMap::new();
    for (name, data) in corpus("open_segments") {
        eprintln!("open_segments {name}");
        let out = fuzzing::open_segments(&data);
        if name.starts_with("valid-") {
            assert!(out.read_only_ok && out.read_write_ok, "{name} does not open: {out:?}");
        }
        outcomes.insert(name, out);
    }
    // SYNC-FAILED's seeds reach what they are for: a cut, a full read from the disk, corruption.
    let keys = |name: &str| outcomes[name].keys;
    assert!(keys("valid-sync-failed-cut") < keys("valid-small-db"), "SYNC-FAILED cut nothing");
    assert_eq!(keys("valid-sync-failed-tail-unknown"), keys("valid-small-db"));
    let past_end = &outcomes["sync-failed-past-end"];
    assert!(!past_end.read_only_ok && !past_end.read_write_ok, "{past_end:?}");
}

#[test]
fn replay_ops_model() {
    for (name, data) in corpus("ops_model") {
        eprintln!("ops_model {name}");
        fuzzing::ops_model(&data);
    }
}

#[test]
fn replay_restore_image() {
    for (name, data) in corpus("restore_image") {
        eprintln!("restore_image {name}");
        let out = fuzzing::restore_image(&data);
        if name.starts_with("valid-") {
            assert!(out.inspect_ok && out.restore_ok, "{name} does not restore: {out:?}");
        }
    }
}

#[test]
fn replay_mvcc_model() {
    for (name, data) in corpus("mvcc_model") {
        eprintln!("mvcc_model {name}");
        fuzzing::mvcc_model(&data);
    }
}

/// The harness itself must be able to fail: a manifest that lists a missing segment is refused,
/// and the checksum fix-up turns a damaged-but-consistent file back into one that opens.
#[test]
fn harness_fixup_reaches_the_decoders() {
    let (files, _) = small_database();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    // Damage a checksum of every file; with the fix-up flag the input opens again.
    let damaged: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, b)| {
            // The header's checksum, and the manifest's or the first frame's.
            let mut b = b.clone();
            b[30] ^= 0xff;
            let at = if n == "MANIFEST" { b.len() - 1 } else { 33 };
            b[at] ^= 0xff;
            (n.clone(), b)
        })
        .collect();
    let damaged_refs: Vec<(&str, &[u8])> = damaged.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    assert!(fuzzing::open_segments(&fuzzing::encode_open_input(0, &refs)).read_write_ok);
    assert!(!fuzzing::open_segments(&fuzzing::encode_open_input(0, &damaged_refs)).read_only_ok);
    let fixed = fuzzing::open_segments(&fuzzing::encode_open_input(FLAG_FIX_CHECKSUMS, &damaged_refs));
    assert!(fixed.read_only_ok && fixed.read_write_ok && fixed.keys > 0, "{fixed:?}");

    let image = snapshot_image();
    let mut bad = image.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1; // the end record's content hash
    let plain = |img: &[u8], flags: u8| fuzzing::restore_image(&[&[flags], img].concat());
    assert!(plain(&image, 0).restore_ok);
    assert!(!plain(&bad, 0).inspect_ok);
    assert!(plain(&bad, FLAG_FIX_CHECKSUMS).restore_ok, "the fix-up recomputes the content hash");
}

/// Found by the `open_segments` fuzzer (first minimized input: a header-less empty
/// `seg-0000000001.log` and a `seg-0000000002.log` holding data, no MANIFEST). DESIGN.md §6:
/// "On `Error::Corruption` nothing has been modified or deleted: the files are as found." With
/// no MANIFEST, `create_log` removes each segment file of at most a header as it lists the
/// directory, and reports corruption only when it reaches one holding data: the files removed
/// before that are gone. (Nine header-only segments make it all but certain that the
/// directory listing yields one of them before the one with data.)
#[test]
fn corrupt_open_without_manifest_deletes_nothing() {
    let (files, _dir) = small_database();
    let dir = tempfile::tempdir().unwrap();
    let data = files.iter().find(|(n, _)| n.starts_with("seg-")).unwrap();
    assert!(data.1.len() > 32);
    fs::write(dir.path().join("seg-0000000010.log"), segment_with_id(&data.1, 10)).unwrap();
    for id in 1..10u64 {
        fs::write(dir.path().join(format!("seg-{id:010}.log")), &segment_with_id(&data.1, id)[..32]).unwrap();
    }
    let before = dir_files(dir.path());
    let e = Backend::open(seed_config(dir.path())).expect_err("a segment holds data and there is no MANIFEST");
    assert!(e.is_corruption(), "{e}");
    let after: Vec<(String, Vec<u8>)> = dir_files(dir.path()).into_iter().filter(|(n, _)| n != "LOCK").collect();
    assert_eq!(after.iter().map(|(n, _)| n).collect::<Vec<_>>(), before.iter().map(|(n, _)| n).collect::<Vec<_>>());
}

/// A segment file's bytes with its header rewritten to name segment `id` (DESIGN.md §2.1).
fn segment_with_id(seg: &[u8], id: u64) -> Vec<u8> {
    let mut b = seg.to_vec();
    b[16..24].copy_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

// ---------------------------------------------------------------------------------------------
// Seed generation

fn seed_config(dir: &Path) -> Config {
    Config { sync: false, segment_size: 4096, ..Config::new(dir) }
}

/// A small database over three segments: buckets, overwrites, deletes, a deleted bucket, a
/// rolled-back multi-part transaction; returns its files (no LOCK) and the directory.
fn small_database() -> (Vec<(String, Vec<u8>)>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::open(seed_config(dir.path())).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("meta").unwrap();
    tx.create_bucket("data").unwrap();
    tx.create_bucket("gone").unwrap();
    tx.put("meta", "version", "1").unwrap();
    tx.commit().unwrap();
    for i in 0..12u32 {
        let mut tx = db.batch_tx();
        tx.put("data", format!("k{:02}", i % 7), vec![b'a' + (i % 26) as u8; 40 + 60 * (i as usize % 5)]).unwrap();
        tx.put("gone", "x", "y").unwrap();
        if i % 4 == 3 {
            tx.delete("data", format!("k{:02}", i % 3)).unwrap();
        }
        drop(tx);
    }
    // Crosses the segment's end, so a part is written before the rollback: an abort frame.
    let mut tx = db.batch_tx();
    tx.put("data", "big", vec![7u8; 3000]).unwrap();
    tx.put("data", "big2", vec![8u8; 3000]).unwrap();
    tx.rollback();
    let mut tx = db.batch_tx();
    tx.delete_bucket("gone").unwrap();
    tx.put("meta", "version", "2").unwrap();
    tx.commit().unwrap();
    db.close().unwrap();
    let files = dir_files(dir.path());
    assert!(files.iter().filter(|(n, _)| n.starts_with("seg-")).count() >= 2, "spans segments");
    (files, dir)
}

fn dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()))
        .filter(|(n, _)| n != "LOCK")
        .collect();
    files.sort();
    files
}

fn snapshot_image() -> Vec<u8> {
    let (_, dir) = small_database();
    let db = Backend::open(seed_config(dir.path())).unwrap();
    let mut image = Vec::new();
    db.snapshot().unwrap().write_to(&mut image).unwrap();
    image
}

/// Deterministic bytes for the ops_model seeds (splitmix64).
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut z = seed;
    (0..len)
        .map(|_| {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (x ^ (x >> 31)) as u8
        })
        .collect()
}

/// Writes the seed corpus. Ignored: run by hand after a format change (see the module doc).
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut seeds: BTreeMap<(&str, String), Vec<u8>> = BTreeMap::new();

    let (files, _dir) = small_database();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    seeds.insert(("open_segments", "valid-small-db".into()), fuzzing::encode_open_input(0, &refs));
    seeds.insert(
        ("open_segments", "valid-small-db-fixup".into()),
        fuzzing::encode_open_input(FLAG_FIX_CHECKSUMS, &refs),
    );
    // The last segment cut inside its last frame: a torn tail.
    let mut torn = files.clone();
    let last = torn.iter().rposition(|(n, _)| n.starts_with("seg-")).unwrap();
    let len = torn[last].1.len();
    torn[last].1.truncate(len - 5);
    torn.push(("MANIFEST.tmp".into(), b"half a manifest".to_vec()));
    torn.push(("seg-0000000005.log.tmp".into(), Vec::new()));
    let refs: Vec<(&str, &[u8])> = torn.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    seeds.insert(("open_segments", "valid-torn-tail-and-leftovers".into()), fuzzing::encode_open_input(0, &refs));
    // SYNC-FAILED (left after a failed fdatasync): naming a transaction in the middle of the log
    // (cut after it), saying "tail unknown" (the last segment read from the disk), and naming
    // one past the log's end (synced data lost: corruption).
    for (name, seq) in [
        ("valid-sync-failed-cut", Some(5)),
        ("valid-sync-failed-tail-unknown", None),
        ("sync-failed-past-end", Some(1000)),
    ] {
        let mut marked = files.clone();
        marked.push(("SYNC-FAILED".into(), fuzzing::sync_failed_file(seq)));
        let refs: Vec<(&str, &[u8])> = marked.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
        seeds.insert(("open_segments", name.into()), fuzzing::encode_open_input(0, &refs));
    }
    // A fresh database: a manifest and a header-only segment.
    let fresh = tempfile::tempdir().unwrap();
    Backend::open(seed_config(fresh.path())).unwrap().close().unwrap();
    let fresh = dir_files(fresh.path());
    let refs: Vec<(&str, &[u8])> = fresh.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    seeds.insert(("open_segments", "valid-empty-db".into()), fuzzing::encode_open_input(0, &refs));
    // No manifest, a segment holding data: corruption. A foreign file.
    let refs: Vec<(&str, &[u8])> =
        files.iter().filter(|(n, _)| n != "MANIFEST").map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    seeds.insert(("open_segments", "no-manifest".into()), fuzzing::encode_open_input(0, &refs));
    seeds
        .insert(("open_segments", "foreign".into()), fuzzing::encode_open_input(0, &[("MANIFEST", b"not a database")]));

    for (i, (len, cfg)) in [(64usize, 0u8), (128, 1), (200, 2), (256, 3), (96, 6)].into_iter().enumerate() {
        let mut b = pseudo_random(i as u64 + 1, len);
        b[0] = cfg;
        seeds.insert(("ops_model", format!("random-{i}")), b);
    }
    // A transaction creating bucket b0 and putting key a (decoded by fuzzing::decode_ops_input),
    // then a close-reopen, a checkpoint, a snapshot-restore and a defrag.
    seeds.insert(
        ("ops_model", "tx-reopen-snapshot-defrag".into()),
        vec![2, 0, 3, 0, 0, 3, 0, 0, 1, 5, 2, 13, 15, 17, 1, 19],
    );

    let image = snapshot_image();
    seeds.insert(("restore_image", "valid-image".into()), [&[0u8][..], &image].concat());
    seeds.insert(("restore_image", "valid-image-fixup".into()), [&[FLAG_FIX_CHECKSUMS][..], &image].concat());
    seeds.insert(("restore_image", "truncated".into()), [&[0u8][..], &image[..image.len() / 2]].concat());
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = Backend::open(seed_config(empty_dir.path())).unwrap();
    let mut empty_image = vec![0u8];
    empty.snapshot().unwrap().write_to(&mut empty_image).unwrap();
    seeds.insert(("restore_image", "valid-empty".into()), empty_image);

    // MVCC steps (decoded by fuzzing::decode_mvcc_input): puts, a delete, a txn, a bulk txn of
    // 2,100 keys (so ranges cross the 1,024-key pieces), reads with and without a limit, a
    // compaction, a reopen.
    let bulk = 2100u16.to_le_bytes();
    seeds.insert(
        ("mvcc_model", "puts-bulk-compact-reopen".into()),
        vec![
            0, 1, 7, 1, 2, 9, 2, 0, 2, 3, 1, 1, 5, 4, bulk[0], bulk[1], 4, 7, 255, 30, 4, 1, 0, 5, 3, 6, 7, 1, 0, 0, 0,
            0, 3, 2, 0, 5, 7, 5, 200, 0, 0,
        ],
    );
    for (i, len) in [48usize, 96, 160].into_iter().enumerate() {
        seeds.insert(("mvcc_model", format!("random-{i}")), pseudo_random(100 + i as u64, len));
    }

    for ((target, name), bytes) in seeds {
        let dir = root.join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
    }
}
