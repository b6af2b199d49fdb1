//! libkv's `Store` (seed document 000) through `logtree::kv`: every operation and error it
//! describes.
//!
//! | libkv | logtree::kv |
//! |---|---|
//! | `Put(key, value)` | `set(key, value, None)` |
//! | `Exists(key)` | `exists(key)` |
//! | `List(directory)` → `[]*KVPair` | `list_pairs(prefix)` |
//! | `AtomicPut(key, value, previous)` → `*KVPair` | `atomic_put(key, value, previous)` → `KvPair` |
//! | `AtomicDelete(key, previous)` | `atomic_delete(key, &previous)` |
//! | `Delete(key)` | `delete(key)` |
//! | `Close()` | `close()` |
//! | `ErrKeyExists`, `ErrKeyModified`, `ErrKeyNotFound` | `Error::KeyExists`, `KeyModified`, `KeyNotFound` |
//! | `ErrPreviousNotSpecified` | cannot happen: `atomic_delete` takes `&KvPair`, not an option |
//! | `ErrBackendNotSupported` | not applicable: one backend |

use std::sync::Arc;
use std::time::Duration;

use logtree::kv::{KvPair, ManualClock, Options, Store};
use logtree::{Config, Error};

fn open(dir: &std::path::Path) -> (Store, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let opts = Options { clock: clock.clone(), sweep_interval: Duration::ZERO, ..Options::default() };
    (Store::open_with(Config::new(dir), opts).unwrap(), clock)
}

#[test]
fn put_exists_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    assert!(!s.exists(b"foo").unwrap());
    s.set(b"foo", b"bar", None).unwrap();
    assert!(s.exists(b"foo").unwrap());
    assert_eq!(s.get(b"foo").unwrap(), Some(b"bar".to_vec()));
    // Put overwrites.
    s.set(b"foo", b"baz", None).unwrap();
    assert_eq!(s.get(b"foo").unwrap(), Some(b"baz".to_vec()));
    // Delete, then again: no error for a missing key.
    s.delete(b"foo").unwrap();
    assert!(!s.exists(b"foo").unwrap());
    s.delete(b"foo").unwrap();
    s.delete(b"never-there").unwrap();
    // An empty value is a value.
    s.set(b"empty", b"", None).unwrap();
    assert!(s.exists(b"empty").unwrap());
    assert_eq!(s.get(b"empty").unwrap(), Some(Vec::new()));
}

#[test]
fn list_a_directory_returns_pairs_with_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    for (k, v) in [("dir/b", "2"), ("dir/a", "1"), ("dir/sub/c", "3"), ("dirx", "no"), ("other/d", "no")] {
        s.set(k.as_bytes(), v.as_bytes(), None).unwrap();
    }
    let pairs = s.list_pairs(b"dir/").unwrap();
    let got: Vec<(&[u8], &[u8])> = pairs.iter().map(|p| (p.key.as_slice(), p.value.as_slice())).collect();
    assert_eq!(got, vec![(&b"dir/a"[..], &b"1"[..]), (b"dir/b", b"2"), (b"dir/sub/c", b"3")]);
    // Each listed pair carries the revision a CAS needs, and it is the one get_pair reports.
    for p in &pairs {
        assert_eq!(s.get_pair(&p.key).unwrap().as_ref(), Some(p));
    }
    let revs: Vec<i64> = pairs.iter().map(|p| p.revision).collect();
    assert!(revs.iter().all(|&r| r > 1), "{revs:?}");
    let updated = s.atomic_put(b"dir/a", b"1'", Some(&pairs[0])).unwrap();
    assert!(updated.revision > pairs[0].revision);
    // An empty directory lists nothing, without an error.
    assert!(s.list_pairs(b"nothing/").unwrap().is_empty());
    // The empty prefix lists everything.
    assert_eq!(s.list_pairs(b"").unwrap().len(), 5);
}

