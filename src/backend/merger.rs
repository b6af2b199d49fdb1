//! The merger: a thread that carries the buckets' sealed layers into their bases, off the
//! writer's path (see `index/layers.rs` for the layers and why).
//!
//! Its loop: take the published view; for a bucket with sealed layers, build the merged base
//! from the view's base and layers (`Bucket::merge_sealed`) — the long part, with no lock
//! held; leave the result in [`Shared`]'s outbox; install it (`Shared::install_merges`): the
//! writer's catalog takes the new base in place of the layers, and a view with the same
//! contents (and sequence number) is published. The next transaction to start installs it;
//! the merger does, if the writer lock is free first.
//!
//! When: once a bucket's merge is due (`Bucket::merge_due`: `MERGE_FROM` sealed layers, or as
//! many entries, or an empty base), or once the writer has been idle for
//! [`IDLE`] (then what it left in `recent` is sealed first, and every layer merged). A merge
//! brings to each leaf of the tree every key of its layers that falls there, so merging many
//! layers at once copies a leaf for several keys rather than one; and a burst of writes leaves
//! its merge to the pause after it. When nothing is left to merge it sleeps until the writer
//! publishes again.
//!
//! The writer lock is held by a transaction for its whole life, and the merger never waits
//! for it: it tries it, and stops trying once a transaction has taken the merge
//! (`install_when_free`). A transaction that finds a bucket with
//! [`MAX_SEALED`](crate::index::layers::MAX_SEALED) layers waits for the merger to deliver
//! (the bound on memory); no lock is held while the outbox is filled, so the two never wait
//! for each other. (Found by this module's test: with a blocking lock, the merger lost every
//! race for the lock to a writer starting transactions back to back, and that writer then
//! waited for the merger.)
//!
//! Views replaced by an install are dropped on this thread, the writer's or not: dropping the
//! last view of an old base frees the nodes the merge replaced, thousands of them, which is
//! work the writer's transactions should not wait for.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::batch_tx::Writer;
use super::read_tx::View;
use crate::error::{Error, Result};
use crate::index::layers::{MAX_SEALED, Merged};
use crate::index::pool;

/// The writer counts as idle once it has published nothing for this long: the merger then
/// seals what it left in `recent` and merges every sealed layer, so that reads after a burst of
/// writes find each bucket in one tree.
pub(crate) const IDLE: Duration = Duration::from_millis(10);
/// How long the merger sleeps between tries of the writer lock, to install a merge.
const INSTALL_POLL: Duration = Duration::from_micros(200);
/// How long a transaction waiting for a merge sleeps between looks at the outbox.
pub(crate) const MERGE_WAIT_STEP: Duration = Duration::from_millis(50);
/// How long a transaction waits for the merger before it merges itself.
pub(crate) const MERGE_WAIT_MAX: Duration = Duration::from_secs(5);

/// What the backend shares with its merger thread.
pub(crate) struct Shared {
    /// The published view; swapped (never changed) under the writer lock.
    view: RwLock<Arc<View>>,
    writer: Mutex<Writer>,
    /// Merges built and not yet installed.
    outbox: Mutex<Outbox>,
    /// Signalled when a merge is left in the outbox.
    delivered: Condvar,
    /// Whether the outbox may hold something (read without its lock by every transaction).
    pending: AtomicBool,
    /// How many merges, counted as `Outbox::delivered` counts them, have been taken and their
    /// installs published (or found unwanted).
    installed: AtomicU64,
    /// Views replaced by installs, for the merger thread to drop.
    replaced: Mutex<Vec<Arc<View>>>,
    /// The merger sleeps until the writer's next publish (`Shared::published`).
    asleep: AtomicBool,
    /// The backend is closing: a merge under way is dropped.
    stopping: AtomicBool,
}

