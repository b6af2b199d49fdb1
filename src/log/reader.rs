//! Reading complete transactions back from a stretch of the log that this process wrote (a
//! defrag catching up with the writes made while it copied).

use std::sync::Arc;

use super::format::{self, FRAME_OPS_AT, FRAME_TX_ABORT, FRAME_TX_PART, Op, SEGMENT_HEADER_LEN};
use super::segment::Segment;
use super::writer::LogPos;
use crate::error::{Error, Result};

/// A frame's operations: its segment, their file offset, the bytes.
type Part<'a> = (&'a Segment, u64, &'a [u8]);

/// Calls `apply` with the sequence number and operations of every transaction that ends in
/// `(from, to]`, in order — `None` for a transaction closed by an abort frame. Both positions
/// must be ends of transactions.
pub fn replay_range<'a>(
    segments: &'a [Arc<Segment>],
    from: LogPos,
    to: LogPos,
    mut apply: impl FnMut(u64, Option<&[Op<'a>]>) -> Result<()>,
) -> Result<()> {
    let mut pending: Option<(u64, Vec<Part<'a>>)> = None;
    let mut ops: Vec<Op<'a>> = Vec::new();
    for seg in segments.iter().filter(|s| s.id >= from.seg && s.id <= to.seg) {
        let data = seg.written();
        let mut off = if seg.id == from.seg { from.off } else { SEGMENT_HEADER_LEN } as usize;
        let end = if seg.id == to.seg { to.off as usize } else { data.len() };
        while off < end {
            let Some(frame) = format::parse_frame(&data[off..end]) else {
                return Err(Error::corruption(
                    &seg.path,
                    off as u64,
                    "a frame written by this process does not verify",
                ));
            };
            let want =
                pending.as_ref().map_or(0, |(seq, parts)| if *seq == frame.seq { parts.len() } else { usize::MAX });
            if frame.part as usize != want {
                return Err(Error::corruption(&seg.path, off as u64, "a transaction's parts are out of order"));
            }
            let ops_at = (off + FRAME_OPS_AT) as u64;
            off += frame.total_len;
            if frame.kind == FRAME_TX_ABORT {
                pending = None;
                apply(frame.seq, None)?;
                continue;
            }
            let (_, parts) = pending.get_or_insert_with(|| (frame.seq, Vec::new()));
            parts.push((seg.as_ref(), ops_at, frame.ops));
            if frame.kind == FRAME_TX_PART {
                continue;
            }
            let (seq, parts) = pending.take().unwrap_or_default();
            ops.clear();
            for (s, at, body) in parts {
                format::decode_ops(body, s.id, at, |op| {
                    ops.push(op);
                    Ok(())
                })
                .map_err(|_| Error::corruption(&s.path, at, "a frame written by this process is malformed"))?;
            }
            apply(seq, Some(&ops))?;
        }
    }
    Ok(())
}
