//! The agent killed with SIGKILL while it ships, then restarted on the same buffer:
//! no gap in sequence numbers, none reused, duplicates only as whole resent batches.

mod common;

use common::*;
use linewatch_e2e::agent::{modbus_source, Agent, AgentConfig};
use linewatch_schemas::Flag;
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::points;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_shipping_and_restart_leaves_no_gap() {
    let (scratch, k, sim) = kinesalite_and_plc("sigkill", 1).await;

    let mut cfg = AgentConfig::new(scratch.path(), &k.endpoint(), STREAM);
    // 40 registers every 20 ms: ~2,000 points/s, so batches are always in flight.
    cfg.sources.push(modbus_source(
        SOURCE,
        &sim.address(),
        FILLER,
        "20ms",
        many_u16_tags(40),
    ));
    cfg.kinesis.linger = "20ms".into();
    let mut agent = Agent::start(cfg, scratch.path());

    agent
        .wait_metrics("the agent to be shipping", Duration::from_secs(30), |s| {
            let n = s.get("linewatch_agent_records_shipped_total");
            if n >= 2000.0 {
                Ok(())
            } else {
                Err(format!("records_shipped {n}"))
            }
        })
        .await;
    agent.kill();

    let at_kill = k.read_all(STREAM).await;
    let max_at_kill = seqs_of(&points::decode(&at_kill), SOURCE)
        .last()
        .copied()
        .unwrap_or(0);

    agent.start_again();
    let pts = wait_stream(
        &k,
        "points well past the kill",
        Duration::from_secs(60),
        |p| {
            let max = seqs_of(p, SOURCE).last().copied().unwrap_or(0);
            if max >= max_at_kill + 2000 {
                Ok(p.to_vec())
            } else {
                Err(format!(
                    "max sequence number {max}, {max_at_kill} at the kill"
                ))
            }
        },
    )
    .await;
    agent.assert_running();

    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("a gap across the SIGKILL: {e}"));
    let dups = points::check_duplicates(&pts).unwrap_or_else(|e| panic!("{e}"));
    // The batch in flight at the kill may be resent once; anything more needs a failed call.
    let errors = agent
        .scrape()
        .get("linewatch_agent_put_records_errors_total");
    assert!(
        dups.runs as f64 <= 1.0 + errors,
        "duplicates only as the resent in-flight batch: {} slices, {errors} failed calls since the restart",
        dups.runs
    );
    points::check_order_per_equipment(&pts).unwrap_or_else(|e| panic!("order: {e}"));
    assert_eq!(seqs_of(&pts, SOURCE).first(), Some(&1));

    // Each start connects the source anew: its first point after each carries Fst.
    let fst: Vec<u64> = points::unique(&pts)
        .iter()
        .filter(|p| p.point.meta.flags.contains(Flag::Fst))
        .map(|p| p.seq())
        .collect();
    assert!(
        fst.len() >= 2 && fst[0] == 1,
        "Fst after each (re)connect: {fst:?}"
    );
    assert!(fst.iter().any(|s| *s > 1), "Fst after the restart: {fst:?}");
    eprintln!(
        "sigkill: max sequence number {max_at_kill} in the stream at the kill; {} resent copies in {} runs",
        dups.copies, dups.runs
    );
}
