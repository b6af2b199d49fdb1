//! Kill points for crash tests.
//!
//! With the `failpoints` feature (enabled for this crate's own tests), [`hit`] aborts the
//! process when the environment variable `LOGTREE_FAILPOINT` names the point reached: a child
//! process armed that way dies exactly between two steps of a defrag, a roll-over or a restore,
//! and the parent checks what reopening finds. Without the feature `hit` is an empty inline
//! function.

/// Aborts the process if `LOGTREE_FAILPOINT` equals `name`.
#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if ARMED.get_or_init(|| std::env::var("LOGTREE_FAILPOINT").ok()).as_deref() == Some(name) {
        // Like a SIGKILL for what is on disk: no destructor runs, nothing more is written or
        // synced; the page cache keeps what was written.
        std::process::abort();
    }
}

/// Does nothing: the `failpoints` feature is off.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &str) {}
