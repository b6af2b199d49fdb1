//! # logtree
//!
//! An embedded storage engine with batched transactions, in the shape of etcd's backend
//! (`server/storage/backend` over bbolt), built on an append-only log of CRC32-framed records
//! read through memory maps, and an in-memory copy-on-write B-tree index.
//!
//! - [`Backend`] opens a directory and recovers it; [`Backend::batch_tx`] gives the one writer,
//!   [`Backend::read_tx`] an O(1) snapshot that never waits for it.
//! - Writes become visible when their [`BatchTx`] ends and durable by group commit: every
//!   [`Config::batch_interval`], as soon as [`Config::batch_limit`] operations are pending, or
//!   on request ([`BatchTx::commit`], [`Backend::force_commit`], [`Backend::close`]).
//! - After a crash, [`Backend::open`] recovers exactly a prefix of the transactions, including
//!   every one that a commit acknowledged. Damage is reported as [`Error::Corruption`], never
//!   silently skipped.
//!
//! ```
//! use logtree::{Backend, Config};
//!
//! let dir = tempfile::tempdir()?;
//! let db = Backend::open(Config::new(dir.path()))?;
//! let mut tx = db.batch_tx();
//! tx.create_bucket("key")?;
//! tx.put("key", "a", "1")?;
//! tx.put("key", "b", "2")?;
//! tx.commit()?;
//!
//! let rtx = db.read_tx();
//! assert_eq!(rtx.range("key", "a", "c", 0)?.len(), 2);
//! db.close()?;
//!
//! let db = Backend::open(Config::new(dir.path()))?; // recovered from the log
//! assert_eq!(db.read_tx().get("key", "b")?, Some(b"2".to_vec()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! DESIGN.md in the repository describes the on-disk format byte by byte, the commit pipeline,
//! recovery and the concurrency model.

#![warn(missing_docs)]

pub mod backend;
mod config;
mod error;
mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
mod huge_pages;
mod index;
pub mod kv;
mod log;
pub mod mvcc;
mod pacing;
mod parallel;
mod populate;
mod prefetch;
mod sync;
pub mod vfs;

pub use backend::{
    Backend, BatchTx, DefragStats, ReadTx, RecoveryStats, Snapshot, SnapshotInfo, Stats, TornAt, inspect_snapshot,
    restore,
};
pub use config::{
    Config, DEFAULT_BATCH_INTERVAL, DEFAULT_BATCH_LIMIT, DEFAULT_LAYER_ENTRIES, DEFAULT_SEGMENT_SIZE,
    MAX_LAYER_ENTRIES, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE,
};
pub use error::{Error, Result};

/// The longest key (and bucket name) accepted: 32 KiB, as bbolt's `MaxKeySize`.
pub const MAX_KEY_LEN: usize = 32 << 10;
/// The longest value accepted: 256 MiB.
pub const MAX_VALUE_LEN: usize = 256 << 20;

/// Whether logtree asks the kernel to back the memory of its in-memory indexes with transparent
/// huge pages, for the rest of the process (every backend in it). On by default.
///
/// Each 2 MiB region of the address space that index nodes are allocated in is handed, once,
/// to a background thread (`logtree-huge-backing`) that asks Linux (6.1 or later) to back it
/// with one huge page (`madvise(MADV_COLLAPSE)`): fewer TLB misses for lookups, scans and the
/// copies a write makes, whatever the program's allocator. It costs one 2 MiB copy per region,
/// made on that thread, and up to 2 MiB of memory per region that the allocator had reserved
/// but not yet used. Turn it off where memory is tight or that background copying is
/// unwelcome; where the allocator's memory is already on huge pages it changes nothing.
/// Elsewhere than Linux, where the kernel does not know the advice, and where transparent huge
/// pages are set to `never`, it is always off. DESIGN.md §3.
///
/// ```
/// logtree::set_index_huge_pages(false);
/// let (db, _dir) = logtree::Backend::open_temp()?;
/// # Ok::<(), logtree::Error>(())
/// ```
pub fn set_index_huge_pages(enabled: bool) {
    index::huge_backing::set_enabled(enabled);
}
