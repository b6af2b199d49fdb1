//! The bytes on disk: file headers, frames and operations. DESIGN.md describes the same layout
//! in prose; the two must agree.
//!
//! Every integer is little-endian. Decoding never trusts a length: every slice is bounds-checked
//! and a malformed input gives `None`, which callers turn into `Error::Corruption` with a file
//! and an offset.

use crate::index::ValueRef;

/// The first eight bytes of every file logtree writes.
pub const MAGIC: [u8; 8] = *b"LOGTREE\0";
/// The format version of segments and manifests, written and read.
pub const FORMAT_VERSION: u32 = 1;
/// The format version of the snapshot images this build writes. Version 2 changed only the
/// content hash in the end record (tags and lengths, DESIGN.md §9.2); version 1 images are still
/// read, their hash verified by the old definition.
pub const IMAGE_VERSION: u32 = 2;
/// The oldest snapshot image version this build reads.
pub const OLDEST_IMAGE_VERSION: u32 = 1;

/// `kind` field of a file header.
pub const KIND_SEGMENT: u32 = 1;
/// `kind` field of the manifest's header.
pub const KIND_MANIFEST: u32 = 2;
/// `kind` field of a snapshot image's header (whose id field holds the snapshot's seq).
pub const KIND_SNAPSHOT: u32 = 3;
/// `kind` field of the header of `SYNC-FAILED` (see `manifest::write_sync_failed`).
pub const KIND_SYNC_FAILED: u32 = 4;

/// Size of a segment header: magic (8), version (4), kind (4), segment id (8), reserved (4),
/// CRC32 of the 28 bytes before it (4).
pub const SEGMENT_HEADER_LEN: u64 = 32;

/// Size of a frame header: CRC32 (4) of everything after it up to the payload's end, payload
/// length (4), transaction sequence number (8).
pub const FRAME_HEADER_LEN: usize = 16;

/// The first payload byte of a frame: this frame ends its transaction.
pub const FRAME_TX_END: u8 = 1;
/// The first payload byte of a frame: more frames of the same transaction (same sequence
/// number) follow. A transaction larger than [`CHUNK_TARGET`] or one that crosses a segment
/// boundary is written as several frames; recovery applies none of them unless the last
/// (`FRAME_TX_END`) one is intact.
pub const FRAME_TX_PART: u8 = 2;
/// The first payload byte of a frame that holds nothing else: the transaction with this
/// sequence number, some of whose `FRAME_TX_PART` frames may precede, was abandoned (rolled back
/// after its parts were written). Recovery drops those parts and expects the next number.
pub const FRAME_TX_ABORT: u8 = 3;

/// A transaction's frame is cut into parts of about this many bytes, so that a huge BatchTx
/// does not hold its whole encoding in memory.
pub const CHUNK_TARGET: usize = 4 << 20;

/// The largest payload recovery accepts (a frame holding one maximal value, with slack).
pub const MAX_FRAME_PAYLOAD: u32 = (crate::MAX_VALUE_LEN + crate::MAX_KEY_LEN + 64) as u32;

/// Operation tags.
pub const OP_PUT: u8 = 1;
/// Delete a key.
pub const OP_DELETE: u8 = 2;
/// Create a bucket with a given id and name.
pub const OP_CREATE_BUCKET: u8 = 3;
/// Delete a bucket (and all its keys) by id.
pub const OP_DELETE_BUCKET: u8 = 4;

/// Bytes of a put's fixed part: tag (1), bucket id (4), key length (4), value length (4).
pub const PUT_FIXED: usize = 13;
/// Bytes of a delete's or create-bucket's fixed part: tag (1), bucket id (4), length (4).
pub const KEYED_FIXED: usize = 9;
/// Bytes of a delete-bucket: tag (1), bucket id (4).
pub const DELETE_BUCKET_LEN: usize = 5;

/// Encoded size of a put: what `size_in_use` charges for a live key.
pub const fn put_len(key_len: usize, value_len: usize) -> usize {
    PUT_FIXED + key_len + value_len
}

/// Encoded size of a create-bucket: what `size_in_use` charges for a bucket.
pub const fn create_bucket_len(name_len: usize) -> usize {
    KEYED_FIXED + name_len
}

