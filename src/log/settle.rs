//! Reading sealed segments again in huge pages, on a thread of its own (`Segment::settle`;
//! DESIGN.md §2.3 says why and what it costs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::background::Background;
use super::segment::Segment;

/// The thread that settles the segments one log writer seals. Started at the first request;
/// stopped (within one huge page's read) and joined when dropped.
pub struct Settler {
    worker: Background<Arc<Segment>>,
    stop: Arc<AtomicBool>,
}

impl Default for Settler {
    fn default() -> Self {
        // Four segments queued: 256 MiB written while one is read again.
        Settler { worker: Background::new("logtree-settle", 4), stop: Arc::default() }
    }
}

impl Settler {
    /// Asks for `segment` (sealed) to be settled. Not taken if the queue is full (the thread
    /// is behind by four segments) or the thread could not start: the segment then stays in
    /// small pages, which costs only speed.
    pub fn request(&self, segment: &Arc<Segment>) {
        self.worker.request(segment.clone(), || {
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
