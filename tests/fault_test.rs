//! I/O fault injection and power-cut simulation through the `logtree::vfs::Vfs` seam.
//!
//! `FaultVfs` wraps the real file system: every change is written through to the real files at
//! once (the engine reads them through memory maps), while the Vfs keeps its own record of what
//! would survive a power cut — each file's content as of its last `sync_data`, the writes since
//! then, and the directory entries as of the last `sync_dir` with the creations, renames and
//! removals since. It can
//! - fail the N-th mutating call (`write_all_at`, `sync_data`, `set_len`, `rename`,
//!   `remove_file`, `sync_dir`, `open` with `CreateNew`) with ENOSPC (a write then stores the
//!   first half of its bytes, as a short write does) or EIO (nothing stored);
//! - fail a chosen `sync_data` and lose the writes it should have made durable, as Linux may after
//!   a writeback error (PostgreSQL's "fsyncgate"): a later `sync_data` succeeds, the data is gone
//!   — except in 4 KiB pages that a later surviving write touches (the page cache writes whole
//!   pages, and a "lost" page keeps its bytes until it is evicted);
//! - cut the power: from a chosen call on nothing reaches the disk and every mutating call fails;
//!   once the backend is gone the real directory is rewritten to the durable image plus a random
//!   torn prefix of the unsynced writes (cut inside a write, or the file extended with zeros
//!   where the data never landed) and a random prefix of the unsynced directory operations.
//!
//! The workload writes numbered transactions; transaction `i` sets `meta/last = i`, so a
//! recovered database says which prefix it holds, and `models[i]` is what it must then hold
//! exactly. A transaction counts as acknowledged once a `commit`, `force_commit`, `snapshot` or
//! `close` that covers it returned `Ok`.
//!
//! Knobs: `LOGTREE_FAULT_SECS` (default 6) bounds the power-cut seeds by time;
//! `LOGTREE_FAULT_SEED` runs one seed (printed on failure); `LOGTREE_FAULT_ALL=1` runs the
//! ioerr loops with every batch limit.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use logtree::vfs::{OpenMode, Vfs, VfsFile};
use logtree::{Backend, Config, Error};

mod common;
use common::Rng;

const ENOSPC: i32 = 28;
/// The page size of the simulated page cache.
const PAGE: usize = 4096;
const EIO: i32 = 5;

// ---------------------------------------------------------------------------------------------
// The fault-injecting, power-cut-simulating Vfs

#[derive(Clone, Debug)]
enum Change {
    Write { off: u64, data: Vec<u8> },
    SetLen(u64),
}

fn apply(image: &mut Vec<u8>, c: &Change) {
    match c {
        Change::Write { off, data } => {
            let end = *off as usize + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*off as usize..end].copy_from_slice(data);
        }
        Change::SetLen(len) => image.resize(*len as usize, 0),
    }
}

