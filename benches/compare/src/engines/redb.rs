//! redb: one file, one table, `Durability::Immediate` (the default: fsync at commit).

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::CACHE_SIZE;
use crate::workload::{Engine, KEY_LEN};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

pub struct Redb {
    db: Database,
}

impl Engine for Redb {
    fn open(dir: &Path) -> Self {
        let db = Database::builder().set_cache_size(CACHE_SIZE).create(dir.join("db.redb")).expect("open redb");
        let tx = db.begin_write().unwrap();
        tx.open_table(TABLE).unwrap();
        tx.commit().unwrap();
        Redb { db }
    }

    fn put_tx<'a>(&self, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        let tx = self.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for (k, v) in pairs {
                t.insert(k, v).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn delete_tx<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let tx = self.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for k in keys {
                t.remove(k).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn get_each<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> u64 {
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(TABLE).unwrap();
        let mut sum = 0;
        for k in keys {
            // The trait's accessor borrows from the table (no reference count per value).
            let g = ReadableTable::get(&t, k).unwrap().expect("key present");
            sum += g.value()[0] as u64;
        }
        sum
    }

    fn scan_each(&self, starts: &[[u8; KEY_LEN]], len: usize) -> (u64, u64) {
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(TABLE).unwrap();
        let (mut count, mut sum) = (0, 0);
        for s in starts {
            for item in ReadableTable::range(&t, &s[..]..).unwrap().take(len) {
                let (_, v) = item.unwrap();
                count += 1;
                sum += v.value()[0] as u64;
            }
        }
        (count, sum)
    }

    fn compact(&mut self, _dir: &Path) -> Option<&'static str> {
        self.db.compact().unwrap();
        Some("Database::compact() (in place; no transaction may be open)")
    }

    fn close(self) {
        drop(self.db);
    }
}
