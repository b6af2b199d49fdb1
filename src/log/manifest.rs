//! The manifest: the one file that says which segments make up the log, in order.
//!
//! Anything else in the directory that looks like ours (a segment not listed, a `.tmp` file) is
//! a leftover of an interrupted roll-over or defrag and is removed at open. Replacing the
//! manifest — write `MANIFEST.tmp`, fdatasync, rename over `MANIFEST`, fsync the directory — is
//! therefore the single atomic step by which the log gains a segment or a defrag takes effect.
//!
//! Layout: a 32-byte file header of kind `KIND_MANIFEST`, the number of segments (u32), their
//! ids (u32 each, ascending log order), then a CRC32 of everything from the count on.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{self, HeaderError, KIND_MANIFEST, SEGMENT_HEADER_LEN};
use crate::error::{Error, Result};
use crate::vfs::{OpenMode, Vfs};

pub const MANIFEST_NAME: &str = "MANIFEST";
const MANIFEST_TMP: &str = "MANIFEST.tmp";

pub fn encode(ids: &[u32]) -> Vec<u8> {
    let mut b = format::file_header(KIND_MANIFEST, 0).to_vec();
    b.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        b.extend_from_slice(&id.to_le_bytes());
    }
    let crc = crc32fast::hash(&b[SEGMENT_HEADER_LEN as usize..]);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Parses a manifest; `path` is for error messages.
pub fn decode(b: &[u8], path: &Path) -> Result<Vec<u32>> {
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
    let count = format::read_u32(b, h).ok_or_else(|| Error::corruption(path, h as u64, "manifest truncated"))?;
    let end = (count as usize).checked_mul(4).and_then(|n| n.checked_add(h + 4));
    let end = match end {
        Some(end) if b.len() == end + 4 => end,
        _ => return Err(Error::corruption(path, h as u64, "manifest length does not match its count")),
    };
    if format::read_u32(b, end) != Some(crc32fast::hash(&b[h..end])) {
        return Err(Error::corruption(path, end as u64, "manifest checksum mismatch"));
    }
    let ids: Vec<u32> = (0..count as usize).filter_map(|i| format::read_u32(b, h + 4 + 4 * i)).collect();
    if ids.is_empty() || ids.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::corruption(path, h as u64, "manifest segment list is empty or not ascending"));
    }
    Ok(ids)
}

/// Reads the manifest of `dir`; `Ok(None)` if there is none.
pub fn read(dir: &Path) -> Result<Option<Vec<u32>>> {
    let path = dir.join(MANIFEST_NAME);
    match std::fs::read(&path) {
        Ok(b) => decode(&b, &path).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read manifest", Some(path), e)),
    }
}

/// Atomically replaces the manifest of `dir` with one listing `ids`.
pub fn write(dir: &Path, vfs: &Arc<dyn Vfs>, ids: &[u32], sync: bool) -> Result<()> {
    let tmp: PathBuf = dir.join(MANIFEST_TMP);
    let path = dir.join(MANIFEST_NAME);
    let io = |what: &str, p: &Path, e| Error::io(what, Some(p.to_path_buf()), e);
    let _ = vfs.remove_file(&tmp);
    let f = vfs.open(&tmp, OpenMode::CreateNew).map_err(|e| io("create manifest", &tmp, e))?;
    f.write_all_at(&encode(ids), 0).map_err(|e| io("write manifest", &tmp, e))?;
    if sync {
        f.sync_data().map_err(|e| io("fdatasync manifest", &tmp, e))?;
    }
    drop(f);
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
        let b = encode(&[3, 4, 9]);
        assert_eq!(decode(&b, p).unwrap(), vec![3, 4, 9]);
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert!(decode(&d, p).is_err(), "flip at {i} accepted");
        }
        for cut in 0..b.len() {
            assert!(decode(&b[..cut], p).is_err(), "cut at {cut} accepted");
        }
        assert!(decode(&encode(&[]), p).is_err());
        assert!(decode(&encode(&[4, 3]), p).is_err());
    }
}
