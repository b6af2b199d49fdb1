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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, never, select, tick};

use crate::error::{Error, Result};
use crate::log::manifest::{self, SyncFailed};
use crate::log::segment::{self, Segment};
use crate::log::writer::WriterConfig;
use crate::vfs::Vfs;

struct DurState {
    /// Last transaction whose frame is written (visible), and last made durable.
    written_seq: u64,
    durable_seq: u64,
    /// Last transaction whose frames are all in the log: `written_seq`, or, while a large
    /// commit puts its staged entries into the index before publishing (`BatchTx::end`), that
    /// commit. It is what a sync covers, so `durable_seq` may pass `written_seq` for that
    /// moment; [`Durability::seqs`] reports it no higher, and a caller waits for at most
    /// `written_seq`, so nothing durable is reported that a new read transaction would not show.
    framed_seq: u64,
    /// Operations written and made durable, to count what is pending against `batch_limit`.
    written_ops: u64,
    durable_ops: u64,
    /// The segment the next fdatasync must cover. Earlier segments were synced when sealed.
    active: Arc<Segment>,
    syncing: bool,
    /// Threads waiting on `cond` for a sync run by another. A sync that nobody waits for
    /// skips the notification: `notify_all` is a system call even with no waiter, once per
    /// durable commit.
    waiters: u32,
    poisoned: Option<String>,
    /// A failed fdatasync that the committer ran for a committing transaction (a kick), with
    /// the last transaction it was to make durable: the first commit to find it, waiting for
    /// one of those transactions, reports that I/O error as if it had run the sync itself;
    /// every other call reports `Poisoned`, as after a failed sync run inline.
    failed_sync: Option<(u64, FailedSync)>,
}

impl DurState {
    /// Transaction `seq`'s frames are all in the log, the last of them in `active`.
    fn frame(&mut self, seq: u64, active: &Arc<Segment>) {
        self.framed_seq = self.framed_seq.max(seq);
        if !Arc::ptr_eq(&self.active, active) {
            self.active = active.clone();
        }
    }
}

/// What is kept of a failed fdatasync's error (an `io::Error` cannot be cloned).
struct FailedSync {
    context: String,
    path: Option<std::path::PathBuf>,
    kind: std::io::ErrorKind,
    os_code: Option<i32>,
    message: String,
}

impl FailedSync {
    fn of(e: &Error) -> Option<FailedSync> {
        match e {
            Error::Io { context, path, source } => Some(FailedSync {
                context: context.clone(),
                path: path.clone(),
                kind: source.kind(),
                os_code: source.raw_os_error(),
                message: source.to_string(),
            }),
            _ => None,
        }
    }

    fn to_error(&self) -> Error {
        let source = match self.os_code {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(self.kind, self.message.clone()),
        };
        Error::io(self.context.clone(), self.path.clone(), source)
    }
}

/// The cause `Error::Poisoned` gives while the failure's own has not been recorded yet.
const EARLIER_FAILURE: &str = "an earlier write or fdatasync of the log failed";

/// How long a sync that finds the log failed waits for the failure to be explained (and, for a
/// roll-over's failed sync, marked) before it leaves `SYNC-FAILED` itself (`Durability::sync_as`).
const UNEXPLAINED_FAILURE_WAIT: Duration = Duration::from_secs(10);

pub struct Durability {
    st: Mutex<DurState>,
    cond: Condvar,
    batch_limit: u64,
    /// Raised together with `poisoned`, without the lock, and checked by the log writer before
    /// every write: the moment an fdatasync fails, no later write or roll-over may start.
    failed: Arc<AtomicBool>,
    /// Held exclusively while an fdatasync runs, and shared by each write of the log (see
    /// `WriterConfig::sync_gate`): no write overlaps a sync that may fail.
    sync_gate: Arc<RwLock<()>>,
    /// The log's directory, where a failed fdatasync leaves `SYNC-FAILED` (`leave_mark`).
    dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    sync: bool,
    marked: AtomicBool,
}

