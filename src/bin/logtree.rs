//! `logtree`: the command-line tool of the logtree storage engine — a benchmark, and commands
//! to inspect, check, hash, defragment, snapshot and restore a database.
//!
//! Every command that only looks opens the database read-only (a shared lock; no file is
//! modified, a torn tail is left in place). Errors print one line, `logtree: <what>`, on stderr
//! and exit non-zero: 1 for a failure, 2 for bad arguments, 3 when files are damaged.

// The crate root is this file, so its modules would be looked up beside it in src/bin/, where
// Cargo would take each for a binary of its own; they live in src/bin/logtree/ instead.
#[path = "logtree/bench.rs"]
mod bench;
#[path = "logtree/inspect.rs"]
mod inspect;
#[path = "logtree/mvcc_bench.rs"]
mod mvcc_bench;
#[path = "logtree/util.rs"]
mod util;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

use crate::util::{CliError, CliResult, EXIT_USAGE, Out};

/// mimalloc instead of the system's malloc: the index's many small copy-on-write node buffers
/// are allocated and freed faster and lie closer together (see DESIGN.md §10).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The logtree storage engine's command-line tool.
#[derive(Parser, Debug)]
#[command(
    name = "logtree",
    version,
    about = "Benchmark, inspect, check and maintain logtree databases",
    after_help = "Exit status: 0 success, 1 failure, 2 bad arguments, 3 damaged files (corruption).\n\
                  Commands that only read open the database read-only."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load a database and measure throughput and latency percentiles of load, random reads,
    /// range scans, mixed group-committed writes with readers, and an online defrag; or, with
    /// `--workload mvcc…`, of the MVCC layer's puts, ranges, txns and watches (after etcd's
    /// benchmark tool).
    Bench(bench::BenchArgs),
    /// Print buckets, keys, live and on-disk bytes, segments, the garbage ratio and what
    /// opening recovered.
    Stats {
        /// Database directory.
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Verify every frame's checksum and the transaction chain, read every value through the
    /// index, and recount the live bytes. Exits 3 on damage, naming the file and offset.
    Check {
        /// Database directory.
        dir: PathBuf,
    },
    /// Print the value of one key (as text when printable, else hex). Exits 1 if missing.
    Get {
        /// Database directory.
        dir: PathBuf,
        /// Bucket name (hex with --bucket-hex).
        bucket: String,
        /// The key (hex with --key-hex).
        key: String,
        /// The BUCKET argument is hex (for names that are not text; `stats` shows them in hex).
        #[arg(long)]
        bucket_hex: bool,
        /// The KEY argument is hex (for binary keys).
        #[arg(long)]
        key_hex: bool,
        /// Print the value as hex even when it is printable.
        #[arg(long)]
        hex: bool,
    },
    /// List a bucket's keys, ascending, one per line.
    Keys {
        /// Database directory.
        dir: PathBuf,
        /// Bucket name (hex with --bucket-hex).
        bucket: String,
        /// The BUCKET argument is hex (for names that are not text; `stats` shows them in hex).
        #[arg(long)]
        bucket_hex: bool,
        /// Only keys starting with P (hex with --key-hex).
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// At most N keys.
        #[arg(long, value_name = "N", value_parser = util::parse_count)]
        limit: Option<u64>,
        /// The --prefix argument is hex.
        #[arg(long)]
        key_hex: bool,
        /// Print keys as hex even when they are printable.
        #[arg(long)]
        hex: bool,
    },
    /// List a bucket's keys and values, ascending, one `KEY<TAB>VALUE` per line.
    Dump {
        /// Database directory.
        dir: PathBuf,
        /// Bucket name (hex with --bucket-hex).
        bucket: String,
        /// The BUCKET argument is hex (for names that are not text; `stats` shows them in hex).
        #[arg(long)]
        bucket_hex: bool,
        /// At most N entries.
        #[arg(long, value_name = "N", value_parser = util::parse_count)]
        limit: Option<u64>,
        /// Only keys starting with P (hex with --key-hex).
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// The --prefix argument is hex.
        #[arg(long)]
        key_hex: bool,
        /// Print keys and values as hex even when they are printable.
        #[arg(long)]
        hex: bool,
    },
    /// Print the content hash (u32, hex and decimal): equal content, equal hash.
    Hash {
        /// Database directory.
        dir: PathBuf,
    },
    /// Rewrite the live records and drop the garbage (opens the database read-write).
    Defrag {
        /// Database directory.
        dir: PathBuf,
        /// Cut a torn tail that reads as damage (`check` reports it, with its place) as a
        /// crash's would be, losing the transactions in it; without this, defrag refuses to.
        #[arg(long)]
        cut_damaged_tail: bool,
    },
    /// Save, restore or inspect snapshot images.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Write a compacted, checksummed image of the database to FILE (fsynced; replaced only
    /// with --force).
    Save {
        /// Database directory.
        dir: PathBuf,
        /// The image file to write.
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Lay an image down as a database in DIR, which must be missing or empty.
    Restore {
        /// The image file.
        file: PathBuf,
        /// The directory to create the database in.
        dir: PathBuf,
    },
    /// Verify an image and print its size, sequence number, hash, buckets and keys.
    Status {
        /// The image file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli, out: &mut Out) -> CliResult<()> {
    let dump = matches!(cli.command, Command::Dump { .. });
    match cli.command {
        Command::Bench(args) => bench::run(out, &args),
        Command::Stats { dir, json } => inspect::stats(out, &dir, json),
        Command::Check { dir } => inspect::check(out, &dir),
        Command::Get { dir, bucket, key, bucket_hex, key_hex, hex } => {
            inspect::get(out, &dir, &util::key_arg(&bucket, bucket_hex)?, &key, key_hex, hex)
        }
        // `keys` and `dump` list alike; `dump` adds the values.
        Command::Keys { dir, bucket, bucket_hex, prefix, limit, key_hex, hex }
        | Command::Dump { dir, bucket, bucket_hex, prefix, limit, key_hex, hex } => inspect::list(
            out,
            &inspect::Listing {
                dir: &dir,
                bucket: &util::key_arg(&bucket, bucket_hex)?,
                prefix: prefix.as_deref(),
                key_hex,
                limit,
                force_hex: hex,
                values: dump,
            },
        ),
        Command::Hash { dir } => inspect::hash(out, &dir),
        Command::Defrag { dir, cut_damaged_tail } => inspect::defrag(out, &dir, cut_damaged_tail),
        Command::Snapshot(SnapshotCommand::Save { dir, file, force }) => {
            inspect::snapshot_save(out, &dir, &file, force)
        }
        Command::Snapshot(SnapshotCommand::Restore { file, dir }) => inspect::snapshot_restore(out, &file, &dir),
        Command::Snapshot(SnapshotCommand::Status { file, json }) => inspect::snapshot_status(out, &file, json),
    }
}

/// clap's usage errors span several lines (the error, what is missing or allowed, a tip, the
/// usage, a pointer to `--help`); the tool's promise is one line, so the lines before the
/// usage are joined and the usage follows on the same line.
fn usage_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut what = Vec::new();
    let mut usage = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u.to_string());
            break;
        }
        if line.starts_with("For more information") {
            continue;
        }
        match line.strip_prefix("tip: ") {
            Some(tip) => what.push(format!("(tip: {tip})")),
            None => what.push(line.strip_prefix("error: ").unwrap_or(line).to_string()),
        }
    }
    let what = if what.is_empty() { "invalid arguments".to_string() } else { what.join(" ") };
    match usage {
        Some(u) => format!("{what}; usage: {u} (see --help)"),
        None => format!("{what} (see 'logtree --help')"),
    }
}

fn main() -> ExitCode {
    // A panic is a bug; still, the user gets one line and an exit code, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        if bench::interrupted() {
            return; // the files vanished under a thread: the process is exiting (bench.rs)
        }
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("logtree: internal error{place}: {} (please report it)", what.replace('\n', " "));
    }));

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            // --help and --version go to stdout with success; a closed pipe is no failure.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `logtree` alone, or `logtree snapshot`: the help, on stderr, as a usage error.
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("logtree: {}", usage_error(&e));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut out = util::stdout();
    let result = run(cli, &mut out).and_then(|()| out.flush().map_err(CliError::from));
    while bench::interrupted() {
        // An interrupt is removing the run's files (which may be why it failed): its handler
        // exits with 130 once they are gone.
        std::thread::park();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            // What was printed before the failure still goes out, then the one error line.
            let _ = out.flush();
            eprintln!("logtree: {e}");
            ExitCode::from(e.code())
        }
    }
}
