//! The table (Markdown), the ratios, JSON and CSV, and what machine they were measured on.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::workload::{ROWS, is_size};
use crate::{ENGINES, Outcome};

/// How each engine was driven where it differs from the others; printed under the table.
pub const NOTES: &[&str] = &[
    "All engines: each workload's writes are transactions made durable at commit (fsync or fdatasync); reads are one read transaction (snapshot) per thread, visiting the loaded keys in a shuffled order; redb, fjall and sled get a 4 GiB cache.",
    "jammdb (bbolt): the bulk load is committed every 10,000 pairs, since like bbolt it splits nodes only at commit and one 1M-pair transaction is quadratic (200,000 pairs took 83 s).",
    "sled 0.34: `flush()` is its durability call; on Linux it ends with `sync_file_range`, which flushes neither the device's write cache nor file metadata, so its durable-write rows did less than an fsync.",
    "fjall: each batch is committed with `PersistMode::SyncAll`; its compaction is `rotate_memtable_and_wait()` then `major_compact()`.",
    "Compaction: logtree `defrag()`, redb `compact()`, LMDB's compacting copy (`copy_to_file` with `CompactionOption::Enabled`) renamed over `data.mdb`, jammdb a copy of every pair into a new file (what `bbolt compact` and etcd's defrag do); sled has none.",
    "Sizes are the apparent length of every file in the database directory (as `ls` shows it).",
];

/// The peers' crates and versions, as resolved in this package's Cargo.lock.
pub fn versions() -> Vec<(String, String)> {
    const LOCK: &str = include_str!("../Cargo.lock");
    const WANT: &[&str] = &["redb", "heed", "lmdb-master-sys", "fjall", "lsm-tree", "jammdb", "sled", "plotters"];
    let mut out = Vec::new();
    let mut name = None;
    for line in LOCK.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take())
            && WANT.contains(&n.as_str())
        {
            out.push((n, v.trim_matches('"').to_string()));
        }
    }
    out.sort_by_key(|(n, _)| WANT.iter().position(|w| w == n));
    out
}

fn command(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub struct Machine {
    pub date: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub disk: String,
    pub kernel: String,
    pub rustc: String,
    /// The global allocator every engine ran on: "mimalloc" (the default feature) or "system".
    pub allocator: String,
    /// The logtree commit measured, "+ local changes" when src/ differs from it.
    pub logtree: String,
    pub load_before: String,
    pub load_after: String,
    pub wall_seconds: f64,
}

impl Machine {
    pub fn probe(dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            date: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_gib: mem_kib / (1024.0 * 1024.0),
            disk: disk(dir),
            kernel: command("uname", &["-r"]),
            rustc: command("rustc", &["--version"]),
            allocator: crate::ALLOCATOR_NAME.to_string(),
            logtree: logtree_commit(),
            load_before: load(),
            load_after: String::new(),
            wall_seconds: 0.0,
        }
    }

    pub fn finish(&mut self, wall: Duration) {
        self.load_after = load();
        self.wall_seconds = wall.as_secs_f64();
    }
}

fn logtree_commit() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let head = command("git", &["-C", root, "log", "-1", "--format=%h %cs"]);
    if head.is_empty() {
        return "unknown (not a git checkout)".into();
    }
    let dirty = command("git", &["-C", root, "status", "--porcelain", "--", "src", "Cargo.toml"]);
    if dirty.is_empty() { head } else { format!("{head} + local changes") }
}

/// The file system holding `dir`: device, type, and whether the block device says it rotates.
fn disk(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && dir.starts_with(f[1])).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .max_by_key(|(_, mnt, _)| mnt.len());
    let Some((dev, mnt, fstype)) = best else { return "unknown".into() };
    let base: String = dev.trim_start_matches("/dev/").chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    let rot = std::fs::read_to_string(format!("/sys/block/{base}/queue/rotational")).map(|s| s.trim().to_string());
    let rot = rot.map_or("?".to_string(), |r| r);
    if base.starts_with("vd") {
        // A virtio disk's flag says nothing about the host's storage behind it.
        format!("{dev} on {mnt}, {fstype}, virtio block device (rotational={rot}; host storage unknown)")
    } else {
        format!("{dev} on {mnt}, {fstype} (rotational={rot})")
    }
}

pub struct Report<'a> {
    pub elements: usize,
    pub runs: usize,
    /// "best" or "median": which of the runs' values the table shows.
    pub stat: &'static str,
    pub columns: Vec<(&'a str, &'a str)>,
    pub outcomes: Vec<Outcome>,
    pub machine: Machine,
}

pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Report<'static> {
    /// The report a run wrote as JSON (see [`Report::json`]).
    pub fn from_json(text: &str) -> Result<Report<'static>, String> {
        let j: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let m = &j["machine"];
        let machine = Machine {
            date: s(&m["date"]),
            cpus: m["cpus"].as_u64().unwrap_or(0) as usize,
            cpu_model: s(&m["cpu_model"]),
            memory_gib: m["memory_gib"].as_f64().unwrap_or(0.0),
            disk: s(&m["disk"]),
            kernel: s(&m["kernel"]),
            rustc: s(&m["rustc"]),
            // Runs saved before the field existed used the system's allocator.
            allocator: m["allocator"].as_str().unwrap_or("system").to_string(),
            logtree: s(&m["logtree"]),
            load_before: s(&m["load_before"]),
            load_after: s(&m["load_after"]),
            wall_seconds: m["wall_seconds"].as_f64().unwrap_or(0.0),
        };
        let rows = j["rows"].as_array().ok_or("no rows")?;
        let failed = j["failed"].as_object().cloned().unwrap_or_default();
        let present = |id: &str| rows.iter().any(|r| r["values"].get(id).is_some()) || failed.contains_key(id);
        let columns: Vec<(&'static str, &'static str)> =
            crate::COLUMNS.iter().copied().filter(|(id, _)| present(id)).collect();
        let outcomes = columns
            .iter()
            .map(|(id, _)| match failed.get(*id) {
                Some(why) => Outcome::Failed(why.as_str().unwrap_or_default().to_string()),
                None => {
                    let shown = ROWS
                        .iter()
                        .map(|(row, _)| rows.iter().find(|r| r["id"] == *row).and_then(|r| r["values"][*id].as_f64()))
                        .collect();
                    Outcome::Ran { shown, runs: Vec::new() }
                }
            })
            .collect();
        let stat = if j["shown"] == "median" { "median" } else { "best" };
        Ok(Report {
            elements: j["elements"].as_u64().ok_or("no elements")? as usize,
            runs: j["runs"].as_u64().unwrap_or(1) as usize,
            stat,
            columns,
            outcomes,
            machine,
        })
    }
}

