//! The manifest: the one file that says which segments make up the log, in order.
//!
//! Anything else in the directory that looks like ours (a segment not listed, a `.tmp` file) is
//! a leftover of an interrupted roll-over or defrag and is removed at open. Replacing the
//! manifest — write `MANIFEST.tmp`, fdatasync, rename over `MANIFEST`, fsync the directory — is
//! therefore the single atomic step by which the log gains a segment or a defrag takes effect.
//!
//! Layout: a 32-byte file header of kind `KIND_MANIFEST`; the base sequence number (u64) — the
//! number of the log's first transaction, or of the next one if the log holds none, so that a
//! log missing its beginning is detected; the number of segments (u32); their ids (u32 each,
//! ascending log order); then a CRC32 of everything from the base sequence number on.

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{self, HeaderError, KIND_MANIFEST, KIND_SYNC_FAILED, SEGMENT_HEADER_LEN};
use crate::error::{Error, Result};
use crate::vfs::{OpenMode, Vfs};

pub const MANIFEST_NAME: &str = "MANIFEST";
/// The largest base sequence number a manifest may hold (half the u64 range: room for more
/// transactions than any log will ever have, and no overflow of the numbers that follow it).
pub const MAX_BASE_SEQ: u64 = u64::MAX / 2;
const MANIFEST_TMP: &str = "MANIFEST.tmp";

/// What the manifest says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub base_seq: u64,
    pub ids: Vec<u32>,
}

pub fn encode(m: &Manifest) -> Vec<u8> {
    let ids = &m.ids;
    let mut b = format::file_header(KIND_MANIFEST, 0).to_vec();
    b.extend_from_slice(&m.base_seq.to_le_bytes());
    b.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        b.extend_from_slice(&id.to_le_bytes());
    }
    let crc = crc32fast::hash(&b[SEGMENT_HEADER_LEN as usize..]);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Bytes of a manifest listing `segments` segments.
pub fn encoded_len(segments: usize) -> usize {
    SEGMENT_HEADER_LEN as usize + 8 + 4 + 4 * segments + 4
}

/// Parses a manifest; `path` is for error messages.
pub fn decode(b: &[u8], path: &Path) -> Result<Manifest> {
    format::parse_file_header(b, KIND_MANIFEST).map_err(|e| header_error(e, path))?;
    let h = SEGMENT_HEADER_LEN as usize;
    let truncated = || Error::corruption(path, h as u64, "manifest truncated");
    let base_seq = format::read_u64(b, h).ok_or_else(truncated)?;
    // Sequence numbers start at 1 (0 means "none" in a view) and only grow by one per
    // transaction, so a log can never come near u64::MAX; a base outside 1..=MAX_BASE_SEQ is
    // damage, and refusing it here keeps every `seq + 1` and `next_seq - 1` in range.
    if base_seq == 0 || base_seq > MAX_BASE_SEQ {
        return Err(Error::corruption(
            path,
            h as u64,
            format!("manifest base sequence number {base_seq} is impossible"),
        ));
    }
    let h = h + 8;
    let count = format::read_u32(b, h).ok_or_else(truncated)?;
    let end = (count as usize).checked_mul(4).and_then(|n| n.checked_add(h + 4));
    let end = match end {
        Some(end) if b.len() == end + 4 => end,
        _ => return Err(Error::corruption(path, h as u64, "manifest length does not match its count")),
    };
    let body = SEGMENT_HEADER_LEN as usize;
    if format::read_u32(b, end) != Some(crc32fast::hash(&b[body..end])) {
        return Err(Error::corruption(path, end as u64, "manifest checksum mismatch"));
    }
    let ids: Vec<u32> = (0..count as usize).filter_map(|i| format::read_u32(b, h + 4 + 4 * i)).collect();
    if ids.is_empty() || ids.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::corruption(path, h as u64, "manifest segment list is empty or not ascending"));
    }
    Ok(Manifest { base_seq, ids })
}

/// Reads the manifest of `dir`; `Ok(None)` if there is none.
pub fn read(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_NAME);
    read_whole(&path, "read manifest")?.map(|b| decode(&b, &path)).transpose()
}

/// The bytes of the file at `path`; `Ok(None)` if there is none.
fn read_whole(path: &Path, what: &str) -> Result<Option<Vec<u8>>> {
    let mut b = Vec::new();
    match crate::vfs::open_regular_file(std::fs::OpenOptions::new().read(true), path)
        .and_then(|mut f| f.read_to_end(&mut b))
    {
        Ok(_) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(what, Some(path.to_path_buf()), e)),
    }
}

