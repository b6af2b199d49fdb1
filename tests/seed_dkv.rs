//! dKV's `IStore` (seed document 001) through `logtree::kv`: every operation it describes.
//!
//! | dKV | logtree::kv |
//! |---|---|
//! | `Set(key, value)` | `set(key, value, None)` |
//! | `SetE(key, value, expireIn, deleteIn)` (0 = never) | `set_with(key, value, SetOptions { expire_in, delete_in, .. })` |
//! | `SetEIfUnset(...)` (no error if it exists) | `set_with(.., SetOptions { if_absent: true, .. })` → `Ok(false)` |
//! | `Expire(key)` (still found by `Has`) | `expire(key)` |
//! | `Delete(key)` | `delete(key)` |
//! | `Get(key)` → `(value, loaded)` | `get(key)` → `Option` |
//! | `Has(key)` (true even if expired) | `has(key)` |
//! | `GetDBInfo()` | `info()` |
//!
//! dKV counts its deadlines in durations from the write; here they are wall-clock instants
//! on the store's clock, stored with the value. A `ManualClock` moves time, so nothing sleeps.

use std::sync::Arc;
use std::time::Duration;

use logtree::Config;
use logtree::kv::{ManualClock, Options, SetOptions, Store};

const S: Duration = Duration::from_secs(1);

fn open_at(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Store {
    let opts = Options { clock: clock.clone(), sweep_interval: Duration::ZERO, ..Options::default() };
    Store::open_with(Config::new(dir), opts).unwrap()
}

fn open(dir: &std::path::Path) -> (Store, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    (open_at(dir, &clock), clock)
}

fn e(expire: u64, delete: u64) -> SetOptions {
    let d = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    SetOptions { expire_in: d(expire), delete_in: d(delete), ..SetOptions::default() }
}

#[test]
fn set_get_has_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path());
    assert_eq!(s.get(b"k").unwrap(), None, "not loaded");
    assert!(!s.has(b"k").unwrap());
    s.set(b"k", b"v", None).unwrap();
    assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert!(s.has(b"k").unwrap());
    s.set(b"k", b"w", None).unwrap();
    assert_eq!(s.get(b"k").unwrap(), Some(b"w".to_vec()), "Set updates");
    s.delete(b"k").unwrap();
    assert_eq!(s.get(b"k").unwrap(), None);
    assert!(!s.has(b"k").unwrap(), "Delete removes the key from the store");
}

#[test]
fn set_e_expire_only_keeps_the_key_for_has() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    // Compact the MVCC history at every sweep, so that the dropped value's space is reclaimed.
    let opts = Options { clock: clock.clone(), sweep_interval: Duration::ZERO, compact_after: 1, ..Options::default() };
    let s = Store::open_with(Config::new(dir.path()), opts).unwrap();
    assert!(s.set_with(b"k", &[7u8; 100_000], e(5, 0)).unwrap());
    clock.advance(4 * S);
    assert!(s.get(b"k").unwrap().is_some());
    clock.advance(S);
    assert_eq!(s.get(b"k").unwrap(), None, "expired at expireIn");
    assert!(s.has(b"k").unwrap(), "Has is true even if the value is expired");
    assert!(!s.exists(b"k").unwrap());
    // The sweeper drops the value's bytes but keeps the key.
    let before = s.info().unwrap();
    assert_eq!((before.keys, before.expired_keys), (0, 1));
    assert_eq!(s.sweep().unwrap(), 1);
    let after = s.info().unwrap();
    assert_eq!((after.keys, after.expired_keys, after.total_keys), (0, 1, 1));
    assert!(after.bytes_live + 99_000 <= before.bytes_live, "{} -> {}", before.bytes_live, after.bytes_live);
    clock.advance(Duration::from_secs(1_000_000));
    assert_eq!(s.sweep().unwrap(), 0);
    assert!(s.has(b"k").unwrap(), "no deleteIn: the key stays");
}

#[test]
fn set_e_delete_only_removes_the_key_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = open(dir.path());
    s.set_with(b"k", b"v", e(0, 10)).unwrap();
    clock.advance(9 * S);
    assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert!(s.has(b"k").unwrap());
    clock.advance(S);
    assert_eq!(s.get(b"k").unwrap(), None);
    assert!(!s.has(b"k").unwrap(), "deleted at deleteIn, before any sweep");
    assert_eq!(s.info().unwrap().total_keys, 1, "still stored until swept");
    assert_eq!(s.sweep().unwrap(), 1);
    assert_eq!(s.info().unwrap().total_keys, 0);
}

