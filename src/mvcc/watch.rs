//! Watchers: one shared feed of recent revisions that every watcher reads at its own pace, and
//! the store's history for a watcher that starts in the past or falls behind the feed.
//!
//! **The feed.** The writer appends each new revision's events, once, to a [`Hub`]: a list of
//! segments of [`SEGMENT_REVS`] slots, slot `i` of a segment holding revision `first_rev + i`.
//! A slot is written once, by the writer, in revision order, and never changed (its bytes are
//! copied into the segment's storage blocks, then it is published by a counter), so
//! watchers read it without a lock and without copying it to each of them: a watcher keeps an
//! `Arc` of the segment it is reading. The writer's cost per revision is therefore the same for
//! one watcher or a thousand — it used to send each event to each watcher's channel and wake
//! each watcher, and puts with 100 watchers ran at a sixth of their speed. The hub keeps the
//! last [`KEPT_SEGMENTS`] segments and at most [`FEED_BYTES`] of events; older ones go when
//! the last watcher reading them moves on, their storage to the next segments (see [`Spare`]).
//!
//! **History.** A watcher whose next revision is older than the feed's first (it started in the
//! past, or read so slowly that the feed moved on) reads from the store's `key` bucket instead,
//! up to the feed's first revision, a bounded batch at a time, then continues in the feed. Every
//! revision below the feed's `next_rev` is already visible in the backend (the writer appends
//! to the feed after its `BatchTx` has been published), so the two never disagree. A watcher's
//! history that was compacted away ends the watch with `Error::Compacted`.
//!
//! **Waking.** A watcher with nothing to read puts its thread on the hub's list of sleepers and
//! parks it. The writer does not wake it: if anyone waits, it asks the store's notifier thread (a non-blocking send
//! to a channel of one slot), which wakes the waiters a few at a time and then pauses briefly,
//! so that wake-ups are batched and the writer makes at most one cheap system call per pause. A
//! waiting watcher sleeps until it is woken or its caller's timeout ends, never polls: an idle
//! watcher costs no CPU, however many there are.
//!
//! Every watcher remembers `next_rev`, the first revision it has not been given, and only moves
//! it forward, so it never loses or repeats an event. Dropping a [`Watcher`] ends it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU8, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::kv::{EventsBuf, WatchEvent, WatchEventRef, events};
use crate::error::{Error, Result};

/// Revisions per feed segment.
pub const SEGMENT_REVS: usize = 1024;
/// Segments the hub keeps: the feed holds the last 64–65 thousand revisions, or fewer if
/// they are large (see `FEED_BYTES`). A watcher that falls behind the feed reads history,
/// which costs about ten times as much per event (owned copies, a backend range), so it falls
/// further behind: with 5 segments (about 20 ms of puts at full speed) a watcher thread that
/// was descheduled for a moment never caught up again, and puts watched by 100 watchers on one
/// thread ran at 0.16× their unwatched rate instead of 0.7–0.8×.
pub const KEPT_SEGMENTS: usize = 64;
/// Bytes of events the feed keeps at most, unless the segment being filled alone holds more
/// (then only it is kept): values may be hundreds of megabytes, and the feed must not hold
/// thousands of them. A segment whose events reach a `KEPT_SEGMENTS`th of it is sealed early (the next
/// revision starts a new one), and old segments go once the total is over it; watchers behind
/// them read history instead.
pub const FEED_BYTES: usize = 64 << 20;
/// The longest wait a watcher's timeout stands for (over a century): longer ones are capped.
const FOREVER: Duration = Duration::from_secs(1 << 32);
/// Sleepers that timed out stay on the hub's list, marked, until this many (or as many as there
/// are watchers waiting, if more) have piled up: then the list is swept.
const SWEEP_LEFT: usize = 64;
/// Events a watcher reads from history at a time (whole revisions, so it may be more).
pub const HISTORY_BATCH: usize = 1024;
/// Bytes of values (and previous values) a watcher reads from history at a time, likewise.
pub const HISTORY_BYTES: usize = 16 << 20;
/// Entries of the `key` bucket a watcher looks at in one history read, whether in its range or
/// not (whole revisions, so it may be more): the read holds the store's index lock, which a
/// writer waits for, so a watcher of a rarely written key starting far back must not walk the
/// whole history in one read.
pub const HISTORY_SCAN: usize = 4096;
/// History reads that find nothing in range a call that does not wait (`try_recv`, a zero
/// timeout) makes at most before it returns empty-handed: about 16,000 entries of other keys.
pub const NO_WAIT_HISTORY_READS: usize = 4;

/// Bytes of a block the writer asks the cache for ahead of its appends (a few revisions').
const WRITE_AHEAD: usize = 1024;

/// Bytes of a segment's storage block: revisions' events are copied one after another into
/// blocks of this size (one of its own for a larger revision).
const BLOCK_BYTES: usize = 64 << 10;

/// A run of consecutive revisions of the feed.
///
/// Each revision's events are copied into the segment's storage blocks, after the previous
/// revision's, and never move or change until the segment is dropped. This replaced a
/// separate allocation per revision: with 100 watchers the allocator was a tenth of the
/// writer's time per put (the buffers were freed later, in thousands at once, often by a
/// watcher's thread), and consecutive revisions now sit together for the watchers' reads.
pub(crate) struct Segment {
    first_rev: i64,
    /// The revision after the last one this segment holds, once it is sealed early (i64::MAX
    /// while it may still take every one of its slots).
    end_rev: AtomicI64,
    /// How many revisions have been appended: slots below it are readable. Written by the
    /// writer after the slot and its bytes (release), read by watchers before them (acquire).
    published: Padded<AtomicUsize>,
    /// Where each revision's events are in `blocks`, encoded (see `EventsBuf`).
    slots: Box<[Slot]>,
    /// The storage. Only the writer locks it, to append; watchers read published bytes through
    /// their slots' pointers, never through this. On cache lines of its own: the writer locks
    /// and unlocks it for every revision, and on the lines of `first_rev` and `end_rev`, which
    /// every watcher reads for every revision, each unlock waited for the line to come back
    /// from the watchers' core (the unlock alone was half of the watched writer's `append`).
    blocks: Padded<Mutex<Vec<Vec<u8>>>>,
    /// Where the slots and the standard-sized blocks go when the segment is dropped, for the
    /// segments after it.
    spare: Arc<Mutex<Spare>>,
}

