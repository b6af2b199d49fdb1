//! The backend: opening, the two kinds of transaction, commits, sizes, closing.

use std::fs::TryLockError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::batch_tx::{BatchTx, Writer};
use super::commit::{Committer, Durability};
use super::merger::{MERGE_WAIT_MAX, MERGE_WAIT_STEP, Merger, Shared};
use super::read_tx::{ReadTx, View};
use super::tx_buffer::TxBuffer;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::index::ValueRef;
use crate::index::catalog::Catalog;
use crate::index::layers::MAX_SEALED;
use crate::log::format::{DecodeStop, Op};
use crate::log::manifest;
use crate::log::recovery::{self, OpenOptions};
use crate::log::segment::Segment;
use crate::log::writer::{LogPos, LogWriter, WriterConfig};
use crate::prefetch::prefetch;
use crate::vfs::{OpenMode, VfsFile};

const LOCK_NAME: &str = "LOCK";

/// The storage engine: a directory holding an append-only log, and in memory, an index of it.
///
/// `Backend` is `Send + Sync`: share it by reference or in an `Arc`. One [`BatchTx`] writes at
/// a time; any number of [`ReadTx`] read consistent snapshots without ever waiting for it.
///
/// ```
/// let (db, _dir) = logtree::Backend::open_temp()?;
/// let mut tx = db.batch_tx();
/// tx.create_bucket("key")?;
/// tx.put("key", "foo", "bar")?;
/// drop(tx); // visible now, durable within batch_interval
/// assert_eq!(db.read_tx().get("key", "foo")?, Some(b"bar".to_vec()));
/// db.force_commit()?; // durable now
/// db.close()?;
/// # Ok::<(), logtree::Error>(())
/// ```
pub struct Backend {
    config: Config,
    /// The published view and the writer, shared with the merger thread.
    shared: Arc<Shared>,
    /// A token of the thread holding the writer lock (0: none), to refuse a second
    /// `batch_tx()` on the same thread instead of deadlocking.
    writer_thread: AtomicUsize,
    /// Carries the buckets' sealed layers into their bases (`None` when read-only).
    merger: Option<Merger>,
    /// A defrag's catch-up cannot keep up with the writer: each `batch_tx` waits `GIVE_WAY`.
    writers_held_back: AtomicBool,
    /// `None` when read-only.
    durability: Option<Arc<Durability>>,
    committer: Option<Committer>,
    /// The log writer's settings (with the shared segment-id allocator), for defrag.
    writer_config: Option<WriterConfig>,
    /// One defrag at a time.
    defrag_lock: Mutex<()>,
    /// Holds the directory's lock for as long as the backend lives.
    _lock: Box<dyn VfsFile>,
    /// What opening found.
    recovery: RecoveryStats,
    closed: bool,
}

/// What [`Backend::open`] found in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Complete transactions replayed.
    pub transactions: u64,
    /// Bytes of torn tail found after the last complete transaction (cut off unless the
    /// backend is read-only). After a crash this includes the zeros of the space the writer
    /// had reserved ahead of itself in the active segment (at most 2 MiB).
    pub torn_bytes: u64,
    /// The torn tail began with a write lost out of order — a sector or page of zeros with
    /// verifying frames after it, which a power cut during an fdatasync can leave (DESIGN.md
    /// §6) — rather than at the end of what was written. Counted in `torn_bytes` too.
    pub lost_write: bool,
    /// Where the torn tail's first frame that does not verify begins, if the tail has one (a
    /// tail of zeros has one too: its "frame" of zeros). `None` without a torn tail, or when
    /// the log ends where a transaction's last part would begin.
    pub torn_at: Option<TornAt>,
    /// The torn tail does not read as an interrupted write: its first frame fails its checksum
    /// and shows none of the marks a write cut by a crash leaves (zeros where bytes were never
    /// written, a file ending inside it), or verifies with one bit of its length flipped
    /// (DESIGN.md §6 step 7) — most likely bytes changed on the disk, as a flipped byte in the
    /// last transaction of a cleanly closed database. A read-write open cuts the tail all the
    /// same unless [`Config::cut_damaged_tail`](crate::Config::cut_damaged_tail) is false (no
    /// rule tells such damage from a crash for certain); `logtree check` reports it as damage,
    /// so that it is looked at before that open. Not set when `lost_write` is.
    pub tail_damaged: bool,
    /// The last segment was read from the disk rather than the page cache: an fdatasync of it
    /// failed (this open's own, or an earlier open's, which left `SYNC-FAILED`), so cached pages
    /// of it could hold what the disk lost (DESIGN.md §6).
    pub reread_from_disk: bool,
}

/// A place in the log: a segment and a byte offset in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornAt {
    /// The segment's id (its file is [`TornAt::file_name`]).
    pub segment: u32,
    /// Byte offset in the segment's file.
    pub offset: u64,
}

