//! fjall: one keyspace; every write is a `WriteBatch` committed with
//! `PersistMode::SyncAll` (fsync of the journal, as redb's benchmark persists fjall).

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

use super::CACHE_SIZE;
use crate::workload::{Engine, KEY_LEN};

pub struct Fjall {
    db: Database,
    ks: Keyspace,
}

impl Engine for Fjall {
    fn open(dir: &Path) -> Self {
        let db = Database::builder(dir).cache_size(CACHE_SIZE as u64).open().expect("open fjall");
        let ks = db.keyspace("kv", KeyspaceCreateOptions::default).unwrap();
        Fjall { db, ks }
    }

    fn put_tx<'a>(&self, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
        for (k, v) in pairs {
            b.insert(&self.ks, k, v);
        }
        b.commit().unwrap();
    }

    fn delete_tx<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
        for k in keys {
            b.remove(&self.ks, k);
        }
        b.commit().unwrap();
    }

    fn get_each<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> u64 {
        let snap = self.db.snapshot();
        let mut sum = 0;
        for k in keys {
            sum += snap.get(&self.ks, k).unwrap().expect("key present")[0] as u64;
        }
        sum
    }

    fn scan_each(&self, starts: &[[u8; KEY_LEN]], len: usize) -> (u64, u64) {
        let snap = self.db.snapshot();
        let (mut count, mut sum) = (0, 0);
        for s in starts {
            for g in snap.range(&self.ks, &s[..]..).take(len) {
                let (_, v) = g.into_inner().unwrap();
                count += 1;
                sum += v[0] as u64;
            }
        }
        (count, sum)
    }

    fn compact(&mut self, _dir: &Path) -> Option<&'static str> {
        self.ks.rotate_memtable_and_wait().unwrap();
        self.ks.major_compact().unwrap();
        self.db.persist(PersistMode::SyncAll).unwrap();
        Some("Keyspace::rotate_memtable_and_wait() then major_compact()")
    }

    fn close(self) {
        self.db.persist(PersistMode::SyncAll).unwrap();
        drop(self.ks);
        drop(self.db);
    }
}
