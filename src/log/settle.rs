//! Reading sealed segments again in huge pages, on a thread of its own (`Segment::settle`;
//! DESIGN.md §2.3 says why and what it costs), at the moments the disk is not needed for a
//! sync.
//!
//! # Pacing
//!
//! Settling reads a segment from the disk again, 2 MiB at a time. A commit's fdatasync that
//! reaches the device behind such a read waits for it: on this project's test machine a 2 MiB
//! read takes 2–4 ms and a commit's fdatasync 0.5 ms, so 100 durable batches of 1,000 puts that
//! crossed a roll-over took some 20–50 ms longer while the sealed segment was read, whatever
//! the thread's CPU or I/O priority (neither changed it). So before each 2 MiB the thread waits
//! for a quiet moment (`crate::pacing`): no sync running and none for `QUIET`, or at most
//! `PACE` since the start of its last turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::background::Background;
use super::segment::Segment;
use crate::pacing::{PACE, Pacer, QUIET};

/// The thread that settles the segments one log writer seals. Started at the first request;
/// stopped (within one huge page's read, or a few milliseconds while it waits) and joined
/// when dropped.
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
            let mut pacer = Pacer::new(QUIET, PACE);
            move |segment: Arc<Segment>| {
                segment.settle(|| pacer.wait_turn(|| stop.load(Ordering::Relaxed) || segment.is_obsolete()));
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
