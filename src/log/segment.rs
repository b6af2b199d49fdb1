//! One segment file of the log, and its memory map.
//!
//! A segment is written only by appending (`pwrite` at its end) and read only through a
//! read-only `MAP_SHARED` map of it. On Linux a shared map and `pwrite` see one page cache, so
//! bytes appended are readable through the map as soon as the write returns — which is how a
//! write becomes visible to readers before it is durable, as in etcd.
//!
//! The map is made once, as long as the segment may grow (its capacity), not as long as the
//! file is: there is no remap and so no moment at which a reader's slice could dangle. Touching
//! a mapped page beyond the end of the file would raise SIGBUS, so every read is checked
//! against the bytes written so far (`len`), never against the map's length alone.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::{Mmap, MmapOptions};

use super::format::{self, HeaderError, KIND_SEGMENT, SEGMENT_HEADER_LEN};
use crate::error::{Error, Result};
use crate::vfs::{OpenMode, Vfs, VfsFile};

/// File name of segment `id`.
pub fn segment_file_name(id: u32) -> String {
    format!("seg-{id:010}.log")
}

/// The id of a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub struct Segment {
    pub id: u32,
    pub path: PathBuf,
    file: Box<dyn VfsFile>,
    map: Mmap,
    /// Bytes of the file that hold data written by this process or found at open. Reads past
    /// it are refused. Only the writer (under the writer lock) raises it.
    len: AtomicU64,
    sync: bool,
    /// Set when the segment has left the log (defrag); the file is removed when the last
    /// reader drops its `Arc`.
    obsolete: AtomicBool,
    vfs: Arc<dyn Vfs>,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment").field("id", &self.id).field("len", &self.len()).finish()
    }
}

impl Segment {
    /// Creates segment `id` in `dir` durably: the header is written and synced under a
    /// temporary name, then renamed, so a segment file never exists without a valid header.
    /// The caller makes the rename durable (it syncs the directory when it writes the manifest
    /// that lists the new segment).
    pub fn create(dir: &Path, vfs: &Arc<dyn Vfs>, id: u32, capacity: u64, sync: bool) -> Result<Segment> {
        let path = dir.join(segment_file_name(id));
        let tmp = dir.join(format!("{}.tmp", segment_file_name(id)));
        let io = |what: &str, e| Error::io(what, Some(tmp.clone()), e);
        // A leftover from a crash during an earlier creation of the same id is garbage.
        let _ = vfs.remove_file(&tmp);
        let file = vfs.open(&tmp, OpenMode::CreateNew).map_err(|e| io("create segment", e))?;
        file.write_all_at(&format::file_header(KIND_SEGMENT, id as u64), 0)
            .map_err(|e| io("write segment header", e))?;
        if sync {
            file.sync_data().map_err(|e| io("fdatasync new segment", e))?;
        }
        vfs.rename(&tmp, &path).map_err(|e| io("rename new segment", e))?;
        let map = map_file(file.as_ref(), capacity.max(SEGMENT_HEADER_LEN), &path)?;
        Ok(Segment {
            id,
            path,
            file,
            map,
            len: AtomicU64::new(SEGMENT_HEADER_LEN),
            sync,
            obsolete: AtomicBool::new(false),
            vfs: vfs.clone(),
        })
    }

