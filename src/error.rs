//! The one error type of the crate.
//!
//! Every failure the engine can meet — bad input, a damaged file, a full disk, a lock held by
//! someone else — comes back as a [`Error`] value. Nothing in the public API panics on input.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What went wrong. Marked `#[non_exhaustive]`: later layers (MVCC, kv) add variants.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed. `context` says what the engine was doing.
    Io {
        /// What the engine was doing, e.g. "write segment", "fdatasync".
        context: String,
        /// The file involved, where there is one.
        path: Option<PathBuf>,
        /// The underlying error.
        source: io::Error,
    },
    /// A file's content is not what the engine wrote: a bad checksum with valid records after
    /// it, an impossible length, a broken chain of transactions. The engine refuses to open
    /// and deletes nothing, so that the damage can be inspected (`logtree check`).
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset in that file where the damage was found.
        offset: u64,
        /// What was wrong there.
        reason: String,
    },
    /// A file in the database directory is not a logtree file (bad magic).
    NotLogtree {
        /// The offending file.
        file: PathBuf,
    },
    /// A file was written by a format version this build does not read.
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// The version found in its header.
        version: u32,
    },
    /// The bucket does not exist (etcd panics here; logtree returns this).
    BucketNotFound {
        /// The bucket's name.
        bucket: Vec<u8>,
    },
    /// Another `Backend` (in this process or another) holds the directory's lock.
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// The backend was opened with `read_only`, and the call would write.
    ReadOnly,
    /// Keys (and bucket names) must not be empty.
    EmptyKey,
    /// A key or bucket name is longer than [`crate::MAX_KEY_LEN`].
    KeyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is longer than [`crate::MAX_VALUE_LEN`].
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An earlier write or fdatasync failed. From then on the engine cannot promise durability,
    /// so it refuses every write (reads keep working) until it is reopened — a failed fsync is
    /// never retried, since the kernel may already have dropped the dirty pages.
    Poisoned {
        /// The first failure, as text.
        cause: String,
    },
    /// The engine (or the store) has been closed.
    Closed,
    /// The configuration is unusable; the text says which field and why.
    InvalidConfig(String),
    /// The target directory of a restore is not empty; restore never overwrites.
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// The revision asked for has been compacted away (MVCC layer).
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The store's compacted revision.
        compacted: i64,
    },
    /// The revision asked for is in the future (MVCC layer).
    FutureRev {
        /// The revision asked for.
        requested: i64,
        /// The store's current revision.
        current: i64,
    },
    /// The transaction can no longer be used (e.g. the same thread asked for a second
    /// `BatchTx` while holding one, which would otherwise deadlock).
    TxUnusable(String),
    /// An atomic create (`kv::Store::atomic_put` with no previous pair) found the key present
    /// (libkv's `ErrKeyExists`).
    KeyExists,
    /// An atomic operation's previous pair is out of date: the key has been written since
    /// (libkv's `ErrKeyModified`).
    KeyModified,
    /// An atomic operation's key is missing or expired (libkv's `ErrKeyNotFound`).
    KeyNotFound,
    /// An argument of a `kv::Store` call is unusable (e.g. a previous pair of another key);
    /// the text says which and why. Nothing was changed.
    InvalidArgument(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, path: Option<PathBuf>, source: io::Error) -> Error {
        Error::Io { context: context.into(), path, source }
    }

    pub(crate) fn corruption(file: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corruption { file: file.into(), offset, reason: reason.into() }
    }

    /// True for the refusal of an open told not to cut a damaged tail
    /// ([`Config::cut_damaged_tail`](crate::Config::cut_damaged_tail) false): an
    /// [`Error::Corruption`] at the tail's first frame that does not verify, which a default open
    /// would cut. A tool can then offer to cut it, as `logtree defrag --cut-damaged-tail` does.
    pub fn is_uncut_damaged_tail(&self) -> bool {
        matches!(self, Error::Corruption { reason, .. } if reason.ends_with(UNCUT_TAIL))
    }

    /// True for [`Error::Corruption`], [`Error::NotLogtree`] and [`Error::UnsupportedVersion`]:
    /// the files on disk are not what this build can trust.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. } | Error::NotLogtree { .. } | Error::UnsupportedVersion { .. })
    }
}

/// How the reason of an [`Error::is_uncut_damaged_tail`] refusal ends (recovery writes it).
pub(crate) const UNCUT_TAIL: &str = "not cut (Config::cut_damaged_tail)";

fn fmt_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => b.iter().map(|x| format!("{x:02x}")).collect::<String>(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, path: Some(p), source } => {
                write!(f, "I/O error while {context} ({}): {source}", p.display())
            }
            Error::Io { context, path: None, source } => write!(f, "I/O error while {context}: {source}"),
            Error::Corruption { file, offset, reason } => {
                write!(f, "corruption in {} at offset {offset}: {reason}", file.display())
            }
            // Both are read from the file header (DESIGN.md §2.1): the magic at offset 0, the
            // version at offset 8. Named, so that a damaged header is found as other damage is.
            Error::NotLogtree { file } => {
                write!(f, "{} is not a logtree file (no logtree magic at offset 0)", file.display())
            }
            Error::UnsupportedVersion { file, version } => write!(
                f,
                "{} has format version {version} (at offset 8), which this build does not read",
                file.display()
            ),
            Error::BucketNotFound { bucket } => write!(f, "bucket {} not found", fmt_bytes(bucket)),
            Error::Locked { path } => {
                write!(
                    f,
                    "database {} is locked: another process, or another Backend of this one, has it open",
                    path.display()
                )
            }
            Error::ReadOnly => write!(f, "the backend is read-only"),
            Error::EmptyKey => write!(f, "keys and bucket names must not be empty"),
            Error::KeyTooLarge { len, max } => write!(f, "key of {len} bytes exceeds the limit of {max}"),
            Error::ValueTooLarge { len, max } => {
                write!(f, "value of {len} bytes exceeds the limit of {max}")
            }
            Error::Poisoned { cause } => {
                write!(f, "writes are refused after an earlier I/O failure ({cause}); reopen the database")
            }
            Error::Closed => write!(f, "the database is closed"),
            Error::InvalidConfig(why) => write!(f, "invalid configuration: {why}"),
            Error::NotEmpty { path } => {
                write!(f, "{} is not empty; restore needs an empty or missing directory", path.display())
            }
            Error::Compacted { requested, compacted } => {
                write!(f, "revision {requested} is compacted (compacted revision {compacted})")
            }
            Error::FutureRev { requested, current } => {
                write!(f, "revision {requested} is in the future (current revision {current})")
            }
            Error::TxUnusable(why) => write!(f, "transaction unusable: {why}"),
            Error::KeyExists => write!(f, "the key exists, cannot complete the atomic operation"),
            Error::KeyModified => write!(f, "the key was modified since the previous pair was read"),
            Error::KeyNotFound => write!(f, "the key was not found (missing or expired)"),
            Error::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
