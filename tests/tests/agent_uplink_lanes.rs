//! The gateway's uplink is cut for several seconds (a proxy between the agent and a
//! real Kinesis endpoint drops every connection; nothing reaches the server) while the
//! agent keeps reading a real Modbus server. When the link returns, the agent ships
//! live data first and the backlog behind it:
//!
//! * the points buffered during the cut arrive flagged `Bfl`, and none of the live ones
//!   does; each lane keeps its own per-equipment order; nothing is missing;
//! * a value set on the PLC right after the link returns reaches Kinesis before the
//!   backlog has finished (the backlog is paced to the shard's budget above the live
//!   reserve, so it takes a few seconds);
//! * live heartbeats sent while the backlog drains declare `meta.lowWatermark`, never
//!   above an event time of the backlog still to come; once it is in, they stop;
//! * the agent's backfill metrics count the drain.

mod common;

use common::*;
use linewatch_e2e::agent::{modbus_source, Agent, AgentConfig};
use linewatch_schemas::Flag;
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::peers::modbus_plc::{reg, ModbusSim, SimOptions};
use linewatch_testkit::points::{self, Shipped};
use linewatch_testkit::proxy::FaultProxy;
use linewatch_testkit::Scratch;
use std::collections::HashMap;
use std::time::Duration;