    /// Opens an existing segment and checks its header. `capacity` is how far the writer may
    /// grow it (0 for a segment that will only be read).
    pub fn open(
        path: PathBuf,
        vfs: &Arc<dyn Vfs>,
        id: u32,
        capacity: u64,
        read_only: bool,
        sync: bool,
    ) -> Result<Segment> {
        let mode = if read_only { OpenMode::Read } else { OpenMode::ReadWrite };
        let file = vfs.open(&path, mode).map_err(|e| Error::io("open segment", Some(path.clone()), e))?;
        let len = file.size().map_err(|e| Error::io("stat segment", Some(path.clone()), e))?;
        if len < SEGMENT_HEADER_LEN {
            return Err(Error::corruption(&path, 0, format!("segment is {len} bytes, shorter than its header")));
        }
        let map = map_file(file.as_ref(), len.max(capacity), &path)?;
        match format::parse_file_header(&map[..SEGMENT_HEADER_LEN as usize], KIND_SEGMENT) {
            Ok(found) if found == id as u64 => {}
            Ok(found) => {
                return Err(Error::corruption(&path, 16, format!("header names segment {found}, expected {id}")));
            }
            Err(HeaderError::Magic) => return Err(Error::NotLogtree { file: path }),
            Err(HeaderError::Version(version)) => return Err(Error::UnsupportedVersion { file: path, version }),
            Err(HeaderError::Short) => return Err(Error::corruption(&path, 0, "short header")),
            Err(HeaderError::Damaged(why)) => return Err(Error::corruption(&path, 0, why)),
        }
        Ok(Segment {
            id,
            path,
            file,
            map,
            len: AtomicU64::new(len),
            sync,
            obsolete: AtomicBool::new(false),
            vfs: vfs.clone(),
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// How far the segment may grow without a remap.
    pub fn capacity(&self) -> u64 {
        self.map.len() as u64
    }

    /// `len` bytes at `off`, if they lie within what has been written.
    pub fn bytes(&self, off: u64, len: usize) -> Option<&[u8]> {
        let end = off.checked_add(len as u64)?;
        if end > self.len() {
            return None;
        }
        self.map.get(off as usize..end as usize)
    }

    /// Everything written so far (for scanning).
    pub fn written(&self) -> &[u8] {
        let len = (self.len() as usize).min(self.map.len());
        &self.map[..len]
    }

    /// Appends `buf` at `off` (which must be the current end) and makes it readable.
    pub fn append(&self, buf: &[u8], off: u64) -> Result<()> {
        debug_assert_eq!(off, self.len());
        let end = off + buf.len() as u64;
        if end > self.capacity() {
            // The writer sizes segments so this cannot happen; refuse rather than write bytes
            // no reader could reach.
            return Err(Error::corruption(&self.path, off, "append beyond the segment's capacity"));
        }
        self.file.write_all_at(buf, off).map_err(|e| Error::io("write segment", Some(self.path.clone()), e))?;
        self.len.store(end, Ordering::Release);
        Ok(())
    }

    /// fdatasync (a no-op when the backend runs with `sync: false`).
    pub fn sync(&self) -> Result<()> {
        if self.sync {
            self.file.sync_data().map_err(|e| Error::io("fdatasync segment", Some(self.path.clone()), e))?;
        }
        Ok(())
    }

    /// Cuts the file back to `len` bytes (a torn tail found at open), durably.
    pub fn truncate(&self, len: u64) -> Result<()> {
        self.file.set_len(len).map_err(|e| Error::io("truncate torn tail", Some(self.path.clone()), e))?;
        self.len.store(len, Ordering::Release);
        self.sync()
    }

    /// The segment has left the log: remove its file once nothing uses it.
    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            // Best effort: a file left behind is not in the manifest and open removes it.
            let _ = self.vfs.remove_file(&self.path);
        }
    }
}

fn map_file(file: &dyn VfsFile, len: u64, path: &Path) -> Result<Mmap> {
    let len = usize::try_from(len)
        .map_err(|_| Error::InvalidConfig(format!("segment of {len} bytes does not fit in memory")))?;
    // SAFETY: the map is read-only and shared. Its bytes change only by the engine's own
    // appends beyond the segment's `len` (readers are checked against `len`, so they never see
    // a byte while it changes), or by truncation of a torn tail at open, before any reader
    // exists. Another process cannot write the files: the directory's lock is exclusive for
    // writers. Bytes beyond the end of the file are never touched (see `bytes`), so no SIGBUS.
    unsafe { MmapOptions::new().len(len).map(file.as_file()) }
        .map_err(|e| Error::io("memory-map segment", Some(path.to_path_buf()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(segment_file_name(7), "seg-0000000007.log");
        assert_eq!(parse_segment_file_name("seg-0000000007.log"), Some(7));
        assert_eq!(parse_segment_file_name("seg-7.log"), None);
        assert_eq!(parse_segment_file_name("seg-0000000007.log.tmp"), None);
        assert_eq!(parse_segment_file_name("seg-00000000x7.log"), None);
        assert_eq!(parse_segment_file_name("seg-9999999999.log"), None, "beyond u32");
    }
}
