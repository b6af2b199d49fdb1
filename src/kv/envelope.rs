//! The envelope: what the kv layer stores as an MVCC value.
//!
//! ```text
//! version u8 (1) | flags u8 | [expires_at u64 LE] | [delete_at u64 LE]
//!                | [count u32 LE, (klen u32 LE, key, vlen u32 LE, value) × count]
//!                | value bytes (to the end)
//! ```
//!
//! `flags`: bit 0 `expires_at` present, bit 1 `delete_at` present, bit 2 metadata present,
//! bit 3 the value was expired (by `expire()` or the sweeper) and dropped. Other bits must be
//! 0. Deadlines are nanoseconds since the Unix epoch on the store's clock. A plain value costs
//! two bytes; the fields are present only when used so that the common case stays small.
//! Anything malformed is `Error::Corruption`: the store wrote these bytes, so damage is not
//! input to be guessed at.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

const VERSION: u8 = 1;
const HAS_EXPIRES: u8 = 0x01;
const HAS_DELETE: u8 = 0x02;
const HAS_META: u8 = 0x04;
const EXPIRED: u8 = 0x08;
const KNOWN: u8 = HAS_EXPIRES | HAS_DELETE | HAS_META | EXPIRED;

/// The decoded header of an envelope; the value is `bytes[value_at..]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    /// When `get` stops returning the value (`has` is unaffected).
    pub expires_at: Option<u64>,
    /// When the key is deleted: `has` turns false and the sweeper removes it.
    pub delete_at: Option<u64>,
    /// The value was expired explicitly or by the sweeper; it is gone.
    pub expired: bool,
    /// Where the metadata lies (`start..end`), if any.
    pub meta: Option<(usize, usize)>,
    /// Where the value starts.
    pub value_at: usize,
}

fn bad(why: &str) -> Error {
    Error::Corruption { file: "<kv envelope>".into(), offset: 0, reason: why.into() }
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    let s = b.get(at..at + 4).ok_or_else(|| bad("truncated length"))?;
    Ok(u32::from_le_bytes(s.try_into().map_err(|_| bad("truncated length"))?))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    let s = b.get(at..at + 8).ok_or_else(|| bad("truncated deadline"))?;
    Ok(u64::from_le_bytes(s.try_into().map_err(|_| bad("truncated deadline"))?))
}

