//! The commands that look at a database or an image: stats, check, get, keys, dump, hash,
//! defrag, and snapshot save / restore / status.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use logtree::ReadTx;
use serde::Serialize;

use crate::util::{
    CliError, CliResult, Out, file_beside, grouped, hex, human_bytes, human_duration, interactive, key_arg,
    open_read_only, open_read_write, parent_dir, path_text, printable, show, sized,
};

/// Encoded sizes of the records `size_in_use` counts (DESIGN.md §2.5): a put is a tag byte and
/// three u32s before key and value; a bucket creation a tag byte and two u32s before the name.
/// `check` recounts them independently of the engine's running total.
const PUT_FIXED: u64 = 13;
const CREATE_BUCKET_FIXED: u64 = 9;

/// `stats --json`.
#[derive(Serialize)]
struct StatsReport {
    /// The directory as given (bytes that are not UTF-8 shown as U+FFFD).
    path: String,
    buckets: Vec<BucketReport>,
    keys: u64,
    /// Bytes on disk: segments and manifest.
    size: u64,
    /// Bytes of live records.
    size_in_use: u64,
    /// `(size - size_in_use) / size`: overwritten and deleted records and framing.
    garbage_ratio: f64,
    segments: usize,
    /// Sequence number of the last transaction.
    seq: u64,
    /// Approximate bytes of memory the index takes.
    index_bytes: u64,
    recovery: RecoveryReport,
}

#[derive(Serialize)]
struct BucketReport {
    /// The name as text when printable, else hex.
    name: String,
    /// The name in hex, always.
    name_hex: String,
    keys: usize,
    /// `name` is hex: the name is not text.
    #[serde(skip)]
    in_hex: bool,
}

#[derive(Serialize)]
struct RecoveryReport {
    /// Complete transactions replayed at open.
    transactions: u64,
    /// Bytes after the last complete transaction (left in place: the open was read-only).
    torn_bytes: u64,
    /// The torn tail begins with a write lost out of order (valid frames follow it).
    lost_write: bool,
    /// Where the torn tail's first frame that does not verify begins.
    torn_at: Option<PlaceReport>,
    /// That frame shows no mark of an interrupted write: most likely damage (`check`
    /// fails).
    tail_damaged: bool,
    /// The last segment was read from the disk, not the page cache (`SYNC-FAILED` said so).
    reread_from_disk: bool,
}

#[derive(Serialize)]
struct PlaceReport {
    /// The segment's file name.
    file: String,
    offset: u64,
}

impl RecoveryReport {
    fn of(rec: logtree::RecoveryStats) -> RecoveryReport {
        RecoveryReport {
            transactions: rec.transactions,
            torn_bytes: rec.torn_bytes,
            lost_write: rec.lost_write,
            torn_at: rec.torn_at.map(|at| PlaceReport { file: at.file_name(), offset: at.offset }),
            tail_damaged: rec.tail_damaged,
            reread_from_disk: rec.reread_from_disk,
        }
    }
}

fn garbage_ratio(size: u64, in_use: u64) -> f64 {
    if size == 0 { 0.0 } else { size.saturating_sub(in_use) as f64 / size as f64 }
}

