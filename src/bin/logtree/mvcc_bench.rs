//! The MVCC workloads of `logtree bench`, modelled on etcd's benchmark tool (`tools/benchmark`:
//! `put`, `range`, `txn-put`, `watch` and `watch-latency`), run in-process on
//! `logtree::mvcc::KvStore`. There is no network, gRPC or Raft log in front, so what they
//! measure is the MVCC layer and the engine under it — the floor under a server built on them.
//!
//! Every phase works on the keys `mvcc-load` puts first (the same keys as the engine's
//! workloads: a key's number is all a thread needs to find it again). Each put is one revision
//! and one `BatchTx` ended without waiting for durability, so the group committer (batch
//! interval and limit) makes it durable — etcd's default batching.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use logtree::mvcc::{Compare, CompareOp, KvStore, Op, OpResponse, RangeOptions, WatchOptions, Watcher};
use logtree::{Backend, Config};
use serde::Serialize;

use crate::bench::{
    Bench, BenchArgs, Ctl, Ctx, Latency, OpReport, PhaseReport, Rng, Role, Sample, TxnCompare, Workload, fill_key,
};
use crate::inspect::progress_bar;
use crate::util::{CliError, CliResult, Out, grouped, human_duration, human_ns};

/// The goal for a single-key range (the MVCC issue): under 2 µs.
const RANGE_GOAL_NS: u64 = 2_000;
/// The goal for puts from one writer with default batching (the MVCC issue).
const PUT_GOAL_PER_SEC: f64 = 200_000.0;
/// The goal for watch: puts with the watchers at least 80% as fast as without.
const WATCH_GOAL_RATIO: f64 = 0.8;
/// The goal for opening a store of [`REOPEN_GOAL_REVISIONS`] revisions (the MVCC issue): under 1 s.
const REOPEN_GOAL: Duration = Duration::from_secs(1);
/// How many revisions the reopen goal is for.
const REOPEN_GOAL_REVISIONS: i64 = 1_000_000;
/// How long watchers may take, after the writer stops, to receive the last event before the
/// phase fails. Watchers that fell behind catch up from the store's history; this bounds that.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// How long a watcher's thread waits for an event before it looks again at whether the stream
/// has ended.
const RECV_POLL: Duration = Duration::from_millis(20);
/// A txn-put whose compare fails this many times in a row is a bug, not contention: another
/// writer must have put the key that often in between.
const MAX_TXN_ATTEMPTS: u32 = 1000;
/// Delivery latency is recorded for the revisions that are multiples of this: a uniform sample,
/// the same for every watcher, of about 5,000 revisions a second at full speed (half a million
/// delays a second over 100 watchers). Recording all of them (tens of millions of histogram
/// updates) took more of the 2-core test machine's CPU than the watchers' own work, and even
/// one in 8 was 5% of the phase's CPU (100 histograms do not stay in cache), slowing the
/// writer that the phase measures.
const LATENCY_SAMPLE: i64 = 64;
/// The slots of put return times kept for the watch phase at most (8 bytes each).
const MAX_STAMPS: u64 = 64 << 20;

/// What mvcc-txn-put measured beyond its latencies.
#[derive(Serialize)]
pub struct TxnReport {
    /// What each txn compared.
    pub compare: TxnCompare,
    /// Txns whose compare failed (another writer put the key after its revision was read);
    /// each was retried after reading the key, and the retries are in the txn's latency.
    pub failed_compares: u64,
}

/// What mvcc-reopen opened, and how long its parts took.
#[derive(Serialize)]
pub struct ReopenReport {
    /// Revisions in the store (its current revision less the 1 of a fresh store).
    pub revisions: i64,
    /// `Backend::open`: the log's recovery and the engine's index.
    pub backend_open_ns: u64,
    /// `KvStore::open` after it: the key index rebuilt from the `key` bucket.
    pub key_index_ns: u64,
}

