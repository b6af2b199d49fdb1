//! The `kvs.Store` (seed document 004) through `logtree::kv`: every operation and error it
//! describes, and its namespaces.
//!
//! | kvs | logtree::kv |
//! |---|---|
//! | `Get(key)` / `ErrNotFound` (missing or expired) | `get(key)` → `None` |
//! | `Set(key, value, ttl)` (0: no expiry) | `set(key, value, Some(ttl))` (zero: no expiry) |
//! | `Delete(key)` (no error if missing) | `delete(key)` |
//! | `Exists(key)` (present and not expired) | `exists(key)` |
//! | `List(prefix)` (empty: all keys) | `list(ListOptions { prefix, .. })` (ascending) |
//! | `Count(prefix)` (empty: all keys) | `count(prefix)` |
//! | `Close()`, then `ErrClosed` everywhere | `close()`, then `Error::Closed` |
//! | `Config.Namespace` (logical isolation) | `namespace(name)` |
//! | thread-safe | `Store: Send + Sync + Clone` |

use std::sync::Arc;
use std::time::Duration;

use logtree::kv::{ListOptions, ManualClock, Options, Store};
use logtree::{Config, Error};

fn open(dir: &std::path::Path) -> (Store, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let opts = Options { clock: clock.clone(), sweep_interval: Duration::ZERO, ..Options::default() };
    (Store::open_with(Config::new(dir), opts).unwrap(), clock)
}

fn list(s: &Store, prefix: &[u8]) -> Vec<Vec<u8>> {
    s.list(ListOptions { prefix: prefix.to_vec(), ..ListOptions::default() }).unwrap()
}

#[test]
fn get_set_delete_exists() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    assert_eq!(s.get(b"k").unwrap(), None, "ErrNotFound");
    assert!(!s.exists(b"k").unwrap());
    s.set(b"k", b"v", None).unwrap();
    assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert!(s.exists(b"k").unwrap());
    s.delete(b"k").unwrap();
    assert_eq!(s.get(b"k").unwrap(), None);
    s.delete(b"k").unwrap(); // no error if the key does not exist
}

#[test]
fn set_with_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = open(dir.path());
    s.set(b"ttl", b"v", Some(Duration::from_secs(30))).unwrap();
    s.set(b"zero", b"v", Some(Duration::ZERO)).unwrap(); // 0: never expires
    s.set(b"none", b"v", None).unwrap();
    clock.advance(Duration::from_secs(29));
    assert!(s.exists(b"ttl").unwrap());
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.get(b"ttl").unwrap(), None, "ErrNotFound: expired");
    assert!(!s.exists(b"ttl").unwrap(), "Exists: false once expired");
    assert_eq!(list(&s, b""), vec![b"none".to_vec(), b"zero".to_vec()]);
    assert_eq!(s.count(b"").unwrap(), 2);
    clock.advance(Duration::from_secs(10 * 365 * 86_400));
    assert_eq!(s.count(b"").unwrap(), 2);
    // Setting again with a new TTL restarts it; without one, removes it.
    s.set(b"ttl", b"v2", Some(Duration::from_secs(5))).unwrap();
    clock.advance(Duration::from_secs(4));
    assert_eq!(s.get(b"ttl").unwrap(), Some(b"v2".to_vec()));
    s.set(b"ttl", b"v3", None).unwrap();
    clock.advance(Duration::from_secs(4));
    assert_eq!(s.get(b"ttl").unwrap(), Some(b"v3".to_vec()));
    // The sweeper removes expired keys in the background (here: on request).
    s.set(b"gone", b"v", Some(Duration::from_secs(1))).unwrap();
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.sweep().unwrap(), 1);
    assert_eq!(s.info().unwrap().total_keys, 3);
}

#[test]
fn list_and_count_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = open(dir.path());
    for k in ["user:2", "user:1", "user:10", "session:a", "u"] {
        s.set(k.as_bytes(), b"v", None).unwrap();
    }
    s.set(b"user:expiring", b"v", Some(Duration::from_secs(1))).unwrap();
    assert_eq!(
        list(&s, b"user:"),
        vec![b"user:1".to_vec(), b"user:10".to_vec(), b"user:2".to_vec(), b"user:expiring".to_vec()]
    );
    assert_eq!(s.count(b"user:").unwrap(), 4);
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.count(b"user:").unwrap(), 3, "expired keys are not counted");
    assert_eq!(list(&s, b"user:").len(), 3);
    assert_eq!(s.count(b"").unwrap(), 5, "empty prefix: every key");
    assert_eq!(list(&s, b"").len(), 5);
    assert_eq!(s.count(b"nothing").unwrap(), 0);
    assert!(list(&s, b"nothing").is_empty());
    // Byte prefixes at the edges: 0xFF bytes, a prefix longer than any key.
    s.set(b"\xff\xff", b"v", None).unwrap();
    s.set(b"\xff\xff\x00", b"v", None).unwrap();
    assert_eq!(s.count(b"\xff").unwrap(), 2);
    assert_eq!(s.count(b"\xff\xff").unwrap(), 2);
    assert_eq!(s.count(&[b'x'; 40_000]).unwrap(), 0);
}

/// The namespace names the issue asks about, with the root (`None`).
const NAMES: [Option<&str>; 8] =
    [None, Some(""), Some("a"), Some("a/b"), Some("a\0"), Some("ns:x"), Some("\u{1}"), Some("\0\0\0\u{1}a")];