impl TornAt {
    /// The segment's file name in the database directory.
    ///
    /// ```
    /// let at = logtree::TornAt { segment: 3, offset: 96 };
    /// assert_eq!(at.file_name(), "seg-0000000003.log");
    /// ```
    pub fn file_name(&self) -> String {
        crate::log::segment::segment_file_name(self.segment)
    }
}

/// Figures about a backend, for monitoring and for `logtree stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Number of buckets.
    pub buckets: usize,
    /// Number of keys in all buckets.
    pub keys: u64,
    /// [`Backend::size`].
    pub size: u64,
    /// [`Backend::size_in_use`].
    pub size_in_use: u64,
    /// Number of log segments.
    pub segments: usize,
    /// Sequence number of the last transaction written (visible).
    pub written_seq: u64,
    /// Sequence number of the last transaction made durable.
    pub durable_seq: u64,
    /// Approximate bytes of memory the index takes.
    pub index_bytes: u64,
    /// Index entries written to the buckets' layers of recent writes and not yet merged into
    /// their main trees (DESIGN.md §3, "Layers"): zero soon after the writer pauses.
    pub unmerged: u64,
}

fn thread_token() -> usize {
    thread_local!(static TOKEN: u8 = const { 0 });
    TOKEN.with(|t| t as *const u8 as usize)
}

impl Backend {
    /// Opens the database in `config.path`, creating it if missing (unless read-only), and
    /// recovers it: every complete transaction in the log is replayed into the index, a torn
    /// tail is cut off, and damage anywhere else is [`Error::Corruption`] (nothing is deleted).
    pub fn open(config: Config) -> Result<Backend> {
        config.validate()?;
        let dir = config.path.clone();
        let vfs = config.vfs.clone();
        if !config.read_only {
            crate::vfs::create_dir_durably(&*vfs, &dir)
                .map_err(|e| Error::io("create database directory", Some(dir.clone()), e))?;
        }
        let lock = lock_dir(&config)?;

        let mut catalog = Catalog::default();
        let opts = OpenOptions {
            dir: &dir,
            vfs: &vfs,
            read_only: config.read_only,
            cut_damaged_tail: config.cut_damaged_tail,
            sync: config.sync,
            segment_size: config.segment_size,
            replay_batch_ops: recovery::REPLAY_BATCH_OPS,
        };
        // The replay builds the index: background work that would stall it waits (`pacing`).
        let busy = crate::pacing::foreground();
        let rec = recovery::open_log(&opts, |_, ops| replay(&mut catalog, ops))?;
        drop(busy);

        let last_seq = rec.next_seq - 1;
        // Saturating: a log that already names segment u32::MAX opens (and reads), but cannot
        // begin another segment (`LogWriter::create_segment` refuses).
        let next_segment_id = rec.segments.iter().map(|s| s.id).max().unwrap_or(0).saturating_add(1);
        let active = rec.segments.last().cloned().expect("a log has a segment");
        let end = LogPos { seg: active.id, off: active.len() };
        if !config.read_only {
            // From here on, writes go to layers that the merger carries into the trees
            // recovery built (`index/layers.rs`).
            catalog.set_layered(config.layer_entries);
        }
        let view = View { catalog: catalog.snapshot(), segments: Arc::new(rec.segments.clone()), seq: last_seq, end };
        // Only a read-only backend, which has no log writer, reads values through this list.
        let segments = if config.read_only { view.segments.clone() } else { Arc::new(Vec::new()) };
        let (log, durability, committer) = if config.read_only {
            (None, None, None)
        } else {
            let wcfg = WriterConfig {
                dir: dir.clone(),
                vfs: vfs.clone(),
                sync: config.sync,
                segment_size: config.segment_size,
                segment_ids: Arc::new(AtomicU32::new(next_segment_id)),
                in_manifest: true,
                failed: Arc::new(AtomicBool::new(false)),
                sync_gate: Arc::new(RwLock::new(())),
            };
            let dur = Arc::new(Durability::new(active, last_seq, config.batch_limit, &wcfg));
            let log = LogWriter::new(wcfg.clone(), rec.segments, rec.next_seq, Some(rec.base_seq));
            let committer = Committer::start(dur.clone(), config.batch_interval)?;
            (Some(log), Some(dur), Some(committer))
        };
        let writer_config = log.as_ref().map(|l| l.config().clone());
        let shared = Arc::new(Shared::new(view, Writer { log, catalog: TxBuffer::new(catalog), segments, pool: None }));
        let merger = if config.read_only { None } else { Some(Merger::start(shared.clone())?) };
        Ok(Backend {
            shared,
            writer_thread: AtomicUsize::new(0),
            merger,
            writers_held_back: AtomicBool::new(false),
            durability,
            committer,
            writer_config,
            defrag_lock: Mutex::new(()),
            _lock: lock,
            recovery: RecoveryStats {
                transactions: rec.transactions,
                torn_bytes: rec.torn_bytes,
                lost_write: rec.lost_write,
                torn_at: rec.torn_at.map(|(segment, offset)| TornAt { segment, offset }),
                tail_damaged: rec.tail_damaged,
                reread_from_disk: rec.reread_from_disk,
            },
            closed: false,
            config,
        })
    }

