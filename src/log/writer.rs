//! Appending transactions to the log.
//!
//! The writer builds the current transaction's frame in memory. Because there is one writer,
//! it knows where that frame will land on disk (the active segment's end) before writing it,
//! so every put can tell the index the final place of its value at once; until the frame is
//! written, [`LogWriter::resolve`] serves those places from the buffer (a `BatchTx` reads its
//! own writes). The frame is appended when the transaction ends (copied into the segment's writable map, or
//! one `pwrite` above 16 KiB: see `segment.rs`), or earlier
//! as a `FRAME_TX_PART` when it grows past [`CHUNK_TARGET`] or would cross the segment's
//! capacity. Durability (fdatasync) is not the writer's business: see `backend::commit`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use super::format::{
    self, CHUNK_TARGET, FRAME_HEADER_LEN, FRAME_OPS_AT, FRAME_TX_ABORT, FRAME_TX_END, FRAME_TX_PART, SEGMENT_HEADER_LEN,
};
use super::manifest::{self, Manifest};
use super::prefault::Prefaulter;
use super::segment::Segment;
use super::settle::Settler;
use crate::error::{Error, Result};
use crate::index::ValueRef;
use crate::vfs::Vfs;

/// The log's segments in order (ids ascending), as one immutable, shareable list. A reader
/// holds one so that every segment its view points into stays mapped.
pub type SegmentSet = Arc<Vec<Arc<Segment>>>;

/// The segment with `id` in `set`.
pub fn find_segment(set: &[Arc<Segment>], id: u32) -> Option<&Arc<Segment>> {
    // Few segments, and the last is the usual target.
    match set.last() {
        Some(s) if s.id == id => Some(s),
        _ => set.binary_search_by_key(&id, |s| s.id).ok().map(|i| &set[i]),
    }
}

/// A place in the log: a segment and an offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPos {
    pub seg: u32,
    pub off: u64,
}

/// Settings of a writer.
#[derive(Clone)]
pub struct WriterConfig {
    pub dir: PathBuf,
    pub vfs: Arc<dyn Vfs>,
    pub sync: bool,
    pub segment_size: u64,
    /// The next unused segment id, shared by every writer of the directory (the log's and a
    /// defrag's), so that ids never collide and stay ascending in log order.
    pub segment_ids: Arc<AtomicU32>,
    /// Raised when a write or fdatasync of the log failed (the engine is poisoned): nothing may
    /// be written after that, and a failed fdatasync must not be retried by a roll-over.
    pub failed: Arc<AtomicBool>,
    /// Each write of the log holds this shared, with its check of `failed`; a background
    /// fdatasync (the committer's, another thread's commit) and a roll-over of the log's own
    /// writer (which syncs the segment it seals) hold it exclusively and raise `failed` before
    /// letting go if the sync failed. (The prefault thread also holds it shared, a 64 KiB chunk
    /// at a time, and only tries to: see `prefault.rs`.) So a write either ends before such a
    /// sync begins or begins after it ended and sees its failure: no write lands after a
    /// failed fdatasync, even one that started before the failure was known. (Without it a
    /// write that passed the check could be stalled, resumed after the failure, and leave a
    /// valid frame behind the pages the kernel dropped: corruption after a power cut.)
    pub sync_gate: Arc<RwLock<()>>,
    /// Whether a roll-over lists the new segment in the manifest. False for a defrag's writer,
    /// whose segments join the log only when the defrag switches over.
    pub in_manifest: bool,
}

pub struct LogWriter {
    cfg: WriterConfig,
    segments: SegmentSet,
    next_seq: u64,
    /// The sequence number of the log's first frame, once there is one (the manifest's base).
    first_seq: Option<u64>,
    /// The frame being built: `FRAME_HEADER_LEN` bytes of header to fill in, the kind byte,
    /// then operations. Empty when no transaction has written an operation yet.
    buf: Vec<u8>,
    /// File offset in the active segment where `buf` will be written.
    buf_off: u64,
    /// How many `FRAME_TX_PART` frames of the current transaction are on disk.
    parts: u32,
    /// Faults in the active segment's pages ahead of the appends (see `prefault.rs`).
    prefaulter: Prefaulter,
    /// Reads the segments this writer seals again in huge pages (see `settle.rs`).
    settler: Settler,
}

impl LogWriter {
    /// A writer appending to `segments` (the last is the active one). `first_seq` is the
    /// sequence number of the log's first frame, if it has any.
    pub fn new(cfg: WriterConfig, segments: Vec<Arc<Segment>>, next_seq: u64, first_seq: Option<u64>) -> LogWriter {
        assert!(!segments.is_empty(), "a log has at least one segment");
        let prefaulter = Prefaulter::new(cfg.failed.clone(), cfg.sync_gate.clone());
        LogWriter {
            cfg,
            segments: Arc::new(segments),
            next_seq,
            first_seq,
            buf: Vec::new(),
            buf_off: 0,
            parts: 0,
            prefaulter,
            settler: Settler::default(),
        }
    }