fn ns(root: &Store, name: Option<&str>) -> Store {
    match name {
        None => root.clone(),
        Some(n) => root.namespace(n),
    }
}

#[test]
fn namespaces_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    // The same keys in every namespace, with values naming the namespace; plus keys that spell
    // out what another namespace's keys could look like if names were joined with separators.
    let tricky: [&[u8]; 5] = [b"k", b"/b/k", b"b/k", b"\0k", b"\x01\0\0\0\x01a\0k"];
    for (i, name) in NAMES.iter().enumerate() {
        let st = ns(&s, *name);
        for k in tricky {
            st.set(k, format!("ns{i}").as_bytes(), None).unwrap();
        }
    }
    for (i, name) in NAMES.iter().enumerate() {
        let st = ns(&s, *name);
        for k in tricky {
            assert_eq!(st.get(k).unwrap(), Some(format!("ns{i}").into_bytes()), "{name:?} {k:?}");
        }
        assert_eq!(st.count(b"").unwrap(), tricky.len(), "{name:?}");
        let mut want: Vec<Vec<u8>> = tricky.iter().map(|k| k.to_vec()).collect();
        want.sort();
        assert_eq!(list(&st, b""), want, "{name:?}");
        assert_eq!(st.list_pairs(b"").unwrap().iter().filter(|p| p.value != format!("ns{i}").as_bytes()).count(), 0);
    }
    // Deleting in one namespace touches no other.
    ns(&s, Some("a")).delete(b"k").unwrap();
    ns(&s, Some("a/b")).set(b"only-here", b"x", None).unwrap();
    for (i, name) in NAMES.iter().enumerate() {
        let st = ns(&s, *name);
        let want = if *name == Some("a") { None } else { Some(format!("ns{i}").into_bytes()) };
        assert_eq!(st.get(b"k").unwrap(), want, "{name:?}");
        assert_eq!(st.exists(b"only-here").unwrap(), *name == Some("a/b"), "{name:?}");
    }
    // Nested namespaces are separate from their parent and from look-alike single names.
    let nested = s.namespace("a").namespace("b");
    assert_eq!(nested.count(b"").unwrap(), 0);
    nested.set(b"k", b"nested", None).unwrap();
    assert_eq!(ns(&s, Some("a/b")).get(b"k").unwrap(), Some(b"ns3".to_vec()));
    assert_eq!(ns(&s, Some("a")).count(b"").unwrap(), tricky.len() - 1);
    assert_eq!(s.info().unwrap().total_keys, NAMES.len() * tricky.len() - 1 + 1 + 1);
}

#[test]
fn namespaces_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (s, _) = open(dir.path());
        for name in NAMES {
            ns(&s, name).set(b"k", format!("{name:?}").as_bytes(), None).unwrap();
        }
        s.close().unwrap();
    }
    let (s, _) = open(dir.path());
    for name in NAMES {
        assert_eq!(ns(&s, name).get(b"k").unwrap(), Some(format!("{name:?}").into_bytes()));
        assert_eq!(ns(&s, name).count(b"").unwrap(), 1);
    }
}

#[test]
fn close_makes_every_operation_err_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    s.set(b"k", b"v", None).unwrap();
    let clone = s.clone();
    let child = s.namespace("child");
    clone.close().unwrap();
    for st in [&s, &clone, &child, &s.namespace("made-after-close")] {
        assert!(matches!(st.get(b"k"), Err(Error::Closed)));
        assert!(matches!(st.set(b"k", b"v", Some(Duration::from_secs(1))), Err(Error::Closed)));
        assert!(matches!(st.delete(b"k"), Err(Error::Closed)));
        assert!(matches!(st.exists(b"k"), Err(Error::Closed)));
        assert!(matches!(st.list(Default::default()), Err(Error::Closed)));
        assert!(matches!(st.count(b""), Err(Error::Closed)));
        assert!(matches!(st.close(), Err(Error::Closed)));
        // And the rest of the API.
        assert!(matches!(st.get_pair(b"k"), Err(Error::Closed)));
        assert!(matches!(st.has(b"k"), Err(Error::Closed)));
        assert!(matches!(st.expire(b"k"), Err(Error::Closed)));
        assert!(matches!(st.list_pairs(b""), Err(Error::Closed)));
        assert!(matches!(st.info(), Err(Error::Closed)));
        assert!(matches!(st.sweep(), Err(Error::Closed)));
        assert!(matches!(st.force_commit(), Err(Error::Closed)));
        assert!(matches!(st.set_with(b"k", b"v", Default::default()), Err(Error::Closed)));
        // Closed wins over bad input: the store does not look at the arguments.
        assert!(matches!(st.get(b""), Err(Error::Closed)));
    }
    assert_eq!(Error::Closed.to_string(), "the database is closed");
}

#[test]
fn thread_safe() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let st = s.namespace(&format!("t{t}"));
            std::thread::spawn(move || {
                for i in 0..200 {
                    let k = format!("k{i:03}");
                    st.set(k.as_bytes(), format!("{t}/{i}").as_bytes(), None).unwrap();
                    assert_eq!(st.get(k.as_bytes()).unwrap(), Some(format!("{t}/{i}").into_bytes()));
                    if i % 3 == 0 {
                        st.delete(k.as_bytes()).unwrap();
                    }
                }
                st.count(b"").unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200 - 67);
    }
    assert_eq!(s.info().unwrap().total_keys, 8 * (200 - 67));
}
