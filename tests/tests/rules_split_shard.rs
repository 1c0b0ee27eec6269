//! A SplitShard in the middle of the stream, with points of many keys before and after:
//! the service reads the parent to its end before the children, so every equipment's
//! transitions equal the oracle's, in order, and no point is late.

mod rules_common;

use linewatch_e2e::rules::RulesService;
use linewatch_e2e::scenario::{self, base_time, machine_cycle, machine_rule, step_time};
use linewatch_testkit::feed::Feed;
use linewatch_testkit::kinesis;
use linewatch_testkit::points;
use rules_common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const RULE: &str = "split-machines";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_shard_mid_stream_keeps_per_equipment_order() {
    let env = Env::start("rules-split", 1).await;
    let machines = scenario::machines("s", 8);
    let script = machine_rule(RULE, 1, &machines, 80.0, "1s");
    let rule_file = env.rule_file("rule.rhai", &script);

    let mut svc = RulesService::start(env.config(), env.dir());
    svc.publish_text("rule-v1.rhai", &script, 1).await;
    let base = base_time();
    let mut feed = Feed::new();
    machine_cycle(&mut feed, &machines, base, 0, 150);
    env.put(&mut feed).await;
    // Split at once: the service is still reading the parent.
    let client = env.kinesis.client();
    let (left, right) = kinesis::split_shard(
        &client,
        &env.kinesis.endpoint(),
        STREAM,
        None,
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|e| panic!("split: {e}\nkinesalite log:\n{}", env.kinesis.log_tail(20)));
    machine_cycle(&mut feed, &machines, base, 150, 300);
    feed.heartbeats(&machines, step_time(base, 300) + 3000);
    env.put(&mut feed).await;

    // The points after the split went to both children (else the test shows nothing).
    let records = env.kinesis.read_all(STREAM).await;
    let mut shards_per_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &records {
        shards_per_key
            .entry(r.partition_key.clone())
            .or_default()
            .insert(r.shard_id.clone());
    }
    let children: BTreeSet<&String> = records
        .iter()
        .map(|r| &r.shard_id)
        .filter(|s| **s == left || **s == right)
        .collect();
    assert_eq!(
        children.len(),
        2,
        "points after the split should be on both children: {shards_per_key:?}"
    );
    assert_eq!(points::decode(&records).len(), feed.all().len());

    let want = env.oracle(&feed, &[rule_file], "points").await;
    assert!(want.len() >= 40, "oracle: {} transitions", want.len());
    env.receiver
        .wait_unique(want.len(), Duration::from_secs(40))
        .await;
    env.receiver
        .settle(Duration::from_millis(800), Duration::from_secs(5))
        .await;
    let got = details(&env.receiver.accepted_unique());
    assert_same_transitions(&got, &want);
    assert_eq!(got.len(), want.len());

    let m = svc.scrape();
    assert_eq!(
        m.get("linewatch_rules_late_points_total"),
        0.0,
        "no late point across the split: {}",
        m.describe("linewatch_rules_late")
    );
    assert_eq!(
        m.sum(
            "linewatch_rules_records_total",
            &[("outcome", "late_dropped")]
        ),
        0.0
    );
    assert_eq!(
        m.sum("linewatch_rules_records_total", &[("outcome", "point")])
            + m.sum("linewatch_rules_records_total", &[("outcome", "heartbeat")]),
        feed.all().len() as f64,
        "every record read once: {}",
        m.describe("linewatch_rules_records")
    );
    eprintln!(
        "split: {} transitions over {} keys equal to the oracle; shards per key {shards_per_key:?}",
        want.len(),
        machines.len()
    );
}