/// What mvcc-watch measured beyond its latencies.
#[derive(Serialize)]
pub struct WatchReport {
    pub watchers: u64,
    /// One writer's puts per second with no watcher registered.
    pub puts_per_sec_without: f64,
    /// The same writer's puts per second with every watcher registered and receiving.
    pub puts_per_sec_with: f64,
    /// `puts_per_sec_with / puts_per_sec_without`: 1 is no slowdown; the goal is ≥ 0.8.
    pub throughput_ratio: f64,
    /// Revisions written while watched: each watcher should receive each one once.
    pub revisions: u64,
    pub events_expected: u64,
    pub events_received: u64,
    /// Events that were not the next revision the watcher expected (lost, repeated or out of
    /// order): 0 unless the watch is broken.
    pub events_out_of_order: u64,
    /// Events whose previous value was missing though asked for (every put overwrites a loaded
    /// key), or present though not: 0 unless the watch is broken.
    pub events_wrong_prev: u64,
    /// Whether every watcher received every revision, exactly once and in order.
    pub all_delivered: bool,
    /// Events taken from the channel before their put had returned to the writer (the store
    /// notifies inside the txn); they count as 0 in the delivery latency.
    pub events_before_put_returned: u64,
    /// From the writer's last put to the last watcher's last event: how far behind the
    /// watchers were.
    pub drain_ns: u64,
    /// From the put's return to the event's receipt by a watcher's thread, for every
    /// `LATENCY_SAMPLE`th (64th) revision.
    pub delivery: Latency,
}

/// What the MVCC phases share.
#[derive(Clone, Copy)]
struct Mvcc<'a> {
    c: Ctx<'a>,
    store: &'a KvStore,
    /// Each key's highest revision a put returned or a read saw: the revision mvcc-txn-put
    /// compares with (etcd's txn-put keeps the same table).
    revs: &'a [AtomicI64],
}

/// Runs `mvcc-load`, then the MVCC phases `--workload` selects, on a store in `db`.
pub fn run(b: &mut Bench<'_>, db: &Arc<Backend>) -> CliResult<()> {
    let args = b.ctx.args;
    let store = KvStore::open(db.clone())?;
    let revs: Vec<AtomicI64> = (0..args.keys()).map(|_| AtomicI64::new(0)).collect();
    let m = Mvcc { c: b.ctx, store: &store, revs: &revs };
    load(b, m)?;
    let w = args.workload;
    if w.runs(Workload::MvccPut) {
        put(b, m)?;
    }
    if w.runs(Workload::MvccRange) {
        range(b, m)?;
    }
    if w.runs(Workload::MvccTxnPut) {
        txn_put(b, m)?;
    }
    if w.runs(Workload::MvccWatch) {
        watch(b, m)?;
    }
    if w.runs(Workload::MvccLongRange) {
        long_range(b, m)?;
    }
    Ok(())
}

/// The settings only the MVCC workloads have, under the header.
pub fn describe(out: &mut Out, args: &BenchArgs) -> CliResult<()> {
    let w = args.workload;
    let mut parts = vec!["MVCC store: each put one revision, one BatchTx, group-committed".to_string()];
    if w.runs(Workload::MvccTxnPut) {
        let cmp = match args.txn_compare {
            TxnCompare::ModRevision => "mod_revision",
            TxnCompare::NoCompare => "nothing",
        };
        parts.push(format!("txn-put compares {cmp}"));
    }
    if w.runs(Workload::MvccWatch) {
        parts.push(format!(
            "{} watchers{} on {} receiving threads",
            grouped(args.watchers),
            if args.watch_prev_kv { " with previous values" } else { "" },
            grouped(args.watch_streams())
        ));
    }
    writeln!(out, "  {}", parts.join("; "))?;
    Ok(())
}

