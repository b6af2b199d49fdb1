//! Test and fuzzing harnesses, shared by the cargo-fuzz targets in `fuzz/`, the corpus replay
//! in `tests/fuzz_corpus_test.rs` and the proptest models in `tests/model_test.rs` and
//! `tests/mvcc_model_test.rs`, so that plain
//! `cargo test` runs exactly the code the fuzzers run. Not part of the API (hidden, unstable).
//!
//! Every function here panics when the engine breaks a promise (that is how a fuzzer or
//! proptest notices) and returns normally for any input the engine handles, whether it opens
//! or reports an error. Inputs are raw bytes, parsed here without extra dependencies:
//!
//! - [`open_segments`]: a directory of files (a `MANIFEST`, segments, leftovers) handed to
//!   `Backend::open`, read-only and read-write.
//! - [`ops_model`]: a sequence of [`Op`]s run against a `BTreeMap` model by [`run_model`].
//! - [`restore_image`]: `restore` (and `inspect_snapshot`) of an image.
//! - [`mvcc_model`]: a sequence of [`MvccStep`]s on the MVCC store against a history of its
//!   states ([`run_mvcc_model`]; `mvcc_model.rs`).
//!
//! Checksums stop a mutation-based fuzzer at the first CRC; inputs therefore carry a flag
//! asking the harness to recompute every checksum (headers, manifest, frames, image records and
//! the image's content hash) before use, so that the decoders behind them are reached too.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{Backend, BatchTx, Config, Error, ReadTx, RecoveryStats, Result};

mod mvcc_model;
pub use mvcc_model::{MAX_BULK, MAX_MVCC_STEPS, MvccStep, decode_mvcc_input, mvcc_model, run_mvcc_model};

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// The content of a database as the model keeps it: bucket name → key → value.
pub type Model = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

const MAGIC: &[u8; 8] = b"LOGTREE\0";
const HEADER_LEN: usize = 32;
const FRAME_HEADER_LEN: usize = 16;
const FRAME_TX_END: u8 = 1;
const FRAME_TX_ABORT: u8 = 3;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// The hash [`Backend::hash`] must give for `model`, computed from the definition in
/// DESIGN.md §9.2 (written out again here, apart from `src/backend/hash.rs`): a crc32fast hasher
/// fed, per bucket in name order, tag 1 and the name, then per key in order (unless ignored)
/// tag 2, the key and the value, each name, key and value preceded by its length (u32 LE).
pub fn model_hash(model: &Model, ignores: &[(&[u8], &[u8])]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let part = |h: &mut crc32fast::Hasher, b: &[u8]| {
        h.update(&(b.len() as u32).to_le_bytes());
        h.update(b);
    };
    for (name, keys) in model {
        h.update(&[1]);
        part(&mut h, name);
        for (k, v) in keys {
            if ignores.iter().any(|&(b, i)| b == name.as_slice() && i == k.as_slice()) {
                continue;
            }
            h.update(&[2]);
            part(&mut h, k);
            part(&mut h, v);
        }
    }
    h.finalize()
}

/// `size_in_use` by its definition: every bucket's creation record and every live key's put
/// record, as encoded in the log (DESIGN.md §2.5).
pub fn model_live_bytes(model: &Model) -> u64 {
    let mut n = 0u64;
    for (name, keys) in model {
        n += 9 + name.len() as u64;
        for (k, v) in keys {
            n += 13 + k.len() as u64 + v.len() as u64;
        }
    }
    n
}

/// Everything `rtx` holds, read with `for_each`.
pub fn dump(rtx: &ReadTx) -> Model {
    let mut m = Model::new();
    for b in rtx.buckets() {
        let mut keys = BTreeMap::new();
        rtx.for_each(&b, |k, v| {
            keys.insert(k.to_vec(), v.to_vec());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("for_each of listed bucket {b:?} failed: {e}"));
        m.insert(b, keys);
    }
    m
}

/// Reads everything `rtx` holds through every read method and checks that they agree with
/// each other and with `expect` (when given); returns what was read.
pub fn read_everything(rtx: &ReadTx, expect: Option<&Model>, ctx: &str) -> Model {
    let m = dump(rtx);
    if let Some(e) = expect {
        assert_eq!(&m, e, "{ctx}: content differs from the model");
    }
    for (b, keys) in &m {
        assert!(rtx.has_bucket(b), "{ctx}: has_bucket({b:?}) false for a listed bucket");
        assert_eq!(rtx.bucket_len(b).ok(), Some(keys.len()), "{ctx}: bucket_len({b:?})");
        let scanned: Vec<(Vec<u8>, Vec<u8>)> = rtx
            .scan(b, [], None)
            .unwrap_or_else(|e| panic!("{ctx}: scan({b:?}) failed: {e}"))
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_>>()
            .unwrap_or_else(|e| panic!("{ctx}: scan({b:?}) yielded an error: {e}"));
        let want: Vec<(Vec<u8>, Vec<u8>)> = keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(scanned, want, "{ctx}: scan({b:?}) differs from for_each");
        for (k, v) in keys {
            assert_eq!(rtx.get(b, k).ok(), Some(Some(v.clone())), "{ctx}: get({b:?}, {k:?})");
            assert_eq!(rtx.get_ref(b, k).ok(), Some(Some(v.as_slice())), "{ctx}: get_ref({b:?}, {k:?})");
        }
        if let (Some(first), Some(last)) = (keys.keys().next(), keys.keys().next_back()) {
            let mut end = last.clone();
            end.push(0);
            let ranged = rtx.range(b, first, &end, 0).unwrap_or_else(|e| panic!("{ctx}: range({b:?}) failed: {e}"));
            assert_eq!(ranged, want, "{ctx}: range({b:?}) over all keys");
        }
    }
    m
}

fn hash_of(db: &Backend, ctx: &str) -> u32 {
    db.hash(&[]).unwrap_or_else(|e| panic!("{ctx}: hash failed: {e}"))
}

/// The files of a directory (not LOCK, which holds no data), by name.
fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for e in fs::read_dir(dir).expect("list directory") {
        let e = e.expect("directory entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "LOCK" || !e.file_type().expect("file type").is_file() {
            continue;
        }
        files.insert(name, fs::read(e.path()).expect("read file"));
    }
    files
}

/// Copies every regular file of `from` into the new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create directory");
    for e in fs::read_dir(from).expect("list directory") {
        let e = e.expect("directory entry");
        if e.file_type().expect("file type").is_file() {
            fs::copy(e.path(), to.join(e.file_name())).expect("copy file");
        }
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("logtree-fuzz-").tempdir().expect("create temporary directory")
}