/// `logtree stats DIR [--json]`.
pub fn stats(out: &mut Out, dir: &Path, json: bool) -> CliResult<()> {
    let db = open_read_only(dir)?;
    let s = db.stats();
    let rec = db.recovery_stats();
    let rtx = db.read_tx();
    let mut buckets = Vec::new();
    for name in rtx.buckets() {
        let keys = rtx.bucket_len(&name)?;
        let in_hex = !printable(&name);
        buckets.push(BucketReport { name: show(&name, false), name_hex: hex(&name), keys, in_hex });
    }
    let report = StatsReport {
        path: path_text(dir),
        buckets,
        keys: s.keys,
        size: s.size,
        size_in_use: s.size_in_use,
        garbage_ratio: garbage_ratio(s.size, s.size_in_use),
        segments: s.segments,
        seq: s.written_seq,
        index_bytes: s.index_bytes,
        recovery: RecoveryReport::of(rec),
    };
    if json {
        // Encoded whole before any of it is printed: a failure prints no half document.
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    let r = &report;
    writeln!(out, "database      {}", dir.display())?;
    writeln!(out, "buckets       {}", r.buckets.len())?;
    let width = r.buckets.iter().map(|b| b.name.chars().count()).max().unwrap_or(0);
    for b in &r.buckets {
        // A name shown in hex is marked, so that it is not taken for a text name of the same
        // letters, and says how to name it.
        let mark = if b.in_hex { "  (name in hex: --bucket-hex)" } else { "" };
        writeln!(out, "  {:<width$}  {} keys{mark}", b.name, grouped(b.keys as u64))?;
    }
    writeln!(out, "keys          {}", grouped(r.keys))?;
    writeln!(out, "size          {} on disk, {}", sized(r.size), plural(r.segments, "segment"))?;
    writeln!(out, "in use        {} of live records", sized(r.size_in_use))?;
    writeln!(out, "garbage       {:.1} % (overwritten and deleted records, framing)", r.garbage_ratio * 100.0)?;
    writeln!(out, "last seq      {}", r.seq)?;
    writeln!(out, "index memory  {} (approx.)", human_bytes(r.index_bytes))?;
    writeln!(
        out,
        "recovery      {} transactions replayed, torn tail {}",
        grouped(r.recovery.transactions),
        torn_text(&r.recovery)
    )?;
    Ok(())
}

/// `1 segment`, `3 segments`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{} {what}s", grouped(n as u64)) }
}

/// ` at seg-….log offset N`, where the torn tail's first bad frame is.
fn place(r: &RecoveryReport) -> String {
    r.torn_at.as_ref().map(|p| format!(" at {} offset {}", p.file, p.offset)).unwrap_or_default()
}

fn torn_text(r: &RecoveryReport) -> String {
    let mut text = if r.torn_bytes == 0 {
        "none".to_string()
    } else if r.tail_damaged {
        format!(
            "{} B after the last complete transaction, beginning with a frame that does not \
             verify and shows no mark of an interrupted write{} (most likely damage; a read-write open removes it)",
            grouped(r.torn_bytes),
            place(r)
        )
    } else if r.lost_write {
        format!(
            "{} B after the last complete transaction, beginning with a write lost out of order \
             (valid frames follow it; a read-write open removes them)",
            grouped(r.torn_bytes)
        )
    } else {
        format!(
            "{} B after the last complete transaction (a cut write; a read-write open removes it)",
            grouped(r.torn_bytes)
        )
    };
    if r.reread_from_disk {
        text.push_str("; the last segment was read from the disk (SYNC-FAILED: an fdatasync of it failed)");
    }
    text
}