#[test]
fn atomic_put_creates_only_when_absent() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let p = s.atomic_put(b"k", b"v1", None).unwrap();
    assert_eq!((p.key.as_slice(), p.value.as_slice()), (&b"k"[..], &b"v1"[..]));
    assert_eq!(s.get_pair(b"k").unwrap(), Some(p.clone()), "the returned pair is the stored one");
    // previous = nil on an existing key: ErrKeyExists, nothing written.
    assert!(matches!(s.atomic_put(b"k", b"v2", None), Err(Error::KeyExists)));
    assert_eq!(s.get_pair(b"k").unwrap(), Some(p));
    // A key written by a plain put exists too.
    s.set(b"plain", b"x", None).unwrap();
    assert!(matches!(s.atomic_put(b"plain", b"y", None), Err(Error::KeyExists)));
    // After a delete it can be created again.
    s.delete(b"plain").unwrap();
    assert_eq!(s.atomic_put(b"plain", b"y", None).unwrap().value, b"y");
}

#[test]
fn atomic_put_swaps_only_at_the_previous_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let p1 = s.atomic_put(b"k", b"v1", None).unwrap();
    let p2 = s.atomic_put(b"k", b"v2", Some(&p1)).unwrap();
    assert!(p2.revision > p1.revision);
    assert_eq!(s.get(b"k").unwrap(), Some(b"v2".to_vec()));
    // The stale pair: ErrKeyModified, value unchanged.
    assert!(matches!(s.atomic_put(b"k", b"lost", Some(&p1)), Err(Error::KeyModified)));
    assert_eq!(s.get_pair(b"k").unwrap(), Some(p2.clone()));
    // Any write moves the revision, even of the same value.
    s.set(b"k", b"v2", None).unwrap();
    assert!(matches!(s.atomic_put(b"k", b"lost", Some(&p2)), Err(Error::KeyModified)));
    // The key gone: ErrKeyNotFound.
    let p3 = s.get_pair(b"k").unwrap().unwrap();
    s.delete(b"k").unwrap();
    assert!(matches!(s.atomic_put(b"k", b"lost", Some(&p3)), Err(Error::KeyNotFound)));
    assert_eq!(s.get(b"k").unwrap(), None, "nothing was created");
    // Deleted and re-created: the old pair is stale (a new revision), not "not found".
    let p4 = s.atomic_put(b"k", b"again", None).unwrap();
    assert!(matches!(s.atomic_put(b"k", b"lost", Some(&p3)), Err(Error::KeyModified)));
    s.atomic_put(b"k", b"ok", Some(&p4)).unwrap();
}

#[test]
fn atomic_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let p1 = s.atomic_put(b"k", b"v1", None).unwrap();
    let p2 = s.atomic_put(b"k", b"v2", Some(&p1)).unwrap();
    // Stale: ErrKeyModified, nothing deleted.
    assert!(matches!(s.atomic_delete(b"k", &p1), Err(Error::KeyModified)));
    assert!(s.exists(b"k").unwrap());
    // Current: deleted.
    s.atomic_delete(b"k", &p2).unwrap();
    assert!(!s.exists(b"k").unwrap());
    // Gone: ErrKeyNotFound.
    assert!(matches!(s.atomic_delete(b"k", &p2), Err(Error::KeyNotFound)));
    // Unlike atomic_delete, delete does not care about the version.
    let p = s.atomic_put(b"k", b"v", None).unwrap();
    s.set(b"k", b"changed", None).unwrap();
    s.delete(b"k").unwrap();
    assert!(matches!(s.atomic_delete(b"k", &p), Err(Error::KeyNotFound)));
}

