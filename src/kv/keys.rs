//! How a namespace and a user key become one MVCC key.
//!
//! ```text
//! mvcc key  = segment* 0x00 user-key
//! segment   = 0x01 len:u32 BE name          (one per namespace level, outermost first)
//! ```
//!
//! The root store has no segment: its keys are `0x00 ++ key`. `namespace("a")` is
//! `0x01 00 00 00 01 'a' 0x00 ++ key`, and a namespace of it adds a second segment. Because every
//! segment starts with `0x01` and the key part with `0x00`, and a name's length is written
//! before it, the encoding is prefix-free: the key space of one namespace is never a part of
//! another's, whatever bytes the names hold (`"a/b"`, `"a\0"`, `""`, `"ns:x"`), and a key of the
//! root can never be read as a namespaced one. (A plain `name ++ separator ++ key` would let
//! `"a"` + `"b/k"` meet `"a/b"` + `"k"`.)

/// Starts a namespace segment.
const NS_MARK: u8 = 0x01;
/// Ends the namespace path; the user key follows.
const KEY_MARK: u8 = 0x00;

/// The prefix of the root store's keys.
pub(crate) fn root_prefix() -> Vec<u8> {
    vec![KEY_MARK]
}

/// The prefix of the namespace `name` inside the store whose prefix is `parent`.
pub(crate) fn child_prefix(parent: &[u8], name: &[u8]) -> Vec<u8> {
    debug_assert_eq!(parent.last(), Some(&KEY_MARK));
    let path = &parent[..parent.len() - 1];
    let mut p = Vec::with_capacity(path.len() + 6 + name.len());
    p.extend_from_slice(path);
    p.push(NS_MARK);
    // Names longer than u32::MAX bytes cannot be keys anyway (MAX_KEY_LEN); saturating keeps the
    // encoding total without a panic, and every key under such a prefix is refused as too large.
    p.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
    p.extend_from_slice(name);
    p.push(KEY_MARK);
    p
}

/// `prefix ++ key`.
pub(crate) fn join(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(key);
    k
}

/// The least key greater than every key starting with `p`, or `None` if there is none (`p`
/// empty or all `0xFF`). Our prefixes always hold the `0x00` key mark, so for them it exists.
pub(crate) fn prefix_end(p: &[u8]) -> Option<Vec<u8>> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_never_overlap() {
        let root = root_prefix();
        let names: [&[u8]; 7] = [b"", b"a", b"a/b", b"a\0", b"ns:x", b"\x01", b"\0\0\0\x01a"];
        let mut prefixes = vec![root.clone()];
        for n in names {
            let p = child_prefix(&root, n);
            prefixes.push(child_prefix(&p, b"b"));
            prefixes.push(p);
        }
        for (i, a) in prefixes.iter().enumerate() {
            for (j, b) in prefixes.iter().enumerate() {
                if i != j {
                    assert!(!a.starts_with(b), "{a:?} starts with {b:?}");
                }
            }
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(&root_prefix()), Some(vec![1]));
    }
}
