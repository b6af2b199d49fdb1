//! A key-value store over the MVCC layer: what libkv's `Store`, dKV's `IStore`, go-micro's
//! `store.Store` and `kvs.Store` offer — get and set with expiry, exists/has, list with prefix,
//! suffix, limit and offset, count, compare-and-swap by revision, namespaces, metadata — with
//! logtree's durability underneath.
//!
//! ```
//! use std::time::Duration;
//! use logtree::kv::{ListOptions, Store};
//!
//! let (store, _dir) = Store::open_temp()?;
//! store.set(b"user/1", b"alice", None)?;
//! store.set(b"session/9", b"token", Some(Duration::from_secs(3600)))?;
//! assert_eq!(store.get(b"user/1")?, Some(b"alice".to_vec()));
//! assert_eq!(store.list(ListOptions { prefix: b"user/".to_vec(), ..Default::default() })?, vec![b"user/1".to_vec()]);
//!
//! // Compare-and-swap on the revision a read returned.
//! let pair = store.get_pair(b"user/1")?.unwrap();
//! store.atomic_put(b"user/1", b"alice v2", Some(&pair))?;
//! assert!(matches!(store.atomic_put(b"user/1", b"lost", Some(&pair)), Err(logtree::Error::KeyModified)));
//!
//! // Namespaces are separate key spaces.
//! let cache = store.namespace("cache");
//! assert_eq!(cache.count(b"")?, 0);
//! store.close()?;
//! assert!(matches!(cache.get(b"x"), Err(logtree::Error::Closed)));
//! # Ok::<(), logtree::Error>(())
//! ```
//!
//! **Storage.** Each key is one MVCC key: its namespace path and the user key (see `keys.rs`,
//! prefix-free so that namespaces cannot reach each other's keys). Each value is an envelope
//! (see `envelope.rs`): deadlines, metadata and the value bytes, so expiry survives a
//! restart. Each write is one MVCC revision; [`KvPair::revision`] is the key's MVCC
//! `mod_revision`, and the compare-and-swap operations are MVCC txns comparing it.
//!
//! **Expiry.** `expires_at` hides the value from `get`, `exists`, `list` and `count` the moment
//! the store's [`Clock`] passes it; `has` stays true (dKV) until `delete_at`, when the key is
//! gone for every call. A sweeper thread then reclaims the space: it deletes keys past
//! `delete_at`, and drops (rewrites as expired, value removed) values past `expires_at`, at
//! most `sweep_batch` keys per MVCC txn. It also compacts the MVCC history now and then, since
//! the kv API only reads the latest revision.
//!
//! **Closing.** [`Store::close`] stops the sweeper, commits what is pending and releases the
//! database; from then on every call on the store, its clones and its namespaces returns
//! [`Error::Closed`]. Dropping the last handle does the same without the error report.

mod clock;
mod envelope;
mod keys;
mod sweep;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender, TryRecvError, select, tick};

use crate::backend::Backend;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::mvcc::{Compare, CompareOp, KeyValue, KvStore, Op, OpResponse, RangeOptions};
use crate::sync::WriterFirstLock;
use crate::{MAX_KEY_LEN, MAX_VALUE_LEN};
pub use clock::{Clock, ManualClock, SystemClock};
use clock::{deadline, from_nanos, to_nanos};
use envelope::Header;
use sweep::Tracker;

/// Bytes the MVCC layer adds to our value when it stores it: format byte, create and mod
/// revision, version, lease (4 × i64) and the key's length (u32). The backend's value limit
/// applies to that whole record, so the user value's limit is smaller by this, the MVCC key
/// and the envelope header.
const MVCC_OVERHEAD: usize = 1 + 4 * 8 + 4;

/// Rows read per MVCC range call while listing: the first page is small so that a `limit`ed
/// list is cheap, later pages double to bound the number of calls (each counts every key to
/// the end of the range), up to `MAX_PAGE` rows and about `PAGE_BYTES` of keys and values.
const FIRST_PAGE: usize = 128;
const MAX_PAGE: usize = 64 << 10;
const PAGE_BYTES: usize = 8 << 20;

/// A key with its value and what the store knows about it.
///
/// ```
/// let (store, _dir) = logtree::kv::Store::open_temp()?;
/// store.set(b"k", b"v", None)?;
/// let pair = store.get_pair(b"k")?.unwrap();
/// assert_eq!((pair.key.as_slice(), pair.value.as_slice()), (&b"k"[..], &b"v"[..]));
/// assert!(pair.revision > 0 && pair.expires_at.is_none() && pair.metadata.is_empty());
/// # Ok::<(), logtree::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvPair {
    /// The key, as given (without the namespace).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the write that produced this value (the MVCC `mod_revision`): what
    /// [`Store::atomic_put`] and [`Store::atomic_delete`] compare. Rises with every write.
    pub revision: i64,
    /// When the value stops being visible (the earlier of `expire_in` and `delete_in`), if ever.
    pub expires_at: Option<SystemTime>,
    /// Metadata stored with the value (go-micro's `Record.Metadata`).
    pub metadata: BTreeMap<String, String>,
}

/// Options of [`Store::set_with`].
///
/// ```
/// use std::time::Duration;
/// use logtree::kv::SetOptions;
///
/// let opts = SetOptions { expire_in: Some(Duration::from_secs(60)), if_absent: true, ..Default::default() };
/// # let _ = opts;
/// ```
#[derive(Clone, Debug, Default)]
pub struct SetOptions {
    /// The value stops being visible (`get`, `exists`, `list`, `count`) after this long; the
    /// key still exists for `has` until `delete_in` (dKV's `expireIn`). `None` or zero: never.
    pub expire_in: Option<Duration>,
    /// The key is deleted after this long (dKV's `deleteIn`). `None` or zero: never.
    pub delete_in: Option<Duration>,
    /// Metadata stored with the value and returned in [`KvPair::metadata`].
    pub metadata: BTreeMap<String, String>,
    /// Write only if the key does not exist — in the sense of [`Store::has`], so a key whose
    /// value expired but which is not deleted yet is kept (dKV's `SetEIfUnset`).
    pub if_absent: bool,
}

