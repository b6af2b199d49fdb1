//! Reading sealed segments again in huge pages, on a thread of its own (`Segment::settle`;
//! DESIGN.md §2.3 says why and what it costs), at the moments the disk is not needed for a
//! sync.
//!
//! # Pacing
//!
//! Settling reads a segment from the disk again, 2 MiB at a time. A commit's fdatasync that
//! reaches the device behind such a read waits for it: on this project's test machine a 2 MiB
//! read takes 2–4 ms and a commit's fdatasync 0.5 ms, so 100 durable batches of 1,000 puts that
//! crossed a roll-over took some 50 ms longer while the sealed segment was read (a fifth of
//! their time), whatever the thread's CPU or I/O priority (neither changed it). So before each
//! 2 MiB the thread waits until no segment has been synced for [`QUIET`]; under a stream of
//! commits that never leaves such a gap, it reads one 2 MiB every [`PACE`] all the same, so a
//! sealed segment is settled within seconds while its sync stalls stay a few in a hundred.
//! Group commit's own rhythm (a sync every `batch_interval`, 100 ms by default) leaves gaps
//! long enough to read in.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::background::Background;
use super::segment::Segment;

/// How long no segment must have been synced before a 2 MiB read begins: longer than the gap
/// between the commits of a writer that is busy committing, much shorter than a default
/// `batch_interval`.
pub const QUIET: Duration = Duration::from_millis(20);
/// The longest wait for a quiet moment before a 2 MiB read begins anyway.
pub const PACE: Duration = Duration::from_millis(250);
/// How often a waiting thread looks at the clock and at its stop flag.
const POLL: Duration = Duration::from_millis(5);

/// The process's clock for [`LAST_SYNC`]: microseconds since its first reading.
fn now_micros() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// When a segment was last synced (its fdatasync began or ended), on [`now_micros`]'s clock;
/// 0 for never. Process-wide, not per log: two backends in one process most likely share a
/// disk, and a settle of one delays the other's syncs as much as its own.
static LAST_SYNC: AtomicU64 = AtomicU64::new(0);

/// Records that a segment's fdatasync begins or has ended (`Segment::sync`).
pub fn note_sync() {
    LAST_SYNC.store(now_micros().max(1), Ordering::Relaxed);
}

/// How long to wait before the next 2 MiB read, `now` microseconds into the clock, if the last
/// sync was at `last_sync` and the last read began at `last_read` (both 0 for never): zero once
/// the disk has been quiet for [`QUIET`] or [`PACE`] has passed since the last read.
fn wait_before_read(now: u64, last_sync: u64, last_read: u64) -> Duration {
    let quiet_at = if last_sync == 0 { 0 } else { last_sync + QUIET.as_micros() as u64 };
    let paced_at = if last_read == 0 { 0 } else { last_read + PACE.as_micros() as u64 };
    Duration::from_micros(quiet_at.min(paced_at).saturating_sub(now))
}

/// The thread that settles the segments one log writer seals. Started at the first request;
/// stopped (within one huge page's read or one [`POLL`]) and joined when dropped.
pub struct Settler {
    worker: Background<Arc<Segment>>,
    stop: Arc<AtomicBool>,
}

impl Default for Settler {
    fn default() -> Self {
        // Sixteen segments queued (1 GiB at the default size): under a stream of commits a
        // segment takes some 8 s to settle (32 reads, one per `PACE`), and the writer may seal
        // several meanwhile; the queue holds them until a quiet moment lets the thread catch up.
        Settler { worker: Background::new("logtree-settle", 16), stop: Arc::default() }
    }
}

impl Settler {
    /// Asks for `segment` (sealed) to be settled. Not taken if the queue is full or the thread
    /// could not start: the segment then stays in small pages, which costs only speed.
    pub fn request(&self, segment: &Arc<Segment>) {
        self.worker.request(segment.clone(), || {
            let stop = self.stop.clone();
            let mut last_read = 0;
            move |segment: Arc<Segment>| {
                segment.settle(|| {
                    // Waits for a quiet disk (see the module docs); false to stop.
                    loop {
                        if stop.load(Ordering::Relaxed) || segment.is_obsolete() {
                            return false;
                        }
                        let now = now_micros();
                        let wait = wait_before_read(now, LAST_SYNC.load(Ordering::Relaxed), last_read);
                        if wait.is_zero() {
                            last_read = now.max(1);
                            return true;
                        }
                        std::thread::sleep(wait.min(POLL));
                    }
                });
                true
            }
        });
    }
}

impl Drop for Settler {
    fn drop(&mut self) {
        // Cuts the segment being settled short; `worker` then joins the thread.
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    /// A read waits for the disk to be quiet for `QUIET`, or for `PACE` since the last read,
    /// whichever comes first; with no sync or no read before, that side does not hold it back.
    #[test]
    fn a_read_waits_for_a_quiet_disk_or_its_pace() {
        let quiet = QUIET.as_micros() as u64;
        let pace = PACE.as_micros() as u64;
        assert_eq!(wait_before_read(1_000 * MS, 0, 0), Duration::ZERO, "nothing synced, nothing read");
        assert_eq!(wait_before_read(1_000 * MS, 995 * MS, 0), Duration::ZERO, "never read: the pace allows one");
        let (now, synced, read) = (10_000 * MS, 9_995 * MS, 9_990 * MS);
        assert_eq!(wait_before_read(now, synced, read), Duration::from_micros(synced + quiet - now), "until quiet");
        let (now, synced, read) = (10_000 * MS, 9_999 * MS, 10_000 * MS - pace + 3 * MS);
        assert_eq!(wait_before_read(now, synced, read), Duration::from_micros(3 * MS), "until the pace, sooner");
        assert_eq!(wait_before_read(now, now - quiet, now), Duration::ZERO, "quiet for QUIET: at once");
        assert_eq!(wait_before_read(now, now, now - pace), Duration::ZERO, "a read per PACE under syncs");
    }
}