/// The storage of dropped segments, kept for new ones (up to [`SPARE_BLOCKS`] blocks and
/// [`SPARE_SLOTS`] slot arrays: about 4.1 MiB a store keeps once it has been watched, until
/// it is dropped).
///
/// Why: the feed's storage turns over at the writer's speed (tens of megabytes a second with
/// 100 watchers), and a segment is usually dropped by a watcher's thread, the last to leave
/// it. Freed there, its memory went back to that thread's allocator while the writer asked its
/// own for fresh pages, which the kernel had to zero first (on this project's VM, whole 2 MiB
/// pages): zeroing was as much of the watched writer's time as appending. Reused, the blocks
/// are already mapped, and their stale bytes are never read (a slot is published only after
/// its bytes are copied in).
#[derive(Default)]
struct Spare {
    blocks: Vec<Vec<u8>>,
    slots: Vec<Box<[Slot]>>,
}

/// Blocks kept for reuse at most (4 MiB): more than the writer fills between two segments'
/// drops.
const SPARE_BLOCKS: usize = 64;
/// Slot arrays kept for reuse at most.
const SPARE_SLOTS: usize = 4;

/// The place of one revision's events: set once by the writer before it is published.
#[derive(Default)]
struct Slot {
    ptr: AtomicPtr<u8>,
    len: AtomicUsize,
}

impl Segment {
    fn new(first_rev: i64, spare: &Arc<Mutex<Spare>>) -> Segment {
        // A reused slot array holds the places of another segment's revisions, but a slot is
        // read only once it is published, and it is written before that.
        let reused = lock(spare).slots.pop();
        let slots = reused.unwrap_or_else(|| (0..SEGMENT_REVS).map(|_| Slot::default()).collect());
        Segment {
            first_rev,
            end_rev: AtomicI64::new(i64::MAX),
            published: Padded(AtomicUsize::new(0)),
            slots,
            blocks: Padded(Mutex::new(Vec::new())),
            spare: spare.clone(),
        }
    }

    fn covers(&self, rev: i64) -> bool {
        rev >= self.first_rev
            && rev - self.first_rev < SEGMENT_REVS as i64
            && rev < self.end_rev.load(Ordering::Acquire)
    }

    /// The events of `rev`, if the writer has appended it. Requires `covers(rev)`.
    #[cfg(test)]
    fn get(&self, rev: i64) -> Option<&[u8]> {
        self.appended().get(rev)
    }

    /// The revisions appended so far, read once: a reader going through many of them reads
    /// the writer's counter once, not once per revision. The writer raises it for every
    /// revision, so each read after a raise is a miss on a line the writer's core owns, and
    /// every one of a hundred watchers reading it per revision also made the writer's next
    /// raise wait for that line to come back.
    fn appended(&self) -> Appended<'_> {
        Appended { seg: self, published: self.published.load(Ordering::Acquire) }
    }
}

/// The revisions of a segment that were appended when [`Segment::appended`] looked.
struct Appended<'s> {
    seg: &'s Segment,
    published: usize,
}

impl<'s> Appended<'s> {
    /// The events of `rev`, if it is among them.
    fn get(&self, rev: i64) -> Option<&'s [u8]> {
        let i = usize::try_from(rev - self.seg.first_rev).ok()?;
        if i >= self.published {
            return None;
        }
        let slot = &self.seg.slots[i];
        let (ptr, len) = (slot.ptr.load(Ordering::Relaxed), slot.len.load(Ordering::Relaxed));
        // SAFETY: slot `i` is published, so (acquire in `Segment::appended`, release in
        // `push`) its pointer and length, and the `len` bytes they describe, were written
        // before this read: `push` copied them into a block's spare capacity, set the block's
        // length past them, and then published. Those bytes are never written again: `push`
        // writes only past a block's length and never grows a block beyond its capacity, so
        // the block's buffer never moves. The blocks are freed, or given to a later segment,
        // only when this segment is dropped, and the borrow `'s` keeps it. A reused slot array
        // still holds another segment's pointers, but a segment's count starts at 0 and a slot
        // is read only below it, after `push` has written it.
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }
}

impl Segment {
    /// Appends the events of `rev`, the next revision, which `covers(rev)`. Only the writer
    /// calls it, holding the feed.
    fn push(&self, rev: i64, events: &[u8]) {
        let i = (rev - self.first_rev) as usize;
        debug_assert_eq!(i, self.published.load(Ordering::Relaxed), "revisions are pushed in order");
        let mut blocks = lock(&self.blocks);
        let need = events.len();
        if blocks.last().is_none_or(|b| b.capacity() - b.len() < need) {
            let reused = if need <= BLOCK_BYTES { lock(&self.spare).blocks.pop() } else { None };
            blocks.push(reused.unwrap_or_else(|| Vec::with_capacity(need.max(BLOCK_BYTES))));
        }
        let block = blocks.last_mut().expect("just ensured");
        let start = block.len();
        for (to, &from) in block.spare_capacity_mut()[..need].iter_mut().zip(events) {
            to.write(from); // a memcpy once compiled
        }
        // SAFETY: the `need` bytes after the old length were initialized just above.
        unsafe { block.set_len(start + need) };
        // The next revisions' bytes go after these, into memory not touched since the block
        // was last used (or ever): asked for now, their lines are in the cache when they are
        // written, instead of each write missing and the feed's unlock waiting for all of them.
        let ahead = (block.capacity() - block.len()).min(WRITE_AHEAD);
        crate::prefetch::prefetch_range(block.as_ptr() as usize + block.len(), ahead);
        let ptr = block.as_ptr().wrapping_add(start).cast_mut();
        self.slots[i].ptr.store(ptr, Ordering::Relaxed);
        self.slots[i].len.store(need, Ordering::Relaxed);
        self.published.store(i + 1, Ordering::Release);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let mut spare = lock(&self.spare);
        if spare.slots.len() < SPARE_SLOTS {
            spare.slots.push(std::mem::take(&mut self.slots));
        }
        let room = SPARE_BLOCKS.saturating_sub(spare.blocks.len());
        let blocks = self.blocks.0.get_mut().unwrap_or_else(|e| e.into_inner());
        spare.blocks.extend(blocks.extract_if(.., |b| b.capacity() == BLOCK_BYTES).take(room).map(|mut b| {
            b.clear();
            b
        }));
        // What is left (no room, or larger blocks) is freed with the fields, after the lock is
        // let go: the writer takes it for every new block.
    }
}

