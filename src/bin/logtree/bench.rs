//! `logtree bench`: load a database and measure the engine's main paths — bulk load, random
//! reads, range scans, etcd's mixed pattern of many small group-committed transactions beside
//! readers, and an online defrag under a running writer — with per-operation latencies kept in
//! HDR histograms.
//!
//! Keys are `--key-size` bytes whose first 8 are a bijective mix of the key's number, so they
//! are unique and land at random places in the index (as hashed or revision keys would), and a
//! key's number is all a thread needs to find an existing key again.
//!
//! The `mvcc…` workloads run the MVCC layer instead (`mvcc_bench.rs`); they share the threads,
//! histograms, table and JSON defined here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use logtree::{Backend, Config, DEFAULT_BATCH_LIMIT, MAX_KEY_LEN, MAX_SEGMENT_SIZE};
use serde::Serialize;

use crate::inspect::progress_bar;
use crate::mvcc_bench::{self, ReopenReport, TxnReport, WatchReport};
use crate::util::{
    CliError, CliResult, Out, file_beside, grouped, human_bytes, human_duration, human_ns, interactive, parse_count,
    path_text,
};

/// The bucket the benchmark writes.
const BUCKET: &str = "bench";
/// Puts per `BatchTx` in the load and overwrite phases.
const LOAD_TX: u64 = 1000;
/// Keys per range scan.
const SCAN_LEN: usize = 100;
/// The mixed phase's transactions put between 1 and this many keys.
const MAX_SMALL_TX: u64 = 10;
/// The largest value the benchmark accepts: 16 MiB (the engine takes more, but a benchmark
/// holding one value per thread in memory at that size is already unusual).
const MAX_BENCH_VALUE: u64 = 16 << 20;
/// Highest latency the histograms track (one hour, in ns); anything slower is clamped to it.
const HIST_MAX_NS: u64 = 3_600_000_000_000;
/// Width of the table's phase column: the longest name, `mvcc-txn-put`.
const PHASE_WIDTH: usize = 12;
/// `--keys` and `--value-size` when not given: the engine's own workloads load 1M keys of
/// 150 B; the MVCC ones follow etcd's benchmarks (100k keys of 256 B).
const DEFAULT_KEYS: u64 = 1_000_000;
const DEFAULT_VALUE_SIZE: u64 = 150;
const DEFAULT_MVCC_KEYS: u64 = 100_000;
const DEFAULT_MVCC_VALUE_SIZE: u64 = 256;
/// `--watch-streams` when not given: etcd's `benchmark watch-latency` serves its watchers over
/// 10 streams (10 watchers each by default), not one stream per watcher.
const DEFAULT_WATCH_STREAMS: u64 = 10;

/// Which phases `bench` runs. A load phase always runs first: the others need its keys
/// (`load` for the engine's workloads, `mvcc-load` for the MVCC ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Every phase of the engine (not the MVCC ones), in order.
    All,
    /// Bulk insert only.
    Load,
    /// Random gets of existing keys.
    Read,
    /// 100-key range scans from random start keys.
    Range,
    /// Small group-committed write transactions beside readers.
    Mixed,
    /// Overwrite every key, then defrag while a writer runs.
    Defrag,
    /// The four MVCC workloads, in order.
    Mvcc,
    /// MVCC puts of random keys from --writers threads, one revision (one BatchTx) each.
    MvccPut,
    /// Single-key MVCC ranges of random existing keys from --readers threads.
    MvccRange,
    /// MVCC txns of one put, with a compare on the key's mod revision or none (--txn-compare).
    MvccTxnPut,
    /// MVCC puts from one writer, first unwatched, then with --watchers watchers on every key.
    MvccWatch,
    /// MVCC puts from --writers threads beside one thread ranging over every key in a loop
    /// (not part of `mvcc`): how long a long range holds writers up.
    MvccLongRange,
    /// mvcc-put, then the store closed and reopened, timed: the backend's open and the key
    /// index's rebuild (not part of `mvcc`). `--ops 900000` over the default 100,000 keys gives
    /// the 1M revisions of the MVCC issue's goal.
    MvccReopen,
}

impl Workload {
    /// Whether the workload runs on the MVCC layer.
    pub fn is_mvcc(self) -> bool {
        matches!(
            self,
            Workload::Mvcc
                | Workload::MvccPut
                | Workload::MvccRange
                | Workload::MvccTxnPut
                | Workload::MvccWatch
                | Workload::MvccLongRange
                | Workload::MvccReopen
        )
    }

    /// Whether running `self` includes the phase of workload `w`.
    pub fn runs(self, w: Workload) -> bool {
        self == w
            || (self == Workload::All && !w.is_mvcc())
            || (self == Workload::Mvcc && w.is_mvcc() && !matches!(w, Workload::MvccLongRange | Workload::MvccReopen))
            || (self == Workload::MvccReopen && w == Workload::MvccPut)
    }
}

/// What `mvcc-txn-put` compares before its put.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TxnCompare {
    /// `mod_revision(key) == last seen` (current etcd's txn-put: a compare-and-swap, retried
    /// after reading the key when another writer got there first).
    ModRevision,
    /// No compare: the put always applies (etcd's txn-put before it took compares).
    #[value(name = "none")]
    #[serde(rename = "none")]
    NoCompare,
}

