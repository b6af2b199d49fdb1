//! Where the kv layer gets the time from.
//!
//! Deadlines (`expire_in`, `delete_in`, a TTL) are wall-clock instants stored with the value, so
//! they mean the same thing after a restart. Reading the clock through a trait lets tests move
//! time by hand ([`ManualClock`]) instead of sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time for a [`crate::kv::Store`].
///
/// ```
/// use std::time::SystemTime;
/// use logtree::kv::{Clock, SystemClock};
///
/// let t = SystemClock.now();
/// assert!(t > SystemTime::UNIX_EPOCH);
/// ```
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The operating system's clock ([`SystemTime::now`]); the default.
///
/// ```
/// use std::sync::Arc;
/// use logtree::kv::{Store, SystemClock};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open_with_clock(logtree::Config::new(dir.path()), Arc::new(SystemClock))?;
/// # drop(store);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to: for tests of expiry without sleeps.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use logtree::kv::{Clock, ManualClock};
///
/// let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let clock = ManualClock::new(start);
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now(), start + Duration::from_secs(5));
/// ```
#[derive(Debug)]
pub struct ManualClock {
    /// Nanoseconds since the Unix epoch (an atomic so that `advance` needs no lock).
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock showing `start` (times before the Unix epoch read as the epoch).
    pub fn new(start: SystemTime) -> ManualClock {
        ManualClock { nanos: AtomicU64::new(to_nanos(start)) }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let add = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let _ = self.nanos.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_add(add)));
    }

    /// Sets the clock to `t` (backwards too).
    pub fn set(&self, t: SystemTime) {
        self.nanos.store(to_nanos(t), Ordering::Release);
    }
}

impl Default for ManualClock {
    /// A clock at a fixed instant (2023-11-14T22:13:20Z), so that tests are reproducible.
    fn default() -> ManualClock {
        ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

/// Nanoseconds since the Unix epoch: the unit deadlines are stored in. Saturates at both ends
/// (before 1970 reads as 0, after 2554 as `u64::MAX`, i.e. never).
pub(crate) fn to_nanos(t: SystemTime) -> u64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

pub(crate) fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

/// `now + d` in nanoseconds, saturating (a huge duration means "never").
pub(crate) fn deadline(now: u64, d: Duration) -> u64 {
    now.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
