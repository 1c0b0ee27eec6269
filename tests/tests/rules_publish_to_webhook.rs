//! A rule published with `linewatch-rules publish` and data points put into Kinesis:
//! the receiver gets exactly the transitions the replay oracle computes for the same
//! points, in the same order, each one a complete EventBridge envelope whose `id` is
//! the uuid v5 of its `transitionId`.

mod rules_common;

use linewatch_e2e::rules::RulesService;
use linewatch_e2e::scenario::{self, base_time, machine_cycle, machine_rule, step_time};
use linewatch_testkit::feed::Feed;
use rules_common::*;
use std::time::Duration;

const RULE: &str = "pub-machines";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rule_sends_the_oracles_transitions_as_envelopes() {
    let env = Env::start("rules-publish", 1).await;
    let machines = scenario::machines("m", 4);
    let script = machine_rule(RULE, 1, &machines, 80.0, "1s");
    let rule_file = env.rule_file("rule.rhai", &script);

    let mut svc = RulesService::start(env.config(), env.dir());
    let res = svc.publish(&rule_file, None, None, "10s").await;
    res.expect_code(0);
    let status = res.json();
    assert_eq!(status["status"], "accepted", "{res}");
    assert_eq!(status["ruleId"], RULE, "{res}");
    // The status is retained on the status topic, where any tool can read it later.
    let topic = svc.config().status_topic(RULE);
    let retained = env
        .broker
        .wait_json(&topic, Duration::from_secs(5), |v| {
            v["status"] == "accepted"
        })
        .await;
    assert_eq!(retained["version"], 1, "{retained}");

    let base = base_time();
    let mut feed = Feed::new();
    machine_cycle(&mut feed, &machines, base, 0, 300);
    // Heartbeats well past the last point, so the last points and holds are evaluated.
    feed.heartbeats(&machines, step_time(base, 300) + 3000);
    env.put(&mut feed).await;

    let want = env.oracle(&feed, &[rule_file], "points").await;
    assert!(
        want.len() >= 20,
        "the scenario should make the rule change state often; the oracle gives {}",
        want.len()
    );
    let got = env
        .receiver
        .wait_unique(want.len(), Duration::from_secs(40))
        .await;
    let got_details = details(&got);
    // Same transitions, same content, and (one target, one worker) the same order.
    assert_same_transitions(&got_details, &want);
    let got_ids: Vec<String> = got_details
        .iter()
        .map(|d| d["transitionId"].to_string())
        .collect();
    let want_ids: Vec<String> = want.iter().map(|d| d["transitionId"].to_string()).collect();
    assert_eq!(
        got_ids, want_ids,
        "arrival order differs from the oracle's order"
    );
    assert_eq!(
        got.iter().filter_map(|r| r.event_id()).collect::<Vec<_>>(),
        ids_of(&want)
    );
    for r in &got {
        assert_eq!(r.method, "POST", "{}", r.describe());
        assert_eq!(r.path, "/events", "{}", r.describe());
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "content-type of {}: {:?}",
            r.describe(),
            r.header("content-type")
        );
    }

    // Nothing more arrives: no duplicate, no extra transition.
    env.receiver
        .settle(Duration::from_secs(1), Duration::from_secs(5))
        .await;
    let all = env.receiver.requests();
    assert_eq!(
        all.len(),
        want.len(),
        "every event exactly once when the receiver always answers 200; {}",
        env.receiver.describe_last(5)
    );
    let m = svc.scrape();
    assert_eq!(
        m.get("linewatch_rules_transitions_total"),
        want.len() as f64
    );
    assert_eq!(m.get("linewatch_rules_late_points_total"), 0.0);
    assert_eq!(
        m.sum(
            "linewatch_rules_webhook_delivered_total",
            &[("target", "recv")]
        ),
        want.len() as f64
    );
    eprintln!(
        "publish: {} transitions delivered, equal to the oracle",
        want.len()
    );
}
