//! Hostile and impossible input: numbers at the ends of their ranges in files a damaged or
//! planted directory holds (sequence numbers, segment and bucket ids, MVCC revisions and
//! versions), a FIFO where a file should be, odd arguments to every API. Each test here failed
//! before its fix (a panic, a hang, a half-applied txn, a revision going backwards, commits
//! lost to a segment id wrapping); each asserts what is answered instead. The files are built
//! byte by byte from DESIGN.md §2, independently of the engine's encoders.

use std::path::Path;
use std::sync::Arc;

use logtree::mvcc::{KvStore, Op, RangeOptions, Revision};
use logtree::{Backend, Config, Error};

mod common;

fn catch<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

fn crc(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

/// A manifest (DESIGN.md §2.2) listing `ids` with base sequence number `base_seq`.
fn manifest(base_seq: u64, ids: &[u32]) -> Vec<u8> {
    let mut b = header(2, 0).to_vec();
    b.extend_from_slice(&base_seq.to_le_bytes());
    b.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        b.extend_from_slice(&id.to_le_bytes());
    }
    let c = crc(&b[32..]);
    b.extend_from_slice(&c.to_le_bytes());
    b
}

fn header(kind: u32, id: u64) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[0..8].copy_from_slice(b"LOGTREE\0");
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[12..16].copy_from_slice(&kind.to_le_bytes());
    h[16..24].copy_from_slice(&id.to_le_bytes());
    let c = crc(&h[0..28]);
    h[28..32].copy_from_slice(&c.to_le_bytes());
    h
}

/// A frame (DESIGN.md §2.3): kind END, part 0, holding `ops`, with sequence number `seq`.
fn frame(seq: u64, ops: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 16];
    f.push(1);
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(ops);
    let len = (f.len() - 16) as u32;
    f[4..8].copy_from_slice(&len.to_le_bytes());
    f[8..16].copy_from_slice(&seq.to_le_bytes());
    let c = crc(&f[4..]);
    f[0..4].copy_from_slice(&c.to_le_bytes());
    f
}

fn create_bucket_op(id: u32, name: &[u8]) -> Vec<u8> {
    let mut b = vec![3u8];
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&(name.len() as u32).to_le_bytes());
    b.extend_from_slice(name);
    b
}

fn write_db(dir: &Path, base_seq: u64, seg_id: u32, frames: &[Vec<u8>]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("LOCK"), b"").unwrap();
    std::fs::write(dir.join("MANIFEST"), manifest(base_seq, &[seg_id])).unwrap();
    let mut seg = header(1, seg_id as u64).to_vec();
    for f in frames {
        seg.extend_from_slice(f);
    }
    std::fs::write(dir.join(format!("seg-{seg_id:010}.log")), seg).unwrap();
}

fn quiet(config: &mut Config) {
    config.sync = false;
    config.batch_interval = std::time::Duration::ZERO;
}

fn open(dir: &Path, read_only: bool) -> logtree::Result<Backend> {
    let mut c = Config::new(dir);
    quiet(&mut c);
    c.read_only = read_only;
    Backend::open(c)
}

/// A manifest whose base sequence number is 0 and an empty log: `next_seq - 1` underflows.
#[test]
fn manifest_base_seq_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    write_db(&dir, 0, 1, &[]);
    for ro in [true, false] {
        let r = catch(|| open(&dir, ro).map(|_| ()));
        assert!(r.is_ok(), "open (read_only {ro}) of a manifest with base_seq 0 panicked");
        assert!(r.unwrap().is_err(), "base_seq 0 accepted (read_only {ro})");
    }
}

/// A manifest whose base sequence number is u64::MAX, with one frame of that number:
/// `frame.seq + 1` overflows in recovery.
#[test]
fn manifest_base_seq_max_with_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    write_db(&dir, u64::MAX, 1, &[frame(u64::MAX, &create_bucket_op(1, b"b"))]);
    for ro in [true, false] {
        let r = catch(|| open(&dir, ro).map(|_| ()));
        assert!(matches!(r, Ok(Err(Error::Corruption { .. }))), "base_seq u64::MAX (read_only {ro}): {r:?}");
    }
}