/// The arguments of `logtree bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Database directory, which must be missing or empty; the database is kept there
    /// afterwards. Default: a temporary directory, removed at the end.
    #[arg(long, value_name = "D")]
    dir: Option<PathBuf>,
    /// Number of keys to load (accepts 100k, 1m, 1e6) [default: 1m; 100k for the mvcc workloads].
    #[arg(long, value_name = "N", value_parser = parse_count)]
    keys: Option<u64>,
    /// Key size in bytes (at least 8: the first 8 bytes make keys unique).
    #[arg(long, value_name = "B", default_value_t = 24, value_parser = clap::value_parser!(u64).range(8..=MAX_KEY_LEN as u64))]
    key_size: u64,
    /// Value size in bytes [default: 150; 256 for the mvcc workloads].
    #[arg(long, value_name = "B", value_parser = clap::value_parser!(u64).range(0..=MAX_BENCH_VALUE))]
    value_size: Option<u64>,
    /// Pending operations that force a commit (Config::batch_limit).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH_LIMIT as u64, value_parser = clap::value_parser!(u64).range(1..))]
    batch_limit: u64,
    /// Milliseconds between group commits (Config::batch_interval; 0 = no timer).
    #[arg(long, value_name = "MS", default_value_t = 100)]
    batch_interval: u64,
    /// Segment size in bytes (Config::segment_size; accepts 4k, 64m).
    #[arg(long, value_name = "B", default_value = "67108864", value_parser = parse_count)]
    segment_size: u64,
    /// Writer threads in the mixed phase (default 2) and in the mvcc-put, mvcc-txn-put and
    /// mvcc-long-range phases (default 1, as etcd's benchmark tool's --clients).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub writers: Option<u64>,
    /// Reader threads in the read, range, mixed and mvcc-range phases.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub readers: u64,
    /// Seconds each timed phase runs (read, range, mixed and the mvcc ones but the load;
    /// mvcc-watch runs its writer this long twice: without watchers, then with them).
    #[arg(long, value_name = "S", default_value_t = 5.0, value_parser = parse_seconds)]
    pub duration: f64,
    /// End each timed phase after N operations per role (readers, writers), split among its
    /// threads, instead of after --duration.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub ops: Option<u64>,
    /// Which phases to run (a load always runs first).
    #[arg(long, value_name = "W", value_enum, default_value_t = Workload::All)]
    pub workload: Workload,
    /// Watchers of every key in the mvcc-watch phase (received by `--watch-streams` threads).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub watchers: u64,
    /// Threads that receive the mvcc-watch phase's watchers, each serving an equal share of
    /// them in turn, as etcd's benchmark multiplexes watchers over its streams. Default 10
    /// (at most one per watcher), etcd's `watch-latency` default (10 streams of 10 watchers);
    /// `--watch-streams` equal to `--watchers` gives each watcher a thread of its own.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub watch_streams: Option<u64>,
    /// Ask mvcc-watch's watchers for previous values (etcd's `WithPrevKV`): the writer then
    /// reads each put key's old value for the events. Off by default, as in etcd's benchmark.
    #[arg(long)]
    pub watch_prev_kv: bool,
    /// What the mvcc-txn-put phase's txns compare before their put.
    #[arg(long, value_name = "C", value_enum, default_value_t = TxnCompare::ModRevision)]
    pub txn_compare: TxnCompare,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Turn off fdatasync (Config::sync = false): measures the engine without the disk.
    #[arg(long)]
    no_sync: bool,
}

impl BenchArgs {
    /// Writer threads of the mixed phase.
    pub fn mixed_writers(&self) -> u64 {
        self.writers.unwrap_or(2)
    }

    /// Writer threads of the MVCC phases that put.
    pub fn mvcc_writers(&self) -> u64 {
        self.writers.unwrap_or(1)
    }

    /// The threads receiving mvcc-watch's watchers: `--watch-streams`, at most one per watcher.
    pub fn watch_streams(&self) -> u64 {
        self.watch_streams.unwrap_or(DEFAULT_WATCH_STREAMS).clamp(1, self.watchers)
    }

    /// `--keys`, or the workload's default.
    pub fn keys(&self) -> u64 {
        self.keys.unwrap_or(if self.workload.is_mvcc() { DEFAULT_MVCC_KEYS } else { DEFAULT_KEYS })
    }

    /// `--value-size`, or the workload's default.
    pub fn value_size(&self) -> u64 {
        self.value_size.unwrap_or(if self.workload.is_mvcc() { DEFAULT_MVCC_VALUE_SIZE } else { DEFAULT_VALUE_SIZE })
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 86400]")),
    }
}

/// A small deterministic generator (xorshift64*): runs are repeatable, and it costs a few
/// nanoseconds, next to the hundreds an index lookup takes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (n ≥ 1); the modulo bias is below 2^-40 for any realistic n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// splitmix64's finalizer: a bijection on u64, so distinct key numbers give distinct keys.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Writes key number `i` into `buf` (at least 8 bytes).
pub fn fill_key(i: u64, buf: &mut [u8]) {
    buf[..8].copy_from_slice(&mix(i).to_be_bytes());
    let tail = i.to_le_bytes();
    for (j, b) in buf[8..].iter_mut().enumerate() {
        *b = tail[j % 8];
    }
}

/// Latency percentiles, in nanoseconds.
#[derive(Serialize, Clone, Copy)]
pub struct Latency {
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50_ns: h.value_at_quantile(0.50),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
            mean_ns: h.mean(),
        }
    }
}

/// One kind of operation measured in a phase.
#[derive(Serialize)]
pub struct OpReport {
    /// `batch_tx`, `get`, `scan`, `force_commit`; `put`, `range`, `txn`, `watch_event`.
    pub op: &'static str,
    /// Operations done.
    pub count: u64,
    /// Operations per second over the phase (none for a one-off such as `force_commit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_sec: Option<f64>,
    /// What each operation carried (`puts` of a `batch_tx`, `keys` of a `scan`), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<&'static str>,
    /// How many items in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    items: Option<u64>,
    /// Items per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    items_per_sec: Option<f64>,
    /// Per-operation latency.
    pub latency: Latency,
    /// The operation's name in the table (not in the JSON).
    #[serde(skip)]
    label: String,
}

