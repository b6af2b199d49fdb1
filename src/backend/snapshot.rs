//! Snapshots: a pinned view streamed as a self-contained, checksummed, compacted image, and
//! the restore that lays such an image down as a database.
//!
//! Image layout (DESIGN.md §9.1 has it byte by byte):
//! `file header (kind 3, id = seq) | record* | end record`, each record framed as
//! `crc32 u32 | len u32 | body`, the CRC covering `len` and `body`. Bodies are the log's
//! create-bucket and put operations (buckets numbered 1.. in name order), and the end record's
//! body is `0xFE | buckets u64 | keys u64 | hash u32`, where `hash` is [`Backend::hash`] of the
//! content. Only live records are written, so the image is compacted; its size is known before
//! a byte is written. Images of version 1 (the header's) differ only by their hash's definition
//! (`hash.rs`); they are still read.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::backend::Backend;
use super::batch_tx::{check_key, check_value};
use super::hash::ContentHasher;
use super::read_tx::{ReadTx, Reader, View};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::format::{
    self, DecodeStop, HeaderError, KIND_SNAPSHOT, MAX_FRAME_PAYLOAD, OP_CREATE_BUCKET, OP_PUT, Op, SEGMENT_HEADER_LEN,
    create_bucket_len, put_len,
};

const END_TAG: u8 = 0xFE;
const END_BODY_LEN: usize = 1 + 8 + 8 + 4;
const RECORD_HEADER_LEN: u64 = 8;
const WRITE_BUFFER: usize = 1 << 20;
/// Values resolved ahead of encoding, to overlap their cache misses.
const PREFETCH: usize = 32;

/// Loads the first byte of `value` (a plain load: it does not wait for the previous ones).
#[inline]
fn touch(value: &[u8]) {
    if let Some(b) = value.first() {
        std::hint::black_box(*b);
    }
}

/// A consistent view of the database, pinned, whose every transaction is durable; it streams
/// as an image with [`write_to`](Snapshot::write_to). Like a [`ReadTx`], it keeps every segment
/// it reads mapped until it is dropped, whatever defrag or writes happen meanwhile.
///
/// ```
/// let (db, _dir) = logtree::Backend::open_temp()?;
/// let mut tx = db.batch_tx();
/// tx.create_bucket("b")?;
/// tx.put("b", "k", "v")?;
/// drop(tx);
/// let snap = db.snapshot()?;
/// let mut image = Vec::new();
/// assert_eq!(snap.write_to(&mut image)?, snap.size());
///
/// let target = tempfile::tempdir()?;
/// logtree::restore(&mut image.as_slice(), &target.path().join("copy"))?;
/// let copy = logtree::Backend::open(logtree::Config::new(target.path().join("copy")))?;
/// assert_eq!(copy.hash(&[])?, db.hash(&[])?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Snapshot {
    view: Arc<View>,
}

/// What an image holds, as read by [`inspect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Bytes of the image.
    pub size: u64,
    /// Sequence number of the last transaction in it.
    pub seq: u64,
    /// Number of buckets.
    pub buckets: u64,
    /// Number of keys.
    pub keys: u64,
    /// [`Backend::hash`] of its content: what the restored database's `hash(&[])` gives. For an
    /// image of version 1, whose end record holds the old definition's hash (verified too),
    /// this is computed from its records.
    pub hash: u32,
}

impl Snapshot {
    pub(crate) fn new(view: Arc<View>) -> Snapshot {
        Snapshot { view }
    }

    /// Exactly the number of bytes [`write_to`](Snapshot::write_to) writes.
    pub fn size(&self) -> u64 {
        let c = &self.view.catalog;
        SEGMENT_HEADER_LEN
            + RECORD_HEADER_LEN * (c.len() as u64 + c.key_count())
            + c.live_bytes()
            + RECORD_HEADER_LEN
            + END_BODY_LEN as u64
    }

    /// Sequence number of the last transaction in the snapshot.
    pub fn seq(&self) -> u64 {
        self.view.seq
    }

    /// A read transaction over the snapshot's view.
    pub fn read_tx(&self) -> ReadTx {
        ReadTx::new(self.view.clone())
    }