/// A manifest whose base sequence number is u64::MAX and an empty log: the first commit takes
/// seq u64::MAX and `next_seq += 1` overflows.
#[test]
fn manifest_base_seq_max_then_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    write_db(&dir, u64::MAX, 1, &[]);
    // Refused at open, before any commit could take the last numbers.
    let r = catch(|| open(&dir, false).map(|_| ()));
    assert!(matches!(r, Ok(Err(Error::Corruption { .. }))), "{r:?}");
}

/// A valid database whose only segment has id u32::MAX (`max id + 1` overflowed at open): it
/// opens and takes commits until the segment is full; the roll-over that would need another
/// id is refused, and every commit acknowledged before it is there after a reopen.
#[test]
fn segment_id_u32_max() {
    let acked = commit_until_segment_ids_run_out(u32::MAX, 4);
    assert!(acked < 4, "no roll-over was needed: the test proves nothing");
}

/// Starting at segment `first_id` in 4 KiB segments, commits `puts` 3,000-byte values (each
/// after the first needs a roll-over) until the segment ids run out, which must be an error;
/// returns how many were acknowledged, each of which must be there after a reopen.
fn commit_until_segment_ids_run_out(first_id: u32, puts: usize) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    write_db(&dir, 1, first_id, &[frame(1, &create_bucket_op(1, b"b"))]);
    let mut acked = 0;
    let r = catch(|| -> logtree::Result<()> {
        let mut c = Config::new(&dir);
        quiet(&mut c);
        c.segment_size = logtree::MIN_SEGMENT_SIZE;
        let db = Backend::open(c)?;
        for i in 0..puts {
            let mut tx = db.batch_tx();
            tx.put("b", format!("k{i}"), vec![7u8; 3000])?;
            tx.commit()?;
            acked += 1;
        }
        db.close()
    });
    assert!(matches!(r, Ok(Err(Error::Corruption { .. }))), "ids ran out without an error: {r:?}");
    let db = open(&dir, true).expect("a database that acknowledged commits must reopen");
    assert_eq!(db.read_tx().bucket_len("b").unwrap(), acked);
    acked
}

/// A bucket id u32::MAX in the log: `unused_id` (max + 1) overflows at the next create.
#[test]
fn bucket_id_u32_max() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    write_db(&dir, 1, 1, &[frame(1, &create_bucket_op(u32::MAX, b"b"))]);
    let r = catch(|| -> logtree::Result<()> {
        let db = open(&dir, false)?;
        let mut tx = db.batch_tx();
        tx.create_bucket("c")?;
        tx.put("c", "k", "v")?;
        tx.commit()?;
        db.close()
    });
    assert!(matches!(r, Ok(Ok(()))), "creating a bucket beside one of id u32::MAX: {r:?}");
    let db = open(&dir, true).expect("reopen");
    assert_eq!(db.read_tx().get("c", "k").unwrap(), Some(b"v".to_vec()));
    assert!(db.read_tx().bucket_len("b").is_ok());
}

