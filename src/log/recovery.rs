//! Opening the log: read the manifest, verify every frame, replay complete transactions, and
//! decide what a damaged frame means.
//!
//! The rule that separates a torn tail from corruption:
//! - Segments other than the last were fdatasync'd before the next one was begun, so a frame
//!   that does not verify there is corruption.
//! - In the last segment, a frame that does not verify is a torn tail (a write interrupted by a
//!   crash, or zeros where the file system extended the file but never wrote the data) *unless*
//!   a verifying frame of a later transaction lies after it and the damage does not read as a
//!   write that never reached the disk (a zeroed sector, see `lost_write_between`): then bytes
//!   changed on the disk, which no crash does: corruption. A torn tail is cut off (unless
//!   read-only); corruption is reported with file and offset, and nothing is deleted.
//! - After a failed fdatasync, the log ends at the last transaction known durable
//!   (`SYNC-FAILED`, see `manifest::SYNC_FAILED_NAME`). After a failed fdatasync of the open's
//!   own, the last segment is read from the disk, not the page cache (`read_disk_copy`).
//! - A transaction is applied only when its final frame (`FRAME_TX_END`) verified. Its earlier
//!   `FRAME_TX_PART` frames, if the log ends before the final one, are a tail too.
//!
//! Transactions carry consecutive sequence numbers; a frame with a wrong number is corruption.
//! A transaction rolled back after some of its parts were written is closed by a
//! `FRAME_TX_ABORT` frame with its number: its parts are dropped and the next number follows.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    self, DecodeStop, FRAME_HEADER_LEN, FRAME_OPS_AT, FRAME_TX_ABORT, FRAME_TX_END, FRAME_TX_PART, Op,
    SEGMENT_HEADER_LEN,
};
use super::manifest::{self, Manifest, SyncFailed};
use super::segment::{Segment, parse_segment_file_name};
use crate::error::{Error, Result};
use crate::vfs::{OpenMode, Vfs};

/// What opening the log found.
pub struct Recovered {
    /// The log's segments, in order; the last is where appends go.
    pub segments: Vec<Arc<Segment>>,
    /// The manifest's base: the sequence number of the log's first transaction.
    pub base_seq: u64,
    /// The sequence number the next transaction gets.
    pub next_seq: u64,
    /// Complete transactions replayed.
    pub transactions: u64,
    /// Bytes of torn tail found (cut off unless read-only).
    pub torn_bytes: u64,
    /// The torn tail began with a write lost out of order: valid frames followed it.
    pub lost_write: bool,
    /// Where the first frame that does not verify begins: (segment id, offset).
    pub torn_at: Option<(u32, u64)>,
    /// That frame does not read as an interrupted write (see `reads_as_interrupted_write`).
    pub tail_damaged: bool,
    /// The last segment was read from the disk, not the page cache, because an fdatasync of
    /// it failed (this open's, or an earlier open's that left `SYNC-FAILED`).
    pub reread_from_disk: bool,
}

/// Options for [`open_log`].
pub struct OpenOptions<'a> {
    pub dir: &'a Path,
    pub vfs: &'a Arc<dyn Vfs>,
    pub read_only: bool,
    /// `Config::cut_damaged_tail`.
    pub cut_damaged_tail: bool,
    pub sync: bool,
    pub segment_size: u64,
    /// Operations handed to `apply` at a time at least (see [`REPLAY_BATCH_OPS`], the value
    /// to use but in tests of the batching itself).
    pub replay_batch_ops: usize,
}

