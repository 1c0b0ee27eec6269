//! The rule engine gives exactly the same transitions whether the agent wrote the
//! stream with KPL aggregation (`kinesis.aggregation = "kpl"`) or one point per record
//! (`"none"`).
//!
//! What makes the comparison exact: both streams carry the *same* data points, byte for
//! byte, shipped by the real agent in each mode. Phase 1 runs one agent on the PLC sim
//! while the test drives the values step by step (each held for at least 15 polls, so
//! the rule's 1 s hold is met or, once, deliberately not), with Kinesis unreachable: every
//! point stays in the agent's buffer. The agent is stopped and its buffer copied; two
//! agents without sources then drain the two copies, one with `aggregation = "kpl"` into
//! stream `kpl`, one with `"none"` into stream `plain`. Two live agents polling one PLC
//! could never give identical timestamps; two drains of one buffer do. The test checks
//! that premise (same user records in the same order; `kpl` aggregated, `plain` not),
//! then one `linewatch-rules run` per stream, each with the same signed rule under its
//! own topic prefix, must deliver equal envelopes (id, time, detail: equipment, states,
//! event times) in the same order, equal to the replay oracle over the points.

mod rules_common;

use linewatch_e2e::agent::AgentConfig;
use linewatch_e2e::rules::{self, RulesService};
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::peers::mosquitto::{self, Broker};
use linewatch_testkit::peers::webhook_receiver::Receiver;
use linewatch_testkit::points;
use linewatch_testkit::Scratch;
use rules_common::{
    assert_same_transitions, buffer_scenario, copy_dir, details, running_hot_rule, start_agent,
};
use serde_json::Value;
use std::time::Duration;

