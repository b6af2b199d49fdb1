//! logtree: `Backend` with one bucket, default `Config` (fdatasync at every commit). Writes are
//! one `BatchTx` ended by `commit()`, which returns once durable; reads are one `ReadTx` per
//! thread with `get_ref` (a slice of the memory-mapped log, no copy).

use std::path::Path;

use logtree::{Backend, Config};

use crate::workload::{Engine, KEY_LEN};

const BUCKET: &[u8] = b"kv";

pub struct Logtree {
    db: Backend,
}

impl Engine for Logtree {
    fn open(dir: &Path) -> Self {
        let db = Backend::open(Config::new(dir)).expect("open logtree");
        if !db.read_tx().has_bucket(BUCKET) {
            let mut tx = db.batch_tx();
            tx.create_bucket(BUCKET).unwrap();
            tx.commit().unwrap();
        }
        Logtree { db }
    }

    fn put_tx<'a>(&self, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        let mut tx = self.db.batch_tx();
        for (k, v) in pairs {
            tx.put(BUCKET, k, v).unwrap();
        }
        tx.commit().unwrap();
    }

    fn delete_tx<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let mut tx = self.db.batch_tx();
        for k in keys {
            tx.delete(BUCKET, k).unwrap();
        }
        tx.commit().unwrap();
    }

    fn get_each<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> u64 {
        let rtx = self.db.read_tx();
        let mut sum = 0;
        for k in keys {
            sum += rtx.get_ref(BUCKET, k).unwrap().expect("key present")[0] as u64;
        }
        sum
    }

    fn scan_each(&self, starts: &[[u8; KEY_LEN]], len: usize) -> (u64, u64) {
        let rtx = self.db.read_tx();
        let (mut count, mut sum) = (0, 0);
        for s in starts {
            for item in rtx.scan(BUCKET, s, None).unwrap().take(len) {
                let (_, v) = item.unwrap();
                count += 1;
                sum += v[0] as u64;
            }
        }
        (count, sum)
    }

    fn compact(&mut self, _dir: &Path) -> Option<&'static str> {
        self.db.defrag().unwrap();
        Some("Backend::defrag() (online: copies the live records to new segments)")
    }

    fn close(self) {
        self.db.close().unwrap();
    }
}