/// Recomputes the checksums of a file that begins with a logtree header: the header's, then a
/// manifest's (when `manifest`) or every frame's, walking frames by their length fields.
pub fn fix_file_checksums(b: &mut [u8], manifest: bool) {
    if b.len() < HEADER_LEN || &b[..8] != MAGIC {
        return;
    }
    let crc = crc32fast::hash(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    if manifest {
        let Some(count) = u32_at(b, HEADER_LEN + 8) else { return };
        let end = (HEADER_LEN + 12).saturating_add((count as usize).saturating_mul(4));
        if end.saturating_add(4) <= b.len() {
            let crc = crc32fast::hash(&b[HEADER_LEN..end]);
            b[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        }
        return;
    }
    let mut off = HEADER_LEN;
    while let Some(end) = frame_end_at(b, off) {
        let crc = crc32fast::hash(&b[off + 4..end]);
        b[off..off + 4].copy_from_slice(&crc.to_le_bytes());
        off = end;
    }
}

/// The end of the frame at `off`, by its length field, if it has a non-zero one and fits in
/// `b` (zeros, as in space a writer reserved, end the walk).
fn frame_end_at(b: &[u8], off: usize) -> Option<usize> {
    let len = u32_at(b, off + 4)?;
    let end = (off + FRAME_HEADER_LEN).checked_add(len as usize)?;
    (len > 0 && end <= b.len()).then_some(end)
}

/// Where the frames of a segment file end, walking them by their length fields: the end of
/// the file, or where zeros (reserved space) or a frame that does not fit begin.
fn frames_end(b: &[u8]) -> usize {
    let mut off = HEADER_LEN.min(b.len());
    while let Some(end) = frame_end_at(b, off) {
        off = end;
    }
    off
}

/// The file name of the last segment `dir`'s manifest lists, if it has a readable one.
fn last_segment_name(dir: &Path) -> Option<String> {
    let ids = fs::read(dir.join("MANIFEST")).ok().and_then(|m| manifest_ids(&m))?;
    Some(format!("seg-{:010}.log", ids.last()?))
}

/// Bytes of zeros after the frames of the last segment listed in `dir`'s manifest (space a
/// live writer reserved); panics if anything else follows them.
fn reserved_tail(dir: &Path) -> u64 {
    let Some(name) = last_segment_name(dir) else { return 0 };
    let b = fs::read(dir.join(name)).expect("read the last segment");
    let end = frames_end(&b);
    assert!(b[end..].iter().all(|&x| x == 0), "bytes other than zeros after the last frame");
    (b.len() - end) as u64
}

/// The segment ids a manifest lists, if it parses (DESIGN.md §2.2).
pub fn manifest_ids(b: &[u8]) -> Option<Vec<u32>> {
    let count = u32_at(b, HEADER_LEN + 8)? as usize;
    (0..count).map(|i| u32_at(b, HEADER_LEN + 12 + 4 * i)).collect()
}

// ---------------------------------------------------------------------------------------------
// open_segments

/// The file each selector byte of an [`open_segments`] input names (selector modulo the length).
pub const OPEN_FILE_NAMES: [&str; 9] = [
    "MANIFEST",
    "seg-0000000001.log",
    "seg-0000000002.log",
    "seg-0000000003.log",
    "seg-0000000004.log",
    "MANIFEST.tmp",
    "seg-0000000005.log.tmp",
    "notes.txt",
    "SYNC-FAILED",
];

/// The bytes of a `SYNC-FAILED` file naming transaction `seq` as the last one known durable, or
/// (`None`) saying "tail unknown" (DESIGN.md §2.1, §5, §6).
pub fn sync_failed_file(seq: Option<u64>) -> Vec<u8> {
    crate::log::format::file_header(crate::log::format::KIND_SYNC_FAILED, seq.unwrap_or(u64::MAX)).to_vec()
}

/// Flag bit of the first input byte: recompute checksums before writing the files.
pub const FLAG_FIX_CHECKSUMS: u8 = 1;

/// Builds an [`open_segments`] input: a flags byte, then per file a selector byte (an index
/// into [`OPEN_FILE_NAMES`]), a u16 LE length and the bytes.
pub fn encode_open_input(flags: u8, files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = vec![flags];
    for (name, bytes) in files {
        let sel = OPEN_FILE_NAMES.iter().position(|n| n == name).expect("a name of OPEN_FILE_NAMES");
        let len = u16::try_from(bytes.len()).expect("files of at most 64 KiB");
        out.push(sel as u8);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// Parses an [`open_segments`] input into (file name, bytes); a later file of the same name
/// replaces an earlier one; a length running past the end takes what is left.
pub fn decode_open_input(data: &[u8]) -> (u8, Vec<(&'static str, Vec<u8>)>) {
    let Some((&flags, mut rest)) = data.split_first() else { return (0, Vec::new()) };
    let mut files: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
    while rest.len() >= 3 {
        let name = OPEN_FILE_NAMES[rest[0] as usize % OPEN_FILE_NAMES.len()];
        let len = (u16::from_le_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let mut bytes = rest[3..3 + len].to_vec();
        if flags & FLAG_FIX_CHECKSUMS != 0 {
            fix_file_checksums(&mut bytes, name.starts_with("MANIFEST"));
        }
        files.insert(name, bytes);
        rest = &rest[3 + len..];
    }
    (flags, files.into_iter().collect())
}

/// What [`open_segments`] saw, for tests that want to know a seed reaches the success path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOutcome {
    /// The read-only open succeeded.
    pub read_only_ok: bool,
    /// The read-write open succeeded.
    pub read_write_ok: bool,
    /// Keys found by the read-write open.
    pub keys: usize,
}

fn fuzz_config(dir: &Path, read_only: bool) -> Config {
    Config {
        read_only,
        sync: false,
        segment_size: crate::MIN_SEGMENT_SIZE,
        batch_interval: std::time::Duration::ZERO,
        ..Config::new(dir)
    }
}

/// A database directory `db` in a new temporary directory, holding `files` and a LOCK (a
/// read-only open needs one to lock; every database directory has one).
fn database_of(files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, PathBuf) {
    let tmp = temp_dir();
    let dir = tmp.path().join("db");
    fs::create_dir(&dir).expect("create db directory");
    fs::write(dir.join("LOCK"), b"").expect("write LOCK");
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).expect("write input file");
    }
    (tmp, dir)
}

/// Fuzz target: arbitrary files in a database directory.
///
/// Whatever the files, `Backend::open` read-only and read-write returns `Ok` or `Err`, never
/// panics. Beyond that, the promises of DESIGN.md §6 are checked:
/// - a read-only open modifies no file;
/// - a read-write open that reports corruption modifies no file either;
/// - when both succeed they see the same content (a torn tail is ignored or cut, not replayed);
/// - what opens reads back consistently through every read method, and hashes per definition;
/// - a read-write open leaves a log that takes a committed write and reopens with exactly the
///   old content plus that write, and no torn bytes.
pub fn open_segments(data: &[u8]) -> OpenOutcome {
    let (_, files) = decode_open_input(data);
    let (_tmp, dir) = database_of(&files);
    let before = dir_files(&dir);
    let mut outcome = OpenOutcome::default();

    let ro = Backend::open(fuzz_config(&dir, true));
    let ro_content = match &ro {
        Ok(db) => {
            outcome.read_only_ok = true;
            let m = read_everything(&db.read_tx(), None, "read-only open");
            assert_eq!(hash_of(db, "read-only open"), model_hash(&m, &[]), "read-only open: hash");
            let mut tx = db.batch_tx();
            assert!(matches!(tx.create_bucket("x"), Err(Error::ReadOnly)), "read-only open accepted a write");
            drop(tx);
            Some(m)
        }
        Err(_) => None,
    };
    let ro_corrupt = ro.as_ref().err().is_some_and(Error::is_corruption);
    let ro_damaged = ro.as_ref().ok().map(|db| {
        let r = db.recovery_stats();
        r.tail_damaged || r.lost_write
    });
    drop(ro);
    assert_eq!(dir_files(&dir), before, "a read-only open modified the files");

    // An open that may not cut a damaged tail refuses exactly the tails the read-only open
    // found damaged, changing nothing, and opens the rest as the default does. (On a copy: it
    // cuts what it may.)
    let (_copy, copy_dir) = database_of(&files);
    let strict = Backend::open(Config { cut_damaged_tail: false, ..fuzz_config(&copy_dir, false) });
    match (strict, ro_damaged) {
        (Err(e), Some(true)) => {
            assert!(
                matches!(e, Error::Corruption { .. }) && e.is_uncut_damaged_tail(),
                "a damaged tail refused with {e}"
            );
            assert_eq!(dir_files(&copy_dir), before, "an open that refused a damaged tail modified the files");
        }
        (Ok(_), Some(true)) => panic!("an open that may not cut a damaged tail opened"),
        (Ok(db), Some(false)) => {
            read_everything(&db.read_tx(), ro_content.as_ref(), "open that may not cut a damaged tail");
        }
        (Err(e), Some(false)) => panic!("an open that may not cut a damaged tail failed on a tail without damage: {e}"),
        // A read-only open also fails where there is no database yet; a read-write one makes it.
        (r, None) => assert!(
            !(ro_corrupt && r.is_ok()),
            "read-only open reported corruption but an open that may not cut a tail succeeded"
        ),
    }

    let rw = match Backend::open(fuzz_config(&dir, false)) {
        Ok(db) => db,
        Err(e) => {
            if e.is_corruption() {
                let after = dir_files(&dir);
                assert_eq!(after, before, "an open that reported corruption ({e}) modified the files");
            }
            assert!(ro_content.is_none(), "read-only open succeeded but read-write open failed: {e}");
            return outcome;
        }
    };
    assert!(!ro_corrupt, "read-only open reported corruption but read-write open succeeded");
    outcome.read_write_ok = true;
    let mut content = read_everything(&rw.read_tx(), ro_content.as_ref(), "read-write open");
    assert_eq!(hash_of(&rw, "read-write open"), model_hash(&content, &[]), "read-write open: hash");
    assert_eq!(rw.size_in_use(), model_live_bytes(&content), "read-write open: size_in_use");
    outcome.keys = content.values().map(BTreeMap::len).sum();

    let mut tx = rw.batch_tx();
    let wrote = tx.create_bucket("fuzz").and_then(|()| tx.put("fuzz", "key", "value"));
    wrote.unwrap_or_else(|e| panic!("a write after a successful open failed: {e}"));
    tx.commit().unwrap_or_else(|e| panic!("a commit after a successful open failed: {e}"));
    rw.close().unwrap_or_else(|e| panic!("close after a successful open failed: {e}"));
    content.entry(b"fuzz".to_vec()).or_default().insert(b"key".to_vec(), b"value".to_vec());

    let again = Backend::open(fuzz_config(&dir, false)).unwrap_or_else(|e| panic!("reopen after a write failed: {e}"));
    assert_tail(again.recovery_stats(), 0, "reopen after a clean close");
    read_everything(&again.read_tx(), Some(&content), "reopen after a write");
    again.close().unwrap_or_else(|e| panic!("second close failed: {e}"));
    outcome
}

// ---------------------------------------------------------------------------------------------
// restore_image

const IMAGE_END_TAG: u8 = 0xFE;
const IMAGE_END_BODY_LEN: usize = 21;

/// Recomputes an image's checksums: its header's, every record's, and the end record's counts
/// and content hash (from the records before it, as DESIGN.md describes the image; by the
/// definition of the header's version).
pub fn fix_image_checksums(b: &mut [u8]) {
    if b.len() < HEADER_LEN || &b[..8] != MAGIC {
        return;
    }
    let crc = crc32fast::hash(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut names: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let (mut buckets, mut keys) = (0u64, 0u64);
    let mut hash = crate::backend::ContentHasher::new(u32_at(b, 8) == Some(1));
    let mut off = HEADER_LEN;
    while let Some(len) = u32_at(b, off + 4) {
        let start = off + 8;
        let end = match start.checked_add(len as usize) {
            Some(end) if end <= b.len() && len > 0 => end,
            _ => break,
        };
        let body = &mut b[start..end];
        let id = u32_at(body, 1);
        match body[0] {
            3 => {
                let name = u32_at(body, 5).and_then(|n| body.get(9..9usize.checked_add(n as usize)?));
                if let (Some(id), Some(name)) = (id, name) {
                    hash.bucket(name);
                    names.insert(id, name.to_vec());
                    buckets += 1;
                }
            }
            1 => {
                let (kl, vl) = (u32_at(body, 5).unwrap_or(0) as usize, u32_at(body, 9).unwrap_or(0) as usize);
                let kv = body.get(13..13usize.saturating_add(kl).saturating_add(vl));
                if let (Some(kv), true) = (kv, id.is_some_and(|id| names.contains_key(&id))) {
                    hash.pair(&kv[..kl], &kv[kl..]);
                    keys += 1;
                }
            }
            IMAGE_END_TAG if body.len() == IMAGE_END_BODY_LEN => {
                body[1..9].copy_from_slice(&buckets.to_le_bytes());
                body[9..17].copy_from_slice(&keys.to_le_bytes());
                body[17..21].copy_from_slice(&hash.clone().finish().to_le_bytes());
            }
            _ => {}
        }
        let crc = crc32fast::hash(&b[off + 4..end]);
        b[off..off + 4].copy_from_slice(&crc.to_le_bytes());
        off = end;
    }
}

/// What [`restore_image`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// `inspect_snapshot` accepted the image.
    pub inspect_ok: bool,
    /// `restore` built a database from it.
    pub restore_ok: bool,
}

/// Fuzz target: `restore` of arbitrary bytes (the first byte is flags: bit 0 recomputes the
/// checksums, see [`fix_image_checksums`]; the rest is the image).
///
/// `restore` must return `Err` — leaving neither the target nor a half-built directory
/// behind — or build a database that opens, holds as many buckets and keys as the image says,
/// hashes as the image says, and snapshots back to an image `inspect_snapshot` agrees with.
/// `restore` never accepts what `inspect_snapshot` refuses, and both report the same figures.
pub fn restore_image(data: &[u8]) -> RestoreOutcome {
    let Some((&flags, image)) = data.split_first() else { return RestoreOutcome::default() };
    let mut image = image.to_vec();
    if flags & FLAG_FIX_CHECKSUMS != 0 {
        fix_image_checksums(&mut image);
    }
    let inspected = crate::inspect_snapshot(&mut image.as_slice());
    let tmp = temp_dir();
    let target = tmp.path().join("db");
    let restored = crate::restore(&mut image.as_slice(), &target);
    let mut outcome = RestoreOutcome { inspect_ok: inspected.is_ok(), restore_ok: restored.is_ok() };
    if let Err(e) = restored {
        let left: Vec<_> = fs::read_dir(tmp.path()).expect("list parent").collect();
        assert!(left.is_empty(), "a failed restore ({e}) left {} entries behind", left.len());
        return outcome;
    }
    let info = inspected.unwrap_or_else(|e| panic!("restore accepted an image that inspect refuses: {e}"));
    let db =
        Backend::open(fuzz_config(&target, false)).unwrap_or_else(|e| panic!("restored database does not open: {e}"));
    let content = read_everything(&db.read_tx(), None, "restored database");
    assert_eq!(hash_of(&db, "restored database"), info.hash, "restored database does not hash as the image says");
    assert_eq!(model_hash(&content, &[]), info.hash, "restored content does not hash as the image says");
    let stats = db.stats();
    assert_eq!((stats.buckets as u64, stats.keys), (info.buckets, info.keys), "restored counts differ from the image");
    let snap = db.snapshot().unwrap_or_else(|e| panic!("snapshot of the restored database: {e}"));
    let mut again = Vec::new();
    let n = snap.write_to(&mut again).unwrap_or_else(|e| panic!("write_to: {e}"));
    assert_eq!(n, again.len() as u64, "write_to's count");
    assert_eq!(n, snap.size(), "Snapshot::size");
    let info2 = crate::inspect_snapshot(&mut again.as_slice()).unwrap_or_else(|e| panic!("re-image refused: {e}"));
    assert_eq!((info2.buckets, info2.keys, info2.hash), (info.buckets, info.keys, info.hash), "re-image differs");
    drop(snap);
    db.close().unwrap_or_else(|e| panic!("close of the restored database: {e}"));
    outcome.restore_ok = true;
    outcome
}

// ---------------------------------------------------------------------------------------------
// ops_model: the model-based state machine

/// Bucket names an operation can name (index modulo the length): three real names, the empty
/// name (`Error::EmptyKey`) and one longer than `MAX_KEY_LEN` (`Error::KeyTooLarge`).
pub const BUCKET_COUNT: u8 = 5;
/// Keys an operation can name (index modulo the length): eight real keys, chosen so that
/// prefixes and neighbours collide, then the empty key and an over-long key.
pub const KEY_COUNT: u8 = 10;

/// The name of bucket `i`.
pub fn bucket_name(i: u8) -> Vec<u8> {
    match i % BUCKET_COUNT {
        0 => b"b0".to_vec(),
        1 => b"b1".to_vec(),
        2 => b"b2".to_vec(),
        3 => Vec::new(),
        _ => vec![b'B'; crate::MAX_KEY_LEN + 1],
    }
}

/// Key `i`.
pub fn key(i: u8) -> Vec<u8> {
    const KEYS: [&[u8]; 8] = [b"a", b"aa", b"ab", b"b", b"ba", b"c", b"\x00", b"\xff\xff"];
    match i % KEY_COUNT {
        8 => Vec::new(),
        9 => vec![b'k'; crate::MAX_KEY_LEN + 1],
        j => KEYS[j as usize].to_vec(),
    }
}

/// A value: `len` bytes of a pattern that depends on `seed` and the position, so that a value
/// read from a wrong offset or of a wrong key does not pass as right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value {
    /// Length in bytes.
    pub len: u16,
    /// Pattern seed.
    pub seed: u8,
}

impl Value {
    /// The bytes.
    pub fn bytes(self) -> Vec<u8> {
        (0..self.len as usize).map(|i| self.seed.wrapping_add((i as u8).wrapping_mul(31)) ^ (i >> 8) as u8).collect()
    }
}

/// A read, checked against the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// `get`.
    Get {
        /// Bucket index.
        bucket: u8,
        /// Key index.
        key: u8,
    },
    /// `range(bucket, start, end, limit)`; `None` bounds are the empty string (for `end`: the
    /// single key `start`).
    Range {
        /// Bucket index.
        bucket: u8,
        /// Key index of the start, or empty.
        start: Option<u8>,
        /// Key index of the end, or empty.
        end: Option<u8>,
        /// 0 is no limit.
        limit: u8,
    },
    /// `scan(bucket, start, end)`.
    Scan {
        /// Bucket index.
        bucket: u8,
        /// Key index of the start, or empty.
        start: Option<u8>,
        /// Key index of the end, or to the bucket's end.
        end: Option<u8>,
    },
    /// `for_each`, whose callback stops the walk with an error after `stop_after` pairs (0:
    /// never).
    ForEach {
        /// Bucket index.
        bucket: u8,
        /// Pairs before the callback returns an error.
        stop_after: u8,
    },
    /// `buckets`, `has_bucket` and `bucket_len` of every bucket.
    Buckets,
}

/// An operation inside a `BatchTx`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxOp {
    /// `create_bucket`.
    CreateBucket(u8),
    /// `delete_bucket`.
    DeleteBucket(u8),
    /// `put`, or `seq_put` when `seq`.
    Put {
        /// Bucket index.
        bucket: u8,
        /// Key index.
        key: u8,
        /// The value.
        value: Value,
        /// Call `seq_put` instead.
        seq: bool,
    },
    /// `delete`.
    Delete {
        /// Bucket index.
        bucket: u8,
        /// Key index.
        key: u8,
    },
    /// A read through the `BatchTx` (it reads its own writes).
    Read(Read),
    /// A `ReadTx` taken while the `BatchTx` is open: it sees the state before the transaction,
    /// now and however long it is kept.
    TakeReadTx,
    /// A second `batch_tx()` on this thread: returned unusable, and harmless to the first.
    NestedBatchTx,
    /// `defrag` while this thread holds the writer: refused with `TxUnusable`.
    Defrag,
    /// `force_commit` while the transaction is open.
    ForceCommit,
}