#[test]
fn set_e_expire_then_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = open(dir.path());
    s.set_with(b"k", b"v", e(5, 10)).unwrap();
    clock.advance(5 * S);
    assert_eq!(s.get(b"k").unwrap(), None);
    assert!(s.has(b"k").unwrap());
    assert_eq!(s.sweep().unwrap(), 1, "the value is dropped at 5 s");
    assert!(s.has(b"k").unwrap());
    clock.advance(5 * S);
    assert!(!s.has(b"k").unwrap());
    assert_eq!(s.sweep().unwrap(), 1, "the key is deleted at 10 s");
    assert_eq!(s.info().unwrap().total_keys, 0);
    // A deleteIn before expireIn: deleted (and so expired) at deleteIn.
    s.set_with(b"j", b"v", e(10, 5)).unwrap();
    clock.advance(5 * S);
    assert!(!s.has(b"j").unwrap());
    assert_eq!(s.get(b"j").unwrap(), None);
}

#[test]
fn zero_means_no_expiration_or_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = open(dir.path());
    s.set_with(b"k", b"v", e(0, 0)).unwrap();
    let zero = SetOptions { expire_in: Some(Duration::ZERO), delete_in: Some(Duration::ZERO), ..SetOptions::default() };
    s.set_with(b"z", b"v", zero).unwrap();
    assert_eq!(s.get_pair(b"k").unwrap().unwrap().expires_at, None);
    assert_eq!(s.get_pair(b"z").unwrap().unwrap().expires_at, None);
    clock.advance(Duration::from_secs(100 * 365 * 86_400));
    assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(s.get(b"z").unwrap(), Some(b"v".to_vec()));
    // A deadline far beyond the representable range means never, not an overflow.
    s.set_with(b"far", b"v", SetOptions { expire_in: Some(Duration::MAX), ..SetOptions::default() }).unwrap();
    assert_eq!(s.get(b"far").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn a_later_set_replaces_the_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = open(dir.path());
    s.set_with(b"k", b"v1", e(5, 5)).unwrap();
    s.set(b"k", b"v2", None).unwrap();
    clock.advance(10 * S);
    assert_eq!(s.get(b"k").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(s.sweep().unwrap(), 0, "the schedule entry is stale and does nothing");
    s.set_with(b"k", b"v3", e(100, 0)).unwrap();
    s.set_with(b"k", b"v4", e(1, 0)).unwrap();
    clock.advance(S);
    assert_eq!(s.get(b"k").unwrap(), None, "the shorter, later deadline holds");
}

#[test]
fn set_e_if_unset() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = open(dir.path());
    let if_unset = |ex: u64, del: u64| SetOptions { if_absent: true, ..e(ex, del) };
    assert!(s.set_with(b"k", b"first", if_unset(5, 10)).unwrap(), "absent: written");
    let p = s.get_pair(b"k").unwrap().unwrap();
    // Exists: not updated, whatever expireIn and deleteIn say, and no error.
    assert!(!s.set_with(b"k", b"second", if_unset(0, 0)).unwrap());
    assert_eq!(s.get_pair(b"k").unwrap(), Some(p));
    // Expired but not deleted: it still exists (Has), so still not updated.
    clock.advance(5 * S);
    assert!(s.has(b"k").unwrap());
    assert!(!s.set_with(b"k", b"third", if_unset(0, 0)).unwrap());
    assert_eq!(s.get(b"k").unwrap(), None);
    // Deleted by its deadline (not yet swept): absent, so written.
    clock.advance(5 * S);
    assert!(s.set_with(b"k", b"fourth", if_unset(0, 0)).unwrap());
    assert_eq!(s.get(b"k").unwrap(), Some(b"fourth".to_vec()));
    assert_eq!(s.sweep().unwrap(), 0, "the sweeper leaves the new value alone");
    assert_eq!(s.get(b"k").unwrap(), Some(b"fourth".to_vec()));
    // Deleted explicitly: absent.
    s.delete(b"k").unwrap();
    assert!(s.set_with(b"k", b"fifth", if_unset(0, 0)).unwrap());
}

