//! go-micro's `store.Store` (seed document 003) through `logtree::kv`: every operation it
//! describes.
//!
//! | go-micro | logtree::kv |
//! |---|---|
//! | `Write(&Record{Key, Value, Metadata, Expiry})` | `set_with(key, value, SetOptions { expire_in, delete_in: expiry, metadata })` |
//! | `Read(key)` → `[]*Record` / `ErrNotFound` | `get_pair(key)` → `Option<KvPair>` |
//! | `Read(key, ReadPrefix/ReadSuffix, ReadLimit, ReadOffset)` | `list_pairs_with(ListOptions { .. })` |
//! | `Delete(key)` | `delete(key)` |
//! | `List(ListPrefix, ListSuffix, ListLimit, ListOffset)` | `list(ListOptions { .. })` |
//! | `ReadFrom/WriteTo/DeleteFrom/ListFrom(database, table)` | `namespace(database).namespace(table)` |
//! | `Init`, `Options`, `String` | `open_with(config, Options)`, `info()`, `Debug` |
//! | `Close()` | `close()` |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use logtree::kv::{Clock, KvPair, ListOptions, ManualClock, Options, SetOptions, Store};
use logtree::{Config, Error};

fn open(dir: &std::path::Path) -> (Store, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let opts = Options { clock: clock.clone(), sweep_interval: Duration::ZERO, ..Options::default() };
    (Store::open_with(Config::new(dir), opts).unwrap(), clock)
}

/// go-micro's `Write(&Record{...})`: the record is gone after `expiry` (0: never).
fn write(s: &Store, key: &str, value: &str, metadata: &[(&str, &str)], expiry: Duration) {
    let expiry = (!expiry.is_zero()).then_some(expiry);
    let metadata: BTreeMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let opts = SetOptions { expire_in: expiry, delete_in: expiry, metadata, if_absent: false };
    assert!(s.set_with(key.as_bytes(), value.as_bytes(), opts).unwrap());
}

fn keys(v: Vec<Vec<u8>>) -> Vec<String> {
    v.into_iter().map(|k| String::from_utf8(k).unwrap()).collect()
}

fn pair_keys(v: &[KvPair]) -> Vec<String> {
    v.iter().map(|p| String::from_utf8(p.key.clone()).unwrap()).collect()
}

fn list(prefix: &str, suffix: &str, limit: usize, offset: usize) -> ListOptions {
    ListOptions { prefix: prefix.into(), suffix: suffix.into(), limit, offset }
}

#[test]
fn write_and_read_a_record_with_metadata_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = open(dir.path());
    write(&s, "user:1", "alice", &[("role", "admin"), ("team", "core")], Duration::from_secs(60));
    let r = s.get_pair(b"user:1").unwrap().expect("the record");
    assert_eq!(r.key, b"user:1");
    assert_eq!(r.value, b"alice");
    assert_eq!(r.metadata.get("role").map(String::as_str), Some("admin"));
    assert_eq!(r.metadata.len(), 2);
    // go-micro reports the time left as Record.Expiry; the pair has the instant.
    assert_eq!(r.expires_at.unwrap().duration_since(clock.now()).unwrap(), Duration::from_secs(60));
    clock.advance(Duration::from_secs(59));
    assert!(s.get_pair(b"user:1").unwrap().is_some());
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.get_pair(b"user:1").unwrap(), None, "ErrNotFound once the expiry has passed");
    assert!(!s.has(b"user:1").unwrap(), "a go-micro expiry removes the record");
    // A record without expiry or metadata.
    write(&s, "plain", "v", &[], Duration::ZERO);
    let r = s.get_pair(b"plain").unwrap().unwrap();
    assert!(r.metadata.is_empty() && r.expires_at.is_none());
    // Writing again replaces metadata and expiry too.
    write(&s, "plain", "w", &[("k", "v")], Duration::ZERO);
    assert_eq!(s.get_pair(b"plain").unwrap().unwrap().metadata.len(), 1);
    write(&s, "plain", "x", &[], Duration::ZERO);
    assert!(s.get_pair(b"plain").unwrap().unwrap().metadata.is_empty());
}

#[test]
fn read_missing_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    assert_eq!(s.get_pair(b"nope").unwrap(), None);
    assert_eq!(s.get(b"nope").unwrap(), None);
    assert!(s.list_pairs_with(list("nope", "", 0, 0)).unwrap().is_empty());
}

fn fill(s: &Store) {
    for k in ["a/1.json", "a/2.txt", "a/3.json", "a/4.json", "a/5.txt", "b/1.json", "c.json"] {
        write(s, k, &format!("value of {k}"), &[], Duration::ZERO);
    }
}

#[test]
fn read_with_prefix_suffix_limit_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    fill(&s);
    let r = s.list_pairs_with(list("a/", "", 0, 0)).unwrap();
    assert_eq!(pair_keys(&r), ["a/1.json", "a/2.txt", "a/3.json", "a/4.json", "a/5.txt"]);
    assert!(r.iter().all(|p| p.value == format!("value of {}", String::from_utf8_lossy(&p.key)).into_bytes()));
    let r = s.list_pairs_with(list("", ".txt", 0, 0)).unwrap();
    assert_eq!(pair_keys(&r), ["a/2.txt", "a/5.txt"]);
    let r = s.list_pairs_with(list("a/", ".json", 2, 0)).unwrap();
    assert_eq!(pair_keys(&r), ["a/1.json", "a/3.json"]);
    let r = s.list_pairs_with(list("a/", ".json", 2, 2)).unwrap();
    assert_eq!(pair_keys(&r), ["a/4.json"]);
    let r = s.list_pairs_with(list("a/", ".json", 0, 5)).unwrap();
    assert!(r.is_empty());
    // list_pairs is the prefix form.
    assert_eq!(pair_keys(&s.list_pairs(b"b/").unwrap()), ["b/1.json"]);
}

