//! Group commit: when written transactions become durable.
//!
//! A transaction's frame is written to the active segment when its `BatchTx` ends; it becomes
//! durable at the next fdatasync of that segment. [`Durability`] tracks two sequence numbers —
//! the last transaction written and the last one made durable — and runs the fdatasync for
//! whoever needs it:
//!
//! - `BatchTx::commit`, `Backend::force_commit` and `close` wait for `durable ≥ written`;
//! - the dropping thread itself, when pending operations reach `batch_limit` (as etcd's
//!   `batchTx.Unlock` commits inline);
//! - the committer thread, every `batch_interval`, if anything is pending (an idle engine does
//!   no I/O).
//!
//! Whoever finds no sync in flight becomes the leader: it notes how far the log is written,
//! syncs without holding the lock, and then wakes every waiter whose target that sync covered.
//! Writers go on appending meanwhile, so one fdatasync serves every commit that arrived while
//! the previous one ran — many waiters, one fsync.
//!
//! A failed fdatasync poisons the engine for writing (see [`crate::Error::Poisoned`]): the
//! kernel may have dropped the dirty pages already, so a retry that succeeds proves nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, never, select, tick};

use crate::error::{Error, Result};
use crate::log::segment::Segment;

struct DurState {
    /// Last transaction whose frame is written (visible), and last made durable.
    written_seq: u64,
    durable_seq: u64,
    /// Operations written and made durable, to count what is pending against `batch_limit`.
    written_ops: u64,
    durable_ops: u64,
    /// The segment the next fdatasync must cover. Earlier segments were synced when sealed.
    active: Arc<Segment>,
    syncing: bool,
    poisoned: Option<String>,
}

pub struct Durability {
    st: Mutex<DurState>,
    cond: Condvar,
    batch_limit: u64,
    /// Raised together with `poisoned`, without the lock, and checked by the log writer before
    /// every write: the moment an fdatasync fails, no later write or roll-over may start.
    failed: Arc<AtomicBool>,
}

impl Durability {
    pub fn new(active: Arc<Segment>, last_seq: u64, batch_limit: usize, failed: Arc<AtomicBool>) -> Durability {
        Durability {
            st: Mutex::new(DurState {
                written_seq: last_seq,
                durable_seq: last_seq,
                written_ops: 0,
                durable_ops: 0,
                active,
                syncing: false,
                poisoned: None,
            }),
            cond: Condvar::new(),
            batch_limit: batch_limit as u64,
            failed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, DurState> {
        // The state is a few counters updated atomically under the lock; a panic elsewhere
        // cannot leave it half-changed, so a poisoned mutex is still usable.
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that transaction `seq` with `ops` operations is written into `active`.
    /// Returns true when pending operations have reached the batch limit.
    pub fn wrote(&self, seq: u64, ops: u64, active: &Arc<Segment>) -> bool {
        let mut st = self.lock();
        st.written_seq = seq;
        st.written_ops += ops;
        if !Arc::ptr_eq(&st.active, active) {
            st.active = active.clone();
        }
        st.written_ops - st.durable_ops >= self.batch_limit
    }

    pub fn written_seq(&self) -> u64 {
        self.lock().written_seq
    }

    pub fn durable_seq(&self) -> u64 {
        self.lock().durable_seq
    }

    /// A defrag replaced the log: every transaction up to `seq` is durable in the new log,
    /// whose active segment is `active`.
    pub fn switched(&self, active: &Arc<Segment>, seq: u64) {
        let mut st = self.lock();
        st.active = active.clone();
        st.written_seq = seq;
        st.durable_seq = seq;
        st.durable_ops = st.written_ops;
        self.cond.notify_all();
    }

    /// Refuses writes from now on; the first cause is kept.
    pub fn poison(&self, cause: &Error) {
        self.failed.store(true, Ordering::SeqCst);
        let mut st = self.lock();
        if st.poisoned.is_none() {
            st.poisoned = Some(cause.to_string());
        }
        self.cond.notify_all();
    }

    /// `Err(Poisoned)` once a write or sync has failed.
    pub fn check(&self) -> Result<()> {
        // Every path that poisons sets `failed` first: the common case takes no lock (this runs
        // for every write). Set but not yet explained, it still refuses.
        if !self.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let cause = self.lock().poisoned.clone();
        Err(Error::Poisoned {
            cause: cause.unwrap_or_else(|| "an earlier write or fdatasync of the log failed".into()),
        })
    }

    /// Makes every transaction written so far durable.
    pub fn sync_written(&self) -> Result<()> {
        let target = self.lock().written_seq;
        self.sync_to(target)
    }

    /// Returns once transaction `target` is durable (or with the error that prevents it).
    pub fn sync_to(&self, target: u64) -> Result<()> {
        let mut st = self.lock();
        loop {
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned { cause: cause.clone() });
            }
            if st.durable_seq >= target {
                return Ok(());
            }
            if st.syncing {
                st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.syncing = true;
            let (seg, upto_seq, upto_ops) = (st.active.clone(), st.written_seq, st.written_ops);
            drop(st);
            let r = seg.sync();
            if r.is_err() {
                self.failed.store(true, Ordering::SeqCst);
            }
            st = self.lock();
            st.syncing = false;
            match r {
                Ok(()) => {
                    st.durable_seq = st.durable_seq.max(upto_seq);
                    st.durable_ops = st.durable_ops.max(upto_ops);
                }
                Err(e) => {
                    if st.poisoned.is_none() {
                        st.poisoned = Some(e.to_string());
                    }
                    self.cond.notify_all();
                    return Err(e);
                }
            }
            self.cond.notify_all();
        }
    }

    /// The committer's tick: sync if anything is pending and nobody is poisoned.
    fn sync_if_pending(&self) {
        let target = {
            let st = self.lock();
            if st.poisoned.is_some() || st.durable_seq >= st.written_seq {
                return;
            }
            st.written_seq
        };
        // A failure poisons the engine; the next write or commit reports it.
        let _ = self.sync_to(target);
    }
}

/// The background thread that commits every `batch_interval`.
pub struct Committer {
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Committer {
    pub fn start(dur: Arc<Durability>, interval: Duration) -> Result<Committer> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let handle = std::thread::Builder::new()
            .name("logtree-committer".into())
            .spawn(move || {
                let ticker = if interval.is_zero() { never() } else { tick(interval) };
                loop {
                    select! {
                        recv(stop_rx) -> _ => return,
                        recv(ticker) -> _ => dur.sync_if_pending(),
                    }
                }
            })
            .map_err(|e| Error::io("start the committer thread", None, e))?;
        Ok(Committer { stop: Some(stop_tx), handle: Some(handle) })
    }

    /// Stops the thread and waits for it (a sync it is running finishes first).
    pub fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.stop();
    }
}
