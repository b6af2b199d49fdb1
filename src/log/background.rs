//! A thread of its own serving requests from a short queue, for the log writer's helpers (the
//! prefaulter, the settler): started at the first request, so a writer that never needs it
//! starts no thread; stopped and joined when dropped, after what is queued.

use std::sync::OnceLock;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

pub struct Background<T> {
    /// The thread's name and its queue's length.
    name: &'static str,
    capacity: usize,
    /// The thread and its queue, once started; `None` if it could not start.
    worker: OnceLock<Option<Worker<T>>>,
}

struct Worker<T> {
    requests: Sender<T>,
    thread: JoinHandle<()>,
}

impl<T: Send + 'static> Background<T> {
    /// A thread named `name` with a queue of `capacity` requests, not started yet.
    pub fn new(name: &'static str, capacity: usize) -> Self {
        Background { name, capacity, worker: OnceLock::new() }
    }

    /// Queues `request` without waiting. The first call starts the thread, which hands each
    /// request to the function `serve` makes (called that once), until that returns false.
    /// False if the request was not taken: the queue is full, or the thread could not start
    /// or has stopped.
    pub fn request<F>(&self, request: T, serve: impl FnOnce() -> F) -> bool
    where
        F: FnMut(T) -> bool + Send + 'static,
    {
        let start = || {
            let (requests, rx) = crossbeam_channel::bounded::<T>(self.capacity);
            let mut serve = serve();
            let thread = std::thread::Builder::new()
                .name(self.name.into())
                .spawn(move || {
                    for r in rx {
                        if !serve(r) {
                            break;
                        }
                    }
                })
                .ok()?;
            Some(Worker { requests, thread })
        };
        match self.worker.get_or_init(start) {
            Some(w) => w.requests.try_send(request).is_ok(),
            None => false,
        }
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        if let Some(Some(Worker { requests, thread })) = self.worker.take() {
            // Closes the queue: the thread ends once it has served what is queued.
            drop(requests);
            let _ = thread.join();
        }
    }
}
