//! Using the second core for the two halves of one large job (an open's replay, a bottom-up
//! tree build), where nothing else would run on it.

/// Runs `first` on this thread and `second` on a scoped thread of its own (named `name`), and
/// returns both results. Both run here, one after the other, on a machine with one core or if
/// no thread can be started. A panic in `second` is passed on.
pub(crate) fn join<A, B: Send>(name: &str, first: impl FnOnce() -> A, second: impl Fn() -> B + Sync) -> (A, B) {
    if !std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        return (first(), second());
    }
    std::thread::scope(|s| {
        let other = std::thread::Builder::new().name(name.into()).spawn_scoped(s, &second).ok();
        let a = first();
        let b = match other.map(|h| h.join()) {
            Some(Ok(b)) => b,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => second(),
        };
        (a, b)
    })
}

#[cfg(test)]
mod tests {
    /// Both halves run, each once, and their results come back in order; a panic in the
    /// second reaches the caller.
    #[test]
    fn join_runs_each_half_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let runs = AtomicUsize::new(0);
        let (a, b) = super::join(
            "test",
            || {
                runs.fetch_add(1, Ordering::SeqCst);
                "first"
            },
            || {
                runs.fetch_add(10, Ordering::SeqCst);
                std::thread::current().name().map(str::to_string)
            },
        );
        assert_eq!(runs.load(Ordering::SeqCst), 11);
        assert_eq!(a, "first");
        // On a machine with more than one core the second half ran on the named thread.
        if std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
            assert_eq!(b.as_deref(), Some("test"));
        }
        let caught = std::panic::catch_unwind(|| super::join("test", || 1, || -> u8 { panic!("second half") }));
        assert!(caught.is_err());
    }
}
