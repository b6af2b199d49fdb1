//! Online defrag: content and hash unchanged, space reclaimed, readers and the writer go on.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use logtree::vfs::{OpenMode, StdVfs, Vfs, VfsFile};
use logtree::{Backend, Config, Error};

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.sync = false;
    c.segment_size = 64 << 10;
    c
}

mod common;

type Model = common::Content;

fn dump(db: &Backend) -> Model {
    common::content_of(&db.read_tx())
}

fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("seg-"))
        .count()
}

#[test]
fn defrag_reclaims_space_and_keeps_content() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let db = Backend::open(c.clone()).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("a").unwrap();
    tx.create_bucket("gone").unwrap();
    tx.create_bucket("z").unwrap();
    drop(tx);
    for round in 0..6u32 {
        let mut tx = db.batch_tx();
        for i in 0..2000u32 {
            tx.put("a", i.to_be_bytes(), format!("{round}-{i}-{}", "v".repeat(60))).unwrap();
            tx.put("gone", i.to_be_bytes(), "x").unwrap();
        }
        drop(tx);
    }
    let mut tx = db.batch_tx();
    tx.delete_bucket("gone").unwrap();
    for i in (0..2000u32).step_by(2) {
        tx.delete("a", i.to_be_bytes()).unwrap();
    }
    tx.put("z", "only", "one").unwrap();
    drop(tx);
    let before = dump(&db);
    let hash = db.hash(&[]).unwrap();
    let in_use = db.size_in_use();
    let size_before = db.size();
    assert!(size_before > 5 * in_use, "the workload made garbage: {size_before} vs {in_use}");

    let stats = db.defrag().unwrap();
    assert_eq!(stats.size_before, size_before);
    assert_eq!(stats.size_after, db.size());
    assert_eq!(stats.size_in_use, in_use, "defrag keeps exactly the live records");
    assert!(
        db.size() as f64 <= 1.1 * db.size_in_use() as f64 + c.segment_size as f64,
        "size {} vs in use {}",
        db.size(),
        db.size_in_use()
    );
    assert_eq!(db.hash(&[]).unwrap(), hash);
    assert_eq!(dump(&db), before);
    assert_eq!(db.size_in_use(), in_use);

    // The writer goes on in the new log, and everything survives reopen.
    let mut tx = db.batch_tx();
    tx.put("z", "after", "defrag").unwrap();
    tx.commit().unwrap();
    let files_now = segment_files(dir.path());
    assert_eq!(files_now, db.stats().segments, "old segments are gone from the directory");
    let mut expected = before;
    expected.insert((b"z".to_vec(), b"after".to_vec()), b"defrag".to_vec());
    db.close().unwrap();
    let db = Backend::open(c.clone()).unwrap();
    assert_eq!(dump(&db), expected);
    assert_eq!(db.recovery_stats().torn_bytes, 0);
    // Defrag twice in a row, and of what was just defragged, is fine.
    let s2 = db.defrag().unwrap();
    assert!(s2.size_after <= s2.size_before);
    db.defrag().unwrap();
    assert_eq!(dump(&db), expected);
    db.close().unwrap();
    assert_eq!(dump(&Backend::open(c).unwrap()), expected);
}

