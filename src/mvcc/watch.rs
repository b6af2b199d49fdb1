//! Watchers: live events for the ones that keep up, history for the ones that fall behind.
//!
//! A watcher is *synced* while the writer can hand it every event of each new revision: the
//! writer checks that the watcher's bounded channel has room for all of a revision's matching
//! events before sending any, so a revision is never split. If there is no room, the watcher
//! becomes *unsynced* at that revision and the writer moves on — a slow watcher never blocks a
//! writer. The syncer thread then replays it from the `key` bucket, revision by revision, as its
//! channel drains, and marks it synced again once it has caught up with the current revision.
//! Every watcher remembers `next_rev`, the first revision it has not been given, and nothing
//! below it is ever sent again, so the hand-over between the two paths neither loses nor repeats
//! an event. Dropping a [`Watcher`] removes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::kv::WatchEvent;
use crate::error::{Error, Result};

/// Capacity of a watcher's channel: events beyond it wait in the store's history.
pub const WATCH_CHANNEL: usize = 1024;

pub(crate) struct Entry {
    pub key: Vec<u8>,
    pub end: Vec<u8>,
    pub next_rev: i64,
    pub synced: bool,
    /// Events are shared: one allocation per event, however many watchers get it.
    pub tx: Sender<Result<Arc<WatchEvent>>>,
}

impl Entry {
    /// Room in the channel for this many more events.
    pub fn room(&self) -> usize {
        WATCH_CHANNEL.saturating_sub(self.tx.len())
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    pub entries: HashMap<u64, Entry>,
    next_id: u64,
}

/// The watchers of a store, shared with each [`Watcher`] so that dropping one unregisters it.
pub(crate) type Shared = Arc<Mutex<Registry>>;

pub(crate) fn lock(r: &Shared) -> MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    pub fn add(
        &mut self,
        key: Vec<u8>,
        end: Vec<u8>,
        next_rev: i64,
        synced: bool,
    ) -> (u64, Receiver<Result<Arc<WatchEvent>>>) {
        let (tx, rx) = crossbeam_channel::bounded(WATCH_CHANNEL);
        self.next_id += 1;
        self.entries.insert(self.next_id, Entry { key, end, next_rev, synced, tx });
        (self.next_id, rx)
    }

    /// Hands a new revision's events (`(key, event)`) to the synced watchers they match.
    /// Returns true if some watcher fell behind (the syncer has work).
    pub fn notify(&mut self, rev: i64, events: Vec<WatchEvent>) -> bool {
        let events: Vec<Arc<WatchEvent>> = events.into_iter().map(Arc::new).collect();
        let mut fell_behind = false;
        self.entries.retain(|_, w| {
            if !w.synced || rev < w.next_rev {
                return true;
            }
            let matches = |e: &&Arc<WatchEvent>| super::in_range(&e.kv.key, &w.key, &w.end);
            if events.iter().filter(matches).count() > w.room() {
                w.synced = false;
                fell_behind = true;
                return true;
            }
            for e in events.iter().filter(matches) {
                match w.tx.try_send(Ok(e.clone())) {
                    Ok(()) => {}
                    Err(TrySendError::Disconnected(_)) => return false,
                    // Only this thread sends to a synced watcher and the room was checked.
                    Err(TrySendError::Full(_)) => unreachable!("room was checked"),
                }
            }
            w.next_rev = rev + 1;
            true
        });
        fell_behind
    }
}

/// A watch on a key range; see [`crate::mvcc::KvStore::watch`]. Dropping it cancels the watch.
pub struct Watcher {
    pub(crate) id: u64,
    pub(crate) rx: Receiver<Result<Arc<WatchEvent>>>,
    pub(crate) registry: Shared,
}

impl Watcher {
    /// The next event, waiting at most `timeout`: `Ok(None)` if none came. An error means the
    /// watch ended: `Error::Compacted` if the history it needed was compacted away before it
    /// could be delivered, `Error::Closed` if the store was closed.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<WatchEvent>> {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(e)) => Ok(Some(Arc::unwrap_or_clone(e))),
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Closed),
        }
    }

    /// The next event if one is ready.
    pub fn try_recv(&self) -> Result<Option<WatchEvent>> {
        self.recv_timeout(Duration::ZERO)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        lock(&self.registry).entries.remove(&self.id);
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("id", &self.id).finish()
    }
}