/// What `defrag()` reported, and what the writer running beside it saw.
#[derive(Serialize)]
struct DefragReport {
    size_before: u64,
    size_after: u64,
    size_in_use: u64,
    duration_ns: u64,
    /// The engine's figure: how long it held the writer lock.
    longest_writer_pause_ns: u64,
    catch_up_rounds: u32,
    /// The slowest `BatchTx` of the writer running during the defrag, as the writer saw it.
    writer_max_latency_ns: u64,
}

/// One phase of the run.
#[derive(Serialize)]
pub struct PhaseReport {
    pub name: &'static str,
    seconds: f64,
    pub ops: Vec<OpReport>,
    /// `Backend::size` after the phase.
    size: u64,
    /// `Backend::size_in_use` after the phase.
    size_in_use: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    defrag: Option<DefragReport>,
    /// mvcc-txn-put: what was compared, and how often the compare failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txn: Option<TxnReport>,
    /// mvcc-watch: throughput with and without watchers, and the deliveries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchReport>,
    /// mvcc-reopen: what was opened, and how long each part took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reopen: Option<ReopenReport>,
}

/// The settings, as the JSON records them.
#[derive(Serialize)]
struct SettingsReport {
    /// As given (bytes that are not UTF-8 shown as U+FFFD).
    dir: Option<String>,
    keys: u64,
    key_size: u64,
    value_size: u64,
    batch_limit: u64,
    batch_interval_ms: u64,
    segment_size: u64,
    sync: bool,
    /// Writer threads of the mixed phase.
    writers: u64,
    /// Writer threads of the MVCC phases that put.
    mvcc_writers: u64,
    readers: u64,
    duration_s: f64,
    ops: Option<u64>,
    workload: Workload,
    /// mvcc-watch's watchers (only for the workloads that run it).
    #[serde(skip_serializing_if = "Option::is_none")]
    watchers: Option<u64>,
    /// The threads receiving them.
    #[serde(skip_serializing_if = "Option::is_none")]
    watch_streams: Option<u64>,
    /// Whether they asked for previous values.
    #[serde(skip_serializing_if = "Option::is_none")]
    watch_prev_kv: Option<bool>,
    /// mvcc-txn-put's compare (only for the workloads that run it).
    #[serde(skip_serializing_if = "Option::is_none")]
    txn_compare: Option<TxnCompare>,
    cpus: usize,
}

/// Everything `--json` writes.
#[derive(Serialize)]
struct Report {
    settings: SettingsReport,
    phases: Vec<PhaseReport>,
    total_seconds: f64,
}

/// What one thread measured.
pub struct Sample {
    pub hist: Histogram<u64>,
    pub ops: u64,
    items: u64,
}

impl Sample {
    pub fn new() -> CliResult<Sample> {
        let hist = Histogram::new_with_bounds(1, HIST_MAX_NS, 3)
            .map_err(|e| CliError::new(format!("cannot create a histogram: {e:?}")))?;
        Ok(Sample { hist, ops: 0, items: 0 })
    }

    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(ns);
        self.ops += 1;
    }

    pub fn merge(&mut self, other: &Sample) {
        // Same bounds on both sides, so `add` cannot fail; clamp rather than lose the sample.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist.saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        self.ops += other.ops;
        self.items += other.items;
    }

    pub fn report(&self, op: &'static str, label: String, item: Option<&'static str>, elapsed: Duration) -> OpReport {
        let secs = elapsed.as_secs_f64().max(1e-9);
        OpReport {
            op,
            count: self.ops,
            // A rate of one operation says nothing: it is the phase's length inverted.
            per_sec: (self.ops > 1).then(|| self.ops as f64 / secs),
            item,
            items: item.map(|_| self.items),
            items_per_sec: item.map(|_| self.items as f64 / secs),
            latency: Latency::of(&self.hist),
            label,
        }
    }
}

/// What a thread of a timed phase is told.
pub struct Ctl<'a> {
    stop: &'a AtomicBool,
    /// Operations this thread may do at most.
    quota: u64,
    /// Operations done by all threads, for the progress bar.
    done: &'a AtomicU64,
}

impl Ctl<'_> {
    /// Whether to do another operation, having done `done`.
    pub fn more(&self, done: u64) -> bool {
        if done > 0 && done.is_multiple_of(256) {
            self.done.fetch_add(256, Ordering::Relaxed);
        }
        done < self.quota && !self.stop.load(Ordering::Relaxed)
    }
}

/// A body run by each thread of a role: given its thread number, it works until told to stop.
pub type Body<'a> = &'a (dyn Fn(u64, &Ctl<'_>) -> CliResult<Sample> + Sync);

/// A group of threads running the same body.
pub struct Role<'a> {
    pub threads: u64,
    pub body: Body<'a>,
}

/// What the measuring threads share: the database and the settings.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    db: &'a Backend,
    pub args: &'a BenchArgs,
}

/// The benchmark in progress: the shared context, and the results so far.
pub struct Bench<'a> {
    pub ctx: Ctx<'a>,
    out: &'a mut Out,
    pub phases: Vec<PhaseReport>,
}