/// Options of [`Store::list`] (go-micro's `ListOptions`/`ReadOptions`). All apply together:
/// keys starting with `prefix` and ending with `suffix`, ascending, skipping `offset` of them,
/// at most `limit` (0: all).
///
/// ```
/// use logtree::kv::ListOptions;
/// let opts = ListOptions { prefix: b"user/".to_vec(), limit: 10, ..Default::default() };
/// # let _ = opts;
/// ```
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Only keys starting with this (empty: all keys of the namespace).
    pub prefix: Vec<u8>,
    /// Only keys ending with this.
    pub suffix: Vec<u8>,
    /// At most this many keys; 0 for no limit.
    pub limit: usize,
    /// Skip this many matching keys first.
    pub offset: usize,
}

/// Figures about a store (dKV's `GetDBInfo`). The counts are of the namespace asked; the
/// rest are of the whole database. Taken by a scan: O(keys in the namespace).
///
/// ```
/// let (store, _dir) = logtree::kv::Store::open_temp()?;
/// store.namespace("a").set(b"k", b"v", None)?;
/// let root = store.info()?;
/// assert_eq!((root.keys, root.total_keys), (0, 1));
/// assert_eq!(store.namespace("a").info()?.keys, 1);
/// # Ok::<(), logtree::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbInfo {
    /// Keys of this namespace that `get` returns (present and not expired).
    pub keys: usize,
    /// Keys of this namespace that exist (`has`) but whose value has expired.
    pub expired_keys: usize,
    /// Bytes of the visible values of this namespace.
    pub value_bytes: u64,
    /// Keys stored in the whole database, every namespace, including those past `delete_at`
    /// that the sweeper has not removed yet.
    pub total_keys: usize,
    /// The database's current revision: the revision of the last write.
    pub revision: i64,
    /// The revision up to which the MVCC history has been compacted.
    pub compacted_revision: i64,
    /// Bytes of live records in the log (what a defrag would keep).
    pub bytes_live: u64,
    /// Bytes of the log on disk.
    pub bytes_on_disk: u64,
    /// Number of log segments.
    pub segments: usize,
    /// Approximate bytes of memory of the backend's index.
    pub index_bytes: u64,
    /// Keys in the sweeper's schedule.
    pub scheduled: usize,
    /// The sweeper's next scheduled time, if any.
    pub next_sweep_at: Option<SystemTime>,
    /// The database directory.
    pub path: PathBuf,
}

/// Settings of [`Store::open_with`] beyond the backend's [`Config`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use logtree::kv::{ManualClock, Options, Store};
///
/// let dir = tempfile::tempdir()?;
/// let clock = Arc::new(ManualClock::default());
/// let opts = Options { clock: clock.clone(), sweep_interval: Duration::ZERO, ..Options::default() };
/// let store = Store::open_with(logtree::Config::new(dir.path()), opts)?;
/// store.set(b"k", b"v", Some(Duration::from_secs(10)))?;
/// clock.advance(Duration::from_secs(10));
/// assert_eq!(store.get(b"k")?, None);
/// assert_eq!(store.sweep()?, 1); // removed now, not by the (disabled) sweeper thread
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the time comes from (default: [`SystemClock`]).
    pub clock: Arc<dyn Clock>,
    /// How often the sweeper thread looks for due deadlines (default 1 s). `Duration::ZERO`
    /// starts no thread; [`Store::sweep`] then does the work when called.
    pub sweep_interval: Duration,
    /// Keys handled per MVCC txn by a sweep (default 1,000; at least 1), so that writers never
    /// wait long behind one.
    pub sweep_batch: usize,
    /// The sweeper compacts the MVCC history (the kv API reads only the latest revision)
    /// when it holds at least this many garbage records — overwritten values, tombstones,
    /// dropped values — and at least half as many as there are live keys (default 10,000).
    /// It counts them at most once per that many revisions. 0: never.
    pub compact_after: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            clock: Arc::new(SystemClock),
            sweep_interval: Duration::from_secs(1),
            sweep_batch: 1000,
            compact_after: 10_000,
        }
    }
}

/// The key-value store. `Send + Sync` and cheap to clone (clones share one database); see the
/// [module documentation](self).
///
/// ```
/// let (store, _dir) = logtree::kv::Store::open_temp()?;
/// let other = store.clone();
/// std::thread::spawn(move || other.set(b"k", b"v", None)).join().unwrap()?;
/// assert!(store.exists(b"k")?);
/// # Ok::<(), logtree::Error>(())
/// ```
#[derive(Clone)]
pub struct Store {
    handle: Arc<Handle>,
    /// The MVCC key prefix of this namespace (see `keys.rs`).
    prefix: Arc<[u8]>,
    /// The namespace path, for `Debug`.
    names: Arc<[String]>,
}

/// Owned by the `Store` clones (not by the sweeper thread): when the last clone goes, the
/// sweeper is stopped and joined, and then the database is dropped with `Shared`.
struct Handle {
    shared: Arc<Shared>,
    sweeper: Mutex<Option<SweeperThread>>,
}

