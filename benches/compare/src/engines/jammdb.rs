//! jammdb, the Rust port of bbolt (BoltDB, the B+tree under etcd's backend): one file, one
//! bucket; `Tx::commit` writes the dirty pages and the meta page, then fsyncs.

use std::path::{Path, PathBuf};

use jammdb::DB;

use crate::workload::{Engine, KEY_LEN};

const BUCKET: &str = "kv";

pub struct Jammdb {
    db: DB,
}

fn file(dir: &Path) -> PathBuf {
    dir.join("db.jammdb")
}

impl Engine for Jammdb {
    /// Like bbolt, jammdb splits nodes only when a transaction commits, so one transaction of
    /// random inserts into an empty bucket grows a single leaf and every insert moves half of it:
    /// 200,000 pairs took 83 s here, 1,000,000 would take over half an hour. It loads in
    /// commits of 10,000 pairs, etcd's batch limit.
    const BULK_TX_LIMIT: Option<usize> = Some(10_000);

    fn open(dir: &Path) -> Self {
        let db = DB::open(file(dir)).expect("open jammdb");
        let tx = db.tx(true).unwrap();
        tx.get_or_create_bucket(BUCKET).unwrap();
        tx.commit().unwrap();
        Jammdb { db }
    }

    fn put_tx<'a>(&self, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        let tx = self.db.tx(true).unwrap();
        {
            let b = tx.get_bucket(BUCKET).unwrap();
            for (k, v) in pairs {
                b.put(k, v).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn delete_tx<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let tx = self.db.tx(true).unwrap();
        {
            let b = tx.get_bucket(BUCKET).unwrap();
            for k in keys {
                b.delete(k).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn get_each<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> u64 {
        let tx = self.db.tx(false).unwrap();
        let b = tx.get_bucket(BUCKET).unwrap();
        let mut sum = 0;
        for k in keys {
            let d = b.get(k).expect("key present");
            sum += d.kv().value()[0] as u64;
        }
        sum
    }

    fn scan_each(&self, starts: &[[u8; KEY_LEN]], len: usize) -> (u64, u64) {
        let tx = self.db.tx(false).unwrap();
        let b = tx.get_bucket(BUCKET).unwrap();
        let (mut count, mut sum) = (0, 0);
        for s in starts {
            for d in b.range(&s[..]..).take(len) {
                count += 1;
                sum += d.kv().value()[0] as u64;
            }
        }
        (count, sum)
    }

    fn compact(&mut self, dir: &Path) -> Option<&'static str> {
        // jammdb has no compaction; bbolt's `compact` command and etcd's defrag copy every
        // pair into a new file, which replaces the old one. The same here.
        let tmp = dir.join("db.jammdb.compact");
        {
            let new = DB::open(&tmp).unwrap();
            let wtx = new.tx(true).unwrap();
            {
                let nb = wtx.create_bucket(BUCKET).unwrap();
                let rtx = self.db.tx(false).unwrap();
                let b = rtx.get_bucket(BUCKET).unwrap();
                for kv in b.kv_pairs() {
                    nb.put(kv.key().to_vec(), kv.value().to_vec()).unwrap();
                }
            }
            wtx.commit().unwrap();
        }
        std::fs::rename(&tmp, file(dir)).unwrap();
        std::fs::File::open(dir).unwrap().sync_all().unwrap();
        self.db = DB::open(file(dir)).unwrap();
        Some("copy of every pair into a new file, renamed over the old (what bbolt compact and etcd's defrag do)")
    }

    fn close(self) {
        drop(self.db);
    }
}