/// How a `BatchTx` ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxEnd {
    /// Dropped: visible at once.
    Drop,
    /// `commit()`: visible and durable.
    Commit,
    /// `rollback()`: discarded.
    Rollback,
}

/// A step of the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// One write transaction.
    Tx {
        /// Its operations.
        ops: Vec<TxOp>,
        /// How it ends.
        end: TxEnd,
    },
    /// A read through a fresh `ReadTx`.
    Read(Read),
    /// Takes a `ReadTx` and keeps it, with the state it must go on showing.
    TakeReadTx,
    /// Checks a kept `ReadTx` (index modulo the number kept) against its state.
    CheckReadTx(u8),
    /// Drops a kept `ReadTx`.
    DropReadTx(u8),
    /// `force_commit`.
    ForceCommit,
    /// `hash`, leaving out one (bucket, key) pair if given.
    Hash(Option<(u8, u8)>),
    /// `close`, then open the directory again: everything is there, no torn tail.
    CloseReopen,
    /// The backend dropped without `close`, then the directory opened again: everything is
    /// there, no torn tail.
    DropReopen,
    /// A crash: the directory's files are copied as they are (the page cache survives a
    /// process crash), the copy is opened, and the old backend abandoned. Everything written is
    /// there, no torn tail.
    CrashReopen,
    /// Copies the directory as it is now, with the state it holds.
    Checkpoint,
    /// Opens a copy of a checkpoint (index modulo their number), with the bytes that the log
    /// gained since then cut at `tear` (modulo the length of the next transaction): the log cut
    /// at or inside a frame. The checkpoint's state must come back, the bytes after it counted
    /// as torn.
    ReopenCheckpoint {
        /// Which checkpoint.
        which: u8,
        /// How many bytes of what followed to keep.
        tear: u16,
    },
    /// `snapshot`, `write_to`, `inspect_snapshot`, `restore`, open the copy: equal content,
    /// equal hash. With `switch`, go on with the restored copy.
    SnapshotRestore {
        /// Continue on the restored database.
        switch: bool,
    },
    /// `defrag`: content and hash unchanged, kept `ReadTx`s unaffected.
    Defrag,
}

