//! The in-memory key index: for each user key, the revisions at which it changed, grouped in
//! generations (etcd's `keyIndex`).
//!
//! A generation runs from a key's creation to its deletion: `created` is its first revision,
//! `revs` every revision that changed it, the last one being the tombstone if the generation
//! ended. The last generation of a key is the open one (empty if the key is deleted now). With
//! this a read at any revision finds, without touching the disk, the revision whose stored
//! value it must return, and the key's version at that point.

use std::collections::HashSet;
use std::ops::Bound;

use std::hash::BuildHasher;

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};
use smallvec::{SmallVec, smallvec};

use super::revision::Revision;
use crate::huge_pages::HugePages;
use crate::index::{BTree, ValueRef};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Generation {
    /// Number of changes in this generation (including ones compacted away).
    ver: i64,
    created: Revision,
    revs: SmallVec<[Revision; 1]>,
}

/// The history of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyIndex {
    /// Inline while there is one (and a generation's revisions while there is one): most keys
    /// never change again after they are written, and a store holds millions of them. Two
    /// `Vec`s cost each new key two allocations — the most expensive of the ten or so a new
    /// key's put made — and about 300 bytes of heap.
    generations: SmallVec<[Generation; 1]>,
    /// While the key is live: what `get` returns at every revision from its last change on —
    /// the common read, at the current revision, then touches no generation (two cache misses
    /// fewer in a large index). `None` while the key is deleted.
    latest: Option<Found>,
    /// Where the latest revision's stored value was written, when this process wrote it: a
    /// read at the current revision then resolves it directly instead of looking the revision
    /// up in the backend's B-tree (several cache misses fewer). Only a hint: a view whose log
    /// no longer has the segment (after a defrag) looks the revision up.
    value: Option<ValueRef>,
}

/// What a key looked like at a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// The revision whose value to read.
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

impl KeyIndex {
    /// Records a put at `rev`.
    pub fn put(&mut self, rev: Revision) {
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let g = self.generations.last_mut().expect("just ensured");
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
        self.latest = Some(Found { modified: rev, created: g.created, version: g.ver });
        self.value = None;
    }

    /// Records a put at `rev` whose stored value was written at `at`.
    pub fn put_at(&mut self, rev: Revision, at: ValueRef) {
        self.put(rev);
        self.value = Some(at);
    }

    /// Where the value of the revision `found` names was written, if known.
    pub fn value_of(&self, found: &Found) -> Option<ValueRef> {
        match self.latest {
            Some(l) if l.modified == found.modified => self.value,
            _ => None,
        }
    }

    /// Records a put found while rebuilding the index from the `key` bucket: after a
    /// compaction a generation's first stored revision need not be its creation, so the
    /// creation and the version come from the stored value (as etcd's `keyIndex.restore`).
    pub fn restore(&mut self, rev: Revision, created: Revision, version: i64) {
        match self.generations.last_mut() {
            Some(g) if !g.revs.is_empty() => {
                g.revs.push(rev);
                g.ver = version;
            }
            _ => {
                if self.generations.is_empty() {
                    self.generations.push(Generation::default());
                }
                let g = self.generations.last_mut().expect("just ensured");
                *g = Generation { ver: version, created, revs: smallvec![rev] };
            }
        }
        let g = self.generations.last().expect("just pushed to");
        self.latest = Some(Found { modified: rev, created: g.created, version: g.ver });
        self.value = None;
    }

    /// Records a deletion at `rev`, ending the current generation. False if the key is not
    /// live (nothing to delete).
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if !self.is_live() {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        self.latest = None;
        self.value = None;
        true
    }

