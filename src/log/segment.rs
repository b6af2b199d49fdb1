//! One segment file of the log, and its memory map.
//!
//! A segment is written only by appending at its end (a copy into a writable map, or a `pwrite`;
//! see below) and read only through a read-only `MAP_SHARED` map of it. On Linux shared maps
//! and `pwrite` see one page cache, so bytes appended are readable through the map as soon as
//! the write returns — which is how a write becomes visible to readers before it is durable,
//! as in etcd.
//!
//! The map is made once, as long as the segment may grow (its capacity), not as long as the
//! file is: there is no remap and so no moment at which a reader's slice could dangle. Touching
//! a mapped page beyond the end of the file would raise SIGBUS, so every read is checked
//! against the bytes written so far (`len`), never against the map's length alone.
//!
//! Appends without a system call: where the file system can reserve blocks (`fallocate`, see
//! [`VfsFile::allocate`]), the writer reserves the next [`RESERVE_STEP`] bytes of the file at a
//! time and copies each small frame (up to 16 KiB) into a second, writable shared map of the
//! same file; larger ones are still written with `pwrite`. The kernel
//! has one page cache for both maps and for `fdatasync`, so the bytes are visible to readers as
//! soon as `len` is raised, and durable at the next sync exactly as a `pwrite`'s would be. Why:
//! a `pwrite` per transaction was about a fifth of the writer's time for small transactions
//! (an MVCC put is one). Why reserve first: a store through a map into a hole of a sparse file
//! on a full disk raises SIGBUS instead of returning ENOSPC; into reserved blocks it cannot
//! fail, and a full disk is an error from `fallocate`. The reserved tail reads as zeros: it is
//! cut back to `len` when the segment is sealed or dropped, and a crash leaves it as a zero
//! tail, which recovery truncates like a torn one. The writer's `Prefaulter` faults the map's
//! pages in ahead of the appends, on a thread of its own (`prefault.rs`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::{Mmap, MmapOptions, MmapRaw};

use super::format::{self, HeaderError, KIND_SEGMENT, SEGMENT_HEADER_LEN};
use super::prefault::Prefaulter;
use crate::error::{Error, Result};
use crate::huge_pages::HUGE_PAGE;
use crate::populate;
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
    /// How appends reach the file (the writer's business; others lock it only to read the
    /// reserve's size, so it is rarely contended).
    appends: Mutex<Appends>,
    /// Where the last `start_writeback` ended: the bytes below it were handed to the kernel to
    /// write back (or were written before this process).
    written_back: AtomicU64,
}

/// How far bytes may be copied into the writable map (see the module documentation).
pub const RESERVE_STEP: u64 = 2 << 20;

/// The context of the error a failed fdatasync of a segment returns (`Error::Io`): the failure
/// after which pages the disk lost may still be in the page cache (see `Durability::poison`).
pub const SYNC_CONTEXT: &str = "fdatasync segment";

/// Bytes written to a segment between two requests to start writing them back
/// (`Segment::start_writeback`; DESIGN.md §5).
pub const WRITEBACK_STEP: u64 = 1 << 20;

/// Appends longer than this use `pwrite` even where the map could take them: one system call
/// is nothing beside their copy, while copying through the map takes a page fault per 4 KiB.
const MAP_COPY_MAX: usize = 16 << 10;