fn stored_kv(key: &[u8], value: &[u8], nums: [i64; 4]) -> Vec<u8> {
    let mut b = vec![1u8];
    for n in nums {
        b.extend_from_slice(&n.to_le_bytes());
    }
    b.extend_from_slice(&(key.len() as u32).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(value);
    b
}

/// A backend holding the MVCC store's two buckets with `entries` (bucket, key, value) written
/// into them directly, as damage or another writer of the buckets would leave them.
fn mvcc_backend_with(entries: Vec<(&str, Vec<u8>, Vec<u8>)>) -> (Arc<Backend>, tempfile::TempDir) {
    let (db, dir) = Backend::open_temp().unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("key").unwrap();
    tx.create_bucket("meta").unwrap();
    for (bucket, key, value) in entries {
        tx.put(bucket, key, value).unwrap();
    }
    tx.commit().unwrap();
    (Arc::new(db), dir)
}

/// The MVCC meta bucket says the store was compacted at i64::MAX: `current + 1` overflows.
#[test]
fn mvcc_open_with_compacted_rev_max() {
    let (db, _dir) = mvcc_backend_with(vec![("meta", b"finishedCompactRev".to_vec(), i64::MAX.to_le_bytes().to_vec())]);
    let r = catch(|| KvStore::open(db.clone()).map(|_| ()));
    assert!(matches!(r, Ok(Err(Error::Corruption { .. }))), "a compacted revision of i64::MAX: {r:?}");
}

/// The MVCC key bucket holds revision i64::MAX: `current + 1` overflows.
#[test]
fn mvcc_open_with_revision_max() {
    let rev = Revision { main: i64::MAX, sub: 0 };
    let (db, _dir) =
        mvcc_backend_with(vec![("key", rev.to_key(false), stored_kv(b"k", b"v", [i64::MAX, i64::MAX, 1, 0]))]);
    let r = catch(|| -> logtree::Result<()> {
        let s = KvStore::open(db.clone())?;
        s.put(b"x", b"y", 0)?;
        Ok(())
    });
    assert!(matches!(r, Ok(Err(Error::Corruption { .. }))), "a stored revision of i64::MAX: {r:?}");
}

/// A txn whose later op fails must change nothing: its earlier puts must not reach the log.
#[test]
fn mvcc_failed_txn_is_not_half_applied() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = KvStore::open(Arc::new(open(dir.path(), false).unwrap())).unwrap();
        store.put(b"a", b"0", 0).unwrap();
        let r = store.txn(
            &[],
            &[
                Op::put(b"a", b"1", 0),
                Op::put(b"b", b"1", 0),
                Op::range(b"a", b"", RangeOptions { rev: 1_000_000, ..Default::default() }),
            ],
            &[],
        );
        assert!(matches!(r, Err(Error::FutureRev { .. })), "{r:?}");
        assert_eq!(store.range(b"b", b"", RangeOptions::default()).unwrap().count, 0);
        store.backend().force_commit().unwrap();
    }
    let store = KvStore::open(Arc::new(open(dir.path(), false).unwrap())).unwrap();
    let b = store.range(b"b", b"", RangeOptions::default()).unwrap();
    assert_eq!(b.count, 0, "a failed txn's put came back after a reopen: {:?}", b.kvs);
    let a = store.range(b"a", b"", RangeOptions::default()).unwrap();
    assert_eq!(a.kvs[0].value, b"0", "a failed txn's put came back after a reopen");
}

/// The MVCC meta bucket says a compaction at i64::MAX was scheduled: open finishes it.
#[test]
fn mvcc_open_with_scheduled_compaction_max() {
    let (db, _dir) =
        mvcc_backend_with(vec![("meta", b"scheduledCompactRev".to_vec(), i64::MAX.to_le_bytes().to_vec())]);
    let r = catch(|| KvStore::open(db.clone()).map(|_| ()));
    assert!(matches!(r, Ok(Err(Error::Corruption { .. }))), "a scheduled compaction at i64::MAX: {r:?}");
}

/// Every odd revision argument of the MVCC API is an error or an empty answer, never a panic.
#[test]
fn mvcc_odd_revisions() {
    let (db, _dir) = Backend::open_temp().unwrap();
    let s = KvStore::open(Arc::new(db)).unwrap();
    for i in 0..5 {
        s.put(format!("k{i}").as_bytes(), b"v", 0).unwrap();
    }
    s.compact(3).unwrap();
    for rev in [i64::MIN, -1, 0, 1, 2, 3, 4, 6, 7, i64::MAX - 1, i64::MAX] {
        let _ = s.range(b"k", b"\0", RangeOptions { rev, ..Default::default() });
        let _ = s.range(b"k", b"", RangeOptions { rev, limit: usize::MAX, ..Default::default() });
        let _ = s.range(b"z", b"a", RangeOptions { rev, ..Default::default() });
        let _ = s.hash_by_rev(rev);
        let _ = s.compact(rev);
        if let Ok(w) = s.watch(b"", b"\0", rev) {
            let _ = w.try_recv();
            let _ = w.recv_timeout(std::time::Duration::from_millis(5));
        }
        let _ = s.txn(
            &[logtree::mvcc::Compare::mod_revision(b"missing", logtree::mvcc::CompareOp::Less, rev)],
            &[Op::range(b"k", b"\0", RangeOptions { rev, ..Default::default() })],
            &[Op::delete_range(b"z", b"a")],
        );
    }
    let _ = s.delete_range(b"", b"");
    let _ = s.delete_range(b"z", b"a");
    let _ = s.delete_range(b"", b"\0");
    assert_eq!(s.range(b"", b"\0", RangeOptions::default()).unwrap().count, 0);
}