struct Feed {
    /// The segments, oldest first, each with the bytes of events it holds.
    segments: VecDeque<(Arc<Segment>, usize)>,
    /// Their sum.
    bytes: usize,
    /// The revision the next append gets.
    next_rev: i64,
    /// From which revision on every revision in the feed carries its events' previous values.
    /// The writer reads them only while a watcher asks for them (`WatchOptions::prev_kv`); a
    /// watcher that asks for them reads the revisions before this one from history. (The feed
    /// is not restarted for it: that would send every other watcher still reading the feed to
    /// history too, where a compaction could end a watch that had kept up.)
    prev_from: i64,
}

impl Feed {
    /// The oldest revision the feed still holds (`next_rev` if it holds none).
    fn first_rev(&self) -> i64 {
        self.segments.front().map_or(self.next_rev, |(s, _)| s.first_rev)
    }
}

/// Where a watcher's next revision is.
pub(crate) enum Position {
    /// In this segment of the feed (appended or not yet).
    Feed(Arc<Segment>),
    /// Below the feed: read history up to this revision (exclusive).
    History(i64),
    /// Not appended yet, and no segment for it exists yet.
    Ahead,
}

/// The shared feed of one store, and the waiting room of its watchers.
///
/// Each part the writer and the watchers write is on its own cache lines: the writer locks the
/// feed for every revision, while a hundred watchers count themselves in and out of `waiting`
/// and read `closed`; on shared lines each of those writes made the other side's next access
/// a cache miss.
pub(crate) struct Hub {
    feed: Padded<Mutex<Feed>>,
    /// Registered watchers: while there are none, the writer builds no events.
    watchers: Padded<Registered>,
    /// Watchers waiting for a revision.
    waiting: Padded<AtomicUsize>,
    /// The feed's `next_rev`, for a waiting watcher to check without the feed's lock whether
    /// the revision it waits for has been appended (see `appended_past`).
    next_rev: Padded<AtomicI64>,
    /// The threads of waiting watchers, to unpark. Not a condition variable: woken at once, a
    /// hundred watchers then queued on its mutex, each put back to sleep and woken again, and
    /// the scheduling took more of a 2-core machine than their reading did.
    sleepers: Padded<Mutex<Sleepers>>,
    closed: AtomicBool,
    /// Storage for new segments (see [`Spare`]).
    spare: Arc<Mutex<Spare>>,
    /// How many times a watcher parked (tests count them).
    #[cfg(test)]
    parks: AtomicUsize,
}

/// The waiting watchers' threads.
#[derive(Default)]
struct Sleepers {
    list: Vec<Arc<Sleeper>>,
    /// About how many on `list` have left (timed out): a hint for when to sweep it, which may
    /// count one that a wake-up took off meanwhile.
    left: usize,
}

/// A parked watcher's thread.
struct Sleeper {
    thread: std::thread::Thread,
    /// `WAITING`, then `WOKEN` (by the notifier, which then unparks it) or `LEFT` (by the
    /// watcher, which timed out), whichever comes first.
    state: AtomicU8,
}

const WAITING: u8 = 0;
const WOKEN: u8 = 1;
const LEFT: u8 = 2;