#[test]
fn list_applies_prefix_suffix_limit_and_offset_together_ascending() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    fill(&s);
    assert_eq!(
        keys(s.list(Default::default()).unwrap()),
        ["a/1.json", "a/2.txt", "a/3.json", "a/4.json", "a/5.txt", "b/1.json", "c.json"]
    );
    assert_eq!(
        keys(s.list(list("", ".json", 0, 0)).unwrap()),
        ["a/1.json", "a/3.json", "a/4.json", "b/1.json", "c.json"]
    );
    assert_eq!(keys(s.list(list("", ".json", 2, 1)).unwrap()), ["a/3.json", "a/4.json"]);
    assert_eq!(keys(s.list(list("a/", ".json", 1, 2)).unwrap()), ["a/4.json"]);
    assert_eq!(keys(s.list(list("", "", 3, 0)).unwrap()), ["a/1.json", "a/2.txt", "a/3.json"]);
    assert_eq!(keys(s.list(list("", "", 3, 6)).unwrap()), ["c.json"]);
    assert!(s.list(list("", "", 3, 7)).unwrap().is_empty());
    assert!(s.list(list("zzz", "", 0, 0)).unwrap().is_empty(), "nothing matched: an empty list, no error");
    // A key can be its own prefix and suffix.
    assert_eq!(keys(s.list(list("c.json", "c.json", 0, 0)).unwrap()), ["c.json"]);
}

#[test]
fn a_large_list_pages_through_the_mvcc_layer_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let n = 3000;
    for i in 0..n {
        s.set(format!("k{i:05}").as_bytes(), b"v", None).unwrap();
    }
    let all = keys(s.list(Default::default()).unwrap());
    assert_eq!(all.len(), n);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(keys(s.list(list("", "", 2, 2500)).unwrap()), ["k02500", "k02501"]);
    assert_eq!(s.list_pairs(b"k0").unwrap().len(), n);
    assert_eq!(s.count(b"k01").unwrap(), 1000);
}

#[test]
fn expired_records_disappear_from_read_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = open(dir.path());
    fill(&s);
    write(&s, "a/0.json", "soon gone", &[], Duration::from_secs(1));
    write(&s, "a/9.json", "soon gone", &[], Duration::from_secs(1));
    assert_eq!(keys(s.list(list("a/", ".json", 2, 1)).unwrap()), ["a/1.json", "a/3.json"]);
    clock.advance(Duration::from_secs(1));
    // Offsets and limits count only visible keys: the expired ones do not shift them.
    assert_eq!(keys(s.list(list("a/", ".json", 2, 1)).unwrap()), ["a/3.json", "a/4.json"]);
    assert_eq!(s.list_pairs_with(list("a/", ".json", 0, 0)).unwrap().len(), 3);
    assert_eq!(s.get_pair(b"a/0.json").unwrap(), None);
}

#[test]
fn databases_and_tables_are_separate() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let users = s.namespace("app").namespace("users");
    let orders = s.namespace("app").namespace("orders");
    let other_db = s.namespace("other").namespace("users");
    write(&users, "1", "alice", &[("t", "users")], Duration::ZERO);
    write(&orders, "1", "order one", &[], Duration::ZERO);
    write(&other_db, "1", "someone else", &[], Duration::ZERO);
    assert_eq!(users.get(b"1").unwrap(), Some(b"alice".to_vec()));
    assert_eq!(orders.get(b"1").unwrap(), Some(b"order one".to_vec()));
    assert_eq!(other_db.get(b"1").unwrap(), Some(b"someone else".to_vec()));
    // The database level itself, and the root, hold none of the tables' keys.
    assert!(s.namespace("app").list(Default::default()).unwrap().is_empty());
    assert!(s.list(Default::default()).unwrap().is_empty());
    assert_eq!(users.list(Default::default()).unwrap(), vec![b"1".to_vec()]);
    // Delete in one table leaves the others.
    users.delete(b"1").unwrap();
    assert_eq!(users.get(b"1").unwrap(), None);
    assert_eq!(orders.get(b"1").unwrap(), Some(b"order one".to_vec()));
    assert_eq!(other_db.count(b"").unwrap(), 1);
    // A table name that looks like a path is one name, not two levels.
    let slashed = s.namespace("app/users");
    write(&slashed, "2", "x", &[], Duration::ZERO);
    assert_eq!(users.get(b"2").unwrap(), None);
    assert_eq!(s.namespace("app").namespace("users").count(b"").unwrap(), 0);
}

#[test]
fn delete_missing_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    s.delete(b"missing").unwrap();
    s.namespace("db").namespace("table").delete(b"missing").unwrap();
}

#[test]
fn close_and_describe() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    let t = s.namespace("db").namespace("table");
    let shown = format!("{t:?}");
    assert!(shown.contains("Store") && shown.contains("\"db\"") && shown.contains("\"table\""), "{shown}");
    assert_eq!(t.info().unwrap().path, dir.path(), "Options(): where the store lives");
    s.close().unwrap();
    assert!(format!("{t:?}").contains("closed: true"));
    assert!(matches!(t.get_pair(b"k"), Err(Error::Closed)));
    assert!(matches!(t.list_pairs_with(Default::default()), Err(Error::Closed)));
    assert!(matches!(t.set_with(b"k", b"v", Default::default()), Err(Error::Closed)));
    assert!(matches!(t.list(Default::default()), Err(Error::Closed)));
    assert!(matches!(t.delete(b"k"), Err(Error::Closed)));
}
