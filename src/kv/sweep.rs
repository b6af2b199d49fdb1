//! Deadlines and the sweeper: the in-memory list of when which key needs attention, and the
//! work done when that time comes (drop an expired value, delete a key at its `delete_at`).
//!
//! The deadlines themselves live in the stored envelopes; the [`Tracker`] is only a schedule,
//! rebuilt from them at open. It may hold an entry too early (the sweeper then reads the record,
//! finds nothing due, and re-schedules it at the record's real deadline) but never too late:
//! writers and the sweeper both merge with the minimum, so whatever order concurrent writes
//! and sweeps reach it in, the entry for a key is at or before its stored record's deadline.
//! Visibility never depends on the sweeper — reads compare deadlines with the clock — so a
//! late or stopped sweeper only delays reclaiming space.

use std::collections::{BTreeSet, HashMap};

use crate::error::Result;
use crate::mvcc::{Compare, CompareOp, KvStore, Op, RangeOptions};

use super::envelope::{self, Header};

/// When each tracked key next needs the sweeper (nanoseconds on the store's clock).
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    by_key: HashMap<Vec<u8>, u64>,
    queue: BTreeSet<(u64, Vec<u8>)>,
}

impl Tracker {
    /// Schedules `key` at `at`, or earlier if it is already scheduled earlier.
    pub fn note(&mut self, key: &[u8], at: u64) {
        match self.by_key.get_mut(key) {
            Some(d) if *d <= at => {}
            Some(d) => {
                self.queue.remove(&(*d, key.to_vec()));
                *d = at;
                self.queue.insert((at, key.to_vec()));
            }
            None => {
                self.by_key.insert(key.to_vec(), at);
                self.queue.insert((at, key.to_vec()));
            }
        }
    }

    /// Removes and returns up to `max` keys due at `now`, earliest first.
    pub fn pop_due(&mut self, now: u64, max: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.queue.first() {
                Some((at, _)) if *at <= now => {}
                _ => break,
            }
            let Some((_, key)) = self.queue.pop_first() else { break };
            self.by_key.remove(&key);
            out.push(key);
        }
        out
    }

    /// Keys scheduled.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The earliest scheduled time.
    pub fn next(&self) -> Option<u64> {
        self.queue.first().map(|(at, _)| *at)
    }
}

/// What a sweep of one batch did.
#[derive(Debug, Default)]
pub(crate) struct BatchOutcome {
    /// Keys deleted.
    pub deleted: usize,
    /// Values dropped (keys kept, marked expired).
    pub expired: usize,
    /// Keys put back in the schedule, with when.
    pub reschedule: Vec<(Vec<u8>, u64)>,
}

/// One change the sweeper wants, valid only while the key's revision is still `rev`.
struct Action {
    key: Vec<u8>,
    rev: i64,
    op: Op,
    /// After the change, schedule the key again at this time (a dropped value's `delete_at`).
    then: Option<u64>,
    delete: bool,
}

/// Handles the keys `due` (popped from the tracker) at `now`: reads each, and applies every
/// change due in one txn whose compares pin each key's revision. If any key changed meanwhile
/// the txn does nothing and the changes are retried one by one (a key that changed is the
/// writer's business now: its write scheduled its own deadline).
pub(crate) fn sweep_keys(kv: &KvStore, due: Vec<Vec<u8>>, now: u64) -> Result<BatchOutcome> {
    let mut out = BatchOutcome::default();
    let mut actions: Vec<Action> = Vec::new();
    for key in due {
        let r = kv.range(&key, b"", RangeOptions::default())?;
        let Some(rec) = r.kvs.into_iter().next() else { continue };
        let h = Header::parse(&rec.value)?;
        if !h.present(|| now) {
            let op = Op::delete_range(&key, b"");
            actions.push(Action { key, rev: rec.mod_revision, op, then: None, delete: true });
        } else if !h.expired && h.expires_at.is_some_and(|t| t <= now) {
            let op = Op::put(&key, &envelope::expired_copy(&rec.value, &h, h.expires_at), rec.lease);
            actions.push(Action { key, rev: rec.mod_revision, op, then: h.delete_at, delete: false });
        } else if let Some(at) = h.next_action() {
            out.reschedule.push((key, at));
        }
    }
    if actions.is_empty() {
        return Ok(out);
    }
    let compares: Vec<Compare> =
        actions.iter().map(|a| Compare::mod_revision(&a.key, CompareOp::Equal, a.rev)).collect();
    let ops: Vec<Op> = actions.iter().map(|a| a.op.clone()).collect();
    let all = kv.txn(&compares, &ops, &[])?.succeeded;
    for (i, a) in actions.into_iter().enumerate() {
        let done = all || kv.txn(&compares[i..=i], &ops[i..=i], &[])?.succeeded;
        if !done {
            continue;
        }
        if a.delete {
            out.deleted += 1;
        } else {
            out.expired += 1;
        }
        if let Some(at) = a.then {
            out.reschedule.push((a.key, at));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_keeps_the_earliest_and_pops_in_order() {
        let mut t = Tracker::default();
        t.note(b"a", 30);
        t.note(b"b", 10);
        t.note(b"a", 50); // later: ignored
        t.note(b"c", 20);
        t.note(b"c", 5); // earlier: moves
        assert_eq!(t.len(), 3);
        assert_eq!(t.next(), Some(5));
        assert_eq!(t.pop_due(25, 10), vec![b"c".to_vec(), b"b".to_vec()]);
        assert_eq!(t.pop_due(100, 10), vec![b"a".to_vec()]);
        assert_eq!(t.len(), 0);
        for i in 0..10u8 {
            t.note(&[i], 1);
        }
        assert_eq!(t.pop_due(1, 4).len(), 4);
        assert_eq!(t.len(), 6);
    }
}
