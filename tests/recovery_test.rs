//! Recovery from damaged logs, byte by byte.
//!
//! Every test starts from a small database built by [`build`]: a scripted run of transactions
//! (puts, overwrites, deletes, bucket creation and deletion) over 4 KiB segments, with the
//! expected state after every transaction kept in a model and the position where every
//! transaction ended recorded from the files' lengths. The log is then damaged in a copy of
//! the directory — every segment cut at every byte, bytes flipped (every header byte and a
//! sample of every frame's), zeros or garbage appended, frames re-sealed under wrong sequence
//! numbers, headers and the manifest broken — and `Backend::open` must recover exactly a prefix
//! of the transactions (compared with the model: every bucket and every pair, so no read can
//! return a value that was never written) or refuse with `Error::Corruption` (or `NotLogtree` /
//! `UnsupportedVersion`) without changing a byte. Every recovery is also checked read-only
//! (nothing changes), after a reopen, and with writes after it.
//!
//! The on-disk layout is checked independently of the engine: the test parses segment headers,
//! frames (`[crc32][len][seq][kind, …ops]`) and the manifest itself. It relies only on the
//! frame header and the kind byte, not on how operations are encoded.
//!
//! Work directories live in `/dev/shm` where it exists: the tests open tens of thousands of
//! copies, with `sync: false`, and measure recovery, not the disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logtree::{Backend, Config, Error, RecoveryStats};

mod common;
use common::Rng;

/// Whether the engine has the fixes for the bugs pinned by the ignored `bug_*` tests at the end
/// of this file. While false, the sweeps leave out exactly the cases those tests cover (a write
/// in the session that recovered an unfinished multi-frame transaction; a sealed segment cut
/// just before its trailing TX_PART frame). Once the fixes land: set it to true and remove the
/// `#[ignore]`s.
const KNOWN_BUGS_FIXED: bool = true;

// ---------------------------------------------------------------------------------------------
// The on-disk format, as the spec describes it.

const HEADER_LEN: u64 = 32;
const FRAME_HEADER_LEN: usize = 16;
const KIND_TX_END: u8 = 1;
const KIND_TX_PART: u8 = 2;
/// A frame closing a rolled-back transaction whose parts were written. The scripted database
/// never rolls back, so it has none; the parser knows the kind so that "garbage" is never a
/// valid frame of any kind.
const KIND_TX_ABORT: u8 = 3;
const MAGIC: &[u8; 8] = b"LOGTREE\0";
const SEGMENT_KIND: u32 = 1;
const MANIFEST_KIND: u32 = 2;

fn seg_name(id: u32) -> String {
    format!("seg-{id:010}.log")
}

fn parse_seg_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A file header as the spec describes it: magic, version, kind, id, reserved, CRC32 of the
/// 28 bytes before it.
fn file_header(version: u32, kind: u32, id: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Recomputes the header CRC (bytes 28..32 over 0..28) after the header was edited.
fn reseal_header(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// The manifest as the test reads it: a file header of kind 2, a body, and a CRC32 of the body.
/// The body ends with the segment count (u32) and the ids (u32 each); `prefix` is whatever the
/// format puts before the count (nothing in format 1 as first documented; a base sequence number
/// (u64) in the revision that records where the log begins). The test keeps the prefix as it
/// found it, so it works with either.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Manifest {
    prefix: Vec<u8>,
    ids: Vec<u32>,
}

fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut b = file_header(1, MANIFEST_KIND, 0);
    b.extend_from_slice(&m.prefix);
    b.extend_from_slice(&(m.ids.len() as u32).to_le_bytes());
    for id in &m.ids {
        b.extend_from_slice(&id.to_le_bytes());
    }
    let crc = crc32fast::hash(&b[HEADER_LEN as usize..]);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn read_manifest(dir: &Path) -> Manifest {
    let b = fs::read(dir.join("MANIFEST")).expect("read MANIFEST");
    assert_eq!(b[..HEADER_LEN as usize], file_header(1, MANIFEST_KIND, 0)[..], "MANIFEST header");
    let body = &b[HEADER_LEN as usize..b.len() - 4];
    assert_eq!(le_u32(&b, b.len() - 4), crc32fast::hash(body), "MANIFEST checksum");
    // The prefix length for which the count matches the body's length (tried in this order;
    // base sequence number 1, as in every database here, never matches the shorter layout).
    for prefix_len in [0, 8] {
        if body.len() < prefix_len + 4 {
            continue;
        }
        let count = le_u32(body, prefix_len) as usize;
        if body.len() == prefix_len + 4 + 4 * count {
            let ids = (0..count).map(|i| le_u32(body, prefix_len + 4 + 4 * i)).collect();
            let m = Manifest { prefix: body[..prefix_len].to_vec(), ids };
            assert_eq!(encode_manifest(&m), b, "MANIFEST round trip");
            return m;
        }
    }
    panic!("MANIFEST layout not understood: {} body bytes", body.len());
}

fn read_manifest_ids(dir: &Path) -> Vec<u32> {
    read_manifest(dir).ids
}

/// A frame found in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameInfo {
    start: u64,
    end: u64,
    seq: u64,
    kind: u8,
}

/// The frame at `off` if one verifies there (CRC over everything after the CRC field up to the
/// payload's end, non-empty payload with a known kind byte).
fn frame_at(b: &[u8], off: usize) -> Option<FrameInfo> {
    if off + FRAME_HEADER_LEN >= b.len() {
        return None;
    }
    let crc = le_u32(b, off);
    let len = le_u32(b, off + 4) as usize;
    let end = off.checked_add(FRAME_HEADER_LEN)?.checked_add(len)?;
    if len == 0 || end > b.len() || crc32fast::hash(&b[off + 4..end]) != crc {
        return None;
    }
    let kind = b[off + FRAME_HEADER_LEN];
    if !matches!(kind, KIND_TX_END | KIND_TX_PART | KIND_TX_ABORT) {
        return None;
    }
    Some(FrameInfo { start: off as u64, end: end as u64, seq: le_u64(b, off + 8), kind })
}

/// Every frame of an undamaged segment; panics if the bytes after the header are not exactly
/// a sequence of verifying frames.
fn parse_frames(name: &str, b: &[u8]) -> Vec<FrameInfo> {
    let mut frames = Vec::new();
    let mut off = HEADER_LEN as usize;
    while off < b.len() {
        let f = frame_at(b, off).unwrap_or_else(|| panic!("{name}: no verifying frame at offset {off}"));
        off = f.end as usize;
        frames.push(f);
    }
    frames
}

/// Seals a frame (header + payload) under `seq`, as the writer does.
fn seal_frame(payload: &[u8], seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; FRAME_HEADER_LEN];
    f.extend_from_slice(payload);
    f[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    f[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&f[4..]);
    f[0..4].copy_from_slice(&crc.to_le_bytes());
    f
}

// ---------------------------------------------------------------------------------------------
// Files and directories.

/// A temporary directory, in memory (`/dev/shm`) where there is one: these tests open tens of
/// thousands of copies of a small database and measure recovery, not the disk.
fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new().prefix("logtree-recovery-").tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("temp dir")
}

type Files = BTreeMap<String, Vec<u8>>;

/// Every file of a directory, by name, with its bytes.
fn snapshot(dir: &Path) -> Files {
    let mut files = Files::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
        let entry = entry.expect("directory entry");
        let name = entry.file_name().into_string().expect("utf-8 file name");
        let bytes = fs::read(entry.path()).unwrap_or_else(|e| panic!("read {name}: {e}"));
        files.insert(name, bytes);
    }
    files
}

/// Replaces the contents of `dir` with `files`.
fn restore(dir: &Path, files: &Files) {
    for entry in fs::read_dir(dir).expect("list work dir") {
        let entry = entry.expect("directory entry");
        fs::remove_file(entry.path()).unwrap_or_else(|e| panic!("remove {}: {e}", entry.path().display()));
    }
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
}

fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("truncate {} to {len}: {e}", path.display()));
}

/// The segment files of a directory, by id.
fn segment_files(dir: &Path) -> BTreeMap<u32, PathBuf> {
    let mut segs = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("list dir") {
        let entry = entry.expect("directory entry");
        if let Some(id) = entry.file_name().to_str().and_then(parse_seg_name) {
            segs.insert(id, entry.path());
        }
    }
    segs
}

/// Describes how two snapshots differ (names and lengths), for failure messages.
fn files_diff(before: &Files, after: &Files) -> String {
    let mut out = Vec::new();
    for (name, b) in before {
        match after.get(name) {
            None => out.push(format!("{name} removed")),
            Some(a) if a != b => {
                let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
                out.push(format!("{name} changed ({} -> {} bytes, first difference at {first})", b.len(), a.len()));
            }
            _ => {}
        }
    }
    for name in after.keys().filter(|n| !before.contains_key(*n)) {
        out.push(format!("{name} created"));
    }
    out.join("; ")
}

#[track_caller]
fn assert_files_unchanged(dir: &Path, before: &Files, ctx: &str) {
    let after = snapshot(dir);
    assert!(after == *before, "{ctx}: the directory changed: {}", files_diff(before, &after));
}

// ---------------------------------------------------------------------------------------------
// Configuration and the state model.

fn config(dir: &Path) -> Config {
    Config { segment_size: 4096, sync: false, batch_interval: Duration::ZERO, ..Config::new(dir) }
}

