//! Crashes of the layers above the backend: the MVCC store (`logtree::mvcc`) and the kv API
//! (`logtree::kv`), killed at the kill points of a compaction (`LOGTREE_FAILPOINT`, feature
//! `failpoints`), then reopened — read-write and read-only.
//!
//! The children are this test binary itself, run as `<exe> --exact <child> --ignored
//! --nocapture` with `LOGTREE_UPPER_CHILD_DIR` set; without it the child tests do nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use logtree::kv::{ListOptions, ManualClock, Options, SetOptions, Store};
use logtree::mvcc::{KvStore, RangeOptions};
use logtree::{Backend, Config, Error};

mod common;

const CHILD_DIR: &str = "LOGTREE_UPPER_CHILD_DIR";
const COMPACT_REV: &str = "LOGTREE_UPPER_COMPACT_REV";
const POINTS: [&str; 2] = ["mvcc:compact-scheduled", "mvcc:compact-batch"];

fn config(dir: &Path, read_only: bool) -> Config {
    let mut c = Config::new(dir);
    c.segment_size = 16 << 10;
    c.read_only = read_only;
    c
}

fn mvcc(dir: &Path, read_only: bool) -> KvStore {
    KvStore::open(Arc::new(Backend::open(config(dir, read_only)).expect("backend"))).expect("store")
}

/// Runs the child test `name` in `dir` with the kill point `point` armed; it must die there.
fn run_child(name: &str, dir: &Path, point: &str, env: &[(&str, String)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    cmd.args(["--exact", name, "--ignored", "--nocapture"]).env(CHILD_DIR, dir).env("LOGTREE_FAILPOINT", point);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{name} at {point}: the child was not killed\n{stdout}");
    stdout
}

// ---------------------------------------------------------------------------------------------
// MVCC: a read-only open of a store whose compaction a crash interrupted

/// A store in `dir` holding `common::write_mvcc_history`.
fn mvcc_history(dir: &Path) -> KvStore {
    let s = mvcc(dir, false);
    common::write_mvcc_history(&s);
    s
}

#[test]
#[ignore = "runs only as the child process of the upper-layer crash tests"]
fn mvcc_compaction_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let rev: i64 = std::env::var(COMPACT_REV).expect("rev").parse().expect("number");
    mvcc(Path::new(&dir), false).compact(rev).expect("compact");
}

/// A crash in the middle of a compaction leaves the `key` bucket half compacted (scheduled >
/// finished). A read-write open finishes the compaction; a read-only open cannot, and must still
/// show a state the API promises: the compaction as done (reads below it `Compacted`, reads at
/// and above it as after an uninterrupted compaction, the same hash) — never history from which
/// some revisions are missing.
#[test]
fn read_only_open_of_a_half_compacted_store_shows_the_compaction_done() {
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let reference = mvcc_history(reference_dir.path());
    let rev = 2500;
    let before = reference.range(b"", b"\0", RangeOptions { rev: 800, ..Default::default() }).expect("range");
    assert!(before.count > 0);
    reference.compact(rev).expect("compact");
    let want_hash = reference.hash_by_rev(0).expect("hash");
    let want_at = reference.range(b"", b"\0", RangeOptions { rev, ..Default::default() }).expect("range");
    let want_now = reference.range(b"", b"\0", RangeOptions::default()).expect("range");
    drop(reference);

    for point in POINTS {
        let tmp = tempfile::tempdir().expect("tempdir");
        drop(mvcc_history(tmp.path()));
        run_child("mvcc_compaction_child", tmp.path(), point, &[(COMPACT_REV, rev.to_string())]);

        let ro = mvcc(tmp.path(), true);
        // Below the compaction: `Compacted`, or (nothing removed yet) the full history there.
        match ro.range(b"", b"\0", RangeOptions { rev: 800, ..Default::default() }) {
            Err(Error::Compacted { .. }) => {}
            Ok(r) => assert!(
                r.kvs == before.kvs,
                "{point}: read-only: a read at 800, below the interrupted compaction at {rev}, gave {} keys \
                 of which {} differ from the full history's {}: history with revisions missing",
                r.count,
                r.kvs.iter().filter(|kv| !before.kvs.contains(kv)).count(),
                before.count
            ),
            Err(e) => panic!("{point}: {e}"),
        }
        if point == "mvcc:compact-batch" {
            // Revisions are gone: only the compaction done is a state the store went through.
            assert_eq!(ro.compacted_revision(), rev, "{point}: read-only: the scheduled compaction counts as done");
        }
        let at = |s: &KvStore, r| s.range(b"", b"\0", RangeOptions { rev: r, ..Default::default() }).expect("range");
        assert_eq!(at(&ro, rev), want_at, "{point}: read-only, at the compaction");
        assert_eq!(at(&ro, 0), want_now, "{point}: read-only, now");
        if ro.compacted_revision() == rev {
            assert_eq!(ro.hash_by_rev(0).expect("hash"), want_hash, "{point}: read-only hash");
        }
        drop(ro);

        // And a read-write open finishes it, alike.
        let rw = mvcc(tmp.path(), false);
        assert_eq!(rw.compacted_revision(), rev, "{point}");
        assert_eq!(at(&rw, rev), want_at, "{point}");
        assert_eq!(at(&rw, 0), want_now, "{point}");
        assert_eq!(rw.hash_by_rev(0).expect("hash"), want_hash, "{point}");
    }
}

// ---------------------------------------------------------------------------------------------
// kv: the sweeper's deletes, then its automatic compaction, killed

const T0: u64 = 1_700_000_000;

