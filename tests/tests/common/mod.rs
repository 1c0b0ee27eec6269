//! Shared by the agent tests: the filling machine's tags (matching `tests/sim/modbus_plc.py`)
//! and waiting on what the stream holds.
#![allow(dead_code)] // each test binary uses a different part

pub mod overflow;

use linewatch_e2e::agent::{modbus_source, tag, Agent, AgentConfig, Tag};
pub use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::peers::modbus_plc::{ModbusSim, SimOptions};
use linewatch_testkit::points::{self, Shipped};
use linewatch_testkit::wait;
use linewatch_testkit::Scratch;
use std::time::Duration;

pub const STREAM: &str = "linewatch";
/// The source id of [`start_filling_agent`]'s agent.
pub const SOURCE: &str = "filling_machine";
pub const FILLER: &str = "84068f2f-3f39-4b9c-a995-d2a84d878689";
pub const MOTOR: &str = "2b0c6f1e-8d7a-4c55-9a61-0f3e5d2c7b19";
pub const LABELLER: &str = "c7d1a9e4-52b3-4f08-b6de-3a9f41e0c2a7";

/// Every data type the sim's register map has, scaled where a PLC would be.
pub fn filling_machine_tags() -> Vec<Tag> {
    vec![
        tag("water_temperature", "holding_register", 0, "f32"),
        tag("pressure", "holding_register", 2, "f32"),
        tag("machine_state", "holding_register", 4, "u16"),
        tag("product", "holding_register", 5, "u16"),
        tag("level_offset", "holding_register", 6, "i32"),
        tag("bottles_total", "holding_register", 8, "u64"),
        tag("tank_level", "holding_register", 12, "u16").scaled(0.1, 0.0),
        tag("ambient_temperature", "holding_register", 13, "i16").scaled(0.01, -0.5),
        tag("flow_rate", "holding_register", 14, "f64"),
        tag("valve_position", "holding_register", 20, "f32").orders("little", "little"),
        tag("motor_current", "input_register", 0, "f32").equipment(MOTOR),
        tag("running", "coil", 0, "bool"),
        tag("door_closed", "discrete_input", 0, "bool"),
    ]
}

/// `n` u16 tags on holding registers 0..n: one coalesced read yields `n` points.
pub fn many_u16_tags(n: u16) -> Vec<Tag> {
    (0..n)
        .map(|i| tag(&format!("r{i:03}"), "holding_register", i, "u16"))
        .collect()
}

/// The peers of most agent tests: a scratch dir, kinesalite with [`STREAM`] of `shards`
/// shards, and the filling-machine PLC.
pub async fn kinesalite_and_plc(test: &str, shards: i32) -> (Scratch, Kinesalite, ModbusSim) {
    let scratch = Scratch::new(test);
    let k = Kinesalite::start(KinesaliteOptions::default(), scratch.path());
    k.create_stream(STREAM, shards).await;
    let sim = ModbusSim::start(SimOptions::default(), scratch.path());
    (scratch, k, sim)
}

/// An agent shipping to `endpoint` that polls the filling machine at `sim_address`
/// every 50 ms (~13 tags: about 250 points/s) as source [`SOURCE`].
#[track_caller]
pub fn start_filling_agent(dir: &std::path::Path, endpoint: &str, sim_address: &str) -> Agent {
    let mut cfg = AgentConfig::new(dir, endpoint, STREAM);
    cfg.sources.push(modbus_source(
        SOURCE,
        sim_address,
        FILLER,
        "50ms",
        filling_machine_tags(),
    ));
    Agent::start(cfg, dir)
}

/// Waits until the stream holds at least `n` points.
#[track_caller]
pub fn wait_points<'a>(
    k: &'a Kinesalite,
    what: &str,
    n: usize,
) -> impl std::future::Future<Output = ()> + 'a {
    wait_stream(k, what, Duration::from_secs(30), move |p| {
        if p.len() >= n {
            Ok(())
        } else {
            Err(format!("fewer than {n} points"))
        }
    })
}

/// Reads and decodes the whole stream until `check` accepts it; panics after
/// `timeout` with the last description and the kinesalite log.
#[track_caller]
pub fn wait_stream<'a, T: 'a>(
    k: &'a Kinesalite,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&[Shipped]) -> Result<T, String> + 'a,
) -> impl std::future::Future<Output = T> + 'a {
    wait::until(what, timeout, async move || {
        let records = k.read_all(STREAM).await;
        let pts = points::decode(&records);
        check(&pts).map_err(|e| format!("{e} ({} records so far)", records.len()))
    })
}

/// Distinct sequence numbers of `source` in `pts`.
pub fn seqs_of(pts: &[Shipped], source: &str) -> std::collections::BTreeSet<u64> {
    pts.iter()
        .filter(|p| p.point.meta.source_id == source)
        .map(|p| p.seq())
        .collect()
}

/// Sum of a counter over every label set whose `label` equals `value`.
pub fn counter(
    s: &linewatch_testkit::metrics::Scrape,
    name: &str,
    label: &str,
    value: &str,
) -> f64 {
    s.sum(name, &[(label, value)])
}