#[test]
fn a_previous_pair_of_another_key_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let a = s.atomic_put(b"a", b"1", None).unwrap();
    let b = s.atomic_put(b"b", b"2", None).unwrap();
    assert!(matches!(s.atomic_put(b"b", b"x", Some(&a)), Err(Error::InvalidArgument(_))));
    assert!(matches!(s.atomic_delete(b"b", &a), Err(Error::InvalidArgument(_))));
    assert_eq!(s.get_pair(b"b").unwrap(), Some(b.clone()));
    assert_eq!(s.get_pair(b"a").unwrap(), Some(a.clone()));
    // A pair that cannot have come from the store (revision 0 is "missing").
    let forged = KvPair { revision: 0, ..b.clone() };
    let e = s.atomic_put(b"b", b"x", Some(&forged)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("revision 0"), "{e}");
    let forged_missing = KvPair { key: b"missing".to_vec(), revision: 0, ..b.clone() };
    assert!(matches!(s.atomic_put(b"missing", b"x", Some(&forged_missing)), Err(Error::InvalidArgument(_))));
    assert!(!s.exists(b"missing").unwrap());
    // A pair of the same key name from another namespace does not match this key's revision.
    let ns = s.namespace("other");
    let foreign = ns.atomic_put(b"b", b"ns", None).unwrap();
    assert!(matches!(s.atomic_put(b"b", b"x", Some(&foreign)), Err(Error::KeyModified)));
    assert_eq!(s.get_pair(b"b").unwrap(), Some(b));
}

#[test]
fn cas_on_an_expired_key() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = open(dir.path());
    s.set(b"lease", b"holder-1", Some(Duration::from_secs(10))).unwrap();
    let held = s.get_pair(b"lease").unwrap().unwrap();
    assert!(matches!(s.atomic_put(b"lease", b"holder-2", None), Err(Error::KeyExists)));
    clock.advance(Duration::from_secs(10));
    // Expired (and not yet swept): a create succeeds, an update by the old pair finds nothing.
    assert!(matches!(s.atomic_put(b"lease", b"late", Some(&held)), Err(Error::KeyNotFound)));
    assert!(matches!(s.atomic_delete(b"lease", &held), Err(Error::KeyNotFound)));
    let p = s.atomic_put(b"lease", b"holder-2", None).unwrap();
    assert_eq!(s.get_pair(b"lease").unwrap(), Some(p));
}

#[test]
fn pairs_and_revisions_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = {
        let (s, _) = open(dir.path());
        let p = s.atomic_put(b"k", b"v", None).unwrap();
        s.close().unwrap();
        p
    };
    let (s, _) = open(dir.path());
    assert_eq!(s.get_pair(b"k").unwrap(), Some(p.clone()));
    let p2 = s.atomic_put(b"k", b"w", Some(&p)).unwrap();
    assert!(p2.revision > p.revision);
}

#[test]
fn close_then_every_call_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let p = s.atomic_put(b"k", b"v", None).unwrap();
    s.close().unwrap();
    assert!(matches!(s.set(b"k", b"v", None), Err(Error::Closed)));
    assert!(matches!(s.exists(b"k"), Err(Error::Closed)));
    assert!(matches!(s.list_pairs(b""), Err(Error::Closed)));
    assert!(matches!(s.atomic_put(b"k", b"v", Some(&p)), Err(Error::Closed)));
    assert!(matches!(s.atomic_put(b"n", b"v", None), Err(Error::Closed)));
    assert!(matches!(s.atomic_delete(b"k", &p), Err(Error::Closed)));
    assert!(matches!(s.delete(b"k"), Err(Error::Closed)));
    assert!(matches!(s.close(), Err(Error::Closed)));
    // Closing released the database: it opens again, with the data.
    let (s, _) = open(dir.path());
    assert_eq!(s.get_pair(b"k").unwrap(), Some(p));
}

#[test]
fn error_messages_say_what_happened() {
    assert!(Error::KeyExists.to_string().contains("exists"));
    assert!(Error::KeyModified.to_string().contains("modified"));
    assert!(Error::KeyNotFound.to_string().contains("not found"));
    assert!(Error::InvalidArgument("x".into()).to_string().contains("invalid argument: x"));
}
