//! The write transaction.
//!
//! One `BatchTx` exists at a time (it holds the writer lock). It edits the writer's own
//! catalog — copy-on-write trees, so nodes a reader still shares are copied, others are changed
//! in place — and appends its operations to the log writer's frame. When it ends (dropped or
//! committed) its frame is written and the new catalog is published: every `ReadTx` taken
//! after that sees it, before it is durable, as in etcd. `commit` additionally waits until it
//! is durable. Durability otherwise comes from the group committer (see `commit.rs`).
//!
//! Atomicity: a transaction is one `FRAME_TX_END`-terminated frame sequence in the log;
//! recovery applies all of it or none. A transaction that fails (an I/O error) or is rolled
//! back is not published, and the writer's catalog is reset to the published one.

use std::sync::MutexGuard;

use super::backend::Backend;
use super::read_tx::{Reader, Values, View, read_methods};
use super::tx_buffer::TxBuffer;
use crate::error::{Error, Result};
use crate::index::ValueRef;
use crate::index::catalog::Catalog;
use crate::index::pool::{self, Pool};
use crate::log::writer::{LogWriter, SegmentSet, find_segment};
use crate::{MAX_KEY_LEN, MAX_VALUE_LEN};

/// The writer's state, behind the writer lock.
pub(crate) struct Writer {
    /// `None` when the backend is read-only.
    pub log: Option<LogWriter>,
    /// The working catalog, with the running transaction's puts that the index has not taken
    /// in yet: equal to the published one between transactions.
    pub catalog: TxBuffer,
    /// The segments values lie in, for a read-only backend (which has no log writer).
    pub segments: SegmentSet,
    /// Freed index node buffers, lent to the thread of each `BatchTx` (see `index::pool`).
    pub pool: Option<Box<Pool>>,
}

impl Values for Writer {
    fn value(&self, v: ValueRef) -> Option<&[u8]> {
        match &self.log {
            Some(log) => log.resolve(v),
            None => find_segment(&self.segments, v.seg)?.bytes(v.off as u64, v.len as usize),
        }
    }
}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLarge { len: key.len(), max: MAX_KEY_LEN });
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::ValueTooLarge { len: value.len(), max: MAX_VALUE_LEN });
    }
    Ok(())
}

/// The write transaction: see the module documentation and [`Backend::batch_tx`].
///
/// ```
/// let (db, _dir) = logtree::Backend::open_temp()?;
/// let mut tx = db.batch_tx();
/// tx.create_bucket("users")?;
/// tx.put("users", "alice", "admin")?;
/// assert_eq!(tx.get("users", "alice")?, Some(b"admin".to_vec())); // sees its own writes
/// tx.commit()?; // visible and durable
/// assert_eq!(db.read_tx().get("users", "alice")?, Some(b"admin".to_vec()));
/// # Ok::<(), logtree::Error>(())
/// ```
pub struct BatchTx<'a> {
    backend: &'a Backend,
    /// `None` only for a transaction handed out unusable (see [`Backend::batch_tx`]) or after
    /// it has ended.
    guard: Option<MutexGuard<'a, Writer>>,
    /// The writer's node buffer pool is lent to this thread until the transaction ends.
    pool_lent: bool,
    /// Set by `commit`. A transaction of more than [`SYNC_ON_COMMITTER_FROM_OPS`] operations
    /// starts its fdatasync on the committer thread once its commit frame is written, applies
    /// its staged puts and frees the replaced view while it runs; a smaller one runs it itself.
    sync_on_publish: bool,
    /// Operations written by this transaction.
    ops: u64,
    /// An I/O error hit this transaction: it will be rolled back, not published.
    failed: bool,
    unusable: Option<&'static str>,
    /// Set by [`BatchTx::finish_deferring_sync`]: the batch-limit commit is left to the caller.
    defer_limit_sync: bool,
    /// The batch limit was reached and the commit was deferred.
    limit_sync_due: bool,
}