    /// Whether the key exists now.
    pub fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.revs.is_empty())
    }

    /// The key at revision `at` (None if it did not exist then).
    pub fn get(&self, at: i64) -> Option<Found> {
        if let Some(l) = self.latest
            && l.modified.main <= at
        {
            return Some(l);
        }
        let g = self.find_generation(at)?;
        let n = g.revs.iter().rposition(|r| r.main <= at)?;
        Some(Found { modified: g.revs[n], created: g.created, version: g.ver - (g.revs.len() - n - 1) as i64 })
    }

    /// The latest revision below `rev` at which the key changed, and whether that change was a
    /// put (the previous value of a key changed at `rev`).
    pub fn previous(&self, rev: Revision) -> Option<Found> {
        let at = Revision { main: rev.main, sub: rev.sub - 1 };
        for (gi, g) in self.generations.iter().enumerate().rev() {
            if let Some(n) = g.revs.iter().rposition(|r| *r <= at) {
                let ended = gi + 1 < self.generations.len() && n + 1 == g.revs.len();
                if ended {
                    return None; // the change before was a deletion
                }
                return Some(Found {
                    modified: g.revs[n],
                    created: g.created,
                    version: g.ver - (g.revs.len() - n - 1) as i64,
                });
            }
        }
        None
    }

    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let Some(first) = g.revs.first() else { continue };
            if i != last && g.revs.last().is_some_and(|tomb| tomb.main <= at) {
                return None; // deleted at or before `at`
            }
            if first.main <= at {
                return Some(g);
            }
        }
        None
    }

    /// Drops the history a compaction at `at` removes, adding to `keep` the revisions that
    /// must stay in the bucket: for the generation that was current at `at`, its latest
    /// revision ≤ `at`, unless that is a tombstone. Returns false when nothing is left (the key
    /// can leave the index).
    pub fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) -> bool {
        if self.generations.is_empty() {
            return false;
        }
        // The first generation that was still open at `at`, or created after it.
        let mut gi = 0;
        while gi + 1 < self.generations.len() {
            match self.generations[gi].revs.last() {
                Some(tomb) if tomb.main > at => break,
                _ => gi += 1,
            }
        }
        let last = self.generations.len() - 1;
        let g = &mut self.generations[gi];
        if let Some(n) = g.revs.iter().rposition(|r| r.main <= at) {
            keep.insert(g.revs[n]);
            g.revs.drain(..n);
            if g.revs.len() == 1 && gi != last {
                // Only the tombstone is left: the generation ended at or before `at`.
                keep.remove(&g.revs[0]);
                gi += 1;
            }
        }
        self.generations.drain(..gi);
        !(self.generations.len() == 1 && self.generations[0].revs.is_empty())
    }
}

/// All keys' histories: a hash map for lookups of one key, beside the keys in order for ranges.
///
/// Why two structures: puts and single-key reads, the common operations, look up one key, and
/// in an ordered map of a million keys that is twenty-odd comparisons, each reading a key from
/// its own allocation (a cache miss apiece). A hash lookup is one or two misses. The order is
/// kept in the engine's own B-tree (keys packed in wide nodes, the values unused), which inserts
/// a new key several times faster than a `BTreeSet` of boxed keys. Ranges walk it and look each
/// key up in the map.
#[derive(Default)]
pub struct Index {
    /// On huge pages: a random lookup in a large table then misses the cache but not the TLB.
    map: HashTable<Slot, HugePages>,
    hasher: DefaultHashBuilder,
    /// Where one bucket of `map` lies, for finding a key's first bucket before the table's
    /// control bytes say which (see `prefetch_home`); None while the table is empty.
    anchor: Option<Anchor>,
    order: BTree,
    /// How many keys are live now, kept as histories change: a count of the whole store is
    /// then O(1) instead of a walk of every key under the store's read lock (which made a
    /// waiting writer, and every reader behind it, wait for the walk).
    live: usize,
    /// The map's allocation size when it last asked for its next table to be prepared.
    prepared_for: usize,
}

type Slot = (MapKey, KeyIndex);

/// A bucket of the key index's table: its index, its address, and how many buckets the table
/// had then.
#[derive(Clone, Copy)]
struct Anchor {
    buckets: usize,
    index: usize,
    addr: usize,
}