impl<'a> Bench<'a> {
    /// A benchmark on `db`, going on from `phases` (mvcc-reopen's, on the reopened database).
    pub fn new(db: &'a Backend, args: &'a BenchArgs, out: &'a mut Out, phases: Vec<PhaseReport>) -> Bench<'a> {
        Bench { ctx: Ctx { db, args }, out, phases }
    }
}

/// `logtree bench`.
pub fn run(out: &mut Out, args: &BenchArgs) -> CliResult<()> {
    if args.keys() == 0 {
        return Err(CliError::usage("--keys must be at least 1"));
    }
    if !(logtree::MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&args.segment_size) {
        return Err(CliError::usage(format!(
            "--segment-size must be within {}..={MAX_SEGMENT_SIZE}",
            logtree::MIN_SEGMENT_SIZE
        )));
    }
    check_memory(args)?;
    // Where the results go is settled before the run, so that a path that cannot be written is
    // reported at once rather than after minutes of benchmark.
    let mut json = match &args.json {
        Some(file) => {
            // A reader of stdout that goes away (`| head -1`) must not cost the results file.
            out.get_mut().outlive_reader();
            Some((file, JsonOut::new(file)?))
        }
        None => None,
    };
    // Keep the temporary directory alive for the whole run; it is removed when dropped.
    let (_tmp, path) = match &args.dir {
        Some(d) => {
            let empty = match std::fs::read_dir(d) {
                Ok(mut it) => it.next().is_none(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(CliError::io("cannot read", d, e)),
            };
            if !empty {
                return Err(CliError::new(format!(
                    "{} is not empty; bench needs a missing or empty directory (it leaves its database there)",
                    d.display()
                )));
            }
            (None, d.clone())
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("logtree-bench-")
                .tempdir()
                .map_err(|e| CliError::io("cannot create a directory in", &std::env::temp_dir(), e))?;
            let p = tmp.path().to_path_buf();
            remove_on_interrupt(&p);
            (Some(tmp), p)
        }
    };
    let mut config = Config::new(&path);
    config.batch_limit = usize::try_from(args.batch_limit).unwrap_or(usize::MAX);
    config.batch_interval = Duration::from_millis(args.batch_interval);
    config.segment_size = args.segment_size;
    config.sync = !args.no_sync;
    // mvcc-reopen opens the same database again after closing it.
    let reopen_config = config.clone();
    // In an `Arc` because the MVCC store holds its backend that way; it is unwrapped again to
    // be closed.
    let db = Arc::new(Backend::open(config)?);

    writeln!(
        out,
        "logtree bench: {} keys of {} B, values of {} B, in {}",
        grouped(args.keys()),
        args.key_size,
        args.value_size(),
        path.display()
    )?;
    let timed = match args.ops {
        Some(n) => format!("{} ops per role per timed phase", grouped(n)),
        None => format!("{} s per timed phase", args.duration),
    };
    writeln!(
        out,
        "  batch limit {}, batch interval {} ms, segments of {}, fdatasync {}; {} readers, {} writers{}; {timed}",
        grouped(args.batch_limit),
        args.batch_interval,
        human_bytes(args.segment_size),
        if args.no_sync { "off" } else { "on" },
        args.readers,
        args.mixed_writers(),
        if args.writers.is_none() && args.workload.is_mvcc() {
            format!(" ({} in the MVCC phases)", args.mvcc_writers())
        } else {
            String::new()
        },
    )?;
    if args.workload.is_mvcc() {
        mvcc_bench::describe(out, args)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<PHASE_WIDTH$} {:<24} {:>11} {:>12} {:>18} {:>10} {:>10} {:>10} {:>10}",
        "phase", "operation", "count", "ops/s", "items/s", "p50", "p99", "p99.9", "max"
    )?;
    out.flush()?;

    let started = Instant::now();
    let mut b = Bench::new(&db, args, out, Vec::new());
    let w = args.workload;
    if w.is_mvcc() {
        mvcc_bench::run(&mut b, &db)?;
    } else {
        b.load()?;
        if w.runs(Workload::Read) {
            b.read()?;
        }
        if w.runs(Workload::Range) {
            b.range()?;
        }
        if w.runs(Workload::Mixed) {
            b.mixed()?;
        }
        if w.runs(Workload::Defrag) {
            b.defrag()?;
        }
    }
    let phases = std::mem::take(&mut b.phases);
    // The MVCC store, its syncer thread and every watcher are gone by now: `mvcc_bench::run`
    // owned them. Only this reference is left.
    let db = Arc::try_unwrap(db)
        .map_err(|_| CliError::new("the database is still in use after the benchmark (a bug in the tool)"))?;
    db.close()?;
    let phases =
        if w.runs(Workload::MvccReopen) { mvcc_bench::reopen(out, args, reopen_config, phases)? } else { phases };
    let total = started.elapsed();

    writeln!(out)?;
    for p in &phases {
        write!(
            out,
            "after {:<PHASE_WIDTH$} size {:>10}, in use {:>10}",
            p.name,
            human_bytes(p.size),
            human_bytes(p.size_in_use)
        )?;
        writeln!(out, "   ({:.2} s)", p.seconds)?;
    }
    if let Some(d) = phases.iter().find_map(|p| p.defrag.as_ref()) {
        writeln!(
            out,
            "defrag: {} -> {} (in use {}) in {}, {} catch-up rounds; writer paused {} (engine), slowest writer tx {}",
            human_bytes(d.size_before),
            human_bytes(d.size_after),
            human_bytes(d.size_in_use),
            human_ns(d.duration_ns),
            d.catch_up_rounds,
            human_ns(d.longest_writer_pause_ns),
            human_ns(d.writer_max_latency_ns),
        )?;
    }
    mvcc_bench::summary(out, &phases, args.mvcc_writers())?;
    writeln!(out, "total {}", human_duration(total))?;

    if let Some(json) = json.take() {
        let report = Report {
            settings: SettingsReport {
                dir: args.dir.as_deref().map(path_text),
                keys: args.keys(),
                key_size: args.key_size,
                value_size: args.value_size(),
                batch_limit: args.batch_limit,
                batch_interval_ms: args.batch_interval,
                segment_size: args.segment_size,
                sync: !args.no_sync,
                writers: args.mixed_writers(),
                mvcc_writers: args.mvcc_writers(),
                readers: args.readers,
                duration_s: args.duration,
                ops: args.ops,
                workload: args.workload,
                watchers: w.runs(Workload::MvccWatch).then_some(args.watchers),
                watch_streams: w.runs(Workload::MvccWatch).then_some(args.watch_streams()),
                watch_prev_kv: w.runs(Workload::MvccWatch).then_some(args.watch_prev_kv),
                txn_compare: w.runs(Workload::MvccTxnPut).then_some(args.txn_compare),
                cpus: thread::available_parallelism().map_or(1, |n| n.get()),
            },
            phases,
            total_seconds: total.as_secs_f64(),
        };
        let (file, target) = json;
        let text = serde_json::to_string_pretty(&report)? + "\n";
        target.write(out, file, text.as_bytes())?;
    }
    Ok(())
}

/// Where `--json` results go.
enum JsonOut {
    /// A regular file, or none yet: the results are written to a file beside it and renamed
    /// over it when the run succeeds, so a run that fails leaves it as it was (an earlier run's
    /// results stay). Through a symbolic link, the file it names is the one replaced.
    Replace { file: PathBuf, tmp: tempfile::NamedTempFile },
    /// Anything else a path names (a device, `/dev/stdout`): opened before the run and
    /// written at its end; renaming over it would replace the node itself.
    Direct(std::fs::File),
    /// A FIFO: opened only at the end, since opening it for writing waits for a reader, and
    /// the run should not wait for one before it starts.
    Fifo(PathBuf),
}

impl JsonOut {
    fn new(file: &std::path::Path) -> CliResult<JsonOut> {
        let open = || open_appending(file).map(JsonOut::Direct).map_err(|e| CliError::io("cannot create", file, e));
        // `/dev/stdout`, `/proc/self/fd/N`: the file they stand for is already open, as the
        // process's own output; a new file renamed over its name would not be it.
        let special = ["/dev/stdout", "/dev/stderr", "/dev/fd", "/proc/self/fd"].iter().any(|p| file.starts_with(p))
            || (file.starts_with("/proc") && file.components().any(|c| c.as_os_str() == "fd"));
        // "DIR/name/" names a directory: a file of that name could never be made.
        if std::os::unix::ffi::OsStrExt::as_bytes(file.as_os_str()).ends_with(b"/") {
            return Err(CliError::usage(format!("--json {} names a directory, not a file", file.display())));
        }
        match std::fs::metadata(file) {
            Ok(m) if m.is_dir() => Err(CliError::usage(format!("--json {} is a directory", file.display()))),
            Ok(m) if m.is_file() && !special => {
                let real = std::fs::canonicalize(file).map_err(|e| CliError::io("cannot resolve", file, e))?;
                let tmp = file_beside(&real)?;
                // The replacement keeps the file's mode (a results file kept private stays so).
                tmp.as_file()
                    .set_permissions(m.permissions())
                    .map_err(|e| CliError::io("cannot set the mode of", tmp.path(), e))?;
                Ok(JsonOut::Replace { tmp, file: real })
            }
            Ok(m) if std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()) && !special => {
                // What opening it would check, without waiting for a reader.
                if m.permissions().readonly() {
                    return Err(CliError::new(format!("--json {}: the FIFO is not writable", file.display())));
                }
                Ok(JsonOut::Fifo(file.to_path_buf()))
            }
            Ok(_) => open(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A link to a file not made yet: the file is made where the link points, at the
                // end of the run like any new file (so that a failed run leaves none), and the
                // link stays a link.
                let target = dangling_link_target(file)?;
                Ok(JsonOut::Replace { tmp: file_beside(&target)?, file: target })
            }
            Err(e) => Err(CliError::io("cannot read", file, e)),
        }
    }