impl<'a> BatchTx<'a> {
    pub(crate) fn new(backend: &'a Backend, mut guard: MutexGuard<'a, Writer>) -> BatchTx<'a> {
        let pool = guard.pool.take().unwrap_or_default();
        guard.pool = pool::lend(pool);
        backend.settle_layers(&mut guard);
        BatchTx {
            backend,
            pool_lent: guard.pool.is_none(),
            sync_on_publish: false,
            guard: Some(guard),
            ops: 0,
            failed: false,
            unusable: None,
            defer_limit_sync: false,
            limit_sync_due: false,
        }
    }

    pub(crate) fn unusable(backend: &'a Backend, why: &'static str) -> BatchTx<'a> {
        BatchTx {
            backend,
            guard: None,
            pool_lent: false,
            sync_on_publish: false,
            ops: 0,
            failed: false,
            unusable: Some(why),
            defer_limit_sync: false,
            limit_sync_due: false,
        }
    }

    fn writer(&self) -> Result<&Writer> {
        match &self.guard {
            Some(g) => Ok(g),
            None => Err(Error::TxUnusable(self.unusable.unwrap_or("the transaction has ended").into())),
        }
    }

    /// The writer, if this transaction may write.
    fn writable(&mut self) -> Result<&mut Writer> {
        if self.failed {
            return Err(Error::TxUnusable("an earlier write of this transaction failed".into()));
        }
        if self.guard.as_ref().is_some_and(|g| g.catalog.interrupted()) {
            return Err(Error::TxUnusable("a panic interrupted this transaction".into()));
        }
        self.backend.check_writable()?;
        match &mut self.guard {
            Some(g) if g.log.is_some() => Ok(g),
            Some(_) => Err(Error::ReadOnly),
            None => Err(Error::TxUnusable(self.unusable.unwrap_or("the transaction has ended").into())),
        }
    }

    /// An I/O error while writing: nothing more can be promised, so the engine stops writing.
    fn fail(&mut self, e: Error) -> Error {
        self.failed = true;
        self.backend.poison(&e);
        e
    }

    pub(crate) fn reader(&self) -> Reader<'_> {
        match self.writer() {
            Ok(w) => Reader { catalog: w.catalog.read(), values: w },
            // An unusable transaction reads as an empty database rather than panicking; its
            // write methods report why it is unusable.
            Err(_) => Reader { catalog: &EMPTY_CATALOG, values: &NoValues },
        }
    }

    read_methods!();

    /// Creates a bucket; does nothing if it exists.
    pub fn create_bucket(&mut self, name: impl AsRef<[u8]>) -> Result<()> {
        let name = name.as_ref();
        check_key(name)?;
        let w = self.writable()?;
        if w.catalog.bucket(name).is_some() {
            return Ok(());
        }
        let id =
            w.catalog.read().unused_id().ok_or_else(|| Error::InvalidArgument("every bucket id is in use".into()))?;
        let r = w.log.as_mut().map_or(Err(Error::ReadOnly), |log| log.create_bucket(id, name));
        match r {
            Ok(()) => {
                w.catalog.write().create(name, id);
                self.ops += 1;
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Deletes a bucket and every key in it; does nothing if it does not exist.
    pub fn delete_bucket(&mut self, name: impl AsRef<[u8]>) -> Result<()> {
        let name = name.as_ref();
        let w = self.writable()?;
        let Some((_, id)) = w.catalog.bucket(name) else { return Ok(()) };
        let r = w.log.as_mut().map_or(Err(Error::ReadOnly), |log| log.delete_bucket(id));
        match r {
            Ok(()) => {
                w.catalog.write().remove(name);
                self.ops += 1;
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Sets `key` in `bucket` to `value`. The bucket must exist.
    pub fn put(&mut self, bucket: impl AsRef<[u8]>, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.put_ref(bucket.as_ref(), key.as_ref(), value.as_ref()).map(|_| ())
    }

    /// As [`put`](Self::put); returns where the value lies in the log, which stays valid in
    /// every later view that still has its segment (see [`ReadTx::value_at`]).
    pub(crate) fn put_ref(&mut self, bucket: &[u8], key: &[u8], value: &[u8]) -> Result<ValueRef> {
        check_key(key)?;
        check_value(value)?;
        let backend = self.backend;
        let w = self.writable()?;
        let Writer { log, catalog, .. } = w;
        let (index, id) = catalog.bucket(bucket).ok_or_else(|| Error::BucketNotFound { bucket: bucket.to_vec() })?;
        let r = log.as_mut().map_or(Err(Error::ReadOnly), |log| log.put(id, key, value));
        match r {
            Ok(v) => {
                // The index takes it in with the next few puts (see `tx_buffer.rs`).
                catalog.stage_put(index, key, v);
                // A large transaction writes its frames as it goes (`FRAME_TX_PART`): their
                // write-back starts before its commit's fdatasync too.
                if let Some(log) = log.as_ref()
                    && log.active().wants_writeback()
                {
                    backend.start_writeback(log.active());
                }
                self.ops += 1;
                Ok(v)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// The bytes at `v`, if its segment is still part of the log (see `ReadTx::value_at`).
    pub(crate) fn value_at(&self, v: ValueRef) -> Option<&[u8]> {
        self.reader().values.value(v)
    }

    /// The same as [`put`](Self::put); the name says the caller writes ascending keys (as
    /// etcd's `UnsafeSeqPut`). The index fills its nodes fully on ascending inserts whichever
    /// is called, so the hint costs nothing and changes nothing but readability.
    pub fn seq_put(&mut self, bucket: impl AsRef<[u8]>, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.put(bucket, key, value)
    }

    /// Removes `key` from `bucket`; does nothing if it is missing. The bucket must exist.
    pub fn delete(&mut self, bucket: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Result<()> {
        let (bucket, key) = (bucket.as_ref(), key.as_ref());
        check_key(key)?;
        let w = self.writable()?;
        let Writer { log, catalog, .. } = w;
        let b = catalog.write().get_mut(bucket).ok_or_else(|| Error::BucketNotFound { bucket: bucket.to_vec() })?;
        if b.get(key).is_none() {
            return Ok(());
        }
        let r = log.as_mut().map_or(Err(Error::ReadOnly), |log| log.delete(b.id, key));
        match r {
            Ok(()) => {
                b.delete_expected(key); // found just above
                self.ops += 1;
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Ends the transaction and returns once every write so far — this transaction's and
    /// every earlier one's — is durable.
    pub fn commit(mut self) -> Result<()> {
        if let Some(why) = self.unusable {
            return Err(Error::TxUnusable(why.into()));
        }
        self.sync_on_publish = true;
        self.end(true)?;
        self.backend.sync_written()
    }

    /// Ends the transaction like dropping it — its writes become visible, and durable with the
    /// next group commit — but reports a failure to write them, which `Drop` cannot.
    pub fn finish(mut self) -> Result<()> {
        self.end_reporting()
    }

    /// Ends a usable transaction that has not failed by writing it; reports why otherwise
    /// (a failed one is rolled back).
    fn end_reporting(&mut self) -> Result<()> {
        if let Some(why) = self.unusable {
            return Err(Error::TxUnusable(why.into()));
        }
        if self.failed {
            self.end(false).ok();
            return Err(Error::TxUnusable("an earlier write of this transaction failed".into()));
        }
        self.end(true)
    }

    /// As [`finish`](Self::finish), but if the transaction brings the pending operations to the
    /// batch limit, the inline commit is not run: `Ok(true)` tells the caller to run it
    /// (`Backend::force_commit`) once it has released its own locks — a layer above that
    /// serializes its writes must not make the next writer wait for an fdatasync.
    pub(crate) fn finish_deferring_sync(mut self) -> Result<bool> {
        self.defer_limit_sync = true;
        self.end_reporting()?;
        Ok(self.limit_sync_due)
    }

    /// Ends the transaction without applying any of its writes.
    pub fn rollback(mut self) {
        self.end(false).ok();
    }

    /// Writes and publishes (or, if `keep` is false or a write failed, discards) the
    /// transaction, and releases the writer lock.
    fn end(&mut self, keep: bool) -> Result<()> {
        let asked_to_keep = keep;
        let mut keep = keep;
        let mut interrupted = false;
        // A large transaction's `commit` hands its fdatasync to the committer thread, and its
        // staged puts go into the index after that, while the disk works, rather than before
        // the commit frame is written (DESIGN.md §3, "A large commit's puts go in while the disk
        // syncs").
        let overlap = self.sync_on_publish && self.ops > SYNC_ON_COMMITTER_FROM_OPS;
        if let Some(g) = self.guard.as_mut() {
            if keep && !self.failed && !g.catalog.interrupted() && !overlap {
                // The staged puts go into the index first, while a panic there still finds the
                // guard in `self` and is rolled back, before anything is written.
                let catalog = &mut g.catalog;
                if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    catalog.write();
                })) {
                    let _ = self.end(false);
                    std::panic::resume_unwind(panic);
                }
            }
            // A panic applying staged puts, caught by the caller: some of the transaction's
            // puts never reached the index, so it is rolled back (see `TxBuffer::interrupted`).
            interrupted = g.catalog.interrupted();
            keep &= !interrupted;
        }
        let Some(mut guard) = self.guard.take() else { return Ok(()) };
        let w = &mut *guard;
        let mut result = Ok(());
        let mut limit_reached = None;
        let mut old_view = None;
        let mut replaced = None;
        let mut apply_panic = None;
        // Whether a bucket sealed its layer of recent writes, for the merger (`merger.rs`).
        let mut sealed = false;
        if let Some(log) = w.log.as_mut() {
            // Once a write or fdatasync has failed (here or in another thread) nothing more may
            // be written: a frame written after a failed fdatasync could survive a power cut
            // that the lost pages before it did not, and the log would no longer open.
            if keep
                && !self.failed
                && !log.tx_is_empty()
                && let Err(e) = self.backend.check_writable()
            {
                result = Err(e);
                self.failed = true;
            }
            if keep && !self.failed {
                match log.commit_tx() {
                    Ok(Some(seq)) => {
                        let catalog = &mut w.catalog;
                        let applied = if overlap {
                            // The commit frame is written: the fdatasync can start while the
                            // staged puts go into the index. The transaction counts as written
                            // only once it is published (`wrote`, below): no other thread may
                            // see it durable (`stats`, `force_commit`) before a new read
                            // transaction shows it.
                            self.backend.framed(seq, log.active());
                            self.backend.start_sync(seq);
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                let c = catalog.write();
                                sealed = c.seal_full();
                                c.snapshot()
                            }))
                        } else {
                            // Applied above, before anything was written.
                            let c = catalog.write();
                            sealed = c.seal_full();
                            Ok(c.snapshot())
                        };
                        match applied {
                            Ok(catalog) => {
                                let view = View { catalog, segments: log.segments().clone(), seq, end: log.end() };
                                replaced = Some(self.backend.publish(view));
                                if self.backend.wrote(seq, self.ops, log.active()) {
                                    limit_reached = Some(seq);
                                }
                                if log.active().wants_writeback() {
                                    self.backend.start_writeback(log.active());
                                }
                            }
                            Err(panic) => {
                                // Too late to roll back: the commit frame is in the log, and
                                // the index lacks part of the transaction. Nothing more may be
                                // written over that; readers keep the published view, and a
                                // reopen rebuilds the index from the log, this transaction
                                // included. (No panic here is known.)
                                let cause = Error::TxUnusable(
                                    "a panic while a committed transaction went into the index".into(),
                                );
                                self.backend.poison(&cause);
                                w.catalog.reset(self.backend.published_catalog());
                                apply_panic = Some(panic);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.backend.poison(&e);
                        result = Err(e);
                        self.failed = true;
                    }
                }
            }
            if !keep || self.failed {
                if self.failed || self.backend.check_writable().is_err() {
                    log.discard_tx();
                } else if let Err(e) = log.abort_tx() {
                    self.backend.poison(&e);
                    result = Err(e);
                }
                w.catalog.reset(self.backend.published_catalog());
            }
        }
        let replaced_any = replaced.is_some();
        if let Some(old) = replaced {
            // A large transaction's commit started its fdatasync on the committer thread
            // (above) and leaves the nodes of the view it replaced to free, which this thread
            // does meanwhile. A small one leaves a few nodes per bucket it changed, so `commit`
            // runs the fdatasync on this thread, sparing a wake-up of each thread per commit.
            old_view = Some(old);
        }
        // The replaced view's nodes, if nobody else holds them, go to the pool while it is
        // still lent to this thread, for the next transaction's copies.
        drop(old_view);
        if std::mem::take(&mut self.pool_lent) {
            w.pool = pool::reclaim();
        }
        self.backend.release_writer();
        drop(guard);
        if replaced_any {
            self.backend.wake_merger(sealed);
        }
        if let Some(panic) = apply_panic {
            std::panic::resume_unwind(panic);
        }
        if let Some(seq) = limit_reached {
            if self.defer_limit_sync {
                self.limit_sync_due = true;
            } else {
                // As etcd's Unlock: the transaction that reaches the batch limit commits inline,
                // after releasing the writer so that the next transaction may start meanwhile.
                result = self.backend.sync_to(seq);
            }
        }
        if interrupted && asked_to_keep && result.is_ok() {
            result = Err(Error::TxUnusable("a panic interrupted this transaction; it was rolled back".into()));
        }
        result
    }
}

impl Drop for BatchTx<'_> {
    fn drop(&mut self) {
        // A transaction abandoned by a panic is rolled back: its writes may be half done.
        let keep = !std::thread::panicking();
        // Errors here have nowhere to go but the poison flag, which the next write reports.
        let _ = self.end(keep);
    }
}

/// Transactions of more operations than this hand their fdatasync to the committer thread and
/// free the replaced view's nodes meanwhile (see `BatchTx::end`).
const SYNC_ON_COMMITTER_FROM_OPS: u64 = 64;

static EMPTY_CATALOG: Catalog = Catalog::EMPTY;

struct NoValues;
impl Values for NoValues {
    fn value(&self, _: ValueRef) -> Option<&[u8]> {
        None
    }
}