/// Opens (or, if the directory has no log and is writable, creates) the log in `o.dir`, calling
/// `apply` with the operations of every complete transaction, in order, several consecutive
/// transactions at a time (`o.replay_batch_ops`), and the sequence number of the last of them.
/// A transaction is never split between two calls.
pub fn open_log(
    o: &OpenOptions<'_>,
    mut apply: impl FnMut(u64, &[Op<'_>]) -> std::result::Result<(), DecodeStop>,
) -> Result<Recovered> {
    let Manifest { base_seq, ids } = match manifest::read(o.dir)? {
        Some(m) => m,
        None => return create_log(o),
    };
    // After a failed fdatasync of a segment, the transactions past the last one known durable
    // may be only in the page cache: they are cut as a torn tail would be (`SYNC-FAILED`, see
    // `manifest::SYNC_FAILED_NAME`). A mark that would cut the log's first transaction cannot
    // come from this log but in a new database (whose first transaction, 1, may never have been
    // synced): a log that begins later begins with an image a defrag or a restore synced before
    // the log was in use. Such a mark is stale (written for the log a defrag replaced): obeyed,
    // it would cut every key.
    let mut sync_failed = manifest::read_sync_failed(o.dir)?;
    let stop_after = match sync_failed {
        Some(SyncFailed::After(durable)) if durable >= base_seq || (durable == 0 && base_seq == 1) => Some(durable),
        _ => None,
    };
    // Otherwise, before anything of the last segment is read: what is read of it must be what
    // the disk holds, durably (see `read_disk_copy`).
    let mut reread_from_disk = false;
    if let Some(&last_id) = ids.last()
        && stop_after.is_none()
    {
        let path = o.dir.join(super::segment::segment_file_name(last_id));
        if path.exists() {
            (sync_failed, reread_from_disk) = read_disk_copy(o, &path, sync_failed)?;
        }
    }
    let mut segments = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        let path = o.dir.join(super::segment::segment_file_name(id));
        if !path.exists() {
            return Err(Error::corruption(
                o.dir.join(manifest::MANIFEST_NAME),
                0,
                format!("segment {} listed in the manifest is missing", path.display()),
            ));
        }
        let last = i + 1 == ids.len();
        let capacity = if last && !o.read_only { o.segment_size } else { 0 };
        segments.push(Arc::new(Segment::open(path, o.vfs, id, capacity, o.read_only, o.sync)?));
    }

    let scan = scan(&segments, base_seq, stop_after, o.replay_batch_ops, &mut apply)?;
    if let Some(durable) = stop_after
        && scan.next_seq - 1 < durable
    {
        // Transactions an fdatasync had made durable are missing: the disk lost synced data.
        let (seg, off) = scan.valid_end;
        return Err(Error::corruption(
            &segments[seg].path,
            off,
            format!("the log ends before transaction {durable}, which SYNC-FAILED says was on the disk"),
        ));
    }
    if !o.read_only
        && !o.cut_damaged_tail
        && (scan.tail_damaged || scan.lost_write)
        && let Some((si, off)) = scan.torn_at
    {
        // Nothing is cut: the tail may hold committed transactions (Config::cut_damaged_tail).
        let what = if scan.lost_write {
            "whole transactions follow it: a write lost out of order by a power cut, or damage"
        } else {
            "it shows no mark of an interrupted write: damage, most likely"
        };
        return Err(Error::corruption(
            &segments[si].path,
            off,
            format!("the log's tail does not verify from here ({what}); {}", crate::error::UNCUT_TAIL),
        ));
    }
    // By id: the segments after the end of the last transaction leave the list below.
    let torn_at = scan.torn_at.map(|(si, off)| (segments[si].id, off));
    let last = segments.len() - 1;
    let end_of_data = segments[last].len();
    let (end_seg, end_off) = scan.valid_end;
    let torn_bytes = segments[end_seg + 1..].iter().map(|s| s.len() - SEGMENT_HEADER_LEN).sum::<u64>()
        + (segments[end_seg].len() - end_off);
    if !o.read_only {
        if end_seg < last {
            // An incomplete transaction began in an earlier segment: the segments after the one
            // it began in hold nothing else. Drop them from the log first, then cut the tail.
            let ids: Vec<u32> = segments[..=end_seg].iter().map(|s| s.id).collect();
            manifest::write(o.dir, o.vfs, &Manifest { base_seq, ids }, o.sync)?;
            for s in segments.drain(end_seg + 1..) {
                s.mark_obsolete();
            }
        }
        if end_seg < last || end_off < end_of_data {
            segments[end_seg].truncate(end_off)?; // durably
        }
        remove_leftovers(o, &segments)?;
        if o.sync {
            // Likewise a roll-over's rename of the manifest or creation of a segment whose
            // directory fsync the crash prevented (the log built on from here names them), and
            // the leftovers just removed.
            o.vfs.sync_dir(o.dir).map_err(|e| Error::io("fsync directory", Some(o.dir.to_path_buf()), e))?;
        }
        if sync_failed.is_some() {
            // Only now that the cut is durable.
            manifest::remove_sync_failed(o.dir, o.vfs, o.sync)?;
        }
    }
    Ok(Recovered {
        segments,
        base_seq,
        next_seq: scan.next_seq,
        transactions: scan.transactions,
        torn_bytes,
        lost_write: scan.lost_write,
        torn_at,
        tail_damaged: scan.tail_damaged,
        reread_from_disk,
    })
}

/// Makes what this open reads of the log's last segment (`path`) what the disk holds, durably,
/// before it reads any of it; returns what `SYNC-FAILED` says now, and whether the segment's
/// pages were dropped from the page cache so that it is read from the disk. (Not called when
/// `SYNC-FAILED` names a transaction: the scan stops after it instead.)
///
/// A read-write open fdatasyncs the segment first: what a process wrote before it died may
/// still be only in the page cache, and the log read back is reported durable (`Durability`
/// starts from its last transaction), so a `force_commit` or an empty commit right after the
/// open returns at once and must not acknowledge transactions a power cut would still take.
/// (Earlier segments were synced when they were sealed.)
///
/// If that fdatasync fails — writeback already failed to write some of the dead process's
/// pages, and Linux reports it once, to the next fdatasync of the file — those pages may be in
/// the page cache, marked clean, holding bytes the disk does not: which ones, nothing says.
/// Reading them would build the log on transactions a power cut or an eviction takes later,
/// leaving a gap before what this backend goes on to acknowledge. So the segment's pages are
/// dropped from the page cache and it is read from the disk, cut where the disk's copy ends;
/// and since a failed fdatasync may also have skipped the journal commit and the device's cache
/// flush for what writeback did write (ext4 returns early), a second fdatasync must succeed
/// before the open goes on. Pages that cannot be dropped (dirty, or mapped by another process)
/// fail the open, after leaving `SYNC-FAILED` saying [`SyncFailed::TailUnknown`]: the error
/// was reported once, and a retry that found no mark would read the cached pages again. Every
/// open that finds the mark, read-only ones too, drops the pages and reads the disk's copy, or
/// fails likewise. The drop comes before the mark so that a mark that cannot be written (the
/// same failing disk) does not stop the drop that makes it unnecessary.
fn read_disk_copy(
    o: &OpenOptions<'_>,
    path: &Path,
    sync_failed: Option<SyncFailed>,
) -> Result<(Option<SyncFailed>, bool)> {
    let io = |context: String, e| Error::io(context, Some(path.to_path_buf()), e);
    let mode = if o.read_only { OpenMode::Read } else { OpenMode::ReadWrite };
    let file = o.vfs.open(path, mode).map_err(|e| io("open segment".into(), e))?;
    let syncing = !o.read_only && o.sync;
    let failure = if syncing { file.sync_data().err() } else { None };
    if failure.is_none() && sync_failed != Some(SyncFailed::TailUnknown) {
        return Ok((sync_failed, false));
    }
    if failure.is_none() && !syncing {
        // Dirty pages cannot be dropped, and writing them back changes no byte of the file. (If
        // that fails, the pages it could not write are marked clean and are dropped below.)
        let _ = file.sync_data();
    }
    let dropped = file.drop_cached();
    if let Ok(true) = dropped {
        if failure.is_some()
            && let Err(e) = file.sync_data()
        {
            let marked = mark_tail_unknown(o, sync_failed);
            return Err(io(format!("fdatasync the last segment at open, twice ({marked})"), e));
        }
        return Ok((sync_failed, true));
    }
    let held = match dropped {
        Ok(_) => "its pages could not be dropped from the page cache (dirty, or mapped by a process reading \
                  the database; or the file is not ours to check)"
            .to_string(),
        Err(e) => format!("its pages could not be dropped from the page cache ({e})"),
    };
    let marked = if syncing { mark_tail_unknown(o, sync_failed) } else { "SYNC-FAILED is left".to_string() };
    let why = format!("{held}, where they may hold what the disk lost; {marked}");
    Err(match failure {
        Some(e) => io(format!("fdatasync the last segment at open, and {why}"), e),
        None => io("read the disk's copy of the last segment".into(), std::io::Error::other(why)),
    })
}

/// Leaves `SYNC-FAILED` saying "tail unknown" (over a stale one naming a transaction before the
/// log's beginning); says what became of it, for the error the open returns.
fn mark_tail_unknown(o: &OpenOptions<'_>, sync_failed: Option<SyncFailed>) -> String {
    if sync_failed == Some(SyncFailed::TailUnknown) {
        return "SYNC-FAILED is left, and the next open tries again".into();
    }
    match manifest::write_sync_failed(o.dir, o.vfs, SyncFailed::TailUnknown, o.sync) {
        Ok(()) => "SYNC-FAILED is left, and the next open tries again".into(),
        Err(e) => format!(
            "nor could SYNC-FAILED be written ({e}), so a later open could not tell: drop the page cache \
             (or reboot) before opening again"
        ),
    }
}

/// A directory without a manifest: a new database, or the remains of a creation that crashed
/// before its manifest was written (then its only segment holds nothing but a header).
fn create_log(o: &OpenOptions<'_>) -> Result<Recovered> {
    if o.read_only {
        return Err(Error::io(
            "open read-only",
            Some(o.dir.to_path_buf()),
            std::io::Error::new(ErrorKind::NotFound, "no logtree database here (no MANIFEST)"),
        ));
    }
    // Look at every segment before removing any: an open that reports corruption must have
    // deleted nothing.
    let segments: Vec<PathBuf> = list_dir(o)?
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| parse_segment_file_name(n).is_some()))
        .collect();
    for path in &segments {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len > SEGMENT_HEADER_LEN {
            return Err(Error::corruption(
                o.dir.join(manifest::MANIFEST_NAME),
                0,
                format!("MANIFEST is missing but {} holds data", path.display()),
            ));
        }
    }
    for path in segments {
        o.vfs.remove_file(&path).map_err(|e| Error::io("remove empty segment", Some(path.clone()), e))?;
    }
    let seg = Arc::new(Segment::create(o.dir, o.vfs, 1, o.segment_size, o.sync)?);
    if o.dir.join(manifest::SYNC_FAILED_NAME).exists() {
        // It spoke of a log that is not there; left, it would cut the new one. (The manifest's
        // directory fsync below makes the removal durable.)
        manifest::remove_sync_failed(o.dir, o.vfs, false)?;
    }
    manifest::write(o.dir, o.vfs, &Manifest { base_seq: 1, ids: vec![1] }, o.sync)?;
    remove_leftovers(o, std::slice::from_ref(&seg))?;
    Ok(Recovered {
        segments: vec![seg],
        base_seq: 1,
        next_seq: 1,
        transactions: 0,
        torn_bytes: 0,
        lost_write: false,
        torn_at: None,
        tail_damaged: false,
        reread_from_disk: false,
    })
}