/// Defrag builds each bucket's new index bottom up from its keys in order, and inserts them one
/// by one where a key is too long for that (over 1 KiB): both must give back every key with
/// its value, the same live bytes and hash, and a tree the writer can go on changing.
#[test]
fn defrag_rebuilds_every_bucket_index_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let db = Backend::open(c.clone()).unwrap();
    let mut tx = db.batch_tx();
    common::put_buckets_of_every_shape(&mut tx);
    tx.commit().unwrap();
    let mut tx = db.batch_tx();
    for i in (0..5000u32).step_by(3) {
        tx.delete("many", format!("k{i:07}")).unwrap();
    }
    for i in 0..100u32 {
        tx.put("many", format!("k{i:07}"), "overwritten").unwrap();
    }
    tx.commit().unwrap();
    let (before, hash, in_use) = (dump(&db), db.hash(&[]).unwrap(), db.size_in_use());

    db.defrag().unwrap();
    assert_eq!(dump(&db), before);
    assert_eq!(db.hash(&[]).unwrap(), hash);
    assert_eq!(db.size_in_use(), in_use);

    // The rebuilt trees take inserts at every position, overwrites and deletes, and a reader's
    // snapshot taken before them does not change.
    let snapshot = db.read_tx();
    let mut expected = before.clone();
    let mut tx = db.batch_tx();
    for i in 0..5200u32 {
        let (key, value) = (format!("k{i:07}"), format!("again {i}"));
        if i % 5 == 0 {
            tx.delete("many", &key).unwrap();
            expected.remove(&(b"many".to_vec(), key.into_bytes()));
        } else {
            tx.put("many", &key, &value).unwrap();
            expected.insert((b"many".to_vec(), key.into_bytes()), value.into_bytes());
        }
    }
    tx.put("long keys", "a", "short").unwrap();
    expected.insert((b"long keys".to_vec(), b"a".to_vec()), b"short".to_vec());
    tx.commit().unwrap();
    assert_eq!(common::content_of(&snapshot), before);
    drop(snapshot);
    assert_eq!(dump(&db), expected);
    db.close().unwrap();
    assert_eq!(dump(&Backend::open(c).unwrap()), expected);
}

#[test]
fn readers_keep_their_segments_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::open(config(dir.path())).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    for i in 0..3000u32 {
        tx.put("b", i.to_be_bytes(), vec![(i % 251) as u8; 100]).unwrap();
    }
    drop(tx);
    let mut tx = db.batch_tx();
    for i in 0..3000u32 {
        tx.put("b", i.to_be_bytes(), vec![1u8; 10]).unwrap();
    }
    drop(tx);
    let old_reader = db.read_tx();
    let snap = db.snapshot().unwrap();
    let old_files = segment_files(dir.path());
    db.defrag().unwrap();
    // The old view still reads every value through its own maps.
    for i in (0..3000u32).step_by(7) {
        assert_eq!(old_reader.get("b", i.to_be_bytes()).unwrap(), Some(vec![1u8; 10]));
    }
    let mut image = Vec::new();
    assert_eq!(snap.write_to(&mut image).unwrap(), snap.size());
    assert!(segment_files(dir.path()) > db.stats().segments, "old files stay while mapped");
    drop(old_reader);
    drop(snap);
    assert_eq!(segment_files(dir.path()), db.stats().segments, "and go when the last reader does");
    assert!(db.stats().segments < old_files);
    let copy = dir.path().join("copy");
    logtree::restore(&mut image.as_slice(), &copy).unwrap();
    assert_eq!(Backend::open(config(&copy)).unwrap().hash(&[]).unwrap(), db.hash(&[]).unwrap());
}

