//! Background work that gives way to commits: the settle thread's disk reads (DESIGN.md §2.3)
//! and the huge-backing thread's collapses (§3).
//!
//! Both are optional work that a writer busy committing pays for: a commit's fdatasync that
//! reaches the device behind a settle's 2 MiB read waits for it (2–4 ms here), and while the
//! kernel copies a 2 MiB region into a huge page it holds the process's memory-map lock for
//! writing, so a page fault of the writer in the heap waits for the copy (1–6 ms here). So
//! each fdatasync of a segment through `Segment::sync` (a commit's, a roll-over's, a defrag's)
//! is marked while it runs and stamps the clock when it ends ([`foreground`]), and each such
//! thread, before each piece of work, waits for a quiet moment ([`Pacer::wait_turn`]): no sync
//! running and none for [`QUIET`], or at most [`PACE`] since the start of its last turn, so
//! that a stream of commits that never leaves a gap still lets the work go on, a piece per
//! `PACE`. Group commit's own rhythm (a sync every `batch_interval`, 100 ms by default) leaves
//! gaps enough; a bulk load (one long transaction) and reads leave the time wholly to it.
//!
//! An open in progress counts as a running sync too: its replay builds the index on memory the
//! allocator hands out fresh, and the build's page faults waited for the collapses of the
//! regions the replay had just filled (`perf sched timehist`: the build threads 4–6 ms at a
//! time in `rwsem_down_read_slowpath`).
//!
//! The clock is process-wide, not per log: two backends in one process most likely share a
//! disk, and either thread's work delays the other backend's commits as much as its own.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long no segment must have been synced before a piece of work begins: longer than the
/// gap between the commits of a writer that is busy committing, much shorter than a default
/// `batch_interval`.
pub(crate) const QUIET: Duration = Duration::from_millis(20);
/// The longest wait for a quiet moment, from the start of the last turn.
pub(crate) const PACE: Duration = Duration::from_millis(250);

/// How often a waiting thread looks at the clock and at its stop condition.
const POLL: Duration = Duration::from_millis(5);

/// Microseconds since the clock's first reading.
fn now_micros() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// When the last foreground work (a segment's fdatasync, an open) ended, on [`now_micros`]'s
/// clock; 0 for never.
static LAST_SYNC: AtomicU64 = AtomicU64::new(0);
/// How many pieces of foreground work are running.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Marks foreground work (a segment's fdatasync, an open's replay) as running until the guard
/// is dropped: meanwhile no moment is quiet, and when it ends the quiet time starts.
pub(crate) fn foreground() -> Foreground {
    RUNNING.fetch_add(1, Ordering::Relaxed);
    Foreground(())
}

/// See [`foreground`].
pub(crate) struct Foreground(());