fn list_dir(o: &OpenOptions<'_>) -> Result<Vec<PathBuf>> {
    o.vfs.read_dir(o.dir).map_err(|e| Error::io("list directory", Some(o.dir.to_path_buf()), e))
}

/// Removes what an interrupted roll-over, manifest update or defrag left behind: segments the
/// manifest does not list, and temporary files. The caller fsyncs the directory.
fn remove_leftovers(o: &OpenOptions<'_>, live: &[Arc<Segment>]) -> Result<()> {
    for path in list_dir(o)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let stray_segment = parse_segment_file_name(name).is_some_and(|id| !live.iter().any(|s| s.id == id));
        let ours_tmp = name.ends_with(".tmp")
            && (name.starts_with("seg-") || name.starts_with("MANIFEST") || name == manifest::SYNC_FAILED_TMP);
        if stray_segment || ours_tmp {
            o.vfs.remove_file(&path).map_err(|e| Error::io("remove leftover file", Some(path.clone()), e))?;
        }
    }
    Ok(())
}

struct Scan {
    /// (segment index, offset) just past the last complete transaction.
    valid_end: (usize, u64),
    next_seq: u64,
    transactions: u64,
    /// The scan stopped at damage that a verifying frame follows: a write lost out of order.
    lost_write: bool,
    /// (segment index, offset) of the frame that did not verify, where the scan stopped.
    torn_at: Option<(usize, u64)>,
    /// That frame does not read as an interrupted write.
    tail_damaged: bool,
}

