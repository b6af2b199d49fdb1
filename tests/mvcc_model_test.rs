//! The MVCC layer against a simple in-memory history (proptest over
//! `logtree::fuzzing::run_mvcc_model`; shrinking gives a minimal failing sequence), and a kill
//! in the middle of a compaction.
//!
//! LOGTREE_MVCC_CASES raises the number of proptest cases (default 24).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use logtree::fuzzing::{MAX_BULK, MvccStep, run_mvcc_model};
use logtree::mvcc::{KvStore, RangeOptions};
use logtree::{Backend, Config, Error};
use proptest::prelude::*;

mod common;

fn open(dir: &Path) -> KvStore {
    let mut c = Config::new(dir);
    c.sync = false;
    c.segment_size = 16 << 10;
    KvStore::open(Arc::new(Backend::open(c).expect("backend"))).expect("store")
}

fn step() -> impl Strategy<Value = MvccStep> {
    prop_oneof![
        6 => (0u8..6, any::<u8>()).prop_map(|(k, v)| MvccStep::Put(k, v)),
        2 => (0u8..6, 0u8..7).prop_map(|(a, b)| MvccStep::Delete(a, b)),
        2 => (0u8..6, 0i64..3, any::<u8>()).prop_map(|(k, v, x)| MvccStep::Txn(k, v, x)),
        // Rarely, and then a few thousand keys: ranges then cross the 1,024-key pieces.
        1 => (0u16..=MAX_BULK, any::<u8>()).prop_map(|(n, v)| MvccStep::Bulk(n, v)),
        1 => any::<u8>().prop_map(MvccStep::Compact),
        1 => Just(MvccStep::Reopen),
        3 => (any::<u8>(), prop_oneof![Just(0u16), 1u16..2100], any::<bool>())
            .prop_map(|(pick, limit, keys_only)| MvccStep::ReadAt { pick, limit, keys_only }),
    ]
}

fn cases() -> u32 {
    std::env::var("LOGTREE_MVCC_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    /// The model and its checks are `logtree::fuzzing::run_mvcc_model`, which the
    /// `mvcc_model` fuzz target runs too.
    #[test]
    fn mvcc_matches_the_model(steps in prop::collection::vec(step(), 1..80)) {
        run_mvcc_model(&steps);
    }
}

const CHILD_DIR: &str = "LOGTREE_MVCC_CHILD_DIR";

/// The child of the kill test: compacts, and dies at the armed kill point.
#[test]
#[ignore = "runs only as the child process of the compaction kill test"]
fn compaction_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let store = open(Path::new(&dir));
    let rev: i64 = std::env::var("LOGTREE_MVCC_COMPACT_REV").expect("rev").parse().expect("number");
    store.compact(rev).expect("compact");
}

/// A store in `dir` holding `common::write_mvcc_history`.
fn history(dir: &Path) -> KvStore {
    let s = open(dir);
    common::write_mvcc_history(&s);
    s
}

#[test]
fn kill_in_the_middle_of_a_compaction_resumes_on_open() {
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let reference = history(reference_dir.path());
    let rev = 2500;
    reference.compact(rev).expect("compact");
    let want_hash = reference.hash_by_rev(0).expect("hash");
    let want = reference.range(b"", b"\0", RangeOptions { rev, ..Default::default() }).expect("range");
    let want_now = reference.range(b"", b"\0", RangeOptions::default()).expect("range");

    for point in ["mvcc:compact-scheduled", "mvcc:compact-batch"] {
        let tmp = tempfile::tempdir().expect("tempdir");
        drop(history(tmp.path()));
        let out = Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", "compaction_child", "--ignored", "--nocapture"])
            .env(CHILD_DIR, tmp.path())
            .env("LOGTREE_MVCC_COMPACT_REV", rev.to_string())
            .env("LOGTREE_FAILPOINT", point)
            .output()
            .expect("spawn");
        assert!(!out.status.success(), "{point}: the child was not killed");
        let store = open(tmp.path());
        assert_eq!(store.compacted_revision(), rev, "{point}: the compaction resumed on open");
        assert_eq!(store.hash_by_rev(0).expect("hash"), want_hash, "{point}: same kept revisions");
        let at = |r| store.range(b"", b"\0", RangeOptions { rev: r, ..Default::default() }).expect("range");
        assert_eq!(at(rev), want, "{point}");
        assert_eq!(at(0), want_now, "{point}");
        assert!(matches!(
            store.range(b"", b"\0", RangeOptions { rev: rev - 1, ..Default::default() }),
            Err(Error::Compacted { .. })
        ));
    }
}