/// A key of the map: short keys live inside the map's slot, longer ones on the heap.
///
/// Why: a lookup compares the key it probes for with the slot's key, and a key behind a
/// pointer is one more cache miss (about a quarter of a random `get` in a million-key store,
/// measured). Most keys are short — kv keys under a namespace, etcd's `/registry/...` paths
/// for the most part — and 30 bytes inline makes the slot only 8 bytes wider than a `Vec`.
/// The table hashes and compares it as the `[u8]` it holds, so it is looked up by `&[u8]`.
#[derive(Clone)]
enum MapKey {
    Inline(u8, [u8; MapKey::INLINE]),
    Heap(Box<[u8]>),
}

impl MapKey {
    const INLINE: usize = 30;
}

impl From<&[u8]> for MapKey {
    fn from(key: &[u8]) -> MapKey {
        if key.len() <= MapKey::INLINE {
            let mut bytes = [0u8; MapKey::INLINE];
            bytes[..key.len()].copy_from_slice(key);
            MapKey::Inline(key.len() as u8, bytes)
        } else {
            MapKey::Heap(key.into())
        }
    }
}

impl std::ops::Deref for MapKey {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            MapKey::Inline(len, bytes) => &bytes[..*len as usize],
            MapKey::Heap(b) => b,
        }
    }
}

/// Whether a key index map of `len` entries in a table of `size` bytes should have the table it
/// will double into prepared (see `huge_pages::prepare`): at three quarters of the 7/8 of its
/// buckets that hashbrown fills — so full, its next growth is a doubling, not a rehash in place.
/// A table is its buckets (an entry and a control byte each) and a group of control bytes, so
/// the doubled one is twice the size, less a group: close enough for whole huge pages.
fn wants_next_table(len: usize, size: usize) -> bool {
    let buckets = size / (SLOT + 1);
    len * 32 >= buckets * 21
}

