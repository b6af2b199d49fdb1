//! The writer's catalog, with the puts of the running transaction that the index has not taken
//! in yet.
//!
//! Why puts wait: a put into a large bucket spends most of its time waiting on cache misses,
//! two per level of the tree below the cached top, each address read from the line before.
//! One put's misses cannot overlap; several puts' can. So `BatchTx::put` writes the log record
//! at once (that fixes where the value lies) and stages the index entry here; when they are
//! applied, each [`WARM_GROUP`] puts' paths are fetched together ([`BTree::warm_paths`]) and
//! the entries inserted in order. (Measured on 100 durable batches of 1,000 random puts into a
//! bucket of a million keys and more: the time of the puts fell by about a sixth.)
//!
//! (A running backend's puts go into each bucket's small tree of recent writes, which is in the
//! cache, and `Bucket::warm_paths` fetches nothing there unless one transaction made it large,
//! 65,536 entries or more: the grouping now pays in a bulk load. See `index/layers.rs`.)
//!
//! Puts stay staged until something needs the catalog, or [`STAGE_PUTS`] puts or
//! [`STAGE_KEY_BYTES`] bytes of keys are staged: a `commit` of a large transaction applies them
//! only once it has handed its fdatasync to the committer thread, so that the index's work
//! overlaps the disk's (`BatchTx::end`).
//!
//! Nothing else may see the catalog without them: every way to it — [`TxBuffer::read`] (the
//! transaction's own reads, which must see its writes), [`TxBuffer::write`] (deletes, bucket
//! changes, publishing) — applies the staged puts first. Applying them in order is exactly
//! what inserting them one by one would have done; only the moment differs. A rollback drops
//! them with the catalog ([`TxBuffer::reset`]).
//!
//! [`BTree::warm_paths`]: crate::index::BTree::warm_paths

use std::cell::UnsafeCell;

use crate::index::catalog::Catalog;
use crate::index::{ValueRef, WARM_GROUP};

/// Staged puts are applied once this many are staged, whatever reads the catalog or not.
pub(crate) const STAGE_PUTS: usize = 4096;
/// ... or once their keys take this many bytes, so that a transaction of long keys holds at
/// most this much more memory.
const STAGE_KEY_BYTES: usize = 1 << 20;

/// The catalog and the staged puts. Not `Sync`: see [`TxBuffer::read`].
pub(crate) struct TxBuffer {
    catalog: UnsafeCell<Catalog>,
    staged: UnsafeCell<Staged>,
}

/// Puts written to the log but not yet to the index, in the order they were made.
#[derive(Default)]
struct Staged {
    puts: Vec<StagedPut>,
    /// The staged keys, one after another.
    keys: Vec<u8>,
    /// Set while puts are being applied: still set afterwards only if a panic interrupted
    /// them, and then some of them are in the index and the rest lost (see `interrupted`).
    applying: bool,
}

struct StagedPut {
    /// The bucket's position in the catalog: stable while puts are staged, since changing the
    /// buckets goes through [`TxBuffer::write`], which applies them first.
    bucket: usize,
    /// Where the key ends in `Staged::keys` (it starts where the previous one ends).
    key_end: usize,
    value: ValueRef,
}

impl TxBuffer {
    pub(crate) fn new(catalog: Catalog) -> TxBuffer {
        TxBuffer { catalog: UnsafeCell::new(catalog), staged: UnsafeCell::new(Staged::default()) }
    }

    /// The catalog with every put applied, for reading.
    pub(crate) fn read(&self) -> &Catalog {
        // SAFETY: this writes through a shared reference, and that holds because no reference
        // into the catalog or the staged puts is alive while it does:
        // - `TxBuffer` is not `Sync` (its fields are `UnsafeCell`s), so no other thread is in
        //   here; and nothing called below comes back into this `TxBuffer`.
        // - Puts are staged only by `stage_put`, which takes `&mut self`: when it returns, no
        //   borrow of `self` made before it is alive. So when this finds staged puts, no
        //   reference returned by an earlier `read` is alive either, and applying them writes
        //   memory nobody else points into.
        // - Every reference this returns is taken after the staged puts are applied; as long as
        //   one is alive, `self` is borrowed, so no put can be staged and every later `read`
        //   finds none and writes nothing.
        // (`bucket` reads the catalog without applying but returns no reference into it.)
        unsafe {
            let staged = &mut *self.staged.get();
            if !staged.puts.is_empty() {
                apply(&mut *self.catalog.get(), staged);
            }
            &*self.catalog.get()
        }
    }