impl Durability {
    /// Durability of the log `wcfg` writes, whose active segment is `active` and whose last
    /// transaction, `last_seq`, is durable.
    pub fn new(active: Arc<Segment>, last_seq: u64, batch_limit: usize, wcfg: &WriterConfig) -> Durability {
        Durability {
            st: Mutex::new(DurState {
                written_seq: last_seq,
                durable_seq: last_seq,
                framed_seq: last_seq,
                written_ops: 0,
                durable_ops: 0,
                active,
                syncing: false,
                waiters: 0,
                poisoned: None,
                failed_sync: None,
            }),
            cond: Condvar::new(),
            batch_limit: batch_limit as u64,
            failed: wcfg.failed.clone(),
            sync_gate: wcfg.sync_gate.clone(),
            dir: wcfg.dir.clone(),
            vfs: wcfg.vfs.clone(),
            sync: wcfg.sync,
            marked: AtomicBool::new(false),
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
        st.frame(seq, active);
        st.written_seq = seq;
        st.written_ops += ops;
        st.written_ops - st.durable_ops >= self.batch_limit
    }

    /// Records that transaction `seq`'s frames are all in `active`, before it is published:
    /// a sync from now on covers it (see `DurState::framed_seq`). [`wrote`](Self::wrote)
    /// follows once it is published.
    pub fn framed(&self, seq: u64, active: &Arc<Segment>) {
        self.lock().frame(seq, active);
    }

    /// `(written_seq, durable_seq)`, read together: read one after the other, a commit made
    /// durable in between showed a durable transaction that was not yet written. (The durable
    /// one no higher than the written one: see `DurState::framed_seq`.)
    pub fn seqs(&self) -> (u64, u64) {
        let st = self.lock();
        (st.written_seq, st.durable_seq.min(st.written_seq))
    }

    /// A defrag replaced the log: every transaction up to `seq` is durable in the new log,
    /// whose active segment is `active`.
    pub fn switched(&self, active: &Arc<Segment>, seq: u64) {
        let mut st = self.lock();
        st.active = active.clone();
        st.written_seq = seq;
        st.durable_seq = seq;
        st.framed_seq = seq;
        st.durable_ops = st.written_ops;
        self.cond.notify_all();
    }

    /// Raises `failed` alone, as a roll-over whose sync failed does before its transaction
    /// calls [`poison`](Self::poison).
    #[cfg(test)]
    pub fn raise_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Refuses writes from now on; the first cause is kept.
    pub fn poison(&self, cause: &Error) {
        self.failed.store(true, Ordering::SeqCst);
        if matches!(cause, Error::Io { context, .. } if context == segment::SYNC_CONTEXT) {
            // A roll-over's sync of the segment it sealed; marked before the waiters learn of
            // it (below). A failed write loses nothing the page cache still shows: its pages
            // stay dirty, and the next open syncs them.
            let durable = self.lock().durable_seq;
            self.leave_mark(durable);
        }
        let mut st = self.lock();
        if st.poisoned.is_none() {
            st.poisoned = Some(cause.to_string());
        }
        self.cond.notify_all();
    }

    /// After a failed fdatasync of the log, leaves `SYNC-FAILED` saying that nothing after
    /// transaction `durable_seq` is known to be on the disk, so that the next open cuts the log
    /// there (see `manifest::SYNC_FAILED_NAME`: the page cache may still show transactions the
    /// disk lost). Once, at the first failure, when nothing after `durable_seq` has been
    /// acknowledged and nothing will be. Best effort: if it cannot be written either, the disk
    /// is failing in more ways than one.
    fn leave_mark(&self, durable_seq: u64) {
        if !self.marked.swap(true, Ordering::SeqCst) {
            let _ = manifest::write_sync_failed(&self.dir, &self.vfs, SyncFailed::After(durable_seq), self.sync);
        }
    }

    /// `Err(Poisoned)` once a write or sync has failed.
    pub fn check(&self) -> Result<()> {
        // Every path that poisons sets `failed` first: the common case takes no lock (this runs
        // for every write). Set but not yet explained, it still refuses.
        if !self.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let cause = self.lock().poisoned.clone();
        Err(Error::Poisoned { cause: cause.unwrap_or_else(|| EARLIER_FAILURE.into()) })
    }

    /// Makes every transaction written so far durable.
    pub fn sync_written(&self) -> Result<()> {
        let target = self.lock().written_seq;
        self.sync_to(target)
    }

    /// Returns once transaction `target` is durable (or with the error that prevents it).
    pub fn sync_to(&self, target: u64) -> Result<()> {
        self.sync_as(target, false)
    }

    /// As [`sync_to`](Self::sync_to); with `for_waiter`, a failure of the sync this call runs
    /// is kept for the commit waiting on it (see `failed_sync`), which has not run it itself.
    fn sync_as(&self, target: u64, for_waiter: bool) -> Result<()> {
        let mut st = self.lock();
        loop {
            if let Some(cause) = st.poisoned.clone() {
                let its_sync = matches!(st.failed_sync, Some((upto, _)) if target > st.durable_seq && target <= upto);
                return Err(match st.failed_sync.take() {
                    Some((_, failure)) if its_sync => failure.to_error(),
                    _ => Error::Poisoned { cause },
                });
            }
            if st.durable_seq >= target {
                return Ok(());
            }
            if st.syncing {
                st.waiters += 1;
                st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
                st.waiters -= 1;
                continue;
            }
            st.syncing = true;
            let (seg, upto_seq, upto_ops) = (st.active.clone(), st.framed_seq, st.written_ops);
            drop(st);
            let r = {
                let _no_writes = self.sync_gate.write().unwrap_or_else(|e| e.into_inner());
                if self.failed.load(Ordering::SeqCst) {
                    // A roll-over's sync failed (its `poison` is on its way): the same segment
                    // synced again would succeed over pages the disk lost, and this would call
                    // their transactions durable.
                    None
                } else if self.lock().durable_seq >= upto_seq {
                    // A defrag switched logs while this waited for the gate: every transaction
                    // up to `upto_seq` is durable in the new log, and `seg` is no longer part of
                    // the log (a failure syncing it would poison the engine for nothing).
                    Some(Ok(()))
                } else {
                    let r = seg.sync();
                    if r.is_err() {
                        // Before anyone learns of the failure (the waiters, this caller), so
                        // that a process that exits on it has left the mark.
                        let durable = self.lock().durable_seq;
                        self.leave_mark(durable);
                        self.failed.store(true, Ordering::SeqCst);
                    }
                    Some(r)
                }
            };
            st = self.lock();
            st.syncing = false;
            match r {
                None => {
                    // `failed` is raised and, until `poisoned` is set, not yet explained: a
                    // roll-over's sync of the segment it sealed failed, and the `poison` its
                    // transaction calls next leaves `SYNC-FAILED` before it explains. No one may
                    // learn of the failure from here before the mark is on the disk: a process
                    // that exits on this error would leave the log without it, and the next open
                    // would build on pages the disk lost (found by review). Should the
                    // explanation never come (its thread died), the mark is left here after
                    // `UNEXPLAINED_FAILURE_WAIT`: no sync can move `durable_seq` once `failed`
                    // is raised, so it still names the last transaction known durable.
                    let deadline = Instant::now() + UNEXPLAINED_FAILURE_WAIT;
                    while st.poisoned.is_none() {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            let durable = st.durable_seq;
                            drop(st);
                            self.leave_mark(durable);
                            st = self.lock();
                            break;
                        }
                        st = self.cond.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
                    }
                    self.cond.notify_all();
                    let cause = st.poisoned.clone().unwrap_or_else(|| EARLIER_FAILURE.into());
                    return Err(Error::Poisoned { cause });
                }
                Some(Ok(())) => {
                    st.durable_seq = st.durable_seq.max(upto_seq);
                    st.durable_ops = st.durable_ops.max(upto_ops);
                }
                Some(Err(e)) => {
                    if st.poisoned.is_none() {
                        st.poisoned = Some(e.to_string());
                        if for_waiter {
                            st.failed_sync = FailedSync::of(&e).map(|f| (upto_seq, f));
                        }
                    }
                    self.cond.notify_all();
                    return Err(e);
                }
            }
            if st.waiters > 0 {
                self.cond.notify_all();
            }
        }
    }

