//! Model-based property test: random sequences of operations against a `BTreeMap` model.
//!
//! Proptest generates a `Vec<logtree::fuzzing::Op>` (the same operations, and the same checker
//! `fuzzing::run_model`, as the `ops_model` fuzz target) and shrinks a failure to a minimal
//! sequence. The steps: write transactions (create/delete bucket, put, seq_put, delete, reads
//! of their own writes, a `ReadTx` taken meanwhile, a nested `batch_tx` and a `defrag` refused
//! on the writer's thread, `force_commit`) ended by drop, `commit` or `rollback`; reads through
//! a fresh `ReadTx` (`get`, `range` with random bounds and limits, `scan`, `for_each` stopped by
//! its callback, `buckets`); `ReadTx`s kept and checked later (their view must not change,
//! whatever happens meanwhile, reopen and defrag included); `force_commit`; `hash` with and
//! without ignores, against the documented definition computed with crc32fast; close and
//! reopen; drop (no close) and reopen; a crash (the files copied as they are, the copy opened);
//! checkpoints reopened later with the log that followed them cut at or inside a frame (the
//! checkpoint's state must come back, the rest counted as torn bytes); snapshot, inspect and restore (equal content, hash
//! and counts); defrag. After every step the whole database is compared with the model through
//! every read method, along with `hash`, `size_in_use` (by its definition) and `stats`.
//!
//! Small alphabets (three buckets, eight keys sharing prefixes, plus an empty and an over-long
//! name) make collisions common; 4 KiB segments and values up to 9 KB make roll-overs and
//! single-value segments common; `sync: false` keeps it fast (durability is `fault_test.rs`'s
//! business).
//!
//! Default: `DEFAULT_CASES` cases (about 8 s in the test profile). `LOGTREE_MODEL_CASES=5000
//! cargo test --release --test model_test` runs more.

use logtree::fuzzing::{self, ModelConfig, Op, Read, TxEnd, TxOp, Value};
use proptest::prelude::*;

const DEFAULT_CASES: u32 = 200;