struct SweeperThread {
    /// Never sent on: dropping it disconnects the channel, which stops the thread.
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

/// What the store's handles and the sweeper thread share.
struct Shared {
    /// `None` once closed. Every call holds the read side while it works, so `close` (the
    /// write side) waits for calls in flight and then drops the database — and only for
    /// those: a writer-first lock, so calls from busy threads cannot keep it out.
    kv: WriterFirstLock<Option<KvStore>>,
    clock: Arc<dyn Clock>,
    tracker: Mutex<Tracker>,
    sweep_batch: usize,
    compact_after: u64,
    /// The revision at which `maybe_compact` next counts the garbage.
    compact_next: AtomicI64,
    path: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stored record: the MVCC key-value and its parsed envelope header.
struct Record {
    kv: KeyValue,
    h: Header,
}

fn read(kv: &KvStore, mkey: &[u8]) -> Result<Option<Record>> {
    let r = kv.range(mkey, b"", RangeOptions::default())?;
    match r.kvs.into_iter().next() {
        None => Ok(None),
        Some(kv) => {
            let h = Header::parse(&kv.value)?;
            Ok(Some(Record { kv, h }))
        }
    }
}

fn into_pair(key: Vec<u8>, rec: Record) -> Result<KvPair> {
    let metadata = envelope::metadata(&rec.kv.value, &rec.h)?;
    let mut value = rec.kv.value;
    value.drain(..rec.h.value_at);
    Ok(KvPair {
        key,
        value,
        revision: rec.kv.mod_revision,
        expires_at: rec.h.visible_until().map(from_nanos),
        metadata,
    })
}

/// Calls `f` with every MVCC key-value in `[start, end)`, ascending, until it returns false.
/// Reads in pages (so memory stays bounded), all at the revision of the first page so that the
/// walk is one consistent state — unless a compaction passes that revision meanwhile, in which
/// case the walk goes on from where it was at the current revision. `first_page` is how many
/// rows the caller expects to need (0: unknown); pages double from there, since each MVCC
/// range call counts every key to the end of the range however few it returns.
fn scan(
    kv: &KvStore,
    start: &[u8],
    end: &[u8],
    first_page: usize,
    mut f: impl FnMut(KeyValue) -> Result<bool>,
) -> Result<()> {
    let mut from = start.to_vec();
    let mut rev = 0;
    let mut page = if first_page == 0 { FIRST_PAGE } else { first_page.min(MAX_PAGE) };
    loop {
        let r = match kv.range(&from, end, RangeOptions { rev, limit: page, ..Default::default() }) {
            Err(Error::Compacted { .. }) if rev != 0 => {
                rev = 0;
                continue;
            }
            r => r?,
        };
        // The first page was read at the current revision, which `r.rev` is; the others are
        // read at it too. (`r.rev` of a later page is the store's current revision then, not the
        // one read at: taking it would move the walk forward page by page.)
        if rev == 0 {
            rev = r.rev;
        }
        let more = r.count > r.kvs.len();
        let Some(last) = r.kvs.last().map(|kv| kv.key.clone()) else { return Ok(()) };
        let bytes: usize = r.kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
        let per_row = (bytes / r.kvs.len()).max(1);
        for kv in r.kvs {
            if !f(kv)? {
                return Ok(());
            }
        }
        if !more {
            return Ok(());
        }
        from = last;
        from.push(0); // the least key after `last`
        page = (page * 2).min(MAX_PAGE).min((PAGE_BYTES / per_row).max(1));
    }
}

impl Shared {
    fn now(&self) -> u64 {
        to_nanos(self.clock.now())
    }

    fn read_kv(&self) -> RwLockReadGuard<'_, Option<KvStore>> {
        self.kv.read()
    }

    fn schedule(&self, mkey: &[u8], h_next: Option<u64>) {
        if let Some(at) = h_next {
            lock(&self.tracker).note(mkey, at);
        }
    }

    /// Sweeps until nothing is due, a batch at a time; returns how many keys were deleted or
    /// had their value dropped.
    fn sweep(&self, should_stop: &dyn Fn() -> bool) -> Result<usize> {
        let mut total = 0;
        loop {
            if should_stop() {
                return Ok(total);
            }
            // The read lock per batch, not per sweep, so that `close` waits at most one batch.
            let guard = self.read_kv();
            let kv = guard.as_ref().ok_or(Error::Closed)?;
            let now = self.now();
            let due = lock(&self.tracker).pop_due(now, self.sweep_batch);
            if due.is_empty() {
                return Ok(total);
            }
            let popped = due.len();
            let keep = due.clone();
            match sweep::sweep_keys(kv, due, now) {
                Ok(out) => {
                    let mut t = lock(&self.tracker);
                    for (k, at) in &out.reschedule {
                        t.note(k, *at);
                    }
                    total += out.deleted + out.expired;
                }
                Err(e) => {
                    // Nothing may fall out of the schedule: look at these again next time.
                    let mut t = lock(&self.tracker);
                    for k in &keep {
                        t.note(k, now);
                    }
                    return Err(e);
                }
            }
            if popped < self.sweep_batch {
                return Ok(total);
            }
        }
    }