impl Report<'_> {
    pub fn label(&self, row: usize) -> String {
        ROWS[row].1.replace("{n}", &thousands(self.elements)).replace("{half}", &thousands(self.elements / 2))
    }

    pub fn value(&self, col: usize, row: usize) -> Option<f64> {
        match &self.outcomes[col] {
            Outcome::Ran { shown, .. } => shown[row],
            Outcome::Failed(_) => None,
        }
    }

    fn is_engine(&self, col: usize) -> bool {
        crate::COLUMNS.iter().position(|(id, _)| *id == self.columns[col].0).is_some_and(|i| i < ENGINES)
    }

    /// The column of the lowest value among the engines (not the baselines) in `row`.
    pub fn best_engine(&self, row: usize, except: Option<&str>) -> Option<usize> {
        (0..self.columns.len())
            .filter(|&c| self.is_engine(c) && Some(self.columns[c].0) != except)
            .filter_map(|c| self.value(c, row).map(|v| (c, v)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(c, _)| c)
    }

    fn col(&self, id: &str) -> Option<usize> {
        self.columns.iter().position(|(c, _)| *c == id)
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = write!(s, "| workload |");
        for (_, name) in &self.columns {
            let _ = write!(s, " {name} |");
        }
        let _ = write!(s, "\n|---|");
        for _ in &self.columns {
            let _ = write!(s, "---:|");
        }
        s.push('\n');
        for row in 0..ROWS.len() {
            let best = self.best_engine(row, None);
            let _ = write!(s, "| {} |", self.label(row));
            for col in 0..self.columns.len() {
                let cell = match (&self.outcomes[col], self.value(col, row)) {
                    (Outcome::Failed(_), _) => "failed".to_string(),
                    (_, None) => "n/a".to_string(),
                    (_, Some(v)) if Some(col) == best => format!("**{}**", fmt_value(v)),
                    (_, Some(v)) => fmt_value(v),
                };
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\nTimes in ms, sizes in MiB, {} of {} run(s); bold: the best engine (baselines aside).",
            self.stat, self.runs
        );
        for note in NOTES {
            let _ = writeln!(s, "- {note}");
        }
        for (col, o) in self.outcomes.iter().enumerate() {
            if let Outcome::Failed(why) = o {
                let _ = writeln!(s, "\n{}: {why}", self.columns[col].1);
            }
        }
        s
    }

    /// logtree's value divided by the best other engine's, by BTreeMap's and by the raw file's
    /// (above 1: logtree is slower or larger).
    pub fn ratios(&self, row: usize) -> (Option<(f64, String)>, Option<f64>, Option<f64>) {
        let Some(lt) = self.col("logtree").and_then(|c| self.value(c, row)) else { return (None, None, None) };
        let best = self
            .best_engine(row, Some("logtree"))
            .and_then(|c| self.value(c, row).map(|v| (lt / v, self.columns[c].1.to_string())));
        let base = |id| self.col(id).and_then(|c| self.value(c, row)).map(|v| lt / v);
        (best, base("btreemap"), base("rawfile"))
    }

    pub fn ratios_markdown(&self) -> String {
        let mut s = String::from(
            "| workload | logtree ÷ best peer | logtree ÷ BTreeMap | logtree ÷ append+fdatasync |\n|---|---:|---:|---:|\n",
        );
        let r = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}×"));
        for row in 0..ROWS.len() {
            let (best, bt, raw) = self.ratios(row);
            let best = best.map_or("n/a".to_string(), |(v, who)| format!("{v:.2}× ({who})"));
            let _ = writeln!(s, "| {} | {best} | {} | {} |", self.label(row), r(bt), r(raw));
        }
        s
    }

    pub fn csv(&self) -> String {
        let mut s = String::from("workload,unit");
        for (id, _) in &self.columns {
            let _ = write!(s, ",{id}");
        }
        s.push('\n');
        for (row, (id, _)) in ROWS.iter().enumerate() {
            let _ = write!(s, "{id},{}", if is_size(id) { "MiB" } else { "ms" });
            for col in 0..self.columns.len() {
                match self.value(col, row) {
                    Some(v) => {
                        let _ = write!(s, ",{v:.3}");
                    }
                    None => s.push(','),
                }
            }
            s.push('\n');
        }
        s
    }

    pub fn json(&self) -> String {
        fn q(s: &str) -> String {
            format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
        }
        let m = &self.machine;
        let mut s = String::from("{\n");
        let _ = writeln!(
            s,
            "  \"elements\": {},\n  \"runs\": {},\n  \"shown\": {},",
            self.elements,
            self.runs,
            q(self.stat)
        );
        let _ = writeln!(
            s,
            "  \"machine\": {{\"date\": {}, \"cpus\": {}, \"cpu_model\": {}, \"memory_gib\": {:.1}, \"disk\": {}, \"kernel\": {}, \"rustc\": {}, \"allocator\": {}, \"logtree\": {}, \"load_before\": {}, \"load_after\": {}, \"wall_seconds\": {:.0}}},",
            q(&m.date),
            m.cpus,
            q(&m.cpu_model),
            m.memory_gib,
            q(&m.disk),
            q(&m.kernel),
            q(&m.rustc),
            q(&m.allocator),
            q(&m.logtree),
            q(&m.load_before),
            q(&m.load_after),
            m.wall_seconds
        );
        let vers: Vec<String> = versions().iter().map(|(n, v)| format!("{}: {}", q(n), q(v))).collect();
        let _ = writeln!(s, "  \"versions\": {{{}}},", vers.join(", "));
        s.push_str("  \"rows\": [\n");
        for (row, (id, _)) in ROWS.iter().enumerate() {
            let cells: Vec<String> = (0..self.columns.len())
                .map(|c| {
                    let v = self.value(c, row).map_or("null".to_string(), |v| format!("{v:.3}"));
                    format!("{}: {v}", q(self.columns[c].0))
                })
                .collect();
            let per_run: Vec<String> = (0..self.columns.len())
                .filter_map(|c| match &self.outcomes[c] {
                    Outcome::Ran { runs, .. } => {
                        let vals: Vec<String> =
                            runs.iter().map(|r| r[row].map_or("null".to_string(), |v| format!("{v:.3}"))).collect();
                        Some(format!("{}: [{}]", q(self.columns[c].0), vals.join(", ")))
                    }
                    Outcome::Failed(_) => None,
                })
                .collect();
            let _ = write!(
                s,
                "    {{\"id\": {}, \"label\": {}, \"unit\": {}, \"values\": {{{}}}, \"every_run\": {{{}}}}}",
                q(id),
                q(&self.label(row)),
                q(if is_size(id) { "MiB" } else { "ms" }),
                cells.join(", "),
                per_run.join(", ")
            );
            s.push_str(if row + 1 < ROWS.len() { ",\n" } else { "\n" });
        }
        let notes: Vec<String> = NOTES.iter().map(|n| q(n)).collect();
        let _ = write!(s, "  ],\n  \"notes\": [{}],\n  \"failed\": {{", notes.join(", "));
        let failed: Vec<String> = self
            .outcomes
            .iter()
            .enumerate()
            .filter_map(|(c, o)| match o {
                Outcome::Failed(w) => Some(format!("{}: {}", q(self.columns[c].0), q(w))),
                Outcome::Ran { .. } => None,
            })
            .collect();
        s.push_str(&failed.join(", "));
        s.push_str("}\n}\n");
        s
    }
}