/// `logtree check DIR`: opening verifies every frame's checksum and the chain of sequence
/// numbers (a failure is the engine's `Corruption` error, with file and offset); then every
/// value is read through the index and the live bytes are recounted.
pub fn check(out: &mut Out, dir: &Path) -> CliResult<()> {
    let started = Instant::now();
    let db = open_read_only(dir)?;
    let s = db.stats();
    let rec = db.recovery_stats();
    // A torn tail that a crash explains (a write cut short) held no acknowledged transaction
    // and passes; one that reads as damage, or that complete transactions follow, fails:
    // a read-write open would cut transactions that may have been committed (DESIGN.md §6).
    if let Some(at) = rec.torn_at.filter(|_| rec.lost_write || rec.tail_damaged) {
        let what = if rec.lost_write {
            "the log stops verifying here, yet complete transactions follow (a write lost out of order \
             by a power cut, or damage); a read-write open would cut them with it"
        } else {
            "the last transaction's frame does not verify and shows no mark of an interrupted write \
             (most likely bytes changed on the disk); a read-write open would cut it"
        };
        return Err(CliError::corruption(format!(
            "check failed: {} at offset {}: {what}",
            dir.join(at.file_name()).display(),
            at.offset
        )));
    }
    let rtx = db.read_tx();
    let pb = progress_bar(s.keys, "reading values");
    let mut live = 0u64;
    let mut keys = 0u64;
    let mut value_bytes = 0u64;
    let buckets = rtx.buckets();
    for name in &buckets {
        live += CREATE_BUCKET_FIXED + name.len() as u64;
        let mut in_bucket = 0usize;
        let mut prev: Option<&[u8]> = None;
        // `scan` is what `for_each` runs, as an iterator: the walk can stop with a finding of
        // its own (an out-of-order index) without dressing it up as an engine error.
        for kv in rtx.scan(name, [], None)? {
            let (k, v) = kv?;
            // An index out of order would make range reads skip keys.
            if prev.is_some_and(|p| p >= k) {
                return Err(CliError::corruption(format!(
                    "check failed: the index of bucket {} is out of order at key {}",
                    show(name, false),
                    show(k, false)
                )));
            }
            prev = Some(k);
            live += PUT_FIXED + k.len() as u64 + v.len() as u64;
            value_bytes += v.len() as u64;
            in_bucket += 1;
            if in_bucket.is_multiple_of(4096) {
                pb.inc(4096);
            }
        }
        pb.inc((in_bucket % 4096) as u64);
        if in_bucket != rtx.bucket_len(name)? {
            return Err(CliError::corruption(format!(
                "check failed: bucket {} yields {in_bucket} keys but counts {}",
                show(name, false),
                rtx.bucket_len(name)?
            )));
        }
        keys += in_bucket as u64;
    }
    pb.finish_and_clear();
    if live != s.size_in_use {
        return Err(CliError::corruption(format!(
            "check failed: live bytes recounted as {live} but size_in_use() is {}",
            s.size_in_use
        )));
    }
    if keys != s.keys {
        return Err(CliError::corruption(format!("check failed: {keys} keys read but stats count {}", s.keys)));
    }
    writeln!(out, "ok: {}", dir.display())?;
    writeln!(
        out,
        "  log         {}, {}: every frame's checksum and the transaction chain verified ({} transactions)",
        plural(s.segments, "segment"),
        human_bytes(s.size),
        grouped(rec.transactions)
    )?;
    writeln!(
        out,
        "  index       {}, {} keys: every value read through the index ({})",
        plural(buckets.len(), "bucket"),
        grouped(keys),
        human_bytes(value_bytes)
    )?;
    writeln!(out, "  live bytes  {} recounted = size_in_use()", grouped(live))?;
    writeln!(out, "  torn tail   {}", torn_text(&RecoveryReport::of(rec)))?;
    writeln!(out, "  took        {}", human_duration(started.elapsed()))?;
    Ok(())
}

/// A progress bar to stderr over `len` items, or a hidden one when no one is watching.
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    if !interactive() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{msg:>14} [{bar:40}] {percent:>3}% {human_pos}/{human_len} ({eta})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}

/// The bucket, checked to exist so that the error names the database too.
fn check_bucket(rtx: &ReadTx, dir: &Path, bucket: &[u8]) -> CliResult<()> {
    if !rtx.has_bucket(bucket) {
        return Err(CliError::new(format!("bucket {} not found in {}", shown_name(bucket), dir.display())));
    }
    Ok(())
}

/// A bucket name in a message: quoted text, or hex marked as such.
fn shown_name(name: &[u8]) -> String {
    if printable(name) { format!("{:?}", String::from_utf8_lossy(name)) } else { format!("{} (hex)", hex(name)) }
}