    /// Compacts the MVCC history to the current revision when it holds enough garbage (see
    /// [`Options::compact_after`]); true if it did.
    fn maybe_compact(&self) -> Result<bool> {
        if self.compact_after == 0 {
            return Ok(false);
        }
        let guard = self.read_kv();
        let kv = guard.as_ref().ok_or(Error::Closed)?;
        let current = kv.current_revision();
        let after = i64::try_from(self.compact_after).unwrap_or(i64::MAX);
        let next = self.compact_next.load(Ordering::Relaxed).max(kv.compacted_revision().saturating_add(after));
        if current < next {
            return Ok(false);
        }
        // Garbage: stored records that are not the latest value of a live key (older values,
        // tombstones, dropped values). Compacting only once it reaches half the live keys
        // keeps compaction's O(records) work at O(1) per write, and a store that only inserts
        // never pays for it. Both counts are kept (the key index's live count, each bucket's
        // length), so a look is cheap; the next is as many revisions away as the garbage
        // needed to reach the threshold from zero, since it grows by about a record a write.
        let rtx = kv.backend().read_tx();
        let records: usize = rtx.buckets().iter().map(|b| rtx.bucket_len(b).unwrap_or(0)).sum();
        drop(rtx);
        let live = kv.range(b"", &[0], RangeOptions { count_only: true, ..Default::default() })?.count;
        let threshold = self.compact_after.max(live as u64 / 2);
        self.compact_next
            .store(current.saturating_add(i64::try_from(threshold).unwrap_or(i64::MAX)), Ordering::Relaxed);
        if (records.saturating_sub(live) as u64) < threshold {
            return Ok(false);
        }
        match kv.compact(current) {
            Ok(()) => Ok(true),
            Err(Error::Compacted { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn sweeper_loop(self: Arc<Self>, stop: Receiver<()>, interval: Duration) {
        let ticker = tick(interval);
        let should_stop = || matches!(stop.try_recv(), Err(TryRecvError::Disconnected));
        loop {
            select! {
                recv(stop) -> _ => return,
                recv(ticker) -> _ => {}
            }
            // Failures (a poisoned engine, a closed store) are retried next tick; the schedule
            // keeps the keys, and reads never depend on the sweeper.
            let _ = self.sweep(&should_stop);
            if !should_stop() {
                let _ = self.maybe_compact();
            }
        }
    }
}

impl Handle {
    fn stop_sweeper(&self) {
        let s = lock(&self.sweeper).take();
        if let Some(s) = s {
            drop(s.stop);
            let _ = s.thread.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop_sweeper();
    }
}

impl Store {
    /// Opens (or creates) the store in `config.path` with default [`Options`]: the system
    /// clock and a sweeper every second.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = logtree::kv::Store::open(logtree::Config::new(dir.path()))?;
    /// store.set(b"k", b"v", None)?;
    /// store.close()?;
    /// let store = logtree::kv::Store::open(logtree::Config::new(dir.path()))?;
    /// assert_eq!(store.get(b"k")?, Some(b"v".to_vec()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(config: Config) -> Result<Store> {
        Store::open_with(config, Options::default())
    }

    /// Opens a new store with default settings in a new temporary directory, removed when the
    /// returned `TempDir` is dropped.
    ///
    /// ```
    /// let (store, dir) = logtree::kv::Store::open_temp()?;
    /// assert!(store.info()?.path.starts_with(dir.path()));
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn open_temp() -> Result<(Store, tempfile::TempDir)> {
        let dir = tempfile::Builder::new()
            .prefix("logtree-kv-")
            .tempdir()
            .map_err(|e| Error::io("create temporary directory", None, e))?;
        let store = Store::open(Config::new(dir.path()))?;
        Ok((store, dir))
    }

    /// Opens the store with the time taken from `clock` (tests pass a [`ManualClock`]).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use logtree::kv::{ManualClock, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let clock = Arc::new(ManualClock::default());
    /// let store = Store::open_with_clock(logtree::Config::new(dir.path()), clock.clone())?;
    /// store.set(b"k", b"v", Some(Duration::from_secs(1)))?;
    /// assert!(store.exists(b"k")?);
    /// clock.advance(Duration::from_secs(1));
    /// assert!(!store.exists(b"k")?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Store> {
        Store::open_with(config, Options { clock, ..Options::default() })
    }

    /// Opens the store with explicit [`Options`]. Recovers the backend and the MVCC index, then
    /// rebuilds the sweeper's schedule from the stored deadlines (one scan of every key).
    ///
    /// ```
    /// use std::time::Duration;
    /// use logtree::kv::{Options, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let opts = Options { sweep_interval: Duration::from_millis(100), sweep_batch: 500, ..Options::default() };
    /// let store = Store::open_with(logtree::Config::new(dir.path()), opts)?;
    /// store.set(b"k", b"v", Some(Duration::from_secs(1)))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_with(config: Config, options: Options) -> Result<Store> {
        if options.sweep_batch == 0 {
            return Err(Error::InvalidConfig("sweep_batch must be at least 1".into()));
        }
        let read_only = config.read_only;
        let path = config.path.clone();
        let kv = KvStore::open(Arc::new(Backend::open(config)?))?;
        let mut tracker = Tracker::default();
        scan(&kv, b"", &[0], 0, |rec| {
            if let Some(at) = Header::parse(&rec.value)?.next_action() {
                tracker.note(&rec.key, at);
            }
            Ok(true)
        })?;
        let shared = Arc::new(Shared {
            kv: WriterFirstLock::new(Some(kv)),
            clock: options.clock,
            tracker: Mutex::new(tracker),
            sweep_batch: options.sweep_batch,
            compact_after: options.compact_after,
            compact_next: AtomicI64::new(0),
            path,
        });
        let mut sweeper = None;
        if !read_only && !options.sweep_interval.is_zero() {
            let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
            let s = shared.clone();
            let interval = options.sweep_interval;
            let thread = std::thread::Builder::new()
                .name("logtree-kv-sweep".into())
                .spawn(move || s.sweeper_loop(stop_rx, interval))
                .map_err(|e| Error::io("start the kv sweeper", None, e))?;
            sweeper = Some(SweeperThread { stop, thread });
        }
        Ok(Store {
            handle: Arc::new(Handle { shared, sweeper: Mutex::new(sweeper) }),
            prefix: keys::root_prefix().into(),
            names: Arc::new([]),
        })
    }

    /// A view of the key space `name` inside this one: its keys, lists, counts and deletes
    /// never see another namespace's (or the parent's) keys, whatever bytes the names hold.
    /// Nesting gives deeper levels (go-micro's database and table). Shares the database,
    /// sweeper and closed state with `self`. The namespace path counts against the key length
    /// limit.
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// let users = store.namespace("app").namespace("users");
    /// users.set(b"1", b"alice", None)?;
    /// assert_eq!(store.get(b"1")?, None);
    /// assert_eq!(store.namespace("app").count(b"")?, 0);
    /// assert_eq!(users.count(b"")?, 1);
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn namespace(&self, name: &str) -> Store {
        let mut names = self.names.to_vec();
        names.push(name.to_string());
        Store {
            handle: self.handle.clone(),
            prefix: keys::child_prefix(&self.prefix, name.as_bytes()).into(),
            names: names.into(),
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Runs `f` on the open MVCC store, or returns `Error::Closed`.
    fn with<T>(&self, f: impl FnOnce(&KvStore) -> Result<T>) -> Result<T> {
        let guard = self.shared().read_kv();
        match guard.as_ref() {
            Some(kv) => f(kv),
            None => Err(Error::Closed),
        }
    }

    /// The longest user key this namespace takes.
    fn max_key_len(&self) -> usize {
        MAX_KEY_LEN.saturating_sub(self.prefix.len())
    }

    /// The MVCC key of `key`, after checking it.
    fn mkey(&self, key: &[u8]) -> Result<Vec<u8>> {
        self.check_key(key)?;
        Ok(keys::join(&self.prefix, key))
    }

    /// Refuses an empty key or one too long for this namespace.
    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let max = self.max_key_len();
        if key.len() > max {
            return Err(Error::KeyTooLarge { len: key.len(), max });
        }
        Ok(())
    }

    /// Looks `key` up and, if it is stored (expired or not), calls `f` with its stored value
    /// (envelope and user value, lent from the log) and parsed envelope header; a missing key
    /// gives `T::default()`. The read path of `get`, `exists` and `has`: it copies nothing but
    /// what `f` does, and builds the MVCC key on the stack when it is short.
    fn peek<T: Default>(&self, key: &[u8], f: impl FnOnce(&[u8], &Header) -> Result<T>) -> Result<T> {
        const STACK_KEY: usize = 128;
        self.with(|kv| {
            self.check_key(key)?;
            let read = |mkey: &[u8]| -> Result<T> {
                kv.get_with(mkey, |rec| match rec {
                    Some(rec) => f(rec.value, &Header::parse(rec.value)?),
                    None => Ok(T::default()),
                })?
            };
            let len = self.prefix.len() + key.len();
            if len <= STACK_KEY {
                let mut buf = [0u8; STACK_KEY];
                buf[..self.prefix.len()].copy_from_slice(&self.prefix);
                buf[self.prefix.len()..len].copy_from_slice(key);
                read(&buf[..len])
            } else {
                read(&keys::join(&self.prefix, key))
            }
        })
    }

    /// Checks that the MVCC record for this value stays within the backend's value limit.
    fn check_value(mkey: &[u8], value: &[u8], header: usize) -> Result<()> {
        let max = MAX_VALUE_LEN.saturating_sub(MVCC_OVERHEAD + mkey.len() + header);
        if value.len() > max {
            return Err(Error::ValueTooLarge { len: value.len(), max });
        }
        Ok(())
    }

    /// The value of `key`, or `None` if it is missing or expired (kvs `Get`, go-micro `Read`,
    /// dKV `Get`).
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// assert_eq!(store.get(b"k")?, None);
    /// store.set(b"k", b"v", None)?;
    /// assert_eq!(store.get(b"k")?, Some(b"v".to_vec()));
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.peek(key, |stored, h| Ok(h.visible(|| self.shared().now()).then(|| stored[h.value_at..].to_vec())))
    }

    /// The key with its value, revision, expiry and metadata, or `None` if it is missing or
    /// expired. The pair is what [`atomic_put`](Self::atomic_put) and
    /// [`atomic_delete`](Self::atomic_delete) take as `previous`.
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// store.set(b"k", b"v", None)?;
    /// let p = store.get_pair(b"k")?.unwrap();
    /// store.set(b"k", b"w", None)?;
    /// assert!(store.get_pair(b"k")?.unwrap().revision > p.revision);
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn get_pair(&self, key: &[u8]) -> Result<Option<KvPair>> {
        self.with(|kv| {
            let mkey = self.mkey(key)?;
            match read(kv, &mkey)? {
                Some(rec) if rec.h.visible(|| self.shared().now()) => into_pair(key.to_vec(), rec).map(Some),
                _ => Ok(None),
            }
        })
    }

    /// Sets `key` to `value`; with a `ttl`, the key disappears after it — hidden at once from
    /// every call (`has` too) and removed by the sweeper (kvs `Set`, go-micro `Write` with
    /// `Expiry`). A zero `ttl` means no expiry, as in kvs. Visible at once, durable with the
    /// next group commit (see [`force_commit`](Self::force_commit)).
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// store.set(b"k", b"v", Some(std::time::Duration::from_secs(60)))?;
    /// assert!(store.get_pair(b"k")?.unwrap().expires_at.is_some());
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let ttl = ttl.filter(|d| !d.is_zero());
        let opts = SetOptions { expire_in: ttl, delete_in: ttl, ..SetOptions::default() };
        self.set_with(key, value, opts).map(|_| ())
    }

    /// Sets `key` with dKV's and go-micro's options: separate expiry (value hidden, `has`
    /// still true) and deletion deadlines, metadata, and write-only-if-absent. Returns whether
    /// it wrote (false only with `if_absent` when the key exists).
    ///
    /// ```
    /// use std::time::Duration;
    /// use logtree::kv::SetOptions;
    ///
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// let opts = SetOptions { expire_in: Some(Duration::from_secs(5)), if_absent: true, ..Default::default() };
    /// assert!(store.set_with(b"k", b"first", opts.clone())?);
    /// assert!(!store.set_with(b"k", b"second", opts)?);
    /// assert_eq!(store.get(b"k")?, Some(b"first".to_vec()));
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn set_with(&self, key: &[u8], value: &[u8], opts: SetOptions) -> Result<bool> {
        self.with(|kv| {
            let mkey = self.mkey(key)?;
            let (expire_in, delete_in) =
                (opts.expire_in.filter(|d| !d.is_zero()), opts.delete_in.filter(|d| !d.is_zero()));
            // Both deadlines from one reading of the clock, and none without a deadline.
            let now = if expire_in.is_some() || delete_in.is_some() { self.shared().now() } else { 0 };
            let expires_at = expire_in.map(|d| deadline(now, d));
            let delete_at = delete_in.map(|d| deadline(now, d));
            Store::check_value(&mkey, value, envelope::header_len(expires_at, delete_at, &opts.metadata))?;
            let env = envelope::encode(value, expires_at, delete_at, false, &opts.metadata);
            let next = Header { expires_at, delete_at, ..Header::default() }.next_action();
            if !opts.if_absent {
                kv.put(&mkey, &env, 0)?;
                self.shared().schedule(&mkey, next);
                return Ok(true);
            }
            loop {
                let cmp = match read(kv, &mkey)? {
                    None => Compare::version(&mkey, CompareOp::Equal, 0),
                    Some(rec) if rec.h.present(|| self.shared().now()) => return Ok(false),
                    // Stored but past its delete_at: absent, so replace exactly that record.
                    Some(rec) => Compare::mod_revision(&mkey, CompareOp::Equal, rec.kv.mod_revision),
                };
                if kv.txn(&[cmp], &[Op::put(&mkey, &env, 0)], &[])?.succeeded {
                    self.shared().schedule(&mkey, next);
                    return Ok(true);
                }
            }
        })
    }

    /// Expires the value of `key` now: `get`, `exists`, `list` and `count` no longer see it,
    /// `has` still does until the key is deleted (dKV `Expire`). The value's bytes are dropped;
    /// metadata and the deletion deadline are kept. No error if the key is missing.
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// store.set(b"k", b"v", None)?;
    /// store.expire(b"k")?;
    /// assert_eq!(store.get(b"k")?, None);
    /// assert!(store.has(b"k")? && !store.exists(b"k")?);
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn expire(&self, key: &[u8]) -> Result<()> {
        self.with(|kv| {
            let mkey = self.mkey(key)?;
            loop {
                let now = self.shared().now();
                let Some(rec) = read(kv, &mkey)? else { return Ok(()) };
                if !rec.h.present(|| now) || rec.h.expired {
                    return Ok(());
                }
                let at = Some(rec.h.expires_at.map_or(now, |t| t.min(now)));
                let env = envelope::expired_copy(&rec.kv.value, &rec.h, at);
                let cmp = Compare::mod_revision(&mkey, CompareOp::Equal, rec.kv.mod_revision);
                if kv.txn(&[cmp], &[Op::put(&mkey, &env, 0)], &[])?.succeeded {
                    self.shared().schedule(&mkey, rec.h.delete_at);
                    return Ok(());
                }
            }
        })
    }

    /// Deletes `key`; no error if it is missing (kvs, go-micro, libkv and dKV `Delete`).
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// store.set(b"k", b"v", None)?;
    /// store.delete(b"k")?;
    /// store.delete(b"k")?;
    /// assert!(!store.has(b"k")?);
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.with(|kv| {
            let mkey = self.mkey(key)?;
            kv.delete_range(&mkey, b"").map(|_| ())
        })
    }