/// The lines under the table for the MVCC phases: the goals and the watch's deliveries.
pub fn summary(out: &mut Out, phases: &[PhaseReport], writers: u64) -> CliResult<()> {
    let op =
        |phase: &str, op: &str| phases.iter().find(|p| p.name == phase).and_then(|p| p.ops.iter().find(|o| o.op == op));
    if let Some(put) = op("mvcc-put", "put") {
        let per_sec = put.per_sec.unwrap_or(0.0);
        let goal = if writers != 1 {
            "the goal is for one writer (--writers 1)"
        } else if per_sec >= PUT_GOAL_PER_SEC {
            "met"
        } else {
            "NOT met"
        };
        writeln!(
            out,
            "mvcc-put: {} puts/s from {}, p50 {}, p99 {}; goal ≥ {} puts/s from one writer: {goal}",
            grouped(per_sec.round() as u64),
            if writers == 1 { "1 writer".to_string() } else { format!("{writers} writers") },
            human_ns(put.latency.p50_ns),
            human_ns(put.latency.p99_ns),
            grouped(PUT_GOAL_PER_SEC as u64),
        )?;
    }
    if let Some(r) = op("mvcc-range", "range") {
        let l = &r.latency;
        writeln!(
            out,
            "mvcc-range: single-key range p50 {}, mean {}, p99 {}; goal < {} (p50): {}",
            human_ns(l.p50_ns),
            human_ns(l.mean_ns.round() as u64),
            human_ns(l.p99_ns),
            human_ns(RANGE_GOAL_NS),
            if l.p50_ns < RANGE_GOAL_NS { "met" } else { "NOT met" },
        )?;
    }
    if let Some(t) = phases.iter().find_map(|p| p.txn.as_ref()) {
        let cmp = match t.compare {
            TxnCompare::ModRevision => "on mod_revision",
            TxnCompare::NoCompare => "none",
        };
        let txns = op("mvcc-txn-put", "txn").map_or(0, |o| o.count);
        writeln!(out, "mvcc-txn-put: compare {cmp}; {} of {} txns retried", grouped(t.failed_compares), grouped(txns))?;
    }
    if let Some(r) = phases.iter().find_map(|p| p.reopen.as_ref()) {
        let total = Duration::from_nanos(r.backend_open_ns + r.key_index_ns);
        let goal = if r.revisions < REOPEN_GOAL_REVISIONS {
            format!(
                "the goal is for {} revisions (--ops 900000 over 100,000 keys)",
                grouped(REOPEN_GOAL_REVISIONS as u64)
            )
        } else if total < REOPEN_GOAL {
            "met".to_string()
        } else {
            "NOT met".to_string()
        };
        writeln!(
            out,
            "mvcc-reopen: {} revisions opened in {} (backend {}, key index {}); goal < {} for {} revisions: {goal}",
            grouped(r.revisions.max(0) as u64),
            human_duration(total),
            human_ns(r.backend_open_ns),
            human_ns(r.key_index_ns),
            human_duration(REOPEN_GOAL),
            grouped(REOPEN_GOAL_REVISIONS as u64),
        )?;
    }
    if let Some(w) = phases.iter().find_map(|p| p.watch.as_ref()) {
        writeln!(
            out,
            "mvcc-watch: puts/s {} without watchers, {} with {}: ratio {:.2} ({:.0}% slower); goal ≥ {WATCH_GOAL_RATIO:.2}: {}",
            grouped(w.puts_per_sec_without.round() as u64),
            grouped(w.puts_per_sec_with.round() as u64),
            grouped(w.watchers),
            w.throughput_ratio,
            (1.0 - w.throughput_ratio) * 100.0,
            if w.throughput_ratio >= WATCH_GOAL_RATIO { "met" } else { "NOT met" },
        )?;
        writeln!(
            out,
            "mvcc-watch: delivery from put return (every {LATENCY_SAMPLE}th revision) p50 {}, p99 {}, max {}; {} of {} events ({} revisions × {} watchers), {}; drained {} after the last put",
            human_ns(w.delivery.p50_ns),
            human_ns(w.delivery.p99_ns),
            human_ns(w.delivery.max_ns),
            grouped(w.events_received),
            grouped(w.events_expected),
            grouped(w.revisions),
            grouped(w.watchers),
            if w.all_delivered { "every watcher got every event in order" } else { "EVENTS MISSING" },
            human_ns(w.drain_ns),
        )?;
    }
    Ok(())
}

impl<'a> Mvcc<'a> {
    /// Records that a put or a read saw revision `rev` of key number `i`. `fetch_max`, because
    /// two writers of the same key may report their revisions in either order.
    fn saw(self, i: u64, rev: i64) {
        self.revs[i as usize].fetch_max(rev, Ordering::Relaxed);
    }