impl Index {
    pub fn new() -> Index {
        Index::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&KeyIndex> {
        self.get_hashed(key, self.hash(key))
    }

    /// The hash of `key` in this index, for [`get_hashed`](Self::get_hashed) and
    /// [`change_hashed`](Self::change_hashed): a put looks its key up, then changes it.
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// [`get`](Self::get), given the key's [`hash`](Self::hash).
    pub fn get_hashed(&self, key: &[u8], hash: u64) -> Option<&KeyIndex> {
        debug_assert_eq!(hash, self.hash(key));
        self.prefetch_home(hash);
        self.map.find(hash, |(k, _)| **k == *key).map(|(_, ki)| ki)
    }

    /// Asks for the first two buckets a lookup of `hash` probes, before the lookup reads the
    /// control bytes that say which bucket holds the key.
    ///
    /// Why: in a large table the control bytes and the bucket are two cache misses, one after
    /// the other, on the path of every `get`; most keys lie in the bucket where their probe
    /// starts or the next one, so asking for those at once makes the two misses overlap. The
    /// address comes from hashbrown's layout, which puts bucket `i` `i` buckets below bucket 0
    /// (its `Bucket::from_base_index`); were that to change, the hint would name other memory,
    /// which costs nothing but the hint (`prefetch` never faults), and
    /// `home_prefetch_names_the_bucket` would fail.
    #[inline]
    pub fn prefetch_home(&self, hash: u64) {
        if let Some(a) = self.anchor {
            let (start, len) = home_range(a, hash);
            crate::prefetch::prefetch_range(start, len);
        }
    }

    /// Changes the history of `key` (created empty if the key is new) with `f`. The only way
    /// to change one, so that the count of live keys follows.
    pub fn change<R>(&mut self, key: &[u8], f: impl FnOnce(&mut KeyIndex) -> R) -> R {
        self.change_hashed(key, self.hash(key), f)
    }

    /// [`change`](Self::change), given the key's [`hash`](Self::hash).
    pub fn change_hashed<R>(&mut self, key: &[u8], hash: u64, f: impl FnOnce(&mut KeyIndex) -> R) -> R {
        debug_assert_eq!(hash, self.hash(key));
        self.prefetch_home(hash);
        let (len, size) = (self.map.len(), self.map.allocation_size());
        let hasher = &self.hasher;
        let entry = match self.map.entry(hash, |(k, _)| **k == *key, |(k, _)| hasher.hash_one(&**k)) {
            Entry::Occupied(o) => o,
            Entry::Vacant(v) => {
                self.order.insert(key, ValueRef::default());
                if wants_next_table(len + 1, size) && self.prepared_for != size {
                    self.prepared_for = size;
                    crate::huge_pages::prepare(2 * size);
                }
                v.insert((MapKey::from(key), KeyIndex::default()))
            }
        };
        let index = entry.bucket_index();
        let slot = entry.into_mut();
        let addr = std::ptr::from_mut(slot) as usize;
        let ki = &mut slot.1;
        let was_live = ki.is_live();
        let r = f(ki);
        count_change(&mut self.live, was_live, ki.is_live());
        // `entry` makes room for one more key before it looks: the table may have moved even
        // for a key it held.
        self.anchor = Some(Anchor { buckets: self.map.num_buckets(), index, addr });
        r
    }

    /// Sets the history of `key`.
    pub fn insert(&mut self, key: &[u8], ki: KeyIndex) {
        self.change(key, |old| *old = ki);
    }

    /// How many keys are live now.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Keys in `bounds` (the start always included), ascending, with their histories.
    pub fn range<'a>(
        &'a self,
        (start, end): (Bound<&'a [u8]>, Bound<&'a [u8]>),
    ) -> impl Iterator<Item = (&'a [u8], &'a KeyIndex)> + 'a {
        let start = match start {
            Bound::Included(s) => s,
            Bound::Excluded(_) | Bound::Unbounded => &[][..],
        };
        let (stop, last) = match end {
            Bound::Excluded(e) => (Some(e), None),
            Bound::Included(e) => (None, Some(e)),
            Bound::Unbounded => (None, None),
        };
        self.order
            .range(start, stop)
            .take_while(move |(k, _)| last.is_none_or(|l| *k <= l))
            .map(|(k, _)| (k, self.get(k).expect("every key in order is in the map")))
    }

    /// Keeps the keys from `from` on for which `f` returns true, looking at `budget` keys at
    /// most, in key order; returns the first key not looked at, where the next call goes on.
    ///
    /// Why in key order and in pieces: a compaction runs it under the store's write lock, and
    /// over a million keys in one piece that held every reader and writer for half a second.
    /// Between pieces the store changes only by new revisions, which a compaction does not
    /// touch, and new keys; the order of keys is where to go on whatever was inserted.
    pub fn retain_from(
        &mut self,
        from: &[u8],
        budget: usize,
        mut f: impl FnMut(&[u8], &mut KeyIndex) -> bool,
    ) -> Option<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> =
            self.order.range(from, None).take(budget.saturating_add(1)).map(|(k, _)| k.to_vec()).collect();
        let next = if keys.len() > budget { keys.pop() } else { None };
        for k in &keys {
            let hash = self.hash(k);
            let Ok(mut entry) = self.map.find_entry(hash, |(x, _)| **x == *k.as_slice()) else { continue };
            let ki = &mut entry.get_mut().1;
            let was_live = ki.is_live();
            let keep = f(k, ki);
            count_change(&mut self.live, was_live, keep && ki.is_live());
            if !keep {
                entry.remove();
                self.order.remove(k);
            }
        }
        next
    }
}

const SLOT: usize = std::mem::size_of::<Slot>();

/// The memory of the two buckets where a probe for `hash` starts (its start, its length), from
/// the bucket `a`: hashbrown starts at `hash & (buckets - 1)` and keeps bucket `i` `SLOT` bytes
/// below bucket `i - 1`, so the second bucket lies just below the first.
#[inline]
fn home_range(a: Anchor, hash: u64) -> (usize, usize) {
    let home = hash as usize & (a.buckets - 1);
    let first = a.addr.wrapping_add(a.index.wrapping_sub(home).wrapping_mul(SLOT));
    (first.wrapping_sub(SLOT), 2 * SLOT)
}