/// `logtree get DIR BUCKET KEY`: the value; a missing key is an error (exit 1).
pub fn get(out: &mut Out, dir: &Path, bucket: &[u8], key: &str, key_hex: bool, force_hex: bool) -> CliResult<()> {
    let key = key_arg(key, key_hex)?;
    if key.is_empty() {
        return Err(CliError::usage("KEY must not be empty (no key is)"));
    }
    let db = open_read_only(dir)?;
    let rtx = db.read_tx();
    check_bucket(&rtx, dir, bucket)?;
    match rtx.get_ref(bucket, &key)? {
        Some(v) => writeln!(out, "{}", show(v, force_hex))?,
        None => {
            return Err(CliError::new(format!(
                "key {} not found in bucket {}",
                show(&key, key_hex),
                shown_name(bucket)
            )));
        }
    }
    Ok(())
}

/// What `keys` and `dump` list.
pub struct Listing<'a> {
    /// The database.
    pub dir: &'a Path,
    /// The bucket.
    pub bucket: &'a [u8],
    /// Only keys starting with this (as given on the command line).
    pub prefix: Option<&'a str>,
    /// `--prefix` is hex.
    pub key_hex: bool,
    /// At most this many entries.
    pub limit: Option<u64>,
    /// Print keys and values in hex even when printable.
    pub force_hex: bool,
    /// Print values too (`dump`), tab-separated.
    pub values: bool,
}

/// `logtree keys` and `logtree dump`: one entry per line, ascending.
pub fn list(out: &mut Out, l: &Listing<'_>) -> CliResult<()> {
    let prefix = match l.prefix {
        Some(p) => key_arg(p, l.key_hex)?,
        None => Vec::new(),
    };
    let db = open_read_only(l.dir)?;
    let rtx = db.read_tx();
    check_bucket(&rtx, l.dir, l.bucket)?;
    let limit = l.limit.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    // A scan from the prefix, stopped at the first key without it: keys are sorted, so every
    // key with the prefix lies in one run starting there.
    for kv in rtx.scan(l.bucket, &prefix, None)?.take(limit) {
        let (k, v) = kv?;
        if !k.starts_with(&prefix) {
            break;
        }
        if l.values {
            writeln!(out, "{}\t{}", show(k, l.force_hex), show(v, l.force_hex))?;
        } else {
            writeln!(out, "{}", show(k, l.force_hex))?;
        }
    }
    Ok(())
}

/// `logtree hash DIR`.
pub fn hash(out: &mut Out, dir: &Path) -> CliResult<()> {
    let db = open_read_only(dir)?;
    let h = db.hash(&[])?;
    writeln!(out, "hash 0x{h:08x} ({h})")?;
    Ok(())
}

/// `logtree defrag DIR`: the one command besides restore that writes.
pub fn defrag(out: &mut Out, dir: &Path, cut_damaged_tail: bool) -> CliResult<()> {
    let db = open_read_write(dir, cut_damaged_tail)?;
    let d = db.defrag()?;
    db.close()?;
    writeln!(out, "defragmented {}", dir.display())?;
    writeln!(out, "  size before     {}", sized(d.size_before))?;
    writeln!(out, "  size after      {}", sized(d.size_after))?;
    writeln!(out, "  in use          {}", sized(d.size_in_use))?;
    writeln!(out, "  took            {}", human_duration(d.duration))?;
    writeln!(out, "  writer paused   {} at most", human_duration(d.longest_writer_pause))?;
    writeln!(out, "  catch-up rounds {}", d.catch_up_rounds)?;
    Ok(())
}

