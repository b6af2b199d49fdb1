//! Faulting in the pages of the active segment's writable map ahead of the writer, on a thread
//! of its own.
//!
//! The writer copies small frames into a writable shared map of the segment (see
//! `segment.rs`), and the first store into each page traps: the kernel makes the page and the
//! file system marks it dirty. That work was 12–19% of a one-put transaction's time, and only
//! another thread can take it off the writer (DESIGN.md §2.3 has the measurements), on a core
//! the writer does not need.
//!
//! `MADV_POPULATE_WRITE` faults pages in as a write would, without writing a byte, so the
//! contents stay what the writer put there or zeros. What keeps it harmless:
//! - Nothing may write a page holding records after a failed fdatasync (§5 of DESIGN.md: the
//!   kernel may have dropped that page's write-back, and a later write of the page would leave
//!   valid frames behind lost ones). Dirtying a page is such a write, and a request may be
//!   stale (the writer passed its start meanwhile), or share a large folio with the writer's
//!   end. So the thread works in chunks of [`CHUNK`] bytes, each under the writer's sync gate
//!   (shared, as a write of the log holds it) after checking that no write or sync has failed:
//!   the syncs of a live segment (the committer's, a roll-over's) hold the gate exclusively and
//!   raise `failed` before letting it go if they fail, so every chunk either ended before such
//!   a sync or sees its failure and stops. It only tries the gate: while a sync
//!   holds or waits for it, the rest of the request is dropped, so a sync waits for at most
//!   one chunk.
//! - Requests start at a [`ALIGN`] boundary after the writer's end and stay below the file
//!   space the writer reserved, where the file exists. Past the file's end (the segment was
//!   sealed and its reserve given back meanwhile) the kernel answers `EFAULT` instead of raising
//!   `SIGBUS`, and the chunk is dropped.
//! - The request holds the map weakly: while a chunk is faulted in the thread holds it, so it
//!   stays mapped; once the segment has let go of it (sealed, or dropped), the rest of the
//!   request is dropped, so a sealed segment's clean pages are not dirtied again (the settler
//!   reads them again, `settle.rs`).
//!
//! The pages it dirties are zeros beyond the log's end: an fdatasync writes them, and recovery
//! cuts a zero tail off as before. A sync also unmaps the pages not yet written to (see
//! `Segment::unmap_for_writeback`), so the writer's first store into one of those traps again
//! (a cheaper fault: the page is in the page cache, zeroed); the window is kept small
//! ([`AHEAD`]) so that little of it is wasted that way or written as zeros. Where the kernel
//! lacks `MADV_POPULATE_WRITE` (`EINVAL`, before Linux 5.14) the first request turns it off for
//! the process; on other platforms it is off from the start, and the writer takes its faults as
//! before.

#[cfg(test)]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};

use memmap2::MmapRaw;

use super::background::Background;
use crate::populate::{self, Populated};

/// How far ahead of the writer's end pages are faulted in: a request is made once the end
/// comes within `AHEAD` of what was asked for, up to `2 * AHEAD` past the end. At full speed
/// (one-put transactions, ~60 MB/s) the writer crosses it in about 4 ms.
pub(super) const AHEAD: u64 = 256 << 10;

/// Requests start on a multiple of this after the writer's end, so that they do not fault in
/// the page holding it, whatever the page size (4 KiB on x86-64, up to 64 KiB on some ARM
/// systems). An economy only: the sync gate, not this, keeps record pages safe (see above).
const ALIGN: u64 = 64 << 10;

/// Bytes faulted in per hold of the sync gate: a sync that comes meanwhile waits at most this
/// long (16 pages, some tens of microseconds).
const CHUNK: usize = 64 << 10;

/// A range of a writable segment map to fault in. The map is held weakly: once the segment
/// has let go of it (sealed), the rest of the request is dropped.
struct Request {
    map: Weak<MmapRaw>,
    off: usize,
    len: usize,
}

/// The thread that faults in pages ahead of one log writer. Started at the first request;
/// stopped (and joined) when dropped, after what is queued (two requests of 512 KiB at most).
pub struct Prefaulter {
    worker: Background<Request>,
    /// The writer's: raised when a write or an fdatasync of the log failed.
    failed: Arc<AtomicBool>,
    /// The writer's sync gate (see `WriterConfig::sync_gate`).
    sync_gate: Arc<RwLock<()>>,
    /// Bytes of requests taken, for tests.
    #[cfg(test)]
    requested: AtomicU64,
}

impl Prefaulter {
    /// A prefaulter for the writer whose failure flag and sync gate these are (see
    /// `WriterConfig`).
    pub fn new(failed: Arc<AtomicBool>, sync_gate: Arc<RwLock<()>>) -> Prefaulter {
        Prefaulter {
            // Two requests: one being served, the next waiting.
            worker: Background::new("logtree-prefault", 2),
            failed,
            sync_gate,
            #[cfg(test)]
            requested: Default::default(),
        }
    }

