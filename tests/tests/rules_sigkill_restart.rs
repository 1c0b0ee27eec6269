//! `kill -9` of the service while it evaluates and delivers, more points put while it is
//! down, then a restart on the same state_dir: every expected transition arrives, nothing
//! the oracle does not know, and every duplicate (redelivered after the restart) has
//! the same body as its first copy.

mod rules_common;

use linewatch_e2e::rules::RulesService;
use linewatch_e2e::scenario::{self, base_time, machine_cycle, machine_rule, step_time};
use linewatch_testkit::feed::Feed;
use rules_common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const RULE: &str = "kill-machines";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_delivers_every_transition() {
    let env = Env::start("rules-sigkill", 1).await;
    let machines = scenario::machines("k", 4);
    let script = machine_rule(RULE, 1, &machines, 80.0, "1s");
    let rule_file = env.rule_file("rule.rhai", &script);
    // A slow consumer: deliveries are in flight when the kill comes.
    env.receiver.set_delay(Duration::from_millis(60));

    let mut svc = RulesService::start(env.config(), env.dir());
    svc.publish_text("rule-v1.rhai", &script, 1).await;
    let base = base_time();
    let mut feed = Feed::new();
    machine_cycle(&mut feed, &machines, base, 0, 300);
    feed.heartbeats(&machines, step_time(base, 300) + 3000);
    env.put(&mut feed).await;
    let want_a = env
        .oracle(&feed, std::slice::from_ref(&rule_file), "phase-a")
        .await;
    assert!(want_a.len() >= 30, "oracle: {} transitions", want_a.len());

    let third = want_a.len() / 3;
    env.receiver
        .wait_unique(third, Duration::from_secs(30))
        .await;
    svc.kill();
    let at_kill = env.receiver.accepted_unique().len();
    assert!(
        at_kill < want_a.len(),
        "the kill should come before every event was delivered ({at_kill} of {})",
        want_a.len()
    );

    // Points keep coming while the service is down.
    machine_cycle(&mut feed, &machines, base, 340, 600);
    feed.heartbeats(&machines, step_time(base, 600) + 3000);
    env.put(&mut feed).await;
    let want = env.oracle(&feed, &[rule_file], "all").await;

    env.receiver.set_delay(Duration::from_millis(5));
    svc.start_again();
    let ids = ids_of(&want);
    env.receiver.wait_ids(&ids, Duration::from_secs(45)).await;
    env.receiver
        .settle(Duration::from_secs(1), Duration::from_secs(5))
        .await;

    // Union ⊇ expected, and nothing else: every id is one the oracle computes.
    let by_id = env.receiver.accepted_by_id();
    let want_ids: BTreeSet<&String> = ids.iter().collect();
    let unexpected: Vec<&String> = by_id.keys().filter(|i| !want_ids.contains(i)).collect();
    assert!(
        unexpected.is_empty(),
        "events the oracle does not have (state lost or corrupted at the restart): {unexpected:?}"
    );
    // Duplicates carry identical envelopes.
    let mut dups = 0;
    for (id, copies) in &by_id {
        let first: Value = copies[0].json().expect("JSON body");
        for c in &copies[1..] {
            dups += 1;
            assert_eq!(
                c.json().as_ref(),
                Some(&first),
                "duplicate of {id} differs from its first copy"
            );
        }
    }
    let got = details(&env.receiver.accepted_unique());
    // Per (rule, equipment), the first copies come in the oracle's order.
    assert_same_transitions(&got, &want);
    svc.assert_running();
    eprintln!(
        "sigkill: {at_kill} of {} phase-A events delivered before the kill; {} in all, {dups} duplicates",
        want_a.len(),
        want.len()
    );
}