/// The format versions read for files of `kind`; the last is the one written.
fn versions(kind: u32) -> std::ops::RangeInclusive<u32> {
    if kind == KIND_SNAPSHOT { OLDEST_IMAGE_VERSION..=IMAGE_VERSION } else { FORMAT_VERSION..=FORMAT_VERSION }
}

/// Builds a 32-byte file header of the given kind, with the version this build writes for it;
/// `id` is the segment id (the seq in an image, 0 in the manifest).
pub fn file_header(kind: u32, id: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&versions(kind).end().to_le_bytes());
    h[12..16].copy_from_slice(&kind.to_le_bytes());
    h[16..24].copy_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a file header was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    Short,
    /// Not our magic: not a logtree file.
    Magic,
    /// Our magic, another format version.
    Version(u32),
    /// Our magic and version, but the header's checksum or kind is wrong.
    Damaged(&'static str),
}

/// Checks a file header of `kind` and returns its id field. Its version is bytes 8..12
/// (`read_u32(b, 8)`), one of those this build reads for `kind`.
pub fn parse_file_header(b: &[u8], kind: u32) -> Result<u64, HeaderError> {
    if b.len() < SEGMENT_HEADER_LEN as usize {
        return Err(HeaderError::Short);
    }
    if b[0..8] != MAGIC {
        return Err(HeaderError::Magic);
    }
    let version = read_u32(b, 8).unwrap_or(0);
    if !versions(kind).contains(&version) {
        return Err(HeaderError::Version(version));
    }
    if read_u32(b, 28) != Some(crc32fast::hash(&b[0..28])) {
        return Err(HeaderError::Damaged("header checksum mismatch"));
    }
    if read_u32(b, 12) != Some(kind) {
        return Err(HeaderError::Damaged("wrong file kind"));
    }
    read_u64(b, 16).ok_or(HeaderError::Short)
}

pub fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

pub fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

/// Fills in the 16-byte header at the front of `frame` (whose payload follows it) and returns
/// the frame. The CRC covers the length, the sequence number and the payload, so a frame moved
/// or replayed under another sequence number does not verify.
pub fn seal_frame(frame: &mut [u8], seq: u64) {
    debug_assert!(frame.len() >= FRAME_OPS_AT);
    let len = (frame.len() - FRAME_HEADER_LEN) as u32;
    frame[4..8].copy_from_slice(&len.to_le_bytes());
    frame[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&frame[4..]);
    frame[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes of a payload before its operations: the kind (1) and the part number (u32 LE): the
/// frame's index among its transaction's frames (0 for the first). Recovery checks that a
/// transaction's frames come with parts 0, 1, 2… so a lost frame in the middle is detected, and
/// that a transaction begins with part 0, so a lost first part is too.
pub const FRAME_PREFIX_LEN: usize = 5;

/// Offset of the first operation from the start of a frame.
pub const FRAME_OPS_AT: usize = FRAME_HEADER_LEN + FRAME_PREFIX_LEN;

/// A frame that verified.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub seq: u64,
    /// `FRAME_TX_END`, `FRAME_TX_PART` or `FRAME_TX_ABORT`.
    pub kind: u8,
    /// The frame's index within its transaction (for an abort: the number of parts before it).
    pub part: u32,
    /// The operations (empty in an abort frame).
    pub ops: &'a [u8],
    /// Header plus payload.
    pub total_len: usize,
}

/// Reads the frame at the start of `b`. `None` if `b` does not begin with a whole, verifying,
/// well-formed frame: a torn write, zeros, garbage.
pub fn parse_frame(b: &[u8]) -> Option<Frame<'_>> {
    let crc = read_u32(b, 0)?;
    let len = read_u32(b, 4)?;
    if (len as usize) < FRAME_PREFIX_LEN || len > MAX_FRAME_PAYLOAD {
        return None;
    }
    let total = FRAME_HEADER_LEN.checked_add(len as usize)?;
    let whole = b.get(..total)?;
    if crc32fast::hash(&whole[4..]) != crc {
        return None;
    }
    let kind = whole[FRAME_HEADER_LEN];
    let ops = &whole[FRAME_OPS_AT..];
    let kind_ok = match kind {
        FRAME_TX_END | FRAME_TX_PART => !ops.is_empty(),
        FRAME_TX_ABORT => ops.is_empty(),
        _ => false,
    };
    if !kind_ok {
        return None;
    }
    Some(Frame { seq: read_u64(b, 8)?, kind, part: read_u32(whole, FRAME_HEADER_LEN + 1)?, ops, total_len: total })
}

