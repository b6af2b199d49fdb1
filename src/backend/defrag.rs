//! Online defrag: rewrite the live records into new segments while readers and the writer go
//! on, then switch over in a pause of about one fdatasync.
//!
//! 1. Pin the current view `V0` and copy its live records — every bucket's creation and each
//!    key's latest put — into new segments, as one transaction numbered `V0.seq`, building a new
//!    catalog that points into them. The new segments are not in the manifest, so a crash here
//!    leaves strays that the next open removes.
//! 2. Catch up without the writer lock: replay the transactions written meanwhile (read back
//!    from the old log, between the ends of successive views) into the new log with their own
//!    sequence numbers, until a round finds little to do.
//! 3. Take the writer lock (this is the only time the writer waits), replay the last few
//!    transactions, fdatasync the new active segment, and replace the manifest — the atomic
//!    commit point: before it the old log is the log, after it the new one. Then hand the new
//!    log and catalog to the writer, publish the new view and release the lock.
//! 4. The old segments are marked obsolete: each file is removed when the last `ReadTx` or
//!    `Snapshot` that maps it is dropped. A crash before that leaves files the manifest does not
//!    list, which open removes.
//!
//! etcd's defrag rewrites the whole bbolt file while holding every lock (etcd #9222); here the
//! copy runs beside the writer and the switch is bounded by the catch-up's last round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::read_tx::{Values, View};
use crate::error::{Error, Result};
use crate::index::catalog::Catalog;
use crate::log::format::Op;
use crate::log::manifest;
use crate::log::reader::replay_range;
use crate::log::writer::{LogPos, LogWriter};

/// A catch-up round that replays fewer bytes than this is the last before the switch.
const SMALL_CATCH_UP: u64 = 256 << 10;
/// At most this many catch-up rounds without the lock (a writer faster than the copy would
/// otherwise keep the defrag chasing it forever).
const MAX_ROUNDS: u32 = 16;
/// From this many rounds on, a round that replays nine tenths of the one before or more holds
/// the writer back (`Backend::hold_writers_back`) until the defrag ends.
const GIVE_WAY_AFTER: u32 = 2;

/// What a [`Backend::defrag`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefragStats {
    /// [`Backend::size`] before.
    pub size_before: u64,
    /// [`Backend::size`] after (old segments still mapped by a reader are not counted: they
    /// are no longer part of the database and go when the reader does).
    pub size_after: u64,
    /// [`Backend::size_in_use`] after.
    pub size_in_use: u64,
    /// Wall time of the whole defrag.
    pub duration: Duration,
    /// How long the defrag held the writer lock: the longest any `BatchTx` had to wait for it.
    pub longest_writer_pause: Duration,
    /// Catch-up rounds run beside the writer.
    pub catch_up_rounds: u32,
}

/// The log and catalog being built.
struct NewLog {
    log: LogWriter,
    catalog: Catalog,
    /// Bytes of old log replayed by catch-up (to decide when to stop chasing).
    replayed: u64,
    /// The manifest naming the new segments has been (or may have been) renamed into place:
    /// from then on they must not be deleted, whatever happens.
    manifest_attempted: bool,
}

impl NewLog {
    /// Copies a view's live records as one transaction numbered `view.seq`.
    ///
    /// Each bucket's new tree is built bottom up from its keys, which come in order
    /// (`Bucket::load_sorted`), rather than by inserting them one by one: the inserts, their
    /// node growth and splits were about two fifths of a defrag of 500,000 live keys.
    fn copy_image(&mut self, view: &View) -> Result<()> {
        self.log.set_next_seq(view.seq.max(1));
        let mut entries = Vec::new();
        for b in view.catalog.iter() {
            self.log.create_bucket(b.id, &b.name)?;
            self.catalog.create(&b.name, b.id);
            entries.clear();
            // At most this many: `len` would look every key of the layers up in the base.
            entries.reserve(b.len_at_most());
            for (key, v) in b.iter() {
                let value = view.value(v).ok_or_else(|| dangling(view))?;
                entries.push((key, self.log.put(b.id, key, value)?));
            }
            let Some(nb) = self.catalog.get_by_id_mut(b.id) else { continue };
            if !nb.load_sorted(&entries) {
                for &(key, nv) in &entries {
                    nb.put(key, nv);
                }
            }
        }
        // An image with no bucket writes no frame, and the new log would begin after the
        // image's number: a `SYNC-FAILED` naming the image as the last durable transaction
        // would then look older than the log and be ignored as stale, keeping what a failed
        // fdatasync lost (found by review). An abort frame gives the number a place. (Number 0,
        // a database never written, needs none: a new log's first number is 1.)
        if self.log.commit_tx()?.is_none() && view.seq >= 1 {
            self.log.write_abort(view.seq)?;
        }
        Ok(())
    }

