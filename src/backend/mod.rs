//! The backend, in etcd's shape: [`Backend`] (opening, sizes, commits), [`BatchTx`] (the one
//! writer), [`ReadTx`] (snapshots), and the group committer.

#[allow(clippy::module_inception)]
mod backend;
mod batch_tx;
mod commit;
mod defrag;
mod hash;
mod merger;
mod read_tx;
mod snapshot;
mod tx_buffer;

pub use backend::{Backend, RecoveryStats, Stats, TornAt};
pub use batch_tx::BatchTx;
pub(crate) use batch_tx::check_key;
pub use defrag::DefragStats;
pub(crate) use hash::ContentHasher;
pub use read_tx::{Iter, ReadTx};
pub use snapshot::{Snapshot, SnapshotInfo, inspect as inspect_snapshot, restore};