#[derive(Debug, Default)]
struct FileRec {
    /// The content as of the last successful `sync_data`.
    durable: Vec<u8>,
    /// Changes since then, in order.
    pending: Vec<Change>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Create(String, usize),
    Rename(String, String),
    Remove(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Enospc,
    Eio,
}

#[derive(Debug, Default)]
struct State {
    /// Mutating calls so far.
    calls: u64,
    /// Fail this mutating call.
    fail_at: Option<(u64, Fault)>,
    /// Fail the `sync_data` calls from this mutating call on (EIO), losing their writes.
    fail_syncs_from: Option<u64>,
    /// Fail the next mutating call whose description starts with this.
    fail_next: Option<(&'static str, Fault)>,
    /// Power cut at this mutating call: it and every later one fail, and change nothing.
    cut_at: Option<u64>,
    /// How long each `sync_data` takes.
    sync_delay: Duration,
    files: Vec<FileRec>,
    /// The directory's entries now, and as of the last `sync_dir`.
    current: BTreeMap<String, usize>,
    durable: BTreeMap<String, usize>,
    /// Directory operations since the last `sync_dir`.
    dir_ops: Vec<DirOp>,
    /// Injected failures, as (call, what).
    injected: Vec<(u64, String)>,
    /// `sync_data` calls made after a `sync_data` failed, but those of the file the engine
    /// leaves to say so (`SYNC-FAILED`, see `says_sync_failed`).
    syncs_after_failure: u64,
    sync_failed: bool,
    /// Writes (`write_all_at`) made after a `sync_data` failed, as (file, offset, length), but
    /// those of `SYNC-FAILED`.
    writes_after_sync_failure: Vec<(String, u64, usize)>,
    /// `drop_cached` fails to drop anything (another process maps the file).
    cache_held: bool,
    /// Fail (EIO) every creation of a file whose name starts with this.
    fail_creates: Option<&'static str>,
}

#[derive(Debug, Clone, Default)]
struct FaultVfs {
    dir: PathBuf,
    st: Arc<Mutex<State>>,
}

/// `SYNC-FAILED` or its `.tmp`: what the engine writes, on purpose, after a failed fdatasync
/// (not the log, which nothing may touch then).
fn says_sync_failed(name: &str) -> bool {
    name.starts_with("SYNC-FAILED")
}

fn injected(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// What the Vfs decides for one mutating call.
enum Verdict {
    Go,
    Fail(Fault),
    Cut,
}

impl FaultVfs {
    fn new(dir: &Path) -> FaultVfs {
        FaultVfs { dir: dir.to_path_buf(), st: Arc::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name(&self, path: &Path) -> String {
        assert_eq!(
            path.parent(),
            Some(self.dir.as_path()),
            "the engine touched {} outside its directory",
            path.display()
        );
        path.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// Counts a mutating call and says what happens to it.
    fn verdict(st: &mut State, what: &str) -> Verdict {
        st.calls += 1;
        let n = st.calls;
        if st.cut_at.is_some_and(|c| n >= c) {
            return Verdict::Cut;
        }
        if let Some((at, fault)) = st.fail_at
            && at == n
        {
            st.injected.push((n, format!("{fault:?} on {what}")));
            return Verdict::Fail(fault);
        }
        if let Some((prefix, fault)) = st.fail_next
            && what.starts_with(prefix)
        {
            st.fail_next = None;
            st.injected.push((n, format!("{fault:?} on {what}")));
            return Verdict::Fail(fault);
        }
        Verdict::Go
    }

    /// The file id of `name`, registering a file found on disk (written before this Vfs, so
    /// durable) on first sight.
    fn id_of(&self, st: &mut State, name: &str) -> usize {
        if let Some(&id) = st.current.get(name) {
            return id;
        }
        let durable = fs::read(self.dir.join(name)).unwrap_or_default();
        st.files.push(FileRec { durable, pending: Vec::new() });
        let id = st.files.len() - 1;
        st.current.insert(name.to_string(), id);
        st.durable.insert(name.to_string(), id);
        id
    }

    /// Register every file now in the directory as durable (a fresh Vfs over a directory that
    /// survived a power cut).
    fn adopt_existing(&self) {
        let mut st = self.lock();
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                self.id_of(&mut st, &name);
            }
        }
    }

    /// The power cut: rewrites the real directory to what the disk would hold. Call it only
    /// when no backend uses the directory any more. With `rng`, a random prefix of the unsynced
    /// changes survives; without, all of them do (everything but what a failed fsync lost).
    fn power_cut(&self, rng: Option<&mut Rng>) {
        match rng {
            Some(r) => self.power_cut_keeping(|n| r.below(n)),
            None => self.power_cut_keeping(|n| n - 1),
        }
    }

    /// The power cut that loses every change not made durable by a sync.
    fn power_cut_losing_unsynced(&self) {
        self.power_cut_keeping(|_| 0);
    }

    /// The power cut, with `below(n)` (in `0..n`) choosing how many of `n` unsynced changes (or
    /// bytes of a cut write) survive.
    fn power_cut_keeping(&self, mut below: impl FnMut(u64) -> u64) {
        let st = self.lock();
        let mut names = st.durable.clone();
        let keep_ops = below(st.dir_ops.len() as u64 + 1) as usize;
        for op in &st.dir_ops[..keep_ops] {
            match op {
                DirOp::Create(n, id) => {
                    names.insert(n.clone(), *id);
                }
                DirOp::Rename(from, to) => {
                    if let Some(id) = names.remove(from) {
                        names.insert(to.clone(), id);
                    }
                }
                DirOp::Remove(n) => {
                    names.remove(n);
                }
            }
        }
        // What each file holds now (the page cache), by id, before the directory is rewritten.
        let real: BTreeMap<usize, Vec<u8>> =
            st.current.iter().map(|(n, &id)| (id, fs::read(self.dir.join(n)).unwrap_or_default())).collect();
        for e in fs::read_dir(&self.dir).unwrap().flatten() {
            fs::remove_file(e.path()).unwrap();
        }
        for (name, id) in names {
            let f = &st.files[id];
            let mut image = f.durable.clone();
            let whole = below(f.pending.len() as u64 + 1) as usize;
            for c in &f.pending[..whole] {
                apply(&mut image, c);
            }
            if let Some(Change::Write { off, data }) = f.pending.get(whole)
                && !data.is_empty()
            {
                match below(3) {
                    // Cut inside the write.
                    0 => {
                        let keep = below(data.len() as u64) as usize;
                        apply(&mut image, &Change::Write { off: *off, data: data[..keep].to_vec() })
                    }
                    // The file was extended, the data never written: zeros.
                    1 => {
                        let end = *off as usize + data.len();
                        if image.len() < end {
                            image.resize(end, 0);
                        }
                    }
                    _ => {}
                }
            }
            // The page cache writes whole pages: a page that a surviving write touched reaches
            // the disk with everything it held, including bytes of writes that a failed
            // fdatasync "lost" (their pages were marked clean, not dropped, until re-dirtied).
            let real = real.get(&id).map_or(&[][..], Vec::as_slice);
            for c in &f.pending[..whole] {
                if let Change::Write { off, data } = c {
                    let first = *off as usize / PAGE * PAGE;
                    let end = (*off as usize + data.len()).div_ceil(PAGE) * PAGE;
                    let end = end.min(image.len()).min(real.len());
                    if first < end {
                        image[first..end].copy_from_slice(&real[first..end]);
                    }
                }
            }
            fs::write(self.dir.join(&name), &image).unwrap();
        }
    }
}

#[derive(Debug)]
struct FaultFile {
    file: File,
    id: usize,
    vfs: FaultVfs,
}

impl FaultFile {
    /// The file's name now (it may have been renamed since it was opened).
    fn name(&self, st: &State) -> String {
        st.current
            .iter()
            .find(|&(_, &id)| id == self.id)
            .map_or_else(|| format!("<removed #{}>", self.id), |(n, _)| n.clone())
    }
}

// SAFETY: writes and length changes go to `self.file`, which `as_file` returns and `size`
// measures; `allocate` keeps the default (declines). The power cut rewrites files only when
// no backend uses the directory.
unsafe impl VfsFile for FaultFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.vfs.lock();
        let name = self.name(&st);
        let stored = match FaultVfs::verdict(&mut st, &format!("write {name} @{offset}+{}", buf.len())) {
            Verdict::Cut | Verdict::Fail(Fault::Eio) => return Err(injected(EIO)),
            Verdict::Fail(Fault::Enospc) => &buf[..buf.len() / 2],
            Verdict::Go => buf,
        };
        if st.sync_failed && !says_sync_failed(&name) {
            st.writes_after_sync_failure.push((name, offset, buf.len()));
        }
        FileExt::write_all_at(&self.file, stored, offset)?;
        st.files[self.id].pending.push(Change::Write { off: offset, data: stored.to_vec() });
        if stored.len() < buf.len() { Err(injected(ENOSPC)) } else { Ok(()) }
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = self.vfs.lock().sync_delay;
        if !delay.is_zero() {
            // An fdatasync takes time; meanwhile other threads go on (group commit).
            std::thread::sleep(delay);
        }
        let mut st = self.vfs.lock();
        let name = self.name(&st);
        if st.sync_failed && !says_sync_failed(&name) {
            st.syncs_after_failure += 1;
        }
        // Every file but the one that records the failure (else it could never be written).
        let failing = !says_sync_failed(&name) && st.fail_syncs_from.is_some_and(|from| st.calls + 1 >= from);
        match FaultVfs::verdict(&mut st, &format!("sync_data {name}")) {
            Verdict::Cut => return Err(injected(EIO)),
            Verdict::Fail(Fault::Enospc) => {
                // The data stays dirty in the page cache (it may still reach the disk).
                st.sync_failed = true;
                return Err(injected(ENOSPC));
            }
            Verdict::Fail(Fault::Eio) => {
                // fsyncgate: the kernel reports the error once and drops the dirty pages.
                st.files[self.id].pending.clear();
                st.sync_failed = true;
                return Err(injected(EIO));
            }
            Verdict::Go if failing => {
                let n = st.calls;
                st.injected.push((n, format!("EIO on sync_data {name}, writes lost")));
                st.files[self.id].pending.clear();
                st.sync_failed = true;
                return Err(injected(EIO));
            }
            Verdict::Go => {}
        }
        // No real fdatasync: durability is what this Vfs records, and skipping it keeps the
        // test fast.
        let f = &mut st.files[self.id];
        let pending = std::mem::take(&mut f.pending);
        for c in &pending {
            apply(&mut f.durable, c);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.vfs.lock();
        let name = self.name(&st);
        match FaultVfs::verdict(&mut st, &format!("set_len {name} {len}")) {
            Verdict::Cut => return Err(injected(EIO)),
            Verdict::Fail(f) => return Err(injected(if f == Fault::Enospc { ENOSPC } else { EIO })),
            Verdict::Go => {}
        }
        self.file.set_len(len)?;
        st.files[self.id].pending.push(Change::SetLen(len));
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn as_file(&self) -> &File {
        &self.file
    }

    /// The simulated page cache is the real file; dropping it leaves what the disk holds (the
    /// durable image, zeros past its end). Dirty pages (changes no sync has taken yet) stay.
    /// Once dropped, a failed sync has no consequence left: what is read is the disk, so
    /// writing on is right again.
    fn drop_cached(&self) -> io::Result<bool> {
        let mut st = self.vfs.lock();
        let f = &st.files[self.id];
        if st.cache_held || !f.pending.is_empty() {
            return Ok(false);
        }
        let mut disk = f.durable.clone();
        disk.resize(self.file.metadata()?.len() as usize, 0);
        // Through a descriptor of its own: this one may be read-only.
        let path = self.vfs.dir.join(self.name(&st));
        FileExt::write_all_at(&OpenOptions::new().write(true).open(path)?, &disk, 0)?;
        st.sync_failed = false;
        Ok(true)
    }
}

impl Vfs for FaultVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let name = self.name(path);
        let mut st = self.lock();
        let file = match mode {
            OpenMode::Read => OpenOptions::new().read(true).open(path)?,
            OpenMode::ReadWrite => OpenOptions::new().read(true).write(true).open(path)?,
            OpenMode::CreateNew => {
                if st.fail_creates.is_some_and(|prefix| name.starts_with(prefix)) {
                    let n = st.calls;
                    st.injected.push((n, format!("EIO on create {name}")));
                    return Err(injected(EIO));
                }
                match FaultVfs::verdict(&mut st, &format!("create {name}")) {
                    Verdict::Cut => return Err(injected(EIO)),
                    Verdict::Fail(f) => return Err(injected(if f == Fault::Enospc { ENOSPC } else { EIO })),
                    Verdict::Go => {}
                }
                let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
                st.files.push(FileRec::default());
                let id = st.files.len() - 1;
                st.current.insert(name.clone(), id);
                st.dir_ops.push(DirOp::Create(name.clone(), id));
                file
            }
        };
        let id = self.id_of(&mut st, &name);
        Ok(Box::new(FaultFile { file, id, vfs: self.clone() }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (f, t) = (self.name(from), self.name(to));
        let mut st = self.lock();
        match FaultVfs::verdict(&mut st, &format!("rename {f} {t}")) {
            Verdict::Cut => return Err(injected(EIO)),
            Verdict::Fail(x) => return Err(injected(if x == Fault::Enospc { ENOSPC } else { EIO })),
            Verdict::Go => {}
        }
        let id = self.id_of(&mut st, &f);
        fs::rename(from, to)?;
        st.current.remove(&f);
        st.current.insert(t.clone(), id);
        st.dir_ops.push(DirOp::Rename(f, t));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let name = self.name(path);
        let mut st = self.lock();
        match FaultVfs::verdict(&mut st, &format!("remove {name}")) {
            Verdict::Cut => return Err(injected(EIO)),
            Verdict::Fail(x) => return Err(injected(if x == Fault::Enospc { ENOSPC } else { EIO })),
            Verdict::Go => {}
        }
        fs::remove_file(path)?;
        st.current.remove(&name);
        st.dir_ops.push(DirOp::Remove(name));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        // The open that creates the database directory syncs it into its parent: a call that
        // can fail like any other, outside the one directory whose files the model tracks.
        let parent = path != self.dir;
        assert!(!parent || self.dir.parent() == Some(path), "sync_dir of another directory: {path:?}");
        let mut st = self.lock();
        match FaultVfs::verdict(&mut st, if parent { "parent sync_dir" } else { "sync_dir" }) {
            Verdict::Cut => return Err(injected(EIO)),
            Verdict::Fail(x) => return Err(injected(if x == Fault::Enospc { ENOSPC } else { EIO })),
            Verdict::Go => {}
        }
        if parent {
            return logtree::vfs::StdVfs.sync_dir(path);
        }
        st.durable = st.current.clone();
        st.dir_ops.clear();
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The workload and its model

type Content = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

fn dump(db: &Backend) -> Content {
    let r = db.read_tx();
    let mut m = Content::new();
    for b in r.buckets() {
        let mut keys = BTreeMap::new();
        r.for_each(&b, |k, v| {
            keys.insert(k.to_vec(), v.to_vec());
            Ok(())
        })
        .expect("reads keep working");
        m.insert(b, keys);
    }
    m
}

/// Which transaction a database holds: `meta/last`, or 0 (nothing).
fn last_of(db: &Backend) -> usize {
    match db.read_tx().get("meta", "last") {
        Ok(Some(v)) => String::from_utf8(v).unwrap().parse().unwrap(),
        Ok(None) | Err(Error::BucketNotFound { .. }) => 0,
        Err(e) => panic!("reading meta/last failed: {e}"),
    }
}

fn is_injected(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => matches!(source.raw_os_error(), Some(ENOSPC | EIO)),
        Error::Poisoned { cause } => cause.contains("os error 28") || cause.contains("os error 5)"),
        _ => false,
    }
}

fn config(dir: &Path, vfs: &FaultVfs, batch_limit: usize) -> Config {
    Config {
        segment_size: 4096,
        batch_interval: Duration::ZERO,
        batch_limit,
        sync: true,
        vfs: Arc::new(vfs.clone()),
        ..Config::new(dir)
    }
}

fn real_config(dir: &Path) -> Config {
    Config { segment_size: 4096, batch_interval: Duration::ZERO, sync: false, ..Config::new(dir) }
}

/// The numbered transactions written so far and how far they are known to be durable.
struct History {
    /// `models[i]`: the content after transaction `i` (`models[0]`: empty).
    models: Vec<Content>,
    /// The last transaction visible (published) and the last acknowledged as durable.
    visible: usize,
    acked: usize,
}

impl History {
    fn new() -> History {
        History { models: vec![Content::new()], visible: 0, acked: 0 }
    }

    /// Checks a reopened database: a prefix, at least every acknowledged transaction, at most
    /// what was visible; the history continues from it.
    fn check_recovered(&mut self, db: &Backend, ctx: &str) -> usize {
        let n = last_of(db);
        assert!(
            self.acked <= n && n <= self.visible,
            "{ctx}: recovered transaction {n}, but {} was acknowledged and {} visible",
            self.acked,
            self.visible
        );
        assert_eq!(dump(db), self.models[n], "{ctx}: recovered content is not exactly transaction {n}'s");
        self.models.truncate(n + 1);
        self.visible = n;
        self.acked = n;
        n
    }

    /// As `check_recovered`, leaving the history as it is (for a copy that is checked aside).
    fn check_recovered_keep(&self, db: &Backend, ctx: &str) -> usize {
        let n = last_of(db);
        assert!(
            self.acked <= n && n <= self.visible,
            "{ctx}: recovered {n}, acked {}, visible {}",
            self.acked,
            self.visible
        );
        assert_eq!(dump(db), self.models[n], "{ctx}: recovered content is not exactly transaction {n}'s");
        n
    }
}

/// One step of the workload. `Err` is the first failure, with what was tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A transaction of a few puts (some near the segment size, so roll-overs happen), deletes
    /// and bucket changes, ended by commit, drop or rollback.
    Tx,
    /// A transaction larger than a segment: several parts, then commit or rollback (an abort
    /// frame). It has more than 64 operations, so that its commit hands the fdatasync to the
    /// committer thread (a small one runs it on its own thread).
    BigTx,
    ForceCommit,
    Snapshot,
    Defrag,
    Reopen,
}

fn value(rng: &mut Rng, i: usize) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 1500 + rng.below(2500),
        1..=3 => 100 + rng.below(600),
        _ => rng.below(40),
    } as usize;
    let mut v = format!("{i}:").into_bytes();
    v.resize(len.max(v.len()), b'a' + (i % 26) as u8);
    v
}

/// Runs transaction `models.len()`; returns the end's result. The model is pushed first (the
/// transaction may become visible even when its commit then fails).
fn run_tx(db: &Backend, h: &mut History, rng: &mut Rng, big: bool) -> logtree::Result<()> {
    let i = h.models.len();
    let mut next = h.models[h.visible].clone();
    let mut tx = db.batch_tx();
    let mut step = |tx: &mut logtree::BatchTx<'_>, next: &mut Content| -> logtree::Result<()> {
        if i == 1 {
            tx.create_bucket("meta")?;
            tx.create_bucket("data")?;
            next.insert(b"meta".to_vec(), BTreeMap::new());
            next.insert(b"data".to_vec(), BTreeMap::new());
        }
        let puts = if big { 66 + rng.below(6) } else { 1 + rng.below(4) };
        for _ in 0..puts {
            let k = format!("k{}", rng.below(12)).into_bytes();
            let v = if big { vec![b'0' + (i % 10) as u8; 150] } else { value(rng, i) };
            tx.put("data", &k, &v)?;
            next.get_mut(b"data".as_slice()).unwrap().insert(k, v);
        }
        if rng.chance(25) {
            let k = format!("k{}", rng.below(12)).into_bytes();
            tx.delete("data", &k)?;
            next.get_mut(b"data".as_slice()).unwrap().remove(&k);
        }
        if rng.chance(10) {
            tx.create_bucket("extra")?;
            tx.put("extra", "x", format!("{i}"))?;
            next.entry(b"extra".to_vec()).or_default().insert(b"x".to_vec(), format!("{i}").into_bytes());
        } else if rng.chance(10) {
            tx.delete_bucket("extra")?;
            next.remove(b"extra".as_slice());
        }
        tx.put("meta", "last", i.to_string())?;
        next.get_mut(b"meta".as_slice()).unwrap().insert(b"last".to_vec(), i.to_string().into_bytes());
        Ok(())
    };
    let r = step(&mut tx, &mut next);
    let end = rng.below(10);
    if r.is_err() || end == 0 {
        tx.rollback();
        return r;
    }
    h.models.push(next);
    let r = if end <= 4 {
        tx.commit()
    } else {
        // A failure while ending a dropped transaction is only reported by the next write.
        drop(tx);
        Ok(())
    };
    h.visible = last_of(db);
    assert!(h.visible == i || h.visible == i - 1, "visible {} after tx {i}", h.visible);
    assert!(r.is_err() || end > 4 || h.visible == i, "commit returned Ok but tx {i} is not visible");
    if r.is_ok() && end <= 4 {
        h.acked = i;
    }
    if h.visible != i {
        // Not published: the number is free again.
        h.models.pop();
    }
    r
}

fn pick_step(rng: &mut Rng) -> Step {
    match rng.below(24) {
        0..=15 => Step::Tx,
        16 | 17 => Step::BigTx,
        18 => Step::ForceCommit,
        19 => Step::Snapshot,
        20 | 21 => Step::Defrag,
        _ => Step::Reopen,
    }
}

/// Runs one step on `db` (which `Reopen` replaces). On failure returns the error and whether
/// the backend is still there.
fn run_step(
    db: &mut Option<Backend>,
    step: Step,
    h: &mut History,
    rng: &mut Rng,
    cfg: &dyn Fn() -> Config,
) -> logtree::Result<()> {
    let b = db.as_ref().expect("open");
    match step {
        Step::Tx => run_tx(b, h, rng, false),
        Step::BigTx => run_tx(b, h, rng, true),
        Step::ForceCommit => {
            b.force_commit()?;
            h.acked = h.visible;
            Ok(())
        }
        Step::Snapshot => {
            let snap = b.snapshot()?;
            h.acked = h.acked.max(h.visible);
            let mut image = Vec::new();
            snap.write_to(&mut image)?;
            Ok(())
        }
        Step::Defrag => {
            b.defrag()?;
            assert_eq!(dump(b), h.models[h.visible], "defrag changed the content");
            Ok(())
        }
        Step::Reopen => {
            db.take().expect("open").close()?;
            h.acked = h.visible;
            let again = Backend::open(cfg())?;
            h.check_recovered(&again, "reopen after close");
            *db = Some(again);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (a) The ioerr loop: fail the N-th mutating call, for N = 1, 2, … until a run has no fault.
//
// Each run checks: the first error is the injected one (an `Io` error, or `Poisoned` naming it
// when it hit a dropped `BatchTx`); reads still work and show the last published state; every
// later write, commit, snapshot, defrag and close is `Poisoned` (a failed defrag may instead
// leave the engine writable, and then the rest of the workload must work); a copy of the files
// as written through opens with exactly the published transactions; and after a power cut that
// keeps every write but those a failed fdatasync lost, the database opens with a prefix holding
// every acknowledged transaction.

/// The fixed workload of the ioerr loop: every kind of step, roll-overs, a multi-part commit
/// and a multi-part rollback (abort frame), defrag, reopen. Deterministic (one seed, no
/// committer thread), so that call N is the same call in every run.
const IOERR_STEPS: &[Step] = &[
    Step::Tx,
    Step::Tx,
    Step::ForceCommit,
    Step::Tx,
    Step::BigTx,
    Step::Tx,
    Step::Snapshot,
    Step::Tx,
    Step::Defrag,
    Step::Tx,
    Step::BigTx,
    Step::Reopen,
    Step::Tx,
    Step::BigTx,
    Step::Tx,
    Step::Defrag,
    Step::Tx,
];

/// Runs the ioerr workload with a failure at call `n`; returns whether the failure happened.
fn ioerr_run(n: u64, fault: Fault, batch_limit: usize) -> bool {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let vfs = FaultVfs::new(&dir);
    vfs.lock().fail_at = Some((n, fault));
    let cfg = || config(&dir, &vfs, batch_limit);
    let ctx = format!("ioerr {fault:?} at call {n}, batch_limit {batch_limit}");
    let mut h = History::new();
    let mut rng = Rng(n ^ 0xabcdef);
    let mut first_err: Option<(Step, Error)> = None;
    let mut db = match Backend::open(cfg()) {
        Ok(db) => Some(db),
        Err(e) => {
            assert!(is_injected(&e), "{ctx}: open failed with an error that is not the injected one: {e}");
            None
        }
    };
    if db.is_some() {
        for &step in IOERR_STEPS {
            if let Err(e) = run_step(&mut db, step, &mut h, &mut rng, &cfg) {
                first_err = Some((step, e));
                break;
            }
        }
    }
    let fired = !vfs.lock().injected.is_empty();
    let mut writable_after_failure = false;
    if let Some((step, e)) = &first_err {
        assert!(fired, "{ctx}: {step:?} failed though nothing was injected: {e}");
        assert!(is_injected(e), "{ctx}: {step:?} failed with an error that is not the injected one: {e}");
        let mut poisoned = false;
        if let Some(b) = &db {
            // Reads keep working and show a state of the history.
            let seen = last_of(b);
            assert!(seen == h.visible || seen == h.visible + 1, "{ctx}: visible {seen}, history {}", h.visible);
            h.visible = seen;
            assert_eq!(dump(b), h.models[seen], "{ctx}: reads after the failure");
            poisoned = matches!(b.force_commit(), Err(Error::Poisoned { .. }));
            // A failed defrag may leave the engine writable: the old log is still the log.
            if *step != Step::Defrag {
                assert!(poisoned, "{ctx}: {step:?} failed ({e}) but the engine is not poisoned");
            }
            if poisoned {
                let mut tx = b.batch_tx();
                assert!(matches!(tx.put("data", "after", "x"), Err(Error::Poisoned { .. })), "{ctx}: put");
                assert!(matches!(tx.create_bucket("after"), Err(Error::Poisoned { .. })), "{ctx}: create_bucket");
                assert!(matches!(tx.commit(), Err(Error::Poisoned { .. })), "{ctx}: commit after poison");
                assert!(matches!(b.snapshot(), Err(Error::Poisoned { .. })), "{ctx}: snapshot after poison");
                assert!(matches!(b.defrag(), Err(Error::Poisoned { .. })), "{ctx}: defrag after poison");
                assert_eq!(dump(b), h.models[seen], "{ctx}: reads after refused writes");
            }
        }
        if poisoned {
            let closed = db.take().map(Backend::close);
            assert!(matches!(closed, Some(Err(Error::Poisoned { .. }))), "{ctx}: close after poison: {closed:?}");
        } else if db.is_some() {
            // The engine goes on: the rest of the workload must work and be recovered. (What
            // failed was the defrag's own new files, which never became part of the log, so
            // writing on to the log after it is right.)
            writable_after_failure = true;
            for &step in IOERR_STEPS {
                run_step(&mut db, step, &mut h, &mut rng, &cfg)
                    .unwrap_or_else(|e| panic!("{ctx}: after a failed defrag, {step:?} failed: {e}"));
            }
        }
    }
    if let Some(b) = db.take() {
        let r = b.close();
        if first_err.is_none() {
            r.unwrap_or_else(|e| panic!("{ctx}: close failed: {e}"));
            h.acked = h.visible;
        }
    }
    let injected_calls = vfs.lock().injected.clone();
    let after = vfs.lock().writes_after_sync_failure.clone();
    let step = first_err.as_ref().map(|(s, e)| format!("{s:?}: {e}"));
    let ctx =
        format!("{ctx} (injected: {injected_calls:?}; first error {step:?}; writes after a failed sync: {after:?})");
    // DESIGN.md §5: after a failed fdatasync nothing more is written, and the fsync is never
    // retried (the kernel may have dropped the pages; a retry that succeeds proves nothing).
    if !writable_after_failure {
        assert_eq!(after, vec![], "{ctx}: written after a failed fdatasync");
        assert_eq!(vfs.lock().syncs_after_failure, 0, "{ctx}: fdatasync retried after a failure");
    }
    // Reopen a copy with the real file system: the files are what was written through, so
    // exactly the visible transactions are there — unless an fdatasync of the log failed: then
    // the backend left SYNC-FAILED, and the open cuts what may be only in the page cache (a
    // prefix with every acknowledged transaction, which `check_recovered_keep` checks).
    let copy = tmp.path().join("write-through");
    copy_dir(&dir, &copy);
    let sync_failed = copy.join("SYNC-FAILED").exists();
    let again = Backend::open(real_config(&copy)).unwrap_or_else(|e| panic!("{ctx}: reopen after the fault: {e}"));
    let n = h.check_recovered_keep(&again, &ctx);
    if !sync_failed {
        assert_eq!(n, h.visible, "{ctx}: written through, yet not every visible transaction recovered");
    }
    // Then a power cut in which everything written reached the disk, except what a failed
    // fdatasync lost: acknowledged commits must be there, and the database must open.
    vfs.power_cut(None);
    let again = Backend::open(real_config(&dir))
        .unwrap_or_else(|e| panic!("{ctx}: open after a power cut that kept every write but the lost ones: {e}"));
    h.check_recovered(&again, &format!("{ctx}, power cut"));
    fired
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn ioerr_loop(fault: Fault, batch_limit: usize) -> u64 {
    let mut n = 1;
    while ioerr_run(n, fault, batch_limit) {
        n += 1;
        assert!(n < 100_000, "the workload never finishes without a fault");
    }
    eprintln!("ioerr loop {fault:?}, batch_limit {batch_limit}: {n} runs");
    n
}

/// The batch limits to run the loop with: `default`, or with `LOGTREE_FAULT_ALL=1` every one
/// of 1 (every BatchTx commits inline), 3 and 10,000.
fn batch_limits(default: usize) -> Vec<usize> {
    if std::env::var_os("LOGTREE_FAULT_ALL").is_some() { vec![1, 3, 10_000] } else { vec![default] }
}

#[test]
fn ioerr_loop_enospc() {
    for limit in batch_limits(10_000) {
        let calls = ioerr_loop(Fault::Enospc, limit);
        assert!(calls > 50, "the workload makes {calls} mutating calls: too few to be testing much");
    }
}

#[test]
fn ioerr_loop_eio_inline_batch_commits() {
    // batch_limit 3: BatchTx ends commit inline, so syncs fail inside drop() too.
    for limit in batch_limits(3) {
        ioerr_loop(Fault::Eio, limit);
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Power cuts

/// The seeds to run: `LOGTREE_FAULT_SEED` alone, or from a clock-derived base (printed on
/// failure), for `LOGTREE_FAULT_SECS` seconds.
fn seeds() -> (Box<dyn Iterator<Item = u64>>, Duration) {
    if let Some(seed) = std::env::var("LOGTREE_FAULT_SEED").ok().and_then(|s| s.parse().ok()) {
        return (Box::new(std::iter::once(seed)), Duration::MAX);
    }
    let secs = std::env::var("LOGTREE_FAULT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    (Box::new((0..).map(move |i: u64| base.wrapping_add(i.wrapping_mul(7919)))), Duration::from_secs(secs))
}

/// One seed: several cycles of open (maybe cut during recovery), workload, cut at a random
/// call, rewrite to the durable image, and check at the next successful open.
fn power_cut_seed(seed: u64) {
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let mut h = History::new();
    let batch_limit = [1usize, 4, 10_000][rng.below(3) as usize];
    for cycle in 0..6 {
        let ctx = format!("seed {seed} cycle {cycle}");
        let vfs = FaultVfs::new(&dir);
        vfs.adopt_existing();
        let cut = if rng.chance(15) { None } else { Some(1 + rng.below(120)) };
        vfs.lock().cut_at = cut;
        let cfg = || config(&dir, &vfs, batch_limit);
        // A read-only open (which ignores a torn tail rather than cutting it) sees what the
        // read-write open below must see. Without a MANIFEST there is nothing to open, which
        // is fine only while nothing was acknowledged.
        match Backend::open(Config { read_only: true, ..real_config(&dir) }) {
            Ok(ro) => {
                h.check_recovered_keep(&ro, &format!("{ctx}: read-only open"));
                // What a power cut leaves is a write cut short, never a tail that reads as
                // damage (`logtree check` would call it so).
                let rec = ro.recovery_stats();
                assert!(!rec.tail_damaged, "{ctx}: a power cut left a tail that reads as damage: {rec:?}");
            }
            Err(e) => assert_eq!(h.acked, 0, "{ctx}: read-only open failed: {e}"),
        }
        match Backend::open(cfg()) {
            Err(e) => assert!(cut.is_some() && is_injected(&e), "{ctx}: open failed: {e}"),
            Ok(db) => {
                h.check_recovered(&db, &format!("{ctx}: open"));
                let mut db = Some(db);
                for _ in 0..30 {
                    let step = pick_step(&mut rng);
                    if let Err(e) = run_step(&mut db, step, &mut h, &mut rng, &cfg) {
                        assert!(is_injected(&e), "{ctx}: {step:?} failed with an error not injected: {e}");
                        break;
                    }
                }
                if let Some(b) = db.take()
                    && b.close().is_ok()
                {
                    h.acked = h.visible;
                }
            }
        }
        vfs.power_cut(Some(&mut rng));
    }
    let db = Backend::open(real_config(&dir)).unwrap_or_else(|e| panic!("seed {seed}: final open: {e}"));
    h.check_recovered(&db, &format!("seed {seed}: final open"));
}

#[test]
fn power_cuts_keep_a_prefix_with_every_acknowledged_commit() {
    let (seeds, budget) = seeds();
    let started = Instant::now();
    let mut ran = 0;
    for seed in seeds {
        if started.elapsed() > budget && ran >= 20 {
            break;
        }
        let r = std::panic::catch_unwind(|| power_cut_seed(seed));
        if let Err(e) = r {
            eprintln!("power-cut seed {seed} failed; replay with LOGTREE_FAULT_SEED={seed}");
            std::panic::resume_unwind(e);
        }
        ran += 1;
    }
    eprintln!("power-cut seeds run: {ran}");
}

/// The config of a backend through `vfs` that syncs only when told (no group commit on a timer).
fn syncing_when_told(dir: &Path, vfs: &FaultVfs) -> Config {
    Config { batch_interval: Duration::from_secs(3600), ..config(dir, vfs, 10_000) }
}

/// A backend (`syncing_when_told`) holding the acknowledged pair `b/acked = 1` and `n` more
/// transactions, `b/{name} {i} = 2`, written but not synced.
fn acked_then_unsynced(dir: &Path, vfs: &FaultVfs, name: &str, n: usize) -> Backend {
    let db = Backend::open(syncing_when_told(dir, vfs)).unwrap();
    committed(&db, "acked", b"1");
    for i in 0..n {
        let mut tx = db.batch_tx();
        tx.put("b", format!("{name} {i}"), "2").unwrap();
        tx.finish().unwrap();
    }
    db
}

/// Fails the next fdatasync of the log (`force_commit`'s), losing what it should have made
/// durable while the page cache keeps it.
fn fail_next_log_sync(db: &Backend, vfs: &FaultVfs) {
    vfs.lock().fail_next = Some(("sync_data seg-", Fault::Eio));
    assert!(db.force_commit().is_err(), "the injected failure reached force_commit");
}

/// A process that dies with transactions written but not yet synced leaves them in the page
/// cache, where the next process's open reads them back as part of the log. That open must make
/// them durable before it reports them so: a `force_commit` right after it acknowledges them,
/// and a power cut must then not take them.
#[test]
fn an_open_after_a_crash_makes_what_it_recovered_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let vfs = FaultVfs::new(&dir);
    let db = acked_then_unsynced(&dir, &vfs, "written", 3);
    // The process dies: nothing more reaches the files, and what it wrote stays in the page cache.
    vfs.lock().cut_at = Some(0);
    drop(db);
    vfs.lock().cut_at = None;

    let db = Backend::open(syncing_when_told(&dir, &vfs)).unwrap();
    for i in 0..3 {
        assert_eq!(db.read_tx().get("b", format!("written {i}")).unwrap(), Some(b"2".to_vec()), "written {i}");
    }
    db.force_commit().unwrap(); // acknowledges everything visible
    vfs.lock().cut_at = Some(0);
    drop(db);
    vfs.power_cut_losing_unsynced();

    let db = Backend::open(real_config(&dir)).unwrap();
    let r = db.read_tx();
    assert_eq!(r.get("b", "acked").unwrap(), Some(b"1".to_vec()));
    for i in 0..3 {
        assert_eq!(
            r.get("b", format!("written {i}")).unwrap(),
            Some(b"2".to_vec()),
            "acknowledged, then lost: written {i}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A failed fdatasync

/// After a failed fdatasync the kernel may keep the pages it could not write in the page cache,
/// marked clean, and a process that opens the log again before they are evicted reads the
/// transactions in them as if they were on the disk; an fdatasync does not write them again.
/// The failing backend leaves `SYNC-FAILED`, and the next open cuts the log after the last
/// transaction known durable, so that it builds only on what the disk holds: after a power
/// cut, everything it acknowledged is there and the log opens.
#[test]
fn an_open_after_a_failed_fdatasync_cuts_what_the_disk_may_have_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let vfs = FaultVfs::new(&dir);
    let db = acked_then_unsynced(&dir, &vfs, "unsynced", 3);
    fail_next_log_sync(&db, &vfs);
    drop(db);
    assert!(dir.join("SYNC-FAILED").exists(), "the failure is recorded");

    let db = Backend::open(syncing_when_told(&dir, &vfs)).unwrap();
    assert!(!dir.join("SYNC-FAILED").exists(), "removed once the log is cut");
    let r = db.read_tx();
    assert_eq!(r.get("b", "acked").unwrap(), Some(b"1".to_vec()));
    for i in 0..3 {
        assert_eq!(r.get("b", format!("unsynced {i}")).unwrap(), None, "never acknowledged, cut: unsynced {i}");
    }
    drop(r);
    let mut tx = db.batch_tx();
    tx.put("b", "after", "3").unwrap();
    tx.commit().unwrap();
    drop(db);
    vfs.power_cut_losing_unsynced();

    let db = Backend::open(real_config(&dir)).unwrap_or_else(|e| panic!("the log no longer opens: {e}"));
    let r = db.read_tx();
    assert_eq!(r.get("b", "acked").unwrap(), Some(b"1".to_vec()));
    assert_eq!(r.get("b", "after").unwrap(), Some(b"3".to_vec()));
    assert_eq!(r.get("b", "unsynced 0").unwrap(), None);
}

/// A read-only open of a log whose backend left `SYNC-FAILED` shows what a read-write open
/// would keep, and changes nothing.
#[test]
fn a_read_only_open_honours_sync_failed_without_changing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let vfs = FaultVfs::new(&dir);
    let db = acked_then_unsynced(&dir, &vfs, "unsynced", 1);
    fail_next_log_sync(&db, &vfs);
    drop(db);
    let files = |d: &Path| -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap()))
            .collect()
    };
    let before = files(&dir);
    let ro = Backend::open(Config { read_only: true, ..real_config(&dir) }).unwrap();
    assert_eq!(ro.read_tx().get("b", "acked").unwrap(), Some(b"1".to_vec()));
    assert_eq!(ro.read_tx().get("b", "unsynced 0").unwrap(), None);
    drop(ro);
    assert!(before == files(&dir), "a read-only open changed the directory");
}

/// Writeback may fail to write a dead process's pages before the next process opens the log;
/// Linux then reports the error to the next fdatasync of the file (the open's), once, and keeps
/// the pages in the page cache, marked clean, holding what the disk lost. The open reads the
/// disk's copy instead (`RecoveryStats::reread_from_disk`): what it recovers, and what the
/// backend acknowledges after, survives a power cut. It needs no `SYNC-FAILED` for that, so a
/// disk failing that file's creation too (as a failing disk may) does not stop it.
#[test]
fn an_open_whose_fdatasync_fails_reads_the_disk_copy() {
    let (_tmp, dir, vfs) = dead_with_unsynced_pages_writeback_lost();
    vfs.lock().fail_creates = Some("SYNC-FAILED");

    let db = reads_the_disk_copy(&dir, &vfs);
    vfs.lock().fail_creates = None;
    only_acked_then_after_survives_a_power_cut(db, &dir, &vfs);
}

/// A failed fdatasync may also have skipped the journal commit and the device's cache flush for
/// the pages writeback did write, so after reading the disk's copy the open fdatasyncs again;
/// if that fails too, the open fails and leaves `SYNC-FAILED`, and the next open (whose syncs
/// work) reads the disk's copy.
#[test]
fn an_open_whose_second_fdatasync_fails_fails_and_leaves_the_mark() {
    let (_tmp, dir, vfs) = dead_with_unsynced_pages_writeback_lost();
    vfs.lock().fail_next = None;
    vfs.lock().fail_syncs_from = Some(0); // every sync of the log fails from now on

    let e = Backend::open(syncing_when_told(&dir, &vfs)).expect_err("no fdatasync of the segment succeeded");
    assert!(is_injected(&e) && e.to_string().contains("twice"), "{e}");
    assert!(dir.join("SYNC-FAILED").exists(), "the failure is recorded for the next open");

    vfs.lock().fail_syncs_from = None;
    only_acked_then_after_survives_a_power_cut(reads_the_disk_copy(&dir, &vfs), &dir, &vfs);
}

/// If the pages cannot be dropped from the page cache (another process maps them), the open
/// fails and leaves `SYNC-FAILED`, since a retry would not see the fdatasync's error again;
/// read-only opens fail likewise, and the first open that can drop the pages reads the disk's
/// copy.
#[test]
fn an_open_that_cannot_read_the_disk_copy_fails_and_leaves_the_mark() {
    let (_tmp, dir, vfs) = dead_with_unsynced_pages_writeback_lost();
    vfs.lock().cache_held = true;
    let read_only = || Backend::open(Config { read_only: true, ..syncing_when_told(&dir, &vfs) });

    let e = Backend::open(syncing_when_told(&dir, &vfs)).expect_err("the open cannot read the disk's copy");
    assert!(is_injected(&e) && e.to_string().contains("page cache"), "the fdatasync's error, explained: {e}");
    assert!(dir.join("SYNC-FAILED").exists(), "the failure is recorded for the next open");
    let e = Backend::open(syncing_when_told(&dir, &vfs)).expect_err("nor can a retry");
    assert!(e.to_string().contains("page cache"), "{e}");
    assert!(read_only().is_err(), "nor a read-only open");

    vfs.lock().cache_held = false;
    let ro = read_only().unwrap();
    assert!(ro.recovery_stats().reread_from_disk);
    assert_eq!(ro.read_tx().get("b", "acked").unwrap(), Some(b"1".to_vec()));
    assert_eq!(ro.read_tx().get("b", "unsynced 0").unwrap(), None);
    drop(ro);
    assert!(dir.join("SYNC-FAILED").exists(), "a read-only open leaves it");
    only_acked_then_after_survives_a_power_cut(reads_the_disk_copy(&dir, &vfs), &dir, &vfs);
}

/// A database (`dir` in the temporary directory, through the Vfs) whose process acknowledged
/// `b/acked` and wrote three more transactions (`b/unsynced {i}`), then died; writeback then
/// failed to write those, and the next fdatasync of the log will say so.
fn dead_with_unsynced_pages_writeback_lost() -> (tempfile::TempDir, PathBuf, FaultVfs) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let vfs = FaultVfs::new(&dir);
    let db = acked_then_unsynced(&dir, &vfs, "unsynced", 3);
    vfs.lock().cut_at = Some(0);
    drop(db);
    vfs.lock().cut_at = None;
    vfs.lock().fail_next = Some(("sync_data seg-", Fault::Eio));
    (tmp, dir, vfs)
}

/// A read-write open that reads the last segment's copy on the disk, and removes (or leaves no)
/// `SYNC-FAILED`.
fn reads_the_disk_copy(dir: &Path, vfs: &FaultVfs) -> Backend {
    let db = Backend::open(syncing_when_told(dir, vfs)).unwrap();
    assert!(db.recovery_stats().reread_from_disk);
    assert!(!dir.join("SYNC-FAILED").exists());
    db
}

/// `db` holds `b/acked` and none of the unsynced transactions; it acknowledges `b/after`, and
/// after a power cut both are there.
fn only_acked_then_after_survives_a_power_cut(db: Backend, dir: &Path, vfs: &FaultVfs) {
    let r = db.read_tx();
    assert_eq!(r.get("b", "acked").unwrap(), Some(b"1".to_vec()));
    for i in 0..3 {
        assert_eq!(r.get("b", format!("unsynced {i}")).unwrap(), None, "lost by the disk: unsynced {i}");
    }
    drop(r);
    committed(&db, "after", b"3");
    drop(db);
    vfs.power_cut_losing_unsynced();
    let db = Backend::open(real_config(dir)).unwrap_or_else(|e| panic!("the log no longer opens: {e}"));
    assert_eq!(db.read_tx().get("b", "acked").unwrap(), Some(b"1".to_vec()));
    assert_eq!(db.read_tx().get("b", "after").unwrap(), Some(b"3".to_vec()), "acknowledged, then lost");
}

/// A failed fdatasync poisons the engine: the commit that hit it fails, the next commit and
/// every later write report `Poisoned`, nothing is reported durable afterwards, the fsync is
/// never retried, and after a power cut that lost the unsynced writes every acknowledged
/// commit is there.
#[test]
fn failed_fdatasync_poisons_and_never_reports_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let vfs = FaultVfs::new(&dir);
    let db = Backend::open(config(&dir, &vfs, 10_000)).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.put("b", "acked", "1").unwrap();
    tx.commit().unwrap();
    let mut tx = db.batch_tx();
    tx.put("b", "pending", "2").unwrap();
    drop(tx);
    let durable_before = db.stats().durable_seq;
    {
        let mut st = vfs.lock();
        st.fail_syncs_from = Some(st.calls + 1);
    }
    let mut tx = db.batch_tx();
    tx.put("b", "failing", "3").unwrap();
    let e = tx.commit().expect_err("the commit whose fdatasync failed");
    assert!(matches!(&e, Error::Io { source, .. } if source.raw_os_error() == Some(EIO)), "{e}");
    vfs.lock().fail_syncs_from = None; // a retried fsync would now succeed: it must not be tried

    // Visible, not durable.
    assert_eq!(db.read_tx().get("b", "failing").unwrap(), Some(b"3".to_vec()));
    let mut tx = db.batch_tx();
    assert!(matches!(tx.put("b", "later", "4"), Err(Error::Poisoned { .. })));
    assert!(matches!(tx.delete("b", "acked"), Err(Error::Poisoned { .. })));
    assert!(matches!(tx.create_bucket("c"), Err(Error::Poisoned { .. })));
    assert!(matches!(tx.delete_bucket("b"), Err(Error::Poisoned { .. })));
    assert!(matches!(tx.commit(), Err(Error::Poisoned { .. })));
    assert!(matches!(db.force_commit(), Err(Error::Poisoned { .. })));
    assert!(matches!(db.snapshot(), Err(Error::Poisoned { .. })));
    assert!(matches!(db.defrag(), Err(Error::Poisoned { .. })));
    assert_eq!(db.stats().durable_seq, durable_before, "nothing became durable after the failure");
    assert_eq!(db.read_tx().get("b", "acked").unwrap(), Some(b"1".to_vec()), "reads keep working");
    assert!(matches!(db.close(), Err(Error::Poisoned { .. })));
    let st = vfs.lock();
    assert_eq!(st.syncs_after_failure, 0, "a failed fdatasync was retried");
    assert_eq!(st.writes_after_sync_failure, vec![], "the engine wrote after a failed fdatasync");
    drop(st);

    vfs.power_cut(None);
    let again = Backend::open(real_config(&dir)).unwrap();
    let r = again.read_tx();
    assert_eq!(r.get("b", "acked").unwrap(), Some(b"1".to_vec()), "an acknowledged commit was lost");
    assert_eq!(r.get("b", "failing").unwrap(), None, "its fdatasync failed: lost with the power");
}

/// Several threads commit while fdatasync starts failing (and losing the writes it should have
/// made durable). Every commit acknowledged before is there after a power cut; none after the
/// failure is acknowledged; the database opens. A `BatchTx` that was open when the failure
/// happened must not write its frame after it: that frame would land after the lost ones, and
/// a power cut keeping it would leave a valid frame after damage — corruption at open.
#[test]
fn group_commit_with_failing_fdatasync() {
    for seed in 0..30u64 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        let vfs = FaultVfs::new(&dir);
        let db = Backend::open(config(&dir, &vfs, 10_000)).unwrap();
        let mut tx = db.batch_tx();
        tx.create_bucket("b").unwrap();
        tx.commit().unwrap();
        {
            let mut st = vfs.lock();
            st.fail_syncs_from = Some(st.calls + 10 + seed * 3);
            st.sync_delay = Duration::from_micros(300);
        }
        let start = std::sync::Barrier::new(3);
        let acked: Vec<u64> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..3u64)
                .map(|t| {
                    let (db, start) = (&db, &start);
                    s.spawn(move || {
                        start.wait();
                        let mut last_acked = 0;
                        for i in 1..200u64 {
                            let mut tx = db.batch_tx();
                            let ok = tx.put("b", format!("t{t}"), i.to_string()).is_ok()
                                && tx.put("b", format!("pad{t}"), vec![b'p'; 300]).is_ok();
                            if !ok || tx.commit().is_err() {
                                break;
                            }
                            last_acked = i;
                        }
                        last_acked
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let _ = db.close();
        let writes_after = vfs.lock().writes_after_sync_failure.clone();
        assert_eq!(writes_after, vec![], "seed {seed}: written after a failed fdatasync");
        vfs.power_cut(Some(&mut Rng(seed)));
        let again =
            Backend::open(real_config(&dir)).unwrap_or_else(|e| panic!("seed {seed}: open after the power cut: {e}"));
        for (t, &a) in acked.iter().enumerate() {
            let got = again.read_tx().get("b", format!("t{t}")).unwrap();
            let got: u64 = got.map(|v| String::from_utf8(v).unwrap().parse().unwrap()).unwrap_or(0);
            assert!(got >= a, "seed {seed}: thread {t}'s commit {a} was acknowledged, recovered {got}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regression tests for bugs the loops above found (fixed in 4071ed5).

fn committed(db: &Backend, key: &str, value: &[u8]) {
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.put("b", key, value).unwrap();
    tx.commit().unwrap();
}

/// Found by `ioerr_loop_*` (a fault on `sync_dir`). A roll-over writes the new manifest
/// (MANIFEST.tmp, fdatasync, rename over MANIFEST, fsync the directory). When the directory
/// fsync fails after the rename, `roll_over` treats the new segment as never listed and marks
/// it obsolete, so its file was removed — while the MANIFEST on disk lists it. The next open
/// reported "segment … listed in the manifest is missing": the database no longer opened, though
/// nothing acknowledged was damaged. (A rename whose directory fsync failed may or may not be
/// durable; the segment it may list must stay.)
#[test]
fn rollover_sync_dir_failure_keeps_database_openable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let vfs = FaultVfs::new(&dir);
    let db = Backend::open(config(&dir, &vfs, 10_000)).unwrap();
    committed(&db, "acked", b"1");
    vfs.lock().fail_next = Some(("sync_dir", Fault::Eio));
    let mut tx = db.batch_tx();
    let r = tx.put("b", "big1", vec![1u8; 3000]).and_then(|()| tx.put("b", "big2", vec![2u8; 3000]));
    assert!(matches!(&r, Err(Error::Io { .. })), "the roll-over's directory fsync failed: {r:?}");
    drop(tx);
    drop(db);
    let again = Backend::open(real_config(&dir)).expect("the database opens after a failed directory fsync");
    assert_eq!(again.read_tx().get("b", "acked").unwrap(), Some(b"1".to_vec()));
}

/// The same for defrag's switch: its manifest's rename happened, the directory fsync failed;
/// defrag then marked the new segments obsolete and they were removed, while MANIFEST lists them.
#[test]
fn defrag_sync_dir_failure_keeps_database_openable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let vfs = FaultVfs::new(&dir);
    let db = Backend::open(config(&dir, &vfs, 10_000)).unwrap();
    committed(&db, "acked", b"1");
    committed(&db, "acked", b"2");
    vfs.lock().fail_next = Some(("sync_dir", Fault::Eio));
    let r = db.defrag();
    assert!(matches!(&r, Err(Error::Io { .. })), "defrag's directory fsync failed: {r:?}");
    drop(db);
    let again = Backend::open(real_config(&dir)).expect("the database opens after a failed directory fsync");
    assert_eq!(again.read_tx().get("b", "acked").unwrap(), Some(b"2".to_vec()));
}

/// Found by `ioerr_loop_eio_inline_batch_commits`. A transaction larger than what is left of
/// the segment writes a part frame, then seals the segment (fdatasync) to roll over; the
/// fdatasync fails (EIO: Linux may drop the dirty pages, "fsyncgate"). The transaction fails
/// and poisons the engine — but its abort then wrote an abort frame after the lost part (or,
/// when that did not fit, fdatasynced the same segment again, i.e. retried the failed fsync, and
/// rolled over to write it in a new segment). A power cut that keeps the abort frame but not the
/// lost pages leaves a valid frame after damage, which open rightly calls corruption: the
/// database no longer opened. DESIGN.md §5: after a failed fdatasync "every write … returns
/// Poisoned"; a failed fsync "is never retried".
#[test]
fn no_writes_after_a_failed_fdatasync_abort_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let vfs = FaultVfs::new(&dir);
    let db = db_with_acked(&dir, &vfs);
    vfs.lock().fail_next = Some(("sync_data seg-", Fault::Eio));
    let mut tx = db.batch_tx();
    let mut r = Ok(());
    for i in 0..16 {
        r = tx.put("b", format!("big{i}"), vec![i as u8; 8 << 10]);
        if r.is_err() {
            break;
        }
    }
    assert!(matches!(&r, Err(Error::Io { .. })), "the roll-over's fdatasync failed: {r:?}");
    assert!(dir.join("SYNC-FAILED").exists(), "the roll-over's failure is recorded before it is reported");
    drop(tx);
    drop(db);
    power_cut_after_failed_fdatasync(&vfs, &dir);
}

/// Holds a database with the acknowledged pair `b/acked = 1` whose segments are 64 KiB.
fn db_with_acked(dir: &Path, vfs: &FaultVfs) -> Backend {
    let db = Backend::open(Config { segment_size: 64 << 10, ..config(dir, vfs, 10_000) }).unwrap();
    committed(&db, "acked", b"1");
    db
}

/// After an fdatasync failed and the database was closed: nothing was written and no
/// fdatasync retried after the failure, and after a power cut the database opens with the
/// acknowledged pair.
fn power_cut_after_failed_fdatasync(vfs: &FaultVfs, dir: &Path) {
    let st = vfs.lock();
    let (after, resyncs) = (st.writes_after_sync_failure.clone(), st.syncs_after_failure);
    drop(st);
    vfs.power_cut(None);
    let opened = Backend::open(real_config(dir));
    assert_eq!(after, vec![], "written after the failed fdatasync");
    assert_eq!(resyncs, 0, "fdatasync retried after it failed");
    let again = opened.expect("the database opens after a power cut");
    assert_eq!(again.read_tx().get("b", "acked").unwrap(), Some(b"1".to_vec()));
}

/// Found by reading `BatchTx::end` while writing `group_commit_with_failing_fdatasync`: a
/// `BatchTx` that began before an fdatasync failed (here: another thread's `force_commit`; as
/// well the committer thread's tick) wrote its frame when it ended, after the failure. With the
/// failed sync's pages lost and this frame kept by a power cut, open finds a valid frame after
/// damage: corruption.
#[test]
fn no_writes_after_a_failed_fdatasync_open_batch_tx() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let vfs = FaultVfs::new(&dir);
    let db = db_with_acked(&dir, &vfs);
    // Written, not yet durable: three pages that the failing fdatasync will lose.
    let mut tx = db.batch_tx();
    tx.put("b", "pending", vec![7u8; 12 << 10]).unwrap();
    drop(tx);
    let (to_main, from_writer) = std::sync::mpsc::channel::<()>();
    let (to_writer, from_main) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let db = &db;
        s.spawn(move || {
            let mut tx = db.batch_tx();
            tx.put("b", "open-across", "x").unwrap();
            to_main.send(()).unwrap();
            from_main.recv().unwrap();
            drop(tx); // ends after the failure
        });
        from_writer.recv().unwrap();
        vfs.lock().fail_next = Some(("sync_data seg-", Fault::Eio));
        assert!(matches!(db.force_commit(), Err(Error::Io { .. })));
        to_writer.send(()).unwrap();
    });
    let _ = db.close();
    power_cut_after_failed_fdatasync(&vfs, &dir);
}

/// The real file system, but `allocate` — the writer reserving space for the appends it copies
/// into a segment's writable map — fails with ENOSPC once `full` is set: a full disk as the
/// mapped-append path meets it (the fault Vfs above declines `allocate`, so its runs use `pwrite`).
#[derive(Debug, Clone, Default)]
struct FullDisk {
    full: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug)]
struct FullDiskFile {
    inner: Box<dyn VfsFile>,
    full: Arc<std::sync::atomic::AtomicBool>,
}

// SAFETY: delegates every call to a `StdFile`, whose contract it inherits.
unsafe impl VfsFile for FullDiskFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn as_file(&self) -> &File {
        self.inner.as_file()
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<bool> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(injected(ENOSPC));
        }
        self.inner.allocate(offset, len)
    }
}

