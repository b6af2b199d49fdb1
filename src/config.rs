//! How a [`crate::Backend`] is opened.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::vfs::{StdVfs, Vfs};

/// Default for [`Config::batch_interval`]: 100 ms, as etcd's backend.
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Default for [`Config::batch_limit`]: 10,000 pending operations, as etcd's backend.
pub const DEFAULT_BATCH_LIMIT: usize = 10_000;
/// Default for [`Config::layer_entries`]: 8,192 entries.
pub const DEFAULT_LAYER_ENTRIES: usize = 8192;
/// The largest accepted [`Config::layer_entries`]: each bucket's layer of recent writes has a
/// filter of 2 bytes per entry it may hold (2 MiB at this bound).
pub const MAX_LAYER_ENTRIES: usize = 1 << 20;
/// Default for [`Config::segment_size`]: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// The smallest accepted [`Config::segment_size`].
pub const MIN_SEGMENT_SIZE: u64 = 4096;
/// The largest accepted [`Config::segment_size`]: value offsets in the index are 32-bit.
pub const MAX_SEGMENT_SIZE: u64 = u32::MAX as u64;

/// Settings for [`crate::Backend::open`].
///
/// ```
/// use std::time::Duration;
/// let dir = tempfile::tempdir()?;
/// let mut config = logtree::Config::new(dir.path().join("db"));
/// config.batch_interval = Duration::from_millis(10);
/// let backend = logtree::Backend::open(config)?;
/// backend.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    /// The database directory; created (with its parents) if missing.
    pub path: PathBuf,
    /// Pending writes become durable at least this often (default 100 ms). `Duration::ZERO`
    /// turns the timer off: commits then happen only at `batch_limit` or on request.
    pub batch_interval: Duration,
    /// Pending writes become durable as soon as this many operations are pending (default
    /// 10,000; at least 1). A limit of 1 makes every `BatchTx` durable when it is dropped.
    pub batch_limit: usize,
    /// A log segment is closed and a new one begun when the next transaction would not fit
    /// (default 64 MiB; 4 KiB to 4 GiB − 1). A single operation larger than this gets a segment
    /// of its own.
    pub segment_size: u64,
    /// A bucket's writes go into a small tree of recent writes, handed to a background thread
    /// that merges them into the bucket's main tree once it holds this many entries (default
    /// 8,192; 1 to [`MAX_LAYER_ENTRIES`]). Larger: fewer, longer merges and more memory; the default keeps the
    /// small tree in the CPU cache (DESIGN.md §3, "Layers").
    pub layer_entries: usize,
    /// Default true: every commit ends with `fdatasync`. Set false only for tests and
    /// benchmarks that do not need durability.
    pub sync: bool,
    /// Default false. A read-only open takes a shared lock, never modifies a file (a torn tail
    /// is ignored in memory, not truncated) and refuses writes with [`Error::ReadOnly`].
    pub read_only: bool,
    /// Default true: a read-write open cuts the log's torn tail whatever it holds, as a crash
    /// leaves it. False: when the tail does not read as a write cut by a crash —
    /// [`RecoveryStats::tail_damaged`](crate::RecoveryStats::tail_damaged) or
    /// [`lost_write`](crate::RecoveryStats::lost_write), so that it may hold committed
    /// transactions — the open fails with [`Error::Corruption`] (file and offset) and changes
    /// nothing, for the tail to be looked at first. For maintenance opens (`logtree defrag`
    /// sets it false); after a crash, the default keeps a database that only a crash touched
    /// opening without help (DESIGN.md §6 step 7).
    pub cut_damaged_tail: bool,
    /// The file-system seam every write goes through (default: the real file system). Tests
    /// put a fault-injecting implementation here; see [`crate::vfs`].
    pub vfs: Arc<dyn Vfs>,
}

impl Config {
    /// A configuration with the defaults above for the directory `path`.
    pub fn new(path: impl Into<PathBuf>) -> Config {
        Config {
            path: path.into(),
            batch_interval: DEFAULT_BATCH_INTERVAL,
            batch_limit: DEFAULT_BATCH_LIMIT,
            segment_size: DEFAULT_SEGMENT_SIZE,
            layer_entries: DEFAULT_LAYER_ENTRIES,
            sync: true,
            read_only: false,
            cut_damaged_tail: true,
            vfs: Arc::new(StdVfs),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.batch_limit == 0 {
            return Err(Error::InvalidConfig("batch_limit must be at least 1".into()));
        }
        if !(1..=MAX_LAYER_ENTRIES).contains(&self.layer_entries) {
            return Err(Error::InvalidConfig(format!(
                "layer_entries {} is outside 1..={MAX_LAYER_ENTRIES}",
                self.layer_entries
            )));
        }
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(Error::InvalidConfig(format!(
                "segment_size {} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}",
                self.segment_size
            )));
        }
        if self.path.as_os_str().is_empty() {
            return Err(Error::InvalidConfig("path is empty".into()));
        }
        Ok(())
    }
}