fn is_backfill(p: &Shipped) -> bool {
    p.point.meta.flags.contains(Flag::Bfl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_uplink_returns_live_first_with_the_backlog_behind_it() {
    let scratch = Scratch::new("uplink-lanes");
    let k = Kinesalite::start(KinesaliteOptions::default(), scratch.path());
    k.create_stream(STREAM, 1).await;
    let proxy = FaultProxy::start(k.port()).await;
    let mut sim = ModbusSim::start(SimOptions::default(), scratch.path());
    sim.set(&[reg(0, "f32", 1.0)]);

    let mut cfg = AgentConfig::new(scratch.path(), &proxy.endpoint(), STREAM);
    cfg.kinesis.backfill_after = Some("2s".into());
    let mut source = modbus_source(
        SOURCE,
        &sim.address(),
        FILLER,
        "20ms",
        filling_machine_tags(),
    );
    // Several heartbeats within the few seconds the backlog drains.
    source.heartbeat_interval = Some("250ms".into());
    cfg.sources.push(source);
    let mut agent = Agent::start(cfg, scratch.path());
    wait_points(&k, "the agent ships before the cut", 50).await;

    proxy.cut(true);
    sim.set(&[reg(0, "f32", 1001.0)]);
    // About 650 points/s: wait for a backlog of a few seconds' drain at 800/s.
    agent
        .wait_metrics(
            "a backlog in the backfill lane",
            Duration::from_secs(60),
            |s| {
                let opened = s.get("linewatch_agent_backfill_opened_total");
                let backlog = s.get("linewatch_agent_backfill_records");
                if opened >= 1.0 && backlog >= 4_000.0 {
                    Ok(())
                } else {
                    Err(format!("opened {opened}, backfill_records {backlog}"))
                }
            },
        )
        .await;
    proxy.cut(false);
    sim.set(&[reg(0, "f32", 2002.0)]);
    let read = agent
        .scrape()
        .sum("linewatch_agent_points_read_total", &[("source", SOURCE)]);

    let pts = wait_stream(
        &k,
        "every point read, and the value set after the cut",
        Duration::from_secs(90),
        |p| {
            let n = seqs_of(p, SOURCE).len() as f64;
            let after = points::of_tag(p, "water_temperature")
                .iter()
                .any(|x| x.point.value.as_f64() == Some(2002.0));
            // Live points keep coming: wait for the backlog's gap to close too.
            let whole = points::check_no_gaps(p);
            if n >= read && after && whole.is_ok() {
                Ok(p.to_vec())
            } else {
                Err(format!(
                    "{n} distinct sequence numbers of {read}; 2002 seen: {after}; {whole:?}"
                ))
            }
        },
    )
    .await;
    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("a gap: {e}"));
    points::check_order_per_equipment(&pts).unwrap_or_else(|e| panic!("order: {e}"));

    let unique = points::unique(&pts);
    let backlog: Vec<&&Shipped> = unique.iter().filter(|p| is_backfill(p)).collect();
    assert!(
        backlog.len() >= 4_000,
        "the backlog is flagged: {} Bfl points",
        backlog.len()
    );
    // Readings of the value set during the cut are in the backlog (but for the few
    // queued before the agent saw the link down); the first before and after are live.
    let temps = |v: f64| -> Vec<&Shipped> {
        unique
            .iter()
            .filter(|p| p.point.tag == "water_temperature" && p.point.value.as_f64() == Some(v))
            .copied()
            .collect()
    };
    let during = temps(1001.0);
    let flagged = during.iter().filter(|p| is_backfill(p)).count();
    assert!(
        flagged * 2 > during.len(),
        "{flagged} of {} readings during the cut are backfill",
        during.len()
    );
    let temp = |v: f64| {
        *temps(v)
            .first()
            .unwrap_or_else(|| panic!("water_temperature {v} never arrived"))
    };
    assert!(!is_backfill(temp(1.0)) && !is_backfill(temp(2002.0)));

    // Live first: the first reading after the cut is in the stream before the backlog's end.
    let mut at: HashMap<(&str, u32), usize> = HashMap::new();
    for (i, x) in pts.iter().enumerate() {
        at.entry((x.kinesis_seq.as_str(), x.sub_sequence))
            .or_insert(i);
    }
    let pos = |p: &Shipped| at[&(p.kinesis_seq.as_str(), p.sub_sequence)];
    let live_at = pos(temp(2002.0));
    let backlog_end = backlog.iter().map(|p| pos(p)).max().unwrap();
    let behind = backlog.iter().filter(|p| pos(p) > live_at).count();
    assert!(
        live_at < backlog_end && behind >= 500,
        "the live value at {live_at} must overtake the backlog (ends at {backlog_end}); {behind} backlog points after it"
    );

    // Live heartbeats during the drain declare a low watermark at or below every
    // backlog event time still to come.
    // The least backfill event time from each position of the stream on.
    let mut still_to_come = vec![None; pts.len() + 1];
    for (i, x) in pts.iter().enumerate().rev() {
        let here = is_backfill(x).then_some(x.point.timestamp);
        still_to_come[i] = match (here, still_to_come[i + 1]) {
            (Some(a), Some(b)) => Some(u64::min(a, b)),
            (a, b) => a.or(b),
        };
    }
    let mut declared = 0;
    for (i, p) in pts.iter().enumerate() {
        if !p.point.is_heartbeat() || is_backfill(p) {
            continue;
        }
        match (p.point.meta.low_watermark, still_to_come[i]) {
            (Some(low), Some(next)) => {
                assert!(
                    low <= next,
                    "heartbeat declares {low}, backlog from {next} still to come"
                );
                declared += 1;
            }
            (None, Some(next)) if i > live_at => {
                panic!(
                    "a live heartbeat at {i} declares nothing while backlog from {next} is unsent"
                )
            }
            _ => {}
        }
    }
    let live_heartbeats = pts[live_at..backlog_end]
        .iter()
        .filter(|p| p.point.is_heartbeat() && !is_backfill(p))
        .count();
    assert!(
        declared >= 1,
        "heartbeats during the drain declare the backlog: {live_heartbeats} live heartbeats between {live_at} and {backlog_end}"
    );

    let m = agent
        .wait_metrics(
            "the backlog gauge back to 0",
            Duration::from_secs(30),
            |s| {
                if s.get("linewatch_agent_backfill_records") == 0.0 {
                    Ok(s.clone())
                } else {
                    Err(format!(
                        "{} left",
                        s.get("linewatch_agent_backfill_records")
                    ))
                }
            },
        )
        .await;
    assert!(m.get("linewatch_agent_backfill_shipped_total") >= backlog.len() as f64);
    let delay = m.get("linewatch_agent_live_delay_seconds");
    assert!(delay < 5.0, "live delay {delay} s after the drain");
    eprintln!(
        "uplink cut: {} backlog points, the first live value at stream position {live_at} ahead of {behind} of them, {declared} heartbeats declared the backlog, live delay {delay:.3} s",
        backlog.len()
    );
    agent.assert_running();
}
