//! See fuzz/README.md; the logic (and what it checks) is `logtree::fuzzing::ops_model`, which
//! `tests/fuzz_corpus_test.rs` also runs on the seed corpus under plain `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    logtree::fuzzing::ops_model(data);
});