/// Atomically replaces the manifest of `dir` with one listing `ids`.
pub fn write(dir: &Path, vfs: &Arc<dyn Vfs>, m: &Manifest, sync: bool) -> Result<()> {
    write_atomically(dir, vfs, (MANIFEST_TMP, MANIFEST_NAME, "manifest"), &encode(m), sync)
}

/// Writes `bytes` to `dir`'s file `names.1` all or nothing: into `names.0`, fdatasync, rename,
/// fsync of the directory. `names.2` names the file in errors.
fn write_atomically(
    dir: &Path,
    vfs: &Arc<dyn Vfs>,
    (tmp, name, what): (&str, &str, &str),
    bytes: &[u8],
    sync: bool,
) -> Result<()> {
    let tmp: PathBuf = dir.join(tmp);
    let path = dir.join(name);
    let io = |op: &str, p: &Path, e| Error::io(format!("{op} {what}"), Some(p.to_path_buf()), e);
    let _ = vfs.remove_file(&tmp);
    let f = vfs.open(&tmp, OpenMode::CreateNew).map_err(|e| io("create", &tmp, e))?;
    f.write_all_at(bytes, 0).map_err(|e| io("write", &tmp, e))?;
    if sync {
        f.sync_data().map_err(|e| io("fdatasync", &tmp, e))?;
    }
    drop(f);
    if name == MANIFEST_NAME {
        crate::failpoint::hit("manifest:before-rename");
    }
    vfs.rename(&tmp, &path).map_err(|e| io("rename", &path, e))?;
    if sync {
        vfs.sync_dir(dir).map_err(|e| Error::io("fsync directory", Some(dir.to_path_buf()), e))?;
    }
    Ok(())
}

/// The file a backend leaves once an fdatasync of one of its log's segments has failed: a file
/// header of kind `KIND_SYNC_FAILED` whose id field holds the number of the last transaction
/// known durable. The next open reads the log only up to it (a read-write one cuts the rest).
///
/// Why: after a failed fdatasync the kernel may keep the pages it could not write, marked
/// clean, in the page cache. A process that opens the log again before they are evicted reads
/// the transactions in them back as if they were on the disk, and an fdatasync does not write
/// clean pages; it would build on them, and once they were evicted (or the power cut) the log
/// would hold a gap before transactions it had acknowledged — and open as corrupt. Those
/// transactions were never acknowledged, so cutting them is allowed.
pub const SYNC_FAILED_NAME: &str = "SYNC-FAILED";
/// Where `SYNC-FAILED` is written before it is renamed into place.
pub const SYNC_FAILED_TMP: &str = "SYNC-FAILED.tmp";

/// What `SYNC-FAILED` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncFailed {
    /// An fdatasync of a segment failed in a running backend: the transactions after this one
    /// may not be on the disk. The next open reads the log only up to it.
    After(u64),
    /// An open's own fdatasync of the last segment failed (an error that writeback met before
    /// it): which of its pages the disk lost is unknown, so the next open drops the segment's
    /// pages from the page cache and reads the disk's copy (`VfsFile::drop_cached`).
    TailUnknown,
}

/// The id field of a `SYNC-FAILED` that says [`SyncFailed::TailUnknown`]: no transaction can
/// have this number (sequence numbers would take centuries to reach it).
const TAIL_UNKNOWN_ID: u64 = u64::MAX;

/// Leaves `SYNC-FAILED` in `dir` (write, fdatasync, rename, fsync of the directory). A file,
/// not the log: nothing more is written to the log after a failure.
pub fn write_sync_failed(dir: &Path, vfs: &Arc<dyn Vfs>, what: SyncFailed, sync: bool) -> Result<()> {
    let id = match what {
        SyncFailed::After(seq) => seq,
        SyncFailed::TailUnknown => TAIL_UNKNOWN_ID,
    };
    let header = format::file_header(KIND_SYNC_FAILED, id);
    write_atomically(dir, vfs, (SYNC_FAILED_TMP, SYNC_FAILED_NAME, "SYNC-FAILED"), &header, sync)
}

