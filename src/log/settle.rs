//! Reading sealed segments again in huge pages, on a thread of its own.
//!
//! A random read of a value in a large log misses the TLB as well as the cache: on the 2-core
//! VM a dependent read of random memory took 440 ns on 4 KiB pages against 255 ns on 2 MiB
//! ones (DESIGN.md §2.3). The pages the writer makes as it appends are 4 KiB ones, and Linux
//! does not merge the pages of a file on an ordinary file system into huge ones. Once a segment
//! is sealed and synced its bytes never change and its pages are clean, so they can be dropped
//! and read back from the file a huge page at a time (`Segment::settle`), which is what this
//! thread does for each segment the log writer seals. That is one read of the segment from
//! the disk (64 MiB in about 140 ms on that VM), away from the writer and the readers; a reader
//! that touches a huge page while it is being read waits for that read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::background::Background;
use super::segment::Segment;

/// The thread that settles the segments one log writer seals. Started at the first request;
/// stopped (within one huge page's read) and joined when dropped.
#[derive(Default)]
pub struct Settler {
    worker: Background<Arc<Segment>>,
    stop: Arc<AtomicBool>,
}

impl Settler {
    /// Asks for `segment` (sealed) to be settled. Not taken if the queue is full (the thread
    /// is behind by four segments) or the thread could not start: the segment then stays in
    /// small pages, which costs only speed.
    pub fn request(&self, segment: &Arc<Segment>) {
        self.worker.request(segment.clone(), "logtree-settle", 4, || {
            let stop = self.stop.clone();
            move |segment: Arc<Segment>| {
                segment.settle(&stop);
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
