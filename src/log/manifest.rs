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

use super::format::{self, HeaderError, KIND_MANIFEST, SEGMENT_HEADER_LEN};
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
    match format::parse_file_header(b, KIND_MANIFEST) {
        Ok(_) => {}
        Err(HeaderError::Magic) => return Err(Error::NotLogtree { file: path.to_path_buf() }),
        Err(HeaderError::Version(version)) => {
            return Err(Error::UnsupportedVersion { file: path.to_path_buf(), version });
        }
        Err(HeaderError::Short) => return Err(Error::corruption(path, 0, "manifest shorter than its header")),
        Err(HeaderError::Damaged(why)) => return Err(Error::corruption(path, 0, why)),
    }
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
    let read = || -> std::io::Result<Vec<u8>> {
        let mut b = Vec::new();
        crate::vfs::open_regular_file(std::fs::OpenOptions::new().read(true), &path)?.read_to_end(&mut b)?;
        Ok(b)
    };
    match read() {
        Ok(b) => decode(&b, &path).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read manifest", Some(path), e)),
    }
}

/// Atomically replaces the manifest of `dir` with one listing `ids`.
pub fn write(dir: &Path, vfs: &Arc<dyn Vfs>, m: &Manifest, sync: bool) -> Result<()> {
    let tmp: PathBuf = dir.join(MANIFEST_TMP);
    let path = dir.join(MANIFEST_NAME);
    let io = |what: &str, p: &Path, e| Error::io(what, Some(p.to_path_buf()), e);
    let _ = vfs.remove_file(&tmp);
    let f = vfs.open(&tmp, OpenMode::CreateNew).map_err(|e| io("create manifest", &tmp, e))?;
    f.write_all_at(&encode(m), 0).map_err(|e| io("write manifest", &tmp, e))?;
    if sync {
        f.sync_data().map_err(|e| io("fdatasync manifest", &tmp, e))?;
    }
    drop(f);
    crate::failpoint::hit("manifest:before-rename");
    vfs.rename(&tmp, &path).map_err(|e| io("rename manifest", &path, e))?;
    if sync {
        vfs.sync_dir(dir).map_err(|e| io("fsync directory", dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
