//! An unreachable PLC: the agent starts anyway, the other source keeps shipping, the
//! failures are counted, and the source connects once the PLC appears.

mod common;

use common::*;
use linewatch_e2e::agent::{modbus_source, unreachable_address, Agent, AgentConfig};
use linewatch_schemas::Quality;
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::modbus_plc::{reg, ModbusSim, SimOptions};
use linewatch_testkit::points;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_plc_does_not_stop_the_other_source() {
    let (scratch, k, mut sim) = kinesalite_and_plc("unreachable", 1).await;
    let offline = unreachable_address();
    let offline_port: u16 = offline
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");

    let mut cfg = AgentConfig::new(scratch.path(), &k.endpoint(), STREAM);
    cfg.sources.push(modbus_source(
        "filler",
        &sim.address(),
        FILLER,
        "100ms",
        filling_machine_tags(),
    ));
    cfg.sources.push(modbus_source(
        "labeller",
        &offline,
        LABELLER,
        "100ms",
        vec![linewatch_e2e::agent::tag(
            "speed",
            "holding_register",
            0,
            "f32",
        )],
    ));
    let mut agent = Agent::start(cfg, scratch.path());

    // The agent runs and reports the dead PLC.
    agent
        .wait_metrics(
            "the labeller's failures to be counted",
            Duration::from_secs(30),
            |s| {
                let errors = counter(s, "linewatch_agent_read_errors_total", "source", "labeller");
                let up = counter(s, "linewatch_agent_source_connected", "source", "labeller");
                if errors >= 3.0 && up == 0.0 {
                    Ok(())
                } else {
                    Err(format!("labeller read_errors {errors}, connected {up}"))
                }
            },
        )
        .await;
    let (code, body) = agent.health().unwrap_or_else(|e| panic!("/healthz: {e}"));
    assert!(
        code == 200 || code == 503,
        "/healthz answers: {code} {body}"
    );

    // ...while the filler keeps shipping: a value set now arrives.
    sim.set(&[reg(0, "f32", 77.5)]);
    wait_stream(
        &k,
        "the filler's new value while the labeller is down",
        Duration::from_secs(30),
        |p| {
            let ok = points::of_tag(p, "water_temperature")
                .iter()
                .any(|x| x.point.value.as_f64() == Some(77.5) && x.point.quality == Quality::Ok);
            if ok {
                Ok(())
            } else {
                Err("no water_temperature 77.5".into())
            }
        },
    )
    .await;
    agent.assert_running();

    // The labeller's PLC appears: the source connects (with backoff) and ships.
    let mut labeller = ModbusSim::start(
        SimOptions {
            port: Some(offline_port),
            ..SimOptions::default()
        },
        scratch.path(),
    );
    labeller.set(&[reg(0, "f32", 3.25)]);
    let pts = wait_stream(
        &k,
        "the labeller's points once its PLC is up",
        Duration::from_secs(30),
        |p| {
            let ok = points::of_tag(p, "speed")
                .iter()
                .any(|x| x.point.equipment_id == LABELLER && x.point.value.as_f64() == Some(3.25));
            if ok {
                Ok(p.to_vec())
            } else {
                Err("no speed 3.25 from the labeller".into())
            }
        },
    )
    .await;
    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("{e}"));
    points::check_order_per_equipment(&pts).unwrap_or_else(|e| panic!("{e}"));
    // Whatever the labeller emitted while down (e.g. Syn/Bad points) is valid and honest.
    for p in points::unique(&pts)
        .iter()
        .filter(|p| p.point.meta.source_id == "labeller")
    {
        if p.point.quality == Quality::Bad {
            assert!(p.point.value.is_null(), "a Bad point carries no value");
        }
    }
    agent
        .wait_metrics(
            "the labeller to be connected",
            Duration::from_secs(10),
            |s| {
                let up = counter(s, "linewatch_agent_source_connected", "source", "labeller");
                if up == 1.0 {
                    Ok(())
                } else {
                    Err(format!("connected {up}"))
                }
            },
        )
        .await;
}
