//! The append-only log: CRC-framed transactions in segment files, the manifest that lists the
//! segments, the writer that appends, and the recovery that replays.

pub mod background;
pub mod format;
pub mod manifest;
pub mod prefault;
pub mod reader;
pub mod recovery;
pub mod segment;
pub mod settle;
pub mod writer;
