//! A full buffer under `reject_new` (1 MiB, Kinesis down) keeps the oldest points,
//! refuses new ones while full, and counts every refusal in
//! `dropped{reason="overflow_reject_new"}`; once drained it accepts points again.

mod common;

use common::overflow;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_rejects_new_and_counts_them() {
    let o = overflow::run("reject_new").await;
    let (lo, hi) = overflow::check_accounting(&o);
    assert!(o.dropped > 0);
    assert_eq!(
        o.seqs.first(),
        Some(&1),
        "reject_new keeps the oldest point"
    );
    assert!(
        lo > 1000,
        "a full buffer's worth of the oldest points kept: 1..{lo}"
    );
    assert!(
        !o.marker_shipped,
        "the newest reading while full was rejected"
    );
    assert!(
        o.seqs.range(hi + 1..).count() > 0,
        "points are accepted again after the drain"
    );
    eprintln!(
        "reject_new: rejected {lo}..={hi} ({} points), {} shipped",
        o.dropped,
        o.seqs.len()
    );
}
