//! See fuzz/README.md; the logic (and what it checks) is `logtree::fuzzing::open_segments`, which
//! `tests/fuzz_corpus_test.rs` also runs on the seed corpus under plain `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = logtree::fuzzing::open_segments(data);
});