    /// Writes the results, and says so on `out`.
    fn write(self, out: &mut Out, shown: &std::path::Path, bytes: &[u8]) -> CliResult<()> {
        match self {
            JsonOut::Replace { file, mut tmp } => {
                tmp.write_all(bytes).map_err(|e| CliError::io("cannot write", tmp.path(), e))?;
                tmp.persist(&file).map_err(|e| CliError::io("cannot rename the results to", &file, e.error))?;
                writeln!(out, "results written to {}", shown.display())?;
            }
            JsonOut::Fifo(path) => {
                writeln!(out, "results follow in {}", shown.display())?;
                out.flush()?;
                let mut f = open_appending(&path).map_err(|e| CliError::io("cannot open", &path, e))?;
                f.write_all(bytes).map_err(|e| CliError::io("cannot write", shown, e))?;
            }
            JsonOut::Direct(mut f) => {
                // Printed, and all of stdout flushed, first: FILE may be stdout by another
                // name, whose own offset does not move past what is written here.
                writeln!(out, "results follow in {}", shown.display())?;
                out.flush()?;
                f.write_all(bytes).map_err(|e| CliError::io("cannot write", shown, e))?;
            }
        }
        Ok(())
    }
}

/// `file`, existing, opened for writing at its end. Appended: `--json /dev/stdout > out.txt`
/// opens out.txt anew, at offset 0, where the rest of the output already is.
fn open_appending(file: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().append(true).open(file)
}

