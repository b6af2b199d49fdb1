//! What every command shares: the error type and exit codes, stdout that survives a closed
//! pipe, opening a database, and the formatting of bytes, sizes and durations.

use std::fmt;
use std::io::{self, BufWriter, IsTerminal, StdoutLock, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use logtree::{Backend, Config};

/// Exit code for a failure: a missing directory or bucket, an I/O error, a lock held elsewhere.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad arguments (the code clap uses too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the files are damaged or not what this build can read, so that scripts can
/// tell "the database is corrupt" from "the command could not run".
pub const EXIT_CORRUPTION: u8 = 3;

/// Why a command stopped. Its `Display` is the one line printed after `logtree: `.
#[derive(Debug)]
pub enum CliError {
    /// A failure to report, with the exit code to use.
    Failed {
        /// One line, without the `logtree: ` prefix.
        message: String,
        /// The process exit code.
        code: u8,
    },
    /// stdout was closed by the reader (`logtree dump DIR b | head`): not an error, the reader
    /// simply wanted no more; the process exits quietly with success.
    BrokenPipe,
}

impl CliError {
    /// A failure with [`EXIT_FAILURE`].
    pub fn new(message: impl Into<String>) -> CliError {
        CliError::Failed { message: message.into(), code: EXIT_FAILURE }
    }

    /// A failure with [`EXIT_USAGE`]: the arguments are wrong.
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::Failed { message: message.into(), code: EXIT_USAGE }
    }

    /// A failure with [`EXIT_CORRUPTION`].
    pub fn corruption(message: impl Into<String>) -> CliError {
        CliError::Failed { message: message.into(), code: EXIT_CORRUPTION }
    }

    /// An I/O error on a file of the tool's own (not the engine's), with what was being done.
    pub fn io(context: &str, path: &Path, e: io::Error) -> CliError {
        CliError::new(format!("{context} {}: {e}", path.display()))
    }

    /// The exit code.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Failed { code, .. } => *code,
            CliError::BrokenPipe => 0,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Messages are printed on one line: a multi-line cause (rare, from the OS or the
            // engine) is joined rather than spilling onto further lines.
            CliError::Failed { message, .. } => f.write_str(&message.replace('\n', " ")),
            CliError::BrokenPipe => f.write_str("broken pipe"),
        }
    }
}

impl From<logtree::Error> for CliError {
    fn from(e: logtree::Error) -> CliError {
        let code = if e.is_corruption() { EXIT_CORRUPTION } else { EXIT_FAILURE };
        CliError::Failed { message: e.to_string(), code }
    }
}

/// `?` on a write to [`Out`]: the only `io::Error`s converted implicitly are stdout's; every
/// other file operation maps its error with [`CliError::io`] and the file's name.
impl From<io::Error> for CliError {
    fn from(e: io::Error) -> CliError {
        if e.kind() == io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::new(format!("cannot write to standard output: {e}"))
        }
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> CliError {
        CliError::new(format!("cannot encode JSON: {e}"))
    }
}

/// The result of a command.
pub type CliResult<T> = Result<T, CliError>;

/// Buffered stdout. `println!` panics when the reader of a pipe goes away; writes through this
/// return the error instead, which becomes a quiet exit.
pub type Out = BufWriter<Stdout>;

/// A buffered handle on stdout.
pub fn stdout() -> Out {
    BufWriter::new(Stdout { inner: io::stdout().lock(), outlive_reader: false, reader_gone: false })
}

/// stdout, which may go on without its reader: see [`Stdout::outlive_reader`].
pub struct Stdout {
    inner: StdoutLock<'static>,
    outlive_reader: bool,
    reader_gone: bool,
}

impl Stdout {
    /// From now on, a reader that goes away (`logtree bench --json out.json | head -1`) does
    /// not end the command: what it would have read is dropped, and the command finishes what
    /// it has to leave behind (the `--json` file). Without this, a closed pipe ends the
    /// command quietly, with success, which is what a listing piped into `head` wants.
    pub fn outlive_reader(&mut self) {
        self.outlive_reader = true;
    }
}