    /// Opens a new database with default settings in a new temporary directory, which is
    /// removed when the returned `TempDir` is dropped (as etcd's `NewDefaultTmpBackend`).
    pub fn open_temp() -> Result<(Backend, tempfile::TempDir)> {
        let dir = tempfile::Builder::new()
            .prefix("logtree-")
            .tempdir()
            .map_err(|e| Error::io("create temporary directory", None, e))?;
        let backend = Backend::open(Config::new(dir.path()))?;
        Ok((backend, dir))
    }

    /// Begins the write transaction, waiting while another is alive. Readers are never
    /// blocked by it.
    ///
    /// Asking for a second `BatchTx` on a thread that already holds one would deadlock; instead
    /// the second one is returned unusable: every call on it returns [`Error::TxUnusable`].
    pub fn batch_tx(&self) -> BatchTx<'_> {
        if self.holds_writer_on_this_thread() {
            return BatchTx::unusable(self, "this thread already holds a BatchTx; end it first");
        }
        if self.writers_held_back.load(Ordering::Relaxed) {
            // A defrag that cannot otherwise catch up (DESIGN.md §9.3): a short wait before
            // each transaction, without the writer lock, rather than a long one at the switch.
            std::thread::sleep(GIVE_WAY);
        }
        // A panic while holding the writer rolls its transaction back (see BatchTx's Drop), so
        // the state behind a poisoned mutex is consistent.
        let guard = self.lock_writer();
        BatchTx::new(self, guard)
    }

    /// A consistent snapshot of everything written so far (durable or not). O(1); never waits
    /// for the writer.
    pub fn read_tx(&self) -> ReadTx {
        ReadTx::new(self.current_view())
    }

    /// Makes every transaction that has ended durable, then returns.
    pub fn force_commit(&self) -> Result<()> {
        self.sync_written()
    }

    /// Bytes of all the engine's files on disk: the log's segments, including the space the
    /// writer has reserved ahead of itself in the active one (at most 2 MiB, given back when
    /// the segment is sealed or the backend closed), and the manifest.
    pub fn size(&self) -> u64 {
        size_of(&self.current_view())
    }

    /// Bytes of the records that are still live — each bucket's creation and the latest put of
    /// every key — which is what a defrag would keep. `size() - size_in_use()` is garbage
    /// (overwritten and deleted records) plus framing.
    pub fn size_in_use(&self) -> u64 {
        self.current_view().catalog.live_bytes()
    }

    /// Figures about the backend.
    pub fn stats(&self) -> Stats {
        let view = self.current_view();
        let (written_seq, durable_seq) = match &self.durability {
            Some(d) => d.seqs(),
            None => (view.seq, view.seq),
        };
        Stats {
            buckets: view.catalog.len(),
            keys: view.catalog.key_count(),
            size: size_of(&view),
            size_in_use: view.catalog.live_bytes(),
            segments: view.segments.len(),
            written_seq,
            durable_seq,
            index_bytes: view.catalog.iter().map(|b| b.heap_bytes() as u64).sum(),
            unmerged: view.catalog.iter().map(|b| b.unmerged() as u64).sum(),
        }
    }

    /// What opening found in the log.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.recovery
    }

    /// The configuration the backend was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Commits what is pending and closes. Dropping a `Backend` does the same, but can only
    /// ignore a failure; `close` reports it.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(mut m) = self.merger.take() {
            m.stop();
        }
        if let Some(mut c) = self.committer.take() {
            c.stop();
        }
        // Nothing is appended after this, so the active segment gives back the space reserved
        // ahead of the writer (even if a reader still maps it): a closed log's files hold just
        // its records. Best effort: a tail left reserved reads as zeros, which the next open
        // cuts off like a torn tail.
        if let Some(log) = self.lock_writer().log.as_ref() {
            let _ = log.active().seal();
        }
        match &self.durability {
            Some(d) => d.sync_written(),
            None => Ok(()),
        }
    }

    // ----- for the transactions -----

    pub(crate) fn current_view(&self) -> Arc<View> {
        self.shared.current_view()
    }

    pub(crate) fn published_catalog(&self) -> Catalog {
        self.current_view().catalog.clone()
    }

    /// Makes `view` the one new read transactions see; returns the one it replaces, for the
    /// caller to drop once it has released the writer lock (freeing the nodes only the old
    /// view held must delay neither readers nor the next writer).
    #[must_use = "drop the old view after releasing the writer lock"]
    pub(crate) fn publish(&self, view: View) -> Arc<View> {
        self.shared.publish(view)
    }

    /// Takes the writer lock, recording this thread as its holder.
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the writer rolls its transaction back (see BatchTx's Drop), so
        // the state behind a poisoned mutex is consistent.
        let guard = self.shared.lock_writer();
        self.writer_thread.store(thread_token(), Ordering::Release);
        guard
    }

    pub(crate) fn holds_writer_on_this_thread(&self) -> bool {
        self.writer_thread.load(Ordering::Acquire) == thread_token()
    }

    pub(crate) fn writer_config(&self) -> Option<&WriterConfig> {
        self.writer_config.as_ref()
    }

    pub(crate) fn defrag_lock(&self) -> &Mutex<()> {
        &self.defrag_lock
    }

    /// A defrag switched the log: everything up to `seq` is durable in `active`'s log.
    pub(crate) fn switched(&self, active: &Arc<Segment>, seq: u64) {
        if let Some(d) = &self.durability {
            d.switched(active, seq);
        }
    }

    /// Before a transaction: installs the merges that wait (`merger.rs`), and if a bucket has
    /// [`MAX_SEALED`] layers waiting, waits for the merger to take them.
    pub(crate) fn settle_layers(&self, w: &mut Writer) {
        let Some(merger) = &self.merger else { return };
        self.shared.install_merges(w);
        if !merger.alive() {
            // The merger died of a bug (found by review: then every transaction at the bound
            // waited 5 s, and the views installs replaced were never dropped). Merge here.
            if w.catalog.read().most_sealed() >= MAX_SEALED {
                self.shared.merge_here(w);
            }
            self.shared.drop_replaced();
            return;
        }
        let started = std::time::Instant::now();
        while w.catalog.read().most_sealed() >= MAX_SEALED {
            merger.wake();
            if self.shared.wait_for_merge(MERGE_WAIT_STEP) {
                self.shared.install_merges(w);
            } else if started.elapsed() >= MERGE_WAIT_MAX {
                // The merger runs but should have delivered long ago (a bug): merge here rather
                // than let the layers grow without bound.
                self.shared.merge_here(w);
            }
        }
    }

    /// After a publish: wakes the merger if a bucket sealed a layer, or if it sleeps.
    pub(crate) fn wake_merger(&self, sealed: bool) {
        if let Some(m) = &self.merger
            && (sealed || self.shared.published())
        {
            m.wake();
        }
    }

    /// Holds each new `BatchTx` back by `GIVE_WAY`, or stops (see `writers_held_back`).
    pub(crate) fn hold_writers_back(&self, yes: bool) {
        self.writers_held_back.store(yes, Ordering::Relaxed);
    }

    /// A guard that stops holding writers back when dropped.
    pub(crate) fn writers_give_way(&self) -> impl Drop + '_ {
        GiveWay(self)
    }

    pub(crate) fn is_layered(&self) -> bool {
        self.merger.is_some()
    }

    pub(crate) fn release_writer(&self) {
        self.writer_thread.store(0, Ordering::Release);
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        match &self.durability {
            Some(d) => d.check(),
            None => Err(Error::ReadOnly),
        }
    }

    pub(crate) fn poison(&self, e: &Error) {
        if let Some(d) = &self.durability {
            d.poison(e);
        }
    }

    /// Records that transaction `seq`'s frames are in the log before it is published (a large
    /// commit, which starts its sync before it applies its puts to the index).
    pub(crate) fn framed(&self, seq: u64, active: &Arc<Segment>) {
        if let Some(d) = &self.durability {
            d.framed(seq, active);
        }
    }

    /// Records a written transaction; true if the batch limit is reached.
    pub(crate) fn wrote(&self, seq: u64, ops: u64, active: &Arc<Segment>) -> bool {
        self.durability.as_ref().is_some_and(|d| d.wrote(seq, ops, active))
    }

    pub(crate) fn sync_to(&self, seq: u64) -> Result<()> {
        match &self.durability {
            Some(d) => d.sync_to(seq),
            None => Ok(()),
        }
    }

    /// Starts making transaction `seq` durable on the committer thread, without waiting.
    pub(crate) fn start_sync(&self, seq: u64) {
        if let Some(c) = &self.committer {
            c.kick(seq);
        }
    }

    /// Has the committer thread start writing back `seg`'s recent writes (see
    /// `Segment::start_writeback`), without waiting.
    pub(crate) fn start_writeback(&self, seg: &Arc<Segment>) {
        if let Some(c) = &self.committer {
            c.write_back(seg);
        }
    }

    pub(crate) fn sync_written(&self) -> Result<()> {
        match &self.durability {
            Some(d) => d.sync_written(),
            None => Ok(()),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.shutdown();
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("path", &self.config.path).finish_non_exhaustive()
    }
}