/// Whether settling made huge pages of a segment's file in this process (`Segment::settle`):
/// not yet known, yes, or no (then segments are no longer settled).
static HUGE_FILE_PAGES: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// The writer's side of a segment.
struct Appends {
    /// Bytes of the file that exist (its length): appends through the map stay below this.
    reserved: u64,
    /// The writable map, made at the first append through it (shared with the prefaulter's
    /// requests, which keep it mapped while they run).
    map: Option<Arc<MmapRaw>>,
    /// How far the pages of `map` were asked to be faulted in ahead of the writer.
    prefaulted: u64,
    /// The writer's end at the last `unmap_for_writeback`, where the next one starts: `map`
    /// maps no page below it, save a few that a prefault request made before that call may
    /// have faulted in again since.
    unmapped: u64,
    /// Set when reserving space early for the prefault window failed: not tried again until an
    /// append's own reservation succeeds (a full disk would otherwise be asked at every append).
    no_early_reserve: bool,
    /// False once the file cannot be written through a map (the Vfs declined to reserve, or
    /// the map could not be made) or when the segment was opened read-only: appends use
    /// `write_all_at`.
    mapped: bool,
    /// Whether the file was extended by a reservation, which `seal` gives back. (Never true
    /// for a segment opened read-only, whose file must not change.)
    trim: bool,
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
            written_back: AtomicU64::new(SEGMENT_HEADER_LEN),
            appends: Mutex::new(Appends {
                reserved: SEGMENT_HEADER_LEN,
                map: None,
                prefaulted: 0,
                unmapped: 0,
                no_early_reserve: false,
                mapped: true,
                trim: false,
            }),
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
        // The map is of `as_file`: never let `len` (what readers may touch) exceed its length.
        let real = file.as_file().metadata().map_err(|e| Error::io("stat segment", Some(path.clone()), e))?.len();
        if len > real {
            return Err(Error::corruption(&path, real, format!("the Vfs reports {len} bytes, the file has {real}")));
        }
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
            written_back: AtomicU64::new(len),
            appends: Mutex::new(Appends {
                reserved: len,
                map: None,
                prefaulted: 0,
                unmapped: 0,
                no_early_reserve: false,
                mapped: !read_only && capacity > 0,
                trim: false,
            }),
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Bytes the file takes: what was written, plus the space reserved for appends beyond it
    /// (at most [`RESERVE_STEP`] and the prefault window, and only in the segment being
    /// written).
    pub fn file_len(&self) -> u64 {
        let reserved = self.appends.lock().unwrap_or_else(|e| e.into_inner()).reserved;
        reserved.max(self.len())
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

    /// Appends `buf` at `off` (which must be the current end) and makes it readable. With a
    /// `prefaulter`, the pages after it are faulted in ahead of the next appends (see
    /// `prefault.rs`).
    pub fn append(&self, buf: &[u8], off: u64, prefaulter: Option<&Prefaulter>) -> Result<()> {
        debug_assert_eq!(off, self.len());
        let end = off + buf.len() as u64;
        if end > self.capacity() {
            // The writer sizes segments so this cannot happen; refuse rather than write bytes
            // no reader could reach.
            return Err(Error::corruption(&self.path, off, "append beyond the segment's capacity"));
        }
        let mut appends = self.appends.lock().unwrap_or_else(|e| e.into_inner());
        if !self.copy_into_map(&mut appends, buf, off, prefaulter)? {
            self.file.write_all_at(buf, off).map_err(|e| Error::io("write segment", Some(self.path.clone()), e))?;
            appends.reserved = appends.reserved.max(end);
        }
        self.len.store(end, Ordering::Release);
        Ok(())
    }

    /// Copies `buf` to `off` through the writable map, reserving file space first as needed.
    /// False if this segment is not written that way (the caller then uses `write_all_at`).
    fn copy_into_map(
        &self,
        appends: &mut Appends,
        buf: &[u8],
        off: u64,
        prefaulter: Option<&Prefaulter>,
    ) -> Result<bool> {
        if !appends.mapped || buf.len() > MAP_COPY_MAX {
            return Ok(false);
        }
        let end = off + buf.len() as u64;
        if end > appends.reserved && !self.reserve(appends, end)? {
            return Ok(false);
        }
        if appends.map.is_none() {
            // A shared read-write map of our own segment file, which no other process writes
            // (the directory lock is exclusive for writers). Only `copy_into_map` writes through
            // it; see the SAFETY note of that copy.
            match MmapOptions::new().len(self.map.len()).map_raw(self.file.as_file()) {
                Ok(map) => appends.map = Some(Arc::new(map)),
                Err(_) => {
                    appends.mapped = false;
                    return Ok(false);
                }
            }
        }
        let Some(map) = appends.map.as_ref() else { return Ok(false) };
        // SAFETY: `off + buf.len() <= capacity`, the map's length (checked by `append`), so
        // the destination lies inside the map; it lies below `reserved`, inside the file and on
        // blocks `allocate` reserved, so the store cannot fault; and it is at or above `len`,
        // which no reader reads until the caller raises `len` (release) after this copy. The
        // writer's lock (and this segment's `appends` lock) make this the only writer.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), map.as_mut_ptr().add(off as usize), buf.len()) };
        if let Some(p) = prefaulter {
            self.prefault_after(appends, end, p);
        }
        Ok(true)
    }

    /// Reserves file space up to at least `end` (a whole `RESERVE_STEP` at a time). False if
    /// the file cannot be written through the map after all.
    fn reserve(&self, appends: &mut Appends, end: u64) -> Result<bool> {
        let to = end.next_multiple_of(RESERVE_STEP).min(self.capacity()).max(end);
        let at = appends.reserved;
        match self.file.allocate(at, to - at) {
            // Trust, but verify once per reservation: a store past the mapped file's end
            // would raise SIGBUS.
            Ok(true) if self.file.as_file().metadata().is_ok_and(|m| m.len() >= to) => {
                appends.reserved = to;
                appends.trim = true;
                appends.no_early_reserve = false;
                Ok(true)
            }
            Ok(_) => {
                appends.mapped = false;
                Ok(false)
            }
            Err(e) => Err(Error::io("reserve segment space", Some(self.path.clone()), e)),
        }
    }

    /// Asks `p` to fault in the pages of its window after the writer's `end`
    /// ([`Prefaulter::window`]), reserving the next step of file space first if the window
    /// reaches past the reserve (where the map may not be touched). Best effort: if the request
    /// fails, the writer takes the faults itself; if the reserve fails, a real shortage of space
    /// is reported by the reservation an append needs (and where the file system declines to
    /// reserve, the segment goes over to `pwrite` here, as that reservation would).
    fn prefault_after(&self, appends: &mut Appends, end: u64, p: &Prefaulter) {
        let Some((from, want)) = Prefaulter::window(end, appends.prefaulted) else { return };
        let want = want.min(self.capacity());
        if want > appends.reserved {
            if appends.no_early_reserve {
                return;
            }
            if !matches!(self.reserve(appends, want), Ok(true)) {
                appends.no_early_reserve = true;
                return;
            }
        }
        let to = want.min(appends.reserved);
        if to > from
            && let Some(map) = appends.map.as_ref()
            && p.request(map, from, to - from)
        {
            appends.prefaulted = to;
        }
    }

    /// Gives back the space reserved beyond `len` and stops appending through the map: when
    /// the segment is sealed (it will not grow again).
    pub fn seal(&self) -> Result<()> {
        let mut appends = self.appends.lock().unwrap_or_else(|e| e.into_inner());
        appends.mapped = false;
        appends.map = None;
        self.give_back(&mut appends)
    }

    /// Has the kernel read this segment again in 2 MiB pages, a huge page at a time, through a
    /// second map advised `MADV_HUGEPAGE` made for the purpose, until `turn` (called before each
    /// huge page, and which may wait for a good moment: see `settle.rs`) returns false or the
    /// segment leaves the log; returns how many bytes (DESIGN.md §2.3 says why and what it
    /// costs). Only whole huge pages, where both maps start on one, in a backend that syncs;
    /// not at all once the kernel has shown that it makes no huge pages of these files (the
    /// first segment settled in the process tells).
    ///
    /// The caller promises that the segment is sealed and will never be appended to again
    /// (the log writer asks once a roll-over has moved it to the next segment): its bytes no
    /// longer change and, synced, its pages are clean. A huge page that appends went on
    /// dirtying would be written back whole at every sync.
    pub fn settle(&self, mut turn: impl FnMut() -> bool) -> u64 {
        let end = (self.len() as usize).min(self.map.len()) / HUGE_PAGE * HUGE_PAGE;
        let aligned = |p: *const u8| (p as usize).is_multiple_of(HUGE_PAGE);
        let can = populate::supported() && HUGE_FILE_PAGES.load(Ordering::Relaxed) != NO;
        if !self.sync || end == 0 || !aligned(self.map.as_ptr()) || !can {
            return 0;
        }
        // SAFETY: as for the readers' map (`map_file`): read-only and shared, of bytes that no
        // longer change (the segment is sealed), within the file (`end <= len`). Nothing is read
        // through it: it only makes the kernel read the file.
        let Ok(through) = (unsafe { MmapOptions::new().len(end).map(self.file.as_file()) }) else { return 0 };
        if !aligned(through.as_ptr()) || !populate::advise_huge(&through) {
            return 0;
        }
        let mut at = 0;
        while at < end && !self.obsolete.load(Ordering::Acquire) && turn() {
            // SAFETY: both maps are read-only shared maps of this segment's file from its first
            // byte, and `at + HUGE_PAGE <= end`, inside both and inside the file.
            if !unsafe { populate::reread_huge(&self.map, &through, self.file.as_file(), at, HUGE_PAGE) } {
                break;
            }
            at += HUGE_PAGE;
        }
        if at > 0 && HUGE_FILE_PAGES.load(Ordering::Relaxed) == UNKNOWN {
            let huge = populate::smaps_kib(self.map.as_ptr() as usize, "FilePmdMapped:").is_some_and(|kib| kib > 0);
            HUGE_FILE_PAGES.store(if huge { YES } else { NO }, Ordering::Relaxed);
        }
        at as u64
    }

    /// Gives back the space reserved beyond `len`; later appends reserve again. (A defrag's
    /// new log does this at the switch, so that its size is that of the records it holds.)
    pub fn give_back_reserve(&self) -> Result<()> {
        self.give_back(&mut self.appends.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn give_back(&self, appends: &mut Appends) -> Result<()> {
        let len = self.len();
        if appends.trim && appends.reserved > len {
            self.file.set_len(len).map_err(|e| Error::io("trim segment", Some(self.path.clone()), e))?;
            appends.reserved = len;
            appends.prefaulted = appends.prefaulted.min(len);
            appends.trim = false;
        }
        Ok(())
    }

    /// Whether [`WRITEBACK_STEP`] bytes or more were written since the last
    /// [`start_writeback`](Self::start_writeback) (never with `sync: false`).
    #[inline]
    pub fn wants_writeback(&self) -> bool {
        self.sync && self.len() >= self.written_back.load(Ordering::Relaxed) + WRITEBACK_STEP
    }

    /// Asks the kernel to start writing back the whole pages written since the last call,
    /// without waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), after removing the
    /// writable map's entries for them as a sync does (see `unmap_for_writeback`). For one
    /// thread at a time (the committer's).
    ///
    /// Why: the next fdatasync then finds most of what it must write already on its way to the
    /// disk, and it holds the sync gate, which every write of the log waits for, for that much
    /// less time (DESIGN.md §5). Durability is unchanged: what is durable is still what an
    /// fdatasync covered, and a write-back error is reported to the next fdatasync (this call
    /// does not wait, so it takes no error from the file's error sequence).
    pub fn start_writeback(&self) {
        if !self.sync {
            return;
        }
        let from = self.written_back.load(Ordering::Relaxed);
        let to = self.len() / 4096 * 4096;
        if to < from + WRITEBACK_STEP {
            return;
        }
        {
            let mut appends = self.appends.lock().unwrap_or_else(|e| e.into_inner());
            let a = &mut *appends;
            if let Some(map) = a.map.as_ref() {
                let end = to.min(map.len() as u64);
                // SAFETY: `map` is the segment file's shared map (`map_raw` maps `MAP_SHARED`)
                // and the range ends inside it (`end` is capped by its length). Nothing holds
                // a reference into it: the writer copies through a raw pointer under
                // `appends`, held here.
                if end > a.unmapped
                    && unsafe { populate::discard(map, a.unmapped as usize, (end - a.unmapped) as usize) }
                {
                    a.unmapped = end;
                }
            }
        }
        populate::start_writeback(self.file.as_file(), from, to - from);
        self.written_back.store(to, Ordering::Relaxed);
    }

    /// fdatasync, after [`unmap_for_writeback`](Self::unmap_for_writeback) (both no-ops when
    /// the backend runs with `sync: false`).
    pub fn sync(&self) -> Result<()> {
        if self.sync {
            self.unmap_for_writeback();
            // Marked, so that background work leaves the disk and the memory map to it.
            let syncing = crate::pacing::foreground();
            let synced = self.file.sync_data();
            drop(syncing);
            synced.map_err(|e| Error::io(SYNC_CONTEXT, Some(self.path.clone()), e))?;
        }
        Ok(())
    }

    /// Removes the writable map's page-table entries from the writer's end at the previous call
    /// to the end of what the prefaulter has faulted in, so that the fdatasync that follows
    /// write-protects no page there one TLB flush at a time (DESIGN.md §2.3). The prefaulter is
    /// not asked again: faulting the window in again would dirty it again, for every sync to
    /// write out as zeros.
    fn unmap_for_writeback(&self) {
        let mut appends = self.appends.lock().unwrap_or_else(|e| e.into_inner());
        let a = &mut *appends;
        let Some(map) = a.map.as_ref() else { return };
        let len = self.len();
        let to = a.prefaulted.max(len).min(map.len() as u64);
        if to <= a.unmapped {
            return;
        }
        // SAFETY: `map` is the segment file's shared map (`map_raw` maps `MAP_SHARED`) and the
        // range ends inside it (`to` is capped by its length). Nothing holds a reference into
        // it: the writer copies through a raw pointer under `appends`, held here.
        if unsafe { populate::discard(map, a.unmapped as usize, (to - a.unmapped) as usize) } {
            // The next call starts again from the end: the writer maps the pages it writes from
            // there on, inside the range just unmapped.
            a.unmapped = len;
        }
    }

    /// Cuts the file back to `len` bytes (a torn tail found at open), durably.
    pub fn truncate(&self, len: u64) -> Result<()> {
        self.file.set_len(len).map_err(|e| Error::io("truncate torn tail", Some(self.path.clone()), e))?;
        let mut appends = self.appends.lock().unwrap_or_else(|e| e.into_inner());
        appends.reserved = len;
        appends.unmapped = appends.unmapped.min(len);
        drop(appends);
        self.len.store(len, Ordering::Release);
        self.sync()
    }

    /// The segment has left the log: remove its file once nothing uses it.
    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }

    /// Whether the segment has left the log ([`mark_obsolete`](Self::mark_obsolete)).
    pub fn is_obsolete(&self) -> bool {
        self.obsolete.load(Ordering::Acquire)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            // Best effort: a file left behind is not in the manifest and open removes it.
            let _ = self.vfs.remove_file(&self.path);
        } else {
            // Best effort: a reserved tail left behind reads as zeros, which the next open
            // cuts off as a torn tail.
            let _ = self.seal();
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
    // writers. Bytes beyond the end of the file are never touched (see `bytes`), so no SIGBUS:
    // `len` never exceeds the real file's length (checked at open; `VfsFile`'s safety contract
    // makes `as_file` the file that appends and truncations change).
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

    /// Appends through the writable map: every byte reads back through the readers' map and
    /// from the file, across several reservations; the file is longer than the data only by
    /// the reserved space, which sealing gives back; a reopened segment continues the same way.
    #[test]
    fn mapped_appends_read_back_and_seal_gives_back_the_reserve() {
        mapped_appends(None);
    }

    /// The same with pages faulted in ahead of the appends, which neither changes a byte nor
    /// keeps the reserve from being given back (even while a request may still be running).
    #[test]
    fn prefaulted_mapped_appends_read_back_and_seal_gives_back_the_reserve() {
        let p = Prefaulter::new(Default::default(), Default::default());
        mapped_appends(Some(&p));
        if crate::populate::supported() {
            assert!(p.requested() > 0, "pages were asked to be faulted in ahead");
        }
    }

    /// A sync leaves the writable map without page-table entries for what was written (so that
    /// writing the pages back interrupts no other core, see `unmap_for_writeback`), and every
    /// byte is still there, in the readers' map and in the file.
    #[test]
    #[cfg(target_os = "linux")]
    fn sync_unmaps_the_written_pages_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let vfs: Arc<dyn Vfs> = Arc::new(crate::vfs::StdVfs);
        let seg = Segment::create(dir.path(), &vfs, 1, 4 * RESERVE_STEP, true).unwrap();
        let mut expect = seg.written().to_vec();
        for i in 0..256u32 {
            let buf = vec![(i % 251) as u8 + 1; 4000];
            seg.append(&buf, seg.len(), None).unwrap();
            expect.extend_from_slice(&buf);
        }
        let map = seg.appends.lock().unwrap().map.clone().expect("appends went through the map");
        let resident = || populate::smaps_kib(map.as_ptr() as usize, "Rss:").expect("the map's Rss");
        let before = resident();
        assert!(before >= 900, "the written megabyte is mapped before the sync: {before} KiB");
        seg.sync().unwrap();
        // (A huge page mapping the file, as on a tmpfs with huge pages, may leave the rest of
        // its 2 MiB resident: so the test asks that the written megabyte went, not that all did.)
        let after = resident();
        assert!(after + 900 <= before, "the written pages are unmapped by the sync: {before} -> {after} KiB");
        assert_eq!(seg.written(), &expect[..]);
        seg.append(b"after", seg.len(), None).unwrap();
        expect.extend_from_slice(b"after");
        assert_eq!(seg.written(), &expect[..]);
        assert_eq!(&std::fs::read(&seg.path).unwrap()[..expect.len()], &expect[..]);
    }

    /// A write-back is asked for once a step's bytes are written since the last one (never
    /// with `sync: false`); it covers the whole pages written, unmaps them from the writable map
    /// as a sync does, and changes no byte: appends and a sync after it go on as before.
    #[test]
    #[cfg(target_os = "linux")]
    fn writeback_starts_after_a_step_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let vfs: Arc<dyn Vfs> = Arc::new(crate::vfs::StdVfs);
        let seg = Segment::create(dir.path(), &vfs, 1, 4 * RESERVE_STEP, true).unwrap();
        let mut expect = seg.written().to_vec();
        let append = |seg: &Segment, expect: &mut Vec<u8>, i: u32| {
            let buf = vec![(i % 251) as u8 + 1; 4000];
            seg.append(&buf, seg.len(), None).unwrap();
            expect.extend_from_slice(&buf);
        };
        for i in 0..250u32 {
            append(&seg, &mut expect, i);
        }
        assert!(!seg.wants_writeback(), "under a step: {} bytes", seg.len());
        seg.start_writeback();
        assert_eq!(seg.written_back.load(Ordering::Relaxed), SEGMENT_HEADER_LEN, "under a step, nothing is asked");
        for i in 250..300u32 {
            append(&seg, &mut expect, i);
        }
        assert!(seg.wants_writeback(), "past a step: {} bytes", seg.len());
        let map = seg.appends.lock().unwrap().map.clone().expect("appends went through the map");
        let resident = || populate::smaps_kib(map.as_ptr() as usize, "Rss:").expect("the map's Rss");
        let before = resident();
        seg.start_writeback();
        let back = seg.written_back.load(Ordering::Relaxed);
        assert_eq!(back, seg.len() / 4096 * 4096, "whole pages up to the end");
        assert!(!seg.wants_writeback());
        let after = resident();
        assert!(after + 900 <= before, "the pages written back are unmapped: {before} -> {after} KiB");
        assert_eq!(seg.written(), &expect[..]);
        for i in 300..320u32 {
            append(&seg, &mut expect, i);
        }
        seg.sync().unwrap();
        assert_eq!(seg.written(), &expect[..]);
        assert_eq!(&std::fs::read(&seg.path).unwrap()[..expect.len()], &expect[..]);

        let unsynced = Segment::create(dir.path(), &vfs, 2, 4 * RESERVE_STEP, false).unwrap();
        for i in 0..300u32 {
            unsynced.append(&[i as u8; 4000], unsynced.len(), None).unwrap();
        }
        assert!(!unsynced.wants_writeback(), "a backend that does not sync writes nothing back");
    }

    /// Settling reads a sealed segment again in huge pages without changing a byte; it leaves a
    /// segment of a backend that does not sync alone, and stops when asked.
    #[test]
    #[cfg(target_os = "linux")]
    fn settling_a_sealed_segment_keeps_every_byte() {
        // Whatever another test's segment told (only speed depends on it).
        HUGE_FILE_PAGES.store(UNKNOWN, Ordering::Relaxed);
        let dir = tempfile::tempdir().unwrap();
        let vfs: Arc<dyn Vfs> = Arc::new(crate::vfs::StdVfs);
        let seg = Segment::create(dir.path(), &vfs, 1, 8 << 20, true).unwrap();
        let mut expect = seg.written().to_vec();
        for i in 0..1600u32 {
            let buf: Vec<u8> = (0..4000u32).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect();
            seg.append(&buf, seg.len(), None).unwrap();
            expect.extend_from_slice(&buf);
        }
        seg.sync().unwrap();
        seg.seal().unwrap();
        assert_eq!(seg.settle(|| false), 0, "stopped before the first huge page");
        let settled = seg.settle(|| true);
        if populate::supported() && (seg.map.as_ptr() as usize).is_multiple_of(HUGE_PAGE) {
            assert_eq!(settled, 3 * HUGE_PAGE as u64, "the whole huge pages below the end ({} bytes)", seg.len());
            if huge_file_pages_expected(&seg.path) {
                let kib = populate::smaps_kib(seg.map.as_ptr() as usize, "FilePmdMapped:").unwrap();
                assert!(kib >= 2048, "the readers' map maps huge pages: {kib} KiB");
            }
        }
        assert_eq!(seg.written(), &expect[..], "every byte, read through the map again");
        assert_eq!(std::fs::read(&seg.path).unwrap(), expect, "and in the file");

        let unsynced = Segment::create(dir.path(), &vfs, 2, 8 << 20, false).unwrap();
        unsynced.append(&expect[..5 << 20], unsynced.len(), None).unwrap();
        unsynced.seal().unwrap();
        assert_eq!(unsynced.settle(|| true), 0, "a backend that does not sync: left alone");
    }

    /// Whether the kernel makes huge pages of the files of `path`'s file system when read
    /// through a map advised `MADV_HUGEPAGE`: transparent huge pages not turned off, and XFS
    /// (large folios since Linux 5.18) or ext4 (since 6.16).
    #[cfg(target_os = "linux")]
    fn huge_file_pages_expected(path: &Path) -> bool {
        const EXT4: i64 = 0xEF53;
        const XFS: i64 = 0x5846_5342;
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut v = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
        let kernel = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `statfs` is plain data, for which all zero bytes are a valid value.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path and `st` a statfs for the call to fill in.
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || thp.contains("[never]") {
            return false;
        }
        match st.f_type as i64 {
            EXT4 => kernel >= (6, 16),
            XFS => kernel >= (5, 18),
            _ => false,
        }
    }

    fn mapped_appends(prefaulter: Option<&Prefaulter>) {
        let slack = RESERVE_STEP + if prefaulter.is_some() { 2 * crate::log::prefault::AHEAD } else { 0 };
        let dir = tempfile::tempdir().unwrap();
        let vfs: Arc<dyn Vfs> = Arc::new(crate::vfs::StdVfs);
        let capacity = 3 * RESERVE_STEP + 1000;
        let seg = Segment::create(dir.path(), &vfs, 1, capacity, true).unwrap();
        let mut expect = seg.written().to_vec();
        let mut x = 7u64;
        while (expect.len() as u64) < capacity - 70_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = (x >> 33) as usize % 60_000 + 1;
            let buf: Vec<u8> = (0..n).map(|i| (i as u64 ^ x) as u8 | 1).collect();
            let off = seg.len();
            seg.append(&buf, off, prefaulter).unwrap();
            assert_eq!(seg.bytes(off, n), Some(&buf[..]), "read back through the map at {off}");
            expect.extend_from_slice(&buf);
            if x.is_multiple_of(3) {
                // Unmaps what is written and faulted in (`unmap_for_writeback`): the appends that
                // follow write through the map again, and the file's content is checked below.
                seg.sync().unwrap();
            }
            let file_len = std::fs::metadata(&seg.path).unwrap().len();
            assert_eq!(seg.file_len(), file_len, "file_len is the file's length");
            assert!(file_len >= seg.len() && file_len - seg.len() <= slack, "reserve {file_len}");
        }
        if cfg!(target_os = "linux") {
            assert!(seg.appends.lock().unwrap().map.is_some(), "appends went through the map");
        }
        assert_eq!(seg.written(), &expect[..]);
        let on_disk = std::fs::read(&seg.path).unwrap();
        assert_eq!(&on_disk[..expect.len()], &expect[..], "the file holds what was appended");
        assert!(on_disk[expect.len()..].iter().all(|&b| b == 0), "the reserved space reads as zeros");
        seg.sync().unwrap();
        seg.seal().unwrap();
        assert_eq!(std::fs::read(&seg.path).unwrap(), expect, "sealed: exactly the data");
        assert_eq!(seg.file_len(), seg.len());
        let path = seg.path.clone();
        drop(seg);

        let seg = Segment::open(path.clone(), &vfs, 1, capacity, false, false).unwrap();
        let off = seg.len();
        seg.append(b"more", off, prefaulter).unwrap();
        assert_eq!(seg.bytes(off, 4), Some(&b"more"[..]));
        drop(seg); // gives back the reserve too
        expect.extend_from_slice(b"more");
        assert_eq!(std::fs::read(&path).unwrap(), expect, "dropped: exactly the data");
    }
}
