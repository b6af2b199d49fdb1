//! sled 0.34: the default tree; every write is one `Batch` applied atomically, then `flush()`
//! (sled's way to make writes durable: it fsyncs).

use std::path::Path;

use sled::{Batch, Db};

use super::CACHE_SIZE;
use crate::workload::{Engine, KEY_LEN};

pub struct Sled {
    db: Db,
}

impl Engine for Sled {
    fn open(dir: &Path) -> Self {
        let db = sled::Config::new().path(dir).cache_capacity(CACHE_SIZE as u64).open().expect("open sled");
        Sled { db }
    }

    fn put_tx<'a>(&self, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        let mut b = Batch::default();
        for (k, v) in pairs {
            b.insert(k, v);
        }
        self.db.apply_batch(b).unwrap();
        self.db.flush().unwrap();
    }

    fn delete_tx<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let mut b = Batch::default();
        for k in keys {
            b.remove(k);
        }
        self.db.apply_batch(b).unwrap();
        self.db.flush().unwrap();
    }

    fn get_each<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> u64 {
        let mut sum = 0;
        for k in keys {
            sum += self.db.get(k).unwrap().expect("key present")[0] as u64;
        }
        sum
    }

    fn scan_each(&self, starts: &[[u8; KEY_LEN]], len: usize) -> (u64, u64) {
        let (mut count, mut sum) = (0, 0);
        for s in starts {
            for item in self.db.range(&s[..]..).take(len) {
                let (_, v) = item.unwrap();
                count += 1;
                sum += v[0] as u64;
            }
        }
        (count, sum)
    }

    fn compact(&mut self, _dir: &Path) -> Option<&'static str> {
        None // sled 0.34 has no compaction call (its segment cleaner runs in the background)
    }

    fn close(self) {
        self.db.flush().unwrap();
        drop(self.db);
    }
}