/// Settings of a model run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// `Config::batch_limit`.
    pub batch_limit: usize,
    /// `Config::segment_size`.
    pub segment_size: u64,
    /// `Config::layer_entries`: small by default, so that runs seal layers and merge them.
    pub layer_entries: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { batch_limit: 10_000, segment_size: crate::MIN_SEGMENT_SIZE, layer_entries: 4 }
    }
}

/// The outcome class of a call, to compare with what the model predicts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Ok,
    EmptyKey,
    KeyTooLarge,
    BucketNotFound,
    TxUnusable,
    Other(String),
}

fn kind<T>(r: &Result<T>) -> Kind {
    match r {
        Ok(_) => Kind::Ok,
        Err(Error::EmptyKey) => Kind::EmptyKey,
        Err(Error::KeyTooLarge { .. }) => Kind::KeyTooLarge,
        Err(Error::BucketNotFound { .. }) => Kind::BucketNotFound,
        Err(Error::TxUnusable(_)) => Kind::TxUnusable,
        Err(e) => Kind::Other(e.to_string()),
    }
}

fn key_check(k: &[u8]) -> Kind {
    if k.is_empty() {
        Kind::EmptyKey
    } else if k.len() > crate::MAX_KEY_LEN {
        Kind::KeyTooLarge
    } else {
        Kind::Ok
    }
}