/// `logtree snapshot save DIR FILE`: the image is written under a temporary name beside FILE,
/// fsynced, then renamed, so FILE is either absent or complete; an existing FILE is kept unless
/// `force`.
pub fn snapshot_save(out: &mut Out, dir: &Path, file: &Path, force: bool) -> CliResult<()> {
    if !force && file.exists() {
        return Err(CliError::new(format!("{} exists; pass --force to replace it", file.display())));
    }
    let db = open_read_only(dir)?;
    let snap = db.snapshot()?;
    let parent = parent_dir(file);
    let mut tmp = file_beside(file)?;
    let pb = progress_bar(snap.size(), "writing");
    let size = {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, pb.wrap_write(tmp.as_file_mut()));
        let size = snap.write_to(&mut w)?;
        w.flush().map_err(|e| CliError::io("cannot write", file, e))?;
        size
    };
    pb.finish_and_clear();
    tmp.as_file().sync_all().map_err(|e| CliError::io("cannot fsync", file, e))?;
    let persisted = if force { tmp.persist(file).map(|_| ()) } else { tmp.persist_noclobber(file).map(|_| ()) };
    persisted.map_err(|e| CliError::io("cannot rename the image to", file, e.error))?;
    // The rename is durable only once the directory is synced.
    File::open(&parent).and_then(|d| d.sync_all()).map_err(|e| CliError::io("cannot fsync", &parent, e))?;
    let h = db.hash(&[])?;
    writeln!(out, "saved {} to {}", dir.display(), file.display())?;
    writeln!(out, "  size  {}", sized(size))?;
    writeln!(out, "  seq   {}", snap.seq())?;
    writeln!(out, "  hash  0x{h:08x} ({h})")?;
    Ok(())
}

fn open_image(file: &Path) -> CliResult<BufReader<File>> {
    let f = File::open(file).map_err(|e| CliError::io("cannot open", file, e))?;
    // A directory opens, then fails at the first read with an error the engine cannot name
    // the file in.
    let meta = f.metadata().map_err(|e| CliError::io("cannot read", file, e))?;
    if meta.is_dir() {
        return Err(CliError::new(format!("{} is a directory, not a snapshot image", file.display())));
    }
    Ok(BufReader::with_capacity(1 << 20, f))
}

/// An image error names the image file: the engine calls it `<snapshot image>`, since it only
/// sees a reader.
fn image_error(file: &Path, e: logtree::Error) -> CliError {
    let mut err = CliError::from(e);
    if let CliError::Failed { message, .. } = &mut err {
        *message = message.replace("<snapshot image>", &file.display().to_string());
    }
    err
}

/// `logtree snapshot restore FILE DIR`.
pub fn snapshot_restore(out: &mut Out, file: &Path, dir: &Path) -> CliResult<()> {
    let mut r = open_image(file)?;
    logtree::restore(&mut r, dir).map_err(|e| image_error(file, e))?;
    let db = open_read_only(dir)?;
    let s = db.stats();
    let h = db.hash(&[])?;
    // No sequence number here: a restored database begins a log of its own, so its numbers
    // are not the image's (`snapshot status` shows the image's).
    writeln!(out, "restored {} to {}", file.display(), dir.display())?;
    writeln!(out, "  buckets  {}", s.buckets)?;
    writeln!(out, "  keys     {}", grouped(s.keys))?;
    writeln!(out, "  size     {}", sized(s.size))?;
    writeln!(out, "  hash     0x{h:08x} ({h})")?;
    Ok(())
}

/// `logtree snapshot status FILE`: reads the whole image, verifying every checksum, the counts
/// and the content hash.
pub fn snapshot_status(out: &mut Out, file: &Path, json: bool) -> CliResult<()> {
    let mut r = open_image(file)?;
    let info = logtree::inspect_snapshot(&mut r).map_err(|e| image_error(file, e))?;
    if json {
        #[derive(Serialize)]
        struct Status {
            file: String,
            size: u64,
            seq: u64,
            hash: u32,
            buckets: u64,
            keys: u64,
        }
        let s = Status {
            file: path_text(file),
            size: info.size,
            seq: info.seq,
            hash: info.hash,
            buckets: info.buckets,
            keys: info.keys,
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    writeln!(out, "{}: verified", file.display())?;
    writeln!(out, "  size     {}", sized(info.size))?;
    writeln!(out, "  seq      {}", info.seq)?;
    writeln!(out, "  hash     0x{:08x} ({})", info.hash, info.hash)?;
    writeln!(out, "  buckets  {}", info.buckets)?;
    writeln!(out, "  keys     {}", grouped(info.keys))?;
    Ok(())
}