/// A watch from a negative revision on a store that was never compacted.
#[test]
fn mvcc_watch_negative_start() {
    let (db, _dir) = Backend::open_temp().unwrap();
    let s = KvStore::open(Arc::new(db)).unwrap();
    s.put(b"a", b"1", 0).unwrap();
    // Accepted, it silently skipped the history (the put of revision 2): it is refused.
    let r = s.watch(b"a", b"", -5).map(|_| ());
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    // From the start it delivers that put.
    let w = s.watch(b"a", b"", 1).unwrap();
    let e = w.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(e.map(|e| e.kv.mod_revision), Some(2));
}

/// kv::Store with extreme deadlines, clocks, list options and a pair of another namespace.
#[test]
fn kv_extremes() {
    use logtree::kv::{ListOptions, ManualClock, Options, SetOptions, Store};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let opts = Options { clock: clock.clone(), sweep_interval: Duration::ZERO, ..Options::default() };
    let mut c = Config::new(dir.path());
    quiet(&mut c);
    let store = Store::open_with(c, opts).unwrap();
    store.set(b"max", b"v", Some(Duration::MAX)).unwrap();
    store.set(b"zero", b"v", Some(Duration::ZERO)).unwrap();
    let so =
        SetOptions { expire_in: Some(Duration::MAX), delete_in: Some(Duration::from_nanos(1)), ..Default::default() };
    store.set_with(b"both", b"v", so).unwrap();
    assert!(store.get_pair(b"max").unwrap().unwrap().expires_at.is_some());
    clock.set(UNIX_EPOCH + Duration::from_secs(u64::MAX / 4));
    clock.advance(Duration::MAX);
    let _ = store.get(b"max");
    let _ = store.sweep();
    clock.set(SystemTime::UNIX_EPOCH - Duration::from_secs(10));
    let _ = store.get(b"zero");
    for (offset, limit) in [(usize::MAX, usize::MAX), (0, usize::MAX), (usize::MAX, 0), (1, 1)] {
        let _ = store.list(ListOptions { offset, limit, ..Default::default() }).unwrap();
        let _ = store.list(ListOptions { prefix: vec![0xff; 40_000], offset, limit, ..Default::default() }).unwrap();
        let _ = store.list(ListOptions { prefix: vec![0xff; 3], suffix: vec![0; 100], offset, limit }).unwrap();
    }
    for name in ["", "\0", "\u{1}", "a/b", &"x".repeat(70_000)] {
        let ns = store.namespace(name).namespace(name);
        let _ = ns.set(b"k", b"v", None);
        let _ = ns.list(ListOptions::default()).unwrap();
        let _ = ns.count(b"").unwrap();
        let _ = ns.info().unwrap();
        let _ = ns.get(&[]);
        let _ = ns.delete(&vec![1u8; 100_000]);
    }
    store.set(b"k", b"v", None).unwrap();
    let pair = store.get_pair(b"k").unwrap().unwrap();
    let other = store.namespace("o");
    other.set(b"k", b"w", None).unwrap();
    let r = other.atomic_put(b"k", b"x", Some(&pair));
    assert!(r.is_err(), "a pair from another namespace passed: {r:?}");
    let mut forged = pair.clone();
    forged.revision = i64::MAX;
    assert!(store.atomic_put(b"k", b"x", Some(&forged)).is_err());
    forged.expires_at = Some(UNIX_EPOCH + Duration::from_secs(1));
    let _ = store.atomic_delete(b"k", &forged);
    forged.expires_at = Some(UNIX_EPOCH + Duration::from_nanos(u64::MAX));
    let _ = store.atomic_delete(b"k", &forged);
    let clone = store.clone();
    store.close().unwrap();
    assert!(matches!(clone.get(b"k"), Err(Error::Closed)));
    assert!(matches!(clone.set(b"k", b"v", None), Err(Error::Closed)));
    assert!(matches!(clone.sweep(), Err(Error::Closed)));
    assert!(matches!(clone.close(), Err(Error::Closed)));
    assert!(matches!(clone.info(), Err(Error::Closed)));
    let _ = format!("{clone:?}");
}

