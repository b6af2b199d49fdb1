//! The buckets' layers of recent writes and the merger thread (DESIGN.md §3, "Layers"): reads
//! through layers and across merges, snapshots that outlive merges, the merge after a pause,
//! and counts that agree with a reopen (which rebuilds the index without layers).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use logtree::{Backend, Config, Error};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn config(dir: &std::path::Path, layer_entries: usize) -> Config {
    let mut c = Config::new(dir);
    c.sync = false;
    c.layer_entries = layer_entries;
    c
}

/// Everything in bucket "b" of `rtx`, and its length, against `model`.
fn check_all(rtx: &logtree::ReadTx, model: &Model, ctx: &str) {
    let mut seen = Model::new();
    rtx.for_each("b", |k, v| {
        seen.insert(k.to_vec(), v.to_vec());
        Ok(())
    })
    .unwrap();
    assert_eq!(&seen, model, "{ctx}: scan");
    assert_eq!(rtx.bucket_len("b").unwrap(), model.len(), "{ctx}: bucket_len");
    for (k, v) in model {
        assert_eq!(rtx.get("b", k).unwrap().as_ref(), Some(v), "{ctx}: get {k:?}");
    }
}

fn wait_until_merged(db: &Backend) {
    let start = Instant::now();
    while db.stats().unmerged > 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "layers left unmerged: {}", db.stats().unmerged);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Random puts and deletes over a small key space with layers of 4 entries: every few
/// transactions seal a layer and the merger merges all the time, while reads, scans and
/// counts must show exactly what was written, and a snapshot taken early must keep showing
/// what it saw.
#[test]
fn layered_writes_read_back_across_merges_and_snapshots_stay_frozen() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::open(config(dir.path(), 4)).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.commit().unwrap();
    let mut model = Model::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut kept: Option<(logtree::ReadTx, Model)> = None;
    for t in 0..400 {
        let mut tx = db.batch_tx();
        for _ in 0..1 + rng.below(12) {
            let key = format!("k{:04}", rng.below(600)).into_bytes();
            if rng.below(4) == 0 {
                tx.delete("b", &key).unwrap();
                model.remove(&key);
            } else {
                let value = vec![(t % 251) as u8; rng.below(40) as usize];
                tx.put("b", &key, &value).unwrap();
                model.insert(key, value);
            }
        }
        // The transaction reads its own writes through the layers.
        if let Some((k, v)) = model.iter().nth(rng.below(model.len().max(1) as u64) as usize) {
            assert_eq!(tx.get("b", k).unwrap().as_ref(), Some(v), "tx {t}: own write");
        }
        tx.finish().unwrap();
        if t % 40 == 0 {
            check_all(&db.read_tx(), &model, &format!("after tx {t}"));
        }
        if t == 60 {
            kept = Some((db.read_tx(), model.clone()));
        }
    }
    check_all(&db.read_tx(), &model, "at the end");
    let (old, old_model) = kept.unwrap();
    check_all(&old, &old_model, "the snapshot of tx 60, after many merges");
    drop(old);

    wait_until_merged(&db);
    check_all(&db.read_tx(), &model, "once merged");
    let before = db.stats();
    db.close().unwrap();
    // A reopen builds the index without layers, counting every key and byte afresh.
    let db = Backend::open(config(dir.path(), 4)).unwrap();
    let after = db.stats();
    assert_eq!((before.keys, before.size_in_use), (after.keys, after.size_in_use));
    check_all(&db.read_tx(), &model, "after reopen");
}

/// A large transaction's layer over an empty bucket becomes its tree at once, and one over a
/// full bucket is merged once the writer pauses.
#[test]
fn large_layers_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::open(config(dir.path(), 1024)).unwrap();
    let mut model = Model::new();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    for i in 0..20_000u32 {
        let key = format!("{:08}", i.wrapping_mul(2_654_435_761) % 1_000_003).into_bytes();
        tx.put("b", &key, i.to_le_bytes()).unwrap();
        model.insert(key, i.to_le_bytes().to_vec());
    }
    tx.commit().unwrap();
    wait_until_merged(&db);
    let mut tx = db.batch_tx();
    for i in 0..5_000u32 {
        let key = format!("{:08}", i.wrapping_mul(2_654_435_761) % 1_000_003).into_bytes();
        if i % 2 == 0 {
            tx.delete("b", &key).unwrap();
            model.remove(&key);
        } else {
            tx.put("b", &key, b"new").unwrap();
            model.insert(key, b"new".to_vec());
        }
    }
    tx.commit().unwrap();
    let rtx = db.read_tx();
    check_all(&rtx, &model, "before the merge");
    wait_until_merged(&db);
    check_all(&rtx, &model, "the same snapshot, after it");
    check_all(&db.read_tx(), &model, "a new snapshot, after it");
    let size = db.size_in_use();
    drop(rtx);
    db.close().unwrap();
    let db = Backend::open(config(dir.path(), 1024)).unwrap();
    assert_eq!(db.size_in_use(), size);
}

/// Layers of no entries, or so large that their filters could not be allocated (found by
/// review: `usize::MAX` aborted the process at the first put), are refused.
#[test]
fn layer_sizes_out_of_bounds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for entries in [0, logtree::MAX_LAYER_ENTRIES + 1, usize::MAX] {
        match Backend::open(config(dir.path(), entries)) {
            Err(Error::InvalidConfig(why)) => assert!(why.contains("layer_entries"), "{why}"),
            other => panic!("{entries}: expected InvalidConfig, got {other:?}"),
        }
    }
    let db = Backend::open(config(dir.path(), logtree::MAX_LAYER_ENTRIES)).unwrap();
    let mut tx = db.batch_tx();
    tx.create_bucket("b").unwrap();
    tx.put("b", "k", "v").unwrap();
    tx.commit().unwrap();
    assert_eq!(db.read_tx().get("b", "k").unwrap(), Some(b"v".to_vec()));
}