/// A writer and readers run throughout the defrag; nothing is lost or mixed up.
#[test]
fn defrag_online_with_a_writer_and_readers() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let db = Arc::new(Backend::open(c.clone()).unwrap());
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    for i in 0..5000u32 {
        tx.put("b", format!("k{i:05}"), format!("v0-{i}-{}", "p".repeat(80))).unwrap();
    }
    drop(tx);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) || n < 200 {
                let mut tx = db.batch_tx();
                for j in 0..20u32 {
                    let k = format!("k{:05}", (n * 31 + j * 17) % 6000).into_bytes();
                    if j % 7 == 3 {
                        tx.delete("b", &k).unwrap();
                        model.insert(k, Vec::new());
                    } else {
                        let v = format!("w{n}-{j}").into_bytes();
                        tx.put("b", &k, &v).unwrap();
                        model.insert(k, v);
                    }
                }
                if n.is_multiple_of(50) {
                    // A rolled-back transaction large enough to have written parts.
                    let tx2 = tx;
                    tx2.commit().unwrap();
                    let mut big = db.batch_tx();
                    for j in 0..30_000u32 {
                        big.put("b", format!("junk{j}"), [7u8; 150]).unwrap();
                    }
                    big.rollback();
                } else {
                    drop(tx);
                }
                n += 1;
            }
            model
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = db.read_tx();
                    let n = r.bucket_len("b").unwrap();
                    let mut seen = 0;
                    r.for_each("b", |k, v| {
                        assert!(k.starts_with(b"k"), "rolled-back keys never show");
                        assert!(!v.is_empty());
                        seen += 1;
                        Ok(())
                    })
                    .unwrap();
                    assert_eq!(seen, n);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut pauses = Vec::new();
    for _ in 0..3 {
        let s = db.defrag().unwrap();
        pauses.push(s.longest_writer_pause);
    }
    stop.store(true, Ordering::Relaxed);
    let model = writer.join().unwrap();
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let check = |db: &Backend| {
        let r = db.read_tx();
        for (k, v) in &model {
            let got = r.get("b", k).unwrap();
            if v.is_empty() {
                assert_eq!(got, None, "{}", String::from_utf8_lossy(k));
            } else {
                assert_eq!(got.as_ref(), Some(v), "{}", String::from_utf8_lossy(k));
            }
        }
        assert_eq!(r.range("b", "junk", "junl", 0).unwrap().len(), 0);
    };
    check(&db);
    let hash = db.hash(&[]).unwrap();
    let db = Arc::into_inner(db).unwrap();
    db.close().unwrap();
    let db = Backend::open(c).unwrap();
    check(&db);
    assert_eq!(db.hash(&[]).unwrap(), hash);
    eprintln!("writer pauses: {pauses:?}");
}

#[test]
fn defrag_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::open(config(dir.path())).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    assert!(matches!(db.defrag(), Err(Error::TxUnusable(_))), "would deadlock on this thread's BatchTx");
    drop(tx);
    let empty = db.defrag().unwrap();
    assert!(empty.size_after <= empty.size_before);
    db.close().unwrap();
    let mut ro = config(dir.path());
    ro.read_only = true;
    let db = Backend::open(ro).unwrap();
    assert!(matches!(db.defrag(), Err(Error::ReadOnly)));
}

/// Defrags while a writer deletes and re-creates buckets (so ids move) and rolls some
/// transactions back: content, hash and size_in_use survive reopen, another defrag and restore.
#[test]
fn defrag_with_bucket_churn_keeps_content_hash_and_size_in_use() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("db");
    let db = Arc::new(Backend::open(config(&p)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let db = db.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            let names = ["a", "b", "c", "d"];
            while !stop.load(Ordering::Relaxed) || i < 200 {
                let mut tx = db.batch_tx();
                let n = names[(i % 4) as usize];
                tx.delete_bucket(n).unwrap();
                let m = names[((i * 7 + 1) % 4) as usize];
                tx.delete_bucket(m).unwrap();
                tx.create_bucket(m).unwrap();
                tx.create_bucket(n).unwrap();
                for j in 0..30u64 {
                    tx.put(n, j.to_be_bytes(), (i + j).to_be_bytes()).unwrap();
                    tx.put(m, j.to_be_bytes(), vec![(i % 251) as u8; 40]).unwrap();
                }
                if i.is_multiple_of(5) {
                    tx.rollback();
                } else {
                    drop(tx);
                }
                i += 1;
            }
        })
    };
    for _ in 0..30 {
        db.defrag().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let h = db.hash(&[]).unwrap();
    let content = dump(&db);
    let mut img = Vec::new();
    db.snapshot().unwrap().write_to(&mut img).unwrap();
    let piu = db.size_in_use();
    let db = Arc::try_unwrap(db).unwrap();
    db.close().unwrap();
    let db = Backend::open(config(&p)).unwrap();
    assert_eq!(dump(&db), content);
    assert_eq!(db.hash(&[]).unwrap(), h);
    assert_eq!(db.size_in_use(), piu);
    db.defrag().unwrap();
    assert_eq!(db.hash(&[]).unwrap(), h);
    let t = d.path().join("r");
    logtree::restore(&mut img.as_slice(), &t).unwrap();
    let r = Backend::open(config(&t)).unwrap();
    assert_eq!(dump(&r), content);
    assert_eq!(r.size_in_use(), piu);
}