/// What `dir`'s `SYNC-FAILED` says, if there is one.
pub fn read_sync_failed(dir: &Path) -> Result<Option<SyncFailed>> {
    let path = dir.join(SYNC_FAILED_NAME);
    let Some(b) = read_whole(&path, "read SYNC-FAILED")? else { return Ok(None) };
    let id = format::parse_file_header(&b, KIND_SYNC_FAILED).map_err(|e| header_error(e, &path))?;
    if b.len() != SEGMENT_HEADER_LEN as usize {
        return Err(Error::corruption(&path, SEGMENT_HEADER_LEN, "SYNC-FAILED holds more than its header"));
    }
    Ok(Some(if id == TAIL_UNKNOWN_ID { SyncFailed::TailUnknown } else { SyncFailed::After(id) }))
}

/// The error a bad file header of the file at `path` is.
fn header_error(e: HeaderError, path: &Path) -> Error {
    match e {
        HeaderError::Magic => Error::NotLogtree { file: path.to_path_buf() },
        HeaderError::Version(version) => Error::UnsupportedVersion { file: path.to_path_buf(), version },
        HeaderError::Short => Error::corruption(path, 0, "file shorter than its header"),
        HeaderError::Damaged(why) => Error::corruption(path, 0, why),
    }
}

/// Removes `SYNC-FAILED` once the log has been cut after its transaction.
pub fn remove_sync_failed(dir: &Path, vfs: &Arc<dyn Vfs>, sync: bool) -> Result<()> {
    let path = dir.join(SYNC_FAILED_NAME);
    vfs.remove_file(&path).map_err(|e| Error::io("remove SYNC-FAILED", Some(path), e))?;
    if sync {
        vfs.sync_dir(dir).map_err(|e| Error::io("fsync directory", Some(dir.to_path_buf()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_failed_round_trip_and_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let vfs: Arc<dyn Vfs> = Arc::new(crate::vfs::StdVfs);
        assert_eq!(read_sync_failed(dir).unwrap(), None);
        write_sync_failed(dir, &vfs, SyncFailed::TailUnknown, true).unwrap();
        assert_eq!(read_sync_failed(dir).unwrap(), Some(SyncFailed::TailUnknown));
        write_sync_failed(dir, &vfs, SyncFailed::After(41), true).unwrap();
        assert_eq!(read_sync_failed(dir).unwrap(), Some(SyncFailed::After(41)));
        assert!(!dir.join(SYNC_FAILED_TMP).exists());
        let good = std::fs::read(dir.join(SYNC_FAILED_NAME)).unwrap();
        assert_eq!(good.len(), SEGMENT_HEADER_LEN as usize);
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x10;
            std::fs::write(dir.join(SYNC_FAILED_NAME), &b).unwrap();
            assert!(read_sync_failed(dir).unwrap_err().is_corruption(), "byte {i} flipped");
        }
        std::fs::write(dir.join(SYNC_FAILED_NAME), &good[..good.len() - 1]).unwrap();
        assert!(read_sync_failed(dir).unwrap_err().is_corruption(), "truncated");
        std::fs::write(dir.join(SYNC_FAILED_NAME), [&good[..], b"x"].concat()).unwrap();
        assert!(read_sync_failed(dir).unwrap_err().is_corruption(), "longer");
        std::fs::write(dir.join(SYNC_FAILED_NAME), &good).unwrap();
        remove_sync_failed(dir, &vfs, true).unwrap();
        assert_eq!(read_sync_failed(dir).unwrap(), None);
    }

    #[test]
    fn round_trip_and_damage() {
        let p = Path::new("MANIFEST");
        let m = |base_seq, ids: &[u32]| Manifest { base_seq, ids: ids.to_vec() };
        let b = encode(&m(77, &[3, 4, 9]));
        assert_eq!(b.len(), encoded_len(3));
        assert_eq!(decode(&b, p).unwrap(), m(77, &[3, 4, 9]));
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert!(decode(&d, p).is_err(), "flip at {i} accepted");
        }
        for cut in 0..b.len() {
            assert!(decode(&b[..cut], p).is_err(), "cut at {cut} accepted");
        }
        assert!(decode(&encode(&m(1, &[])), p).is_err());
        assert!(decode(&encode(&m(1, &[4, 3])), p).is_err());
        assert!(decode(&encode(&m(0, &[1])), p).is_err(), "base_seq 0");
        assert!(decode(&encode(&m(u64::MAX, &[1])), p).is_err(), "base_seq u64::MAX");
        assert!(decode(&encode(&m(MAX_BASE_SEQ, &[1])), p).is_ok());
    }
}
