//! `logtree::set_index_huge_pages`: with it off, the index's memory stays on the pages the
//! allocator gave it; with it on, the index's regions are backed with huge pages.
//! One test in a binary of its own, since the setting is process-wide.

use std::time::{Duration, Instant};

use logtree::Backend;

/// Huge-page KiB of the process's anonymous memory, from `/proc/self/smaps_rollup`. Nothing
/// else in this test asks for huge pages (with `transparent_hugepage` = `madvise`, none are
/// given unasked; with `always`, the check is skipped).
fn huge_kib() -> u64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").expect("smaps_rollup");
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .map(|kib| kib.trim().trim_end_matches("kB").trim().parse().unwrap())
        .unwrap_or(0)
}

/// Whether this kernel backs memory with huge pages on request and only then (Linux 6.1 or
/// later, `transparent_hugepage` = `madvise`).
fn kernel_can() -> bool {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    thp.contains("[madvise]") && version >= (6, 1)
}

fn load(db: &Backend, from: u64, n: u64) {
    let mut tx = db.batch_tx();
    tx.create_bucket("b").ok();
    for i in from..from + n {
        tx.put("b", i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes(), b"v").unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn the_index_is_backed_with_huge_pages_only_when_asked() {
    if !cfg!(target_os = "linux") || !kernel_can() || std::env::var_os("GLIBC_TUNABLES").is_some() {
        eprintln!("no huge pages on request here (or glibc asked for them itself): nothing to check");
        return;
    }
    logtree::set_index_huge_pages(false);
    let (db, _dir) = Backend::open_temp().unwrap();
    load(&db, 0, 300_000);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(huge_kib(), 0, "turned off: the index keeps its 4 KiB pages");

    logtree::set_index_huge_pages(true);
    load(&db, 300_000, 300_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while huge_kib() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(huge_kib() >= 2048, "turned on: the index's new regions are backed");
    let rtx = db.read_tx();
    for i in (0..600_000u64).step_by(1009) {
        assert_eq!(
            rtx.get("b", i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes()).unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }
}