// ---------------------------------------------------------------------------------------------
// A failed fdatasync of the old log around the switch

/// The hooks of [`HookVfs`]: the old log's active segment, whose next fdatasync fails (EIO),
/// and the defrag's creation of `MANIFEST.tmp` (its switch), where the defrag waits a while for
/// that failure.
#[derive(Debug, Default)]
struct Hooks {
    /// File name of the segment whose next fdatasync fails; empty: none.
    failing: std::sync::Mutex<String>,
    failed: AtomicBool,
    in_switch: AtomicBool,
}

/// The real file system, with [`Hooks`].
#[derive(Debug)]
struct HookVfs(Arc<Hooks>);

#[derive(Debug)]
struct HookFile {
    inner: Box<dyn VfsFile>,
    name: String,
    hooks: Arc<Hooks>,
}

// SAFETY: every call goes to the real file `inner`, which `as_file` returns; `allocate` keeps
// the default (declines), so every write goes through `write_all_at`.
unsafe impl VfsFile for HookFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        let mut failing = self.hooks.failing.lock().unwrap();
        // A segment is created under a `.tmp` name and renamed into place.
        if *failing == self.name.trim_end_matches(".tmp") {
            failing.clear();
            self.hooks.failed.store(true, Ordering::SeqCst);
            return Err(std::io::Error::from_raw_os_error(5));
        }
        drop(failing);
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn as_file(&self) -> &std::fs::File {
        self.inner.as_file()
    }
}

impl Vfs for HookVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Box<dyn VfsFile>> {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if mode == OpenMode::CreateNew && name == "MANIFEST.tmp" && !self.0.failing.lock().unwrap().is_empty() {
            self.0.in_switch.store(true, Ordering::SeqCst);
            let waited = Instant::now();
            while !self.0.failed.load(Ordering::SeqCst) && waited.elapsed() < Duration::from_millis(300) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(Box::new(HookFile { inner: StdVfs.open(path, mode)?, name, hooks: self.0.clone() }))
    }
    common::real_directory_ops!();
}

/// A group commit's fdatasync of the old log may run while a defrag switches logs (it needs no
/// writer lock). Had it failed there, it would have left `SYNC-FAILED` numbering the old log's
/// last durable transaction — before the new log's first, the image of every key — and the
/// next open would have cut them all (found by review). The switch now holds the sync gate:
/// the commit's sync waits for it, and then finds its transactions durable in the new log.
#[test]
fn a_commit_during_the_defrag_switch_waits_and_needs_no_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let hooks = Arc::new(Hooks::default());
    let cfg = Config {
        batch_interval: Duration::from_secs(3600),
        vfs: Arc::new(HookVfs(hooks.clone())),
        ..Config::new(&dir)
    };
    let db = Arc::new(Backend::open(cfg).unwrap());
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    for i in 0..100 {
        tx.put("b", format!("k{i:03}"), "acknowledged").unwrap();
    }
    tx.commit().unwrap();
    let mut tx = db.batch_tx();
    tx.put("b", "pending", "written, not yet durable").unwrap();
    tx.finish().unwrap();
    let active = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-") && n.ends_with(".log"))
        .max()
        .unwrap();
    *hooks.failing.lock().unwrap() = active;

    let committer = {
        let (db, hooks) = (db.clone(), hooks.clone());
        std::thread::spawn(move || {
            while !hooks.in_switch.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            db.force_commit()
        })
    };
    db.defrag().unwrap();
    committer.join().unwrap().expect("the commit finds its transactions durable in the new log");
    assert!(!hooks.failed.load(Ordering::SeqCst), "the old log was synced during or after the switch");
    db.force_commit().expect("not poisoned");
    assert!(!dir.join("SYNC-FAILED").exists());
    drop(db);
    let db = Backend::open(Config::new(&dir)).unwrap();
    let r = db.read_tx();
    assert_eq!(r.bucket_len("b").unwrap(), 101);
    assert_eq!(r.get("b", "pending").unwrap(), Some(b"written, not yet durable".to_vec()));
}