    /// Whether `key` is present and not expired (kvs `Exists`, libkv `Exists`).
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// assert!(!store.exists(b"k")?);
    /// store.set(b"k", b"", None)?;
    /// assert!(store.exists(b"k")?);
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn exists(&self, key: &[u8]) -> Result<bool> {
        self.peek(key, |_, h| Ok(h.visible(|| self.shared().now())))
    }

    /// Whether `key` is present, expired or not, until it is deleted (dKV `Has`).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use logtree::kv::{ManualClock, SetOptions, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let clock = Arc::new(ManualClock::default());
    /// let store = Store::open_with_clock(logtree::Config::new(dir.path()), clock.clone())?;
    /// let opts = SetOptions {
    ///     expire_in: Some(Duration::from_secs(1)),
    ///     delete_in: Some(Duration::from_secs(2)),
    ///     ..Default::default()
    /// };
    /// store.set_with(b"k", b"v", opts)?;
    /// clock.advance(Duration::from_secs(1));
    /// assert!(store.has(b"k")? && !store.exists(b"k")?); // expired, not deleted
    /// clock.advance(Duration::from_secs(1));
    /// assert!(!store.has(b"k")?); // deleted
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn has(&self, key: &[u8]) -> Result<bool> {
        self.peek(key, |_, h| Ok(h.present(|| self.shared().now())))
    }