fn cases() -> u32 {
    std::env::var("LOGTREE_MODEL_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_CASES)
}

/// Mostly the three real buckets; sometimes the empty or the over-long name.
fn bucket() -> impl Strategy<Value = u8> {
    prop_oneof![10 => 0..3u8, 1 => 3..fuzzing::BUCKET_COUNT]
}

/// Mostly the eight real keys; sometimes the empty or the over-long key.
fn key() -> impl Strategy<Value = u8> {
    prop_oneof![12 => 0..8u8, 1 => 8..fuzzing::KEY_COUNT]
}

fn value() -> impl Strategy<Value = Value> {
    let len = prop_oneof![8 => 0..24u16, 2 => 200..1200u16, 1 => 3000..9000u16];
    (len, any::<u8>()).prop_map(|(len, seed)| Value { len, seed })
}

fn read() -> impl Strategy<Value = Read> {
    prop_oneof![
        (bucket(), key()).prop_map(|(bucket, key)| Read::Get { bucket, key }),
        (bucket(), proptest::option::of(key()), proptest::option::of(key()), 0..4u8)
            .prop_map(|(bucket, start, end, limit)| Read::Range { bucket, start, end, limit }),
        (bucket(), proptest::option::of(key()), proptest::option::of(key()))
            .prop_map(|(bucket, start, end)| Read::Scan { bucket, start, end }),
        (bucket(), 0..4u8).prop_map(|(bucket, stop_after)| Read::ForEach { bucket, stop_after }),
        Just(Read::Buckets),
    ]
}

fn tx_op() -> impl Strategy<Value = TxOp> {
    prop_oneof![
        3 => bucket().prop_map(TxOp::CreateBucket),
        1 => bucket().prop_map(TxOp::DeleteBucket),
        8 => (bucket(), key(), value(), any::<bool>()).prop_map(|(bucket, key, value, seq)| TxOp::Put {
            bucket,
            key,
            value,
            seq
        }),
        3 => (bucket(), key()).prop_map(|(bucket, key)| TxOp::Delete { bucket, key }),
        3 => read().prop_map(TxOp::Read),
        1 => Just(TxOp::TakeReadTx),
        1 => Just(TxOp::NestedBatchTx),
        1 => Just(TxOp::Defrag),
        1 => Just(TxOp::ForceCommit),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let end = prop_oneof![4 => Just(TxEnd::Drop), 2 => Just(TxEnd::Commit), 1 => Just(TxEnd::Rollback)];
    prop_oneof![
        10 => (proptest::collection::vec(tx_op(), 0..10), end.clone()).prop_map(|(ops, end)| Op::Tx { ops, end }),
        // Longer than a group of staged puts (16, src/backend/tx_buffer.rs).
        2 => (proptest::collection::vec(tx_op(), 10..48), end.clone()).prop_map(|(ops, end)| Op::Tx { ops, end }),
        // Past 64 writes, where a commit hands its fdatasync to the committer thread and
        // applies its staged puts after its commit frame (src/backend/batch_tx.rs).
        1 => (proptest::collection::vec(tx_op(), 150..260), end).prop_map(|(ops, end)| Op::Tx { ops, end }),
        2 => read().prop_map(Op::Read),
        2 => Just(Op::TakeReadTx),
        2 => any::<u8>().prop_map(Op::CheckReadTx),
        1 => any::<u8>().prop_map(Op::DropReadTx),
        1 => Just(Op::ForceCommit),
        1 => proptest::option::of((bucket(), key())).prop_map(Op::Hash),
        1 => Just(Op::CloseReopen),
        1 => Just(Op::DropReopen),
        1 => Just(Op::CrashReopen),
        1 => Just(Op::Checkpoint),
        2 => (any::<u8>(), any::<u16>()).prop_map(|(which, tear)| Op::ReopenCheckpoint { which, tear }),
        1 => any::<bool>().prop_map(|switch| Op::SnapshotRestore { switch }),
        1 => Just(Op::Defrag),
    ]
}

fn config() -> impl Strategy<Value = ModelConfig> {
    // A batch limit of 1 or 3 commits inline at the end of (almost) every BatchTx. Layers of
    // 1 or 4 entries are sealed and merged all the time; 8,192 (the default) almost never.
    (prop_oneof![Just(1usize), Just(3), Just(10_000)], prop_oneof![Just(1usize), Just(4), Just(8192)])
        .prop_map(|(batch_limit, layer_entries)| ModelConfig { batch_limit, layer_entries, ..ModelConfig::default() })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Failures are reported with the minimal sequence; no regression file is written into
        // the source tree (add a failing sequence as a plain test instead).
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model(cfg in config(), ops in proptest::collection::vec(op(), 1..40)) {
        fuzzing::run_model(cfg, &ops);
    }
}

/// Every kind of step at least once, in an order that makes each do something: so that the
/// default run covers them all whatever the random cases draw.
#[test]
fn every_step_kind_once() {
    let put = |bucket, key, len, seed| TxOp::Put { bucket, key, value: Value { len, seed }, seq: false };
    let ops = vec![
        Op::Tx {
            ops: vec![TxOp::CreateBucket(0), TxOp::CreateBucket(1), put(0, 0, 5, 1), put(0, 1, 6, 2)],
            end: TxEnd::Commit,
        },
        Op::TakeReadTx,
        Op::Checkpoint,
        Op::Tx {
            ops: vec![
                put(0, 0, 3000, 3),
                TxOp::TakeReadTx,
                TxOp::Read(Read::Range { bucket: 0, start: Some(0), end: Some(5), limit: 1 }),
                TxOp::NestedBatchTx,
                TxOp::Defrag,
                TxOp::ForceCommit,
                put(1, 3, 5000, 4),
                TxOp::Delete { bucket: 0, key: 1 },
                TxOp::Put { bucket: 1, key: 4, value: Value { len: 1, seed: 5 }, seq: true },
            ],
            end: TxEnd::Drop,
        },
        Op::Tx { ops: vec![put(0, 2, 4000, 6), put(0, 3, 4000, 7), TxOp::DeleteBucket(1)], end: TxEnd::Rollback },
        Op::Read(Read::ForEach { bucket: 0, stop_after: 1 }),
        Op::Read(Read::Scan { bucket: 1, start: Some(3), end: None }),
        Op::Hash(Some((0, 0))),
        Op::CheckReadTx(0),
        Op::ReopenCheckpoint { which: 0, tear: 100 },
        Op::CheckReadTx(1),
        Op::Tx { ops: vec![put(1, 5, 10, 8), TxOp::DeleteBucket(0)], end: TxEnd::Drop },
        Op::CrashReopen,
        Op::Defrag,
        Op::CheckReadTx(0),
        Op::SnapshotRestore { switch: true },
        Op::ForceCommit,
        Op::CloseReopen,
        Op::DropReopen,
        Op::DropReadTx(0),
        Op::Read(Read::Buckets),
    ];
    fuzzing::run_model(ModelConfig::default(), &ops);
    fuzzing::run_model(ModelConfig { batch_limit: 1, ..ModelConfig::default() }, &ops);
}
