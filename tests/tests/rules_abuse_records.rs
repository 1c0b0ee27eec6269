//! Records built to amplify: one KPL record of 100,000 empty sub-records (100,000 invalid
//! points from one put) and a data point carrying a 900 KB string. The engine counts every
//! one, writes the dead-letter file and its WARN lines within their budget (recording how
//! many it left out), dead-letters the huge point as `oversized` instead of evaluating it,
//! and goes on producing the honest transitions.

mod rules_common;

use aws_sdk_kinesis::primitives::Blob;
use linewatch_e2e::rules::RulesService;
use linewatch_e2e::scenario::{self, base_time, machine_cycle, machine_rule, step_time};
use linewatch_schemas::kpl;
use linewatch_testkit::feed::Feed;
use rules_common::*;
use std::time::Duration;

const EMPTY_SUBRECORDS: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_flood_is_budgeted_and_a_huge_point_is_refused() {
    let env = Env::start("rules-abuse-records", 1).await;
    let machines = scenario::machines("flood", 2);
    let script = machine_rule("flood-rule", 1, &machines, 80.0, "1s");
    let rule_file = env.rule_file("rule.rhai", &script);
    let mut svc = RulesService::start(env.config(), env.dir());
    svc.publish_text("rule.rhai", &script, 1).await;

    let client = env.kinesis.client();
    let empty: Vec<(&str, Option<&str>, &[u8])> = (0..EMPTY_SUBRECORDS)
        .map(|_| ("flood", None, &b""[..]))
        .collect();
    let aggregated = kpl::aggregate(&empty);
    assert!(aggregated.len() < 1 << 20, "{} bytes", aggregated.len());
    // A valid data point but for its size.
    let huge = serde_json::json!({
        "version": 1, "timestamp": base_time(), "equipmentId": machines[0].id, "tag": "note",
        "value": "x".repeat(900_000), "quality": "Ok",
        "meta": {"sequenceNumber": 1, "createdAt": base_time(), "sourceId": machines[0].source,
                 "gatewayId": machines[0].gateway},
    })
    .to_string();
    for (key, data) in [
        ("flood", aggregated),
        (machines[0].id.as_str(), huge.into_bytes()),
    ] {
        client
            .put_record()
            .stream_name(STREAM)
            .partition_key(key)
            .data(Blob::new(data))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutRecord: {e:?}"));
    }

    // Honest data behind them still becomes transitions.
    let base = base_time();
    let mut feed = Feed::new();
    machine_cycle(&mut feed, &machines, base, 0, 150);
    feed.heartbeats(&machines, step_time(base, 150) + 3000);
    env.put(&mut feed).await;
    let want = env.oracle(&feed, &[rule_file], "honest").await;
    assert!(want.len() >= 4, "oracle: {} transitions", want.len());
    env.receiver
        .wait_ids(&ids_of(&want), Duration::from_secs(60))
        .await;

    // Every invalid point is counted; the file holds at most the budget of each window
    // plus one `suppressed` line per window, and the two add up to all of them.
    let file = svc.config().state_dir.join("dead-letters/points.ndjson");
    let lines = svc
        .wait_until(
            "the suppressed count recorded",
            Duration::from_secs(20),
            |_| {
                let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
                let lines: Vec<serde_json::Value> = text
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("NDJSON"))
                    .collect();
                let written = lines.iter().filter(|l| l["reason"] == "invalid").count();
                let suppressed: u64 = lines
                    .iter()
                    .filter(|l| l["reason"] == "suppressed" && l["of"] == "invalid")
                    .map(|l| l["count"].as_u64().unwrap_or(0))
                    .sum();
                if written as u64 + suppressed == EMPTY_SUBRECORDS as u64 {
                    Ok(lines)
                } else {
                    Err(format!("{written} written + {suppressed} suppressed"))
                }
            },
        )
        .await;
    let written = lines.iter().filter(|l| l["reason"] == "invalid").count();
    assert!(
        written <= 5_000,
        "{written} dead-letter lines for one record: the budget did not hold"
    );
    let oversized: Vec<_> = lines
        .iter()
        .filter(|l| l["reason"] == "oversized")
        .collect();
    assert_eq!(oversized.len(), 1, "the 900 KB point: {oversized:?}");
    assert!(oversized[0]["bytes"].as_u64().unwrap() > 900_000);
    assert!(oversized[0]["data"].as_str().unwrap().len() <= 64 * 1024);

    let m = svc.scrape();
    let counted = m.sum(
        "linewatch_rules_dead_letters_total",
        &[("reason", "invalid")],
    );
    assert_eq!(
        counted, EMPTY_SUBRECORDS as f64,
        "every invalid point counted"
    );
    let suppressed = m.sum(
        "linewatch_rules_dead_letters_suppressed_total",
        &[("reason", "invalid")],
    );
    assert_eq!(suppressed, (EMPTY_SUBRECORDS - written) as f64);
    assert_eq!(
        m.sum(
            "linewatch_rules_dead_letters_total",
            &[("reason", "oversized")]
        ),
        1.0
    );
    let warns = svc
        .log()
        .lines()
        .filter(|l| l.contains("record dead-lettered"))
        .count();
    assert!(warns <= 10, "{warns} WARN lines for one flood");
    // The huge value never reached a webhook body.
    assert!(env
        .receiver
        .requests()
        .iter()
        .all(|r| r.body.len() < 100_000));
    eprintln!(
        "flood: {written} of {EMPTY_SUBRECORDS} written, {warns} WARN lines, {} transitions",
        want.len()
    );
}