    /// Replays the transactions of `view`'s log that end in `(from, view.end]`.
    fn catch_up(&mut self, view: &View, from: LogPos) -> Result<()> {
        replay_range(&view.segments, from, view.end, |seq, ops| {
            let Some(ops) = ops else { return self.log.write_abort(seq) };
            self.log.set_next_seq(seq);
            for op in ops {
                self.apply(view, op)?;
            }
            self.log.commit_tx()?;
            Ok(())
        })
    }

    fn apply(&mut self, view: &View, op: &Op<'_>) -> Result<()> {
        let unknown =
            || Error::corruption(view.segments[0].path.clone(), 0, "replayed operation names an unknown bucket");
        match *op {
            Op::Put { bucket, key, value } => {
                let bytes = view.value(value).ok_or_else(|| dangling(view))?;
                self.replayed += bytes.len() as u64 + key.len() as u64;
                let nv = self.log.put(bucket, key, bytes)?;
                self.catalog.get_by_id_mut(bucket).ok_or_else(unknown)?.put(key, nv);
            }
            Op::Delete { bucket, key } => {
                self.replayed += key.len() as u64;
                self.log.delete(bucket, key)?;
                self.catalog.get_by_id_mut(bucket).ok_or_else(unknown)?.delete(key);
            }
            Op::CreateBucket { bucket, name } => {
                self.log.create_bucket(bucket, name)?;
                self.catalog.create(name, bucket);
            }
            Op::DeleteBucket { bucket } => {
                self.log.delete_bucket(bucket)?;
                let name = self.catalog.get_by_id_mut(bucket).ok_or_else(unknown)?.name.clone();
                self.catalog.remove(&name);
            }
        }
        Ok(())
    }
}

fn dangling(view: &View) -> Error {
    Error::corruption(view.segments[0].path.clone(), 0, "the index points outside the log (an engine bug)")
}

impl Backend {
    /// Rewrites the live records into new segments and drops the old ones, online: readers
    /// never wait, and the writer waits only for the short switch at the end (reported as
    /// [`DefragStats::longest_writer_pause`]). If writers write faster than the defrag copies
    /// what they wrote, each new [`BatchTx`](crate::BatchTx) waits 100 µs before it starts
    /// until the defrag ends, so that it does end (DESIGN.md §9.3). Content and
    /// [`hash`](Backend::hash) are unchanged; [`size`](Backend::size) shrinks to about
    /// [`size_in_use`](Backend::size_in_use).
    ///
    /// Crash-safe at every point: before the switch the old log is the database and the new
    /// files are leftovers; after it, the reverse. Open removes leftovers.
    ///
    /// ```
    /// let (db, _dir) = logtree::Backend::open_temp()?;
    /// let mut tx = db.batch_tx();
    /// tx.create_bucket("b")?;
    /// for i in 0..1000u32 { tx.put("b", i.to_be_bytes(), [0u8; 100])?; }
    /// for i in 0..1000u32 { tx.put("b", i.to_be_bytes(), [1u8; 100])?; }
    /// drop(tx);
    /// let stats = db.defrag()?;
    /// assert!(stats.size_after < stats.size_before);
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn defrag(&self) -> Result<DefragStats> {
        let _only_one = self.defrag_lock().lock().unwrap_or_else(|e| e.into_inner());
        self.check_writable()?;
        if self.holds_writer_on_this_thread() {
            return Err(Error::TxUnusable("defrag needs the writer lock, and this thread holds a BatchTx".into()));
        }
        let Some(wcfg) = self.writer_config() else { return Err(Error::ReadOnly) };
        let started = Instant::now();
        let size_before = self.size();
        let mut cfg = wcfg.clone();
        cfg.in_manifest = false;
        let first = Arc::new(LogWriter::create_segment(&cfg, cfg.segment_size)?);
        let mut new = NewLog {
            log: LogWriter::new(cfg, vec![first], 1, None),
            catalog: Catalog::default(),
            replayed: 0,
            manifest_attempted: false,
        };

        let result = self.build_and_switch(&mut new);
        match result {
            Ok((pause, rounds)) => {
                // The view first: a writer may commit in between, and the files then hold at
                // least what the view counts live.
                let size_in_use = self.current_view().catalog.live_bytes();
                Ok(DefragStats {
                    size_before,
                    size_after: self.size(),
                    size_in_use,
                    duration: started.elapsed(),
                    longest_writer_pause: pause,
                    catch_up_rounds: rounds,
                })
            }
            Err(e) => {
                if !new.manifest_attempted {
                    for s in new.log.segments().iter() {
                        s.mark_obsolete();
                    }
                }
                Err(e)
            }
        }
    }

