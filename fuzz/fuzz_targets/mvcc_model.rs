//! See fuzz/README.md; the logic (and what it checks) is `logtree::fuzzing::mvcc_model`, which
//! `tests/fuzz_corpus_test.rs` also runs on the seed corpus and `tests/mvcc_model_test.rs` runs
//! under proptest, in plain `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    logtree::fuzzing::mvcc_model(data);
});