impl Shared {
    pub(crate) fn new(view: View, writer: Writer) -> Shared {
        Shared {
            view: RwLock::new(Arc::new(view)),
            writer: Mutex::new(writer),
            outbox: Mutex::new(Outbox::default()),
            installed: AtomicU64::new(0),
            delivered: Condvar::new(),
            pending: AtomicBool::new(false),
            replaced: Mutex::new(Vec::new()),
            asleep: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    pub(crate) fn current_view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes `view` the one new read transactions see; returns the one it replaces.
    pub(crate) fn publish(&self, view: View) -> Arc<View> {
        std::mem::replace(&mut *self.view.write().unwrap_or_else(|e| e.into_inner()), Arc::new(view))
    }

    /// The writer lock. A panic while holding it rolls its transaction back (see BatchTx's
    /// Drop), so the state behind a poisoned mutex is consistent.
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer lock if it is free (see `lock_writer`).
    fn try_lock_writer(&self) -> Option<MutexGuard<'_, Writer>> {
        match self.writer.try_lock() {
            Ok(w) => Some(w),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves `merged` in the outbox; returns its number (see `installed`).
    fn deliver(&self, merged: Merged) -> u64 {
        let mut outbox = self.outbox();
        outbox.merges.push(merged);
        outbox.delivered += 1;
        let number = outbox.delivered;
        // Under the outbox's lock, so that whoever clears it takes this merge or sees it set.
        self.pending.store(true, Ordering::Release);
        drop(outbox);
        self.delivered.notify_all();
        number
    }

    /// Waits up to `timeout` for a merge in the outbox; returns whether there is one.
    pub(crate) fn wait_for_merge(&self, timeout: Duration) -> bool {
        let outbox = self.outbox();
        let (outbox, _) = self
            .delivered
            .wait_timeout_while(outbox, timeout, |o| o.merges.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        !outbox.merges.is_empty()
    }

    /// Installs the merges in the outbox into the writer's catalog (`w`, locked, between
    /// transactions) and publishes the result. The view it replaces goes to the merger thread.
    /// `None` if the outbox was empty, else whether any merge was still wanted.
    pub(crate) fn install_merges(&self, w: &mut Writer) -> Option<bool> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        let (merges, upto) = {
            let mut outbox = self.outbox();
            (std::mem::take(&mut outbox.merges), outbox.delivered)
        };
        if merges.is_empty() {
            // Taken with an earlier `pending`.
            return None;
        }
        let catalog = w.catalog.write();
        let mut installed = false;
        for m in &merges {
            installed |= catalog.install(m);
        }
        if installed {
            self.publish_same(catalog.snapshot());
        }
        self.installed.fetch_max(upto, Ordering::Release);
        Some(installed)
    }

    /// Merges, on this thread, every bucket of `w`'s catalog that has `MAX_SEALED` layers
    /// waiting, and publishes the result. For when the merger does not deliver.
    pub(crate) fn merge_here(&self, w: &mut Writer) {
        let catalog = w.catalog.write();
        let merges: Vec<Merged> = catalog
            .iter()
            .filter(|b| b.sealed_layers() >= MAX_SEALED)
            .filter_map(|b| b.merge_sealed(&|| false))
            .collect();
        for m in &merges {
            catalog.install(m);
        }
        self.publish_same(catalog.snapshot());
    }

    /// Publishes `catalog` — the writer's, with the same contents as the published view's, in
    /// other layers — as the published view's sequence number and log.
    fn publish_same(&self, catalog: crate::index::catalog::Catalog) {
        let current = self.current_view();
        let view = View { catalog, segments: current.segments.clone(), seq: current.seq, end: current.end };
        drop(current);
        let old = self.publish(view);
        self.replaced.lock().unwrap_or_else(|e| e.into_inner()).push(old);
    }

    /// Seals every bucket's non-empty `recent` layer, if the writer lock is free (else the
    /// writer is not idle); returns whether the lock was free.
    fn seal_leftovers(&self) -> bool {
        let Some(mut w) = self.try_lock_writer() else { return false };
        let catalog = w.catalog.write();
        if catalog.seal_all() {
            self.publish_same(catalog.snapshot());
        }
        true
    }

    /// Whether the writer, having published, must wake the merger from its sleep.
    pub(crate) fn published(&self) -> bool {
        // Pairs with the fence in `run`: either this sees the flag, or the merger's look sees
        // the view just published.
        std::sync::atomic::fence(Ordering::SeqCst);
        self.asleep.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst)
    }

    /// Drops the views that installs replaced (the merger's job; a transaction's if the merger
    /// is gone).
    pub(crate) fn drop_replaced(&self) {
        let old = std::mem::take(&mut *self.replaced.lock().unwrap_or_else(|e| e.into_inner()));
        drop(old);
    }
}

/// Merges built and not yet installed.
#[derive(Default)]
struct Outbox {
    merges: Vec<Merged>,
    /// Merges ever delivered: the number of the last one.
    delivered: u64,
}

/// The merger thread's handle.
pub(crate) struct Merger {
    shared: Arc<Shared>,
    wake: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Merger {
    pub(crate) fn start(shared: Arc<Shared>) -> Result<Merger> {
        let (wake, woken) = crossbeam_channel::bounded(1);
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("logtree-merger".into())
            .spawn(move || run(&theirs, &woken))
            .map_err(|e| Error::io("start the merger thread", None, e))?;
        Ok(Merger { shared, wake: Some(wake), thread: Some(thread) })
    }

    /// Whether the thread still runs (it ends only on `stop`, or by a panic: a bug).
    pub(crate) fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Has the merger look for sealed layers (a wake-up already pending is enough).
    pub(crate) fn wake(&self) {
        if let Some(w) = &self.wake {
            let _ = w.try_send(());
        }
    }

    /// Stops the thread, after the merge it is building if any (dropped, not installed: the
    /// layers it would replace read the same).
    pub(crate) fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.wake.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, woken: &Receiver<()>) {
    // Its own node buffer pool: a merge copies thousands of nodes, and the views it drops free
    // as many.
    let _ = pool::lend(Box::default());
    let mut last_seq = u64::MAX;
    loop {
        let woke = match woken.recv_timeout(IDLE) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let seq = shared.current_view().seq;
        // Idle: no transaction published for a whole `IDLE` (the merger's own publishes keep
        // the number).
        let idle = !woke && seq == last_seq;
        last_seq = seq;
        let everything = idle && shared.seal_leftovers();
        merge_pending(shared, everything);
        shared.drop_replaced();
        if idle {
            // Sleep until the writer publishes again (`Shared::published`), unless it did
            // meanwhile. The flag is raised before the look, so a publish after the look sees
            // it and wakes this thread.
            shared.asleep.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            let view = shared.current_view();
            let nothing_new = view.seq == last_seq && !view.catalog.has_layers();
            drop(view);
            if nothing_new {
                match woken.recv() {
                    Ok(()) => {}
                    Err(_) => break,
                }
            }
            shared.asleep.store(false, Ordering::SeqCst);
        }
    }
    drop(pool::reclaim());
}

/// Merges and installs, a bucket at a time, the sealed layers of every bucket whose merge is
/// due (`Bucket::merge_due`), or with `everything`, of every bucket that has any.
fn merge_pending(shared: &Shared, everything: bool) {
    loop {
        let view = shared.current_view();
        let stop = || shared.stopping.load(Ordering::Relaxed);
        let merged = view
            .catalog
            .iter()
            .filter(|b| b.merge_due() || (everything && b.sealed_layers() > 0))
            .find_map(|b| b.merge_sealed(&stop));
        drop(view);
        let Some(merged) = merged else { break };
        let number = shared.deliver(merged);
        let installed = install_when_free(shared, number);
        shared.drop_replaced();
        if installed == Some(false) {
            // Overtaken (the bucket deleted, a defrag): the next round looks again.
            break;
        }
    }
}

/// Installs what is in the outbox once the writer lock is free, unless a transaction takes it
/// first (`Backend::settle_layers`); returns what `install_merges` did here, `None` if the
/// writer took it. Never waits on the lock itself: a writer that starts transactions back to
/// back takes the lock again before a waiting thread wakes up (std's mutex is not fair), and
/// one that waits for the merger (a bucket with `MAX_SEALED` layers) would then wait forever.
fn install_when_free(shared: &Shared, number: u64) -> Option<bool> {
    loop {
        // Taken and published by a transaction: a look at the published view from here on
        // shows it (a look before the publish would build the same merge again, on a base
        // already claimed: a deep copy of it, found by review).
        if shared.installed.load(Ordering::Acquire) >= number {
            return None;
        }
        if let Some(mut w) = shared.try_lock_writer() {
            return shared.install_merges(&mut w);
        }
        if shared.stopping.load(Ordering::Relaxed) {
            return None;
        }
        std::thread::sleep(INSTALL_POLL);
    }
}
