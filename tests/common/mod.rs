//! Helpers shared by the integration tests that compare a backend's content with a model.

use std::collections::BTreeMap;

use logtree::ReadTx;

/// Every pair of every bucket: `(bucket, key) → value`.
pub type Content = BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>>;

/// Everything `r` shows, read with `for_each` bucket by bucket.
pub fn content_of(r: &ReadTx) -> Content {
    let mut m = Content::new();
    for b in r.buckets() {
        r.for_each(&b, |k, v| {
            m.insert((b.clone(), k.to_vec()), v.to_vec());
            Ok(())
        })
        .expect("for_each over a listed bucket");
    }
    m
}