    /// The body of a writer: puts of random existing keys. With `stamps`, it records when each
    /// put returned, for the watchers' delivery latency.
    fn putter(
        self,
        salt: u64,
        generation: u8,
        stamps: Option<&'a Stamps>,
    ) -> impl Fn(u64, &Ctl<'_>) -> CliResult<Sample> + Sync + 'a {
        let value = self.c.value(generation);
        move |t, ctl| {
            self.random_keys(salt, t, ctl, |i, key| {
                let t0 = Instant::now();
                let rev = self.store.put(key, &value, 0)?;
                let returned = Instant::now();
                if let Some(st) = stamps {
                    st.mark(rev, returned);
                }
                self.saw(i, rev);
                Ok(returned - t0)
            })
        }
    }

    /// Thread `t`'s loop in a timed phase: random existing keys (by number, from a generator
    /// seeded with `salt` and `t`) until the phase ends; `op` runs on each and returns the time
    /// to record.
    fn random_keys(
        self,
        salt: u64,
        t: u64,
        ctl: &Ctl<'_>,
        mut op: impl FnMut(u64, &[u8]) -> CliResult<Duration>,
    ) -> CliResult<Sample> {
        let mut rng = Rng::new(salt ^ (t + 1));
        let mut key = self.c.key_buf();
        let mut s = Sample::new()?;
        while ctl.more(s.ops) {
            let i = rng.below(self.c.args.keys());
            fill_key(i, &mut key);
            s.record(op(i, &key)?);
        }
        Ok(s)
    }

    /// The body of a range reader: a single-key range of a random existing key (etcd's range
    /// benchmark with `--consistency s`: here every read is local, as a serializable one).
    fn ranger(self, salt: u64) -> impl Fn(u64, &Ctl<'_>) -> CliResult<Sample> + Sync + 'a {
        move |t, ctl| {
            self.random_keys(salt, t, ctl, |i, key| {
                let t0 = Instant::now();
                let r = self.store.range(key, &[], RangeOptions::default())?;
                let took = t0.elapsed();
                if r.kvs.len() != 1 || r.kvs[0].key != key {
                    return Err(CliError::new(format!(
                        "a range of key number {i} returned {} keys after the load (an engine bug?)",
                        r.kvs.len()
                    )));
                }
                Ok(took)
            })
        }
    }

    /// The body of a txn writer: a txn of one put of a random existing key, compared as
    /// `--txn-compare` says. A failed compare (another writer put the key since its revision
    /// was seen) is retried with the revision the failure branch read, as etcd's txn-put does;
    /// the latency is the whole exchange.
    fn txn_putter(self, salt: u64, failed: &'a AtomicU64) -> impl Fn(u64, &Ctl<'_>) -> CliResult<Sample> + Sync + 'a {
        let value = self.c.value(4);
        let compare = self.c.args.txn_compare;
        move |t, ctl| {
            self.random_keys(salt, t, ctl, |i, key| {
                // Built before the clock starts, as etcd's tool builds requests apart from
                // sending them.
                let put = [Op::put(key, &value, 0)];
                let read = [Op::range(key, &[], RangeOptions::default())];
                let t0 = Instant::now();
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let r = match compare {
                        TxnCompare::NoCompare => self.store.txn(&[], &put, &[])?,
                        TxnCompare::ModRevision => {
                            let seen = self.revs[i as usize].load(Ordering::Relaxed);
                            self.store.txn(&[Compare::mod_revision(key, CompareOp::Equal, seen)], &put, &read)?
                        }
                    };
                    if r.succeeded {
                        self.saw(i, r.revision);
                        break;
                    }
                    failed.fetch_add(1, Ordering::Relaxed);
                    let now = match r.responses.first() {
                        Some(OpResponse::Range(rr)) => rr.kvs.first().map_or(0, |kv| kv.mod_revision),
                        other => return Err(CliError::new(format!("a txn's failure branch returned {other:?}"))),
                    };
                    self.saw(i, now);
                    if attempts >= MAX_TXN_ATTEMPTS {
                        return Err(CliError::new(format!(
                            "the mod_revision compare of key number {i} failed {attempts} times in a row (an engine bug?)"
                        )));
                    }
                }
                Ok(t0.elapsed())
            })
        }
    }
}

/// mvcc-reopen, after the other phases closed the database: opens it again with `config`, as
/// a restarting server would (the backend, then the store's key index), times both, and closes
/// it. Returns `phases` with its own added.
pub fn reopen(
    out: &mut Out,
    args: &BenchArgs,
    config: Config,
    phases: Vec<PhaseReport>,
) -> CliResult<Vec<PhaseReport>> {
    let started = Instant::now();
    let db = Arc::new(Backend::open(config)?);
    let backend_open = started.elapsed();
    let store = KvStore::open(db.clone())?;
    let elapsed = started.elapsed();
    let report = ReopenReport {
        revisions: store.current_revision() - 1,
        backend_open_ns: ns(backend_open),
        key_index_ns: ns(elapsed - backend_open),
    };
    let mut b = Bench::new(&db, args, out, phases);
    let (mut open, mut backend) = (Sample::new()?, Sample::new()?);
    open.record(elapsed);
    backend.record(backend_open);
    let ops = vec![
        open.report("open", "open (backend, key index)".into(), None, elapsed),
        backend.report("backend_open", "backend open".into(), None, backend_open),
    ];
    b.finish("mvcc-reopen", elapsed, ops)?;
    if let Some(p) = b.phases.last_mut() {
        p.reopen = Some(report);
    }
    let phases = std::mem::take(&mut b.phases);
    drop(store);
    let db =
        Arc::try_unwrap(db).map_err(|_| CliError::new("the reopened database is still in use (a bug in the tool)"))?;
    db.close()?;
    Ok(phases)
}