impl Stdout {
    /// `r`, or `gone` in its place once the reader has left and the command outlives it.
    fn unless_gone<T>(&mut self, r: io::Result<T>, gone: T) -> io::Result<T> {
        match r {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe && self.outlive_reader => {
                self.reader_gone = true;
                Ok(gone)
            }
            r => r,
        }
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.reader_gone {
            return Ok(buf.len());
        }
        let r = self.inner.write(buf);
        self.unless_gone(r, buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.reader_gone {
            return Ok(());
        }
        let r = self.inner.flush();
        self.unless_gone(r, ())
    }
}

/// A path in JSON output: as text, with any bytes that are not UTF-8 shown as U+FFFD (JSON
/// strings are Unicode; serde refuses such a path outright).
pub fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A file to be written, then moved over `target` once complete ([`tempfile::NamedTempFile`]'s
/// `persist`): it lies beside `target` (a rename does not cross file systems), and it is
/// created with mode 0666 less the umask, as a file the shell creates would be (tempfile's own
/// default, 0600, would be kept by the rename). Dropped unpersisted, it is removed, so a
/// command that fails leaves `target` as it found it.
pub fn file_beside(target: &Path) -> CliResult<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let parent = parent_dir(target);
    tempfile::Builder::new()
        .prefix(".logtree-")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(&parent)
        .map_err(|e| CliError::io("cannot create", target, e))
}

/// The directory `file` is in (`.` for a bare file name).
pub fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether progress bars should be drawn: only for a person watching a terminal, so that
/// redirected output (a file, a test, CI) holds results and nothing else.
pub fn interactive() -> bool {
    io::stdout().is_terminal()
}

/// Checks that `dir` looks like a database before the engine is asked to open it, so that a
/// typo gives "no such directory" rather than an I/O error about a lock file, and so that a
/// read-write open (defrag) never creates a new, empty database where none was meant.
pub fn check_db_dir(dir: &Path) -> CliResult<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CliError::new(format!("{}: no such directory", dir.display())));
        }
        Err(e) => return Err(CliError::io("cannot read", dir, e)),
        Ok(m) if !m.is_dir() => return Err(CliError::new(format!("{}: not a directory", dir.display()))),
        Ok(_) => {}
    }
    // The file names are the on-disk contract (DESIGN.md §2). Only "no such file" means no
    // MANIFEST: a directory the user may not search hides it, and says so (EACCES).
    let manifest = dir.join("MANIFEST");
    match std::fs::metadata(&manifest) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(CliError::new(format!("{} is not a logtree database (it has no MANIFEST)", dir.display())))
        }
        Err(e) => Err(CliError::io("cannot read", &manifest, e)),
    }
}

/// Opens an existing database read-only: a shared lock, no file modified, a torn tail left as
/// it is. Opening verifies every frame's checksum and the transaction chain.
pub fn open_read_only(dir: &Path) -> CliResult<Backend> {
    check_db_dir(dir)?;
    let mut config = Config::new(dir);
    config.read_only = true;
    Ok(Backend::open(config)?)
}

/// Opens an existing database for writing, with the default settings but one: unless
/// `cut_damaged_tail`, a torn tail that no crash explains is not cut (`Config::cut_damaged_tail`):
/// maintenance must not drop what may be committed transactions unasked; the user looks first
/// (`logtree check` says where).
pub fn open_read_write(dir: &Path, cut_damaged_tail: bool) -> CliResult<Backend> {
    check_db_dir(dir)?;
    let mut config = Config::new(dir);
    config.cut_damaged_tail = cut_damaged_tail;
    Backend::open(config).map_err(|e| {
        let uncut = e.is_uncut_damaged_tail();
        let mut err = CliError::from(e);
        if uncut && let CliError::Failed { message, .. } = &mut err {
            message.push_str(
                "; `logtree check` says more, and `logtree defrag --cut-damaged-tail` cuts it, losing what it holds",
            );
        }
        err
    })
}

/// Whether bytes can be shown as text: valid UTF-8 with no control characters (a newline or a
/// tab in a key would break the one-entry-per-line output).
pub fn printable(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok_and(|s| !s.chars().any(char::is_control))
}