/// Backend edge cases: odd bucket names and keys, ranges, deleted buckets under a reader.
#[test]
fn backend_edges() {
    let (db, _dir) = Backend::open_temp().unwrap();
    let mut tx = db.batch_tx();
    assert!(matches!(tx.create_bucket(""), Err(Error::EmptyKey)));
    assert!(matches!(tx.create_bucket(vec![0u8; logtree::MAX_KEY_LEN + 1]), Err(Error::KeyTooLarge { .. })));
    tx.create_bucket(vec![0u8; logtree::MAX_KEY_LEN]).unwrap();
    tx.create_bucket("b").unwrap();
    assert!(tx.put("missing", "k", "v").is_err());
    assert!(tx.delete("missing", "k").is_err());
    tx.delete_bucket("").unwrap();
    tx.delete_bucket(vec![1u8; 100_000]).unwrap();
    for i in 0..300u32 {
        tx.seq_put("b", (300 - i).to_be_bytes(), vec![1u8; (i * 7) as usize]).unwrap();
    }
    tx.put("b", vec![0xffu8; logtree::MAX_KEY_LEN], "x").unwrap();
    tx.commit().unwrap();
    let r = db.read_tx();
    assert!(r.range("b", "z", "a", 0).unwrap().is_empty());
    assert!(r.range("b", "", "", 0).unwrap().is_empty());
    assert!(r.get("b", "").is_err());
    assert!(r.get("b", vec![0u8; 1_000_000]).unwrap().is_none());
    assert!(r.scan("b", "z", Some(b"a")).unwrap().next().is_none());
    let mut it = r.scan("b", "", None).unwrap();
    let first = it.next();
    let mut tx = db.batch_tx();
    tx.delete_bucket("b").unwrap();
    tx.commit().unwrap();
    db.defrag().unwrap();
    assert!(first.is_some());
    assert_eq!(it.count(), 300);
    assert!(db.read_tx().get("b", "k").is_err());
}

/// Segment ids run out: a database whose segment is u32::MAX - 1 rolls over to u32::MAX, then
/// the id allocator (an AtomicU32 fetch_add, which wrapped silently) handed out segment 0. The
/// manifest then listed [.., u32::MAX, 0], which the next open refused: every commit was lost.
#[test]
fn segment_ids_wrap_and_lose_commits() {
    let acked = commit_until_segment_ids_run_out(u32::MAX - 1, 6);
    assert!(acked >= 1, "the roll-over to segment u32::MAX was refused");
}

/// A stored KeyValue whose version is i64::MAX: the next put of the key computes version + 1.
#[test]
fn mvcc_stored_version_max() {
    let rev = Revision { main: 2, sub: 0 };
    let (db, _dir) = mvcc_backend_with(vec![("key", rev.to_key(false), stored_kv(b"k", b"v", [2, 2, i64::MAX, 0]))]);
    let r = catch(|| -> logtree::Result<()> {
        let s = KvStore::open(db.clone())?;
        s.put(b"k", b"w", 0)?;
        Ok(())
    });
    assert!(matches!(r, Ok(Err(Error::Corruption { .. }))), "a stored version of i64::MAX: {r:?}");
}

