//! LMDB through heed: default environment flags (fdatasync at every commit), a 16 GiB map
//! (address space only: the file grows as pages are written).

use std::fs::File;
use std::ops::Bound;
use std::path::Path;

use heed::types::Bytes;
use heed::{CompactionOption, Database, Env, EnvOpenOptions};

use crate::workload::{Engine, KEY_LEN};

const MAP_SIZE: usize = 16 << 30;

pub struct Lmdb {
    /// `None` only while compaction has it closed.
    env: Option<Env>,
    db: Database<Bytes, Bytes>,
}

fn open_env(dir: &Path) -> (Env, Database<Bytes, Bytes>) {
    // SAFETY: heed requires that one directory be opened by one `Env` at a time in a process,
    // and that the files not be changed by others while it is open. This process opens each
    // directory once, and `compact` closes the old `Env` (`prepare_for_closing().wait()`)
    // before it renames the compacted copy over `data.mdb` and opens it again.
    let env = unsafe { EnvOpenOptions::new().map_size(MAP_SIZE).open(dir) }.expect("open lmdb");
    let mut tx = env.write_txn().unwrap();
    let db = env.create_database(&mut tx, None).unwrap();
    tx.commit().unwrap();
    (env, db)
}

impl Lmdb {
    fn env(&self) -> &Env {
        self.env.as_ref().unwrap()
    }
}

impl Engine for Lmdb {
    fn open(dir: &Path) -> Self {
        let (env, db) = open_env(dir);
        Lmdb { env: Some(env), db }
    }

    fn put_tx<'a>(&self, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        let mut tx = self.env().write_txn().unwrap();
        for (k, v) in pairs {
            self.db.put(&mut tx, k, v).unwrap();
        }
        tx.commit().unwrap();
    }

    fn delete_tx<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let mut tx = self.env().write_txn().unwrap();
        for k in keys {
            self.db.delete(&mut tx, k).unwrap();
        }
        tx.commit().unwrap();
    }

    fn get_each<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> u64 {
        let tx = self.env().read_txn().unwrap();
        let mut sum = 0;
        for k in keys {
            sum += self.db.get(&tx, k).unwrap().expect("key present")[0] as u64;
        }
        sum
    }

    fn scan_each(&self, starts: &[[u8; KEY_LEN]], len: usize) -> (u64, u64) {
        let tx = self.env().read_txn().unwrap();
        let (mut count, mut sum) = (0, 0);
        for s in starts {
            let range = (Bound::Included(&s[..]), Bound::Unbounded);
            for item in self.db.range(&tx, &range).unwrap().take(len) {
                let (_, v) = item.unwrap();
                count += 1;
                sum += v[0] as u64;
            }
        }
        (count, sum)
    }

    fn compact(&mut self, dir: &Path) -> Option<&'static str> {
        // LMDB's compacting copy (mdb_env_copy2 with MDB_CP_COMPACT) to a new file, which then
        // replaces the old one; the environment is closed meanwhile and reopened.
        let env = self.env.take().unwrap();
        let tmp = dir.join("data.mdb.compact");
        let mut f = File::create_new(&tmp).unwrap();
        env.copy_to_file(&mut f, CompactionOption::Enabled).unwrap();
        f.sync_all().unwrap();
        drop(f);
        env.prepare_for_closing().wait();
        std::fs::rename(&tmp, dir.join("data.mdb")).unwrap();
        File::open(dir).unwrap().sync_all().unwrap();
        let (env, db) = open_env(dir);
        self.env = Some(env);
        self.db = db;
        Some("copy_to_file(CompactionOption::Enabled) to a new file, renamed over data.mdb")
    }

    fn close(self) {
        self.env.unwrap().prepare_for_closing().wait();
    }
}