/// Lower-case hex, two digits a byte.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Bytes for output: as text when printable, else as hex (always hex when `force_hex`).
pub fn show(b: &[u8], force_hex: bool) -> String {
    if !force_hex && printable(b) { String::from_utf8_lossy(b).into_owned() } else { hex(b) }
}

/// Parses hex (upper or lower case, an optional `0x`) into bytes.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    if !digits.len().is_multiple_of(2) {
        return Err(format!("{s:?} is not hex: odd number of digits"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            digits.get(i..i + 2).and_then(|d| u8::from_str_radix(d, 16).ok()).ok_or_else(|| format!("{s:?} is not hex"))
        })
        .collect()
}

/// A key given on the command line: as typed, or decoded from hex with `--key-hex`.
pub fn key_arg(s: &str, as_hex: bool) -> CliResult<Vec<u8>> {
    if as_hex { parse_hex(s).map_err(CliError::usage) } else { Ok(s.as_bytes().to_vec()) }
}

/// Parses a count with an optional decimal suffix: `100k`, `1m`, `2g`, `1_000_000`, `1e6`.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "").to_ascii_lowercase();
    let (digits, mult) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], 1_000u64),
        Some(b'm') => (&t[..t.len() - 1], 1_000_000),
        Some(b'g') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (&t[..], 1),
    };
    let bad = || format!("{s:?} is not a count (examples: 2000, 100k, 1m, 1e6)");
    if let Ok(n) = digits.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(bad);
    }
    // Scientific notation, but only for whole numbers: "1e6" yes, "1.5" no.
    let f: f64 = digits.parse().map_err(|_| bad())?;
    let v = f * mult as f64;
    if digits.contains(['e', 'E']) && v.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&v) {
        Ok(v as u64)
    } else {
        Err(bad())
    }
}

/// A number with thousands separators: `1,234,567`.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A size in binary units: `512 B`, `1.50 KiB`, `173.2 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v >= 100.0 { format!("{v:.1} {}", UNITS[unit]) } else { format!("{v:.2} {}", UNITS[unit]) }
}

/// A size in binary units with the exact count beside it: `318 B`, `1.50 KiB (1,536 B)`.
pub fn sized(n: u64) -> String {
    if n < 1024 { format!("{n} B") } else { format!("{} ({} B)", human_bytes(n), grouped(n)) }
}

/// A duration given in nanoseconds, in the unit that keeps 3 significant digits readable.
pub fn human_ns(ns: u64) -> String {
    let v = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.2} µs", v / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", v / 1e6)
    } else {
        format!("{:.2} s", v / 1e9)
    }
}

/// [`human_ns`] of a `Duration`.
pub fn human_duration(d: Duration) -> String {
    human_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(parse_count("2000"), Ok(2000));
        assert_eq!(parse_count("100k"), Ok(100_000));
        assert_eq!(parse_count("1M"), Ok(1_000_000));
        assert_eq!(parse_count("1_000_000"), Ok(1_000_000));
        assert_eq!(parse_count("1e6"), Ok(1_000_000));
        assert!(parse_count("1.5").is_err());
        assert!(parse_count("-3").is_err());
        assert!(parse_count("k").is_err());
        assert!(parse_count("99999999999999999999").is_err());
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(parse_hex("00ABff"), Ok(vec![0, 0xab, 0xff]));
        assert_eq!(parse_hex("0x0a"), Ok(vec![10]));
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert!(parse_hex("é0").is_err());
    }

    #[test]
    fn showing_bytes() {
        assert_eq!(show(b"hello", false), "hello");
        assert_eq!(show(b"hello", true), "68656c6c6f");
        assert_eq!(show(b"a\tb", false), "610962");
        assert_eq!(show(&[0xff, 0xfe], false), "fffe");
        assert_eq!(show("héllo".as_bytes(), false), "héllo");
    }

    #[test]
    fn numbers() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(sized(318), "318 B");
        assert_eq!(sized(1536), "1.50 KiB (1,536 B)");
        assert_eq!(human_ns(812), "812 ns");
        assert_eq!(human_ns(1_500), "1.50 µs");
        assert_eq!(human_ns(2_500_000), "2.50 ms");
    }
}