    /// Streams the image into `w`; returns the bytes written (always [`size`](Self::size)).
    /// Reads and writes on the backend go on meanwhile.
    pub fn write_to(&self, w: &mut dyn Write) -> Result<u64> {
        let reader = Reader { catalog: &self.view.catalog, values: self.view.as_ref() };
        let mut out = Out { w, buf: Vec::with_capacity(WRITE_BUFFER + 4096), written: 0 };
        out.buf.extend_from_slice(&format::file_header(KIND_SNAPSHOT, self.view.seq));
        let mut hash = ContentHasher::new(false);
        let mut body = Vec::new();
        let mut keys = 0u64;
        for (i, bucket) in reader.catalog.iter().enumerate() {
            let id = i as u32 + 1;
            hash.bucket(&bucket.name);
            body.clear();
            format::encode_create_bucket(&mut body, id, &bucket.name);
            out.record(&body)?;
            // Values lie in log order, keys are walked in key order: each value read is a
            // likely cache (and TLB) miss. Resolving a batch of values first lets their misses
            // overlap instead of being paid one after another.
            let mut it = bucket.iter();
            let mut batch: Vec<(&[u8], &[u8])> = Vec::with_capacity(PREFETCH);
            loop {
                batch.clear();
                for (key, v) in it.by_ref().take(PREFETCH) {
                    let value = reader.value(v)?;
                    touch(value);
                    batch.push((key, value));
                }
                if batch.is_empty() {
                    break;
                }
                for &(key, value) in &batch {
                    hash.pair(key, value);
                    out.put_record(id, key, value)?;
                    keys += 1;
                }
            }
        }
        body.clear();
        body.push(END_TAG);
        body.extend_from_slice(&(reader.catalog.len() as u64).to_le_bytes());
        body.extend_from_slice(&keys.to_le_bytes());
        body.extend_from_slice(&hash.finish().to_le_bytes());
        out.record(&body)?;
        out.flush()?;
        debug_assert_eq!(out.written, self.size());
        Ok(out.written)
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("seq", &self.view.seq).field("size", &self.size()).finish()
    }
}

struct Out<'a> {
    w: &'a mut dyn Write,
    buf: Vec<u8>,
    written: u64,
}

impl Out<'_> {
    fn record(&mut self, body: &[u8]) -> Result<()> {
        let len = (body.len() as u32).to_le_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len);
        crc.update(body);
        self.buf.extend_from_slice(&crc.finalize().to_le_bytes());
        self.buf.extend_from_slice(&len);
        self.buf.extend_from_slice(body);
        self.maybe_flush()
    }

    /// A put record, encoded straight into the buffer (no intermediate copy of the value).
    fn put_record(&mut self, bucket: u32, key: &[u8], value: &[u8]) -> Result<()> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; 8]);
        format::encode_put(&mut self.buf, bucket, key, value);
        let len = (self.buf.len() - start - 8) as u32;
        self.buf[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[start + 4..]);
        self.buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        self.maybe_flush()
    }

    fn maybe_flush(&mut self) -> Result<()> {
        if self.buf.len() >= WRITE_BUFFER { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<()> {
        self.w.write_all(&self.buf).map_err(|e| Error::io("write snapshot", None, e))?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl Backend {
    /// Makes pending writes durable and pins the view of that instant as a [`Snapshot`].
    pub fn snapshot(&self) -> Result<Snapshot> {
        let view = self.current_view();
        self.sync_to(view.seq)?;
        Ok(Snapshot::new(view))
    }

    /// The deterministic hash of the content visible now (committed or pending), leaving out
    /// the (bucket, key) pairs in `ignores`: a CRC32 (IEEE) fed, for each bucket in name order,
    /// the byte 1, the name's length (u32 LE) and the name, then for each of its keys in order
    /// that is not ignored, the byte 2, the key's length and the key, the value's length and
    /// the value (DESIGN.md §9.2). Content, not history: replicas holding the same pairs hash
    /// alike whatever writes, deletes, defrags or restores led there.
    ///
    /// ```
    /// let (a, _da) = logtree::Backend::open_temp()?;
    /// let (b, _db) = logtree::Backend::open_temp()?;
    /// for db in [&a, &b] {
    ///     let mut tx = db.batch_tx();
    ///     tx.create_bucket("b")?;
    ///     tx.put("b", "k", "v")?;
    ///     tx.commit()?;
    /// }
    /// b.batch_tx().put("b", "meta", "only in b")?;
    /// assert_ne!(a.hash(&[])?, b.hash(&[])?);
    /// assert_eq!(a.hash(&[])?, b.hash(&[(b"b", b"meta")])?); // ignored pairs are left out
    /// # Ok::<(), logtree::Error>(())
    /// ```
    pub fn hash(&self, ignores: &[(&[u8], &[u8])]) -> Result<u32> {
        let tx = self.read_tx();
        super::hash::hash(tx.reader(), ignores)
    }
}

fn image_corruption(offset: u64, reason: impl Into<String>) -> Error {
    Error::corruption(PathBuf::from("<snapshot image>"), offset, reason)
}

/// One record of an image, as [`read_image`] hands it over.
enum Record<'a> {
    Bucket { name: &'a [u8] },
    Put { bucket: &'a [u8], key: &'a [u8], value: &'a [u8] },
}

struct ImageReader<'a> {
    r: &'a mut dyn Read,
    offset: u64,
}

impl ImageReader<'_> {
    /// Fills `buf`; a stream that ends first is a truncated image.
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        match self.r.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                Err(image_corruption(self.offset, "the image ends early (truncated)"))
            }
            Err(e) => Err(Error::io("read snapshot image", None, e)),
        }
    }
}