#[test]
fn expire_hides_the_value_and_keeps_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = open(dir.path());
    s.set_with(b"k", b"v", e(0, 10)).unwrap();
    s.expire(b"k").unwrap();
    assert_eq!(s.get(b"k").unwrap(), None);
    assert!(!s.exists(b"k").unwrap());
    assert!(s.has(b"k").unwrap(), "still findable with Has");
    assert!(s.list(Default::default()).unwrap().is_empty());
    assert_eq!(s.count(b"").unwrap(), 0);
    // Expiring again, or a missing key: no error.
    s.expire(b"k").unwrap();
    s.expire(b"missing").unwrap();
    assert!(!s.has(b"missing").unwrap());
    // The deletion deadline still holds.
    clock.advance(10 * S);
    assert!(!s.has(b"k").unwrap());
    assert_eq!(s.sweep().unwrap(), 1);
    // A new Set brings it back.
    s.set(b"k", b"again", None).unwrap();
    s.expire(b"k").unwrap();
    s.set(b"k", b"back", None).unwrap();
    assert_eq!(s.get(b"k").unwrap(), Some(b"back".to_vec()));
}

#[test]
fn get_db_info() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock) = open(dir.path());
    let empty = s.info().unwrap();
    assert_eq!((empty.keys, empty.expired_keys, empty.total_keys, empty.value_bytes), (0, 0, 0, 0));
    assert_eq!(empty.path, dir.path());
    s.set(b"a", b"12345", None).unwrap();
    s.set_with(b"b", b"xy", e(5, 0)).unwrap();
    s.set_with(b"c", b"z", e(0, 5)).unwrap();
    s.namespace("other").set(b"d", b"elsewhere", None).unwrap();
    let i = s.info().unwrap();
    assert_eq!((i.keys, i.expired_keys, i.total_keys, i.value_bytes), (3, 0, 4, 8));
    assert_eq!(i.scheduled, 2);
    assert_eq!(i.next_sweep_at, Some(clock.now_for_test() + 5 * S));
    assert!(i.revision > empty.revision);
    assert!(i.bytes_on_disk >= i.bytes_live && i.bytes_live > 0 && i.segments >= 1);
    clock.advance(5 * S);
    let i = s.info().unwrap();
    assert_eq!((i.keys, i.expired_keys, i.total_keys), (1, 1, 4), "b expired (still there), c deleted");
    let o = s.namespace("other").info().unwrap();
    assert_eq!((o.keys, o.value_bytes, o.total_keys), (1, 9, 4));
}

/// `now()` of the manual clock without importing the trait in every test.
trait NowForTest {
    fn now_for_test(&self) -> std::time::SystemTime;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> std::time::SystemTime {
        logtree::kv::Clock::now(self)
    }
}

#[test]
fn deadlines_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    {
        let s = open_at(dir.path(), &clock);
        s.set_with(b"soon", b"v", e(10, 20)).unwrap();
        s.set_with(b"late", b"v", e(100, 200)).unwrap();
        s.set(b"never", b"v", None).unwrap();
        s.close().unwrap();
    }
    // Reopened after 15 s: `soon` has expired, the others have not.
    clock.advance(15 * S);
    let s = open_at(dir.path(), &clock);
    assert_eq!(s.get(b"soon").unwrap(), None);
    assert!(s.has(b"soon").unwrap());
    assert_eq!(s.get(b"late").unwrap(), Some(b"v".to_vec()));
    let late = s.get_pair(b"late").unwrap().unwrap();
    assert_eq!(late.expires_at, Some(logtree::kv::Clock::now(&*clock) + 85 * S));
    // The schedule was rebuilt from the stored deadlines.
    assert_eq!(s.info().unwrap().scheduled, 2);
    assert_eq!(s.sweep().unwrap(), 1, "soon's value dropped");
    clock.advance(200 * S);
    assert_eq!(s.sweep().unwrap(), 2, "soon and late deleted");
    assert_eq!(s.list(Default::default()).unwrap(), vec![b"never".to_vec()]);
    s.close().unwrap();
    let s = open_at(dir.path(), &clock);
    assert_eq!(s.info().unwrap().total_keys, 1);
}

#[test]
fn sweeps_delete_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let opts = Options { clock: clock.clone(), sweep_interval: Duration::ZERO, sweep_batch: 1000, compact_after: 0 };
    let s = Store::open_with(Config::new(dir.path()), opts).unwrap();
    for i in 0..2500u32 {
        s.set_with(format!("k{i:05}").as_bytes(), b"v", e(0, 1)).unwrap();
    }
    s.set(b"keep", b"v", None).unwrap();
    clock.advance(S);
    let before = s.info().unwrap().revision;
    assert_eq!(s.sweep().unwrap(), 2500);
    // One MVCC revision per txn: 1000 + 1000 + 500.
    assert_eq!(s.info().unwrap().revision - before, 3);
    assert_eq!(s.info().unwrap().total_keys, 1);
    assert_eq!(s.count(b"").unwrap(), 1);
}