/// Puts every key once, in key-number order (random places in the key space), from one thread,
/// then `force_commit`.
fn load(b: &mut Bench<'_>, m: Mvcc<'_>) -> CliResult<()> {
    let n = m.c.args.keys();
    let value = m.c.value(0);
    let mut key = m.c.key_buf();
    let mut puts = Sample::new()?;
    let pb = progress_bar(n, "mvcc-load");
    let started = Instant::now();
    for i in 0..n {
        fill_key(i, &mut key);
        let t = Instant::now();
        let rev = m.store.put(&key, &value, 0)?;
        puts.record(t.elapsed());
        m.saw(i, rev);
        if i % 1024 == 0 {
            pb.set_position(i);
        }
    }
    let t = Instant::now();
    m.store.backend().force_commit()?;
    let mut commit = Sample::new()?;
    commit.record(t.elapsed());
    let elapsed = started.elapsed();
    pb.finish_and_clear();
    let ops = vec![
        puts.report("put", "put".into(), None, elapsed),
        commit.report("force_commit", "force_commit".into(), None, elapsed),
    ];
    b.finish("mvcc-load", elapsed, ops)
}

/// etcd's `put` benchmark: puts of random existing keys from `--writers` threads.
fn put(b: &mut Bench<'_>, m: Mvcc<'_>) -> CliResult<()> {
    let c = m.c;
    let writer = m.putter(0x5eed_0101, 1, None);
    let (samples, elapsed) = c.run_timed("mvcc-put", &[Role { threads: c.args.mvcc_writers(), body: &writer }])?;
    let ops = vec![samples[0].report("put", "put".into(), None, elapsed)];
    b.finish("mvcc-put", elapsed, ops)
}

/// etcd's `range` benchmark with serializable reads: single-key ranges of random existing
/// keys from `--readers` threads.
fn range(b: &mut Bench<'_>, m: Mvcc<'_>) -> CliResult<()> {
    let c = m.c;
    let reader = m.ranger(0x5eed_0102);
    let (samples, elapsed) = c.run_timed("mvcc-range", &[Role { threads: c.args.readers, body: &reader }])?;
    let ops = vec![samples[0].report("range", "range (1 key)".into(), None, elapsed)];
    b.finish("mvcc-range", elapsed, ops)
}

/// Puts from `--writers` threads beside one thread that ranges over every key in a loop (a
/// count of them all, with the first ten rows). The puts' latency is what a long range costs
/// the writers: it lets go of the store's index every 1,024 keys (DESIGN.md §12, "Long ranges
/// beside writes"); held for the whole walk, it kept them waiting for seconds.
fn long_range(b: &mut Bench<'_>, m: Mvcc<'_>) -> CliResult<()> {
    let c = m.c;
    let writer = m.putter(0x5eed_0105, 6, None);
    let keys = c.args.keys();
    let scanner = move |_t: u64, ctl: &Ctl<'_>| -> CliResult<Sample> {
        let mut s = Sample::new()?;
        while ctl.more(s.ops) {
            let t0 = Instant::now();
            let r = m.store.range(&[], &[0], RangeOptions { limit: 10, ..Default::default() })?;
            s.record(t0.elapsed());
            if r.count as u64 != keys {
                return Err(CliError::new(format!(
                    "a range of every key counted {} of the {keys} loaded (an engine bug?)",
                    r.count
                )));
            }
        }
        Ok(s)
    };
    let roles = [Role { threads: 1, body: &scanner }, Role { threads: c.args.mvcc_writers(), body: &writer }];
    let (samples, elapsed) = c.run_timed("mvcc-long-range", &roles)?;
    let ops = vec![
        samples[1].report("put", "put (beside the range)".into(), None, elapsed),
        samples[0].report("range_all", format!("range (all {} keys)", grouped(keys)), None, elapsed),
    ];
    b.finish("mvcc-long-range", elapsed, ops)
}