    /// Walks the visible keys of this namespace that `opts` selects, ascending, calling `f`
    /// with each key (without the namespace) and its record.
    fn select(&self, kv: &KvStore, opts: &ListOptions, mut f: impl FnMut(Vec<u8>, Record) -> Result<()>) -> Result<()> {
        let start = keys::join(&self.prefix, &opts.prefix);
        let end = keys::prefix_end(&start).unwrap_or_else(|| vec![0]);
        let now = self.shared().now();
        let plen = self.prefix.len();
        let (mut skipped, mut taken) = (0usize, 0usize);
        // With no suffix to filter on, a limited list needs about offset + limit rows.
        let hint = if opts.limit > 0 && opts.suffix.is_empty() { opts.offset.saturating_add(opts.limit) } else { 0 };
        scan(kv, &start, &end, hint, |rec| {
            if !rec.key[plen..].ends_with(&opts.suffix) {
                return Ok(true);
            }
            let h = Header::parse(&rec.value)?;
            if !h.visible(|| now) {
                return Ok(true);
            }
            if skipped < opts.offset {
                skipped += 1;
                return Ok(true);
            }
            let key = rec.key[plen..].to_vec();
            f(key, Record { kv: rec, h })?;
            taken += 1;
            Ok(opts.limit == 0 || taken < opts.limit)
        })
    }

    /// The visible keys selected by `opts` — prefix, suffix, offset and limit together —
    /// ascending (kvs `List`, go-micro `List`). An empty prefix lists the whole namespace.
    ///
    /// ```
    /// use logtree::kv::ListOptions;
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// for k in ["a/1.txt", "a/2.bin", "a/3.txt", "b/4.txt"] {
    ///     store.set(k.as_bytes(), b"", None)?;
    /// }
    /// let opts = ListOptions { prefix: b"a/".to_vec(), suffix: b".txt".to_vec(), limit: 1, offset: 1 };
    /// assert_eq!(store.list(opts)?, vec![b"a/3.txt".to_vec()]);
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn list(&self, opts: ListOptions) -> Result<Vec<Vec<u8>>> {
        self.with(|kv| {
            let mut out = Vec::new();
            self.select(kv, &opts, |k, _| {
                out.push(k);
                Ok(())
            })?;
            Ok(out)
        })
    }