fn ro_config(dir: &Path) -> Config {
    Config { read_only: true, ..config(dir) }
}

/// What a database holds: its buckets, and every (bucket, key) -> value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    buckets: BTreeSet<Vec<u8>>,
    pairs: BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>>,
}

/// Everything a backend shows, read through a fresh `ReadTx`.
fn read_state(db: &Backend) -> State {
    let rtx = db.read_tx();
    let mut st = State::default();
    for b in rtx.buckets() {
        rtx.for_each(&b, |k, v| {
            st.pairs.insert((b.clone(), k.to_vec()), v.to_vec());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("for_each over bucket {:?}: {e}", String::from_utf8_lossy(&b)));
        assert_eq!(rtx.bucket_len(&b).expect("bucket_len"), st.pairs.keys().filter(|(pb, _)| *pb == b).count());
        st.buckets.insert(b);
    }
    // Every pair is also reachable by a point read, with the same value.
    for ((b, k), v) in &st.pairs {
        let got = rtx.get(b, k).unwrap_or_else(|e| panic!("get {}/{}: {e}", show(b), show(k)));
        assert_eq!(got.as_deref(), Some(v.as_slice()), "get {}/{} disagrees with for_each", show(b), show(k));
    }
    st
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exact comparison of two states, with a readable description of the first differences.
#[track_caller]
fn assert_state(got: &State, want: &State, ctx: &str) {
    if got == want {
        return;
    }
    let mut diffs = Vec::new();
    for b in got.buckets.symmetric_difference(&want.buckets) {
        let side = if got.buckets.contains(b) { "unexpected" } else { "missing" };
        diffs.push(format!("{side} bucket {}", show(b)));
    }
    for ((b, k), v) in &want.pairs {
        match got.pairs.get(&(b.clone(), k.clone())) {
            None => diffs.push(format!("missing {}/{}", show(b), show(k))),
            Some(g) if g != v => diffs.push(format!(
                "wrong value for {}/{}: got {:?}.., want {:?}..",
                show(b),
                show(k),
                show(&g[..g.len().min(16)]),
                show(&v[..v.len().min(16)])
            )),
            _ => {}
        }
    }
    for (b, k) in got.pairs.keys().filter(|bk| !want.pairs.contains_key(*bk)) {
        diffs.push(format!("unexpected {}/{}", show(b), show(k)));
    }
    diffs.truncate(12);
    panic!("{ctx}: state differs from the model: {}", diffs.join("; "));
}

// ---------------------------------------------------------------------------------------------
// The scripted database.

#[derive(Clone, Debug)]
enum Op {
    CreateBucket(&'static str),
    DeleteBucket(&'static str),
    Put(&'static str, String, Vec<u8>),
    Delete(&'static str, String),
}

/// What the script exercised, to prove the database covers what the tests claim.
#[derive(Default, Debug)]
struct Coverage {
    puts: usize,
    overwrites: usize,
    deletes: usize,
    bucket_creates: usize,
    bucket_deletes_with_keys: usize,
}

fn apply(tx: &mut logtree::BatchTx<'_>, model: &mut State, cov: &mut Coverage, op: &Op) {
    match op {
        Op::CreateBucket(b) => {
            tx.create_bucket(b).unwrap_or_else(|e| panic!("create_bucket {b}: {e}"));
            assert!(model.buckets.insert(b.as_bytes().to_vec()), "script creates existing bucket {b}");
            cov.bucket_creates += 1;
        }
        Op::DeleteBucket(b) => {
            tx.delete_bucket(b).unwrap_or_else(|e| panic!("delete_bucket {b}: {e}"));
            assert!(model.buckets.remove(b.as_bytes()), "script deletes missing bucket {b}");
            let before = model.pairs.len();
            model.pairs.retain(|(pb, _), _| pb != b.as_bytes());
            if model.pairs.len() < before {
                cov.bucket_deletes_with_keys += 1;
            }
        }
        Op::Put(b, k, v) => {
            tx.put(b, k, v).unwrap_or_else(|e| panic!("put {b}/{k}: {e}"));
            if model.pairs.insert((b.as_bytes().to_vec(), k.as_bytes().to_vec()), v.clone()).is_some() {
                cov.overwrites += 1;
            }
            cov.puts += 1;
        }
        Op::Delete(b, k) => {
            tx.delete(b, k).unwrap_or_else(|e| panic!("delete {b}/{k}: {e}"));
            assert!(model.pairs.remove(&(b.as_bytes().to_vec(), k.as_bytes().to_vec())).is_some(), "no-op delete");
            cov.deletes += 1;
        }
    }
}

/// The operations of transaction `t` (0-based), given the state before it. Every transaction
/// changes something, so that it is logged and consumes exactly one sequence number.
fn script(t: usize, model: &State, rng: &mut Rng) -> Vec<Op> {
    let value = |rng: &mut Rng, o: usize| {
        let len = 200 + rng.below(201) as usize;
        let mut v = format!("t{t}o{o}:").into_bytes();
        let fill = rng.bytes(len - v.len());
        v.extend_from_slice(&fill);
        v
    };
    let has_gamma = model.buckets.contains(b"gamma".as_slice());
    match t {
        0 => vec![
            Op::CreateBucket("alpha"),
            Op::CreateBucket("beta"),
            Op::Put("alpha", "k0".into(), value(rng, 0)),
            Op::Put("beta", "k0".into(), value(rng, 1)),
        ],
        7 => vec![
            Op::CreateBucket("gamma"),
            Op::Put("gamma", "g0".into(), value(rng, 0)),
            Op::Put("gamma", "g1".into(), value(rng, 1)),
        ],
        15 if has_gamma => vec![Op::Put("alpha", "k1".into(), value(rng, 0)), Op::DeleteBucket("gamma")],
        21 if !has_gamma => vec![Op::CreateBucket("gamma"), Op::Put("gamma", "g2".into(), value(rng, 0))],
        _ => {
            let n = 1 + rng.below(5) as usize;
            let mut ops = Vec::with_capacity(n);
            let mut sim = model.clone();
            for o in 0..n {
                let buckets: Vec<&'static str> =
                    ["alpha", "beta", "gamma"].into_iter().filter(|b| sim.buckets.contains(b.as_bytes())).collect();
                let existing: Vec<(Vec<u8>, Vec<u8>)> = sim.pairs.keys().cloned().collect();
                let op = if o > 0 && rng.below(10) < 3 && !existing.is_empty() {
                    let (b, k) = &existing[rng.below(existing.len() as u64) as usize];
                    let b = buckets.iter().copied().find(|x| x.as_bytes() == b.as_slice()).expect("known bucket");
                    Op::Delete(b, String::from_utf8(k.clone()).expect("utf-8 key"))
                } else {
                    let b = buckets[rng.below(buckets.len() as u64) as usize];
                    Op::Put(b, format!("k{}", rng.below(6)), value(rng, o))
                };
                match &op {
                    Op::Put(b, k, v) => {
                        sim.pairs.insert((b.as_bytes().to_vec(), k.as_bytes().to_vec()), v.clone());
                    }
                    Op::Delete(b, k) => {
                        sim.pairs.remove(&(b.as_bytes().to_vec(), k.as_bytes().to_vec()));
                    }
                    _ => {}
                }
                ops.push(op);
            }
            ops
        }
    }
}

/// How the build decides where to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LastSegment {
    /// The last segment begins with the final frame of a transaction whose first part is at
    /// the end of the segment before it.
    BeginsWithSpanningTx,
    /// The last segment begins with a whole transaction.
    BeginsWithWholeTx,
}

struct Built {
    _tmp: tempfile::TempDir,
    /// `models[k]`: the state after the first `k` transactions.
    models: Vec<State>,
    /// `ends[k]`: (segment id, offset) just past transaction `k` (1-based); `ends[0]` is the
    /// first segment's header end.
    ends: Vec<(u32, u64)>,
    /// `spans[k]`: transaction `k` has frames in two segments (`spans[0]` is false).
    spans: Vec<bool>,
    /// Frames of every segment, by segment id.
    frames: BTreeMap<u32, Vec<FrameInfo>>,
    /// Final segment lengths.
    lens: BTreeMap<u32, u64>,
    /// Id of the last segment.
    last: u32,
    /// Every file of the closed database.
    files: Files,
}

impl Built {
    fn n(&self) -> usize {
        self.models.len() - 1
    }

    /// The number of transactions that end at or before `off` in segment `seg`.
    fn txs_within(&self, seg: u32, off: u64) -> usize {
        self.ends[1..].iter().take_while(|&&e| e <= (seg, off)).count()
    }

    fn seg_bytes(&self, id: u32) -> &[u8] {
        &self.files[&seg_name(id)]
    }

    /// Bytes recovery should report as torn when the segments have the lengths `lens` and the
    /// last complete transaction is `k`.
    fn expected_torn(&self, lens: &BTreeMap<u32, u64>, k: usize) -> u64 {
        let (e_seg, e_off) = self.ends[k];
        lens.iter()
            .map(|(&id, &len)| match id.cmp(&e_seg) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Equal => len - e_off,
                std::cmp::Ordering::Greater => len - HEADER_LEN,
            })
            .sum()
    }

    /// Checks the directory after a writable open that recovered `k` transactions: the
    /// segment holding the end of transaction `k` is cut exactly there, segments after it are
    /// gone (or hold only their header), earlier ones are untouched, and the manifest lists
    /// exactly the segment files present, with nothing else left behind.
    #[track_caller]
    fn assert_truncated_to(&self, dir: &Path, k: usize, ctx: &str) {
        let (e_seg, e_off) = self.ends[k];
        let segs = segment_files(dir);
        let ids: Vec<u32> = segs.keys().copied().collect();
        assert_eq!(read_manifest_ids(dir), ids, "{ctx}: MANIFEST must list exactly the segment files present");
        for name in snapshot(dir).keys() {
            assert!(
                name == "LOCK" || name == "MANIFEST" || parse_seg_name(name).is_some(),
                "{ctx}: leftover file {name} after open"
            );
        }
        for id in 1..=e_seg {
            assert!(segs.contains_key(&id), "{ctx}: segment {id} (holding transactions <= {k}) is gone");
        }
        for (&id, path) in &segs {
            let bytes = fs::read(path).expect("read segment");
            let orig = self.seg_bytes(id);
            if id < e_seg {
                assert!(bytes == orig, "{ctx}: sealed segment {id} changed");
            } else if id == e_seg {
                assert_eq!(bytes.len() as u64, e_off, "{ctx}: segment {id} is not cut at the end of transaction {k}");
                assert!(bytes == orig[..e_off as usize], "{ctx}: segment {id}'s kept bytes changed");
            } else {
                assert_eq!(bytes.len() as u64, HEADER_LEN, "{ctx}: segment {id} after transaction {k} holds data");
                assert!(bytes == orig[..HEADER_LEN as usize], "{ctx}: segment {id}'s header changed");
            }
        }
    }
}

/// Where each segment's frames end. Not the file's length: the segment being written ends in
/// space reserved for appends (zeros), given back when it is sealed or the backend closed.
fn segment_lens(dir: &Path) -> BTreeMap<u32, u64> {
    segment_files(dir)
        .into_iter()
        .map(|(id, p)| {
            let b = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            let mut end = HEADER_LEN.min(b.len() as u64);
            while let Some(f) = frame_at(&b, end as usize) {
                end = f.end;
            }
            (id, end)
        })
        .collect()
}

/// Builds the scripted database and checks that the files match the documented layout and
/// the recorded transaction boundaries.
fn build(shape: LastSegment) -> Built {
    let tmp = temp_dir();
    let dir = tmp.path().join("db");
    let mut rng = Rng(0x5EED_0F10_C7EE);
    let mut models = vec![State::default()];
    let mut ends = vec![(1u32, HEADER_LEN)];
    let mut spans = vec![false];
    let mut cov = Coverage::default();
    let db = Backend::open(config(&dir)).expect("open a new database");
    let mut lens_before = segment_lens(&dir);
    loop {
        let t = models.len() - 1;
        assert!(t < 400, "the script never reached the wanted shape ({shape:?}); change the seed");
        let mut model = models[t].clone();
        let ops = script(t, &model, &mut rng);
        let mut tx = db.batch_tx();
        for op in &ops {
            apply(&mut tx, &mut model, &mut cov, op);
        }
        drop(tx);
        // The BatchTx has ended: its frame is in the file, so the file lengths say where it ended.
        assert_eq!(db.read_tx().seq(), t as u64 + 1, "transaction {t} did not get the next sequence number");
        assert_state(&read_state(&db), &model, &format!("live state after transaction {t}"));
        let lens = segment_lens(&dir);
        let (&last, &len) = lens.last_key_value().expect("a segment");
        let spanning = lens.iter().any(|(id, l)| *id != last && lens_before.get(id) != Some(l));
        models.push(model);
        ends.push((last, len));
        spans.push(spanning);
        lens_before = lens;

        // Stop once the log has several segments, the last one begins as wanted, and it holds
        // at least two whole transactions after its first.
        let n = models.len() - 1;
        let first_in_last = (1..=n).find(|&i| ends[i].0 == last).expect("a transaction ends in the last segment");
        let begins_spanning = spans[first_in_last];
        let wanted = match shape {
            LastSegment::BeginsWithSpanningTx => begins_spanning,
            LastSegment::BeginsWithWholeTx => !begins_spanning && ends[first_in_last - 1].0 == last - 1,
        };
        if n >= 30 && last >= 4 && wanted && n - first_in_last >= 2 {
            break;
        }
    }
    assert_eq!(db.stats().segments, lens_before.len(), "stats().segments");
    db.close().expect("close the built database");
    assert!(cov.overwrites > 0 && cov.deletes > 0, "script coverage: {cov:?}");
    assert!(cov.bucket_creates >= 4 && cov.bucket_deletes_with_keys > 0, "script coverage: {cov:?}");
    assert!(spans.iter().any(|&s| s), "no transaction spans two segments");

    // The files, parsed independently of the engine.
    let files = snapshot(&dir);
    let lens = segment_lens(&dir);
    let last = *lens.keys().last().expect("segments");
    assert_eq!(lens.keys().copied().collect::<Vec<_>>(), (1..=last).collect::<Vec<_>>(), "segment ids");
    assert_eq!(read_manifest_ids(&dir), (1..=last).collect::<Vec<_>>(), "MANIFEST lists every segment");
    let names: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    assert!(names.contains("LOCK") && names.contains("MANIFEST"), "files: {names:?}");
    assert_eq!(names.len(), 2 + lens.len(), "unexpected files: {names:?}");
    let mut frames = BTreeMap::new();
    let mut log_order = Vec::new();
    for &id in lens.keys() {
        let b = &files[&seg_name(id)];
        assert_eq!(b[..HEADER_LEN as usize], file_header(1, SEGMENT_KIND, id as u64)[..], "header of segment {id}");
        let seg_frames = parse_frames(&seg_name(id), b);
        log_order.extend(seg_frames.iter().map(|f| (id, *f)));
        frames.insert(id, seg_frames);
    }
    // Transaction t (1-based) has sequence number t: its frames are consecutive, all but the
    // last TX_PART, and the last ends where the file length said.
    let n = models.len() - 1;
    let mut i = 0;
    for t in 1..=n {
        let first_seg = log_order[i].0;
        while log_order[i].1.kind == KIND_TX_PART {
            assert_eq!(log_order[i].1.seq, t as u64, "sequence number of a part of transaction {t}");
            i += 1;
        }
        let (seg, f) = log_order[i];
        assert_eq!((f.seq, f.kind), (t as u64, KIND_TX_END), "final frame of transaction {t}");
        assert_eq!((seg, f.end), ends[t], "end of transaction {t}");
        assert_eq!(spans[t], seg != first_seg, "transaction {t} spans segments");
        i += 1;
    }
    assert_eq!(i, log_order.len(), "frames after the last transaction");
    eprintln!(
        "built {shape:?}: {n} transactions, segment lengths {lens:?}, spanning transactions {:?}",
        (1..=n).filter(|&t| spans[t]).collect::<Vec<_>>()
    );
    Built { _tmp: tmp, models, ends, spans, frames, lens, last, files }
}

// ---------------------------------------------------------------------------------------------
// Error inspection.

fn file_name_of(p: &Path) -> String {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string()
}

/// Opens (writable, or read-only), expecting an integrity error; returns it.
#[track_caller]
fn open_err(dir: &Path, read_only: bool, ctx: &str) -> Error {
    let cfg = if read_only { ro_config(dir) } else { config(dir) };
    match Backend::open(cfg) {
        Ok(db) => {
            let st = read_state(&db);
            panic!(
                "{ctx} (read_only={read_only}): open succeeded with {} transactions and {} pairs; expected an integrity error",
                db.recovery_stats().transactions,
                st.pairs.len()
            )
        }
        Err(e) => {
            assert!(e.is_corruption(), "{ctx} (read_only={read_only}): expected an integrity error, got {e:?}");
            assert!(!e.is_uncut_damaged_tail(), "{ctx}: a default open's error is no uncut-tail refusal: {e}");
            e
        }
    }
}

/// Expects `Error::Corruption` naming the file `name` at an offset in `range`.
#[track_caller]
fn assert_corruption_in(e: &Error, name: &str, range: std::ops::Range<u64>, ctx: &str) {
    match e {
        Error::Corruption { file, offset, .. } => {
            assert_eq!(file_name_of(file), name, "{ctx}: wrong file in {e}");
            assert!(range.contains(offset), "{ctx}: offset {offset} not in {range:?}: {e}");
        }
        other => panic!("{ctx}: expected Error::Corruption in {name}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Recovery checks shared by the tests.

/// A value written after recovery, unique per (cut, step).
fn after_value(tag: &str) -> Vec<u8> {
    format!("written after recovery: {tag}").into_bytes()
}

fn put_after(db: &Backend, want: &mut State, key: &str, ctx: &str) {
    let mut tx = db.batch_tx();
    tx.create_bucket("after").unwrap_or_else(|e| panic!("{ctx}: create bucket after recovery: {e}"));
    tx.put("after", key, after_value(ctx)).unwrap_or_else(|e| panic!("{ctx}: put after recovery: {e}"));
    drop(tx);
    want.buckets.insert(b"after".to_vec());
    want.pairs.insert((b"after".to_vec(), key.as_bytes().to_vec()), after_value(ctx));
}

/// What a damaged copy must recover to.
struct Expect {
    /// Complete transactions recovered.
    k: usize,
    /// `RecoveryStats::torn_bytes` expected.
    torn: u64,
    /// The torn tail begins with a lost write (valid frames follow it).
    lost_write: bool,
    /// `RecoveryStats::tail_damaged` expected, where the case decides it (`None`: not checked).
    damaged: Option<bool>,
    /// The spanning-transaction sequence-gap bug applies (see
    /// `bug_write_after_recovering_an_unfinished_multi_frame_tx_corrupts_the_log`): skip the
    /// write in the recovering session and the `seq()` check, which that test covers.
    seq_gap_bug: bool,
}

/// Opens the damaged directory read-only (which must change nothing), then writable, and checks
/// the recovered state and the truncation; reopens (the same state and files), writes, and
/// reopens again. Then, on a fresh copy of the damaged directory, writes in the session that
/// recovered and reopens.
fn check_recovers(b: &Built, dir: &Path, exp: &Expect, ctx: &str) {
    let want_k = &b.models[exp.k];
    let k = exp.k as u64;
    let want_stats =
        RecoveryStats { transactions: k, torn_bytes: exp.torn, lost_write: exp.lost_write, ..RecoveryStats::default() };
    // Where the tail begins and whether it reads as damage are checked apart (`exp.damaged`).
    let found = |r: RecoveryStats| {
        if let Some(d) = exp.damaged {
            assert_eq!(r.tail_damaged, d, "{ctx}: tail_damaged: {r:?}");
        }
        assert!(r.torn_at.is_none() || r.torn_bytes > 0, "{ctx}: a torn_at without a torn tail: {r:?}");
        RecoveryStats { torn_at: None, tail_damaged: false, ..r }
    };
    let damaged = snapshot(dir);

    // Read-only: the prefix, no file touched, writes refused.
    {
        let db = Backend::open(ro_config(dir)).unwrap_or_else(|e| panic!("{ctx}: read-only open: {e}"));
        assert_state(&read_state(&db), want_k, &format!("{ctx} (read-only)"));
        assert_eq!(found(db.recovery_stats()), want_stats, "{ctx} (read-only): recovery stats");
        let mut tx = db.batch_tx();
        let r = tx.put("alpha", "x", "y");
        assert!(matches!(r, Err(Error::ReadOnly)), "{ctx}: a read-only backend accepted a write: {r:?}");
        drop(tx);
        db.close().unwrap_or_else(|e| panic!("{ctx}: close read-only: {e}"));
    }
    assert_files_unchanged(dir, &damaged, &format!("{ctx}: read-only open"));

    // Writable, told not to cut a tail that may hold committed transactions: a tail that reads
    // as damage (or a lost write) is refused where it begins, nothing changed; a cut write is
    // cut as by default (below, on a fresh copy).
    if exp.damaged == Some(true) || exp.lost_write {
        match Backend::open(Config { cut_damaged_tail: false, ..config(dir) }) {
            Ok(_) => panic!("{ctx}: an open that may not cut a damaged tail cut it"),
            Err(e @ Error::Corruption { .. }) => {
                assert!(e.is_uncut_damaged_tail(), "{ctx}: {e}");
                let Error::Corruption { file, .. } = e else { unreachable!() };
                assert!(file.ends_with(seg_name(b.last)), "{ctx}: {file:?}");
            }
            Err(e) => panic!("{ctx}: an open that may not cut a damaged tail: {e}"),
        }
        assert_files_unchanged(dir, &damaged, &format!("{ctx}: refused open"));
    } else if exp.damaged == Some(false) {
        let copy = temp_dir();
        restore(copy.path(), &damaged);
        let db = Backend::open(Config { cut_damaged_tail: false, ..config(copy.path()) })
            .unwrap_or_else(|e| panic!("{ctx}: a cut write refused: {e}"));
        assert_state(&read_state(&db), want_k, &format!("{ctx} (cut_damaged_tail false)"));
    }

    // Writable: the prefix, the tail cut off.
    let db = Backend::open(config(dir)).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
    assert_state(&read_state(&db), want_k, ctx);
    assert_eq!(found(db.recovery_stats()), want_stats, "{ctx}: recovery stats");
    let recovered_seq = db.read_tx().seq();
    b.assert_truncated_to(dir, exp.k, ctx);
    assert_eq!(db.stats().segments, segment_files(dir).len(), "{ctx}: stats().segments");
    db.close().unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
    let recovered = snapshot(dir);

    // Reopen: the same state, nothing torn any more, no file changed; then a write.
    let db = Backend::open(config(dir)).unwrap_or_else(|e| panic!("{ctx}: second open: {e}"));
    assert_state(&read_state(&db), want_k, &format!("{ctx}: second open"));
    assert_eq!(
        db.recovery_stats(),
        RecoveryStats { transactions: k, ..RecoveryStats::default() },
        "{ctx}: second open"
    );
    assert_files_unchanged(dir, &recovered, &format!("{ctx}: second open"));
    let mut want = want_k.clone();
    put_after(&db, &mut want, "w2", &format!("{ctx} w2"));
    assert_state(&read_state(&db), &want, &format!("{ctx}: after w2"));
    db.close().unwrap_or_else(|e| panic!("{ctx}: second close: {e}"));

    let db = Backend::open(config(dir)).unwrap_or_else(|e| panic!("{ctx}: third open: {e}"));
    assert_state(&read_state(&db), &want, &format!("{ctx}: third open"));
    assert_eq!(
        db.recovery_stats(),
        RecoveryStats { transactions: k + 1, ..RecoveryStats::default() },
        "{ctx}: third open"
    );
    assert_eq!(db.read_tx().seq(), k + 1, "{ctx}: third open: seq()");
    db.close().unwrap_or_else(|e| panic!("{ctx}: third close: {e}"));

    if exp.seq_gap_bug {
        return;
    }
    // A write in the session that recovered: the writer continues on the segment it just cut
    // (or rolls over from it).
    restore(dir, &damaged);
    let db = Backend::open(config(dir)).unwrap_or_else(|e| panic!("{ctx}: open again: {e}"));
    let mut want = want_k.clone();
    put_after(&db, &mut want, "w1", &format!("{ctx} w1"));
    assert_state(&read_state(&db), &want, &format!("{ctx}: after w1"));
    db.close().unwrap_or_else(|e| panic!("{ctx}: close after w1: {e}"));
    let db = Backend::open(config(dir)).unwrap_or_else(|e| panic!("{ctx}: reopen after w1: {e}"));
    assert_state(&read_state(&db), &want, &format!("{ctx}: reopen after w1"));
    assert_eq!(
        db.recovery_stats(),
        RecoveryStats { transactions: k + 1, ..RecoveryStats::default() },
        "{ctx}: reopen after w1"
    );
    assert_eq!(db.read_tx().seq(), k + 1, "{ctx}: reopen after w1: seq()");
    db.close().unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
    assert_eq!(recovered_seq, k, "{ctx}: seq() of the recovered view");
}

/// Recovery expectations for the last segment cut at `cut` (>= header).
fn expect_for_last_cut(b: &Built, cut: u64) -> Expect {
    let k = b.txs_within(b.last, cut);
    let mut lens = b.lens.clone();
    lens.insert(b.last, cut);
    let torn = b.expected_torn(&lens, k);
    // Transaction k+1 is cut, and its first part lies in the segment before the last.
    let seq_gap_bug = !KNOWN_BUGS_FIXED && k < b.n() && b.spans[k + 1];
    // A cut file is what a crash leaves: never damage.
    Expect { k, torn, lost_write: false, damaged: Some(false), seq_gap_bug }
}

/// 1a/1g: the last segment cut at every byte.
fn cut_last_segment_at_every_byte(shape: LastSegment) {
    let b = build(shape);
    let work = temp_dir();
    let dir = work.path();
    let name = seg_name(b.last);
    let full = b.lens[&b.last];
    let mut seen_k = BTreeSet::new();
    for cut in 0..=full {
        restore(dir, &b.files);
        truncate(&dir.join(&name), cut);
        let ctx = format!("{shape:?}: {name} cut at {cut} of {full}");
        if cut < HEADER_LEN {
            let before = snapshot(dir);
            for ro in [false, true] {
                let e = open_err(dir, ro, &ctx);
                assert_corruption_in(&e, &name, 0..HEADER_LEN, &ctx);
            }
            assert_files_unchanged(dir, &before, &ctx);
            continue;
        }
        let exp = expect_for_last_cut(&b, cut);
        seen_k.insert(exp.k);
        check_recovers(&b, dir, &exp, &ctx);
    }
    // The cuts covered every transaction that ends in the last segment, and the one before.
    let first_k = b.txs_within(b.last, HEADER_LEN);
    assert_eq!(seen_k, (first_k..=b.n()).collect::<BTreeSet<_>>(), "prefixes reached");
}

#[test]
fn cut_last_segment_at_every_byte_when_it_begins_with_a_spanning_tx() {
    cut_last_segment_at_every_byte(LastSegment::BeginsWithSpanningTx);
}

#[test]
fn cut_last_segment_at_every_byte_when_it_begins_with_a_whole_tx() {
    cut_last_segment_at_every_byte(LastSegment::BeginsWithWholeTx);
}

/// The offset of a sealed segment's trailing TX_PART frame, if it ends with one.
fn trailing_part_start(b: &Built, id: u32) -> Option<u64> {
    b.frames[&id].last().filter(|f| f.kind == KIND_TX_PART).map(|f| f.start)
}

/// 1a: every earlier (sealed) segment cut at every byte is corruption, and nothing changes.
#[test]
fn cut_sealed_segments_at_every_byte_is_corruption() {
    let b = build(LastSegment::BeginsWithSpanningTx);
    let work = temp_dir();
    let dir = work.path();
    restore(dir, &b.files);
    let mut checked = 0;
    for id in 1..b.last {
        let name = seg_name(id);
        let path = dir.join(&name);
        let orig = b.seg_bytes(id).to_vec();
        let boundaries: BTreeSet<u64> = b.frames[&id].iter().map(|f| f.start).collect();
        for cut in 0..orig.len() as u64 {
            if !KNOWN_BUGS_FIXED && Some(cut) == trailing_part_start(&b, id) {
                // Known bug: see bug_truncated_sealed_segment_before_its_trailing_part_frame_applies_half_a_tx.
                continue;
            }
            truncate(&path, cut);
            let ctx = format!("sealed {name} cut at {cut} of {}", orig.len());
            let before = snapshot(dir);
            // Read-only too near frame boundaries and headers, and on every 16th cut.
            let near_boundary = cut <= HEADER_LEN || boundaries.range(cut.saturating_sub(1)..=cut + 1).next().is_some();
            let modes: &[bool] = if near_boundary || cut % 16 == 0 { &[false, true] } else { &[false] };
            for &ro in modes {
                let e = open_err(dir, ro, &ctx);
                match &e {
                    // Cut inside its header or a frame: the damage is reported where it is.
                    Error::Corruption { file, offset, .. } if file_name_of(file) == name => {
                        let frame_start =
                            if cut < HEADER_LEN { 0 } else { *boundaries.range(..=cut).last().unwrap_or(&0) };
                        assert!(
                            *offset <= cut && *offset >= frame_start,
                            "{ctx}: offset {offset} is not in the damaged frame [{frame_start}, {cut}]: {e}"
                        );
                    }
                    // Cut exactly between frames: the next segment does not continue the log
                    // (its first frame has the wrong sequence number or, when nothing is left
                    // before it to say which number comes next, cannot be applied).
                    Error::Corruption { file, offset, .. } if file_name_of(file) == seg_name(id + 1) => {
                        let cut_at_boundary = cut == HEADER_LEN || boundaries.contains(&cut);
                        assert!(cut_at_boundary, "{ctx}: blamed the next segment for a cut inside a frame: {e}");
                        assert!((HEADER_LEN..b.lens[&(id + 1)]).contains(offset), "{ctx}: {e}");
                    }
                    other => panic!("{ctx}: expected Corruption in {name} or the next segment, got {other:?}"),
                }
            }
            assert_files_unchanged(dir, &before, &ctx);
            fs::write(&path, &orig).expect("restore segment");
            checked += 1;
        }
    }
    assert!(checked > 3 * 3000, "only {checked} cuts checked");
}

// ---------------------------------------------------------------------------------------------
// 1b: flipped bytes.

/// The bytes of a frame to flip: its whole 16-byte header, its kind byte, and the first, a
/// middle and the last byte of its operations.
fn frame_sample(f: &FrameInfo) -> Vec<u64> {
    let ops = f.start + FRAME_HEADER_LEN as u64 + 1;
    let mut v: Vec<u64> = (f.start..ops).collect();
    v.extend([ops, ops + (f.end - ops) / 2, f.end - 1]);
    v.dedup();
    v
}

/// Positions to flip in a segment: every header byte, and a sample of every frame.
fn flip_positions(frames: &[FrameInfo]) -> Vec<u64> {
    let mut v: Vec<u64> = (0..HEADER_LEN).collect();
    v.extend(frames.iter().flat_map(frame_sample));
    v
}

/// Flips byte `pos` of `name` in `dir`.
fn flip(dir: &Path, name: &str, pos: u64) {
    let path = dir.join(name);
    let mut b = fs::read(&path).expect("read file to flip");
    b[pos as usize] ^= 0xA5;
    fs::write(&path, &b).expect("write flipped file");
}

/// The error expected for a damaged header byte at `pos` of a logtree file: bad magic is not a
/// logtree file, a changed version is an unsupported version, anything else a damaged header.
#[track_caller]
fn assert_header_error(e: &Error, name: &str, pos: u64, ctx: &str) {
    match (pos, e) {
        (0..8, Error::NotLogtree { file }) => assert_eq!(file_name_of(file), name, "{ctx}"),
        (8..12, Error::UnsupportedVersion { file, version }) => {
            assert_eq!(file_name_of(file), name, "{ctx}");
            assert_ne!(*version, 1, "{ctx}");
        }
        (12.., Error::Corruption { file, .. }) => assert_eq!(file_name_of(file), name, "{ctx}"),
        _ => panic!("{ctx}: unexpected error for a damaged header byte {pos}: {e:?}"),
    }
}

/// Bytes of a sealed segment flipped (every header byte and a sample of every frame's):
/// corruption naming the file and the damaged frame, nothing changed.
fn flip_bytes_of_sealed_segment(b: &Built, id: u32) {
    assert!(id < b.last, "segment {id} is not sealed");
    let work = temp_dir();
    let dir = work.path();
    restore(dir, &b.files);
    let name = seg_name(id);
    let frames = &b.frames[&id];
    for pos in flip_positions(frames) {
        flip(dir, &name, pos);
        let ctx = format!("{name} byte {pos} flipped");
        let before = snapshot(dir);
        for ro in [false, true] {
            let e = open_err(dir, ro, &ctx);
            if pos < HEADER_LEN {
                assert_header_error(&e, &name, pos, &ctx);
            } else {
                let f = frames.iter().find(|f| f.start <= pos && pos < f.end).expect("a frame holds every byte");
                assert_corruption_in(&e, &name, f.start..f.end, &ctx);
            }
        }
        assert_files_unchanged(dir, &before, &ctx);
        flip(dir, &name, pos);
    }
}

#[test]
fn flipped_byte_in_a_sealed_segment_is_corruption() {
    let b = build(LastSegment::BeginsWithSpanningTx);
    // Among them the segment before the last, which ends with the first part of a
    // transaction that continues in the last segment.
    assert!(trailing_part_start(&b, b.last - 1).is_some(), "segment before the last ends with a TX_PART");
    for id in 1..b.last {
        flip_bytes_of_sealed_segment(&b, id);
    }
}

#[test]
fn flipped_byte_in_the_last_segment() {
    for shape in [LastSegment::BeginsWithSpanningTx, LastSegment::BeginsWithWholeTx] {
        let b = build(shape);
        let work = temp_dir();
        let dir = work.path();
        let name = seg_name(b.last);
        let frames = &b.frames[&b.last];
        let last_frame = *frames.last().expect("frames");
        assert!(frames.len() >= 3, "last segment has {} frames", frames.len());
        assert_eq!(last_frame.kind, KIND_TX_END);
        assert!(!b.spans[b.n()], "the last transaction is whole");
        restore(dir, &b.files);
        for pos in flip_positions(frames) {
            let ctx = format!("{shape:?}: {name} byte {pos} flipped");
            flip(dir, &name, pos);
            if pos < last_frame.start {
                // Damage with a valid frame after it: corruption, nothing deleted.
                let before = snapshot(dir);
                for ro in [false, true] {
                    let e = open_err(dir, ro, &ctx);
                    if pos < HEADER_LEN {
                        assert_header_error(&e, &name, pos, &ctx);
                    } else {
                        let f = frames.iter().find(|f| f.start <= pos && pos < f.end).expect("frame");
                        assert_corruption_in(&e, &name, f.start..f.end, &ctx);
                    }
                }
                assert_files_unchanged(dir, &before, &ctx);
                flip(dir, &name, pos);
            } else {
                // The last frame damaged: a torn tail; everything but the last transaction.
                // A byte of the frame's body changed, in a frame with no mark of a cut write
                // (its last byte not zero, no zeroed sector): damage, which `check` reports.
                let frame = &b.seg_bytes(b.last)[last_frame.start as usize..last_frame.end as usize];
                let unmarked =
                    frame.last() != Some(&0) && !frame.chunks(512).any(|c| c.len() == 512 && c.iter().all(|&x| x == 0));
                let in_body = pos >= last_frame.start + 16 && pos + 1 < last_frame.end;
                let exp = Expect {
                    k: b.n() - 1,
                    torn: last_frame.end - last_frame.start,
                    lost_write: false,
                    damaged: (in_body && unmarked).then_some(true),
                    seq_gap_bug: false,
                };
                check_recovers(&b, dir, &exp, &ctx);
                restore(dir, &b.files);
            }
        }
    }
}

/// The last segment with `z0..z1` zeroed (as a write that never reached the disk reads back:
/// the space was zeros before), expecting the prefix before the first frame it changed, the
/// rest cut as a torn tail although valid frames follow.
fn check_lost_write(b: &Built, dir: &Path, z0: u64, z1: u64, ctx: &str) {
    restore(dir, &b.files);
    let path = dir.join(seg_name(b.last));
    let orig = fs::read(&path).expect("read segment");
    let first = (z0..z1).find(|&i| orig[i as usize] != 0).expect("the zeroed range held data");
    let frames = &b.frames[&b.last];
    let damaged = frames.iter().find(|f| f.start <= first && first < f.end).expect("a frame holds the byte");
    assert!(frames.iter().any(|f| f.start >= z1), "{ctx}: no frame follows the zeroed range");
    let mut bytes = orig;
    bytes[z0 as usize..z1 as usize].fill(0);
    fs::write(&path, &bytes).expect("write segment");
    let k = b.txs_within(b.last, damaged.start);
    let seq_gap_bug = !KNOWN_BUGS_FIXED && k < b.n() && b.spans[k + 1];
    let exp = Expect { k, torn: b.expected_torn(&b.lens, k), lost_write: true, damaged: Some(false), seq_gap_bug };
    check_recovers(b, dir, &exp, ctx);
}

/// A power cut during an fdatasync may keep a later page of what it was writing and lose an
/// earlier one, which then reads as zeros: a torn tail, cut with everything after it, though
/// valid frames follow — a lost 4 KiB page, a lost 512-byte sector inside a frame, the zeros
/// from a frame's start to its sector's end. (A flipped byte before a valid frame stays
/// corruption: `flipped_byte_in_the_last_segment`.)
#[test]
fn a_lost_page_or_sector_before_valid_frames_is_a_torn_tail() {
    const PAGE: u64 = 4096;
    const SECTOR: u64 = 512;
    let mut tried = 0;
    for shape in [LastSegment::BeginsWithSpanningTx, LastSegment::BeginsWithWholeTx] {
        let b = build(shape);
        let work = temp_dir();
        let dir = work.path();
        let frames = &b.frames[&b.last];
        let end = b.lens[&b.last];
        let tried_before = tried;
        // A whole page, where one ends before the last page of the segment's frames.
        let page = (HEADER_LEN.div_ceil(PAGE)) * PAGE;
        if page + PAGE < end && frames.iter().any(|f| f.start >= page + PAGE) {
            check_lost_write(&b, dir, page, page + PAGE, &format!("{shape:?}: page {page} lost"));
            tried += 1;
        }
        for f in frames.iter().take(frames.len() / 2) {
            // From the frame's start to the end of its sector.
            let sector_end = (f.start / SECTOR + 1) * SECTOR;
            if sector_end - f.start >= 8 && frames.iter().any(|g| g.start >= sector_end) {
                let ctx = format!("{shape:?}: {}..{sector_end} lost", f.start);
                check_lost_write(&b, dir, f.start, sector_end, &ctx);
                tried += 1;
            }
            // A whole sector inside the frame.
            let inner = (f.start / SECTOR + 1) * SECTOR;
            if inner + SECTOR <= f.end && frames.iter().any(|g| g.start >= inner + SECTOR) {
                let ctx = format!("{shape:?}: sector {inner} inside the frame at {} lost", f.start);
                check_lost_write(&b, dir, inner, inner + SECTOR, &ctx);
                tried += 1;
            }
        }
        assert!(tried > tried_before, "{shape:?}: no lost write tried");
    }
    assert!(tried >= 3, "only {tried} lost writes tried");
}

/// `SYNC-FAILED` (left by a backend whose fdatasync failed) names the last transaction known
/// durable: an open reads the log up to it and cuts the rest; a log that ends before it lost
/// synced data, which is corruption, and then nothing is changed.
#[test]
fn sync_failed_cuts_the_log_after_its_transaction() {
    const KIND_SYNC_FAILED: u32 = 4;
    let b = build(LastSegment::BeginsWithWholeTx);
    let work = temp_dir();
    let dir = work.path();
    let k = b.n() - 2;
    restore(dir, &b.files);
    fs::write(dir.join("SYNC-FAILED"), file_header(1, KIND_SYNC_FAILED, k as u64)).unwrap();
    let exp =
        Expect { k, torn: b.expected_torn(&b.lens, k), lost_write: false, damaged: Some(false), seq_gap_bug: false };
    check_recovers(&b, dir, &exp, "SYNC-FAILED two transactions before the end");

    restore(dir, &b.files);
    fs::write(dir.join("SYNC-FAILED"), file_header(1, KIND_SYNC_FAILED, b.n() as u64 + 1)).unwrap();
    let before = snapshot(dir);
    for ro in [false, true] {
        let e = open_err(dir, ro, "SYNC-FAILED past the log's end");
        assert!(e.is_corruption(), "SYNC-FAILED past the log's end (read-only {ro}): {e}");
    }
    assert_files_unchanged(dir, &before, "SYNC-FAILED past the log's end");
}

// ---------------------------------------------------------------------------------------------
// 1c, 1d: zeros and garbage at the tail.

#[test]
fn zero_filled_tail_is_truncated() {
    let b = build(LastSegment::BeginsWithSpanningTx);
    let work = temp_dir();
    let dir = work.path();
    let path = dir.join(seg_name(b.last));
    let orig = b.seg_bytes(b.last).to_vec();
    let last_frame = *b.frames[&b.last].last().expect("frames");

    // 4096 zero bytes appended (the file system extended the file, the data never came).
    for zeros in [1usize, 15, 16, 17, 4096] {
        restore(dir, &b.files);
        let mut bytes = orig.clone();
        bytes.resize(orig.len() + zeros, 0);
        fs::write(&path, &bytes).expect("append zeros");
        let exp = Expect { k: b.n(), torn: zeros as u64, lost_write: false, damaged: Some(false), seq_gap_bug: false };
        check_recovers(&b, dir, &exp, &format!("{zeros} zeros appended"));
    }

    // The last frame's bytes overwritten with zeros (and, separately, zeros beyond it too).
    for extra in [0usize, 4096] {
        restore(dir, &b.files);
        let mut bytes = orig.clone();
        bytes[last_frame.start as usize..].fill(0);
        bytes.resize(orig.len() + extra, 0);
        fs::write(&path, &bytes).expect("zero the last frame");
        let torn = last_frame.end - last_frame.start + extra as u64;
        let exp = Expect { k: b.n() - 1, torn, lost_write: false, damaged: Some(false), seq_gap_bug: false };
        check_recovers(&b, dir, &exp, &format!("last frame zeroed, {extra} zeros appended"));
    }

    // Zeros over a frame in the middle of the last segment, with valid frames after them: a
    // write that never reached the disk (a power cut kept a later one), so a torn tail there.
    let second = b.frames[&b.last][1];
    check_lost_write(&b, dir, second.start, second.end, "a middle frame zeroed");
}

#[test]
fn garbage_tail_is_truncated() {
    let b = build(LastSegment::BeginsWithWholeTx);
    let work = temp_dir();
    let dir = work.path();
    let name = seg_name(b.last);
    let path = dir.join(&name);
    let orig = b.seg_bytes(b.last).to_vec();
    let mut rng = Rng(0x06A7_BA6E);
    for round in 0..24 {
        let len = match round {
            0 => 1,
            1 => 16,
            2 => 4096,
            _ => 1 + rng.below(6000) as usize,
        };
        let garbage = rng.bytes(len);
        let mut bytes = orig.clone();
        bytes.extend_from_slice(&garbage);
        // The test means "garbage": make sure no valid frame hides in it.
        for off in orig.len()..bytes.len() {
            assert!(frame_at(&bytes, off).is_none(), "round {round}: garbage holds a valid frame at {off}");
        }
        restore(dir, &b.files);
        fs::write(&path, &bytes).expect("append garbage");
        // Random bytes: damage unless they happen to carry a mark of a cut write.
        let exp = Expect { k: b.n(), torn: len as u64, lost_write: false, damaged: None, seq_gap_bug: false };
        check_recovers(&b, dir, &exp, &format!("round {round}: {len} bytes of garbage appended"));
    }
}

/// A frame that verifies but carries the wrong sequence number is corruption, wherever it is.
#[test]
fn verifying_frame_with_wrong_sequence_number_is_corruption() {
    let b = build(LastSegment::BeginsWithWholeTx);
    let work = temp_dir();
    let dir = work.path();
    let name = seg_name(b.last);
    let path = dir.join(&name);
    let orig = b.seg_bytes(b.last).to_vec();
    let last_frame = *b.frames[&b.last].last().expect("frames");
    let payload = orig[last_frame.start as usize + FRAME_HEADER_LEN..last_frame.end as usize].to_vec();
    let n = b.n() as u64;

    // Appended after the last transaction: a replay of it (seq n), one from the past (n - 5),
    // one skipping a number (n + 2).
    for seq in [n, n - 5, n + 2] {
        restore(dir, &b.files);
        let mut bytes = orig.clone();
        bytes.extend_from_slice(&seal_frame(&payload, seq));
        fs::write(&path, &bytes).expect("append frame");
        let ctx = format!("frame with seq {seq} appended after transaction {n}");
        let before = snapshot(dir);
        for ro in [false, true] {
            let e = open_err(dir, ro, &ctx);
            assert_corruption_in(&e, &name, orig.len() as u64..orig.len() as u64 + 1, &ctx);
        }
        assert_files_unchanged(dir, &before, &ctx);
    }

    // The last frame re-sealed under another number in place.
    for seq in [n - 1, n + 1] {
        restore(dir, &b.files);
        let mut bytes = orig[..last_frame.start as usize].to_vec();
        bytes.extend_from_slice(&seal_frame(&payload, seq));
        fs::write(&path, &bytes).expect("reseal frame");
        let ctx = format!("last frame re-sealed with seq {seq}");
        let before = snapshot(dir);
        for ro in [false, true] {
            let e = open_err(dir, ro, &ctx);
            assert_corruption_in(&e, &name, last_frame.start..last_frame.start + 1, &ctx);
        }
        assert_files_unchanged(dir, &before, &ctx);
    }

    // A frame of a sealed segment that begins a transaction, re-sealed under the next number.
    restore(dir, &b.files);
    let mid = seg_name(2);
    let mut bytes = b.seg_bytes(2).to_vec();
    let continues_spanning = b.spans[b.frames[&2][0].seq as usize];
    let f = b.frames[&2][usize::from(continues_spanning)];
    let p = bytes[f.start as usize + FRAME_HEADER_LEN..f.end as usize].to_vec();
    bytes.splice(f.start as usize..f.end as usize, seal_frame(&p, f.seq + 1));
    fs::write(dir.join(&mid), &bytes).expect("reseal frame");
    let before = snapshot(dir);
    for ro in [false, true] {
        let e = open_err(dir, ro, "a frame of segment 2 re-sealed");
        assert_corruption_in(&e, &mid, f.start..f.start + 1, "a frame of segment 2 re-sealed");
    }
    assert_files_unchanged(dir, &before, "a frame of segment 2 re-sealed");
}

// ---------------------------------------------------------------------------------------------
// 1e: not a logtree file, unsupported versions, the manifest.

#[test]
fn bad_magic_and_unsupported_version_are_refused() {
    let b = build(LastSegment::BeginsWithWholeTx);
    let work = temp_dir();
    let dir = work.path();
    for id in [1, 2, b.last] {
        let name = seg_name(id);

        restore(dir, &b.files);
        let mut bytes = b.seg_bytes(id).to_vec();
        bytes[0..8].copy_from_slice(b"NOTLOGTR");
        fs::write(dir.join(&name), &bytes).expect("write");
        let before = snapshot(dir);
        for ro in [false, true] {
            match open_err(dir, ro, &format!("{name} with another magic")) {
                Error::NotLogtree { file } => assert_eq!(file_name_of(&file), name),
                other => panic!("{name} with another magic: expected NotLogtree, got {other:?}"),
            }
        }
        assert_files_unchanged(dir, &before, &format!("{name} with another magic"));

        restore(dir, &b.files);
        let mut bytes = b.seg_bytes(id).to_vec();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        reseal_header(&mut bytes);
        fs::write(dir.join(&name), &bytes).expect("write");
        let before = snapshot(dir);
        for ro in [false, true] {
            match open_err(dir, ro, &format!("{name} version 2")) {
                Error::UnsupportedVersion { file, version } => {
                    assert_eq!(file_name_of(&file), name);
                    assert_eq!(version, 2);
                }
                other => panic!("{name} version 2: expected UnsupportedVersion, got {other:?}"),
            }
        }
        assert_files_unchanged(dir, &before, &format!("{name} version 2"));

        // A valid header naming another segment, or of another kind.
        for (kind, hid) in [(SEGMENT_KIND, id as u64 + 100), (MANIFEST_KIND, id as u64)] {
            restore(dir, &b.files);
            let mut bytes = b.seg_bytes(id).to_vec();
            bytes[..32].copy_from_slice(&file_header(1, kind, hid));
            fs::write(dir.join(&name), &bytes).expect("write");
            let ctx = format!("{name} header of kind {kind} id {hid}");
            let before = snapshot(dir);
            for ro in [false, true] {
                let e = open_err(dir, ro, &ctx);
                assert_corruption_in(&e, &name, 0..HEADER_LEN, &ctx);
            }
            assert_files_unchanged(dir, &before, &ctx);
        }
    }

    // The manifest: magic, version.
    restore(dir, &b.files);
    let mut m = b.files["MANIFEST"].clone();
    m[8..12].copy_from_slice(&2u32.to_le_bytes());
    reseal_header(&mut m);
    fs::write(dir.join("MANIFEST"), &m).expect("write");
    assert!(matches!(open_err(dir, false, "MANIFEST version 2"), Error::UnsupportedVersion { version: 2, .. }));
}

#[test]
fn damaged_manifest_is_corruption() {
    let b = build(LastSegment::BeginsWithWholeTx);
    let work = temp_dir();
    let dir = work.path();
    let orig = b.files["MANIFEST"].clone();
    restore(dir, &b.files);

    // Every byte flipped.
    for pos in 0..orig.len() as u64 {
        flip(dir, "MANIFEST", pos);
        let ctx = format!("MANIFEST byte {pos} flipped");
        let before = snapshot(dir);
        for ro in [false, true] {
            let e = open_err(dir, ro, &ctx);
            if pos < HEADER_LEN {
                assert_header_error(&e, "MANIFEST", pos, &ctx);
            } else {
                assert_corruption_in(&e, "MANIFEST", 0..orig.len() as u64, &ctx);
            }
        }
        assert_files_unchanged(dir, &before, &ctx);
        flip(dir, "MANIFEST", pos);
    }

    // Cut at every byte.
    for cut in 0..orig.len() as u64 {
        truncate(&dir.join("MANIFEST"), cut);
        let ctx = format!("MANIFEST cut at {cut}");
        let before = snapshot(dir);
        for ro in [false, true] {
            let e = open_err(dir, ro, &ctx);
            assert_corruption_in(&e, "MANIFEST", 0..orig.len() as u64, &ctx);
        }
        assert_files_unchanged(dir, &before, &ctx);
        fs::write(dir.join("MANIFEST"), &orig).expect("restore MANIFEST");
    }

    // A listed segment missing: a middle one, the last one.
    for id in [2, b.last] {
        restore(dir, &b.files);
        fs::remove_file(dir.join(seg_name(id))).expect("remove segment");
        let ctx = format!("segment {id} missing");
        let before = snapshot(dir);
        for ro in [false, true] {
            let e = open_err(dir, ro, &ctx);
            assert_corruption_in(&e, "MANIFEST", 0..orig.len() as u64, &ctx);
        }
        assert_files_unchanged(dir, &before, &ctx);
    }

    // A valid manifest listing a segment that does not exist.
    restore(dir, &b.files);
    let mut m = read_manifest(dir);
    m.ids.push(b.last + 1);
    fs::write(dir.join("MANIFEST"), encode_manifest(&m)).expect("write MANIFEST");
    let before = snapshot(dir);
    let e = open_err(dir, false, "MANIFEST lists a segment never created");
    assert_corruption_in(&e, "MANIFEST", 0..orig.len() as u64, "MANIFEST lists a segment never created");
    assert_files_unchanged(dir, &before, "MANIFEST lists a segment never created");

    // A valid manifest that leaves out a middle segment: the log does not continue.
    restore(dir, &b.files);
    let mut m = read_manifest(dir);
    m.ids.retain(|&i| i != 2);
    fs::write(dir.join("MANIFEST"), encode_manifest(&m)).expect("write MANIFEST");
    let before = snapshot(dir);
    let e = open_err(dir, false, "MANIFEST leaves out segment 2");
    assert!(matches!(e, Error::Corruption { .. }), "{e:?}");
    assert_files_unchanged(dir, &before, "MANIFEST leaves out segment 2");
}

// ---------------------------------------------------------------------------------------------
// 1f: read-only open of a torn database.

#[test]
fn read_only_open_of_torn_tail_shows_prefix_and_changes_nothing() {
    let b = build(LastSegment::BeginsWithSpanningTx);
    let work = temp_dir();
    let dir = work.path();
    let name = seg_name(b.last);
    let frames = &b.frames[&b.last];
    // Cut inside the last frame, inside the first (spanning) frame, and just after the header.
    let cases = [
        (frames.last().expect("frame").start + 20, b.n() - 1),
        (frames[0].start + 5, b.txs_within(b.last, HEADER_LEN)),
        (HEADER_LEN, b.txs_within(b.last, HEADER_LEN)),
    ];
    for (cut, k) in cases {
        restore(dir, &b.files);
        truncate(&dir.join(&name), cut);
        let ctx = format!("read-only, {name} cut at {cut}");
        let before = snapshot(dir);
        let db = Backend::open(ro_config(dir)).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_state(&read_state(&db), &b.models[k], &ctx);
        assert!(db.recovery_stats().torn_bytes > 0, "{ctx}: torn bytes reported");
        // Two read-only backends may share the directory.
        let db2 = Backend::open(ro_config(dir)).unwrap_or_else(|e| panic!("{ctx}: second read-only open: {e}"));
        assert_state(&read_state(&db2), &b.models[k], &ctx);
        let mut tx = db.batch_tx();
        assert!(matches!(tx.create_bucket("new"), Err(Error::ReadOnly)), "{ctx}: create_bucket");
        assert!(matches!(tx.delete_bucket("alpha"), Err(Error::ReadOnly)), "{ctx}: delete_bucket");
        drop(tx);
        assert!(matches!(db.force_commit(), Ok(()) | Err(Error::ReadOnly)), "{ctx}: force_commit");
        drop(db2);
        db.close().unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
        assert_files_unchanged(dir, &before, &ctx);
    }
}

// ---------------------------------------------------------------------------------------------
// Bugs found. Each test is ignored until the engine is fixed; run with `--ignored`.

/// Builds: transaction 1 (bucket `b`, a 3000-byte value) fills most of segment 1; transaction
/// 2 puts a 500-byte value (fits) and a 1000-byte value (does not), so its first part is
/// written at the end of segment 1 and its final frame in segment 2. Returns the length of
/// segment 1 after transaction 1.
fn build_spanning(dir: &Path, commit_second: bool) -> u64 {
    let db = Backend::open(config(dir)).expect("open");
    let mut tx = db.batch_tx();
    tx.create_bucket("b").expect("create");
    tx.put("b", "k0", vec![b'0'; 3000]).expect("put k0");
    drop(tx);
    let end1 = segment_lens(dir)[&1];
    let mut tx = db.batch_tx();
    tx.put("b", "k1", vec![b'1'; 500]).expect("put k1");
    tx.put("b", "k2", vec![b'2'; 1000]).expect("put k2");
    assert!(dir.join(seg_name(2)).exists(), "the transaction rolled over to segment 2");
    assert!(segment_lens(dir)[&1] > end1, "its first part is in segment 1");
    if commit_second {
        tx.commit().expect("commit");
        let mut tx = db.batch_tx();
        tx.put("b", "k3", "3").expect("put k3");
        drop(tx);
    } else {
        tx.rollback();
    }
    db.close().expect("close");
    end1
}

fn keys(db: &Backend) -> Vec<String> {
    read_state(db).pairs.keys().map(|(_, k)| show(k)).collect()
}

/// Recovery drops the parts of a transaction that never got its final frame, truncating them
/// away, but still counts their sequence number as used (`next_seq = pending.seq + 1`). The
/// next transaction written in that session is therefore numbered one past the last one left
/// in the log, and the open after that refuses the database: "transaction N+2 found where
/// N+1 was expected". Reached by a crash (or a cut log) after a transaction's first part was
/// written and before its final frame: a transaction crossing a segment roll-over, or one
/// larger than a chunk. The SIGKILL test hits it within a few dozen kills
/// (`sigkill_then_write_in_the_recovering_session` in tests/crash_test.rs). Stage (1) covers the
/// same sequence without a crash (a rolled-back transaction that crossed a segment boundary),
/// which a `FRAME_TX_ABORT` frame closes.
#[test]
fn bug_write_after_recovering_an_unfinished_multi_frame_tx_corrupts_the_log() {
    // (1) No crash at all: rollback of a transaction that crossed a segment boundary.
    let tmp = temp_dir();
    let dir = tmp.path();
    build_spanning(dir, false);
    let db = Backend::open(config(dir)).expect("open after rollback");
    assert_eq!(keys(&db), ["k0"]);
    let mut tx = db.batch_tx();
    tx.put("b", "after", "x").expect("put");
    drop(tx);
    db.close().expect("close");
    let db = Backend::open(config(dir)).expect("rollback, close, open, write, close: reopen must succeed");
    assert_eq!(keys(&db), ["after", "k0"]);
    db.close().expect("close");

    // (2) A crash inside the final frame: segment 2 cut 10 bytes into it.
    let tmp = temp_dir();
    let dir = tmp.path();
    build_spanning(dir, true);
    truncate(&dir.join(seg_name(2)), HEADER_LEN + 10);
    let db = Backend::open(config(dir)).expect("open the cut log");
    assert_eq!(keys(&db), ["k0"]);
    let mut tx = db.batch_tx();
    tx.put("b", "after", "x").expect("put");
    drop(tx);
    db.close().expect("close");
    let db = Backend::open(config(dir)).expect("cut, open, write, close: reopen must succeed");
    assert_eq!(keys(&db), ["after", "k0"]);
    db.close().expect("close");

    // (3) A crash after a TX_PART frame in the last segment (a transaction larger than a
    // chunk): simulated by appending a verifying TX_PART frame numbered next.
    let b = build(LastSegment::BeginsWithWholeTx);
    let tmp = temp_dir();
    let dir = tmp.path();
    restore(dir, &b.files);
    let mut bytes = b.seg_bytes(b.last).to_vec();
    // The last transaction's frame, turned into a first part of the next one.
    let last_frame = *b.frames[&b.last].last().expect("frames");
    let mut payload = bytes[last_frame.start as usize + FRAME_HEADER_LEN..last_frame.end as usize].to_vec();
    payload[0] = KIND_TX_PART;
    let part = seal_frame(&payload, b.n() as u64 + 1);
    bytes.extend_from_slice(&part);
    fs::write(dir.join(seg_name(b.last)), &bytes).expect("append part");
    let exp = Expect { k: b.n(), torn: part.len() as u64, lost_write: false, damaged: Some(false), seq_gap_bug: false };
    check_recovers(&b, dir, &exp, "trailing TX_PART frame");

    // (4) Every cut of the built log that leaves such a transaction unfinished.
    let b = build(LastSegment::BeginsWithSpanningTx);
    let work = temp_dir();
    let dir = work.path();
    let name = seg_name(b.last);
    for cut in HEADER_LEN..=b.lens[&b.last] {
        let exp = expect_for_last_cut(&b, cut);
        if !exp.seq_gap_bug {
            continue;
        }
        restore(dir, &b.files);
        truncate(&dir.join(&name), cut);
        let exp = Expect { seq_gap_bug: false, ..exp };
        check_recovers(&b, dir, &exp, &format!("{name} cut at {cut}"));
    }
}

/// A sealed segment that lost its tail exactly at the start of a trailing TX_PART frame (whose
/// transaction ends in the next segment) is not reported: the scan of the next segment finds
/// the final frame with the expected sequence number, takes it for a whole transaction and
/// applies half of one. Sealed segments were synced before the next began, so any damage in
/// them must be Corruption.
#[test]
fn bug_truncated_sealed_segment_before_its_trailing_part_frame_applies_half_a_tx() {
    let tmp = temp_dir();
    let dir = tmp.path();
    let end1 = build_spanning(dir, true);
    truncate(&dir.join(seg_name(1)), end1);
    let before = snapshot(dir);
    match Backend::open(config(dir)) {
        Ok(db) => panic!("opened with keys {:?}: transaction 2 applied without its first part (k1)", keys(&db)),
        // Reported in segment 1 (where the part is missing) or at the start of segment 2 (where
        // the transaction's final frame shows that something came before it).
        Err(Error::Corruption { file, offset, .. })
            if (file_name_of(&file) == seg_name(1) && offset <= end1)
                || (file_name_of(&file) == seg_name(2) && offset == HEADER_LEN) => {}
        Err(e) => panic!("segment 1 cut before its TX_PART: expected Corruption there or at segment 2's start: {e:?}"),
    }
    assert_files_unchanged(dir, &before, "refused open");

    // The same on the built database, for every sealed segment that ends with a TX_PART.
    let b = build(LastSegment::BeginsWithSpanningTx);
    let work = temp_dir();
    let dir = work.path();
    for id in 1..b.last {
        let Some(cut) = trailing_part_start(&b, id) else { continue };
        restore(dir, &b.files);
        truncate(&dir.join(seg_name(id)), cut);
        let ctx = format!("sealed {} cut before its trailing TX_PART at {cut}", seg_name(id));
        let before = snapshot(dir);
        for ro in [false, true] {
            open_err(dir, ro, &ctx);
        }
        assert_files_unchanged(dir, &before, &ctx);
    }
}

/// The first segment of the log cut back to its header (every frame lost) is not noticed when
/// the next segment happens to begin with a self-contained transaction: with nothing before it,
/// recovery takes whatever sequence number comes first as the start of the log, and opens
/// without the lost transactions. Sealed segments were synced before the next began, so this
/// damage must be Corruption. (In the scripted database the same cut is caught only because
/// the next segment puts into a bucket created in the lost one.)
#[test]
fn bug_first_segment_cut_to_its_header_loses_transactions_silently() {
    let tmp = temp_dir();
    let dir = tmp.path();
    // Transaction 1 fills segment 1 to within 10 bytes of its end, so that transaction 2's
    // first operation does not fit and the whole of transaction 2 goes to segment 2. The value
    // size that does it is measured with a 1-byte value first (frame overhead is the format's).
    let tx1 = |db: &Backend, len: usize| {
        let mut tx = db.batch_tx();
        tx.create_bucket("old").expect("create old");
        tx.put("old", "a", vec![b'a'; len]).expect("put old/a");
        drop(tx);
    };
    let probe = temp_dir();
    let db = Backend::open(config(probe.path())).expect("open probe");
    tx1(&db, 1);
    let overhead = segment_lens(probe.path())[&1] - 1;
    db.close().expect("close probe");
    let db = Backend::open(config(dir)).expect("open");
    tx1(&db, (4086 - overhead) as usize);
    assert_eq!(segment_lens(dir)[&1], 4086);
    let mut tx = db.batch_tx();
    tx.create_bucket("new").expect("create new");
    tx.put("new", "b", "b").expect("put new/b");
    drop(tx);
    db.close().expect("close");
    assert_eq!(segment_lens(dir).len(), 2, "two segments");
    assert_eq!(segment_lens(dir)[&1], 4086, "segment 1 untouched by tx 2");

    truncate(&dir.join(seg_name(1)), HEADER_LEN);
    let before = snapshot(dir);
    match Backend::open(config(dir)) {
        Ok(db) => panic!(
            "opened with buckets {:?} after segment 1 lost its only transaction",
            db.read_tx().buckets().iter().map(|b| show(b)).collect::<Vec<_>>()
        ),
        Err(e) => assert!(matches!(e, Error::Corruption { .. }), "expected Corruption, got {e:?}"),
    }
    assert_files_unchanged(dir, &before, "refused open");
}