/// Where `file`, missing, would be: itself, or if it is a symbolic link (of a chain) that points
/// nowhere yet, the path the last link names.
fn dangling_link_target(file: &Path) -> CliResult<PathBuf> {
    let mut at = file.to_path_buf();
    // Linux follows at most 40 links in a path; a chain longer than that cannot be opened.
    for _ in 0..40 {
        match std::fs::read_link(&at) {
            Ok(next) => at = if next.is_absolute() { next } else { crate::util::parent_dir(&at).join(next) },
            Err(_) => return Ok(at),
        }
    }
    Err(CliError::new(format!("--json {}: too many levels of symbolic links", file.display())))
}

/// Refuses a `--keys` the index cannot hold in this machine's memory: every key lives in the
/// index, so such a run would end, after a long load, in an allocation failure (an abort, with
/// no clean-up) rather than with results. Only a lower bound is checked (the keys' own bytes);
/// where the total memory is unknown, nothing is.
fn check_memory(args: &BenchArgs) -> CliResult<()> {
    let Some(total) = physical_memory() else { return Ok(()) };
    let need = u128::from(args.keys()) * u128::from(args.key_size);
    if need > u128::from(total) {
        return Err(CliError::usage(format!(
            "--keys {} of {} B need at least {} of memory for the index alone; this machine has {}",
            grouped(args.keys()),
            args.key_size,
            human_bytes(u64::try_from(need).unwrap_or(u64::MAX)),
            human_bytes(total)
        )));
    }
    Ok(())
}

/// The machine's memory in bytes (`MemTotal` of /proc/meminfo), where the system says.
fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

impl<'a> Ctx<'a> {
    pub fn value(self, generation: u8) -> Vec<u8> {
        // Printable, so that `logtree dump` of a kept bench database is readable.
        vec![b'a' + generation % 26; self.args.value_size() as usize]
    }

    pub fn key_buf(self) -> Vec<u8> {
        vec![0u8; self.args.key_size as usize]
    }

    /// Puts every key in `BatchTx`s of [`LOAD_TX`], dropped (group commit by the batch limit
    /// and interval), then `force_commit`: the load and overwrite phases.
    fn bulk(self, generation: u8, what: &str) -> CliResult<(Duration, Vec<OpReport>)> {
        let n = self.args.keys();
        let value = self.value(generation);
        let mut key = self.key_buf();
        let mut txs = Sample::new()?;
        let pb = progress_bar(n, what);
        let started = Instant::now();
        let mut i = 0;
        while i < n {
            let end = (i + LOAD_TX).min(n);
            let t = Instant::now();
            let mut tx = self.db.batch_tx();
            for j in i..end {
                fill_key(j, &mut key);
                tx.put(BUCKET, &key, &value)?;
            }
            drop(tx);
            txs.record(t.elapsed());
            txs.items += end - i;
            i = end;
            pb.set_position(i);
        }
        let t = Instant::now();
        self.db.force_commit()?;
        let mut commit = Sample::new()?;
        commit.record(t.elapsed());
        let elapsed = started.elapsed();
        pb.finish_and_clear();
        let ops = vec![
            txs.report("batch_tx", format!("tx ({LOAD_TX} puts)"), Some("puts"), elapsed),
            commit.report("force_commit", "force_commit".into(), None, elapsed),
        ];
        Ok((elapsed, ops))
    }

