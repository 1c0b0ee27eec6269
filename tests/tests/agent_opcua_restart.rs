//! The OPC UA session's life-cycle against a real server (asyncua): a server killed and
//! restarted with its namespaces registered in another order gives `Syn` points, then
//! `Fst` points and resumed data, without restarting the agent; a server that stops
//! answering (SIGSTOP) trips the watchdog within its documented bound.

mod agent_opcua_common;

use agent_opcua_common::*;
use linewatch_schemas::{Flag, Quality};
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::opcua_server::{write, UaOptions, UaServer, FILLER_NS, LABELLER_NS};
use linewatch_testkit::points::Shipped;
use linewatch_testkit::Scratch;
use serde_json::json;
use std::time::{Duration, Instant};

fn tags() -> Vec<String> {
    vec![
        filler_tag("Filler.Double"),
        format!("{{ name = \"speed\", node_id = \"nsu={LABELLER_NS};s=Labeller.Speed\" }}"),
    ]
}

fn has_value(pts: &[Shipped], tag: &str, v: f64) -> bool {
    of(pts, tag).iter().any(|p| p.json["value"] == json!(v))
}

fn syn_points(pts: &[Shipped]) -> Vec<&Shipped> {
    pts.iter()
        .filter(|p| p.point.meta.flags.contains(Flag::Syn))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_server_restart_with_renumbered_namespaces_resumes_with_syn_then_fst() {
    let scratch = Scratch::new("opcua-restart");
    let k = kinesalite(&scratch).await;
    let mut ua = UaServer::start(UaOptions::default(), scratch.path());
    let before = ua.namespaces();
    let sources = ua_source(
        &ua.endpoint(),
        &scratch.path().join("agent-pki"),
        "",
        &group("main", "100ms", "", &tags()),
    );
    let mut agent = start_agent(scratch.path(), &k.endpoint(), &sources, &[]);
    ua.set(&[write("Filler.Double", 1.0), write("Labeller.Speed", 10.0)]);
    wait_stream(
        &k,
        "values before the restart",
        Duration::from_secs(60),
        |p| {
            (has_value(p, "double", 1.0) && has_value(p, "speed", 10.0))
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await;

    let port = ua.port();
    ua.stop();
    let pts = wait_stream(
        &k,
        "Syn points for both tags",
        Duration::from_secs(30),
        |p| {
            let syn = syn_points(p);
            (["double", "speed"]
                .iter()
                .all(|t| syn.iter().any(|s| s.point.tag == *t)))
            .then(|| p.to_vec())
            .ok_or_else(|| format!("{} Syn points", syn.len()))
        },
    )
    .await;
    for s in syn_points(&pts) {
        assert_eq!(s.point.quality, Quality::Bad, "{}", s.json);
        assert!(s.json["value"].is_null());
        assert!(s.point.meta.raw_quality.is_some(), "{}", s.json);
    }

    // Restart on the same port with the namespaces registered the other way round:
    // both indexes change.
    let mut ua = UaServer::start(
        UaOptions {
            port: Some(port),
            namespaces: vec![LABELLER_NS.into(), FILLER_NS.into()],
            ..UaOptions::default()
        },
        scratch.path(),
    );
    let after = ua.namespaces();
    let index = |ns: &[String], uri: &str| ns.iter().position(|n| n == uri);
    assert_ne!(
        index(&before, FILLER_NS),
        index(&after, FILLER_NS),
        "{before:?} {after:?}"
    );
    assert_ne!(index(&before, LABELLER_NS), index(&after, LABELLER_NS));

    ua.set(&[write("Filler.Double", 2.0), write("Labeller.Speed", 20.0)]);
    let pts = wait_stream(
        &k,
        "values after the restart",
        Duration::from_secs(60),
        |p| {
            (has_value(p, "double", 2.0) && has_value(p, "speed", 20.0))
                .then(|| p.to_vec())
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await;
    agent.assert_running();
    for tag in ["double", "speed"] {
        let mine = of(&pts, tag);
        let syn = mine
            .iter()
            .position(|p| p.point.meta.flags.contains(Flag::Syn))
            .expect("a Syn point");
        let next = mine[syn + 1..]
            .iter()
            .find(|p| !p.point.meta.flags.contains(Flag::Syn))
            .expect("a point after the gap");
        assert!(
            next.point.meta.flags.contains(Flag::Fst),
            "{tag}: first point after the restart has Fst: {}",
            next.json
        );
        assert_eq!(next.point.quality, Quality::Ok, "{}", next.json);
    }
    let m = agent.scrape();
    assert!(
        m.sum(
            "linewatch_agent_opcua_sessions_total",
            &[("source", SOURCE)]
        ) >= 2.0
    );
    agent.terminate(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_watchdog_rebuilds_the_session_of_a_server_that_stopped_answering() {
    let scratch = Scratch::new("opcua-watchdog");
    let k = kinesalite(&scratch).await;
    let mut ua = UaServer::start(UaOptions::default(), scratch.path());
    // Keep-alive period 200ms × 3; watchdog = 2 × 600ms + timeout 2s = 3.2s.
    let bound = Duration::from_millis(3200);
    let sources = ua_source(
        &ua.endpoint(),
        &scratch.path().join("agent-pki"),
        "",
        &group("main", "200ms", "keep_alive_count = 3", &tags()),
    );
    let mut agent = start_agent(scratch.path(), &k.endpoint(), &sources, &[]);
    ua.set(&[write("Filler.Double", 1.0), write("Labeller.Speed", 1.0)]);
    wait_stream(
        &k,
        "values before the pause",
        Duration::from_secs(60),
        |p| {
            has_value(p, "double", 1.0)
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await;

    ua.pause();
    let paused = Instant::now();
    agent
        .wait_metrics("the watchdog tripped", Duration::from_secs(30), |m| {
            (m.sum(
                "linewatch_agent_opcua_watchdog_trips_total",
                &[("source", SOURCE)],
            ) >= 1.0)
                .then_some(())
                .ok_or_else(|| "no trip yet".to_owned())
        })
        .await;
    let tripped = paused.elapsed();
    // The bound, plus the metrics poll and a loaded machine's slack.
    assert!(
        tripped <= bound + Duration::from_secs(3),
        "watchdog after {tripped:?}, bound {bound:?}"
    );
    let log = std::fs::read_to_string(scratch.path().join("agent.log")).unwrap_or_default();
    assert!(log.contains("opcua watchdog"), "{log}");
    wait_stream(
        &k,
        "Syn points while paused",
        Duration::from_secs(30),
        |p| {
            (!syn_points(p).is_empty())
                .then_some(())
                .ok_or_else(|| "no Syn".to_owned())
        },
    )
    .await;

    ua.resume();
    ua.set(&[write("Filler.Double", 5.0)]);
    let pts = wait_stream(&k, "data after the resume", Duration::from_secs(60), |p| {
        has_value(p, "double", 5.0)
            .then(|| p.to_vec())
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    let first_after = of(&pts, "double")
        .into_iter()
        .rev()
        .take_while(|p| !p.point.meta.flags.contains(Flag::Syn))
        .last()
        .expect("a point after the Syn");
    assert!(
        first_after.point.meta.flags.contains(Flag::Fst),
        "{}",
        first_after.json
    );
    agent.assert_running();
    agent.terminate(Duration::from_secs(10));
}