    /// A kick: sync unless transaction `seq` is durable already (or the engine is poisoned).
    fn sync_if_behind(&self, seq: u64) {
        // Checked here, not left to `sync_as`: on a poisoned engine that would take the kept
        // failure meant for the waiting commit, and answer it `Poisoned` instead.
        {
            let st = self.lock();
            if st.poisoned.is_some() || st.durable_seq >= seq {
                return;
            }
        }
        // A failure poisons the engine; the committing transaction reports it.
        let _ = self.sync_as(seq, true);
    }

    /// A write-back request: starts writing back `seg`'s recent pages, unless a write or
    /// fdatasync of the log has failed (nothing more is done for a failed log).
    fn write_back(&self, seg: &Segment) {
        if self.failed.load(Ordering::SeqCst) || self.lock().poisoned.is_some() {
            return;
        }
        seg.start_writeback();
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
    /// Asks for a sync now (see [`kick`](Self::kick)).
    kick: Sender<u64>,
    /// Asks for the active segment's recent writes to be written back (see
    /// [`write_back`](Self::write_back)).
    writeback: Sender<Arc<Segment>>,
    handle: Option<JoinHandle<()>>,
}

impl Committer {
    pub fn start(dur: Arc<Durability>, interval: Duration) -> Result<Committer> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (kick_tx, kick_rx) = crossbeam_channel::bounded::<u64>(1);
        let (writeback_tx, writeback_rx) = crossbeam_channel::bounded::<Arc<Segment>>(1);
        let handle = std::thread::Builder::new()
            .name("logtree-committer".into())
            .spawn(move || {
                let ticker = if interval.is_zero() { never() } else { tick(interval) };
                loop {
                    select! {
                        recv(stop_rx) -> _ => return,
                        recv(ticker) -> _ => dur.sync_if_pending(),
                        recv(kick_rx) -> seq => if let Ok(seq) = seq { dur.sync_if_behind(seq) },
                        recv(writeback_rx) -> seg => if let Ok(seg) = seg { dur.write_back(&seg) },
                    }
                }
            })
            .map_err(|e| Error::io("start the committer thread", None, e))?;
        Ok(Committer { stop: Some(stop_tx), kick: kick_tx, writeback: writeback_tx, handle: Some(handle) })
    }

    /// Has the thread make transaction `seq` durable now, without waiting for it: a
    /// committing `BatchTx` then frees the view it replaced while the fdatasync runs, instead
    /// of before it. A kick already pending stands for this one (the sync it runs covers
    /// everything written by then); a kick handled after `seq` became durable does nothing.
    pub fn kick(&self, seq: u64) {
        let _ = self.kick.try_send(seq);
    }

    /// Has the thread start writing back what was written to `seg` since it last did, without
    /// waiting (`Segment::start_writeback`). A request already pending stands for this one.
    pub fn write_back(&self, seg: &Arc<Segment>) {
        let _ = self.writeback.try_send(seg.clone());
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