const FILLER: &str = "84068f2f-3f39-4b9c-a995-d2a84d878689";
const SOURCE: &str = "filler";
const RULE: &str = "kpl-equivalence";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_and_plain_streams_give_the_same_transitions() {
    let scratch = Scratch::new("rules-kpl-equivalence");
    let dir = scratch.path();
    let broker = Broker::start(dir);
    let (prefix_kpl, prefix_plain) = (
        mosquitto::unique_prefix("kpl-eq-kpl"),
        mosquitto::unique_prefix("kpl-eq-plain"),
    );
    // Declared before the services: retained rules and statuses go even if the test fails.
    let _clean_kpl = broker.retained_cleanup(&prefix_kpl);
    let _clean_plain = broker.retained_cleanup(&prefix_plain);

    // Phase 1: the scenario, buffered (Kinesis unreachable).
    // (temperature, running, polls held): ACTIVE, WARNING (held), still WARNING while
    // stopped, IDLE, WARNING, ACTIVE, too short to warn, IDLE; the last held longest.
    let steps = [
        (60.0, true, 15.0),
        (85.0, true, 15.0),
        (85.0, false, 15.0),
        (70.0, false, 15.0),
        (90.0, false, 15.0),
        (65.0, true, 15.0),
        (82.0, true, 4.0),
        (60.0, false, 30.0),
    ];
    let (cfg, read) = buffer_scenario(dir, SOURCE, FILLER, "aggregation = \"kpl\"", &steps).await;

    // Phase 2: the same buffer drained twice, once per aggregation mode.
    let k = Kinesalite::start(KinesaliteOptions::default(), dir);
    k.create_stream("kpl", 1).await;
    k.create_stream("plain", 1).await;
    let rule_file = dir.join("rule.rhai");
    std::fs::write(&rule_file, running_hot_rule(RULE, FILLER)).expect("writing the rule");
    let (recv_kpl, recv_plain) = (Receiver::start(), Receiver::start());
    let mut services = Vec::new();
    for (name, stream, prefix, recv) in [
        ("rules-kpl", "kpl", &prefix_kpl, &recv_kpl),
        ("rules-plain", "plain", &prefix_plain, &recv_plain),
    ] {
        let mut rc = rules::RulesConfig::new(
            dir,
            &k.endpoint(),
            stream,
            broker.port(),
            prefix,
            &recv.url("/events"),
        );
        rc.instance_id = name.to_owned();
        rc.state_dir = dir.join(format!("{name}-state"));
        let svc = RulesService::start_named(name, rc, dir, None);
        let res = svc.publish(&rule_file, None, None, "10s").await;
        res.expect_code(0);
        assert_eq!(res.json()["status"], "accepted", "{res}");
        services.push(svc);
    }
    let mut drains = Vec::new();
    for (name, stream, aggregation) in [
        ("agent-kpl", "kpl", "kpl"),
        ("agent-plain", "plain", "none"),
    ] {
        let copy = dir.join(format!("{name}-buffer"));
        copy_dir(&cfg.buffer.path, &copy);
        let mut c = AgentConfig::new(dir, &k.endpoint(), stream);
        c.buffer.path = copy;
        drains.push(start_agent(
            &c,
            dir,
            name,
            &format!("aggregation = {aggregation:?}"),
        ));
    }
    for agent in &mut drains {
        agent
            .wait_metrics("the buffer drained", Duration::from_secs(60), |s| {
                // Not buffer_records == 0: with no source the agent does not remove
                // shipped records from its buffer (see the report); count what shipped.
                let shipped = s.get("linewatch_agent_records_shipped_total");
                if shipped >= read {
                    Ok(())
                } else {
                    Err(format!("{shipped} shipped of {read} read"))
                }
            })
            .await;
    }

    // The premise: the same points, in the same order, packed differently.
    let kpl = points::decode(&k.read_all("kpl").await);
    let plain = points::decode(&k.read_all("plain").await);
    assert!(
        plain.len() as f64 >= read,
        "{} points of {read} read",
        plain.len()
    );
    let raw = |p: &[points::Shipped]| p.iter().map(|s| s.raw.clone()).collect::<Vec<_>>();
    assert!(
        raw(&kpl) == raw(&plain),
        "the two drains shipped different points"
    );
    points::check_no_gaps(&plain).unwrap_or_else(|e| panic!("{e}"));
    let (raw_kpl, raw_plain) = (k.read_all_raw("kpl").await, k.read_all_raw("plain").await);
    assert_eq!(raw_plain.len(), plain.len(), "`none`: one point per record");
    assert!(
        raw_kpl.len() * 10 < kpl.len(),
        "`kpl`: {} points in {} records",
        kpl.len(),
        raw_kpl.len()
    );

    // The oracle over those points sets how many transitions to wait for.
    let input = dir.join("points.ndjson");
    let mut ndjson = String::new();
    for p in &plain {
        ndjson.push_str(&String::from_utf8_lossy(&p.raw));
        ndjson.push('\n');
    }
    std::fs::write(&input, ndjson).expect("writing the oracle input");
    let want = rules::oracle(std::slice::from_ref(&rule_file), &input, "1s", "30s").await;
    let states: Vec<&str> = want.iter().filter_map(|t| t["state"].as_str()).collect();
    assert_eq!(
        states,
        ["ACTIVE", "WARNING", "IDLE", "WARNING", "ACTIVE", "IDLE"],
        "the scenario's transitions (oracle): {want:?}"
    );
    let got_kpl = recv_kpl
        .wait_unique(want.len(), Duration::from_secs(40))
        .await;
    let got_plain = recv_plain
        .wait_unique(want.len(), Duration::from_secs(40))
        .await;
    for recv in [&recv_kpl, &recv_plain] {
        recv.settle(Duration::from_secs(1), Duration::from_secs(5))
            .await;
        assert_eq!(
            recv.requests().len(),
            want.len(),
            "{}",
            recv.describe_last(5)
        );
    }
    let bodies = |reqs: &[linewatch_testkit::peers::webhook_receiver::Request]| -> Vec<Value> {
        reqs.iter()
            .map(|r| r.json().unwrap_or(Value::Null))
            .collect()
    };
    assert_eq!(
        bodies(&got_kpl),
        bodies(&got_plain),
        "the envelopes from the aggregated stream differ from the plain stream's"
    );
    let d_kpl = details(&got_kpl);
    assert_same_transitions(&d_kpl, &want);
    assert_same_transitions(&details(&got_plain), &want);
    for svc in &mut services {
        let m = svc.scrape();
        assert_eq!(
            m.get("linewatch_rules_late_points_total"),
            0.0,
            "{}",
            svc.name()
        );
        assert_eq!(
            m.get("linewatch_rules_transitions_total"),
            want.len() as f64,
            "{}",
            svc.name()
        );
    }
    eprintln!(
        "kpl equivalence: {} points ({} aggregated records vs {} plain), {} transitions equal: {:?}",
        plain.len(),
        raw_kpl.len(),
        raw_plain.len(),
        want.len(),
        d_kpl
            .iter()
            .map(|d| format!("{}@{}", d["state"].as_str().unwrap_or("?"), d["eventTime"]))
            .collect::<Vec<_>>()
    );
}
