//! Partial failures of PutRecords with aggregation on (`kinesis.aggregation = "kpl"`, the
//! default): a proxy between the agent and kinesalite fails the entry of one key in
//! calls that also carry the other key, as a throttled shard does
//! (`ProvisionedThroughputExceededException` per entry).
//!
//! Design: the failed entry is removed from the request before kinesalite sees it, and
//! its error put back at its index in the answer (`PutRecordsProxy`). So what the agent
//! is told failed was not written, and what it is told succeeded was: the outcome is
//! exact, and the test can demand *no* duplicate, no gap, and strict order per key in
//! the stream — the resent points of the throttled key must land before anything later
//! of that key, and none of the other key's points may be held back or repeated.

mod common;

use common::*;
use linewatch_e2e::agent::{modbus_source, AgentConfig};
use linewatch_testkit::points;
use linewatch_testkit::put_records_proxy::PutRecordsProxy;
use linewatch_testkit::wait;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_entries_are_resent_without_loss_duplicate_or_reorder() {
    let (scratch, k, sim) = kinesalite_and_plc("kpl-partial-failure", 2).await;
    let proxy = PutRecordsProxy::start(k.port()).await;
    let mut cfg = AgentConfig::new(scratch.path(), &proxy.endpoint(), STREAM);
    cfg.sources.push(modbus_source(
        SOURCE,
        &sim.address(),
        FILLER,
        "50ms",
        filling_machine_tags(),
    ));
    let mut agent = linewatch_e2e::agent::Agent::start(cfg, scratch.path());
    wait_points(&k, "the agent ships through the proxy", 100).await;

    // Each key in turn: its aggregated record throttled in 8 calls, the other's written.
    for key in [FILLER, MOTOR, FILLER] {
        proxy.fail_key(key, 8);
        wait::until(
            "8 calls with a throttled entry",
            Duration::from_secs(30),
            async || match proxy.calls_left() {
                0 => Ok(()),
                n => Err(format!("{n} calls still to fail")),
            },
        )
        .await;
    }
    let read = agent
        .scrape()
        .sum("linewatch_agent_points_read_total", &[("source", SOURCE)]);
    let pts = wait_stream(
        &k,
        "every point read so far",
        Duration::from_secs(60),
        |p| {
            let n = seqs_of(p, SOURCE).len() as f64;
            if n >= read {
                Ok(p.to_vec())
            } else {
                Err(format!("{n} distinct sequence numbers of {read}"))
            }
        },
    )
    .await;
    let m = agent.scrape();
    agent.terminate(Duration::from_secs(20));

    assert_eq!(proxy.failed_calls(), 24, "the plan ran");
    let failed = proxy.failed_entries() as f64;
    let throttled = m.get("linewatch_agent_records_throttled_total");
    assert!(
        throttled >= failed,
        "each throttled entry (at least one point) is counted: records_throttled {throttled}, \
         {failed} entries failed"
    );
    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("loss: {e}"));
    let seqs = seqs_of(&pts, SOURCE);
    assert_eq!(seqs.first(), Some(&1), "from the first point");
    let dups = points::check_duplicates(&pts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        dups,
        points::Duplicates::default(),
        "a throttled entry was never written, an accepted one never resent: no copy at all"
    );
    // Strict: no resent copies to skip, so this is the order of every record in the stream.
    points::check_order_per_equipment(&pts).unwrap_or_else(|e| panic!("order: {e}"));
    for eq in [FILLER, MOTOR] {
        let n = pts.iter().filter(|p| p.point.equipment_id == eq).count();
        assert!(n > 50, "{eq}: {n} points");
    }
    eprintln!(
        "kpl partial failure: {} PutRecords calls, {} failed in {} calls, records_throttled {throttled}, {} points, no copy",
        proxy.put_calls(),
        failed,
        proxy.failed_calls(),
        pts.len()
    );
}
