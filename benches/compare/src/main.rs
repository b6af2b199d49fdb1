//! Runs the same workloads on logtree and its peers — redb, LMDB (heed), fjall, jammdb (bbolt's
//! Rust port) and sled 0.34 — each in a fresh temporary directory with its durable setting
//! (fsync at commit), beside two baselines (std's `BTreeMap`, a raw append + fdatasync file),
//! and prints one table. Results also go to `results/` (JSON, CSV) and a chart to
//! `docs/compare.png`.
//!
//! ```text
//! cargo run --release --manifest-path benches/compare/Cargo.toml -- --elements 1000000
//! ```
//!
//! Each engine runs in a child process of its own (this program, with `--child NAME`), so that
//! one engine's memory, caches and background threads do not weigh on the next, and a crash is
//! reported in its column instead of ending the run.

mod baselines;
mod chart;
mod engines;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use workload::{Data, ROWS, Results};

/// Every engine and baseline runs on the same global allocator: the system's, or with the
/// `mimalloc` feature mimalloc, which logtree's own programs use (README, "Allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "mimalloc")]
pub const ALLOCATOR_NAME: &str = "mimalloc";
#[cfg(not(feature = "mimalloc"))]
pub const ALLOCATOR_NAME: &str = "system";

/// Columns, in order: the engines, then the baselines.
pub const COLUMNS: &[(&str, &str)] = &[
    ("logtree", "logtree"),
    ("redb", "redb"),
    ("lmdb", "LMDB (heed)"),
    ("fjall", "fjall"),
    ("jammdb", "jammdb (bbolt)"),
    ("sled", "sled 0.34"),
    ("btreemap", "BTreeMap (memory)"),
    ("rawfile", "append+fdatasync"),
];
pub const ENGINES: usize = 6;

struct Args {
    elements: usize,
    runs: usize,
    only: Vec<String>,
    dir: PathBuf,
    chart: Option<PathBuf>,
    out: PathBuf,
    /// Show the median of the runs instead of the best (lowest).
    median: bool,
    child: Option<String>,
    /// Redraw the table and chart from a results JSON instead of running.
    replot: Option<PathBuf>,
    /// Measure the batch row's floor for a memtable design instead (`baselines::memtable_floor`).
    floor: bool,
}

const USAGE: &str = "usage: logtree-compare [--elements N (1000000)] [--runs R (1)] [--engines a,b,..] \
[--median] [--dir TMPDIR] [--out RESULTS_DIR] [--chart PNG | --no-chart] [--floor]
With several runs the table shows each cell's best (lowest) run, or with --median the median;
the JSON keeps every run. --floor measures only the batch row's floor for an engine with a
memtable in front of its index, against the raw file, --runs times.
engines: logtree redb lmdb fjall jammdb sled btreemap rawfile";