impl Sleeper {
    /// Moves it out of `WAITING`; false if something else did first.
    fn leave(&self, to: u8) -> bool {
        self.state.compare_exchange(WAITING, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// How many watchers are registered, and how many of them want previous values.
#[derive(Default)]
struct Registered {
    all: AtomicUsize,
    with_prev: AtomicUsize,
}

/// A value alone on its (pair of adjacent, as prefetched together) cache lines.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    pub fn new(next_rev: i64) -> Hub {
        Hub {
            feed: Padded(Mutex::new(Feed { segments: VecDeque::new(), bytes: 0, next_rev, prev_from: next_rev })),
            watchers: Padded(Registered::default()),
            waiting: Padded(AtomicUsize::new(0)),
            next_rev: Padded(AtomicI64::new(next_rev)),
            sleepers: Padded(Mutex::default()),
            closed: AtomicBool::new(false),
            spare: Arc::default(),
            #[cfg(test)]
            parks: AtomicUsize::new(0),
        }
    }

    pub fn has_watchers(&self) -> bool {
        self.watchers.all.load(Ordering::SeqCst) > 0
    }

    /// Whether some watcher wants previous values (the writer then reads them for the events).
    pub fn wants_prev(&self) -> bool {
        self.watchers.with_prev.load(Ordering::SeqCst) > 0
    }

    /// Called by `watch`, serialized with the writer: if the feed fell behind while nobody
    /// watched (the writer then appends nothing), it restarts empty at `next_rev`.
    pub fn catch_up(&self, next_rev: i64) {
        let mut feed = lock(&self.feed);
        if feed.next_rev != next_rev {
            // Sealed where it stopped, so that a watcher reading it, waiting for the next slot,
            // looks for the next revision in the restarted feed instead of waiting forever.
            if let Some((last, _)) = feed.segments.back() {
                last.end_rev.fetch_min(feed.next_rev, Ordering::AcqRel);
            }
            feed.segments.clear();
            feed.bytes = 0;
            feed.next_rev = next_rev;
            feed.prev_from = next_rev;
            self.next_rev.store(next_rev, Ordering::SeqCst);
        }
    }

    pub fn register(&self, prev_kv: bool) {
        self.watchers.all.fetch_add(1, Ordering::SeqCst);
        if prev_kv {
            self.watchers.with_prev.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Takes the feed for an append: the writer takes it before it lets the next writer in, so
    /// revisions are appended in order.
    pub fn lock_feed(&self) -> FeedGuard<'_> {
        FeedGuard { hub: self, feed: lock(&self.feed) }
    }

    /// Whether some watcher waits for a revision (then the notifier should wake them).
    pub fn anyone_waiting(&self) -> bool {
        // Pairs with the fence in `wait`: either this sees the waiter, or the waiter sees the
        // revision just appended.
        fence(Ordering::SeqCst);
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// Wakes every waiting watcher at once (`close`). Returns how many it woke.
    pub fn wake_all(&self) -> usize {
        self.wake_staggered(|_| usize::MAX, Duration::ZERO)
    }

    /// Wakes every watcher waiting now, `group(how many wait)` threads at a time with `gap`
    /// between groups (the notifier thread; see `WAKE_GROUP_GAP`). Returns how many it woke.
    /// Those taken off the list but not yet woken stay parked until their group's turn: at
    /// worst a revision reaches them a few milliseconds later, never not at all.
    pub fn wake_staggered(&self, group: impl FnOnce(usize) -> usize, gap: Duration) -> usize {
        let taken = std::mem::take(&mut *lock(&self.sleepers)).list;
        // Those that already left are skipped (and so are any that leave before their turn).
        let waiting: Vec<Arc<Sleeper>> =
            taken.into_iter().filter(|s| s.state.load(Ordering::Acquire) == WAITING).collect();
        let group = group(waiting.len()).max(1);
        let mut woken = 0;
        for (i, chunk) in waiting.chunks(group).enumerate() {
            if i > 0 && !gap.is_zero() {
                std::thread::sleep(gap);
            }
            for s in chunk {
                if s.leave(WOKEN) {
                    s.thread.unpark();
                    woken += 1;
                }
            }
        }
        woken
    }

    /// Ends every watch: the store is gone.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.wake_all();
    }

    /// Where revision `rev` is for a watcher; `prev_kv`: one that wants previous values, for
    /// which the feed's revisions without them are history.
    fn position(&self, rev: i64, prev_kv: bool) -> Position {
        let feed = lock(&self.feed);
        let first = if prev_kv { feed.first_rev().max(feed.prev_from) } else { feed.first_rev() };
        if rev < first {
            return Position::History(first);
        }
        match feed.segments.iter().rev().find(|(s, _)| s.covers(rev)) {
            Some((s, _)) => Position::Feed(s.clone()),
            None => Position::Ahead,
        }
    }

    /// Whether revision `rev` is below the feed's next one: appended, or gone from the feed
    /// to history. Either way a watcher waiting for it has something to do.
    fn appended_past(&self, rev: i64) -> bool {
        self.next_rev.load(Ordering::SeqCst) > rev
    }

    /// Waits until `ready` holds, the hub closes, or `until`; returns whether `ready` held when
    /// checked, before any wait. It may return early (a spurious unpark): callers look again.
    ///
    /// It does not poll: it relies on being woken, which the ordering below guarantees. (It
    /// used to wake every 10 ms to look again "in case a wake-up was missed", so each idle
    /// watcher cost a hundred wake-ups a second, and each of those a sweep of the whole list:
    /// with thousands of idle watchers, a core. A missed wake-up would now show as a watcher
    /// stuck until its timeout, which the tests would see, rather than as 10 ms of delay.)
    fn wait(&self, until: Instant, ready: impl Fn() -> bool) -> bool {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // On the list before `ready` is checked: a revision appended after the check finds
        // `waiting` raised (the fences), and the notifier's wake-up, which follows the append,
        // takes the list after this push (the list's lock orders them) and unparks this thread,
        // or, if it took the list before the push, the append is visible to `ready` (the same
        // lock orders it before the check). `close` is ordered likewise.
        let me = Arc::new(Sleeper { thread: std::thread::current(), state: AtomicU8::new(WAITING) });
        lock(&self.sleepers).list.push(me.clone());
        let ready = ready();
        if !ready && !self.closed.load(Ordering::SeqCst) {
            #[cfg(test)]
            self.parks.fetch_add(1, Ordering::Relaxed);
            std::thread::park_timeout(until.saturating_duration_since(Instant::now()));
        }
        if me.leave(LEFT) {
            // Timed out (or unparked spuriously) and still on the list: it stays there, marked,
            // and the list is swept once enough have left, so that leaving costs O(1) however
            // many watchers wait (it used to sweep the list every time).
            let mut sleepers = lock(&self.sleepers);
            sleepers.left += 1;
            if sleepers.left > SWEEP_LEFT.max(self.waiting.load(Ordering::Relaxed)) {
                sleepers.list.retain(|s| s.state.load(Ordering::Acquire) == WAITING);
                sleepers.left = 0;
            }
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        ready
    }
}

/// The feed, locked by the writer for one append.
pub(crate) struct FeedGuard<'a> {
    hub: &'a Hub,
    feed: MutexGuard<'a, Feed>,
}

impl FeedGuard<'_> {
    /// Appends revision `rev` (the feed's next) with its events, if anyone watches; otherwise
    /// the feed is left behind and `catch_up` restarts it. `with_prev`: whether the events
    /// carry previous values. Returns whether a watcher waits.
    pub fn append(mut self, rev: i64, events: EventsBuf, with_prev: bool) -> bool {
        if events.count == 0 || self.feed.next_rev != rev {
            return false;
        }
        let feed = &mut *self.feed;
        if !with_prev {
            feed.prev_from = rev + 1;
        }
        if !feed.segments.back().is_some_and(|(s, _)| s.covers(rev)) {
            feed.segments.push_back((Arc::new(Segment::new(rev, &self.hub.spare)), 0));
        }
        let len = events.buf.len();
        let (seg, seg_bytes) = feed.segments.back_mut().expect("just ensured");
        seg.push(rev, &events.buf);
        *seg_bytes += len;
        if *seg_bytes >= FEED_BYTES / KEPT_SEGMENTS {
            seg.end_rev.store(rev + 1, Ordering::Release);
        }
        feed.bytes += len;
        feed.next_rev = rev + 1;
        self.hub.next_rev.store(rev + 1, Ordering::SeqCst);
        // Never the segment being filled: it holds the revision just appended.
        while feed.segments.len() > KEPT_SEGMENTS || (feed.segments.len() > 1 && feed.bytes > FEED_BYTES) {
            if let Some((_, bytes)) = feed.segments.pop_front() {
                feed.bytes -= bytes;
            }
        }
        drop(self.feed);
        self.hub.anyone_waiting()
    }
}

/// What a watcher keeps between calls.
pub(crate) struct Cursor {
    pub next_rev: i64,
    seg: Option<Arc<Segment>>,
    /// Events read from history, not yet handed out.
    pub backlog: VecDeque<WatchEvent>,
    /// Why the watch ended, repeated to every later call.
    ended: Option<Ended>,
}

/// Why a watch ended (other errors, such as a failed read of history, are returned once and
/// the next call tries again).
#[derive(Clone, Copy)]
enum Ended {
    Compacted { requested: i64, compacted: i64 },
    Closed,
}

impl Ended {
    fn of(e: &Error) -> Option<Ended> {
        match *e {
            Error::Compacted { requested, compacted } => Some(Ended::Compacted { requested, compacted }),
            Error::Closed => Some(Ended::Closed),
            _ => None,
        }
    }