    /// The range to ask for after an append that ended at `end`, when pages up to `asked`
    /// were asked for already: from the first [`ALIGN`] boundary after the end (or from
    /// `asked`) to `2 * AHEAD` past the end; None while the end is still more than `AHEAD`
    /// from `asked`. The caller cuts it to the space it reserved.
    pub fn window(end: u64, asked: u64) -> Option<(u64, u64)> {
        (end + AHEAD > asked).then(|| (asked.max(end.next_multiple_of(ALIGN)), end + 2 * AHEAD))
    }

    /// Asks for `len` bytes at `off` of `map` to be faulted in. False if the request was not
    /// taken (the thread is still busy with earlier ones, could not start, or the kernel
    /// cannot do it): the caller asks again at its next append.
    pub fn request(&self, map: &Arc<MmapRaw>, off: u64, len: u64) -> bool {
        if len == 0 || !populate::supported() {
            return false;
        }
        let (Ok(off_us), Ok(len_us)) = (usize::try_from(off), usize::try_from(len)) else { return false };
        let request = Request { map: Arc::downgrade(map), off: off_us, len: len_us };
        let taken = self.worker.request(request, || {
            let (failed, gate) = (self.failed.clone(), self.sync_gate.clone());
            move |r: Request| serve(&r, &failed, &gate).is_some()
        });
        #[cfg(test)]
        if taken {
            self.requested.fetch_add(len, Ordering::Relaxed);
        }
        taken
    }

    /// Bytes of requests taken so far.
    #[cfg(test)]
    pub fn requested(&self) -> u64 {
        self.requested.load(Ordering::Relaxed)
    }
}

/// Faults `r` in, a chunk at a time, each under the sync gate after checking that nothing has
/// failed (see the module documentation); returns how many bytes. None when the thread should
/// stop: the log failed, or the kernel does not know the advice.
fn serve(r: &Request, failed: &AtomicBool, gate: &RwLock<()>) -> Option<usize> {
    let mut at = r.off;
    loop {
        // Gone: the segment was sealed meanwhile, and its pages are the settler's to read
        // again (`settle.rs`), clean; faulting them in writable would dirty them.
        let Some(map) = r.map.upgrade() else { break };
        let end = r.off.saturating_add(r.len).min(map.len());
        if at >= end {
            break;
        }
        let Ok(_no_sync) = gate.try_read() else { break }; // a sync holds or wants it
        if failed.load(Ordering::SeqCst) {
            return None;
        }
        let len = CHUNK.min(end - at);
        match populate::populate(&*map, at, len) {
            Populated::Done => at += len,
            Populated::Refused => break,
            Populated::Unsupported => return None,
        }
    }
    Some(at - r.off)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request for a new file's map, with the map (which the segment would hold).
    fn request(len: usize) -> (tempfile::NamedTempFile, Arc<MmapRaw>, Request) {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(len as u64).unwrap();
        let map = memmap2::MmapOptions::new().len(len).map_raw(file.as_file()).unwrap();
        let map = Arc::new(map);
        (file, map.clone(), Request { map: Arc::downgrade(&map), off: 0, len })
    }

    /// A request is served in full while nothing failed and no sync holds the gate, without
    /// changing a byte; stopped by a failure (the thread ends); dropped while a sync holds the
    /// gate (the thread goes on), past the file's end, and once the segment has let go of the
    /// map (sealed).
    #[test]
    fn served_only_under_the_gate_and_never_after_a_failure() {
        if !populate::supported() {
            return;
        }
        let len = 3 * CHUNK + 4096;
        let (file, segment_holds, r) = request(len);
        let (failed, gate) = (AtomicBool::new(false), RwLock::new(()));
        assert_eq!(serve(&r, &failed, &gate), Some(len), "served in full");
        assert!(std::fs::read(file.path()).unwrap().iter().all(|&b| b == 0), "no byte changed");

        let held = gate.write().unwrap();
        assert_eq!(serve(&r, &failed, &gate), Some(0), "dropped while a sync holds the gate");
        drop(held);

        failed.store(true, Ordering::SeqCst);
        assert_eq!(serve(&r, &failed, &gate), None, "after a failure: nothing, and the thread stops");

        // Past the file's end (a sealed segment's reserve given back): refused, not SIGBUS.
        failed.store(false, Ordering::SeqCst);
        file.as_file().set_len(4096).unwrap();
        assert_eq!(serve(&r, &failed, &gate), Some(0), "past the end: nothing");

        // Sealed meanwhile (the segment no longer holds the map): nothing.
        file.as_file().set_len(len as u64).unwrap();
        assert_eq!(serve(&r, &failed, &gate), Some(len), "back in the file");
        drop(segment_holds);
        assert_eq!(serve(&r, &failed, &gate), Some(0), "the segment let go of the map: nothing");
    }
}