fn parse_args() -> Result<Args, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        elements: 1_000_000,
        runs: 1,
        only: Vec::new(),
        dir: std::env::temp_dir(),
        chart: Some(manifest.join("../../docs/compare.png")),
        out: manifest.join("results"),
        median: false,
        child: None,
        replot: None,
        floor: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--elements" => a.elements = val()?.replace('_', "").parse().map_err(|e| format!("--elements: {e}"))?,
            "--runs" => a.runs = val()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--engines" => a.only = val()?.split(',').map(str::to_string).collect(),
            "--dir" => a.dir = val()?.into(),
            "--out" => a.out = val()?.into(),
            "--chart" => a.chart = Some(val()?.into()),
            "--no-chart" => a.chart = None,
            "--median" => a.median = true,
            "--child" => a.child = Some(val()?),
            "--replot" => a.replot = Some(val()?.into()),
            "--floor" => a.floor = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    if a.elements < 1000 || a.runs == 0 {
        return Err(format!("--elements must be at least 1000 and --runs at least 1\n{USAGE}"));
    }
    for e in &a.only {
        if !COLUMNS.iter().any(|(id, _)| id == e) {
            return Err(format!("unknown engine {e:?}\n{USAGE}"));
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if args.floor {
        return floor(&args);
    }
    match (&args.child, &args.replot) {
        (Some(name), _) => child(name, &args),
        (None, Some(json)) => replot(json, &args),
        (None, None) => parent(&args),
    }
}

/// `--floor`: the batch row written plainly and with a memtable's foreground work, each run
/// in a fresh directory, both in the same process one after the other.
fn floor(args: &Args) {
    let data = Data::generate(args.elements);
    for run in 1..=args.runs {
        let dir = tempfile::Builder::new().prefix("compare-floor-").tempdir_in(&args.dir).expect("temp dir");
        let (raw, framed) = baselines::memtable_floor(dir.path(), &data);
        println!(
            "run {run}: batch row, append+fdatasync {raw:.1} ms; framed, with a memtable {framed:.1} ms ({:.2}× the raw file)",
            framed / raw
        );
    }
}

/// Runs one engine and prints its results on stdout, one `RESULT id value` line each.
fn child(name: &str, args: &Args) {
    let data = Data::generate(args.elements);
    let dir = tempfile::Builder::new().prefix(&format!("compare-{name}-")).tempdir_in(&args.dir).expect("temp dir");
    let results: Results = match name {
        "logtree" => workload::run::<engines::logtree::Logtree>(name, dir.path(), &data),
        "redb" => workload::run::<engines::redb::Redb>(name, dir.path(), &data),
        "lmdb" => workload::run::<engines::lmdb::Lmdb>(name, dir.path(), &data),
        "fjall" => workload::run::<engines::fjall::Fjall>(name, dir.path(), &data),
        "jammdb" => workload::run::<engines::jammdb::Jammdb>(name, dir.path(), &data),
        "sled" => workload::run::<engines::sled::Sled>(name, dir.path(), &data),
        "btreemap" => baselines::btreemap(&data),
        "rawfile" => baselines::raw_file(dir.path(), &data),
        _ => unreachable!("checked in parse_args"),
    };
    for (id, v) in results {
        match v {
            Some(v) => println!("RESULT {id} {v}"),
            None => println!("RESULT {id} -"),
        }
    }
}

/// What one column got: values by row, or why it has none.
pub enum Outcome {
    /// The value shown for each row (best or median of the runs), and every run's values.
    Ran {
        shown: Vec<Option<f64>>,
        runs: Vec<Vec<Option<f64>>>,
    },
    Failed(String),
}

fn run_child(exe: &Path, name: &str, args: &Args) -> Result<Vec<Option<f64>>, String> {
    let out = Command::new(exe)
        .args(["--child", name, "--elements", &args.elements.to_string()])
        .arg("--dir")
        .arg(&args.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not start: {e}"))?;
    if !out.status.success() {
        return Err(format!("failed ({})", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut values = vec![None; ROWS.len()];
    for line in text.lines() {
        let mut f = line.split_whitespace();
        if f.next() != Some("RESULT") {
            continue;
        }
        let (Some(id), Some(v)) = (f.next(), f.next()) else { continue };
        if let Some(i) = ROWS.iter().position(|(r, _)| *r == id) {
            values[i] = v.parse().ok();
        }
    }
    Ok(values)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if !v.len().is_multiple_of(2) { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// Rebuilds a report from a results JSON and prints and draws it again.
fn replot(path: &Path, args: &Args) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rep = report::Report::from_json(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    println!("{}", rep.markdown());
    println!("{}", rep.ratios_markdown());
    if let Some(chart_path) = &args.chart {
        match chart::draw(&rep, chart_path) {
            Ok(()) => eprintln!("wrote {}", chart_path.display()),
            Err(e) => eprintln!("chart: {e}"),
        }
    }
}

fn parent(args: &Args) {
    let exe = std::env::current_exe().expect("own path");
    let columns: Vec<(&str, &str)> =
        COLUMNS.iter().copied().filter(|(id, _)| args.only.is_empty() || args.only.iter().any(|o| o == id)).collect();
    let machine = report::Machine::probe(&args.dir);
    eprintln!(
        "logtree-compare: logtree {}; {} elements, {} run(s), allocator {}, in {} ({}); load average {}",
        machine.logtree,
        args.elements,
        args.runs,
        machine.allocator,
        args.dir.display(),
        machine.disk,
        machine.load_before
    );
    let started = Instant::now();
    let mut per_run: Vec<Vec<Result<Vec<Option<f64>>, String>>> = vec![Vec::new(); columns.len()];
    for run in 0..args.runs {
        for (c, (id, _)) in columns.iter().enumerate() {
            eprintln!("[run {}/{}] {id}", run + 1, args.runs);
            let r = run_child(&exe, id, args);
            if let Err(e) = &r {
                eprintln!("  {id}: {e}");
            }
            per_run[c].push(r);
        }
    }
    let outcomes: Vec<Outcome> = per_run
        .into_iter()
        .map(|runs| {
            let ok: Vec<&Vec<Option<f64>>> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
            if ok.is_empty() {
                let why = runs.iter().find_map(|r| r.as_ref().err()).cloned().unwrap_or_default();
                return Outcome::Failed(why);
            }
            let shown = (0..ROWS.len())
                .map(|i| {
                    let vals: Vec<f64> = ok.iter().filter_map(|v| v[i]).collect();
                    match (vals.is_empty(), args.median) {
                        (true, _) => None,
                        (false, true) => Some(median(vals)),
                        (false, false) => vals.into_iter().reduce(f64::min),
                    }
                })
                .collect();
            Outcome::Ran { shown, runs: ok.into_iter().cloned().collect() }
        })
        .collect();
    let mut machine = machine;
    machine.finish(started.elapsed());

    let rep = report::Report {
        elements: args.elements,
        runs: args.runs,
        stat: if args.median { "median" } else { "best" },
        columns,
        outcomes,
        machine,
    };
    println!();
    println!("{}", rep.markdown());
    println!("{}", rep.ratios_markdown());
    std::fs::create_dir_all(&args.out).expect("results dir");
    let stem = args.out.join(format!("compare-{}", args.elements));
    std::fs::write(stem.with_extension("json"), rep.json()).expect("write json");
    std::fs::write(stem.with_extension("csv"), rep.csv()).expect("write csv");
    eprintln!("wrote {}.json and .csv", stem.display());
    if let Some(path) = &args.chart {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("chart dir");
        }
        match chart::draw(&rep, path) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("chart: {e}"),
        }
    }
}