/// How long each new `BatchTx` waits while a defrag holds writers back.
const GIVE_WAY: std::time::Duration = std::time::Duration::from_micros(100);

/// Stops holding writers back when a defrag's catch-up ends.
struct GiveWay<'a>(&'a Backend);

impl Drop for GiveWay<'_> {
    fn drop(&mut self) {
        self.0.hold_writers_back(false);
    }
}

/// Bytes of the files of `view`'s log: its segments and the manifest that lists them. (Stats
/// take this from the same view as their other figures, so they agree with each other.)
fn size_of(view: &View) -> u64 {
    let segments: u64 = view.segments.iter().map(|s| s.file_len()).sum();
    segments + manifest::encoded_len(view.segments.len()) as u64
}

/// Takes the directory's lock: exclusive for a writer, shared for a read-only open.
fn lock_dir(config: &Config) -> Result<Box<dyn VfsFile>> {
    let path: PathBuf = config.path.join(LOCK_NAME);
    let vfs = &config.vfs;
    let file = if config.read_only {
        vfs.open(&path, OpenMode::Read)
    } else {
        match vfs.open(&path, OpenMode::CreateNew) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => vfs.open(&path, OpenMode::ReadWrite),
            other => other,
        }
    }
    .map_err(|e| Error::io("open lock file", Some(path.clone()), e))?;
    // A process forked from this one holds a copy of every open descriptor — and with it the
    // `flock` — until it execs, a moment later. A close-and-reopen that meets such a copy would
    // see its own lock as another's; a few short retries (10 ms at most) ride that out while a
    // real second owner is still reported at once.
    let mut attempts = 0;
    loop {
        let r = if config.read_only { file.as_file().try_lock_shared() } else { file.as_file().try_lock() };
        match r {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if attempts < 5 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(TryLockError::WouldBlock) => return Err(Error::Locked { path: config.path.clone() }),
            Err(TryLockError::Error(e)) => return Err(Error::io("lock database directory", Some(path), e)),
        }
    }
}