/// A transaction whose `FRAME_TX_PART` frames have been seen but not its final frame.
struct Pending<'a> {
    seq: u64,
    /// (segment index, file offset of the frame's ops, the ops)
    parts: Vec<(usize, u64, &'a [u8])>,
}

/// Verifies every frame of `segments` in order and replays complete transactions.
fn scan<'a>(
    segments: &'a [Arc<Segment>],
    base_seq: u64,
    stop_after: Option<u64>,
    batch_ops: usize,
    apply: &mut impl FnMut(u64, &[Op<'_>]) -> std::result::Result<(), DecodeStop>,
) -> Result<Scan> {
    let last = segments.len() - 1;
    // The number the next transaction must have; the manifest says where the log begins, so a
    // log that lost its first frames is detected too.
    let mut expected = base_seq;
    let mut pending: Option<Pending<'a>> = None;
    let mut valid_end = (0usize, SEGMENT_HEADER_LEN);
    let mut transactions = 0u64;
    let mut lost_write = false;
    let mut torn_at = None;
    let mut tail_damaged = false;
    // Operations of complete transactions not yet handed to `apply`: consecutive transactions
    // are applied together (see `REPLAY_BATCH_OPS`).
    let mut ops: Vec<Op<'a>> = Vec::new();
    let mut batch: Option<Batched> = None;

    'segments: for (si, seg) in segments.iter().enumerate() {
        let data = seg.written();
        let mut off = SEGMENT_HEADER_LEN as usize;
        while off < data.len() {
            if pending.is_none() && stop_after.is_some_and(|s| expected > s) {
                break 'segments; // past the last transaction known durable: cut like a torn tail
            }
            let Some(frame) = format::parse_frame(&data[off..]) else {
                if si != last {
                    return Err(Error::corruption(
                        &seg.path,
                        off as u64,
                        "frame does not verify in a segment that was sealed (synced) before the next began",
                    ));
                }
                let min_seq = pending.as_ref().map_or(expected, |p| p.seq);
                if let Some(at) = verifying_frame_after(data, off, Some(min_seq)) {
                    if !lost_write_between(data, off, at, min_seq) {
                        return Err(Error::corruption(
                            &seg.path,
                            off as u64,
                            format!("frame does not verify, yet a valid frame follows at offset {at}"),
                        ));
                    }
                    lost_write = true;
                } else {
                    tail_damaged = !reads_as_interrupted_write(data, off, min_seq);
                }
                torn_at = Some((si, off as u64));
                break 'segments; // a torn tail
            };
            // A frame that verifies but does not follow is no torn write: frames or segments
            // are missing or out of place. Each transaction's frames are numbered 0, 1, 2…
            let (want_seq, want_part) = match &pending {
                Some(p) => (p.seq, p.parts.len() as u32),
                None => (expected, 0),
            };
            if frame.seq != want_seq || frame.part != want_part {
                return Err(Error::corruption(
                    &seg.path,
                    off as u64,
                    format!(
                        "frame {} of transaction {} found where frame {want_part} of transaction {want_seq} was expected",
                        frame.part, frame.seq
                    ),
                ));
            }
            off += frame.total_len;
            expected = frame.seq + 1;
            if frame.kind == FRAME_TX_ABORT {
                // Rolled back after some parts were written: drop them.
                pending = None;
                valid_end = (si, off as u64);
                continue;
            }
            let ops_at = (off - frame.total_len + FRAME_OPS_AT) as u64;
            let p = pending.get_or_insert_with(|| Pending { seq: frame.seq, parts: Vec::new() });
            p.parts.push((si, ops_at, frame.ops));
            if frame.kind == FRAME_TX_PART {
                continue;
            }
            debug_assert_eq!(frame.kind, FRAME_TX_END);
            let p = pending.take().unwrap_or(Pending { seq: frame.seq, parts: Vec::new() });
            let first_part = p.parts.first().map_or((si, ops_at), |&(psi, at, _)| (psi, at));
            batch.get_or_insert(Batched { first_seq: p.seq, last_seq: p.seq, at: first_part }).last_seq = p.seq;
            for &(psi, at, body) in &p.parts {
                let seg = &segments[psi];
                let r = format::decode_ops(body, seg.id, at, |op| {
                    ops.push(op);
                    Ok(())
                });
                if let Err(stop) = r {
                    let i = match stop {
                        DecodeStop::Malformed(i) => i as u64,
                        DecodeStop::Rejected(_) => 0,
                    };
                    return Err(Error::corruption(&seg.path, at + i, "a verified frame holds a malformed operation"));
                }
            }
            if ops.len() >= batch_ops {
                flush(segments, &mut ops, &mut batch, apply)?;
            }
            transactions += 1;
            valid_end = (si, off as u64);
        }
    }
    flush(segments, &mut ops, &mut batch, apply)?;
    // The parts of an unfinished transaction lie beyond `valid_end` and are cut off with the
    // tail, so its number is free again: the next transaction takes it.
    let next_seq = pending.as_ref().map_or(expected, |p| p.seq);
    Ok(Scan { valid_end, next_seq, transactions, lost_write, torn_at, tail_damaged })
}

