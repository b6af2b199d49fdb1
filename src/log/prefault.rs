//! Faulting in the pages of the active segment's writable map ahead of the writer, on a thread
//! of its own.
//!
//! The writer copies small frames into a writable shared map of the segment (see
//! `segment.rs`). The first store into each 4 KiB page of it traps: the kernel finds or makes
//! the page-cache page (zeros, for blocks `fallocate` reserved) and has the file system mark it
//! dirty (`page_mkwrite`). For one-put transactions that was 12–19% of the writer's time (perf
//! of `logtree bench --workload mvcc-put --writers 1`: `exc_page_fault` under
//! `LogWriter::write_frame`). Doing the same work in bulk on the writer's thread
//! (`madvise(MADV_POPULATE_WRITE)` of each new 2 MiB reservation) gained nothing: the cost is
//! the kernel's work, not the traps. So a second thread does it, a window ahead of the writer,
//! on a core the writer does not need (the committer mostly waits in `fdatasync`).
//!
//! `MADV_POPULATE_WRITE` faults pages in as a write would, without writing a byte, so the
//! contents stay what the writer put there or zeros. Three things keep it harmless:
//! - It only ever covers whole pages after the writer's end (the start is rounded up to
//!   [`ALIGN`], the largest page size in use), so it never dirties a page holding records: after a
//!   failed fdatasync, a page whose write-back failed must not be written again, and the
//!   writer writes nothing more (the engine is poisoned) — neither does this.
//! - It stays below the file space the writer reserved, where the file exists. Past the file's end
//!   (the segment was sealed and its reserve given back meanwhile) the kernel answers `EFAULT`
//!   instead of raising `SIGBUS`, and the request is dropped.
//! - The request holds the map (`Arc`), so it stays mapped until the thread is done with it.
//!
//! The pages it dirties are zeros beyond the log's end: an fdatasync writes them, and recovery
//! cuts a zero tail off as before. An fdatasync also cleans the pages not yet written to, so
//! the writer's first store into one of those traps again (a cheaper fault: the page is there);
//! the window is kept small ([`AHEAD`]) so that little of it is wasted that way or written as
//! zeros. Where the kernel lacks `MADV_POPULATE_WRITE` (`EINVAL`, before Linux 5.14) or the
//! platform is not Linux, the first request turns it off, and the writer takes its faults as
//! before.

use std::sync::Arc;
use std::sync::OnceLock;
#[cfg(test)]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use memmap2::MmapRaw;

/// How far ahead of the writer's end pages are faulted in: a request is made once the end
/// comes within `AHEAD` of what was asked for, up to `2 * AHEAD` past the end. At full speed
/// (one-put transactions, ~60 MB/s) the writer crosses it in about 4 ms.
pub const AHEAD: u64 = 256 << 10;

/// Requests start on a multiple of this, so that they never touch the page holding the
/// writer's end, whatever the page size (4 KiB on x86-64, up to 64 KiB on some ARM systems).
pub const ALIGN: u64 = 64 << 10;

/// A range of a writable segment map to fault in.
struct Request {
    map: Arc<MmapRaw>,
    off: usize,
    len: usize,
}

/// The thread that faults in pages ahead of one log writer. Started at the first request;
/// stopped (and joined) when dropped.
#[derive(Default)]
pub struct Prefaulter {
    worker: OnceLock<Worker>,
    /// Set when the kernel does not know the advice (or the platform has none, or the thread
    /// could not start): no requests after that.
    off: Arc<AtomicBool>,
    /// Bytes of requests taken, for tests.
    #[cfg(test)]
    requested: AtomicU64,
}

struct Worker {
    requests: Sender<Request>,
    thread: Option<JoinHandle<()>>,
}

impl Prefaulter {
    /// Asks for `len` bytes at `off` of `map` to be faulted in. False if the request was not
    /// taken (the thread is still busy with earlier ones, could not start, or is off): the
    /// caller asks again at its next append.
    pub fn request(&self, map: &Arc<MmapRaw>, off: u64, len: u64) -> bool {
        if self.off.load(Ordering::Relaxed) || len == 0 {
            return false;
        }
        let (Ok(off_us), Ok(len_us)) = (usize::try_from(off), usize::try_from(len)) else { return false };
        let Some(worker) = self.worker() else { return false };
        match worker.requests.try_send(Request { map: map.clone(), off: off_us, len: len_us }) {
            Ok(()) => {
                #[cfg(test)]
                self.requested.fetch_add(len, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Bytes of requests taken so far.
    #[cfg(test)]
    pub fn requested(&self) -> u64 {
        self.requested.load(Ordering::Relaxed)
    }

    fn worker(&self) -> Option<&Worker> {
        if let Some(w) = self.worker.get() {
            return Some(w);
        }
        // Two requests (a bounded queue): one being served, the next waiting.
        let (tx, rx) = crossbeam_channel::bounded::<Request>(2);
        let off = self.off.clone();
        let spawned = std::thread::Builder::new().name("logtree-prefault".into()).spawn(move || {
            for r in rx {
                if !populate(&r) {
                    off.store(true, Ordering::Relaxed);
                    break;
                }
            }
        });
        match spawned {
            Ok(thread) => Some(self.worker.get_or_init(|| Worker { requests: tx, thread: Some(thread) })),
            Err(_) => {
                self.off.store(true, Ordering::Relaxed);
                None
            }
        }
    }
}

impl Drop for Prefaulter {
    fn drop(&mut self) {
        if let Some(mut w) = self.worker.take() {
            let thread = w.thread.take();
            drop(w); // closes the queue: the thread ends after the request it is serving
            if let Some(t) = thread {
                let _ = t.join();
            }
        }
    }
}

/// Faults `r` in. False if the kernel cannot do it at all (then no more requests are made).
#[cfg(target_os = "linux")]
fn populate(r: &Request) -> bool {
    let len = r.len.min(r.map.len().saturating_sub(r.off));
    match r.map.advise_range(memmap2::Advice::PopulateWrite, r.off, len) {
        Ok(()) => true,
        // The kernel does not know the advice (before Linux 5.14).
        Err(e) if e.raw_os_error() == Some(EINVAL) => false,
        // Anything else concerns this request only: past the file's end (`EFAULT`: its
        // reserve was given back meanwhile), memory short (`ENOMEM`), a signal (`EINTR`).
        Err(_) => true,
    }
}

#[cfg(target_os = "linux")]
const EINVAL: i32 = 22;

#[cfg(not(target_os = "linux"))]
fn populate(_: &Request) -> bool {
    false
}