/// A stored revision with a negative sub: reading previous values computes sub - 1.
#[test]
fn mvcc_stored_sub_min() {
    let rev = Revision { main: 2, sub: i64::MIN };
    let (db, _dir) = mvcc_backend_with(vec![("key", rev.to_key(false), stored_kv(b"k", b"v", [2, 2, 1, 0]))]);
    let r = catch(|| -> logtree::Result<()> {
        let s = KvStore::open(db.clone())?;
        let w = s.watch(b"k", b"", 1)?;
        let _ = w.recv_timeout(std::time::Duration::from_millis(100))?;
        let _ = s.range(b"k", b"", RangeOptions { rev: 1, ..Default::default() });
        s.delete_range(b"k", b"")?;
        Ok(())
    });
    assert!(matches!(r, Ok(Err(Error::Corruption { .. }))), "a stored sub revision of i64::MIN: {r:?}");
}

/// A watcher asked to wait "forever" (Duration::MAX) with nothing to deliver: `now + timeout`
/// overflows Instant. The wait is run on a thread; a put after 200 ms must end it.
#[test]
fn watch_recv_timeout_max() {
    let (db, _dir) = Backend::open_temp().unwrap();
    let s = Arc::new(KvStore::open(Arc::new(db)).unwrap());
    let w = s.watch(b"a", b"", 0).unwrap();
    let waiter = std::thread::spawn(move || {
        let got = catch(|| w.recv_timeout(std::time::Duration::MAX).map(|e| e.map(|e| e.kv.key)));
        let n = catch(|| w.recv_with(std::time::Duration::MAX, |_| {}));
        (got.is_ok(), n.is_ok())
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    s.put(b"a", b"1", 0).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    s.put(b"a", b"2", 0).unwrap();
    let (a, b) = waiter.join().unwrap();
    assert!(a, "recv_timeout(Duration::MAX) panicked");
    assert!(b, "recv_with(Duration::MAX) panicked");
}

/// What a crash between a compaction's last deletion batch and its "finished" record leaves
/// when the compaction dropped every stored revision (the last write was a delete): an empty
/// `key` bucket and scheduledCompactRev = 3. Reopening must not move the revision backwards
/// nor leave the store unreadable.
#[test]
fn mvcc_reopen_after_interrupted_compaction_of_everything() {
    let (db, _dir) = mvcc_backend_with(vec![("meta", b"scheduledCompactRev".to_vec(), 3i64.to_le_bytes().to_vec())]);
    let s = KvStore::open(db).unwrap();
    assert_eq!((s.current_revision(), s.compacted_revision()), (3, 3));
    let r = s.range(b"a", b"", RangeOptions::default());
    assert!(r.is_ok(), "range at the current revision after reopen: {r:?}");
    let rev = s.put(b"a", b"1", 0).unwrap();
    assert!(rev > 3, "revision went backwards: {rev} after a compaction at 3");
}

/// The same state reached for real: put, delete, compact, with the "finished" record lost.
#[test]
fn mvcc_compaction_of_everything_real() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = KvStore::open(Arc::new(open(dir.path(), false).unwrap())).unwrap();
        s.put(b"a", b"1", 0).unwrap();
        s.delete_range(b"a", b"").unwrap();
        s.compact(3).unwrap();
        // Simulate the crash before the last step: drop the finished record.
        let mut tx = s.backend().batch_tx();
        tx.delete("meta", "finishedCompactRev").unwrap();
        tx.commit().unwrap();
    }
    let s = KvStore::open(Arc::new(open(dir.path(), false).unwrap())).unwrap();
    assert_eq!((s.current_revision(), s.compacted_revision()), (3, 3));
    assert_eq!(s.range(b"a", b"", RangeOptions::default()).unwrap().count, 0);
    assert!(s.put(b"b", b"1", 0).unwrap() > 3);
}

