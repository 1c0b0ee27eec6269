//! PutRecords calls whose outcome is unknown (Kinesis took the batch, the response was
//! lost): the agent resends them, so duplicates appear — but only as whole resent
//! batches, byte-identical, and with no gap.

mod common;

use common::*;
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::peers::modbus_plc::{ModbusSim, SimOptions};
use linewatch_testkit::points;
use linewatch_testkit::proxy::FaultProxy;
use linewatch_testkit::Scratch;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_responses_give_whole_resent_batches_only() {
    let scratch = Scratch::new("lost-responses");
    let k = Kinesalite::start(KinesaliteOptions::default(), scratch.path());
    k.create_stream(STREAM, 1).await;
    let proxy = FaultProxy::start(k.port()).await;
    let sim = ModbusSim::start(SimOptions::default(), scratch.path());

    let mut agent = start_filling_agent(scratch.path(), &proxy.endpoint(), &sim.address());
    wait_points(&k, "the agent ships through the proxy", 50).await;

    proxy.lose_responses_until(3, Duration::from_secs(30)).await;
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

    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("{e}"));
    let dups = points::check_duplicates(&pts).unwrap_or_else(|e| panic!("{e}"));
    points::check_order_per_equipment(&pts).unwrap_or_else(|e| panic!("order: {e}"));
    assert!(
        dups.copies > 0,
        "Kinesis took {} batches the agent never heard about: they must be resent",
        proxy.responses_lost()
    );
    let errors = agent
        .scrape()
        .get("linewatch_agent_put_records_errors_total");
    assert!(
        errors >= 1.0,
        "the unknown outcomes are counted: put_records_errors {errors}"
    );
    assert!(
        dups.runs as f64 <= errors,
        "each resent slice comes from a failed call: {} slices, {errors} failed calls",
        dups.runs
    );
    eprintln!(
        "lost responses: {} lost, {} resent copies in {} runs, {} points",
        proxy.responses_lost(),
        dups.copies,
        dups.runs,
        seqs_of(&pts, SOURCE).len()
    );
}
