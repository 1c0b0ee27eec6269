//! A register the PLC rejects: that tag's points are `Bad` with the Modbus exception
//! in `meta.rawQuality`, the other tags stay `Ok`; the tag recovers when the PLC does.

mod common;

use common::*;
use linewatch_e2e::agent::{modbus_source, tag, Agent, AgentConfig};
use linewatch_schemas::Quality;
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::modbus_plc::{reg, Area};
use linewatch_testkit::points::{self, Shipped};
use std::time::Duration;

fn bad_with(p: &[Shipped], tag: &str, code: &str) -> Result<(), String> {
    let pts = points::of_tag(p, tag);
    match pts.iter().find(|x| x.point.quality == Quality::Bad) {
        Some(x) => {
            let raw = x.point.meta.raw_quality.clone().unwrap_or_default();
            if raw.contains(code) && x.point.value.is_null() {
                Ok(())
            } else {
                Err(format!(
                    "{tag} Bad but rawQuality {raw:?} lacks {code:?} or value not null: {}",
                    String::from_utf8_lossy(&x.raw)
                ))
            }
        }
        None => Err(format!("no Bad point for {tag} yet ({} points)", pts.len())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_register_is_bad_with_the_exception_others_ok() {
    let (scratch, k, mut sim) = kinesalite_and_plc("rejected", 1).await;
    sim.set(&[reg(0, "f32", 12.5), reg(4, "u16", 2), reg(40, "u16", 7)]);
    // Device failure on register 40 until cleared.
    sim.fail(Area::HoldingRegister, 40, 1, 4);

    let mut cfg = AgentConfig::new(scratch.path(), &k.endpoint(), STREAM);
    cfg.sources.push(modbus_source(
        "filling_machine",
        &sim.address(),
        FILLER,
        "100ms",
        vec![
            tag("water_temperature", "holding_register", 0, "f32"),
            tag("machine_state", "holding_register", 4, "u16"),
            // Outside the PLC's register map: IllegalDataAddress (0x02), from pymodbus.
            tag("ghost", "holding_register", 1000, "u16"),
            // Injected ServerDeviceFailure (0x04).
            tag("valve", "holding_register", 40, "u16"),
        ],
    ));
    let mut agent = Agent::start(cfg, scratch.path());

    let pts = wait_stream(
        &k,
        "Bad points for both rejected tags",
        Duration::from_secs(30),
        |p| {
            bad_with(p, "ghost", "0x02")?;
            bad_with(p, "valve", "0x04")?;
            Ok(p.to_vec())
        },
    )
    .await;
    for name in ["water_temperature", "machine_state"] {
        let of_tag = points::of_tag(&pts, name);
        assert!(!of_tag.is_empty(), "{name} keeps arriving");
        assert!(
            of_tag
                .iter()
                .all(|p| p.point.quality == Quality::Ok && p.point.meta.raw_quality.is_none()),
            "{name} stays Ok beside the rejected registers"
        );
    }
    let ghost = points::of_tag(&pts, "ghost");
    assert!(
        ghost.iter().all(|p| p.point.quality == Quality::Bad),
        "an address the PLC does not have is never Ok"
    );
    let raw = ghost[0].point.meta.raw_quality.clone().unwrap_or_default();
    assert!(
        raw.contains("IllegalDataAddress"),
        "rawQuality names the exception: {raw}"
    );
    agent
        .wait_metrics("read errors to be counted", Duration::from_secs(10), |s| {
            let e = counter(
                s,
                "linewatch_agent_read_errors_total",
                "source",
                "filling_machine",
            );
            if e > 0.0 {
                Ok(())
            } else {
                Err(format!("read_errors {e}"))
            }
        })
        .await;

    // The PLC stops failing register 40: the tag recovers with its value.
    sim.clear_faults();
    let pts = wait_stream(&k, "valve to recover", Duration::from_secs(30), |p| {
        let ok = points::of_tag(p, "valve")
            .iter()
            .any(|x| x.point.quality == Quality::Ok && x.point.value.as_f64() == Some(7.0));
        if ok {
            Ok(p.to_vec())
        } else {
            Err("valve not Ok = 7 yet".into())
        }
    })
    .await;
    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("{e}"));
    agent.assert_running();
}
