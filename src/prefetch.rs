//! Cache prefetch hints, for reads whose addresses are known before the data is needed.
//!
//! A random read in a large index or log costs one cache miss per line touched, and on a VM
//! with nested paging a miss that also misses the TLB costs several hundred nanoseconds. Where
//! the code learns several addresses at once (a run of operations to replay, a record's lines)
//! asking for all of them before reading the first lets the misses overlap instead of queueing.

/// Asks the CPU to bring the start of `items` into the cache without waiting for it.
#[inline]
pub(crate) fn prefetch<T>(items: &[T]) {
    line(items.as_ptr().cast());
}

/// Asks the CPU to bring every cache line of `bytes` into the cache without waiting for them.
#[inline]
pub(crate) fn prefetch_all(bytes: &[u8]) {
    prefetch_range(bytes.as_ptr() as usize, bytes.len());
}

/// Asks the CPU to bring every cache line of the `len` bytes at address `start` into the cache
/// without waiting for them. Any address will do: a prefetch never faults.
#[inline]
pub(crate) fn prefetch_range(start: usize, len: usize) {
    const LINE: usize = 64;
    let end = start.saturating_add(len);
    let mut at = start & !(LINE - 1);
    while at < end {
        line(at as *const u8);
        let Some(next) = at.checked_add(LINE) else { break };
        at = next;
    }
}

#[inline]
fn line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of the x86_64 baseline, so the instruction exists; a prefetch
        // only hints the cache and never faults or reads into the program, whatever the
        // address (even one past a mapping's end).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::hint::black_box(p);
}