    fn error(self) -> Error {
        match self {
            Ended::Compacted { requested, compacted } => Error::Compacted { requested, compacted },
            Ended::Closed => Error::Closed,
        }
    }
}

/// Reads the store's history for a watcher: the events of revisions `from..to` in `key..end`,
/// whole revisions, about `HISTORY_BATCH` events, `HISTORY_BYTES` of values or `HISTORY_SCAN`
/// entries looked at, at most; returns them (possibly none) and the revision after the last one
/// read.
pub(crate) trait History {
    /// `prev_kv`: whether to read each event's previous value.
    fn read(&self, key: &[u8], end: &[u8], from: i64, to: i64, prev_kv: bool) -> Result<(Vec<WatchEvent>, i64)>;
}

/// A watch on a key range; see [`crate::mvcc::KvStore::watch`]. Dropping it cancels the watch.
///
/// `Sync`: several threads may receive from one watcher; each event goes to one of them, in
/// order, and a call waiting for events does not hold up another's (a `try_recv` returns at
/// once).
pub struct Watcher {
    pub(crate) key: Vec<u8>,
    pub(crate) end: Vec<u8>,
    /// Whether events carry previous values.
    pub(crate) prev_kv: bool,
    pub(crate) hub: Arc<Hub>,
    pub(crate) history: Weak<dyn History + Send + Sync>,
    pub(crate) cursor: Mutex<Cursor>,
}

impl Watcher {
    pub(crate) fn new(
        key: Vec<u8>,
        end: Vec<u8>,
        prev_kv: bool,
        next_rev: i64,
        hub: Arc<Hub>,
        history: Weak<dyn History + Send + Sync>,
    ) -> Watcher {
        hub.register(prev_kv);
        let cursor = Cursor { next_rev, seg: None, backlog: VecDeque::new(), ended: None };
        Watcher { key, end, prev_kv, hub, history, cursor: Mutex::new(cursor) }
    }

    /// The next event, waiting at most `timeout`: `Ok(None)` if none came. An error means the
    /// watch ended: `Error::Compacted` if the history it needed was compacted away before it
    /// could be delivered, `Error::Closed` if the store was closed.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<WatchEvent>> {
        let mut first = None;
        self.recv_upto(timeout, 1, &mut |e: &WatchEventRef<'_>| first = Some(e.to_owned()))?;
        Ok(first)
    }

    /// The next event if one is ready. It does not wait, and it reads a bounded part of
    /// history (four reads of at most 4,096 entries, and only when the watcher is behind): a
    /// watcher of a rarely written key that starts far in the past may get `Ok(None)` while
    /// its next event is still further on in history; each call goes on from where the last
    /// one stopped. The same holds for [`recv_with`](Self::recv_with) and
    /// [`recv_timeout`](Self::recv_timeout) with a zero timeout.
    pub fn try_recv(&self) -> Result<Option<WatchEvent>> {
        self.recv_timeout(Duration::ZERO)
    }