/// Complete transactions are handed to `apply` in runs of at least this many operations (or
/// what is left at the end of the log) rather than one at a time. The caller can then order a
/// whole run by key before inserting it (see the backend's `replay`): a log written in random
/// key order otherwise makes nearly every insert a cache miss and a shift in the middle of a
/// node, which was most of the time a reopen took. A run holds about 40 bytes per operation,
/// so the cap bounds recovery's extra memory (about 40 MiB) whatever the log's length.
pub const REPLAY_BATCH_OPS: usize = 1 << 20;

/// The transactions whose operations wait in the run, for error messages.
struct Batched {
    first_seq: u64,
    last_seq: u64,
    /// (segment index, file offset) of the first transaction's operations.
    at: (usize, u64),
}

/// Hands the run of complete transactions' operations to `apply` and empties it.
fn flush<'a>(
    segments: &'a [Arc<Segment>],
    ops: &mut Vec<Op<'a>>,
    batch: &mut Option<Batched>,
    apply: &mut impl FnMut(u64, &[Op<'_>]) -> std::result::Result<(), DecodeStop>,
) -> Result<()> {
    let Some(b) = batch.take() else { return Ok(()) };
    let result = apply(b.last_seq, ops);
    ops.clear();
    result.map_err(|stop| {
        let why = match stop {
            DecodeStop::Rejected(why) => why,
            DecodeStop::Malformed(_) => "malformed operation",
        };
        let which = if b.first_seq == b.last_seq {
            format!("transaction {}", b.first_seq)
        } else {
            format!("one of transactions {}..={}", b.first_seq, b.last_seq)
        };
        Error::corruption(&segments[b.at.0].path, b.at.1, format!("{which} cannot be applied: {why}"))
    })
}

/// Sectors a write may be torn into: the smallest a disk persists on its own.
const SECTOR: usize = 512;

/// Whether the damage from `from` (the start of the first frame that does not verify, expected
/// to be of transaction `seq`) up to `to` (a frame that does) reads as a write that never
/// reached the disk rather than as bytes that changed on it: the bytes from `from` to the end of
/// its sector are zeros — 8 at least (a frame's CRC and length, never both zero, and no single
/// flipped bit zeroes them), or fewer with the frame's sequence number, in the next sector,
/// intact — or a whole sector between them is.
///
/// Why: the transactions written since the last fdatasync reach the disk in no particular order
/// — pages are written back, and sectors persisted by the device, as they come — so a power cut
/// during a sync can keep a later page and lose an earlier one, which then reads as what the
/// disk held before: zeros past the log's end (the space is reserved or newly allocated). None
/// of those transactions was acknowledged, so this is a torn tail to cut, not corruption, though
/// valid frames follow. A flipped or rotted byte in data the disk held leaves no zeroed sector,
/// and stays `Error::Corruption`. (etcd's WAL decoder tells a torn write from a CRC mismatch the
/// same way.) The price: a frame holding a sector's worth of zeros of its own (a value of
/// zeros), damaged on the disk after it was synced, is cut with what follows it rather than
/// reported.
fn lost_write_between(data: &[u8], from: usize, to: usize, seq: u64) -> bool {
    let head_end = (from / SECTOR + 1) * SECTOR;
    let head_zero = head_end <= to && data[from..head_end].iter().all(|&b| b == 0);
    if head_zero && (head_end - from >= 8 || format::read_u64(data, from + 8) == Some(seq)) {
        return true;
    }
    let mut s = head_end;
    while s + SECTOR <= to {
        if data[s..s + SECTOR].iter().all(|&b| b == 0) {
            return true;
        }
        s += SECTOR;
    }
    false
}

/// Whether the frame at `off` of the last segment (expected to be of transaction `seq`), which
/// does not verify and has no verifying frame after it, carries a mark an interrupted write
/// leaves:
/// - the file ends inside its header, or inside the frame its length claims (a cut);
/// - its header is zeros, or its length is (never written: the space past the log's end is
///   zeros);
/// - its first bytes, up to the next 64-byte boundary, are zeros, the rest of the header
///   intact with the expected sequence number: glibc's `memcpy` into the map stores a copy's
///   unaligned head last (its aligned middle and its tail first), so a process killed while
///   that store waits on a page fault (the page was write-protected by the last fdatasync)
///   leaves exactly that; a power cut that loses the sector or page holding the head does too;
/// - it ends in a zero byte (a write-back cut short, or a `pwrite` cut, stores a prefix), or
///   it holds a zeroed sector (one the disk never got, as `lost_write_between`).
///
/// And it is never one when the frame verifies with one bit of its length changed: the frame
/// is whole and only its length field was damaged (which otherwise reads as a cut when the
/// length grew past the file's end, or ends the frame early on a zero byte).
///
/// A torn tail is cut either way by default (no crash can be told apart from this damage for
/// certain, and the rule in the module's comment stands); this tells
/// `RecoveryStats::tail_damaged`, so that `logtree check` can report a tail that no
/// interrupted write explains, and `Config::cut_damaged_tail` refuse it. A flipped byte in the
/// body of the last transaction of a cleanly closed log reads as damage. A value ending in a
/// zero byte, or holding an aligned 512 bytes of zeros, makes such damage read as an
/// interrupted write: the rule errs towards not crying wolf after a crash, as etcd's
/// torn-write test (a zeroed sector) does.
fn reads_as_interrupted_write(data: &[u8], off: usize, seq: u64) -> bool {
    const COPY_ALIGN: usize = 64;
    let rest = &data[off..];
    let Some(header) = rest.get(..FRAME_HEADER_LEN) else { return true };
    let len = format::read_u32(header, 4).unwrap_or(0);
    if header.iter().all(|&b| b == 0) {
        return true;
    }
    if len == 0 {
        // Never written — unless one flipped bit zeroed it (a payload of a power of two).
        return !verifies_with_another_length(rest, 0);
    }
    let head = (off / COPY_ALIGN + 1) * COPY_ALIGN - off;
    if head <= 8 && header[..head].iter().all(|&b| b == 0) && format::read_u64(header, 8) == Some(seq) {
        return true;
    }
    if (len as usize) < format::FRAME_PREFIX_LEN || len > format::MAX_FRAME_PAYLOAD {
        return false; // a length no writer writes
    }
    if verifies_with_another_length(rest, len) {
        return false;
    }
    let Some(frame) = rest.get(..FRAME_HEADER_LEN + len as usize) else { return true };
    // A zeroed sector within the frame: the rule of a lost write (its other half, zeros from
    // the frame's start to its sector's end, is covered by the zero length and head rules above).
    frame.last() == Some(&0) || lost_write_between(data, off, off + frame.len(), seq)
}

/// Whether the frame at the start of `b`, whose header says `len`, verifies with one of the 32
/// lengths one bit away. One pass of CRC over the longest that fits: the CRC of each shorter
/// prefix is kept on the way and combined with its length's 4 bytes (the CRC covers the length,
/// then the rest), so a tail costs one CRC of itself at most, however its length is damaged.
fn verifies_with_another_length(b: &[u8], len: u32) -> bool {
    let Some(crc) = format::read_u32(b, 0) else { return false };
    let mut lens: Vec<u32> = (0..32)
        .map(|bit| len ^ (1 << bit))
        .filter(|&l| {
            (l as usize) >= format::FRAME_PREFIX_LEN
                && l <= format::MAX_FRAME_PAYLOAD
                && FRAME_HEADER_LEN + l as usize <= b.len()
        })
        .collect();
    lens.sort_unstable();
    // The CRC covers bytes 4.. of the frame: the length, then the sequence number and payload.
    let mut body = crc32fast::Hasher::new();
    let mut hashed = 8;
    lens.into_iter().any(|l| {
        let end = FRAME_HEADER_LEN + l as usize;
        body.update(&b[hashed..end]);
        hashed = end;
        let mut h = crc32fast::Hasher::new();
        h.update(&l.to_le_bytes());
        h.combine(&body);
        h.finalize() == crc
    })
}

/// Looks for a frame that verifies anywhere after a damaged one at `from`. With a known
/// sequence number the candidates are filtered cheaply before their CRC is computed, so this
/// stays linear on real data.
fn verifying_frame_after(data: &[u8], from: usize, min_seq: Option<u64>) -> Option<usize> {
    // Bytes the candidates' CRCs may cover. Every offset of a crafted tail can look like a
    // plausible header of a frame running to the segment's end, which made the search
    // quadratic (found by review: a 4 MiB segment took 5.9 s to open, a 64 MiB one would take
    // hours). Real data rarely holds one plausible header that does not verify, let alone
    // thousands. Past the budget the search gives up: the damage is then taken for a torn
    // tail (and `reads_as_interrupted_write` judges it) rather than for damage with frames
    // after it — the cost of a bound, only for a tail so made.
    let mut budget = 4 * (data.len() - from) + (16 << 20);
    let mut p = from + 1;
    while p + FRAME_HEADER_LEN < data.len() {
        let len = format::read_u32(data, p + 4).unwrap_or(0) as usize;
        let seq = format::read_u64(data, p + 8).unwrap_or(0);
        let plausible_len =
            len > 0 && len <= format::MAX_FRAME_PAYLOAD as usize && p + FRAME_HEADER_LEN + len <= data.len();
        let plausible_seq = min_seq.is_none_or(|m| seq >= m && seq - m < (1 << 24));
        if plausible_len && plausible_seq {
            let left = budget.checked_sub(len)?;
            budget = left;
            if format::parse_frame(&data[p..]).is_some() {
                return Some(p);
            }
        }
        p += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::StdVfs;

    /// The zeroed stretches that read as a lost write, down to a frame starting in the last
    /// bytes of a lost sector (its sequence number then lies in the next one), and those that
    /// do not.
    #[test]
    fn lost_writes_are_told_from_changed_bytes() {
        let mut data = vec![0xA5u8; 2048];
        let seq = 77u64;
        // A frame at 508 whose first 4 bytes lie in a lost sector, its seq at 516..524.
        data[508..512].fill(0);
        data[516..524].copy_from_slice(&seq.to_le_bytes());
        assert!(lost_write_between(&data, 508, 1200, seq));
        assert!(!lost_write_between(&data, 508, 1200, seq + 1), "another transaction's number");
        assert!(!lost_write_between(&data, 508, 510, seq), "the valid frame inside the sector");
        // 8 zeros or more to the sector's end.
        data[1016..1024].fill(0);
        assert!(lost_write_between(&data, 1016, 1500, 0));
        data[1016] = 1;
        assert!(!lost_write_between(&data, 1016, 1500, 0), "a byte that is not zero");
        // A whole zeroed sector further on, and one that is cut by `to`.
        data[1536..2048].fill(0);
        assert!(lost_write_between(&data, 1016, 2048, 0));
        assert!(!lost_write_between(&data, 1016, 2047, 0));
        // The ends of the data, and a segment shorter than a sector.
        assert!(!lost_write_between(&data, 2047, 2048, 0));
        assert!(!lost_write_between(&[0u8; 100], 40, 100, 0));
    }

    /// The marks of an interrupted write, each alone, on a whole frame of 1,200 bytes at 100
    /// (no sector within it zeroed) whose checksum fails; and the frame with none of them.
    #[test]
    fn interrupted_writes_are_told_from_changed_bytes() {
        let mut data = vec![0u8; 100];
        let len = 1_200u32 - FRAME_HEADER_LEN as u32;
        data.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes()); // a CRC that fails
        data.extend_from_slice(&len.to_le_bytes());
        data.extend_from_slice(&5u64.to_le_bytes());
        data.extend(std::iter::repeat_n(0x61u8, len as usize));
        let whole = data.clone();
        assert!(!reads_as_interrupted_write(&whole, 100, 5), "a whole frame with a byte changed");
        // The file ends inside the frame, or inside its header.
        assert!(reads_as_interrupted_write(&whole[..whole.len() - 1], 100, 5));
        assert!(reads_as_interrupted_write(&whole[..110], 100, 5));
        // Its last byte never written.
        let mut d = whole.clone();
        *d.last_mut().unwrap() = 0;
        assert!(reads_as_interrupted_write(&d, 100, 5));
        // A sector within it never written (512..1024), and a stretch of zeros that is not one.
        let mut d = whole.clone();
        d[512..1024].fill(0);
        assert!(reads_as_interrupted_write(&d, 100, 5));
        let mut d = whole.clone();
        d[513..1025].fill(0);
        assert!(!reads_as_interrupted_write(&d, 100, 5));
        // Its header zeros, or its length zeros; or a length no writer writes (damage).
        let mut d = whole.clone();
        d[100..100 + FRAME_HEADER_LEN].fill(0);
        assert!(reads_as_interrupted_write(&d, 100, 5));
        let mut d = whole.clone();
        d[104..108].fill(0);
        assert!(reads_as_interrupted_write(&d, 100, 5));
        let mut d = whole.clone();
        d[104..108].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!reads_as_interrupted_write(&d, 100, 5));
        // Zeros from the frame on, as the space reserved past the log's end reads.
        assert!(reads_as_interrupted_write(&vec![0u8; 4096], 100, 5));
    }

    /// A frame whose head (up to the next 64-byte boundary, here the page's end) was never
    /// stored, as glibc's memcpy leaves a frame across a write-protected page when the process
    /// is killed during the fault: an interrupted write, if its sequence number is the one
    /// expected. And a whole frame whose length alone was damaged, up or down: never one.
    #[test]
    fn a_lost_head_is_interrupted_and_a_damaged_length_is_not() {
        let at = 4094;
        let mut data = vec![0x61u8; at];
        let mut frame = vec![0u8; FRAME_HEADER_LEN];
        frame.push(FRAME_TX_END);
        frame.extend_from_slice(&0u32.to_le_bytes());
        frame.extend(std::iter::repeat_n(0x62u8, 3000));
        format::seal_frame(&mut frame, 9);
        data.extend_from_slice(&frame);
        assert!(format::parse_frame(&data[at..]).is_some());
        let mut d = data.clone();
        d[at..at + 2].fill(0);
        assert!(reads_as_interrupted_write(&d, at, 9), "the 2 bytes of the head lost");
        assert!(!reads_as_interrupted_write(&d, at, 10), "another transaction's number");
        // A head of 6 bytes (a frame at 4090): its length's low bytes lost too.
        let mut d6 = vec![0x61u8; 4090];
        d6.extend_from_slice(&frame);
        d6[4090..4096].fill(0);
        assert!(reads_as_interrupted_write(&d6, 4090, 9));
        // Zeros that do not reach the boundary are no lost head.
        let mut d = data.clone();
        d[at] = 0;
        assert!(!reads_as_interrupted_write(&d, at, 9));
        // A payload of a power of two, whose length one flipped bit makes zero.
        let mut p2 = vec![0u8; FRAME_HEADER_LEN];
        p2.push(FRAME_TX_END);
        p2.extend_from_slice(&0u32.to_le_bytes());
        p2.extend(std::iter::repeat_n(0x63u8, 128 - 5));
        format::seal_frame(&mut p2, 9);
        assert!(format::parse_frame(&p2).is_some());
        p2[4..8].fill(0);
        assert!(!reads_as_interrupted_write(&p2, 0, 9), "a length zeroed by one flipped bit");
        // The length, one bit up (past the file's end) or down (its last byte then a zero of
        // the encoding, as the operations' lengths hold).
        for bit in [0, 4, 9, 16, 27] {
            let mut d = data.clone();
            d[at + 4..at + 8].copy_from_slice(&((frame.len() - FRAME_HEADER_LEN) as u32 ^ (1 << bit)).to_le_bytes());
            assert!(!reads_as_interrupted_write(&d, at, 9), "length bit {bit} flipped");
        }
    }

    use crate::{Backend, Config};

    /// Replays the log in `dir` handing `apply` at least `batch_ops` operations at a time;
    /// returns each call's last sequence number and operations, as owned debug strings.
    fn replay_calls(dir: &Path, batch_ops: usize) -> Vec<(u64, Vec<String>)> {
        let vfs: Arc<dyn Vfs> = Arc::new(StdVfs);
        let o = OpenOptions {
            dir,
            vfs: &vfs,
            read_only: true,
            cut_damaged_tail: true,
            sync: false,
            segment_size: 1 << 20,
            replay_batch_ops: batch_ops,
        };
        let mut calls = Vec::new();
        open_log(&o, |seq, ops| {
            calls.push((seq, ops.iter().map(|op| format!("{op:?}")).collect()));
            Ok(())
        })
        .unwrap();
        calls
    }

    /// Batching transactions for replay changes neither which operations are replayed nor their
    /// order, and never splits a transaction: every call ends where a transaction ends.
    #[test]
    fn replay_batches_whole_transactions_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.segment_size = 4096; // several segments, and transactions split into parts
        let db = Backend::open(config).unwrap();
        for t in 0..40u32 {
            let mut tx = db.batch_tx();
            if t % 10 == 0 {
                tx.create_bucket(format!("b{t}")).unwrap();
            }
            for i in 0..(t % 7) {
                tx.put(format!("b{}", t / 10 * 10), format!("k{}", (t * 13 + i) % 17), vec![t as u8; 300]).unwrap();
            }
            if t % 3 == 0 {
                tx.delete(format!("b{}", t / 10 * 10), format!("k{}", t % 17)).unwrap();
            }
            if t == 25 {
                tx.delete_bucket("b10").unwrap();
            }
            tx.commit().unwrap();
        }
        db.close().unwrap();

        let one_by_one = replay_calls(dir.path(), 1);
        let ends: Vec<u64> = one_by_one.iter().map(|(seq, _)| *seq).collect();
        let all: Vec<String> = one_by_one.iter().flat_map(|(_, ops)| ops.clone()).collect();
        assert!(one_by_one.len() >= 30, "one call per non-empty transaction: {}", one_by_one.len());
        for batch in [2, 5, 16, 1 << 20] {
            let calls = replay_calls(dir.path(), batch);
            let flat: Vec<String> = calls.iter().flat_map(|(_, ops)| ops.clone()).collect();
            assert_eq!(flat, all, "batch {batch}: the same operations in the same order");
            for (seq, ops) in &calls[..calls.len() - 1] {
                assert!(ops.len() >= batch, "batch {batch}: a call before the last holds {} ops", ops.len());
                assert!(ends.contains(seq), "batch {batch}: call ends inside a transaction ({seq})");
            }
            assert_eq!(calls.last().map(|c| c.0), ends.last().copied(), "batch {batch}");
        }
        assert_eq!(replay_calls(dir.path(), 1 << 20).len(), 1);
    }
}