    /// The visible pairs whose keys start with `prefix`, ascending (libkv `List`, go-micro
    /// `Read` with the prefix option).
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// store.set(b"dir/a", b"1", None)?;
    /// store.set(b"dir/b", b"2", None)?;
    /// let pairs = store.list_pairs(b"dir/")?;
    /// assert_eq!(pairs.iter().map(|p| p.value.clone()).collect::<Vec<_>>(), vec![b"1".to_vec(), b"2".to_vec()]);
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn list_pairs(&self, prefix: &[u8]) -> Result<Vec<KvPair>> {
        self.list_pairs_with(ListOptions { prefix: prefix.to_vec(), ..ListOptions::default() })
    }

    /// The visible pairs selected by `opts`, ascending (go-micro `Read` with prefix, suffix,
    /// limit and offset).
    ///
    /// ```
    /// use logtree::kv::ListOptions;
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// store.set(b"x.json", b"{}", None)?;
    /// store.set(b"y.txt", b"", None)?;
    /// let pairs = store.list_pairs_with(ListOptions { suffix: b".json".to_vec(), ..Default::default() })?;
    /// assert_eq!(pairs[0].key, b"x.json");
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn list_pairs_with(&self, opts: ListOptions) -> Result<Vec<KvPair>> {
        self.with(|kv| {
            let mut out = Vec::new();
            self.select(kv, &opts, |k, rec| {
                out.push(into_pair(k, rec)?);
                Ok(())
            })?;
            Ok(out)
        })
    }

    /// How many visible keys start with `prefix` (kvs `Count`; empty: the whole namespace).
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// store.set(b"a1", b"", None)?;
    /// store.set(b"a2", b"", None)?;
    /// store.set(b"b1", b"", None)?;
    /// assert_eq!((store.count(b"a")?, store.count(b"")?), (2, 3));
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn count(&self, prefix: &[u8]) -> Result<usize> {
        self.with(|kv| {
            let mut n = 0;
            let opts = ListOptions { prefix: prefix.to_vec(), ..ListOptions::default() };
            self.select(kv, &opts, |_, _| {
                n += 1;
                Ok(())
            })?;
            Ok(n)
        })
    }

    /// Compare-and-swap, as libkv's `AtomicPut`. With `previous = None` it creates the key
    /// only if it is absent (missing or expired), else [`Error::KeyExists`]. With
    /// `Some(p)` it writes only if the key's revision is still `p.revision`:
    /// [`Error::KeyModified`] if it changed, [`Error::KeyNotFound`] if the key is gone or
    /// expired. `p.key` must be `key` ([`Error::InvalidArgument`] otherwise). The compare and
    /// the write are one MVCC txn. The new value has no expiry or metadata. Returns the new
    /// pair, whose revision the next CAS needs.
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// let p1 = store.atomic_put(b"lock", b"me", None)?;
    /// assert!(matches!(store.atomic_put(b"lock", b"you", None), Err(logtree::Error::KeyExists)));
    /// let p2 = store.atomic_put(b"lock", b"me again", Some(&p1))?;
    /// assert!(p2.revision > p1.revision);
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn atomic_put(&self, key: &[u8], value: &[u8], previous: Option<&KvPair>) -> Result<KvPair> {
        self.with(|kv| {
            let mkey = self.mkey(key)?;
            if let Some(p) = previous {
                self.check_previous(key, p)?;
            }
            let meta = BTreeMap::new();
            Store::check_value(&mkey, value, envelope::header_len(None, None, &meta))?;
            let env = envelope::encode(value, None, None, false, &meta);
            let revision = self.cas(kv, &mkey, previous, Op::put(&mkey, &env, 0))?;
            Ok(KvPair { key: key.to_vec(), value: value.to_vec(), revision, expires_at: None, metadata: meta })
        })
    }

    /// Deletes `key` only if its revision is still `previous.revision` (libkv
    /// `AtomicDelete`): [`Error::KeyModified`] if it changed, [`Error::KeyNotFound`] if it is
    /// gone or expired, [`Error::InvalidArgument`] if `previous` is another key's.
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// let p = store.atomic_put(b"k", b"v", None)?;
    /// store.atomic_delete(b"k", &p)?;
    /// assert!(matches!(store.atomic_delete(b"k", &p), Err(logtree::Error::KeyNotFound)));
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn atomic_delete(&self, key: &[u8], previous: &KvPair) -> Result<()> {
        self.with(|kv| {
            let mkey = self.mkey(key)?;
            self.check_previous(key, previous)?;
            self.cas(kv, &mkey, Some(previous), Op::delete_range(&mkey, b"")).map(|_| ())
        })
    }

    /// Applies `op` to `mkey` as libkv's CAS: if the key is absent (`previous` None) or still
    /// at `previous.revision`. Returns the revision written.
    ///
    /// The first attempt is one txn that assumes the common case — compare the version with 0
    /// for a create, the revision with the pair's for an update — so a CAS costs one MVCC txn
    /// and no extra read. Its failure branch reads the key in the same txn, which tells
    /// exactly what was there: the error to return, or (a create over an expired record that
    /// the sweeper has not removed) the compare to retry with.
    fn cas(&self, kv: &KvStore, mkey: &[u8], previous: Option<&KvPair>, op: Op) -> Result<i64> {
        let now = || self.shared().now();
        let mut cmp = match previous {
            None => Compare::version(mkey, CompareOp::Equal, 0),
            // A revision names one stored record, which never changes: if the pair (read from
            // this store) says it is visible until later, it is.
            Some(p) if p.expires_at.is_none_or(|t| to_nanos(t) > now()) => {
                Compare::mod_revision(mkey, CompareOp::Equal, p.revision)
            }
            Some(_) => Store::cas_compare(mkey, previous, read(kv, mkey)?, now())?,
        };
        let look = [Op::range(mkey, b"", RangeOptions::default())];
        loop {
            let r = kv.txn(std::slice::from_ref(&cmp), std::slice::from_ref(&op), &look)?;
            if r.succeeded {
                return Ok(r.revision);
            }
            let cur = match r.responses.into_iter().next() {
                Some(OpResponse::Range(rr)) => match rr.kvs.into_iter().next() {
                    Some(kv) => Some(Record { h: Header::parse(&kv.value)?, kv }),
                    None => None,
                },
                _ => None,
            };
            cmp = Store::cas_compare(mkey, previous, cur, now())?;
        }
    }

