//! The merger: a thread that carries the buckets' sealed layers into their bases, off the
//! writer's path (see `index/layers.rs` for the layers and why).
//!
//! Its loop: take the published view; for a bucket with sealed layers, build the merged base
//! from the view's base and layers (`Bucket::merge_sealed`) — the long part, with no lock
//! held; leave the result in [`Shared`]'s outbox; take the writer lock and install it
//! (`Shared::install_merges`): the writer's catalog takes the new base in place of the layers,
//! and a view with the same contents (and sequence number) is published.
//!
//! The writer lock is held by a transaction for its whole life, so the merger may wait for it
//! a while. A transaction starting meanwhile installs what waits in the outbox itself
//! (`Backend::settle_layers`), so a stream of transactions never keeps a merge out; and one
//! that finds a bucket with [`MAX_SEALED`](crate::index::layers::MAX_SEALED) layers waits for
//! the merger to deliver (the bound on memory). No lock is held while the outbox is filled, so
//! the two never wait for each other.
//!
//! Views replaced by an install are dropped on this thread, the writer's or not: dropping the
//! last view of an old base frees the nodes the merge replaced, thousands of them, which is
//! work the writer's transactions should not wait for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::batch_tx::Writer;
use super::read_tx::View;
use crate::error::{Error, Result};
use crate::index::catalog::Bucket;
use crate::index::layers::{MAX_SEALED, Merged};
use crate::index::pool;

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
    outbox: Mutex<Vec<Merged>>,
    /// Signalled when a merge is left in the outbox.
    delivered: Condvar,
    /// Whether the outbox may hold something (read without its lock by every transaction).
    pending: AtomicBool,
    /// Views replaced by installs, for the merger thread to drop.
    replaced: Mutex<Vec<Arc<View>>>,
}

impl Shared {
    pub(crate) fn new(view: View, writer: Writer) -> Shared {
        Shared {
            view: RwLock::new(Arc::new(view)),
            writer: Mutex::new(writer),
            outbox: Mutex::new(Vec::new()),
            delivered: Condvar::new(),
            pending: AtomicBool::new(false),
            replaced: Mutex::new(Vec::new()),
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

    fn outbox(&self) -> MutexGuard<'_, Vec<Merged>> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deliver(&self, merged: Merged) {
        self.outbox().push(merged);
        self.pending.store(true, Ordering::Release);
        self.delivered.notify_all();
    }

    /// Waits up to `timeout` for a merge in the outbox; returns whether there is one.
    pub(crate) fn wait_for_merge(&self, timeout: Duration) -> bool {
        let outbox = self.outbox();
        let (outbox, _) =
            self.delivered.wait_timeout_while(outbox, timeout, |o| o.is_empty()).unwrap_or_else(|e| e.into_inner());
        !outbox.is_empty()
    }

    /// Installs the merges in the outbox into the writer's catalog (`w`, locked, between
    /// transactions) and publishes the result. The view it replaces goes to the merger thread.
    /// `None` if the outbox was empty, else whether any merge was still wanted.
    pub(crate) fn install_merges(&self, w: &mut Writer) -> Option<bool> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        let merges = std::mem::take(&mut *self.outbox());
        let catalog = w.catalog.write();
        let mut installed = false;
        for m in &merges {
            installed |= catalog.install(m);
        }
        if installed {
            self.publish_same(catalog.snapshot());
        }
        Some(installed)
    }

    /// Merges, on this thread, every bucket of `w`'s catalog that has `MAX_SEALED` layers
    /// waiting, and publishes the result. For when the merger does not deliver.
    pub(crate) fn merge_here(&self, w: &mut Writer) {
        let catalog = w.catalog.write();
        let merges: Vec<Merged> =
            catalog.iter().filter(|b| b.sealed_layers() >= MAX_SEALED).filter_map(Bucket::merge_sealed).collect();
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

    fn drop_replaced(&self) {
        let old = std::mem::take(&mut *self.replaced.lock().unwrap_or_else(|e| e.into_inner()));
        drop(old);
    }
}

/// The merger thread's handle.
pub(crate) struct Merger {
    wake: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Merger {
    pub(crate) fn start(shared: Arc<Shared>) -> Result<Merger> {
        let (wake, woken) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("logtree-merger".into())
            .spawn(move || run(&shared, &woken))
            .map_err(|e| Error::io("start the merger thread", None, e))?;
        Ok(Merger { wake: Some(wake), thread: Some(thread) })
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
    while woken.recv().is_ok() {
        loop {
            let view = shared.current_view();
            let merged = view.catalog.iter().find_map(Bucket::merge_sealed);
            drop(view);
            let Some(merged) = merged else { break };
            shared.deliver(merged);
            let mut w = shared.lock_writer();
            let installed = shared.install_merges(&mut w);
            drop(w);
            shared.drop_replaced();
            if installed == Some(false) {
                // Overtaken (the bucket deleted, a defrag): the next wake-up looks again.
                break;
            }
        }
        shared.drop_replaced();
    }
    drop(pool::reclaim());
}