/// Applies one recovered transaction to the catalog being rebuilt.
///
/// Long runs of puts and deletes are applied in key order (operations on the same key keep
/// their order, so the last one wins): inserting in order touches each leaf once while it is in
/// cache, where the log's order — often random — would miss the cache on almost every insert.
/// Bucket creations and deletions split the runs, since they change what the key operations
/// mean.
///
/// The sort orders one integer per operation (see [`SortKey`]), so that it rarely reads the
/// keys themselves (scattered over the log's maps) and compares without a call: only
/// operations whose keys share their bucket and first 8 bytes are then put in order by their
/// whole keys.
pub(super) fn replay(catalog: &mut Catalog, ops: &[Op<'_>]) -> std::result::Result<(), DecodeStop> {
    const SORT_FROM: usize = 64;
    let mut run_start = 0;
    for (i, op) in ops.iter().enumerate() {
        let is_bucket_op = matches!(op, Op::CreateBucket { .. } | Op::DeleteBucket { .. });
        if !is_bucket_op && i + 1 < ops.len() {
            continue;
        }
        let run = &ops[run_start..if is_bucket_op { i } else { i + 1 }];
        // A run of 2^32 operations or more (one transaction that large) is replayed as it is:
        // a `SortKey` has 32 bits for the position.
        if run.len() >= SORT_FROM && u32::try_from(run.len()).is_ok() {
            let order = sorted_order(run);
            let mut cursor = BucketCursor::default();
            let mut n = 0;
            while n < order.len() {
                let id = order[n].bucket();
                let end = n + order[n..].partition_point(|o| o.bucket() == id);
                if load_empty_bucket(catalog, run, &order[n..end])? {
                    n = end;
                    continue;
                }
                for m in n..end {
                    fetch_ahead(run, &order, m);
                    cursor.apply(catalog, &run[order[m].position()])?;
                }
                n = end;
            }
        } else {
            let mut cursor = BucketCursor::default();
            for op in run {
                cursor.apply(catalog, op)?;
            }
        }
        if is_bucket_op {
            apply_bucket_op(catalog, op)?;
        }
        run_start = i + 1;
    }
    Ok(())
}

/// One operation of a run, as the integer that orders it: its bucket's id (32 bits), the
/// first 8 bytes of its key, zero-padded (64 bits, big-endian, so that integers order as
/// the bytes do), and its position in the run (32 bits: `replay` sorts only runs shorter than
/// 2³²). Sorting these integers orders the operations by bucket and key prefix, and operations
/// with equal prefixes by position; [`sorted_order`] then orders those by key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey(u128);

impl SortKey {
    fn new(bucket: u32, key: &[u8], position: usize) -> SortKey {
        let prefix = match key.first_chunk::<8>() {
            Some(first) => u64::from_be_bytes(*first),
            None => {
                let mut padded = [0u8; 8];
                padded[..key.len()].copy_from_slice(key);
                u64::from_be_bytes(padded)
            }
        };
        SortKey((u128::from(bucket) << 96) | (u128::from(prefix) << 32) | position as u128)
    }

    fn bucket(self) -> u32 {
        (self.0 >> 96) as u32
    }

    /// The bucket and key prefix: equal for two operations whose keys may be equal.
    fn bucket_and_prefix(self) -> u128 {
        self.0 >> 32
    }

    fn position(self) -> usize {
        self.0 as u32 as usize
    }
}

/// The operations of `run` as sort keys, in order of bucket, then key, then position in
/// `run` (so a key's operations keep their order). Keys with a common 8-byte prefix are
/// compared whole, and only they. From [`REPLAY_SPLIT_FROM`] operations on, each half of the
/// run is keyed and sorted on a thread of its own (`parallel::join`), and the two are merged.
fn sorted_order(run: &[Op<'_>]) -> Vec<SortKey> {
    let keyed = |ops: &[Op<'_>], base: usize| -> Vec<SortKey> {
        let mut keys: Vec<SortKey> = ops
            .iter()
            .enumerate()
            .map(|(j, op)| {
                let (bucket, key) = key_of(op);
                SortKey::new(bucket, key, base + j)
            })
            .collect();
        keys.sort_unstable();
        keys
    };
    let mut order = if run.len() < REPLAY_SPLIT_FROM {
        keyed(run, 0)
    } else {
        let mid = run.len() / 2;
        let (low, high) = crate::parallel::join("logtree-replay", || keyed(&run[..mid], 0), || keyed(&run[mid..], mid));
        // Merged by hand: appending the high half and calling std's stable sort, which finds
        // the two runs and merges them, opened the comparison's log 3-7% slower (alternated).
        let mut order = Vec::with_capacity(run.len());
        let (mut a, mut b) = (low.iter().peekable(), high.iter().peekable());
        while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
            if x <= y {
                order.push(x);
                a.next();
            } else {
                order.push(y);
                b.next();
            }
        }
        order.extend(a.chain(b));
        order
    };
    order_ties_by_key(&mut order, run);
    order
}

/// Orders by whole key, stably, each run of `order` (sorted) whose operations share their
/// bucket and first 8 bytes.
fn order_ties_by_key(order: &mut [SortKey], run: &[Op<'_>]) {
    let mut start = 0;
    while start < order.len() {
        let prefix = order[start].bucket_and_prefix();
        let len = order[start..].iter().take_while(|o| o.bucket_and_prefix() == prefix).count();
        if len > 1 {
            // Already in position order, which a stable sort by key keeps for equal keys.
            order[start..start + len].sort_by(|a, b| key_of(&run[a.position()]).1.cmp(key_of(&run[b.position()]).1));
        }
        start += len;
    }
}

/// How far ahead, in sorted operations, replay asks for what it will read.
const PREFETCH_AHEAD: usize = 16;

/// In key order both the operations and their keys are read from all over memory: fetches
/// those of `order[n]`'s successors ahead, in two stages (an operation's key can only be found
/// once the operation is in cache), so that the misses overlap the work.
fn fetch_ahead(run: &[Op<'_>], order: &[SortKey], n: usize) {
    if let Some(ahead) = order.get(n + 2 * PREFETCH_AHEAD) {
        prefetch(std::slice::from_ref(&run[ahead.position()]));
    }
    if let Some(ahead) = order.get(n + PREFETCH_AHEAD) {
        prefetch(key_of(&run[ahead.position()]).1);
    }
}

/// If the bucket of `group` — one bucket's operations of a run, in key order, a key's
/// operations in log order — has no keys yet, gives it the keys those operations leave in one
/// bottom-up build of its tree (`BTree::from_sorted`) instead of inserting them one by one;
/// returns whether it did. This is the common case at open: every bucket starts empty and the
/// first run holds up to a million operations (measured on a 1M-key log: open, median of nine,
/// ~0.79 → ~0.52 s; DESIGN.md §6). A group of [`REPLAY_SPLIT_FROM`] operations or more is gone
/// through in two halves on two threads (an open has nothing else for the second core to do).
fn load_empty_bucket(
    catalog: &mut Catalog,
    run: &[Op<'_>],
    group: &[SortKey],
) -> std::result::Result<bool, DecodeStop> {
    let Some(&first) = group.first() else { return Ok(false) };
    let index = catalog.index_of_id(first.bucket()).ok_or(DecodeStop::Rejected("names an unknown bucket"))?;
    if !catalog.at_mut(index).is_empty() {
        return Ok(false);
    }
    let entries = if group.len() >= REPLAY_SPLIT_FROM {
        // Split between two keys: a key's operations must stay together.
        let mut mid = group.len() / 2;
        while mid < group.len() && same_key(run, group[mid - 1], group[mid]) {
            mid += 1;
        }
        let (low, high) = group.split_at(mid);
        let (mut entries, more) = crate::parallel::join(
            "logtree-replay",
            || surviving_puts(run, low, group.len()),
            || surviving_puts(run, high, high.len()),
        );
        entries.extend(more);
        entries
    } else {
        surviving_puts(run, group, group.len())
    };
    Ok(catalog.at_mut(index).load_sorted(&entries))
}

/// Operations of one empty bucket in a run from which `load_empty_bucket` goes through them on
/// two threads: below it, starting a thread costs more than half the work saves.
const REPLAY_SPLIT_FROM: usize = 1 << 16;

/// Whether two operations of a run, of one bucket, have the same key. Keys whose first 8
/// bytes differ differ: they are compared whole only if not.
fn same_key(run: &[Op<'_>], a: SortKey, b: SortKey) -> bool {
    a.bucket_and_prefix() == b.bucket_and_prefix() && key_of(&run[a.position()]).1 == key_of(&run[b.position()]).1
}

/// The keys `group`'s operations leave and their values, in key order: of a key's operations
/// (adjacent, in log order) only the last counts; a put leaves the key, a delete none.
/// `capacity`: room to make for entries (more if others are to be appended).
fn surviving_puts<'r>(run: &[Op<'r>], group: &[SortKey], capacity: usize) -> Vec<(&'r [u8], ValueRef)> {
    let mut entries = Vec::with_capacity(capacity);
    let mut pending: Option<(SortKey, &Op<'r>)> = None;
    for (i, &o) in group.iter().enumerate() {
        // Only the operations: a key is read here only if two share their first 8 bytes.
        if let Some(ahead) = group.get(i + PREFETCH_AHEAD) {
            prefetch(std::slice::from_ref(&run[ahead.position()]));
        }
        let op = &run[o.position()];
        if let Some((prev_order, prev)) = pending
            && !same_key(run, prev_order, o)
            && let Op::Put { key, value, .. } = *prev
        {
            entries.push((key, value));
        }
        pending = Some((o, op));
    }
    if let Some((_, &Op::Put { key, value, .. })) = pending {
        entries.push((key, value));
    }
    entries
}

fn key_of<'a>(op: &Op<'a>) -> (u32, &'a [u8]) {
    match *op {
        Op::Put { bucket, key, .. } | Op::Delete { bucket, key } => (bucket, key),
        Op::CreateBucket { bucket, .. } | Op::DeleteBucket { bucket } => (bucket, &[]),
    }
}

/// Remembers where the last key operation's bucket is in the catalog: runs of operations on
/// one bucket then look it up once. Valid only while no bucket is created or deleted.
#[derive(Default)]
struct BucketCursor {
    last: Option<(u32, usize)>,
}

impl BucketCursor {
    fn apply(&mut self, catalog: &mut Catalog, op: &Op<'_>) -> std::result::Result<(), DecodeStop> {
        let (id, _) = key_of(op);
        let index = match self.last {
            Some((last, index)) if last == id => index,
            _ => {
                let index = catalog.index_of_id(id).ok_or(DecodeStop::Rejected("names an unknown bucket"))?;
                self.last = Some((id, index));
                index
            }
        };
        let bucket = catalog.at_mut(index);
        match *op {
            Op::Put { key, value, .. } => {
                bucket.put(key, value);
            }
            Op::Delete { key, .. } => {
                // The log holds a delete only of a key that was there when it was written, and
                // replay applies a key's operations in their order.
                bucket.delete_expected(key);
            }
            Op::CreateBucket { .. } | Op::DeleteBucket { .. } => unreachable!("runs hold key operations only"),
        }
        Ok(())
    }
}

fn apply_bucket_op(catalog: &mut Catalog, op: &Op<'_>) -> std::result::Result<(), DecodeStop> {
    match *op {
        Op::CreateBucket { bucket, name } => {
            if catalog.index_of_id(bucket).is_some() || !catalog.create(name, bucket) {
                return Err(DecodeStop::Rejected("a bucket is created twice"));
            }
        }
        Op::DeleteBucket { bucket } => {
            let index = catalog.index_of_id(bucket).ok_or(DecodeStop::Rejected("deletes an unknown bucket"))?;
            let name = catalog.at_mut(index).name.clone();
            catalog.remove(&name);
        }
        Op::Put { .. } | Op::Delete { .. } => unreachable!("not a bucket operation"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A commit waiting for durability that finds `failed` raised but not yet explained — a
    /// roll-over's fdatasync of the segment it sealed failed, and the `poison` that leaves
    /// `SYNC-FAILED` has not run yet — learns of the failure only once the mark is on the disk:
    /// a process that exits on the waiter's error must not leave the log without it (found by
    /// review: the waiter returned at once).
    #[test]
    fn a_waiter_learns_of_a_roll_over_sync_failure_only_after_the_mark() {
        use std::io;
        use std::time::Duration;
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::new(tmp.path());
        config.batch_interval = Duration::from_secs(3600); // no group commit meanwhile
        let db = Backend::open(config).unwrap();
        let mut tx = db.batch_tx();
        tx.create_bucket("b").unwrap();
        tx.finish().unwrap(); // written, not yet durable
        let d = db.durability.clone().unwrap();
        let (written, durable) = d.seqs();
        assert!(written > durable);
        let mark = tmp.path().join(manifest::SYNC_FAILED_NAME);
        // What a roll-over does when the sync of the segment it seals fails, before it returns
        // the error to its transaction, which then poisons the engine.
        d.raise_failed();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let r = d.sync_to(written);
                (r, mark.exists())
            });
            std::thread::sleep(Duration::from_millis(200));
            assert!(!waiter.is_finished(), "the waiter returned before the failure was explained");
            let failure = io::Error::other("injected fdatasync failure");
            d.poison(&Error::io(crate::log::segment::SYNC_CONTEXT, None, failure));
            let (r, marked) = waiter.join().unwrap();
            assert!(matches!(r, Err(Error::Poisoned { .. })), "{r:?}");
            assert!(marked, "SYNC-FAILED was not there when the waiter learned of the failure");
        });
        assert!(db.batch_tx().create_bucket("c").is_err(), "poisoned");
    }

    /// Replay leaves what applying the operations one by one in log order leaves, for runs
    /// long enough to be sorted (into empty buckets and into full ones), with keys that share
    /// their first 8 bytes, keys shorter than 8 bytes that differ only by trailing zeros, and
    /// many operations on the same key (the last one wins).
    #[test]
    fn replay_in_key_order_matches_log_order() {
        let mut keys: Vec<Vec<u8>> =
            vec![b"a".to_vec(), b"a\0".to_vec(), b"a\0\0".to_vec(), b"ab".to_vec(), vec![0], vec![0xff; 8]];
        for i in 0..40u8 {
            keys.push([b"commonpr".as_slice(), &[i % 7, i]].concat());
            keys.push([b"commonpr".as_slice(), &[i % 3]].concat());
            keys.push(vec![i, 0, 0, 0, 0, 0, 0, 0, 1]);
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut model: BTreeMap<(u32, Vec<u8>), ValueRef> = BTreeMap::new();
        let mut catalog = Catalog::default();
        let names: [&[u8]; 2] = [b"one", b"two"];
        let create: Vec<Op<'_>> =
            names.iter().enumerate().map(|(i, &name)| Op::CreateBucket { bucket: i as u32 + 1, name }).collect();
        replay(&mut catalog, &create).expect("create buckets");
        let mut off = 0u32;
        // The first round loads the empty buckets, the large one on two threads (split inside
        // a run of one key's operations: each key has hundreds); the others insert and delete.
        for (round, len) in [REPLAY_SPLIT_FROM * 3, 2000, 2000].into_iter().enumerate() {
            let mut ops = Vec::new();
            for _ in 0..len {
                let bucket = 1 + next(2) as u32;
                let key = keys[next(keys.len())].as_slice();
                // Mostly puts in the first round, which loads the empty buckets.
                if next(10) < if round == 0 { 8 } else { 4 } {
                    off += 1;
                    let value = ValueRef { seg: 0, off, len: 1 };
                    ops.push(Op::Put { bucket, key, value });
                    model.insert((bucket, key.to_vec()), value);
                } else {
                    ops.push(Op::Delete { bucket, key });
                    model.remove(&(bucket, key.to_vec()));
                }
            }
            replay(&mut catalog, &ops).expect("replay");
            // As a list, not a map: a key the tree held twice would show.
            let got: Vec<((u32, Vec<u8>), ValueRef)> =
                catalog.iter().flat_map(|b| b.iter().map(move |(k, v)| ((b.id, k.to_vec()), v))).collect();
            let want: Vec<((u32, Vec<u8>), ValueRef)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
            assert_eq!(got, want, "after round {round}");
            assert_eq!(catalog.iter().map(|b| b.len()).sum::<usize>(), model.len());
        }
    }
}