/// etcd's `txn-put` benchmark: txns of one put from `--writers` threads.
fn txn_put(b: &mut Bench<'_>, m: Mvcc<'_>) -> CliResult<()> {
    let c = m.c;
    let failed = AtomicU64::new(0);
    let writer = m.txn_putter(0x5eed_0103, &failed);
    let (samples, elapsed) = c.run_timed("mvcc-txn-put", &[Role { threads: c.args.mvcc_writers(), body: &writer }])?;
    let label = match c.args.txn_compare {
        TxnCompare::ModRevision => "txn (mod_rev cmp, put)",
        TxnCompare::NoCompare => "txn (put)",
    };
    let ops = vec![samples[0].report("txn", label.into(), None, elapsed)];
    b.finish("mvcc-txn-put", elapsed, ops)?;
    if let Some(p) = b.phases.last_mut() {
        p.txn = Some(TxnReport { compare: c.args.txn_compare, failed_compares: failed.load(Ordering::Relaxed) });
    }
    Ok(())
}

/// When each watched put returned to the writer, by revision (nanoseconds after `base`, plus
/// one; 0 while the put has not returned).
struct Stamps {
    base: Instant,
    first_rev: i64,
    at: Vec<AtomicU64>,
}

impl Stamps {
    fn new(first_rev: i64, slots: u64) -> Stamps {
        Stamps { base: Instant::now(), first_rev, at: (0..slots).map(|_| AtomicU64::new(0)).collect() }
    }

    fn slot(&self, rev: i64) -> Option<&AtomicU64> {
        usize::try_from(rev - self.first_rev).ok().and_then(|i| self.at.get(i))
    }

    fn mark(&self, rev: i64, returned: Instant) {
        if let Some(slot) = self.slot(rev) {
            slot.store(ns(returned - self.base) + 1, Ordering::Release);
        }
    }

