//! The S7 link through the shared driver, against the real Snap7 server: the server
//! killed and started again gives `Syn` points, then `Fst` and fresh data from the
//! same agent process; a malformed answer (one corrupted frame from a proxy) is an
//! error and a reconnect, never a panic.

mod common;

use common::*;
use linewatch_e2e::agent::{Agent, AgentConfig};
use linewatch_schemas::{Flag, Quality};
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::peers::s7_plc::{write, Area, S7Options, S7Sim};
use linewatch_testkit::points::{self, Shipped};
use linewatch_testkit::proxy::FaultProxy;
use linewatch_testkit::Scratch;
use std::time::Duration;

const TAGS: &str = "tags = [{ name = \"temperature\", address = \"DB1.DBD0:REAL\" }, { name = \"count\", address = \"DB1.DBD4:DINT\" }]";

fn s7_source(address: &str) -> String {
    format!(
        "\n[[sources]]\ntype = \"s7\"\nid = \"s7_line\"\naddress = \"{address}\"\nequipment_id = \"{FILLER}\"\n\
         timeout = \"1s\"\nreconnect_initial = \"100ms\"\nreconnect_max = \"500ms\"\nheartbeat_interval = \"1s\"\n\
         [[sources.groups]]\nname = \"main\"\ninterval = \"100ms\"\n{TAGS}\n"
    )
}

async fn kinesalite(test: &str) -> (Scratch, Kinesalite) {
    let scratch = Scratch::new(test);
    let k = Kinesalite::start(KinesaliteOptions::default(), scratch.path());
    k.create_stream(STREAM, 1).await;
    (scratch, k)
}

fn temperature(v: f32) -> Vec<linewatch_testkit::peers::s7_plc::S7Write> {
    vec![write(Area::Db(1), 0, v.to_be_bytes())]
}

/// The first `temperature` point with value `v`.
fn with_value(pts: &[Shipped], v: f64) -> Option<&Shipped> {
    points::of_tag(pts, "temperature")
        .into_iter()
        .filter(|p| p.point.value.as_f64() == Some(v) && p.point.quality == Quality::Ok)
        .min_by_key(|p| p.seq())
}

/// The `Syn` point of `temperature` (Bad, null) after `after`, whose rawQuality says why.
fn syn_after(pts: &[Shipped], after: u64) -> Result<&Shipped, String> {
    points::of_tag(pts, "temperature")
        .into_iter()
        .filter(|p| p.seq() > after && p.point.meta.flags.contains(Flag::Syn))
        .min_by_key(|p| p.seq())
        .ok_or_else(|| "no Syn point yet".to_owned())
}

/// After the `Syn` at `syn_seq`, a fresh point with value `v` that carries `Fst`.
fn resumed(pts: &[Shipped], syn_seq: u64, v: f64) -> Result<(), String> {
    let first_after = points::of_tag(pts, "temperature")
        .into_iter()
        .filter(|p| p.seq() > syn_seq && p.point.quality == Quality::Ok)
        .min_by_key(|p| p.seq())
        .ok_or("no good point after the Syn yet")?;
    if !first_after.point.meta.flags.contains(Flag::Fst) {
        return Err(format!(
            "first point after the outage lacks Fst: {}",
            first_after.json
        ));
    }
    match with_value(pts, v) {
        Some(p) if p.seq() > syn_seq => Ok(()),
        _ => Err(format!("no temperature {v} after the outage")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_server_restart_gives_syn_then_fst_without_restarting_the_agent() {
    let (scratch, k) = kinesalite("s7-restart").await;
    let mut sim = S7Sim::start(&S7Options::default(), scratch.path());
    let port = sim.port();
    sim.set(&temperature(1.5));
    let mut cfg = AgentConfig::new(scratch.path(), &k.endpoint(), STREAM);
    cfg.extra_toml = s7_source(&sim.address());
    let mut agent = Agent::start(cfg, scratch.path());
    let pid = agent.pid();

    let before = wait_stream(&k, "temperature 1.5", Duration::from_secs(30), |p| {
        with_value(p, 1.5)
            .map(Shipped::seq)
            .ok_or("no 1.5 yet".to_owned())
    })
    .await;

    sim.stop();
    let syn = wait_stream(
        &k,
        "Syn points for the lost server",
        Duration::from_secs(30),
        |p| {
            let s = syn_after(p, before)?;
            Ok((
                s.seq(),
                s.point.quality,
                s.json["value"].clone(),
                s.point.meta.raw_quality.clone(),
            ))
        },
    )
    .await;
    assert_eq!(syn.1, Quality::Bad);
    assert!(syn.2.is_null());
    assert!(
        syn.3.as_deref().is_some_and(|r| !r.is_empty()),
        "rawQuality says why: {:?}",
        syn.3
    );

    let mut sim = S7Sim::start(
        &S7Options {
            port: Some(port),
            ..S7Options::default()
        },
        scratch.path(),
    );
    sim.set(&temperature(2.5));
    let pts = wait_stream(
        &k,
        "Fst and 2.5 after the restart",
        Duration::from_secs(30),
        |p| resumed(p, syn.0, 2.5).map(|_| p.to_vec()),
    )
    .await;
    agent.assert_running();
    assert_eq!(agent.pid(), pid, "the same agent process");
    // One Syn batch for the outage, however long it lasted.
    let syns = points::unique(&pts)
        .into_iter()
        .filter(|p| p.point.tag == "temperature" && p.point.meta.flags.contains(Flag::Syn))
        .count();
    assert_eq!(syns, 1, "one Syn per tag per outage");
    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("gaps: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_malformed_answer_is_an_error_and_a_reconnect_not_a_panic() {
    let (scratch, k) = kinesalite("s7-malformed").await;
    let mut sim = S7Sim::start(&S7Options::default(), scratch.path());
    sim.set(&temperature(4.5));
    let proxy = FaultProxy::start(sim.port()).await;
    let mut cfg = AgentConfig::new(scratch.path(), &k.endpoint(), STREAM);
    cfg.extra_toml = s7_source(&format!("127.0.0.1:{}", proxy.port()));
    let mut agent = Agent::start(cfg, scratch.path());

    let before = wait_stream(&k, "temperature 4.5", Duration::from_secs(30), |p| {
        with_value(p, 4.5)
            .map(Shipped::seq)
            .ok_or("no 4.5 yet".to_owned())
    })
    .await;
    // Byte 7 of a frame is the S7 protocol id (after TPKT 4 and COTP 3 bytes).
    proxy.corrupt_next_response(7);
    let syn = wait_stream(
        &k,
        "Syn points after the bad frame",
        Duration::from_secs(30),
        |p| {
            let s = syn_after(p, before)?;
            Ok((s.seq(), s.point.meta.raw_quality.clone()))
        },
    )
    .await;
    assert_eq!(proxy.responses_corrupted(), 1);
    assert!(
        syn.1
            .as_deref()
            .is_some_and(|r| r.contains("protocol error") && r.contains("S7 protocol id")),
        "rawQuality names the malformed frame: {:?}",
        syn.1
    );
    sim.set(&temperature(5.5));
    wait_stream(
        &k,
        "Fst and 5.5 after the reconnect",
        Duration::from_secs(30),
        |p| resumed(p, syn.0, 5.5),
    )
    .await;
    agent.assert_running();
    let log = agent.log();
    assert!(
        !log.contains("panicked"),
        "no panic:\n{}",
        agent.log_tail(40)
    );
    let s = agent.scrape();
    assert!(counter(&s, "linewatch_agent_read_errors_total", "source", "s7_line") >= 1.0);
}