fn kv_open(dir: &Path, clock: Arc<ManualClock>, read_only: bool) -> Store {
    let opts = Options { clock, sweep_interval: Duration::ZERO, sweep_batch: 64, compact_after: 200 };
    Store::open_with(config(dir, read_only), opts).expect("kv store")
}

fn at(secs: u64) -> Arc<ManualClock> {
    Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(secs)))
}

/// The kv workload, at `T0` on a manual clock: in namespaces `a` and `a`/`b` (and the root),
/// `short/i` deleted in 1 s, `long/i` deleted in 100 s, `cas/i` written by CAS (created, then
/// updated 5 times: the garbage that makes the sweeper compact), all durable. Returns the store
/// and each CAS key's last pair revision.
fn kv_workload(dir: &Path) -> (Store, BTreeMap<String, i64>) {
    let s = kv_open(dir, at(T0), false);
    let mut revs = BTreeMap::new();
    for (ns_name, ns) in [("root", s.clone()), ("a", s.namespace("a")), ("a/b", s.namespace("a").namespace("b"))] {
        for i in 0..40 {
            let del = |secs| SetOptions { delete_in: Some(Duration::from_secs(secs)), ..Default::default() };
            ns.set_with(format!("short/{i}").as_bytes(), b"s", del(1)).expect("set");
            ns.set_with(format!("long/{i}").as_bytes(), b"l", del(100)).expect("set");
            let k = format!("cas/{i}");
            let mut p = ns.atomic_put(k.as_bytes(), b"0", None).expect("create");
            for n in 1..=5 {
                p = ns.atomic_put(k.as_bytes(), format!("{n}").as_bytes(), Some(&p)).expect("cas");
            }
            revs.insert(format!("{ns_name}:{k}"), p.revision);
        }
    }
    s.force_commit().expect("commit");
    (s, revs)
}

#[test]
#[ignore = "runs only as the child process of the upper-layer crash tests"]
fn kv_sweep_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let s = kv_open(Path::new(&dir), at(T0 + 2), false);
    // Deletes the 120 `short` keys (two batches, each one txn), then compacts: killed there.
    s.sweep().expect("sweep");
}

fn check_kv(s: &Store, revs: &BTreeMap<String, i64>, what: &str) {
    for (ns_name, ns) in [("root", s.clone()), ("a", s.namespace("a")), ("a/b", s.namespace("a").namespace("b"))] {
        // Namespaces stay apart: each holds exactly its own 40 CAS keys (the `long` ones are
        // past their deadline, the `short` ones deleted).
        let keys = ns.list(ListOptions::default()).expect("list");
        let want: Vec<Vec<u8>> = {
            let mut v: Vec<Vec<u8>> = (0..40).map(|i| format!("cas/{i}").into_bytes()).collect();
            v.sort();
            v
        };
        assert_eq!(keys, want, "{what}: {ns_name}: list");
        assert_eq!(ns.count(b"").expect("count"), 40, "{what}: {ns_name}: count");
        for i in 0..40 {
            for k in [format!("short/{i}"), format!("long/{i}")] {
                assert_eq!(ns.get(k.as_bytes()).expect("get"), None, "{what}: {ns_name}:{k}");
                assert!(!ns.exists(k.as_bytes()).expect("exists"), "{what}: {ns_name}:{k}");
                assert!(!ns.has(k.as_bytes()).expect("has"), "{what}: {ns_name}:{k}");
            }
            let k = format!("cas/{i}");
            let p = ns.get_pair(k.as_bytes()).expect("get").expect("a CAS key");
            assert_eq!((p.value.as_slice(), p.revision), (&b"5"[..], revs[&format!("{ns_name}:{k}")]), "{what}: {k}");
        }
    }
}

/// The sweeper's deletes and the automatic compaction after them, killed at each point of the
/// compaction: reopened a day later, the store is the workload's with the sweep's deletes, the
/// `long` keys (whose deadline passed while it was down) invisible at once, every CAS key at its
/// acknowledged revision, the namespaces apart, the compaction finished, and the MVCC history
/// hashing as that of a run that was never killed.
#[test]
fn kv_sweep_and_auto_compaction_killed_reopen_consistent() {
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let (reference, revs) = kv_workload(reference_dir.path());
    drop(reference);
    let reference = kv_open(reference_dir.path(), at(T0 + 2), false);
    assert_eq!(reference.sweep().expect("sweep"), 120);
    let compacted = reference.info().expect("info").compacted_revision;
    assert!(compacted > 0, "the reference compacted");
    reference.close().expect("close");
    let want_hash = mvcc(reference_dir.path(), false).hash_by_rev(0).expect("hash");

    for point in POINTS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (s, child_revs) = kv_workload(tmp.path());
        assert_eq!(child_revs, revs, "the workload is deterministic");
        s.close().expect("close");
        run_child("kv_sweep_child", tmp.path(), point, &[]);

        let later = at(T0 + 86_400);
        // Read-only first (it cannot finish the compaction), then read-write.
        let ro = kv_open(tmp.path(), later.clone(), true);
        check_kv(&ro, &revs, &format!("{point}, read-only"));
        drop(ro);
        let s = kv_open(tmp.path(), later, false);
        let info = s.info().expect("info");
        assert_eq!(info.compacted_revision, compacted, "{point}: the compaction resumed on open");
        check_kv(&s, &revs, point);
        s.close().expect("close");
        assert_eq!(mvcc(tmp.path(), false).hash_by_rev(0).expect("hash"), want_hash, "{point}: hash");
        // The `long` keys, due while the store was down, are swept at the next sweep.
        let s = kv_open(tmp.path(), at(T0 + 86_400), false);
        assert_eq!(s.sweep().expect("sweep"), 120, "{point}");
        check_kv(&s, &revs, &format!("{point}, swept"));
    }
}
