//! Report by exception against the pymodbus PLC and the real agent process: a small
//! move is held back, a large one passes, `max_silence` resends an unchanged value, a
//! quality change passes, heartbeats keep coming while nothing changes, and SIGTERM
//! ends every tag with an `Lst` point carrying its last reading (a held-back one too).

mod common;

use common::*;
use linewatch_e2e::agent::{modbus_source, tag, Agent, AgentConfig};
use linewatch_schemas::{Flag, Quality, HEARTBEAT_TAG};
use linewatch_testkit::peers::modbus_plc::{reg, Area};
use linewatch_testkit::points::{self, Shipped};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const SILENCE_S: f64 = 3.0;

fn value(p: &Shipped) -> f64 {
    p.json["value"].as_f64().unwrap_or(f64::NAN)
}

/// Points of `name` in stream order (one shard: the order they were read in).
fn of(pts: &[Shipped], name: &str) -> Vec<Shipped> {
    points::of_tag(pts, name).into_iter().cloned().collect()
}

/// `marker`'s point with this value has arrived: everything read before that write
/// (same equipment, same key, in order) has arrived too.
fn marker_arrived(pts: &[Shipped], v: u64) -> Result<(), String> {
    if of(pts, "marker")
        .iter()
        .any(|p| p.json["value"] == json!(v))
    {
        Ok(())
    } else {
        Err(format!("no marker = {v} yet"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_changes_pass_silence_resends_quality_passes_and_sigterm_ends_with_lst() {
    let (scratch, k, mut sim) = kinesalite_and_plc("rbe", 1).await;
    sim.set(&[reg(0, "f32", 20.0), reg(2, "f32", 5.0), reg(4, "u16", 1)]);

    let mut cfg = AgentConfig::new(scratch.path(), &k.endpoint(), STREAM);
    let mut source = modbus_source(
        "rbe",
        &sim.address(),
        FILLER,
        "100ms",
        vec![
            tag("temperature", "holding_register", 0, "f32")
                .deadband(1.0, Some(&format!("{SILENCE_S}s"))),
            tag("flow", "holding_register", 2, "f32").deadband(1.0, None),
            // No keys: every reading is sent (the default), and it orders the test.
            tag("marker", "holding_register", 4, "u16"),
        ],
    );
    source.heartbeat_interval = Some("500ms".into());
    cfg.sources.push(source);
    let mut agent = Agent::start(cfg, scratch.path());

    wait_stream(&k, "the first readings", WAIT, |p| {
        for name in ["temperature", "flow"] {
            let first = of(p, name);
            match first.first() {
                Some(f) if f.point.meta.flags.contains(Flag::Fst) => {}
                Some(f) => return Err(format!("{name}'s first point is not Fst: {:?}", f.json)),
                None => return Err(format!("no {name} yet")),
            }
        }
        marker_arrived(p, 1)
    })
    .await;

    // A small move (0.4 < 1.0) is held back: counted, never shipped.
    sim.set(&[reg(0, "f32", 20.4)]);
    let suppressed = |agent: &mut Agent| {
        counter(
            &agent.scrape(),
            "linewatch_agent_exception_suppressed_total",
            "source",
            "rbe",
        )
    };
    let before = suppressed(&mut agent);
    linewatch_testkit::wait::until("readings of 20.4 held back", WAIT, async || {
        let now = suppressed(&mut agent);
        if now >= before + 6.0 {
            Ok(())
        } else {
            Err(format!("{now} suppressed"))
        }
    })
    .await;
    sim.set(&[reg(4, "u16", 2)]);
    let pts = wait_stream(&k, "marker 2", WAIT, |p| {
        marker_arrived(p, 2).map(|_| p.to_vec())
    })
    .await;
    let temps = of(&pts, "temperature");
    assert!(
        temps.iter().all(|p| (value(p) - 20.0).abs() < 1e-6),
        "only 20.0 (the first reading, and max_silence repeats) so far: {:?}",
        temps.iter().map(value).collect::<Vec<_>>()
    );
    // flow has no max_silence and never moved: its Fst point only.
    assert_eq!(of(&pts, "flow").len(), 1, "flow sent once");

    // A large move passes at once.
    sim.set(&[reg(0, "f32", 25.0)]);
    let pts = wait_stream(&k, "temperature 25", WAIT, |p| {
        if of(p, "temperature")
            .iter()
            .any(|t| (value(t) - 25.0).abs() < 1e-6)
        {
            Ok(p.to_vec())
        } else {
            Err("no temperature 25 yet".into())
        }
    })
    .await;
    let first_25 = of(&pts, "temperature")
        .into_iter()
        .find(|t| (value(t) - 25.0).abs() < 1e-6)
        .map(|t| t.point.timestamp)
        .unwrap_or_default();

    // Unchanged: sent again after max_silence, not before, and heartbeats keep coming.
    let pts = wait_stream(&k, "a max_silence resend of 25", WAIT, |p| {
        let resends = of(p, "temperature")
            .into_iter()
            .filter(|t| (value(t) - 25.0).abs() < 1e-6)
            .count();
        if resends >= 2 {
            Ok(p.to_vec())
        } else {
            Err(format!("{resends} temperature 25 points"))
        }
    })
    .await;
    let twenty_five: Vec<u64> = of(&pts, "temperature")
        .into_iter()
        .filter(|t| (value(t) - 25.0).abs() < 1e-6)
        .map(|t| t.point.timestamp)
        .collect();
    let gap_s = (twenty_five[1] - twenty_five[0]) as f64 / 1000.0;
    assert!(
        (SILENCE_S - 0.05..SILENCE_S + 2.0).contains(&gap_s),
        "resent after {gap_s} s (max_silence {SILENCE_S} s)"
    );
    let beats = of(&pts, HEARTBEAT_TAG)
        .into_iter()
        .filter(|h| h.point.timestamp > first_25)
        .count();
    assert!(beats >= 3, "{beats} heartbeats while values stood still");

    // A quality change passes even though the value did not move: Bad, then Ok again.
    sim.fail(Area::HoldingRegister, 2, 2, 4);
    wait_stream(&k, "flow Bad", WAIT, |p| match of(p, "flow").last() {
        Some(f) if f.point.quality == Quality::Bad => Ok(()),
        _ => Err("no Bad flow yet".into()),
    })
    .await;
    sim.clear_faults();
    let pts = wait_stream(&k, "flow Ok again", WAIT, |p| {
        let flow = of(p, "flow");
        match flow.last() {
            Some(f) if f.point.quality == Quality::Ok && flow.len() >= 3 => Ok(p.to_vec()),
            _ => Err("flow not back to Ok yet".into()),
        }
    })
    .await;
    let flow = of(&pts, "flow");
    assert!((value(&flow[flow.len() - 1]) - 5.0).abs() < 1e-6);

    // A small move held back, then a planned stop: the Lst point carries it.
    sim.set(&[reg(0, "f32", 25.3)]);
    let before = suppressed(&mut agent);
    linewatch_testkit::wait::until("25.3 held back", WAIT, async || {
        let now = suppressed(&mut agent);
        if now >= before + 4.0 {
            Ok(())
        } else {
            Err(format!("{now} suppressed"))
        }
    })
    .await;
    let status = agent.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    // What the stop wrote is durable but not shipped yet (a planned stop finishes the
    // call in flight only): the same agent started again, without its source, ships it.
    let mut cfg = agent.config().clone();
    cfg.sources.clear();
    drop(agent);
    let mut again = Agent::start(cfg, scratch.path());
    let pts = wait_stream(&k, "the Lst points", WAIT, |p| {
        let lst = points::unique(p)
            .into_iter()
            .filter(|x| x.point.meta.flags.contains(Flag::Lst))
            .count();
        if lst >= 4 {
            Ok(p.to_vec())
        } else {
            Err(format!("{lst} Lst points"))
        }
    })
    .await;
    let by_seq = |name: &str| {
        let mut v = of(&pts, name);
        v.sort_by_key(|p| p.seq());
        v
    };
    for (name, want) in [("temperature", 25.3), ("flow", 5.0), ("marker", 2.0)] {
        let of_tag = by_seq(name);
        let last = of_tag.last().expect("points of the tag");
        assert!(
            last.point.meta.flags.contains(Flag::Lst),
            "{name}: {:?}",
            last.json
        );
        assert!((value(last) - want).abs() < 1e-4, "{name}: {:?}", last.json);
        let lst = of_tag
            .iter()
            .filter(|p| p.point.meta.flags.contains(Flag::Lst))
            .count();
        assert_eq!(lst, 1, "{name}: one Lst");
    }
    let mut all: Vec<&Shipped> = points::unique(&pts);
    all.sort_by_key(|p| p.seq());
    let last = all.last().expect("points");
    assert_eq!(last.point.tag, HEARTBEAT_TAG, "the heartbeat comes last");
    assert!(last.point.meta.flags.contains(Flag::Lst) && last.point.meta.flags.contains(Flag::Wmk));
    let dups = points::check_duplicates(&pts).unwrap_or_else(|e| panic!("duplicates: {e}"));
    assert_eq!(dups.copies, 0);
    // An agent without sources still keeps its buffer's gauges (and health) up to date.
    linewatch_testkit::wait::until("the buffer gauge to reach 0", WAIT, async || {
        let left = again.scrape().get("linewatch_agent_buffer_records");
        if left == 0.0 {
            Ok(())
        } else {
            Err(format!("{left} records"))
        }
    })
    .await;
    let (code, body) = again.health().unwrap_or_else(|e| panic!("healthz: {e}"));
    assert_eq!(code, 200, "{body}");
}