impl Drop for Foreground {
    fn drop(&mut self) {
        // `fetch_max`: two ending together must not move the clock back.
        LAST_SYNC.fetch_max(now_micros().max(1), Ordering::Relaxed);
        RUNNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One background thread's turns.
pub(crate) struct Pacer {
    quiet: Duration,
    pace: Duration,
    /// When the last turn began (0: none yet), and the one before it.
    last_turn: u64,
    previous_turn: u64,
}

impl Pacer {
    /// Turns that wait for `quiet` without a sync, or at most `pace` since the last turn
    /// ([`QUIET`] and [`PACE`] but in tests).
    pub(crate) const fn new(quiet: Duration, pace: Duration) -> Pacer {
        Pacer { quiet, pace, last_turn: 0, previous_turn: 0 }
    }

    /// Waits for the next turn (see the module docs); false, at once, if `stop()` says so
    /// before it comes.
    pub(crate) fn wait_turn(&mut self, stop: impl Fn() -> bool) -> bool {
        loop {
            if stop() {
                return false;
            }
            let now = now_micros();
            // A sync or an open running counts as a sync that has just ended.
            let last_sync = if RUNNING.load(Ordering::Relaxed) > 0 { now } else { LAST_SYNC.load(Ordering::Relaxed) };
            let wait = self.wait_before_turn(now, last_sync);
            if wait.is_zero() {
                self.previous_turn = self.last_turn;
                self.last_turn = now.max(1);
                return true;
            }
            std::thread::sleep(wait.min(POLL));
        }
    }

    /// Gives the last turn back, for work that turned out to cost nothing worth pacing (a
    /// request the kernel refused at once): the next turn is paced from the one before.
    pub(crate) fn return_turn(&mut self) {
        self.last_turn = self.previous_turn;
    }

    /// How long to wait, `now` microseconds into the clock, if the last sync was at
    /// `last_sync` (0 for never): zero once nothing has been synced for `quiet`, or `pace` has
    /// passed since the last turn (or there was none).
    fn wait_before_turn(&self, now: u64, last_sync: u64) -> Duration {
        let quiet_at = if last_sync == 0 { 0 } else { last_sync + self.quiet.as_micros() as u64 };
        let paced_at = if self.last_turn == 0 { 0 } else { self.last_turn + self.pace.as_micros() as u64 };
        Duration::from_micros(quiet_at.min(paced_at).saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    /// A turn waits for `quiet` without a sync or for `pace` since the last turn, whichever
    /// comes first; with no sync or no turn before, that side holds nothing back.
    #[test]
    fn a_turn_waits_for_a_quiet_moment_or_its_pace() {
        let (quiet, pace) = (20 * MS, 250 * MS);
        let mut p = Pacer::new(Duration::from_micros(quiet), Duration::from_micros(pace));
        assert_eq!(p.wait_before_turn(1_000 * MS, 0), Duration::ZERO, "nothing synced, no turn yet");
        assert_eq!(p.wait_before_turn(1_000 * MS, 995 * MS), Duration::ZERO, "no turn yet: the pace allows one");
        let now = 10_000 * MS;
        p.last_turn = now - 10 * MS;
        assert_eq!(p.wait_before_turn(now, now - 5 * MS), Duration::from_micros(15 * MS), "until quiet");
        p.last_turn = now - pace + 3 * MS;
        assert_eq!(p.wait_before_turn(now, now - MS), Duration::from_micros(3 * MS), "until the pace, sooner");
        assert_eq!(p.wait_before_turn(now, now - quiet), Duration::ZERO, "quiet for `quiet`: at once");
        p.last_turn = now - pace;
        assert_eq!(p.wait_before_turn(now, now), Duration::ZERO, "a turn per `pace` under syncs");
    }

    /// `wait_turn` takes its turn once the time has come, gives up at once when stopped, and
    /// finds no quiet moment while foreground work (a sync, an open) runs; its end stamps the
    /// clock.
    #[test]
    fn wait_turn_takes_a_due_turn_and_stops_when_asked() {
        let mut p = Pacer::new(Duration::from_millis(1), Duration::from_secs(3600));
        assert!(!p.wait_turn(|| true), "stopped");
        assert_eq!(p.last_turn, 0, "a stopped wait takes no turn");
        assert!(p.wait_turn(|| false), "the first turn is due at once");
        assert!(p.last_turn > 0);
        // Foreground work runs throughout and the next pace is an hour away: only the stop ends
        // the wait (another test's syncs could only lengthen it).
        let guard = foreground();
        let started = Instant::now();
        let stop_after = started + Duration::from_millis(50);
        assert!(!p.wait_turn(|| Instant::now() >= stop_after), "no quiet moment while work runs");
        assert!(started.elapsed() >= Duration::from_millis(50));
        let before_end = now_micros();
        drop(guard);
        assert!(LAST_SYNC.load(Ordering::Relaxed) >= before_end, "its end stamps the clock");
    }

    /// A turn given back does not count: the next is paced from the one before it.
    #[test]
    fn a_returned_turn_does_not_count() {
        let mut p = Pacer::new(Duration::from_secs(3600), Duration::from_millis(250));
        assert!(p.wait_turn(|| false));
        let first = p.last_turn;
        std::thread::sleep(Duration::from_millis(300));
        assert!(p.wait_turn(|| false), "a pace after the first");
        assert!(p.last_turn > first);
        p.return_turn();
        assert_eq!(p.last_turn, first, "given back: the first is the last again");
        let now = first + 260 * MS;
        assert_eq!(p.wait_before_turn(now, now), Duration::ZERO, "so the next is due a pace after the first");
    }
}