    /// How long after its put returned the event of `rev` was received at `received`: zero if
    /// the put had not returned yet (the slot is read after the receipt, so an empty slot means
    /// the put returned later); `None` if the revision is beyond the slots.
    fn delay(&self, rev: i64, received: Instant) -> Option<Duration> {
        let at = self.slot(rev)?.load(Ordering::Acquire);
        if at == 0 {
            return Some(Duration::ZERO);
        }
        Some(Duration::from_nanos(ns(received - self.base).saturating_sub(at - 1)))
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Delays a watcher keeps before it records them in its histogram, all at once.
///
/// Why not record each one as it comes: a histogram of three significant digits spreads
/// delays of 1–10 ms over some 27 KB of counters, a hundred watchers' histograms over 2.7 MB,
/// and a watcher came back to its own only after the others' and the feed's bytes had pushed it
/// out of the cache. Every recording was a miss: a quarter of the watchers' time with 10
/// streams, taken from the writer it measures. Recorded a few thousand at a time, the
/// counters they hit stay in the cache for the rest of the batch.
const DELAYS_BATCH: usize = 4096;

/// What one watcher's thread saw.
struct Received {
    delays: Sample,
    /// Delays not yet in `delays` (see `DELAYS_BATCH`).
    pending: Vec<Duration>,
    received: u64,
    out_of_order: u64,
    wrong_prev: u64,
    early: u64,
    /// The next revision it expects.
    next: i64,
    /// When it had received everything.
    done: Option<Instant>,
}

impl Received {
    fn record_pending(&mut self) {
        for d in self.pending.drain(..) {
            self.delays.record(d);
        }
    }
}

/// The body of a receiving thread (a stream): serves its watchers in turn until each has
/// every revision up to `last` (known once the writer stops), or `abort` is set, or the drain
/// limit passes. It sets itself up (its histograms, its allocator's first pages) before it
/// meets the others at `ready`, so that the writer's clock, started there, times the watchers
/// receiving rather than a hundred threads starting.
fn receive(
    ready: &Barrier,
    ws: &[Watcher],
    prev_kv: bool,
    first: i64,
    last: &AtomicI64,
    abort: &AtomicBool,
    stamps: &Stamps,
) -> CliResult<Vec<Received>> {
    let rs: CliResult<Vec<Received>> = ws
        .iter()
        .map(|_| {
            Ok(Received {
                delays: Sample::new()?,
                pending: Vec::with_capacity(DELAYS_BATCH),
                received: 0,
                out_of_order: 0,
                wrong_prev: 0,
                early: 0,
                next: first,
                done: None,
            })
        })
        .collect();
    // Reached whatever the set-up gave: the writer and the other threads wait for every one.
    ready.wait();
    let mut rs = rs?;
    let mut deadline = None;
    loop {
        let end = last.load(Ordering::Acquire);
        let now = Instant::now();
        for r in rs.iter_mut().filter(|r| r.done.is_none() && r.next > end) {
            r.done = Some(now);
        }
        if rs.iter().all(|r| r.done.is_some()) || abort.load(Ordering::Relaxed) {
            break;
        }
        if end != i64::MAX && *deadline.get_or_insert_with(|| now + DRAIN_LIMIT) < now {
            break;
        }
        let mut got = 0;
        for (w, r) in ws.iter().zip(rs.iter_mut()).filter(|(_, r)| r.done.is_none()) {
            got += take(w, prev_kv, r, Duration::ZERO, stamps)?;
        }
        if got == 0 {
            // Nothing ready for any of them: wait on one. They all watch every key, so an event
            // for one is an event for all.
            if let Some((w, r)) = ws.iter().zip(rs.iter_mut()).find(|(_, r)| r.done.is_none()) {
                take(w, prev_kv, r, RECV_POLL, stamps)?;
            }
        }
    }
    rs.iter_mut().for_each(Received::record_pending);
    Ok(rs)
}

/// Receives what `w` has ready (waiting at most `timeout` for something) into `r`; returns how
/// many events. Events come lent, in batches, as a busy client would take them; one receipt
/// time serves the batch. `prev_kv`: whether the watcher asked for previous values.
fn take(w: &Watcher, prev_kv: bool, r: &mut Received, timeout: Duration, stamps: &Stamps) -> CliResult<usize> {
    // The receipt time is read once per batch, and only for a batch holding a sampled revision.
    let mut received = None;
    let n = w.recv_with(timeout, |ev| {
        let rev = ev.kv.mod_revision;
        r.received += 1;
        if rev != r.next {
            r.out_of_order += 1;
        }
        if ev.prev_kv.is_some() != prev_kv {
            r.wrong_prev += 1;
        }
        r.next = r.next.max(rev + 1);
        if rev % LATENCY_SAMPLE != 0 {
            return;
        }
        let at = *received.get_or_insert_with(Instant::now);
        if let Some(d) = stamps.delay(rev, at) {
            if d.is_zero() {
                r.early += 1;
            }
            r.pending.push(d);
            if r.pending.len() == DELAYS_BATCH {
                r.record_pending();
            }
        }
    })?;
    Ok(n)
}

/// etcd's `watch` and `watch-latency` benchmarks together: one writer puts random keys for
/// half the phase's time with no watcher, then `--watchers` watchers of every key are created,
/// each with a thread receiving its events, and the writer puts for the phase's time; the
/// watchers are dropped and the writer puts unwatched for the other half. Reports both
/// throughputs and their ratio, the delay from each put's return to each watcher's receipt,
/// and whether every watcher received every revision once and in order.
///
/// Why the unwatched run comes in two halves around the watched one: with one unwatched run
/// first, anything that changes steadily over the phase — the machine's speed, which drifts,
/// the store's size, which grows — counted against the watched run alone; halves on both
/// sides cancel a steady change. (It does not remove the run-to-run spread of about ±0.1 in
/// the ratio on the 2-core test machine, which comes from interference within the phases.)
fn watch(b: &mut Bench<'_>, m: Mvcc<'_>) -> CliResult<()> {
    let c = m.c;
    let unwatched = m.putter(0x5eed_0104, 5, None);
    let half_ops = |second: bool| c.args.ops.map(|n| if second { n - n / 2 } else { n / 2 });
    let unwatched_half = |what: &str, second: bool| {
        c.run_timed_for(what, &[Role { threads: 1, body: &unwatched }], half_ops(second), c.args.duration / 2.0)
    };
    let (mut without, mut without_time) = unwatched_half("mvcc-watch (0, before)", false)?;

    // Watch from the next revision; no other writer runs, so it is the same for every watcher.
    let first = m.store.current_revision() + 1;
    let prev_kv = c.args.watch_prev_kv;
    let watchers: Vec<Watcher> = (0..c.args.watchers)
        .map(|_| m.store.watch_with(b"\0", b"\0", WatchOptions { start_rev: 0, prev_kv }))
        .collect::<logtree::Result<_>>()?;
    // One slot per put of the watched run: --ops of them, or about as many as the unwatched
    // half did in twice the time (twice that again, so a faster watched run is still covered;
    // puts past the end go untimed).
    let slots = c.args.ops.unwrap_or(without[0].ops.saturating_mul(4) + 4096).min(MAX_STAMPS);
    let stamps = Stamps::new(first, slots);
    let last = AtomicI64::new(i64::MAX);
    let abort = AtomicBool::new(false);
    let watched = m.putter(0x5eed_0105, 6, Some(&stamps));
    let label = format!("mvcc-watch ({})", c.args.watchers);

    let per_stream = watchers.len().div_ceil(c.args.watch_streams() as usize);
    let ready = Barrier::new(watchers.len().div_ceil(per_stream) + 1);
    let (timed, writer_end, received) = thread::scope(|s| {
        let handles: Vec<_> = watchers
            .chunks(per_stream)
            .map(|ws| {
                let (ready, last, abort, stamps) = (&ready, &last, &abort, &stamps);
                s.spawn(move || receive(ready, ws, prev_kv, first, last, abort, stamps))
            })
            .collect();
        ready.wait();
        let timed = c.run_timed(&label, &[Role { threads: 1, body: &watched }]);
        let writer_end = Instant::now();
        if timed.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        // Whatever the writer managed is what every watcher must now receive.
        last.store(m.store.current_revision(), Ordering::Release);
        let received: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (timed, writer_end, received)
    });
    drop(watchers);
    let (with, with_time) = timed?;
    let (after, after_time) = unwatched_half("mvcc-watch (0, after)", true)?;
    without[0].merge(&after[0]);
    without_time += after_time;

    let last = last.into_inner();
    let revisions = u64::try_from(last - first + 1).unwrap_or(0);
    let mut delays = Sample::new()?;
    let (mut got, mut out_of_order, mut wrong_prev, mut early, mut complete) = (0u64, 0u64, 0u64, 0u64, true);
    let mut drained = writer_end;
    let mut streams = Vec::new();
    for stream in received {
        match stream {
            Ok(rs) => streams.extend(rs?),
            Err(_) => return Err(CliError::new("a watcher's thread failed (see the message above)")),
        }
    }
    for r in streams {
        delays.merge(&r.delays);
        got += r.received;
        out_of_order += r.out_of_order;
        wrong_prev += r.wrong_prev;
        early += r.early;
        complete &= r.next == last + 1 && r.received == revisions && r.out_of_order == 0 && r.wrong_prev == 0;
        match r.done {
            Some(t) => drained = drained.max(t),
            None => complete = false,
        }
    }
    let drain = drained - writer_end;
    let rate = |s: &Sample, t: Duration| s.ops as f64 / t.as_secs_f64().max(1e-9);
    let (rate_without, rate_with) = (rate(&without[0], without_time), rate(&with[0], with_time));
    let report = WatchReport {
        watchers: c.args.watchers,
        puts_per_sec_without: rate_without,
        puts_per_sec_with: rate_with,
        throughput_ratio: if rate_without > 0.0 { rate_with / rate_without } else { 0.0 },
        revisions,
        events_expected: revisions * c.args.watchers,
        events_received: got,
        events_out_of_order: out_of_order,
        events_wrong_prev: wrong_prev,
        all_delivered: complete,
        events_before_put_returned: early,
        drain_ns: ns(drain),
        delivery: Latency::of(&delays.hist),
    };
    // The events' rate is over the whole time they arrived in: the watched run and the drain.
    let mut events = delays.report("watch_event", "event delivery".into(), None, with_time + drain);
    events.count = got;
    events.per_sec = Some(got as f64 / (with_time + drain).as_secs_f64().max(1e-9));
    let ops: Vec<OpReport> = vec![
        without[0].report("put_without_watchers", "put (0 watchers)".into(), None, without_time),
        with[0].report("put_with_watchers", format!("put ({} watchers)", c.args.watchers), None, with_time),
        events,
    ];
    b.finish("mvcc-watch", without_time + with_time + drain, ops)?;
    if let Some(p) = b.phases.last_mut() {
        p.watch = Some(report);
    }
    if !complete {
        return Err(CliError::new(format!(
            "mvcc-watch: the watchers received {} of {} events ({} out of order, {} with a previous value {}) within {} of the last put (an engine bug?)",
            grouped(got),
            grouped(revisions * c.args.watchers),
            grouped(out_of_order),
            grouped(wrong_prev),
            if prev_kv { "missing" } else { "not asked for" },
            human_duration(DRAIN_LIMIT),
        )));
    }
    Ok(())
}