/// Follows one key going from live (or not) to live (or not) in the count of live keys.
fn count_change(live: &mut usize, was_live: bool, is_live: bool) {
    match (was_live, is_live) {
        (false, true) => *live += 1,
        (true, false) => *live -= 1,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key index asks for its next table before each doubling, and its guess of that
    /// table's size (twice the current one) holds for the hashbrown in use, to the whole huge
    /// page, which is all a prepared block needs: a map that records what it allocates, grown
    /// past a dozen doublings, asked each time for about twice what it had.
    #[test]
    fn each_doubling_asks_for_twice_the_table() {
        use allocator_api2::alloc::{AllocError, Allocator, Global, Layout};
        use std::ptr::NonNull;
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Recording(Arc<Mutex<Vec<usize>>>);
        // SAFETY: every block comes from and goes back to `Global` with the caller's layout.
        unsafe impl Allocator for Recording {
            fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
                self.0.lock().unwrap().push(layout.size());
                Global.allocate(layout)
            }
            unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
                // SAFETY: allocated by `Global` with this layout (the caller's contract).
                unsafe { Global.deallocate(ptr, layout) }
            }
        }

        let huge = crate::huge_pages::HUGE_PAGE;
        let sizes = Recording::default();
        let mut map: HashTable<Slot, Recording> = HashTable::new_in(sizes.clone());
        let hasher = DefaultHashBuilder::default();
        let (mut doublings, mut wanted_for) = (0, 0);
        for i in 0..200_000u64 {
            let size = map.allocation_size();
            if wants_next_table(map.len() + 1, size) {
                wanted_for = size;
            }
            let key = i.to_be_bytes();
            map.insert_unique(hasher.hash_one(&key[..]), (MapKey::from(&key[..]), KeyIndex::default()), |(k, _)| {
                hasher.hash_one(&**k)
            });
            if size > 0 && map.allocation_size() != size {
                assert_eq!(wanted_for, size, "the next table was wanted before the doubling from {size}");
                let asked = *sizes.0.lock().unwrap().last().unwrap();
                assert_eq!(asked, map.allocation_size());
                let guessed = 2 * size;
                assert!(guessed >= asked && guessed - asked <= 64, "from {size}: {guessed} vs {asked}");
                assert_eq!(guessed.next_multiple_of(huge), asked.next_multiple_of(huge), "from {size}");
                doublings += 1;
            }
        }
        assert!(doublings >= 12, "{doublings} doublings");
    }

    /// The address `prefetch_home` asks for is the bucket where a key's probe starts: checked
    /// through the anchor for every key's actual bucket (the layout the hint assumes), and most
    /// keys lie in their first or second bucket (what makes the hint worth asking for).
    #[test]
    fn home_prefetch_names_the_bucket() {
        let mut index = Index::new();
        let n = 50_000u64;
        let mut near = 0;
        for i in 0..n {
            index.change(format!("key{i:08}").as_bytes(), |ki| ki.put(r(i as i64 + 2)));
        }
        let a = index.anchor.expect("an anchor once a key is in");
        assert_eq!(a.buckets, index.map.num_buckets());
        for i in 0..n {
            let key = format!("key{i:08}");
            let hash = index.hash(key.as_bytes());
            let at = index.map.find_bucket_index(hash, |(k, _)| **k == *key.as_bytes()).unwrap();
            let actual = std::ptr::from_ref(index.map.get_bucket(at).unwrap()) as usize;
            assert_eq!(a.addr.wrapping_add(a.index.wrapping_sub(at).wrapping_mul(SLOT)), actual, "bucket {at}");
            let home = hash as usize & (a.buckets - 1);
            // (A probe from the last bucket goes on at bucket 0, which the hint does not reach.)
            if at == home || at == home + 1 {
                near += 1;
                let (start, len) = home_range(a, hash);
                assert!(start <= actual && actual + SLOT <= start + len, "bucket {at} lies in the hint");
            }
        }
        assert!(near * 2 > n, "{near} of {n} keys in their first two buckets");
    }

    /// The anchor follows the table when a change of a key it already holds makes it grow
    /// (hashbrown's `entry` makes room before it looks).
    #[test]
    fn the_anchor_follows_a_growth_on_update() {
        let mut index = Index::new();
        let mut i = 0u64;
        while index.map.len() < index.map.capacity() || index.map.len() < 1000 {
            index.change(&i.to_be_bytes(), |ki| ki.put(r(i as i64 + 2)));
            i += 1;
        }
        let before = index.map.num_buckets();
        let key = 0u64.to_be_bytes();
        index.change(&key, |ki| ki.put(r(i as i64 + 2)));
        assert!(index.map.num_buckets() > before, "the update grew the table");
        let a = index.anchor.expect("an anchor");
        assert_eq!(a.buckets, index.map.num_buckets());
        let at = index.map.find_bucket_index(index.hash(&key), |(k, _)| **k == key).unwrap();
        assert_eq!((a.index, a.addr), (at, std::ptr::from_ref(index.map.get_bucket(at).unwrap()) as usize));
    }

    fn r(main: i64) -> Revision {
        Revision { main, sub: 0 }
    }

    /// etcd's TestKeyIndexGet: generations {2,4,6(t)} {8,10,12(t)} {14,14.1,16(t)} {}.
    fn sample() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        ki.put(r(10));
        assert!(ki.tombstone(r(12)));
        ki.put(r(14));
        ki.put(Revision { main: 14, sub: 1 });
        assert!(ki.tombstone(r(16)));
        ki
    }

    #[test]
    fn get_at_revisions() {
        let ki = sample();
        let at = |rev| ki.get(rev).map(|f| (f.modified, f.created, f.version));
        assert_eq!(at(1), None);
        assert_eq!(at(2), Some((r(2), r(2), 1)));
        assert_eq!(at(5), Some((r(4), r(2), 2)));
        assert_eq!(at(6), None, "deleted at 6");
        assert_eq!(at(7), None);
        assert_eq!(at(9), Some((r(8), r(8), 1)));
        assert_eq!(at(11), Some((r(10), r(8), 2)));
        assert_eq!(at(12), None);
        assert_eq!(at(14), Some((Revision { main: 14, sub: 1 }, r(14), 2)));
        assert_eq!(at(16), None);
        assert_eq!(at(100), None);
        assert!(!ki.is_live());
    }

    #[test]
    fn previous_change() {
        let ki = sample();
        assert_eq!(ki.previous(r(4)).map(|f| f.modified), Some(r(2)));
        assert_eq!(ki.previous(r(8)).map(|f| f.modified), None, "before 8 the key was deleted");
        assert_eq!(ki.previous(Revision { main: 14, sub: 1 }).map(|f| f.modified), Some(r(14)));
        assert_eq!(ki.previous(r(2)), None);
    }

    /// The inline `latest` is only a shortcut: reads at every revision agree with the
    /// generations alone, through random puts, deletes and compactions.
    #[test]
    fn latest_agrees_with_the_generations() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let mut ki = KeyIndex::default();
            let mut rev = 1;
            let mut compacted = 0;
            for _ in 0..30 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                rev += 1;
                match x % 7 {
                    0 | 1 => {
                        ki.tombstone(r(rev));
                    }
                    2 if rev > compacted + 2 => {
                        compacted = rev - 1 - (x % 3) as i64;
                        if !ki.compact(compacted, &mut HashSet::new()) {
                            ki = KeyIndex::default();
                        }
                    }
                    _ => ki.put(r(rev)),
                }
                let slow = KeyIndex { latest: None, value: None, ..ki.clone() };
                for at in compacted.max(1)..=rev + 1 {
                    assert_eq!(ki.get(at), slow.get(at), "at {at} of {ki:?}");
                }
            }
        }
    }

    /// Keys inline and on the heap (the boundary is 30 bytes) are found by their bytes alone,
    /// keys that are prefixes of one another stay apart, and the order holds them all.
    #[test]
    fn map_keys_of_every_length() {
        let mut index = Index::new();
        let key = |len: usize| (0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>();
        for len in 0..=70 {
            index.change(&key(len), |ki| ki.put(r(len as i64 + 2)));
        }
        for len in 0..=70 {
            let ki = index.get(&key(len)).unwrap_or_else(|| panic!("key of {len} bytes"));
            assert_eq!(ki.get(100).map(|f| f.modified), Some(r(len as i64 + 2)));
        }
        assert!(index.get(&[key(30).as_slice(), &[0]].concat()).is_none());
        let all: Vec<usize> = index.range((Bound::Included(&[][..]), Bound::Unbounded)).map(|(k, _)| k.len()).collect();
        assert_eq!(all, (0..=70).collect::<Vec<_>>(), "every key is a prefix of the next");
        assert_eq!(index.retain_from(&key(29), 2, |k, _| k.len() != 30), Some(key(31)));
        assert_eq!(index.retain_from(&[], usize::MAX, |_, _| true), None);
        assert!(index.get(&key(30)).is_none() && index.get(&key(31)).is_some());
        assert_eq!(index.range((Bound::Included(&[][..]), Bound::Unbounded)).count(), 70);
    }

    /// The count of live keys follows every kind of change against a recount of the histories:
    /// puts, deletes, re-creations, histories set whole, compactions that drop keys.
    #[test]
    fn live_count_follows_every_change() {
        let mut index = Index::new();
        let recount = |index: &Index| {
            index.range((Bound::Included(&[][..]), Bound::Unbounded)).filter(|(_, ki)| ki.is_live()).count()
        };
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for rev in 2..3000i64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = [(x % 40) as u8];
            match (x >> 8) % 10 {
                0..=4 => index.change(&key, |ki| ki.put(r(rev))),
                5..=7 => {
                    index.change(&key, |ki| ki.tombstone(r(rev)));
                }
                8 => {
                    let mut ki = KeyIndex::default();
                    if x.is_multiple_of(2) {
                        ki.put(r(rev));
                    }
                    index.insert(&key, ki);
                }
                _ => {
                    // In pieces of 7 keys, as an online compaction goes.
                    let mut from = Some(Vec::new());
                    while let Some(f) = from {
                        from = index.retain_from(&f, 7, |_, ki| ki.compact(rev - 5, &mut HashSet::new()));
                    }
                }
            }
            assert_eq!(index.live(), recount(&index), "after revision {rev}");
        }
        assert!(index.live() > 0);
    }

    /// etcd's TestKeyIndexCompactAndKeep, in part.
    #[test]
    fn compaction_keeps_the_latest_non_tombstone() {
        let mut keep = HashSet::new();
        let mut ki = sample();
        assert!(ki.compact(5, &mut keep));
        assert_eq!(keep, HashSet::from([r(4)]));
        assert_eq!(ki.get(5).map(|f| f.modified), Some(r(4)));
        assert_eq!(ki.get(4).map(|f| f.version), Some(2), "versions survive compaction");

        let mut keep = HashSet::new();
        let mut ki = sample();
        assert!(ki.compact(6, &mut keep));
        assert!(keep.is_empty(), "the generation ended at 6: nothing to keep");
        assert_eq!(ki.get(9).map(|f| f.modified), Some(r(8)));

        let mut keep = HashSet::new();
        let mut ki = sample();
        assert!(ki.compact(15, &mut keep));
        assert_eq!(keep, HashSet::from([Revision { main: 14, sub: 1 }]));

        let mut keep = HashSet::new();
        let mut ki = sample();
        assert!(!ki.compact(16, &mut keep), "deleted at 16: the key leaves the index");
        assert!(keep.is_empty());
    }
}