impl Header {
    /// Parses the header of `b` (without copying anything).
    pub fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < 2 || b[0] != VERSION {
            return Err(bad("unknown envelope version"));
        }
        let flags = b[1];
        if flags & !KNOWN != 0 {
            return Err(bad("unknown envelope flags"));
        }
        let mut at = 2;
        let mut h = Header { expired: flags & EXPIRED != 0, ..Header::default() };
        if flags & HAS_EXPIRES != 0 {
            h.expires_at = Some(u64_at(b, at)?);
            at += 8;
        }
        if flags & HAS_DELETE != 0 {
            h.delete_at = Some(u64_at(b, at)?);
            at += 8;
        }
        if flags & HAS_META != 0 {
            let start = at;
            let count = u32_at(b, at)?;
            at += 4;
            for _ in 0..count {
                for _ in 0..2 {
                    let len = u32_at(b, at)? as usize;
                    at = at.checked_add(4 + len).filter(|&e| e <= b.len()).ok_or_else(|| bad("truncated metadata"))?;
                }
            }
            h.meta = Some((start, at));
        }
        h.value_at = at;
        Ok(h)
    }

    /// Whether `get` returns the value at `now()`. The clock is read only for a record with
    /// a deadline: most records have none, and a read of the clock is a good part of a `get`.
    pub fn visible(&self, now: impl FnOnce() -> u64) -> bool {
        !self.expired && self.visible_until().is_none_or(|t| now() < t)
    }

    /// Whether the key exists at `now()` (dKV's `Has`): until it is deleted, expired or not.
    pub fn present(&self, now: impl FnOnce() -> u64) -> bool {
        self.delete_at.is_none_or(|t| now() < t)
    }

    /// When the sweeper has something to do with this record: drop its value at `expires_at`
    /// (unless already dropped), delete it at `delete_at`.
    pub fn next_action(&self) -> Option<u64> {
        let expire = if self.expired { None } else { self.expires_at };
        match (expire, self.delete_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The instant `get` stops returning the value, as reported in `KvPair::expires_at`.
    pub fn visible_until(&self) -> Option<u64> {
        match (self.expires_at, self.delete_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The bytes of the metadata section for `meta` (empty map: none).
fn meta_len(meta: &BTreeMap<String, String>) -> usize {
    if meta.is_empty() {
        return 0;
    }
    4 + meta.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>()
}

/// The length of the header `encode` writes for these fields.
pub(crate) fn header_len(expires_at: Option<u64>, delete_at: Option<u64>, meta: &BTreeMap<String, String>) -> usize {
    2 + 8 * (expires_at.is_some() as usize + delete_at.is_some() as usize) + meta_len(meta)
}

/// Encodes an envelope.
pub(crate) fn encode(
    value: &[u8],
    expires_at: Option<u64>,
    delete_at: Option<u64>,
    expired: bool,
    meta: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(header_len(expires_at, delete_at, meta) + value.len());
    let flags = if expires_at.is_some() { HAS_EXPIRES } else { 0 }
        | if delete_at.is_some() { HAS_DELETE } else { 0 }
        | if meta.is_empty() { 0 } else { HAS_META }
        | if expired { EXPIRED } else { 0 };
    b.push(VERSION);
    b.push(flags);
    for t in [expires_at, delete_at].into_iter().flatten() {
        b.extend_from_slice(&t.to_le_bytes());
    }
    if !meta.is_empty() {
        b.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        for (k, v) in meta {
            for s in [k, v] {
                b.extend_from_slice(&(s.len() as u32).to_le_bytes());
                b.extend_from_slice(s.as_bytes());
            }
        }
    }
    b.extend_from_slice(value);
    b
}

/// The same record with its value dropped and marked expired (metadata and deadlines kept):
/// what `expire()` and the sweeper write.
pub(crate) fn expired_copy(b: &[u8], h: &Header, expires_at: Option<u64>) -> Vec<u8> {
    let meta = &b[h.meta.map_or(0, |m| m.0)..h.meta.map_or(0, |m| m.1)];
    let mut out = Vec::with_capacity(h.value_at + 8);
    let flags = b[1] | EXPIRED | if expires_at.is_some() { HAS_EXPIRES } else { 0 };
    out.push(VERSION);
    out.push(if expires_at.is_some() { flags } else { flags & !HAS_EXPIRES });
    for t in [expires_at, h.delete_at].into_iter().flatten() {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out.extend_from_slice(meta);
    out
}

/// Decodes the metadata section of `b`.
pub(crate) fn metadata(b: &[u8], h: &Header) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Some((start, _)) = h.meta else { return Ok(out) };
    let count = u32_at(b, start)?;
    let mut at = start + 4;
    let mut text = || -> Result<String> {
        let len = u32_at(b, at)? as usize;
        let s = b.get(at + 4..at + 4 + len).ok_or_else(|| bad("truncated metadata"))?;
        at += 4 + len;
        String::from_utf8(s.to_vec()).map_err(|_| bad("metadata is not UTF-8"))
    };
    for _ in 0..count {
        let k = text()?;
        let v = text()?;
        out.insert(k, v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> BTreeMap<String, String> {
        [("a".to_string(), "1".to_string()), ("owner".to_string(), "ü".to_string())].into_iter().collect()
    }

    #[test]
    fn round_trips() {
        for (e, d, m) in [
            (None, None, BTreeMap::new()),
            (Some(5), None, BTreeMap::new()),
            (None, Some(7), meta()),
            (Some(5), Some(7), meta()),
        ] {
            let b = encode(b"value", e, d, false, &m);
            assert_eq!(b.len(), header_len(e, d, &m) + 5);
            let h = Header::parse(&b).unwrap();
            assert_eq!((h.expires_at, h.delete_at, h.expired), (e, d, false));
            assert_eq!(&b[h.value_at..], b"value");
            assert_eq!(metadata(&b, &h).unwrap(), m);
            let x = expired_copy(&b, &h, Some(3));
            let hx = Header::parse(&x).unwrap();
            assert_eq!((hx.expires_at, hx.delete_at, hx.expired), (Some(3), d, true));
            assert_eq!(&x[hx.value_at..], b"");
            assert_eq!(metadata(&x, &hx).unwrap(), m);
        }
        assert_eq!(encode(b"v", None, None, false, &BTreeMap::new()), vec![1, 0, b'v']);
    }

    #[test]
    fn damage_is_corruption() {
        let b = encode(b"", Some(5), Some(7), false, &meta());
        for cut in 0..b.len() {
            assert!(Header::parse(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut x = b.clone();
        x[1] |= 0x80;
        assert!(Header::parse(&x).unwrap_err().is_corruption());
        x[0] = 2;
        assert!(Header::parse(&x).unwrap_err().is_corruption());
    }

    #[test]
    fn visibility() {
        let h = Header { expires_at: Some(10), delete_at: Some(20), ..Header::default() };
        assert!(h.visible(|| 9) && !h.visible(|| 10));
        assert!(h.present(|| 19) && !h.present(|| 20));
        assert_eq!(h.next_action(), Some(10));
        assert_eq!(Header { expired: true, ..h }.next_action(), Some(20));
        assert!(!Header { expired: true, ..Header::default() }.visible(|| 0));
        assert!(Header::default().present(|| u64::MAX));
        assert!(Header::default().visible(|| panic!("no deadline: the clock is not read")));
    }
}