    /// The manifest that describes this log.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            base_seq: self.first_seq.unwrap_or(self.next_seq),
            ids: self.segments.iter().map(|s| s.id).collect(),
        }
    }

    pub fn segments(&self) -> &SegmentSet {
        &self.segments
    }

    pub fn active(&self) -> &Arc<Segment> {
        self.segments.last().expect("a log has at least one segment")
    }

    /// The end of the last transaction written.
    pub fn end(&self) -> LogPos {
        let a = self.active();
        LogPos { seg: a.id, off: a.len() }
    }

    /// The sequence number the next transaction gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sets the next transaction's sequence number (a defrag replaying transactions keeps
    /// their numbers). Only between transactions.
    pub fn set_next_seq(&mut self, seq: u64) {
        debug_assert!(self.tx_is_empty());
        self.next_seq = seq;
    }

    pub fn config(&self) -> &WriterConfig {
        &self.cfg
    }

    /// See [`WriterConfig::in_manifest`].
    pub fn set_in_manifest(&mut self, yes: bool) {
        self.cfg.in_manifest = yes;
    }

    /// Creates a segment with a fresh id and the given capacity, not listed anywhere yet.
    pub fn create_segment(cfg: &WriterConfig, capacity: u64) -> Result<Segment> {
        // Never wraps: a segment 0 after segment u32::MAX would make the manifest's list
        // descend, and the next open would refuse the whole log.
        let id = cfg.segment_ids.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| id.checked_add(1)).map_err(
            |id| {
                Error::corruption(
                    cfg.dir.join(manifest::MANIFEST_NAME),
                    0,
                    format!("the log's segment ids are exhausted (the next would be {id}, the last one)"),
                )
            },
        )?;
        Segment::create(&cfg.dir, &cfg.vfs, id, capacity, cfg.sync)
    }

    /// True while the current transaction has written nothing.
    pub fn tx_is_empty(&self) -> bool {
        self.buf.len() <= FRAME_OPS_AT && self.parts == 0
    }

    /// Makes room for an operation of `op_len` bytes in the current frame, flushing a part or
    /// rolling over to a new segment as needed.
    fn reserve(&mut self, op_len: usize) -> Result<()> {
        if self.buf.is_empty() {
            self.start_frame();
        }
        let has_ops = self.buf.len() > FRAME_OPS_AT;
        let fits = |w: &LogWriter| w.buf_off + (w.buf.len() + op_len) as u64 <= w.active().capacity();
        if has_ops && (self.buf.len() + op_len > CHUNK_TARGET || !fits(self)) {
            self.write_frame(FRAME_TX_PART, self.next_seq)?;
            self.parts += 1;
            self.start_frame();
        }
        if !fits(self) {
            self.roll_over(op_len)?;
            self.start_frame();
        }
        Ok(())
    }

    fn start_frame(&mut self) {
        self.buf.clear();
        self.buf.resize(FRAME_OPS_AT, 0);
        self.buf_off = self.active().len();
    }

    fn check_not_failed(&self) -> Result<()> {
        if self.cfg.failed.load(Ordering::SeqCst) {
            return Err(Error::Poisoned { cause: "an earlier write or fdatasync of the log failed".into() });
        }
        Ok(())
    }

    fn write_frame(&mut self, kind: u8, seq: u64) -> Result<()> {
        let _no_sync = self.cfg.sync_gate.read().unwrap_or_else(|e| e.into_inner());
        self.check_not_failed()?;
        self.buf[FRAME_HEADER_LEN] = kind;
        self.buf[FRAME_HEADER_LEN + 1..FRAME_OPS_AT].copy_from_slice(&self.parts.to_le_bytes());
        format::seal_frame(&mut self.buf, seq);
        self.active().append(&self.buf, self.buf_off, Some(&self.prefaulter))?;
        self.first_seq.get_or_insert(seq);
        Ok(())
    }

    /// Seals the active segment (fdatasync, so that recovery may treat any damage in it as
    /// corruption rather than a torn tail) and begins a new one, listed in a new manifest.
    fn roll_over(&mut self, op_len: usize) -> Result<()> {
        // Writes (the new segment's header, the manifest), so it holds the gate like a frame.
        // The log's own writer holds it exclusively, since it also syncs a segment of the log:
        // the prefault thread, which holds the gate shared, must not dirty a page between a
        // failed sync and `failed` (raised here, before the gate is let go, as the committer's
        // sync does). A defrag's writer holds it shared, as before: its segments are not the
        // log's yet (a failure only fails the defrag, and its files are removed), and holding it
        // exclusively would stop the live writer and the committer for its whole sync.
        let gate = &self.cfg.sync_gate;
        let (exclusive, shared) = if self.cfg.in_manifest {
            (Some(gate.write().unwrap_or_else(|e| e.into_inner())), None)
        } else {
            (None, Some(gate.read().unwrap_or_else(|e| e.into_inner())))
        };
        self.check_not_failed()?;
        if let Err(e) = self.active().seal().and_then(|()| self.active().sync()) {
            if self.cfg.in_manifest {
                self.cfg.failed.store(true, Ordering::SeqCst);
            }
            return Err(e);
        }
        let need = SEGMENT_HEADER_LEN + (FRAME_OPS_AT + op_len) as u64;
        let capacity = self.cfg.segment_size.max(need);
        let seg = Arc::new(LogWriter::create_segment(&self.cfg, capacity)?);
        crate::failpoint::hit("rollover:created");
        let mut list: Vec<Arc<Segment>> = self.segments.as_ref().clone();
        list.push(seg.clone());
        let old = std::mem::replace(&mut self.segments, Arc::new(list));
        if self.cfg.in_manifest
            && let Err(e) = manifest::write(&self.cfg.dir, &self.cfg.vfs, &self.manifest(), self.cfg.sync)
        {
            // The rename over MANIFEST may have happened (a failed directory fsync comes after
            // it), so the new segment may be listed: its file must stay. If it is not listed,
            // the next open removes it as a leftover. The error poisons the engine.
            self.segments = old;
            return Err(e);
        }
        drop((exclusive, shared));
        if self.cfg.in_manifest {
            self.settler.request(old.last().expect("a log has at least one segment"));
        }
        Ok(())
    }

    fn here(&self, at_in_buf: usize, len: usize) -> ValueRef {
        ValueRef { seg: self.active().id, off: (self.buf_off + at_in_buf as u64) as u32, len: len as u32 }
    }

    /// Adds a put to the current transaction; returns where its value will lie.
    pub fn put(&mut self, bucket: u32, key: &[u8], value: &[u8]) -> Result<ValueRef> {
        self.reserve(format::put_len(key.len(), value.len()))?;
        let at = format::encode_put(&mut self.buf, bucket, key, value);
        Ok(self.here(at, value.len()))
    }

    pub fn delete(&mut self, bucket: u32, key: &[u8]) -> Result<()> {
        self.reserve(format::KEYED_FIXED + key.len())?;
        format::encode_delete(&mut self.buf, bucket, key);
        Ok(())
    }

    pub fn create_bucket(&mut self, bucket: u32, name: &[u8]) -> Result<()> {
        self.reserve(format::create_bucket_len(name.len()))?;
        format::encode_create_bucket(&mut self.buf, bucket, name);
        Ok(())
    }

    pub fn delete_bucket(&mut self, bucket: u32) -> Result<()> {
        self.reserve(format::DELETE_BUCKET_LEN)?;
        format::encode_delete_bucket(&mut self.buf, bucket);
        Ok(())
    }

    /// Writes the transaction's final frame. Returns its sequence number, or `None` if the
    /// transaction wrote nothing (then no number is used).
    pub fn commit_tx(&mut self) -> Result<Option<u64>> {
        if self.tx_is_empty() {
            self.buf.clear();
            return Ok(None);
        }
        let r = self.write_frame(FRAME_TX_END, self.next_seq);
        self.buf.clear();
        self.parts = 0;
        r?;
        self.next_seq += 1;
        Ok(Some(self.next_seq - 1))
    }

    /// Forgets the current transaction without writing anything: after an I/O failure, when
    /// nothing more may be written. Parts of it already on disk are an unfinished transaction
    /// at the log's end, which recovery cuts off.
    pub fn discard_tx(&mut self) {
        self.buf.clear();
        self.parts = 0;
    }

    /// Drops the current transaction. If parts of it reached the disk, an abort frame with its
    /// sequence number follows them, so that recovery drops them too, and the number is used.
    pub fn abort_tx(&mut self) -> Result<()> {
        self.buf.clear();
        if self.parts == 0 {
            return Ok(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let r = self.write_abort_frame(seq);
        self.parts = 0;
        r
    }

    /// Writes an abort frame for transaction `seq` (a defrag replaying an abandoned one keeps
    /// the sequence without gaps). Only between transactions.
    pub fn write_abort(&mut self, seq: u64) -> Result<()> {
        debug_assert!(self.tx_is_empty());
        self.next_seq = seq + 1;
        self.write_abort_frame(seq)
    }

    /// An abort frame carries, as its part number, how many parts it closes.
    fn write_abort_frame(&mut self, seq: u64) -> Result<()> {
        self.reserve(0)?; // starts a frame, rolling over if the segment is full
        let r = self.write_frame(FRAME_TX_ABORT, seq);
        self.buf.clear();
        r
    }

    /// The bytes of a value, including one of the current, unwritten frame.
    pub fn resolve(&self, v: ValueRef) -> Option<&[u8]> {
        let active = self.active();
        if !self.buf.is_empty() && v.seg == active.id && v.off as u64 >= self.buf_off {
            let start = (v.off as u64 - self.buf_off) as usize;
            return self.buf.get(start..start.checked_add(v.len as usize)?);
        }
        find_segment(&self.segments, v.seg)?.bytes(v.off as u64, v.len as usize)
    }
}