    /// The catalog with every put applied, for changing.
    pub(crate) fn write(&mut self) -> &mut Catalog {
        let catalog = self.catalog.get_mut();
        let staged = self.staged.get_mut();
        if !staged.puts.is_empty() {
            apply(catalog, staged);
        }
        catalog
    }

    /// The position in the catalog and the id of bucket `name`, if it exists. Staged puts
    /// change no bucket, so this need not apply them.
    pub(crate) fn bucket(&self, name: &[u8]) -> Option<(usize, u32)> {
        // SAFETY: a shared read that ends before this returns; writes through `self` happen
        // only in `read` (see there: never while a reference into the catalog is alive, and
        // not at all during this call, which does not call it) and through `&mut self`.
        let catalog = unsafe { &*self.catalog.get() };
        let index = catalog.index_of_name(name)?;
        Some((index, catalog.at(index).id))
    }

    /// Stages a put of `key` in the bucket at position `bucket` (from [`TxBuffer::bucket`]),
    /// whose value lies at `value`; applies what is staged once it is [`STAGE_PUTS`] puts or
    /// [`STAGE_KEY_BYTES`] bytes of keys.
    pub(crate) fn stage_put(&mut self, bucket: usize, key: &[u8], value: ValueRef) {
        let staged = self.staged.get_mut();
        staged.keys.extend_from_slice(key);
        staged.puts.push(StagedPut { bucket, key_end: staged.keys.len(), value });
        if staged.puts.len() >= STAGE_PUTS || staged.keys.len() >= STAGE_KEY_BYTES {
            apply(self.catalog.get_mut(), staged);
        }
    }

    /// Whether a panic interrupted the applying of staged puts (caught by the caller, since
    /// the transaction is still running): the catalog then lacks some of the transaction's
    /// puts, which are in its log frame, so the transaction must not be published.
    pub(crate) fn interrupted(&self) -> bool {
        // SAFETY: a shared read of a `bool` that ends at once; writes to it happen in `apply`
        // (under `read`, see there, or `&mut self`) and `reset` (`&mut self`), never during
        // this call.
        unsafe { (*self.staged.get()).applying }
    }

    /// Replaces the catalog, dropping any staged puts (a rollback, a defrag's switch); returns
    /// the old catalog.
    pub(crate) fn reset(&mut self, catalog: Catalog) -> Catalog {
        let staged = self.staged.get_mut();
        staged.puts.clear();
        staged.keys.clear();
        staged.applying = false;
        std::mem::replace(self.catalog.get_mut(), catalog)
    }
}