/// Reads and verifies a whole image, handing each record to `on`.
fn read_image(from: &mut dyn Read, mut on: impl FnMut(Record<'_>) -> Result<()>) -> Result<SnapshotInfo> {
    let mut r = ImageReader { r: from, offset: 0 };
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    r.read_exact(&mut header)?;
    let seq = match format::parse_file_header(&header, KIND_SNAPSHOT) {
        Ok(seq) => seq,
        Err(HeaderError::Magic) => return Err(Error::NotLogtree { file: PathBuf::from("<snapshot image>") }),
        Err(HeaderError::Version(version)) => {
            return Err(Error::UnsupportedVersion { file: PathBuf::from("<snapshot image>"), version });
        }
        Err(HeaderError::Short | HeaderError::Damaged(_)) => {
            return Err(image_corruption(0, "not a valid snapshot image header"));
        }
    };
    // The content hash as `Backend::hash` defines it, which `SnapshotInfo` reports whatever the
    // image's version; and, for a version 1 image, the old definition its end record holds.
    let mut hash = ContentHasher::new(false);
    let mut legacy = (format::read_u32(&header, 8) == Some(1)).then(|| ContentHasher::new(true));
    let mut ids: HashSet<u32> = HashSet::new();
    // The image's order (buckets by name, each followed by its keys in order) is checked as it
    // is read: the hash is computed in the image's order and `Backend::hash` in sorted order,
    // so an image out of order or with a key twice was accepted by `inspect` and only refused
    // by `restore`'s final check, after the whole database was built.
    let mut last_bucket: Option<(u32, Vec<u8>)> = None;
    let mut last_key: Vec<u8> = Vec::new(); // empty: none yet in this bucket (keys are not empty)
    let mut body = Vec::new();
    let (mut buckets, mut keys) = (0u64, 0u64);
    loop {
        let at = r.offset;
        let mut h = [0u8; 8];
        r.read_exact(&mut h)?;
        let crc = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len == 0 || len > MAX_FRAME_PAYLOAD {
            return Err(image_corruption(at, format!("impossible record length {len}")));
        }
        // Read what the stream holds rather than allocating the claimed length up front: a
        // short, damaged image must not cost hundreds of megabytes before it is refused.
        body.clear();
        let got = (&mut *r.r)
            .take(len as u64)
            .read_to_end(&mut body)
            .map_err(|e| Error::io("read snapshot image", None, e))?;
        r.offset += got as u64;
        if got != len as usize {
            return Err(image_corruption(r.offset, "the image ends early (truncated)"));
        }
        let mut c = crc32fast::Hasher::new();
        c.update(&h[4..8]);
        c.update(&body);
        if c.finalize() != crc {
            return Err(image_corruption(at, "record checksum mismatch"));
        }
        match body[0] {
            END_TAG => {
                let field = |i: usize| format::read_u64(&body, 1 + 8 * i);
                let (Some(nb), Some(nk), Some(want)) = (field(0), field(1), format::read_u32(&body, 17)) else {
                    return Err(image_corruption(at, "malformed end record"));
                };
                if body.len() != END_BODY_LEN || nb != buckets || nk != keys {
                    return Err(image_corruption(at, "end record does not match the records before it"));
                }
                let hash = hash.finish();
                if legacy.map_or(hash, ContentHasher::finish) != want {
                    return Err(image_corruption(at, "content hash mismatch"));
                }
                let mut extra = [0u8; 1];
                match r.r.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => return Err(image_corruption(r.offset, "bytes after the end record")),
                    Err(e) => return Err(Error::io("read snapshot image", None, e)),
                }
                return Ok(SnapshotInfo { size: r.offset, seq, buckets, keys, hash });
            }
            OP_CREATE_BUCKET | OP_PUT => {}
            tag => return Err(image_corruption(at, format!("unknown record tag {tag}"))),
        }
        let mut op = None;
        let decoded = format::decode_ops(&body, 0, 0, |o| {
            if op.is_some() {
                return Err(DecodeStop::Rejected("more than one operation in a record"));
            }
            op = Some(o);
            Ok(())
        });
        match (decoded, op) {
            (Ok(()), Some(Op::CreateBucket { bucket, name })) => {
                if !ids.insert(bucket) {
                    return Err(image_corruption(at, "a bucket number is used twice"));
                }
                if let Err(e) = check_key(name) {
                    return Err(image_corruption(at, format!("a bucket name the engine refuses: {e}")));
                }
                if last_bucket.as_ref().is_some_and(|(_, last)| name <= last.as_slice()) {
                    return Err(image_corruption(at, "buckets out of order"));
                }
                last_bucket = Some((bucket, name.to_vec()));
                last_key.clear();
                hash.bucket(name);
                if let Some(l) = &mut legacy {
                    l.bucket(name);
                }
                buckets += 1;
                on(Record::Bucket { name })?;
            }
            (Ok(()), Some(Op::Put { bucket, key, value })) => {
                // A put belongs to the bucket created last: its records follow its creation.
                let name = match &last_bucket {
                    Some((id, name)) if *id == bucket => name.as_slice(),
                    _ if ids.contains(&bucket) => {
                        return Err(image_corruption(at, "a put after another bucket's records"));
                    }
                    _ => return Err(image_corruption(at, "a put names an unknown bucket")),
                };
                let v = &body[value.off as usize..value.off as usize + value.len as usize];
                if let Err(e) = check_key(key).and_then(|()| check_value(v)) {
                    return Err(image_corruption(at, format!("a pair the engine refuses: {e}")));
                }
                if key <= last_key.as_slice() {
                    return Err(image_corruption(at, "keys out of order"));
                }
                last_key.clear();
                last_key.extend_from_slice(key);
                hash.pair(key, v);
                if let Some(l) = &mut legacy {
                    l.pair(key, v);
                }
                keys += 1;
                on(Record::Put { bucket: name, key, value: v })?;
            }
            _ => return Err(image_corruption(at, "malformed record")),
        }
    }
}

