//! Kinesis stopped for a while and started again: the disk buffer grows, then drains,
//! and every sequence number arrives (no gap); duplicates only as whole resent batches.

mod common;

use common::*;
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::peers::modbus_plc::{reg, ModbusSim, SimOptions};
use linewatch_testkit::points;
use linewatch_testkit::Scratch;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_outage_buffers_then_drains_without_gaps() {
    let scratch = Scratch::new("outage");
    let mut k = Kinesalite::start(
        KinesaliteOptions::on_disk(scratch.path().join("kinesalite-db")),
        scratch.path(),
    );
    k.create_stream(STREAM, 1).await;
    let mut sim = ModbusSim::start(SimOptions::default(), scratch.path());
    sim.set(&[reg(0, "f32", 1.0)]);

    // ~13 tags every 50 ms: about 250 points/s.
    let mut agent = start_filling_agent(scratch.path(), &k.endpoint(), &sim.address());
    wait_points(&k, "the agent ships before the outage", 50).await;
    let at_outage = agent.scrape();
    let before = at_outage.get("linewatch_agent_buffer_records");
    let shipped_before = at_outage.get("linewatch_agent_records_shipped_total");

    // Outage. A value set now exists only in the agent's buffer until Kinesis is back.
    k.stop();
    sim.set(&[reg(0, "f32", 1001.0)]);
    let grown = agent
        .wait_metrics(
            "buffer_records to grow while Kinesis is down",
            Duration::from_secs(30),
            |s| {
                let n = s.get("linewatch_agent_buffer_records");
                if n >= 500.0 {
                    Ok(n)
                } else {
                    Err(format!("buffer_records {n}"))
                }
            },
        )
        .await;
    assert!(grown > before, "the buffer grew: {before} -> {grown}");
    let read_during_outage = agent
        .scrape()
        .sum("linewatch_agent_points_read_total", &[("source", SOURCE)]);
    assert!(read_during_outage > 0.0, "points_read counts readings");

    k.start_again();
    sim.set(&[reg(0, "f32", 2002.0)]);
    agent
        .wait_metrics(
            "the buffer to drain once Kinesis is back",
            Duration::from_secs(60),
            |s| {
                let n = s.get("linewatch_agent_buffer_records");
                if n < 200.0 {
                    Ok(())
                } else {
                    Err(format!("buffer_records {n}"))
                }
            },
        )
        .await;
    let shipped = agent.scrape().get("linewatch_agent_records_shipped_total");
    assert!(
        shipped - shipped_before >= grown - 200.0,
        "records_shipped grew by {} while the backlog of {grown} drained below 200",
        shipped - shipped_before
    );

    let pts = wait_stream(
        &k,
        "every point read during the outage, and the value set after it",
        Duration::from_secs(60),
        |p| {
            let seqs = seqs_of(p, SOURCE);
            let after = points::of_tag(p, "water_temperature")
                .iter()
                .any(|x| x.point.value.as_f64() == Some(2002.0));
            if (seqs.len() as f64) >= read_during_outage && after {
                Ok(p.to_vec())
            } else {
                Err(format!(
                    "{} distinct sequence numbers of {read_during_outage} read before the restart; 2002 seen: {after}",
                    seqs.len()
                ))
            }
        },
    )
    .await;

    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("a gap after the outage: {e}"));
    let dups = points::check_duplicates(&pts).unwrap_or_else(|e| panic!("{e}"));
    let errors = agent
        .scrape()
        .get("linewatch_agent_put_records_errors_total");
    assert!(
        dups.runs as f64 <= errors,
        "duplicates only from resent batches of failed calls: {} slices, {errors} failed calls",
        dups.runs
    );
    points::check_order_per_equipment(&pts).unwrap_or_else(|e| panic!("order: {e}"));
    let seqs = seqs_of(&pts, SOURCE);
    assert_eq!(
        seqs.first(),
        Some(&1),
        "nothing before the outage was lost either"
    );
    let temps: Vec<f64> = points::of_tag(&pts, "water_temperature")
        .iter()
        .filter_map(|p| p.point.value.as_f64())
        .collect();
    let pos = |v: f64| temps.iter().position(|t| *t == v);
    assert!(
        pos(1.0) < pos(1001.0) && pos(1001.0) < pos(2002.0),
        "values in the order they were set: first 1.0 at {:?}, 1001 at {:?}, 2002 at {:?}",
        pos(1.0),
        pos(1001.0),
        pos(2002.0)
    );
    eprintln!(
        "outage: buffer peaked at >= {grown}, {} points, {} resent copies in {} runs",
        seqs.len(),
        dups.copies,
        dups.runs
    );
    agent.assert_running();
}