    /// Waits at most `timeout` for events, then calls `f` with each event ready now, in order,
    /// and returns how many (0 after a timeout). The events are lent from the store's shared
    /// feed rather than copied for each watcher, which is what makes many watchers cheap: use
    /// this rather than [`recv_timeout`](Self::recv_timeout) to keep up with a busy store.
    ///
    /// If `f` panics, the panic goes on to the caller and the watch stays usable: the next
    /// call hands out again the event `f` panicked on, and with it the events of the same
    /// revision that came before it (a revision counts as delivered once all of its events
    /// were), so a caller that catches the panic may see some events twice but never misses one.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// let (backend, _dir) = logtree::Backend::open_temp()?;
    /// let store = logtree::mvcc::KvStore::open(Arc::new(backend))?;
    /// let w = store.watch(b"a", b"\0", 0)?;
    /// store.put(b"a", b"1", 0)?;
    /// store.put(b"b", b"2", 0)?;
    /// let mut revs = Vec::new();
    /// while revs.len() < 2 {
    ///     w.recv_with(Duration::from_secs(5), |e| revs.push(e.kv.mod_revision))?;
    /// }
    /// assert_eq!(revs, [2, 3]);
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn recv_with(&self, timeout: Duration, mut f: impl FnMut(&WatchEventRef<'_>)) -> Result<usize> {
        self.recv_upto(timeout, usize::MAX, &mut f)
    }

    fn recv_upto(&self, timeout: Duration, max: usize, f: &mut impl FnMut(&WatchEventRef<'_>)) -> Result<usize> {
        // The deadline is read from the clock only once there is nothing to deliver: a busy
        // reader calls this with a zero timeout for every batch.
        let mut until = None;
        let mut empty_reads = 0;
        let mut c = lock(&self.cursor);
        loop {
            if let Some(e) = c.ended {
                return Err(e.error());
            }
            let n = self.deliver(&mut c, max, f);
            if n > 0 {
                return Ok(n);
            }
            match self.refill(&mut c) {
                Ok(true) if c.seg.is_none() && c.backlog.is_empty() => {
                    // A history read found nothing in range: read on, unless the time is up.
                    // (Each read holds the store's lock for a bounded walk; a long history of
                    // other keys takes many.) A call that does not wait reads a bounded number
                    // of times, so that it returns at once however long that history is.
                    if timeout.is_zero() {
                        empty_reads += 1;
                        if empty_reads >= NO_WAIT_HISTORY_READS {
                            return Ok(0);
                        }
                        continue;
                    }
                    let now = Instant::now();
                    if now >= *until.get_or_insert_with(|| now + timeout.min(FOREVER)) {
                        return Ok(0);
                    }
                    continue;
                }
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    c.ended = Ended::of(&e);
                    return Err(e);
                }
            }
            if self.hub.closed.load(Ordering::SeqCst) {
                c.ended = Some(Ended::Closed);
                return Err(Error::Closed);
            }
            if timeout.is_zero() {
                return Ok(0);
            }
            let now = Instant::now();
            // A timeout too long for an `Instant` (`Duration::MAX`: "wait for ever") is capped,
            // not added as it is, which would panic.
            let until = *until.get_or_insert_with(|| now + timeout.min(FOREVER));
            if now >= until {
                return Ok(0);
            }
            // Not holding the cursor: another thread's call on this watcher (a `try_recv`)
            // would otherwise wait out this one's whole timeout (found by review).
            let next = c.next_rev;
            drop(c);
            self.wait_for_next(next, until);
            c = lock(&self.cursor);
        }
    }

    /// Waits (until `until`, or a wake-up; see `Hub::wait`) for revision `next`, the cursor's
    /// next; returns whether it was there already. The check asks the hub, not the cursor's
    /// segment: a cursor with no segment yet (its revision was ahead of the feed) or at the end
    /// of a sealed one would otherwise miss a revision appended between its last look and its
    /// wait, for which nobody wakes it (found by review: it then slept its 10 ms poll, and would
    /// now sleep until its timeout).
    fn wait_for_next(&self, next: i64, until: Instant) -> bool {
        self.hub.wait(until, || self.hub.appended_past(next))
    }

    /// Hands out up to `max` events from the backlog, then from the feed segment the cursor is
    /// in, whole revisions at a time (what `max` leaves of a revision waits in the backlog);
    /// returns how many.
    fn deliver(&self, c: &mut Cursor, max: usize, f: &mut impl FnMut(&WatchEventRef<'_>)) -> usize {
        let mut n = 0;
        while n < max {
            // Taken off only once `f` returns, as events of the feed are: if `f` panics, the
            // next call hands the event out again rather than losing it.
            let Some(e) = c.backlog.front() else { break };
            f(&e.as_ref());
            c.backlog.pop_front();
            n += 1;
        }
        if n > 0 || !c.backlog.is_empty() {
            return n;
        }
        // Borrowed, not cloned: every watcher reads the same segment, and a reference count
        // that they all changed on every call would bounce between the cores.
        let Cursor { next_rev, seg, backlog, .. } = c;
        let Some(seg) = seg.as_ref() else { return 0 };
        // A revision appended is covered: the writer never appends to a segment past its end.
        let appended = seg.appended();
        while n < max {
            let Some(events_of_rev) = appended.get(*next_rev) else { break };
            for raw in events(events_of_rev) {
                let Some(e) = raw.decode_in(&self.key, &self.end, self.prev_kv) else { continue };
                if n < max {
                    f(&e);
                    n += 1;
                } else {
                    backlog.push_back(e.to_owned());
                }
            }
            *next_rev += 1;
        }
        n
    }

    /// Moves the cursor to where its next revision is, reading history into the backlog if
    /// that is where it is. Returns whether there may be something to deliver now.
    fn refill(&self, c: &mut Cursor) -> Result<bool> {
        if c.seg.as_ref().is_some_and(|s| s.covers(c.next_rev)) {
            return Ok(false); // waiting for the writer to append it
        }
        match self.hub.position(c.next_rev, self.prev_kv) {
            Position::Feed(seg) => {
                c.seg = Some(seg);
                Ok(true)
            }
            Position::Ahead => {
                c.seg = None;
                Ok(false)
            }
            Position::History(to) => {
                c.seg = None;
                let history = self.history.upgrade().ok_or(Error::Closed)?;
                let (events, next) = history.read(&self.key, &self.end, c.next_rev, to, self.prev_kv)?;
                c.backlog.extend(events);
                c.next_rev = next;
                Ok(true)
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.hub.watchers.all.fetch_sub(1, Ordering::SeqCst);
        if self.prev_kv {
            self.hub.watchers.with_prev.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("key", &self.key).field("end", &self.end).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::kv::EventKind;

    /// A staggered wake-up wakes every watcher that was waiting, whatever the group size, in
    /// groups of that size, and leaves nobody on the list.
    #[test]
    fn staggered_wakes_reach_every_waiting_watcher() {
        for (waiting, group) in [(0, 4), (1, 4), (7, 3), (100, 4), (250, 5), (9, usize::MAX)] {
            let hub = Hub::new(1);
            let sleepers: Vec<Arc<Sleeper>> = (0..waiting).map(|_| sleeper()).collect();
            lock(&hub.sleepers).list.extend(sleepers.iter().cloned());
            let mut seen = None;
            let woken = hub.wake_staggered(
                |n| {
                    seen = Some(n);
                    group
                },
                Duration::from_micros(1),
            );
            assert_eq!((woken, seen), (waiting, Some(waiting)));
            assert!(
                sleepers.iter().all(|s| s.state.load(Ordering::Acquire) == WOKEN),
                "{waiting} in groups of {group}"
            );
            assert!(lock(&hub.sleepers).list.is_empty());
        }
    }

    fn sleeper() -> Arc<Sleeper> {
        Arc::new(Sleeper { thread: std::thread::current(), state: AtomicU8::new(WAITING) })
    }

    /// A sleeper that left (timed out) is neither woken nor counted, and one woken first cannot
    /// leave: each sleeper ends exactly one way.
    #[test]
    fn a_sleeper_is_either_woken_or_gone() {
        let hub = Hub::new(1);
        let sleepers: Vec<Arc<Sleeper>> = (0..10).map(|_| sleeper()).collect();
        lock(&hub.sleepers).list.extend(sleepers.iter().cloned());
        for s in sleepers.iter().step_by(3) {
            assert!(s.leave(LEFT));
        }
        assert_eq!(hub.wake_staggered(|n| n, Duration::ZERO), 6, "10 waited, 4 left");
        for (i, s) in sleepers.iter().enumerate() {
            let want = if i % 3 == 0 { LEFT } else { WOKEN };
            assert_eq!(s.state.load(Ordering::Acquire), want, "sleeper {i}");
            assert!(!s.leave(LEFT), "sleeper {i} already ended");
        }
    }

    /// An idle watcher waits for its whole timeout in one sleep, not in slices: it used to
    /// wake every 10 ms to look again, so that thousands of idle watchers kept a core busy.
    /// The sleepers that time out are swept from the list in bulk, so it stays bounded.
    #[test]
    fn an_idle_watcher_sleeps_until_its_timeout() {
        let history: Arc<dyn History + Send + Sync> = Arc::new(NoHistory);
        let hub = Arc::new(Hub::new(1));
        let w = Watcher::new(b"k".to_vec(), Vec::new(), false, 1, hub.clone(), Arc::downgrade(&history));
        let timeout = Duration::from_millis(300);
        let start = Instant::now();
        assert_eq!(w.recv_timeout(timeout).unwrap(), None);
        assert!(start.elapsed() >= timeout, "returned after {:?}", start.elapsed());
        let parks = hub.parks.load(Ordering::Relaxed);
        // One, and a spurious unpark or two at most (a 10 ms poll made it 30).
        assert!((1..=3).contains(&parks), "{parks} sleeps for one timeout");
        for _ in 0..10 * SWEEP_LEFT {
            assert_eq!(w.recv_timeout(Duration::from_micros(1)).unwrap(), None);
        }
        let listed = lock(&hub.sleepers).list.len();
        assert!(listed <= SWEEP_LEFT + 1, "{listed} timed-out sleepers still listed");
        // And a revision still wakes a waiting watcher at once.
        let waiter = std::thread::scope(|scope| {
            let waiting = scope.spawn(|| w.recv_timeout(Duration::from_secs(60)));
            while hub.waiting.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            if hub.lock_feed().append(1, one_put(1), false) {
                hub.wake_all();
            }
            waiting.join().unwrap()
        });
        assert_eq!(waiter.unwrap().map(|e| e.kv.mod_revision), Some(1));
    }

    /// A segment's storage gives back exactly the bytes pushed, for revisions that fill a block
    /// exactly, overflow it, exceed a block on their own, or are empty; nothing is readable
    /// before it is pushed, and earlier revisions stay intact while later ones are written.
    struct NoHistory;
    impl History for NoHistory {
        fn read(&self, _: &[u8], _: &[u8], _: i64, _: i64, _: bool) -> Result<(Vec<WatchEvent>, i64)> {
            unreachable!("the feed holds every revision of these tests")
        }
    }

    fn one_put(rev: i64) -> EventsBuf {
        let kv =
            crate::mvcc::KeyValue { key: b"k".to_vec(), value: b"v".to_vec(), mod_revision: rev, ..Default::default() };
        let mut e = EventsBuf::default();
        e.push(EventKind::Put, &kv.encode(), None);
        e
    }

    /// A watcher whose next revision had no segment yet when it looked (ahead of the feed),
    /// and which the writer appends before the watcher waits, finds it when it goes to wait
    /// instead of sleeping its whole wait slice: nobody wakes it, since nobody waited when the
    /// writer appended. (Found by review: the check before parking looked only in the
    /// cursor's segment, which it did not have.)
    #[test]
    fn a_revision_appended_before_the_wait_is_seen_by_it() {
        let history: Arc<dyn History + Send + Sync> = Arc::new(NoHistory);
        // Ahead of the feed: no segment yet.
        let hub = Arc::new(Hub::new(1));
        let w = Watcher::new(b"k".to_vec(), Vec::new(), false, 1, hub.clone(), Arc::downgrade(&history));
        let mut c = lock(&w.cursor);
        assert_eq!(w.deliver(&mut c, usize::MAX, &mut |_| {}), 0);
        assert!(!w.refill(&mut c).unwrap(), "nothing to read yet");
        assert!(c.seg.is_none(), "revision 1 is ahead of the feed");
        assert!(!hub.lock_feed().append(1, one_put(1), false), "nobody waits yet, so nobody is woken");
        let until = Instant::now() + Duration::from_secs(60);
        assert!(w.wait_for_next(c.next_rev, until), "revision 1 was appended before the wait");
        drop(c);
        // After a segment sealed early (its events reached their share of the feed's bytes)
        // and read to its end, the next revision is ahead of the feed again.
        let mut c = lock(&w.cursor);
        assert_eq!(w.deliver(&mut c, usize::MAX, &mut |_| {}), 0, "not in a segment yet");
        assert!(w.refill(&mut c).unwrap());
        assert_eq!(w.deliver(&mut c, usize::MAX, &mut |_| {}), 1);
        c.seg.as_ref().unwrap().end_rev.store(2, Ordering::Release);
        assert!(!w.refill(&mut c).unwrap(), "revision 2 is ahead of the feed");
        assert!(!hub.lock_feed().append(2, one_put(2), false));
        assert!(w.wait_for_next(c.next_rev, until), "revision 2 was appended before the wait");
        // And with nothing appended, the wait does wait (and finds nothing).
        assert!(w.refill(&mut c).unwrap());
        assert_eq!(w.deliver(&mut c, usize::MAX, &mut |_| {}), 1);
        assert!(!w.wait_for_next(c.next_rev, Instant::now() + Duration::from_millis(1)));
    }

    #[test]
    fn segment_blocks_return_every_revision_intact() {
        let seg = Segment::new(100, &Arc::default());
        let sizes = [0, 1, 1000, BLOCK_BYTES - 1001, 1, BLOCK_BYTES, 3 * BLOCK_BYTES + 7, 5, BLOCK_BYTES - 5, 64];
        let body = |i: usize, len: usize| (0..len).map(|j| (i * 31 + j * 7) as u8).collect::<Vec<u8>>();
        let mut held = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            let rev = 100 + i as i64;
            assert!(seg.covers(rev));
            assert_eq!(seg.get(rev), None, "revision {rev} before it is pushed");
            seg.push(rev, &body(i, len));
            held.push(seg.get(rev).expect("just pushed"));
            for (j, b) in held.iter().enumerate() {
                assert_eq!(*b, body(j, sizes[j]).as_slice(), "revision {} after pushing {rev}", 100 + j);
            }
        }
        assert_eq!(seg.get(100 + sizes.len() as i64), None);
    }

    /// A dropped segment's slots and standard blocks go to the spare storage, up to its bounds,
    /// and the next segments take them: a reused slot array shows nothing before it is pushed
    /// (its stale places are never read), and reused blocks give back the new bytes.
    #[test]
    fn dropped_segments_lend_their_storage_to_the_next() {
        let spare: Arc<Mutex<Spare>> = Arc::default();
        let body = |rev: i64, len: usize| (0..len).map(|j| (rev as usize * 13 + j) as u8).collect::<Vec<u8>>();
        // Three standard blocks and one of its own for an oversized revision.
        let old = Segment::new(1, &spare);
        for rev in 1..=3 {
            old.push(rev, &body(rev, BLOCK_BYTES - 10));
        }
        old.push(4, &body(4, 2 * BLOCK_BYTES));
        let old_slots = old.slots.as_ptr();
        drop(old);
        {
            let s = lock(&spare);
            assert_eq!((s.slots.len(), s.blocks.len()), (1, 3), "the oversized block is freed");
            assert!(s.blocks.iter().all(|b| b.is_empty() && b.capacity() == BLOCK_BYTES));
        }
        let new = Segment::new(1000, &spare);
        assert_eq!(new.slots.as_ptr(), old_slots, "the slot array is reused");
        for rev in 1000..1000 + SEGMENT_REVS as i64 {
            assert_eq!(new.get(rev), None, "revision {rev} before it is pushed");
        }
        for rev in 1000..1004 {
            new.push(rev, &body(rev, BLOCK_BYTES / 2 + 1));
        }
        assert!(lock(&spare).blocks.is_empty(), "every spare block taken before a new one is made");
        for rev in 1000..1004 {
            assert_eq!(new.get(rev), Some(body(rev, BLOCK_BYTES / 2 + 1).as_slice()));
        }
        // Bounded: many dropped segments keep at most the spare limits.
        drop(new);
        let many: Vec<Segment> = (0..(SPARE_SLOTS + SPARE_BLOCKS) as i64)
            .map(|first| {
                let seg = Segment::new(first * 10_000, &spare);
                seg.push(first * 10_000, &body(first, BLOCK_BYTES));
                seg.push(first * 10_000 + 1, &body(first, 1));
                seg
            })
            .collect();
        drop(many);
        let s = lock(&spare);
        assert_eq!((s.slots.len(), s.blocks.len()), (SPARE_SLOTS, SPARE_BLOCKS));
    }

    /// The shortcuts of `in_range` for open-ended ranges agree with the comparison they skip.
    #[test]
    fn open_ranges_from_the_empty_key_and_from_nul() {
        let keys: [&[u8]; 6] = [b"", b"\0", b"\0\0", b"\x01", b"a", b"\xff\xff"];
        for start in [&b""[..], b"\0", b"\0\0", b"a"] {
            for key in keys {
                assert_eq!(super::super::in_range(key, start, b"\0"), key >= start, "{key:?} from {start:?}");
            }
        }
    }

    fn big_revision(bytes: usize) -> EventsBuf {
        let kv = crate::mvcc::KeyValue { key: b"k".to_vec(), value: vec![7; bytes], ..Default::default() };
        let mut e = EventsBuf::default();
        e.push(EventKind::Put, &kv.encode(), None);
        e
    }

    /// Large values do not pile up in the feed: it keeps about `FEED_BYTES`, sealing segments
    /// early and dropping old ones, and what it dropped is read from history.
    #[test]
    fn the_feed_keeps_a_bounded_number_of_bytes() {
        let hub = Hub::new(1);
        let each = 3 << 20;
        for rev in 1..=100 {
            hub.lock_feed().append(rev, big_revision(each), true);
            let bytes = lock(&hub.feed).bytes;
            assert!(bytes <= FEED_BYTES, "revision {rev}: the feed holds {bytes} bytes");
        }
        assert!(matches!(hub.position(1, false), Position::History(_)), "old revisions come from history");
        assert!(matches!(hub.position(100, false), Position::Feed(_)));
        assert!(matches!(hub.position(101, false), Position::Ahead));
        // Consecutive segments cover consecutive revisions, with no gap where one was sealed.
        let feed = lock(&hub.feed);
        let first = feed.first_rev();
        assert!(first > 1 && first <= 100 - (FEED_BYTES / each) as i64 + 2, "first kept revision {first}");
        for rev in first..=100 {
            let n = feed.segments.iter().filter(|(s, _)| s.covers(rev) && s.get(rev).is_some()).count();
            assert_eq!(n, 1, "revision {rev} is in exactly one segment");
        }
    }
}