/// A callback of `for_each`.
type Visit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<()>;

/// The read methods `ReadTx` and `BatchTx` share, as one trait so that a read is checked the
/// same way through either.
trait Reads {
    fn get(&self, b: &[u8], k: &[u8]) -> Result<Option<Vec<u8>>>;
    fn range(&self, b: &[u8], s: &[u8], e: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    fn scan_all(&self, b: &[u8], s: &[u8], e: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    fn for_each_dyn(&self, b: &[u8], f: Visit<'_>) -> Result<()>;
    fn buckets(&self) -> Vec<Vec<u8>>;
    fn has_bucket(&self, b: &[u8]) -> bool;
    fn bucket_len(&self, b: &[u8]) -> Result<usize>;
}

macro_rules! impl_reads {
    ($t:ty) => {
        impl Reads for $t {
            fn get(&self, b: &[u8], k: &[u8]) -> Result<Option<Vec<u8>>> {
                let owned = <$t>::get(self, b, k)?;
                let borrowed = <$t>::get_ref(self, b, k)?;
                assert_eq!(owned.as_deref(), borrowed, "get and get_ref disagree");
                Ok(owned)
            }
            fn range(&self, b: &[u8], s: &[u8], e: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
                <$t>::range(self, b, s, e, limit)
            }
            fn scan_all(&self, b: &[u8], s: &[u8], e: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
                <$t>::scan(self, b, s, e)?.map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect()
            }
            fn for_each_dyn(&self, b: &[u8], f: Visit<'_>) -> Result<()> {
                <$t>::for_each(self, b, f)
            }
            fn buckets(&self) -> Vec<Vec<u8>> {
                <$t>::buckets(self)
            }
            fn has_bucket(&self, b: &[u8]) -> bool {
                <$t>::has_bucket(self, b)
            }
            fn bucket_len(&self, b: &[u8]) -> Result<usize> {
                <$t>::bucket_len(self, b)
            }
        }
    };
}
impl_reads!(ReadTx);
impl_reads!(BatchTx<'_>);

fn key_opt(k: Option<u8>) -> Vec<u8> {
    k.map(key).unwrap_or_default()
}

/// The pairs of `b` with keys in `[s, e)` (`e` `None`: to the end). `BTreeMap::range` panics
/// when `s > e`; the engine returns nothing then, and so does a filter.
fn pairs(b: &BTreeMap<Vec<u8>, Vec<u8>>, s: &[u8], e: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    b.iter()
        .filter(|(k, _)| k.as_slice() >= s && e.is_none_or(|e| k.as_slice() < e))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Checks one read against the model `m`.
fn check_read(r: &dyn Reads, m: &Model, read: &Read, ctx: &str) {
    match read {
        Read::Get { bucket, key: k } => {
            let (b, k) = (bucket_name(*bucket), key(*k));
            let got = r.get(&b, &k);
            let want = if k.is_empty() {
                Err(Kind::EmptyKey)
            } else {
                m.get(&b).map(|keys| keys.get(&k).cloned()).ok_or(Kind::BucketNotFound)
            };
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{ctx}: get({b:?}, {k:?})"),
                (g, Err(w)) => assert_eq!(kind(&g), w, "{ctx}: get({b:?}, {k:?})"),
                (Err(e), Ok(_)) => panic!("{ctx}: get({b:?}, {k:?}) failed: {e}"),
            }
        }
        Read::Range { bucket, start, end, limit } => {
            let (b, s, e) = (bucket_name(*bucket), key_opt(*start), key_opt(*end));
            let got = r.range(&b, &s, &e, *limit as usize);
            let want = match m.get(&b) {
                None => Err(Kind::BucketNotFound),
                Some(keys) if e.is_empty() => {
                    // As etcd's UnsafeRange: an empty end asks for the single key `start`.
                    Ok(keys.get(&s).filter(|_| !s.is_empty()).map(|v| vec![(s.clone(), v.clone())]).unwrap_or_default())
                }
                Some(keys) => {
                    let mut p = pairs(keys, &s, Some(&e));
                    if *limit > 0 {
                        p.truncate(*limit as usize);
                    }
                    Ok(p)
                }
            };
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{ctx}: range({b:?}, {s:?}, {e:?}, {limit})"),
                (g, Err(w)) => assert_eq!(kind(&g), w, "{ctx}: range({b:?}, {s:?}, {e:?}, {limit})"),
                (Err(err), Ok(_)) => panic!("{ctx}: range({b:?}, {s:?}, {e:?}, {limit}) failed: {err}"),
            }
        }
        Read::Scan { bucket, start, end } => {
            let (b, s) = (bucket_name(*bucket), key_opt(*start));
            let e = end.map(key);
            let got = r.scan_all(&b, &s, e.as_deref());
            match (got, m.get(&b)) {
                (Ok(g), Some(keys)) => assert_eq!(g, pairs(keys, &s, e.as_deref()), "{ctx}: scan({b:?}, {s:?}, {e:?})"),
                (g, None) => assert_eq!(kind(&g), Kind::BucketNotFound, "{ctx}: scan of missing bucket {b:?}"),
                (Err(err), Some(_)) => panic!("{ctx}: scan({b:?}) failed: {err}"),
            }
        }
        Read::ForEach { bucket, stop_after } => {
            let b = bucket_name(*bucket);
            let stop = *stop_after as usize;
            let mut seen = Vec::new();
            let got = r.for_each_dyn(&b, &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                if seen.len() == stop { Err(Error::InvalidConfig("stop".into())) } else { Ok(()) }
            });
            match m.get(&b) {
                None => assert_eq!(kind(&got), Kind::BucketNotFound, "{ctx}: for_each of missing bucket {b:?}"),
                Some(keys) => {
                    let all = pairs(keys, &[], None);
                    if stop > 0 && all.len() >= stop {
                        assert!(
                            matches!(&got, Err(Error::InvalidConfig(s)) if s == "stop"),
                            "{ctx}: for_each did not return the callback's error: {got:?}"
                        );
                        assert_eq!(seen, all[..stop], "{ctx}: for_each({b:?}) stopped");
                    } else {
                        assert!(got.is_ok(), "{ctx}: for_each({b:?}) failed: {got:?}");
                        assert_eq!(seen, all, "{ctx}: for_each({b:?})");
                    }
                }
            }
        }
        Read::Buckets => {
            assert_eq!(r.buckets(), m.keys().cloned().collect::<Vec<_>>(), "{ctx}: buckets()");
            for i in 0..BUCKET_COUNT {
                let b = bucket_name(i);
                assert_eq!(r.has_bucket(&b), m.contains_key(&b), "{ctx}: has_bucket({b:?})");
                match m.get(&b) {
                    Some(keys) => assert_eq!(r.bucket_len(&b).ok(), Some(keys.len()), "{ctx}: bucket_len({b:?})"),
                    None => assert_eq!(kind(&r.bucket_len(&b)), Kind::BucketNotFound, "{ctx}: bucket_len({b:?})"),
                }
            }
        }
    }
}

/// Every read of every bucket and key, against `m`.
fn check_all(r: &dyn Reads, m: &Model, ctx: &str) {
    check_read(r, m, &Read::Buckets, ctx);
    for b in 0..3 {
        check_read(r, m, &Read::Scan { bucket: b, start: None, end: None }, ctx);
        for k in 0..KEY_COUNT {
            check_read(r, m, &Read::Get { bucket: b, key: k }, ctx);
        }
    }
}

struct Checkpoint {
    dir: PathBuf,
    model: Model,
}

/// The state machine: a backend, its directory, the model of what it holds, kept `ReadTx`s
/// with the state each must show, and checkpoints.
struct Machine {
    root: tempfile::TempDir,
    dirs: u32,
    dir: PathBuf,
    cfg: ModelConfig,
    db: Option<Backend>,
    model: Model,
    held: Vec<(ReadTx, Model)>,
    checkpoints: Vec<Checkpoint>,
    /// `ReadTx::seq` of the current backend's latest view.
    seq: u64,
}

const MAX_HELD: usize = 4;
const MAX_CHECKPOINTS: usize = 4;

impl Machine {
    fn new(cfg: ModelConfig) -> Machine {
        let root = temp_dir();
        let mut m = Machine {
            dir: PathBuf::new(),
            root,
            dirs: 0,
            cfg,
            db: None,
            model: Model::new(),
            held: Vec::new(),
            checkpoints: Vec::new(),
            seq: 0,
        };
        m.dir = m.new_dir();
        let db = m.open(&m.dir.clone(), "initial open");
        m.db = Some(db);
        m
    }

    fn new_dir(&mut self) -> PathBuf {
        self.dirs += 1;
        self.root.path().join(format!("db{}", self.dirs))
    }

    fn config(&self, dir: &Path) -> Config {
        Config {
            sync: false,
            segment_size: self.cfg.segment_size,
            batch_limit: self.cfg.batch_limit,
            layer_entries: self.cfg.layer_entries,
            batch_interval: std::time::Duration::ZERO,
            ..Config::new(dir)
        }
    }

    fn open(&mut self, dir: &Path, ctx: &str) -> Backend {
        let db = Backend::open(self.config(dir)).unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
        self.seq = db.read_tx().seq();
        db
    }

    fn db(&self) -> &Backend {
        self.db.as_ref().expect("a backend is open")
    }

    /// The full check after every step: content through every read method, the hash by its
    /// definition, `size_in_use` by its definition, the stats' counts.
    fn check(&mut self, ctx: &str) {
        let db = self.db.as_ref().expect("a backend is open");
        let rtx = db.read_tx();
        assert!(rtx.seq() >= self.seq, "{ctx}: ReadTx::seq went back from {} to {}", self.seq, rtx.seq());
        self.seq = rtx.seq();
        read_everything(&rtx, Some(&self.model), ctx);
        check_all(&rtx, &self.model, ctx);
        assert_eq!(hash_of(db, ctx), model_hash(&self.model, &[]), "{ctx}: hash");
        assert_eq!(db.size_in_use(), model_live_bytes(&self.model), "{ctx}: size_in_use");
        let stats = db.stats();
        let keys: usize = self.model.values().map(BTreeMap::len).sum();
        assert_eq!((stats.buckets, stats.keys), (self.model.len(), keys as u64), "{ctx}: stats counts");
        assert!(stats.durable_seq <= stats.written_seq, "{ctx}: durable beyond written: {stats:?}");
    }

    fn hold(&mut self, rtx: ReadTx, model: Model) {
        if self.held.len() == MAX_HELD {
            self.held.remove(0);
        }
        self.held.push((rtx, model));
    }

    fn step(&mut self, op: &Op, ctx: &str) {
        match op {
            Op::Tx { ops, end } => self.tx(ops, *end, ctx),
            Op::Read(read) => check_read(&self.db().read_tx(), &self.model, read, ctx),
            Op::TakeReadTx => {
                let rtx = self.db().read_tx();
                self.hold(rtx, self.model.clone());
            }
            Op::CheckReadTx(i) => {
                if !self.held.is_empty() {
                    let (rtx, m) = &self.held[*i as usize % self.held.len()];
                    read_everything(rtx, Some(m), &format!("{ctx}: kept ReadTx"));
                    check_all(rtx, m, &format!("{ctx}: kept ReadTx"));
                }
            }
            Op::DropReadTx(i) => {
                if !self.held.is_empty() {
                    let n = *i as usize % self.held.len();
                    self.held.remove(n);
                }
            }
            Op::ForceCommit => self.db().force_commit().unwrap_or_else(|e| panic!("{ctx}: force_commit: {e}")),
            Op::Hash(ignore) => {
                let pair = ignore.map(|(b, k)| (bucket_name(b), key(k)));
                let ignores: Vec<(&[u8], &[u8])> = pair.iter().map(|(b, k)| (b.as_slice(), k.as_slice())).collect();
                let got = self.db().hash(&ignores).unwrap_or_else(|e| panic!("{ctx}: hash: {e}"));
                assert_eq!(got, model_hash(&self.model, &ignores), "{ctx}: hash ignoring {pair:?}");
            }
            Op::CloseReopen => {
                let db = self.db.take().expect("open");
                db.close().unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
                let dir = self.dir.clone();
                let db = self.open(&dir, ctx);
                assert_tail(db.recovery_stats(), 0, &format!("{ctx}: after a clean close"));
                self.db = Some(db);
            }
            Op::DropReopen => {
                self.db = None;
                let dir = self.dir.clone();
                let db = self.open(&dir, ctx);
                assert_tail(db.recovery_stats(), 0, &format!("{ctx}: after a drop"));
                self.db = Some(db);
            }
            Op::CrashReopen => {
                let copy = self.new_dir();
                copy_dir(&self.dir, &copy);
                // A read-only open of the crashed files sees the same, and changes nothing.
                let ro = Backend::open(Config { read_only: true, ..self.config(&copy) })
                    .unwrap_or_else(|e| panic!("{ctx}: read-only open of the crashed files: {e}"));
                read_everything(&ro.read_tx(), Some(&self.model), &format!("{ctx}: read-only open"));
                drop(ro);
                // Between writes, the only tail is the space the writer reserved: zeros.
                let reserved = reserved_tail(&copy);
                let db = self.open(&copy, ctx);
                assert_tail(db.recovery_stats(), reserved, &format!("{ctx}: after a crash between writes"));
                // The crashed process's backend goes; what it wrote is in the copy.
                self.db = Some(db);
                self.dir = copy;
            }
            Op::Checkpoint => {
                let copy = self.new_dir();
                copy_dir(&self.dir, &copy);
                if self.checkpoints.len() == MAX_CHECKPOINTS {
                    self.checkpoints.remove(0);
                }
                self.checkpoints.push(Checkpoint { dir: copy, model: self.model.clone() });
            }
            Op::ReopenCheckpoint { which, tear } => self.reopen_checkpoint(*which, *tear, ctx),
            Op::SnapshotRestore { switch } => self.snapshot_restore(*switch, ctx),
            Op::Defrag => {
                let before = self.db().size();
                let stats = self.db().defrag().unwrap_or_else(|e| panic!("{ctx}: defrag: {e}"));
                assert_eq!(stats.size_before, before, "{ctx}: DefragStats::size_before");
                assert_eq!(stats.size_after, self.db().size(), "{ctx}: DefragStats::size_after");
                assert_eq!(stats.size_in_use, model_live_bytes(&self.model), "{ctx}: DefragStats::size_in_use");
            }
        }
        self.check(ctx);
    }

    fn tx(&mut self, ops: &[TxOp], end: TxEnd, ctx: &str) {
        let db = self.db.as_ref().expect("open");
        let before = self.model.clone();
        let mut work = self.model.clone();
        let seq_before = db.read_tx().seq();
        let mut wrote = false;
        let mut taken = Vec::new();
        let mut tx = db.batch_tx();
        for (i, op) in ops.iter().enumerate() {
            let ctx = &format!("{ctx}, tx op {i} {op:?}");
            match op {
                TxOp::CreateBucket(b) => {
                    let name = bucket_name(*b);
                    let want = key_check(&name);
                    assert_eq!(kind(&tx.create_bucket(&name)), want, "{ctx}");
                    if want == Kind::Ok && !work.contains_key(&name) {
                        work.insert(name, BTreeMap::new());
                        wrote = true;
                    }
                }
                TxOp::DeleteBucket(b) => {
                    let name = bucket_name(*b);
                    assert_eq!(kind(&tx.delete_bucket(&name)), Kind::Ok, "{ctx}");
                    wrote |= work.remove(&name).is_some();
                }
                TxOp::Put { bucket, key: k, value, seq } => {
                    let (b, k, v) = (bucket_name(*bucket), key(*k), value.bytes());
                    let r = if *seq { tx.seq_put(&b, &k, &v) } else { tx.put(&b, &k, &v) };
                    let mut want = key_check(&k);
                    if want == Kind::Ok && !work.contains_key(&b) {
                        want = Kind::BucketNotFound;
                    }
                    assert_eq!(kind(&r), want, "{ctx}");
                    if want == Kind::Ok {
                        work.get_mut(&b).expect("checked").insert(k, v);
                        wrote = true;
                    }
                }
                TxOp::Delete { bucket, key: k } => {
                    let (b, k) = (bucket_name(*bucket), key(*k));
                    let mut want = key_check(&k);
                    if want == Kind::Ok && !work.contains_key(&b) {
                        want = Kind::BucketNotFound;
                    }
                    assert_eq!(kind(&tx.delete(&b, &k)), want, "{ctx}");
                    if want == Kind::Ok {
                        wrote |= work.get_mut(&b).expect("checked").remove(&k).is_some();
                    }
                }
                TxOp::Read(read) => check_read(&tx, &work, read, ctx),
                TxOp::TakeReadTx => {
                    let rtx = db.read_tx();
                    read_everything(&rtx, Some(&before), &format!("{ctx}: ReadTx during a BatchTx"));
                    taken.push((rtx, before.clone()));
                }
                TxOp::NestedBatchTx => {
                    let mut second = db.batch_tx();
                    assert_eq!(kind(&second.create_bucket("nested")), Kind::TxUnusable, "{ctx}: nested create");
                    assert_eq!(kind(&second.put("b0", "a", "x")), Kind::TxUnusable, "{ctx}: nested put");
                    assert_eq!(kind(&second.commit()), Kind::TxUnusable, "{ctx}: nested commit");
                }
                TxOp::Defrag => {
                    assert_eq!(kind(&db.defrag()), Kind::TxUnusable, "{ctx}: defrag while holding the writer");
                }
                TxOp::ForceCommit => db.force_commit().unwrap_or_else(|e| panic!("{ctx}: force_commit: {e}")),
            }
        }
        // The transaction's own view, once more, before it ends.
        check_all(&tx, &work, &format!("{ctx}: end of tx"));
        match end {
            TxEnd::Drop => drop(tx),
            TxEnd::Commit => tx.commit().unwrap_or_else(|e| panic!("{ctx}: commit: {e}")),
            TxEnd::Rollback => tx.rollback(),
        }
        if end != TxEnd::Rollback {
            self.model = work;
        }
        let seq_after = db.read_tx().seq();
        if wrote && end != TxEnd::Rollback {
            assert!(seq_after > seq_before, "{ctx}: a transaction that wrote left ReadTx::seq at {seq_after}");
        } else {
            assert_eq!(seq_after, seq_before, "{ctx}: a transaction that published nothing changed ReadTx::seq");
        }
        if end == TxEnd::Commit {
            let stats = db.stats();
            assert_eq!(stats.durable_seq, stats.written_seq, "{ctx}: commit returned before everything was durable");
        }
        for (rtx, m) in taken {
            self.hold(rtx, m);
        }
    }

    fn reopen_checkpoint(&mut self, which: u8, tear: u16, ctx: &str) {
        if self.checkpoints.is_empty() {
            return;
        }
        let cp = &self.checkpoints[which as usize % self.checkpoints.len()];
        let (cp_dir, model) = (cp.dir.clone(), cp.model.clone());
        let copy = self.new_dir();
        copy_dir(&cp_dir, &copy);
        let expect_torn = self.tear_onto(&copy, tear);
        // The current backend goes (dropped: closed); the checkpoint's copy takes its place.
        self.db = None;
        let db = self.open(&copy, ctx);
        assert_tail(db.recovery_stats(), expect_torn, &format!("{ctx}: after cutting {tear}"));
        self.db = Some(db);
        self.dir = copy;
        self.model = model;
    }

    /// Writes after the records of the last segment of the copy in `copy` a prefix — shorter
    /// than the next transaction — of what the current directory's file of that name holds
    /// after them, if the current file continues the copied one. Returns the bytes recovery
    /// must find torn: all of them but the complete abort frames (which close rolled-back
    /// transactions), and the zeros after them. (Both files may end in zeros, the space a
    /// live writer reserves ahead of itself: the records end where the frames stop, and the
    /// torn bytes go there, as a crash mid-write leaves them.)
    fn tear_onto(&self, copy: &Path, tear: u16) -> u64 {
        let Some(name) = last_segment_name(copy) else { return 0 };
        let Ok(old) = fs::read(copy.join(&name)) else { return 0 };
        let old_end = frames_end(&old);
        let cur = fs::read(self.dir.join(&name)).unwrap_or_default();
        if tear == 0 || cur.len() <= old_end || cur[..old_end] != old[..old_end] {
            return (old.len() - old_end) as u64;
        }
        let mut limit = frames_end(&cur);
        let mut off = old_end;
        let mut abort_ends = Vec::new();
        while let Some(end) = frame_end_at(&cur, off) {
            match cur.get(off + FRAME_HEADER_LEN) {
                Some(&FRAME_TX_END) => {
                    limit = end;
                    break;
                }
                Some(&FRAME_TX_ABORT) => abort_ends.push(end),
                _ => {}
            }
            off = end;
        }
        if limit <= old_end {
            return (old.len() - old_end) as u64;
        }
        let keep = tear as usize % (limit - old_end);
        // A cut whose missing bytes are all zeros would leave the transaction whole, since
        // the reserved space after it reads as zeros: cut before its last non-zero byte.
        let last_non_zero = cur[old_end..limit].iter().rposition(|&b| b != 0).map_or(old_end, |i| old_end + i);
        let cut = (old_end + keep).min(last_non_zero);
        let f = fs::OpenOptions::new().write(true).open(copy.join(&name)).expect("open copy");
        std::os::unix::fs::FileExt::write_all_at(&f, &cur[old_end..cut], old_end as u64).expect("write torn bytes");
        let valid = abort_ends.iter().copied().filter(|&e| e <= cut).max().unwrap_or(old_end);
        (old.len().max(cut) - valid) as u64
    }

    fn snapshot_restore(&mut self, switch: bool, ctx: &str) {
        let target = self.new_dir();
        let db = self.db();
        let snap = db.snapshot().unwrap_or_else(|e| panic!("{ctx}: snapshot: {e}"));
        assert_eq!(snap.seq(), db.read_tx().seq(), "{ctx}: Snapshot::seq");
        let mut image = Vec::new();
        let n = snap.write_to(&mut image).unwrap_or_else(|e| panic!("{ctx}: write_to: {e}"));
        assert_eq!((n, snap.size()), (image.len() as u64, image.len() as u64), "{ctx}: image size");
        read_everything(&snap.read_tx(), Some(&self.model), &format!("{ctx}: snapshot's ReadTx"));
        let info = crate::inspect_snapshot(&mut image.as_slice()).unwrap_or_else(|e| panic!("{ctx}: inspect: {e}"));
        let keys: usize = self.model.values().map(BTreeMap::len).sum();
        assert_eq!(
            (info.size, info.seq, info.buckets, info.keys, info.hash),
            (n, snap.seq(), self.model.len() as u64, keys as u64, model_hash(&self.model, &[])),
            "{ctx}: inspect_snapshot"
        );
        crate::restore(&mut image.as_slice(), &target).unwrap_or_else(|e| panic!("{ctx}: restore: {e}"));
        assert!(
            matches!(crate::restore(&mut image.as_slice(), &target), Err(Error::NotEmpty { .. })),
            "{ctx}: restore over a database"
        );
        let copy = Backend::open(self.config(&target)).unwrap_or_else(|e| panic!("{ctx}: open restored: {e}"));
        read_everything(&copy.read_tx(), Some(&self.model), &format!("{ctx}: restored"));
        assert_eq!(hash_of(&copy, ctx), hash_of(db, ctx), "{ctx}: restored hash");
        drop(snap);
        if switch {
            self.seq = copy.read_tx().seq();
            self.db = Some(copy);
            self.dir = target;
        } else {
            copy.close().unwrap_or_else(|e| panic!("{ctx}: close restored: {e}"));
        }
    }
}

/// Runs `ops` against a fresh database and a `BTreeMap` model; panics, naming the step, at the
/// first difference. Every step ends with a full comparison (see the module documentation of
/// `tests/model_test.rs` for what each step proves).
pub fn run_model(cfg: ModelConfig, ops: &[Op]) {
    let mut m = Machine::new(cfg);
    m.check("initial open");
    for (i, op) in ops.iter().enumerate() {
        m.step(op, &format!("step {i} {op:?}"));
    }
    for (i, (rtx, model)) in m.held.iter().enumerate() {
        read_everything(rtx, Some(model), &format!("kept ReadTx {i} at the end"));
    }
    if let Some(db) = m.db.take() {
        db.close().unwrap_or_else(|e| panic!("final close: {e}"));
    }
}

/// A cursor over fuzz input; reads past the end give zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn opt(&mut self) -> Option<u8> {
        let b = self.u8();
        if b & 0x80 == 0 { None } else { Some(b & 0x7f) }
    }
    fn value(&mut self) -> Value {
        let (class, seed) = (self.u8(), self.u8());
        let len = match class % 8 {
            // Mostly small values; some near and past the segment size (4 KiB), which make
            // roll-overs and segments of their own.
            7 => 3000 + (self.u16() % 6000),
            6 => 200 + (self.u16() % 1000),
            c => (c as u16) * 3,
        };
        Value { len, seed }
    }
    fn read(&mut self) -> Read {
        match self.u8() % 5 {
            0 => Read::Get { bucket: self.u8(), key: self.u8() },
            1 => Read::Range { bucket: self.u8(), start: self.opt(), end: self.opt(), limit: self.u8() % 4 },
            2 => Read::Scan { bucket: self.u8(), start: self.opt(), end: self.opt() },
            3 => Read::ForEach { bucket: self.u8(), stop_after: self.u8() % 4 },
            _ => Read::Buckets,
        }
    }
    fn tx_op(&mut self) -> TxOp {
        match self.u8() % 16 {
            0 | 1 => TxOp::CreateBucket(self.u8()),
            2 => TxOp::DeleteBucket(self.u8()),
            3..=7 => TxOp::Put { bucket: self.u8(), key: self.u8(), value: self.value(), seq: false },
            8 => TxOp::Put { bucket: self.u8(), key: self.u8(), value: self.value(), seq: true },
            9 | 10 => TxOp::Delete { bucket: self.u8(), key: self.u8() },
            11 | 12 => TxOp::Read(self.read()),
            13 => TxOp::TakeReadTx,
            14 => TxOp::NestedBatchTx,
            _ => match self.u8() % 2 {
                0 => TxOp::Defrag,
                _ => TxOp::ForceCommit,
            },
        }
    }
    fn op(&mut self) -> Op {
        match self.u8() % 20 {
            0..=6 => {
                // Mostly short transactions; a length byte of 240 or more makes one of 16–256
                // operations, past a group of staged puts (`index::WARM_GROUP`), so that
                // groups applied whole, and several per transaction, are fuzzed too, and past
                // 64 writes, where a commit applies its staged puts after its commit frame,
                // while the committer thread syncs (`BatchTx::end`).
                let n = match self.u8() {
                    b @ 240.. => 16 + 16 * usize::from(b - 240),
                    b => usize::from(b % 12),
                };
                let ops = (0..n).map(|_| self.tx_op()).collect();
                let end = match self.u8() % 4 {
                    0 | 1 => TxEnd::Drop,
                    2 => TxEnd::Commit,
                    _ => TxEnd::Rollback,
                };
                Op::Tx { ops, end }
            }
            7 => Op::Read(self.read()),
            8 => Op::TakeReadTx,
            9 => Op::CheckReadTx(self.u8()),
            10 => Op::DropReadTx(self.u8()),
            11 => Op::ForceCommit,
            12 => Op::Hash(self.opt().map(|b| (b, self.u8()))),
            13 => match self.u8() % 2 {
                0 => Op::CloseReopen,
                _ => Op::DropReopen,
            },
            14 => Op::CrashReopen,
            15 => Op::Checkpoint,
            16 => Op::ReopenCheckpoint { which: self.u8(), tear: self.u16() },
            17 => Op::SnapshotRestore { switch: self.u8() % 2 == 1 },
            _ => Op::Defrag,
        }
    }
}