    /// Runs the roles' threads until `--duration` passes (or each thread has done its share
    /// of `--ops`); returns each role's merged sample and the time taken.
    pub fn run_timed(self, what: &str, roles: &[Role<'_>]) -> CliResult<(Vec<Sample>, Duration)> {
        self.run_timed_for(what, roles, self.args.ops, self.args.duration)
    }

    /// As [`run_timed`](Self::run_timed), for `ops` operations (if given) or else `seconds`.
    pub fn run_timed_for(
        self,
        what: &str,
        roles: &[Role<'_>],
        ops: Option<u64>,
        seconds: f64,
    ) -> CliResult<(Vec<Sample>, Duration)> {
        let stop = AtomicBool::new(false);
        let done = AtomicU64::new(0);
        let threads: u64 = roles.iter().map(|r| r.threads).sum();
        let running = AtomicUsize::new(threads as usize);
        let limit = match ops {
            Some(_) => None,
            None => Some(Duration::from_secs_f64(seconds)),
        };
        let pb = match (limit, ops) {
            (Some(d), _) => timed_bar(d, what),
            (None, Some(n)) => progress_bar(n.saturating_mul(roles.len() as u64), what),
            (None, None) => ProgressBar::hidden(),
        };
        let started = Instant::now();
        let joined = thread::scope(|s| {
            let mut handles = Vec::new();
            for (r, role) in roles.iter().enumerate() {
                for t in 0..role.threads {
                    // An even split of --ops among the role's threads.
                    let quota = ops.map_or(u64::MAX, |n| n / role.threads + u64::from(t < n % role.threads));
                    let (stop, done, running) = (&stop, &done, &running);
                    let body = role.body;
                    handles.push((
                        r,
                        s.spawn(move || {
                            let res = body(t, &Ctl { stop, quota, done });
                            if res.is_err() {
                                // One failed thread ends the phase for all.
                                stop.store(true, Ordering::Relaxed);
                            }
                            running.fetch_sub(1, Ordering::Release);
                            res
                        }),
                    ));
                }
            }
            while running.load(Ordering::Acquire) > 0 {
                let elapsed = started.elapsed();
                match limit {
                    Some(d) if elapsed >= d => break,
                    Some(_) => pb.set_position(elapsed.as_millis() as u64),
                    None => pb.set_position(done.load(Ordering::Relaxed)),
                }
                let left = limit.map_or(Duration::from_millis(50), |d| d.saturating_sub(elapsed));
                thread::sleep(left.min(Duration::from_millis(50)));
            }
            stop.store(true, Ordering::Relaxed);
            handles.into_iter().map(|(r, h)| (r, h.join())).collect::<Vec<_>>()
        });
        let elapsed = started.elapsed();
        pb.finish_and_clear();
        let mut merged = Vec::with_capacity(roles.len());
        for _ in roles {
            merged.push(Sample::new()?);
        }
        for (r, res) in joined {
            match res {
                Ok(Ok(sample)) => merged[r].merge(&sample),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(CliError::new("a benchmark thread failed (see the message above)")),
            }
        }
        Ok((merged, elapsed))
    }

    /// The body of a reader: a `ReadTx` and a get of a random existing key per operation (a
    /// server takes a read transaction per request, so its cost belongs in the latency).
    fn reader(self, salt: u64) -> impl Fn(u64, &Ctl<'_>) -> CliResult<Sample> + Sync + 'a {
        move |t, ctl| {
            let mut rng = Rng::new(salt ^ (t + 1));
            let mut key = self.key_buf();
            let mut s = Sample::new()?;
            while ctl.more(s.ops) {
                let i = rng.below(self.args.keys());
                fill_key(i, &mut key);
                let t0 = Instant::now();
                let rtx = self.db.read_tx();
                let found = rtx.get_ref(BUCKET, &key)?.map(<[u8]>::len);
                drop(rtx);
                s.record(t0.elapsed());
                if found.is_none() {
                    return Err(CliError::new(format!("key number {i} is missing after the load (an engine bug?)")));
                }
            }
            Ok(s)
        }
    }

    /// The body of a range reader: a `ReadTx` and a scan of [`SCAN_LEN`] keys from a random
    /// existing key per operation.
    fn scanner(self, salt: u64) -> impl Fn(u64, &Ctl<'_>) -> CliResult<Sample> + Sync + 'a {
        move |t, ctl| {
            let mut rng = Rng::new(salt ^ (t + 1));
            let mut key = self.key_buf();
            let mut s = Sample::new()?;
            while ctl.more(s.ops) {
                fill_key(rng.below(self.args.keys()), &mut key);
                let t0 = Instant::now();
                let rtx = self.db.read_tx();
                let mut got = 0u64;
                let mut bytes = 0usize;
                for kv in rtx.scan(BUCKET, &key, None)?.take(SCAN_LEN) {
                    let (k, v) = kv?;
                    bytes += k.len() + v.len();
                    got += 1;
                }
                drop(rtx);
                s.record(t0.elapsed());
                // Keep the reads of the values from being optimised away.
                std::hint::black_box(bytes);
                s.items += got;
            }
            Ok(s)
        }
    }

    /// The body of a writer: `BatchTx`s of 1 to [`MAX_SMALL_TX`] overwrites of random keys,
    /// dropped, not committed — durability comes from the group committer (etcd's pattern).
    fn writer(self, salt: u64, generation: u8) -> impl Fn(u64, &Ctl<'_>) -> CliResult<Sample> + Sync + 'a {
        let value = self.value(generation);
        move |t, ctl| {
            let mut rng = Rng::new(salt ^ (t + 1));
            let mut key = self.key_buf();
            let mut s = Sample::new()?;
            while ctl.more(s.ops) {
                let puts = 1 + rng.below(MAX_SMALL_TX);
                let t0 = Instant::now();
                let mut tx = self.db.batch_tx();
                for _ in 0..puts {
                    fill_key(rng.below(self.args.keys()), &mut key);
                    tx.put(BUCKET, &key, &value)?;
                }
                drop(tx);
                s.record(t0.elapsed());
                s.items += puts;
            }
            Ok(s)
        }
    }
}

impl Bench<'_> {
    /// Prints a phase's rows and keeps it for the summary and the JSON.
    pub fn finish(&mut self, name: &'static str, elapsed: Duration, ops: Vec<OpReport>) -> CliResult<()> {
        let s = self.ctx.db.stats();
        for op in &ops {
            let items = match (op.item, op.items_per_sec) {
                (Some(item), Some(r)) => format!("{} {item}", grouped(r.round() as u64)),
                _ => String::new(),
            };
            let l = &op.latency;
            writeln!(
                self.out,
                "{:<PHASE_WIDTH$} {:<24} {:>11} {:>12} {:>18} {:>10} {:>10} {:>10} {:>10}",
                name,
                op.label,
                grouped(op.count),
                op.per_sec.map_or("-".into(), |r| grouped(r.round() as u64)),
                items,
                human_ns(l.p50_ns),
                human_ns(l.p99_ns),
                human_ns(l.p999_ns),
                human_ns(l.max_ns),
            )?;
        }
        self.out.flush()?;
        self.phases.push(PhaseReport {
            name,
            seconds: elapsed.as_secs_f64(),
            ops,
            size: s.size,
            size_in_use: s.size_in_use,
            defrag: None,
            txn: None,
            watch: None,
            reopen: None,
        });
        Ok(())
    }

    fn load(&mut self) -> CliResult<()> {
        let mut tx = self.ctx.db.batch_tx();
        tx.create_bucket(BUCKET)?;
        tx.commit()?;
        let (elapsed, ops) = self.ctx.bulk(0, "load")?;
        self.finish("load", elapsed, ops)
    }

    fn read(&mut self) -> CliResult<()> {
        let c = self.ctx;
        let reader = c.reader(0x5eed_0001);
        let (samples, elapsed) = c.run_timed("read", &[Role { threads: c.args.readers, body: &reader }])?;
        let ops = vec![samples[0].report("get", "get".into(), None, elapsed)];
        self.finish("read", elapsed, ops)
    }

    fn range(&mut self) -> CliResult<()> {
        let c = self.ctx;
        let scanner = c.scanner(0x5eed_0002);
        let (samples, elapsed) = c.run_timed("range", &[Role { threads: c.args.readers, body: &scanner }])?;
        let ops = vec![samples[0].report("scan", format!("scan ({SCAN_LEN})"), Some("keys"), elapsed)];
        self.finish("range", elapsed, ops)
    }

    fn mixed(&mut self) -> CliResult<()> {
        let c = self.ctx;
        let writer = c.writer(0x5eed_0003, 1);
        let reader = c.reader(0x5eed_0004);
        let roles =
            [Role { threads: c.args.mixed_writers(), body: &writer }, Role { threads: c.args.readers, body: &reader }];
        let (samples, elapsed) = c.run_timed("mixed", &roles)?;
        // What the group committer left pending; its cost is bounded by the batch interval.
        let t = Instant::now();
        c.db.force_commit()?;
        let mut commit = Sample::new()?;
        commit.record(t.elapsed());
        let ops = vec![
            samples[0].report("batch_tx", format!("tx (1-{MAX_SMALL_TX} puts)"), Some("puts"), elapsed),
            samples[1].report("get", "get".into(), None, elapsed),
            commit.report("force_commit", "force_commit".into(), None, elapsed),
        ];
        self.finish("mixed", elapsed, ops)
    }

    /// Overwrites every key (so about half the log is garbage), then defrags while a writer
    /// keeps writing small transactions; the writer's slowest transaction is the pause it felt.
    fn defrag(&mut self) -> CliResult<()> {
        let c = self.ctx;
        let (overwrite_time, mut ops) = c.bulk(2, "overwrite")?;
        for op in &mut ops {
            op.label = format!("overwrite {}", op.label);
            op.op = if op.op == "batch_tx" { "overwrite_batch_tx" } else { "overwrite_force_commit" };
        }
        let writer = c.writer(0x5eed_0005, 3);
        let stop = AtomicBool::new(false);
        let done = AtomicU64::new(0);
        let spinner = if interactive() { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
        spinner.set_message("defrag");
        spinner.enable_steady_tick(Duration::from_millis(100));
        let started = Instant::now();
        let (stats, sample) = thread::scope(|s| {
            let w = s.spawn(|| writer(0, &Ctl { stop: &stop, quota: u64::MAX, done: &done }));
            let stats = c.db.defrag();
            stop.store(true, Ordering::Relaxed);
            (stats, w.join())
        });
        let defrag_time = started.elapsed();
        spinner.finish_and_clear();
        let stats = stats?;
        let sample = match sample {
            Ok(r) => r?,
            Err(_) => return Err(CliError::new("the writer thread failed (see the message above)")),
        };
        c.db.force_commit()?;
        let mut writer_report =
            sample.report("batch_tx", format!("tx (1-{MAX_SMALL_TX} puts)"), Some("puts"), defrag_time);
        writer_report.op = "batch_tx_during_defrag";
        ops.push(writer_report);
        let report = DefragReport {
            size_before: stats.size_before,
            size_after: stats.size_after,
            size_in_use: stats.size_in_use,
            duration_ns: u64::try_from(stats.duration.as_nanos()).unwrap_or(u64::MAX),
            longest_writer_pause_ns: u64::try_from(stats.longest_writer_pause.as_nanos()).unwrap_or(u64::MAX),
            catch_up_rounds: stats.catch_up_rounds,
            writer_max_latency_ns: sample.hist.max(),
        };
        self.finish("defrag", overwrite_time + defrag_time, ops)?;
        if let Some(p) = self.phases.last_mut() {
            p.defrag = Some(report);
        }
        Ok(())
    }
}

/// A bar over a phase's duration, in milliseconds.
fn timed_bar(d: Duration, what: &str) -> ProgressBar {
    if !interactive() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(d.as_millis() as u64);
    let style = ProgressStyle::with_template("{msg:>14} [{bar:40}] {elapsed}/{duration}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}

/// Set once an interrupt has begun removing the run's temporary directory: the process is
/// about to exit, and what its threads report meanwhile (the engine's files vanishing under
/// them) is not worth printing.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether an interrupt is ending the process (see [`remove_on_interrupt`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// On Ctrl-C or SIGTERM, removes the run's temporary directory — a database of up to gigabytes
/// that nobody asked to keep, which an interrupted run used to leave behind — and exits with
/// 130, as a shell reports an interrupted command. Only for the temporary directory: a `--dir`
/// database is the user's, and the engine recovers it after any kill.
fn remove_on_interrupt(dir: &Path) {
    let dir = dir.to_path_buf();
    let handler = move || {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            return;
        }
        eprintln!("logtree: interrupted; removing {}", dir.display());
        // The engine's threads run on and may create a file (a new segment) during the
        // removal, which then fails on a directory not empty: a few tries.
        for _ in 0..5 {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => thread::sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
        std::process::exit(130);
    };
    // It fails only if a handler is already set, which this tool does nowhere else; the run
    // then goes on with the default behaviour (killed, directory left).
    let _ = ctrlc::set_handler(handler);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_spread() {
        let mut seen = std::collections::HashSet::new();
        let mut k = [0u8; 8];
        for i in 0..100_000 {
            fill_key(i, &mut k);
            assert!(seen.insert(k));
        }
        // Consecutive numbers do not give consecutive keys: inserts land all over the index.
        let (mut a, mut b) = ([0u8; 24], [0u8; 24]);
        fill_key(1, &mut a);
        fill_key(2, &mut b);
        assert_ne!(a[0], b[0]);
    }

    #[test]
    fn rng_stays_in_range() {
        let mut r = Rng::new(7);
        assert!((0..10_000).all(|_| r.below(13) < 13));
    }
}
