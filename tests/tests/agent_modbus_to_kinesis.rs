//! Values written into the Modbus PLC arrive in Kinesis as schema-valid data points,
//! in order per equipment, with the right types, scaling, quality and metadata.

mod common;

use common::*;
use linewatch_e2e::agent::{modbus_source, Agent, AgentConfig};
use linewatch_schemas::{Flag, Quality, Value};
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::modbus_plc::{coil, reg, Area, SimWrite};
use linewatch_testkit::points::{self, Shipped};
use serde_json::{json, Value as Json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2^53 + 1: a counter a float would round.
const BIG_COUNT: u64 = 9_007_199_254_740_993;

fn step1() -> Vec<SimWrite> {
    vec![
        reg(0, "f32", 21.5),
        reg(2, "f32", 2.75),
        reg(4, "u16", 2),
        reg(5, "u16", 1),
        reg(6, "i32", -120),
        reg(8, "u64", BIG_COUNT),
        reg(12, "u16", 523),
        reg(13, "i16", -150),
        reg(14, "f64", 1234.5),
        reg(20, "f32", 88.125).orders("little", "little"),
        reg(0, "f32", 4.25).area(Area::InputRegister),
        coil(0, true),
        coil(0, true).area(Area::DiscreteInput),
        reg(MODE_ADDRESS, "u16", 2),
    ]
}

fn step2() -> Vec<SimWrite> {
    vec![
        reg(0, "f32", 85.25),
        reg(4, "u16", 3),
        reg(8, "u64", BIG_COUNT + 1),
        reg(20, "f32", -3.5).orders("little", "little"),
        coil(0, false),
        reg(MODE_ADDRESS, "u16", 7),
    ]
}

/// A tag with a value map: 2 is named, 7 is not.
const MODE_ADDRESS: u16 = 30;

fn mode_tag() -> linewatch_e2e::agent::Tag {
    linewatch_e2e::agent::tag("machine_mode", "holding_register", MODE_ADDRESS, "u16")
        .mapped(&[(1, "STOPPED"), (2, "RUNNING")])
}

/// Step 1 sends the name with quality Ok; step 2's unknown code arrives as the raw
/// number, Uncertain, with rawQuality saying so.
fn mode_arrived(pts: &[Shipped], step: usize) -> Result<(), String> {
    let ok = points::of_tag(pts, "machine_mode").iter().any(|p| {
        if step == 1 {
            p.json["value"] == json!("RUNNING") && p.point.quality == Quality::Ok
        } else {
            p.json["value"] == json!(7)
                && p.point.quality == Quality::Uncertain
                && p.point.meta.raw_quality.as_deref() == Some("unmapped value 7")
        }
    });
    if ok {
        Ok(())
    } else {
        Err(format!("no mapped machine_mode point of step {step} yet"))
    }
}

/// What each tag must carry after step 1 and after step 2.
fn expected() -> Vec<(&'static str, &'static str, Json, Json)> {
    vec![
        ("water_temperature", FILLER, json!(21.5), json!(85.25)),
        ("pressure", FILLER, json!(2.75), json!(2.75)),
        ("machine_state", FILLER, json!(2), json!(3)),
        ("product", FILLER, json!(1), json!(1)),
        ("level_offset", FILLER, json!(-120), json!(-120)),
        (
            "bottles_total",
            FILLER,
            json!(BIG_COUNT),
            json!(BIG_COUNT + 1),
        ),
        ("tank_level", FILLER, json!(52.3), json!(52.3)),
        ("ambient_temperature", FILLER, json!(-2.0), json!(-2.0)),
        ("flow_rate", FILLER, json!(1234.5), json!(1234.5)),
        ("valve_position", FILLER, json!(88.125), json!(-3.5)),
        ("motor_current", MOTOR, json!(4.25), json!(4.25)),
        ("running", FILLER, json!(true), json!(false)),
        ("door_closed", FILLER, json!(true), json!(true)),
    ]
}

/// Same JSON type and (for floats) the same value within rounding of the scaling.
fn same(got: &Json, want: &Json) -> bool {
    match (got, want) {
        (Json::Number(g), Json::Number(w)) if w.is_f64() => {
            g.is_f64() && (g.as_f64().unwrap_or(f64::NAN) - w.as_f64().unwrap_or(0.0)).abs() < 1e-9
        }
        (Json::Number(g), Json::Number(w)) => {
            g.as_i64() == w.as_i64() && g.as_u64() == w.as_u64() && !g.is_f64()
        }
        _ => got == want,
    }
}

/// Every tag has a point with its value for this step (after an earlier one of the step before).
fn step_arrived(pts: &[Shipped], step: usize) -> Result<(), String> {
    for (name, _, v1, v2) in expected() {
        let want = if step == 1 { &v1 } else { &v2 };
        if !points::of_tag(pts, name)
            .iter()
            .any(|p| same(&p.json["value"], want))
        {
            return Err(format!("no {name} = {want} yet (step {step})"));
        }
    }
    mode_arrived(pts, step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_values_arrive_in_kinesis_typed_scaled_and_in_order() {
    let (scratch, k, mut sim) = kinesalite_and_plc("roundtrip", 2).await;
    // Start from values that differ from both steps.
    sim.set(&[
        reg(20, "f32", 1.0).orders("little", "little"),
        coil(0, false),
    ]);

    let started_ms = now_ms();
    let mut cfg = AgentConfig::new(scratch.path(), &k.endpoint(), STREAM);
    cfg.sources.push(modbus_source(
        "filling_machine",
        &sim.address(),
        FILLER,
        "100ms",
        filling_machine_tags()
            .into_iter()
            .chain([mode_tag()])
            .collect(),
    ));
    let mut agent = Agent::start(cfg, scratch.path());

    sim.set(&step1());
    wait_stream(
        &k,
        "every step-1 value in the stream",
        Duration::from_secs(30),
        |p| step_arrived(p, 1),
    )
    .await;
    sim.set(&step2());
    let pts = wait_stream(
        &k,
        "every step-2 value in the stream",
        Duration::from_secs(30),
        |p| step_arrived(p, 2).map(|_| p.to_vec()),
    )
    .await;
    agent.assert_running();

    // Decoding already checked every record against the JSON Schema and DataPoint.
    points::check_order_per_equipment(&pts).unwrap_or_else(|e| panic!("order: {e}"));
    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("gaps: {e}"));
    let dups = points::check_duplicates(&pts).unwrap_or_else(|e| panic!("duplicates: {e}"));
    assert_eq!(dups.copies, 0, "nothing failed, so nothing is resent");

    let unique = points::unique(&pts);
    let seqs = seqs_of(&pts, "filling_machine");
    assert_eq!(seqs.first(), Some(&1), "sequence numbers start at 1");

    for (name, equipment, v1, v2) in expected() {
        let of_tag = points::of_tag(&pts, name);
        // Per tag, values only move forward: ...initial, step 1..., step 2... (never back).
        let Some(i1) = of_tag.iter().position(|p| same(&p.json["value"], &v1)) else {
            panic!("{name}: no step-1 value {v1}: {:?}", values(&of_tag));
        };
        let Some(i2) = of_tag[i1..]
            .iter()
            .position(|p| same(&p.json["value"], &v2))
            .map(|i| i + i1)
        else {
            panic!(
                "{name}: no step-2 value {v2} after step 1: {:?}",
                values(&of_tag)
            );
        };
        if v1 != v2 {
            assert!(
                of_tag[i1..i2].iter().all(|p| same(&p.json["value"], &v1)),
                "{name}: only step-1 values between step 1 and step 2: {:?}",
                values(&of_tag)
            );
            assert!(
                of_tag[i2..].iter().all(|p| same(&p.json["value"], &v2)),
                "{name}: went back after step 2: {:?}",
                values(&of_tag)
            );
        }
        for p in &of_tag {
            assert_eq!(p.point.equipment_id, equipment, "{name}: equipment");
            assert_eq!(p.partition_key, equipment, "{name}: partition key");
            assert_eq!(p.point.quality, Quality::Ok, "{name}: {}", show(p));
            assert!(
                p.point.meta.flags.contains(Flag::Ats),
                "{name}: Modbus gives no timestamp: {}",
                show(p)
            );
            assert!(
                !p.point.meta.flags.contains(Flag::Syn),
                "{name}: {}",
                show(p)
            );
        }
    }

    // The mapped tag never shows a name where the code was unknown, nor a number for a known one.
    for p in points::of_tag(&pts, "machine_mode") {
        match &p.json["value"] {
            Json::String(name) => {
                assert!(
                    ["STOPPED", "RUNNING"].contains(&name.as_str())
                        && p.point.quality == Quality::Ok,
                    "{}",
                    show(p)
                )
            }
            Json::Number(n) => assert!(
                n.as_u64().is_some_and(|c| c != 1 && c != 2)
                    && p.point.quality == Quality::Uncertain,
                "{}",
                show(p)
            ),
            _ => panic!("machine_mode: {}", show(p)),
        }
    }

    // Types survive: the big counter is an exact integer, not a rounded float.
    let big = points::of_tag(&pts, "bottles_total")
        .into_iter()
        .find(|p| {
            matches!(p.point.value, Value::Int(_) | Value::UInt(_))
                && p.point.value.as_f64().is_some()
                && p.json["value"].as_u64() == Some(BIG_COUNT)
        })
        .unwrap_or_else(|| panic!("bottles_total {BIG_COUNT} exactly"));
    assert!(String::from_utf8_lossy(&big.raw).contains(&format!("\"value\":{BIG_COUNT}")));

    let end_ms = now_ms();
    for p in &unique {
        let m = &p.point.meta;
        assert_eq!(m.gateway_id.as_deref(), Some("gw-e2e"), "{}", show(p));
        assert_eq!(m.source_id, "filling_machine", "{}", show(p));
        assert!(
            p.point.timestamp >= started_ms && p.point.timestamp <= end_ms,
            "event time is the agent's clock around the read: {}",
            show(p)
        );
        assert!(
            m.created_at >= p.point.timestamp && m.created_at <= end_ms,
            "createdAt: {}",
            show(p)
        );
        if p.point.is_heartbeat() {
            assert_eq!(p.point.tag, "$heartbeat", "{}", show(p));
            assert!(p.point.value.is_null(), "{}", show(p));
        }
    }
    // The very first point of the source after it connected carries Fst.
    let first = unique
        .iter()
        .find(|p| p.seq() == 1)
        .expect("sequence number 1");
    // KPL aggregation (the default): the points travel many to a Kinesis record, each
    // record under one equipment's key, and unpack to the same points in order.
    let records: std::collections::BTreeSet<(&str, &str)> = pts
        .iter()
        .map(|p| (p.shard_id.as_str(), p.kinesis_seq.as_str()))
        .collect();
    assert!(
        records.len() < pts.len() && pts.iter().any(|p| p.sub_sequence > 0),
        "{} points in {} Kinesis records: not aggregated",
        pts.len(),
        records.len()
    );
    assert!(pts.iter().all(|p| p.partition_key == p.point.equipment_id));
    assert!(
        first.point.meta.flags.contains(Flag::Fst),
        "first point: {}",
        show(first)
    );

    let status = agent.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "SIGTERM is a clean stop: {status}\n{}",
        agent.log_tail(20)
    );
}

fn values(of_tag: &[&Shipped]) -> Vec<String> {
    of_tag.iter().map(|p| p.json["value"].to_string()).collect()
}

fn show(p: &Shipped) -> String {
    String::from_utf8_lossy(&p.raw).into_owned()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