impl Vfs for FullDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        Ok(Box::new(FullDiskFile { inner: logtree::vfs::StdVfs.open(path, mode)?, full: self.full.clone() }))
    }
    common::real_directory_ops!();
}

/// A full disk when the writer reserves space for its mapped appends: the commit that needed
/// the space fails with the I/O error (no SIGBUS, nothing half-written), later writes are
/// refused as poisoned while reads go on, and a reopen holds exactly the commits that returned
/// Ok.
#[test]
fn full_disk_at_a_reservation_fails_the_commit_and_keeps_every_acknowledged_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let vfs = FullDisk::default();
    let cfg = Config { batch_interval: Duration::ZERO, sync: false, vfs: Arc::new(vfs.clone()), ..Config::new(&dir) };
    let db = Backend::open(cfg.clone()).unwrap();
    let value = vec![7u8; 1000];
    // Small transactions, as the map takes them (large frames go through `pwrite`).
    let batch = |db: &Backend, i: usize| -> logtree::Result<()> {
        let mut tx = db.batch_tx();
        tx.create_bucket("b")?;
        tx.put("b", format!("{i:05}"), &value)?;
        tx.commit()
    };
    for i in 0..1000 {
        batch(&db, i).unwrap();
    }
    vfs.full.store(true, std::sync::atomic::Ordering::SeqCst);
    // 2 MiB are reserved at a time: within some 2,100 more commits of ~1 KB one needs more.
    let mut acknowledged = 1000;
    let err = loop {
        match batch(&db, acknowledged) {
            Ok(()) => acknowledged += 1,
            Err(e) => break e,
        }
        assert!(acknowledged < 5000, "no reservation was needed");
    };
    assert!(matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(ENOSPC)), "{err:?}");
    assert!(matches!(batch(&db, 99), Err(Error::Poisoned { .. })), "later writes are refused");
    assert_eq!(db.read_tx().range("b", "", "\u{7f}", 0).unwrap().len(), acknowledged, "reads go on");
    drop(db);

    vfs.full.store(false, std::sync::atomic::Ordering::SeqCst);
    let db = Backend::open(cfg).unwrap();
    let rows = db.read_tx().range("b", "", "\u{7f}", 0).unwrap();
    assert_eq!(rows.len(), acknowledged, "exactly the acknowledged commits");
    assert!(rows.iter().all(|(k, v)| v == &value && k[..] < *format!("{acknowledged:05}").as_bytes()));
    batch(&db, acknowledged).unwrap();
}