/// Inserts the staged puts into the catalog in the order they were made, fetching each run of
/// one bucket's paths together first; leaves none staged.
fn apply(catalog: &mut Catalog, staged: &mut Staged) {
    // Taken out first, so that a panic part way leaves nothing staged to apply twice; the flag
    // stays set then, so that the transaction is rolled back rather than published without
    // the rest (`BatchTx` checks `interrupted`).
    staged.applying = true;
    let mut puts = std::mem::take(&mut staged.puts);
    let mut keys = std::mem::take(&mut staged.keys);
    let mut start = 0; // of the current put's key in `keys`
    for run in puts.chunk_by(|a, b| a.bucket == b.bucket) {
        let bucket = catalog.at_mut(run[0].bucket);
        for group in run.chunks(WARM_GROUP) {
            let mut group_keys: [&[u8]; WARM_GROUP] = [&[]; WARM_GROUP];
            let mut at = start;
            for (slot, put) in group_keys.iter_mut().zip(group) {
                *slot = &keys[at..put.key_end];
                at = put.key_end;
            }
            // One path has nothing to overlap with: its insert's own descent fetches it.
            if group.len() > 1 {
                bucket.warm_paths(&group_keys[..group.len()]);
            }
            for (key, put) in group_keys.iter().zip(group) {
                bucket.put(key, put.value);
                #[cfg(test)]
                tests::on_apply();
            }
            start = at;
        }
    }
    // The buffers go back for the next group.
    puts.clear();
    keys.clear();
    staged.puts = puts;
    staged.keys = keys;
    staged.applying = false;
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;
    use crate::{Backend, Config};

    thread_local! {
        /// Makes the next put applied on this thread panic (see `on_apply`).
        static PANIC_IN_APPLY: Cell<bool> = const { Cell::new(false) };
        /// Runs once, at the next put applied on this thread (see `on_apply`).
        static AT_APPLY: std::cell::RefCell<Option<Box<dyn FnOnce()>>> = const { std::cell::RefCell::new(None) };
    }

    /// Called at each put applied: a panic in the middle of applying staged puts, where an
    /// unknown bug would strike; or a look at the backend from that moment.
    pub(super) fn on_apply() {
        if let Some(f) = AT_APPLY.with(|h| h.borrow_mut().take()) {
            f();
        }
        if PANIC_IN_APPLY.with(|p| p.replace(false)) {
            panic!("injected panic while applying staged puts");
        }
    }

    /// A panic while the staged puts are applied — at the end of the transaction (commit,
    /// finish, drop) or by a read of it whose panic the caller catches before committing —
    /// rolls the transaction back: the next one, on this thread or another, sees none of it,
    /// and the database, live and reopened, holds exactly the transactions that were published.
    /// (Found by review: at the end, the guard was already out of the transaction, so nothing
    /// rolled back, the catalog kept half the puts, and this thread could not write again.)
    #[test]
    fn a_panic_applying_staged_puts_rolls_the_transaction_back() {
        for how in ["commit", "finish", "drop", "caught read then commit"] {
            let dir = tempfile::tempdir().unwrap();
            let open = || Backend::open(Config::new(dir.path())).unwrap();
            let db = with_bucket_b(dir.path());
            let mut tx = db.batch_tx();
            for k in ["k1", "k2", "k3"] {
                tx.put("b", k, "v").unwrap(); // staged
            }
            PANIC_IN_APPLY.with(|p| p.set(true));
            if how == "caught read then commit" {
                assert!(catch_unwind(AssertUnwindSafe(|| tx.get("b", "k3"))).is_err());
                assert!(tx.put("b", "k4", "v").is_err(), "{how}: usable after the panic");
                assert!(tx.commit().is_err(), "{how}: committed");
            } else {
                let r = catch_unwind(AssertUnwindSafe(move || match how {
                    "commit" => tx.commit().unwrap(),
                    "finish" => tx.finish().unwrap(),
                    _ => drop(tx),
                }));
                assert!(r.is_err(), "{how}: no panic");
            }
            PANIC_IN_APPLY.with(|p| p.set(false));
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut tx = db.batch_tx();
                    assert_eq!(tx.get("b", "k1").unwrap(), None, "{how}: the next transaction sees it");
                    tx.put("b", "other", "w").unwrap();
                    tx.commit().unwrap();
                });
            });
            let mut tx = db.batch_tx();
            tx.put("b", "mine", "w").unwrap();
            tx.commit().unwrap();
            assert_eq!(db.read_tx().bucket_len("b").unwrap(), 2, "{how}: published");
            db.close().unwrap();
            assert_eq!(open().read_tx().bucket_len("b").unwrap(), 2, "{how}: after reopen");
        }
    }

    /// A large transaction's `commit` applies its staged puts only after its commit frame is
    /// written (they overlap the fdatasync), so a panic there can no longer roll it back: the
    /// backend refuses writes from then on, readers keep the view from before it, and a
    /// reopen finds the transaction whole, as the log has it.
    #[test]
    fn a_panic_applying_staged_puts_after_the_commit_frame_poisons() {
        let dir = tempfile::tempdir().unwrap();
        let db = with_bucket_b(dir.path());
        let mut tx = db.batch_tx();
        for i in 0..100 {
            tx.put("b", format!("k{i:03}"), "v").unwrap(); // all staged: fewer than STAGE_PUTS
        }
        PANIC_IN_APPLY.with(|p| p.set(true));
        assert!(catch_unwind(AssertUnwindSafe(move || tx.commit())).is_err(), "no panic");
        PANIC_IN_APPLY.with(|p| p.set(false));
        assert_eq!(db.read_tx().bucket_len("b").unwrap(), 0, "readers keep the view before it");
        let mut tx = db.batch_tx();
        assert!(matches!(tx.put("b", "x", "y"), Err(crate::Error::Poisoned { .. })), "writes refused");
        drop(tx);
        drop(db);
        let db = Backend::open(Config::new(dir.path())).unwrap();
        assert_eq!(db.read_tx().bucket_len("b").unwrap(), 100, "reopened: the transaction whole");
    }

    /// While a large commit puts its staged entries into the index (after its commit frame,
    /// with its fdatasync running), no thread sees it written or durable before a new read
    /// transaction shows it: `stats` and a `force_commit` stop at the published view (found by
    /// review: both showed the commit, `force_commit` returning once it was durable, while
    /// `read_tx` did not).
    #[test]
    fn a_large_commit_is_not_reported_written_before_it_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(with_bucket_b(dir.path()));
        let published = db.read_tx().seq();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (db2, seen2) = (db.clone(), seen.clone());
        AT_APPLY.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                // On the committing thread, between the kick of its sync and its publish.
                let s = db2.stats();
                db2.force_commit().unwrap();
                let after = db2.stats();
                *seen2.lock().unwrap() = Some((s.written_seq, s.durable_seq, after.durable_seq, db2.read_tx().seq()));
            }))
        });
        let mut tx = db.batch_tx();
        for i in 0..100 {
            tx.put("b", format!("k{i:03}"), "v").unwrap();
        }
        tx.commit().unwrap();
        let (written, durable, durable_after_force, visible) = seen.lock().unwrap().take().expect("the hook ran");
        assert_eq!(visible, published, "not yet published");
        assert_eq!((written, durable, durable_after_force), (published, published, published));
        let s = db.stats();
        assert_eq!((s.written_seq, s.durable_seq, db.read_tx().seq()), (published + 1, published + 1, published + 1));
        assert_eq!(db.read_tx().bucket_len("b").unwrap(), 100);
    }

    /// A backend in `dir` holding the empty bucket `b`, committed.
    fn with_bucket_b(dir: &std::path::Path) -> Backend {
        let db = Backend::open(Config::new(dir)).unwrap();
        let mut tx = db.batch_tx();
        tx.create_bucket("b").unwrap();
        tx.commit().unwrap();
        db
    }

    fn v(seg: u32, len: u32) -> ValueRef {
        ValueRef { seg, off: 0, len }
    }

    fn catalog() -> TxBuffer {
        let mut c = Catalog::default();
        assert!(c.create(b"a", 1));
        assert!(c.create(b"b", 2));
        TxBuffer::new(c)
    }

    #[test]
    fn staged_puts_are_seen_by_reads_and_writes_in_order() {
        let mut buf = catalog();
        let (a, _) = buf.bucket(b"a").unwrap();
        let (b, id) = buf.bucket(b"b").unwrap();
        assert_eq!(id, 2);
        // Fewer than a group: nothing applied yet, but a read applies them.
        buf.stage_put(a, b"k1", v(1, 10));
        buf.stage_put(b, b"k1", v(2, 20));
        buf.stage_put(a, b"k1", v(3, 30)); // overwrites the first
        let c = buf.read();
        assert_eq!(c.get(b"a").unwrap().get(b"k1"), Some(v(3, 30)));
        assert_eq!(c.get(b"b").unwrap().get(b"k1"), Some(v(2, 20)));
        assert_eq!(c.get(b"a").unwrap().len(), 1);
        // More than a group, across both buckets, with keys of every length up to a long one.
        let mut want = std::collections::BTreeMap::new();
        for i in 0..(3 * WARM_GROUP as u32 + 5) {
            let key = vec![b'x'; (i as usize * 37) % 300 + 1];
            let (bucket, name) = if i % 3 == 0 { (b, b"b") } else { (a, b"a") };
            buf.stage_put(bucket, &key, v(i, i));
            want.insert((name.to_vec(), key), v(i, i));
        }
        let c = buf.write();
        for ((name, key), value) in &want {
            assert_eq!(c.get(name).unwrap().get(key), Some(*value), "{key:?}");
        }
        // A reset drops what is staged.
        buf.stage_put(a, b"dropped", v(9, 9));
        let old = buf.reset(Catalog::default());
        assert!(old.get(b"a").unwrap().get(b"dropped").is_none());
        assert_eq!(buf.read().len(), 0);
    }

    #[test]
    fn live_bytes_match_puts_made_one_by_one() {
        let mut buf = catalog();
        let mut direct = catalog().reset(Catalog::default());
        let (a, _) = buf.bucket(b"a").unwrap();
        for i in 0..100u32 {
            let key = (i % 40).to_be_bytes();
            buf.stage_put(a, &key, v(i, i % 7));
            direct.get_mut(b"a").unwrap().put(&key, v(i, i % 7));
        }
        let staged = buf.read().get(b"a").unwrap();
        let one_by_one = direct.get(b"a").unwrap();
        assert_eq!(staged.live_bytes(), one_by_one.live_bytes());
        assert_eq!(staged.iter().collect::<Vec<_>>(), one_by_one.iter().collect::<Vec<_>>());
    }
}
