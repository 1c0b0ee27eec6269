//! A full buffer under `drop_oldest` (1 MiB, Kinesis down) evicts the oldest points,
//! keeps the newest, and counts every eviction in `dropped{reason="overflow_drop_oldest"}`.

mod common;

use common::overflow;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_drops_oldest_and_counts_them() {
    let o = overflow::run("drop_oldest").await;
    let (lo, hi) = overflow::check_accounting(&o);
    assert!(o.dropped > 0);
    // Oldest gone: the dropped run starts at the oldest points. Only records already
    // handed to the shipper stay (they may be in flight; the shipper reads ahead at most
    // four batches of 500), and the newest reading while full survived.
    assert!(
        lo <= 2001,
        "the dropped run starts at the oldest points: {lo}..={hi}"
    );
    assert!(
        o.marker_shipped,
        "drop_oldest keeps the newest reading (the marker)"
    );
    let kept_after = o.seqs.range(hi + 1..).count();
    assert!(
        kept_after >= 1000,
        "a full buffer's worth of newer points kept: {kept_after}"
    );
    eprintln!(
        "drop_oldest: dropped {lo}..={hi} ({} points), {} shipped",
        o.dropped,
        o.seqs.len()
    );
}
