//! One adapter per engine: each opens its engine with its durable default (fsync at commit).

pub mod fjall;
pub mod jammdb;
pub mod lmdb;
pub mod logtree;
pub mod redb;
pub mod sled;

/// Cache given to the engines that have a user-space cache (redb, fjall, sled), as redb's
/// benchmark does (4 GiB): the whole data set fits, as it does in the page cache for the
/// engines that read through memory maps (logtree, LMDB, jammdb).
pub const CACHE_SIZE: usize = 4 << 30;