    /// Steps 1–3 of the module documentation. On success the new log belongs to the writer
    /// (and `new` is left with an empty stand-in); on error nothing has changed.
    fn build_and_switch(&self, new: &mut NewLog) -> Result<(Duration, u32)> {
        let v0 = self.current_view();
        new.copy_image(&v0)?;
        crate::failpoint::hit("defrag:copied");
        let (mut done, mut done_seq) = (v0.end, v0.seq);
        drop(v0);
        let mut rounds = 0;
        let mut last_round = u64::MAX;
        // Dropped (the writer no longer held back) however this returns.
        let _give_way = self.writers_give_way();
        while rounds < MAX_ROUNDS {
            self.check_writable()?;
            let v = self.current_view();
            if v.seq == done_seq {
                break;
            }
            let before = new.replayed;
            new.catch_up(&v, done)?;
            (done, done_seq) = (v.end, v.seq);
            rounds += 1;
            let this_round = new.replayed - before;
            if this_round < SMALL_CATCH_UP {
                break;
            }
            if rounds >= GIVE_WAY_AFTER && this_round * 10 >= last_round * 9 {
                // Not catching up: the writer writes as fast as this replays (DESIGN.md §9.3).
                self.hold_writers_back(true);
            }
            last_round = this_round;
        }

        // Sync what the copy wrote now, so that the fdatasync under the lock has only the last
        // catch-up to write; then catch up with what was written during that sync.
        new.log.active().sync()?;
        crate::failpoint::hit("defrag:synced");
        let v = self.current_view();
        if v.seq != done_seq {
            new.catch_up(&v, done)?;
            (done, done_seq) = (v.end, v.seq);
        }
        drop(v);

        let mut guard = self.lock_writer();
        let paused = Instant::now();
        // What the switch replaces is dropped only after the lock is released: freeing an old
        // index and unmapping old segments can take tens of milliseconds.
        let mut leftovers: Vec<Box<dyn std::any::Any>> = Vec::new();
        let result = (|| {
            self.check_writable()?;
            let v = self.current_view();
            if v.seq != done_seq {
                new.catch_up(&v, done)?;
            }
            let old = guard.log.as_mut().ok_or(Error::ReadOnly)?;
            // Transactions rolled back after the last published one left abort frames that no
            // view's end covers; close their numbers in the new log too, so it has no gap.
            for seq in new.log.next_seq().max(v.seq + 1)..old.next_seq() {
                new.log.write_abort(seq)?;
            }
            // Earlier new segments were synced when the new log rolled over them.
            new.log.active().give_back_reserve()?;
            new.log.active().sync()?;
            new.log.set_next_seq(old.next_seq());
            // No fdatasync of the old log may run from here to the switch, and none may have
            // failed before it: a failure leaves SYNC-FAILED numbering the old log's last
            // durable transaction, which, read with the new log, can lie before the image (the
            // new log's first transaction) and cut it, and with it every key (found by review).
            // A sync waiting for the gate meanwhile runs after `switched`, which has made every
            // transaction it covers durable in the new log.
            let gate = old.config().sync_gate.clone();
            let _no_syncs = gate.write().unwrap_or_else(|e| e.into_inner());
            self.check_writable()?;
            new.manifest_attempted = true;
            let cfg = new.log.config();
            if let Err(e) = manifest::write(&cfg.dir, &cfg.vfs, &new.log.manifest(), cfg.sync) {
                // The rename may or may not have happened: which log is current is unknown
                // until reopen, so nothing more may be written.
                self.poison(&e);
                return Err(e);
            }
            crate::failpoint::hit("defrag:switched");
            // The switch: from here on nothing can fail.
            new.log.set_in_manifest(true);
            let empty = LogWriter::new(new.log.config().clone(), vec![new.log.active().clone()], 1, None);
            let log = std::mem::replace(&mut new.log, empty);
            let mut catalog = std::mem::take(&mut new.catalog);
            if self.is_layered() {
                catalog.set_layered(self.config().layer_entries);
            }
            let old_segments = old.segments().clone();
            // The view's `seq` and `end` must describe the same point of the log: `end` lies
            // after the abort frames just written, so `seq` is the last number used, not
            // `v.seq` (a later defrag copies this view as transaction `seq` and replays from
            // `end`).
            let seq = log.next_seq() - 1;
            self.switched(log.active(), seq);
            let view = View { catalog: catalog.snapshot(), segments: log.segments().clone(), seq, end: log.end() };
            leftovers.push(Box::new(guard.log.replace(log)));
            leftovers.push(Box::new(guard.catalog.reset(catalog)));
            leftovers.push(Box::new(self.publish(view)));
            for s in old_segments.iter() {
                s.mark_obsolete();
            }
            leftovers.push(Box::new(old_segments));
            leftovers.push(Box::new(v));
            Ok(())
        })();
        let pause = paused.elapsed();
        self.release_writer();
        drop(guard);
        crate::failpoint::hit("defrag:before-remove");
        drop(leftovers);
        result.map(|()| (pause, rounds))
    }
}
