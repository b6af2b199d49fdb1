//! Crashes at chosen points inside defrag, roll-over, manifest replacement and restore: a child
//! process runs the operation with `LOGTREE_FAILPOINT` naming a kill point (see
//! src/failpoint.rs) and dies there; the parent reopens and checks that every committed write is
//! there with the same content and hash, and that no leftover file survives the reopen.
//!
//! The child is this test binary re-executed as `<exe> --exact failpoint_child --ignored`.

use std::path::Path;
use std::process::Command;

use logtree::{Backend, Config};

const CHILD_DIR: &str = "LOGTREE_FAILPOINT_TEST_DIR";
const CHILD_ACTION: &str = "LOGTREE_FAILPOINT_TEST_ACTION";

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.segment_size = 16 << 10;
    c
}

mod common;

use common::Content;

fn content(db: &Backend) -> Content {
    common::content_of(&db.read_tx())
}

/// A database whose log is mostly garbage, over several segments, everything committed.
fn populate(dir: &Path) -> (Content, u32) {
    let db = Backend::open(config(dir)).expect("open");
    for round in 0..4u32 {
        let mut tx = db.batch_tx();
        tx.create_bucket("b").expect("create");
        for i in 0..300u32 {
            tx.put("b", format!("k{i:04}"), format!("{round}-{i}-{}", "x".repeat(40))).expect("put");
        }
        if round == 3 {
            for i in (0..300u32).step_by(3) {
                tx.delete("b", format!("k{i:04}")).expect("delete");
            }
        }
        tx.commit().expect("commit");
    }
    let out = (content(&db), db.hash(&[]).expect("hash"));
    db.close().expect("close");
    out
}

/// The child: runs the action named in the environment, which dies at the armed kill point.
#[test]
#[ignore = "runs only as the child process of the failpoint tests"]
fn failpoint_child() {
    let (Ok(dir), Ok(action)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_ACTION)) else { return };
    let dir = Path::new(&dir);
    match action.as_str() {
        "defrag" => {
            let db = Backend::open(config(dir)).expect("child open");
            db.defrag().expect("child defrag");
        }
        "write" => {
            // Enough to roll over segments (manifest replacements) several times.
            let db = Backend::open(config(dir)).expect("child open");
            let mut tx = db.batch_tx();
            for i in 0..200u32 {
                tx.put("b", format!("new{i:04}"), "y".repeat(200)).expect("child put");
            }
            tx.commit().expect("child commit");
        }
        "restore" => {
            let image = std::fs::read(dir.join("image")).expect("child reads image");
            logtree::restore(&mut image.as_slice(), &dir.join("restored")).expect("child restore");
        }
        other => panic!("unknown action {other}"),
    }
}

/// Runs the child with `point` armed; true if it died there (false if it finished).
fn run_child(dir: &Path, action: &str, point: &str) -> bool {
    let status = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "failpoint_child", "--ignored", "--nocapture"])
        .env(CHILD_DIR, dir)
        .env(CHILD_ACTION, action)
        .env("LOGTREE_FAILPOINT", point)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("spawn child");
    if status.status.success() {
        return false;
    }
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.status.signal().is_some(),
        "the child failed instead of dying at {point}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    true
}

fn ours(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn crash_inside_defrag_loses_nothing_and_leaves_nothing() {
    for point in ["defrag:copied", "defrag:synced", "manifest:before-rename", "defrag:switched", "defrag:before-remove"]
    {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        let (expected, hash) = populate(&dir);
        assert!(run_child(&dir, "defrag", point), "the child never reached {point}");
        let db = Backend::open(config(&dir)).unwrap_or_else(|e| panic!("{point}: reopen: {e}"));
        assert_eq!(content(&db), expected, "{point}: content");
        assert_eq!(db.hash(&[]).expect("hash"), hash, "{point}: hash");
        let listed = db.stats().segments;
        let files = ours(&dir);
        assert_eq!(files.iter().filter(|n| n.starts_with("seg-")).count(), listed, "{point}: strays left: {files:?}");
        assert!(files.iter().all(|n| !n.ends_with(".tmp")), "{point}: temporary files left: {files:?}");
        // And it goes on: a write, a defrag, a reopen.
        let mut tx = db.batch_tx();
        tx.put("b", "after", point).expect("put");
        tx.commit().expect("commit");
        db.defrag().expect("defrag after recovery");
        db.close().expect("close");
        let db = Backend::open(config(&dir)).expect("reopen");
        assert_eq!(db.read_tx().get("b", "after").expect("get"), Some(point.as_bytes().to_vec()));
        assert_eq!(db.read_tx().bucket_len("b").expect("len"), expected.len() + 1);
    }
}

#[test]
fn crash_inside_roll_over_loses_nothing_committed() {
    for point in ["rollover:created", "manifest:before-rename"] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        let (expected, hash) = populate(&dir);
        assert!(run_child(&dir, "write", point), "the child never reached {point}");
        let db = Backend::open(config(&dir)).unwrap_or_else(|e| panic!("{point}: reopen: {e}"));
        // The child's transaction was never committed: the state is exactly the committed one.
        assert_eq!(content(&db), expected, "{point}");
        assert_eq!(db.hash(&[]).expect("hash"), hash);
        let files = ours(&dir);
        assert_eq!(files.iter().filter(|n| n.starts_with("seg-")).count(), db.stats().segments, "{files:?}");
        assert!(files.iter().all(|n| !n.ends_with(".tmp")), "{files:?}");
    }
}

#[test]
fn crash_inside_restore_leaves_no_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let (expected, _) = populate(&dir);
    let db = Backend::open(config(&dir)).expect("open");
    let mut image = Vec::new();
    db.snapshot().expect("snapshot").write_to(&mut image).expect("write_to");
    db.close().expect("close");
    std::fs::write(dir.join("image"), &image).expect("write image");
    assert!(run_child(&dir, "restore", "restore:before-rename"));
    assert!(!dir.join("restored").exists(), "a half-restored database is not in place");
    // A restore after the crash succeeds and is complete.
    logtree::restore(&mut image.as_slice(), &dir.join("restored")).expect("restore");
    let copy = Backend::open(config(&dir.join("restored"))).expect("open copy");
    assert_eq!(content(&copy), expected);
}