/// A defrag of a database whose buckets were all deleted copies an empty image. The new log
/// must still begin with the image's number, so that a `SYNC-FAILED` left by a failed fdatasync
/// after the defrag (naming the image as the last durable transaction) is obeyed: taken for a
/// stale one, it was ignored, and the next open kept a transaction the disk may have lost, for
/// later commits to build on (found by review). A mark from before the image stays stale.
#[test]
fn a_sync_failed_after_defragging_an_empty_database_is_obeyed() {
    for (mark, cut) in [(0, true), (1, false)] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        let db = Backend::open(Config::new(&dir)).unwrap();
        let mut tx = db.batch_tx();
        tx.create_bucket("b").unwrap();
        tx.commit().unwrap();
        let mut tx = db.batch_tx();
        tx.delete_bucket("b").unwrap();
        tx.commit().unwrap();
        let image_seq = db.read_tx().seq();
        db.defrag().unwrap();
        let mut tx = db.batch_tx();
        tx.create_bucket("c").unwrap();
        tx.put("c", "k", "v").unwrap();
        tx.commit().unwrap();
        db.close().unwrap();
        // As a failed fdatasync of the transaction after the image leaves it (`mark` 0), or a
        // failure in the log the defrag replaced (`mark` 1).
        std::fs::write(dir.join("SYNC-FAILED"), logtree::fuzzing::sync_failed_file(Some(image_seq - mark))).unwrap();
        let db = Backend::open(Config::new(&dir)).unwrap();
        let buckets = db.read_tx().buckets();
        if cut {
            assert!(buckets.is_empty(), "the transaction after the image is cut: {buckets:?}");
        } else {
            assert_eq!(buckets, [b"c".to_vec()], "a stale mark is ignored");
        }
        assert!(!dir.join("SYNC-FAILED").exists(), "removed");
        // The log opens again, and goes on.
        let mut tx = db.batch_tx();
        tx.create_bucket("d").unwrap();
        tx.commit().unwrap();
        db.close().unwrap();
        let db = Backend::open(Config::new(&dir)).unwrap();
        assert_eq!(db.read_tx().buckets().len(), if cut { 1 } else { 2 });
    }
}

/// A `SYNC-FAILED` that would cut a log's first transaction comes from the log a defrag
/// replaced (the new one begins with an image synced before it was used) and is ignored, not
/// obeyed by cutting every key; in a new database, whose first transaction may never have
/// been synced, it is obeyed.
#[test]
fn a_sync_failed_before_the_image_is_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let db = Backend::open(Config::new(&dir)).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.put("b", "k", "v").unwrap();
    tx.commit().unwrap();
    let mut tx = db.batch_tx();
    tx.put("b", "k2", "v2").unwrap();
    tx.commit().unwrap();
    let image_seq = db.read_tx().seq();
    db.defrag().unwrap();
    db.close().unwrap();
    std::fs::write(dir.join("SYNC-FAILED"), logtree::fuzzing::sync_failed_file(Some(image_seq - 1))).unwrap();
    let ro = Backend::open(Config { read_only: true, ..Config::new(&dir) }).unwrap();
    assert_eq!(ro.read_tx().bucket_len("b").unwrap(), 2, "read-only");
    drop(ro);
    let db = Backend::open(Config::new(&dir)).unwrap();
    assert_eq!(db.read_tx().bucket_len("b").unwrap(), 2);
    assert!(!dir.join("SYNC-FAILED").exists(), "removed");
    drop(db);

    // A new database whose first transaction was never synced: cut.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let db = Backend::open(Config::new(&dir)).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.finish().unwrap();
    drop(db);
    std::fs::write(dir.join("SYNC-FAILED"), logtree::fuzzing::sync_failed_file(Some(0))).unwrap();
    let db = Backend::open(Config::new(&dir)).unwrap();
    assert!(db.read_tx().buckets().is_empty(), "transaction 1 cut");
}