    /// The compare under which a CAS may proceed, given the key's current record `cur`, or
    /// the libkv error that it may not.
    fn cas_compare(mkey: &[u8], previous: Option<&KvPair>, cur: Option<Record>, now: u64) -> Result<Compare> {
        match (previous, cur) {
            (None, None) => Ok(Compare::version(mkey, CompareOp::Equal, 0)),
            (None, Some(rec)) if rec.h.visible(|| now) => Err(Error::KeyExists),
            // Expired: absent for a create, which replaces exactly that record.
            (None, Some(rec)) => Ok(Compare::mod_revision(mkey, CompareOp::Equal, rec.kv.mod_revision)),
            (Some(_), None) => Err(Error::KeyNotFound),
            (Some(_), Some(rec)) if !rec.h.visible(|| now) => Err(Error::KeyNotFound),
            (Some(p), Some(rec)) if rec.kv.mod_revision != p.revision => Err(Error::KeyModified),
            (Some(p), Some(_)) => Ok(Compare::mod_revision(mkey, CompareOp::Equal, p.revision)),
        }
    }

    fn check_previous(&self, key: &[u8], p: &KvPair) -> Result<()> {
        if p.key != key {
            return Err(Error::InvalidArgument(format!(
                "the previous pair is of key {:?}, not {:?}",
                String::from_utf8_lossy(&p.key),
                String::from_utf8_lossy(key)
            )));
        }
        if p.revision < 1 {
            // A missing key has mod revision 0: such a pair would pass the compare.
            return Err(Error::InvalidArgument(format!(
                "the previous pair has revision {}; pairs come from get_pair, list_pairs or atomic_put",
                p.revision
            )));
        }
        Ok(())
    }

    /// Figures about this namespace and the database (dKV `GetDBInfo`).
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// store.set(b"k", b"value", None)?;
    /// let info = store.info()?;
    /// assert_eq!((info.keys, info.value_bytes, info.total_keys), (1, 5, 1));
    /// assert!(info.revision > 1 && info.bytes_on_disk > 0);
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn info(&self) -> Result<DbInfo> {
        self.with(|kv| {
            let now = self.shared().now();
            let (mut keys, mut expired_keys, mut value_bytes) = (0, 0, 0u64);
            let start = self.prefix.to_vec();
            let end = keys::prefix_end(&start).unwrap_or_else(|| vec![0]);
            scan(kv, &start, &end, 0, |rec| {
                let h = Header::parse(&rec.value)?;
                if h.visible(|| now) {
                    keys += 1;
                    value_bytes += (rec.value.len() - h.value_at) as u64;
                } else if h.present(|| now) {
                    expired_keys += 1;
                }
                Ok(true)
            })?;
            let total_keys = kv.range(b"", &[0], RangeOptions { count_only: true, ..Default::default() })?.count;
            let stats = kv.backend().stats();
            let (scheduled, next) = {
                let t = lock(&self.shared().tracker);
                (t.len(), t.next())
            };
            Ok(DbInfo {
                keys,
                expired_keys,
                value_bytes,
                total_keys,
                revision: kv.current_revision(),
                compacted_revision: kv.compacted_revision(),
                bytes_live: stats.size_in_use,
                bytes_on_disk: stats.size,
                segments: stats.segments,
                index_bytes: stats.index_bytes,
                scheduled,
                next_sweep_at: next.map(from_nanos),
                path: self.shared().path.clone(),
            })
        })
    }

    /// Runs the sweeper's work now, in this thread: deletes every key past its `delete_at`,
    /// drops every value past its `expires_at`, and compacts the MVCC history if due (see
    /// [`Options::compact_after`]). Returns how many keys it deleted or expired. Reads never
    /// need this — expiry is checked against the clock — it reclaims space.
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// assert_eq!(store.sweep()?, 0);
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn sweep(&self) -> Result<usize> {
        let n = self.shared().sweep(&|| false)?;
        self.shared().maybe_compact()?;
        Ok(n)
    }

    /// Makes every write so far durable (fdatasync) before returning. Writes are otherwise
    /// durable within the backend's `batch_interval` (group commit).
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// store.set(b"k", b"v", None)?;
    /// store.force_commit()?;
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn force_commit(&self) -> Result<()> {
        self.with(|kv| kv.backend().force_commit())
    }

    /// Stops the sweeper, makes every write durable and releases the database (its directory
    /// can be opened again at once). Every later call on this store, its clones and its
    /// namespaces — `close` included — returns [`Error::Closed`] (kvs `ErrClosed`). Calls in
    /// flight finish first.
    ///
    /// ```
    /// let (store, _dir) = logtree::kv::Store::open_temp()?;
    /// let ns = store.namespace("a");
    /// store.close()?;
    /// assert!(matches!(ns.set(b"k", b"v", None), Err(logtree::Error::Closed)));
    /// assert!(matches!(store.close(), Err(logtree::Error::Closed)));
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn close(&self) -> Result<()> {
        self.handle.stop_sweeper();
        let kv = self.shared().kv.write().take().ok_or(Error::Closed)?;
        let backend = kv.backend().clone();
        drop(kv); // stops the MVCC watch syncer, which holds the other reference to the backend
        match Arc::try_unwrap(backend) {
            Ok(b) => b.close(),
            Err(b) => b.force_commit(),
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let closed = self.shared().read_kv().is_none();
        f.debug_struct("Store")
            .field("path", &self.shared().path)
            .field("namespace", &self.names)
            .field("closed", &closed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mvcc_overhead_matches_the_mvcc_encoding() {
        let kv = KeyValue { key: b"k".to_vec(), value: b"v".to_vec(), ..KeyValue::default() };
        assert_eq!(kv.encode().len(), MVCC_OVERHEAD + 2);
    }

    #[test]
    fn store_is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Store>();
    }
}