/// Reads a whole image and verifies every checksum, the counts and the content hash, without
/// restoring it.
pub fn inspect(from: &mut dyn Read) -> Result<SnapshotInfo> {
    read_image(from, |_| Ok(()))
}

/// Lays the image read from `from` down as a database in `dir`, which must be missing or
/// empty. The image is verified as it is read; if anything is wrong — a truncated or altered
/// image is [`Error::Corruption`] — `dir` is left as it was, without a half-written database
/// (the database is built in a temporary directory beside it and renamed into place).
pub fn restore(from: &mut dyn Read, dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| Error::io("read restore target", Some(dir.to_path_buf()), e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::NotEmpty { path: dir.to_path_buf() });
        }
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    crate::vfs::create_dir_durably(&crate::vfs::StdVfs, &parent)
        .map_err(|e| Error::io("create restore parent", Some(parent.clone()), e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".logtree-restore-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io("create restore directory", Some(parent.clone()), e))?;
    let mut config = Config::new(tmp.path());
    config.batch_interval = Duration::ZERO;
    config.batch_limit = usize::MAX;
    // Built without fsyncs; everything is synced once, below, before the rename publishes it.
    config.sync = false;
    let db = Backend::open(config)?;
    let mut tx = db.batch_tx();
    let info = read_image(from, |rec| match rec {
        Record::Bucket { name } => tx.create_bucket(name),
        Record::Put { bucket, key, value } => tx.put(bucket, key, value),
    })?;
    tx.commit()?;
    if db.hash(&[])? != info.hash {
        return Err(image_corruption(info.size, "the restored database does not hash like the image"));
    }
    db.close()?;
    sync_tree(tmp.path())?;
    crate::failpoint::hit("restore:before-rename");
    let built = tmp.keep();
    let moved = std::fs::rename(&built, dir);
    if let Err(e) = moved {
        let _ = std::fs::remove_dir_all(&built);
        return Err(Error::io("move restored database into place", Some(dir.to_path_buf()), e));
    }
    std::fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync restore parent", Some(parent), e))?;
    Ok(())
}

/// fdatasyncs every file in `dir`, then the directory.
fn sync_tree(dir: &Path) -> Result<()> {
    let io = |e| Error::io("fsync restored database", Some(dir.to_path_buf()), e);
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        std::fs::File::open(&path).and_then(|f| f.sync_data()).map_err(io)?;
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

// Sizes the image layout relies on: a record's body is exactly the log's operation encoding.
const _: () = assert!(put_len(0, 0) == 13 && create_bucket_len(0) == 9);