/// The most steps one fuzz input runs (keeps each execution short).
pub const MAX_FUZZ_STEPS: usize = 48;

/// Parses an [`ops_model`] input: a byte choosing the batch limit, then steps.
pub fn decode_ops_input(data: &[u8]) -> (ModelConfig, Vec<Op>) {
    let mut b = Bytes(data);
    let batch_limit = match b.u8() % 4 {
        0 => 1,
        1 => 3,
        _ => 10_000,
    };
    let cfg = ModelConfig { batch_limit, ..ModelConfig::default() };
    let mut ops = Vec::new();
    while !b.0.is_empty() && ops.len() < MAX_FUZZ_STEPS {
        ops.push(b.op());
    }
    (cfg, ops)
}

/// Fuzz target: arbitrary operation sequences against a `BTreeMap` model ([`run_model`]).
pub fn ops_model(data: &[u8]) {
    let (cfg, ops) = decode_ops_input(data);
    run_model(cfg, &ops);
}

/// An open found a tail of `torn` bytes, ending where the writes ended (no lost write with
/// valid frames after it), and read the log through the page cache (no fdatasync failed).
fn assert_tail(stats: RecoveryStats, torn: u64, ctx: &str) {
    assert_eq!(stats.torn_bytes, torn, "{ctx}: torn bytes");
    assert!(!stats.lost_write, "{ctx}: a lost write found where none was made");
    assert!(!stats.reread_from_disk, "{ctx}: read from the disk though no fdatasync failed");
}