/// A FIFO where the manifest, a segment or the lock file should be: a read-only open must
/// report it, not block until something writes into the FIFO.
#[cfg(target_os = "linux")]
#[test]
fn fifo_in_database_directory() {
    for victim in ["MANIFEST", "seg-0000000001.log", "LOCK"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        write_db(&dir, 1, 1, &[frame(1, &create_bucket_op(1, b"b"))]);
        let path = dir.join(victim);
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc_mkfifo(c.as_ptr(), 0o644) }, 0);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        std::thread::spawn(move || {
            let r = open(&d, true).map(|_| ());
            let _ = done_tx.send(r.map_err(|e| e.to_string()));
        });
        let r = done_rx.recv_timeout(std::time::Duration::from_secs(5));
        assert!(r.is_ok(), "a read-only open with a FIFO as {victim} hangs");
        assert!(r.unwrap().is_err(), "a FIFO as {victim} was accepted");
        // Unblock a hung opener, if any, so the thread ends.
        let _ = std::fs::OpenOptions::new().read(true).write(true).open(&path);
    }
}

#[cfg(target_os = "linux")]
unsafe extern "C" {
    #[link_name = "mkfifo"]
    fn libc_mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
}

/// A `Vfs` that breaks `VfsFile`'s safety contract, in the two ways a soundness review killed
/// the process with (SIGBUS) when the trait was still safe to implement: files that claim, from
/// `allocate`, blocks they never reserved (the writer then stored through its writable map past
/// the file's end), and segments whose `as_file` is another, empty file (the read map then
/// covered nothing). The engine checks both claims against the real file: the first falls back
/// to writes (every put reads back, before and after a reopen), the second is corruption.
#[test]
fn a_vfs_that_breaks_its_contract_cannot_crash_the_engine() {
    use logtree::vfs::{OpenMode, StdVfs, Vfs, VfsFile};
    use std::path::PathBuf;

    #[derive(Debug)]
    struct Lying {
        file: Box<dyn VfsFile>,
        other: Option<std::fs::File>,
    }
    // SAFETY: deliberately broken — `allocate` claims what it did not do, and `as_file` may be
    // another file — to test that the engine verifies the claims.
    unsafe impl VfsFile for Lying {
        fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.file.write_all_at(buf, offset)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.file.sync_data()
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.file.set_len(len)
        }
        fn size(&self) -> std::io::Result<u64> {
            self.file.size()
        }
        fn as_file(&self) -> &std::fs::File {
            self.other.as_ref().unwrap_or_else(|| self.file.as_file())
        }
        fn allocate(&self, _offset: u64, _len: u64) -> std::io::Result<bool> {
            Ok(true)
        }
    }
    /// Segments' `as_file` is the file at `other` when set.
    #[derive(Debug)]
    struct LyingVfs {
        other: Option<PathBuf>,
    }
    impl Vfs for LyingVfs {
        fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Box<dyn VfsFile>> {
            let is_segment = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seg-"));
            let other = match &self.other {
                Some(o) if is_segment => Some(std::fs::File::open(o)?),
                _ => None,
            };
            Ok(Box::new(Lying { file: StdVfs.open(path, mode)?, other }))
        }
        common::real_directory_ops!();
    }

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let config = |other: Option<PathBuf>, read_only: bool| {
        let mut c = Config::new(&dir);
        quiet(&mut c);
        c.read_only = read_only;
        c.vfs = Arc::new(LyingVfs { other });
        c
    };
    let db = Backend::open(config(None, false)).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.commit().unwrap();
    for i in 0..64u32 {
        let mut tx = db.batch_tx();
        tx.put("b", i.to_be_bytes(), vec![i as u8; 1024]).unwrap();
        tx.commit().unwrap();
    }
    let check = |db: &Backend| {
        let r = db.read_tx();
        for i in 0..64u32 {
            assert_eq!(r.get("b", i.to_be_bytes()).unwrap(), Some(vec![i as u8; 1024]), "key {i}");
        }
    };
    check(&db);
    db.close().unwrap();
    check(&Backend::open(config(None, true)).unwrap());

    let empty = tmp.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let r = Backend::open(config(Some(empty), true)).map(|_| ());
    assert!(matches!(r, Err(Error::Corruption { .. })), "{r:?}");
}