/// One decoded operation. Values are not copied: a put carries where its value lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    Put { bucket: u32, key: &'a [u8], value: ValueRef },
    Delete { bucket: u32, key: &'a [u8] },
    CreateBucket { bucket: u32, name: &'a [u8] },
    DeleteBucket { bucket: u32 },
}

/// Appends the encoding of a put to `buf`; returns the index in `buf` where the value starts.
pub fn encode_put(buf: &mut Vec<u8>, bucket: u32, key: &[u8], value: &[u8]) -> usize {
    buf.push(OP_PUT);
    buf.extend_from_slice(&bucket.to_le_bytes());
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    let at = buf.len();
    buf.extend_from_slice(value);
    at
}

pub fn encode_delete(buf: &mut Vec<u8>, bucket: u32, key: &[u8]) {
    buf.push(OP_DELETE);
    buf.extend_from_slice(&bucket.to_le_bytes());
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
}

pub fn encode_create_bucket(buf: &mut Vec<u8>, bucket: u32, name: &[u8]) {
    buf.push(OP_CREATE_BUCKET);
    buf.extend_from_slice(&bucket.to_le_bytes());
    buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
    buf.extend_from_slice(name);
}

pub fn encode_delete_bucket(buf: &mut Vec<u8>, bucket: u32) {
    buf.push(OP_DELETE_BUCKET);
    buf.extend_from_slice(&bucket.to_le_bytes());
}

/// Decodes the operations of a frame payload (after its kind byte). `seg` and `base` say where
/// `ops` lies on disk (segment id, file offset of `ops[0]`), so that puts can say where their
/// value is. Calls `f` for each; stops at the first error. `Err(offset)` is the offset within
/// `ops` of a malformed operation.
pub fn decode_ops<'a>(
    ops: &'a [u8],
    seg: u32,
    base: u64,
    mut f: impl FnMut(Op<'a>) -> Result<(), DecodeStop>,
) -> Result<(), DecodeStop> {
    let mut at = 0usize;
    while at < ops.len() {
        let bad = DecodeStop::Malformed(at);
        let tag = ops[at];
        let bucket = read_u32(ops, at + 1).ok_or(bad)?;
        match tag {
            OP_PUT => {
                let klen = read_u32(ops, at + 5).ok_or(bad)? as usize;
                let vlen = read_u32(ops, at + 9).ok_or(bad)? as usize;
                let kstart = at + PUT_FIXED;
                let vstart = kstart.checked_add(klen).ok_or(bad)?;
                let end = vstart.checked_add(vlen).ok_or(bad)?;
                if end > ops.len() || klen == 0 || klen > crate::MAX_KEY_LEN || vlen > crate::MAX_VALUE_LEN {
                    return Err(bad);
                }
                let off = base + vstart as u64;
                let off = u32::try_from(off).map_err(|_| bad)?;
                let value = ValueRef { seg, off, len: vlen as u32 };
                f(Op::Put { bucket, key: &ops[kstart..vstart], value })?;
                at = end;
            }
            OP_DELETE | OP_CREATE_BUCKET => {
                let klen = read_u32(ops, at + 5).ok_or(bad)? as usize;
                let kstart = at + KEYED_FIXED;
                let end = kstart.checked_add(klen).ok_or(bad)?;
                if end > ops.len() || klen == 0 || klen > crate::MAX_KEY_LEN {
                    return Err(bad);
                }
                let k = &ops[kstart..end];
                f(if tag == OP_DELETE { Op::Delete { bucket, key: k } } else { Op::CreateBucket { bucket, name: k } })?;
                at = end;
            }
            OP_DELETE_BUCKET => {
                f(Op::DeleteBucket { bucket })?;
                at += DELETE_BUCKET_LEN;
            }
            _ => return Err(bad),
        }
    }
    Ok(())
}

/// Why [`decode_ops`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeStop {
    /// The bytes at this offset are not a valid operation.
    Malformed(usize),
    /// The operation is well-formed but makes no sense in context (e.g. an unknown bucket id).
    Rejected(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_every_bit_flip_is_caught() {
        let mut f = vec![0u8; FRAME_HEADER_LEN];
        f.push(FRAME_TX_END);
        f.extend_from_slice(&3u32.to_le_bytes());
        encode_put(&mut f, 7, b"key", b"value");
        seal_frame(&mut f, 42);
        let fr = parse_frame(&f).expect("verifies");
        assert_eq!((fr.seq, fr.kind, fr.part), (42, FRAME_TX_END, 3));
        assert_eq!(fr.total_len, f.len());
        assert_eq!(fr.ops.len(), f.len() - FRAME_OPS_AT);
        for i in 0..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[i] ^= 1 << bit;
                assert!(parse_frame(&g).is_none(), "flip of byte {i} bit {bit} not caught");
            }
        }
        assert!(parse_frame(&f[..f.len() - 1]).is_none());
        assert!(parse_frame(&[0u8; 64]).is_none(), "zeros are not a frame");
        // An abort frame holds no operations; an end or part frame must hold some.
        let mut a = vec![0u8; FRAME_HEADER_LEN];
        a.push(FRAME_TX_ABORT);
        a.extend_from_slice(&1u32.to_le_bytes());
        seal_frame(&mut a, 9);
        assert_eq!(parse_frame(&a).map(|f| (f.kind, f.part)), Some((FRAME_TX_ABORT, 1)));
        a[FRAME_HEADER_LEN] = FRAME_TX_END;
        seal_frame(&mut a, 9);
        assert!(parse_frame(&a).is_none(), "an empty end frame is malformed");
    }

    #[test]
    fn ops_round_trip() {
        let mut b = Vec::new();
        let vat = encode_put(&mut b, 1, b"k", b"vv");
        encode_delete(&mut b, 1, b"k");
        encode_create_bucket(&mut b, 2, b"b");
        encode_delete_bucket(&mut b, 2);
        let mut got = Vec::new();
        decode_ops(&b, 3, 100, |op| {
            got.push(format!("{op:?}"));
            Ok(())
        })
        .unwrap();
        assert_eq!(got.len(), 4);
        assert!(got[0].contains(&format!("off: {}", 100 + vat)));
        for cut in 0..b.len() {
            // A truncated op list never decodes as if it were complete.
            let r = decode_ops(&b[..cut], 3, 100, |_| Ok(()));
            let boundaries = [0, 16, 16 + 10, 16 + 10 + 10];
            assert_eq!(r.is_ok(), boundaries.contains(&cut), "cut {cut}");
        }
    }

    #[test]
    fn header_checks() {
        let h = file_header(KIND_SEGMENT, 9);
        assert_eq!(parse_file_header(&h, KIND_SEGMENT), Ok(9));
        assert_eq!(parse_file_header(&h, KIND_MANIFEST), Err(HeaderError::Damaged("wrong file kind")));
        assert_eq!(parse_file_header(&h[..10], KIND_SEGMENT), Err(HeaderError::Short));
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(parse_file_header(&bad, KIND_SEGMENT), Err(HeaderError::Magic));
        let mut v2 = h;
        v2[8] = 2;
        assert_eq!(parse_file_header(&v2, KIND_SEGMENT), Err(HeaderError::Version(2)));
        let mut d = h;
        d[20] ^= 1;
        assert!(matches!(parse_file_header(&d, KIND_SEGMENT), Err(HeaderError::Damaged(_))));
        // Images: version 2 is written, 1 and 2 are read, 3 is not; a segment stays at 1.
        let img = file_header(KIND_SNAPSHOT, 5);
        assert_eq!(read_u32(&img, 8), Some(IMAGE_VERSION));
        assert_eq!(parse_file_header(&img, KIND_SNAPSHOT), Ok(5));
        let with_version = |v: u32| {
            let mut b = img;
            b[8..12].copy_from_slice(&v.to_le_bytes());
            let crc = crc32fast::hash(&b[..28]);
            b[28..32].copy_from_slice(&crc.to_le_bytes());
            parse_file_header(&b, KIND_SNAPSHOT)
        };
        assert_eq!(with_version(1), Ok(5));
        assert_eq!(with_version(3), Err(HeaderError::Version(3)));
        assert_eq!(read_u32(&h, 8), Some(FORMAT_VERSION));
    }
}
